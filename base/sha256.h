/* SHA-256 (FIPS 180-4), for cache keys and model checksums. */
#ifndef DI_SHA256_H
#define DI_SHA256_H
#include <stddef.h>
#include <stdint.h>

typedef struct di_sha256 {
    uint32_t h[8];
    uint64_t bytes;
    uint8_t buf[64];
    size_t fill;
} di_sha256;

void di_sha256_init(di_sha256 *s);
void di_sha256_update(di_sha256 *s, const void *data, size_t n);
void di_sha256_final(di_sha256 *s, uint8_t out[32]);
void di_sha256_once(const void *data, size_t n, uint8_t out[32]);
void di_hex(const uint8_t *bytes, size_t n, char *out); /* out holds 2n+1 chars */

#endif
