/* NVRTC through dlopen: libnvrtc.so, then .so.13, then .so.12. No link-time dependency. */
#ifndef DI_NVRTC_H
#define DI_NVRTC_H
#include <stdbool.h>
#include <stddef.h>
#include "base/err.h"

typedef struct di_nvrtc_out {
    char *ptx;     size_t ptx_len;    /* NUL-terminated */
    void *cubin;   size_t cubin_len;  /* NULL unless asked for */
    char *log;                        /* compile log (may be empty), NUL-terminated */
} di_nvrtc_out;

/* Loads the library once (thread-safe). DI_ENODEV with a message when not found. */
int di_nvrtc_load(di_err *err);
int di_nvrtc_version(int *major, int *minor, di_err *err);
/* Compiles src (named `name` in diagnostics). opts are passed in order.
 * want_cubin: also fetch the cubin (opts must name a real arch, e.g. -arch=sm_90a).
 * On a compile error returns DI_ECOMPILE with the log in err->msg (and in out->log). */
int di_nvrtc_compile(const char *src, const char *name, const char *const *opts, int nopts,
                     bool want_cubin, di_nvrtc_out *out, di_err *err);
void di_nvrtc_out_free(di_nvrtc_out *o);

#endif
