/* The spec table and the generator: validation errors name the spec and field; every spec
 * lowers to both backends and compiles (libtcc here, NVRTC to sm_90a PTX, no GPU needed);
 * the source depends on the specialization only, never on runtime sizes. */
#include "helpers.h"
#include "runtime/nvrtc.h"
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

Test(codegen, builtin_table_validates)
{
    char msg[512] = "";
    cr_assert(di_specs_validate(di_specs, DI_NUM_OPS, msg, sizeof msg), "%s", msg);
    cr_assert_eq(DI_NUM_OPS, sizeof di_op_names / sizeof di_op_names[0]);
    for (int i = 0; i < DI_NUM_OPS; i++) cr_assert_str_eq(di_op_names[i], di_specs[i].name);
}

/* test-only specs, each wrong in one way */
#define KERNEL(name_, cls_, ...) { .name = #name_, .cls = DI_##cls_, __VA_ARGS__, .file = __FILE__, .line = __LINE__ },
static const di_spec bad_specs[] = {
    KERNEL(mm_no_split, MATMUL, ARGS(OUT(y, F32, "rows, N"), IN(x, F32, "rows, K"), IN(w, BF16, "N, K")),
           DIMS(DIM(K, 64), DIM(N, 64)), SIZES("rows"), EPILOGUE(acc), SCHEDULE(.threads = 128, .tile_n = 4))
    KERNEL(rr_bad_lanes, ROW_REDUCE, ARGS(OUT(y, F32, "rows, D"), IN(x, F32, "rows, D")), DIMS(DIM(D, 64)),
           SIZES("rows"), COLS(D), REDUCE(SUM(s, x[i])), POST(y[i] = x[i] / s;), SCHEDULE(.threads = 32, .lanes = 24))
    KERNEL(att_split, ATTENTION,
           ARGS(OUT(out, F32, "rows, NH, HD"), IN(qkv, F32, "rows, NH + 2 * NKV, HD"), IN(kc, F32, "b, KVB, NKV, HD"),
                IN(vc, F32, "b, KVB, NKV, HD"), IN(pos, I32, "rows"), IN(seq, I32, "rows"), IN(btab, I32, "s, maxb")),
           DIMS(DIM(NH, 4), DIM(NKV, 2), DIM(HD, 16)), SIZES("rows", "maxb"),
           SCHEDULE(.threads = 64, .split = 48, .kv_block = 32))
    KERNEL(map_unused, MAP, ARGS(OUT(y, F32, "rows, D"), IN(x, F32, "rows, D"), IN(z, F32, "rows, D")),
           DIMS(DIM(D, 8)), SIZES("rows"), COLS(D), BODY(y[i] = x[i];), SCHEDULE(.threads = 32))
    KERNEL(map_shape, MAP, ARGS(OUT(y, F32, "rows, D"), IN(x, F32, "rows, E")), DIMS(DIM(D, 8)), SIZES("rows"),
           COLS(D), BODY(y[i] = x[i];), SCHEDULE(.threads = 32))
    KERNEL(mm_missing_w, MATMUL, ARGS(OUT(y, F32, "rows, N"), IN(x, F32, "rows, K")), DIMS(DIM(K, 64), DIM(N, 64)),
           SIZES("rows"), EPILOGUE(acc), SCHEDULE(.threads = 128, .split = 32, .tile_n = 4))
    KERNEL(map_threads, MAP, ARGS(OUT(y, F32, "rows, D"), IN(x, F32, "rows, D")), DIMS(DIM(D, 8)), SIZES("rows"),
           COLS(D), BODY(y[i] = x[i];), SCHEDULE(.threads = 48))
};
static const di_spec syntax_error_spec[] = {
    KERNEL(broken_body, MAP, ARGS(OUT(y, F32, "rows, D"), IN(x, F32, "rows, D")), DIMS(DIM(D, 8)), SIZES("rows"),
           COLS(D), BODY(y[i] = x[i] +;), SCHEDULE(.threads = 32))
};
static const di_spec kv_disagree[] = {
    KERNEL(kv_a, MAP, ARGS(OUT(y, F32, "rows, D")), DIMS(DIM(D, 8)), SIZES("rows"), COLS(D), BODY(y[i] = KVB;),
           SCHEDULE(.threads = 32, .kv_block = 32))
    KERNEL(kv_b, MAP, ARGS(OUT(y, F32, "rows, D")), DIMS(DIM(D, 8)), SIZES("rows"), COLS(D), BODY(y[i] = KVB;),
           SCHEDULE(.threads = 32, .kv_block = 16))
};
#undef KERNEL

