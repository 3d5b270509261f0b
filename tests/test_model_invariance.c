/* The real model on the CPU, bitwise: a request's digest (generated ids + log-prob bits) is
 * the same alone, at any line of a batch of 8 different prompts, with any prefill chunk,
 * with 1 or 2 threads, greedy or seeded sampling; and the log-probs recorded while decoding
 * equal, bit for bit, those of the same tokens scored by one prefill. */
#include "model_fixture.h"

static const char *const prompts[8] = {
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village,",
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "List three colors:",
    "In 1969, the first person to walk on the Moon was",
    "Water boils at",
    "Translate to French: Good morning, my friend.",
};
enum { NPRED = 12 };

typedef struct outcome { uint8_t digest[32]; int32_t tokens[NPRED]; float lp[NPRED]; int n_gen, n_prompt; } outcome;

/* Runs the prompts (indexes into prompts[]) as one batch; returns the outcome of each. */
static void run(fixture *f, const int *which, int n, int chunk, float temp, outcome *out)
{
    di_request *r = calloc((size_t)n, sizeof *r);
    di_request **rp = calloc((size_t)n, sizeof *rp);
    int32_t **ids = calloc((size_t)n, sizeof *ids);
    di_err e = {0};
    for (int i = 0; i < n; i++) {
        size_t len;
        cr_assert_eq(di_tokenize(f->tok, prompts[which[i]], strlen(prompts[which[i]]), false, &ids[i], &len, &e), 0);
        r[i] = (di_request){.prompt = ids[i], .n_prompt = (int)len, .n_predict = NPRED,
                            .sampler = {temp, 40, 0.95f, 1234}, .chunk = chunk};
        rp[i] = &r[i];
    }
    di_engine_opts o = {.max_batch_tokens = 256, .max_seqs = 8};
    cr_assert_eq(di_engine_run(f->m, rp, n, &o, NULL, &e), 0, "%s", e.msg);
    for (int i = 0; i < n; i++) {
        memcpy(out[i].digest, r[i].digest, 32);
        memcpy(out[i].tokens, r[i].tokens, sizeof(int32_t) * (size_t)r[i].n_gen);
        memcpy(out[i].lp, r[i].logprobs, sizeof(float) * (size_t)r[i].n_gen);
        out[i].n_gen = r[i].n_gen;
        out[i].n_prompt = r[i].n_prompt;
        di_request_release(&r[i]);
        free(ids[i]);
    }
    free(r); free(rp); free(ids);
}

static void expect_same(const outcome *a, const outcome *b, const char *what)
{
    cr_assert_eq(a->n_gen, b->n_gen, "%s: %d vs %d tokens", what, a->n_gen, b->n_gen);
    cr_assert(memcmp(a->digest, b->digest, 32) == 0, "%s: digests differ", what);
}

static void batch_positions(float temp)
{
    NEED_MODEL();
    fixture f = fixture_open(2, 256, 64, 8);
    outcome alone, batch[8];
    run(&f, (int[]){0}, 1, 0, temp, &alone);
    cr_assert_gt(alone.n_gen, 0);
    /* prompt 0 at line 0, 3 and 7 of batches of 8 different prompts */
    const int at[] = {0, 3, 7};
    for (int k = 0; k < 3; k++) {
        int which[8];
        for (int i = 0, o = 1; i < 8; i++) which[i] = i == at[k] ? 0 : o++;
        run(&f, which, 8, 0, temp, batch);
        char what[64];
        snprintf(what, sizeof what, "line %d of 8", at[k]);
        expect_same(&batch[at[k]], &alone, what);
    }
    /* chunked prefill */
    const int chunks[] = {1, 7, 64};
    for (int k = 0; k < 3; k++) {
        outcome c;
        run(&f, (int[]){0}, 1, chunks[k], temp, &c);
        char what[64];
        snprintf(what, sizeof what, "--chunk %d", chunks[k]);
        expect_same(&c, &alone, what);
    }
    fixture_close(&f);
    /* one worker thread */
    fixture f1 = fixture_open(1, 256, 64, 8);
    outcome one;
    run(&f1, (int[]){0}, 1, 7, temp, &one);
    expect_same(&one, &alone, "1 thread");
    fixture_close(&f1);
}

Test(model_invariance, greedy_digest_alone_batched_chunked_threads, .timeout = 900) { batch_positions(0.0f); }
Test(model_invariance, sampled_digest_alone_batched_chunked_threads, .timeout = 900) { batch_positions(0.8f); }

/* decode log-probs == the same tokens re-scored by one prefill */
static void rescore(float temp)
{
    NEED_MODEL();
    fixture f = fixture_open(2, 256, 16, 2);
    outcome gen;
    run(&f, (int[]){2}, 1, 0, temp, &gen);
    int32_t *ids;
    size_t n;
    di_err e = {0};
    cr_assert_eq(di_tokenize(f.tok, prompts[2], strlen(prompts[2]), false, &ids, &n, &e), 0);
    int total = (int)n + gen.n_gen;
    int32_t *seq = malloc(sizeof(int32_t) * (size_t)total);
    memcpy(seq, ids, n * 4);
    memcpy(seq + n, gen.tokens, (size_t)gen.n_gen * 4);
    di_request r = {.prompt = seq, .n_prompt = total, .n_predict = 1, .sampler = {0}, .score_prompt = true};
    di_request *rp = &r;
    di_engine_opts o = {.max_batch_tokens = 256, .max_seqs = 2};
    cr_assert_eq(di_engine_run(f.m, &rp, 1, &o, NULL, &e), 0, "%s", e.msg);
    for (int i = 0; i < gen.n_gen; i++) {
        float scored = r.prompt_lp[(int)n - 1 + i];
        cr_assert(memcmp(&scored, &gen.lp[i], 4) == 0, "token %d (%d): decode log-prob %a, prefill %a", i, gen.tokens[i],
                  gen.lp[i], scored);
    }
    di_request_release(&r);
    free(seq); free(ids);
    fixture_close(&f);
}

