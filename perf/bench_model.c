/* bench_model: prefill and decode throughput of a whole model through the public model API
 * (di_model_load, di_model_set_blocks, di_model_forward), with deterministic pseudo-random
 * token ids.
 *
 *   prefill: one sequence of --prompt-len tokens in one forward step (logits for the last
 *            row only); the median over --prefill-runs runs after one warm-up run.
 *   decode:  for each batch size B, B sequences whose prompts (--prompt-len tokens each)
 *            are already in the KV cache, then --warmup + --steps steps of B rows (one
 *            token per sequence, logits and greedy ids for every row; the greedy id is fed
 *            back). tokens/s = B / median step time over the timed steps.
 *
 * Every forward is bracketed by di_rt_sync before the clock is read. Sequence slot s owns
 * KV blocks [s * bps, (s + 1) * bps); a slot is prefilled once, the first time a batch needs
 * it, and its decode positions are rewritten by every later batch (positions past the
 * prompt are what decode writes, so a slot's prompt stays valid).
 *
 * Bytes per decode step: every matrix of the layers and the lm head as loaded (bf16, or packed
 * codes on the CPU: "weights resident" says which), the f32 norms, and (reported apart) the K and V rows attention
 * reads. weight GB/s = weight bytes per step / median step time; % of roofline against the
 * memory bandwidth measured here first (a device-to-device copy of 1 GiB, read + write bytes,
 * the median of 10 after 2 untimed; a memcpy on the CPU), or --hbm-gbs X.
 *
 * usage: bench_model -m MODEL.gguf [--device auto|cpu|cuda] [--profile exact|fast|vendor]
 *        [--prompt-len N] [--batch B,...] [--steps N] [--warmup N] [--prefill-runs N]
 *        [-t threads] [--cpu-compiler tcc|cc|auto] [--weights auto|packed|bf16] [--launch L] [--hbm-gbs X] [--seed S] [--no-prefill] [--info] [--json] */
#include "tools/cli.h"
#include "model/model.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { MAX_BATCHES = 16 };

typedef struct options {
    const char *model, *device, *profile;
    di_cpu_compiler cpu_compiler;
    di_weights weights;
    di_launch_mode launch;
    int prompt_len, steps, warmup, prefill_runs, threads, nb;
    int batches[MAX_BATCHES];
    double hbm_gbs;
    unsigned long long seed;
    bool json, info, no_prefill;
} options;

typedef struct result {
    int batch, tokens;              /* rows per step */
    double median_s, min_s;
} result;

/* ---- options ------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: bench_model -m MODEL.gguf [options]\n"
        "  -m, --model FILE      GGUF llama model (make_random_gguf writes random ones)\n"
        "      --device D        auto | cpu | cuda (default auto: cuda when it opens)\n"
        "      --profile P       exact | fast | vendor (default exact; fast is GPU-only)\n"
        "      --prompt-len N    prompt tokens per sequence (default 512)\n"
        "      --batch B,...     decode batch sizes (default 1,8,32)\n"
        "      --steps N         timed decode steps per batch size (default 32)\n"
        "      --warmup N        untimed decode steps first (default 3)\n"
        "      --prefill-runs N  timed prefill forwards (default 5, after one warm-up)\n"
        "      --no-prefill      skip the prefill measurement (decode prompts are still prefilled)\n"
        "  -t, --threads N       CPU threads (default: all cores)\n"
        "      --cpu-compiler C  tcc | cc | auto: what builds the CPU kernels (default auto, as generate)\n"
        "      --weights W       auto | packed | bf16: auto keeps quantized matrices packed where the\n"
        "                        exact profile reads packs; packed also in fast on the GPU; bf16 converts every matrix\n"
        "      --launch L        auto | eager | padded | graphs: how a step's kernels are issued\n"
        "                        (default auto: CUDA graphs per row bucket in exact and fast on the GPU)\n"
        "      --hbm-gbs X       memory bandwidth roofline in GB/s (default: measured, a 1 GiB copy)\n"
        "      --seed S          token ids (default 1)\n"
        "      --info            print the model's shape, bytes and memory plan, load nothing\n"
        "      --json            one JSON object on stdout after the table\n"
        "  -h, --help            this text\n");
}

static int bad(const char *fmt, const char *arg) { return cli_usage_error("bench_model", fmt, arg); }

static int parse_batches(const char *s, int *out, int max)
{
    int n = 0;
    while (*s) {
        if (n == max) return -1;
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || end == s || v < 1 || v > 4096 || (*end && *end != ',')) return -1;
        out[n++] = (int)v;
        s = *end ? end + 1 : end;
        if (*end && !*s) return -1;
    }
    return n;
}

/* -1 to go on, else the exit status */
static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.device = "auto", .profile = "exact", .prompt_len = 512, .steps = 32, .warmup = 3,
                   .prefill_runs = 5, .threads = 0, .nb = 3, .batches = {1, 8, 32}, .hbm_gbs = 0, .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define IS(s, l) (!strcmp(a, s) || !strcmp(a, l))
