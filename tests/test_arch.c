/* The architectures of model/arch.def against an independent reference: each tiny-* random model
 * of perf/make_random_gguf is made again from its seed and run, teacher-forced, on the sequences
 * of tests/data/arch_ref.txt (HF transformers in float64, tests/data/make_arch_ref.py). Every
 * scored position must give the reference's top-1 id, and the log-probs of the next token and of
 * the reference's top 4 must be within 1e-4. Exact profile; DETINFER_TEST_BACKEND=cuda runs it on
 * the GPU (whose exact profile is the CPU's bits). */
#define _GNU_SOURCE   /* memmem */
#include "model_fixture.h"
#include <stdio.h>
#include <sys/wait.h>

enum { MAXSEQ = 64, MAXREF = 1024 };

typedef struct { long seq, pos; int next, top[4]; double next_lp, top_lp[4]; } ref_row;

typedef struct {
    int32_t ids[8][MAXSEQ];
    int n_ids[8], n_seqs;
    ref_row rows[MAXREF];
    int n_rows;
} arch_ref;

static void load_ref(const char *arch, arch_ref *r)
{
    FILE *f = fopen(DI_SOURCE_DIR "/tests/data/arch_ref.txt", "r");
    cr_assert_not_null(f, "tests/data/arch_ref.txt missing");
    static char line[8192];
    memset(r, 0, sizeof *r);
    while (fgets(line, sizeof line, f)) {
        char a[32];
        int off = 0;
        if (!strncmp(line, "ids ", 4)) {
            long s;
            if (sscanf(line + 4, "%31s %ld%n", a, &s, &off) != 2 || strcmp(a, arch)) continue;
            cr_assert(s < 8);
            char *p = line + 4 + off, *end;
            for (long v; (v = strtol(p, &end, 10)), end != p; p = end) r->ids[s][r->n_ids[s]++] = (int32_t)v;
            if (s + 1 > r->n_seqs) r->n_seqs = (int)s + 1;
            continue;
        }
        if (line[0] == '#' || sscanf(line, "%31s", a) != 1 || strcmp(a, arch)) continue;
        ref_row *x = &r->rows[r->n_rows];
        int got = sscanf(line, "%31s %ld %ld %d %lf %d %lf %d %lf %d %lf %d %lf", a, &x->seq, &x->pos, &x->next,
                         &x->next_lp, &x->top[0], &x->top_lp[0], &x->top[1], &x->top_lp[1], &x->top[2], &x->top_lp[2],
                         &x->top[3], &x->top_lp[3]);
        cr_assert_eq(got, 13, "arch_ref.txt: a bad line: %s", line);
        cr_assert(++r->n_rows < MAXREF);
    }
    fclose(f);
    cr_assert(r->n_seqs >= 5 && r->n_rows >= 5 * 32, "%s: %d sequences, %d scored positions in arch_ref.txt", arch,
              r->n_seqs, r->n_rows);
}

/* The model in the exact profile, on the CPU (DETINFER_TEST_BACKEND=cuda: the GPU), for one
 * sequence of up to MAXSEQ positions. */
static di_model *open_exact(const char *path, di_rt **rt)
{
    const char *b = getenv("DETINFER_TEST_BACKEND");
    di_rt_opts ro = {.backend = b && !strcmp(b, "cuda") ? DI_BACKEND_CUDA : DI_BACKEND_C, .threads = 2,
                     .profile = DI_PROFILE_EXACT};
    di_model *m;
    di_err e = {0};
    cr_assert_eq(di_rt_open(&ro, rt, &e), 0, "%s", e.msg);
    int n = (MAXSEQ + di_model_kv_block() - 1) / di_model_kv_block();
    di_model_opts o = {.max_batch_tokens = MAXSEQ, .ctx = MAXSEQ, .kv_blocks = n, .max_seqs = 1};
    cr_assert_eq(di_model_load(path, *rt, &o, &m, &e), 0, "%s: %s", path, e.msg);
    int32_t blocks[MAXSEQ];
    for (int i = 0; i < n; i++) blocks[i] = i;
    cr_assert_eq(di_model_set_blocks(m, 0, blocks, n, &e), 0, "%s", e.msg);
    return m;
}

