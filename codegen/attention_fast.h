/* The fast profile's attention on the GPU: tensor cores (mma.sync bf16 -> f32) for Q.K^T and
 * P.V over the spec's fixed KV splits, splits folded in split order. Batch invariant by
 * construction on one GPU arch; see the design notes in attention_fast.c. The lowering itself is
 * di_lowering_attention_fast (codegen/lowering.h): an attention spec on CUDA in the fast profile
 * (or the vendor profile with a KV split size), HD a multiple of 16 up to 128, SPLIT a multiple
 * of 16 up to 64, and at most 16 query heads per KV head. Other shapes keep the scalar lowering. */
#ifndef DI_ATTENTION_FAST_H
#define DI_ATTENTION_FAST_H
#include "codegen/lowering.h"

/* What a launch for (rows, maxb) does, for tests and benchmarks. Only speed follows from it. */
typedef struct di_attention_fast_mode_info {
    bool split_mode;     /* one block per (row group, KV head, split), phase 2 folds; else phase 1 folds */
    long rows_per_warp;  /* consecutive batch rows a warp takes (their heads fill one m16 tile) */
    size_t workspace;    /* bytes of per-split results (split mode) */
    unsigned grid_z;     /* phase 1's grid z: the splits in split mode, else 1 */
} di_attention_fast_mode_info;
int di_attention_fast_mode(const di_spec *s, const di_specialization *p, const di_target *t, long rows, long maxb,
                           di_attention_fast_mode_info *out, di_err *err);

#endif
