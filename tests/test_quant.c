/* Tensor types (model/quant.c): every supported type dequantizes bit for bit as gguf-py's
 * gguf.quants.dequantize (tests/data/quant_ref.txt, made by tests/data/make_quant_ref.py), whole
 * and block by block through di_gguf_to_f32_range; the layout table agrees with gguf-py's;
 * unsupported and unknown types are named; the real Gemma 3 file's types match gguf-py. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf_blob.h"
#include "model/gguf.h"
#include "model/quant.h"

#ifndef DI_SOURCE_DIR
#define DI_SOURCE_DIR "."
#endif

static uint8_t *unhex(const char *s, size_t *n)
{
    size_t len = strcspn(s, " \n");
    cr_assert_eq(len % 2, 0, "odd hex length");
    uint8_t *b = malloc(len / 2 + 1);
    for (size_t i = 0; i < len / 2; i++) {
        unsigned v;
        cr_assert_eq(sscanf(s + 2 * i, "%2x", &v), 1);
        b[i] = (uint8_t)v;
    }
    *n = len / 2;
    return b;
}

/* The expected float32 bits, 8 hex digits each. */
static uint32_t *unhex_words(const char *s, size_t *n)
{
    size_t len = strcspn(s, " \n");
    cr_assert_eq(len % 8, 0);
    uint32_t *w = malloc(len / 8 * 4 + 4);
    for (size_t i = 0; i < len / 8; i++) {
        char tmp[9];
        memcpy(tmp, s + 8 * i, 8);
        tmp[8] = 0;
        w[i] = (uint32_t)strtoul(tmp, NULL, 16);
    }
    *n = len / 8;
    return w;
}

static FILE *open_ref(void)
{
    FILE *f = fopen(DI_SOURCE_DIR "/tests/data/quant_ref.txt", "r");
    cr_assert_not_null(f, "tests/data/quant_ref.txt is missing (tests/data/make_quant_ref.py writes it)");
    return f;
}

static void expect_bits(const float *got, const uint32_t *want, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t g;
        memcpy(&g, &got[i], 4);
        cr_assert_eq(g, want[i], "%s: element %zu is 0x%08x, gguf-py gives 0x%08x", what, i, g, want[i]);
    }
}

/* One case: the blocks as a tensor of `rows` rows, dequantized whole and one block at a time. */
static void check_case(const char *name, int id, size_t n_blocks, const uint8_t *bytes, size_t nbytes,
                       const uint32_t *want, size_t n_want)
{
    const di_quant_type *q = di_quant_type_of(id);
    cr_assert_not_null(q, "%s (type %d) is not in the table", name, id);
    cr_assert_str_eq(q->name, name);
    cr_assert_not_null(q->dequant, "%s has no dequantizer", name);
    cr_assert_eq(nbytes, n_blocks * q->block_bytes, "%s: %zu bytes for %zu blocks", name, nbytes, n_blocks);
    cr_assert_eq(n_want, n_blocks * q->block_elems);

    /* directly */
    float *out = malloc(n_want * sizeof *out);
    q->dequant(bytes, n_blocks, out);
    expect_bits(out, want, n_want, name);

    /* through a GGUF tensor: two rows when the blocks split evenly, each block by range */
    uint64_t rows = n_blocks % 2 == 0 && n_blocks > 1 ? 2 : 1;
    gguf_blob b = gb_begin();
    gb_kv_str(&b, "general.architecture", "llama");
    gb_tensor_add(&b, (gb_tensor){.name = name, .type = (uint32_t)id, .n_dims = 2,
                                  .dims = {n_want / rows, rows}, .data = bytes, .nbytes = nbytes});
    gb_finish(&b);
    di_gguf *g;
    di_err e = {0};
    cr_assert_eq(di_gguf_open_mem(b.p, b.n, "quant.gguf", &g, &e), 0, "%s: %s", name, e.msg);
    const di_gguf_tensor *t = di_gguf_tensor_find(g, name);
    cr_assert(t && t->type == id && t->nbytes == nbytes, "%s: tensor info", name);
    memset(out, 0xff, n_want * sizeof *out);
    cr_assert_eq(di_gguf_to_f32(g, t, out, &e), 0, "%s: %s", name, e.msg);
    expect_bits(out, want, n_want, name);
    memset(out, 0xff, n_want * sizeof *out);
    for (size_t k = 0; k < n_blocks; k++)
        cr_assert_eq(di_gguf_to_f32_range(g, t, k * q->block_elems, q->block_elems, out + k * q->block_elems, &e), 0,
                     "%s block %zu: %s", name, k, e.msg);
    expect_bits(out, want, n_want, name);
    if (q->block_elems > 1) { /* half a block is not a range */
        cr_assert_eq(di_gguf_to_f32_range(g, t, q->block_elems / 2, q->block_elems, out, &e), DI_EUSAGE);
        cr_assert(strstr(e.msg, name), "message does not name the tensor: %s", e.msg);
    }
    di_gguf_close(g);
    free(b.p);
    free(out);
}

