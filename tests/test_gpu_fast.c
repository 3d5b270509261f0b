/* The fast profile's tensor-core matmul (codegen/matmul_fast.c).
 * Without a GPU: where the path applies, that the split size depends on K and N only, that a
 * schedule is validated, that the generated source compiles with NVRTC to sm_90a code using
 * wgmma / TMA / mbarriers (and mma.sync / ldmatrix / cp.async for the mma_sync schedule).
 * With a GPU: accuracy against a float64 reference at odd shapes, and bitwise row invariance
 * across M = 1..64 and 257, in both the split and the fused mode, with f32 and bf16 outputs
 * and the residual epilogue (in place too); the wide and the narrow tile, persistent grids of
 * any size and the mma_sync schedule give the same bits. GPU tests skip with the reason when
 * there is none. */
#include "helpers.h"
#include "codegen/matmul_fast.h"
#include "runtime/nvrtc.h"
#include <stdio.h>

static const di_target cuda_t = {.backend = DI_BACKEND_CUDA, .arch = "sm_90a", .sm_count = 132};
static const di_target c_t = {.backend = DI_BACKEND_C};

static di_specialization fast_spec(const char *name, long k, long n, di_dtype xt, di_dtype yt)
{
    const di_spec *s = di_spec_find(name);
    cr_assert_not_null(s, "no spec %s", name);
    di_specialization p;
    di_spec_defaults(s, &p);
    di_err e = {0};
    cr_assert_eq(di_spec_set_dim(s, &p, "K", k, &e), 0, "%s", e.msg);
    cr_assert_eq(di_spec_set_dim(s, &p, "N", n, &e), 0, "%s", e.msg);
    cr_assert_eq(di_spec_set_dtype(s, &p, "x", xt, &e), 0, "%s", e.msg);
    cr_assert_eq(di_spec_set_dtype(s, &p, "y", yt, &e), 0, "%s", e.msg);
    p.profile = DI_PROFILE_FAST;
    return p;
}

static di_mm_schedule default_schedule(void)
{
    di_specialization none = {0};
    return di_mm_schedule_of(&none, &cuda_t);
}

static di_matmul_fast_info info_of(const char *spec, const di_specialization *p)
{
    di_matmul_fast_info in;
    di_err e = {0};
    cr_assert_eq(di_matmul_fast_kernel_info(di_spec_find(spec), p, &cuda_t, &in, &e), 0, "%s", e.msg);
    return in;
}

/* ---- no GPU needed ------------------------------------------------------------------------ */

Test(gpu_fast, applies_to_fast_cuda_matmul_with_bf16_weights_only)
{
    const di_spec *mm = di_spec_find("matmul"), *rms = di_spec_find("rmsnorm");
    di_specialization p = fast_spec("matmul", 4096, 6144, DI_BF16, DI_F32);
    cr_assert_eq(di_lowering_for(mm, &p, &cuda_t), &di_lowering_matmul_fast);
    p = fast_spec("matmul", 4096, 6144, DI_F32, DI_F32);
    cr_assert_eq(di_lowering_for(mm, &p, &cuda_t), &di_lowering_matmul_fast_f32x, "f32 x is rounded, then TMA");
    cr_assert_eq(di_lowering_for(mm, &p, &c_t), &di_lowering_class, "the C backend has no tensor cores");
    p.profile = DI_PROFILE_EXACT;
    cr_assert_eq(di_lowering_for(mm, &p, &cuda_t), &di_lowering_class, "exact keeps the scalar lowering");
    p.profile = DI_PROFILE_FAST;
    di_err e = {0};
    cr_assert_eq(di_spec_set_dtype(mm, &p, "w", DI_F32, &e), 0, "%s", e.msg);
    cr_assert_eq(di_lowering_for(mm, &p, &cuda_t), &di_lowering_class, "f32 weights are not a tensor-core input");
    di_specialization r;
    di_spec_defaults(rms, &r);
    r.profile = DI_PROFILE_FAST;
    cr_assert_eq(di_lowering_for(rms, &r, &cuda_t), &di_lowering_class);
    di_specialization q = fast_spec("matmul_residual", 4096, 4096, DI_BF16, DI_BF16);
    cr_assert_eq(di_lowering_for(di_spec_find("matmul_residual"), &q, &cuda_t), &di_lowering_matmul_fast);
    /* K % 8 != 0: no TMA, so f32 x stays f32 into the cp.async loaders */
    q = fast_spec("matmul", 1001, 37, DI_F32, DI_F32);
    cr_assert_eq(di_lowering_for(mm, &q, &cuda_t), &di_lowering_matmul_fast);
}

