/* CUDA Driver API through dlopen("libcuda.so.1"). No <cuda.h>: the handful of types, enum
 * values and entry points used are declared here, so this builds and runs without CUDA.
 *
 * Only "libcuda.so.1" is opened, never "libcuda.so": the toolkit ships a stub libcuda.so
 * (lib64/stubs) that loads but fails every call; the real driver always has the .so.1 name.
 *
 * Context: the device's primary context (cuDevicePrimaryCtxRetain), which exists in every
 * driver version, unlike cuCtxCreate whose versioned name changes (_v2 ... _v4 in CUDA 13).
 * Each entry point makes that context current on the calling thread first, so callers on
 * any thread work.
 *
 * Ordering: all kernels go to one stream created at open with default (blocking) flags.
 * Uploads, downloads and memsets use the synchronous legacy-stream calls, which the driver
 * orders against every blocking stream of the context: a download sees all earlier
 * launches, a launch sees all earlier uploads. A launch with programmatic stream serialization
 * (di_cuda_launch_waiting) relaxes only its dependency on the kernel before it, which its own
 * griddepcontrol.wait then restores; copies and memsets before it are waited for as before. */
#include "runtime/cuda.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int cu_result; /* CUresult; 0 is CUDA_SUCCESS */
typedef int cu_device;
typedef unsigned long long cu_dptr;
typedef struct cu_ctx_s *cu_ctx;
typedef struct cu_module_s *cu_module;
typedef struct cu_function_s *cu_function;
typedef struct cu_stream_s *cu_stream;
typedef struct cu_event_s *cu_event;
typedef struct cu_graph_s *cu_graph;
typedef struct cu_graph_exec_s *cu_graph_exec;

/* enum values from the Driver API (stable since they were introduced) */
enum {
    CU_ATTR_MULTIPROCESSOR_COUNT = 16,
    CU_ATTR_CC_MAJOR = 75,
    CU_ATTR_CC_MINOR = 76,
    CU_ATTR_MAX_SMEM_PER_BLOCK_OPTIN = 97,
    CU_FUNC_ATTR_MAX_DYNAMIC_SMEM = 8,
    CU_JIT_ERROR_LOG_BUFFER = 5,
    CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6,
    CU_STREAM_DEFAULT_FLAGS = 0,
    CU_EVENT_DEFAULT_FLAGS = 0,
    CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1,
};
/* cuLaunchKernelEx's configuration (CUlaunchConfig, CUlaunchAttribute: the value a 64-byte
 * union after 8 bytes of id) */
typedef struct cu_launch_attr {
    int id;
    char pad[4];
    union { int allowed; unsigned dim[3]; char bytes[64]; } value;
} cu_launch_attr;
typedef struct cu_launch_config {
    unsigned grid[3], block[3], smem;
    cu_stream stream;
    cu_launch_attr *attrs;
    unsigned nattrs;
} cu_launch_config;
enum { CU_LAUNCH_ATTR_CLUSTER_DIMENSION = 4, CU_LAUNCH_ATTR_PROGRAMMATIC_STREAM_SERIALIZATION = 6 };
/* Dynamic shared memory above this needs the per-function opt-in attribute. */
#define DEFAULT_SMEM_LIMIT (48u * 1024u)

