/* Pre-tokenizers (model/pretok.h). Each tokenizer.ggml.pre value maps to a row of PRETOKENIZERS:
 * its stages and two flags. A stage is one of llama.cpp's pre-tokenizer expressions:
 *
 *   GPT2     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   LLAMA3   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,K}| ?[^\s\p{L}\p{N}]+[\r\n]*
 *            |\s*[\r\n]+|\s+(?!\S)|\s+          (K = 3 for Llama 3, 1 for Qwen 2)
 *   ONE      [C]        a single code point of class C
 *   RUN      [C]+       a run of class C
 *   SP_RUN   \s?[C]+    a run of class C with the white space before it
 *   TRAIL_WS \s+$       the white space that ends the piece
 *   DIGIT3   [0-9]{3}   three ASCII digits
 *   NEWLINES [^\n]+|\n+ runs of newlines and of everything else (Gemma 4)
 *
 * The first two match at every position (what matches nothing is a piece of one unit), as
 * llama.cpp's hand-written versions of them do; the others are searched leftmost-first, as
 * std::regex does, and the text between matches is a piece too. A class C is a set of Unicode
 * classes, ASCII characters and code point ranges. \s is White_Space (without U+001C..U+001F,
 * which neither std::regex's nor Python's \s matches). */
#include "model/pretok.h"
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "model/unicode_tables.h"

/* ---------- UTF-8 and classes ---------- */

size_t di_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp)
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

enum di_uclass di_classify_cp(uint32_t cp)
{
    if (cp < 0x80) { /* ASCII fast path: most text */
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return DI_UC_SPACE;
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return DI_UC_LETTER;
        if (cp >= '0' && cp <= '9') return DI_UC_NUMBER;
        if (cp < 0x20 || cp == 0x7F) return DI_UC_OTHER;
        return strchr("$+<=>^`|~", (int)cp) ? DI_UC_SYMBOL : DI_UC_PUNCT;
    }
    if (is_whitespace_cp(cp)) return DI_UC_SPACE;
    size_t lo = 0, hi = sizeof di_uclass_ranges / sizeof di_uclass_ranges[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < di_uclass_ranges[mid].lo) hi = mid;
        else if (cp > di_uclass_ranges[mid].hi) lo = mid + 1;
        else switch (di_uclass_ranges[mid].cls) {
            case DI_UCLASS_LETTER: return DI_UC_LETTER;
            case DI_UCLASS_NUMBER: return DI_UC_NUMBER;
            case DI_UCLASS_PUNCT: return DI_UC_PUNCT;
            case DI_UCLASS_MARK: return DI_UC_MARK;
            case DI_UCLASS_SYMBOL: return DI_UC_SYMBOL;
            default: return DI_UC_OTHER;
        }
    }
    return DI_UC_OTHER;
}

size_t di_decode_units(const char *s, size_t n, di_unit *u)
{
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = di_utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (len == 0) {
            u[k++] = (di_unit){0xFFFFFFFFu, (uint32_t)i, DI_UC_SYMBOL};
            i++;
            continue;
        }
        u[k++] = (di_unit){cp, (uint32_t)i, (uint8_t)di_classify_cp(cp)};
        i += len;
    }
    return k;
}

/* ---------- character classes ---------- */

typedef struct cp_range { uint32_t lo, hi; } cp_range;

typedef struct cclass {
    uint32_t classes;        /* bit (1 << enum di_uclass) per class in the set */
    const char *ascii;       /* further ASCII characters in the set, or NULL */
    const cp_range *ranges;  /* further code point ranges, or NULL */
    size_t n_ranges;
} cclass;

#define BIT(c) (1u << (c))
#define RANGES(r) r, sizeof r / sizeof r[0]

static bool in_class(const cclass *c, const di_unit *u)
{
    if (c->classes & BIT(u->cls)) return true;
    if (c->ascii && u->cp < 0x80 && u->cp && strchr(c->ascii, (int)u->cp)) return true;
    for (size_t i = 0; i < c->n_ranges; i++)
        if (u->cp >= c->ranges[i].lo && u->cp <= c->ranges[i].hi) return true;
    return false;
}

