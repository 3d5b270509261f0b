/* llama hyper-parameters from GGUF metadata, cross-checked against the tensors. See config.h. */
#include "model/config.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_VOCAB = 1 << 24 };

static int read_ints(const di_gguf *g, di_config *c, di_err *err)
{
    struct { const char *key; int *dst; long max; } ints[] = {
        {"llama.block_count", &c->n_layers, 1024},          {"llama.embedding_length", &c->dim, 65536},
        {"llama.feed_forward_length", &c->ffn, 1 << 20},    {"llama.attention.head_count", &c->n_heads, 1024},
        {"llama.attention.head_count_kv", &c->n_kv_heads, 1024}, {"llama.context_length", &c->ctx_train, 1 << 24},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        uint64_t v;
        if (di_gguf_get_u64(g, ints[i].key, &v, err)) return err->code;
        if (v == 0 || v > (uint64_t)ints[i].max)
            return di_fail(err, DI_EFORMAT, "%s: %s = %llu is out of range", g->path, ints[i].key, (unsigned long long)v);
        *ints[i].dst = (int)v;
    }
    return DI_OK;
}

/* A float the forward pass divides by or raises to a power: NaN, infinity, zero or a negative
 * value makes every logit NaN, and the sampler then picks end-of-text at once. */
static int read_positive(const di_gguf *g, const char *key, float fallback, float *out, di_err *err)
{
    if (!di_gguf_find(g, key) && !isnan(fallback)) {
        *out = fallback;
        return DI_OK;
    }
    if (di_gguf_get_f32(g, key, out, err)) return err->code;
    if (!(isfinite(*out) && *out > 0))
        return di_fail(err, DI_EFORMAT, "%s: %s = %g must be positive and finite", g->path, key, (double)*out);
    return DI_OK;
}

/* Optional keys that must agree with a value derived from others when they are present. */
static int check_optional(const di_gguf *g, const char *key, uint64_t want, const char *why, di_err *err)
{
    if (!di_gguf_find(g, key)) return DI_OK;
    uint64_t v;
    if (di_gguf_get_u64(g, key, &v, err)) return err->code;
    if (v != want)
        return di_fail(err, DI_EFORMAT, "%s: %s = %llu, but %s is %llu", g->path, key, (unsigned long long)v, why,
                       (unsigned long long)want);
    return DI_OK;
}

static int read_heads(const di_gguf *g, di_config *c, di_err *err)
{
    if (c->dim % c->n_heads || c->n_heads % c->n_kv_heads)
        return di_fail(err, DI_EFORMAT, "%s: %d heads do not divide dim %d or are not a multiple of %d KV heads",
                       g->path, c->n_heads, c->dim, c->n_kv_heads);
    c->head_dim = c->dim / c->n_heads;
    if (c->head_dim % 2) return di_fail(err, DI_EFORMAT, "%s: head dim %d is odd", g->path, c->head_dim);
    const char *hd = "the head dim (llama.embedding_length / llama.attention.head_count)";
    if (check_optional(g, "llama.attention.key_length", (uint64_t)c->head_dim, hd, err) ||
        check_optional(g, "llama.attention.value_length", (uint64_t)c->head_dim, hd, err))
        return err->code;
    /* the rope table rotates every pair of a head; llama.cpp refuses partial rotation for llama too */
    const char *rk = "llama.rope.dimension_count";
    if (!di_gguf_find(g, rk)) return DI_OK;
    uint64_t rd;
    if (di_gguf_get_u64(g, rk, &rd, err)) return err->code;
    if (rd > (uint64_t)c->head_dim)
        return di_fail(err, DI_EFORMAT, "%s: %s = %llu is larger than the head dim %d", g->path, rk,
                       (unsigned long long)rd, c->head_dim);
    if (rd != (uint64_t)c->head_dim)
        return di_fail(err, DI_EFORMAT, "%s: %s = %llu, not the head dim %d: rotating only part of a head is not "
                       "supported for llama", g->path, rk, (unsigned long long)rd, c->head_dim);
    return DI_OK;
}

/* The vocabulary is token_embd's rows; the token list and llama.vocab_size, where present,
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
    if (check_optional(g, "llama.vocab_size", (uint64_t)c->vocab, "the row count of token_embd.weight", err))
        return err->code;
    const di_gguf_kv *toks = di_gguf_find(g, "tokenizer.ggml.tokens");
    if (toks && toks->type == DI_GGUF_ARRAY && toks->arr_len != (uint64_t)c->vocab)
        return di_fail(err, DI_EFORMAT, "%s: tokenizer.ggml.tokens has %llu tokens, but token_embd.weight has %d rows",
                       g->path, (unsigned long long)toks->arr_len, c->vocab);
    return DI_OK;
}

/* Layer tensors are "blk.<n>.<name>"; one with n >= llama.block_count would be ignored. The
 * ones below the count are each looked up, so a missing one is already an error at load. */
static int check_layers(const di_gguf *g, const di_config *c, di_err *err)
{
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const char *name = g->tensors[i].name;
        if (strncmp(name, "blk.", 4) || name[4] < '0' || name[4] > '9') continue;
        char *end;
        unsigned long long layer = strtoull(name + 4, &end, 10);
        if (*end != '.') continue;
        if (layer >= (unsigned long long)c->n_layers)
            return di_fail(err, DI_EFORMAT, "%s: tensor %s belongs to layer %llu, but llama.block_count = %d", g->path,
                           name, layer, c->n_layers);
    }
    return DI_OK;
}

int di_config_read(const di_gguf *g, di_config *c, di_err *err)
{
    *c = (di_config){0};
    di_gguf_str arch;
    if (di_gguf_get_str(g, "general.architecture", &arch, err)) return err->code;
    if (arch.len != 5 || memcmp(arch.ptr, "llama", 5))
        return di_fail(err, DI_EUSAGE, "%s: unsupported architecture '%.*s' (detinfer runs llama models)", g->path,
                       (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
    if (read_ints(g, c, err) ||
        read_positive(g, "llama.attention.layer_norm_rms_epsilon", NAN, &c->eps, err) ||
        read_positive(g, "llama.rope.freq_base", 10000.0f, &c->rope_base, err) ||
        read_heads(g, c, err) || read_vocab(g, c, err) || check_layers(g, c, err))
        return err->code;
    return DI_OK;
}
