/* make_random_gguf: writes a GGUF v3 llama model of a given shape with deterministic
 * pseudo-random weights, for benchmarking shapes we have no checkpoint of (Llama-3-8B) or
 * that must run in seconds (tiny).
 *
 * Weights: element i of tensor T is std * g(hash(seed, name of T, i)), where g is a sum of
 * four 16-bit uniforms scaled to mean 0, variance 1 (an Irwin-Hall approximation of a
 * normal, bounded by +-3.5); std = 0.02 for matrices, and norm weights are 1 + 0.02 g. Values
 * depend on (seed, tensor name, index) only, so the bf16 and q4_1 files of a shape are
 * roundings of the same numbers, and --layers N gives the first N layers of the full model.
 *
 * The file holds everything model/model.c reads for the shape's architecture (model/arch.def:
 * general.architecture, the <arch>.* keys, token_embd/output_norm/output and
 * blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,ffn_gate,ffn_up,ffn_down}.weight,
 * and as the architecture has them attn_{q,k,v}.bias (Qwen 2), attn_{q,k}_norm (Qwen 3, Gemma 3),
 * post_attention_norm / post_ffw_norm (Gemma 3), rope_freqs (Llama 3's rope scaling); matrices
 * bf16 or q4_1, norms, biases and factors f32), plus a placeholder SentencePiece-style
 * vocabulary (<unk>, <s>, </s>, the 256 byte tokens, then "<tN>") so that llama.cpp can open the
 * file for comparison runs, or, with --vocab FILE, every tokenizer.* key of FILE (a vocab-only
 * GGUF such as llama.cpp's ggml-vocab-llama-bpe.gguf, whose token count must be the shape's
 * vocab). The tiny-* shapes are the architectures' reference models (tests/data/make_arch_ref.py
 * computes their logits with HF transformers in float64).
 *
 * Tensor data is generated in chunks on several threads and streamed to the file: memory
 * stays at a few tens of MB whatever the model size. --header-only writes the metadata and
 * tensor infos and then extends the file to its full size without writing data (a sparse
 * file, reading as zeros): readers can check every key, shape and offset at no disk cost.
 *
 * usage: make_random_gguf OUT.gguf --shape NAME [--seed S] [--type bf16|q4_1|q4_k_m] [--vocab FILE]
 *                         [--layers N] [--threads N] [--header-only] [--quiet] */
#include "tools/cli.h"
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "model/gguf.h"
#include "model/quant.h"

enum {
    ALIGN = 32,
    QK = 32,                        /* q4_1 block */
    Q4_1_BYTES = 4 + QK / 2,
    QK_K = 256,                     /* q4_k / q6_k super-block (model/quant.h has the sizes) */
    CHUNK_ELEMS = 1 << 22,          /* elements generated per write (a multiple of QK_K) */
    MAX_THREADS = 64,
    GGUF_U32 = 4, GGUF_I32 = 5, GGUF_F32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9,
    GGML_F32 = 0, GGML_Q4_1 = 3, GGML_Q4_K = 12, GGML_Q6_K = 14, GGML_BF16 = 30,
    GGML_Q4_K_M = -2,                  /* --type q4_k_m: Q4_K, some matrices Q6_K (mixed_type) */
    FTYPE_Q4_1 = 3, FTYPE_Q4_K_M = 15, FTYPE_BF16 = 32,   /* llama.cpp's general.file_type values */
};

typedef struct shape {
    const char *name, *label, *arch;
    int layers, dim, heads, kv_heads, ffn, vocab, ctx;
    float rope_base, eps;
    bool tied;                      /* no output.weight: the lm head is token_embd */
    int head_dim;                   /* written as <arch>.attention.key_length; 0: dim / heads */
    bool bias, qk_norm, post_norms; /* Qwen 2's qkv biases; Qwen 3 / Gemma 3's per-head norms; Gemma 3 */
    int window;                     /* <arch>.attention.sliding_window (Gemma 3) */
    float llama3_factor;            /* rope_freqs.weight from Llama 3's rope scaling with this factor; 0: none */
    int llama3_ctx;                 /* its original context (8192 for Llama 3; tiny-llama3's is short, so
                                     * that the factors change the rotations of its short sequences) */
    float head_std;                 /* --head-std: the lm head's std (0: 0.02 like every matrix) */
} shape;

