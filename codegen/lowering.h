/* What a lowering is. Every way of running a spec (the class lowerings of lower.c, the fast
 * matmul and attention, the vendor profile's paths) is one value of this type, and the runtime
 * knows no other: it asks a lowering for its source (emit), the kernels it runs besides its own
 * (deps) and, per launch, its plan, and it runs the plan.
 *
 * Everything that can change a result bit is an argument: the spec (its schedule pinned in
 * kernels.def), the specialization (dims, dtypes, profile, the fast schedule by value) and the
 * target. emit() sees no runtime size, so a kernel's source, and with it every reduction order,
 * cannot follow the row count; plan() sees the sizes and may change only grids, which blocks
 * run, how big the workspace is and where a split sum is done (the vendor profile's lowerings
 * are the exception on purpose: they choose a dependency from the rows). */
#ifndef DI_LOWERING_H
#define DI_LOWERING_H
#include <stdbool.h>
#include <stddef.h>
#include "codegen/codegen.h"

/* Where kernels run. Read from the device by the runtime; a plain value everywhere else. */
typedef struct di_target {
    di_backend_kind backend;
    char arch[16];            /* CUDA: "sm_90a", "sm_80", ...; "" on the C backend */
    int sm_count;             /* CUDA: blocks of a persistent grid (changes grids only) */
    bool cublaslt;            /* the vendor profile's library GEMM is loaded */
} di_target;

/* The CUDA target kgen and the compile-only tests use (the H200's). */
di_target di_target_cuda_default(void);
di_target di_target_c(void);

enum { DI_MAX_ENTRIES = 6, DI_MAX_DEPS = 4, DI_MAX_LAUNCHES = 4, DI_MAX_PARAMS = DI_MAX_ARGS + DI_MAX_SIZES + 4 };

/* A kernel entry's parameter, as the generated code declares it. */
typedef enum { DI_P_PTR, DI_P_F32, DI_P_I32, DI_P_LONG, DI_P_TMAP } di_param;

typedef struct di_entry {
    char name[256];
    int nparams;
    di_param params[DI_MAX_PARAMS];
} di_entry;

/* A kernel this one runs, built by the runtime through its own lowering. */
typedef struct di_dep {
    const di_spec *spec;
    di_specialization sp;
} di_dep;

/* One argument of a planned launch. */
typedef enum {
    DI_A_ARG,     /* the launch's argument `index` (a buffer or a scalar, in the spec's order) */
    DI_A_SIZE,    /* the launch's runtime size `index` (SIZES order) */
    DI_A_WS,      /* the kernel's workspace from byte `offset` */
    DI_A_LONG,    /* a constant */
    DI_A_TMAP,    /* a TMA descriptor of argument `index`: bf16 [rows][cols] in box_rows x box_cols boxes */
} di_arg_kind;

typedef struct di_pa {
    di_arg_kind kind;
    int index;
    size_t offset;
    long value;
    unsigned long rows, cols;
    unsigned box_rows, box_cols;
} di_pa;

typedef enum {
    DI_RUN_ENTRY,    /* entry `index` of the lowering's own source, on grid x block */
    DI_RUN_DEP,      /* dependency `index`: args are its spec's arguments, then its sizes */
    DI_RUN_CUBLASLT, /* the library GEMM: y, x, w, res (DI_A_LONG 0: none), M, then K, N, y is bf16 */
} di_run;

typedef struct di_launch {
    di_run run;
    int index;
    unsigned grid[3], block[3], smem;   /* DI_RUN_ENTRY; on the C backend grid[0] * grid[1] blocks, gx = grid[0] */
    unsigned cluster;                   /* CUDA: > 1, blocks in clusters of this many along grid x */
    int nargs;
    di_pa args[DI_MAX_PARAMS];
} di_launch;

typedef struct di_plan {
    size_t workspace;          /* bytes of the kernel's workspace the launches use */
    int n;
    di_launch l[DI_MAX_LAUNCHES];
} di_plan;

enum { DI_CUBLASLT_ARGS = 8 };

