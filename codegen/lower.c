/* One lowering per class. Each writes the block's work with DI_FOR_THREADS / DI_SYNC /
 * DI_SHARED, which the C prelude turns into ordered loops and the CUDA prelude into
 * thread-strided loops and barriers. The reduction order of every output is spelled out
 * here, once, for both backends. */
#include "codegen/lower.h"
#include "codegen/lowering.h"
#include <ctype.h>
#include <stdio.h>
#include <string.h>

/* "rows, NH + 2 * NKV, HD" -> row length "(NH + 2 * NKV) * (HD)"; sliced when led by "rows". */
bool di_row_sliced(const di_arg *a, char *rowlen, size_t len)
{
    const char *comma = strchr(a->shape, ',');
    size_t lead = comma ? (size_t)(comma - a->shape) : strlen(a->shape);
    bool sliced = lead == 4 && !strncmp(a->shape, "rows", 4);
    size_t n = 0;
    rowlen[0] = 0;
    while (comma) {
        const char *next = strchr(comma + 1, ',');
        size_t k = next ? (size_t)(next - comma - 1) : strlen(comma + 1);
        n += (size_t)snprintf(rowlen + n, len > n ? len - n : 0, "%s(%.*s)", n ? " * " : "", (int)k, comma + 1);
        comma = next;
    }
    if (!n) snprintf(rowlen, len, "1");
    return sliced;
}

/* An output a body writes as f32 (`y[i] = ...`) that the specialization stores as bf16: its
 * view is an array of di_bf16_store, whose assignment from a float rounds to nearest even with
 * di_f32_to_bf16, as cast_bf16 rounds the f32 it would have read (so the same bits). */
static bool stored_bf16(const di_spec *s, const di_specialization *p, int i)
{
    bool body = s->cls == DI_MAP || s->cls == DI_GATHER || s->cls == DI_ROW_REDUCE;   /* as di_specialization_check */
    return body && s->args[i].role == DI_ROLE_OUT && s->args[i].dtype == DI_F32 && p->dtypes[i] == DI_BF16;
}

static const char bf16_store_type[] =
    "/* a float stored to a bf16 output: rounded to nearest even (di_f32_to_bf16) */\n"
    "struct di_bf16_store {\n"
    "    di_bf16 v;\n"
    "    __device__ di_bf16_store &operator=(float f) { v = di_f32_to_bf16(f); return *this; }\n"
    "};\n";

/* Per-row views of the tensor arguments: body text indexes within its row. */
static void emit_slices(di_str *o, const di_spec *s, const di_specialization *p, const char *row, const char *indent)
{
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        const di_arg *a = &s->args[i];
        if (a->role == DI_ROLE_SCALAR) continue;
        char rowlen[256], base[160];
        const char *q = a->role == DI_ROLE_IN ? "const " : "", *type = di_dtype_ctype(p->dtypes[i]);
        snprintf(base, sizeof base, "%s_", a->name);
        if (stored_bf16(s, p, i)) {
            type = "di_bf16_store";
            snprintf(base, sizeof base, "(di_bf16_store *)%s_", a->name);
        }
        if (di_row_sliced(a, rowlen, sizeof rowlen))
            di_str_printf(o, "%s%s%s *%s = %s + (long)(%s) * (%s);\n", indent, q, type, a->name, base, row, rowlen);
        else
            di_str_printf(o, "%s%s%s *%s = %s;\n", indent, q, type, a->name, base);
        di_str_printf(o, "%s(void)%s;\n", indent, a->name);
    }
}

static void lower_map(di_str *o, const di_spec *s, const di_specialization *p)
{
    di_str_puts(o, "    const long r = by;\n");
    emit_slices(o, s, p, "r", "    ");
    di_str_printf(o, "    DI_MAP_FOR(i, %s) {\n        %s\n    }\n", s->cols, s->body);
}

/* Elements of argument a a block reads: its row's when sliced, else the whole shape. */
static void arg_extent(const di_arg *a, char *n, size_t len)
{
    if (di_row_sliced(a, n, len)) return;
    size_t k = (size_t)snprintf(n, len, "(");
    for (const char *c = a->shape; *c && k + 4 < len; c++) {
        if (*c == ',') k += (size_t)snprintf(n + k, len - k, ") * (");
        else n[k++] = *c;
    }
    snprintf(n + k, len > k ? len - k : 0, ")");
}

/* GPU: a row's inputs into L1 before its lanes walk them. A lane folds its terms one after
 * another in a fixed order and its loads came one at a time: one warp per row took 54 us for a
 * 4096-wide rmsnorm on the H200 (perf/RESULTS.md). Now, where the block's inputs fit L1 with
 * room (at most L1_WARM_BYTES), every thread of the block first asks for a share of their
 * 128-byte lines, all at once; where they do not (a vocabulary row), each lane asks for the
 * line LANE_AHEAD of its terms ahead as it goes (`ahead`, text for the lane loop). Prefetches
 * only: the reductions' arithmetic, and so every operation and its order, is as before.
 * Grouped reductions (a block per group of a row) read only a part: neither. */
enum { L1_WARM_BYTES = 64 * 1024, LANE_AHEAD = 16 };
static void emit_l1_warm(di_str *o, const di_spec *s, const di_specialization *p, di_str *ahead)
{
    if (s->groups) return;
    char n[256], sum[1024] = "0";
    size_t k = 1;
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        const di_arg *a = &s->args[i];
        if (a->role == DI_ROLE_SCALAR || a->role == DI_ROLE_OUT) continue;
        arg_extent(a, n, sizeof n);
        k += (size_t)snprintf(sum + k, k < sizeof sum ? sizeof sum - k : 0, " + (%s) * %d", n, (int)di_dtype_size(p->dtypes[i]));
    }
    if (k >= sizeof sum) return;
    di_str_printf(o, "    const bool di_warm = (long)(%s) <= %d;   /* the block's inputs fit L1 */\n"
                     "    if (di_warm) {   /* every line asked for at once */\n", sum, L1_WARM_BYTES);
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        const di_arg *a = &s->args[i];
        if (a->role == DI_ROLE_SCALAR || a->role == DI_ROLE_OUT) continue;
        arg_extent(a, n, sizeof n);
        di_str_printf(o, "        for (long di_b = 128L * threadIdx.x; di_b < (long)(%s) * %d; di_b += 128L * blockDim.x)\n"
                         "            asm volatile(\"prefetch.global.L1 [%%0];\" ::\"l\"((const char *)%s + di_b));\n",
                      n, (int)di_dtype_size(p->dtypes[i]), a->name);
        di_str_printf(ahead, "            if (!di_warm) asm volatile(\"prefetch.global.L1 [%%0];\" ::\"l\"(%s + (i + %d * LANES < (long)(%s) ? i + %d * LANES : (long)(%s) - 1)));\n",
                      a->name, LANE_AHEAD, n, LANE_AHEAD, n);
    }
    di_str_puts(o, "    }\n");
}

/* A term that is one call, f(...): its value reaches the lane's add as is, so no compiler can
 * contract a multiply of it into that add (fast builds with --fmad=true). */
static bool term_is_call(const char *e)
{
    if (!(isalpha((unsigned char)*e) || *e == '_')) return false;
    const char *p = e;
    while (isalnum((unsigned char)*p) || *p == '_') p++;
    if (*p != '(') return false;
    int depth = 0;
    for (; *p; p++) {
        if (*p == '(') depth++;
        else if (*p == ')' && --depth == 0) return p[1] == '\0';
    }
    return false;
}

/* On the GPU with more threads than lanes, a call term (log_softmax's exp) is staged: every
 * thread computes the terms of a stretch of DI_STAGE elements into shared memory, then each
 * lane adds its own ones. DI_STAGE is a multiple of LANES, so lane l still takes elements
 * l, l + LANES, ... in increasing order into the same chain: the same values (the term is a
 * function of i), the same adds, the same bits; only the terms' arithmetic is spread over the
 * block instead of a quarter of it. */
static bool staged(const di_spec *s, const di_reduce *r, bool c)
{
    return !c && r->op != DI_RONCE && s->sched.threads > s->sched.lanes && term_is_call(r->expr);
}

/* Lane l folds i = l, l + LANES, ... in order; then lanes combine by a halving tree
 * (lane l takes lane l + s for s = LANES/2 ... 1). Same for every row count. */
