/* Specializations, kernel names, constant expressions, the class lowerings' launch geometry,
 * and the translation-unit frame (prelude, constants, entry wrapper) around a lowering's bodies. */
#include "codegen/codegen.h"
#include "codegen/lower.h"
#include "codegen/lowering.h"
#include <ctype.h>
#include <stdio.h>
#include <string.h>

/* ---- specialization ----------------------------------------------------------------- */

void di_spec_defaults(const di_spec *s, di_specialization *p)
{
    memset(p, 0, sizeof *p);
    for (int i = 0; i < DI_MAX_DIMS && s->dims[i].name; i++) p->dims[i] = s->dims[i].value;
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) p->dtypes[i] = s->args[i].dtype;
    p->profile = DI_PROFILE_EXACT;
}

static int dim_index(const di_spec *s, const char *name)
{
    for (int i = 0; i < DI_MAX_DIMS && s->dims[i].name; i++)
        if (!strcmp(s->dims[i].name, name)) return i;
    return -1;
}

int di_spec_arg(const di_spec *s, const char *name)
{
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++)
        if (!strcmp(s->args[i].name, name)) return i;
    return -1;
}

int di_spec_set_dim(const di_spec *s, di_specialization *p, const char *dim, long value, di_err *err)
{
    int i = dim_index(s, dim);
    if (i < 0) return di_fail(err, DI_ESPEC, "spec %s: no dim named '%s'", s->name, dim);
    if (value <= 0) return di_fail(err, DI_ESPEC, "spec %s: dim %s = %ld must be positive", s->name, dim, value);
    p->dims[i] = value;
    return DI_OK;
}

int di_spec_set_dtype(const di_spec *s, di_specialization *p, const char *arg, di_dtype t, di_err *err)
{
    int i = di_spec_arg(s, arg);
    if (i < 0) return di_fail(err, DI_ESPEC, "spec %s: no argument named '%s'", s->name, arg);
    p->dtypes[i] = t;
    return di_specialization_check(s, p, err);
}

long di_spec_dim(const di_spec *s, const di_specialization *p, const char *dim)
{
    int i = dim_index(s, dim);
    return i < 0 ? -1 : p->dims[i];
}

/* A split chosen per launch is the vendor profile's alone, and only for its class of spec. */
static int check_vendor_choice(const di_spec *s, const di_specialization *p, int value, const char *what,
                               di_class cls, const char *cls_name, di_err *err)
{
    if (p->profile != DI_PROFILE_VENDOR)
        return di_fail(err, DI_ESPEC, "spec %s: %s chosen per launch (%d) is the vendor profile's batch-dependent "
                       "choice; the %s profile keeps the spec's fixed split size", s->name, what, value,
                       di_profile_name(p->profile));
    if (s->cls != cls) return di_fail(err, DI_ESPEC, "spec %s: %s applies to %s specs only", s->name, what, cls_name);
    return DI_OK;
}

