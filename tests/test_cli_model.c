/* generate's model-inspection and chat flags as a person runs them: --tokenize (no model load, no
 * runtime; works on a vocabulary-only file), --info (every unsupported thing at once), --chat
 * with --chat-template, -sys and --messages, and their usage errors (exit 2). */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gguf_blob.h"
#include "shell.h"

#define GEN DI_GENERATE_PATH

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* A vocabulary-only SentencePiece file as Gemma's: BOS added, no space prefix, '▁' pieces, the
 * turn markers, and the 256 byte tokens (ids 14..269) for everything else; no tensors unless asked. */
enum { N_BASE = 14, N_VOCAB = N_BASE + 256 };

static void write_spm_vocab(const char *path, bool with_tensors)
{
    static const char *const base[N_BASE] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "h", "i", "\xe2\x96\x81h",
                                            "\xe2\x96\x81hi", "<start_of_turn>", "<end_of_turn>", "user", "model", "\n", "hi"};
    static const int32_t base_types[N_BASE] = {2, 3, 3, 1, 1, 1, 1, 1, 3, 3, 1, 1, 1, 1};
    static const float base_scores[N_BASE] = {0, 0, 0, -1, -2, -2, -3, -1, 0, 0, -1, -1, -1, -1};
    static char bytes[256][8];
    const char *toks[N_VOCAB];
    int32_t types[N_VOCAB];
    float scores[N_VOCAB];
    for (int i = 0; i < N_VOCAB; i++) {
        if (i < N_BASE) {
            toks[i] = base[i];
            types[i] = base_types[i];
            scores[i] = base_scores[i];
        } else {
            snprintf(bytes[i - N_BASE], sizeof bytes[0], "<0x%02X>", i - N_BASE);
            toks[i] = bytes[i - N_BASE];
            types[i] = 6;
            scores[i] = 0;
        }
    }
    static uint8_t iq2[66 * 2], q5[22 * 2];
    gguf_blob b = gb_begin();
    gb_kv_str(&b, "general.architecture", "gemma3");
    gb_kv_u32(&b, "gemma3.context_length", 4096);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    gb_kv_strs(&b, "tokenizer.ggml.tokens", toks, N_VOCAB);
    gb_kv_f32s(&b, "tokenizer.ggml.scores", scores, N_VOCAB);
    gb_kv_i32s(&b, "tokenizer.ggml.token_type", types, N_VOCAB);
    gb_kv_u32(&b, "tokenizer.ggml.bos_token_id", 1);
    gb_kv_u32(&b, "tokenizer.ggml.eos_token_id", 2);
    gb_kv_bool(&b, "tokenizer.ggml.add_space_prefix", false);
    gb_kv_str(&b, "tokenizer.chat_template", "{{ '<start_of_turn>' + role }} ... <end_of_turn>");
    if (with_tensors) {
        gb_tensor_add(&b, (gb_tensor){.name = "blk.0.ffn_up.weight", .type = DI_GGML_IQ2_XXS, .n_dims = 2,
                                      .dims = {256, 2}, .data = iq2, .nbytes = sizeof iq2});
        gb_tensor_add(&b, (gb_tensor){.name = "blk.0.attn_q.weight", .type = DI_GGML_Q5_0, .n_dims = 2,
                                      .dims = {32, 2}, .data = q5, .nbytes = sizeof q5});
    }
    gb_finish(&b);
    write_file(path, b.p, b.n);
    free(b.p);
}

/* How many times id appears in a printed JSON array of ids. */
static int count_id(const char *out, int id)
{
    int n = 0;
    for (const char *p = strchr(out, '['); p && *p && *p != ']'; p++) {
        if (*p == '[' || *p == ' ') {
            char *end;
            long v = strtol(p + 1, &end, 10);
            if (end != p + 1 && v == id) n++;
        }
    }
    return n;
}

Test(cli_model, tokenize_a_vocabulary_only_file)
{
    char path[] = "/tmp/detinfer-vocab-XXXXXX";
    close(mkstemp(path));
    write_spm_vocab(path, false);
    /* no runtime is opened: --device cuda would fail here otherwise on a machine without a GPU */
    ran r = sh(GEN " -m %s --tokenize -p 'hi hi' --device cuda", path);
    expect(&r, 0, "[1, 13, 7]\n");   /* BOS, hi, ▁hi: no space before the text (add_space_prefix false) */
    /* gemma's turns: <start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n */
    r = sh(GEN " -m %s --tokenize -p 'hi' --chat", path);
    /* "user" and "model" cannot be merged from their letters (no pair of them is a token), so
     * they fall back to byte tokens (14 + the byte), as SentencePiece does */
    expect(&r, 0, "[1, 8, 131, 129, 115, 128, 12, 13, 9, 12, 8, 123, 125, 114, 115, 122, 12]\n");
    unlink(path);
}

