/* SHA-256 against the FIPS 180-4 example digests; cache keys and their field framing; the
 * memory and disk cache: hits, misses, corrupt and truncated entries, the environment
 * switches, an unwritable directory, and two processes racing on one key; trust: objects
 * planted by another user, modes under any umask, foreign and group-writable dirs, symlinks,
 * FIFOs, read-only dirs, stale temp files, killed writers and a full disk. */
#define _GNU_SOURCE  /* nftw */
/* every path here is a few dozen bytes under /tmp; the buffers are generous */
#pragma GCC diagnostic ignored "-Wformat-truncation"
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "runtime/backend.h"
#include "runtime/cache.h"
#include "runtime/tcc.h"

/* ---- fixture: a private temp dir and a clean cache environment, both restored after ---- */

static const char *const env_names[] = {"DETINFER_CACHE", "DETINFER_ALWAYS_COMPILE", "DETINFER_CACHE_DIR",
                                        "XDG_CACHE_HOME", "HOME"};
#define NENV (sizeof env_names / sizeof env_names[0])
static char *env_saved[NENV];
static char tmpdir[64];

static void setup(void)
{
    for (size_t i = 0; i < NENV; i++) {
        const char *v = getenv(env_names[i]);
        env_saved[i] = v ? strdup(v) : NULL;
    }
    unsetenv("DETINFER_CACHE");
    unsetenv("DETINFER_ALWAYS_COMPILE");
    unsetenv("DETINFER_CACHE_DIR");
    strcpy(tmpdir, "/tmp/di_cache_test_XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp under /tmp failed");
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    return remove(path);
}

static void teardown(void)
{
    for (size_t i = 0; i < NENV; i++) {
        if (env_saved[i]) setenv(env_names[i], env_saved[i], 1);
        else unsetenv(env_names[i]);
        free(env_saved[i]);
        env_saved[i] = NULL;
    }
    if (tmpdir[0]) nftw(tmpdir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(cache, .init = setup, .fini = teardown);

/* ---- helpers ---------------------------------------------------------------------------- */

/* an entry's header: magic, version, length, key, checksum (runtime/cache.c) */
enum { HEADER = 80 };

static void hex_of(const uint8_t d[32], char out[65]) { di_hex(d, 32, out); }

static void expect_digest(const char *what, const uint8_t d[32], const char *want)
{
    char got[65];
    hex_of(d, got);
    cr_assert_str_eq(got, want, "SHA-256 of %s", what);
}

/* The kind of key the runtime builds: generator, source, options, compiler, arch, kind. */
static di_key kernel_key(const char *source, const char *option)
{
    di_keyb kb;
    di_keyb_init(&kb);
    di_keyb_add_str(&kb, "generator", "test-schema-1");
    di_keyb_add_str(&kb, "source", source);
    di_keyb_add_str(&kb, "option", option);
    di_keyb_add_str(&kb, "arch", "sm_90a");
    di_keyb_add_str(&kb, "kind", "cubin");
    return di_keyb_final(&kb);
}

static uint8_t *make_payload(size_t n, uint64_t seed)
{
    uint8_t *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        p[i] = (uint8_t)(seed >> 56);
    }
    return p;
}

static char *path_in(const char *dir, const char *rest)
{
    static char buf[4][512];
    static int next;
    char *p = buf[next++ & 3];
    snprintf(p, 512, "%s/%s", dir, rest);
    return p;
}

static char *entry_file(const char *dir, const di_key *k)
{
    char hex[65], rest[80];
    di_key_hex(k, hex);
    snprintf(rest, sizeof rest, "%.2s/%s.bin", hex, hex);
    return path_in(dir, rest);
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void expect_hit(di_cache *c, const di_key *k, const uint8_t *want, size_t n)
{
    void *got = NULL;
    size_t got_n = 0;
    cr_assert(di_cache_get(c, k, &got, &got_n), "expected a cache hit");
    cr_assert_eq(got_n, n, "payload length: got %zu, want %zu", got_n, n);
    cr_assert(n == 0 || memcmp(got, want, n) == 0, "payload bytes differ");
    free(got);
}

static void expect_miss(di_cache *c, const di_key *k)
{
    void *got = (void *)1;
    size_t got_n = 1;
    cr_assert(!di_cache_get(c, k, &got, &got_n), "expected a cache miss");
    cr_assert_null(got);
    cr_assert_eq(got_n, 0);
}

/* Counts the files under dir (recursively) whose names contain needle. */
static int count_named(const char *dir, const char *needle)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char sub[1024];
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(sub, &st)) continue;
        if (S_ISDIR(st.st_mode)) count += count_named(sub, needle);
        else if (strstr(e->d_name, needle)) count++;
    }
    closedir(d);
    return count;
}

/* ---- SHA-256 ------------------------------------------------------------------------------ */

