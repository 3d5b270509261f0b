/* Speculative decoding changes no bit. Every request is run twice, speculation off and on, and
 * must give the same tokens, the same log-prob bits (and top-N), the same finish and the same
 * streamed tokens: alone, greedy and seeded T = 0.8, with chunked prefill, over the prefix
 * cache (blocks registered while drafts were being rejected), in a loaded batch with arrivals,
 * under forced preemption, at stop ids, stop callbacks and max_tokens, drafting by prompt
 * lookup and by a draft model. The coverage is asserted, not hoped for: per configuration at
 * least 1,000 generated tokens, a rejection at every draft position 0..K-1 and some full
 * accepts (engine stats reject_at / full_accepts).
 *
 * Most of it runs a random tiny model (perf/make_random_gguf --shape tiny, fixed seeds) made
 * at the start of each test: 2 layers of 128, so thousands of tokens take seconds. Its lm head
 * has std 0.4 (--head-std) so that its next-token distributions are peaked: greedy text falls
 * into loops and sampled text repeats often enough for drafts to be both kept and rejected. The
 * real models (SmolLM2, Gemma 3 270M) get a short run on repeating text. DETINFER_TEST_BACKEND
 * and DETINFER_TEST_PROFILE pick the GPU and its profile, as for the other model suites. */
#include "model_fixture.h"
#include "model/draft.h"
#include "server/api.h"
#include <sys/wait.h>

/* ---- prompt lookup alone ---------------------------------------------------------------------- */

static int lookup(const int32_t *a, int na, const int32_t *b, int nb, int nmin, int nmax, int max, int32_t *out)
{
    return di_draft_lookup(a, na, b, nb, nmin, nmax, max, out);
}

Test(spec, lookup_takes_the_longest_ngram_and_its_latest_occurrence)
{
    /* ... 1 2 3 9 ... 5 2 3 7 ... 2 3 | last: 2 3. The 2-gram "2 3" last occurred before "7";
     * the 3-gram "x 2 3" with x = 4 (the sequence's) occurred once, before "8" */
    int32_t a[] = {4, 2, 3, 8, 1, 2, 3, 9, 5, 2, 3, 7, 6}, b[] = {4, 2, 3}, out[8];
    cr_assert_eq(lookup(a, 13, b, 3, 1, 3, 2, out), 2);
    cr_assert(out[0] == 8 && out[1] == 1, "the 3-gram 4 2 3 is followed by 8 1, got %d %d", out[0], out[1]);
    cr_assert_eq(lookup(a, 13, b, 3, 1, 2, 3, out), 3);
    cr_assert(out[0] == 7 && out[1] == 6 && out[2] == 4, "the latest 2 3 is followed by 7 6 4, got %d %d %d", out[0],
              out[1], out[2]);
    /* the draft stops at max, and only n-grams in [ngram_min, ngram_max] count */
    cr_assert_eq(lookup(a, 13, b, 3, 1, 2, 1, out), 1);
    int32_t c[] = {1, 2, 3, 4, 5, 6, 3};
    cr_assert_eq(lookup(c, 7, NULL, 0, 2, 3, 4, out), 0, "no 2-gram ending the sequence occurred before");
    cr_assert_eq(lookup(c, 7, NULL, 0, 1, 3, 2, out), 2);
    cr_assert(out[0] == 4 && out[1] == 5);
}

Test(spec, lookup_copies_into_its_own_draft)
{
    /* a loop of period 2 drafts on past the end of the text: 7 8 7 8 7 8 | 7 8 7 8 */
    int32_t a[] = {1, 7, 8, 7}, b[] = {8, 7, 8}, out[8];
    cr_assert_eq(lookup(a, 4, b, 3, 1, 3, 6, out), 6);
    for (int i = 0; i < 6; i++) cr_assert_eq(out[i], i % 2 ? 8 : 7, "draft %d is %d", i, out[i]);
    /* a sequence shorter than any n-gram, and one token alone, draft nothing */
    cr_assert_eq(lookup(a, 1, NULL, 0, 1, 3, 4, out), 0);
    cr_assert_eq(lookup((int32_t[]){5, 5}, 2, NULL, 0, 1, 3, 4, out), 4);
    for (int i = 0; i < 4; i++) cr_assert_eq(out[i], 5);
}

Test(spec, options_are_checked)
{
    cr_assert_null(di_draft_check(&(di_draft_opts){4, 3, 1, false}));
    cr_assert_null(di_draft_check(&(di_draft_opts){16, 16, 16, false}));
    cr_assert_null(di_draft_check(&(di_draft_opts){4, 0, 0, true}), "a draft model needs no n-gram lengths");
    cr_assert_not_null(di_draft_check(&(di_draft_opts){17, 3, 1, false}));
    cr_assert_not_null(di_draft_check(&(di_draft_opts){-1, 3, 1, false}));
    cr_assert_not_null(di_draft_check(&(di_draft_opts){4, 1, 2, false}));
    cr_assert_not_null(di_draft_check(&(di_draft_opts){4, 17, 1, false}));
    cr_assert_not_null(di_draft_check(&(di_draft_opts){4, 3, 0, false}));
}

/* ---- the tiny random model ------------------------------------------------------------------ */

enum { MAXGEN = 256, TOPN = 3, MAXR = 16, K = 4 };

typedef struct tiny {
    di_rt *rt;
    di_model *m, *draft;
    char path[64], dpath[64];
} tiny;