/* DeepSeek LLM's letters: the ranges its tokenizer.json's expression lists (mostly cased letters). */
static const cp_range deepseek_letters[] = {
    {0x41, 0x5A}, {0x61, 0x7A}, {0xB5, 0xB5}, {0xC0, 0xD6}, {0xD8, 0xF6}, {0xF8, 0x1BA}, {0x1BC, 0x1BF},
    {0x1C4, 0x293}, {0x295, 0x2AF}, {0x370, 0x373}, {0x376, 0x377}, {0x37B, 0x37D}, {0x37F, 0x37F},
    {0x386, 0x386}, {0x388, 0x38A}, {0x38C, 0x38C}, {0x38E, 0x3A1}, {0x3A3, 0x3F5}, {0x3F7, 0x481},
    {0x48A, 0x52F}, {0x531, 0x556}, {0x10A0, 0x10C5}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD}, {0x1C90, 0x1CBA},
    {0x1CBD, 0x1CBF}, {0x1D00, 0x1D2B}, {0x1D6B, 0x1D77}, {0x1D79, 0x1D9A}, {0x1E00, 0x1F15}, {0x1F18, 0x1F1D},
    {0x1F20, 0x1F45}, {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B}, {0x1F5D, 0x1F5D},
    {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC}, {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4}, {0x1FC6, 0x1FCC},
    {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC}, {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC}, {0x2102, 0x2102},
    {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115}, {0x2119, 0x211D}, {0x2124, 0x2124}, {0x2126, 0x2126},
    {0x2128, 0x2128}, {0x212A, 0x212D}, {0x212F, 0x2134}, {0x2139, 0x2139}, {0x213C, 0x213F}, {0x2145, 0x2149},
    {0x214E, 0x214E}, {0x2183, 0x2184}, {0x2C00, 0x2C7B}, {0x2C7E, 0x2CE4}, {0x2CEB, 0x2CEE}, {0x2CF2, 0x2CF3},
    {0xA640, 0xA66D}, {0xA680, 0xA69B}, {0xA722, 0xA76F}, {0xA771, 0xA787}, {0xA78B, 0xA78E}, {0xAB70, 0xABBF},
    {0xFB00, 0xFB06}, {0xFB13, 0xFB17}, {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A}, {0x10400, 0x1044F}, {0x104B0, 0x104D3},
    {0x104D8, 0x104FB}, {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};
/* DeepSeek LLM's punctuation: ASCII punctuation and symbols (with ':' .. '~', letters too), the
 * full-width forms, curly quotes and the CJK space, comma and full stop. */
static const cp_range deepseek_punct[] = {
    {0x21, 0x2F}, {0x3A, 0x7E}, {0xFF01, 0xFF0F}, {0xFF1A, 0xFF5E}, {0x2018, 0x201F}, {0x3000, 0x3002},
};
/* DeepSeek's CJK block: 一-龥, U+0800..一 (as written: it takes in many scripts) and Hangul. */
static const cp_range deepseek_cjk[] = {{0x4E00, 0x9FA5}, {0x0800, 0x4E00}, {0xAC00, 0xD7FF}};

static const cclass CL_CRLF = {0, "\r\n", NULL, 0};
static const cclass CL_LETTER = {BIT(DI_UC_LETTER), NULL, NULL, 0};
static const cclass CL_NUMBER = {BIT(DI_UC_NUMBER), NULL, NULL, 0};
static const cclass CL_PUNCT = {BIT(DI_UC_PUNCT), NULL, NULL, 0};
static const cclass CL_PUNCT_SYM = {BIT(DI_UC_PUNCT), "$+<=>^~|", NULL, 0};         /* [\p{P}\$\+<=>\^~\|] */
static const cclass CL_PUNCT_SYM_TICK = {BIT(DI_UC_PUNCT), "$+<=>^~|`", NULL, 0};   /* falcon adds ` */
static const cclass CL_DS_LETTERS = {0, NULL, RANGES(deepseek_letters)};
static const cclass CL_DS_PUNCT = {0, NULL, RANGES(deepseek_punct)};
static const cclass CL_DS_CJK = {0, NULL, RANGES(deepseek_cjk)};

