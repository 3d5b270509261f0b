/* generate: text from a prompt, deterministically. Flags follow llama.cpp's where they exist.
 * One prompt (-p, -f) streams its text; --batch-file runs every line as its own request in
 * one batched engine and prints results in line order. Load experiments (--repeat,
 * --background, --arrival-seed) run the prompt many times among other requests and count
 * how many distinct completions and digests it got: with batch-invariant kernels, one. */
#include "tools/cli.h"
#include "model/chat.h"
#include "model/engine.h"
#include "model/receipt.h"
#include "model/tokenizer.h"
#include "base/file.h"
#include "base/sha256.h"
#include "base/utf8.h"
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
    di_launch_mode launch;
    di_weights weights;
    bool chat, digest, json, no_prefix_cache, arrivals, ignore_eos, score;
    int logprobs;             /* --logprobs N: top-N per token; -1 none */
    /* chat and model inspection (--tokenize, --info): no runtime is opened for those */
    const char *chat_template, *system, *messages;
    bool tokenize, info, special;
    int n_predict, top_k, ctx, threads, chunk, max_batch_tokens, max_seqs, kv_blocks, repeat;
    float temp, top_p;
    uint64_t seed, arrival_seed;
    /* speculative decoding: the same bits, fewer steps; draft_max -1: not given */
    int draft_max, draft_ngram, draft_ngram_min;
    bool ngram_given;
    const char *draft_model;
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
        "      --chat              wrap the prompt in the model's chat template (tokenizer.chat_template)\n"
        "      --chat-template NAME  use template family NAME instead (implies --chat): chatml, smollm, llama3,\n"
        "                          gemma, phi3, llama2, llama2-sys, mistral-v1, mistral-v3, mistral-v7, ...\n"
        "  -sys, --system TEXT     system message (implies --chat; default none, but a template with its own\n"
        "                          default system turn, as SmolLM2's, keeps it)\n"
        "      --messages FILE     the conversation as a JSON list of {\"role\", \"content\"} (implies --chat)\n"
        "      --special           print special tokens (end of turn, ...) in the output text\n"
        "      --tokenize          print the prompt's token ids (BOS included where the vocabulary adds it) as\n"
        "                          one JSON array and exit; needs only the vocabulary\n"
        "      --info              print what the model file holds and everything in it detinfer cannot run\n"
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
        "  speculative decoding (tokens and log-prob bits exactly as without it):\n"
        "      --draft-max K       draft up to K (1..16) tokens per step and verify them in that step (default 0: off)\n"
        "      --draft-ngram N     prompt lookup: match the last N..M tokens of the text so far, longest first (default 3)\n"
        "      --draft-ngram-min M   the shortest n-gram matched (default 2, or N if N is 1)\n"
        "      --draft-model FILE  draft with this model's greedy tokens instead (same vocabulary; --draft-max default 4)\n"
        "  device and numerics:\n"
        "      --device D          auto | cpu | cuda (default auto)\n"
        "      --profile P         %s (default exact; vendor: not invariant, for comparison)\n"
        "      --cpu-compiler C    tcc | cc | auto: what builds the CPU kernels (default auto: the system cc\n"
        "                          where it works, else libtcc; the same bits either way)\n"
        "      --launch L          auto | eager | padded | graphs: how a step's kernels are issued (default auto:\n"
        "                          CUDA graphs per row bucket in exact and fast on the GPU; the same bits either way)\n"
        "      --weights W         auto | packed | bf16: auto keeps quantized matrices as their codes where the\n"
        "                          exact profile reads them; packed also in fast on the GPU (a third of bf16's\n"
        "                          memory, slower today); bf16 converts every matrix (the same bits each way)\n"
        "  output:\n"
        "      --digest            print each request's SHA-256 of generated ids and log-prob bits\n"
        "      --json              one JSON object per request on stdout (with log-prob bits and the receipt)\n"
        "      --logprobs N        the N (0..20) most likely tokens at each generated position, with log-probs\n"
        "      --score             the prompt's log-probs: of each prompt token after the ones before it\n"
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

static int bad_usage(const char *fmt, const char *arg) { return cli_usage_error("generate", fmt, arg); }

/* digits only: strtoull would also take leading blanks, '+' and '-' (" -1" wraps to 2^64-1) */
static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9') return false;
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

/* The speculation flags together: -1 to go on, else 2. */
static int check_draft_args(args *a)
{
    if (a->draft_max < 0) a->draft_max = a->draft_model ? 4 : 0;
    if (a->draft_model && a->draft_max == 0) return bad_usage("%s", "--draft-model needs --draft-max of 1..16, not 0");
    if (a->draft_model && a->ngram_given) return bad_usage("%s", "--draft-ngram and --draft-ngram-min are prompt lookup's; --draft-model drafts instead");
    return cli_draft_ngram("generate", a->ngram_given, a->draft_max, a->draft_ngram, &a->draft_ngram_min);
}

