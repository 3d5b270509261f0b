/* Request bodies to di_api_request (server/api.h). Every field is checked for its type and
 * range, and an error names it as a client would write it: "prompt[1][3]", "messages[0].role".
 * Fields that would change the answer but are not implemented (penalties, logit_bias, ...)
 * are refused, never ignored; fields that change nothing (user, ...) are ignored. */
#include "server/api.h"
#include "base/utf8.h"
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int di_api_fail(di_api_error *e, int status, const char *param, const char *code, const char *fmt, ...)
{
    e->status = status;
    e->type = status == 401 ? "authentication_error" : status == 404 ? "not_found_error"
            : status >= 500 ? "server_error" : "invalid_request_error";
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return status;
}

char *di_api_error_json(const di_api_error *e)
{
    /* messages quote the client's bytes (a model name, a field): keep them valid UTF-8 */
    di_str msg = {0};
    di_utf8_sanitize(&msg, e->message, strlen(e->message));
    json_t *inner = json_pack("{s:s%,s:s,s:o,s:o}", "message", msg.p, msg.len, "type", e->type ? e->type : "invalid_request_error",
                              "param", e->param[0] ? json_string(e->param) : json_null(),
                              "code", e->code ? json_string(e->code) : json_null());
    di_str_free(&msg);
    json_t *o = inner ? json_pack("{s:o}", "error", inner) : NULL;
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s ? s : strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
}

void di_api_request_free(di_api_request *r)
{
    free(r->model);
    for (int i = 0; i < r->n_prompts; i++) { free(r->prompts[i].text); free(r->prompts[i].ids); }
    free(r->prompts);
    for (int i = 0; i < r->n_msgs; i++) { free(r->msgs[i].role); free(r->msgs[i].content); }
    free(r->msgs);
    free(r->ids);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    memset(r, 0, sizeof *r);
}

/* ---- fields ------------------------------------------------------------------------------ */

typedef struct ctx { json_t *root; di_api_error *err; int vocab; } ctx;

static int bad(ctx *c, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(ctx *c, const char *param, const char *fmt, ...)
{
    char m[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    return di_api_fail(c->err, 422, param, "invalid_value", "%s", m);
}

/* A field, or NULL when absent or null (OpenAI treats null as not given). */
static json_t *field(ctx *c, const char *name)
{
    json_t *v = json_object_get(c->root, name);
    return v && !json_is_null(v) ? v : NULL;
}

static int get_bool(ctx *c, const char *name, bool *out)
{
    json_t *v = field(c, name);
    if (!v) return 0;
    if (!json_is_boolean(v)) return bad(c, name, "'%s' must be a boolean", name);
    *out = json_is_true(v);
    return 0;
}

static int get_int(ctx *c, const char *name, long long lo, long long hi, int *out)
{
    json_t *v = field(c, name);
    if (!v) return 0;
    if (!json_is_integer(v)) return bad(c, name, "'%s' must be an integer", name);
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return bad(c, name, "'%s' is %lld, outside %lld..%lld", name, x, lo, hi);
    *out = (int)x;
    return 0;
}

/* lo_open: lo itself is out of range */
static int get_num(ctx *c, const char *name, double lo, double hi, bool lo_open, double *out)
{
    json_t *v = field(c, name);
    if (!v) return 0;
    if (!json_is_number(v)) return bad(c, name, "'%s' must be a number", name);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi) || (lo_open && x == lo))
        return bad(c, name, "'%s' is %g, outside %s%g, %g]", name, x, lo_open ? "(" : "[", lo, hi);
    *out = x;
    return 0;
}

/* A copy of a JSON string (may hold NUL bytes; jansson checked it is UTF-8). */
static char *dup_str(json_t *s, size_t *len)
{
    size_t n = json_string_length(s);
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, json_string_value(s), n);
    p[n] = 0;
    if (len) *len = n;
    return p;
}

static int oom(ctx *c) { return di_api_fail(c->err, 500, NULL, NULL, "out of memory decoding the request"); }

