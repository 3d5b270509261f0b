/* UTF-8 for text that leaves the program (JSON, SSE, a terminal). Token pieces are bytes: a
 * character may be split between tokens, and a completion may stop inside one. The rule
 * everywhere (generate, serve): while streaming, an incomplete trailing sequence is held back
 * until the next token completes it; at the end, whatever is still invalid or incomplete is
 * replaced by U+FFFD, one per maximal invalid subpart (as WHATWG and Python's "replace" do).
 * Exact bytes stay available as token ids (and "bytes" in the server's log-probs). */
#ifndef DI_UTF8_H
#define DI_UTF8_H
#include <stdbool.h>
#include <stddef.h>
#include "base/strbuf.h"

bool di_utf8_valid(const char *s, size_t n);
/* The longest prefix of s[0..n) that does not end inside an incomplete but so far valid
 * sequence: what a streamer may emit now (sanitized) without splitting a character. */
size_t di_utf8_complete(const char *s, size_t n);
/* Appends s[0..n) to out, each invalid or incomplete sequence replaced by U+FFFD. Sanitizing a
 * complete prefix and then the rest gives the same bytes as sanitizing the whole. */
void di_utf8_sanitize(di_str *out, const char *s, size_t n);

#endif
