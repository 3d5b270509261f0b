/* Tokenizers from tokenizer.ggml.* metadata, behaving as llama.cpp's do:
 *
 *   text ──special-token partition──▶ fragments ──▶ ids, per fragment by the vocabulary's kind:
 *     gpt2    byte-level BPE: pre-tokenizer (model/pretok.c) ──▶ words ──▶ BPE over bytes
 *     gemma4  BPE over UTF-8 characters: spaces to U+2581, newline runs cut, <0xNN> byte fallback
 *     llama   SentencePiece: a space before the fragment (add_space_prefix), spaces to U+2581, pairs
 *             merged by highest token score, characters without a token as <0xNN> bytes
 *
 * - Special tokens (token_type CONTROL/UNKNOWN with parse_special, USER_DEFINED always) are cut out of
 *   the text first, longest text first; the text between them is tokenized fragment by fragment.
 * - Byte-level BPE works on raw bytes and token ids: the byte-level alphabet (bytes_to_unicode) is
 *   undone once at load time, so every token is stored as the bytes it stands for, and a merge "a b"
 *   becomes the pair (id(a), id(b)) -> (rank, id(ab)). Lowest rank merges first; ties go to the
 *   leftmost pair. The other kinds keep token texts as they are (U+2581 for a space) and store, apart,
 *   the bytes each token prints as.
 * - SentencePiece merges the adjacent pair whose joined text is a token of the highest score (ties:
 *   the leftmost), as llama.cpp's llm_tokenizer_spm does.
 *
 * Where we differ from llama.cpp on purpose: invalid UTF-8 bytes are kept as raw bytes (llama.cpp turns
 * them into U+FFFD in byte-level BPE), so decode(encode(s)) == s whenever encoding succeeds. A byte that
 * no token can stand for (SmolLM2's vocabulary lacks 21 of the 256, e.g. 0x04 and 0xFF) is an error,
 * where llama.cpp silently drops it or throws. */
#define _GNU_SOURCE /* memmem */
#include "model/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/pretok.h"

enum token_type { /* tokenizer.ggml.token_type values (llama.cpp's numbering) */
    TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5, TT_BYTE = 6,
};

/* tokenizer.ggml.model values: X(name, kind, description) */
#define TOKENIZER_MODELS(X)                                        \
    X("gpt2", TK_BPE, "byte-level BPE")                            \
    X("gemma4", TK_BPE_RAW, "BPE over UTF-8 with byte fallback")   \
    X("llama", TK_SPM, "SentencePiece")

typedef enum { TK_BPE, TK_BPE_RAW, TK_SPM } tok_kind;

static const struct { const char *name; tok_kind kind; const char *what; } models[] = {
#define X(name, kind, what) {name, kind, what},
    TOKENIZER_MODELS(X)
#undef X
};

typedef struct merge_slot { uint64_t key; int32_t rank, result; } merge_slot; /* key 0 = empty */

struct di_tokenizer {
    tok_kind kind;
    const di_pretok *pre;        /* byte-level BPE and gemma4 */
    char pre_name[64];           /* the tokenizer.ggml.pre value it was chosen by */
    int32_t n_vocab, bos, eos, eot, eom;
    bool add_bos, add_eos, add_space_prefix;
    char *arena;                 /* token texts as looked up: bytes (byte-level BPE) or the raw text */
    size_t *text_off;            /* n_vocab + 1 offsets into arena */
    char *pieces;                /* the bytes each token prints as, when they differ from the text */
    size_t *piece_off;
    uint8_t *type;               /* enum token_type per id */
    float *scores;               /* SentencePiece: tokenizer.ggml.scores */
    int32_t *text_slots;         /* open addressing: ids keyed by text; -1 empty */
    size_t text_mask;
    merge_slot *merge_slots;
    size_t merge_mask;
    int32_t byte_token[256];     /* id standing for one raw byte (<0xNN> outside byte-level BPE), or -1 */
    int32_t *specials;           /* special ids, longest text first (ties: lower id first) */
    int32_t n_specials;
    int32_t eog[16];             /* end-of-generation ids, ascending, no duplicates */
    int n_eog;
};

/* ---------- hashing ---------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ULL;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static size_t table_size_for(size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1; /* load factor <= 1/2 keeps probes short */
    return cap;
}

static const char *text_ptr(const di_tokenizer *t, int32_t id) { return t->arena + t->text_off[id]; }
static size_t text_len(const di_tokenizer *t, int32_t id) { return t->text_off[id + 1] - t->text_off[id]; }

static bool is_special_type(int type)
{
    return type == TT_CONTROL || type == TT_USER_DEFINED || type == TT_UNKNOWN;
}

/* Slot holding the id whose text is s[0..n), or the empty slot where it would go. */
static size_t text_slot(const di_tokenizer *t, const char *s, size_t n)
{
    size_t i = hash_bytes(s, n) & t->text_mask;
    for (;;) {
        int32_t id = t->text_slots[i];
        if (id < 0 || (text_len(t, id) == n && memcmp(text_ptr(t, id), s, n) == 0)) return i;
        i = (i + 1) & t->text_mask;
    }
}

static int32_t text_lookup(const di_tokenizer *t, const char *s, size_t n)
{
    return t->text_slots[text_slot(t, s, n)];
}

static uint64_t merge_key(int32_t left, int32_t right)
{
    /* +1 keeps key 0 free to mean "empty slot" */
    return ((uint64_t)(uint32_t)left << 32 | (uint32_t)right) + 1;
}

