#define _GNU_SOURCE /* memmem */
/* Tokenizers against llama.cpp's own test data: the vocab-only GGUFs with .inp/.out files under
 * vendor/llama.cpp/models in the llama-cpp-python 0.3.36 sdist (scripts/fetch-vocabs puts them in
 * the cache; scripts/test sets $DETINFER_VOCAB_DIR). As llama.cpp's test-tokenizer-0 reads them:
 * .inp holds strings separated by "\n__ggml_vocab_test__\n", .out one line of ids per string, and
 * each string is tokenized without BOS/EOS and without parsing special tokens. Every string must
 * give exactly its ids, and decode back to itself. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf_blob.h"
#include "model/tokenizer.h"

static const char *vocab_dir(void)
{
    const char *d = getenv("DETINFER_VOCAB_DIR");
    return d && *d ? d : NULL;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    b[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return b;
}

typedef struct vocab_case { const char *name; int min_strings; } vocab_case;

static void check_vocab(const char *name, int min_strings)
{
    const char *dir = vocab_dir();
    if (!dir) cr_skip_test("DETINFER_VOCAB_DIR is not set (scripts/fetch-vocabs fetches llama.cpp's vocabularies)");
    char path[4096], inp_path[4200], out_path[4200];
    snprintf(path, sizeof path, "%s/ggml-vocab-%s.gguf", dir, name);
    snprintf(inp_path, sizeof inp_path, "%s.inp", path);
    snprintf(out_path, sizeof out_path, "%s.out", path);
    if (access(path, R_OK)) cr_skip_test("%s is absent", path);
    di_gguf *g;
    di_tokenizer *t;
    di_err e = {0};
    cr_assert_eq(di_gguf_open(path, &g, &e), 0, "%s", e.msg);
    cr_assert_eq(di_tokenizer_load(g, &t, &e), 0, "%s: %s", name, e.msg);
    size_t inp_len, out_len;
    char *inp = slurp(inp_path, &inp_len), *out = slurp(out_path, &out_len);
    cr_assert(inp && out, "%s: missing .inp or .out", name);

    static const char sep[] = "\n__ggml_vocab_test__\n";
    const size_t seplen = sizeof sep - 1;
    char *pos = inp, *line = out, *end = inp + inp_len;
    int total = 0, matched = 0;
    while (pos < end) {
        char *next = memmem(pos, (size_t)(end - pos), sep, seplen);
        size_t slen = next ? (size_t)(next - pos) : (size_t)(end - pos);
        char *eol = strchr(line, '\n');
        cr_assert_not_null(eol, "%s: .out has fewer lines than .inp has strings", name);
        *eol = 0;
        int32_t want[4096];
        size_t n_want = 0;
        for (char *tok = strtok(line, " "); tok; tok = strtok(NULL, " ")) want[n_want++] = (int32_t)atoi(tok);
        line = eol + 1;

        int32_t *ids;
        size_t n;
        cr_assert_eq(di_tokenize(t, pos, slen, false, &ids, &n, &e), 0, "%s string %d: %s", name, total, e.msg);
        bool same = n == n_want && !memcmp(ids, want, n * sizeof *ids);
        if (!same) {
            char got[2048] = "", exp[2048] = "";
            for (size_t i = 0; i < n && strlen(got) < 2000; i++) snprintf(got + strlen(got), 20, " %d", ids[i]);
            for (size_t i = 0; i < n_want && strlen(exp) < 2000; i++) snprintf(exp + strlen(exp), 20, " %d", want[i]);
            cr_log_error("%s string %d '%.*s':\n  got %s\n  want%s", name, total, (int)(slen > 80 ? 80 : slen), pos, got, exp);
        }
        matched += same;
        /* decoding gives the string back (SentencePiece: after the space it puts before the text) */
        char *back = malloc(4 * slen + 16);
        size_t blen = 0;
        for (size_t i = 0; i < n; i++) {
            const char *p;
            size_t k;
            cr_assert_eq(di_token_piece(t, ids[i], &p, &k), 0);
            memcpy(back + blen, p, k);
            blen += k;
        }
        bool prefixed = !strcmp(di_tokenizer_model(t), "llama") && blen == slen + 1 && back[0] == ' ';
        if (same)
            cr_expect((blen == slen && !memcmp(back, pos, slen)) || (prefixed && !memcmp(back + 1, pos, slen)),
                      "%s string %d does not decode to itself", name, total);
        free(back);
        free(ids);
        total++;
        pos = next ? next + seplen : end;
    }
    cr_log_info("%s: %d of %d strings give llama.cpp's ids", name, matched, total);
    printf("vocab %s: %d/%d strings match\n", name, matched, total);
    cr_expect_eq(matched, total, "%s: %d of %d strings match", name, matched, total);
    cr_assert_geq(total, min_strings, "%s: only %d strings", name, total);
    free(inp);
    free(out);
    di_tokenizer_free(t);
    di_gguf_close(g);
}

