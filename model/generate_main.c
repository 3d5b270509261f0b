/* generate: text from a prompt, deterministically. Flags follow llama.cpp's where they exist.
 * One prompt (-p, -f) streams its text; --batch-file runs every line as its own request in
 * one batched engine and prints results in line order. */
#include "engine.h"
#include "tokenizer.h"
#include "../runtime/sha256.h"
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MODEL "SmolLM2-135M-Instruct.Q4_1.gguf"

typedef struct args {
    const char *model, *prompt, *prompt_file, *batch_file, *device, *profile, *dump_dir;
    bool chat, digest, json;
    int n_predict, top_k, ctx, threads, chunk, max_batch_tokens;
    float temp, top_p;
    uint64_t seed;
} args;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: generate [options]\n"
        "  -m, --model FILE        GGUF model (default: $DETINFER_MODEL_DIR or ~/.cache/detinfer/models/" DEFAULT_MODEL ")\n"
        "  -p, --prompt TEXT       prompt\n"
        "  -f, --file FILE         read the prompt from FILE\n"
        "      --batch-file FILE   one prompt per line, all run together; results in line order\n"
        "      --chat              wrap the prompt in the model's ChatML template\n"
        "  -n, --n-predict N       tokens to generate (default 128)\n"
        "      --temp T            temperature (default 0.8; 0 = greedy)\n"
        "      --top-k K           (default 40; 0 = off)\n"
        "      --top-p P           (default 0.95; 1 = off)\n"
        "  -s, --seed S            sampling seed (default 42)\n"
        "  -c, --ctx N             context length in tokens (default 2048)\n"
        "  -t, --threads N         CPU threads (default: all cores)\n"
        "      --chunk N           prefill chunk size (default: whole prompt)\n"
        "      --max-batch-tokens N  tokens per forward step (default 256)\n"
        "      --device D          auto | cpu | cuda (default auto)\n"
        "      --profile P         exact | fast | vendor (default exact; vendor: not invariant, for comparison)\n"
        "      --digest            print each request's SHA-256 of generated ids and log-prob bits\n"
        "      --json              one JSON object per request on stdout\n"
        "      --dump-cuda DIR     write generated kernel sources (and logs) to DIR\n"
        "      --dump-ptx DIR      write PTX (GPU) and logs to DIR\n"
        "  -h, --help              this text\n"
        "      --version           print the version\n");
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
    *a = (args){.device = "auto", .profile = "exact", .n_predict = 128, .top_k = 40, .ctx = 2048, .threads = 0,
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
        else if (IS("-s", "--seed")) {
            NEED();
            char *end;
            errno = 0;
            a->seed = strtoull(v, &end, 10);
            if (errno || end == v || *end) return bad_usage("--seed takes an unsigned integer, not '%s'", v);
        }
        else if (!strcmp(o, "--device")) { NEED(); a->device = v; if (strcmp(v, "auto") && strcmp(v, "cpu") && strcmp(v, "cuda")) return bad_usage("--device takes auto, cpu or cuda, not '%s'", v); }
        else if (!strcmp(o, "--profile")) { NEED(); a->profile = v; if (strcmp(v, "exact") && strcmp(v, "fast") && strcmp(v, "vendor")) return bad_usage("--profile takes exact, fast or vendor, not '%s'", v); }
        else if (!strcmp(o, "--dump-cuda") || !strcmp(o, "--dump-ptx")) { NEED(); a->dump_dir = v; }
        else return bad_usage("unknown option '%s'", o);
#undef IS
#undef NEED
    }
    int sources = !!a->prompt + !!a->prompt_file + !!a->batch_file;
    if (sources != 1) return bad_usage("%s", "give exactly one of -p, -f or --batch-file");
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

