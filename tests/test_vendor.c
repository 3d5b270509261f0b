/* The vendor profile: the deliberately non-invariant reference, and so the negative control of
 * every invariance check. Where exact gives one row the same bits whatever the batch, vendor
 * must not (or the invariance tests could be passing because they cannot fail), while staying
 * as accurate as any engine.
 *   CPU: the split-count override is vendor-only and leaves exact/fast names and sources
 *   alone; a matmul row's bits change with the row count (K split count 8/4/2/1 chosen from
 *   rows) while exact's do not; accuracy against float64; the model's request digest alone vs
 *   in a batch of 8 differs under vendor and is equal under exact.
 *   GPU (skipped without one): the cuBLASLt matmul against float64, its row bits across M. */
#include "model_fixture.h"
#include "vendor/vendor.h"
#include "codegen/codegen.h"
#include "vendor/cublaslt.h"

static di_rt *vendor_rt(di_backend_kind b, int threads)
{
    di_rt_opts o = {.backend = b, .profile = DI_PROFILE_VENDOR, .threads = threads};
    di_rt *rt = NULL;
    di_err e = {0};
    cr_assert_eq(di_rt_open(&o, &rt, &e), 0, "vendor runtime: %s", e.msg);
    return rt;
}

/* ---- the specialization override ---------------------------------------------------------- */

Test(vendor, split_override_is_vendor_only_and_names_stay)
{
    const di_spec *mm = di_spec_find("matmul"), *rms = di_spec_find("rmsnorm");
    di_specialization p = th_spec("matmul", "K", 576L, "N", 576L, NULL);
    char name[256];
    di_err e = {0};
    di_target ct = di_target_cuda_default();
    di_kernel_name(mm, &p, &ct, name, sizeof name);
    cr_assert_str_eq(name, "matmul__K576_N576", "exact names must not change");
    p.profile = DI_PROFILE_FAST;
    di_kernel_name(mm, &p, &ct, name, sizeof name);
    cr_assert_str_eq(name, "matmul__K576_N576_fast");

    for (int prof = DI_PROFILE_EXACT; prof <= DI_PROFILE_FAST; prof++) {
        p.profile = (di_profile)prof;
        p.ksplits = 4;
        cr_assert_eq(di_specialization_check(mm, &p, &e), DI_ESPEC, "%s accepted a split count", di_profile_name(p.profile));
        cr_assert(strstr(e.msg, "vendor") && strstr(e.msg, "spec matmul"), "%s", e.msg);
    }
    p.profile = DI_PROFILE_VENDOR;
    cr_assert_eq(di_specialization_check(mm, &p, &e), 0, "%s", e.msg);
    di_kernel_name(mm, &p, &ct, name, sizeof name);
    cr_assert_str_eq(name, "matmul__K576_N576_vendor_ks4");
    p.ksplits = 577;
    cr_assert_eq(di_specialization_check(mm, &p, &e), DI_ESPEC, "more splits than K");
    di_specialization r;
    di_spec_defaults(rms, &r);
    r.profile = DI_PROFILE_VENDOR;
    r.ksplits = 2;
    cr_assert_eq(di_specialization_check(rms, &r, &e), DI_ESPEC, "a split count on a row reduce");

    /* the override is what changes in the source: SPLIT = ceil(576 / 8) = 72 */
    p.ksplits = 8;
    char *src = NULL;
    cr_assert_eq(di_rt_source(mm, &p, DI_BACKEND_C, &src, &e), 0, "%s", e.msg);
    cr_assert(strstr(src, "#define SPLIT 72L") && strstr(src, "vendor profile"), "vendor source lacks its split");
    free(src);
    /* and the exact source has no trace of it */
    p.profile = DI_PROFILE_EXACT;
    p.ksplits = 0;
    cr_assert_eq(di_rt_source(mm, &p, DI_BACKEND_C, &src, &e), 0, "%s", e.msg);
    cr_assert(strstr(src, "#define SPLIT 64L\n") && strstr(src, "exact profile") && !strstr(src, "vendor"));
    free(src);
}

