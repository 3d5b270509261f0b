/* The fast profile's matmul on the GPU: tensor cores (sm_90a wgmma, bf16 -> f32; mma.sync
 * elsewhere), one fixed tile configuration for every M, a fixed K order, and a fixed K split
 * *size* (never a split count chosen from M): per-split partials go to a workspace that
 * phase 2 adds in split order (split mode), or one block adds them in the same order itself
 * (fused mode). Batch invariant by construction on one GPU arch. */
#ifndef DI_MATMUL_FAST_H
#define DI_MATMUL_FAST_H
#include "codegen/codegen.h"

/* True when (spec, specialization, backend) takes this path. */
bool di_matmul_fast_applies(const di_spec *s, const di_specialization *p, di_backend_kind b);
/* Emits both kernels, named `name` (phase 1) and `name`_reduce (phase 2). Each takes the
 * spec's parameters in order (y_, x_, w_, [res_], rows) followed by `float *ws`. */
int di_lower_matmul_fast(di_str *o, const di_spec *s, const di_specialization *p, const char *name, di_err *err);
/* Launch shapes of the two phases for `rows`, and the workspace they need (bytes). */
int di_geometry_matmul_fast(const di_spec *s, const di_specialization *p, long rows, di_geometry g[2],
                            size_t *workspace_bytes, di_err *err);

/* ---- additions: the plan for a row count, and the tile configuration ------------------ */

/* What a launch for `rows` does. ks and nsplit come from K and N only (never from rows); `fused`
 * says whether one block runs every split of its tile and sums them itself (same order,
 * same bits, no workspace), which the launch picks from the tile count. */
typedef struct di_matmul_fast_plan {
    long ks;        /* K split size, a multiple of the k tile */
    long nsplit;    /* ceil(K / ks) */
    long tiles;     /* ceil(rows / tm) * ceil(N / tn), in the kernel's tile */
    long units;     /* work units: a tile (fused) or a tile's split (split mode) */
    bool fused;     /* phase 1 writes y; phase 2 is not launched */
} di_matmul_fast_plan;
int di_matmul_fast_plan_for(const di_spec *s, const di_specialization *p, long rows, di_matmul_fast_plan *pl,
                            di_err *err);

/* The tile configuration, process-wide. The product uses the defaults; the setter exists for
 * benchmarks and tests (not thread-safe; open a new runtime after a change, since runtimes
 * keep compiled kernels by name). ks_min / ks_max can change KS and so the result bits; the
 * other fields should change only speed (the k16 order and split boundaries stay). */
typedef struct di_matmul_fast_config {
    int tm, tn, bk, stages;   /* block tile rows x cols, k tile, cp.async pipeline depth */
    int warps_m, warps_n;     /* warp grid; a warp owns (tm/warps_m) x (tn/warps_n) outputs */
    int ks_min, ks_max;       /* KS: the power of two giving ~128 units at M = 1, clamped to [ks_min, ks_max] */
    long fuse_min_tiles;      /* fused when tiles >= this and rows >= fuse_min_rows; 0: never fuse */
    long fuse_min_rows;
    int group_m;              /* block raster: this many row tiles side by side (L2 reuse) */
    int wgmma;                /* 1: sm_90a wgmma main loop (tm 64 or 128, warps (tm/16) x 1, bk 64) */
    int producers;            /* warps that only load, handing stages over by mbarrier (v4); 0: none */
    int tma;                  /* 1: with bf16 x and K % 8 == 0, load by TMA (one thread, v5) on sm_90a */
    int wide_tn, wide_stages; /* single-split kernels: tn and stages instead (0: the same tile) */
} di_matmul_fast_config;
const di_matmul_fast_config *di_matmul_fast_get_config(void);
/* True when phase 1 takes TMA descriptors after `ws`: x as [rows][K] in x_box_rows x 64 boxes,
 * then w as [N][K] in TN x 64 boxes (di_cuda_tensor_map_bf16), built per launch. */
bool di_matmul_fast_tensor_maps(const di_spec *s, const di_specialization *p);
/* Rows of x's TMA box for a launch of `rows`: a whole tile, or below one tile only the 16-row
 * fragments that hold rows (the kernel expects exactly these bytes per stage). */
long di_matmul_fast_x_box_rows(long rows);
/* The kernel's tile columns (tn, or wide_tn for a single-split kernel): w's TMA box rows. */
long di_matmul_fast_tile_cols(const di_spec *s, const di_specialization *p);
/* Warp-specialized configs run persistent blocks, one per SM: the runtime says how many. */
void di_matmul_fast_set_sm_count(int sms);
int di_matmul_fast_sm_count(void);
/* The runtime names the device's target ("sm_90a", "sm_80", ...): anything but sm_90a
 * replaces the default config (wgmma + TMA) with the mma.sync one (v2). Not run on such a GPU. */
void di_matmul_fast_set_target(const char *arch);
/* NULL restores the defaults. Validates shapes (divisibility, warp tile of 16 x 16 multiples). */
int di_matmul_fast_set_config(const di_matmul_fast_config *c, di_err *err);

#endif