static const shape shapes[] = {
    {"tiny", "random tiny", "llama", 2, 128, 4, 2, 256, 512, 2048, 10000.0f, 1e-5f, false, .head_dim = 0},
    {"smollm2", "random SmolLM2-135M shape", "llama", 30, 576, 9, 3, 1536, 49152, 8192, 100000.0f, 1e-5f, true, .head_dim = 0},
    {"llama3-8b", "random Llama-3-8B shape", "llama", 32, 4096, 32, 8, 14336, 128256, 8192, 500000.0f, 1e-5f, false, .head_dim = 0,
     .llama3_factor = 8.0f, .llama3_ctx = 8192},
    /* the architectures' reference models: small, every feature of the architecture present */
    {"tiny-llama3", "random tiny Llama 3", "llama", 2, 128, 4, 2, 256, 512, 8192, 500000.0f, 1e-5f, false,
     .llama3_factor = 8.0f, .llama3_ctx = 32},
    /* Mistral 7B-style: a llama file, as llama.cpp converts Mistral (4:1 grouped queries, theta 1e6) */
    {"tiny-mistral", "random tiny Mistral", "llama", 2, 128, 4, 1, 320, 512, 4096, 1000000.0f, 1e-5f, false,
     .head_dim = 0},
    {"tiny-qwen2", "random tiny Qwen 2.5", "qwen2", 2, 128, 4, 2, 256, 512, 4096, 1000000.0f, 1e-6f, true, .bias = true},
    {"tiny-qwen3", "random tiny Qwen 3", "qwen3", 2, 128, 4, 2, 256, 512, 4096, 1000000.0f, 1e-6f, true,
     .head_dim = 48, .qk_norm = true},
    {"tiny-gemma3", "random tiny Gemma 3", "gemma3", 6, 128, 2, 1, 256, 512, 4096, 1000000.0f, 1e-6f, true,
     .head_dim = 96, .qk_norm = true, .post_norms = true, .window = 8},
};

/* ---- values ---------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t tensor_key(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ULL;  /* FNV-1a of the name */
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 0x100000001b3ULL;
    return mix64(mix64(seed + 0x9e3779b97f4a7c15ULL) ^ h);
}

