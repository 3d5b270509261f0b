/* The fast profile's tensor-core attention (codegen/attention_fast.c).
 * Without a GPU: where the path applies, the launch plan, and that the source compiles with
 * NVRTC to mma.sync code without spills, at SmolLM2's and Llama-3-8B's head shapes.
 * With a GPU, at both shapes: accuracy against a float64 reference of the same inputs; the
 * same bits for a sequence fed whole, in chunks of 1, 7 and 64 and mixed with other
 * sequences (so decode and prefill), in the fold mode and the split mode, three times over;
 * and a query alone against the same query inside a decode batch of 64 sequences. */
#include "helpers.h"
#include "codegen/attention_fast.h"
#include "vendor/vendor.h"

static const di_target cuda_t = {.backend = DI_BACKEND_CUDA, .arch = "sm_90a", .sm_count = 132};
static const di_target c_t = {.backend = DI_BACKEND_C};
#define APPLIES(s, p, t) di_lowering_attention_fast.applies((s), (p), &(t))

/* The attention schedule with its mode forced: 1 fold, 2 split (0: the target's default). */
static di_att_schedule att_mode(int mode)
{
    di_specialization none = {0};
    di_att_schedule a = di_att_schedule_of(&none, &cuda_t);
    a.mode = mode;
    return a;
}

typedef struct { long nh, nkv, hd; } heads;
static const heads smollm2 = {9, 3, 64}, llama8b = {32, 8, 128};

static di_specialization att_spec(heads h, di_profile prof)
{
    di_specialization p = th_spec("attention", "NH", h.nh, "NKV", h.nkv, "HD", h.hd, NULL);
    p.profile = prof;
    return p;
}

/* ---- no GPU needed ------------------------------------------------------------------------ */

Test(gpu_attention, applies_to_fast_cuda_attention_of_supported_shapes)
{
    const di_spec *s = di_spec_find("attention");
    di_specialization p = att_spec(llama8b, DI_PROFILE_FAST);
    cr_assert(APPLIES(s, &p, cuda_t));
    cr_assert_not(APPLIES(s, &p, c_t), "the C backend has no tensor cores");
    p = att_spec(llama8b, DI_PROFILE_EXACT);
    cr_assert_not(APPLIES(s, &p, cuda_t), "exact keeps the scalar lowering");
    p = att_spec((heads){8, 8, 72}, DI_PROFILE_FAST);
    cr_assert_not(APPLIES(s, &p, cuda_t), "HD 72 is not a multiple of 16");
    p = att_spec((heads){64, 2, 64}, DI_PROFILE_FAST);
    cr_assert_not(APPLIES(s, &p, cuda_t), "32 query heads per KV head exceed an m16 tile");
    di_specialization q = att_spec(smollm2, DI_PROFILE_FAST);
    cr_assert_not(APPLIES(di_spec_find("matmul"), &q, cuda_t));
}

