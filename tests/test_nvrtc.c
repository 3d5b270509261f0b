/* NVRTC and the CUDA driver through dlopen. NVRTC needs no GPU, so its suite always runs;
 * the CUDA suite checks that opening fails cleanly without one and, where a GPU is present,
 * runs a real compile / upload / launch / download round trip. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "runtime/cuda.h"
#include "runtime/nvrtc.h"

static const char vec_add_src[] =
    "extern \"C\" __global__ void vec_add(const float *a, const float *b, float *c, int n)\n"
    "{\n"
    "    int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
    "    if (i < n) c[i] = a[i] + b[i];\n"
    "}\n";

/* a*b+c: contracted to one fma.rn.f32 only when --fmad=true */
static const char mul_add_src[] =
    "extern \"C\" __global__ void mul_add(const float *a, const float *b, const float *c, float *y)\n"
    "{\n"
    "    int i = threadIdx.x;\n"
    "    y[i] = a[i] * b[i] + c[i];\n"
    "}\n";

/* Compiles src for sm_90a with the given extra options; asserts success. */
static di_nvrtc_out compile_ok(const char *src, const char *name, const char *extra, bool want_cubin)
{
    const char *opts[] = {"-arch=sm_90a", extra};
    di_nvrtc_out out;
    di_err e = {0};
    int rc = di_nvrtc_compile(src, name, opts, extra ? 2 : 1, want_cubin, &out, &e);
    cr_assert_eq(rc, DI_OK, "%s: %s", name, e.msg);
    return out;
}

/* ---- NVRTC ---------------------------------------------------------------------------- */

Test(nvrtc, loads_and_reports_its_version)
{
    di_err e = {0};
    cr_assert_eq(di_nvrtc_load(&e), DI_OK, "NVRTC must load on this machine: %s", e.msg);
    int major = -1, minor = -1;
    cr_assert_eq(di_nvrtc_version(&major, &minor, &e), DI_OK, "%s", e.msg);
    cr_assert(major >= 11 && major < 100 && minor >= 0 && minor < 100, "implausible NVRTC version %d.%d", major, minor);
    printf("NVRTC %d.%d\n", major, minor);
}

typedef struct { int rc, major, minor; } load_result;

static void *load_from_thread(void *arg)
{
    load_result *r = arg;
    di_err e = {0};
    r->rc = di_nvrtc_load(&e);
    if (!r->rc) r->rc = di_nvrtc_version(&r->major, &r->minor, &e);
    return NULL;
}

Test(nvrtc, loading_from_many_threads_at_once_agrees)
{
    enum { N = 8 };
    pthread_t t[N];
    load_result r[N];
    memset(r, 0, sizeof r);
    for (int i = 0; i < N; i++) cr_assert_eq(pthread_create(&t[i], NULL, load_from_thread, &r[i]), 0);
    for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(r[i].rc, DI_OK, "thread %d failed to load NVRTC", i);
        cr_assert(r[i].major == r[0].major && r[i].minor == r[0].minor, "thread %d saw another version", i);
    }
}

Test(nvrtc, compiles_to_ptx_and_cubin_for_sm_90a)
{
    di_nvrtc_out out = compile_ok(vec_add_src, "vec_add.cu", NULL, true);
    cr_assert_not_null(out.ptx);
    cr_assert_eq(out.ptx_len, strlen(out.ptx), "ptx_len disagrees with the text");
    cr_assert(strstr(out.ptx, ".target sm_90a"), "PTX is not for sm_90a:\n%.600s", out.ptx);
    cr_assert(strstr(out.ptx, ".entry vec_add("), "PTX lacks the entry vec_add:\n%.600s", out.ptx);
    cr_assert_not_null(out.cubin, "no cubin though one was asked for");
    cr_assert_gt(out.cubin_len, 64);
    cr_assert_eq(memcmp(out.cubin, "\x7f" "ELF", 4), 0, "the cubin is not an ELF image");
    cr_assert_not_null(out.log, "the log must always be there (possibly empty)");
    di_nvrtc_out_free(&out);
    cr_assert_null(out.ptx);
    cr_assert_null(out.cubin);
    cr_assert_null(out.log);
}