Test(vendor, cpu_runtime_accepts_vendor_and_names_it)
{
    di_rt *rt = vendor_rt(DI_BACKEND_C, 1);
    cr_assert(strstr(di_rt_describe(rt), "vendor profile"), "%s", di_rt_describe(rt));
    di_rt_close(rt);
    di_rt_opts o = {.backend = DI_BACKEND_C, .profile = DI_PROFILE_FAST, .threads = 1};
    di_err e = {0};
    cr_assert_eq(di_rt_open(&o, &rt, &e), DI_EUSAGE, "the CPU has no fast profile");
    cr_assert(strstr(e.msg, "fast"), "%s", e.msg);
}

/* ---- op level, CPU -------------------------------------------------------------------------- */

enum { K = 1536, N = 256, PROBE = 4242 };
static const long batches[] = {1, 16, 64, 257};   /* 8, 4, 2 and 1 K splits */
#define NB (sizeof batches / sizeof batches[0])

static uint16_t *weights(void)
{
    uint16_t *w = malloc(sizeof(uint16_t) * N * K);
    uint64_t s = 77;
    for (long i = 0; i < (long)N * K; i++) w[i] = th_bf16(th_uniform(&s));
    return w;
}

/* Runs `spec` (matmul, or matmul_residual in place on y = res) with the probe row at
 * `at` of `rows`, the others random; returns the probe row's outputs. */
static void run_row(di_rt *rt, const char *spec, const di_specialization *p, const uint16_t *w, long rows, long at,
                    const float *res_row, float *out)
{
    float *x = malloc(sizeof(float) * rows * K), *y = calloc((size_t)rows * N, sizeof(float));
    th_fill(x, (size_t)rows * K, 1000 + rows);
    th_fill(x + at * K, K, PROBE);
    if (res_row) {
        th_fill(y, (size_t)rows * N, 5000 + rows);
        memcpy(y + at * N, res_row, sizeof(float) * N);
    }
    di_buf *bx = th_buf(rt, x, sizeof(float) * rows * K), *bw = th_buf(rt, w, sizeof(uint16_t) * N * K);
    di_buf *by = th_buf(rt, y, sizeof(float) * rows * N);
    di_val a[] = {{.buf = by}, {.buf = bx}, {.buf = bw}, {.buf = by}};
    th_launch(rt, th_kernel(rt, spec, p), a, (long[]){rows});
    th_read(by, y, sizeof(float) * rows * N);
    memcpy(out, y + at * N, sizeof(float) * N);
    di_buf_free(bx); di_buf_free(bw); di_buf_free(by);
    free(x); free(y);
}

static long count_diff(const float *a, const float *b, long n)
{
    long d = 0;
    for (long i = 0; i < n; i++) d += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return d;
}

/* Largest |y - ref| / sum |x w| over the row, against a float64 dot product of the same inputs. */
static double row_error(const float *y, const uint16_t *w)
{
    float x[K];
    th_fill(x, K, PROBE);
    double worst = 0;
    for (long n = 0; n < N; n++) {
        double ref = 0, mag = 0;
        for (long k = 0; k < K; k++) {
            double t = (double)x[k] * th_from_bf16(w[n * K + k]);
            ref += t;
            mag += fabs(t);
        }
        double r = fabs(y[n] - ref) / mag;
        if (!(r <= worst)) worst = r;
    }
    return worst;
}

