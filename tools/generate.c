/* generate: text from a prompt, deterministically. Flags follow llama.cpp's where they exist.
 * One prompt (-p, -f) streams its text; --batch-file runs every line as its own request in
 * one batched engine and prints results in line order. Load experiments (--repeat,
 * --background, --arrival-seed) run the prompt many times among other requests and count
 * how many distinct completions and digests it got: with batch-invariant kernels, one. */
#include "model/engine.h"
#include "model/tokenizer.h"
#include "base/sha256.h"
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MODEL "SmolLM2-135M-Instruct.Q4_1.gguf"

typedef struct args {
    const char *model, *prompt, *prompt_file, *batch_file, *device, *dump_src, *dump_ptx, *background;
    di_profile profile;
    di_cpu_compiler cpu_compiler;
    bool chat, digest, json, no_prefix_cache, arrivals, ignore_eos;
    int n_predict, top_k, ctx, threads, chunk, max_batch_tokens, max_seqs, kv_blocks, repeat;
    float temp, top_p;
    uint64_t seed, arrival_seed;
} args;

/* what a request is, for --json and the load summary */
enum { K_PROMPT, K_BATCH, K_REPEAT, K_BACKGROUND };
static const char *const kind_name[] = {"prompt", "batch", "repeat", "background"};

static void usage(FILE *f)
{
    fprintf(f,
        "usage: generate [options]\n"
        "  -m, --model FILE        GGUF model (default: $DETINFER_MODEL_DIR or ~/.cache/detinfer/models/" DEFAULT_MODEL ")\n"
        "  -p, --prompt TEXT       prompt\n"
        "  -f, --file FILE         read the prompt from FILE\n"
        "      --batch-file FILE   one prompt per line, all run together; results in line order\n"
        "      --chat              wrap the prompt in the model's ChatML template\n"
        "      --ignore-eos        generate -n tokens even past end-of-text (load experiments)\n"
        "  -n, --n-predict N       tokens to generate (default 128)\n"
        "      --temp T            temperature (default 0.8; 0 = greedy)\n"
        "      --top-k K           (default 40; 0 = off)\n"
        "      --top-p P           (default 0.95; 1 = off)\n"
        "  -s, --seed S            sampling seed (default 42)\n"
        "  -c, --ctx N             context length in tokens (default 2048)\n"
        "  -t, --threads N         CPU threads (default: all cores)\n"
        "      --chunk N           prefill chunk size (default: whole prompt)\n"
        "      --max-batch-tokens N  tokens per forward step (default 256)\n"
        "      --max-seqs N        requests in flight (default: all)\n"
        "      --kv-blocks N       KV cache pool size in blocks (default: enough for every request at once)\n"
        "      --no-prefix-cache   compute every prompt in full instead of sharing cached KV blocks\n"
        "  device and numerics:\n"
        "      --device D          auto | cpu | cuda (default auto)\n"
        "      --profile P         %s (default exact; vendor: not invariant, for comparison)\n"
        "      --cpu-compiler C    tcc | cc | auto: what builds the CPU kernels (default auto: the system cc\n"
        "                          where it works, else libtcc; the same bits either way)\n"
        "  output:\n"
        "      --digest            print each request's SHA-256 of generated ids and log-prob bits\n"
        "      --json              one JSON object per request on stdout\n"
        "      --dump-cuda DIR     write generated kernel sources (and compile logs) to DIR\n"
        "      --dump-ptx DIR      write PTX (GPU) and compile logs to DIR\n"
        "  load experiments (the prompt of -p or -f, run many times; ends with a 'repeats:' line):\n"
        "      --repeat N          run the prompt as N separate requests\n"
        "      --concurrency C     requests in flight (same as --max-seqs)\n"
        "      --background FILE   other prompts, one per line, mixed in among the repeats\n"
        "      --arrival-seed S    random arrival steps in [0, 4 x requests), reproducible from S\n"
        "  -h, --help              this text\n"
        "      --version           print the version\n", di_profile_choices());
}