int di_specialization_check(const di_spec *s, const di_specialization *p, di_err *err)
{
    for (int i = 0; i < DI_MAX_DIMS && s->dims[i].name; i++)
        if (p->dims[i] <= 0 || p->dims[i] > (1L << 30))
            return di_fail(err, DI_ESPEC, "spec %s: dim %s = %ld out of range", s->name, s->dims[i].name, p->dims[i]);
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        if (p->dtypes[i] == s->args[i].dtype) continue;
        /* Only matmul operands convert on load/store; body-driven classes index f32 directly. */
        bool w = !strcmp(s->args[i].name, "w");
        bool ok = s->cls == DI_MATMUL && (!strcmp(s->args[i].name, "x") || w || !strcmp(s->args[i].name, "y")) &&
                  p->dtypes[i] != DI_I32 && (w || !di_dtype_packed(p->dtypes[i]));
        /* a body's f32 y stored as bf16 (rounded to nearest even on the store; CUDA only, lower.c) */
        ok = ok || ((s->cls == DI_MAP || s->cls == DI_GATHER || s->cls == DI_ROW_REDUCE) && !strcmp(s->args[i].name, "y") &&
                    s->args[i].role == DI_ROLE_OUT && s->args[i].dtype == DI_F32 && p->dtypes[i] == DI_BF16);
        /* a bf16 KV cache and bf16 out, for the fast profile's tensor-core attention (the class
         * lowering reads and writes f32) */
        ok = ok || (s->cls == DI_ATTENTION && (!strcmp(s->args[i].name, "kc") || !strcmp(s->args[i].name, "vc") ||
                                               !strcmp(s->args[i].name, "out")) && p->dtypes[i] == DI_BF16);
        if (!ok)
            return di_fail(err, DI_ESPEC, "spec %s: argument %s cannot be specialized to %s", s->name,
                           s->args[i].name, di_dtype_name(p->dtypes[i]));
    }
    int w = di_spec_arg(s, "w");
    if (s->cls == DI_MATMUL && w >= 0 && di_dtype_packed(p->dtypes[w])) {
        /* a chunk of the K order must be whole records: the packed loops step 32 k at a time */
        long k = di_spec_dim(s, p, "K");
        if (k % DI_PACK_BLOCK || s->sched.split % DI_PACK_BLOCK || p->ksplits)
            return di_fail(err, DI_ESPEC, "spec %s: w as %s needs K (%ld) and the split (%d) multiples of %d and no "
                           "K split count", s->name, di_dtype_name(p->dtypes[w]), k, s->sched.split, DI_PACK_BLOCK);
    }
    if (p->ksplits) {
        if (check_vendor_choice(s, p, p->ksplits, "a K split count", DI_MATMUL, "matmul", err)) return err->code;
        long k = di_spec_dim(s, p, "K");
        if (p->ksplits < 0 || p->ksplits > k)
            return di_fail(err, DI_ESPEC, "spec %s: K split count %d not in [1, K = %ld]", s->name, p->ksplits, k);
    }
    if (p->kv_split) {
        if (check_vendor_choice(s, p, p->kv_split, "a KV split size", DI_ATTENTION, "attention", err))
            return err->code;
        if (p->kv_split < 16 || p->kv_split > 64 || p->kv_split % 16)
            return di_fail(err, DI_ESPEC, "spec %s: KV split size %d is not 16, 32, 48 or 64", s->name, p->kv_split);
    }
    if (s->cls == DI_ATTENTION) {
        long nh = di_spec_dim(s, p, "NH"), nkv = di_spec_dim(s, p, "NKV");
        if (nh % nkv)
            return di_fail(err, DI_ESPEC, "spec %s: NH %ld is not a multiple of NKV %ld", s->name, nh, nkv);
        if (di_spec_dim(s, p, "HD") > 1024)
            return di_fail(err, DI_ESPEC, "spec %s: HD %ld over 1024", s->name, di_spec_dim(s, p, "HD"));
    }
    return di_schedules_check(s, p, err);
}

void di_kernel_name(const di_spec *s, const di_specialization *p, const di_target *t, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "%s_", s->name);
    for (int i = 0; i < DI_MAX_DIMS && s->dims[i].name && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "_%s%ld", s->dims[i].name, p->dims[i]);
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name && n < len; i++)
        if (p->dtypes[i] != s->args[i].dtype)
            n += (size_t)snprintf(buf + n, len - n, "_%s%s", s->args[i].name, di_dtype_name(p->dtypes[i]));
    if (p->profile == DI_PROFILE_FAST && n < len) n += (size_t)snprintf(buf + n, len - n, "_fast");
    /* vendor kernels never share a name with exact ones: runtimes find kernels by name */
    if (p->profile == DI_PROFILE_VENDOR && n < len) n += (size_t)snprintf(buf + n, len - n, "_vendor");
    if (p->ksplits && n < len) n += (size_t)snprintf(buf + n, len - n, "_ks%d", p->ksplits);
    if (p->kv_split && n < len) n += (size_t)snprintf(buf + n, len - n, "_kvs%d", p->kv_split);
    /* a fast schedule other than the target's default is a different kernel */
    unsigned long tag = di_schedule_tag(s, p, t);
    if (tag && n < len) snprintf(buf + n, len - n, "_s%08lx", tag);
}

/* ---- constant expressions over dims ------------------------------------------------- */

typedef struct { const di_spec *s; const di_specialization *p; const char *at; di_err *err; int code; } parser;

