#include "engine.h"
#include "../runtime/sha256.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

int di_request_blocks(const di_request *r)
{
    int kvb = di_model_kv_block();
    return (r->n_prompt + r->n_predict + kvb - 1) / kvb;
}

void di_request_release(di_request *r)
{
    free(r->tokens); free(r->logprobs); free(r->prompt_lp); free(r->blocks);
    r->tokens = NULL; r->logprobs = NULL; r->prompt_lp = NULL; r->blocks = NULL;
}

/* ---- KV block pool ------------------------------------------------------------------------ */

typedef struct pool { int32_t *free_ids; int n_free; } pool;

static int grow_blocks(di_model *m, pool *p, di_request *r, int positions, di_err *err)
{
    int kvb = di_model_kv_block(), need = (positions + kvb - 1) / kvb;
    if (need <= r->n_blocks) return DI_OK;
    while (r->n_blocks < need) {
        if (p->n_free == 0) return di_fail(err, DI_ENOMEM, "KV cache pool exhausted");
        r->blocks[r->n_blocks++] = p->free_ids[--p->n_free];
    }
    return di_model_set_blocks(m, r->slot, r->blocks, r->n_blocks, err);
}

static void release_blocks(pool *p, di_request *r)
{
    while (r->n_blocks > 0) p->free_ids[p->n_free++] = r->blocks[--r->n_blocks];
}

/* ---- one request's bookkeeping ------------------------------------------------------------ */

static void digest(di_request *r)
{
    di_sha256 s;
    di_sha256_init(&s);
    for (int i = 0; i < r->n_gen; i++) {
        uint32_t id = (uint32_t)r->tokens[i], bits;
        memcpy(&bits, &r->logprobs[i], 4);
        uint8_t b[8] = {(uint8_t)id, (uint8_t)(id >> 8), (uint8_t)(id >> 16), (uint8_t)(id >> 24),
                        (uint8_t)bits, (uint8_t)(bits >> 8), (uint8_t)(bits >> 16), (uint8_t)(bits >> 24)};
        di_sha256_update(&s, b, 8);
    }
    di_sha256_final(&s, r->digest);
}

static bool is_stop(const di_engine_opts *o, int32_t t)
{
    for (int i = 0; i < o->n_stop; i++)
        if (o->stop_ids[i] == t) return true;
    return false;
}

/* A generated token: record, stream, and decide whether the request is done. */
static void accept(const di_engine_opts *o, di_request *r, int32_t tok, float lp, double t)
{
    if (r->n_gen == 0) r->t_first = t;
    r->tokens[r->n_gen] = tok;
    r->logprobs[r->n_gen] = lp;
    r->n_gen++;
    if (o->on_token) o->on_token(o->ctx, r, tok);
    if (is_stop(o, tok)) r->finish = DI_DONE_EOS;
    else if (r->n_gen >= r->n_predict) r->finish = DI_DONE_LENGTH;
}

/* ---- the loop ------------------------------------------------------------------------------- */

typedef struct step_plan {
    int n, n_out;
    int32_t *tok, *pos, *seq, *out_rows;
    di_request **owner;       /* per output row */
    int *kind;                /* per output row: 0 next token, 1 prompt score only */
} step_plan;

static void plan_add(step_plan *p, di_request *r, int32_t tok, int pos, bool out, int kind)
{
    p->tok[p->n] = tok;
    p->pos[p->n] = pos;
    p->seq[p->n] = r->slot;
    if (out) {
        p->out_rows[p->n_out] = p->n;
        p->owner[p->n_out] = r;
        p->kind[p->n_out] = kind;
        p->n_out++;
    }
    p->n++;
}

