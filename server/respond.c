/* Response bodies and stream events, in OpenAI's shapes, built with jansson. Text is released
 * by the rule of base/utf8.h (no split character, U+FFFD at the end for what stays invalid)
 * and, while stop strings are asked for, never a byte that could begin one. Log-probs carry
 * extra fields beside OpenAI's: the token id and the float32 bits in hex, so that clients can
 * compare exactly. A log-prob of -inf (probability 0) is written -9999.0 (JSON has no
 * infinity); its bits say ff800000. */
#include "server/internal.h"
#include "base/utf8.h"
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *di_resp_end_name(int end)
{
    switch (end) {
    case END_LENGTH: return "length";
    case END_STOP: return "stop";
    case END_ABORT: return "abort";
    case END_CANCEL: return "abort";
    case END_ERROR: return "error";
    default: return NULL;
    }
}

static json_t *text_json(const char *s, size_t n)
{
    di_str t = {0};
    di_utf8_sanitize(&t, s, n);
    json_t *v = json_stringn(t.p, t.len);
    di_str_free(&t);
    return v;
}

static json_t *lp_json(float x) { return json_real(isfinite(x) ? (double)x : -9999.0); }

static json_t *bits_json(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    char h[9];
    snprintf(h, sizeof h, "%08x", u);
    return json_string(h);
}

/* A token as OpenAI writes it: its text when that is valid UTF-8, else "bytes:\xNN...". */
static json_t *token_json(const di_tokenizer *tok, int32_t id)
{
    const char *b;
    size_t n;
    if (!tok || di_token_piece(tok, id, &b, &n)) return json_string("");
    if (di_utf8_valid(b, n)) return json_stringn(b, n);
    di_str s = {0};
    di_str_puts(&s, "bytes:");
    for (size_t i = 0; i < n; i++) di_str_printf(&s, "\\x%02x", (unsigned char)b[i]);
    json_t *v = json_string(s.p);
    di_str_free(&s);
    return v;
}

static json_t *bytes_json(const di_tokenizer *tok, int32_t id)
{
    const char *b;
    size_t n = 0;
    json_t *a = json_array();
    if (tok && !di_token_piece(tok, id, &b, &n))
        for (size_t i = 0; i < n; i++) json_array_append_new(a, json_integer((unsigned char)b[i]));
    return a;
}

/* Position i of a choice's log-prob sequence: with echo the prompt's tokens first (the first
 * has no log-prob), then the generated ones. */
typedef struct tokpos {
    int32_t id;
    bool has_lp;
    float lp;
    const float *top_lp;
    const int32_t *top_id;
} tokpos;

static int echo_len(const job *j, const choice *c) { return j->q.echo ? c->n_ids : 0; }

static tokpos pos_at(const job *j, const choice *c, int i)
{
    const di_request *r = &c->r;
    int n = r->top_n, e = echo_len(j, c);
    if (i < e) {
        tokpos p = {.id = c->ids[i]};
        if (i > 0 && r->prompt_lp) {
            p.has_lp = true;
            p.lp = r->prompt_lp[i - 1];
            if (n) { p.top_lp = r->prompt_top_lp + (size_t)(i - 1) * n; p.top_id = r->prompt_top_id + (size_t)(i - 1) * n; }
        }
        return p;
    }
    i -= e;
    tokpos p = {.id = r->tokens[i], .has_lp = true, .lp = r->logprobs[i]};
    if (n) { p.top_lp = r->top_lp + (size_t)i * n; p.top_id = r->top_id + (size_t)i * n; }
    return p;
}

/* Completions' logprobs object over positions [a, b). */
static json_t *completion_logprobs(struct di_server *s, const job *j, const choice *c, int a, int b)
{
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(), *ids = json_array(), *bits = json_array(),
           *top_ids = json_array(), *top_bits = json_array();
    int n = c->r.top_n;
    for (int i = a; i < b; i++) {
        tokpos p = pos_at(j, c, i);
        json_array_append_new(tokens, token_json(s->tok, p.id));
        json_array_append_new(ids, json_integer(p.id));
        json_array_append_new(lps, p.has_lp ? lp_json(p.lp) : json_null());
        json_array_append_new(bits, p.has_lp ? bits_json(p.lp) : json_null());
        if (!p.top_lp) {
            json_array_append_new(tops, p.has_lp ? json_object() : json_null());
            json_array_append_new(top_ids, p.has_lp ? json_array() : json_null());
            json_array_append_new(top_bits, p.has_lp ? json_array() : json_null());
            continue;
        }
        json_t *t = json_object(), *ti = json_array(), *tb = json_array();
        for (int k = 0; k < n && p.top_id[k] >= 0; k++) {
            json_t *key = token_json(s->tok, p.top_id[k]);
            json_object_set_new(t, json_string_value(key), lp_json(p.top_lp[k]));
            json_decref(key);
            json_array_append_new(ti, json_integer(p.top_id[k]));
            json_array_append_new(tb, bits_json(p.top_lp[k]));
        }
        json_array_append_new(tops, t);
        json_array_append_new(top_ids, ti);
        json_array_append_new(top_bits, tb);
    }
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "tokens", tokens, "token_logprobs", lps, "top_logprobs", tops,
                     "token_ids", ids, "token_logprob_bits", bits, "top_token_ids", top_ids, "top_logprob_bits", top_bits);
}

