/* Every op on the CPU backend against a plain double-precision reference, at sizes that are
 * not multiples of the tiles, lanes or splits; and the prelude's exp/log accuracy. */
#include "helpers.h"
#include <stdarg.h>

static di_rt *rt;
static void setup(void) { rt = th_rt(DI_BACKEND_C, 2); }
static void teardown(void) { di_rt_close(rt); }

TestSuite(ops, .init = setup, .fini = teardown);

/* |got - ref| <= tol * scale: scale is the sum of magnitudes that rounding can act on. */
static void expect_close(const char *what, size_t i, double got, double ref, double scale, double tol)
{
    cr_assert(fabs(got - ref) <= tol * scale + 1e-30, "%s[%zu]: got %.9g, reference %.9g (scale %.3g)", what, i, got,
              ref, scale);
}

Test(ops, embed_gathers_bf16_rows)
{
    const long D = 100, V = 37, rows = 5;
    di_specialization p = th_spec("embed", "D", D, "V", V, NULL);
    uint16_t *table = malloc(V * D * 2);
    uint64_t seed = 1;
    for (long i = 0; i < V * D; i++) table[i] = th_bf16(th_uniform(&seed));
    int tok[] = {0, 36, 5, 5, 17};
    di_buf *bt = th_buf(rt, table, V * D * 2), *bk = th_buf(rt, tok, sizeof tok), *by = th_buf(rt, NULL, rows * D * 4);
    di_val args[] = {{.buf = by}, {.buf = bt}, {.buf = bk}};
    th_launch(rt, th_kernel(rt, "embed", &p), args, (long[]){rows});
    float *y = malloc(rows * D * 4);
    th_read(by, y, rows * D * 4);
    for (long r = 0; r < rows; r++)
        for (long i = 0; i < D; i++) cr_assert_eq(y[r * D + i], th_from_bf16(table[tok[r] * D + i]));
    free(table); free(y);
    di_buf_free(bt); di_buf_free(bk); di_buf_free(by);
}

static void run_rmsnorm(long D, long rows)
{
    di_specialization p = th_spec("rmsnorm", "D", D, NULL);
    float *x = malloc(rows * D * 4), *w = malloc(D * 4), *y = malloc(rows * D * 4);
    th_fill(x, rows * D, 10 + D);
    th_fill(w, D, 20 + D);
    di_buf *bx = th_buf(rt, x, rows * D * 4), *bw = th_buf(rt, w, D * 4), *by = th_buf(rt, NULL, rows * D * 4);
    float eps = 1e-5f;
    di_val args[] = {{.buf = by}, {.buf = bx}, {.buf = bw}, {.f32 = eps}};
    th_launch(rt, th_kernel(rt, "rmsnorm", &p), args, (long[]){rows});
    th_read(by, y, rows * D * 4);
    for (long r = 0; r < rows; r++) {
        double ss = 0;
        for (long i = 0; i < D; i++) ss += (double)x[r * D + i] * x[r * D + i];
        double inv = 1.0 / sqrt(ss / D + eps);
        for (long i = 0; i < D; i++) {
            double ref = x[r * D + i] * inv * w[i];
            expect_close("rmsnorm", (size_t)(r * D + i), y[r * D + i], ref, fabs(ref), 4e-6);
        }
    }
    free(x); free(w); free(y);
    di_buf_free(bx); di_buf_free(bw); di_buf_free(by);
}

Test(ops, rmsnorm_matches_double) { run_rmsnorm(576, 3); run_rmsnorm(100, 7); run_rmsnorm(33, 1); }

