/* Packed weights (model/pack.h, dsl/dsl.h's DI_Q4X8 and DI_Q8X8): every code type packs, and
 * each packed weight decodes to the bf16 of its dequantized value (checked here against the
 * dequantizer and an independent rounding, not against pack.c's own check); a weight that
 * would decode otherwise keeps the matrix bf16; the generated matmul on packed weights gives
 * the bits of the bf16 matmul at every row count of both C paths, under libtcc and cc; and a
 * packed model's logits equal the bf16 model's, bit for bit (models pack under cc only). */
#include "tests/helpers.h"
#include "tests/gguf_blob.h"
#include "tests/model_fixture.h"
#include "model/pack.h"
#include "model/quant.h"
#include "runtime/cc.h"
#include "codegen/lowering.h"

/* f16 bits of a sane scale: random sign, 2^-10 .. 2^5, random mantissa */
static uint16_t rand_f16(uint64_t *s)
{
    uint64_t r = th_next(s);
    return (uint16_t)((r & 1) << 15 | (5 + r / 2 % 16) << 10 | (r >> 8 & 1023));
}

/* A [k, n] tensor of GGUF type `type` with random codes and sane scales. */
static uint8_t *rand_blocks(int type, long k, long n, uint64_t seed, size_t *bytes)
{
    const di_quant_type *q = di_quant_type_of(type);
    size_t nb = (size_t)(k / q->block_elems) * (size_t)n;
    *bytes = nb * q->block_bytes;
    uint8_t *p = malloc(*bytes);
    for (size_t i = 0; i < *bytes; i++) p[i] = (uint8_t)th_next(&seed);
    for (size_t b = 0; b < nb; b++) {
        uint8_t *blk = p + b * q->block_bytes;
        uint16_t d = rand_f16(&seed), m = rand_f16(&seed);
        memcpy(blk, &d, 2);   /* every code type leads with d */
        bool has_m = type == DI_GGML_Q4_1 || type == DI_GGML_Q5_1 || type == DI_GGML_Q4_K || type == DI_GGML_Q5_K;
        if (has_m) memcpy(blk + 2, &m, 2);
    }
    return p;
}

typedef struct packed_case {
    di_gguf *g;
    void *blob;
    const di_gguf_tensor *t;
    di_pack_src src;
    uint64_t outs[1];
} packed_case;

static void open_case(packed_case *c, int type, long k, long n, uint64_t seed, const uint8_t *given, size_t given_bytes)
{
    size_t bytes = given_bytes;
    uint8_t *data = given ? (uint8_t *)given : rand_blocks(type, k, n, seed, &bytes);
    gguf_blob b = gb_begin();
    gb_kv_str(&b, "general.architecture", "llama");
    gb_tensor_add(&b, (gb_tensor){.name = "w", .type = (uint32_t)type, .n_dims = 2, .dims = {(uint64_t)k, (uint64_t)n},
                                  .data = data, .nbytes = bytes});
    gb_finish(&b);
    di_err e = {0};
    cr_assert_eq(di_gguf_open_mem(b.p, b.n, "pack.gguf", &c->g, &e), 0, "%s", e.msg);
    c->blob = b.p;
    c->t = di_gguf_tensor_find(c->g, "w");
    c->outs[0] = (uint64_t)n;
    c->src = (di_pack_src){c->g, &c->t, c->outs, 1, (uint64_t)k};
    if (!given) free(data);
}

static void close_case(packed_case *c)
{
    di_gguf_close(c->g);
    free(c->blob);
}

/* the whole matrix packed; *same as di_pack_rows says */
static uint8_t *pack_all(packed_case *c, di_dtype fmt, long k, long n, bool *same)
{
    uint8_t *dst = calloc(1, di_pack_bytes(fmt, n, k));
    di_err e = {0};
    cr_assert_eq(di_pack_rows(&c->src, fmt, 0, (uint64_t)n, dst, same, &e), 0, "%s", e.msg);
    return dst;
}

/* half: every d and m is a binary16 (the half-scale records hold them); the K quants' d is an f16
 * times a 6-bit scale */
