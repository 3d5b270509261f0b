/* The lowering contract (codegen/lowering.h), without a GPU: plans and sources are pure
 * functions of (spec, specialization, target).
 *  - For exact and fast, the plans for rows = 1..300 differ only in grids, workspace sizes,
 *    TMA box heights and the fast lowerings' mode (fused, split or cluster sum, fold or split KV: their
 *    own GPU suites prove the modes give the same bits); never in the kernels, entries, blocks,
 *    shared memory or the arguments' wiring. The one exception, a tile that follows the rows with
 *    the order fixed: packed w in fast takes the few-rows tile up to few_rows rows (its own test
 *    below; gpu_fast shows it gives the large tile's bits). The vendor profile's plans must
 *    differ (negative control: its dispatchers pick a variant from the rows).
 *  - Generating every kernel in one order and then in another gives the same bytes: no state. */
#include "helpers.h"
#include "codegen/lowering.h"
#include "vendor/vendor.h"

typedef struct { const char *op; const char *dims[4]; long vals[4]; } model_op;

/* SmolLM2-135M's and Llama-3-8B's kernels, as model/model.c specializes them. */
static const model_op ops[] = {
    {"embed", {"D", "V"}, {576, 49152}},           {"rmsnorm", {"D"}, {576}},
    {"matmul", {"K", "N"}, {576, 960}},            {"rope_adjacent", {"NH", "NKV", "HD", "CTX"}, {9, 3, 64, 512}},
    {"kv_write", {"NH", "NKV", "HD"}, {9, 3, 64}}, {"attention", {"NH", "NKV", "HD"}, {9, 3, 64}},
    {"matmul_residual", {"K", "N"}, {576, 576}},   {"matmul", {"K", "N"}, {576, 3072}},
    {"swiglu", {"F"}, {1536}},                     {"matmul_residual", {"K", "N"}, {1536, 576}},
    {"gather_rows", {"D"}, {576}},                 {"matmul", {"K", "N"}, {576, 49152}},
    {"log_softmax", {"V"}, {49152}},               {"argmax", {"V"}, {49152}},
    {"matmul", {"K", "N"}, {4096, 6144}},          {"matmul", {"K", "N"}, {4096, 28672}},
    {"matmul_residual", {"K", "N"}, {14336, 4096}}, {"attention", {"NH", "NKV", "HD"}, {32, 8, 128}},
    {"matmul", {"K", "N"}, {1001, 37}},            {"cast_bf16", {"D"}, {4096}},
};
enum { NOPS = sizeof ops / sizeof ops[0] };

static di_specialization spec_of(const model_op *m, di_profile prof)
{
    const di_spec *s = di_spec_find(m->op);
    di_specialization p;
    di_spec_defaults(s, &p);
    di_err e = {0};
    for (int i = 0; i < 4 && m->dims[i]; i++) cr_assert_eq(di_spec_set_dim(s, &p, m->dims[i], m->vals[i], &e), 0, "%s", e.msg);
    p.profile = prof;
    return p;
}

static di_plan plan_at(const di_spec *s, const di_specialization *p, const di_target *t, long rows)
{
    di_plan pl;
    di_err e = {0};
    long sizes[2] = {rows, 16};
    cr_assert_eq(di_lowering_for(s, p, t)->plan(s, p, t, sizes, &pl, &e), 0, "%s rows %ld: %s", s->name, rows, e.msg);
    return pl;
}

