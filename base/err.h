/* Errors are values: every fallible call takes a di_err * and returns its code.
 * The message names the spec, file, flag or tensor at fault (DESIGN.md, runtime contracts). */
#ifndef DI_ERR_H
#define DI_ERR_H
#include <stddef.h>

enum {
    DI_OK = 0,
    DI_EUSAGE = 2,   /* bad flag, bad input file, prompt too long: exit status 2 */
    DI_EIO,          /* file system */
    DI_EFORMAT,      /* malformed GGUF, bad tensor type, ... */
    DI_ESPEC,        /* a kernel spec or specialization that does not validate */
    DI_ECOMPILE,     /* NVRTC or libtcc rejected the source; the log is in the message */
    DI_ENODEV,       /* no GPU / driver / NVRTC when one was asked for */
    DI_EDEVICE,      /* CUDA driver call failed */
    DI_ENOMEM,
};

typedef struct di_err {
    int code;
    char msg[8192];
} di_err;

/* Sets e (if not NULL) and returns code. printf-style. */
int di_fail(di_err *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prefixes an existing message: "context: old message". Returns e->code. */
int di_wrap(di_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void di_err_clear(di_err *e);

#endif
