/* Every row-wise op of kernels.def (the whole table, so a new op is covered the day it is added),
 * on the CPU, bitwise: a probe row's outputs do not depend on how many rows share the launch,
 * where the probe sits among them, or how many workers run it. The ops that need a KV cache
 * (kv_write, attention) and the row gather have their own suites (invariance/, engine/). */
#include "spec_args.h"

static bool row_wise(const di_spec *s)
{
    if (s->cls == DI_ATTENTION) return false;
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++)
        if (strstr(s->args[i].shape, "blocks") || !strncmp(s->args[i].shape, "n,", 2)) return false;
    return true;
}

/* Inputs for `rows` rows: arguments that are not row-sliced (weights, tables) the same for every
 * row count; row-sliced ones random, with row `at` replaced by the probe row. */
typedef struct { void *host[DI_MAX_ARGS]; size_t bytes[DI_MAX_ARGS]; } inputs;

static inputs make(const di_spec *s, const di_specialization *p, long rows, long at)
{
    inputs in = {{0}, {0}};
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        const di_arg *a = &s->args[i];
        if (a->role == DI_ROLE_SCALAR) continue;
        long row_len;
        di_err e = {0};
        cr_assert_eq(di_arg_row_elems(s, p, i, &row_len, &e), 0, "%s", e.msg);
        size_t es = di_dtype_size(p->dtypes[i]);
        long n = arg_elems(s, p, a, rows);
        in.bytes[i] = (size_t)n * es;
        in.host[i] = malloc(in.bytes[i] ? in.bytes[i] : 1);
        fill_arg(s, p, a, p->dtypes[i], in.host[i], n, rows, row_len ? 500 + (uint64_t)rows : 7 + (uint64_t)i);
        if (!row_len) continue;
        void *probe = malloc((size_t)row_len * es);
        fill_arg(s, p, a, p->dtypes[i], probe, row_len, 1, 4242 + (uint64_t)i);
        memcpy((char *)in.host[i] + (size_t)at * row_len * es, probe, (size_t)row_len * es);
        free(probe);
    }
    return in;
}

/* Runs s over `rows` rows; returns the probe row of every output argument, concatenated. */
static char *run(di_rt *rt, const di_spec *s, const di_specialization *p, long rows, long at, size_t *len)
{
    inputs in = make(s, p, rows, at);
    di_val v[DI_MAX_ARGS];
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        if (s->args[i].role == DI_ROLE_SCALAR) { v[i].f32 = 1e-5f; continue; }
        v[i].buf = th_buf(rt, in.host[i], in.bytes[i]);
    }
    di_kernel *k;
    di_err e = {0};
    cr_assert_eq(di_rt_kernel(rt, s, p, &k, &e), 0, "%s", e.msg);
    th_launch(rt, k, v, (long[]){rows, MAXB});
    char *out = NULL;
    *len = 0;
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        if (s->args[i].role == DI_ROLE_SCALAR) continue;
        if (s->args[i].role != DI_ROLE_IN) {
            long row_len;
            di_arg_row_elems(s, p, i, &row_len, &e);
            size_t rb = (size_t)row_len * di_dtype_size(p->dtypes[i]);
            char *all = malloc(in.bytes[i] + 1);
            th_read(v[i].buf, all, in.bytes[i]);
            out = realloc(out, *len + rb + 1);
            memcpy(out + *len, all + (size_t)at * rb, rb);
            *len += rb;
            free(all);
        }
        di_buf_free(v[i].buf);
        free(in.host[i]);
    }
    return out;
}

Test(row_ops, every_row_op_independent_of_the_batch, .timeout = 600)
{
    di_rt *rts[2] = {th_rt(DI_BACKEND_C, 1), th_rt(DI_BACKEND_C, 2)};
    const long batches[] = {2, 7, 64, 257};
    int checked = 0;
    for (int o = 0; o < DI_NUM_OPS; o++) {
        const di_spec *s = &di_specs[o];
        if (!row_wise(s)) continue;
        di_specialization p;
        di_spec_defaults(s, &p);
        if (s->cls == DI_MATMUL) {   /* small, off every tile */
            di_spec_set_dim(s, &p, "K", 200, NULL);
            di_spec_set_dim(s, &p, "N", 77, NULL);
        }
        if (di_spec_dim(s, &p, "V") > 0) di_spec_set_dim(s, &p, "V", 3000, NULL);
        size_t n_ref;
        char *ref = run(rts[1], s, &p, 1, 0, &n_ref);
        cr_assert_gt(n_ref, 0, "%s: no output", s->name);
        for (int t = 0; t < 2; t++)
            for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
                long rows = batches[b], at = rows * 5 / 7;
                size_t n;
                char *got = run(rts[t], s, &p, rows, at, &n);
                cr_assert(n == n_ref && !memcmp(got, ref, n), "%s: row %ld of %ld (%d threads) differs from the row alone",
                          s->name, at, rows, t + 1);
                free(got);
            }
        free(ref);
        checked++;
    }
    cr_log_info("row_ops: %d ops checked at 1, 2, 7, 64 and 257 rows", checked);
    cr_assert_geq(checked, 14);
    di_rt_close(rts[0]);
    di_rt_close(rts[1]);
}
