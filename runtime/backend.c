/* Runtime: kernel lookup (memory map -> disk cache -> compile), buffers and launches for
 * the C backend (libtcc + CPU pool) and the CUDA backend (NVRTC + driver API). */
#include "runtime/backend.h"
#include "codegen/attention_fast.h"
#include "codegen/matmul_fast.h"
#include "runtime/cache.h"
#include "runtime/cublaslt.h"
#include "runtime/nvrtc.h"
#include "runtime/pool.h"
#include "runtime/tcc.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct di_kernel {
    const di_spec *spec;
    di_specialization sp;
    char name[256];
    di_block_fn cpu_fn;       /* C backend */
    di_tcc_code *code;
    di_cuda_module *mod;      /* CUDA backend */
    void *cu_fn;
    void *cu_reduce;          /* fast matmul: phase 2, adding split partials in order */
    bool tensor_maps;         /* fast matmul: phase 1 takes TMA descriptors of x and w */
    di_matmul_fast_config built_with;   /* fast matmul: the config its source was made with */
    void *cu_merge;           /* fast attention: phase 2, folding per-split results in order */
    di_buf *ws;               /* their workspace, grown on demand */
    /* Vendor matmul (the non-invariant reference): the kernel the model holds dispatches per
     * launch on the row count, as engines do; see "the vendor matmul" below. */
    di_kernel *variant[4];    /* generated, one per K split count of di_vendor_ksplit_choices
                               * (matmul) or KV split size of di_vendor_kv_split_choices (attention) */
    int variant_ks[4], nvariants;
    bool cublas;              /* GPU: cuBLASLt, its heuristic choosing per M */
    di_kernel *cast;          /* cuBLASLt, fast matmul via bf16 x: f32 x to bf16 into ws first */
    di_kernel *bf16x;         /* fast matmul on f32 x: the bf16-x kernel it runs after the cast */
    struct lt_plan_list *plans;
    int iy, ix, iw, ires;     /* argument positions of y, x, w, res (-1: none) */
    di_kernel *next;
};

/* cuBLASLt plans by M (the heuristic is asked once per row count a kernel meets). */
typedef struct lt_plan_list {
    di_cublaslt_plan *plan;
    struct lt_plan_list *next;
} lt_plan_list;

struct di_rt {
    di_rt_opts o;
    di_pool *pool;
    di_cuda *cuda;
    di_cache *cache;
    di_kernel *kernels;
    di_cublaslt *lt;          /* vendor profile on the GPU; NULL: generated variants instead */
    di_buf *lt_ws;            /* cuBLASLt workspace, shared: one stream orders its users */
    char lt_why[512];         /* why there is no cuBLASLt, for the description */
    char dump_dir[1024];
    char desc[512];
    char nvrtc_version[32];
    di_rt_stats stats;
};

/* ---- opening ------------------------------------------------------------------------- */

int di_rt_open(const di_rt_opts *o, di_rt **out, di_err *err)
{
    di_rt *rt = calloc(1, sizeof *rt);
    if (!rt) return di_fail(err, DI_ENOMEM, "out of memory");
    rt->o = *o;
    const char *dump = o->dump_dir ? o->dump_dir : getenv("DETINFER_DUMP_DIR");
    if (dump && *dump) snprintf(rt->dump_dir, sizeof rt->dump_dir, "%s", dump);
    if (o->backend == DI_BACKEND_CUDA) {
        int major = 0, minor = 0;
        if (di_cuda_open(o->device, &rt->cuda, err) || di_nvrtc_load(err) || di_nvrtc_version(&major, &minor, err)) {
            di_rt_close(rt);
            return err->code;
        }
        snprintf(rt->nvrtc_version, sizeof rt->nvrtc_version, "%d.%d", major, minor);
        const di_cuda_info *in = di_cuda_get_info(rt->cuda);
        di_matmul_fast_set_sm_count(in->sm_count);
        di_matmul_fast_set_target(in->arch);
        int n = snprintf(rt->desc, sizeof rt->desc, "cuda %s (%s, %d SMs), NVRTC %s, %s profile", in->name, in->arch,
                         in->sm_count, rt->nvrtc_version, di_profile_name(o->profile));
        if (o->profile == DI_PROFILE_VENDOR) {
            /* Without cuBLASLt the vendor matmul falls back to the generated K-split variants:
             * still batch dependent, so the profile keeps its meaning. */
            di_err le = {0};
            if (di_cuda_make_current(rt->cuda, &le) || di_cublaslt_open(&rt->lt, &le))
                snprintf(rt->lt_why, sizeof rt->lt_why, "%.500s", le.msg);
            if (rt->lt)
                snprintf(rt->desc + n, sizeof rt->desc - (size_t)n,
                         " (not batch invariant: cuBLASLt %zu matmul, algorithm chosen per M; attention KV split "
                         "size chosen from the row count)",
                         di_cublaslt_version(rt->lt));
            else
                snprintf(rt->desc + n, sizeof rt->desc - (size_t)n,
                         " (not batch invariant: matmul K split count from the row count; %s)", rt->lt_why);
        }
    } else {
        if (o->profile == DI_PROFILE_FAST) {
            free(rt);
            return di_fail(err, DI_EUSAGE, "--profile fast needs the GPU (tensor cores); the CPU runs exact or vendor");
        }
        rt->pool = di_pool_new(o->threads);
        if (!rt->pool) { free(rt); return di_fail(err, DI_ENOMEM, "cannot start the CPU pool"); }
        snprintf(rt->desc, sizeof rt->desc, "cpu (%d threads, libtcc), %s profile%s", di_pool_threads(rt->pool),
                 di_profile_name(o->profile),
                 o->profile == DI_PROFILE_VENDOR ? " (not batch invariant: matmul K split count from the row count)" : "");
    }
    rt->cache = di_cache_open(o->cache_dir);
    *out = rt;
    return DI_OK;
}