static void check_arch(const char *arch)
{
    arch_ref *ref = malloc(sizeof *ref);
    load_ref(arch, ref);
    char path[] = "/tmp/detinfer-arch-XXXXXX.gguf", cmd[512];
    int fd = mkstemps(path, 5);
    cr_assert(fd >= 0);
    close(fd);
    snprintf(cmd, sizeof cmd, DI_BUILD_DIR "/make_random_gguf %s --shape tiny-%s --seed 1 --quiet", path, arch);
    cr_assert_eq(system(cmd), 0, "%s", cmd);

    di_rt *rt;
    di_model *m = open_exact(path, &rt);
    di_err e = {0};
    int V = di_model_config(m)->vocab;
    float *lp = malloc((size_t)MAXSEQ * V * sizeof(float));
    double worst = 0;
    int top1 = 0;
    for (int s = 0; s < ref->n_seqs; s++) {
        int n = ref->n_ids[s];
        int32_t pos[MAXSEQ], seq[MAXSEQ] = {0}, rows[MAXSEQ];
        for (int i = 0; i < n; i++) pos[i] = rows[i] = i;
        di_step st = {n, ref->ids[s], pos, seq, n, rows, lp, NULL, NULL};
        cr_assert_eq(di_model_forward(m, &st, &e), 0, "%s: %s", arch, e.msg);
        for (int k = 0; k < ref->n_rows; k++) {
            const ref_row *x = &ref->rows[k];
            if (x->seq != s) continue;
            const float *row = lp + (size_t)x->pos * V;
            int best = 0;
            for (int v = 1; v < V; v++) best = row[v] > row[best] ? v : best;
            cr_assert_eq(best, x->top[0], "%s: sequence %d position %ld: top-1 %d, the reference's %d (%.6f vs %.6f)",
                         arch, s, x->pos, best, x->top[0], (double)row[best], x->top_lp[0]);
            top1++;
            double d = fabs(row[x->next] - x->next_lp);
            for (int t = 0; t < 4; t++) d = fmax(d, fabs(row[x->top[t]] - x->top_lp[t]));
            cr_assert(d <= 1e-4, "%s: sequence %d position %ld: log-prob error %.3g over 1e-4", arch, s, x->pos, d);
            worst = fmax(worst, d);
        }
    }
    cr_log_info("%s: top-1 equal at %d of %d positions; largest log-prob error %.3g (tolerance 1e-4)", arch, top1,
                ref->n_rows, worst);
    cr_assert_eq(top1, ref->n_rows);
    free(lp);
    di_model_free(m);
    di_rt_close(rt);
    unlink(path);
    free(ref);
}

Test(arch, llama3_matches_hf_float64, .timeout = 300) { check_arch("llama3"); }
Test(arch, mistral_matches_hf_float64, .timeout = 300) { check_arch("mistral"); }
Test(arch, qwen2_matches_hf_float64, .timeout = 300) { check_arch("qwen2"); }
Test(arch, qwen3_matches_hf_float64, .timeout = 300) { check_arch("qwen3"); }
Test(arch, gemma3_matches_hf_float64, .timeout = 300) { check_arch("gemma3"); }

/* ---- the real Gemma 3 270M against HF float64 -------------------------------------------- */

/* tests/data/gemma3_ref.txt (tests/data/make_gemma3_ref.py): 10 factual prompts, each continued
 * greedily by HF for 32 tokens, then scored. The GGUF's blocks are Q4_K/Q6_K, dequantized by both
 * to the same values and rounded to bf16 matrices; what differs is the order of every sum
 * (float64 vs detinfer's f32 canonical order), so near-ties may flip: top-1 must agree on >= 99 %
 * of the positions, and the next token's log-prob be within 1e-3 (measured: 320 of 320, 1.3e-5). */
typedef struct { int seq; long pos; int next, top1; double next_lp, top1_lp; } gemma_row;

Test(arch, gemma3_270m_matches_hf_float64, .timeout = 900)
{
    const char *path = gemma3_path();
    if (!path) cr_skip_test("DETINFER_GEMMA3 is not set (scripts/fetch-model --gemma3)");
    FILE *f = fopen(DI_SOURCE_DIR "/tests/data/gemma3_ref.txt", "r");
    cr_assert_not_null(f, "tests/data/gemma3_ref.txt missing");
    static int32_t ids[16][MAXSEQ];
    static gemma_row rows[16 * MAXSEQ];
    int n_ids[16] = {0}, n_seqs = 0, n_rows = 0;
    static char line[8192];
    while (fgets(line, sizeof line, f)) {
        int s, off = 0;
        if (line[0] == '#') continue;
        if (!strncmp(line, "ids ", 4)) {
            cr_assert(sscanf(line + 4, "%d%n", &s, &off) == 1 && s >= 0 && s < 16, "gemma3_ref.txt: %s", line);
            char *p = line + 4 + off, *end;
            for (long v; (v = strtol(p, &end, 10)), end != p; p = end) {
                cr_assert(n_ids[s] < MAXSEQ);
                ids[s][n_ids[s]++] = (int32_t)v;
            }
            n_seqs = s + 1 > n_seqs ? s + 1 : n_seqs;
            continue;
        }
        gemma_row *x = &rows[n_rows];
        int top2;
        double lp2;
        cr_assert_eq(sscanf(line, "%d %ld %d %lf %d %lf %d %lf", &x->seq, &x->pos, &x->next, &x->next_lp, &x->top1,
                            &x->top1_lp, &top2, &lp2), 8, "gemma3_ref.txt: a bad line: %s", line);
        cr_assert(++n_rows < 16 * MAXSEQ);
    }
    fclose(f);
    cr_assert(n_seqs >= 10 && n_rows >= 10 * 32, "gemma3_ref.txt: %d prompts, %d positions", n_seqs, n_rows);

    di_rt *rt;
    di_model *m = open_exact(path, &rt);
    di_err e = {0};
    int V = di_model_config(m)->vocab;
    float *lp = malloc((size_t)MAXSEQ * V * sizeof(float));
    cr_assert_not_null(lp);
    int agree = 0;
    double worst = 0;
    for (int s = 0; s < n_seqs; s++) {
        int n = n_ids[s];
        int32_t pos[MAXSEQ], seq[MAXSEQ] = {0}, out_rows[MAXSEQ];
        for (int i = 0; i < n; i++) pos[i] = out_rows[i] = i;
        di_step st = {n, ids[s], pos, seq, n, out_rows, lp, NULL, NULL};
        cr_assert_eq(di_model_forward(m, &st, &e), 0, "prompt %d: %s", s, e.msg);
        for (int k = 0; k < n_rows; k++) {
            const gemma_row *x = &rows[k];
            if (x->seq != s) continue;
            cr_assert(x->pos >= 0 && x->pos < n);
            const float *row = lp + (size_t)x->pos * V;
            int best = 0;
            for (int v = 1; v < V; v++) best = row[v] > row[best] ? v : best;
            if (best == x->top1) agree++;
            else
                cr_log_info("gemma3: prompt %d position %ld: top-1 %d (%.6f), HF's %d (%.6f)", s, x->pos, best,
                            (double)row[best], x->top1, x->top1_lp);
            worst = fmax(worst, fabs(row[x->next] - x->next_lp));
        }
    }
    cr_log_info("gemma3 270M: top-1 equal at %d of %d positions (%.2f %%); largest |log-prob error| of the next "
                "token %.3g", agree, n_rows, 100.0 * agree / n_rows, worst);
    cr_assert(agree * 100 >= n_rows * 99, "top-1 equal at %d of %d positions, under 99 %%", agree, n_rows);
    cr_assert(worst <= 1e-3, "a log-prob error of %.3g, over 1e-3", worst);
    free(lp);
    di_model_free(m);
    di_rt_close(rt);
}

