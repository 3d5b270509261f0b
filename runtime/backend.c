/* Runtime: opening a backend, buffers, and kernels: lookup (memory map -> disk cache ->
 * compile) and the one launch path, which carries out the plan a kernel's lowering gives. */
#include "runtime/backend.h"
#include "runtime/cache.h"
#include "runtime/cc.h"
#include "vendor/cublaslt.h"
#include "runtime/nvrtc.h"
#include "runtime/pool.h"
#include "runtime/tcc.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* cuBLASLt plans by M (the heuristic is asked once per row count a kernel meets). */
typedef struct lt_plan_list {
    di_cublaslt_plan *plan;
    struct lt_plan_list *next;
} lt_plan_list;

struct di_kernel {
    const di_spec *spec;
    di_specialization sp;
    char name[256];
    const di_lowering *low;
    int nentries;
    di_entry entries[DI_MAX_ENTRIES];
    void *fn[DI_MAX_ENTRIES];   /* CUDA functions, or the C backend's block functions */
    int ndeps;
    di_kernel *deps[DI_MAX_DEPS];
    di_tcc_code *code;          /* C backend, built by libtcc */
    di_cc_code *cc;             /* C backend, built by the system compiler */
    di_cuda_module *mod;        /* CUDA backend */
    di_buf *ws;                 /* the plan's workspace, grown on demand */
    lt_plan_list *lt_plans;     /* DI_RUN_CUBLASLT */
    di_kernel *next;
};

struct di_rt {
    di_rt_opts o;
    di_target target;
    di_pool *pool;
    di_cuda *cuda;
    di_cache *cache;
    di_cpu_compiler cpu;      /* C backend: TCC or CC */
    bool cpu_auto;            /* chosen by auto: a kernel cc fails on is built by libtcc */
    bool cc_warned;
    di_kernel *kernels;
    di_cublaslt *lt;          /* vendor profile on the GPU; NULL: generated variants instead */
    di_buf *lt_ws;            /* cuBLASLt workspace, shared: one stream orders its users */
    char dump_src[1024], dump_ptx[1024];
    char desc[512];
    char nvrtc_version[32];
    di_rt_stats stats;
    bool capturing;           /* launches are being recorded into a graph */
    unsigned long ws_epoch;   /* counts workspace moves: graphs recorded before one are stale */
};

struct di_rt_graph {
    di_cuda_graph *g;
    unsigned long ws_epoch;
};

/* ---- opening ------------------------------------------------------------------------- */

static void dump_dirs(di_rt *rt, const di_rt_opts *o)
{
    const char *env = getenv("DETINFER_DUMP_DIR");
    const char *src = o->dump_src_dir ? o->dump_src_dir : env, *ptx = o->dump_ptx_dir ? o->dump_ptx_dir : env;
    if (src && *src) snprintf(rt->dump_src, sizeof rt->dump_src, "%s", src);
    if (ptx && *ptx) snprintf(rt->dump_ptx, sizeof rt->dump_ptx, "%s", ptx);
}

static int open_cuda(di_rt *rt, const di_rt_opts *o, di_err *err)
{
    int major = 0, minor = 0;
    if (di_cuda_open(o->device, &rt->cuda, err) || di_nvrtc_load(err) || di_nvrtc_version(&major, &minor, err))
        return err->code;
    snprintf(rt->nvrtc_version, sizeof rt->nvrtc_version, "%d.%d", major, minor);
    const di_cuda_info *in = di_cuda_get_info(rt->cuda);
    rt->target.backend = DI_BACKEND_CUDA;
    snprintf(rt->target.arch, sizeof rt->target.arch, "%s", in->arch);
    rt->target.sm_count = o->sm_count > 0 ? o->sm_count : in->sm_count;
    int n = snprintf(rt->desc, sizeof rt->desc, "cuda %s (%s, %d SMs), NVRTC %s, %s profile", in->name, in->arch,
                     in->sm_count, rt->nvrtc_version, di_profile_name(o->profile));
    if (o->profile != DI_PROFILE_VENDOR) return DI_OK;
    /* Without cuBLASLt the vendor matmul falls back to the generated K-split variants: still
     * batch dependent, so the profile keeps its meaning. */
    di_err le = {0};
    if (di_cuda_make_current(rt->cuda, &le) || di_cublaslt_open(&rt->lt, &le)) rt->lt = NULL;
    rt->target.cublaslt = rt->lt != NULL;
    if (rt->lt)
        snprintf(rt->desc + n, sizeof rt->desc - (size_t)n,
                 " (not batch invariant: cuBLASLt %zu matmul, algorithm chosen per M; attention KV split size "
                 "chosen from the row count)", di_cublaslt_version(rt->lt));
    else
        snprintf(rt->desc + n, sizeof rt->desc - (size_t)n,
                 " (not batch invariant: matmul K split count from the row count; %.300s)", le.msg);
    return DI_OK;
}