/* The bf16-x kernel's plan (what f32 x runs after its cast) at `rows`. */
static di_plan plan_of(const di_spec *s, const di_specialization *p, long rows)
{
    di_plan pl;
    di_err e = {0};
    cr_assert_eq(di_lowering_matmul_fast.plan(s, p, &cuda_t, (long[]){rows}, &pl, &e), 0, "%s", e.msg);
    return pl;
}

Test(gpu_fast, split_size_depends_on_k_and_n_only)
{
    const di_spec *s = di_spec_find("matmul");
    const long ks[] = {100, 576, 1001, 4096, 14336};
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        const long ns[] = {37, 576, 4096, 6144, 28672}, rows[] = {1, 8, 63, 64, 65, 257, 8192, 65535};
        for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++) {
            di_specialization p = fast_spec("matmul", ks[i], ns[a], DI_BF16, DI_F32);
            di_matmul_fast_info in = info_of("matmul", &p);
            cr_assert_eq(in.nsplit, (ks[i] + in.ks - 1) / in.ks);
            for (size_t b = 0; b < sizeof rows / sizeof rows[0]; b++) {
                di_plan pl = plan_of(s, &p, rows[b]);
                long tiles = (rows[b] + in.tm - 1) / in.tm * ((ns[a] + in.tn - 1) / in.tn);
                bool fused = in.nsplit == 1 || (rows[b] >= in.fuse_min_rows && tiles >= in.fuse_min_tiles);
                long units = fused ? tiles : tiles * in.nsplit;
                /* split mode of 2..8 splits in units a block per SM can take: a tile's splits are a
                 * cluster and add their partials themselves */
                bool cluster = !fused && in.nsplit <= 8 && units <= 132;
                cr_assert_eq(pl.workspace, fused || cluster ? 0 : (size_t)in.nsplit * rows[b] * ns[a] * 4, "workspace bytes");
                /* persistent blocks: as many as units, at most one per SM */
                cr_assert_eq((long)pl.l[0].grid[0] * pl.l[0].grid[1] * pl.l[0].grid[2], units < 132 ? units : 132);
                cr_assert_eq(pl.l[0].cluster, cluster ? (unsigned)in.nsplit : 0u, "K=%ld N=%ld rows=%ld", ks[i], ns[a], rows[b]);
                /* phase 2 only in split mode outside a cluster */
                cr_assert_eq(pl.n, fused || cluster ? 1 : 2, "K=%ld N=%ld rows=%ld", ks[i], ns[a], rows[b]);
            }
        }
    }
    /* the Llama-3-8B shapes: the fewest splits (a power-of-two size) that give M = 1 about 128
     * units (column tiles x splits), so that every SM streams w */
    const long shapes[][3] = {{4096, 6144, 2048}, {4096, 4096, 1024}, {4096, 28672, 4096}, {14336, 4096, 4096},
                              {4096, 128256, 4096}, {576, 576, 256}};
    for (int i = 0; i < 6; i++) {
        di_specialization p = fast_spec("matmul", shapes[i][0], shapes[i][1], DI_BF16, DI_F32);
        di_matmul_fast_info in = info_of("matmul", &p);
        cr_assert_eq(in.ks, shapes[i][2], "K=%ld N=%ld: KS %ld", shapes[i][0], shapes[i][1], in.ks);
        /* one split (and TMA): the 128 x 256 tile, else 128 x 128 */
        cr_assert_eq(in.tn, in.nsplit == 1 ? 256 : 128, "K=%ld N=%ld", shapes[i][0], shapes[i][1]);
        di_plan p1 = plan_of(s, &p, 1), p2 = plan_of(s, &p, 8192);
        long units = (shapes[i][1] + in.tn - 1) / in.tn * in.nsplit;
        cr_assert(units >= 96 || in.ks == 256, "K=%ld N=%ld: %ld work units at M=1", shapes[i][0], shapes[i][1], units);
        cr_assert_eq(p1.l[0].block[0], p2.l[0].block[0], "one tile configuration for every M");
        cr_assert_eq(p1.l[0].smem, p2.l[0].smem);
        if (units >= 132) cr_assert_eq(p1.l[0].grid[0], p2.l[0].grid[0], "a block per SM at M = 1 and 8192");
    }
}