#define NEED() do { if (!v) return bad("%s needs a value", a); i++; } while (0)
        if (IS("-h", "--help")) { usage(stdout); return 0; }
        else if (IS("-m", "--model")) { NEED(); o->model = v; }
        else if (!strcmp(a, "--device")) { NEED(); o->device = v; if (strcmp(v, "auto") && strcmp(v, "cpu") && strcmp(v, "cuda")) return bad("--device takes auto, cpu or cuda, not '%s'", v); }
        else if (!strcmp(a, "--profile")) { NEED(); o->profile = v; di_profile pr; if (!di_profile_parse(v, &pr)) { fprintf(stderr, "bench_model: --profile takes %s, not '%s'\n", di_profile_choices(), v); return 2; } }
        else if (!strcmp(a, "--prompt-len")) { NEED(); if (!cli_parse_int(v, 1, 1 << 20, &o->prompt_len)) return bad("--prompt-len takes a positive count, not '%s'", v); }
        else if (!strcmp(a, "--batch")) { NEED(); if ((o->nb = parse_batches(v, o->batches, MAX_BATCHES)) <= 0) return bad("--batch takes up to 16 sizes 1..4096 separated by commas, not '%s'", v); }
        else if (!strcmp(a, "--steps")) { NEED(); if (!cli_parse_int(v, 1, 1 << 20, &o->steps)) return bad("--steps takes a positive count, not '%s'", v); }
        else if (!strcmp(a, "--warmup")) { NEED(); if (!cli_parse_int(v, 0, 1 << 20, &o->warmup)) return bad("--warmup takes a count, not '%s'", v); }
        else if (!strcmp(a, "--prefill-runs")) { NEED(); if (!cli_parse_int(v, 1, 1 << 20, &o->prefill_runs)) return bad("--prefill-runs takes a positive count, not '%s'", v); }
        else if (!strcmp(a, "--no-prefill")) o->no_prefill = true;
        else if (!strcmp(a, "--cpu-compiler")) {
            NEED();
            if (!di_cpu_compiler_parse(v, &o->cpu_compiler)) {
                fprintf(stderr, "bench_model: --cpu-compiler takes tcc, cc or auto, not '%s'\n", v);
                return 2;
            }
        }
        else if (IS("-t", "--threads")) { NEED(); if (!cli_parse_int(v, 1, 1024, &o->threads)) return bad("--threads takes 1..1024, not '%s'", v); }
        else if (!strcmp(a, "--hbm-gbs")) {
            NEED();
            char *end;
            errno = 0;
            o->hbm_gbs = strtod(v, &end);
            if (errno || end == v || *end || !(o->hbm_gbs > 0 && o->hbm_gbs < 1e6)) return bad("--hbm-gbs takes a bandwidth in GB/s, not '%s'", v);
        }
        else if (!strcmp(a, "--seed")) {
            NEED();
            char *end;
            errno = 0;
            o->seed = strtoull(v, &end, 10);
            if (errno || end == v || *end || *v == '-') return bad("--seed takes an unsigned integer, not '%s'", v);
        }
        else if (!strcmp(a, "--weights")) {
            NEED();
            if (!di_weights_parse(v, &o->weights)) return bad("--weights takes auto, packed or bf16, not '%s'", v);
        }
        else if (!strcmp(a, "--launch")) {
            NEED();
            if (!di_launch_parse(v, &o->launch)) return bad("--launch takes auto, eager, padded or graphs, not '%s'", v);
        }
        else if (!strcmp(a, "--json")) o->json = true;
        else if (!strcmp(a, "--info")) o->info = true;
        else return bad("unknown option '%s'", a);