/* make_random_gguf ARGS into a fresh temporary file */
static void make_model(char path[64], const char *args)
{
    snprintf(path, 64, "/tmp/detinfer-spec-XXXXXX.gguf");
    int fd = mkstemps(path, 5);
    cr_assert(fd >= 0);
    close(fd);
    char cmd[512];
    snprintf(cmd, sizeof cmd, DI_BUILD_DIR "/make_random_gguf %s --shape tiny %s --quiet", path, args);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
}

static const char *const target_args = "--seed 1 --head-std 0.4";

/* The target and, with draft_args, a draft model, loaded like the target. The backend and
 * profile come from the environment, as in model_fixture.h. */
static tiny tiny_open(int max_batch_tokens, int kv_blocks, int max_seqs, const char *draft_args)
{
    tiny t = {0};
    di_err e = {0};
    const char *b = getenv("DETINFER_TEST_BACKEND"), *pr = getenv("DETINFER_TEST_PROFILE");
    bool cuda = b && !strcmp(b, "cuda");
    di_rt_opts ro = {.backend = cuda ? DI_BACKEND_CUDA : DI_BACKEND_C, .threads = 1, .profile = DI_PROFILE_EXACT};
    if (cuda && pr && *pr) cr_assert(di_profile_parse(pr, &ro.profile), "DETINFER_TEST_PROFILE=%s is no profile", pr);
    cr_assert_eq(di_rt_open(&ro, &t.rt, &e), 0, "runtime: %s", e.msg);
    make_model(t.path, target_args);
    di_model_opts o = {.max_batch_tokens = max_batch_tokens, .ctx = 512, .kv_blocks = kv_blocks, .max_seqs = max_seqs};
    cr_assert_eq(di_model_load(t.path, t.rt, &o, &t.m, &e), 0, "%s", e.msg);
    if (draft_args) {
        make_model(t.dpath, draft_args);
        di_model_opts d = {.max_batch_tokens = max_batch_tokens, .ctx = 512, .kv_blocks = max_seqs * 16, .max_seqs = max_seqs};
        cr_assert_eq(di_model_load(t.dpath, t.rt, &d, &t.draft, &e), 0, "%s", e.msg);
    }
    return t;
}

static void tiny_close(tiny *t)
{
    di_model_free(t->draft);
    di_model_free(t->m);
    di_rt_close(t->rt);
    unlink(t->path);
    if (t->dpath[0]) unlink(t->dpath);
}

/* Prompts of token ids (vocab 512): loops, an edited passage, random text. */
enum { NPROMPTS = 8, MAXPROMPT = 160 };
typedef struct prompt { int32_t id[MAXPROMPT]; int n; } prompt;

