/* The real model on the CPU backend, for the model suites. The path comes from
 * $DETINFER_MODEL (scripts/test sets it after fetching); without it the suites skip. */
#ifndef DI_MODEL_FIXTURE_H
#define DI_MODEL_FIXTURE_H
#include "helpers.h"
#include "model/engine.h"
#include "model/tokenizer.h"

typedef struct fixture {
    di_rt *rt;
    di_model *m;
    di_gguf *g;
    di_tokenizer *tok;
} fixture;

static inline const char *model_path(void)
{
    const char *p = getenv("DETINFER_MODEL");
    return p && *p ? p : NULL;
}

#define NEED_MODEL()                                                                                   \
    do {                                                                                               \
        if (!model_path()) cr_skip_test("DETINFER_MODEL is not set (scripts/test fetches the model)"); \
    } while (0)

/* DETINFER_GEMMA3: Gemma 3 270M (scripts/test fetches it), for the suites that run a second model. */
static inline const char *gemma3_path(void)
{
    const char *p = getenv("DETINFER_GEMMA3");
    return p && *p ? p : NULL;
}

static inline fixture fixture_open_path(const char *path, int threads, int max_batch_tokens, int kv_blocks,
                                        int max_seqs);

static inline fixture fixture_open(int threads, int max_batch_tokens, int kv_blocks, int max_seqs)
{
    return fixture_open_path(model_path(), threads, max_batch_tokens, kv_blocks, max_seqs);
}

static inline fixture fixture_open_path(const char *path, int threads, int max_batch_tokens, int kv_blocks,
                                        int max_seqs)
{
    fixture f = {0};
    di_err e = {0};
    /* DETINFER_TEST_BACKEND=cuda runs the model suites on the GPU (scripts/gpu-check does) */
    /* and DETINFER_TEST_PROFILE=fast there checks the tensor-core profile's invariance */
    const char *b = getenv("DETINFER_TEST_BACKEND"), *pr = getenv("DETINFER_TEST_PROFILE");
    bool cuda = b && !strcmp(b, "cuda");
    di_rt_opts ro = {.backend = cuda ? DI_BACKEND_CUDA : DI_BACKEND_C, .threads = threads, .profile = DI_PROFILE_EXACT};
    if (cuda && pr && *pr) cr_assert(di_profile_parse(pr, &ro.profile), "DETINFER_TEST_PROFILE=%s is no profile", pr);
    cr_assert_eq(di_rt_open(&ro, &f.rt, &e), 0, "runtime: %s", e.msg);
    di_model_opts o = {.max_batch_tokens = max_batch_tokens, .ctx = 512, .kv_blocks = kv_blocks, .max_seqs = max_seqs};
    cr_assert_eq(di_model_load(path, f.rt, &o, &f.m, &e), 0, "%s", e.msg);
    cr_assert_eq(di_gguf_open(path, &f.g, &e), 0, "%s", e.msg);
    cr_assert_eq(di_tokenizer_load(f.g, &f.tok, &e), 0, "%s", e.msg);
    return f;
}

/* As fixture_open, with the numerics profile named by the caller (the vendor suite runs the
 * same requests under vendor and exact); DETINFER_TEST_BACKEND=cuda still picks the GPU. */
static inline fixture fixture_open_profile(di_profile profile, int threads, int max_batch_tokens, int kv_blocks,
                                           int max_seqs)
{
    fixture f = {0};
    di_err e = {0};
    const char *b = getenv("DETINFER_TEST_BACKEND");
    bool cuda = b && !strcmp(b, "cuda");
    di_rt_opts ro = {.backend = cuda ? DI_BACKEND_CUDA : DI_BACKEND_C, .threads = threads, .profile = profile};
    cr_assert_eq(di_rt_open(&ro, &f.rt, &e), 0, "runtime (%s profile): %s", di_profile_name(profile), e.msg);
    di_model_opts o = {.max_batch_tokens = max_batch_tokens, .ctx = 512, .kv_blocks = kv_blocks, .max_seqs = max_seqs};
    cr_assert_eq(di_model_load(model_path(), f.rt, &o, &f.m, &e), 0, "%s", e.msg);
    cr_assert_eq(di_gguf_open(model_path(), &f.g, &e), 0, "%s", e.msg);
    cr_assert_eq(di_tokenizer_load(f.g, &f.tok, &e), 0, "%s", e.msg);
    return f;
}

static inline void fixture_close(fixture *f)
{
    di_tokenizer_free(f->tok);
    di_gguf_close(f->g);
    di_model_free(f->m);
    di_rt_close(f->rt);
}

#endif