Test(quant, every_supported_type_matches_gguf_py)
{
    FILE *f = open_ref();
    char *line = NULL;
    size_t cap = 0;
    int cases = 0;
    bool seen[64] = {false};
    while (getline(&line, &cap, f) > 0) {
        if (strncmp(line, "case ", 5)) continue;
        char name[32];
        int id, consumed = 0;
        size_t n_blocks;
        cr_assert_eq(sscanf(line, "case %31s %d %zu %n", name, &id, &n_blocks, &consumed), 3, "bad line: %.60s", line);
        size_t nbytes, n_want;
        uint8_t *bytes = unhex(line + consumed, &nbytes);
        const char *bits = line + consumed + nbytes * 2 + 1;
        uint32_t *want = unhex_words(bits, &n_want);
        check_case(name, id, n_blocks, bytes, nbytes, want, n_want);
        if (id >= 0 && id < 64) seen[id] = true;
        free(bytes);
        free(want);
        cases++;
    }
    free(line);
    fclose(f);
    /* every type the table dequantizes must have been checked */
    for (int id = 0; id < 64; id++)
        if (di_ggml_type_supported(id)) cr_expect(seen[id], "%s has no reference case", di_ggml_type_name(id));
    static const char *const required[] = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                                           "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "F16", "BF16", "F32"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        bool found = false;
        for (int id = 0; id < 64; id++)
            found |= di_ggml_type_supported(id) && !strcmp(di_ggml_type_name(id), required[i]);
        cr_expect(found, "%s is not supported", required[i]);
    }
    cr_assert_geq(cases, 15);
}

Test(quant, layouts_match_gguf_py)
{
    FILE *f = open_ref();
    char *line = NULL;
    size_t cap = 0;
    int listed = 0;
    while (getline(&line, &cap, f) > 0) {
        char name[32];
        int id;
        unsigned be, bb;
        if (sscanf(line, "layout %31s %d %u %u", name, &id, &be, &bb) != 4) continue;
        const di_quant_type *q = di_quant_type_of(id);
        cr_assert_not_null(q, "gguf-py knows %s (type %d); the table does not", name, id);
        cr_assert_str_eq(q->name, name, "type %d", id);
        cr_assert(q->block_elems == be && q->block_bytes == bb, "%s: %u/%u in the table, %u/%u in gguf-py", name,
                  q->block_elems, q->block_bytes, be, bb);
        listed++;
    }
    free(line);
    fclose(f);
    int in_table = 0;
    for (int id = 0; id < 256; id++) in_table += di_quant_type_of(id) != NULL;
    cr_assert_eq(in_table, listed, "the table has %d types, gguf-py %d", in_table, listed);
    cr_assert_null(di_quant_type_of(4), "Q4_2 was removed from ggml");
    cr_assert_null(di_quant_type_of(-1));
    cr_assert_str_eq(di_ggml_type_name(99), "unknown");
    cr_assert_not_null(strstr(di_ggml_supported_list(), "Q4_K"));
    cr_assert_null(strstr(di_ggml_supported_list(), "IQ2_XXS"));
}

static int open_one(uint32_t type, uint64_t d0, size_t nbytes, di_gguf **g, gguf_blob *b, di_err *e)
{
    static uint8_t zeros[4096];
    *b = gb_begin();
    gb_tensor_add(b, (gb_tensor){.name = "blk.3.ffn_up.weight", .type = type, .n_dims = 2, .dims = {d0, 2},
                                 .data = zeros, .nbytes = nbytes});
    gb_finish(b);
    return di_gguf_open_mem(b->p, b->n, "types.gguf", g, e);
}