bool di_cpu_compiler_parse(const char *name, di_cpu_compiler *out)
{
    if (!strcmp(name, "auto")) *out = DI_CPU_COMPILER_AUTO;
    else if (!strcmp(name, "tcc")) *out = DI_CPU_COMPILER_TCC;
    else if (!strcmp(name, "cc")) *out = DI_CPU_COMPILER_CC;
    else return false;
    return true;
}

const char *di_cpu_compiler_name(di_cpu_compiler c)
{
    return c == DI_CPU_COMPILER_TCC ? "tcc" : c == DI_CPU_COMPILER_CC ? "cc" : "auto";
}

/* The CPU tier: the option, else $DETINFER_CPU_COMPILER, else auto (cc if one works). */
static int choose_cpu_compiler(di_rt *rt, di_cpu_compiler want, di_err *err)
{
    const char *from = "--cpu-compiler";
    if (want == DI_CPU_COMPILER_DEFAULT) {
        const char *env = getenv("DETINFER_CPU_COMPILER");
        want = DI_CPU_COMPILER_AUTO;
        from = "DETINFER_CPU_COMPILER";
        if (env && *env && !di_cpu_compiler_parse(env, &want))
            return di_fail(err, DI_EUSAGE, "DETINFER_CPU_COMPILER=%s: takes tcc, cc or auto", env);
    }
    di_err ce = {0};
    if (want == DI_CPU_COMPILER_CC && !di_cc_available(&ce)) return di_fail(err, DI_EUSAGE, "%s cc: %s", from, ce.msg);
    rt->cpu_auto = want == DI_CPU_COMPILER_AUTO;
    rt->cpu = want == DI_CPU_COMPILER_TCC || (rt->cpu_auto && !di_cc_available(&ce)) ? DI_CPU_COMPILER_TCC
                                                                                     : DI_CPU_COMPILER_CC;
    return DI_OK;
}