void di_rt_close(di_rt *rt)
{
    if (!rt) return;
    for (di_kernel *k = rt->kernels, *next; k; k = next) {
        next = k->next;
        di_tcc_free(k->code);
        di_buf_free(k->ws);
        for (lt_plan_list *p = k->plans, *pn; p; p = pn) {
            pn = p->next;
            di_cublaslt_plan_free(p->plan);
            free(p);
        }
        if (k->mod) di_cuda_module_unload(rt->cuda, k->mod);
        free(k);
    }
    di_buf_free(rt->lt_ws);
    if (rt->lt && !di_cuda_make_current(rt->cuda, NULL)) di_cublaslt_close(rt->lt);
    di_pool_free(rt->pool);
    if (rt->cuda) di_cuda_close(rt->cuda);
    if (rt->cache) di_cache_close(rt->cache);
    free(rt);
}

di_backend_kind di_rt_backend(const di_rt *rt) { return rt->o.backend; }
const char *di_rt_describe(const di_rt *rt) { return rt->desc; }
di_rt_stats di_rt_get_stats(const di_rt *rt) { return rt->stats; }
struct di_cache *di_rt_cache(di_rt *rt) { return rt->cache; }

/* ---- buffers ------------------------------------------------------------------------- */

int di_buf_alloc(di_rt *rt, size_t bytes, di_buf **out, di_err *err)
{
    di_buf *b = calloc(1, sizeof *b);
    if (!b) return di_fail(err, DI_ENOMEM, "out of memory");
    b->rt = rt;
    b->bytes = bytes;
    size_t n = bytes ? bytes : 1;
    if (rt->cuda) {
        if (di_cuda_alloc(rt->cuda, n, &b->dev, err) || di_cuda_memset8(rt->cuda, b->dev, 0, n, err)) {
            free(b);
            return err->code;
        }
    } else if (!(b->host = calloc(1, n))) {
        free(b);
        return di_fail(err, DI_ENOMEM, "cannot allocate %zu bytes", bytes);
    }
    *out = b;
    return DI_OK;
}

void di_buf_free(di_buf *b)
{
    if (!b) return;
    if (b->rt->cuda) di_cuda_free(b->rt->cuda, b->dev);
    free(b->host);
    free(b);
}

int di_buf_write(di_buf *b, size_t offset, const void *src, size_t bytes, di_err *err)
{
    if (offset > b->bytes || bytes > b->bytes - offset)
        return di_fail(err, DI_EUSAGE, "buffer write of %zu bytes at %zu past its %zu bytes", bytes, offset, b->bytes);
    if (b->rt->cuda) return di_cuda_upload(b->rt->cuda, b->dev + offset, src, bytes, err);
    memcpy((char *)b->host + offset, src, bytes);
    return DI_OK;
}

int di_buf_read(const di_buf *b, size_t offset, void *dst, size_t bytes, di_err *err)
{
    if (offset > b->bytes || bytes > b->bytes - offset)
        return di_fail(err, DI_EUSAGE, "buffer read of %zu bytes at %zu past its %zu bytes", bytes, offset, b->bytes);
    if (b->rt->cuda) return di_cuda_download(b->rt->cuda, dst, b->dev + offset, bytes, err);
    memcpy(dst, (const char *)b->host + offset, bytes);
    return DI_OK;
}

/* ---- source, options, dumps ---------------------------------------------------------- */

