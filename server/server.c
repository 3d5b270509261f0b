/* serve's HTTP side and engine thread (server/server.h). */
#define _GNU_SOURCE   /* POLLRDHUP */
#include "server/internal.h"
#include "base/utf8.h"
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* A timed wait, so that waiters look at the client's socket and at deadlines now and then. */
static void wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, int ms)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_nsec += (long)ms * 1000000L;
    t.tv_sec += t.tv_nsec / 1000000000L;
    t.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(cv, mu, &t);
}

static const double step_bounds[13] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

/* ---- jobs ---------------------------------------------------------------------------------- */

static void job_free(job *j)
{
    if (!j) return;
    for (int i = 0; i < j->n_ch; i++) {
        di_request_release(&j->ch[i].r);
        di_str_free(&j->ch[i].raw);
        free(j->ch[i].tok_end);
        /* choices of one prompt share its ids: the first of them owns them */
        if (j->ch[i].index % (j->q.n > 0 ? j->q.n : 1) == 0) free(j->ch[i].ids);
    }
    free(j->ch);
    di_api_request_free(&j->q);
    pthread_cond_destroy(&j->cv);
    free(j);
}

/* Counts j's outcome once and frees it; the last one out lets a shutdown finish. */
static void job_retire(di_server *s, job *j)
{
    pthread_mutex_lock(&s->mu);
    bool aborted = false, error = j->err.status != 0;
    for (int i = 0; i < j->n_ch; i++) aborted |= j->ch[i].end == END_ABORT;
    if (j->client_gone) s->m.cancelled++;
    else if (error) s->m.server_error++;
    else if (aborted) s->m.aborted++;
    else s->m.ok++;
    s->jobs_alive--;
    pthread_cond_broadcast(&s->idle_cv);
    pthread_mutex_unlock(&s->mu);
    job_free(j);
}

/* ---- the engine thread --------------------------------------------------------------------- */

typedef struct engine_ctx { di_server *s; di_engine *e; job *active; } engine_ctx;

static bool is_stop_id(const di_server *s, int32_t t)
{
    for (int i = 0; i < s->n_stops; i++)
        if (s->stops[i] == t) return true;
    return false;
}

/* The first match of a stop string that ends in raw[from..): its start, or -1. */
static long find_stop(const choice *c, size_t from)
{
    const di_api_request *q = &c->job->q;
    long best = -1;
    for (int k = 0; k < q->n_stop; k++) {
        size_t L = strlen(q->stop[k]);
        size_t start = from >= L - 1 ? from - (L - 1) : 0;
        for (size_t i = start; i + L <= c->raw.len; i++)
            if (!memcmp(c->raw.p + i, q->stop[k], L)) {
                if (best < 0 || (long)i < best) best = (long)i;
                break;
            }
    }
    return best;
}

/* Within a step: publish the token; a stop string found is acted on at the step's end. */
static void on_token(void *ctx, const di_request *r, int32_t t)
{
    engine_ctx *ec = ctx;
    di_server *s = ec->s;
    choice *c = r->user;
    pthread_mutex_lock(&s->mu);
    size_t before = c->raw.len;
    if (!(is_stop_id(s, t) && !r->ignore_stop)) {
        const char *b;
        size_t n;
        if (s->tok && !di_token_piece(s->tok, t, &b, &n)) di_str_putn(&c->raw, b, n);
    }
    if (!c->raw.p) di_str_putn(&c->raw, "", 0);
    c->tok_end[r->n_gen - 1] = c->raw.len;
    c->n_pub = r->n_gen;
    if (!c->started) { c->started = true; s->pending--; }
    if (!c->stopped && c->job->q.n_stop && c->raw.len > before) {
        long at = find_stop(c, before);
        if (at >= 0) { c->stopped = true; c->stop_at = (size_t)at; }
    }
    c->job->unread = true;    /* woken before the next step, not here: see wake_streams */
    pthread_mutex_unlock(&s->mu);
}

/* A stop string that matched ends the request at this token: no drafted token after it is
 * kept, so usage and log-probs stop where plain decoding stops (on_token set stopped). */
static bool halt(void *ctx, const di_request *r)
{
    (void)ctx;
    const choice *c = r->user;
    return c->stopped;
}

static void on_done(void *ctx, di_request *r)
{
    engine_ctx *ec = ctx;
    di_server *s = ec->s;
    choice *c = r->user;
    pthread_mutex_lock(&s->mu);
    c->n_pub = r->n_gen;
    c->done = true;
    if (!c->started) { c->started = true; s->pending--; }
    c->end = c->stopped || r->finish == DI_DONE_EOS ? END_STOP : r->finish == DI_DONE_LENGTH ? END_LENGTH
           : c->job->client_gone ? END_CANCEL : END_ABORT;
    s->m.prompt_tokens += r->n_prompt;
    s->m.gen_tokens += r->n_gen;
    s->m.drafted += r->drafted;
    s->m.draft_accepted += r->draft_accepted;
    s->m.decode_steps += r->decode_steps;
    s->m.decode_tokens += r->decode_tokens;
    c->job->n_done++;
    pthread_cond_broadcast(&c->job->cv);
    pthread_mutex_unlock(&s->mu);
}

