/* Dequantization of ggml's block formats (model/quant.h). Each function follows the element
 * order and the float32 operations of gguf-py's gguf.quants.dequantize_blocks, one rounding per
 * operation, in the same order: e.g. Q4_K is (d * sc) * q - (dmin * m), never a fused or
 * reassociated form (the build's -ffp-contract=off keeps the compiler from fusing). The block
 * layouts are ggml's (ggml-common.h); tests/data/make_quant_ref.py made the reference blocks. */
#include "model/quant.h"
#include <pthread.h>
#include <stddef.h>
#include <string.h>

enum { QK_K = 256 };

static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static float f32_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* IEEE binary16 to binary32, exact for every input (subnormals, infinities, NaN payloads), as
 * numpy's float16 -> float32 conversion. */
static float half_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023;
    if (exp == 31) return f32_bits(sign | 0x7f800000u | man << 13);
    if (exp != 0) return f32_bits(sign | (exp - 15 + 127) << 23 | man << 13);
    if (man == 0) return f32_bits(sign);
    int shift = 0; /* subnormal: shift the leading 1 up to the implicit bit */
    while (!(man & 1024)) {
        man <<= 1;
        shift++;
    }
    return f32_bits(sign | (uint32_t)(127 - 14 - shift) << 23 | (man & 1023) << 13);
}

/* f's binary16 bits when f is one (every f16 value is an f32 one), else false. */
bool di_f16_exact(float f, uint16_t *h)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    uint32_t sign = b >> 31 << 15, exp = (b >> 23) & 255, man = b & 0x7fffffu;
    uint16_t c;
    if (exp == 255) return false;
    if (exp == 0 && man == 0) c = (uint16_t)sign;
    else if (exp >= 113 && exp <= 142 && !(man & 8191)) c = (uint16_t)(sign | (exp - 112) << 10 | man >> 13);
    else if (exp >= 103 && exp < 113) {   /* an f16 subnormal: (1.man) 2^(exp - 127) = k 2^-24, k < 1024 */
        uint32_t full = man | 0x800000u, shift = 126 - exp;   /* k = full 2^(exp - 150 + 24) */
        if (full & ((1u << shift) - 1)) return false;
        c = (uint16_t)(sign | full >> shift);
    } else return false;
    *h = c;
    return true;
}

/* ---- plain floats ------------------------------------------------------------------------ */

static void deq_f32(const uint8_t *p, uint64_t n, float *out) { memcpy(out, p, (size_t)n * 4); }

static void deq_f16(const uint8_t *p, uint64_t n, float *out)
{
    for (uint64_t i = 0; i < n; i++) out[i] = half_to_f32(rd16(p + 2 * i));
}

static void deq_bf16(const uint8_t *p, uint64_t n, float *out)
{
    for (uint64_t i = 0; i < n; i++) out[i] = f32_bits((uint32_t)rd16(p + 2 * i) << 16);
}

/* ---- 32-element blocks ------------------------------------------------------------------- */

/* Nibble j of a 32-element block: elements 0..15 are the low nibbles of qs[0..15], 16..31 the
 * high nibbles (Q4_0, Q4_1, Q5_*, IQ4_NL). */
static int nibble32(const uint8_t *qs, int j) { return j < 16 ? qs[j] & 15 : qs[j - 16] >> 4; }

/* Q4_0: f16 d, 16 bytes of nibbles; d * (q - 8) */
static void deq_q4_0(const uint8_t *p, uint64_t nb, float *out)
{
    for (uint64_t b = 0; b < nb; b++, p += 18, out += 32) {
        float d = half_to_f32(rd16(p));
        for (int j = 0; j < 32; j++) out[j] = d * (float)(nibble32(p + 2, j) - 8);
    }
}

