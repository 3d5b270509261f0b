#define _GNU_SOURCE /* memfd_create, mkdtemp */
#include "runtime/cc.h"
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* The memfd stays open while the object is loaded: glibc's dlopen finds an object already
 * loaded by its path name first, so two objects must never be loaded from the same
 * /proc/self/fd/N path at once. */
struct di_cc_code { void *handle; int fd; };

/* The flags, in the order they reach the compiler (and the cache key). Why each is there:
 *   -O3: loops over independent outputs become SIMD lanes (the matmul tile runs ~1.5x faster
 *       than at -O2); an in-order reduction chain stays a chain (without -fassociative-math the
 *       vectoriser may not split it). -O3 changes no IEEE semantics; only -Ofast would.
 *   -ffp-contract=off: a * b + c stays two roundings (exact forbids FMA, as --fmad=false on the GPU).
 *   -fno-fast-math: stated, so that no CFLAGS-style default can turn it on.
 *   -fno-math-errno: sqrtf becomes sqrtss (correctly rounded, as libm's is): no library call.
 *   -fno-strict-aliasing: the matmul lowering reads two bf16 weights as one 32-bit word.
 *   -fno-tree-loop-distribute-patterns: no memset/memcpy calls for zeroing loops (the unit is
 *       linked -nostdlib, as it is for libtcc).
 *   -mavx2 (x86-64 with AVX2 only): 8 lanes; no -mfma, so no FMA instruction can appear at all.
 *   -mavx512f/vl/bw/dq (where the host has all four): 16 lanes for the packed matmul's vectors
 *       (GCC's -mavx512f does not imply -mfma either). Either way each lane is one output's chain:
 *       the width changes how many run at once, never a bit. */
static const char *const base_flags[] = {
    "-std=gnu11", "-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno",
    "-fno-strict-aliasing", "-fno-tree-loop-distribute-patterns", "-fPIC", "-shared", "-nostdlib", "-s", "-w",
};
enum { NBASE = sizeof base_flags / sizeof base_flags[0], MAX_FLAGS = NBASE + 6 };

static struct {
    pthread_once_t once;
    bool ok;
    char why[1024];
    char command[256];
    char version[256];
    const char *flags[MAX_FLAGS];
    int nflags;
} probe = {PTHREAD_ONCE_INIT};

/* Runs argv with stdout and stderr into the file `out`; returns the exit status (-1: not run). */
static int run_to_file(char *const argv[], const char *out)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc) { errno = rc; return -1; }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* The whole file, NUL-terminated (malloc'd); NULL if unreadable. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap);
            if (!nb) { free(buf); fclose(f); return NULL; }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    fclose(f);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

/* A private scratch directory for one compile (or the probe); "" on failure. */
static void scratch_dir(char *dir, size_t len)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, len, "%s/detinfer-cc-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) dir[0] = 0;
}

static void do_probe(void)
{
    const char *env = getenv("DETINFER_CC");
    snprintf(probe.command, sizeof probe.command, "%s", env && *env ? env : "cc");
    for (int i = 0; i < NBASE; i++) probe.flags[probe.nflags++] = base_flags[i];
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) probe.flags[probe.nflags++] = "-mavx2";
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq"))
        for (const char *const *f = (const char *const[]){"-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", NULL}; *f; f++)
            probe.flags[probe.nflags++] = *f;
#endif
    char dir[512], out[600];
    scratch_dir(dir, sizeof dir);
    if (!dir[0]) { snprintf(probe.why, sizeof probe.why, "cannot make a scratch directory: %s", strerror(errno)); return; }
    snprintf(out, sizeof out, "%s/version", dir);
    char *argv[] = {probe.command, "--version", NULL};
    int st = run_to_file(argv, out);
    char *text = read_file(out, NULL);
    unlink(out);
    rmdir(dir);
    if (st != 0 || !text || !text[0]) {
        snprintf(probe.why, sizeof probe.why, "`%s --version` %s", probe.command,
                 st < 0 ? strerror(errno) : st ? "failed" : "printed nothing");
        free(text);
        return;
    }
    text[strcspn(text, "\r\n")] = 0;
    snprintf(probe.version, sizeof probe.version, "%s", text);
    free(text);
    probe.ok = true;
}

