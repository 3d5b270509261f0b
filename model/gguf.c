/* GGUF reader (v2, v3). Every count, length, size and offset is checked against the bytes
 * that are left before it is used, so a malformed or truncated file is an error naming the
 * file and the key or tensor at fault, never a crash, a read past the end, or an allocation
 * larger than a small multiple of the file. */
#include "model/gguf.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "base/file.h"

enum {
    HEADER_BYTES = 24,         /* magic, version, tensor count, kv count */
    MIN_KV_BYTES = 8 + 4 + 1,  /* key length, value type, smallest value */
    MIN_TENSOR_BYTES = 8 + 1 + 4 + 8 + 4 + 8, /* name length, 1-byte name, n_dims, 1 dim, type, offset */
    MAX_KEY_LEN = 65535,       /* the spec's limit on key length */
    MAX_ARRAY_DEPTH = 8,       /* arrays of arrays deeper than this are rejected */
    DEFAULT_ALIGNMENT = 32,
    MAX_ALIGNMENT = 1 << 20,
};

/* ---- reading with bounds ------------------------------------------------------------------ */

typedef struct cursor {
    const uint8_t *base, *p, *end;
    const char *label;  /* file name for messages */
    di_err *err;
} cursor;

static size_t left(const cursor *c) { return (size_t)(c->end - c->p); }

static int truncated(cursor *c, const char *what)
{
    return di_fail(c->err, DI_EFORMAT, "%s: truncated or malformed: %s at byte %zu runs past the end of the file (%zu bytes)",
                   c->label, what, (size_t)(c->p - c->base), (size_t)(c->end - c->base));
}

static int take(cursor *c, uint64_t n, const uint8_t **out, const char *what)
{
    if (n > left(c)) return truncated(c, what);
    *out = c->p;
    c->p += n;
    return DI_OK;
}

static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static int read_u32(cursor *c, uint32_t *v, const char *what)
{
    const uint8_t *p = NULL;
    if (take(c, 4, &p, what)) return c->err->code;
    *v = rd32(p);
    return DI_OK;
}

static int read_u64(cursor *c, uint64_t *v, const char *what)
{
    const uint8_t *p = NULL;
    if (take(c, 8, &p, what)) return c->err->code;
    *v = rd64(p);
    return DI_OK;
}

static int read_str(cursor *c, di_gguf_str *s, const char *what)
{
    uint64_t n = 0;
    const uint8_t *p = NULL;
    if (read_u64(c, &n, what) || take(c, n, &p, what)) return c->err->code;
    s->ptr = (const char *)p;
    s->len = n;
    return DI_OK;
}

/* ---- metadata ------------------------------------------------------------------------------- */

static size_t scalar_size(uint32_t t)
{
    switch (t) {
    case DI_GGUF_U8: case DI_GGUF_I8: case DI_GGUF_BOOL: return 1;
    case DI_GGUF_U16: case DI_GGUF_I16: return 2;
    case DI_GGUF_U32: case DI_GGUF_I32: case DI_GGUF_F32: return 4;
    case DI_GGUF_U64: case DI_GGUF_I64: case DI_GGUF_F64: return 8;
    default: return 0;
    }
}

/* The key as text for messages: at most 200 bytes of it. */
typedef struct keyname { char s[220]; } keyname;
static keyname key_text(di_gguf_str k)
{
    keyname n;
    snprintf(n.s, sizeof n.s, "%.*s%s", (int)(k.len > 200 ? 200 : k.len), k.ptr, k.len > 200 ? "..." : "");
    return n;
}

static int skip_value(cursor *c, uint32_t t, int depth, const char *key);

/* Skips an array's elements (its element type and count already read). Every element takes
 * at least one byte, so a count is checked against the bytes left before any loop runs:
 * the work done is bounded by the file size whatever the counts say. */