Test(nvrtc, no_cubin_unless_asked)
{
    di_nvrtc_out out = compile_ok(vec_add_src, "vec_add.cu", NULL, false);
    cr_assert(out.ptx && out.ptx_len > 0);
    cr_assert_null(out.cubin);
    cr_assert_eq(out.cubin_len, 0);
    di_nvrtc_out_free(&out);
}

Test(nvrtc, syntax_error_gives_the_log_with_the_line)
{
    /* line 3 lacks its semicolon */
    const char *src = "extern \"C\" __global__ void broken(float *y)\n"
                      "{\n"
                      "    y[threadIdx.x] = 1.0f\n"
                      "}\n";
    const char *opts[] = {"-arch=sm_90a"};
    di_nvrtc_out out;
    di_err e = {0};
    cr_assert_eq(di_nvrtc_compile(src, "broken_kernel", opts, 1, true, &out, &e), DI_ECOMPILE, "%s", e.msg);
    cr_assert_eq(e.code, DI_ECOMPILE);
    cr_assert(strstr(e.msg, "broken_kernel"), "the message does not name the kernel: %s", e.msg);
    /* NVRTC reports "<name>(<line>): error: ..."; the missing ';' is noticed at line 3 or 4 */
    cr_assert(strstr(e.msg, "broken_kernel(3): error") || strstr(e.msg, "broken_kernel(4): error"),
              "the message lacks the log's error line: %s", e.msg);
    cr_assert(out.log && strstr(out.log, "error"), "out.log lacks the compiler log");
    cr_assert_null(out.ptx, "no PTX after a failed compile");
    cr_assert_null(out.cubin);
    di_nvrtc_out_free(&out);
}

Test(nvrtc, fmad_option_is_honoured)
{
    di_nvrtc_out off = compile_ok(mul_add_src, "mul_add_exact", "--fmad=false", false);
    di_nvrtc_out on = compile_ok(mul_add_src, "mul_add_fast", "--fmad=true", false);
    cr_assert_null(strstr(off.ptx, "fma.rn.f32"), "--fmad=false still contracted:\n%s", off.ptx);
    cr_assert(strstr(off.ptx, "mul.rn.f32") && strstr(off.ptx, "add.rn.f32"),
              "--fmad=false should give a separately rounded mul and add:\n%s", off.ptx);
    cr_assert(strstr(on.ptx, "fma.rn.f32"), "--fmad=true did not contract a*b+c:\n%s", on.ptx);
    di_nvrtc_out_free(&off);
    di_nvrtc_out_free(&on);
}

Test(nvrtc, options_are_passed_in_order)
{
    /* a later -arch overrides an earlier one, as on the nvcc command line */
    const char *opts[] = {"-arch=sm_80", "-arch=sm_90a"};
    di_nvrtc_out out;
    di_err e = {0};
    cr_assert_eq(di_nvrtc_compile(vec_add_src, "vec_add.cu", opts, 2, false, &out, &e), DI_OK, "%s", e.msg);
    cr_assert(strstr(out.ptx, ".target sm_90a"), "the last -arch should win:\n%.400s", out.ptx);
    di_nvrtc_out_free(&out);
}

