/* Compiled-kernel cache: an in-memory table in front of a directory of checksummed entries.
 * See cache.h for the contract. Nothing here can fail the caller: every disk problem is a
 * miss (on get) or a counted write failure (on put). */
#include "runtime/cache.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- keys ----------------------------------------------------------------------------- */

static void add_length(di_sha256 *s, uint64_t n)
{
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)(n >> (8 * i));
    di_sha256_update(s, le, sizeof le);
}

void di_keyb_init(di_keyb *k) { di_sha256_init(&k->sha); }

/* Both parts are length-prefixed so that no two different field sequences hash the same
 * byte stream: ("ab","c") and ("a","bc") differ in their prefixes. */
void di_keyb_add(di_keyb *k, const char *field, const void *data, size_t n)
{
    size_t field_len = field ? strlen(field) : 0;
    add_length(&k->sha, field_len);
    if (field_len) di_sha256_update(&k->sha, field, field_len);
    add_length(&k->sha, n);
    if (n) di_sha256_update(&k->sha, data, n);
}

void di_keyb_add_str(di_keyb *k, const char *field, const char *s)
{
    di_keyb_add(k, field, s, s ? strlen(s) : 0);
}

di_key di_keyb_final(di_keyb *k)
{
    di_key key;
    di_sha256_final(&k->sha, key.b);
    return key;
}

void di_key_hex(const di_key *k, char out[65]) { di_hex(k->b, sizeof k->b, out); }

/* ---- entry format ----------------------------------------------------------------------
 * "DIKC", format version (u32 LE), payload length (u64 LE), SHA-256 of the payload, payload. */

#define ENTRY_MAGIC "DIKC"
#define ENTRY_VERSION 1u
#define ENTRY_HEADER 48

static void store_le(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t load_le(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void make_header(uint8_t h[ENTRY_HEADER], const void *data, size_t n)
{
    memcpy(h, ENTRY_MAGIC, 4);
    store_le(h + 4, ENTRY_VERSION, 4);
    store_le(h + 8, n, 8);
    di_sha256_once(data, n, h + 16);
}

/* ---- in-memory table: chained buckets keyed by the 32-byte key, owning the payloads ---- */

typedef struct mem_entry {
    di_key key;
    void *data;
    size_t n;
    struct mem_entry *next;
} mem_entry;

typedef struct mem_table {
    mem_entry **buckets;
    size_t nbuckets;  /* a power of two, or 0 before the first insert */
    size_t count;
} mem_table;

/* The key is a SHA-256 digest, so its first bytes are already uniformly distributed. */
static size_t bucket_of(const mem_table *t, const di_key *k)
{
    return (size_t)load_le(k->b, 8) & (t->nbuckets - 1);
}

static mem_entry *mem_find(const mem_table *t, const di_key *k)
{
    if (!t->nbuckets) return NULL;
    for (mem_entry *e = t->buckets[bucket_of(t, k)]; e; e = e->next)
        if (memcmp(e->key.b, k->b, sizeof k->b) == 0) return e;
    return NULL;
}

static bool mem_grow(mem_table *t)
{
    size_t nb = t->nbuckets ? t->nbuckets * 2 : 64;
    mem_entry **fresh = calloc(nb, sizeof *fresh);
    if (!fresh) return false;
    mem_table grown = {fresh, nb, t->count};
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (mem_entry *e = t->buckets[i], *next; e; e = next) {
            next = e->next;
            size_t b = bucket_of(&grown, &e->key);
            e->next = fresh[b];
            fresh[b] = e;
        }
    }
    free(t->buckets);
    *t = grown;
    return true;
}

static void *copy_bytes(const void *data, size_t n)
{
    void *p = malloc(n ? n : 1);  /* a hit on an empty payload still returns a pointer */
    if (p && n) memcpy(p, data, n);
    return p;
}

/* Stores a copy; an existing entry for the key is replaced. Out of memory: not stored. */
static void mem_insert(mem_table *t, const di_key *k, const void *data, size_t n)
{
    void *copy = copy_bytes(data, n);
    if (!copy) return;
    mem_entry *e = mem_find(t, k);
    if (e) {
        free(e->data);
        e->data = copy;
        e->n = n;
        return;
    }
    if (t->count >= t->nbuckets && !mem_grow(t) && !t->nbuckets) { free(copy); return; }
    e = malloc(sizeof *e);
    if (!e) { free(copy); return; }
    *e = (mem_entry){*k, copy, n, NULL};
    size_t b = bucket_of(t, k);
    e->next = t->buckets[b];
    t->buckets[b] = e;
    t->count++;
}

static void mem_free(mem_table *t)
{
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (mem_entry *e = t->buckets[i], *next; e; e = next) {
            next = e->next;
            free(e->data);
            free(e);
        }
    }
    free(t->buckets);
    *t = (mem_table){0};
}