static uint64_t mix(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static int32_t rnd_id(uint64_t seed, int i) { return (int32_t)(mix(seed * 1000003u + (uint64_t)i + 1) % 509) + 3; }

static void make_prompts(prompt p[NPROMPTS])
{
    /* 0: a loop of period 5; 1: random; 2: a 20-token passage, then it again with two tokens
     * changed (an edit); 3: period 3; 4: random, 70 tokens (two full KV blocks and a tail);
     * 5: 4's first 64 tokens, then other text (a prefix-cache hit); 6: short random; 7: a long
     * passage of 40 twice (the prefill crosses blocks) */
    for (int i = 0; i < 40; i++) p[0].id[i] = (int32_t[]){17, 42, 99, 300, 7}[i % 5];
    p[0].n = 40;
    for (int i = 0; i < 37; i++) p[1].id[i] = rnd_id(1, i);
    p[1].n = 37;
    for (int i = 0; i < 20; i++) p[2].id[i] = p[2].id[20 + i] = rnd_id(2, i);
    p[2].id[27] = 5;
    p[2].id[33] = 6;
    p[2].n = 40;
    for (int i = 0; i < 36; i++) p[3].id[i] = (int32_t[]){250, 11, 480}[i % 3];
    p[3].n = 36;
    for (int i = 0; i < 70; i++) p[4].id[i] = rnd_id(4, i);
    p[4].n = 70;
    for (int i = 0; i < 64; i++) p[5].id[i] = p[4].id[i];
    for (int i = 64; i < 80; i++) p[5].id[i] = rnd_id(5, i);
    p[5].n = 80;
    for (int i = 0; i < 5; i++) p[6].id[i] = rnd_id(6, i);
    p[6].n = 5;
    for (int i = 0; i < 40; i++) p[7].id[i] = p[7].id[40 + i] = rnd_id(7, i);
    p[7].n = 80;
}

/* One request of a scenario. */
typedef struct req_def {
    const int32_t *prompt;
    int n_prompt, n_predict, chunk, top_n;
    float temp;
    uint64_t seed, rng_id;
    long arrival;
    bool no_spec;             /* this one never speculates (a plain request beside speculating ones) */
    int draft_max;            /* 0: the run's */
} req_def;

typedef struct outcome {
    int n_gen, finish, streamed, prefix_hit;
    int32_t tokens[MAXGEN];
    uint32_t bits[MAXGEN];
    float top_lp[MAXGEN * TOPN];
    int32_t top_id[MAXGEN * TOPN];
} outcome;

/* How an engine run is set up. */
typedef struct setup {
    int max_batch_tokens, max_seqs;
    bool prefix_cache;
    const int32_t *stop_ids;
    int n_stop;
    bool (*halt)(void *ctx, const di_request *r);
    bool may_not_draft;       /* (a stop may come before any draft) */
} setup;

typedef struct run_ctx { di_request *r; int n, streamed[MAXR]; } run_ctx;

static void count_token(void *ctx, const di_request *r, int32_t t)
{
    (void)t;
    run_ctx *c = ctx;
    for (int i = 0; i < c->n; i++)
        if (r == &c->r[i]) c->streamed[i]++;
}

static void fill_request(di_request *r, const req_def *d, const di_draft_opts *spec)
{
    *r = (di_request){.prompt = d->prompt, .n_prompt = d->n_prompt, .n_predict = d->n_predict, .chunk = d->chunk,
                      .top_n = d->top_n, .sampler = {d->temp, 40, 0.95f, d->seed}, .rng_id = d->rng_id,
                      .arrival_step = d->arrival};
    if (spec && !d->no_spec) {
        r->draft = *spec;
        if (d->draft_max) r->draft.draft_max = d->draft_max;
    }
}

static void keep(outcome *o, const di_request *r, int streamed)
{
    o->n_gen = r->n_gen;
    o->finish = r->finish;
    o->streamed = streamed;
    o->prefix_hit = r->prefix_hit_tokens;
    cr_assert_leq(r->n_gen, MAXGEN);
    memcpy(o->tokens, r->tokens, sizeof(int32_t) * (size_t)r->n_gen);
    memcpy(o->bits, r->logprobs, 4 * (size_t)r->n_gen);
    if (r->top_n) {
        memcpy(o->top_lp, r->top_lp, 4 * (size_t)r->n_gen * r->top_n);
        memcpy(o->top_id, r->top_id, 4 * (size_t)r->n_gen * r->top_n);
    }
}

/* The requests in one engine (speculation as spec says, NULL: off); outcomes and stats out. */
static void run_all(di_model *m, di_model *draft, const setup *s, const req_def *defs, int n, const di_draft_opts *spec,
                    outcome *out, di_engine_stats *st)
{
    di_request r[MAXR];
    di_request *rp[MAXR];
    run_ctx c = {.r = r, .n = n};
    for (int i = 0; i < n; i++) {
        fill_request(&r[i], &defs[i], spec);
        rp[i] = &r[i];
    }
    di_engine_opts o = {.max_batch_tokens = s->max_batch_tokens, .max_seqs = s->max_seqs, .prefix_cache = s->prefix_cache,
                        .stop_ids = s->stop_ids, .n_stop = s->n_stop, .on_token = count_token, .halt = s->halt, .ctx = &c,
                        .draft_model = spec && spec->model ? draft : NULL};
    di_err e = {0};
    cr_assert_eq(di_engine_run(m, rp, n, &o, st, &e), 0, "%s", e.msg);
    for (int i = 0; i < n; i++) {
        cr_assert_neq(r[i].finish, DI_RUNNING, "request %d never finished", i);
        keep(&out[i], &r[i], c.streamed[i]);
        di_request_release(&r[i]);
    }
}

static void expect_equal(const outcome *a, const outcome *b, int top_n, const char *what, int i)
{
    cr_assert_eq(a->n_gen, b->n_gen, "%s, request %d: %d tokens without speculation, %d with", what, i, a->n_gen, b->n_gen);
    cr_assert_eq(a->finish, b->finish, "%s, request %d: finish %d vs %d", what, i, a->finish, b->finish);
    for (int t = 0; t < a->n_gen; t++) {
        cr_assert_eq(a->tokens[t], b->tokens[t], "%s, request %d, token %d: %d without speculation, %d with", what, i, t,
                     a->tokens[t], b->tokens[t]);
        cr_assert_eq(a->bits[t], b->bits[t], "%s, request %d, token %d: log-prob bits %08x vs %08x", what, i, t, a->bits[t],
                     b->bits[t]);
    }
    if (top_n) {
        size_t n = (size_t)a->n_gen * top_n;
        cr_assert(!memcmp(a->top_lp, b->top_lp, 4 * n) && !memcmp(a->top_id, b->top_id, 4 * n), "%s, request %d: top-%d differ",
                  what, i, top_n);
    }
    cr_assert_eq(a->streamed, a->n_gen, "%s, request %d: %d tokens streamed, %d generated", what, i, a->streamed, a->n_gen);
    cr_assert_eq(b->streamed, b->n_gen, "%s, request %d: %d tokens streamed with speculation, %d generated", what, i,
                 b->streamed, b->n_gen);
}

/* What the speculating runs of a configuration saw. */
typedef struct coverage { long tokens, drafted, accepted, reject_at[DI_DRAFT_MAX], full, preemptions, hits; } coverage;

static void add_coverage(coverage *c, const di_engine_stats *st)
{
    c->tokens += st->gen_tokens;
    c->drafted += st->drafted;
    c->accepted += st->draft_accepted;
    for (int j = 0; j < DI_DRAFT_MAX; j++) c->reject_at[j] += st->reject_at[j];
    c->full += st->full_accepts;
    c->preemptions += st->preemptions;
    c->hits += st->prefix_hit_tokens;
}

static void expect_coverage(const coverage *c, int k, long min_tokens, const char *what)
{
    cr_log_info("%s: %ld tokens, %ld drafted, %ld kept; first rejection at draft 0..%d: %ld %ld %ld %ld; %ld full accepts; "
                "%ld preemptions; %ld prefix-cache tokens", what, c->tokens, c->drafted, c->accepted, k - 1, c->reject_at[0],
                c->reject_at[1], c->reject_at[2], c->reject_at[3], c->full, c->preemptions, c->hits);
    cr_assert_geq(c->tokens, min_tokens, "%s: only %ld tokens generated", what, c->tokens);
    for (int j = 0; j < k; j++) cr_assert_gt(c->reject_at[j], 0, "%s: no verification was first rejected at draft %d", what, j);
    cr_assert_gt(c->full, 0, "%s: no verification kept all %d drafts", what, k);
}

/* Runs defs without speculation and with spec; every request must match. on_out (or NULL)
 * gets the speculating run's outcomes. */
static void check_out(tiny *t, const setup *s, const req_def *defs, int n, const di_draft_opts *spec, coverage *cov,
                      const char *what, outcome *on_out)
{
    outcome *off = calloc(MAXR, sizeof *off), *on = on_out ? on_out : calloc(MAXR, sizeof *on);
    di_engine_stats st_off, st_on;
    run_all(t->m, t->draft, s, defs, n, NULL, off, &st_off);
    run_all(t->m, t->draft, s, defs, n, spec, on, &st_on);
    for (int i = 0; i < n; i++) expect_equal(&off[i], &on[i], defs[i].top_n, what, i);
    cr_assert_eq(st_off.drafted, 0);
    if (!s->may_not_draft) cr_assert_gt(st_on.drafted, 0, "%s: nothing was drafted", what);
    /* speculation that kept drafts took fewer steps than plain decoding */
    if (st_on.draft_accepted > 0) cr_assert_lt(st_on.decode_slots, st_off.decode_slots, "%s: no step saved", what);
    add_coverage(cov, &st_on);
    free(off);
    if (!on_out) free(on);
}

static void check(tiny *t, const setup *s, const req_def *defs, int n, const di_draft_opts *spec, coverage *cov,
                  const char *what)
{
    check_out(t, s, defs, n, spec, cov, what, NULL);
}

static const di_draft_opts lookup_k4 = {.draft_max = K, .ngram_max = 3, .ngram_min = 1};
static const float temps[2] = {0.0f, 0.8f};
static const char *const temp_name[2] = {"greedy", "T = 0.8"};

/* Each prompt alone, 200 tokens, top-3 log-probs kept, two seeds when sampled. */
Test(spec, tiny_alone_equals_plain_decoding, .timeout = 300)
{
    tiny t = tiny_open(64, 64, 4, NULL);
    prompt p[NPROMPTS];
    make_prompts(p);
    setup s = {.max_batch_tokens = 64, .max_seqs = 4};
    for (int k = 0; k < 2; k++) {
        coverage cov = {0};
        for (int i = 0; i < NPROMPTS; i++) {
            req_def d = {.prompt = p[i].id, .n_prompt = p[i].n, .n_predict = 200, .top_n = TOPN, .temp = temps[k],
                         .seed = 1234 + (uint64_t)i};
            char what[64];
            snprintf(what, sizeof what, "%s, prompt %d alone", temp_name[k], i);
            check(&t, &s, &d, 1, &lookup_k4, &cov, what);
        }
        expect_coverage(&cov, K, 1000, temp_name[k]);
    }
    tiny_close(&t);
}

/* Prefill in chunks of 1, 7 and 64 tokens, with 4 requests at once and a 20-row step budget:
 * drafts get what the chunks leave, often fewer than K. */
Test(spec, tiny_chunked_prefill_equals_plain_decoding, .timeout = 300)
{
    tiny t = tiny_open(20, 64, 4, NULL);
    prompt p[NPROMPTS];
    make_prompts(p);
    setup s = {.max_batch_tokens = 20, .max_seqs = 4};
    const int chunks[3] = {1, 7, 64};
    for (int k = 0; k < 2; k++) {
        coverage cov = {0};
        for (int c = 0; c < 3; c++) {
            req_def d[4];
            for (int i = 0; i < 4; i++)
                d[i] = (req_def){.prompt = p[(c + 2 * i) % NPROMPTS].id, .n_prompt = p[(c + 2 * i) % NPROMPTS].n,
                                 .n_predict = 100, .chunk = chunks[c], .temp = temps[k], .seed = 99, .rng_id = (uint64_t)i,
                                 .arrival = 3 * i};
            char what[64];
            snprintf(what, sizeof what, "%s, chunk %d", temp_name[k], chunks[c]);
            check(&t, &s, d, 4, &lookup_k4, &cov, what);
        }
        expect_coverage(&cov, K, 1000, temp_name[k]);
    }
    tiny_close(&t);
}

/* The prefix cache over speculation: a request decodes with drafts, its blocks registered while
 * drafts were rejected around them; then requests whose prompts are its prompt plus its
 * generated text hit those blocks. They must give what they give cold, without the cache and
 * without speculation: a block holding a rejected draft's KV would show. */
static void cached_followers(tiny *t, float temp, coverage *cov)
{
    prompt p[NPROMPTS];
    make_prompts(p);
    enum { NF = 4 };
    di_request fr[NF];
    run_ctx c = {.r = fr, .n = NF};
    di_engine_opts o = {.max_batch_tokens = 64, .max_seqs = 4, .prefix_cache = true, .on_token = count_token, .ctx = &c};
    di_engine *e;
    di_err err = {0};
    cr_assert_eq(di_engine_open(t->m, &o, &e, &err), 0, "%s", err.msg);
    di_request lead;
    req_def ld = {.prompt = p[4].id, .n_prompt = p[4].n, .n_predict = 200, .temp = temp, .seed = 5};
    fill_request(&lead, &ld, &lookup_k4);
    cr_assert_eq(di_engine_submit(e, &lead, &err), 0, "%s", err.msg);
    for (bool busy = true; busy;) cr_assert_eq(di_engine_step(e, &busy, &err), 0, "%s", err.msg);
    cr_assert_eq(lead.n_gen, 200);
    /* followers: the lead's prompt and its first g generated tokens, then 150 tokens of their own */
    const int cut[NF] = {30, 61, 99, 160};
    int32_t *fp[NF];
    req_def fd[NF];
    for (int i = 0; i < NF; i++) {
        fp[i] = malloc(sizeof(int32_t) * (size_t)(p[4].n + cut[i]));
        memcpy(fp[i], p[4].id, sizeof(int32_t) * (size_t)p[4].n);
        memcpy(fp[i] + p[4].n, lead.tokens, sizeof(int32_t) * (size_t)cut[i]);
        fd[i] = (req_def){.prompt = fp[i], .n_prompt = p[4].n + cut[i], .n_predict = 150, .top_n = TOPN, .temp = temp,
                          .seed = 6, .rng_id = (uint64_t)i};
    }
    for (int i = 0; i < NF; i++) {
        fill_request(&fr[i], &fd[i], &lookup_k4);
        cr_assert_eq(di_engine_submit(e, &fr[i], &err), 0, "%s", err.msg);
    }
    for (bool busy = true; busy;) cr_assert_eq(di_engine_step(e, &busy, &err), 0, "%s", err.msg);
    di_engine_stats st;
    di_engine_close(e, &st);
    add_coverage(cov, &st);
    /* the same followers cold: no cache, no speculation, one engine */
    outcome *cold = calloc(NF, sizeof *cold), hot;
    setup s = {.max_batch_tokens = 64, .max_seqs = 4};
    di_engine_stats st_cold;
    run_all(t->m, NULL, &s, fd, NF, NULL, cold, &st_cold);
    for (int i = 0; i < NF; i++) {
        keep(&hot, &fr[i], c.streamed[i]);
        cr_assert_geq(hot.prefix_hit, (p[4].n + cut[i] - 1) / 32 * 32, "follower %d: %d positions from the cache", i, hot.prefix_hit);
        expect_equal(&cold[i], &hot, TOPN, temp > 0 ? "sampled follower" : "greedy follower", i);
        di_request_release(&fr[i]);
        free(fp[i]);
    }
    di_request_release(&lead);
    free(cold);
}

Test(spec, tiny_prefix_cache_registers_no_rejected_kv, .timeout = 300)
{
    tiny t = tiny_open(64, 64, 4, NULL);
    prompt p[NPROMPTS];
    make_prompts(p);
    for (int k = 0; k < 2; k++) {
        coverage cov = {0};
        cached_followers(&t, temps[k], &cov);
        /* and requests that share prompt blocks (prompts 4 and 5, 7 twice), speculating, cache on */
        setup s = {.max_batch_tokens = 64, .max_seqs = 4, .prefix_cache = true};
        req_def d[4] = {
            {.prompt = p[4].id, .n_prompt = p[4].n, .n_predict = 120, .temp = temps[k], .seed = 8},
            {.prompt = p[5].id, .n_prompt = p[5].n, .n_predict = 120, .temp = temps[k], .seed = 8, .arrival = 4},
            {.prompt = p[7].id, .n_prompt = p[7].n, .n_predict = 120, .temp = temps[k], .seed = 8, .arrival = 1},
            {.prompt = p[7].id, .n_prompt = p[7].n, .n_predict = 120, .temp = temps[k], .seed = 8, .rng_id = 1, .arrival = 30},
        };
        check(&t, &s, d, 4, &lookup_k4, &cov, temp_name[k]);
        cr_assert_gt(cov.hits, 0, "no prefix-cache hit");
        expect_coverage(&cov, K, 1000, temp_name[k]);
    }
    tiny_close(&t);
}

/* 12 requests through 8 slots and a 24-row budget, seeded arrivals, mixed temperatures, some
 * with K = 2 and some plain among the speculating ones, the cache on; and the subject (request
 * 0) equals itself alone without speculation. */
static void loaded(tiny *t, const di_draft_opts *spec, int k_temp, coverage *cov, const char *what)
{
    prompt p[NPROMPTS];
    make_prompts(p);
    setup s = {.max_batch_tokens = 24, .max_seqs = 8, .prefix_cache = true};
    req_def d[12];
    for (int i = 0; i < 12; i++) {
        int w = (i * 5) % NPROMPTS;
        d[i] = (req_def){.prompt = p[w].id, .n_prompt = p[w].n, .n_predict = 80 + 10 * (i % 4), .chunk = i % 3 ? 0 : 16,
                         .temp = i == 0 ? temps[k_temp] : temps[(i + k_temp) % 2], .seed = 21, .rng_id = (uint64_t)i,
                         .arrival = (long)(mix((uint64_t)i + 77) % 40), .no_spec = i % 6 == 5, .draft_max = i % 4 == 3 ? 2 : 0};
    }
    d[0].arrival = 10;
    outcome *alone = calloc(1, sizeof *alone), *batch = calloc(MAXR, sizeof *batch);
    check_out(t, &s, d, 12, spec, cov, what, batch);
    di_engine_stats st;
    setup s1 = {.max_batch_tokens = 24, .max_seqs = 1};
    run_all(t->m, t->draft, &s1, d, 1, NULL, alone, &st);
    expect_equal(alone, batch, 0, "the subject speculating in the loaded batch vs alone without", 0);
    free(alone);
    free(batch);
}

Test(spec, tiny_loaded_batch_equals_plain_decoding, .timeout = 300)
{
    tiny t = tiny_open(24, 128, 8, NULL);
    for (int k = 0; k < 2; k++) {
        coverage cov = {0};
        loaded(&t, &lookup_k4, k, &cov, temp_name[k]);
        expect_coverage(&cov, K, 1000, temp_name[k]);
    }
    tiny_close(&t);
}

/* A 9-block pool for 6 requests of 3..6 blocks: running requests run dry, the newest is
 * preempted (dropping its rejected drafts' blocks with the rest) and recomputed. */
Test(spec, tiny_preemption_equals_plain_decoding, .timeout = 300)
{
    tiny t = tiny_open(64, 9, 6, NULL);
    prompt p[NPROMPTS];
    make_prompts(p);
    setup s = {.max_batch_tokens = 64, .max_seqs = 6, .prefix_cache = true};
    for (int k = 0; k < 2; k++) {
        coverage cov = {0};
        for (int rep = 0; rep < 3; rep++) {
            req_def d[6];
            for (int i = 0; i < 6; i++)
                d[i] = (req_def){.prompt = p[(i + rep) % NPROMPTS].id, .n_prompt = p[(i + rep) % NPROMPTS].n,
                                 .n_predict = 60 + 20 * (i % 3), .chunk = 8, .temp = temps[k], .seed = 31 + (uint64_t)rep,
                                 .rng_id = (uint64_t)i};
            check(&t, &s, d, 6, &lookup_k4, &cov, temp_name[k]);
        }
        cr_assert_gt(cov.preemptions, 0, "the small pool forced no preemption");
        expect_coverage(&cov, K, 1000, temp_name[k]);
    }
    tiny_close(&t);
}

/* A draft model on its own KV: the target itself (its greedy drafts are kept while the target
 * is greedy, and often when it samples) and its first layer alone (a weaker guess). */
Test(spec, tiny_draft_model_equals_plain_decoding, .timeout = 300)
{
    const char *drafts[2] = {"--seed 1 --head-std 0.4", "--seed 1 --head-std 0.4 --layers 1"};
    const di_draft_opts model_k4 = {.draft_max = K, .model = true};
    for (int dm = 0; dm < 2; dm++) {
        /* the weak draft is an extra: two prompts alone */
        int prompts = dm == 0 ? 4 : 2;
        tiny t = tiny_open(24, 128, 8, drafts[dm]);
        prompt p[NPROMPTS];
        make_prompts(p);
        setup s = {.max_batch_tokens = 24, .max_seqs = 8};
        for (int k = 0; k < 2; k++) {
            char what[96];
            snprintf(what, sizeof what, "draft model %s, %s", drafts[dm], temp_name[k]);
            coverage alone = {0}, cov = {0};
            for (int i = 0; i < prompts; i++) {
                req_def d = {.prompt = p[i].id, .n_prompt = p[i].n, .n_predict = 150, .top_n = TOPN, .temp = temps[k], .seed = 41};
                check(&t, &s, &d, 1, &model_k4, &alone, what);
            }
            /* the target drafting for itself greedily is always right: its KV on the draft side
             * follows the sequence exactly (catch-up, drafts fed, rejected ones overwritten) */
            if (dm == 0 && k == 0)
                cr_assert(alone.accepted == alone.drafted && alone.full > 0, "%s: %ld of %ld drafts kept", what, alone.accepted,
                          alone.drafted);
            if (dm == 0) loaded(&t, &model_k4, k, &cov, what);
            cov.tokens += alone.tokens, cov.drafted += alone.drafted, cov.accepted += alone.accepted, cov.full += alone.full;
            for (int j = 0; j < DI_DRAFT_MAX; j++) cov.reject_at[j] += alone.reject_at[j];
            /* the 1-layer draft is rarely right 4 times running: full coverage from the target itself */
            if (dm == 0 && k == 1) expect_coverage(&cov, K, 1000, what);
            else {
                cr_log_info("%s: %ld tokens, %ld drafted, %ld kept, first rejections at 0: %ld, %ld full accepts", what,
                            cov.tokens, cov.drafted, cov.accepted, cov.reject_at[0], cov.full);
                cr_assert(cov.tokens >= (dm == 0 ? 1000 : 300) && (dm == 0 || cov.reject_at[0] > 0), "%s: %ld tokens", what,
                          cov.tokens);
            }
        }
        tiny_close(&t);
    }
}

/* The draft model's KV follows the sequence: the target drafting for itself proposes, at every
 * step and after every rejection, the target's own argmax at that position (white box: on_token
 * reads the step's drafts from the request's engine state; top-1 gives the row's argmax). A
 * draft KV left holding a rejected draft would propose something else. */
typedef struct follow { long checked, wrong; } follow;

static void check_draft_is_argmax(void *ctx, const di_request *r, int32_t t)
{
    (void)t;
    follow *f = ctx;
    int j = r->spec_hit;   /* this token comes from the row after j kept drafts */
    if (!r->spec_k || j >= r->spec_k) return;
    f->checked++;
    f->wrong += r->spec_tok[j] != r->top_id[r->n_gen - 1];
}

Test(spec, tiny_draft_model_kv_follows_the_sequence, .timeout = 300)
{
    tiny t = tiny_open(24, 128, 4, target_args);
    prompt p[NPROMPTS];
    make_prompts(p);
    follow f = {0};
    for (int k = 0; k < 2; k++) {
        di_request r[4];
        di_request *rp[4];
        for (int i = 0; i < 4; i++) {
            req_def d = {.prompt = p[i].id, .n_prompt = p[i].n, .n_predict = 150, .top_n = 1, .temp = temps[k], .seed = 61,
                         .rng_id = (uint64_t)i, .arrival = 5 * i};
            fill_request(&r[i], &d, &(di_draft_opts){.draft_max = K, .model = true});
            rp[i] = &r[i];
        }
        di_engine_opts o = {.max_batch_tokens = 24, .max_seqs = 4, .on_token = check_draft_is_argmax, .ctx = &f,
                            .draft_model = t.draft};
        di_engine_stats st;
        di_err e = {0};
        cr_assert_eq(di_engine_run(t.m, rp, 4, &o, &st, &e), 0, "%s", e.msg);
        for (int i = 0; i < 4; i++) di_request_release(&r[i]);
        if (k == 1) cr_assert_gt(st.drafted, st.draft_accepted, "sampling rejected no draft");
    }
    cr_log_info("%ld drafts checked against the target's argmax, %ld differ", f.checked, f.wrong);
    cr_assert_gt(f.checked, 500);
    cr_assert_eq(f.wrong, 0, "%ld of %ld drafts are not the target's argmax: the draft model's KV left the sequence", f.wrong,
                 f.checked);
    tiny_close(&t);
}

/* Ends: a stop id, a stop callback (a stop string over token ids) and max_tokens end the
 * request at the token plain decoding ends it at; drafted tokens after it are neither kept
 * nor streamed. */
static int32_t halt_a, halt_b;   /* halt after the pair (halt_a, halt_b), from the 31st token on */

static bool halt_on_pair(void *ctx, const di_request *r)
{
    (void)ctx;
    return r->n_gen > 30 && r->tokens[r->n_gen - 2] == halt_a && r->tokens[r->n_gen - 1] == halt_b;
}

Test(spec, tiny_stops_and_max_tokens_end_where_plain_decoding_does, .timeout = 300)
{
    tiny t = tiny_open(64, 64, 4, NULL);
    prompt p[NPROMPTS];
    make_prompts(p);
    setup s = {.max_batch_tokens = 64, .max_seqs = 4, .may_not_draft = true};
    coverage cov = {0};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 4; i++) {
            /* the ids the plain run makes at tokens 40 and 41 (they may come earlier too) */
            req_def d = {.prompt = p[i].id, .n_prompt = p[i].n, .n_predict = 120, .temp = temps[k], .seed = 51};
            outcome *o = calloc(1, sizeof *o);
            di_engine_stats st;
            run_all(t.m, NULL, &s, &d, 1, NULL, o, &st);
            int32_t stop = o->tokens[40];
            halt_a = o->tokens[60];
            halt_b = o->tokens[61];
            setup s_stop = s, s_halt = s;
            s_stop.stop_ids = &stop, s_stop.n_stop = 1;
            s_halt.halt = halt_on_pair;
            check(&t, &s_stop, &d, 1, &lookup_k4, &cov, "stop id");
            run_all(t.m, NULL, &s_stop, &d, 1, &lookup_k4, o, &st);
            cr_assert(o->finish == DI_DONE_EOS && o->n_gen <= 41 && o->tokens[o->n_gen - 1] == stop);
            check(&t, &s_halt, &d, 1, &lookup_k4, &cov, "stop callback");
            run_all(t.m, NULL, &s_halt, &d, 1, &lookup_k4, o, &st);
            cr_assert(o->finish == DI_DONE_STOP && o->n_gen > 30 && o->n_gen <= 62, "finish %d after %d tokens", o->finish,
                      o->n_gen);
            /* max_tokens of 1..6 around K */
            for (int n = 1; n <= 6; n++) {
                req_def dn = d;
                dn.n_predict = n;
                check(&t, &s, &dn, 1, &lookup_k4, &cov, "max_tokens");
            }
            free(o);
        }
    cr_log_info("stops: %ld tokens, %ld drafted, %ld kept", cov.tokens, cov.drafted, cov.accepted);
    cr_assert_gt(cov.accepted, 0, "no draft was kept before a stop");
    tiny_close(&t);
}

