/* Chat templates (model/chat.c): the templates of llama.cpp's tests/test-chat-template.cpp
 * (tests/data/chat_cases.json, made by tests/data/make_chat_cases.py) are recognised as their
 * family and render the expected prompt, or are refused naming the override flag; SmolLM2's own
 * template keeps its default system turn; the real GGUFs' templates are recognised. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf_blob.h"
#include "model/chat.h"

#ifndef DI_SOURCE_DIR
#define DI_SOURCE_DIR "."
#endif

Test(chat, llama_cpp_cases_render_as_expected)
{
    json_error_t je;
    json_t *root = json_load_file(DI_SOURCE_DIR "/tests/data/chat_cases.json", 0, &je);
    cr_assert_not_null(root, "tests/data/chat_cases.json: %s (line %d)", je.text, je.line);
    json_t *conv = json_object_get(root, "conversation"), *cases = json_object_get(root, "cases");
    size_t n = json_array_size(conv);
    di_chat_msg msgs[16];
    cr_assert(n > 0 && n <= 16);
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(conv, i);
        msgs[i] = (di_chat_msg){json_string_value(json_array_get(m, 0)), json_string_value(json_array_get(m, 1))};
    }
    int rendered = 0, refused = 0;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *tmpl = json_string_value(json_object_get(c, "template"));
        const char *family = json_string_value(json_object_get(c, "family"));
        const char *want = json_string_value(json_object_get(c, "expected"));
        di_chat_template *t = NULL;
        di_err e = {0};
        int rc = di_chat_template_parse(tmpl, "test.gguf: tokenizer.chat_template", &t, &e);
        if (!family) {
            cr_expect_eq(rc, DI_EUSAGE, "%s: refused template was taken as %s", name, t ? di_chat_template_name(t) : "?");
            cr_expect(rc == 0 || (strstr(e.msg, "--chat-template") && strstr(e.msg, "test.gguf")),
                      "%s: message: %s", name, e.msg);
            di_chat_template_free(t);
            refused++;
            continue;
        }
        cr_assert_eq(rc, 0, "%s: %s", name, e.msg);
        cr_expect_str_eq(di_chat_template_name(t), family, "%s: recognised as %s, not %s", name,
                         di_chat_template_name(t), family);
        char *out;
        cr_assert_eq(di_chat_render(t, msgs, (int)n, true, &out, &e), 0, "%s", e.msg);
        cr_expect_str_eq(out, want, "%s:\n got: %s\nwant: %s", name, out, want);
        free(out);
        di_chat_template_free(t);
        rendered++;
    }
    cr_assert_geq(rendered, 14);
    cr_assert_geq(refused, 5);
    json_decref(root);
}

Test(chat, override_names_and_errors)
{
    di_chat_template *t;
    di_err e = {0};
    cr_assert_eq(di_chat_template_load(NULL, "gemma", &t, &e), 0, "%s", e.msg);
    cr_assert_str_eq(di_chat_template_name(t), "gemma");
    cr_assert_str_eq(di_chat_template_end(t), "<end_of_turn>");
    di_chat_template_free(t);
    cr_assert_eq(di_chat_template_load(NULL, "vicuna", &t, &e), DI_EUSAGE);
    cr_assert(strstr(e.msg, "--chat-template vicuna") && strstr(e.msg, "llama3"), "%s", e.msg);
    /* a GGUF without tokenizer.chat_template: the override flag is the way out */
    gguf_blob b = gb_begin();
    gb_kv_str(&b, "general.architecture", "gemma3");
    gb_finish(&b);
    di_gguf *g;
    cr_assert_eq(di_gguf_open_mem(b.p, b.n, "gemma.gguf", &g, &e), 0, "%s", e.msg);
    cr_assert_eq(di_chat_template_load(g, NULL, &t, &e), DI_EUSAGE);
    cr_assert(strstr(e.msg, "gemma.gguf") && strstr(e.msg, "no tokenizer.chat_template") &&
              strstr(e.msg, "--chat-template NAME"), "%s", e.msg);
    di_gguf_close(g);
    free(b.p);
    /* an unrecognised one in the file is quoted */
    b = gb_begin();
    gb_kv_str(&b, "tokenizer.chat_template", "{{ 'User: ' + content }}");
    gb_finish(&b);
    cr_assert_eq(di_gguf_open_mem(b.p, b.n, "odd.gguf", &g, &e), 0, "%s", e.msg);
    cr_assert_eq(di_chat_template_load(g, NULL, &t, &e), DI_EUSAGE);
    cr_assert(strstr(e.msg, "odd.gguf: tokenizer.chat_template") && strstr(e.msg, "User: ") &&
              strstr(e.msg, "--chat-template NAME"), "%s", e.msg);
    di_gguf_close(g);
    free(b.p);
}