static int skip_array_elems(cursor *c, uint32_t et, uint64_t n, int depth, const char *key)
{
    char what[300];
    snprintf(what, sizeof what, "the elements of %s", key);
    size_t esz = scalar_size(et);
    const uint8_t *p = NULL;
    if (esz) {
        if (n > left(c) / esz) return truncated(c, what);
        return take(c, n * esz, &p, what);
    }
    if (et == DI_GGUF_ARRAY && depth >= MAX_ARRAY_DEPTH)
        return di_fail(c->err, DI_EFORMAT, "%s: key %s nests arrays more than %d deep", c->label, key, MAX_ARRAY_DEPTH);
    if (et != DI_GGUF_STRING && et != DI_GGUF_ARRAY)
        return di_fail(c->err, DI_EFORMAT, "%s: key %s is an array of unknown value type %u", c->label, key, et);
    if (n > left(c) / 8) return truncated(c, what); /* strings and arrays take >= 8 bytes each */
    for (uint64_t i = 0; i < n; i++)
        if (skip_value(c, et, depth + 1, key)) return c->err->code;
    return DI_OK;
}

static int skip_value(cursor *c, uint32_t t, int depth, const char *key)
{
    char what[300];
    snprintf(what, sizeof what, "the value of %s", key);
    const uint8_t *p = NULL;
    size_t sz = scalar_size(t);
    if (sz) return take(c, sz, &p, what);
    if (t == DI_GGUF_STRING) {
        di_gguf_str s;
        return read_str(c, &s, what);
    }
    if (t != DI_GGUF_ARRAY) return di_fail(c->err, DI_EFORMAT, "%s: key %s has unknown value type %u", c->label, key, t);
    uint32_t et = 0;
    uint64_t n = 0;
    if (read_u32(c, &et, what) || read_u64(c, &n, what)) return c->err->code;
    return skip_array_elems(c, et, n, depth, key);
}

/* Arrays of strings get an index of element offsets, so element i is O(1) (the vocabulary
 * has ~49k of them). The array was already bounds-checked by skip_value. */
static int index_strings(cursor *c, di_gguf_kv *kv, const char *key)
{
    kv->str_offsets = malloc(sizeof(uint64_t) * (size_t)(kv->arr_len ? kv->arr_len : 1));
    if (!kv->str_offsets) return di_fail(c->err, DI_ENOMEM, "%s: out of memory indexing the strings of %s", c->label, key);
    uint64_t off = 0;
    for (uint64_t i = 0; i < kv->arr_len; i++) {
        kv->str_offsets[i] = off;
        off += 8 + rd64(kv->data + off);
    }
    return DI_OK;
}

static int read_kv(cursor *c, di_gguf_kv *kv, uint64_t index)
{
    char what[64];
    snprintf(what, sizeof what, "the key of metadata entry %llu", (unsigned long long)index);
    uint32_t t = 0;
    if (read_str(c, &kv->key, what)) return c->err->code;
    keyname key = key_text(kv->key);
    if (kv->key.len == 0 || kv->key.len > MAX_KEY_LEN)
        return di_fail(c->err, DI_EFORMAT, "%s: metadata entry %llu has a key of %llu bytes (1 to %d allowed)", c->label,
                       (unsigned long long)index, (unsigned long long)kv->key.len, MAX_KEY_LEN);
    char tw[300];
    snprintf(tw, sizeof tw, "the value type of %s", key.s);
    if (read_u32(c, &t, tw)) return c->err->code;
    kv->type = (int)t;
    const uint8_t *value = c->p;
    if (skip_value(c, t, 0, key.s)) return c->err->code;
    if (t != DI_GGUF_ARRAY) {
        kv->data = value;
        return DI_OK;
    }
    /* skip_value read the array header, so these 12 bytes are there */
    kv->arr_type = (int)rd32(value);
    kv->arr_len = rd64(value + 4);
    kv->data = value + 12;
    return kv->arr_type == DI_GGUF_STRING ? index_strings(c, kv, key.s) : DI_OK;
}