int di_rt_source(const di_spec *s, const di_specialization *p, di_backend_kind b, char **src, di_err *err)
{
    di_str o = {0};
    int rc = di_codegen(s, p, b, &o, err);
    if (rc) { di_str_free(&o); return rc; }
    *src = o.p;
    return DI_OK;
}

int di_nvrtc_options(di_profile profile, const char *arch, const char **opts, int max)
{
    static char archopt[64];
    snprintf(archopt, sizeof archopt, "-arch=%s", arch);
    /* exact: no contraction, IEEE division and sqrt, denormals kept; never fast math. */
    const char *exact[] = {archopt, "--fmad=false", "--prec-div=true", "--prec-sqrt=true", "--ftz=false", "-std=c++17"};
    const char *fast[] = {archopt, "--fmad=true", "--prec-div=true", "--prec-sqrt=true", "--ftz=false", "-std=c++17"};
    /* vendor builds as engines do, contraction on: fast's options */
    const char **src = profile == DI_PROFILE_EXACT ? exact : fast;
    int n = 6 < max ? 6 : max;
    for (int i = 0; i < n; i++) opts[i] = src[i];
    return n;
}

static void dump_file(const di_rt *rt, const char *name, const char *ext, const void *data, size_t len)
{
    if (!rt->dump_dir[0] || !data) return;
    mkdir(rt->dump_dir, 0777);
    char path[1400];
    snprintf(path, sizeof path, "%s/%s.%s", rt->dump_dir, name, ext);
    FILE *f = fopen(path, "wb");
    if (!f) { fprintf(stderr, "detinfer: cannot write dump %s: %s\n", path, strerror(errno)); return; }
    fwrite(data, 1, len, f);
    fclose(f);
}

/* ---- compile or fetch ---------------------------------------------------------------- */

static int build_c(di_rt *rt, di_kernel *k, const char *src, di_err *err)
{
    di_keyb kb;
    di_keyb_init(&kb);
    di_keyb_add_str(&kb, "generator", DI_CODEGEN_SCHEMA);
    di_keyb_add_str(&kb, "source", src);
    di_keyb_add_str(&kb, "compiler", DI_TCC_IDENTITY);
    di_keyb_add_str(&kb, "kind", "tcc-obj");
    di_key key = di_keyb_final(&kb);
    void *obj = NULL;
    size_t len = 0;
    bool hit = di_cache_get(rt->cache, &key, &obj, &len);
    if (!hit) {
        if (di_tcc_compile_obj(src, k->name, &obj, &len, err)) return err->code;
        di_cache_put(rt->cache, &key, obj, len);
        rt->stats.kernels_compiled++;
    } else {
        rt->stats.kernels_from_cache++;
    }
    void *fn = NULL;
    int rc = di_tcc_load_obj(obj, len, k->name, &k->code, &fn, err);
    free(obj);
    if (rc && hit) {
        /* a cached object that does not load is treated as corrupt: rebuild it */
        di_err_clear(err);
        if (di_tcc_compile_obj(src, k->name, &obj, &len, err)) return err->code;
        di_cache_put(rt->cache, &key, obj, len);
        rc = di_tcc_load_obj(obj, len, k->name, &k->code, &fn, err);
        free(obj);
    }
    k->cpu_fn = (di_block_fn)fn;
    char hex[65], log[256];
    di_key_hex(&key, hex);
    int n = snprintf(log, sizeof log, "kernel %s\nkey %s\ncache %s\ncompiler %s\n", k->name, hex, hit ? "hit" : "miss",
                     DI_TCC_IDENTITY);
    dump_file(rt, k->name, "log", log, (size_t)n);
    return rc;
}

static di_key cuda_key(const di_rt *rt, const char *src, const char **opts, int nopts, const char *arch,
                       const char *kind)
{
    di_keyb kb;
    di_keyb_init(&kb);
    di_keyb_add_str(&kb, "generator", DI_CODEGEN_SCHEMA);
    di_keyb_add_str(&kb, "source", src);
    for (int i = 0; i < nopts; i++) di_keyb_add_str(&kb, "option", opts[i]);
    di_keyb_add_str(&kb, "nvrtc", rt->nvrtc_version);
    di_keyb_add_str(&kb, "arch", arch);
    di_keyb_add_str(&kb, "kind", kind);
    return di_keyb_final(&kb);
}

static int arg_pos(const di_spec *s, const char *name)
{
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++)
        if (!strcmp(s->args[i].name, name)) return i;
    return -1;
}

