/* Chat templates: a conversation (role, content messages) rendered to the prompt text a model
 * was trained on. The template comes from the GGUF's tokenizer.chat_template, recognised as one
 * of a few families and rendered in C (no Jinja interpreter), or is named by the caller.
 * Shared by generate (--chat) and serve (/v1/chat/completions). */
#ifndef DI_CHAT_H
#define DI_CHAT_H
#include <stdbool.h>
#include "base/err.h"
#include "model/gguf.h"

typedef struct di_chat_msg {
    const char *role;      /* "system", "user", "assistant" */
    const char *content;   /* UTF-8, NUL-terminated */
} di_chat_msg;

typedef struct di_chat_template di_chat_template;

/* The model's template: override (a family name, e.g. "chatml") when not NULL, else the GGUF's
 * tokenizer.chat_template. An unrecognised or missing template is DI_EUSAGE naming it and the
 * override flag (--chat-template NAME). */
int di_chat_template_load(const di_gguf *g, const char *override, di_chat_template **out, di_err *err);
void di_chat_template_free(di_chat_template *t);
const char *di_chat_template_name(const di_chat_template *t);   /* the family, e.g. "smollm" */
/* The text that ends a turn in this family ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>"):
 * generation stops at its token too. */
const char *di_chat_template_end(const di_chat_template *t);
/* A template from its text (a Jinja template, or a family's name); where names it in errors. */
int di_chat_template_parse(const char *text, const char *where, di_chat_template **out, di_err *err);
/* The family names, comma-separated: chatml, smollm, llama3, gemma, phi3, llama2..., mistral-v1... */
const char *di_chat_families(void);

/* Renders n messages; add_assistant opens the assistant's turn (generation prompt). *out is
 * malloc'd, NUL-terminated; special markers appear as text (tokenize with parse_special). */
int di_chat_render(const di_chat_template *t, const di_chat_msg *msgs, int n, bool add_assistant, char **out,
                   di_err *err);

/* A conversation read from a JSON file: a list of {"role": ..., "content": ...} (generate
 * --messages). DI_EUSAGE naming the file and the message at fault. *msgs stays valid until
 * di_chat_conv_free(*conv). */
typedef struct di_chat_conv di_chat_conv;
int di_chat_messages_load(const char *path, di_chat_conv **conv, const di_chat_msg **msgs, int *n, di_err *err);
void di_chat_conv_free(di_chat_conv *conv);

#endif
