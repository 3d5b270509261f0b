/* bench_spec: what speculative decoding buys, side by side in one run. For each model (-m, any
 * number), each workload and each batch size, the same requests run with speculation off, with
 * prompt lookup, and (--draft-model) with a draft model; every speculating request must give
 * the plain run's digest (ids and log-prob bits), or the run fails. Workloads: real text that
 * repeats (code editing, summarising a given passage: the answer copies its prompt) and text
 * that does not (open questions sampled at T = 0.8), each a few chat prompts rendered by the
 * model's template (Gemma 3's file has none: its family's is used); a batch of B cycles through
 * a workload's prompts, request i keying its draws by i.
 *
 * Per line: decode tokens/s (tokens from decode rows over the time of decode steps and of the
 * draft model; the first token of each request comes from prefill and is left out), tokens per
 * decode step (1 without speculation), drafts made and kept, and the speed-up over plain
 * decoding. --prompts FILE writes the prompts used. Exit status: 0 when every speculating request
 * gave plain decoding's digest, 1 when one did not (named on stderr) or a run failed, 2 for bad
 * usage or a model that would not load.
 *
 * usage: bench_spec -m MODEL.gguf [-m MODEL2.gguf ...] [--device cpu|cuda] [--profile exact|fast|vendor]
 *                   [--batch 1,8] [--gen 128] [--draft-max 4] [--draft-ngram 3] [--draft-ngram-min 2]
 *                   [--draft-model FILE] [--workloads code,summary,novel] [--max-batch-tokens 256] [-t N]
 *                   [--prompts FILE] [--runs 3]   (-t: CPU threads, default every core)
 *
 * Each configuration runs once untimed (the row counts it reaches compiled or loaded), then
 * --runs times; the line gives the median run by decode tokens/s, and every run's digests must
 * equal plain decoding's first. */
#include "tools/cli.h"
#include "model/chat.h"
#include "model/engine.h"
#include "model/tokenizer.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { MAX_MODELS = 4, MAX_BATCH = 64, MAX_PROMPTS = 4 };

typedef struct workload {
    const char *name, *what;
    float temp;
    const char *prompts[MAX_PROMPTS];
} workload;

/* Code to edit: the answer is the code again, changed in a few places. */
static const workload code = {"code", "code editing: rewrite the given code with a small change", 0.0f, {
    "Here is a Python function:\n\n```python\ndef total_price(items, tax_rate):\n    subtotal = 0\n    for item in items:\n"
    "        subtotal += item.price * item.quantity\n    tax = subtotal * tax_rate\n    return subtotal + tax\n```\n\n"
    "Rewrite the function with the variable `subtotal` renamed to `net`. Output the whole function.",
    "Here is a C function:\n\n```c\nint count_words(const char *s)\n{\n    int n = 0, in_word = 0;\n    for (; *s; s++) {\n"
    "        if (*s == ' ' || *s == '\\n') in_word = 0;\n        else if (!in_word) { in_word = 1; n++; }\n    }\n"
    "    return n;\n}\n```\n\nRewrite it so that tabs also separate words. Output the whole function.",
    "Convert this JavaScript to use const and let instead of var, and change nothing else:\n\n```js\nvar items = [1, 2, 3, 4];\n"
    "var total = 0;\nfor (var i = 0; i < items.length; i++) {\n    var x = items[i];\n    total = total + x * x;\n}\n"
    "console.log(\"sum of squares:\", total);\n```",
}};