static merge_slot *merge_find(const di_tokenizer *t, int32_t left, int32_t right)
{
    uint64_t key = merge_key(left, right);
    size_t i = hash_u64(key) & t->merge_mask;
    while (t->merge_slots[i].key != 0 && t->merge_slots[i].key != key) i = (i + 1) & t->merge_mask;
    return &t->merge_slots[i];
}

/* ---------- byte-level alphabet (GPT-2 bytes_to_unicode) ---------- */

/* GPT-2 maps each byte to a printable code point: bytes that are printable Latin-1 map to
 * themselves, the other 68 to 256, 257, ... in byte order. We need only the inverse. */
enum { BYTE_CP_LIMIT = 256 + 68 };

static bool byte_is_printable_latin1(int b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static void build_cp_to_byte(int16_t cp_to_byte[BYTE_CP_LIMIT])
{
    for (int i = 0; i < BYTE_CP_LIMIT; i++) cp_to_byte[i] = -1;
    int next = 256;
    for (int b = 0; b < 256; b++) {
        if (byte_is_printable_latin1(b)) cp_to_byte[b] = (int16_t)b;
        else cp_to_byte[next++] = (int16_t)b;
    }
}

/* Appends the raw bytes a token text stands for: byte-level code points become their byte; any
 * other code point (none in SmolLM2) is kept as its UTF-8 bytes. Returns the new length. */
static size_t byte_decode_text(const int16_t cp_to_byte[BYTE_CP_LIMIT], const char *text, size_t n,
                               char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = di_utf8_decode((const uint8_t *)text + i, n - i, &cp);
        if (k == 0) { out[o++] = text[i++]; continue; }
        if (cp < BYTE_CP_LIMIT && cp_to_byte[cp] >= 0) out[o++] = (char)cp_to_byte[cp];
        else { memcpy(out + o, text + i, k); o += k; }
        i += k;
    }
    return o;
}

/* ---------- the U+2581 space marker and <0xNN> byte tokens ---------- */

static const char SPACE_MARK[] = "\xe2\x96\x81"; /* U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space */

/* The byte a "<0xNN>" text names, or -1. */
static int byte_token_value(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* The bytes a raw (U+2581) token prints as: the marker becomes a space, a byte token its byte. */
static size_t raw_piece(const char *s, size_t n, int type, char *out)
{
    int b = type == TT_BYTE ? byte_token_value(s, n) : -1;
    if (b >= 0) { out[0] = (char)b; return 1; }
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (!is_special_type(type) && i + 3 <= n && !memcmp(s + i, SPACE_MARK, 3)) { out[o++] = ' '; i += 3; }
        else out[o++] = s[i++];
    }
    return o;
}

/* ---------- loading ---------- */

static int alloc_fail(di_err *err, const char *what)
{
    return di_fail(err, DI_ENOMEM, "tokenizer: out of memory allocating %s", what);
}

static int find_array(const di_gguf *g, const char *key, bool strings, const di_gguf_kv **out, di_err *err)
{
    const di_gguf_kv *kv = di_gguf_find(g, key);
    if (!kv) return di_fail(err, DI_EFORMAT, "%s: tokenizer key %s is missing", g->path, key);
    if (kv->type != DI_GGUF_ARRAY) return di_fail(err, DI_EFORMAT, "%s: %s is not an array", g->path, key);
    bool is_str = kv->arr_type == DI_GGUF_STRING;
    bool is_int = kv->arr_type <= DI_GGUF_I32 || kv->arr_type == DI_GGUF_U64 || kv->arr_type == DI_GGUF_I64;
    if (strings ? !is_str : !is_int)
        return di_fail(err, DI_EFORMAT, "%s: %s has element type %d, expected %s", g->path, key,
                       kv->arr_type, strings ? "string" : "integer");
    *out = kv;
    return DI_OK;
}

static int check_model_kind(const di_gguf *g, di_tokenizer *t, di_err *err)
{
    di_gguf_str s;
    if (di_gguf_get_str(g, "tokenizer.ggml.model", &s, err)) return err->code;
    size_t m = 0, n_models = sizeof models / sizeof models[0];
    while (m < n_models && !(s.len == strlen(models[m].name) && !memcmp(s.ptr, models[m].name, s.len))) m++;
    if (m == n_models)
        return di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.model is '%.*s'; supported: gpt2 (byte-level BPE), "
                       "llama (SentencePiece), gemma4", g->path, (int)(s.len > 64 ? 64 : s.len), s.ptr);
    t->kind = models[m].kind;
    if (t->kind == TK_SPM) return DI_OK; /* llama.cpp gives SentencePiece no pre-tokenizer */
    if (t->kind == TK_BPE_RAW) {
        t->pre = di_pretok_find("gemma4", 6);
        return DI_OK;
    }
    /* a missing value is llama.cpp's "default" (it warns that quality suffers) */
    if (!di_gguf_find(g, "tokenizer.ggml.pre")) s = (di_gguf_str){"default", 7};
    else if (di_gguf_get_str(g, "tokenizer.ggml.pre", &s, err)) return err->code;
    if (!(t->pre = di_pretok_find(s.ptr, (size_t)s.len)))
        return di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.pre is '%.*s', an unknown pre-tokenizer; supported: %s",
                       g->path, (int)(s.len > 64 ? 64 : s.len), s.ptr, di_pretok_names());
    snprintf(t->pre_name, sizeof t->pre_name, "%.*s", (int)(s.len > 63 ? 63 : s.len), s.ptr);
    return DI_OK;
}