Test(gpu_attention, plan_modes_follow_rows_and_width_only)
{
    const di_spec *s = di_spec_find("attention");
    di_specialization p = att_spec(llama8b, DI_PROFILE_FAST);
    di_attention_fast_mode_info pl;
    di_plan plan;
    di_err e = {0};
    cr_assert_eq(di_attention_fast_mode(s, &p, &cuda_t, 1, 256, &pl, &e), 0, "%s", e.msg);
    cr_assert(pl.split_mode, "a decode of one row at a long context splits the KV");
    cr_assert_eq(pl.grid_z, 256 * 32 / 32, "one block per split");
    cr_assert_eq(pl.workspace, (size_t)1 * 32 * 256 * 130 * 4);
    cr_assert_eq(di_attention_fast_mode(s, &p, &cuda_t, 4096, 256, &pl, &e), 0, "%s", e.msg);
    cr_assert_not(pl.split_mode, "a long prefill folds in registers");
    cr_assert_eq(pl.rows_per_warp, 4, "16 / (32 / 8) rows fill an m16 tile");
    cr_assert_eq(pl.workspace, 0);
    cr_assert_eq(di_lowering_attention_fast.plan(s, &p, &cuda_t, (long[]){4096, 256}, &plan, &e), 0, "%s", e.msg);
    cr_assert_eq(plan.n, 1, "phase 2 is not launched in fold mode");
    cr_assert_eq(di_attention_fast_mode(s, &p, &cuda_t, 0, 256, &pl, &e), 0, "%s", e.msg);
    cr_assert_neq(di_attention_fast_mode(s, &p, &cuda_t, 1, 0, &pl, &e), 0, "a zero-width block table is refused");
    cr_assert(strstr(e.msg, "block-table width"), "%s", e.msg);
    /* a context of 2^22 positions: more splits than grid z holds, so fold mode, never an error */
    cr_assert_eq(di_attention_fast_mode(s, &p, &cuda_t, 1, (1L << 22) / 32, &pl, &e), 0, "%s", e.msg);
    cr_assert_not(pl.split_mode);
    di_specialization b = p;   /* di_spec_set_dtype refuses this; applies() must too, on its own */
    cr_assert_str_eq(s->args[2].name, "kc");
    b.dtypes[2] = DI_BF16;
    cr_assert_not(APPLIES(s, &b, cuda_t), "the kernel reads f32 K/V only");
    p.att = att_mode(2);
    cr_assert_eq(di_attention_fast_mode(s, &p, &cuda_t, 4096, 4, &pl, &e), 0, "%s", e.msg);
    cr_assert(pl.split_mode);
    cr_assert_neq(di_attention_fast_mode(s, &p, &cuda_t, 70000, 4, &pl, &e), 0, "phase 2's grid y holds 65535 rows");
    /* a forced mode is another schedule: another kernel name; an invalid one is refused */
    char a[256], c[256];
    di_specialization d = att_spec(llama8b, DI_PROFILE_FAST);
    di_kernel_name(s, &d, &cuda_t, a, sizeof a);
    di_kernel_name(s, &p, &cuda_t, c, sizeof c);
    cr_assert_str_neq(a, c, "a forced mode must not share the default's name");
    p.att.mode = 3;
    cr_assert_neq(di_specialization_check(s, &p, &e), 0);
    cr_assert(strstr(e.msg, "mode"), "%s", e.msg);
}

Test(gpu_attention, vendor_kv_split_is_validated_and_named)
{
    const di_spec *s = di_spec_find("attention");
    di_specialization p = att_spec(llama8b, DI_PROFILE_VENDOR);
    di_err e = {0};
    p.kv_split = 16;
    cr_assert_eq(di_specialization_check(s, &p, &e), 0, "%s", e.msg);
    char name[256];
    di_kernel_name(s, &p, &cuda_t, name, sizeof name);
    cr_assert(strstr(name, "_vendor_kvs16"), "%s", name);
    cr_assert(APPLIES(s, &p, cuda_t), "vendor attention runs the tensor-core kernel");
    di_str src = {0};
    cr_assert_neq(di_codegen(s, &p, &c_t, &src, &e), 0, "the scalar lowering cannot take another split size");
    cr_assert(strstr(e.msg, "KV split size"), "%s", e.msg);
    free(src.p);
    p.kv_split = 24;
    cr_assert_neq(di_specialization_check(s, &p, &e), 0);
    cr_assert(strstr(e.msg, "not 16, 32, 48 or 64"), "%s", e.msg);
    p = att_spec(llama8b, DI_PROFILE_FAST);
    p.kv_split = 16;
    cr_assert_neq(di_specialization_check(s, &p, &e), 0, "fast keeps the spec's split");
    cr_assert(strstr(e.msg, "vendor profile's batch-dependent choice"), "%s", e.msg);
    di_specialization m = th_spec("matmul", NULL);
    m.profile = DI_PROFILE_VENDOR;
    m.kv_split = 32;
    cr_assert_neq(di_specialization_check(di_spec_find("matmul"), &m, &e), 0);
    cr_assert(strstr(e.msg, "attention specs only"), "%s", e.msg);
    cr_assert_eq(di_vendor_attention_kv_split(1), 16);
    cr_assert_eq(di_vendor_attention_kv_split(64), 32);
    cr_assert_eq(di_vendor_attention_kv_split(300), 64);
}

