#include "runtime/pool.h"
#include <pthread.h>
#include <stdlib.h>

struct di_pool {
    int n;                      /* workers, the caller included */
    pthread_t *tid;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    long generation;            /* bumped per job */
    int pending;                /* workers still running the current job */
    int quit;
    di_block_fn fn;
    long nblocks, gx;
    void **argv;
};

typedef struct { di_pool *p; int index; } worker_arg;

static void run_share(di_pool *p, int w)
{
    long b0 = p->nblocks * w / p->n, b1 = p->nblocks * (w + 1) / p->n;
    if (b0 < b1) p->fn(b0, b1, p->gx, p->argv);
}

static void *worker(void *arg)
{
    worker_arg *wa = arg;
    di_pool *p = wa->p;
    int w = wa->index;
    free(wa);
    long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->generation == seen) pthread_cond_wait(&p->go, &p->mu);
        if (p->quit) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_share(p, w);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

di_pool *di_pool_new(int threads)
{
    di_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = threads < 1 ? 1 : threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    p->tid = calloc((size_t)p->n, sizeof *p->tid);
    for (int w = 1; w < p->n; w++) {
        worker_arg *wa = malloc(sizeof *wa);
        wa->p = p;
        wa->index = w;
        if (pthread_create(&p->tid[w], NULL, worker, wa)) {
            free(wa);
            p->n = w;   /* run with the workers we have */
            break;
        }
    }
    return p;
}

void di_pool_free(di_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int w = 1; w < p->n; w++) pthread_join(p->tid[w], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->tid);
    free(p);
}

int di_pool_threads(const di_pool *p) { return p->n; }

void di_pool_run(di_pool *p, di_block_fn fn, long nblocks, long gx, void **argv)
{
    if (nblocks <= 0) return;
    if (p->n == 1 || nblocks == 1) { fn(0, nblocks, gx, argv); return; }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->nblocks = nblocks;
    p->gx = gx;
    p->argv = argv;
    p->pending = p->n - 1;
    p->generation++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    run_share(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
