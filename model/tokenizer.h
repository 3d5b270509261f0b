/* Tokenizers from tokenizer.ggml.* metadata, as llama.cpp's: byte-level BPE (tokenizer.ggml.model
 * gpt2) with the pre-tokenizer tokenizer.ggml.pre names (model/pretok.c: llama-bpe, qwen2, smollm,
 * gpt-2, deepseek-llm, falcon, ...), SentencePiece (llama: Llama 2, Mistral, Gemma) and Gemma 4's
 * BPE (gemma4); special tokens (<|im_start|>, ...), add_bos_token / add_eos_token. */
#ifndef DI_TOKENIZER_H
#define DI_TOKENIZER_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "model/gguf.h"

typedef struct di_tokenizer di_tokenizer;

int di_tokenizer_load(const di_gguf *g, di_tokenizer **out, di_err *err);
void di_tokenizer_free(di_tokenizer *t);
int di_tokenizer_vocab_size(const di_tokenizer *t);
int di_tokenizer_bos(const di_tokenizer *t);
int di_tokenizer_eos(const di_tokenizer *t);   /* tokenizer.ggml.eos_token_id, or -1 (also bos, eot, eom) */
int di_tokenizer_eot(const di_tokenizer *t);
int di_tokenizer_eom(const di_tokenizer *t);
bool di_tokenizer_adds_bos(const di_tokenizer *t);  /* add_bos_token, or the kind's default */
bool di_tokenizer_adds_eos(const di_tokenizer *t);
const char *di_tokenizer_model(const di_tokenizer *t);  /* "gpt2", "llama", "gemma4" */
const char *di_tokenizer_pre(const di_tokenizer *t);    /* tokenizer.ggml.pre, e.g. "llama-bpe"; NULL for llama */
const char *di_tokenizer_pre_rule(const di_tokenizer *t); /* the rule it shares ("smollm" for command-r) */
/* The end-of-generation ids: eos, eot and eom from the metadata, and the CONTROL tokens llama.cpp
 * ends generation at by their text (<|eot_id|>, <|im_end|>, <end_of_turn>, <|endoftext|>, ...),
 * ascending. Returns the count; *ids stays valid while t lives. */
int di_tokenizer_eog(const di_tokenizer *t, const int32_t **ids);
bool di_tokenizer_is_eog(const di_tokenizer *t, int32_t id);
bool di_tokenizer_is_special(const di_tokenizer *t, int32_t id);  /* control, user-defined or unknown */
/* id of a special token by its text, e.g. "<|im_end|>", or -1 */
int di_tokenizer_special(const di_tokenizer *t, const char *text);

/* Encodes len bytes of text. parse_special: control tokens written in the text
 * (e.g. "<|im_start|>") become their ids; otherwise they are ordinary text.
 * *ids is malloc'd; caller frees. DI_EUSAGE, naming the byte, if the text holds a byte that no
 * token stands for (SmolLM2 lacks 21 of the 256, e.g. 0x04 and 0xFF). */
int di_tokenize(const di_tokenizer *t, const char *text, size_t len, bool parse_special,
                int32_t **ids, size_t *n, di_err *err);
/* The same with BOS before and EOS after where the vocabulary adds them (llama.cpp's
 * add_special): what a prompt is fed as. */
int di_tokenize_prompt(const di_tokenizer *t, const char *text, size_t len, bool parse_special,
                       int32_t **ids, size_t *n, di_err *err);
/* The bytes a token stands for (byte-level decoding undone; U+2581 as a space, <0xNN> as its
 * byte). Exact round trip: concatenating the pieces of di_tokenize(s) gives back s (SentencePiece:
 * after the one space add_space_prefix put before it). */
int di_token_piece(const di_tokenizer *t, int32_t id, const char **bytes, size_t *len);

/* ChatML as SmolLM2's tokenizer.chat_template renders one user message (malloc'd): its default
 * system turn "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging
 * Face<|im_end|>\n", then "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n". */
char *di_chat_prompt(const char *user_prompt);

#endif