Test(gpu_fast, zero_rows_and_too_many_rows)
{
    const di_spec *s = di_spec_find("matmul");
    di_specialization p = fast_spec("matmul", 4096, 6144, DI_BF16, DI_F32);
    di_plan pl = plan_of(s, &p, 0);
    cr_assert_eq(pl.n, 0, "no launches for no rows");
    cr_assert_eq(pl.workspace, 0u);
    di_err e = {0};
    cr_assert_neq(di_lowering_matmul_fast.plan(s, &p, &cuda_t, (long[]){65536}, &pl, &e), 0);
    cr_assert(strstr(e.msg, "matmul") && strstr(e.msg, "65536"), "message names the kernel and the count: %s", e.msg);
    p = fast_spec("matmul", 4096, 6144, DI_F32, DI_F32);
    cr_assert_neq(di_lowering_matmul_fast_f32x.plan(s, &p, &cuda_t, (long[]){65536}, &pl, &e), 0,
                  "f32 x: refused before the cast runs");
}

/* A schedule is a value of the specialization: validated there, and a non-default one names
 * its kernel. */
Test(gpu_fast, schedule_is_validated_and_named)
{
    const di_spec *mm = di_spec_find("matmul");
    di_specialization p = fast_spec("matmul", 4096, 6144, DI_BF16, DI_F32);
    di_err e = {0};
    struct { const char *field, *why; void (*set)(di_mm_schedule *); } bad[] = {
        {"bk 48", "bk", NULL}, {"stages 12", "stages", NULL}, {"tn 100", "tn", NULL},
        {"wgmma 4 x 1", "wgmma", NULL}, {"producers without wgmma", "producer", NULL}, {"3 producers", "loading thread", NULL},
        {"wgmma without producers (v3)", "producer warps", NULL},
    };
    for (int i = 0; i < 7; i++) {
        di_mm_schedule c = default_schedule();
        switch (i) {
        case 0: c.bk = 48; break;
        case 1: c.stages = 12; break;
        case 2: c.tn = 100; break;
        case 3: c.warps_m = 1; c.warps_n = 4; break;
        case 4: c.wgmma = 0; c.tma = 0; c.wide_tn = 0; break;
        case 5: c.producers = 3; break;
        case 6: c.producers = 0; c.tma = 0; c.wide_tn = 0; break;
        }
        p.mm = c;
        cr_assert_neq(di_specialization_check(mm, &p, &e), 0, "%s accepted", bad[i].field);
        cr_assert(strstr(e.msg, bad[i].why), "%s: %s", bad[i].field, e.msg);
    }
    char a[256], b[256];
    p.mm = default_schedule();
    cr_assert_eq(di_specialization_check(mm, &p, &e), 0, "%s", e.msg);
    di_kernel_name(mm, &p, &cuda_t, a, sizeof a);
    cr_assert_str_eq(a, "matmul__K4096_N6144_xbf16_fast", "the target's own schedule is the default kernel");
    p.mm.fuse_min_tiles = 2;
    di_kernel_name(mm, &p, &cuda_t, b, sizeof b);
    cr_assert(strstr(b, a) == b && strlen(b) > strlen(a), "a changed schedule names another kernel: %s", b);
    p.profile = DI_PROFILE_EXACT;
    cr_assert_neq(di_specialization_check(mm, &p, &e), 0, "a schedule is the fast profile's");
    cr_assert_not_null(di_mm_schedule_named("mma_sync"));
    cr_assert_null(di_mm_schedule_named("v3"), "v3 is gone");
}