static void fail_choice(di_server *s, choice *c, int status, const char *msg)
{
    pthread_mutex_lock(&s->mu);
    if (!c->job->err.status) di_api_fail(&c->job->err, status, NULL, NULL, "%s", msg);
    c->done = true;
    if (!c->started) { c->started = true; s->pending--; }
    c->end = END_ERROR;
    c->job->n_done++;
    pthread_cond_broadcast(&c->job->cv);
    pthread_mutex_unlock(&s->mu);
}

/* The inbox's jobs into the engine. A submission that fails ends its choice with an error. */
static void submit_jobs(engine_ctx *ec, job *in)
{
    while (in) {
        job *j = in;
        in = in->next;
        for (int i = 0; i < j->n_ch; i++) {
            di_err err = {0};
            if (di_engine_submit(ec->e, &j->ch[i].r, &err)) fail_choice(ec->s, &j->ch[i], err.code == DI_EUSAGE ? 400 : 500, err.msg);
        }
        j->next = ec->active;
        ec->active = j;
    }
}

/* At a step boundary: cancels what the HTTP side, a stop string or the drain deadline asks to
 * end, and lets go of jobs whose every choice is done. */
static void boundary(engine_ctx *ec)
{
    di_server *s = ec->s;
    pthread_mutex_lock(&s->mu);
    bool expired = s->draining && now() >= s->drain_deadline;
    enum { MAXC = 64 };
    choice *victims[MAXC];
    int nv = 0;
    for (job *j = ec->active; j; j = j->next)
        for (int i = 0; i < j->n_ch && nv < MAXC; i++) {
            choice *c = &j->ch[i];
            if (!c->done && (j->cancel || c->stopped || expired)) victims[nv++] = c;
        }
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < nv; i++)
        if (!di_engine_cancel(ec->e, &victims[i]->r)) fail_choice(s, victims[i], 500, "request lost by the engine");
    pthread_mutex_lock(&s->mu);
    for (job **p = &ec->active; *p;) {
        job *j = *p;
        if (j->n_done < j->n_ch) { p = &j->next; continue; }
        *p = j->next;
        j->next = NULL;
        j->released = true;
        pthread_cond_broadcast(&j->cv);
    }
    di_engine_get_info(ec->e, &s->info);
    pthread_mutex_unlock(&s->mu);
}

/* The engine failed: every request in it ends with a server error; serving stops. */
static void engine_failed(engine_ctx *ec, const di_err *err)
{
    di_server *s = ec->s;
    fprintf(stderr, "serve: engine: %s\n", err->msg);
    for (job *j = ec->active; j; j = j->next)
        for (int i = 0; i < j->n_ch; i++)
            if (!j->ch[i].done) {
                di_engine_cancel(ec->e, &j->ch[i].r);
                pthread_mutex_lock(&s->mu);
                j->ch[i].end = END_ERROR;
                if (!j->err.status) di_api_fail(&j->err, 500, NULL, NULL, "engine failure: %s", err->msg);
                pthread_mutex_unlock(&s->mu);
            }
    pthread_mutex_lock(&s->mu);
    s->fatal = true;
    pthread_mutex_unlock(&s->mu);
    boundary(ec);
}

/* The stream threads of jobs with new tokens, woken once per step, just before the next one
 * starts. Each formats its events under s->mu; woken from on_token, they took the lock in turn
 * between the engine thread's on_token calls of the same step, and the engine thread waited for
 * all of them: about 2 ms a step at 64 streams (bench_serve: 26 % of SmolLM2's throughput on
 * the H200). Woken here, they format while the step runs and the engine thread needs no lock. */
static void wake_unread(engine_ctx *ec)   /* s->mu held */
{
    for (job *j = ec->active; j; j = j->next)
        if (j->unread) { j->unread = false; pthread_cond_broadcast(&j->cv); }
}

static void wake_streams(engine_ctx *ec)
{
    pthread_mutex_lock(&ec->s->mu);
    wake_unread(ec);
    pthread_mutex_unlock(&ec->s->mu);
}

static void observe_step(di_server *s, double dt)
{
    s->m.steps++;
    s->m.step_sum += dt;
    int b = 0;
    while (b < 13 && dt > step_bounds[b]) b++;
    s->m.step_bucket[b]++;
}

static void serve_loop(engine_ctx *ec)
{
    di_server *s = ec->s;
    bool busy = false;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        if (!busy) wake_unread(ec);   /* no next step to wake them before */
        while (!s->inbox && !busy && !s->stop_engine && !(s->draining && ec->active)) wait_ms(&s->engine_cv, &s->mu, 200);
        if (s->stop_engine && !s->inbox && !ec->active) { pthread_mutex_unlock(&s->mu); return; }
        job *in = s->inbox;
        s->inbox = s->inbox_tail = NULL;
        s->inbox_choices = 0;
        pthread_mutex_unlock(&s->mu);
        submit_jobs(ec, in);
        boundary(ec);
        wake_streams(ec);
        di_err err = {0};
        if (di_engine_step(ec->e, &busy, &err)) { engine_failed(ec, &err); busy = false; continue; }
        long steps = s->info.steps;   /* written by this thread only */
        boundary(ec);
        pthread_mutex_lock(&s->mu);
        if (s->info.steps > steps) observe_step(s, s->info.last_step_s);
        pthread_mutex_unlock(&s->mu);
    }
}