Test(codegen, malformed_specs_fail_with_name_and_field)
{
    const char *want[][2] = {
        {"spec mm_no_split", "schedule.split"},  {"spec rr_bad_lanes", "schedule.lanes"},
        {"spec att_split", "schedule.split"},    {"spec map_unused", "'z' is never used"},
        {"spec map_shape", "'E'"},               {"spec mm_missing_w", "'w'"},
        {"spec map_threads", "schedule.threads"},
    };
    for (size_t i = 0; i < sizeof bad_specs / sizeof bad_specs[0]; i++) {
        char msg[512] = "";
        cr_assert_not(di_spec_validate(&bad_specs[i], msg, sizeof msg), "%s validated", bad_specs[i].name);
        cr_assert(strstr(msg, want[i][0]) && strstr(msg, want[i][1]), "message '%s' lacks '%s' / '%s'", msg, want[i][0],
                  want[i][1]);
        /* the generator refuses it too */
        di_specialization p;
        di_spec_defaults(&bad_specs[i], &p);
        di_str o = {0};
        di_err e = {0};
        di_target t = di_target_c();
        cr_assert_eq(di_codegen(&bad_specs[i], &p, &t, &o, &e), DI_ESPEC);
        cr_assert(strstr(e.msg, bad_specs[i].name));
        di_str_free(&o);
    }
    char msg[512] = "";
    cr_assert_not(di_specs_validate(kv_disagree, 2, msg, sizeof msg));
    cr_assert(strstr(msg, "kv_b") && strstr(msg, "kv_block"), "%s", msg);
}

Test(codegen, every_spec_lowers_and_compiles_on_both_backends)
{
    di_rt *rt = th_rt(DI_BACKEND_C, 1);
    di_err e = {0};
    cr_assert_eq(di_nvrtc_load(&e), 0, "NVRTC must be loadable here (CUDA toolkit): %s", e.msg);
    for (int i = 0; i < DI_NUM_OPS; i++) {
        const di_spec *s = &di_specs[i];
        di_specialization p;
        di_spec_defaults(s, &p);
        di_kernel *k;
        cr_assert_eq(di_rt_kernel(rt, s, &p, &k, &e), 0, "libtcc, %s: %s", s->name, e.msg);
        char *src;
        cr_assert_eq(di_rt_source(s, &p, DI_BACKEND_CUDA, &src, &e), 0, "%s", e.msg);
        const char *opts[16];
        int n = di_nvrtc_options(DI_PROFILE_EXACT, "sm_90a", opts, 16);
        di_nvrtc_out out = {0};
        char name[256];
        di_target t = di_target_cuda_default();
        di_kernel_name(s, &p, &t, name, sizeof name);
        cr_assert_eq(di_nvrtc_compile(src, name, opts, n, false, &out, &e), 0, "NVRTC, %s: %s", s->name, e.msg);
        cr_assert(strstr(out.ptx, ".target sm_90a"), "%s: PTX is not for sm_90a", s->name);
        cr_assert(strstr(out.ptx, name), "%s: PTX lacks the entry %s", s->name, name);
        cr_assert_null(strstr(out.ptx, "fma.rn.f32"), "%s: exact-profile PTX holds a contracted fma", s->name);
        int entries = 0, waits = 0;
        for (const char *at = strstr(out.ptx, ".entry"); at; at = strstr(at + 1, ".entry")) entries++;
        for (const char *at = strstr(out.ptx, "griddepcontrol.wait"); at; at = strstr(at + 1, "griddepcontrol.wait")) waits++;
        cr_assert(entries >= 1 && waits == entries, "%s: %d entries, %d griddepcontrol.wait", s->name, entries, waits);
        di_nvrtc_out_free(&out);
        free(src);
    }
    di_rt_close(rt);
}

Test(codegen, compile_errors_carry_the_compiler_log)
{
    di_specialization p;
    di_spec_defaults(&syntax_error_spec[0], &p);
    /* the spec is well formed; its body is not C */
    char msg[256];
    cr_assert(di_spec_validate(&syntax_error_spec[0], msg, sizeof msg), "%s", msg);
    di_err e = {0};
    char *src;
    cr_assert_eq(di_rt_source(&syntax_error_spec[0], &p, DI_BACKEND_CUDA, &src, &e), 0);
    const char *opts[16];
    int n = di_nvrtc_options(DI_PROFILE_EXACT, "sm_90a", opts, 16);
    di_nvrtc_out out = {0};
    cr_assert_eq(di_nvrtc_compile(src, "broken_body__D8", opts, n, false, &out, &e), DI_ECOMPILE);
    cr_assert(strstr(e.msg, "broken_body") && strstr(e.msg, "error"), "NVRTC message lacks the log: %s", e.msg);
    di_nvrtc_out_free(&out);
    free(src);
    di_rt *rt = th_rt(DI_BACKEND_C, 1);
    di_kernel *k;
    cr_assert_eq(di_rt_kernel(rt, &syntax_error_spec[0], &p, &k, &e), DI_ECOMPILE);
    cr_assert(strstr(e.msg, "broken_body") && strstr(e.msg, "error"), "libtcc message lacks the log: %s", e.msg);
    di_rt_close(rt);
}

