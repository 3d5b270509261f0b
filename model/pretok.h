/* Pre-tokenizers of byte-level BPE vocabularies: the text of a fragment cut into words before BPE,
 * as llama.cpp cuts it for each tokenizer.ggml.pre value. A pre-tokenizer is a list of stages
 * applied in order, each cutting every piece the stage before left into its matches and the gaps
 * between them (a stage never looks across a cut). The stages are the few regular expressions
 * llama.cpp's vocabularies use, written by hand over code points and their Unicode classes
 * (model/unicode_tables.h); the table of pre-tokenizers is in pretok.c. */
#ifndef DI_PRETOK_H
#define DI_PRETOK_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Unicode classes of a code point: White_Space first, then the general category's letter. */
enum di_uclass { DI_UC_NONE = 0, DI_UC_SPACE, DI_UC_LETTER, DI_UC_NUMBER, DI_UC_PUNCT, DI_UC_MARK, DI_UC_SYMBOL, DI_UC_OTHER };

/* One unit of text: a code point, or a lone byte that is not valid UTF-8 (cp 0xFFFFFFFF, class
 * SYMBOL: the class of the U+FFFD that llama.cpp substitutes). off: its byte offset. */
typedef struct di_unit { uint32_t cp, off; uint8_t cls; } di_unit;

/* Decodes s[0..n) strictly (no overlong forms, surrogates or values above U+10FFFF) into u
 * (room for n units); returns the count. */
size_t di_decode_units(const char *s, size_t n, di_unit *u);
/* Length of the valid UTF-8 sequence at s[0..n), or 0; *cp gets its value. */
size_t di_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);
enum di_uclass di_classify_cp(uint32_t cp);

typedef struct di_pretok di_pretok;   /* one row of the table */
/* The pre-tokenizer for a tokenizer.ggml.pre value, or NULL when there is none. */
const di_pretok *di_pretok_find(const char *name, size_t len);
const char *di_pretok_name(const di_pretok *p);   /* the value the row is named by, e.g. "llama-bpe" */
bool di_pretok_ignore_merges(const di_pretok *p); /* a word that is a token is that token (llama3) */
bool di_pretok_add_bos(const di_pretok *p);       /* BOS by default when add_bos_token is absent */
/* Every supported value, comma-separated, for messages. */
const char *di_pretok_names(void);

/* A word: units [start, end). */
typedef struct di_span { uint32_t start, end; } di_span;
/* Cuts units u[0..n) into words. words and scratch each have room for n spans; returns the
 * number of words written to *words (which may point to either buffer). */
size_t di_pretok_split(const di_pretok *p, const di_unit *u, size_t n, di_span *a, di_span *b, di_span **words);

#endif
