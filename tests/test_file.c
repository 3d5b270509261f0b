/* base/file: the files a person names are opened only when they are regular files, without
 * blocking (a FIFO with no writer returns at once), and text with a NUL byte is refused with
 * its file and line. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "base/file.h"
#include "model/gguf.h"

static char dir[64];

static void setup(void)
{
    strcpy(dir, "/tmp/di_file_test_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) {}
}

TestSuite(file, .init = setup, .fini = teardown);

static const char *write_tmp(const char *name, const void *data, size_t n)
{
    static char path[4][128];
    static int next;
    char *p = path[next++ & 3];
    snprintf(p, 128, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(data, 1, n, f), n);
    fclose(f);
    return p;
}

static void expect_refused(int rc, const di_err *e, const char *start, const char *needle)
{
    cr_assert_eq(rc, DI_EUSAGE, "rc %d: %s", rc, e->msg);
    cr_assert(!strncmp(e->msg, start, strlen(start)), "message does not start with '%s': %s", start, e->msg);
    cr_assert(strstr(e->msg, needle), "message lacks '%s': %s", needle, e->msg);
}

Test(file, reads_regular_text)
{
    const char *p = write_tmp("a.txt", "one\ntwo\n", 8);
    char *text = NULL;
    size_t n = 0;
    di_err e = {0};
    cr_assert_eq(di_file_read_text(p, "-f", &text, &n, &e), 0, "%s", e.msg);
    cr_assert_eq(n, 8);
    cr_assert_str_eq(text, "one\ntwo\n");
    free(text);
    p = write_tmp("empty.txt", "", 0);
    cr_assert_eq(di_file_read_text(p, NULL, &text, &n, &e), 0, "%s", e.msg);
    cr_assert(n == 0 && text && !text[0]);
    free(text);
    /* st_size says 0 for /proc files: the text is read to its end, not to st_size */
    cr_assert_eq(di_file_read_text("/proc/self/status", NULL, &text, &n, &e), 0, "%s", e.msg);
    cr_assert(n > 0 && strstr(text, "Name:"), "%zu bytes", n);
    free(text);
}

Test(file, nul_bytes_name_the_file_and_line)
{
    static const char t[] = "first\nsecond\nthi\0rd\n";
    const char *p = write_tmp("nul.txt", t, sizeof t - 1);
    char *text = (char *)1;
    di_err e = {0};
    char want[160];
    snprintf(want, sizeof want, "--batch-file %s:3: a NUL byte (byte 16 of the file)", p);
    expect_refused(di_file_read_text(p, "--batch-file", &text, NULL, &e), &e, want, "NUL");
    cr_assert_null(text);
    p = write_tmp("nul0.txt", "\0", 1);
    snprintf(want, sizeof want, "%s:1: a NUL byte", p);
    expect_refused(di_file_read_text(p, NULL, &text, NULL, &e), &e, want, "byte 0");
}

Test(file, fifos_devices_and_directories_are_refused_at_once, .timeout = 30)
{
    char fifo[128];
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    time_t t0 = time(NULL);
    int fd = -2;
    di_err e = {0};
    char start[200];
    snprintf(start, sizeof start, "-m %s: not a regular file", fifo);
    expect_refused(di_file_open_regular(fifo, "-m", &fd, NULL, &e), &e, start, "it is a FIFO");
    cr_assert_eq(fd, -1);
    char *text;
    expect_refused(di_file_read_text(fifo, "-f", &text, NULL, &e), &e, "-f ", "it is a FIFO");
    di_gguf *g = (di_gguf *)1;
    expect_refused(di_gguf_open(fifo, &g, &e), &e, fifo, "it is a FIFO");
    cr_assert_null(g);
    cr_assert_lt(time(NULL) - t0, 5, "a FIFO took %lld s", (long long)(time(NULL) - t0));
    expect_refused(di_file_open_regular("/dev/null", NULL, &fd, NULL, &e), &e, "/dev/null: ", "a character device");
    expect_refused(di_file_open_regular(dir, NULL, &fd, NULL, &e), &e, dir, "a directory");
    expect_refused(di_file_open_regular("/nonexistent/x", "--background", &fd, NULL, &e), &e,
                   "--background /nonexistent/x: cannot open", "No such file");
}

Test(file, a_symlink_to_a_regular_file_is_fine)
{
    const char *p = write_tmp("target.txt", "x", 1);
    char link[128];
    snprintf(link, sizeof link, "%s/link", dir);
    cr_assert_eq(symlink(p, link), 0);
    int fd = -1;
    struct stat st;
    di_err e = {0};
    cr_assert_eq(di_file_open_regular(link, NULL, &fd, &st, &e), 0, "%s", e.msg);
    cr_assert(fd >= 0 && st.st_size == 1);
    cr_assert_eq(fcntl(fd, F_GETFL) & O_NONBLOCK, 0, "the descriptor should block again");
    cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    close(fd);
}
