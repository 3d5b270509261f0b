/* The kernel-spec vocabulary. kernels.def is written in these macros; this header turns
 * each entry into a di_spec initializer (see dsl/spec.c), and other expansions of the same
 * table make the op enum and the name list.
 *
 * A spec says: what the op is (class, arguments, body text) and how it reduces (schedule).
 * The schedule is pinned in the entry and never depends on runtime sizes: that is the
 * whole point (DESIGN.md, "the one rule"). */
#ifndef DI_DSL_H
#define DI_DSL_H
#include <stdbool.h>
#include <stddef.h>

#define DI_MAX_ARGS 12
#define DI_MAX_DIMS 8
#define DI_MAX_SIZES 4
#define DI_MAX_REDUCE 2

typedef enum { DI_F32, DI_BF16, DI_I32 } di_dtype;

/* ---- numerics profiles (dsl/profiles.def) ------------------------------------------ */
enum { DI_ON_CPU = 1, DI_ON_CUDA = 2 };   /* the backends a profile runs on */
typedef enum {
#define PROFILE(id, name, backends, description) DI_PROFILE_##id,
#include "dsl/profiles.def"
    DI_NUM_PROFILES
} di_profile;
const char *di_profile_name(di_profile p);          /* "exact", "fast", "vendor"; "?" if out of range */
const char *di_profile_description(di_profile p);
unsigned di_profile_backends(di_profile p);         /* DI_ON_CPU | DI_ON_CUDA bits */
bool di_profile_parse(const char *name, di_profile *out);   /* false for an unknown name */
const char *di_profile_choices(void);               /* "exact | fast | vendor", for messages */

/* map: one body per (row, col); gather: a map whose body indexes a table;
 * row_reduce: lanes reduce a row, then a post body per element;
 * matmul: y = x . w^T in K chunks; attention: causal GQA over a paged KV cache;
 * sample: per-row selection (argmax). */
#define DI_CLASSES(X) X(MAP, "map") X(GATHER, "gather") X(ROW_REDUCE, "row_reduce") \
    X(MATMUL, "matmul") X(ATTENTION, "attention") X(SAMPLE, "sample")
typedef enum {
#define X(id, str) DI_##id,
    DI_CLASSES(X)
#undef X
    DI_NUM_CLASSES
} di_class;

typedef enum { DI_ROLE_IN, DI_ROLE_OUT, DI_ROLE_INOUT, DI_ROLE_SCALAR } di_role;
typedef enum { DI_RSUM, DI_RMAX } di_rop;

typedef struct di_arg {
    const char *name;
    di_role role;
    di_dtype dtype;
    const char *shape;       /* "rows, D": a leading runtime size slices the arg per row */
} di_arg;

typedef struct di_dim { const char *name; long value; } di_dim;   /* compile-time, with default */

typedef struct di_reduce {
    di_rop op;
    const char *name;        /* the reduced scalar, visible to later reductions and post */
    const char *expr;        /* element expression over index i */
} di_reduce;

typedef struct di_schedule {
    int threads;    /* GPU threads per block */
    int lanes;      /* row_reduce/sample: lane count; lane l takes i = l, l+lanes, ...; then a halving tree */
    int split;      /* matmul: K chunk (in-order chain per chunk, chunks added in order);
                       attention: KV split in positions (splits combined in order) */
    int tile_n;     /* matmul: outputs of one row computed together (CPU register tile) */
    int kv_block;   /* attention: KV cache block size in positions; split must equal it */
} di_schedule;

typedef struct di_spec {
    const char *name;
    di_class cls;
    di_arg args[DI_MAX_ARGS];
    di_dim dims[DI_MAX_DIMS];
    const char *sizes[DI_MAX_SIZES];   /* runtime sizes: kernel parameters, change only the grid */
    const char *cols;                  /* map/gather/row_reduce: row length, a constant expression of dims */
    const char *groups;                /* row_reduce: reduce each row this many times, group g = 0.. (g in the text) */
    const char *body;                  /* map/gather: statement per (row, i); matmul: epilogue */
    const char *residual;              /* matmul: the argument a RESIDUAL epilogue adds, or NULL */
    di_reduce reduce[DI_MAX_REDUCE];
    const char *post;                  /* row_reduce: statement per i after the reductions */
    di_schedule sched;
    const char *file;
    int line;
} di_spec;

/* ---- vocabulary used inside kernels.def entries ---------------------------------- */
#define ARGS(...)        .args = { __VA_ARGS__ }
#define IN(n, t, shape)     { #n, DI_ROLE_IN, DI_##t, shape }
#define OUT(n, t, shape)    { #n, DI_ROLE_OUT, DI_##t, shape }
#define INOUT(n, t, shape)  { #n, DI_ROLE_INOUT, DI_##t, shape }
#define SCALAR(n, t)        { #n, DI_ROLE_SCALAR, DI_##t, "" }
#define DIMS(...)        .dims = { __VA_ARGS__ }
#define DIM(n, v)           { #n, v }
#define SIZES(...)       .sizes = { __VA_ARGS__ }
#define COLS(...)        .cols = #__VA_ARGS__
#define GROUPS(...)      .groups = #__VA_ARGS__  /* row_reduce: one reduction per group g of a row */
#define BODY(...)        .body = #__VA_ARGS__
#define EPILOGUE(...)    .body = #__VA_ARGS__   /* matmul: the value stored to y[n], from acc */
/* matmul: y[n] = acc + r[n], the residual added after the full sum. The same body text as
 * EPILOGUE(acc + r[n]), and the form named, so a library GEMM can take it as beta = 1. */
#define RESIDUAL(r)      .body = "acc + " #r "[n]", .residual = #r
#define REDUCE(...)      .reduce = { __VA_ARGS__ }
#define SUM(n, ...)         { DI_RSUM, #n, #__VA_ARGS__ }
#define MAX(n, ...)         { DI_RMAX, #n, #__VA_ARGS__ }
#define POST(...)        .post = #__VA_ARGS__
#define SCHEDULE(...)    .sched = { __VA_ARGS__ }

/* ---- the table -------------------------------------------------------------------- */
typedef enum {
#define KERNEL(name, cls, ...) DI_OP_##name,
#include "kernels.def"
    DI_NUM_OPS
} di_op;

extern const di_spec di_specs[DI_NUM_OPS];
extern const char *const di_op_names[DI_NUM_OPS];

const di_spec *di_spec_find(const char *name);
const char *di_class_name(di_class c);
const char *di_dtype_name(di_dtype t);
size_t di_dtype_size(di_dtype t);

/* Validates one spec; on failure writes "spec NAME (file:line): field: problem" to msg. */
bool di_spec_validate(const di_spec *s, char *msg, size_t msglen);
/* Validates a whole table (the built-in one at startup, a test-only one in tests). */
bool di_specs_validate(const di_spec *specs, int n, char *msg, size_t msglen);

#endif
