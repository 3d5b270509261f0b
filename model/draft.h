/* Drafts for speculative decoding: guesses of a sequence's next tokens that the engine verifies
 * in one forward step (model/engine.c, "speculation"). A draft only chooses which rows a step
 * carries; the tokens and log-probs come from the verifying rows alone, so a wrong draft costs
 * time, never a bit.
 *
 * Prompt lookup (no second model): the longest n-gram, n from ngram_max down to ngram_min,
 * that ends the sequence (prompt and text so far) and occurred before; the draft is what
 * followed its latest earlier occurrence, copied forward LZ77-style (the copy may run into
 * itself, so a loop of period p < draft_max is drafted whole). */
#ifndef DI_DRAFT_H
#define DI_DRAFT_H
#include <stdbool.h>
#include <stdint.h>

enum { DI_DRAFT_MAX = 16, DI_NGRAM_MAX = 16 };   /* draft_max and ngram_max at most */

typedef struct di_draft_opts {
    int draft_max;            /* K: tokens drafted per step at most (0: no speculation) */
    int ngram_max;            /* prompt lookup: the longest suffix matched (generate and serve: 3, min 2) */
    int ngram_min;            /* and the shortest; 1 <= ngram_min <= ngram_max */
    bool model;               /* draft with the engine's draft model instead of prompt lookup */
} di_draft_opts;

/* "draft_max 1..16, ngram_min <= ngram_max <= 16": NULL if o is valid, else what is wrong
 * (a static string, for messages naming the caller's flag or field). */
const char *di_draft_check(const di_draft_opts *o);

/* Prompt lookup over the sequence a ++ b (prompt, then generated tokens): writes up to max
 * tokens to out and returns how many (0: no n-gram of the range occurred before). */
int di_draft_lookup(const int32_t *a, int na, const int32_t *b, int nb, int ngram_min, int ngram_max, int max,
                    int32_t *out);

#endif