static void compile_and_inspect(const char *spec, long k, long n, di_dtype xt, di_dtype yt, bool expect_cp_async,
                                const di_mm_schedule *sched)
{
    di_specialization p = fast_spec(spec, k, n, xt, yt);
    if (sched) p.mm = *sched;
    di_mm_schedule c = di_mm_schedule_of(&p, &cuda_t);
    di_matmul_fast_info in = info_of(spec, &p);
    char name[256], entry[300];
    di_nvrtc_out out = {0};
    th_compile_fast(di_spec_find(spec), &p, name, sizeof name, &out);
    if (c.wgmma) {
        char wg[80];
        snprintf(wg, sizeof wg, "wgmma.mma_async.sync.aligned.m64n%dk16.f32.bf16.bf16", in.tn);
        cr_assert(strstr(out.ptx, wg), "%s: no %s in the PTX", name, wg);
        if (in.tensor_maps) {
            cr_assert(strstr(out.ptx, "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"),
                      "%s: no TMA loads", name);
            cr_assert(strstr(out.ptx, "mbarrier.arrive.expect_tx.shared::cta.b64"), "%s: bytes not expected", name);
            expect_cp_async = false;
        } else {
            cr_assert(strstr(out.ptx, "fence.proxy.async.shared::cta"), "%s: no proxy fence before wgmma", name);
        }
        cr_assert(strstr(out.ptx, "mbarrier.try_wait.parity.shared::cta.b64"), "%s: no mbarrier wait", name);
        if (expect_cp_async)
            cr_assert(strstr(out.ptx, "cp.async.mbarrier.arrive.noinc.shared::cta.b64"), "%s: copies not tracked", name);
    } else {
        cr_assert(strstr(out.ptx, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"), "%s: no bf16 mma in the PTX",
                  name);
        cr_assert(strstr(out.ptx, "ldmatrix.sync.aligned.m8n8.x4.shared.b16"), "%s: no ldmatrix", name);
    }
    if (expect_cp_async) cr_assert(strstr(out.ptx, "cp.async.cg.shared.global"), "%s: no cp.async", name);
    snprintf(entry, sizeof entry, ".entry %s(", name);
    cr_assert(strstr(out.ptx, entry), "%s: phase 1 entry missing", name);
    snprintf(entry, sizeof entry, ".entry %s_reduce(", name);
    cr_assert(strstr(out.ptx, entry), "%s: phase 2 entry missing", name);
    th_assert_no_spills(out.log, name);
    di_nvrtc_out_free(&out);
}

Test(gpu_fast, source_compiles_with_nvrtc_to_tensor_core_code, .timeout = 120)
{
    compile_and_inspect("matmul", 4096, 6144, DI_BF16, DI_F32, true, NULL);
    compile_and_inspect("matmul", 14336, 4096, DI_BF16, DI_BF16, true, NULL);
    compile_and_inspect("matmul_residual", 1001, 37, DI_F32, DI_BF16, false, NULL);   /* K % 8: element loads */
    compile_and_inspect("matmul", 4096, 28672, DI_BF16, DI_F32, true, NULL);          /* one split: the wide tile */
    /* mma_sync with bf16 x; its f32-x register staging (MMF_XSTAGE) spills 4 bytes when compiled
     * for sm_90a (ptxas, CUDA 13.0, 2026-12-01), so it is not asserted spill-free here */
    compile_and_inspect("matmul", 4096, 6144, DI_BF16, DI_F32, true, di_mm_schedule_named("mma_sync"));
}

/* ---- on the GPU ------------------------------------------------------------------------------ */


typedef struct {
    const char *spec;
    long k, n;
    di_dtype xt, yt;
    bool residual;
} mm_case;

/* Host inputs for up to `rows` rows: x (f32 or bf16 bits), w bf16, res f32. */
typedef struct {
    void *x;
    uint16_t *w;
    float *res;
    long rows;
} mm_inputs;

static mm_inputs make_inputs(const mm_case *c, long rows, uint64_t seed)
{
    mm_inputs in = {.rows = rows};
    size_t nx = (size_t)rows * c->k;
    in.x = malloc(nx * (c->xt == DI_BF16 ? 2 : 4));
    for (size_t i = 0; i < nx; i++) {
        float f = th_uniform(&seed);
        if (c->xt == DI_BF16) ((uint16_t *)in.x)[i] = th_bf16(f);
        else ((float *)in.x)[i] = f;
    }
    in.w = malloc((size_t)c->n * c->k * 2);
    for (size_t i = 0; i < (size_t)c->n * c->k; i++) in.w[i] = th_bf16(th_uniform(&seed));
    in.res = malloc((size_t)rows * c->n * sizeof(float));
    th_fill(in.res, (size_t)rows * c->n, seed + 7);
    return in;
}

static void free_inputs(mm_inputs *in)
{
    free(in->x);
    free(in->w);
    free(in->res);
}

/* y as f32 (bf16 outputs widened), for the first `rows` rows, poisoned before the launch so
 * that an unwritten element shows. in_place: y and res are one buffer (h += o . W^T). */
static float *run_fast(di_rt *rt, const mm_case *c, const mm_inputs *in, long rows, bool in_place,
                       const di_mm_schedule *sched)
{
    di_specialization p = fast_spec(c->spec, c->k, c->n, c->xt, c->yt);
    if (sched) p.mm = *sched;
    di_kernel *k = th_kernel(rt, c->spec, &p);
    size_t yel = (size_t)rows * c->n, ysz = c->yt == DI_BF16 ? 2 : 4;
    di_buf *x = th_buf(rt, in->x, (size_t)rows * c->k * (c->xt == DI_BF16 ? 2 : 4));
    di_buf *w = th_buf(rt, in->w, (size_t)c->n * c->k * 2);
    di_buf *res = c->residual ? th_buf(rt, in->res, yel * 4) : NULL;
    di_buf *y = in_place ? res : th_buf(rt, NULL, yel * ysz + 4);
    if (!in_place) {
        void *poison = malloc(yel * ysz + 4);
        memset(poison, 0xff, yel * ysz + 4);   /* NaN in f32 and in bf16 */
        di_err e = {0};
        cr_assert_eq(di_buf_write(y, 0, poison, yel * ysz + 4, &e), 0, "%s", e.msg);
        free(poison);
    }
    di_val args[DI_MAX_ARGS] = {{.buf = y}, {.buf = x}, {.buf = w}, {.buf = res}};
    long sizes[1] = {rows};
    th_launch(rt, k, args, sizes);
    size_t got = yel * ysz + (in_place ? 0 : 4);
    void *raw = malloc(got);
    th_read(y, raw, got);
    if (!in_place) {
        uint32_t tail;
        memcpy(&tail, (char *)raw + yel * ysz, 4);
        cr_assert_eq(tail, 0xffffffffu, "%s: wrote past row %ld", c->spec, rows);
    }
    float *out = malloc(yel * sizeof *out + 1);
    for (size_t i = 0; i < yel; i++)
        out[i] = c->yt == DI_BF16 ? th_from_bf16(((uint16_t *)raw)[i]) : ((float *)raw)[i];
    free(raw);
    di_buf_free(x);
    di_buf_free(w);
    if (res) di_buf_free(res);
    if (!in_place) di_buf_free(y);
    return out;
}

/* float64 reference of one output from the bf16-rounded inputs the tensor cores see; `mag` is
 * sum |x w| (+ |res|), the scale of the rounding error. */
static double reference(const mm_case *c, const mm_inputs *in, long r, long n, double *mag)
{
    double acc = 0, m = 0;
    for (long k = 0; k < c->k; k++) {
        double xv = c->xt == DI_BF16 ? th_from_bf16(((const uint16_t *)in->x)[r * c->k + k])
                                     : th_from_bf16(th_bf16(((const float *)in->x)[r * c->k + k]));
        double p = xv * th_from_bf16(in->w[n * c->k + k]);
        acc += p;
        m += fabs(p);
    }
    if (c->residual) {
        acc += in->res[r * c->n + n];
        m += fabs(in->res[r * c->n + n]);
    }
    *mag = m;
    return acc;
}

static void check_against_reference(const mm_case *c, const mm_inputs *in, const float *y, long rows)
{
    for (long r = 0; r < rows; r++)
        for (long n = 0; n < c->n; n++) {
            double mag, ref = reference(c, in, r, n, &mag);
            double got = y[r * c->n + n];
            /* f32 accumulation of exact bf16 products lands far under 1e-4 of sum |x w|;
             * a bf16 y adds up to 2^-9 relative */
            double tol = 1e-4 * mag + (c->yt == DI_BF16 ? fabs(ref) / 256 : 0) + 1e-30;
            cr_assert(fabs(got - ref) <= tol, "%s K=%ld N=%ld rows=%ld: y[%ld][%ld] = %.9g, reference %.9g (tol %.3g)",
                      c->spec, c->k, c->n, rows, r, n, got, ref, tol);
        }
}

Test(gpu_fast, matches_a_float64_reference_at_odd_shapes, .timeout = 600)
{
    di_rt *rt = th_gpu_rt_or_skip(DI_PROFILE_FAST);
    const mm_case cases[] = {
        {"matmul", 1001, 37, DI_F32, DI_F32, false},            /* K % 8 != 0, 4 splits, N < one tile */
        {"matmul", 200, 300, DI_BF16, DI_F32, false},           /* one split (fused), N % 128 != 0 */
        {"matmul", 1000, 130, DI_F32, DI_BF16, false},          /* split tail of 232, bf16 y */
        {"matmul_residual", 1000, 300, DI_BF16, DI_BF16, true},
        {"matmul_residual", 576, 576, DI_F32, DI_F32, true},    /* SmolLM2's shape */
    };
    const long rows[] = {1, 3, 77, 300};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mm_inputs in = make_inputs(&cases[i], 300, 17 + i);
        for (size_t j = 0; j < sizeof rows / sizeof rows[0]; j++) {
            float *y = run_fast(rt, &cases[i], &in, rows[j], false, NULL);
            check_against_reference(&cases[i], &in, y, rows[j]);
            free(y);
        }
        if (cases[i].residual && cases[i].yt == DI_F32) {   /* in place (y aliases res): the same bits as out of place */
            float *a = run_fast(rt, &cases[i], &in, 77, false, NULL), *b = run_fast(rt, &cases[i], &in, 77, true, NULL);
            cr_assert(th_bits_equal(a, b, (size_t)77 * cases[i].n), "%s: in-place result differs", cases[i].spec);
            free(a);
            free(b);
        }
        free_inputs(&in);
    }
    di_rt_close(rt);
}

