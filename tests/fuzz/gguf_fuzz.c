/* libFuzzer harness for the GGUF reader: every input goes through di_gguf_open_mem and, when
 * it opens, every tensor is dequantized into a scratch buffer (types without a dequantizer must
 * fail cleanly), the llama config checks (model/config.c) run, the tokenizer is loaded and
 * encodes a few strings, and the chat template is recognised. Any crash, sanitizer report, leak
 * or timeout is a bug in model/gguf.c, quant.c, config.c, tokenizer.c, pretok.c or chat.c.
 *
 * Build (from the repo root; clang 14 from Debian: apt-get install -y clang):
 *
 *   clang -std=gnu11 -g -O1 -ffp-contract=off -fsanitize=fuzzer,address,undefined \
 *         -fno-sanitize-recover=undefined -I. \
 *         tests/fuzz/gguf_fuzz.c model/gguf.c model/quant.c model/config.c model/arch.c model/tokenizer.c \
 *         model/pretok.c model/chat.c base/err.c base/file.c -ljansson -lm -o /tmp/gguf_fuzz
 *
 * Run (a scratch corpus dir first: the fuzzer writes new inputs into the first dir it is given,
 * and the checked-in corpus should stay small; crashers land in -artifact_prefix):
 *
 *   mkdir -p /tmp/gguf_corpus /tmp/gguf_crashes
 *   /tmp/gguf_fuzz -jobs=1 -workers=1 -max_total_time=300 -max_len=4096 -rss_limit_mb=2048 \
 *         -dict=tests/fuzz/gguf.dict -artifact_prefix=/tmp/gguf_crashes/ \
 *         /tmp/gguf_corpus tests/fuzz/corpus
 *
 * Every crasher found goes into tests/fuzz/corpus/ (name it crash-*), where the Criterion test
 * gguf::fuzz_corpus_replays_cleanly replays it. Replay one by hand: /tmp/gguf_fuzz FILE.
 * The gen_* seeds and edge cases are written by tests/test_gguf.c (DI_GGUF_WRITE_CORPUS=1);
 * the fuzz_* files are inputs the fuzzer found, one per llama cross-check they reach (the
 * smallest of each kind, not the whole scratch corpus). The run1_* files are the first long run's
 * corpus (2026-12-02: 3 723 CPU-s, 78.9 M inputs, no finding), merged down by edges
 * (-merge=1 -use_counters=0) to the 188 inputs that add an edge: 1 171 edges replayed. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/chat.h"
#include "model/config.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size copy, so ASan flags any read one past the end */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    di_gguf *g = NULL;
    di_err err;
    if (di_gguf_open_mem(copy, size, "fuzz.gguf", &g, &err) == DI_OK) {
        for (uint64_t i = 0; i < g->n_tensors; i++) {
            const di_gguf_tensor *t = &g->tensors[i];
            /* the reader bounds n_elems by the file size (nbytes must fit in it) */
            float *scratch = malloc((size_t)t->n_elems * sizeof(float));
            if (!scratch) abort(); /* would mean an element count the file cannot hold */
            int want = di_ggml_type_supported(t->type) ? DI_OK : DI_EFORMAT;
            if (di_gguf_to_f32(g, t, scratch, &err) != want) abort();
            free(scratch);
        }
        /* exercise the accessors too */
        for (uint64_t i = 0; i < g->n_kv; i++) {
            const di_gguf_kv *kv = &g->kv[i];
            di_gguf_str s;
            for (uint64_t j = 0; j < kv->arr_len && j < 64; j++) {
                (void)di_gguf_arr_int(kv, j);
                (void)di_gguf_arr_str(kv, j, &s);
            }
        }
        uint64_t u;
        float f;
        di_gguf_str s;
        (void)di_gguf_get_u64(g, "llama.embedding_length", &u, &err);
        (void)di_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f, &err);
        (void)di_gguf_get_str(g, "general.architecture", &s, &err);
        (void)di_gguf_tensor_find(g, "token_embd.weight");
        /* the cross-checks: any verdict is fine, a failure must name the file */
        di_config c;
        if (di_config_read(g, &c, &err) != DI_OK && strncmp(err.msg, "fuzz.gguf: ", 11) != 0) abort();
        /* the tokenizer (any kind the file names) and the chat template, when the file has them */
        di_tokenizer *tok = NULL;
        if (di_tokenizer_load(g, &tok, &err) == DI_OK) {
            static const char *const texts[] = {"Hello, world! 123 4567", "  \t\n\n x'll \xe4\xb8\xad\xff", "<|im_start|>a"};
            for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
                int32_t *ids = NULL;
                size_t n = 0;
                if (di_tokenize_prompt(tok, texts[k], strlen(texts[k]), k == 2, &ids, &n, &err) == DI_OK) free(ids);
            }
            di_tokenizer_free(tok);
        }
        di_chat_template *tmpl = NULL;
        if (di_chat_template_load(g, NULL, &tmpl, &err) == DI_OK) di_chat_template_free(tmpl);
        di_gguf_close(g);
    } else if (g != NULL || strncmp(err.msg, "fuzz.gguf: ", 11) != 0) {
        abort(); /* a failure must leave no handle and name the file */
    }
    free(copy);
    return 0;
}