static struct {
    cu_result (*init)(unsigned flags);
    cu_result (*driver_version)(int *v);
    cu_result (*error_string)(cu_result r, const char **s);
    cu_result (*error_name)(cu_result r, const char **s);
    cu_result (*device_count)(int *n);
    cu_result (*device_get)(cu_device *d, int ordinal);
    cu_result (*device_attribute)(int *v, int attr, cu_device d);
    cu_result (*device_name)(char *name, int len, cu_device d);
    cu_result (*device_total_mem)(size_t *bytes, cu_device d);
    cu_result (*primary_retain)(cu_ctx *ctx, cu_device d);
    cu_result (*primary_release)(cu_device d);
    cu_result (*ctx_get_current)(cu_ctx *ctx);
    cu_result (*ctx_set_current)(cu_ctx ctx);
    cu_result (*stream_create)(cu_stream *s, unsigned flags);
    cu_result (*stream_destroy)(cu_stream s);
    cu_result (*stream_sync)(cu_stream s);
    cu_result (*mem_alloc)(cu_dptr *p, size_t bytes);
    cu_result (*mem_free)(cu_dptr p);
    cu_result (*htod)(cu_dptr dst, const void *src, size_t bytes);
    cu_result (*dtoh)(void *dst, cu_dptr src, size_t bytes);
    cu_result (*dtod_async)(cu_dptr dst, cu_dptr src, size_t bytes, cu_stream s);
    cu_result (*memset8)(cu_dptr dst, unsigned char v, size_t n);
    cu_result (*module_load)(cu_module *m, const void *image, unsigned nopts, int *opts, void **vals);
    cu_result (*module_unload)(cu_module m);
    cu_result (*module_function)(cu_function *f, cu_module m, const char *name);
    cu_result (*func_set_attribute)(cu_function f, int attr, int value);
    cu_result (*launch)(cu_function f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, cu_stream s, void **params, void **extra);
    cu_result (*event_create)(cu_event *e, unsigned flags);
    cu_result (*event_record)(cu_event e, cu_stream s);
    cu_result (*event_sync)(cu_event e);
    cu_result (*event_elapsed)(float *ms, cu_event a, cu_event b);
    cu_result (*event_destroy)(cu_event e);
    /* optional (CUDA 12+): looked up apart, so that an older driver still runs the rest */
    cu_result (*tensor_map_encode_tiled)(void *map, int dtype, unsigned rank, void *base, const uint64_t *dims,
                                         const uint64_t *strides, const unsigned *box, const unsigned *elem_strides,
                                         int interleave, int swizzle, int l2_promotion, int oob_fill);
    /* optional (CUDA 11.8+): launches with attributes */
    cu_result (*launch_ex)(const cu_launch_config *config, cu_function f, void **params, void **extra);
    /* optional (CUDA 11.4+): graphs */
    cu_result (*capture_begin)(cu_stream s, int mode);
    cu_result (*capture_end)(cu_stream s, cu_graph *g);
    cu_result (*graph_instantiate)(cu_graph_exec *e, cu_graph g, unsigned long long flags);
    cu_result (*graph_launch)(cu_graph_exec e, cu_stream s);
    cu_result (*graph_exec_destroy)(cu_graph_exec e);
    cu_result (*graph_destroy)(cu_graph g);
    cu_result (*graph_nodes)(cu_graph g, void **nodes, size_t *n);
} cu;

/* One entry point: where it goes, and the exported names to try, newest first. */
typedef struct {
    void *slot;
    const char *names[3];
} cu_symbol;

static const cu_symbol cu_symbols[] = {
    {&cu.init, {"cuInit"}},
    {&cu.driver_version, {"cuDriverGetVersion"}},
    {&cu.error_string, {"cuGetErrorString"}},
    {&cu.error_name, {"cuGetErrorName"}},
    {&cu.device_count, {"cuDeviceGetCount"}},
    {&cu.device_get, {"cuDeviceGet"}},
    {&cu.device_attribute, {"cuDeviceGetAttribute"}},
    {&cu.device_name, {"cuDeviceGetName"}},
    {&cu.device_total_mem, {"cuDeviceTotalMem_v2"}},
    {&cu.primary_retain, {"cuDevicePrimaryCtxRetain"}},
    {&cu.primary_release, {"cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"}},
    {&cu.ctx_get_current, {"cuCtxGetCurrent"}},
    {&cu.ctx_set_current, {"cuCtxSetCurrent"}},
    {&cu.stream_create, {"cuStreamCreate"}},
    {&cu.stream_destroy, {"cuStreamDestroy_v2", "cuStreamDestroy"}},
    {&cu.stream_sync, {"cuStreamSynchronize"}},
    {&cu.mem_alloc, {"cuMemAlloc_v2"}},
    {&cu.mem_free, {"cuMemFree_v2"}},
    {&cu.htod, {"cuMemcpyHtoD_v2"}},
    {&cu.dtoh, {"cuMemcpyDtoH_v2"}},
    {&cu.dtod_async, {"cuMemcpyDtoDAsync_v2"}},
    {&cu.memset8, {"cuMemsetD8_v2"}},
    {&cu.module_load, {"cuModuleLoadDataEx"}},
    {&cu.module_unload, {"cuModuleUnload"}},
    {&cu.module_function, {"cuModuleGetFunction"}},
    {&cu.func_set_attribute, {"cuFuncSetAttribute"}},
    {&cu.launch, {"cuLaunchKernel"}},
    {&cu.event_create, {"cuEventCreate"}},
    {&cu.event_record, {"cuEventRecord"}},
    {&cu.event_sync, {"cuEventSynchronize"}},
    /* CUDA 12.8 added _v2 (same signature); CUDA 13 headers map the plain name to it */
    {&cu.event_elapsed, {"cuEventElapsedTime_v2", "cuEventElapsedTime"}},
    {&cu.event_destroy, {"cuEventDestroy_v2", "cuEventDestroy"}},
};

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static int load_code = DI_OK; /* written once under load_once, read-only after */
static char load_msg[1024];

