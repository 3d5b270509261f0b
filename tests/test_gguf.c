/* GGUF reader: synthetic files written here by a tiny writer (every metadata type, every
 * tensor type, every way a file can be malformed that the reader checks), the fuzz corpus
 * replayed, and the real model when it is present.
 *
 * Expected dequantized values are computed independently in double precision from the block
 * bytes; every product involved is exact, so the float the reader makes must match bitwise.
 *
 * DI_GGUF_WRITE_CORPUS=1 makes the "corpus" test (re)write the generated seed files
 * (gen_*; no .gguf suffix, which .gitignore drops) into tests/fuzz/corpus/. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/config.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

#ifndef DI_SOURCE_DIR
#define DI_SOURCE_DIR "."
#endif
#define GG_MODEL_NAME "SmolLM2-135M-Instruct.Q4_1.gguf"

/* ---------- a tiny GGUF writer ---------- */

typedef struct wbuf { uint8_t *p; size_t n, cap; } wbuf;

static void w_bytes(wbuf *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        cr_assert(b->p);
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void w_u8(wbuf *b, uint8_t v) { w_bytes(b, &v, 1); }
static void w_u16(wbuf *b, uint16_t v) { w_bytes(b, &v, 2); }
static void w_u32(wbuf *b, uint32_t v) { w_bytes(b, &v, 4); }
static void w_u64(wbuf *b, uint64_t v) { w_bytes(b, &v, 8); }
static void w_f32(wbuf *b, float v) { w_bytes(b, &v, 4); }
static void w_f64(wbuf *b, double v) { w_bytes(b, &v, 8); }
static void w_str(wbuf *b, const char *s)
{
    w_u64(b, strlen(s));
    w_bytes(b, s, strlen(s));
}
/* key and value type; the caller writes the value */
static void w_key(wbuf *b, const char *key, uint32_t vtype)
{
    w_str(b, key);
    w_u32(b, vtype);
}

typedef struct tspec {
    const char *name;
    uint32_t type;
    uint32_t n_dims;
    uint64_t dims[5];
    const void *data;    /* NULL: zeros */
    size_t nbytes;       /* bytes of data written for it */
    bool set_offset;     /* write `offset` instead of the computed one */
    uint64_t offset;
} tspec;

/* header, the pre-serialized metadata, tensor infos, padding, data (no padding after the last tensor) */
static wbuf gg_build(uint32_t version, const wbuf *kvs, uint64_t n_kv, const tspec *ts, int nt, size_t align)
{
    wbuf b = {0};
    w_bytes(&b, "GGUF", 4);
    w_u32(&b, version);
    w_u64(&b, (uint64_t)nt);
    w_u64(&b, n_kv);
    if (kvs) w_bytes(&b, kvs->p, kvs->n);
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        w_str(&b, ts[i].name);
        w_u32(&b, ts[i].n_dims);
        for (uint32_t d = 0; d < ts[i].n_dims; d++) w_u64(&b, ts[i].dims[d]);
        w_u32(&b, ts[i].type);
        w_u64(&b, ts[i].set_offset ? ts[i].offset : off);
        off += (ts[i].nbytes + align - 1) / align * align;
    }
    static const uint8_t zeros[1 << 16];
    w_bytes(&b, zeros, (align - b.n % align) % align);
    for (int i = 0; i < nt; i++) {
        size_t start = b.n;
        for (size_t done = 0; done < ts[i].nbytes;) {
            size_t k = ts[i].nbytes - done < sizeof zeros ? ts[i].nbytes - done : sizeof zeros;
            w_bytes(&b, ts[i].data ? (const uint8_t *)ts[i].data + done : zeros, k);
            done += k;
        }
        if (i + 1 < nt) w_bytes(&b, zeros, (align - (b.n - start) % align) % align);
    }
    return b;
}

/* one F32 tensor of 4 elements, no metadata: the smallest useful file */
static const float four_floats[4] = {1.0f, -2.0f, 0.5f, 3.25f};
static tspec small_tensor(const char *name)
{
    return (tspec){.name = name, .type = DI_GGML_F32, .n_dims = 1, .dims = {4}, .data = four_floats, .nbytes = 16};
}

static int gg_open(const wbuf *b, di_gguf **g, di_err *e)
{
    di_err_clear(e);
    *g = NULL;
    return di_gguf_open_mem(b->p, b->n, "synthetic.gguf", g, e);
}

/* opening must fail with DI_EFORMAT and a message naming the file and containing each of needles */
static void expect_format_error(const wbuf *b, const char *needle1, const char *needle2)
{
    di_gguf *g = NULL;
    di_err e;
    int rc = gg_open(b, &g, &e);
    cr_assert_eq(rc, DI_EFORMAT, "expected DI_EFORMAT, got %d (%s)", rc, e.msg);
    cr_assert_null(g);
    cr_assert(!strncmp(e.msg, "synthetic.gguf: ", 16), "message does not start with the file: %s", e.msg);
    if (needle1) cr_assert(strstr(e.msg, needle1), "message lacks \"%s\": %s", needle1, e.msg);
    if (needle2) cr_assert(strstr(e.msg, needle2), "message lacks \"%s\": %s", needle2, e.msg);
}