int di_engine_run(di_model *m, di_request **reqs, int n, const di_engine_opts *o, di_engine_stats *st, di_err *err)
{
    const di_config *c = di_model_config(m);
    int budget = o->max_batch_tokens, V = c->vocab;
    di_engine_stats stats = {0};
    for (int i = 0; i < n; i++) {
        di_request *r = reqs[i];
        if (r->n_prompt <= 0) return di_fail(err, DI_EUSAGE, "request %d: empty prompt", i);
        r->tokens = calloc((size_t)r->n_predict + 1, 4);
        r->logprobs = calloc((size_t)r->n_predict + 1, 4);
        r->prompt_lp = r->score_prompt ? calloc((size_t)r->n_prompt, 4) : NULL;
        r->blocks = calloc((size_t)di_request_blocks(r) + 1, 4);
        r->n_gen = r->n_fed = r->n_blocks = 0;
        r->slot = -1;
        r->finish = r->n_predict > 0 ? DI_RUNNING : DI_DONE_LENGTH;
        if (!r->tokens || !r->logprobs || !r->blocks || (r->score_prompt && !r->prompt_lp))
            return di_fail(err, DI_ENOMEM, "out of memory");
    }
    /* the pool: every block the model was given */
    int nb = di_model_kv_blocks(m);
    pool p = {malloc(sizeof(int32_t) * (size_t)nb), 0};
    for (int b = nb - 1; b >= 0; b--) p.free_ids[p.n_free++] = b; /* block 0 handed out first */
    int *slot_used = calloc((size_t)o->max_seqs, sizeof(int));
    step_plan plan = {0};
    plan.tok = malloc(sizeof(int32_t) * budget); plan.pos = malloc(sizeof(int32_t) * budget);
    plan.seq = malloc(sizeof(int32_t) * budget); plan.out_rows = malloc(sizeof(int32_t) * budget);
    plan.owner = malloc(sizeof(di_request *) * budget); plan.kind = malloc(sizeof(int) * budget);
    float *lp = malloc((size_t)budget * V * sizeof(float));
    int32_t *greedy = malloc(sizeof(int32_t) * budget);
    int rc = (!p.free_ids || !slot_used || !lp || !greedy || !plan.kind) ? di_fail(err, DI_ENOMEM, "out of memory") : DI_OK;
    double t0 = now();

    for (;;) {
        if (rc) break;
        /* admit waiting requests, in order, while slots are free */
        for (int i = 0; i < n; i++) {
            di_request *r = reqs[i];
            if (r->slot >= 0 || r->finish != DI_RUNNING || r->n_fed > 0) continue;
            int s = 0;
            while (s < o->max_seqs && slot_used[s]) s++;
            if (s == o->max_seqs) break;
            slot_used[s] = 1;
            r->slot = s;
            r->t_admit = now() - t0;
        }
        /* plan: decode tokens first, then prefill chunks, within the budget */
        plan.n = plan.n_out = 0;
        bool any = false, has_prefill = false;
        for (int i = 0; i < n && plan.n < budget; i++) {
            di_request *r = reqs[i];
            if (r->slot < 0 || r->finish != DI_RUNNING || r->n_fed < r->n_prompt) continue;
            int pos = r->n_prompt + r->n_gen - 1;
            if ((rc = grow_blocks(m, &p, r, pos + 1, err))) break;
            plan_add(&plan, r, r->tokens[r->n_gen - 1], pos, true, 0);
            any = true;
        }
        for (int i = 0; i < n && plan.n < budget && !rc; i++) {
            di_request *r = reqs[i];
            if (r->slot < 0 || r->finish != DI_RUNNING || r->n_fed >= r->n_prompt) continue;
            int left = r->n_prompt - r->n_fed, chunk = r->chunk > 0 ? r->chunk : left;
            int take = left < chunk ? left : chunk;
            if (take > budget - plan.n) take = budget - plan.n;
            if ((rc = grow_blocks(m, &p, r, r->n_fed + take, err))) break;
            for (int j = 0; j < take; j++) {
                int pos = r->n_fed + j;
                bool last = pos == r->n_prompt - 1;
                plan_add(&plan, r, r->prompt[pos], pos, last || r->score_prompt, last ? 0 : 1);
            }
            r->n_fed += take;
            any = has_prefill = true;
        }
        if (rc || !any) break;
        double ts = now();
        di_step step = {plan.n, plan.tok, plan.pos, plan.seq, plan.n_out, plan.out_rows, lp, NULL, greedy};
        if ((rc = di_model_forward(m, &step, err))) break;
        double te = now();
        stats.steps++;
        if (has_prefill) stats.prefill_s += te - ts; else stats.decode_s += te - ts;
        for (int k = 0; k < plan.n_out; k++) {
            di_request *r = plan.owner[k];
            const float *row = lp + (size_t)k * V;
            int pos = plan.pos[plan.out_rows[k]];
            if (r->score_prompt && pos + 1 < r->n_prompt) r->prompt_lp[pos] = row[r->prompt[pos + 1]];
            if (plan.kind[k] == 1) continue;
            int32_t tok = di_sample(&r->sampler, row, V, greedy[k], r->rng_id, (uint64_t)pos + 1);
            accept(o, r, tok, row[tok], te - t0);
        }
        for (int i = 0; i < n; i++) {
            di_request *r = reqs[i];
            if (r->slot >= 0 && r->finish != DI_RUNNING) {
                r->t_end = now() - t0;
                release_blocks(&p, r);
                slot_used[r->slot] = 0;
                r->slot = -1;
            }
        }
    }
    for (int i = 0; i < n; i++) {
        digest(reqs[i]);
        stats.prompt_tokens += reqs[i]->n_prompt;
        stats.gen_tokens += reqs[i]->n_gen;
    }
    if (st) *st = stats;
    free(p.free_ids); free(slot_used); free(lp); free(greedy);
    free(plan.tok); free(plan.pos); free(plan.seq); free(plan.out_rows); free(plan.owner); free(plan.kind);
    return rc;
}