/* Q4_1: f16 d, f16 m, nibbles; d * q + m */
static void deq_q4_1(const uint8_t *p, uint64_t nb, float *out)
{
    for (uint64_t b = 0; b < nb; b++, p += 20, out += 32) {
        float d = half_to_f32(rd16(p)), m = half_to_f32(rd16(p + 2));
        for (int j = 0; j < 32; j++) out[j] = d * (float)nibble32(p + 4, j) + m;
    }
}

/* Q5_0: f16 d, u32 of fifth bits (bit j for element j), nibbles; d * (q - 16) */
static void deq_q5_0(const uint8_t *p, uint64_t nb, float *out)
{
    for (uint64_t b = 0; b < nb; b++, p += 22, out += 32) {
        float d = half_to_f32(rd16(p));
        uint32_t qh = rd32(p + 2);
        for (int j = 0; j < 32; j++) out[j] = d * (float)((nibble32(p + 6, j) | (int)((qh >> j) & 1) << 4) - 16);
    }
}

/* Q5_1: f16 d, f16 m, u32 of fifth bits, nibbles; d * q + m */
static void deq_q5_1(const uint8_t *p, uint64_t nb, float *out)
{
    for (uint64_t b = 0; b < nb; b++, p += 24, out += 32) {
        float d = half_to_f32(rd16(p)), m = half_to_f32(rd16(p + 2));
        uint32_t qh = rd32(p + 4);
        for (int j = 0; j < 32; j++) out[j] = d * (float)(nibble32(p + 8, j) | (int)((qh >> j) & 1) << 4) + m;
    }
}

/* Q8_0: f16 d, 32 int8; q * d */
static void deq_q8_0(const uint8_t *p, uint64_t nb, float *out)
{
    for (uint64_t b = 0; b < nb; b++, p += 34, out += 32) {
        float d = half_to_f32(rd16(p));
        for (int j = 0; j < 32; j++) out[j] = (float)(int8_t)p[2 + j] * d;
    }
}

/* The non-linear 4-bit grid of IQ4_NL and IQ4_XS. */
static const int8_t iq4_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* IQ4_NL: f16 d, nibbles as Q4_0 indexing the grid; d * grid[q] */
static void deq_iq4_nl(const uint8_t *p, uint64_t nb, float *out)
{
    for (uint64_t b = 0; b < nb; b++, p += 18, out += 32) {
        float d = half_to_f32(rd16(p));
        for (int j = 0; j < 32; j++) out[j] = d * (float)iq4_values[nibble32(p + 2, j)];
    }
}

/* ---- 256-element super-blocks (K-quants) ------------------------------------------------ */

/* Q2_K: scales[16] (low nibble scale, high nibble min), qs[64], f16 d, f16 dmin. Element
 * e = 128 j + 32 s + l holds bits 2s..2s+1 of qs[32 j + l]; its sub-block is e / 16.
 * value (d * sc) * q - (dmin * m) */
static void deq_q2_k(const uint8_t *p, uint64_t nb, float *out)
{
    for (uint64_t b = 0; b < nb; b++, p += 84, out += QK_K) {
        const uint8_t *sc = p, *qs = p + 16;
        float d = half_to_f32(rd16(p + 80)), dmin = half_to_f32(rd16(p + 82));
        for (int e = 0; e < QK_K; e++) {
            int j = e / 128, s = e / 32 % 4, l = e % 32;
            float dl = d * (float)(sc[e / 16] & 15), ml = dmin * (float)(sc[e / 16] >> 4);
            out[e] = dl * (float)((qs[32 * j + l] >> (2 * s)) & 3) - ml;
        }
    }
}

/* Q3_K: hmask[32], qs[64], scales[12] (16 six-bit scales, offset 32), f16 d. Low two bits as
 * Q2_K; the high bit of element e is bit e / 32 of hmask[e % 32], and subtracts 4 when clear.
 * value (d * (sc - 32)) * q */
static int q3_k_scale(const uint8_t *s, int i)
{
    int lo = i < 8 ? s[i] & 15 : s[i - 8] >> 4;
    int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    return (int)(int8_t)(uint8_t)(lo | hi << 4) - 32;
}

