#include "model/engine.h"
#include "base/sha256.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static int blocks_for(int positions)
{
    int kvb = di_model_kv_block();
    return (positions + kvb - 1) / kvb;
}

int di_request_blocks(const di_request *r) { return blocks_for(r->n_prompt + r->n_predict); }

void di_request_release(di_request *r)
{
    free(r->tokens); free(r->logprobs); free(r->prompt_lp); free(r->blocks);
    free(r->top_lp); free(r->top_id); free(r->prompt_top_lp); free(r->prompt_top_id);
    r->tokens = NULL; r->logprobs = NULL; r->prompt_lp = NULL; r->blocks = NULL;
    r->top_lp = NULL; r->top_id = NULL; r->prompt_top_lp = NULL; r->prompt_top_id = NULL;
}

/* A request's known sequence: the prompt, then what it generated. After a preemption the
 * whole of it is fed again, so generated tokens are prefill input like the prompt. */
static int known(const di_request *r) { return r->n_prompt + r->n_gen; }
static int32_t token_at(const di_request *r, int i) { return i < r->n_prompt ? r->prompt[i] : r->tokens[i - r->n_prompt]; }

/* Key of the request's block i: SHA-256(parent key, token ids of the block as int32 LE).
 * Chaining makes the key name the whole prefix: KV at a position depends on every token
 * before it, so two blocks with one key hold the same bits (kernels are batch invariant). */
static void block_hash(const di_request *r, int i, const uint8_t parent[32], uint8_t out[32])
{
    int kvb = di_model_kv_block();
    di_sha256 s;
    di_sha256_init(&s);
    di_sha256_update(&s, parent, 32);
    for (int j = i * kvb; j < (i + 1) * kvb; j++) {
        uint32_t t = (uint32_t)token_at(r, j);
        uint8_t b[4] = {(uint8_t)t, (uint8_t)(t >> 8), (uint8_t)(t >> 16), (uint8_t)(t >> 24)};
        di_sha256_update(&s, b, 4);
    }
    di_sha256_final(&s, out);
}

/* ---- KV block pool and prefix cache --------------------------------------------------------- */

/* A block is free (on the free list), held (ref > 0; read-only once cached) or cached and
 * unheld: kept for future hits, and the first thing given up when the free list is empty. */
typedef struct pool {
    int nb, n_free, mask;
    int32_t *free_ids;
    int *ref;                 /* requests holding each block */
    bool *cached;
    uint8_t (*key)[32];
    long *last_use;           /* when the last holder let go: LRU order of eviction */
    int32_t *bucket, *next;   /* hash table of cached blocks, chained through next[] */
    long tick;
    di_engine_stats *st;
} pool;

static bool pool_init(pool *p, int nb, di_engine_stats *st)
{
    int nbk = 1;
    while (nbk < nb) nbk <<= 1;
    *p = (pool){.nb = nb, .mask = nbk - 1, .st = st};
    p->free_ids = malloc(sizeof(int32_t) * (size_t)nb);
    p->ref = calloc((size_t)nb, sizeof(int));
    p->cached = calloc((size_t)nb, sizeof(bool));
    p->key = malloc(32 * (size_t)nb);
    p->last_use = calloc((size_t)nb, sizeof(long));
    p->bucket = malloc(sizeof(int32_t) * (size_t)nbk);
    p->next = malloc(sizeof(int32_t) * (size_t)nb);
    if (!p->free_ids || !p->ref || !p->cached || !p->key || !p->last_use || !p->bucket || !p->next) return false;
    for (int b = nb - 1; b >= 0; b--) p->free_ids[p->n_free++] = b;   /* block 0 handed out first */
    for (int i = 0; i < nbk; i++) p->bucket[i] = -1;
    return true;
}

static void pool_free(pool *p)
{
    free(p->free_ids); free(p->ref); free(p->cached); free(p->key); free(p->last_use); free(p->bucket); free(p->next);
}

static int32_t *bucket_of(pool *p, const uint8_t key[32])
{
    uint32_t x;
    memcpy(&x, key, 4);
    return &p->bucket[x & (uint32_t)p->mask];
}

static int cache_find(pool *p, const uint8_t key[32])
{
    for (int b = *bucket_of(p, key); b >= 0; b = p->next[b])
        if (!memcmp(p->key[b], key, 32)) return b;
    return -1;
}

static void cache_insert(pool *p, int b, const uint8_t key[32])
{
    int32_t *head = bucket_of(p, key);
    memcpy(p->key[b], key, 32);
    p->cached[b] = true;
    p->next[b] = *head;
    *head = b;
}

static void cache_remove(pool *p, int b)
{
    int32_t *link = bucket_of(p, p->key[b]);
    while (*link != b) link = &p->next[*link];
    *link = p->next[b];
    p->cached[b] = false;
}

/* The least recently released cached block nobody holds, or -1. A scan: pools are small and
 * this runs only when the free list is empty. */
static int lru_unheld(const pool *p, int *count)
{
    int best = -1, n = 0;
    for (int b = 0; b < p->nb; b++) {
        if (!p->cached[b] || p->ref[b] > 0) continue;
        n++;
        if (best < 0 || p->last_use[b] < p->last_use[best]) best = b;
    }
    if (count) *count = n;
    return best;
}