/* FIPS 180-4 example digests (NIST "SHA256.pdf" examples and the long-message vectors). */
Test(cache, sha256_fips_vectors)
{
    uint8_t d[32];
    di_sha256_once("", 0, d);
    expect_digest("\"\"", d, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    di_sha256_once("abc", 3, d);
    expect_digest("\"abc\"", d, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    di_sha256_once(m448, strlen(m448), d);
    expect_digest("the 448-bit message", d, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const char *m896 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrs"
                       "mnopqrstnopqrstu";
    di_sha256_once(m896, strlen(m896), d);
    expect_digest("the 896-bit message", d, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");

    const char *million = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    char *a = malloc(1000000);
    memset(a, 'a', 1000000);
    di_sha256_once(a, 1000000, d);
    expect_digest("one million 'a' (one update)", d, million);
    di_sha256 s;  /* the same in uneven pieces, to exercise the partial-block path */
    di_sha256_init(&s);
    for (size_t off = 0, step = 1; off < 1000000; off += step, step = step % 997 + 1)
        di_sha256_update(&s, a + off, off + step > 1000000 ? 1000000 - off : step);
    di_sha256_final(&s, d);
    expect_digest("one million 'a' (uneven updates)", d, million);
    free(a);
}

Test(cache, sha256_split_updates_match_one_shot)
{
    uint8_t *msg = make_payload(300, 7);
    const size_t steps[] = {1, 3, 55, 56, 63, 64, 65, 127};
    for (size_t len = 0; len <= 300; len++) {
        uint8_t want[32], got[32];
        di_sha256_once(msg, len, want);
        for (size_t si = 0; si < sizeof steps / sizeof steps[0]; si++) {
            di_sha256 s;
            di_sha256_init(&s);
            for (size_t off = 0; off < len; off += steps[si])
                di_sha256_update(&s, msg + off, off + steps[si] > len ? len - off : steps[si]);
            di_sha256_final(&s, got);
            cr_assert(memcmp(want, got, 32) == 0, "length %zu in steps of %zu differs from one update", len,
                      steps[si]);
        }
    }
    free(msg);
}

Test(cache, hex_is_lowercase_and_terminated)
{
    const uint8_t b[] = {0x00, 0x09, 0xab, 0xff};
    char out[9];
    memset(out, 'x', sizeof out);
    di_hex(b, sizeof b, out);
    cr_assert_str_eq(out, "0009abff");
}

/* ---- keys --------------------------------------------------------------------------------- */

static di_key key_of_fields(const char *f1, const char *d1, const char *f2, const char *d2)
{
    di_keyb kb;
    di_keyb_init(&kb);
    di_keyb_add_str(&kb, f1, d1);
    if (f2) di_keyb_add_str(&kb, f2, d2);
    return di_keyb_final(&kb);
}

static bool same_key(di_key a, di_key b) { return memcmp(a.b, b.b, 32) == 0; }

Test(cache, key_fields_are_length_framed)
{
    /* name/data boundary and field/field boundary must both be unambiguous */
    cr_assert(!same_key(key_of_fields("ab", "c", NULL, NULL), key_of_fields("a", "bc", NULL, NULL)));
    cr_assert(!same_key(key_of_fields("f", "ab", "g", "c"), key_of_fields("f", "a", "g", "bc")));
    cr_assert(!same_key(key_of_fields("f", "x", "g", "y"), key_of_fields("g", "y", "f", "x")), "order matters");
    cr_assert(!same_key(key_of_fields("f", "", NULL, NULL), key_of_fields("", "f", NULL, NULL)));
    cr_assert(same_key(key_of_fields("f", "x", "g", "y"), key_of_fields("f", "x", "g", "y")), "deterministic");

    /* the exact byte stream: len64le(name) name len64le(data) data, per field */
    const uint8_t stream[] = {2, 0, 0, 0, 0, 0, 0, 0, 'a', 'b', 1, 0, 0, 0, 0, 0, 0, 0, 'c'};
    uint8_t want[32];
    di_sha256_once(stream, sizeof stream, want);
    di_key k = key_of_fields("ab", "c", NULL, NULL);
    cr_assert(memcmp(k.b, want, 32) == 0, "key is not SHA-256 of the length-prefixed fields");

    /* binary data with an embedded zero goes through di_keyb_add, not strlen */
    di_keyb kb;
    di_keyb_init(&kb);
    di_keyb_add(&kb, "bin", "a\0b", 3);
    di_key kbin = di_keyb_final(&kb);
    cr_assert(!same_key(kbin, key_of_fields("bin", "a", NULL, NULL)));

    char hex[65], want_hex[65];
    di_key_hex(&k, hex);
    di_hex(want, 32, want_hex);
    cr_assert_str_eq(hex, want_hex);
}

/* ---- memory and disk ---------------------------------------------------------------------- */

Test(cache, miss_then_hit_in_memory_and_on_disk)
{
    di_key k = kernel_key("__global__ void f() {}", "-O3");
    size_t n = 5000;
    uint8_t *payload = make_payload(n, 1);

    di_cache *c = di_cache_open(tmpdir);
    cr_assert_str_eq(di_cache_disk_dir(c), tmpdir);
    expect_miss(c, &k);
    di_cache_put(c, &k, payload, n);
    expect_hit(c, &k, payload, n);
    di_cache_stats s = di_cache_get_stats(c);
    cr_assert_eq(s.misses, 1);
    cr_assert_eq(s.mem_hits, 1);
    cr_assert_eq(s.puts, 1);
    cr_assert_eq(s.write_failures, 0);
    di_cache_close(c);

    const char *file = entry_file(tmpdir, &k);
    cr_assert_eq(file_size(file), HEADER + (long)n, "entry %s: header + payload expected", file);
    cr_assert_eq(count_named(tmpdir, ".tmp"), 0, "temp files left behind");

    c = di_cache_open(tmpdir);  /* a fresh cache: the hit must come from disk, then memory */
    expect_hit(c, &k, payload, n);
    expect_hit(c, &k, payload, n);
    s = di_cache_get_stats(c);
    cr_assert_eq(s.disk_hits, 1);
    cr_assert_eq(s.mem_hits, 1);
    cr_assert_eq(s.misses, 0);
    di_cache_close(c);
    free(payload);
}

Test(cache, empty_payload_round_trips)
{
    di_key k = kernel_key("empty", "");
    di_cache *c = di_cache_open(tmpdir);
    di_cache_put(c, &k, "", 0);
    expect_hit(c, &k, NULL, 0);
    di_cache_close(c);
    c = di_cache_open(tmpdir);
    expect_hit(c, &k, NULL, 0);
    cr_assert_eq(di_cache_get_stats(c).disk_hits, 1);
    di_cache_close(c);
}

Test(cache, changed_field_is_a_different_key)
{
    di_key k3 = kernel_key("src", "-O3"), k2 = kernel_key("src", "-O2"), ks = kernel_key("src ", "-O3");
    cr_assert(!same_key(k3, k2));
    uint8_t *payload = make_payload(100, 2);
    di_cache *c = di_cache_open(tmpdir);
    di_cache_put(c, &k3, payload, 100);
    expect_miss(c, &k2);
    expect_miss(c, &ks);
    expect_hit(c, &k3, payload, 100);
    di_cache_close(c);
    c = di_cache_open(tmpdir);
    expect_miss(c, &k2);
    expect_miss(c, &ks);
    di_cache_close(c);
    free(payload);
}

/* Damages the entry with damage(), then checks a fresh cache sees a corrupt miss and removes
 * the file, and that the next put rebuilds an entry a further fresh cache hits. */
static void damage_and_rebuild(const char *what, void (*damage)(const char *, long, long), long arg, size_t n)
{
    di_key k = kernel_key(what, "-O3");
    uint8_t *payload = make_payload(n, 3);
    di_cache *c = di_cache_open(tmpdir);
    di_cache_put(c, &k, payload, n);
    di_cache_close(c);
    const char *file = entry_file(tmpdir, &k);
    cr_assert(exists(file));
    damage(file, arg, (long)n);

    c = di_cache_open(tmpdir);
    expect_miss(c, &k);
    di_cache_stats s = di_cache_get_stats(c);
    cr_assert_eq(s.corrupt, 1, "%s (%ld): not counted as corrupt", what, arg);
    cr_assert(!exists(file), "%s (%ld): the corrupt entry was not removed", what, arg);
    di_cache_put(c, &k, payload, n);
    di_cache_close(c);
    cr_assert_eq(file_size(file), HEADER + (long)n, "%s (%ld): not rebuilt", what, arg);

    c = di_cache_open(tmpdir);
    expect_hit(c, &k, payload, n);
    cr_assert_eq(di_cache_get_stats(c).disk_hits, 1);
    cr_assert_eq(di_cache_get_stats(c).corrupt, 0);
    di_cache_close(c);
    free(payload);
}

static void flip_byte(const char *file, long offset, long n)
{
    (void)n;
    int fd = open(file, O_RDWR);
    cr_assert(fd >= 0);
    uint8_t b;
    cr_assert_eq(pread(fd, &b, 1, offset), 1);
    b ^= 0x01;
    cr_assert_eq(pwrite(fd, &b, 1, offset), 1);
    close(fd);
}

static void truncate_to(const char *file, long size, long n)
{
    (void)n;
    cr_assert_eq(truncate(file, size), 0);
}

static void append_byte(const char *file, long unused, long n)
{
    (void)unused; (void)n;
    int fd = open(file, O_WRONLY | O_APPEND);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, "x", 1), 1);
    close(fd);
}

Test(cache, corrupt_byte_is_detected_removed_and_rebuilt)
{
    const size_t n = 4096;
    /* magic, version, length, key (first, last byte), checksum (first, last byte), first,
     * middle and last payload byte */
    const long offsets[] = {0, 4, 8, 16, 47, 48, 79, HEADER, HEADER + 2000, HEADER + (long)n - 1};
    for (size_t i = 0; i < sizeof offsets / sizeof offsets[0]; i++) {
        char what[32];
        snprintf(what, sizeof what, "flip at %ld", offsets[i]);
        damage_and_rebuild(what, flip_byte, offsets[i], n);
    }
}

Test(cache, truncated_or_extended_entry_is_detected_removed_and_rebuilt)
{
    const size_t n = 4096;
    const long sizes[] = {0, 3, 20, 47, 48, HEADER - 1, HEADER, HEADER + 100, HEADER + (long)n - 1};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        char what[32];
        snprintf(what, sizeof what, "truncate to %ld", sizes[i]);
        damage_and_rebuild(what, truncate_to, sizes[i], n);
    }
    damage_and_rebuild("one byte appended", append_byte, 0, n);
}

/* ---- environment -------------------------------------------------------------------------- */

Test(cache, cache_0_writes_nothing_to_disk)
{
    const char *dir = path_in(tmpdir, "kernels");
    setenv("DETINFER_CACHE", "0", 1);
    di_cache *c = di_cache_open(dir);
    cr_assert_null(di_cache_disk_dir(c));
    di_key k = kernel_key("mem only", "");
    di_cache_put(c, &k, "payload", 7);
    expect_hit(c, &k, (const uint8_t *)"payload", 7);
    di_cache_close(c);
    cr_assert(!exists(dir), "DETINFER_CACHE=0 created %s", dir);
    cr_assert_eq(count_named(tmpdir, ""), 0, "DETINFER_CACHE=0 wrote files");

    setenv("DETINFER_CACHE", "1", 1);  /* any other value keeps the disk cache */
    c = di_cache_open(dir);
    cr_assert_str_eq(di_cache_disk_dir(c), dir);
    di_cache_close(c);
}

Test(cache, always_compile_misses_but_still_puts)
{
    di_key k = kernel_key("always", "");
    setenv("DETINFER_ALWAYS_COMPILE", "1", 1);
    di_cache *c = di_cache_open(tmpdir);
    expect_miss(c, &k);
    di_cache_put(c, &k, "abc", 3);
    expect_miss(c, &k);  /* not even from memory */
    di_cache_stats s = di_cache_get_stats(c);
    cr_assert_eq(s.misses, 2);
    cr_assert_eq(s.mem_hits + s.disk_hits, 0);
    di_cache_close(c);
    cr_assert(exists(entry_file(tmpdir, &k)), "puts must still write the entry");

    unsetenv("DETINFER_ALWAYS_COMPILE");
    c = di_cache_open(tmpdir);
    expect_hit(c, &k, (const uint8_t *)"abc", 3);
    di_cache_close(c);
}

Test(cache, directory_comes_from_arg_then_environment)
{
    char explicit_dir[256], xdg[256], home[256], want[300];
    snprintf(explicit_dir, sizeof explicit_dir, "%s/explicit", tmpdir);
    snprintf(xdg, sizeof xdg, "%s/xdg", tmpdir);
    snprintf(home, sizeof home, "%s/home", tmpdir);
    setenv("HOME", home, 1);
    setenv("XDG_CACHE_HOME", xdg, 1);
    setenv("DETINFER_CACHE_DIR", explicit_dir, 1);

    const char *arg = path_in(tmpdir, "arg/a/b");
    di_cache *c = di_cache_open(arg);
    cr_assert_str_eq(di_cache_disk_dir(c), arg);
    cr_assert(exists(arg), "mkdir -p of %s", arg);
    di_cache_close(c);

    c = di_cache_open(NULL);
    cr_assert_str_eq(di_cache_disk_dir(c), explicit_dir);
    di_cache_close(c);

    unsetenv("DETINFER_CACHE_DIR");
    c = di_cache_open(NULL);
    snprintf(want, sizeof want, "%s/detinfer/kernels", xdg);
    cr_assert_str_eq(di_cache_disk_dir(c), want);
    cr_assert(exists(want));
    di_cache_close(c);

    unsetenv("XDG_CACHE_HOME");
    c = di_cache_open(NULL);
    snprintf(want, sizeof want, "%s/.cache/detinfer/kernels", home);
    cr_assert_str_eq(di_cache_disk_dir(c), want);
    cr_assert(exists(want));
    di_cache_close(c);
    cr_assert_eq(count_named(tmpdir, "probe"), 0, "probe files left behind");
}

Test(cache, unwritable_dir_falls_back_to_memory_with_one_warning)
{
    /* a directory under a regular file cannot be created, even by root */
    const char *blocker = path_in(tmpdir, "file");
    FILE *f = fopen(blocker, "w");
    cr_assert_not_null(f);
    fclose(f);
    char dir[600];
    snprintf(dir, sizeof dir, "%s/kernels", blocker);

    const char *log = path_in(tmpdir, "stderr.txt");
    fflush(stderr);
    int saved = dup(2), fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);

    di_cache *c = di_cache_open(dir);
    const char *disk = di_cache_disk_dir(c);
    di_key k1 = kernel_key("one", ""), k2 = kernel_key("two", "");
    di_cache_put(c, &k1, "11", 2);
    di_cache_put(c, &k2, "222", 3);
    bool hit1 = false, hit2 = false;
    void *p = NULL;
    size_t n = 0;
    hit1 = di_cache_get(c, &k1, &p, &n) && n == 2 && !memcmp(p, "11", 2);
    free(p);
    hit2 = di_cache_get(c, &k2, &p, &n) && n == 3 && !memcmp(p, "222", 3);
    free(p);
    di_cache_stats s = di_cache_get_stats(c);
    di_cache_close(c);

    fflush(stderr);
    dup2(saved, 2);
    close(saved);

    cr_assert_null(disk, "expected memory only");
    cr_assert(hit1 && hit2, "memory fallback must still hit");
    cr_assert_eq(s.mem_hits, 2);
    char text[4096] = {0};
    f = fopen(log, "r");
    cr_assert_not_null(f);
    size_t len = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[len] = 0;
    int warnings = 0;
    for (const char *q = text; (q = strstr(q, "detinfer: kernel cache dir")); q++) warnings++;
    cr_assert_eq(warnings, 1, "want exactly one warning, got:\n%s", text);
    cr_assert(strstr(text, dir) && strstr(text, "using memory only"), "warning must name %s:\n%s", dir, text);
}