static void load_driver(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        load_code = DI_ENODEV;
        snprintf(load_msg, sizeof load_msg, "CUDA: cannot load the NVIDIA driver library libcuda.so.1 (%s)",
                 why ? why : "not found");
        return;
    }
    for (size_t i = 0; i < sizeof cu_symbols / sizeof cu_symbols[0]; i++) {
        const cu_symbol *s = &cu_symbols[i];
        void *f = NULL;
        for (int k = 0; k < 3 && s->names[k] && !f; k++) f = dlsym(h, s->names[k]);
        if (!f) {
            load_code = DI_ENODEV;
            snprintf(load_msg, sizeof load_msg, "CUDA: libcuda.so.1 lacks %s (driver too old?)", s->names[0]);
            dlclose(h);
            return;
        }
        memcpy(s->slot, &f, sizeof f); /* object pointer to function pointer, as POSIX dlsym intends */
    }
    const cu_symbol optional[] = {
        {&cu.tensor_map_encode_tiled, {"cuTensorMapEncodeTiled"}},
        {&cu.launch_ex, {"cuLaunchKernelEx"}},
        {&cu.capture_begin, {"cuStreamBeginCapture_v2"}},
        {&cu.capture_end, {"cuStreamEndCapture"}},
        {&cu.graph_instantiate, {"cuGraphInstantiateWithFlags"}},
        {&cu.graph_launch, {"cuGraphLaunch"}},
        {&cu.graph_exec_destroy, {"cuGraphExecDestroy"}},
        {&cu.graph_destroy, {"cuGraphDestroy"}},
        {&cu.graph_nodes, {"cuGraphGetNodes"}},
    };
    for (size_t i = 0; i < sizeof optional / sizeof optional[0]; i++) {
        void *f = dlsym(h, optional[i].names[0]);
        if (f) memcpy(optional[i].slot, &f, sizeof f);
    }
    /* The handle stays open for the life of the process: the function pointers live in it. */
}

/* "cuXxx failed: <driver text> (<error name> <code>)" into buf. */
static void cu_text(cu_result r, const char *call, char *buf, size_t cap)
{
    enum { CUDA_ERROR_STUB_LIBRARY = 34 };
    const char *text = NULL, *name = NULL;
    if (r == CUDA_ERROR_STUB_LIBRARY) { /* the stub cannot describe itself */
        snprintf(buf, cap, "%s failed: the libcuda.so.1 found is the toolkit's stub, not the driver "
                 "(CUDA_ERROR_STUB_LIBRARY 34)", call);
        return;
    }
    if (cu.error_string(r, &text) || !text) text = "no description from the driver";
    if (cu.error_name(r, &name) || !name) name = "CUresult";
    snprintf(buf, cap, "%s failed: %s (%s %d)", call, text, name, r);
}

/* DI_EDEVICE with cu_text's message, plus what was being done when given. */
static int cu_fail(cu_result r, const char *call, const char *what, di_err *err)
{
    char text[512];
    cu_text(r, call, text, sizeof text);
    if (what) return di_fail(err, DI_EDEVICE, "%s; %s", text, what);
    return di_fail(err, DI_EDEVICE, "%s", text);
}

