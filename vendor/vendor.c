/* The vendor profile: what engines do today, fenced off here. It exists to measure against and
 * as the negative control of every invariance test, and it is the only code in detinfer whose
 * choices follow the row count of a step:
 *  - on the GPU with cuBLASLt, the matmul is the library's GEMM, its heuristic choosing an
 *    algorithm (tile, split-K count, reduction scheme) per M;
 *  - otherwise the matmul cuts K into a split *count* chosen from the rows (8 for <= 4 rows,
 *    4 for <= 32, 2 for <= 128, else 1), as engines pick split-K to fill the machine;
 *  - the GPU's attention takes a KV split *size* chosen from the rows (16 positions for <= 8
 *    rows, 32 for <= 64, else 64), as engines choose a split-KV count from the batch.
 * Each is a lowering like the others: its dependencies are the variants it may pick (compiled at
 * load, so that no launch compiles), and its plan picks one from the sizes. */
#include "vendor/vendor.h"
#include <stdio.h>
#include <string.h>

static const int ksplit_choices[] = {8, 4, 2, 1};
static const int kv_split_choices[] = {16, 32, 64};

int di_vendor_matmul_ksplits(long rows) { return rows <= 4 ? 8 : rows <= 32 ? 4 : rows <= 128 ? 2 : 1; }

int di_vendor_ksplit_choices(const int **counts)
{
    *counts = ksplit_choices;
    return (int)(sizeof ksplit_choices / sizeof ksplit_choices[0]);
}

int di_vendor_attention_kv_split(long rows) { return rows <= 8 ? 16 : rows <= 64 ? 32 : 64; }

int di_vendor_kv_split_choices(const int **sizes)
{
    *sizes = kv_split_choices;
    return (int)(sizeof kv_split_choices / sizeof kv_split_choices[0]);
}

static int no_entries(const di_spec *s, const di_specialization *p, const di_target *t, di_entry *out, di_err *err)
{
    (void)s, (void)p, (void)t, (void)out, (void)err;
    return 0;
}

/* A plan that runs dependency `dep` on all of the launch's arguments and sizes. */
static void plan_dep(const di_spec *s, di_plan *pl, int dep)
{
    memset(pl, 0, sizeof *pl);
    pl->n = 1;
    pl->l[0].run = DI_RUN_DEP;
    pl->l[0].index = dep;
    di_launch_spec_args(s, &pl->l[0]);
}

/* ---- cuBLASLt -------------------------------------------------------------------------------- */

/* The epilogue must be one cuBLASLt has: beta = 0 (acc) or beta = 1 on an f32 residual; other
 * epilogues (a bias) take the K-split variants below. */
static bool lt_form(const di_spec *s, const di_specialization *p)
{
    int iy = di_spec_arg(s, "y"), ires = s->residual ? di_spec_arg(s, s->residual) : -1;
    bool plain = !s->residual && !strcmp(s->body, "acc");
    return plain || (ires >= 0 && p->dtypes[ires] == DI_F32 && p->dtypes[iy] == DI_F32);
}

static bool lt_applies(const di_spec *s, const di_specialization *p, const di_target *t)
{
    return s->cls == DI_MATMUL && p->profile == DI_PROFILE_VENDOR && t->backend == DI_BACKEND_CUDA && t->cublaslt &&
           p->ksplits == 0 && lt_form(s, p);
}

static int lt_check(const di_spec *s, const di_specialization *p, di_err *err)
{
    if (p->dtypes[di_spec_arg(s, "w")] != DI_BF16)
        return di_fail(err, DI_ESPEC, "spec %s: the vendor profile's cuBLASLt matmul takes bf16 w", s->name);
    return DI_OK;
}

/* f32 x is rounded to bf16 first (engines keep bf16 activations): the cast kernel over K. */
static int lt_deps(const di_spec *s, const di_specialization *p, const di_target *t, di_dep *out, di_err *err)
{
    (void)t;
    if (lt_check(s, p, err)) return -1;
    if (p->dtypes[di_spec_arg(s, "x")] != DI_F32) return 0;
    const di_spec *cs = &di_specs[DI_OP_cast_bf16];
    out[0].spec = cs;
    di_spec_defaults(cs, &out[0].sp);
    if (di_spec_set_dim(cs, &out[0].sp, "D", di_spec_dim(s, p, "K"), err)) return -1;
    return 1;
}

