/* The CPU pool. Blocks are independent (each output belongs to exactly one block, pool.h), so
 * which thread runs a block, and when, changes no result; that leaves two things to make fast:
 *
 *   - Claiming, not sharing out: threads take small runs of blocks from one counter, so a
 *     worker the OS has not scheduled yet delays nothing (the caller takes its blocks too).
 *     A decode step is hundreds of short launches; on a busy machine a fixed share per thread
 *     made every launch wait for the slowest thread to be woken.
 *   - Spinning before sleeping: between launches a worker polls for the next job for a short
 *     while (about SPIN_NS) before it sleeps on the condition variable, and the caller polls
 *     for completion, so a launch costs no futex round trip while a step runs.
 *
 * A job's generation and its claim counter are one 64-bit word: (generation << 32) | next
 * block. A worker copies the job (under the mutex, with the generation it was written for)
 * and claims with a compare-and-swap on that word, so it can claim blocks only of the job
 * whose copy it holds, and each block is claimed exactly once. */
#define _GNU_SOURCE
#include "runtime/pool.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

enum { SPIN_NS = 200 * 1000 };   /* how long an idle thread polls before it sleeps */

typedef struct job {
    uint64_t gen;
    di_block_fn fn;
    long nblocks, gx, chunk;
    void **argv;
} job;

struct di_pool {
    int n;                      /* threads, the caller included */
    pthread_t *tid;
    pthread_mutex_t mu;
    pthread_cond_t go;
    int sleepers;               /* workers waiting on go (under mu) */
    atomic_bool quit;
    job job;                    /* under mu; written before its generation is published */
    _Atomic uint64_t claim;     /* (generation << 32) | next unclaimed block */
    atomic_long done;           /* blocks of the current job finished */
};

typedef struct { di_pool *p; int index; } worker_arg;

static uint64_t gen_of(uint64_t c) { return c >> 32; }
static long next_of(uint64_t c) { return (long)(c & 0xffffffffu); }

static long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Claims and runs runs of blocks of job j until none are left. */
static void work(di_pool *p, const job *j)
{
    uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
    while (gen_of(c) == j->gen && next_of(c) < j->nblocks) {
        long b0 = next_of(c), b1 = b0 + j->chunk < j->nblocks ? b0 + j->chunk : j->nblocks;
        uint64_t want = (j->gen << 32) | (uint64_t)b1;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &c, want, memory_order_acq_rel, memory_order_acquire))
            continue;
        j->fn(b0, b1, j->gx, j->argv);
        atomic_fetch_add_explicit(&p->done, b1 - b0, memory_order_release);
        c = atomic_load_explicit(&p->claim, memory_order_acquire);
    }
}

static void *worker(void *arg)
{
    worker_arg *wa = arg;
    di_pool *p = wa->p;
    free(wa);
    uint64_t seen = 0;
    for (;;) {
        /* poll for a new generation for a while, then sleep until the caller signals */
        uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
        long t0 = now_ns();
        for (int i = 0; gen_of(c) == seen && !atomic_load(&p->quit); i++) {
            relax();
            if ((i & 255) == 255 && now_ns() - t0 > SPIN_NS) {
                pthread_mutex_lock(&p->mu);
                p->sleepers++;
                while (gen_of(atomic_load(&p->claim)) == seen && !atomic_load(&p->quit))
                    pthread_cond_wait(&p->go, &p->mu);
                p->sleepers--;
                pthread_mutex_unlock(&p->mu);
                t0 = now_ns();
            }
            c = atomic_load_explicit(&p->claim, memory_order_acquire);
        }
        if (atomic_load(&p->quit)) break;
        seen = gen_of(c);
        pthread_mutex_lock(&p->mu);
        job j = p->job;
        pthread_mutex_unlock(&p->mu);
        if (j.gen == seen) work(p, &j);   /* else the job is over and another began: poll again */
    }
    return NULL;
}

di_pool *di_pool_new(int threads)
{
    di_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = threads < 1 ? 1 : threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    atomic_init(&p->claim, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->quit, false);
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
    atomic_store(&p->quit, true);
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int w = 1; w < p->n; w++) pthread_join(p->tid[w], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    free(p->tid);
    free(p);
}

int di_pool_threads(const di_pool *p) { return p->n; }

void di_pool_run(di_pool *p, di_block_fn fn, long nblocks, long gx, void **argv)
{
    if (nblocks <= 0) return;
    if (p->n == 1 || nblocks == 1) { fn(0, nblocks, gx, argv); return; }
    /* runs of about an eighth of a thread's share: small enough to even out, large enough
     * that the counter is not contended */
    long chunk = nblocks / (8L * p->n);
    job j = {gen_of(atomic_load(&p->claim)) + 1, fn, nblocks, gx, chunk < 1 ? 1 : chunk, argv};
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    p->job = j;
    atomic_store_explicit(&p->claim, j.gen << 32, memory_order_release);
    if (p->sleepers) pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    work(p, &j);
    /* the blocks still running on other threads: poll, yielding the CPU now and then */
    for (int i = 0; atomic_load_explicit(&p->done, memory_order_acquire) < nblocks; i++) {
        relax();
        if ((i & 1023) == 1023) sched_yield();
    }
}