#undef IS
#undef NEED
    }
    if (!o->model) return bad("%s", "-m MODEL.gguf is required");
    di_profile pr = DI_PROFILE_EXACT;
    di_profile_parse(o->profile, &pr);
    if (!strcmp(o->device, "cpu") && !(di_profile_backends(pr) & DI_ON_CPU)) return bad("%s", "--profile fast needs the GPU; the CPU runs exact or vendor");
    return -1;
}

/* ---- the model's sizes, from the GGUF alone -------------------------------------------- */

typedef struct plan {
    di_config c;
    bool tied;
    double matrix_bytes;       /* every bf16 matrix, embedding included */
    double step_weight_bytes;  /* read once per decode step: layer matrices, lm head, norms */
    double kv_bytes_per_pos;   /* K and V, all layers, one position (f32 in the plan; as loaded after) */
    int kvb, ctx, blocks_per_seq, max_batch, max_batch_tokens;
} plan;

/* The shape as model.c reads it, for every architecture of model/arch.def (for --info, before
 * anything is loaded). */
static int read_shape(const char *path, di_config *c, bool *tied, di_err *err)
{
    di_gguf *g = NULL;
    if (di_gguf_open(path, &g, err)) return err->code;
    int rc = di_model_read_config(g, c, err);
    if (!rc) *tied = !di_gguf_tensor_find(g, "output.weight");
    di_gguf_close(g);
    return rc;
}

static void make_plan(plan *p, const options *o)
{
    const di_config *c = &p->c;
    double D = c->dim, Q = (double)c->n_heads * c->head_dim, KV = (double)c->n_kv_heads * c->head_dim, F = c->ffn,
           V = c->vocab, L = c->n_layers;
    double layer = D * (Q + 2 * KV) + Q * D + 2 * F * D + F * D;   /* elements */
    p->matrix_bytes = 2 * (L * layer + V * D * (p->tied ? 1 : 2));
    p->step_weight_bytes = 2 * (L * layer + V * D) + 4 * (2 * L + 1) * D;
    p->kv_bytes_per_pos = 2 * L * KV * 4;
    p->kvb = di_model_kv_block();
    int positions = o->prompt_len + o->warmup + o->steps;
    p->blocks_per_seq = (positions + p->kvb - 1) / p->kvb;
    p->ctx = p->blocks_per_seq * p->kvb;
    p->max_batch = 1;
    for (int i = 0; i < o->nb; i++)
        if (o->batches[i] > p->max_batch) p->max_batch = o->batches[i];
    p->max_batch_tokens = o->prompt_len > p->max_batch ? o->prompt_len : p->max_batch;
}

static void print_plan(const plan *p, const options *o, const char *path)
{
    const di_config *c = &p->c;
    double kv = p->kv_bytes_per_pos * p->ctx * p->max_batch;
    double act = (double)p->max_batch_tokens *
                 (4.0 * (4 * c->dim + (c->n_heads + 2 * c->n_kv_heads) * c->head_dim + c->n_heads * c->head_dim +
                         3 * c->ffn + 2.0 * c->vocab));
    printf("model %s: %d layers, dim %d, %d heads (%d KV, head dim %d), ffn %d, vocab %d, rope base %g, eps %g, "
           "trained ctx %d, %s lm head\n", path, c->n_layers, c->dim, c->n_heads, c->n_kv_heads, c->head_dim, c->ffn,
           c->vocab, c->rope_base, c->eps, c->ctx_train, p->tied ? "tied" : "separate");
    printf("weights: %.0f bytes (%.3f GB) of bf16 matrices; %.0f bytes (%.3f GB) read per decode step "
           "(layer matrices + lm head + norms)\n", p->matrix_bytes, p->matrix_bytes / 1e9, p->step_weight_bytes,
           p->step_weight_bytes / 1e9);
    printf("plan: prompt %d, decode batches", o->prompt_len);
    for (int i = 0; i < o->nb; i++) printf("%s%d", i ? "," : " ", o->batches[i]);
    printf(", %d+%d steps; ctx %d (%d KV blocks of %d per sequence), max batch tokens %d\n", o->warmup, o->steps, p->ctx,
           p->blocks_per_seq, p->kvb, p->max_batch_tokens);
    printf("memory: KV cache %.4g GB (f32, %d sequences), activations ~%.4g GB, weights %.4g GB\n", kv / 1e9,
           p->max_batch, act / 1e9, p->matrix_bytes / 1e9);
}

