/* How a step's kernels are issued changes no bit: rows padded to a bucket, and on the GPU the
 * padded step recorded once as a CUDA graph and replayed, against one launch at a time with
 * exactly the step's rows (model.h, DI_LAUNCH_*). The same script of steps (prefills, a
 * ragged prefill of two sequences, decodes of three, a mixed step, rows out of order) runs on
 * two models that differ only in their launch mode; every log-prob of every output row must
 * be equal bitwise. */
#include "model_fixture.h"
#include <string.h>

enum { SEQS = 4, BLOCKS_PER_SEQ = 4, MAXB = 64 };

typedef struct lmodel {
    di_model *m;
    int32_t last[SEQS];   /* each sequence's next token (greedy) */
    int len[SEQS];        /* positions written */
} lmodel;

static lmodel open_lmodel(di_rt *rt, di_launch_mode launch)
{
    lmodel l = {0};
    di_err e = {0};
    di_model_opts o = {.max_batch_tokens = MAXB, .ctx = 256, .kv_blocks = SEQS * BLOCKS_PER_SEQ, .max_seqs = SEQS,
                       .launch = launch};
    cr_assert_eq(di_model_load(model_path(), rt, &o, &l.m, &e), 0, "%s", e.msg);
    for (int s = 0; s < SEQS; s++) {
        int32_t blocks[BLOCKS_PER_SEQ];
        for (int i = 0; i < BLOCKS_PER_SEQ; i++) blocks[i] = s * BLOCKS_PER_SEQ + i;
        cr_assert_eq(di_model_set_blocks(l.m, s, blocks, BLOCKS_PER_SEQ, &e), 0, "%s", e.msg);
        l.last[s] = 100 + 17 * s;
    }
    return l;
}

/* One step: `take[s]` tokens of sequence s (prompt tokens from a fixed formula when more than
 * one, else its last greedy token), outputs for the last row of each sequence in `outs` order
 * (reversed when `reverse`). Returns the log-probs (n_out x vocab), caller frees. */
static float *step(lmodel *l, const int take[SEQS], bool reverse, int *n_out)
{
    int32_t tok[MAXB], pos[MAXB], seq[MAXB], rows[SEQS], greedy[SEQS];
    int n = 0, r = 0;
    for (int s = 0; s < SEQS; s++) {
        for (int i = 0; i < take[s]; i++, n++) {
            tok[n] = take[s] == 1 ? l->last[s] : (int32_t)((l->len[s] * 7919 + 31 * s + 11) % 40000);
            pos[n] = l->len[s]++;
            seq[n] = s;
        }
        if (take[s]) rows[r++] = n - 1;
    }
    if (reverse)
        for (int i = 0; i < r / 2; i++) { int32_t t = rows[i]; rows[i] = rows[r - 1 - i]; rows[r - 1 - i] = t; }
    int V = di_model_config(l->m)->vocab;
    float *lp = malloc(sizeof(float) * (size_t)r * V);
    di_err e = {0};
    di_step st = {.n = n, .tokens = tok, .pos = pos, .seq = seq, .n_out = r, .out_rows = rows, .logprobs = lp,
                  .greedy = greedy};
    cr_assert_eq(di_model_forward(l->m, &st, &e), 0, "%s", e.msg);
    for (int i = 0; i < r; i++) l->last[seq[rows[i]]] = greedy[i];
    *n_out = r;
    return lp;
}

/* The script: each row is one step's tokens per sequence. */
static const int script[][SEQS] = {
    {5, 0, 0, 0},   /* a prefill of 5 rows (padded to 8) */
    {0, 3, 2, 0},   /* two prompts in one step */
    {1, 1, 1, 0},   /* decode, 3 rows (padded to 4) */
    {1, 1, 1, 0},
    {1, 0, 0, 0},   /* one row: no padding */
    {1, 1, 1, 6},   /* mixed: 3 decodes and a prompt of 6 (9 rows, padded to 12) */
    {1, 1, 1, 1},
    {1, 0, 0, 0},
    {1, 1, 1, 1},
    {1, 1, 1, 0},
    {1, 0, 0, 0},
};
enum { STEPS = sizeof script / sizeof script[0] };

/* Runs the script (twice over: the second pass replays what the first recorded) on both
 * models and compares every output bitwise. */