static void print_result(const args *a, const di_tokenizer *tok, const di_request *r, int index, bool streamed)
{
    char hex[65];
    di_hex(r->digest, 32, hex);
    size_t len;
    char *text = request_text(tok, r, &len);
    if (a->json) {
        printf("{\"request\":%d,\"text\":", index);
        json_string(stdout, text ? text : "", text ? len : 0);
        printf(",\"tokens\":[");
        for (int i = 0; i < r->n_gen; i++) printf("%s%d", i ? "," : "", r->tokens[i]);
        printf("],\"logprobs\":[");
        for (int i = 0; i < r->n_gen; i++) printf("%s%.9g", i ? "," : "", r->logprobs[i]);
        printf("],\"digest\":\"%s\",\"finish\":\"%s\",\"prompt_tokens\":%d,\"timings\":{\"admit_s\":%.6f,"
               "\"first_token_s\":%.6f,\"end_s\":%.6f}}\n",
               hex, r->finish == DI_DONE_EOS ? "stop" : "length", r->n_prompt, r->t_admit, r->t_first, r->t_end);
    } else {
        if (!streamed) { fwrite(text ? text : "", 1, text ? len : 0, stdout); }
        fputc('\n', stdout);
        if (a->digest) printf("digest %d %s\n", index, hex);
    }
    free(text);
}

