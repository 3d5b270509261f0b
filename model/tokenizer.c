/* Byte-level BPE (GPT-2 style) for SmolLM2-like vocabularies, behaving as llama.cpp's tokenizer does:
 *
 *   text ──special-token partition──▶ fragments ──pre-tokenizer──▶ words ──BPE──▶ ids
 *
 * - Special tokens (token_type CONTROL/UNKNOWN with parse_special, USER_DEFINED always) are cut out of
 *   the text first, longest text first; the text between them is tokenized fragment by fragment.
 * - Pre-tokenizer: every \p{N} code point is split off alone (SmolLM2's Digits(individual_digits)),
 *   then each piece is cut by the GPT-2 regex
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ , implemented by hand.
 * - BPE works on raw bytes and token ids: the byte-level alphabet (bytes_to_unicode) is undone once at
 *   load time, so every token is stored as the bytes it stands for, and a merge "a b" becomes the pair
 *   (id(a), id(b)) -> (rank, id(ab)). Lowest rank merges first; ties go to the leftmost pair.
 *
 * Where we differ from llama.cpp on purpose: invalid UTF-8 bytes are kept as raw bytes (llama.cpp turns
 * them into U+FFFD), so decode(encode(s)) == s whenever encoding succeeds. A byte that no token can
 * stand for (this vocabulary lacks 21 of the 256, e.g. 0x04 and 0xFF) is an error, where llama.cpp
 * silently drops it. */
#define _GNU_SOURCE /* memmem */
#include "model/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/unicode_tables.h"

enum token_type { /* tokenizer.ggml.token_type values (llama.cpp's numbering) */
    TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5, TT_BYTE = 6,
};

typedef struct merge_slot { uint64_t key; int32_t rank, result; } merge_slot; /* key 0 = empty */

