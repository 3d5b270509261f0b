/* ggml tensor types: one X-macro table of every type id ggml knows, with its block layout and,
 * for the types detinfer reads, the function that dequantizes it to float32 the way gguf-py's
 * gguf.quants.dequantize does (bit for bit: tests/data/make_quant_ref.py checks each one).
 *
 * A type with a known layout but no dequantizer (IQ2_XXS, TQ1_0, ...) can still be opened and
 * listed (generate --info); converting it is an error naming the type. */
#ifndef DI_QUANT_H
#define DI_QUANT_H
#include <stdbool.h>
#include <stdint.h>

/* X(name, ggml id, elements per block, bytes per block, dequantizer or 0).
 * Ids missing here (4, 5, 31-33, 36-38) were removed from ggml and have no layout. */
#define DI_GGML_TYPES(X)                  \
    X(F32, 0, 1, 4, deq_f32)              \
    X(F16, 1, 1, 2, deq_f16)              \
    X(Q4_0, 2, 32, 18, deq_q4_0)          \
    X(Q4_1, 3, 32, 20, deq_q4_1)          \
    X(Q5_0, 6, 32, 22, deq_q5_0)          \
    X(Q5_1, 7, 32, 24, deq_q5_1)          \
    X(Q8_0, 8, 32, 34, deq_q8_0)          \
    X(Q8_1, 9, 32, 40, 0)                 \
    X(Q2_K, 10, 256, 84, deq_q2_k)        \
    X(Q3_K, 11, 256, 110, deq_q3_k)       \
    X(Q4_K, 12, 256, 144, deq_q4_k)       \
    X(Q5_K, 13, 256, 176, deq_q5_k)       \
    X(Q6_K, 14, 256, 210, deq_q6_k)       \
    X(Q8_K, 15, 256, 292, 0)              \
    X(IQ2_XXS, 16, 256, 66, 0)            \
    X(IQ2_XS, 17, 256, 74, 0)             \
    X(IQ3_XXS, 18, 256, 98, 0)            \
    X(IQ1_S, 19, 256, 50, 0)              \
    X(IQ4_NL, 20, 32, 18, deq_iq4_nl)     \
    X(IQ3_S, 21, 256, 110, 0)             \
    X(IQ2_S, 22, 256, 82, 0)              \
    X(IQ4_XS, 23, 256, 136, deq_iq4_xs)   \
    X(I8, 24, 1, 1, 0)                    \
    X(I16, 25, 1, 2, 0)                   \
    X(I32, 26, 1, 4, 0)                   \
    X(I64, 27, 1, 8, 0)                   \
    X(F64, 28, 1, 8, 0)                   \
    X(IQ1_M, 29, 256, 56, 0)              \
    X(BF16, 30, 1, 2, deq_bf16)           \
    X(TQ1_0, 34, 256, 54, 0)              \
    X(TQ2_0, 35, 256, 66, 0)              \
    X(MXFP4, 39, 32, 17, 0)               \
    X(NVFP4, 40, 64, 36, 0)               \
    X(Q1_0, 41, 128, 18, 0)

enum di_ggml_type {
#define DI_X(name, id, be, bb, fn) DI_GGML_##name = id,
    DI_GGML_TYPES(DI_X)
#undef DI_X
};

/* Dequantizes n_blocks whole blocks at src to n_blocks * block_elems floats. */
typedef void (*di_dequant_fn)(const uint8_t *src, uint64_t n_blocks, float *out);

typedef struct di_quant_type {
    const char *name;      /* "Q4_K" */
    int id;                /* ggml's number */
    uint32_t block_elems, block_bytes;
    di_dequant_fn dequant; /* NULL: the layout is known, the conversion is not implemented */
} di_quant_type;

/* The type with ggml id `id`, or NULL when ggml knows no such type. */
const di_quant_type *di_quant_type_of(int id);
/* The name, or "unknown". */
const char *di_ggml_type_name(int id);
bool di_ggml_type_supported(int id);
/* The supported types' names, comma-separated, for messages ("F32, F16, Q4_0, ..."). */
const char *di_ggml_supported_list(void);

/* Group `group` (elements 32 group .. 32 group + 31) of one block as value = d * code + m in
 * f32, the dequantizer's values (quant.c says where the sign of a zero differs). Returns the
 * bits a code needs (4: 0..15; 8: -128..127), or 0 for a type with no such form. */
typedef struct di_codes32 { float d, m; int code[32]; } di_codes32;
int di_quant_codes32(int type, const uint8_t *block, int group, di_codes32 *out);
int di_quant_code_bits(int type);   /* what di_quant_codes32 returns for this type */
/* f32 to bf16 bits: round to nearest even; NaN stays a (quiet) NaN. The load-time conversion. */
uint16_t di_bf16_of(float f);
/* IEEE binary16 bits to binary32, exact for every input. */
float di_f16_to_f32(uint16_t h);
/* f's IEEE binary16 bits when f is exactly one (the half-scale records' d and m), else false. */
bool di_f16_exact(float f, uint16_t *h);

#endif