static void compile_and_inspect(heads h)
{
    di_specialization p = att_spec(h, DI_PROFILE_FAST);
    char name[256], entry[300];
    di_nvrtc_out out = {0};
    th_compile_fast(di_spec_find("attention"), &p, name, sizeof name, &out);
    cr_assert(strstr(out.ptx, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"), "%s: no bf16 mma", name);
    snprintf(entry, sizeof entry, ".entry %s_merge(", name);
    cr_assert(strstr(out.ptx, entry), "%s: phase 2 entry missing", name);
    th_assert_no_spills(out.log, name);
    di_nvrtc_out_free(&out);
}

Test(gpu_attention, source_compiles_with_nvrtc_to_tensor_core_code, .timeout = 120)
{
    compile_and_inspect(smollm2);
    compile_and_inspect(llama8b);
}

/* ---- on the GPU ------------------------------------------------------------------------------ */

enum { KVB = 32, MAXB = 16, NSEQ = 66, T = 300 };   /* T: ten KV splits, the last one partial */

typedef struct {
    di_rt *rt;
    heads h;
    long qkvw;
    di_buf *kc, *vc, *btab;
    bool kv16;   /* a bf16 cache (kv_write_bf16), as the fast profile's models hold */
    bool out16;  /* out stored as bf16 (for Wo's fast matmul), read back widened to f32 */
} kv_cache;

/* NSEQ sequences; sequence s owns blocks s, s + NSEQ, s + 2 NSEQ, ... in a permuted order. */
static kv_cache cache_new(di_rt *rt, heads h, bool kv16)
{
    static int btab[NSEQ * MAXB];
    for (int s = 0; s < NSEQ; s++)
        for (int b = 0; b < MAXB; b++) btab[s * MAXB + b] = ((b * 7) % MAXB) * NSEQ + s;
    size_t bytes = (size_t)NSEQ * MAXB * KVB * h.nkv * h.hd * (kv16 ? 2 : 4);
    kv_cache c = {rt, h, (h.nh + 2 * h.nkv) * h.hd, th_buf(rt, NULL, bytes), th_buf(rt, NULL, bytes),
                  th_buf(rt, btab, sizeof btab), kv16, false};
    return c;
}

static void cache_free(kv_cache *c) { di_buf_free(c->kc); di_buf_free(c->vc); di_buf_free(c->btab); }

/* One step: the rows' k and v go to the cache, then they attend (as the model does). */
static void step(kv_cache *c, const float *qkv, const int *pos, const int *seq, long rows, int mode, float *out)
{
    di_rt *rt = c->rt;
    long ow = c->h.nh * c->h.hd;
    di_buf *bq = th_buf(rt, qkv, rows * c->qkvw * 4), *bp = th_buf(rt, pos, rows * 4), *bs = th_buf(rt, seq, rows * 4),
           *bo = th_buf(rt, NULL, rows * ow * (c->out16 ? 2 : 4));
    long sizes[] = {rows, MAXB};
    const char *kv_write = c->kv16 ? "kv_write_bf16" : "kv_write";
    di_specialization kw = th_spec(kv_write, "NH", c->h.nh, "NKV", c->h.nkv, "HD", c->h.hd, NULL);
    di_specialization at = th_spec("attention", "NH", c->h.nh, "NKV", c->h.nkv, "HD", c->h.hd, NULL);
    if (c->kv16) {
        const di_spec *as = di_spec_find("attention");
        di_err e = {0};
        cr_assert_eq(di_spec_set_dtype(as, &at, "kc", DI_BF16, &e) || di_spec_set_dtype(as, &at, "vc", DI_BF16, &e), 0,
                     "%s", e.msg);
    }
    if (c->out16) {
        di_err e = {0};
        cr_assert_eq(di_spec_set_dtype(di_spec_find("attention"), &at, "out", DI_BF16, &e), 0, "%s", e.msg);
    }
    if (mode) {   /* a forced mode is a fast schedule (the vendor negative control keeps its own) */
        at.profile = DI_PROFILE_FAST;
        at.att = att_mode(mode);
    }
    di_val w[] = {{.buf = c->kc}, {.buf = c->vc}, {.buf = bq}, {.buf = bp}, {.buf = bs}, {.buf = c->btab}};
    th_launch(rt, th_kernel(rt, kv_write, &kw), w, sizes);
    di_val a[] = {{.buf = bo}, {.buf = bq}, {.buf = c->kc}, {.buf = c->vc}, {.buf = bp}, {.buf = bs}, {.buf = c->btab}};
    th_launch(rt, th_kernel(rt, "attention", &at), a, sizes);
    if (c->out16) {
        uint16_t *h = malloc(rows * ow * 2);
        th_read(bo, h, rows * ow * 2);
        for (long i = 0; i < rows * ow; i++) out[i] = th_from_bf16(h[i]);
        free(h);
    } else {
        th_read(bo, out, rows * ow * 4);
    }
    di_buf_free(bq); di_buf_free(bp); di_buf_free(bs); di_buf_free(bo);
}

/* Sequence 0's T tokens in chunks of `chunk`; with `mix`, every step also carries one token of
 * each of sequences 1..mix (their own positions, advancing), before and after sequence 0's. */
/* kv16: 0 f32 cache; 1 bf16 cache; 2 bf16 cache and bf16 out */
static void run_seq(di_rt *rt, heads h, const float *x, const float *other, long chunk, long mix, int mode, int kv16,
                    float *out)
{
    kv_cache c = cache_new(rt, h, kv16 > 0);
    c.out16 = kv16 == 2;
    long ow = h.nh * h.hd, step_no = 0;
    for (long t0 = 0; t0 < T; t0 += chunk, step_no++) {
        long n = T - t0 < chunk ? T - t0 : chunk, rows = n + mix;
        float *q = malloc(rows * c.qkvw * 4), *o = malloc(rows * ow * 4);
        int *pos = malloc(rows * 4), *seq = malloc(rows * 4);
        long r = mix / 2;   /* sequence 0's first row: half the others before it, half after */
        for (long s = 1; s <= mix; s++) {
            long at = s <= r ? s - 1 : n + s - 1;
            memcpy(q + at * c.qkvw, other + ((s * 31 + step_no) % (2 * T)) * c.qkvw, c.qkvw * 4);
            pos[at] = (int)step_no;
            seq[at] = (int)s;
        }
        for (long i = 0; i < n; i++) {
            memcpy(q + (r + i) * c.qkvw, x + (t0 + i) * c.qkvw, c.qkvw * 4);
            pos[r + i] = (int)(t0 + i);
            seq[r + i] = 0;
        }
        step(&c, q, pos, seq, rows, mode, o);
        memcpy(out + t0 * ow, o + r * ow, n * ow * 4);
        free(q); free(o); free(pos); free(seq);
    }
    cache_free(&c);
}


static float bf16_round(float f) { return th_from_bf16(th_bf16(f)); }

/* float64 attention of query t, head hh over keys 0..t of x (q, k, v rounded to bf16 first, as
 * the kernel's inputs are), against the kernel's output; returns the largest error. */
static double check_accuracy(heads h, const float *x, const float *got, long t, long hh)
{
    long qkvw = (h.nh + 2 * h.nkv) * h.hd, kvh = hh / (h.nh / h.nkv);
    double *s = malloc((t + 1) * sizeof *s), mx = -INFINITY, sum = 0, worst = 0;
    const float *qv = x + t * qkvw + hh * h.hd;
    for (long j = 0; j <= t; j++) {
        const float *kv = x + j * qkvw + h.nh * h.hd + kvh * h.hd;
        double d = 0;
        for (long e = 0; e < h.hd; e++) d += (double)bf16_round(qv[e]) * bf16_round(kv[e]);
        s[j] = d / sqrt((double)h.hd);
        mx = fmax(mx, s[j]);
    }
    for (long j = 0; j <= t; j++) sum += exp(s[j] - mx);
    for (long d = 0; d < h.hd; d++) {
        double o = 0;
        for (long j = 0; j <= t; j++)
            o += exp(s[j] - mx) / sum * bf16_round(x[j * qkvw + (h.nh + h.nkv) * h.hd + kvh * h.hd + d]);
        double err = fabs(got[t * h.nh * h.hd + hh * h.hd + d] - o);
        worst = fmax(worst, err);
    }
    free(s);
    return worst;
}

/* Everything at one head shape: accuracy, then the same bits in every feeding, in both modes,
 * three repetitions. */
static void check_shape(heads h)
{
    di_rt *rt = th_gpu_rt_or_skip(DI_PROFILE_FAST);
    long qkvw = (h.nh + 2 * h.nkv) * h.hd, ow = h.nh * h.hd;
    float *x = malloc((size_t)T * qkvw * 4), *other = malloc((size_t)2 * T * qkvw * 4);
    th_fill(x, (size_t)T * qkvw, 11);
    th_fill(other, (size_t)2 * T * qkvw, 12);
    float *ref = malloc((size_t)T * ow * 4), *got = malloc((size_t)T * ow * 4);
    run_seq(rt, h, x, other, T, 0, 1, 0, ref);   /* the whole prompt in one step, fold mode */

    /* Weights are rounded to bf16 and the sum of exp is taken over the rounded weights: the
     * error is a few bf16 ulps of the output's scale (values in [-1, 1)). Stated bound: 1e-2. */
    double worst = 0;
    for (long t = 0; t < T; t += 23)
        for (long hh = 0; hh < h.nh; hh += 1 + h.nh / 5) worst = fmax(worst, check_accuracy(h, x, ref, t, hh));
    cr_assert(worst <= 1e-2, "fast attention (HD %ld): error %.3g against float64 over 1e-2", h.hd, worst);
    cr_log_info("fast attention NH %ld NKV %ld HD %ld: largest error against float64 %.3g", h.nh, h.nkv, h.hd, worst);

    const long chunks[] = {1, 7, 64, T};
    const long mixes[] = {0, 2, 63};
    for (int rep = 0; rep < 3; rep++)
        for (int mode = 1; mode <= 2; mode++)
            for (size_t c = 0; c < 4; c++)
                for (size_t m = 0; m < 3; m++) {
                    if (rep > 0 && m == 1) continue;   /* keep the run short: the others repeat */
                    if (chunks[c] == 1 && mixes[m] == 63 && rep > 0) continue;
                    run_seq(rt, h, x, other, chunks[c], mixes[m], mode, 0, got);
                    cr_assert(th_bits_equal(got, ref, (size_t)T * ow),
                              "HD %ld: chunk %ld with %ld other sequences per step, %s mode (repetition %d) "
                              "differs from the whole prompt in fold mode",
                              h.hd, chunks[c], mixes[m], mode == 1 ? "fold" : "split", rep + 1);
                }
    /* the product's own choice of mode, per step */
    run_seq(rt, h, x, other, 1, 63, 0, 0, got);
    cr_assert(th_bits_equal(got, ref, (size_t)T * ow), "HD %ld: decode in batches of 64, automatic mode", h.hd);
    run_seq(rt, h, x, other, 100, 5, 0, 0, got);
    cr_assert(th_bits_equal(got, ref, (size_t)T * ow), "HD %ld: chunks of 100 + 5 decodes, automatic mode", h.hd);
    /* a bf16 cache: the same operands reach the tensor cores, so the same bits, in each mode;
     * with bf16 out too: each output the f32 one rounded to nearest even (the test's own rounding) */
    const long feed[][3] = {{T, 0, 1}, {7, 2, 2}, {1, 63, 0}, {100, 5, 0}};
    float *ref16 = malloc((size_t)T * ow * 4);
    for (size_t i = 0; i < (size_t)T * ow; i++) ref16[i] = th_from_bf16(th_bf16(ref[i]));
    for (size_t f = 0; f < sizeof feed / sizeof feed[0]; f++) {
        run_seq(rt, h, x, other, feed[f][0], feed[f][1], (int)feed[f][2], 1, got);
        cr_assert(th_bits_equal(got, ref, (size_t)T * ow), "HD %ld: a bf16 KV cache (chunk %ld, %ld others, mode %ld) "
                  "differs from the f32 one", h.hd, feed[f][0], feed[f][1], feed[f][2]);
        run_seq(rt, h, x, other, feed[f][0], feed[f][1], (int)feed[f][2], 2, got);
        cr_assert(th_bits_equal(got, ref16, (size_t)T * ow), "HD %ld: bf16 out (chunk %ld, %ld others, mode %ld) is "
                  "not the f32 out rounded to nearest even", h.hd, feed[f][0], feed[f][1], feed[f][2]);
    }
    free(ref16);
    cr_log_info("fast attention HD %ld: bf16 KV cache == f32 KV cache, bf16 out == f32 out rounded, bitwise (4 feedings)",
                h.hd);
    free(x); free(other); free(ref); free(got);
    di_rt_close(rt);
}

Test(gpu_attention, smollm2_heads_accurate_and_bitwise_invariant, .timeout = 600) { check_shape(smollm2); }
Test(gpu_attention, llama8b_heads_accurate_and_bitwise_invariant, .timeout = 600) { check_shape(llama8b); }

/* The negative control: the vendor profile picks the KV split size from the row count, so the
 * same sequence fed whole (300 rows: splits of 64) and in decode steps (1 row: splits of 16)
 * differs, while each stays accurate. If this passes with equal bits, the checks above prove
 * nothing about batch dependence being caught. */
Test(gpu_attention, vendor_split_size_from_the_batch_changes_bits, .timeout = 300)
{
    di_rt *rt = th_gpu_rt_or_skip(DI_PROFILE_VENDOR);
    heads h = llama8b;
    long qkvw = (h.nh + 2 * h.nkv) * h.hd, ow = h.nh * h.hd;
    float *x = malloc((size_t)T * qkvw * 4), *other = malloc((size_t)2 * T * qkvw * 4);
    th_fill(x, (size_t)T * qkvw, 11);
    th_fill(other, (size_t)2 * T * qkvw, 12);
    float *whole = malloc((size_t)T * ow * 4), *decode = malloc((size_t)T * ow * 4);
    run_seq(rt, h, x, other, T, 0, 0, 0, whole);
    run_seq(rt, h, x, other, 1, 0, 0, 0, decode);
    size_t differ = 0;
    for (size_t i = 0; i < (size_t)T * ow; i++) differ += memcmp(&whole[i], &decode[i], 4) != 0;
    cr_log_info("vendor attention: %zu of %zu outputs differ between prefill and decode", differ, (size_t)T * ow);
    cr_assert_gt(differ, 0, "vendor attention gave the same bits with splits of 64 and of 16");
    double worst = 0;
    for (long t = 0; t < T; t += 23) worst = fmax(worst, fmax(check_accuracy(h, x, whole, t, 5), check_accuracy(h, x, decode, t, 5)));
    cr_assert(worst <= 1e-2, "vendor attention: error %.3g against float64 over 1e-2", worst);
    free(x); free(other); free(whole); free(decode);
    di_rt_close(rt);
}
