/* The tools as a person runs them: bad input gets a clear message and a non-zero exit
 * (2 for usage errors), never a crash or a hang; output that cannot be written exits 1;
 * kgen prints specs, sources and PTX. */
#include "helpers.h"
#include "model_fixture.h"
#include "runtime/cc.h"
#include "shell.h"
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#define GEN DI_GENERATE_PATH
#define KGEN DI_KGEN_PATH

Test(cli, generate_usage_errors_exit_2)
{
    ran r = sh(GEN " --bogus");
    expect(&r, 2, "unknown option '--bogus'");
    r = sh(GEN " -p hi -n many");
    expect(&r, 2, "-n takes a count");
    r = sh(GEN);
    expect(&r, 2, "exactly one of -p, -f, --batch-file or --messages");
    r = sh(GEN " -p hi --device tpu");
    expect(&r, 2, "--device takes auto, cpu or cuda");
    r = sh(GEN " --help");
    expect(&r, 0, "--batch-file");
}

Test(cli, generate_missing_and_malformed_models)
{
    ran r = sh(GEN " -m /nonexistent/model.gguf -p hi --device cpu");
    expect(&r, 2, "/nonexistent/model.gguf");
    char path[] = "/tmp/detinfer-cli-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, "this is not a gguf file\n", 24), 24);
    close(fd);
    r = sh(GEN " -m %s -p hi --device cpu", path);
    expect(&r, 2, path);
    if (model_path()) {
        /* the first megabyte of the real model: header intact, tensors cut off */
        r = sh("head -c 1000000 %s > %s && " GEN " -m %s -p hi --device cpu", model_path(), path, path);
        cr_assert_eq(r.status, 2, "truncated model: exit %d\n%s", r.status, r.out);
        cr_assert(strstr(r.out, path), "message does not name the file:\n%s", r.out);
    }
    unlink(path);
}

/* A minimal GGUF v3 whose architecture is not llama. */
static void write_gguf_arch(const char *path, const char *arch)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    uint32_t version = 3, type_str = 8;
    uint64_t n_tensors = 0, n_kv = 1, klen = strlen("general.architecture"), vlen = strlen(arch);
    fwrite("GGUF", 1, 4, f);
    fwrite(&version, 4, 1, f);
    fwrite(&n_tensors, 8, 1, f);
    fwrite(&n_kv, 8, 1, f);
    fwrite(&klen, 8, 1, f);
    fwrite("general.architecture", 1, klen, f);
    fwrite(&type_str, 4, 1, f);
    fwrite(&vlen, 8, 1, f);
    fwrite(arch, 1, vlen, f);
    fclose(f);
}

Test(cli, generate_unsupported_architecture)
{
    char path[] = "/tmp/detinfer-arch-XXXXXX";
    close(mkstemp(path));
    write_gguf_arch(path, "mamba");
    ran r = sh(GEN " -m %s -p hi --device cpu", path);
    unlink(path);
    cr_assert_neq(r.status, 0);
    cr_assert_lt(r.status, 128, "crashed:\n%s", r.out);
    cr_assert(strstr(r.out, path), "message does not name the file:\n%s", r.out);
}

Test(cli, generate_prompt_longer_than_context)
{
    NEED_MODEL();
    ran r = sh(GEN " -m %s --device cpu -c 8 -p 'one two three four five six seven eight nine ten eleven'", model_path());
    expect(&r, 2, "longer than the context");
}

Test(cli, generate_cuda_without_gpu)
{
    di_rt_opts o = {.backend = DI_BACKEND_CUDA};
    di_rt *rt = NULL;
    di_err e = {0};
    if (di_rt_open(&o, &rt, &e) == 0) {
        di_rt_close(rt);
        cr_skip_test("a GPU is present: the missing-GPU message cannot be shown here");
    }
    NEED_MODEL();
    ran r = sh(GEN " -m %s --device cuda -p hi -n 1", model_path());
    expect(&r, 2, "--device cuda");
}