static void *engine_main(void *arg)
{
    di_server *s = arg;
    di_err err = {0};
    di_rt *rt = NULL;
    di_model *m = NULL;
    di_engine *e = NULL;
    di_rt_opts ro = {.backend = s->o.backend, .profile = s->o.profile,
                     .threads = s->o.threads > 0 ? s->o.threads : (int)sysconf(_SC_NPROCESSORS_ONLN)};
    int rc = di_rt_open(&ro, &rt, &err);
    if (rc && s->o.backend_auto && ro.backend == DI_BACKEND_CUDA) {
        fprintf(stderr, "serve: no usable GPU (%s); running on the CPU\n", err.msg);
        ro.backend = DI_BACKEND_C;
        rc = di_rt_open(&ro, &rt, &err);
    }
    if (!rc) rc = di_receipt_make(s->o.model_path, rt, s->o.profile, &s->receipt, &err);
    int kvb = di_model_kv_block();
    di_model_opts mo = {.max_batch_tokens = s->o.max_batch_tokens, .ctx = s->o.ctx, .max_seqs = s->o.max_seqs,
                        .kv_blocks = s->o.kv_blocks > 0 ? s->o.kv_blocks : s->o.max_seqs * ((s->o.ctx + kvb - 1) / kvb)};
    if (!rc) rc = di_model_load(s->o.model_path, rt, &mo, &m, &err);
    /* the draft model: its own KV, every slot a whole context */
    di_model *dm = NULL;
    di_model_opts dmo = mo;
    dmo.kv_blocks = s->o.max_seqs * ((s->o.ctx + kvb - 1) / kvb);
    if (!rc && s->o.draft_model && (rc = di_model_load(s->o.draft_model, rt, &dmo, &dm, &err)))
        di_wrap(&err, "--draft-model %s", s->o.draft_model);
    di_engine_opts eo = {.max_batch_tokens = s->o.max_batch_tokens, .max_seqs = s->o.max_seqs, .prefix_cache = s->o.prefix_cache,
                         .stop_ids = s->stops, .n_stop = s->n_stops, .on_token = on_token, .halt = halt, .on_done = on_done,
                         .draft_model = dm};
    engine_ctx ec = {.s = s};
    eo.ctx = &ec;
    if (!rc) rc = di_engine_open(m, &eo, &e, &err);
    ec.e = e;
    pthread_mutex_lock(&s->mu);
    if (rt) snprintf(s->device, sizeof s->device, "%s", di_rt_describe(rt));
    s->ready = true;
    s->start_rc = rc;
    s->start_err = err;
    if (e) di_engine_get_info(e, &s->info);
    if (m && !s->vocab) s->vocab = di_model_config(m)->vocab;
    pthread_cond_broadcast(&s->engine_cv);
    pthread_mutex_unlock(&s->mu);
    if (!rc) serve_loop(&ec);
    di_engine_close(e, NULL);
    di_model_free(dm);
    di_model_free(m);
    if (rt) di_rt_close(rt);
    return NULL;
}

/* ---- HTTP ---------------------------------------------------------------------------------- */

typedef struct conn_state {
    di_str body;
    bool too_big, answered;
} conn_state;

static enum MHD_Result send_body(struct MHD_Connection *conn, int status, char *body, const char *type, int retry_after)
{
    if (!body) { body = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}"); status = 500; }
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) { free(body); return MHD_NO; }
    MHD_add_response_header(r, "Content-Type", type);
    if (retry_after > 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", retry_after);
        MHD_add_response_header(r, "Retry-After", v);
    }
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    enum MHD_Result rc = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result send_json(struct MHD_Connection *conn, int status, char *body)
{
    return send_body(conn, status, body, "application/json", 0);
}

/* An error answer; counted (a client's fault, a full queue, or ours). */
static enum MHD_Result send_error(di_server *s, struct MHD_Connection *conn, const di_api_error *e)
{
    pthread_mutex_lock(&s->mu);
    if (e->status == 503) s->m.rejected++;
    else if (e->status >= 500) s->m.server_error++;
    else s->m.client_error++;
    pthread_mutex_unlock(&s->mu);
    return send_body(conn, e->status, di_api_error_json(e), "application/json", e->status == 503 ? 1 : 0);
}