/* An optional token id key: -1 when absent; an error naming it when out of range. */
static int optional_id(const di_gguf *g, const di_tokenizer *t, const char *key, int32_t *dst, di_err *err)
{
    *dst = -1;
    if (!di_gguf_find(g, key)) return DI_OK;
    uint64_t v;
    if (di_gguf_get_u64(g, key, &v, err)) return err->code;
    if (v >= (uint64_t)t->n_vocab)
        return di_fail(err, DI_EFORMAT, "%s: %s = %llu is not below the vocabulary size %d", g->path, key,
                       (unsigned long long)v, t->n_vocab);
    *dst = (int32_t)v;
    return DI_OK;
}

static int optional_bool(const di_gguf *g, const char *key, bool *dst, di_err *err)
{
    const di_gguf_kv *kv = di_gguf_find(g, key);
    if (!kv) return DI_OK;
    if (kv->type != DI_GGUF_BOOL)
        return di_fail(err, DI_EFORMAT, "%s: %s has value type %d, not bool", g->path, key, kv->type);
    *dst = kv->data[0] != 0;
    return DI_OK;
}

/* Ids and flags: bos, eos, eot, eom; add_bos/add_eos/add_space_prefix with llama.cpp's defaults
 * per kind (SentencePiece adds BOS and a space; BPE neither, unless its pre-tokenizer says). */
static int load_special_ids(const di_gguf *g, di_tokenizer *t, di_err *err)
{
    struct { const char *key; int32_t *dst; } ids[] = {
        {"tokenizer.ggml.bos_token_id", &t->bos}, {"tokenizer.ggml.eos_token_id", &t->eos},
        {"tokenizer.ggml.eot_token_id", &t->eot}, {"tokenizer.ggml.eom_token_id", &t->eom},
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if (optional_id(g, t, ids[i].key, ids[i].dst, err)) return err->code;
    t->add_bos = t->kind == TK_SPM || (t->pre && di_pretok_add_bos(t->pre));
    t->add_eos = false;
    t->add_space_prefix = t->kind == TK_SPM;
    if (optional_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err) ||
        optional_bool(g, "tokenizer.ggml.add_eos_token", &t->add_eos, err) ||
        optional_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err))
        return err->code;
    if (t->kind == TK_BPE_RAW) t->add_bos = true; /* llama.cpp overrides it for Gemma 4 */
    if (t->add_bos && t->bos < 0)
        return di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.add_bos_token is set but tokenizer.ggml.bos_token_id is "
                       "missing", g->path);
    if (t->add_eos && t->eos < 0)
        return di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.add_eos_token is set but tokenizer.ggml.eos_token_id is "
                       "missing", g->path);
    return DI_OK;
}

static int load_scores(const di_gguf *g, di_tokenizer *t, di_err *err)
{
    t->scores = calloc((size_t)t->n_vocab, sizeof *t->scores);
    if (!t->scores) return alloc_fail(err, "the token scores");
    const di_gguf_kv *kv = di_gguf_find(g, "tokenizer.ggml.scores");
    if (!kv) return DI_OK; /* all 0: merges by position only */
    /* float32, or int32 as llama.cpp also reads them */
    if (kv->type != DI_GGUF_ARRAY || (kv->arr_type != DI_GGUF_F32 && kv->arr_type != DI_GGUF_I32) ||
        kv->arr_len != (uint64_t)t->n_vocab)
        return di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.scores must be %d float32 or int32 values", g->path,
                       t->n_vocab);
    if (kv->arr_type == DI_GGUF_F32) memcpy(t->scores, kv->data, (size_t)t->n_vocab * sizeof *t->scores);
    else
        for (int32_t i = 0; i < t->n_vocab; i++) t->scores[i] = (float)di_gguf_arr_int(kv, (uint64_t)i);
    return DI_OK;
}