/* ---- what each architecture needs, missing or wrong: an error naming it -------------------- */

/* A tiny-<arch> file with the first occurrence of `from` replaced by `to` (the same length:
 * a key or tensor renamed so that the loader no longer finds it). */
static void make_patched(const char *arch, const char *from, const char *to, char *path)
{
    strcpy(path, "/tmp/detinfer-arch-bad-XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    char cmd[512];
    snprintf(cmd, sizeof cmd, DI_BUILD_DIR "/make_random_gguf %s --shape tiny-%s --quiet", path, arch);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    FILE *f = fopen(path, "r+b");
    cr_assert_not_null(f);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    size_t k = strlen(from);
    cr_assert_eq(k, strlen(to));
    char *at = memmem(buf, n, from, k);
    cr_assert_not_null(at, "%s: no '%s' in the first MiB", arch, from);
    fseek(f, at - buf, SEEK_SET);
    cr_assert_eq(fwrite(to, 1, k, f), k);
    fclose(f);
}

static void expect_refused(const char *arch, const char *from, const char *to, const char *needle)
{
    char path[64];
    make_patched(arch, from, to, path);
    di_rt *rt = th_rt(DI_BACKEND_C, 1);
    di_model *m = NULL;
    di_err e = {0};
    di_model_opts o = {.max_batch_tokens = 8, .ctx = 64, .kv_blocks = 2, .max_seqs = 1};
    int rc = di_model_load(path, rt, &o, &m, &e);
    cr_assert_neq(rc, 0, "%s with '%s' renamed '%s' loaded", arch, from, to);
    cr_assert(strstr(e.msg, needle) && strstr(e.msg, path), "%s: the message does not name '%s' and the file: %s", arch,
              needle, e.msg);
    di_rt_close(rt);
    unlink(path);
}

Test(arch, missing_keys_and_tensors_are_named)
{
    expect_refused("gemma3", "gemma3.attention.sliding_window", "gemma3.attention.sliding_windoX",
                   "gemma3.attention.sliding_window");
    expect_refused("gemma3", "blk.0.post_ffw_norm.weight", "blk.0.post_ffw_norX.weight", "blk.0.post_ffw_norm.weight");
    expect_refused("gemma3", "blk.1.post_attention_norm.weight", "blk.1.post_attention_norX.weight",
                   "blk.1.post_attention_norm.weight");
    expect_refused("qwen3", "blk.1.attn_k_norm.weight", "blk.1.attn_k_norX.weight", "blk.1.attn_k_norm.weight");
    expect_refused("qwen2", "blk.0.attn_v.bias", "blk.0.attn_v.biaX", "blk.0.attn_v.bias");
    expect_refused("qwen3", "qwen3.attention.head_count_kv", "qwen3.attention.head_count_kX",
                   "qwen3.attention.head_count_kv");
    /* without key_length the head dim is dim / heads (32), which value_length (48) contradicts */
    expect_refused("qwen3", "qwen3.attention.key_length", "qwen3.attention.key_lengtX", "qwen3.attention.value_length = 48");
    expect_refused("gemma3", "gemma3", "gemmaX", "unsupported architecture 'gemmaX' (detinfer runs llama, qwen2, qwen3, gemma3)");
}
