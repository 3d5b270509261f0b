/* The fast profile's attention on the GPU: causal GQA attention over the paged KV cache with
 * Q.K^T and P.V on tensor cores, batch invariant by construction.
 *
 * ---- Design notes -------------------------------------------------------------------------
 *
 * Decomposition (the spec's, unchanged): a query at position P sees keys 0..P in splits of
 * SPLIT positions, [s*SPLIT, (s+1)*SPLIT), s = 0..P/SPLIT. Each split gives (m, l, a): the
 * split's score max, the sum of its weights and the weighted sum of its values; splits are
 * folded in split order, s = 0 first (M, L, ACC = m, l, a), then for each next split
 *   Mn = max(M, m), c1 = 2^(M - Mn), c2 = 2^(m - Mn), ACC = ACC*c1 + a*c2, L = L*c1 + l*c2
 * with every operation a rounded IEEE operation (__fmul_rn / __fadd_rn, never contracted), and
 * out = ACC / L. Scores are kept in base 2 (scaled by log2(e) / sqrt(HD)).
 *
 * A split on tensor cores. A block takes one KV head and a few consecutive batch rows, in runs
 * of one sequence. For each split of a run its threads load the K and V rows (f32 in the
 * cache) once, as bf16 (round to nearest even), into shared memory, K as [key][d], V
 * transposed as [d][key], positions past the run's largest position as zeros (they may never
 * have been written). Each warp takes an m16 tile of 16 query vectors: the G = NH/NKV heads of
 * up to 16/G of the run's rows (its own rows of the block). Then
 *   S = Q.K^T: SPLIT/8 n8 tiles, HD/16 k16 steps in increasing d, from 0 (mma.m16n8k16);
 *   keys past a query's own position get -inf; m = the row max (a fixed xor-shuffle tree over
 *   the quad that holds the row); p = 2^(s - m), rounded to bf16 (the P.V operand) and
 *   l = the sum of the rounded p in a fixed order (thread-local columns, then the xor tree);
 *   a = P.V: HD/8 n8 tiles, SPLIT/16 k16 steps in increasing key, from 0; then a + 0.0f, so
 *   that an all-zero sum is +0 whatever signs its zero terms had.
 * An mma output element depends only on its own A row, B column and accumulator, so a
 * query's (m, l, a) for split s depends only on its q, its position and keys 0..P: not on the
 * other queries in the tile, the other rows of the batch or the positions the tile masks for
 * others (masked weights are exact zeros; zeroed or finite values times 0 add nothing).
 *
 * Two modes, chosen per launch from (rows, maxb) only; they give the same bits:
 *  - fold mode (grid KV heads x row groups): a warp walks splits 0..P/SPLIT of its tile in
 *    order and folds each into registers as above;
 *  - split mode (grid KV heads x row groups x max splits, small batches: decode): block z
 *    computes split z only and writes (a, m, l) to a workspace; phase 2 (`_merge`, one block
 *    per (row, head)) folds them in split order with the same function (af_fold).
 * This is how a decode batch of 1 at a long context fills 132 SMs (split-KV with a fixed split
 * *size*; an engine's split *count* chosen from the batch is what the vendor profile does).
 * The tests compare the two modes, and every query alone against inside mixed batches, bitwise.
 *
 * The cache holds K and V as f32 (converted per load) or, in the fast profile's models, as bf16
 * written by kv_write_bf16 with the same rounding: the same operands, the same bits, half the
 * bytes. Not done yet (perf/RESULTS.md has the figures): no cp.async pipeline across splits
 * (latency is hidden by other blocks only). */
#include "codegen/attention_fast.h"
#include "codegen/lower.h"
#include "codegen/lowering.h"
#include <math.h>
#include <stdio.h>
#include <string.h>

/* The spec's KV split size, or the vendor profile's per-launch choice. */
static long kv_split(const di_spec *s, const di_specialization *p) { return p->kv_split ? p->kv_split : s->sched.split; }

