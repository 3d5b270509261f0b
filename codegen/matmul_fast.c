/* The fast profile's matmul on the GPU: y[rows, N] = x[rows, K] . w[N, K]^T (+ epilogue) on
 * tensor cores, batch invariant by construction.
 *
 * ---- Design notes -------------------------------------------------------------------------
 *
 * Tile. One schedule per kernel for every row count (schedules.def): a block owns TM x TN =
 * 128 x 128 output tiles, or 128 x 256 in a kernel with one K split that loads by TMA
 * (shape_of); each k16 step of a k tile (BK = 64) is one sm_90a wgmma.m64n{TN}k16 (bf16 in,
 * f32 accumulate) per 64-row warpgroup, both operands read from shared memory through
 * descriptors (see emit_wgmma_helpers). Stages hold [TM][BK] of x and [TN][BK] of w as 128-byte
 * rows whose 16-byte chunk c of row r sits at c ^ (r % 8): the 128-byte swizzle that wgmma reads
 * and TMA writes, free of bank conflicts for ldmatrix.x4.
 *
 * The main loop. Numbered versions were measured side by side on the H200 (perf/RESULTS.md,
 * sections 00 and 000): v2 (mma.sync, every warp loads, one block barrier per k tile), v3 (the
 * same block issuing wgmma), v4 (producer warps loading by cp.async) and v5 (producer warps
 * loading by TMA). v2-v4 all ran near 280 TFLOP/s at large M, limited by cp.async loading;
 * v5 runs at 470-600. What is kept:
 *  - sm_90a (schedule wgmma_tma): warp-specialized. Producer warps only load, two warpgroups
 *    only multiply; stages are handed over by a full and an empty mbarrier each
 *    (phase1_ws_body), and blocks are persistent: one per SM, each walking work units (below)
 *    with one pipeline that runs ahead across units. With bf16 x and K % 8 == 0 one producer
 *    thread loads each stage with two TMA tensor copies (x and w boxes, 128-byte swizzle,
 *    out-of-range rows and columns arriving as zeros) that complete on the stage's full
 *    barrier; below one tile of rows the x box shrinks to the 16-row fragments that hold rows
 *    (MMF_X_BOX_ROWS), which is what brings M <= 32 to 0.8-0.9x cuBLAS. f32 x reaches it
 *    through a cast kernel that rounds x to bf16 first (di_lowering_matmul_fast_f32x: round to
 *    nearest even, what the kernel would do on the way into shared memory, so the same bits).
 *    K % 8 != 0 (rows not 16-byte aligned) keeps v4's cp.async loaders in the producer warps.
 *  - other GPUs (schedule mma_sync, v2's block): mma.sync.m16n8k16 fed by ldmatrix, 64 x 128
 *    tiles, warps 1 x 4; every warp loads (cp.async) and multiplies (phase1_body).
 *
 * Order. K is cut into splits of a fixed size KS, chosen from K and N only (split_size): the
 * fewest splits that give a one-row batch about 128 units, as a power of two (K=4096: KS=2048
 * at N=6144, 1024 at N=4096, 4096 at N=28672; K=14336, N=4096: KS=4096, 4 splits).
 * Within a split each output is one chain of mma over k16 steps in increasing k, starting
 * from 0. The split partials are added in split order 0, 1, 2, ... starting from 0.0f
 * (__fadd_rn, never contracted), then the spec's epilogue runs on the sum and the result is
 * stored (bf16 with round to nearest even when y is bf16). Zero padding (rows past `rows`,
 * columns past N, k past K) is written into shared memory, never read from memory.
 *
 * Why it is invariant. Nothing in that sequence names `rows`: the chain for (r, n) reads row r
 * of x and row n of w at the same k positions, in the same order, with the same split
 * boundaries, whatever the other rows are, and an mma's output element depends only on its
 * own A row, B column and accumulator. `rows` changes only how many blocks run, which 16-row
 * fragments are skipped (those holding no valid row), and where the split sum is done:
 *  - split mode (small problems): a work unit is (tile, split z); it writes the split's
 *    partials to ws[z][rows][N]; phase 2 (`_reduce`) adds them in order and applies the
 *    epilogue. This is what gives a batch of 1 enough units to stream w from every SM.
 *    (Adding the partials in phase 1 instead, by the last unit of each tile to finish or by
 *    the block that started the tile, was measured slower: perf/RESULTS.md section 000.)
 *  - cluster sum (split mode of 2..split_cluster splits whose grid is one wave, sm_90): a tile's
 *    splits run as one thread-block cluster; each block leaves its partials in its own shared
 *    memory, and after a cluster barrier the blocks add them through distributed shared memory,
 *    a thread an output, in split order from 0.0f as phase 2 does; no phase 2, no workspace.
 *    Only where the grid is one wave: a block held at its cluster's barrier keeps later blocks off
 *    its SM (8B packed decode was 12 % slower with several waves).
 *  - fused mode (rows >= 32 and >= 96 output tiles, or a single split): a unit is a tile; it
 *    walks every split of the tile in order, keeps the running sum in registers and adds each
 *    finished split to it exactly as phase 2 would (0.0f + p0 + p1 ...), then applies the
 *    epilogue; phase 2 is not launched and no workspace is used. Same operations, same bits;
 *    it saves nsplit * rows * N * 8 bytes of workspace traffic, which at large M would cost
 *    more than the math (at KS = 512 that traffic is 4 bytes per 128 flops). From 96 tiles
 *    (3/4 of a wave of 128-SM GPUs) the idle SMs of a partial wave cost less than that
 *    traffic (H200, section 000 of perf/RESULTS.md).
 * The epilogue text runs in two places (phase 2, and phase 1 in fused mode) on the same
 * value; its operands are the __fadd_rn sum and loads, so --fmad=true has no multiply to
 * contract differently. (An epilogue with a multiply would rely on NVVM contracting the same
 * expression the same way in both kernels.) The tests check the two modes against each other
 * and every M in 1..64 against M = 257, bitwise.
 *
 * Which block runs a unit, and after which other units (v4, v5 are persistent), never
 * changes the unit's arithmetic either.
 *
 * Few rows (packed w only, section "few rows" below): a launch of at most few_rows rows runs a
 * swapped tile, the outputs as wgmma's M and the rows as its N, on the same K splits, k16 steps
 * and instruction; the plan picks it from the row count, which the rule allows because the
 * order does not change (gpu_fast checks every row count against the large tile, bitwise).
 *
 * Resources (nvcc -Xptxas -v, sm_90a, default config): phase 1 uses 163 registers (the limit
 * for 384 threads is 168), no local memory, 192 KiB of shared memory (6 stages of 32 KiB, so
 * the runtime raises the per-function limit); phase 2 ~30. Why 128 x 256 (as cuBLAS) only
 * with one split: the fused split sum keeps a second accumulator, so a warpgroup's 64 x 256
 * would need 256 registers a thread for accumulators alone (and ptxas keeps the 168 limit even
 * after setmaxnreg); with one split there is no second array (MMF_SUM) and the wide kernel
 * uses 160 registers, 4 stages of 48 KiB. Neither the tile nor the instruction changes which
 * products are summed in which order per output (k16 steps in order within a split, splits in
 * order); on the H200 the 128 x 256 and 128 x 128 tiles gave the same bits (a gpu_fast test
 * checks it); whether wgmma and mma.sync round a k16 step alike is not claimed (the fast
 * profile is per GPU architecture and per configuration), though the model's fast digest was
 * the same with v2, v3 and v5.
 * The schedule (tile, stages, loaders, K split rule, fuse thresholds) is a value: a row of
 * schedules.def chosen by the target, or one the specialization carries (benchmarks and tests
 * compare schedules that way); nothing here is set at run time. */
#include "codegen/matmul_fast.h"
#include "codegen/lower.h"
#include "codegen/lowering.h"
#include <stdio.h>
#include <string.h>

/* ---- the schedule of a kernel ------------------------------------------------------------- */

/* the stages, then (warp-specialized) a full and an empty mbarrier per stage */
static long smem_bytes(const di_mm_schedule *c)
{
    return (long)c->stages * (c->tm + c->tn) * c->bk * 2 + (c->producers ? c->stages * 16L : 0);
}
static int consumer_threads(const di_mm_schedule *c) { return c->warps_m * c->warps_n * 32; }
static int block_threads(const di_mm_schedule *c) { return consumer_threads(c) + c->producers * 32; }
static int loader_threads(const di_mm_schedule *c) { return c->producers ? c->producers * 32 : block_threads(c); }
static long ceil_div(long a, long b) { return (a + b - 1) / b; }

static bool fast_applies(const di_spec *s, const di_specialization *p, const di_target *t)
{
    if (s->cls != DI_MATMUL || t->backend != DI_BACKEND_CUDA || p->profile != DI_PROFILE_FAST) return false;
    int y = di_spec_arg(s, "y"), x = di_spec_arg(s, "x"), w = di_spec_arg(s, "w");
    if (y < 0 || x < 0 || w < 0 || !s->sizes[0] || strcmp(s->sizes[0], "rows")) return false;
    if (s->args[y].role != DI_ROLE_OUT || s->args[x].role != DI_ROLE_IN || s->args[w].role != DI_ROLE_IN) return false;
    if (di_spec_dim(s, p, "K") <= 0 || di_spec_dim(s, p, "N") <= 0) return false;
    if (p->dtypes[x] == DI_I32 || p->dtypes[y] == DI_I32) return false;
    if (p->dtypes[w] == DI_BF16) return true;
    /* packed records (dsl/dsl.h): decoded by the producer warps of the TMA kernel into the bf16
     * tile (mmf_fetch_wq, mmf_store_wq); f32 x reaches it through the bf16 cast (f32x) */
    di_mm_schedule c = di_mm_schedule_of(p, t);
    return di_dtype_packed(p->dtypes[w]) && di_spec_dim(s, p, "K") % DI_PACK_BLOCK == 0 && !p->ksplits &&
           c.producers > 0 && c.tma;
}

static bool w_packed(const di_spec *s, const di_specialization *p) { return di_dtype_packed(p->dtypes[di_spec_arg(s, "w")]); }

/* KS from K and N (never from rows): the fewest splits that still give a batch of one row
 * about ks_units work units (column tiles x splits), enough to stream w from every SM, as
 * the smallest power of two that cuts K into that many, clamped to [ks_min, ks_max]. Fewer
 * splits mean less workspace traffic and fewer pipeline drains at every M; more would not
 * make M = 1 faster (measured on the H200, perf/RESULTS.md section 000). A constant of the
 * schedule, not the GPU's SM count, so that the bits do not depend on how many SMs a part has. */
static long split_size(const di_mm_schedule *c, long k, long n)
{
    long want = ceil_div(c->ks_units, ceil_div(n, c->tn)), ks = 1;
    while (ks < ceil_div(k, want)) ks *= 2;
    if (ks < c->ks_min) ks = c->ks_min;
    if (ks > c->ks_max) ks = c->ks_max;
    return ks;
}

/* Phase 1 takes TMA descriptors (x as [rows][K] in x_box_rows x BK boxes, then w as [N][K] in
 * TN x BK boxes): bf16 x, K % 8 == 0 (16-byte rows) and a schedule that loads by TMA. */
static bool tensor_maps(const di_spec *s, const di_specialization *p, const di_mm_schedule *c)
{
    return c->tma && c->producers && p->dtypes[di_spec_arg(s, "x")] == DI_BF16 && di_spec_dim(s, p, "K") % 8 == 0;
}

/* The schedule a kernel is built with: the specialization's (or the target's), except that a
 * single-split kernel loading by TMA (one in-order chain per output, summed into nothing: no
 * second accumulator array) takes the wide tile, a warpgroup's 64 x wide_tn outputs from one
 * wgmma.m64n256k16 per k16 step, half the x traffic per flop of 128-wide tiles (as cuBLAS's
 * 128 x 256). Per kernel, from its K, N and x type only: every row count of a kernel runs the
 * same tile. (f32 x reaches such kernels through the bf16 cast; the cp.async loaders of f32 x
 * would need registers the wide tile does not leave.) */
typedef struct kernel_shape {
    di_mm_schedule c;   /* the tile this kernel runs */
    long ks, nsplit;    /* K split size (from the base schedule's tn) and count */
    bool tmaps;
} kernel_shape;

static int shape_of(const di_spec *s, const di_specialization *p, const di_target *t, kernel_shape *ks, di_err *err)
{
    di_mm_schedule base = di_mm_schedule_of(p, t);
    long k = di_spec_dim(s, p, "K"), n = di_spec_dim(s, p, "N");
    ks->ks = split_size(&base, k, n);
    ks->nsplit = ceil_div(k, ks->ks);
    if (ks->nsplit > 65535)
        return di_fail(err, DI_ESPEC, "spec %s: K = %ld gives %ld splits of %ld (grid z is at most 65535)", s->name, k,
                       ks->nsplit, ks->ks);
    ks->tmaps = tensor_maps(s, p, &base);
    ks->c = base;
    if (base.wide_tn && ks->nsplit == 1 && ks->tmaps) {
        ks->c.tn = base.wide_tn;
        ks->c.stages = base.wide_stages;
    }
    return DI_OK;
}

/* ---- the plan for a row count ------------------------------------------------------------- */

/* What a launch for `rows` does: the tiles, whether one block runs every split of its tile and
 * sums them itself (fused: same order, same bits, no workspace) and the work units. */
typedef struct mode {
    long tiles, units;
    bool fused;
    bool clustered;   /* split mode, one unit a block, a tile's splits one cluster: no phase 2 */
} mode;

/* Split mode's sum in a cluster of the tile's blocks (the schedule's split_cluster): 2..8 splits. */
static bool cluster_splits(const kernel_shape *ks) { return ks->nsplit >= 2 && ks->nsplit <= ks->c.split_cluster; }

static mode mode_for(const kernel_shape *ks, long rows, long n, const di_mm_schedule *base, const di_target *t)
{
    mode m;
    m.tiles = ceil_div(rows, ks->c.tm) * ceil_div(n, ks->c.tn);
    m.fused = ks->nsplit == 1 || (base->fuse_min_tiles > 0 && rows >= base->fuse_min_rows && m.tiles >= base->fuse_min_tiles);
    m.units = m.fused ? m.tiles : m.tiles * ks->nsplit;
    /* persistent blocks: only where a block per SM takes one unit each (a block walking several
     * units would hold its cluster at every one) */
    m.clustered = !m.fused && ks->c.producers && cluster_splits(ks) && m.units <= t->sm_count;
    return m;
}

static int reduce_vec(long n) { return n % 4 == 0 ? 4 : 1; }
enum { REDUCE_THREADS = 256 };

