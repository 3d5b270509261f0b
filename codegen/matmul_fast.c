/* The fast profile's matmul on the GPU: y[rows, N] = x[rows, K] . w[N, K]^T (+ epilogue) on
 * tensor cores, batch invariant by construction.
 *
 * ---- Design notes -------------------------------------------------------------------------
 *
 * Tile. One configuration for every row count (defaults below, di_matmul_fast_config):
 * a block owns a TM x TN = 64 x 128 output tile and is one warpgroup (4 warps); each k16 step
 * of a k tile is one sm_90a wgmma.m64n128k16 (bf16 in, f32 accumulate) reading both operands
 * from shared memory (v3, 2026-11-30; see emit_wgmma_helpers). The k tile is BK = 64; a
 * 4-stage cp.async pipeline stages [TM][BK] of x and [TN][BK] of w (24 KiB per stage, 96 KiB
 * of dynamic shared memory, so the runtime must raise the per-function limit) in 16-byte
 * chunks, XOR-swizzled (chunk c of row r at c ^ (r % 8)): the 128-byte swizzle wgmma reads,
 * and free of bank conflicts for ldmatrix.x4 and the cp.async writes. Two k tiles load while
 * a third is multiplied and the previous tile's wgmma may still run. The mma.sync main loop
 * (v1, v2: warps 1 x 4, each a 64 x 32 sub-tile of 4 x 4 mma.sync.m16n8k16 fragments fed by
 * ldmatrix) stays as a config (wgmma = 0) for other GPUs and for comparison. f32 x is loaded to registers one stage ahead and converted to bf16 (cvt.rn,
 * round to nearest even) on its way into shared memory; bf16 x goes through cp.async like w.
 * K not a multiple of 8 (rows not 16-byte aligned) takes a plain element-wise load path.
 *
 * Order. K is cut into splits of a fixed size KS, chosen from K only: the largest power of two
 * <= K/8, clamped to [256, 1024] (K=4096: KS=512, 8 splits; K=14336: KS=1024, 14 splits).
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
 *  - split mode (small problems): grid (ceil(N/TN), ceil(rows/TM), nsplit); block z writes its
 *    split's partials to ws[z][rows][N]; phase 2 (`_reduce`) adds them in order and applies
 *    the epilogue. This is what gives a batch of 1 enough blocks to stream w at full rate.
 *  - fused mode (rows >= 64 and >= 128 output tiles, or a single split): grid z = 1; the block
 *    walks every split of its tile in order, keeps the running sum in registers and adds each
 *    finished split to it exactly as phase 2 would (0.0f + p0 + p1 ...), then applies the
 *    epilogue; phase 2 returns at once and no workspace is used. Same operations, same bits;
 *    it saves nsplit * rows * N * 8 bytes of workspace traffic, which at large M would cost
 *    more than the math (at KS = 512 that traffic is 4 bytes per 128 flops).
 * The epilogue text runs in two places (phase 2, and phase 1 in fused mode) on the same
 * value; its operands are the __fadd_rn sum and loads, so --fmad=true has no multiply to
 * contract differently. (An epilogue with a multiply would rely on NVVM contracting the same
 * expression the same way in both kernels.) The tests check the two modes against each other
 * and every M in 1..64 against M = 257, bitwise.
 *
 * Resources (nvcc -Xptxas -v on the generated source, sm_90a, default config): phase 1 uses
 * 242 registers with f32 x, 222 with bf16 x, no local memory (v2 with mma.sync: 248 and 220).
 * Phase 2 uses ~30 registers. Why 64 x 128 and not 128 x 128 with two warpgroups: two blocks
 * fit an SM, which keeps M <= 32 (memory-bound) near cuBLAS; 128 x 128 was 5-10 % faster at
 * M >= 512 and 10-25 % slower at M <= 32 (sweep of 2026-11-30 in perf/RESULTS.md). Neither the
 * tile shape nor mma.sync vs wgmma changes which products are summed in which order per
 * output (k16 steps in order within a split, splits in order), only the instruction; whether
 * wgmma and mma.sync round a k16 step alike is not claimed (the fast profile is per GPU
 * architecture and per configuration). See "Why it is invariant".
 *
 * Estimates written for the first, 128 x 128 default before any measurement (the measured
 * figures, which fell short at large M, are in perf/RESULTS.md).
 * Expected performance (METHOD.md's two numbers; H100 ~3.0 TB/s; mma.sync ceiling taken as
 * ~500 TFLOP/s, to be measured). Bytes = w + x + y (+ workspace in split mode); the main loop
 * reads 6 ldmatrix.x4 per 16 mma per warp, so shared-memory bandwidth (128 B/clk/SM) caps it
 * near 470 TFLOP/s, realistically 300-380:
 *   M=1,    K=4096,  N=6144 : 50.3 MB of w -> 17 us floor (cuBLAS 30 us); 384 blocks.
 *   M=1,    K=4096,  N=28672: 235 MB -> 78 us floor (cuBLAS 93 us); 1792 blocks.
 *   M=1,    K=14336, N=4096 : 117 MB -> 39 us floor (cuBLAS 55 us); 448 blocks.
 *   M<=32: the same bytes plus < 15 MB of workspace that stays in L2, and ~3 us for phase 2;
 *          only the 16-row fragments that hold rows are multiplied. Expect 1.0-1.3x cuBLAS.
 *   M=8192, K=4096, N=6144: 412 GFLOP -> 0.82 ms at 500 TFLOP/s, ~1.2 ms at 350 (cuBLAS
 *          0.60 ms): expect ~0.5x cuBLAS, fused, 3072 tiles.
 *   M=512, K=4096, N=6144: 25.8 GFLOP, 192 tiles = 1.45 waves of 132 SMs: the weakest point,
 *          expect ~0.4-0.5x cuBLAS (41 us). If large M misses, the next step is a wgmma main
 *          loop (same split order; HGMMA instead of HMMA), not a different split.
 * Knobs for tuning live in di_matmul_fast_config (perf/bench_matmul takes them as flags). */
