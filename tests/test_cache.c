/* SHA-256 against the FIPS 180-4 example digests; cache keys and their field framing; the
 * memory and disk cache: hits, misses, corrupt and truncated entries, the environment
 * switches, an unwritable directory, and two processes racing on one key. */
#define _GNU_SOURCE  /* nftw */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "runtime/cache.h"

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
    cr_assert_eq(file_size(file), 48 + (long)n, "entry %s: header + payload expected", file);
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
    cr_assert_eq(file_size(file), 48 + (long)n, "%s (%ld): not rebuilt", what, arg);

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
    /* magic, version, length, checksum, first, middle and last payload byte */
    const long offsets[] = {0, 4, 8, 16, 47, 48, 48 + 2000, 48 + (long)n - 1};
    for (size_t i = 0; i < sizeof offsets / sizeof offsets[0]; i++) {
        char what[32];
        snprintf(what, sizeof what, "flip at %ld", offsets[i]);
        damage_and_rebuild(what, flip_byte, offsets[i], n);
    }
}

Test(cache, truncated_or_extended_entry_is_detected_removed_and_rebuilt)
{
    const size_t n = 4096;
    const long sizes[] = {0, 3, 20, 47, 48, 48 + 100, 48 + (long)n - 1};
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
    cr_assert_eq(file_size(entry_file(tmpdir, &k)), 48 + RACE_BYTES);
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
