/* Chat templates (model/chat.h). A family is recognised from marker substrings of the GGUF's
 * tokenizer.chat_template, as llama.cpp's llm_chat_detect_template does, and rendered here as
 * llama.cpp's llm_chat_apply_template renders it (no Jinja interpreter). One table, FAMILIES,
 * says for each family its name, the text that ends a turn, and how it renders. */
#include "model/chat.h"
#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    R_CHATML, R_SMOLLM, R_LLAMA3, R_GEMMA, R_PHI3, R_LLAMA2, R_MISTRAL_V1, R_MISTRAL_V3, R_MISTRAL_V7,
} render_kind;

/* Options of the [INST] families. */
enum { F_SYS = 1, F_SYS_BOS = 2, F_STRIP = 4, F_TEKKEN = 8 };

/* X(name, render, flags, end of turn) */
#define CHAT_FAMILIES(X)                                            \
    X("chatml", R_CHATML, 0, "<|im_end|>")                          \
    X("smollm", R_SMOLLM, 0, "<|im_end|>")                          \
    X("llama3", R_LLAMA3, 0, "<|eot_id|>")                          \
    X("gemma", R_GEMMA, 0, "<end_of_turn>")                         \
    X("phi3", R_PHI3, 0, "<|end|>")                                 \
    X("llama2", R_LLAMA2, 0, "</s>")                                \
    X("llama2-sys", R_LLAMA2, F_SYS, "</s>")                        \
    X("llama2-sys-bos", R_LLAMA2, F_SYS | F_SYS_BOS, "</s>")        \
    X("llama2-sys-strip", R_LLAMA2, F_SYS | F_STRIP, "</s>")        \
    X("mistral-v1", R_MISTRAL_V1, 0, "</s>")                        \
    X("mistral-v3", R_MISTRAL_V3, 0, "</s>")                        \
    X("mistral-v3-tekken", R_MISTRAL_V3, F_TEKKEN, "</s>")          \
    X("mistral-v7", R_MISTRAL_V7, 0, "</s>")                        \
    X("mistral-v7-tekken", R_MISTRAL_V7, F_TEKKEN, "</s>")

typedef struct family { const char *name; render_kind render; int flags; const char *end; } family;

static const family FAMILIES[] = {
#define X(name, render, flags, end) {name, render, flags, end},
    CHAT_FAMILIES(X)
#undef X
};
enum { N_FAMILIES = sizeof FAMILIES / sizeof FAMILIES[0] };

struct di_chat_template { const family *f; };

/* SmolLM2's template opens with this system turn when the first message is not a system one. */
#define SMOLLM2_DEFAULT_SYSTEM "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

static const family *family_named(const char *name)
{
    for (int i = 0; i < N_FAMILIES; i++)
        if (!strcmp(FAMILIES[i].name, name)) return &FAMILIES[i];
    return NULL;
}

const char *di_chat_families(void)
{
    static const char list[] = ""
#define X(name, render, flags, end) ", " name
        CHAT_FAMILIES(X)
#undef X
        ;
    return list + 2; /* past the first ", " */
}

/* ---- recognising a template ------------------------------------------------------------- */

static bool has(const char *t, const char *s) { return strstr(t, s) != NULL; }

/* The [INST] families, told apart by the markers of Mistral's official templates and of Llama 2's
 * variants (system block, BOS inside the history, stripped content). */
static const char *inst_family(const char *t)
{
    if (has(t, "[SYSTEM_PROMPT]")) return "mistral-v7";
    if (has(t, "' [INST] ' + system_message") || has(t, "[AVAILABLE_TOOLS]")) {
        if (has(t, " [INST]")) return "mistral-v1";
        if (has(t, "\"[INST]\"")) return "mistral-v3-tekken";
        return "mistral-v3";
    }
    if (has(t, "content.strip()")) return "llama2-sys-strip";
    if (has(t, "bos_token + '[INST]")) return "llama2-sys-bos";
    if (has(t, "<<SYS>>")) return "llama2-sys";
    return "llama2";
}

