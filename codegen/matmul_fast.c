/* The fast profile's matmul on the GPU: y[rows, N] = x[rows, K] . w[N, K]^T (+ epilogue) on
 * tensor cores, batch invariant by construction.
 *
 * ---- Design notes -------------------------------------------------------------------------
 *
 * Tile. One configuration per kernel for every row count (defaults below,
 * di_matmul_fast_config): a block owns TM x TN = 128 x 128 output tiles, or 128 x 256 in a
 * kernel with one K split that loads by TMA (kernel_config); each k16 step of a k tile
 * (BK = 64) is one sm_90a wgmma.m64n{TN}k16 (bf16 in, f32 accumulate) per 64-row warpgroup,
 * both operands read from shared memory through descriptors (see emit_wgmma_helpers).
 * Stages hold [TM][BK] of x and [TN][BK] of w as 128-byte rows whose 16-byte chunk c of row r
 * sits at c ^ (r % 8): the 128-byte swizzle that wgmma reads and TMA writes, free of bank
 * conflicts for ldmatrix.x4.
 *
 * The main loop, as numbered versions (each still a config; perf/RESULTS.md has them side by
 * side, measured on the H200 on 2026-11-30):
 *  - v2 (wgmma = 0): mma.sync.m16n8k16 fed by ldmatrix, 64 x 128 tiles, warps 1 x 4; every
 *    warp loads (cp.async) and multiplies, one block-wide barrier per k tile.
 *  - v3 (producers = 0): the same block, one warpgroup issuing wgmma.
 *  - v4 (producers > 0, tma = 0): warp-specialized. Producer warps only load (cp.async, f32 x
 *    through registers and converted with cvt.rn), two warpgroups only multiply; stages are
 *    handed over by a full and an empty mbarrier each (phase1_ws_body), and blocks are
 *    persistent: one per SM, each walking work units (below) with one pipeline that runs
 *    ahead across units. v2-v4 all run near 280 TFLOP/s at large M: with the multiplies
 *    removed, v4's loads alone ran at the same ~42 GB/s per SM, so cp.async loading, not the
 *    barriers or the tile, was the limit.
 *  - v5 (default, tma = 1, bf16 x, K % 8 == 0, sm_90a): one producer thread loads each stage
 *    with two TMA tensor copies (x and w boxes, 128-byte swizzle, out-of-range rows and
 *    columns arriving as zeros) that complete on the stage's full barrier: 470-600 TFLOP/s at
 *    large M. Below one tile of rows the x box shrinks to the 16-row fragments that hold rows
 *    (MMF_X_BOX_ROWS), which is what brings M <= 32 to 0.8-0.9x cuBLAS. f32 x reaches v5
 *    through the runtime: a cast kernel rounds it to bf16 first (round to nearest even, what
 *    the kernel would do on the way into shared memory, so the same bits).
 * Targets other than sm_90a compile the same block with the mma.sync step (no wgmma, no TMA).
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
 * Knobs for tuning live in di_matmul_fast_config (perf/bench_matmul takes them as flags). */
#include "codegen/matmul_fast.h"
#include "codegen/lower.h"
#include <stdio.h>
#include <string.h>

/* ---- configuration ------------------------------------------------------------------- */

static const di_matmul_fast_config default_config = {
    .tm = 128, .tn = 128, .bk = 64, .stages = 6, .warps_m = 8, .warps_n = 1,
    .ks_min = 256, .ks_max = 65536, .fuse_min_tiles = 96, .fuse_min_rows = 32, .group_m = 8, .wgmma = 1,
    .producers = 4, .tma = 1, .wide_tn = 256, .wide_stages = 4,
};
static di_matmul_fast_config config = default_config;
static long sm_count = 132;   /* persistent grid size; the CUDA runtime sets the device's */

void di_matmul_fast_set_sm_count(int sms)
{
    if (sms > 0) sm_count = sms;
}