Test(vendor, cpu_matmul_row_bits_follow_the_batch_exact_do_not, .timeout = 120)
{
    uint16_t *w = weights();
    di_rt *vrt = vendor_rt(DI_BACKEND_C, 2), *ert = th_rt(DI_BACKEND_C, 2);
    di_specialization p = th_spec("matmul", "K", (long)K, "N", (long)N, NULL);
    float vrow[NB][N], erow[NB][N];
    /* the policy: a different split count for every batch size here */
    for (size_t i = 0; i < NB; i++) {
        int ks = di_vendor_matmul_ksplits(batches[i]);
        cr_assert_eq(ks, 8 >> i, "rows %ld: %d K splits", batches[i], ks);
        long at = batches[i] / 3;
        run_row(vrt, "matmul", &p, w, batches[i], at, NULL, vrow[i]);
        run_row(ert, "matmul", &p, w, batches[i], at, NULL, erow[i]);
        double ve = row_error(vrow[i], w), ee = row_error(erow[i], w);
        fprintf(stderr, "vendor: K=%d rows %3ld -> %d K splits of %d; max |y - ref| / sum|x w|: vendor %.2e, exact %.2e\n",
                K, batches[i], ks, (K + ks - 1) / ks, ve, ee);
        /* fp32 chains of <= K terms: the worst case is (K + 1) * 2^-24 ~ 9e-5; random data sits near 1e-7 */
        cr_assert(ve < 1e-6 && ee < 1e-6, "rows %ld: error vendor %.3g exact %.3g", batches[i], ve, ee);
    }
    for (size_t i = 1; i < NB; i++) {
        long d = count_diff(vrow[i], vrow[0], N);
        fprintf(stderr, "vendor: probe row in %ld rows vs alone: %ld of %d outputs differ in bits (exact: %ld)\n",
                batches[i], d, N, count_diff(erow[i], erow[0], N));
        cr_assert_gt(d, 0, "vendor: rows=%ld gave the same bits as rows=1 (the negative control cannot fail)", batches[i]);
        cr_assert(th_bits_equal(erow[i], erow[0], N), "exact: rows=%ld differs from rows=1", batches[i]);
    }
    /* the dispatcher runs the variant the policy names: rows=1 == the ks=8 kernel launched alone */
    di_specialization v8 = p, v1 = p;
    v8.ksplits = 8;
    v1.ksplits = 1;
    float direct[N];
    run_row(vrt, "matmul", &v8, w, 3, 1, NULL, direct);
    cr_assert(th_bits_equal(direct, vrow[0], N), "rows=1 did not take the 8-split variant");
    run_row(vrt, "matmul", &v1, w, 3, 1, NULL, direct);
    cr_assert(th_bits_equal(direct, vrow[NB - 1], N), "rows=257 did not take the 1-split variant");
    di_rt_close(vrt);
    di_rt_close(ert);
    free(w);
}

/* matmul_residual in place (h += x . w^T) takes the same variant: its row is matmul's + res. */
Test(vendor, cpu_matmul_residual_in_place_is_matmul_plus_res, .timeout = 60)
{
    uint16_t *w = weights();
    di_rt *rt = vendor_rt(DI_BACKEND_C, 2);
    di_specialization p = th_spec("matmul", "K", (long)K, "N", (long)N, NULL);
    di_specialization q = th_spec("matmul_residual", "K", (long)K, "N", (long)N, NULL);
    float res[N], plain[N], fused[N];
    th_fill(res, N, 31);
    const long rows[] = {2, 40};
    for (int i = 0; i < 2; i++) {
        run_row(rt, "matmul", &p, w, rows[i], 1, NULL, plain);
        run_row(rt, "matmul_residual", &q, w, rows[i], 1, res, fused);
        for (long n = 0; n < N; n++) {
            float want = plain[n] + res[n];
            cr_assert(memcmp(&want, &fused[n], 4) == 0, "rows %ld n %ld: %a vs %a", rows[i], n, fused[n], want);
        }
    }
    di_rt_close(rt);
    free(w);
}

/* ---- model level ---------------------------------------------------------------------------- */

static const char *const prompts[8] = {
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village,",
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "List three colors:",
    "In 1969, the first person to walk on the Moon was",
    "Water boils at",
    "Translate to French: Good morning, my friend.",
};
enum { NPRED = 8 };

typedef struct outcome { uint8_t digest[32]; int32_t first; float first_lp; int n_gen; } outcome;

/* Greedy, prompts[which[i]] as one batch; the outcome of line `want`. */
static outcome run_batch(fixture *f, const int *which, int n, int want)
{
    di_request r[8];
    di_request *rp[8];
    int32_t *ids[8];
    di_err e = {0};
    for (int i = 0; i < n; i++) {
        size_t len;
        cr_assert_eq(di_tokenize(f->tok, prompts[which[i]], strlen(prompts[which[i]]), false, &ids[i], &len, &e), 0);
        r[i] = (di_request){.prompt = ids[i], .n_prompt = (int)len, .n_predict = NPRED, .sampler = {0}};
        rp[i] = &r[i];
    }
    di_engine_opts o = {.max_batch_tokens = 256, .max_seqs = 8};
    cr_assert_eq(di_engine_run(f->m, rp, n, &o, NULL, &e), 0, "%s", e.msg);
    outcome out = {.first = r[want].tokens[0], .first_lp = r[want].logprobs[0], .n_gen = r[want].n_gen};
    memcpy(out.digest, r[want].digest, 32);
    for (int i = 0; i < n; i++) {
        di_request_release(&r[i]);
        free(ids[i]);
    }
    return out;
}