/* Every row of every M in 1..64 (and 65, 80, 100, 112, 127, 128, 129) equals the same row at
 * M = 257, bitwise, all in `sched` (NULL: the target's). The reference adds its splits in phase 2
 * (split_cluster 0); M = 257 in `sched` itself, whose splits (where it has 2..8 and the units fit
 * the SMs) add up in a cluster, must give its bits too. `fuse_tiles` > 0 also runs M = 257 with
 * fuse_min_tiles = fuse_tiles and fuse_min_rows = 1 (the fused mode: one block sums all splits)
 * against the split-mode reference, and every smaller M in that schedule too. */
static void check_invariance(const mm_case *c, long fuse_tiles, const di_mm_schedule *sched)
{
    enum { MAXM = 257 };
    mm_inputs in = make_inputs(c, MAXM, 4242);
    di_rt *rt = th_gpu_rt_or_skip(DI_PROFILE_FAST);
    di_mm_schedule base = sched ? *sched : default_schedule(), fused_s = base, phase2_s = base;
    phase2_s.split_cluster = 0;
    float *ref = run_fast(rt, c, &in, MAXM, false, &phase2_s), *own = run_fast(rt, c, &in, MAXM, false, &base);
    cr_assert(th_bits_equal(own, ref, (size_t)MAXM * c->n), "%s: the cluster's and phase 2's split sums differ", c->spec);
    free(own);
    di_specialization p = fast_spec(c->spec, c->k, c->n, DI_BF16, c->yt);
    p.mm = base;
    di_matmul_fast_info inf = info_of(c->spec, &p);
    long tiles = (MAXM + inf.tm - 1) / inf.tm * ((c->n + inf.tn - 1) / inf.tn);
    cr_assert(inf.nsplit == 1 || tiles < inf.fuse_min_tiles, "the reference run should use the split mode");
    const di_mm_schedule *run = &base;
    if (fuse_tiles) {
        fused_s.fuse_min_tiles = (int)fuse_tiles;
        fused_s.fuse_min_rows = 1;
        float *fused = run_fast(rt, c, &in, MAXM, false, &fused_s);
        cr_assert(th_bits_equal(fused, ref, (size_t)MAXM * c->n), "%s: fused and split modes differ", c->spec);
        free(fused);
        run = &fused_s;
    }
    /* every M in 1..64, then around the second warpgroup and the whole-tile x box (65..129) */
    const long extra[] = {65, 80, 100, 112, 127, 128, 129};
    for (long mi = 0; mi < 64 + (long)(sizeof extra / sizeof extra[0]); mi++) {
        long m = mi < 64 ? mi + 1 : extra[mi - 64];
        float *y = run_fast(rt, c, &in, m, false, run);
        for (long r = 0; r < m; r++)
            cr_assert(th_bits_equal(y + r * c->n, ref + r * c->n, (size_t)c->n),
                      "%s K=%ld N=%ld: row %ld at M=%ld differs from M=%d", c->spec, c->k, c->n, r, m, MAXM);
        free(y);
    }
    check_against_reference(c, &in, ref, MAXM);
    free(ref);
    free_inputs(&in);
    di_rt_close(rt);
}

