/* bench_matmul: the fast profile's tensor-core matmul against cuBLASLt and the exact profile,
 * at the Llama-8B projection shapes (K x N = 4096x6144, 4096x28672, 14336x4096) and
 * M = 1 ... 8192, plus the checks that give the numbers their meaning:
 *   - accuracy: sampled outputs of fast (and cuBLAS) against a float64 CPU dot product;
 *   - batch invariance: row 0 of y for M = 1..64, 128, 512, 8192 against M = 1, bitwise,
 *     for fast (must hold: exit status 1 otherwise) and for cuBLAS (reported: the
 *     non-invariant reference).
 * Inputs are random (never zeros), bf16 x and w for fast and cuBLAS, f32 x for exact (the
 * model's activations); y is f32 for all three. For M <= 32 four weight copies are rotated
 * so that w comes from memory, not L2.
 *
 * Timing: the runtime keeps its stream private, so times come from driver events on the
 * legacy default stream, which orders itself against the runtime's stream (created with
 * blocking flags, runtime/cuda.c; a non-blocking stream would break these numbers). Each run
 * is a batch of BATCH back-to-back launches (amortizing the cross-stream hand-off, and
 * including the launch gaps the product pays, e.g. fast's two phases); the figure is the
 * median over the runs of (batch time / BATCH), after warm-up. cuBLAS runs on the same
 * legacy stream, timed the same way.
 *
 * usage: bench_matmul [--runs N] [--no-exact] [--no-cublas] [--exact-max-m M]
 *                     [--shapes KxN,...] [--ms M,...]
 *                     [--schedule NAME] [--bk N] [--stages N] [--tm N] [--tn N] [--wm N] [--wn N]
 *                     [--ks-min N] [--ks-max N] [--fuse-tiles N] [--fuse-rows N] [--group-m N] [--wgmma 0|1]
 *                     [--producers N] [--tma 0|1] [--wide-tn N] [--few-rows N] [--few-stages N]
 *                     [--w bf16|q4x8|q8x8|q4x8h|q8x8h]
 * --w: the fast kernels read w as packed records (dsl/dsl.h) of random codes and scales; cuBLAS,
 * the exact pass and the accuracy reference read those records' bf16 values (the same matrix).
 * The fast kernels run the target's schedule of schedules.def, or the row --schedule names, with
 * the tile flags' fields replaced: the schedule is part of the kernels' specialization (an input,
 * as everywhere), so a changed field makes another kernel. */
#include "codegen/matmul_fast.h"
#include "model/pack.h"
#include <stddef.h>
#include "runtime/backend.h"
#include "vendor/cublaslt.h"
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_SHAPES = 8, MAX_MS = 16, WCOPIES = 4, BATCH = 5, WARMUP = 3 };

typedef struct { long k, n; } shape;

typedef struct {
    long m, k, n;
    double cublas_us, fast_us, exact_us;   /* < 0: not measured */
} row_result;

/* A schedule field set by a flag. */
static const struct { const char *flag; size_t off; } sched_flags[] = {
    {"--bk", offsetof(di_mm_schedule, bk)},          {"--stages", offsetof(di_mm_schedule, stages)},
    {"--tm", offsetof(di_mm_schedule, tm)},          {"--tn", offsetof(di_mm_schedule, tn)},
    {"--wm", offsetof(di_mm_schedule, warps_m)},     {"--wn", offsetof(di_mm_schedule, warps_n)},
    {"--ks-min", offsetof(di_mm_schedule, ks_min)},  {"--ks-max", offsetof(di_mm_schedule, ks_max)},
    {"--fuse-tiles", offsetof(di_mm_schedule, fuse_min_tiles)}, {"--fuse-rows", offsetof(di_mm_schedule, fuse_min_rows)},
    {"--group-m", offsetof(di_mm_schedule, group_m)}, {"--wgmma", offsetof(di_mm_schedule, wgmma)},
    {"--producers", offsetof(di_mm_schedule, producers)}, {"--tma", offsetof(di_mm_schedule, tma)},
    {"--wide-tn", offsetof(di_mm_schedule, wide_tn)}, {"--few-rows", offsetof(di_mm_schedule, few_rows)},
    {"--few-stages", offsetof(di_mm_schedule, few_stages)},
};
enum { NSCHED_FLAGS = sizeof sched_flags / sizeof sched_flags[0] };

typedef struct {
    int runs;
    const char *schedule;            /* a row of schedules.def, or NULL: the target's */
    bool set[NSCHED_FLAGS];
    int value[NSCHED_FLAGS];
    di_mm_schedule sched;            /* what the fast kernels run (after the runtime is open) */
    di_dtype w;                      /* the fast kernels' w: bf16 or a packed format */
    bool exact, cublas;
    long exact_max_m;
    int nshapes, nms;
    shape shapes[MAX_SHAPES];
    long ms[MAX_MS];
} options;