Test(model_invariance, decode_logprobs_equal_prefill_rescoring_greedy, .timeout = 300) { rescore(0.0f); }
Test(model_invariance, decode_logprobs_equal_prefill_rescoring_sampled, .timeout = 300) { rescore(0.8f); }

/* ---- the second real model: Gemma 3 270M (sliding-window layers, q/k norms, post-norms, a 262k
 * vocabulary), the same properties at a size the CPU suite can afford ---------------------- */

enum { GPRED = 4 };

typedef struct { int32_t tokens[GPRED]; float lp[GPRED]; uint8_t digest[32]; int n_gen; } goutcome;

/* prompts[which[i]] with BOS where the vocabulary adds it, `chunk`, prefix cache on or off */
static void grun(fixture *f, const int *which, int n, int chunk, bool prefix, goutcome *out)
{
    di_request r[8] = {{0}};
    di_request *rp[8];
    int32_t *ids[8];
    di_err e = {0};
    for (int i = 0; i < n; i++) {
        size_t len;
        cr_assert_eq(di_tokenize_prompt(f->tok, prompts[which[i]], strlen(prompts[which[i]]), false, &ids[i], &len, &e), 0);
        r[i] = (di_request){.prompt = ids[i], .n_prompt = (int)len, .n_predict = GPRED, .chunk = chunk};
        rp[i] = &r[i];
    }
    di_engine_opts o = {.max_batch_tokens = 256, .max_seqs = 8, .prefix_cache = prefix};
    cr_assert_eq(di_engine_run(f->m, rp, n, &o, NULL, &e), 0, "%s", e.msg);
    for (int i = 0; i < n; i++) {
        out[i].n_gen = r[i].n_gen;
        memcpy(out[i].tokens, r[i].tokens, sizeof(int32_t) * (size_t)r[i].n_gen);
        memcpy(out[i].lp, r[i].logprobs, sizeof(float) * (size_t)r[i].n_gen);
        memcpy(out[i].digest, r[i].digest, 32);
        di_request_release(&r[i]);
        free(ids[i]);
    }
}

static void gsame(const goutcome *a, const goutcome *b, const char *what)
{
    cr_assert(a->n_gen == b->n_gen && !memcmp(a->digest, b->digest, 32), "gemma3, %s: digests differ", what);
}

Test(model_invariance, gemma3_alone_batched_chunked_cached_threads, .timeout = 1800)
{
    if (!gemma3_path()) cr_skip_test("DETINFER_GEMMA3 is not set (scripts/test fetches Gemma 3 270M)");
    fixture f = fixture_open_path(gemma3_path(), 2, 256, 48, 8);
    goutcome alone, batch[4], x;
    grun(&f, (int[]){6}, 1, 0, false, &alone);
    cr_assert_gt(alone.n_gen, 0);
    grun(&f, (int[]){6, 1, 2, 3}, 4, 0, false, batch);
    gsame(&batch[0], &alone, "line 0 of 4");
    grun(&f, (int[]){1, 2, 3, 6}, 4, 0, false, batch);
    gsame(&batch[3], &alone, "line 3 of 4");
    const int chunks[] = {1, 7, 64};
    for (int k = 0; k < 3; k++) {
        char what[32];
        snprintf(what, sizeof what, "--chunk %d", chunks[k]);
        grun(&f, (int[]){6}, 1, chunks[k], false, &x);
        gsame(&x, &alone, what);
    }
    /* a prompt longer than a KV block twice in one run with the prefix cache: the second takes
     * the first's full blocks */
    goutcome twice[2], long_alone;
    grun(&f, (int[]){3}, 1, 0, false, &long_alone);
    grun(&f, (int[]){3, 3}, 2, 0, true, twice);
    gsame(&twice[0], &long_alone, "prefix cache, first");
    gsame(&twice[1], &long_alone, "prefix cache, second");
    fixture_close(&f);
    fixture f1 = fixture_open_path(gemma3_path(), 1, 256, 48, 8);
    grun(&f1, (int[]){6}, 1, 7, false, &x);
    gsame(&x, &alone, "1 thread");
    /* decode log-probs == the same tokens re-scored by one prefill */
    int32_t *ids;
    size_t n;
    di_err e = {0};
    cr_assert_eq(di_tokenize_prompt(f1.tok, prompts[6], strlen(prompts[6]), false, &ids, &n, &e), 0);
    int32_t seq[64];
    memcpy(seq, ids, n * 4);
    memcpy(seq + n, alone.tokens, (size_t)alone.n_gen * 4);
    di_request r = {.prompt = seq, .n_prompt = (int)n + alone.n_gen, .n_predict = 1, .score_prompt = true};
    di_request *rp = &r;
    di_engine_opts o = {.max_batch_tokens = 256, .max_seqs = 2};
    cr_assert_eq(di_engine_run(f1.m, &rp, 1, &o, NULL, &e), 0, "%s", e.msg);
    for (int i = 0; i < alone.n_gen; i++)
        cr_assert(!memcmp(&r.prompt_lp[(int)n - 1 + i], &alone.lp[i], 4), "gemma3 token %d: decode %a, prefill %a", i,
                  alone.lp[i], r.prompt_lp[(int)n - 1 + i]);
    di_request_release(&r);
    free(ids);
    fixture_close(&f1);
}
