/* The forward pass over a ragged token batch, every op a kernels.def kernel, for every
 * architecture of model/arch.def (Llama, Mistral, Qwen 2/3, Gemma 3): what differs between them
 * is the table's fields, read here in one place per layer step.
 * Read top to bottom: load (config, weights), then one step (embed, layers, logits). */
#define _GNU_SOURCE   /* sched_getaffinity */
#include "model/model.h"
#include "model/config.h"
#include "model/pack.h"
#include "model/quant.h"
#include <stdatomic.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A weight matrix, in the format it was loaded in (bf16 or packed codes), and the matmul that
 * reads that format. */
typedef struct wmat {
    di_buf *buf;
    di_dtype fmt;
    size_t bf16_bytes;   /* what it takes as bf16 */
    di_kernel *k;
} wmat;

typedef struct layer {
    di_buf *attn_norm, *ffn_norm;
    wmat wqkv, wo, wgu, wdown;
    di_buf *bqkv;                     /* qkv_bias: [q | k | v] biases */
    di_buf *q_norm, *k_norm;          /* qk_norm */
    di_buf *post_attn, *post_ffn;     /* post_norms */
} layer;

/* every kernel a step launches, specialized to this model (NULL where the architecture has none) */
typedef struct kernels {
    di_kernel *embed, *rmsnorm, *rmsnorm_x, *qk_norm, *rope, *kv_write, *kv_write_window, *attention, *attention_window;
    di_kernel *act, *residual_add, *gather, *log_softmax, *argmax;
} kernels;

/* A part of a step recorded as a graph (see "graphs" below). */
typedef struct step_graph {
    bool seen;                /* launched once unrecorded (its workspaces grown) */
    di_rt_graph *g;           /* NULL until recorded */
} step_graph;
enum { N_BUCKETS = 14 };      /* the row buckets below */

struct di_model {
    di_config c;
    di_model_opts o;
    di_gguf *g;
    bool owns_g;                     /* opened by di_model_load (else borrowed from the caller) */
    di_rt *rt;
    layer *layers;
    bool pack;                       /* matrices packed where they can be (the C backend, exact) */
    bool kv16;                       /* fast on the GPU: bf16 K and V where the tensor-core attention reads them */
    bool x16;                        /* fast on the GPU: the norms and the activation before a matmul store bf16 */
    di_buf *embd, *out_norm, *rope_cs, *rope_cs_swa;   /* RoPE tables: global, sliding-window layers */
    wmat lm_head;                    /* output.weight, or token_embd.weight again (tied) */
    di_buf **kc, **vc, *btab;       /* KV cache per layer, block table */
    int32_t *btab_host;
    int maxb;                        /* block-table width: ctx / KVB rounded up */
    /* per-step activations, max_batch_tokens rows */
    di_buf *tok, *pos, *seq, *rows, *h, *xn, *qkv, *att, *gu, *act, *hsel, *logits, *lp, *ids;
    di_buf *blk_out;                  /* post_norms: a block's output before its norm joins h */
    kernels k;
    float embed_scale;                /* embed_scale: sqrt(dim), rounded to f32 once */
    /* how steps are launched: DI_LAUNCH_EAGER, _PADDED or _GRAPHS (AUTO resolved at load) */
    di_launch_mode launch;
    int32_t *stage;                   /* a step's tokens, positions, slots, out rows, padded */
    /* DI_LAUNCH_GRAPHS: the layers per row bucket, the head per output-row bucket */
    step_graph body[N_BUCKETS], head[N_BUCKETS];
};

const di_config *di_model_config(const di_model *m) { return &m->c; }
const di_gguf *di_model_gguf(const di_model *m) { return m->g; }
int di_model_kv_block(void) { return di_rt_kv_block(); }
int di_model_kv_blocks(const di_model *m) { return m->o.kv_blocks; }
int di_model_max_seqs(const di_model *m) { return m->o.max_seqs; }

static void count_matrix(di_model_weights *w, const wmat *x)
{
    w->bytes += x->buf->bytes;
    w->step_bytes += x->buf->bytes;
    w->matrices++;
    w->packed += x->fmt != DI_BF16;
}

di_model_weights di_model_weights_info(const di_model *m)
{
    di_model_weights w = {.bytes = m->embd->bytes};
    for (int l = 0; l < m->c.n_layers; l++) {
        const layer *L = &m->layers[l];
        count_matrix(&w, &L->wqkv), count_matrix(&w, &L->wo), count_matrix(&w, &L->wgu), count_matrix(&w, &L->wdown);
    }
    if (m->lm_head.buf != m->embd) count_matrix(&w, &m->lm_head);
    else w.matrices++, w.step_bytes += m->embd->bytes;
    return w;
}

/* (the configuration is read and checked by model/config.c) */

int di_model_read_config(const di_gguf *g, di_config *c, di_err *err) { return di_config_read(g, c, err); }

/* ---- weights --------------------------------------------------------------------------- */

static const di_gguf_tensor *tensor(const di_model *m, const char *name, uint64_t in, uint64_t out, di_err *err)
{
    const di_gguf_tensor *t = di_gguf_tensor_find(m->g, name);
    if (!t) { di_fail(err, DI_EFORMAT, "%s: missing tensor %s", m->g->path, name); return NULL; }
    bool ok = out == 1 ? t->n_elems == in : t->n_dims == 2 && t->dims[0] == in && t->dims[1] == out;
    if (!ok) {
        di_fail(err, DI_EFORMAT, "%s: tensor %s has shape [%llu, %llu], expected [%llu, %llu]", m->g->path, name,
                (unsigned long long)t->dims[0], (unsigned long long)(t->n_dims > 1 ? t->dims[1] : 1),
                (unsigned long long)in, (unsigned long long)out);
        return NULL;
    }
    return t;
}

/* ---- matrices: bf16, or packed codes (model/pack.h) -------------------------------------- */

enum { LOAD_MAX_THREADS = 16, LOAD_MIN_ROWS = 64 };

/* The CPUs this process may run on (a container's affinity mask, not the host's count). */
static long usable_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
    return sysconf(_SC_NPROCESSORS_ONLN);
}

/* rows [row0, row1) of one job; rows are independent, so any split over threads gives the same bytes */
typedef int (*rows_fn)(void *ctx, uint64_t row0, uint64_t row1, di_err *err);
typedef struct { rows_fn fn; void *ctx; uint64_t row0, row1; di_err err; int rc; } rows_job;