Test(cli, kgen_lists_emits_and_rejects)
{
    ran r = sh(KGEN " list");
    expect(&r, 0, "matmul");
    for (int i = 0; i < DI_NUM_OPS; i++) cr_assert(strstr(r.out, di_specs[i].name), "list lacks %s", di_specs[i].name);
    r = sh(KGEN " emit rmsnorm --backend c");
    expect(&r, 0, "void rmsnorm__D576(long b0");
    r = sh(KGEN " emit matmul --backend cuda --set K=1536 --set N=7");
    expect(&r, 0, "extern \"C\" __global__");
    cr_assert(strstr(r.out, "#define K 1536L"));
    r = sh(KGEN " emit nosuchop");
    expect(&r, 2, "no spec named 'nosuchop'");
    r = sh(KGEN " emit matmul --set Q=3");
    expect(&r, 2, "no dim named 'Q'");
    r = sh(KGEN " frobnicate");
    expect(&r, 2, "unknown command");
    r = sh(KGEN " ptx attention --arch sm_90a");
    expect(&r, 0, ".target sm_90a");
}

Test(cli, generate_load_flag_errors_exit_2)
{
    ran r = sh(GEN " -p hi --max-seqs 0");
    expect(&r, 2, "--max-seqs takes 1..65535");
    r = sh(GEN " -p hi --concurrency lots");
    expect(&r, 2, "--concurrency takes 1..65535");
    r = sh(GEN " -p hi --kv-blocks -3");
    expect(&r, 2, "--kv-blocks takes a positive count");
    r = sh(GEN " -p hi --repeat 0");
    expect(&r, 2, "--repeat takes a positive count");
    r = sh(GEN " -p hi --arrival-seed -1");
    expect(&r, 2, "--arrival-seed takes an unsigned integer");
    r = sh(GEN " -p hi --repeat");
    expect(&r, 2, "--repeat needs a value");
    r = sh(GEN " --batch-file /dev/null --repeat 2");
    expect(&r, 2, "--repeat needs -p or -f");
    r = sh(GEN " -p hi --background /nonexistent/bg.txt");
    expect(&r, 2, "--background /nonexistent/bg.txt");
    if (model_path()) {
        /* a pool too small for the prompt: an error naming the flag, not a hang */
        r = sh(GEN " -m %s --device cpu -t 1 -n 40 --kv-blocks 1 -p '%s'", model_path(),
               "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen");
        expect(&r, 2, "--kv-blocks");
        cr_assert(strstr(r.out, "request 0"), "message does not name the request:\n%s", r.out);
    }
}

/* The same prompt 4 times, 2 at a time: one completion, one digest, and that line last. */
Test(cli, generate_repeat_gives_one_completion_and_digest, .timeout = 300)
{
    NEED_MODEL();
    ran r = sh(GEN " -m %s --device cpu -t 1 -n 8 -p 'The capital of France is' --repeat 4 --concurrency 2 2>/dev/null",
               model_path());
    expect(&r, 0, "repeats: 4, unique completions: 1, unique digests: 1, seconds: ");
    const char *last = strstr(r.out, "repeats: ");
    cr_assert(strchr(last, '\n') && strchr(last, '\n')[1] == 0, "the repeats line is not the last:\n%s", r.out);
}

/* A profile name is parsed from the profile table everywhere: a typo is a usage error that
 * lists the real ones, never a silent default. */
Test(cli, unknown_profile_exits_2_everywhere)
{
    ran r = sh(GEN " -p hi --profile fsat");
    expect(&r, 2, "--profile takes exact | fast | vendor, not 'fsat'");
    r = sh(KGEN " emit rmsnorm --profile fsat");
    expect(&r, 2, "--profile takes exact | fast | vendor, not 'fsat'");
    r = sh(GEN " --help");
    expect(&r, 0, "--profile P         exact | fast | vendor");
}

/* The recorded digests (tests/data/digests.tsv) do not move: every refactor of the kernel
 * layer has to leave these bits alone, whichever compiler builds the CPU kernels. */
