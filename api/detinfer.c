/* The public API (include/detinfer.h) over the runtime, the model and the engine. Thin: it
 * validates the caller's structs, keeps the handles opaque and turns di_err into
 * detinfer_error; every computation is the library's own (the same path `generate` runs). */
#include "detinfer.h"
#include "model/engine.h"
#include "model/tokenizer.h"
#include "base/sha256.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Static_assert((int)DETINFER_EUSAGE == (int)DI_EUSAGE && (int)DETINFER_ENOMEM == (int)DI_ENOMEM, "error codes follow base/err.h");

struct detinfer_runtime { di_rt *rt; };
struct detinfer_tokenizer { di_tokenizer *t; };
struct detinfer_model {
    di_gguf *g;
    di_model *m;
    detinfer_tokenizer tok;
    di_model_opts o;
};
struct detinfer_request {
    int32_t *prompt;
    size_t n_prompt;
    detinfer_request_params p;
    di_request r;
    bool ran;
};

static int fail(detinfer_error *e, int code, const char *msg)
{
    if (e) {
        e->code = code;
        size_t n = strlen(msg) < sizeof e->message - 1 ? strlen(msg) : sizeof e->message - 1;   /* long logs are cut */
        memcpy(e->message, msg, n);
        e->message[n] = 0;
    }
    return code;
}

static int from(detinfer_error *e, const di_err *d) { return fail(e, d->code, d->msg); }

/* The caller's struct, or the defaults past the bytes it has (an older, shorter struct). */
#define TAKE(dst, src, defaults)                                                                 \
    do {                                                                                         \
        dst = defaults;                                                                          \
        if (src) {                                                                               \
            size_t n_ = (src)->size < sizeof dst ? (src)->size : sizeof dst;                     \
            if (n_ < sizeof(size_t)) return fail(err, DETINFER_EUSAGE, "params: size not set (use the *_default_params functions)"); \
            memcpy(&dst, src, n_);                                                               \
        }                                                                                        \
    } while (0)

const char *detinfer_version(void) { return DI_VERSION; }

const char *detinfer_strerror(int code)
{
    switch (code) {
    case DETINFER_OK: return "ok";
    case DETINFER_EUSAGE: return "usage";
    case DETINFER_EIO: return "io";
    case DETINFER_EFORMAT: return "format";
    case DETINFER_ESPEC: return "spec";
    case DETINFER_ECOMPILE: return "compile";
    case DETINFER_ENODEV: return "no device";
    case DETINFER_EDEVICE: return "device";
    case DETINFER_ENOMEM: return "out of memory";
    }
    return "unknown";
}

void detinfer_free(void *p) { free(p); }

/* ---- runtime ---------------------------------------------------------------------------- */

detinfer_runtime_params detinfer_runtime_default_params(void)
{
    return (detinfer_runtime_params){.size = sizeof(detinfer_runtime_params), .device = "auto", .profile = "exact"};
}

int detinfer_runtime_open(const detinfer_runtime_params *pp, detinfer_runtime **out, detinfer_error *err)
{
    detinfer_runtime_params p;
    TAKE(p, pp, detinfer_runtime_default_params());
    di_rt_opts o = {.threads = p.threads > 0 ? p.threads : (int)sysconf(_SC_NPROCESSORS_ONLN), .cache_dir = p.cache_dir};
    if (!di_profile_parse(p.profile ? p.profile : "exact", &o.profile)) {
        char msg[256];
        snprintf(msg, sizeof msg, "profile '%.64s': not one of %s", p.profile, di_profile_choices());
        return fail(err, DETINFER_EUSAGE, msg);
    }
    const char *dev = p.device ? p.device : "auto";
    if (strcmp(dev, "auto") && strcmp(dev, "cpu") && strcmp(dev, "cuda"))
        return fail(err, DETINFER_EUSAGE, "device: not auto, cpu or cuda");
    detinfer_runtime *h = calloc(1, sizeof *h);
    if (!h) return fail(err, DETINFER_ENOMEM, "out of memory");
    di_err e = {0};
    int rc = DI_ENODEV;
    if (strcmp(dev, "cpu")) {
        o.backend = DI_BACKEND_CUDA;
        rc = di_rt_open(&o, &h->rt, &e);
        if (rc && !strcmp(dev, "cuda")) { free(h); return from(err, &e); }
    }
    if (rc) {
        o.backend = DI_BACKEND_C;
        if ((rc = di_rt_open(&o, &h->rt, &e))) { free(h); return from(err, &e); }
    }
    *out = h;
    return DETINFER_OK;
}