/* ---- random data ------------------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* uniform in [-1, 1), never exactly zero */
static float rng_uniform(uint64_t *s)
{
    float f = (float)((double)(rng_next(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    return f == 0.0f ? 0x1p-20f : f;
}

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static float from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t *random_bf16(size_t n, uint64_t seed)
{
    uint16_t *p = malloc(n * sizeof *p);
    if (p)
        for (size_t i = 0; i < n; i++) p[i] = to_bf16(rng_uniform(&seed));
    return p;
}

/* Random packed records of an [n][k] matrix (codes, scales of binary16 values, so every format
 * holds them), and their weights as bf16 into w (what cuBLAS and the references read). */
static uint8_t *random_records(di_dtype fmt, long n, long k, uint64_t seed, uint16_t *w)
{
    size_t rb = di_pack_record_bytes(fmt), bytes = di_pack_bytes(fmt, n, k);
    uint8_t *p = calloc(1, bytes);
    if (!p) return NULL;
    bool q4 = di_pack_code_bits(fmt) == 4;
    for (long g = 0; g < (n + 7) / 8; g++)
        for (long b = 0; b < k / 32; b++) {
            uint8_t *rec = p + ((size_t)g * (size_t)(k / 32) + (size_t)b) * rb;
            for (int l = 0; l < 8; l++) {
                di_codes32 c;
                c.d = (float)(1 + rng_next(&seed) % 1024) * 0x1p-17f;   /* a binary16, as every format holds */
                c.m = q4 ? -8.0f * c.d : 0.0f;
                for (int j = 0; j < 32; j++)
                    c.code[j] = q4 ? (int)(rng_next(&seed) & 15u) : (int)(int8_t)(uint8_t)rng_next(&seed);
                di_pack_put(fmt, rec, l, &c);
                if (8 * g + l < n)
                    for (int j = 0; j < 32; j++) w[(8 * g + l) * k + 32 * b + j] = to_bf16(di_pack_weight(fmt, rec, l, j));
            }
        }
    return p;
}

/* ---- the driver API, for events on the legacy default stream ----------------------------- */

typedef struct cu_event_s *cu_event;
static struct {
    int (*event_create)(cu_event *, unsigned);
    int (*event_record)(cu_event, void *);
    int (*event_sync)(cu_event);
    int (*event_elapsed)(float *, cu_event, cu_event);
    int (*event_destroy)(cu_event);
    int (*ctx_sync)(void);
} drv;

static int load_driver(char *msg, size_t len)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) { snprintf(msg, len, "dlopen libcuda.so.1: %s", dlerror()); return -1; }
    struct { void **fn; const char *a, *b; } syms[] = {
        {(void **)&drv.event_create, "cuEventCreate", NULL},
        {(void **)&drv.event_record, "cuEventRecord", NULL},
        {(void **)&drv.event_sync, "cuEventSynchronize", NULL},
        {(void **)&drv.event_elapsed, "cuEventElapsedTime_v2", "cuEventElapsedTime"},
        {(void **)&drv.event_destroy, "cuEventDestroy_v2", "cuEventDestroy"},
        {(void **)&drv.ctx_sync, "cuCtxSynchronize", NULL},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        *syms[i].fn = dlsym(h, syms[i].a);
        if (!*syms[i].fn && syms[i].b) *syms[i].fn = dlsym(h, syms[i].b);
        if (!*syms[i].fn) { snprintf(msg, len, "libcuda.so.1 has no %s", syms[i].a); return -1; }
    }
    return 0;
}

/* ---- cuBLASLt (runtime/cublaslt.c: the loader the vendor profile uses) -------------------- */

static di_cublaslt *lt;

/* y[M, N] (f32) = x[M, K] (bf16) . w[N, K]^T (bf16), with the heuristic's algorithm for M;
 * NULL (the reason printed) when there is none. */
static di_cublaslt_plan *cublas_plan(long m, long k, long n, size_t workspace)
{
    di_err e = {0};
    di_cublaslt_plan *p = NULL;
    if (di_cublaslt_plan_new(lt, m, k, n, DI_F32, workspace, &p, &e)) fprintf(stderr, "bench_matmul: %s\n", e.msg);
    return p;
}

/* On the legacy default stream (NULL), where the timing events are recorded. */
static int cublas_run(const di_cublaslt_plan *p, di_dptr y, di_dptr x, di_dptr w, di_dptr ws, size_t ws_bytes)
{
    di_err e = {0};
    if (di_cublaslt_matmul(lt, p, y, x, w, 0, ws, ws_bytes, NULL, &e)) {
        fprintf(stderr, "bench_matmul: %s\n", e.msg);
        return -1;
    }
    return 0;
}

/* ---- timing ------------------------------------------------------------------------------ */

/* One launch of the thing being timed; `i` picks the weight copy. Returns 0 or prints why not. */
typedef int (*launch_fn)(void *ctx, int i);

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median over `runs` batches of BATCH launches of (batch time / BATCH), in microseconds. */
static double time_median_us(launch_fn fn, void *ctx, int runs, int copies)
{
    cu_event ev[2];
    if (drv.event_create(&ev[0], 0) || drv.event_create(&ev[1], 0)) return -1;
    double *t = calloc((size_t)runs, sizeof *t), med = -1;
    int call = 0;
    for (int r = -WARMUP; r < runs; r++) {
        if (drv.event_record(ev[0], NULL)) goto out;
        for (int b = 0; b < BATCH; b++, call++)
            if (fn(ctx, call % copies)) goto out;
        float ms = 0;
        if (drv.event_record(ev[1], NULL) || drv.event_sync(ev[1]) || drv.event_elapsed(&ms, ev[0], ev[1])) goto out;
        if (r >= 0) t[r] = ms * 1000.0 / BATCH;
    }
    qsort(t, (size_t)runs, sizeof *t, cmp_double);
    med = t[runs / 2];
out:
    free(t);
    drv.event_destroy(ev[0]);
    drv.event_destroy(ev[1]);
    return med;
}

/* ---- one shape on the fast runtime ------------------------------------------------------- */

typedef struct {
    di_rt *rt;
    di_kernel *k;
    di_buf *y, *x, *w[WCOPIES];
    long m;
    di_err err;
} fast_ctx;

static int fast_launch(void *p, int i)
{
    fast_ctx *c = p;
    di_val args[3] = {{.buf = c->y}, {.buf = c->x}, {.buf = c->w[i]}};
    long sizes[1] = {c->m};
    if (di_rt_launch(c->rt, c->k, args, sizes, &c->err)) {
        fprintf(stderr, "bench_matmul: fast launch: %s\n", c->err.msg);
        return -1;
    }
    return 0;
}

typedef struct {
    const di_cublaslt_plan *plan;
    di_buf *y, *x, *w[WCOPIES], *ws;
} cublas_ctx;

static int cublas_launch(void *p, int i)
{
    cublas_ctx *c = p;
    return cublas_run(c->plan, c->y->dev, c->x->dev, c->w[i]->dev, c->ws->dev, c->ws->bytes);
}

static int read_row0(di_buf *y, long n, float *out, di_err *err)
{
    if (drv.ctx_sync()) return di_fail(err, DI_EDEVICE, "cuCtxSynchronize failed");
    return di_buf_read(y, 0, out, (size_t)n * sizeof(float), err);
}

/* All bytes 0xff (a NaN in f32), so that an element nobody wrote shows up in the samples. */
static int poison(di_buf *y, di_err *err)
{
    void *h = malloc(y->bytes);
    if (!h) return di_fail(err, DI_ENOMEM, "no host memory to poison y");
    memset(h, 0xff, y->bytes);
    int rc = drv.ctx_sync() ? di_fail(err, DI_EDEVICE, "cuCtxSynchronize failed") : di_buf_write(y, 0, h, y->bytes, err);
    free(h);
    return rc;
}

/* Sampled accuracy of y (first m rows) against a float64 dot product of the bf16 inputs:
 * ||y - ref|| / ||ref|| over the samples, and the largest |y - ref| / sum |x w|. */
static void sample_error(di_buf *y, const uint16_t *x, const uint16_t *w, long m, long k, long n, uint64_t seed,
                         double *norm_rel, double *max_rel)
{
    double num = 0, den = 0, mx = 0;
    if (drv.ctx_sync()) { *norm_rel = *max_rel = NAN; return; }
    for (int s = 0; s < 64; s++) {
        long r = (long)(rng_next(&seed) % (uint64_t)m), c = (long)(rng_next(&seed) % (uint64_t)n);
        float got;
        di_err e = {0};
        if (di_buf_read(y, ((size_t)r * n + c) * sizeof(float), &got, sizeof got, &e)) { *norm_rel = *max_rel = NAN; return; }
        double ref = 0, mag = 0;
        for (long i = 0; i < k; i++) {
            double p = (double)from_bf16(x[r * k + i]) * from_bf16(w[c * k + i]);
            ref += p;
            mag += fabs(p);
        }
        double d = (double)got - ref;
        num += d * d;
        den += ref * ref;
        double rel = fabs(d) / (mag > 0 ? mag : 1);
        mx = (rel != rel || mx != mx) ? NAN : rel > mx ? rel : mx;   /* a NaN (unwritten y) sticks */
    }
    *norm_rel = sqrt(num / (den > 0 ? den : 1));
    *max_rel = mx;
}

/* ---- invariance ---------------------------------------------------------------------------- */

static const long inv_extra[] = {128, 512, 8192};

/* Row 0 for every M of the sweep against M = 1; returns the number of M that differ and the
 * largest count of differing elements. */
typedef int (*run_m_fn)(void *ctx, long m);

static int invariance(run_m_fn run, void *ctx, di_buf *y, long n, long max_m, long *worst, di_err *err)
{
    float *ref = malloc((size_t)n * sizeof *ref), *row = malloc((size_t)n * sizeof *row);
    int bad_ms = 0;
    *worst = 0;
    long total = 64 + (long)(sizeof inv_extra / sizeof inv_extra[0]);
    for (long t = 0; t < total; t++) {
        long m = t < 64 ? t + 1 : inv_extra[t - 64];
        if (m > max_m) continue;
        if (run(ctx, m) || read_row0(y, n, m == 1 ? ref : row, err)) { bad_ms = -1; break; }
        if (m == 1) continue;
        long diff = 0;
        for (long i = 0; i < n; i++) diff += memcmp(&ref[i], &row[i], sizeof(float)) != 0;
        if (diff) bad_ms++;
        if (diff > *worst) *worst = diff;
    }
    free(ref);
    free(row);
    return bad_ms;
}

static int fast_run_m(void *p, long m)
{
    fast_ctx *c = p;
    c->m = m;
    return fast_launch(c, 0);
}

typedef struct { cublas_ctx *c; long k, n; size_t ws; } cublas_inv_ctx;

static int cublas_run_m(void *p, long m)
{
    cublas_inv_ctx *ic = p;
    di_cublaslt_plan *plan = cublas_plan(m, ic->k, ic->n, ic->ws);
    if (!plan) return -1;
    const di_cublaslt_plan *saved = ic->c->plan;
    ic->c->plan = plan;
    int rc = cublas_launch(ic->c, 0);
    ic->c->plan = saved;
    if (drv.ctx_sync()) rc = -1;
    di_cublaslt_plan_free(plan);
    return rc;
}

/* ---- the fast + cuBLAS pass over one shape --------------------------------------------------- */

typedef struct {
    double fast_err, fast_max, cublas_err, cublas_max;
    int fast_bad_ms, cublas_bad_ms;
    long fast_worst, cublas_worst;
} shape_checks;

static di_buf *buf_of(di_rt *rt, const void *data, size_t bytes, di_err *err)
{
    di_buf *b = NULL;
    if (di_buf_alloc(rt, bytes, &b, err)) return NULL;
    if (data && di_buf_write(b, 0, data, bytes, err)) { di_buf_free(b); return NULL; }
    return b;
}

static int fast_shape(di_rt *rt, const options *o, shape sh, const uint16_t *x, const uint16_t *w, const uint8_t *wp,
                      long max_m, row_result *res, shape_checks *chk, di_err *err)
{
    const di_spec *s = di_spec_find("matmul");
    di_specialization p;
    di_spec_defaults(s, &p);
    if (di_spec_set_dim(s, &p, "K", sh.k, err) || di_spec_set_dim(s, &p, "N", sh.n, err) ||
        di_spec_set_dtype(s, &p, "x", DI_BF16, err) || di_spec_set_dtype(s, &p, "w", o->w, err))
        return err->code;
    p.profile = DI_PROFILE_FAST;
    p.mm = o->sched;
    fast_ctx fc = {.rt = rt};
    cublas_ctx cc = {0};
    int rc = DI_OK;
    if (di_rt_kernel(rt, s, &p, &fc.k, err)) return err->code;
    size_t wbytes = (size_t)sh.n * sh.k * 2, ybytes = (size_t)max_m * sh.n * sizeof(float);
    fc.x = buf_of(rt, x, (size_t)max_m * sh.k * 2, err);
    fc.y = buf_of(rt, NULL, ybytes, err);
    size_t pbytes = wp ? di_pack_bytes(o->w, sh.n, sh.k) : wbytes;
    for (int i = 0; i < WCOPIES; i++) fc.w[i] = buf_of(rt, wp ? (const void *)wp : w, pbytes, err);
    if (o->cublas) {
        cc.y = buf_of(rt, NULL, ybytes, err);
        cc.ws = buf_of(rt, NULL, 32u << 20, err);
        cc.x = fc.x;
        for (int i = 0; i < WCOPIES; i++) cc.w[i] = wp ? buf_of(rt, w, wbytes, err) : fc.w[i];
    }
    for (int i = 0; i < WCOPIES; i++)
        if (!fc.w[i]) rc = err->code;
    if (!fc.x || !fc.y || (o->cublas && (!cc.y || !cc.ws))) rc = err->code;
    if (rc) goto out;

    for (int j = 0; j < o->nms; j++) {
        long m = o->ms[j];
        row_result *r = &res[j];
        r->m = m, r->k = sh.k, r->n = sh.n;
        int copies = m <= 32 ? WCOPIES : 1;
        fc.m = m;
        r->fast_us = time_median_us(fast_launch, &fc, o->runs, copies);
        if (r->fast_us < 0) { rc = di_fail(err, DI_EDEVICE, "timing fast at M=%ld K=%ld N=%ld failed", m, sh.k, sh.n); goto out; }
        r->cublas_us = -1;
        if (o->cublas) {
            di_cublaslt_plan *plan = cublas_plan(m, sh.k, sh.n, cc.ws->bytes);
            if (plan) {
                cc.plan = plan;
                r->cublas_us = time_median_us(cublas_launch, &cc, o->runs, copies);
                di_cublaslt_plan_free(plan);
            }
        }
        printf("  M=%-5ld K=%-5ld N=%-5ld  cublas %9.1f us  fast %9.1f us\n", m, sh.k, sh.n, r->cublas_us, r->fast_us);
        fflush(stdout);
    }

    /* accuracy at the largest M measured (its y was written last with w copy 0..3: same data) */
    long m_acc = o->ms[o->nms - 1];
    fc.m = m_acc;
    if (poison(fc.y, err) || fast_launch(&fc, 0)) { rc = DI_EDEVICE; goto out; }
    sample_error(fc.y, x, w, m_acc, sh.k, sh.n, 99, &chk->fast_err, &chk->fast_max);
    chk->cublas_err = chk->cublas_max = NAN;
    if (o->cublas) {
        cublas_inv_ctx ic = {&cc, sh.k, sh.n, cc.ws->bytes};
        if (!poison(cc.y, err) && !cublas_run_m(&ic, m_acc)) sample_error(cc.y, x, w, m_acc, sh.k, sh.n, 99, &chk->cublas_err, &chk->cublas_max);
    }

    chk->fast_bad_ms = invariance(fast_run_m, &fc, fc.y, sh.n, max_m, &chk->fast_worst, err);
    chk->cublas_bad_ms = -2;
    if (o->cublas) {
        cublas_inv_ctx ic = {&cc, sh.k, sh.n, cc.ws->bytes};
        chk->cublas_bad_ms = invariance(cublas_run_m, &ic, cc.y, sh.n, max_m, &chk->cublas_worst, err);
    }
out:
    di_buf_free(fc.x);
    di_buf_free(fc.y);
    for (int i = 0; i < WCOPIES; i++) di_buf_free(fc.w[i]);
    if (wp)
        for (int i = 0; i < WCOPIES; i++) di_buf_free(cc.w[i]);
    di_buf_free(cc.y);
    di_buf_free(cc.ws);
    return rc;
}

/* ---- the exact pass -------------------------------------------------------------------------- */

static int exact_shape(di_rt *rt, const options *o, shape sh, const uint16_t *x16, const uint16_t *w, row_result *res,
                       di_err *err)
{
    const di_spec *s = di_spec_find("matmul");
    di_specialization p;
    di_spec_defaults(s, &p);
    if (di_spec_set_dim(s, &p, "K", sh.k, err) || di_spec_set_dim(s, &p, "N", sh.n, err)) return err->code;
    long max_m = 0;
    for (int j = 0; j < o->nms; j++)
        if (o->ms[j] <= o->exact_max_m && o->ms[j] > max_m) max_m = o->ms[j];
    if (!max_m) return DI_OK;
    fast_ctx fc = {.rt = rt};
    if (di_rt_kernel(rt, s, &p, &fc.k, err)) return err->code;
    float *xf = malloc((size_t)max_m * sh.k * sizeof *xf);
    if (!xf) return di_fail(err, DI_ENOMEM, "no memory for f32 x");
    for (size_t i = 0; i < (size_t)max_m * sh.k; i++) xf[i] = from_bf16(x16[i]);
    int rc = DI_OK;
    fc.x = buf_of(rt, xf, (size_t)max_m * sh.k * sizeof *xf, err);
    fc.y = buf_of(rt, NULL, (size_t)max_m * sh.n * sizeof(float), err);
    for (int i = 0; i < WCOPIES; i++) fc.w[i] = buf_of(rt, w, (size_t)sh.n * sh.k * 2, err);
    free(xf);
    for (int i = 0; i < WCOPIES; i++)
        if (!fc.w[i]) rc = err->code;
    if (!fc.x || !fc.y) rc = err->code;
    for (int j = 0; j < o->nms && !rc; j++) {
        long m = o->ms[j];
        if (m > o->exact_max_m) continue;
        fc.m = m;
        res[j].exact_us = time_median_us(fast_launch, &fc, o->runs, m <= 32 ? WCOPIES : 1);
        if (res[j].exact_us < 0) rc = di_fail(err, DI_EDEVICE, "timing exact at M=%ld failed", m);
        printf("  M=%-5ld K=%-5ld N=%-5ld  exact %9.1f us\n", m, sh.k, sh.n, res[j].exact_us);
        fflush(stdout);
    }
    di_buf_free(fc.x);
    di_buf_free(fc.y);
    for (int i = 0; i < WCOPIES; i++) di_buf_free(fc.w[i]);
    return rc;
}

/* ---- options ---------------------------------------------------------------------------------- */

static int parse_list(const char *s, long *out, int max)
{
    int n = 0;
    for (char *end; *s && n < max; s = *end ? end + 1 : end) {
        out[n++] = strtol(s, &end, 10);
        if (end == s || out[n - 1] <= 0) return -1;
    }
    return n;
}

static int parse_shapes(const char *s, shape *out, int max)
{
    int n = 0;
    for (char *end; *s && n < max; s = *end ? end + 1 : end) {
        out[n].k = strtol(s, &end, 10);
        if (*end != 'x') return -1;
        out[n].n = strtol(end + 1, &end, 10);
        if (out[n].k <= 0 || out[n].n <= 0) return -1;
        n++;
    }
    return n;
}

static int usage(const char *why)
{
    fprintf(stderr, "bench_matmul: %s\nusage: bench_matmul [--runs N] [--no-exact] [--no-cublas] [--exact-max-m M]\n"
                    "       [--shapes KxN,...] [--ms M,...] [--schedule NAME] [--bk N] [--stages N] [--tm N] [--tn N]\n"
                    "       [--wm N] [--wn N] [--ks-min N] [--ks-max N] [--fuse-tiles N] [--fuse-rows N] [--group-m N]\n"
                    "       [--wgmma 0|1] [--producers N] [--tma 0|1] [--wide-tn N] [--few-rows N] [--few-stages N]\n"
                    "       [--w bf16|q4x8|q8x8|q4x8h|q8x8h]\n", why);
    return 2;
}

static int parse_options(int argc, char **argv, options *o)
{
    *o = (options){.runs = 25, .w = DI_BF16, .exact = true, .cublas = true, .exact_max_m = 512, .nshapes = 3, .nms = 7,
                   .shapes = {{4096, 6144}, {4096, 28672}, {14336, 4096}}, .ms = {1, 8, 32, 128, 512, 2048, 8192}};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-exact")) { o->exact = false; continue; }
        if (!strcmp(a, "--no-cublas")) { o->cublas = false; continue; }
        if (!v) return usage("a flag is missing its value");
        i++;
        char *end;
        long n = strtol(v, &end, 10);
        bool num = *v && !*end;
        int f = 0;
        while (f < NSCHED_FLAGS && strcmp(a, sched_flags[f].flag)) f++;
        if (f < NSCHED_FLAGS) {
            if (!num) return usage("a schedule flag takes an integer");
            o->set[f] = true;
            o->value[f] = (int)n;
        }
        else if (!strcmp(a, "--schedule")) o->schedule = v;
        else if (!strcmp(a, "--w")) {
            if (!di_dtype_parse(v, &o->w) || (o->w != DI_BF16 && !di_dtype_packed(o->w)))
                return usage("--w takes bf16, q4x8, q8x8, q4x8h or q8x8h");
        }
        else if (!num && strcmp(a, "--shapes") && strcmp(a, "--ms")) return usage("a flag takes an integer");
        else if (!strcmp(a, "--runs")) o->runs = n < 20 ? 20 : (int)n;
        else if (!strcmp(a, "--exact-max-m")) o->exact_max_m = n;
        else if (!strcmp(a, "--shapes")) { if ((o->nshapes = parse_shapes(v, o->shapes, MAX_SHAPES)) <= 0) return usage("bad --shapes"); }
        else if (!strcmp(a, "--ms")) { if ((o->nms = parse_list(v, o->ms, MAX_MS)) <= 0) return usage("bad --ms"); }
        else return usage("unknown flag");
    }
    for (int j = 0; j < o->nms; j++)
        if (o->ms[j] > 65535) return usage("M is at most 65535");
    return 0;
}

