/* What the command-line tools and benchmarks do alike, in one place: a usage error names the
 * tool and what is wrong and exits 2; integers are parsed strictly (strtol alone takes leading
 * blanks and trailing text, so " 8" or "8x" would pass); the clock is monotonic. Header-only:
 * the tools link the library, not each other. */
#ifndef DI_TOOLS_CLI_H
#define DI_TOOLS_CLI_H

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* "TOOL: <fmt with arg>" and a pointer to --help; the exit status for usage errors */
static inline int cli_usage_error(const char *tool, const char *fmt, const char *arg)
{
    fprintf(stderr, "%s: ", tool);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(%s --help lists the options)\n", tool);
    return 2;
}

/* a decimal integer in [lo, hi] and nothing else: no blanks, no trailing text */
static inline bool cli_parse_long(const char *s, long lo, long hi, long *out)
{
    if (!s || *s == ' ' || *s == '\t' || *s == '\n') return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static inline bool cli_parse_int(const char *s, int lo, int hi, int *out)
{
    long v;
    if (!cli_parse_long(s, lo, hi, &v)) return false;
    *out = (int)v;
    return true;
}

/* Prompt lookup's n-gram flags, as generate and serve take them: --draft-ngram-min defaults to
 * min(2, --draft-ngram) and may not exceed it; both need --draft-max. -1 to go on, else 2. */
static inline int cli_draft_ngram(const char *tool, bool given, int draft_max, int ngram_max, int *ngram_min)
{
    if (given && draft_max == 0)
        return cli_usage_error(tool, "%s", "--draft-ngram and --draft-ngram-min need --draft-max K");
    if (*ngram_min < 0) *ngram_min = ngram_max < 2 ? ngram_max : 2;
    if (*ngram_min > ngram_max) {
        fprintf(stderr, "%s: --draft-ngram-min %d is longer than --draft-ngram %d\n(%s --help lists the options)\n", tool,
                *ngram_min, ngram_max, tool);
        return 2;
    }
    return -1;
}

/* seconds on the monotonic clock */
static inline double cli_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

#endif
