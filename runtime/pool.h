/* A fixed pthread pool that runs a kernel's blocks. Blocks are independent (each output
 * belongs to exactly one block), so how they are spread over threads changes no result. */
#ifndef DI_POOL_H
#define DI_POOL_H

typedef void (*di_block_fn)(long b0, long b1, long gx, void **argv);
typedef struct di_pool di_pool;

di_pool *di_pool_new(int threads);   /* threads <= 1: everything runs on the caller */
void di_pool_free(di_pool *p);
int di_pool_threads(const di_pool *p);
/* Runs blocks [0, nblocks) of fn, in ranges of consecutive blocks, each block once; returns
 * when all are done. Consecutive blocks tend to run one after the other on one thread. */
void di_pool_run(di_pool *p, di_block_fn fn, long nblocks, long gx, void **argv);

#endif
