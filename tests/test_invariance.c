/* Batch invariance on the CPU backend, bitwise: a row's result must not depend on how many
 * rows share the launch, where it sits among them, or how many worker threads run it;
 * attention must give the same bits in prefill, in chunks and in decode. */
#include "helpers.h"

static const long batch_sizes[] = {1, 2, 3, 7, 64, 257};
#define NBATCH (sizeof batch_sizes / sizeof batch_sizes[0])

/* Runs a [rows, in_w] -> [rows, out_w] kernel with the probe row at `at`, others random. */
typedef void (*row_op)(di_rt *rt, const float *x, long rows, float *y);

static void check_row_invariance(const char *what, row_op op, long in_w, long out_w)
{
    di_rt *rts[2] = {th_rt(DI_BACKEND_C, 1), th_rt(DI_BACKEND_C, 2)};
    float *probe = malloc(in_w * 4), *ref = malloc(out_w * 4);
    th_fill(probe, in_w, 4242);
    op(rts[0], probe, 1, ref);
    for (int t = 0; t < 2; t++)
        for (size_t b = 0; b < NBATCH; b++) {
            long rows = batch_sizes[b], at = (rows * 5) / 7;   /* a different place in each batch */
            float *x = malloc(rows * in_w * 4), *y = malloc(rows * out_w * 4);
            th_fill(x, rows * in_w, 99 + rows);
            memcpy(x + at * in_w, probe, in_w * 4);
            op(rts[t], x, rows, y);
            cr_assert(th_bits_equal(y + at * out_w, ref, out_w),
                      "%s: row %ld of a %ld-row batch (%d threads) differs from the same row alone", what, at, rows,
                      t + 1);
            free(x); free(y);
        }
    free(probe); free(ref);
    di_rt_close(rts[0]); di_rt_close(rts[1]);
}

enum { K = 576, N = 1536, V = 49152, D = 576 };
static uint16_t *weights;

static void matmul_op(di_rt *rt, const float *x, long rows, float *y)
{
    di_specialization p = th_spec("matmul", "K", (long)K, "N", (long)N, NULL);
    di_buf *bx = th_buf(rt, x, rows * K * 4), *bw = th_buf(rt, weights, (size_t)N * K * 2), *by = th_buf(rt, NULL, rows * N * 4);
    di_val a[] = {{.buf = by}, {.buf = bx}, {.buf = bw}};
    th_launch(rt, th_kernel(rt, "matmul", &p), a, (long[]){rows});
    th_read(by, y, rows * N * 4);
    di_buf_free(bx); di_buf_free(bw); di_buf_free(by);
}

Test(invariance, matmul_row_bits_independent_of_batch)
{
    weights = malloc((size_t)N * K * 2);
    uint64_t s = 5;
    for (long i = 0; i < (long)N * K; i++) weights[i] = th_bf16(th_uniform(&s));
    check_row_invariance("matmul", matmul_op, K, N);
    free(weights);
}

static void rmsnorm_op(di_rt *rt, const float *x, long rows, float *y)
{
    float w[D];
    th_fill(w, D, 3);
    di_buf *bx = th_buf(rt, x, rows * D * 4), *bw = th_buf(rt, w, sizeof w), *by = th_buf(rt, NULL, rows * D * 4);
    di_val a[] = {{.buf = by}, {.buf = bx}, {.buf = bw}, {.f32 = 1e-5f}};
    th_launch(rt, th_kernel(rt, "rmsnorm", NULL), a, (long[]){rows});
    th_read(by, y, rows * D * 4);
    di_buf_free(bx); di_buf_free(bw); di_buf_free(by);
}

Test(invariance, rmsnorm_row_bits_independent_of_batch) { check_row_invariance("rmsnorm", rmsnorm_op, D, D); }

