/* bench_engine: the throughput experiment of the batching engine, on any llama GGUF (random
 * weights included: prompts are random token ids, so no tokenizer is needed).
 *
 * N requests go through di_engine_run with C in flight and a seeded random arrival schedule.
 * Every `subject_every`-th request is the same subject prompt generating exactly 100 tokens;
 * the others are random prompts of 32..160 tokens generating 90..110 tokens (end-of-text is
 * not a stop: lengths are the experiment's, not the model's). Greedy. The run prints the total
 * time, prefill and decode tokens/s, and how many distinct digests the subject got (1 when the
 * profile is batch invariant). Run it once per profile, in separate processes, and compare.
 *
 * usage: bench_engine -m MODEL.gguf [--device cpu|cuda] [--profile exact|fast|vendor]
 *                     [--requests 1000] [--concurrency 64] [--subject-every 4] [--seed 1]
 *                     [--max-batch-tokens 512] [-t threads] */
#include "tools/cli.h"
#include "model/engine.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct opts {
    const char *model, *device, *profile;
    int requests, concurrency, subject_every, max_batch_tokens, threads;
    unsigned long seed;
    di_cpu_compiler cpu_compiler;
} opts;

static int usage(const char *why)
{
    if (why) fprintf(stderr, "bench_engine: %s\n", why);
    fprintf(stderr, "usage: bench_engine -m MODEL.gguf [--device cpu|cuda] [--profile exact|fast|vendor]\n"
                    "                    [--requests N] [--concurrency C] [--subject-every K] [--seed S]\n"
                    "                    [--max-batch-tokens T] [-t threads] [--cpu-compiler tcc|cc|auto]\n");
    return 2;
}

static int parse(int argc, char **argv, opts *o)
{
    *o = (opts){.device = "cuda", .profile = "fast", .requests = 1000, .concurrency = 64, .subject_every = 4,
                .max_batch_tokens = 512, .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int *ip = !strcmp(a, "--requests") ? &o->requests : !strcmp(a, "--concurrency") ? &o->concurrency
                : !strcmp(a, "--subject-every") ? &o->subject_every : !strcmp(a, "--max-batch-tokens") ? &o->max_batch_tokens
                : !strcmp(a, "-t") ? &o->threads : NULL;
        if (!v) return usage("every option takes a value");
        if (ip) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 1 || n > 1000000) { fprintf(stderr, "bench_engine: %s takes 1..1000000, not '%s'\n", a, v); return 2; }
            *ip = (int)n;
        } else if (!strcmp(a, "-m")) o->model = v;
        else if (!strcmp(a, "--device")) o->device = v;
        else if (!strcmp(a, "--profile")) o->profile = v;
        else if (!strcmp(a, "--seed")) o->seed = strtoul(v, NULL, 10);
        else if (!strcmp(a, "--cpu-compiler")) {
            if (!di_cpu_compiler_parse(v, &o->cpu_compiler)) {
                fprintf(stderr, "bench_engine: --cpu-compiler takes tcc, cc or auto, not '%s'\n", v);
                return 2;
            }
        }
        else { fprintf(stderr, "bench_engine: unknown option '%s'\n", a); return usage(NULL); }
        i++;
    }
    if (!o->model) return usage("-m MODEL is required");
    if (strcmp(o->device, "cpu") && strcmp(o->device, "cuda")) return usage("--device takes cpu or cuda");
    di_profile pr;
    if (!di_profile_parse(o->profile, &pr)) { fprintf(stderr, "bench_engine: --profile takes %s\n", di_profile_choices()); return 2; }
    return -1;
}

/* splitmix64: the benchmark's own inputs, reproducible from --seed */
static uint64_t next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

enum { SUBJECT_LEN = 96, SUBJECT_GEN = 100 };