static void check_digests(const char *compiler)
{
    FILE *f = fopen(DI_SOURCE_DIR "/tests/data/digests.tsv", "r");
    cr_assert_not_null(f);
    char line[1024];
    int checked = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        char *tab = strchr(line, '\t');
        cr_assert_not_null(tab, "digests.tsv: no tab in '%s'", line);
        *tab = 0;
        char want[65];
        cr_assert_eq(sscanf(tab + 1, "%64s", want), 1);
        ran r = sh(GEN " -m %s --device cpu -t 2 --cpu-compiler %s --digest %s", model_path(), compiler, line);
        cr_assert_eq(r.status, 0, "generate --cpu-compiler %s %s: exit %d\n%s", compiler, line, r.status, r.out);
        char expect_line[100];
        snprintf(expect_line, sizeof expect_line, "digest 0 %s", want);
        cr_assert(strstr(r.out, expect_line), "generate --cpu-compiler %s %s: digest moved (want %s):\n%s", compiler,
                  line, want, r.out);
        checked++;
    }
    fclose(f);
    cr_assert_eq(checked, 4);
}

/* ---- inputs the tools did not write: FIFOs, NUL bytes, seeds, stdout, inconsistent models ---- */

/* A FIFO with no writer: a blocking open would wait forever, so each flag must refuse it at
 * once (timeout turns a hang into status 124). */
Test(cli, generate_refuses_fifos_and_directories_at_once, .timeout = 120)
{
    char dir[] = "/tmp/detinfer-fifo-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char fifo[64];
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    const char *cases[][2] = {
        {"-m %s -p hi --device cpu", "model %s: not a regular file: it is a FIFO"},
        {"-f %s --device cpu", "-f %s: not a regular file: it is a FIFO"},
        {"--batch-file %s --device cpu", "--batch-file %s: not a regular file: it is a FIFO"},
        {"-p hi --background %s --device cpu", "--background %s: not a regular file: it is a FIFO"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char flags[256], want[256];
        snprintf(flags, sizeof flags, cases[i][0], fifo);
        snprintf(want, sizeof want, cases[i][1], fifo);
        time_t t0 = time(NULL);
        ran r = sh("timeout 30 " GEN " %s", flags);
        expect(&r, 2, want);
        cr_assert_lt(time(NULL) - t0, 20, "%s took %lld s", flags, (long long)(time(NULL) - t0));
    }
    ran r = sh(GEN " -m %s -p hi --device cpu", dir);
    expect(&r, 2, "not a regular file: it is a directory");
    unlink(fifo);
    rmdir(dir);
}

/* A NUL byte used to end the text there: a batch of 3 ran 1 request. */
Test(cli, generate_rejects_nul_bytes_naming_file_and_line)
{
    char path[] = "/tmp/detinfer-nul-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    static const char text[] = "first prompt\nsecond\0hidden\nthird prompt\n";
    cr_assert_eq(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    char want[128];
    snprintf(want, sizeof want, "--batch-file %s:2: a NUL byte", path);
    ran r = sh(GEN " --batch-file %s --device cpu", path);
    expect(&r, 2, want);
    snprintf(want, sizeof want, "-f %s:2: a NUL byte", path);
    r = sh(GEN " -f %s --device cpu", path);
    expect(&r, 2, want);
    snprintf(want, sizeof want, "--background %s:2: a NUL byte", path);
    r = sh(GEN " -p hi --background %s --device cpu", path);
    expect(&r, 2, want);
    unlink(path);
}

/* strtoull takes leading blanks and signs: " -1" wrapped to 2^64 - 1. */
Test(cli, generate_seeds_are_parsed_strictly)
{
    const char *flags[] = {"--seed", "-s", "--arrival-seed"};
    const char *bad[] = {" -1", "-1", "+1", " 1", "1x", "", "18446744073709551616"};
    for (size_t f = 0; f < 3; f++) {
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            ran r = sh(GEN " -p hi %s '%s'", flags[f], bad[i]);
            cr_assert_eq(r.status, 2, "%s '%s': exit %d\n%s", flags[f], bad[i], r.status, r.out);
            cr_assert(strstr(r.out, "takes an unsigned integer"), "%s '%s':\n%s", flags[f], bad[i], r.out);
        }
        ran r = sh(GEN " %s 18446744073709551615 --help", flags[f]);   /* the largest is fine */
        expect(&r, 0, "usage");
    }
}

/* Output that cannot be written is a failure: exit 1 and a message, never exit 0. */
Test(cli, generate_stdout_write_errors_exit_1, .timeout = 300)
{
    ran r = sh("(" GEN " --help >/dev/full)");
    expect(&r, 1, "generate: writing the output failed");
    if (!model_path()) return;
    r = sh("(" GEN " -m %s --device cpu -t 1 -n 2 --temp 0 -p hi >/dev/full)", model_path());
    expect(&r, 1, "generate: writing the output failed");
}

Test(cli, generate_warns_when_ctx_exceeds_the_trained_context, .timeout = 300)
{
    NEED_MODEL();
    ran r = sh(GEN " -m %s --device cpu -t 1 -n 1 --temp 0 -c 8200 -p hi", model_path());
    expect(&r, 0, "warning: --ctx 8200 is beyond the model's trained context (llama.context_length = 8192)");
    r = sh(GEN " -m %s --device cpu -t 1 -n 1 --temp 0 -c 8192 -p hi", model_path());
    cr_assert_eq(r.status, 0, "%s", r.out);
    cr_assert(!strstr(r.out, "trained context"), "a warning at the trained context itself:\n%s", r.out);
}

/* The real model with one value changed in place; generate must refuse it naming the key or
 * tensor (each of these used to run and print wrong text with exit 0). */
typedef struct patch { const char *what; long at; uint8_t bytes[8]; size_t n; const char *needle1, *needle2; } patch;

static long value_at(const di_gguf *g, const char *key)
{
    const di_gguf_kv *kv = di_gguf_find(g, key);
    cr_assert_not_null(kv, "the model has no %s", key);
    return (long)(kv->data - g->base);
}

/* The type field of a tensor's info: after its name, n_dims and dims. */
static long tensor_type_at(const di_gguf *g, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 8; i + len + 4 < g->size; i++) {
        uint64_t l;
        memcpy(&l, g->base + i - 8, 8);
        if (l != len || memcmp(g->base + i, name, len)) continue;
        uint32_t nd;
        memcpy(&nd, g->base + i + len, 4);
        return (long)(i + len + 4 + 8 * nd);
    }
    cr_assert_fail("no tensor info for %s", name);
    return -1;
}