/* Rows of x's TMA box for a launch of `rows`: a whole tile, or below one tile only the 16-row
 * fragments that hold rows (the kernel expects exactly these bytes per stage, MMF_X_BOX_ROWS). */
static long x_box_rows(const di_mm_schedule *c, long rows) { return rows < c->tm ? (rows + 15) / 16 * 16 : c->tm; }

static void add_reduce(const di_spec *s, di_plan *pl, long rows, long n);

enum { FEW_BK = 128 };   /* k per stage of the few-rows tile (a multiple of 64) */
/* its block: the multiplying warpgroup (warps 0-3), then the loading warp; per stage a full
 * and an empty mbarrier */
enum { FEW_MMA_WARPS = 4, FEW_THREADS = 32 * (FEW_MMA_WARPS + 1), FEW_BARRIER_BYTES = 16 };

/* A stage of the few-rows tile for nr rows: x [nr][FEW_BK] bf16, then 8 groups' FEW_BK / 32
 * records (the kernel's MMV_STAGE_BYTES; a multiple of 1024, the swizzle atom, for every format) */
static long few_stage_bytes(int nr, di_dtype w)
{
    return (long)nr * FEW_BK * 2 + 8L * (FEW_BK / 32) * (long)di_pack_record_bytes(w);
}

/* The few-rows tile (see "few rows" below) for a launch of `rows`, or false: packed w loaded by
 * TMA, at most few_rows rows (its split sums are phase 2's: MMF_FUSED is false there). */
static bool few_rows_for(const di_spec *s, const di_specialization *p, const kernel_shape *ks, long rows)
{
    return w_packed(s, p) && ks->tmaps && ks->c.few_rows && rows >= 1 && rows <= ks->c.few_rows;
}

static void few_plan(const di_spec *s, const di_specialization *p, const di_target *t, const kernel_shape *ks, long rows,
                     long k, long n, di_plan *pl)
{
    const int nr = (int)(rows + 7) / 8 * 8;
    const long stage = few_stage_bytes(nr, p->dtypes[di_spec_arg(s, "w")]);
    /* only grids of one wave: where more blocks wait for SMs, a block held at its cluster's barrier
     * keeps the next one out (8B Q4_1 decode b32 3,921 -> 3,427 tok/s so, perf/RESULTS.md "cluster sum") */
    const long blocks = ceil_div(n, 64) * ks->nsplit;
    const bool clustered = cluster_splits(ks) && blocks <= t->sm_count;
    pl->workspace = ks->nsplit > 1 && !clustered ? (size_t)ks->nsplit * (size_t)rows * (size_t)n * sizeof(float) : 0;
    di_launch *l = &pl->l[pl->n++];
    l->run = DI_RUN_ENTRY;
    l->index = 2 + nr / 8 - 1;
    l->grid[0] = (unsigned)blocks;
    l->cluster = clustered ? (unsigned)ks->nsplit : 0;
    l->grid[1] = l->grid[2] = 1;
    l->block[0] = FEW_THREADS;
    l->block[1] = l->block[2] = 1;
    l->smem = (unsigned)(ks->c.few_stages * (stage + FEW_BARRIER_BYTES));
    di_launch_spec_args(s, l);
    di_launch_add(l, DI_A_WS, 0, 0, 0);
    l->args[l->nargs++] = (di_pa){.kind = DI_A_TMAP, .index = di_spec_arg(s, "x"), .rows = (unsigned long)rows,
                                  .cols = (unsigned long)k, .box_rows = (unsigned)nr, .box_cols = 64};
    if (ks->nsplit > 1 && !clustered) add_reduce(s, pl, rows, n);
}

static int fast_plan(const di_spec *s, const di_specialization *p, const di_target *t, const long *sizes, di_plan *pl,
                     di_err *err)
{
    long rows = sizes[0], k = di_spec_dim(s, p, "K"), n = di_spec_dim(s, p, "N");
    char name[256];
    di_kernel_name(s, p, t, name, sizeof name);
    if (rows < 0 || rows > 65535) return di_fail(err, DI_EUSAGE, "kernel %s: %ld rows (must be 0..65535)", name, rows);
    kernel_shape ks;
    if (shape_of(s, p, t, &ks, err)) return err->code;
    di_mm_schedule base = di_mm_schedule_of(p, t);
    mode m = mode_for(&ks, rows, n, &base, t);
    const di_mm_schedule *c = &ks.c;
    memset(pl, 0, sizeof *pl);
    pl->workspace = m.fused || m.clustered ? 0 : (size_t)ks.nsplit * (size_t)rows * (size_t)n * sizeof(float);
    if (rows == 0) return DI_OK;
    if (few_rows_for(s, p, &ks, rows)) {
        few_plan(s, p, t, &ks, rows, k, n, pl);
        return DI_OK;
    }
    di_launch *l = &pl->l[pl->n++];
    l->run = DI_RUN_ENTRY;
    l->index = 0;
    if (c->producers) {
        /* persistent: one block per SM (the stages fill its shared memory), each walking units */
        l->grid[0] = (unsigned)(m.units < t->sm_count ? m.units : t->sm_count);
        l->grid[1] = l->grid[2] = 1;
        l->cluster = m.clustered ? (unsigned)ks.nsplit : 0;   /* then grid[0] = units, one each */
    } else {
        l->grid[0] = (unsigned)ceil_div(n, c->tn);
        l->grid[1] = (unsigned)ceil_div(rows, c->tm);
        l->grid[2] = m.fused ? 1 : (unsigned)ks.nsplit;
    }
    l->block[0] = (unsigned)block_threads(c);
    l->block[1] = l->block[2] = 1;
    l->smem = (unsigned)smem_bytes(c);
    di_launch_spec_args(s, l);
    di_launch_add(l, DI_A_WS, 0, 0, 0);
    if (ks.tmaps) {
        /* x [rows][K] and w [N][K], in the tile's boxes (per launch: x and rows change) */
        di_pa x = {.kind = DI_A_TMAP, .index = di_spec_arg(s, "x"), .rows = (unsigned long)rows, .cols = (unsigned long)k,
                   .box_rows = (unsigned)x_box_rows(c, rows), .box_cols = (unsigned)c->bk};
        di_pa w = {.kind = DI_A_TMAP, .index = di_spec_arg(s, "w"), .rows = (unsigned long)n, .cols = (unsigned long)k,
                   .box_rows = (unsigned)c->tn, .box_cols = (unsigned)c->bk};
        l->args[l->nargs++] = x;
        if (!w_packed(s, p)) l->args[l->nargs++] = w;   /* packed w: the producers decode it */
    }
    if (m.fused || m.clustered) return DI_OK;   /* phase 1 stored y */
    add_reduce(s, pl, rows, n);
    return DI_OK;
}

/* phase 2 (split mode): the split partials added in split order */
static void add_reduce(const di_spec *s, di_plan *pl, long rows, long n)
{
    di_launch *r = &pl->l[pl->n++];
    r->run = DI_RUN_ENTRY;
    r->index = 1;
    r->grid[0] = (unsigned)ceil_div(n, (long)REDUCE_THREADS * reduce_vec(n));
    r->grid[1] = (unsigned)rows;
    r->grid[2] = 1;
    r->block[0] = REDUCE_THREADS;
    r->block[1] = r->block[2] = 1;
    di_launch_spec_args(s, r);
    di_launch_add(r, DI_A_WS, 0, 0, 0);
}

int di_matmul_fast_kernel_info(const di_spec *s, const di_specialization *p, const di_target *t,
                               di_matmul_fast_info *out, di_err *err)
{
    kernel_shape ks;
    if (!fast_applies(s, p, t) && !di_lowering_matmul_fast_f32x.applies(s, p, t))
        return di_fail(err, DI_ESPEC, "spec %s: not a fast-profile bf16-weight matmul", s->name);
    if (shape_of(s, p, t, &ks, err)) return err->code;
    di_mm_schedule base = di_mm_schedule_of(p, t);
    *out = (di_matmul_fast_info){.ks = ks.ks, .nsplit = ks.nsplit, .tm = ks.c.tm, .tn = ks.c.tn, .tensor_maps = ks.tmaps,
                                 .fuse_min_tiles = base.fuse_min_tiles, .fuse_min_rows = base.fuse_min_rows};
    return DI_OK;
}

/* ---- source -------------------------------------------------------------------------- */

/* The device code: helpers, then the two kernel bodies. They see the spec's parameters by
 * their generated names (x_, w_, rows, ...), the dims K and N, and MMF_EPILOGUE. */