static void emit_reduce(di_str *o, const di_spec *s, const di_reduce *r, bool c, const char *ahead)
{
    if (r->op == DI_RONCE) {
        di_str_printf(o, "    const float %s = %s;   /* once per row */\n", r->name, r->expr);
        return;
    }
    bool sum = r->op == DI_RSUM;
    di_str_printf(o, "    /* %s %s: strided lanes, then a halving tree */\n", sum ? "sum" : "max", r->name);
    if (c)   /* each lane's chain as below; the lanes run side by side (SIMD), not one after another */
        di_str_printf(o, "    {\n"
                         "        float di_a[LANES];\n"
                         "        for (long l = 0; l < LANES; l++) di_a[l] = %s;\n"
                         "        for (long i0 = 0; i0 < (long)(%s); i0 += LANES) {\n"
                         "            const long nl = (long)(%s) - i0 < LANES ? (long)(%s) - i0 : LANES;\n"
                         "            for (long l = 0; l < nl; l++) {\n"
                         "                const long i = i0 + l;\n"
                         "                float e = %s;\n"
                         "                const float a = di_a[l];\n"
                         "                di_a[l] = %s;\n"
                         "            }\n"
                         "        }\n"
                         "        for (long l = 0; l < LANES; l++) di_lane[l] = di_a[l];\n"
                         "    }\n",
                      sum ? "0.0f" : "-DI_INF", s->cols, s->cols, s->cols, r->expr, sum ? "a + e" : "e > a ? e : a");
    else if (staged(s, r, c))
        di_str_printf(o, "    {\n"
                         "        float a = %s;   /* lane threadIdx.x's chain (threads past LANES keep none) */\n"
                         "        for (long i0 = 0; i0 < (long)(%s); i0 += DI_STAGE) {\n"
                         "            const long n = (long)(%s) - i0 < DI_STAGE ? (long)(%s) - i0 : DI_STAGE;\n"
                         "            for (long j = threadIdx.x; j < n; j += blockDim.x) {\n"
                         "                const long i = i0 + j;\n"
                         "                di_term[j] = %s;\n"
                         "            }\n"
                         "            DI_SYNC();\n"
                         "            if (threadIdx.x < LANES)\n"
                         "                for (long j = threadIdx.x; j < n; j += LANES) {\n"
                         "                    const float e = di_term[j];\n"
                         "                    a = %s;\n"
                         "                }\n"
                         "            DI_SYNC();\n"
                         "        }\n"
                         "        if (threadIdx.x < LANES) di_lane[threadIdx.x] = a;\n"
                         "    }\n"
                         "    DI_SYNC();\n",
                      sum ? "0.0f" : "-DI_INF", s->cols, s->cols, s->cols, r->expr, sum ? "a + e" : "e > a ? e : a");
    else
        di_str_printf(o, "    DI_FOR_THREADS(l, LANES) {\n"
                         "        float a = %s;\n"
                         "        for (long i = l; i < (long)(%s); i += LANES) {\n"
                         "%s"
                         "            float e = %s;\n"
                         "            a = %s;\n"
                         "        }\n"
                         "        di_lane[l] = a;\n"
                         "    }\n"
                         "    DI_SYNC();\n",
                      sum ? "0.0f" : "-DI_INF", s->cols, ahead, r->expr, sum ? "a + e" : "e > a ? e : a");
    di_str_printf(o, "    for (int s = LANES / 2; s > 0; s >>= 1) {\n"
                     "        DI_FOR_THREADS(l, s) {\n"
                     "            di_lane[l] = %s;\n"
                     "        }\n"
                     "        DI_SYNC();\n"
                     "    }\n"
                     "    const float %s = di_lane[0];\n"
                     "    DI_SYNC();\n",
                  sum ? "di_lane[l] + di_lane[l + s]" : "di_lane[l + s] > di_lane[l] ? di_lane[l + s] : di_lane[l]",
                  r->name);
}

static void lower_row_reduce(di_str *o, const di_spec *s, const di_specialization *p, bool c)
{
    di_str_puts(o, "    const long r = by;\n");
    if (s->groups) di_str_puts(o, "    const long g = bx;   /* the group of the row this block reduces */\n");
    emit_slices(o, s, p, "r", "    ");
    di_str ahead = {0};
    if (!c) emit_l1_warm(o, s, p, &ahead);
    di_str_puts(o, "    DI_SHARED float di_lane[LANES];\n");
    bool stage = false;
    for (int i = 0; i < DI_MAX_REDUCE && s->reduce[i].name; i++) stage |= staged(s, &s->reduce[i], c);
    if (stage) di_str_puts(o, "#define DI_STAGE (16 * LANES)\n    DI_SHARED float di_term[DI_STAGE];   /* staged terms */\n");
    for (int i = 0; i < DI_MAX_REDUCE && s->reduce[i].name; i++)
        emit_reduce(o, s, &s->reduce[i], c, ahead.len ? ahead.p : "");
    di_str_free(&ahead);
    di_str_printf(o, "    DI_FOR_THREADS(i, %s) {\n        %s\n    }\n", s->cols, s->post);
}

/* argmax: lane l keeps its first largest value (strictly greater replaces), lanes combine
 * by a halving tree preferring the larger value, then the lower id. NaN never wins. */
static void lower_sample(di_str *o, const di_spec *s, const di_specialization *p, bool c)
{
    di_str_puts(o, "    const long r = by;\n");
    emit_slices(o, s, p, "r", "    ");
    di_str ahead = {0};
    if (!c) emit_l1_warm(o, s, p, &ahead);
    di_str_puts(o, "    DI_SHARED float di_bv[LANES];\n"
                   "    DI_SHARED int di_bi[LANES];\n");
    if (c)   /* each lane's scan as below; the lanes run side by side (SIMD), not one after another */
        di_str_printf(o,
            "    {\n"
            "        float bv[LANES];\n"
            "        int bi[LANES];\n"
            "        for (long l = 0; l < LANES; l++) bv[l] = -DI_INF, bi[l] = -1;\n"
            "        for (long i0 = 0; i0 < (long)(%1$s); i0 += LANES) {\n"
            "            const long nl = (long)(%1$s) - i0 < LANES ? (long)(%1$s) - i0 : LANES;\n"
            "            for (long l = 0; l < nl; l++) {\n"
            "                const float v = x[i0 + l];\n"
            "                const int take = v > bv[l] || (bi[l] < 0 && v == v);\n"
            "                bv[l] = take ? v : bv[l];\n"
            "                bi[l] = take ? (int)(i0 + l) : bi[l];\n"
            "            }\n"
            "        }\n"
            "        for (long l = 0; l < LANES; l++) di_bv[l] = bv[l], di_bi[l] = bi[l];\n"
            "    }\n",
            s->cols);
    else
        di_str_printf(o,
            "    DI_FOR_THREADS(l, LANES) {\n"
            "        float bv = -DI_INF;\n"
            "        int bi = -1;\n"
            "        for (long i = l; i < (long)(%s); i += LANES) {\n"
            "%s"
            "            float v = x[i];\n"
            "            if (v > bv || (bi < 0 && v == v)) { bv = v; bi = (int)i; }\n"
            "        }\n"
            "        di_bv[l] = bv;\n"
            "        di_bi[l] = bi;\n"
            "    }\n",
            s->cols, ahead.len ? ahead.p : "");
    di_str_free(&ahead);
    di_str_puts(o,
        "    DI_SYNC();\n"
        "    for (int s = LANES / 2; s > 0; s >>= 1) {\n"
        "        DI_FOR_THREADS(l, s) {\n"
        "            float ov = di_bv[l + s];\n"
        "            int oi = di_bi[l + s];\n"
        "            if (oi >= 0 && (di_bi[l] < 0 || ov > di_bv[l] || (ov == di_bv[l] && oi < di_bi[l]))) {\n"
        "                di_bv[l] = ov;\n"
        "                di_bi[l] = oi;\n"
        "            }\n"
        "        }\n"
        "        DI_SYNC();\n"
        "    }\n"
        "    DI_ONE_THREAD { id[0] = di_bi[0] < 0 ? 0 : di_bi[0]; }\n");
}

static const char *load_expr(di_dtype t) { return t == DI_BF16 ? "di_bf16_to_f32" : ""; }

/* y[r][n] = sum over k of x[r][k] w[n][k]: for each chunk [kc, kc + SPLIT) an in-order
 * chain from 0.0f, chunk partials added in chunk order. TILE_N outputs are carried side by
 * side (independent chains, for the CPU's pipelines); a tail output runs the same chain. */
static void lower_matmul(di_str *o, const di_spec *s, const di_specialization *p)
{
    int tn = s->sched.tile_n;
    di_dtype xt = p->dtypes[0], wt = p->dtypes[0], yt = p->dtypes[0];
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        if (!strcmp(s->args[i].name, "x")) xt = p->dtypes[i];
        if (!strcmp(s->args[i].name, "w")) wt = p->dtypes[i];
        if (!strcmp(s->args[i].name, "y")) yt = p->dtypes[i];
    }
    const char *lx = load_expr(xt), *lw = load_expr(wt);
    const char *store = yt == DI_BF16 ? "di_f32_to_bf16" : "";
    /* a packed w: w<j> names output j and its weights are di_pk_at(w, n, k), in the same chains */
    bool pk = di_dtype_packed(wt);

    di_str_puts(o, "    for (long r = by * DI_MM_RT; r < (by + 1) * DI_MM_RT && r < rows; r++) {\n");
    emit_slices(o, s, p, "r", "        ");
    di_str_puts(o, "        DI_FOR_THREADS(t, DI_MM_CG / TILE_N) {\n"
                   "            const long n0 = (long)bx * DI_MM_CG + t * TILE_N;\n"
                   "            if (n0 + TILE_N <= N) {\n");
    for (int j = 0; j < tn; j++)
        if (pk) di_str_printf(o, "                const long w%d = n0 + %d;\n                float acc%d = 0.0f;\n", j, j, j);
        else di_str_printf(o, "                const %s *w%d = w + (n0 + %d) * K;\n                float acc%d = 0.0f;\n",
                           di_dtype_ctype(wt), j, j, j);
    di_str_puts(o, "                for (long kc = 0; kc < K; kc += SPLIT) {\n"
                   "                    const long ke = kc + SPLIT < K ? kc + SPLIT : K;\n");
    for (int j = 0; j < tn; j++) di_str_printf(o, "                    float c%d = 0.0f;\n", j);
    di_str_printf(o, "                    for (long k = kc; k < ke; k++) {\n"
                     "                        const float xk = %s(x[k]);\n", lx);
    for (int j = 0; j < tn; j++)
        if (pk) di_str_printf(o, "                        c%d = c%d + xk * di_pk_at(w, w%d, k);\n", j, j, j);
        else di_str_printf(o, "                        c%d = c%d + xk * %s(w%d[k]);\n", j, j, lw, j);
    di_str_puts(o, "                    }\n");
    for (int j = 0; j < tn; j++) di_str_printf(o, "                    acc%d = acc%d + c%d;\n", j, j, j);
    di_str_puts(o, "                }\n");
    for (int j = 0; j < tn; j++)
        di_str_printf(o, "                { const long n = n0 + %d; const float acc = acc%d; y[n] = %s(%s); }\n", j, j,
                      store, s->body);
    /* the tail outputs, one at a time: the same chain */
    char decl[96] = "", load[64];
    if (pk) snprintf(load, sizeof load, "di_pk_at(w, n, k)");
    else {
        snprintf(decl, sizeof decl, "                    const %s *wn = w + n * K;\n", di_dtype_ctype(wt));
        snprintf(load, sizeof load, "%s(wn[k])", lw);
    }
    di_str_printf(o, "            } else {\n"
                     "                for (long n = n0; n < N; n++) {\n"
                     "%s"
                     "                    float acc = 0.0f;\n"
                     "                    for (long kc = 0; kc < K; kc += SPLIT) {\n"
                     "                        const long ke = kc + SPLIT < K ? kc + SPLIT : K;\n"
                     "                        float c = 0.0f;\n"
                     "                        for (long k = kc; k < ke; k++) c = c + %s(x[k]) * %s;\n"
                     "                        acc = acc + c;\n"
                     "                    }\n"
                     "                    y[n] = %s(%s);\n"
                     "                }\n"
                     "            }\n"
                     "        }\n"
                     "    }\n",
                  decl, lx, load, store, s->body);
}