/* A request that asks for a draft model of an engine without one, or for bad lengths, is
 * refused at submission, naming it. */
Test(spec, bad_speculation_options_are_refused)
{
    tiny t = tiny_open(16, 8, 2, NULL);
    di_engine_opts o = {.max_batch_tokens = 16, .max_seqs = 2};
    di_engine *e;
    di_err err = {0};
    cr_assert_eq(di_engine_open(t.m, &o, &e, &err), 0, "%s", err.msg);
    int32_t ids[3] = {5, 6, 7};
    di_request r = {.prompt = ids, .n_prompt = 3, .n_predict = 4, .draft = {.draft_max = 4, .model = true}};
    cr_assert_eq(di_engine_submit(e, &r, &err), DI_EUSAGE);
    cr_assert(strstr(err.msg, "request 0") && strstr(err.msg, "draft model"), "%s", err.msg);
    r = (di_request){.prompt = ids, .n_prompt = 3, .n_predict = 4, .draft = {.draft_max = 4, .ngram_max = 2, .ngram_min = 3}};
    cr_assert_eq(di_engine_submit(e, &r, &err), DI_EUSAGE);
    cr_assert(strstr(err.msg, "request 1") && strstr(err.msg, "ngram_min"), "%s", err.msg);
    di_engine_close(e, NULL);
    tiny_close(&t);
}