/* Fields that would change the answer and are not implemented: refused unless at their default. */
static int refuse_unsupported(ctx *c)
{
    static const char *const zero[] = {"presence_penalty", "frequency_penalty", "repetition_penalty"};
    for (size_t i = 0; i < sizeof zero / sizeof zero[0]; i++) {
        json_t *v = field(c, zero[i]);
        if (v && !(json_is_number(v) && json_number_value(v) == (strcmp(zero[i], "repetition_penalty") ? 0.0 : 1.0)))
            return di_api_fail(c->err, 422, zero[i], "unsupported_parameter", "'%s' is not supported (only its default)", zero[i]);
    }
    json_t *v = field(c, "logit_bias");
    if (v && !(json_is_object(v) && json_object_size(v) == 0))
        return di_api_fail(c->err, 422, "logit_bias", "unsupported_parameter", "'logit_bias' is not supported");
    v = field(c, "best_of");
    if (v && !(json_is_integer(v) && json_integer_value(v) == 1))
        return di_api_fail(c->err, 422, "best_of", "unsupported_parameter", "'best_of' is not supported (only 1)");
    static const char *const absent[] = {"suffix", "tools", "functions", "tool_choice", "function_call"};
    for (size_t i = 0; i < sizeof absent / sizeof absent[0]; i++)
        if (field(c, absent[i]))
            return di_api_fail(c->err, 422, absent[i], "unsupported_parameter", "'%s' is not supported", absent[i]);
    v = field(c, "response_format");
    if (v) {
        json_t *t = json_is_object(v) ? json_object_get(v, "type") : NULL;
        if (!t || !json_is_string(t) || strcmp(json_string_value(t), "text"))
            return di_api_fail(c->err, 422, "response_format", "unsupported_parameter", "only 'response_format' {\"type\": \"text\"} is supported");
    }
    return 0;
}

/* An array of token ids; param names it for errors. */
static int get_ids(ctx *c, json_t *a, const char *param, int32_t **ids, int *n)
{
    size_t k = json_array_size(a);
    if (k == 0) return bad(c, param, "'%s' is an empty list of token ids", param);
    if (k > 1 << 20) return bad(c, param, "'%s' holds %zu token ids, more than any context", param, k);
    *ids = malloc(sizeof **ids * k);
    if (!*ids) return oom(c);
    *n = (int)k;
    for (size_t i = 0; i < k; i++) {
        json_t *t = json_array_get(a, i);
        char p[96];
        snprintf(p, sizeof p, "%s[%zu]", param, i);
        if (!json_is_integer(t)) return bad(c, p, "'%s' must be a token id (an integer)", p);
        long long id = json_integer_value(t);
        if (id < 0 || (c->vocab > 0 && id >= c->vocab) || id > INT32_MAX)
            return bad(c, p, "'%s' is token id %lld, outside 0..%d", p, id, c->vocab > 0 ? c->vocab - 1 : INT32_MAX);
        (*ids)[i] = (int32_t)id;
    }
    return 0;
}

/* prompt: a string, a list of strings, a list of token ids, or a list of lists of token ids. */
static int get_prompts(ctx *c, di_api_request *r)
{
    json_t *p = field(c, "prompt");
    if (!p) return bad(c, "prompt", "'prompt' is required");
    json_t *first = json_is_array(p) ? json_array_get(p, 0) : NULL;
    bool many = json_is_array(p) && (json_is_string(first) || json_is_array(first));
    size_t k = many ? json_array_size(p) : 1;
    if (json_is_array(p) && json_array_size(p) == 0) return bad(c, "prompt", "'prompt' is an empty list");
    if (!json_is_string(p) && !json_is_array(p))
        return bad(c, "prompt", "'prompt' must be a string, a list of strings, or token ids");
    if (k > DI_API_MAX_PROMPTS) return bad(c, "prompt", "'prompt' holds %zu prompts, more than %d", k, DI_API_MAX_PROMPTS);
    r->prompts = calloc(k, sizeof *r->prompts);
    if (!r->prompts) return oom(c);
    for (size_t i = 0; i < k; i++) {
        json_t *x = many ? json_array_get(p, i) : p;
        char param[32];
        snprintf(param, sizeof param, many ? "prompt[%zu]" : "prompt", i);
        di_api_prompt *q = &r->prompts[r->n_prompts++];
        if (json_is_string(x)) {
            if (json_string_length(x) == 0) return bad(c, param, "'%s' is empty", param);
            if (!(q->text = dup_str(x, &q->text_len))) return oom(c);
        } else if (json_is_array(x) && !(many && json_is_string(first))) {
            int rc = get_ids(c, x, param, &q->ids, &q->n_ids);
            if (rc) return rc;
        } else {
            return bad(c, param, "'%s' must be %s", param, many && json_is_string(first) ? "a string" : "a list of token ids");
        }
    }
    return 0;
}