/* A block for new KV: a free one, else the LRU unheld cached one (evicted); -1 if none. */
static int pool_take(pool *p)
{
    int b;
    if (p->n_free > 0) {
        b = p->free_ids[--p->n_free];
    } else {
        if ((b = lru_unheld(p, NULL)) < 0) return -1;
        cache_remove(p, b);
        p->st->evictions++;
    }
    p->ref[b] = 1;
    return b;
}

static void pool_drop(pool *p, int b)
{
    if (--p->ref[b] > 0) return;
    if (p->cached[b]) p->last_use[b] = ++p->tick;
    else p->free_ids[p->n_free++] = b;
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

/* A generated token: record, stream, and decide whether the request is done. A request that
 * is done takes no further token, so drafted rows after this one are rejected. */
static void accept(const di_engine_opts *o, di_request *r, int32_t tok, float lp, double t)
{
    if (r->n_gen == 0) r->t_first = t;
    r->tokens[r->n_gen] = tok;
    r->logprobs[r->n_gen] = lp;
    r->n_gen++;
    if (o->on_token) o->on_token(o->ctx, r, tok);
    if (o->halt && o->halt(o->ctx, r)) r->finish = DI_DONE_STOP;
    else if (!r->ignore_stop && is_stop(o, tok)) r->finish = DI_DONE_EOS;
    else if (r->n_gen >= r->n_predict) r->finish = DI_DONE_LENGTH;
}

/* ---- the engine ----------------------------------------------------------------------------- */

typedef struct step_plan {
    int n, n_out, n_prefill;
    int32_t *tok, *pos, *seq, *out_rows;
    di_request **owner;       /* per output row */
    int *kind;                /* per output row: ROW_NEXT, ROW_SCORE, ROW_VERIFY */
} step_plan;

/* An output row gives r's next token (its last known position), scores a prompt position, or
 * verifies a draft: a drafted position whose token is kept only if every earlier one was. */
enum { ROW_NEXT, ROW_SCORE, ROW_VERIFY };

/* The draft model's own step buffers (the target's plan is in use while it runs). */
typedef struct draft_bufs {
    int32_t *tok, *pos, *seq, *out_rows, *greedy;
    di_request **owner;       /* per output row */
    di_request **rs;          /* the requests drafting this step (max_seqs) */
    int *want;                /* and how many tokens each */
} draft_bufs;

struct di_engine {
    di_model *m;
    di_engine_opts o;
    di_request **sub;         /* the requests inside, in submission order */
    di_request **arr;         /* the same by (arrival step, submission): first come, first served */
    int n, cap, kvb, V, max_seqs;  /* max_seqs: the option, capped by the model's sequence slots */
    long submitted;           /* submissions so far: the N of "request N" in messages */
    int *slot_used;
    pool p;
    step_plan plan;
    float *lp;
    int32_t *greedy;
    long step, admit_seq;     /* step: engine steps so far, the clock arrivals are given in */
    double t0, last_step_s;
    di_engine_stats st;
    di_err *err;
    int d_blocks;             /* draft model: KV blocks per slot (slot s owns [s d_blocks, (s + 1) d_blocks)) */
    draft_bufs d;
};
typedef struct di_engine engine;

enum { NEED_BLOCK = -1 };     /* planning ran out of KV blocks: someone must be preempted */

/* Gives r blocks for positions [0, positions). */
static int grow_blocks(engine *e, di_request *r, int positions)
{
    int need = blocks_for(positions), had = r->n_blocks;
    while (r->n_blocks < need) {
        int b = pool_take(&e->p);
        if (b < 0) break;
        r->blocks[r->n_blocks++] = b;
    }
    /* blocks taken before running dry stay with r; the block table must show them */
    if (r->n_blocks > had && di_model_set_blocks(e->m, r->slot, r->blocks, r->n_blocks, e->err)) return e->err->code;
    return r->n_blocks < need ? NEED_BLOCK : DI_OK;
}

/* Releases the tail first so that, among blocks let go together, LRU evicts tails before the
 * prefixes other requests are likelier to share. */
static void leave(engine *e, di_request *r)
{
    while (r->n_blocks > 0) pool_drop(&e->p, r->blocks[--r->n_blocks]);
    e->slot_used[r->slot] = 0;
    r->slot = -1;
    r->d_fed = 0;   /* the next holder of the slot overwrites the draft model's KV */
}

/* Takes the most recently admitted running request out of the batch (it has done the least
 * work to lose): its blocks go back, cached ones stay cached so its recompute may hit them,
 * its generated tokens stay, and it waits to be admitted again. */
static bool preempt_newest(engine *e)
{
    di_request *v = NULL;
    for (int i = 0; i < e->n; i++) {
        di_request *r = e->sub[i];
        if (r->slot >= 0 && (!v || r->admit_seq > v->admit_seq)) v = r;
    }
    if (!v) return false;
    leave(e, v);
    v->n_fed = v->n_hashed = 0;
    v->preemptions++;
    e->st.preemptions++;
    return true;
}

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

static bool is_decode(const di_request *r) { return r->n_gen > 0 && r->n_fed == known(r) - 1; }

/* Positions [n_fed, n_fed + take) of r. Output rows: the last known position (its logits
 * give the next token) and, if asked, prompt positions to score. */
static void plan_positions(step_plan *p, di_request *r, int take)
{
    int last = known(r) - 1;
    r->decoding = is_decode(r);
    if (!r->decoding) p->n_prefill += take;
    for (int j = 0; j < take; j++) {
        int pos = r->n_fed + j;
        bool score = r->score_prompt && pos + 1 < r->n_prompt;
        plan_add(p, r, token_at(r, pos), pos, pos == last || score, pos == last ? ROW_NEXT : ROW_SCORE);
    }
    r->take = take;
}

/* How many of r's pending positions go in this step: its chunk, within the budget left. */
static int chunk_take(const engine *e, const di_request *r)
{
    int left = known(r) - r->n_fed, budget = e->o.max_batch_tokens - e->plan.n;
    int take = r->chunk > 0 && r->chunk < left ? r->chunk : left;
    return take < budget ? take : budget;
}

/* The running requests: decode tokens first, then prefill chunks. */
static int plan_running(engine *e)
{
    for (int pass = 0; pass < 2; pass++)
        for (int k = 0; k < e->n; k++) {
            di_request *r = e->arr[k];
            if (r->slot < 0 || is_decode(r) != (pass == 0)) continue;
            int take = chunk_take(e, r);
            if (take <= 0) continue;
            int rc = grow_blocks(e, r, r->n_fed + take);
            if (rc) return rc;
            plan_positions(&e->plan, r, take);
        }
    return DI_OK;
}

/* Plans the running requests; when the pool runs dry, preempts the newest and starts over
 * (the victim may already be in the plan). Blocks taken meanwhile stay with their holders. */
static int plan_step(engine *e, bool *preempted)
{
    for (;;) {
        e->plan.n = e->plan.n_out = e->plan.n_prefill = 0;
        for (int i = 0; i < e->n; i++) {
            e->sub[i]->take = e->sub[i]->spec_k = 0;
            e->sub[i]->decoding = false;
        }
        int rc = plan_running(e);
        if (rc != NEED_BLOCK) return rc;
        if (!preempt_newest(e)) return di_fail(e->err, DI_ENOMEM, "KV cache pool exhausted with no request to preempt");
        *preempted = true;
    }
}

/* Leading full blocks of r's known tokens that are in the prefix cache, written to
 * r->blocks; chain gets the last one's key. The last known position is always computed:
 * its logits give the next token, and its block must not be a shared one. */
static int match_prefix(engine *e, di_request *r, uint8_t chain[32])
{
    memset(chain, 0, 32);
    if (!e->o.prefix_cache || r->score_prompt) return 0;   /* scoring needs every prompt row computed */
    int max = (known(r) - 1) / e->kvb, n = 0;
    uint8_t key[32];
    for (; n < max; n++) {
        block_hash(r, n, chain, key);
        int b = cache_find(&e->p, key);
        if (b < 0) break;
        r->blocks[n] = b;
        memcpy(chain, key, 32);
    }
    return n;
}

/* Blocks that can be taken without preempting: free, or cached and unheld, less those that
 * r's own hits are about to hold. */
static int available(engine *e, const di_request *r, int hits)
{
    int unheld;
    lru_unheld(&e->p, &unheld);
    for (int i = 0; i < hits; i++) unheld -= e->p.ref[r->blocks[i]] == 0;
    return e->p.n_free + unheld;
}

static void enter(engine *e, di_request *r, int slot, int hits, const uint8_t chain[32])
{
    for (int i = 0; i < hits; i++) e->p.ref[r->blocks[i]]++;
    r->n_blocks = r->n_hashed = hits;
    r->n_fed = hits * e->kvb;
    memcpy(r->chain, chain, 32);
    r->prefix_hit_tokens += r->n_fed;
    e->st.prefix_hit_tokens += r->n_fed;
    e->slot_used[slot] = 1;
    r->slot = slot;
    r->d_fed = 0;
    if (r->admit_seq == 0) r->t_admit = now() - e->t0;
    r->admit_seq = ++e->admit_seq;
}

/* Admits r if a slot and budget are left and the blocks of its first chunk can be had without
 * preempting anyone; takes its cached prefix and plans that chunk. */
static int try_admit(engine *e, di_request *r, bool *admitted)
{
    int s = 0;
    while (s < e->max_seqs && e->slot_used[s]) s++;
    *admitted = false;
    if (s == e->max_seqs || e->plan.n >= e->o.max_batch_tokens) return DI_OK;
    uint8_t chain[32];
    int hits = match_prefix(e, r, chain);
    r->n_fed = hits * e->kvb;                       /* for chunk_take; undone if r must wait */
    int take = chunk_take(e, r);
    if (available(e, r, hits) < blocks_for(r->n_fed + take) - hits) { r->n_fed = 0; return DI_OK; }
    enter(e, r, s, hits, chain);
    int rc = grow_blocks(e, r, r->n_fed + take);   /* cannot run dry: checked above */
    if (rc) return rc == NEED_BLOCK ? di_fail(e->err, DI_ENOMEM, "KV pool accounting broken") : rc;
    plan_positions(&e->plan, r, take);
    *admitted = true;
    return DI_OK;
}

/* Waiting requests that have arrived, in order; nobody overtakes one that does not fit. */
static int admit(engine *e)
{
    for (int k = 0; k < e->n; k++) {
        di_request *r = e->arr[k];
        if (r->slot >= 0 || r->finish != DI_RUNNING) continue;
        if (r->arrival_step > e->step) break;
        bool ok;
        int rc = try_admit(e, r, &ok);
        if (rc || !ok) return rc;
    }
    return DI_OK;
}

/* Keys r's newly completed blocks (every position's KV written) and offers them to the
 * prefix cache; a block whose key is already cached stays private to r. */
static void register_blocks(engine *e, di_request *r)
{
    while ((r->n_hashed + 1) * e->kvb <= r->n_fed) {
        block_hash(r, r->n_hashed, r->chain, r->chain);
        int b = r->blocks[r->n_hashed++];
        if (!e->p.cached[b] && cache_find(&e->p, r->chain) < 0) cache_insert(&e->p, b, r->chain);
    }
}

/* The n best (log-prob, id) of a row by (log-prob desc, id asc), the sampler's total order:
 * insertion into a sorted prefix, NaN skipped. Copies of computed values; no arithmetic. */
static void top_select(const float *row, int V, int n, float *lp, int32_t *id)
{
    int have = 0;
    for (int32_t t = 0; t < V; t++) {
        float x = row[t];
        if (x != x) continue;
        if (have == n && !(x > lp[n - 1])) continue;   /* ties keep the lower id, already in */
        int j = have < n ? have++ : n - 1;
        while (j > 0 && x > lp[j - 1]) { lp[j] = lp[j - 1]; id[j] = id[j - 1]; j--; }
        lp[j] = x;
        id[j] = t;
    }
    for (; have < n; have++) { lp[have] = -INFINITY; id[have] = -1; }   /* a vocabulary of NaN */
}

/* One output row of r: a prompt position to score, the next token, or a draft to verify. */
static void take_row(engine *e, di_request *r, const float *row, int pos, int32_t input, int kind, int32_t greedy, double t)
{
    int n = r->top_n;
    if (kind == ROW_VERIFY) {
        /* kept only if the row's input is the true sequence: every earlier row of the step was
         * kept (its position is the last known one) and its token equalled this row's draft */
        if (r->finish != DI_RUNNING || pos != known(r) - 1 || token_at(r, pos) != input) return;
        r->spec_hit++;
    }
    if (kind == ROW_SCORE) {
        r->prompt_lp[pos] = row[r->prompt[pos + 1]];
        if (n) top_select(row, e->V, n, r->prompt_top_lp + (size_t)pos * n, r->prompt_top_id + (size_t)pos * n);
        return;
    }
    /* a scoring request with nothing to generate ends at its last prompt row */
    if (r->n_gen >= r->n_predict) { r->finish = DI_DONE_LENGTH; return; }
    if (n) top_select(row, e->V, n, r->top_lp + (size_t)r->n_gen * n, r->top_id + (size_t)r->n_gen * n);
    int32_t tok = di_sample(&r->sampler, row, e->V, greedy, r->rng_id, (uint64_t)pos + 1);
    accept(&e->o, r, tok, row[tok], t);
}

/* ---- speculation: drafted rows, verified in the same step ------------------------------------ */

static void count_decode(engine *e, di_request *r)
{
    r->decode_steps++;
    r->decode_tokens += 1 + r->spec_hit;
    r->drafted += r->spec_k;
    r->draft_accepted += r->spec_hit;
    e->st.decode_slots++;
    e->st.decode_tokens += 1 + r->spec_hit;   /* the decode row's token, then each kept draft's */
    e->st.drafted += r->spec_k;
    e->st.draft_accepted += r->spec_hit;
    if (!r->spec_k) return;
    if (r->spec_hit == r->spec_k) e->st.full_accepts += r->spec_k == r->draft.draft_max;
    else if (r->finish == DI_RUNNING) e->st.reject_at[r->spec_hit]++;   /* a mismatch, not the end of r */
}

/* Blocks past the one the next decode row writes hold rejected drafts' KV only: back to the free
 * list (never cached: no position in them is below n_fed). The block table keeps stale entries
 * past n_blocks; no row reaches them before grow_blocks sets them again. */
static void trim_blocks(engine *e, di_request *r)
{
    int keep = blocks_for(r->n_fed + 1);
    while (r->n_blocks > keep) pool_drop(&e->p, r->blocks[--r->n_blocks]);
}

/* Gives r blocks for positions [0, positions) from the free list alone: a draft may not evict a
 * cached block or preempt anyone. Returns the positions r's blocks now cover. */
static int grow_free(engine *e, di_request *r, int positions)
{
    int need = blocks_for(positions), had = r->n_blocks;
    while (r->n_blocks < need && e->p.n_free > 0) {
        int b = e->p.free_ids[--e->p.n_free];
        e->p.ref[b] = 1;
        r->blocks[r->n_blocks++] = b;
    }
    if (r->n_blocks > had && di_model_set_blocks(e->m, r->slot, r->blocks, r->n_blocks, e->err)) return -1;
    return r->n_blocks * e->kvb;
}

/* r's drafts spec_tok[0..k) as the rows of positions known(r) .. known(r) + k - 1, after its
 * decode row at known(r) - 1; fewer if its blocks cannot cover them. */
static int add_drafts(engine *e, di_request *r, int k)
{
    int from = known(r), cover = k > 0 ? grow_free(e, r, from + k) : from;
    if (cover < 0) return e->err->code;
    if (k > cover - from) k = cover - from;
    for (int j = 0; j < k; j++) plan_add(&e->plan, r, r->spec_tok[j], from + j, true, ROW_VERIFY);
    r->take += k;
    r->spec_k = k;
    return DI_OK;
}

/* One forward of the draft model over d's n rows, n_out of them giving greedy ids. */
static int draft_forward(engine *e, int n, int n_out)
{
    draft_bufs *d = &e->d;
    di_step s = {n, d->tok, d->pos, d->seq, n_out, d->out_rows, NULL, NULL, d->greedy};
    double t = now();
    int rc = di_model_forward(e->o.draft_model, &s, e->err);
    e->st.draft_s += now() - t;
    e->st.draft_steps++;
    return rc;
}

static void draft_row(draft_bufs *d, int *n, const di_request *r, int32_t tok, int pos)
{
    d->tok[*n] = tok;
    d->pos[*n] = pos;
    d->seq[*n] = r->slot;
    (*n)++;
}

/* Greedy drafts of the draft model for rs[0..n), each wanting want[i] tokens: first its KV
 * catches up with the known sequence (positions d_fed .. known - 1, in budget-sized forwards;
 * the last of them gives the first draft), then each draft is fed to give the next, all the
 * requests' rows in one forward per draft position. Sets want[i] to the drafts made. */
static int draft_with_model(engine *e, di_request **rs, int *want, int n)
{
    draft_bufs *d = &e->d;
    int B = e->o.max_batch_tokens, most = 0, rc;
    for (bool behind = true; behind;) {
        int rows = 0, outs = 0;
        behind = false;
        for (int i = 0; i < n; i++) {
            di_request *r = rs[i];
            int K = known(r), take = K - r->d_fed < B - rows ? K - r->d_fed : B - rows;
            if (r->d_fed >= K) continue;
            if (take <= 0) { behind = true; break; }
            for (int j = 0; j < take; j++) draft_row(d, &rows, r, token_at(r, r->d_fed + j), r->d_fed + j);
            r->d_fed += take;
            if (r->d_fed == K) { d->out_rows[outs] = rows - 1; d->owner[outs++] = r; }
            else behind = true;
        }
        if (rows && (rc = draft_forward(e, rows, outs))) return rc;
        for (int k = 0; k < outs; k++) d->owner[k]->spec_tok[0] = d->greedy[k];
    }
    for (int i = 0; i < n; i++) most = want[i] > most ? want[i] : most;
    for (int j = 1; j < most; j++) {
        int rows = 0;
        for (int i = 0; i < n; i++) {
            if (want[i] <= j) continue;
            if (rows == B) { want[i] = j; continue; }   /* more drafting requests than rows */
            d->out_rows[rows] = rows;
            d->owner[rows] = rs[i];
            draft_row(d, &rows, rs[i], rs[i]->spec_tok[j - 1], known(rs[i]) - 1 + j);
            rs[i]->d_fed = known(rs[i]) + j;
        }
        if (!rows) break;
        if ((rc = draft_forward(e, rows, rows))) return rc;
        for (int k = 0; k < rows; k++) d->owner[k]->spec_tok[j] = d->greedy[k];
    }
    return DI_OK;
}

/* Drafts for the step's decoding requests, in arrival order, within what the plan left of the
 * budget: prompt lookup at once; the draft model's, batched, after. */
static int plan_drafts(engine *e)
{
    int n_model = 0, reserved = 0, rc, *want = e->d.want;
    di_request **model_rs = e->d.rs;
    for (int a = 0; a < e->n; a++) {
        di_request *r = e->arr[a];
        if (!r->decoding || r->draft.draft_max <= 0) continue;
        int k = r->draft.draft_max, left = e->o.max_batch_tokens - e->plan.n - reserved;
        /* the last token a request may still take comes from the last verified row */
        if (k > r->n_predict - r->n_gen - 1) k = r->n_predict - r->n_gen - 1;
        if (k > left) k = left;
        if (k <= 0) continue;
        if (!r->draft.model) {
            k = di_draft_lookup(r->prompt, r->n_prompt, r->tokens, r->n_gen, r->draft.ngram_min, r->draft.ngram_max, k,
                                r->spec_tok);
            if ((rc = add_drafts(e, r, k))) return rc;
            continue;
        }
        /* the draft model's positions known - 1 .. known + k - 2 must lie in its slot's blocks */
        int room = e->d_blocks * e->kvb - known(r) + 1;
        if (k > room) k = room;
        if (k <= 0) continue;
        model_rs[n_model] = r;
        want[n_model++] = k;
        reserved += k;
    }
    if (!n_model) return DI_OK;
    if ((rc = draft_with_model(e, model_rs, want, n_model))) return rc;
    for (int i = 0; i < n_model; i++)
        if ((rc = add_drafts(e, model_rs[i], want[i]))) return rc;
    return DI_OK;
}

/* The forward pass of the plan, then sampling, scoring and the new KV's bookkeeping. */
static int run_step(engine *e)
{
    step_plan *p = &e->plan;
    double ts = now();
    di_step s = {p->n, p->tok, p->pos, p->seq, p->n_out, p->out_rows, e->lp, NULL, e->greedy};
    int rc = di_model_forward(e->m, &s, e->err);
    if (rc) return rc;
    double te = now();
    e->st.steps++;
    e->last_step_s = te - ts;
    if (p->n_prefill) e->st.prefill_s += te - ts; else e->st.decode_s += te - ts;
    for (int k = 0; k < p->n_out; k++) {
        int row = p->out_rows[k];
        take_row(e, p->owner[k], e->lp + (size_t)k * e->V, p->pos[row], p->tok[row], p->kind[k], e->greedy[k], te - e->t0);
    }
    for (int i = 0; i < e->n; i++) {
        di_request *r = e->sub[i];
        if (r->take) {
            /* a rejected draft's KV is not the sequence's: n_fed stops before it */
            r->n_fed += r->take - (r->spec_k - r->spec_hit);
            if (r->d_fed > r->n_fed) r->d_fed = r->n_fed;
            if (r->decoding) count_decode(e, r);
            if (e->o.prefix_cache) register_blocks(e, r);
        }
        if (r->slot >= 0 && r->finish != DI_RUNNING) { r->t_end = now() - e->t0; leave(e, r); }
        else if (r->spec_k) trim_blocks(e, r);
        r->take = r->spec_k = r->spec_hit = 0;
        r->decoding = false;
    }
    return DI_OK;
}

/* Nothing to run: jump the clock to the next arrival. False if nobody is waiting. */
static bool skip_to_arrival(engine *e)
{
    long next = -1;
    for (int i = 0; i < e->n; i++) {
        const di_request *r = e->sub[i];
        if (r->finish == DI_RUNNING && r->slot < 0 && (next < 0 || r->arrival_step < next)) next = r->arrival_step;
    }
    if (next < 0) return false;
    if (next > e->step) e->step = next;
    return true;
}

/* ---- requests in and out ------------------------------------------------------------------ */

static void remove_from(di_request **list, int n, const di_request *r)
{
    int i = 0;
    while (i < n && list[i] != r) i++;
    if (i < n) memmove(list + i, list + i + 1, sizeof *list * (size_t)(n - i - 1));
}

/* r leaves the engine's lists: its digest, its share of the stats. */
static void let_go(engine *e, di_request *r)
{
    if (r->slot >= 0) leave(e, r);
    if (r->tokens) digest(r);
    e->st.prompt_tokens += r->n_prompt;
    e->st.gen_tokens += r->n_gen;
    remove_from(e->sub, e->n, r);
    remove_from(e->arr, e->n, r);
    e->n--;
}

/* Finished requests leave, in submission order, and are reported. */
static void collect(engine *e)
{
    for (int i = 0; i < e->n;) {
        di_request *r = e->sub[i];
        if (r->finish == DI_RUNNING) { i++; continue; }
        let_go(e, r);
        if (e->o.on_done) e->o.on_done(e->o.ctx, r);
    }
}

bool di_engine_cancel(di_engine *e, di_request *r)
{
    int i = 0;
    while (i < e->n && e->sub[i] != r) i++;
    if (i == e->n) return false;
    if (r->finish == DI_RUNNING) {
        r->finish = DI_DONE_CANCEL;
        r->t_end = now() - e->t0;
    }
    let_go(e, r);
    if (e->o.on_done) e->o.on_done(e->o.ctx, r);
    return true;
}

static int init_request(di_request *r, long i, int pool_blocks, di_err *err)
{
    if (r->n_prompt <= 0) return di_fail(err, DI_EUSAGE, "request %ld: empty prompt", i);
    if (r->n_predict < 0) return di_fail(err, DI_EUSAGE, "request %ld: negative n_predict", i);
    if (r->top_n < 0 || r->top_n > DI_TOP_MAX)
        return di_fail(err, DI_EUSAGE, "request %ld: top_n %d is outside 0..%d", i, r->top_n, DI_TOP_MAX);
    /* the last generated token is never fed, so its position needs no KV */
    int need = blocks_for(r->n_prompt + r->n_predict - 1);
    if (need > pool_blocks)
        return di_fail(err, DI_EUSAGE, "request %ld needs %d KV blocks (%d prompt + %d generated tokens), more than the whole pool (%d)",
                       i, need, r->n_prompt, r->n_predict, pool_blocks);
    size_t tn = (size_t)r->top_n;
    r->tokens = calloc((size_t)r->n_predict + 1, 4);
    r->logprobs = calloc((size_t)r->n_predict + 1, 4);
    r->prompt_lp = r->score_prompt ? calloc((size_t)r->n_prompt, 4) : NULL;
    r->blocks = calloc((size_t)di_request_blocks(r) + 1, 4);
    if (tn) {
        r->top_lp = calloc(((size_t)r->n_predict + 1) * tn, 4);
        r->top_id = calloc(((size_t)r->n_predict + 1) * tn, 4);
        if (r->score_prompt) {
            r->prompt_top_lp = calloc((size_t)r->n_prompt * tn, 4);
            r->prompt_top_id = calloc((size_t)r->n_prompt * tn, 4);
        }
    }
    r->n_gen = r->n_fed = r->n_blocks = r->n_hashed = r->take = r->preemptions = r->prefix_hit_tokens = 0;
    r->drafted = r->draft_accepted = r->decode_steps = r->decode_tokens = r->spec_k = r->spec_hit = r->d_fed = 0;
    r->decoding = false;
    r->admit_seq = 0;
    r->slot = -1;
    r->t_admit = r->t_first = r->t_end = 0;
    /* nothing to generate and nothing to score: done at once */
    r->finish = r->n_predict > 0 || r->score_prompt ? DI_RUNNING : DI_DONE_LENGTH;
    if (!r->tokens || !r->logprobs || !r->blocks || (r->score_prompt && !r->prompt_lp) ||
        (tn && (!r->top_lp || !r->top_id || (r->score_prompt && (!r->prompt_top_lp || !r->prompt_top_id)))))
        return di_fail(err, DI_ENOMEM, "out of memory");
    return DI_OK;
}

static bool grow_lists(engine *e)
{
    if (e->n < e->cap) return true;
    int cap = e->cap ? 2 * e->cap : 16;
    di_request **s = realloc(e->sub, sizeof *s * (size_t)cap);
    if (s) e->sub = s;
    di_request **a = s ? realloc(e->arr, sizeof *a * (size_t)cap) : NULL;
    if (a) e->arr = a;
    if (!s || !a) return false;
    e->cap = cap;
    return true;
}

/* A request's speculation options, checked against the engine. */
static int check_draft(const engine *e, const di_request *r, long i, di_err *err)
{
    if (r->draft.draft_max == 0) return DI_OK;
    const char *why = di_draft_check(&r->draft);
    if (why) return di_fail(err, DI_EUSAGE, "request %ld: speculation: %s", i, why);
    if (r->draft.model && !e->o.draft_model)
        return di_fail(err, DI_EUSAGE, "request %ld: drafts from a draft model, but the engine was opened without one", i);
    return DI_OK;
}

int di_engine_submit(di_engine *e, di_request *r, di_err *err)
{
    long index = e->submitted++;
    r->slot = -1;
    r->n_blocks = r->n_gen = 0;
    r->tokens = NULL; r->logprobs = NULL; r->prompt_lp = NULL; r->blocks = NULL;
    r->top_lp = NULL; r->top_id = NULL; r->prompt_top_lp = NULL; r->prompt_top_id = NULL;
    int rc = init_request(r, index, e->p.nb, err);
    if (!rc) rc = check_draft(e, r, index, err);
    if (rc) { di_request_release(r); return rc; }
    if (!grow_lists(e)) { di_request_release(r); return di_fail(err, DI_ENOMEM, "out of memory"); }
    e->sub[e->n] = r;
    /* arrival order, ties by submission: after every request arriving no later than r */
    int j = e->n;
    while (j > 0 && e->arr[j - 1]->arrival_step > r->arrival_step) { e->arr[j] = e->arr[j - 1]; j--; }
    e->arr[j] = r;
    e->n++;
    return DI_OK;
}

int di_engine_step(di_engine *e, bool *busy, di_err *err)
{
    e->err = err;
    collect(e);
    for (int idle = 0;;) {
        bool preempted = false;
        int rc = plan_step(e, &preempted);
        /* no admissions in a step that preempted: the victim would come straight back */
        if (!rc && !preempted) rc = admit(e);
        if (!rc && e->plan.n) rc = plan_drafts(e);   /* last: drafts take only what is left */
        if (rc) return rc;
        if (e->plan.n == 0) {
            if (!skip_to_arrival(e)) { collect(e); *busy = e->n > 0; return DI_OK; }
            /* an empty engine always admits the first waiter: each fits the pool alone */
            if (++idle > 2) return di_fail(e->err, DI_ENOMEM, "engine made no progress at step %ld", e->step);
            continue;
        }
        if ((rc = run_step(e))) return rc;
        e->step++;
        collect(e);
        *busy = e->n > 0;
        return DI_OK;
    }
}

void di_engine_get_info(const di_engine *e, di_engine_info *out)
{
    *out = (di_engine_info){.blocks_total = e->p.nb, .step = e->step, .steps = e->st.steps, .last_step_s = e->last_step_s,
                            .drafted = e->st.drafted, .draft_accepted = e->st.draft_accepted,
                            .decode_slots = e->st.decode_slots, .decode_tokens = e->st.decode_tokens};
    for (int i = 0; i < e->n; i++) {
        if (e->sub[i]->slot >= 0) out->running++;
        else if (e->sub[i]->finish == DI_RUNNING) out->waiting++;
    }
    for (int b = 0; b < e->p.nb; b++) {
        out->blocks_held += e->p.ref[b] > 0;
        out->blocks_cached += e->p.cached[b];
    }
}

/* ---- setup ------------------------------------------------------------------------------- */

static void engine_free(engine *e)
{
    step_plan *p = &e->plan;
    pool_free(&e->p);
    free(p->tok); free(p->pos); free(p->seq); free(p->out_rows); free(p->owner); free(p->kind);
    free(e->lp); free(e->greedy); free(e->sub); free(e->arr); free(e->slot_used);
    draft_bufs *d = &e->d;
    free(d->tok); free(d->pos); free(d->seq); free(d->out_rows); free(d->greedy); free(d->owner); free(d->rs); free(d->want);
    free(e);
}

/* The draft model's slots: slot s owns blocks [s W, (s + 1) W), W as many as its pool allows and
 * its context holds (set_blocks refuses more than the context), its buffers sized as the target's. */
static int open_draft(engine *e, int budget, di_err *err)
{
    di_model *D = e->o.draft_model;
    int V = di_model_config(D)->vocab;
    if (V != e->V) return di_fail(err, DI_EUSAGE, "draft model: a vocabulary of %d tokens, the model's has %d", V, e->V);
    if (di_model_max_seqs(D) < e->max_seqs)
        return di_fail(err, DI_EUSAGE, "draft model: %d sequence slots, fewer than the engine's %d", di_model_max_seqs(D), e->max_seqs);
    int W = di_model_kv_blocks(D) / e->max_seqs;
    int32_t *ids = malloc(sizeof *ids * (size_t)(W > 0 ? W : 1));
    if (!ids) return di_fail(err, DI_ENOMEM, "out of memory");
    di_err quiet = {0};
    for (; W > 0; W--) {
        for (int i = 0; i < W; i++) ids[i] = i;
        if (!di_model_set_blocks(D, 0, ids, W, &quiet)) break;
    }
    for (int s = 1; s < e->max_seqs && W > 0; s++) {
        for (int i = 0; i < W; i++) ids[i] = s * W + i;
        if (di_model_set_blocks(D, s, ids, W, err)) { free(ids); return err->code; }
    }
    free(ids);
    if (W == 0) return di_fail(err, DI_EUSAGE, "draft model: %d KV blocks cannot give each of %d slots one", di_model_kv_blocks(D), e->max_seqs);
    e->d_blocks = W;
    draft_bufs *d = &e->d;
    d->tok = malloc(sizeof(int32_t) * budget); d->pos = malloc(sizeof(int32_t) * budget);
    d->seq = malloc(sizeof(int32_t) * budget); d->out_rows = malloc(sizeof(int32_t) * budget);
    d->greedy = malloc(sizeof(int32_t) * budget); d->owner = malloc(sizeof(di_request *) * budget);
    if (!d->tok || !d->pos || !d->seq || !d->out_rows || !d->greedy || !d->owner) return di_fail(err, DI_ENOMEM, "out of memory");
    return DI_OK;
}

int di_engine_open(di_model *m, const di_engine_opts *o, di_engine **out, di_err *err)
{
    *out = NULL;
    int budget = o->max_batch_tokens;
    if (budget <= 0 || o->max_seqs <= 0)
        return di_fail(err, DI_EUSAGE, "engine: max_batch_tokens %d and max_seqs %d must be positive", budget, o->max_seqs);
    engine *e = calloc(1, sizeof *e);
    if (!e) return di_fail(err, DI_ENOMEM, "out of memory");
    *e = (engine){.m = m, .o = *o, .kvb = di_model_kv_block(), .V = di_model_config(m)->vocab, .t0 = now(), .err = err};
    e->max_seqs = o->max_seqs < di_model_max_seqs(m) ? o->max_seqs : di_model_max_seqs(m);
    step_plan *p = &e->plan;
    p->tok = malloc(sizeof(int32_t) * budget); p->pos = malloc(sizeof(int32_t) * budget);
    p->seq = malloc(sizeof(int32_t) * budget); p->out_rows = malloc(sizeof(int32_t) * budget);
    p->owner = malloc(sizeof(di_request *) * budget); p->kind = malloc(sizeof(int) * budget);
    e->lp = malloc((size_t)budget * e->V * sizeof(float));
    e->greedy = malloc(sizeof(int32_t) * budget);
    e->slot_used = calloc((size_t)e->max_seqs, sizeof(int));
    bool ok = pool_init(&e->p, di_model_kv_blocks(m), &e->st);
    e->d.rs = malloc(sizeof(di_request *) * (size_t)e->max_seqs);
    e->d.want = malloc(sizeof(int) * (size_t)e->max_seqs);
    if (!ok || !p->tok || !p->pos || !p->seq || !p->out_rows || !p->owner || !p->kind || !e->lp || !e->greedy ||
        !e->slot_used || !e->d.rs || !e->d.want) {
        engine_free(e);
        return di_fail(err, DI_ENOMEM, "out of memory");
    }
    int rc = o->draft_model ? open_draft(e, budget, err) : DI_OK;
    if (rc) { engine_free(e); return rc; }
    *out = e;
    return DI_OK;
}

void di_engine_close(di_engine *e, di_engine_stats *st)
{
    if (!e) return;
    while (e->n > 0) let_go(e, e->sub[0]);
    if (st) *st = e->st;
    engine_free(e);
}

int di_engine_run(di_model *m, di_request **reqs, int n, const di_engine_opts *o, di_engine_stats *st, di_err *err)
{
    /* first, state that the caller's cleanup can trust whatever fails */
    for (int i = 0; i < n; i++) {
        reqs[i]->slot = -1;
        reqs[i]->n_blocks = reqs[i]->n_gen = 0;
        reqs[i]->tokens = NULL; reqs[i]->logprobs = NULL; reqs[i]->prompt_lp = NULL; reqs[i]->blocks = NULL;
        reqs[i]->top_lp = NULL; reqs[i]->top_id = NULL; reqs[i]->prompt_top_lp = NULL; reqs[i]->prompt_top_id = NULL;
    }
    di_engine *e;
    int rc = di_engine_open(m, o, &e, err);
    if (rc) return rc;
    for (int i = 0; i < n && !rc; i++) rc = di_engine_submit(e, reqs[i], err);
    for (bool busy = !rc; busy && !rc;) rc = di_engine_step(e, &busy, err);
    di_engine_close(e, st);
    return rc;
}
