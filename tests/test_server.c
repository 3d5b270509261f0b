/* serve. The request decoder on its own (pure: body -> request or an error naming the field),
 * the fuzz corpus through it, and the server as clients see it: tests/server/drive.py starts
 * `serve` on 127.0.0.1 and drives it with the official openai package and curl (a bounded
 * number of requests, each with a timeout). scripts/test installs openai under
 * build/pydeps. */
#include "model_fixture.h"
#include "server/api.h"
#include "base/utf8.h"
#include <dirent.h>
#include <sys/wait.h>

static int decode(int kind, const char *body, di_api_request *q, di_api_error *e)
{
    memset(e, 0, sizeof *e);
    return di_api_decode(kind, body, strlen(body), 49152, q, e);
}

static void expect_bad(int kind, const char *body, int status, const char *param)
{
    di_api_request q;
    di_api_error e;
    int rc = decode(kind, body, &q, &e);
    cr_assert_eq(rc, status, "%s: status %d (want %d): %s", body, rc, status, e.message);
    cr_assert_str_eq(e.param, param, "%s: param '%s' (want '%s'): %s", body, e.param, param, e.message);
    cr_assert_str_eq(e.type, "invalid_request_error");
    char *j = di_api_error_json(&e);
    cr_assert(strstr(j, "\"error\"") && strstr(j, "\"code\""), "%s", j);
    free(j);
}

Test(server, decoder_accepts_what_openai_clients_send)
{
    di_api_request q;
    di_api_error e;
    cr_assert_eq(decode(DI_API_COMPLETION, "{\"model\":\"m\",\"prompt\":\"hi\",\"max_tokens\":5,\"temperature\":0.5,\"top_p\":0.9,"
                        "\"top_k\":-1,\"min_p\":0.1,\"seed\":-3,\"stop\":[\"\\n\",\"x\"],\"logprobs\":3,\"echo\":true,\"stream\":true,"
                        "\"stream_options\":{\"include_usage\":true},\"n\":2,\"user\":\"u\",\"frequency_penalty\":0}", &q, &e), 0,
                 "%s", e.message);
    cr_assert_str_eq(q.model, "m");
    cr_assert_eq(q.n_prompts, 1);
    cr_assert_str_eq(q.prompts[0].text, "hi");
    cr_assert_eq(q.max_tokens, 5);
    cr_assert_eq(q.top_k, 0);
    cr_assert_eq(q.seed, (uint64_t)-3);
    cr_assert_eq(q.n_stop, 2);
    cr_assert_eq(q.logprobs, 3);
    cr_assert(q.echo && q.stream && q.include_usage);
    cr_assert_eq(q.n, 2);
    di_api_request_free(&q);
    cr_assert_eq(decode(DI_API_COMPLETION, "{\"prompt\":[[1,2],[3]]}", &q, &e), 0, "%s", e.message);
    cr_assert_eq(q.n_prompts, 2);
    cr_assert_eq(q.prompts[1].n_ids, 1);
    cr_assert_eq(q.max_tokens, 16);   /* OpenAI's default */
    cr_assert_eq(q.logprobs, -1);
    di_api_request_free(&q);
    cr_assert_eq(decode(DI_API_CHAT, "{\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},{\"role\":\"user\",\"content\":"
                        "[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]}],\"logprobs\":true,\"top_logprobs\":2,"
                        "\"max_completion_tokens\":7}", &q, &e), 0, "%s", e.message);
    cr_assert_eq(q.n_msgs, 2);
    cr_assert_str_eq(q.msgs[0].role, "system");
    cr_assert_str_eq(q.msgs[1].content, "ab");
    cr_assert_eq(q.logprobs, 2);
    cr_assert_eq(q.max_tokens, 7);
    di_api_request_free(&q);
}