Test(codegen, source_depends_on_specialization_not_on_runtime_sizes)
{
    const di_spec *s = di_spec_find("matmul");
    di_specialization p = th_spec("matmul", "K", 96L, "N", 40L, NULL);
    char *a, *b, *c;
    di_err e = {0};
    cr_assert_eq(di_rt_source(s, &p, DI_BACKEND_C, &a, &e), 0);
    /* launch at many row counts: the kernel is generated and compiled once */
    di_rt *rt = th_rt(DI_BACKEND_C, 2);
    float x[300 * 96], y[300 * 40];
    uint16_t w[40 * 96];
    th_fill(x, 300 * 96, 1);
    for (int i = 0; i < 40 * 96; i++) w[i] = th_bf16((float)i / 4096);
    di_buf *bx = th_buf(rt, x, sizeof x), *bw = th_buf(rt, w, sizeof w), *by = th_buf(rt, NULL, sizeof y);
    for (long rows = 1; rows <= 300; rows += 37) {
        di_kernel *k = th_kernel(rt, "matmul", &p);
        th_launch(rt, k, (di_val[]){{.buf = by}, {.buf = bx}, {.buf = bw}}, (long[]){rows});
    }
    cr_assert_eq(di_rt_get_stats(rt).kernels_compiled + di_rt_get_stats(rt).kernels_from_cache, 1);
    cr_assert_eq(di_rt_source(s, &p, DI_BACKEND_C, &b, &e), 0);
    cr_assert_str_eq(a, b, "same specialization, different bytes");
    di_specialization q = th_spec("matmul", "K", 96L, "N", 41L, NULL);
    cr_assert_eq(di_rt_source(s, &q, DI_BACKEND_C, &c, &e), 0);
    cr_assert_str_neq(a, c, "a different specialization must change the source");
    free(a); free(b); free(c);
    di_buf_free(bx); di_buf_free(bw); di_buf_free(by);
    di_rt_close(rt);
}

static int count_files(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *de; d && (de = readdir(d));) {
        size_t l = strlen(de->d_name), k = strlen(suffix);
        if (l > k && !strcmp(de->d_name + l - k, suffix)) n++;
    }
    if (d) closedir(d);
    return n;
}

Test(codegen, dump_dir_gets_source_and_log_on_hits_too)
{
    char cache[] = "/tmp/detinfer-cache-XXXXXX", dump[] = "/tmp/detinfer-dump-XXXXXX";
    cr_assert_not_null(mkdtemp(cache));
    cr_assert_not_null(mkdtemp(dump));
    for (int round = 0; round < 2; round++) {
        di_rt_opts o = {.backend = DI_BACKEND_C, .threads = 1, .cache_dir = cache, .dump_src_dir = dump};
        di_rt *rt;
        di_err e = {0};
        cr_assert_eq(di_rt_open(&o, &rt, &e), 0, "%s", e.msg);
        th_kernel(rt, "rmsnorm", NULL);
        di_rt_stats st = di_rt_get_stats(rt);
        /* first process compiles; the second finds the object in the disk cache */
        cr_assert_eq(round == 0 ? st.kernels_compiled : st.kernels_from_cache, 1, "round %d", round);
        di_rt_close(rt);
        cr_assert_eq(count_files(dump, ".c"), 1, "round %d: no source dumped", round);
        cr_assert_eq(count_files(dump, ".log"), 1, "round %d: no log dumped", round);
        char cmd[256];
        snprintf(cmd, sizeof cmd, "rm -f %s/*", dump);  /* the hit must write them again */
        cr_assert_eq(system(cmd), 0);
    }
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s %s", cache, dump);
    cr_assert_eq(system(cmd), 0);
}

/* A bf16 KV cache is for the fast profile's tensor-core attention: its source reads bf16 K and
 * V; the class lowering, which multiplies f32 K and V, refuses it (on both backends) instead of
 * reading bf16 bits as floats; no other attention argument takes bf16. */