/* ---- the cache object ------------------------------------------------------------------ */

struct di_cache {
    pthread_mutex_t lock;  /* guards everything below but dir and always_compile */
    char *dir;             /* disk directory, or NULL when memory-only from the start */
    bool disk_on;          /* false after a write failure switched this cache to memory only */
    bool warned;           /* the one "not writable" warning has been printed */
    bool always_compile;
    mem_table mem;
    di_cache_stats stats;
};

static void warn_unwritable(di_cache *c, const char *dir, const char *reason)
{
    if (c->warned) return;
    c->warned = true;
    fprintf(stderr, "detinfer: kernel cache dir %s is not writable (%s); using memory only\n", dir, reason);
}

/* Unique per process, thread and call; the O_EXCL open makes a collision a retry, not a clash. */
static uint64_t temp_suffix(void)
{
    static _Atomic uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = atomic_fetch_add(&counter, 1) * 0x9e3779b97f4a7c15ULL;
    x ^= (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)&ts;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Opens a fresh "<base>.tmp.<pid>.<random>" for writing; its name goes to tmp (size cap). */
static int open_temp(const char *base, char *tmp, size_t cap)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        snprintf(tmp, cap, "%s.tmp.%ld.%016llx", base, (long)getpid(), (unsigned long long)temp_suffix());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0 || errno != EEXIST) return fd;
    }
    return -1;
}

static bool write_all(int fd, const void *data, size_t n)
{
    const uint8_t *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Reads exactly n bytes; false on error or early end of file. */
static bool read_all(int fd, void *data, size_t n)
{
    uint8_t *p = data;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        p += r;
        n -= (size_t)r;
    }
    return true;
}

/* mkdir -p. On failure errno says why. */
static bool make_dirs(const char *path)
{
    char *p = strdup(path);
    if (!p) return false;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0777) && errno != EEXIST) { int saved = errno; free(p); errno = saved; return false; }
        *s = '/';
    }
    bool ok = mkdir(p, 0777) == 0 || errno == EEXIST;
    free(p);
    struct stat st;
    if (ok && stat(path, &st)) return false;
    if (ok && !S_ISDIR(st.st_mode)) { errno = ENOTDIR; return false; }
    return ok;
}

/* Creates the directory and proves a file can be created in it (access() would say yes to
 * root on a read-only directory). On failure, reason says why. */
static bool dir_usable(const char *dir, char *reason, size_t cap)
{
    if (!make_dirs(dir)) {
        snprintf(reason, cap, "cannot create it: %s", strerror(errno));
        return false;
    }
    size_t len = strlen(dir) + 64;
    char *base = malloc(len), *tmp = malloc(len + 64);
    if (!base || !tmp) { free(base); free(tmp); snprintf(reason, cap, "out of memory"); return false; }
    snprintf(base, len, "%s/.probe", dir);
    int fd = open_temp(base, tmp, len + 64);
    bool ok = fd >= 0;
    if (ok) { close(fd); unlink(tmp); }
    else snprintf(reason, cap, "cannot create a file in it: %s", strerror(errno));
    free(base);
    free(tmp);
    return ok;
}

static char *join_path(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *p = malloc(la + lb + 2);
    if (p) { memcpy(p, a, la); p[la] = '/'; memcpy(p + la + 1, b, lb + 1); }
    return p;
}

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* dir argument, else DETINFER_CACHE_DIR, else $XDG_CACHE_HOME/detinfer/kernels (absolute
 * paths only, as the XDG spec says), else $HOME/.cache/detinfer/kernels. NULL: none. */