/* The cache's element type: F32 or BF16 when K and V agree, else DI_I32 (no such kernel). */
static di_dtype kv_dtype(const di_spec *s, const di_specialization *p)
{
    int k = di_spec_arg(s, "kc"), v = di_spec_arg(s, "vc");
    if (k < 0 || v < 0 || p->dtypes[k] != p->dtypes[v]) return DI_I32;
    return p->dtypes[k] == DI_F32 || p->dtypes[k] == DI_BF16 ? p->dtypes[k] : DI_I32;
}

static bool af_applies(const di_spec *s, const di_specialization *p, const di_target *t)
{
    if (s->cls != DI_ATTENTION || t->backend != DI_BACKEND_CUDA || p->profile == DI_PROFILE_EXACT) return false;
    if (di_spec_dim(s, p, "WIN") > 0) return false;   /* sliding windows: the class lowering (not written here yet) */
    long nh = di_spec_dim(s, p, "NH"), nkv = di_spec_dim(s, p, "NKV"), hd = di_spec_dim(s, p, "HD");
    long split = kv_split(s, p), kvb = s->sched.kv_block;
    if (nh <= 0 || nkv <= 0 || nh % nkv || nh / nkv > 16) return false;
    if (hd <= 0 || hd % 16 || hd > 128) return false;
    /* the kernel text reads f32 q; K and V are f32 or bf16 (both alike); out f32, or bf16 for
     * the fast matmul after it (the rounding its cast would do) */
    int qi = di_spec_arg(s, "qkv"), oi = di_spec_arg(s, "out");
    if (qi >= 0 && p->dtypes[qi] != DI_F32) return false;
    if (oi >= 0 && p->dtypes[oi] != DI_F32 && p->dtypes[oi] != DI_BF16) return false;
    if (kv_dtype(s, p) == DI_I32) return false;
    return split > 0 && split % 16 == 0 && split <= 64 && kvb > 0;
}

static long ceil_div(long a, long b) { return (a + b - 1) / b; }

static long smem_bytes(long hd, long split) { return 2 * (split * (hd + 8) + hd * (split + 8)); }

/* Fold or split mode from (rows, maxb) only; both give the same bits: a query's splits, their
 * order and the fold are the same in both modes and for any rows_per_warp. */
static int af_plan(const di_spec *s, const di_specialization *p, const di_target *t, const long *sizes, di_plan *pl,
                   di_err *err)
{
    di_att_schedule c = di_att_schedule_of(p, t);
    long rows = sizes[0], maxb = sizes[1];
    if (rows < 0 || rows > 65535L * c.warps)
        return di_fail(err, DI_EUSAGE, "kernel %s: %ld rows (must be 0..%ld)", s->name, rows, 65535L * c.warps);
    long nh = di_spec_dim(s, p, "NH"), nkv = di_spec_dim(s, p, "NKV"), hd = di_spec_dim(s, p, "HD");
    long split = kv_split(s, p), kvb = s->sched.kv_block;
    if (maxb < 1) return di_fail(err, DI_EUSAGE, "kernel %s: block-table width %ld (must be >= 1)", s->name, maxb);
    long nsmax = ceil_div(maxb * kvb, split);
    size_t ws = (size_t)rows * (size_t)nh * (size_t)nsmax * (size_t)(hd + 2) * sizeof(float);
    /* split mode puts the splits in grid z and the rows in phase 2's grid y */
    bool split_fits = nsmax <= 65535 && rows <= 65535;
    bool split_mode = c.mode ? c.mode == 2
                             : rows <= c.split_max_rows && ws <= ((size_t)c.workspace_cap_mib << 20) && split_fits;
    if (split_mode && !split_fits)
        return di_fail(err, DI_EUSAGE, "kernel %s: split mode with %ld rows and %ld splits (each at most 65535)",
                       s->name, rows, nsmax);
    /* a decode batch: one row (G query vectors) per warp, so that rows spread over warps; a
     * prefill: 16/G rows of one sequence per warp, so that a K/V load serves 16 queries */
    long rows_per_warp = split_mode || rows <= c.split_max_rows ? 1 : 16 / (nh / nkv);
    long groups = ceil_div(rows, rows_per_warp * c.warps);
    if (groups > 65535)
        return di_fail(err, DI_EUSAGE, "kernel %s: %ld rows need %ld row groups (grid y is at most 65535)", s->name,
                       rows, groups);
    memset(pl, 0, sizeof *pl);
    pl->workspace = split_mode ? ws : 0;
    if (rows == 0) return DI_OK;
    for (int phase = 0; phase < (split_mode ? 2 : 1); phase++) {
        di_launch *l = &pl->l[pl->n++];
        l->run = DI_RUN_ENTRY;
        l->index = phase;
        if (phase == 0) {
            l->grid[0] = (unsigned)nkv;
            l->grid[1] = (unsigned)groups;
            l->grid[2] = split_mode ? (unsigned)nsmax : 1;
            l->block[0] = (unsigned)c.warps * 32;
            l->smem = (unsigned)smem_bytes(hd, split);
        } else {   /* phase 2 (split mode): one block per (head, row) */
            l->grid[0] = (unsigned)nh;
            l->grid[1] = (unsigned)rows;
            l->grid[2] = 1;
            l->block[0] = (unsigned)c.merge_threads;
        }
        l->block[1] = l->block[2] = 1;
        di_launch_spec_args(s, l);
        di_launch_add(l, DI_A_WS, 0, 0, 0);
        di_launch_add(l, DI_A_LONG, 0, 0, rows_per_warp);
        di_launch_add(l, DI_A_LONG, 0, 0, split_mode);
    }
    return DI_OK;
}

