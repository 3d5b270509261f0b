/* serve: an OpenAI-compatible HTTP server over the deterministic engine. Equal request and
 * equal system_fingerprint give equal bits, however loaded the server is. Binds loopback by
 * default. SIGTERM or SIGINT: stop accepting, let in-flight requests run for --drain-timeout
 * seconds, end the rest with a final event (finish_reason "abort"), exit 0; a second signal
 * ends them at once. */
#include "tools/cli.h"
#include "server/server.h"
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MODEL "SmolLM2-135M-Instruct.Q4_1.gguf"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: serve -m MODEL.gguf [options]\n"
        "  -m, --model FILE        GGUF model (default: $DETINFER_MODEL_DIR or ~/.cache/detinfer/models/" DEFAULT_MODEL ")\n"
        "      --model-name NAME   the id clients send as \"model\" (default: the file name without .gguf)\n"
        "      --host H            address to listen on (default 127.0.0.1: loopback only)\n"
        "      --port P            TCP port (default 8080; 0: any free port, printed)\n"
        "      --api-key K         require 'Authorization: Bearer K' (default: $DETINFER_API_KEY, else none)\n"
        "      --device D          auto | cpu | cuda (default auto)\n"
        "      --profile P         exact | fast | vendor (default exact)\n"
        "  -t, --threads N         CPU threads (default: all cores)\n"
        "      --max-seqs N        requests in flight (default 16)\n"
        "      --max-queue N       requests waiting beyond those; more get 503 + Retry-After (default 64)\n"
        "  -c, --ctx N             context length in tokens (default 2048)\n"
        "      --max-batch-tokens N  tokens per forward step (default 256)\n"
        "      --chunk N           prefill chunk size (default: whole prompt within the step budget)\n"
        "      --kv-blocks N       KV pool in blocks (default: --max-seqs full contexts)\n"
        "      --no-prefix-cache   compute every prompt in full\n"
        "      --draft-max K       speculative decoding for requests without \"speculative\": draft up to K (1..16)\n"
        "                          tokens a step by prompt lookup (default 0: off); it changes no token or bit\n"
        "      --draft-ngram N     the longest n-gram prompt lookup matches (default 3)\n"
        "      --draft-ngram-min M   the shortest (default 2, or N if N is 1)\n"
        "      --draft-model FILE  a draft model (same vocabulary) for \"speculative\": {\"method\": \"draft_model\"};\n"
        "                          with --draft-max, the default drafts with it\n"
        "      --max-body BYTES    largest request body (default 1048576); larger get 413\n"
        "      --drain-timeout S   on SIGTERM/SIGINT, seconds in-flight requests may go on (default 30)\n"
        "  -h, --help              this text\n"
        "      --version           print the version\n");
}

static int bad_usage(const char *fmt, const char *arg) { return cli_usage_error("serve", fmt, arg); }

typedef struct args {
    di_server_opts o;
    const char *model, *device, *profile, *template_name;
    bool ngram_given;
} args;

/* The speculation flags together: -1 to go on, else 2. */
static int check_draft_args(args *a)
{
    di_draft_opts *d = &a->o.draft;
    int rc = cli_draft_ngram("serve", a->ngram_given, d->draft_max, d->ngram_max, &d->ngram_min);
    if (rc >= 0) return rc;
    d->model = a->o.draft_model && d->draft_max > 0;
    return -1;
}