Test(quant, unsupported_and_unknown_types_are_named)
{
    di_gguf *g;
    gguf_blob b;
    di_err e = {0};
    /* IQ2_XXS: a layout ggml knows, so the file opens and --info can list it; converting it names it */
    cr_assert_eq(open_one(DI_GGML_IQ2_XXS, 256, 2 * 66, &g, &b, &e), 0, "%s", e.msg);
    const di_gguf_tensor *t = di_gguf_tensor_find(g, "blk.3.ffn_up.weight");
    float out[512];
    cr_assert_eq(di_gguf_to_f32(g, t, out, &e), DI_EFORMAT);
    cr_assert(strstr(e.msg, "IQ2_XXS (type 16) is not supported") && strstr(e.msg, "blk.3.ffn_up.weight"), "%s", e.msg);
    cr_assert(strstr(e.msg, "Q4_K"), "the message lists the supported types: %s", e.msg);
    di_gguf_close(g);
    free(b.p);

    /* a row that is not whole blocks of the type: named by the type */
    cr_assert_eq(open_one(DI_GGML_Q5_0, 48, 2 * 33, &g, &b, &e), DI_EFORMAT);
    cr_assert(strstr(e.msg, "multiple of the Q5_0 block (32)"), "%s", e.msg);
    free(b.p);
    cr_assert_eq(open_one(DI_GGML_Q4_K, 128, 144, &g, &b, &e), DI_EFORMAT);
    cr_assert(strstr(e.msg, "Q4_K block (256)"), "%s", e.msg);
    free(b.p);

    /* an id ggml does not know: no layout, so the file cannot be read past it */
    cr_assert_eq(open_one(77, 32, 64, &g, &b, &e), DI_EFORMAT);
    cr_assert(strstr(e.msg, "type 77") && strstr(e.msg, "blk.3.ffn_up.weight"), "%s", e.msg);
    free(b.p);
}

/* The real Gemma 3 270M Q4_K_M (scripts/fetch-model --gemma3; scripts/test sets
 * $DETINFER_GEMMA3): spot elements of the first tensor of each type, against gguf-py. */
Test(quant, gemma3_tensors_match_gguf_py)
{
    const char *path = getenv("DETINFER_GEMMA3");
    if (!path || !*path || access(path, R_OK)) cr_skip_test("DETINFER_GEMMA3 is not set (scripts/fetch-model --gemma3)");
    di_gguf *g;
    di_err e = {0};
    cr_assert_eq(di_gguf_open(path, &g, &e), 0, "%s", e.msg);
    for (uint64_t i = 0; i < g->n_tensors; i++)
        cr_assert(di_ggml_type_supported(g->tensors[i].type), "%s: %s", g->tensors[i].name,
                  di_ggml_type_name(g->tensors[i].type));
    FILE *f = fopen(DI_SOURCE_DIR "/tests/data/gemma3_spot.txt", "r");
    cr_assert_not_null(f);
    char name[256], type[32];
    uint64_t index;
    unsigned want;
    int spots = 0;
    float block[256];
    while (fscanf(f, "spot %255s %31s %lu %x\n", name, type, &index, &want) == 4) {
        const di_gguf_tensor *t = di_gguf_tensor_find(g, name);
        cr_assert_not_null(t, "%s", name);
        cr_assert_str_eq(di_ggml_type_name(t->type), type);
        uint64_t be = di_quant_type_of(t->type)->block_elems;
        cr_assert_eq(di_gguf_to_f32_range(g, t, index / be * be, be, block, &e), 0, "%s", e.msg);
        uint32_t got;
        memcpy(&got, &block[index % be], 4);
        cr_assert_eq(got, want, "%s (%s) [%lu] = 0x%08x, gguf-py 0x%08x", name, type, index, got, want);
        spots++;
    }
    fclose(f);
    cr_assert_geq(spots, 5 * 9, "only %d spot values", spots);
    di_gguf_close(g);
}