static void *run_rows(void *arg)
{
    rows_job *j = arg;
    j->rc = j->fn(j->ctx, j->row0, j->row1, &j->err);
    return NULL;
}

/* fn over `rows` rows on up to 16 threads, split at multiples of `align` (dequantization and
 * rounding dominate the load of a large model: an 8B model took ~30 s on one thread) */
static int for_rows(uint64_t rows, uint64_t align, rows_fn fn, void *ctx, di_err *err)
{
    long cpus = usable_cpus();
    uint64_t n = cpus < 1 ? 1 : cpus > LOAD_MAX_THREADS ? LOAD_MAX_THREADS : (uint64_t)cpus;
    if (rows / LOAD_MIN_ROWS < n) n = rows / LOAD_MIN_ROWS ? rows / LOAD_MIN_ROWS : 1;
    rows_job jobs[LOAD_MAX_THREADS];
    pthread_t tids[LOAD_MAX_THREADS];
    bool started[LOAD_MAX_THREADS] = {false};
    for (uint64_t i = 0; i < n; i++) {
        uint64_t r0 = rows * i / n / align * align, r1 = i + 1 == n ? rows : rows * (i + 1) / n / align * align;
        jobs[i] = (rows_job){.fn = fn, .ctx = ctx, .row0 = r0, .row1 = r1};
        started[i] = i > 0 && pthread_create(&tids[i], NULL, run_rows, &jobs[i]) == 0;
        if (i > 0 && !started[i]) run_rows(&jobs[i]);   /* no thread: do it here */
    }
    run_rows(&jobs[0]);
    int rc = DI_OK;
    for (uint64_t i = 0; i < n; i++) {
        if (started[i]) pthread_join(tids[i], NULL);
        if (jobs[i].rc && !rc) {
            *err = jobs[i].err;
            rc = jobs[i].rc;
        }
    }
    return rc;
}

/* bf16: each row through an f32 row, rounded by the load-time conversion */
typedef struct { const di_gguf *g; const di_gguf_tensor *t; uint64_t in; uint16_t *dst; } convert_ctx;

static int convert_rows(void *arg, uint64_t row0, uint64_t row1, di_err *err)
{
    convert_ctx *c = arg;
    float *f = malloc(c->in * sizeof(float));
    if (!f) return di_fail(err, DI_ENOMEM, "out of memory loading %s", c->t->name);
    int rc = DI_OK;
    for (uint64_t r = row0; r < row1 && !rc; r++) {
        rc = di_gguf_to_f32_range(c->g, c->t, r * c->in, c->in, f, err);
        for (uint64_t k = 0; k < c->in && !rc; k++) c->dst[r * c->in + k] = di_bf16_of(f[k]);
    }
    free(f);
    return rc;
}

/* packed: groups of 8 rows per thread; same is false when any weight would not decode alike */
typedef struct { const di_pack_src *src; di_dtype fmt; uint8_t *dst; atomic_bool same; } pack_ctx;

static int pack_rows(void *arg, uint64_t row0, uint64_t row1, di_err *err)
{
    pack_ctx *c = arg;
    bool same = true;
    int rc = di_pack_rows(c->src, c->fmt, row0, row1, c->dst, &same, err);
    if (!same) atomic_store(&c->same, false);
    return rc;
}

/* Whether the matmul for a [rows, in] matrix reads packed records (format fmt) with the bf16
 * matrix's bits: the C backend and the GPU's exact profile always (the class lowering's decode);
 * the fast profile where its tensor-core matmul takes the shape (the large tile's producer warps
 * and the few-rows tile decode them; no other fast matmul reads them). */
static bool reads_packed(const di_model *m, di_dtype fmt, uint64_t rows, uint64_t in)
{
    if (di_rt_profile(m->rt) != DI_PROFILE_FAST) return true;
    di_dim_value dv[] = {{"K", (long)in}, {"N", (long)rows}};
    return di_rt_op_available(m->rt, DI_OP_matmul, dv, 2, (const di_arg_dtype[]){{"w", fmt}, {"x", DI_BF16}}, 2);
}

/* The stacked matrix packed as fmt into dst->buf, or dst->buf NULL when some weight would
 * decode to another value than its bf16 conversion (or a scale does not fit fmt's). */
static int pack_matrix(di_model *m, const di_pack_src *src, di_dtype fmt, uint64_t rows, wmat *dst, const char *name,
                       di_err *err)
{
    size_t bytes = di_pack_bytes(fmt, (long)rows, (long)src->in);
    pack_ctx pc = {src, fmt, calloc(1, bytes), true};
    int rc = !pc.dst ? di_fail(err, DI_ENOMEM, "out of memory loading %s", name)
                     : for_rows(rows, DI_PACK_LANES, pack_rows, &pc, err);
    if (!rc && atomic_load(&pc.same) && !(rc = di_buf_alloc(m->rt, bytes, &dst->buf, err)))
        rc = di_buf_write(dst->buf, 0, pc.dst, bytes, err);
    free(pc.dst);
    if (!rc && dst->buf) dst->fmt = fmt;
    return rc;
}

/* Several GGUF matrices [in, out_i] stacked row-wise into one [sum out_i, in] buffer: packed
 * when the runtime's kernels read packs and every weight decodes to its bf16 value, else bf16.
 * The fast profile tries binary16 scales first (Q4X8H, Q8X8H: the file's bytes for Q4_1). */
