/* bench_serve: what HTTP costs. The same requests run twice: in process through generate's
 * engine (di_engine_run, C in flight), then through `serve` by C concurrent streaming
 * clients (HTTP/1.0 on loopback, SSE), each sending its next request when the last one ends.
 * Prompts are random token ids (any llama GGUF works, random weights included: serve takes
 * token-id prompts without a tokenizer); every request generates exactly --gen tokens
 * (ignore_eos), greedy. Prints throughput for both, the overhead (1 - serve / engine), and
 * p50/p99 of time to first token and of the time between tokens. Each side first runs a
 * warm-up pass (--warmup requests, other prompts; default one wave of --clients) that is not
 * timed, so neither side's figure holds kernel compiles or cache loads the other was spared.
 *
 * usage: bench_serve -m MODEL.gguf --serve PATH [--device cpu|cuda] [--profile exact|fast|vendor]
 *                    [--clients 16] [--requests 64] [--prompt-len 64] [--gen 64] [--seed 1]
 *                    [--max-batch-tokens 512] [--warmup C] [-t threads] [--skip-engine] */
#include "tools/cli.h"
#include "model/engine.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct opts {
    const char *model, *serve, *device, *profile;
    int clients, requests, prompt_len, gen, max_batch_tokens, threads, warmup;
    unsigned long seed;
    bool skip_engine;
} opts;

static int usage(const char *why)
{
    if (why) fprintf(stderr, "bench_serve: %s\n", why);
    fprintf(stderr, "usage: bench_serve -m MODEL.gguf --serve PATH [--device cpu|cuda] [--profile exact|fast|vendor]\n"
                    "                   [--clients C] [--requests N] [--prompt-len L] [--gen G] [--seed S]\n"
                    "                   [--max-batch-tokens T] [--warmup W] [-t threads] [--skip-engine]\n");
    return 2;
}

static int parse(int argc, char **argv, opts *o)
{
    *o = (opts){.device = "cpu", .profile = "exact", .clients = 16, .requests = 64, .prompt_len = 64, .gen = 64,
                .max_batch_tokens = 512, .seed = 1, .warmup = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--skip-engine")) { o->skip_engine = true; continue; }
        int *ip = !strcmp(a, "--clients") ? &o->clients : !strcmp(a, "--requests") ? &o->requests
                : !strcmp(a, "--prompt-len") ? &o->prompt_len : !strcmp(a, "--gen") ? &o->gen
                : !strcmp(a, "--max-batch-tokens") ? &o->max_batch_tokens : !strcmp(a, "-t") ? &o->threads
                : !strcmp(a, "--warmup") ? &o->warmup : NULL;
        if (!v) return usage("every option but --skip-engine takes a value");
        if (ip) {
            int lo = ip == &o->warmup ? 0 : 1;
            if (!cli_parse_int(v, lo, 1000000, ip)) { fprintf(stderr, "bench_serve: %s takes %d..1000000, not '%s'\n", a, lo, v); return 2; }
        } else if (!strcmp(a, "-m")) o->model = v;
        else if (!strcmp(a, "--serve")) o->serve = v;
        else if (!strcmp(a, "--device")) o->device = v;
        else if (!strcmp(a, "--profile")) o->profile = v;
        else if (!strcmp(a, "--seed")) o->seed = strtoul(v, NULL, 10);
        else { fprintf(stderr, "bench_serve: unknown option '%s'\n", a); return usage(NULL); }
        i++;
    }
    if (!o->model || !o->serve) return usage("-m MODEL and --serve PATH are required");
    if (o->warmup < 0) o->warmup = o->clients;
    if (strcmp(o->device, "cpu") && strcmp(o->device, "cuda")) return usage("--device takes cpu or cuda");
    di_profile pr;
    if (!di_profile_parse(o->profile, &pr)) { fprintf(stderr, "bench_serve: --profile takes %s\n", di_profile_choices()); return 2; }
    return -1;
}

