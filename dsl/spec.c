/* The spec table (kernels.def expanded into di_spec initializers) and its validation. */
#include "dsl/dsl.h"
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define KERNEL(name_, cls_, ...) \
    [DI_OP_##name_] = { .name = #name_, .cls = DI_##cls_, __VA_ARGS__, .file = "kernels.def", .line = __LINE__ },
const di_spec di_specs[DI_NUM_OPS] = {
#include "kernels.def"
};

#define KERNEL(name_, ...) [DI_OP_##name_] = #name_,
const char *const di_op_names[DI_NUM_OPS] = {
#include "kernels.def"
};

_Static_assert(sizeof di_specs / sizeof di_specs[0] == DI_NUM_OPS, "spec table and op enum disagree");
_Static_assert(sizeof di_op_names / sizeof di_op_names[0] == DI_NUM_OPS, "name table and op enum disagree");

static const char *const class_names[] = {
#define X(id, str) str,
    DI_CLASSES(X)
#undef X
};
_Static_assert(sizeof class_names / sizeof class_names[0] == DI_NUM_CLASSES, "class names");

/* ---- profiles ----------------------------------------------------------------------- */

static const struct { const char *name, *description; unsigned backends; } profiles[] = {
#define PROFILE(id, name, backends, description) {name, description, backends},
#include "dsl/profiles.def"
};
_Static_assert(sizeof profiles / sizeof profiles[0] == DI_NUM_PROFILES, "profile table and enum disagree");

const char *di_profile_name(di_profile p) { return (unsigned)p < DI_NUM_PROFILES ? profiles[p].name : "?"; }
const char *di_profile_description(di_profile p) { return (unsigned)p < DI_NUM_PROFILES ? profiles[p].description : "?"; }
unsigned di_profile_backends(di_profile p) { return (unsigned)p < DI_NUM_PROFILES ? profiles[p].backends : 0; }

bool di_profile_parse(const char *name, di_profile *out)
{
    for (int i = 0; name && i < DI_NUM_PROFILES; i++)
        if (!strcmp(profiles[i].name, name)) { *out = (di_profile)i; return true; }
    return false;
}

/* " | exact | fast | vendor" without its leading separator */
const char *di_profile_choices(void)
{
    static const char list[] =
#define PROFILE(id, name, backends, description) " | " name
#include "dsl/profiles.def"
        ;
    return list + 3;
}

const char *di_class_name(di_class c) { return (unsigned)c < DI_NUM_CLASSES ? class_names[c] : "?"; }

static const struct { const char *name, *ctype; size_t bytes; } dtypes[DI_NUM_DTYPES] = {
#define X(id, name, ctype, bytes) {name, ctype, bytes},
    DI_DTYPES(X)
#undef X
};

const char *di_dtype_name(di_dtype t) { return (unsigned)t < DI_NUM_DTYPES ? dtypes[t].name : "?"; }
const char *di_dtype_ctype(di_dtype t) { return (unsigned)t < DI_NUM_DTYPES ? dtypes[t].ctype : "?"; }
size_t di_dtype_size(di_dtype t) { return (unsigned)t < DI_NUM_DTYPES ? dtypes[t].bytes : 0; }

bool di_dtype_parse(const char *name, di_dtype *out)
{
    for (int i = 0; i < DI_NUM_DTYPES; i++)
        if (!strcmp(dtypes[i].name, name)) { *out = (di_dtype)i; return true; }
    return false;
}

/* d[8], m[8] (64 bytes), then the codes: 32 x 8 nibbles or bytes */
size_t di_pack_record_bytes(di_dtype t)
{
    if (!di_dtype_packed(t)) return 0;
    return (di_dtype_half_scales(t) ? 32 : 64) + (di_pack_code_bits(t) == 4 ? 128 : 256);
}

size_t di_pack_bytes(di_dtype t, long n, long k)
{
    return (size_t)((n + DI_PACK_LANES - 1) / DI_PACK_LANES) * (size_t)(k / DI_PACK_BLOCK) * di_pack_record_bytes(t);
}

const di_spec *di_spec_find(const char *name)
{
    for (int i = 0; i < DI_NUM_OPS; i++)
        if (strcmp(di_specs[i].name, name) == 0) return &di_specs[i];
    return NULL;
}

/* ---- validation --------------------------------------------------------------------- */

typedef struct { const di_spec *s; char *msg; size_t len; } vctx;

static bool bad(vctx *v, const char *field, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool bad(vctx *v, const char *field, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(v->msg, v->len, "spec %s (%s:%d): %s: %s", v->s->name ? v->s->name : "(unnamed)",
             v->s->file ? v->s->file : "?", v->s->line, field, what);
    return false;
}

static bool is_ident(const char *s)
{
    if (!s || !(isalpha((unsigned char)*s) || *s == '_')) return false;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_')) return false;
    return true;
}

static const di_arg *find_arg(const di_spec *s, const char *name)
{
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++)
        if (strcmp(s->args[i].name, name) == 0) return &s->args[i];
    return NULL;
}

static bool has_dim(const di_spec *s, const char *name)
{
    for (int i = 0; i < DI_MAX_DIMS && s->dims[i].name; i++)
        if (strcmp(s->dims[i].name, name) == 0) return true;
    return false;
}

static bool has_size(const di_spec *s, const char *name)
{
    for (int i = 0; i < DI_MAX_SIZES && s->sizes[i]; i++)
        if (strcmp(s->sizes[i], name) == 0) return true;
    return false;
}

/* Whole-word occurrence of name in text. */
static bool mentions(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text ? strstr(text, name) : NULL; p; p = strstr(p + 1, name)) {
        bool left = p == text || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
        bool right = !(isalnum((unsigned char)p[n]) || p[n] == '_');
        if (left && right) return true;
    }
    return false;
}