static int load_matrix(di_model *m, const char *const *names, const uint64_t *outs, int count, uint64_t in,
                       bool packable, wmat *dst, di_err *err)
{
    const di_gguf_tensor *ts[4];
    uint64_t rows = 0;
    for (int i = 0; i < count; i++) {
        if (!(ts[i] = tensor(m, names[i], in, outs[i], err))) return err->code;
        rows += outs[i];
    }
    di_pack_src src = {m->g, ts, outs, count, in};
    dst->bf16_bytes = rows * in * 2;
    di_dtype fmt = m->pack && packable ? di_pack_format(&src) : DI_BF16;
    dst->fmt = DI_BF16;
    if (fmt != DI_BF16) {
        bool fast = di_rt_profile(m->rt) == DI_PROFILE_FAST;
        const di_dtype tries[2] = {fast ? di_pack_half(fmt) : fmt, fmt};
        for (int i = 0; i < 2 && !dst->buf; i++) {
            if (i && tries[1] == tries[0]) break;
            if (!reads_packed(m, tries[i], rows, in)) continue;
            int rc = pack_matrix(m, &src, tries[i], rows, dst, names[0], err);
            if (rc) return rc;
        }
        if (dst->buf) return DI_OK;
        /* a weight that would decode otherwise: the matrix stays bf16 */
    }
    uint16_t *b = malloc(rows * in * 2);
    int rc = !b ? di_fail(err, DI_ENOMEM, "out of memory loading %s", names[0]) : DI_OK;
    uint64_t row = 0;
    for (int i = 0; i < count && !rc; i++) {
        convert_ctx cc = {m->g, ts[i], in, b + row * in};
        rc = for_rows(outs[i], 1, convert_rows, &cc, err);
        row += outs[i];
    }
    if (!rc && !(rc = di_buf_alloc(m->rt, rows * in * 2, &dst->buf, err))) rc = di_buf_write(dst->buf, 0, b, rows * in * 2, err);
    free(b);
    return rc;
}

static int load_vector(di_model *m, const char *name, uint64_t n, di_buf **dst, di_err *err)
{
    const di_gguf_tensor *t = tensor(m, name, n, 1, err);
    if (!t) return err->code;
    float *f = malloc(n * sizeof(float));
    if (!f) return di_fail(err, DI_ENOMEM, "out of memory loading %s", name);
    int rc = di_gguf_to_f32(m->g, t, f, err);
    if (!rc && !(rc = di_buf_alloc(m->rt, n * 4, dst, err))) rc = di_buf_write(*dst, 0, f, n * 4, err);
    free(f);
    return rc;
}

/* "blk.<l>.<what>" */
static const char *lname(char buf[80], int l, const char *what)
{
    snprintf(buf, 80, "blk.%d.%s", l, what);
    return buf;
}

/* Several GGUF vectors concatenated into one f32 buffer. */
static int load_vectors(di_model *m, const char *const *names, const uint64_t *lens, int count, di_buf **dst,
                        di_err *err)
{
    uint64_t total = 0, at = 0;
    for (int i = 0; i < count; i++) total += lens[i];
    float *f = malloc(total * sizeof(float));
    if (!f) return di_fail(err, DI_ENOMEM, "out of memory loading %s", names[0]);
    int rc = DI_OK;
    for (int i = 0; i < count && !rc; i++) {
        const di_gguf_tensor *t = tensor(m, names[i], lens[i], 1, err);
        rc = !t ? err->code : di_gguf_to_f32(m->g, t, f + at, err);
        at += lens[i];
    }
    if (!rc && !(rc = di_buf_alloc(m->rt, total * 4, dst, err))) rc = di_buf_write(*dst, 0, f, total * 4, err);
    free(f);
    return rc;
}

static int load_layer(di_model *m, int l, di_err *err)
{
    const di_config *c = &m->c;
    const di_arch *a = c->arch;
    layer *L = &m->layers[l];
    char q[80], k[80], v[80], o[80], gate[80], up[80], down[80], an[80], fn[80];
    uint64_t D = (uint64_t)c->dim, Q = (uint64_t)c->n_heads * c->head_dim, KV = (uint64_t)c->n_kv_heads * c->head_dim;
    uint64_t HD = (uint64_t)c->head_dim;
    const char *qkv[] = {lname(q, l, "attn_q.weight"), lname(k, l, "attn_k.weight"), lname(v, l, "attn_v.weight")};
    const char *wo[] = {lname(o, l, "attn_output.weight")}, *dn[] = {lname(down, l, "ffn_down.weight")};
    const char *gu[] = {lname(gate, l, "ffn_gate.weight"), lname(up, l, "ffn_up.weight")};
    uint64_t qkv_out[] = {Q, KV, KV}, wo_out[] = {D}, gu_out[] = {(uint64_t)c->ffn, (uint64_t)c->ffn}, dn_out[] = {D};
    if (load_vector(m, lname(an, l, "attn_norm.weight"), D, &L->attn_norm, err) ||
        load_vector(m, lname(fn, l, "ffn_norm.weight"), D, &L->ffn_norm, err) ||
        load_matrix(m, qkv, qkv_out, 3, D, true, &L->wqkv, err) || load_matrix(m, wo, wo_out, 1, Q, true, &L->wo, err) ||
        load_matrix(m, gu, gu_out, 2, D, true, &L->wgu, err) ||
        load_matrix(m, dn, dn_out, 1, (uint64_t)c->ffn, true, &L->wdown, err))
        return err->code;
    if (a->qkv_bias) {
        const char *b[] = {lname(q, l, "attn_q.bias"), lname(k, l, "attn_k.bias"), lname(v, l, "attn_v.bias")};
        if (load_vectors(m, b, qkv_out, 3, &L->bqkv, err)) return err->code;
    }
    if (a->qk_norm && (load_vector(m, lname(q, l, "attn_q_norm.weight"), HD, &L->q_norm, err) ||
                       load_vector(m, lname(k, l, "attn_k_norm.weight"), HD, &L->k_norm, err)))
        return err->code;
    if (a->post_norms && (load_vector(m, lname(an, l, "post_attention_norm.weight"), D, &L->post_attn, err) ||
                          load_vector(m, lname(fn, l, "post_ffw_norm.weight"), D, &L->post_ffn, err)))
        return err->code;
    return DI_OK;
}

/* cos, sin of (pos / scale) * base^(-2i/HD) / factor_i in double, rounded once: the same table
 * for every backend. factor_i: Llama 3's rope_freqs.weight (1 without it). */
static int rope_table(di_model *m, double base, const float *factor, di_buf **dst, di_err *err)
{
    const di_config *c = &m->c;
    size_t n = (size_t)m->o.ctx * c->head_dim;
    float *cs = malloc(n * sizeof(float));
    if (!cs) return di_fail(err, DI_ENOMEM, "out of memory (rope table)");
    for (int p = 0; p < m->o.ctx; p++)
        for (int i = 0; i < c->head_dim / 2; i++) {
            double a = p / (double)c->rope_scale * pow(base, -2.0 * i / c->head_dim) / (factor ? factor[i] : 1.0);
            cs[(size_t)p * c->head_dim + 2 * i] = (float)cos(a);
            cs[(size_t)p * c->head_dim + 2 * i + 1] = (float)sin(a);
        }
    int rc = di_buf_alloc(m->rt, n * 4, dst, err);
    if (!rc) rc = di_buf_write(*dst, 0, cs, n * 4, err);
    free(cs);
    return rc;
}

