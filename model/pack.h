/* GGUF matrices as packed matmul weights (dsl/dsl.h: DI_Q4X8, DI_Q8X8): the quantized codes
 * with one scale and offset per 32 weights of an output, 8 outputs interleaved. The generated
 * matmul decodes them to the bf16 values the load-time conversion gives; packing checks that
 * for every weight, so a packed model computes the bits a bf16 model does. */
#ifndef DI_MODEL_PACK_H
#define DI_MODEL_PACK_H
#include <stdbool.h>
#include <stdint.h>
#include "dsl/dsl.h"
#include "model/gguf.h"
#include "model/quant.h"   /* di_codes32 */

/* Tensors [in, outs[i]] stacked by rows into one [sum outs, in] matrix. */
typedef struct di_pack_src {
    const di_gguf *g;
    const di_gguf_tensor *const *ts;
    const uint64_t *outs;
    int count;
    uint64_t in;
} di_pack_src;

/* DI_Q4X8 when every tensor's codes fit 4 bits, DI_Q8X8 when they fit 8, DI_BF16 when one has
 * no code form (F16, Q6_K, ...) or in is not a multiple of 32. */
di_dtype di_pack_format(const di_pack_src *s);

/* Rows [row0, row1) of the stacked matrix into dst (di_pack_bytes(fmt, rows, in), zeroed; row0
 * and row1 multiples of 8 or the end). *same is false when some weight would decode to a value
 * other than its bf16 conversion (a non-finite or huge scale): the caller keeps bf16 then. */
int di_pack_rows(const di_pack_src *s, di_dtype fmt, uint64_t row0, uint64_t row1, uint8_t *dst, bool *same,
                 di_err *err);

/* Lane l of record rec (zeroed before its first lane): c's scales and 32 codes. False when fmt
 * cannot hold them as they are (a scale that is no binary16 in a half-scale format, or a d the
 * GPU's decoder would not scale exactly): the matrix must not be packed so. */
bool di_pack_put(di_dtype fmt, uint8_t *rec, int l, const di_codes32 *c);

/* The weight the generated code decodes from record rec, lane l, element j (as its di_pk_w). */
float di_pack_weight(di_dtype fmt, const uint8_t *rec, int l, int j);

#endif
