/* The backend-neutral runtime: buffers, kernels (generated, compiled, cached), launches.
 * The model speaks only this API; whether a kernel runs on CPU workers (libtcc) or on the
 * GPU (NVRTC + driver) is chosen when the runtime is opened. */
#ifndef DI_BACKEND_H
#define DI_BACKEND_H
#include <stdbool.h>
#include <stddef.h>
#include "codegen/codegen.h"
#include "runtime/cuda.h"
#include "base/err.h"

typedef struct di_rt di_rt;

typedef struct di_rt_opts {
    di_backend_kind backend;
    di_profile profile;
    int threads;              /* CPU workers (C backend) */
    int device;               /* CUDA ordinal */
    const char *cache_dir;    /* NULL: from the environment (runtime/cache.h) */
    const char *dump_dir;     /* NULL: $DETINFER_DUMP_DIR; writes .c/.cu, .ptx, .log per kernel, on hits too */
} di_rt_opts;

typedef struct di_buf {
    di_rt *rt;
    size_t bytes;
    void *host;               /* C backend: the data */
    di_dptr dev;              /* CUDA backend: the data */
} di_buf;

/* One launch argument, in the spec's argument order. */
typedef union di_val { di_buf *buf; float f32; int i32; } di_val;

typedef struct di_kernel di_kernel;

typedef struct di_rt_stats { long kernels_compiled, kernels_from_cache, launches; } di_rt_stats;

int di_rt_open(const di_rt_opts *o, di_rt **out, di_err *err);
void di_rt_close(di_rt *rt);
di_backend_kind di_rt_backend(const di_rt *rt);
const char *di_rt_describe(const di_rt *rt);   /* "cpu (2 threads)", "cuda NVIDIA H100 ... sm_90a" */
di_rt_stats di_rt_get_stats(const di_rt *rt);
struct di_cache *di_rt_cache(di_rt *rt);

int di_buf_alloc(di_rt *rt, size_t bytes, di_buf **out, di_err *err);  /* zero-filled */
void di_buf_free(di_buf *b);
int di_buf_write(di_buf *b, size_t offset, const void *src, size_t bytes, di_err *err);
int di_buf_read(const di_buf *b, size_t offset, void *dst, size_t bytes, di_err *err);

/* Generated, compiled (or taken from the cache) once per (spec, specialization). */
int di_rt_kernel(di_rt *rt, const di_spec *s, const di_specialization *p, di_kernel **out, di_err *err);
/* sizes: the spec's runtime sizes in SIZES order. Asynchronous on the GPU. */
int di_rt_launch(di_rt *rt, di_kernel *k, const di_val *args, const long *sizes, di_err *err);
int di_rt_sync(di_rt *rt, di_err *err);

/* The generated source of a kernel (for kgen and dumps); caller frees. */
int di_rt_source(const di_spec *s, const di_specialization *p, di_backend_kind b, char **src, di_err *err);
/* NVRTC options for a profile and arch, in order; returns the count. */
int di_nvrtc_options(di_profile profile, const char *arch, const char **opts, int max);

#endif
