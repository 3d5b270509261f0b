/* The live engine (submit / step / cancel) on the real model (CPU), bitwise: a request
 * submitted at random steps into live traffic, among requests that come, go and are
 * cancelled, gets the digest it gets alone; a cancel gives the request's KV blocks back at
 * once and reports it exactly once; a prompt scored (score_prompt, nothing generated) gets
 * the bits its tokens got when they were generated, top-N included. Kept small: the CPU
 * backend runs a few tokens a second on 2 cores. */
#include "model_fixture.h"

enum { NPRED = 6, NBG = 6, TOP = 3 };
static const char *const subject = "The capital of France is";
static const char *const bg[NBG] = {"Water boils at", "List three colors:", "Hello", "def f(x):", "Once upon a time",
                                    "Dear Sir,"};

typedef struct live {
    di_request r[2 + NBG];
    int32_t *ids[2 + NBG];
    int done[2 + NBG];
} live;

static void on_done(void *ctx, di_request *r)
{
    live *L = ctx;
    L->done[r - L->r]++;
}

static void prepare(fixture *f, di_request *r, int32_t **ids, const char *text, int n_predict, float temp)
{
    size_t len;
    di_err e = {0};
    cr_assert_eq(di_tokenize(f->tok, text, strlen(text), false, ids, &len, &e), 0, "%s", e.msg);
    *r = (di_request){.prompt = *ids, .n_prompt = (int)len, .n_predict = n_predict,
                      .sampler = {.temp = temp, .top_k = 40, .top_p = 0.95f, .seed = 77}, .top_n = TOP};
}

static void alone(fixture *f, float temp, uint8_t want[32])
{
    di_request r;
    int32_t *ids;
    prepare(f, &r, &ids, subject, NPRED, temp);
    di_engine_opts o = {.max_batch_tokens = 64, .max_seqs = 1};
    di_err e = {0};
    cr_assert_eq(di_engine_run(f->m, (di_request *[]){&r}, 1, &o, NULL, &e), 0, "%s", e.msg);
    cr_assert_eq(r.n_gen, NPRED);
    memcpy(want, r.digest, 32);
    di_request_release(&r);
    free(ids);
}

Test(engine_live, subject_same_when_submitted_at_random_steps_among_cancels, .timeout = 600)
{
    NEED_MODEL();
    fixture f = fixture_open(1, 64, 64, 8);
    uint8_t want[2][32];
    alone(&f, 0.0f, want[0]);
    alone(&f, 0.8f, want[1]);

    live *L = calloc(1, sizeof *L);
    /* request 0 greedy subject, 1 sampled subject, 2.. background; each at a seeded random step */
    long at[2 + NBG];
    for (int i = 0; i < 2 + NBG; i++) {
        if (i < 2) prepare(&f, &L->r[i], &L->ids[i], subject, NPRED, i ? 0.8f : 0.0f);
        else prepare(&f, &L->r[i], &L->ids[i], bg[i - 2], 4, 0.8f);
        at[i] = (long)(di_uniform(2026, (uint64_t)i, 0) * 10);
    }
    const int victim = 3;     /* cancelled two steps after it was admitted */
    di_engine_opts o = {.max_batch_tokens = 64, .max_seqs = 8, .prefix_cache = true, .on_done = on_done, .ctx = L};
    di_engine *eng;
    di_err e = {0};
    cr_assert_eq(di_engine_open(f.m, &o, &eng, &e), 0, "%s", e.msg);
    int submitted = 0, victim_steps = -1;
    bool busy = true;
    for (long step = 0; (busy || submitted < 2 + NBG) && step < 200; step++) {
        for (int i = 0; i < 2 + NBG; i++)
            if (at[i] == step) {
                cr_assert_eq(di_engine_submit(eng, &L->r[i], &e), 0, "%s", e.msg);
                submitted++;
            }
        /* (a request's slot means something only once it is submitted) */
        if (at[victim] < step && L->done[victim] == 0 && L->r[victim].slot >= 0 && ++victim_steps == 2) {
            di_engine_info before, after;
            di_engine_get_info(eng, &before);
            int held = L->r[victim].n_blocks;
            cr_assert_gt(held, 0);
            cr_assert(di_engine_cancel(eng, &L->r[victim]));
            di_engine_get_info(eng, &after);
            cr_assert_eq(L->r[victim].finish, DI_DONE_CANCEL);
            cr_assert_eq(L->done[victim], 1, "the cancel was not reported at once");
            cr_assert_eq(after.blocks_held, before.blocks_held - held, "held %d -> %d, the victim had %d",
                         before.blocks_held, after.blocks_held, held);
            cr_assert_eq(after.running, before.running - 1);
            cr_assert(!di_engine_cancel(eng, &L->r[victim]), "a second cancel found the request again");
        }
        cr_assert_eq(di_engine_step(eng, &busy, &e), 0, "%s", e.msg);
    }
    cr_assert_eq(submitted, 2 + NBG);
    cr_assert_eq(L->r[victim].finish, DI_DONE_CANCEL, "the victim was never cancelled");
    cr_assert(!busy, "the engine did not drain");
    di_engine_info end;
    di_engine_get_info(eng, &end);
    cr_assert_eq(end.blocks_held, 0, "%d blocks still held", end.blocks_held);
    di_engine_close(eng, NULL);
    for (int i = 0; i < 2 + NBG; i++) {
        cr_assert_eq(L->done[i], 1, "request %d reported %d times", i, L->done[i]);
        if (i != victim) cr_assert_neq(L->r[i].finish, DI_RUNNING);
        if (i < 2) cr_assert(memcmp(L->r[i].digest, want[i], 32) == 0, "%s subject submitted at step %ld differs from alone",
                             i ? "sampled" : "greedy", at[i]);
        di_request_release(&L->r[i]);
        free(L->ids[i]);
    }
    free(L);
    fixture_close(&f);
}