int di_matmul_fast_sm_count(void) { return (int)sm_count; }

/* v2's block: mma.sync, 64 x 128, every warp loads, 96 KiB of shared memory (fits sm_80/sm_89) */
static const di_matmul_fast_config mma_sync_config = {
    .tm = 64, .tn = 128, .bk = 64, .stages = 4, .warps_m = 1, .warps_n = 4,
    .ks_min = 256, .ks_max = 65536, .fuse_min_tiles = 128, .fuse_min_rows = 64, .group_m = 8, .wgmma = 0,
    .producers = 0, .tma = 0,
};

void di_matmul_fast_set_target(const char *arch)
{
    /* the default needs sm_90a (wgmma, TMA, 192 KiB of shared memory); elsewhere the default
     * is v2's block, the one run on a GPU without them (as a config, on the H100 and H200) */
    bool hopper = arch && !strcmp(arch, "sm_90a");
    if (!hopper && !memcmp(&config, &default_config, sizeof config)) config = mma_sync_config;
}

const di_matmul_fast_config *di_matmul_fast_get_config(void) { return &config; }

static bool pow2(long v) { return v > 0 && (v & (v - 1)) == 0; }

/* the stages, then (warp-specialized) a full and an empty mbarrier per stage */
static long smem_bytes(const di_matmul_fast_config *c)
{
    return (long)c->stages * (c->tm + c->tn) * c->bk * 2 + (c->producers ? c->stages * 16L : 0);
}
static int consumer_threads(const di_matmul_fast_config *c) { return c->warps_m * c->warps_n * 32; }
static int block_threads(const di_matmul_fast_config *c) { return consumer_threads(c) + c->producers * 32; }
static int loader_threads(const di_matmul_fast_config *c) { return c->producers ? c->producers * 32 : block_threads(c); }

int di_matmul_fast_set_config(const di_matmul_fast_config *c, di_err *err)
{
    if (!c) {
        config = default_config;
        return DI_OK;
    }
    long threads = (long)c->warps_m * c->warps_n * 32, loaders = c->producers ? c->producers * 32L : threads;
    const char *why = NULL;
    if (c->warps_m < 1 || c->warps_n < 1 || threads > 1024) why = "warps_m * warps_n * 32 must be 32..1024";
    else if (c->producers < 0 || c->producers > 8) why = "producers must be 0..8 warps";
    else if (c->tm <= 0 || c->tm % (c->warps_m * 16)) why = "tm must be a multiple of 16 * warps_m";
    else if (c->tn <= 0 || c->tn % (c->warps_n * 16)) why = "tn must be a multiple of 16 * warps_n";
    else if (c->bk < 16 || c->bk > 128 || !pow2(c->bk)) why = "bk must be 16, 32, 64 or 128";
    else if (c->stages < 2 || c->stages > 8) why = "stages must be 2..8";
    else if ((long)c->tm * (c->bk / 8) % loaders || (long)c->tn * (c->bk / 8) % loaders)
        why = "tm * bk / 8 and tn * bk / 8 must be multiples of the loading thread count";
    else if (!pow2(c->ks_min) || !pow2(c->ks_max) || c->ks_min < c->bk || c->ks_max < c->ks_min)
        why = "ks_min <= ks_max must be powers of two, at least bk";
    else if (smem_bytes(c) > 227L * 1024) why = "stages * (tm + tn) * bk * 2 bytes exceed 227 KiB of shared memory";
    else if (c->fuse_min_tiles < 0 || c->fuse_min_rows < 0 || c->group_m < 1)
        why = "fuse_min_tiles, fuse_min_rows must be >= 0 and group_m >= 1";
    else if (c->wgmma && c->stages < 4)
        why = "wgmma needs stages >= 4 (two tiles load while one is multiplied and one may still be; "
              "fewer is untested)";
    else if (c->wgmma && ((c->tm != 64 && c->tm != 128) || c->warps_m != c->tm / 16 || c->warps_n != 1 ||
                          c->bk != 64 || c->tn > 256))
        why = "wgmma needs tm 64 or 128 with warps (tm / 16) x 1 (a warpgroup per 64 rows), bk 64 "
              "(128-byte swizzled rows) and tn <= 256";
    else if (c->producers && (!c->wgmma || c->warps_n != 1))
        why = "producer warps need the wgmma layout (warps (tm / 16) x 1)";
    else if (c->tma && !c->producers) why = "tma loads need producer warps";
    else if (c->wide_tn && (c->wide_tn % 16 || c->wide_tn > 256 || c->wide_stages < 4 || c->wide_stages > 8 ||
                            (long)c->wide_stages * (c->tm + c->wide_tn) * c->bk * 2 > 227L * 1024))
        why = "wide_tn must be a multiple of 16 up to 256, with wide_stages 4..8 that fit 227 KiB "
              "(it applies to TMA-loading kernels only)";
    if (why) return di_fail(err, DI_EUSAGE, "fast matmul config (tm %d tn %d bk %d stages %d warps %dx%d): %s", c->tm,
                            c->tn, c->bk, c->stages, c->warps_m, c->warps_n, why);
    config = *c;
    return DI_OK;
}

