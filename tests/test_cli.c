/* The tools as a person runs them: bad input gets a clear message and a non-zero exit
 * (2 for usage errors), never a crash; kgen prints specs, sources and PTX. */
#include "helpers.h"
#include "model_fixture.h"
#include "runtime/cc.h"
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct { int status; char out[16384]; } ran;

/* Runs a shell command line, stdout and stderr together; status is the exit code (128+sig on a signal). */
static ran sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    ran r = {0};
    char full[4200];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    cr_assert_not_null(p);
    size_t n = fread(r.out, 1, sizeof r.out - 1, p);
    r.out[n] = 0;
    char rest[4096];   /* drain what does not fit: a closed pipe would kill the child (SIGPIPE) */
    while (fread(rest, 1, sizeof rest, p) > 0) {}
    int st = pclose(p);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return r;
}

static void expect(const ran *r, int status, const char *needle)
{
    cr_assert_eq(r->status, status, "exit %d (want %d); output:\n%s", r->status, status, r->out);
    cr_assert(strstr(r->out, needle), "output lacks '%s':\n%s", needle, r->out);
}

#define GEN DI_GENERATE_PATH
#define KGEN DI_KGEN_PATH

Test(cli, generate_usage_errors_exit_2)
{
    ran r = sh(GEN " --bogus");
    expect(&r, 2, "unknown option '--bogus'");
    r = sh(GEN " -p hi -n many");
    expect(&r, 2, "-n takes a count");
    r = sh(GEN);
    expect(&r, 2, "exactly one of -p, -f or --batch-file");
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