static void deq_q3_k(const uint8_t *p, uint64_t nb, float *out)
{
    for (uint64_t b = 0; b < nb; b++, p += 110, out += QK_K) {
        const uint8_t *hm = p, *qs = p + 32, *sc = p + 96;
        float d = half_to_f32(rd16(p + 108));
        for (int e = 0; e < QK_K; e++) {
            int j = e / 128, s = e / 32 % 4, l = e % 32;
            int q = ((qs[32 * j + l] >> (2 * s)) & 3) - (((hm[l] >> (e / 32)) & 1) ? 0 : 4);
            float dl = d * (float)q3_k_scale(sc, e / 16);
            out[e] = dl * (float)q;
        }
    }
}

/* The 6-bit scale and min of sub-block i (0..7) from Q4_K/Q5_K's 12 packed bytes. */
static void k_scale_min(const uint8_t *s, int i, int *sc, int *m)
{
    if (i < 4) {
        *sc = s[i] & 63;
        *m = s[i + 4] & 63;
    } else {
        *sc = (s[i + 4] & 15) | ((s[i - 4] >> 2) & 0x30);
        *m = (s[i + 4] >> 4) | ((s[i] >> 2) & 0x30);
    }
}

/* Q4_K: f16 d, f16 dmin, scales[12], qs[128]. Element e = 64 j + 32 s + l is nibble s of
 * qs[32 j + l]; sub-block e / 32. value (d * sc) * q - (dmin * m) */
static void deq_q4_k(const uint8_t *p, uint64_t nb, float *out)
{
    for (uint64_t b = 0; b < nb; b++, p += 144, out += QK_K) {
        float d = half_to_f32(rd16(p)), dmin = half_to_f32(rd16(p + 2));
        const uint8_t *scales = p + 4, *qs = p + 16;
        for (int sb = 0; sb < 8; sb++) {
            int sc, m;
            k_scale_min(scales, sb, &sc, &m);
            float dl = d * (float)sc, ml = dmin * (float)m;
            for (int l = 0; l < 32; l++) out[32 * sb + l] = dl * (float)((qs[32 * (sb / 2) + l] >> (4 * (sb % 2))) & 15) - ml;
        }
    }
}

/* Q5_K: f16 d, f16 dmin, scales[12], qh[32], qs[128]. Low nibble as Q4_K; the fifth bit of
 * element e is bit e / 32 of qh[e % 32]. value (d * sc) * q - (dmin * m) */
static void deq_q5_k(const uint8_t *p, uint64_t nb, float *out)
{
    for (uint64_t b = 0; b < nb; b++, p += 176, out += QK_K) {
        float d = half_to_f32(rd16(p)), dmin = half_to_f32(rd16(p + 2));
        const uint8_t *scales = p + 4, *qh = p + 16, *qs = p + 48;
        for (int sb = 0; sb < 8; sb++) {
            int sc, m;
            k_scale_min(scales, sb, &sc, &m);
            float dl = d * (float)sc, ml = dmin * (float)m;
            for (int l = 0; l < 32; l++) {
                int q = ((qs[32 * (sb / 2) + l] >> (4 * (sb % 2))) & 15) | ((qh[l] >> sb) & 1) << 4;
                out[32 * sb + l] = dl * (float)q - ml;
            }
        }
    }
}

/* Q6_K: ql[128], qh[64], scales[16] (int8), f16 d. Element e = 128 j + 64 s + l (l < 64) takes
 * nibble s of ql[64 j + l]; element e = 128 j + 32 t + l (l < 32) takes bits 2t..2t+1 of
 * qh[32 j + l] as its high two bits. value (d * sc) * (q - 32), sub-block e / 16. */