/* y = x . w^T (+ res), w in bf16 or f32, y in f32 or bf16 */
static void run_matmul(const char *spec, long K, long N, long rows, di_dtype wt, di_dtype yt)
{
    const di_spec *s = di_spec_find(spec);
    di_specialization p = th_spec(spec, "K", K, "N", N, NULL);
    di_err e = {0};
    cr_assert_eq(di_spec_set_dtype(s, &p, "w", wt, &e), 0, "%s", e.msg);
    cr_assert_eq(di_spec_set_dtype(s, &p, "y", yt, &e), 0, "%s", e.msg);
    bool has_res = !strcmp(spec, "matmul_residual");
    float *x = malloc(rows * K * 4), *wf = malloc(N * K * 4), *res = malloc(rows * N * 4), *y = malloc(rows * N * 4);
    uint16_t *wb = malloc(N * K * 2);
    th_fill(x, rows * K, 100 + K);
    th_fill(res, rows * N, 300 + N);
    uint64_t seed = 200 + N;
    for (long i = 0; i < N * K; i++) { wb[i] = th_bf16(th_uniform(&seed)); wf[i] = th_from_bf16(wb[i]); }
    size_t ysize = rows * N * di_dtype_size(yt);
    di_buf *bx = th_buf(rt, x, rows * K * 4), *by = th_buf(rt, NULL, ysize), *br = th_buf(rt, res, rows * N * 4);
    di_buf *bw = wt == DI_BF16 ? th_buf(rt, wb, N * K * 2) : th_buf(rt, wf, N * K * 4);
    di_val args[] = {{.buf = by}, {.buf = bx}, {.buf = bw}, {.buf = br}};
    th_launch(rt, th_kernel(rt, spec, &p), args, (long[]){rows});
    uint16_t *yb = malloc(ysize);
    th_read(by, yt == DI_F32 ? (void *)y : (void *)yb, ysize);
    for (long r = 0; r < rows; r++)
        for (long n = 0; n < N; n++) {
            double ref = has_res ? res[r * N + n] : 0, scale = has_res ? fabs(res[r * N + n]) : 0;
            for (long k = 0; k < K; k++) {
                ref += (double)x[r * K + k] * wf[n * K + k];
                scale += fabs((double)x[r * K + k] * wf[n * K + k]);
            }
            if (yt == DI_F32)
                expect_close(spec, (size_t)(r * N + n), y[r * N + n], ref, scale, 2e-6);
            else /* bf16 output: within one bf16 rounding of the f32 result */
                expect_close(spec, (size_t)(r * N + n), th_from_bf16(yb[r * N + n]), ref, scale + fabs(ref), 2e-6 + 1.0 / 256);
        }
    free(x); free(wf); free(wb); free(res); free(y); free(yb);
    di_buf_free(bx); di_buf_free(by); di_buf_free(br); di_buf_free(bw);
}

Test(ops, matmul_matches_double)
{
    run_matmul("matmul", 576, 576, 1, DI_BF16, DI_F32);
    run_matmul("matmul", 100, 37, 5, DI_BF16, DI_F32);   /* K not a multiple of the split, N of the tile */
    run_matmul("matmul", 64, 33, 9, DI_F32, DI_F32);
    run_matmul("matmul", 130, 70, 3, DI_BF16, DI_BF16);
    run_matmul("matmul_residual", 96, 45, 6, DI_BF16, DI_F32);
}

/* cos/sin table as the model builds it: per (position, pair) */
static float *rope_table(long ctx, long hd, double base)
{
    float *cs = malloc(ctx * hd * 4);
    for (long p = 0; p < ctx; p++)
        for (long i = 0; i < hd / 2; i++) {
            double a = p * pow(base, -2.0 * i / hd);
            cs[p * hd + 2 * i] = (float)cos(a);
            cs[p * hd + 2 * i + 1] = (float)sin(a);
        }
    return cs;
}