#define VOCAB_TEST(id, file) \
    Test(vocab, id, .timeout = 120) { check_vocab(file, 40); }

VOCAB_TEST(llama_bpe, "llama-bpe")
VOCAB_TEST(qwen2, "qwen2")
VOCAB_TEST(llama_spm, "llama-spm")
VOCAB_TEST(gemma_4, "gemma-4")
VOCAB_TEST(phi_3, "phi-3")
VOCAB_TEST(gpt_2, "gpt-2")
VOCAB_TEST(deepseek_llm, "deepseek-llm")
VOCAB_TEST(deepseek_coder, "deepseek-coder")
VOCAB_TEST(command_r, "command-r")
VOCAB_TEST(starcoder, "starcoder")
VOCAB_TEST(falcon, "falcon")
VOCAB_TEST(refact, "refact")
VOCAB_TEST(mpt, "mpt")

/* ---------- the real Gemma 3 270M (SentencePiece, 262144 tokens) ---------- */

/* Gemma 3's file and tokenizer, or the test skips saying why */
static void gemma3_tokenizer(di_gguf **g, di_tokenizer **t)
{
    const char *path = getenv("DETINFER_GEMMA3");
    if (!path || !*path || access(path, R_OK)) cr_skip_test("DETINFER_GEMMA3 is not set (scripts/fetch-model --gemma3)");
    di_err e = {0};
    cr_assert_eq(di_gguf_open(path, g, &e), 0, "%s", e.msg);
    cr_assert_eq(di_tokenizer_load(*g, t, &e), 0, "%s", e.msg);
}

Test(vocab, gemma3_loads_and_round_trips, .timeout = 120)
{
    di_gguf *g;
    di_tokenizer *t;
    di_err e = {0};
    gemma3_tokenizer(&g, &t);
    cr_assert_str_eq(di_tokenizer_model(t), "llama");
    cr_assert_eq(di_tokenizer_vocab_size(t), 262144);
    cr_assert_eq(di_tokenizer_bos(t), 2);
    cr_assert_eq(di_tokenizer_eos(t), 1);
    cr_assert(di_tokenizer_adds_bos(t) && !di_tokenizer_adds_eos(t));
    static const char *const texts[] = {
        "The capital of France is Paris.", "  two leading spaces\tand a tab\n\nnew lines", "naïve café 中文 мир 🙂👍🏽",
        "x = [1, 2, 3]; // code\n", "don't won't it's", "\x01\x02 control bytes \x7f", "",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int32_t *ids;
        size_t n;
        const char *s = texts[i];
        cr_assert_eq(di_tokenize_prompt(t, s, strlen(s), false, &ids, &n, &e), 0, "'%s': %s", s, e.msg);
        cr_assert(n >= 1 && ids[0] == 2, "'%s': no BOS first", s);
        char back[512];
        size_t blen = 0;
        for (size_t k = 1; k < n; k++) {
            const char *p;
            size_t m;
            cr_assert_eq(di_token_piece(t, ids[k], &p, &m), 0);
            memcpy(back + blen, p, m);
            blen += m;
        }
        /* Gemma's add_space_prefix is false: the text comes back as it was */
        cr_assert(blen == strlen(s) && !memcmp(back, s, blen), "'%s' decodes to '%.*s'", s, (int)blen, back);
        free(ids);
    }
    /* its turn markers are tokens of their own */
    cr_assert_geq(di_tokenizer_special(t, "<start_of_turn>"), 0);
    cr_assert_geq(di_tokenizer_special(t, "<end_of_turn>"), 0);
    di_tokenizer_free(t);
    di_gguf_close(g);
}

