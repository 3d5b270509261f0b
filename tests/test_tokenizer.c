/* Tokenizer: ids against llama.cpp's tokenizer (tests/data/make_tokenizer_ref.py wrote
 * tests/data/tokenizer_ref.tsv), exact byte round trips, special tokens, the chat prompt, speed,
 * and BPE merge order / malformed metadata on tiny vocabularies built in memory. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "model/tokenizer.h"

#ifndef DI_SOURCE_DIR
#define DI_SOURCE_DIR "."
#endif
#define MODEL_NAME "SmolLM2-135M-Instruct.Q4_1.gguf"
#define SMOLLM2_SYSTEM "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"

/* ---------- the real model ---------- */

/* $DETINFER_MODEL, else the default download location. */
static const char *tok_model_path(void)
{
    static char path[4096];
    const char *env = getenv("DETINFER_MODEL");
    if (env && *env) return env;
    const char *home = getenv("HOME");
    snprintf(path, sizeof path, "%s/.cache/detinfer/models/" MODEL_NAME, home ? home : ".");
    return path;
}

typedef struct model_tok { di_gguf *g; di_tokenizer *t; } model_tok;

static model_tok open_model_or_skip(void)
{
    model_tok m = {0};
    const char *path = tok_model_path();
    if (access(path, R_OK) != 0) cr_skip_test("model %s is absent (set DETINFER_MODEL or run scripts/fetch-model)", path);
    di_err e = {0};
    cr_assert_eq(di_gguf_open(path, &m.g, &e), 0, "%s", e.msg);
    cr_assert_eq(di_tokenizer_load(m.g, &m.t, &e), 0, "%s", e.msg);
    return m;
}

static void close_model(model_tok *m)
{
    di_tokenizer_free(m->t);
    di_gguf_close(m->g);
}

/* Concatenated pieces of ids (malloc'd, *len bytes). */
static char *detokenize(const di_tokenizer *t, const int32_t *ids, size_t n, size_t *len)
{
    size_t cap = 64, k = 0;
    char *s = malloc(cap);
    for (size_t i = 0; i < n; i++) {
        const char *b;
        size_t m;
        cr_assert_eq(di_token_piece(t, ids[i], &b, &m), 0, "no piece for id %d", ids[i]);
        while (k + m > cap) s = realloc(s, cap *= 2);
        memcpy(s + k, b, m);
        k += m;
    }
    *len = k;
    return s;
}

static void assert_round_trip(const di_tokenizer *t, const char *text, size_t len, bool special, const char *what)
{
    int32_t *ids;
    size_t n, back_len;
    di_err e = {0};
    cr_assert_eq(di_tokenize(t, text, len, special, &ids, &n, &e), 0, "%s: %s", what, e.msg);
    char *back = detokenize(t, ids, n, &back_len);
    cr_assert(back_len == len && memcmp(back, text, len) == 0, "%s: decode(encode(s)) != s (%zu vs %zu bytes)", what,
              back_len, len);
    free(back);
    free(ids);
}

/* ---------- reference file ---------- */

/* Undoes the TSV escapes (\\ \t \n \r) in place; returns the new length. */
static size_t unescape(char *s)
{
    size_t o = 0;
    for (size_t i = 0; s[i]; i++) {
        if (s[i] == '\\' && s[i + 1]) {
            char c = s[++i];
            s[o++] = c == 't' ? '\t' : c == 'n' ? '\n' : c == 'r' ? '\r' : c;
        } else {
            s[o++] = s[i];
        }
    }
    s[o] = 0;
    return o;
}

static size_t parse_ids(char *s, int32_t *out, size_t cap)
{
    size_t n = 0;
    for (char *tok = strtok(s, " \n"); tok; tok = strtok(NULL, " \n")) {
        cr_assert_lt(n, cap, "too many ids on a line");
        out[n++] = (int32_t)strtol(tok, NULL, 10);
    }
    return n;
}

