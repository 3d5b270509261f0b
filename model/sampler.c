#include "model/sampler.h"
#include <math.h>
#include <stdlib.h>

void di_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

double di_uniform(uint64_t seed, uint64_t request, uint64_t position)
{
    uint32_t ctr[4] = {(uint32_t)position, (uint32_t)(position >> 32), (uint32_t)request, (uint32_t)(request >> 32)};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)}, out[4];
    di_philox4x32(ctr, key, out);
    uint64_t bits = ((uint64_t)out[0] << 21) ^ (uint64_t)out[1]; /* 53 random bits */
    return (double)(bits & ((1ULL << 53) - 1)) / 9007199254740992.0;
}

typedef struct { float lp; int32_t id; } cand;

static int before(const cand *a, const cand *b) { return a->lp > b->lp || (a->lp == b->lp && a->id < b->id); }

static int cmp(const void *x, const void *y)
{
    const cand *a = x, *b = y;
    return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

int32_t di_sample(const di_sampler *s, const float *lp, int vocab, int32_t greedy_id, uint64_t request, uint64_t position)
{
    if (s->temp <= 0.0f) return greedy_id;
    int k = s->top_k > 0 && s->top_k < vocab ? s->top_k : vocab;
    cand *c = malloc((size_t)vocab * sizeof *c);
    if (!c) return greedy_id;
    int n = 0;
    if (k < vocab) {
        /* keep the k best by insertion into a sorted prefix: O(V k), k small */
        for (int32_t id = 0; id < vocab; id++) {
            cand x = {lp[id], id};
            if (x.lp != x.lp) continue;
            if (n == k && !before(&x, &c[n - 1])) continue;
            int j = n < k ? n++ : n - 1;
            while (j > 0 && before(&x, &c[j - 1])) { c[j] = c[j - 1]; j--; }
            c[j] = x;
        }
    } else {
        for (int32_t id = 0; id < vocab; id++)
            if (lp[id] == lp[id]) c[n++] = (cand){lp[id], id};
        qsort(c, (size_t)n, sizeof *c, cmp);
    }
    if (n == 0) { free(c); return greedy_id; }
    /* min-p on the model's probabilities (not the tempered ones): c is sorted, so a prefix */
    if (s->min_p > 0.0f) {
        double floor = log((double)s->min_p);
        int keep = 1;
        while (keep < n && (double)c[keep].lp - c[0].lp >= floor) keep++;
        n = keep;
    }
    /* weights at temperature T, relative to the best; then the top-p prefix */
    double *w = malloc((size_t)n * sizeof *w), total = 0;
    if (!w) { free(c); return greedy_id; }
    for (int i = 0; i < n; i++) total += w[i] = exp(((double)c[i].lp - c[0].lp) / s->temp);
    if (s->top_p < 1.0f) {
        double acc = 0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            acc += w[i];
            if (acc >= s->top_p * total) { keep = i + 1; break; }
        }
        n = keep;
        total = 0;
        for (int i = 0; i < n; i++) total += w[i];
    }
    double u = di_uniform(s->seed, request, position) * total, acc = 0;
    int32_t pick = c[n - 1].id;
    for (int i = 0; i < n; i++) {
        acc += w[i];
        if (u < acc) { pick = c[i].id; break; }
    }
    free(w);
    free(c);
    return pick;
}