int di_attention_fast_mode(const di_spec *s, const di_specialization *p, const di_target *t, long rows, long maxb,
                           di_attention_fast_mode_info *out, di_err *err)
{
    if (!af_applies(s, p, t))
        return di_fail(err, DI_ESPEC, "spec %s: not a fast-profile attention of a supported shape", s->name);
    di_plan pl;
    long sizes[2] = {rows, maxb};
    if (af_plan(s, p, t, sizes, &pl, err)) return err->code;
    out->workspace = pl.workspace;
    out->split_mode = pl.n ? pl.l[0].args[pl.l[0].nargs - 1].value != 0 : pl.workspace > 0;
    out->rows_per_warp = pl.n ? pl.l[0].args[pl.l[0].nargs - 2].value : 1;
    out->grid_z = pl.n ? pl.l[0].grid[2] : 0;
    return DI_OK;
}

/* ---- source -------------------------------------------------------------------------- */

static const char device_helpers[] =
    "#define AF_G (NH / NKV)                 /* query heads per KV head */\n"
    "#define AF_NT (SPLIT / 8)               /* n8 tiles of keys in S */\n"
    "#define AF_KT (HD / 16)                 /* k16 steps over d in Q.K^T */\n"
    "#define AF_DT (HD / 8)                  /* n8 tiles of d in P.V */\n"
    "#define AF_PK (SPLIT / 16)              /* k16 steps over keys in P.V */\n"
    "#define AF_KS (HD + 8)                  /* K row stride in shared memory (bf16): no bank conflicts */\n"
    "#define AF_VS (SPLIT + 8)               /* V^T row stride */\n"
    "#define AF_WARP_SM (SPLIT * AF_KS + HD * AF_VS)\n"
    "#define AF_WSR (HD + 2)                 /* workspace floats per (row, head, split): a, m, l */\n"
    "static_assert(HD % 16 == 0 && SPLIT % 16 == 0 && AF_G >= 1 && AF_G <= 16, \"attention_fast shape\");\n"
    "\n"
    "DI_FN float af_lo(unsigned v) { return __uint_as_float(v << 16); }\n"
    "DI_FN float af_hi(unsigned v) { return __uint_as_float(v & 0xffff0000u); }\n"
    "\n"

    "/* The split fold, the only place it is written: phase 1 (fold mode) and phase 2 run it on\n"
    " * the same values, so the two modes give the same bits. c1 and c2 for a given (M, m). */\n"
    "DI_FN void af_rescale(float M, float m, float &Mn, float &c1, float &c2)\n"
    "{\n"
    "    Mn = M > m ? M : m;\n"
    "    c1 = exp2f(__fsub_rn(M, Mn));\n"
    "    c2 = exp2f(__fsub_rn(m, Mn));\n"
    "}\n"
    "DI_FN float af_fold(float acc, float c1, float a, float c2)\n"
    "{\n"
    "    return __fadd_rn(__fmul_rn(acc, c1), __fmul_rn(a, c2));\n"
    "}\n"
    "\n";