/* Sorting an index by name finds duplicates in O(n log n): a hostile file may hold
 * hundreds of thousands of entries. */
typedef struct named { const char *p; size_t len; } named;

static int cmp_named(const void *a, const void *b)
{
    const named *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int r = memcmp(x->p, y->p, n);
    if (r) return r;
    return (x->len > y->len) - (x->len < y->len);
}

/* Index of a duplicated name in the sorted list, or -1. */
static int64_t find_duplicate(named *v, uint64_t n)
{
    if (n < 2) return -1;
    qsort(v, (size_t)n, sizeof *v, cmp_named);
    for (uint64_t i = 1; i < n; i++)
        if (!cmp_named(&v[i - 1], &v[i])) return (int64_t)i;
    return -1;
}

static int check_unique_keys(di_gguf *g, di_err *err)
{
    named *v = malloc(sizeof *v * (size_t)(g->n_kv ? g->n_kv : 1));
    if (!v) return di_fail(err, DI_ENOMEM, "%s: out of memory checking metadata keys", g->path);
    for (uint64_t i = 0; i < g->n_kv; i++) v[i] = (named){g->kv[i].key.ptr, (size_t)g->kv[i].key.len};
    int64_t d = find_duplicate(v, g->n_kv);
    int rc = DI_OK;
    if (d >= 0) {
        keyname k = key_text((di_gguf_str){v[d].p, v[d].len});
        rc = di_fail(err, DI_EFORMAT, "%s: metadata key %s appears more than once", g->path, k.s);
    }
    free(v);
    return rc;
}

static int read_alignment(di_gguf *g, di_err *err)
{
    g->alignment = DEFAULT_ALIGNMENT;
    const di_gguf_kv *kv = di_gguf_find(g, "general.alignment");
    if (!kv) return DI_OK;
    if (kv->type != DI_GGUF_U32)
        return di_fail(err, DI_EFORMAT, "%s: metadata key general.alignment has value type %d (must be u32)", g->path, kv->type);
    uint32_t a = rd32(kv->data);
    if (a == 0 || (a & (a - 1)) || a > MAX_ALIGNMENT)
        return di_fail(err, DI_EFORMAT, "%s: metadata key general.alignment is %u (must be a power of two up to %d)", g->path,
                       a, MAX_ALIGNMENT);
    g->alignment = a;
    return DI_OK;
}

/* ---- tensor infos --------------------------------------------------------------------------- */

static int read_tensor_name(cursor *c, di_gguf_tensor *t, uint64_t index)
{
    char what[64];
    snprintf(what, sizeof what, "the name of tensor %llu", (unsigned long long)index);
    di_gguf_str name = {0};
    if (read_str(c, &name, what)) return c->err->code;
    if (name.len == 0 || name.len >= sizeof t->name)
        return di_fail(c->err, DI_EFORMAT, "%s: tensor %llu has a name of %llu bytes (1 to %zu allowed)", c->label,
                       (unsigned long long)index, (unsigned long long)name.len, sizeof t->name - 1);
    if (memchr(name.ptr, 0, name.len))
        return di_fail(c->err, DI_EFORMAT, "%s: tensor %llu has a NUL byte in its name", c->label, (unsigned long long)index);
    memcpy(t->name, name.ptr, name.len);
    t->name[name.len] = 0;
    return DI_OK;
}