static const struct { int type; di_dtype fmt; bool half; } CODE_TYPES[] = {
    {DI_GGML_Q4_0, DI_Q4X8, true},  {DI_GGML_Q4_1, DI_Q4X8, true},   {DI_GGML_Q5_0, DI_Q8X8, true},
    {DI_GGML_Q5_1, DI_Q8X8, true},  {DI_GGML_Q8_0, DI_Q8X8, true},   {DI_GGML_IQ4_NL, DI_Q8X8, true},
    {DI_GGML_Q4_K, DI_Q4X8, false}, {DI_GGML_Q5_K, DI_Q8X8, false},
};
enum { N_CODE_TYPES = sizeof CODE_TYPES / sizeof CODE_TYPES[0] };

Test(pack, every_code_type_decodes_to_its_bf16_conversion)
{
    const long K = 512, N = 21;   /* N: the last record has padding lanes */
    for (int c = 0; c < 2 * N_CODE_TYPES; c++) {
        int type = CODE_TYPES[c / 2].type;
        di_dtype fmt = c % 2 ? di_pack_half(CODE_TYPES[c / 2].fmt) : CODE_TYPES[c / 2].fmt;
        packed_case pc;
        open_case(&pc, type, K, N, 77 + (uint64_t)(c / 2), NULL, 0);
        cr_assert_eq(di_pack_format(&pc.src), CODE_TYPES[c / 2].fmt, "%s packs as %s", di_ggml_type_name(type),
                     di_dtype_name(di_pack_format(&pc.src)));
        bool same;
        uint8_t *p = pack_all(&pc, fmt, K, N, &same);
        if (c % 2 && !CODE_TYPES[c / 2].half) {   /* scales that are no binary16: refused */
            cr_assert(!same, "%s packed as %s", di_ggml_type_name(type), di_dtype_name(fmt));
            free(p);
            close_case(&pc);
            continue;
        }
        cr_assert(same, "%s as %s: pack found a weight that decodes otherwise", di_ggml_type_name(type), di_dtype_name(fmt));
        float *ref = malloc((size_t)(K * N) * sizeof(float));
        di_err e = {0};
        cr_assert_eq(di_gguf_to_f32(pc.g, pc.t, ref, &e), 0, "%s", e.msg);
        size_t rb = di_pack_record_bytes(fmt);
        long zero_signs = 0;
        for (long n = 0; n < (N + 7) / 8 * 8; n++)
            for (long k = 0; k < K; k++) {
                const uint8_t *rec = p + ((size_t)(n / 8) * (size_t)(K / 32) + (size_t)(k / 32)) * rb;
                float w = di_pack_weight(fmt, rec, (int)(n % 8), (int)(k % 32));
                uint32_t got, want = n < N ? (uint32_t)th_bf16(ref[n * K + k]) << 16 : 0;
                memcpy(&got, &w, 4);
                if (got != want && (got | want) == 0x80000000u && type == DI_GGML_Q4_0) { zero_signs++; continue; }
                cr_assert_eq(got, want, "%s: w[%ld][%ld] decodes to 0x%08x, its bf16 is 0x%08x", di_ggml_type_name(type),
                             n, k, got, want);
            }
        /* Q4_0's d * (q - 8) is -0 for a negative d where the pack's d * q - 8 d is +0 (quant.c) */
        if (type != DI_GGML_Q4_0) cr_assert_eq(zero_signs, 0);
        free(ref);
        free(p);
        close_case(&pc);
    }
}

Test(pack, a_weight_that_would_decode_otherwise_keeps_bf16)
{
    /* Q8_0 with an infinite scale: the dequantizer gives +-inf or NaN, the pack's d * q + m NaN or inf
     * and its rounding NaN where the conversion keeps inf */
    const long K = 64, N = 8;
    size_t bytes;
    uint8_t *blocks = rand_blocks(DI_GGML_Q8_0, K, N, 5, &bytes);
    uint16_t inf = 0x7c00;
    memcpy(blocks + 34 * 3, &inf, 2);
    packed_case pc;
    open_case(&pc, DI_GGML_Q8_0, K, N, 0, blocks, bytes);
    bool same = true;
    free(pack_all(&pc, DI_Q8X8, K, N, &same));
    cr_assert(!same, "a matrix with an infinite scale was packed");
    close_case(&pc);
    free(blocks);
    /* types with no code form stay bf16 */
    int plain[] = {DI_GGML_Q6_K, DI_GGML_Q3_K, DI_GGML_Q2_K, DI_GGML_F16, DI_GGML_IQ4_XS};
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        long k = 256;
        const di_quant_type *q = di_quant_type_of(plain[i]);
        size_t nb = (size_t)(k / q->block_elems) * 8 * q->block_bytes;
        uint8_t *z = calloc(1, nb);
        open_case(&pc, plain[i], k, 8, 0, z, nb);
        cr_assert_eq(di_pack_format(&pc.src), DI_BF16, "%s would pack", di_ggml_type_name(plain[i]));
        close_case(&pc);
        free(z);
    }
}

