/* NVRTC through dlopen. No <nvrtc.h>: the few types and entry points used are declared here,
 * so the library builds and runs where the CUDA toolkit is absent (di_nvrtc_load says so).
 *
 * Measured with NVRTC 13.0: compiling for a real arch (-arch=sm_90a) yields both the PTX
 * (".target sm_90a") and the cubin; a virtual arch (compute_90a) yields the same PTX and an
 * empty cubin; -dlto yields neither (LTO-IR only). So one compilation serves both outputs,
 * and an empty PTX or an asked-for but empty cubin is reported as an error naming the
 * options, not papered over by a second compilation. */
#include "runtime/nvrtc.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvrtc_result; /* nvrtcResult; 0 is NVRTC_SUCCESS */
typedef struct nvrtc_program_s *nvrtc_program;

static struct {
    nvrtc_result (*version)(int *major, int *minor);
    const char *(*error_string)(nvrtc_result r);
    nvrtc_result (*create)(nvrtc_program *p, const char *src, const char *name, int nheaders,
                           const char *const *headers, const char *const *include_names);
    nvrtc_result (*destroy)(nvrtc_program *p);
    nvrtc_result (*compile)(nvrtc_program p, int nopts, const char *const *opts);
    nvrtc_result (*ptx_size)(nvrtc_program p, size_t *n);
    nvrtc_result (*ptx)(nvrtc_program p, char *ptx);
    nvrtc_result (*cubin_size)(nvrtc_program p, size_t *n); /* NULL before NVRTC 11.1 */
    nvrtc_result (*cubin)(nvrtc_program p, char *cubin);
    nvrtc_result (*log_size)(nvrtc_program p, size_t *n);
    nvrtc_result (*log)(nvrtc_program p, char *log);
} nv;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static int load_code = DI_OK;           /* written once under load_once, read-only after */
static char load_msg[2048];
static char load_path[256];             /* the name that opened, for diagnostics */

/* Library names in order of preference; the toolkit path is the last resort for a machine
 * whose loader cache does not know /usr/local/cuda. */
static const char *const lib_names[] = {
    "libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "/usr/local/cuda/lib64/libnvrtc.so",
};

static void *open_library(void)
{
    size_t used = 0;
    load_msg[0] = 0;
    for (size_t i = 0; i < sizeof lib_names / sizeof lib_names[0]; i++) {
        void *h = dlopen(lib_names[i], RTLD_NOW | RTLD_LOCAL);
        if (h) {
            snprintf(load_path, sizeof load_path, "%s", lib_names[i]);
            return h;
        }
        const char *why = dlerror();
        int n = snprintf(load_msg + used, sizeof load_msg - used, "\n  %s: %s", lib_names[i], why ? why : "not found");
        if (n > 0) used += (size_t)n < sizeof load_msg - used ? (size_t)n : sizeof load_msg - used - 1;
    }
    return NULL;
}

/* Resolves one symbol into *slot; a missing required symbol records the failure. */
static int resolve(void *h, const char *sym, void *slot, int required)
{
    void *f = dlsym(h, sym);
    memcpy(slot, &f, sizeof f); /* object pointer to function pointer, as POSIX dlsym intends */
    if (!f && required) {
        load_code = DI_ENODEV;
        snprintf(load_msg, sizeof load_msg, "NVRTC: %s lacks the symbol %s (too old?)", load_path, sym);
        return -1;
    }
    return 0;
}

static void load_library(void)
{
    void *h = open_library();
    if (!h) {
        char tried[sizeof load_msg];
        memcpy(tried, load_msg, sizeof tried);
        load_code = DI_ENODEV;
        snprintf(load_msg, sizeof load_msg, "NVRTC not found (is the CUDA toolkit installed?); tried:%.1900s", tried);
        return;
    }
    if (resolve(h, "nvrtcVersion", &nv.version, 1) || resolve(h, "nvrtcGetErrorString", &nv.error_string, 1) ||
        resolve(h, "nvrtcCreateProgram", &nv.create, 1) || resolve(h, "nvrtcDestroyProgram", &nv.destroy, 1) ||
        resolve(h, "nvrtcCompileProgram", &nv.compile, 1) || resolve(h, "nvrtcGetPTXSize", &nv.ptx_size, 1) ||
        resolve(h, "nvrtcGetPTX", &nv.ptx, 1) || resolve(h, "nvrtcGetProgramLogSize", &nv.log_size, 1) ||
        resolve(h, "nvrtcGetProgramLog", &nv.log, 1) || resolve(h, "nvrtcGetCUBINSize", &nv.cubin_size, 0) ||
        resolve(h, "nvrtcGetCUBIN", &nv.cubin, 0)) {
        dlclose(h);
        return;
    }
    /* The handle stays open for the life of the process: the function pointers live in it. */
}

int di_nvrtc_load(di_err *err)
{
    pthread_once(&load_once, load_library);
    if (load_code) return di_fail(err, load_code, "%s", load_msg);
    return DI_OK;
}

static const char *result_text(nvrtc_result r)
{
    const char *s = nv.error_string ? nv.error_string(r) : NULL;
    return s ? s : "unknown NVRTC error";
}

int di_nvrtc_version(int *major, int *minor, di_err *err)
{
    int rc = di_nvrtc_load(err);
    if (rc) return rc;
    nvrtc_result r = nv.version(major, minor);
    if (r) return di_fail(err, DI_ENODEV, "nvrtcVersion failed: %s", result_text(r));
    return DI_OK;
}