#define CU_CHECK(call_expr, name, err) \
    do { \
        cu_result r_ = (call_expr); \
        if (r_) return cu_fail(r_, name, NULL, err); \
    } while (0)

struct di_cuda {
    cu_device dev;
    cu_ctx ctx;         /* the primary context, retained; NULL until retained */
    cu_stream stream;   /* the one stream every launch and event goes to */
    di_cuda_info info;
};

struct di_cuda_module {
    di_cuda *c;
    cu_module mod;
};

struct di_cuda_event {
    di_cuda *c;
    cu_event ev;
};

struct di_cuda_graph {
    di_cuda *c;
    cu_graph_exec exec;
    size_t nodes;
};

/* Makes c's context current on this thread (a no-op when it already is). */
static int bind(const di_cuda *c, di_err *err)
{
    cu_ctx cur = NULL;
    if (cu.ctx_get_current(&cur) == 0 && cur == c->ctx) return DI_OK;
    CU_CHECK(cu.ctx_set_current(c->ctx), "cuCtxSetCurrent", err);
    return DI_OK;
}

/* The NVRTC target for a compute capability: the 'a' feature targets on Hopper and
 * Blackwell datacenter parts (wgmma, setmaxnreg need them), plain sm_XY elsewhere. */
static void arch_name(int major, int minor, char *buf, size_t cap)
{
    if ((major == 9 && minor == 0) || (major == 10 && minor == 0)) snprintf(buf, cap, "sm_%d%da", major, minor);
    else snprintf(buf, cap, "sm_%d%d", major, minor);
}

static int attribute(cu_device d, int attr, const char *what, int *v, di_err *err)
{
    cu_result r = cu.device_attribute(v, attr, d);
    return r ? cu_fail(r, "cuDeviceGetAttribute", what, err) : DI_OK;
}

static int read_info(cu_device d, di_cuda_info *in, di_err *err)
{
    int optin = 0;
    CU_CHECK(cu.device_name(in->name, (int)sizeof in->name, d), "cuDeviceGetName", err);
    in->name[sizeof in->name - 1] = 0;
    if (attribute(d, CU_ATTR_CC_MAJOR, "compute capability major", &in->cc_major, err) ||
        attribute(d, CU_ATTR_CC_MINOR, "compute capability minor", &in->cc_minor, err) ||
        attribute(d, CU_ATTR_MULTIPROCESSOR_COUNT, "multiprocessor count", &in->sm_count, err) ||
        attribute(d, CU_ATTR_MAX_SMEM_PER_BLOCK_OPTIN, "opt-in shared memory per block", &optin, err))
        return err ? err->code : DI_EDEVICE;
    in->smem_per_block_optin = optin > 0 ? (size_t)optin : 0;
    CU_CHECK(cu.device_total_mem(&in->total_mem, d), "cuDeviceTotalMem_v2", err);
    CU_CHECK(cu.driver_version(&in->driver_version), "cuDriverGetVersion", err);
    arch_name(in->cc_major, in->cc_minor, in->arch, sizeof in->arch);
    return DI_OK;
}

/* Initialises the driver and finds device `ordinal`. Every failure here means "no usable
 * GPU" to the caller, so all are DI_ENODEV. */
static int find_device(int ordinal, cu_device *d, di_err *err)
{
    pthread_once(&load_once, load_driver);
    if (load_code) return di_fail(err, load_code, "%s", load_msg);
    char text[512];
    cu_result r = cu.init(0);
    if (r) {
        cu_text(r, "cuInit", text, sizeof text);
        return di_fail(err, DI_ENODEV, "CUDA: no usable GPU: %s", text);
    }
    int count = 0;
    r = cu.device_count(&count);
    if (r) {
        cu_text(r, "cuDeviceGetCount", text, sizeof text);
        return di_fail(err, DI_ENODEV, "CUDA: %s", text);
    }
    if (count <= 0) return di_fail(err, DI_ENODEV, "CUDA: the driver reports no device");
    if (ordinal < 0 || ordinal >= count)
        return di_fail(err, DI_ENODEV, "CUDA: device ordinal %d is out of range (%d device%s: 0..%d)", ordinal, count,
                       count == 1 ? "" : "s", count - 1);
    r = cu.device_get(d, ordinal);
    if (r) {
        cu_text(r, "cuDeviceGet", text, sizeof text);
        return di_fail(err, DI_ENODEV, "CUDA device %d: %s", ordinal, text);
    }
    return DI_OK;
}