/* ---- running ---------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int32_t token_id(unsigned long long seed, int seq, int pos, int vocab)
{
    unsigned long long x = seed * 0x9e3779b97f4a7c15ULL + (unsigned long long)seq * 0xd1b54a32d192ed03ULL + (unsigned long long)pos;
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return (int32_t)(x % (unsigned long long)vocab);
}

typedef struct bench {
    di_model *m;
    di_rt *rt;
    const plan *p;
    const options *o;
    int32_t *tok, *pos, *seq, *out_rows, *greedy;
    bool *prefilled;
} bench;

/* One forward, synced on both sides; returns its wall time in seconds, or < 0 on error. */
static double timed_forward(bench *b, int n, int n_out, float *logits, di_err *err)
{
    di_step s = {n, b->tok, b->pos, b->seq, n_out, b->out_rows, NULL, logits, b->greedy};
    if (di_rt_sync(b->rt, err)) return -1;
    double t0 = cli_now();
    if (di_model_forward(b->m, &s, err) || di_rt_sync(b->rt, err)) return -1;
    return cli_now() - t0;
}

static double prefill_slot(bench *b, int slot, float *logits, di_err *err)
{
    int P = b->o->prompt_len;
    for (int i = 0; i < P; i++) {
        b->tok[i] = token_id(b->o->seed, slot, i, b->p->c.vocab);
        b->pos[i] = i;
        b->seq[i] = slot;
    }
    b->out_rows[0] = P - 1;
    double t = timed_forward(b, P, 1, logits, err);
    if (t >= 0) b->prefilled[slot] = true;
    return t;
}

/* The last prompt row's logits of slot 0 (untimed): random weights must still give finite,
 * moderate logits, or the timings would be of NaN arithmetic. */
static int check_logits(bench *b, di_err *err)
{
    int V = b->p->c.vocab;
    float *l = malloc((size_t)V * sizeof *l);
    if (!l) return di_fail(err, DI_ENOMEM, "out of memory");
    int rc = prefill_slot(b, 0, l, err) < 0 ? err->code : DI_OK;
    if (!rc) {
        float lo = l[0], hi = l[0];
        double ss = 0;
        int bad = 0;
        for (int i = 0; i < V; i++) {
            if (!(l[i] == l[i]) || l[i] > 3e38f || l[i] < -3e38f) { bad++; continue; }
            lo = l[i] < lo ? l[i] : lo;
            hi = l[i] > hi ? l[i] : hi;
            ss += (double)l[i] * l[i];
        }
        printf("logits (slot 0, last prompt row): %s, range [%.3g, %.3g], rms %.3g, greedy id %d\n",
               bad ? "NOT FINITE" : "finite", lo, hi, sqrt(ss / V), b->greedy[0]);
        if (bad) rc = di_fail(err, DI_EFORMAT, "%d of %d logits are not finite", bad, V);
    }
    free(l);
    return rc;
}

static int run_prefill(bench *b, result *r, di_err *err)
{
    int runs = b->o->prefill_runs;
    double *t = calloc((size_t)runs, sizeof *t);
    if (!t) return di_fail(err, DI_ENOMEM, "out of memory");
    int rc = DI_OK;
    for (int i = -1; i < runs && !rc; i++) {
        double dt = prefill_slot(b, 0, NULL, err);
        if (dt < 0) rc = err->code;
        else if (i >= 0) t[i] = dt;
    }
    if (!rc) {
        *r = (result){1, b->o->prompt_len, median(t, runs), 0};
        r->min_s = t[0];
    }
    free(t);
    return rc;
}