Test(cli_model, tokenize_llama_cpp_vocab)
{
    const char *d = getenv("DETINFER_VOCAB_DIR");
    if (!d || !*d) cr_skip_test("DETINFER_VOCAB_DIR is not set (scripts/fetch-vocabs)");
    ran r = sh(GEN " -m %s/ggml-vocab-llama-bpe.gguf --tokenize -p 'Hello world'", d);
    expect(&r, 0, "[128000, 9906, 1917]\n");   /* BOS: llama-bpe adds it */
    r = sh(GEN " -m %s/ggml-vocab-qwen2.gguf --tokenize -p 'Hello world'", d);
    expect(&r, 0, "[9707, 1879]\n");             /* no BOS for Qwen 2 */
}

/* Every unsupported thing in one listing: a type without a dequantizer, the model's missing
 * hyper-parameters (the file is a gemma3 vocabulary with two tensors), the template; the
 * supported Q5_0 is counted and not listed. */
Test(cli_model, info_lists_everything_unsupported)
{
    char path[] = "/tmp/detinfer-info-XXXXXX";
    close(mkstemp(path));
    write_spm_vocab(path, true);
    ran r = sh(GEN " -m %s --info", path);
    unlink(path);
    expect(&r, 0, "architecture: gemma3");
    cr_assert(strstr(r.out, "context length: 4096"), "%s", r.out);
    cr_assert(strstr(r.out, "IQ2_XXS 1 (unsupported)") && strstr(r.out, "Q5_0 1"), "%s", r.out);
    cr_assert(strstr(r.out, "tokenizer: llama, 270 tokens, BOS added"), "%s", r.out);
    cr_assert(strstr(r.out, "chat template: gemma"), "%s", r.out);
    const char *u = strstr(r.out, "unsupported:");
    cr_assert_not_null(u, "%s", r.out);
    cr_assert(strstr(u, "tensor type IQ2_XXS (type 16)"), "%s", u);
    cr_assert(strstr(u, "metadata key gemma3.block_count is missing"), "%s", u);
    cr_assert_null(strstr(u, "Q5_0"), "%s", u);
}

Test(cli_model, info_names_unknown_pre_tokenizer_and_template)
{
    static const char *const toks[] = {"a", "b", "ab"};
    static const char *const merges[] = {"a b"};
    gguf_blob b = gb_begin();
    gb_kv_str(&b, "general.architecture", "llama");
    gb_kv_str(&b, "tokenizer.ggml.model", "gpt2");
    gb_kv_str(&b, "tokenizer.ggml.pre", "brand-new-pre");
    gb_kv_strs(&b, "tokenizer.ggml.tokens", toks, 3);
    gb_kv_strs(&b, "tokenizer.ggml.merges", merges, 1);
    gb_kv_str(&b, "tokenizer.chat_template", "{{ 'Human: ' + message }}");
    gb_finish(&b);
    char path[] = "/tmp/detinfer-info-XXXXXX";
    close(mkstemp(path));
    write_file(path, b.p, b.n);
    free(b.p);
    ran r = sh(GEN " -m %s --info", path);
    unlink(path);
    expect(&r, 0, "unsupported:");
    cr_assert(strstr(r.out, "tokenizer.ggml.pre is 'brand-new-pre'"), "%s", r.out);
    cr_assert(strstr(r.out, "unrecognised chat template \"{{ 'Human: '"), "%s", r.out);
}