static void run_rope(const char *spec, bool adjacent)
{
    const long NH = 4, NKV = 2, HD = 16, CTX = 50, rows = 6, W = (NH + 2 * NKV) * HD;
    di_specialization p = th_spec(spec, "NH", NH, "NKV", NKV, "HD", HD, "CTX", CTX, NULL);
    float *x = malloc(rows * W * 4), *y = malloc(rows * W * 4), *cs = rope_table(CTX, HD, 10000.0);
    th_fill(x, rows * W, 7);
    int pos[] = {0, 1, 2, 49, 17, 17};
    di_buf *bx = th_buf(rt, x, rows * W * 4), *bp = th_buf(rt, pos, sizeof pos), *bc = th_buf(rt, cs, CTX * HD * 4);
    di_val args[] = {{.buf = bx}, {.buf = bp}, {.buf = bc}};
    th_launch(rt, th_kernel(rt, spec, &p), args, (long[]){rows});
    th_read(bx, y, rows * W * 4);
    for (long r = 0; r < rows; r++)
        for (long h = 0; h < NH + 2 * NKV; h++)
            for (long i = 0; i < HD / 2; i++) {
                long a = adjacent ? 2 * i : i, b = adjacent ? 2 * i + 1 : i + HD / 2;
                const float *v = x + r * W + h * HD;
                double ang = pos[r] * pow(10000.0, -2.0 * i / HD);
                double ra = v[a], rb = v[b];
                if (h < NH + NKV) { /* q and k heads rotate; v heads are left alone */
                    ra = v[a] * cos(ang) - v[b] * sin(ang);
                    rb = v[a] * sin(ang) + v[b] * cos(ang);
                }
                expect_close(spec, (size_t)(r * W + h * HD + a), y[r * W + h * HD + a], ra, 2, 1e-6);
                expect_close(spec, (size_t)(r * W + h * HD + b), y[r * W + h * HD + b], rb, 2, 1e-6);
            }
    free(x); free(y); free(cs);
    di_buf_free(bx); di_buf_free(bp); di_buf_free(bc);
}

Test(ops, rope_both_variants) { run_rope("rope_adjacent", true); run_rope("rope_halfsplit", false); }

Test(ops, swiglu_and_residual)
{
    const long F = 77, rows = 3;
    di_specialization p = th_spec("swiglu", "F", F, NULL);
    float *gu = malloc(rows * 2 * F * 4), *y = malloc(rows * F * 4);
    th_fill(gu, rows * 2 * F, 3);
    for (long i = 0; i < rows * 2 * F; i++) gu[i] *= 12; /* reach the tails of exp */
    di_buf *bg = th_buf(rt, gu, rows * 2 * F * 4), *by = th_buf(rt, NULL, rows * F * 4);
    di_val args[] = {{.buf = by}, {.buf = bg}};
    th_launch(rt, th_kernel(rt, "swiglu", &p), args, (long[]){rows});
    th_read(by, y, rows * F * 4);
    for (long r = 0; r < rows; r++)
        for (long i = 0; i < F; i++) {
            double g = gu[r * 2 * F + i], u = gu[r * 2 * F + F + i], ref = g / (1 + exp(-g)) * u;
            expect_close("swiglu", (size_t)i, y[r * F + i], ref, fabs(ref), 1e-6);
        }
    di_specialization q = th_spec("residual_add", "D", F, NULL);
    di_val a2[] = {{.buf = by}, {.buf = by}, {.buf = bg}};
    float *before = malloc(rows * F * 4);
    memcpy(before, y, rows * F * 4);
    th_launch(rt, th_kernel(rt, "residual_add", &q), a2, (long[]){rows});
    th_read(by, y, rows * F * 4);
    for (long i = 0; i < rows * F; i++) cr_assert_eq(y[i], before[i] + gu[i]); /* one f32 add, exactly */
    free(gu); free(y); free(before);
    di_buf_free(bg); di_buf_free(by);
}

static void run_log_softmax(long V, long rows, float spread)
{
    di_specialization p = th_spec("log_softmax", "V", V, NULL);
    float *x = malloc(rows * V * 4), *y = malloc(rows * V * 4);
    th_fill(x, rows * V, 5 + V);
    for (long i = 0; i < rows * V; i++) x[i] *= spread;
    di_buf *bx = th_buf(rt, x, rows * V * 4), *by = th_buf(rt, NULL, rows * V * 4);
    di_val args[] = {{.buf = by}, {.buf = bx}};
    th_launch(rt, th_kernel(rt, "log_softmax", &p), args, (long[]){rows});
    th_read(by, y, rows * V * 4);
    for (long r = 0; r < rows; r++) {
        double mx = -INFINITY, se = 0;
        for (long i = 0; i < V; i++) mx = fmax(mx, x[r * V + i]);
        for (long i = 0; i < V; i++) se += exp((double)x[r * V + i] - mx);
        for (long i = 0; i < V; i++) {
            double ref = x[r * V + i] - mx - log(se);
            expect_close("log_softmax", (size_t)(r * V + i), y[r * V + i], ref, fabs(ref) + fabs(mx) + 1, 2e-6);
        }
    }
    free(x); free(y);
    di_buf_free(bx); di_buf_free(by);
}