/* content: a string, or a list of {"type": "text", "text": ...} parts (joined). */
static int get_content(ctx *c, json_t *v, const char *param, char **out)
{
    if (json_is_string(v)) {
        if (strlen(json_string_value(v)) != json_string_length(v)) return bad(c, param, "'%s' holds a NUL character", param);
        return (*out = dup_str(v, NULL)) ? 0 : oom(c);
    }
    if (!json_is_array(v)) return bad(c, param, "'%s' must be a string or a list of text parts", param);
    size_t total = 0, k = json_array_size(v);
    for (size_t i = 0; i < k; i++) {
        json_t *part = json_array_get(v, i), *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        char p[128];
        snprintf(p, sizeof p, "%s[%zu]", param, i);
        if (!json_is_object(part) || !json_is_string(type) || strcmp(json_string_value(type), "text") || !json_is_string(text))
            return bad(c, p, "'%s' must be {\"type\": \"text\", \"text\": string} (only text is supported)", p);
        if (strlen(json_string_value(text)) != json_string_length(text)) return bad(c, p, "'%s' holds a NUL character", p);
        total += json_string_length(text);
    }
    char *s = malloc(total + 1);
    if (!s) return oom(c);
    size_t at = 0;
    for (size_t i = 0; i < k; i++) {
        json_t *text = json_object_get(json_array_get(v, i), "text");
        memcpy(s + at, json_string_value(text), json_string_length(text));
        at += json_string_length(text);
    }
    s[at] = 0;
    *out = s;
    return 0;
}

static int get_messages(ctx *c, di_api_request *r)
{
    json_t *m = field(c, "messages");
    if (!m) return bad(c, "messages", "'messages' is required");
    if (!json_is_array(m)) return bad(c, "messages", "'messages' must be a list");
    size_t k = json_array_size(m);
    if (k == 0) return bad(c, "messages", "'messages' is empty");
    if (k > DI_API_MAX_MSGS) return bad(c, "messages", "'messages' holds %zu messages, more than %d", k, DI_API_MAX_MSGS);
    r->msgs = calloc(k, sizeof *r->msgs);
    if (!r->msgs) return oom(c);
    for (size_t i = 0; i < k; i++) {
        json_t *x = json_array_get(m, i);
        char p[64];
        snprintf(p, sizeof p, "messages[%zu]", i);
        if (!json_is_object(x)) return bad(c, p, "'%s' must be an object", p);
        json_t *role = json_object_get(x, "role"), *content = json_object_get(x, "content");
        snprintf(p, sizeof p, "messages[%zu].role", i);
        if (!json_is_string(role)) return bad(c, p, "'%s' must be a string", p);
        const char *rs = json_string_value(role);
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") && strcmp(rs, "developer"))
            return bad(c, p, "'%s' must be system, user, assistant or developer", p);
        di_api_msg *g = &r->msgs[r->n_msgs++];
        /* "developer" is OpenAI's newer name for the system turn */
        if (!(g->role = strdup(strcmp(rs, "developer") ? rs : "system"))) return oom(c);
        snprintf(p, sizeof p, "messages[%zu].content", i);
        if (!content || json_is_null(content)) return bad(c, p, "'%s' is required", p);
        int rc = get_content(c, content, p, &g->content);
        if (rc) return rc;
    }
    return 0;
}

static int get_stop(ctx *c, di_api_request *r)
{
    json_t *s = field(c, "stop");
    if (!s) return 0;
    bool one = json_is_string(s);
    if (!one && !json_is_array(s)) return bad(c, "stop", "'stop' must be a string or a list of strings");
    size_t k = one ? 1 : json_array_size(s);
    if (k > DI_API_MAX_STOP) return bad(c, "stop", "'stop' holds %zu strings, more than %d", k, DI_API_MAX_STOP);
    for (size_t i = 0; i < k; i++) {
        json_t *x = one ? s : json_array_get(s, i);
        char p[32];
        snprintf(p, sizeof p, one ? "stop" : "stop[%zu]", i);
        if (!json_is_string(x)) return bad(c, p, "'%s' must be a string", p);
        size_t n = json_string_length(x);
        if (n == 0 || n > 256) return bad(c, p, "'%s' must be 1..256 bytes long", p);
        if (strlen(json_string_value(x)) != n) return bad(c, p, "'%s' holds a NUL character", p);
        if (!(r->stop[r->n_stop++] = dup_str(x, NULL))) return oom(c);
    }
    return 0;
}