static int parse_args(int argc, char **argv, args *a)
{
    *a = (args){.o = {.host = "127.0.0.1", .port = 8080, .max_seqs = 16, .max_queue = 64, .ctx = 2048, .max_batch_tokens = 256,
                      .prefix_cache = true, .max_body = 1 << 20, .drain_s = 30,
                      .draft = {.draft_max = 0, .ngram_max = 3, .ngram_min = -1}},
                .device = "auto", .profile = "exact"};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
#define IS(s, l) (!strcmp(o, s) || !strcmp(o, l))
#define NEED() do { if (!v) return bad_usage("%s needs a value", o); i++; } while (0)
#define INT(flag, lo, hi, dst) do { NEED(); if (!cli_parse_long(v, lo, hi, &n)) return bad_usage(flag " takes " #lo ".." #hi ", not '%s'", v); dst = n; } while (0)
        if (IS("-h", "--help")) { usage(stdout); return 0; }
        else if (!strcmp(o, "--version")) { printf("detinfer serve %s\n", DI_VERSION); return 0; }
        else if (IS("-m", "--model")) { NEED(); a->model = v; }
        else if (!strcmp(o, "--model-name")) { NEED(); if (!*v) return bad_usage("%s", "--model-name takes a non-empty name"); a->o.model_name = v; }
        else if (!strcmp(o, "--host")) { NEED(); a->o.host = v; }
        else if (!strcmp(o, "--port")) INT("--port", 0, 65535, a->o.port);
        else if (!strcmp(o, "--api-key")) { NEED(); if (!*v) return bad_usage("%s", "--api-key takes a non-empty key"); a->o.api_key = v; }
        else if (!strcmp(o, "--device")) {
            NEED(); a->device = v;
            if (strcmp(v, "auto") && strcmp(v, "cpu") && strcmp(v, "cuda")) return bad_usage("--device takes auto, cpu or cuda, not '%s'", v);
        }
        else if (!strcmp(o, "--profile")) {
            NEED(); a->profile = v;
            di_profile pr;
            if (!di_profile_parse(v, &pr)) {
                fprintf(stderr, "serve: --profile takes %s, not '%s'\n(serve --help lists the options)\n", di_profile_choices(), v);
                return 2;
            }
        }
        else if (IS("-t", "--threads")) INT("--threads", 1, 1024, a->o.threads);
        else if (!strcmp(o, "--max-seqs")) INT("--max-seqs", 1, 4096, a->o.max_seqs);
        else if (!strcmp(o, "--max-queue")) INT("--max-queue", 0, 1000000, a->o.max_queue);
        else if (IS("-c", "--ctx")) INT("--ctx", 2, 1048576, a->o.ctx);
        else if (!strcmp(o, "--max-batch-tokens")) INT("--max-batch-tokens", 1, 65535, a->o.max_batch_tokens);
        else if (!strcmp(o, "--chunk")) INT("--chunk", 1, 1048576, a->o.chunk);
        else if (!strcmp(o, "--kv-blocks")) INT("--kv-blocks", 1, 16777216, a->o.kv_blocks);
        else if (!strcmp(o, "--no-prefix-cache")) a->o.prefix_cache = false;
        else if (!strcmp(o, "--draft-max")) INT("--draft-max", 0, 16, a->o.draft.draft_max);
        else if (!strcmp(o, "--draft-ngram")) { a->ngram_given = true; INT("--draft-ngram", 1, 16, a->o.draft.ngram_max); }
        else if (!strcmp(o, "--draft-ngram-min")) { a->ngram_given = true; INT("--draft-ngram-min", 1, 16, a->o.draft.ngram_min); }
        else if (!strcmp(o, "--draft-model")) { NEED(); a->o.draft_model = v; }
        else if (!strcmp(o, "--max-body")) INT("--max-body", 1, 1073741824, a->o.max_body);
        else if (!strcmp(o, "--drain-timeout")) INT("--drain-timeout", 0, 86400, a->o.drain_s);
        else return bad_usage("unknown option '%s'", o);
#undef IS
#undef NEED
#undef INT
    }
    return check_draft_args(a);
}

typedef struct hurry { di_server *s; sigset_t sigs; } hurry;