/* ---------- stages ---------- */

typedef enum { ST_END = 0 /* ends a row's list */, ST_GPT2, ST_LLAMA3, ST_ONE, ST_RUN, ST_SP_RUN, ST_TRAIL_WS, ST_DIGIT3, ST_NEWLINES } stage_kind;

typedef struct stage {
    stage_kind kind;
    const cclass *cls;  /* ONE, RUN, SP_RUN */
    int max_digits;     /* LLAMA3 */
} stage;

/* The coarse class the GPT-2 and Llama 3 expressions see: space, letter, number, or other
 * ([^\s\p{L}\p{N}]); NONE past the piece. */
static int coarse(const di_unit *u, size_t i, size_t end)
{
    if (i >= end) return DI_UC_NONE;
    int c = u[i].cls;
    return c == DI_UC_SPACE || c == DI_UC_LETTER || c == DI_UC_NUMBER ? c : DI_UC_OTHER;
}

static uint32_t cp_at(const di_unit *u, size_t i, size_t end) { return i < end ? u[i].cp : 0xFFFFFFFFu; }
static uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* Length of a contraction 's 't 're 've 'm 'll 'd at pos (any case when fold), or 0. */
static size_t contraction(const di_unit *u, size_t pos, size_t end, bool fold)
{
    if (u[pos].cp != '\'' || pos + 1 >= end) return 0;
    uint32_t c1 = cp_at(u, pos + 1, end), c2 = cp_at(u, pos + 2, end);
    if (fold) { c1 = ascii_lower(c1); c2 = ascii_lower(c2); }
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
    return 0;
}

/* White space at pos: a run leaves its last space to the word after it ('\s+(?!\S)'), unless it
 * ends the piece ('\s+'). */
static size_t space_run(const di_unit *u, size_t pos, size_t end)
{
    size_t n = 0;
    while (coarse(u, pos + n, end) == DI_UC_SPACE) n++;
    if (n > 1 && pos + n < end) return n - 1;
    return n > 0 ? n : 1;
}

static size_t gpt2_match(const di_unit *u, size_t pos, size_t end)
{
    size_t k = contraction(u, pos, end, false);
    if (k) return k;
    /* ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional space, then a run of one class */
    size_t start = u[pos].cp == ' ' ? pos + 1 : pos;
    int cls = coarse(u, start, end);
    if (cls == DI_UC_LETTER || cls == DI_UC_NUMBER || cls == DI_UC_OTHER) {
        size_t i = start;
        while (coarse(u, i, end) == cls) i++;
        return i - pos;
    }
    return space_run(u, pos, end);
}

static size_t llama3_match(const di_unit *u, size_t pos, size_t end, int max_digits)
{
    size_t k = contraction(u, pos, end, true);
    if (k) return k;
    uint32_t c = u[pos].cp;
    int cls = coarse(u, pos, end);
    /* '[^\r\n\p{L}\p{N}]?\p{L}+': any one non-letter (spaces too) may lead a run of letters */
    if (c != '\r' && c != '\n' && cls != DI_UC_NUMBER &&
        (cls == DI_UC_LETTER || coarse(u, pos + 1, end) == DI_UC_LETTER)) {
        size_t i = pos + 1;
        while (coarse(u, i, end) == DI_UC_LETTER) i++;
        return i - pos;
    }
    if (cls == DI_UC_NUMBER) { /* '\p{N}{1,K}' */
        size_t i = pos;
        while (coarse(u, i, end) == DI_UC_NUMBER && i - pos < (size_t)max_digits) i++;
        return i - pos;
    }
    /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
    size_t i = c == ' ' ? pos + 1 : pos;
    if (coarse(u, i, end) == DI_UC_OTHER) {
        while (coarse(u, i, end) == DI_UC_OTHER) i++;
        while (cp_at(u, i, end) == '\r' || cp_at(u, i, end) == '\n') i++;
        return i - pos;
    }
    /* '\s*[\r\n]+': the white space up to the run's last newline */
    size_t n = 0, last_nl = 0;
    for (; coarse(u, pos + n, end) == DI_UC_SPACE; n++)
        if (u[pos + n].cp == '\r' || u[pos + n].cp == '\n') last_nl = n + 1;
    if (last_nl) return last_nl;
    return space_run(u, pos, end);
}

