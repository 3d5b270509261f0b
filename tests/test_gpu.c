/* The exact profile on the GPU against the CPU backend, bitwise: every op of kernels.def
 * on the same random inputs, at several sizes; matmul rows across every M up to 512; the
 * whole model's logits (SmolLM2, and Gemma 3 where DETINFER_GEMMA3 names it). Skipped, with the reason printed, where there is no GPU. */
#include "model_fixture.h"
#include "codegen/codegen.h"
#include <ctype.h>

static di_rt *gpu_or_skip(void) { return th_gpu_rt_or_skip(DI_PROFILE_EXACT); }

#include "spec_args.h"

/* Runs spec on both backends with the same inputs; every output buffer must match in bits. */
static void compare_op(di_rt *cpu, di_rt *gpu, const di_spec *s, const di_specialization *p, long rows)
{
    di_val vc[DI_MAX_ARGS], vg[DI_MAX_ARGS];
    void *host[DI_MAX_ARGS] = {0};
    size_t bytes[DI_MAX_ARGS] = {0};
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        const di_arg *a = &s->args[i];
        if (a->role == DI_ROLE_SCALAR) { vc[i].f32 = vg[i].f32 = 1e-5f; continue; }
        long n = arg_elems(s, p, a, rows);
        bytes[i] = (size_t)n * di_dtype_size(p->dtypes[i]);
        host[i] = malloc(bytes[i] ? bytes[i] : 1);
        fill_arg(s, p, a, p->dtypes[i], host[i], n, rows, 1000 + (uint64_t)i * 77 + (uint64_t)rows);
        vc[i].buf = th_buf(cpu, host[i], bytes[i]);
        vg[i].buf = th_buf(gpu, host[i], bytes[i]);
    }
    long sizes[] = {rows, MAXB, 0, 0};
    di_kernel *kc, *kg;
    di_err e = {0};
    cr_assert_eq(di_rt_kernel(cpu, s, p, &kc, &e), 0, "%s", e.msg);
    cr_assert_eq(di_rt_kernel(gpu, s, p, &kg, &e), 0, "%s", e.msg);
    th_launch(cpu, kc, vc, sizes);
    th_launch(gpu, kg, vg, sizes);
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        if (s->args[i].role == DI_ROLE_SCALAR) continue;
        if (s->args[i].role != DI_ROLE_IN) {
            char *a = malloc(bytes[i] + 1), *b = malloc(bytes[i] + 1);
            th_read(vc[i].buf, a, bytes[i]);
            th_read(vg[i].buf, b, bytes[i]);
            size_t diff = 0;
            for (size_t j = 0; j + 4 <= bytes[i]; j += 4) diff += memcmp(a + j, b + j, 4) != 0;
            cr_assert_eq(diff, 0, "%s rows=%ld: %zu of %zu words of %s differ between CPU and GPU", s->name, rows, diff,
                         bytes[i] / 4, s->args[i].name);
            free(a); free(b);
        }
        di_buf_free(vc[i].buf);
        di_buf_free(vg[i].buf);
        free(host[i]);
    }
}

Test(gpu, exact_every_op_bitwise_equal_to_cpu, .timeout = 600)
{
    di_rt *gpu = gpu_or_skip(), *cpu = th_rt(DI_BACKEND_C, 2);
    const long rows[] = {1, 5, 64};
    for (int i = 0; i < DI_NUM_OPS; i++) {
        const di_spec *s = &di_specs[i];
        di_specialization p;
        di_spec_defaults(s, &p);
        if (s->cls == DI_MATMUL) { di_spec_set_dim(s, &p, "K", 576, NULL); di_spec_set_dim(s, &p, "N", 1536, NULL); }
        for (int r = 0; r < 3; r++) compare_op(cpu, gpu, s, &p, rows[r]);
    }
    /* a sliding window shorter than the positions (up to 255): masked keys and skipped splits */
    const di_spec *aw = di_spec_find("attention_window");
    di_specialization w = th_spec("attention_window", "WIN", 40L, NULL);
    compare_op(cpu, gpu, aw, &w, 5);
    compare_op(cpu, gpu, aw, &w, 64);
    /* matmul at shapes off every tile: K 100, N 37; bf16 output */
    const di_spec *mm = di_spec_find("matmul");
    di_specialization p = th_spec("matmul", "K", 100L, "N", 37L, NULL);
    compare_op(cpu, gpu, mm, &p, 7);
    di_spec_set_dtype(mm, &p, "y", DI_BF16, NULL);
    compare_op(cpu, gpu, mm, &p, 3);
    di_rt_close(cpu);
    di_rt_close(gpu);
}