static int get_seed(ctx *c, di_api_request *r)
{
    json_t *v = field(c, "seed");
    if (!v) return 0;
    if (!json_is_integer(v)) return bad(c, "seed", "'seed' must be an integer");
    r->seed = (uint64_t)json_integer_value(v);   /* negative seeds wrap: any integer is a seed */
    return 0;
}

/* An integer member of object o (the field `of`), named "of.name" in errors. */
static int get_member_int(ctx *c, json_t *o, const char *of, const char *name, long long lo, long long hi, int *out)
{
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v)) return 0;
    char p[64];
    snprintf(p, sizeof p, "%s.%s", of, name);
    if (!json_is_integer(v)) return bad(c, p, "'%s' must be an integer", p);
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return bad(c, p, "'%s' is %lld, outside %lld..%lld", p, x, lo, hi);
    *out = (int)x;
    return 0;
}

/* "speculative": {"draft_max": K (0..16; 0: off), "ngram": N (1..16, default 3), "ngram_min": M
 * (1..N, default min(2, N)), "method": "ngram" | "draft_model"}, or null (the server's default).
 * It changes how many steps a request takes, never a token or a bit. */
static int get_speculative(ctx *c, di_api_request *r)
{
    json_t *v = field(c, "speculative");
    if (!v) return 0;
    if (!json_is_object(v)) return bad(c, "speculative", "'speculative' must be an object");
    const char *key;
    json_t *x;
    json_object_foreach(v, key, x) {
        if (strcmp(key, "draft_max") && strcmp(key, "ngram") && strcmp(key, "ngram_min") && strcmp(key, "method"))
            return di_api_fail(c->err, 422, "speculative", "unsupported_parameter",
                               "'speculative' takes draft_max, ngram, ngram_min and method, not '%.64s'", key);
    }
    r->spec_given = true;
    r->draft_max = 4, r->ngram = 3, r->ngram_min = -1, r->draft_model = false;
    int rc;
    if ((rc = get_member_int(c, v, "speculative", "draft_max", 0, 16, &r->draft_max))) return rc;
    if ((rc = get_member_int(c, v, "speculative", "ngram", 1, 16, &r->ngram))) return rc;
    if ((rc = get_member_int(c, v, "speculative", "ngram_min", 1, 16, &r->ngram_min))) return rc;
    if (r->ngram_min > r->ngram)
        return bad(c, "speculative.ngram_min", "'speculative.ngram_min' (%d) must not exceed 'speculative.ngram' (%d)",
                   r->ngram_min, r->ngram);
    if (r->ngram_min < 0) r->ngram_min = r->ngram < 2 ? r->ngram : 2;
    json_t *m = json_object_get(v, "method");
    if (m && !json_is_null(m)) {
        const char *ms = json_is_string(m) ? json_string_value(m) : NULL;
        if (!ms || (strcmp(ms, "ngram") && strcmp(ms, "draft_model")))
            return bad(c, "speculative.method", "'speculative.method' must be \"ngram\" or \"draft_model\"");
        r->draft_model = !strcmp(ms, "draft_model");
    }
    return 0;
}

/* Sampling, length, logprobs, streaming: the fields completions and chat share. */
static int get_common(ctx *c, di_api_request *r)
{
    int rc;
    json_t *m = json_object_get(c->root, "model");
    if (m && !json_is_null(m)) {
        if (!json_is_string(m)) return bad(c, "model", "'model' must be a string");
        if (!(r->model = dup_str(m, NULL))) return oom(c);
    }
    if ((rc = refuse_unsupported(c))) return rc;
    if ((rc = get_num(c, "temperature", 0, 2, false, &r->temperature))) return rc;
    if ((rc = get_num(c, "top_p", 0, 1, true, &r->top_p))) return rc;
    if ((rc = get_num(c, "min_p", 0, 1, false, &r->min_p))) return rc;
    if ((rc = get_int(c, "top_k", -1, 1 << 20, &r->top_k))) return rc;
    if (r->top_k < 0) r->top_k = 0;
    if ((rc = get_seed(c, r))) return rc;
    if ((rc = get_int(c, "n", 1, DI_API_MAX_N, &r->n))) return rc;
    if ((rc = get_stop(c, r))) return rc;
    if ((rc = get_bool(c, "stream", &r->stream))) return rc;
    if ((rc = get_bool(c, "ignore_eos", &r->ignore_eos))) return rc;
    if ((rc = get_speculative(c, r))) return rc;
    json_t *so = field(c, "stream_options");
    if (so) {
        if (!json_is_object(so)) return bad(c, "stream_options", "'stream_options' must be an object");
        json_t *u = json_object_get(so, "include_usage");
        if (u && !json_is_null(u) && !json_is_boolean(u))
            return bad(c, "stream_options.include_usage", "'stream_options.include_usage' must be a boolean");
        r->include_usage = u && json_is_true(u);
    }
    return 0;
}

