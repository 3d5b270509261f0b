/* The two CPU compiler tiers give the same bits: every spec, at the specializations the suites
 * and the models use (SmolLM2's dims, the tiny random model's, the odd shapes of the ops suite,
 * the dtype variants, the vendor profile's K splits), on random inputs at row counts that reach
 * every path of the C matmul (1 and 3 rows: weights read in place; 4, 5, 32, 33, 70: the tile,
 * one and several row blocks with tails), built by libtcc and by cc, compared output for output.
 * libtcc takes the direct matmul path at every row count, so from 4 rows on this also proves
 * that the tile path keeps each output's order. */
#include "tests/helpers.h"
#include "runtime/cc.h"

enum { SEQS = 2, MAXB = 4, BLOCKS = SEQS * MAXB };

static di_rt *tier_rt(di_cpu_compiler c, di_profile profile)
{
    di_rt_opts o = {.backend = DI_BACKEND_C, .profile = profile, .threads = 2, .cpu_compiler = c};
    di_rt *rt = NULL;
    di_err e = {0};
    cr_assert_eq(di_rt_open(&o, &rt, &e), 0, "%s runtime: %s", di_cpu_compiler_name(c), e.msg);
    cr_assert_eq(di_rt_cpu_compiler(rt), c, "asked for %s", di_cpu_compiler_name(c));
    return rt;
}