/* returns -1 to go on, else the exit status */
static int parse_args(int argc, char **argv, args *a)
{
    *a = (args){.device = "auto", .profile = DI_PROFILE_EXACT, .n_predict = 128, .top_k = 40, .ctx = 2048, .threads = 0,
                .chunk = 0, .max_batch_tokens = 256, .temp = 0.8f, .top_p = 0.95f, .seed = 42,
                .logprobs = -1, .draft_max = -1, .draft_ngram = 3, .draft_ngram_min = -1};
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
        else if (!strcmp(o, "--chat-template")) { NEED(); a->chat_template = v; a->chat = true; }
        else if (IS("-sys", "--system")) { NEED(); a->system = v; a->chat = true; }
        else if (!strcmp(o, "--messages")) { NEED(); a->messages = v; a->chat = true; }
        else if (!strcmp(o, "--special")) a->special = true;
        else if (!strcmp(o, "--tokenize")) a->tokenize = true;
        else if (!strcmp(o, "--info")) a->info = true;
        else if (!strcmp(o, "--ignore-eos")) a->ignore_eos = true;
        else if (!strcmp(o, "--digest")) a->digest = true;
        else if (!strcmp(o, "--json")) a->json = true;
        else if (!strcmp(o, "--score")) a->score = true;
        else if (!strcmp(o, "--logprobs")) { NEED(); if (!cli_parse_int(v, 0, DI_TOP_MAX, &a->logprobs)) return bad_usage("--logprobs takes 0..20, not '%s'", v); }
        else if (IS("-n", "--n-predict")) { NEED(); if (!cli_parse_int(v, 0, 1 << 20, &a->n_predict)) return bad_usage("-n takes a count, not '%s'", v); }
        else if (!strcmp(o, "--top-k")) { NEED(); if (!cli_parse_int(v, 0, INT_MAX, &a->top_k)) return bad_usage("--top-k takes a count, not '%s'", v); }
        else if (IS("-c", "--ctx")) { NEED(); if (!cli_parse_int(v, 1, 1 << 20, &a->ctx)) return bad_usage("--ctx takes a positive count, not '%s'", v); }
        else if (IS("-t", "--threads")) { NEED(); if (!cli_parse_int(v, 1, 1024, &a->threads)) return bad_usage("--threads takes 1..1024, not '%s'", v); }
        else if (!strcmp(o, "--chunk")) { NEED(); if (!cli_parse_int(v, 1, 1 << 20, &a->chunk)) return bad_usage("--chunk takes a positive count, not '%s'", v); }
        else if (!strcmp(o, "--max-batch-tokens")) { NEED(); if (!cli_parse_int(v, 1, 65535, &a->max_batch_tokens)) return bad_usage("--max-batch-tokens takes 1..65535, not '%s'", v); }
        else if (!strcmp(o, "--temp")) { NEED(); if (!parse_float(v, 0, 100, &a->temp)) return bad_usage("--temp takes 0..100, not '%s'", v); }
        else if (!strcmp(o, "--top-p")) { NEED(); if (!parse_float(v, 0, 1, &a->top_p)) return bad_usage("--top-p takes 0..1, not '%s'", v); }
        else if (IS("-s", "--seed")) { NEED(); if (!parse_u64(v, &a->seed)) return bad_usage("--seed takes an unsigned integer, not '%s'", v); }
        else if (!strcmp(o, "--max-seqs")) { NEED(); if (!cli_parse_int(v, 1, 65535, &a->max_seqs)) return bad_usage("--max-seqs takes 1..65535, not '%s'", v); }
        else if (!strcmp(o, "--concurrency")) { NEED(); if (!cli_parse_int(v, 1, 65535, &a->max_seqs)) return bad_usage("--concurrency takes 1..65535, not '%s'", v); }
        else if (!strcmp(o, "--kv-blocks")) { NEED(); if (!cli_parse_int(v, 1, 1 << 24, &a->kv_blocks)) return bad_usage("--kv-blocks takes a positive count, not '%s'", v); }
        else if (!strcmp(o, "--no-prefix-cache")) a->no_prefix_cache = true;
        else if (!strcmp(o, "--draft-max")) { NEED(); if (!cli_parse_int(v, 0, DI_DRAFT_MAX, &a->draft_max)) return bad_usage("--draft-max takes 0..16, not '%s'", v); }
        else if (!strcmp(o, "--draft-ngram")) { NEED(); a->ngram_given = true; if (!cli_parse_int(v, 1, DI_NGRAM_MAX, &a->draft_ngram)) return bad_usage("--draft-ngram takes 1..16, not '%s'", v); }
        else if (!strcmp(o, "--draft-ngram-min")) { NEED(); a->ngram_given = true; if (!cli_parse_int(v, 1, DI_NGRAM_MAX, &a->draft_ngram_min)) return bad_usage("--draft-ngram-min takes 1..16, not '%s'", v); }
        else if (!strcmp(o, "--draft-model")) { NEED(); a->draft_model = v; }
        else if (!strcmp(o, "--repeat")) { NEED(); if (!cli_parse_int(v, 1, 1 << 20, &a->repeat)) return bad_usage("--repeat takes a positive count, not '%s'", v); }
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
        else if (!strcmp(o, "--launch")) {
            NEED();
            if (!di_launch_parse(v, &a->launch)) return bad_usage("--launch takes auto, eager, padded or graphs, not '%s'", v);
        }
        else if (!strcmp(o, "--weights")) {
            NEED();
            if (!di_weights_parse(v, &a->weights)) return bad_usage("--weights takes auto, packed or bf16, not '%s'", v);
        }
        else if (!strcmp(o, "--dump-cuda")) { NEED(); a->dump_src = v; }
        else if (!strcmp(o, "--dump-ptx")) { NEED(); a->dump_ptx = v; }
        else return bad_usage("unknown option '%s'", o);
#undef IS
#undef NEED
    }
    int sources = !!a->prompt + !!a->prompt_file + !!a->batch_file + !!a->messages;
    if (a->info && sources == 0) return -1;   /* --info needs no prompt */
    if (sources != 1) return bad_usage("%s", "give exactly one of -p, -f, --batch-file or --messages");
    if (a->tokenize && a->batch_file) return bad_usage("%s", "--tokenize takes -p, -f or --messages, not --batch-file");
    if (a->batch_file && (a->repeat || a->background))
        return bad_usage("%s", a->repeat ? "--repeat needs -p or -f, not --batch-file" : "--background needs -p or -f, not --batch-file");
    return check_draft_args(a);
}