/* Token texts into the arena, what they print as into pieces, and the text map. */
static int load_tokens(const di_gguf *g, di_tokenizer *t, di_err *err)
{
    const di_gguf_kv *toks, *types = NULL;
    if (find_array(g, "tokenizer.ggml.tokens", true, &toks, err)) return err->code;
    if (toks->arr_len == 0 || toks->arr_len > INT32_MAX / 4)
        return di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.tokens has %llu entries", g->path,
                       (unsigned long long)toks->arr_len);
    t->n_vocab = (int32_t)toks->arr_len;
    if (di_gguf_find(g, "tokenizer.ggml.token_type")) {
        if (find_array(g, "tokenizer.ggml.token_type", false, &types, err)) return err->code;
        if (types->arr_len != toks->arr_len)
            return di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.token_type has %llu entries, tokenizer.ggml.tokens %llu",
                           g->path, (unsigned long long)types->arr_len, (unsigned long long)toks->arr_len);
    }
    size_t total = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        di_gguf_str s;
        if (di_gguf_arr_str(toks, (uint64_t)i, &s))
            return di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.tokens[%d] is unreadable", g->path, i);
        total += s.len;
    }
    bool raw = t->kind != TK_BPE;
    t->arena = malloc(total + 1);
    t->text_off = malloc(((size_t)t->n_vocab + 1) * sizeof *t->text_off);
    t->pieces = raw ? malloc(total + 1) : t->arena;
    t->piece_off = raw ? malloc(((size_t)t->n_vocab + 1) * sizeof *t->piece_off) : t->text_off;
    t->type = malloc((size_t)t->n_vocab);
    size_t cap = table_size_for((size_t)t->n_vocab);
    t->text_slots = malloc(cap * sizeof *t->text_slots);
    if (!t->arena || !t->text_off || !t->pieces || !t->piece_off || !t->type || !t->text_slots)
        return alloc_fail(err, "the vocabulary");
    t->text_mask = cap - 1;
    memset(t->text_slots, 0xff, cap * sizeof *t->text_slots);

    int16_t cp_to_byte[BYTE_CP_LIMIT];
    build_cp_to_byte(cp_to_byte);
    size_t off = 0, poff = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        di_gguf_str s;
        di_gguf_arr_str(toks, (uint64_t)i, &s);
        int64_t ty = types ? di_gguf_arr_int(types, (uint64_t)i) : TT_NORMAL;
        /* an unknown type is not taken for NORMAL: whether a token is special decides how its
         * text is stored and whether the text of a prompt can produce it */
        if (ty < TT_NORMAL || ty > TT_BYTE)
            return di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.token_type[%d] = %lld is not a known token type "
                           "(1 normal .. 6 byte)", g->path, i, (long long)ty);
        t->type[i] = (uint8_t)ty;
        t->text_off[i] = off;
        if (raw || is_special_type(t->type[i])) { /* literal text */
            memcpy(t->arena + off, s.ptr, s.len);
            off += s.len;
        } else {
            off += byte_decode_text(cp_to_byte, s.ptr, s.len, t->arena + off);
        }
        if (raw) {
            t->piece_off[i] = poff;
            poff += raw_piece(s.ptr, s.len, t->type[i], t->pieces + poff);
        }
    }
    t->text_off[t->n_vocab] = off;
    if (raw) t->piece_off[t->n_vocab] = poff;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        /* byte-level BPE looks up plain tokens only; the others look up every text, as
         * llama.cpp's text_to_token does. Duplicates: the later id wins, as in its map. */
        if ((!raw && is_special_type(t->type[i])) || text_len(t, i) == 0) continue;
        t->text_slots[text_slot(t, text_ptr(t, i), text_len(t, i))] = i;
    }
    for (int b = 0; b < 256; b++) {
        char c[7];
        if (raw) snprintf(c, sizeof c, "<0x%02X>", b);
        else c[0] = (char)b;
        t->byte_token[b] = text_lookup(t, c, raw ? 6 : 1);
    }
    if (t->kind == TK_SPM) /* llama.cpp falls back to the byte as a one-byte text */
        for (int b = 0; b < 256; b++)
            if (t->byte_token[b] < 0) {
                char c = (char)b;
                t->byte_token[b] = text_lookup(t, &c, 1);
            }
    return DI_OK;
}

/* Merges "a b" into the pair map: (id(a), id(b)) -> (rank, id(ab)). Byte-level BPE undoes the
 * byte alphabet first; gemma4 merges raw texts. */
static int load_merges(const di_gguf *g, di_tokenizer *t, di_err *err)
{
    const di_gguf_kv *merges;
    if (find_array(g, "tokenizer.ggml.merges", true, &merges, err)) return err->code;
    if (merges->arr_len > INT32_MAX / 4)
        return di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.merges has %llu entries", g->path,
                       (unsigned long long)merges->arr_len);
    size_t cap = table_size_for((size_t)merges->arr_len);
    t->merge_slots = calloc(cap, sizeof *t->merge_slots);
    if (!t->merge_slots) return alloc_fail(err, "the merge table");
    t->merge_mask = cap - 1;

    int16_t cp_to_byte[BYTE_CP_LIMIT];
    build_cp_to_byte(cp_to_byte);
    char *buf = NULL;
    size_t buf_cap = 0;
    int rc = DI_OK;
    for (uint64_t r = 0; r < merges->arr_len && rc == DI_OK; r++) {
        di_gguf_str s;
        if (di_gguf_arr_str(merges, r, &s)) {
            rc = di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.merges[%llu] is unreadable", g->path, (unsigned long long)r);
            break;
        }
        /* the separator is the first space after position 0, as llama.cpp splits it */
        const char *sp = s.len > 1 ? memchr(s.ptr + 1, ' ', s.len - 1) : NULL;
        if (!sp || sp + 1 == s.ptr + s.len) {
            rc = di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.merges[%llu] = '%.*s' is not 'left right'", g->path,
                         (unsigned long long)r, (int)(s.len > 64 ? 64 : s.len), s.ptr);
            break;
        }
        if (s.len > buf_cap) {
            free(buf);
            buf_cap = s.len * 2;
            if (!(buf = malloc(buf_cap))) { rc = alloc_fail(err, "a merge"); break; }
        }
        size_t nl, nr, ll = (size_t)(sp - s.ptr), rl = (size_t)(s.ptr + s.len - sp - 1);
        if (t->kind == TK_BPE) {
            nl = byte_decode_text(cp_to_byte, s.ptr, ll, buf);
            nr = byte_decode_text(cp_to_byte, sp + 1, rl, buf + nl);
        } else {
            memcpy(buf, s.ptr, nl = ll);
            memcpy(buf + nl, sp + 1, nr = rl);
        }
        int32_t left = text_lookup(t, buf, nl), right = text_lookup(t, buf + nl, nr);
        int32_t result = text_lookup(t, buf, nl + nr);
        if (left < 0 || right < 0 || result < 0) {
            rc = di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.merges[%llu] = '%.*s': %s is not in tokenizer.ggml.tokens",
                         g->path, (unsigned long long)r, (int)(s.len > 64 ? 64 : s.len), s.ptr,
                         left < 0 ? "the left part" : right < 0 ? "the right part" : "the merged token");
            break;
        }
        merge_slot *slot = merge_find(t, left, right);
        if (slot->key == 0) /* a repeated pair keeps its first (lowest) rank */
            *slot = (merge_slot){merge_key(left, right), (int32_t)r, result};
    }
    free(buf);
    return rc;
}

typedef struct special_key { size_t len; int32_t id; } special_key;