/* ---- matmul on the C backend ------------------------------------------------------------
 *
 * The same order per output as lower_matmul (and the GPU): acc = 0; for each chunk [kc, kc +
 * SPLIT) an in-order chain c = 0, c = c + x[k] * w[n][k] for k = kc, kc + 1, ...; acc = acc + c
 * in chunk order; then the epilogue. What changes is only which outputs run side by side, so
 * that a compiler can make SIMD lanes of them (each lane one output's chain, never a split of
 * one chain: without reassociation it may not do that, and the cc tier's flags forbid it):
 *   - a block is DI_MM_CG columns x DI_MM_RB rows (the grid follows the rows; an order does not);
 *   - with DI_MM_DIRECT rows or more, the weights of one K stretch (DI_MM_TK long) are copied
 *     into a tile with the column as the fast index, once for all the block's rows, and each
 *     row's DI_MM_CG chains step through it together: a weight is read from memory once per
 *     block of rows, and the inner loop runs over independent outputs;
 *   - with fewer rows (decode), each row reads the weights in place, 8 columns side by side.
 * bf16 weights are decoded in the inner loops; with K and SPLIT even, two at a time from one
 * 32-bit load (the low half is w[k], little-endian hosts only, as x86-64 and arm64 are). */
enum { MM_CG = 32, MM_RB = 32, MM_DIRECT = 4, MM_TK = 64, MM_LANES = 8 };
/* Packed weights: up to 8 rows decode each record once in registers (mm_rows_packed); more
 * rows (prefill) decode a tile once per block of 32 rows, except with 16 lanes, where groups of
 * 8 rows on the direct path are faster at every row count. */
enum { MM_DIRECT_PACKED = 9, MM_PACK_ROWS = 8 };

typedef struct mm_c {
    const char *name;           /* the entry's name */
    const char *rows;           /* the rows size parameter */
    di_dtype xt, wt, yt;
    bool pairs;                 /* bf16 w read two at a time */
    const char *lx, *lw, *store;
} mm_c;

static long mm_split(const di_spec *s, const di_specialization *p)
{
    long k = di_spec_dim(s, p, "K");
    return p->ksplits ? (k + p->ksplits - 1) / p->ksplits : s->sched.split;
}

/* One step of column j's chain at k (or at k and k + 1 from pair word u), as text. */
static void mm_step(di_str *o, const mm_c *m, const char *ind, const char *c, const char *wj, const char *xk0,
                    const char *xk1, const char *k)
{
    if (m->pairs)
        di_str_printf(o, "%s{ const di_u32 u = %s[(%s) / 2]; %s = %s + %s * DI_AS_F32(u << 16); "
                         "%s = %s + %s * DI_AS_F32(u & 0xffff0000u); }\n",
                      ind, wj, k, c, c, xk0, c, c, xk1);
    else
        di_str_printf(o, "%s%s = %s + %s * %s(%s[%s]);\n", ind, c, c, xk0, m->lw, wj, k);
}

static void mm_direct(di_str *o, const mm_c *m)
{
    const char *wty = m->pairs ? "di_u32" : di_dtype_ctype(m->wt);
    int step = m->pairs ? 2 : 1;
    di_str_printf(o, "static void %s_direct(float *at, const %s *x_, const %s *w_, long n0, long nc, long r0, long nr)\n"
                     "{\n"
                     "    for (long i = 0; i < nr; i++) {\n"
                     "        const %s *x = x_ + (r0 + i) * K;\n"
                     "        float *a = at + i * DI_MM_CG;\n"
                     "        long j = 0;\n"
                     "        for (; j + %d <= nc; j += %d) {\n",
                  m->name, di_dtype_ctype(m->xt), di_dtype_ctype(m->wt), di_dtype_ctype(m->xt), MM_LANES, MM_LANES);
    for (int l = 0; l < MM_LANES; l++)
        di_str_printf(o, "            const %s *w%d = (const %s *)(w_ + (n0 + j + %d) * K);\n", wty, l, wty, l);
    for (int l = 0; l < MM_LANES; l++) di_str_printf(o, "            float a%d = 0.0f;\n", l);
    di_str_puts(o, "            for (long kc = 0; kc < K; kc += SPLIT) {\n"
                   "                const long ke = kc + SPLIT < K ? kc + SPLIT : K;\n");
    for (int l = 0; l < MM_LANES; l++) di_str_printf(o, "                float c%d = 0.0f;\n", l);
    di_str_printf(o, "                for (long k = kc; k < ke; k += %d) {\n", step);
    di_str_printf(o, "                    const float x0 = %s(x[k]);\n", m->lx);
    if (m->pairs) di_str_printf(o, "                    const float x1 = %s(x[k + 1]);\n", m->lx);
    for (int l = 0; l < MM_LANES; l++) {
        char c[8], w[8];
        snprintf(c, sizeof c, "c%d", l);
        snprintf(w, sizeof w, "w%d", l);
        mm_step(o, m, "                    ", c, w, "x0", "x1", "k");
    }
    di_str_puts(o, "                }\n");
    for (int l = 0; l < MM_LANES; l++) di_str_printf(o, "                a%d = a%d + c%d;\n", l, l, l);
    di_str_puts(o, "            }\n");
    for (int l = 0; l < MM_LANES; l++) di_str_printf(o, "            a[j + %d] = a%d;\n", l, l);
    di_str_printf(o, "        }\n"
                     "        for (; j < nc; j++) {\n"
                     "            const %s *wj = w_ + (n0 + j) * K;\n"
                     "            float aj = 0.0f;\n"
                     "            for (long kc = 0; kc < K; kc += SPLIT) {\n"
                     "                const long ke = kc + SPLIT < K ? kc + SPLIT : K;\n"
                     "                float c = 0.0f;\n"
                     "                for (long k = kc; k < ke; k++) c = c + %s(x[k]) * %s(wj[k]);\n"
                     "                aj = aj + c;\n"
                     "            }\n"
                     "            a[j] = aj;\n"
                     "        }\n"
                     "    }\n"
                     "}\n\n",
                  di_dtype_ctype(m->wt), m->lx, m->lw);
}

/* Packed weights (dsl/dsl.h, DI_Q4X8 / DI_Q8X8): record (g, b) holds outputs 8g..8g+7 over
 * k = 32b..32b+31, lane l one output. di_pk_w decodes one weight exactly as the load-time
 * conversion rounds it (model/pack.c checks every weight), so the chains below are the ones
 * above, term for term: only the memory they read is smaller (0.75 bytes a weight for Q4X8
 * instead of bf16's 2, which is what bounds a decode step on a CPU). With GNU C vectors the
 * direct path runs the 8 lanes of a record as one vector, each lane its own output's chain;
 * libtcc runs the same operations one lane at a time. */
/* One weight of a packed w, for both backends: di_pk_w(record, lane, kk), di_pk_at(w, n, k). */
static void emit_pk_scalar(di_str *o, di_dtype wt)
{
    di_str_printf(o, "#define DI_PK_REC %zu   /* bytes per record: d[8], m[8], codes */\n"
                     "DI_FN float di_pk_round(float v) { const float t = v * 65537.0f; return t - (t - v); }\n"
                     "/* lane l's weight at k = 32b + kk of record r */\n"
                     "DI_FN float di_pk_w(const unsigned char *r, int l, int kk)\n"
                     "{\n"
                     "    const float *f = (const float *)r;\n"
                     "    const di_u32 *q = (const di_u32 *)(r + 64);\n",
                  di_pack_record_bytes(wt));
    if (wt == DI_Q8X8) di_str_puts(o, "    const int c = (int)(signed char)(q[(kk / 4) * 8 + l] >> (8 * (kk % 4)));\n");
    else di_str_puts(o, "    const int c = (int)((q[(kk / 8) * 8 + l] >> (4 * (kk % 8))) & 15u);\n");
    di_str_puts(o, "    return di_pk_round(f[l] * (float)c + f[8 + l]);\n"
                   "}\n"
                   "/* w[n][k] of the whole packed matrix */\n"
                   "DI_FN float di_pk_at(const unsigned char *w, long n, long k)\n"
                   "{\n"
                   "    return di_pk_w(w + (n / 8 * (K / 32) + k / 32) * DI_PK_REC, (int)(n % 8), (int)(k % 32));\n"
                   "}\n");
}

/* The vector forms (GNU C only; libtcc runs di_pk_w lane by lane). Where the target has 512-bit
 * vectors, two records side by side (outputs 8g..8g+15) make one 16-lane vector: the same
 * operations per lane, half the instructions. DI_PK_PF: how far ahead of the record in use the
 * weights are prefetched, in bytes; a decode step streams every matrix once, and without it a
 * core waits on memory (measured on the 2-core VM: 16 KB ahead, 1.5x the stream rate). */