static void log_softmax_op(di_rt *rt, const float *x, long rows, float *y)
{
    di_buf *bx = th_buf(rt, x, rows * V * 4), *by = th_buf(rt, NULL, rows * V * 4);
    di_val a[] = {{.buf = by}, {.buf = bx}};
    th_launch(rt, th_kernel(rt, "log_softmax", NULL), a, (long[]){rows});
    th_read(by, y, rows * V * 4);
    di_buf_free(bx); di_buf_free(by);
}

Test(invariance, log_softmax_row_bits_independent_of_batch, .timeout = 120)
{
    check_row_invariance("log_softmax", log_softmax_op, V, V);
}

/* ---- attention ------------------------------------------------------------------------ */

enum { NH = 9, NKV = 3, HD = 64, QKVW = (NH + 2 * NKV) * HD, KVB = 32, NBLK = 16, MAXB = 8 };

typedef struct {
    di_rt *rt;
    di_buf *kc, *vc, *btab;
} kv_cache;

static kv_cache cache_new(di_rt *rt)
{
    /* Sequence 0 owns blocks 5, 2, 9, 0 (non-contiguous on purpose); sequence 1 owns 1, 3, 4, 6. */
    int btab[2 * MAXB] = {5, 2, 9, 0, 7, 8, 10, 11, 1, 3, 4, 6, 12, 13, 14, 15};
    size_t bytes = (size_t)NBLK * KVB * NKV * HD * 4;
    kv_cache c = {rt, th_buf(rt, NULL, bytes), th_buf(rt, NULL, bytes), th_buf(rt, btab, sizeof btab)};
    return c;
}

static void cache_free(kv_cache *c) { di_buf_free(c->kc); di_buf_free(c->vc); di_buf_free(c->btab); }

/* One step: tokens (qkv rows with their positions and sequences) are written to the cache,
 * then attend. Returns the attention output rows. */
static void step(kv_cache *c, const float *qkv, const int *pos, const int *seq, long rows, long win, float *out)
{
    di_buf *bq = th_buf(c->rt, qkv, rows * QKVW * 4), *bp = th_buf(c->rt, pos, rows * 4),
           *bs = th_buf(c->rt, seq, rows * 4), *bo = th_buf(c->rt, NULL, rows * NH * HD * 4);
    long sizes[] = {rows, MAXB};
    di_val w[] = {{.buf = c->kc}, {.buf = c->vc}, {.buf = bq}, {.buf = bp}, {.buf = bs}, {.buf = c->btab}};
    th_launch(c->rt, th_kernel(c->rt, "kv_write", NULL), w, sizes);
    di_val a[] = {{.buf = bo}, {.buf = bq}, {.buf = c->kc}, {.buf = c->vc}, {.buf = bp}, {.buf = bs}, {.buf = c->btab}};
    if (win) {   /* the sliding-window spec: a query sees its last `win` positions */
        di_specialization p = th_spec("attention_window", "WIN", win, NULL);
        th_launch(c->rt, th_kernel(c->rt, "attention_window", &p), a, sizes);
    } else {
        th_launch(c->rt, th_kernel(c->rt, "attention", NULL), a, sizes);
    }
    th_read(bo, out, rows * NH * HD * 4);
    di_buf_free(bq); di_buf_free(bp); di_buf_free(bs); di_buf_free(bo);
}

enum { T = 100 };   /* tokens of sequence 0: more than three KV splits */

static float *seq_tokens(long n, uint64_t seed)
{
    float *x = malloc((size_t)n * QKVW * 4);
    th_fill(x, (size_t)n * QKVW, seed);
    return x;
}

/* Sequence 0's T tokens fed in chunks of `chunk`; when `mix`, each step also carries tokens
 * of sequence 1 (at its own positions) before and after. */