/* The family a template's text belongs to, or NULL (llama.cpp's order of checks). */
static const char *detect(const char *t)
{
    if (has(t, "<|im_start|>")) {
        if (has(t, "<|im_sep|>") || has(t, "<end_of_utterance>")) return NULL; /* Phi-4, SmolVLM: not ChatML */
        return has(t, SMOLLM2_DEFAULT_SYSTEM) ? "smollm" : "chatml";
    }
    if (!strncmp(t, "mistral", 7) || has(t, "[INST]")) return inst_family(t);
    if (has(t, "<|assistant|>") && has(t, "<|end|>")) return "phi3";
    if (has(t, "<start_of_turn>")) return "gemma";
    if (has(t, "<|start_header_id|>") && has(t, "<|end_header_id|>")) return "llama3";
    return NULL;
}

static int make(const family *f, di_chat_template **out, di_err *err)
{
    di_chat_template *t = calloc(1, sizeof *t);
    if (!t) return di_fail(err, DI_ENOMEM, "out of memory");
    t->f = f;
    *out = t;
    return DI_OK;
}

/* A short quote of a template for messages: its first 60 bytes on one line. */
static void quote(const char *text, size_t len, char out[80])
{
    size_t n = len < 60 ? len : 60, o = 0;
    for (size_t i = 0; i < n; i++) out[o++] = text[i] == '\n' ? ' ' : text[i];
    out[o] = 0;
    if (len > 60) strcat(out, "...");
}

int di_chat_template_parse(const char *text, const char *where, di_chat_template **out, di_err *err)
{
    *out = NULL;
    const family *f = family_named(text);   /* a family's name stands for itself, as in llama.cpp */
    const char *name = f ? f->name : detect(text);
    if (!name) {
        char q[80];
        quote(text, strlen(text), q);
        return di_fail(err, DI_EUSAGE, "%s: unrecognised chat template \"%s\"; name one with --chat-template NAME (%s)",
                       where ? where : "chat template", q, di_chat_families());
    }
    return make(family_named(name), out, err);
}

int di_chat_template_load(const di_gguf *g, const char *override, di_chat_template **out, di_err *err)
{
    *out = NULL;
    if (override) {
        const family *f = family_named(override);
        if (!f)
            return di_fail(err, DI_EUSAGE, "--chat-template %s: unknown template family (known: %s)", override,
                           di_chat_families());
        return make(f, out, err);
    }
    const di_gguf_kv *kv = g ? di_gguf_find(g, "tokenizer.chat_template") : NULL;
    if (!kv)
        return di_fail(err, DI_EUSAGE, "%s: no tokenizer.chat_template; name one with --chat-template NAME (%s)",
                       g ? g->path : "(no model)", di_chat_families());
    di_gguf_str s;
    if (di_gguf_get_str(g, "tokenizer.chat_template", &s, err)) return err->code;
    char *text = strndup(s.ptr, (size_t)s.len);
    if (!text) return di_fail(err, DI_ENOMEM, "out of memory");
    char where[1100];
    snprintf(where, sizeof where, "%s: tokenizer.chat_template", g->path);
    int rc = di_chat_template_parse(text, where, out, err);
    free(text);
    return rc;
}

void di_chat_template_free(di_chat_template *t) { free(t); }

const char *di_chat_template_name(const di_chat_template *t) { return t->f->name; }
const char *di_chat_template_end(const di_chat_template *t) { return t->f->end; }

/* ---- rendering ------------------------------------------------------------------------------ */

typedef struct { char *p; size_t n, cap; bool oom; } buf;

static void putn(buf *b, const char *s, size_t k)
{
    if (b->oom) return;
    if (b->n + k + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + k + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = true; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, k);
    b->n += k;
    b->p[b->n] = 0;
}

static void put(buf *b, const char *s) { putn(b, s, strlen(s)); }

/* The content without leading and trailing white space (Jinja's trim, Python's strip). */
static void put_trimmed(buf *b, const char *s)
{
    size_t n = strlen(s);
    while (n && isspace((unsigned char)*s)) { s++; n--; }
    while (n && isspace((unsigned char)s[n - 1])) n--;
    putn(b, s, n);
}

static bool is(const char *role, const char *want) { return !strcmp(role, want); }