/* Everything but grids, workspace, TMA boxes and the mode arguments must match. */
static void same_wiring(const di_spec *s, const di_launch *a, const di_launch *b, long rows, const char *what)
{
    cr_assert_eq(a->run, b->run, "%s %s rows %ld: launch kind", what, s->name, rows);
    cr_assert_eq(a->index, b->index, "%s %s rows %ld: entry or dependency", what, s->name, rows);
    cr_assert(!memcmp(a->block, b->block, sizeof a->block), "%s %s rows %ld: block", what, s->name, rows);
    cr_assert_eq(a->smem, b->smem, "%s %s rows %ld: shared memory", what, s->name, rows);
    cr_assert_eq(a->nargs, b->nargs, "%s %s rows %ld: argument count", what, s->name, rows);
    for (int i = 0; i < a->nargs; i++) {
        const di_pa *x = &a->args[i], *y = &b->args[i];
        cr_assert_eq(x->kind, y->kind, "%s %s rows %ld: argument %d kind", what, s->name, rows, i);
        if (x->kind == DI_A_ARG || x->kind == DI_A_SIZE || x->kind == DI_A_TMAP)
            cr_assert_eq(x->index, y->index, "%s %s rows %ld: argument %d wiring", what, s->name, rows, i);
        if (x->kind == DI_A_TMAP)
            cr_assert(x->cols == y->cols && x->box_cols == y->box_cols, "%s %s rows %ld: TMA box", what, s->name, rows);
    }
}

static void check_invariant_plans(di_profile prof, const di_target *t)
{
    for (int i = 0; i < NOPS; i++) {
        const di_spec *s = di_spec_find(ops[i].op);
        di_specialization p = spec_of(&ops[i], prof);
        const di_lowering *lw = di_lowering_for(s, &p, t);
        bool modes = lw == &di_lowering_matmul_fast || lw == &di_lowering_attention_fast;
        di_plan ref = plan_at(s, &p, t, 1);
        cr_assert(ref.n >= 1, "%s: no launch at one row", s->name);
        for (long rows = 2; rows <= 300; rows++) {
            di_plan pl = plan_at(s, &p, t, rows);
            /* a fast lowering may add or drop its second phase (fused vs split sum, fold vs split KV) */
            cr_assert(pl.n == ref.n || (modes && pl.n >= 1 && pl.n <= 2), "%s %s rows %ld: %d launches, %d at one row",
                      di_profile_name(prof), s->name, rows, pl.n, ref.n);
            int n = pl.n < ref.n ? pl.n : ref.n;
            for (int l = 0; l < n; l++) same_wiring(s, &pl.l[l], &ref.l[l], rows, di_profile_name(prof));
        }
    }
}

Test(lowering, exact_and_fast_plans_differ_only_in_grids)
{
    di_target c = di_target_c(), cuda = di_target_cuda_default(), other = cuda;
    snprintf(other.arch, sizeof other.arch, "sm_80");
    check_invariant_plans(DI_PROFILE_EXACT, &c);
    check_invariant_plans(DI_PROFILE_EXACT, &cuda);
    check_invariant_plans(DI_PROFILE_FAST, &cuda);
    check_invariant_plans(DI_PROFILE_FAST, &other);
}

/* Packed w in fast: launches of at most few_rows rows take the few-rows tile (an entry per 8
 * rows of width), every other launch the large tile. Within each of those buckets only grids,
 * workspace, TMA boxes and modes differ; gpu_fast's packed_w_matmul_equals_bf16_w_bitwise shows
 * the buckets give the large tile's bits. */
Test(lowering, fast_packed_plans_change_tile_only_at_few_rows)
{
    di_target cuda = di_target_cuda_default();
    const struct { const char *op; long k, n; di_dtype w; } cases[] = {
        {"matmul", 4096, 6144, DI_Q4X8}, {"matmul_residual", 14336, 4096, DI_Q8X8}, {"matmul", 96, 40, DI_Q8X8}};
    for (int i = 0; i < 3; i++) {
        const di_spec *s = di_spec_find(cases[i].op);
        model_op m = {cases[i].op, {"K", "N"}, {cases[i].k, cases[i].n}};
        di_specialization p = spec_of(&m, DI_PROFILE_FAST);
        p.dtypes[di_spec_arg(s, "w")] = cases[i].w;
        p.dtypes[di_spec_arg(s, "x")] = DI_BF16;
        const di_lowering *lw = di_lowering_for(s, &p, &cuda);
        cr_assert_eq(lw, &di_lowering_matmul_fast, "%s: %s", s->name, lw->name);
        int few = di_mm_schedule_of(&p, &cuda).few_rows;
        cr_assert_eq(few, 32, "the sm_90a schedule's few_rows");
        /* first[b]: rows 8b + 1, the first of bucket b (b = 4: past few_rows, the large tile) */
        di_plan first[5];
        for (int b = 0; b < 5; b++) {
            first[b] = plan_at(s, &p, &cuda, 8 * b + 1);
            cr_assert_eq(first[b].l[0].index, b < 4 ? 2 + b : 0, "%s: %d rows run entry %d", s->name, 8 * b + 1,
                         first[b].l[0].index);
        }
        for (long rows = 2; rows <= 300; rows++) {
            const di_plan *ref = &first[rows <= few ? (rows - 1) / 8 : 4];
            di_plan pl = plan_at(s, &p, &cuda, rows);
            cr_assert(pl.n >= 1 && pl.n <= 2, "%s rows %ld: %d launches", s->name, rows, pl.n);
            int n = pl.n < ref->n ? pl.n : ref->n;
            for (int l = 0; l < n; l++) same_wiring(s, &pl.l[l], &ref->l[l], rows, "fast packed");
        }
    }
}