/* ---- concurrency -------------------------------------------------------------------------- */

enum { RACE_ROUNDS = 200, RACE_BYTES = 64 * 1024 };

/* One racer: puts the key, then reads it through a fresh cache (so from disk), every round.
 * Returns a process exit status: 0, or which check failed. */
static int race(const char *dir, const di_key *k, const uint8_t *payload)
{
    di_cache *w = di_cache_open(dir);
    if (!di_cache_disk_dir(w)) return 10;
    for (int round = 0; round < RACE_ROUNDS; round++) {
        di_cache_put(w, k, payload, RACE_BYTES);
        di_cache *r = di_cache_open(dir);
        void *got = NULL;
        size_t n = 0;
        bool hit = di_cache_get(r, k, &got, &n);
        di_cache_stats s = di_cache_get_stats(r);
        di_cache_close(r);
        int bad = !hit ? 11 : n != RACE_BYTES ? 12 : memcmp(got, payload, n) ? 13 : s.corrupt ? 14 : 0;
        free(got);
        if (bad) return bad;
    }
    int failures = (int)di_cache_get_stats(w).write_failures;
    di_cache_close(w);
    return failures ? 15 : 0;
}

Test(cache, two_processes_racing_on_one_key)
{
    di_key k = kernel_key("raced", "-O3");
    uint8_t *payload = make_payload(RACE_BYTES, 9);
    pid_t pids[2];
    for (int i = 0; i < 2; i++) {
        pids[i] = fork();
        cr_assert(pids[i] >= 0, "fork");
        if (pids[i] == 0) _exit(race(tmpdir, &k, payload));
    }
    for (int i = 0; i < 2; i++) {
        int status = 0;
        cr_assert_eq(waitpid(pids[i], &status, 0), pids[i]);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "racer %d failed: status %d", i, status);
    }
    cr_assert_eq(count_named(tmpdir, ".tmp"), 0, "temp files left behind");
    cr_assert_eq(count_named(tmpdir, ".bin"), 1, "want exactly one entry");
    cr_assert_eq(count_named(tmpdir, ""), 1, "want nothing but the entry");
    cr_assert_eq(file_size(entry_file(tmpdir, &k)), HEADER + RACE_BYTES);
    di_cache *c = di_cache_open(tmpdir);
    expect_hit(c, &k, payload, RACE_BYTES);
    cr_assert_eq(di_cache_get_stats(c).disk_hits, 1);
    di_cache_close(c);
    free(payload);
}