Test(server, decoder_names_the_field_at_fault)
{
    const int C = DI_API_COMPLETION, H = DI_API_CHAT;
    expect_bad(C, "{\"prompt\":", 400, "");
    expect_bad(C, "\"just a string\"", 400, "");
    expect_bad(C, "{\"prompt\":\"caf\xe9\"}", 400, "");
    expect_bad(C, "{}", 422, "prompt");
    expect_bad(C, "{\"prompt\":[]}", 422, "prompt");
    expect_bad(C, "{\"prompt\":[\"a\",3]}", 422, "prompt[1]");
    expect_bad(C, "{\"prompt\":[[1,-2]]}", 422, "prompt[0][1]");
    expect_bad(C, "{\"prompt\":[49152]}", 422, "prompt[0]");
    expect_bad(C, "{\"prompt\":\"hi\",\"max_tokens\":1.5}", 422, "max_tokens");
    expect_bad(C, "{\"prompt\":\"hi\",\"max_tokens\":-1}", 422, "max_tokens");
    expect_bad(C, "{\"prompt\":\"hi\",\"temperature\":\"hot\"}", 422, "temperature");
    expect_bad(C, "{\"prompt\":\"hi\",\"temperature\":2.5}", 422, "temperature");
    expect_bad(C, "{\"prompt\":\"hi\",\"top_p\":0}", 422, "top_p");
    expect_bad(C, "{\"prompt\":\"hi\",\"min_p\":2}", 422, "min_p");
    expect_bad(C, "{\"prompt\":\"hi\",\"n\":9}", 422, "n");
    expect_bad(C, "{\"prompt\":\"hi\",\"seed\":\"s\"}", 422, "seed");
    expect_bad(C, "{\"prompt\":\"hi\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 422, "stop");
    expect_bad(C, "{\"prompt\":\"hi\",\"stop\":[\"\"]}", 422, "stop[0]");
    expect_bad(C, "{\"prompt\":\"hi\",\"logprobs\":21}", 422, "logprobs");
    expect_bad(C, "{\"prompt\":\"hi\",\"echo\":1}", 422, "echo");
    expect_bad(C, "{\"prompt\":\"hi\",\"stream\":\"yes\"}", 422, "stream");
    expect_bad(C, "{\"prompt\":\"hi\",\"stream_options\":{\"include_usage\":1}}", 422, "stream_options.include_usage");
    expect_bad(C, "{\"prompt\":\"hi\",\"model\":7}", 422, "model");
    expect_bad(C, "{\"prompt\":\"hi\",\"logit_bias\":{\"1\":5}}", 422, "logit_bias");
    expect_bad(C, "{\"prompt\":\"hi\",\"suffix\":\"x\"}", 422, "suffix");
    expect_bad(H, "{\"messages\":\"hi\"}", 422, "messages");
    expect_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"robot\",\"content\":\"b\"}]}", 422, "messages[1].role");
    expect_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", 422, "messages[0].content[0]");
    expect_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}", 422, "messages[0].content");
    expect_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"top_logprobs\":3}", 422, "top_logprobs");
    expect_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"max_tokens\":0}", 422, "max_tokens");
    expect_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tools\":[]}", 422, "tools");
}

/* Every file in tests/fuzz/server_corpus/ goes through the decoder for each kind, as the fuzz
 * harness does: no crash, and every error a status the API documents. */
Test(server, fuzz_corpus_replays_cleanly)
{
    const char *dir = DI_SOURCE_DIR "/tests/fuzz/server_corpus";
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "%s", dir);
    int files = 0;
    for (struct dirent *ent; (ent = readdir(d));) {
        if (ent->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        FILE *f = fopen(path, "rb");
        cr_assert_not_null(f, "%s", path);
        char *buf = malloc(1 << 20);
        size_t n = fread(buf, 1, 1 << 20, f);
        fclose(f);
        for (int kind = 0; kind < 4; kind++) {
            di_api_request q;
            di_api_error e;
            memset(&e, 0, sizeof e);
            int rc = di_api_decode(kind, buf, n, 49152, &q, &e);
            cr_assert(rc == 0 || rc == 400 || rc == 422, "%s: status %d", path, rc);
            if (!rc) di_api_request_free(&q);
        }
        free(buf);
        files++;
    }
    closedir(d);
    cr_assert_gt(files, 5);
}

