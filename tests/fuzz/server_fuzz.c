/* libFuzzer harness for serve's request decoder (server/api.c): every input is a request body
 * for each endpoint kind. Any crash, sanitizer report, leak or timeout is a bug there; so is an
 * error status other than 400 and 422, or an error body that is not valid JSON.
 *
 * Build (from the repo root; clang 14 and libjansson-dev from Debian):
 *
 *   clang -std=gnu11 -g -O1 -ffp-contract=off -fsanitize=fuzzer,address,undefined \
 *         -fno-sanitize-recover=undefined -I. tests/fuzz/server_fuzz.c server/api.c \
 *         base/utf8.c base/strbuf.c -ljansson -o /tmp/server_fuzz
 *
 * Run (a scratch corpus dir first, the checked-in seeds second):
 *
 *   mkdir -p /tmp/server_corpus /tmp/server_crashes
 *   /tmp/server_fuzz -max_total_time=300 -max_len=4096 -rss_limit_mb=2048 \
 *         -dict=tests/fuzz/server.dict -artifact_prefix=/tmp/server_crashes/ \
 *         /tmp/server_corpus tests/fuzz/server_corpus
 *
 * Crashers go into tests/fuzz/server_corpus/ (named crash-*): server::fuzz_corpus_replays_cleanly
 * replays every file there. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size copy, so ASan flags any read one past the end */
    char *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    if (size) memcpy(copy, data, size);
    for (int kind = 0; kind < 4; kind++) {
        di_api_request q;
        di_api_error e;
        memset(&e, 0, sizeof e);
        int rc = di_api_decode(kind, copy, size, 49152, &q, &e);
        if (rc == 0) { di_api_request_free(&q); continue; }
        if (rc != 400 && rc != 422) abort();
        char *body = di_api_error_json(&e);
        json_t *j = json_loads(body, 0, NULL);
        if (!j) abort();
        json_decref(j);
        free(body);
    }
    free(copy);
    return 0;
}