static int cmp_special(const void *pa, const void *pb)
{
    const special_key *a = pa, *b = pb;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

static int collect_specials(di_tokenizer *t, di_err *err)
{
    t->specials = malloc((size_t)t->n_vocab * sizeof *t->specials);
    special_key *keys = malloc((size_t)t->n_vocab * sizeof *keys);
    if (!t->specials || !keys) { free(keys); return alloc_fail(err, "the special tokens"); }
    size_t n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (is_special_type(t->type[i]) && text_len(t, i) > 0) keys[n++] = (special_key){text_len(t, i), i};
    qsort(keys, n, sizeof *keys, cmp_special);
    for (size_t i = 0; i < n; i++) t->specials[i] = keys[i].id;
    t->n_specials = (int32_t)n;
    free(keys);
    return DI_OK;
}

/* Control tokens that end a turn by their text, as llama.cpp's list of end-of-generation texts
 * has them; only tokens the vocabulary marks CONTROL count (a plain "</s>" word does not). */
#define EOG_TEXTS(X) \
    X("<|endoftext|>") X("<|im_end|>") X("<|eot_id|>") X("<|eom_id|>") X("<|end|>") X("<end_of_turn>") \
    X("<|end_of_text|>") X("<eos>") X("<turn|>")

static void add_eog(di_tokenizer *t, int32_t id)
{
    if (id < 0 || t->n_eog == (int)(sizeof t->eog / sizeof t->eog[0])) return;
    int i = 0;
    while (i < t->n_eog && t->eog[i] < id) i++;
    if (i < t->n_eog && t->eog[i] == id) return;
    memmove(&t->eog[i + 1], &t->eog[i], (size_t)(t->n_eog - i) * sizeof t->eog[0]);
    t->eog[i] = id;
    t->n_eog++;
}

static void collect_eog(di_tokenizer *t)
{
    add_eog(t, t->eos);
    add_eog(t, t->eot);
    add_eog(t, t->eom);
    static const char *const texts[] = {
#define X(s) s,
        EOG_TEXTS(X)
#undef X
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int32_t id = di_tokenizer_special(t, texts[i]);
        if (id >= 0 && t->type[id] == TT_CONTROL) add_eog(t, id);
    }
}

int di_tokenizer_load(const di_gguf *g, di_tokenizer **out, di_err *err)
{
    *out = NULL;
    di_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return alloc_fail(err, "the tokenizer");
    int rc = check_model_kind(g, t, err);
    if (!rc) rc = load_tokens(g, t, err);
    if (!rc) rc = load_special_ids(g, t, err);
    if (!rc && t->kind == TK_SPM) rc = load_scores(g, t, err);
    if (!rc && t->kind != TK_SPM) rc = load_merges(g, t, err);
    if (!rc) rc = collect_specials(t, err);
    if (rc) { di_tokenizer_free(t); return rc; }
    collect_eog(t);
    *out = t;
    return DI_OK;
}

void di_tokenizer_free(di_tokenizer *t)
{
    if (!t) return;
    if (t->pieces != t->arena) free(t->pieces);
    if (t->piece_off != t->text_off) free(t->piece_off);
    free(t->arena);
    free(t->text_off);
    free(t->type);
    free(t->scores);
    free(t->text_slots);
    free(t->merge_slots);
    free(t->specials);
    free(t);
}

int di_tokenizer_vocab_size(const di_tokenizer *t) { return t->n_vocab; }
int di_tokenizer_bos(const di_tokenizer *t) { return t->bos; }
int di_tokenizer_eos(const di_tokenizer *t) { return t->eos; }
int di_tokenizer_eot(const di_tokenizer *t) { return t->eot; }
int di_tokenizer_eom(const di_tokenizer *t) { return t->eom; }
bool di_tokenizer_adds_bos(const di_tokenizer *t) { return t->add_bos; }
bool di_tokenizer_adds_eos(const di_tokenizer *t) { return t->add_eos; }

const char *di_tokenizer_model(const di_tokenizer *t)
{
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
        if (models[i].kind == t->kind) return models[i].name;
    return "?";
}

const char *di_tokenizer_pre(const di_tokenizer *t)
{
    if (!t->pre) return NULL;
    return t->pre_name[0] ? t->pre_name : di_pretok_name(t->pre);
}

const char *di_tokenizer_pre_rule(const di_tokenizer *t) { return t->pre ? di_pretok_name(t->pre) : NULL; }

int di_tokenizer_eog(const di_tokenizer *t, const int32_t **ids)
{
    *ids = t->eog;
    return t->n_eog;
}

bool di_tokenizer_is_eog(const di_tokenizer *t, int32_t id)
{
    for (int i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return true;
    return false;
}

bool di_tokenizer_is_special(const di_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && is_special_type(t->type[id]);
}

int di_tokenizer_special(const di_tokenizer *t, const char *text)
{
    size_t n = strlen(text);
    for (int32_t i = 0; i < t->n_specials; i++) {
        int32_t id = t->specials[i];
        if (text_len(t, id) == n && memcmp(text_ptr(t, id), text, n) == 0) return id;
    }
    return -1;
}

int di_token_piece(const di_tokenizer *t, int32_t id, const char **bytes, size_t *len)
{
    if (id < 0 || id >= t->n_vocab) return DI_EUSAGE;
    *bytes = t->pieces + t->piece_off[id];
    *len = t->piece_off[id + 1] - t->piece_off[id];
    return DI_OK;
}

/* ---------- encoding ---------- */

typedef struct id_vec { int32_t *v; size_t n, cap; } id_vec;

static int id_push(id_vec *o, int32_t id, di_err *err)
{
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 64;
        int32_t *v = realloc(o->v, cap * sizeof *v);
        if (!v) return alloc_fail(err, "token ids");
        o->v = v;
        o->cap = cap;
    }
    o->v[o->n++] = id;
    return DI_OK;
}

/* A merge candidate: joining symbols left and right (adjacent when queued). BPE orders by rank
 * (lowest first), SentencePiece by score (highest first); ties go to the leftmost pair. */
typedef struct bigram { float score; int32_t rank, left, right, left_id, right_id, result; uint32_t size; } bigram;
/* A symbol: bytes [off, off + len) of the word; id -1 when no token has that text (yet);
 * len 0 once merged into the symbol on its left. */
typedef struct symbol { uint32_t off, len; int32_t id, prev, next; } symbol;

/* Scratch buffers for one di_tokenize call. */
typedef struct work {
    di_unit *units;
    di_span *spans[2];
    char *text;           /* a fragment with U+2581 for spaces (SentencePiece, gemma4) */
    symbol *syms;
    bigram *heap;
    size_t n_heap, cap_syms;
    bool by_score;
} work;

static bool bigram_before(const work *w, const bigram *a, const bigram *b)
{
    if (w->by_score) return a->score != b->score ? a->score > b->score : a->left < b->left;
    return a->rank != b->rank ? a->rank < b->rank : a->left < b->left;
}

static void heap_push(work *w, bigram b)
{
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bigram_before(w, &b, &w->heap[p])) break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = b;
}