static int read_tensor_dims(cursor *c, di_gguf_tensor *t)
{
    char what[300];
    snprintf(what, sizeof what, "the shape of tensor %s", t->name);
    uint32_t nd = 0;
    if (read_u32(c, &nd, what)) return c->err->code;
    if (nd < 1 || nd > 4)
        return di_fail(c->err, DI_EFORMAT, "%s: tensor %s has %u dimensions (1 to 4 allowed)", c->label, t->name, nd);
    t->n_dims = (int)nd;
    t->n_elems = 1;
    for (int d = 0; d < 4; d++) t->dims[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        if (read_u64(c, &t->dims[d], what)) return c->err->code;
        if (t->dims[d] == 0) return di_fail(c->err, DI_EFORMAT, "%s: tensor %s has dimension %u of size 0", c->label, t->name, d);
        /* ggml counts elements in int64 */
        if (__builtin_mul_overflow(t->n_elems, t->dims[d], &t->n_elems) || t->n_elems > (uint64_t)INT64_MAX)
            return di_fail(c->err, DI_EFORMAT, "%s: tensor %s: the product of its dimensions overflows (dimension %u is %llu)",
                           c->label, t->name, d, (unsigned long long)t->dims[d]);
    }
    return DI_OK;
}

static int read_tensor(cursor *c, di_gguf_tensor *t, uint64_t index)
{
    if (read_tensor_name(c, t, index) || read_tensor_dims(c, t)) return c->err->code;
    char what[300];
    snprintf(what, sizeof what, "the type and offset of tensor %s", t->name);
    uint32_t type = 0;
    if (read_u32(c, &type, what) || read_u64(c, &t->offset, what)) return c->err->code;
    /* a type ggml knows is accepted even without a dequantizer, so that --info can list them all */
    const di_quant_type *q = type <= INT32_MAX ? di_quant_type_of((int)type) : NULL;
    if (!q)
        return di_fail(c->err, DI_EFORMAT, "%s: tensor %s has type %u, which ggml does not know (supported: %s)",
                       c->label, t->name, type, di_ggml_supported_list());
    uint64_t be = q->block_elems, bb = q->block_bytes;
    t->type = (int)type;
    if (t->dims[0] % be)
        return di_fail(c->err, DI_EFORMAT, "%s: tensor %s: its rows of %llu elements are not a multiple of the %s block (%llu)",
                       c->label, t->name, (unsigned long long)t->dims[0], di_ggml_type_name(t->type), (unsigned long long)be);
    uint64_t bytes;
    if (__builtin_mul_overflow(t->n_elems / be, bb, &bytes))
        return di_fail(c->err, DI_EFORMAT, "%s: tensor %s: its size in bytes overflows", c->label, t->name);
    t->nbytes = (size_t)bytes;
    return DI_OK;
}

static int check_unique_tensors(di_gguf *g, di_err *err)
{
    named *v = malloc(sizeof *v * (size_t)(g->n_tensors ? g->n_tensors : 1));
    if (!v) return di_fail(err, DI_ENOMEM, "%s: out of memory checking tensor names", g->path);
    for (uint64_t i = 0; i < g->n_tensors; i++) v[i] = (named){g->tensors[i].name, strlen(g->tensors[i].name)};
    int64_t d = find_duplicate(v, g->n_tensors);
    int rc = d >= 0 ? di_fail(err, DI_EFORMAT, "%s: tensor %s appears more than once", g->path, v[d].p) : DI_OK;
    free(v);
    return rc;
}

/* Places every tensor in the data section, which starts at the aligned end of the infos.
 * As in llama.cpp's reader, tensor i must start where tensor i-1 ends, padded to the
 * alignment: data may not overlap (a type changed so that a tensor grows into the next, two
 * offsets sharing bytes) nor leave gaps. Sizes come from nbytes, whatever the type table. */
