/* Lowering a spec + specialization to source: CUDA C for NVRTC, C for libtcc.
 * Both come from one lowering per class; the backends differ only in a prelude of macros
 * (how threads loop, what is shared, how blocks are numbered) and the entry wrapper, so
 * each output's reduction order is the same text on both. Nothing here knows a model. */
#ifndef DI_CODEGEN_H
#define DI_CODEGEN_H
#include "dsl/dsl.h"
#include "base/err.h"
#include "base/strbuf.h"

/* Bump when generated text changes meaning without changing bytes (never, ideally). */
#define DI_CODEGEN_SCHEMA "detinfer-codegen-1"

typedef enum { DI_BACKEND_C, DI_BACKEND_CUDA } di_backend_kind;
/* exact: CPU == GPU bit for bit. fast: tensor cores, invariant on one GPU. vendor: what engines
 * do today (split counts and library GEMMs chosen from the batch); not invariant, it exists to
 * measure against and as the negative control of every invariance test. */
typedef enum { DI_PROFILE_EXACT, DI_PROFILE_FAST, DI_PROFILE_VENDOR } di_profile;

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
} di_specialization;

const char *di_profile_name(di_profile p);   /* "exact", "fast", "vendor" */

/* The vendor profile's split-K policy, as engines pick it: few rows leave most of the machine
 * idle, so K is split more (8 splits for <= 4 rows, 4 for <= 32, 2 for <= 128, else 1).
 * di_vendor_ksplit_choices lists every count the policy can return, largest first. */
int di_vendor_matmul_ksplits(long rows);
int di_vendor_ksplit_choices(const int **counts);
/* The vendor profile's split-KV policy on the GPU: few rows, small splits (more of them, to
 * fill the machine): 16 positions for <= 8 rows, 32 for <= 64, else 64. The choices, smallest
 * first, from di_vendor_kv_split_choices. */
int di_vendor_attention_kv_split(long rows);
int di_vendor_kv_split_choices(const int **sizes);

void di_spec_defaults(const di_spec *s, di_specialization *p);
int di_spec_set_dim(const di_spec *s, di_specialization *p, const char *dim, long value, di_err *err);
int di_spec_set_dtype(const di_spec *s, di_specialization *p, const char *arg, di_dtype t, di_err *err);
long di_spec_dim(const di_spec *s, const di_specialization *p, const char *dim); /* -1 if absent */
int di_specialization_check(const di_spec *s, const di_specialization *p, di_err *err);

/* Entry symbol, from spec + specialization only, e.g. "matmul__K576_N1536". */
void di_kernel_name(const di_spec *s, const di_specialization *p, char *buf, size_t len);

/* Appends the complete translation unit to out. Exact on both backends; fast on CUDA only;
 * vendor on both (the class lowerings, with a matmul's K split count when ksplits is set;
 * its GPU matmul is normally cuBLASLt, chosen in the runtime, not generated). */
int di_codegen(const di_spec *s, const di_specialization *p, di_backend_kind b, di_str *out, di_err *err);

/* Launch shape from runtime sizes (in the spec's SIZES order). For the C backend the
 * blocks grid[0] * grid[1] are run by the CPU pool; block[] is unused there. */
typedef struct di_geometry { unsigned grid[3], block[3]; unsigned smem; } di_geometry;
int di_geometry_for(const di_spec *s, const di_specialization *p, di_backend_kind b, const long *sizes,
                    di_geometry *g, di_err *err);

/* Integer constant expressions over dims ("(NH + NKV) * (HD / 2)"). */
int di_eval_expr(const di_spec *s, const di_specialization *p, const char *expr, long *out, di_err *err);

/* Backend pieces (codegen/c.c, codegen/cuda.c). */
void di_prelude_c(di_str *out);
void di_prelude_cuda(di_str *out);
extern const char di_prelude_math[];

#endif
