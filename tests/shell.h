/* The tools as a person runs them, for the suites that drive the binaries: a shell command line
 * with stdout and stderr together, its exit status (128 + signal when killed), and the check
 * "this status, and this text somewhere in the output". */
#ifndef DI_TESTS_SHELL_H
#define DI_TESTS_SHELL_H

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

typedef struct { int status; char out[65536]; } ran;

static ran sh(const char *fmt, ...) __attribute__((format(printf, 1, 2), unused));
static ran sh(const char *fmt, ...)
{
    char cmd[8192], full[8300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "(%s) 2>&1", cmd);   /* every part's stderr, for a command list too */
    ran r = {0};
    FILE *p = popen(full, "r");
    cr_assert_not_null(p);
    size_t n = fread(r.out, 1, sizeof r.out - 1, p);
    r.out[n] = 0;
    char rest[4096];   /* drain what does not fit: a closed pipe would kill the child (SIGPIPE) */
    while (fread(rest, 1, sizeof rest, p) > 0) {}
    int st = pclose(p);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return r;
}

static void __attribute__((unused)) expect(const ran *r, int status, const char *needle)
{
    cr_assert_eq(r->status, status, "exit %d (want %d); output:\n%s", r->status, status, r->out);
    cr_assert(strstr(r->out, needle), "output lacks '%s':\n%s", needle, r->out);
}

#endif