static const char device_helpers[] =
    "#pragma nv_diag_suppress 550   /* MMF_EPILOGUE's row slices the body does not use */\n"
    "#define MMF_CPR (MMF_BK / 8)                        /* 16-byte chunks per shared row */\n"
    "#define MMF_RPL (MMF_CPR >= 8 ? 1 : 8 / MMF_CPR)    /* rows per 128-byte line */\n"
    "#define MMF_SWZ (MMF_CPR >= 8 ? 8 : MMF_CPR)\n"
    "#define MMF_A_BYTES (MMF_TM * MMF_BK * 2)\n"
    "#define MMF_STAGE_BYTES ((MMF_TM + MMF_TN) * MMF_BK * 2)\n"
    "#define MMF_WTM (MMF_TM / MMF_WM)                   /* a warp's rows and columns */\n"
    "#define MMF_WTN (MMF_TN / MMF_WN)\n"
    "#define MMF_MT (MMF_WTM / 16)                       /* its m16 and n8 fragments */\n"
    "#define MMF_NT (MMF_WTN / 8)\n"
    "#define MMF_ACH (MMF_TM * MMF_CPR / MMF_LOADERS)     /* x chunks per loading thread per stage */\n"
    "#define MMF_BCH (MMF_TN * MMF_CPR / MMF_LOADERS)     /* w chunks per loading thread per stage */\n"
    "#define MMF_VEC (K % 8 == 0)                        /* rows 16-byte aligned: cp.async */\n"
    "/* k tiles loaded ahead: wgmma keeps one more stage busy (the tile still being multiplied) */\n"
    "#define MMF_AHEAD (MMF_WGMMA ? MMF_STAGES - 2 : MMF_STAGES - 1)\n"
    "#define MMF_XSTAGE (MMF_X_F32 && MMF_VEC)           /* f32 x: registers, then bf16 */\n"
    "/* rows of the x boxes TMA loads: a whole tile, or the 16-row fragments below one tile */\n"
    "#define MMF_X_BOX_ROWS(rows) ((rows) < MMF_TM ? ((rows) + 15) / 16 * 16 : MMF_TM)\n"
    "#define MMF_TILES(rows) (((rows) + MMF_TM - 1) / MMF_TM * ((N + MMF_TN - 1) / MMF_TN))\n"
    "/* one block sums every split of its tile itself (same order); else phase 2 does */\n"
    "#define MMF_FUSED(rows) (MMF_NSPLIT == 1 || (MMF_FUSE_TILES > 0 && (rows) >= MMF_FUSE_ROWS && \\\n"
    "                         MMF_TILES(rows) >= MMF_FUSE_TILES))\n"
    "static_assert(MMF_TM * MMF_CPR % MMF_LOADERS == 0 && MMF_TN * MMF_CPR % MMF_LOADERS == 0, \"chunks\");\n"
    "static_assert(MMF_WTM % 16 == 0 && MMF_WTN % 16 == 0 && MMF_KS % MMF_BK == 0, \"tile shape\");\n"
    "\n"
    "/* Byte offset of 16-byte chunk c of row `row` in a [rows][BK] bf16 tile. The XOR puts the\n"
    " * 8 rows that one ldmatrix phase reads (same c) in 8 different 16-byte bank groups. */\n"
    "DI_FN unsigned mmf_off(int row, int c)\n"
    "{\n"
    "    return (unsigned)(row * (MMF_BK * 2) + ((c ^ ((row / MMF_RPL) % MMF_SWZ)) << 4));\n"
    "}\n"
    "\n"
    "/* 16 bytes global -> shared, bypassing L1; bytes < 16 zero-fills the rest (0: all). */\n"
    "DI_FN void mmf_cp16(unsigned dst, const void *src, int bytes)\n"
    "{\n"
    "    asm volatile(\"cp.async.cg.shared.global [%0], [%1], 16, %2;\\n\" ::\"r\"(dst), \"l\"(src), \"r\"(bytes) : \"memory\");\n"
    "}\n"
    "DI_FN void mmf_commit(void) { asm volatile(\"cp.async.commit_group;\\n\" ::: \"memory\"); }\n"
    "template <int P> DI_FN void mmf_wait(void) { asm volatile(\"cp.async.wait_group %0;\\n\" ::\"n\"(P) : \"memory\"); }\n"
    "\n"
    "DI_FN void mmf_st16(unsigned dst, unsigned a, unsigned b, unsigned c, unsigned d)\n"
    "{\n"
    "    asm volatile(\"st.shared.v4.b32 [%0], {%1, %2, %3, %4};\\n\" ::\"r\"(dst), \"r\"(a), \"r\"(b), \"r\"(c), \"r\"(d)\n"
    "                 : \"memory\");\n"
    "}\n"
    "\n"

    "DI_FN void mmf_ldsm4(unsigned addr, unsigned &r0, unsigned &r1, unsigned &r2, unsigned &r3)\n"
    "{\n"
    "    asm volatile(\"ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\\n\"\n"
    "                 : \"=r\"(r0), \"=r\"(r1), \"=r\"(r2), \"=r\"(r3) : \"r\"(addr) : \"memory\");\n"
    "}\n"
    "\n"

    "DI_FN unsigned mmf_u16(const di_bf16 *p, long i, bool ok) { return ok ? (unsigned)p[i] : 0u; }\n"
    "DI_FN float mmf_f32(const float *p, long i, bool ok) { return ok ? p[i] : 0.0f; }\n"
    "\n"
    "/* w tile [n0, n0 + TN) x [k0, k0 + BK): rows past N and k past K are zeros */\n"
    "DI_FN void mmf_load_w(unsigned sb, const di_bf16 *w, long n0, long k0, int tid)\n"
    "{\n"
    "#pragma unroll\n"
    "    for (int i = 0; i < MMF_BCH; i++) {\n"
    "        const int id = tid + i * MMF_LOADERS, row = id / MMF_CPR, cc = id % MMF_CPR;\n"
    "        const long gn = n0 + row, gk = k0 + cc * 8;\n"
    "#if MMF_VEC\n"
    "        const bool ok = gn < N && gk < K;\n"
    "        mmf_cp16(sb + mmf_off(row, cc), ok ? (const void *)(w + gn * K + gk) : (const void *)w, ok ? 16 : 0);\n"
    "#else\n"
    "        const di_bf16 *src = w + gn * K + gk;\n"
    "        unsigned v[4];\n"
    "#pragma unroll\n"
    "        for (int e = 0; e < 4; e++)\n"
    "            v[e] = mmf_u16(src, 2 * e, gn < N && gk + 2 * e < K) | mmf_u16(src, 2 * e + 1, gn < N && gk + 2 * e + 1 < K) << 16;\n"
    "        mmf_st16(sb + mmf_off(row, cc), v[0], v[1], v[2], v[3]);\n"
    "#endif\n"
    "    }\n"
    "}\n"
    "\n"
    "/* x tile rows [m0, m0 + rpad): rows past `rows` (rvalid in this tile) and k past K are\n"
    " * zeros; rows of 16-row fragments that hold no valid row are not written: mma.sync never\n"
    " * reads them, wgmma (always 64 rows) reads stale values there that reach only its own,\n"
    " * never stored, output rows (an mma output row depends on its own A row only). */\n"
    "DI_FN void mmf_load_x(unsigned sa, const di_bf16 *x, long m0, int rvalid, int rpad, long k0, int tid)\n"
    "{\n"
    "#pragma unroll\n"
    "    for (int i = 0; i < MMF_ACH; i++) {\n"
    "        const int id = tid + i * MMF_LOADERS, row = id / MMF_CPR, cc = id % MMF_CPR;\n"
    "        const long gk = k0 + cc * 8;\n"
    "        if (row >= rpad) continue;\n"
    "#if MMF_VEC\n"
    "        const bool ok = row < rvalid && gk < K;\n"
    "        mmf_cp16(sa + mmf_off(row, cc), ok ? (const void *)(x + (m0 + row) * K + gk) : (const void *)x, ok ? 16 : 0);\n"
    "#else\n"
    "        const di_bf16 *src = x + (m0 + row) * K + gk;\n"
    "        const bool in = row < rvalid;\n"
    "        unsigned v[4];\n"
    "#pragma unroll\n"
    "        for (int e = 0; e < 4; e++)\n"
    "            v[e] = mmf_u16(src, 2 * e, in && gk + 2 * e < K) | mmf_u16(src, 2 * e + 1, in && gk + 2 * e + 1 < K) << 16;\n"
    "        mmf_st16(sa + mmf_off(row, cc), v[0], v[1], v[2], v[3]);\n"
    "#endif\n"
    "    }\n"
    "}\n"
    "\n"
    "/* f32 x, element by element (K not a multiple of 8), converted to bf16 */\n"
    "DI_FN void mmf_load_x(unsigned sa, const float *x, long m0, int rvalid, int rpad, long k0, int tid)\n"
    "{\n"
    "#pragma unroll\n"
    "    for (int i = 0; i < MMF_ACH; i++) {\n"
    "        const int id = tid + i * MMF_LOADERS, row = id / MMF_CPR, cc = id % MMF_CPR;\n"
    "        const long gk = k0 + cc * 8;\n"
    "        if (row >= rpad) continue;\n"
    "        const float *src = x + (m0 + row) * K + gk;\n"
    "        const bool in = row < rvalid;\n"
    "        unsigned v[4];\n"
    "#pragma unroll\n"
    "        for (int e = 0; e < 4; e++)\n"
    "            v[e] = di_pack_bf16x2(mmf_f32(src, 2 * e, in && gk + 2 * e < K), mmf_f32(src, 2 * e + 1, in && gk + 2 * e + 1 < K));\n"
    "        mmf_st16(sa + mmf_off(row, cc), v[0], v[1], v[2], v[3]);\n"
    "    }\n"
    "}\n"
    "\n"
    "/* f32 x, rows 32-byte aligned: fetch a stage into registers (issued before the math of\n"
    " * the current stage), then convert and store it (after the math). */\n"
    "DI_FN void mmf_fetch_x(float4 (&xr)[MMF_ACH][2], const float *x, long m0, int rvalid, long k0, int tid)\n"
    "{\n"
    "#pragma unroll\n"
    "    for (int i = 0; i < MMF_ACH; i++) {\n"
    "        const int id = tid + i * MMF_LOADERS, row = id / MMF_CPR, cc = id % MMF_CPR;\n"
    "        const long gk = k0 + cc * 8;\n"
    "        xr[i][0] = xr[i][1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);\n"
    "        if (row < rvalid && gk < K) {\n"
    "            const float4 *src = (const float4 *)(x + (m0 + row) * K + gk);\n"
    "            xr[i][0] = __ldg(src);\n"
    "            xr[i][1] = __ldg(src + 1);\n"
    "        }\n"
    "    }\n"
    "}\n"
    "\n"
    "DI_FN void mmf_store_x(unsigned sa, const float4 (&xr)[MMF_ACH][2], int rpad, int tid)\n"
    "{\n"
    "#pragma unroll\n"
    "    for (int i = 0; i < MMF_ACH; i++) {\n"
    "        const int id = tid + i * MMF_LOADERS, row = id / MMF_CPR, cc = id % MMF_CPR;\n"
    "        if (row < rpad)\n"
    "            mmf_st16(sa + mmf_off(row, cc), di_pack_bf16x2(xr[i][0].x, xr[i][0].y), di_pack_bf16x2(xr[i][0].z, xr[i][0].w),\n"
    "                     di_pack_bf16x2(xr[i][1].x, xr[i][1].y), di_pack_bf16x2(xr[i][1].z, xr[i][1].w));\n"
    "    }\n"
    "}\n"
    "\n"
    "/* One k tile of a warp's fragments: k16 steps in increasing k, one mma per fragment per\n"
    " * step. Only the first MTA fragments (those holding valid rows) are computed, whole; MTA\n"
    " * is a template constant so that the loads of a step can all issue before its mma. */\n"
    "template <int MTA>\n"
    "DI_FN void mmf_tile(float (&c)[MMF_MT][MMF_NT][4], unsigned sa, unsigned sb, int lane, int wm, int wn)\n"
    "{\n"
    "#pragma unroll\n"
    "    for (int kk = 0; kk < MMF_BK / 16; kk++) {\n"
    "        unsigned b[MMF_NT][2], a[MTA][4];\n"
    "#pragma unroll\n"
    "        for (int j = 0; j < MMF_NT / 2; j++) {\n"
    "            const int row = wn * MMF_WTN + j * 16 + (lane & 7) + ((lane >> 4) << 3);\n"
    "            mmf_ldsm4(sb + mmf_off(row, kk * 2 + ((lane >> 3) & 1)), b[2 * j][0], b[2 * j][1], b[2 * j + 1][0],\n"
    "                      b[2 * j + 1][1]);\n"
    "        }\n"
    "#pragma unroll\n"
    "        for (int i = 0; i < MTA; i++) {\n"
    "            const int row = wm * MMF_WTM + i * 16 + (lane & 15);\n"
    "            mmf_ldsm4(sa + mmf_off(row, kk * 2 + (lane >> 4)), a[i][0], a[i][1], a[i][2], a[i][3]);\n"
    "        }\n"
    "#pragma unroll\n"
    "        for (int i = 0; i < MTA; i++)\n"
    "#pragma unroll\n"
    "            for (int j = 0; j < MMF_NT; j++) di_mma_16816(c[i][j], a[i], b[j][0], b[j][1]);\n"
    "    }\n"
    "}\n"
    "\n"
    "/* mt_act (warp-uniform) fragments hold rows: all of them once rows >= the tile's end.\n"
    " * `>=`, not `==`, so a count above MMF_MT still runs the whole tile. Seen on the H100\n"
    " * (NVRTC 13.0, sm_90a) with `==` and a ?: clamp: every warp whose unclamped count\n"
    " * exceeded MMF_MT computed nothing (rows 0-63 of a tile were 0 once rows 64+ existed);\n"
    " * with `>=` and min/max, every M in 1..257 matches the float64 reference. */\n"
    "template <int MTA>\n"
    "DI_FN void mmf_compute(float (&c)[MMF_MT][MMF_NT][4], unsigned sa, unsigned sb, int lane, int wm, int wn, int mt_act)\n"
    "{\n"
    "    if (mt_act >= MTA) mmf_tile<MTA>(c, sa, sb, lane, wm, wn);\n"
    "    else if constexpr (MTA > 1) mmf_compute<MTA - 1>(c, sa, sb, lane, wm, wn, mt_act);\n"
    "}\n";

/* Packed w (dsl/dsl.h's Q4X8 / Q8X8 records, as the CPU and the exact profile read them): the
 * [TN][BK] tile of bf16 the bf16 kernel would stage, made by the loading threads in registers.
 * A set is 4 adjacent outputs (half a record's lanes) x 8 k, cc = id % CPR its 16-byte chunk of
 * the row: one 16-byte load of code words (two for 8-bit codes) and that half's d and m, so a
 * warp reads whole 128-byte code blocks. Each weight is bf16(d * code + m): the code as an exact
 * float (2^23 + code, less 2^23), d * code + m in one rounding (an fma: d * code is exact in f32,
 * at most 11 + 6 + 8 bits), then two weights to bf16x2 by cvt.rn (nearest even), which is the
 * load-time conversion for every weight model/pack.c packs (it checks each). So the stage holds
 * the bytes the bf16 kernel's copy would: the same products in the same order. The TMA kernel's
 * loaders fetch a stage one stage ahead (mmf_fetch_wq), then decode and store it (mmf_store_wq). */
static const char wq_helpers[] =
    "/* a record's scales: d[8] then m[8], f32 or binary16 (Q4X8H, Q8X8H); its code words after them */\n"
    "#if MMF_PK_HALF\n"
    "typedef uint2 mmf_sc4;   /* four lanes' scales */\n"
    "DI_FN float mmf_h2f(unsigned short h) { float f; asm(\"cvt.f32.f16 %0, %1;\" : \"=f\"(f) : \"h\"(h)); return f; }\n"
    "DI_FN float mmf_sc(const mmf_sc4 &s, int e) { return mmf_h2f((unsigned short)((e < 2 ? s.x : s.y) >> (16 * (e & 1)))); }\n"
    "DI_FN float mmf_scale(const unsigned char *r, int i) { return mmf_h2f(*(const unsigned short *)(r + 2 * i)); }\n"
    "#define MMF_SC_LOAD(p) __ldg((const uint2 *)(p))\n"
    "#define MMF_SC_ZERO make_uint2(0u, 0u)\n"
    "#define MMF_SC_BYTES 2\n"
    "#else\n"
    "typedef float4 mmf_sc4;\n"
    "DI_FN float mmf_sc(const mmf_sc4 &s, int e) { return e == 0 ? s.x : e == 1 ? s.y : e == 2 ? s.z : s.w; }\n"
    "DI_FN float mmf_scale(const unsigned char *r, int i) { return *(const float *)(r + 4 * i); }\n"
    "#define MMF_SC_LOAD(p) __ldg((const float4 *)(p))\n"
    "#define MMF_SC_ZERO make_float4(0.0f, 0.0f, 0.0f, 0.0f)\n"
    "#define MMF_SC_BYTES 4\n"
    "#endif\n"
    "#define MMF_PK_Q (16 * MMF_SC_BYTES)   /* the code words' offset in a record */\n"
    "#define MMF_WQ_SETS (MMF_TN * MMF_BK / 32 / MMF_LOADERS)\n"
    "#define MMF_WQ_WORDS MMF_WQ                                  /* 16-byte code loads per set */\n"
    "static_assert(MMF_TN * MMF_BK / 32 % MMF_LOADERS == 0, \"sets\");\n"
    "struct mmf_wq_raw { uint4 q[MMF_WQ_SETS][MMF_WQ_WORDS]; mmf_sc4 d[MMF_WQ_SETS], m[MMF_WQ_SETS]; };\n"
    "DI_FN void mmf_fetch_wq(mmf_wq_raw &raw, const unsigned char *w, long n0, long k0, int tid)\n"
    "{\n"
    "    const long np = (N + 7) / 8 * 8;   /* outputs with records (past N: zero records) */\n"
    "#pragma unroll\n"
    "    for (int i = 0; i < MMF_WQ_SETS; i++) {\n"
    "        const int id = tid + i * MMF_LOADERS, cc = id % MMF_CPR, r4 = id / MMF_CPR;\n"
    "        const long gn = n0 + 4 * r4, gk = k0 + 8 * cc;\n"
    "        if (gn < np && gk < K) {\n"
    "            const unsigned char *r = w + ((gn / 8) * (K / 32) + gk / 32) * MMF_PK_REC;\n"
    "            const int half = (int)(gn % 8) / 4, j = (int)(gk % 32) / 8;\n"
    "            raw.d[i] = MMF_SC_LOAD(r + 4 * MMF_SC_BYTES * half);\n"
    "            raw.m[i] = MMF_SC_LOAD(r + 8 * MMF_SC_BYTES + 4 * MMF_SC_BYTES * half);\n"
    "#pragma unroll\n"
    "            for (int h = 0; h < MMF_WQ_WORDS; h++)\n"
    "                raw.q[i][h] = __ldg((const uint4 *)(r + MMF_PK_Q + 32 * (MMF_WQ_WORDS * j + h) + 16 * half));\n"
    "        } else {\n"
    "            raw.d[i] = raw.m[i] = MMF_SC_ZERO;\n"
    "#pragma unroll\n"
    "            for (int h = 0; h < MMF_WQ_WORDS; h++) raw.q[i][h] = make_uint4(0u, 0u, 0u, 0u);\n"
    "        }\n"
    "    }\n"
    "}\n"
    "DI_FN unsigned mmf_bf16x2(float lo, float hi)\n"
    "{\n"
    "    unsigned r;\n"
    "    asm(\"cvt.rn.bf16x2.f32 %0, %1, %2;\" : \"=r\"(r) : \"f\"(hi), \"f\"(lo));\n"
    "    return r;\n"
    "}\n"
    "/* (v & mask) | magic, or ^ magic, as one LOP3: written in C, ptxas makes two (one immediate\n"
    " * each); the same bits either way */\n"
    "DI_FN unsigned mmf_and_or(unsigned v, unsigned mask, unsigned magic)\n"
    "{\n"
    "    unsigned r;\n"
    "    asm(\"lop3.b32 %0, %1, %2, %3, 0xEA;\" : \"=r\"(r) : \"r\"(v), \"r\"(mask), \"r\"(magic));\n"
    "    return r;\n"
    "}\n"
    "DI_FN unsigned mmf_and_xor(unsigned v, unsigned mask, unsigned magic)\n"
    "{\n"
    "    unsigned r;\n"
    "    asm(\"lop3.b32 %0, %1, %2, %3, 0x6A;\" : \"=r\"(r) : \"r\"(v), \"r\"(mask), \"r\"(magic));\n"
    "    return r;\n"
    "}\n"
    "/* code s (0..7 nibbles, or bytes of two words) of a lane's words, as an exact float */\n"
    "DI_FN float mmf_code(const unsigned *wd, int s)\n"
    "{\n"
    "#if MMF_WQ == 1\n"
    "    return __uint_as_float(mmf_and_or(wd[0] >> (4 * s), 15u, 0x4b000000u)) - 8388608.0f;\n"
    "#else\n"
    "    return __uint_as_float(mmf_and_xor(wd[s / 4] >> (8 * (s % 4)), 255u, 0x4b000080u)) - 8388736.0f;   /* signed byte */\n"
    "#endif\n"
    "}\n"
    "DI_FN void mmf_store_wq(unsigned sb, const mmf_wq_raw &raw, int tid)\n"
    "{\n"
    "#pragma unroll\n"
    "    for (int i = 0; i < MMF_WQ_SETS; i++) {\n"
    "        const int id = tid + i * MMF_LOADERS, cc = id % MMF_CPR, r4 = id / MMF_CPR;\n"
    "        const float d[4] = {mmf_sc(raw.d[i], 0), mmf_sc(raw.d[i], 1), mmf_sc(raw.d[i], 2), mmf_sc(raw.d[i], 3)};\n"
    "        const float m[4] = {mmf_sc(raw.m[i], 0), mmf_sc(raw.m[i], 1), mmf_sc(raw.m[i], 2), mmf_sc(raw.m[i], 3)};\n"
    "#pragma unroll\n"
    "        for (int e = 0; e < 4; e++) {\n"
    "            unsigned wd[MMF_WQ_WORDS];\n"
    "#pragma unroll\n"
    "            for (int h = 0; h < MMF_WQ_WORDS; h++)\n"
    "                wd[h] = e == 0 ? raw.q[i][h].x : e == 1 ? raw.q[i][h].y : e == 2 ? raw.q[i][h].z : raw.q[i][h].w;\n"
    "            unsigned v[4];\n"
    "#pragma unroll\n"
    "            for (int p = 0; p < 4; p++)\n"
    "                v[p] = mmf_bf16x2(__fmaf_rn(d[e], mmf_code(wd, 2 * p), m[e]), __fmaf_rn(d[e], mmf_code(wd, 2 * p + 1), m[e]));\n"
    "            mmf_st16(sb + mmf_off(4 * r4 + e, cc), v[0], v[1], v[2], v[3]);\n"
    "        }\n"
    "    }\n"
    "}\n"
    "static_assert(MMF_TMA, \"packed w is loaded by the sm_90a TMA kernel's producer warps only\");\n";