static bool client_gone(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* The client left: ask the engine thread to cancel j (under s->mu). */
static void abandon(di_server *s, job *j)
{
    if (j->cancel) return;
    j->cancel = j->client_gone = true;
    pthread_cond_signal(&s->engine_cv);
}

/* ---- building a job --------------------------------------------------------------------- */

static int tokenize_prompt(di_server *s, const di_api_request *q, int i, int32_t **ids, int *n, di_api_error *e)
{
    di_err err = {0};
    size_t len = 0;
    char param[32];
    snprintf(param, sizeof param, q->n_prompts > 1 ? "prompt[%d]" : "prompt", i);
    /* a model whose tokenizer detinfer cannot read (a random-weight benchmark model) takes token ids only */
    if (!s->tok && (q->kind == DI_API_CHAT || q->prompts[i].text))
        return di_api_fail(e, 422, q->kind == DI_API_CHAT ? "messages" : param, "no_tokenizer",
                           "this model's tokenizer is not supported: send the prompt as token ids");
    if (q->kind == DI_API_CHAT && !s->tmpl)
        return di_api_fail(e, 422, "messages", "no_chat_template", "this model's chat template is not supported: use /v1/completions");
    if (q->kind == DI_API_CHAT) {
        di_chat_msg *m = calloc((size_t)q->n_msgs, sizeof *m);
        if (!m) return di_api_fail(e, 500, NULL, NULL, "out of memory");
        for (int k = 0; k < q->n_msgs; k++) m[k] = (di_chat_msg){q->msgs[k].role, q->msgs[k].content};
        char *text = NULL;
        int rc = di_chat_render(s->tmpl, m, q->n_msgs, true, &text, &err);
        free(m);
        if (rc) return di_api_fail(e, rc == DI_EUSAGE ? 422 : 500, "messages", NULL, "%s", err.msg);
        rc = di_tokenize(s->tok, text, strlen(text), true, ids, &len, &err);
        free(text);
        if (rc) return di_api_fail(e, 422, "messages", "invalid_value", "%s", err.msg);
        *n = (int)len;
        return 0;
    }
    const di_api_prompt *p = &q->prompts[i];
    if (p->ids) {
        *ids = malloc(sizeof **ids * (size_t)p->n_ids);
        if (!*ids) return di_api_fail(e, 500, NULL, NULL, "out of memory");
        memcpy(*ids, p->ids, sizeof **ids * (size_t)p->n_ids);
        *n = p->n_ids;
        return 0;
    }
    if (di_tokenize(s->tok, p->text, p->text_len, false, ids, &len, &err))
        return di_api_fail(e, 422, param, "invalid_value", "'%s': %s", param, err.msg);
    if (len == 0) { free(*ids); *ids = NULL; return di_api_fail(e, 422, param, "invalid_value", "'%s' has no tokens", param); }
    *n = (int)len;
    return 0;
}

/* A decoded request into a job: one choice per (prompt, sample). Checks the context. */
static int make_job(di_server *s, di_api_request *q, job **out, di_api_error *e)
{
    if (q->model && strcmp(q->model, s->model_id))
        return di_api_fail(e, 404, "model", "model_not_found", "The model '%.200s' does not exist; this server serves '%.200s'",
                           q->model, s->model_id);
    if (q->spec_given && q->draft_max > 0 && q->draft_model && !s->o.draft_model)
        return di_api_fail(e, 422, "speculative.method", "unsupported_parameter",
                           "'speculative.method' \"draft_model\" needs a server started with --draft-model");
    di_draft_opts draft = s->o.draft;
    if (q->spec_given)
        draft = (di_draft_opts){.draft_max = q->draft_max, .ngram_max = q->ngram, .ngram_min = q->ngram_min, .model = q->draft_model};
    int n_prompts = q->kind == DI_API_CHAT ? 1 : q->n_prompts;
    job *j = calloc(1, sizeof *j);
    if (!j) return di_api_fail(e, 500, NULL, NULL, "out of memory");
    j->s = s;
    j->q = *q;
    memset(q, 0, sizeof *q);          /* the job owns the request now */
    pthread_cond_init(&j->cv, NULL);
    j->ch = calloc((size_t)(n_prompts * j->q.n), sizeof *j->ch);
    if (!j->ch) { job_free(j); return di_api_fail(e, 500, NULL, NULL, "out of memory"); }
    for (int p = 0; p < n_prompts; p++) {
        int32_t *ids = NULL;
        int n = 0, rc = tokenize_prompt(s, &j->q, p, &ids, &n, e);
        if (rc) { job_free(j); return rc; }
        j->prompt_tokens += n;
        char param[32];
        if (j->q.kind == DI_API_CHAT) snprintf(param, sizeof param, "messages");
        else snprintf(param, sizeof param, n_prompts > 1 ? "prompt[%d]" : "prompt", p);
        int max = j->q.max_tokens >= 0 ? j->q.max_tokens : s->o.ctx - n;
        if (n >= s->o.ctx || n + max > s->o.ctx) {
            free(ids);
            job_free(j);
            return di_api_fail(e, 400, n >= s->o.ctx ? param : "max_tokens", "context_length_exceeded",
                               "This model's maximum context length is %d tokens; the %s is %d tokens and max_tokens %d",
                               s->o.ctx, j->q.kind == DI_API_CHAT ? "conversation" : "prompt", n, max);
        }
        for (int k = 0; k < j->q.n; k++) {
            choice *c = &j->ch[j->n_ch];
            c->job = j;
            c->index = j->n_ch++;
            c->prompt_index = p;
            c->ids = ids;
            c->n_ids = n;
            c->tok_end = calloc((size_t)max + 1, sizeof *c->tok_end);
            if (!c->tok_end) { job_free(j); return di_api_fail(e, 500, NULL, NULL, "out of memory"); }
            /* the choice's sample index keys its random draws: choice 0 of n equals the n = 1 answer */
            c->r = (di_request){.prompt = ids, .n_prompt = n, .n_predict = max, .chunk = s->o.chunk,
                                .sampler = {.temp = (float)j->q.temperature, .top_k = j->q.top_k, .top_p = (float)j->q.top_p,
                                            .seed = j->q.seed, .min_p = (float)j->q.min_p},
                                .rng_id = (uint64_t)k, .score_prompt = j->q.echo && j->q.logprobs >= 0,
                                .ignore_stop = j->q.ignore_eos, .top_n = j->q.logprobs > 0 ? j->q.logprobs : 0,
                                .draft = draft, .user = c};
        }
    }
    *out = j;
    return 0;
}

/* Into the inbox, unless the queue is full or the server is going down. */
static int enqueue(di_server *s, job *j, di_api_error *e)
{
    pthread_mutex_lock(&s->mu);
    /* waiting: accepted and not started, counted by this side (the engine's own view is as of
     * its last step boundary, which a client that just got its first token may have outrun) */
    int waiting = s->pending;
    int rc = 0;
    if (s->draining) rc = di_api_fail(e, 503, NULL, "shutting_down", "the server is shutting down");
    else if (s->fatal) rc = di_api_fail(e, 503, NULL, "engine_failed", "the engine failed; the server no longer serves");
    else if (waiting + j->n_ch > s->o.max_queue)
        rc = di_api_fail(e, 503, NULL, "queue_full", "the queue is full (%d waiting, --max-queue %d); retry later", waiting,
                         s->o.max_queue);
    if (!rc) {
        snprintf(j->id, sizeof j->id, "%s-%lu", j->q.kind == DI_API_CHAT ? "chatcmpl" : "cmpl", ++s->next_id);
        j->created = (long)time(NULL);
        if (s->inbox_tail) s->inbox_tail->next = j; else s->inbox = j;
        s->inbox_tail = j;
        s->inbox_choices += j->n_ch;
        s->pending += j->n_ch;
        s->jobs_alive++;
        pthread_cond_signal(&s->engine_cv);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- answering -------------------------------------------------------------------------- */

static enum MHD_Result answer_whole(di_server *s, struct MHD_Connection *conn, job *j)
{
    pthread_mutex_lock(&s->mu);
    while (!j->released) {
        wait_ms(&j->cv, &s->mu, 50);
        if (!j->cancel && client_gone(conn)) abandon(s, j);
    }
    bool gone = j->client_gone;
    di_api_error err = j->err;
    pthread_mutex_unlock(&s->mu);
    char *body = gone || err.status ? NULL : di_resp_final(s, j);
    job_retire(s, j);
    if (gone) return MHD_NO;   /* nobody to answer: close */
    if (err.status) return send_body(conn, err.status, di_api_error_json(&err), "application/json", 0);
    return send_json(conn, 200, body);
}

typedef struct stream {
    di_server *s;
    job *j;
    struct MHD_Connection *conn;
    di_str out;
    size_t at;
    bool ended;
} stream;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    stream *st = cls;
    di_server *s = st->s;
    while (st->at == st->out.len) {
        if (st->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        st->out.len = st->at = 0;
        pthread_mutex_lock(&s->mu);
        st->ended = di_resp_stream(s, st->j, &st->out);
        if (st->out.len == 0 && !st->ended) {
            wait_ms(&st->j->cv, &s->mu, 50);
            if (!st->j->cancel && client_gone(st->conn)) abandon(s, st->j);
            if (st->j->client_gone && st->j->released) { pthread_mutex_unlock(&s->mu); return MHD_CONTENT_READER_END_WITH_ERROR; }
        }
        pthread_mutex_unlock(&s->mu);
    }
    size_t n = st->out.len - st->at < max ? st->out.len - st->at : max;
    memcpy(buf, st->out.p + st->at, n);
    st->at += n;
    return (ssize_t)n;
}

/* The response is gone (sent, or the connection closed): the job ends here either way. */
static void stream_free(void *cls)
{
    stream *st = cls;
    di_server *s = st->s;
    pthread_mutex_lock(&s->mu);
    if (!st->ended) abandon(s, st->j);
    while (!st->j->released) wait_ms(&st->j->cv, &s->mu, 50);
    pthread_mutex_unlock(&s->mu);
    job_retire(s, st->j);
    di_str_free(&st->out);
    free(st);
}

static enum MHD_Result answer_stream(di_server *s, struct MHD_Connection *conn, job *j)
{
    stream *st = calloc(1, sizeof *st);
    struct MHD_Response *r = st ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, st, stream_free) : NULL;
    if (!r) {
        pthread_mutex_lock(&s->mu);
        abandon(s, j);
        while (!j->released) wait_ms(&j->cv, &s->mu, 50);
        pthread_mutex_unlock(&s->mu);
        job_retire(s, j);
        free(st);
        return MHD_NO;
    }
    *st = (stream){.s = s, .j = j, .conn = conn};
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    enum MHD_Result rc = MHD_queue_response(conn, 200, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result generation(di_server *s, struct MHD_Connection *conn, int kind, const conn_state *cs)
{
    di_api_request q;
    di_api_error e = {0};
    if (di_api_decode(kind, cs->body.p ? cs->body.p : "", cs->body.len, s->vocab, &q, &e)) return send_error(s, conn, &e);
    job *j = NULL;
    if (make_job(s, &q, &j, &e)) { di_api_request_free(&q); return send_error(s, conn, &e); }
    if (enqueue(s, j, &e)) { job_free(j); return send_error(s, conn, &e); }
    return j->q.stream ? answer_stream(s, conn, j) : answer_whole(s, conn, j);
}

/* ---- the small routes --------------------------------------------------------------------- */

static enum MHD_Result tokenize_route(di_server *s, struct MHD_Connection *conn, int kind, const conn_state *cs)
{
    di_api_request q;
    di_api_error e = {0};
    if (di_api_decode(kind, cs->body.p ? cs->body.p : "", cs->body.len, s->vocab, &q, &e)) return send_error(s, conn, &e);
    if (!s->tok) {
        di_api_request_free(&q);
        di_api_fail(&e, 422, NULL, "no_tokenizer", "this model's tokenizer is not supported");
        return send_error(s, conn, &e);
    }
    json_t *o;
    if (kind == DI_API_TOKENIZE) {
        int32_t *ids = NULL;
        size_t n = 0;
        di_err err = {0};
        if (di_tokenize(s->tok, q.prompts[0].text, q.prompts[0].text_len, q.parse_special, &ids, &n, &err)) {
            di_api_fail(&e, 422, "content", "invalid_value", "%s", err.msg);
            di_api_request_free(&q);
            return send_error(s, conn, &e);
        }
        json_t *a = json_array();
        for (size_t i = 0; i < n; i++) json_array_append_new(a, json_integer(ids[i]));
        free(ids);
        o = json_pack("{s:o,s:i}", "tokens", a, "count", (int)n);
    } else {
        di_str t = {0}, clean = {0};
        for (int i = 0; i < q.n_ids; i++) {
            const char *b;
            size_t n;
            if (!di_token_piece(s->tok, q.ids[i], &b, &n)) di_str_putn(&t, b, n);
        }
        di_utf8_sanitize(&clean, t.p ? t.p : "", t.len);
        o = json_pack("{s:s%}", "content", clean.p, clean.len);
        di_str_free(&t);
        di_str_free(&clean);
    }
    di_api_request_free(&q);
    pthread_mutex_lock(&s->mu);
    s->m.ok++;
    pthread_mutex_unlock(&s->mu);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return send_json(conn, 200, body);
}

static json_t *model_json(di_server *s)
{
    return json_pack("{s:s,s:s,s:I,s:s,s:i,s:{s:s,s:s,s:s,s:s,s:s}}", "id", s->model_id, "object", "model", "created",
                     (json_int_t)s->created, "owned_by", "detinfer", "max_model_len", s->o.ctx, "receipt", "version",
                     s->receipt.version, "commit", s->receipt.commit, "model_sha256", s->receipt.model_sha256, "profile",
                     s->receipt.profile, "device", s->receipt.device);
}

static enum MHD_Result models_route(di_server *s, struct MHD_Connection *conn, const char *url)
{
    json_t *o;
    if (!strcmp(url, "/v1/models")) {
        o = json_pack("{s:s,s:[o]}", "object", "list", "data", model_json(s));
    } else if (!strcmp(url + strlen("/v1/models/"), s->model_id)) {
        o = model_json(s);
    } else {
        di_api_error e;
        di_api_fail(&e, 404, "model", "model_not_found", "The model '%.200s' does not exist", url + strlen("/v1/models/"));
        return send_error(s, conn, &e);
    }
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return send_json(conn, 200, body);
}

static enum MHD_Result metrics_route(di_server *s, struct MHD_Connection *conn)
{
    di_str t = {0};
    pthread_mutex_lock(&s->mu);
    metrics m = s->m;
    di_engine_info in = s->info;
    int pending = s->pending;
    pthread_mutex_unlock(&s->mu);
    di_str_puts(&t, "# HELP detinfer_requests_total API requests answered, by outcome.\n# TYPE detinfer_requests_total counter\n");
    const char *names[] = {"ok", "cancelled", "aborted", "client_error", "server_error", "rejected"};
    long vals[] = {m.ok, m.cancelled, m.aborted, m.client_error, m.server_error, m.rejected};
    for (int i = 0; i < 6; i++) di_str_printf(&t, "detinfer_requests_total{outcome=\"%s\"} %ld\n", names[i], vals[i]);
    di_str_printf(&t, "# HELP detinfer_prompt_tokens_total Prompt tokens of finished requests.\n# TYPE detinfer_prompt_tokens_total counter\n"
                      "detinfer_prompt_tokens_total %ld\n", m.prompt_tokens);
    di_str_printf(&t, "# HELP detinfer_generated_tokens_total Tokens generated.\n# TYPE detinfer_generated_tokens_total counter\n"
                      "detinfer_generated_tokens_total %ld\n", m.gen_tokens);
    di_str_printf(&t, "# HELP detinfer_queue_depth Requests accepted that have not started generating.\n"
                      "# TYPE detinfer_queue_depth gauge\ndetinfer_queue_depth %d\n", pending);
    di_str_printf(&t, "# HELP detinfer_requests_running Requests holding a sequence slot.\n# TYPE detinfer_requests_running gauge\n"
                      "detinfer_requests_running %d\n", in.running);
    di_str_printf(&t, "# HELP detinfer_kv_blocks_in_use KV cache blocks held by requests.\n# TYPE detinfer_kv_blocks_in_use gauge\n"
                      "detinfer_kv_blocks_in_use %d\n", in.blocks_held);
    di_str_printf(&t, "# HELP detinfer_kv_blocks_cached KV cache blocks in the prefix cache.\n# TYPE detinfer_kv_blocks_cached gauge\n"
                      "detinfer_kv_blocks_cached %d\n", in.blocks_cached);
    di_str_printf(&t, "# HELP detinfer_kv_blocks_total KV cache blocks in the pool.\n# TYPE detinfer_kv_blocks_total gauge\n"
                      "detinfer_kv_blocks_total %d\n", in.blocks_total);
    di_str_printf(&t, "# HELP detinfer_spec_draft_tokens_total Tokens drafted for speculative decoding (finished requests).\n"
                      "# TYPE detinfer_spec_draft_tokens_total counter\ndetinfer_spec_draft_tokens_total %ld\n", m.drafted);
    di_str_printf(&t, "# HELP detinfer_spec_accepted_tokens_total Drafted tokens kept: the sampled token equalled the draft.\n"
                      "# TYPE detinfer_spec_accepted_tokens_total counter\ndetinfer_spec_accepted_tokens_total %ld\n", m.draft_accepted);
    di_str_printf(&t, "# HELP detinfer_decode_steps_total Steps in which a request had a decode row (finished requests).\n"
                      "# TYPE detinfer_decode_steps_total counter\ndetinfer_decode_steps_total %ld\n", m.decode_steps);
    di_str_printf(&t, "# HELP detinfer_decode_tokens_total Tokens those steps gave (1 per step without speculation).\n"
                      "# TYPE detinfer_decode_tokens_total counter\ndetinfer_decode_tokens_total %ld\n", m.decode_tokens);
    di_str_printf(&t, "# HELP detinfer_spec_tokens_per_step Decode tokens per decode step so far.\n"
                      "# TYPE detinfer_spec_tokens_per_step gauge\ndetinfer_spec_tokens_per_step %.4f\n",
                  m.decode_steps ? (double)m.decode_tokens / m.decode_steps : 0.0);
    di_str_puts(&t, "# HELP detinfer_step_seconds Wall time of one forward step.\n# TYPE detinfer_step_seconds histogram\n");
    long cum = 0;
    for (int b = 0; b < 13; b++) {
        cum += m.step_bucket[b];
        di_str_printf(&t, "detinfer_step_seconds_bucket{le=\"%g\"} %ld\n", step_bounds[b], cum);
    }
    cum += m.step_bucket[13];
    di_str_printf(&t, "detinfer_step_seconds_bucket{le=\"+Inf\"} %ld\ndetinfer_step_seconds_sum %.6f\ndetinfer_step_seconds_count %ld\n",
                  cum, m.step_sum, m.steps);
    return send_body(conn, 200, t.p, "text/plain; version=0.0.4", 0);
}

/* ---- routing ------------------------------------------------------------------------------ */

static bool authorized(di_server *s, struct MHD_Connection *conn)
{
    if (!s->o.api_key) return true;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7)) return false;
    const char *k = h + 7, *want = s->o.api_key;
    size_t n = strlen(k), m = strlen(want);
    unsigned diff = n != m;
    for (size_t i = 0; i < m; i++) diff |= (unsigned char)want[i] ^ (unsigned char)(i < n ? k[i] : 0);   /* no early exit */
    return diff == 0;
}

static enum MHD_Result route(di_server *s, struct MHD_Connection *conn, const char *url, const char *method, const conn_state *cs)
{
    di_api_error e = {0};
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (!strcmp(url, "/health")) {
        pthread_mutex_lock(&s->mu);
        bool down = s->draining || s->fatal;
        pthread_mutex_unlock(&s->mu);
        return send_json(conn, down ? 503 : 200, strdup(down ? "{\"status\":\"unavailable\"}" : "{\"status\":\"ok\"}"));
    }
    if (!strcmp(url, "/metrics")) return metrics_route(s, conn);
    if (!authorized(s, conn)) {
        di_api_fail(&e, 401, NULL, "invalid_api_key", "Incorrect API key provided (send 'Authorization: Bearer KEY')");
        return send_error(s, conn, &e);
    }
    static const struct { const char *path; int kind; } posts[] = {
        {"/v1/completions", DI_API_COMPLETION}, {"/v1/chat/completions", DI_API_CHAT},
        {"/tokenize", DI_API_TOKENIZE}, {"/detokenize", DI_API_DETOKENIZE}};
    for (size_t i = 0; i < sizeof posts / sizeof posts[0]; i++) {
        if (strcmp(url, posts[i].path)) continue;
        if (!post) { di_api_fail(&e, 405, NULL, "method_not_allowed", "%s takes POST, not %s", url, method); return send_error(s, conn, &e); }
        if (cs->too_big) {
            di_api_fail(&e, 413, NULL, "body_too_large", "the request body is over %zu bytes (--max-body)", s->o.max_body);
            return send_error(s, conn, &e);
        }
        if (posts[i].kind <= DI_API_CHAT) return generation(s, conn, posts[i].kind, cs);
        return tokenize_route(s, conn, posts[i].kind, cs);
    }
    if (!strcmp(url, "/v1/models") || !strncmp(url, "/v1/models/", 11)) {
        if (!get) { di_api_fail(&e, 405, NULL, "method_not_allowed", "%s takes GET, not %s", url, method); return send_error(s, conn, &e); }
        return models_route(s, conn, url);
    }
    di_api_fail(&e, 404, NULL, "not_found", "no route %s %.200s", method, url);
    return send_error(s, conn, &e);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    di_server *s = cls;
    conn_state *cs = *con_cls;
    if (!cs) {
        if (!(cs = calloc(1, sizeof *cs))) return MHD_NO;
        *con_cls = cs;
        /* a declared length over the limit is refused before the body is read */
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > s->o.max_body) {
            cs->too_big = cs->answered = true;
            di_api_error e;
            di_api_fail(&e, 413, NULL, "body_too_large", "the request body is over %zu bytes (--max-body)", s->o.max_body);
            return send_error(s, conn, &e);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!cs->too_big && cs->body.len + *upload_size <= s->o.max_body) di_str_putn(&cs->body, upload, *upload_size);
        else { cs->too_big = true; di_str_free(&cs->body); }
        *upload_size = 0;
        return MHD_YES;
    }
    if (cs->answered) return MHD_YES;
    cs->answered = true;
    return route(s, conn, url, method, cs);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode why)
{
    (void)cls; (void)conn; (void)why;
    conn_state *cs = *con_cls;
    if (!cs) return;
    di_str_free(&cs->body);
    free(cs);
    *con_cls = NULL;
}

/* ---- start and stop --------------------------------------------------------------------- */

static int listen_on(di_server *s, di_err *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", s->o.port);
    int g = getaddrinfo(s->o.host, port, &hints, &ai);
    if (g) return di_fail(err, DI_EUSAGE, "--host %s: %s", s->o.host, gai_strerror(g));
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->d = MHD_start_daemon(flags, (uint16_t)s->o.port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)(s->o.max_seqs + s->o.max_queue + 64),
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->d) return di_fail(err, DI_EUSAGE, "cannot listen on %s:%d (in use, or not an address of this machine)", s->o.host, s->o.port);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : s->o.port;
    return DI_OK;
}