static uint64_t gg_rng(uint64_t *s)
{
    uint64_t x = *s += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* ---------- independent reference conversions (double math) ---------- */

static double ref_half(uint16_t h)
{
    int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return sign ? -v : v;
}

static double ref_bf16(uint16_t h)
{
    int sign = h >> 15, e = (h >> 7) & 255, m = h & 127;
    double v = e == 0 ? ldexp(m, -133) : e == 255 ? (m ? NAN : INFINITY) : ldexp(128 + m, e - 134);
    return sign ? -v : v;
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* a random finite f16 scale: normal most of the time, sometimes subnormal, zero or negative */
static uint16_t random_scale(uint64_t *s)
{
    uint64_t r = gg_rng(s);
    switch (r % 8) {
    case 0: return (uint16_t)(r >> 8) & 0x03ff;          /* subnormal or zero */
    case 1: return 0x8000 | (((uint16_t)(r >> 8)) % 0x7c00); /* negative */
    default: return ((uint16_t)(r >> 8)) % 0x7c00;       /* positive finite */
    }
}

static void expect_value(float got, double want, const char *what, uint64_t i)
{
    if (isnan(want)) {
        cr_assert(isnan(got), "%s[%llu]: got %g, want NaN", what, (unsigned long long)i, got);
        return;
    }
    float w = (float)want;
    cr_assert_eq(bits_of(got), bits_of(w), "%s[%llu]: got %a, want %a", what, (unsigned long long)i, got, w);
}

/* ---------- metadata ---------- */

static wbuf all_types_kvs(uint64_t *n)
{
    wbuf k = {0};
    w_key(&k, "t.u8", DI_GGUF_U8); w_u8(&k, 200);
    w_key(&k, "t.i8", DI_GGUF_I8); w_u8(&k, (uint8_t)-5);
    w_key(&k, "t.u16", DI_GGUF_U16); w_u16(&k, 65000);
    w_key(&k, "t.i16", DI_GGUF_I16); w_u16(&k, (uint16_t)1234);
    w_key(&k, "t.u32", DI_GGUF_U32); w_u32(&k, 4000000000u);
    w_key(&k, "t.i32", DI_GGUF_I32); w_u32(&k, (uint32_t)-70000);
    w_key(&k, "t.f32", DI_GGUF_F32); w_f32(&k, 1e-5f);
    w_key(&k, "t.bool", DI_GGUF_BOOL); w_u8(&k, 1);
    w_key(&k, "t.str", DI_GGUF_STRING); w_str(&k, "llama");
    w_key(&k, "t.u64", DI_GGUF_U64); w_u64(&k, 0xfedcba9876543210ULL);
    w_key(&k, "t.i64", DI_GGUF_I64); w_u64(&k, (uint64_t)-3);
    w_key(&k, "t.f64", DI_GGUF_F64); w_f64(&k, 10000.5);
    w_key(&k, "t.arr_i32", DI_GGUF_ARRAY); w_u32(&k, DI_GGUF_I32); w_u64(&k, 3);
    w_u32(&k, 7); w_u32(&k, (uint32_t)-1); w_u32(&k, 0x7fffffff);
    w_key(&k, "t.arr_str", DI_GGUF_ARRAY); w_u32(&k, DI_GGUF_STRING); w_u64(&k, 3);
    w_str(&k, "a"); w_str(&k, ""); w_str(&k, "hello world");
    w_key(&k, "t.arr_f32", DI_GGUF_ARRAY); w_u32(&k, DI_GGUF_F32); w_u64(&k, 2);
    w_f32(&k, 1.5f); w_f32(&k, 2.5f);
    /* an array of arrays: [[1, 2], ["x"], []] */
    w_key(&k, "t.nested", DI_GGUF_ARRAY); w_u32(&k, DI_GGUF_ARRAY); w_u64(&k, 3);
    w_u32(&k, DI_GGUF_U16); w_u64(&k, 2); w_u16(&k, 1); w_u16(&k, 2);
    w_u32(&k, DI_GGUF_STRING); w_u64(&k, 1); w_str(&k, "x");
    w_u32(&k, DI_GGUF_U8); w_u64(&k, 0);
    w_key(&k, "t.arr_empty", DI_GGUF_ARRAY); w_u32(&k, DI_GGUF_STRING); w_u64(&k, 0);
    w_key(&k, "t.after", DI_GGUF_U32); w_u32(&k, 42); /* found only if the nested array was skipped right */
    *n = 18;
    return k;
}

Test(gguf, metadata_of_every_type)
{
    uint64_t n;
    wbuf k = all_types_kvs(&n);
    tspec t = small_tensor("x");
    wbuf b = gg_build(3, &k, n, &t, 1, 32);
    di_gguf *g;
    di_err e;
    cr_assert_eq(gg_open(&b, &g, &e), 0, "%s", e.msg);
    cr_assert_eq(g->n_kv, n);
    cr_assert_eq(g->version, 3);
    uint64_t u;
    struct { const char *key; uint64_t want; } ints[] = {
        {"t.u8", 200}, {"t.u16", 65000}, {"t.i16", 1234}, {"t.u32", 4000000000u}, {"t.bool", 1},
        {"t.u64", 0xfedcba9876543210ULL}, {"t.after", 42},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        cr_assert_eq(di_gguf_get_u64(g, ints[i].key, &u, &e), 0, "%s: %s", ints[i].key, e.msg);
        cr_assert_eq(u, ints[i].want, "%s: %llu", ints[i].key, (unsigned long long)u);
    }
    const char *negative[] = {"t.i8", "t.i32", "t.i64"};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(di_gguf_get_u64(g, negative[i], &u, &e), DI_EFORMAT, "%s read as %llu", negative[i], (unsigned long long)u);
        cr_assert(strstr(e.msg, negative[i]) && strstr(e.msg, "negative"), "%s", e.msg);
    }
    cr_assert_eq(*(const int8_t *)di_gguf_find(g, "t.i8")->data, -5);
    float f;
    cr_assert_eq(di_gguf_get_f32(g, "t.f32", &f, &e), 0, "%s", e.msg);
    cr_assert_eq(f, 1e-5f);
    cr_assert_eq(di_gguf_get_f32(g, "t.f64", &f, &e), 0, "%s", e.msg);
    cr_assert_eq(f, 10000.5f);
    di_gguf_str s;
    cr_assert_eq(di_gguf_get_str(g, "t.str", &s, &e), 0, "%s", e.msg);
    cr_assert(s.len == 5 && !memcmp(s.ptr, "llama", 5));

    const di_gguf_kv *a = di_gguf_find(g, "t.arr_i32");
    cr_assert(a && a->type == DI_GGUF_ARRAY && a->arr_type == DI_GGUF_I32 && a->arr_len == 3);
    cr_assert_eq(di_gguf_arr_int(a, 0), 7);
    cr_assert_eq(di_gguf_arr_int(a, 1), -1);
    cr_assert_eq(di_gguf_arr_int(a, 2), 0x7fffffff);
    cr_assert_eq(di_gguf_arr_int(a, 3), 0, "out of range is 0");
    a = di_gguf_find(g, "t.arr_str");
    cr_assert(a && a->arr_type == DI_GGUF_STRING && a->arr_len == 3);
    const char *want[] = {"a", "", "hello world"};
    for (uint64_t i = 0; i < 3; i++) {
        cr_assert_eq(di_gguf_arr_str(a, i, &s), 0);
        cr_assert(s.len == strlen(want[i]) && !memcmp(s.ptr, want[i], s.len), "element %llu", (unsigned long long)i);
    }
    cr_assert_neq(di_gguf_arr_str(a, 3, &s), 0, "out of range must fail");
    cr_assert_neq(di_gguf_arr_str(di_gguf_find(g, "t.arr_i32"), 0, &s), 0, "not strings");
    a = di_gguf_find(g, "t.arr_f32");
    cr_assert(a && a->arr_type == DI_GGUF_F32 && a->arr_len == 2);
    float f1;
    memcpy(&f1, a->data + 4, 4);
    cr_assert_eq(f1, 2.5f);
    a = di_gguf_find(g, "t.nested");
    cr_assert(a && a->arr_type == DI_GGUF_ARRAY && a->arr_len == 3);
    a = di_gguf_find(g, "t.arr_empty");
    cr_assert(a && a->arr_len == 0);
    cr_assert_neq(di_gguf_arr_str(a, 0, &s), 0);
    cr_assert_null(di_gguf_find(g, "t.missing"));
    cr_assert_null(di_gguf_find(g, "t.u"), "a prefix of a key is not the key");
    di_gguf_close(g);
    free(k.p);
    free(b.p);
}

Test(gguf, getter_errors_name_the_key)
{
    uint64_t n;
    wbuf k = all_types_kvs(&n);
    wbuf b = gg_build(3, &k, n, NULL, 0, 32);
    di_gguf *g;
    di_err e;
    cr_assert_eq(gg_open(&b, &g, &e), 0, "%s", e.msg);
    uint64_t u;
    float f;
    di_gguf_str s;
    cr_assert_eq(di_gguf_get_u64(g, "llama.block_count", &u, &e), DI_EFORMAT);
    cr_assert(strstr(e.msg, "synthetic.gguf") && strstr(e.msg, "llama.block_count") && strstr(e.msg, "missing"), "%s", e.msg);
    cr_assert_eq(di_gguf_get_u64(g, "t.str", &u, &e), DI_EFORMAT);
    cr_assert(strstr(e.msg, "t.str"), "%s", e.msg);
    cr_assert_eq(di_gguf_get_u64(g, "t.f32", &u, &e), DI_EFORMAT);
    cr_assert_eq(di_gguf_get_f32(g, "t.u32", &f, &e), DI_EFORMAT);
    cr_assert(strstr(e.msg, "t.u32"), "%s", e.msg);
    cr_assert_eq(di_gguf_get_str(g, "t.arr_str", &s, &e), DI_EFORMAT);
    cr_assert(strstr(e.msg, "t.arr_str"), "%s", e.msg);
    cr_assert_eq(di_gguf_get_f32(g, "nope", &f, &e), DI_EFORMAT);
    cr_assert_eq(di_gguf_get_str(g, "nope", &s, &e), DI_EFORMAT);
    cr_assert(strstr(e.msg, "nope"), "%s", e.msg);
    di_gguf_close(g);
    free(k.p);
    free(b.p);
}

/* ---------- tensors of every type ---------- */

typedef struct typed { tspec t; uint8_t *bytes; double *want; } typed;

static typed make_f16_all(void) /* every one of the 65536 halves */
{
    typed x = {.bytes = malloc(65536 * 2), .want = malloc(65536 * sizeof(double))};
    for (uint32_t h = 0; h < 65536; h++) {
        memcpy(x.bytes + 2 * h, &(uint16_t){(uint16_t)h}, 2);
        x.want[h] = ref_half((uint16_t)h);
    }
    x.t = (tspec){.name = "f16.all", .type = DI_GGML_F16, .n_dims = 2, .dims = {256, 256}, .data = x.bytes, .nbytes = 65536 * 2};
    return x;
}

static typed make_bf16_all(void)
{
    typed x = {.bytes = malloc(65536 * 2), .want = malloc(65536 * sizeof(double))};
    for (uint32_t h = 0; h < 65536; h++) {
        memcpy(x.bytes + 2 * h, &(uint16_t){(uint16_t)h}, 2);
        x.want[h] = ref_bf16((uint16_t)h);
    }
    x.t = (tspec){.name = "bf16.all", .type = DI_GGML_BF16, .n_dims = 3, .dims = {16, 4096, 1}, .data = x.bytes, .nbytes = 65536 * 2};
    return x;
}

static typed make_f32(uint64_t seed)
{
    enum { N = 3 * 5 * 7 };
    typed x = {.bytes = malloc(N * 4), .want = malloc(N * sizeof(double))};
    for (int i = 0; i < N; i++) {
        uint32_t u = (uint32_t)gg_rng(&seed);
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f)) f = -0.0f;
        memcpy(x.bytes + 4 * i, &f, 4);
        x.want[i] = f;
    }
    x.t = (tspec){.name = "f32.rand", .type = DI_GGML_F32, .n_dims = 3, .dims = {3, 5, 7}, .data = x.bytes, .nbytes = N * 4};
    return x;
}