typedef struct di_lowering {
    const char *name;
    bool (*applies)(const di_spec *s, const di_specialization *p, const di_target *t);
    /* The kernel bodies after the common frame (di_codegen writes the frame); may write nothing. */
    int (*emit)(di_str *o, const di_spec *s, const di_specialization *p, const di_target *t, const char *name,
                di_err *err);
    /* The entries emit() defines, with their parameters; 0 when the plan runs dependencies only. */
    int (*entries)(const di_spec *s, const di_specialization *p, const di_target *t, di_entry *out, di_err *err);
    int (*deps)(const di_spec *s, const di_specialization *p, const di_target *t, di_dep *out, di_err *err);
    /* The launches for these runtime sizes (SIZES order), in order. */
    int (*plan)(const di_spec *s, const di_specialization *p, const di_target *t, const long *sizes, di_plan *out,
                di_err *err);
} di_lowering;

/* The lowering that runs (s, p) on t: the first in a fixed list whose applies() says yes
 * (vendor paths, fast paths, then the class lowering, which applies to everything). */
const di_lowering *di_lowering_for(const di_spec *s, const di_specialization *p, const di_target *t);

/* The lowerings, each in its own file. */
extern const di_lowering di_lowering_class;            /* lower.c: every class, both backends */
extern const di_lowering di_lowering_matmul_fast;      /* matmul_fast.c */
extern const di_lowering di_lowering_matmul_fast_f32x; /* matmul_fast.c: f32 x rounded, then the bf16-x kernel */
extern const di_lowering di_lowering_attention_fast;   /* attention_fast.c */
extern const di_lowering di_lowering_vendor_cublaslt;  /* vendor/vendor.c */
extern const di_lowering di_lowering_vendor_ksplits;   /* vendor/vendor.c */
extern const di_lowering di_lowering_vendor_kv_split;  /* vendor/vendor.c */

/* Entry symbol, from spec + specialization only, e.g. "matmul__K576_N1536"; the fast schedule
 * is named when it is not the target's default. */
void di_kernel_name(const di_spec *s, const di_specialization *p, const di_target *t, char *buf, size_t len);

/* The complete translation unit of (s, p) on t: frame (header comment, preludes, constants)
 * and the lowering's bodies. A lowering with no entries gives a comment naming its deps. */
int di_codegen(const di_spec *s, const di_specialization *p, const di_target *t, di_str *out, di_err *err);

/* Launch shape of the class lowerings from runtime sizes (in the spec's SIZES order). For the
 * C backend the blocks grid[0] * grid[1] are run by the CPU pool; block[] is unused there. */
typedef struct di_geometry { unsigned grid[3], block[3]; unsigned smem; } di_geometry;
int di_geometry_for(const di_spec *s, const di_specialization *p, di_backend_kind b, const long *sizes,
                    di_geometry *g, di_err *err);

/* The fast schedules (schedule.c, from schedules.def): the one a specialization runs on t (its
 * own when set, else the target's row), the check of a set one, and a tag naming a schedule
 * that is not the target's default (0 when it is, or when none applies). */
di_mm_schedule di_mm_schedule_of(const di_specialization *p, const di_target *t);
di_att_schedule di_att_schedule_of(const di_specialization *p, const di_target *t);
const di_mm_schedule *di_mm_schedule_named(const char *name);   /* a row of schedules.def, or NULL */
int di_schedules_check(const di_spec *s, const di_specialization *p, di_err *err);
unsigned long di_schedule_tag(const di_spec *s, const di_specialization *p, const di_target *t);

/* Frame pieces (codegen.c) for lowerings that write their own entries. */
void di_emit_params(di_str *o, const di_spec *s, const di_specialization *p);
void di_emit_c_entry(di_str *o, const di_spec *s, const di_specialization *p, const char *name);

/* Helpers the lowerings share (lowering.c). */
/* The spec's own parameters: tensors as pointers, scalars by value, then the sizes. */
void di_entry_spec_params(const di_spec *s, di_entry *e);
/* Launch arguments passing the spec's arguments and sizes through, in order. */
void di_launch_spec_args(const di_spec *s, di_launch *l);
void di_launch_add(di_launch *l, di_arg_kind kind, int index, size_t offset, long value);
/* A one-launch plan of entry 0 with the spec's arguments and sizes. */
void di_plan_entry(const di_spec *s, di_plan *pl, const di_geometry *g);

#endif