/* ---- the generated matmul on packed weights ------------------------------------------------ */

/* the case's matrix packed (every weight decoding to its conversion) and as its bf16 conversion */
static uint8_t *pack_and_bf16(packed_case *pc, di_dtype fmt, long K, long N, uint16_t **bf16)
{
    bool same;
    uint8_t *p = pack_all(pc, fmt, K, N, &same);
    cr_assert(same);
    float *f = malloc((size_t)(K * N) * sizeof(float));
    *bf16 = malloc((size_t)(K * N) * 2);
    di_err e = {0};
    cr_assert_eq(di_gguf_to_f32(pc->g, pc->t, f, &e), 0, "%s", e.msg);
    for (long i = 0; i < K * N; i++) (*bf16)[i] = di_bf16_of(f[i]);
    free(f);
    return p;
}

/* y from packed w against y from the bf16 matrix, bit for bit; what names the case */
static void expect_same_bits(const float *yp, const float *yb, long rows, long N, const char *what)
{
    for (long i = 0; i < rows * N; i++)
        cr_assert(!memcmp(&yp[i], &yb[i], 4), "%s, %ld rows: y[%ld][%ld] = %a packed, %a bf16", what, rows, i / N, i % N,
                  (double)yp[i], (double)yb[i]);
}

static di_rt *cpu_rt(di_cpu_compiler c)
{
    di_rt_opts o = {.backend = DI_BACKEND_C, .profile = DI_PROFILE_EXACT, .threads = 2, .cpu_compiler = c};
    di_rt *rt = NULL;
    di_err e = {0};
    cr_assert_eq(di_rt_open(&o, &rt, &e), 0, "%s runtime: %s", di_cpu_compiler_name(c), e.msg);
    return rt;
}

static di_kernel *mm_kernel(di_rt *rt, const char *spec, long k, long n, di_dtype w)
{
    di_kernel *kn;
    di_err e = {0};
    di_dim_value dv[] = {{"K", k}, {"N", n}};
    di_arg_dtype wt = {"w", w};
    di_op op = (di_op)(di_spec_find(spec) - di_specs);
    cr_assert_eq(di_rt_op_kernel(rt, op, dv, 2, &wt, 1, &kn, &e), 0, "%s w %s: %s", spec, di_dtype_name(w), e.msg);
    return kn;
}

/* y from the packed and from the bf16 matrix, rows 1..40: the direct path (up to 8 rows at once
 * with cc; every row count where cc has 16 lanes), the tile (9 rows and more with 8 lanes), one
 * and two row blocks, every tail */
