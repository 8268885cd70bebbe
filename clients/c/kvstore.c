/* kvstore: RocksDB and LevelDB under crashlab, as users have them
 * (Debian's librocksdb-dev and libleveldb-dev: shared libraries). One
 * source, two builds; their C APIs differ only in the prefix.
 *
 *   gcc -O2 -I clients/c -DKV_ROCKSDB -o kv-rocksdb clients/c/kvstore.c -lrocksdb
 *   gcc -O2 -I clients/c -DKV_LEVELDB -o kv-leveldb clients/c/kvstore.c -lleveldb
 *
 *   kv-* workload [--nosync]   the program: each item is a write batch of
 *                              KEYS_PER_ITEM seeded values and a marker
 *                              holding their digest, committed with
 *                              WriteOptions.sync = true, acked after Write
 *                              returned OK. --nosync (sync = false) is the
 *                              negative control: power loss loses acked
 *                              batches.
 *   kv-* check                 the checker: opens the recovered store with
 *                              the library itself (its own recovery is under
 *                              test) and reports every item whose batch is
 *                              whole; a marker without its values is a
 *                              batch applied in part (CORRUPT).
 *
 * RocksDB runs with allow_mmap_writes and allow_mmap_reads: its files are
 * written through shared mappings and synced with msync.
 */
#include <fcntl.h>
#include <sys/stat.h>

#include "crashlab.h"

#if defined(KV_ROCKSDB)
#include <rocksdb/c.h>
#define KV(name) rocksdb_##name
#define KV_NAME "rocksdb"
typedef rocksdb_t kv_db;
#elif defined(KV_LEVELDB)
#include <leveldb/c.h>
#define KV(name) leveldb_##name
#define KV_NAME "leveldb"
typedef leveldb_t kv_db;
#else
#error "build with -DKV_ROCKSDB or -DKV_LEVELDB"
#endif

#define DB_DIR "kv"
#define KEYS_PER_ITEM 4
#define VALUE_BYTES 200

static void value_of(uint64_t seed, uint64_t id, int j, char out[VALUE_BYTES]) {
    uint64_t x = seed * 0x9e3779b97f4a7c15ULL + id * 8 + (uint64_t)j + 1;
    for (int i = 0; i < VALUE_BYTES; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        out[i] = (char)('a' + x % 26);
    }
}

/* The digest of an item: FNV-1a over its values in key order. */
static void digest_of(char values[KEYS_PER_ITEM][VALUE_BYTES], char hex[17]) {
    crashlab_digest(values, (size_t)KEYS_PER_ITEM * VALUE_BYTES, hex);
}

static void fsync_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0 || fsync(fd) != 0) crashlab_err("fsync-dir", errno);
    close(fd);
}

static kv_db *open_db(int create) {
    KV(options_t) *options = KV(options_create)();
    KV(options_set_create_if_missing)(options, (unsigned char)create);
    KV(options_set_paranoid_checks)(options, 1);
#if defined(KV_ROCKSDB)
    KV(options_set_allow_mmap_writes)(options, 1);
    KV(options_set_allow_mmap_reads)(options, 1);
    /* RocksDB preallocates each new WAL and table file at about 1.1 x the
     * write buffer (64 MiB by default): more than a test disk of 64 MiB
     * holds, so that opening the store after a crash fails with ENOSPC.
     * A 4 MiB buffer fits. */
    KV(options_set_write_buffer_size)(options, 4 << 20);
    KV(options_set_target_file_size_base)(options, 4 << 20);
#endif
    char *error = NULL;
    kv_db *db = KV(open)(options, DB_DIR, &error);
    KV(options_destroy)(options);
    if (error) {
        /* Said in the results (NOTE) and on the console. */
        crashlab_note("kvstore: %s open: %s", KV_NAME, error);
        fprintf(stderr, "kvstore: %s open: %s\n", KV_NAME, error);
        return NULL;
    }
    return db;
}