/* Fused mode, a split is complete: once its wgmma are done, it joins the running sum
 * (0.0f + p0 + p1 ..., as phase 2 adds them), and the next split's chain starts from 0.
 * With one split the sum is 0.0f + p0, formed at the store (MMF_SUM): no second accumulator
 * array, so a warpgroup can hold 64 x 256 outputs (the wide tile, see shape_of). */
static const char split_helper[] =
    "#if MMF_NSPLIT == 1\n"
    "#define MMF_SUM(i, j, e) __fadd_rn(0.0f, c[i][j][e])\n"
    "#else\n"
    "#define MMF_SUM(i, j, e) sum[i][j][e]\n"
    "#endif\n"
    "DI_FN void mmf_split_done(float (&sum)[MMF_MT][MMF_NT][4], float (&c)[MMF_MT][MMF_NT][4])\n"
    "{\n"
    "#if MMF_WGMMA\n"
    "    mmf_wgmma_wait<0>(c);\n"
    "#endif\n"
    "#if MMF_NSPLIT > 1\n"
    "#pragma unroll\n"
    "    for (int i = 0; i < MMF_MT; i++)\n"
    "#pragma unroll\n"
    "        for (int j = 0; j < MMF_NT; j++)\n"
    "#pragma unroll\n"
    "            for (int e = 0; e < 4; e++) {\n"
    "                sum[i][j][e] = __fadd_rn(sum[i][j][e], c[i][j][e]);\n"
    "                c[i][j][e] = 0.0f;\n"
    "            }\n"
    "#endif\n"
    "}\n";

/* The mma_sync schedule's main loop (v2's block): every warp loads its share of each stage by
 * cp.async and multiplies with mma.sync; one block-wide barrier per k tile. */
static const char phase1_body[] =
    "    extern __shared__ __align__(1024) unsigned char mmf_smem[];   /* wgmma's 128-byte swizzle atoms */\n"
    "    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;\n"
    "    const int wm = warp / MMF_WN, wn = warp % MMF_WN;\n"
    "    /* grouped raster: GROUP_M row tiles side by side, so blocks that run together share\n"
    "     * slices of x and w in L2. Which block does a tile never changes its arithmetic. */\n"
    "    const long gn = gridDim.x, gm = gridDim.y, pid = (long)blockIdx.y * gn + blockIdx.x;\n"
    "    const long span = (long)MMF_GROUP_M * gn, fm = pid / span * MMF_GROUP_M;\n"
    "    const long gs = gm - fm < MMF_GROUP_M ? gm - fm : MMF_GROUP_M;\n"
    "    const long m0 = (fm + pid % span % gs) * MMF_TM, n0 = pid % span / gs * MMF_TN;\n"
    "    const bool fused = MMF_FUSED(rows);\n"
    "    const long nkt = (K + MMF_BK - 1) / MMF_BK, tps = MMF_KS / MMF_BK;\n"
    "    const long zsplit = blockIdx.z, kt0 = fused ? 0 : zsplit * tps;\n"
    "    const long kt1 = fused ? nkt : (kt0 + tps < nkt ? kt0 + tps : nkt);\n"
    "    const int rvalid = rows - m0 < MMF_TM ? (int)(rows - m0) : MMF_TM;\n"
    "    const int rpad = (rvalid + 15) / 16 * 16;\n"
    "    const int mt_raw = (rpad - wm * MMF_WTM) / 16;\n"
    "    const int mt_act = max(0, min(mt_raw, (int)MMF_MT));\n"
    "    const unsigned s0 = (unsigned)__cvta_generic_to_shared(mmf_smem);\n"
    "\n"
    "    float c[MMF_MT][MMF_NT][4], sum[MMF_MT][MMF_NT][4];\n"
    "#pragma unroll\n"
    "    for (int i = 0; i < MMF_MT; i++)\n"
    "#pragma unroll\n"
    "        for (int j = 0; j < MMF_NT; j++)\n"
    "#pragma unroll\n"
    "            for (int e = 0; e < 4; e++) c[i][j][e] = sum[i][j][e] = 0.0f;\n"
    "#if MMF_XSTAGE\n"
    "    float4 xr[MMF_ACH][2];\n"
    "#endif\n"
    "\n"
    "    /* prologue: the first AHEAD k tiles in flight (one commit group each) */\n"
    "#pragma unroll\n"
    "    for (int st = 0; st < MMF_AHEAD; st++) {\n"
    "        const long kt = kt0 + st;\n"
    "        if (kt < kt1) {\n"
    "            const unsigned sa = s0 + st * MMF_STAGE_BYTES;\n"
    "            mmf_load_w(sa + MMF_A_BYTES, w_, n0, kt * MMF_BK, tid);\n"
    "#if MMF_XSTAGE\n"
    "            mmf_fetch_x(xr, x_, m0, rvalid, kt * MMF_BK, tid);\n"
    "            mmf_store_x(sa, xr, rpad, tid);\n"
    "#else\n"
    "            mmf_load_x(sa, x_, m0, rvalid, rpad, kt * MMF_BK, tid);\n"
    "#endif\n"
    "        }\n"
    "        mmf_commit();\n"
    "    }\n"
    "    int cs = 0, ns = MMF_AHEAD;\n"
    "    long left = tps;   /* k tiles left in the current split (fused mode) */\n"
    "    for (long kt = kt0; kt < kt1; kt++) {\n"
    "        mmf_wait<MMF_AHEAD - 1>();    /* this thread's copies of tile kt have landed */\n"
    "        /* everyone's have; everyone is done with the stage loaded next (tile kt - 1's) */\n"
    "        __syncthreads();\n"
    "        const long nk = kt + MMF_AHEAD;\n"
    "        const bool more = nk < kt1;\n"
    "        const unsigned na = s0 + ns * MMF_STAGE_BYTES;   /* the stage of tile kt + AHEAD - STAGES */\n"
    "        if (more) {\n"
    "            mmf_load_w(na + MMF_A_BYTES, w_, n0, nk * MMF_BK, tid);\n"
    "#if MMF_XSTAGE\n"
    "            mmf_fetch_x(xr, x_, m0, rvalid, nk * MMF_BK, tid);\n"
    "#else\n"
    "            mmf_load_x(na, x_, m0, rvalid, rpad, nk * MMF_BK, tid);\n"
    "#endif\n"
    "        }\n"
    "        mmf_commit();\n"
    "        const unsigned ca = s0 + cs * MMF_STAGE_BYTES;\n"
    "        mmf_compute<MMF_MT>(c, ca, ca + MMF_A_BYTES, lane, wm, wn, mt_act);\n"
    "#if MMF_XSTAGE\n"
    "        if (more) mmf_store_x(na, xr, rpad, tid);\n"
    "#endif\n"
    "        if (fused && (--left == 0 || kt + 1 == kt1)) {\n"
    "            left = tps;\n"
    "            mmf_split_done(sum, c);\n"
    "        }\n"
    "        cs = cs + 1 == MMF_STAGES ? 0 : cs + 1;\n"
    "        ns = ns + 1 == MMF_STAGES ? 0 : ns + 1;\n"
    "    }\n"
    "    mmf_wait<0>();\n";

/* After either main loop: c (split mode) or sum (fused mode) to memory. */
static const char phase1_store[] =
    "\n"
    "    /* fragment element e of (i, j): row g (+8 for e >= 2), columns 2q, 2q + 1 */\n"
    "    const int g = lane >> 2, q = lane & 3;\n"
    "#if MMF_PRODUCERS && MMF_NSPLIT > 1 && __CUDA_ARCH__ >= 900\n"
    "    if (!fused && mmf_cluster_blocks() > 1) {\n"
    "        /* one unit a block, a tile's splits one cluster: partials as [row][TN] of the tile's valid\n"
    "         * rows, then this block (rank zsplit) sums outputs o = zsplit * CONSUMERS + tid, + NSPLIT *\n"
    "         * CONSUMERS, ...: a thread an output, spread over the whole cluster */\n"
    "        float *part = (float *)mmf_smem;\n"
    "        static_assert(MMF_TM * MMF_TN * 4 <= MMF_STAGES * MMF_STAGE_BYTES, \"partials fit the stages\");\n"
    "        const int rvalid = rows - m0 < MMF_TM ? (int)(rows - m0) : MMF_TM;\n"
    "        mmf_consumers_sync(MMF_CONSUMERS);\n"
    "#pragma unroll\n"
    "        for (int i = 0; i < MMF_MT; i++)\n"
    "#pragma unroll\n"
    "            for (int j = 0; j < MMF_NT; j++)\n"
    "#pragma unroll\n"
    "                for (int e = 0; e < 4; e++) {\n"
    "                    const int lr = wm * MMF_WTM + i * 16 + g + (e >> 1) * 8, lc = wn * MMF_WTN + j * 8 + q * 2 + (e & 1);\n"
    "                    if (lr < rvalid) part[lr * MMF_TN + lc] = c[i][j][e];\n"
    "                }\n"
    "        mmf_cluster_sync();\n"
    "        for (int o = (int)zsplit * MMF_CONSUMERS + tid; o < rvalid * MMF_TN; o += (int)MMF_NSPLIT * MMF_CONSUMERS)\n"
    "            if (n0 + o % MMF_TN < N) MMF_EPILOGUE(m0 + o / MMF_TN, n0 + o % MMF_TN, mmf_cluster_sum(part + o));\n"
    "        mmf_cluster_sync();   /* the others have read this block's partials */\n"
    "        continue;\n"
    "    }\n"
    "#endif\n"
    "#pragma unroll\n"
    "    for (int i = 0; i < MMF_MT; i++)\n"
    "#pragma unroll\n"
    "        for (int j = 0; j < MMF_NT; j++)\n"
    "#pragma unroll\n"
    "            for (int h = 0; h < 2; h++) {\n"
    "                const long rr = m0 + wm * MMF_WTM + i * 16 + g + h * 8;\n"
    "                const long nn = n0 + wn * MMF_WTN + j * 8 + q * 2;\n"
    "                if (rr >= rows) continue;\n"
    "                if (fused) {\n"
    "                    if (nn < N) MMF_EPILOGUE(rr, nn, MMF_SUM(i, j, 2 * h));\n"
    "                    if (nn + 1 < N) MMF_EPILOGUE(rr, nn + 1, MMF_SUM(i, j, 2 * h + 1));\n"
    "                } else {\n"
    "                    float *dst = ws + (zsplit * rows + rr) * N + nn;\n"
    "#if N % 2 == 0\n"
    "                    if (nn < N) *(float2 *)dst = make_float2(c[i][j][2 * h], c[i][j][2 * h + 1]);\n"
    "#else\n"
    "                    if (nn < N) dst[0] = c[i][j][2 * h];\n"
    "                    if (nn + 1 < N) dst[1] = c[i][j][2 * h + 1];\n"
    "#endif\n"
    "                }\n"
    "            }\n";

/* v4, warp-specialized (producers > 0): MMF_PRODUCERS warps only load, the TM / 64
 * warpgroups only multiply, and they hand stages over through two mbarriers per stage
 * instead of a block-wide barrier per k tile. full[s] completes when every loading thread
 * has arrived and its copies into stage s have landed (each loader arrives twice: once when
 * its copies land, cp.async.mbarrier.arrive.noinc, and once in program order after its plain
 * stores; the count is 2 x loaders. Without .noinc, the copies' arrival raised the pending
 * count instead, which compute-sanitizer's synccheck reported as "Missing wait" on every
 * phase: 0 errors with .noinc, H200, 2026-12-01); empty[s] completes when every multiplying
 * warp is done reading the stage (its wgmma waited for). Loaders run up to STAGES k tiles
 * ahead. Same k tiles, same k16 order, same split boundaries and split sum as phase1_body:
 * only who waits for whom changes, so the bits are the same. */