static long parse_sum(parser *ps);

static void skip_ws(parser *ps) { while (isspace((unsigned char)*ps->at)) ps->at++; }

static long parse_atom(parser *ps)
{
    skip_ws(ps);
    if (*ps->at == '(') {
        ps->at++;
        long v = parse_sum(ps);
        skip_ws(ps);
        if (*ps->at != ')' && !ps->code) ps->code = di_fail(ps->err, DI_ESPEC, "spec %s: missing ')'", ps->s->name);
        ps->at++;
        return v;
    }
    if (isdigit((unsigned char)*ps->at)) {
        long v = 0;
        while (isdigit((unsigned char)*ps->at)) v = v * 10 + (*ps->at++ - '0');
        return v;
    }
    if (isalpha((unsigned char)*ps->at) || *ps->at == '_') {
        char id[64];
        size_t n = 0;
        while ((isalnum((unsigned char)*ps->at) || *ps->at == '_') && n + 1 < sizeof id) id[n++] = *ps->at++;
        id[n] = 0;
        long v = di_spec_dim(ps->s, ps->p, id);
        if (v < 0 && !ps->code)
            ps->code = di_fail(ps->err, DI_ESPEC, "spec %s: '%s' in an expression is not a dim", ps->s->name, id);
        return v;
    }
    if (!ps->code) ps->code = di_fail(ps->err, DI_ESPEC, "spec %s: bad expression near '%s'", ps->s->name, ps->at);
    return 0;
}

static long parse_product(parser *ps)
{
    long v = parse_atom(ps);
    for (;;) {
        skip_ws(ps);
        char op = *ps->at;
        if (op != '*' && op != '/' && op != '%') return v;
        ps->at++;
        long r = parse_atom(ps);
        if (op != '*' && r == 0) {
            if (!ps->code) ps->code = di_fail(ps->err, DI_ESPEC, "spec %s: division by zero", ps->s->name);
            return 0;
        }
        v = op == '*' ? v * r : op == '/' ? v / r : v % r;
    }
}

static long parse_sum(parser *ps)
{
    long v = parse_product(ps);
    for (;;) {
        skip_ws(ps);
        char op = *ps->at;
        if (op != '+' && op != '-') return v;
        ps->at++;
        long r = parse_product(ps);
        v = op == '+' ? v + r : v - r;
    }
}

int di_eval_expr(const di_spec *s, const di_specialization *p, const char *expr, long *out, di_err *err)
{
    parser ps = {s, p, expr, err, DI_OK};
    long v = parse_sum(&ps);
    skip_ws(&ps);
    if (!ps.code && *ps.at) ps.code = di_fail(err, DI_ESPEC, "spec %s: trailing text in '%s'", s->name, expr);
    *out = v;
    return ps.code;
}

/* "rows, NH + 2 * NKV, HD": the product of the dims after the leading "rows"; 0 when the
 * argument is not row-sliced (its shape does not start with rows). */
int di_arg_row_elems(const di_spec *s, const di_specialization *p, int arg, long *out, di_err *err)
{
    const di_arg *a = &s->args[arg];
    *out = 0;
    if (a->role == DI_ROLE_SCALAR || (strncmp(a->shape, "rows,", 5) != 0 && strcmp(a->shape, "rows") != 0))
        return DI_OK;
    long len = 1;
    for (const char *c = strchr(a->shape, ','); c; c = strchr(c + 1, ',')) {
        char tok[128];
        const char *e = strchr(c + 1, ',');
        size_t n = e ? (size_t)(e - c - 1) : strlen(c + 1);
        snprintf(tok, sizeof tok, "%.*s", (int)n, c + 1);
        long v;
        if (di_eval_expr(s, p, tok, &v, err)) return err->code;
        len *= v;
    }
    *out = len;
    return DI_OK;
}

/* ---- geometry ------------------------------------------------------------------------ */

static unsigned ceil_div(long a, long b) { return (unsigned)((a + b - 1) / b); }