static int workload(int nosync) {
    uint64_t items = crashlab_items(), seed = crashlab_seed();
    kv_db *db = open_db(1);
    if (!db) crashlab_err("open", EIO);
    KV(writeoptions_t) *synced = KV(writeoptions_create)();
    KV(writeoptions_set_sync)(synced, 1);
    KV(writeoptions_t) *per_item = KV(writeoptions_create)();
    KV(writeoptions_set_sync)(per_item, (unsigned char)!nosync);
    /* The store exists and is durable before READY: a synced write, and
     * the directories that name its files. */
    char *error = NULL;
    KV(put)(db, synced, "ready", 5, "1", 1, &error);
    if (error) crashlab_err("put-ready", EIO);
    fsync_dir(DB_DIR);
    fsync_dir(".");
    crashlab_note("kvstore: %s, %" PRIu64 " items of %d keys, sync %s%s", KV_NAME, items, KEYS_PER_ITEM,
                  nosync ? "false (control)" : "true",
#if defined(KV_ROCKSDB)
                  ", allow_mmap_writes, allow_mmap_reads"
#else
                  ""
#endif
    );
    crashlab_ready();
    for (uint64_t id = 0; id < items; id++) {
        char values[KEYS_PER_ITEM][VALUE_BYTES], key[48], hex[17];
        KV(writebatch_t) *batch = KV(writebatch_create)();
        for (int j = 0; j < KEYS_PER_ITEM; j++) {
            value_of(seed, id, j, values[j]);
            int n = snprintf(key, sizeof key, "v:%016" PRIx64 ":%d", id, j);
            KV(writebatch_put)(batch, key, (size_t)n, values[j], VALUE_BYTES);
        }
        digest_of(values, hex);
        int n = snprintf(key, sizeof key, "m:%016" PRIx64, id);
        KV(writebatch_put)(batch, key, (size_t)n, hex, 16);
        crashlab_begin(id, hex);
        KV(write)(db, per_item, batch, &error);
        KV(writebatch_destroy)(batch);
        if (error) crashlab_err("write", EIO);
        crashlab_ack(id);
    }
    crashlab_done();
    KV(close)(db);
    return 0;
}

/* The value of `key`, or NULL when it is not there (freed by the caller). */
static char *get(kv_db *db, KV(readoptions_t) *ro, const char *key, size_t *len) {
    char *error = NULL;
    char *v = KV(get)(db, ro, key, strlen(key), len, &error);
    if (error) {
        fprintf(stderr, "kvstore: get %s: %s\n", key, error);
        exit(1);
    }
    return v;
}

static int check(void) {
    struct stat st;
    char current[64];
    snprintf(current, sizeof current, "%s/CURRENT", DB_DIR);
    if (stat(current, &st) != 0) { /* no store yet: a state before READY */
        crashlab_note("kvstore: no %s (a state before the store was made)", current);
        crashlab_end(0);
        return 0;
    }
    kv_db *db = open_db(0);
    if (!db) return 1;
    KV(readoptions_t) *ro = KV(readoptions_create)();
    KV(readoptions_set_verify_checksums)(ro, 1);
    KV(iterator_t) *it = KV(create_iterator)(db, ro);
    uint64_t found = 0;
    for (KV(iter_seek)(it, "m:", 2); KV(iter_valid)(it); KV(iter_next)(it)) {
        size_t klen, vlen;
        const char *k = KV(iter_key)(it, &klen);
        const char *v = KV(iter_value)(it, &vlen);
        if (klen < 2 || memcmp(k, "m:", 2) != 0) break;
        char idhex[17] = {0}, marker[17] = {0}, what[160];
        memcpy(idhex, k + 2, klen - 2 < 16 ? klen - 2 : 16);
        memcpy(marker, v, vlen < 16 ? vlen : 16);
        uint64_t id = strtoull(idhex, NULL, 16);
        char values[KEYS_PER_ITEM][VALUE_BYTES], key[48], hex[17];
        int whole = 1;
        for (int j = 0; j < KEYS_PER_ITEM && whole; j++) {
            snprintf(key, sizeof key, "v:%016" PRIx64 ":%d", id, j);
            size_t len = 0;
            char *value = get(db, ro, key, &len);
            whole = value && len == VALUE_BYTES;
            if (whole) memcpy(values[j], value, VALUE_BYTES);
            KV(free)(value);
        }
        if (!whole) {
            snprintf(what, sizeof what, "item %" PRIu64 ": its marker without all its values (a batch applied in part)", id);
            crashlab_corrupt(what);
            continue;
        }
        digest_of(values, hex);
        if (strcmp(hex, marker) != 0) {
            snprintf(what, sizeof what, "item %" PRIu64 ": marker %s, values give %s", id, marker, hex);
            crashlab_corrupt(what);
            continue;
        }
        crashlab_item(id, hex);
        found++;
    }
    char *error = NULL;
    KV(iter_get_error)(it, &error);
    if (error) {
        fprintf(stderr, "kvstore: iterating: %s\n", error);
        return 1;
    }
    KV(iter_destroy)(it);
    KV(close)(db);
    crashlab_end(found);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "workload") == 0)
        return workload(argc >= 3 && strcmp(argv[2], "--nosync") == 0);
    if (argc >= 2 && strcmp(argv[1], "check") == 0) return check();
    fprintf(stderr, "usage: kv-%s workload [--nosync] | check\n", KV_NAME);
    return 2;
}