static uint64_t next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p)
{
    if (n == 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    int i = (int)(p * (n - 1) + 0.5);
    return v[i];
}

/* latencies of a run: time to first token per request, gaps between tokens */
typedef struct lat { double *ttft, *gap; int n_ttft, n_gap; long tokens; double seconds; } lat;

static void report(const char *what, lat *l)
{
    printf("%-7s %6ld tokens in %7.2f s: %8.1f tok/s   TTFT p50 %7.1f ms p99 %7.1f ms   per token p50 %6.1f ms p99 %6.1f ms\n",
           what, l->tokens, l->seconds, l->tokens / l->seconds, 1e3 * pct(l->ttft, l->n_ttft, 0.5),
           1e3 * pct(l->ttft, l->n_ttft, 0.99), 1e3 * pct(l->gap, l->n_gap, 0.5), 1e3 * pct(l->gap, l->n_gap, 0.99));
}

/* ---- in process ------------------------------------------------------------------------- */

static int vocab_of(const opts *o, di_rt *rt, int *vocab)
{
    di_model_opts mo = {.max_batch_tokens = 1, .ctx = 64, .kv_blocks = 2, .max_seqs = 1};
    di_model *m = NULL;
    di_err err = {0};
    if (di_model_load(o->model, rt, &mo, &m, &err)) { fprintf(stderr, "bench_serve: %s\n", err.msg); return 2; }
    *vocab = di_model_config(m)->vocab;
    di_model_free(m);
    return 0;
}

/* n requests through one di_engine_run; their figures into l (NULL: a warm-up) */
static int engine_pass(const opts *o, di_model *m, int32_t **prompts, int n, lat *l)
{
    if (n == 0) return 0;
    di_request *r = calloc((size_t)n, sizeof *r);
    di_request **rp = calloc((size_t)n, sizeof *rp);
    for (int i = 0; i < n; i++) {
        r[i] = (di_request){.prompt = prompts[i], .n_prompt = o->prompt_len, .n_predict = o->gen, .ignore_stop = true,
                            .sampler = {.temp = 0.0f}};
        rp[i] = &r[i];
    }
    /* the server's engine options: the same step budget, in flight and prefix cache */
    di_engine_opts eo = {.max_batch_tokens = o->max_batch_tokens, .max_seqs = o->clients, .prefix_cache = true};
    di_err err = {0};
    double t0 = cli_now();
    int rc = di_engine_run(m, rp, n, &eo, NULL, &err);
    double dt = cli_now() - t0;
    if (rc) fprintf(stderr, "bench_serve: %s\n", err.msg);
    for (int i = 0; i < n; i++) {
        if (!rc && l) {
            l->tokens += r[i].n_gen;
            l->ttft[l->n_ttft++] = r[i].t_first - r[i].t_admit;          /* from admission: no client here */
            if (r[i].n_gen > 1) l->gap[l->n_gap++] = (r[i].t_end - r[i].t_first) / (r[i].n_gen - 1);   /* mean per request */
        }
        di_request_release(&r[i]);
    }
    if (l) l->seconds = dt;
    free(r); free(rp);
    return rc ? 1 : 0;
}

static int run_engine(const opts *o, di_rt *rt, int32_t **prompts, lat *l)
{
    int kvb = di_model_kv_block(), ctx = o->prompt_len + o->gen + 1;
    di_model_opts mo = {.max_batch_tokens = o->max_batch_tokens, .ctx = ctx, .max_seqs = o->clients,
                        .kv_blocks = o->clients * ((ctx + kvb - 1) / kvb)};
    di_model *m = NULL;
    di_err err = {0};
    if (di_model_load(o->model, rt, &mo, &m, &err)) { fprintf(stderr, "bench_serve: %s\n", err.msg); return 2; }
    int rc = engine_pass(o, m, prompts + o->requests, o->warmup, NULL);   /* warm-up, not timed */
    if (!rc) rc = engine_pass(o, m, prompts, o->requests, l);
    di_model_free(m);
    return rc;
}

/* ---- through serve ---------------------------------------------------------------------- */

typedef struct shared {
    const opts *o;
    int port;
    int32_t **prompts;
    pthread_mutex_t mu;
    int next, n, failed;
    lat *l;
} shared;

/* One streamed request: POST, then read events until the server closes (HTTP/1.0). */
static int one_request(shared *sh, int i, double *ttft, double *gaps, int *n_gaps, long *tokens)
{
    const opts *o = sh->o;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)sh->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) { if (fd >= 0) close(fd); return -1; }
    size_t cap = (size_t)o->prompt_len * 8 + 256;
    char *body = malloc(cap), *req = malloc(cap + 256);
    int n = snprintf(body, cap, "{\"prompt\":[");
    for (int k = 0; k < o->prompt_len; k++) n += snprintf(body + n, cap - (size_t)n, "%s%d", k ? "," : "", sh->prompts[i][k]);
    n += snprintf(body + n, cap - (size_t)n, "],\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true,\"stream\":true}", o->gen);
    int m = snprintf(req, cap + 256, "POST /v1/completions HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                     "Content-Length: %d\r\n\r\n%s", n, body);
    double t0 = cli_now(), last = 0;
    bool ok = write(fd, req, (size_t)m) == m;
    free(body);
    free(req);
    /* count events that carry a token: "finish_reason":null */
    char buf[65536], tail[32] = {0};
    static const char needle[] = "\"finish_reason\":null";
    long got = 0;
    for (ssize_t k; ok && (k = read(fd, buf, sizeof buf)) > 0;) {
        double t = cli_now();
        /* a needle may straddle two reads: search the last bytes of the previous read too */
        char joined[sizeof tail + sizeof buf];
        size_t tl = strlen(tail);
        memcpy(joined, tail, tl);
        memcpy(joined + tl, buf, (size_t)k);
        joined[tl + (size_t)k] = 0;
        for (char *p = joined; (p = strstr(p, needle)); p += sizeof needle - 1) {
            if (got == 0) *ttft = t - t0;
            else gaps[(*n_gaps)++] = t - last;
            last = t;
            got++;
        }
        size_t keep = tl + (size_t)k < sizeof needle - 2 ? tl + (size_t)k : sizeof needle - 2;
        memcpy(tail, joined + tl + (size_t)k - keep, keep);
        tail[keep] = 0;
    }
    close(fd);
    *tokens += got;
    return ok && got == o->gen ? 0 : -1;
}