/* ---- when this path applies ---------------------------------------------------------- */

static int arg_index(const di_spec *s, const char *name)
{
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++)
        if (!strcmp(s->args[i].name, name)) return i;
    return -1;
}

bool di_matmul_fast_applies(const di_spec *s, const di_specialization *p, di_backend_kind b)
{
    if (s->cls != DI_MATMUL || b != DI_BACKEND_CUDA || p->profile != DI_PROFILE_FAST) return false;
    int y = arg_index(s, "y"), x = arg_index(s, "x"), w = arg_index(s, "w");
    if (y < 0 || x < 0 || w < 0 || !s->sizes[0] || strcmp(s->sizes[0], "rows")) return false;
    if (s->args[y].role != DI_ROLE_OUT || s->args[x].role != DI_ROLE_IN || s->args[w].role != DI_ROLE_IN) return false;
    if (di_spec_dim(s, p, "K") <= 0 || di_spec_dim(s, p, "N") <= 0) return false;
    return p->dtypes[w] == DI_BF16 && p->dtypes[x] != DI_I32 && p->dtypes[y] != DI_I32;
}

/* ---- the plan for a row count -------------------------------------------------------- */

static long ceil_div(long a, long b) { return (a + b - 1) / b; }

/* KS from K and N (never from rows): the fewest splits that still give a batch of one row
 * about SPLIT_UNITS work units (column tiles x splits), enough to stream w from every SM, as
 * the smallest power of two that cuts K into that many, clamped to [ks_min, ks_max]. Fewer
 * splits mean less workspace traffic and fewer pipeline drains at every M; more would not
 * make M = 1 faster (measured on the H200, perf/RESULTS.md section 000). A constant, not the
 * GPU's SM count, so that the bits do not depend on how many SMs a part has. */
enum { SPLIT_UNITS = 128 };
static long split_size(long k, long n)
{
    long want = ceil_div(SPLIT_UNITS, ceil_div(n, config.tn)), ks = 1;
    while (ks < ceil_div(k, want)) ks *= 2;
    if (ks < config.ks_min) ks = config.ks_min;
    if (ks > config.ks_max) ks = config.ks_max;
    return ks;
}

/* The config a kernel is built with: the process-wide one, except that a single-split kernel
 * loading by TMA (one in-order chain per output, summed into nothing: no second accumulator
 * array) takes the wide tile, a warpgroup's 64 x wide_tn outputs from one wgmma.m64n256k16
 * per k16 step, half the x traffic per flop of 128-wide tiles (as cuBLAS's 128 x 256). Per
 * kernel, from its K, N and x type only: every row count of a kernel runs the same tile.
 * (f32 x reaches such kernels through the bf16 cast; the cp.async loaders of f32 x would
 * need registers the wide tile does not leave.) */
