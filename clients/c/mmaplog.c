/* mmaplog: crashlab's C example client (docs/workload-protocol.md, "A C
 * program"). A log of fixed-size records in a file mapped MAP_SHARED;
 * each record is made durable with msync(MS_SYNC) and only then acked.
 *
 *   mmaplog workload [--nosync]   the program (--nosync: the negative
 *                                 control, acks without msync)
 *   mmaplog check                 the checker
 *
 * Build (dynamic is fine; crashlab packs the loader and libraries):
 *   gcc -O2 -Wall -I clients/c -o mmaplog clients/c/mmaplog.c
 */
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "crashlab.h"

#define RECORD_BYTES 1024 /* two sectors: a record can tear */
#define PAYLOAD_BYTES (RECORD_BYTES - 24)
#define PAGE_BYTES 4096
#define MAGIC 0x676f6c70616d6d63ULL /* "cmmaplog" */
#define FILE_NAME "mmaplog.dat"

struct record {
    uint64_t magic, id, digest; /* digest: FNV-1a 64 of the payload */
    unsigned char payload[PAYLOAD_BYTES];
};

/* The payload of item `id`: a function of the trial's seed, so a trial replays. */
static void fill(struct record *r, uint64_t seed, uint64_t id) {
    uint64_t x = seed * 0x9e3779b97f4a7c15ULL + id + 1;
    for (size_t i = 0; i < PAYLOAD_BYTES; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        r->payload[i] = (unsigned char)x;
    }
}

static uint64_t fnv(const void *p, size_t len) {
    char hex[17];
    crashlab_digest(p, len, hex);
    return strtoull(hex, NULL, 16);
}

static int workload(int nosync) {
    uint64_t items = crashlab_items(), seed = crashlab_seed();
    size_t size = ((items * RECORD_BYTES + PAGE_BYTES - 1) / PAGE_BYTES) * PAGE_BYTES;
    int fd = open(FILE_NAME, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) crashlab_err("open", errno);
    if (ftruncate(fd, (off_t)size) != 0) crashlab_err("ftruncate", errno);
    if (fsync(fd) != 0) crashlab_err("fsync", errno);
    int dir = open(".", O_RDONLY | O_DIRECTORY);
    if (dir < 0 || fsync(dir) != 0) crashlab_err("fsync-dir", errno);
    unsigned char *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) crashlab_err("mmap", errno);
    crashlab_note("mmaplog: %" PRIu64 " records of %d bytes, msync %s", items, RECORD_BYTES,
                  nosync ? "off (control)" : "MS_SYNC");
    crashlab_ready();
    for (uint64_t id = 0; id < items; id++) {
        struct record r = {.magic = MAGIC, .id = id};
        fill(&r, seed, id);
        r.digest = fnv(r.payload, PAYLOAD_BYTES);
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, r.digest);
        crashlab_begin(id, hex);
        size_t at = id * RECORD_BYTES, page = at - at % PAGE_BYTES;
        memcpy(map + at, &r, RECORD_BYTES);
        if (!nosync && msync(map + page, at + RECORD_BYTES - page, MS_SYNC) != 0) crashlab_err("msync", errno);
        crashlab_ack(id);
        crashlab_point("committed"); /* --crash-at committed:N crashes after the N-th */
    }
    crashlab_done();
    return 0;
}

/* Every whole record is an item; a torn one (its digest does not match
 * its payload) is not there: the record before it was written. */
static int check(void) {
    int fd = open(FILE_NAME, O_RDONLY);
    if (fd < 0 && errno == ENOENT) { crashlab_end(0); return 0; } /* before READY */
    if (fd < 0) return 1;
    struct record r;
    uint64_t found = 0;
    for (uint64_t slot = 0; pread(fd, &r, RECORD_BYTES, (off_t)(slot * RECORD_BYTES)) == RECORD_BYTES; slot++) {
        if (r.magic != MAGIC || r.id != slot || fnv(r.payload, PAYLOAD_BYTES) != r.digest) continue;
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, r.digest);
        crashlab_item(r.id, hex);
        found++;
    }
    crashlab_end(found);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "workload") == 0)
        return workload(argc >= 3 && strcmp(argv[2], "--nosync") == 0);
    if (argc >= 2 && strcmp(argv[1], "check") == 0) return check();
    fprintf(stderr, "usage: mmaplog workload [--nosync] | check\n");
    return 2;
}