static bigram heap_pop(work *w)
{
    bigram top = w->heap[0], last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bigram_before(w, &w->heap[c + 1], &w->heap[c])) c++;
        if (!bigram_before(w, &w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = last;
    return top;
}

static int reserve_word(work *w, size_t n, di_err *err)
{
    if (n <= w->cap_syms) return DI_OK;
    size_t cap = n < 64 ? 64 : n * 2;
    symbol *s = realloc(w->syms, cap * sizeof *s);
    if (s) w->syms = s;
    /* every merge queues at most 2 new pairs on top of the initial n - 1 */
    bigram *h = realloc(w->heap, 3 * cap * sizeof *h);
    if (h) w->heap = h;
    if (!s || !h) return alloc_fail(err, "BPE scratch space");
    w->cap_syms = cap;
    return DI_OK;
}

enum { NO_OFFSET = -1 }; /* a symbol offset in an escaped copy of the text: none to report */

static int no_token_for_byte(uint8_t b, size_t at, di_err *err)
{
    if (at == (size_t)NO_OFFSET)
        return di_fail(err, DI_EUSAGE, "tokenizer: byte 0x%02X of the text has no token in tokenizer.ggml.tokens "
                       "(not even <0x%02X>), so it cannot be encoded", b, b);
    return di_fail(err, DI_EUSAGE, "tokenizer: byte 0x%02X at offset %zu of the text has no token in "
                   "tokenizer.ggml.tokens, so it cannot be encoded", b, at);
}

/* The ids of a finished word: each symbol's token, or its bytes' tokens when it has none.
 * base maps a symbol offset back to the caller's text for messages (-1: not exact). */
static int emit_symbols(const di_tokenizer *t, const work *w, const char *s, size_t base, id_vec *out, di_err *err)
{
    for (int32_t i = 0; i >= 0; i = w->syms[i].next) {
        const symbol *y = &w->syms[i];
        if (y->id >= 0) {
            if (id_push(out, y->id, err)) return err->code;
            continue;
        }
        for (uint32_t k = 0; k < y->len; k++) {
            int32_t id = t->byte_token[(uint8_t)s[y->off + k]];
            if (id < 0)
                return no_token_for_byte((uint8_t)s[y->off + k], base == (size_t)NO_OFFSET ? base : base + y->off + k, err);
            if (id_push(out, id, err)) return err->code;
        }
    }
    return DI_OK;
}

static void queue_merge(const di_tokenizer *t, work *w, int32_t left, int32_t right)
{
    if (left < 0 || right < 0 || w->syms[left].id < 0 || w->syms[right].id < 0) return;
    const merge_slot *m = merge_find(t, w->syms[left].id, w->syms[right].id);
    if (m->key == 0) return;
    heap_push(w, (bigram){0, m->rank, left, right, w->syms[left].id, w->syms[right].id, m->result, 0});
}

/* BPE over one word s[0..n) whose symbols are already in w->syms (ids set where a token has the
 * symbol's text); appends its ids. */
static int bpe_symbols(const di_tokenizer *t, work *w, size_t n_syms, const char *s, size_t base, id_vec *out,
                       di_err *err)
{
    w->n_heap = 0;
    w->by_score = false;
    for (size_t i = 1; i < n_syms; i++) queue_merge(t, w, (int32_t)i - 1, (int32_t)i);
    while (w->n_heap > 0) {
        bigram b = heap_pop(w);
        symbol *l = &w->syms[b.left], *r = &w->syms[b.right];
        /* stale entry: one side was merged since it was queued */
        if (l->id != b.left_id || r->id != b.right_id || l->next != b.right) continue;
        l->id = b.result;
        l->len += r->len;
        l->next = r->next;
        if (r->next >= 0) w->syms[r->next].prev = b.left;
        r->id = -1;
        r->len = 0;
        queue_merge(t, w, l->prev, b.left);
        queue_merge(t, w, b.left, l->next);
    }
    return emit_symbols(t, w, s, base, out, err);
}

/* Length of the UTF-8 character at s[i] from its lead byte alone (llama.cpp's unicode_len_utf8),
 * cut at the end of the text. */
static size_t char_len(const char *s, size_t i, size_t n)
{
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    size_t k = lookup[(uint8_t)s[i] >> 4];
    return k < n - i ? k : n - i;
}

/* Splits s[0..n) into symbols: bytes (byte-level BPE) or characters; returns their count. */
static size_t init_symbols(const di_tokenizer *t, work *w, const char *s, size_t n, bool per_byte)
{
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t len = per_byte ? 1 : char_len(s, i, n);
        int32_t id = per_byte ? t->byte_token[(uint8_t)s[i]] : text_lookup(t, s + i, len);
        w->syms[k] = (symbol){(uint32_t)i, (uint32_t)len, id, (int32_t)k - 1, i + len < n ? (int32_t)k + 1 : -1};
        i += len;
        k++;
    }
    return k;
}