/* Elements of an argument: its shape's dims, with the runtime names given values here. */
static long arg_elems(const di_spec *s, const di_specialization *p, const di_arg *a, long rows)
{
    if (a->role == DI_ROLE_SCALAR) return 1;
    long n = 1;
    char shape[256];
    snprintf(shape, sizeof shape, "%s", a->shape);
    for (char *save = NULL, *tok = strtok_r(shape, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        long v;
        di_err e = {0};
        if (!strcmp(tok, "rows") || !strcmp(tok, "n")) v = rows;
        else if (!strcmp(tok, "blocks")) v = BLOCKS;
        else if (!strcmp(tok, "seqs")) v = SEQS;
        else if (!strcmp(tok, "maxb")) v = MAXB;
        else if (!strcmp(tok, "KVB")) v = s->sched.kv_block;
        else cr_assert_eq(di_eval_expr(s, p, tok, &v, &e), 0, "%s.%s: %s", s->name, a->name, e.msg);
        n *= v;
    }
    return n;
}

/* Inputs every kernel can take: indices in range, positions inside each sequence's blocks. */
static void fill_arg(const di_spec *s, const di_specialization *p, int i, void *data, long n, long rows, uint64_t seed)
{
    const di_arg *a = &s->args[i];
    di_dtype t = p->dtypes[i];
    if (t == DI_F32) {
        th_fill(data, (size_t)n, seed);
        if (!strcmp(s->name, "log_softmax") || !strcmp(s->name, "argmax"))
            for (long j = 0; j < n; j++) ((float *)data)[j] *= 12.0f;
    } else if (t == DI_BF16) {
        uint16_t *h = data;
        for (long j = 0; j < n; j++) h[j] = th_bf16(th_uniform(&seed));
    } else {
        int *v = data;
        long kvb = di_rt_kv_block(), ctx = di_spec_dim(s, p, "CTX"), vocab = di_spec_dim(s, p, "V");
        long range = ctx > 0 && ctx < MAXB * kvb ? ctx : MAXB * kvb, r0 = (long)(seed % (uint64_t)range);
        for (long j = 0; j < n; j++) {
            uint64_t r = th_next(&seed);
            if (!strcmp(a->name, "btab")) v[j] = (int)j;                    /* sequence q owns blocks [q*MAXB, ..) */
            else if (!strcmp(a->name, "seq")) v[j] = (int)(r % SEQS);
            else if (!strcmp(a->name, "pos")) {
                /* distinct positions (7919 is prime to the range), so no two rows write one KV slot:
                 * rows that did would leave whichever thread wrote last, in either tier */
                v[j] = (int)((r0 + j * 7919L) % range);
            }
            else if (!strcmp(a->name, "tok")) v[j] = (int)(r % (unsigned long)vocab);
            else if (!strcmp(a->name, "src")) v[j] = (int)(r % (unsigned long)rows);
            else v[j] = 0;
        }
    }
}

typedef struct case_ {
    const char *spec;
    const char *dims[6];
    long values[6];
    const char *dtype_arg;     /* an argument specialized to dtype, or NULL */
    di_dtype dtype;
} case_;

/* Builds (s, p) on both runtimes, runs it on the same inputs at each row count, compares. */
static void compare(di_rt *a, di_rt *b, const di_spec *s, const di_specialization *p, const long *row_counts, int nrc)
{
    di_kernel *ka, *kb;
    di_err e = {0};
    cr_assert_eq(di_rt_kernel(a, s, p, &ka, &e), 0, "tcc, %s: %s", s->name, e.msg);
    cr_assert_eq(di_rt_kernel(b, s, p, &kb, &e), 0, "cc, %s: %s", s->name, e.msg);
    int nargs = 0;
    while (nargs < DI_MAX_ARGS && s->args[nargs].name) nargs++;
    for (int rc = 0; rc < nrc; rc++) {
        long rows = row_counts[rc], sizes[DI_MAX_SIZES] = {rows, MAXB, 0, 0};
        void *host[DI_MAX_ARGS] = {0}, *out[DI_MAX_ARGS] = {0};
        size_t bytes[DI_MAX_ARGS] = {0};
        di_val va[DI_MAX_ARGS], vb[DI_MAX_ARGS];
        di_buf *ba[DI_MAX_ARGS] = {0}, *bb[DI_MAX_ARGS] = {0};
        for (int i = 0; i < nargs; i++) {
            const di_arg *ar = &s->args[i];
            if (ar->role == DI_ROLE_SCALAR) {
                if (p->dtypes[i] == DI_I32) va[i].i32 = vb[i].i32 = 3;
                else va[i].f32 = vb[i].f32 = 1e-5f;
                continue;
            }
            long n = arg_elems(s, p, ar, rows);
            bytes[i] = (size_t)n * di_dtype_size(p->dtypes[i]);
            host[i] = malloc(bytes[i] ? bytes[i] : 1);
            out[i] = malloc(bytes[i] ? bytes[i] : 1);
            fill_arg(s, p, i, host[i], n, rows, 1000u * (uint64_t)i + (uint64_t)rows);
            va[i].buf = ba[i] = th_buf(a, host[i], bytes[i] ? bytes[i] : 1);
            vb[i].buf = bb[i] = th_buf(b, host[i], bytes[i] ? bytes[i] : 1);
        }
        th_launch(a, ka, va, sizes);
        th_launch(b, kb, vb, sizes);
        for (int i = 0; i < nargs; i++) {
            if (s->args[i].role == DI_ROLE_IN || s->args[i].role == DI_ROLE_SCALAR) continue;
            th_read(ba[i], host[i], bytes[i]);
            th_read(bb[i], out[i], bytes[i]);
            size_t es = di_dtype_size(p->dtypes[i]), first = 0, ndiff = 0;
            for (size_t j = 0; j < bytes[i] / es; j++)
                if (memcmp((char *)host[i] + j * es, (char *)out[i] + j * es, es) && !ndiff++) first = j;
            cr_assert_eq(ndiff, 0, "%s (%s profile), %ld rows: %zu of %zu %s elements differ between libtcc and cc "
                         "(first at %zu)", s->name, di_profile_name(p->profile), rows, ndiff, bytes[i] / es,
                         s->args[i].name, first);
        }
        for (int i = 0; i < nargs; i++) {
            if (ba[i]) di_buf_free(ba[i]);
            if (bb[i]) di_buf_free(bb[i]);
            free(host[i]);
            free(out[i]);
        }
    }
}

static const long ROWS[] = {1, 3, 4, 5, 32, 33, 70};
static const long FEW_ROWS[] = {1, 5};

static void compare_case(di_rt *a, di_rt *b, const case_ *c, di_profile profile, int ksplits)
{
    const di_spec *s = di_spec_find(c->spec);
    cr_assert_not_null(s, "no spec %s", c->spec);
    di_specialization p;
    di_spec_defaults(s, &p);
    p.profile = profile;
    p.ksplits = ksplits;
    di_err e = {0};
    for (int i = 0; i < 6 && c->dims[i]; i++)
        if (di_spec_dim(s, &p, c->dims[i]) > 0)
            cr_assert_eq(di_spec_set_dim(s, &p, c->dims[i], c->values[i], &e), 0, "%s", e.msg);
    if (c->dtype_arg) cr_assert_eq(di_spec_set_dtype(s, &p, c->dtype_arg, c->dtype, &e), 0, "%s", e.msg);
    bool big = s->cls == DI_MATMUL && di_spec_dim(s, &p, "N") > 10000;
    compare(a, b, s, &p, big ? FEW_ROWS : ROWS, big ? 2 : 7);
}

static void skip_without_cc(void)
{
    di_err e = {0};
    if (!di_cc_available(&e)) cr_skip_test("%s", e.msg);
}

/* Every spec at SmolLM2's dims (the defaults) and the tiny random model's. */
Test(tiers, every_spec_same_bits_under_tcc_and_cc, .timeout = 900)
{
    skip_without_cc();
    di_rt *a = tier_rt(DI_CPU_COMPILER_TCC, DI_PROFILE_EXACT), *b = tier_rt(DI_CPU_COMPILER_CC, DI_PROFILE_EXACT);
    for (int i = 0; i < DI_NUM_OPS; i++) {
        case_ smol = {di_specs[i].name, {NULL}, {0}, NULL, 0};
        compare_case(a, b, &smol, DI_PROFILE_EXACT, 0);
        case_ tiny = {di_specs[i].name, {"D", "NH", "NKV", "HD", "V", "F"}, {128, 4, 2, 32, 512, 256}, NULL, 0};
        compare_case(a, b, &tiny, DI_PROFILE_EXACT, 0);
    }
    di_rt_close(a);
    di_rt_close(b);
}

/* The matmul shapes of the models and of the ops suite, and its dtype variants. */
Test(tiers, matmul_shapes_and_dtypes_same_bits_under_tcc_and_cc, .timeout = 900)
{
    skip_without_cc();
    di_rt *a = tier_rt(DI_CPU_COMPILER_TCC, DI_PROFILE_EXACT), *b = tier_rt(DI_CPU_COMPILER_CC, DI_PROFILE_EXACT);
    static const long shapes[][2] = {{576, 960}, {576, 576}, {576, 3072}, {1536, 576}, {576, 49152}, {128, 256},
                                     {128, 512}, {256, 128}, {100, 37}, {64, 33}, {130, 70}, {96, 45}, {33, 5}, {1, 3}};
    const char *specs[] = {"matmul", "matmul_residual"};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int j = 0; j < 2; j++) {
            case_ c = {specs[j], {"K", "N"}, {shapes[i][0], shapes[i][1]}, NULL, 0};
            compare_case(a, b, &c, DI_PROFILE_EXACT, 0);
        }
    struct { const char *arg; di_dtype t; } variants[] = {{"x", DI_BF16}, {"y", DI_BF16}, {"w", DI_F32}};
    static const long vshapes[][2] = {{100, 37}, {130, 70}, {576, 960}, {33, 5}};
    for (size_t v = 0; v < 3; v++)
        for (size_t i = 0; i < sizeof vshapes / sizeof vshapes[0]; i++) {
            case_ c = {"matmul", {"K", "N"}, {vshapes[i][0], vshapes[i][1]}, variants[v].arg, variants[v].t};
            compare_case(a, b, &c, DI_PROFILE_EXACT, 0);
        }
    di_rt_close(a);
    di_rt_close(b);
}