static void mm_packed_helpers(di_str *o, const mm_c *m)
{
    emit_pk_scalar(o, m->wt);
    di_str_puts(o, "#if defined(__GNUC__) && !defined(__TINYC__)\n"
                   "#define DI_PK_VEC 1\n"
                   "#define DI_PK_PF 16384\n"
                   "typedef float di_v8f __attribute__((vector_size(32)));\n"
                   "typedef int di_v8i __attribute__((vector_size(32)));\n"
                   "typedef unsigned di_v8u __attribute__((vector_size(32)));\n"
                   "#if defined(__AVX512F__)\n"
                   "#define DI_PK_V16 1\n"
                   "typedef float di_v16f __attribute__((vector_size(64)));\n"
                   "typedef int di_v16i __attribute__((vector_size(64)));\n"
                   "typedef unsigned di_v16u __attribute__((vector_size(64)));\n"
                   /* two instructions by name (no intrinsics header: it would cost every unit ~0.1 s) */
                   "/* c * d + m in one rounding: the two roundings' value, d * c being exact (model/pack.c\n"
                   " * checks that for every weight it packs); -ffp-contract=off makes no other fma */\n"
                   "DI_FN di_v16f di_pk_fma(di_v16f c, di_v16f d, di_v16f m)\n"
                   "{ __asm__(\"vfmadd213ps %[m], %[d], %[c]\" : [c] \"+v\"(c) : [d] \"v\"(d), [m] \"vm\"(m)); return c; }\n"
                   "/* byte s of each 32-bit lane of q to its top byte, the rest zero (vpshufb, per 16 bytes) */\n"
                   "DI_FN di_v16i di_pk_top(di_v16u q, int s)\n"
                   "{\n"
                   "    const di_v16u c = (di_v16u){0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12} + (unsigned)s;\n"
                   "    const di_v16u ctl = c << 24 | 0x808080u;\n"
                   "    di_v16i r;\n"
                   "    __asm__(\"vpshufb %[ctl], %[q], %[r]\" : [r] \"=v\"(r) : [q] \"v\"(q), [ctl] \"vm\"(ctl));\n"
                   "    return r;\n"
                   "}\n"
                   "#define DI_PK_CAT(a, b) __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)\n"
                   "DI_FN di_v16f di_pk_f16(const unsigned char *a, const unsigned char *b)\n"
                   "{ di_v8f u, v; __builtin_memcpy(&u, a, 32); __builtin_memcpy(&v, b, 32); return DI_PK_CAT(u, v); }\n"
                   "DI_FN di_v16u di_pk_u16(const unsigned char *a, const unsigned char *b)\n"
                   "{ di_v8u u, v; __builtin_memcpy(&u, a, 32); __builtin_memcpy(&v, b, 32); return DI_PK_CAT(u, v); }\n"
                   "#endif\n"
                   "#endif\n\n");
}

/* The codes at step s of word q, as floats, and the d vector they take. With 8 lanes (AVX2)
 * the code is shifted down and masked: d itself. The AVX-512 forms leave it in place, so that
 * one instruction takes it out: a 4-bit code masked where it lies (c * 16^s, as unsigned),
 * an 8-bit one moved to the top byte of its lane by a byte shuffle (c * 2^24, signed); the d
 * they take is scaled by the inverse power of two (d<s>, or dq), which is exact for every
 * packed d (model/pack.c checks it), so that each product is d * c itself. */
static void mm_packed_code(char *out, size_t len, char *dname, size_t dlen, bool q8, int s, int lanes, const char *q)
{
    if (lanes == 8) {
        if (q8) snprintf(out, len, "__builtin_convertvector((di_v8i)(%s << %d) >> 24, di_v8f)", q, 24 - 8 * s);
        else snprintf(out, len, "__builtin_convertvector((di_v8i)((%s >> %d) & 15u), di_v8f)", q, 4 * s);
        snprintf(dname, dlen, "d");
    } else if (q8) {
        snprintf(out, len, "__builtin_convertvector(di_pk_top(%s, %d), di_v16f)", q, s);
        snprintf(dname, dlen, "dq");
    } else {
        snprintf(out, len, "__builtin_convertvector(%s & 0x%xu, di_v16f)", q, 15u << (4 * s));
        snprintf(dname, dlen, "d%d", s);
    }
}

/* The 8 lanes' weights at k = 32b + per_word * jj + s, as di_pk_w decodes one: w, then `use`
 * (a format with %1$d for per_word and %2$d for s). */
static void mm_packed_step(di_str *o, bool q8, int s, int per_word, const char *use)
{
    char code[160], d[8], tail[4096];
    snprintf(tail, sizeof tail, use, per_word, s);
    mm_packed_code(code, sizeof code, d, sizeof d, q8, s, 8, "q");
    di_str_printf(o, "                        { const di_v8f v = %s * %s + m;\n"
                     "                          const di_v8f t = v * 65537.0f, w = t - (t - v);\n"
                     "                          %s }\n",
                  d, code, tail);
}

/* Record r's d and m (8 lanes), the prefetch of the stream ahead, and the loop over its code
 * words q, for the steps inside. */
static void mm_packed_record(di_str *o, bool q8, const char *use)
{
    int per_word = q8 ? 4 : 8;
    di_str_printf(o, "                    for (int l = 0; l < DI_PK_REC; l += 64) __builtin_prefetch(r + DI_PK_PF + l);\n"
                     "                    di_v8f d, m;\n"
                     "                    __builtin_memcpy(&d, r, 32);\n"
                     "                    __builtin_memcpy(&m, r + 32, 32);\n"
                     "                    for (int jj = 0; jj < %d; jj++) {\n"
                     "                        di_v8u q;\n"
                     "                        __builtin_memcpy(&q, r + 64 + 32 * jj, 32);\n",
                  32 / per_word);
    for (int st = 0; st < per_word; st++) mm_packed_step(o, q8, st, per_word, use);
    di_str_puts(o, "                    }\n");
}

/* Columns j.. of R rows, one group of 8 lanes: each record is decoded once for all the rows,
 * and each row's chunk chain for the lanes is one vector c<i>; a chunk's sums join at[] in chunk
 * order. */
static void mm_rows_packed_group8(di_str *o, const mm_c *m, int rows)
{
    di_str_puts(o, "            const unsigned char *wg = w_ + (n0 + j) / 8 * nb * DI_PK_REC;\n"
                   "            for (long kc = 0; kc < K; kc += SPLIT) {\n"
                   "                const long be = (kc + SPLIT < K ? kc + SPLIT : K) / 32;\n");
    for (int i = 0; i < rows; i++) di_str_printf(o, "                di_v8f c%d = {0};\n", i);
    di_str_puts(o, "                for (long b = kc / 32; b < be; b++) {\n"
                   "                    const unsigned char *r = wg + b * DI_PK_REC;\n"
                   "                    const long kb = b * 32;\n");
    di_str use = {0};
    for (int i = 0; i < rows; i++)
        di_str_printf(&use, "%sc%d = c%d + %s(x%d[kb + %%1$d * jj + %%2$d]) * w;", i ? " " : "", i, i, m->lx, i);
    mm_packed_record(o, m->wt == DI_Q8X8, use.p);
    di_str_free(&use);
    di_str_puts(o, "                }\n");
    for (int i = 0; i < rows; i++)
        di_str_printf(o, "                { di_v8f a; __builtin_memcpy(&a, at + %1$d * DI_MM_CG + j, 32); a = a + c%1$d; "
                         "__builtin_memcpy(at + %1$d * DI_MM_CG + j, &a, 32); }\n", i);
    di_str_puts(o, "            }\n");
}

/* The 16-lane group (two records side by side) decodes one code word ahead of the rows' chains:
 * while the rows take word jj's weights w0.., the next word's are decoded into the same
 * registers, so the decode's latency (mask, convert, fma and the rounding's three: about 15
 * cycles) overlaps the rows' products instead of stalling at each word (Zen 5, 8 rows: 2.62 ->
 * 1.71 ns a step of 16 outputs). Each chain is the same sequence of operations as before; only
 * the order in which independent lanes' work is written changed. A 4-bit word's upper four codes
 * are taken from q >> 16 against d0..d3, to free four registers for the rows. */
static void mm_pk16_record(di_str *o, bool q8, const char *rec, const char *ind)
{
    di_str_printf(o, "%1$s{ const unsigned char *r = wg + (%2$s) * DI_PK_REC, *r2 = wg2 + (%2$s) * DI_PK_REC;\n"
                     "%1$s  const di_v16f d = di_pk_f16(r, r2); m = di_pk_f16(r + 32, r2 + 32);\n",
                  ind, rec);
    if (q8) di_str_printf(o, "%s  dq = d * 0x1p-24f; }\n", ind);
    else di_str_printf(o, "%s  d0 = d; d1 = d * 0x1p-4f; d2 = d * 0x1p-8f; d3 = d * 0x1p-12f; }\n", ind);
}

static void mm_pk16_word(di_str *o, bool q8, const char *rec, const char *word, const char *ind)
{
    di_str_printf(o, "%1$sq = di_pk_u16(wg + (%2$s) * DI_PK_REC + 64 + 32 * (%3$s), wg2 + (%2$s) * DI_PK_REC + 64 + 32 * (%3$s));%4$s\n",
                  ind, rec, word, q8 ? "" : " qh = q >> 16;");
}

/* Step s: the rows take w<s> (when use is given), then w<s> becomes the next word's weight. */
static void mm_pk16_steps(di_str *o, bool q8, const char *use, bool decode, const char *ind)
{
    const int per_word = q8 ? 4 : 8;
    for (int s = 0; s < per_word; s++) {
        char code[160], d[8], tail[4096];
        if (use) {
            snprintf(tail, sizeof tail, use, per_word, s);
            di_str_printf(o, "%s%s\n", ind, tail);
        }
        if (!decode) continue;
        mm_packed_code(code, sizeof code, d, sizeof d, q8, q8 ? s : s % 4, 16, q8 || s < 4 ? "q" : "qh");
        di_str_printf(o, "%s{ const di_v16f v = di_pk_fma(%s, %s, m), t = v * 65537.0f; w%d = t - (t - v); }\n", ind, code, d, s);
    }
}