/* A passage to summarise: the summary reuses its phrases. */
static const workload summary = {"summary", "summarising a given passage in its own words", 0.0f, {
    "Summarise the following passage in three sentences, keeping its key phrases.\n\n"
    "The town of Alder Creek grew up around a sawmill built in 1871 on the bend of the river. For thirty years the mill "
    "was the town: it paid the wages, owned the houses and ran the only store. When the mill burned in 1903, most families "
    "expected to leave, but the schoolteacher, Margaret Hale, persuaded the county to build a road to the railway at "
    "Dunmore. The road brought farmers to the market on Saturdays, and the market became the new heart of the town. "
    "Today Alder Creek is known for its Saturday market, its old mill wheel kept in the square, and the Hale School, "
    "named after the teacher who would not let the town die.",
    "Summarise the following passage in three sentences, keeping its key phrases.\n\n"
    "Water on Earth moves in a continuous cycle. The sun heats oceans, lakes and rivers, and water evaporates into the "
    "air as vapour. Plants also release water vapour through their leaves, a process called transpiration. As the vapour "
    "rises it cools and condenses into tiny droplets that form clouds. When the droplets grow heavy enough they fall as "
    "rain, snow or hail. Some of this precipitation runs off into rivers and back to the sea; some soaks into the ground "
    "and becomes groundwater, which can stay underground for thousands of years before it returns to the surface.",
}};

/* No passage to copy: open questions, sampled. */
static const workload novel = {"novel", "open questions, no text to copy, sampled at T = 0.8", 0.8f, {
    "Write a short poem about a lighthouse keeper who has never seen the sea in daylight.",
    "Describe, in a few sentences, what a city might sound like at four in the morning.",
    "Invent a new board game and explain its rules briefly.",
}};

static const workload *const all_workloads[] = {&code, &summary, &novel};

typedef struct opts {
    const char *models[MAX_MODELS], *device, *profile, *draft_model, *prompts_out, *workloads;
    int n_models, batches[8], n_batches, gen, draft_max, ngram, ngram_min, max_batch_tokens, threads, runs;
} opts;

static int usage(const char *why, const char *arg)
{
    if (why) { fprintf(stderr, "bench_spec: "); fprintf(stderr, why, arg); fprintf(stderr, "\n"); }
    fprintf(stderr,
            "usage: bench_spec -m MODEL.gguf [-m MODEL2.gguf ...] [--device cpu|cuda] [--profile exact|fast|vendor]\n"
            "                  [--batch 1,8] [--gen 128] [--draft-max 4] [--draft-ngram 3] [--draft-ngram-min 2]\n"
            "                  [--draft-model FILE] [--workloads code,summary,novel] [--max-batch-tokens 256] [-t N]\n"
            "                  [--prompts FILE] [--runs 3]\n");
    return 2;
}

