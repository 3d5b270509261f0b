/* Compiled-kernel cache: an in-memory table in front of a directory of checksummed entries.
 * See cache.h for the contract. Nothing here can fail the caller: every disk problem is a
 * miss (on get) or a counted write failure (on put). */
#include "runtime/cache.h"
#include <dirent.h>
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
 * "DIKC", format version (u32 LE), payload length (u64 LE), the key, SHA-256 of the payload,
 * payload. The key in the header binds an entry to its name: a valid entry copied or renamed
 * under another key's name is a mismatch, not a hit. (The checksum only catches damage: whoever
 * can write an entry can also compute it. What keeps others from writing entries is the
 * ownership and mode checks on every directory and entry, below.) */

#define ENTRY_MAGIC "DIKC"
#define ENTRY_VERSION 2u
#define ENTRY_HEADER 80
#define ENTRY_MAX_PAYLOAD ((uint64_t)256 << 20)  /* far above any kernel object; bounds the malloc */

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

static void make_header(uint8_t h[ENTRY_HEADER], const di_key *k, const void *data, size_t n)
{
    memcpy(h, ENTRY_MAGIC, 4);
    store_le(h + 4, ENTRY_VERSION, 4);
    store_le(h + 8, n, 8);
    memcpy(h + 16, k->b, 32);
    di_sha256_once(data, n, h + 48);
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
    pthread_mutex_t lock;  /* guards everything below but dir, root, uid and always_compile */
    char *dir;             /* the root's path (messages, di_cache_disk_dir), or NULL when memory-only */
    int root;              /* descriptor of the trusted root directory, or -1 */
    uid_t uid;             /* the effective user: the only owner trusted */
    bool disk_on;          /* entries are read from disk; false after a distrusted level or a write failure */
    bool writable;         /* entries are written: false for a read-only directory */
    bool warned;           /* the one warning has been printed */
    bool always_compile;
    mem_table mem;
    di_cache_stats stats;
};

/* The one warning a cache prints: "detinfer: kernel cache dir PATH WHAT (REASON); TAIL". */
static void warn_once(di_cache *c, const char *path, const char *what, const char *reason, const char *tail)
{
    if (c->warned) return;
    c->warned = true;
    fprintf(stderr, "detinfer: kernel cache dir %s %s (%s); %s\n", path, what, reason, tail);
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

/* Creates a fresh "<base>.tmp.<pid>.<random>" in dirfd, mode 0600 whatever the umask (fchmod:
 * a umask can only take bits away, and the file must stay the owner's alone; O_NOFOLLOW and
 * O_EXCL: never through a link, never an existing file). Its name goes to tmp. */
static int open_temp(int dirfd, const char *base, char *tmp, size_t cap)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        snprintf(tmp, cap, "%s.tmp.%ld.%016llx", base, (long)getpid(), (unsigned long long)temp_suffix());
        int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0) {
            if (fchmod(fd, 0600) == 0) return fd;
            int saved = errno;
            close(fd);
            unlinkat(dirfd, tmp, 0);
            errno = saved;
            return -1;
        }
        if (errno != EEXIST) return -1;
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

/* ---- directories: walked by descriptor, trusted only when they are this user's alone ---- */

/* Another user who can write a directory of the cache can plant an object that this process
 * then runs. So a directory is used only if this user owns it and no one else may write it. */
static bool trusted(const struct stat *st, uid_t uid, char *reason, size_t cap)
{
    if (!S_ISDIR(st->st_mode)) snprintf(reason, cap, "not a directory");
    else if (st->st_uid != uid) snprintf(reason, cap, "owned by uid %u, not by this user (uid %u)", (unsigned)st->st_uid, (unsigned)uid);
    else if (st->st_mode & (S_IWGRP | S_IWOTH)) snprintf(reason, cap, "writable by its group or others: mode %04o", (unsigned)(st->st_mode & 07777));
    else return true;
    return false;
}

/* Opens name in dirfd as a directory, creating it 0700 first when create is set (the mode is
 * set again after mkdir: the umask could have taken the owner's bits). nofollow: a symlink is
 * refused. *made tells whether it was created here. */