/* The vendor profile: its row-count-chosen K split counts (odd chunk lengths included) are
 * still one order per (count, output), and the tiers must agree on each. */
Test(tiers, vendor_ksplits_same_bits_under_tcc_and_cc, .timeout = 600)
{
    skip_without_cc();
    di_rt *a = tier_rt(DI_CPU_COMPILER_TCC, DI_PROFILE_VENDOR), *b = tier_rt(DI_CPU_COMPILER_CC, DI_PROFILE_VENDOR);
    static const long shapes[][2] = {{576, 576}, {100, 37}, {1536, 576}};
    static const int ks[] = {1, 2, 3, 4, 8};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (size_t k = 0; k < sizeof ks / sizeof ks[0]; k++) {
            case_ c = {"matmul", {"K", "N"}, {shapes[i][0], shapes[i][1]}, NULL, 0};
            compare_case(a, b, &c, DI_PROFILE_VENDOR, ks[k]);
        }
    /* and the vendor lowering itself, which picks the count from the rows */
    case_ c = {"matmul_residual", {"K", "N"}, {576, 576}, NULL, 0};
    compare_case(a, b, &c, DI_PROFILE_VENDOR, 0);
    di_rt_close(a);
    di_rt_close(b);
}

Test(tiers, cpu_compiler_names_parse_and_bad_ones_fail)
{
    di_cpu_compiler c;
    cr_assert(di_cpu_compiler_parse("tcc", &c) && c == DI_CPU_COMPILER_TCC);
    cr_assert(di_cpu_compiler_parse("cc", &c) && c == DI_CPU_COMPILER_CC);
    cr_assert(di_cpu_compiler_parse("auto", &c) && c == DI_CPU_COMPILER_AUTO);
    cr_assert(!di_cpu_compiler_parse("gcc", &c));
    /* a compiler that is not there: cc fails as a usage error naming it, auto falls back */
    setenv("DETINFER_CC", "/nonexistent/cc", 1);
    di_rt_opts o = {.backend = DI_BACKEND_C, .threads = 1, .cpu_compiler = DI_CPU_COMPILER_CC};
    di_rt *rt = NULL;
    di_err e = {0};
    /* the probe runs once per process: only meaningful if nothing probed before (own process) */
    int rc = di_rt_open(&o, &rt, &e);
    if (rc == 0) {
        di_rt_close(rt);
        cr_skip_test("the compiler was probed before DETINFER_CC was set in this process");
    }
    cr_assert_eq(rc, DI_EUSAGE, "%s", e.msg);
    cr_assert(strstr(e.msg, "cc") && strstr(e.msg, "/nonexistent/cc"), "%s", e.msg);
    o.cpu_compiler = DI_CPU_COMPILER_AUTO;
    cr_assert_eq(di_rt_open(&o, &rt, &e), 0, "%s", e.msg);
    cr_assert_eq(di_rt_cpu_compiler(rt), DI_CPU_COMPILER_TCC, "auto without a compiler is libtcc");
    cr_assert(strstr(di_rt_describe(rt), "libtcc"), "%s", di_rt_describe(rt));
    di_rt_close(rt);
    unsetenv("DETINFER_CC");
}