/* A second signal while draining: cancel what is left now. */
static void *second_signal(void *arg)
{
    hurry *h = arg;
    int sig;
    sigwait(&h->sigs, &sig);
    fprintf(stderr, "serve: second signal: cancelling the requests still in flight\n");
    di_server_hurry(h->s);
    return NULL;
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

/* "dir/SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct.Q4_1" */
static void name_of(const char *path, char *out, size_t n)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    size_t len = strlen(b);
    if (len > 5 && !strcmp(b + len - 5, ".gguf")) len -= 5;
    snprintf(out, n, "%.*s", (int)len, b);
}

int main(int argc, char **argv)
{
    args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) return rc;
    char *path = a.model ? strdup(a.model) : default_model(), name[256];
    a.o.model_path = path;
    if (!a.o.model_name) { name_of(path, name, sizeof name); a.o.model_name = name; }
    if (!a.o.api_key && getenv("DETINFER_API_KEY") && *getenv("DETINFER_API_KEY")) a.o.api_key = getenv("DETINFER_API_KEY");
    a.o.backend = strcmp(a.device, "cpu") ? DI_BACKEND_CUDA : DI_BACKEND_C;
    a.o.backend_auto = !strcmp(a.device, "auto");
    di_profile_parse(a.profile, &a.o.profile);   /* checked by parse_args */

    /* signals are taken by sigwait below: block them before any thread starts */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);   /* a client that left is a write error, not a death */

    di_err err = {0};
    di_gguf *g = NULL;
    di_tokenizer *tok = NULL;
    di_chat_template *tmpl = NULL;
    di_server *s = NULL;
    FILE *probe = fopen(path, "rb");
    if (!probe) {
        fprintf(stderr, "serve: model %s: %s (scripts/fetch-model downloads the default model)\n", path, strerror(errno));
        free(path);
        return 2;
    }
    fclose(probe);
    double t0;
    {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        t0 = (double)t.tv_sec + t.tv_nsec * 1e-9;
    }
    rc = di_gguf_open(path, &g, &err);
    /* without a tokenizer or a chat template the server still takes token-id prompts */
    if (!rc && di_tokenizer_load(g, &tok, &err)) {
        fprintf(stderr, "serve: %s: token-id prompts only\n", err.msg);
        tok = NULL;
    }
    if (!rc && tok && di_chat_template_load(g, NULL, &tmpl, &err)) {
        fprintf(stderr, "serve: %s: no /v1/chat/completions\n", err.msg);
        tmpl = NULL;
    }
    if (!rc) rc = di_server_start(&a.o, tok, tmpl, &s, &err);
    if (rc) {
        fprintf(stderr, "serve: %s\n", err.msg);
        di_chat_template_free(tmpl);
        di_tokenizer_free(tok);
        di_gguf_close(g);
        free(path);
        return rc == DI_ENOMEM || rc == DI_EDEVICE ? 1 : 2;
    }
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    const di_receipt *r = di_server_receipt(s);
    fprintf(stderr, "serve: %s; model %s (%s) loaded in %.2f s (SHA-256 in %.2f s)\n", di_server_device(s), path, a.o.model_name,
            (double)t.tv_sec + t.tv_nsec * 1e-9 - t0, r->hash_s);
    fprintf(stderr, "serve: system_fingerprint \"%s\"\n", r->text);
    fprintf(stderr, "serve: listening on http://%s:%d%s\n", a.o.host, di_server_port(s), a.o.api_key ? " (API key required)" : "");
    fflush(stderr);

    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "serve: %s: no new requests; in-flight ones have %.0f s to finish\n", sig == SIGINT ? "SIGINT" : "SIGTERM", a.o.drain_s);
    hurry h = {s, sigs};
    pthread_t th;
    bool watching = pthread_create(&th, NULL, second_signal, &h) == 0;
    di_server_shutdown(s);
    if (watching) { pthread_cancel(th); pthread_join(th, NULL); }
    fprintf(stderr, "serve: every request answered; exiting\n");
    di_server_free(s);
    di_chat_template_free(tmpl);
    di_tokenizer_free(tok);
    di_gguf_close(g);
    free(path);
    return 0;
}