Test(nvrtc, virtual_arch_gives_ptx_but_no_cubin)
{
    const char *opts[] = {"-arch=compute_90a"};
    di_nvrtc_out out;
    di_err e = {0};
    cr_assert_eq(di_nvrtc_compile(vec_add_src, "vec_add.cu", opts, 1, false, &out, &e), DI_OK, "%s", e.msg);
    cr_assert(strstr(out.ptx, ".target sm_90a"));
    di_nvrtc_out_free(&out);
    int rc = di_nvrtc_compile(vec_add_src, "vec_add.cu", opts, 1, true, &out, &e);
    cr_assert_eq(rc, DI_EUSAGE, "asking a virtual arch for a cubin must fail: %d %s", rc, e.msg);
    cr_assert(strstr(e.msg, "vec_add.cu") && strstr(e.msg, "compute_90a") && strstr(e.msg, "sm_XX"), "%s", e.msg);
    cr_assert_null(out.ptx);
    di_nvrtc_out_free(&out);
}

Test(nvrtc, options_that_yield_no_ptx_are_an_error)
{
    /* -dlto makes LTO-IR only: neither PTX nor cubin */
    const char *opts[] = {"-arch=sm_90a", "-dlto"};
    di_nvrtc_out out;
    di_err e = {0};
    cr_assert_eq(di_nvrtc_compile(vec_add_src, "lto_kernel", opts, 2, false, &out, &e), DI_ECOMPILE, "%s", e.msg);
    cr_assert(strstr(e.msg, "lto_kernel") && strstr(e.msg, "no PTX") && strstr(e.msg, "-dlto"), "%s", e.msg);
    di_nvrtc_out_free(&out);
}

Test(nvrtc, bad_option_is_a_compile_error_with_the_log)
{
    const char *opts[] = {"-arch=sm_nonsense"};
    di_nvrtc_out out;
    di_err e = {0};
    cr_assert_eq(di_nvrtc_compile(vec_add_src, "vec_add.cu", opts, 1, false, &out, &e), DI_ECOMPILE, "%s", e.msg);
    cr_assert(strstr(e.msg, "vec_add.cu") && strstr(e.msg, "arch"), "%s", e.msg);
    di_nvrtc_out_free(&out);
}

Test(nvrtc, bad_arguments_are_errors_not_crashes)
{
    di_nvrtc_out out;
    di_err e = {0};
    cr_assert_eq(di_nvrtc_compile(NULL, "nothing", NULL, 0, false, &out, &e), DI_EUSAGE);
    cr_assert(strstr(e.msg, "nothing"), "%s", e.msg);
    cr_assert_eq(di_nvrtc_compile(vec_add_src, "vec_add.cu", NULL, 3, false, &out, &e), DI_EUSAGE);
    /* no name: diagnostics still read sensibly */
    cr_assert_eq(di_nvrtc_compile("int x = ;", NULL, NULL, 0, false, &out, &e), DI_ECOMPILE);
    cr_assert(strstr(e.msg, "error"), "%s", e.msg);
    di_nvrtc_out_free(&out);
    di_nvrtc_out_free(NULL);
}

/* ---- CUDA ----------------------------------------------------------------------------- */

Test(cuda, open_succeeds_or_fails_cleanly)
{
    di_cuda *c = (di_cuda *)&c; /* must be overwritten either way */
    di_err e = {0};
    int rc = di_cuda_open(0, &c, &e);
    if (rc == DI_OK) {
        cr_assert_not_null(c);
        const di_cuda_info *in = di_cuda_get_info(c);
        printf("GPU: %s, cc %d.%d (%s), %d SMs, %zu MiB, driver %d\n", in->name, in->cc_major, in->cc_minor, in->arch,
               in->sm_count, in->total_mem >> 20, in->driver_version);
        di_cuda_close(c);
        return;
    }
    printf("no GPU here: %s\n", e.msg);
    cr_assert_eq(rc, DI_ENODEV, "no GPU must be DI_ENODEV, got %d: %s", rc, e.msg);
    cr_assert_eq(e.code, DI_ENODEV);
    cr_assert_null(c, "the handle must be NULL on failure");
    cr_assert(strstr(e.msg, "CUDA") || strstr(e.msg, "cu"), "the message does not say what failed: %s", e.msg);
    /* a second try fails the same way (the driver load is attempted once) */
    di_err e2 = {0};
    cr_assert_eq(di_cuda_open(0, &c, &e2), DI_ENODEV);
    cr_assert_str_eq(e2.msg, e.msg);
}