static int load_rope(di_model *m, di_err *err)
{
    const di_config *c = &m->c;
    float *factor = NULL;
    int rc = DI_OK;
    if (c->rope_freqs) {
        const di_gguf_tensor *t = di_gguf_tensor_find(m->g, "rope_freqs.weight");
        if (!(factor = malloc(t->n_elems * sizeof(float)))) return di_fail(err, DI_ENOMEM, "out of memory (rope_freqs)");
        rc = di_gguf_to_f32(m->g, t, factor, err);
        for (uint64_t i = 0; !rc && i < t->n_elems; i++)
            if (!(isfinite(factor[i]) && factor[i] > 0))
                rc = di_fail(err, DI_EFORMAT, "%s: rope_freqs.weight[%llu] = %g must be positive and finite", m->g->path,
                             (unsigned long long)i, (double)factor[i]);
    }
    if (!rc) rc = rope_table(m, c->rope_base, factor, &m->rope_cs, err);
    if (!rc && c->arch->swa_period) rc = rope_table(m, c->rope_base_swa, factor, &m->rope_cs_swa, err);
    free(factor);
    return rc;
}

/* ---- kernels ------------------------------------------------------------------------------ */

/* y16: y stored as bf16, for a matmul's x (x16) */
static int kernel_y(di_model *m, di_op op, const char *const *dims, const long *vals, int n, bool y16, di_kernel **out,
                    di_err *err)
{
    di_dim_value dv[8];
    for (int i = 0; i < n; i++) dv[i] = (di_dim_value){dims[i], vals[i]};
    di_arg_dtype y = {"y", DI_BF16};
    return di_rt_op_kernel(m->rt, op, dv, n, &y, y16, out, err);
}

static int kernel(di_model *m, di_op op, const char *const *dims, const long *vals, int n, di_kernel **out, di_err *err)
{
    return kernel_y(m, op, dims, vals, n, false, out, err);
}

/* The matmul y[rows, N] = x[rows, K] . w^T that reads w's format, and x as bf16 where the
 * kernel before it stores bf16 (x16: the x the fast matmul would have cast, so the same bits). */
static int matmul(di_model *m, di_op op, long K, long N, bool x16, wmat *w, di_err *err)
{
    di_dim_value dv[] = {{"K", K}, {"N", N}};
    di_arg_dtype t[] = {{"w", w->fmt}, {"x", DI_BF16}};
    return di_rt_op_kernel(m->rt, op, dv, 2, t, x16 ? 2 : 1, &w->k, err);
}

/* The attention of the fast profile's tensor-core layers (kv16): bf16 K and V, and out stored
 * as bf16 for Wo's fast matmul (the rounding its cast would do). */
static const di_arg_dtype attention16[] = {{"kc", DI_BF16}, {"vc", DI_BF16}, {"out", DI_BF16}};

static int attention_dims(const di_config *c, di_dim_value dv[3])
{
    dv[0] = (di_dim_value){"NH", c->n_heads};
    dv[1] = (di_dim_value){"NKV", c->n_kv_heads};
    dv[2] = (di_dim_value){"HD", c->head_dim};
    return 3;
}

/* Attention over the cache's element type (attention16 in the kv16 layers). */
static int attention(di_model *m, di_kernel **out, di_err *err)
{
    di_dim_value dv[3];
    return di_rt_op_kernel(m->rt, DI_OP_attention, dv, attention_dims(&m->c, dv), attention16, m->kv16 ? 3 : 0, out, err);
}

static int prepare_kernels(di_model *m, di_err *err)
{
    const di_config *c = &m->c;
    const di_arch *a = c->arch;
    long D = c->dim, F = c->ffn, V = c->vocab, NH = c->n_heads, NKV = c->n_kv_heads, HD = c->head_dim;
    long QKVW = (NH + 2 * NKV) * HD;
    kernels *k = &m->k;
    const char *heads[] = {"NH", "NKV", "HD", "CTX"}, *win[] = {"NH", "NKV", "HD", "WIN"};
    long headv[] = {NH, NKV, HD, m->o.ctx}, winv[] = {NH, NKV, HD, c->window};
    /* post_norms: each block's output is normed before it joins h, so no residual epilogue */
    di_op out = a->post_norms ? DI_OP_matmul : DI_OP_matmul_residual;
    if (kernel(m, a->embed_scale ? DI_OP_embed_scaled : DI_OP_embed, (const char *[]){"D", "V"}, (long[]){D, V}, 2,
               &k->embed, err) ||
        kernel(m, DI_OP_rmsnorm, (const char *[]){"D"}, (long[]){D}, 1, &k->rmsnorm, err) ||
        kernel_y(m, DI_OP_rmsnorm, (const char *[]){"D"}, (long[]){D}, 1, m->x16, &k->rmsnorm_x, err) ||
        (a->qk_norm && kernel(m, DI_OP_qk_norm, heads, headv, 3, &k->qk_norm, err)) ||
        kernel(m, a->rope == DI_ROPE_ADJACENT ? DI_OP_rope_adjacent : DI_OP_rope_halfsplit, heads, headv, 4, &k->rope, err) ||
        kernel(m, m->kv16 ? DI_OP_kv_write_bf16 : DI_OP_kv_write, heads, headv, 3, &k->kv_write, err) ||
        attention(m, &k->attention, err) ||
        (a->swa_period && kernel(m, DI_OP_kv_write, heads, headv, 3, &k->kv_write_window, err)) ||
        (a->swa_period && kernel(m, DI_OP_attention_window, win, winv, 4, &k->attention_window, err)) ||
        kernel_y(m, a->act == DI_ACT_SILU ? DI_OP_swiglu : DI_OP_geglu, (const char *[]){"F"}, (long[]){F}, 1, m->x16,
                 &k->act, err) ||
        (a->post_norms && kernel(m, DI_OP_residual_add, (const char *[]){"D"}, (long[]){D}, 1, &k->residual_add, err)) ||
        kernel(m, DI_OP_gather_rows, (const char *[]){"D"}, (long[]){D}, 1, &k->gather, err) ||
        matmul(m, DI_OP_matmul, D, V, m->x16, &m->lm_head, err) ||
        kernel(m, DI_OP_log_softmax, (const char *[]){"V"}, (long[]){V}, 1, &k->log_softmax, err) ||
        kernel(m, DI_OP_argmax, (const char *[]){"V"}, (long[]){V}, 1, &k->argmax, err))
        return di_wrap(err, "preparing kernels");
    for (int l = 0; l < c->n_layers; l++) {
        layer *L = &m->layers[l];
        if (matmul(m, a->qkv_bias ? DI_OP_matmul_bias : DI_OP_matmul, D, QKVW, m->x16, &L->wqkv, err) ||
            matmul(m, out, NH * HD, D, m->kv16 && !di_config_layer_windowed(c, l), &L->wo, err) || matmul(m, DI_OP_matmul, D, 2 * F, m->x16, &L->wgu, err) ||
            matmul(m, out, F, D, m->x16, &L->wdown, err))
            return di_wrap(err, "preparing kernels (layer %d)", l);
    }
    return DI_OK;
}