/* nblocks random blocks of a quantized type, with values from double math on the bytes */
static typed make_quant(int type, uint64_t dims0, uint64_t dims1, uint64_t seed)
{
    uint64_t n = dims0 * dims1, nb = n / 32;
    size_t bb = type == DI_GGML_Q8_0 ? 34 : type == DI_GGML_Q4_0 ? 18 : 20;
    typed x = {.bytes = malloc(nb * bb), .want = malloc(n * sizeof(double))};
    for (uint64_t b = 0; b < nb; b++) {
        uint8_t *p = x.bytes + b * bb;
        double *w = x.want + b * 32;
        uint16_t d = random_scale(&seed), m = random_scale(&seed);
        memcpy(p, &d, 2);
        double dv = ref_half(d), mv = ref_half(m);
        if (type == DI_GGML_Q8_0) {
            for (int j = 0; j < 32; j++) {
                int8_t q = (int8_t)gg_rng(&seed);
                if (b == 0 && j < 2) q = j ? 127 : -128; /* the extremes */
                p[2 + j] = (uint8_t)q;
                w[j] = (double)(float)((double)q * dv);
            }
            continue;
        }
        uint8_t *qs = p + (type == DI_GGML_Q4_1 ? 4 : 2);
        if (type == DI_GGML_Q4_1) memcpy(p + 2, &m, 2);
        for (int j = 0; j < 16; j++) {
            uint8_t byte = (uint8_t)gg_rng(&seed);
            if (b == 0 && j == 0) byte = 0xf0; /* nibble 0 low, 15 high */
            qs[j] = byte;
            int lo = byte & 15, hi = byte >> 4;
            if (type == DI_GGML_Q4_0) {
                w[j] = (float)((lo - 8) * dv);
                w[j + 16] = (float)((hi - 8) * dv);
            } else { /* q*d is exact; the double sum rounded once to float is the float sum */
                w[j] = (float)(lo * dv + mv);
                w[j + 16] = (float)(hi * dv + mv);
            }
        }
    }
    static const char *names[] = {[DI_GGML_Q4_0] = "q4_0.rand", [DI_GGML_Q4_1] = "q4_1.rand", [DI_GGML_Q8_0] = "q8_0.rand"};
    x.t = (tspec){.name = names[type], .type = (uint32_t)type, .n_dims = 2, .dims = {dims0, dims1}, .data = x.bytes,
                  .nbytes = nb * bb};
    return x;
}

static void check_dequant(const di_gguf *g, const typed *x)
{
    const di_gguf_tensor *t = di_gguf_tensor_find(g, x->t.name);
    cr_assert(t, "tensor %s not found", x->t.name);
    cr_assert_eq(t->type, (int)x->t.type);
    cr_assert_eq(t->n_dims, (int)x->t.n_dims);
    uint64_t n = 1;
    for (uint32_t d = 0; d < x->t.n_dims; d++) {
        cr_assert_eq(t->dims[d], x->t.dims[d]);
        n *= x->t.dims[d];
    }
    for (int d = (int)x->t.n_dims; d < 4; d++) cr_assert_eq(t->dims[d], 1);
    cr_assert_eq(t->n_elems, n);
    cr_assert_eq(t->nbytes, x->t.nbytes);
    cr_assert_eq(memcmp(t->data, x->t.data, t->nbytes), 0, "%s: data points at the wrong bytes", t->name);
    cr_assert_eq((uintptr_t)t->data % 32, (uintptr_t)g->base % 32, "%s: data not aligned in the file", t->name);
    float *out = malloc(n * sizeof(float));
    di_err e;
    cr_assert_eq(di_gguf_to_f32(g, t, out, &e), 0, "%s", e.msg);
    for (uint64_t i = 0; i < n; i++) expect_value(out[i], x->want[i], t->name, i);
    free(out);
}

Test(gguf, dequantizes_every_tensor_type_from_a_mapped_file)
{
    typed xs[] = {
        make_f32(1), make_f16_all(), make_bf16_all(), make_quant(DI_GGML_Q8_0, 64, 9, 2),
        make_quant(DI_GGML_Q4_0, 96, 5, 3), make_quant(DI_GGML_Q4_1, 32, 33, 4),
    };
    enum { NT = sizeof xs / sizeof xs[0] };
    tspec ts[NT];
    for (int i = 0; i < NT; i++) ts[i] = xs[i].t;
    wbuf k = {0};
    w_key(&k, "general.architecture", DI_GGUF_STRING);
    w_str(&k, "llama");
    wbuf b = gg_build(3, &k, 1, ts, NT, 32);

    char path[] = "/tmp/di_gguf_test_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, b.p, b.n), (ssize_t)b.n);
    close(fd);
    di_gguf *g;
    di_err e;
    int rc = di_gguf_open(path, &g, &e);
    unlink(path);
    cr_assert_eq(rc, 0, "%s", e.msg);
    cr_assert(g->mapped);
    cr_assert_eq(g->size, b.n);
    cr_assert_eq(g->n_tensors, NT);
    cr_assert_eq(g->alignment, 32);
    for (int i = 0; i < NT; i++) check_dequant(g, &xs[i]);
    cr_assert_null(di_gguf_tensor_find(g, "output.weight"));
    cr_assert_null(di_gguf_tensor_find(g, "f16"), "a prefix of a name is not the name");
    cr_assert_str_eq(di_ggml_type_name(DI_GGML_Q4_1), "Q4_1");
    cr_assert_str_eq(di_ggml_type_name(99), "unknown");
    di_gguf_close(g);
    for (int i = 0; i < NT; i++) { free(xs[i].bytes); free(xs[i].want); }
    free(k.p);
    free(b.p);
}