static void check_matmul(di_rt *rt, const char *tier, int type, di_dtype fmt, long K, long N)
{
    static const long ROWS[] = {1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 33, 40};
    packed_case pc;
    open_case(&pc, type, K, N, (uint64_t)(K * 31 + N + type), NULL, 0);
    uint16_t *h;
    uint8_t *p = pack_and_bf16(&pc, fmt, K, N, &h);
    di_buf *wp = th_buf(rt, p, di_pack_bytes(fmt, N, K)), *wb = th_buf(rt, h, (size_t)(K * N) * 2);
    const char *specs[] = {"matmul", "matmul_residual"};
    for (int sp = 0; sp < 2; sp++) {
        di_kernel *kp = mm_kernel(rt, specs[sp], K, N, fmt), *kb = mm_kernel(rt, specs[sp], K, N, DI_BF16);
        for (size_t r = 0; r < sizeof ROWS / sizeof ROWS[0]; r++) {
            long rows = ROWS[r], sizes[DI_MAX_SIZES] = {rows};
            float *x = malloc((size_t)(rows * K) * 4), *res = malloc((size_t)(rows * N) * 4);
            float *yp = malloc((size_t)(rows * N) * 4), *yb = malloc((size_t)(rows * N) * 4);
            th_fill(x, (size_t)(rows * K), (uint64_t)rows);
            th_fill(res, (size_t)(rows * N), (uint64_t)rows + 1000);
            di_buf *bx = th_buf(rt, x, (size_t)(rows * K) * 4), *br = th_buf(rt, res, (size_t)(rows * N) * 4);
            di_buf *byp = th_buf(rt, res, (size_t)(rows * N) * 4), *byb = th_buf(rt, res, (size_t)(rows * N) * 4);
            th_launch(rt, kp, (di_val[]){{.buf = byp}, {.buf = bx}, {.buf = wp}, {.buf = br}}, sizes);
            th_launch(rt, kb, (di_val[]){{.buf = byb}, {.buf = bx}, {.buf = wb}, {.buf = br}}, sizes);
            th_read(byp, yp, (size_t)(rows * N) * 4);
            th_read(byb, yb, (size_t)(rows * N) * 4);
            char what[160];
            snprintf(what, sizeof what, "%s, %s %s K %ld N %ld", tier, specs[sp], di_ggml_type_name(type), K, N);
            expect_same_bits(yp, yb, rows, N, what);
            di_buf_free(bx); di_buf_free(br); di_buf_free(byp); di_buf_free(byb);
            free(x); free(res); free(yp); free(yb);
        }
    }
    di_buf_free(wp);
    di_buf_free(wb);
    free(p); free(h);
    close_case(&pc);
}

static void check_tier(di_cpu_compiler c)
{
    di_rt *rt = cpu_rt(c);
    /* K 96: a short last chunk of the 64-long split; N 44: a padded record, two column blocks;
     * N 60: a last block of 28 columns, whose second 16-lane pair of records is half padding */
    static const long SHAPES[][2] = {{96, 44}, {576, 40}, {96, 60}};
    int types[] = {DI_GGML_Q4_1, DI_GGML_Q8_0, DI_GGML_Q4_K, DI_GGML_Q5_0};
    for (size_t s = 0; s < sizeof SHAPES / sizeof SHAPES[0]; s++)
        for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
            long K = SHAPES[s][0];
            if (K % di_quant_type_of(types[t])->block_elems) continue;   /* Q4_K: below */
            di_dtype fmt = di_quant_code_bits(types[t]) == 4 ? DI_Q4X8 : DI_Q8X8;
            check_matmul(rt, di_cpu_compiler_name(c), types[t], fmt, K, SHAPES[s][1]);
        }
    /* Q4_K needs K a multiple of 256 */
    check_matmul(rt, di_cpu_compiler_name(c), DI_GGML_Q4_K, DI_Q4X8, 512, 44);
    di_rt_close(rt);
}

Test(pack, packed_matmul_equals_bf16_matmul_bitwise_libtcc, .timeout = 600) { check_tier(DI_CPU_COMPILER_TCC); }

Test(pack, packed_matmul_equals_bf16_matmul_bitwise_cc, .timeout = 600)
{
    di_err e = {0};
    if (!di_cc_available(&e)) cr_skip_test("%s", e.msg);
    check_tier(DI_CPU_COMPILER_CC);
}

/* The GPU's exact matmul reads the same records (the class lowering through di_pk_at): its
 * outputs equal the CPU's, bitwise, at rows 1..40. In the gpu suite, so scripts/gpu-check runs it. */