Test(cuda, ordinal_out_of_range_is_no_device)
{
    di_cuda *c = NULL;
    di_err e = {0};
    cr_assert_eq(di_cuda_open(4096, &c, &e), DI_ENODEV, "%s", e.msg);
    cr_assert_null(c);
    cr_assert_eq(di_cuda_open(-1, &c, &e), DI_ENODEV, "%s", e.msg);
    cr_assert_null(c);
    di_cuda_close(NULL); /* harmless */
}

static di_cuda *gpu_or_skip(void)
{
    di_cuda *c = NULL;
    di_err e = {0};
    if (di_cuda_open(0, &c, &e)) cr_skip_test("no GPU: %s", e.msg);
    return c;
}

/* Compiles src for the device's own arch and loads it, as cubin or as PTX. */
static di_cuda_module *load_for(di_cuda *c, const char *src, const char *name, bool as_cubin)
{
    char arch[32];
    snprintf(arch, sizeof arch, "-arch=%s", di_cuda_get_info(c)->arch);
    const char *opts[] = {arch, "--fmad=false"};
    di_nvrtc_out out;
    di_err e = {0};
    cr_assert_eq(di_nvrtc_compile(src, name, opts, 2, as_cubin, &out, &e), DI_OK, "%s", e.msg);
    di_cuda_module *m = NULL;
    cr_assert_eq(di_cuda_module_load(c, as_cubin ? out.cubin : (const void *)out.ptx, &m, &e), DI_OK, "%s", e.msg);
    di_nvrtc_out_free(&out);
    return m;
}

static void vector_add_round_trip(bool as_cubin)
{
    di_cuda *c = gpu_or_skip();
    const di_cuda_info *in = di_cuda_get_info(c);
    cr_assert(in->name[0] && !strncmp(in->arch, "sm_", 3) && in->sm_count > 0 && in->total_mem > 0, "bad info");
    di_cuda_module *m = load_for(c, vec_add_src, "vec_add.cu", as_cubin);
    void *fn = NULL;
    di_err e = {0};
    cr_assert_eq(di_cuda_function(m, "vec_add", &fn, &e), DI_OK, "%s", e.msg);

    enum { N = 100003 }; /* not a multiple of the block: the guard matters */
    float *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b), *got = malloc(N * sizeof *got);
    uint32_t s = 12345;
    for (int i = 0; i < N; i++) {
        s = s * 1664525u + 1013904223u;
        a[i] = (float)(s >> 8) / 16777216.0f - 0.5f;
        b[i] = (float)i * 0.001f;
    }
    di_dptr da, db, dc;
    size_t bytes = N * sizeof(float);
    cr_assert_eq(di_cuda_alloc(c, bytes, &da, &e), DI_OK, "%s", e.msg);
    cr_assert_eq(di_cuda_alloc(c, bytes, &db, &e), DI_OK, "%s", e.msg);
    cr_assert_eq(di_cuda_alloc(c, bytes, &dc, &e), DI_OK, "%s", e.msg);
    cr_assert_eq(di_cuda_upload(c, da, a, bytes, &e), DI_OK, "%s", e.msg);
    cr_assert_eq(di_cuda_upload(c, db, b, bytes, &e), DI_OK, "%s", e.msg);
    cr_assert_eq(di_cuda_memset8(c, dc, 0xff, bytes, &e), DI_OK, "%s", e.msg); /* NaNs until written */

    di_cuda_event *t0, *t1;
    cr_assert_eq(di_cuda_event_create(c, &t0, &e), DI_OK, "%s", e.msg);
    cr_assert_eq(di_cuda_event_create(c, &t1, &e), DI_OK, "%s", e.msg);
    int n = N;
    void *params[] = {&da, &db, &dc, &n};
    unsigned block[3] = {256, 1, 1}, grid[3] = {(N + 255) / 256, 1, 1};
    cr_assert_eq(di_cuda_event_record(c, t0, &e), DI_OK, "%s", e.msg);
    cr_assert_eq(di_cuda_launch(c, fn, grid, block, 0, params, &e), DI_OK, "%s", e.msg);
    cr_assert_eq(di_cuda_event_record(c, t1, &e), DI_OK, "%s", e.msg);
    float ms = -1;
    cr_assert_eq(di_cuda_event_elapsed_ms(t0, t1, &ms, &e), DI_OK, "%s", e.msg);
    cr_assert(ms >= 0 && ms < 10000, "implausible kernel time %f ms", ms);
    printf("vec_add (%s) of %d floats: %.3f ms\n", as_cubin ? "cubin" : "PTX", N, ms);

    /* no explicit sync: the download must be ordered after the launch */
    cr_assert_eq(di_cuda_download(c, got, dc, bytes, &e), DI_OK, "%s", e.msg);
    for (int i = 0; i < N; i++) {
        float want = a[i] + b[i];
        cr_assert_eq(memcmp(&got[i], &want, 4), 0, "element %d: %a, want %a", i, got[i], want);
    }
    cr_assert_eq(di_cuda_sync(c, &e), DI_OK, "%s", e.msg);
    di_cuda_event_destroy(t0);
    di_cuda_event_destroy(t1);
    di_cuda_free(c, da);
    di_cuda_free(c, db);
    di_cuda_free(c, dc);
    di_cuda_module_unload(c, m);
    di_cuda_close(c);
    free(a);
    free(b);
    free(got);
}

