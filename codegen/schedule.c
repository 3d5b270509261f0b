/* The fast schedules of schedules.def as values: which one a specialization runs on a target,
 * whether a schedule a caller set is one the kernels can run, and the tag that names a
 * non-default schedule in the kernel's name. */
#include "codegen/lowering.h"
#include <stdio.h>
#include <string.h>

typedef struct { const char *name, *target; di_mm_schedule s; } mm_row;
typedef struct { const char *name, *target; di_att_schedule s; } att_row;

_Static_assert(sizeof(di_mm_schedule) == 20 * sizeof(int), "di_mm_schedule must be padding-free ints");
_Static_assert(sizeof(di_att_schedule) == 5 * sizeof(int), "di_att_schedule must be padding-free ints");

static const mm_row mm_rows[] = {
#define FAST_MATMUL(name_, target_, ...) {#name_, target_, {__VA_ARGS__}},
#include "schedules.def"
};
static const att_row att_rows[] = {
#define FAST_ATTENTION(name_, target_, ...) {#name_, target_, {__VA_ARGS__}},
#include "schedules.def"
};

static bool is_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i]) return false;
    return true;
}

/* The row for the target's arch, else the "*" row. Rows of both tables start with their name
 * and target (row_head), so one search serves both. */
typedef struct { const char *name, *target; } row_head;

static size_t default_row(const void *rows, size_t n, size_t stride, const di_target *t)
{
    size_t any = 0;
    for (size_t i = 0; i < n; i++) {
        const row_head *h = (const row_head *)((const char *)rows + i * stride);
        if (!strcmp(h->target, t->arch)) return i;
        if (!strcmp(h->target, "*")) any = i;
    }
    return any;
}

static const mm_row *mm_default(const di_target *t)
{
    return &mm_rows[default_row(mm_rows, sizeof mm_rows / sizeof mm_rows[0], sizeof mm_rows[0], t)];
}

static const att_row *att_default(const di_target *t)
{
    return &att_rows[default_row(att_rows, sizeof att_rows / sizeof att_rows[0], sizeof att_rows[0], t)];
}

di_mm_schedule di_mm_schedule_of(const di_specialization *p, const di_target *t)
{
    return is_zero(&p->mm, sizeof p->mm) ? mm_default(t)->s : p->mm;
}

di_att_schedule di_att_schedule_of(const di_specialization *p, const di_target *t)
{
    return is_zero(&p->att, sizeof p->att) ? att_default(t)->s : p->att;
}

const di_mm_schedule *di_mm_schedule_named(const char *name)
{
    for (size_t i = 0; i < sizeof mm_rows / sizeof mm_rows[0]; i++)
        if (!strcmp(mm_rows[i].name, name)) return &mm_rows[i].s;
    return NULL;
}

static bool pow2(long v) { return v > 0 && (v & (v - 1)) == 0; }

