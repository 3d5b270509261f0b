#include "model/draft.h"
#include <stddef.h>

const char *di_draft_check(const di_draft_opts *o)
{
    if (o->draft_max < 0 || o->draft_max > DI_DRAFT_MAX) return "draft_max must be 0..16";
    if (o->model) return NULL;
    if (o->ngram_min < 1 || o->ngram_max > DI_NGRAM_MAX || o->ngram_min > o->ngram_max)
        return "the n-gram lengths must satisfy 1 <= ngram_min <= ngram_max <= 16";
    return NULL;
}

/* Token i of a ++ b ++ out: the draft may copy from its own beginning. */
static int32_t at(const int32_t *a, int na, const int32_t *b, const int32_t *out, int L, int i)
{
    return i < na ? a[i] : i < L ? b[i - na] : out[i - L];
}

/* Whether the n tokens at i equal the sequence's last n (L tokens). */
static bool matches(const int32_t *a, int na, const int32_t *b, int L, int i, int n)
{
    for (int j = 0; j < n; j++)
        if (at(a, na, b, NULL, L, i + j) != at(a, na, b, NULL, L, L - n + j)) return false;
    return true;
}

int di_draft_lookup(const int32_t *a, int na, const int32_t *b, int nb, int ngram_min, int ngram_max, int max,
                    int32_t *out)
{
    int L = na + nb;
    for (int n = ngram_max; n >= ngram_min; n--) {
        if (n >= L) continue;   /* an n-gram needs an earlier occurrence and a token after it */
        /* the latest earlier occurrence: recent text predicts the next tokens best (an edit of
         * the passage just written, the current iteration of a loop) */
        for (int i = L - n - 1; i >= 0; i--) {
            if (!matches(a, na, b, L, i, n)) continue;
            int k = 0;
            for (; k < max; k++) out[k] = at(a, na, b, out, L, i + n + k);
            return k;
        }
    }
    return 0;
}