static bool parse_count(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

static int parse(int argc, char **argv, opts *o)
{
    *o = (opts){.device = "cpu", .profile = "exact", .batches = {1, 8}, .n_batches = 2, .gen = 128, .draft_max = 4,
                .ngram = 3, .ngram_min = 2, .max_batch_tokens = 256, .workloads = "code,summary,novel", .runs = 3};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return usage("%s needs a value", a);
        if (!strcmp(a, "-m")) {
            if (o->n_models == MAX_MODELS) return usage("at most 4 models (-m), not '%s' too", v);
            o->models[o->n_models++] = v;
        } else if (!strcmp(a, "--device")) o->device = v;
        else if (!strcmp(a, "--profile")) o->profile = v;
        else if (!strcmp(a, "--draft-model")) o->draft_model = v;
        else if (!strcmp(a, "--prompts")) o->prompts_out = v;
        else if (!strcmp(a, "--workloads")) o->workloads = v;
        else if (!strcmp(a, "--batch")) {
            o->n_batches = 0;
            char buf[128];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
                if (o->n_batches == 8 || !parse_count(t, 1, MAX_BATCH, &o->batches[o->n_batches++]))
                    return usage("--batch takes up to 8 sizes of 1..64, as 1,8, not '%s'", v);
            }
        } else if (!strcmp(a, "--gen")) { if (!parse_count(v, 1, 4096, &o->gen)) return usage("--gen takes 1..4096, not '%s'", v); }
        else if (!strcmp(a, "--draft-max")) { if (!parse_count(v, 1, DI_DRAFT_MAX, &o->draft_max)) return usage("--draft-max takes 1..16, not '%s'", v); }
        else if (!strcmp(a, "--draft-ngram")) { if (!parse_count(v, 1, DI_NGRAM_MAX, &o->ngram)) return usage("--draft-ngram takes 1..16, not '%s'", v); }
        else if (!strcmp(a, "--draft-ngram-min")) { if (!parse_count(v, 1, DI_NGRAM_MAX, &o->ngram_min)) return usage("--draft-ngram-min takes 1..16, not '%s'", v); }
        else if (!strcmp(a, "--max-batch-tokens")) { if (!parse_count(v, 16, 65535, &o->max_batch_tokens)) return usage("--max-batch-tokens takes 16..65535, not '%s'", v); }
        else if (!strcmp(a, "--runs")) { if (!parse_count(v, 1, 101, &o->runs)) return usage("--runs takes 1..101, not '%s'", v); }
        else if (!strcmp(a, "-t")) { if (!parse_count(v, 1, 1024, &o->threads)) return usage("-t takes 1..1024, not '%s'", v); }
        else return usage("unknown option '%s'", a);
        i++;
    }
    if (!o->n_models) return usage("%s", "-m MODEL is required");
    if (!o->n_batches) return usage("--batch takes up to 8 sizes of 1..64, as 1,8, not '%s'", "");
    char wl[128];
    snprintf(wl, sizeof wl, "%s", o->workloads);
    for (char *t = strtok(wl, ","); t; t = strtok(NULL, ",")) {
        size_t k = 0, n = sizeof all_workloads / sizeof *all_workloads;
        while (k < n && strcmp(t, all_workloads[k]->name)) k++;
        if (k == n) return usage("--workloads takes code, summary and novel, comma-separated, not '%s'", t);
    }
    if (o->ngram_min > o->ngram) {
        char n[32];
        snprintf(n, sizeof n, "%d > %d", o->ngram_min, o->ngram);
        return usage("--draft-ngram-min is longer than --draft-ngram (%s)", n);
    }
    if (strcmp(o->device, "cpu") && strcmp(o->device, "cuda")) return usage("--device takes cpu or cuda, not '%s'", o->device);
    di_profile pr;
    if (!di_profile_parse(o->profile, &pr)) return usage("--profile takes exact, fast or vendor, not '%s'", o->profile);
    return -1;
}

static bool wanted(const opts *o, const workload *w)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s", o->workloads);
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ","))
        if (!strcmp(t, w->name)) return true;
    return false;
}

static void write_prompts(const opts *o)
{
    FILE *f = fopen(o->prompts_out, "w");
    if (!f) { fprintf(stderr, "bench_spec: --prompts %s: cannot write\n", o->prompts_out); return; }
    for (size_t k = 0; k < sizeof all_workloads / sizeof *all_workloads; k++) {
        const workload *w = all_workloads[k];
        if (!wanted(o, w)) continue;
        for (int i = 0; i < MAX_PROMPTS && w->prompts[i]; i++)
            fprintf(f, "=== %s %d (%s; temperature %g; one user turn in the model's chat template)\n%s\n\n", w->name, i,
                    w->what, w->temp, w->prompts[i]);
    }
    fclose(f);
}

/* One model and what its prompts became. */
typedef struct bench_model {
    const char *path;
    di_gguf *g;
    di_tokenizer *tok;
    di_chat_template *tmpl;
    di_model *m, *draft;
    int32_t stops[20];
    int n_stop;
} bench_model;

static int32_t *render(const bench_model *bm, const char *user, int *n, di_err *err)
{
    char *text = NULL;
    di_chat_msg msg = {"user", user};
    if (di_chat_render(bm->tmpl, &msg, 1, true, &text, err)) return NULL;
    int32_t *ids = NULL;
    size_t len = 0;
    int rc = di_tokenize_prompt(bm->tok, text, strlen(text), true, &ids, &len, err);
    free(text);
    *n = (int)len;
    return rc ? NULL : ids;
}

