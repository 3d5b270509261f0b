/* The installable library, as a user gets it: `cmake --install` into a fresh prefix puts the
 * header, libdetinfer.a, libdetinfer.so, the pkg-config files and the CMake package there; the
 * example program builds against that prefix alone through pkg-config (shared and static) and
 * through find_package(detinfer), and each build prints the digest `generate --digest` prints. */
#include "helpers.h"
#include "model_fixture.h"
#include <stdio.h>
#include "shell.h"

#define RUN_OK(...)                                                                   \
    do {                                                                              \
        r = sh(__VA_ARGS__);                                                          \
        cr_assert_eq(r.status, 0, "exit %d:\n%s", r.status, r.out);                   \
    } while (0)

Test(install, prefix_holds_a_library_that_builds_and_runs, .timeout = 900)
{
    if (!DI_HAVE_SHARED) cr_skip_test("libdetinfer.so was not built (DI_TCC_PIC unset: scripts/libtcc-pic failed?)");
    static ran r;
    const char *out = r.out;
    char prefix[] = "/tmp/detinfer-prefix-XXXXXX";
    cr_assert_not_null(mkdtemp(prefix));
    RUN_OK("cmake --install " DI_BUILD_DIR " --prefix %s", prefix);
    const char *files[] = {"include/detinfer.h", "lib/libdetinfer.a", "lib/libdetinfer.so", "lib/pkgconfig/detinfer.pc",
                           "lib/pkgconfig/detinfer-static.pc", "lib/cmake/detinfer/detinfer-config.cmake", "bin/generate"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", prefix, files[i]);
        cr_assert_eq(access(path, R_OK), 0, "%s is not installed", files[i]);
    }
    /* only the public API leaves the shared library: no di_* internals, no libtcc */
    RUN_OK("nm -D --defined-only %s/lib/libdetinfer.so | awk '$2 ~ /[TDB]/ {print $3}' | grep -v '^detinfer_' | grep -v '^_' ; true", prefix);
    cr_assert_eq(out[0], 0, "the shared library exports more than detinfer_*:\n%.2000s", out);
    RUN_OK("nm -D --defined-only %s/lib/libdetinfer.so | grep -c ' T detinfer_'", prefix);
    cr_assert_gt(atoi(out), 15, "too few detinfer_* functions exported: %s", out);

    const char *src = DI_SOURCE_DIR "/examples/generate_digest.c";
    RUN_OK("export PKG_CONFIG_PATH=%s/lib/pkgconfig; cc -std=c11 -Wall -Werror -o %s/ex_shared %s $(pkg-config --cflags --libs detinfer)",
           prefix, prefix, src);
    RUN_OK("export PKG_CONFIG_PATH=%s/lib/pkgconfig; cc -std=c11 -Wall -Werror -o %s/ex_static %s $(pkg-config --cflags --libs detinfer-static)",
           prefix, prefix, src);
    RUN_OK("cmake -S " DI_SOURCE_DIR "/examples -B %s/build-cmake -DCMAKE_PREFIX_PATH=%s >/dev/null && cmake --build %s/build-cmake >/dev/null",
           prefix, prefix, prefix);
    RUN_OK("ldd %s/ex_shared | grep -c libdetinfer.so", prefix);
    r = sh("ldd %s/ex_static | grep libdetinfer", prefix);
    cr_assert_neq(r.status, 0, "the static build links libdetinfer.so:\n%s", out);

    if (!model_path()) cr_skip_test("DETINFER_MODEL is not set: the built examples were not run");
    const char *bins[] = {"ex_shared", "ex_static", "build-cmake/generate_digest"};
    char want[200];
    RUN_OK(DI_GENERATE_PATH " -m %s --device cpu -t 2 -p 'The capital of France is' -n 32 --temp 0 --digest 2>/dev/null | grep '^digest'",
           model_path());
    snprintf(want, sizeof want, "%.74s", out);
    cr_assert(strncmp(want, "digest 0 ", 9) == 0, "generate printed no digest: %s", out);
    for (int i = 0; i < 3; i++) {
        RUN_OK("%s/%s %s 'The capital of France is' 32", prefix, bins[i], model_path());
        cr_assert(strstr(out, want), "%s: not generate's digest (%s):\n%s", bins[i], want, out);
    }
    RUN_OK("rm -rf %s", prefix);
}