static di_matmul_fast_config kernel_config(const di_spec *s, const di_specialization *p, long nsplit)
{
    di_matmul_fast_config c = config;
    if (c.wide_tn && nsplit == 1 && di_matmul_fast_tensor_maps(s, p)) {
        c.tn = c.wide_tn;
        c.stages = c.wide_stages;
    }
    return c;
}

long di_matmul_fast_tile_cols(const di_spec *s, const di_specialization *p)
{
    long k = di_spec_dim(s, p, "K");
    return kernel_config(s, p, ceil_div(k, split_size(k, di_spec_dim(s, p, "N")))).tn;
}

/* The plan for `rows` and the config of the kernel it runs (both from one split size). */
static int plan(const di_spec *s, const di_specialization *p, long rows, di_matmul_fast_plan *pl,
                di_matmul_fast_config *kc, di_err *err)
{
    if (!di_matmul_fast_applies(s, p, DI_BACKEND_CUDA))
        return di_fail(err, DI_ESPEC, "spec %s: not a fast-profile bf16-weight matmul", s->name);
    if (rows < 0 || rows > 65535)
        return di_fail(err, DI_EUSAGE, "kernel %s: %ld rows (must be 0..65535)", s->name, rows);
    long k = di_spec_dim(s, p, "K"), n = di_spec_dim(s, p, "N");
    pl->ks = split_size(k, n);
    pl->nsplit = ceil_div(k, pl->ks);
    if (pl->nsplit > 65535)
        return di_fail(err, DI_ESPEC, "spec %s: K = %ld gives %ld splits of %ld (grid z is at most 65535)", s->name, k,
                       pl->nsplit, pl->ks);
    *kc = kernel_config(s, p, pl->nsplit);
    pl->tiles = ceil_div(rows, kc->tm) * ceil_div(n, kc->tn);
    pl->fused = pl->nsplit == 1 ||
                (config.fuse_min_tiles > 0 && rows >= config.fuse_min_rows && pl->tiles >= config.fuse_min_tiles);
    pl->units = pl->fused ? pl->tiles : pl->tiles * pl->nsplit;
    return DI_OK;
}

int di_matmul_fast_plan_for(const di_spec *s, const di_specialization *p, long rows, di_matmul_fast_plan *pl,
                            di_err *err)
{
    di_matmul_fast_config kc;
    return plan(s, p, rows, pl, &kc, err);
}

bool di_matmul_fast_tensor_maps(const di_spec *s, const di_specialization *p)
{
    return config.tma && config.producers && di_matmul_fast_applies(s, p, DI_BACKEND_CUDA) &&
           p->dtypes[arg_index(s, "x")] == DI_BF16 && di_spec_dim(s, p, "K") % 8 == 0;
}

long di_matmul_fast_x_box_rows(long rows)
{
    return rows < config.tm ? (rows + 15) / 16 * 16 : config.tm;   /* as MMF_X_BOX_ROWS in the kernel */
}

static int reduce_vec(long n) { return n % 4 == 0 ? 4 : 1; }
enum { REDUCE_THREADS = 256 };