Test(gpu, exact_packed_matmul_equals_cpu_bitwise, .timeout = 300)
{
    di_rt *gpu = th_gpu_rt_or_skip(DI_PROFILE_EXACT), *cpu = cpu_rt(DI_CPU_COMPILER_DEFAULT);
    static const long ROWS[] = {1, 3, 8, 9, 33, 40};
    static const struct { int type; di_dtype fmt; long k, n; } CASES[] = {
        {DI_GGML_Q4_1, DI_Q4X8, 576, 44}, {DI_GGML_Q8_0, DI_Q8X8, 96, 40}, {DI_GGML_Q4_K, DI_Q4X8, 512, 37}};
    for (size_t c = 0; c < sizeof CASES / sizeof CASES[0]; c++) {
        long K = CASES[c].k, N = CASES[c].n;
        packed_case pc;
        open_case(&pc, CASES[c].type, K, N, 900 + c, NULL, 0);
        bool same;
        uint8_t *p = pack_all(&pc, CASES[c].fmt, K, N, &same);
        cr_assert(same);
        size_t wb = di_pack_bytes(CASES[c].fmt, N, K);
        di_buf *wc = th_buf(cpu, p, wb), *wg = th_buf(gpu, p, wb);
        di_kernel *kc = mm_kernel(cpu, "matmul_residual", K, N, CASES[c].fmt);
        di_kernel *kg = mm_kernel(gpu, "matmul_residual", K, N, CASES[c].fmt);
        for (size_t r = 0; r < sizeof ROWS / sizeof ROWS[0]; r++) {
            long rows = ROWS[r], sizes[DI_MAX_SIZES] = {rows};
            size_t xb = (size_t)(rows * K) * 4, yb = (size_t)(rows * N) * 4;
            float *x = malloc(xb), *res = malloc(yb), *yc = malloc(yb), *yg = malloc(yb);
            th_fill(x, (size_t)(rows * K), (uint64_t)rows + 7);
            th_fill(res, (size_t)(rows * N), (uint64_t)rows + 70);
            di_buf *xc = th_buf(cpu, x, xb), *xg = th_buf(gpu, x, xb), *rc = th_buf(cpu, res, yb), *rg = th_buf(gpu, res, yb);
            di_buf *oc = th_buf(cpu, res, yb), *og = th_buf(gpu, res, yb);
            th_launch(cpu, kc, (di_val[]){{.buf = oc}, {.buf = xc}, {.buf = wc}, {.buf = rc}}, sizes);
            th_launch(gpu, kg, (di_val[]){{.buf = og}, {.buf = xg}, {.buf = wg}, {.buf = rg}}, sizes);
            th_read(oc, yc, yb);
            th_read(og, yg, yb);
            for (long i = 0; i < rows * N; i++)
                cr_assert(!memcmp(&yc[i], &yg[i], 4), "%s K %ld N %ld, %ld rows: y[%ld][%ld] = %a on the CPU, %a on the GPU",
                          di_ggml_type_name(CASES[c].type), K, N, rows, i / N, i % N, (double)yc[i], (double)yg[i]);
            di_buf_free(xc); di_buf_free(xg); di_buf_free(rc); di_buf_free(rg); di_buf_free(oc); di_buf_free(og);
            free(x); free(res); free(yc); free(yg);
        }
        di_buf_free(wc);
        di_buf_free(wg);
        free(p);
        close_case(&pc);
    }
    di_rt_close(cpu);
    di_rt_close(gpu);
}

/* The fast profile's tensor-core matmul reads the records too (its producer warps decode them
 * into the bf16 tile; at most 32 rows, the few-rows tile decodes them into wgmma's A registers,
 * outputs as M): its outputs equal those of the same kernel on the bf16 matrix, bitwise,
 * at every row count, with f32 x (cast first) and bf16 x, in split (cluster sums against phase
 * 2's) and fused modes, the wide single-split tile (K 96, whose second k tile runs past K), a
 * padded record (N 37, 44). */