static patch u32_patch(const char *what, long at, uint32_t v, const char *n1, const char *n2)
{
    patch p = {what, at, {0}, 4, n1, n2};
    memcpy(p.bytes, &v, 4);
    return p;
}

static patch f32_patch(const char *what, long at, float v, const char *n1, const char *n2)
{
    patch p = {what, at, {0}, 4, n1, n2};
    memcpy(p.bytes, &v, 4);
    return p;
}

Test(cli, generate_refuses_inconsistent_models, .timeout = 300)
{
    NEED_MODEL();
    char copy[] = "/tmp/detinfer-patched-XXXXXX";
    int fd = mkstemp(copy);
    cr_assert(fd >= 0);
    close(fd);
    ran r = sh("cp %s %s", model_path(), copy);
    cr_assert_eq(r.status, 0, "%s", r.out);
    di_gguf *g;
    di_err e;
    cr_assert_eq(di_gguf_open(copy, &g, &e), 0, "%s", e.msg);
    const di_gguf_kv *types = di_gguf_find(g, "tokenizer.ggml.token_type");
    cr_assert(types && types->arr_type == 5, "token types are i32");
    patch cases[] = {
        u32_patch("layers", value_at(g, "llama.block_count"), 29, "tensor blk.29.", "llama.block_count = 29"),
        u32_patch("vocab", value_at(g, "llama.vocab_size"), 49000, "llama.vocab_size = 49000", "token_embd.weight"),
        f32_patch("eps NaN", value_at(g, "llama.attention.layer_norm_rms_epsilon"), NAN,
                  "llama.attention.layer_norm_rms_epsilon = nan", "positive and finite"),
        f32_patch("eps -1", value_at(g, "llama.attention.layer_norm_rms_epsilon"), -1.0f,
                  "llama.attention.layer_norm_rms_epsilon = -1", "positive and finite"),
        f32_patch("rope 0", value_at(g, "llama.rope.freq_base"), 0.0f, "llama.rope.freq_base = 0", "positive and finite"),
        f32_patch("rope NaN", value_at(g, "llama.rope.freq_base"), NAN, "llama.rope.freq_base = nan", NULL),
        f32_patch("rope -5", value_at(g, "llama.rope.freq_base"), -5.0f, "llama.rope.freq_base = -5", NULL),
        u32_patch("rope dim", value_at(g, "llama.rope.dimension_count"), 32, "llama.rope.dimension_count = 32",
                  "not the head dim 64"),
        u32_patch("token type", (long)(types->data - g->base) + 4 * 100, 9, "tokenizer.ggml.token_type[100] = 9",
                  "not a known token type"),
        /* token_embd as F16 instead of Q8_0: it grows into the tensors after it */
        u32_patch("overlap", tensor_type_at(g, "token_embd.weight"), 1, "tensor blk.0.attn_norm.weight: data offset",
                  "overlap"),
    };
    di_gguf_close(g);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        patch *p = &cases[i];
        uint8_t saved[8];
        fd = open(copy, O_RDWR);
        cr_assert(fd >= 0);
        cr_assert_eq(pread(fd, saved, p->n, p->at), (ssize_t)p->n);
        cr_assert_eq(pwrite(fd, p->bytes, p->n, p->at), (ssize_t)p->n);
        close(fd);
        r = sh(GEN " -m %s --device cpu -t 1 -n 4 --temp 0 -p hi", copy);
        cr_assert_eq(r.status, 2, "%s: exit %d\n%s", p->what, r.status, r.out);
        cr_assert(strstr(r.out, copy) && strstr(r.out, p->needle1), "%s: no '%s':\n%s", p->what, p->needle1, r.out);
        if (p->needle2) cr_assert(strstr(r.out, p->needle2), "%s: no '%s':\n%s", p->what, p->needle2, r.out);
        fd = open(copy, O_RDWR);
        cr_assert_eq(pwrite(fd, saved, p->n, p->at), (ssize_t)p->n);
        close(fd);
    }
    unlink(copy);
}