static int build_cuda(di_rt *rt, di_kernel *k, const char *src, di_err *err)
{
    const char *arch = di_cuda_get_info(rt->cuda)->arch;
    const char *opts[16];
    int nopts = di_nvrtc_options(k->sp.profile, arch, opts, 16);
    di_key kcubin = cuda_key(rt, src, opts, nopts, arch, "cubin");
    di_key kptx = cuda_key(rt, src, opts, nopts, arch, "ptx");
    di_key klog = cuda_key(rt, src, opts, nopts, arch, "log");
    void *cubin = NULL, *ptx = NULL, *log = NULL;
    size_t cubin_len = 0, ptx_len = 0, log_len = 0;
    bool hit = di_cache_get(rt->cache, &kcubin, &cubin, &cubin_len);
    if (hit) {
        rt->stats.kernels_from_cache++;
        di_cache_get(rt->cache, &kptx, &ptx, &ptx_len);
        di_cache_get(rt->cache, &klog, &log, &log_len);
    } else {
        di_nvrtc_out nv = {0};
        if (di_nvrtc_compile(src, k->name, opts, nopts, true, &nv, err)) {
            dump_file(rt, k->name, "log", nv.log, nv.log ? strlen(nv.log) : 0);
            di_nvrtc_out_free(&nv);
            return err->code;
        }
        di_cache_put(rt->cache, &kcubin, nv.cubin, nv.cubin_len);
        di_cache_put(rt->cache, &kptx, nv.ptx, nv.ptx_len);
        di_cache_put(rt->cache, &klog, nv.log ? nv.log : "", nv.log ? strlen(nv.log) : 0);
        cubin = nv.cubin; cubin_len = nv.cubin_len; nv.cubin = NULL;
        ptx = nv.ptx; ptx_len = nv.ptx_len; nv.ptx = NULL;
        log = nv.log; log_len = nv.log ? strlen(nv.log) : 0; nv.log = NULL;
        di_nvrtc_out_free(&nv);
        rt->stats.kernels_compiled++;
    }
    dump_file(rt, k->name, "ptx", ptx, ptx_len);
    dump_file(rt, k->name, "log", log, log_len);
    int rc = di_cuda_module_load(rt->cuda, cubin, &k->mod, err);
    if (!rc) rc = di_cuda_function(k->mod, k->name, &k->cu_fn, err);
    if (!rc && di_matmul_fast_applies(k->spec, &k->sp, DI_BACKEND_CUDA)) {
        char reduce[300];
        snprintf(reduce, sizeof reduce, "%s_reduce", k->name);
        rc = di_cuda_function(k->mod, reduce, &k->cu_reduce, err);
        k->tensor_maps = di_matmul_fast_tensor_maps(k->spec, &k->sp);
        k->built_with = *di_matmul_fast_get_config();
        k->ix = arg_pos(k->spec, "x"), k->iw = arg_pos(k->spec, "w");
    }
    if (!rc && di_attention_fast_applies(k->spec, &k->sp, DI_BACKEND_CUDA)) {
        char merge[300];
        snprintf(merge, sizeof merge, "%s_merge", k->name);
        rc = di_cuda_function(k->mod, merge, &k->cu_merge, err);
    }
    free(cubin);
    free(ptx);
    free(log);
    return rc;
}

/* ---- the vendor matmul ----------------------------------------------------------------
 * What engines do, on purpose (the non-invariant reference): the work for a row depends on
 * how many rows share the launch. On the GPU cuBLASLt's heuristic picks tile, split-K count
 * and reduction for each M. Without cuBLASLt, and on the CPU, the kernel the caller holds is a
 * dispatcher over generated variants, one per K split count, and each launch takes the one
 * di_vendor_matmul_ksplits(rows) names. Vendor attention on the GPU is the same kind of
 * dispatcher over the tensor-core attention, one variant per KV split size, and each launch
 * takes the one di_vendor_attention_kv_split(rows) names (engines choose a split-KV count from
 * the batch; at a given context that is a split size). All of it is chosen here rather than in
 * the model so that the model stays profile- and backend-blind, as it is for exact and fast. */

static bool vendor_dispatch(const di_rt *rt, const di_spec *s, const di_specialization *sp)
{
    if (rt->o.profile != DI_PROFILE_VENDOR) return false;
    if (s->cls == DI_MATMUL) return sp->ksplits == 0;
    /* attention: a split-KV size per launch on the GPU's tensor-core kernel */
    if (s->cls == DI_ATTENTION && rt->cuda && sp->kv_split == 0) {
        di_specialization v = *sp;
        v.kv_split = s->sched.split;
        return di_attention_fast_applies(s, &v, DI_BACKEND_CUDA);
    }
    return false;
}

/* A vendor dispatcher's variants, compiled now, at load, so that no launch compiles: one per
 * value the policy can pick, a K split count (matmul, at most K) or a KV split size (attention). */