static void deq_q6_k(const uint8_t *p, uint64_t nb, float *out)
{
    for (uint64_t b = 0; b < nb; b++, p += 210, out += QK_K) {
        const uint8_t *ql = p, *qh = p + 128;
        const int8_t *sc = (const int8_t *)(p + 192);
        float d = half_to_f32(rd16(p + 208));
        for (int e = 0; e < QK_K; e++) {
            int j = e / 128, r = e % 128;
            int lo = (ql[64 * j + r % 64] >> (4 * (r / 64))) & 15;
            int hi = (qh[32 * j + r % 32] >> (2 * (r / 32))) & 3;
            float dl = d * (float)sc[e / 16];
            out[e] = dl * (float)((lo | hi << 4) - 32);
        }
    }
}

/* IQ4_XS: f16 d, u16 scales_h (2 bits per sub-block), scales_l[4] (a nibble per sub-block),
 * qs[128]. Element 32 sb + 16 s + l is nibble s of qs[16 sb + l], indexing the grid.
 * value (d * (sc - 32)) * grid[q] */
static void deq_iq4_xs(const uint8_t *p, uint64_t nb, float *out)
{
    for (uint64_t b = 0; b < nb; b++, p += 136, out += QK_K) {
        float d = half_to_f32(rd16(p));
        uint16_t sh = rd16(p + 2);
        const uint8_t *sl = p + 4, *qs = p + 8;
        for (int sb = 0; sb < 8; sb++) {
            int lo = (sl[sb / 2] >> (4 * (sb % 2))) & 15, hi = (sh >> (2 * sb)) & 3;
            float dl = d * (float)((int)(int8_t)(uint8_t)(lo | hi << 4) - 32);
            for (int k = 0; k < 32; k++) {
                int q = (qs[16 * sb + k % 16] >> (4 * (k / 16))) & 15;
                out[32 * sb + k] = dl * (float)iq4_values[q];
            }
        }
    }
}

/* ---- the same values as codes ------------------------------------------------------------
 *
 * Group g (32 elements) of a block as value = d * code + m, two f32 roundings, equal to the
 * dequantizer's value element by element: where the dequantizer computes one product (d * q)
 * it is exact (an f16 or 17-bit scale times a code of at most 8 bits fits f32's 24 bits), so
 * adding m = -0.0f, or -ml where the dequantizer subtracts ml, repeats its rounding. Q4_0 and
 * Q5_0 differ in one place: d * (q - 8) is -0.0f where d * q + (-8 d) is +0.0f; a matmul chain
 * that starts at +0.0f sums both alike (model/pack.c compares weights with that in mind).
 * Q6_K, Q2_K and Q3_K scale 16-element halves differently and have no such form. */
static int codes_q4_0(const uint8_t *p, int g, di_codes32 *c)
{
    (void)g;
    c->d = half_to_f32(rd16(p));
    c->m = -8.0f * c->d;
    for (int j = 0; j < 32; j++) c->code[j] = nibble32(p + 2, j);
    return 4;
}

static int codes_q4_1(const uint8_t *p, int g, di_codes32 *c)
{
    (void)g;
    c->d = half_to_f32(rd16(p));
    c->m = half_to_f32(rd16(p + 2));
    for (int j = 0; j < 32; j++) c->code[j] = nibble32(p + 4, j);
    return 4;
}

static int codes_q5_0(const uint8_t *p, int g, di_codes32 *c)
{
    (void)g;
    uint32_t qh = rd32(p + 2);
    c->d = half_to_f32(rd16(p));
    c->m = -0.0f;
    for (int j = 0; j < 32; j++) c->code[j] = (nibble32(p + 6, j) | (int)((qh >> j) & 1) << 4) - 16;
    return 8;
}

static int codes_q5_1(const uint8_t *p, int g, di_codes32 *c)
{
    (void)g;
    uint32_t qh = rd32(p + 4);
    c->d = half_to_f32(rd16(p));
    c->m = half_to_f32(rd16(p + 2));
    for (int j = 0; j < 32; j++) c->code[j] = nibble32(p + 8, j) | (int)((qh >> j) & 1) << 4;
    return 8;
}