static int bad_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "generate: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(generate --help lists the options)\n");
    return 2;
}

static bool parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (*s == '-') return false;
    *out = strtoull(s, &end, 10);
    return !errno && end != s && !*end;
}

static bool parse_float(const char *s, float lo, float hi, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return false;
    *out = v;
    return true;
}

/* returns -1 to go on, else the exit status */
static int parse_args(int argc, char **argv, args *a)
{
    *a = (args){.device = "auto", .profile = DI_PROFILE_EXACT, .n_predict = 128, .top_k = 40, .ctx = 2048, .threads = 0,
                .chunk = 0, .max_batch_tokens = 256, .temp = 0.8f, .top_p = 0.95f, .seed = 42};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define IS(s, l) (!strcmp(o, s) || !strcmp(o, l))
#define NEED() do { if (!v) return bad_usage("%s needs a value", o); i++; } while (0)
        if (IS("-h", "--help")) { usage(stdout); return 0; }
        else if (!strcmp(o, "--version")) { printf("detinfer generate %s\n", DI_VERSION); return 0; }
        else if (IS("-m", "--model")) { NEED(); a->model = v; }
        else if (IS("-p", "--prompt")) { NEED(); a->prompt = v; }
        else if (IS("-f", "--file")) { NEED(); a->prompt_file = v; }
        else if (!strcmp(o, "--batch-file")) { NEED(); a->batch_file = v; }
        else if (!strcmp(o, "--chat")) a->chat = true;
        else if (!strcmp(o, "--ignore-eos")) a->ignore_eos = true;
        else if (!strcmp(o, "--digest")) a->digest = true;
        else if (!strcmp(o, "--json")) a->json = true;
        else if (IS("-n", "--n-predict")) { NEED(); if (!parse_int(v, 0, 1 << 20, &a->n_predict)) return bad_usage("-n takes a count, not '%s'", v); }
        else if (!strcmp(o, "--top-k")) { NEED(); if (!parse_int(v, 0, INT_MAX, &a->top_k)) return bad_usage("--top-k takes a count, not '%s'", v); }
        else if (IS("-c", "--ctx")) { NEED(); if (!parse_int(v, 1, 1 << 20, &a->ctx)) return bad_usage("--ctx takes a positive count, not '%s'", v); }
        else if (IS("-t", "--threads")) { NEED(); if (!parse_int(v, 1, 1024, &a->threads)) return bad_usage("--threads takes 1..1024, not '%s'", v); }
        else if (!strcmp(o, "--chunk")) { NEED(); if (!parse_int(v, 1, 1 << 20, &a->chunk)) return bad_usage("--chunk takes a positive count, not '%s'", v); }
        else if (!strcmp(o, "--max-batch-tokens")) { NEED(); if (!parse_int(v, 1, 65535, &a->max_batch_tokens)) return bad_usage("--max-batch-tokens takes 1..65535, not '%s'", v); }
        else if (!strcmp(o, "--temp")) { NEED(); if (!parse_float(v, 0, 100, &a->temp)) return bad_usage("--temp takes 0..100, not '%s'", v); }
        else if (!strcmp(o, "--top-p")) { NEED(); if (!parse_float(v, 0, 1, &a->top_p)) return bad_usage("--top-p takes 0..1, not '%s'", v); }
        else if (IS("-s", "--seed")) { NEED(); if (!parse_u64(v, &a->seed)) return bad_usage("--seed takes an unsigned integer, not '%s'", v); }
        else if (!strcmp(o, "--max-seqs")) { NEED(); if (!parse_int(v, 1, 65535, &a->max_seqs)) return bad_usage("--max-seqs takes 1..65535, not '%s'", v); }
        else if (!strcmp(o, "--concurrency")) { NEED(); if (!parse_int(v, 1, 65535, &a->max_seqs)) return bad_usage("--concurrency takes 1..65535, not '%s'", v); }
        else if (!strcmp(o, "--kv-blocks")) { NEED(); if (!parse_int(v, 1, 1 << 24, &a->kv_blocks)) return bad_usage("--kv-blocks takes a positive count, not '%s'", v); }
        else if (!strcmp(o, "--no-prefix-cache")) a->no_prefix_cache = true;
        else if (!strcmp(o, "--repeat")) { NEED(); if (!parse_int(v, 1, 1 << 20, &a->repeat)) return bad_usage("--repeat takes a positive count, not '%s'", v); }
        else if (!strcmp(o, "--background")) { NEED(); a->background = v; }
        else if (!strcmp(o, "--arrival-seed")) {
            NEED();
            a->arrivals = true;
            if (!parse_u64(v, &a->arrival_seed)) return bad_usage("--arrival-seed takes an unsigned integer, not '%s'", v);
        }
        else if (!strcmp(o, "--device")) { NEED(); a->device = v; if (strcmp(v, "auto") && strcmp(v, "cpu") && strcmp(v, "cuda")) return bad_usage("--device takes auto, cpu or cuda, not '%s'", v); }
        else if (!strcmp(o, "--profile")) {
            NEED();
            if (!di_profile_parse(v, &a->profile)) {
                fprintf(stderr, "generate: --profile takes %s, not '%s'\n(generate --help lists the options)\n",
                        di_profile_choices(), v);
                return 2;
            }
        }
        else if (!strcmp(o, "--cpu-compiler")) {
            NEED();
            if (!di_cpu_compiler_parse(v, &a->cpu_compiler)) return bad_usage("--cpu-compiler takes tcc, cc or auto, not '%s'", v);
        }
        else if (!strcmp(o, "--dump-cuda")) { NEED(); a->dump_src = v; }
        else if (!strcmp(o, "--dump-ptx")) { NEED(); a->dump_ptx = v; }
        else return bad_usage("unknown option '%s'", o);
#undef IS
#undef NEED
    }
    int sources = !!a->prompt + !!a->prompt_file + !!a->batch_file;
    if (sources != 1) return bad_usage("%s", "give exactly one of -p, -f or --batch-file");
    if (a->batch_file && (a->repeat || a->background))
        return bad_usage("%s", a->repeat ? "--repeat needs -p or -f, not --batch-file" : "--background needs -p or -f, not --batch-file");
    return -1;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n - 1 == 0) { char *b = realloc(buf, cap *= 2); if (!b) { free(buf); buf = NULL; } else buf = b; }
    }
    fclose(f);
    if (buf) buf[n] = 0;
    if (len) *len = n;
    return buf;
}