#include "matmul_fast.h"
#include "lower.h"
#include <stdio.h>
#include <string.h>

/* ---- configuration ------------------------------------------------------------------- */

static const di_matmul_fast_config default_config = {
    .tm = 64, .tn = 128, .bk = 64, .stages = 4, .warps_m = 4, .warps_n = 1,
    .ks_min = 256, .ks_max = 1024, .fuse_min_tiles = 128, .fuse_min_rows = 64, .group_m = 8, .wgmma = 1,
};
static di_matmul_fast_config config = default_config;

const di_matmul_fast_config *di_matmul_fast_get_config(void) { return &config; }

static bool pow2(long v) { return v > 0 && (v & (v - 1)) == 0; }

static long smem_bytes(const di_matmul_fast_config *c) { return (long)c->stages * (c->tm + c->tn) * c->bk * 2; }

int di_matmul_fast_set_config(const di_matmul_fast_config *c, di_err *err)
{
    if (!c) {
        config = default_config;
        return DI_OK;
    }
    long threads = (long)c->warps_m * c->warps_n * 32;
    const char *why = NULL;
    if (c->warps_m < 1 || c->warps_n < 1 || threads > 1024) why = "warps_m * warps_n * 32 must be 32..1024";
    else if (c->tm <= 0 || c->tm % (c->warps_m * 16)) why = "tm must be a multiple of 16 * warps_m";
    else if (c->tn <= 0 || c->tn % (c->warps_n * 16)) why = "tn must be a multiple of 16 * warps_n";
    else if (c->bk < 16 || c->bk > 128 || !pow2(c->bk)) why = "bk must be 16, 32, 64 or 128";
    else if (c->stages < 2 || c->stages > 8) why = "stages must be 2..8";
    else if ((long)c->tm * (c->bk / 8) % threads || (long)c->tn * (c->bk / 8) % threads)
        why = "tm * bk / 8 and tn * bk / 8 must be multiples of the thread count";
    else if (!pow2(c->ks_min) || !pow2(c->ks_max) || c->ks_min < c->bk || c->ks_max < c->ks_min)
        why = "ks_min <= ks_max must be powers of two, at least bk";
    else if (smem_bytes(c) > 227L * 1024) why = "stages * (tm + tn) * bk * 2 bytes exceed 227 KiB of shared memory";
    else if (c->fuse_min_tiles < 0 || c->fuse_min_rows < 0 || c->group_m < 1)
        why = "fuse_min_tiles, fuse_min_rows must be >= 0 and group_m >= 1";
    else if (c->wgmma && c->stages < 4)
        why = "wgmma needs stages >= 4 (two tiles load while one is multiplied and one may still be; "
              "fewer is untested)";
    else if (c->wgmma && ((c->tm != 64 && c->tm != 128) || c->warps_m != c->tm / 16 || c->warps_n != 1 ||
                          c->bk != 64 || c->tn > 128))
        why = "wgmma needs tm 64 or 128 with warps (tm / 16) x 1 (a warpgroup per 64 rows), bk 64 "
              "(128-byte swizzled rows) and tn <= 128";
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

/* KS from K alone: enough splits that a batch of 1 fills the GPU, few enough that the
 * workspace stays small. */
static long split_size(long k)
{
    long ks = 1;
    while (ks * 2 <= k / 8) ks *= 2;
    if (ks < config.ks_min) ks = config.ks_min;
    if (ks > config.ks_max) ks = config.ks_max;
    return ks;
}

static long ceil_div(long a, long b) { return (a + b - 1) / b; }

int di_matmul_fast_plan_for(const di_spec *s, const di_specialization *p, long rows, di_matmul_fast_plan *pl,
                            di_err *err)
{
    if (!di_matmul_fast_applies(s, p, DI_BACKEND_CUDA))
        return di_fail(err, DI_ESPEC, "spec %s: not a fast-profile bf16-weight matmul", s->name);
    if (rows < 0 || rows > 65535)
        return di_fail(err, DI_EUSAGE, "kernel %s: %ld rows (must be 0..65535)", s->name, rows);
    long k = di_spec_dim(s, p, "K"), n = di_spec_dim(s, p, "N");
    pl->ks = split_size(k);
    pl->nsplit = ceil_div(k, pl->ks);
    if (pl->nsplit > 65535)
        return di_fail(err, DI_ESPEC, "spec %s: K = %ld gives %ld splits of %ld (grid z is at most 65535)", s->name, k,
                       pl->nsplit, pl->ks);
    pl->tiles = ceil_div(rows, config.tm) * ceil_div(n, config.tn);
    pl->fused = pl->nsplit == 1 ||
                (config.fuse_min_tiles > 0 && rows >= config.fuse_min_rows && pl->tiles >= config.fuse_min_tiles);
    return DI_OK;
}

static int reduce_vec(long n) { return n % 4 == 0 ? 4 : 1; }
enum { REDUCE_THREADS = 256 };

int di_geometry_matmul_fast(const di_spec *s, const di_specialization *p, long rows, di_geometry g[2],
                            size_t *workspace_bytes, di_err *err)
{
    di_matmul_fast_plan pl;
    if (di_matmul_fast_plan_for(s, p, rows, &pl, err)) return err->code;
    long n = di_spec_dim(s, p, "N");
    memset(g, 0, 2 * sizeof *g);
    g[0].grid[0] = (unsigned)ceil_div(n, config.tn);
    g[0].grid[1] = (unsigned)ceil_div(rows, config.tm);
    g[0].grid[2] = pl.fused ? 1 : (unsigned)pl.nsplit;
    g[0].block[0] = (unsigned)(config.warps_m * config.warps_n * 32);
    g[0].block[1] = g[0].block[2] = 1;
    g[0].smem = (unsigned)smem_bytes(&config);
    g[1].block[0] = REDUCE_THREADS;
    g[1].block[1] = g[1].block[2] = 1;
    g[1].grid[0] = pl.fused ? 1 : (unsigned)ceil_div(n, (long)REDUCE_THREADS * reduce_vec(n));
    g[1].grid[1] = pl.fused ? 1 : (unsigned)rows;
    g[1].grid[2] = 1;
    if (rows == 0) g[1].grid[1] = 0;
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
    "#define MMF_ACH (MMF_TM * MMF_CPR / MMF_THREADS)     /* x chunks per thread per stage */\n"
    "#define MMF_BCH (MMF_TN * MMF_CPR / MMF_THREADS)     /* w chunks per thread per stage */\n"
    "#define MMF_VEC (K % 8 == 0)                        /* rows 16-byte aligned: cp.async */\n"
    "/* k tiles loaded ahead: wgmma keeps one more stage busy (the tile still being multiplied) */\n"
    "#define MMF_AHEAD (MMF_WGMMA ? MMF_STAGES - 2 : MMF_STAGES - 1)\n"
    "#define MMF_XSTAGE (MMF_X_F32 && MMF_VEC)           /* f32 x: registers, then bf16 */\n"
    "#define MMF_TILES(rows) (((rows) + MMF_TM - 1) / MMF_TM * ((N + MMF_TN - 1) / MMF_TN))\n"
    "/* one block sums every split of its tile itself (same order); else phase 2 does */\n"
    "#define MMF_FUSED(rows) (MMF_NSPLIT == 1 || (MMF_FUSE_TILES > 0 && (rows) >= MMF_FUSE_ROWS && \\\n"
    "                         MMF_TILES(rows) >= MMF_FUSE_TILES))\n"
    "static_assert(MMF_TM * MMF_CPR % MMF_THREADS == 0 && MMF_TN * MMF_CPR % MMF_THREADS == 0, \"chunks\");\n"
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
    "        const int id = tid + i * MMF_THREADS, row = id / MMF_CPR, cc = id % MMF_CPR;\n"
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
    "        const int id = tid + i * MMF_THREADS, row = id / MMF_CPR, cc = id % MMF_CPR;\n"
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
    "        const int id = tid + i * MMF_THREADS, row = id / MMF_CPR, cc = id % MMF_CPR;\n"
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
    "        const int id = tid + i * MMF_THREADS, row = id / MMF_CPR, cc = id % MMF_CPR;\n"
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
    "        const int id = tid + i * MMF_THREADS, row = id / MMF_CPR, cc = id % MMF_CPR;\n"
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
    "    const long kt0 = fused ? 0 : (long)blockIdx.z * tps;\n"
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
    "            /* a split is complete: add it to the running sum, as phase 2 would */\n"
    "#if MMF_WGMMA\n"
    "            mmf_wgmma_wait<0>(c);\n"
    "#endif\n"
    "            left = tps;\n"
    "#pragma unroll\n"
    "            for (int i = 0; i < MMF_MT; i++)\n"
    "#pragma unroll\n"
    "                for (int j = 0; j < MMF_NT; j++)\n"
    "#pragma unroll\n"
    "                    for (int e = 0; e < 4; e++) {\n"
    "                        sum[i][j][e] = __fadd_rn(sum[i][j][e], c[i][j][e]);\n"
    "                        c[i][j][e] = 0.0f;\n"
    "                    }\n"
    "        }\n"
    "        cs = cs + 1 == MMF_STAGES ? 0 : cs + 1;\n"
    "        ns = ns + 1 == MMF_STAGES ? 0 : ns + 1;\n"
    "    }\n"
    "    mmf_wait<0>();\n"
    "#if MMF_WGMMA\n"
    "    mmf_wgmma_wait<0>(c);\n"
    "#endif\n"
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
    "                    if (nn < N) MMF_EPILOGUE(rr, nn, sum[i][j][2 * h]);\n"
    "                    if (nn + 1 < N) MMF_EPILOGUE(rr, nn + 1, sum[i][j][2 * h + 1]);\n"
    "                } else {\n"
    "                    float *dst = ws + ((long)blockIdx.z * rows + rr) * N + nn;\n"
    "#if N % 2 == 0\n"
    "                    if (nn < N) *(float2 *)dst = make_float2(c[i][j][2 * h], c[i][j][2 * h + 1]);\n"
    "#else\n"
    "                    if (nn < N) dst[0] = c[i][j][2 * h];\n"
    "                    if (nn + 1 < N) dst[1] = c[i][j][2 * h + 1];\n"
    "#endif\n"
    "                }\n"
    "            }\n";

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
    if (di_matmul_fast_plan_for(s, p, 1, &pl, err)) return err->code;
    if (!s->body || !*s->body) return di_fail(err, DI_ESPEC, "spec %s: matmul without an epilogue", s->name);
    const di_matmul_fast_config *c = &config;
    bool x_f32 = p->dtypes[arg_index(s, "x")] == DI_F32, y_bf16 = p->dtypes[arg_index(s, "y")] == DI_BF16;
    long n = di_spec_dim(s, p, "N");

    di_str_printf(o, "/* fast matmul: tensor cores, one tile for every M, K split size fixed by K (codegen/matmul_fast.c) */\n"
                     "#define MMF_TM %d\n#define MMF_TN %d\n#define MMF_BK %d\n#define MMF_STAGES %d\n"
                     "#define MMF_WM %d\n#define MMF_WN %d\n#define MMF_THREADS %d\n"
                     "#define MMF_KS %ldL\n#define MMF_NSPLIT %ldL\n"
                     "#define MMF_FUSE_TILES %ldL\n#define MMF_FUSE_ROWS %ldL\n#define MMF_GROUP_M %d\n"
                     "#define MMF_X_F32 %d\n#define MMF_RV %d\n"
                     "/* wgmma is sm_90a's alone: other targets take the mma.sync loop with the same tile */\n"
                     "#if %d && defined(__CUDA_ARCH_FEAT_SM90_ALL)\n#define MMF_WGMMA 1\n#else\n"
                     "#define MMF_WGMMA 0\n#endif\n\n",
                  c->tm, c->tn, c->bk, c->stages, c->warps_m, c->warps_n, c->warps_m * c->warps_n * 32, pl.ks,
                  pl.nsplit, c->fuse_min_tiles, c->fuse_min_rows, c->group_m, x_f32 ? 1 : 0, reduce_vec(n), c->wgmma ? 1 : 0);
    di_str_puts(o, di_cuda_mma_helpers);
    di_str_puts(o, device_helpers);
    if (c->wgmma) emit_wgmma_helpers(o, c->tn);
    di_str_puts(o, "\n");
    emit_epilogue(o, s, p, y_bf16 ? "di_f32_to_bf16" : "");

    di_str_printf(o, "/* phase 1: per-split partials (split mode) or the whole sum (fused mode) */\n"
                     "extern \"C\" __global__ void __launch_bounds__(MMF_THREADS, 1) %s(", name);
    emit_params(o, s, p);
    di_str_puts(o, ")\n{\n");
    di_str_puts(o, phase1_body);
    di_str_puts(o, "}\n\n");

    di_str_printf(o, "/* phase 2: partials added in split order from 0.0f, then the epilogue */\n"
                     "extern \"C\" __global__ void __launch_bounds__(%d) %s_reduce(", REDUCE_THREADS, name);
    emit_params(o, s, p);
    di_str_puts(o, ")\n{\n");
    di_str_puts(o, phase2_body);
    di_str_puts(o, "}\n");
    return DI_OK;
}
