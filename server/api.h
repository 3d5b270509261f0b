/* The OpenAI-compatible API's requests: a body (bytes from the network) decoded into a plain
 * struct, or an OpenAI-style error naming the field at fault. A pure function of the bytes
 * (and the vocabulary size, to check token ids): no model, no engine, no I/O, so it can be
 * fuzzed alone (tests/fuzz/server_fuzz.c). JSON is parsed by jansson; nothing here parses by
 * hand. Limits of the model (context length) are checked by the server after tokenizing.
 *
 * Statuses: 400 a body that is not UTF-8 or not a JSON object, and (server) a prompt or
 * max_tokens beyond the context; 422 a field of the wrong type, out of range, missing or not
 * supported; 401 (server) a wrong API key; 404 (server) an unknown model or path; 413 (server)
 * a body over the limit. */
#ifndef DI_SERVER_API_H
#define DI_SERVER_API_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { DI_API_COMPLETION, DI_API_CHAT, DI_API_TOKENIZE, DI_API_DETOKENIZE };
enum { DI_API_MAX_PROMPTS = 16, DI_API_MAX_N = 8, DI_API_MAX_STOP = 4, DI_API_MAX_TOP = 20, DI_API_MAX_MSGS = 256 };

typedef struct di_api_prompt {
    char *text;               /* a text prompt (NUL-terminated, valid UTF-8), or NULL */
    size_t text_len;
    int32_t *ids;             /* a token-id prompt, or NULL */
    int n_ids;
} di_api_prompt;

typedef struct di_api_msg { char *role, *content; } di_api_msg;

typedef struct di_api_request {
    int kind;
    char *model;              /* NULL: not given (the served model) */
    di_api_prompt *prompts;   /* completions: one per prompt; tokenize: the content (text) */
    int n_prompts;
    di_api_msg *msgs;         /* chat */
    int n_msgs;
    int32_t *ids;             /* detokenize */
    int n_ids;
    int max_tokens;           /* -1: up to the context */
    double temperature, top_p, min_p;
    int top_k;                /* 0: no limit */
    uint64_t seed;
    char *stop[DI_API_MAX_STOP];
    int n_stop;
    int logprobs;             /* top-N log-probs per token (completions: logprobs; chat: top_logprobs); -1: none */
    bool echo, stream, include_usage, ignore_eos, parse_special;
    int n;                    /* choices per prompt */
    /* "speculative": {"draft_max", "ngram", "ngram_min", "method"}; when absent, the server's default */
    bool spec_given;
    int draft_max, ngram, ngram_min;   /* ngram_min -1: not given (min(2, ngram)) */
    bool draft_model;         /* "method": "draft_model" (else "ngram", prompt lookup) */
} di_api_request;

typedef struct di_api_error {
    int status;
    char message[512];
    const char *type;         /* "invalid_request_error", ... */
    char param[96];           /* the field, e.g. "messages[2].role"; "" for none */
    const char *code;         /* NULL for none */
} di_api_error;

/* Decodes a body for `kind` (DI_API_*). vocab > 0: token ids must be in [0, vocab). On error,
 * *err says why and *out needs no freeing. */
int di_api_decode(int kind, const char *body, size_t len, int vocab, di_api_request *out, di_api_error *err);
void di_api_request_free(di_api_request *r);

/* Fills an error; returns its status. */
int di_api_fail(di_api_error *e, int status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* The error as the body OpenAI sends: {"error": {"message", "type", "param", "code"}}; malloc'd. */
char *di_api_error_json(const di_api_error *e);

#endif