Test(cuda, vector_add_from_cubin) { vector_add_round_trip(true); }
Test(cuda, vector_add_from_ptx) { vector_add_round_trip(false); }

/* Fills dynamic shared memory past 48 KiB and reads it back reversed: works only when the
 * launch raised the kernel's dynamic shared memory limit. */
static const char big_smem_src[] =
    "extern \"C\" __global__ void smem_reverse(const int *x, int *y, int n)\n"
    "{\n"
    "    extern __shared__ int buf[];\n"
    "    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = x[i];\n"
    "    __syncthreads();\n"
    "    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = buf[n - 1 - i];\n"
    "}\n";

Test(cuda, launch_raises_the_shared_memory_limit)
{
    di_cuda *c = gpu_or_skip();
    const di_cuda_info *in = di_cuda_get_info(c);
    unsigned smem = 96u * 1024u;
    if (in->smem_per_block_optin < smem) {
        di_cuda_close(c);
        cr_skip_test("%s allows only %zu bytes of shared memory per block", in->name, in->smem_per_block_optin);
    }
    di_cuda_module *m = load_for(c, big_smem_src, "smem_reverse.cu", true);
    void *fn;
    di_err e = {0};
    cr_assert_eq(di_cuda_function(m, "smem_reverse", &fn, &e), DI_OK, "%s", e.msg);
    int n = (int)(smem / sizeof(int));
    int *x = malloc(smem), *y = malloc(smem);
    for (int i = 0; i < n; i++) x[i] = i * 7 + 1;
    di_dptr dx, dy;
    cr_assert_eq(di_cuda_alloc(c, smem, &dx, &e), DI_OK, "%s", e.msg);
    cr_assert_eq(di_cuda_alloc(c, smem, &dy, &e), DI_OK, "%s", e.msg);
    cr_assert_eq(di_cuda_upload(c, dx, x, smem, &e), DI_OK, "%s", e.msg);
    void *params[] = {&dx, &dy, &n};
    unsigned grid[3] = {1, 1, 1}, block[3] = {256, 1, 1};
    cr_assert_eq(di_cuda_launch(c, fn, grid, block, smem, params, &e), DI_OK, "%s", e.msg);
    cr_assert_eq(di_cuda_download(c, y, dy, smem, &e), DI_OK, "%s", e.msg);
    for (int i = 0; i < n; i++) cr_assert_eq(y[i], x[n - 1 - i], "element %d", i);

    /* more than the device allows: a clear error, no launch */
    unsigned too_much = (unsigned)in->smem_per_block_optin + 1024;
    cr_assert_eq(di_cuda_launch(c, fn, grid, block, too_much, params, &e), DI_EDEVICE);
    cr_assert(strstr(e.msg, "shared memory"), "%s", e.msg);
    cr_assert_eq(di_cuda_sync(c, &e), DI_OK, "%s", e.msg);
    di_cuda_free(c, dx);
    di_cuda_free(c, dy);
    di_cuda_module_unload(c, m);
    di_cuda_close(c);
    free(x);
    free(y);
}