/* bf16 in the fast profile's layers that the tensor-core attention serves (kv16; not yet the
 * sliding-window ones, which the class lowering runs on f32), f32 everywhere else. */
static size_t kv_elem_bytes(const di_model *m, int l)
{
    return m->kv16 && !di_config_layer_windowed(&m->c, l) ? 2 : 4;
}

size_t di_model_kv_bytes_per_pos(const di_model *m)
{
    size_t n = 0, kvw = (size_t)m->c.n_kv_heads * m->c.head_dim;
    for (int l = 0; l < m->c.n_layers; l++) n += 2 * kvw * kv_elem_bytes(m, l);
    return n;
}

/* kv16 where the tensor-core attention takes the head shape (the class lowering, which runs
 * the others, multiplies f32) */
static bool kv16_for(const di_model *m)
{
    di_dim_value dv[3];
    return di_rt_profile(m->rt) == DI_PROFILE_FAST &&
           di_rt_op_available(m->rt, DI_OP_attention, dv, attention_dims(&m->c, dv), attention16, 3);
}

static int alloc_buffers(di_model *m, di_err *err)
{
    const di_config *c = &m->c;
    m->kv16 = kv16_for(m);
    size_t R = (size_t)m->o.max_batch_tokens, D = (size_t)c->dim, V = (size_t)c->vocab;
    size_t QKVW = (size_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim, F = (size_t)c->ffn;
    size_t kvb = (size_t)di_model_kv_block(), kvw = (size_t)c->n_kv_heads * c->head_dim;
    m->maxb = (int)((m->o.ctx + kvb - 1) / kvb);
    struct { di_buf **b; size_t bytes; } all[] = {
        {&m->tok, R * 4}, {&m->pos, R * 4}, {&m->seq, R * 4}, {&m->rows, R * 4}, {&m->h, R * D * 4},
        {&m->xn, R * D * 4}, {&m->qkv, R * QKVW * 4}, {&m->att, R * (size_t)c->n_heads * c->head_dim * 4},
        {&m->gu, R * 2 * F * 4}, {&m->act, R * F * 4}, {&m->hsel, R * D * 4}, {&m->logits, R * V * 4},
        {&m->lp, R * V * 4}, {&m->ids, R * 4}, {&m->btab, (size_t)(m->o.max_seqs + 1) * m->maxb * 4},
        {&m->blk_out, c->arch->post_norms ? R * D * 4 : 4},
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (di_buf_alloc(m->rt, all[i].bytes, all[i].b, err)) return di_wrap(err, "activation buffers");
    m->kc = calloc((size_t)c->n_layers, sizeof *m->kc);
    m->vc = calloc((size_t)c->n_layers, sizeof *m->vc);
    m->btab_host = calloc((size_t)(m->o.max_seqs + 1) * m->maxb, sizeof *m->btab_host);
    m->stage = calloc(4 * R, sizeof *m->stage);
    if (!m->kc || !m->vc || !m->btab_host || !m->stage) return di_fail(err, DI_ENOMEM, "out of memory (KV cache)");
    /* one KV block past the pool and one block-table row past the slots: the scratch sequence
     * that padded rows write and read (every entry its block), never the engine's */
    int32_t *scratch = m->btab_host + (size_t)m->o.max_seqs * m->maxb;
    for (int i = 0; i < m->maxb; i++) scratch[i] = m->o.kv_blocks;
    if (di_buf_write(m->btab, (size_t)m->o.max_seqs * m->maxb * 4, scratch, (size_t)m->maxb * 4, err)) return err->code;
    for (int l = 0; l < c->n_layers; l++) {
        size_t bytes = (size_t)(m->o.kv_blocks + 1) * kvb * kvw * kv_elem_bytes(m, l);
        if (di_buf_alloc(m->rt, bytes, &m->kc[l], err) || di_buf_alloc(m->rt, bytes, &m->vc[l], err))
            return di_wrap(err, "KV cache (%d blocks)", m->o.kv_blocks);
    }
    return DI_OK;
}

/* A tied head packed is a second copy of the table (the embedding gather reads bf16): worth it
 * when the packed layers saved more than it costs, so the model stays below its all-bf16 size. */
static bool pack_tied_head(const di_model *m, uint64_t V, uint64_t D)
{
    const di_gguf_tensor *t = di_gguf_tensor_find(m->g, "token_embd.weight");
    di_pack_src src = {m->g, &t, &V, 1, D};
    di_dtype fmt = m->pack ? di_pack_format(&src) : DI_BF16;
    if (fmt == DI_BF16) return false;
    size_t saved = 0;
    for (int l = 0; l < m->c.n_layers; l++) {
        const wmat *w[] = {&m->layers[l].wqkv, &m->layers[l].wo, &m->layers[l].wgu, &m->layers[l].wdown};
        for (int i = 0; i < 4; i++) saved += w[i]->bf16_bytes - w[i]->buf->bytes;
    }
    return di_pack_bytes(fmt, (long)V, (long)D) <= saved;
}

/* Reads, converts and uploads everything from an open GGUF. */
static int load(di_model *m, const di_model_opts *o, di_err *err)
{
    int rc = di_config_read(m->g, &m->c, err);
    if (!rc && (o->ctx <= 0 || o->max_batch_tokens <= 0 || o->kv_blocks <= 0 || o->max_seqs <= 0))
        rc = di_fail(err, DI_EUSAGE, "model options must be positive");
    if (!rc) {
        const di_config *c = &m->c;
        m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
        uint64_t D = (uint64_t)c->dim, V = (uint64_t)c->vocab;
        const char *embd[] = {"token_embd.weight"}, *outw[] = {"output.weight"};
        for (int l = 0; l < c->n_layers && !rc; l++) rc = load_layer(m, l, err);
        wmat table = {0};
        if (!rc) rc = load_matrix(m, embd, &V, 1, D, false, &table, err);   /* the embedding gather reads bf16 */
        m->embd = table.buf;
        /* tied embeddings when the file has no output.weight (SmolLM2): the head is the table again,
         * or the same tensor packed where that keeps the model smaller than all-bf16 */
        bool tied = !di_gguf_tensor_find(m->g, "output.weight");
        if (!rc && tied && !pack_tied_head(m, V, D)) m->lm_head = (wmat){.buf = m->embd, .fmt = DI_BF16};
        else if (!rc) rc = load_matrix(m, tied ? embd : outw, &V, 1, D, true, &m->lm_head, err);
        if (!rc) rc = load_vector(m, "output_norm.weight", D, &m->out_norm, err);
    }
    if (!rc) rc = load_rope(m, err);
    if (!rc) m->embed_scale = (float)sqrt((double)m->c.dim);
    if (!rc) rc = alloc_buffers(m, err);
    if (!rc) rc = prepare_kernels(m, err);
    return rc;
}

int di_model_load(const char *path, di_rt *rt, const di_model_opts *o, di_model **out, di_err *err)
{
    di_gguf *g = NULL;
    int rc = di_gguf_open(path, &g, err);
    if (!rc) rc = di_model_load_gguf(g, rt, o, out, err);
    if (rc) { di_gguf_close(g); return rc; }
    (*out)->owns_g = true;
    return DI_OK;
}

/* Graphs where padding and replay change no bit: the invariant profiles on a GPU with graphs. */
static int choose_launch(di_model *m, di_err *err)
{
    di_profile p = di_rt_profile(m->rt);
    bool can = di_rt_has_graphs(m->rt) && (p == DI_PROFILE_EXACT || p == DI_PROFILE_FAST);
    m->launch = m->o.launch;
    if (m->launch == DI_LAUNCH_AUTO) m->launch = can ? DI_LAUNCH_GRAPHS : DI_LAUNCH_EAGER;
    if (m->launch == DI_LAUNCH_GRAPHS && !can)
        return di_fail(err, DI_EUSAGE, "graphs need the GPU, a driver with graphs and the exact or fast profile (%s, %s)",
                       di_rt_describe(m->rt), di_profile_name(p));
    return DI_OK;
}

di_launch_mode di_model_launch(const di_model *m) { return m->launch; }

/* The option tables (model.h's X-macros): a name per value, and the value of a name. */
#define DI_OPTION_NAME(id, name) name,
static const char *const launch_names[] = {DI_LAUNCH_MODES(DI_OPTION_NAME)};
static const char *const weights_names[] = {DI_WEIGHTS_MODES(DI_OPTION_NAME)};
#undef DI_OPTION_NAME
#define NAMES(t) t, sizeof t / sizeof t[0]

static const char *name_of(const char *const *names, size_t n, unsigned v) { return v < n ? names[v] : "?"; }

static int index_of(const char *const *names, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(name, names[i])) return (int)i;
    return -1;
}

const char *di_launch_name(di_launch_mode l) { return name_of(NAMES(launch_names), (unsigned)l); }

bool di_launch_parse(const char *name, di_launch_mode *out)
{
    int i = index_of(NAMES(launch_names), name);
    return i >= 0 && (*out = (di_launch_mode)i, true);
}

bool di_weights_parse(const char *name, di_weights *out)
{
    int i = index_of(NAMES(weights_names), name);
    return i >= 0 && (*out = (di_weights)i, true);
}
#undef NAMES

int di_model_load_gguf(const di_gguf *g, di_rt *rt, const di_model_opts *o, di_model **out, di_err *err)
{
    di_model *m = calloc(1, sizeof *m);
    if (!m) return di_fail(err, DI_ENOMEM, "out of memory");
    m->rt = rt;
    m->o = *o;
    /* packed where decoding in the inner loop pays: SIMD lanes under cc; libtcc's scalar code is
     * bound by the decode, not by memory, and runs bf16 about 5x faster (perf/RESULTS.md 0002) */
    /* and on the GPU in exact, where the class lowering reads the same records; in fast only when
     * asked (DI_WEIGHTS_PACKED): the tensor-core matmul decodes them into its bf16 tile, a third
     * of the memory but slower than bf16 today (vendor multiplies bf16 by cuBLASLt) */
    bool cpu = di_rt_backend(rt) == DI_BACKEND_C;
    di_profile prof = di_rt_profile(rt);
    m->pack = o->weights != DI_WEIGHTS_BF16 &&
              ((prof == DI_PROFILE_EXACT && (!cpu || di_rt_cpu_compiler(rt) == DI_CPU_COMPILER_CC)) ||
               (prof == DI_PROFILE_FAST && !cpu && o->weights == DI_WEIGHTS_PACKED));
    m->g = (di_gguf *)g;   /* borrowed: never closed here */
    /* the fast matmul would cast its f32 x to bf16 (round to nearest even) first: where the
     * kernel before it stores that bf16 itself, the cast kernel goes and the bits stay */
    m->x16 = di_rt_profile(rt) == DI_PROFILE_FAST && di_rt_backend(rt) == DI_BACKEND_CUDA;
    int rc = choose_launch(m, err);
    if (!rc) rc = load(m, o, err);
    if (rc) { di_model_free(m); return rc; }
    *out = m;
    return DI_OK;
}

void di_model_free(di_model *m)
{
    if (!m) return;
    for (int l = 0; m->layers && l < m->c.n_layers; l++) {
        layer *L = &m->layers[l];
        di_buf_free(L->attn_norm); di_buf_free(L->wqkv.buf); di_buf_free(L->wo.buf);
        di_buf_free(L->ffn_norm); di_buf_free(L->wgu.buf); di_buf_free(L->wdown.buf);
        di_buf_free(L->bqkv); di_buf_free(L->q_norm); di_buf_free(L->k_norm);
        di_buf_free(L->post_attn); di_buf_free(L->post_ffn);
        if (m->kc) di_buf_free(m->kc[l]);
        if (m->vc) di_buf_free(m->vc[l]);
    }
    if (m->lm_head.buf != m->embd) di_buf_free(m->lm_head.buf);
    di_buf *bufs[] = {m->embd, m->out_norm, m->rope_cs, m->rope_cs_swa, m->btab, m->tok, m->pos, m->seq,
                      m->rows, m->h, m->xn, m->qkv, m->att, m->gu, m->act, m->hsel, m->logits, m->lp, m->ids, m->blk_out};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) di_buf_free(bufs[i]);
    for (int i = 0; i < N_BUCKETS; i++) di_rt_graph_free(m->body[i].g), di_rt_graph_free(m->head[i].g);
    free(m->layers); free(m->kc); free(m->vc); free(m->btab_host); free(m->stage);
    if (m->owns_g) di_gguf_close(m->g);
    free(m);
}