/* Prompts and lengths: request i is the subject when i % every == 0. */
static int32_t *make_prompts(const opts *o, int vocab, di_request *r)
{
    uint64_t s = o->seed;
    int32_t *subject = malloc(sizeof *subject * SUBJECT_LEN);
    for (int j = 0; j < SUBJECT_LEN; j++) subject[j] = (int32_t)(next(&s) % (uint64_t)vocab);
    for (int i = 0; i < o->requests; i++) {
        bool subj = i % o->subject_every == 0;
        int len = subj ? SUBJECT_LEN : 32 + (int)(next(&s) % 129);
        int32_t *p = subj ? subject : malloc(sizeof *p * (size_t)len);
        for (int j = 0; !subj && j < len; j++) p[j] = (int32_t)(next(&s) % (uint64_t)vocab);
        r[i] = (di_request){.prompt = p, .n_prompt = len, .n_predict = subj ? SUBJECT_GEN : 90 + (int)(next(&s) % 21),
                            .sampler = {0.0f, 40, 0.95f, 1}, .arrival_step = (long)(next(&s) % (uint64_t)(o->requests))};
    }
    return subject;
}

int main(int argc, char **argv)
{
    opts o;
    int rc = parse(argc, argv, &o);
    if (rc >= 0) return rc;
    di_err err = {0};
    di_profile prof = DI_PROFILE_EXACT;
    di_profile_parse(o.profile, &prof);   /* checked by parse */
    di_rt_opts ro = {.backend = strcmp(o.device, "cuda") ? DI_BACKEND_C : DI_BACKEND_CUDA, .profile = prof, .threads = o.threads,
                     .cpu_compiler = o.cpu_compiler};
    di_rt *rt = NULL;
    if (di_rt_open(&ro, &rt, &err)) { fprintf(stderr, "bench_engine: --device %s: %s\n", o.device, err.msg); return 2; }
    int kvb = di_model_kv_block(), per_seq = (160 + 110 + kvb - 1) / kvb + 1;
    di_model_opts mo = {.max_batch_tokens = o.max_batch_tokens, .ctx = 512, .kv_blocks = o.concurrency * per_seq,
                        .max_seqs = o.concurrency};
    di_model *m = NULL;
    double t0 = cli_now();
    if (di_model_load(o.model, rt, &mo, &m, &err)) { fprintf(stderr, "bench_engine: %s\n", err.msg); di_rt_close(rt); return 2; }
    double t_load = cli_now() - t0;
    di_request *r = calloc((size_t)o.requests, sizeof *r);
    di_request **rp = calloc((size_t)o.requests, sizeof *rp);
    int32_t *subject = make_prompts(&o, di_model_config(m)->vocab, r);
    for (int i = 0; i < o.requests; i++) rp[i] = &r[i];
    di_engine_opts eo = {.max_batch_tokens = o.max_batch_tokens, .max_seqs = o.concurrency, .prefix_cache = true};
    di_engine_stats st;
    t0 = cli_now();
    rc = di_engine_run(m, rp, o.requests, &eo, &st, &err);
    double t_run = cli_now() - t0;
    if (rc) { fprintf(stderr, "bench_engine: %s\n", err.msg); return 1; }
    int subjects = 0, unique = 0, done = 0;
    for (int i = 0; i < o.requests; i++) {
        done += r[i].finish != DI_RUNNING;
        if (i % o.subject_every) continue;
        bool seen = false;
        for (int j = 0; j < i && !seen; j += o.subject_every) seen = !memcmp(r[j].digest, r[i].digest, 32);
        subjects++;
        unique += !seen;
    }
    printf("bench_engine: %s; model %s loaded in %.1f s\n", di_rt_describe(rt), o.model, t_load);
    printf("requests %d (finished %d), in flight %d, %ld steps, prompt tokens %ld, generated tokens %ld, "
           "prefix-cache tokens %ld, preemptions %ld\n", o.requests, done, o.concurrency, st.steps, st.prompt_tokens,
           st.gen_tokens, st.prefix_hit_tokens, st.preemptions);
    printf("profile %-6s seconds %.2f  generated tok/s %.1f  subject repeats %d, unique digests %d\n", o.profile, t_run,
           st.gen_tokens / t_run, subjects, unique);
    for (int i = 0; i < o.requests; i++) {
        if (r[i].prompt != subject) free((void *)r[i].prompt);
        di_request_release(&r[i]);
    }
    free(subject); free(r); free(rp);
    di_model_free(m);
    di_rt_close(rt);
    return 0;
}