Test(cli, generate_digests_match_the_record, .timeout = 600)
{
    NEED_MODEL();
    check_digests("tcc");
}

Test(cli, generate_digests_match_the_record_under_cc, .timeout = 600)
{
    NEED_MODEL();
    di_err e = {0};
    if (!di_cc_available(&e)) cr_skip_test("%s", e.msg);
    check_digests("cc");
}

/* --weights: a bad name is a usage error; bf16 and packed give auto's bits on the CPU (there
 * packed is auto: fast packs only on the GPU), and the load line says how many matrices pack */
Test(cli, generate_weights_flag)
{
    NEED_MODEL();
    ran r = sh(GEN " -m %s --device cpu --weights int4 -p hi", model_path());
    cr_assert_eq(r.status, 2, "a bad --weights is a usage error:\n%s", r.out);
    cr_assert(strstr(r.out, "--weights takes auto, packed or bf16, not 'int4'"), "%s", r.out);
    char digest[3][80] = {{0}};
    const char *modes[] = {"auto", "packed", "bf16"};
    for (int i = 0; i < 3; i++) {
        r = sh(GEN " -m %s --device cpu -t 2 --weights %s -p 'The capital of France is' -n 8 --temp 0 --digest", model_path(),
               modes[i]);
        cr_assert_eq(r.status, 0, "%s", r.out);
        const char *d = strstr(r.out, "digest 0 ");
        cr_assert_not_null(d, "--weights %s: no digest:\n%s", modes[i], r.out);
        snprintf(digest[i], sizeof digest[i], "%.73s", d);
        if (i == 2) cr_assert(strstr(r.out, " 0 of "), "--weights bf16 packs nothing:\n%s", r.out);
    }
    cr_assert_str_eq(digest[0], digest[1]);
    cr_assert_str_eq(digest[0], digest[2]);
}

Test(cli, generate_cpu_compiler_flag_and_load_line)
{
    NEED_MODEL();
    ran r = sh(GEN " -m %s --device cpu --cpu-compiler gcc -p hi", model_path());
    cr_assert_eq(r.status, 2, "a bad --cpu-compiler is a usage error:\n%s", r.out);
    cr_assert(strstr(r.out, "--cpu-compiler takes tcc, cc or auto, not 'gcc'"), "%s", r.out);
    r = sh(GEN " -m %s --device cpu -t 1 --cpu-compiler tcc -p hi -n 1 --temp 0", model_path());
    cr_assert_eq(r.status, 0, "%s", r.out);
    cr_assert(strstr(r.out, "libtcc") && strstr(r.out, "kernels: "), "the load line names the compiler:\n%s", r.out);
}