Test(cuda, driver_errors_name_the_call)
{
    di_cuda *c = gpu_or_skip();
    di_cuda_module *m = load_for(c, vec_add_src, "vec_add.cu", true);
    void *fn = NULL;
    di_err e = {0};
    cr_assert_eq(di_cuda_function(m, "no_such_kernel", &fn, &e), DI_EDEVICE);
    cr_assert(strstr(e.msg, "cuModuleGetFunction failed: ") && strstr(e.msg, "no_such_kernel"), "%s", e.msg);
    cr_assert_null(fn);
    /* a PTX image that does not assemble: the driver's message and JIT log */
    di_cuda_module *bad = NULL;
    cr_assert_eq(di_cuda_module_load(c, ".version 1.0\n.target sm_nonsense\nthis is not ptx\n", &bad, &e), DI_EDEVICE);
    cr_assert(strstr(e.msg, "cuModuleLoadDataEx failed: "), "%s", e.msg);
    printf("bad PTX: %s\n", e.msg);
    cr_assert_null(bad);
    /* an absurd allocation */
    di_dptr p = 1;
    cr_assert_eq(di_cuda_alloc(c, (size_t)1 << 60, &p, &e), DI_EDEVICE);
    cr_assert(strstr(e.msg, "cuMemAlloc_v2 failed: "), "%s", e.msg);
    cr_assert_eq(p, 0);
    di_cuda_module_unload(c, m);
    di_cuda_close(c);
}

/* The driver's current context is per thread: a call from a thread that never opened the
 * device must still work (each entry point binds the context). */
typedef struct { di_cuda *c; di_dptr p; int rc; char msg[512]; } thread_job;

static void *upload_from_thread(void *arg)
{
    thread_job *j = arg;
    float v[4] = {1.5f, -2.0f, 3.25f, 0.0f};
    di_err e = {0};
    j->rc = di_cuda_upload(j->c, j->p, v, sizeof v, &e);
    snprintf(j->msg, sizeof j->msg, "%.500s", e.msg);
    return NULL;
}

Test(cuda, calls_from_another_thread_bind_the_context)
{
    di_cuda *c = gpu_or_skip();
    di_err e = {0};
    thread_job j = {.c = c};
    cr_assert_eq(di_cuda_alloc(c, 4 * sizeof(float), &j.p, &e), DI_OK, "%s", e.msg);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, upload_from_thread, &j), 0);
    pthread_join(t, NULL);
    cr_assert_eq(j.rc, DI_OK, "upload from a second thread: %s", j.msg);
    float got[4];
    cr_assert_eq(di_cuda_download(c, got, j.p, sizeof got, &e), DI_OK, "%s", e.msg);
    cr_assert(got[0] == 1.5f && got[1] == -2.0f && got[2] == 3.25f && got[3] == 0.0f, "got %g %g %g %g", got[0],
              got[1], got[2], got[3]);
    di_cuda_free(c, j.p);
    di_cuda_close(c);
}