enum { THREADS = 4, KEYS_PER_THREAD = 500 };
typedef struct { di_cache *c; int id; int failures; } thread_job;

static void thread_payload(int id, int i, uint8_t out[16])
{
    for (int j = 0; j < 16; j++) out[j] = (uint8_t)(id * 31 + i * 7 + j);
}

static void *thread_body(void *arg)
{
    thread_job *job = arg;
    char src[64];
    uint8_t want[16];
    for (int i = 0; i < KEYS_PER_THREAD; i++) {
        snprintf(src, sizeof src, "thread %d key %d", job->id, i);
        di_key k = kernel_key(src, "");
        thread_payload(job->id, i, want);
        di_cache_put(job->c, &k, want, sizeof want);
        /* re-read an earlier key of this thread while the others insert (and grow the table) */
        snprintf(src, sizeof src, "thread %d key %d", job->id, i / 2);
        k = kernel_key(src, "");
        thread_payload(job->id, i / 2, want);
        void *got = NULL;
        size_t n = 0;
        if (!di_cache_get(job->c, &k, &got, &n) || n != sizeof want || memcmp(got, want, n)) job->failures++;
        free(got);
    }
    return NULL;
}

Test(cache, threads_share_the_memory_table)
{
    setenv("DETINFER_CACHE", "0", 1);  /* memory only: this is about the table and its lock */
    di_cache *c = di_cache_open(NULL);
    pthread_t t[THREADS];
    thread_job jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (thread_job){c, i, 0};
        cr_assert_eq(pthread_create(&t[i], NULL, thread_body, &jobs[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < THREADS; i++) cr_assert_eq(jobs[i].failures, 0, "thread %d saw wrong payloads", i);
    for (int id = 0; id < THREADS; id++) {
        for (int i = 0; i < KEYS_PER_THREAD; i++) {
            char src[64];
            uint8_t want[16];
            snprintf(src, sizeof src, "thread %d key %d", id, i);
            di_key k = kernel_key(src, "");
            thread_payload(id, i, want);
            expect_hit(c, &k, want, sizeof want);
        }
    }
    di_cache_stats s = di_cache_get_stats(c);
    cr_assert_eq(s.puts, THREADS * KEYS_PER_THREAD);
    cr_assert_eq(s.misses, 0);
    di_cache_close(c);
}

/* ---- trust: other users, modes, symlinks, FIFOs, read-only dirs, stale temps -------------
 * CI runs as root, which permissions do not stop, so these run the cache as two unprivileged
 * users the test creates: the victim (detinfer-test) and another local user (detinfer-test2).
 * Each step runs in a child that switches to its user; it returns 0 or the number of the check
 * that failed, and says what on stderr. */

typedef struct user { uid_t uid; gid_t gid; const char *name; } user;

/* The user, created (system account, no home) when it is missing and this is root. */
static user test_user(const char *name)
{
    if (geteuid() != 0) cr_skip_test("needs root to switch to the test users %s (CI runs as root)", name);
    struct passwd *pw = getpwnam(name);
    if (!pw) {
        char cmd[256];
        snprintf(cmd, sizeof cmd, "useradd --system --no-create-home --shell /usr/sbin/nologin %s >/dev/null 2>&1", name);
        int rc = system(cmd);   /* a parallel test may have created it meanwhile: look again either way */
        if (!(pw = getpwnam(name))) cr_skip_test("cannot create the test user %s (useradd: status %d)", name, rc);
    }
    return (user){pw->pw_uid, pw->pw_gid, name};
}

/* Runs fn(arg) in a child as u (umask mask, stderr to err_log when given); its exit status. */
static int as_user(user u, mode_t mask, const char *err_log, int (*fn)(void *), void *arg)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork");
    if (pid == 0) {
        if (err_log) {
            int fd = open(err_log, O_WRONLY | O_CREAT | O_TRUNC, 0666);
            if (fd < 0 || dup2(fd, 2) < 0) _exit(90);
            close(fd);
        }
        if (setgroups(0, NULL) || setgid(u.gid) || setuid(u.uid) || geteuid() != u.uid) _exit(91);
        umask(mask);
        _exit(fn(arg));
    }
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* tmpdir becomes the root of a small world: shared/ is like /tmp (1777), each user has a
 * home they own (0755). Returns shared/. */
static const char *world(user victim, user other)
{
    cr_assert_eq(chmod(tmpdir, 0755), 0);
    const char *shared = path_in(tmpdir, "shared");
    cr_assert_eq(mkdir(shared, 0777), 0);
    cr_assert_eq(chmod(shared, 01777), 0);
    const user us[2] = {victim, other};
    for (int i = 0; i < 2; i++) {
        const char *home = path_in(tmpdir, us[i].name);
        cr_assert_eq(mkdir(home, 0755), 0);
        cr_assert_eq(chown(home, us[i].uid, us[i].gid), 0);
    }
    return shared;
}

static char *read_text_file(const char *path)
{
    static char text[8192];
    text[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f) return text;
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = 0;
    fclose(f);
    return text;
}

static int count_of(const char *text, const char *needle)
{
    int n = 0;
    for (const char *q = text; (q = strstr(q, needle)); q++) n++;
    return n;
}

/* Exactly one cache warning, naming path and containing reason. */
static void expect_one_warning(const char *log, const char *path, const char *reason)
{
    const char *text = read_text_file(log);
    cr_assert_eq(count_of(text, "detinfer: kernel cache dir"), 1, "want exactly one warning, got:\n%s", text);
    cr_assert(strstr(text, path), "the warning does not name %s:\n%s", path, text);
    cr_assert(strstr(text, reason), "the warning does not say '%s':\n%s", reason, text);
}

static mode_t mode_of(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 ? st.st_mode : 0;
}

/* Writes a well-formed entry (what the cache would write for key k) at path, with mode. */
static void write_entry(const char *path, const di_key *k, const void *payload, size_t n, mode_t mode)
{
    uint8_t h[HEADER];
    memcpy(h, "DIKC", 4);
    uint32_t version = 2;
    uint64_t len = n;
    memcpy(h + 4, &version, 4);
    memcpy(h + 8, &len, 8);
    memcpy(h + 16, k->b, 32);
    di_sha256_once(payload, n, h + 48);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0600);
    if (fd < 0) { fprintf(stderr, "write_entry %s: %s\n", path, strerror(errno)); return; }
    if (write(fd, h, sizeof h) != (ssize_t)sizeof h || write(fd, payload, n) != (ssize_t)n)
        fprintf(stderr, "write_entry %s: short write\n", path);
    fchmod(fd, mode);
    close(fd);
}

/* The sole entry file under dir (a kernel the runtime cached): its path, and its key. */
static bool sole_entry(const char *dir, char *path, size_t cap, di_key *k)
{
    DIR *d = opendir(dir);
    if (!d) return false;
    bool found = false;
    for (struct dirent *e; (e = readdir(d)) && !found;) {
        if (strlen(e->d_name) != 2) continue;
        char sub[1024];
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        DIR *s = opendir(sub);
        for (struct dirent *f; s && (f = readdir(s));) {
            if (strlen(f->d_name) != 68 || strcmp(f->d_name + 64, ".bin")) continue;
            snprintf(path, cap, "%s/%s", sub, f->d_name);
            for (int i = 0; i < 32; i++) sscanf(f->d_name + 2 * i, "%2hhx", &k->b[i]);
            found = true;
            break;
        }
        if (s) closedir(s);
    }
    closedir(d);
    return found;
}

/* ---- the planted object: a kernel that would create a marker file if it ever ran ---------- */

typedef struct kernel_job {
    const char *cache_dir;
    const char *plant_at;     /* when set: this user writes the planted entry here first (mode 0600) */
    const void *obj; size_t obj_len;
    di_key key;
} kernel_job;

/* The spec the test compiles, launches and plants: swiglu, F = 8 (cheap, one launch). */
static const di_spec *test_spec(di_specialization *p)
{
    const di_spec *s = di_spec_find("swiglu");
    di_spec_defaults(s, p);
    di_err e;
    di_spec_set_dim(s, p, "F", 8, &e);
    return s;
}

/* What the runtime does with a kernel: fetch it (cache hit or compile), load it, run it. */
static int run_kernel(void *arg)
{
    kernel_job *j = arg;
    if (j->plant_at) write_entry(j->plant_at, &j->key, j->obj, j->obj_len, 0600);
    /* libtcc: the planted object is a tcc object (the trust checks are the disk cache's, the
     * same for every kind of entry; the cc tier's entries are shared objects under other keys) */
    di_rt_opts o = {.backend = DI_BACKEND_C, .profile = DI_PROFILE_EXACT, .threads = 1, .cache_dir = j->cache_dir,
                    .cpu_compiler = DI_CPU_COMPILER_TCC};
    di_rt *rt = NULL;
    di_err e = {0};
    if (di_rt_open(&o, &rt, &e)) { fprintf(stderr, "runtime: %s\n", e.msg); return 1; }
    di_specialization p;
    const di_spec *s = test_spec(&p);
    di_kernel *k = NULL;
    di_buf *y = NULL, *gu = NULL;
    int rc = 0;
    if (di_rt_kernel(rt, s, &p, &k, &e)) { fprintf(stderr, "kernel: %s\n", e.msg); rc = 2; }
    if (!rc && (di_buf_alloc(rt, 8 * 4, &y, &e) || di_buf_alloc(rt, 16 * 4, &gu, &e))) rc = 3;
    di_val args[] = {{.buf = y}, {.buf = gu}};
    if (!rc && (di_rt_launch(rt, k, args, (long[]){1}, &e) || di_rt_sync(rt, &e))) { fprintf(stderr, "launch: %s\n", e.msg); rc = 4; }
    di_buf_free(y);
    di_buf_free(gu);
    di_rt_close(rt);
    return rc;
}

/* An object defining the kernel's symbol whose body creates marker by raw syscalls (kernel
 * objects are linked without libc), so a test can tell whether it ran. */
static void planted_object(const char *marker, void **obj, size_t *len)
{
#if !defined(__x86_64__)
    cr_skip_test("the planted object is written for x86-64 Linux");
#endif
    di_specialization p;
    const di_spec *s = test_spec(&p);
    char name[256], src[2048];
    di_target ct = di_target_c();
    di_kernel_name(s, &p, &ct, name, sizeof name);
    snprintf(src, sizeof src,
             "static long sys3(long n, long a, long b, long c)\n"
             "{ long r; __asm__ volatile(\"syscall\" : \"=a\"(r) : \"a\"(n), \"D\"(a), \"S\"(b), \"d\"(c) : \"rcx\", \"r11\", \"memory\"); return r; }\n"
             "void %s(void) { static const char path[] = \"%s\"; long fd = sys3(2, (long)path, 0101, 0644); if (fd >= 0) sys3(3, fd, 0, 0); }\n",
             name, marker);
    di_err e = {0};
    cr_assert_eq(di_tcc_compile_obj(src, "planted", obj, len, &e), 0, "%s", e.msg);
}

/* The other user's attempts on the victim's cache: every one must be refused. */
typedef struct attack { const char *dir, *entry, *sub; const void *obj; size_t len; di_key key; } attack;

static int try_to_plant(void *arg)
{
    attack *a = arg;
    int fd = open(a->entry, O_WRONLY | O_TRUNC);
    if (fd >= 0 || errno != EACCES) { fprintf(stderr, "could open the victim's entry for writing\n"); return 1; }
    char p[1100];
    snprintf(p, sizeof p, "%s/planted.tmp", a->sub);
    fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0666);
    if (fd >= 0 || errno != EACCES) { fprintf(stderr, "could create a file in the victim's subdirectory\n"); return 2; }
    snprintf(p, sizeof p, "%s/zz", a->dir);
    if (mkdir(p, 0777) == 0 || errno != EACCES) { fprintf(stderr, "could create a directory in the victim's cache\n"); return 3; }
    return 0;
}

