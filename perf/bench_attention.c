/* bench_attention: the attention spec (causal GQA over the paged f32 KV cache, fixed KV split
 * of 32 positions for prefill and decode alike) at Llama-3-8B head shapes: 32 query heads,
 * 8 KV heads, head size 128. Prefill: one sequence of T tokens attending causally to itself.
 * Decode: B sequences of L cached positions, one query token each. Random data; the median
 * of --runs timings, each a batch of launches between two device syncs (wall clock, so the
 * launch cost is included). Compare with perf/bench_sdpa.py (torch SDPA, bf16) on the same
 * machine.
 *
 * usage: bench_attention [--device cuda|cpu] [--profile exact|fast] [--prefill 1024,4096]
 *                        [--decode-len 4096] [--batches 1,8,32,64] [--runs 15] */
#include "tools/cli.h"
#include "runtime/backend.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { NH = 32, NKV = 8, HD = 128, MAXL = 16 };

typedef struct opts {
    di_backend_kind backend;
    di_profile profile;
    long prefill[MAXL], batches[MAXL], decode_len;
    int nprefill, nbatches, runs;
} opts;

static int parse_list(const char *v, long *out)
{
    int n = 0;
    for (char *end; *v && n < MAXL; v = *end ? end + 1 : end) {
        out[n] = strtol(v, &end, 10);
        if (out[n] <= 0 || (*end && *end != ',')) return -1;
        n++;
    }
    return n;
}

static int parse(int argc, char **argv, opts *o)
{
    *o = (opts){.backend = DI_BACKEND_CUDA, .profile = DI_PROFILE_FAST, .prefill = {1024, 4096}, .nprefill = 2,
                .batches = {1, 8, 32, 64}, .nbatches = 4, .decode_len = 4096, .runs = 15};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--device")) o->backend = !strcmp(v, "cpu") ? DI_BACKEND_C : DI_BACKEND_CUDA;
        else if (!strcmp(a, "--profile")) {
            if (!di_profile_parse(v, &o->profile) || o->profile == DI_PROFILE_VENDOR) {
                fprintf(stderr, "bench_attention: --profile takes exact or fast, not '%s'\n", v);
                return 2;
            }
        }
        else if (!strcmp(a, "--prefill")) { if ((o->nprefill = parse_list(v, o->prefill)) < 0) return 2; }
        else if (!strcmp(a, "--batches")) { if ((o->nbatches = parse_list(v, o->batches)) < 0) return 2; }
        else if (!strcmp(a, "--decode-len")) o->decode_len = strtol(v, NULL, 10);
        else if (!strcmp(a, "--runs")) o->runs = (int)strtol(v, NULL, 10);
        else { fprintf(stderr, "bench_attention: unknown option '%s'\n", a); return 2; }
    }
    if (argc % 2 == 0) { fprintf(stderr, "bench_attention: an option is missing its value\n"); return 2; }
    if (o->decode_len <= 0 || o->runs < 3) { fprintf(stderr, "bench_attention: bad --decode-len or --runs\n"); return 2; }
    return -1;
}

static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

static di_buf *random_buf(di_rt *rt, size_t floats, uint64_t seed, di_err *err)
{
    float *h = malloc(floats * sizeof *h);
    for (size_t i = 0; i < floats; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = (float)((double)(seed >> 40) / 16777216.0 * 2.0 - 1.0);
    }
    di_buf *b = NULL;
    if (!di_buf_alloc(rt, floats * sizeof *h, &b, err) && di_buf_write(b, 0, h, floats * sizeof *h, err)) {
        di_buf_free(b);
        b = NULL;
    }
    free(h);
    return b;
}

static di_buf *int_buf(di_rt *rt, const int32_t *v, size_t n, di_err *err)
{
    di_buf *b = NULL;
    if (di_buf_alloc(rt, n * 4, &b, err)) return NULL;
    if (di_buf_write(b, 0, v, n * 4, err)) { di_buf_free(b); return NULL; }
    return b;
}

/* One problem: `seqs` sequences of `ctx` positions; `rows` queries (the last `rows / seqs`
 * positions of each). Returns the median milliseconds per launch, or < 0. */