static void mm_rows_packed_group16(di_str *o, const mm_c *m, int rows)
{
    const bool q8 = m->wt == DI_Q8X8;
    const int per_word = q8 ? 4 : 8, words = 32 / per_word;
    const char *in = "                    ", *in2 = "                        ";
    di_str_puts(o, "            const unsigned char *wg = w_ + (n0 + j) / 8 * nb * DI_PK_REC, *wg2 = wg + nb * DI_PK_REC;\n"
                   "            for (long kc = 0; kc < K; kc += SPLIT) {\n"
                   "                const long be = (kc + SPLIT < K ? kc + SPLIT : K) / 32;\n");
    for (int i = 0; i < rows; i++) di_str_printf(o, "                di_v16f c%d = {0};\n", i);
    di_str_printf(o, "                di_v16f m, %s", q8 ? "dq" : "d0, d1, d2, d3");
    for (int s = 0; s < per_word; s++) di_str_printf(o, ", w%d", s);
    di_str_printf(o, ";\n                di_v16u q%s;\n                long b = kc / 32;\n", q8 ? "" : ", qh");
    mm_pk16_record(o, q8, "b", "                ");
    mm_pk16_word(o, q8, "b", "0", "                ");
    mm_pk16_steps(o, q8, NULL, true, "                ");
    di_str_puts(o, "                for (; b < be; b++) {\n"
                   "                    const long kb = b * 32;\n"
                   "                    for (int l = 0; l < DI_PK_REC; l += 64) {\n"
                   "                        __builtin_prefetch(wg + b * DI_PK_REC + DI_PK_PF + l);\n"
                   "                        __builtin_prefetch(wg2 + b * DI_PK_REC + DI_PK_PF + l);\n"
                   "                    }\n");
    di_str use = {0};
    for (int i = 0; i < rows; i++)
        di_str_printf(&use, "%sc%d = c%d + %s(x%d[kb + %%1$d * jj + %%2$d]) * w%%2$d;", i ? " " : "", i, i, m->lx, i);
    di_str_printf(o, "%sfor (int jj = 0; jj < %d; jj++) {\n", in, words - 1);
    mm_pk16_word(o, q8, "b", "jj + 1", in2);
    mm_pk16_steps(o, q8, use.p, true, in2);
    di_str_printf(o, "%s}\n"
                     "%s{\n"
                     "%s    const int jj = %d;\n"
                     "%s    if (b + 1 < be) {\n",
                  in, in, in, words - 1, in);
    mm_pk16_record(o, q8, "b + 1", "                            ");
    mm_pk16_word(o, q8, "b + 1", "0", "                            ");
    mm_pk16_steps(o, q8, use.p, true, "                            ");
    di_str_printf(o, "%s    } else {\n", in);
    mm_pk16_steps(o, q8, use.p, false, "                            ");
    di_str_printf(o, "%s    }\n%s}\n                }\n", in, in);
    di_str_free(&use);
    for (int i = 0; i < rows; i++)
        di_str_printf(o, "                { di_v16f a; __builtin_memcpy(&a, at + %1$d * DI_MM_CG + j, 64); a = a + c%1$d; "
                         "__builtin_memcpy(at + %1$d * DI_MM_CG + j, &a, 64); }\n", i);
    di_str_puts(o, "            }\n");
}

/* R rows at once (R = 8, 4, 2, 1); 16 lanes where the target has them and a second group
 * holds a column of the block (its records exist: outputs past N are zero records). */
static void mm_rows_packed(di_str *o, const mm_c *m, int rows)
{
    di_str_printf(o, "static void %s_rows%d(float *at, const %s *x_, const unsigned char *w_, long n0, long nc, long r0)\n"
                     "{\n"
                     "    const long nb = K / 32;\n",
                  m->name, rows, di_dtype_ctype(m->xt));
    for (int i = 0; i < rows; i++) di_str_printf(o, "    const %s *x%d = x_ + (r0 + %d) * K;\n", di_dtype_ctype(m->xt), i, i);
    di_str_puts(o, "    long j = 0;\n"
                   "#ifdef DI_PK_V16\n"
                   "    for (; j + 8 < nc; j += 16) {\n");
    mm_rows_packed_group16(o, m, rows);
    di_str_puts(o, "    }\n"
                   "#endif\n"
                   "    for (; j < nc; j += 8) {\n");
    mm_rows_packed_group8(o, m, rows);
    di_str_puts(o, "    }\n"
                   "}\n\n");
}

static void mm_direct_packed(di_str *o, const mm_c *m)
{
    di_str_puts(o, "#ifdef DI_PK_VEC\n");
    for (int rows = MM_PACK_ROWS; rows >= 1; rows /= 2) mm_rows_packed(o, m, rows);
    di_str_puts(o, "#endif\n");
    di_str_printf(o, "static void %s_direct(float *at, const %s *x_, const unsigned char *w_, long n0, long nc, long r0, long nr)\n"
                     "{\n"
                     "    for (long i = 0; i < nr * DI_MM_CG; i++) at[i] = 0.0f;\n"
                     "#ifdef DI_PK_VEC\n"
                     "    long i = 0;\n"
                     "    for (; i + 8 <= nr; i += 8) %s_rows8(at + i * DI_MM_CG, x_, w_, n0, nc, r0 + i);\n"
                     "    if (i + 4 <= nr) { %s_rows4(at + i * DI_MM_CG, x_, w_, n0, nc, r0 + i); i += 4; }\n"
                     "    if (i + 2 <= nr) { %s_rows2(at + i * DI_MM_CG, x_, w_, n0, nc, r0 + i); i += 2; }\n"
                     "    if (i < nr) %s_rows1(at + i * DI_MM_CG, x_, w_, n0, nc, r0 + i);\n"
                     "#else\n"
                     "    const long nb = K / 32;\n"
                     "    for (long i = 0; i < nr; i++) {\n"
                     "        const %s *x = x_ + (r0 + i) * K;\n"
                     "        float *a = at + i * DI_MM_CG;\n"
                     "        for (long j = 0; j < nc; j += 8) {\n"
                     "            const unsigned char *wg = w_ + (n0 + j) / 8 * nb * DI_PK_REC;\n"
                     "            for (int l = 0; l < 8; l++) {\n"
                     "                float al = 0.0f;\n"
                     "                for (long kc = 0; kc < K; kc += SPLIT) {\n"
                     "                    const long ke = kc + SPLIT < K ? kc + SPLIT : K;\n"
                     "                    float c = 0.0f;\n"
                     "                    for (long k = kc; k < ke; k++) c = c + %s(x[k]) * di_pk_w(wg + k / 32 * DI_PK_REC, l, (int)(k %% 32));\n"
                     "                    al = al + c;\n"
                     "                }\n"
                     "                a[j + l] = al;\n"
                     "            }\n"
                     "        }\n"
                     "    }\n"
                     "#endif\n"
                     "}\n\n",
                  m->name, di_dtype_ctype(m->xt), m->name, m->name, m->name, m->name, di_dtype_ctype(m->xt), m->lx);
}