Test(tokenizer, matches_llama_cpp_reference)
{
    model_tok m = open_model_or_skip();
    FILE *f = fopen(DI_SOURCE_DIR "/tests/data/tokenizer_ref.tsv", "r");
    cr_assert_not_null(f, "tests/data/tokenizer_ref.tsv is missing (tests/data/make_tokenizer_ref.py writes it)");
    char *line = NULL;
    size_t line_cap = 0, lines = 0, with_special = 0;
    enum { MAXIDS = 1 << 16 };
    int32_t *want = malloc(MAXIDS * sizeof *want);
    while (getline(&line, &line_cap, f) > 0) {
        lines++;
        char *tab1 = strchr(line, '\t');
        char *tab2 = tab1 ? strchr(tab1 + 1, '\t') : NULL;
        cr_assert(tab1 && tab2, "tokenizer_ref.tsv line %zu: expected text<TAB>flag<TAB>ids", lines);
        *tab1 = *tab2 = 0;
        bool special = tab1[1] == '1';
        with_special += special;
        size_t n_want = parse_ids(tab2 + 1, want, MAXIDS);
        size_t len = unescape(line);

        int32_t *got;
        size_t n_got;
        di_err e = {0};
        cr_assert_eq(di_tokenize(m.t, line, len, special, &got, &n_got, &e), 0, "line %zu: %s", lines, e.msg);
        size_t first_diff = 0;
        while (first_diff < n_got && first_diff < n_want && got[first_diff] == want[first_diff]) first_diff++;
        cr_expect(n_got == n_want && first_diff == n_want,
                  "line %zu (special=%d, %zu bytes): ids differ at index %zu: got %d, llama.cpp %d (%zu vs %zu ids)",
                  lines, special, len, first_diff, first_diff < n_got ? got[first_diff] : -1,
                  first_diff < n_want ? want[first_diff] : -1, n_got, n_want);
        free(got);
        assert_round_trip(m.t, line, len, special, "reference string");
    }
    free(want);
    free(line);
    fclose(f);
    cr_assert_geq(lines, 200, "the reference holds only %zu strings", lines);
    cr_assert_gt(with_special, 0, "no reference string exercises parse_special");
    close_model(&m);
}

/* ---------- unit tests on the real vocabulary ---------- */

Test(tokenizer, empty_string)
{
    model_tok m = open_model_or_skip();
    int32_t *ids = NULL;
    size_t n = 99;
    di_err e = {0};
    cr_assert_eq(di_tokenize(m.t, "", 0, false, &ids, &n, &e), 0, "%s", e.msg);
    cr_assert_eq(n, 0);
    cr_assert_not_null(ids, "ids must be freeable even when empty");
    free(ids);
    cr_assert_eq(di_tokenize(m.t, "", 0, true, &ids, &n, &e), 0, "%s", e.msg);
    cr_assert_eq(n, 0);
    free(ids);
    close_model(&m);
}

/* Whether some token's piece is exactly the one byte b: the vocabulary decides, not the tokenizer. */
static bool vocab_has_byte(const di_tokenizer *t, uint8_t b)
{
    for (int32_t id = 0; id < di_tokenizer_vocab_size(t); id++) {
        const char *p;
        size_t n;
        if (di_token_piece(t, id, &p, &n) == 0 && n == 1 && (uint8_t)p[0] == b) return true;
    }
    return false;
}

Test(tokenizer, single_bytes)
{
    model_tok m = open_model_or_skip();
    int representable = 0;
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int32_t *ids;
        size_t n;
        di_err e = {0};
        int rc = di_tokenize(m.t, &c, 1, false, &ids, &n, &e);
        if (vocab_has_byte(m.t, (uint8_t)b)) {
            representable++;
            cr_assert_eq(rc, 0, "byte 0x%02X: %s", b, e.msg);
            cr_assert_eq(n, 1, "byte 0x%02X gave %zu ids", b, n);
            const char *p;
            size_t k;
            cr_assert_eq(di_token_piece(m.t, ids[0], &p, &k), 0);
            cr_assert(k == 1 && (uint8_t)p[0] == b, "byte 0x%02X does not round-trip", b);
            free(ids);
        } else {
            /* SmolLM2's vocabulary lacks a few bytes (0x04, 0xFF, ...): an error naming it, no crash */
            char hex[8];
            snprintf(hex, sizeof hex, "0x%02X", b);
            cr_assert_eq(rc, DI_EUSAGE, "byte 0x%02X has no token but tokenizing it returned %d", b, rc);
            cr_assert_not_null(strstr(e.msg, hex), "message does not name the byte: %s", e.msg);
        }
    }
    /* every ASCII letter, digit and UTF-8 continuation byte must be among them */
    cr_assert_geq(representable, 26 * 2 + 10 + 64, "only %d bytes have tokens", representable);
    close_model(&m);
}