static int place_tensors(di_gguf *g, size_t infos_end, di_err *err)
{
    size_t a = g->alignment;
    size_t data = infos_end % a ? infos_end + (a - infos_end % a) : infos_end;
    uint64_t expected = 0; /* the running sum of padded sizes */
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        di_gguf_tensor *t = &g->tensors[i];
        if (t->offset % a)
            return di_fail(err, DI_EFORMAT, "%s: tensor %s: offset %llu is not a multiple of the alignment %zu", g->path,
                           t->name, (unsigned long long)t->offset, a);
        if (data > g->size || t->offset > g->size - data || t->nbytes > g->size - data - t->offset)
            return di_fail(err, DI_EFORMAT,
                           "%s: tensor %s: its %zu bytes at data offset %llu run past the end of the file (%zu bytes, data "
                           "section at %zu): truncated?", g->path, t->name, t->nbytes, (unsigned long long)t->offset,
                           g->size, data);
        if (t->offset != expected)
            return di_fail(err, DI_EFORMAT,
                           "%s: tensor %s: data offset %llu, expected %llu (where %s ends, padded to %zu): its data "
                           "would %s", g->path, t->name, (unsigned long long)t->offset, (unsigned long long)expected,
                           i ? g->tensors[i - 1].name : "nothing", a,
                           t->offset < expected ? "overlap the tensor before it" : "leave a gap after the tensor before it");
        /* nbytes fits in the file (checked above), so neither the padding nor the sum can wrap */
        expected += t->nbytes + (a - t->nbytes % a) % a;
        t->data = g->base + data + t->offset;
    }
    return DI_OK;
}

/* ---- the file ------------------------------------------------------------------------------- */

static int read_header(di_gguf *g, cursor *c, di_err *err)
{
    const uint8_t *magic;
    if (take(c, 4, &magic, "the header")) return err->code;
    if (memcmp(magic, "GGUF", 4))
        return di_fail(err, DI_EFORMAT, "%s: not a GGUF file (the magic is not \"GGUF\")", g->path);
    if (read_u32(c, &g->version, "the header")) return err->code;
    if (g->version == 1)
        return di_fail(err, DI_EFORMAT, "%s: GGUF version 1 is not supported (only 2 and 3 are): convert the model again",
                       g->path);
    if (g->version != 2 && g->version != 3)
        return di_fail(err, DI_EFORMAT, "%s: GGUF version %u is not supported (only 2 and 3 are%s)", g->path, g->version,
                       (g->version & 0xffff) == 0 ? "; a big-endian file?" : "");
    if (read_u64(c, &g->n_tensors, "the header") || read_u64(c, &g->n_kv, "the header")) return err->code;
    /* bound the counts by the bytes left before allocating anything for them */
    if (g->n_kv > left(c) / MIN_KV_BYTES)
        return di_fail(err, DI_EFORMAT, "%s: the header claims %llu metadata entries, more than the file can hold", g->path,
                       (unsigned long long)g->n_kv);
    if (g->n_tensors > left(c) / MIN_TENSOR_BYTES)
        return di_fail(err, DI_EFORMAT, "%s: the header claims %llu tensors, more than the file can hold", g->path,
                       (unsigned long long)g->n_tensors);
    return DI_OK;
}

static int parse(di_gguf *g, di_err *err)
{
    cursor c = {g->base, g->base, g->base + g->size, g->path, err};
    if (read_header(g, &c, err)) return err->code;
    g->kv = calloc((size_t)(g->n_kv ? g->n_kv : 1), sizeof *g->kv);
    g->tensors = calloc((size_t)(g->n_tensors ? g->n_tensors : 1), sizeof *g->tensors);
    if (!g->kv || !g->tensors) return di_fail(err, DI_ENOMEM, "%s: out of memory", g->path);
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (read_kv(&c, &g->kv[i], i)) return err->code;
    if (check_unique_keys(g, err) || read_alignment(g, err)) return err->code;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (read_tensor(&c, &g->tensors[i], i)) return err->code;
    if (check_unique_tensors(g, err)) return err->code;
    return place_tensors(g, (size_t)(c.p - g->base), err);
}