bool di_cc_available(di_err *err)
{
    pthread_once(&probe.once, do_probe);
    if (!probe.ok) di_fail(err, DI_ENODEV, "no system C compiler (DETINFER_CC or cc): %s", probe.why);
    return probe.ok;
}

const char *di_cc_version(void) { return probe.version; }
const char *di_cc_command(void) { return probe.command; }

int di_cc_flags(const char *const **flags)
{
    pthread_once(&probe.once, do_probe);
    *flags = probe.flags;
    return probe.nflags;
}

int di_cc_compile_so(const char *src, const char *label, void **so, size_t *len, di_err *err)
{
    if (!di_cc_available(err)) return err->code;
    char dir[512], c[600], obj[600], log[600];
    scratch_dir(dir, sizeof dir);
    if (!dir[0]) return di_fail(err, DI_EIO, "%s: cc: cannot make a scratch directory: %s", label, strerror(errno));
    snprintf(c, sizeof c, "%s/k.c", dir);
    snprintf(obj, sizeof obj, "%s/k.so", dir);
    snprintf(log, sizeof log, "%s/log", dir);
    int rc = DI_OK;
    FILE *f = fopen(c, "wb");
    if (!f || fputs(src, f) < 0 || fclose(f)) {
        if (f) fclose(f);
        rc = di_fail(err, DI_EIO, "%s: cc: cannot write %s: %s", label, c, strerror(errno));
    } else {
        const char *argv[MAX_FLAGS + 6];
        int n = 0;
        argv[n++] = probe.command;
        for (int i = 0; i < probe.nflags; i++) argv[n++] = probe.flags[i];
        argv[n++] = "-o";
        argv[n++] = obj;
        argv[n++] = c;
        argv[n] = NULL;
        int st = run_to_file((char *const *)argv, log);
        char *text = read_file(log, NULL);
        if (st != 0) {
            rc = di_fail(err, DI_ECOMPILE, "%s: %s rejected the generated C (exit %d%s%s):\n%.6000s", label,
                         probe.command, st, st < 0 ? ": " : "", st < 0 ? strerror(errno) : "", text ? text : "");
        } else if (!(*so = read_file(obj, len)) || !*len) {
            free(*so);
            *so = NULL;
            rc = di_fail(err, DI_ECOMPILE, "%s: %s wrote no shared object", label, probe.command);
        }
        free(text);
    }
    unlink(c);
    unlink(obj);
    unlink(log);
    rmdir(dir);
    return rc;
}

/* dlopen of a memfd: the object is never a file anyone else can see or change. */
static void *open_memfd(const void *so, size_t len, int *fdp, char *why, size_t wlen)
{
    int fd = memfd_create("detinfer-cc", MFD_CLOEXEC);
    if (fd < 0) { snprintf(why, wlen, "memfd_create: %s", strerror(errno)); return NULL; }
    const char *p = so;
    for (size_t done = 0; done < len;) {
        ssize_t w = write(fd, p + done, len - done);
        if (w <= 0) { snprintf(why, wlen, "memfd write: %s", strerror(errno)); close(fd); return NULL; }
        done += (size_t)w;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(why, wlen, "%s", dlerror());
        close(fd);
        return NULL;
    }
    *fdp = fd;
    return h;
}

int di_cc_load_so(const void *so, size_t len, const char *symbol, di_cc_code **code, void **fn, di_err *err)
{
    char why[1024];
    int fd = -1;
    void *h = open_memfd(so, len, &fd, why, sizeof why);
    if (!h) return di_fail(err, DI_ECOMPILE, "%s: cannot load the shared object: %s", symbol, why);
    if (!(*fn = dlsym(h, symbol)) || !(*code = malloc(sizeof **code))) {
        dlclose(h);
        close(fd);
        return *fn ? di_fail(err, DI_ENOMEM, "out of memory")
                   : di_fail(err, DI_ECOMPILE, "%s: symbol not found in the shared object", symbol);
    }
    (*code)->handle = h;
    (*code)->fd = fd;
    return DI_OK;
}

void *di_cc_symbol(di_cc_code *code, const char *symbol) { return dlsym(code->handle, symbol); }

void di_cc_free(di_cc_code *code)
{
    if (!code) return;
    dlclose(code->handle);
    close(code->fd);
    free(code);
}