Test(tokenizer, invalid_utf8_round_trips)
{
    model_tok m = open_model_or_skip();
    static const char *const cases[] = {
        "\x80", "abc\x80" "def", "caf\xc3", "\xc3(", "\xe2\x82", "\xed\xa0\x80 surrogate", "\xe0\x80\xaf overlong",
        "\xf4\x90\x80\x80 above U+10FFFF", "12\x9f" "34", "  \xbf\xbf  ", "\xe4\xb8", "ok \xe4\xb8\xad\xe6 text",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_round_trip(m.t, cases[i], strlen(cases[i]), false, cases[i]);
    close_model(&m);
}

static uint64_t next_rand(uint64_t *s)
{
    uint64_t x = *s += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Random byte strings (valid UTF-8 or not, specials or not): every one round-trips, except that
 * one holding a byte without a token fails cleanly. */
Test(tokenizer, random_bytes_round_trip)
{
    model_tok m = open_model_or_skip();
    bool has[256];
    for (int b = 0; b < 256; b++) has[b] = vocab_has_byte(m.t, (uint8_t)b);
    static const char *const pieces[] = {"<|im_start|>", "<|im_end|>", "é", "中", "🙂", " ", "\n", "'s", "12", "a"};
    uint64_t seed = 12345;
    char buf[96];
    int round_trips = 0;
    for (int iter = 0; iter < 2000; iter++) {
        size_t len = 0, target = next_rand(&seed) % 80;
        bool representable = true;
        while (len < target) {
            uint64_t r = next_rand(&seed);
            if (r % 3 == 0) {
                const char *p = pieces[(r >> 8) % (sizeof pieces / sizeof pieces[0])];
                memcpy(buf + len, p, strlen(p));
                len += strlen(p);
            } else {
                uint8_t b = (uint8_t)(r >> 16);
                if (iter % 4 != 0 && !has[b]) continue; /* most strings stay representable */
                representable &= has[b];
                buf[len++] = (char)b;
            }
        }
        bool special = iter & 1;
        if (representable) {
            assert_round_trip(m.t, buf, len, special, "random bytes");
            round_trips++;
        } else {
            int32_t *ids;
            size_t n;
            di_err e = {0};
            cr_assert_eq(di_tokenize(m.t, buf, len, special, &ids, &n, &e), DI_EUSAGE, "iteration %d", iter);
        }
    }
    cr_assert_gt(round_trips, 1000, "only %d random strings were representable", round_trips);
    close_model(&m);
}

Test(tokenizer, special_tokens)
{
    model_tok m = open_model_or_skip();
    cr_assert_eq(di_tokenizer_vocab_size(m.t), 49152);
    cr_assert_eq(di_tokenizer_bos(m.t), 1);
    cr_assert_eq(di_tokenizer_eos(m.t), 2);
    cr_assert_eq(di_tokenizer_special(m.t, "<|endoftext|>"), 0);
    cr_assert_eq(di_tokenizer_special(m.t, "<|im_start|>"), 1);
    cr_assert_eq(di_tokenizer_special(m.t, "<|im_end|>"), 2);
    cr_assert_eq(di_tokenizer_special(m.t, "<|im_end|"), -1);
    cr_assert_eq(di_tokenizer_special(m.t, "hello"), -1, "an ordinary token is not special");
    const char *p;
    size_t n;
    cr_assert_eq(di_token_piece(m.t, 1, &p, &n), 0);
    cr_assert(n == 12 && memcmp(p, "<|im_start|>", 12) == 0, "piece of a special token is its text");
    cr_assert_neq(di_token_piece(m.t, -1, &p, &n), 0);
    cr_assert_neq(di_token_piece(m.t, 49152, &p, &n), 0);

    const char *text = "<|im_start|>hi<|im_end|>";
    int32_t *ids;
    size_t k;
    di_err e = {0};
    cr_assert_eq(di_tokenize(m.t, text, strlen(text), true, &ids, &k, &e), 0, "%s", e.msg);
    cr_assert(k >= 3 && ids[0] == 1 && ids[k - 1] == 2, "parse_special: the markers become ids 1 and 2");
    free(ids);
    cr_assert_eq(di_tokenize(m.t, text, strlen(text), false, &ids, &k, &e), 0, "%s", e.msg);
    for (size_t i = 0; i < k; i++) cr_assert(ids[i] > 16, "without parse_special no special id may appear");
    free(ids);
    close_model(&m);
}

Test(tokenizer, chat_prompt_follows_gguf_template)
{
    char *s = di_chat_prompt("What is 2+2?");
    cr_assert_not_null(s);
    cr_assert_str_eq(s, SMOLLM2_SYSTEM "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
    free(s);

    /* the hard-coded text must be what tokenizer.chat_template renders for one user message
     * (the template's string literals hold real newlines) */
    model_tok m = open_model_or_skip();
    di_gguf_str tpl;
    di_err e = {0};
    cr_assert_eq(di_gguf_get_str(m.g, "tokenizer.chat_template", &tpl, &e), 0, "%s", e.msg);
    char *t = strndup(tpl.ptr, tpl.len);
    cr_assert_not_null(strstr(t, "messages[0]['role'] != 'system'"), "template: %s", t);
    cr_assert_not_null(strstr(t, "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
                                 "trained by Hugging Face<|im_end|>\n' }}"), "template: %s", t);
    cr_assert_not_null(strstr(t, "'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'"),
                       "template: %s", t);
    cr_assert_not_null(strstr(t, "{{ '<|im_start|>assistant\n' }}"), "template: %s", t);
    free(t);

    char *chat = di_chat_prompt("Hi");
    int32_t *ids;
    size_t n, starts = 0, ends = 0;
    cr_assert_eq(di_tokenize(m.t, chat, strlen(chat), true, &ids, &n, &e), 0, "%s", e.msg);
    for (size_t i = 0; i < n; i++) {
        starts += ids[i] == 1;
        ends += ids[i] == 2;
    }
    cr_assert(ids[0] == 1 && starts == 3 && ends == 2, "ChatML markers: %zu starts, %zu ends", starts, ends);
    free(ids);
    free(chat);
    close_model(&m);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

Test(tokenizer, encodes_10kb_quickly)
{
    model_tok m = open_model_or_skip();
    static const char *const parts[] = {
        "The quick brown fox jumps over the lazy dog. ", "int main(void) { return 0; }\n", "  \t\n",
        "3.14159 2024-01-15 ", "naïve café 中文 мир ", "🙂👍🏽 ", "don't won't it's ", "{\"k\": [1, 2]}\n",
    };
    enum { SIZE = 10240 };
    char *text = malloc(SIZE + 64);
    size_t len = 0;
    for (size_t i = 0; len < SIZE; i++) {
        const char *p = parts[(i * 7 + i / 3) % (sizeof parts / sizeof parts[0])];
        memcpy(text + len, p, strlen(p));
        len += strlen(p);
    }
    /* one long word too: BPE on a single 4 KB piece must not be quadratic */
    char *word = malloc(4096);
    for (int i = 0; i < 4096; i++) word[i] = "abcdefgh"[(i * 5 + i / 7) % 8];

    int32_t *ids;
    size_t n;
    di_err e = {0};
    double t0 = now_s();
    cr_assert_eq(di_tokenize(m.t, text, len, false, &ids, &n, &e), 0, "%s", e.msg);
    free(ids);
    cr_assert_eq(di_tokenize(m.t, word, 4096, false, &ids, &n, &e), 0, "%s", e.msg);
    free(ids);
    double dt = now_s() - t0;
    cr_log_info("tokenized %zu + 4096 bytes in %.1f ms", len, dt * 1e3);
    cr_assert_lt(dt, 0.25, "tokenizing %zu + 4096 bytes took %.3f s", len, dt);
    assert_round_trip(m.t, text, len, false, "10 KB text");
    assert_round_trip(m.t, word, 4096, false, "4 KB word");
    free(text);
    free(word);
    close_model(&m);
}

/* ---------- tiny vocabularies in memory: merge order and malformed metadata ---------- */

typedef struct blob { char *p; size_t n, cap; } blob;

static void put(blob *b, const void *p, size_t n)
{
    while (b->n + n > b->cap) b->p = realloc(b->p, b->cap = b->cap ? b->cap * 2 : 256);
    memcpy(b->p + b->n, p, n);
    b->n += n;
}
static void put_u32(blob *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(blob *b, uint64_t v) { put(b, &v, 8); }
static void put_str(blob *b, const char *s) { put_u64(b, strlen(s)); put(b, s, strlen(s)); }
static void kv_str(blob *b, const char *k, const char *v) { put_str(b, k); put_u32(b, 8); put_str(b, v); }
static void kv_u32(blob *b, const char *k, uint32_t v) { put_str(b, k); put_u32(b, 4); put_u32(b, v); }
static void kv_strs(blob *b, const char *k, const char *const *v, size_t n)
{
    put_str(b, k);
    put_u32(b, 9);
    put_u32(b, 8);
    put_u64(b, n);
    for (size_t i = 0; i < n; i++) put_str(b, v[i]);
}

/* A GGUF v3 with no tensors and a gpt2 tokenizer over the given tokens and merges. */
static blob tiny_gguf(const char *model, const char *const *tokens, size_t nt, const char *const *merges, size_t nm)
{
    blob b = {0};
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, 0); /* tensors */
    put_u64(&b, 7); /* key-value pairs */
    kv_str(&b, "general.architecture", "llama");
    kv_str(&b, "tokenizer.ggml.model", model);
    kv_str(&b, "tokenizer.ggml.pre", "smollm");
    kv_strs(&b, "tokenizer.ggml.tokens", tokens, nt);
    kv_strs(&b, "tokenizer.ggml.merges", merges, nm);
    kv_u32(&b, "tokenizer.ggml.bos_token_id", 0);
    kv_u32(&b, "tokenizer.ggml.eos_token_id", 0);
    while (b.n % 32) put(&b, "", 1); /* the data section starts aligned */
    return b;
}

static int tiny_load(blob *b, di_gguf **g, di_tokenizer **t, di_err *e)
{
    cr_assert_eq(di_gguf_open_mem(b->p, b->n, "tiny.gguf", g, e), 0, "%s", e->msg);
    return di_tokenizer_load(*g, t, e);
}

static void tiny_expect(const char *const *merges, size_t nm, const char *text, const int32_t *want, size_t n_want)
{
    static const char *const tokens[] = {"<s>", "a", "b", "c", "ab", "bc", "abc", "aa"};
    blob b = tiny_gguf("gpt2", tokens, 8, merges, nm);
    di_gguf *g;
    di_tokenizer *t;
    di_err e = {0};
    cr_assert_eq(tiny_load(&b, &g, &t, &e), 0, "%s", e.msg);
    int32_t *ids;
    size_t n;
    cr_assert_eq(di_tokenize(t, text, strlen(text), false, &ids, &n, &e), 0, "%s", e.msg);
    cr_assert_eq(n, n_want, "'%s': %zu ids, want %zu", text, n, n_want);
    for (size_t i = 0; i < n; i++) cr_assert_eq(ids[i], want[i], "'%s': id %zu is %d, want %d", text, i, ids[i], want[i]);
    free(ids);
    di_tokenizer_free(t);
    di_gguf_close(g);
    free(b.p);
}

Test(tokenizer, merges_apply_lowest_rank_first)
{
    static const char *const bc_first[] = {"b c", "a b", "a bc"};
    tiny_expect(bc_first, 3, "abc", (const int32_t[]){6}, 1);      /* b+c, then a+bc */
    static const char *const ab_first[] = {"a b", "b c", "ab c"};
    tiny_expect(ab_first, 3, "abc", (const int32_t[]){6}, 1);      /* a+b, then ab+c */
    static const char *const no_abc[] = {"a b", "b c", "a bc"};
    tiny_expect(no_abc, 3, "abc", (const int32_t[]){4, 3}, 2);     /* a+b wins, and "ab c" is no merge */
    static const char *const ties[] = {"a a", "b c"};
    tiny_expect(ties, 2, "aaa", (const int32_t[]){7, 1}, 2);       /* equal ranks: leftmost pair first */
    tiny_expect(ties, 2, "cba", (const int32_t[]){3, 2, 1}, 3);    /* no merge matches */
}

Test(tokenizer, rejects_malformed_metadata)
{
    static const char *const tokens[] = {"a", "b", "ab"};
    static const char *const bad_merge[] = {"a c"};
    static const char *const no_space[] = {"ab"};
    struct { const char *model; const char *const *merges; const char *needle; } cases[] = {
        {"t5", NULL, "tokenizer.ggml.model"},
        {"gpt2", bad_merge, "tokenizer.ggml.merges[0]"},
        {"gpt2", no_space, "tokenizer.ggml.merges[0]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        blob b = tiny_gguf(cases[i].model, tokens, 3, cases[i].merges, cases[i].merges ? 1 : 0);
        di_gguf *g;
        di_tokenizer *t = (di_tokenizer *)1;
        di_err e = {0};
        cr_assert_eq(tiny_load(&b, &g, &t, &e), DI_EFORMAT, "case %zu loaded", i);
        cr_assert_null(t);
        cr_assert_not_null(strstr(e.msg, cases[i].needle), "case %zu: message does not name %s: %s", i,
                           cases[i].needle, e.msg);
        di_gguf_close(g);
        free(b.p);
    }
}