typedef struct outcome {
    double decode_tps, tokens_per_step, s;
    long gen, drafted, accepted;
    uint8_t digest[MAX_BATCH][32];
} outcome;

/* B requests of w (prompt i mod its count, draws keyed by i) with draft options d; 3 if the run failed. */
static int run_batch(const opts *o, bench_model *bm, int32_t **ids, const int *lens, int n_prompts, const workload *w, int B,
                     const di_draft_opts *d, outcome *out)
{
    di_request r[MAX_BATCH];
    di_request *rp[MAX_BATCH];
    for (int i = 0; i < B; i++) {
        int p = i % n_prompts;
        r[i] = (di_request){.prompt = ids[p], .n_prompt = lens[p], .n_predict = o->gen,
                            .sampler = {w->temp, 40, 0.95f, 1234}, .rng_id = (uint64_t)i};
        if (d) r[i].draft = *d;
        rp[i] = &r[i];
    }
    di_engine_opts eo = {.max_batch_tokens = o->max_batch_tokens, .max_seqs = B, .prefix_cache = true,
                         .stop_ids = bm->stops, .n_stop = bm->n_stop, .draft_model = d && d->model ? bm->draft : NULL};
    di_engine_stats st;
    di_err err = {0};
    double t0 = cli_now();
    if (di_engine_run(bm->m, rp, B, &eo, &st, &err)) { fprintf(stderr, "bench_spec: %s\n", err.msg); return 3; }
    out->s = cli_now() - t0;
    out->gen = st.gen_tokens;
    out->drafted = st.drafted;
    out->accepted = st.draft_accepted;
    double t_dec = st.decode_s + st.draft_s;
    out->decode_tps = t_dec > 0 ? (st.gen_tokens - B) / t_dec : 0;
    out->tokens_per_step = st.decode_slots ? (double)st.decode_tokens / st.decode_slots : 0;
    for (int i = 0; i < B; i++) {
        memcpy(out->digest[i], r[i].digest, 32);
        di_request_release(&r[i]);
    }
    return 0;
}

static int by_tps(const void *a, const void *b)
{
    double x = ((const outcome *)a)->decode_tps, y = ((const outcome *)b)->decode_tps;
    return (x > y) - (x < y);
}

/* run_batch once untimed, then --runs times: the median run by decode tokens/s into out; 1 if a
 * run's digests differ from the first's (each run is the same requests: the same bits) */
static int run_median(const opts *o, bench_model *bm, int32_t **ids, const int *lens, int n_prompts, const workload *w, int B,
                      const di_draft_opts *d, outcome *out)
{
    enum { MAX_RUNS = 101 };
    static outcome runs[MAX_RUNS];
    int rc = run_batch(o, bm, ids, lens, n_prompts, w, B, d, &runs[0]);
    for (int i = 0; i < o->runs && !rc; i++) rc = run_batch(o, bm, ids, lens, n_prompts, w, B, d, &runs[i + 1]);
    if (rc) return rc;
    for (int i = 1; i <= o->runs; i++)
        if (memcmp(runs[i].digest, runs[0].digest, sizeof runs[0].digest[0] * (size_t)B)) {
            fprintf(stderr, "bench_spec: batch %d: run %d gave other bits than the first\n", B, i);
            return 1;
        }
    qsort(runs + 1, (size_t)o->runs, sizeof *runs, by_tps);
    *out = runs[1 + o->runs / 2];
    return 0;
}

static void print_line(const char *model, const workload *w, int B, const char *spec, const outcome *x, const outcome *off,
                       bool same)
{
    printf("%-32s %-8s %5d  %-9s %9.2f %9.2f %8ld %8ld %8.1f%% %8.3fx  %s  (%ld tokens, %.1f s)\n", model, w->name, B, spec,
           x->decode_tps, x->tokens_per_step, x->drafted, x->accepted, x->drafted ? 100.0 * x->accepted / x->drafted : 0.0,
           off->decode_tps > 0 ? x->decode_tps / off->decode_tps : 0.0, same ? "same bits" : "BITS DIFFER", x->gen, x->s);
    fflush(stdout);
}