int di_rt_open(const di_rt_opts *o, di_rt **out, di_err *err)
{
    if (!(di_profile_backends(o->profile) & (o->backend == DI_BACKEND_CUDA ? DI_ON_CUDA : DI_ON_CPU)))
        return di_fail(err, DI_EUSAGE, "--profile %s runs on the GPU only (tensor cores); the CPU runs exact or vendor",
                       di_profile_name(o->profile));
    di_rt *rt = calloc(1, sizeof *rt);
    if (!rt) return di_fail(err, DI_ENOMEM, "out of memory");
    rt->o = *o;
    dump_dirs(rt, o);
    if (o->backend == DI_BACKEND_CUDA) {
        if (open_cuda(rt, o, err)) {
            di_rt_close(rt);
            return err->code;
        }
    } else {
        rt->target = di_target_c();
        if (choose_cpu_compiler(rt, o->cpu_compiler, err)) { free(rt); return err->code; }
        rt->pool = di_pool_new(o->threads);
        if (!rt->pool) { free(rt); return di_fail(err, DI_ENOMEM, "cannot start the CPU pool"); }
        char tier[300];
        if (rt->cpu == DI_CPU_COMPILER_CC) snprintf(tier, sizeof tier, "cc: %s", di_cc_version());
        else snprintf(tier, sizeof tier, "libtcc");
        snprintf(rt->desc, sizeof rt->desc, "cpu (%d threads, %s), %s profile%s", di_pool_threads(rt->pool), tier,
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
        di_cc_free(k->cc);
        di_buf_free(k->ws);
        for (lt_plan_list *p = k->lt_plans, *pn; p; p = pn) {
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
const di_target *di_rt_target(const di_rt *rt) { return &rt->target; }
di_profile di_rt_profile(const di_rt *rt) { return rt->o.profile; }
const char *di_rt_describe(const di_rt *rt) { return rt->desc; }
di_rt_stats di_rt_get_stats(const di_rt *rt) { return rt->stats; }
di_cpu_compiler di_rt_cpu_compiler(const di_rt *rt) { return rt->cuda ? DI_CPU_COMPILER_DEFAULT : rt->cpu; }
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
    if (b->rt->capturing) return di_fail(err, DI_EUSAGE, "a buffer write while launches are recorded");
    if (b->rt->cuda) return di_cuda_upload(b->rt->cuda, b->dev + offset, src, bytes, err);
    memcpy((char *)b->host + offset, src, bytes);
    return DI_OK;
}

int di_buf_copy(di_buf *dst, const di_buf *src, size_t bytes, di_err *err)
{
    if (bytes > dst->bytes || bytes > src->bytes || dst->rt != src->rt)
        return di_fail(err, DI_EUSAGE, "buffer copy of %zu bytes between buffers of %zu and %zu", bytes, src->bytes,
                       dst->bytes);
    if (dst->rt->cuda) return di_cuda_copy(dst->rt->cuda, dst->dev, src->dev, bytes, err);
    memcpy(dst->host, src->host, bytes);
    return DI_OK;
}

int di_buf_read(const di_buf *b, size_t offset, void *dst, size_t bytes, di_err *err)
{
    if (offset > b->bytes || bytes > b->bytes - offset)
        return di_fail(err, DI_EUSAGE, "buffer read of %zu bytes at %zu past its %zu bytes", bytes, offset, b->bytes);
    if (b->rt->capturing) return di_fail(err, DI_EUSAGE, "a buffer read while launches are recorded");
    if (b->rt->cuda) return di_cuda_download(b->rt->cuda, dst, b->dev + offset, bytes, err);
    memcpy(dst, (const char *)b->host + offset, bytes);
    return DI_OK;
}

/* ---- source, options, dumps ---------------------------------------------------------- */

int di_rt_source_for(const di_spec *s, const di_specialization *p, const di_target *t, char **src, di_err *err)
{
    di_str o = {0};
    int rc = di_codegen(s, p, t, &o, err);
    if (rc) { di_str_free(&o); return rc; }
    *src = o.p;
    return DI_OK;
}

int di_rt_source(const di_spec *s, const di_specialization *p, di_backend_kind b, char **src, di_err *err)
{
    di_target t = b == DI_BACKEND_CUDA ? di_target_cuda_default() : di_target_c();
    return di_rt_source_for(s, p, &t, src, err);
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

static void dump_file(const char *dir, const char *name, const char *ext, const void *data, size_t len)
{
    if (!dir[0] || !data) return;
    mkdir(dir, 0777);
    char path[1400];
    snprintf(path, sizeof path, "%s/%s.%s", dir, name, ext);
    FILE *f = fopen(path, "wb");
    if (!f) { fprintf(stderr, "detinfer: cannot write dump %s: %s\n", path, strerror(errno)); return; }
    fwrite(data, 1, len, f);
    fclose(f);
}

static void dump_log(const di_rt *rt, const char *name, const void *data, size_t len)
{
    dump_file(rt->dump_src, name, "log", data, len);
    if (strcmp(rt->dump_src, rt->dump_ptx)) dump_file(rt->dump_ptx, name, "log", data, len);
}

/* ---- compile or fetch ---------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* A compile that happened (a cache miss): counted, timed, and reported to the progress callback. */
static void compiled(di_rt *rt, const char *kernel, const char *compiler, double t0)
{
    double s = now_s() - t0;
    rt->stats.kernels_compiled++;
    rt->stats.compile_seconds += s;
    if (rt->o.on_compile) rt->o.on_compile(rt->o.on_compile_ctx, kernel, compiler, s);
}

/* The two CPU tiers: one C source, two compilers. What each puts in its cache key (everything
 * that can make its output differ), how it compiles, loads and finds a symbol. */
typedef struct cpu_tier {
    const char *name;
    void (*key)(di_keyb *kb);
    int (*compile)(const char *src, const char *label, void **bin, size_t *len, di_err *err);
    int (*load)(di_kernel *k, const void *bin, size_t len, di_err *err);
    void *(*symbol)(di_kernel *k, const char *name);
} cpu_tier;

static void tcc_key(di_keyb *kb)
{
    di_keyb_add_str(kb, "compiler", DI_TCC_IDENTITY);
    di_keyb_add_str(kb, "kind", "tcc-obj");
}
static int tcc_load(di_kernel *k, const void *bin, size_t len, di_err *err)
{
    return di_tcc_load_obj(bin, len, k->entries[0].name, &k->code, &k->fn[0], err);
}
static void *tcc_sym(di_kernel *k, const char *name) { return di_tcc_symbol(k->code, name); }

/* The compiler's --version line and its flags in order; the host's machine, since a flag such
 * as -mavx2 is chosen from the CPU the process runs on. */
static void cc_key(di_keyb *kb)
{
    const char *const *flags;
    int n = di_cc_flags(&flags);
    di_keyb_add_str(kb, "compiler", di_cc_version());
    for (int i = 0; i < n; i++) di_keyb_add_str(kb, "option", flags[i]);
#if defined(__x86_64__)
    di_keyb_add_str(kb, "arch", "x86_64");
#elif defined(__aarch64__)
    di_keyb_add_str(kb, "arch", "aarch64");
#else
    di_keyb_add_str(kb, "arch", "other");
#endif
    di_keyb_add_str(kb, "kind", "cc-so");
}
static int cc_load(di_kernel *k, const void *bin, size_t len, di_err *err)
{
    return di_cc_load_so(bin, len, k->entries[0].name, &k->cc, &k->fn[0], err);
}
static void *cc_sym(di_kernel *k, const char *name) { return di_cc_symbol(k->cc, name); }

static const cpu_tier tier_tcc = {"libtcc", tcc_key, di_tcc_compile_obj, tcc_load, tcc_sym};
static const cpu_tier tier_cc = {"cc", cc_key, di_cc_compile_so, cc_load, cc_sym};

static int build_cpu(di_rt *rt, di_kernel *k, const char *src, const cpu_tier *t, di_err *err)
{
    di_keyb kb;
    di_keyb_init(&kb);
    di_keyb_add_str(&kb, "generator", DI_CODEGEN_SCHEMA);
    di_keyb_add_str(&kb, "source", src);
    t->key(&kb);
    di_key key = di_keyb_final(&kb);
    const char *entry = k->entries[0].name;
    void *bin = NULL;
    size_t len = 0;
    bool hit = di_cache_get(rt->cache, &key, &bin, &len);
    if (!hit) {
        double t0 = now_s();
        if (t->compile(src, entry, &bin, &len, err)) return err->code;
        compiled(rt, k->name, t->name, t0);
        di_cache_put(rt->cache, &key, bin, len);
    } else {
        rt->stats.kernels_from_cache++;
    }
    int rc = t->load(k, bin, len, err);
    free(bin);
    if (rc && hit) {
        /* a cached object that does not load is treated as corrupt: rebuild it */
        di_err_clear(err);
        double t0 = now_s();
        if (t->compile(src, entry, &bin, &len, err)) return err->code;
        compiled(rt, k->name, t->name, t0);
        di_cache_put(rt->cache, &key, bin, len);
        rc = t->load(k, bin, len, err);
        free(bin);
    }
    for (int i = 1; !rc && i < k->nentries; i++)
        if (!(k->fn[i] = t->symbol(k, k->entries[i].name)))
            rc = di_fail(err, DI_ECOMPILE, "%s: symbol %s not found in the object", k->name, k->entries[i].name);
    char hex[65], log[1024];
    di_key_hex(&key, hex);
    int n = snprintf(log, sizeof log, "kernel %s\nkey %s\ncache %s\ncompiler %s\n", k->name, hex, hit ? "hit" : "miss",
                     t == &tier_cc ? di_cc_version() : DI_TCC_IDENTITY);
    if (t == &tier_cc) {
        const char *const *flags;
        int nf = di_cc_flags(&flags);
        n += snprintf(log + n, sizeof log - (size_t)n, "flags");
        for (int i = 0; i < nf && n < (int)sizeof log; i++) n += snprintf(log + n, sizeof log - (size_t)n, " %s", flags[i]);
        if (n < (int)sizeof log) n += snprintf(log + n, sizeof log - (size_t)n, "\n");
    }
    dump_log(rt, k->name, log, (size_t)(n < (int)sizeof log ? n : (int)sizeof log - 1));
    return rc;
}

/* cc when the runtime uses it; under auto, a kernel cc cannot build is built by libtcc (the
 * same bits, slower), with one warning. An explicit --cpu-compiler cc fails instead. */
static int build_c(di_rt *rt, di_kernel *k, const char *src, di_err *err)
{
    if (rt->cpu != DI_CPU_COMPILER_CC) return build_cpu(rt, k, src, &tier_tcc, err);
    int rc = build_cpu(rt, k, src, &tier_cc, err);
    if (!rc || !rt->cpu_auto) return rc;
    if (!rt->cc_warned) fprintf(stderr, "detinfer: cc failed, libtcc builds %s instead: %.600s\n", k->name, err->msg);
    rt->cc_warned = true;
    di_err_clear(err);
    di_cc_free(k->cc);
    k->cc = NULL;
    return build_cpu(rt, k, src, &tier_tcc, err);
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

static int build_cuda(di_rt *rt, di_kernel *k, const char *src, di_err *err)
{
    const char *arch = rt->target.arch;
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
            dump_log(rt, k->name, nv.log, nv.log ? strlen(nv.log) : 0);
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
    dump_file(rt->dump_ptx, k->name, "ptx", ptx, ptx_len);
    dump_log(rt, k->name, log, log_len);
    int rc = di_cuda_module_load(rt->cuda, cubin, &k->mod, err);
    for (int i = 0; !rc && i < k->nentries; i++) rc = di_cuda_function(k->mod, k->entries[i].name, &k->fn[i], err);
    free(cubin);
    free(ptx);
    free(log);
    return rc;
}

/* The lowering's own entries compiled (if it has any), then its dependencies built. */
static int build(di_rt *rt, di_kernel *k, di_err *err)
{
    k->low = di_lowering_for(k->spec, &k->sp, &rt->target);
    di_dep deps[DI_MAX_DEPS];
    int nd = k->low->deps ? k->low->deps(k->spec, &k->sp, &rt->target, deps, err) : 0;
    if (nd < 0) return err->code;
    for (int i = 0; i < nd; i++) {
        if (di_rt_kernel(rt, deps[i].spec, &deps[i].sp, &k->deps[i], err))
            return di_wrap(err, "spec %s (%s)", k->spec->name, k->low->name);
        k->ndeps = i + 1;
    }
    if ((k->nentries = k->low->entries(k->spec, &k->sp, &rt->target, k->entries, err)) < 0) return err->code;
    if (k->nentries == 0) return DI_OK;
    char *src = NULL;
    if (di_rt_source_for(k->spec, &k->sp, &rt->target, &src, err)) return err->code;
    dump_file(rt->dump_src, k->name, rt->cuda ? "cu" : "c", src, strlen(src));
    int rc = rt->cuda ? build_cuda(rt, k, src, err) : build_c(rt, k, src, err);
    free(src);
    return rc;
}

int di_rt_kernel(di_rt *rt, const di_spec *s, const di_specialization *p, di_kernel **out, di_err *err)
{
    di_specialization sp = *p;
    sp.profile = rt->o.profile;
    char name[256];
    di_kernel_name(s, &sp, &rt->target, name, sizeof name);
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
    if (build(rt, k, err)) {
        di_tcc_free(k->code);
        di_cc_free(k->cc);
        if (k->mod) di_cuda_module_unload(rt->cuda, k->mod);
        free(k);
        return err->code;
    }
    k->next = rt->kernels;
    rt->kernels = k;
    *out = k;
    return DI_OK;
}

static int op_specialization(di_op op, const di_dim_value *dims, int n, const di_arg_dtype *types, int ntypes,
                             di_specialization *p, di_err *err)
{
    if ((unsigned)op >= DI_NUM_OPS) return di_fail(err, DI_EUSAGE, "no kernel op %d", (int)op);
    const di_spec *s = &di_specs[op];
    di_spec_defaults(s, p);
    for (int i = 0; i < n; i++)
        if (di_spec_set_dim(s, p, dims[i].name, dims[i].value, err)) return err->code;
    for (int i = 0; i < ntypes; i++)
        if (di_spec_set_dtype(s, p, types[i].arg, types[i].dtype, err)) return err->code;
    return DI_OK;
}

int di_rt_op_kernel(di_rt *rt, di_op op, const di_dim_value *dims, int n, const di_arg_dtype *types, int ntypes,
                    di_kernel **out, di_err *err)
{
    di_specialization p;
    if (op_specialization(op, dims, n, types, ntypes, &p, err)) return err->code;
    return di_rt_kernel(rt, &di_specs[op], &p, out, err);
}

bool di_rt_op_available(const di_rt *rt, di_op op, const di_dim_value *dims, int n, const di_arg_dtype *types,
                        int ntypes)
{
    di_specialization p;
    di_err e = {0};
    char *src = NULL;
    if (op_specialization(op, dims, n, types, ntypes, &p, &e)) return false;
    p.profile = rt->o.profile;
    bool ok = !di_rt_source_for(&di_specs[op], &p, &rt->target, &src, &e);
    free(src);
    return ok;
}

int di_rt_kv_block(void) { return di_specs[DI_OP_kv_write].sched.kv_block; }

const char *di_kernel_lowering(const di_kernel *k) { return k->low->name; }

int di_rt_plan(di_rt *rt, const di_kernel *k, const long *sizes, di_plan *out, di_err *err)
{
    return k->low->plan(k->spec, &k->sp, &rt->target, sizes, out, err);
}

/* ---- launch -------------------------------------------------------------------------- */

/* A row-sliced argument must hold rows x (row length) elements. */
static int check_arg(const di_kernel *k, int i, const di_val *v, long rows, di_err *err)
{
    const di_arg *a = &k->spec->args[i];
    if (a->role == DI_ROLE_SCALAR) return DI_OK;
    if (!v->buf) return di_fail(err, DI_EUSAGE, "kernel %s: argument %s is NULL", k->name, a->name);
    long len;
    if (di_arg_row_elems(k->spec, &k->sp, i, &len, err)) return err->code;
    size_t need = (size_t)rows * (size_t)len * di_dtype_size(k->sp.dtypes[i]);
    if (v->buf->bytes < need)
        return di_fail(err, DI_EUSAGE, "kernel %s: argument %s holds %zu bytes, %ld rows need %zu", k->name, a->name,
                       v->buf->bytes, rows, need);
    return DI_OK;
}

/* A kernel's workspace, grown on demand (never shrunk; freed with the runtime). */
static int grow_workspace(di_rt *rt, di_kernel *k, size_t bytes, di_err *err)
{
    if (!bytes || (k->ws && k->ws->bytes >= bytes)) return DI_OK;
    if (rt->capturing)   /* the graph would keep the old address, and a memset cannot be recorded */
        return di_fail(err, DI_EUSAGE, "kernel %s: its workspace would grow while launches are recorded", k->name);
    rt->ws_epoch++;
    di_buf_free(k->ws);
    k->ws = NULL;
    return di_buf_alloc(rt, bytes, &k->ws, err);
}

/* What one planned argument refers to, as a buffer view (workspace offsets included). */
static di_buf view_of(di_rt *rt, const di_kernel *k, const di_pa *a, const di_val *args)
{
    if (a->kind == DI_A_ARG) return *args[a->index].buf;
    di_buf v = {rt, 0, NULL, 0};
    if (!k->ws || a->offset > k->ws->bytes) return v;
    v.bytes = k->ws->bytes - a->offset;
    v.host = k->ws->host ? (char *)k->ws->host + a->offset : NULL;
    v.dev = k->ws->dev ? k->ws->dev + a->offset : 0;
    return v;
}

/* The lowering's contract with the entry it launches: one planned argument per declared
 * parameter, of the same kind. */
static int check_params(const di_kernel *k, const di_launch *l, di_err *err)
{
    const di_entry *e = &k->entries[l->index];
    if (l->index < 0 || l->index >= k->nentries || l->nargs != e->nparams)
        return di_fail(err, DI_ESPEC, "kernel %s (%s): a plan passes %d arguments to entry %d, which takes %d",
                       k->name, k->low->name, l->nargs, l->index, l->index >= 0 && l->index < k->nentries ? e->nparams : -1);
    for (int i = 0; i < l->nargs; i++) {
        const di_pa *a = &l->args[i];
        di_param want = e->params[i], got;
        if (a->kind == DI_A_ARG) {
            const di_arg *sa = &k->spec->args[a->index];
            got = sa->role != DI_ROLE_SCALAR ? DI_P_PTR : sa->dtype == DI_I32 ? DI_P_I32 : DI_P_F32;
        } else {
            got = a->kind == DI_A_WS ? DI_P_PTR : a->kind == DI_A_TMAP ? DI_P_TMAP : DI_P_LONG;
        }
        if (got != want)
            return di_fail(err, DI_ESPEC, "kernel %s (%s): argument %d of entry %s is of the wrong kind", k->name,
                           k->low->name, i, e->name);
    }
    return DI_OK;
}

typedef union arg_store { di_dptr dev; void *host; long l; float f; int i; di_tensor_map map; } arg_store;

static int run_entry(di_rt *rt, di_kernel *k, const di_launch *l, const di_val *args, const long *sizes, di_err *err)
{
    if (check_params(k, l, err)) return err->code;
    if ((long)l->grid[0] * l->grid[1] * l->grid[2] == 0) return DI_OK;
    arg_store store[DI_MAX_PARAMS];
    void *argv[DI_MAX_PARAMS];
    for (int i = 0; i < l->nargs; i++) {
        const di_pa *a = &l->args[i];
        arg_store *v = &store[i];
        if (a->kind == DI_A_ARG && k->spec->args[a->index].role == DI_ROLE_SCALAR) {
            if (k->spec->args[a->index].dtype == DI_I32) v->i = args[a->index].i32;
            else v->f = args[a->index].f32;
        } else if (a->kind == DI_A_ARG || a->kind == DI_A_WS) {
            di_buf b = view_of(rt, k, a, args);
            if (rt->cuda) v->dev = b.dev; else v->host = b.host;
        } else if (a->kind == DI_A_SIZE) {
            v->l = sizes[a->index];
        } else if (a->kind == DI_A_LONG) {
            v->l = a->value;
        } else if (di_cuda_tensor_map_bf16(rt->cuda, &v->map, args[a->index].buf->dev, a->rows, a->cols, a->box_rows,
                                           a->box_cols, err)) {
            return di_wrap(err, "kernel %s", k->name);
        }
        argv[i] = v;
    }
    rt->stats.launches++;
    /* every generated CUDA entry waits for the kernel before it (DI_GRID_ENTRY, codegen/cuda.c) */
    if (rt->cuda) return di_cuda_launch_waiting(rt->cuda, k->fn[l->index], l->grid, l->block, l->smem, l->cluster, argv, err);
    di_pool_run(rt->pool, (di_block_fn)k->fn[l->index], (long)l->grid[0] * l->grid[1], l->grid[0], argv);
    return DI_OK;
}

/* A dependency on the launch's arguments or views of the workspace, then its sizes. */
static int run_dep(di_rt *rt, di_kernel *k, const di_launch *l, const di_val *args, const long *sizes, di_err *err)
{
    di_kernel *d = l->index >= 0 && l->index < k->ndeps ? k->deps[l->index] : NULL;
    int nargs = 0, nsizes = 0;
    while (d && nargs < DI_MAX_ARGS && d->spec->args[nargs].name) nargs++;
    while (d && nsizes < DI_MAX_SIZES && d->spec->sizes[nsizes]) nsizes++;
    if (!d || l->nargs != nargs + nsizes)
        return di_fail(err, DI_ESPEC, "kernel %s (%s): a plan runs dependency %d with %d arguments", k->name,
                       k->low->name, l->index, l->nargs);
    di_buf views[DI_MAX_ARGS];
    di_val dargs[DI_MAX_ARGS];
    long dsizes[DI_MAX_SIZES];
    for (int i = 0; i < nargs; i++) {
        const di_pa *a = &l->args[i];
        bool scalar = d->spec->args[i].role == DI_ROLE_SCALAR;
        if (a->kind == DI_A_ARG && scalar) dargs[i] = args[a->index];
        else if ((a->kind == DI_A_ARG || a->kind == DI_A_WS) && !scalar) {
            views[i] = view_of(rt, k, a, args);
            dargs[i].buf = &views[i];
        } else {
            return di_fail(err, DI_ESPEC, "kernel %s (%s): argument %d of dependency %s is of the wrong kind", k->name,
                           k->low->name, i, d->name);
        }
    }
    for (int i = 0; i < nsizes; i++) {
        const di_pa *a = &l->args[nargs + i];
        if (a->kind != DI_A_SIZE && a->kind != DI_A_LONG)
            return di_fail(err, DI_ESPEC, "kernel %s (%s): size %d of dependency %s is not a size", k->name,
                           k->low->name, i, d->name);
        dsizes[i] = a->kind == DI_A_SIZE ? sizes[a->index] : a->value;
    }
    return di_rt_launch(rt, d, dargs, dsizes, err);
}

enum { LT_WORKSPACE = 32 << 20 };   /* cuBLASLt's own recommendation for Hopper */

/* The library GEMM: the plan its heuristic gives for this M, on the runtime's stream so that it
 * is ordered with our kernels. */
static int run_cublaslt(di_rt *rt, di_kernel *k, const di_launch *l, const di_val *args, const long *sizes,
                        di_err *err)
{
    if (!rt->lt || l->nargs != DI_CUBLASLT_ARGS)
        return di_fail(err, DI_ESPEC, "kernel %s: a cuBLASLt launch without cuBLASLt or with %d arguments", k->name,
                       l->nargs);
    const di_pa *a = l->args;
    long m = a[4].kind == DI_A_SIZE ? sizes[a[4].index] : a[4].value, kd = a[5].value, nd = a[6].value;
    if (m == 0) return DI_OK;
    if (!rt->lt_ws && rt->capturing)
        return di_fail(err, DI_EUSAGE, "kernel %s: cuBLASLt's workspace would be made while launches are recorded",
                       k->name);
    if (!rt->lt_ws && di_buf_alloc(rt, LT_WORKSPACE, &rt->lt_ws, err)) return err->code;
    lt_plan_list *pl = k->lt_plans;
    while (pl && di_cublaslt_plan_m(pl->plan) != m) pl = pl->next;
    if (di_cuda_make_current(rt->cuda, err)) return err->code;
    if (!pl) {
        di_cublaslt_plan *plan = NULL;
        if (di_cublaslt_plan_new(rt->lt, m, kd, nd, a[7].value ? DI_BF16 : DI_F32, rt->lt_ws->bytes, &plan, err))
            return di_wrap(err, "kernel %s", k->name);
        if (!(pl = calloc(1, sizeof *pl))) {
            di_cublaslt_plan_free(plan);
            return di_fail(err, DI_ENOMEM, "out of memory");
        }
        pl->plan = plan;
        pl->next = k->lt_plans;
        k->lt_plans = pl;
    }
    di_buf y = view_of(rt, k, &a[0], args), x = view_of(rt, k, &a[1], args), w = view_of(rt, k, &a[2], args);
    di_dptr res = a[3].kind == DI_A_LONG ? 0 : view_of(rt, k, &a[3], args).dev;
    rt->stats.launches++;
    if (di_cublaslt_matmul(rt->lt, pl->plan, y.dev, x.dev, w.dev, res, rt->lt_ws->dev, rt->lt_ws->bytes,
                           di_cuda_stream(rt->cuda), err))
        return di_wrap(err, "kernel %s", k->name);
    return DI_OK;
}

int di_rt_launch(di_rt *rt, di_kernel *k, const di_val *args, const long *sizes, di_err *err)
{
    const di_spec *s = k->spec;
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++)
        if (check_arg(k, i, &args[i], sizes[0], err)) return err->code;
    di_plan plan;
    if (k->low->plan(s, &k->sp, &rt->target, sizes, &plan, err)) return err->code;
    if (grow_workspace(rt, k, plan.workspace, err)) return err->code;
    for (int i = 0; i < plan.n; i++) {
        const di_launch *l = &plan.l[i];
        int rc = l->run == DI_RUN_ENTRY ? run_entry(rt, k, l, args, sizes, err)
               : l->run == DI_RUN_DEP   ? run_dep(rt, k, l, args, sizes, err)
                                        : run_cublaslt(rt, k, l, args, sizes, err);
        if (rc) return rc;
    }
    return DI_OK;
}

int di_rt_sync(di_rt *rt, di_err *err)
{
    return rt->cuda ? di_cuda_sync(rt->cuda, err) : DI_OK;
}

/* ---- graphs --------------------------------------------------------------------------- */

bool di_rt_has_graphs(const di_rt *rt) { return rt->cuda && di_cuda_has_graphs(rt->cuda); }

int di_rt_capture_begin(di_rt *rt, di_err *err)
{
    if (!di_rt_has_graphs(rt))
        return di_fail(err, DI_EUSAGE, "graphs need the CUDA backend and a driver with graphs (%s)", rt->desc);
    if (rt->capturing) return di_fail(err, DI_EUSAGE, "launches are already being recorded");
    if (di_cuda_capture_begin(rt->cuda, err)) return err->code;
    rt->capturing = true;
    return DI_OK;
}

int di_rt_capture_end(di_rt *rt, di_rt_graph **out, di_err *err)
{
    if (out) *out = NULL;
    if (!rt->capturing) return di_fail(err, DI_EUSAGE, "no launches are being recorded");
    rt->capturing = false;
    di_rt_graph *g = out ? calloc(1, sizeof *g) : NULL;
    if (out && !g) {
        di_cuda_capture_end(rt->cuda, NULL, err);
        return di_fail(err, DI_ENOMEM, "out of memory");
    }
    if (di_cuda_capture_end(rt->cuda, g ? &g->g : NULL, err)) {
        free(g);
        return err->code;
    }
    if (!g) return DI_OK;
    g->ws_epoch = rt->ws_epoch;
    rt->stats.graphs_recorded++;
    rt->stats.graph_nodes += (long)di_cuda_graph_nodes(g->g);
    *out = g;
    return DI_OK;
}

bool di_rt_graph_fresh(const di_rt *rt, const di_rt_graph *g) { return g && g->ws_epoch == rt->ws_epoch; }

int di_rt_graph_run(di_rt *rt, di_rt_graph *g, di_err *err)
{
    if (!di_rt_graph_fresh(rt, g))
        return di_fail(err, DI_EUSAGE, "a graph recorded before a kernel's workspace moved cannot run");
    rt->stats.graph_runs++;
    return di_cuda_graph_launch(rt->cuda, g->g, err);
}

void di_rt_graph_free(di_rt_graph *g)
{
    if (!g) return;
    di_cuda_graph_free(g->g);
    free(g);
}