struct di_tokenizer {
    int32_t n_vocab, bos, eos;
    bool split_digits;           /* pre-tokenizer splits each \p{N} off before the GPT-2 regex */
    char *arena;                 /* all token pieces, back to back */
    size_t *piece_off;           /* n_vocab + 1 offsets into arena */
    uint8_t *type;               /* enum token_type per id */
    int32_t *text_slots;         /* open addressing: ids of non-special tokens keyed by piece; -1 empty */
    size_t text_mask;
    merge_slot *merge_slots;
    size_t merge_mask;
    int32_t byte_token[256];     /* id of the token for one raw byte, -1 if the vocabulary has none */
    int32_t *specials;           /* special ids, longest text first (ties: lower id first) */
    int32_t n_specials;
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

static const char *piece_ptr(const di_tokenizer *t, int32_t id) { return t->arena + t->piece_off[id]; }
static size_t piece_len(const di_tokenizer *t, int32_t id) { return t->piece_off[id + 1] - t->piece_off[id]; }

static bool is_special_type(int type)
{
    return type == TT_CONTROL || type == TT_USER_DEFINED || type == TT_UNKNOWN;
}

/* Slot holding the id whose piece is s[0..n), or the empty slot where it would go. */
static size_t text_slot(const di_tokenizer *t, const char *s, size_t n)
{
    size_t i = hash_bytes(s, n) & t->text_mask;
    for (;;) {
        int32_t id = t->text_slots[i];
        if (id < 0 || (piece_len(t, id) == n && memcmp(piece_ptr(t, id), s, n) == 0)) return i;
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

/* ---------- UTF-8 ---------- */

/* Decodes one code point at s[0..n) (n >= 1), strictly: overlong forms, surrogates and values
 * above U+10FFFF are invalid. Returns its length, or 0 if s[0] does not start a valid sequence. */
static size_t utf8_decode(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint8_t b = s[0];
    if (b < 0x80) { *cp = b; return 1; }
    size_t len;
    uint32_t min, v;
    if ((b & 0xE0) == 0xC0) { len = 2; min = 0x80; v = b & 0x1F; }
    else if ((b & 0xF0) == 0xE0) { len = 3; min = 0x800; v = b & 0x0F; }
    else if ((b & 0xF8) == 0xF0) { len = 4; min = 0x10000; v = b & 0x07; }
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = v << 6 | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

/* Appends the raw bytes a token text stands for: byte-level code points become their byte; any
 * other code point (none in SmolLM2) is kept as its UTF-8 bytes. Returns the new length. */
static size_t byte_decode_text(const int16_t cp_to_byte[BYTE_CP_LIMIT], const char *text, size_t n,
                               char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = utf8_decode((const uint8_t *)text + i, n - i, &cp);
        if (k == 0) { out[o++] = text[i++]; continue; }
        if (cp < BYTE_CP_LIMIT && cp_to_byte[cp] >= 0) out[o++] = (char)cp_to_byte[cp];
        else { memcpy(out + o, text + i, k); o += k; }
        i += k;
    }
    return o;
}

/* ---------- Unicode classes ---------- */

enum uclass { UC_NONE = 0, UC_SPACE, UC_LETTER, UC_NUMBER, UC_OTHER }; /* NONE: outside the piece */

static bool is_whitespace_cp(uint32_t cp)
{
    size_t lo = 0, hi = sizeof di_uwhitespace / sizeof di_uwhitespace[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (di_uwhitespace[mid] == cp) return true;
        if (di_uwhitespace[mid] < cp) lo = mid + 1;
        else hi = mid;
    }
    return false;
}

static enum uclass classify_cp(uint32_t cp)
{
    if (cp < 0x80) { /* ASCII fast path: most text */
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return UC_SPACE;
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return UC_LETTER;
        if (cp >= '0' && cp <= '9') return UC_NUMBER;
        return UC_OTHER;
    }
    if (is_whitespace_cp(cp)) return UC_SPACE;
    size_t lo = 0, hi = sizeof di_uclass_ranges / sizeof di_uclass_ranges[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < di_uclass_ranges[mid].lo) hi = mid;
        else if (cp > di_uclass_ranges[mid].hi) lo = mid + 1;
        else return di_uclass_ranges[mid].cls == DI_UCLASS_LETTER ? UC_LETTER : UC_NUMBER;
    }
    return UC_OTHER;
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
    if (s.len != 4 || memcmp(s.ptr, "gpt2", 4) != 0)
        return di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.model is '%.*s'; only 'gpt2' (byte-level BPE) is supported",
                       g->path, (int)(s.len > 64 ? 64 : s.len), s.ptr);
    if (di_gguf_get_str(g, "tokenizer.ggml.pre", &s, err)) return err->code;
    /* llama.cpp gives all of these the same two expressions: \p{N}, then the GPT-2 regex */
    static const char *const digit_split[] = {"smollm", "starcoder", "refact", "command-r", "codeshell"};
    for (size_t i = 0; i < sizeof digit_split / sizeof digit_split[0]; i++)
        if (s.len == strlen(digit_split[i]) && memcmp(s.ptr, digit_split[i], s.len) == 0) {
            t->split_digits = true;
            return DI_OK;
        }
    if (s.len == 4 && memcmp(s.ptr, "gpt2", 4) == 0) { t->split_digits = false; return DI_OK; }
    return di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.pre is '%.*s'; supported: smollm, starcoder, refact, "
                   "command-r, codeshell, gpt2", g->path, (int)(s.len > 64 ? 64 : s.len), s.ptr);
}

static int load_special_ids(const di_gguf *g, di_tokenizer *t, di_err *err)
{
    static const char *const keys[2] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"};
    int32_t *dst[2] = {&t->bos, &t->eos};
    for (int i = 0; i < 2; i++) {
        uint64_t v;
        if (di_gguf_get_u64(g, keys[i], &v, err)) return err->code;
        if (v >= (uint64_t)t->n_vocab)
            return di_fail(err, DI_EFORMAT, "%s: %s = %llu is not below the vocabulary size %d", g->path, keys[i],
                           (unsigned long long)v, t->n_vocab);
        *dst[i] = (int32_t)v;
    }
    return DI_OK;
}