int di_geometry_matmul_fast(const di_spec *s, const di_specialization *p, long rows, di_geometry g[2],
                            size_t *workspace_bytes, di_err *err)
{
    di_matmul_fast_plan pl;
    di_matmul_fast_config kc;
    if (plan(s, p, rows, &pl, &kc, err)) return err->code;
    long n = di_spec_dim(s, p, "N");
    memset(g, 0, 2 * sizeof *g);
    if (kc.producers) {
        /* persistent: one block per SM (the stages fill its shared memory), each walking units */
        g[0].grid[0] = (unsigned)(pl.units < sm_count ? pl.units : sm_count);
        g[0].grid[1] = g[0].grid[2] = 1;
    } else {
        g[0].grid[0] = (unsigned)ceil_div(n, kc.tn);
        g[0].grid[1] = (unsigned)ceil_div(rows, kc.tm);
        g[0].grid[2] = pl.fused ? 1 : (unsigned)pl.nsplit;
    }
    g[0].block[0] = (unsigned)block_threads(&kc);
    g[0].block[1] = g[0].block[2] = 1;
    g[0].smem = (unsigned)smem_bytes(&kc);
    g[1].block[0] = REDUCE_THREADS;
    g[1].block[1] = g[1].block[2] = 1;
    /* phase 2 only in split mode (fused: no blocks, not launched) */
    g[1].grid[0] = pl.fused ? 0 : (unsigned)ceil_div(n, (long)REDUCE_THREADS * reduce_vec(n));
    g[1].grid[1] = pl.fused ? 0 : (unsigned)rows;
    g[1].grid[2] = 1;
    *workspace_bytes = pl.fused ? 0 : (size_t)pl.nsplit * (size_t)rows * (size_t)n * sizeof(float);
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

/* Fused mode, a split is complete: once its wgmma are done, it joins the running sum
 * (0.0f + p0 + p1 ..., as phase 2 adds them), and the next split's chain starts from 0.
 * With one split the sum is 0.0f + p0, formed at the store (MMF_SUM): no second accumulator
 * array, so a warpgroup can hold 64 x 256 outputs (the wide tile, see kernel_config). */
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
    "#if MMF_WGMMA\n"
    "        asm volatile(\"fence.proxy.async.shared::cta;\\n\" ::: \"memory\");   /* visible to wgmma's reads */\n"
    "#endif\n"
    "        /* everyone's have; everyone is done with the stage loaded next (tile kt - 1's with\n"
    "         * mma.sync; with wgmma tile kt - 2's, whose wgmma every warpgroup waited for) */\n"
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
    "#if MMF_WGMMA\n"
    "        /* tile kt's wgmma stay in flight while the next tiles load; tile kt - 1's are done\n"
    "         * after the wait, so the stage loaded next iteration (tile kt - 1's) is free */\n"
    "        mmf_wgmma_issue(c, ca, ca + MMF_A_BYTES, warp / 4);\n"
    "        mmf_wgmma_wait<1>(c);\n"
    "#else\n"
    "        mmf_compute<MMF_MT>(c, ca, ca + MMF_A_BYTES, lane, wm, wn, mt_act);\n"
    "#endif\n"
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
    "    mmf_wait<0>();\n"
    "#if MMF_WGMMA\n"
    "    mmf_wgmma_wait<0>(c);\n"
    "#endif\n";

/* After either main loop: c (split mode) or sum (fused mode) to memory. */
static const char phase1_store[] =
    "\n"
    "    /* fragment element e of (i, j): row g (+8 for e >= 2), columns 2q, 2q + 1 */\n"
    "    const int g = lane >> 2, q = lane & 3;\n"
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
    "/* Work unit u of a persistent block: a tile and (split mode) one K split of it, split-major\n"
    " * (u = split * tiles + tile), tiles in the grouped raster: GROUP_M row tiles side by side, so\n"
    " * units that run together share slices of x and w in L2. Which block runs a unit, and after\n"
    " * which other units, never changes its arithmetic. */\n"
    "DI_FN void mmf_unit(long u, bool fused, long gn, long gm, long tiles, long &m0, long &n0, long &kt0, long &kt1,\n"
    "                    long &z)\n"
    "{\n"
    "    const long nkt = (K + MMF_BK - 1) / MMF_BK, tps = MMF_KS / MMF_BK;\n"
    "    z = fused ? 0 : u / tiles;\n"
    "    const long pid = fused ? u : u % tiles;\n"
    "    const long span = (long)MMF_GROUP_M * gn, fm = pid / span * MMF_GROUP_M;\n"
    "    const long gs = gm - fm < MMF_GROUP_M ? gm - fm : MMF_GROUP_M;\n"
    "    m0 = (fm + pid % span % gs) * MMF_TM;\n"
    "    n0 = pid % span / gs * MMF_TN;\n"
    "    kt0 = fused ? 0 : z * tps;\n"
    "    kt1 = fused ? nkt : (kt0 + tps < nkt ? kt0 + tps : nkt);\n"
    "}\n"
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
    "            mmf_bar_init(full + 8 * st, MMF_TMA ? 1 : 2 * MMF_LOADERS);   /* cp.async: two arrivals a loader */\n"
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
    "        /* loaders: the block's units in order, k tile after k tile into stage after stage,\n"
    "         * each stage once its last readers are done (so they run ahead across units) */\n"
    "        const int lt = tid - MMF_CONSUMERS;\n"
    "#if MMF_TMA\n"
    "        if (lt != 0) return;   /* one thread: two tensor copies per stage */\n"
    "        /* x boxes are MMF_X_BOX_ROWS(rows) tall (the runtime encodes the same): below one tile\n"
    "         * of rows, only the 16-row fragments that hold rows are fetched */\n"
    "        const unsigned stage_bytes = (unsigned)(MMF_X_BOX_ROWS(rows) + MMF_TN) * MMF_BK * 2;\n"
    "#endif\n"
    "#if MMF_XSTAGE\n"
    "        float4 xr[MMF_ACH][2];\n"
    "#endif\n"
    "        int st = 0;\n"
    "        unsigned ph = 0;\n"
    "        for (long u = blockIdx.x; u < units; u += gridDim.x) {\n"
    "            long m0, n0, kt0, kt1, z;\n"
    "            mmf_unit(u, fused, gn, gm, tiles, m0, n0, kt0, kt1, z);\n"
    "            const int rvalid = rows - m0 < MMF_TM ? (int)(rows - m0) : MMF_TM;\n"
    "            const int rpad = (rvalid + 15) / 16 * 16;\n"
    "            (void)rpad;\n"
    "            for (long kt = kt0; kt < kt1; kt++) {\n"
    "                mmf_bar_wait(empty + 8 * st, ph ^ 1);\n"
    "                const unsigned sa = s0 + st * MMF_STAGE_BYTES;\n"
    "#if MMF_TMA\n"
    "                /* whole boxes land (rows past `rows`, columns past N as zeros), so the full\n"
    "                 * barrier waits for the stage's bytes */\n"
    "                mmf_bar_expect(full + 8 * st, stage_bytes);\n"
    "                mmf_tma_load(sa, &mmf_tx, (int)(kt * MMF_BK), (int)m0, full + 8 * st);\n"
    "                mmf_tma_load(sa + MMF_A_BYTES, &mmf_tw, (int)(kt * MMF_BK), (int)n0, full + 8 * st);\n"
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
    "        return;\n"
    "    }\n"
    "\n"
    "    /* multiplying warps: warp wm owns rows [16 wm, 16 wm + 16) of the tile, all TN columns */\n"
    "    const int lane = tid & 31, wm = tid >> 5, wn = 0;\n"
    "    float c[MMF_MT][MMF_NT][4], sum[MMF_MT][MMF_NT][4];\n"
    "    int st = 0, prev = -1;\n"
    "    unsigned ph = 0;\n"
    "    for (long u = blockIdx.x; u < units; u += gridDim.x) {\n"
    "        long m0, n0, kt0, kt1, zsplit;\n"
    "        mmf_unit(u, fused, gn, gm, tiles, m0, n0, kt0, kt1, zsplit);\n"
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

/* "rows, NH + 2 * NKV, HD" -> "(NH + 2 * NKV) * (HD)"; true when led by "rows" (as lower.c). */
static bool row_sliced(const di_arg *a, char *rowlen, size_t len)
{
    const char *comma = strchr(a->shape, ',');
    size_t lead = comma ? (size_t)(comma - a->shape) : strlen(a->shape);
    bool sliced = lead == 4 && !strncmp(a->shape, "rows", 4);
    size_t n = 0;
    rowlen[0] = 0;
    while (comma) {
        const char *next = strchr(comma + 1, ',');
        size_t k = next ? (size_t)(next - comma - 1) : strlen(comma + 1);
        n += (size_t)snprintf(rowlen + n, len > n ? len - n : 0, "%s(%.*s)", n ? " * " : "", (int)k, comma + 1);
        comma = next;
    }
    if (!n) snprintf(rowlen, len, "1");
    return sliced;
}

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
        if (row_sliced(a, rowlen, sizeof rowlen))
            di_str_printf(o, "    %s%s *%s = %s_ + (long)(r) * (%s); (void)%s; \\\n", q, di_ctype(p->dtypes[i]),
                          a->name, a->name, rowlen, a->name);
        else
            di_str_printf(o, "    %s%s *%s = %s_; (void)%s; \\\n", q, di_ctype(p->dtypes[i]), a->name, a->name,
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

int di_lower_matmul_fast(di_str *o, const di_spec *s, const di_specialization *p, const char *name, di_err *err)
{
    di_matmul_fast_plan pl;
    di_matmul_fast_config kc;
    if (plan(s, p, 1, &pl, &kc, err)) return err->code;
    if (!s->body || !*s->body) return di_fail(err, DI_ESPEC, "spec %s: matmul without an epilogue", s->name);
    const di_matmul_fast_config *c = &kc;
    bool x_f32 = p->dtypes[arg_index(s, "x")] == DI_F32, y_bf16 = p->dtypes[arg_index(s, "y")] == DI_BF16;
    long n = di_spec_dim(s, p, "N");

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
                     "struct __align__(64) di_tmap { unsigned long long v[16]; };\n\n",
                  c->tm, c->tn, c->bk, c->stages, c->warps_m, c->warps_n, block_threads(c), c->producers,
                  consumer_threads(c), loader_threads(c), pl.ks,
                  pl.nsplit, c->fuse_min_tiles, c->fuse_min_rows, c->group_m, x_f32 ? 1 : 0, reduce_vec(n), c->wgmma ? 1 : 0,
                  di_matmul_fast_tensor_maps(s, p) ? 1 : 0);
    di_str_puts(o, di_cuda_mma_helpers);
    di_str_puts(o, device_helpers);
    if (c->wgmma) emit_wgmma_helpers(o, c->tn);
    di_str_puts(o, split_helper);
    if (c->producers) di_str_puts(o, ws_helpers);
    di_str_puts(o, "\n");
    emit_epilogue(o, s, p, y_bf16 ? "di_f32_to_bf16" : "");

    di_str_printf(o, "/* phase 1: per-split partials (split mode) or the whole sum (fused mode) */\n"
                     "extern \"C\" __global__ void __launch_bounds__(MMF_THREADS, 1) %s(", name);
    emit_params(o, s, p);
    if (di_matmul_fast_tensor_maps(s, p))
        di_str_puts(o, ", const __grid_constant__ di_tmap mmf_tx, const __grid_constant__ di_tmap mmf_tw");
    di_str_puts(o, ")\n{\n");
    di_str_puts(o, c->producers ? phase1_ws_body : phase1_body);
    di_str_puts(o, phase1_store);
    if (c->producers) di_str_puts(o, "    }   /* next unit */\n");
    di_str_puts(o, "}\n\n");

    di_str_printf(o, "/* phase 2: partials added in split order from 0.0f, then the epilogue */\n"
                     "extern \"C\" __global__ void __launch_bounds__(%d) %s_reduce(", REDUCE_THREADS, name);
    emit_params(o, s, p);
    di_str_puts(o, ")\n{\n");
    di_str_puts(o, phase2_body);
    di_str_puts(o, "}\n");
    return DI_OK;
}
