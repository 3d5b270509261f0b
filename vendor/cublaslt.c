/* cuBLASLt through dlopen; see cublaslt.h. Declarations are taken from CUDA 13's cublasLt.h
 * and library_types.h (values unchanged since CUDA 11): the enum values below, the 64-byte
 * opaque algo and the heuristic result struct. */
#include "vendor/cublaslt.h"
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void *lt_handle, *lt_desc, *lt_layout, *lt_pref;
typedef struct { uint64_t data[8]; } lt_algo;   /* cublasLtMatmulAlgo_t */
typedef struct { lt_algo algo; size_t workspace; int state; float waves; int reserved[4]; } lt_heuristic;
enum {
    LT_COMPUTE_32F = 68,                      /* CUBLAS_COMPUTE_32F */
    LT_R_32F = 0, LT_R_16BF = 14,             /* CUDA_R_32F, CUDA_R_16BF */
    LT_DESC_TRANSA = 3, LT_DESC_TRANSB = 4,   /* CUBLASLT_MATMUL_DESC_TRANS{A,B} */
    LT_OP_N = 0, LT_OP_T = 1,                 /* CUBLAS_OP_{N,T} */
    LT_PREF_MAX_WORKSPACE = 1,                /* CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES */
    LT_ALGO_ID = 0, LT_ALGO_TILE = 1, LT_ALGO_SPLITK = 2, LT_ALGO_REDUCTION = 3, LT_ALGO_STAGES = 6,
};

struct di_cublaslt {
    int (*create)(lt_handle *);
    int (*destroy)(lt_handle);
    size_t (*version)(void);
    const char *(*status_name)(int);
    int (*desc_create)(lt_desc *, int, int);
    int (*desc_set)(lt_desc, int, const void *, size_t);
    int (*desc_destroy)(lt_desc);
    int (*layout_create)(lt_layout *, int, uint64_t, uint64_t, int64_t);
    int (*layout_destroy)(lt_layout);
    int (*pref_create)(lt_pref *);
    int (*pref_set)(lt_pref, int, const void *, size_t);
    int (*pref_destroy)(lt_pref);
    int (*heuristic)(lt_handle, lt_desc, lt_layout, lt_layout, lt_layout, lt_layout, lt_pref, int, lt_heuristic *,
                     int *);
    int (*algo_get)(const lt_algo *, int, void *, size_t, size_t *);
    int (*matmul)(lt_handle, lt_desc, const void *, const void *, lt_layout, const void *, lt_layout, const void *,
                  const void *, lt_layout, void *, lt_layout, const lt_algo *, void *, size_t, void *);
    lt_handle handle;
};

struct di_cublaslt_plan {
    const di_cublaslt *lt;
    long m, k, n;
    lt_desc desc;
    lt_layout a, b, c;
    lt_pref pref;
    lt_heuristic heur;
};

static const char *status(const di_cublaslt *lt, int st)
{
    const char *s = lt && lt->status_name ? lt->status_name(st) : NULL;
    return s ? s : "unknown status";
}

int di_cublaslt_open(di_cublaslt **out, di_err *err)
{
    *out = NULL;
    const char *names[] = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"};
    void *h = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !h; i++) h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!h) return di_fail(err, DI_ENODEV, "cuBLASLt: no libcublasLt.so.13, .12 or .so: %s", dlerror());
    di_cublaslt *lt = calloc(1, sizeof *lt);
    if (!lt) return di_fail(err, DI_ENOMEM, "cuBLASLt: out of memory");
    struct { void **fn; const char *name; } syms[] = {
        {(void **)&lt->create, "cublasLtCreate"},
        {(void **)&lt->destroy, "cublasLtDestroy"},
        {(void **)&lt->version, "cublasLtGetVersion"},
        {(void **)&lt->status_name, "cublasLtGetStatusName"},
        {(void **)&lt->desc_create, "cublasLtMatmulDescCreate"},
        {(void **)&lt->desc_set, "cublasLtMatmulDescSetAttribute"},
        {(void **)&lt->desc_destroy, "cublasLtMatmulDescDestroy"},
        {(void **)&lt->layout_create, "cublasLtMatrixLayoutCreate"},
        {(void **)&lt->layout_destroy, "cublasLtMatrixLayoutDestroy"},
        {(void **)&lt->pref_create, "cublasLtMatmulPreferenceCreate"},
        {(void **)&lt->pref_set, "cublasLtMatmulPreferenceSetAttribute"},
        {(void **)&lt->pref_destroy, "cublasLtMatmulPreferenceDestroy"},
        {(void **)&lt->heuristic, "cublasLtMatmulAlgoGetHeuristic"},
        {(void **)&lt->algo_get, "cublasLtMatmulAlgoConfigGetAttribute"},
        {(void **)&lt->matmul, "cublasLtMatmul"},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++)
        if (!(*syms[i].fn = dlsym(h, syms[i].name))) {
            free(lt);
            return di_fail(err, DI_ENODEV, "cuBLASLt: the library has no %s", syms[i].name);
        }
    /* The library stays loaded (no dlclose): unloading cuBLAS while CUDA state it registered
     * is alive is not supported, and a later open finds it resident. */
    int st = lt->create(&lt->handle);
    if (st) {
        di_fail(err, DI_ENODEV, "cuBLASLt: cublasLtCreate failed: %s (%d)", status(lt, st), st);
        free(lt);
        return DI_ENODEV;
    }
    *out = lt;
    return DI_OK;
}

void di_cublaslt_close(di_cublaslt *lt)
{
    if (!lt) return;
    lt->destroy(lt->handle);
    free(lt);
}

