/* Chat templates (model/chat.h). Families are recognised from the template text and rendered
 * here; today only SmolLM2's ChatML variant. */
#include "model/chat.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { CHAT_SMOLLM } chat_family;

struct di_chat_template { chat_family family; };

static const char *const family_names[] = {"smollm"};

/* SmolLM2's template opens with this system turn when the first message is not a system one. */
#define SMOLLM2_DEFAULT_SYSTEM "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

int di_chat_template_load(const di_gguf *g, const char *override, di_chat_template **out, di_err *err)
{
    (void)g;
    if (override && strcmp(override, "smollm"))
        return di_fail(err, DI_EUSAGE, "--chat-template %s: unknown template family (known: smollm)", override);
    di_chat_template *t = calloc(1, sizeof *t);
    if (!t) return di_fail(err, DI_ENOMEM, "out of memory");
    t->family = CHAT_SMOLLM;
    *out = t;
    return DI_OK;
}

void di_chat_template_free(di_chat_template *t) { free(t); }

const char *di_chat_template_name(const di_chat_template *t) { return family_names[t->family]; }

typedef struct { char *p; size_t n, cap; bool oom; } buf;

static void put(buf *b, const char *s)
{
    size_t k = strlen(s);
    if (b->oom) return;
    if (b->n + k + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + k + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = true; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, k + 1);
    b->n += k;
}

static void chatml_turn(buf *b, const char *role, const char *content)
{
    put(b, "<|im_start|>");
    put(b, role);
    put(b, "\n");
    put(b, content);
    put(b, "<|im_end|>\n");
}

int di_chat_render(const di_chat_template *t, const di_chat_msg *msgs, int n, bool add_assistant, char **out,
                   di_err *err)
{
    (void)t;
    buf b = {0};
    put(&b, "");
    for (int i = 0; i < n; i++) {
        if (i == 0 && strcmp(msgs[0].role, "system")) chatml_turn(&b, "system", SMOLLM2_DEFAULT_SYSTEM);
        chatml_turn(&b, msgs[i].role, msgs[i].content);
    }
    if (n == 0) chatml_turn(&b, "system", SMOLLM2_DEFAULT_SYSTEM);
    if (add_assistant) put(&b, "<|im_start|>assistant\n");
    if (b.oom) { free(b.p); return di_fail(err, DI_ENOMEM, "out of memory rendering a chat"); }
    *out = b.p;
    return DI_OK;
}