Test(gpu_fast, rows_are_bitwise_invariant_f32_output, .timeout = 600)
{
    mm_case c = {"matmul", 1000, 300, DI_F32, DI_F32, false};
    check_invariance(&c, 0, NULL);
}

Test(gpu_fast, rows_are_bitwise_invariant_bf16_output, .timeout = 600)
{
    mm_case c = {"matmul", 1001, 200, DI_BF16, DI_BF16, false};
    check_invariance(&c, 0, NULL);
}

Test(gpu_fast, rows_are_bitwise_invariant_residual, .timeout = 600)
{
    mm_case c = {"matmul_residual", 2048, 256, DI_F32, DI_F32, true};
    check_invariance(&c, 0, NULL);
}

/* bf16 x with K % 8 == 0: the TMA loads; N = 200 leaves the second column tile's w box partly
 * outside the matrix (read as zeros), M = 257 the last row tile's x box. The reference (M = 257)
 * runs in split mode; with fuse_tiles 2 and fuse_min_rows 1 every other M then runs fused (2
 * column tiles), so this compares fused against split, bitwise. The split mode with short x
 * boxes is what the f32-x cases run (they run this same bf16-x kernel after the cast). */
Test(gpu_fast, rows_are_bitwise_invariant_bf16_x, .timeout = 600)
{
    mm_case c = {"matmul", 1024, 200, DI_BF16, DI_F32, false};
    check_invariance(&c, 2, NULL);
}