Test(gguf, half_special_values)
{
    /* spot values known without any formula, as a check on ref_half itself */
    struct { uint16_t h; float f; } known[] = {
        {0x0000, 0.0f}, {0x8000, -0.0f}, {0x3c00, 1.0f}, {0xc000, -2.0f}, {0x7bff, 65504.0f},
        {0x0001, 5.9604644775390625e-08f}, {0x03ff, 6.097555160522461e-05f}, {0x0400, 6.103515625e-05f},
        {0x7c00, INFINITY}, {0xfc00, -INFINITY}, {0x3555, 0.333251953125f},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        cr_assert_eq(bits_of((float)ref_half(known[i].h)), bits_of(known[i].f), "ref_half(%#x)", known[i].h);
    cr_assert(isnan(ref_half(0x7e00)) && isnan(ref_half(0xfc01)));
    cr_assert_eq(bits_of((float)ref_bf16(0x3f80)), bits_of(1.0f));
    cr_assert_eq(bits_of((float)ref_bf16(0x0001)), 0x00010000u, "bf16 subnormal");
}

Test(gguf, version_2_and_custom_alignment)
{
    wbuf k = {0};
    w_key(&k, "general.alignment", DI_GGUF_U32);
    w_u32(&k, 64);
    typed q = make_quant(DI_GGML_Q4_0, 32, 3, 9);
    tspec ts[] = {small_tensor("a"), q.t, small_tensor("b")};
    wbuf b = gg_build(2, &k, 1, ts, 3, 64);
    di_gguf *g;
    di_err e;
    cr_assert_eq(gg_open(&b, &g, &e), 0, "%s", e.msg);
    cr_assert_eq(g->version, 2);
    cr_assert_eq(g->alignment, 64);
    cr_assert_eq(di_gguf_tensor_find(g, "q4_0.rand")->offset, 64);
    cr_assert_eq(di_gguf_tensor_find(g, "b")->offset, 128);
    cr_assert_eq(((const uint8_t *)di_gguf_tensor_find(g, "q4_0.rand")->data - g->base) % 64, 0);
    check_dequant(g, &q);
    float out[4];
    cr_assert_eq(di_gguf_to_f32(g, di_gguf_tensor_find(g, "b"), out, &e), 0, "%s", e.msg);
    cr_assert_eq(memcmp(out, four_floats, sizeof out), 0);
    di_gguf_close(g);
    free(b.p);
    free(k.p);
    free(q.bytes);
    free(q.want);
}

Test(gguf, bad_alignment_is_named)
{
    struct { uint32_t type; uint64_t value; const char *needle; } cases[] = {
        {DI_GGUF_U32, 48, "power of two"}, {DI_GGUF_U32, 0, "power of two"}, {DI_GGUF_U64, 32, "u32"},
    };
    for (int i = 0; i < 3; i++) {
        wbuf k = {0};
        w_key(&k, "general.alignment", cases[i].type);
        if (cases[i].type == DI_GGUF_U32) w_u32(&k, (uint32_t)cases[i].value);
        else w_u64(&k, cases[i].value);
        tspec t = small_tensor("a");
        wbuf b = gg_build(3, &k, 1, &t, 1, 32);
        expect_format_error(&b, "general.alignment", cases[i].needle);
        free(k.p);
        free(b.p);
    }
}

/* ---------- malformed files ---------- */

/* a small valid file with a bit of everything: every truncation of it must be a clean error */
static wbuf small_valid_file(void)
{
    wbuf k = {0};
    w_key(&k, "general.architecture", DI_GGUF_STRING); w_str(&k, "llama");
    w_key(&k, "llama.embedding_length", DI_GGUF_U32); w_u32(&k, 32);
    w_key(&k, "tok", DI_GGUF_ARRAY); w_u32(&k, DI_GGUF_STRING); w_u64(&k, 2); w_str(&k, "ab"); w_str(&k, "c");
    w_key(&k, "nest", DI_GGUF_ARRAY); w_u32(&k, DI_GGUF_ARRAY); w_u64(&k, 1); w_u32(&k, DI_GGUF_I8); w_u64(&k, 1); w_u8(&k, 3);
    static uint8_t q[18 * 2];
    for (int i = 0; i < (int)sizeof q; i++) q[i] = (uint8_t)(i * 37);
    tspec ts[] = {small_tensor("norm"), {.name = "w", .type = DI_GGML_Q4_0, .n_dims = 2, .dims = {32, 2}, .data = q, .nbytes = sizeof q}};
    wbuf b = gg_build(3, &k, 4, ts, 2, 32);
    free(k.p);
    return b;
}

Test(gguf, every_truncation_is_a_clean_error)
{
    wbuf b = small_valid_file();
    di_gguf *g;
    di_err e;
    cr_assert_eq(gg_open(&b, &g, &e), 0, "%s", e.msg);
    di_gguf_close(g);
    for (size_t n = 0; n < b.n; n++) {
        /* an exact-size copy, so a sanitizer build sees any read past the end */
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, b.p, n);
        g = (di_gguf *)1;
        di_err_clear(&e);
        int rc = di_gguf_open_mem(p, n, "cut.gguf", &g, &e);
        cr_assert_eq(rc, DI_EFORMAT, "truncated at %zu: rc %d (%s)", n, rc, e.msg);
        cr_assert_null(g, "truncated at %zu: handle set", n);
        cr_assert(!strncmp(e.msg, "cut.gguf: ", 10), "truncated at %zu: %s", n, e.msg);
        free(p);
    }
    free(b.p);
}

Test(gguf, bad_magic_and_versions)
{
    wbuf b = small_valid_file();
    memcpy(b.p, "GGML", 4);
    expect_format_error(&b, "not a GGUF file", NULL);
    memcpy(b.p, "GGUF", 4);
    uint32_t v = 1;
    memcpy(b.p + 4, &v, 4);
    expect_format_error(&b, "version 1", "not supported");
    v = 4;
    memcpy(b.p + 4, &v, 4);
    expect_format_error(&b, "version 4", NULL);
    v = 0x03000000; /* v3 written big-endian */
    memcpy(b.p + 4, &v, 4);
    expect_format_error(&b, "big-endian", NULL);
    free(b.p);
}

Test(gguf, absurd_counts_are_rejected_before_allocating)
{
    wbuf b = small_valid_file();
    uint64_t huge = 1ULL << 62;
    memcpy(b.p + 16, &huge, 8); /* kv count */
    expect_format_error(&b, "metadata entries", NULL);
    free(b.p);
    b = small_valid_file();
    memcpy(b.p + 8, &huge, 8); /* tensor count */
    expect_format_error(&b, "tensors", NULL);
    free(b.p);

    struct { uint32_t et; uint64_t count; } arrays[] = {{DI_GGUF_STRING, huge}, {DI_GGUF_U64, UINT64_MAX / 4}, {DI_GGUF_ARRAY, huge}};
    for (int i = 0; i < 3; i++) {
        wbuf k = {0};
        w_key(&k, "tokenizer.ggml.tokens", DI_GGUF_ARRAY);
        w_u32(&k, arrays[i].et);
        w_u64(&k, arrays[i].count);
        w_str(&k, "x");
        b = gg_build(3, &k, 1, NULL, 0, 32);
        expect_format_error(&b, "tokenizer.ggml.tokens", NULL);
        free(b.p);
        free(k.p);
    }
    wbuf k = {0};
    w_key(&k, "general.name", DI_GGUF_STRING);
    w_u64(&k, UINT64_MAX - 3); /* a string length that wraps a pointer */
    b = gg_build(3, &k, 1, NULL, 0, 32);
    expect_format_error(&b, "general.name", "past the end");
    free(b.p);
    free(k.p);
}

