/* The backend-neutral runtime: buffers, kernels (generated, compiled, cached), launches.
 * The model speaks only this API; whether a kernel runs on CPU workers (libtcc) or on the
 * GPU (NVRTC + driver) is chosen when the runtime is opened. A kernel is run the one way the
 * runtime knows: its lowering (codegen/lowering.h) gives the plan, the runtime carries it out. */
#ifndef DI_BACKEND_H
#define DI_BACKEND_H
#include <stdbool.h>
#include <stddef.h>
#include "codegen/codegen.h"
#include "codegen/lowering.h"
#include "runtime/cuda.h"
#include "base/err.h"

typedef struct di_rt di_rt;

/* Which compiler builds the C lowering for the CPU. Both give the same bits (the flags of
 * runtime/cc.h allow nothing that changes a rounding); cc is the faster code, libtcc the one
 * that is always there. DEFAULT: $DETINFER_CPU_COMPILER (tcc | cc | auto), else auto: cc where
 * a system C compiler works, libtcc otherwise and for any kernel cc fails on. */
typedef enum { DI_CPU_COMPILER_DEFAULT, DI_CPU_COMPILER_AUTO, DI_CPU_COMPILER_TCC, DI_CPU_COMPILER_CC } di_cpu_compiler;
bool di_cpu_compiler_parse(const char *name, di_cpu_compiler *out);   /* "tcc" | "cc" | "auto" */
const char *di_cpu_compiler_name(di_cpu_compiler c);

/* Called after each kernel the runtime compiles (a cache miss): its name, the compiler
 * ("cc", "libtcc", "nvrtc") and the seconds the compile took. */
typedef void (*di_compile_fn)(void *ctx, const char *kernel, const char *compiler, double seconds);

typedef struct di_rt_opts {
    di_backend_kind backend;
    di_profile profile;
    int threads;              /* CPU workers (C backend) */
    int device;               /* CUDA ordinal */
    int sm_count;             /* CUDA: blocks of a persistent grid; 0: the device's SM count (tests vary it) */
    const char *cache_dir;    /* NULL: from the environment (runtime/cache.h) */
    /* Dumps, on cache hits too. NULL: $DETINFER_DUMP_DIR for both. */
    const char *dump_src_dir; /* generated .c/.cu and compile logs */
    const char *dump_ptx_dir; /* GPU: the PTX and compile logs */
    di_cpu_compiler cpu_compiler;
    di_compile_fn on_compile; /* progress of the first compile; may be NULL */
    void *on_compile_ctx;
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

typedef struct di_rt_stats {
    long kernels_compiled, kernels_from_cache, launches;   /* launches: issued or recorded */
    long graphs_recorded, graph_nodes, graph_runs;
    double compile_seconds;   /* spent in compilers (cache misses only) */
} di_rt_stats;

int di_rt_open(const di_rt_opts *o, di_rt **out, di_err *err);
void di_rt_close(di_rt *rt);
di_backend_kind di_rt_backend(const di_rt *rt);
const di_target *di_rt_target(const di_rt *rt);
di_profile di_rt_profile(const di_rt *rt);
const char *di_rt_describe(const di_rt *rt);   /* "cpu (2 threads, cc ...)", "cuda NVIDIA H100 ... sm_90a" */
/* The CPU compiler kernels are built with (TCC or CC; DEFAULT on the GPU). */
di_cpu_compiler di_rt_cpu_compiler(const di_rt *rt);
di_rt_stats di_rt_get_stats(const di_rt *rt);
struct di_cache *di_rt_cache(di_rt *rt);

int di_buf_alloc(di_rt *rt, size_t bytes, di_buf **out, di_err *err);  /* zero-filled */
void di_buf_free(di_buf *b);
int di_buf_write(di_buf *b, size_t offset, const void *src, size_t bytes, di_err *err);
int di_buf_read(const di_buf *b, size_t offset, void *dst, size_t bytes, di_err *err);
/* The first `bytes` of src into dst (same runtime); asynchronous on the GPU, like a launch. */
int di_buf_copy(di_buf *dst, const di_buf *src, size_t bytes, di_err *err);

/* Generated, compiled (or taken from the cache) once per (spec, specialization); the
 * runtime's profile replaces p->profile. Dependencies of the kernel's lowering are built too. */
int di_rt_kernel(di_rt *rt, const di_spec *s, const di_specialization *p, di_kernel **out, di_err *err);
/* A kernels.def op at its default specialization with some dims set (the model's way in). */
typedef struct di_dim_value { const char *name; long value; } di_dim_value;
typedef struct di_arg_dtype { const char *arg; di_dtype dtype; } di_arg_dtype;   /* e.g. {"w", DI_Q4X8} */
int di_rt_op_kernel(di_rt *rt, di_op op, const di_dim_value *dims, int n, const di_arg_dtype *types, int ntypes,
                    di_kernel **out, di_err *err);
/* Whether that kernel can be generated here: its lowering on this runtime's target and profile
 * takes those dims and dtypes (nothing is compiled). */
bool di_rt_op_available(const di_rt *rt, di_op op, const di_dim_value *dims, int n, const di_arg_dtype *types,
                        int ntypes);
/* The KV cache block size (positions) the kv_write and attention kernels share (kernels.def). */
int di_rt_kv_block(void);
/* sizes: the spec's runtime sizes in SIZES order. Asynchronous on the GPU. */
int di_rt_launch(di_rt *rt, di_kernel *k, const di_val *args, const long *sizes, di_err *err);
int di_rt_sync(di_rt *rt, di_err *err);
/* Graphs. On the GPU a run of launches can be recorded once and replayed (CUDA graphs, stream
 * capture): a replay runs each kernel with the arguments, sizes and buffers it was recorded
 * with, so a caller changes what a replay computes only through buffer contents. Nothing is
 * allocated while recording: a launch whose kernel's workspace would grow fails (run it once
 * unrecorded first). A graph recorded before a workspace moved is stale and refuses to run.
 * The C backend has no graphs (a launch there is a function call). capture_end with out ==
 * NULL discards the recording (after a failed launch, say). */
typedef struct di_rt_graph di_rt_graph;
bool di_rt_has_graphs(const di_rt *rt);
int di_rt_capture_begin(di_rt *rt, di_err *err);
int di_rt_capture_end(di_rt *rt, di_rt_graph **out, di_err *err);
bool di_rt_graph_fresh(const di_rt *rt, const di_rt_graph *g);
int di_rt_graph_run(di_rt *rt, di_rt_graph *g, di_err *err);
void di_rt_graph_free(di_rt_graph *g);

/* The lowering a kernel runs by, and its plan for these sizes (for tests and benchmarks). */
const char *di_kernel_lowering(const di_kernel *k);
int di_rt_plan(di_rt *rt, const di_kernel *k, const long *sizes, di_plan *out, di_err *err);

/* The generated source of a kernel (for kgen and dumps); caller frees. The target is the
 * runtime's, or for b alone the default one (di_target_c, di_target_cuda_default). */
int di_rt_source(const di_spec *s, const di_specialization *p, di_backend_kind b, char **src, di_err *err);
int di_rt_source_for(const di_spec *s, const di_specialization *p, const di_target *t, char **src, di_err *err);
/* NVRTC options for a profile and arch, in order; returns the count. opts[0] points into a
 * static buffer that the next call overwrites. */
int di_nvrtc_options(di_profile profile, const char *arch, const char **opts, int max);

#endif