/* A prompt file's text; an error (a FIFO, a NUL byte, ...) is printed, naming the flag and file. */
static char *read_file(const char *path, const char *flag)
{
    char *text;
    di_err err = {0};
    if (di_file_read_text(path, flag, &text, NULL, &err)) {
        fprintf(stderr, "generate: %s\n", err.msg);
        return NULL;
    }
    return text;
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

/* JSON strings are valid UTF-8: invalid or incomplete sequences become U+FFFD (base/utf8.h). */
static void json_string(FILE *f, const char *raw, size_t raw_n)
{
    di_str clean = {0};
    di_utf8_sanitize(&clean, raw, raw_n);
    const char *s = clean.p;
    size_t n = clean.len;
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
    di_str_free(&clean);
}

static void bits_hex(float x, char out[9])
{
    uint32_t u;
    memcpy(&u, &x, 4);
    snprintf(out, 9, "%08x", u);
}

/* A log-prob as JSON: the decimal (-9999 for -inf: JSON has no infinity) and its bits. */
static void json_lp(FILE *f, float x) { printf("%.9g", x == x && x > -3.4e38f ? x : -9999.0f); (void)f; }

/* [[{"id":..,"logprob":..,"bits":".."}, ...] per position] */
static void json_top(const float *lp, const int32_t *id, int positions, int n)
{
    printf("[");
    for (int i = 0; i < positions; i++) {
        printf("%s[", i ? "," : "");
        for (int k = 0; k < n && id[(size_t)i * n + k] >= 0; k++) {
            char h[9];
            bits_hex(lp[(size_t)i * n + k], h);
            printf("%s{\"id\":%d,\"logprob\":", k ? "," : "", id[(size_t)i * n + k]);
            json_lp(stdout, lp[(size_t)i * n + k]);
            printf(",\"bits\":\"%s\"}", h);
        }
        printf("]");
    }
    printf("]");
}

static void json_bits(const float *lp, int n)
{
    for (int i = 0; i < n; i++) {
        char h[9];
        bits_hex(lp[i], h);
        printf("%s\"%s\"", i ? "," : "", h);
    }
}

/* Streams text as it comes; a character split between tokens waits for its last byte. */
typedef struct stream_ctx { const di_tokenizer *tok; bool on; char held[4]; size_t n_held; } stream_ctx;

static void stream_write(stream_ctx *s, const char *b, size_t n, bool last)
{
    char buf[512];
    di_str out = {0};
    size_t k = s->n_held + n <= sizeof buf ? s->n_held + n : 0;
    const char *all = buf;
    if (k) { memcpy(buf, s->held, s->n_held); memcpy(buf + s->n_held, b, n); }
    else { di_str_putn(&out, s->held, s->n_held); di_str_putn(&out, b, n); all = out.p; k = out.len; }
    size_t ready = last ? k : di_utf8_complete(all, k);
    di_str clean = {0};
    di_utf8_sanitize(&clean, all, ready);
    fwrite(clean.p, 1, clean.len, stdout);
    fflush(stdout);
    s->n_held = k - ready;
    memcpy(s->held, all + ready, s->n_held);
    di_str_free(&clean);
    di_str_free(&out);
}

/* The stop ids (end of turn) are left out of the printed text unless --special; set once by run. */
static struct { const int32_t *ids; int n; } hidden;

static bool hidden_token(int32_t t)
{
    for (int i = 0; i < hidden.n; i++)
        if (hidden.ids[i] == t) return true;
    return false;
}

static void on_token(void *ctx, const di_request *r, int32_t t)
{
    (void)r;
    stream_ctx *s = ctx;
    if (!s->on || hidden_token(t)) return;
    const char *b;
    size_t n;
    if (di_token_piece(s->tok, t, &b, &n) == 0) stream_write(s, b, n, false);
}

static char *request_text(const di_tokenizer *tok, const di_request *r, size_t *len)
{
    size_t cap = 64, n = 0;
    char *out = malloc(cap);
    for (int i = 0; i < r->n_gen && out; i++) {
        const char *b;
        size_t k;
        if (hidden_token(r->tokens[i]) || di_token_piece(tok, r->tokens[i], &b, &k)) continue;
        while (n + k + 1 > cap) { char *o = realloc(out, cap *= 2); if (!o) { free(out); return NULL; } out = o; }
        memcpy(out + n, b, k);
        n += k;
    }
    if (out) out[n] = 0;
    *len = n;
    return out;
}

/* --logprobs and --score without --json: one line per position, the bits beside the decimal. */
static void print_logprob_lines(const args *a, const di_tokenizer *tok, const di_request *r)
{
    char h[9];
    for (int i = 0; a->score && i + 1 < r->n_prompt; i++) {
        bits_hex(r->prompt_lp[i], h);
        printf("score %d id %d logprob %.9g bits %s\n", i + 1, r->prompt[i + 1], r->prompt_lp[i], h);
    }
    for (int i = 0; a->logprobs >= 0 && i < r->n_gen; i++) {
        const char *b;
        size_t n = 0;
        di_token_piece(tok, r->tokens[i], &b, &n);
        bits_hex(r->logprobs[i], h);
        printf("logprob %d id %d ", i, r->tokens[i]);
        json_string(stdout, n ? b : "", n);
        printf(" %.9g bits %s", r->logprobs[i], h);
        for (int k = 0; k < a->logprobs && r->top_id[(size_t)i * a->logprobs + k] >= 0; k++) {
            float lp = r->top_lp[(size_t)i * a->logprobs + k];
            bits_hex(lp, h);
            printf("%s %d:%.9g:%s", k ? "" : " top", r->top_id[(size_t)i * a->logprobs + k], lp, h);
        }
        printf("\n");
    }
}

static void print_result(const args *a, const di_tokenizer *tok, const di_request *r, int index, int kind, bool streamed,
                         const char *receipt)
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
        for (int i = 0; i < r->n_gen; i++) { printf("%s", i ? "," : ""); json_lp(stdout, r->logprobs[i]); }
        printf("],\"logprob_bits\":[");
        json_bits(r->logprobs, r->n_gen);
        printf("]");
        if (a->logprobs >= 0) { printf(",\"top_logprobs\":"); json_top(r->top_lp, r->top_id, r->n_gen, a->logprobs); }
        if (a->score) {
            /* position i: the log-prob of prompt token i after tokens 0..i-1 (none for the first) */
            printf(",\"prompt_ids\":[");
            for (int i = 0; i < r->n_prompt; i++) printf("%s%d", i ? "," : "", r->prompt[i]);
            printf("],\"prompt_logprobs\":[null");
            for (int i = 0; i + 1 < r->n_prompt; i++) { printf(","); json_lp(stdout, r->prompt_lp[i]); }
            printf("],\"prompt_logprob_bits\":[null%s", r->n_prompt > 1 ? "," : "");
            json_bits(r->prompt_lp, r->n_prompt - 1);
            printf("]");
        }
        if (a->draft_max > 0)
            printf(",\"speculation\":{\"drafted\":%d,\"accepted\":%d,\"decode_steps\":%d}", r->drafted, r->draft_accepted,
                   r->decode_steps);
        if (receipt) { printf(",\"system_fingerprint\":"); json_string(stdout, receipt, strlen(receipt)); }
        printf(",\"digest\":\"%s\",\"finish\":\"%s\",\"prompt_tokens\":%d,\"arrival_step\":%ld,\"preemptions\":%d,"
               "\"prefix_hit_tokens\":%d,\"timings\":{\"admit_s\":%.6f,\"first_token_s\":%.6f,\"end_s\":%.6f}}\n",
               hex, r->finish == DI_DONE_EOS || r->finish == DI_DONE_STOP ? "stop" : "length", r->n_prompt, r->arrival_step, r->preemptions,
               r->prefix_hit_tokens, r->t_admit, r->t_first, r->t_end);
    } else if (kind == K_PROMPT || kind == K_BATCH) {
        if (!streamed) {
            di_str clean = {0};
            di_utf8_sanitize(&clean, text ? text : "", text ? len : 0);
            fwrite(clean.p, 1, clean.len, stdout);
            di_str_free(&clean);
        }
        fputc('\n', stdout);
        print_logprob_lines(a, tok, r);
        if (a->digest) printf("digest %d %s\n", index, hex);
    } else if (a->digest) {
        printf("digest %d %s %s\n", index, kind_name[kind], hex);   /* load runs print no text: too many */
    }
    free(text);
}