int di_geometry_for(const di_spec *s, const di_specialization *p, di_backend_kind b, const long *sizes,
                    di_geometry *g, di_err *err)
{
    const di_schedule *k = &s->sched;
    long rows = sizes[0], cols = 1;
    memset(g, 0, sizeof *g);
    g->grid[0] = g->grid[1] = g->grid[2] = 1;
    g->block[0] = (unsigned)k->threads;
    g->block[1] = g->block[2] = 1;
    if (rows < 0 || rows > 65535)
        return di_fail(err, DI_EUSAGE, "kernel %s: %ld rows (must be 0..65535)", s->name, rows);
    if (s->cols && di_eval_expr(s, p, s->cols, &cols, err)) return err->code;
    switch (s->cls) {
    case DI_MAP:
    case DI_GATHER:
        g->grid[0] = b == DI_BACKEND_C ? 1 : ceil_div(cols, k->threads);
        g->grid[1] = (unsigned)rows;
        break;
    case DI_ROW_REDUCE:
    case DI_SAMPLE: {
        long groups = 1;   /* a grouped row_reduce: block x is the group */
        if (s->groups && di_eval_expr(s, p, s->groups, &groups, err)) return err->code;
        g->grid[0] = (unsigned)groups;
        g->grid[1] = (unsigned)rows;
        break;
    }
    case DI_MATMUL: {
        long n = di_spec_dim(s, p, "N");
        long cg = b == DI_BACKEND_C ? 8L * k->tile_n : (long)k->threads * k->tile_n;
        long rt = b == DI_BACKEND_C ? 4 : 1;
        g->grid[0] = ceil_div(n, cg);
        g->grid[1] = ceil_div(rows, rt);
        break;
    }
    case DI_ATTENTION:   /* a block per (q head, row); on the C backend per (group of q heads, row) */
        g->grid[0] = (unsigned)(di_spec_dim(s, p, "NH") / (b == DI_BACKEND_C ? di_attention_c_heads(s, p) : 1));
        g->grid[1] = (unsigned)rows;
        break;
    default:
        return di_fail(err, DI_ESPEC, "spec %s: no geometry for class %d", s->name, (int)s->cls);
    }
    if (rows == 0) g->grid[1] = 0;
    return DI_OK;
}

/* ---- the translation unit ------------------------------------------------------------ */

/* The kernel parameters of a spec: tensors as `name_` pointers, scalars by value, then the
 * runtime sizes as longs. The fast lowerings append their own after these. */
void di_emit_params(di_str *o, const di_spec *s, const di_specialization *p)
{
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        const di_arg *a = &s->args[i];
        if (i) di_str_puts(o, ", ");
        if (a->role == DI_ROLE_SCALAR)
            di_str_printf(o, "%s %s", di_dtype_ctype(p->dtypes[i]), a->name);
        else
            di_str_printf(o, "%s%s *%s_", a->role == DI_ROLE_IN ? "const " : "", di_dtype_ctype(p->dtypes[i]), a->name);
    }
    for (int i = 0; i < DI_MAX_SIZES && s->sizes[i]; i++) di_str_printf(o, ", long %s", s->sizes[i]);
}

/* The C backend's entry: runs blocks [b0, b1) of a gx-wide grid, arguments unpacked from argv
 * in the spec's order (the pool passes the same argv to every worker). */
void di_emit_c_entry(di_str *o, const di_spec *s, const di_specialization *p, const char *name)
{
    di_str_printf(o, "void %s(long b0, long b1, long gx, void **argv)\n{\n", name);
    di_str_printf(o, "    for (long b = b0; b < b1; b++)\n        %s_block(b %% gx, b / gx", name);
    int n = 0;
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++, n++) {
        const di_arg *a = &s->args[i];
        if (a->role == DI_ROLE_SCALAR)
            di_str_printf(o, ",\n            *(%s *)argv[%d]", di_dtype_ctype(p->dtypes[i]), n);
        else
            di_str_printf(o, ",\n            *(%s%s **)argv[%d]", a->role == DI_ROLE_IN ? "const " : "",
                          di_dtype_ctype(p->dtypes[i]), n);
    }
    for (int i = 0; i < DI_MAX_SIZES && s->sizes[i]; i++, n++) di_str_printf(o, ",\n            *(long *)argv[%d]", n);
    di_str_puts(o, ");\n}\n");
}

/* The frame every lowering's bodies sit in: what made the unit, the backend's prelude, the
 * math prelude, and the specialization and schedule as compile-time constants. */
