/* perf/make_random_gguf's quantized types: which type each matrix gets, and what it refuses. The
 * blocks' contents were checked once against gguf-py's dequantizer (perf/RESULTS.md, "Q4_K_M");
 * here the recipe, from the header of a sparse 8B file (--header-only: no data written). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "model/gguf.h"
#include "model/quant.h"

static void temp_path(char *path, size_t n)
{
    snprintf(path, n, "/tmp/detinfer-rand-XXXXXX.gguf");
    int fd = mkstemps(path, 5);
    cr_assert(fd >= 0);
    close(fd);
}

/* llama.cpp's Q4_K_M (llama-quant.cpp): the lm head Q6_K; attn_v and ffn_down Q6_K where
 * use_more_bits(i, n) = i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2, for 32 layers these: */
static const int MORE_BITS_32[] = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31};

static bool more_bits(int layer)
{
    for (size_t i = 0; i < sizeof MORE_BITS_32 / sizeof MORE_BITS_32[0]; i++)
        if (MORE_BITS_32[i] == layer) return true;
    return false;
}

Test(random_gguf, q4_k_m_gives_each_matrix_llama_cpps_type)
{
    char path[64], cmd[256];
    temp_path(path, sizeof path);
    snprintf(cmd, sizeof cmd, DI_BUILD_DIR "/make_random_gguf %s --shape llama3-8b --type q4_k_m --header-only --quiet", path);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    di_gguf *g;
    di_err e = {0};
    cr_assert_eq(di_gguf_open(path, &g, &e), 0, "%s", e.msg);
    int q6 = 0, q4 = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const di_gguf_tensor *t = &g->tensors[i];
        int layer = -1;
        char what[64] = "";
        sscanf(t->name, "blk.%d.%63s", &layer, what);
        bool matrix = t->n_dims == 2 && !strstr(t->name, "norm");
        int want = !matrix ? DI_GGML_F32
                 : !strcmp(t->name, "output.weight") ? DI_GGML_Q6_K
                 : (!strcmp(what, "attn_v.weight") || !strcmp(what, "ffn_down.weight")) && more_bits(layer) ? DI_GGML_Q6_K
                 : DI_GGML_Q4_K;
        cr_expect_eq(t->type, want, "%s is %s, not %s", t->name, di_ggml_type_name(t->type), di_ggml_type_name(want));
        q6 += t->type == DI_GGML_Q6_K;
        q4 += t->type == DI_GGML_Q4_K;
    }
    cr_expect_eq(q6, 1 + 2 * 16, "Q6_K matrices: %d", q6);
    cr_expect_eq(q4, 1 + 7 * 32 - 2 * 16, "Q4_K matrices: %d", q4);
    di_gguf_close(g);
    unlink(path);
}

Test(random_gguf, q4_k_m_refuses_rows_that_are_not_whole_blocks)
{
    char path[64], cmd[320];
    temp_path(path, sizeof path);
    snprintf(cmd, sizeof cmd, DI_BUILD_DIR "/make_random_gguf %s --shape smollm2 --type q4_k_m --quiet 2>%s.err", path, path);
    int rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "%s: status %d, not exit 2", cmd, rc);
    char err_path[80], msg[512] = "";
    snprintf(err_path, sizeof err_path, "%s.err", path);
    FILE *f = fopen(err_path, "r");
    cr_assert_not_null(f);
    size_t n = fread(msg, 1, sizeof msg - 1, f);
    msg[n] = 0;
    fclose(f);
    cr_expect(strstr(msg, "token_embd.weight") && strstr(msg, "576") && strstr(msg, "256"), "message: %s", msg);
    unlink(err_path);
    unlink(path);
}