static char *default_model(void)
{
    char *path = malloc(PATH_MAX);
    const char *dir = getenv("DETINFER_MODEL_DIR"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (dir && *dir) snprintf(path, PATH_MAX, "%s/%s", dir, DEFAULT_MODEL);
    else if (xdg && *xdg) snprintf(path, PATH_MAX, "%s/detinfer/models/%s", xdg, DEFAULT_MODEL);
    else snprintf(path, PATH_MAX, "%s/.cache/detinfer/models/%s", home ? home : ".", DEFAULT_MODEL);
    return path;
}

static double wall(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static void json_string(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch == '\n') fputs("\\n", f);
        else if (ch == '\t') fputs("\\t", f);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

typedef struct stream_ctx { const di_tokenizer *tok; bool on; } stream_ctx;

static void on_token(void *ctx, const di_request *r, int32_t t)
{
    (void)r;
    stream_ctx *s = ctx;
    if (!s->on) return;
    const char *b;
    size_t n;
    if (di_token_piece(s->tok, t, &b, &n) == 0) { fwrite(b, 1, n, stdout); fflush(stdout); }
}

static char *request_text(const di_tokenizer *tok, const di_request *r, size_t *len)
{
    size_t cap = 64, n = 0;
    char *out = malloc(cap);
    for (int i = 0; i < r->n_gen && out; i++) {
        const char *b;
        size_t k;
        if (di_token_piece(tok, r->tokens[i], &b, &k)) continue;
        while (n + k + 1 > cap) { char *o = realloc(out, cap *= 2); if (!o) { free(out); return NULL; } out = o; }
        memcpy(out + n, b, k);
        n += k;
    }
    if (out) out[n] = 0;
    *len = n;
    return out;
}

static void print_result(const args *a, const di_tokenizer *tok, const di_request *r, int index, int kind, bool streamed)
{
    char hex[65];
    di_hex(r->digest, 32, hex);
    size_t len;
    char *text = request_text(tok, r, &len);
    if (a->json) {
        printf("{\"request\":%d,\"kind\":\"%s\",\"text\":", index, kind_name[kind]);
        json_string(stdout, text ? text : "", text ? len : 0);
        printf(",\"tokens\":[");
        for (int i = 0; i < r->n_gen; i++) printf("%s%d", i ? "," : "", r->tokens[i]);
        printf("],\"logprobs\":[");
        for (int i = 0; i < r->n_gen; i++) printf("%s%.9g", i ? "," : "", r->logprobs[i]);
        printf("],\"digest\":\"%s\",\"finish\":\"%s\",\"prompt_tokens\":%d,\"arrival_step\":%ld,\"preemptions\":%d,"
               "\"prefix_hit_tokens\":%d,\"timings\":{\"admit_s\":%.6f,\"first_token_s\":%.6f,\"end_s\":%.6f}}\n",
               hex, r->finish == DI_DONE_EOS ? "stop" : "length", r->n_prompt, r->arrival_step, r->preemptions,
               r->prefix_hit_tokens, r->t_admit, r->t_first, r->t_end);
    } else if (kind == K_PROMPT || kind == K_BATCH) {
        if (!streamed) { fwrite(text ? text : "", 1, text ? len : 0, stdout); }
        fputc('\n', stdout);
        if (a->digest) printf("digest %d %s\n", index, hex);
    } else if (a->digest) {
        printf("digest %d %s %s\n", index, kind_name[kind], hex);   /* load runs print no text: too many */
    }
    free(text);
}

/* The non-empty lines of a file, in place in one buffer; exit status 2 on a problem. */
static int read_lines(const char *path, const char *flag, char ***lines, int *n)
{
    char *all = read_file(path, NULL);
    if (!all) { fprintf(stderr, "generate: %s %s: %s\n", flag, path, strerror(errno)); return 2; }
    *lines = NULL;
    *n = 0;
    bool empty_line = false;
    for (char *line = all, *next; line && *line && !empty_line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        if (!*line) {
            fprintf(stderr, "generate: %s %s:%d: empty prompt line\n", flag, path, *n + 1);
            empty_line = true;
            break;
        }
        *lines = realloc(*lines, sizeof **lines * (size_t)(*n + 1));
        (*lines)[(*n)++] = line;
    }
    if (*n == 0 || empty_line) {
        if (!empty_line) fprintf(stderr, "generate: %s %s holds no prompt\n", flag, path);
        free(all);
        free(*lines);
        *lines = NULL;
        *n = 0;
        return 2;
    }
    return 0;   /* (*lines)[0] is the file's buffer: freeing it frees every line */
}

/* The requests' texts and kinds. A load run spreads the repeats evenly among the background
 * prompts (request i is a repeat when floor((i+1)N/T) steps up), so both kinds share steps. */
/* owned[0..1] receive the file buffers the texts point into (freed by the caller). */
static int gather_prompts(const args *a, char ***texts, int **kinds, int *n_req, char *owned[2])
{
    char **bg = NULL, *prompt = (char *)a->prompt;
    int n_bg = 0, rc;
    if (a->batch_file) {
        if ((rc = read_lines(a->batch_file, "--batch-file", texts, n_req))) return rc;
        owned[0] = (*texts)[0];
        *kinds = calloc((size_t)*n_req, sizeof **kinds);
        for (int i = 0; i < *n_req; i++) (*kinds)[i] = K_BATCH;
        return 0;
    }
    if (a->prompt_file && !(prompt = owned[0] = read_file(a->prompt_file, NULL))) {
        fprintf(stderr, "generate: -f %s: %s\n", a->prompt_file, strerror(errno));
        return 2;
    }
    if (a->background && (rc = read_lines(a->background, "--background", &bg, &n_bg))) return rc;
    if (bg) owned[1] = bg[0];
    long reps = a->repeat ? a->repeat : 1, total = reps + n_bg;
    *n_req = (int)total;
    *texts = malloc(sizeof **texts * (size_t)total);
    *kinds = malloc(sizeof **kinds * (size_t)total);
    bool load = a->repeat || a->background;
    for (long i = 0, b = 0; i < total; i++) {
        bool rep = (i + 1) * reps / total > i * reps / total;
        (*texts)[i] = rep ? prompt : bg[b++];
        (*kinds)[i] = !load ? K_PROMPT : rep ? K_REPEAT : K_BACKGROUND;
    }
    free(bg);
    return 0;
}

/* Tokenizes every prompt into its request; sums the KV blocks they could need. */
static int make_requests(const args *a, const di_tokenizer *tok, char **texts, int n_req, di_request *reqs,
                         int32_t **ids, int *blocks)
{
    di_err err = {0};
    *blocks = 0;
    for (int i = 0; i < n_req; i++) {
        char *text = a->chat ? di_chat_prompt(texts[i]) : texts[i];
        size_t n = 0;
        int trc = di_tokenize(tok, text, strlen(text), a->chat, &ids[i], &n, &err);
        if (a->chat) free(text);
        if (trc) { fprintf(stderr, "generate: %s\n", err.msg); return 2; }
        if (n == 0) { fprintf(stderr, "generate: prompt %d is empty\n", i + 1); return 2; }
        if ((long)n >= a->ctx) {
            fprintf(stderr, "generate: prompt %d is %zu tokens, longer than the context (--ctx %d)\n", i + 1, n, a->ctx);
            return 2;
        }
        di_request *r = &reqs[i];
        r->prompt = ids[i];
        r->n_prompt = (int)n;
        r->n_predict = a->n_predict < a->ctx - (int)n ? a->n_predict : a->ctx - (int)n;
        r->sampler = (di_sampler){a->temp, a->top_k, a->top_p, a->seed};
        r->rng_id = 0;   /* every request draws from its own (seed, position) stream: batch mates cannot shift it */
        r->chunk = a->chunk;
        /* a seeded schedule spreads arrivals over about four steps per request, so the
         * batch grows and shrinks from step to step */
        r->arrival_step = a->arrivals ? (long)(di_uniform(a->arrival_seed, (uint64_t)i, 0) * 4.0 * n_req) : 0;
        *blocks += di_request_blocks(r);
    }
    return 0;
}

/* The last line of a load run: how many distinct results the repeated prompt got. */
static void load_summary(const di_request *reqs, const int *kinds, int n_req, double seconds)
{
    int reps = 0, uniq_text = 0, uniq_digest = 0;
    for (int i = 0; i < n_req; i++) {
        if (kinds[i] != K_REPEAT) continue;
        reps++;
        bool seen_text = false, seen_digest = false;
        for (int j = 0; j < i; j++) {
            if (kinds[j] != K_REPEAT) continue;
            seen_text |= reqs[j].n_gen == reqs[i].n_gen && !memcmp(reqs[j].tokens, reqs[i].tokens, sizeof(int32_t) * (size_t)reqs[i].n_gen);
            seen_digest |= !memcmp(reqs[j].digest, reqs[i].digest, 32);
        }
        uniq_text += !seen_text;
        uniq_digest += !seen_digest;
    }
    printf("repeats: %d, unique completions: %d, unique digests: %d, seconds: %.2f\n", reps, uniq_text, uniq_digest, seconds);
}

/* Progress of the first compile (later runs take the kernels from the cache): one line that
 * says so, kept up to date on a terminal. */
typedef struct compile_progress { int n; double seconds; bool tty; } compile_progress;

static void on_compile(void *ctx, const char *kernel, const char *compiler, double seconds)
{
    compile_progress *cp = ctx;
    cp->n++;
    cp->seconds += seconds;
    if (cp->n == 1 && !cp->tty)
        fprintf(stderr, "generate: compiling kernels with %s (the first run only; later runs take them from the "
                        "cache)\n", compiler);
    if (cp->tty)
        fprintf(stderr, "\rgenerate: compiling kernels with %s (the first run only): %d done, %.1f s, %.40s\033[K",
                compiler, cp->n, cp->seconds, kernel);
}

static compile_progress progress;

static di_rt *open_runtime(const args *a)
{
    di_err err = {0};
    progress.tty = isatty(2);
    di_rt_opts ro = {.backend = DI_BACKEND_C, .profile = a->profile,
                     .threads = a->threads ? a->threads : (int)sysconf(_SC_NPROCESSORS_ONLN),
                     .dump_src_dir = a->dump_src, .dump_ptx_dir = a->dump_ptx, .cpu_compiler = a->cpu_compiler,
                     .on_compile = on_compile, .on_compile_ctx = &progress};
    di_rt *rt = NULL;
    if (strcmp(a->device, "cpu")) {
        ro.backend = DI_BACKEND_CUDA;
        if (di_rt_open(&ro, &rt, &err)) {
            if (!strcmp(a->device, "cuda")) { fprintf(stderr, "generate: --device cuda: %s\n", err.msg); return NULL; }
            fprintf(stderr, "generate: no usable GPU (%s); running on the CPU\n", err.msg);
            rt = NULL;
        }
    }
    if (!rt) {
        ro.backend = DI_BACKEND_C;
        if (di_rt_open(&ro, &rt, &err)) { fprintf(stderr, "generate: %s\n", err.msg); return NULL; }
    }
    return rt;
}

/* Everything main holds, so that every exit, early or not, frees it in one place. */
typedef struct run_state {
    char *model_path, *owned[2];
    char **texts;
    int *kinds, n_req;
    di_rt *rt;
    di_gguf *g;
    di_tokenizer *tok;
    di_model *m;
    di_request *reqs;
    di_request **rp;
    int32_t **ids;
} run_state;

static void run_state_free(run_state *s)
{
    for (int i = 0; s->reqs && i < s->n_req; i++) di_request_release(&s->reqs[i]);
    for (int i = 0; s->ids && i < s->n_req; i++) free(s->ids[i]);
    free(s->reqs); free(s->rp); free(s->ids); free(s->kinds); free(s->texts);
    free(s->owned[0]); free(s->owned[1]);
    di_model_free(s->m);
    di_tokenizer_free(s->tok);
    di_gguf_close(s->g);
    if (s->rt) di_rt_close(s->rt);
    free(s->model_path);
}

/* Loads, runs and prints; returns the exit status. */
static int run(const args *ap, run_state *s)
{
    const args a = *ap;
    di_err err = {0};
    double t_load = wall();
    int rc;
    if ((rc = gather_prompts(&a, &s->texts, &s->kinds, &s->n_req, s->owned))) return rc;
    int n_req = s->n_req;
    if (!(s->rt = open_runtime(&a))) return 2;

    /* model and tokenizer: the GGUF is opened once, here; the model borrows it */
    FILE *probe = fopen(s->model_path, "rb");
    if (!probe) {
        fprintf(stderr, "generate: model %s: %s (scripts/fetch-model downloads the default model)\n", s->model_path,
                strerror(errno));
        return 2;
    }
    fclose(probe);
    /* tokenize first, to size the KV pool and reject prompts longer than the context */
    if (di_gguf_open(s->model_path, &s->g, &err)) { fprintf(stderr, "generate: %s\n", err.msg); return 2; }
    if (di_tokenizer_load(s->g, &s->tok, &err)) { fprintf(stderr, "generate: %s\n", err.msg); return 2; }
    s->reqs = calloc((size_t)n_req, sizeof *s->reqs);
    s->rp = calloc((size_t)n_req, sizeof *s->rp);
    s->ids = calloc((size_t)n_req, sizeof *s->ids);
    if (!s->reqs || !s->rp || !s->ids) { fprintf(stderr, "generate: out of memory\n"); return 1; }
    int blocks = 0;
    if ((rc = make_requests(&a, s->tok, s->texts, n_req, s->reqs, s->ids, &blocks))) return rc;
    for (int i = 0; i < n_req; i++) s->rp[i] = &s->reqs[i];
    int in_flight = a.max_seqs && a.max_seqs < n_req ? a.max_seqs : n_req;
    di_model_opts mo = {.max_batch_tokens = a.max_batch_tokens, .ctx = a.ctx, .kv_blocks = a.kv_blocks ? a.kv_blocks : blocks,
                        .max_seqs = in_flight};
    if (di_model_load_gguf(s->g, s->rt, &mo, &s->m, &err)) {
        fprintf(stderr, "generate: %s\n", err.msg);
        return err.code == DI_ENOMEM || err.code == DI_EDEVICE ? 1 : 2;
    }
    t_load = wall() - t_load;
    di_rt_stats rs = di_rt_get_stats(s->rt);
    if (progress.tty && progress.n) fprintf(stderr, "\n");
    fprintf(stderr, "generate: %s; model %s loaded in %.2f s; kernels: %ld compiled in %.2f s, %ld from the cache\n",
            di_rt_describe(s->rt), s->model_path, t_load, rs.kernels_compiled, rs.compile_seconds, rs.kernels_from_cache);

    int32_t stops[2] = {di_tokenizer_eos(s->tok), di_tokenizer_special(s->tok, "<|endoftext|>")};
    stream_ctx sc = {s->tok, n_req == 1 && !a.json};
    di_engine_opts eo = {.max_batch_tokens = a.max_batch_tokens, .max_seqs = in_flight, .prefix_cache = !a.no_prefix_cache,
                         .stop_ids = stops, .n_stop = a.ignore_eos ? 0 : stops[1] >= 0 ? 2 : 1, .on_token = on_token, .ctx = &sc};
    di_engine_stats st;
    double t_run = wall();
    if (di_engine_run(s->m, s->rp, n_req, &eo, &st, &err)) {
        /* a request too big for the pool is the --kv-blocks value's fault: a usage error */
        fprintf(stderr, "\ngenerate: %s%s\n", a.kv_blocks && err.code == DI_EUSAGE ? "--kv-blocks: " : "", err.msg);
        return err.code == DI_EUSAGE ? 2 : 1;
    }
    t_run = wall() - t_run;
    for (int i = 0; i < n_req; i++) print_result(&a, s->tok, &s->reqs[i], i, s->kinds[i], sc.on);
    fflush(stdout);   /* results before the timing line when both go to one terminal */
    fprintf(stderr, "generate: prompt %ld tokens in %.2f s (%.1f tok/s); generated %ld tokens in %.2f s (%.1f tok/s); %ld steps; "
            "prefix cache %ld tokens; %ld preemptions; %ld evictions\n",
            st.prompt_tokens, st.prefill_s, st.prefill_s > 0 ? st.prompt_tokens / st.prefill_s : 0.0, st.gen_tokens,
            st.decode_s, st.decode_s > 0 ? (st.gen_tokens - n_req) / st.decode_s : 0.0, st.steps, st.prefix_hit_tokens,
            st.preemptions, st.evictions);
    if (a.repeat || a.background) load_summary(s->reqs, s->kinds, n_req, t_run);
    return 0;
}

int main(int argc, char **argv)
{
    args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) return rc;
    run_state s = {.model_path = a.model ? strdup(a.model) : default_model()};
    rc = run(&a, &s);
    run_state_free(&s);
    return rc;
}