int di_gguf_open_mem(const void *data, size_t n, const char *label, di_gguf **out, di_err *err)
{
    *out = NULL;
    di_gguf *g = calloc(1, sizeof *g);
    if (!g) return di_fail(err, DI_ENOMEM, "%s: out of memory", label ? label : "(memory)");
    snprintf(g->path, sizeof g->path, "%s", label ? label : "(memory)");
    g->base = data;
    g->size = n;
    int rc = data && n >= HEADER_BYTES
                 ? parse(g, err)
                 : di_fail(err, DI_EFORMAT, "%s: %zu bytes is too short for a GGUF header", g->path, n);
    if (rc) {
        di_gguf_close(g);
        return rc;
    }
    *out = g;
    return DI_OK;
}

int di_gguf_open(const char *path, di_gguf **out, di_err *err)
{
    *out = NULL;
    int fd;
    struct stat st;
    /* a FIFO, a device or a directory is refused without blocking (base/file.h) */
    if (di_file_open_regular(path, NULL, &fd, &st, err)) return err->code;
    size_t n = (size_t)st.st_size;
    if (n < HEADER_BYTES) {
        close(fd);
        return di_fail(err, DI_EFORMAT, "%s: %zu bytes is too short for a GGUF header", path, n);
    }
    void *p = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
    int mmap_errno = errno;
    close(fd); /* the mapping keeps the file */
    if (p == MAP_FAILED) return di_fail(err, DI_EIO, "%s: mmap: %s", path, strerror(mmap_errno));
    int rc = di_gguf_open_mem(p, n, path, out, err);
    if (rc) {
        munmap(p, n);
        return rc;
    }
    (*out)->mapped = true;
    return DI_OK;
}

void di_gguf_close(di_gguf *g)
{
    if (!g) return;
    if (g->mapped) munmap((void *)g->base, g->size);
    for (uint64_t i = 0; g->kv && i < g->n_kv; i++) free(g->kv[i].str_offsets);
    free(g->kv);
    free(g->tensors);
    free(g);
}

/* ---- metadata access ------------------------------------------------------------------------ */

const di_gguf_kv *di_gguf_find(const di_gguf *g, const char *key)
{
    size_t n = strlen(key);
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key.len == n && !memcmp(g->kv[i].key.ptr, key, n)) return &g->kv[i];
    return NULL;
}

static int missing(const di_gguf *g, const char *key, di_err *err)
{
    return di_fail(err, DI_EFORMAT, "%s: metadata key %s is missing", g->path, key);
}

static int wrong_type(const di_gguf *g, const char *key, int type, const char *want, di_err *err)
{
    return di_fail(err, DI_EFORMAT, "%s: metadata key %s has value type %d, not %s", g->path, key, type, want);
}

/* An integer scalar as a sign and magnitude, so that u64 values above INT64_MAX survive. */
typedef struct intval { bool negative; uint64_t mag; } intval;

static bool int_value(int t, const uint8_t *p, intval *v)
{
    int64_t s;
    switch (t) {
    case DI_GGUF_U8: *v = (intval){false, *p}; return true;
    case DI_GGUF_BOOL: *v = (intval){false, *p != 0}; return true;
    case DI_GGUF_U16: *v = (intval){false, rd16(p)}; return true;
    case DI_GGUF_U32: *v = (intval){false, rd32(p)}; return true;
    case DI_GGUF_U64: *v = (intval){false, rd64(p)}; return true;
    case DI_GGUF_I8: s = (int8_t)*p; break;
    case DI_GGUF_I16: s = (int16_t)rd16(p); break;
    case DI_GGUF_I32: s = (int32_t)rd32(p); break;
    case DI_GGUF_I64: s = (int64_t)rd64(p); break;
    default: return false;
    }
    *v = (intval){s < 0, s < 0 ? 0 - (uint64_t)s : (uint64_t)s};
    return true;
}