static const char ws_helpers[] =
    "DI_FN void mmf_bar_init(unsigned bar, unsigned count)\n"
    "{\n"
    "    asm volatile(\"mbarrier.init.shared::cta.b64 [%0], %1;\\n\" ::\"r\"(bar), \"r\"(count) : \"memory\");\n"
    "}\n"
    "DI_FN void mmf_bar_arrive(unsigned bar)\n"
    "{\n"
    "    asm volatile(\"mbarrier.arrive.shared::cta.b64 _, [%0];\\n\" ::\"r\"(bar) : \"memory\");\n"
    "}\n"
    "/* one arrival on the barrier's current phase once this thread's cp.async copies so far land */\n"
    "DI_FN void mmf_bar_track_copies(unsigned bar)\n"
    "{\n"
    "    asm volatile(\"cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\\n\" ::\"r\"(bar) : \"memory\");\n"
    "}\n"
    "#if MMF_TMA\n"
    "/* one arrival that also expects `bytes` of asynchronous copies in this phase */\n"
    "DI_FN void mmf_bar_expect(unsigned bar, unsigned bytes)\n"
    "{\n"
    "    asm volatile(\"mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\\n\" ::\"r\"(bar), \"r\"(bytes) : \"memory\");\n"
    "}\n"
    "/* box (k, row) of a tensor map into shared memory; its bytes count on barrier `bar` */\n"
    "DI_FN void mmf_tma_load(unsigned dst, const di_tmap *map, int k, int row, unsigned bar)\n"
    "{\n"
    "    asm volatile(\"cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\\n\"\n"
    "                 ::\"r\"(dst), \"l\"((unsigned long long)map), \"r\"(k), \"r\"(row), \"r\"(bar) : \"memory\");\n"
    "}\n"
    "#endif\n"
    "/* until the phase of parity `parity` has completed (on a fresh barrier, parity 1 at once) */\n"
    "DI_FN void mmf_bar_wait(unsigned bar, unsigned parity)\n"
    "{\n"
    "    unsigned done;\n"
    "    do {\n"
    "#if __CUDA_ARCH__ >= 900\n"
    "        asm volatile(\"{\\n.reg .pred p;\\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\\n\"\n"
    "#else\n"
    "        asm volatile(\"{\\n.reg .pred p;\\nmbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\\n\"\n"
    "#endif\n"
    "                     \"selp.u32 %0, 1, 0, p;\\n}\\n\" : \"=r\"(done) : \"r\"(bar), \"r\"(parity) : \"memory\");\n"
    "    } while (!done);\n"
    "}\n"
    "/* Work unit u of a persistent block: a tile and (split mode) one K split of it, tile-major\n"
    " * (u = tile * NSPLIT + split: a cluster's blocks are one tile's splits), tiles in the grouped\n"
    " * raster: GROUP_M row tiles side by side, so units that run together share slices of x and w\n"
    " * in L2. Which block runs a unit, and after which other units, never changes its arithmetic. */\n"
    "DI_FN void mmf_unit(long u, bool fused, long gn, long gm, long &m0, long &n0, long &kt0, long &kt1,\n"
    "                    long &z)\n"
    "{\n"
    "    const long nkt = (K + MMF_BK - 1) / MMF_BK, tps = MMF_KS / MMF_BK;\n"
    "    z = fused ? 0 : u % MMF_NSPLIT;\n"
    "    const long pid = fused ? u : u / MMF_NSPLIT;\n"
    "    const long span = (long)MMF_GROUP_M * gn, fm = pid / span * MMF_GROUP_M;\n"
    "    const long gs = gm - fm < MMF_GROUP_M ? gm - fm : MMF_GROUP_M;\n"
    "    m0 = (fm + pid % span % gs) * MMF_TM;\n"
    "    n0 = pid % span / gs * MMF_TN;\n"
    "    kt0 = fused ? 0 : z * tps;\n"
    "    kt1 = fused ? nkt : (kt0 + tps < nkt ? kt0 + tps : nkt);\n"
    "}\n"
    "/* Clusters (split mode, plan's split_cluster): a cluster's blocks are one tile's splits, rank z\n"
    " * = split z. Each stores its partials in its own shared memory; after a cluster barrier every\n"
    " * block adds a share of the outputs from all of them in split order; a second barrier keeps\n"
    " * each block's shared memory alive until the others have read it. Outside a cluster launch a\n"
    " * block is a cluster of one. */\n"
    "DI_FN unsigned mmf_cluster_blocks(void)\n"
    "{\n"
    "    unsigned n = 1;\n"
    "#if __CUDA_ARCH__ >= 900\n"
    "    asm volatile(\"mov.u32 %0, %%cluster_nctarank;\\n\" : \"=r\"(n));\n"
    "#endif\n"
    "    return n;\n"
    "}\n"
    "/* every thread of the cluster: stores before it are seen by loads after it */\n"
    "DI_FN void mmf_cluster_sync(void)\n"
    "{\n"
    "#if __CUDA_ARCH__ >= 900\n"
    "    asm volatile(\"barrier.cluster.arrive.release;\\nbarrier.cluster.wait.acquire;\\n\" ::: \"memory\");\n"
    "#endif\n"
    "}\n"
    "/* a thread done before the split sum (a loader) still takes its part in both of its barriers */\n"
    "#define MMF_CLUSTER_LEAVE() do { if (mmf_cluster_blocks() > 1) { mmf_cluster_sync(); mmf_cluster_sync(); } } while (0)\n"
    "/* the block's `threads` multiplying threads (warps 0 ..), named barrier 1: their wgmma have\n"
    " * all finished reading the stages before any of them reuses the stages' memory */\n"
    "DI_FN void mmf_consumers_sync(int threads)\n"
    "{\n"
    "    asm volatile(\"bar.sync 1, %0;\\n\" ::\"r\"(threads) : \"memory\");\n"
    "}\n"
    "#if __CUDA_ARCH__ >= 900\n"
    "/* the float at p in the shared memory of the cluster's block `rank` */\n"
    "DI_FN float mmf_peer_f32(const float *p, unsigned rank)\n"
    "{\n"
    "    unsigned a = (unsigned)__cvta_generic_to_shared(p), r;\n"
    "    float v;\n"
    "    asm volatile(\"mapa.shared::cluster.u32 %0, %1, %2;\\n\" : \"=r\"(r) : \"r\"(a), \"r\"(rank));\n"
    "    asm volatile(\"ld.shared::cluster.f32 %0, [%1];\\n\" : \"=f\"(v) : \"r\"(r));\n"
    "    return v;\n"
    "}\n"
    "/* the partial at p in every block of the cluster, added in split order from 0.0f as phase 2\n"
    " * adds them; all NSPLIT loads are issued before the first add (one round trip, not NSPLIT) */\n"
    "DI_FN float mmf_cluster_sum(const float *p)\n"
    "{\n"
    "    float v[MMF_NSPLIT], a = 0.0f;\n"
    "#pragma unroll\n"
    "    for (unsigned q = 0; q < (unsigned)MMF_NSPLIT; q++) v[q] = mmf_peer_f32(p, q);\n"
    "#pragma unroll\n"
    "    for (int q = 0; q < (int)MMF_NSPLIT; q++) a = __fadd_rn(a, v[q]);\n"
    "    return a;\n"
    "}\n"
    "#endif\n"
    "/* plain st.shared by this thread -> later wgmma reads (async proxy); cp.async copies are\n"
    " * fenced by the multiplying warps after the full barrier instead */\n"
    "#if MMF_WGMMA\n"
    "#define MMF_FENCE_STORES() asm volatile(\"fence.proxy.async.shared::cta;\\n\" ::: \"memory\")\n"
    "#else\n"
    "#define MMF_FENCE_STORES() do { } while (0)\n"
    "#endif\n";

static const char phase1_ws_body[] =
    "    extern __shared__ __align__(1024) unsigned char mmf_smem[];   /* wgmma's 128-byte swizzle atoms */\n"
    "    const int tid = threadIdx.x;\n"
    "    const bool fused = MMF_FUSED(rows);\n"
    "    const long gn = (N + MMF_TN - 1) / MMF_TN, gm = (rows + MMF_TM - 1) / MMF_TM, tiles = gn * gm;\n"
    "    const long units = fused ? tiles : tiles * MMF_NSPLIT;\n"
    "    const long tps = MMF_KS / MMF_BK;\n"
    "    const unsigned s0 = (unsigned)__cvta_generic_to_shared(mmf_smem);\n"
    "    const unsigned full = s0 + MMF_STAGES * MMF_STAGE_BYTES, empty = full + 8 * MMF_STAGES;\n"
    "    if (tid == 0) {\n"
    "        for (int st = 0; st < MMF_STAGES; st++) {\n"
    "            /* TMA: the expecting arrival (and with packed w each loader's, once its stores are fenced);\n"
    "             * cp.async: two arrivals a loader */\n"
    "            mmf_bar_init(full + 8 * st, MMF_TMA ? 1 + (MMF_WQ ? MMF_LOADERS : 0) : 2 * MMF_LOADERS);\n"
    "            mmf_bar_init(empty + 8 * st, MMF_CONSUMERS / 32);\n"
    "        }\n"
    "#if MMF_TMA\n"
    "        /* the inits visible to the async proxy, whose TMA completions signal the full barriers */\n"
    "        asm volatile(\"fence.mbarrier_init.release.cluster;\\n\" ::: \"memory\");\n"
    "#endif\n"
    "    }\n"
    "    __syncthreads();   /* the only block-wide barrier: the mbarriers exist */\n"
    "\n"
    "    if (tid >= MMF_CONSUMERS) {\n"
    "#if MMF_TMA && !MMF_WQ\n"
    "        /* w's first stages of the block's first unit before the wait (DI_GRID_ENTRY): no kernel\n"
    "         * writes weights, so their bytes may stream while the kernel before this one still runs */\n"
    "        long pre = 0;\n"
    "        if (tid == MMF_CONSUMERS && blockIdx.x < units) {\n"
    "            long m0, n0, kt0, kt1, z;\n"
    "            mmf_unit(blockIdx.x, fused, gn, gm, m0, n0, kt0, kt1, z);\n"
    "            const unsigned pre_bytes = (unsigned)(MMF_X_BOX_ROWS(rows) + MMF_TN) * MMF_BK * 2;\n"
    "            pre = kt1 - kt0 < MMF_STAGES ? kt1 - kt0 : MMF_STAGES;\n"
    "            for (int st = 0; st < pre; st++) {\n"
    "                mmf_bar_expect(full + 8 * st, pre_bytes);\n"
    "                mmf_tma_load(s0 + st * MMF_STAGE_BYTES + MMF_A_BYTES, &mmf_tw, (int)((kt0 + st) * MMF_BK), (int)n0,\n"
    "                             full + 8 * st);\n"
    "            }\n"
    "        }\n"
    "#endif\n"
    "        DI_GRID_ENTRY();\n"
    "        /* loaders: the block's units in order, k tile after k tile into stage after stage,\n"
    "         * each stage once its last readers are done (so they run ahead across units) */\n"
    "        const int lt = tid - MMF_CONSUMERS;\n"
    "#if MMF_TMA\n"
    "        if (!MMF_WQ && lt != 0) { MMF_CLUSTER_LEAVE(); return; }   /* one thread: the tensor copies (packed w: all decode it) */\n"
    "        /* x boxes are MMF_X_BOX_ROWS(rows) tall (the runtime encodes the same): below one tile\n"
    "         * of rows, only the 16-row fragments that hold rows are fetched */\n"
    "        const unsigned stage_bytes = (unsigned)(MMF_X_BOX_ROWS(rows) + (MMF_WQ ? 0 : MMF_TN)) * MMF_BK * 2;\n"
    "#endif\n"
    "#if MMF_TMA && MMF_WQ\n"
    "        {\n"
    "            /* packed w: every loader decodes its sets of each stage, the next (unit, k tile)'s\n"
    "             * records fetched before this one is decoded; thread 0 also brings x by TMA */\n"
    "            int st = 0;\n"
    "            unsigned ph = 0;\n"
    "            long u = blockIdx.x, m0 = 0, n0 = 0, kt = 0, kt0 = 0, kt1 = 0, z;\n"
    "            mmf_wq_raw cur, nxt;\n"
    "            if (u < units) {\n"
    "                mmf_unit(u, fused, gn, gm, m0, n0, kt0, kt1, z);\n"
    "                kt = kt0;\n"
    "                mmf_fetch_wq(cur, w_, n0, kt * MMF_BK, lt);\n"
    "            }\n"
    "            while (u < units) {\n"
    "                long u2 = u, m2 = m0, n2 = n0, k2 = kt + 1, k2end = kt1;\n"
    "                if (k2 >= kt1 && (u2 += gridDim.x) < units) mmf_unit(u2, fused, gn, gm, m2, n2, k2, k2end, z);\n"
    "                if (u2 < units) mmf_fetch_wq(nxt, w_, n2, k2 * MMF_BK, lt);\n"
    "                mmf_bar_wait(empty + 8 * st, ph ^ 1);\n"
    "                const unsigned sa = s0 + st * MMF_STAGE_BYTES;\n"
    "                if (lt == 0) {\n"
    "                    mmf_bar_expect(full + 8 * st, stage_bytes);\n"
    "                    mmf_tma_load(sa, &mmf_tx, (int)(kt * MMF_BK), (int)m0, full + 8 * st);\n"
    "                }\n"
    "                mmf_store_wq(sa + MMF_A_BYTES, cur, lt);\n"
    "                MMF_FENCE_STORES();   /* this thread's st.shared -> wgmma's reads (async proxy) */\n"
    "                mmf_bar_arrive(full + 8 * st);\n"
    "                if (++st == MMF_STAGES) st = 0, ph ^= 1;\n"
    "                u = u2, m0 = m2, n0 = n2, kt = k2, kt1 = k2end, cur = nxt;\n"
    "            }\n"
    "            MMF_CLUSTER_LEAVE();\n"
    "            return;\n"
    "        }\n"
    "#endif\n"
    "#if MMF_XSTAGE\n"
    "        float4 xr[MMF_ACH][2];\n"
    "#endif\n"
    "        int st = 0;\n"
    "        unsigned ph = 0;\n"
    "        for (long u = blockIdx.x; u < units; u += gridDim.x) {\n"
    "            long m0, n0, kt0, kt1, z;\n"
    "            mmf_unit(u, fused, gn, gm, m0, n0, kt0, kt1, z);\n"
    "            const int rvalid = rows - m0 < MMF_TM ? (int)(rows - m0) : MMF_TM;\n"
    "            const int rpad = (rvalid + 15) / 16 * 16;\n"
    "            (void)rpad;\n"
    "            for (long kt = kt0; kt < kt1; kt++) {\n"
    "                mmf_bar_wait(empty + 8 * st, ph ^ 1);\n"
    "                const unsigned sa = s0 + st * MMF_STAGE_BYTES;\n"
    "#if MMF_TMA\n"
    "                /* whole boxes land (rows past `rows`, columns past N as zeros), so the full\n"
    "                 * barrier waits for the stage's bytes (a prefetched stage expects them already) */\n"
    "#if !MMF_WQ\n"
    "                const bool fetched = u == blockIdx.x && kt - kt0 < pre;\n"
    "                if (!fetched) mmf_bar_expect(full + 8 * st, stage_bytes);\n"
    "                mmf_tma_load(sa, &mmf_tx, (int)(kt * MMF_BK), (int)m0, full + 8 * st);\n"
    "                if (!fetched) mmf_tma_load(sa + MMF_A_BYTES, &mmf_tw, (int)(kt * MMF_BK), (int)n0, full + 8 * st);\n"
    "#else\n"
    "                mmf_bar_expect(full + 8 * st, stage_bytes);\n"
    "                mmf_tma_load(sa, &mmf_tx, (int)(kt * MMF_BK), (int)m0, full + 8 * st);\n"
    "#endif\n"
    "#else\n"
    "#if MMF_XSTAGE\n"
    "                /* f32 x through registers (converted to bf16 on the way), fenced for wgmma\n"
    "                 * before this thread's w copies are issued: a proxy fence waits for every copy\n"
    "                 * the thread still has in flight, so it must not follow them */\n"
    "                mmf_fetch_x(xr, x_, m0, rvalid, kt * MMF_BK, lt);\n"
    "                mmf_store_x(sa, xr, rpad, lt);\n"
    "                MMF_FENCE_STORES();\n"
    "                mmf_load_w(sa + MMF_A_BYTES, w_, n0, kt * MMF_BK, lt);\n"
    "#else\n"
    "                mmf_load_w(sa + MMF_A_BYTES, w_, n0, kt * MMF_BK, lt);\n"
    "                mmf_load_x(sa, x_, m0, rvalid, rpad, kt * MMF_BK, lt);\n"
    "#if !MMF_VEC\n"
    "                MMF_FENCE_STORES();   /* element-wise loads: plain stores, no copies in flight */\n"
    "#endif\n"
    "#endif\n"
    "                mmf_bar_track_copies(full + 8 * st);\n"
    "                mmf_bar_arrive(full + 8 * st);\n"
    "#endif\n"
    "                if (++st == MMF_STAGES) st = 0, ph ^= 1;\n"
    "            }\n"
    "        }\n"
    "        MMF_CLUSTER_LEAVE();\n"
    "        return;\n"
    "    }\n"
    "\n"
    "    DI_GRID_ENTRY();\n"
    "    /* multiplying warps: warp wm owns rows [16 wm, 16 wm + 16) of the tile, all TN columns */\n"
    "    const int lane = tid & 31, wm = tid >> 5, wn = 0;\n"
    "    float c[MMF_MT][MMF_NT][4], sum[MMF_MT][MMF_NT][4];\n"
    "    int st = 0, prev = -1;\n"
    "    unsigned ph = 0;\n"
    "    for (long u = blockIdx.x; u < units; u += gridDim.x) {\n"
    "        long m0, n0, kt0, kt1, zsplit;\n"
    "        mmf_unit(u, fused, gn, gm, m0, n0, kt0, kt1, zsplit);\n"
    "        const int rvalid = rows - m0 < MMF_TM ? (int)(rows - m0) : MMF_TM;\n"
    "        const int rpad = (rvalid + 15) / 16 * 16;\n"
    "#if MMF_WGMMA\n"
    "        const bool busy = (wm / 4) * 64 < rpad;   /* its warpgroup's 64 rows hold a valid row */\n"
    "#else\n"
    "        const int mt_act = max(0, min((rpad - wm * MMF_WTM) / 16, (int)MMF_MT));\n"
    "#endif\n"
    "#pragma unroll\n"
    "        for (int i = 0; i < MMF_MT; i++)\n"
    "#pragma unroll\n"
    "            for (int j = 0; j < MMF_NT; j++)\n"
    "#pragma unroll\n"
    "                for (int e = 0; e < 4; e++) c[i][j][e] = sum[i][j][e] = 0.0f;\n"
    "        long left = tps;   /* k tiles left in the current split (fused mode) */\n"
    "        for (long kt = kt0; kt < kt1; kt++) {\n"
    "            mmf_bar_wait(full + 8 * st, ph);\n"
    "            const unsigned ca = s0 + st * MMF_STAGE_BYTES;\n"
    "#if MMF_WGMMA\n"
    "#if !MMF_TMA\n"
    "            asm volatile(\"fence.proxy.async.shared::cta;\\n\" ::: \"memory\");   /* cp.async -> wgmma */\n"
    "#endif\n"
    "            if (busy) {\n"
    "                mmf_wgmma_issue(c, ca, ca + MMF_A_BYTES, wm / 4);\n"
    "                mmf_wgmma_wait<1>(c);   /* the previous k tile's wgmma are done: its stage is free */\n"
    "            }\n"
    "            if (prev >= 0 && lane == 0) mmf_bar_arrive(empty + 8 * prev);\n"
    "#else\n"
    "            mmf_compute<MMF_MT>(c, ca, ca + MMF_A_BYTES, lane, wm, wn, mt_act);\n"
    "            __syncwarp();\n"
    "            if (lane == 0) mmf_bar_arrive(empty + 8 * st);\n"
    "#endif\n"
    "            if (fused && (--left == 0 || kt + 1 == kt1)) {\n"
    "                left = tps;\n"
    "                mmf_split_done(sum, c);\n"
    "            }\n"
    "            prev = st;\n"
    "            if (++st == MMF_STAGES) st = 0, ph ^= 1;\n"
    "        }\n"
    "#if MMF_WGMMA\n"
    "        mmf_wgmma_wait<0>(c);\n"
    "#endif\n"