Test(gguf, bad_metadata_is_named)
{
    wbuf k = {0};
    w_key(&k, "general.weird", 13);
    w_u32(&k, 0);
    wbuf b = gg_build(3, &k, 1, NULL, 0, 32);
    expect_format_error(&b, "general.weird", "unknown value type 13");
    free(b.p);
    free(k.p);

    k = (wbuf){0};
    w_key(&k, "arr.weird", DI_GGUF_ARRAY);
    w_u32(&k, 77);
    w_u64(&k, 1);
    w_u64(&k, 0);
    b = gg_build(3, &k, 1, NULL, 0, 32);
    expect_format_error(&b, "arr.weird", "unknown value type 77");
    free(b.p);
    free(k.p);

    k = (wbuf){0}; /* arrays nested 20 deep */
    w_key(&k, "arr.deep", DI_GGUF_ARRAY);
    for (int i = 0; i < 20; i++) { w_u32(&k, DI_GGUF_ARRAY); w_u64(&k, 1); }
    w_u32(&k, DI_GGUF_U8); w_u64(&k, 0);
    b = gg_build(3, &k, 1, NULL, 0, 32);
    expect_format_error(&b, "arr.deep", "deep");
    free(b.p);
    free(k.p);

    k = (wbuf){0};
    w_key(&k, "dup.key", DI_GGUF_U8); w_u8(&k, 1);
    w_key(&k, "other", DI_GGUF_U8); w_u8(&k, 1);
    w_key(&k, "dup.key", DI_GGUF_U32); w_u32(&k, 2);
    b = gg_build(3, &k, 3, NULL, 0, 32);
    expect_format_error(&b, "dup.key", "more than once");
    free(b.p);
    free(k.p);

    k = (wbuf){0};
    w_key(&k, "", DI_GGUF_U8); w_u8(&k, 1);
    b = gg_build(3, &k, 1, NULL, 0, 32);
    expect_format_error(&b, "metadata entry 0", NULL);
    free(b.p);
    free(k.p);
}

static void expect_tensor_error(tspec t, const char *needle1, const char *needle2)
{
    tspec ts[] = {small_tensor("ok"), t};
    wbuf b = gg_build(3, NULL, 0, ts, 2, 32);
    expect_format_error(&b, needle1, needle2);
    free(b.p);
}

Test(gguf, bad_tensor_infos_are_named)
{
    tspec t = small_tensor("blk.0.ffn_up.weight");
    t.type = 99;
    expect_tensor_error(t, "blk.0.ffn_up.weight", "type 99");

    t = small_tensor("past.end");
    t.set_offset = true;
    t.offset = 1 << 20;
    expect_tensor_error(t, "past.end", "past the end");
    t.offset = UINT64_MAX - 31; /* offset + size wraps */
    expect_tensor_error(t, "past.end", "past the end");

    t = small_tensor("misaligned");
    t.set_offset = true;
    t.offset = 36;
    expect_tensor_error(t, "misaligned", "alignment");

    t = small_tensor("big");
    t.n_dims = 3;
    t.dims[0] = t.dims[1] = t.dims[2] = 1ULL << 32;
    expect_tensor_error(t, "big", "overflows");
    t.n_dims = 1;
    t.dims[0] = 1ULL << 62; /* elements fit in int64, bytes do not fit in 64 bits */
    expect_tensor_error(t, "big", "overflows");
    t.dims[0] = 1ULL << 40; /* fits, but not in this file */
    expect_tensor_error(t, "big", "past the end");

    t = small_tensor("zero");
    t.n_dims = 2;
    t.dims[1] = 0;
    expect_tensor_error(t, "zero", "size 0");

    t = small_tensor("nd");
    t.n_dims = 0;
    expect_tensor_error(t, "nd", "0 dimensions");
    t.n_dims = 5;
    t.dims[1] = t.dims[2] = t.dims[3] = t.dims[4] = 1;
    expect_tensor_error(t, "nd", "5 dimensions");

    t = (tspec){.name = "rows", .type = DI_GGML_Q4_1, .n_dims = 2, .dims = {48, 2}, .nbytes = 60};
    expect_tensor_error(t, "rows", "multiple of the Q4_1 block");

    expect_tensor_error(small_tensor("ok"), "ok", "more than once");

    char name[300];
    memset(name, 'n', sizeof name);
    name[256] = 0;
    expect_tensor_error(small_tensor(name), "256 bytes", NULL);
    expect_tensor_error(small_tensor(""), "0 bytes", NULL);
}

/* llama.cpp's rule: tensor i starts where tensor i-1 ends, padded. Anything else means two
 * tensors read the same bytes (or bytes nobody wrote) without any other error. */
Test(gguf, tensor_data_must_follow_the_previous_tensor)
{
    /* two offsets sharing a range: b claims a's bytes */
    tspec ts[3] = {small_tensor("a"), small_tensor("b"), small_tensor("c")};
    ts[1].set_offset = true;
    ts[1].offset = 0;
    wbuf b = gg_build(3, NULL, 0, ts, 3, 32);
    expect_format_error(&b, "tensor b: data offset 0, expected 32", "overlap");
    free(b.p);

    /* a type changed so that a grows into b: 16 F32 elements are 64 bytes, the file left 32 */
    ts[1] = small_tensor("b");
    ts[0].dims[0] = 16;
    b = gg_build(3, NULL, 0, ts, 3, 32);
    expect_format_error(&b, "tensor b: data offset 32, expected 64 (where a ends", "overlap");
    free(b.p);

    /* a gap: b starts a block later than a's end */
    ts[0] = small_tensor("a");
    ts[1].set_offset = true;
    ts[1].offset = 64;
    b = gg_build(3, NULL, 0, ts, 3, 32);
    expect_format_error(&b, "tensor b: data offset 64, expected 32", "gap");
    free(b.p);

    /* the same shapes, offsets as written: opens, and each tensor reads its own bytes */
    ts[1] = small_tensor("b");
    b = gg_build(3, NULL, 0, ts, 3, 32);
    di_gguf *g;
    di_err e;
    cr_assert_eq(gg_open(&b, &g, &e), 0, "%s", e.msg);
    cr_assert_eq(di_gguf_tensor_find(g, "c")->offset, 64);
    di_gguf_close(g);
    free(b.p);
}

Test(gguf, longest_tensor_name_and_lookups)
{
    char name[256];
    memset(name, 'n', 255);
    name[255] = 0;
    tspec ts[] = {small_tensor(name), small_tensor("x")};
    wbuf b = gg_build(3, NULL, 0, ts, 2, 32);
    di_gguf *g;
    di_err e;
    cr_assert_eq(gg_open(&b, &g, &e), 0, "%s", e.msg);
    cr_assert_not_null(di_gguf_tensor_find(g, name));
    cr_assert_not_null(di_gguf_tensor_find(g, "x"));
    cr_assert_null(di_gguf_tensor_find(g, "y"));
    cr_assert_null(di_gguf_tensor_find(g, ""));
    cr_assert_eq(g->n_kv, 0);
    cr_assert_null(di_gguf_find(g, "general.architecture"));
    di_gguf_close(g);
    free(b.p);
}

Test(gguf, missing_file_is_a_usage_error)
{
    di_gguf *g = (di_gguf *)1;
    di_err e = {0};
    cr_assert_eq(di_gguf_open("/nonexistent/dir/model.gguf", &g, &e), DI_EUSAGE);
    cr_assert_null(g);
    cr_assert(strstr(e.msg, "/nonexistent/dir/model.gguf"), "%s", e.msg);
    cr_assert_eq(di_gguf_open("/tmp", &g, &e), DI_EUSAGE, "a directory: %s", e.msg);
    char path[] = "/tmp/di_gguf_empty_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    int rc = di_gguf_open(path, &g, &e);
    unlink(path);
    cr_assert_eq(rc, DI_EFORMAT, "an empty file: %s", e.msg);
    cr_assert(strstr(e.msg, "too short"), "%s", e.msg);
    cr_assert_eq(di_gguf_open_mem(NULL, 0, "nothing", &g, &e), DI_EFORMAT);
}

/* ---------- llama metadata cross-checks (model/config.c, the tokenizer's token types) ---------- */

/* A small llama file whose every value a test can change: dim 8, 2 heads of 4, 1 KV head. */
typedef struct llama_opts {
    uint32_t block_count, embd_rows, n_tokens;
    int64_t vocab_size, rope_dim, key_length;   /* -1: the key is absent */
    float eps, rope_base;
    int layer_tensors;                          /* blk.<n>.attn_norm.weight for n below this */
    int bad_type_at;                            /* -1, or the token whose token_type is bad_type */
    int32_t bad_type;
} llama_opts;