static void mm_tile(di_str *o, const mm_c *m)
{
    di_str_printf(o, "static void %s_tile(float *at, const %s *x_, const %s *w_, long n0, long nc, long r0, long nr)\n"
                     "{\n", m->name, di_dtype_ctype(m->xt), di_dtype_ctype(m->wt));
    if (m->pairs)
        di_str_puts(o, "    di_u32 wt[DI_MM_TK / 2 * DI_MM_CG];   /* (w[n0 + j][k], w[n0 + j][k + 1]) at [(k - k0) / 2][j] */\n");
    else
        di_str_puts(o, "    float wt[DI_MM_TK * DI_MM_CG];        /* w[n0 + j][k] at [k - k0][j] */\n");
    di_str_puts(o, "    float ct[DI_MM_RB * DI_MM_CG];        /* the chunk chains, [row][column] */\n"
                   "    for (long i = 0; i < nr * DI_MM_CG; i++) at[i] = 0.0f;\n"
                   "    for (long kc = 0; kc < K; kc += SPLIT) {\n"
                   "        const long ke = kc + SPLIT < K ? kc + SPLIT : K;\n"
                   "        for (long i = 0; i < nr * DI_MM_CG; i++) ct[i] = 0.0f;\n"
                   "        for (long k0 = kc; k0 < ke; k0 += DI_MM_TK) {\n"
                   "            const long kn = ke - k0 < DI_MM_TK ? ke - k0 : DI_MM_TK;\n");
    /* the tile; columns past N (the last block) are zeros, computed and never stored */
    if (di_dtype_packed(m->wt)) {
        /* a record's 8 lanes are 8 adjacent columns of the tile: decoded as vectors */
        di_str_puts(o, "#ifdef DI_PK_VEC\n"
                       "            for (long jg = 0; jg < DI_MM_CG; jg += 8) {\n"
                       "                if (jg >= nc) {\n"
                       "                    for (long k = 0; k < kn; k++)\n"
                       "                        for (long j = jg; j < jg + 8; j++) wt[k * DI_MM_CG + j] = 0.0f;\n"
                       "                    continue;\n"
                       "                }\n"
                       "                const unsigned char *wg = w_ + (n0 + jg) / 8 * (K / 32) * DI_PK_REC;\n"
                       "                for (long b = k0 / 32; b < (k0 + kn) / 32; b++) {\n"
                       "                    const unsigned char *r = wg + b * DI_PK_REC;\n"
                       "                    float *dst = wt + (b * 32 - k0) * DI_MM_CG + jg;\n");
        mm_packed_record(o, m->wt == DI_Q8X8, "__builtin_memcpy(dst + (%1$d * jj + %2$d) * DI_MM_CG, &w, 32);");
        di_str_puts(o, "                }\n"
                       "            }\n"
                       "#else\n"
                       "            for (long k = 0; k < kn; k++) {\n"
                       "                float *dst = wt + k * DI_MM_CG;\n"
                       "                const long kk = k0 + k;\n"
                       "                for (long j = 0; j < DI_MM_CG; j++)\n"
                       "                    dst[j] = j < nc ? di_pk_w(w_ + ((n0 + j) / 8 * (K / 32) + kk / 32) * DI_PK_REC, (int)(j % 8), (int)(kk % 32)) : 0.0f;\n"
                       "            }\n"
                       "#endif\n");
    } else if (m->pairs)
        di_str_puts(o, "            for (long kp = 0; kp < kn / 2; kp++) {\n"
                       "                const di_u32 *src = (const di_u32 *)(w_ + n0 * K + k0) + kp;\n"
                       "                di_u32 *dst = wt + kp * DI_MM_CG;\n"
                       "                if (nc == DI_MM_CG)\n"
                       "                    for (long j = 0; j < DI_MM_CG; j++) dst[j] = src[j * (K / 2)];\n"
                       "                else\n"
                       "                    for (long j = 0; j < DI_MM_CG; j++) dst[j] = j < nc ? src[j * (K / 2)] : 0u;\n"
                       "            }\n");
    else
        di_str_printf(o, "            for (long k = 0; k < kn; k++) {\n"
                         "                const %s *src = w_ + n0 * K + k0 + k;\n"
                         "                float *dst = wt + k * DI_MM_CG;\n"
                         "                for (long j = 0; j < DI_MM_CG; j++) dst[j] = j < nc ? %s(src[j * K]) : 0.0f;\n"
                         "            }\n",
                      di_dtype_ctype(m->wt), m->lw);
    di_str_printf(o, "            for (long i = 0; i < nr; i++) {\n"
                     "                const %s *x = x_ + (r0 + i) * K + k0;\n"
                     "                float *c = ct + i * DI_MM_CG;\n", di_dtype_ctype(m->xt));
    if (m->pairs)
        di_str_printf(o, "                for (long kp = 0; kp < kn / 2; kp++) {\n"
                         "                    const float x0 = %s(x[2 * kp]), x1 = %s(x[2 * kp + 1]);\n"
                         "                    const di_u32 *wk = wt + kp * DI_MM_CG;\n"
                         "                    for (long j = 0; j < DI_MM_CG; j++) {\n"
                         "                        const di_u32 u = wk[j];\n"
                         "                        c[j] = c[j] + x0 * DI_AS_F32(u << 16);\n"
                         "                        c[j] = c[j] + x1 * DI_AS_F32(u & 0xffff0000u);\n"
                         "                    }\n"
                         "                }\n", m->lx, m->lx);
    else if (di_dtype_packed(m->wt))   /* kn is a multiple of 32: 4 k per pass, c[j] in a register */
        di_str_printf(o, "                for (long k = 0; k < kn; k += 4) {\n"
                         "                    const float x0 = %s(x[k]), x1 = %s(x[k + 1]), x2 = %s(x[k + 2]), x3 = %s(x[k + 3]);\n"
                         "                    const float *w0 = wt + k * DI_MM_CG, *w1 = w0 + DI_MM_CG, *w2 = w1 + DI_MM_CG, *w3 = w2 + DI_MM_CG;\n"
                         "                    for (long j = 0; j < DI_MM_CG; j++) {\n"
                         "                        float a = c[j];\n"
                         "                        a = a + x0 * w0[j];\n"
                         "                        a = a + x1 * w1[j];\n"
                         "                        a = a + x2 * w2[j];\n"
                         "                        c[j] = a + x3 * w3[j];\n"
                         "                    }\n"
                         "                }\n", m->lx, m->lx, m->lx, m->lx);
    else
        di_str_printf(o, "                for (long k = 0; k < kn; k++) {\n"
                         "                    const float x0 = %s(x[k]);\n"
                         "                    const float *wk = wt + k * DI_MM_CG;\n"
                         "                    for (long j = 0; j < DI_MM_CG; j++) c[j] = c[j] + x0 * wk[j];\n"
                         "                }\n", m->lx);
    di_str_puts(o, "            }\n"
                   "        }\n"
                   "        for (long i = 0; i < nr * DI_MM_CG; i++) at[i] = at[i] + ct[i];\n"
                   "    }\n"
                   "}\n\n");
}

/* The block: its outputs' sums by one of the two paths, then the epilogue per output. */
static void lower_matmul_c(di_str *o, const di_spec *s, const di_specialization *p, const char *name)
{
    mm_c m = {.name = name, .rows = s->sizes[0]};
    m.xt = m.wt = m.yt = DI_F32;
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        if (!strcmp(s->args[i].name, "x")) m.xt = p->dtypes[i];
        if (!strcmp(s->args[i].name, "w")) m.wt = p->dtypes[i];
        if (!strcmp(s->args[i].name, "y")) m.yt = p->dtypes[i];
    }
    m.lx = load_expr(m.xt);
    m.lw = load_expr(m.wt);
    m.store = m.yt == DI_BF16 ? "di_f32_to_bf16" : "";
    m.pairs = m.wt == DI_BF16 && di_spec_dim(s, p, "K") % 2 == 0 && mm_split(s, p) % 2 == 0;
    /* libtcc does not vectorise, and its code is fastest on the direct path at every row count:
     * there the threshold is out of reach; so it is for packed weights in 16 lanes (Zen 5, 32
     * rows: 0.21 ns a row and step of 16 outputs against the tile's 0.35), not in 8 (0.71
     * against 0.47). Either path gives every output the same order. */
    const bool packed = di_dtype_packed(m.wt);
    di_str_printf(o, "#define DI_MM_CG %d      /* columns per block */\n"
                     "#define DI_MM_RB %d      /* rows per block */\n"
                     "#define DI_MM_TK %d      /* k per tile */\n",
                  MM_CG, MM_RB, MM_TK);
    if (packed) mm_packed_helpers(o, &m);   /* they say whether there are 16 lanes (DI_PK_V16) */
    di_str_printf(o, "%s\n"
                     "#define DI_MM_DIRECT (DI_MM_RB + 1)\n"
                     "#else\n"
                     "#define DI_MM_DIRECT %d   /* fewer rows than this: weights read in place */\n"
                     "#endif\n\n",
                  packed ? "#if defined(__TINYC__) || defined(DI_PK_V16)" : "#ifdef __TINYC__",
                  packed ? MM_DIRECT_PACKED : MM_DIRECT);
    if (packed) mm_direct_packed(o, &m);
    else mm_direct(o, &m);
    mm_tile(o, &m);
    di_str_printf(o, "static void %s_block(long bx, long by, ", name);
    di_emit_params(o, s, p);
    di_str_printf(o, ")\n{\n"
                     "    const long n0 = bx * DI_MM_CG, r0 = by * DI_MM_RB;\n"
                     "    const long nc = N - n0 < DI_MM_CG ? N - n0 : DI_MM_CG;\n"
                     "    const long nr = %s - r0 < DI_MM_RB ? %s - r0 : DI_MM_RB;\n"
                     "    float at[DI_MM_RB * DI_MM_CG];   /* the sums, [row][column] */\n"
                     "    if (nr >= DI_MM_DIRECT) %s_tile(at, x_, w_, n0, nc, r0, nr);\n"
                     "    else %s_direct(at, x_, w_, n0, nc, r0, nr);\n"
                     "    for (long i = 0; i < nr; i++) {\n"
                     "        const long r = r0 + i;\n",
                  m.rows, m.rows, name, name);
    emit_slices(o, s, p, "r", "        ");
    di_str_printf(o, "        for (long j = 0; j < nc; j++) {\n"
                     "            const long n = n0 + j;\n"
                     "            const float acc = at[i * DI_MM_CG + j];\n"
                     "            y[n] = %s(%s);\n"
                     "        }\n"
                     "    }\n"
                     "}\n",
                  m.store, s->body);
}

/* The C backend's matmul grid: DI_MM_CG columns x DI_MM_RB rows per block. */
static void geometry_matmul_c(const di_spec *s, const di_specialization *p, const long *sizes, di_geometry *g)
{
    long n = di_spec_dim(s, p, "N");
    memset(g, 0, sizeof *g);
    g->grid[0] = (unsigned)((n + MM_CG - 1) / MM_CG);
    g->grid[1] = (unsigned)((sizes[0] + MM_RB - 1) / MM_RB);
    g->grid[2] = 1;
    g->block[0] = g->block[1] = g->block[2] = 1;
}

/* One block per (row, q head). Splits of SPLIT positions, aligned to KV blocks, in order:
 * scores (an in-order dot over HD), split max, weights exp(s - max) and their in-order
 * sum, acc[d] as an in-order chain over the split's positions; then the split is folded
 * into the running (M, L, ACC) with the rescale factors exp(M - M') and exp(m - M'). */
/* The C backend's scores of one split for the block's G q heads, into di_w[i][j]: 8 positions'
 * dot products side by side (8 independent chains over e, each in order), the rest one at a
 * time. Under GNU C the 8 chains are the lanes of one vector: 8 positions' keys are loaded 8 e
 * at a time and transposed in registers once for all G heads (the cache holds a position's e
 * contiguously; a lane needs one e of 8 positions), then each lane takes its terms in e order,
 * as the scalar chains do. mask: the score from its dot d and position jj. */
