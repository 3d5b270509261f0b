/* The fast profile's attention on the GPU: tensor cores (mma.sync bf16 -> f32) for Q.K^T and
 * P.V over the spec's fixed KV splits, splits folded in split order. Batch invariant by
 * construction on one GPU arch; see the design notes in attention_fast.c. */
#ifndef DI_ATTENTION_FAST_H
#define DI_ATTENTION_FAST_H
#include "codegen/codegen.h"

/* True when (spec, specialization, backend) takes this path: an attention spec on CUDA in
 * the fast profile (or the vendor profile, which picks the split size per launch), HD a multiple of 16 up to 128, SPLIT a multiple of 16 up to 64, and at most
 * 16 query heads per KV head. Other shapes keep the scalar lowering. */
bool di_attention_fast_applies(const di_spec *s, const di_specialization *p, di_backend_kind b);

/* Emits two kernels: `name` (phase 1: per-split results, or the whole fold) and `name`_merge
 * (phase 2: the fold of the per-split results in split order). Both take the spec's
 * parameters in order, then `float *ws, long rows_per_warp, long split_mode`. */
int di_lower_attention_fast(di_str *o, const di_spec *s, const di_specialization *p, const char *name, di_err *err);

/* What a launch for (rows, maxb) does. Only speed follows from it, never a bit: a query's
 * splits, their order and the fold are the same in both modes and for any rows_per_warp. */
typedef struct di_attention_fast_plan {
    bool split_mode;     /* one block per (rows, KV head, split), phase 2 folds; else phase 1 folds */
    long rows_per_warp;  /* consecutive batch rows a warp takes (their heads fill one m16 tile) */
    size_t workspace;    /* bytes of per-split results (split mode) */
    di_geometry g[2];    /* phase 1, phase 2 */
} di_attention_fast_plan;
int di_attention_fast_plan_for(const di_spec *s, const di_specialization *p, long rows, long maxb,
                               di_attention_fast_plan *pl, di_err *err);

/* Tests and benchmarks force a mode to compare them: 0 automatic (the product), 1 fold, 2 split. */
void di_attention_fast_force_mode(int mode);

#endif
