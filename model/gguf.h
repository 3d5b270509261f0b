/* GGUF reader (versions 2 and 3): metadata of every value type, tensor infos, alignment,
 * mmap. Hardened: every count, size and offset is checked against the file before use;
 * errors name the file and, where one is at fault, the key or tensor. */
#ifndef DI_GGUF_H
#define DI_GGUF_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "base/err.h"
#include "model/quant.h"   /* enum di_ggml_type, di_ggml_type_name */

enum di_gguf_vtype { /* metadata value types, as numbered in the GGUF spec */
    DI_GGUF_U8 = 0, DI_GGUF_I8, DI_GGUF_U16, DI_GGUF_I16, DI_GGUF_U32, DI_GGUF_I32,
    DI_GGUF_F32, DI_GGUF_BOOL, DI_GGUF_STRING, DI_GGUF_ARRAY, DI_GGUF_U64, DI_GGUF_I64, DI_GGUF_F64,
};

typedef struct di_gguf_str { const char *ptr; uint64_t len; } di_gguf_str; /* not NUL-terminated */

typedef struct di_gguf_kv {
    di_gguf_str key;
    int type;                 /* enum di_gguf_vtype */
    int arr_type;             /* element type when type == ARRAY */
    uint64_t arr_len;
    const uint8_t *data;      /* points into the mapping: scalar value, string, or first array element */
    uint64_t *str_offsets;    /* arrays of strings: offset of element i from data (built at open) */
} di_gguf_kv;

typedef struct di_gguf_tensor {
    char name[256];
    int type;                 /* enum di_ggml_type: one whose layout ggml knows (model/quant.h) */
    int n_dims;
    uint64_t dims[4];         /* ggml order: dims[0] is the contiguous (fastest) dimension */
    uint64_t n_elems;
    uint64_t offset;          /* relative to the data section */
    size_t nbytes;
    const void *data;         /* into the mapping */
} di_gguf_tensor;

typedef struct di_gguf {
    char path[1024];
    uint32_t version;
    uint64_t n_kv, n_tensors;
    di_gguf_kv *kv;
    di_gguf_tensor *tensors;
    size_t alignment;
    const uint8_t *base; size_t size;  /* the whole file */
    bool mapped;                       /* base is an mmap (else borrowed memory) */
} di_gguf;

/* Opens and validates the file. DI_EUSAGE if it cannot be opened, DI_EFORMAT if malformed. */
int di_gguf_open(const char *path, di_gguf **out, di_err *err);
/* Same over memory the caller keeps alive (fuzzing, tests); label names it in errors. */
int di_gguf_open_mem(const void *data, size_t n, const char *label, di_gguf **out, di_err *err);
void di_gguf_close(di_gguf *g);

const di_gguf_kv *di_gguf_find(const di_gguf *g, const char *key);
/* Typed getters: DI_EFORMAT naming the key if missing or of an incompatible type.
 * get_u64 accepts any non-negative integer type; get_f32 accepts F32 or F64. */
int di_gguf_get_u64(const di_gguf *g, const char *key, uint64_t *out, di_err *err);
int di_gguf_get_f32(const di_gguf *g, const char *key, float *out, di_err *err);
int di_gguf_get_str(const di_gguf *g, const char *key, di_gguf_str *out, di_err *err);
/* Array access: element i of an array of strings / of integers. */
int di_gguf_arr_str(const di_gguf_kv *kv, uint64_t i, di_gguf_str *out);
int64_t di_gguf_arr_int(const di_gguf_kv *kv, uint64_t i);

const di_gguf_tensor *di_gguf_tensor_find(const di_gguf *g, const char *name);
/* Dequantizes a whole tensor to float32 (n_elems values, ggml order). DI_EFORMAT naming the type
 * when it has no dequantizer (e.g. "IQ2_XXS (type 16) is not supported"). */
int di_gguf_to_f32(const di_gguf *g, const di_gguf_tensor *t, float *out, di_err *err);
/* Elements [first, first + count) only; both whole blocks of the type (32 for Q4_0, 256 for Q4_K).
 * Safe to call from several threads at once (it reads the mapped file, writes out). */
int di_gguf_to_f32_range(const di_gguf *g, const di_gguf_tensor *t, uint64_t first, uint64_t count, float *out,
                         di_err *err);

#endif