static void compare(di_rt *rt_a, di_launch_mode a, di_rt *rt_b, di_launch_mode b, const char *what)
{
    lmodel la = open_lmodel(rt_a, a), lb = open_lmodel(rt_b, b);
    int V = di_model_config(la.m)->vocab;
    long outputs = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < STEPS; i++) {
            int ra, rb;
            float *pa = step(&la, script[i], i % 2, &ra), *pb = step(&lb, script[i], i % 2, &rb);
            cr_assert_eq(ra, rb);
            size_t diff = 0;
            for (size_t j = 0; j < (size_t)ra * V; j++) diff += memcmp(&pa[j], &pb[j], 4) != 0;
            cr_assert_eq(diff, 0, "%s: pass %d step %d: %zu of %zu log-probs differ (%s vs %s)", what, pass, i, diff,
                         (size_t)ra * V, di_launch_name(a), di_launch_name(b));
            outputs += ra;
            free(pa);
            free(pb);
        }
    fprintf(stderr, "launch: %s: %d steps, %ld output rows: %s == %s bitwise\n", what, 2 * STEPS, outputs,
            di_launch_name(di_model_launch(la.m)), di_launch_name(di_model_launch(lb.m)));
    di_model_free(la.m);
    di_model_free(lb.m);
}

Test(launch, buckets)
{
    NEED_MODEL();
    di_rt *rt = th_rt(DI_BACKEND_C, 2);
    lmodel e = open_lmodel(rt, DI_LAUNCH_EAGER), p = open_lmodel(rt, DI_LAUNCH_PADDED), a = open_lmodel(rt, DI_LAUNCH_AUTO);
    cr_assert_eq(di_model_launch(e.m), DI_LAUNCH_EAGER);
    cr_assert_eq(di_model_launch(a.m), DI_LAUNCH_EAGER, "the CPU pads nothing");
    cr_assert_eq(di_model_launch(p.m), DI_LAUNCH_PADDED);
    int want[][2] = {{1, 1}, {2, 2}, {3, 4}, {5, 8}, {9, 12}, {13, 16}, {33, 48}, {49, 64}, {64, 64}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        cr_assert_eq(di_model_step_rows(p.m, want[i][0]), want[i][1], "%d rows", want[i][0]);
        cr_assert_eq(di_model_step_rows(e.m, want[i][0]), want[i][0]);
    }
    di_model_free(e.m);
    di_model_free(p.m);
    di_model_free(a.m);
    di_rt_close(rt);
}

Test(launch, padded_equals_eager_cpu, .timeout = 600)
{
    NEED_MODEL();
    di_rt *rt = th_rt(DI_BACKEND_C, 2);
    compare(rt, DI_LAUNCH_EAGER, rt, DI_LAUNCH_PADDED, "cpu exact");
    di_rt_close(rt);
}

Test(launch, graphs_refused_without_a_gpu)
{
    NEED_MODEL();
    di_rt *rt = th_rt(DI_BACKEND_C, 2);
    di_model *m = NULL;
    di_err e = {0};
    di_model_opts o = {.max_batch_tokens = 8, .ctx = 64, .kv_blocks = 2, .max_seqs = 1, .launch = DI_LAUNCH_GRAPHS};
    cr_assert_eq(di_model_load(model_path(), rt, &o, &m, &e), DI_EUSAGE);
    cr_assert(strstr(e.msg, "graphs need the GPU"), "%s", e.msg);
    cr_assert_null(m);
    di_launch_mode l;
    cr_assert(!di_launch_parse("graph", &l));
    cr_assert(di_launch_parse("padded", &l) && l == DI_LAUNCH_PADDED);
    di_rt_close(rt);
}

/* GPU: graphs (AUTO there) against eager, in each invariant profile; the replays really ran,
 * and in fast a graph went stale (a larger bucket grew a split-K workspace) and was recorded
 * again. */
static void gpu_graphs(di_profile profile)
{
    NEED_MODEL();
    di_rt *rt = th_gpu_rt_or_skip(profile);
    di_rt_stats s0 = di_rt_get_stats(rt);
    compare(rt, DI_LAUNCH_EAGER, rt, DI_LAUNCH_AUTO, di_profile_name(profile));
    di_rt_stats s1 = di_rt_get_stats(rt);
    long recorded = s1.graphs_recorded - s0.graphs_recorded, runs = s1.graph_runs - s0.graph_runs;
    fprintf(stderr, "launch: %s: %ld graphs recorded (%ld nodes), %ld replays\n", di_profile_name(profile), recorded,
            s1.graph_nodes - s0.graph_nodes, runs);
    /* 4 row buckets for the layers (8, 4, 1, 12) and 3 for the head (1, 2, 4): every part after
     * its bucket's first sight replays (recorded again where stale); 2 parts a step */
    cr_assert_geq(recorded, 7);
    cr_assert_eq(runs, 2 * 2 * STEPS - 7);
    if (profile == DI_PROFILE_FAST) cr_assert_gt(recorded, 7, "no graph was recorded again after a workspace moved");
    di_rt_close(rt);
}

Test(launch, gpu_exact_graphs_equal_eager, .timeout = 600) { gpu_graphs(DI_PROFILE_EXACT); }
Test(launch, gpu_fast_graphs_equal_eager, .timeout = 600) { gpu_graphs(DI_PROFILE_FAST); }