static int vendor_variants(di_rt *rt, di_kernel *k, const int *values, int n, di_err *err)
{
    bool attention = k->spec->cls == DI_ATTENTION;
    long kdim = attention ? 0 : di_spec_dim(k->spec, &k->sp, "K");
    if (n > (int)(sizeof k->variant / sizeof k->variant[0]))
        return di_fail(err, DI_ESPEC, "spec %s: %d vendor variants, room for 4", k->spec->name, n);
    for (int i = 0; i < n; i++) {
        di_specialization v = k->sp;
        if (attention) v.kv_split = values[i];
        else v.ksplits = values[i] < kdim ? values[i] : (int)kdim;
        if (di_rt_kernel(rt, k->spec, &v, &k->variant[i], err)) return err->code;
        k->variant_ks[i] = values[i];
        k->nvariants = i + 1;
    }
    return DI_OK;
}

static int vendor_attention_prepare(di_rt *rt, di_kernel *k, di_err *err)
{
    const int *sizes;
    int n = di_vendor_kv_split_choices(&sizes);
    return vendor_variants(rt, k, sizes, n, err);
}

enum { LT_WORKSPACE = 32 << 20 };   /* cuBLASLt's own recommendation for Hopper */

/* The cast kernel a matmul on f32 x runs first when its GEMM takes bf16 x (cuBLASLt, and the
 * fast matmul's TMA kernel): x rounded to bf16 (round to nearest even) into the workspace. */
static int prepare_cast(di_rt *rt, di_kernel *k, di_err *err)
{
    const di_spec *cs = &di_specs[DI_OP_cast_bf16];
    di_specialization cp;
    di_spec_defaults(cs, &cp);
    if (di_spec_set_dim(cs, &cp, "D", di_spec_dim(k->spec, &k->sp, "K"), err)) return err->code;
    return di_rt_kernel(rt, cs, &cp, &k->cast, err);
}

static int vendor_cublaslt_prepare(di_rt *rt, di_kernel *k, di_err *err)
{
    const di_spec *s = k->spec;
    const di_specialization *p = &k->sp;
    /* The epilogue must be one cuBLASLt has: beta = 0 (acc) or beta = 1 on f32 res (acc + res[n]). */
    bool plain = !strcmp(s->body, "acc") && k->ires < 0;
    bool residual = !strcmp(s->body, "acc + res[n]") && k->ires >= 0 && p->dtypes[k->ires] == DI_F32 &&
                    p->dtypes[k->iy] == DI_F32;
    if (!plain && !residual)
        return di_fail(err, DI_ESPEC, "spec %s: epilogue '%s' has no cuBLASLt form in the vendor profile (acc, or "
                       "acc + res[n] with f32 y and res)", s->name, s->body);
    if (p->dtypes[k->iw] != DI_BF16)
        return di_fail(err, DI_ESPEC, "spec %s: the vendor profile's cuBLASLt matmul takes bf16 w", s->name);
    if (p->dtypes[k->ix] == DI_F32 && prepare_cast(rt, k, err))
        return di_wrap(err, "spec %s (vendor, cuBLASLt)", s->name);
    if (!rt->lt_ws && di_buf_alloc(rt, LT_WORKSPACE, &rt->lt_ws, err)) return err->code;
    k->cublas = true;
    return DI_OK;
}

static int vendor_matmul_prepare(di_rt *rt, di_kernel *k, di_err *err)
{
    const di_spec *s = k->spec;
    k->iy = arg_pos(s, "y"), k->ix = arg_pos(s, "x"), k->iw = arg_pos(s, "w"), k->ires = arg_pos(s, "res");
    if (rt->lt) return vendor_cublaslt_prepare(rt, k, err);
    const int *ks;
    int n = di_vendor_ksplit_choices(&ks);
    return vendor_variants(rt, k, ks, n, err);
}

/* The fast matmul on f32 x, where the bf16-x kernel loads by TMA: round x to bf16 first (the
 * cast kernel, round to nearest even, as the kernel itself would on the way into shared
 * memory), then run the bf16-x kernel. Same products, same order, same bits; TMA cannot
 * convert, and the f32 path's register staging is slower. */
static bool fast_matmul_via_bf16(const di_rt *rt, const di_spec *s, const di_specialization *p)
{
    if (!rt->cuda || p->profile != DI_PROFILE_FAST || !di_matmul_fast_applies(s, p, DI_BACKEND_CUDA)) return false;
    int ix = arg_pos(s, "x");
    if (p->dtypes[ix] != DI_F32) return false;
    di_specialization b = *p;
    b.dtypes[ix] = DI_BF16;
    return di_matmul_fast_tensor_maps(s, &b);
}