static char *resolve_dir(const char *arg)
{
    const char *v;
    char *d;
    if (arg && *arg) d = strdup(arg);
    else if ((v = env_nonempty("DETINFER_CACHE_DIR"))) d = strdup(v);
    else if ((v = env_nonempty("XDG_CACHE_HOME")) && v[0] == '/') d = join_path(v, "detinfer/kernels");
    else if ((v = env_nonempty("HOME"))) d = join_path(v, ".cache/detinfer/kernels");
    else return NULL;
    if (!d) return NULL;
    for (size_t n = strlen(d); n > 1 && d[n - 1] == '/'; n--) d[n - 1] = 0;
    return d;
}

di_cache *di_cache_open(const char *dir)
{
    di_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    pthread_mutex_init(&c->lock, NULL);
    const char *ac = getenv("DETINFER_ALWAYS_COMPILE");
    c->always_compile = ac && *ac && strcmp(ac, "0") != 0;
    const char *use = getenv("DETINFER_CACHE");
    if (use && strcmp(use, "0") == 0) return c;  /* memory only, by request: no warning */

    char *d = resolve_dir(dir), reason[512];
    if (!d) {
        fprintf(stderr, "detinfer: no kernel cache dir (HOME and XDG_CACHE_HOME are unset); using memory only\n");
        c->warned = true;
    } else if (!dir_usable(d, reason, sizeof reason)) {
        warn_unwritable(c, d, reason);
        free(d);
    } else {
        c->dir = d;
        c->disk_on = true;
    }
    return c;
}

void di_cache_close(di_cache *c)
{
    if (!c) return;
    mem_free(&c->mem);
    free(c->dir);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* "<dir>/<first 2 hex>/<64 hex>.bin"; with subdir_only, just "<dir>/<first 2 hex>". */
static char *entry_path(const char *dir, const di_key *k, bool subdir_only)
{
    char hex[65];
    di_key_hex(k, hex);
    size_t cap = strlen(dir) + 80;
    char *p = malloc(cap);
    if (!p) return NULL;
    if (subdir_only) snprintf(p, cap, "%s/%.2s", dir, hex);
    else snprintf(p, cap, "%s/%.2s/%s.bin", dir, hex, hex);
    return p;
}

static bool disk_enabled(di_cache *c)
{
    pthread_mutex_lock(&c->lock);
    bool on = c->disk_on;
    pthread_mutex_unlock(&c->lock);
    return on;
}

typedef enum { READ_MISS, READ_HIT, READ_CORRUPT } read_result;

/* Reads and verifies one open entry. On READ_HIT, *data is malloc'd. */
static read_result read_entry(int fd, void **data, size_t *n)
{
    struct stat st;
    uint8_t h[ENTRY_HEADER], sum[32];
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) return READ_MISS;
    if ((uint64_t)st.st_size < ENTRY_HEADER || !read_all(fd, h, ENTRY_HEADER)) return READ_CORRUPT;
    if (memcmp(h, ENTRY_MAGIC, 4) != 0 || load_le(h + 4, 4) != ENTRY_VERSION) return READ_CORRUPT;
    uint64_t len = load_le(h + 8, 8);
    if (len != (uint64_t)st.st_size - ENTRY_HEADER || len > SIZE_MAX - 1) return READ_CORRUPT;
    void *p = malloc(len ? (size_t)len : 1);
    if (!p) return READ_MISS;
    if (!read_all(fd, p, (size_t)len)) { free(p); return READ_CORRUPT; }
    di_sha256_once(p, (size_t)len, sum);
    if (memcmp(sum, h + 16, 32) != 0) { free(p); return READ_CORRUPT; }
    *data = p;
    *n = (size_t)len;
    return READ_HIT;
}

/* Removes a corrupt entry, unless another process has meanwhile renamed a new one over it. */
static void remove_if_unchanged(const char *path, int fd)
{
    struct stat open_st, path_st;
    if (fstat(fd, &open_st) || stat(path, &path_st)) return;
    if (open_st.st_dev == path_st.st_dev && open_st.st_ino == path_st.st_ino) unlink(path);
}