int main(int argc, char **argv)
{
    args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) return rc;
    char *model_path = a.model ? strdup(a.model) : default_model();
    di_err err = {0};
    double t_load = wall();

    /* prompts */
    char **texts = NULL;
    int n_req = 0;
    if (a.batch_file) {
        size_t len;
        char *all = read_file(a.batch_file, &len);
        if (!all) { fprintf(stderr, "generate: --batch-file %s: %s\n", a.batch_file, strerror(errno)); return 2; }
        for (char *line = all, *next; line && *line; line = next) {
            next = strchr(line, '\n');
            if (next) *next++ = 0;
            texts = realloc(texts, sizeof *texts * (size_t)(n_req + 1));
            texts[n_req++] = line;
            if (!*line) { fprintf(stderr, "generate: %s:%d: empty prompt line\n", a.batch_file, n_req); return 2; }
        }
        if (n_req == 0) { fprintf(stderr, "generate: --batch-file %s holds no prompt\n", a.batch_file); return 2; }
    } else {
        texts = malloc(sizeof *texts);
        n_req = 1;
        if (a.prompt_file) {
            texts[0] = read_file(a.prompt_file, NULL);
            if (!texts[0]) { fprintf(stderr, "generate: -f %s: %s\n", a.prompt_file, strerror(errno)); return 2; }
        } else {
            texts[0] = (char *)a.prompt;
        }
    }

    /* backend */
    di_rt_opts ro = {.backend = DI_BACKEND_C, .profile = !strcmp(a.profile, "fast") ? DI_PROFILE_FAST : !strcmp(a.profile, "vendor") ? DI_PROFILE_VENDOR : DI_PROFILE_EXACT,
                     .threads = a.threads ? a.threads : (int)sysconf(_SC_NPROCESSORS_ONLN), .dump_dir = a.dump_dir};
    di_rt *rt = NULL;
    if (strcmp(a.device, "cpu")) {
        ro.backend = DI_BACKEND_CUDA;
        if (di_rt_open(&ro, &rt, &err)) {
            if (!strcmp(a.device, "cuda")) { fprintf(stderr, "generate: --device cuda: %s\n", err.msg); return 2; }
            fprintf(stderr, "generate: no usable GPU (%s); running on the CPU\n", err.msg);
            rt = NULL;
        }
    }
    if (!rt) {
        ro.backend = DI_BACKEND_C;
        if (di_rt_open(&ro, &rt, &err)) { fprintf(stderr, "generate: %s\n", err.msg); return 2; }
    }

    /* model and tokenizer: the GGUF is opened once by the model */
    FILE *probe = fopen(model_path, "rb");
    if (!probe) {
        fprintf(stderr, "generate: model %s: %s (scripts/fetch-model downloads the default model)\n", model_path,
                strerror(errno));
        return 2;
    }
    fclose(probe);
    /* tokenize first, to size the KV pool and reject prompts longer than the context */
    di_gguf *g = NULL;
    if (di_gguf_open(model_path, &g, &err)) { fprintf(stderr, "generate: %s\n", err.msg); return 2; }
    di_tokenizer *tok = NULL;
    if (di_tokenizer_load(g, &tok, &err)) { fprintf(stderr, "generate: %s\n", err.msg); return 2; }
    di_request *reqs = calloc((size_t)n_req, sizeof *reqs);
    di_request **rp = calloc((size_t)n_req, sizeof *rp);
    int32_t **ids = calloc((size_t)n_req, sizeof *ids);
    int blocks = 0;
    for (int i = 0; i < n_req; i++) {
        char *text = a.chat ? di_chat_prompt(texts[i]) : texts[i];
        size_t n = 0;
        if (di_tokenize(tok, text, strlen(text), a.chat, &ids[i], &n, &err)) { fprintf(stderr, "generate: %s\n", err.msg); return 2; }
        if (a.chat) free(text);
        if (n == 0) { fprintf(stderr, "generate: prompt %d is empty\n", i + 1); return 2; }
        if ((long)n >= a.ctx) {
            fprintf(stderr, "generate: prompt %d is %zu tokens, longer than the context (--ctx %d)\n", i + 1, n, a.ctx);
            return 2;
        }
        di_request *r = &reqs[i];
        r->prompt = ids[i];
        r->n_prompt = (int)n;
        r->n_predict = a.n_predict < a.ctx - (int)n ? a.n_predict : a.ctx - (int)n;
        r->sampler = (di_sampler){a.temp, a.top_k, a.top_p, a.seed};
        r->rng_id = 0;   /* every request draws from its own (seed, position) stream: batch mates cannot shift it */
        r->chunk = a.chunk;
        rp[i] = r;
        blocks += di_request_blocks(r);
    }
    di_model_opts mo = {.max_batch_tokens = a.max_batch_tokens, .ctx = a.ctx, .kv_blocks = blocks, .max_seqs = n_req};
    di_model *m = NULL;
    if (di_model_load(model_path, rt, &mo, &m, &err)) {
        fprintf(stderr, "generate: %s\n", err.msg);
        return err.code == DI_ENOMEM || err.code == DI_EDEVICE ? 1 : 2;
    }
    t_load = wall() - t_load;
    fprintf(stderr, "generate: %s; model %s loaded in %.2f s\n", di_rt_describe(rt), model_path, t_load);

    int32_t stops[2] = {di_tokenizer_eos(tok), di_tokenizer_special(tok, "<|endoftext|>")};
    stream_ctx sc = {tok, n_req == 1 && !a.json};
    di_engine_opts eo = {.max_batch_tokens = a.max_batch_tokens, .max_seqs = n_req, .stop_ids = stops,
                         .n_stop = stops[1] >= 0 ? 2 : 1, .on_token = on_token, .ctx = &sc};
    di_engine_stats st;
    if (di_engine_run(m, rp, n_req, &eo, &st, &err)) { fprintf(stderr, "\ngenerate: %s\n", err.msg); return 1; }
    for (int i = 0; i < n_req; i++) print_result(&a, tok, &reqs[i], i, sc.on);
    fprintf(stderr, "generate: prompt %ld tokens in %.2f s (%.1f tok/s); generated %ld tokens in %.2f s (%.1f tok/s); %ld steps\n",
            st.prompt_tokens, st.prefill_s, st.prefill_s > 0 ? st.prompt_tokens / st.prefill_s : 0.0, st.gen_tokens,
            st.decode_s, st.decode_s > 0 ? (st.gen_tokens - n_req) / st.decode_s : 0.0, st.steps);
    for (int i = 0; i < n_req; i++) { di_request_release(&reqs[i]); free(ids[i]); }
    free(reqs); free(rp); free(ids);
    di_model_free(m);
    di_tokenizer_free(tok);
    di_gguf_close(g);
    di_rt_close(rt);
    free(model_path);
    return 0;
}