/* ---------- tiny vocabularies in memory ---------- */

/* A SentencePiece vocabulary: <unk> <s> </s>, byte tokens for 'a'..'c' and '!', then pieces. */
static void tiny_spm(gguf_blob *b, const char *const *toks, const float *scores, const int32_t *types, size_t n,
                     int add_space_prefix)
{
    *b = gb_begin();
    gb_kv_str(b, "general.architecture", "llama");
    gb_kv_str(b, "tokenizer.ggml.model", "llama");
    gb_kv_strs(b, "tokenizer.ggml.tokens", toks, n);
    gb_kv_f32s(b, "tokenizer.ggml.scores", scores, n);
    gb_kv_i32s(b, "tokenizer.ggml.token_type", types, n);
    gb_kv_u32(b, "tokenizer.ggml.bos_token_id", 1);
    gb_kv_u32(b, "tokenizer.ggml.eos_token_id", 2);
    if (add_space_prefix >= 0) gb_kv_bool(b, "tokenizer.ggml.add_space_prefix", add_space_prefix);
    gb_finish(b);
}

static size_t encode_tiny(gguf_blob *b, const char *text, bool prompt, int32_t *out)
{
    di_gguf *g;
    di_tokenizer *t;
    di_err e = {0};
    cr_assert_eq(di_gguf_open_mem(b->p, b->n, "tiny.gguf", &g, &e), 0, "%s", e.msg);
    cr_assert_eq(di_tokenizer_load(g, &t, &e), 0, "%s", e.msg);
    int32_t *ids;
    size_t n;
    int rc = prompt ? di_tokenize_prompt(t, text, strlen(text), false, &ids, &n, &e)
                    : di_tokenize(t, text, strlen(text), false, &ids, &n, &e);
    cr_assert_eq(rc, 0, "%s", e.msg);
    memcpy(out, ids, n * sizeof *ids);
    free(ids);
    di_tokenizer_free(t);
    di_gguf_close(g);
    return n;
}

#define EXPECT_IDS(got, n, ...)                                                                          \
    do {                                                                                                 \
        const int32_t want_[] = {__VA_ARGS__};                                                           \
        size_t nw_ = sizeof want_ / sizeof want_[0];                                                     \
        cr_assert_eq(n, nw_, "%zu ids, want %zu", (size_t)(n), nw_);                                     \
        for (size_t i_ = 0; i_ < nw_; i_++) cr_assert_eq(got[i_], want_[i_], "id %zu: %d, want %d", i_, got[i_], want_[i_]); \
    } while (0)