/* The program log, always NUL-terminated (empty when NVRTC has none or cannot give it). */
static char *fetch_log(nvrtc_program p)
{
    size_t n = 0;
    if (nv.log_size(p, &n) || n == 0) return calloc(1, 1);
    char *log = malloc(n + 1);
    if (!log) return NULL;
    if (nv.log(p, log)) n = 0;
    log[n] = 0;
    return log;
}

/* One line with the options in order, for messages about what the options produced. */
static void join_opts(const char *const *opts, int nopts, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < nopts && used + 1 < cap; i++) {
        int n = snprintf(buf + used, cap - used, "%s%s", i ? " " : "", opts[i] ? opts[i] : "(null)");
        if (n < 0) break;
        used += (size_t)n < cap - used ? (size_t)n : cap - used - 1;
    }
}

static int fetch_ptx(nvrtc_program p, const char *name, const char *const *opts, int nopts, di_nvrtc_out *out,
                     di_err *err)
{
    size_t n = 0;
    nvrtc_result r = nv.ptx_size(p, &n);
    if (r) return di_fail(err, DI_ECOMPILE, "%s: nvrtcGetPTXSize failed: %s", name, result_text(r));
    if (n <= 1) { /* the size counts the terminating NUL: 1 means none (e.g. -dlto) */
        char o[1024];
        join_opts(opts, nopts, o, sizeof o);
        return di_fail(err, DI_ECOMPILE, "%s: NVRTC produced no PTX with the options [%s]", name, o);
    }
    out->ptx = malloc(n);
    if (!out->ptx) return di_fail(err, DI_ENOMEM, "%s: cannot hold %zu bytes of PTX", name, n);
    r = nv.ptx(p, out->ptx);
    if (r) return di_fail(err, DI_ECOMPILE, "%s: nvrtcGetPTX failed: %s", name, result_text(r));
    out->ptx[n - 1] = 0;
    out->ptx_len = strlen(out->ptx);
    return DI_OK;
}

static int fetch_cubin(nvrtc_program p, const char *name, const char *const *opts, int nopts, di_nvrtc_out *out,
                       di_err *err)
{
    if (!nv.cubin_size || !nv.cubin)
        return di_fail(err, DI_ENODEV, "%s: this NVRTC (%s) cannot return a cubin (needs 11.1 or newer)", name,
                       load_path);
    size_t n = 0;
    nvrtc_result r = nv.cubin_size(p, &n);
    if (r) return di_fail(err, DI_ECOMPILE, "%s: nvrtcGetCUBINSize failed: %s", name, result_text(r));
    if (n == 0) { /* a virtual arch (compute_XX) or no -arch at all: NVRTC made PTX only */
        char o[1024];
        join_opts(opts, nopts, o, sizeof o);
        return di_fail(err, DI_EUSAGE, "%s: no cubin from the options [%s]; a cubin needs a real arch (-arch=sm_XX)",
                       name, o);
    }
    out->cubin = malloc(n);
    if (!out->cubin) return di_fail(err, DI_ENOMEM, "%s: cannot hold a %zu-byte cubin", name, n);
    r = nv.cubin(p, out->cubin);
    if (r) return di_fail(err, DI_ECOMPILE, "%s: nvrtcGetCUBIN failed: %s", name, result_text(r));
    out->cubin_len = n;
    return DI_OK;
}

int di_nvrtc_compile(const char *src, const char *name, const char *const *opts, int nopts, bool want_cubin,
                     di_nvrtc_out *out, di_err *err)
{
    const char *label = name && *name ? name : "(unnamed kernel)";
    if (!out) return di_fail(err, DI_EUSAGE, "%s: no output record", label);
    memset(out, 0, sizeof *out);
    int load_rc = di_nvrtc_load(err);
    if (load_rc) {
        di_wrap(err, "%s", label);
        return load_rc;
    }
    if (!src) return di_fail(err, DI_EUSAGE, "%s: no source to compile", label);
    if (nopts < 0 || (nopts > 0 && !opts)) return di_fail(err, DI_EUSAGE, "%s: bad option list (%d options)", label, nopts);

    nvrtc_program p = NULL;
    nvrtc_result r = nv.create(&p, src, label, 0, NULL, NULL);
    if (r) return di_fail(err, DI_ECOMPILE, "%s: nvrtcCreateProgram failed: %s", label, result_text(r));

    nvrtc_result cr = nv.compile(p, nopts, opts);
    /* The log is kept on success too: warnings belong in the dump. */
    out->log = fetch_log(p);
    int rc = DI_OK;
    if (!out->log) {
        rc = di_fail(err, DI_ENOMEM, "%s: cannot hold the NVRTC log", label);
    } else if (cr) {
        rc = di_fail(err, DI_ECOMPILE, "%s: NVRTC compilation failed (%s):\n%s", label, result_text(cr),
                     out->log[0] ? out->log : "(empty log)");
    } else {
        rc = fetch_ptx(p, label, opts, nopts, out, err);
        if (!rc && want_cubin) rc = fetch_cubin(p, label, opts, nopts, out, err);
    }
    nv.destroy(&p);
    if (rc) { /* leave only the log behind, as the header promises */
        free(out->ptx);
        free(out->cubin);
        out->ptx = NULL; out->ptx_len = 0;
        out->cubin = NULL; out->cubin_len = 0;
    }
    return rc;
}

void di_nvrtc_out_free(di_nvrtc_out *o)
{
    if (!o) return;
    free(o->ptx);
    free(o->cubin);
    free(o->log);
    memset(o, 0, sizeof *o);
}
