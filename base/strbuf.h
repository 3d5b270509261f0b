/* A growing string for generated source. Allocation failure aborts the process: the
 * generator's outputs are tiny, and every caller would otherwise have to thread it. */
#ifndef DI_STRBUF_H
#define DI_STRBUF_H
#include <stddef.h>

typedef struct di_str { char *p; size_t len, cap; } di_str;

void di_str_puts(di_str *s, const char *text);
void di_str_putn(di_str *s, const char *bytes, size_t n);   /* may hold NUL bytes; len counts them */
void di_str_printf(di_str *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void di_str_free(di_str *s);

#endif