/* One split's K and V into shared memory, from an f32 cache (rounded here) or a bf16 one
 * (rounded alike by kv_write_bf16): the same bf16 operands either way. One loader; what differs
 * is the element type, the 4-element vector read and how it becomes two bf16 pairs. */
typedef struct kv_loader {
    const char *comment, *elem, *vec, *zero;
    const char *k01, *k23;    /* K's pairs (d, d+1) and (d+2, d+3) as packed bf16x2 */
    const char *vprep;        /* a line making V's pairs, or "" */
    const char *v01, *v23;    /* V's pairs */
} kv_loader;

static const kv_loader load_f32 = {
    " as bf16: K to\n * ks[key][d], V to vt[d][key]; positions past pmax are zeros (they may never have been written). */\n",
    "float", "float4", "make_float4(0.0f, 0.0f, 0.0f, 0.0f)", "di_pack_bf16x2(kv.x, kv.y)", "di_pack_bf16x2(kv.z, kv.w)",
    "        const unsigned v01 = di_pack_bf16x2(vv.x, vv.y), v23 = di_pack_bf16x2(vv.z, vv.w);\n", "v01", "v23"};
static const kv_loader load_bf16 = {
    " from the bf16\n * cache: K to ks[key][d], V to vt[d][key]; positions past pmax are zeros (they may never have\n"
    " * been written). */\n",
    "di_bf16", "uint2", "make_uint2(0u, 0u)", "kv.x", "kv.y", "", "vv.x", "vv.y"};

static void emit_load_split(di_str *o, const kv_loader *l)
{
    di_str_printf(o,
        "/* The block's threads load keys [j0, j0 + SPLIT) of KV head kvh of sequence S%s"
        "DI_FN void af_load_split(unsigned short *ks, unsigned short *vt, const %s *kc, const %s *vc,\n"
        "                         const int *btab, long maxb, long S, long kvh, long j0, long pmax)\n"
        "{\n"
        "#pragma unroll 4\n"
        "    for (int i = threadIdx.x; i < SPLIT * HD / 4; i += blockDim.x) {\n"
        "        const int key = i / (HD / 4), d4 = (i %% (HD / 4)) * 4;\n"
        "        const long p = j0 + key;\n"
        "        %s kv = %s, vv = kv;\n"
        "        if (p <= pmax) {\n"
        "            const long blk = btab[S * maxb + p / KVB];\n"
        "            const long off = ((blk * KVB + p %% KVB) * NKV + kvh) * HD + d4;\n"
        "            kv = __ldg((const %s *)(kc + off));\n"
        "            vv = __ldg((const %s *)(vc + off));\n"
        "        }\n"
        "        unsigned *kd = (unsigned *)(ks + key * AF_KS + d4);\n"
        "        kd[0] = %s;\n"
        "        kd[1] = %s;\n"
        "%s"
        "        vt[(d4 + 0) * AF_VS + key] = (unsigned short)(%s & 0xffffu);\n"
        "        vt[(d4 + 1) * AF_VS + key] = (unsigned short)(%s >> 16);\n"
        "        vt[(d4 + 2) * AF_VS + key] = (unsigned short)(%s & 0xffffu);\n"
        "        vt[(d4 + 3) * AF_VS + key] = (unsigned short)(%s >> 16);\n"
        "    }\n"
        "}\n",
        l->comment, l->elem, l->elem, l->vec, l->zero, l->vec, l->vec, l->k01, l->k23, l->vprep, l->v01, l->v01, l->v23,
        l->v23);
}