int di_gguf_get_u64(const di_gguf *g, const char *key, uint64_t *out, di_err *err)
{
    const di_gguf_kv *kv = di_gguf_find(g, key);
    if (!kv) return missing(g, key, err);
    intval v;
    if (!int_value(kv->type, kv->data, &v)) return wrong_type(g, key, kv->type, "an integer", err);
    if (v.negative) return di_fail(err, DI_EFORMAT, "%s: metadata key %s is negative (-%llu)", g->path, key, (unsigned long long)v.mag);
    *out = v.mag;
    return DI_OK;
}

int di_gguf_get_f32(const di_gguf *g, const char *key, float *out, di_err *err)
{
    const di_gguf_kv *kv = di_gguf_find(g, key);
    if (!kv) return missing(g, key, err);
    if (kv->type == DI_GGUF_F32) {
        memcpy(out, kv->data, 4);
    } else if (kv->type == DI_GGUF_F64) {
        double d;
        memcpy(&d, kv->data, 8);
        *out = (float)d;
    } else {
        return wrong_type(g, key, kv->type, "a float", err);
    }
    return DI_OK;
}

int di_gguf_get_str(const di_gguf *g, const char *key, di_gguf_str *out, di_err *err)
{
    const di_gguf_kv *kv = di_gguf_find(g, key);
    if (!kv) return missing(g, key, err);
    if (kv->type != DI_GGUF_STRING) return wrong_type(g, key, kv->type, "a string", err);
    out->len = rd64(kv->data);
    out->ptr = (const char *)kv->data + 8;
    return DI_OK;
}

int di_gguf_arr_str(const di_gguf_kv *kv, uint64_t i, di_gguf_str *out)
{
    if (kv->type != DI_GGUF_ARRAY || kv->arr_type != DI_GGUF_STRING || i >= kv->arr_len || !kv->str_offsets) return -1;
    const uint8_t *p = kv->data + kv->str_offsets[i];
    out->len = rd64(p);
    out->ptr = (const char *)p + 8;
    return 0;
}

/* 0 when out of range or not an integer array; u64 values above INT64_MAX wrap (none in practice). */
int64_t di_gguf_arr_int(const di_gguf_kv *kv, uint64_t i)
{
    if (kv->type != DI_GGUF_ARRAY || i >= kv->arr_len) return 0;
    size_t sz = scalar_size((uint32_t)kv->arr_type);
    intval v;
    if (!sz || !int_value(kv->arr_type, kv->data + i * sz, &v)) return 0;
    return v.negative ? (int64_t)(0 - v.mag) : (int64_t)v.mag;
}

const di_gguf_tensor *di_gguf_tensor_find(const di_gguf *g, const char *name)
{
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (!strcmp(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}

/* ---- dequantization (model/quant.c) ------------------------------------------------------- */

int di_gguf_to_f32_range(const di_gguf *g, const di_gguf_tensor *t, uint64_t first, uint64_t count, float *out,
                         di_err *err)
{
    if (!t->data) return di_fail(err, DI_EFORMAT, "%s: tensor %s has no data", g->path, t->name);
    const di_quant_type *q = di_quant_type_of(t->type);
    if (!q || !q->dequant)
        return di_fail(err, DI_EFORMAT, "%s: tensor %s: %s (type %d) is not supported (supported: %s)", g->path, t->name,
                       di_ggml_type_name(t->type), t->type, di_ggml_supported_list());
    uint64_t be = q->block_elems;
    if (first % be || count % be || first > t->n_elems || count > t->n_elems - first)
        return di_fail(err, DI_EUSAGE, "%s: tensor %s: elements [%llu, +%llu) are not whole blocks of %llu inside %llu",
                       g->path, t->name, (unsigned long long)first, (unsigned long long)count,
                       (unsigned long long)be, (unsigned long long)t->n_elems);
    q->dequant(t->data + first / be * q->block_bytes, count / be, out);
    return DI_OK;
}

int di_gguf_to_f32(const di_gguf *g, const di_gguf_tensor *t, float *out, di_err *err)
{
    return di_gguf_to_f32_range(g, t, 0, t->n_elems, out, err);
}
