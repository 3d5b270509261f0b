#include "model/receipt.h"
#include "base/sha256.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>

#ifndef DI_GIT_COMMIT
#define DI_GIT_COMMIT "unknown"   /* CMake passes `git rev-parse --short HEAD` when it can */
#endif

static int hash_file(const char *path, char hex[65], di_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return di_fail(err, DI_EIO, "%s: %s", path, strerror(errno));
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = malloc(CHUNK);
    if (!buf) { fclose(f); return di_fail(err, DI_ENOMEM, "out of memory hashing %s", path); }
    di_sha256 s;
    di_sha256_init(&s);
    size_t n;
    while ((n = fread(buf, 1, CHUNK, f)) > 0) di_sha256_update(&s, buf, n);
    int bad = ferror(f);
    fclose(f);
    free(buf);
    if (bad) return di_fail(err, DI_EIO, "%s: read error while hashing", path);
    uint8_t d[32];
    di_sha256_final(&s, d);
    di_hex(d, 32, hex);
    return DI_OK;
}

/* The device part of the runtime's description: no thread count and no CPU compiler (libtcc
 * and cc build the same C and give the same bits: the tiers suite), so neither changes it. */
static void device_of(const di_rt *rt, char *out, size_t n)
{
    const char *d = di_rt_describe(rt);
    if (di_rt_backend(rt) == DI_BACKEND_CUDA) {
        const char *end = strchr(d, ')');
        int len = end ? (int)(end - d + 1) : (int)strlen(d);
        snprintf(out, n, "%.*s", len, d);
        return;
    }
    struct utsname u;
    snprintf(out, n, "cpu %s", uname(&u) == 0 ? u.machine : "unknown");
}

int di_receipt_make(const char *model_path, const di_rt *rt, di_profile profile, di_receipt *out, di_err *err)
{
    memset(out, 0, sizeof *out);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int rc = hash_file(model_path, out->model_sha256, err);
    if (rc) return rc;
    clock_gettime(CLOCK_MONOTONIC, &b);
    out->hash_s = (double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
    snprintf(out->version, sizeof out->version, "%s", DI_VERSION);
    snprintf(out->commit, sizeof out->commit, "%s", DI_GIT_COMMIT);
    snprintf(out->profile, sizeof out->profile, "%s", di_profile_name(profile));
    device_of(rt, out->device, sizeof out->device);
    snprintf(out->text, sizeof out->text, "detinfer %s (%s); model sha256:%s; %s; %s", out->version, out->commit,
             out->model_sha256, out->profile, out->device);
    return DI_OK;
}
