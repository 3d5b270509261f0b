/* kgen: print what the generator makes of a spec, for review.
 *   kgen list                               one spec per line: name, class, schedule
 *   kgen emit NAME [--backend c|cuda] [--set DIM=V]... [--dtype ARG=f32|bf16|q4x8|q8x8]...
 *   kgen ptx NAME [--arch sm_90a] [--set DIM=V]...   (NVRTC; no GPU needed)
 * both also take [--profile P] (default exact; the names of dsl/profiles.def), [--arch A] (the
 * CUDA target, default sm_90a: it picks the fast schedule), [--schedule NAME] (a fast matmul
 * row of schedules.def) and, vendor matmuls only, [--ksplits N]: the K split count the vendor
 * runtime picks from the row count. Each prints which lowering runs the spec on stderr. */
#include "codegen/codegen.h"
#include "codegen/lowering.h"
#include "runtime/backend.h"
#include "runtime/nvrtc.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(const char *why)
{
    if (why) fprintf(stderr, "kgen: %s\n", why);
    fprintf(stderr, "usage: kgen list\n"
                    "       kgen emit NAME [--backend c|cuda] [--set DIM=VALUE]... [--dtype ARG=f32|bf16|q4x8|q8x8]...\n"
                    "       kgen ptx NAME [--set DIM=VALUE]...\n"
                    "       (both: [--profile %s] [--arch sm_90a] [--schedule NAME] [--ksplits N],\n"
                    "        N for vendor matmuls)\n", di_profile_choices());
    return 2;
}

static void print_list(void)
{
    for (int i = 0; i < DI_NUM_OPS; i++) {
        const di_spec *s = &di_specs[i];
        const di_schedule *k = &s->sched;
        printf("%-16s %-10s threads=%d", s->name, di_class_name(s->cls), k->threads);
        if (k->lanes) printf(" lanes=%d", k->lanes);
        if (k->split) printf(" split=%d", k->split);
        if (k->tile_n) printf(" tile_n=%d", k->tile_n);
        if (k->kv_block) printf(" kv_block=%d", k->kv_block);
        printf("  dims:");
        for (int d = 0; d < DI_MAX_DIMS && s->dims[d].name; d++) printf(" %s=%ld", s->dims[d].name, s->dims[d].value);
        printf("\n");
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage(NULL);
    char msg[512];
    if (!di_specs_validate(di_specs, DI_NUM_OPS, msg, sizeof msg)) { fprintf(stderr, "kgen: %s\n", msg); return 2; }
    if (!strcmp(argv[1], "list")) {
        if (argc != 2) return usage("list takes no arguments");
        print_list();
        return 0;
    }
    bool emit = !strcmp(argv[1], "emit"), ptx = !strcmp(argv[1], "ptx");
    if (!emit && !ptx) return usage("unknown command");
    if (argc < 3) return usage("missing spec name");
    const di_spec *s = di_spec_find(argv[2]);
    if (!s) {
        fprintf(stderr, "kgen: no spec named '%s' (kgen list shows them)\n", argv[2]);
        return 2;
    }
    di_specialization p;
    di_spec_defaults(s, &p);
    di_backend_kind backend = emit ? DI_BACKEND_C : DI_BACKEND_CUDA;
    const char *arch = "sm_90a";
    di_err err = {0};
    int ksplits = 0;
    const char *schedule = NULL;
    for (int i = 3; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--backend") && v && emit) {
            if (!strcmp(v, "c")) backend = DI_BACKEND_C;
            else if (!strcmp(v, "cuda")) backend = DI_BACKEND_CUDA;
            else return usage("--backend takes c or cuda");
            i++;
        } else if (!strcmp(a, "--profile") && v) {
            if (!di_profile_parse(v, &p.profile)) {
                fprintf(stderr, "kgen: --profile takes %s, not '%s'\n", di_profile_choices(), v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--schedule") && v) {
            schedule = v;
            i++;
        } else if (!strcmp(a, "--ksplits") && v) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n <= 0 || n > 1 << 20) return usage("--ksplits takes a positive integer");
            ksplits = (int)n;   /* applied after the loop: --dtype checks the specialization */
            i++;
        } else if (!strcmp(a, "--arch") && v) {
            arch = v;
            i++;
        } else if ((!strcmp(a, "--set") || !strcmp(a, "--dtype")) && v) {
            char key[64];
            const char *eq = strchr(v, '=');
            if (!eq || eq == v || (size_t)(eq - v) >= sizeof key) return usage("expected NAME=VALUE");
            snprintf(key, sizeof key, "%.*s", (int)(eq - v), v);
            if (a[2] == 's') {
                char *end;
                long val = strtol(eq + 1, &end, 10);
                if (*end || di_spec_set_dim(s, &p, key, val, &err)) {
                    fprintf(stderr, "kgen: --set %s: %s\n", v, *end ? "not an integer" : err.msg);
                    return 2;
                }
            } else {
                di_dtype t;
                if (!di_dtype_parse(eq + 1, &t) || di_spec_set_dtype(s, &p, key, t, &err)) {
                    fprintf(stderr, "kgen: --dtype %s: %s\n", v, err.code ? err.msg : "dtype must be f32, bf16, i32, q4x8 or q8x8");
                    return 2;
                }
            }
            i++;
        } else {
            fprintf(stderr, "kgen: unknown or incomplete option '%s'\n", a);
            return usage(NULL);
        }
    }
    p.ksplits = ksplits;
    if (schedule) {
        const di_mm_schedule *m = di_mm_schedule_named(schedule);
        if (!m) { fprintf(stderr, "kgen: --schedule %s: no such fast matmul schedule in schedules.def\n", schedule); return 2; }
        p.mm = *m;
    }
    di_target t = backend == DI_BACKEND_CUDA ? di_target_cuda_default() : di_target_c();
    if (backend == DI_BACKEND_CUDA) snprintf(t.arch, sizeof t.arch, "%s", arch);
    if (di_specialization_check(s, &p, &err)) { fprintf(stderr, "kgen: %s\n", err.msg); return 2; }
    fprintf(stderr, "kgen: %s runs by the %s lowering\n", s->name, di_lowering_for(s, &p, &t)->name);
    char *src = NULL;
    if (di_rt_source_for(s, &p, &t, &src, &err)) { fprintf(stderr, "kgen: %s\n", err.msg); return 2; }
    if (emit) {
        fputs(src, stdout);
        free(src);
        return 0;
    }
    const char *opts[16];
    int nopts = di_nvrtc_options(p.profile, arch, opts, 16);
    char name[256];
    di_kernel_name(s, &p, &t, name, sizeof name);
    di_nvrtc_out out = {0};
    int rc = di_nvrtc_compile(src, name, opts, nopts, false, &out, &err);
    free(src);
    if (rc) {
        fprintf(stderr, "kgen: %s\n", err.msg);
        di_nvrtc_out_free(&out);
        return rc == DI_ECOMPILE || rc == DI_ENODEV ? 1 : 2;
    }
    fputs(out.ptx, stdout);
    di_nvrtc_out_free(&out);
    return 0;
}