static int run_decode(bench *b, int B, result *r, di_err *err)
{
    const options *o = b->o;
    for (int s = 0; s < B; s++)
        if (!b->prefilled[s] && prefill_slot(b, s, NULL, err) < 0) return err->code;
    for (int s = 0; s < B; s++) {
        b->tok[s] = token_id(o->seed ^ 0x5eed, s, o->prompt_len, b->p->c.vocab);
        b->seq[s] = s;
        b->out_rows[s] = s;
    }
    double *t = calloc((size_t)o->steps, sizeof *t);
    if (!t) return di_fail(err, DI_ENOMEM, "out of memory");
    int rc = DI_OK;
    for (int step = 0; step < o->warmup + o->steps && !rc; step++) {
        for (int s = 0; s < B; s++) b->pos[s] = o->prompt_len + step;
        double dt = timed_forward(b, B, B, NULL, err);
        if (dt < 0) { rc = err->code; break; }
        if (step >= o->warmup) t[step - o->warmup] = dt;
        for (int s = 0; s < B; s++) b->tok[s] = b->greedy[s];   /* greedy continuation */
    }
    if (!rc) {
        *r = (result){B, B, median(t, o->steps), 0};
        r->min_s = t[0];
    }
    free(t);
    return rc;
}

/* ---- main ------------------------------------------------------------------------------------- */

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

/* The roofline: read + write bytes per second of a 1 GiB buffer-to-buffer copy, the median of
 * 10 after 2 untimed (the device's copy engine path on the GPU, memcpy on the CPU). */
static int copy_gbs(di_rt *rt, double *gbs, di_err *err)
{
    enum { REPS = 12, WARM = 2 };
    const size_t bytes = (size_t)1 << 30;
    di_buf *a = NULL, *b = NULL;
    double t[REPS];
    int rc = di_buf_alloc(rt, bytes, &a, err) || di_buf_alloc(rt, bytes, &b, err) ? err->code : DI_OK;
    for (int i = 0; i < REPS && !rc; i++) {
        double t0 = cli_now();
        rc = di_buf_copy(b, a, bytes, err) || di_rt_sync(rt, err) ? err->code : DI_OK;
        t[i] = cli_now() - t0;
    }
    if (!rc) *gbs = 2.0 * bytes / median(t + WARM, REPS - WARM) / 1e9;
    di_buf_free(a);
    di_buf_free(b);
    return rc;
}