/* Whether every request of b has a's digest; the first that differs is named on stderr. */
static bool same_digests(const outcome *a, const outcome *b, int B, const char *model, const workload *w, const char *spec)
{
    for (int i = 0; i < B; i++)
        if (memcmp(a->digest[i], b->digest[i], 32)) {
            fprintf(stderr, "bench_spec: %s %s batch %d %s: request %d's digest differs from plain decoding's\n", model,
                    w->name, B, spec, i);
            return false;
        }
    return true;
}

static int open_model(const opts *o, di_rt *rt, const char *path, bench_model *bm)
{
    di_err err = {0};
    int maxb = 1;
    for (int i = 0; i < o->n_batches; i++) maxb = o->batches[i] > maxb ? o->batches[i] : maxb;
    *bm = (bench_model){.path = path};
    if (di_gguf_open(path, &bm->g, &err) || di_tokenizer_load(bm->g, &bm->tok, &err)) {
        fprintf(stderr, "bench_spec: -m %s: %s\n", path, err.msg);
        return 2;
    }
    /* Gemma 3's file has no chat template: its family's */
    if (di_chat_template_load(bm->g, NULL, &bm->tmpl, &err) && di_chat_template_load(bm->g, "gemma", &bm->tmpl, &err)) {
        fprintf(stderr, "bench_spec: -m %s: %s\n", path, err.msg);
        return 2;
    }
    /* room for the longest prompt (a few hundred tokens), --gen and a last draft */
    int kvb = di_model_kv_block(), ctx = 512 + o->gen + DI_DRAFT_MAX;
    ctx = ctx < 1024 ? 1024 : (ctx + kvb - 1) / kvb * kvb;
    di_model_opts mo = {.max_batch_tokens = o->max_batch_tokens, .ctx = ctx, .max_seqs = maxb, .kv_blocks = maxb * ((ctx + kvb - 1) / kvb)};
    if (di_model_load_gguf(bm->g, rt, &mo, &bm->m, &err)) { fprintf(stderr, "bench_spec: -m %s: %s\n", path, err.msg); return 2; }
    if (o->draft_model && di_model_load(o->draft_model, rt, &mo, &bm->draft, &err)) {
        fprintf(stderr, "bench_spec: --draft-model %s: %s\n", o->draft_model, err.msg);
        return 2;
    }
    const int32_t *eog;
    bm->n_stop = di_tokenizer_eog(bm->tok, &eog);
    memcpy(bm->stops, eog, sizeof *eog * (size_t)bm->n_stop);
    int32_t end = di_tokenizer_special(bm->tok, di_chat_template_end(bm->tmpl));
    if (end >= 0 && !di_tokenizer_is_eog(bm->tok, end)) bm->stops[bm->n_stop++] = end;
    return 0;
}

static void close_model(bench_model *bm)
{
    di_model_free(bm->draft);
    di_model_free(bm->m);
    di_chat_template_free(bm->tmpl);
    di_tokenizer_free(bm->tok);
    di_gguf_close(bm->g);
}

/* Every workload and batch size of one model: 0, 1 if a speculating run changed a bit, 2 if the
 * model would not load, 3 if a run failed. */