static int lt_plan(const di_spec *s, const di_specialization *p, const di_target *t, const long *sizes, di_plan *pl,
                   di_err *err)
{
    (void)t, (void)err;
    long rows = sizes[0];
    int iy = di_spec_arg(s, "y"), ix = di_spec_arg(s, "x"), iw = di_spec_arg(s, "w");
    bool cast = p->dtypes[ix] == DI_F32;
    memset(pl, 0, sizeof *pl);
    pl->workspace = cast ? (size_t)rows * (size_t)di_spec_dim(s, p, "K") * 2 : 0;
    if (rows == 0) return DI_OK;
    if (cast) {
        di_launch *c = &pl->l[pl->n++];
        c->run = DI_RUN_DEP;
        di_launch_add(c, DI_A_WS, 0, 0, 0);
        di_launch_add(c, DI_A_ARG, ix, 0, 0);
        di_launch_add(c, DI_A_SIZE, 0, 0, 0);
    }
    di_launch *g = &pl->l[pl->n++];
    g->run = DI_RUN_CUBLASLT;
    di_launch_add(g, DI_A_ARG, iy, 0, 0);
    di_launch_add(g, cast ? DI_A_WS : DI_A_ARG, cast ? 0 : ix, 0, 0);
    di_launch_add(g, DI_A_ARG, iw, 0, 0);
    if (s->residual) di_launch_add(g, DI_A_ARG, di_spec_arg(s, s->residual), 0, 0);
    else di_launch_add(g, DI_A_LONG, 0, 0, 0);
    di_launch_add(g, DI_A_SIZE, 0, 0, 0);
    di_launch_add(g, DI_A_LONG, 0, 0, di_spec_dim(s, p, "K"));
    di_launch_add(g, DI_A_LONG, 0, 0, di_spec_dim(s, p, "N"));
    di_launch_add(g, DI_A_LONG, 0, 0, p->dtypes[iy] == DI_BF16);
    return DI_OK;
}

const di_lowering di_lowering_vendor_cublaslt = {
    .name = "vendor_cublaslt", .applies = lt_applies, .entries = no_entries, .deps = lt_deps, .plan = lt_plan,
};

/* ---- a K split count from the rows -------------------------------------------------------- */

static bool ks_applies(const di_spec *s, const di_specialization *p, const di_target *t)
{
    return s->cls == DI_MATMUL && p->profile == DI_PROFILE_VENDOR && p->ksplits == 0 && !lt_applies(s, p, t);
}

/* one variant per count the policy can return (at most K), each the class lowering with SPLIT
 * = ceil(K / count) */
static int ks_deps(const di_spec *s, const di_specialization *p, const di_target *t, di_dep *out, di_err *err)
{
    (void)t;
    const int *counts;
    int n = di_vendor_ksplit_choices(&counts);
    long k = di_spec_dim(s, p, "K");
    if (n > DI_MAX_DEPS) { di_fail(err, DI_ESPEC, "spec %s: %d vendor variants, room for %d", s->name, n, DI_MAX_DEPS); return -1; }
    for (int i = 0; i < n; i++) {
        out[i].spec = s;
        out[i].sp = *p;
        out[i].sp.ksplits = counts[i] < k ? counts[i] : (int)k;
    }
    return n;
}

static int ks_plan(const di_spec *s, const di_specialization *p, const di_target *t, const long *sizes, di_plan *pl,
                   di_err *err)
{
    (void)p, (void)t;
    const int *counts;
    int n = di_vendor_ksplit_choices(&counts), want = di_vendor_matmul_ksplits(sizes[0]);
    for (int i = 0; i < n; i++)
        if (counts[i] == want) { plan_dep(s, pl, i); return DI_OK; }
    return di_fail(err, DI_EUSAGE, "spec %s: no vendor variant for K splits %d", s->name, want);
}

const di_lowering di_lowering_vendor_ksplits = {
    .name = "vendor_ksplits", .applies = ks_applies, .entries = no_entries, .deps = ks_deps, .plan = ks_plan,
};

/* ---- a KV split size from the rows (the GPU's tensor-core attention) ------------------------- */

static bool kv_applies(const di_spec *s, const di_specialization *p, const di_target *t)
{
    if (s->cls != DI_ATTENTION || p->profile != DI_PROFILE_VENDOR || t->backend != DI_BACKEND_CUDA || p->kv_split)
        return false;
    di_specialization v = *p;
    v.kv_split = s->sched.split;
    return di_lowering_attention_fast.applies(s, &v, t);
}

static int kv_deps(const di_spec *s, const di_specialization *p, const di_target *t, di_dep *out, di_err *err)
{
    (void)t, (void)err;
    const int *sizes;
    int n = di_vendor_kv_split_choices(&sizes);
    for (int i = 0; i < n; i++) {
        out[i].spec = s;
        out[i].sp = *p;
        out[i].sp.kv_split = sizes[i];
    }
    return n;
}

static int kv_plan(const di_spec *s, const di_specialization *p, const di_target *t, const long *sizes, di_plan *pl,
                   di_err *err)
{
    (void)p, (void)t;
    const int *choices;
    int n = di_vendor_kv_split_choices(&choices), want = di_vendor_attention_kv_split(sizes[0]);
    for (int i = 0; i < n; i++)
        if (choices[i] == want) { plan_dep(s, pl, i); return DI_OK; }
    return di_fail(err, DI_EUSAGE, "spec %s: no vendor variant for KV split size %d", s->name, want);
}

const di_lowering di_lowering_vendor_kv_split = {
    .name = "vendor_kv_split", .applies = kv_applies, .entries = no_entries, .deps = kv_deps, .plan = kv_plan,
};