Test(vocab, spm_merges_by_score_with_byte_fallback)
{
    /*                            0        1      2       3         4         5         6        7      8        9 */
    static const char *const toks[] = {"<unk>", "<s>", "</s>", "<0x61>", "<0x62>", "<0x21>", "\xe2\x96\x81", "b", "a",
                                       "ab", "\xe2\x96\x81" "a", "\xe2\x96\x81" "ab", "bb"};
    static const int32_t types[] = {2, 3, 3, 6, 6, 6, 1, 1, 1, 1, 1, 1, 1};
    float scores[] = {0, 0, 0, 0, 0, 0, -1, -2, -2, -5, -3, -4, -1};
    gguf_blob b;
    int32_t ids[64];
    size_t n;
    tiny_spm(&b, toks, scores, types, 13, -1);
    /* " ab": ▁a (-3) beats ab (-5); then ▁a+b = ▁ab (-4) */
    n = encode_tiny(&b, "ab", false, ids);
    EXPECT_IDS(ids, n, 11);
    /* with BOS, as add_bos_token's SentencePiece default */
    n = encode_tiny(&b, "ab", true, ids);
    EXPECT_IDS(ids, n, 1, 11);
    /* "bbb": bb has the best score; leftmost pair first, the last b alone; '!' only as a byte token */
    n = encode_tiny(&b, "bbb!", false, ids);
    EXPECT_IDS(ids, n, 6, 12, 7, 5);
    free(b.p);
    /* scores the other way round: ab (-1) merges first, ▁a (-6) never gets a turn */
    scores[9] = -1;
    scores[10] = -6;
    scores[11] = -7;
    tiny_spm(&b, toks, scores, types, 13, 0); /* and no space prefix */
    n = encode_tiny(&b, "ab ab", false, ids);
    EXPECT_IDS(ids, n, 9, 11); /* ab ▁ ab, then ▁ab: a worse score still merges */
    free(b.p);
}

Test(vocab, spm_byte_without_token_is_named)
{
    static const char *const toks[] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "a"};
    static const int32_t types[] = {2, 3, 3, 1, 1};
    static const float scores[] = {0, 0, 0, -1, -1};
    gguf_blob b;
    tiny_spm(&b, toks, scores, types, 5, 1);
    di_gguf *g;
    di_tokenizer *t;
    di_err e = {0};
    cr_assert_eq(di_gguf_open_mem(b.p, b.n, "tiny.gguf", &g, &e), 0, "%s", e.msg);
    cr_assert_eq(di_tokenizer_load(g, &t, &e), 0, "%s", e.msg);
    int32_t *ids;
    size_t n;
    cr_assert_eq(di_tokenize(t, "aZ", 2, false, &ids, &n, &e), DI_EUSAGE);
    cr_assert(strstr(e.msg, "0x5A"), "message does not name the byte: %s", e.msg);
    di_tokenizer_free(t);
    di_gguf_close(g);
    free(b.p);
}