/* Token pieces into the arena; the non-special ones into the text map. */
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
    t->arena = malloc(total + 1);
    t->piece_off = malloc(((size_t)t->n_vocab + 1) * sizeof *t->piece_off);
    t->type = malloc((size_t)t->n_vocab);
    size_t cap = table_size_for((size_t)t->n_vocab);
    t->text_slots = malloc(cap * sizeof *t->text_slots);
    if (!t->arena || !t->piece_off || !t->type || !t->text_slots) return alloc_fail(err, "the vocabulary");
    t->text_mask = cap - 1;
    memset(t->text_slots, 0xff, cap * sizeof *t->text_slots);

    int16_t cp_to_byte[BYTE_CP_LIMIT];
    build_cp_to_byte(cp_to_byte);
    size_t off = 0;
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
        t->piece_off[i] = off;
        if (is_special_type(t->type[i])) { /* their text is literal, not byte-level encoded */
            memcpy(t->arena + off, s.ptr, s.len);
            off += s.len;
        } else {
            off += byte_decode_text(cp_to_byte, s.ptr, s.len, t->arena + off);
        }
    }
    t->piece_off[t->n_vocab] = off;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (is_special_type(t->type[i]) || piece_len(t, i) == 0) continue;
        /* duplicates: the later id wins, as in llama.cpp's token_to_id map */
        t->text_slots[text_slot(t, piece_ptr(t, i), piece_len(t, i))] = i;
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_token[b] = text_lookup(t, &c, 1);
    }
    return DI_OK;
}

/* Merges "a b" (byte-level text) into the pair map: (id(a), id(b)) -> (rank, id(ab)). */
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
        size_t nl = byte_decode_text(cp_to_byte, s.ptr, (size_t)(sp - s.ptr), buf);
        size_t nr = byte_decode_text(cp_to_byte, sp + 1, (size_t)(s.ptr + s.len - sp - 1), buf + nl);
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
        if (is_special_type(t->type[i]) && piece_len(t, i) > 0) keys[n++] = (special_key){piece_len(t, i), i};
    qsort(keys, n, sizeof *keys, cmp_special);
    for (size_t i = 0; i < n; i++) t->specials[i] = keys[i].id;
    t->n_specials = (int32_t)n;
    free(keys);
    return DI_OK;
}

int di_tokenizer_load(const di_gguf *g, di_tokenizer **out, di_err *err)
{
    *out = NULL;
    di_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return alloc_fail(err, "the tokenizer");
    int rc = check_model_kind(g, t, err);
    if (!rc) rc = load_tokens(g, t, err);
    if (!rc) rc = load_special_ids(g, t, err);
    if (!rc) rc = load_merges(g, t, err);
    if (!rc) rc = collect_specials(t, err);
    if (rc) { di_tokenizer_free(t); return rc; }
    *out = t;
    return DI_OK;
}

void di_tokenizer_free(di_tokenizer *t)
{
    if (!t) return;
    free(t->arena);
    free(t->piece_off);
    free(t->type);
    free(t->text_slots);
    free(t->merge_slots);
    free(t->specials);
    free(t);
}

int di_tokenizer_vocab_size(const di_tokenizer *t) { return t->n_vocab; }
int di_tokenizer_bos(const di_tokenizer *t) { return t->bos; }
int di_tokenizer_eos(const di_tokenizer *t) { return t->eos; }

int di_tokenizer_special(const di_tokenizer *t, const char *text)
{
    size_t n = strlen(text);
    for (int32_t i = 0; i < t->n_specials; i++) {
        int32_t id = t->specials[i];
        if (piece_len(t, id) == n && memcmp(piece_ptr(t, id), text, n) == 0) return id;
    }
    return -1;
}