static llama_opts llama_defaults(void)
{
    return (llama_opts){.block_count = 2, .embd_rows = 6, .n_tokens = 6, .vocab_size = 6, .rope_dim = 4,
                        .key_length = 4, .eps = 1e-5f, .rope_base = 10000.0f, .layer_tensors = 2, .bad_type_at = -1};
}

static void w_u32_kv(wbuf *k, uint64_t *n, const char *key, uint32_t v) { w_key(k, key, DI_GGUF_U32); w_u32(k, v); (*n)++; }
static void w_f32_kv(wbuf *k, uint64_t *n, const char *key, float v) { w_key(k, key, DI_GGUF_F32); w_f32(k, v); (*n)++; }
static void w_str_kv(wbuf *k, uint64_t *n, const char *key, const char *v) { w_key(k, key, DI_GGUF_STRING); w_str(k, v); (*n)++; }

static wbuf llama_file(const llama_opts *o)
{
    wbuf k = {0};
    uint64_t n = 0;
    w_str_kv(&k, &n, "general.architecture", "llama");
    w_u32_kv(&k, &n, "llama.block_count", o->block_count);
    w_u32_kv(&k, &n, "llama.embedding_length", 8);
    w_u32_kv(&k, &n, "llama.feed_forward_length", 16);
    w_u32_kv(&k, &n, "llama.attention.head_count", 2);
    w_u32_kv(&k, &n, "llama.attention.head_count_kv", 1);
    w_u32_kv(&k, &n, "llama.context_length", 64);
    w_f32_kv(&k, &n, "llama.attention.layer_norm_rms_epsilon", o->eps);
    w_f32_kv(&k, &n, "llama.rope.freq_base", o->rope_base);
    if (o->rope_dim >= 0) w_u32_kv(&k, &n, "llama.rope.dimension_count", (uint32_t)o->rope_dim);
    if (o->key_length >= 0) w_u32_kv(&k, &n, "llama.attention.key_length", (uint32_t)o->key_length);
    if (o->vocab_size >= 0) w_u32_kv(&k, &n, "llama.vocab_size", (uint32_t)o->vocab_size);
    w_str_kv(&k, &n, "tokenizer.ggml.model", "gpt2");
    w_str_kv(&k, &n, "tokenizer.ggml.pre", "smollm");
    w_key(&k, "tokenizer.ggml.tokens", DI_GGUF_ARRAY); w_u32(&k, DI_GGUF_STRING); w_u64(&k, o->n_tokens); n++;
    for (uint32_t i = 0; i < o->n_tokens; i++) {
        char piece[8];
        snprintf(piece, sizeof piece, "%c", 'a' + (int)(i % 26));
        w_str(&k, piece);
    }
    w_key(&k, "tokenizer.ggml.token_type", DI_GGUF_ARRAY); w_u32(&k, DI_GGUF_I32); w_u64(&k, o->n_tokens); n++;
    for (uint32_t i = 0; i < o->n_tokens; i++) w_u32(&k, (int)i == o->bad_type_at ? (uint32_t)o->bad_type : 1u);
    w_key(&k, "tokenizer.ggml.merges", DI_GGUF_ARRAY); w_u32(&k, DI_GGUF_STRING); w_u64(&k, 0); n++;
    w_u32_kv(&k, &n, "tokenizer.ggml.bos_token_id", 0);
    w_u32_kv(&k, &n, "tokenizer.ggml.eos_token_id", 1);

    static char names[8][40];
    tspec ts[9];
    int nt = 0;
    ts[nt++] = (tspec){.name = "token_embd.weight", .type = DI_GGML_F32, .n_dims = 2, .dims = {8, o->embd_rows},
                       .nbytes = 8 * 4 * (size_t)o->embd_rows};
    for (int l = 0; l < o->layer_tensors && l < 8; l++) {
        snprintf(names[l], sizeof names[l], "blk.%d.attn_norm.weight", l);
        ts[nt++] = (tspec){.name = names[l], .type = DI_GGML_F32, .n_dims = 1, .dims = {8}, .nbytes = 32};
    }
    wbuf b = gg_build(3, &k, n, ts, nt, 32);
    free(k.p);
    return b;
}

/* The file opens; di_config_read fails with DI_EFORMAT naming the file and both needles. */
static void expect_config_error(const llama_opts *o, const char *needle1, const char *needle2)
{
    wbuf b = llama_file(o);
    di_gguf *g;
    di_err e;
    cr_assert_eq(gg_open(&b, &g, &e), 0, "%s", e.msg);
    di_config c;
    di_err_clear(&e);
    int rc = di_config_read(g, &c, &e);
    cr_assert_eq(rc, DI_EFORMAT, "expected DI_EFORMAT naming %s, got %d (%s)", needle1, rc, e.msg);
    cr_assert(!strncmp(e.msg, "synthetic.gguf: ", 16), "message does not start with the file: %s", e.msg);
    cr_assert(strstr(e.msg, needle1), "message lacks \"%s\": %s", needle1, e.msg);
    if (needle2) cr_assert(strstr(e.msg, needle2), "message lacks \"%s\": %s", needle2, e.msg);
    di_gguf_close(g);
    free(b.p);
}

Test(gguf, llama_config_of_a_consistent_file)
{
    llama_opts o = llama_defaults();
    wbuf b = llama_file(&o);
    di_gguf *g;
    di_err e;
    cr_assert_eq(gg_open(&b, &g, &e), 0, "%s", e.msg);
    di_config c;
    cr_assert_eq(di_config_read(g, &c, &e), 0, "%s", e.msg);
    cr_assert(c.n_layers == 2 && c.dim == 8 && c.head_dim == 4 && c.n_kv_heads == 1 && c.vocab == 6 && c.ctx_train == 64);
    cr_assert(c.eps == 1e-5f && c.rope_base == 10000.0f);
    di_tokenizer *t;
    cr_assert_eq(di_tokenizer_load(g, &t, &e), 0, "%s", e.msg);
    cr_assert_eq(di_tokenizer_vocab_size(t), 6);
    di_tokenizer_free(t);
    di_gguf_close(g);
    free(b.p);
    /* the optional keys may be absent: the values come from the tensors and the defaults */
    o.vocab_size = o.rope_dim = o.key_length = -1;
    b = llama_file(&o);
    cr_assert_eq(gg_open(&b, &g, &e), 0, "%s", e.msg);
    cr_assert_eq(di_config_read(g, &c, &e), 0, "%s", e.msg);
    cr_assert_eq(c.vocab, 6);
    di_gguf_close(g);
    free(b.p);
}

/* A token list shorter (or longer) than token_embd's rows: generated ids past the list
 * used to print nothing, with exit 0. llama.vocab_size, when present, must agree too. */
Test(gguf, llama_token_count_must_match_token_embd_rows)
{
    llama_opts o = llama_defaults();
    o.n_tokens = 5;
    o.vocab_size = -1;
    expect_config_error(&o, "tokenizer.ggml.tokens has 5 tokens", "token_embd.weight has 6 rows");
    o.n_tokens = 7;
    expect_config_error(&o, "tokenizer.ggml.tokens has 7 tokens", "token_embd.weight");
    o = llama_defaults();
    o.vocab_size = 5;
    expect_config_error(&o, "llama.vocab_size = 5", "token_embd.weight");
}

/* llama.block_count below the file's layers used to run the first layers only. */
Test(gguf, llama_block_count_must_cover_the_layer_tensors)
{
    llama_opts o = llama_defaults();
    o.block_count = 1;
    expect_config_error(&o, "tensor blk.1.attn_norm.weight belongs to layer 1", "llama.block_count = 1");
    o.layer_tensors = 5;
    o.block_count = 3;
    expect_config_error(&o, "blk.3.attn_norm.weight", "llama.block_count = 3");
}