Test(vocab, unknown_pre_tokenizer_and_model_are_named)
{
    static const char *const toks[] = {"a", "b", "ab"};
    static const char *const merges[] = {"a b"};
    struct { const char *model, *pre, *needle; } cases[] = {
        {"gpt2", "no-such-pre", "tokenizer.ggml.pre is 'no-such-pre'"},
        {"t5", "default", "tokenizer.ggml.model is 't5'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gguf_blob b = gb_begin();
        gb_kv_str(&b, "tokenizer.ggml.model", cases[i].model);
        gb_kv_str(&b, "tokenizer.ggml.pre", cases[i].pre);
        gb_kv_strs(&b, "tokenizer.ggml.tokens", toks, 3);
        gb_kv_strs(&b, "tokenizer.ggml.merges", merges, 1);
        gb_finish(&b);
        di_gguf *g;
        di_tokenizer *t;
        di_err e = {0};
        cr_assert_eq(di_gguf_open_mem(b.p, b.n, "tiny.gguf", &g, &e), 0, "%s", e.msg);
        cr_assert_eq(di_tokenizer_load(g, &t, &e), DI_EFORMAT);
        cr_assert(strstr(e.msg, cases[i].needle), "%s", e.msg);
        if (i == 0) cr_assert(strstr(e.msg, "llama-bpe") && strstr(e.msg, "qwen2"), "no list of supported: %s", e.msg);
        di_gguf_close(g);
        free(b.p);
    }
}

/* add_bos_token from the metadata wins over the pre-tokenizer's default; eos/eot/eom and the
 * CONTROL end-of-turn texts make the end-of-generation list. */
Test(vocab, add_bos_and_end_of_generation_ids)
{
    static const char *const toks[] = {"a", "b", "ab", "<|begin_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|end|>"};
    static const int32_t types[] = {1, 1, 1, 3, 3, 3, 1};
    static const char *const merges[] = {"a b"};
    for (int flag = -1; flag <= 1; flag++) {
        gguf_blob b = gb_begin();
        gb_kv_str(&b, "tokenizer.ggml.model", "gpt2");
        gb_kv_str(&b, "tokenizer.ggml.pre", "llama-bpe");
        gb_kv_strs(&b, "tokenizer.ggml.tokens", toks, 7);
        gb_kv_i32s(&b, "tokenizer.ggml.token_type", types, 7);
        gb_kv_strs(&b, "tokenizer.ggml.merges", merges, 1);
        gb_kv_u32(&b, "tokenizer.ggml.bos_token_id", 3);
        gb_kv_u32(&b, "tokenizer.ggml.eos_token_id", 4);
        gb_kv_u32(&b, "tokenizer.ggml.eom_token_id", 5);
        if (flag >= 0) gb_kv_bool(&b, "tokenizer.ggml.add_bos_token", flag);
        gb_finish(&b);
        int32_t ids[8];
        size_t n = encode_tiny(&b, "ab", true, ids);
        if (flag == 0) EXPECT_IDS(ids, n, 2);
        else EXPECT_IDS(ids, n, 3, 2); /* llama-bpe adds BOS unless the file says not to */
        di_gguf *g;
        di_tokenizer *t;
        di_err e = {0};
        cr_assert_eq(di_gguf_open_mem(b.p, b.n, "tiny.gguf", &g, &e), 0, "%s", e.msg);
        cr_assert_eq(di_tokenizer_load(g, &t, &e), 0, "%s", e.msg);
        const int32_t *eog;
        int ne = di_tokenizer_eog(t, &eog);
        EXPECT_IDS(eog, (size_t)ne, 4, 5); /* <|end|> is not CONTROL here: not an end */
        cr_assert_str_eq(di_tokenizer_pre(t), "llama-bpe");
        di_tokenizer_free(t);
        di_gguf_close(g);
        free(b.p);
    }
}

/* Gemma 3's ids against Google's sentencepiece on a model built from the same vocabulary
 * (tests/data/make_gemma3_tokens.py wrote tests/data/gemma3_tokens.tsv). */
Test(vocab, gemma3_matches_sentencepiece, .timeout = 120)
{
    di_gguf *g;
    di_tokenizer *t;
    di_err e = {0};
    gemma3_tokenizer(&g, &t);
    FILE *f = fopen(DI_SOURCE_DIR "/tests/data/gemma3_tokens.tsv", "r");
    cr_assert_not_null(f);
    char *line = NULL;
    size_t cap = 0;
    int total = 0, matched = 0;
    while (getline(&line, &cap, f) > 0) {
        char *tab = strchr(line, '\t');
        cr_assert_not_null(tab);
        *tab = 0;
        size_t o = 0; /* undo \\ \t \n */
        for (size_t i = 0; line[i]; i++) {
            if (line[i] == '\\' && line[i + 1]) {
                char c = line[++i];
                line[o++] = c == 't' ? '\t' : c == 'n' ? '\n' : c;
            } else {
                line[o++] = line[i];
            }
        }
        int32_t want[512];
        size_t n_want = 0;
        for (char *tok = strtok(tab + 1, " \n"); tok; tok = strtok(NULL, " \n")) want[n_want++] = (int32_t)atoi(tok);
        int32_t *ids;
        size_t n;
        cr_assert_eq(di_tokenize_prompt(t, line, o, false, &ids, &n, &e), 0, "%s", e.msg);
        bool same = n == n_want && !memcmp(ids, want, n * sizeof *ids);
        if (!same) cr_log_error("gemma3 string %d '%.*s': %zu ids, sentencepiece %zu", total, (int)o, line, n, n_want);
        matched += same;
        total++;
        free(ids);
    }
    free(line);
    fclose(f);
    printf("vocab gemma3: %d/%d strings match sentencepiece\n", matched, total);
    cr_expect_eq(matched, total, "%d of %d strings match", matched, total);
    cr_assert_geq(total, 15);
    di_tokenizer_free(t);
    di_gguf_close(g);
}