;

static const char phase2_body[] =
    "    if (MMF_FUSED(rows)) return;   /* phase 1 already summed and stored */\n"
    "    const long mmf_r = blockIdx.y;\n"
    "    const long mmf_n = ((long)blockIdx.x * blockDim.x + threadIdx.x) * MMF_RV;\n"
    "    if (mmf_r >= rows || mmf_n >= N) return;\n"
    "    const float *mmf_p = ws + mmf_r * N + mmf_n;\n"
    "    const long mmf_stride = rows * N;\n"
    "    /* split partials in split order, from 0.0f */\n"
    "#if MMF_RV == 4\n"
    "    float4 mmf_a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);\n"
    "#pragma unroll 4\n"
    "    for (long sp = 0; sp < MMF_NSPLIT; sp++) {\n"
    "        const float4 v = *(const float4 *)(mmf_p + sp * mmf_stride);\n"
    "        mmf_a.x = __fadd_rn(mmf_a.x, v.x);\n"
    "        mmf_a.y = __fadd_rn(mmf_a.y, v.y);\n"
    "        mmf_a.z = __fadd_rn(mmf_a.z, v.z);\n"
    "        mmf_a.w = __fadd_rn(mmf_a.w, v.w);\n"
    "    }\n"
    "    MMF_EPILOGUE(mmf_r, mmf_n, mmf_a.x);\n"
    "    MMF_EPILOGUE(mmf_r, mmf_n + 1, mmf_a.y);\n"
    "    MMF_EPILOGUE(mmf_r, mmf_n + 2, mmf_a.z);\n"
    "    MMF_EPILOGUE(mmf_r, mmf_n + 3, mmf_a.w);\n"
    "#else\n"
    "    float mmf_a = 0.0f;\n"
    "#pragma unroll 4\n"
    "    for (long sp = 0; sp < MMF_NSPLIT; sp++) mmf_a = __fadd_rn(mmf_a, mmf_p[sp * mmf_stride]);\n"
    "    MMF_EPILOGUE(mmf_r, mmf_n, mmf_a);\n"
    "#endif\n";

/* Kernel parameters exactly as the exact lowering emits them, then the workspace. */
static void emit_params(di_str *o, const di_spec *s, const di_specialization *p)
{
    di_emit_params(o, s, p);
    di_str_puts(o, ", float *ws");
}

/* MMF_EPILOGUE(row, n, value): the spec's epilogue for one output, with every argument
 * row-sliced as the exact lowering slices it, `n` the column and `acc` the summed value. */
static void emit_epilogue(di_str *o, const di_spec *s, const di_specialization *p, const char *store)
{
    di_str_puts(o, "#define MMF_EPILOGUE(MMF_ROW, MMF_COL, MMF_VAL) do { \\\n"
                   "    const long mmf_er = (MMF_ROW), mmf_en = (MMF_COL); \\\n"
                   "    const float mmf_ev = (MMF_VAL); \\\n"
                   "    const long r = mmf_er; (void)r; \\\n");
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        const di_arg *a = &s->args[i];
        if (a->role == DI_ROLE_SCALAR) continue;
        char rowlen[256];
        const char *q = a->role == DI_ROLE_IN ? "const " : "";
        if (di_row_sliced(a, rowlen, sizeof rowlen))
            di_str_printf(o, "    %s%s *%s = %s_ + (long)(r) * (%s); (void)%s; \\\n", q, di_dtype_ctype(p->dtypes[i]),
                          a->name, a->name, rowlen, a->name);
        else
            di_str_printf(o, "    %s%s *%s = %s_; (void)%s; \\\n", q, di_dtype_ctype(p->dtypes[i]), a->name, a->name,
                          a->name);
    }
    di_str_puts(o, "    const long n = mmf_en; const float acc = mmf_ev; \\\n    y[n] = ");
    di_str_printf(o, "%s(", store);
    for (const char *c = s->body; *c; c++) di_str_printf(o, "%c", *c == '\n' ? ' ' : *c);
    di_str_puts(o, "); \\\n} while (0)\n\n");
}

/* The sm_90a main loop step: each warpgroup (4 warps) multiplies its 64 rows of the staged
 * [TM][BK] x tile by the [TN][BK] w tile with BK/16 wgmma.m64nTNk16, k16 steps in increasing
 * k, operands read from shared memory through descriptors. The staged tiles are K-major with
 * the 128-byte swizzle that mmf_off already writes (chunk c of row r at c ^ (r % 8), rows of
 * 128 bytes, 8-row atoms of 1024 bytes), so the descriptor is: start address, LBO 1 (unused
 * when a k16 step stays inside the swizzle atom), SBO 1024 bytes, swizzle mode 1 (128 B).
 * Accumulators: warp w holds rows 16w + g (+8) and, for n8 chunk j, columns 8j + 2q (+1), the
 * mma.sync C layout, so c[0][j][e] is the same element the epilogue expects with warps
 * (TM / 16) x 1. */
static void emit_wgmma_helpers(di_str *o, int tn)
{
    int nregs = tn / 2;
    di_str_puts(o, "\n#if MMF_WGMMA\n"
                   "DI_FN unsigned long long mmf_desc(unsigned addr)\n"
                   "{\n"
                   "    return (unsigned long long)((addr & 0x3ffffu) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);\n"
                   "}\n"
                   "DI_FN void mmf_fence_acc(float (&c)[MMF_MT][MMF_NT][4])\n"
                   "{\n"
                   "#pragma unroll\n"
                   "    for (int j = 0; j < MMF_NT; j++)\n"
                   "#pragma unroll\n"
                   "        for (int e = 0; e < 4; e++) asm volatile(\"\" : \"+f\"(c[0][j][e])::\"memory\");\n"
                   "}\n"
                   "DI_FN void mmf_wgmma(float (&c)[MMF_MT][MMF_NT][4], unsigned long long da, unsigned long long db)\n"
                   "{\n"
                   "    asm volatile(\"{\\n.reg .pred p;\\nsetp.ne.b32 p, 1, 0;\\n\"\n");
    di_str_printf(o, "                 \"wgmma.mma_async.sync.aligned.m64n%dk16.f32.bf16.bf16 {", tn);
    for (int i = 0; i < nregs; i++) di_str_printf(o, "%s%%%d", i ? ", " : "", i);
    di_str_printf(o, "}, %%%d, %%%d, p, 1, 1, 0, 0;\\n}\\n\"\n                 : ", nregs, nregs + 1);
    for (int i = 0; i < nregs; i++) di_str_printf(o, "%s\"+f\"(c[0][%d][%d])", i ? ", " : "", i / 4, i % 4);
    di_str_puts(o, "\n                 : \"l\"(da), \"l\"(db) : \"memory\");\n"
                   "}\n"
                   "/* warpgroup wg multiplies x rows [64 wg, 64 wg + 64) of the stage: one commit group */\n"
                   "DI_FN void mmf_wgmma_issue(float (&c)[MMF_MT][MMF_NT][4], unsigned sa, unsigned sb, int wg)\n"
                   "{\n"
                   "    sa += wg * (64 * MMF_BK * 2);\n"
                   "    mmf_fence_acc(c);\n"
                   "    asm volatile(\"wgmma.fence.sync.aligned;\\n\" ::: \"memory\");\n"
                   "#pragma unroll\n"
                   "    for (int kk = 0; kk < MMF_BK / 16; kk++) mmf_wgmma(c, mmf_desc(sa + kk * 32), mmf_desc(sb + kk * 32));\n"
                   "    asm volatile(\"wgmma.commit_group.sync.aligned;\\n\" ::: \"memory\");\n"
                   "    mmf_fence_acc(c);\n"
                   "}\n"
                   "/* at most P commit groups of this warpgroup still in flight */\n"
                   "template <int P> DI_FN void mmf_wgmma_wait(float (&c)[MMF_MT][MMF_NT][4])\n"
                   "{\n"
                   "    asm volatile(\"wgmma.wait_group.sync.aligned %0;\\n\" ::\"n\"(P) : \"memory\");\n"
                   "    mmf_fence_acc(c);\n"
                   "}\n"
                   "#endif\n");
}

/* ---- few rows: the outputs as wgmma's M (packed w) ------------------------------------------
 * At a handful of rows the tile above multiplies a 64-row wgmma per k16 step for one or a few
 * valid rows, and its producer warps decode each record into shared memory for the multiplying
 * warps to read back: at batch 1 on the 8B shape that ran at 0.44 TB/s. A launch of at most
 * few_rows rows of a packed-w kernel takes the swapped tile instead: a block is one warpgroup
 * owning 64 outputs and every row (rounded up to NR = 8, 16, 24 or 32), and each k16 step is one
 * wgmma.m64nNRk16 with w as the A operand, decoded from the records straight into the A
 * fragment registers (the same bf16 values as mmf_store_wq), and x as the B operand (TMA boxes
 * of NR rows, the same 128-byte swizzled rows). Records and x arrive by bulk asynchronous copies,
 * MMV_STAGES stages ahead, issued by a fifth warp that only loads: it refills a stage once the
 * four multiplying warps have each arrived on its empty barrier (their wgmma on it waited for), so
 * they never run the loads' instructions or wait on a block barrier (that was half of warp 0's
 * instructions a stage; perf/RESULTS.md "loading warp": 0.7-1.5 TB/s at M = 1, as bench_matmul counts).
 *
 * Why the bits are those of the large tile: a block takes the same K split z (KS from K and N),
 * walks its k16 steps in increasing k up to the split's last 64-k tile (zeros past K, both
 * operands), starting from 0.0f, with the same instruction on the same bf16 values; then the
 * partial goes to ws[z][rows][N] for phase 2 (one split: 0.0f + p, then the epilogue, as the
 * large tile's fused store). Only which operand holds which matrix changes; gpu_fast checks
 * every row count 1..few_rows against the large tile bitwise (packed_w_matmul_equals_bf16_w).
 *
 * A thread of warp q holds, per k16 step, outputs n0 + 16q + g and + 8 (g = lane / 4) at k
 * 2t, 2t + 1, 2t + 8, 2t + 9 (t = lane % 4): the A fragment layout. In a record those are
 * code word i = k / 8 (Q4X8; Q8X8: k / 4) of lane g, so a thread decodes nibbles 2t, 2t + 1 of
 * its words (bytes 2(t % 2), +1 of every other word for Q8X8). The high code of the pair is
 * taken in place, as 16 x code (256 x code): Q4X8 scales it back to the code in an exact fma
 * (x / 16 - 2^19), Q8X8 multiplies by d / 256, exact since d is 0 or at least 2^-24 in magnitude
 * (an f16 scale, times a 6-bit one for the K quants; pack.c checks it); either way the product,
 * and the fma's one rounding, are those of d * code. */
