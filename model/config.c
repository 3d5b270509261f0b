/* Model hyper-parameters from GGUF metadata, cross-checked against the tensors, for every
 * architecture of model/arch.def: the keys are "<arch>.<key>". See config.h. */
#include "model/config.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_VOCAB = 1 << 24 };

/* "<arch>.<key>" */
static const char *key(const di_config *c, const char *k)
{
    static _Thread_local char buf[160];
    snprintf(buf, sizeof buf, "%s.%s", c->arch->name, k);
    return buf;
}

static int read_ints(const di_gguf *g, di_config *c, di_err *err)
{
    struct { const char *key; int *dst; long max; } ints[] = {
        {"block_count", &c->n_layers, 1024},          {"embedding_length", &c->dim, 65536},
        {"feed_forward_length", &c->ffn, 1 << 20},    {"attention.head_count", &c->n_heads, 1024},
        {"attention.head_count_kv", &c->n_kv_heads, 1024}, {"context_length", &c->ctx_train, 1 << 24},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        uint64_t v;
        const char *k = key(c, ints[i].key);
        if (di_gguf_get_u64(g, k, &v, err)) return err->code;
        if (v == 0 || v > (uint64_t)ints[i].max)
            return di_fail(err, DI_EFORMAT, "%s: %s = %llu is out of range", g->path, k, (unsigned long long)v);
        *ints[i].dst = (int)v;
    }
    return DI_OK;
}

/* A float the forward pass divides by or raises to a power: NaN, infinity, zero or a negative
 * value makes every logit NaN, and the sampler then picks end-of-text at once. */
static int read_positive(const di_gguf *g, const char *k, float fallback, float *out, di_err *err)
{
    if (!di_gguf_find(g, k) && !isnan(fallback)) {
        *out = fallback;
        return DI_OK;
    }
    if (di_gguf_get_f32(g, k, out, err)) return err->code;
    if (!(isfinite(*out) && *out > 0))
        return di_fail(err, DI_EFORMAT, "%s: %s = %g must be positive and finite", g->path, k, (double)*out);
    return DI_OK;
}

/* Optional keys that must agree with a value derived from others when they are present. */
static int check_optional(const di_gguf *g, const char *k, uint64_t want, const char *why, di_err *err)
{
    if (!di_gguf_find(g, k)) return DI_OK;
    uint64_t v;
    if (di_gguf_get_u64(g, k, &v, err)) return err->code;
    if (v != want)
        return di_fail(err, DI_EFORMAT, "%s: %s = %llu, but %s is %llu", g->path, k, (unsigned long long)v, why,
                       (unsigned long long)want);
    return DI_OK;
}

/* The head dim: dim / heads, or (Qwen 3, Gemma 3) attention.key_length, which value_length must
 * equal. RoPE rotates every pair of a head: partial rotation is refused, as llama.cpp does. */
static int read_heads(const di_gguf *g, di_config *c, di_err *err)
{
    if (c->n_heads % c->n_kv_heads)
        return di_fail(err, DI_EFORMAT, "%s: %d heads are not a multiple of %d KV heads", g->path, c->n_heads,
                       c->n_kv_heads);
    const char *kl = key(c, "attention.key_length");
    if (c->arch->head_dim_key && di_gguf_find(g, kl)) {
        uint64_t v;
        if (di_gguf_get_u64(g, kl, &v, err)) return err->code;
        if (v == 0 || v > 1024) return di_fail(err, DI_EFORMAT, "%s: %s = %llu is out of range", g->path, kl, (unsigned long long)v);
        c->head_dim = (int)v;
    } else {
        if (c->dim % c->n_heads)
            return di_fail(err, DI_EFORMAT, "%s: %d heads do not divide dim %d", g->path, c->n_heads, c->dim);
        c->head_dim = c->dim / c->n_heads;
        if (check_optional(g, kl, (uint64_t)c->head_dim, "the head dim (embedding_length / attention.head_count)", err))
            return err->code;
    }
    if (c->head_dim % 2) return di_fail(err, DI_EFORMAT, "%s: head dim %d is odd", g->path, c->head_dim);
    if (check_optional(g, key(c, "attention.value_length"), (uint64_t)c->head_dim, "the head dim", err)) return err->code;
    char rk[160];
    snprintf(rk, sizeof rk, "%s", key(c, "rope.dimension_count"));
    if (!di_gguf_find(g, rk)) return DI_OK;
    uint64_t rd;
    if (di_gguf_get_u64(g, rk, &rd, err)) return err->code;
    if (rd > (uint64_t)c->head_dim)
        return di_fail(err, DI_EFORMAT, "%s: %s = %llu is larger than the head dim %d", g->path, rk,
                       (unsigned long long)rd, c->head_dim);
    if (rd != (uint64_t)c->head_dim)
        return di_fail(err, DI_EFORMAT, "%s: %s = %llu, not the head dim %d: rotating only part of a head is not "
                       "supported", g->path, rk, (unsigned long long)rd, c->head_dim);
    return DI_OK;
}

/* RoPE: the base, linear scaling (<arch>.rope.scaling.type = linear), Llama 3's frequency
 * factors (the rope_freqs.weight tensor), and the sliding-window layers' own base. */
