/* Token selection. Greedy: the largest logit, ties to the lowest id. Sampling: top-k, then
 * min-p, then top-p, then a draw at temperature T with a uniform number from Philox4x32-10 keyed by
 * (seed, request, position): a request's draws never depend on its batch mates or on
 * how many draws anybody made before. Candidates are ordered by (log-prob desc, id asc),
 * a total order, so the same log-probs always give the same token. */
#ifndef DI_SAMPLER_H
#define DI_SAMPLER_H
#include <stdint.h>

typedef struct di_sampler {
    float temp;       /* <= 0: greedy */
    int top_k;        /* <= 0: no limit */
    float top_p;      /* >= 1: no limit */
    uint64_t seed;
    float min_p;      /* <= 0: no limit; else keep p >= min_p * p(best), before temperature */
} di_sampler;

/* Philox4x32-10 of counter (c0..c3) and key (k0, k1). */
void di_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);
/* A uniform double in [0, 1) for (seed, request, position). */
double di_uniform(uint64_t seed, uint64_t request, uint64_t position);

/* Picks a token from one row of log-probs; greedy_id is the device's argmax for temp <= 0. */
int32_t di_sample(const di_sampler *s, const float *logprobs, int vocab, int32_t greedy_id, uint64_t request,
                  uint64_t position);

#endif