/* Leftmost match of a searched stage in u[pos..end): its start (*at) and length, or 0. */
static size_t search(const stage *s, const di_unit *u, size_t pos, size_t end, size_t *at)
{
    for (size_t i = pos; i < end; i++) {
        size_t n = 0;
        switch (s->kind) {
        case ST_ONE: n = in_class(s->cls, &u[i]); break;
        case ST_RUN:
            while (i + n < end && in_class(s->cls, &u[i + n])) n++;
            break;
        case ST_SP_RUN: {
            size_t j = i + (u[i].cls == DI_UC_SPACE && i + 1 < end && in_class(s->cls, &u[i + 1]));
            while (j < end && in_class(s->cls, &u[j])) j++;
            n = j - i;
            break;
        }
        case ST_TRAIL_WS: {
            size_t j = i;
            while (j < end && u[j].cls == DI_UC_SPACE) j++;
            if (j == end && j > i) n = j - i;
            else i = j > i ? j - 1 : i;   /* skip the run: no later start inside it can reach the end */
            break;
        }
        case ST_DIGIT3:
            if (i + 3 <= end && u[i].cp - '0' < 10 && u[i + 1].cp - '0' < 10 && u[i + 2].cp - '0' < 10) n = 3;
            break;
        default: break;
        }
        if (n) { *at = i; return n; }
    }
    return 0;
}

/* Cuts piece [start, end) by stage s, appending the pieces to out; returns the new count. */
static size_t split_piece(const stage *s, const di_unit *u, size_t start, size_t end, di_span *out, size_t k)
{
    for (size_t pos = start; pos < end;) {
        size_t n, at = pos;
        switch (s->kind) {
        case ST_GPT2: n = gpt2_match(u, pos, end); break;
        case ST_LLAMA3: n = llama3_match(u, pos, end, s->max_digits); break;
        case ST_NEWLINES: {
            bool nl = u[pos].cp == '\n';
            n = 1;
            while (pos + n < end && (u[pos + n].cp == '\n') == nl) n++;
            break;
        }
        default:
            n = search(s, u, pos, end, &at);
            if (!n) at = end; /* no match: the rest is one piece */
            break;
        }
        if (at > pos) out[k++] = (di_span){(uint32_t)pos, (uint32_t)at};
        if (n) out[k++] = (di_span){(uint32_t)at, (uint32_t)(at + n)};
        pos = at + n;
    }
    return k;
}

/* ---------- the table ---------- */

enum { PRE_IGNORE_MERGES = 1, PRE_ADD_BOS = 2 };
enum { MAX_STAGES = 6 };

struct di_pretok {
    const char *name;       /* the tokenizer.ggml.pre value */
    const char *aliases;    /* other values llama.cpp gives the same expressions, space-separated */
    uint8_t flags;
    stage stages[MAX_STAGES];
};