void detinfer_runtime_close(detinfer_runtime *rt)
{
    if (!rt) return;
    di_rt_close(rt->rt);
    free(rt);
}

const char *detinfer_runtime_describe(const detinfer_runtime *rt) { return di_rt_describe(rt->rt); }

/* ---- model -------------------------------------------------------------------------------- */

detinfer_model_params detinfer_model_default_params(void)
{
    return (detinfer_model_params){.size = sizeof(detinfer_model_params), .ctx = 2048, .max_batch_tokens = 256,
                                   .max_seqs = 16};
}

int detinfer_model_load(detinfer_runtime *rt, const char *path, const detinfer_model_params *pp, detinfer_model **out,
                        detinfer_error *err)
{
    detinfer_model_params p;
    TAKE(p, pp, detinfer_model_default_params());
    if (!rt || !path) return fail(err, DETINFER_EUSAGE, "model load: runtime and path are required");
    if (p.ctx <= 0 || p.max_batch_tokens <= 0 || p.max_seqs <= 0 || p.kv_blocks < 0)
        return fail(err, DETINFER_EUSAGE, "model params: ctx, max_batch_tokens and max_seqs must be positive");
    detinfer_model *m = calloc(1, sizeof *m);
    if (!m) return fail(err, DETINFER_ENOMEM, "out of memory");
    int kvb = di_model_kv_block();
    m->o = (di_model_opts){.max_batch_tokens = p.max_batch_tokens, .ctx = p.ctx, .max_seqs = p.max_seqs,
                           .kv_blocks = p.kv_blocks ? p.kv_blocks : p.max_seqs * ((p.ctx + kvb - 1) / kvb)};
    di_err e = {0};
    if (di_gguf_open(path, &m->g, &e) || di_tokenizer_load(m->g, &m->tok.t, &e) ||
        di_model_load_gguf(m->g, rt->rt, &m->o, &m->m, &e)) {
        detinfer_model_free(m);
        return from(err, &e);
    }
    *out = m;
    return DETINFER_OK;
}

void detinfer_model_free(detinfer_model *m)
{
    if (!m) return;
    di_model_free(m->m);
    di_tokenizer_free(m->tok.t);
    di_gguf_close(m->g);
    free(m);
}

const detinfer_tokenizer *detinfer_model_tokenizer(const detinfer_model *m) { return &m->tok; }
int detinfer_model_vocab_size(const detinfer_model *m) { return di_model_config(m->m)->vocab; }

int detinfer_tokenize(const detinfer_tokenizer *t, const char *text, size_t len, bool add_special, bool parse_special,
                      int32_t **ids, size_t *n, detinfer_error *err)
{
    di_err e = {0};
    int rc = add_special ? di_tokenize_prompt(t->t, text, len, parse_special, ids, n, &e)
                         : di_tokenize(t->t, text, len, parse_special, ids, n, &e);
    if (rc) return from(err, &e);
    return DETINFER_OK;
}

int detinfer_token_piece(const detinfer_tokenizer *t, int32_t id, const char **bytes, size_t *len)
{
    return di_token_piece(t->t, id, bytes, len) ? DETINFER_EUSAGE : DETINFER_OK;
}

int32_t detinfer_token_eos(const detinfer_tokenizer *t) { return di_tokenizer_eos(t->t); }

/* ---- requests ------------------------------------------------------------------------------ */

detinfer_request_params detinfer_request_default_params(void)
{
    return (detinfer_request_params){.size = sizeof(detinfer_request_params), .max_tokens = 128, .top_p = 1.0f};
}

