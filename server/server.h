/* serve's server: an OpenAI-compatible HTTP API (libmicrohttpd, one thread per connection)
 * in front of the live engine. One thread, the engine thread, opens the runtime, loads the
 * model and runs the engine: it alone touches them. HTTP threads decode and tokenize a
 * request, put it in the inbox (mutex + condition variable) and wait for what the engine
 * thread publishes (tokens, log-probs, the end); to cancel they raise a flag the engine thread
 * acts on at the next step boundary. Routes, statuses and fields: README.md, "serve". */
#ifndef DI_SERVER_H
#define DI_SERVER_H
#include <stdbool.h>
#include <stddef.h>
#include "base/err.h"
#include "model/chat.h"
#include "model/draft.h"
#include "model/receipt.h"
#include "model/tokenizer.h"

typedef struct di_server_opts {
    const char *model_path, *model_name;   /* model_name: the id clients send as "model" */
    const char *host;                      /* default 127.0.0.1 */
    int port;                              /* 0: any free port (di_server_port tells which) */
    const char *api_key;                   /* NULL: none needed */
    di_backend_kind backend;
    bool backend_auto;                     /* try CUDA, fall back to the CPU */
    di_profile profile;
    int threads;                           /* CPU workers; 0: all cores */
    int max_seqs, max_queue, ctx, max_batch_tokens, chunk, kv_blocks;
    bool prefix_cache;
    di_draft_opts draft;                   /* speculation for requests without "speculative" (draft_max 0: off) */
    const char *draft_model;               /* a draft model for "method": "draft_model" (NULL: none) */
    size_t max_body;                       /* bytes */
    double drain_s;                        /* on shutdown: how long in-flight requests may go on */
} di_server_opts;

typedef struct di_server di_server;

/* Loads the model (on the engine thread) and starts listening. tok and tmpl stay the
 * caller's and must outlive the server. */
int di_server_start(const di_server_opts *o, const di_tokenizer *tok, const di_chat_template *tmpl, di_server **out,
                    di_err *err);
int di_server_port(const di_server *s);
const di_receipt *di_server_receipt(const di_server *s);
const char *di_server_device(const di_server *s);   /* the runtime's description */
/* Stops accepting, lets in-flight requests run for drain_s, cancels the rest with a final
 * event (finish_reason "abort"), and returns when every request has been answered. */
void di_server_shutdown(di_server *s);
/* During a shutdown (from another thread): the drain time is over now. */
void di_server_hurry(di_server *s);
void di_server_free(di_server *s);

#endif