/* prompt 0 alone, and at line 3 of a batch of the 8 prompts */
static void alone_and_batched(di_profile profile, outcome *alone, outcome *batched)
{
    fixture f = fixture_open_profile(profile, 2, 256, 64, 8);
    *alone = run_batch(&f, (int[]){0}, 1, 0);
    *batched = run_batch(&f, (int[]){1, 2, 3, 0, 4, 5, 6, 7}, 8, 3);
    fixture_close(&f);
}

Test(vendor, model_digest_alone_vs_batch_differs_under_vendor_equal_under_exact, .timeout = 300)
{
    NEED_MODEL();
    outcome va, vb, ea, eb;
    alone_and_batched(DI_PROFILE_VENDOR, &va, &vb);
    alone_and_batched(DI_PROFILE_EXACT, &ea, &eb);
    cr_assert(va.n_gen > 0 && ea.n_gen > 0);
    cr_assert(memcmp(ea.digest, eb.digest, 32) == 0, "exact: the request's digest changed inside a batch of 8");
    /* still the same model: the greedy first token agrees, its log-prob within a rounding */
    cr_assert_eq(va.first, ea.first, "vendor's first token %d, exact's %d", va.first, ea.first);
    cr_assert(fabsf(va.first_lp - ea.first_lp) < 1e-3f, "first log-prob vendor %g exact %g", va.first_lp, ea.first_lp);
    fprintf(stderr, "vendor: first log-prob alone %a, in a batch %a; exact %a both\n", va.first_lp, vb.first_lp,
            ea.first_lp);
    /* Seen on an H100 (cuBLASLt 13.1): SmolLM2's matmuls (K 576 and 1536) came out batch invariant,
     * the digest alone equal to the digest in the batch, while cuBLASLt varied at K 4096 and 14336
     * (the op-level GPU test). There the GPU has no negative control at model level, and the test
     * says so (a skip with the reason) instead of passing. */
    const char *b = getenv("DETINFER_TEST_BACKEND");
    if (b && !strcmp(b, "cuda") && !memcmp(va.digest, vb.digest, 32))
        cr_skip_test("vendor on the GPU: cuBLASLt happened to be batch invariant for this model's shapes; exact "
                     "checked equal, vendor not a negative control here");
    cr_assert(memcmp(va.digest, vb.digest, 32) != 0,
              "vendor: the digest alone equals the digest in a batch of 8 (the negative control cannot fail)");
}

/* ---- GPU (skipped without one) ---------------------------------------------------------------- */

static di_rt *vendor_gpu_or_skip(void)
{
    di_rt *rt = th_gpu_rt_or_skip(DI_PROFILE_VENDOR);
    fprintf(stderr, "vendor gpu: %s\n", di_rt_describe(rt));
    return rt;
}

/* The loader alone needs no GPU: it opens, or says why not (naming cuBLASLt). */
Test(vendor, cublaslt_loader_opens_or_says_why)
{
    di_cublaslt *lt = NULL;
    di_err e = {0};
    int rc = di_cublaslt_open(&lt, &e);
    if (rc) {
        cr_assert_eq(rc, DI_ENODEV, "%s", e.msg);
        cr_assert(strstr(e.msg, "cuBLASLt"), "%s", e.msg);
        fprintf(stderr, "vendor: cuBLASLt not usable here: %s\n", e.msg);
        return;
    }
    cr_assert_geq(di_cublaslt_version(lt), 110000, "cuBLASLt %zu", di_cublaslt_version(lt));
    di_cublaslt_close(lt);
}

/* row 0 of y = x . w^T (+ res) from the vendor GPU runtime, M rows, x f32 (cast to bf16 on the way) */
static void gpu_row(di_rt *rt, const char *spec, long k, long n, const float *x, const uint16_t *w, const float *res,
                    long m, float *out)
{
    di_specialization p = th_spec(spec, "K", k, "N", n, NULL);
    di_buf *bx = th_buf(rt, x, sizeof(float) * m * k), *bw = th_buf(rt, w, sizeof(uint16_t) * n * k);
    di_buf *by = th_buf(rt, res, sizeof(float) * m * n);
    di_val a[] = {{.buf = by}, {.buf = bx}, {.buf = bw}, {.buf = by}};
    th_launch(rt, th_kernel(rt, spec, &p), a, (long[]){m});
    th_read(by, out, sizeof(float) * n);
    di_buf_free(bx); di_buf_free(bw); di_buf_free(by);
}