/* The other user pre-creates the cache dir, as anyone can under /tmp, and plants the object
 * in it as a valid entry under the right name, writable by all. */
static int precreate_and_plant(void *arg)
{
    attack *a = arg;
    if (mkdir(a->dir, 0777) || mkdir(a->sub, 0777)) { fprintf(stderr, "mkdir: %s\n", strerror(errno)); return 1; }
    write_entry(a->entry, &a->key, a->obj, a->len, 0666);
    return mode_of(a->entry) ? 0 : 2;
}

Test(cache, an_object_planted_by_another_user_is_never_run, .timeout = 120)
{
    user victim = test_user("detinfer-test"), other = test_user("detinfer-test2");
    const char *shared = world(victim, other);
    char cache[1024], marker[1024], entry[1200], log[1024];
    snprintf(cache, sizeof cache, "%s/cache", shared);
    snprintf(marker, sizeof marker, "%s/MARKER", shared);
    snprintf(log, sizeof log, "%s/stderr.txt", tmpdir);
    void *obj;
    size_t len;
    planted_object(marker, &obj, &len);

    /* the victim, under umask 000, builds its cache: 0700 dirs, 0600 entries */
    kernel_job job = {.cache_dir = cache};
    cr_assert_eq(as_user(victim, 0, NULL, run_kernel, &job), 0, "the victim's first run failed");
    di_key key;
    cr_assert(sole_entry(cache, entry, sizeof entry, &key), "no entry under %s", cache);
    cr_assert_eq(mode_of(cache) & 0777, 0700, "cache dir mode %o", mode_of(cache) & 0777);
    char sub[1200];
    snprintf(sub, sizeof sub, "%s", entry);
    *strrchr(sub, '/') = 0;
    cr_assert_eq(mode_of(sub) & 0777, 0700, "subdir mode %o", mode_of(sub) & 0777);
    cr_assert_eq(mode_of(entry) & 0777, 0600, "entry mode %o", mode_of(entry) & 0777);

    /* control: the object does run when it is the victim's own entry, so a missing marker
     * below means the cache refused it, not that the object is inert */
    kernel_job own = {.cache_dir = cache, .plant_at = entry, .obj = obj, .obj_len = len, .key = key};
    cr_assert_eq(as_user(victim, 022, NULL, run_kernel, &own), 0);
    cr_assert(exists(marker), "control: the planted object did not run from the victim's own cache");
    cr_assert_eq(unlink(marker), 0);
    cr_assert_eq(as_user(victim, 022, NULL, run_kernel, &job), 0);   /* and it stays a hit, run after run */
    cr_assert(exists(marker));
    cr_assert_eq(unlink(marker), 0);
    job.plant_at = NULL;
    cr_assert_eq(unlink(entry), 0);
    cr_assert_eq(as_user(victim, 0, NULL, run_kernel, &job), 0, "rebuilding the real entry");

    /* 1. the other user cannot write into the victim's cache at all */
    attack a = {.dir = cache, .entry = entry, .sub = sub, .obj = obj, .len = len, .key = key};
    cr_assert_eq(as_user(other, 0, NULL, try_to_plant, &a), 0, "the other user could write into the cache");
    cr_assert_eq(as_user(victim, 0, NULL, run_kernel, &job), 0);
    cr_assert(!exists(marker), "planted code ran");

    /* 2. an entry of another user's in the victim's own dir (root put it there) is refused */
    write_entry(entry, &key, obj, len, 0644);
    cr_assert_eq(chown(entry, other.uid, other.gid), 0);
    cr_assert_eq(as_user(victim, 0, NULL, run_kernel, &job), 0);
    cr_assert(!exists(marker), "an entry owned by another user was run");
    cr_assert_eq(mode_of(entry) & 0777, 0600, "the foreign entry was not replaced by a rebuilt one");

    /* 3. a dir the other user created beforehand: one warning, memory only, nothing run */
    char pre[1024], pre_sub[1100], pre_entry[1200];
    snprintf(pre, sizeof pre, "%s/precreated", shared);
    snprintf(pre_sub, sizeof pre_sub, "%s/%s", pre, strrchr(sub, '/') + 1);
    snprintf(pre_entry, sizeof pre_entry, "%s/%s", pre_sub, strrchr(entry, '/') + 1);
    attack b = {.dir = pre, .entry = pre_entry, .sub = pre_sub, .obj = obj, .len = len, .key = key};
    cr_assert_eq(as_user(other, 0, NULL, precreate_and_plant, &b), 0, "the other user's setup failed");
    kernel_job in_pre = {.cache_dir = pre};
    cr_assert_eq(as_user(victim, 0, log, run_kernel, &in_pre), 0, "%s", read_text_file(log));
    cr_assert(!exists(marker), "planted code in a pre-created dir ran");
    expect_one_warning(log, pre, "not by this user");
    cr_assert(strstr(read_text_file(log), "using memory only"), "%s", read_text_file(log));
    free(obj);
}

