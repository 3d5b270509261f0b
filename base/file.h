/* Opening the files a person names on a command line (a model, a prompt file, a list of
 * prompts) or in a request: only regular files, opened without blocking, so a FIFO, a
 * device or a directory is an error at once instead of a hang; text with a NUL byte is an
 * error naming the file and line, instead of being cut short there by C strings.
 * Errors are DI_EUSAGE (bad input: exit status 2) or DI_ENOMEM, and their messages start
 * with "<what> <path>: " (just "<path>: " when what is NULL), e.g. "-f prompt.txt: ...". */
#ifndef DI_FILE_H
#define DI_FILE_H
#include <stddef.h>
#include <sys/stat.h>
#include "base/err.h"

/* Opens path read-only and returns its descriptor in *fd (close-on-exec, blocking reads),
 * with its fstat in *st when st is not NULL. Anything but a regular file is refused. */
int di_file_open_regular(const char *path, const char *what, int *fd, struct stat *st, di_err *err);

/* The whole text of a regular file, NUL-terminated, in *text (malloc'd; caller frees),
 * its length in *len (may be NULL). A NUL byte inside is refused, naming its line. */
int di_file_read_text(const char *path, const char *what, char **text, size_t *len, di_err *err);

#endif