/* mean 0, variance 1 (approximately normal, within +-2 sqrt 3) */
static inline float gauss(uint64_t key, uint64_t i)
{
    uint64_t h = mix64(key + (i + 1) * 0x9e3779b97f4a7c15ULL);
    uint32_t s = (uint32_t)(h & 0xffff) + (uint32_t)((h >> 16) & 0xffff) + (uint32_t)((h >> 32) & 0xffff) + (uint32_t)(h >> 48);
    return ((float)s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* binary32 to binary16, round to nearest even (finite inputs of moderate size suffice here) */
static uint16_t to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);          /* rounds past 65504: inf */
    if (a < 0x38800000u) {                                              /* below 2^-14: subnormal */
        if (a < 0x33000000u) return (uint16_t)sign;                     /* below 2^-25: zero */
        uint32_t man = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(a >> 23);                               /* 14..24 */
        uint32_t half = 1u << (shift - 1), rest = man & ((1u << shift) - 1), q = man >> shift;
        if (rest > half || (rest == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

/* ---- tensors ------------------------------------------------------------------------------ */

typedef enum { T_MATRIX, T_NORM, T_BIAS, T_FACTORS } tensor_kind;

typedef struct tensor {
    char name[64];
    int type;                 /* GGML_* */
    uint64_t dims[2];         /* ggml order: dims[0] contiguous */
    int n_dims;
    tensor_kind kind;         /* matrix, bias: 0.02 g; norm: 1 + 0.02 g; factors: Llama 3's (f32) */
    uint64_t offset, nbytes;
} tensor;

static uint64_t align_up(uint64_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

/* elements per block of a tensor type, and bytes for `elems` elements (a multiple of it): ggml's
 * layouts, from the project's type table */
static uint64_t block_elems(int type) { return di_quant_type_of(type)->block_elems; }
static uint64_t bytes_of(int type, uint64_t elems)
{
    return elems / block_elems(type) * di_quant_type_of(type)->block_bytes;
}

/* --type q4_k_m: which type a matrix gets, as llama.cpp's Q4_K_M recipe chooses (its
 * use_more_bits): the lm head, and attn_v and ffn_down in the first and last eighth of the layers
 * and every third layer between, are Q6_K; the rest Q4_K. */
static int mixed_type(const char *name, int layer, int layers)
{
    bool more = layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;
    if (!strcmp(name, "output.weight")) return GGML_Q6_K;
    if (layer >= 0 && more && (strstr(name, "attn_v.weight") || strstr(name, "ffn_down.weight"))) return GGML_Q6_K;
    return GGML_Q4_K;
}

static void add_tensor(tensor *t, int *n, const char *name, int type, uint64_t d0, uint64_t d1, tensor_kind kind,
                       int layer, int layers)
{
    tensor *x = &t[(*n)++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->type = kind != T_MATRIX ? GGML_F32 : type == GGML_Q4_K_M ? mixed_type(name, layer, layers) : type;
    x->dims[0] = d0;
    x->dims[1] = d1;
    x->n_dims = d1 ? 2 : 1;
    x->kind = kind;
    uint64_t elems = d0 * (d1 ? d1 : 1);
    x->nbytes = bytes_of(x->type, elems);
}

static int head_dim(const shape *s) { return s->head_dim ? s->head_dim : s->dim / s->heads; }

static int build_tensors(const shape *s, int type, tensor *t)
{
    int n = 0;
    uint64_t D = (uint64_t)s->dim, HD = (uint64_t)head_dim(s), Q = (uint64_t)s->heads * HD,
             KV = (uint64_t)s->kv_heads * HD, F = (uint64_t)s->ffn, V = (uint64_t)s->vocab;
    char name[64];
    add_tensor(t, &n, "token_embd.weight", type, D, V, T_MATRIX, -1, s->layers);
    add_tensor(t, &n, "output_norm.weight", type, D, 0, T_NORM, -1, s->layers);
    if (!s->tied) add_tensor(t, &n, "output.weight", type, D, V, T_MATRIX, -1, s->layers);
    if (s->llama3_factor) add_tensor(t, &n, "rope_freqs.weight", type, HD / 2, 0, T_FACTORS, -1, s->layers);
    for (int l = 0; l < s->layers; l++) {
        struct { const char *what; uint64_t in, out; tensor_kind kind; bool on; } parts[] = {
            {"attn_norm.weight", D, 0, T_NORM, true}, {"attn_q.weight", D, Q, T_MATRIX, true},
            {"attn_k.weight", D, KV, T_MATRIX, true}, {"attn_v.weight", D, KV, T_MATRIX, true},
            {"attn_q.bias", Q, 0, T_BIAS, s->bias}, {"attn_k.bias", KV, 0, T_BIAS, s->bias},
            {"attn_v.bias", KV, 0, T_BIAS, s->bias}, {"attn_q_norm.weight", HD, 0, T_NORM, s->qk_norm},
            {"attn_k_norm.weight", HD, 0, T_NORM, s->qk_norm}, {"attn_output.weight", Q, D, T_MATRIX, true},
            {"post_attention_norm.weight", D, 0, T_NORM, s->post_norms}, {"ffn_norm.weight", D, 0, T_NORM, true},
            {"ffn_gate.weight", D, F, T_MATRIX, true}, {"ffn_up.weight", D, F, T_MATRIX, true},
            {"ffn_down.weight", F, D, T_MATRIX, true}, {"post_ffw_norm.weight", D, 0, T_NORM, s->post_norms},
        };
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
            if (!parts[i].on) continue;
            snprintf(name, sizeof name, "blk.%d.%s", l, parts[i].what);
            add_tensor(t, &n, name, type, parts[i].in, parts[i].out, parts[i].kind, l, s->layers);
        }
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        t[i].offset = off;
        off = align_up(off + t[i].nbytes);
    }
    return n;
}

/* ---- metadata: built in memory (a few MB at most, the vocabulary), then written --------- */

typedef struct mbuf { uint8_t *p; size_t n, cap; bool oom; } mbuf;

static void put(mbuf *b, const void *src, size_t n)
{
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->n + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) { b->oom = true; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put_u32(mbuf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(mbuf *b, uint64_t v) { put(b, &v, 8); }
static void put_f32(mbuf *b, float v) { put(b, &v, 4); }
static void put_str(mbuf *b, const char *s) { put_u64(b, strlen(s)); put(b, s, strlen(s)); }
static void kv_str(mbuf *b, int *n, const char *k, const char *v) { put_str(b, k); put_u32(b, GGUF_STRING); put_str(b, v); (*n)++; }
static void kv_u32(mbuf *b, int *n, const char *k, uint32_t v) { put_str(b, k); put_u32(b, GGUF_U32); put_u32(b, v); (*n)++; }
static void kv_f32(mbuf *b, int *n, const char *k, float v) { put_str(b, k); put_u32(b, GGUF_F32); put_f32(b, v); (*n)++; }
static void kv_bool(mbuf *b, int *n, const char *k, bool v) { uint8_t x = v; put_str(b, k); put_u32(b, GGUF_BOOL); put(b, &x, 1); (*n)++; }

/* "<arch>.<key>" */
static const char *akey(const shape *s, const char *k)
{
    static char buf[160];
    snprintf(buf, sizeof buf, "%s.%s", s->arch, k);
    return buf;
}

/* The placeholder SentencePiece vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then "<tN>". */
static int placeholder_vocab(mbuf *b, const shape *s)
{
    int n = 0;
    kv_str(b, &n, "tokenizer.ggml.model", "llama");
    put_str(b, "tokenizer.ggml.tokens"); put_u32(b, GGUF_ARRAY); put_u32(b, GGUF_STRING); put_u64(b, (uint64_t)s->vocab);
    char tok[32];
    for (int i = 0; i < s->vocab; i++) {
        if (i < 3) put_str(b, (const char *[]){"<unk>", "<s>", "</s>"}[i]);
        else if (i < 3 + 256) { snprintf(tok, sizeof tok, "<0x%02X>", i - 3); put_str(b, tok); }
        else { snprintf(tok, sizeof tok, "<t%d>", i); put_str(b, tok); }
    }
    n++;
    put_str(b, "tokenizer.ggml.scores"); put_u32(b, GGUF_ARRAY); put_u32(b, GGUF_F32); put_u64(b, (uint64_t)s->vocab);
    for (int i = 0; i < s->vocab; i++) put_f32(b, i < 3 + 256 ? 0.0f : -(float)i);
    n++;
    put_str(b, "tokenizer.ggml.token_type"); put_u32(b, GGUF_ARRAY); put_u32(b, GGUF_I32); put_u64(b, (uint64_t)s->vocab);
    for (int i = 0; i < s->vocab; i++) put_u32(b, i == 0 ? 2u : i < 3 ? 3u : i < 3 + 256 ? 6u : 1u);  /* unknown, control, byte, normal */
    n++;
    kv_u32(b, &n, "tokenizer.ggml.unknown_token_id", 0);
    kv_u32(b, &n, "tokenizer.ggml.bos_token_id", 1);
    kv_u32(b, &n, "tokenizer.ggml.eos_token_id", 2);
    kv_bool(b, &n, "tokenizer.ggml.add_bos_token", true);
    return n;
}

/* Bytes a GGUF value of `type` takes at p (p inside a mapping the reader validated). */
static uint64_t value_bytes(int type, const uint8_t *p)
{
    static const uint8_t sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    uint64_t n;
    if (type == GGUF_STRING) { memcpy(&n, p, 8); return 8 + n; }
    if (type != GGUF_ARRAY) return sizes[type];
    uint32_t et;
    memcpy(&et, p, 4);
    memcpy(&n, p + 4, 8);
    uint64_t total = 12;
    for (uint64_t i = 0; i < n; i++) total += value_bytes((int)et, p + total);
    return total;
}

/* Every tokenizer.* key of a vocab-only GGUF, copied as it is. */
static int copied_vocab(mbuf *b, const shape *s, const char *path)
{
    di_gguf *g = NULL;
    di_err err = {0};
    if (di_gguf_open(path, &g, &err)) { fprintf(stderr, "make_random_gguf: --vocab: %s\n", err.msg); return -1; }
    const di_gguf_kv *toks = di_gguf_find(g, "tokenizer.ggml.tokens");
    if (!toks || toks->arr_len != (uint64_t)s->vocab) {
        fprintf(stderr, "make_random_gguf: --vocab %s: %llu tokens, the shape's vocab is %d\n", path,
                (unsigned long long)(toks ? toks->arr_len : 0), s->vocab);
        di_gguf_close(g);
        return -1;
    }
    int n = 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const di_gguf_kv *kv = &g->kv[i];
        if (kv->key.len < 10 || memcmp(kv->key.ptr, "tokenizer.", 10)) continue;
        put_u64(b, kv->key.len);
        put(b, kv->key.ptr, kv->key.len);
        put_u32(b, (uint32_t)kv->type);
        /* an array's data points at its first element: its header (type, count) is the 12 bytes before */
        const uint8_t *v = kv->type == GGUF_ARRAY ? kv->data - 12 : kv->data;
        put(b, v, value_bytes(kv->type, v));
        n++;
    }
    di_gguf_close(g);
    return n;
}

static int metadata(mbuf *b, const shape *s, int type, uint64_t seed, const char *vocab)
{
    int n = 0;
    char name[128];
    snprintf(name, sizeof name, "%s (seed %llu)", s->label, (unsigned long long)seed);
    kv_str(b, &n, "general.architecture", s->arch);
    kv_str(b, &n, "general.name", name);
    kv_u32(b, &n, "general.alignment", ALIGN);
    kv_u32(b, &n, "general.file_type", type == GGML_BF16 ? FTYPE_BF16 : type == GGML_Q4_K_M ? FTYPE_Q4_K_M : FTYPE_Q4_1);
    kv_u32(b, &n, "general.quantization_version", 2);
    kv_u32(b, &n, akey(s, "block_count"), (uint32_t)s->layers);
    kv_u32(b, &n, akey(s, "context_length"), (uint32_t)s->ctx);
    kv_u32(b, &n, akey(s, "embedding_length"), (uint32_t)s->dim);
    kv_u32(b, &n, akey(s, "feed_forward_length"), (uint32_t)s->ffn);
    kv_u32(b, &n, akey(s, "attention.head_count"), (uint32_t)s->heads);
    kv_u32(b, &n, akey(s, "attention.head_count_kv"), (uint32_t)s->kv_heads);
    kv_f32(b, &n, akey(s, "rope.freq_base"), s->rope_base);
    kv_f32(b, &n, akey(s, "attention.layer_norm_rms_epsilon"), s->eps);
    kv_u32(b, &n, akey(s, "vocab_size"), (uint32_t)s->vocab);
    kv_u32(b, &n, akey(s, "rope.dimension_count"), (uint32_t)head_dim(s));
    if (s->head_dim) {
        kv_u32(b, &n, akey(s, "attention.key_length"), (uint32_t)s->head_dim);
        kv_u32(b, &n, akey(s, "attention.value_length"), (uint32_t)s->head_dim);
    }
    if (s->window) kv_u32(b, &n, akey(s, "attention.sliding_window"), (uint32_t)s->window);
    int nv = vocab ? copied_vocab(b, s, vocab) : placeholder_vocab(b, s);
    return nv < 0 ? -1 : n + nv;
}

/* Llama 3's rope scaling as factors per frequency pair (what llama.cpp's converter writes to
 * rope_freqs.weight): 1 for short wavelengths, `factor` for long ones, smoothly between, with
 * low_freq_factor 1, high_freq_factor 4 and the shape's original context. */
static float llama3_factor(const shape *s, uint64_t i)
{
    double HD = head_dim(s), freq = pow((double)s->rope_base, -2.0 * (double)i / HD), wavelen = 2 * M_PI / freq;
    double factor = s->llama3_factor, low = 1, high = 4, old = s->llama3_ctx;
    double low_wl = old / low, high_wl = old / high;
    if (wavelen < high_wl) return 1.0f;
    if (wavelen > low_wl) return (float)factor;
    double smooth = (old / wavelen - low) / (high - low);
    return (float)(1.0 / ((1 - smooth) / factor + smooth));
}

/* ---- data: chunks filled by worker threads -------------------------------------------------- */

typedef struct job {
    const shape *s;
    const tensor *t;
    uint64_t key, first, count;   /* elements [first, first + count) of the tensor */
    uint8_t *out;                 /* where element `first` goes */
} job;

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* One Q4_K super-block of x (ggml's layout: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins,
 * then 128 bytes of codes; element 64c + l is the low nibble of qs[32c + l], 64c + 32 + l the high
 * one; value d * sc[s] * q - dmin * m[s] for sub-block s of 32). A plain min / max quantizer (not
 * llama.cpp's search): the blocks are random weights in the format, what a speed figure needs. */
static void put_q4_k(const float *x, uint8_t *blk)
{
    float scale[8], mins[8], smax = 0, mmax = 0;
    for (int s = 0; s < 8; s++) {
        float mn = 0, mx = 0;
        for (int l = 0; l < 32; l++) {
            mn = x[32 * s + l] < mn ? x[32 * s + l] : mn;
            mx = x[32 * s + l] > mx ? x[32 * s + l] : mx;
        }
        scale[s] = (mx - mn) / 15.0f;
        mins[s] = -mn;
        smax = scale[s] > smax ? scale[s] : smax;
        mmax = mins[s] > mmax ? mins[s] : mmax;
    }
    uint16_t hd = to_f16(smax / 63.0f), hm = to_f16(mmax / 63.0f);
    float d = di_f16_to_f32(hd), dmin = di_f16_to_f32(hm);
    int sc[8], m[8];
    for (int s = 0; s < 8; s++) {
        sc[s] = d > 0 ? clampi((int)(scale[s] / d + 0.5f), 0, 63) : 0;
        m[s] = dmin > 0 ? clampi((int)(mins[s] / dmin + 0.5f), 0, 63) : 0;
    }
    memcpy(blk, &hd, 2);
    memcpy(blk + 2, &hm, 2);
    uint8_t *q = blk + 4;   /* the inverse of ggml's get_scale_min_k4 */
    for (int i = 0; i < 4; i++) {
        q[i] = (uint8_t)((sc[i] & 63) | (sc[i + 4] >> 4) << 6);
        q[i + 4] = (uint8_t)((m[i] & 63) | (m[i + 4] >> 4) << 6);
        q[i + 8] = (uint8_t)((sc[i + 4] & 15) | (m[i + 4] & 15) << 4);
    }
    uint8_t *qs = blk + 16;
    memset(qs, 0, 128);
    for (int e = 0; e < QK_K; e++) {
        int s = e / 32;
        float step = d * (float)sc[s];
        int c = step > 0 ? clampi((int)((x[e] + dmin * (float)m[s]) / step + 0.5f), 0, 15) : 0;
        qs[32 * (e / 64) + e % 32] |= (uint8_t)(c << (4 * (s % 2)));
    }
}

/* One Q6_K super-block (ql[128], qh[64], int8 scales[16], f16 d; element e = 128j + r has the low
 * nibble (ql[64j + r % 64] >> 4 (r / 64)) and the high two bits (qh[32j + r % 32] >> 2 (r / 32)) of
 * q, value d * sc[e / 16] * (q - 32)). */
static void put_q6_k(const float *x, uint8_t *blk)
{
    float scale[16], amax = 0;
    for (int s = 0; s < 16; s++) {
        float a = 0;
        for (int l = 0; l < 16; l++) a = fabsf(x[16 * s + l]) > a ? fabsf(x[16 * s + l]) : a;
        scale[s] = a / 31.0f;
        amax = scale[s] > amax ? scale[s] : amax;
    }
    uint16_t hd = to_f16(amax / 127.0f);
    float d = di_f16_to_f32(hd);
    int8_t *sc = (int8_t *)(blk + 192);
    uint8_t *ql = blk, *qh = blk + 128;
    memset(blk, 0, 192);
    for (int s = 0; s < 16; s++) sc[s] = (int8_t)(d > 0 ? clampi((int)(scale[s] / d + 0.5f), 0, 127) : 0);
    for (int e = 0; e < QK_K; e++) {
        float step = d * (float)sc[e / 16];
        int q = step > 0 ? clampi((int)lrintf(x[e] / step) + 32, 0, 63) : 32;
        int jj = e / 128, r = e % 128;
        ql[64 * jj + r % 64] |= (uint8_t)((q & 15) << (4 * (r / 64)));
        qh[32 * jj + r % 32] |= (uint8_t)((q >> 4) << (2 * (r / 32)));
    }
    memcpy(blk + 208, &hd, 2);
}

static void fill(const job *j)
{
    const tensor *t = j->t;
    float base = t->kind == T_NORM ? 1.0f : 0.0f, std = 0.02f;
    /* the lm head (token_embd when tied): a larger std gives peaked next-token distributions */
    if (j->s->head_std > 0 && !strcmp(t->name, j->s->tied ? "token_embd.weight" : "output.weight")) std = j->s->head_std;
    if (t->kind == T_FACTORS) {
        float *o = (float *)j->out;
        for (uint64_t i = 0; i < j->count; i++) o[i] = llama3_factor(j->s, j->first + i);
    } else if (t->type == GGML_F32) {
        float *o = (float *)j->out;
        for (uint64_t i = 0; i < j->count; i++) o[i] = base + std * gauss(j->key, j->first + i);
    } else if (t->type == GGML_BF16) {
        uint16_t *o = (uint16_t *)j->out;
        for (uint64_t i = 0; i < j->count; i++) o[i] = to_bf16(std * gauss(j->key, j->first + i));
    } else if (t->type == GGML_Q4_K || t->type == GGML_Q6_K) {
        for (uint64_t b = 0; b < j->count / QK_K; b++) {
            float x[QK_K];
            for (int k = 0; k < QK_K; k++) x[k] = std * gauss(j->key, j->first + b * QK_K + (uint64_t)k);
            if (t->type == GGML_Q4_K) put_q4_k(x, j->out + bytes_of(GGML_Q4_K, b * QK_K));
            else put_q6_k(x, j->out + bytes_of(GGML_Q6_K, b * QK_K));
        }
    } else { /* q4_1, as ggml's reference quantizer: d = (max - min) / 15, m = min */
        for (uint64_t b = 0; b < j->count / QK; b++) {
            float x[QK], mn = INFINITY, mx = -INFINITY;
            for (int k = 0; k < QK; k++) {
                x[k] = std * gauss(j->key, j->first + b * QK + (uint64_t)k);
                mn = x[k] < mn ? x[k] : mn;
                mx = x[k] > mx ? x[k] : mx;
            }
            float d = (mx - mn) / 15.0f, id = d ? 1.0f / d : 0.0f;
            uint8_t *blk = j->out + b * Q4_1_BYTES;
            uint16_t hd = to_f16(d), hm = to_f16(mn);
            memcpy(blk, &hd, 2);
            memcpy(blk + 2, &hm, 2);
            for (int k = 0; k < QK / 2; k++) {
                int q0 = (int)((x[k] - mn) * id + 0.5f), q1 = (int)((x[k + QK / 2] - mn) * id + 0.5f);
                q0 = q0 > 15 ? 15 : q0;
                q1 = q1 > 15 ? 15 : q1;
                blk[4 + k] = (uint8_t)(q0 | q1 << 4);
            }
        }
    }
}

static void *fill_thread(void *p)
{
    fill(p);
    return NULL;
}

/* Generates the tensor chunk by chunk, nthreads workers per chunk, and writes it. */
static int write_tensor(FILE *f, const shape *s, const tensor *t, uint64_t seed, int nthreads, uint8_t *buf,
                        const char *path)
{
    uint64_t elems = t->dims[0] * (t->n_dims > 1 ? t->dims[1] : 1), key = tensor_key(seed, t->name);
    for (uint64_t first = 0; first < elems; first += CHUNK_ELEMS) {
        uint64_t count = elems - first < CHUNK_ELEMS ? elems - first : CHUNK_ELEMS;
        /* split into per-thread ranges on block boundaries (32 or 256 elements) */
        const uint64_t be = block_elems(t->type) < QK ? QK : block_elems(t->type);
        uint64_t blocks = count / be, per = (blocks + (uint64_t)nthreads - 1) / (uint64_t)nthreads;
        job jobs[MAX_THREADS];
        pthread_t th[MAX_THREADS];
        int nj = 0;
        if (count % be || nthreads == 1 || count < 65536) {
            jobs[nj++] = (job){s, t, key, first, count, buf};
        } else {
            for (uint64_t b = 0; b < blocks; b += per, nj++) {
                uint64_t nb = blocks - b < per ? blocks - b : per;
                jobs[nj] = (job){s, t, key, first + b * be, nb * be, buf + bytes_of(t->type, b * be)};
            }
        }
        int started = 0;
        for (int i = 1; i < nj; i++, started++)
            if (pthread_create(&th[i], NULL, fill_thread, &jobs[i])) break;
        for (int i = 1 + started; i < nj; i++) fill(&jobs[i]);   /* threads that would not start */
        fill(&jobs[0]);
        for (int i = 1; i <= started; i++) pthread_join(th[i], NULL);
        size_t nbytes = (size_t)bytes_of(t->type, count);
        if (fwrite(buf, 1, nbytes, f) != nbytes) {
            fprintf(stderr, "make_random_gguf: %s: write failed: %s\n", path, strerror(errno));
            return 1;
        }
    }
    static const uint8_t zeros[ALIGN];
    size_t pad = (size_t)(align_up(t->nbytes) - t->nbytes);
    if (pad && fwrite(zeros, 1, pad, f) != pad) {
        fprintf(stderr, "make_random_gguf: %s: write failed: %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

/* ---- main ------------------------------------------------------------------------------------- */

static int usage(const char *why, const char *arg)
{
    if (why) {
        fprintf(stderr, "make_random_gguf: ");
        fprintf(stderr, why, arg);
        fprintf(stderr, "\n");
    }
    fprintf(why ? stderr : stdout,
            "usage: make_random_gguf OUT.gguf --shape NAME [--seed S] [--type bf16|q4_1|q4_k_m] [--vocab FILE]\n"
            "                        [--layers N] [--threads N] [--header-only] [--quiet]\n"
            "  --shape        tiny (2 layers, dim 128, 4/2 heads, ffn 256, vocab 512);\n"
            "                 smollm2 (30 x 576, 9/3 heads, ffn 1536, vocab 49152, tied lm head);\n"
            "                 llama3-8b (32 x 4096, 32/8 heads, ffn 14336, vocab 128256, rope 500000, Llama 3 rope scaling);\n"
            "                 tiny-llama3, tiny-mistral, tiny-qwen2, tiny-qwen3, tiny-gemma3: the architectures'\n"
            "                 reference models (every feature of the architecture, a few layers of dim 128)\n"
            "  --vocab FILE   the tokenizer.* keys of FILE instead of a placeholder vocabulary\n"
            "  --seed S       weights are a function of (S, tensor name, index) (default 1)\n"
            "  --type T       matrices bf16 (default), q4_1, or q4_k_m (Q4_K, the lm head and some attn_v and\n"
            "                 ffn_down Q6_K, as llama.cpp's Q4_K_M; rows a multiple of 256); norms are f32\n"
            "  --layers N     only the first N layers (same weights as the full shape's)\n"
            "  --threads N    generator threads (default: all cores, at most %d)\n"
            "  --head-std S   the lm head's weights are S g instead of 0.02 g (peaked next-token distributions:\n"
            "                 sampled text that repeats, for the speculation tests)\n"
            "  --header-only  metadata and tensor infos, then a sparse extension to the full size\n", MAX_THREADS);
    return why ? 2 : 0;
}

static bool parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!s || *s == '-') return false;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    const char *out = NULL, *shape_name = NULL, *type_name = "bf16", *vocab = NULL;
    uint64_t seed = 1, layers = 0, threads = 0;
    float head_std = 0;
    bool header_only = false, quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(NULL, NULL);
        else if (!strcmp(a, "--header-only")) header_only = true;
        else if (!strcmp(a, "--quiet")) quiet = true;
        else if (!strcmp(a, "--shape")) { if (!v) return usage("%s needs a value", a); shape_name = v; i++; }
        else if (!strcmp(a, "--type")) { if (!v) return usage("%s needs a value", a); type_name = v; i++; }
        else if (!strcmp(a, "--vocab")) { if (!v) return usage("%s needs a value", a); vocab = v; i++; }
        else if (!strcmp(a, "--seed")) { if (!parse_u64(v, 0, UINT64_MAX, &seed)) return usage("--seed takes an unsigned integer, not '%s'", v ? v : ""); i++; }
        else if (!strcmp(a, "--layers")) { if (!parse_u64(v, 1, 1024, &layers)) return usage("--layers takes 1..1024, not '%s'", v ? v : ""); i++; }
        else if (!strcmp(a, "--threads")) { if (!parse_u64(v, 1, MAX_THREADS, &threads)) return usage("--threads takes 1..64, not '%s'", v ? v : ""); i++; }
        else if (!strcmp(a, "--head-std")) {
            char *end = NULL;
            head_std = v ? strtof(v, &end) : 0;
            if (!v || *end || !(head_std > 0 && head_std <= 100)) return usage("--head-std takes a number in (0, 100], not '%s'", v ? v : "");
            i++;
        }
        else if (a[0] == '-' && a[1]) return usage("unknown option '%s'", a);
        else if (!out) out = a;
        else return usage("one output file only ('%s' is a second)", a);
    }
    if (!out) return usage("%s", "no output file given");
    if (!shape_name) return usage("%s", "--shape is required (make_random_gguf --help lists the shapes)");
    const shape *sp = NULL;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (!strcmp(shapes[i].name, shape_name)) sp = &shapes[i];
    if (!sp) return usage("no --shape '%s' (make_random_gguf --help lists the shapes)", shape_name);
    int type = !strcmp(type_name, "bf16") ? GGML_BF16 : !strcmp(type_name, "q4_1") ? GGML_Q4_1
             : !strcmp(type_name, "q4_k_m") ? GGML_Q4_K_M : -1;
    if (type == -1) return usage("--type takes bf16, q4_1 or q4_k_m, not '%s'", type_name);
    shape s = *sp;
    if (layers) s.layers = (int)layers;
    s.head_std = head_std;
    if (!threads) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : (uint64_t)n;
    }

    int max_tensors = 4 + 16 * s.layers;
    tensor *ts = calloc((size_t)max_tensors, sizeof *ts);
    mbuf kv = {0}, info = {0};
    if (!ts) { fprintf(stderr, "make_random_gguf: out of memory\n"); return 1; }
    int nt = build_tensors(&s, type, ts);
    for (int i = 0; i < nt; i++)
        if (ts[i].dims[0] % block_elems(ts[i].type)) {
            fprintf(stderr, "make_random_gguf: --type %s: %s has rows of %llu elements, not a multiple of %llu "
                    "(shape %s)\n", type_name, ts[i].name, (unsigned long long)ts[i].dims[0],
                    (unsigned long long)block_elems(ts[i].type), s.name);
            return 2;
        }
    int nkv = metadata(&kv, &s, type, seed, vocab);
    if (nkv < 0) return 2;
    for (int i = 0; i < nt; i++) {
        put_str(&info, ts[i].name);
        put_u32(&info, (uint32_t)ts[i].n_dims);
        for (int d = 0; d < ts[i].n_dims; d++) put_u64(&info, ts[i].dims[d]);
        put_u32(&info, (uint32_t)ts[i].type);
        put_u64(&info, ts[i].offset);
    }
    if (kv.oom || info.oom) { fprintf(stderr, "make_random_gguf: out of memory\n"); return 1; }
    uint64_t header = 4 + 4 + 8 + 8 + kv.n + info.n, data_start = align_up(header);
    uint64_t data_bytes = align_up(ts[nt - 1].offset + ts[nt - 1].nbytes), total = data_start + data_bytes;

    FILE *f = fopen(out, "wb");
    if (!f) { fprintf(stderr, "make_random_gguf: %s: %s\n", out, strerror(errno)); return 2; }
    setvbuf(f, NULL, _IOFBF, 1 << 22);
    uint32_t version = 3;
    uint64_t n_tensors = (uint64_t)nt, n_kv = (uint64_t)nkv;
    static const uint8_t zeros[ALIGN];
    bool ok = fwrite("GGUF", 1, 4, f) == 4 && fwrite(&version, 4, 1, f) == 1 && fwrite(&n_tensors, 8, 1, f) == 1 &&
              fwrite(&n_kv, 8, 1, f) == 1 && fwrite(kv.p, 1, kv.n, f) == kv.n && fwrite(info.p, 1, info.n, f) == info.n &&
              fwrite(zeros, 1, (size_t)(data_start - header), f) == (size_t)(data_start - header);
    free(kv.p);
    free(info.p);
    if (!ok) { fprintf(stderr, "make_random_gguf: %s: write failed: %s\n", out, strerror(errno)); fclose(f); return 1; }
    if (!quiet)
        fprintf(stderr, "make_random_gguf: %s: %s, %d layers, %s, %d tensors, %.2f GB (%s)\n", out, s.label, s.layers,
                type_name, nt, total / 1e9, header_only ? "header only, sparse data" : "writing");

    double t0 = cli_now();
    int rc = 0;
    if (header_only) {
        if (fflush(f) || ftruncate(fileno(f), (off_t)total)) {
            fprintf(stderr, "make_random_gguf: %s: extending to %llu bytes: %s\n", out, (unsigned long long)total, strerror(errno));
            rc = 1;
        }
    } else {
        uint8_t *buf = malloc((size_t)CHUNK_ELEMS * 4);
        if (!buf) { fprintf(stderr, "make_random_gguf: out of memory\n"); fclose(f); return 1; }
        uint64_t done = 0;
        bool progress = !quiet && data_bytes > (1ull << 30) && isatty(2);
        for (int i = 0; i < nt && !rc; i++) {
            rc = write_tensor(f, &s, &ts[i], seed, (int)threads, buf, out);
            done += align_up(ts[i].nbytes);
            if (progress && (i % 9 == 0 || i == nt - 1))
                fprintf(stderr, "\r  %5.1f%%  %.1f GB  %.0f s", 100.0 * done / data_bytes, done / 1e9, cli_now() - t0);
        }
        if (progress) fprintf(stderr, "\n");
        free(buf);
    }
    if (fclose(f) && !rc) { fprintf(stderr, "make_random_gguf: %s: %s\n", out, strerror(errno)); rc = 1; }
    free(ts);
    if (rc) { unlink(out); return rc; }
    if (!quiet)
        fprintf(stderr, "make_random_gguf: %s %llu bytes in %.1f s\n", header_only ? "extended (sparse) to" : "wrote",
                (unsigned long long)total, cli_now() - t0);
    return 0;
}