size_t di_cublaslt_version(const di_cublaslt *lt) { return lt->version(); }

/* Row-major y[m, n] = x[m, k] . w[n, k]^T seen column-major: y^T (n x m, ld n) = op(A) . B
 * with A = w stored k x n (ld k), op = T, and B = x^T stored k x m (ld k), op = N. */
int di_cublaslt_plan_new(di_cublaslt *lt, long m, long k, long n, di_dtype y_type, size_t workspace,
                         di_cublaslt_plan **out, di_err *err)
{
    *out = NULL;
    if (m <= 0 || k <= 0 || n <= 0) return di_fail(err, DI_EUSAGE, "cuBLASLt: shape M=%ld K=%ld N=%ld", m, k, n);
    if (y_type != DI_F32 && y_type != DI_BF16)
        return di_fail(err, DI_EUSAGE, "cuBLASLt: output type %s (f32 or bf16 only)", di_dtype_name(y_type));
    di_cublaslt_plan *p = calloc(1, sizeof *p);
    if (!p) return di_fail(err, DI_ENOMEM, "cuBLASLt: out of memory");
    *p = (di_cublaslt_plan){.lt = lt, .m = m, .k = k, .n = n};
    int ta = LT_OP_T, tb = LT_OP_N, found = 0, st;
    int ct = y_type == DI_BF16 ? LT_R_16BF : LT_R_32F;
    if ((st = lt->desc_create(&p->desc, LT_COMPUTE_32F, LT_R_32F)) ||
        (st = lt->desc_set(p->desc, LT_DESC_TRANSA, &ta, sizeof ta)) ||
        (st = lt->desc_set(p->desc, LT_DESC_TRANSB, &tb, sizeof tb)) ||
        (st = lt->layout_create(&p->a, LT_R_16BF, (uint64_t)k, (uint64_t)n, k)) ||
        (st = lt->layout_create(&p->b, LT_R_16BF, (uint64_t)k, (uint64_t)m, k)) ||
        (st = lt->layout_create(&p->c, ct, (uint64_t)n, (uint64_t)m, n)) || (st = lt->pref_create(&p->pref)) ||
        (st = lt->pref_set(p->pref, LT_PREF_MAX_WORKSPACE, &workspace, sizeof workspace)) ||
        (st = lt->heuristic(lt->handle, p->desc, p->a, p->b, p->c, p->c, p->pref, 1, &p->heur, &found))) {
        di_cublaslt_plan_free(p);
        return di_fail(err, DI_EDEVICE, "cuBLASLt setup for M=%ld K=%ld N=%ld: %s (%d)", m, k, n, status(lt, st), st);
    }
    if (!found) {
        di_cublaslt_plan_free(p);
        return di_fail(err, DI_EDEVICE, "cuBLASLt: no algorithm for M=%ld K=%ld N=%ld", m, k, n);
    }
    *out = p;
    return DI_OK;
}

void di_cublaslt_plan_free(di_cublaslt_plan *p)
{
    if (!p) return;
    const di_cublaslt *lt = p->lt;
    if (p->pref) lt->pref_destroy(p->pref);
    if (p->c) lt->layout_destroy(p->c);
    if (p->b) lt->layout_destroy(p->b);
    if (p->a) lt->layout_destroy(p->a);
    if (p->desc) lt->desc_destroy(p->desc);
    free(p);
}

long di_cublaslt_plan_m(const di_cublaslt_plan *p) { return p->m; }

static int algo_attr(const di_cublaslt *lt, const lt_algo *a, int attr, size_t size)
{
    uint32_t v = 0;   /* every attribute read here is 2 or 4 bytes; little-endian host */
    size_t written = 0;
    if (lt->algo_get(a, attr, &v, size, &written) || written != size) return -1;
    return size == 2 ? (int)(uint16_t)v : (int)v;
}

void di_cublaslt_plan_algo(const di_cublaslt *lt, const di_cublaslt_plan *p, di_cublaslt_algo *out)
{
    out->id = algo_attr(lt, &p->heur.algo, LT_ALGO_ID, 4);
    out->tile = algo_attr(lt, &p->heur.algo, LT_ALGO_TILE, 4);
    out->splitk = algo_attr(lt, &p->heur.algo, LT_ALGO_SPLITK, 4);
    out->reduction = algo_attr(lt, &p->heur.algo, LT_ALGO_REDUCTION, 4);
    out->stages = algo_attr(lt, &p->heur.algo, LT_ALGO_STAGES, 4);
    out->workspace = p->heur.workspace;
}

int di_cublaslt_matmul(di_cublaslt *lt, const di_cublaslt_plan *p, di_dptr y, di_dptr x, di_dptr w, di_dptr c,
                       di_dptr workspace, size_t workspace_bytes, void *stream, di_err *err)
{
    const float one = 1.0f, zero = 0.0f;
    /* beta = 0 never reads C; pass y so that the pointer is valid either way */
    const void *cp = (const void *)(uintptr_t)(c ? c : y);
    int st = lt->matmul(lt->handle, p->desc, &one, (const void *)(uintptr_t)w, p->a, (const void *)(uintptr_t)x, p->b,
                        c ? &one : &zero, cp, p->c, (void *)(uintptr_t)y, p->c, &p->heur.algo,
                        (void *)(uintptr_t)workspace, workspace_bytes, stream);
    if (st)
        return di_fail(err, DI_EDEVICE, "cublasLtMatmul M=%ld K=%ld N=%ld: %s (%d)", p->m, p->k, p->n, status(lt, st),
                       st);
    return DI_OK;
}