int di_server_start(const di_server_opts *o, const di_tokenizer *tok, const di_chat_template *tmpl, di_server **out,
                    di_err *err)
{
    *out = NULL;
    di_server *s = calloc(1, sizeof *s);
    if (!s) return di_fail(err, DI_ENOMEM, "out of memory");
    s->o = *o;
    if (!s->o.host) s->o.host = "127.0.0.1";
    s->tok = tok;
    s->tmpl = tmpl;
    s->vocab = tok ? di_tokenizer_vocab_size(tok) : 0;   /* without a tokenizer: the model's, once loaded */
    s->created = (long)time(NULL);
    snprintf(s->model_id, sizeof s->model_id, "%s", o->model_name);
    int32_t cand[2] = {tok ? di_tokenizer_eos(tok) : -1, tok ? di_tokenizer_special(tok, "<|endoftext|>") : -1};
    for (int i = 0; i < 2; i++)
        if (cand[i] >= 0 && (s->n_stops == 0 || s->stops[0] != cand[i])) s->stops[s->n_stops++] = cand[i];
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->engine_cv, NULL);
    pthread_cond_init(&s->idle_cv, NULL);
    if (pthread_create(&s->engine_thread, NULL, engine_main, s)) { free(s); return di_fail(err, DI_ENOMEM, "cannot start the engine thread"); }
    pthread_mutex_lock(&s->mu);
    while (!s->ready) pthread_cond_wait(&s->engine_cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    int rc = s->start_rc;
    if (rc) *err = s->start_err;
    else rc = listen_on(s, err);
    if (rc) {
        pthread_mutex_lock(&s->mu);
        s->stop_engine = true;
        pthread_cond_broadcast(&s->engine_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->engine_thread, NULL);
        free(s);
        return rc;
    }
    *out = s;
    return DI_OK;
}