/* NaN, infinite, zero or negative epsilon or rope base used to give end-of-text at once. */
Test(gguf, llama_epsilon_and_rope_base_must_be_positive_and_finite)
{
    const float bad[] = {NAN, -1.0f, 0.0f, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        llama_opts o = llama_defaults();
        o.eps = bad[i];
        expect_config_error(&o, "llama.attention.layer_norm_rms_epsilon", "positive and finite");
        o = llama_defaults();
        o.rope_base = bad[i];
        expect_config_error(&o, "llama.rope.freq_base", "positive and finite");
    }
}

/* llama.rope.dimension_count used to be ignored; llama rotates whole heads only. */
Test(gguf, llama_rope_dimension_is_the_head_dim)
{
    llama_opts o = llama_defaults();
    o.rope_dim = 6;
    expect_config_error(&o, "llama.rope.dimension_count = 6 is larger than the head dim 4", NULL);
    o.rope_dim = 2;
    expect_config_error(&o, "llama.rope.dimension_count = 2, not the head dim 4", "not supported");
    o = llama_defaults();
    o.key_length = 8;
    expect_config_error(&o, "llama.attention.key_length = 8", "head dim");
}

/* Token types outside llama.cpp's 1..6 used to be taken for NORMAL. */
Test(gguf, unknown_token_types_are_rejected)
{
    const int32_t bad[] = {0, 7, 99, -1};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        llama_opts o = llama_defaults();
        o.bad_type_at = 3;
        o.bad_type = bad[i];
        wbuf b = llama_file(&o);
        di_gguf *g;
        di_err e;
        cr_assert_eq(gg_open(&b, &g, &e), 0, "%s", e.msg);
        di_tokenizer *t = NULL;
        cr_assert_eq(di_tokenizer_load(g, &t, &e), DI_EFORMAT, "token type %d was accepted", bad[i]);
        cr_assert_null(t);
        char want[80];
        snprintf(want, sizeof want, "tokenizer.ggml.token_type[3] = %d is not a known token type", bad[i]);
        cr_assert(strstr(e.msg, want) && strstr(e.msg, "synthetic.gguf"), "%s", e.msg);
        di_gguf_close(g);
        free(b.p);
    }
}

/* ---------- the fuzz corpus ---------- */

static void write_file(const char *path, const wbuf *b)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot write %s", path);
    cr_assert_eq(fwrite(b->p, 1, b->n, f), b->n);
    fclose(f);
}

/* the generated edge cases: each must be rejected cleanly */
static void write_edge_corpus(const char *dir)
{
    char path[4096];
    uint64_t huge = 1ULL << 62;
    uint32_t v1 = 1;
    struct { const char *name; size_t at; const void *bytes; size_t len; } patches[] = {
        {"gen_edge_kv_count", 16, &huge, 8},
        {"gen_edge_tensor_count", 8, &huge, 8},
        {"gen_edge_v1", 4, &v1, 4},
        {"gen_edge_magic", 0, "GGML", 4},
    };
    for (size_t i = 0; i < sizeof patches / sizeof patches[0]; i++) {
        wbuf b = small_valid_file();
        memcpy(b.p + patches[i].at, patches[i].bytes, patches[i].len);
        snprintf(path, sizeof path, "%s/%s", dir, patches[i].name);
        write_file(path, &b);
        free(b.p);
    }
    wbuf b = small_valid_file();
    b.n = 100; /* cut inside the metadata */
    snprintf(path, sizeof path, "%s/gen_edge_truncated", dir);
    write_file(path, &b);
    free(b.p);

    tspec t = small_tensor("t");
    t.type = 99;
    tspec ts[] = {small_tensor("ok"), t};
    b = gg_build(3, NULL, 0, ts, 2, 32);
    snprintf(path, sizeof path, "%s/gen_edge_type99", dir);
    write_file(path, &b);
    free(b.p);
    ts[1] = small_tensor("t");
    ts[1].n_dims = 3;
    ts[1].dims[0] = ts[1].dims[1] = ts[1].dims[2] = 1ULL << 32;
    b = gg_build(3, NULL, 0, ts, 2, 32);
    snprintf(path, sizeof path, "%s/gen_edge_dims_overflow", dir);
    write_file(path, &b);
    free(b.p);

    wbuf k = {0};
    w_key(&k, "arr.deep", DI_GGUF_ARRAY);
    for (int i = 0; i < 20; i++) { w_u32(&k, DI_GGUF_ARRAY); w_u64(&k, 1); }
    w_u32(&k, DI_GGUF_U8); w_u64(&k, 0);
    b = gg_build(3, &k, 1, NULL, 0, 32);
    snprintf(path, sizeof path, "%s/gen_edge_deep_array", dir);
    write_file(path, &b);
    free(b.p);
    free(k.p);
}

/* the generated seeds: small valid files covering every metadata and tensor type */
static void write_seed_corpus(const char *dir)
{
    char path[4096];
    wbuf b = small_valid_file();
    snprintf(path, sizeof path, "%s/gen_valid_small", dir);
    write_file(path, &b);
    free(b.p);

    uint64_t n;
    wbuf k = all_types_kvs(&n);
    typed xs[] = {make_f32(5), make_quant(DI_GGML_Q8_0, 32, 2, 6), make_quant(DI_GGML_Q4_0, 32, 1, 7),
                  make_quant(DI_GGML_Q4_1, 64, 1, 8)};
    tspec ts[6];
    for (int i = 0; i < 4; i++) ts[i] = xs[i].t;
    static uint16_t halves[8] = {0x0000, 0x8000, 0x0001, 0x03ff, 0x3c00, 0x7bff, 0x7c00, 0x7e00};
    ts[4] = (tspec){.name = "f16", .type = DI_GGML_F16, .n_dims = 2, .dims = {4, 2}, .data = halves, .nbytes = 16};
    ts[5] = (tspec){.name = "bf16", .type = DI_GGML_BF16, .n_dims = 4, .dims = {2, 2, 1, 2}, .data = halves, .nbytes = 16};
    b = gg_build(3, &k, n, ts, 6, 32);
    snprintf(path, sizeof path, "%s/gen_valid_all_types", dir);
    write_file(path, &b);
    free(b.p);
    /* v2, aligned to 64, with the keys the harness reads */
    w_key(&k, "general.alignment", DI_GGUF_U32); w_u32(&k, 64);
    w_key(&k, "llama.attention.layer_norm_rms_epsilon", DI_GGUF_F32); w_f32(&k, 1e-5f);
    w_key(&k, "llama.embedding_length", DI_GGUF_U64); w_u64(&k, 576);
    b = gg_build(2, &k, n + 3, ts, 6, 64);
    snprintf(path, sizeof path, "%s/gen_valid_v2_align64", dir);
    write_file(path, &b);
    free(b.p);
    for (int i = 0; i < 4; i++) { free(xs[i].bytes); free(xs[i].want); }
    free(k.p);
    /* a llama file that passes the config and tokenizer checks, and two that do not */
    llama_opts o = llama_defaults();
    b = llama_file(&o);
    snprintf(path, sizeof path, "%s/gen_valid_llama", dir);
    write_file(path, &b);
    free(b.p);
    o.n_tokens = 5;
    b = llama_file(&o);
    snprintf(path, sizeof path, "%s/gen_edge_llama_short_vocab", dir);
    write_file(path, &b);
    free(b.p);
    tspec ov[3] = {small_tensor("a"), small_tensor("b"), small_tensor("c")};
    ov[0].dims[0] = 16;
    b = gg_build(3, NULL, 0, ov, 3, 32);
    snprintf(path, sizeof path, "%s/gen_edge_overlap", dir);
    write_file(path, &b);
    free(b.p);
    write_edge_corpus(dir);
}

static bool gen_valid_name(const char *name) { return strstr(name, "valid") != NULL && strncmp(name, "crash", 5); }

