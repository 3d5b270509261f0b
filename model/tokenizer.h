/* Byte-level BPE (GPT-2 style) from tokenizer.ggml.* metadata, with SmolLM2's pre-tokenizer
 * (single digits split off, then the GPT-2 regex) and special tokens (<|im_start|>, ...). */
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
int di_tokenizer_eos(const di_tokenizer *t);   /* tokenizer.ggml.eos_token_id */
/* id of a special token by its text, e.g. "<|im_end|>", or -1 */
int di_tokenizer_special(const di_tokenizer *t, const char *text);

/* Encodes len bytes of text. parse_special: control tokens written in the text
 * (e.g. "<|im_start|>") become their ids; otherwise they are ordinary text.
 * *ids is malloc'd; caller frees. DI_EUSAGE, naming the byte, if the text holds a byte that no
 * token stands for (SmolLM2 lacks 21 of the 256, e.g. 0x04 and 0xFF). */
int di_tokenize(const di_tokenizer *t, const char *text, size_t len, bool parse_special,
                int32_t **ids, size_t *n, di_err *err);
/* The bytes a token stands for (byte-level decoding undone). Exact round trip:
 * concatenating the pieces of di_tokenize(s) gives back s. */
int di_token_piece(const di_tokenizer *t, int32_t id, const char **bytes, size_t *len);

/* ChatML as SmolLM2's tokenizer.chat_template renders one user message (malloc'd): its default
 * system turn "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging
 * Face<|im_end|>\n", then "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n". */
char *di_chat_prompt(const char *user_prompt);

#endif