static bool require_arg(vctx *v, const char *name, di_role role)
{
    const di_arg *a = find_arg(v->s, name);
    if (!a) return bad(v, "args", "a %s kernel needs an argument named '%s'", di_class_name(v->s->cls), name);
    bool out_ok = role == DI_ROLE_OUT && (a->role == DI_ROLE_OUT || a->role == DI_ROLE_INOUT);
    if (a->role != role && !out_ok)
        return bad(v, "args", "argument '%s' has the wrong role for a %s kernel", name, di_class_name(v->s->cls));
    return true;
}

static bool require_dim(vctx *v, const char *name)
{
    return has_dim(v->s, name) ? true : bad(v, "dims", "a %s kernel needs dim '%s'", di_class_name(v->s->cls), name);
}

/* Identifiers in a shape must be dims, runtime sizes, KVB, or (leading only) a free name. */
static bool check_shape(vctx *v, const di_arg *a)
{
    if (a->role == DI_ROLE_SCALAR) return true;
    if (!a->shape || !*a->shape) return bad(v, "args", "argument '%s' has no shape", a->name);
    const char *p = a->shape;
    bool leading = true;
    while (*p) {
        if (isalpha((unsigned char)*p) || *p == '_') {
            char id[64];
            size_t n = 0;
            while ((isalnum((unsigned char)*p) || *p == '_') && n + 1 < sizeof id) id[n++] = *p++;
            id[n] = 0;
            if (!leading && !has_dim(v->s, id) && !has_size(v->s, id) && strcmp(id, "KVB") != 0)
                return bad(v, "args", "shape of '%s' names '%s', which is not a dim or size", a->name, id);
            if (!strcmp(id, "KVB") && v->s->sched.kv_block <= 0)
                return bad(v, "args", "shape of '%s' uses KVB but the schedule sets no kv_block", a->name);
        } else if (*p == ',') {
            leading = false;
            p++;
        } else {
            p++;
        }
    }
    return true;
}

static bool pow2(int x) { return x > 0 && (x & (x - 1)) == 0; }