/* ---- the real models: repeating text, short ---------------------------------------------------- */

/* Code with a repeated body: drafts from the prompt are often right. */
static const char *const code_prompt =
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n    return a * b\n\ndef";

static void real_model(const char *path, int n_predict, int max_seqs)
{
    fixture f = fixture_open_path(path, 2, 128, 64, max_seqs);
    int32_t *ids;
    size_t n;
    di_err e = {0};
    cr_assert_eq(di_tokenize_prompt(f.tok, code_prompt, strlen(code_prompt), false, &ids, &n, &e), 0, "%s", e.msg);
    tiny t = {.m = f.m};
    setup s = {.max_batch_tokens = 128, .max_seqs = max_seqs, .prefix_cache = true};
    coverage cov = {0};
    for (int k = 0; k < 2; k++) {
        /* the prompt alone, then twice beside each other (the second from the cache), chunked */
        req_def d[2] = {{.prompt = ids, .n_prompt = (int)n, .n_predict = n_predict, .top_n = 2, .temp = temps[k], .seed = 3},
                        {.prompt = ids, .n_prompt = (int)n, .n_predict = n_predict, .chunk = 7, .temp = temps[k], .seed = 3,
                         .rng_id = 1, .arrival = 2}};
        check(&t, &s, d, max_seqs, &lookup_k4, &cov, temp_name[k]);
    }
    cr_log_info("%s: %ld tokens, %ld drafted, %ld kept; first rejection at 0..3: %ld %ld %ld %ld; %ld full accepts", path,
                cov.tokens, cov.drafted, cov.accepted, cov.reject_at[0], cov.reject_at[1], cov.reject_at[2], cov.reject_at[3],
                cov.full);
    cr_assert_gt(cov.accepted, 0, "%s: no draft was kept", path);
    free(ids);
    fixture_close(&f);
}