int di_server_port(const di_server *s) { return s->port; }
const di_receipt *di_server_receipt(const di_server *s) { return &s->receipt; }
const char *di_server_device(const di_server *s) { return s->device; }

void di_server_shutdown(di_server *s)
{
    /* no new connections; the ones open get 503 for new requests */
    MHD_socket ls = MHD_quiesce_daemon(s->d);
    if (ls != MHD_INVALID_SOCKET) close(ls);
    pthread_mutex_lock(&s->mu);
    s->draining = true;
    s->drain_deadline = now() + s->o.drain_s;
    pthread_cond_broadcast(&s->engine_cv);
    while (s->jobs_alive > 0) wait_ms(&s->idle_cv, &s->mu, 100);
    s->stop_engine = true;
    pthread_cond_broadcast(&s->engine_cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->engine_thread, NULL);
    MHD_stop_daemon(s->d);
    s->d = NULL;
}

void di_server_hurry(di_server *s)
{
    pthread_mutex_lock(&s->mu);
    s->drain_deadline = now();
    pthread_cond_broadcast(&s->engine_cv);
    pthread_mutex_unlock(&s->mu);
}

void di_server_free(di_server *s)
{
    if (!s) return;
    if (s->d) di_server_shutdown(s);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->engine_cv);
    pthread_cond_destroy(&s->idle_cv);
    free(s);
}