static int bench(const opts *o, di_rt *rt, const char *path)
{
    bench_model bm;
    int rc = open_model(o, rt, path, &bm);
    if (rc) { close_model(&bm); return rc; }
    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    di_err err = {0};
    /* warm-up: kernels compiled (or loaded) before anything is timed */
    int n;
    int32_t *warm = render(&bm, "Hi", &n, &err);
    outcome x;
    opts o1 = *o;
    o1.gen = 2;
    if (!warm) fprintf(stderr, "bench_spec: %s\n", err.msg);
    if (!warm || run_batch(&o1, &bm, &warm, &n, 1, &novel, 1, NULL, &x)) { free(warm); close_model(&bm); return 3; }
    free(warm);
    di_draft_opts lookup = {.draft_max = o->draft_max, .ngram_max = o->ngram, .ngram_min = o->ngram_min};
    di_draft_opts model = {.draft_max = o->draft_max, .model = true};
    int bad = 0;
    for (size_t k = 0; k < sizeof all_workloads / sizeof *all_workloads && !rc; k++) {
        const workload *w = all_workloads[k];
        if (!wanted(o, w)) continue;
        int32_t *ids[MAX_PROMPTS] = {0};
        int lens[MAX_PROMPTS], np = 0;
        for (; np < MAX_PROMPTS && w->prompts[np]; np++)
            if (!(ids[np] = render(&bm, w->prompts[np], &lens[np], &err))) { fprintf(stderr, "bench_spec: %s\n", err.msg); rc = 3; break; }
        for (int b = 0; b < o->n_batches && !rc; b++) {
            int B = o->batches[b];
            outcome off, on;
            if ((rc = run_median(o, &bm, ids, lens, np, w, B, NULL, &off))) break;
            print_line(name, w, B, "off", &off, &off, true);
            if ((rc = run_median(o, &bm, ids, lens, np, w, B, &lookup, &on))) break;
            char label[16];
            snprintf(label, sizeof label, "ngram%d", o->draft_max);
            bool same = same_digests(&off, &on, B, name, w, label);
            bad |= !same;
            print_line(name, w, B, label, &on, &off, same);
            if (!bm.draft) continue;
            if ((rc = run_median(o, &bm, ids, lens, np, w, B, &model, &on))) break;
            snprintf(label, sizeof label, "draft%d", o->draft_max);
            same = same_digests(&off, &on, B, name, w, label);
            bad |= !same;
            print_line(name, w, B, label, &on, &off, same);
        }
        for (int i = 0; i < np; i++) free(ids[i]);
    }
    close_model(&bm);
    return rc ? rc : bad;
}

int main(int argc, char **argv)
{
    opts o;
    int rc = parse(argc, argv, &o);
    if (rc >= 0) return rc;
    rc = 0;
    if (o.prompts_out) write_prompts(&o);
    di_profile prof = DI_PROFILE_EXACT;
    di_profile_parse(o.profile, &prof);
    di_rt_opts ro = {.backend = strcmp(o.device, "cuda") ? DI_BACKEND_C : DI_BACKEND_CUDA, .profile = prof, .threads = o.threads ? o.threads : (int)sysconf(_SC_NPROCESSORS_ONLN)};
    di_rt *rt = NULL;
    di_err err = {0};
    if (di_rt_open(&ro, &rt, &err)) { fprintf(stderr, "bench_spec: --device %s: %s\n", o.device, err.msg); return 2; }
    printf("bench_spec: %s; --gen %d, --draft-max %d, n-grams %d..%d, step budget %d; each line the median of %d runs "
           "after an untimed one\n", di_rt_describe(rt), o.gen, o.draft_max, o.ngram_min, o.ngram, o.max_batch_tokens, o.runs);
    printf("%-32s %-8s %5s  %-9s %9s %9s %8s %8s %9s %9s\n", "model", "workload", "batch", "spec", "decode/s", "tok/step",
           "drafted", "kept", "kept%", "speed-up");
    /* a model that changed a bit does not stop the others */
    for (int i = 0; i < o.n_models && (rc == 0 || rc == 1); i++) {
        int r = bench(&o, rt, o.models[i]);
        rc = rc ? rc : r;
    }
    if (rc == 1) fprintf(stderr, "bench_spec: FAILED: a speculating run changed a bit (above: which)\n");
    di_rt_close(rt);
    return rc == 3 ? 1 : rc;   /* 0: every speculating run gave plain decoding's bits; 1: not, or a run failed; 2: bad usage or model */
}