static void emit_frame(di_str *o, const di_spec *s, const di_specialization *p, const di_target *t)
{
    di_backend_kind b = t->backend;
    di_str_printf(o, "/* detinfer generated source: spec %s (%s), kernels.def:%d, %s backend, %s profile.\n"
                     " * Generator %s. Do not edit: change kernels.def or codegen/. */\n",
                  s->name, di_class_name(s->cls), s->line, b == DI_BACKEND_C ? "C" : "CUDA",
                  di_profile_name(p->profile), DI_CODEGEN_SCHEMA);
    if (b == DI_BACKEND_C) di_prelude_c(o); else di_prelude_cuda(o);
    di_str_puts(o, di_prelude_math);
    di_str_puts(o, "\n/* specialization and schedule: compile-time constants */\n");
    for (int i = 0; i < DI_MAX_DIMS && s->dims[i].name; i++) di_str_printf(o, "#define %s %ldL\n", s->dims[i].name, p->dims[i]);
    di_str_printf(o, "#define THREADS %d\n", s->sched.threads);
    if (s->sched.lanes) di_str_printf(o, "#define LANES %d\n", s->sched.lanes);
    if (p->ksplits) {
        long k = di_spec_dim(s, p, "K");
        di_str_printf(o, "#define SPLIT %ldL  /* vendor: ceil(K / %d), a split count chosen from the row count */\n",
                      (k + p->ksplits - 1) / p->ksplits, p->ksplits);
    } else if (p->kv_split) {
        di_str_printf(o, "#define SPLIT %dL  /* vendor: a KV split size chosen from the row count */\n", p->kv_split);
    } else if (s->sched.split) {
        di_str_printf(o, "#define SPLIT %dL\n", s->sched.split);
    }
    if (s->sched.tile_n) di_str_printf(o, "#define TILE_N %d\n", s->sched.tile_n);
    if (s->sched.kv_block) di_str_printf(o, "#define KVB %dL\n", s->sched.kv_block);
    di_str_puts(o, "\n");
}

/* A lowering that runs other kernels only has no source of its own: say what it runs. */
static int emit_deps_note(di_str *o, const di_lowering *lw, const di_spec *s, const di_specialization *p,
                          const di_target *t, di_err *err)
{
    di_dep deps[DI_MAX_DEPS];
    int n = lw->deps ? lw->deps(s, p, t, deps, err) : 0;
    if (n < 0) return err->code;
    di_str_printf(o, "/* detinfer: spec %s, %s profile, lowering %s: no source of its own; it runs", s->name,
                  di_profile_name(p->profile), lw->name);
    for (int i = 0; i < n; i++) {
        char name[256];
        di_kernel_name(deps[i].spec, &deps[i].sp, t, name, sizeof name);
        di_str_printf(o, "%s %s", i ? "," : "", name);
    }
    di_str_puts(o, " (kgen emit each by its spec and specialization) */\n");
    return DI_OK;
}

int di_codegen(const di_spec *s, const di_specialization *p, const di_target *t, di_str *o, di_err *err)
{
    char msg[512];
    if (!di_spec_validate(s, msg, sizeof msg)) return di_fail(err, DI_ESPEC, "%s", msg);
    if (di_specialization_check(s, p, err)) return err->code;
    if (t->backend == DI_BACKEND_C && p->profile == DI_PROFILE_FAST)
        return di_fail(err, DI_ESPEC, "spec %s: the fast profile is GPU-only", s->name);
    if (p->kv_split && !di_lowering_attention_fast.applies(s, p, t))
        return di_fail(err, DI_ESPEC, "spec %s: a vendor KV split size needs the GPU's tensor-core attention "
                       "(the scalar lowering reads one cache block per split)", s->name);
    const di_lowering *lw = di_lowering_for(s, p, t);
    di_entry entries[DI_MAX_ENTRIES];
    int ne = lw->entries(s, p, t, entries, err);
    if (ne < 0) return err->code;
    if (ne == 0) return emit_deps_note(o, lw, s, p, t, err);
    emit_frame(o, s, p, t);
    return lw->emit(o, s, p, t, entries[0].name, err);
}