static void chatml_turn(buf *b, const char *role, const char *content)
{
    put(b, "<|im_start|>");
    put(b, role);
    put(b, "\n");
    put(b, content);
    put(b, "<|im_end|>\n");
}

static void render_chatml(buf *b, const di_chat_msg *m, int n, bool smollm)
{
    /* SmolLM2's template: a default system turn unless the first message is a system one */
    if (smollm && (n == 0 || !is(m[0].role, "system"))) chatml_turn(b, "system", SMOLLM2_DEFAULT_SYSTEM);
    for (int i = 0; i < n; i++) chatml_turn(b, m[i].role, m[i].content);
}

static void render_llama3(buf *b, const di_chat_msg *m, int n)
{
    for (int i = 0; i < n; i++) {
        put(b, "<|start_header_id|>");
        put(b, m[i].role);
        put(b, "<|end_header_id|>\n\n");
        put_trimmed(b, m[i].content);
        put(b, "<|eot_id|>");
    }
}

/* Gemma has no system role: system text goes before the next user turn's content. */
static void render_gemma(buf *b, const di_chat_msg *m, int n)
{
    buf sys = {0};
    for (int i = 0; i < n; i++) {
        if (is(m[i].role, "system")) {
            put_trimmed(&sys, m[i].content);
            continue;
        }
        bool model = is(m[i].role, "assistant");
        put(b, "<start_of_turn>");
        put(b, model ? "model" : m[i].role);
        put(b, "\n");
        if (sys.n && !model) {
            put(b, sys.p);
            put(b, "\n\n");
            sys.n = 0;
        }
        put_trimmed(b, m[i].content);
        put(b, "<end_of_turn>\n");
    }
    b->oom |= sys.oom;
    free(sys.p);
}

static void render_phi3(buf *b, const di_chat_msg *m, int n)
{
    for (int i = 0; i < n; i++) {
        put(b, "<|");
        put(b, m[i].role);
        put(b, "|>\n");
        put(b, m[i].content);
        put(b, "<|end|>\n");
    }
}

static void render_llama2(buf *b, const di_chat_msg *m, int n, int flags)
{
    bool in_turn = true; /* the first [INST] is written here; BOS is the tokenizer's */
    put(b, "[INST] ");
    for (int i = 0; i < n; i++) {
        if (!in_turn) {
            in_turn = true;
            put(b, flags & F_SYS_BOS ? "<s>[INST] " : "[INST] ");
        }
        bool strip = flags & F_STRIP;
        if (is(m[i].role, "system")) {
            /* without a system block the system text still leads the first user message */
            put(b, flags & F_SYS ? "<<SYS>>\n" : "");
            strip ? put_trimmed(b, m[i].content) : put(b, m[i].content);
            put(b, flags & F_SYS ? "\n<</SYS>>\n\n" : "\n");
        } else if (is(m[i].role, "user")) {
            strip ? put_trimmed(b, m[i].content) : put(b, m[i].content);
            put(b, " [/INST]");
        } else {
            strip ? put_trimmed(b, m[i].content) : put(b, m[i].content);
            put(b, "</s>");
            in_turn = false;
        }
    }
}

/* Mistral v1 (" [INST] ... [/INST]"), v3 ("[INST] ...[/INST] reply", replies trimmed) and
 * v3-tekken (no spaces). */
static void render_mistral(buf *b, const di_chat_msg *m, int n, bool v1, bool tekken)
{
    const char *lead = v1 ? " " : "", *trail = tekken ? "" : " ";
    bool in_turn = false;
    for (int i = 0; i < n; i++) {
        if (!in_turn) {
            put(b, lead);
            put(b, "[INST]");
            put(b, trail);
            in_turn = true;
        }
        if (is(m[i].role, "system")) {
            put(b, m[i].content);
            put(b, "\n\n");
        } else if (is(m[i].role, "user")) {
            put(b, m[i].content);
            put(b, lead);
            put(b, "[/INST]");
        } else {
            put(b, trail);
            !v1 && !tekken ? put_trimmed(b, m[i].content) : put(b, m[i].content);
            put(b, "</s>");
            in_turn = false;
        }
    }
}