/* The non-empty lines of a file, in place in one buffer; exit status 2 on a problem. */
static int read_lines(const char *path, const char *flag, char ***lines, int *n)
{
    char *all = read_file(path, flag);
    if (!all) return 2;
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
    if (a->messages) prompt = "";   /* the conversation file is the prompt (chat_prompt) */
    if (a->prompt_file && !(prompt = owned[0] = read_file(a->prompt_file, "-f"))) return 2;
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
/* ---- chat: the template, the system message and the conversation file ---- */

typedef struct chat_state {
    di_chat_template *tmpl;
    di_chat_conv *conv;    /* --messages, parsed */
    const di_chat_msg *msgs; /* its messages */
    int n_msgs;
} chat_state;

static void chat_state_free(chat_state *c)
{
    di_chat_template_free(c->tmpl);
    di_chat_conv_free(c->conv);
}

/* --messages FILE (model/chat.c reads it); exit status 2 naming the fault. */
static int load_messages(const char *path, chat_state *c)
{
    di_err err = {0};
    int rc = di_chat_messages_load(path, &c->conv, &c->msgs, &c->n_msgs, &err);
    if (rc) fprintf(stderr, "generate: --messages %s\n", err.msg);
    return rc == DI_ENOMEM ? 1 : rc ? 2 : 0;
}

/* The chat prompt for one user text: -sys's system message (if any), then the conversation file's
 * messages, or the text as one user turn; the assistant's turn opened. */
static char *chat_prompt(const args *a, const chat_state *c, const char *user, di_err *err)
{
    int n = 0, cap = c->n_msgs + 2;
    di_chat_msg *m = malloc(sizeof *m * (size_t)cap);
    if (!m) { di_fail(err, DI_ENOMEM, "out of memory"); return NULL; }
    if (a->system) m[n++] = (di_chat_msg){"system", a->system};
    for (int i = 0; i < c->n_msgs; i++) m[n++] = c->msgs[i];
    if (!c->n_msgs) m[n++] = (di_chat_msg){"user", user};
    char *out = NULL;
    di_chat_render(c->tmpl, m, n, true, &out, err);
    free(m);
    return out;
}

static int make_requests(const args *a, const di_tokenizer *tok, const chat_state *chat, char **texts, int n_req,
                         di_request *reqs, int32_t **ids, int *blocks)
{
    di_err err = {0};
    *blocks = 0;
    for (int i = 0; i < n_req; i++) {
        char *text = a->chat ? chat_prompt(a, chat, texts[i], &err) : texts[i];
        if (!text) { fprintf(stderr, "generate: %s\n", err.msg); return 2; }
        size_t n = 0;
        /* the vocabulary's BOS (add_bos_token) leads; the chat markers are special tokens */
        int trc = di_tokenize_prompt(tok, text, strlen(text), a->chat, &ids[i], &n, &err);
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
        r->sampler = (di_sampler){a->temp, a->top_k, a->top_p, a->seed, 0};
        r->rng_id = 0;   /* every request draws from its own (seed, position) stream: batch mates cannot shift it */
        r->chunk = a->chunk;
        r->score_prompt = a->score;
        r->top_n = a->logprobs > 0 ? a->logprobs : 0;
        r->draft = (di_draft_opts){.draft_max = a->draft_max, .ngram_max = a->draft_ngram, .ngram_min = a->draft_ngram_min,
                                   .model = a->draft_model != NULL};
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

/* ---- --info: what the file holds, and everything in it detinfer cannot run ---- */

/* A list of what is unsupported, printed together at the end. */
typedef struct { char text[16][512]; int n; } problems;

static void problem(problems *p, const char *what, const char *detail)
{
    if (p->n < 16) snprintf(p->text[p->n++], sizeof p->text[0], "%s: %.480s", what, detail);
}

/* The dimensions model.c reads (di_model_read_config) and the memory the load would take:
 * bf16 matrices, f32 norms, an f32 KV cache, activations of --max-batch-tokens rows. */
static void print_config(const di_config *c, bool tied, int ctx, int rows)
{
    double D = c->dim, F = c->ffn, V = c->vocab, L = c->n_layers, HD = c->head_dim, NH = c->n_heads, NKV = c->n_kv_heads;
    double per_layer = D * (NH + 2 * NKV) * HD + NH * HD * D + 3 * F * D;
    double weights = 2 * (L * per_layer + V * D * (tied ? 1 : 2)) + 4 * (2 * L * D + D);
    double kv_token = L * 2 * NKV * HD * 4;
    double act = rows * 4.0 * (4 * D + (NH + 2 * NKV) * HD + NH * HD + 3 * F + 2 * V);
    printf("dims: %d layers, dim %d, ffn %d, %d heads (%d KV heads) of %d, vocab %d, rope base %g, eps %g\n", c->n_layers,
           c->dim, c->ffn, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab, c->rope_base, c->eps);
    printf("memory: weights %.1f MiB (bf16 matrices%s), KV cache %.1f KiB per token = %.1f MiB for --ctx %d, "
           "activations %.1f MiB for %d rows\n", weights / 1048576, tied ? ", tied embeddings" : "", kv_token / 1024,
           kv_token * ctx / 1048576, ctx, act / 1048576, rows);
}

static void print_tensor_types(const di_gguf *g, problems *p)
{
    int count[256] = {0};
    for (uint64_t i = 0; i < g->n_tensors; i++) count[g->tensors[i].type & 255]++;
    printf("tensors: %llu:", (unsigned long long)g->n_tensors);
    for (int t = 0; t < 256; t++)
        if (count[t]) printf(" %s %d%s", di_ggml_type_name(t), count[t], di_ggml_type_supported(t) ? "" : " (unsupported)");
    printf("\n");
    for (int t = 0; t < 256; t++)
        if (count[t] && !di_ggml_type_supported(t)) {
            char what[64];
            snprintf(what, sizeof what, "tensor type %s (type %d)", di_ggml_type_name(t), t);
            problem(p, what, "no dequantization in model/quant.c");
        }
}

static void print_token(const di_tokenizer *tok, const char *label, int id)
{
    const char *b;
    size_t n;
    if (id < 0) { printf(" %s -", label); return; }
    if (di_token_piece(tok, id, &b, &n)) n = 0;
    printf(" %s %d ", label, id);
    json_string(stdout, b, n);
}

static void print_tokenizer(const di_gguf *g, problems *p)
{
    di_tokenizer *tok = NULL;
    di_err err = {0};
    if (di_tokenizer_load(g, &tok, &err)) {
        printf("tokenizer: not loaded\n");
        problem(p, "tokenizer", err.msg);
        return;
    }
    const char *pre = di_tokenizer_pre(tok), *rule = di_tokenizer_pre_rule(tok);
    bool alias = pre && strcmp(pre, rule);
    printf("tokenizer: %s%s%s%s%s%s, %d tokens, BOS %s, EOS %s\n", di_tokenizer_model(tok), pre ? ", pre-tokenizer " : "",
           pre ? pre : "", alias ? " (as " : "", alias ? rule : "", alias ? ")" : "", di_tokenizer_vocab_size(tok), di_tokenizer_adds_bos(tok) ? "added" : "not added",
           di_tokenizer_adds_eos(tok) ? "added" : "not added");
    printf("special:");
    print_token(tok, "bos", di_tokenizer_bos(tok));
    print_token(tok, "eos", di_tokenizer_eos(tok));
    print_token(tok, "eot", di_tokenizer_eot(tok));
    print_token(tok, "eom", di_tokenizer_eom(tok));
    const int32_t *eog;
    int n = di_tokenizer_eog(tok, &eog);
    printf("; end of generation:");
    for (int i = 0; i < n; i++) printf(" %d", eog[i]);
    printf("\n");
    di_tokenizer_free(tok);
}

static void print_template(const di_gguf *g, const char *override, problems *p)
{
    di_chat_template *t = NULL;
    di_err err = {0};
    if (di_chat_template_load(g, override, &t, &err)) {
        printf("chat template: %s\n", di_gguf_find(g, "tokenizer.chat_template") ? "unrecognised" : "none");
        problem(p, "chat template", err.msg);
        return;
    }
    printf("chat template: %s%s (turns end with %s)\n", di_chat_template_name(t), override ? " (--chat-template)" : "",
           di_chat_template_end(t));
    di_chat_template_free(t);
}

static int model_info(const args *a, const char *path)
{
    di_gguf *g = NULL;
    di_err err = {0};
    if (di_gguf_open(path, &g, &err)) { fprintf(stderr, "generate: %s\n", err.msg); return 2; }
    problems p = {.n = 0};
    di_gguf_str arch = {"?", 1};
    di_gguf_get_str(g, "general.architecture", &arch, &err);
    printf("file: %s (GGUF v%u, %zu bytes, %llu metadata keys)\n", path, g->version, g->size, (unsigned long long)g->n_kv);
    printf("architecture: %.*s\n", (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
    char key[128];
    snprintf(key, sizeof key, "%.*s.context_length", (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
    uint64_t ctx_train = 0;
    if (!di_gguf_get_u64(g, key, &ctx_train, &err)) printf("context length: %llu (%s)\n", (unsigned long long)ctx_train, key);
    di_config c;
    if (g->n_tensors == 0) printf("dims: none (a vocabulary-only file)\n");
    else if (di_model_read_config(g, &c, &err)) problem(&p, "model", err.msg);
    else print_config(&c, !di_gguf_tensor_find(g, "output.weight"), a->ctx, a->max_batch_tokens);
    print_tensor_types(g, &p);
    print_tokenizer(g, &p);
    print_template(g, a->chat_template, &p);
    printf("unsupported:%s\n", p.n ? "" : " nothing");
    for (int i = 0; i < p.n; i++) printf("  %s\n", p.text[i]);
    di_gguf_close(g);
    return 0;
}

/* The speculation line: drafts made and kept, where the first rejection fell, and tokens per
 * decode step (a request's tokens from decode rows over its steps with a decode row: 1 without
 * speculation). */
static void print_spec_stats(const di_engine_stats *st)
{
    fprintf(stderr, "generate: speculation: drafted %ld, accepted %ld (%.1f%%), %.2f tokens per decode step",
            st->drafted, st->draft_accepted, st->drafted ? 100.0 * st->draft_accepted / st->drafted : 0.0,
            st->decode_slots ? (double)st->decode_tokens / st->decode_slots : 0.0);
    int last = DI_DRAFT_MAX;
    while (last > 0 && !st->reject_at[last - 1]) last--;
    if (last) {
        fprintf(stderr, "; first rejected at draft");
        for (int j = 0; j < last; j++) fprintf(stderr, " %d:%ld", j, st->reject_at[j]);
    }
    fprintf(stderr, "; all kept %ld times", st->full_accepts);
    if (st->draft_steps) fprintf(stderr, "; draft model %ld steps, %.2f s", st->draft_steps, st->draft_s);
    fprintf(stderr, "\n");
}

/* Everything main holds, so that every exit, early or not, frees it in one place. */
typedef struct run_state {
    char *model_path, *owned[2];
    char **texts;
    int *kinds, n_req;
    di_rt *rt;
    di_gguf *g;
    di_tokenizer *tok;
    chat_state chat;
    di_model *m, *draft;
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
    di_model_free(s->draft);
    di_model_free(s->m);
    di_tokenizer_free(s->tok);
    chat_state_free(&s->chat);
    di_gguf_close(s->g);
    if (s->rt) di_rt_close(s->rt);
    free(s->model_path);
}

/* Loads, runs and prints; returns the exit status. */
static int run(const args *ap, run_state *s)
{
    const args a = *ap;
    di_err err = {0};
    double t_load = cli_now();
    int rc;
    if (a.info) return model_info(&a, s->model_path);
    if ((rc = gather_prompts(&a, &s->texts, &s->kinds, &s->n_req, s->owned))) return rc;
    int n_req = s->n_req;

    /* model and tokenizer: the GGUF is opened once, here (a regular file, never blocking: base/file);
     * the model borrows it; tokenize first, to size the KV pool and reject prompts longer than the
     * context */
    if (di_gguf_open(s->model_path, &s->g, &err)) {
        fprintf(stderr, "generate: model %s%s\n", err.msg,
                err.code == DI_EUSAGE ? " (scripts/fetch-model downloads the default model)" : "");
        return 2;
    }
    if (di_tokenizer_load(s->g, &s->tok, &err)) { fprintf(stderr, "generate: %s\n", err.msg); return 2; }
    if (a.chat && di_chat_template_load(s->g, a.chat_template, &s->chat.tmpl, &err)) {
        fprintf(stderr, "generate: %s\n", err.msg);
        return 2;
    }
    if (a.messages && (rc = load_messages(a.messages, &s->chat))) return rc;
    s->reqs = calloc((size_t)n_req, sizeof *s->reqs);
    s->rp = calloc((size_t)n_req, sizeof *s->rp);
    s->ids = calloc((size_t)n_req, sizeof *s->ids);
    if (!s->reqs || !s->rp || !s->ids) { fprintf(stderr, "generate: out of memory\n"); return 1; }
    int blocks = 0;
    if ((rc = make_requests(&a, s->tok, &s->chat, s->texts, n_req, s->reqs, s->ids, &blocks))) return rc;
    if (a.tokenize) { /* llama-tokenize's output: the ids, as JSON; no model, no runtime */
        printf("[");
        for (int i = 0; i < s->reqs[0].n_prompt; i++) printf("%s%d", i ? ", " : "", s->ids[0][i]);
        printf("]\n");
        return 0;
    }
    if (!(s->rt = open_runtime(&a))) return 2;
    for (int i = 0; i < n_req; i++) s->rp[i] = &s->reqs[i];
    int in_flight = a.max_seqs && a.max_seqs < n_req ? a.max_seqs : n_req;
    di_model_opts mo = {.max_batch_tokens = a.max_batch_tokens, .ctx = a.ctx, .kv_blocks = a.kv_blocks ? a.kv_blocks : blocks,
                        .max_seqs = in_flight, .launch = a.launch, .weights = a.weights};
    if (di_model_load_gguf(s->g, s->rt, &mo, &s->m, &err)) {
        fprintf(stderr, "generate: %s\n", err.msg);
        return err.code == DI_ENOMEM || err.code == DI_EDEVICE ? 1 : 2;
    }
    if (a.draft_model) {
        /* its own KV: every sequence slot a whole context (the engine gives slot s its blocks) */
        int kvb = di_model_kv_block();
        di_model_opts dmo = mo;
        dmo.kv_blocks = in_flight * ((a.ctx + kvb - 1) / kvb);
        if (di_model_load(a.draft_model, s->rt, &dmo, &s->draft, &err)) {
            fprintf(stderr, "generate: --draft-model %s: %s\n", a.draft_model, err.msg);
            return err.code == DI_ENOMEM || err.code == DI_EDEVICE ? 1 : 2;
        }
    }
    t_load = cli_now() - t_load;
    di_rt_stats rs = di_rt_get_stats(s->rt);
    if (progress.tty && progress.n) fprintf(stderr, "\n");
    di_model_weights wi = di_model_weights_info(s->m);
    fprintf(stderr, "generate: %s; model %s%s%s loaded in %.2f s (weights %.0f MB, %d of %d matrices packed; "
            "launch %s); kernels: %ld compiled in %.2f s, %ld from the cache\n",
            di_rt_describe(s->rt), s->model_path, a.draft_model ? " and draft model " : "", a.draft_model ? a.draft_model : "",
            t_load, wi.bytes / 1e6, wi.packed, wi.matrices, di_launch_name(di_model_launch(s->m)), rs.kernels_compiled, rs.compile_seconds, rs.kernels_from_cache);
    int trained = di_model_config(s->m)->ctx_train;
    if (a.ctx > trained)
        fprintf(stderr, "generate: warning: --ctx %d is beyond the model's trained context (llama.context_length = %d); "
                "text past %d tokens may be poor\n", a.ctx, trained, trained);

    /* stop at the vocabulary's end-of-generation ids and at the chat template's end of turn */
    const int32_t *eog;
    int32_t stops[17];
    int n_stop = di_tokenizer_eog(s->tok, &eog);
    memcpy(stops, eog, sizeof *stops * (size_t)n_stop);
    int32_t end = s->chat.tmpl ? di_tokenizer_special(s->tok, di_chat_template_end(s->chat.tmpl)) : -1;
    if (end >= 0 && !di_tokenizer_is_eog(s->tok, end)) stops[n_stop++] = end;
    if (!a.special) hidden.ids = stops, hidden.n = n_stop;
    stream_ctx sc = {.tok = s->tok, .on = n_req == 1 && !a.json};
    di_engine_opts eo = {.max_batch_tokens = a.max_batch_tokens, .max_seqs = in_flight, .prefix_cache = !a.no_prefix_cache,
                         .stop_ids = stops, .n_stop = a.ignore_eos ? 0 : n_stop, .on_token = on_token, .ctx = &sc,
                         .draft_model = s->draft};
    di_engine_stats st;
    double t_run = cli_now();
    if (di_engine_run(s->m, s->rp, n_req, &eo, &st, &err)) {
        /* a request too big for the pool is the --kv-blocks value's fault: a usage error */
        const char *flag = !strncmp(err.msg, "draft model", 11) ? "--draft-model: " : a.kv_blocks && err.code == DI_EUSAGE ? "--kv-blocks: " : "";
        fprintf(stderr, "\ngenerate: %s%s\n", flag, err.msg);
        return err.code == DI_EUSAGE ? 2 : 1;
    }
    t_run = cli_now() - t_run;
    if (sc.on) stream_write(&sc, "", 0, true);   /* what an unfinished character held back, as U+FFFD */
    /* the receipt: what the bits are a function of besides the request (hashing the model takes a moment) */
    di_receipt receipt;
    bool have_receipt = a.json && !di_receipt_make(s->model_path, s->rt, di_rt_profile(s->rt), &receipt, &err);
    if (a.json && !have_receipt) fprintf(stderr, "generate: no receipt: %s\n", err.msg);
    for (int i = 0; i < n_req; i++)
        print_result(&a, s->tok, &s->reqs[i], i, s->kinds[i], sc.on, have_receipt ? receipt.text : NULL);
    fflush(stdout);   /* results before the timing line when both go to one terminal */
    fprintf(stderr, "generate: prompt %ld tokens in %.2f s (%.1f tok/s); generated %ld tokens in %.2f s (%.1f tok/s); %ld steps; "
            "prefix cache %ld tokens; %ld preemptions; %ld evictions\n",
            st.prompt_tokens, st.prefill_s, st.prefill_s > 0 ? st.prompt_tokens / st.prefill_s : 0.0, st.gen_tokens,
            st.decode_s, st.decode_s > 0 ? (st.gen_tokens - n_req) / st.decode_s : 0.0, st.steps, st.prefix_hit_tokens,
            st.preemptions, st.evictions);
    if (a.draft_max > 0) print_spec_stats(&st);
    if (a.repeat || a.background) load_summary(s->reqs, s->kinds, n_req, t_run);
    return 0;
}

/* Output that did not reach stdout (a full disk, /dev/full) is a failure,
 * not exit 0: the last buffered bytes are only written, and fail, at the flush. */
static int finish_stdout(int rc)
{
    int e = 0;
    errno = 0;
    if (fflush(stdout)) e = errno ? errno : EIO;
    bool bad = e || ferror(stdout);   /* ferror alone: an earlier write failed */
    if (fclose(stdout) && !bad) { bad = true; e = errno; }
    if (!bad) return rc;
    fprintf(stderr, "generate: writing the output failed%s%s\n", e ? ": " : "", e ? strerror(e) : "");
    return rc ? rc : 1;
}

int main(int argc, char **argv)
{
    args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) return finish_stdout(rc);
    run_state s = {.model_path = a.model ? strdup(a.model) : default_model()};
    rc = run(&a, &s);
    run_state_free(&s);
    return finish_stdout(rc);
}