Test(gpu_fast, split_and_fused_modes_give_the_same_bits, .timeout = 600)
{
    mm_case c = {"matmul_residual", 1000, 300, DI_F32, DI_BF16, true};
    check_invariance(&c, 6, NULL);   /* 3 column tiles: M <= 128 split, M = 257 (9 tiles) fused */
}

/* One split (K <= 256 here): the wide tile, 128 x 256 (N = 600: the last column tile's w box
 * is partly outside the matrix). Rows invariant as above, accurate, and the same bits as the
 * 128 x 128 tile (wide_tn 0): the tile does not change the chain of any output. f32 x reaches
 * the wide kernel through the cast. */
Test(gpu_fast, wide_tile_is_invariant_and_gives_the_narrow_tiles_bits, .timeout = 600)
{
    const mm_case cases[] = {{"matmul_residual", 256, 600, DI_F32, DI_F32, true}, {"matmul", 192, 600, DI_BF16, DI_BF16, false}};
    di_mm_schedule narrow_s = default_schedule();
    narrow_s.wide_tn = narrow_s.wide_stages = 0;
    for (int i = 0; i < 2; i++) {
        const mm_case *c = &cases[i];
        di_specialization p = fast_spec(c->spec, c->k, c->n, DI_BF16, c->yt);
        cr_assert_eq(info_of(c->spec, &p).tn, 256, "%s K=%ld: not the wide tile", c->spec, c->k);
        p.mm = narrow_s;
        cr_assert_eq(info_of(c->spec, &p).tn, 128);
        check_invariance(c, 0, NULL);
        mm_inputs in = make_inputs(c, 257, 4242);
        di_rt *rt = th_gpu_rt_or_skip(DI_PROFILE_FAST);
        float *wide = run_fast(rt, c, &in, 257, false, NULL), *narrow = run_fast(rt, c, &in, 257, false, &narrow_s);
        di_rt_close(rt);
        cr_assert(th_bits_equal(wide, narrow, (size_t)257 * c->n), "%s: the 128 x 256 and 128 x 128 tiles differ", c->spec);
        free(wide);
        free(narrow);
        free_inputs(&in);
    }
}

/* Persistent blocks: with 1, 3 or 7 blocks (the runtime's SM count, a target input that changes
 * only grids) each walks many units (running its pipeline ahead across them); the bits must
 * equal those of a block per SM, in split mode (M = 77 here) and fused mode (M = 257 with
 * fuse_tiles 2), for f32 x (through the cast) and bf16 x. */
Test(gpu_fast, persistent_blocks_give_the_same_bits_on_any_grid, .timeout = 600)
{
    const mm_case cases[] = {{"matmul_residual", 1000, 300, DI_F32, DI_BF16, true}, {"matmul", 1024, 200, DI_BF16, DI_F32, false}};
    di_mm_schedule s = default_schedule();
    s.fuse_min_tiles = 2;
    s.fuse_min_rows = 100;
    for (int i = 0; i < 2; i++) {
        const mm_case *c = &cases[i];
        mm_inputs in = make_inputs(c, 257, 99);
        di_rt *rt = th_gpu_rt_or_skip(DI_PROFILE_FAST);
        float *ref77 = run_fast(rt, c, &in, 77, false, &s), *ref257 = run_fast(rt, c, &in, 257, false, &s);
        di_rt_close(rt);
        const int grids[] = {1, 3, 7};
        for (int g = 0; g < 3; g++) {
            di_rt_opts o = {.backend = DI_BACKEND_CUDA, .profile = DI_PROFILE_FAST, .sm_count = grids[g]};
            di_err e = {0};
            cr_assert_eq(di_rt_open(&o, &rt, &e), 0, "%s", e.msg);
            float *y77 = run_fast(rt, c, &in, 77, false, &s), *y257 = run_fast(rt, c, &in, 257, false, &s);
            cr_assert(th_bits_equal(y77, ref77, (size_t)77 * c->n), "%s: M = 77 on %d blocks differs", c->spec, grids[g]);
            cr_assert(th_bits_equal(y257, ref257, (size_t)257 * c->n), "%s: M = 257 on %d blocks differs", c->spec,
                      grids[g]);
            free(y77);
            free(y257);
            di_rt_close(rt);
        }
        check_against_reference(c, &in, ref257, 257);
        free(ref77);
        free(ref257);
        free_inputs(&in);
    }
}