static int codes_q8_0(const uint8_t *p, int g, di_codes32 *c)
{
    (void)g;
    c->d = half_to_f32(rd16(p));
    c->m = -0.0f;
    for (int j = 0; j < 32; j++) c->code[j] = (int8_t)p[2 + j];
    return 8;
}

static int codes_iq4_nl(const uint8_t *p, int g, di_codes32 *c)
{
    (void)g;
    c->d = half_to_f32(rd16(p));
    c->m = -0.0f;
    for (int j = 0; j < 32; j++) c->code[j] = iq4_values[nibble32(p + 2, j)];
    return 8;
}

/* Q4_K and Q5_K: sub-block g is (d * sc) * q - (dmin * m); the fifth bit for Q5_K */
static int codes_qk(const uint8_t *p, int g, di_codes32 *c, bool five)
{
    int sc, mn;
    k_scale_min(p + 4, g, &sc, &mn);
    c->d = half_to_f32(rd16(p)) * (float)sc;
    c->m = -(half_to_f32(rd16(p + 2)) * (float)mn);
    const uint8_t *qs = p + (five ? 48 : 16), *qh = p + 16;
    for (int l = 0; l < 32; l++)
        c->code[l] = ((qs[32 * (g / 2) + l] >> (4 * (g % 2))) & 15) | (five ? ((qh[l] >> g) & 1) << 4 : 0);
    return five ? 8 : 4;
}

static int codes_q4_k(const uint8_t *p, int g, di_codes32 *c) { return codes_qk(p, g, c, false); }
static int codes_q5_k(const uint8_t *p, int g, di_codes32 *c) { return codes_qk(p, g, c, true); }

int di_quant_codes32(int type, const uint8_t *block, int group, di_codes32 *out)
{
    switch (type) {
    case DI_GGML_Q4_0: return codes_q4_0(block, group, out);
    case DI_GGML_Q4_1: return codes_q4_1(block, group, out);
    case DI_GGML_Q5_0: return codes_q5_0(block, group, out);
    case DI_GGML_Q5_1: return codes_q5_1(block, group, out);
    case DI_GGML_Q8_0: return codes_q8_0(block, group, out);
    case DI_GGML_IQ4_NL: return codes_iq4_nl(block, group, out);
    case DI_GGML_Q4_K: return codes_q4_k(block, group, out);
    case DI_GGML_Q5_K: return codes_q5_k(block, group, out);
    default: return 0;
    }
}

int di_quant_code_bits(int type)
{
    static const uint8_t zero[292];
    di_codes32 c;
    return di_quant_codes32(type, zero, 0, &c);
}

float di_f16_to_f32(uint16_t h) { return half_to_f32(h); }

uint16_t di_bf16_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);   /* NaN stays NaN, quiet */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);                  /* to nearest, ties to even */
}

/* ---- the table --------------------------------------------------------------------------- */

static const di_quant_type types[] = {
#define DI_X(name, id, be, bb, fn) {#name, id, be, bb, fn},
    DI_GGML_TYPES(DI_X)
#undef DI_X
};

const di_quant_type *di_quant_type_of(int id)
{
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (types[i].id == id) return &types[i];
    return NULL;
}

const char *di_ggml_type_name(int id)
{
    const di_quant_type *q = di_quant_type_of(id);
    return q ? q->name : "unknown";
}

bool di_ggml_type_supported(int id)
{
    const di_quant_type *q = di_quant_type_of(id);
    return q && q->dequant;
}

static char supported[512];

/* Built once from the table (every name is short: 512 bytes hold them all). */
static void build_supported(void)
{
    size_t n = 0;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        if (!types[i].dequant) continue;
        size_t k = strlen(types[i].name);
        if (n + k + 3 >= sizeof supported) break;
        if (n) { memcpy(supported + n, ", ", 2); n += 2; }
        memcpy(supported + n, types[i].name, k);
        n += k;
    }
    supported[n] = 0;
}

const char *di_ggml_supported_list(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT; /* the loader's threads may all fail at once */
    pthread_once(&once, build_supported);
    return supported;
}
