/* The fast profile's matmul on the GPU: tensor cores (mma.sync bf16 -> f32), one fixed tile
 * configuration for every M, a fixed K order, and a fixed K split *size* (never a split count
 * chosen from M): phase 1 writes per-split partials to a workspace, phase 2 adds them in
 * split order and applies the epilogue. Batch invariant by construction on one GPU arch. */
#ifndef DI_MATMUL_FAST_H
#define DI_MATMUL_FAST_H
#include "codegen.h"

/* True when (spec, specialization, backend) takes this path. */
bool di_matmul_fast_applies(const di_spec *s, const di_specialization *p, di_backend_kind b);
/* Emits both kernels, named `name` (phase 1) and `name`_reduce (phase 2). Each takes the
 * spec's parameters in order (y_, x_, w_, [res_], rows) followed by `float *ws`. */
int di_lower_matmul_fast(di_str *o, const di_spec *s, const di_specialization *p, const char *name, di_err *err);
/* Launch shapes of the two phases for `rows`, and the workspace they need (bytes). */
int di_geometry_matmul_fast(const di_spec *s, const di_specialization *p, long rows, di_geometry g[2],
                            size_t *workspace_bytes, di_err *err);

#endif