static double time_attention(di_rt *rt, di_kernel *k, int seqs, long ctx, long rows, int runs, di_err *err)
{
    long maxb = (ctx + 31) / 32, per = rows / seqs;
    size_t nblocks = (size_t)seqs * maxb;
    int32_t *pos = malloc(sizeof *pos * rows), *seq = malloc(sizeof *seq * rows), *btab = malloc(sizeof *btab * nblocks);
    for (long r = 0; r < rows; r++) {
        seq[r] = (int32_t)(r / per);
        pos[r] = (int32_t)(ctx - per + r % per);
    }
    for (size_t b = 0; b < nblocks; b++) btab[b] = (int32_t)b;
    di_buf *out = NULL, *qkv = random_buf(rt, (size_t)rows * (NH + 2 * NKV) * HD, 1, err);
    di_buf *kc = random_buf(rt, nblocks * 32 * NKV * HD, 2, err), *vc = random_buf(rt, nblocks * 32 * NKV * HD, 3, err);
    di_buf *bp = int_buf(rt, pos, (size_t)rows, err), *bs = int_buf(rt, seq, (size_t)rows, err);
    di_buf *bt = int_buf(rt, btab, nblocks, err);
    double med = -1;
    if (qkv && kc && vc && bp && bs && bt && !di_buf_alloc(rt, (size_t)rows * NH * HD * 4, &out, err)) {
        di_val args[7] = {{.buf = out}, {.buf = qkv}, {.buf = kc}, {.buf = vc}, {.buf = bp}, {.buf = bs}, {.buf = bt}};
        long sizes[2] = {rows, maxb};
        int reps = rows >= 1024 ? 1 : 20;   /* launches between syncs */
        double *t = malloc(sizeof *t * (size_t)runs);
        int ok = !di_rt_launch(rt, k, args, sizes, err) && !di_rt_sync(rt, err);   /* warm-up */
        for (int i = 0; ok && i < runs; i++) {
            double t0 = cli_now();
            for (int j = 0; ok && j < reps; j++) ok = !di_rt_launch(rt, k, args, sizes, err);
            ok = ok && !di_rt_sync(rt, err);
            t[i] = (cli_now() - t0) * 1e3 / reps;
        }
        if (ok) {
            qsort(t, (size_t)runs, sizeof *t, cmp);
            med = t[runs / 2];
        }
        free(t);
    }
    di_buf_free(out); di_buf_free(qkv); di_buf_free(kc); di_buf_free(vc);
    di_buf_free(bp); di_buf_free(bs); di_buf_free(bt);
    free(pos); free(seq); free(btab);
    return med;
}

int main(int argc, char **argv)
{
    opts o;
    int rc = parse(argc, argv, &o);
    if (rc >= 0) return rc;
    di_err err = {0};
    di_rt_opts ro = {.backend = o.backend, .profile = o.profile};
    di_rt *rt = NULL;
    if (di_rt_open(&ro, &rt, &err)) { fprintf(stderr, "bench_attention: %s\n", err.msg); return 2; }
    const di_spec *s = di_spec_find("attention");
    di_specialization p;
    di_spec_defaults(s, &p);
    p.profile = o.profile;
    di_kernel *k = NULL;
    if (di_spec_set_dim(s, &p, "NH", NH, &err) || di_spec_set_dim(s, &p, "NKV", NKV, &err) ||
        di_spec_set_dim(s, &p, "HD", HD, &err) || di_rt_kernel(rt, s, &p, &k, &err)) {
        fprintf(stderr, "bench_attention: %s\n", err.msg);
        return 2;
    }
    printf("bench_attention: %s; heads %d/%d, head size %d, f32 KV cache in blocks of 32\n", di_rt_describe(rt), NH, NKV, HD);
    printf("%-8s %6s %7s %11s %10s %9s\n", "phase", "batch", "ctx", "median_ms", "TFLOP/s", "KV_GB/s");
    for (int i = 0; i < o.nprefill; i++) {
        long T = o.prefill[i];
        double ms = time_attention(rt, k, 1, T, T, o.runs, &err);
        if (ms < 0) { fprintf(stderr, "bench_attention: %s\n", err.msg); return 1; }
        double flops = 4.0 * NH * HD * (double)T * (T + 1) / 2;   /* QK^T and PV, causal */
        printf("%-8s %6d %7ld %11.3f %10.2f %9s\n", "prefill", 1, T, ms, flops / ms / 1e9, "-");
    }
    for (int i = 0; i < o.nbatches; i++) {
        long B = o.batches[i], L = o.decode_len;
        double ms = time_attention(rt, k, (int)B, L, B, o.runs, &err);
        if (ms < 0) { fprintf(stderr, "bench_attention: %s\n", err.msg); return 1; }
        double bytes = (double)B * L * NKV * HD * 2 * 4, flops = 4.0 * NH * HD * (double)B * L;
        printf("%-8s %6ld %7ld %11.3f %10.2f %9.1f\n", "decode", B, L, ms, flops / ms / 1e9, bytes / ms / 1e6);
    }
    di_rt_close(rt);
    return 0;
}
