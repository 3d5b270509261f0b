/* CUDA Driver API through dlopen("libcuda.so.1"). Builds and runs without CUDA present:
 * di_cuda_open returns DI_ENODEV with a message when there is no driver or no device. */
#ifndef DI_CUDA_H
#define DI_CUDA_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "base/err.h"

typedef uint64_t di_dptr; /* device address (CUdeviceptr) */
typedef struct di_cuda di_cuda;
typedef struct di_cuda_module di_cuda_module;
typedef struct di_cuda_event di_cuda_event;
typedef struct di_cuda_graph di_cuda_graph;

typedef struct di_cuda_info {
    char name[256];
    int cc_major, cc_minor;
    int sm_count;
    size_t smem_per_block_optin;
    size_t total_mem;
    char arch[16];              /* "sm_90a" on Hopper (the 'a' target for cc 9.0), "sm_80", ... */
    int driver_version;
} di_cuda_info;

int di_cuda_open(int ordinal, di_cuda **out, di_err *err);  /* dlopen, cuInit, device, context, one stream */
void di_cuda_close(di_cuda *c);
const di_cuda_info *di_cuda_get_info(const di_cuda *c);

int di_cuda_alloc(di_cuda *c, size_t bytes, di_dptr *out, di_err *err);
void di_cuda_free(di_cuda *c, di_dptr p);
int di_cuda_upload(di_cuda *c, di_dptr dst, const void *src, size_t bytes, di_err *err);
int di_cuda_download(di_cuda *c, void *dst, di_dptr src, size_t bytes, di_err *err);
/* device to device, on the stream (ordered with the launches) */
int di_cuda_copy(di_cuda *c, di_dptr dst, di_dptr src, size_t bytes, di_err *err);
int di_cuda_memset8(di_cuda *c, di_dptr dst, uint8_t v, size_t bytes, di_err *err);

int di_cuda_module_load(di_cuda *c, const void *image, di_cuda_module **out, di_err *err); /* cubin or PTX */
void di_cuda_module_unload(di_cuda *c, di_cuda_module *m);
int di_cuda_function(di_cuda_module *m, const char *name, void **fn, di_err *err);
/* params: array of pointers to each argument's value, as cuLaunchKernel takes them. */
int di_cuda_launch(di_cuda *c, void *fn, const unsigned grid[3], const unsigned block[3],
                   unsigned smem_bytes, void **params, di_err *err);
/* The same for a kernel that runs griddepcontrol.wait before it touches memory other kernels
 * use (codegen's DI_GRID_ENTRY, in every generated entry): on sm_90+ it is launched with
 * programmatic stream serialization, so it may be scheduled while the kernel before it still
 * runs; its wait orders it after that one. cluster > 1: blocks x, x + 1 .. in groups of
 * `cluster` along grid x form thread-block clusters (sm_90+; grid[0] a multiple of it). */
int di_cuda_launch_waiting(di_cuda *c, void *fn, const unsigned grid[3], const unsigned block[3],
                           unsigned smem_bytes, unsigned cluster, void **params, di_err *err);
int di_cuda_sync(di_cuda *c, di_err *err);

/* A TMA descriptor (CUtensorMap, 128 bytes, passed to kernels by value) for a row-major bf16
 * matrix [rows][cols] read in boxes of box_rows x box_cols with the 128-byte swizzle
 * (box_cols * 2 <= 128); elements outside the matrix read as zero. cols * 2 must be a
 * multiple of 16 and base 16-byte aligned. */
typedef struct di_tensor_map {
    _Alignas(64) uint64_t v[16];
} di_tensor_map;
int di_cuda_tensor_map_bf16(di_cuda *c, di_tensor_map *m, di_dptr base, uint64_t rows, uint64_t cols,
                            unsigned box_rows, unsigned box_cols, di_err *err);
/* For libraries that enqueue their own kernels (cuBLASLt): make the context current on this
 * thread, and the stream every launch goes to (a CUstream), so their work is ordered with ours. */
int di_cuda_make_current(const di_cuda *c, di_err *err);
void *di_cuda_stream(const di_cuda *c);

int di_cuda_event_create(di_cuda *c, di_cuda_event **ev, di_err *err);
int di_cuda_event_record(di_cuda *c, di_cuda_event *ev, di_err *err);
int di_cuda_event_elapsed_ms(di_cuda_event *a, di_cuda_event *b, float *ms, di_err *err);
void di_cuda_event_destroy(di_cuda_event *ev);

/* Graphs (stream capture): launches made between capture_begin and capture_end are recorded,
 * not run; a graph launch runs them again on the stream, each kernel with the parameters it
 * was recorded with. capture_end with out == NULL discards the recording. */
bool di_cuda_has_graphs(const di_cuda *c);
int di_cuda_capture_begin(di_cuda *c, di_err *err);
int di_cuda_capture_end(di_cuda *c, di_cuda_graph **out, di_err *err);
size_t di_cuda_graph_nodes(const di_cuda_graph *g);
int di_cuda_graph_launch(di_cuda *c, di_cuda_graph *g, di_err *err);
void di_cuda_graph_free(di_cuda_graph *g);

#endif