int di_model_set_blocks(di_model *m, int slot, const int32_t *blocks, int n, di_err *err)
{
    if (slot < 0 || slot >= m->o.max_seqs) return di_fail(err, DI_EUSAGE, "sequence slot %d out of range", slot);
    if (n > m->maxb) return di_fail(err, DI_EUSAGE, "%d KV blocks exceed the context (%d)", n, m->maxb);
    int32_t *row = m->btab_host + (size_t)slot * m->maxb;
    for (int i = 0; i < n; i++) {
        if (blocks[i] < 0 || blocks[i] >= m->o.kv_blocks) return di_fail(err, DI_EUSAGE, "KV block %d out of range", blocks[i]);
        row[i] = blocks[i];
    }
    return di_buf_write(m->btab, (size_t)slot * m->maxb * 4, row, (size_t)m->maxb * 4, err);
}

/* ---- one step ------------------------------------------------------------------------------- */

#define LAUNCH(k, rows, ...) \
    do { if (di_rt_launch(m->rt, (k), (di_val[]){__VA_ARGS__}, (long[]){(rows), m->maxb}, err)) return err->code; } while (0)
#define B(x) {.buf = (x)}

/* The layers of a step of `n` rows, inputs in m->tok, pos, seq already; then (launch_head)
 * the logits of the `r` rows listed in m->rows. Neither reads or writes host memory, so each
 * can be recorded. */
