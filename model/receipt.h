/* The receipt of a run: what the bits of an answer are a function of, besides the request.
 * detinfer's version and git commit, the model file's SHA-256, the numerics profile, and the
 * device and its architecture. Equal request + equal receipt => equal bits. generate prints it
 * in --json; serve returns it as system_fingerprint on every response. */
#ifndef DI_RECEIPT_H
#define DI_RECEIPT_H
#include "base/err.h"
#include "runtime/backend.h"

typedef struct di_receipt {
    char version[32], commit[48];
    char model_sha256[65];
    char profile[16];
    char device[192];        /* "cpu x86_64 (libtcc)", "cuda NVIDIA H200 (sm_90a, 132 SMs)" */
    double hash_s;           /* time taken to hash the model file */
    char text[512];          /* all of it on one line: "detinfer 0.1.0 (abc1234); model sha256:...; exact; cpu ..." */
} di_receipt;

/* Hashes the model file (once: callers keep the result). */
int di_receipt_make(const char *model_path, const di_rt *rt, di_profile profile, di_receipt *out, di_err *err);

#endif