static const char few_helpers[] =
    "#define MMV_RPS (MMV_BKS / 32)                      /* records per output group per stage */\n"
    "/* every stage whole (K and the split size multiples of a stage): no record is past K, so the\n"
    " * decode takes no guard (the wgmma keep theirs: without those branches ptxas moves the decode\n"
    " * between the wgmma and then serializes them, its C7513) */\n"
    "#define MMV_WHOLE (K % MMV_BKS == 0 && MMF_KS % MMV_BKS == 0)\n"
    "static_assert(MMF_BK == 64, \"x boxes of 64 k (128-byte swizzled rows)\");\n"
    "DI_FN void mmv_bulk(unsigned dst, const void *src, unsigned bytes, unsigned bar)\n"
    "{\n"
    "    asm volatile(\"cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\\n\"\n"
    "                 ::\"r\"(dst), \"l\"(src), \"r\"(bytes), \"r\"(bar) : \"memory\");\n"
    "}\n"
    "/* weights (n, k = 32b + 8i + 2t, + 1), i = 0..3, of lane g of the record at r, as bf16x2 */\n"
    "DI_FN void mmv_decode(unsigned (&wv)[4], const unsigned char *r, int g, int t)\n"
    "{\n"
    "    const float d = mmf_scale(r, g), m = mmf_scale(r, 8 + g);\n"
    "#if MMF_WQ == 1\n"
    "#pragma unroll\n"
    "    for (int i = 0; i < 4; i++) {\n"
    "        const unsigned v = r[MMF_PK_Q + 32 * i + 4 * g + t];   /* byte t of the word: nibbles 2t, 2t + 1 */\n"
    "        const float lo = __uint_as_float(mmf_and_or(v, 15u, 0x4b000000u)) - 8388608.0f;\n"
    "        /* (2^23 + 16 code) / 16 - 2^19 = code, every step exact */\n"
    "        const float hi = __fmaf_rn(__uint_as_float(mmf_and_or(v, 240u, 0x4b000000u)), 0.0625f, -524288.0f);\n"
    "        wv[i] = mmf_bf16x2(__fmaf_rn(d, lo, m), __fmaf_rn(d, hi, m));\n"
    "    }\n"
    "#else\n"
    "    const float d_hi = d * 0.00390625f;   /* the high byte arrives as 256 x code */\n"
    "#pragma unroll\n"
    "    for (int i = 0; i < 4; i++) {\n"
    "        const unsigned v = *(const unsigned *)(r + MMF_PK_Q + 32 * (t / 2 + 2 * i) + 4 * g) >> (16 * (t & 1));\n"
    "        const float lo = __uint_as_float(mmf_and_xor(v, 255u, 0x4b000080u)) - 8388736.0f;\n"
    "        const float hi = __uint_as_float(mmf_and_xor(v, 65280u, 0x4b008000u)) - 8421376.0f;\n"
    "        wv[i] = mmf_bf16x2(__fmaf_rn(d, lo, m), __fmaf_rn(d_hi, hi, m));\n"
    "    }\n"
    "#endif\n"
    "}\n";

/* One k16 step of the swapped tile: D[64 outputs][nr rows] += A (registers) . B (descriptor). */
static void emit_few_wgmma(di_str *o, int nr)
{
    int nc = nr / 2;
    di_str_printf(o, "DI_FN void mmv_wgmma%d(float (&c)[%d], const unsigned *a, unsigned long long db)\n{\n", nr, nc);
    di_str_printf(o, "    asm volatile(\"{\\n.reg .pred p;\\nsetp.ne.b32 p, 1, 0;\\n\"\n"
                     "                 \"wgmma.mma_async.sync.aligned.m64n%dk16.f32.bf16.bf16 {", nr);
    for (int i = 0; i < nc; i++) di_str_printf(o, "%s%%%d", i ? ", " : "", i);
    di_str_printf(o, "}, {%%%d, %%%d, %%%d, %%%d}, %%%d, p, 1, 1, 0;\\n}\\n\"\n                 : ", nc, nc + 1, nc + 2,
                  nc + 3, nc + 4);
    for (int i = 0; i < nc; i++) di_str_printf(o, "%s\"+f\"(c[%d])", i ? ", " : "", i);
    di_str_puts(o, "\n                 : \"r\"(a[0]), \"r\"(a[1]), \"r\"(a[2]), \"r\"(a[3]), \"l\"(db) : \"memory\");\n}\n");
}

static const char few_body[] =
    "    extern __shared__ __align__(1024) unsigned char mmf_smem[];\n"
    "    const int tid = threadIdx.x, lane = tid & 31, g = lane >> 2, t = lane & 3;\n"
    "    const int wq = __shfl_sync(0xffffffffu, tid >> 5, 0);   /* warp-uniform, as ptxas must see it */\n"
    "    /* tile-major: a cluster's blocks are one tile's splits (rank z = split z) */\n"
    "    const long n0 = blockIdx.x / MMF_NSPLIT * 64, z = blockIdx.x % MMF_NSPLIT;\n"
    "    const long nkt = (K + MMF_BK - 1) / MMF_BK, kb = z * MMF_KS;\n"
    "    /* the split's k tiles, as the large tile walks them (the last one may run past K) */\n"
    "    const long ke = kb + MMF_KS < nkt * MMF_BK ? kb + MMF_KS : nkt * MMF_BK;\n"
    "    const int steps = (int)((ke - kb + MMV_BKS - 1) / MMV_BKS);\n"
    "    const long groups = (N + 7) / 8, g0 = n0 / 8;   /* output groups with records; the block's first */\n"
    "    const int gv = groups - g0 < 8 ? (int)(groups - g0) : 8;\n"
    "    const unsigned s0 = (unsigned)__cvta_generic_to_shared(mmf_smem);\n"
    "    const unsigned full = s0 + MMV_STAGES * MMV_STAGE_BYTES, empty = full + 8 * MMV_STAGES;\n"
    "    /* step i: k [kb + 128 i, +128) into stage i % STAGES: each group's records (load_w, with\n"
    "     * the stage's expected bytes), then x's boxes (load_x) */\n"
    "    auto load_w = [&](int i) {\n"
    "        const unsigned sa = s0 + (i % MMV_STAGES) * MMV_STAGE_BYTES, bar = full + 8 * (i % MMV_STAGES);\n"
    "        const long k0 = kb + (long)i * MMV_BKS;\n"
    "        const int boxes = (int)((ke - k0 < MMV_BKS ? ke - k0 : MMV_BKS) / MMF_BK);\n"
    "        const int recs = (K - k0) / 32 < MMV_RPS ? (int)((K - k0) / 32) : MMV_RPS;\n"
    "        mmf_bar_expect(bar, (unsigned)(boxes * MMV_NR * 128 + gv * recs * MMF_PK_REC));\n"
    "        for (int gi = 0; gi < gv; gi++)\n"
    "            mmv_bulk(sa + MMV_NR * MMV_BKS * 2 + gi * MMV_RPS * MMF_PK_REC,\n"
    "                     w_ + ((g0 + gi) * (K / 32) + k0 / 32) * MMF_PK_REC, (unsigned)(recs * MMF_PK_REC), bar);\n"
    "    };\n"
    "    auto load_x = [&](int i) {\n"
    "        const unsigned sa = s0 + (i % MMV_STAGES) * MMV_STAGE_BYTES, bar = full + 8 * (i % MMV_STAGES);\n"
    "        const long k0 = kb + (long)i * MMV_BKS;\n"
    "        const int boxes = (int)((ke - k0 < MMV_BKS ? ke - k0 : MMV_BKS) / MMF_BK);\n"
    "        for (int b = 0; b < boxes; b++) mmf_tma_load(sa + b * MMV_NR * 128, &mmf_tx, (int)(k0 + b * MMF_BK), 0, bar);\n"
    "    };\n"
    "    if (tid == 0) {\n"
    "        for (int st = 0; st < MMV_STAGES; st++) mmf_bar_init(full + 8 * st, 1), mmf_bar_init(empty + 8 * st, MMV_MMA_WARPS);\n"
    "        asm volatile(\"fence.mbarrier_init.release.cluster;\\n\" ::: \"memory\");\n"
    "    }\n"
    "    __syncthreads();\n"
    "    /* warp 4 only loads: stage i once the four multiplying warps are done with step i - STAGES,\n"
    "     * so that they never wait on each other or run the loads' instructions themselves */\n"
    "    if (wq == MMV_MMA_WARPS) {\n"
    "        if (lane == 0) {\n"
    "            /* the first stages' records before the wait (DI_GRID_ENTRY): no kernel writes\n"
    "             * weights, so they may stream while the kernel before this one still runs */\n"
    "            const int pre = steps < MMV_STAGES ? steps : MMV_STAGES;\n"
    "            for (int i = 0; i < pre; i++) load_w(i);\n"
    "            DI_GRID_ENTRY();\n"
    "            for (int i = 0; i < pre; i++) load_x(i);\n"
    "            for (int i = pre; i < steps; i++) {\n"
    "                mmf_bar_wait(empty + 8 * (i % MMV_STAGES), (unsigned)(i / MMV_STAGES - 1) & 1u);\n"
    "                load_w(i);\n"
    "                load_x(i);\n"
    "            }\n"
    "        }\n"
    "        MMF_CLUSTER_LEAVE();\n"
    "        return;\n"
    "    }\n"
    "    DI_GRID_ENTRY();\n"
    "    float c[MMV_NR / 2];\n"
    "#pragma unroll\n"
    "    for (int e = 0; e < MMV_NR / 2; e++) c[e] = 0.0f;\n"
    "    /* step i: decode its records into A (4 registers per k16 step), then its k16 steps */\n"
    "    auto step = [&](int i, unsigned (&a)[MMV_RPS * 8]) {\n"
    "        const int st = i % MMV_STAGES;\n"
    "        mmf_bar_wait(full + 8 * st, (unsigned)(i / MMV_STAGES) & 1u);\n"
    "        /* x's descriptor; a box or k16 further is its address field plus offset / 16 (shared\n"
    "         * addresses stay below 2^18, so the field never carries) */\n"
    "        const unsigned long long dx = mmf_desc(s0 + st * MMV_STAGE_BYTES);\n"
    "        const unsigned char *rec = mmf_smem + st * MMV_STAGE_BYTES + MMV_NR * MMV_BKS * 2;\n"
    "        const long k0 = kb + (long)i * MMV_BKS;\n"
    "        const int nk = (int)((ke - k0 < MMV_BKS ? ke - k0 : MMV_BKS) / 16);\n"
    "#pragma unroll\n"
    "        for (int b = 0; b < MMV_RPS; b++) {\n"
    "            /* groups past N decode whatever the stage holds: only their own outputs, never\n"
    "             * stored, see it (an output of wgmma depends on its own A row alone) */\n"
    "            unsigned wa[4] = {0u, 0u, 0u, 0u}, wb[4] = {0u, 0u, 0u, 0u};\n"
    "            if (MMV_WHOLE || k0 + 32 * b < K) {   /* past K: zeros, as the large tile's padding */\n"
    "                mmv_decode(wa, rec + (2 * wq * MMV_RPS + b) * MMF_PK_REC, g, t);\n"
    "                mmv_decode(wb, rec + ((2 * wq + 1) * MMV_RPS + b) * MMF_PK_REC, g, t);\n"
    "            }\n"
    "#pragma unroll\n"
    "            for (int h = 0; h < 2; h++) {\n"
    "                a[8 * b + 4 * h] = wa[2 * h], a[8 * b + 4 * h + 1] = wb[2 * h];\n"
    "                a[8 * b + 4 * h + 2] = wa[2 * h + 1], a[8 * b + 4 * h + 3] = wb[2 * h + 1];\n"
    "            }\n"
    "        }\n"
    "#pragma unroll\n"
    "        for (int e = 0; e < MMV_NR / 2; e++) asm volatile(\"\" : \"+f\"(c[e])::\"memory\");\n"
    "        asm volatile(\"wgmma.fence.sync.aligned;\\n\" ::: \"memory\");\n"
    "#pragma unroll\n"
    "        for (int kk = 0; kk < MMV_RPS * 2; kk++)\n"
    "            if (kk < nk) MMV_WGMMA(c, &a[4 * kk], dx + (kk / 4 * MMV_NR * 128 + kk % 4 * 32) / 16);\n"
    "        asm volatile(\"wgmma.commit_group.sync.aligned;\\n\" ::: \"memory\");\n"
    "        asm volatile(\"wgmma.wait_group.sync.aligned 1;\\n\" ::: \"memory\");   /* step i - 1 is done */\n"
    "#pragma unroll\n"
    "        for (int e = 0; e < MMV_NR / 2; e++) asm volatile(\"\" : \"+f\"(c[e])::\"memory\");\n"
    "        if (i >= 1 && lane == 0) mmf_bar_arrive(empty + 8 * ((i - 1) % MMV_STAGES));   /* its stage may refill */\n"
    "    };\n"
    "    unsigned a0[MMV_RPS * 8], a1[MMV_RPS * 8];   /* step i's A while step i - 1's wgmma may still read the other */\n"
    "    for (int i = 0; i < steps; i += 2) {\n"
    "        step(i, a0);\n"
    "        if (i + 1 < steps) step(i + 1, a1);\n"
    "    }\n"
    "    asm volatile(\"wgmma.wait_group.sync.aligned 0;\\n\" ::: \"memory\");\n"
    "#pragma unroll\n"
    "    for (int e = 0; e < MMV_NR / 2; e++) asm volatile(\"\" : \"+f\"(c[e])::\"memory\");\n"
    "    const bool clustered = MMF_NSPLIT > 1 && mmf_cluster_blocks() > 1;\n"
    "    /* c[4j + e]: output n0 + 16q + g (+8 for e >= 2), row 8j + 2t (+1 for odd e) */\n"
    "#pragma unroll\n"
    "    for (int j = 0; j < MMV_NR / 8; j++)\n"
    "#pragma unroll\n"
    "        for (int e = 0; e < 4; e++) {\n"
    "            const long rr = 8 * j + 2 * t + (e & 1), nn = n0 + 16 * wq + g + 8 * (e >> 1);\n"
    "            if (rr >= rows || nn >= N) continue;\n"
    "#if MMF_NSPLIT == 1\n"
    "            MMF_EPILOGUE(rr, nn, __fadd_rn(0.0f, c[4 * j + e]));\n"
    "#else\n"
    "            if (!clustered) ws[(z * rows + rr) * N + nn] = c[4 * j + e];\n"
    "#endif\n"
    "        }\n"
    "#if MMF_NSPLIT > 1\n"
    "    if (clustered) {\n"
    "        /* the tile's splits are this cluster: partials as [row][64], then this block (rank z)\n"
    "         * sums outputs o = 128 z + tid, + 128 NSPLIT, ... (mmf_cluster_sum, as phase 2 adds them) */\n"
    "        float *part = (float *)mmf_smem;\n"
    "        static_assert(MMV_NR * 64 * 4 <= MMV_STAGES * MMV_STAGE_BYTES, \"partials fit the stages\");\n"
    "        mmf_consumers_sync(32 * MMV_MMA_WARPS);\n"
    "#pragma unroll\n"
    "        for (int j = 0; j < MMV_NR / 8; j++)\n"
    "#pragma unroll\n"
    "            for (int e = 0; e < 4; e++)\n"
    "                if (8 * j + 2 * t + (e & 1) < rows) part[(8 * j + 2 * t + (e & 1)) * 64 + 16 * wq + g + 8 * (e >> 1)] = c[4 * j + e];\n"
    "        mmf_cluster_sync();\n"
    "        for (int o = 128 * (int)z + tid; o < (int)rows * 64; o += 128 * (int)MMF_NSPLIT)\n"
    "            if (n0 + o % 64 < N) MMF_EPILOGUE(o / 64, n0 + o % 64, mmf_cluster_sum(part + o));\n"
    "        mmf_cluster_sync();   /* the others have read this block's partials */\n"
    "    }\n"
    "#endif\n";