/* Phase 1. A block takes nwarps * rows_per_warp consecutive batch rows and one KV head, and
 * walks them in runs of one sequence: for each split of a run its threads load K and V once,
 * then each warp multiplies its own rows' query vectors, v = (row - first row) * G + head
 * within the group, as the rows of one m16 tile; this thread holds rows g and g + 8 (h = 0, 1)
 * of every fragment. */
static const char phase1_body[] =
    "    extern __shared__ __align__(16) unsigned short af_sm[];\n"
    "    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;\n"
    "    unsigned short *ks = af_sm, *vt = af_sm + SPLIT * AF_KS;\n"
    "    const long kvh = blockIdx.x, nwarps = blockDim.x / 32;\n"
    "    const long rb0 = (long)blockIdx.y * nwarps * rows_per_warp;\n"
    "    const long rbend = rb0 + nwarps * rows_per_warp < rows ? rb0 + nwarps * rows_per_warp : rows;\n"
    "    const long rw0 = rb0 + warp * rows_per_warp, rwend = rw0 + rows_per_warp;   /* this warp's rows */\n"
    "    const long nsmax = (maxb * KVB + SPLIT - 1) / SPLIT;\n"
    "    /* the block's rows in runs of one sequence; control flow is block-uniform */\n"
    "    for (long rs = rb0, re; rs < rbend; rs = re) {\n"
    "        const long S = seq_[rs];\n"
    "        long pmax = pos_[rs];\n"
    "        for (re = rs + 1; re < rbend && seq_[re] == S; re++) pmax = pos_[re] > pmax ? pos_[re] : pmax;\n"
    "        const long s_lo = split_mode ? (long)blockIdx.z : 0, s_hi = split_mode ? (long)blockIdx.z : pmax / SPLIT;\n"
    "        if (s_lo > pmax / SPLIT) continue;\n"
    "        /* this warp's part of the run, and this thread's two query vectors (v = g, g + 8) */\n"
    "        const long wrs = rs > rw0 ? rs : rw0, wre = re < rwend ? re : rwend;\n"
    "        const long nvec = wre > wrs ? (wre - wrs) * AF_G : 0;\n"
    "        long vr[2], vh[2], vp[2];   /* batch row, head, position (-1: no vector) */\n"
    "#pragma unroll\n"
    "        for (int h = 0; h < 2; h++) {\n"
    "            const long v = g + 8 * h;\n"
    "            const bool ok = v < nvec;\n"
    "            vr[h] = ok ? wrs + v / AF_G : rs;\n"
    "            vh[h] = kvh * AF_G + v % AF_G;\n"
    "            vp[h] = ok ? pos_[vr[h]] : -1;\n"
    "        }\n"
    "        /* Q as bf16 A fragments: a0a1 row g, a2a3 row g + 8, a4..a7 the same at d + 8 */\n"
    "        unsigned qa[AF_KT][4];\n"
    "#pragma unroll\n"
    "        for (int kt = 0; kt < AF_KT; kt++)\n"
    "#pragma unroll\n"
    "            for (int e = 0; e < 4; e++) {\n"
    "                const int h = e & 1, d = kt * 16 + 2 * q + (e >> 1) * 8;\n"
    "                float2 v = make_float2(0.0f, 0.0f);\n"
    "                if (vp[h] >= 0) v = *(const float2 *)(qkv_ + (vr[h] * (NH + 2 * NKV) + vh[h]) * HD + d);\n"
    "                qa[kt][e] = di_pack_bf16x2(v.x, v.y);\n"
    "            }\n"
    "        float M[2] = {0.0f, 0.0f}, L[2] = {0.0f, 0.0f}, acc[AF_DT][4];\n"
    "#pragma unroll\n"
    "        for (int dt = 0; dt < AF_DT; dt++) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.0f;\n"
    "        for (long sp = s_lo; sp <= s_hi; sp++) {\n"
    "            const long j0 = sp * SPLIT;\n"
    "            __syncthreads();\n"
    "            af_load_split(ks, vt, kc_, vc_, btab_, maxb, S, kvh, j0, pmax);\n"
    "            __syncthreads();\n"
    "            if (nvec == 0) continue;   /* warp-uniform: this warp has no rows in the run */\n"
    "            /* S = Q.K^T, d in increasing k16 steps from 0 */\n"
    "            float s[AF_NT][4];\n"
    "#pragma unroll\n"
    "            for (int nt = 0; nt < AF_NT; nt++) {\n"
    "                s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;\n"
    "                const unsigned short *kr = ks + (nt * 8 + g) * AF_KS + 2 * q;\n"
    "#pragma unroll\n"
    "                for (int kt = 0; kt < AF_KT; kt++)\n"
    "                    di_mma_16816(s[nt], qa[kt], *(const unsigned *)(kr + kt * 16), *(const unsigned *)(kr + kt * 16 + 8));\n"
    "            }\n"
    "            /* base-2 scores, keys past the query's position masked; row max */\n"
    "            float m[2] = {-DI_INF, -DI_INF};\n"
    "#pragma unroll\n"
    "            for (int nt = 0; nt < AF_NT; nt++)\n"
    "#pragma unroll\n"
    "                for (int e = 0; e < 4; e++) {\n"
    "                    const int h = e >> 1;\n"
    "                    const long j = j0 + nt * 8 + 2 * q + (e & 1);\n"
    "                    s[nt][e] = j <= vp[h] ? __fmul_rn(s[nt][e], AF_SCALE) : -DI_INF;\n"
    "                    m[h] = s[nt][e] > m[h] ? s[nt][e] : m[h];\n"
    "                }\n"
    "#pragma unroll\n"
    "            for (int h = 0; h < 2; h++) {\n"
    "                float o = __shfl_xor_sync(0xffffffffu, m[h], 1);\n"
    "                m[h] = o > m[h] ? o : m[h];\n"
    "                o = __shfl_xor_sync(0xffffffffu, m[h], 2);\n"
    "                m[h] = o > m[h] ? o : m[h];\n"
    "                if (m[h] == -DI_INF) m[h] = 0.0f;   /* a vector with no key here: weights 0 */\n"
    "            }\n"
    "            /* weights, rounded to bf16 for P.V; l sums the rounded weights */\n"
    "            unsigned pa[AF_PK][4];\n"
    "            float l[2] = {0.0f, 0.0f};\n"
    "#pragma unroll\n"
    "            for (int nt = 0; nt < AF_NT; nt++)\n"
    "#pragma unroll\n"
    "                for (int h = 0; h < 2; h++) {\n"
    "                    const float x0 = s[nt][2 * h], x1 = s[nt][2 * h + 1];\n"
    "                    const unsigned pk = di_pack_bf16x2(x0 == -DI_INF ? 0.0f : exp2f(__fsub_rn(x0, m[h])),\n"
    "                                                x1 == -DI_INF ? 0.0f : exp2f(__fsub_rn(x1, m[h])));\n"
    "                    l[h] = __fadd_rn(__fadd_rn(l[h], af_lo(pk)), af_hi(pk));\n"
    "                    pa[nt / 2][h + 2 * (nt % 2)] = pk;\n"
    "                }\n"
    "#pragma unroll\n"
    "            for (int h = 0; h < 2; h++) {\n"
    "                l[h] = __fadd_rn(l[h], __shfl_xor_sync(0xffffffffu, l[h], 1));\n"
    "                l[h] = __fadd_rn(l[h], __shfl_xor_sync(0xffffffffu, l[h], 2));\n"
    "            }\n"
    "            /* which of this thread's vectors see this split, and their rescale factors */\n"
    "            bool in[2];\n"
    "            float Mn[2], c1[2], c2[2];\n"
    "#pragma unroll\n"
    "            for (int h = 0; h < 2; h++) {\n"
    "                in[h] = vp[h] >= j0;\n"
    "                af_rescale(M[h], m[h], Mn[h], c1[h], c2[h]);\n"
    "            }\n"
    "            /* a = P.V per n8 tile of d, keys in increasing k16 steps from 0; then folded or stored */\n"
    "#pragma unroll\n"
    "            for (int dt = 0; dt < AF_DT; dt++) {\n"
    "                float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};\n"
    "                const unsigned short *vr_ = vt + (dt * 8 + g) * AF_VS + 2 * q;\n"
    "#pragma unroll\n"
    "                for (int kk = 0; kk < AF_PK; kk++)\n"
    "                    di_mma_16816(a, pa[kk], *(const unsigned *)(vr_ + kk * 16), *(const unsigned *)(vr_ + kk * 16 + 8));\n"
    "#pragma unroll\n"
    "                for (int e = 0; e < 4; e++) {\n"
    "                    const int h = e >> 1;\n"
    "                    const float ae = __fadd_rn(a[e], 0.0f);\n"
    "                    if (!in[h]) continue;\n"
    "                    if (split_mode) {\n"
    "                        const long d = dt * 8 + 2 * q + (e & 1);\n"
    "                        ws[((vr[h] * NH + vh[h]) * nsmax + sp) * AF_WSR + d] = ae;\n"
    "                    } else {\n"
    "                        acc[dt][e] = sp == 0 ? ae : af_fold(acc[dt][e], c1[h], ae, c2[h]);\n"
    "                    }\n"
    "                }\n"
    "            }\n"
    "#pragma unroll\n"
    "            for (int h = 0; h < 2; h++) {\n"
    "                if (!in[h]) continue;\n"
    "                if (split_mode) {\n"
    "                    if (q == 0) {\n"
    "                        float *w = ws + ((vr[h] * NH + vh[h]) * nsmax + sp) * AF_WSR + HD;\n"
    "                        w[0] = m[h];\n"
    "                        w[1] = l[h];\n"
    "                    }\n"
    "                } else {\n"
    "                    L[h] = sp == 0 ? l[h] : af_fold(L[h], c1[h], l[h], c2[h]);\n"
    "                    M[h] = sp == 0 ? m[h] : Mn[h];\n"
    "                }\n"
    "            }\n"
    "        }\n"
    "        if (split_mode) continue;\n"
    "#pragma unroll\n"
    "        for (int dt = 0; dt < AF_DT; dt++)\n"
    "#pragma unroll\n"
    "            for (int e = 0; e < 4; e++) {\n"
    "                const int h = e >> 1;\n"
    "                if (vp[h] < 0) continue;\n"
    "                out_[(vr[h] * NH + vh[h]) * HD + dt * 8 + 2 * q + (e & 1)] = AF_OUT(__fdiv_rn(acc[dt][e], L[h]));\n"
    "            }\n"
    "    }\n";