int main(int argc, char **argv)
{
    options o;
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0) return rc;
    di_err err = {0};
    plan p = {0};
    if (read_shape(o.model, &p.c, &p.tied, &err)) {
        fprintf(stderr, "bench_model: %s\n", err.msg);
        return err.code == DI_ENOMEM ? 1 : 2;
    }
    make_plan(&p, &o);
    print_plan(&p, &o, o.model);
    if (o.info) return 0;
    if (p.max_batch_tokens > 65535) return bad("%s", "--prompt-len and --batch are at most 65535 rows per step");

    /* backend, as generate opens it */
    di_rt_opts ro = {.backend = DI_BACKEND_C,
                     .profile = DI_PROFILE_EXACT,
                     .threads = o.threads ? o.threads : (int)sysconf(_SC_NPROCESSORS_ONLN),
                     .cpu_compiler = o.cpu_compiler};
    di_profile_parse(o.profile, &ro.profile);   /* checked by parse_args */
    di_rt *rt = NULL;
    if (strcmp(o.device, "cpu")) {
        ro.backend = DI_BACKEND_CUDA;
        if (di_rt_open(&ro, &rt, &err)) {
            if (!strcmp(o.device, "cuda")) { fprintf(stderr, "bench_model: --device cuda: %s\n", err.msg); return 2; }
            fprintf(stderr, "bench_model: no usable GPU (%s); running on the CPU\n", err.msg);
            rt = NULL;
        }
    }
    if (!rt) {
        ro.backend = DI_BACKEND_C;
        if (di_rt_open(&ro, &rt, &err)) { fprintf(stderr, "bench_model: %s\n", err.msg); return 2; }
    }
    const char *profile = di_profile_name(di_rt_profile(rt));

    di_model_opts mo = {.max_batch_tokens = p.max_batch_tokens, .ctx = p.ctx,
                        .kv_blocks = p.blocks_per_seq * p.max_batch, .max_seqs = p.max_batch, .weights = o.weights,
                        .launch = o.launch};
    di_model *m = NULL;
    double t_load = cli_now();
    if (di_model_load(o.model, rt, &mo, &m, &err)) {
        fprintf(stderr, "bench_model: %s\n", err.msg);
        di_rt_close(rt);
        return err.code == DI_ENOMEM || err.code == DI_EDEVICE ? 1 : 2;
    }
    t_load = cli_now() - t_load;
    di_rt_stats rs = di_rt_get_stats(rt);
    printf("device: %s; profile %s; launch %s; loaded in %.2f s (%ld kernels compiled, %ld from cache)\n",
           di_rt_describe(rt), profile, di_launch_name(di_model_launch(m)), t_load, rs.kernels_compiled,
           rs.kernels_from_cache);
    /* what is resident and read per step, as loaded (packed matrices are smaller than bf16) */
    di_model_weights wi = di_model_weights_info(m);
    printf("weights resident: %.4g GB, %d of %d matrices packed; %.4g GB read per decode step\n", wi.bytes / 1e9,
           wi.packed, wi.matrices, (wi.step_bytes + 4.0 * (2 * p.c.n_layers + 1) * p.c.dim) / 1e9);
    p.matrix_bytes = (double)wi.bytes;
    p.step_weight_bytes = (double)wi.step_bytes + 4.0 * (2 * p.c.n_layers + 1) * p.c.dim;
    p.kv_bytes_per_pos = (double)di_model_kv_bytes_per_pos(m);
    bool measured = o.hbm_gbs == 0;
    if (measured && copy_gbs(rt, &o.hbm_gbs, &err)) {
        fprintf(stderr, "bench_model: measuring the copy bandwidth: %s\n", err.msg);
        di_model_free(m);
        di_rt_close(rt);
        return 1;
    }
    printf("roofline: %.0f GB/s (%s)\n", o.hbm_gbs,
           measured ? "measured: a 1 GiB copy, read + write bytes, median of 10" : "--hbm-gbs");
    printf("KV cache: %.0f bytes per position (%s)\n", p.kv_bytes_per_pos,
           p.kv_bytes_per_pos < 2.0 * p.c.n_layers * p.c.n_kv_heads * p.c.head_dim * 4 ? "bf16 where the tensor-core attention reads it" : "f32");
    fflush(stdout);

    bench b = {.m = m, .rt = rt, .p = &p, .o = &o};
    int R = p.max_batch_tokens;
    b.tok = calloc((size_t)R, 4); b.pos = calloc((size_t)R, 4); b.seq = calloc((size_t)R, 4);
    b.out_rows = calloc((size_t)R, 4); b.greedy = calloc((size_t)R, 4);
    b.prefilled = calloc((size_t)p.max_batch, sizeof *b.prefilled);
    int32_t *blocks = calloc((size_t)p.blocks_per_seq, 4);
    rc = (!b.tok || !b.pos || !b.seq || !b.out_rows || !b.greedy || !b.prefilled || !blocks)
             ? di_fail(&err, DI_ENOMEM, "out of memory") : DI_OK;
    for (int s = 0; s < p.max_batch && !rc; s++) {
        for (int i = 0; i < p.blocks_per_seq; i++) blocks[i] = s * p.blocks_per_seq + i;
        rc = di_model_set_blocks(m, s, blocks, p.blocks_per_seq, &err);
    }

    result pre = {0}, dec[MAX_BATCHES] = {{0}};
    bool have_pre = false;
    if (!rc) rc = check_logits(&b, &err);
    if (!rc && !o.no_prefill) {
        rc = run_prefill(&b, &pre, &err);
        if (!rc) {
            have_pre = true;
            printf("prefill: %d tokens, median %.3f ms (min %.3f) -> %.1f tokens/s\n", o.prompt_len, pre.median_s * 1e3,
                   pre.min_s * 1e3, o.prompt_len / pre.median_s);
            fflush(stdout);
        }
    }
    int done = 0;
    for (int i = 0; i < o.nb && !rc; i++, done++) {
        double t0 = cli_now();
        rc = run_decode(&b, o.batches[i], &dec[i], &err);
        if (rc) break;
        printf("decode: batch %d, median step %.3f ms (min %.3f) -> %.1f tokens/s  [%.1f s incl. prefills]\n",
               o.batches[i], dec[i].median_s * 1e3, dec[i].min_s * 1e3, o.batches[i] / dec[i].median_s, cli_now() - t0);
        fflush(stdout);
    }
    if (rc) fprintf(stderr, "bench_model: %s\n", err.msg);

    /* the table */
    printf("\n%-8s %6s %7s %11s %12s %11s %9s %9s\n", "phase", "batch", "tokens", "median_ms", "tokens/s", "weight_GB/s",
           "%roofline", "kv_GB/s");
    if (have_pre) {
        double gbs = p.step_weight_bytes / pre.median_s / 1e9;
        printf("%-8s %6d %7d %11.3f %12.1f %11.1f %9s %9s\n", "prefill", 1, pre.tokens, pre.median_s * 1e3,
               pre.tokens / pre.median_s, gbs, "-", "-");
    }
    for (int i = 0; i < done; i++) {
        const result *r = &dec[i];
        double gbs = p.step_weight_bytes / r->median_s / 1e9;
        /* attention reads, per step, each sequence's K and V up to its position: the mean over the timed steps */
        double kv = p.kv_bytes_per_pos * r->batch * (o.prompt_len + o.warmup + (o.steps + 1) / 2.0) / r->median_s / 1e9;
        char roof[16];
        snprintf(roof, sizeof roof, "%.1f%%", 100.0 * gbs / o.hbm_gbs);
        printf("%-8s %6d %7d %11.3f %12.1f %11.1f %9s %9.1f\n", "decode", r->batch, r->tokens, r->median_s * 1e3,
               r->batch / r->median_s, gbs, roof, kv);
    }
    printf("weight bytes: %.4g GB resident, %.4g GB read per step; weight_GB/s = bytes per step / median time;\n"
           "%%roofline = weight_GB/s / %.0f (the roofline above); kv_GB/s = K and V read by attention per step / median time\n",
           p.matrix_bytes / 1e9, p.step_weight_bytes / 1e9, o.hbm_gbs);
    di_rt_stats st = di_rt_get_stats(rt);
    printf("launches: %ld kernels issued or recorded; %ld graphs recorded (%ld nodes), %ld graph replays\n",
           st.launches, st.graphs_recorded, st.graph_nodes, st.graph_runs);
    if (o.json) {
        printf("{\"model\":");
        json_str(o.model);
        printf(",\"device\":");
        json_str(di_rt_describe(rt));
        printf(",\"launch\":\"%s\"", di_launch_name(di_model_launch(m)));
        printf(",\"profile\":\"%s\",\"layers\":%d,\"dim\":%d,\"vocab\":%d,\"prompt_len\":%d,\"steps\":%d,\"warmup\":%d,"
               "\"matrix_bytes\":%.0f,\"step_weight_bytes\":%.0f,\"hbm_gbs\":%g,\"load_s\":%.3f", profile, p.c.n_layers,
               p.c.dim, p.c.vocab, o.prompt_len, o.steps, o.warmup, p.matrix_bytes, p.step_weight_bytes, o.hbm_gbs, t_load);
        if (have_pre)
            printf(",\"prefill\":{\"tokens\":%d,\"median_s\":%.6f,\"min_s\":%.6f,\"tokens_per_s\":%.2f}", pre.tokens,
                   pre.median_s, pre.min_s, pre.tokens / pre.median_s);
        printf(",\"decode\":[");
        for (int i = 0; i < done; i++) {
            double gbs = p.step_weight_bytes / dec[i].median_s / 1e9;
            printf("%s{\"batch\":%d,\"median_s\":%.6f,\"min_s\":%.6f,\"tokens_per_s\":%.2f,\"weight_gbs\":%.2f,"
                   "\"roofline_frac\":%.4f}", i ? "," : "", dec[i].batch, dec[i].median_s, dec[i].min_s,
                   dec[i].batch / dec[i].median_s, gbs, gbs / o.hbm_gbs);
        }
        printf("],\"ok\":%s}\n", rc ? "false" : "true");
    }

    free(b.tok); free(b.pos); free(b.seq); free(b.out_rows); free(b.greedy); free(b.prefilled); free(blocks);
    di_model_free(m);
    di_rt_close(rt);
    return rc ? 1 : 0;
}
