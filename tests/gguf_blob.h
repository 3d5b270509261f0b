/* A small in-memory GGUF v3 writer for the quant, tokenizer and chat suites: metadata of the
 * common kinds and tensors with given bytes. Keys are written as they are added; the header's
 * counts are patched at the end (gb_finish). */
#ifndef DI_TEST_GGUF_BLOB_H
#define DI_TEST_GGUF_BLOB_H
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "model/gguf.h"

typedef struct gb_tensor { const char *name; uint32_t type, n_dims; uint64_t dims[4]; const void *data; size_t nbytes; } gb_tensor;

typedef struct gguf_blob {
    uint8_t *p;
    size_t n, cap;
    uint64_t n_kv;
    gb_tensor tensors[64];
    int n_tensors;
} gguf_blob;

static inline void gb_put(gguf_blob *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p = realloc(b->p, b->cap);
        cr_assert_not_null(b->p);
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}
static inline void gb_u32(gguf_blob *b, uint32_t v) { gb_put(b, &v, 4); }
static inline void gb_u64(gguf_blob *b, uint64_t v) { gb_put(b, &v, 8); }
static inline void gb_raw_str(gguf_blob *b, const char *s, size_t n) { gb_u64(b, n); gb_put(b, s, n); }
static inline void gb_cstr(gguf_blob *b, const char *s) { gb_raw_str(b, s, strlen(s)); }

/* Starts a file: magic, version, counts (patched later). */
static inline gguf_blob gb_begin(void)
{
    gguf_blob b = {0};
    gb_put(&b, "GGUF", 4);
    gb_u32(&b, 3);
    gb_u64(&b, 0);
    gb_u64(&b, 0);
    return b;
}

static inline void gb_key(gguf_blob *b, const char *key, uint32_t type)
{
    gb_cstr(b, key);
    gb_u32(b, type);
    b->n_kv++;
}
static inline void gb_kv_str(gguf_blob *b, const char *k, const char *v) { gb_key(b, k, DI_GGUF_STRING); gb_cstr(b, v); }
static inline void gb_kv_u32(gguf_blob *b, const char *k, uint32_t v) { gb_key(b, k, DI_GGUF_U32); gb_u32(b, v); }
static inline void gb_kv_bool(gguf_blob *b, const char *k, bool v)
{
    gb_key(b, k, DI_GGUF_BOOL);
    uint8_t x = v;
    gb_put(b, &x, 1);
}
static inline void gb_kv_strs(gguf_blob *b, const char *k, const char *const *v, size_t n)
{
    gb_key(b, k, DI_GGUF_ARRAY);
    gb_u32(b, DI_GGUF_STRING);
    gb_u64(b, n);
    for (size_t i = 0; i < n; i++) gb_cstr(b, v[i]);
}
static inline void gb_kv_i32s(gguf_blob *b, const char *k, const int32_t *v, size_t n)
{
    gb_key(b, k, DI_GGUF_ARRAY);
    gb_u32(b, DI_GGUF_I32);
    gb_u64(b, n);
    gb_put(b, v, n * 4);
}
static inline void gb_kv_f32s(gguf_blob *b, const char *k, const float *v, size_t n)
{
    gb_key(b, k, DI_GGUF_ARRAY);
    gb_u32(b, DI_GGUF_F32);
    gb_u64(b, n);
    gb_put(b, v, n * 4);
}

static inline void gb_tensor_add(gguf_blob *b, gb_tensor t)
{
    cr_assert_lt(b->n_tensors, 64);
    b->tensors[b->n_tensors++] = t;
}

/* Writes the tensor infos and the data section (alignment 32) and patches the counts. */
static inline void gb_finish(gguf_blob *b)
{
    uint64_t off = 0;
    for (int i = 0; i < b->n_tensors; i++) {
        gb_tensor *t = &b->tensors[i];
        gb_cstr(b, t->name);
        gb_u32(b, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) gb_u64(b, t->dims[d]);
        gb_u32(b, t->type);
        gb_u64(b, off);
        off += (t->nbytes + 31) / 32 * 32;
    }
    static const uint8_t zeros[32];
    gb_put(b, zeros, (32 - b->n % 32) % 32);
    for (int i = 0; i < b->n_tensors; i++) {
        gb_put(b, b->tensors[i].data, b->tensors[i].nbytes);
        gb_put(b, zeros, (32 - b->tensors[i].nbytes % 32) % 32);
    }
    uint64_t nt = (uint64_t)b->n_tensors;
    memcpy(b->p + 8, &nt, 8);
    memcpy(b->p + 16, &b->n_kv, 8);
}

#endif