static int decode_completion(ctx *c, di_api_request *r)
{
    int rc;
    r->max_tokens = 16;       /* OpenAI's default for completions */
    if ((rc = get_prompts(c, r)) || (rc = get_common(c, r))) return rc;
    if ((rc = get_int(c, "max_tokens", 0, 1 << 24, &r->max_tokens))) return rc;
    if ((rc = get_int(c, "logprobs", 0, DI_API_MAX_TOP, &r->logprobs))) return rc;
    if ((rc = get_bool(c, "echo", &r->echo))) return rc;
    if (r->echo && r->stream && r->n_prompts > 1)
        return bad(c, "echo", "'echo' with 'stream' takes one prompt");
    return 0;
}

static int decode_chat(ctx *c, di_api_request *r)
{
    int rc;
    r->max_tokens = -1;       /* chat: up to the context unless given */
    if ((rc = get_messages(c, r)) || (rc = get_common(c, r))) return rc;
    if ((rc = get_int(c, "max_tokens", 1, 1 << 24, &r->max_tokens))) return rc;
    if ((rc = get_int(c, "max_completion_tokens", 1, 1 << 24, &r->max_tokens))) return rc;
    bool lp = false;
    int top = -1;
    if ((rc = get_bool(c, "logprobs", &lp))) return rc;
    if ((rc = get_int(c, "top_logprobs", 0, DI_API_MAX_TOP, &top))) return rc;
    if (top >= 0 && !lp) return bad(c, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
    r->logprobs = lp ? (top > 0 ? top : 0) : -1;
    return 0;
}

static int decode_tokenize(ctx *c, di_api_request *r)
{
    json_t *t = field(c, "content");
    if (!t) t = field(c, "prompt");
    if (!t || !json_is_string(t)) return bad(c, "content", "'content' must be a string");
    r->prompts = calloc(1, sizeof *r->prompts);
    if (!r->prompts) return oom(c);
    r->n_prompts = 1;
    if (!(r->prompts[0].text = dup_str(t, &r->prompts[0].text_len))) return oom(c);
    return get_bool(c, "parse_special", &r->parse_special);
}

static int decode_detokenize(ctx *c, di_api_request *r)
{
    json_t *t = field(c, "tokens");
    if (!t || !json_is_array(t)) return bad(c, "tokens", "'tokens' must be a list of token ids");
    if (json_array_size(t) == 0) return 0;
    return get_ids(c, t, "tokens", &r->ids, &r->n_ids);
}

int di_api_decode(int kind, const char *body, size_t len, int vocab, di_api_request *out, di_api_error *err)
{
    memset(out, 0, sizeof *out);
    *out = (di_api_request){.kind = kind, .temperature = 1.0, .top_p = 1.0, .logprobs = -1, .n = 1, .seed = 42};   /* generate's default seed */
    if (!di_utf8_valid(body, len))
        return di_api_fail(err, 400, NULL, "invalid_utf8", "the request body is not valid UTF-8");
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, &je);
    if (!root) return di_api_fail(err, 400, NULL, "invalid_json", "the request body is not valid JSON (line %d, column %d: %s)",
                                  je.line, je.column, je.text);
    ctx c = {root, err, vocab};
    int rc = !json_is_object(root) ? di_api_fail(err, 400, NULL, "invalid_json", "the request body must be a JSON object")
           : kind == DI_API_COMPLETION ? decode_completion(&c, out)
           : kind == DI_API_CHAT ? decode_chat(&c, out)
           : kind == DI_API_TOKENIZE ? decode_tokenize(&c, out)
           : decode_detokenize(&c, out);
    json_decref(root);
    if (rc) di_api_request_free(out);
    return rc;
}