static int launch_body(di_model *m, long n, di_err *err)
{
    const di_config *c = &m->c;
    const kernels *k = &m->k;
    const di_arch *a = c->arch;
    if (a->embed_scale) LAUNCH(k->embed, n, B(m->h), B(m->embd), B(m->tok), {.f32 = m->embed_scale});
    else LAUNCH(k->embed, n, B(m->h), B(m->embd), B(m->tok));
    for (int l = 0; l < c->n_layers; l++) {
        const layer *L = &m->layers[l];
        bool windowed = di_config_layer_windowed(c, l);
        /* attention block: h += Wo . attn(rope(Wqkv . norm(h))) */
        LAUNCH(k->rmsnorm_x, n, B(m->xn), B(m->h), B(L->attn_norm), {.f32 = c->eps});
        if (a->qkv_bias) LAUNCH(L->wqkv.k, n, B(m->qkv), B(m->xn), B(L->wqkv.buf), B(L->bqkv));
        else LAUNCH(L->wqkv.k, n, B(m->qkv), B(m->xn), B(L->wqkv.buf));
        if (a->qk_norm) LAUNCH(k->qk_norm, n, B(m->qkv), B(L->q_norm), B(L->k_norm), {.f32 = c->eps});
        LAUNCH(k->rope, n, B(m->qkv), B(m->pos), B(windowed ? m->rope_cs_swa : m->rope_cs));
        LAUNCH(windowed ? k->kv_write_window : k->kv_write, n, B(m->kc[l]), B(m->vc[l]), B(m->qkv), B(m->pos), B(m->seq),
               B(m->btab));
        LAUNCH(windowed ? k->attention_window : k->attention, n, B(m->att), B(m->qkv), B(m->kc[l]), B(m->vc[l]),
               B(m->pos), B(m->seq), B(m->btab));
        if (a->post_norms) {   /* h += norm(Wo . attn) */
            LAUNCH(L->wo.k, n, B(m->blk_out), B(m->att), B(L->wo.buf));
            LAUNCH(k->rmsnorm, n, B(m->blk_out), B(m->blk_out), B(L->post_attn), {.f32 = c->eps});
            LAUNCH(k->residual_add, n, B(m->h), B(m->h), B(m->blk_out));
        } else {
            LAUNCH(L->wo.k, n, B(m->h), B(m->att), B(L->wo.buf), B(m->h));
        }
        /* FFN block: h += Wdown . (act(Wgate . norm(h)) * Wup . norm(h)) */
        LAUNCH(k->rmsnorm_x, n, B(m->xn), B(m->h), B(L->ffn_norm), {.f32 = c->eps});
        LAUNCH(L->wgu.k, n, B(m->gu), B(m->xn), B(L->wgu.buf));
        LAUNCH(k->act, n, B(m->act), B(m->gu));
        if (a->post_norms) {   /* h += norm(Wdown . act) */
            LAUNCH(L->wdown.k, n, B(m->blk_out), B(m->act), B(L->wdown.buf));
            LAUNCH(k->rmsnorm, n, B(m->blk_out), B(m->blk_out), B(L->post_ffn), {.f32 = c->eps});
            LAUNCH(k->residual_add, n, B(m->h), B(m->h), B(m->blk_out));
        } else {
            LAUNCH(L->wdown.k, n, B(m->h), B(m->act), B(L->wdown.buf), B(m->h));
        }
    }
    return DI_OK;
}

