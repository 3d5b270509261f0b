#include "base/strbuf.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void reserve(di_str *s, size_t extra)
{
    if (s->len + extra + 1 <= s->cap) return;
    size_t cap = s->cap ? s->cap : 256;
    while (cap < s->len + extra + 1) cap *= 2;
    char *p = realloc(s->p, cap);
    if (!p) { fputs("detinfer: out of memory in code generation\n", stderr); abort(); }
    s->p = p;
    s->cap = cap;
}

void di_str_puts(di_str *s, const char *text)
{
    size_t n = strlen(text);
    reserve(s, n);
    memcpy(s->p + s->len, text, n + 1);
    s->len += n;
}

void di_str_putn(di_str *s, const char *bytes, size_t n)
{
    reserve(s, n);
    if (n) memcpy(s->p + s->len, bytes, n);
    s->len += n;
    s->p[s->len] = 0;
}

void di_str_printf(di_str *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    reserve(s, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(s->p + s->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    s->len += (size_t)n;
}

void di_str_free(di_str *s)
{
    free(s->p);
    s->p = NULL;
    s->len = s->cap = 0;
}