static int open_dir_at(int dirfd, const char *name, bool create, bool nofollow, bool *made)
{
    *made = create && mkdirat(dirfd, name, 0700) == 0;
    if (create && !*made && errno != EEXIST) return -1;
    int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC | (nofollow || *made ? O_NOFOLLOW : 0);
    int fd = openat(dirfd, name, flags);
    if (fd < 0 && *made && errno == EACCES && fchmodat(dirfd, name, 0700, 0) == 0) fd = openat(dirfd, name, flags);
    if (fd >= 0 && *made && fchmod(fd, 0700)) { int saved = errno; close(fd); errno = saved; return -1; }
    return fd;
}

static void reason_errno(char *reason, size_t cap, const char *doing, int e)
{
    snprintf(reason, cap, "%s: %s", doing, strerror(e));
}

/* Why name in dirfd could not be opened as a directory: a symlink says so (O_NOFOLLOW with
 * O_DIRECTORY reports one as ENOTDIR or ELOOP). True for a symlink. */
static bool describe_failure(int dirfd, const char *name, int e, char *reason, size_t cap)
{
    struct stat st;
    if ((e == ENOTDIR || e == ELOOP) && fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
        snprintf(reason, cap, "it is a symbolic link");
        return true;
    }
    reason_errno(reason, cap, "cannot create or open it", e);
    return false;
}

/* mkdir -p by descriptors: each missing level is created 0700. Levels above the root may be
 * symlinks (~/.cache often is); the root itself may not. Returns the root's descriptor or -1. */
static int open_root(const char *path, char *reason, size_t cap)
{
    char *p = strdup(path);
    if (!p) { snprintf(reason, cap, "out of memory"); return -1; }
    int fd = open(path[0] == '/' ? "/" : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    char *save = NULL;
    for (char *part = strtok_r(p, "/", &save); part && fd >= 0; part = strtok_r(NULL, "/", &save)) {
        bool last = *save == 0, made;
        int next = open_dir_at(fd, part, true, last, &made);
        if (next < 0) describe_failure(fd, part, errno, reason, cap);
        close(fd);
        fd = next;
    }
    if (fd < 0 && !reason[0]) reason_errno(reason, cap, "cannot open it", errno);
    free(p);
    return fd;
}

/* Stale temp files (a writer killed between create and rename) are removed on the next write
 * to their directory. Only this user's, and only old ones: a live writer renames its temp file
 * within milliseconds, so minutes cannot catch one (one stopped for longer loses its entry). */
enum { STALE_TEMP_SECONDS = 300 };

static void remove_stale_temps(int dirfd, uid_t uid)
{
    int fd = dup(dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) { if (fd >= 0) close(fd); return; }
    time_t now = time(NULL);
    for (struct dirent *e; (e = readdir(d));) {
        if (!strstr(e->d_name, ".tmp.")) continue;
        struct stat st;
        if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) || !S_ISREG(st.st_mode) || st.st_uid != uid) continue;
        if (now - st.st_mtime > STALE_TEMP_SECONDS) unlinkat(dirfd, e->d_name, 0);
    }
    closedir(d);
}

/* Proves a file can be created in the root (access() would say yes to root on a read-only
 * directory). False with the reason: the cache is then read-only. */
