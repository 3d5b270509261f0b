/* The CPU pool runs every block of a job exactly once, whatever the thread count, the block
 * count (fewer blocks than threads, more threads than regions), the grid's width or how many
 * jobs came before:
 * each block's function adds one to its counter, and after each job every counter is 1. */
#include <criterion/criterion.h>
#include "runtime/pool.h"
#include <stdatomic.h>
#include <stdlib.h>

typedef struct { atomic_int *hits; long gx; atomic_int wrong_gx; } count_args;

/* Runs on the pool's threads, so it asserts nothing itself. */
static void count_blocks(long b0, long b1, long gx, void **argv)
{
    count_args *a = argv[0];
    if (gx != a->gx) atomic_fetch_add(&a->wrong_gx, 1);
    for (long b = b0; b < b1; b++) atomic_fetch_add(&a->hits[b], 1);
}

static void check_pool(int threads)
{
    static const long BLOCKS[] = {1, 2, 3, 5, 7, 16, 63, 64, 65, 96, 1000, 4097};
    di_pool *p = di_pool_new(threads);
    cr_assert_not_null(p);
    for (int round = 0; round < 40; round++)
        for (size_t i = 0; i < sizeof BLOCKS / sizeof BLOCKS[0]; i++) {
            long n = BLOCKS[i];
            /* gx is only passed through: one row of blocks, gx dividing n, gx not dividing n */
            const long gxs[] = {n, n % 4 == 0 ? n / 4 : 1, n % 7 + 1};
            for (int g = 0; g < 3; g++) {
                atomic_int *hits = calloc((size_t)n, sizeof *hits);
                count_args a = {hits, gxs[g], 0};
                void *argv[] = {&a};
                di_pool_run(p, count_blocks, n, a.gx, argv);
                cr_assert_eq(atomic_load(&a.wrong_gx), 0);
                for (long b = 0; b < n; b++)
                    cr_assert_eq(atomic_load(&hits[b]), 1, "%d threads, %ld blocks, gx %ld (round %d): block %ld ran %d times",
                                 threads, n, gxs[g], round, b, atomic_load(&hits[b]));
                free(hits);
            }
        }
    di_pool_free(p);
}

Test(pool, every_block_once_1_thread) { check_pool(1); }
Test(pool, every_block_once_2_threads) { check_pool(2); }
Test(pool, every_block_once_3_threads) { check_pool(3); }
Test(pool, every_block_once_more_threads_than_regions, .timeout = 120) { check_pool(70); }