/* The shapes the fast matmul's kernel text is written for. */
static const char *mm_problem(const di_mm_schedule *c)
{
    long threads = (long)c->warps_m * c->warps_n * 32, loaders = c->producers ? c->producers * 32L : threads;
    long smem = (long)c->stages * (c->tm + c->tn) * c->bk * 2;
    if (c->warps_m < 1 || c->warps_n < 1 || threads > 1024) return "warps_m * warps_n * 32 must be 32..1024";
    if (c->producers < 0 || c->producers > 8) return "producers must be 0..8 warps";
    if (c->tm <= 0 || c->tm % (c->warps_m * 16)) return "tm must be a multiple of 16 * warps_m";
    if (c->tn <= 0 || c->tn % (c->warps_n * 16)) return "tn must be a multiple of 16 * warps_n";
    if (c->bk < 16 || c->bk > 128 || !pow2(c->bk)) return "bk must be 16, 32, 64 or 128";
    if (c->stages < 2 || c->stages > 8) return "stages must be 2..8";
    if ((long)c->tm * (c->bk / 8) % loaders || (long)c->tn * (c->bk / 8) % loaders)
        return "tm * bk / 8 and tn * bk / 8 must be multiples of the loading thread count";
    if (c->ks_units < 1 || !pow2(c->ks_min) || !pow2(c->ks_max) || c->ks_min < c->bk || c->ks_max < c->ks_min)
        return "ks_units >= 1, and ks_min <= ks_max powers of two, at least bk";
    if (smem > 227L * 1024) return "stages * (tm + tn) * bk * 2 bytes exceed 227 KiB of shared memory";
    if (c->fuse_min_tiles < 0 || c->fuse_min_rows < 0 || c->group_m < 1)
        return "fuse_min_tiles, fuse_min_rows must be >= 0 and group_m >= 1";
    /* wgmma runs warp-specialized (producer warps); mma.sync has every warp load (v2's block) */
    if (c->wgmma && !c->producers) return "wgmma needs producer warps";
    if (!c->wgmma && c->producers) return "producer warps need the wgmma layout";
    if (c->wgmma && c->stages < 4)
        return "wgmma needs stages >= 4 (two tiles load while one is multiplied and one may still be; "
               "fewer is untested)";
    if (c->wgmma && ((c->tm != 64 && c->tm != 128) || c->warps_m != c->tm / 16 || c->warps_n != 1 || c->bk != 64 ||
                     c->tn > 256))
        return "wgmma needs tm 64 or 128 with warps (tm / 16) x 1 (a warpgroup per 64 rows), bk 64 "
               "(128-byte swizzled rows) and tn <= 256";
    if (c->tma && !c->producers) return "tma loads need producer warps";
    if (c->wide_tn && (c->wide_tn % 16 || c->wide_tn > 256 || c->wide_stages < 4 || c->wide_stages > 8 ||
                       (long)c->wide_stages * (c->tm + c->wide_tn) * c->bk * 2 > 227L * 1024 || !c->tma))
        return "wide_tn must be a multiple of 16 up to 256, with wide_stages 4..8 that fit 227 KiB "
               "(it applies to TMA-loading kernels only)";
    if (c->few_rows && (c->few_rows % 8 || c->few_rows > 32 || c->few_stages < 2 || c->few_stages > 8 || !c->tma ||
                        !c->wgmma || c->bk != 64))
        return "few_rows must be 8, 16, 24 or 32, with few_stages 2..8, on the wgmma TMA schedule (bk 64)";
    if (c->split_cluster && (c->split_cluster < 2 || c->split_cluster > 8 || !c->wgmma))
        return "split_cluster must be 0 or 2..8 (a portable cluster), on the wgmma schedule (sm_90)";
    return NULL;
}

static const char *att_problem(const di_att_schedule *c)
{
    if (c->warps < 1 || c->warps > 16) return "warps must be 1..16";
    if (c->merge_threads < 32 || c->merge_threads > 1024 || c->merge_threads % 32)
        return "merge_threads must be a multiple of 32 in 32..1024";
    if (c->split_max_rows < 0 || c->workspace_cap_mib < 0) return "split_max_rows and workspace_cap_mib must be >= 0";
    if (c->mode < 0 || c->mode > 2) return "mode must be 0 (per launch), 1 (fold) or 2 (split)";
    return NULL;
}

int di_schedules_check(const di_spec *s, const di_specialization *p, di_err *err)
{
    if (!is_zero(&p->mm, sizeof p->mm)) {
        if (s->cls != DI_MATMUL || p->profile != DI_PROFILE_FAST)
            return di_fail(err, DI_ESPEC, "spec %s: a matmul schedule belongs to fast-profile matmuls", s->name);
        const char *why = mm_problem(&p->mm);
        const di_mm_schedule *c = &p->mm;
        if (why)
            return di_fail(err, DI_ESPEC, "spec %s: fast matmul schedule (tm %d tn %d bk %d stages %d warps %dx%d): %s",
                           s->name, c->tm, c->tn, c->bk, c->stages, c->warps_m, c->warps_n, why);
    }
    if (!is_zero(&p->att, sizeof p->att)) {
        if (s->cls != DI_ATTENTION || p->profile == DI_PROFILE_EXACT)
            return di_fail(err, DI_ESPEC, "spec %s: an attention schedule belongs to fast or vendor attention", s->name);
        const char *why = att_problem(&p->att);
        if (why) return di_fail(err, DI_ESPEC, "spec %s: fast attention schedule: %s", s->name, why);
    }
    return DI_OK;
}

/* FNV-1a over the schedule's bytes (the structs are ints only: no padding). */
static unsigned long fnv(const void *p, size_t n)
{
    const unsigned char *b = p;
    unsigned long h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = ((h ^ b[i]) * 16777619u) & 0xffffffffu;
    return h ? h : 1;
}

unsigned long di_schedule_tag(const di_spec *s, const di_specialization *p, const di_target *t)
{
    if (s->cls == DI_MATMUL && !is_zero(&p->mm, sizeof p->mm)) {
        di_mm_schedule d = mm_default(t)->s;
        if (memcmp(&d, &p->mm, sizeof d)) return fnv(&p->mm, sizeof p->mm);
    }
    if (s->cls == DI_ATTENTION && !is_zero(&p->att, sizeof p->att)) {
        di_att_schedule d = att_default(t)->s;
        if (memcmp(&d, &p->att, sizeof d)) return fnv(&p->att, sizeof p->att);
    }
    return 0;
}
