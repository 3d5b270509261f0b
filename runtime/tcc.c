#define _GNU_SOURCE /* memfd_create */
#include "runtime/tcc.h"
#include <libtcc.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct di_tcc_code { TCCState *s; };

/* libtcc 0.9.27 keeps global state: one compilation at a time. */
static pthread_mutex_t tcc_lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct { char log[4096]; size_t len; } tcc_log;

static void on_error(void *opaque, const char *msg)
{
    tcc_log *l = opaque;
    int n = snprintf(l->log + l->len, sizeof l->log - l->len, "%s\n", msg);
    if (n > 0) l->len += (size_t)n < sizeof l->log - l->len ? (size_t)n : sizeof l->log - l->len - 1;
}

static TCCState *new_state(tcc_log *log, int output)
{
    TCCState *s = tcc_new();
    if (!s) return NULL;
    const char *dir = getenv("DETINFER_TCC_DIR");
    tcc_set_lib_path(s, dir && *dir ? dir : DI_TCC_DEFAULT_DIR);
    tcc_set_error_func(s, log, on_error);
    /* No contraction, no fast math: tcc has neither, and -O0 keeps every rounding. */
    tcc_set_options(s, "-nostdlib -nostdinc -Wall");
    tcc_set_output_type(s, output);
    return s;
}

/* A memfd with a path tcc can open: the object never touches the disk. */
static int memfd_path(const void *data, size_t len, char *path, size_t plen)
{
    int fd = memfd_create("detinfer-tcc", 0);
    if (fd < 0) return -1;
    if (write(fd, data, len) != (ssize_t)len) { close(fd); return -1; }
    snprintf(path, plen, "/proc/self/fd/%d", fd);
    return fd;
}

int di_tcc_compile_obj(const char *src, const char *label, void **obj, size_t *len, di_err *err)
{
    tcc_log log = {{0}, 0};
    char path[64];
    int rc = DI_OK;
    pthread_mutex_lock(&tcc_lock);
    TCCState *s = new_state(&log, TCC_OUTPUT_OBJ);
    int fd = memfd_path("", 0, path, sizeof path);
    if (!s || fd < 0) {
        rc = di_fail(err, DI_ECOMPILE, "%s: cannot start libtcc", label);
    } else if (tcc_compile_string(s, src) < 0) {
        rc = di_fail(err, DI_ECOMPILE, "%s: libtcc rejected the generated C:\n%s", label, log.log);
    } else if (tcc_output_file(s, path) < 0) {
        rc = di_fail(err, DI_ECOMPILE, "%s: libtcc could not write the object:\n%s", label, log.log);
    } else {
        off_t n = lseek(fd, 0, SEEK_END);
        *obj = malloc(n > 0 ? (size_t)n : 1);
        *len = (size_t)n;
        if (n <= 0 || !*obj || pread(fd, *obj, (size_t)n, 0) != n) {
            free(*obj);
            *obj = NULL;
            rc = di_fail(err, DI_ECOMPILE, "%s: empty object from libtcc", label);
        }
    }
    if (s) tcc_delete(s);
    if (fd >= 0) close(fd);
    pthread_mutex_unlock(&tcc_lock);
    return rc;
}

int di_tcc_load_obj(const void *obj, size_t len, const char *symbol, di_tcc_code **code, void **fn, di_err *err)
{
    tcc_log log = {{0}, 0};
    char path[64];
    int rc = DI_OK;
    pthread_mutex_lock(&tcc_lock);
    TCCState *s = new_state(&log, TCC_OUTPUT_MEMORY);
    int fd = memfd_path(obj, len, path, sizeof path);
    if (!s || fd < 0) {
        rc = di_fail(err, DI_ECOMPILE, "%s: cannot start libtcc", symbol);
    } else {
        tcc_add_symbol(s, "sqrtf", (const void *)sqrtf);
        tcc_set_options(s, "-xb"); /* the memfd path has no .o suffix: say it is an object */
        if (tcc_add_file(s, path) < 0 || tcc_relocate(s, TCC_RELOCATE_AUTO) < 0) {
            rc = di_fail(err, DI_ECOMPILE, "%s: libtcc could not load the object:\n%s", symbol, log.log);
        } else if (!(*fn = tcc_get_symbol(s, symbol))) {
            rc = di_fail(err, DI_ECOMPILE, "%s: symbol not found in the object", symbol);
        }
    }
    if (fd >= 0) close(fd);
    if (rc) {
        if (s) tcc_delete(s);
    } else {
        *code = malloc(sizeof **code);
        (*code)->s = s;
    }
    pthread_mutex_unlock(&tcc_lock);
    return rc;
}

void di_tcc_free(di_tcc_code *code)
{
    if (!code) return;
    pthread_mutex_lock(&tcc_lock);
    tcc_delete(code->s);
    pthread_mutex_unlock(&tcc_lock);
    free(code);
}

void *di_tcc_symbol(di_tcc_code *code, const char *symbol)
{
    pthread_mutex_lock(&tcc_lock);
    void *p = tcc_get_symbol(code->s, symbol);
    pthread_mutex_unlock(&tcc_lock);
    return p;
}
