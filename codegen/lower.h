/* Class lowerings: the body of a kernel, as text valid in both backends' preludes (with C-only
 * loop orders where the CPU needs them: c_backend). */
#ifndef DI_LOWER_H
#define DI_LOWER_H
#include "codegen/codegen.h"

int di_lower_body(di_str *o, const di_spec *s, const di_specialization *p, bool c_backend, di_err *err);
/* Q heads per block of the C backend's attention: the kv head's group (they share each key and
 * value row loaded), halved while a row would have fewer than 2 blocks (both CPU cores busy at
 * batch 1). Which heads share a block changes no bit: each head's chains are its own. */
long di_attention_c_heads(const di_spec *s, const di_specialization *p);
/* sm_80+ tensor-core helpers for the fast lowerings (cuda.c): di_pack_bf16x2(lo, hi) rounds two
 * floats to bf16 (nearest even, lo in the low half) and di_mma_16816(c, a, b0, b1) is
 * c += a . b on one m16n8k16 fragment, bf16 in, f32 accumulate. */
extern const char di_cuda_mma_helpers[];
/* How a CUDA entry's body opens (after its parameter list): DI_GRID_ENTRY() (cuda.c's prelude)
 * before any memory access, so that the runtime may start it while the kernel before it in the
 * stream is still running. */
#define DI_CUDA_ENTRY_OPEN ")\n{\n    DI_GRID_ENTRY();\n"
/* "rows, NH + 2 * NKV, HD" -> row length "(NH + 2 * NKV) * (HD)"; true when led by "rows". */
bool di_row_sliced(const di_arg *a, char *rowlen, size_t len);

#endif
