/* The batching engine: requests share forward steps. Each step carries the decode token of
 * every running request first, then prefill chunks, up to a token budget; requests join
 * when they have arrived, a sequence slot is free and the KV blocks for their first chunk
 * can be had, and leave when done (continuous batching). The KV cache is paged in blocks
 * of KVB positions. Full blocks are kept in a prefix cache keyed by a hash chain of their
 * token ids and shared read-only; when a step needs a block and none is left, the most
 * recently admitted request is preempted and later recomputed. No choice the engine makes
 * reaches a reduction order: kernels take their orders from kernels.def alone, attention
 * reduces in KV-block-aligned splits, so reused or recomputed KV is the same bits.
 *
 * Two ways in. Live (a server): di_engine_open, then di_engine_submit whenever a request
 * comes, di_engine_step in a loop, di_engine_cancel at will; all from the one thread that owns
 * the model. Submission and cancellation take effect at step boundaries, which change which
 * rows are in a step and never an order (DESIGN.md, "Admission is free"). All at once
 * (generate, the tests, bench_engine): di_engine_run, a loop over the live calls.
 *
 * Speculation (r->draft): a decoding request's step carries its next-token row and up to K
 * drafted tokens (model/draft.h: prompt lookup, or the engine's draft model) as the rows of
 * the positions after it, like a prefill chunk. Row j's token is kept only while every
 * earlier one equalled its draft: then its input is the true sequence, and since no kernel
 * depends on the row count and prefill gives decode's bits, its log-probs are plain
 * decoding's, bit for bit; the draw is keyed by the position, as in plain decoding, never by
 * the draft. Rejected positions' KV lies beyond n_fed: it is overwritten before any row reads
 * it, blocks holding only such positions are given back after the step, and the prefix cache
 * registers only blocks wholly below n_fed. Drafts take what is left of the step budget after
 * decode rows, prefill chunks and admissions, and free KV blocks only (never an eviction or a
 * preemption), so they cannot delay anyone's work. */
#ifndef DI_ENGINE_H
#define DI_ENGINE_H
#include <stdbool.h>
#include <stdint.h>
#include "model/draft.h"
#include "model/model.h"
#include "model/sampler.h"

/* DI_DONE_STOP: the caller's halt callback ended it (a stop string) */
enum { DI_RUNNING = 0, DI_DONE_LENGTH, DI_DONE_EOS, DI_DONE_CANCEL, DI_DONE_STOP };
enum { DI_TOP_MAX = 20 };    /* top_n at most */

typedef struct di_request {
    /* in */
    const int32_t *prompt;
    int n_prompt;
    int n_predict;
    di_sampler sampler;
    uint64_t rng_id;          /* the request's key for the sampler's RNG */
    int chunk;                /* prefill chunk size; <= 0: whole prompt in one step */
    bool score_prompt;        /* record prompt_lp (such a request computes its whole prompt: no prefix reuse) */
    long arrival_step;        /* admitted no earlier than this engine step */
    bool ignore_stop;         /* generate n_predict tokens even past the engine's stop ids */
    int top_n;                /* 0..DI_TOP_MAX: keep the top_n (log-prob, id) of every output row */
    di_draft_opts draft;      /* speculative decoding (draft.draft_max > 0): the same bits, fewer steps */
    void *user;               /* the caller's; the engine never reads it */
    /* out */
    int32_t *tokens;          /* n_predict capacity */
    float *logprobs;          /* log-prob of each generated token */
    int n_gen;
    float *prompt_lp;         /* n_prompt - 1: log-prob of prompt[i+1] after prompt[0..i] */
    float *top_lp;            /* n_predict x top_n: the best log-probs at each generated position, */
    int32_t *top_id;          /*   by (log-prob desc, id asc), the sampler's order; copies, no new math */
    float *prompt_top_lp;     /* (n_prompt - 1) x top_n with score_prompt: the same for prompt[i+1] */
    int32_t *prompt_top_id;
    uint8_t digest[32];       /* SHA-256 over (id int32 LE, log-prob bits u32 LE) per generated token */
    int finish;
    int preemptions;          /* times evicted from the batch and recomputed */
    int prefix_hit_tokens;    /* positions taken from the prefix cache instead of computed */
    int drafted, draft_accepted;   /* speculation: tokens drafted, and those of them kept */
    int decode_steps, decode_tokens;   /* steps with a decode row, and the tokens they gave (1 each without speculation) */
    double t_admit, t_first, t_end;   /* seconds, engine clock; t_admit: first admission */
    /* engine state */
    int slot, n_fed, take;    /* n_fed: positions whose KV is in the cache; take: planned this step */
    int n_hashed;             /* leading blocks whose chain hash is known; chain: that of the last one */
    long admit_seq;           /* admission order, 0 = never admitted */
    uint8_t chain[32];
    int32_t *blocks;
    int n_blocks;
    bool decoding;            /* this step's plan holds r's decode row */
    int spec_k, spec_hit;     /* drafts in this step's plan; verify rows kept */
    int d_fed;                /* positions whose KV the draft model holds for r (in r's slot) */
    int32_t spec_tok[DI_DRAFT_MAX];
} di_request;

