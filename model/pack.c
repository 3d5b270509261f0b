/* Packing GGUF matrices for the C backend's matmul (model/pack.h). */
#include "model/pack.h"
#include "model/quant.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

di_dtype di_pack_format(const di_pack_src *s)
{
    if (s->in % DI_PACK_BLOCK) return DI_BF16;
    int bits = 0;
    for (int i = 0; i < s->count; i++) {
        int b = di_quant_code_bits(s->ts[i]->type);
        if (!b) return DI_BF16;
        if (b > bits) bits = b;
    }
    return bits == 4 ? DI_Q4X8 : DI_Q8X8;
}

/* Veltkamp's split at 8 bits, as the generated code rounds (dsl/dsl.h) */
static float pk_round(float v)
{
    const float t = v * 65537.0f;
    return t - (t - v);
}

/* d * code + m rounded to bf16 as the generated code's decoders compute it: two roundings
 * (libtcc, AVX2) or one fma (AVX-512: the same value where d * code is exact, as it is for
 * every GGUF scale: an f16, or one times a 6-bit scale, times a code of at most 8 bits), then
 * Veltkamp's split at 8 bits. NaN where the two could disagree, so that the caller's check
 * keeps such a matrix in bf16 rather than trust one of them. */
static float decoded(float d, int code, float m)
{
    const float v = d * (float)code + m;
    return fmaf(d, (float)code, m) == v ? pk_round(v) : NAN;
}

/* where a record's code words start: after d[8] and m[8], f32 or binary16 */
static size_t codes_at(di_dtype fmt) { return di_dtype_half_scales(fmt) ? 32 : 64; }

static float scale_at(di_dtype fmt, const uint8_t *rec, int i)
{
    float v;
    if (!di_dtype_half_scales(fmt)) {
        memcpy(&v, rec + 4 * i, 4);
        return v;
    }
    uint16_t h;   /* binary16, little-endian */
    memcpy(&h, rec + 2 * i, 2);
    return di_f16_to_f32(h);
}

/* d (i = l) or m (i = 8 + l) into a record; false when a half-scale record cannot hold it */
static bool put_scale(di_dtype fmt, uint8_t *rec, int i, float v)
{
    if (!di_dtype_half_scales(fmt)) {
        memcpy(rec + 4 * i, &v, 4);
        return true;
    }
    uint16_t h;
    if (!di_f16_exact(v, &h)) return false;
    memcpy(rec + 2 * i, &h, 2);
    return true;
}

float di_pack_weight(di_dtype fmt, const uint8_t *rec, int l, int j)
{
    float d = scale_at(fmt, rec, l), m = scale_at(fmt, rec, 8 + l);
    uint32_t w;
    int code;
    if (di_pack_code_bits(fmt) == 4) {
        memcpy(&w, rec + codes_at(fmt) + 4 * ((j / 8) * 8 + l), 4);
        code = (int)((w >> (4 * (j % 8))) & 15u);
    } else {
        memcpy(&w, rec + codes_at(fmt) + 4 * ((j / 4) * 8 + l), 4);
        code = (int8_t)(uint8_t)(w >> (8 * (j % 4)));
    }
    return decoded(d, code, m);
}

static void put_code(di_dtype fmt, uint8_t *rec, int l, int j, int code)
{
    uint32_t w;
    bool q4 = di_pack_code_bits(fmt) == 4;
    size_t at = codes_at(fmt) + 4 * (q4 ? (j / 8) * 8 + l : (j / 4) * 8 + l);
    memcpy(&w, rec + at, 4);
    if (q4) w |= (uint32_t)code << (4 * (j % 8));
    else w |= (uint32_t)(uint8_t)(int8_t)code << (8 * (j % 4));
    memcpy(rec + at, &w, 4);
}

bool di_pack_put(di_dtype fmt, uint8_t *rec, int l, const di_codes32 *c)
{
    /* the GPU's few-rows decoder scales d by 2^-4 or 2^-8 (codegen/matmul_fast.c): exact for
     * 0 and |d| >= 2^-100 (every GGUF scale is an f16, at least 2^-24, or that times a 6-bit
     * one); any other d keeps the matrix in bf16 */
    bool ok = c->d == 0.0f || fabsf(c->d) >= 0x1p-100f;
    /* the CPU's AVX-512 decoders take d * 2^-4s (s < 8) and d * 2^-24: exact where these are */
    ok = ok && c->d * 0x1p-28f * 0x1p28f == c->d;
    ok = put_scale(fmt, rec, l, c->d) && put_scale(fmt, rec, 8 + l, c->m) && ok;
    for (int j = 0; j < DI_PACK_BLOCK; j++) put_code(fmt, rec, l, j, c->code[j]);
    return ok;
}

/* The bf16 conversion's value, and the packed one, are the same weight: equal bits, or both
 * zeros. (A zero's sign cannot reach a result: every chain starts at +0.0f, and +0.0f plus a
 * zero of either sign is +0.0f, so x * (+0) and x * (-0) leave every partial sum alike.) */
static bool same_weight(float packed, float ref)
{
    uint32_t a, b = (uint32_t)di_bf16_of(ref) << 16;
    memcpy(&a, &packed, 4);
    return a == b || ((a | b) & 0x7fffffffu) == 0;
}

/* One row: its codes into lane l of its group's records, each weight checked. */
static int pack_row(const di_pack_src *s, di_dtype fmt, const di_gguf_tensor *t, uint64_t r, uint8_t *group,
                    float *ref, bool *same, di_err *err)
{
    const di_quant_type *q = di_quant_type_of(t->type);
    int l = (int)(r % DI_PACK_LANES);
    if (di_gguf_to_f32_range(s->g, t, r * s->in, s->in, ref, err)) return err->code;
    const uint8_t *row = (const uint8_t *)t->data + r * (s->in / q->block_elems) * q->block_bytes;
    size_t rb = di_pack_record_bytes(fmt);
    for (uint64_t b = 0; b < s->in / DI_PACK_BLOCK && *same; b++) {
        uint64_t k = b * DI_PACK_BLOCK;
        di_codes32 c;
        di_quant_codes32(t->type, row + k / q->block_elems * q->block_bytes, (int)(k % q->block_elems / DI_PACK_BLOCK), &c);
        uint8_t *rec = group + b * rb;
        if (!di_pack_put(fmt, rec, l, &c)) *same = false;
        for (int j = 0; j < DI_PACK_BLOCK && *same; j++) *same = same_weight(di_pack_weight(fmt, rec, l, j), ref[k + j]);
    }
    return DI_OK;
}

int di_pack_rows(const di_pack_src *s, di_dtype fmt, uint64_t row0, uint64_t row1, uint8_t *dst, bool *same,
                 di_err *err)
{
    float *ref = malloc(s->in * sizeof(float));
    if (!ref) return di_fail(err, DI_ENOMEM, "out of memory packing %s", s->ts[0]->name);
    size_t group_bytes = (size_t)(s->in / DI_PACK_BLOCK) * di_pack_record_bytes(fmt);
    int rc = DI_OK;
    *same = true;
    uint64_t first = 0;   /* the stacked row where tensor i starts */
    for (int i = 0; i < s->count && !rc && *same; first += s->outs[i], i++)
        for (uint64_t n = first > row0 ? first : row0; n < first + s->outs[i] && n < row1 && !rc && *same; n++)
            rc = pack_row(s, fmt, s->ts[i], n - first, dst + n / DI_PACK_LANES * group_bytes, ref, same, err);
    free(ref);
    return rc;
}
