/* Compiled-kernel cache: SHA-256 keyed, in memory and on disk (DESIGN.md, runtime contracts).
 *
 * Key: SHA-256 over length-prefixed fields, added in a fixed order by the caller
 * (generator identity, source bytes, ordered options, compiler version, arch, output kind).
 * Disk: $DETINFER_CACHE_DIR, else $XDG_CACHE_HOME/detinfer/kernels, else ~/.cache/detinfer/kernels,
 * laid out as <dir>/<2 hex>/<64 hex>.bin. Entries are written to a temp file beside the entry
 * and renamed (atomic; safe with concurrent processes); each carries its key and a checksum of
 * its payload, so a corrupt, truncated or misnamed entry is a miss, is removed, and is
 * replaced by the next put. Temp files left by killed writers are removed, once minutes old,
 * by the next put into their directory.
 *
 * Trust (entries are code this process runs): the directory and each level below it are
 * opened by descriptor, never through a symlink, and used only when owned by the effective
 * user and not writable by group or others; otherwise one warning names the path and the
 * reason, and the cache keeps to memory. Directories are created 0700 and entries 0600,
 * whatever the umask. An entry is read only if it is a regular file (opened without
 * blocking, so a FIFO cannot hang a run) of this user's, writable by no one else, of a sane
 * size. A trusted directory this process cannot write still serves hits (read-only).
 *
 * Environment: DETINFER_CACHE=0 disables the disk cache (memory only);
 * DETINFER_ALWAYS_COMPILE=1 makes every get a miss (puts still happen).
 * An unwritable or untrusted directory falls back to memory with one warning on stderr. */
#ifndef DI_CACHE_H
#define DI_CACHE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "base/sha256.h"

typedef struct di_key { uint8_t b[32]; } di_key;

typedef struct di_keyb { di_sha256 sha; } di_keyb;
void di_keyb_init(di_keyb *k);
/* Adds one field: the name and the bytes, each prefixed by its 64-bit little-endian length. */
void di_keyb_add(di_keyb *k, const char *field, const void *data, size_t n);
void di_keyb_add_str(di_keyb *k, const char *field, const char *s);
di_key di_keyb_final(di_keyb *k);
void di_key_hex(const di_key *k, char out[65]);

typedef struct di_cache_stats {
    long mem_hits, disk_hits, misses, puts, corrupt, write_failures;
} di_cache_stats;

typedef struct di_cache di_cache;
/* dir == NULL: from the environment as above. Never fails (memory-only fallback). */
di_cache *di_cache_open(const char *dir);
void di_cache_close(di_cache *c);
/* On hit returns true and a malloc'd copy of the payload (caller frees). */
bool di_cache_get(di_cache *c, const di_key *key, void **data, size_t *n);
void di_cache_put(di_cache *c, const di_key *key, const void *data, size_t n);
const char *di_cache_disk_dir(const di_cache *c); /* NULL when memory-only (read-only: the dir) */
di_cache_stats di_cache_get_stats(const di_cache *c);

#endif