static void attention_scores_c(di_str *o, const char *mask)
{
    di_str_puts(o, "        long jv = 0;   /* positions before jv: scored by the vector loop */\n"
                   "#if defined(__GNUC__) && !defined(__TINYC__)\n"
                   "        typedef float di_a8f __attribute__((vector_size(32)));\n"
                   "#define DI_SV(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)\n"
                   "        for (; HD % 8 == 0 && jv + 8 <= nj; jv += 8) {\n"
                   "            const float *k0 = kb + jv * KVW;\n"
                   "            di_a8f dv[G];\n"
                   "            for (long i = 0; i < G; i++) dv[i] = (di_a8f){0};\n"
                   "            for (long e = 0; e < HD; e += 8) {\n"
                   "                di_a8f r0, r1, r2, r3, r4, r5, r6, r7;\n");
    for (int i = 0; i < 8; i++)
        di_str_printf(o, "                __builtin_memcpy(&r%d, k0 + %d * KVW + e, 32);\n", i, i);
    di_str_puts(o, "                /* pairs of positions, then quads, then eights: t<s> lane l = key jv + l at e + s */\n"
                   "                const di_a8f a0 = DI_SV(r0, r1, 0, 8, 1, 9, 4, 12, 5, 13), a1 = DI_SV(r0, r1, 2, 10, 3, 11, 6, 14, 7, 15);\n"
                   "                const di_a8f a2 = DI_SV(r2, r3, 0, 8, 1, 9, 4, 12, 5, 13), a3 = DI_SV(r2, r3, 2, 10, 3, 11, 6, 14, 7, 15);\n"
                   "                const di_a8f a4 = DI_SV(r4, r5, 0, 8, 1, 9, 4, 12, 5, 13), a5 = DI_SV(r4, r5, 2, 10, 3, 11, 6, 14, 7, 15);\n"
                   "                const di_a8f a6 = DI_SV(r6, r7, 0, 8, 1, 9, 4, 12, 5, 13), a7 = DI_SV(r6, r7, 2, 10, 3, 11, 6, 14, 7, 15);\n"
                   "                const di_a8f b0 = DI_SV(a0, a2, 0, 1, 8, 9, 4, 5, 12, 13), b1 = DI_SV(a0, a2, 2, 3, 10, 11, 6, 7, 14, 15);\n"
                   "                const di_a8f b2 = DI_SV(a1, a3, 0, 1, 8, 9, 4, 5, 12, 13), b3 = DI_SV(a1, a3, 2, 3, 10, 11, 6, 7, 14, 15);\n"
                   "                const di_a8f b4 = DI_SV(a4, a6, 0, 1, 8, 9, 4, 5, 12, 13), b5 = DI_SV(a4, a6, 2, 3, 10, 11, 6, 7, 14, 15);\n"
                   "                const di_a8f b6 = DI_SV(a5, a7, 0, 1, 8, 9, 4, 5, 12, 13), b7 = DI_SV(a5, a7, 2, 3, 10, 11, 6, 7, 14, 15);\n"
                   "                const di_a8f t0 = DI_SV(b0, b4, 0, 1, 2, 3, 8, 9, 10, 11), t4 = DI_SV(b0, b4, 4, 5, 6, 7, 12, 13, 14, 15);\n"
                   "                const di_a8f t1 = DI_SV(b1, b5, 0, 1, 2, 3, 8, 9, 10, 11), t5 = DI_SV(b1, b5, 4, 5, 6, 7, 12, 13, 14, 15);\n"
                   "                const di_a8f t2 = DI_SV(b2, b6, 0, 1, 2, 3, 8, 9, 10, 11), t6 = DI_SV(b2, b6, 4, 5, 6, 7, 12, 13, 14, 15);\n"
                   "                const di_a8f t3 = DI_SV(b3, b7, 0, 1, 2, 3, 8, 9, 10, 11), t7 = DI_SV(b3, b7, 4, 5, 6, 7, 12, 13, 14, 15);\n"
                   "                for (long i = 0; i < G; i++) {\n"
                   "                    const float *qi = q0 + i * HD + e;\n"
                   "                    di_a8f d = dv[i];\n");
    for (int i = 0; i < 8; i++) di_str_printf(o, "                    d = d + qi[%d] * t%d;\n", i, i);
    di_str_puts(o, "                    dv[i] = d;\n"
                   "                }\n"
                   "            }\n");
    di_str_printf(o, "            for (long i = 0; i < G; i++)\n"
                     "                for (long l = 0; l < 8; l++) { const long jj = jv + l; const float d = dv[i][l]; di_w[i][jj] = %s; }\n"
                     "        }\n"
                     "#undef DI_SV\n"
                     "#endif\n"
                     "        for (long i = 0; i < G; i++) {\n"
                     "            const float *q = q0 + i * HD;\n"
                     "            long j = jv;\n"
                     "            for (; j + 8 <= nj; j += 8) {\n"
                     "                const float *k0 = kb + j * KVW;\n"
                     "                float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f, d4 = 0.0f, d5 = 0.0f, d6 = 0.0f, d7 = 0.0f;\n"
                     "                for (long e = 0; e < HD; e++) {\n"
                     "                    const float qe = q[e];\n", mask);
    for (int i = 0; i < 8; i++) di_str_printf(o, "                    d%d = d%d + qe * k0[%d * KVW + e];\n", i, i, i);
    di_str_puts(o, "                }\n");
    for (int i = 0; i < 8; i++)
        di_str_printf(o, "                { const long jj = j + %d; const float d = d%d; di_w[i][jj] = %s; }\n", i, i, mask);
    di_str_printf(o, "            }\n"
                     "            for (; j < nj; j++) {\n"
                     "                const float *kr = kb + j * KVW;\n"
                     "                float d = 0.0f;\n"
                     "                for (long e = 0; e < HD; e++) d = d + q[e] * kr[e];\n"
                     "                { const long jj = j; di_w[i][jj] = %s; }\n"
                     "            }\n"
                     "        }\n", mask);
}

long di_attention_c_heads(const di_spec *s, const di_specialization *p)
{
    long nh = di_spec_dim(s, p, "NH"), g = nh / di_spec_dim(s, p, "NKV");
    while (nh / g < 2 && g % 2 == 0) g /= 2;
    return g;
}

/* The C backend's attention: the chains of the GPU text in lower_attention, per position and
 * per d; only which run side by side differs. A block is one row's G q heads of one kv head
 * (di_attention_c_heads; the grid follows it, codegen.c), so each key's transpose and each value
 * row is loaded once for all of them; PV sums with d as the inner (SIMD) loop. */
static void lower_attention_c(di_str *o, const di_spec *s, const di_specialization *p, bool win)
{
    const char *first = win ? "sfirst" : "0";   /* the first split folded */
    di_str_printf(o,
        "    const long KVW = NKV * HD;            /* floats per cached position */\n"
        "    enum { G = %ld };                      /* q heads in this block, of one kv head's group */\n"
        "    const long h0 = bx * G;               /* q head h0 + i is head i here */\n"
        "    const long g = h0 / (NH / NKV);       /* their kv head */\n"
        "    const float *q0 = qkv + h0 * HD;\n",
        di_attention_c_heads(s, p));
    di_str_puts(o,
        "    const long P = pos[0], S = seq[0];\n"
        "    const float scale = 1.0f / di_sqrtf((float)HD);\n"
        "    float di_w[G][SPLIT];                 /* one split's scores, then weights */\n"
        "    float di_acc[G][HD], di_m[G], di_l[G], di_c1[G], di_c2[G];\n"
        "    const long nsplit = P / SPLIT + 1;\n");
    if (win) di_str_puts(o, "    const long jlo = P - WIN + 1 > 0 ? P - WIN + 1 : 0;   /* the window's first key */\n"
                            "    const long sfirst = jlo / SPLIT;\n");
    di_str_printf(o,
        "    for (long sp = %s; sp < nsplit; sp++) {\n"
        "        const long j0 = sp * SPLIT;\n"
        "        const long nj = P + 1 - j0 < SPLIT ? P + 1 - j0 : SPLIT;\n"
        "        const long blk = btab[S * maxb + sp];\n"
        "        const float *kb = kc + blk * KVB * KVW + g * HD;\n"
        "        const float *vb = vc + blk * KVB * KVW + g * HD;\n"
        "#if defined(__GNUC__) && !defined(__TINYC__)\n"
        "        if (sp + 1 < nsplit) {   /* the next split's keys and values, from memory while this one computes */\n"
        "            const long nb = btab[S * maxb + sp + 1];\n"
        "            const char *kn = (const char *)(kc + nb * KVB * KVW + g * HD), *vn = (const char *)(vc + nb * KVB * KVW + g * HD);\n"
        "            for (long j = 0; j < KVB; j++)\n"
        "                for (long l = 0; l < HD * 4; l += 64) {\n"
        "                    __builtin_prefetch(kn + j * KVW * 4 + l);\n"
        "                    __builtin_prefetch(vn + j * KVW * 4 + l);\n"
        "                }\n"
        "        }\n"
        "#endif\n", first);
    attention_scores_c(o, win ? "j0 + jj < jlo ? -DI_INF : d * scale" : "d * scale");
    di_str_printf(o,
        /* each head's max and sum are in-order chains over j; the G heads' chains interleave */
        "        float mx[G], ls[G];\n"
        "        for (long i = 0; i < G; i++) mx[i] = di_w[i][0], ls[i] = 0.0f;\n"
        "        for (long j = 1; j < nj; j++)\n"
        "            for (long i = 0; i < G; i++) mx[i] = di_w[i][j] > mx[i] ? di_w[i][j] : mx[i];\n"
        "        for (long i = 0; i < G; i++)\n"
        "            for (long j = 0; j < nj; j++) di_w[i][j] = di_expf(di_w[i][j] - mx[i]);\n"
        "        for (long j = 0; j < nj; j++)\n"
        "            for (long i = 0; i < G; i++) ls[i] = ls[i] + di_w[i][j];\n"
        "        for (long i = 0; i < G; i++) {\n"
        "            const float m = mx[i], l = ls[i], M = di_m[i], L = di_l[i];\n"
        "            const float Mn = sp == %1$s ? m : (M > m ? M : m);\n"
        "            const float c1 = sp == %1$s ? 0.0f : di_expf(M - Mn);\n"
        "            const float c2 = sp == %1$s ? 1.0f : di_expf(m - Mn);\n"
        "            di_c1[i] = c1;\n"
        "            di_c2[i] = c2;\n"
        "            di_m[i] = Mn;\n"
        "            di_l[i] = sp == %1$s ? l : L * c1 + l * c2;\n"
        "        }\n"
        "        float pv[G][HD];\n"
        "        for (long i = 0; i < G; i++)\n"
        "            for (long d = 0; d < HD; d++) pv[i][d] = 0.0f;\n"
        "        for (long j = 0; j < nj; j++) {\n"
        "            const float *vr = vb + j * KVW;\n"
        "            for (long i = 0; i < G; i++) {\n"
        "                const float wj = di_w[i][j];\n"
        "                for (long d = 0; d < HD; d++) pv[i][d] = pv[i][d] + wj * vr[d];\n"
        "            }\n"
        "        }\n"
        "        for (long i = 0; i < G; i++)\n"
        "            for (long d = 0; d < HD; d++)\n"
        "                di_acc[i][d] = sp == %1$s ? pv[i][d] : di_acc[i][d] * di_c1[i] + pv[i][d] * di_c2[i];\n"
        "    }\n"
        "    for (long i = 0; i < G; i++)\n"
        "        for (long d = 0; d < HD; d++) out[(h0 + i) * HD + d] = di_acc[i][d] / di_l[i];\n",
        first);
}

