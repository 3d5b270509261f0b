/* Lowering a spec + specialization to source: CUDA C for NVRTC, C for libtcc.
 * Both come from one lowering per class; the backends differ only in a prelude of macros
 * (how threads loop, what is shared, how blocks are numbered) and the entry wrapper, so
 * each output's reduction order is the same text on both. Nothing here knows a model, and
 * nothing here is mutable: a source and a plan are functions of their arguments
 * (codegen/lowering.h says what a lowering is). */
#ifndef DI_CODEGEN_H
#define DI_CODEGEN_H
#include "dsl/dsl.h"
#include "base/err.h"
#include "base/strbuf.h"

/* Bump when generated text changes meaning without changing bytes (never, ideally). */
#define DI_CODEGEN_SCHEMA "detinfer-codegen-1"

typedef enum { DI_BACKEND_C, DI_BACKEND_CUDA } di_backend_kind;

/* The fast matmul's schedule (schedules.def has the rows and says what each field may change).
 * Only ints, so that the struct has no padding: schedules are compared and hashed as bytes. */
typedef struct di_mm_schedule {
    int tm, tn, bk, stages;   /* block tile rows x cols, k tile, pipeline depth */
    int warps_m, warps_n;     /* consumer warp grid; a warp owns (tm/warps_m) x (tn/warps_n) outputs */
    int ks_units;             /* K split size: the power of two giving a one-row batch ~ks_units units, */
    int ks_min, ks_max;       /* clamped to [ks_min, ks_max] */
    int fuse_min_tiles;       /* fused when tiles >= this and rows >= fuse_min_rows; 0: never fuse */
    int fuse_min_rows;
    int group_m;              /* block raster: this many row tiles side by side (L2 reuse) */
    int wgmma;                /* 1: sm_90a wgmma main loop (tm 64 or 128, warps (tm/16) x 1, bk 64) */
    int producers;            /* warps that only load, handing stages over by mbarrier; wgmma only */
    int tma;                  /* 1: with bf16 x and K % 8 == 0, producers load by TMA */
    int wide_tn, wide_stages; /* single-split TMA kernels: tn and stages instead (0: the same tile) */
    int few_rows, few_stages; /* packed w, launches of at most few_rows rows (8..32; 0: none): the
                                 swapped tile (outputs as wgmma's M) with few_stages stages */
    int split_cluster;        /* split mode with 2..split_cluster splits (at most 8; 0: never), one
                                 block per unit: a tile's splits run as one thread-block cluster and
                                 add their partials in split order through distributed shared
                                 memory, no second kernel (sm_90) */
} di_mm_schedule;

/* The fast attention's schedule (ints only, as above). */
typedef struct di_att_schedule {
    int warps, merge_threads; /* phase 1 warps per block (an m16 tile of query vectors each), phase 2 threads */
    int split_max_rows;       /* split mode for at most this many rows ... */
    int workspace_cap_mib;    /* ... whose per-split results fit this many MiB */
    int mode;                 /* 0: per launch as above; 1: always fold; 2: always split */
} di_att_schedule;

/* Compile-time choices for one spec: its dims' values and its arguments' dtypes. */
typedef struct di_specialization {
    long dims[DI_MAX_DIMS];        /* in the spec's dim order */
    di_dtype dtypes[DI_MAX_ARGS];  /* in the spec's argument order */
    di_profile profile;
    /* Vendor profile, matmul only: K is cut into this many chunks of ceil(K / ksplits) instead
     * of the spec's fixed SPLIT. A split *count* is exactly what the one rule forbids (the
     * count follows the row count, so a row's order follows the batch); it exists so that the
     * vendor profile can reproduce what engines do, and di_specialization_check rejects it in
     * every other profile. 0: the spec's schedule. */
    int ksplits;
    /* Vendor profile, attention only (the GPU's tensor-core attention): keys in splits of this
     * many positions instead of the spec's fixed SPLIT, chosen per launch from the row count as
     * engines choose a split-KV count from the batch. Rejected in every other profile. 0: the
     * spec's schedule. */
    int kv_split;
    /* Fast profile: the tensor-core schedule. All zero: the target's row of schedules.def.
     * A schedule that differs from that row names the kernel (di_kernel_name). */
    di_mm_schedule mm;
    di_att_schedule att;
} di_specialization;

void di_spec_defaults(const di_spec *s, di_specialization *p);
int di_spec_set_dim(const di_spec *s, di_specialization *p, const char *dim, long value, di_err *err);
int di_spec_set_dtype(const di_spec *s, di_specialization *p, const char *arg, di_dtype t, di_err *err);
long di_spec_dim(const di_spec *s, const di_specialization *p, const char *dim); /* -1 if absent */
int di_spec_arg(const di_spec *s, const char *name);                               /* -1 if absent */
int di_specialization_check(const di_spec *s, const di_specialization *p, di_err *err);

/* Integer constant expressions over dims ("(NH + NKV) * (HD / 2)"). */
int di_eval_expr(const di_spec *s, const di_specialization *p, const char *expr, long *out, di_err *err);
/* Elements per row of a row-sliced argument ("rows, NH + 2 * NKV, HD" -> (NH + 2 NKV) HD); 0 for
 * an argument that is not row-sliced. */
int di_arg_row_elems(const di_spec *s, const di_specialization *p, int arg, long *out, di_err *err);

/* Backend pieces (codegen/c.c, codegen/cuda.c, codegen/prelude.c). */
void di_prelude_c(di_str *out);
void di_prelude_cuda(di_str *out);
extern const char di_prelude_math[];

#endif
