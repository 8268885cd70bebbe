/* crashlab.h: the workload protocol (docs/workload-protocol.md, version
 * 1.1) for programs written in C. One header, no library: include it in
 * the program and in its checker.
 *
 * The program:   crashlab_ready(); then per item crashlab_begin(id, digest),
 *                make it durable, crashlab_ack(id); at the end crashlab_done().
 *                A failed call: crashlab_err("msync", errno) (exits 1).
 * The checker:   crashlab_item(id, digest) per item found,
 *                crashlab_corrupt("...") per damage seen, crashlab_end(count).
 * Both:          crashlab_note("...") for anything worth keeping in the log.
 * Crash points:  crashlab_point("name") where `--crash-at name[:n]` may crash it.
 *
 * Every line is written with one write(2) of at most 4096 bytes, so that
 * several processes of a program may share stdout. After READY, each BEGIN
 * and each ACK the program waits for the relay's reply byte (lockstep:
 * an item's BEGIN reaches the host before any of its bytes reach the disk,
 * and a crash point stops the program right after its ACK).
 */
#ifndef CRASHLAB_H
#define CRASHLAB_H

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CRASHLAB_LINE_MAX_BYTES 4096

/* The environment crashlab gives the program (0 / "." when absent, as in
 * a run by hand). */
static inline uint64_t crashlab_env_u64(const char *name) {
    const char *v = getenv(name);
    return v ? strtoull(v, NULL, 10) : 0;
}
static inline uint64_t crashlab_seed(void) { return crashlab_env_u64("CRASHLAB_SEED"); }
static inline uint64_t crashlab_items(void) { return crashlab_env_u64("CRASHLAB_ITEMS"); }
static inline const char *crashlab_data_dir(void) {
    const char *v = getenv("CRASHLAB_DATA_DIR");
    return v ? v : ".";
}

/* One protocol line, written whole; a line that does not fit is a bug in
 * the caller, reported and fatal. */
static inline void crashlab_line(const char *fmt, ...) {
    char line[CRASHLAB_LINE_MAX_BYTES];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line - 1) {
        fprintf(stderr, "crashlab.h: a protocol line longer than %d bytes\n", CRASHLAB_LINE_MAX_BYTES);
        exit(2);
    }
    line[n++] = '\n';
    for (int off = 0; off < n;) {
        ssize_t w = write(1, line + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) exit(2); /* the relay is gone: nothing left to report to */
        off += (int)w;
    }
}

/* Waits for the relay's reply byte (CRASHLAB_REPLY_FD); returns at once
 * when there is none (a run by hand). */
static inline void crashlab_wait_reply(void) {
    const char *v = getenv("CRASHLAB_REPLY_FD");
    if (!v) return;
    int fd = atoi(v);
    char byte;
    while (read(fd, &byte, 1) < 0 && errno == EINTR) {}
}

static inline void crashlab_ready(void) { crashlab_line("READY"); crashlab_wait_reply(); }
static inline void crashlab_begin(uint64_t id, const char *digest) {
    crashlab_line("BEGIN %" PRIu64 " %s", id, digest);
    crashlab_wait_reply();
}
/* An item that replaces the earlier items of `key` (an overwritten key). */
static inline void crashlab_begin_keyed(uint64_t id, const char *digest, uint64_t key) {
    crashlab_line("BEGIN %" PRIu64 " %s %" PRIu64, id, digest, key);
    crashlab_wait_reply();
}
/* Only after the call that promises item `id` durable returned success. */
static inline void crashlab_ack(uint64_t id) { crashlab_line("ACK %" PRIu64, id); crashlab_wait_reply(); }
static inline void crashlab_done(void) { crashlab_line("DONE"); }
/* (protocol 1.2) A moment the program names, where `crashlab run
 * --crash-at NAME[:N]` crashes it the N-th time: 1 to 64 of A-Z a-z 0-9 _ . - */
static inline void crashlab_point(const char *name) {
    crashlab_line("POINT %s", name);
    crashlab_wait_reply();
}
static inline void crashlab_err(const char *op, int err) {
    crashlab_line("ERR %s %d", op, err);
    exit(1);
}
#define crashlab_note(...) crashlab_note_impl(__VA_ARGS__)
static inline void crashlab_note_impl(const char *fmt, ...) {
    char text[CRASHLAB_LINE_MAX_BYTES - 16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    for (char *c = text; *c; c++)
        if (*c == '\n') *c = ' ';
    crashlab_line("NOTE %s", text);
}

/* The checker's lines. */
static inline void crashlab_item(uint64_t id, const char *digest) {
    crashlab_line("ITEM %" PRIu64 " %s", id, digest);
}
static inline void crashlab_corrupt(const char *what) { crashlab_line("CORRUPT %s", what); }
static inline void crashlab_end(uint64_t items) { crashlab_line("END %" PRIu64, items); }

/* A digest: FNV-1a 64 of `len` bytes, as 16 lowercase hex digits in
 * `out` (17 bytes with the NUL). Any fingerprint the checker can
 * recompute will do; this one needs no library. */
static inline void crashlab_digest(const void *data, size_t len, char out[17]) {
    uint64_t h = 0xcbf29ce484222325ULL;
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    snprintf(out, 17, "%016" PRIx64, h);
}

#endif /* CRASHLAB_H */