/* Generate greedily with top-3, then score prompt + completion with nothing to generate: the
 * completion positions' log-probs and top-3 are the same bits (prefill = decode). */
Test(engine_live, scored_prompt_equals_generated_logprobs, .timeout = 300)
{
    NEED_MODEL();
    fixture f = fixture_open(1, 64, 16, 2);
    di_request g, s;
    int32_t *ids;
    prepare(&f, &g, &ids, subject, NPRED, 0.0f);
    di_engine_opts o = {.max_batch_tokens = 64, .max_seqs = 2};
    di_err e = {0};
    cr_assert_eq(di_engine_run(f.m, (di_request *[]){&g}, 1, &o, NULL, &e), 0, "%s", e.msg);
    cr_assert_eq(g.n_gen, NPRED);
    for (int i = 0; i < NPRED; i++) {
        cr_assert_eq(g.top_id[i * TOP], g.tokens[i], "greedy token %d is not the top-1", i);
        cr_assert(memcmp(&g.top_lp[i * TOP], &g.logprobs[i], 4) == 0);
    }
    int n = g.n_prompt + g.n_gen;
    int32_t *all = malloc(sizeof *all * (size_t)n);
    memcpy(all, g.prompt, sizeof *all * (size_t)g.n_prompt);
    memcpy(all + g.n_prompt, g.tokens, sizeof *all * (size_t)g.n_gen);
    s = (di_request){.prompt = all, .n_prompt = n, .n_predict = 0, .score_prompt = true, .top_n = TOP, .chunk = 4};
    cr_assert_eq(di_engine_run(f.m, (di_request *[]){&s}, 1, &o, NULL, &e), 0, "%s", e.msg);
    cr_assert_eq(s.n_gen, 0);
    cr_assert_eq(s.finish, DI_DONE_LENGTH);
    for (int i = 0; i < NPRED; i++) {
        int pos = g.n_prompt - 1 + i;   /* prompt_lp[pos]: log-prob of all[pos + 1] */
        uint32_t a, b;
        memcpy(&a, &s.prompt_lp[pos], 4);
        memcpy(&b, &g.logprobs[i], 4);
        cr_assert_eq(a, b, "token %d: scored %08x, generated %08x", i, a, b);
        cr_assert(memcmp(&s.prompt_top_lp[pos * TOP], &g.top_lp[i * TOP], 4 * TOP) == 0, "token %d: top-3 log-probs differ", i);
        cr_assert(memcmp(&s.prompt_top_id[pos * TOP], &g.top_id[i * TOP], 4 * TOP) == 0, "token %d: top-3 ids differ", i);
    }
    di_request_release(&g);
    di_request_release(&s);
    free(all);
    free(ids);
    fixture_close(&f);
}
