/* Regular files only, opened without blocking; text without NUL bytes. See file.h. */
#include "base/file.h"
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *kind_of(mode_t m)
{
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    return "not a regular file";
}

/* "<what> <path>" or "<path>", for the start of a message */
static int fail_file(di_err *err, int code, const char *what, const char *path, const char *fmt, const char *detail)
{
    return di_fail(err, code, "%s%s%s: %s%s", what ? what : "", what ? " " : "", path, fmt, detail ? detail : "");
}

int di_file_open_regular(const char *path, const char *what, int *fd, struct stat *st, di_err *err)
{
    *fd = -1;
    struct stat s;
    /* stat first, so that a device is never even opened (opening some has side effects) */
    if (stat(path, &s)) return fail_file(err, DI_EUSAGE, what, path, "cannot open: ", strerror(errno));
    if (!S_ISREG(s.st_mode)) return fail_file(err, DI_EUSAGE, what, path, "not a regular file: it is ", kind_of(s.st_mode));
    /* O_NONBLOCK: if a FIFO took the file's place since the stat, the open returns at once
     * (a blocking open would wait for a writer forever); fstat then refuses it */
    int f = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (f < 0) return fail_file(err, DI_EUSAGE, what, path, "cannot open: ", strerror(errno));
    if (fstat(f, &s)) {
        int e = errno;
        close(f);
        return fail_file(err, DI_EUSAGE, what, path, "cannot stat: ", strerror(e));
    }
    if (!S_ISREG(s.st_mode)) {
        close(f);
        return fail_file(err, DI_EUSAGE, what, path, "not a regular file: it is ", kind_of(s.st_mode));
    }
    int flags = fcntl(f, F_GETFL);
    if (flags >= 0) fcntl(f, F_SETFL, flags & ~O_NONBLOCK);
    if (st) *st = s;
    *fd = f;
    return DI_OK;
}

/* Reads to the end (st_size is not trusted: files in /proc say 0, a file may grow). */
static int read_to_end(int fd, const char *what, const char *path, char **out, size_t *len, di_err *err)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) return fail_file(err, DI_ENOMEM, what, path, "out of memory reading it", NULL);
        if (cap - n < 2) {
            char *b = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (!b) free(buf);
            buf = b;
            cap *= 2;
            continue;
        }
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            return fail_file(err, DI_EUSAGE, what, path, "cannot read: ", strerror(e));
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return DI_OK;
}

int di_file_read_text(const char *path, const char *what, char **text, size_t *len, di_err *err)
{
    *text = NULL;
    if (len) *len = 0;
    int fd, rc;
    if ((rc = di_file_open_regular(path, what, &fd, NULL, err))) return rc;
    char *buf = NULL;
    size_t n = 0;
    rc = read_to_end(fd, what, path, &buf, &n, err);
    close(fd);
    if (rc) return rc;
    const char *nul = memchr(buf, 0, n);
    if (nul) {
        size_t line = 1;
        for (const char *p = buf; p < nul; p++) line += *p == '\n';
        size_t at = (size_t)(nul - buf);
        free(buf);
        return di_fail(err, DI_EUSAGE, "%s%s%s:%zu: a NUL byte (byte %zu of the file): text cannot hold one",
                       what ? what : "", what ? " " : "", path, line, at);
    }
    *text = buf;
    if (len) *len = n;
    return DI_OK;
}
