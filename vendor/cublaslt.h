/* cuBLASLt through dlopen (libcublasLt.so.13, .12, then .so): the vendor profile's GPU matmul
 * and perf/bench_matmul's reference column. No cuBLAS headers: the few types, enum values and
 * entry points used are declared in cublaslt.c, so this builds and runs without CUDA.
 *
 * What it computes, row-major: y[m, n] = x[m, k] . w[n, k]^T (+ c[m, n]), x and w bf16, FP32
 * compute; y (and c) f32 or bf16. A plan is made for one m: cuBLASLt's heuristic picks the
 * algorithm (tile, split-K count, reduction scheme) from the whole shape, m included. That
 * choice is what makes a row's bits depend on the batch: it is the non-invariant reference,
 * never used by the exact or fast profiles. */
#ifndef DI_CUBLASLT_H
#define DI_CUBLASLT_H
#include <stdbool.h>
#include <stddef.h>
#include "dsl/dsl.h"
#include "runtime/cuda.h"
#include "base/err.h"

typedef struct di_cublaslt di_cublaslt;
typedef struct di_cublaslt_plan di_cublaslt_plan;

/* dlopen and cublasLtCreate. The caller makes the CUDA context current first (cuBLASLt uses
 * the calling thread's current context). DI_ENODEV with the reason when it cannot. */
int di_cublaslt_open(di_cublaslt **out, di_err *err);
void di_cublaslt_close(di_cublaslt *lt);
size_t di_cublaslt_version(const di_cublaslt *lt);   /* cublasLtGetVersion: 130000 for 13.0.0 */

/* The heuristic's best algorithm for this shape, within `workspace` bytes. y_type is DI_F32
 * or DI_BF16; c (when given at run time) has y's type and layout. */
int di_cublaslt_plan_new(di_cublaslt *lt, long m, long k, long n, di_dtype y_type, size_t workspace,
                         di_cublaslt_plan **out, di_err *err);
void di_cublaslt_plan_free(di_cublaslt_plan *p);
long di_cublaslt_plan_m(const di_cublaslt_plan *p);

/* What the heuristic chose (for reports and tests): -1 where the library would not say. */
typedef struct di_cublaslt_algo {
    int id;              /* CUBLASLT_ALGO_CONFIG_ID */
    int tile;            /* CUBLASLT_ALGO_CONFIG_TILE_ID */
    int splitk;          /* CUBLASLT_ALGO_CONFIG_SPLITK_NUM: K splits summed by the reduction scheme */
    int reduction;       /* CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME */
    int stages;          /* CUBLASLT_ALGO_CONFIG_STAGES_ID */
    size_t workspace;    /* bytes the algorithm needs */
} di_cublaslt_algo;
void di_cublaslt_plan_algo(const di_cublaslt *lt, const di_cublaslt_plan *p, di_cublaslt_algo *out);

/* Enqueues the matmul on `stream` (a CUstream; NULL: the legacy default stream). c == 0:
 * beta = 0; otherwise beta = 1 and c is added after the product (c may equal y: in place). */
int di_cublaslt_matmul(di_cublaslt *lt, const di_cublaslt_plan *p, di_dptr y, di_dptr x, di_dptr w, di_dptr c,
                       di_dptr workspace, size_t workspace_bytes, void *stream, di_err *err);

#endif