/* ---- modes, whatever the umask ------------------------------------------------------------ */

/* expect_disk: whether the cache may use its dir; expect_failures: write failures after the put */
typedef struct put_job { const char *dir; di_key key; int expect_disk, expect_failures; } put_job;

static int put_one(void *arg)
{
    put_job *j = arg;
    di_cache *c = di_cache_open(j->dir);
    if ((di_cache_disk_dir(c) != NULL) != j->expect_disk) { fprintf(stderr, "disk dir %s\n", di_cache_disk_dir(c)); return 1; }
    di_cache_put(c, &j->key, "payload", 7);
    void *p = NULL;
    size_t n = 0;
    bool hit = di_cache_get(c, &j->key, &p, &n);
    free(p);
    int rc = !hit ? 2 : di_cache_get_stats(c).write_failures != j->expect_failures ? 3 : 0;
    di_cache_close(c);
    return rc;
}

Test(cache, modes_are_0700_and_0600_whatever_the_umask)
{
    user victim = test_user("detinfer-test"), other = test_user("detinfer-test2");
    world(victim, other);
    const mode_t masks[] = {0000, 0002, 0022, 0077, 0777};
    for (size_t i = 0; i < sizeof masks / sizeof masks[0]; i++) {
        char base[1024], dir[1100];
        snprintf(base, sizeof base, "%s/%s/umask%03o", tmpdir, victim.name, (unsigned)masks[i]);
        snprintf(dir, sizeof dir, "%s/a/kernels", base);   /* three levels to create */
        put_job j = {.dir = dir, .key = kernel_key("modes", ""), .expect_disk = 1};
        cr_assert_eq(as_user(victim, masks[i], NULL, put_one, &j), 0, "umask %03o", (unsigned)masks[i]);
        const char *levels[] = {base, path_in(base, "a"), dir};
        for (int l = 0; l < 3; l++)
            cr_assert_eq(mode_of(levels[l]) & 07777, 0700, "umask %03o: %s is %04o", (unsigned)masks[i], levels[l],
                         mode_of(levels[l]) & 07777);
        char sub[1200], *e = entry_file(dir, &j.key);
        snprintf(sub, sizeof sub, "%s", e);
        *strrchr(sub, '/') = 0;
        cr_assert_eq(mode_of(sub) & 07777, 0700, "umask %03o: subdir %04o", (unsigned)masks[i], mode_of(sub) & 07777);
        cr_assert_eq(mode_of(e) & 07777, 0600, "umask %03o: entry %04o", (unsigned)masks[i], mode_of(e) & 07777);
    }
}

/* ---- untrusted directories: one warning, memory only, nothing written --------------------- */

static int make_dir_mode(void *arg)
{
    const char **a = arg;
    return mkdir(a[0], 0700) || chmod(a[0], (mode_t)strtol(a[1], NULL, 8)) ? 1 : 0;
}