static int fast_matmul_via_bf16_prepare(di_rt *rt, di_kernel *k, di_err *err)
{
    di_specialization b = k->sp;
    k->ix = arg_pos(k->spec, "x");
    b.dtypes[k->ix] = DI_BF16;
    if (prepare_cast(rt, k, err) || di_rt_kernel(rt, k->spec, &b, &k->bf16x, err))
        return di_wrap(err, "spec %s (fast, bf16 x)", k->spec->name);
    return DI_OK;
}

int di_rt_kernel(di_rt *rt, const di_spec *s, const di_specialization *p, di_kernel **out, di_err *err)
{
    di_specialization sp = *p;
    sp.profile = rt->o.profile;
    char name[256];
    di_kernel_name(s, &sp, name, sizeof name);
    for (di_kernel *k = rt->kernels; k; k = k->next)
        if (k->spec == s && !strcmp(k->name, name)) { *out = k; return DI_OK; }

    char msg[512];
    if (!di_spec_validate(s, msg, sizeof msg)) return di_fail(err, DI_ESPEC, "%s", msg);
    if (di_specialization_check(s, &sp, err)) return err->code;
    di_kernel *k = calloc(1, sizeof *k);
    if (!k) return di_fail(err, DI_ENOMEM, "out of memory");
    k->spec = s;
    k->sp = sp;
    snprintf(k->name, sizeof k->name, "%s", name);
    int rc;
    if (vendor_dispatch(rt, s, &sp)) {
        rc = s->cls == DI_ATTENTION ? vendor_attention_prepare(rt, k, err) : vendor_matmul_prepare(rt, k, err);
    } else if (fast_matmul_via_bf16(rt, s, &sp)) {
        rc = fast_matmul_via_bf16_prepare(rt, k, err);
    } else {
        char *src = NULL;
        if (di_rt_source(s, &sp, rt->o.backend, &src, err)) { free(k); return err->code; }
        dump_file(rt, name, rt->cuda ? "cu" : "c", src, strlen(src));
        rc = rt->cuda ? build_cuda(rt, k, src, err) : build_c(rt, k, src, err);
        free(src);
    }
    if (rc) {
        di_tcc_free(k->code);
        free(k);
        return rc;
    }
    k->next = rt->kernels;
    rt->kernels = k;
    *out = k;
    return DI_OK;
}

/* ---- launch -------------------------------------------------------------------------- */

/* A row-sliced argument must hold rows x (row length) elements. */
static int check_arg(const di_kernel *k, int i, const di_val *v, long rows, di_err *err)
{
    const di_arg *a = &k->spec->args[i];
    if (a->role == DI_ROLE_SCALAR) return DI_OK;
    if (!v->buf) return di_fail(err, DI_EUSAGE, "kernel %s: argument %s is NULL", k->name, a->name);
    if (strncmp(a->shape, "rows,", 5) != 0 && strcmp(a->shape, "rows") != 0) return DI_OK;
    long len = 1;
    for (const char *c = strchr(a->shape, ','); c; c = strchr(c + 1, ',')) {
        char tok[128];
        const char *e = strchr(c + 1, ',');
        size_t n = e ? (size_t)(e - c - 1) : strlen(c + 1);
        snprintf(tok, sizeof tok, "%.*s", (int)n, c + 1);
        long v2;
        if (di_eval_expr(k->spec, &k->sp, tok, &v2, err)) return err->code;
        len *= v2;
    }
    size_t need = (size_t)rows * (size_t)len * di_dtype_size(k->sp.dtypes[i]);
    if (v->buf->bytes < need)
        return di_fail(err, DI_EUSAGE, "kernel %s: argument %s holds %zu bytes, %ld rows need %zu", k->name, a->name,
                       v->buf->bytes, rows, need);
    return DI_OK;
}

/* A kernel's workspace, grown on demand (never shrunk; freed with the runtime). */
static int grow_workspace(di_rt *rt, di_kernel *k, size_t bytes, di_err *err)
{
    if (k->ws && k->ws->bytes >= bytes) return DI_OK;
    di_buf_free(k->ws);
    k->ws = NULL;
    return di_buf_alloc(rt, bytes ? bytes : 4, &k->ws, err);
}

/* x (f32) rounded to bf16 into k's workspace by its cast kernel; *x16 is that workspace. */
static int cast_x(di_rt *rt, di_kernel *k, const di_val *args, long rows, di_buf **x16, di_err *err)
{
    size_t need = (size_t)rows * (size_t)di_spec_dim(k->spec, &k->sp, "K") * 2;
    if (grow_workspace(rt, k, need, err)) return err->code;
    di_val cargs[2] = {{.buf = k->ws}, {.buf = args[k->ix].buf}};
    long csizes[1] = {rows};
    if (di_rt_launch(rt, k->cast, cargs, csizes, err)) return err->code;
    *x16 = k->ws;
    return DI_OK;
}

