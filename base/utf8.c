#include "base/utf8.h"
#include <string.h>

/* The sequence at s[0..n): its full length if it is one valid, complete character (RFC 3629:
 * no overlongs, no surrogates, nothing above U+10FFFF), else 0; *prefix gets how many of its
 * bytes could begin a valid character (0 for a byte that never can). */
static size_t seq(const unsigned char *s, size_t n, size_t *prefix)
{
    unsigned c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;    /* the range of the second byte */
    if (c < 0x80) { *prefix = 1; return 1; }
    else if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else { *prefix = 0; return 0; }
    size_t i = 1;
    for (; i < len && i < n; i++) {
        unsigned b = s[i];
        if (i == 1 ? b < lo || b > hi : b < 0x80 || b > 0xBF) break;
    }
    *prefix = i;
    return i == len ? len : 0;
}

bool di_utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0, p; i < n;) {
        size_t k = seq(u + i, n - i, &p);
        if (!k) return false;
        i += k;
    }
    return true;
}

size_t di_utf8_complete(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    /* a character is at most 4 bytes: only a lead among the last 3 can be incomplete */
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        size_t at = n - back, p;
        if ((u[at] & 0xC0) == 0x80) continue;        /* a continuation byte: look further back */
        if (!seq(u + at, back, &p) && p == back && back < 4 && u[at] >= 0xC2) return at;
        return n;
    }
    return n;
}

void di_utf8_sanitize(di_str *out, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0, p; i < n;) {
        size_t k = seq(u + i, n - i, &p);
        if (k) {
            di_str_putn(out, s + i, k);
            i += k;
        } else {
            di_str_puts(out, "\xEF\xBF\xBD");
            i += p ? p : 1;
        }
    }
    if (!out->p) di_str_putn(out, "", 0);
}
