#include "base/err.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int di_fail(di_err *e, int code, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        e->code = code;
    }
    return code;
}

int di_wrap(di_err *e, const char *fmt, ...)
{
    if (!e) return DI_OK;
    char prefix[1024], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    snprintf(e->msg, sizeof e->msg, "%.1000s: %.7000s", prefix, old);
    return e->code;
}

void di_err_clear(di_err *e)
{
    if (e) { e->code = DI_OK; e->msg[0] = 0; }
}