static void run_seq(di_rt *rt, const float *x, const float *other, long chunk, bool mix, long win, float *out)
{
    kv_cache c = cache_new(rt);
    long other_pos = 0;
    for (long t0 = 0; t0 < T; t0 += chunk) {
        long n = T - t0 < chunk ? T - t0 : chunk, extra = mix ? 2 : 0, rows = n + extra;
        float *q = malloc(rows * QKVW * 4), *o = malloc(rows * NH * HD * 4);
        int *pos = malloc(rows * 4), *seq = malloc(rows * 4);
        long r = 0;
        if (mix) { memcpy(q, other + other_pos * QKVW, QKVW * 4); pos[r] = (int)other_pos++; seq[r++] = 1; }
        for (long i = 0; i < n; i++, r++) {
            memcpy(q + r * QKVW, x + (t0 + i) * QKVW, QKVW * 4);
            pos[r] = (int)(t0 + i);
            seq[r] = 0;
        }
        if (mix) { memcpy(q + r * QKVW, other + other_pos * QKVW, QKVW * 4); pos[r] = (int)other_pos++; seq[r++] = 1; }
        step(&c, q, pos, seq, rows, win, o);
        memcpy(out + t0 * NH * HD, o + (mix ? 1 : 0) * NH * HD, n * NH * HD * 4);
        free(q); free(o); free(pos); free(seq);
    }
    cache_free(&c);
}

/* Whole prompt, chunks of 1, 7 and 64, alone and mixed with another sequence: the same bits;
 * and the whole-prompt run against double precision. win > 0: the sliding-window spec. */
static void check_attention(long win)
{
    di_rt *rt1 = th_rt(DI_BACKEND_C, 1), *rt2 = th_rt(DI_BACKEND_C, 2);
    float *x = seq_tokens(T, 11), *other = seq_tokens(2 * T + 2, 12); /* chunk 1 mixes in 2 per step */
    float *ref = malloc((size_t)T * NH * HD * 4), *got = malloc((size_t)T * NH * HD * 4);
    run_seq(rt2, x, other, T, false, win, ref);    /* whole prompt in one step */

    /* accuracy of the reference run against double precision */
    for (long t = 0; t < T; t += 13)
        for (long h = 0; h < NH; h++) {
            const float *q = x + t * QKVW + h * HD;
            long kvh = h / (NH / NKV), j0 = win && t - win + 1 > 0 ? t - win + 1 : 0;
            double s[T], mx = -INFINITY, sum = 0;
            for (long j = j0; j <= t; j++) {
                const float *k = x + j * QKVW + NH * HD + kvh * HD;
                double d = 0;
                for (long e = 0; e < HD; e++) d += (double)q[e] * k[e];
                s[j] = d / 8.0;
                mx = fmax(mx, s[j]);
            }
            for (long j = j0; j <= t; j++) sum += exp(s[j] - mx);
            for (long d = 0; d < HD; d++) {
                double o = 0;
                for (long j = j0; j <= t; j++) o += exp(s[j] - mx) / sum * x[j * QKVW + (NH + NKV) * HD + kvh * HD + d];
                float g = ref[t * NH * HD + h * HD + d];
                cr_assert(fabs(g - o) <= 2e-6 * (1 + fabs(o)), "attention (window %ld) t=%ld h=%ld d=%ld: %.9g vs %.9g",
                          win, t, h, d, g, o);
            }
        }

    const long chunks[] = {1, 7, 64};
    for (int m = 0; m < 2; m++)
        for (size_t c = 0; c < 3; c++) {
            run_seq(m ? rt1 : rt2, x, other, chunks[c], m == 1, win, got);
            cr_assert(th_bits_equal(got, ref, (size_t)T * NH * HD),
                      "attention (window %ld) with chunk %ld%s differs from the whole prompt", win, chunks[c],
                      m ? ", mixed batch" : "");
        }
    free(x); free(other); free(ref); free(got);
    di_rt_close(rt1); di_rt_close(rt2);
}

Test(invariance, attention_prefill_chunks_decode_and_mixing_give_same_bits, .timeout = 120) { check_attention(0); }

/* A window of 40 over splits of 32: windows that start inside a split (masked keys) and, from
 * position 64 on, splits wholly before the window (not folded). */
Test(invariance, attention_window_prefill_chunks_decode_and_mixing_give_same_bits, .timeout = 120) { check_attention(40); }