int detinfer_request_create(const int32_t *prompt, size_t n, const detinfer_request_params *pp, detinfer_request **out,
                            detinfer_error *err)
{
    detinfer_request_params p;
    TAKE(p, pp, detinfer_request_default_params());
    if (!prompt || n == 0 || n > (1u << 24)) return fail(err, DETINFER_EUSAGE, "request: the prompt is empty or too long");
    if (p.max_tokens < 0) return fail(err, DETINFER_EUSAGE, "request: max_tokens is negative");
    detinfer_request *r = calloc(1, sizeof *r);
    if (!r || !(r->prompt = malloc(n * sizeof *prompt))) {
        free(r);
        return fail(err, DETINFER_ENOMEM, "out of memory");
    }
    memcpy(r->prompt, prompt, n * sizeof *prompt);
    r->n_prompt = n;
    r->p = p;
    *out = r;
    return DETINFER_OK;
}

void detinfer_request_free(detinfer_request *r)
{
    if (!r) return;
    di_request_release(&r->r);
    free(r->prompt);
    free(r);
}

int detinfer_generate(detinfer_model *m, detinfer_request *const *reqs, size_t n, detinfer_error *err)
{
    if (!m || (!reqs && n)) return fail(err, DETINFER_EUSAGE, "generate: model and requests are required");
    di_request **rp = calloc(n ? n : 1, sizeof *rp);
    if (!rp) return fail(err, DETINFER_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        detinfer_request *q = reqs[i];
        di_request_release(&q->r);
        int room = m->o.ctx - (int)q->n_prompt;
        q->r = (di_request){.prompt = q->prompt, .n_prompt = (int)q->n_prompt,
                            .n_predict = q->p.max_tokens < room ? q->p.max_tokens : room,
                            .sampler = {q->p.temperature, q->p.top_k, q->p.top_p, q->p.seed}, .rng_id = q->p.key,
                            .chunk = q->p.prefill_chunk};
        if (room <= 0) { free(rp); return fail(err, DETINFER_EUSAGE, "generate: a prompt is as long as the context"); }
        rp[i] = &q->r;
    }
    const int32_t *stops;   /* the vocabulary's end-of-generation ids (eos, eot, eom, ...) */
    int n_stop = di_tokenizer_eog(m->tok.t, &stops);
    /* requests that ignore end-of-text run in an engine of their own kind: stop ids are the
     * engine's; a request's bits never depend on its batch mates, so the split is invisible */
    int rc = DETINFER_OK;
    for (int pass = 0; pass < 2 && !rc; pass++) {
        di_request **sel = calloc(n ? n : 1, sizeof *sel);
        int k = 0;
        for (size_t i = 0; sel && i < n; i++)
            if (reqs[i]->p.ignore_eos == (pass == 1)) sel[k++] = rp[i];
        if (!sel) { rc = fail(err, DETINFER_ENOMEM, "out of memory"); break; }
        di_engine_opts eo = {.max_batch_tokens = m->o.max_batch_tokens, .max_seqs = m->o.max_seqs, .prefix_cache = true,
                             .stop_ids = stops, .n_stop = pass ? 0 : n_stop};
        di_err e = {0};
        if (k && di_engine_run(m->m, sel, k, &eo, NULL, &e)) rc = from(err, &e);
        free(sel);
    }
    for (size_t i = 0; i < n; i++) reqs[i]->ran = rc == DETINFER_OK;
    free(rp);
    return rc;
}

size_t detinfer_request_n_tokens(const detinfer_request *r) { return r->ran ? (size_t)r->r.n_gen : 0; }
const int32_t *detinfer_request_tokens(const detinfer_request *r) { return r->ran ? r->r.tokens : NULL; }
const float *detinfer_request_logprobs(const detinfer_request *r) { return r->ran ? r->r.logprobs : NULL; }
bool detinfer_request_stopped(const detinfer_request *r) { return r->ran && r->r.finish == DI_DONE_EOS; }

void detinfer_request_digest(const detinfer_request *r, char hex[65])
{
    uint8_t zero[32] = {0};
    di_hex(r->ran ? r->r.digest : zero, 32, hex);
}