/* The few-rows entries, one per NR in 8, 16 .. few_rows (after phase 1 and phase 2). */
static void emit_few(di_str *o, const di_spec *s, const di_specialization *p, const di_mm_schedule *c, const char *name)
{
    di_str_printf(o, "\n/* few rows (swapped tile): at most NR rows, outputs as wgmma's M */\n#define MMV_STAGES %d\n"
                     "#define MMV_BKS %d   /* k per stage */\n#define MMV_MMA_WARPS %d\n%s",
                  c->few_stages, FEW_BK, FEW_MMA_WARPS, few_helpers);
    for (int nr = 8; nr <= c->few_rows; nr += 8) emit_few_wgmma(o, nr);
    for (int nr = 8; nr <= c->few_rows; nr += 8) {
        di_str_printf(o, "\n#define MMV_NR %d\n#define MMV_WGMMA mmv_wgmma%d\n#define MMV_STAGE_BYTES %ld\n"
                         "static_assert(MMV_STAGE_BYTES %% 1024 == 0, \"stages stay 1024-byte aligned (swizzle atoms)\");\n"
                         "extern \"C\" __global__ void __launch_bounds__(%d) %s_rows%d(", nr, nr,
                      few_stage_bytes(nr, p->dtypes[di_spec_arg(s, "w")]), FEW_THREADS, name, nr);
        emit_params(o, s, p);
        di_str_puts(o, ", const __grid_constant__ di_tmap mmf_tx)\n{\n");   /* it waits itself, after its w prefetch */
        di_str_puts(o, few_body);
        di_str_puts(o, "}\n#undef MMV_NR\n#undef MMV_WGMMA\n#undef MMV_STAGE_BYTES\n");
    }
}

static int fast_emit(di_str *o, const di_spec *s, const di_specialization *p, const di_target *t, const char *name,
                     di_err *err)
{
    kernel_shape ks;
    if (shape_of(s, p, t, &ks, err)) return err->code;
    if (!s->body || !*s->body) return di_fail(err, DI_ESPEC, "spec %s: matmul without an epilogue", s->name);
    const di_mm_schedule *c = &ks.c;
    bool x_f32 = p->dtypes[di_spec_arg(s, "x")] == DI_F32, y_bf16 = p->dtypes[di_spec_arg(s, "y")] == DI_BF16;
    long n = di_spec_dim(s, p, "N");
    di_dtype wt = p->dtypes[di_spec_arg(s, "w")];
    int wq = di_dtype_packed(wt) ? di_pack_code_bits(wt) / 4 : 0;

    di_str_printf(o, "/* fast matmul: tensor cores, one tile for every M, K split size fixed by K and N (codegen/matmul_fast.c) */\n"
                     "#define MMF_TM %d\n#define MMF_TN %d\n#define MMF_BK %d\n#define MMF_STAGES %d\n"
                     "#define MMF_WM %d\n#define MMF_WN %d\n#define MMF_THREADS %d\n"
                     "#define MMF_PRODUCERS %d   /* warps that only load (v4); 0: every warp loads */\n"
                     "#define MMF_CONSUMERS %d\n#define MMF_LOADERS %d\n"
                     "#define MMF_KS %ldL\n#define MMF_NSPLIT %ldL\n"
                     "#define MMF_FUSE_TILES %ldL\n#define MMF_FUSE_ROWS %ldL\n#define MMF_GROUP_M %d\n"
                     "#define MMF_X_F32 %d\n#define MMF_RV %d\n"
                     "/* wgmma is sm_90a's alone: other targets take the mma.sync loop with the same tile */\n"
                     "#if %d && defined(__CUDA_ARCH_FEAT_SM90_ALL)\n#define MMF_WGMMA 1\n#else\n"
                     "#define MMF_WGMMA 0\n#endif\n"
                     "/* phase 1 takes TMA descriptors of x and w; sm_90a loads through them */\n"
                     "#define MMF_TMAP %d\n#define MMF_TMA (MMF_TMAP && MMF_WGMMA)\n"
                     "/* w: 0 bf16 [N][K]; 1 or 2 packed records of 4- or 8-bit codes (mmf_store_wq) */\n"
                     "#define MMF_WQ %d\n#define MMF_WTMA (MMF_TMA && !MMF_WQ)\n"
                     "struct __align__(64) di_tmap { unsigned long long v[16]; };\n\n",
                  c->tm, c->tn, c->bk, c->stages, c->warps_m, c->warps_n, block_threads(c), c->producers,
                  consumer_threads(c), loader_threads(c), ks.ks, ks.nsplit, (long)c->fuse_min_tiles,
                  (long)c->fuse_min_rows, c->group_m, x_f32 ? 1 : 0, reduce_vec(n), c->wgmma ? 1 : 0, ks.tmaps ? 1 : 0, wq);
    di_str_puts(o, di_cuda_mma_helpers);
    di_str_puts(o, device_helpers);
    if (wq)
        di_str_printf(o, "#define MMF_PK_REC %zu   /* bytes per packed record */\n#define MMF_PK_HALF %d\n%s",
                      di_pack_record_bytes(wt), di_dtype_half_scales(wt) ? 1 : 0, wq_helpers);
    if (wq && c->few_rows)
        di_str_printf(o, "/* launches of at most %d rows run the few-rows tile, whose split sums phase 2 always adds */\n"
                         "#undef MMF_FUSED\n#define MMF_FUSED(rows) ((rows) > %d && (MMF_NSPLIT == 1 || (MMF_FUSE_TILES > 0 && \\\n"
                         "                         (rows) >= MMF_FUSE_ROWS && MMF_TILES(rows) >= MMF_FUSE_TILES)))\n",
                      c->few_rows, c->few_rows);
    if (c->wgmma) emit_wgmma_helpers(o, c->tn);
    di_str_puts(o, split_helper);
    if (c->producers) di_str_puts(o, ws_helpers);
    di_str_puts(o, "\n");
    emit_epilogue(o, s, p, y_bf16 ? "di_f32_to_bf16" : "");

    di_str_printf(o, "/* phase 1: per-split partials (split mode) or the whole sum (fused mode) */\n"
                     "extern \"C\" __global__ void __launch_bounds__(MMF_THREADS, 1) %s(", name);
    emit_params(o, s, p);
    if (ks.tmaps) di_str_puts(o, ", const __grid_constant__ di_tmap mmf_tx");
    if (ks.tmaps && !wq) di_str_puts(o, ", const __grid_constant__ di_tmap mmf_tw");
    /* the warp-specialized body waits for the kernel before it itself (after its w prefetch) */
    di_str_puts(o, c->producers ? ")\n{\n" : DI_CUDA_ENTRY_OPEN);
    di_str_puts(o, c->producers ? phase1_ws_body : phase1_body);
    di_str_puts(o, phase1_store);
    if (c->producers) di_str_puts(o, "    }   /* next unit */\n");
    di_str_puts(o, "}\n\n");

    di_str_printf(o, "/* phase 2: partials added in split order from 0.0f, then the epilogue */\n"
                     "extern \"C\" __global__ void __launch_bounds__(%d) %s_reduce(", REDUCE_THREADS, name);
    emit_params(o, s, p);
    di_str_puts(o, DI_CUDA_ENTRY_OPEN);
    di_str_puts(o, phase2_body);
    di_str_puts(o, "}\n");
    if (wq && c->few_rows) emit_few(o, s, p, c, name);
    return DI_OK;
}

/* Phase 1: the spec's parameters, the workspace, then (TMA) the two descriptors; phase 2: the
 * spec's parameters and the workspace. */
static int fast_entries(const di_spec *s, const di_specialization *p, const di_target *t, di_entry *out, di_err *err)
{
    kernel_shape ks;
    if (shape_of(s, p, t, &ks, err)) return -1;
    di_kernel_name(s, p, t, out[0].name, sizeof out[0].name);
    snprintf(out[1].name, sizeof out[1].name, "%.240s_reduce", out[0].name);
    for (int i = 0; i < 2; i++) {
        di_entry_spec_params(s, &out[i]);
        out[i].params[out[i].nparams++] = DI_P_PTR;
    }
    if (ks.tmaps) {
        out[0].params[out[0].nparams++] = DI_P_TMAP;
        if (!w_packed(s, p)) out[0].params[out[0].nparams++] = DI_P_TMAP;
    }
    if (!w_packed(s, p) || !ks.c.few_rows) return 2;
    /* the few-rows entries: the spec's parameters, the workspace, x's TMA descriptor */
    int n = 2;
    for (int nr = 8; nr <= ks.c.few_rows; nr += 8, n++) {
        snprintf(out[n].name, sizeof out[n].name, "%.240s_rows%d", out[0].name, nr);
        di_entry_spec_params(s, &out[n]);
        out[n].params[out[n].nparams++] = DI_P_PTR;
        out[n].params[out[n].nparams++] = DI_P_TMAP;
    }
    return n;
}

const di_lowering di_lowering_matmul_fast = {
    .name = "matmul_fast", .applies = fast_applies, .emit = fast_emit, .entries = fast_entries, .plan = fast_plan,
};

/* ---- f32 x through the bf16-x kernel ---------------------------------------------------------
 * Where the bf16-x kernel loads by TMA, an f32-x matmul first rounds x to bf16 (the cast_bf16
 * spec, round to nearest even, as the kernel itself would on the way into shared memory), then
 * runs that kernel on the rounded copy in its workspace. Same products, same order, same bits;
 * TMA cannot convert, and the f32 path's register staging is slower. */

static bool bf16x_of(const di_spec *s, const di_specialization *p, di_specialization *b)
{
    int ix = di_spec_arg(s, "x");
    *b = *p;
    b->dtypes[ix] = DI_BF16;
    return ix >= 0 && p->dtypes[ix] == DI_F32;
}

static bool f32x_applies(const di_spec *s, const di_specialization *p, const di_target *t)
{
    di_specialization b;
    if (!fast_applies(s, p, t) || !bf16x_of(s, p, &b)) return false;
    di_mm_schedule c = di_mm_schedule_of(&b, t);
    return tensor_maps(s, &b, &c);
}

static int no_entries(const di_spec *s, const di_specialization *p, const di_target *t, di_entry *out, di_err *err)
{
    (void)s, (void)p, (void)t, (void)out, (void)err;
    return 0;
}

/* cast_bf16 over K, then this spec with bf16 x */
static int f32x_deps(const di_spec *s, const di_specialization *p, const di_target *t, di_dep *out, di_err *err)
{
    (void)t;
    const di_spec *cs = &di_specs[DI_OP_cast_bf16];
    out[0].spec = cs;
    di_spec_defaults(cs, &out[0].sp);
    if (di_spec_set_dim(cs, &out[0].sp, "D", di_spec_dim(s, p, "K"), err)) return -1;
    out[1].spec = s;
    bf16x_of(s, p, &out[1].sp);
    return 2;
}

static int f32x_plan(const di_spec *s, const di_specialization *p, const di_target *t, const long *sizes, di_plan *pl,
                     di_err *err)
{
    long rows = sizes[0];
    char name[256];
    di_kernel_name(s, p, t, name, sizeof name);
    /* the row count checked before anything runs */
    if (rows < 0 || rows > 65535) return di_fail(err, DI_EUSAGE, "kernel %s: %ld rows (must be 0..65535)", name, rows);
    memset(pl, 0, sizeof *pl);
    pl->workspace = (size_t)rows * (size_t)di_spec_dim(s, p, "K") * 2;
    if (rows == 0) return DI_OK;
    int ix = di_spec_arg(s, "x");
    di_launch *c = &pl->l[pl->n++];
    c->run = DI_RUN_DEP;
    c->index = 0;
    di_launch_add(c, DI_A_WS, 0, 0, 0);       /* y: the rounded copy */
    di_launch_add(c, DI_A_ARG, ix, 0, 0);     /* x */
    di_launch_add(c, DI_A_SIZE, 0, 0, 0);     /* rows */
    di_launch *m = &pl->l[pl->n++];
    m->run = DI_RUN_DEP;
    m->index = 1;
    di_launch_spec_args(s, m);
    m->args[ix] = (di_pa){.kind = DI_A_WS};
    return DI_OK;
}

const di_lowering di_lowering_matmul_fast_f32x = {
    .name = "matmul_fast_f32x", .applies = f32x_applies, .entries = no_entries, .deps = f32x_deps, .plan = f32x_plan,
};
