/* A Llama-family transformer assembled from kernels.def ops. Weights are read from GGUF,
 * converted once to the runtime format (bf16 matrices, f32 norms; q|k|v and gate|up fused
 * row-wise), and the same bytes feed every backend. */
#ifndef DI_MODEL_H
#define DI_MODEL_H
#include <stdbool.h>
#include <stdint.h>
#include "model/arch.h"
#include "model/gguf.h"
#include "runtime/backend.h"

typedef struct di_config {
    const di_arch *arch;      /* model/arch.def: what the layers are made of */
    int n_layers, dim, ffn, n_heads, n_kv_heads, head_dim, vocab, ctx_train;
    float rope_base, eps;
    float rope_scale;         /* linear RoPE scaling: positions divided by this (1: none) */
    bool rope_freqs;          /* rope_freqs.weight: per-pair frequency factors (Llama 3's rope scaling) */
    int window;               /* sliding-window layers' keys (arch->swa_period > 0) */
    float rope_base_swa;      /* their RoPE base */
} di_config;

/* Whether layer l of c sees a sliding window (else every earlier key). */
bool di_config_layer_windowed(const di_config *c, int l);

typedef struct di_model di_model;

/* The configuration di_model_load would use, read from an open GGUF without loading weights
 * (generate --info): DI_EUSAGE naming the architecture when it is not one detinfer runs. */
int di_model_read_config(const di_gguf *g, di_config *c, di_err *err);

/* How weight matrices are held. AUTO: the exact profile (on the CPU with kernels built by cc, and
 * on the GPU) keeps Q4_0/Q4_1/Q5_x/Q8_0/IQ4_NL/Q4_K/Q5_K matrices as packed codes (model/pack.h),
 * 0.75 or 1.25 bytes a weight, so both read the same records; every other matrix (every one
 * under libtcc, and in the GPU's fast and vendor profiles) as bf16. PACKED: as AUTO, and in the
 * GPU's fast profile too, where the tensor-core matmul decodes the records into its bf16 tile
 * (a third of the memory; slower today, perf/RESULTS.md "packed fast"). BF16: bf16 everywhere.
 * All give the same bits: a packed weight decodes to its bf16 value. */
#define DI_WEIGHTS_MODES(X) X(AUTO, "auto") X(PACKED, "packed") X(BF16, "bf16")
typedef enum {
#define DI_WEIGHTS_ENUM(id, name) DI_WEIGHTS_##id,
    DI_WEIGHTS_MODES(DI_WEIGHTS_ENUM)
#undef DI_WEIGHTS_ENUM
} di_weights;
bool di_weights_parse(const char *name, di_weights *out);

/* How a step's launches are issued. AUTO: on the GPU in exact and fast, rows padded to a bucket,
 * the layers recorded once per row bucket and the head once per output-row bucket as CUDA
 * graphs, then replayed; elsewhere one launch at a time, unpadded (the CPU; the vendor profile,
 * whose split counts follow the rows, so that padding would change the other rows' bits).
 * EAGER: always one at a time, unpadded. PADDED: padded as a graph would be but launched one at
 * a time (the tests compare the three bitwise). GRAPHS: as AUTO, refused where there are no
 * graphs. Padded rows run token 0 at position 0 of a scratch sequence with its own KV block;
 * invariant kernels give every other row the same bits with or without them. */
#define DI_LAUNCH_MODES(X) X(AUTO, "auto") X(EAGER, "eager") X(PADDED, "padded") X(GRAPHS, "graphs")
typedef enum {
#define DI_LAUNCH_ENUM(id, name) DI_LAUNCH_##id,
    DI_LAUNCH_MODES(DI_LAUNCH_ENUM)
#undef DI_LAUNCH_ENUM
} di_launch_mode;
const char *di_launch_name(di_launch_mode l);
bool di_launch_parse(const char *name, di_launch_mode *out);

typedef struct di_model_opts {
    int max_batch_tokens;   /* rows one forward step may carry */
    int ctx;                /* positions per sequence (rope table, block table width) */
    int kv_blocks;          /* KV cache pool size, in blocks of KVB positions */
    int max_seqs;           /* block-table rows */
    di_weights weights;     /* DI_WEIGHTS_AUTO (0): packed where the kernels read packs */
    di_launch_mode launch;  /* DI_LAUNCH_AUTO (0): graphs where they change no bit */
} di_model_opts;

/* Opens the GGUF, checks it is a model of an architecture in model/arch.def with every tensor present and well shaped,
 * converts and uploads the weights, and prepares every kernel. */
int di_model_load(const char *path, di_rt *rt, const di_model_opts *o, di_model **out, di_err *err);
/* The same from a GGUF the caller opened (and keeps open until di_model_free). */
int di_model_load_gguf(const di_gguf *g, di_rt *rt, const di_model_opts *o, di_model **out, di_err *err);
void di_model_free(di_model *m);
const di_config *di_model_config(const di_model *m);
const di_gguf *di_model_gguf(const di_model *m);
int di_model_kv_block(void);   /* KVB of the kv_write/attention specs */
int di_model_kv_blocks(const di_model *m);  /* blocks in the KV pool */
int di_model_max_seqs(const di_model *m);
/* How the weight matrices are held: their bytes (the embedding table included), the bytes a
 * decode step reads (layer matrices and the head), how many matrices there are, how many packed. */
typedef struct di_model_weights { size_t bytes, step_bytes; int matrices, packed; } di_model_weights;
di_model_weights di_model_weights_info(const di_model *m);
/* Bytes of K and V one cached position takes over all layers (bf16 in the fast profile's
 * tensor-core layers, f32 elsewhere). */
size_t di_model_kv_bytes_per_pos(const di_model *m);

/* One forward step over a ragged batch: token i belongs to sequence seq[i] at position pos[i].
 * Its k/v are written to that sequence's blocks (block table set with di_model_set_blocks)
 * before attention reads them. For the n_out rows listed in out_rows, writes the log-probs
 * (n_out x vocab) and the greedy ids (argmax of the logits, ties to the lowest id). */
typedef struct di_step {
    int n;
    const int32_t *tokens, *pos, *seq;
    int n_out;
    const int32_t *out_rows;
    float *logprobs;        /* n_out x vocab, or NULL */
    float *logits;          /* n_out x vocab, or NULL */
    int32_t *greedy;        /* n_out, or NULL */
} di_step;
int di_model_forward(di_model *m, const di_step *s, di_err *err);
/* Whether steps are padded and replayed as graphs (the load's choice for DI_LAUNCH_AUTO). */
di_launch_mode di_model_launch(const di_model *m);
/* Rows a step of n rows is padded to (n itself when steps are not padded). */
int di_model_step_rows(const di_model *m, int n);

/* Block table row of a sequence slot: blocks[i] holds positions [i*KVB, (i+1)*KVB). */
int di_model_set_blocks(di_model *m, int slot, const int32_t *blocks, int n_blocks, di_err *err);

#endif