static void check_fast_packed(di_rt *gpu, const char *spec, int type, di_dtype fmt, long K, long N, bool x16)
{
    /* 1..32: the few-rows tile (8, 16, 24, 32 rows wide), the rest the large tile */
    static const long ROWS[] = {1, 2, 3, 5, 7, 8, 9, 12, 16, 17, 23, 24, 25, 31, 32, 33, 64, 65, 130, 257};
    packed_case pc;
    open_case(&pc, type, K, N, (uint64_t)(K * 7 + N + type), NULL, 0);
    uint16_t *h;
    uint8_t *p = pack_and_bf16(&pc, fmt, K, N, &h);
    di_err e = {0};
    di_buf *wp = th_buf(gpu, p, di_pack_bytes(fmt, N, K)), *wb = th_buf(gpu, h, (size_t)(K * N) * 2);
    di_op op = (di_op)(di_spec_find(spec) - di_specs);
    di_dim_value dv[] = {{"K", K}, {"N", N}};
    di_kernel *kp, *kb;
    cr_assert_eq(di_rt_op_kernel(gpu, op, dv, 2, (di_arg_dtype[]){{"w", fmt}, {"x", DI_BF16}}, x16 ? 2 : 1, &kp, &e), 0,
                 "%s", e.msg);
    /* the bf16-w reference adds its splits in phase 2 (split_cluster 0), the packed kernel in a
     * cluster where it can: the two sums must agree too */
    di_specialization pb;
    const di_spec *sp = di_spec_find(spec);
    di_spec_defaults(sp, &pb);
    cr_assert_eq(di_spec_set_dim(sp, &pb, "K", K, &e) || di_spec_set_dim(sp, &pb, "N", N, &e) ||
                 (x16 && di_spec_set_dtype(sp, &pb, "x", DI_BF16, &e)), 0, "%s", e.msg);
    pb.profile = DI_PROFILE_FAST;
    pb.mm = *di_mm_schedule_named("wgmma_tma");
    pb.mm.split_cluster = 0;
    kb = th_kernel(gpu, spec, &pb);
    cr_assert_str_eq(di_kernel_lowering(kp), di_kernel_lowering(kb));
    size_t xe = x16 ? 2 : 4;
    for (size_t r = 0; r < sizeof ROWS / sizeof ROWS[0]; r++) {
        long rows = ROWS[r], sizes[DI_MAX_SIZES] = {rows};
        size_t yb = (size_t)(rows * N) * 4;
        float *x = malloc((size_t)(rows * K) * 4), *res = malloc(yb), *yp = malloc(yb), *ybf = malloc(yb);
        th_fill(x, (size_t)(rows * K), (uint64_t)rows + 5);
        th_fill(res, (size_t)(rows * N), (uint64_t)rows + 50);
        if (x16) {
            uint16_t *xh = (uint16_t *)x;   /* in place: element i's bf16 lands before i + 1 is read */
            for (long i = 0; i < rows * K; i++) xh[i] = di_bf16_of(x[i]);
        }
        di_buf *bx = th_buf(gpu, x, (size_t)(rows * K) * xe), *br = th_buf(gpu, res, yb);
        di_buf *op_ = th_buf(gpu, res, yb), *ob = th_buf(gpu, res, yb);
        di_val vp[] = {{.buf = op_}, {.buf = bx}, {.buf = wp}, {.buf = br}}, vb[] = {{.buf = ob}, {.buf = bx}, {.buf = wb}, {.buf = br}};
        th_launch(gpu, kp, vp, sizes);
        th_launch(gpu, kb, vb, sizes);
        th_read(op_, yp, yb);
        th_read(ob, ybf, yb);
        char what[160];
        snprintf(what, sizeof what, "%s %s as %s, K %ld N %ld x %s", spec, di_ggml_type_name(type), di_dtype_name(fmt), K, N,
                 x16 ? "bf16" : "f32");
        expect_same_bits(yp, ybf, rows, N, what);
        di_buf_free(bx); di_buf_free(br); di_buf_free(op_); di_buf_free(ob);
        free(x); free(res); free(yp); free(ybf);
    }
    di_buf_free(wp);
    di_buf_free(wb);
    free(p); free(h);
    close_case(&pc);
}

