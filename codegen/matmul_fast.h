/* The fast profile's matmul on the GPU: tensor cores (sm_90a wgmma, bf16 -> f32; mma.sync
 * elsewhere), one fixed tile configuration for every M, a fixed K order, and a fixed K split
 * *size* (never a split count chosen from M): per-split partials go to a workspace that
 * phase 2 adds in split order (split mode), or one block adds them in the same order itself
 * (fused mode). Batch invariant by construction on one GPU arch. The lowerings themselves are
 * di_lowering_matmul_fast and di_lowering_matmul_fast_f32x (codegen/lowering.h). */
#ifndef DI_MATMUL_FAST_H
#define DI_MATMUL_FAST_H
#include "codegen/lowering.h"

/* What a kernel is built as, for tests and benchmarks (a function of spec, specialization and
 * target; rows only choose the mode: fused from fuse_min_tiles tiles of tm x tn and
 * fuse_min_rows rows, or with one split). */
typedef struct di_matmul_fast_info {
    long ks, nsplit;         /* K split size (from K and N only) and count */
    int tm, tn;              /* the kernel's tile (tn 256: the wide tile of a one-split TMA kernel) */
    bool tensor_maps;        /* phase 1 loads x and w by TMA */
    int fuse_min_tiles, fuse_min_rows;
} di_matmul_fast_info;
int di_matmul_fast_kernel_info(const di_spec *s, const di_specialization *p, const di_target *t,
                               di_matmul_fast_info *out, di_err *err);

#endif