/* Chat's logprobs.content entries for generated tokens [a, b). */
static json_t *chat_logprobs(struct di_server *s, const job *j, const choice *c, int a, int b)
{
    json_t *content = json_array();
    for (int i = a; i < b; i++) {
        tokpos p = pos_at(j, c, i);
        json_t *tops = json_array();
        for (int k = 0; p.top_lp && k < c->r.top_n && p.top_id[k] >= 0; k++)
            json_array_append_new(tops, json_pack("{s:o,s:o,s:o,s:i,s:o}", "token", token_json(s->tok, p.top_id[k]),
                                                  "logprob", lp_json(p.top_lp[k]), "bytes", bytes_json(s->tok, p.top_id[k]),
                                                  "id", (int)p.top_id[k], "bits", bits_json(p.top_lp[k])));
        json_array_append_new(content, json_pack("{s:o,s:o,s:o,s:o,s:i,s:o}", "token", token_json(s->tok, p.id), "logprob",
                                                 lp_json(p.lp), "bytes", bytes_json(s->tok, p.id), "top_logprobs", tops,
                                                 "id", (int)p.id, "bits", bits_json(p.lp)));
    }
    return json_pack("{s:o}", "content", content);
}

/* The prompt as text, for echo: the client's text, or its token ids' bytes. */
static void prompt_text(struct di_server *s, const job *j, const choice *c, di_str *out)
{
    const di_api_prompt *p = &j->q.prompts[c->prompt_index];
    if (p->text) { di_str_putn(out, p->text, p->text_len); return; }
    for (int i = 0; i < c->n_ids; i++) {
        const char *b;
        size_t n;
        if (s->tok && !di_token_piece(s->tok, c->ids[i], &b, &n)) di_str_putn(out, b, n);
    }
    if (!out->p) di_str_putn(out, "", 0);
}

static size_t text_end(const choice *c) { return c->stopped ? c->stop_at : c->raw.len; }

static json_t *usage_json(const job *j)
{
    int gen = 0;
    for (int i = 0; i < j->n_ch; i++) gen += j->ch[i].r.n_gen;
    return json_pack("{s:i,s:i,s:i}", "prompt_tokens", j->prompt_tokens, "completion_tokens", gen, "total_tokens",
                     j->prompt_tokens + gen);
}

static json_t *envelope(struct di_server *s, const job *j, const char *object)
{
    return json_pack("{s:s,s:s,s:I,s:s,s:s}", "id", j->id, "object", object, "created", (json_int_t)j->created, "model",
                     s->model_id, "system_fingerprint", s->receipt.text);
}

static char *dump(json_t *o)
{
    char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return t;
}

char *di_resp_final(struct di_server *s, job *j)
{
    bool chat = j->q.kind == DI_API_CHAT;
    json_t *o = envelope(s, j, chat ? "chat.completion" : "text_completion"), *choices = json_array();
    for (int k = 0; k < j->n_ch; k++) {
        choice *c = &j->ch[k];
        di_str text = {0};
        if (!chat && j->q.echo) prompt_text(s, j, c, &text);
        di_str_putn(&text, c->raw.p ? c->raw.p : "", text_end(c));
        json_t *t = text_json(text.p, text.len), *lp = json_null();
        di_str_free(&text);
        if (j->q.logprobs >= 0) {
            json_decref(lp);
            lp = chat ? chat_logprobs(s, j, c, 0, c->r.n_gen) : completion_logprobs(s, j, c, 0, echo_len(j, c) + c->r.n_gen);
        }
        json_t *ch = chat ? json_pack("{s:i,s:{s:s,s:o},s:o,s:s}", "index", c->index, "message", "role", "assistant", "content", t,
                                      "logprobs", lp, "finish_reason", di_resp_end_name(c->end))
                          : json_pack("{s:i,s:o,s:o,s:s}", "index", c->index, "text", t, "logprobs", lp, "finish_reason",
                                      di_resp_end_name(c->end));
        json_array_append_new(choices, ch);
    }
    json_object_set_new(o, "choices", choices);
    json_object_set_new(o, "usage", usage_json(j));
    return dump(o);
}

/* ---- streaming -------------------------------------------------------------------------- */