/* The negative control: the vendor dispatchers pick another variant as the rows grow. */
Test(lowering, vendor_plans_follow_the_rows)
{
    di_target c = di_target_c(), cuda = di_target_cuda_default(), lt = cuda;
    lt.cublaslt = true;
    const struct { const di_target *t; const char *op; const di_lowering *want; } cases[] = {
        {&c, "matmul", &di_lowering_vendor_ksplits},
        {&cuda, "matmul", &di_lowering_vendor_ksplits},
        {&cuda, "attention", &di_lowering_vendor_kv_split},
        {&lt, "matmul", &di_lowering_vendor_cublaslt},
    };
    for (int i = 0; i < 4; i++) {
        const di_spec *s = di_spec_find(cases[i].op);
        di_specialization p = spec_of(&ops[!strcmp(cases[i].op, "matmul") ? 2 : 5], DI_PROFILE_VENDOR);
        cr_assert_eq(di_lowering_for(s, &p, cases[i].t), cases[i].want, "%s: %s", cases[i].op,
                     di_lowering_for(s, &p, cases[i].t)->name);
        if (cases[i].want == &di_lowering_vendor_cublaslt) continue;   /* the library chooses per M, not we */
        int seen[DI_MAX_DEPS] = {0}, distinct = 0;
        for (long rows = 1; rows <= 300; rows++) {
            di_plan pl = plan_at(s, &p, cases[i].t, rows);
            cr_assert_eq(pl.n, 1);
            cr_assert_eq(pl.l[0].run, DI_RUN_DEP);
            distinct += !seen[pl.l[0].index]++;
        }
        cr_assert_geq(distinct, 3, "%s vendor: only %d variants over rows 1..300", cases[i].op, distinct);
    }
}

/* Every spec at model and default specializations, every backend and profile it has: the
 * sources of a second pass in the opposite order equal the first pass's, byte for byte. */
Test(lowering, sources_do_not_depend_on_what_was_generated_before)
{
    const di_target targets[] = {di_target_c(), di_target_cuda_default()};
    enum { N = NOPS * 2 * 3 };
    char *first[N] = {0};
    for (int pass = 0; pass < 2; pass++)
        for (int j = 0; j < N; j++) {
            int k = pass ? N - 1 - j : j, op = k / 6, t = k / 3 % 2;
            di_profile prof = (di_profile)(k % 3);
            if (t == 0 && prof == DI_PROFILE_FAST) continue;
            const di_spec *s = di_spec_find(ops[op].op);
            di_specialization p = spec_of(&ops[op], prof);
            char *src = NULL;
            di_err e = {0};
            cr_assert_eq(di_rt_source_for(s, &p, &targets[t], &src, &e), 0, "%s: %s", s->name, e.msg);
            if (!pass) { first[k] = src; continue; }
            cr_assert_str_eq(src, first[k], "%s (%s, %s): another order, other bytes", s->name, di_profile_name(prof),
                             t ? "cuda" : "c");
            free(src);
            free(first[k]);
        }
}