/* Every file in tests/fuzz/corpus/ (seeds, edge cases, crashers the fuzzer found) goes through
 * di_gguf_open_mem: none may crash; files named *valid* must open, and then every tensor is
 * dequantized and the llama config and tokenizer are read, as the fuzz harness does
 * (gen_valid_llama must pass those too). */
Test(gguf, fuzz_corpus_replays_cleanly, .timeout = 120)
{
    const char *dir = DI_SOURCE_DIR "/tests/fuzz/corpus";
    const char *w = getenv("DI_GGUF_WRITE_CORPUS");
    if (w && *w && strcmp(w, "0")) write_seed_corpus(dir);
    DIR *d = opendir(dir);
    cr_assert(d, "cannot open %s", dir);
    int files = 0, valid = 0;
    for (struct dirent *ent; (ent = readdir(d));) {
        if (ent->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        FILE *f = fopen(path, "rb");
        cr_assert(f, "%s", path);
        fseek(f, 0, SEEK_END);
        long size = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *p = malloc(size ? (size_t)size : 1);
        cr_assert_eq(fread(p, 1, (size_t)size, f), (size_t)size);
        fclose(f);
        di_gguf *g = NULL;
        di_err e = {0};
        int rc = di_gguf_open_mem(p, (size_t)size, ent->d_name, &g, &e);
        if (gen_valid_name(ent->d_name)) cr_assert_eq(rc, 0, "%s must open: %s", ent->d_name, e.msg);
        if (rc) {
            cr_assert_null(g);
            cr_assert(rc == DI_EFORMAT && !strncmp(e.msg, ent->d_name, strlen(ent->d_name)), "%s: rc %d: %s", ent->d_name, rc, e.msg);
        } else {
            valid++;
            for (uint64_t i = 0; i < g->n_tensors; i++) {
                float *out = malloc(g->tensors[i].n_elems * sizeof(float));
                /* a type ggml knows but detinfer does not convert opens, and converting it is an error */
                int want = di_ggml_type_supported(g->tensors[i].type) ? 0 : DI_EFORMAT;
                cr_assert_eq(di_gguf_to_f32(g, &g->tensors[i], out, &e), want, "%s: %s", ent->d_name, e.msg);
                free(out);
            }
            di_config c;
            di_tokenizer *t = NULL;
            int crc = di_config_read(g, &c, &e), trc = di_tokenizer_load(g, &t, &e);
            if (!strcmp(ent->d_name, "gen_valid_llama"))
                cr_assert(!crc && !trc, "%s must pass the llama checks: %s", ent->d_name, e.msg);
            di_tokenizer_free(t);
            di_gguf_close(g);
        }
        free(p);
        files++;
    }
    closedir(d);
    cr_assert_geq(files, 3, "the corpus in %s is missing", dir);
    cr_assert_geq(valid, 3, "the generated seeds did not open");
}

/* ---------- the real model ---------- */

static const char *gg_model_path(void)
{
    static char path[4096];
    const char *env = getenv("DETINFER_MODEL");
    if (env && *env) return env;
    const char *home = getenv("HOME");
    snprintf(path, sizeof path, "%s/.cache/detinfer/models/" GG_MODEL_NAME, home ? home : ".");
    return path;
}

static di_gguf *open_model_or_skip(void)
{
    const char *path = gg_model_path();
    if (access(path, R_OK) != 0) cr_skip_test("model %s is absent (set DETINFER_MODEL or run scripts/fetch-model)", path);
    di_gguf *g;
    di_err e;
    cr_assert_eq(di_gguf_open(path, &g, &e), 0, "%s", e.msg);
    return g;
}

Test(gguf, real_model_metadata_and_tensors)
{
    di_gguf *g = open_model_or_skip();
    di_err e;
    cr_assert_eq(g->version, 3);
    cr_assert_eq(g->n_tensors, 272);
    uint64_t u;
    cr_assert_eq(di_gguf_get_u64(g, "llama.embedding_length", &u, &e), 0, "%s", e.msg);
    cr_assert_eq(u, 576);
    di_gguf_str s;
    cr_assert_eq(di_gguf_get_str(g, "general.architecture", &s, &e), 0, "%s", e.msg);
    cr_assert(s.len == 5 && !memcmp(s.ptr, "llama", 5));
    const di_gguf_tensor *t = di_gguf_tensor_find(g, "token_embd.weight");
    cr_assert(t);
    cr_assert_eq(t->type, DI_GGML_Q8_0);
    cr_assert(t->n_dims == 2 && t->dims[0] == 576 && t->dims[1] == 49152);
    cr_assert_eq(t->nbytes, (size_t)576 * 49152 / 32 * 34);
    const di_gguf_kv *toks = di_gguf_find(g, "tokenizer.ggml.tokens");
    cr_assert(toks && toks->type == DI_GGUF_ARRAY && toks->arr_type == DI_GGUF_STRING);
    cr_assert_eq(toks->arr_len, 49152);
    cr_assert_eq(di_gguf_arr_str(toks, 49151, &s), 0);
    cr_assert(s.len > 0);
    const di_gguf_kv *merges = di_gguf_find(g, "tokenizer.ggml.merges");
    cr_assert(merges && merges->arr_len == 48900);
    cr_assert_eq(di_gguf_arr_str(merges, 0, &s), 0);
    cr_assert(memchr(s.ptr, ' ', s.len), "a merge is two tokens separated by a space");
    di_gguf_close(g);
}

/* The constants are what tests/data/gguf_spotcheck.py printed: the python `gguf` package's
 * own dequantization of the same file (gguf 0.19.0, numpy 2.4). Re-run the script to check. */
Test(gguf, real_model_dequantizes_like_python_gguf)
{
    di_gguf *g = open_model_or_skip();
    struct { const char *tensor; uint64_t index; uint32_t bits; } spots[] = {
        {"blk.0.attn_q.weight", 0, 0xbdc54000}, {"blk.0.attn_q.weight", 1, 0x3e212000},
        {"blk.0.attn_q.weight", 15, 0x3f09b000}, {"blk.0.attn_q.weight", 16, 0xbe648000},
        {"blk.0.attn_q.weight", 31, 0xbdc54000}, {"blk.0.attn_q.weight", 32, 0xbeb14000},
        {"blk.0.attn_q.weight", 1000, 0xbe0dc000}, {"blk.0.attn_q.weight", 172877, 0xbc4a0000},
        {"blk.0.attn_q.weight", 331775, 0xbe830000},
        {"token_embd.weight", 0, 0xbdda3400}, {"token_embd.weight", 1, 0x3d071400},
        {"token_embd.weight", 17, 0x3dab7200}, {"token_embd.weight", 57605, 0xbb326000},
        {"token_embd.weight", 28311551, 0xbd2ad000},
        {"blk.0.attn_norm.weight", 0, 0x3c650000}, {"blk.0.attn_norm.weight", 575, 0xbd1d0000},
    };
    const di_gguf_tensor *q = di_gguf_tensor_find(g, "blk.0.attn_q.weight");
    cr_assert(q && q->type == DI_GGML_Q4_1 && q->dims[0] == 576 && q->dims[1] == 576);
    const char *last = NULL;
    float *out = NULL;
    di_err e;
    for (size_t i = 0; i < sizeof spots / sizeof spots[0]; i++) {
        if (!last || strcmp(last, spots[i].tensor)) {
            const di_gguf_tensor *t = di_gguf_tensor_find(g, spots[i].tensor);
            cr_assert(t, "%s", spots[i].tensor);
            free(out);
            out = malloc(t->n_elems * sizeof(float));
            cr_assert_eq(di_gguf_to_f32(g, t, out, &e), 0, "%s", e.msg);
            last = spots[i].tensor;
        }
        cr_assert_eq(bits_of(out[spots[i].index]), spots[i].bits, "%s[%llu]: %a, python gguf says %#x", spots[i].tensor,
                     (unsigned long long)spots[i].index, out[spots[i].index], spots[i].bits);
    }
    free(out);
    di_gguf_close(g);
}