/* SmolLM2's template (as in its GGUF): the default system turn when none is given, and none
 * added when the first message is a system one; the generation prompt only when asked. */
static const char SMOLLM2_TEMPLATE[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

Test(chat, smollm2_default_system_turn)
{
    di_chat_template *t;
    di_err e = {0};
    cr_assert_eq(di_chat_template_parse(SMOLLM2_TEMPLATE, NULL, &t, &e), 0, "%s", e.msg);
    cr_assert_str_eq(di_chat_template_name(t), "smollm");
    char *out;
    di_chat_msg one[] = {{"user", "Hi"}};
    cr_assert_eq(di_chat_render(t, one, 1, true, &out, &e), 0);
    cr_assert_str_eq(out, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                          "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    free(out);
    di_chat_msg two[] = {{"system", "Be brief."}, {"user", "Hi"}};
    cr_assert_eq(di_chat_render(t, two, 2, false, &out, &e), 0);
    cr_assert_str_eq(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    free(out);
    di_chat_template_free(t);
    /* plain ChatML adds no system turn */
    cr_assert_eq(di_chat_template_load(NULL, "chatml", &t, &e), 0);
    cr_assert_eq(di_chat_render(t, one, 1, true, &out, &e), 0);
    cr_assert_str_eq(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    free(out);
    di_chat_msg bad[] = {{"user", NULL}};
    cr_assert_eq(di_chat_render(t, bad, 1, true, &out, &e), DI_EUSAGE);
    di_chat_template_free(t);
}

/* The templates in real files: SmolLM2 ($DETINFER_MODEL) and llama.cpp's vocabularies. */
Test(chat, real_templates_are_recognised)
{
    struct { const char *env, *file, *family; } files[] = {
        {"DETINFER_MODEL", NULL, "smollm"},
        {"DETINFER_VOCAB_DIR", "ggml-vocab-qwen2.gguf", "chatml"},
        {"DETINFER_VOCAB_DIR", "ggml-vocab-phi-3.gguf", "phi3"},
        {"DETINFER_VOCAB_DIR", "ggml-vocab-command-r.gguf", NULL},
    };
    int checked = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        const char *base = getenv(files[i].env);
        if (!base || !*base) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s%s%s", base, files[i].file ? "/" : "", files[i].file ? files[i].file : "");
        if (access(path, R_OK)) continue;
        di_gguf *g;
        di_chat_template *t = NULL;
        di_err e = {0};
        cr_assert_eq(di_gguf_open(path, &g, &e), 0, "%s", e.msg);
        int rc = di_chat_template_load(g, NULL, &t, &e);
        if (files[i].family) {
            cr_assert_eq(rc, 0, "%s", e.msg);
            cr_assert_str_eq(di_chat_template_name(t), files[i].family, "%s", path);
        } else {
            cr_assert_eq(rc, DI_EUSAGE, "%s was recognised", path);
            cr_assert(strstr(e.msg, "--chat-template"), "%s", e.msg);
        }
        di_chat_template_free(t);
        di_gguf_close(g);
        checked++;
    }
    if (!checked) cr_skip_test("no model or vocabulary files (DETINFER_MODEL, DETINFER_VOCAB_DIR)");
}