/* One word of byte-level or gemma4 BPE. */
static int bpe_word(const di_tokenizer *t, work *w, const char *s, size_t n, size_t base, id_vec *out, di_err *err)
{
    if (n == 0) return DI_OK;
    /* llama3's ignore_merges, and gemma4's newline runs: a word that is a token is that token */
    size_t newlines = 0;
    while (newlines < n && s[newlines] == '\n') newlines++;
    bool whole = (t->pre && di_pretok_ignore_merges(t->pre)) || (t->kind == TK_BPE_RAW && newlines == n);
    if (whole) {
        int32_t id = text_lookup(t, s, n);
        if (id >= 0) return id_push(out, id, err);
    }
    if (reserve_word(w, n, err)) return err->code;
    if (t->kind == TK_BPE)
        for (size_t i = 0; i < n; i++)
            if (t->byte_token[(uint8_t)s[i]] < 0)
                return no_token_for_byte((uint8_t)s[i], base == (size_t)NO_OFFSET ? base : base + i, err);
    size_t k = init_symbols(t, w, s, n, t->kind == TK_BPE);
    return bpe_symbols(t, w, k, s, base, out, err);
}

/* ---- SentencePiece ---- */

static void queue_spm(const di_tokenizer *t, work *w, const char *s, int32_t left, int32_t right)
{
    if (left < 0 || right < 0) return;
    const symbol *l = &w->syms[left], *r = &w->syms[right];
    int32_t id = text_lookup(t, s + l->off, l->len + r->len);
    if (id < 0) return;
    heap_push(w, (bigram){t->scores[id], 0, left, right, 0, 0, id, l->len + r->len});
}

/* SentencePiece over one fragment s[0..n) (spaces already U+2581). */
static int spm_fragment(const di_tokenizer *t, work *w, const char *s, size_t n, id_vec *out, di_err *err)
{
    if (n == 0) return DI_OK;
    if (reserve_word(w, n, err)) return err->code;
    size_t k = init_symbols(t, w, s, n, false);
    w->n_heap = 0;
    w->by_score = true;
    for (size_t i = 1; i < k; i++) queue_spm(t, w, s, (int32_t)i - 1, (int32_t)i);
    while (w->n_heap > 0) {
        bigram b = heap_pop(w);
        symbol *l = &w->syms[b.left], *r = &w->syms[b.right];
        /* stale: a side was merged away, or grew, since the pair was queued */
        if (l->len == 0 || r->len == 0 || l->len + r->len != b.size) continue;
        l->len += r->len;
        l->id = b.result;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) w->syms[r->next].prev = b.left;
        queue_spm(t, w, s, l->prev, b.left);
        queue_spm(t, w, s, b.left, l->next);
    }
    return emit_symbols(t, w, s, (size_t)NO_OFFSET, out, err); /* escaped offsets are not the caller's */
}

/* A fragment with every space as U+2581 (and one before it when prefix) into w->text. */
static size_t escape_spaces(work *w, const char *s, size_t n, bool prefix)
{
    size_t o = 0;
    if (prefix) { memcpy(w->text, SPACE_MARK, 3); o = 3; }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') { memcpy(w->text + o, SPACE_MARK, 3); o += 3; }
        else w->text[o++] = s[i];
    }
    return o;
}

/* Encodes one fragment of plain text (no special tokens in it). */
static int encode_fragment(const di_tokenizer *t, work *w, const char *s, size_t n, size_t base, bool after_special,
                           id_vec *out, di_err *err)
{
    if (t->kind == TK_SPM) {
        size_t m = escape_spaces(w, s, n, t->add_space_prefix && after_special);
        return spm_fragment(t, w, w->text, m, out, err);
    }
    if (t->kind == TK_BPE_RAW) {
        n = escape_spaces(w, s, n, false);
        s = w->text;
        base = (size_t)NO_OFFSET;
    }
    size_t nu = di_decode_units(s, n, w->units);
    di_span *words;
    size_t nw = di_pretok_split(t->pre, w->units, nu, w->spans[0], w->spans[1], &words);
    for (size_t i = 0; i < nw; i++) {
        size_t b0 = w->units[words[i].start].off;
        size_t b1 = words[i].end < nu ? w->units[words[i].end].off : n;
        if (bpe_word(t, w, s + b0, b1 - b0, base == (size_t)NO_OFFSET ? base : base + b0, out, err)) return err->code;
    }
    return DI_OK;
}

/* The text as a list of pieces: plain text ranges (special == -1) and special tokens. */
typedef struct fragment { size_t off, len; int32_t special; } fragment;
typedef struct frag_vec { fragment *v; size_t n, cap; } frag_vec;

static int frag_push(frag_vec *f, fragment x, di_err *err)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        fragment *v = realloc(f->v, cap * sizeof *v);
        if (!v) return alloc_fail(err, "text fragments");
        f->v = v;
        f->cap = cap;
    }
    f->v[f->n++] = x;
    return DI_OK;
}

