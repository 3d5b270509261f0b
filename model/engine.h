/* The batching engine: requests share forward steps. Each step carries the decode token of
 * every running request first, then prefill chunks, up to a token budget; requests join
 * when they have arrived, a sequence slot is free and the KV blocks for their first chunk
 * can be had, and leave when done (continuous batching). The KV cache is paged in blocks
 * of KVB positions. Full blocks are kept in a prefix cache keyed by a hash chain of their
 * token ids and shared read-only; when a step needs a block and none is left, the most
 * recently admitted request is preempted and later recomputed. No choice the engine makes
 * reaches a reduction order: kernels take their orders from kernels.def alone, attention
 * reduces in KV-block-aligned splits, so reused or recomputed KV is the same bits. */
#ifndef DI_ENGINE_H
#define DI_ENGINE_H
#include <stdbool.h>
#include <stdint.h>
#include "model/model.h"
#include "model/sampler.h"

enum { DI_RUNNING = 0, DI_DONE_LENGTH, DI_DONE_EOS };

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
    /* out */
    int32_t *tokens;          /* n_predict capacity */
    float *logprobs;          /* log-prob of each generated token */
    int n_gen;
    float *prompt_lp;         /* n_prompt - 1: log-prob of prompt[i+1] after prompt[0..i] */
    uint8_t digest[32];       /* SHA-256 over (id int32 LE, log-prob bits u32 LE) per generated token */
    int finish;
    int preemptions;          /* times evicted from the batch and recomputed */
    int prefix_hit_tokens;    /* positions taken from the prefix cache instead of computed */
    double t_admit, t_first, t_end;   /* seconds, engine clock; t_admit: first admission */
    /* engine state */
    int slot, n_fed, take;    /* n_fed: positions whose KV is in the cache; take: planned this step */
    int n_hashed;             /* leading blocks whose chain hash is known; chain: that of the last one */
    long admit_seq;           /* admission order, 0 = never admitted */
    uint8_t chain[32];
    int32_t *blocks;
    int n_blocks;
} di_request;

typedef struct di_engine_opts {
    int max_batch_tokens;     /* per step */
    int max_seqs;             /* requests in flight (capped by the model's sequence slots) */
    bool prefix_cache;        /* share full KV blocks between requests with a common prefix */
    const int32_t *stop_ids;  /* generation ends after one of these */
    int n_stop;
    void (*on_token)(void *ctx, const di_request *r, int32_t token);
    void *ctx;
} di_engine_opts;

typedef struct di_engine_stats {
    long steps, prompt_tokens, gen_tokens;
    long preemptions, prefix_hit_tokens, evictions;   /* evictions: cached blocks reused for new KV */
    double prefill_s, decode_s;
} di_engine_stats;

/* KV blocks a request can need at most */
int di_request_blocks(const di_request *r);
/* Runs all requests to completion: every request ends with finish != DI_RUNNING, or the
 * call fails (DI_EUSAGE names a request that cannot fit the KV pool even alone). Outputs
 * are allocated here; free with di_request_release. */
int di_engine_run(di_model *m, di_request **reqs, int n, const di_engine_opts *o, di_engine_stats *st, di_err *err);
void di_request_release(di_request *r);

#endif
