/* generate's log-prob outputs: --json with the bits beside each decimal, --logprobs N, --score
 * and the receipt; the JSON parses (jansson rejects invalid UTF-8) and the numbers agree with
 * their bits. Scoring with nothing to generate (-n 0) works. */
#include "model_fixture.h"
#include <jansson.h>

static char *run(const char *args)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s -m '%s' --device cpu -t 1 %s 2>/dev/null", DI_GENERATE_PATH, model_path(), args);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    static char out[1 << 16];
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    cr_assert_eq(pclose(p), 0, "generate %s failed:\n%s", args, out);
    return out;
}

static void expect_bits(json_t *num, json_t *bits, const char *what, int i)
{
    float f = (float)json_number_value(num);
    uint32_t u;
    memcpy(&u, &f, 4);
    char h[9];
    snprintf(h, sizeof h, "%08x", u);
    cr_assert_str_eq(json_string_value(bits), h, "%s %d: decimal %.9g is %s, bits say %s", what, i, f, h, json_string_value(bits));
}

Test(cli, generate_json_logprobs_score_and_receipt, .timeout = 300)
{
    NEED_MODEL();
    json_error_t je;
    json_t *o = json_loads(run("-p 'The capital of France is' -n 2 --temp 0 --json --logprobs 2 --score"), 0, &je);
    cr_assert_not_null(o, "not JSON: %s", je.text);
    json_t *lp = json_object_get(o, "logprobs"), *bits = json_object_get(o, "logprob_bits"), *top = json_object_get(o, "top_logprobs");
    cr_assert_eq(json_array_size(lp), 2);
    cr_assert_eq(json_array_size(top), 2);
    for (int i = 0; i < 2; i++) {
        expect_bits(json_array_get(lp, i), json_array_get(bits, i), "logprob", i);
        json_t *t = json_array_get(top, i);
        cr_assert_eq(json_array_size(t), 2);
        /* greedy: the chosen token is the top-1, with the same bits */
        cr_assert_eq(json_integer_value(json_object_get(json_array_get(t, 0), "id")),
                     json_integer_value(json_array_get(json_object_get(o, "tokens"), i)));
        cr_assert_str_eq(json_string_value(json_object_get(json_array_get(t, 0), "bits")), json_string_value(json_array_get(bits, i)));
    }
    json_t *plp = json_object_get(o, "prompt_logprobs"), *pbits = json_object_get(o, "prompt_logprob_bits");
    size_t np = json_array_size(json_object_get(o, "prompt_ids"));
    cr_assert_eq(np, 5);
    cr_assert_eq(json_array_size(plp), np);
    cr_assert(json_is_null(json_array_get(plp, 0)) && json_is_null(json_array_get(pbits, 0)));
    for (size_t i = 1; i < np; i++) expect_bits(json_array_get(plp, i), json_array_get(pbits, i), "prompt logprob", (int)i);
    const char *fp = json_string_value(json_object_get(o, "system_fingerprint"));
    cr_assert(fp && strstr(fp, "model sha256:b179c952") && strstr(fp, "exact"), "receipt: %s", fp ? fp : "(none)");
    /* scoring alone: the same prompt log-probs, nothing generated */
    json_t *s = json_loads(run("-p 'The capital of France is' -n 0 --json --score"), 0, &je);
    cr_assert_not_null(s, "not JSON: %s", je.text);
    cr_assert_eq(json_array_size(json_object_get(s, "tokens")), 0);
    cr_assert(json_equal(json_object_get(s, "prompt_logprob_bits"), pbits), "scoring alone gave other prompt bits");
    json_decref(s);
    json_decref(o);
}