static read_result disk_get(const char *dir, const di_key *k, void **data, size_t *n)
{
    char *path = entry_path(dir, k, false);
    if (!path) return READ_MISS;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    read_result r = READ_MISS;
    if (fd >= 0) {
        r = read_entry(fd, data, n);
        if (r == READ_CORRUPT) remove_if_unchanged(path, fd);
        close(fd);
    }
    free(path);
    return r;
}

bool di_cache_get(di_cache *c, const di_key *key, void **data, size_t *n)
{
    *data = NULL;
    *n = 0;
    if (!c) return false;
    pthread_mutex_lock(&c->lock);
    if (c->always_compile) {
        c->stats.misses++;
        pthread_mutex_unlock(&c->lock);
        return false;
    }
    mem_entry *e = mem_find(&c->mem, key);
    if (e && (*data = copy_bytes(e->data, e->n))) {
        *n = e->n;
        c->stats.mem_hits++;
        pthread_mutex_unlock(&c->lock);
        return true;
    }
    bool disk = c->disk_on;
    pthread_mutex_unlock(&c->lock);

    /* disk I/O outside the lock: other threads keep using the memory table meanwhile */
    read_result r = disk ? disk_get(c->dir, key, data, n) : READ_MISS;
    pthread_mutex_lock(&c->lock);
    if (r == READ_HIT) {
        mem_insert(&c->mem, key, *data, *n);
        c->stats.disk_hits++;
    } else {
        if (r == READ_CORRUPT) c->stats.corrupt++;
        c->stats.misses++;
    }
    pthread_mutex_unlock(&c->lock);
    return r == READ_HIT;
}

/* Writes the entry to a temp file and renames it into place. Returns 0, or an errno value. */
static int disk_put(const char *dir, const di_key *k, const void *data, size_t n)
{
    char *sub = entry_path(dir, k, true), *path = entry_path(dir, k, false);
    size_t cap = path ? strlen(path) + 64 : 0;
    char *tmp = path ? malloc(cap) : NULL;
    int err = ENOMEM;
    if (!sub || !path || !tmp) goto out;
    if (mkdir(sub, 0777) && errno != EEXIST) { err = errno; goto out; }
    int fd = open_temp(path, tmp, cap);
    if (fd < 0) { err = errno; goto out; }
    uint8_t h[ENTRY_HEADER];
    make_header(h, data, n);
    bool ok = write_all(fd, h, sizeof h) && write_all(fd, data, n);
    err = ok ? 0 : errno ? errno : EIO;
    if (close(fd) && ok) { err = errno; ok = false; }
    if (ok && rename(tmp, path)) { err = errno; ok = false; }
    if (!ok) unlink(tmp);
out:
    free(sub);
    free(path);
    free(tmp);
    return err;
}

void di_cache_put(di_cache *c, const di_key *key, const void *data, size_t n)
{
    if (!c) return;
    pthread_mutex_lock(&c->lock);
    c->stats.puts++;
    mem_insert(&c->mem, key, data, n);
    pthread_mutex_unlock(&c->lock);
    if (!disk_enabled(c)) return;

    int err = disk_put(c->dir, key, data, n);
    if (!err) return;
    pthread_mutex_lock(&c->lock);
    c->stats.write_failures++;
    /* a directory that stopped accepting writes (removed, full, read-only) is given up on,
     * so a failing disk does not cost a syscall storm per kernel */
    char reason[300];
    snprintf(reason, sizeof reason, "writing an entry failed: %s", strerror(err));
    warn_unwritable(c, c->dir, reason);
    c->disk_on = false;
    pthread_mutex_unlock(&c->lock);
}

const char *di_cache_disk_dir(const di_cache *c)
{
    if (!c) return NULL;
    return disk_enabled((di_cache *)c) ? c->dir : NULL;
}

di_cache_stats di_cache_get_stats(const di_cache *c)
{
    di_cache_stats s = {0};
    if (!c) return s;
    di_cache *m = (di_cache *)c;  /* only the lock is touched; the object itself was malloc'd */
    pthread_mutex_lock(&m->lock);
    s = m->stats;
    pthread_mutex_unlock(&m->lock);
    return s;
}