static int read_rope(const di_gguf *g, di_config *c, di_err *err)
{
    if (read_positive(g, key(c, "rope.freq_base"), 10000.0f, &c->rope_base, err)) return err->code;
    c->rope_scale = 1.0f;
    char tk[160];
    snprintf(tk, sizeof tk, "%s", key(c, "rope.scaling.type"));
    if (di_gguf_find(g, tk)) {
        di_gguf_str t;
        if (di_gguf_get_str(g, tk, &t, err)) return err->code;
        bool none = t.len == 4 && !memcmp(t.ptr, "none", 4), linear = t.len == 6 && !memcmp(t.ptr, "linear", 6);
        if (!none && !linear)
            return di_fail(err, DI_EFORMAT, "%s: %s = '%.*s' is not supported (none or linear)", g->path, tk,
                           (int)(t.len > 32 ? 32 : t.len), t.ptr);
        if (linear && read_positive(g, key(c, "rope.scaling.factor"), NAN, &c->rope_scale, err)) return err->code;
    }
    const di_gguf_tensor *f = di_gguf_tensor_find(g, "rope_freqs.weight");
    if (f && f->n_elems != (uint64_t)c->head_dim / 2)
        return di_fail(err, DI_EFORMAT, "%s: tensor rope_freqs.weight has %llu elements, the head dim %d needs %d",
                       g->path, (unsigned long long)f->n_elems, c->head_dim, c->head_dim / 2);
    c->rope_freqs = f != NULL;
    if (!c->arch->swa_period) return DI_OK;
    c->rope_base_swa = c->arch->swa_rope_base;
    uint64_t w;
    const char *wk = key(c, "attention.sliding_window");
    if (di_gguf_get_u64(g, wk, &w, err)) return err->code;
    if (w == 0 || w > (1u << 24)) return di_fail(err, DI_EFORMAT, "%s: %s = %llu is out of range", g->path, wk, (unsigned long long)w);
    c->window = (int)w;
    return DI_OK;
}

/* The vocabulary is token_embd's rows; the token list and <arch>.vocab_size, where present,
 * must say the same: a shorter list leaves generated ids without text. */
static int read_vocab(const di_gguf *g, di_config *c, di_err *err)
{
    const di_gguf_tensor *e = di_gguf_tensor_find(g, "token_embd.weight");
    if (!e) return di_fail(err, DI_EFORMAT, "%s: missing tensor token_embd.weight", g->path);
    if (e->n_dims != 2 || e->dims[0] != (uint64_t)c->dim || e->dims[1] > MAX_VOCAB)
        return di_fail(err, DI_EFORMAT, "%s: tensor token_embd.weight has shape [%llu, %llu], expected [%d, vocab <= %d]",
                       g->path, (unsigned long long)e->dims[0], (unsigned long long)(e->n_dims > 1 ? e->dims[1] : 1),
                       c->dim, MAX_VOCAB);
    c->vocab = (int)e->dims[1];
    if (check_optional(g, key(c, "vocab_size"), (uint64_t)c->vocab, "the row count of token_embd.weight", err))
        return err->code;
    const di_gguf_kv *toks = di_gguf_find(g, "tokenizer.ggml.tokens");
    if (toks && toks->type == DI_GGUF_ARRAY && toks->arr_len != (uint64_t)c->vocab)
        return di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.tokens has %llu tokens, but token_embd.weight has %d rows",
                       g->path, (unsigned long long)toks->arr_len, c->vocab);
    return DI_OK;
}

/* Layer tensors are "blk.<n>.<name>"; one with n >= block_count would be ignored. The ones
 * below the count are each looked up, so a missing one is already an error at load. */
static int check_layers(const di_gguf *g, const di_config *c, di_err *err)
{
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const char *name = g->tensors[i].name;
        if (strncmp(name, "blk.", 4) || name[4] < '0' || name[4] > '9') continue;
        char *end;
        unsigned long long layer = strtoull(name + 4, &end, 10);
        if (*end != '.') continue;
        if (layer >= (unsigned long long)c->n_layers)
            return di_fail(err, DI_EFORMAT, "%s: tensor %s belongs to layer %llu, but %s = %d", g->path, name, layer,
                           key(c, "block_count"), c->n_layers);
    }
    return DI_OK;
}

bool di_config_layer_windowed(const di_config *c, int l)
{
    return c->arch->swa_period > 0 && (l + 1) % c->arch->swa_period != 0;
}

int di_config_read(const di_gguf *g, di_config *c, di_err *err)
{
    *c = (di_config){0};
    di_gguf_str arch;
    if (di_gguf_get_str(g, "general.architecture", &arch, err)) return err->code;
    if (!(c->arch = di_arch_find(arch.ptr, arch.len)))
        return di_fail(err, DI_EUSAGE, "%s: unsupported architecture '%.*s' (detinfer runs %s)", g->path,
                       (int)(arch.len > 64 ? 64 : arch.len), arch.ptr, di_arch_names());
    if (read_ints(g, c, err) || read_positive(g, key(c, "attention.layer_norm_rms_epsilon"), NAN, &c->eps, err) ||
        read_heads(g, c, err) || read_rope(g, c, err) || read_vocab(g, c, err) || check_layers(g, c, err))
        return err->code;
    return DI_OK;
}
