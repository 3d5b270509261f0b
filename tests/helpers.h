/* Shared by the Criterion suites: runtimes, buffers from host arrays, seeded random data. */
#ifndef DI_TEST_HELPERS_H
#define DI_TEST_HELPERS_H
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "runtime/backend.h"
#include "runtime/nvrtc.h"

static inline uint64_t th_next(uint64_t *s)
{
    uint64_t x = *s += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}
/* uniform in [-1, 1) */
static inline float th_uniform(uint64_t *s) { return (float)((double)(th_next(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0); }
static inline void th_fill(float *x, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) x[i] = th_uniform(&seed);
}
static inline uint16_t th_bf16(float f)  /* round to nearest even, independent of the prelude */
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static inline float th_from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline di_rt *th_rt(di_backend_kind b, int threads)
{
    di_rt_opts o = {.backend = b, .profile = DI_PROFILE_EXACT, .threads = threads};
    di_rt *rt = NULL;
    di_err e = {0};
    int rc = di_rt_open(&o, &rt, &e);
    cr_assert_eq(rc, 0, "runtime: %s", e.msg);
    return rt;
}

/* A CUDA runtime in `profile`, or the test is skipped with the reason (no GPU here). */
static inline di_rt *th_gpu_rt_or_skip(di_profile profile)
{
    di_rt_opts o = {.backend = DI_BACKEND_CUDA, .profile = profile};
    di_rt *rt = NULL;
    di_err e = {0};
    if (di_rt_open(&o, &rt, &e)) cr_skip_test("no GPU: %s", e.msg);
    return rt;
}

static inline di_buf *th_buf(di_rt *rt, const void *data, size_t bytes)
{
    di_buf *b = NULL;
    di_err e = {0};
    cr_assert_eq(di_buf_alloc(rt, bytes, &b, &e), 0, "%s", e.msg);
    if (data) cr_assert_eq(di_buf_write(b, 0, data, bytes, &e), 0, "%s", e.msg);
    return b;
}

static inline void th_read(const di_buf *b, void *dst, size_t bytes)
{
    di_err e = {0};
    cr_assert_eq(di_buf_read(b, 0, dst, bytes, &e), 0, "%s", e.msg);
}

static inline di_kernel *th_kernel(di_rt *rt, const char *name, const di_specialization *p)
{
    const di_spec *s = di_spec_find(name);
    cr_assert_not_null(s, "no spec %s", name);
    di_specialization d;
    if (!p) { di_spec_defaults(s, &d); p = &d; }
    di_kernel *k = NULL;
    di_err e = {0};
    cr_assert_eq(di_rt_kernel(rt, s, p, &k, &e), 0, "%s", e.msg);
    return k;
}

static inline void th_launch(di_rt *rt, di_kernel *k, const di_val *args, const long *sizes)
{
    di_err e = {0};
    cr_assert_eq(di_rt_launch(rt, k, args, sizes, &e), 0, "%s", e.msg);
    cr_assert_eq(di_rt_sync(rt, &e), 0, "%s", e.msg);
}

/* A specialization of a built-in spec with some dims set: "K", 100, "N", 37, NULL */
static inline di_specialization th_spec(const char *name, ...)
{
    const di_spec *s = di_spec_find(name);
    di_specialization p;
    di_spec_defaults(s, &p);
    va_list ap;
    va_start(ap, name);
    for (const char *d; (d = va_arg(ap, const char *));) {
        long v = va_arg(ap, long);
        di_err e = {0};
        cr_assert_eq(di_spec_set_dim(s, &p, d, v, &e), 0, "%s", e.msg);
    }
    va_end(ap);
    return p;
}

static inline int th_bits_equal(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof(float)) == 0;
}

/* The fast-profile CUDA source of (s, p) compiled by NVRTC for sm_90a to a cubin, with ptxas's
 * resource report in out->log; `name` gets the kernel's entry name. Skips without NVRTC. */
static inline void th_compile_fast(const di_spec *s, const di_specialization *p, char *name, size_t len,
                                   di_nvrtc_out *out)
{
    di_err e = {0};
    if (di_nvrtc_load(&e)) cr_skip_test("no NVRTC: %s", e.msg);
    char *gen = NULL;
    cr_assert_eq(di_rt_source(s, p, DI_BACKEND_CUDA, &gen, &e), 0, "%s", e.msg);
    /* a source never compiled before: on the H200 (2026-12-01) runs after the first one on a
     * machine got NVRTC logs without the ptxas report, as if from a cache; a unique source
     * should compile afresh (not verified on the device: no time was left) */
    size_t glen = strlen(gen);
    char *src = malloc(glen + 64);
    cr_assert_not_null(src);
    snprintf(src, glen + 64, "%s\n// compile %ld.%ld\n", gen, (long)getpid(), (long)time(NULL));
    free(gen);
    di_target t = di_target_cuda_default();
    di_kernel_name(s, p, &t, name, len);
    const char *opts[17];
    int nopts = di_nvrtc_options(DI_PROFILE_FAST, "sm_90a", opts, 16);
    opts[nopts++] = "--ptxas-options=-v";
    cr_assert_eq(di_nvrtc_compile(src, name, opts, nopts, true, out, &e), 0, "%s: %s", name, e.msg);
    cr_assert(out->cubin && out->cubin_len > 0, "%s: no cubin", name);
    free(src);
}

/* ptxas -v reports "N bytes spill stores" per kernel; PTX cannot show spills (registers are
 * allocated after it). Fails when ptxas printed no report or any kernel spilled. */
static inline void th_assert_no_spills(const char *log, const char *what)
{
    cr_assert(log && strstr(log, "bytes spill stores"), "%s: no ptxas resource report in the log", what);
    for (const char *p = strstr(log, "bytes spill stores"); p; p = strstr(p + 1, "bytes spill stores")) {
        const char *q = p;
        while (q > log && q[-1] == ' ') q--;
        while (q > log && q[-1] >= '0' && q[-1] <= '9') q--;
        cr_assert_eq(atol(q), 0, "%s: ptxas spilled registers (%.40s)", what, q);
    }
}

#endif
