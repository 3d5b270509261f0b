/* Accuracy against an independent implementation: tests/data/make_ref_logits.py (numpy,
 * float64, the same GGUF, weights rounded to bf16 as detinfer stores them) wrote the logits
 * of 5 prompts and their 32-token greedy continuations to tests/data/ref_logits.txt.
 * Checked: the top-1 token at every position, the largest error over the recorded logits
 * relative to the largest recorded |logit| (tolerance REL_TOL), and the greedy continuations. */
#include "model_fixture.h"
#include <stdio.h>

#define REL_TOL 2e-3
enum { SUBSET = 256, TOPN = 16, GREEDY = 32, MAXSEQ = 256 };

typedef struct ref_pos { int top1; int top_id[TOPN]; double top_logit[TOPN]; double sub[SUBSET]; } ref_pos;
typedef struct ref_prompt { int n; int32_t ids[MAXSEQ]; int32_t greedy[GREEDY]; ref_pos *pos; int npos; } ref_prompt;

static int subset[SUBSET];
static ref_prompt prompts[8];
static int nprompts;

static void load_reference(void)
{
    FILE *f = fopen(DI_SOURCE_DIR "/tests/data/ref_logits.txt", "r");
    cr_assert_not_null(f, "tests/data/ref_logits.txt is missing");
    char word[32];
    while (fscanf(f, "%31s", word) == 1) {
        if (word[0] == '#') { int c; while ((c = fgetc(f)) != '\n' && c != EOF) {} continue; }
        int k, n;
        if (!strcmp(word, "subset")) {
            for (int i = 0; i < SUBSET; i++) cr_assert_eq(fscanf(f, "%d", &subset[i]), 1);
        } else if (!strcmp(word, "prompt")) {
            cr_assert_eq(fscanf(f, "%d %d", &k, &n), 2);
            cr_assert(k >= 1 && k <= 8 && n > 0 && n + GREEDY <= MAXSEQ);
            nprompts = k > nprompts ? k : nprompts;
            ref_prompt *p = &prompts[k - 1];
            p->n = n;
            for (int i = 0; i < n; i++) cr_assert_eq(fscanf(f, "%d", &p->ids[i]), 1);
            p->pos = calloc(MAXSEQ, sizeof *p->pos);
        } else if (!strcmp(word, "greedy")) {
            cr_assert_eq(fscanf(f, "%d %d", &k, &n), 2);
            cr_assert_eq(n, GREEDY);
            for (int i = 0; i < n; i++) cr_assert_eq(fscanf(f, "%d", &prompts[k - 1].greedy[i]), 1);
        } else if (!strcmp(word, "pos")) {
            int p;
            cr_assert_eq(fscanf(f, "%d %d", &k, &p), 2);
            ref_pos *r = &prompts[k - 1].pos[p];
            cr_assert_eq(fscanf(f, "%d", &r->top1), 1);
            for (int i = 0; i < TOPN; i++) cr_assert_eq(fscanf(f, " %d:%lf", &r->top_id[i], &r->top_logit[i]), 2);
            cr_assert_eq(fscanf(f, " %1s", word), 1);
            cr_assert_eq(word[0], '|');
            for (int i = 0; i < SUBSET; i++) cr_assert_eq(fscanf(f, "%lf", &r->sub[i]), 1);
            if (p + 1 > prompts[k - 1].npos) prompts[k - 1].npos = p + 1;
        } else {
            cr_assert_fail("ref_logits.txt: unexpected '%s'", word);
        }
    }
    fclose(f);
    cr_assert_eq(nprompts, 5);
}

Test(reference, logits_and_greedy_match_independent_fp64_implementation, .timeout = 600)
{
    NEED_MODEL();
    load_reference();
    fixture fx = fixture_open(2, 256, 64, 2);
    int V = di_model_config(fx.m)->vocab;
    double worst = 0;
    int worst_prompt = 0, worst_pos = 0;
    for (int k = 0; k < nprompts; k++) {
        ref_prompt *p = &prompts[k];
        int total = p->n + GREEDY - 1;   /* positions with a recorded next-token distribution */
        cr_assert_geq(p->npos, total);
        int32_t seq[MAXSEQ], pos[MAXSEQ], slot[MAXSEQ], rows[MAXSEQ], blocks[16];
        for (int i = 0; i < total; i++) {
            seq[i] = i < p->n ? p->ids[i] : p->greedy[i - p->n];
            pos[i] = i;
            slot[i] = 0;
            rows[i] = i;
        }
        for (int b = 0; b < 16; b++) blocks[b] = b;
        di_err e = {0};
        cr_assert_eq(di_model_set_blocks(fx.m, 0, blocks, 16, &e), 0, "%s", e.msg);
        float *logits = malloc(sizeof(float) * (size_t)total * V);
        di_step st = {.n = total, .tokens = seq, .pos = pos, .seq = slot, .n_out = total, .out_rows = rows, .logits = logits};
        cr_assert_eq(di_model_forward(fx.m, &st, &e), 0, "%s", e.msg);
        for (int i = 0; i < total; i++) {
            const float *row = logits + (size_t)i * V;
            const ref_pos *r = &p->pos[i];
            int best = 0;
            for (int v = 1; v < V; v++) if (row[v] > row[best]) best = v;
            cr_assert_eq(best, r->top1, "prompt %d position %d: top-1 %d, reference %d", k + 1, i, best, r->top1);
            double scale = 0, err = 0;
            for (int j = 0; j < TOPN; j++) scale = fmax(scale, fabs(r->top_logit[j]));
            for (int j = 0; j < SUBSET; j++) scale = fmax(scale, fabs(r->sub[j]));
            for (int j = 0; j < TOPN; j++) err = fmax(err, fabs(row[r->top_id[j]] - r->top_logit[j]));
            for (int j = 0; j < SUBSET; j++) err = fmax(err, fabs(row[subset[j]] - r->sub[j]));
            if (err / scale > worst) { worst = err / scale; worst_prompt = k + 1; worst_pos = i; }
        }
        free(logits);
        /* greedy continuation through the engine: decode steps, not one prefill */
        di_request rq = {.prompt = p->ids, .n_prompt = p->n, .n_predict = GREEDY, .sampler = {0}};
        di_request *rp = &rq;
        di_engine_opts o = {.max_batch_tokens = 256, .max_seqs = 2};
        cr_assert_eq(di_engine_run(fx.m, &rp, 1, &o, NULL, &e), 0, "%s", e.msg);
        cr_assert_eq(rq.n_gen, GREEDY);
        for (int i = 0; i < GREEDY; i++)
            cr_assert_eq(rq.tokens[i], p->greedy[i], "prompt %d: greedy token %d is %d, reference %d", k + 1, i,
                         rq.tokens[i], p->greedy[i]);
        di_request_release(&rq);
        free(p->pos);
    }
    cr_log_info("max |logit error| / max |logit| = %.3g (prompt %d, position %d); tolerance %.1g", worst, worst_prompt,
                worst_pos, REL_TOL);
    fprintf(stderr, "reference: max relative logit error %.3g (prompt %d, position %d), tolerance %.1g\n", worst,
            worst_prompt, worst_pos, REL_TOL);
    cr_assert_leq(worst, REL_TOL);
    fixture_close(&fx);
}
