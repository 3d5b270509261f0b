/* The CPU pool. Blocks are independent (each output belongs to exactly one block, pool.h), so
 * which thread runs a block, and when, changes no result; that leaves two things to make fast:
 *
 *   - Claiming, not sharing out: the blocks are cut into one contiguous region per thread,
 *     each with its own counter; a thread takes small runs of blocks from its own region, in
 *     order, then from the others' (from the next region on), so a worker the OS has not
 *     scheduled yet delays nothing (the caller takes its blocks too). A decode step is hundreds
 *     of short launches; on a busy machine a fixed share per thread made every launch wait for
 *     the slowest thread to be woken. Regions, not one counter for all, because a thread that
 *     walks one stretch of a matrix keeps its weight stream sequential (the prefetches ahead
 *     land in its own next blocks): with the runs of two threads interleaved a SmolLM2 gate/up
 *     matmul took 56 us instead of 47 (Zen 5, 2 threads, one row).
 *   - Spinning before sleeping: between launches a worker polls for the next job for a short
 *     while (about SPIN_NS) before it sleeps on the condition variable, and the caller polls
 *     for completion, so a launch costs no futex round trip while a step runs.
 *
 * A job's generation and a region's claim counter are one 64-bit word: (generation << 32) |
 * next block. A worker copies the job (under the mutex, with the generation it was written for)
 * and claims with a compare-and-swap on that word, so it can claim blocks only of the job
 * whose copy it holds, and each block is claimed exactly once. Region 0's word is also how a
 * worker learns that a new job began. */
#define _GNU_SOURCE
#include "runtime/pool.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { SPIN_NS = 200 * 1000 };   /* how long an idle thread polls before it sleeps */
enum { MAX_REGIONS = 64 };       /* threads beyond this share the regions */

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
    int regions;                /* min(n, MAX_REGIONS) */
    struct { _Alignas(64) _Atomic uint64_t word; } claim[MAX_REGIONS];   /* per region, a cache line
                                 each: (generation << 32) | next unclaimed block */
    atomic_long done;           /* blocks of the current job finished */
};

typedef struct { di_pool *p; int index; } worker_arg;

/* Region r of a job's blocks: [region_start(r), region_start(r + 1)). */
static long region_start(const di_pool *p, const job *j, int r) { return j->nblocks * r / p->regions; }

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

/* Claims and runs runs of blocks of region r of job j until none are left there. */
static void work_region(di_pool *p, const job *j, int r)
{
    const long end = region_start(p, j, r + 1);
    _Atomic uint64_t *claim = &p->claim[r].word;
    uint64_t c = atomic_load_explicit(claim, memory_order_acquire);
    while (gen_of(c) == j->gen && next_of(c) < end) {
        long b0 = next_of(c), b1 = b0 + j->chunk < end ? b0 + j->chunk : end;
        uint64_t want = (j->gen << 32) | (uint64_t)b1;
        if (!atomic_compare_exchange_weak_explicit(claim, &c, want, memory_order_acq_rel, memory_order_acquire))
            continue;
        j->fn(b0, b1, j->gx, j->argv);
        atomic_fetch_add_explicit(&p->done, b1 - b0, memory_order_release);
        c = atomic_load_explicit(claim, memory_order_acquire);
    }
}

/* Thread t's own region first, then the others' in turn. */
static void work(di_pool *p, const job *j, int t)
{
    for (int i = 0; i < p->regions; i++) work_region(p, j, (t + i) % p->regions);
}

static void *worker(void *arg)
{
    worker_arg *wa = arg;
    di_pool *p = wa->p;
    const int t = wa->index;
    free(wa);
    uint64_t seen = 0;
    for (;;) {
        /* poll for a new generation for a while, then sleep until the caller signals */
        uint64_t c = atomic_load_explicit(&p->claim[0].word, memory_order_acquire);
        long t0 = now_ns();
        for (int i = 0; gen_of(c) == seen && !atomic_load(&p->quit); i++) {
            relax();
            if ((i & 255) == 255 && now_ns() - t0 > SPIN_NS) {
                pthread_mutex_lock(&p->mu);
                p->sleepers++;
                while (gen_of(atomic_load(&p->claim[0].word)) == seen && !atomic_load(&p->quit))
                    pthread_cond_wait(&p->go, &p->mu);
                p->sleepers--;
                pthread_mutex_unlock(&p->mu);
                t0 = now_ns();
            }
            c = atomic_load_explicit(&p->claim[0].word, memory_order_acquire);
        }
        if (atomic_load(&p->quit)) break;
        seen = gen_of(c);
        pthread_mutex_lock(&p->mu);
        job j = p->job;
        pthread_mutex_unlock(&p->mu);
        if (j.gen == seen) work(p, &j, t);   /* else the job is over and another began: poll again */
    }
    return NULL;
}

di_pool *di_pool_new(int threads)
{
    di_pool *p = aligned_alloc(_Alignof(di_pool), sizeof *p);   /* a struct's size is a multiple of its alignment */
    if (!p) return NULL;
    memset(p, 0, sizeof *p);
    p->n = threads < 1 ? 1 : threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    p->regions = p->n < MAX_REGIONS ? p->n : MAX_REGIONS;
    for (int r = 0; r < MAX_REGIONS; r++) atomic_init(&p->claim[r].word, 0);
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
     * that the counters are not contended */
    long chunk = nblocks / (8L * p->n);
    job j = {gen_of(atomic_load(&p->claim[0].word)) + 1, fn, nblocks, gx, chunk < 1 ? 1 : chunk, argv};
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    p->job = j;
    /* region 0 last: it publishes the job to the workers, whose other regions are ready */
    for (int r = p->regions - 1; r >= 0; r--)
        atomic_store_explicit(&p->claim[r].word, j.gen << 32 | (uint64_t)region_start(p, &j, r), memory_order_release);
    if (p->sleepers) pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    work(p, &j, 0);
    /* the blocks still running on other threads: poll, yielding the CPU now and then */
    for (int i = 0; atomic_load_explicit(&p->done, memory_order_acquire) < nblocks; i++) {
        relax();
        if ((i & 1023) == 1023) sched_yield();
    }
}