int di_cuda_open(int ordinal, di_cuda **out, di_err *err)
{
    *out = NULL;
    cu_device d = 0;
    int rc = find_device(ordinal, &d, err);
    if (rc) return rc;
    di_cuda *c = calloc(1, sizeof *c);
    if (!c) return di_fail(err, DI_ENOMEM, "CUDA: out of memory");
    c->dev = d;
    cu_ctx ctx = NULL;
    cu_result r;
    if ((rc = read_info(d, &c->info, err))) goto fail;
    if ((r = cu.primary_retain(&ctx, d))) { rc = cu_fail(r, "cuDevicePrimaryCtxRetain", NULL, err); goto fail; }
    c->ctx = ctx;
    if ((r = cu.ctx_set_current(ctx))) { rc = cu_fail(r, "cuCtxSetCurrent", NULL, err); goto fail; }
    if ((r = cu.stream_create(&c->stream, CU_STREAM_DEFAULT_FLAGS))) {
        c->stream = NULL;
        rc = cu_fail(r, "cuStreamCreate", NULL, err);
        goto fail;
    }
    *out = c;
    return DI_OK;
fail:
    di_wrap(err, "CUDA device %d", ordinal);
    di_cuda_close(c);
    return rc;
}

void di_cuda_close(di_cuda *c)
{
    if (!c) return;
    if (c->ctx && !bind(c, NULL) && c->stream) {
        cu.stream_sync(c->stream); /* let queued work finish before its stream goes */
        cu.stream_destroy(c->stream);
    }
    if (c->ctx) cu.primary_release(c->dev);
    free(c);
}

const di_cuda_info *di_cuda_get_info(const di_cuda *c) { return &c->info; }

int di_cuda_alloc(di_cuda *c, size_t bytes, di_dptr *out, di_err *err)
{
    *out = 0;
    if (bytes == 0) return di_fail(err, DI_EUSAGE, "CUDA: cannot allocate 0 bytes");
    int rc = bind(c, err);
    if (rc) return rc;
    cu_dptr p = 0;
    cu_result r = cu.mem_alloc(&p, bytes);
    if (r) {
        char what[128];
        snprintf(what, sizeof what, "allocating %zu bytes on %.64s", bytes, c->info.name);
        return cu_fail(r, "cuMemAlloc_v2", what, err);
    }
    *out = (di_dptr)p;
    return DI_OK;
}

void di_cuda_free(di_cuda *c, di_dptr p)
{
    if (!c || !p || bind(c, NULL)) return;
    cu.mem_free((cu_dptr)p);
}

int di_cuda_upload(di_cuda *c, di_dptr dst, const void *src, size_t bytes, di_err *err)
{
    if (bytes == 0) return DI_OK;
    int rc = bind(c, err);
    if (rc) return rc;
    CU_CHECK(cu.htod((cu_dptr)dst, src, bytes), "cuMemcpyHtoD_v2", err);
    return DI_OK;
}

int di_cuda_download(di_cuda *c, void *dst, di_dptr src, size_t bytes, di_err *err)
{
    if (bytes == 0) return DI_OK;
    int rc = bind(c, err);
    if (rc) return rc;
    CU_CHECK(cu.dtoh(dst, (cu_dptr)src, bytes), "cuMemcpyDtoH_v2", err);
    return DI_OK;
}

int di_cuda_copy(di_cuda *c, di_dptr dst, di_dptr src, size_t bytes, di_err *err)
{
    if (bytes == 0) return DI_OK;
    int rc = bind(c, err);
    if (rc) return rc;
    CU_CHECK(cu.dtod_async((cu_dptr)dst, (cu_dptr)src, bytes, c->stream), "cuMemcpyDtoDAsync_v2", err);
    return DI_OK;
}