Test(cache, a_foreign_or_group_writable_dir_gives_one_warning_and_memory_only)
{
    user victim = test_user("detinfer-test"), other = test_user("detinfer-test2");
    const char *shared = world(victim, other);
    char log[1024];
    snprintf(log, sizeof log, "%s/stderr.txt", tmpdir);
    struct { user owner; const char *mode, *reason; } cases[] = {
        {other, "0755", "owned by uid"},
        {victim, "0770", "writable by its group or others: mode 0770"},
        {victim, "0707", "writable by its group or others: mode 0707"},
        {victim, "1777", "writable by its group or others: mode 1777"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/dir%zu", shared, i);
        const char *a[] = {dir, cases[i].mode};
        cr_assert_eq(as_user(cases[i].owner, 022, NULL, make_dir_mode, a), 0);
        put_job j = {.dir = dir, .key = kernel_key("untrusted", ""), .expect_disk = 0};
        cr_assert_eq(as_user(victim, 022, log, put_one, &j), 0, "case %zu: %s", i, read_text_file(log));
        expect_one_warning(log, dir, cases[i].reason);
        cr_assert(strstr(read_text_file(log), "using memory only"));
        cr_assert_eq(count_named(dir, ""), 0, "case %zu: something was written into %s", i, dir);
    }

    /* a level below a trusted root: another user's subdirectory turns the disk off too */
    char root[1024];
    snprintf(root, sizeof root, "%s/%s/kernels", tmpdir, victim.name);
    put_job j = {.dir = root, .key = kernel_key("sub", ""), .expect_disk = 1};
    cr_assert_eq(as_user(victim, 022, NULL, put_one, &j), 0);
    char sub[1200];
    snprintf(sub, sizeof sub, "%s", entry_file(root, &j.key));
    *strrchr(sub, '/') = 0;
    cr_assert_eq(unlink(entry_file(root, &j.key)), 0);
    cr_assert_eq(chown(sub, other.uid, other.gid), 0);
    cr_assert_eq(chmod(sub, 0755), 0);   /* readable: refused for its owner, not for want of access */
    j.expect_failures = 1;   /* the put is refused */
    cr_assert_eq(as_user(victim, 022, log, put_one, &j), 0, "%s", read_text_file(log));
    expect_one_warning(log, sub, "owned by uid");
    cr_assert(!exists(entry_file(root, &j.key)), "an entry was written into another user's subdirectory");
}

/* ---- symlinks ------------------------------------------------------------------------------ */

/* Snapshot of a directory's files: names, sizes, mtimes (a change anywhere differs). */
static void snapshot(const char *dir, char *out, size_t cap)
{
    out[0] = 0;
    DIR *d = opendir(dir);
    cr_assert(d, "%s", dir);
    for (struct dirent *e; (e = readdir(d));) {
        struct stat st;
        char p[1300];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (e->d_name[0] == '.' || lstat(p, &st)) continue;
        size_t n = strlen(out);
        snprintf(out + n, cap - n, "%s:%lld:%lld;", e->d_name, (long long)st.st_size, (long long)st.st_mtime);
    }
    closedir(d);
}

/* A key whose entry shares the subdirectory of k (same first byte). */
static di_key key_beside(const di_key *k, const char *tag)
{
    for (int i = 0; i < 100000; i++) {
        char src[64];
        snprintf(src, sizeof src, "%s %d", tag, i);
        di_key x = kernel_key(src, "");
        if (x.b[0] == k->b[0] && memcmp(x.b, k->b, 32)) return x;
    }
    cr_assert_fail("no key beside");
    return *k;
}

typedef struct link_job { const char *dir; di_key hit, corrupt, fresh; } link_job;

static int through_the_link(void *arg)
{
    link_job *j = arg;
    di_cache *c = di_cache_open(j->dir);
    void *p = NULL;
    size_t n = 0;
    int rc = 0;
    if (!di_cache_disk_dir(c)) rc = 1;
    else if (di_cache_get(c, &j->hit, &p, &n)) rc = 2;          /* a hit through the link */
    else if (di_cache_get(c, &j->corrupt, &p, &n)) rc = 3;
    di_cache_put(c, &j->fresh, "new", 3);
    free(p);
    di_cache_close(c);
    return rc;
}

Test(cache, a_symlinked_subdirectory_is_not_followed)
{
    user victim = test_user("detinfer-test"), other = test_user("detinfer-test2");
    world(victim, other);
    char root[1024], outside[1024], log[1024];
    snprintf(root, sizeof root, "%s/%s/kernels", tmpdir, victim.name);
    snprintf(outside, sizeof outside, "%s/%s/outside", tmpdir, victim.name);
    snprintf(log, sizeof log, "%s/stderr.txt", tmpdir);
    link_job j = {.dir = root, .hit = kernel_key("linked", "")};
    j.corrupt = key_beside(&j.hit, "corrupt");
    j.fresh = key_beside(&j.hit, "fresh");
    put_job setup_root = {.dir = root, .key = kernel_key("elsewhere", ""), .expect_disk = 1};
    for (int i = 0; setup_root.key.b[0] == j.hit.b[0]; i++) {   /* in another subdirectory */
        char src[32];
        snprintf(src, sizeof src, "elsewhere %d", i);
        setup_root.key = kernel_key(src, "");
    }
    cr_assert_eq(as_user(victim, 022, NULL, put_one, &setup_root), 0);

    /* outside the cache: a valid entry (following the link would hit it), a corrupt one
     * (following would delete it), an old temp file (following would clean it up) */
    cr_assert_eq(mkdir(outside, 0700), 0);
    char hex[65], p[1300];
    di_key_hex(&j.hit, hex);
    snprintf(p, sizeof p, "%s/%s.bin", outside, hex);
    write_entry(p, &j.hit, "outside", 7, 0600);
    di_key_hex(&j.corrupt, hex);
    snprintf(p, sizeof p, "%s/%s.bin", outside, hex);
    write_entry(p, &j.corrupt, "outside", 7, 0600);
    truncate(p, 20);
    snprintf(p, sizeof p, "%s/old.bin.tmp.1.2", outside);
    write_entry(p, &j.hit, "tmp", 3, 0600);
    struct timespec old[2] = {{.tv_sec = time(NULL) - 3600}, {.tv_sec = time(NULL) - 3600}};
    cr_assert_eq(utimensat(AT_FDCWD, p, old, 0), 0);
    char cmd[2000];
    snprintf(cmd, sizeof cmd, "chown -R %u:%u %s", (unsigned)victim.uid, (unsigned)victim.gid, outside);
    cr_assert_eq(system(cmd), 0);
    char link[1100];
    snprintf(link, sizeof link, "%s/%02x", root, j.hit.b[0]);
    cr_assert_eq(symlink(outside, link), 0);
    lchown(link, victim.uid, victim.gid);
    char before[4096], after[4096];
    snapshot(outside, before, sizeof before);

    cr_assert_eq(as_user(victim, 022, log, through_the_link, &j), 0, "%s", read_text_file(log));
    snapshot(outside, after, sizeof after);
    cr_assert_str_eq(after, before, "something outside the cache changed");
    expect_one_warning(log, link, "symbolic link");
    cr_assert(S_ISLNK(mode_of(link)), "the link itself was replaced");
}

Test(cache, a_symlinked_cache_dir_is_not_followed)
{
    user victim = test_user("detinfer-test"), other = test_user("detinfer-test2");
    const char *shared = world(victim, other);
    char target[1024], link[1024], log[1024];
    snprintf(target, sizeof target, "%s/%s/real", tmpdir, victim.name);
    snprintf(link, sizeof link, "%s/link", shared);
    snprintf(log, sizeof log, "%s/stderr.txt", tmpdir);
    cr_assert_eq(mkdir(target, 0700), 0);
    cr_assert_eq(chown(target, victim.uid, victim.gid), 0);
    cr_assert_eq(symlink(target, link), 0);
    cr_assert_eq(lchown(link, other.uid, other.gid), 0);   /* anyone could have made it */
    put_job j = {.dir = link, .key = kernel_key("root link", ""), .expect_disk = 0};
    cr_assert_eq(as_user(victim, 022, log, put_one, &j), 0, "%s", read_text_file(log));
    expect_one_warning(log, link, "symbolic link");
    cr_assert_eq(count_named(target, ""), 0, "written through the link");
}

/* ---- FIFOs, read-only dirs ------------------------------------------------------------------ */

static int get_through_fifo(void *arg)
{
    put_job *j = arg;
    alarm(20);   /* a hang would be a timeout, not a stuck suite */
    di_cache *c = di_cache_open(j->dir);
    void *p = NULL;
    size_t n = 0;
    int rc = di_cache_get(c, &j->key, &p, &n) ? 1 : di_cache_get_stats(c).corrupt != 1 ? 2 : 0;
    free(p);
    di_cache_put(c, &j->key, "real", 4);   /* replaces the FIFO */
    di_cache_close(c);
    c = di_cache_open(j->dir);
    if (!rc && !(di_cache_get(c, &j->key, &p, &n) && n == 4 && !memcmp(p, "real", 4))) rc = 3;
    free(p);
    di_cache_close(c);
    return rc;
}

Test(cache, a_fifo_entry_returns_at_once_and_is_replaced)
{
    user victim = test_user("detinfer-test"), other = test_user("detinfer-test2");
    world(victim, other);
    char root[1024];
    snprintf(root, sizeof root, "%s/%s/kernels", tmpdir, victim.name);
    put_job j = {.dir = root, .key = kernel_key("fifo", ""), .expect_disk = 1};
    cr_assert_eq(as_user(victim, 022, NULL, put_one, &j), 0);
    const char *e = entry_file(root, &j.key);
    cr_assert_eq(unlink(e), 0);
    cr_assert_eq(mkfifo(e, 0600), 0);
    cr_assert_eq(chown(e, victim.uid, victim.gid), 0);
    time_t t0 = time(NULL);
    cr_assert_eq(as_user(victim, 022, NULL, get_through_fifo, &j), 0, "the FIFO entry was not a clean miss");
    cr_assert_lt(time(NULL) - t0, 10, "the FIFO entry took %lld s", (long long)(time(NULL) - t0));
    cr_assert(S_ISREG(mode_of(e)));
}

typedef struct ro_job { const char *dir; di_key old_key, new_key, bad_key; } ro_job;

static int read_only_hits(void *arg)
{
    ro_job *j = arg;
    di_cache *c = di_cache_open(j->dir);
    void *p = NULL;
    size_t n = 0;
    int rc = 0;
    if (!di_cache_disk_dir(c)) rc = 1;
    else if (!(di_cache_get(c, &j->old_key, &p, &n) && n == 3 && !memcmp(p, "old", 3))) rc = 2;
    else if (di_cache_get_stats(c).disk_hits != 1) rc = 3;
    free(p);
    p = NULL;
    if (!rc && di_cache_get(c, &j->bad_key, &p, &n)) rc = 4;
    di_cache_put(c, &j->new_key, "new", 3);
    free(p);
    p = NULL;
    if (!rc && !(di_cache_get(c, &j->new_key, &p, &n) && n == 3)) rc = 5;   /* from memory */
    if (!rc && (di_cache_get_stats(c).write_failures || !di_cache_disk_dir(c))) rc = 6;
    free(p);
    di_cache_close(c);
    return rc;
}

Test(cache, a_read_only_trusted_dir_serves_hits)
{
    user victim = test_user("detinfer-test"), other = test_user("detinfer-test2");
    world(victim, other);
    char root[1024], log[1024];
    snprintf(root, sizeof root, "%s/%s/kernels", tmpdir, victim.name);
    snprintf(log, sizeof log, "%s/stderr.txt", tmpdir);
    ro_job j = {.dir = root, .old_key = kernel_key("ro old", ""), .new_key = kernel_key("ro new", "")};
    j.bad_key = key_beside(&j.old_key, "ro bad");
    put_job a = {.dir = root, .key = j.old_key, .expect_disk = 1};
    cr_assert_eq(as_user(victim, 022, NULL, put_one, &a), 0);
    const char *old = entry_file(root, &j.old_key), *bad = entry_file(root, &j.bad_key);
    write_entry(old, &j.old_key, "old", 3, 0600);
    write_entry(bad, &j.bad_key, "bad", 3, 0600);
    truncate(bad, 40);
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "chown -R %u:%u %s && chmod -R a-w %s", (unsigned)victim.uid, (unsigned)victim.gid, root, root);
    cr_assert_eq(system(cmd), 0);
    cr_assert_eq(as_user(victim, 022, log, read_only_hits, &j), 0, "%s", read_text_file(log));
    expect_one_warning(log, root, "read-only");
    cr_assert(exists(bad), "a read-only cache removed an entry");
    cr_assert(!exists(entry_file(root, &j.new_key)));
    snprintf(cmd, sizeof cmd, "chmod -R u+w %s", root);
    cr_assert_eq(system(cmd), 0);
}