static const char *find_bytes(const char *hay, size_t n, const char *needle, size_t k)
{
    return k <= n ? memmem(hay, n, needle, k) : NULL;
}

/* Cuts every occurrence of special token id out of the plain fragments of *cur (leftmost first). */
static int split_on_special(const di_tokenizer *t, const char *text, int32_t id, frag_vec *cur, frag_vec *next,
                            di_err *err)
{
    const char *p = text_ptr(t, id);
    size_t k = text_len(t, id);
    next->n = 0;
    for (size_t i = 0; i < cur->n; i++) {
        fragment f = cur->v[i];
        if (f.special >= 0) { if (frag_push(next, f, err)) return err->code; continue; }
        size_t off = f.off, end = f.off + f.len;
        const char *hit;
        while ((hit = find_bytes(text + off, end - off, p, k)) != NULL) {
            size_t at = (size_t)(hit - text);
            if (at > off && frag_push(next, (fragment){off, at - off, -1}, err)) return err->code;
            if (frag_push(next, (fragment){at, k, id}, err)) return err->code;
            off = at + k;
        }
        if (end > off && frag_push(next, (fragment){off, end - off, -1}, err)) return err->code;
    }
    frag_vec tmp = *cur;
    *cur = *next;
    *next = tmp;
    return DI_OK;
}

/* llama.cpp's order: special tokens longest first, each cutting all remaining plain text. Control
 * (and unknown) tokens only with parse_special; user-defined ones always. */
static int partition_specials(const di_tokenizer *t, const char *text, size_t len, bool parse_special,
                              frag_vec *frags, di_err *err)
{
    frag_vec spare = {0};
    int rc = len > 0 ? frag_push(frags, (fragment){0, len, -1}, err) : DI_OK;
    for (int32_t i = 0; i < t->n_specials && rc == DI_OK; i++) {
        int32_t id = t->specials[i];
        if (!parse_special && t->type[id] != TT_USER_DEFINED) continue;
        rc = split_on_special(t, text, id, frags, &spare, err);
    }
    free(spare.v);
    return rc;
}

static int encode(const di_tokenizer *t, const char *text, size_t len, bool add_special, bool parse_special,
                  int32_t **ids, size_t *n, di_err *err)
{
    *ids = NULL;
    *n = 0;
    if (len > UINT32_MAX / 4) return di_fail(err, DI_EUSAGE, "tokenizer: text of %zu bytes is too long", len);
    if (len > 0 && !text) return di_fail(err, DI_EUSAGE, "tokenizer: text is NULL");
    id_vec out = {0};
    frag_vec frags = {0};
    work w = {0};
    int rc = partition_specials(t, text, len, parse_special, &frags, err);
    /* a U+2581 for every byte at most (3 bytes each), and one before */
    if (rc == DI_OK && len > 0 &&
        (!(w.units = malloc(3 * (len + 1) * sizeof *w.units)) || !(w.spans[0] = malloc(3 * (len + 1) * sizeof(di_span))) ||
         !(w.spans[1] = malloc(3 * (len + 1) * sizeof(di_span))) || !(w.text = malloc(3 * (len + 1)))))
        rc = alloc_fail(err, "text units");
    if (rc == DI_OK && add_special && t->add_bos) rc = id_push(&out, t->bos, err);
    bool after_special = true; /* SentencePiece: a space before the text and after each special token */
    for (size_t i = 0; i < frags.n && rc == DI_OK; i++) {
        fragment f = frags.v[i];
        rc = f.special >= 0 ? id_push(&out, f.special, err)
                            : encode_fragment(t, &w, text + f.off, f.len, f.off, after_special, &out, err);
        after_special = f.special >= 0;
    }
    if (rc == DI_OK && add_special && t->add_eos) rc = id_push(&out, t->eos, err);
    if (rc == DI_OK && !out.v && !(out.v = malloc(sizeof *out.v))) rc = alloc_fail(err, "token ids");
    free(frags.v);
    free(w.units);
    free(w.spans[0]);
    free(w.spans[1]);
    free(w.text);
    free(w.syms);
    free(w.heap);
    if (rc) { free(out.v); return rc; }
    *ids = out.v;
    *n = out.n;
    return DI_OK;
}

int di_tokenize(const di_tokenizer *t, const char *text, size_t len, bool parse_special, int32_t **ids, size_t *n,
                di_err *err)
{
    return encode(t, text, len, false, parse_special, ids, n, err);
}

int di_tokenize_prompt(const di_tokenizer *t, const char *text, size_t len, bool parse_special, int32_t **ids,
                       size_t *n, di_err *err)
{
    return encode(t, text, len, true, parse_special, ids, n, err);
}

/* ---------- chat ---------- */

/* SmolLM2's chat_template (tokenizer.chat_template in the GGUF) opens with this system turn when
 * the first message is not a system message, which is always the case for a single user turn. */
#define SMOLLM2_DEFAULT_SYSTEM \
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"

char *di_chat_prompt(const char *user_prompt)
{
    static const char head[] = SMOLLM2_DEFAULT_SYSTEM "<|im_start|>user\n";
    static const char tail[] = "<|im_end|>\n<|im_start|>assistant\n";
    if (!user_prompt) user_prompt = "";
    size_t n = strlen(user_prompt);
    char *s = malloc(sizeof head - 1 + n + sizeof tail);
    if (!s) return NULL;
    memcpy(s, head, sizeof head - 1);
    memcpy(s + sizeof head - 1, user_prompt, n);
    memcpy(s + sizeof head - 1 + n, tail, sizeof tail);
    return s;
}