int di_cuda_memset8(di_cuda *c, di_dptr dst, uint8_t v, size_t bytes, di_err *err)
{
    if (bytes == 0) return DI_OK;
    int rc = bind(c, err);
    if (rc) return rc;
    CU_CHECK(cu.memset8((cu_dptr)dst, v, bytes), "cuMemsetD8_v2", err);
    return DI_OK;
}

int di_cuda_module_load(di_cuda *c, const void *image, di_cuda_module **out, di_err *err)
{
    *out = NULL;
    if (!image) return di_fail(err, DI_EUSAGE, "CUDA: no module image to load");
    int rc = bind(c, err);
    if (rc) return rc;
    /* Ask for the JIT error log: a PTX image that does not assemble says why there. */
    char jit_log[4096] = {0};
    int opts[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    void *vals[] = {jit_log, (void *)(uintptr_t)sizeof jit_log};
    cu_module m = NULL;
    cu_result r = cu.module_load(&m, image, 2, opts, vals);
    if (r) {
        jit_log[sizeof jit_log - 1] = 0;
        char what[4400];
        snprintf(what, sizeof what, "loading a module on %.128s (%.15s)%s%.4095s", c->info.name, c->info.arch,
                 jit_log[0] ? "; JIT log:\n" : "", jit_log);
        return cu_fail(r, "cuModuleLoadDataEx", what, err);
    }
    di_cuda_module *dm = calloc(1, sizeof *dm);
    if (!dm) {
        cu.module_unload(m);
        return di_fail(err, DI_ENOMEM, "CUDA: out of memory");
    }
    dm->c = c;
    dm->mod = m;
    *out = dm;
    return DI_OK;
}

void di_cuda_module_unload(di_cuda *c, di_cuda_module *m)
{
    if (!m) return;
    if (!bind(c ? c : m->c, NULL)) cu.module_unload(m->mod);
    free(m);
}

int di_cuda_function(di_cuda_module *m, const char *name, void **fn, di_err *err)
{
    *fn = NULL;
    int rc = bind(m->c, err);
    if (rc) return rc;
    cu_function f = NULL;
    cu_result r = cu.module_function(&f, m->mod, name);
    if (r) {
        char what[320];
        snprintf(what, sizeof what, "kernel '%.256s'", name);
        return cu_fail(r, "cuModuleGetFunction", what, err);
    }
    *fn = f;
    return DI_OK;
}

static int launch(di_cuda *c, void *fn, const unsigned grid[3], const unsigned block[3], unsigned smem_bytes,
                  unsigned cluster, void **params, bool waits, di_err *err)
{
    /* An empty grid (no rows this step) has nothing to do, as on the CPU backend. */
    if (!grid[0] || !grid[1] || !grid[2]) return DI_OK;
    if (!fn) return di_fail(err, DI_EUSAGE, "CUDA launch: no kernel function");
    if (smem_bytes > c->info.smem_per_block_optin)
        return di_fail(err, DI_EDEVICE, "CUDA launch: %u bytes of dynamic shared memory asked; %s allows %zu per block",
                       smem_bytes, c->info.name, c->info.smem_per_block_optin);
    int rc = bind(c, err);
    if (rc) return rc;
    cu_function f = fn;
    if (smem_bytes > DEFAULT_SMEM_LIMIT) {
        cu_result r = cu.func_set_attribute(f, CU_FUNC_ATTR_MAX_DYNAMIC_SMEM, (int)smem_bytes);
        if (r) {
            char what[96];
            snprintf(what, sizeof what, "raising the dynamic shared memory limit to %u bytes", smem_bytes);
            return cu_fail(r, "cuFuncSetAttribute", what, err);
        }
    }
    if (cluster > 1 && (!cu.launch_ex || c->info.cc_major < 9 || grid[0] % cluster))
        return di_fail(err, DI_EDEVICE, "CUDA launch: clusters of %u blocks asked for a grid of %u (%s, sm_%d%d%s)", cluster,
                       grid[0], c->info.name, c->info.cc_major, c->info.cc_minor,
                       cu.launch_ex ? "" : ", a driver without cuLaunchKernelEx");
    cu_result r;
    /* griddepcontrol is sm_90's; stream capture records programmatic edges from CUDA 12.3 */
    const bool pdl = waits && cu.launch_ex && c->info.cc_major >= 9 && c->info.driver_version >= 12030;
    const bool ex = pdl || cluster > 1;
    if (ex) {
        cu_launch_attr attrs[2];
        unsigned n = 0;
        if (pdl) attrs[n++] = (cu_launch_attr){.id = CU_LAUNCH_ATTR_PROGRAMMATIC_STREAM_SERIALIZATION, .value.allowed = 1};
        if (cluster > 1) attrs[n++] = (cu_launch_attr){.id = CU_LAUNCH_ATTR_CLUSTER_DIMENSION, .value.dim = {cluster, 1, 1}};
        const cu_launch_config cfg = {{grid[0], grid[1], grid[2]}, {block[0], block[1], block[2]}, smem_bytes,
                                      c->stream, attrs, n};
        r = cu.launch_ex(&cfg, f, params, NULL);
    } else {
        r = cu.launch(f, grid[0], grid[1], grid[2], block[0], block[1], block[2], smem_bytes, c->stream, params, NULL);
    }
    if (r) {
        char what[160];
        snprintf(what, sizeof what, "grid (%u,%u,%u), block (%u,%u,%u), %u bytes of shared memory", grid[0], grid[1],
                 grid[2], block[0], block[1], block[2], smem_bytes);
        return cu_fail(r, ex ? "cuLaunchKernelEx" : "cuLaunchKernel", what, err);
    }
    return DI_OK;
}

int di_cuda_launch(di_cuda *c, void *fn, const unsigned grid[3], const unsigned block[3], unsigned smem_bytes,
                   void **params, di_err *err)
{
    return launch(c, fn, grid, block, smem_bytes, 0, params, false, err);
}

int di_cuda_launch_waiting(di_cuda *c, void *fn, const unsigned grid[3], const unsigned block[3], unsigned smem_bytes,
                           unsigned cluster, void **params, di_err *err)
{
    return launch(c, fn, grid, block, smem_bytes, cluster, params, true, err);
}

int di_cuda_tensor_map_bf16(di_cuda *c, di_tensor_map *m, di_dptr base, uint64_t rows, uint64_t cols,
                            unsigned box_rows, unsigned box_cols, di_err *err)
{
    /* Driver API values: CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, _INTERLEAVE_NONE, _SWIZZLE_128B,
     * _L2_PROMOTION_L2_256B, _FLOAT_OOB_FILL_NONE (elements outside the matrix read as zero) */
    enum { BF16 = 9, INTERLEAVE_NONE = 0, SWIZZLE_128B = 3, L2_256B = 3, OOB_ZERO = 0 };
    (void)c;
    if (!cu.tensor_map_encode_tiled)
        return di_fail(err, DI_EDEVICE, "CUDA: this driver lacks cuTensorMapEncodeTiled (CUDA 12 or newer needed)");
    const uint64_t dims[2] = {cols, rows}, strides[1] = {cols * 2};
    const unsigned box[2] = {box_cols, box_rows}, elem_strides[2] = {1, 1};
    cu_result r = cu.tensor_map_encode_tiled(m->v, BF16, 2, (void *)(uintptr_t)base, dims, strides, box, elem_strides,
                                             INTERLEAVE_NONE, SWIZZLE_128B, L2_256B, OOB_ZERO);
    if (r) {
        char what[160];
        snprintf(what, sizeof what, "a %llu x %llu bf16 matrix in %u x %u boxes", (unsigned long long)rows,
                 (unsigned long long)cols, box_rows, box_cols);
        return cu_fail(r, "cuTensorMapEncodeTiled", what, err);
    }
    return DI_OK;
}

int di_cuda_sync(di_cuda *c, di_err *err)
{
    int rc = bind(c, err);
    if (rc) return rc;
    CU_CHECK(cu.stream_sync(c->stream), "cuStreamSynchronize", err);
    return DI_OK;
}

int di_cuda_make_current(const di_cuda *c, di_err *err) { return bind(c, err); }

void *di_cuda_stream(const di_cuda *c) { return c->stream; }

int di_cuda_event_create(di_cuda *c, di_cuda_event **ev, di_err *err)
{
    *ev = NULL;
    int rc = bind(c, err);
    if (rc) return rc;
    di_cuda_event *e = calloc(1, sizeof *e);
    if (!e) return di_fail(err, DI_ENOMEM, "CUDA: out of memory");
    cu_result r = cu.event_create(&e->ev, CU_EVENT_DEFAULT_FLAGS);
    if (r) {
        free(e);
        return cu_fail(r, "cuEventCreate", NULL, err);
    }
    e->c = c;
    *ev = e;
    return DI_OK;
}

int di_cuda_event_record(di_cuda *c, di_cuda_event *ev, di_err *err)
{
    int rc = bind(c, err);
    if (rc) return rc;
    CU_CHECK(cu.event_record(ev->ev, c->stream), "cuEventRecord", err);
    return DI_OK;
}

int di_cuda_event_elapsed_ms(di_cuda_event *a, di_cuda_event *b, float *ms, di_err *err)
{
    *ms = 0;
    int rc = bind(a->c, err);
    if (rc) return rc;
    CU_CHECK(cu.event_sync(b->ev), "cuEventSynchronize", err);
    CU_CHECK(cu.event_elapsed(ms, a->ev, b->ev), "cuEventElapsedTime", err);
    return DI_OK;
}

void di_cuda_event_destroy(di_cuda_event *ev)
{
    if (!ev) return;
    if (!bind(ev->c, NULL)) cu.event_destroy(ev->ev);
    free(ev);
}

/* ---- graphs ---------------------------------------------------------------------------- */

static bool have_graphs(void)
{
    return cu.capture_begin && cu.capture_end && cu.graph_instantiate && cu.graph_launch && cu.graph_exec_destroy &&
           cu.graph_destroy && cu.graph_nodes;
}

bool di_cuda_has_graphs(const di_cuda *c) { return c && have_graphs(); }

/* Thread-local mode: a call on this thread that would not be recorded (a synchronous upload,
 * an allocation's memset) fails the capture instead of running outside the graph unseen. */
int di_cuda_capture_begin(di_cuda *c, di_err *err)
{
    if (!have_graphs()) return di_fail(err, DI_EDEVICE, "CUDA: this driver lacks the graph entry points (11.4 or newer)");
    int rc = bind(c, err);
    if (rc) return rc;
    CU_CHECK(cu.capture_begin(c->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), "cuStreamBeginCapture_v2", err);
    return DI_OK;
}

int di_cuda_capture_end(di_cuda *c, di_cuda_graph **out, di_err *err)
{
    if (out) *out = NULL;
    int rc = bind(c, err);
    if (rc) return rc;
    cu_graph g = NULL;
    CU_CHECK(cu.capture_end(c->stream, &g), "cuStreamEndCapture", err);
    if (!out) { cu.graph_destroy(g); return DI_OK; }
    di_cuda_graph *dg = calloc(1, sizeof *dg);
    cu_result r = dg ? cu.graph_nodes(g, NULL, &dg->nodes) : 0;
    if (dg && !r) r = cu.graph_instantiate(&dg->exec, g, 0);
    cu.graph_destroy(g);   /* the executable graph keeps what it needs */
    if (!dg) return di_fail(err, DI_ENOMEM, "CUDA: out of memory");
    if (r) {
        free(dg);
        return cu_fail(r, "cuGraphInstantiateWithFlags", NULL, err);
    }
    dg->c = c;
    *out = dg;
    return DI_OK;
}

size_t di_cuda_graph_nodes(const di_cuda_graph *g) { return g->nodes; }

int di_cuda_graph_launch(di_cuda *c, di_cuda_graph *g, di_err *err)
{
    int rc = bind(c, err);
    if (rc) return rc;
    CU_CHECK(cu.graph_launch(g->exec, c->stream), "cuGraphLaunch", err);
    return DI_OK;
}

void di_cuda_graph_free(di_cuda_graph *g)
{
    if (!g) return;
    if (!bind(g->c, NULL)) cu.graph_exec_destroy(g->exec);
    free(g);
}
