/* The sampler: Philox against the Random123 known answers; greedy ties; a draw depends only
 * on (seed, request, position); top-k and top-p keep what they say. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "model/sampler.h"

Test(sampler, philox4x32_10_known_answers)
{
    uint32_t out[4];
    di_philox4x32((uint32_t[]){0, 0, 0, 0}, (uint32_t[]){0, 0}, out);
    cr_assert(out[0] == 0x6627e8d5 && out[1] == 0xe169c58d && out[2] == 0xbc57ac4c && out[3] == 0x9b00dbd8,
              "%08x %08x %08x %08x", out[0], out[1], out[2], out[3]);
    di_philox4x32((uint32_t[]){0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, (uint32_t[]){0xffffffff, 0xffffffff}, out);
    cr_assert(out[0] == 0x408f276d && out[1] == 0x41c83b0e && out[2] == 0xa20bc7c6 && out[3] == 0x6d5451fd,
              "%08x %08x %08x %08x", out[0], out[1], out[2], out[3]);
    di_philox4x32((uint32_t[]){0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, (uint32_t[]){0xa4093822, 0x299f31d0}, out);
    cr_assert(out[0] == 0xd16cfe09 && out[1] == 0x94fdcceb && out[2] == 0x5001e420 && out[3] == 0x24126ea1,
              "%08x %08x %08x %08x", out[0], out[1], out[2], out[3]);
}

Test(sampler, uniform_is_a_function_of_its_key_only)
{
    double a = di_uniform(42, 7, 100), b = di_uniform(42, 7, 100);
    cr_assert(memcmp(&a, &b, sizeof a) == 0);
    cr_assert(a >= 0 && a < 1);
    cr_assert_neq(di_uniform(42, 7, 101), a);
    cr_assert_neq(di_uniform(43, 7, 100), a);
    cr_assert_neq(di_uniform(42, 8, 100), a);
    /* roughly uniform: mean of 100k draws */
    double s = 0;
    for (int i = 0; i < 100000; i++) s += di_uniform(1, 0, (uint64_t)i);
    cr_assert(fabs(s / 100000 - 0.5) < 0.01, "mean %g", s / 100000);
}

static float *logprobs_of(const double *w, int n)
{
    double z = 0;
    for (int i = 0; i < n; i++) z += w[i];
    float *lp = malloc(sizeof(float) * (size_t)n);
    for (int i = 0; i < n; i++) lp[i] = (float)log(w[i] / z);
    return lp;
}

Test(sampler, greedy_returns_the_device_argmax)
{
    float lp[4] = {-1, -0.5f, -0.5f, -3};
    di_sampler g = {0, 40, 0.95f, 1, 0};
    cr_assert_eq(di_sample(&g, lp, 4, 1, 0, 0), 1);
}

Test(sampler, top_k_and_top_p_limit_the_candidates)
{
    double w[6] = {0.30, 0.25, 0.20, 0.15, 0.06, 0.04};
    float *lp = logprobs_of(w, 6);
    di_sampler k2 = {1.0f, 2, 1.0f, 9, 0};
    int seen[6] = {0};
    for (uint64_t pos = 0; pos < 4000; pos++) seen[di_sample(&k2, lp, 6, 0, 0, pos)]++;
    cr_assert(seen[0] > 0 && seen[1] > 0 && seen[2] + seen[3] + seen[4] + seen[5] == 0, "top-k 2 drew outside {0, 1}");
    /* frequencies follow the renormalized weights 0.30 : 0.25 */
    cr_assert(fabs(seen[0] / 4000.0 - 0.30 / 0.55) < 0.03, "p0 %g", seen[0] / 4000.0);
    di_sampler p = {1.0f, 0, 0.70f, 9, 0};  /* 0.30 + 0.25 + 0.20 = 0.75 >= 0.70: three candidates */
    memset(seen, 0, sizeof seen);
    for (uint64_t pos = 0; pos < 4000; pos++) seen[di_sample(&p, lp, 6, 0, 0, pos)]++;
    cr_assert(seen[2] > 0 && seen[3] + seen[4] + seen[5] == 0, "top-p 0.7 kept %d %d %d", seen[3], seen[4], seen[5]);
    /* low temperature concentrates on the best */
    di_sampler cold = {0.05f, 0, 1.0f, 9, 0};
    int best = 0;
    for (uint64_t pos = 0; pos < 1000; pos++) best += di_sample(&cold, lp, 6, 0, 0, pos) == 0;
    cr_assert_gt(best, 950);
    free(lp);
}

Test(sampler, equal_logprobs_order_by_id)
{
    float lp[5] = {-1.6094f, -1.6094f, -1.6094f, -1.6094f, -1.6094f};
    di_sampler s = {1.0f, 1, 1.0f, 3, 0};   /* top-1 of a five-way tie: the lowest id */
    for (uint64_t pos = 0; pos < 50; pos++) cr_assert_eq(di_sample(&s, lp, 5, 4, 0, pos), 0);
}

/* min-p keeps the candidates with p >= min_p x p(best), on the model's probabilities: with
 * p = 0.5, 0.3, 0.15, 0.05 and min_p 0.5 only ids 0 and 1 (0.3 >= 0.25) can be drawn. */
Test(sampler, min_p_keeps_a_prefix)
{
    float lp[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    di_sampler s = {.temp = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 5, .min_p = 0.5f};
    int seen[4] = {0};
    for (uint64_t pos = 0; pos < 400; pos++) seen[di_sample(&s, lp, 4, 0, 0, pos)]++;
    cr_assert(seen[0] > 0 && seen[1] > 0, "min-p dropped a kept candidate: %d %d", seen[0], seen[1]);
    cr_assert_eq(seen[2] + seen[3], 0, "min-p kept ids 2/3: %d %d", seen[2], seen[3]);
    s.min_p = 0.0f;
    for (uint64_t pos = 0; pos < 400; pos++) seen[di_sample(&s, lp, 4, 0, 0, pos)]++;
    cr_assert_gt(seen[2] + seen[3], 0, "without min-p ids 2/3 should be drawn sometimes");
}