Test(codegen, bf16_kv_cache_only_where_the_tensor_core_attention_reads_it)
{
    const di_spec *s = di_spec_find("attention");
    di_specialization p = th_spec("attention", NULL);
    di_err e = {0};
    cr_assert_eq(di_spec_set_dtype(s, &p, "kc", DI_BF16, &e), 0, "%s", e.msg);
    cr_assert_eq(di_spec_set_dtype(s, &p, "vc", DI_BF16, &e), 0, "%s", e.msg);
    char *src = NULL;
    cr_assert_eq(di_rt_source(s, &p, DI_BACKEND_C, &src, &e), DI_ESPEC);
    cr_assert(strstr(e.msg, "class lowering reads f32 K and V and writes f32"), "%s", e.msg);
    cr_assert_eq(di_rt_source(s, &p, DI_BACKEND_CUDA, &src, &e), DI_ESPEC, "exact on CUDA runs the class lowering");
    p.profile = DI_PROFILE_FAST;
    cr_assert_eq(di_rt_source(s, &p, DI_BACKEND_CUDA, &src, &e), 0, "%s", e.msg);
    cr_assert(strstr(src, "const di_bf16 *kc") && strstr(src, "__ldg((const uint2 *)(kc + off))"),
              "the fast source does not read a bf16 cache");
    free(src);
    di_specialization q = th_spec("attention", NULL);
    cr_assert_eq(di_spec_set_dtype(s, &q, "qkv", DI_BF16, &e), DI_ESPEC, "qkv took bf16");
    cr_assert(strstr(e.msg, "cannot be specialized"), "%s", e.msg);
    /* what the model asks before it holds a bf16 cache */
    di_rt *rt = th_rt(DI_BACKEND_C, 1);
    di_dim_value dv[] = {{"NH", 9}, {"NKV", 3}, {"HD", 64}};
    di_arg_dtype kv[] = {{"kc", DI_BF16}, {"vc", DI_BF16}};
    cr_assert(!di_rt_op_available(rt, DI_OP_attention, dv, 3, kv, 2), "the CPU's attention took a bf16 cache");
    cr_assert(di_rt_op_available(rt, DI_OP_attention, dv, 3, kv, 0));
    di_rt_close(rt);
}

/* A body's f32 y stored as bf16 (the fast profile's fused casts, model.c x16): CUDA source with
 * the rounding store type; the C backend refuses by name; only y, and only bf16. */
Test(codegen, bf16_store_of_a_body_output_is_cuda_only)
{
    const di_spec *s = di_spec_find("rmsnorm");
    di_specialization p = th_spec("rmsnorm", NULL);
    di_err e = {0};
    cr_assert_eq(di_spec_set_dtype(s, &p, "y", DI_BF16, &e), 0, "%s", e.msg);
    char *src = NULL;
    cr_assert_eq(di_rt_source(s, &p, DI_BACKEND_CUDA, &src, &e), 0, "%s", e.msg);
    cr_assert(strstr(src, "struct di_bf16_store") && strstr(src, "di_bf16_store *y = (di_bf16_store *)y_"), "%s", src);
    free(src);
    cr_assert_eq(di_rt_source(s, &p, DI_BACKEND_C, &src, &e), DI_ESPEC);
    cr_assert(strstr(e.msg, "CUDA only"), "%s", e.msg);
    di_specialization q = th_spec("rmsnorm", NULL);
    cr_assert_eq(di_spec_set_dtype(s, &q, "x", DI_BF16, &e), DI_ESPEC, "rmsnorm's x took bf16");
    cr_assert_eq(di_spec_set_dtype(s, &q, "y", DI_Q4X8, &e), DI_ESPEC, "rmsnorm's y took q4x8");
}

/* GPU row reductions stage a call term (log_softmax's exp) in shared memory for the lanes to
 * add, and only a call: a product term (rmsnorm's x * x) stays in the lane's loop, where the
 * fast profile contracts it with the add into one fma (moving it out would change its bits).
 * The C backend's loops are untouched. The bits of the staged form: the GPU suites and the
 * model digests on the device (perf/RESULTS.md "staged terms"). */
Test(codegen, gpu_row_reductions_stage_call_terms_only)
{
    const struct { const char *op; bool staged; } cases[] = {{"log_softmax", true}, {"rmsnorm", false}, {"qk_norm", false}};
    for (int i = 0; i < 3; i++)
        for (int prof = 0; prof < 2; prof++) {
            const di_spec *s = di_spec_find(cases[i].op);
            di_specialization p = th_spec(cases[i].op, NULL);
            p.profile = prof ? DI_PROFILE_FAST : DI_PROFILE_EXACT;
            char *src = NULL;
            di_err e = {0};
            cr_assert_eq(di_rt_source(s, &p, DI_BACKEND_CUDA, &src, &e), 0, "%s", e.msg);
            cr_assert_eq(strstr(src, "di_term[j] = ") != NULL, cases[i].staged, "%s: staged %d", cases[i].op, !cases[i].staged);
            free(src);
            if (prof) continue;
            cr_assert_eq(di_rt_source(s, &p, DI_BACKEND_C, &src, &e), 0, "%s", e.msg);
            cr_assert_null(strstr(src, "di_term"), "%s: the C loops staged", cases[i].op);
            free(src);
        }
}