/* The schedule the fast kernels run on the runtime's target: its row (or --schedule's), with
 * the flags' fields replaced. */
static int resolve_schedule(options *o, const di_rt *rt)
{
    di_specialization none = {0};
    if (o->schedule) {
        const di_mm_schedule *m = di_mm_schedule_named(o->schedule);
        if (!m) return usage("--schedule names no row of schedules.def");
        o->sched = *m;
    } else {
        o->sched = di_mm_schedule_of(&none, di_rt_target(rt));
    }
    for (int f = 0; f < NSCHED_FLAGS; f++)
        if (o->set[f]) *(int *)((char *)&o->sched + sched_flags[f].off) = o->value[f];
    return 0;
}

/* A table cell: the value with `digits` decimals, or "-" when not measured. */
static void cell(char *buf, size_t len, double v, bool ok, int digits)
{
    if (ok) snprintf(buf, len, "%.*f", digits, v);
    else snprintf(buf, len, "-");
}

/* ---- main ------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    options o;
    int prc = parse_options(argc, argv, &o);
    if (prc) return prc;
    di_err err = {0};
    char msg[512];
    di_rt *rt = NULL;
    di_rt_opts ro = {.backend = DI_BACKEND_CUDA, .profile = DI_PROFILE_FAST};
    if (di_rt_open(&ro, &rt, &err)) { fprintf(stderr, "bench_matmul: no GPU runtime: %s\n", err.msg); return 2; }
    if ((prc = resolve_schedule(&o, rt))) return prc;
    const di_mm_schedule cfg = o.sched;
    if (load_driver(msg, sizeof msg)) { fprintf(stderr, "bench_matmul: %s\n", msg); return 2; }
    if (o.cublas && di_cublaslt_open(&lt, &err)) {
        fprintf(stderr, "bench_matmul: cuBLAS columns skipped: %s\n", err.msg);
        di_err_clear(&err);
        o.cublas = false;
    }
    printf("bench_matmul: %s\n", di_rt_describe(rt));
    printf("fast config: %s, tile %dx%d, bk %d, %d stages, warps %dx%d + %d producer warps%s, KS = the pow2 giving ~128 units at M = 1 (from K, N) in [%d, %d], fused at >= %d tiles "
           "and >= %d rows, batch %d, median of %d runs\n",
           cfg.wgmma ? "wgmma" : "mma.sync", cfg.tm, cfg.tn, cfg.bk, cfg.stages, cfg.warps_m, cfg.warps_n, cfg.producers, cfg.tma ? " (TMA)" : "", cfg.ks_min,
           cfg.ks_max, cfg.fuse_min_tiles, cfg.fuse_min_rows, BATCH, o.runs);
    if (cfg.wide_tn) printf("single-split TMA kernels: tile %dx%d, %d stages\n", cfg.tm, cfg.wide_tn, cfg.wide_stages);

    long max_m = 8192;
    for (int j = 0; j < o.nms; j++)
        if (o.ms[j] > max_m) max_m = o.ms[j];
    row_result res[MAX_SHAPES][MAX_MS];
    shape_checks chk[MAX_SHAPES];
    uint16_t *xs[MAX_SHAPES] = {0}, *ws[MAX_SHAPES] = {0};
    uint8_t *wps[MAX_SHAPES] = {0};
    int status = 0;
    for (int si = 0; si < o.nshapes; si++) {
        shape sh = o.shapes[si];
        for (int j = 0; j < o.nms; j++) res[si][j] = (row_result){o.ms[j], sh.k, sh.n, -1, -1, -1};
        xs[si] = random_bf16((size_t)max_m * sh.k, 1000 + si);
        ws[si] = random_bf16((size_t)sh.n * sh.k, 2000 + si);
        if (ws[si] && o.w != DI_BF16) wps[si] = random_records(o.w, sh.n, sh.k, 3000 + si, ws[si]);
        if (!xs[si] || !ws[si] || (o.w != DI_BF16 && !wps[si])) { fprintf(stderr, "bench_matmul: out of host memory\n"); status = 2; break; }
        printf("shape K=%ld N=%ld (fast + cuBLAS; fast w %s)\n", sh.k, sh.n, di_dtype_name(o.w));
        if (fast_shape(rt, &o, sh, xs[si], ws[si], wps[si], max_m, res[si], &chk[si], &err)) {
            fprintf(stderr, "bench_matmul: K=%ld N=%ld: %s\n", sh.k, sh.n, err.msg);
            status = 2;
            break;
        }
    }
    di_cublaslt_close(lt);   /* while the context is alive */
    lt = NULL;
    di_rt_close(rt);

    if (o.exact && !status) {
        di_rt_opts eo = {.backend = DI_BACKEND_CUDA, .profile = DI_PROFILE_EXACT};
        if (di_rt_open(&eo, &rt, &err)) { fprintf(stderr, "bench_matmul: exact runtime: %s\n", err.msg); status = 2; }
        for (int si = 0; si < o.nshapes && !status; si++) {
            printf("shape K=%ld N=%ld (exact, M <= %ld)\n", o.shapes[si].k, o.shapes[si].n, o.exact_max_m);
            if (exact_shape(rt, &o, o.shapes[si], xs[si], ws[si], res[si], &err)) {
                fprintf(stderr, "bench_matmul: exact: %s\n", err.msg);
                status = 2;
            }
        }
        if (rt) di_rt_close(rt);
    }

    int nsh = status ? 0 : o.nshapes;
    printf("\nchecks (accuracy at the largest M: ||y - ref|| / ||ref|| and max |y - ref| / sum |x w| over 64 samples;\n"
           "invariance: row 0 for M = 1..64, 128, 512, 8192 against M = 1, bitwise)\n");
    for (int si = 0; si < nsh; si++) {
        shape_checks *c = &chk[si];
        printf("  K=%-5ld N=%-5ld fast err %.2e (max %.2e)  cublas err %.2e (max %.2e)  | fast: %s",
               o.shapes[si].k, o.shapes[si].n, c->fast_err, c->fast_max, c->cublas_err, c->cublas_max,
               c->fast_bad_ms == 0 ? "invariant" : "NOT INVARIANT");
        if (c->fast_bad_ms) printf(" (%d M differ, up to %ld elements)", c->fast_bad_ms, c->fast_worst);
        if (c->cublas_bad_ms >= 0)
            printf("  cublas: %d M differ, up to %ld of %ld elements", c->cublas_bad_ms, c->cublas_worst, o.shapes[si].n);
        printf("\n");
        if (c->fast_bad_ms != 0) status = 1;
        if (!(c->fast_err < 1e-2) || !(c->fast_max < 1e-2)) {
            printf("  K=%ld N=%ld: fast accuracy out of bounds\n", o.shapes[si].k, o.shapes[si].n);
            status = 1;
        }
    }
    printf("\n%6s %6s %6s %10s %10s %10s %8s %8s %9s %9s\n", "M", "K", "N", "cublas_us", "fast_us", "exact_us",
           "speed", "GB/s", "TFLOP/s", "cuB_TF/s");
    for (int si = 0; si < nsh; si++)
        for (int j = 0; j < o.nms; j++) {
            row_result *r = &res[si][j];
            double flops = 2.0 * r->m * r->k * r->n;
            double wb = o.w == DI_BF16 ? (double)r->n * r->k * 2 : (double)di_pack_bytes(o.w, r->n, r->k);
            double bytes = wb + (double)r->m * r->k * 2 + (double)r->m * r->n * 4;
            char ex[16], gb[16], cu[16], sp[16], ct[16];
            cell(ex, sizeof ex, r->exact_us, r->exact_us > 0, 1);
            cell(cu, sizeof cu, r->cublas_us, r->cublas_us > 0, 1);
            cell(sp, sizeof sp, r->cublas_us / r->fast_us, r->cublas_us > 0, 2);
            cell(ct, sizeof ct, flops / r->cublas_us * 1e-6, r->cublas_us > 0, 1);
            cell(gb, sizeof gb, bytes / r->fast_us * 1e-3, r->m <= 32, 0);
            printf("%6ld %6ld %6ld %10s %10.1f %10s %8s %8s %9.1f %9s\n", r->m, r->k, r->n, cu, r->fast_us, ex, sp, gb,
                   flops / r->fast_us * 1e-6, ct);
        }
    printf("speed = cublas_us / fast_us (above 1: fast is faster); GB/s counts w (fast's format) + x + y once (M <= 32);\n"
           "exact (f32 x, scalar FP32) is skipped above M = %ld.%s\n", o.exact_max_m,
           status == 1 ? "\nFAIL: the fast kernel's checks failed (see above)" : "");
    for (int si = 0; si < o.nshapes; si++) {
        free(xs[si]);
        free(ws[si]);
        free(wps[si]);
    }
    return status;
}