Test(gpu_fast, packed_w_matmul_equals_bf16_w_bitwise, .timeout = 600)
{
    di_rt *gpu = th_gpu_rt_or_skip(DI_PROFILE_FAST);
    static const struct { int type; di_dtype fmt; long k, n; } CASES[] = {
        {DI_GGML_Q4_1, DI_Q4X8, 576, 44}, {DI_GGML_Q8_0, DI_Q8X8, 96, 40}, {DI_GGML_Q4_K, DI_Q4X8, 512, 37},
        {DI_GGML_Q5_0, DI_Q8X8, 576, 130}, {DI_GGML_Q4_1, DI_Q4X8, 4096, 300}, {DI_GGML_Q4_K, DI_Q4X8, 14336, 72},
        /* binary16 scales (what the fast profile packs where they fit) */
        {DI_GGML_Q4_1, DI_Q4X8H, 576, 44}, {DI_GGML_Q8_0, DI_Q8X8H, 96, 40}, {DI_GGML_Q4_0, DI_Q4X8H, 4096, 300},
        {DI_GGML_Q5_0, DI_Q8X8H, 14336, 72}};
    for (size_t c = 0; c < sizeof CASES / sizeof CASES[0]; c++)
        for (int x16 = 0; x16 < 2; x16++)
            check_fast_packed(gpu, c % 2 ? "matmul" : "matmul_residual", CASES[c].type, CASES[c].fmt, CASES[c].k,
                              CASES[c].n, x16);
    di_rt_close(gpu);
}

/* ---- whole models ------------------------------------------------------------------------- */

/* A prompt's logits from a model loaded with `weights`, and how its matrices are held. */
static float *prompt_logits(const char *path, di_weights weights, int n, di_model_weights *info)
{
    di_rt *rt = cpu_rt(DI_CPU_COMPILER_CC);   /* packing is for cc's kernels (model.h) */
    di_model *m;
    di_err e = {0};
    di_model_opts o = {.max_batch_tokens = n, .ctx = 64, .kv_blocks = 2, .max_seqs = 1, .weights = weights};
    cr_assert_eq(di_model_load(path, rt, &o, &m, &e), 0, "%s: %s", path, e.msg);
    int32_t blocks[] = {0, 1}, ids[64], pos[64], seq[64] = {0}, rows[64];
    cr_assert_eq(di_model_set_blocks(m, 0, blocks, 2, &e), 0, "%s", e.msg);
    int V = di_model_config(m)->vocab;
    for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * 7919 + 13) % V), pos[i] = rows[i] = i;
    float *lg = malloc((size_t)n * V * sizeof(float));
    di_step st = {n, ids, pos, seq, n, rows, NULL, lg, NULL};
    cr_assert_eq(di_model_forward(m, &st, &e), 0, "%s", e.msg);
    *info = di_model_weights_info(m);
    di_model_free(m);
    di_rt_close(rt);
    return lg;
}

static void check_model(const char *path, int min_packed)
{
    di_err ce = {0};
    if (!di_cc_available(&ce)) cr_skip_test("%s", ce.msg);
    const int n = 12;
    di_model_weights pi, bi;
    float *a = prompt_logits(path, DI_WEIGHTS_AUTO, n, &pi), *b = prompt_logits(path, DI_WEIGHTS_BF16, n, &bi);
    cr_assert_geq(pi.packed, min_packed, "%s: %d of %d matrices packed", path, pi.packed, pi.matrices);
    cr_assert_eq(bi.packed, 0);
    cr_assert_lt(pi.bytes, bi.bytes, "packed weights take %zu bytes, bf16 %zu", pi.bytes, bi.bytes);
    di_gguf *g;
    di_err e = {0};
    cr_assert_eq(di_gguf_open(path, &g, &e), 0, "%s", e.msg);
    di_config c;
    cr_assert_eq(di_model_read_config(g, &c, &e), 0, "%s", e.msg);
    di_gguf_close(g);
    long diff = 0;
    for (long i = 0; i < (long)n * c.vocab; i++) diff += memcmp(&a[i], &b[i], 4) != 0;
    cr_assert_eq(diff, 0, "%s: %ld of %ld logits differ between packed and bf16 weights", path, diff, (long)n * c.vocab);
    free(a);
    free(b);
}

Test(pack, smollm2_packed_logits_equal_bf16_bitwise, .timeout = 600)
{
    NEED_MODEL();
    check_model(model_path(), 30 * 4 + 1);   /* Q4_1 layers and the Q8_0 head */
}

Test(pack, gemma3_packed_logits_equal_bf16_bitwise, .timeout = 600)
{
    if (!gemma3_path()) cr_skip_test("DETINFER_GEMMA3 is not set (scripts/test fetches Gemma 3 270M)");
    check_model(gemma3_path(), 1);   /* Q4_K_M: Q4_K and Q8_0 pack, Q6_K stays bf16 */
}