/* The longest suffix of raw[0..e) that is a proper prefix of a stop string: held back. */
static size_t stop_holdback(const choice *c, const di_api_request *q, size_t e)
{
    size_t hold = 0;
    for (int k = 0; k < q->n_stop; k++) {
        size_t L = strlen(q->stop[k]);
        for (size_t m = L - 1 < e ? L - 1 : e; m > hold; m--)
            if (!memcmp(c->raw.p + e - m, q->stop[k], m)) { hold = m; break; }
    }
    return hold;
}

size_t di_resp_releasable(const choice *c, int i, size_t sent, bool done)
{
    size_t e = done ? text_end(c) : c->tok_end[i];
    if (!done) e -= stop_holdback(c, &c->job->q, e);
    if (c->stopped && e > c->stop_at) e = c->stop_at;
    if (e <= sent) return sent;
    return done ? e : sent + di_utf8_complete(c->raw.p + sent, e - sent);
}

static void event(di_str *out, json_t *o)
{
    char *t = dump(o);
    if (!t) return;
    di_str_puts(out, "data: ");
    di_str_puts(out, t);
    di_str_puts(out, "\n\n");
    free(t);
}

static json_t *chunk(struct di_server *s, const job *j, json_t *choice_obj)
{
    json_t *o = envelope(s, j, j->q.kind == DI_API_CHAT ? "chat.completion.chunk" : "text_completion");
    json_object_set_new(o, "choices", json_pack("[o]", choice_obj));
    if (j->q.include_usage) json_object_set_new(o, "usage", json_null());
    return o;
}

/* One choice's delta: text released now, log-probs of positions [a, b) (none if a == b). */
static json_t *delta(struct di_server *s, const job *j, const choice *c, json_t *text, int a, int b, int end, bool first)
{
    bool chat = j->q.kind == DI_API_CHAT;
    json_t *lp = json_null();
    if (j->q.logprobs >= 0 && b > a) {
        json_decref(lp);
        lp = chat ? chat_logprobs(s, j, c, a - echo_len(j, c), b - echo_len(j, c)) : completion_logprobs(s, j, c, a, b);
    }
    json_t *fin = end ? json_string(di_resp_end_name(end)) : json_null();
    if (!chat) return json_pack("{s:i,s:o,s:o,s:o}", "index", c->index, "text", text, "logprobs", lp, "finish_reason", fin);
    json_t *d = json_object();
    if (first) json_object_set_new(d, "role", json_string("assistant"));
    if (!end || json_string_length(text)) json_object_set_new(d, "content", text); else json_decref(text);
    return json_pack("{s:i,s:o,s:o,s:o}", "index", c->index, "delta", d, "logprobs", lp, "finish_reason", fin);
}

bool di_resp_stream(struct di_server *s, job *j, di_str *out)
{
    bool chat = j->q.kind == DI_API_CHAT, all_final = true;
    for (int k = 0; k < j->n_ch; k++) {
        choice *c = &j->ch[k];
        if (!c->echo_sent && (c->n_pub > 0 || c->done)) {
            /* the first event of a choice: chat's role, or the echoed prompt and its log-probs */
            c->echo_sent = true;
            if (chat) event(out, chunk(s, j, delta(s, j, c, json_string(""), 0, 0, END_NONE, true)));
            else if (j->q.echo) {
                di_str t = {0};
                prompt_text(s, j, c, &t);
                event(out, chunk(s, j, delta(s, j, c, text_json(t.p, t.len), 0, echo_len(j, c), END_NONE, false)));
                di_str_free(&t);
            }
        }
        for (; c->n_sent < c->n_pub; c->n_sent++) {
            size_t lim = di_resp_releasable(c, c->n_sent, c->sent, false);
            json_t *t = text_json(c->raw.p + c->sent, lim - c->sent);
            c->sent = lim;
            int a = echo_len(j, c) + c->n_sent;
            event(out, chunk(s, j, delta(s, j, c, t, a, a + 1, END_NONE, false)));
        }
        if (c->done && !c->final_sent && c->echo_sent) {
            size_t lim = di_resp_releasable(c, 0, c->sent, true);
            json_t *t = text_json(c->raw.p ? c->raw.p + c->sent : "", lim - c->sent);
            c->sent = lim;
            event(out, chunk(s, j, delta(s, j, c, t, 0, 0, c->end, false)));
            c->final_sent = true;
        }
        all_final &= c->final_sent;
    }
    if (!all_final || !j->released) return false;
    if (j->q.include_usage) {
        json_t *o = envelope(s, j, chat ? "chat.completion.chunk" : "text_completion");
        json_object_set_new(o, "choices", json_array());
        json_object_set_new(o, "usage", usage_json(j));
        event(out, o);
    }
    di_str_puts(out, "data: [DONE]\n\n");
    return true;
}