/* The mma_sync schedule (what GPUs other than sm_90a run: v2's block) on this GPU: accurate and
 * invariant in both modes. */
Test(gpu_fast, mma_sync_schedule_accurate_and_invariant, .timeout = 600)
{
    mm_case c = {"matmul_residual", 1000, 300, DI_F32, DI_BF16, true};
    check_invariance(&c, 6, di_mm_schedule_named("mma_sync"));
}

/* ---- the casts fused into the kernels before the matmuls -------------------------------------- */

/* In the fast profile the norms and the activation that feed a matmul store bf16 themselves
 * (model.c, x16): y[i] = expr rounds on the store with di_f32_to_bf16, the function cast_bf16
 * applies to the f32 it would have read. Each such kernel against the unfused chain (the f32
 * kernel, then cast_bf16), bitwise (the args past a spec's own are not read). */
static void check_fused_cast(const char *op, const char *dim, long cols, long in_cols)
{
    di_rt *rt = th_gpu_rt_or_skip(DI_PROFILE_FAST);
    const long rows = 37;
    float *x = malloc(sizeof(float) * rows * in_cols), *w = malloc(sizeof(float) * cols);
    th_fill(x, (size_t)(rows * in_cols), 21);
    th_fill(w, (size_t)cols, 22);
    di_buf *bx = th_buf(rt, x, sizeof(float) * rows * in_cols), *bw = th_buf(rt, w, sizeof(float) * cols);
    di_buf *y32 = th_buf(rt, NULL, sizeof(float) * rows * cols), *y16 = th_buf(rt, NULL, 2 * rows * cols),
           *cast = th_buf(rt, NULL, 2 * rows * cols);
    di_specialization p = th_spec(op, dim, cols, NULL), q = p;
    di_err e = {0};
    cr_assert_eq(di_spec_set_dtype(di_spec_find(op), &q, "y", DI_BF16, &e), 0, "%s", e.msg);
    di_val a32[] = {{.buf = y32}, {.buf = bx}, {.buf = bw}, {.f32 = 1e-5f}};
    di_val a16[] = {{.buf = y16}, {.buf = bx}, {.buf = bw}, {.f32 = 1e-5f}};
    th_launch(rt, th_kernel(rt, op, &p), a32, (long[]){rows});
    th_launch(rt, th_kernel(rt, op, &q), a16, (long[]){rows});
    di_specialization cp = th_spec("cast_bf16", "D", cols, NULL);
    th_launch(rt, th_kernel(rt, "cast_bf16", &cp), (di_val[]){{.buf = cast}, {.buf = y32}}, (long[]){rows});
    uint16_t *g = malloc(2 * rows * cols), *c = malloc(2 * rows * cols);
    th_read(y16, g, 2 * rows * cols);
    th_read(cast, c, 2 * rows * cols);
    long diff = 0;
    for (long i = 0; i < rows * cols; i++) diff += g[i] != c[i];
    cr_assert_eq(diff, 0, "%s: %ld of %ld bf16 outputs differ from cast_bf16 of the f32 kernel", op, diff, rows * cols);
    cr_log_info("%s (%s = %ld): the fused bf16 store == f32 kernel + cast_bf16, %ld outputs bitwise", op, dim, cols,
                rows * cols);
    free(x); free(w); free(g); free(c);
    di_buf_free(bx); di_buf_free(bw); di_buf_free(y32); di_buf_free(y16); di_buf_free(cast);
    di_rt_close(rt);
}

Test(gpu_fast, fused_cast_rmsnorm_equals_rmsnorm_then_cast, .timeout = 120)
{
    check_fused_cast("rmsnorm", "D", 576, 576);
    check_fused_cast("rmsnorm", "D", 4096, 4096);
}
Test(gpu_fast, fused_cast_swiglu_equals_swiglu_then_cast, .timeout = 120) { check_fused_cast("swiglu", "F", 1536, 3072); }
Test(gpu_fast, fused_cast_geglu_equals_geglu_then_cast, .timeout = 120) { check_fused_cast("geglu", "F", 2048, 4096); }