/* ---- interrupted writers: stale temps, kill -9, a full disk ------------------------------- */

static void make_temp(const char *path, time_t age)
{
    FILE *f = fopen(path, "w");
    cr_assert(f, "%s", path);
    fputs("partial", f);
    fclose(f);
    struct timespec t[2] = {{.tv_sec = time(NULL) - age}, {.tv_sec = time(NULL) - age}};
    cr_assert_eq(utimensat(AT_FDCWD, path, t, 0), 0);
}

Test(cache, stale_temp_files_are_removed_on_the_next_write)
{
    di_key k = kernel_key("stale", ""), beside = key_beside(&k, "stale beside");
    di_cache *c = di_cache_open(tmpdir);
    di_cache_put(c, &k, "x", 1);
    di_cache_close(c);
    char stale[1200], fresh[1200], root_stale[1024];
    snprintf(stale, sizeof stale, "%s.tmp.123.dead", entry_file(tmpdir, &k));
    snprintf(fresh, sizeof fresh, "%s.tmp.124.live", entry_file(tmpdir, &k));
    snprintf(root_stale, sizeof root_stale, "%s/.probe.tmp.125.dead", tmpdir);
    make_temp(stale, 3600);
    make_temp(fresh, 5);       /* a writer may still be busy with it */
    make_temp(root_stale, 3600);
    c = di_cache_open(tmpdir);
    cr_assert(!exists(root_stale), "the root's stale probe file was not removed");
    cr_assert(exists(stale), "removed before any write to its directory");
    di_cache_put(c, &beside, "y", 1);
    di_cache_close(c);
    cr_assert(!exists(stale), "a stale temp file survived the next write to its directory");
    cr_assert(exists(fresh), "a fresh temp file was removed");
}

enum { KILL_BYTES = 1 << 20, KILL_KEYS = 16 };

Test(cache, a_writer_killed_mid_put_leaves_no_corrupt_entry, .timeout = 120)
{
    uint8_t *payload = make_payload(KILL_BYTES, 11);
    for (int round = 0; round < 5; round++) {
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            di_cache *c = di_cache_open(tmpdir);
            for (int i = 0;; i++) {
                char src[32];
                snprintf(src, sizeof src, "killed %d", i % KILL_KEYS);
                di_key k = kernel_key(src, "");
                di_cache_put(c, &k, payload, KILL_BYTES);
            }
        }
        usleep(20000 + 37000 * round);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    di_cache *c = di_cache_open(tmpdir);
    int hits = 0;
    for (int i = 0; i < KILL_KEYS; i++) {
        char src[32];
        snprintf(src, sizeof src, "killed %d", i);
        di_key k = kernel_key(src, "");
        void *p = NULL;
        size_t n = 0;
        if (di_cache_get(c, &k, &p, &n)) {
            cr_assert(n == KILL_BYTES && !memcmp(p, payload, n), "entry %d is not the payload", i);
            hits++;
        }
        free(p);
    }
    cr_assert_eq(di_cache_get_stats(c).corrupt, 0, "a killed writer left a corrupt entry");
    cr_assert_gt(hits, 0, "no writer finished an entry");
    di_cache_close(c);
    free(payload);
}

static int put_past_the_limit(void *arg)
{
    (void)arg;
    struct rlimit lim = {1000, 1000};
    signal(SIGXFSZ, SIG_IGN);   /* the write then fails with EFBIG, as on a full disk */
    if (setrlimit(RLIMIT_FSIZE, &lim)) return 1;
    di_cache *c = di_cache_open(tmpdir);
    if (!di_cache_disk_dir(c)) return 2;
    uint8_t *payload = make_payload(4096, 12);
    di_key k1 = kernel_key("full 1", ""), k2 = kernel_key("full 2", "");
    di_cache_put(c, &k1, payload, 4096);
    di_cache_put(c, &k2, payload, 4096);
    void *p = NULL;
    size_t n = 0;
    int rc = di_cache_disk_dir(c) ? 3 : di_cache_get_stats(c).write_failures != 1 ? 4
           : !di_cache_get(c, &k2, &p, &n) || n != 4096 ? 5 : 0;
    free(p);
    free(payload);
    di_cache_close(c);
    return rc;
}

Test(cache, a_full_disk_falls_back_to_memory_with_one_warning)
{
    char log[1024];
    snprintf(log, sizeof log, "%s/stderr.txt", tmpdir);
    pid_t pid = fork();   /* the file size limit stays in the child */
    cr_assert(pid >= 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 2);
        _exit(put_past_the_limit(NULL));
    }
    int st = 0;
    waitpid(pid, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d: %s", st, read_text_file(log));
    expect_one_warning(log, tmpdir, "File too large");
    cr_assert_eq(count_named(tmpdir, ".tmp"), 0, "a temp file was left behind");
    cr_assert_eq(count_named(tmpdir, ".bin"), 0, "a partial entry was renamed into place");
}