static void render_mistral_v7(buf *b, const di_chat_msg *m, int n, bool tekken)
{
    const char *sp = tekken ? "" : " ";
    for (int i = 0; i < n; i++) {
        bool sys = is(m[i].role, "system"), user = is(m[i].role, "user");
        put(b, sys ? "[SYSTEM_PROMPT]" : user ? "[INST]" : "");
        put(b, sp);
        put(b, m[i].content);
        put(b, sys ? "[/SYSTEM_PROMPT]" : user ? "[/INST]" : "</s>");
    }
}

int di_chat_render(const di_chat_template *t, const di_chat_msg *msgs, int n, bool add_assistant, char **out,
                   di_err *err)
{
    *out = NULL;
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content)
            return di_fail(err, DI_EUSAGE, "chat message %d has no %s", i + 1, msgs[i].role ? "content" : "role");
    buf b = {0};
    put(&b, "");
    const family *f = t->f;
    /* the [INST] families have no generation prompt: the prompt ends with [/INST] */
    const char *open = NULL;
    switch (f->render) {
    case R_CHATML: render_chatml(&b, msgs, n, false); open = "<|im_start|>assistant\n"; break;
    case R_SMOLLM: render_chatml(&b, msgs, n, true); open = "<|im_start|>assistant\n"; break;
    case R_LLAMA3: render_llama3(&b, msgs, n); open = "<|start_header_id|>assistant<|end_header_id|>\n\n"; break;
    case R_GEMMA: render_gemma(&b, msgs, n); open = "<start_of_turn>model\n"; break;
    case R_PHI3: render_phi3(&b, msgs, n); open = "<|assistant|>\n"; break;
    case R_LLAMA2: render_llama2(&b, msgs, n, f->flags); break;
    case R_MISTRAL_V1: render_mistral(&b, msgs, n, true, false); break;
    case R_MISTRAL_V3: render_mistral(&b, msgs, n, false, f->flags & F_TEKKEN); break;
    case R_MISTRAL_V7: render_mistral_v7(&b, msgs, n, f->flags & F_TEKKEN); break;
    }
    if (add_assistant && open) put(&b, open);
    if (b.oom) { free(b.p); return di_fail(err, DI_ENOMEM, "out of memory rendering a chat"); }
    *out = b.p;
    return DI_OK;
}

/* ---- conversations from JSON ---------------------------------------------------------------- */

struct di_chat_conv { json_t *root; di_chat_msg *msgs; };

void di_chat_conv_free(di_chat_conv *c)
{
    if (!c) return;
    json_decref(c->root);
    free(c->msgs);
    free(c);
}

int di_chat_messages_load(const char *path, di_chat_conv **out, const di_chat_msg **msgs, int *n, di_err *err)
{
    *out = NULL;
    di_chat_conv *c = calloc(1, sizeof *c);
    if (!c) return di_fail(err, DI_ENOMEM, "%s: out of memory", path);
    json_error_t je;
    int rc = DI_OK;
    size_t count = 0;
    if (!(c->root = json_load_file(path, 0, &je)))
        rc = di_fail(err, DI_EUSAGE, "%s: %s (line %d)", path, je.text, je.line);
    else if (!json_is_array(c->root) || !(count = json_array_size(c->root)) || count > INT32_MAX)
        rc = di_fail(err, DI_EUSAGE, "%s: expected a non-empty JSON list of {\"role\": ..., \"content\": ...}", path);
    else if (!(c->msgs = calloc(count, sizeof *c->msgs)))
        rc = di_fail(err, DI_ENOMEM, "%s: out of memory", path);
    for (size_t i = 0; rc == DI_OK && i < count; i++) {
        json_t *m = json_array_get(c->root, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        const char *content = json_string_value(json_object_get(m, "content"));
        if (!role || !content)
            rc = di_fail(err, DI_EUSAGE, "%s: message %zu has no string \"%s\"", path, i + 1, role ? "content" : "role");
        else
            c->msgs[i] = (di_chat_msg){role, content};
    }
    if (rc) { di_chat_conv_free(c); return rc; }
    *out = c;
    *msgs = c->msgs;
    *n = (int)count;
    return DI_OK;
}