/* Phase 2 (split mode): one block per (head, row); thread d folds column d over the row's
 * splits in order, with the same functions as phase 1's fold mode. */
static const char phase2_body[] =
    "    if (!split_mode) return;\n"
    "    (void)kc_; (void)vc_; (void)qkv_; (void)seq_; (void)btab_; (void)rows_per_warp;\n"
    "    const long h = blockIdx.x, r = blockIdx.y;\n"
    "    const long nsmax = (maxb * KVB + SPLIT - 1) / SPLIT, ns = pos_[r] / SPLIT + 1;\n"
    "    const float *w = ws + (r * NH + h) * nsmax * AF_WSR;\n"
    "    for (long d = threadIdx.x; d < HD; d += blockDim.x) {\n"
    "        float M = w[HD], L = w[HD + 1], acc = w[d];\n"
    "        for (long sp = 1; sp < ns; sp++) {\n"
    "            const float *ws_ = w + sp * AF_WSR;\n"
    "            float Mn, c1, c2;\n"
    "            af_rescale(M, ws_[HD], Mn, c1, c2);\n"
    "            acc = af_fold(acc, c1, ws_[d], c2);\n"
    "            L = af_fold(L, c1, ws_[HD + 1], c2);\n"
    "            M = Mn;\n"
    "        }\n"
    "        out_[(r * NH + h) * HD + d] = AF_OUT(__fdiv_rn(acc, L));\n"
    "    }\n";

