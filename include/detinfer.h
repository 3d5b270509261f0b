/* detinfer: deterministic LLM inference. The public C API (libdetinfer.a / libdetinfer.so,
 * pkg-config `detinfer`, CMake `find_package(detinfer)` -> detinfer::detinfer).
 *
 * The same request gives the same bits (tokens and log-probs) whatever else runs in the batch,
 * however its prompt was chunked or cached, and, in the exact profile, on the CPU or the GPU.
 *
 * Conventions:
 *  - Handles are opaque; every object is freed by its own function; NULL is accepted there.
 *  - Functions that can fail return 0 or a DETINFER_E* code and fill a detinfer_error when one
 *    is given (its message names the file, flag, field or tensor at fault).
 *  - Parameter structs can grow: take them from the *_default_params() functions, which set
 *    `size`; the library reads only the first `size` bytes, so a program built against an older
 *    header keeps working with a newer library.
 *  - Strings are UTF-8; token ids are int32. */
#ifndef DETINFER_H
#define DETINFER_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define DETINFER_API __attribute__((visibility("default")))
#else
#define DETINFER_API
#endif

#define DETINFER_VERSION_MAJOR 0
#define DETINFER_VERSION_MINOR 1
#define DETINFER_VERSION_PATCH 0

/* Error codes (the same values the tools use as exit statuses where they are usage errors). */
enum {
    DETINFER_OK = 0,
    DETINFER_EUSAGE = 2,     /* bad argument, bad input file, prompt too long */
    DETINFER_EIO,
    DETINFER_EFORMAT,        /* malformed model file */
    DETINFER_ESPEC,          /* a kernel spec or specialization that does not validate */
    DETINFER_ECOMPILE,       /* NVRTC or libtcc rejected generated source */
    DETINFER_ENODEV,         /* no GPU / driver / NVRTC when one was asked for */
    DETINFER_EDEVICE,        /* a CUDA driver call failed */
    DETINFER_ENOMEM,
};

typedef struct detinfer_error {
    int code;
    char message[1024];
} detinfer_error;

DETINFER_API const char *detinfer_version(void);        /* "0.1.0" */
DETINFER_API const char *detinfer_strerror(int code);   /* "usage", "format", ... */

/* ---- runtime: where kernels run ------------------------------------------------------- */

typedef struct detinfer_runtime detinfer_runtime;

typedef struct detinfer_runtime_params {
    size_t size;              /* sizeof(detinfer_runtime_params), set by the defaults */
    const char *device;       /* "auto" (default: the GPU when one is usable), "cpu", "cuda" */
    const char *profile;      /* "exact" (default), "fast" (GPU only), "vendor" (not invariant) */
    int threads;              /* CPU workers; 0: every CPU this process may use */
    const char *cache_dir;    /* compiled-kernel cache; NULL: $DETINFER_CACHE_DIR or the XDG default */
} detinfer_runtime_params;

DETINFER_API detinfer_runtime_params detinfer_runtime_default_params(void);
DETINFER_API int detinfer_runtime_open(const detinfer_runtime_params *p, detinfer_runtime **out, detinfer_error *err);
DETINFER_API void detinfer_runtime_close(detinfer_runtime *rt);
DETINFER_API const char *detinfer_runtime_describe(const detinfer_runtime *rt);

/* ---- model and tokenizer -------------------------------------------------------------- */

typedef struct detinfer_model detinfer_model;
typedef struct detinfer_tokenizer detinfer_tokenizer;

typedef struct detinfer_model_params {
    size_t size;              /* sizeof(detinfer_model_params) */
    int ctx;                  /* positions per sequence (default 2048) */
    int max_batch_tokens;     /* rows one forward step carries (default 256) */
    int max_seqs;             /* sequences in flight (default 16) */
    int kv_blocks;            /* KV cache blocks; 0: enough for max_seqs full contexts */
} detinfer_model_params;

DETINFER_API detinfer_model_params detinfer_model_default_params(void);
/* Loads a GGUF on rt (which must outlive the model). */
DETINFER_API int detinfer_model_load(detinfer_runtime *rt, const char *path, const detinfer_model_params *p,
                                     detinfer_model **out, detinfer_error *err);
DETINFER_API void detinfer_model_free(detinfer_model *m);
/* The model's tokenizer (owned by the model). */
DETINFER_API const detinfer_tokenizer *detinfer_model_tokenizer(const detinfer_model *m);
DETINFER_API int detinfer_model_vocab_size(const detinfer_model *m);

/* Encodes len bytes of text. add_special: BOS (and EOS) where the vocabulary adds them, as a prompt
 * gets them; parse_special: control tokens written in the text become their ids. *ids is
 * malloc'd (free it with detinfer_free). */
DETINFER_API int detinfer_tokenize(const detinfer_tokenizer *t, const char *text, size_t len, bool add_special,
                                   bool parse_special, int32_t **ids, size_t *n, detinfer_error *err);
/* The bytes token `id` stands for (not NUL-terminated; valid while the model lives). */
DETINFER_API int detinfer_token_piece(const detinfer_tokenizer *t, int32_t id, const char **bytes, size_t *len);
DETINFER_API int32_t detinfer_token_eos(const detinfer_tokenizer *t);

/* ---- generation ------------------------------------------------------------------------ */

typedef struct detinfer_request detinfer_request;

typedef struct detinfer_request_params {
    size_t size;              /* sizeof(detinfer_request_params) */
    int max_tokens;           /* tokens to generate (default 128) */
    float temperature;        /* <= 0: greedy (default 0) */
    int top_k;                /* <= 0: off (default 0) */
    float top_p;              /* >= 1: off (default 1) */
    uint64_t seed;            /* random draws are keyed by (seed, request key, position) */
    uint64_t key;             /* the request key (default 0) */
    bool ignore_eos;          /* keep going past end-of-text */
    int prefill_chunk;        /* prompt tokens per step; <= 0: the whole prompt at once */
} detinfer_request_params;

DETINFER_API detinfer_request_params detinfer_request_default_params(void);
/* A request for prompt ids (copied). */
DETINFER_API int detinfer_request_create(const int32_t *prompt, size_t n, const detinfer_request_params *p,
                                         detinfer_request **out, detinfer_error *err);
DETINFER_API void detinfer_request_free(detinfer_request *r);

/* Runs n requests to completion in one batching engine (continuous batching, prefix cache).
 * Each request's result does not depend on the others: run it alone or among any others and
 * its tokens and log-prob bits are the same. */
DETINFER_API int detinfer_generate(detinfer_model *m, detinfer_request *const *reqs, size_t n, detinfer_error *err);

/* A finished request's output (valid until the request is freed or run again). */
DETINFER_API size_t detinfer_request_n_tokens(const detinfer_request *r);
DETINFER_API const int32_t *detinfer_request_tokens(const detinfer_request *r);
DETINFER_API const float *detinfer_request_logprobs(const detinfer_request *r);
/* SHA-256 over (id as int32 LE, log-prob bits as uint32 LE) per generated token: what
 * `generate --digest` prints. hex receives 65 bytes. */
DETINFER_API void detinfer_request_digest(const detinfer_request *r, char hex[65]);
DETINFER_API bool detinfer_request_stopped(const detinfer_request *r);   /* at end-of-text, not the length */

DETINFER_API void detinfer_free(void *p);

#ifdef __cplusplus
}
#endif
#endif