static void lower_attention(di_str *o, const di_spec *s, const di_specialization *p, bool c)
{
    /* A spec with a WIN dim (sliding-window layers) sees keys P - WIN < j <= P only. Its KV splits
     * stay the fixed, block-aligned ones: splits wholly before the window are not folded (the
     * fold starts at the first split that holds a key of the window, a function of P alone),
     * keys before the window inside that split are masked (weight 0). */
    bool win = di_spec_dim(s, p, "WIN") > 0;
    const char *first = win ? "sfirst" : "0";   /* the first split folded */
    di_str_puts(o, c ? "    const long r = by;\n" : "    const long r = by, h = bx;\n");
    emit_slices(o, s, p, "r", "    ");
    if (c) {
        lower_attention_c(o, s, p, win);
        return;
    }
    di_str_puts(o,
        "    const long KVW = NKV * HD;            /* floats per cached position */\n"
        "    const float *q = qkv + h * HD;\n"
        "    const long kvh = h / (NH / NKV);\n"
        "    const long P = pos[0], S = seq[0];\n"
        "    const float scale = 1.0f / di_sqrtf((float)HD);\n"
        "    DI_SHARED float di_w[SPLIT];          /* one split's scores, then weights */\n"
        "    DI_SHARED float di_acc[HD];\n"
        "    DI_SHARED float di_ml[4];             /* running max, running sum, split max, split sum */\n"
        "    const long nsplit = P / SPLIT + 1;\n");
    if (win) di_str_puts(o, "    const long jlo = P - WIN + 1 > 0 ? P - WIN + 1 : 0;   /* the window's first key */\n"
                            "    const long sfirst = jlo / SPLIT;\n");
    di_str_puts(o, win ? "    for (long sp = sfirst; sp < nsplit; sp++) {\n" : "    for (long sp = 0; sp < nsplit; sp++) {\n");
    di_str_puts(o,
        "        const long j0 = sp * SPLIT;\n"
        "        const long nj = P + 1 - j0 < SPLIT ? P + 1 - j0 : SPLIT;\n"
        "        const long blk = btab[S * maxb + sp];\n"
        "        const float *kb = kc + blk * KVB * KVW + kvh * HD;\n"
        "        const float *vb = vc + blk * KVB * KVW + kvh * HD;\n");
    di_str_puts(o,
        "        DI_FOR_THREADS(j, nj) {\n"
        "            const float *kr = kb + j * KVW;\n"
        "            float d = 0.0f;\n"
        "            for (long e = 0; e < HD; e++) d = d + q[e] * kr[e];\n");
    di_str_puts(o, win ? "            di_w[j] = j0 + j < jlo ? -DI_INF : d * scale;   /* before the window: weight 0 */\n"
                       : "            di_w[j] = d * scale;\n");
    di_str_printf(o,
        "        }\n"
        "        DI_SYNC();\n"
        "        DI_ONE_THREAD {\n"
        "            float m = di_w[0];\n"
        "            for (long j = 1; j < nj; j++) m = di_w[j] > m ? di_w[j] : m;\n"
        "            float l = 0.0f;\n"
        "            for (long j = 0; j < nj; j++) {\n"
        "                const float e = di_expf(di_w[j] - m);\n"
        "                di_w[j] = e;\n"
        "                l = l + e;\n"
        "            }\n"
        "            di_ml[2] = m;\n"
        "            di_ml[3] = l;\n"
        "        }\n"
        "        DI_SYNC();\n"
        "        const float m = di_ml[2], l = di_ml[3], M = di_ml[0], L = di_ml[1];\n"
        "        const float Mn = sp == %s ? m : (M > m ? M : m);\n"
        "        const float c1 = sp == %s ? 0.0f : di_expf(M - Mn);\n"
        "        const float c2 = sp == %s ? 1.0f : di_expf(m - Mn);\n"
        "        DI_FOR_THREADS(d, HD) {\n"
        "            float a = 0.0f;\n"
        "            for (long j = 0; j < nj; j++) a = a + di_w[j] * vb[j * KVW + d];\n"
        "            di_acc[d] = sp == %s ? a : di_acc[d] * c1 + a * c2;\n"
        "        }\n"
        "        DI_SYNC();\n"
        "        DI_ONE_THREAD {\n"
        "            di_ml[0] = Mn;\n"
        "            di_ml[1] = sp == %s ? l : L * c1 + l * c2;\n"
        "        }\n"
        "        DI_SYNC();\n"
        "    }\n"
        "    DI_FOR_THREADS(d, HD) out[h * HD + d] = di_acc[d] / di_ml[1];\n",
        first, first, first, first, first);
}

int di_lower_body(di_str *o, const di_spec *s, const di_specialization *p, bool c, di_err *err)
{
    switch (s->cls) {
    case DI_MAP:
    case DI_GATHER: lower_map(o, s, p); return DI_OK;
    case DI_ROW_REDUCE: lower_row_reduce(o, s, p, c); return DI_OK;
    case DI_SAMPLE: lower_sample(o, s, p, c); return DI_OK;
    case DI_MATMUL: lower_matmul(o, s, p); return DI_OK;
    case DI_ATTENTION:
        for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++)
            if (s->args[i].role != DI_ROLE_SCALAR && s->args[i].dtype == DI_F32 && p->dtypes[i] != DI_F32)
                return di_fail(err, DI_ESPEC, "spec %s: the class lowering reads f32 K and V and writes f32; a %s %s is "
                               "only the fast profile's tensor-core attention's (CUDA)", s->name,
                               di_dtype_name(p->dtypes[i]), s->args[i].name);
        lower_attention(o, s, p, c);
        return DI_OK;
    default: return di_fail(err, DI_ESPEC, "spec %s: class %d has no lowering", s->name, (int)s->cls);
    }
}

/* ---- the class lowering as a value ------------------------------------------------------ */

static bool class_applies(const di_spec *s, const di_specialization *p, const di_target *t)
{
    (void)s, (void)p, (void)t;
    return true;   /* the last in the list: every spec has one */
}

/* C: a static block function and the pool entry around it; CUDA: one kernel, a block per
 * (bx, by) of the geometry. */
static int class_emit(di_str *o, const di_spec *s, const di_specialization *p, const di_target *t, const char *name,
                      di_err *err)
{
    bool c = t->backend == DI_BACKEND_C;
    bool store16 = false;
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) store16 = store16 || stored_bf16(s, p, i);
    if (store16 && c)
        return di_fail(err, DI_ESPEC, "spec %s: a bf16 output of a body is emitted for CUDA only (the fast profile's "
                       "fused casts)", s->name);
    if (store16) di_str_puts(o, bf16_store_type);
    int w = di_spec_arg(s, "w");
    bool packed = s->cls == DI_MATMUL && w >= 0 && di_dtype_packed(p->dtypes[w]);
    /* the fast profile's packed w is the tensor-core matmul's (the same bits as its bf16 w);
     * this lowering's chains would be exact's order, not fast's */
    if (packed && di_dtype_half_scales(p->dtypes[w]))
        return di_fail(err, DI_ESPEC, "spec %s: %s weights (binary16 scales) are read by the fast profile's "
                       "tensor-core matmul only", s->name, di_dtype_name(p->dtypes[w]));
    if (packed && !c && p->profile == DI_PROFILE_FAST)
        return di_fail(err, DI_ESPEC, "spec %s: packed %s weights in the fast profile are read by the tensor-core "
                       "matmul only (K = %ld)", s->name, di_dtype_name(p->dtypes[w]), di_spec_dim(s, p, "K"));
    if (!c && packed) emit_pk_scalar(o, p->dtypes[w]);
    if (c && s->cls == DI_MATMUL) {
        lower_matmul_c(o, s, p, name);
        di_emit_c_entry(o, s, p, name);
        return DI_OK;
    }
    if (c) {
        di_str_printf(o, "static void %s_block(long bx, long by, ", name);
        di_emit_params(o, s, p);
        di_str_puts(o, ")\n{\n");
    } else {
        di_str_printf(o, "extern \"C\" __global__ void __launch_bounds__(THREADS) %s(", name);
        di_emit_params(o, s, p);
        di_str_puts(o, DI_CUDA_ENTRY_OPEN "    const long bx = blockIdx.x, by = blockIdx.y;\n");
    }
    di_str_puts(o, "    (void)bx; (void)by;\n");
    int rc = di_lower_body(o, s, p, c, err);
    if (rc) return rc;
    di_str_puts(o, "}\n");
    if (c) di_emit_c_entry(o, s, p, name);
    return DI_OK;
}

static int class_entries(const di_spec *s, const di_specialization *p, const di_target *t, di_entry *out, di_err *err)
{
    (void)err;
    di_kernel_name(s, p, t, out[0].name, sizeof out[0].name);
    di_entry_spec_params(s, &out[0]);
    return 1;
}

static int class_plan(const di_spec *s, const di_specialization *p, const di_target *t, const long *sizes, di_plan *pl,
                      di_err *err)
{
    di_geometry g;
    if (di_geometry_for(s, p, t->backend, sizes, &g, err)) return err->code;
    if (t->backend == DI_BACKEND_C && s->cls == DI_MATMUL) geometry_matmul_c(s, p, sizes, &g);
    di_plan_entry(s, pl, &g);
    return DI_OK;
}

const di_lowering di_lowering_class = {
    .name = "class", .applies = class_applies, .emit = class_emit, .entries = class_entries, .plan = class_plan,
};