/* Vendor matmul on cuBLASLt: x to bf16 (engines keep bf16 activations), then the plan the
 * heuristic gives for this M, on the runtime's stream so that it is ordered with our kernels. */
static int launch_cublaslt(di_rt *rt, di_kernel *k, const di_val *args, long rows, di_err *err)
{
    if (rows == 0) return DI_OK;
    long kd = di_spec_dim(k->spec, &k->sp, "K"), nd = di_spec_dim(k->spec, &k->sp, "N");
    di_dptr x = args[k->ix].buf->dev;
    if (k->cast) {
        di_buf *x16;
        if (cast_x(rt, k, args, rows, &x16, err)) return err->code;
        x = x16->dev;
    }
    lt_plan_list *pl = k->plans;
    while (pl && di_cublaslt_plan_m(pl->plan) != rows) pl = pl->next;
    if (di_cuda_make_current(rt->cuda, err)) return err->code;
    if (!pl) {
        di_cublaslt_plan *plan = NULL;
        if (di_cublaslt_plan_new(rt->lt, rows, kd, nd, k->sp.dtypes[k->iy], rt->lt_ws->bytes, &plan, err))
            return di_wrap(err, "kernel %s", k->name);
        if (!(pl = calloc(1, sizeof *pl))) {
            di_cublaslt_plan_free(plan);
            return di_fail(err, DI_ENOMEM, "out of memory");
        }
        pl->plan = plan;
        pl->next = k->plans;
        k->plans = pl;
    }
    di_dptr res = k->ires >= 0 ? args[k->ires].buf->dev : 0;
    if (di_cublaslt_matmul(rt->lt, pl->plan, args[k->iy].buf->dev, x, args[k->iw].buf->dev, res, rt->lt_ws->dev,
                           rt->lt_ws->bytes, di_cuda_stream(rt->cuda), err))
        return di_wrap(err, "kernel %s", k->name);
    return DI_OK;
}

/* Fast attention: fold mode (phase 2 returns at once) or split mode (per-split results to
 * the workspace, folded in split order by phase 2); the plan picks from rows and maxb. */
static int launch_attention_fast(di_rt *rt, di_kernel *k, void **argv, int n, const long *sizes, di_err *err)
{
    di_attention_fast_plan pl;
    if (di_attention_fast_plan_for(k->spec, &k->sp, sizes[0], sizes[1], &pl, err)) return err->code;
    if (sizes[0] == 0) return DI_OK;
    if (grow_workspace(rt, k, pl.workspace, err)) return err->code;
    long rpw = pl.rows_per_warp, split_mode = pl.split_mode;
    argv[n] = &k->ws->dev;
    argv[n + 1] = &rpw;
    argv[n + 2] = &split_mode;
    if (di_cuda_launch(rt->cuda, k->cu_fn, pl.g[0].grid, pl.g[0].block, pl.g[0].smem, argv, err)) return err->code;
    if (!pl.split_mode) return DI_OK;
    return di_cuda_launch(rt->cuda, k->cu_merge, pl.g[1].grid, pl.g[1].block, pl.g[1].smem, argv, err);
}

/* Fast matmul on f32 x through its bf16-x kernel: x rounded into the workspace, then that
 * kernel with the workspace as x. */
static int launch_via_bf16(di_rt *rt, di_kernel *k, const di_val *args, const long *sizes, di_err *err)
{
    long rows = sizes[0];
    di_matmul_fast_plan plan;   /* the row count checked before anything runs (arguments were, by the caller) */
    if (di_matmul_fast_plan_for(k->bf16x->spec, &k->bf16x->sp, rows, &plan, err)) return err->code;
    if (rows == 0) return DI_OK;
    di_val bargs[DI_MAX_ARGS];
    for (int i = 0; i < DI_MAX_ARGS && k->spec->args[i].name; i++) bargs[i] = args[i];
    if (cast_x(rt, k, args, rows, &bargs[k->ix].buf, err)) return err->code;
    return di_rt_launch(rt, k->bf16x, bargs, sizes, err);
}

