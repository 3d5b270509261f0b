/* Random, valid arguments for any spec of kernels.def, by argument name and shape (shared by
 * the GPU-vs-CPU suite and the CPU row-invariance suite). */
#ifndef DI_TEST_SPEC_ARGS_H
#define DI_TEST_SPEC_ARGS_H
#include "helpers.h"
#include "codegen/codegen.h"
#include <ctype.h>

enum { NBLK = 24, NSEQ = 3, MAXB = 8 };

/* Elements of an argument: its shape with runtime names bound. */
static inline long arg_elems(const di_spec *s, const di_specialization *p, const di_arg *a, long rows)
{
    if (a->role == DI_ROLE_SCALAR) return 1;
    long total = 1;
    const char *c = a->shape;
    while (*c) {
        const char *e = strchr(c, ',');
        size_t n = e ? (size_t)(e - c) : strlen(c);
        char tok[128];
        snprintf(tok, sizeof tok, "%.*s", (int)n, c);
        char *t = tok;
        while (isspace((unsigned char)*t)) t++;
        long v;
        di_err err = {0};
        if (!strcmp(t, "rows") || !strcmp(t, "n")) v = rows;
        else if (!strcmp(t, "maxb")) v = MAXB;
        else if (!strcmp(t, "blocks")) v = NBLK;
        else if (!strcmp(t, "seqs")) v = NSEQ;
        else if (!strcmp(t, "KVB")) v = s->sched.kv_block;
        else cr_assert_eq(di_eval_expr(s, p, t, &v, &err), 0, "%s: %s", s->name, err.msg);
        total *= v;
        c = e ? e + 1 : c + n;
    }
    return total;
}

/* Random, valid contents by argument name: ids within their ranges, data in [-1, 1). */
static inline void fill_arg(const di_spec *s, const di_specialization *p, const di_arg *a, di_dtype t, void *buf, long count,
                     long rows, uint64_t seed)
{
    if (t == DI_F32) { th_fill(buf, (size_t)count, seed); return; }
    if (t == DI_BF16) {
        for (long i = 0; i < count; i++) ((uint16_t *)buf)[i] = th_bf16(th_uniform(&seed));
        return;
    }
    int *v = buf;
    long kvb = s->sched.kv_block ? s->sched.kv_block : 32, range = MAXB * kvb, r0 = (long)(seed % (uint64_t)range);
    for (long i = 0; i < count; i++) {
        uint64_t r = th_next(&seed);
        if (!strcmp(a->name, "tok")) v[i] = (int)(r % (uint64_t)di_spec_dim(s, p, "V"));
        /* distinct positions (7919 is prime to the range), so no two rows write one KV slot: rows
         * that did would leave whichever wrote last, which differs between backends and threads */
        else if (!strcmp(a->name, "pos")) v[i] = (int)((r0 + i * 7919L) % range);
        else if (!strcmp(a->name, "seq")) v[i] = (int)(r % NSEQ);
        else if (!strcmp(a->name, "btab")) v[i] = (int)((i * 7 + 3) % NBLK);  /* distinct per sequence row */
        else if (!strcmp(a->name, "src")) v[i] = (int)(r % (uint64_t)rows);
        else v[i] = 0;
    }
    if (!strcmp(a->name, "pos") && di_spec_dim(s, p, "CTX") > 0)
        for (long i = 0; i < count; i++) v[i] %= (int)di_spec_dim(s, p, "CTX");
}

#endif