Test(ops, log_softmax_matches_double)
{
    run_log_softmax(49152, 2, 20);
    run_log_softmax(1000, 3, 5);   /* not a multiple of the 256 lanes */
    run_log_softmax(7, 4, 80);     /* fewer elements than lanes */
}

Test(ops, argmax_ties_to_lowest)
{
    const long V = 1000, rows = 4;
    di_specialization p = th_spec("argmax", "V", V, NULL);
    float *x = malloc(rows * V * 4);
    th_fill(x, rows * V, 9);
    x[0 * V + 700] = 5; x[0 * V + 300] = 5; x[0 * V + 999] = 5;  /* tie: 300 wins */
    x[1 * V + 999] = 3;                                           /* last element */
    x[2 * V + 0] = 2; x[2 * V + 256] = 2;                         /* same lane offset: 0 wins */
    for (long i = 0; i < V; i++) x[3 * V + i] = -1;               /* all equal: 0 */
    di_buf *bx = th_buf(rt, x, rows * V * 4), *bi = th_buf(rt, NULL, rows * 4);
    di_val args[] = {{.buf = bi}, {.buf = bx}};
    th_launch(rt, th_kernel(rt, "argmax", &p), args, (long[]){rows});
    int id[4];
    th_read(bi, id, sizeof id);
    cr_assert_eq(id[0], 300);
    cr_assert_eq(id[1], 999);
    cr_assert_eq(id[2], 0);
    cr_assert_eq(id[3], 0);
    free(x);
    di_buf_free(bx); di_buf_free(bi);
}

/* A test-only spec table: the prelude's exp and log, compiled through the same runtime. */
#define KERNEL(name_, cls_, ...) { .name = #name_, .cls = DI_##cls_, __VA_ARGS__, .file = __FILE__, .line = __LINE__ },
static const di_spec math_specs[] = {
    KERNEL(t_exp, MAP, ARGS(OUT(y, F32, "rows, n"), IN(x, F32, "rows, n")), DIMS(DIM(n, 4096)), SIZES("rows"),
           COLS(n), BODY(y[i] = di_expf(x[i]);), SCHEDULE(.threads = 128))
    KERNEL(t_log, MAP, ARGS(OUT(y, F32, "rows, n"), IN(x, F32, "rows, n")), DIMS(DIM(n, 4096)), SIZES("rows"),
           COLS(n), BODY(y[i] = di_logf(x[i]);), SCHEDULE(.threads = 128))
};
#undef KERNEL

static float ulp_of(double v)
{
    float f = (float)fabs(v);
    return nextafterf(f, INFINITY) - f;
}

/* The prelude's exp as it was written first, with early returns: its branch-free form must give
 * these bits (checked for all 2^32 inputs once, perf/RESULTS.md 0002; here on a dense sample). */
static float frozen_scale2(float x, int k)
{
    int k1 = k / 2, k2 = k - k1;
    uint32_t a = (uint32_t)(k1 + 127) << 23, b = (uint32_t)(k2 + 127) << 23;
    float fa, fb;
    memcpy(&fa, &a, 4);
    memcpy(&fb, &b, 4);
    return x * fa * fb;
}

static float frozen_expf(float x)
{
    if (x != x) return x;
    if (x > 0x1.62e42ep+6f) return INFINITY;
    if (x < -0x1.9fe368p+6f) return 0.0f;
    float t = x * 0x1.715476p+0f;
    int k = (int)(t + (t >= 0.0f ? 0.5f : -0.5f));
    float fk = (float)k;
    float r = x - fk * 0x1.62e4p-1f;
    r = r - fk * 0x1.7f7d1cp-20f;
    float p = 0x1.a01a02p-13f;
    p = p * r + 0x1.6c16c2p-10f;
    p = p * r + 0x1.111112p-7f;
    p = p * r + 0x1.555556p-5f;
    p = p * r + 0x1.555556p-3f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return frozen_scale2(p, k);
}