static bool check_class(vctx *v)
{
    const di_spec *s = v->s;
    const di_schedule *k = &s->sched;
    if (k->threads < 32 || k->threads > 1024 || k->threads % 32)
        return bad(v, "schedule.threads", "%d is not a multiple of 32 in [32, 1024]", k->threads);
    switch (s->cls) {
    case DI_MAP:
    case DI_GATHER:
        if (!s->body) return bad(v, "body", "missing");
        if (!s->cols) return bad(v, "cols", "missing");
        return true;
    case DI_ROW_REDUCE:
        if (!s->reduce[0].name || s->reduce[0].op == DI_RONCE)
            return bad(v, "reduce", "a row_reduce needs at least one reduction (a SUM or MAX) first");
        if (!s->post) return bad(v, "post", "missing");
        if (s->groups && !*s->groups) return bad(v, "groups", "empty");
        __attribute__((fallthrough)); /* the lane rules are the same as sample's */
    case DI_SAMPLE:
        if (!s->cols) return bad(v, "cols", "missing");
        if (!pow2(k->lanes)) return bad(v, "schedule.lanes", "%d is not a power of two", k->lanes);
        /* a GPU thread per lane; the threads past LANES share only the map after the reduction */
        if (k->threads < k->lanes || k->threads % k->lanes)
            return bad(v, "schedule.threads", "%d is not a multiple of lanes (%d): one GPU thread per lane", k->threads,
                       k->lanes);
        if (s->cls == DI_SAMPLE) return require_arg(v, "id", DI_ROLE_OUT) && require_arg(v, "x", DI_ROLE_IN);
        return true;
    case DI_MATMUL:
        if (!(require_arg(v, "y", DI_ROLE_OUT) && require_arg(v, "x", DI_ROLE_IN) && require_arg(v, "w", DI_ROLE_IN) &&
              require_dim(v, "K") && require_dim(v, "N")))
            return false;
        if (k->split <= 0) return bad(v, "schedule.split", "a matmul needs a K chunk size > 0");
        if (k->tile_n <= 0 || k->tile_n > 8) return bad(v, "schedule.tile_n", "%d not in [1, 8]", k->tile_n);
        if (!s->body) return bad(v, "epilogue", "missing");
        if (s->residual) {
            const di_arg *r = find_arg(s, s->residual);
            if (!r || r->role != DI_ROLE_IN) return bad(v, "epilogue", "RESIDUAL(%s) names no input argument", s->residual);
        }
        return true;
    case DI_ATTENTION: {
        static const char *const ins[] = {"qkv", "kc", "vc", "pos", "seq", "btab"};
        if (!require_arg(v, "out", DI_ROLE_OUT)) return false;
        for (size_t i = 0; i < sizeof ins / sizeof ins[0]; i++)
            if (!require_arg(v, ins[i], DI_ROLE_IN)) return false;
        if (!(require_dim(v, "NH") && require_dim(v, "NKV") && require_dim(v, "HD"))) return false;
        if (k->split <= 0) return bad(v, "schedule.split", "an attention kernel needs a KV split size > 0");
        if (k->kv_block != k->split)
            return bad(v, "schedule.split", "KV split %d must equal the KV block %d (splits aligned to blocks)",
                       k->split, k->kv_block);
        return true;
    }
    default:
        return bad(v, "class", "unknown class %d", (int)s->cls);
    }
}

bool di_spec_validate(const di_spec *s, char *msg, size_t msglen)
{
    vctx v = {s, msg, msglen};
    if (!is_ident(s->name)) return bad(&v, "name", "not an identifier");
    if (!s->args[0].name) return bad(&v, "args", "no arguments");
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        const di_arg *a = &s->args[i];
        if (!is_ident(a->name)) return bad(&v, "args", "argument %d has a bad name", i);
        for (int j = 0; j < i; j++)
            if (!strcmp(s->args[j].name, a->name)) return bad(&v, "args", "argument '%s' appears twice", a->name);
        if (!check_shape(&v, a)) return false;
    }
    for (int i = 0; i < DI_MAX_DIMS && s->dims[i].name; i++) {
        if (!is_ident(s->dims[i].name)) return bad(&v, "dims", "dim %d has a bad name", i);
        if (s->dims[i].value <= 0) return bad(&v, "dims", "default of %s is %ld", s->dims[i].name, s->dims[i].value);
    }
    if (!s->sizes[0] || strcmp(s->sizes[0], "rows") != 0)
        return bad(&v, "sizes", "the first runtime size must be 'rows'");
    if (!check_class(&v)) return false;
    /* Every argument must be used by the body text of body-driven classes: an unused one is a typo. */
    if (s->cls == DI_MAP || s->cls == DI_GATHER || s->cls == DI_ROW_REDUCE) {
        for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
            const char *n = s->args[i].name;
            bool used = mentions(s->body, n) || mentions(s->post, n);
            for (int r = 0; r < DI_MAX_REDUCE && s->reduce[r].name; r++) used = used || mentions(s->reduce[r].expr, n);
            if (!used) return bad(&v, "args", "argument '%s' is never used by the body", n);
        }
    }
    return true;
}

bool di_specs_validate(const di_spec *specs, int n, char *msg, size_t msglen)
{
    int kv_block = 0;
    const char *kv_owner = NULL;
    for (int i = 0; i < n; i++) {
        if (!di_spec_validate(&specs[i], msg, msglen)) return false;
        for (int j = 0; j < i; j++)
            if (!strcmp(specs[i].name, specs[j].name)) {
                vctx v = {&specs[i], msg, msglen};
                return bad(&v, "name", "defined twice");
            }
        /* The KV cache is shared by the ops that write and read it: one block size. */
        int b = specs[i].sched.kv_block;
        if (b && kv_block && b != kv_block) {
            vctx v = {&specs[i], msg, msglen};
            return bad(&v, "schedule.kv_block", "%d disagrees with %s's %d", b, kv_owner, kv_block);
        }
        if (b && !kv_block) { kv_block = b; kv_owner = specs[i].name; }
    }
    return true;
}