/* Fast matmul: partials per fixed K split into a workspace, then their in-order sum. */
static int launch_two_phase(di_rt *rt, di_kernel *k, const di_val *args, void **argv, int n, long rows, di_err *err)
{
    di_geometry g[2];
    size_t ws_bytes = 0;
    /* geometry and TMA boxes come from the current config and must match the compiled kernel
     * (a mismatch in the bytes a stage expects would hang it); the struct has no padding */
    if (memcmp(&k->built_with, di_matmul_fast_get_config(), sizeof k->built_with))
        return di_fail(err, DI_EUSAGE, "kernel %s: the fast matmul config changed after it was built (open a new "
                       "runtime after di_matmul_fast_set_config)", k->name);
    if (di_geometry_matmul_fast(k->spec, &k->sp, rows, g, &ws_bytes, err)) return err->code;
    if (rows == 0) return DI_OK;
    if (grow_workspace(rt, k, ws_bytes, err)) return err->code;
    argv[n] = &k->ws->dev;
    di_tensor_map maps[2];   /* x [rows][K] and w [N][K], in the tile's boxes (per launch: x and rows change) */
    if (k->tensor_maps) {
        const di_matmul_fast_config *c = di_matmul_fast_get_config();
        uint64_t kdim = (uint64_t)di_spec_dim(k->spec, &k->sp, "K"), ndim = (uint64_t)di_spec_dim(k->spec, &k->sp, "N");
        if (di_cuda_tensor_map_bf16(rt->cuda, &maps[0], args[k->ix].buf->dev, (uint64_t)rows, kdim,
                                    (unsigned)di_matmul_fast_x_box_rows(rows), (unsigned)c->bk, err) ||
            di_cuda_tensor_map_bf16(rt->cuda, &maps[1], args[k->iw].buf->dev, ndim, kdim,
                                    (unsigned)di_matmul_fast_tile_cols(k->spec, &k->sp), (unsigned)c->bk, err))
            return di_wrap(err, "kernel %s", k->name);
        argv[n + 1] = &maps[0];
        argv[n + 2] = &maps[1];
    }
    if (di_cuda_launch(rt->cuda, k->cu_fn, g[0].grid, g[0].block, g[0].smem, argv, err)) return err->code;
    if ((long)g[1].grid[0] * g[1].grid[1] == 0) return DI_OK;   /* fused: phase 1 stored y */
    return di_cuda_launch(rt->cuda, k->cu_reduce, g[1].grid, g[1].block, g[1].smem, argv, err);
}

int di_rt_launch(di_rt *rt, di_kernel *k, const di_val *args, const long *sizes, di_err *err)
{
    const di_spec *s = k->spec;
    if (k->nvariants) {
        bool att = s->cls == DI_ATTENTION;
        int want = att ? di_vendor_attention_kv_split(sizes[0]) : di_vendor_matmul_ksplits(sizes[0]);
        for (int i = 0; i < k->nvariants; i++)
            if (k->variant_ks[i] == want) return di_rt_launch(rt, k->variant[i], args, sizes, err);
        return di_fail(err, DI_EUSAGE, "kernel %s: no variant for %s %d", k->name, att ? "KV split size" : "K splits",
                       want);
    }
    void *argv[DI_MAX_ARGS + DI_MAX_SIZES + 3];
    long size_vals[DI_MAX_SIZES];
    int n = 0;
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++, n++) {
        if (check_arg(k, i, &args[i], sizes[0], err)) return err->code;
        if (s->args[i].role == DI_ROLE_SCALAR)
            argv[n] = (void *)&args[i];
        else
            argv[n] = rt->cuda ? (void *)&args[i].buf->dev : (void *)&args[i].buf->host;
    }
    for (int i = 0; i < DI_MAX_SIZES && s->sizes[i]; i++, n++) {
        size_vals[i] = sizes[i];
        argv[n] = &size_vals[i];
    }
    if (k->bf16x) return launch_via_bf16(rt, k, args, sizes, err);
    rt->stats.launches++;
    if (k->cublas) return launch_cublaslt(rt, k, args, sizes[0], err);
    if (k->cu_merge) return launch_attention_fast(rt, k, argv, n, sizes, err);
    if (k->cu_reduce) return launch_two_phase(rt, k, args, argv, n, sizes[0], err);
    di_geometry g;
    if (di_geometry_for(s, &k->sp, rt->o.backend, sizes, &g, err)) return err->code;
    if ((long)g.grid[0] * g.grid[1] * g.grid[2] == 0) return DI_OK;
    if (rt->cuda) return di_cuda_launch(rt->cuda, k->cu_fn, g.grid, g.block, g.smem, argv, err);
    di_pool_run(rt->pool, k->cpu_fn, (long)g.grid[0] * g.grid[1], g.grid[0], argv);
    return DI_OK;
}

int di_rt_sync(di_rt *rt, di_err *err)
{
    return rt->cuda ? di_cuda_sync(rt->cuda, err) : DI_OK;
}