Test(ops, prelude_exp_gives_the_bits_of_its_first_form, .timeout = 120)
{
    enum { n = 4096, rows = 1024 };   /* every 1024th bit pattern, then the edges */
    float *x = malloc((size_t)n * rows * 4), *y = malloc((size_t)n * rows * 4);
    for (uint64_t i = 0; i < (uint64_t)n * rows; i++) {
        uint32_t u = (uint32_t)(i * 1024u + (uint32_t)(i % 1021));
        memcpy(&x[i], &u, 4);
    }
    const float edge[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 0x1.62e42ep+6f, 0x1.62e430p+6f, 0x1.62e42cp+6f,
                          -0x1.9fe368p+6f, -0x1.9fe36ap+6f, -0x1.9fe366p+6f, 0x1p-149f, -0x1p-149f, 0.5f, -0.5f};
    memcpy(x, edge, sizeof edge);
    di_buf *bx = th_buf(rt, x, (size_t)n * rows * 4), *by = th_buf(rt, NULL, (size_t)n * rows * 4);
    di_specialization p;
    di_spec_defaults(&math_specs[0], &p);
    di_kernel *k;
    di_err e = {0};
    cr_assert_eq(di_rt_kernel(rt, &math_specs[0], &p, &k, &e), 0, "%s", e.msg);
    th_launch(rt, k, (di_val[]){{.buf = by}, {.buf = bx}}, (long[]){rows});
    th_read(by, y, (size_t)n * rows * 4);
    for (long i = 0; i < (long)n * rows; i++) {
        float want = frozen_expf(x[i]);
        cr_assert(!memcmp(&y[i], &want, 4), "exp(%a) = %a, the first form gives %a", (double)x[i], (double)y[i], (double)want);
    }
    di_buf_free(bx);
    di_buf_free(by);
    free(x);
    free(y);
}

Test(ops, prelude_exp_log_within_2_ulp)
{
    enum { n = 4096 };
    static float x[n], y[n];
    uint64_t seed = 77;
    for (int i = 0; i < n; i++) x[i] = th_uniform(&seed) * 100.0f;  /* exp: [-100, 100] */
    x[0] = 0; x[1] = -0.0f; x[2] = 88.7f; x[3] = -87.3f; x[4] = -103.0f; x[5] = 1e-8f;
    di_buf *bx = th_buf(rt, x, sizeof x), *by = th_buf(rt, NULL, sizeof y);
    di_val args[] = {{.buf = by}, {.buf = bx}};
    di_specialization p;
    di_spec_defaults(&math_specs[0], &p);
    di_kernel *k;
    di_err e = {0};
    cr_assert_eq(di_rt_kernel(rt, &math_specs[0], &p, &k, &e), 0, "%s", e.msg);
    th_launch(rt, k, args, (long[]){1});
    th_read(by, y, sizeof y);
    for (int i = 0; i < n; i++) {
        double ref = exp((double)x[i]);
        if (ref > 3.4028234663852886e38) { cr_assert(isinf(y[i]), "exp(%a) = %a, want inf", x[i], y[i]); continue; }
        if (ref < 1.17549435e-38) { cr_assert(fabs(y[i] - ref) <= 2 * 1.4e-45, "exp(%g) = %g", x[i], y[i]); continue; }
        cr_assert(fabs(y[i] - ref) <= 2 * ulp_of(ref), "exp(%a) = %a, want %a", x[i], y[i], ref);
    }
    for (int i = 0; i < n; i++) x[i] = ldexpf(1.0f + fabsf(th_uniform(&seed)), (int)(th_uniform(&seed) * 120));
    x[0] = 1; x[1] = 1e-40f; x[2] = 3.4e38f; x[3] = 0.999999f;
    cr_assert_eq(di_buf_write(bx, 0, x, sizeof x, &e), 0);
    di_spec_defaults(&math_specs[1], &p);
    cr_assert_eq(di_rt_kernel(rt, &math_specs[1], &p, &k, &e), 0, "%s", e.msg);
    th_launch(rt, k, args, (long[]){1});
    th_read(by, y, sizeof y);
    for (int i = 0; i < n; i++) {
        double ref = log((double)x[i]);
        cr_assert(fabs(y[i] - ref) <= 2 * ulp_of(ref) + 1e-7 * (fabs(ref) < 1e-3), "log(%a) = %a, want %a", x[i], y[i], ref);
    }
    di_buf_free(bx); di_buf_free(by);
}
