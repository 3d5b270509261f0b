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
#define DI_MAX_REDUCE 3

/* Element types: (id, name, C type in generated code, bytes per element; 0 for a packed weight
 * format, whose size is per record, di_pack_bytes).
 *
 * Packed matmul weights (the w of a MATMUL spec on the C backend): a GGUF matrix [N, K] kept in
 * its quantized form, 8 outputs interleaved so that SIMD lanes are outputs. Record (g, b) for
 * outputs 8g..8g+7 and k = 32b..32b+31, at byte (g * K/32 + b) * record bytes:
 *   float d[8], m[8];                           lane l is output 8g + l
 *   Q4X8: uint32 q[4][8], nibble s of q[j][l] is code(k = 32b + 8j + s), unsigned 0..15
 *   Q8X8: uint32 q[8][8], byte s of q[j][l] is code(k = 32b + 4j + s), signed -128..127
 * and the weight is bf16(d[l] * (float)code + m[l]) in f32, rounded to bf16 by
 * t = v * 65537, t - (t - v) (Veltkamp's split: round to nearest even at 8 bits for every
 * normal f32 below 2^100, checked exhaustively); model/pack.c builds the records and checks
 * every weight against the load-time bf16 conversion. Outputs past N are zero records.
 * Q4X8H / Q8X8H: the same with d[8] and m[8] as IEEE binary16 (uint16 d[8], m[8], then q at
 * byte 32), for matrices whose every d and m is one (Q4_0, Q4_1, Q5_x, Q8_0: f16 scales; not
 * the K quants, whose d is an f16 times a 6-bit scale): 0.625 bytes a 4-bit weight, as Q4_1.
 * The fast profile's matmul reads them (the same bf16 weights); the C lowering does not. */
#define DI_DTYPES(X) \
    X(F32, "f32", "float", 4) X(BF16, "bf16", "di_bf16", 2) X(I32, "i32", "int", 4) \
    X(Q4X8, "q4x8", "unsigned char", 0) X(Q8X8, "q8x8", "unsigned char", 0) \
    X(Q4X8H, "q4x8h", "unsigned char", 0) X(Q8X8H, "q8x8h", "unsigned char", 0)
typedef enum {
#define X(id, name, ctype, bytes) DI_##id,
    DI_DTYPES(X)
#undef X
    DI_NUM_DTYPES
} di_dtype;
enum { DI_PACK_LANES = 8, DI_PACK_BLOCK = 32 };
static inline bool di_dtype_half_scales(di_dtype t) { return t == DI_Q4X8H || t == DI_Q8X8H; }
static inline bool di_dtype_packed(di_dtype t) { return t == DI_Q4X8 || t == DI_Q8X8 || di_dtype_half_scales(t); }
static inline int di_pack_code_bits(di_dtype t) { return t == DI_Q4X8 || t == DI_Q4X8H ? 4 : 8; }
/* the half-scale form of a packed format (itself if it has one already) */
static inline di_dtype di_pack_half(di_dtype t) { return t == DI_Q4X8 ? DI_Q4X8H : t == DI_Q8X8 ? DI_Q8X8H : t; }

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
typedef enum { DI_RSUM, DI_RMAX, DI_RONCE } di_rop;

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
/* a row's value computed once from the reductions before it, for POST (a call with branches,
 * such as di_logf, is not hoisted out of POST's loop by a C compiler) */
#define ONCE(n, ...)        { DI_RONCE, #n, #__VA_ARGS__ }
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
const char *di_dtype_ctype(di_dtype t);             /* the type generated code declares */
size_t di_dtype_size(di_dtype t);                   /* bytes per element; 0 when packed */
bool di_dtype_parse(const char *name, di_dtype *out);
/* Packed weights: bytes of one record, and of a whole [n, k] matrix (k a multiple of 32). */
size_t di_pack_record_bytes(di_dtype t);
size_t di_pack_bytes(di_dtype t, long n, long k);

/* Validates one spec; on failure writes "spec NAME (file:line): field: problem" to msg. */
bool di_spec_validate(const di_spec *s, char *msg, size_t msglen);
/* Validates a whole table (the built-in one at startup, a test-only one in tests). */
bool di_specs_validate(const di_spec *specs, int n, char *msg, size_t msglen);

#endif