/* Every CUDA entry of every lowering waits for the kernel before it (DI_GRID_ENTRY): the runtime
 * launches them all with programmatic stream serialization (runtime/cuda.c), which is only safe
 * for a kernel that waits. Most open with it; the fast matmul's warp-specialized and few-rows
 * bodies call it in each role once their loader has issued the first stages of w (no kernel
 * writes weights). Every op at model and default specializations in each profile, and the fast
 * matmul with packed w (its few-rows entries). */
static int entries_checked(const di_spec *s, const di_specialization *p, const di_target *t)
{
    char *src = NULL;
    di_err e = {0};
    cr_assert_eq(di_rt_source_for(s, p, t, &src, &e), 0, "%s: %s", s->name, e.msg);
    int n = 0, opening = 0;
    for (const char *at = strstr(src, "__global__"); at; at = strstr(at + 1, "__global__"), n++) {
        const char *open = strstr(at, ")\n{\n"), *end = open ? strstr(open, "\n}\n") : NULL;
        cr_assert(open && end, "%s (%s): an entry without a body", s->name, di_profile_name(p->profile));
        const char *wait = strstr(open, "DI_GRID_ENTRY();");
        cr_assert(wait && wait < end, "%s (%s): entry %d never waits (DI_GRID_ENTRY)", s->name,
                  di_profile_name(p->profile), n);
        opening += !strncmp(open + 4, "    DI_GRID_ENTRY();\n", 21);
    }
    /* only the fast matmul's phase 1 and few-rows entries wait later */
    if (di_lowering_for(s, p, t) != &di_lowering_matmul_fast)
        cr_assert_eq(opening, n, "%s (%s): %d of %d entries open with DI_GRID_ENTRY", s->name,
                     di_profile_name(p->profile), opening, n);
    free(src);
    return n;
}

Test(lowering, every_cuda_entry_waits_for_the_kernel_before_it)
{
    const di_target cuda = di_target_cuda_default();
    int entries = 0;
    for (int i = 0; i < NOPS; i++)
        for (int prof = 0; prof < 3; prof++) {
            di_specialization p = spec_of(&ops[i], (di_profile)prof);
            entries += entries_checked(di_spec_find(ops[i].op), &p, &cuda);
        }
    const di_dtype packed[] = {DI_Q4X8, DI_Q8X8, DI_Q4X8H, DI_Q8X8H};
    for (int i = 0; i < 4; i++) {
        model_op m = {"matmul_residual", {"K", "N"}, {4096, 6144}};
        const di_spec *s = di_spec_find(m.op);
        di_specialization p = spec_of(&m, DI_PROFILE_FAST);
        p.dtypes[di_spec_arg(s, "w")] = packed[i];
        p.dtypes[di_spec_arg(s, "x")] = DI_BF16;
        int n = entries_checked(s, &p, &cuda);
        cr_assert_geq(n, 6, "packed fast matmul: %d entries (phase 1, phase 2, four few-rows)", n);
        entries += n;
    }
    cr_assert_geq(entries, 3 * NOPS, "only %d entries seen", entries);
}

/* The profile table is the one place profile names live. */
Test(lowering, profiles_parse_from_the_table_only)
{
    for (int i = 0; i < DI_NUM_PROFILES; i++) {
        di_profile p;
        cr_assert(di_profile_parse(di_profile_name((di_profile)i), &p) && p == (di_profile)i);
        cr_assert(strstr(di_profile_choices(), di_profile_name((di_profile)i)));
    }
    di_profile p;
    cr_assert_not(di_profile_parse("fsat", &p), "a typo is no profile");
    cr_assert_not(di_profile_parse("", &p));
    cr_assert_not(di_profile_parse(NULL, &p));
    cr_assert_eq(di_profile_backends(DI_PROFILE_FAST), DI_ON_CUDA);
    di_rt_opts o = {.backend = DI_BACKEND_C, .profile = DI_PROFILE_FAST};
    di_rt *rt;
    di_err e = {0};
    cr_assert_eq(di_rt_open(&o, &rt, &e), DI_EUSAGE, "fast on the CPU");
    cr_assert(strstr(e.msg, "fast") && strstr(e.msg, "GPU"), "%s", e.msg);
}