static void *client(void *arg)
{
    shared *sh = arg;
    double *gaps = malloc(sizeof *gaps * (size_t)sh->o->gen);
    for (;;) {
        pthread_mutex_lock(&sh->mu);
        int i = sh->next < sh->n ? sh->next++ : -1;
        pthread_mutex_unlock(&sh->mu);
        if (i < 0) break;
        double ttft = 0;
        int ng = 0;
        long tokens = 0;
        int rc = one_request(sh, i, &ttft, gaps, &ng, &tokens);
        pthread_mutex_lock(&sh->mu);
        if (rc) sh->failed++;
        sh->l->tokens += tokens;
        sh->l->ttft[sh->l->n_ttft++] = ttft;
        for (int k = 0; k < ng; k++) sh->l->gap[sh->l->n_gap++] = gaps[k];
        pthread_mutex_unlock(&sh->mu);
    }
    free(gaps);
    return NULL;
}

/* Starts serve on a free port; returns its pid and port, or -1. */
static pid_t start_serve(const opts *o, int *port)
{
    int pipefd[2];
    if (pipe(pipefd)) return -1;
    char clients[16], mbt[16], ctx[16], threads[16];
    snprintf(clients, sizeof clients, "%d", o->clients);
    snprintf(mbt, sizeof mbt, "%d", o->max_batch_tokens);
    snprintf(ctx, sizeof ctx, "%d", o->prompt_len + o->gen + 1);
    snprintf(threads, sizeof threads, "%d", o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN));
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], 2);
        close(pipefd[0]);
        execl(o->serve, o->serve, "-m", o->model, "--device", o->device, "--profile", o->profile, "--port", "0", "--max-seqs",
              clients, "--max-queue", clients, "--max-batch-tokens", mbt, "--ctx", ctx, "-t", threads, "--drain-timeout", "0",
              (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    FILE *f = fdopen(pipefd[0], "r");
    char line[1024];
    *port = -1;
    while (fgets(line, sizeof line, f)) {
        fputs(line, stderr);
        char *p = strstr(line, "listening on http://127.0.0.1:");
        if (p) { *port = atoi(p + strlen("listening on http://127.0.0.1:")); break; }
    }
    /* serve's later lines are not read; its stderr is left to a thread-free drain: close is fine, it writes little */
    fclose(f);
    if (*port < 0) { kill(pid, SIGKILL); waitpid(pid, NULL, 0); return -1; }
    return pid;
}

/* n requests by the clients; returns how many failed */
static int serve_pass(const opts *o, int port, int32_t **prompts, int n, lat *l)
{
    shared sh = {.o = o, .port = port, .prompts = prompts, .n = n, .l = l};
    pthread_mutex_init(&sh.mu, NULL);
    pthread_t *th = calloc((size_t)o->clients, sizeof *th);
    for (int i = 0; i < o->clients; i++) pthread_create(&th[i], NULL, client, &sh);
    for (int i = 0; i < o->clients; i++) pthread_join(th[i], NULL);
    free(th);
    pthread_mutex_destroy(&sh.mu);
    return sh.failed;
}

static int run_serve(const opts *o, int32_t **prompts, lat *l)
{
    int port;
    pid_t pid = start_serve(o, &port);
    if (pid < 0) { fprintf(stderr, "bench_serve: %s did not start\n", o->serve); return 2; }
    /* warm-up (its figures go to a scratch record), then the timed pass */
    size_t cap = (size_t)o->warmup * (size_t)o->gen + 1;
    lat scratch = {.ttft = calloc((size_t)o->warmup + 1, sizeof(double)), .gap = calloc(cap, sizeof(double))};
    int failed = serve_pass(o, port, prompts + o->requests, o->warmup, &scratch);
    free(scratch.ttft);
    free(scratch.gap);
    double t0 = cli_now();
    failed += serve_pass(o, port, prompts, o->requests, l);
    l->seconds = cli_now() - t0;
    kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
    if (failed) { fprintf(stderr, "bench_serve: %d requests failed or came back short\n", failed); return 1; }
    if (!WIFEXITED(st) || WEXITSTATUS(st)) fprintf(stderr, "bench_serve: serve exited with status %d\n", st);
    return 0;
}

int main(int argc, char **argv)
{
    opts o;
    int rc = parse(argc, argv, &o);
    if (rc >= 0) return rc;
    signal(SIGPIPE, SIG_IGN);
    di_err err = {0};
    di_profile prof = DI_PROFILE_EXACT;
    di_profile_parse(o.profile, &prof);   /* checked by parse */
    di_rt_opts ro = {.backend = strcmp(o.device, "cuda") ? DI_BACKEND_C : DI_BACKEND_CUDA, .profile = prof, .threads = o.threads};
    di_rt *rt = NULL;
    if (di_rt_open(&ro, &rt, &err)) { fprintf(stderr, "bench_serve: --device %s: %s\n", o.device, err.msg); return 2; }
    int vocab = 0;
    if ((rc = vocab_of(&o, rt, &vocab))) return rc;
    uint64_t s = o.seed;
    /* the timed requests, then the warm-up's (other prompts: no prefix cache hits between them) */
    int n_prompts = o.requests + o.warmup;
    int32_t **prompts = malloc(sizeof *prompts * (size_t)n_prompts);
    for (int i = 0; i < n_prompts; i++) {
        prompts[i] = malloc(sizeof **prompts * (size_t)o.prompt_len);
        for (int k = 0; k < o.prompt_len; k++) prompts[i][k] = (int32_t)(next(&s) % (uint64_t)vocab);
    }
    size_t cap = (size_t)o.requests * (size_t)o.gen;
    lat eng = {.ttft = calloc((size_t)o.requests, sizeof(double)), .gap = calloc(cap, sizeof(double))};
    lat srv = {.ttft = calloc((size_t)o.requests, sizeof(double)), .gap = calloc(cap, sizeof(double))};
    printf("bench_serve: %s; %d requests of %d prompt + %d generated tokens, %d in flight / clients, "
           "after %d warm-up requests each side\n", di_rt_describe(rt), o.requests, o.prompt_len, o.gen, o.clients, o.warmup);
    if (!o.skip_engine && (rc = run_engine(&o, rt, prompts, &eng))) return rc;
    di_rt_close(rt);   /* the server opens its own: one model in memory at a time */
    if ((rc = run_serve(&o, prompts, &srv))) return rc;
    if (!o.skip_engine) report("engine", &eng);
    report("serve", &srv);
    if (!o.skip_engine)
        printf("HTTP overhead: %.1f %% of throughput (serve %.1f vs engine %.1f tok/s; the target is <= 5 %%)\n",
               100.0 * (1.0 - (srv.tokens / srv.seconds) / (eng.tokens / eng.seconds)), srv.tokens / srv.seconds,
               eng.tokens / eng.seconds);
    printf("(engine TTFT: from admission to the first token; per token: a request's mean gap. serve: from the request's "
           "first byte sent, and each gap seen by the client)\n");
    for (int i = 0; i < n_prompts; i++) free(prompts[i]);
    free(prompts);
    free(eng.ttft); free(eng.gap); free(srv.ttft); free(srv.gap);
    return 0;
}