Test(spec, smollm2_code_equals_plain_decoding, .timeout = 900)
{
    NEED_MODEL();
    real_model(model_path(), 24, 2);
}

Test(spec, gemma3_code_equals_plain_decoding, .timeout = 900)
{
    if (!gemma3_path()) cr_skip_test("DETINFER_GEMMA3 is not set (scripts/test fetches Gemma 3 270M)");
    real_model(gemma3_path(), 10, 1);
}

/* ---- serve: the request field, the server default, metrics ---------------------------------- */

/* "speculative" decodes into the request, each bad member named. */
Test(spec, serve_decodes_the_speculative_field)
{
    di_api_request q;
    di_api_error e = {0};
    const char *ok = "{\"prompt\":\"hi\",\"speculative\":{\"draft_max\":6,\"ngram\":4,\"ngram_min\":1,\"method\":\"ngram\"}}";
    cr_assert_eq(di_api_decode(DI_API_COMPLETION, ok, strlen(ok), 100, &q, &e), 0, "%s", e.message);
    cr_assert(q.spec_given && q.draft_max == 6 && q.ngram == 4 && q.ngram_min == 1 && !q.draft_model);
    di_api_request_free(&q);
    const char *dflt = "{\"prompt\":\"hi\",\"speculative\":{}}";
    cr_assert_eq(di_api_decode(DI_API_COMPLETION, dflt, strlen(dflt), 100, &q, &e), 0, "%s", e.message);
    cr_assert(q.spec_given && q.draft_max == 4 && q.ngram == 3 && q.ngram_min == 2);
    di_api_request_free(&q);
    const char *none = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}";
    cr_assert_eq(di_api_decode(DI_API_CHAT, none, strlen(none), 100, &q, &e), 0, "%s", e.message);
    cr_assert(!q.spec_given, "no field: the server's default");
    di_api_request_free(&q);
    static const struct { const char *body, *param; } bad[] = {
        {"{\"prompt\":\"hi\",\"speculative\":{\"draft_max\":17}}", "speculative.draft_max"},
        {"{\"prompt\":\"hi\",\"speculative\":{\"draft_max\":\"4\"}}", "speculative.draft_max"},
        {"{\"prompt\":\"hi\",\"speculative\":{\"ngram\":0}}", "speculative.ngram"},
        {"{\"prompt\":\"hi\",\"speculative\":{\"ngram\":2,\"ngram_min\":3}}", "speculative.ngram_min"},
        {"{\"prompt\":\"hi\",\"speculative\":{\"method\":\"medusa\"}}", "speculative.method"},
        {"{\"prompt\":\"hi\",\"speculative\":{\"num_speculative_tokens\":3}}", "speculative"},
        {"{\"prompt\":\"hi\",\"speculative\":true}", "speculative"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&e, 0, sizeof e);
        cr_assert_eq(di_api_decode(DI_API_COMPLETION, bad[i].body, strlen(bad[i].body), 100, &q, &e), 422, "%s", bad[i].body);
        cr_assert_str_eq(e.param, bad[i].param, "%s: param %s", bad[i].body, e.param);
    }
}

/* serve with --draft-max 4 on SmolLM2 (tests/server/drive.py spec): each request speculating
 * and not gives the same ids, bits, text, finish and usage, a stop string included; /metrics
 * counts the drafts. */
Test(spec, serve_answers_the_same_speculating_or_not, .timeout = 900)
{
    NEED_MODEL();
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "PYTHONPATH=%s/pydeps python3 %s/tests/server/drive.py spec --serve %s --generate %s --model '%s' --threads 1 2>&1",
             DI_BUILD_DIR, DI_SOURCE_DIR, DI_SERVE_PATH, DI_GENERATE_PATH, model_path());
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    static char out[1 << 16];
    size_t n = 0, k;
    while (n < sizeof out - 1 && (k = fread(out + n, 1, sizeof out - 1 - n, p)) > 0) n += k;
    for (char rest[4096]; fread(rest, 1, sizeof rest, p) > 0;) {}
    out[n] = 0;
    int st = pclose(p);
    if (strstr(out, "No module named 'openai'"))
        cr_assert_fail("the openai package is missing: scripts/test installs it (pip install --target build/pydeps openai)");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "drive.py spec failed:\n%s", out);
    cr_log_info("%s", out);
}
