/* An example program against the installed library (include/detinfer.h only):
 *   generate_digest MODEL.gguf "The capital of France is" 32
 * loads the model, generates greedily and prints the text and the same digest line as
 * `generate -m MODEL -p PROMPT -n N --temp 0 --digest` (SHA-256 of ids and log-prob bits).
 * Build: cc generate_digest.c $(pkg-config --cflags --libs detinfer)          (shared)
 *        cc generate_digest.c $(pkg-config --cflags --libs detinfer-static)   (static)
 *        or CMake: find_package(detinfer) and link detinfer::detinfer (examples/CMakeLists.txt). */
#include <detinfer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int die(const char *what, const detinfer_error *e)
{
    fprintf(stderr, "generate_digest: %s: %s (%s)\n", what, e->message, detinfer_strerror(e->code));
    return e->code == DETINFER_EUSAGE ? 2 : 1;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: generate_digest MODEL.gguf PROMPT N\n");
        return 2;
    }
    detinfer_error e = {0};
    detinfer_runtime_params rp = detinfer_runtime_default_params();
    rp.device = "cpu";
    detinfer_runtime *rt = NULL;
    if (detinfer_runtime_open(&rp, &rt, &e)) return die("runtime", &e);
    detinfer_model *m = NULL;
    detinfer_model_params mp = detinfer_model_default_params();
    mp.max_seqs = 1;
    if (detinfer_model_load(rt, argv[1], &mp, &m, &e)) return die(argv[1], &e);
    const detinfer_tokenizer *tok = detinfer_model_tokenizer(m);
    int32_t *ids = NULL;
    size_t n = 0;
    if (detinfer_tokenize(tok, argv[2], strlen(argv[2]), true, false, &ids, &n, &e)) return die("tokenize", &e);
    detinfer_request_params qp = detinfer_request_default_params();
    qp.max_tokens = atoi(argv[3]);
    detinfer_request *r = NULL;
    if (detinfer_request_create(ids, n, &qp, &r, &e) || detinfer_generate(m, &r, 1, &e)) return die("generate", &e);
    for (size_t i = 0; i < detinfer_request_n_tokens(r); i++) {
        const char *b;
        size_t len;
        if (!detinfer_token_piece(tok, detinfer_request_tokens(r)[i], &b, &len)) fwrite(b, 1, len, stdout);
    }
    char hex[65];
    detinfer_request_digest(r, hex);
    printf("\ndigest 0 %s\n", hex);
    fprintf(stderr, "generate_digest: detinfer %s, %s\n", detinfer_version(), detinfer_runtime_describe(rt));
    detinfer_request_free(r);
    detinfer_free(ids);
    detinfer_model_free(m);
    detinfer_runtime_close(rt);
    return 0;
}