/* Runs one section of tests/server/drive.py; its log goes to the test's output. */
static void drive(const char *section)
{
    NEED_MODEL();
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "PYTHONPATH=%s/pydeps python3 %s/tests/server/drive.py %s --serve %s --generate %s --model '%s' --threads 1 2>&1",
             DI_BUILD_DIR, DI_SOURCE_DIR, section, DI_SERVE_PATH, DI_GENERATE_PATH, model_path());
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    static char out[1 << 16];
    size_t n = 0, k;
    char rest[4096];
    while ((k = fread(n < sizeof out - 1 ? out + n : rest, 1, n < sizeof out - 1 ? sizeof out - 1 - n : sizeof rest, p)) > 0)
        if (n < sizeof out - 1) n += k;
    out[n] = 0;
    int st = pclose(p);
    int rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (strstr(out, "No module named 'openai'"))
        cr_assert_fail("the openai package is missing: scripts/test installs it (pip install --target build/pydeps openai)");
    cr_assert_eq(rc, 0, "drive.py %s exited %d:\n%s", section, rc, out);
    cr_log_info("%s", out);
}

/* completions, chat, streaming, logprobs/top_logprobs, echo scoring = generate --json bits,
 * greedy and seeded answers the same alone and among 16 concurrent clients, each request
 * answered once, a disconnect frees its blocks (openai package and raw HTTP). */
Test(server, openai_client_gets_the_same_bits_under_load, .timeout = 900)
{
    drive("client");
}

/* bad input of every kind (curl and openai: status, OpenAI error shape, the field), a full
 * queue (503 + Retry-After), SIGTERM with three requests in flight (one final event each,
 * [DONE], exit 0, no new connections). */
Test(server, bad_input_full_queue_and_sigterm, .timeout = 600)
{
    drive("faults");
}

/* The output rule (base/utf8.h): hold back an incomplete trailing character, replace what is
 * invalid with U+FFFD; sanitizing a complete prefix and then the rest equals the whole. */
Test(server, utf8_hold_back_and_replace)
{
    const char *e_acute = "caf\xc3\xa9", *cut = "caf\xc3", *euro3 = "\xe2\x82\xac";
    cr_assert_eq(di_utf8_complete(cut, 4), 3);
    cr_assert_eq(di_utf8_complete(e_acute, 5), 5);
    cr_assert_eq(di_utf8_complete(euro3, 2), 0);
    cr_assert_eq(di_utf8_complete("a\xff", 2), 2, "an invalid byte is not held back: it never completes");
    di_str s = {0};
    di_utf8_sanitize(&s, cut, 4);
    cr_assert_str_eq(s.p, "caf\xef\xbf\xbd");
    di_str_free(&s);
    di_utf8_sanitize(&s, "\xed\xa0\x80x\xf0\x9f\x98\x80", 8);   /* a surrogate (3 replacements), x, an emoji */
    cr_assert_str_eq(s.p, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdx\xf0\x9f\x98\x80");
    cr_assert(di_utf8_valid(s.p, s.len));
    di_str_free(&s);
    const char *mix = "ab\xc3\xa9\xe2\x82";
    size_t k = di_utf8_complete(mix, 6);
    di_str whole = {0}, parts = {0};
    di_utf8_sanitize(&whole, mix, 6);
    di_utf8_sanitize(&parts, mix, k);
    di_utf8_sanitize(&parts, mix + k, 6 - k);
    cr_assert_str_eq(whole.p, parts.p);
    di_str_free(&whole);
    di_str_free(&parts);
}