typedef struct di_engine_opts {
    int max_batch_tokens;     /* per step */
    int max_seqs;             /* requests in flight (capped by the model's sequence slots) */
    bool prefix_cache;        /* share full KV blocks between requests with a common prefix */
    const int32_t *stop_ids;  /* generation ends after one of these */
    int n_stop;
    /* A generated token, within a step: r's tokens, logprobs and top_* hold it already. */
    void (*on_token)(void *ctx, const di_request *r, int32_t token);
    /* After on_token: true ends r at this token (finish DI_DONE_STOP), as a stop id would; no
     * token after it is generated, drafted or not (serve's stop strings). NULL: never. */
    bool (*halt)(void *ctx, const di_request *r);
    /* r has left the engine (finished or cancelled; digest set): the engine holds no more of it.
     * Called at step boundaries, or from di_engine_cancel. */
    void (*on_done)(void *ctx, di_request *r);
    void *ctx;
    /* Drafts for requests with draft.model: a model with the target's vocabulary, on its own KV,
     * loaded with at least the engine's max_batch_tokens and max_seqs and kv_blocks = max_seqs x
     * blocks per sequence (its slot s owns blocks [s W, (s + 1) W)). NULL: none. Its greedy
     * tokens are only proposals: the target verifies every one. */
    di_model *draft_model;
} di_engine_opts;

typedef struct di_engine_stats {
    long steps, prompt_tokens, gen_tokens;
    long preemptions, prefix_hit_tokens, evictions;   /* evictions: cached blocks reused for new KV */
    long drafted, draft_accepted;    /* speculation: tokens drafted, and kept */
    long decode_slots, decode_tokens;   /* (request, step) pairs with a decode row, and the tokens they gave */
    long reject_at[DI_DRAFT_MAX];    /* verifications whose draft j was the first one rejected (a mismatch) */
    long full_accepts;               /* verifications that kept all draft_max drafts */
    long draft_steps;                /* forward steps of the draft model */
    double prefill_s, decode_s, draft_s;   /* draft_s: in the draft model (part of neither other) */
} di_engine_stats;

/* What a live engine holds, for metrics. */
typedef struct di_engine_info {
    int running, waiting;     /* requests with a sequence slot; submitted and not admitted (or preempted) */
    int blocks_total, blocks_held, blocks_cached;   /* held: by a request; cached: in the prefix cache */
    long step;                /* the engine clock */
    long steps;               /* forward steps run */
    double last_step_s;       /* wall time of the last forward step */
    long drafted, draft_accepted, decode_slots, decode_tokens;   /* di_engine_stats' so far */
} di_engine_info;

typedef struct di_engine di_engine;

/* KV blocks a request can need at most */
int di_request_blocks(const di_request *r);
int di_engine_open(di_model *m, const di_engine_opts *o, di_engine **out, di_err *err);
/* Queues r (its prompt must outlive it in the engine); admitted at a step boundary no earlier
 * than r->arrival_step. Outputs are allocated here (free with di_request_release after
 * on_done). DI_EUSAGE if r is malformed or cannot fit the KV pool even alone; the message
 * names it as "request N", N counting submissions from 0. */
int di_engine_submit(di_engine *e, di_request *r, di_err *err);
/* One forward step (admitting first what fits); *busy: whether requests remain. */
int di_engine_step(di_engine *e, bool *busy, di_err *err);
/* Takes r out now: its KV blocks go back (cached ones stay cached), finish = DI_DONE_CANCEL,
 * on_done is called. False if r is not in the engine (already done). Between steps only. */
bool di_engine_cancel(di_engine *e, di_request *r);
void di_engine_get_info(const di_engine *e, di_engine_info *out);
/* Stats so far; requests still inside are let go as they are (finish stays DI_RUNNING). */
void di_engine_close(di_engine *e, di_engine_stats *st);

/* Runs all requests to completion: every request ends with finish != DI_RUNNING, or the
 * call fails (DI_EUSAGE names a request that cannot fit the KV pool even alone). Outputs
 * are allocated here; free with di_request_release. */
int di_engine_run(di_model *m, di_request **reqs, int n, const di_engine_opts *o, di_engine_stats *st, di_err *err);
void di_request_release(di_request *r);

#endif