Test(cli_model, chat_flag_errors_exit_2)
{
    char path[] = "/tmp/detinfer-vocab-XXXXXX", msgs[] = "/tmp/detinfer-msgs-XXXXXX";
    close(mkstemp(path));
    close(mkstemp(msgs));
    write_spm_vocab(path, false);
    ran r = sh(GEN " -m %s --tokenize -p hi --chat-template vicuna", path);
    expect(&r, 2, "--chat-template vicuna");
    r = sh(GEN " -m %s --tokenize --messages /nonexistent/m.json", path);
    expect(&r, 2, "--messages /nonexistent/m.json");
    write_file(msgs, "[{\"role\": \"user\"}]", 18);
    r = sh(GEN " -m %s --tokenize --messages %s", path, msgs);
    expect(&r, 2, "message 1 has no string \"content\"");
    write_file(msgs, "{\"role\": 1}", 11);
    r = sh(GEN " -m %s --tokenize --messages %s", path, msgs);
    expect(&r, 2, "non-empty JSON list");
    /* a good conversation: rendered by the file's (gemma) template, system text into the user turn */
    const char conv[] = "[{\"role\": \"system\", \"content\": \"hi\"}, {\"role\": \"user\", \"content\": \"hi\"}]";
    write_file(msgs, conv, sizeof conv - 1);
    r = sh(GEN " -m %s --tokenize --messages %s", path, msgs);
    expect(&r, 0, "[1, 8, 131, 129, 115, 128, 12, 13, 12, 12, 13, 9, 12, 8, 123, 125, 114, 115, 122, 12]\n"); /* hi\n\nhi */
    /* -sys and --messages together: the system message first */
    r = sh(GEN " -m %s --tokenize --messages %s -sys hi", path, msgs);
    cr_assert_eq(count_id(r.out, 13), 3, "%s", r.out);
    r = sh(GEN " -m %s --tokenize -p hi --messages %s", path, msgs);
    expect(&r, 2, "exactly one of -p, -f, --batch-file or --messages");
    r = sh(GEN " -m %s --tokenize --batch-file %s", path, msgs);
    expect(&r, 2, "--tokenize takes");
    unlink(path);
    unlink(msgs);
}

/* SmolLM2: --chat keeps its template's default system turn; -sys replaces it. */
Test(cli_model, smollm2_chat_tokens)
{
    const char *m = getenv("DETINFER_MODEL");
    if (!m || !*m) cr_skip_test("DETINFER_MODEL is not set");
    ran r = sh(GEN " -m %s --tokenize -p Hi --chat", m);
    /* <|im_start|>system\n You are a helpful AI assistant named SmolLM ... */
    expect(&r, 0, "[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, "
                  "8182, 2, 198, 1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198]");
    r = sh(GEN " -m %s --tokenize -p Hi -sys 'Be brief.'", m);
    expect(&r, 0, "[1, 9690, 198, ");
    cr_assert_null(strstr(r.out, "5356, 5646"), "the default system text is still there:\n%s", r.out);
}

/* The real Gemma 3 file: --info reads it without loading it, --tokenize adds BOS. */
Test(cli_model, gemma3_info_and_tokenize)
{
    const char *g = getenv("DETINFER_GEMMA3");
    if (!g || !*g || access(g, R_OK)) cr_skip_test("DETINFER_GEMMA3 is not set (scripts/fetch-model --gemma3)");
    ran r = sh(GEN " -m %s --info", g);
    expect(&r, 0, "architecture: gemma3");
    cr_assert(strstr(r.out, "Q4_K 27") && strstr(r.out, "Q6_K 9") && strstr(r.out, "Q5_0 81"), "%s", r.out);
    cr_assert(strstr(r.out, "tokenizer: llama, 262144 tokens, BOS added"), "%s", r.out);
    cr_assert(strstr(r.out, "context length: 32768"), "%s", r.out);
    cr_assert_null(strstr(r.out, "(unsupported)"), "a tensor type is unsupported:\n%s", r.out);
    r = sh(GEN " -m %s --tokenize -p 'The capital of France is'", g);
    expect(&r, 0, "[2, ");
    r = sh(GEN " -m %s --tokenize -p Hi --chat-template gemma", g);
    expect(&r, 0, "[2, 105, 2364, 107, ");
}

/* bench_model reads the shape through the model's config reader: a Gemma 3 file (not llama.*
 * keys) plans, and its packed load reports what it holds. */
Test(cli_model, bench_model_reads_every_architecture, .timeout = 300)
{
    const char *g = getenv("DETINFER_GEMMA3");
    if (!g || !*g) cr_skip_test("DETINFER_GEMMA3 is not set (scripts/test fetches Gemma 3 270M)");
    ran r = sh(DI_BUILD_DIR "/bench_model -m %s --info", g);
    expect(&r, 0, "18 layers, dim 640, 4 heads (1 KV, head dim 256), ffn 2048, vocab 262144");
    r = sh(DI_BUILD_DIR "/bench_model -m %s --device cpu -t 2 --cpu-compiler cc --prompt-len 4 --batch 1 --steps 1 "
           "--warmup 0 --no-prefill", g);
    expect(&r, 0, "63 of 73 matrices packed");
    r = sh(DI_BUILD_DIR "/bench_model -m %s --weights int4", g);
    expect(&r, 2, "--weights takes auto, packed or bf16, not 'int4'");
}