#define GPT2 {ST_GPT2, NULL, 0}
/* from llama.cpp's llama-vocab.cpp: which expressions each value gets, and its flags */
static const di_pretok PRETOKENIZERS[] = {
    {"default", "", 0, {{ST_RUN, &CL_PUNCT_SYM, 0}, GPT2, {ST_RUN, &CL_NUMBER, 0}, {ST_DIGIT3, NULL, 0}}},
    {"llama-bpe", "llama3 llama-v3 falcon3 falcon-h1 pixtral midm-2.0 lfm2", PRE_IGNORE_MERGES | PRE_ADD_BOS,
     {{ST_LLAMA3, NULL, 3}}},
    {"dbrx", "smaug-bpe", 0, {{ST_LLAMA3, NULL, 3}}},
    {"qwen2", "deepseek-r1-qwen kormo stablelm2 hunyuan megrez solar-open grok-2", 0, {{ST_LLAMA3, NULL, 1}}},
    {"gpt-2", "gpt2 mpt phi-2 olmo jais trillion granite-docling exaone4 jina-es jina-de jina-v2-es jina-v2-de "
     "gigachat a.x-4.0 mellum modern-bert", 0, {GPT2}},
    {"smollm", "starcoder refact command-r codeshell exaone minerva-7b mellum2", 0, {{ST_ONE, &CL_NUMBER, 0}, GPT2}},
    {"falcon", "", 0, {{ST_RUN, &CL_PUNCT_SYM_TICK, 0}, GPT2, {ST_DIGIT3, NULL, 0}}},
    {"deepseek-llm", "", 0,
     {{ST_ONE, &CL_CRLF, 0}, {ST_SP_RUN, &CL_DS_LETTERS, 0}, {ST_SP_RUN, &CL_DS_PUNCT, 0}, {ST_TRAIL_WS, NULL, 0},
      {ST_RUN, &CL_DS_CJK, 0}, {ST_RUN, &CL_NUMBER, 0}}},
    {"deepseek-coder", "", 0,
     {{ST_ONE, &CL_CRLF, 0}, {ST_SP_RUN, &CL_LETTER, 0}, {ST_SP_RUN, &CL_PUNCT, 0}, {ST_RUN, &CL_DS_CJK, 0},
      {ST_ONE, &CL_NUMBER, 0}}},
    /* Gemma 4's BPE runs on the whole text (spaces already U+2581); only newline runs are cut */
    {"gemma4", "", PRE_ADD_BOS, {{ST_NEWLINES, NULL, 0}}},
};
#undef GPT2

enum { N_PRETOK = sizeof PRETOKENIZERS / sizeof PRETOKENIZERS[0] };

/* Whether the space-separated list holds the word s[0..n). */
static bool list_has(const char *list, const char *s, size_t n)
{
    for (const char *p = list; *p;) {
        size_t k = strcspn(p, " ");
        if (k == n && !memcmp(p, s, n)) return true;
        p += k;
        while (*p == ' ') p++;
    }
    return false;
}

const di_pretok *di_pretok_find(const char *name, size_t len)
{
    for (size_t i = 0; i < N_PRETOK; i++)
        if ((strlen(PRETOKENIZERS[i].name) == len && !memcmp(PRETOKENIZERS[i].name, name, len)) ||
            list_has(PRETOKENIZERS[i].aliases, name, len))
            return &PRETOKENIZERS[i];
    return NULL;
}

const char *di_pretok_name(const di_pretok *p) { return p->name; }
bool di_pretok_ignore_merges(const di_pretok *p) { return p->flags & PRE_IGNORE_MERGES; }
bool di_pretok_add_bos(const di_pretok *p) { return p->flags & PRE_ADD_BOS; }

static char names_list[2048];

static void build_names(void)
{
    size_t n = 0;
    for (size_t i = 0; i < N_PRETOK && n < sizeof names_list; i++) {
        const di_pretok *p = &PRETOKENIZERS[i];
        int k = snprintf(names_list + n, sizeof names_list - n, "%s%s%s%s%s", i ? ", " : "", p->name,
                         *p->aliases ? " (" : "", p->aliases, *p->aliases ? ")" : "");
        if (k > 0) n += (size_t)k;
    }
}

const char *di_pretok_names(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, build_names);
    return names_list;
}

size_t di_pretok_split(const di_pretok *p, const di_unit *u, size_t n, di_span *a, di_span *b, di_span **words)
{
    di_span *cur = a, *next = b;
    size_t k = 0;
    if (n) cur[k++] = (di_span){0, (uint32_t)n};
    for (int s = 0; s < MAX_STAGES && p->stages[s].kind != ST_END; s++) {
        size_t m = 0;
        for (size_t i = 0; i < k; i++) m = split_piece(&p->stages[s], u, cur[i].start, cur[i].end, next, m);
        di_span *t = cur;
        cur = next;
        next = t;
        k = m;
    }
    *words = cur;
    return k;
}