static int launch_head(di_model *m, long r, di_err *err)
{
    const di_config *c = &m->c;
    const kernels *k = &m->k;
    /* logits only for the rows that need them */
    LAUNCH(k->gather, r, B(m->hsel), B(m->h), B(m->rows));
    LAUNCH(k->rmsnorm_x, r, B(m->xn), B(m->hsel), B(m->out_norm), {.f32 = c->eps});
    LAUNCH(m->lm_head.k, r, B(m->logits), B(m->xn), B(m->lm_head.buf));
    LAUNCH(k->log_softmax, r, B(m->lp), B(m->logits));
    LAUNCH(k->argmax, r, B(m->ids), B(m->logits));
    return DI_OK;
}

/* ---- graphs: a step recorded once per row bucket --------------------------------------------
 *
 * Rows are padded to a bucket so that few graphs serve every step: the layers are recorded per
 * row bucket, the head per bucket of output rows (a mixed step's two counts vary apart), at
 * most 2 x 14 graphs, kept for the model's life. A part is recorded the second time its bucket
 * is seen (the first, launched one by one, grows every kernel's workspace to what the bucket
 * needs: nothing may be allocated while recording) and replayed after; one whose workspaces
 * have moved since (a larger bucket grew one) is recorded again. Steps of more than the largest
 * bucket are launched unpadded, one by one: their launches cost little beside their math. */
static const int row_buckets[N_BUCKETS] = {1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256};

/* The bucket index of n rows, or -1 past the largest. */
static int bucket_index(int n)
{
    for (int i = 0; i < N_BUCKETS; i++)
        if (row_buckets[i] >= n) return i;
    return -1;
}

static int bucket(const di_model *m, int n)
{
    int i = bucket_index(n);
    if (m->launch == DI_LAUNCH_EAGER || i < 0) return n;
    return row_buckets[i] < m->o.max_batch_tokens ? row_buckets[i] : m->o.max_batch_tokens;
}

int di_model_step_rows(const di_model *m, int n) { return bucket(m, n); }

/* Runs one part of a step (the layers for n rows, or the head for n output rows): replayed,
 * recorded and replayed, or launched one by one (first sight, no graphs, past the buckets). */
static int run_part(di_model *m, step_graph *table, int n, int (*part)(di_model *, long, di_err *), di_err *err)
{
    int b = bucket_index(n);
    step_graph *sg = m->launch == DI_LAUNCH_GRAPHS && b >= 0 ? &table[b] : NULL;
    if (!sg || !sg->seen) {
        if (sg) sg->seen = true;
        return part(m, n, err);
    }
    if (sg->g && !di_rt_graph_fresh(m->rt, sg->g)) {
        di_rt_graph_free(sg->g);
        sg->g = NULL;
    }
    if (!sg->g) {
        if (di_rt_capture_begin(m->rt, err)) return err->code;
        if (part(m, n, err)) {
            di_err ignored = {0};
            di_rt_capture_end(m->rt, NULL, &ignored);
            return di_wrap(err, "recording a step part of %d rows", n);
        }
        if (di_rt_capture_end(m->rt, &sg->g, err)) return err->code;
    }
    return di_rt_graph_run(m->rt, sg->g, err);
}

/* The step's inputs, padded to `rows` and `outs`: pad rows run token 0 at position 0 of the
 * scratch slot, pad outputs repeat row 0. */
static int upload_step(di_model *m, const di_step *s, int rows, int outs, di_err *err)
{
    size_t R = (size_t)m->o.max_batch_tokens;
    int32_t *tok = m->stage, *pos = tok + R, *seq = pos + R, *out = seq + R;
    for (int i = 0; i < rows; i++) {
        bool real = i < s->n;
        tok[i] = real ? s->tokens[i] : 0;
        pos[i] = real ? s->pos[i] : 0;
        seq[i] = real ? s->seq[i] : m->o.max_seqs;
    }
    for (int i = 0; i < outs; i++) out[i] = i < s->n_out ? s->out_rows[i] : 0;
    if (di_buf_write(m->tok, 0, tok, rows * 4, err) || di_buf_write(m->pos, 0, pos, rows * 4, err) ||
        di_buf_write(m->seq, 0, seq, rows * 4, err) || (outs && di_buf_write(m->rows, 0, out, outs * 4, err)))
        return err->code;
    return DI_OK;
}

int di_model_forward(di_model *m, const di_step *s, di_err *err)
{
    const di_config *c = &m->c;
    long n = s->n, V = c->vocab;
    if (n <= 0 || n > m->o.max_batch_tokens)
        return di_fail(err, DI_EUSAGE, "a step carries %ld tokens (1..%d)", n, m->o.max_batch_tokens);
    if (s->n_out < 0 || s->n_out > n) return di_fail(err, DI_EUSAGE, "%d output rows for %ld tokens", s->n_out, n);
    for (long i = 0; i < n; i++) {
        if (s->tokens[i] < 0 || s->tokens[i] >= V) return di_fail(err, DI_EUSAGE, "token id %d out of range", s->tokens[i]);
        if (s->pos[i] < 0 || s->pos[i] >= m->o.ctx) return di_fail(err, DI_EUSAGE, "position %d past the context (%d)", s->pos[i], m->o.ctx);
        if (s->seq[i] < 0 || s->seq[i] >= m->o.max_seqs) return di_fail(err, DI_EUSAGE, "sequence slot %d out of range", s->seq[i]);
    }
    for (int i = 0; i < s->n_out; i++)
        if (s->out_rows[i] < 0 || s->out_rows[i] >= n) return di_fail(err, DI_EUSAGE, "output row %d out of range", s->out_rows[i]);

    int rows = bucket(m, (int)n), outs = s->n_out ? bucket(m, s->n_out) : 0;
    if (upload_step(m, s, rows, outs, err)) return err->code;
    if (run_part(m, m->body, rows, launch_body, err)) return err->code;
    if (outs && run_part(m, m->head, outs, launch_head, err)) return err->code;
    long r = s->n_out;
    if (r && s->logprobs && di_buf_read(m->lp, 0, s->logprobs, (size_t)r * V * 4, err)) return err->code;
    if (r && s->logits && di_buf_read(m->logits, 0, s->logits, (size_t)r * V * 4, err)) return err->code;
    if (r && s->greedy && di_buf_read(m->ids, 0, s->greedy, (size_t)r * 4, err)) return err->code;
    return di_rt_sync(m->rt, err);
}