Test(vendor, gpu_cublaslt_matmul_accurate_and_row_bits_follow_m, .timeout = 600)
{
    di_rt *rt = vendor_gpu_or_skip();
    static const long shapes[][2] = {{576, 1536}, {4096, 1024}, {14336, 4096}};
    static const long ms[] = {1, 8, 64, 257, 1024};
    int shapes_differing = 0;
    for (size_t si = 0; si < 3; si++) {
        long k = shapes[si][0], n = shapes[si][1], mmax = ms[4];
        float *x = malloc(sizeof(float) * mmax * k), *res = malloc(sizeof(float) * mmax * n);
        float *ref = malloc(sizeof(float) * n), *row = malloc(sizeof(float) * n), *rrow = malloc(sizeof(float) * n);
        uint16_t *w = malloc(sizeof(uint16_t) * n * k);
        th_fill(x, (size_t)mmax * k, 9 + si);
        for (long i = 0; i < mmax * k; i++) x[i] = th_from_bf16(th_bf16(x[i]));   /* exact in bf16: no cast error */
        th_fill(res, (size_t)mmax * n, 19 + si);
        uint64_t s = 29 + si;
        for (long i = 0; i < n * k; i++) w[i] = th_bf16(th_uniform(&s));
        /* accuracy of row 0 at M = 64 against float64, plain and with the residual (in place) */
        gpu_row(rt, "matmul", k, n, x, w, NULL, 64, row);
        gpu_row(rt, "matmul_residual", k, n, x, w, res, 64, rrow);
        double worst = 0, worst_res = 0;
        for (long j = 0; j < n; j++) {
            double d = 0, mag = 0;
            for (long i = 0; i < k; i++) {
                double t = (double)x[i] * th_from_bf16(w[j * k + i]);
                d += t;
                mag += fabs(t);
            }
            double e1 = fabs(row[j] - d) / mag, e2 = fabs(rrow[j] - (d + res[j])) / (mag + fabs(res[j]));
            if (!(e1 <= worst)) worst = e1;
            if (!(e2 <= worst_res)) worst_res = e2;
        }
        fprintf(stderr, "vendor gpu: K=%ld N=%ld M=64: max |y - ref| / sum|x w| = %.2e (residual %.2e)\n", k, n, worst,
                worst_res);
        cr_assert(worst < 1e-4 && worst_res < 1e-4, "K=%ld N=%ld: cuBLASLt error %.3g / %.3g", k, n, worst, worst_res);
        /* row 0's bits across M */
        int differ = 0;
        for (size_t mi = 0; mi < 5; mi++) {
            gpu_row(rt, "matmul", k, n, x, w, NULL, ms[mi], mi ? row : ref);
            if (!mi) continue;
            long d = count_diff(row, ref, n);
            differ += d > 0;
            fprintf(stderr, "vendor gpu: K=%ld N=%ld: row 0 at M=%ld vs M=1: %ld of %ld outputs differ\n", k, n, ms[mi],
                    d, n);
        }
        if (!differ) fprintf(stderr, "vendor gpu: K=%ld N=%ld: cuBLASLt happened to be invariant over these M\n", k, n);
        shapes_differing += differ > 0;
        free(x); free(res); free(ref); free(row); free(rrow); free(w);
    }
    /* What the heuristic picked, for the report (a separate handle: the runtime's plans are private). */
    di_cublaslt *lt = NULL;
    di_err e = {0};
    if (!di_cublaslt_open(&lt, &e)) {
        for (size_t mi = 0; mi < 5; mi++) {
            di_cublaslt_plan *pl = NULL;
            if (di_cublaslt_plan_new(lt, ms[mi], 4096, 1024, DI_F32, 32u << 20, &pl, &e)) break;
            di_cublaslt_algo a;
            di_cublaslt_plan_algo(lt, pl, &a);
            fprintf(stderr, "vendor gpu: K=4096 N=1024 M=%ld: algo %d tile %d split-K %d reduction %d stages %d ws %zu\n",
                    ms[mi], a.id, a.tile, a.splitk, a.reduction, a.stages, a.workspace);
            di_cublaslt_plan_free(pl);
        }
        di_cublaslt_close(lt);
    }
    cr_assert_gt(shapes_differing, 0, "cuBLASLt gave row 0 the same bits for every M at every shape: the vendor "
                                      "profile would not be a negative control");
    di_rt_close(rt);
}