static void emit_params(di_str *o, const di_spec *s, const di_specialization *p)
{
    di_emit_params(o, s, p);
    di_str_puts(o, ", float *ws, long rows_per_warp, long split_mode");
}

static const char *const needed_args[] = {"out", "qkv", "kc", "vc", "pos", "seq", "btab"};

static int af_emit(di_str *o, const di_spec *s, const di_specialization *p, const di_target *t, const char *name,
                   di_err *err)
{
    if (!af_applies(s, p, t))
        return di_fail(err, DI_ESPEC, "spec %s: not a fast-profile attention of a supported shape", s->name);
    for (size_t i = 0; i < sizeof needed_args / sizeof *needed_args; i++)
        if (di_spec_arg(s, needed_args[i]) < 0)
            return di_fail(err, DI_ESPEC, "spec %s: the fast attention needs an argument named %s", s->name,
                           needed_args[i]);
    if (!s->sizes[0] || strcmp(s->sizes[0], "rows") || !s->sizes[1] || strcmp(s->sizes[1], "maxb"))
        return di_fail(err, DI_ESPEC, "spec %s: the fast attention needs sizes (rows, maxb)", s->name);
    di_att_schedule c = di_att_schedule_of(p, t);
    /* log2(e) / sqrt(HD), as a hex literal so that the constant is the same bits everywhere */
    double scale = 1.4426950408889634 / sqrt((double)di_spec_dim(s, p, "HD"));
    int oi = di_spec_arg(s, "out");
    di_str_printf(o, "/* fast attention: tensor cores over the fixed KV splits (codegen/attention_fast.c) */\n"
                     "#define AF_SCALE %af  /* log2(e) / sqrt(HD) */\n"
                     "#define AF_OUT(v) %s\n",
                  (double)(float)scale, p->dtypes[oi] == DI_BF16 ? "di_f32_to_bf16(v)  /* bf16 out: nearest even */" : "(v)");
    di_str_puts(o, di_cuda_mma_helpers);
    di_str_puts(o, device_helpers);
    emit_load_split(o, kv_dtype(s, p) == DI_BF16 ? &load_bf16 : &load_f32);
    di_str_printf(o, "\n/* phase 1: per-split results (split mode) or the whole fold (fold mode) */\n"
                     "extern \"C\" __global__ void __launch_bounds__(%d) %s(",
                  c.warps * 32, name);
    emit_params(o, s, p);
    di_str_puts(o, DI_CUDA_ENTRY_OPEN);
    di_str_puts(o, phase1_body);
    di_str_printf(o, "}\n\n/* phase 2: the per-split results folded in split order */\n"
                     "extern \"C\" __global__ void __launch_bounds__(%d) %s_merge(",
                  c.merge_threads, name);
    emit_params(o, s, p);
    di_str_puts(o, DI_CUDA_ENTRY_OPEN);
    di_str_puts(o, phase2_body);
    di_str_puts(o, "}\n");
    return DI_OK;
}

/* both phases: the spec's parameters, then the workspace, rows per warp and the mode */
static int af_entries(const di_spec *s, const di_specialization *p, const di_target *t, di_entry *out, di_err *err)
{
    (void)err;
    di_kernel_name(s, p, t, out[0].name, sizeof out[0].name);
    snprintf(out[1].name, sizeof out[1].name, "%.240s_merge", out[0].name);
    for (int i = 0; i < 2; i++) {
        di_entry_spec_params(s, &out[i]);
        out[i].params[out[i].nparams++] = DI_P_PTR;
        out[i].params[out[i].nparams++] = DI_P_LONG;
        out[i].params[out[i].nparams++] = DI_P_LONG;
    }
    return 2;
}

const di_lowering di_lowering_attention_fast = {
    .name = "attention_fast", .applies = af_applies, .emit = af_emit, .entries = af_entries, .plan = af_plan,
};