/* Row 0 of the exact GPU matmul has the same bits for every M in 1..512 and for 8192. */
Test(gpu, exact_matmul_row_invariant_for_every_m, .timeout = 600)
{
    di_rt *gpu = gpu_or_skip();
    enum { K = 4096, N = 1024, MMAX = 8192 };
    di_specialization p = th_spec("matmul", "K", (long)K, "N", (long)N, NULL);
    float *x = malloc(sizeof(float) * (size_t)MMAX * K), *y = malloc(sizeof(float) * N), *ref = malloc(sizeof(float) * N);
    uint16_t *w = malloc(2 * (size_t)N * K);
    th_fill(x, (size_t)MMAX * K, 5);
    uint64_t s = 6;
    for (long i = 0; i < (long)N * K; i++) w[i] = th_bf16(th_uniform(&s));
    di_buf *bx = th_buf(gpu, x, sizeof(float) * (size_t)MMAX * K), *bw = th_buf(gpu, w, 2 * (size_t)N * K);
    di_buf *by = th_buf(gpu, NULL, sizeof(float) * (size_t)MMAX * N);
    di_kernel *k = th_kernel(gpu, "matmul", &p);
    for (int rep = 0; rep < 3; rep++)
        for (long m = 1; m <= 513; m++) {
            long M = m == 513 ? MMAX : m;
            th_launch(gpu, k, (di_val[]){{.buf = by}, {.buf = bx}, {.buf = bw}}, (long[]){M});
            th_read(by, m == 1 && rep == 0 ? ref : y, sizeof(float) * N);
            if (m > 1 || rep > 0) cr_assert(th_bits_equal(y, ref, N), "row 0 differs at M=%ld (repeat %d)", M, rep);
        }
    free(x); free(y); free(ref); free(w);
    di_buf_free(bx); di_buf_free(bw); di_buf_free(by);
    di_rt_close(gpu);
}

/* A model's logits for the prompts, every position: GPU exact == CPU, bit for bit. */
static void compare_model_logits(di_rt *gpu, const char *path, const char *what, const char *const *texts, int n_texts)
{
    fixture cpu = fixture_open_path(path, 2, 256, 16, 1);
    di_model *mg;
    di_err e = {0};
    di_model_opts o = {.max_batch_tokens = 256, .ctx = 512, .kv_blocks = 16, .max_seqs = 1};
    cr_assert_eq(di_model_load(path, gpu, &o, &mg, &e), 0, "%s", e.msg);
    int V = di_model_config(mg)->vocab;
    int32_t blocks[16];
    for (int b = 0; b < 16; b++) blocks[b] = b;
    cr_assert_eq(di_model_set_blocks(mg, 0, blocks, 16, &e), 0);
    cr_assert_eq(di_model_set_blocks(cpu.m, 0, blocks, 16, &e), 0);
    for (int k = 0; k < n_texts; k++) {
        int32_t *ids;
        size_t n;
        cr_assert_eq(di_tokenize(cpu.tok, texts[k], strlen(texts[k]), true, &ids, &n, &e), 0);
        cr_assert_leq(n, 64, "%s prompt %d: %zu tokens", what, k + 1, n);
        int32_t pos[64], seq[64], rows[64];
        for (size_t i = 0; i < n; i++) { pos[i] = (int)i; seq[i] = 0; rows[i] = (int)i; }
        float *lc = malloc(sizeof(float) * n * V), *lg = malloc(sizeof(float) * n * V);
        di_step st = {.n = (int)n, .tokens = ids, .pos = pos, .seq = seq, .n_out = (int)n, .out_rows = rows, .logits = lc};
        cr_assert_eq(di_model_forward(cpu.m, &st, &e), 0, "%s", e.msg);
        st.logits = lg;
        cr_assert_eq(di_model_forward(mg, &st, &e), 0, "%s", e.msg);
        size_t diff = 0;
        for (size_t i = 0; i < n * V; i++) diff += memcmp(&lc[i], &lg[i], 4) != 0;
        cr_assert_eq(diff, 0, "%s prompt %d: %zu of %zu logits differ between CPU and GPU", what, k + 1, diff, n * V);
        fprintf(stderr, "gpu: %s prompt %d, %zu positions x %d logits: GPU exact == CPU bitwise\n", what, k + 1, n, V);
        free(lc); free(lg); free(ids);
    }
    di_model_free(mg);
    fixture_close(&cpu);
}

static const char *const prompts[5] = {
    "The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a small village,",
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"};

Test(gpu, exact_model_logits_bitwise_equal_to_cpu, .timeout = 900)
{
    di_rt *gpu = gpu_or_skip();
    NEED_MODEL();
    compare_model_logits(gpu, model_path(), "SmolLM2", prompts, 5);
    di_rt_close(gpu);
}

/* Gemma 3 270M (Q4_K, Q5_0, Q6_K and Q8_0 tensors, its extra norms and gelu MLP, a 262144-token
 * vocabulary): the same, on the first four prompts. */
Test(gpu, exact_gemma3_logits_bitwise_equal_to_cpu, .timeout = 900)
{
    di_rt *gpu = gpu_or_skip();
    if (!gemma3_path()) { di_rt_close(gpu); cr_skip_test("DETINFER_GEMMA3 is not set (scripts/test fetches Gemma 3 270M)"); }
    compare_model_logits(gpu, gemma3_path(), "Gemma 3", prompts, 4);
    di_rt_close(gpu);
}