int di_token_piece(const di_tokenizer *t, int32_t id, const char **bytes, size_t *len)
{
    if (id < 0 || id >= t->n_vocab) return DI_EUSAGE;
    *bytes = piece_ptr(t, id);
    *len = piece_len(t, id);
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

/* One unit of the pre-tokenizer: a code point, or a lone byte that is not valid UTF-8. */
typedef struct unit { uint32_t cp; uint32_t off; uint8_t cls; } unit;

/* A BPE candidate: merging symbols left and right (adjacent when queued) gives token result. */
typedef struct bigram { int32_t rank, left, right, left_id, right_id, result; } bigram;
typedef struct symbol { int32_t id, prev, next; } symbol; /* id -1: merged away */

/* Scratch buffers for one di_tokenize call. */
typedef struct work {
    unit *units;
    symbol *syms;
    bigram *heap;
    size_t n_heap, cap_heap, cap_syms;
} work;

static bool bigram_before(const bigram *a, const bigram *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->left < b->left;
}

static void heap_push(work *w, bigram b)
{
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bigram_before(&b, &w->heap[p])) break;
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
        if (c + 1 < n && bigram_before(&w->heap[c + 1], &w->heap[c])) c++;
        if (!bigram_before(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = last;
    return top;
}

static void queue_pair(const di_tokenizer *t, work *w, int32_t left, int32_t right)
{
    if (left < 0 || right < 0) return;
    const merge_slot *m = merge_find(t, w->syms[left].id, w->syms[right].id);
    if (m->key == 0) return;
    heap_push(w, (bigram){m->rank, left, right, w->syms[left].id, w->syms[right].id, m->result});
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
    w->cap_heap = 3 * cap;
    return DI_OK;
}

/* BPE over one pre-tokenized word (raw bytes s[0..n)); appends its ids. base: the word's offset
 * in the caller's text, for error messages. */
static int bpe_word(const di_tokenizer *t, work *w, const char *s, size_t n, size_t base, id_vec *out,
                    di_err *err)
{
    if (n == 0) return DI_OK;
    if (reserve_word(w, n, err)) return err->code;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_token[(uint8_t)s[i]];
        if (id < 0)
            return di_fail(err, DI_EUSAGE, "tokenizer: byte 0x%02X at offset %zu of the text has no token "
                           "in tokenizer.ggml.tokens, so it cannot be encoded", (uint8_t)s[i], base + i);
        w->syms[i] = (symbol){id, (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    }
    w->n_heap = 0;
    for (size_t i = 1; i < n; i++) queue_pair(t, w, (int32_t)i - 1, (int32_t)i);
    while (w->n_heap > 0) {
        bigram b = heap_pop(w);
        symbol *l = &w->syms[b.left], *r = &w->syms[b.right];
        /* stale entry: one side was merged since it was queued */
        if (l->id != b.left_id || r->id != b.right_id || l->next != b.right) continue;
        l->id = b.result;
        l->next = r->next;
        if (r->next >= 0) w->syms[r->next].prev = b.left;
        r->id = -1;
        queue_pair(t, w, l->prev, b.left);
        queue_pair(t, w, b.left, l->next);
    }
    for (int32_t i = 0; i >= 0; i = w->syms[i].next)
        if (id_push(out, w->syms[i].id, err)) return err->code;
    return DI_OK;
}

/* Decodes s[0..n) into units; returns their count. Invalid bytes become OTHER units of their own,
 * the class llama.cpp gives the U+FFFD it substitutes. */
static size_t decode_units(const char *s, size_t n, unit *u)
{
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (len == 0) {
            u[k++] = (unit){0xFFFFFFFFu, (uint32_t)i, UC_OTHER};
            i++;
            continue;
        }
        u[k++] = (unit){cp, (uint32_t)i, (uint8_t)classify_cp(cp)};
        i += len;
    }
    return k;
}

/* Length in units of the next GPT-2 regex match in u[pos..end) (end: the piece's end). */
static size_t gpt2_match(const unit *u, size_t pos, size_t end)
{
#define CLS(i) ((i) < end ? u[i].cls : UC_NONE)
#define CP(i) ((i) < end ? u[i].cp : 0xFFFFFFFFu)
    uint32_t c = u[pos].cp;
    if (c == '\'') { /* 's|'t|'re|'ve|'m|'ll|'d  (lower case only, as in GPT-2) */
        uint32_t c1 = CP(pos + 1), c2 = CP(pos + 2);
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
    }
    /* ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional space, then a run of one class */
    size_t start = c == ' ' ? pos + 1 : pos;
    int cls = CLS(start);
    if (cls == UC_LETTER || cls == UC_NUMBER || cls == UC_OTHER) {
        size_t i = start;
        while (CLS(i) == cls) i++;
        return i - pos;
    }
    /* '\s+(?!\S)|\s+': a whitespace run leaves its last space to the word after it */
    size_t n = 0;
    while (CLS(pos + n) == UC_SPACE) n++;
    if (n > 1 && pos + n < end) return n - 1;
    return n > 0 ? n : 1;
#undef CLS
#undef CP
}

/* Byte offset of unit i (or of the end when i == n). */
static size_t unit_off(const unit *u, size_t i, size_t n, size_t nbytes)
{
    return i < n ? u[i].off : nbytes;
}

/* Pre-tokenizes and encodes one fragment of plain text (no special tokens in it). */
static int encode_fragment(const di_tokenizer *t, work *w, const char *s, size_t n, size_t base, id_vec *out,
                           di_err *err)
{
    size_t nu = decode_units(s, n, w->units);
    for (size_t seg = 0; seg < nu;) {
        /* digit split: each \p{N} is a piece alone; the GPT-2 regex never looks across pieces */
        size_t seg_end = seg + 1;
        if (!(t->split_digits && w->units[seg].cls == UC_NUMBER))
            while (seg_end < nu && !(t->split_digits && w->units[seg_end].cls == UC_NUMBER)) seg_end++;
        for (size_t pos = seg; pos < seg_end;) {
            size_t m = gpt2_match(w->units, pos, seg_end);
            size_t b0 = unit_off(w->units, pos, nu, n), b1 = unit_off(w->units, pos + m, nu, n);
            if (bpe_word(t, w, s + b0, b1 - b0, base + b0, out, err)) return err->code;
            pos += m;
        }
        seg = seg_end;
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
    const char *p = piece_ptr(t, id);
    size_t k = piece_len(t, id);
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

int di_tokenize(const di_tokenizer *t, const char *text, size_t len, bool parse_special, int32_t **ids, size_t *n,
                di_err *err)
{
    *ids = NULL;
    *n = 0;
    if (len > UINT32_MAX) return di_fail(err, DI_EUSAGE, "tokenizer: text of %zu bytes is too long", len);
    if (len > 0 && !text) return di_fail(err, DI_EUSAGE, "tokenizer: text is NULL");
    id_vec out = {0};
    frag_vec frags = {0};
    work w = {0};
    int rc = partition_specials(t, text, len, parse_special, &frags, err);
    if (rc == DI_OK && len > 0 && !(w.units = malloc(len * sizeof *w.units))) rc = alloc_fail(err, "text units");
    for (size_t i = 0; i < frags.n && rc == DI_OK; i++) {
        fragment f = frags.v[i];
        rc = f.special >= 0 ? id_push(&out, f.special, err)
                            : encode_fragment(t, &w, text + f.off, f.len, f.off, &out, err);
    }
    if (rc == DI_OK && !out.v && !(out.v = malloc(sizeof *out.v))) rc = alloc_fail(err, "token ids");
    free(frags.v);
    free(w.units);
    free(w.syms);
    free(w.heap);
    if (rc) { free(out.v); return rc; }
    *ids = out.v;
    *n = out.n;
    return DI_OK;
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