static bool root_writable(int root, uid_t uid, char *reason, size_t cap)
{
    remove_stale_temps(root, uid);
    char tmp[96];
    int fd = open_temp(root, ".probe", tmp, sizeof tmp);
    if (fd < 0) { snprintf(reason, cap, "cannot create a file in it: %s", strerror(errno)); return false; }
    close(fd);
    unlinkat(root, tmp, 0);
    return true;
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

/* Opens, checks and probes the root; on success the cache reads (and maybe writes) it. */
static void attach_root(di_cache *c, char *d)
{
    char reason[512] = "";
    int fd = open_root(d, reason, sizeof reason);
    struct stat st;
    if (fd < 0) {
        warn_once(c, d, "is not usable", reason, "using memory only");
    } else if (fstat(fd, &st)) {
        reason_errno(reason, sizeof reason, "cannot stat it", errno);
        warn_once(c, d, "is not usable", reason, "using memory only");
    } else if (!trusted(&st, c->uid, reason, sizeof reason)) {
        warn_once(c, d, "is not trusted", reason, "using memory only");
    } else {
        c->root = fd;
        c->dir = d;
        c->disk_on = true;
        c->writable = root_writable(fd, c->uid, reason, sizeof reason);
        if (!c->writable) warn_once(c, d, "is read-only", reason, "serving hits from it, new kernels stay in memory");
        return;
    }
    if (fd >= 0) close(fd);
    free(d);
}

di_cache *di_cache_open(const char *dir)
{
    di_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    pthread_mutex_init(&c->lock, NULL);
    c->root = -1;
    c->uid = geteuid();
    const char *ac = getenv("DETINFER_ALWAYS_COMPILE");
    c->always_compile = ac && *ac && strcmp(ac, "0") != 0;
    const char *use = getenv("DETINFER_CACHE");
    if (use && strcmp(use, "0") == 0) return c;  /* memory only, by request: no warning */

    char *d = resolve_dir(dir);
    if (!d) {
        fprintf(stderr, "detinfer: no kernel cache dir (HOME and XDG_CACHE_HOME are unset); using memory only\n");
        c->warned = true;
    } else {
        attach_root(c, d);
    }
    return c;
}

void di_cache_close(di_cache *c)
{
    if (!c) return;
    mem_free(&c->mem);
    if (c->root >= 0) close(c->root);
    free(c->dir);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* The subdirectory "<first 2 hex>" and the entry name "<64 hex>.bin" of a key. */
typedef struct entry_name { char sub[3], file[72]; } entry_name;

static entry_name name_of(const di_key *k)
{
    char hex[65];
    di_key_hex(k, hex);
    entry_name n;
    memcpy(n.sub, hex, 2);
    n.sub[2] = 0;
    snprintf(n.file, sizeof n.file, "%s.bin", hex);
    return n;
}

/* Gives up on the disk for good, with the one warning (called with the lock held). */
static void disk_off(di_cache *c, const char *path, const char *what, const char *reason)
{
    warn_once(c, path, what, reason, "using memory only");
    c->disk_on = false;
}

typedef enum { SUB_OK, SUB_MISSING, SUB_BAD } sub_result;

/* Opens the key's subdirectory (creating it when create is set) and checks it like the root:
 * a symlink, another user's directory or a writable-by-others one turns the disk off. */
static sub_result open_sub(di_cache *c, const entry_name *n, bool create, int *fd)
{
    bool made;
    char reason[300] = "";
    const char *what = "is not trusted";
    *fd = open_dir_at(c->root, n->sub, create, true, &made);
    if (*fd < 0 && errno == ENOENT && !create) return SUB_MISSING;
    struct stat st;
    if (*fd < 0) {
        if (!describe_failure(c->root, n->sub, errno, reason, sizeof reason)) what = "is not usable";
    } else if (fstat(*fd, &st)) {
        reason_errno(reason, sizeof reason, "cannot stat it", errno);
    } else if (trusted(&st, c->uid, reason, sizeof reason)) {
        return SUB_OK;
    }
    if (*fd >= 0) close(*fd);
    *fd = -1;
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", c->dir, n->sub);
    pthread_mutex_lock(&c->lock);
    disk_off(c, path, what, reason);
    pthread_mutex_unlock(&c->lock);
    return SUB_BAD;
}

static bool disk_enabled(di_cache *c, bool for_write)
{
    pthread_mutex_lock(&c->lock);
    bool on = c->disk_on && (!for_write || c->writable);
    pthread_mutex_unlock(&c->lock);
    return on;
}

typedef enum { READ_MISS, READ_HIT, READ_CORRUPT } read_result;

/* Reads and verifies one open entry: a regular file of this user's, writable by no one else,
 * of a sane size, whose header names this key and whose payload matches its checksum.
 * Anything else is corrupt (removed, then rebuilt). On READ_HIT, *data is malloc'd. */
static read_result read_entry(int fd, uid_t uid, const di_key *k, void **data, size_t *n)
{
    struct stat st;
    uint8_t h[ENTRY_HEADER], sum[32];
    if (fstat(fd, &st)) return READ_MISS;
    if (!S_ISREG(st.st_mode) || st.st_uid != uid || (st.st_mode & (S_IWGRP | S_IWOTH))) return READ_CORRUPT;
    if ((uint64_t)st.st_size < ENTRY_HEADER || (uint64_t)st.st_size - ENTRY_HEADER > ENTRY_MAX_PAYLOAD) return READ_CORRUPT;
    if (!read_all(fd, h, ENTRY_HEADER)) return READ_CORRUPT;
    if (memcmp(h, ENTRY_MAGIC, 4) != 0 || load_le(h + 4, 4) != ENTRY_VERSION) return READ_CORRUPT;
    if (memcmp(h + 16, k->b, 32) != 0) return READ_CORRUPT;
    uint64_t len = load_le(h + 8, 8);
    if (len != (uint64_t)st.st_size - ENTRY_HEADER) return READ_CORRUPT;
    void *p = malloc(len ? (size_t)len : 1);
    if (!p) return READ_MISS;
    if (!read_all(fd, p, (size_t)len)) { free(p); return READ_CORRUPT; }
    di_sha256_once(p, (size_t)len, sum);
    if (memcmp(sum, h + 48, 32) != 0) { free(p); return READ_CORRUPT; }
    *data = p;
    *n = (size_t)len;
    return READ_HIT;
}

/* Removes a corrupt entry, unless another process has meanwhile renamed a new one over it.
 * fd < 0: it could not even be opened (a symlink): remove the name (never what it points at). */
static void remove_if_unchanged(int dirfd, const char *name, int fd)
{
    struct stat open_st, path_st;
    if (fd < 0) { unlinkat(dirfd, name, 0); return; }
    if (fstat(fd, &open_st) || fstatat(dirfd, name, &path_st, AT_SYMLINK_NOFOLLOW)) return;
    if (open_st.st_dev == path_st.st_dev && open_st.st_ino == path_st.st_ino) unlinkat(dirfd, name, 0);
}

static read_result disk_get(di_cache *c, const di_key *k, void **data, size_t *n)
{
    entry_name name = name_of(k);
    int sub;
    if (open_sub(c, &name, false, &sub) != SUB_OK) return READ_MISS;
    /* O_NONBLOCK: a FIFO in an entry's place must not hang the open; fstat then refuses it */
    int fd = openat(sub, name.file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    read_result r = READ_MISS;
    if (fd >= 0) {
        r = read_entry(fd, c->uid, k, data, n);
        if (r == READ_CORRUPT && disk_enabled(c, true)) remove_if_unchanged(sub, name.file, fd);
        close(fd);
    } else if (errno == ELOOP) {
        r = READ_CORRUPT;
        if (disk_enabled(c, true)) remove_if_unchanged(sub, name.file, -1);
    }
    close(sub);
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
    read_result r = disk ? disk_get(c, key, data, n) : READ_MISS;
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

/* Writes the entry to a temp file beside it and renames it into place. Returns 0, -1 when
 * the subdirectory was refused (already warned), or an errno value. */
static int disk_put(di_cache *c, const di_key *k, const void *data, size_t n)
{
    entry_name name = name_of(k);
    int sub;
    if (open_sub(c, &name, true, &sub) != SUB_OK) return -1;
    remove_stale_temps(sub, c->uid);
    char tmp[128];
    int err = 0, fd = open_temp(sub, name.file, tmp, sizeof tmp);
    if (fd < 0) {
        err = errno;
    } else {
        uint8_t h[ENTRY_HEADER];
        make_header(h, k, data, n);
        bool ok = write_all(fd, h, sizeof h) && write_all(fd, data, n);
        err = ok ? 0 : errno ? errno : EIO;
        if (close(fd) && ok) { err = errno; ok = false; }
        if (ok && renameat(sub, tmp, sub, name.file)) { err = errno; ok = false; }
        if (!ok) unlinkat(sub, tmp, 0);
    }
    close(sub);
    return err;
}

void di_cache_put(di_cache *c, const di_key *key, const void *data, size_t n)
{
    if (!c) return;
    pthread_mutex_lock(&c->lock);
    c->stats.puts++;
    mem_insert(&c->mem, key, data, n);
    pthread_mutex_unlock(&c->lock);
    if (!disk_enabled(c, true)) return;

    int err = disk_put(c, key, data, n);
    if (!err) return;
    pthread_mutex_lock(&c->lock);
    c->stats.write_failures++;
    /* a directory that stopped accepting writes (removed, full, read-only) is given up on,
     * so a failing disk does not cost a syscall storm per kernel */
    if (err > 0) {
        char reason[300];
        snprintf(reason, sizeof reason, "writing an entry failed: %s", strerror(err));
        disk_off(c, c->dir, "is not writable", reason);
    }
    pthread_mutex_unlock(&c->lock);
}

const char *di_cache_disk_dir(const di_cache *c)
{
    if (!c) return NULL;
    return disk_enabled((di_cache *)c, false) ? c->dir : NULL;
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
