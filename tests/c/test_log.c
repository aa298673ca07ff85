/* test_log.c — the log core without Python: the shared state's writer lock, seqlock
 * commit, tail notification (csrc/fq_log.c), and a small log built from the same pieces
 * the Cython layer uses (fq_os file mapping, fq_batch, fq_index, fq_log_commit).
 *
 *  - lock: two threads increment a plain counter under fq_log_lock; the total is exact
 *    only if the lock's acquire/release order the increments;
 *  - seqlock: a writer thread commits snapshots whose fields all derive from one number;
 *    readers must never see fields from two different commits, nor go backwards;
 *  - wait: a tailing reader sleeps in fq_log_wait until the writer's commit wakes it;
 *  - a log: batches appended into a mapped, preallocated file at the committed end,
 *    indexed and committed, then read back (validate, decode, index lookup) through a
 *    second, read-only mapping, and the clean-state checksum follows the commit group.
 */
#define _GNU_SOURCE
#include "fqtest.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fq_batch.h"
#include "fq_index.h"
#include "fq_log.h"
#include "fq_os.h"
#include "fq_status.h"

#ifndef FQ_LOG_COMMITS
#define FQ_LOG_COMMITS 20000
#endif

static fq_log_state *new_state(void) {
    void *mem;
    if (fq_map_anon(FQ_STATE_SIZE, &mem) != 0) return NULL;
    memcpy(mem, "FQSTATE1", 8);
    return mem;
}

/* ---- lock ---------------------------------------------------------------------------- */
typedef struct {
    fq_log_state *st;
    uint64_t me;
    int iters;
    uint64_t *counter;   /* plain memory, protected by the lock only */
    int bad;
} lock_arg;

static void *locker_main(void *p) {
    lock_arg *a = p;
    for (int i = 0; i < a->iters; i++) {
        int rc = fq_log_lock(a->st, a->me, 60000000000LL);
        if (rc != 0) {   /* 1 would be a steal from a live owner: the pid is ours */
            a->bad = rc;
            return NULL;
        }
        uint64_t v = *a->counter;
        if (i % 64 == 0) fq_yield();   /* sometimes hold it while the other one waits */
        *a->counter = v + 1;
        fq_log_unlock(a->st, a->me);
    }
    return NULL;
}

static void check_lock(void) {
    fq_log_state *st = new_state();
    REQUIRE(st != NULL, "state mapping");
    static uint64_t counter;
    counter = 0;
    lock_arg a[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        lock_arg x = {st, fq_log_lock_word((uint32_t)(i + 1) * 2), FQ_LOG_COMMITS, &counter, 0};
        a[i] = x;
        pthread_create(&t[i], NULL, locker_main, &a[i]);
    }
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    CHECK(a[0].bad == 0 && a[1].bad == 0, "fq_log_lock returned %d / %d", a[0].bad, a[1].bad);
    CHECK(counter == 2ull * FQ_LOG_COMMITS, "counter %" PRIu64 " after 2 x %d locked increments",
          counter, FQ_LOG_COMMITS);
    CHECK(st->lock == 0, "lock word %" PRIx64 " left behind", st->lock);
    uint64_t me = fq_log_lock_word(77);
    CHECK(fq_log_trylock(st, me) == 1 && fq_log_trylock(st, fq_log_lock_word(79)) == 0,
          "trylock: free lock not taken, or held lock taken twice");
    fq_log_unlock(st, fq_log_lock_word(79));   /* not the owner: no effect */
    CHECK(st->lock == me, "unlock by a non-owner released the lock");
    fq_log_unlock(st, me);
    fq_unmap(st, FQ_STATE_SIZE);
}

/* ---- seqlock + notify ---------------------------------------------------------------- */
static void snapshot_of(int64_t k, fq_log_snapshot *s) {
    s->next_offset = k;
    s->end_pos = k * 3;
    s->active_base = k * 5;
    s->max_timestamp = k * 7;
    s->index_count = (uint32_t)k * 11u;
    s->timeindex_count = (uint32_t)k * 13u;
    s->bytes_since_index = k * 17;
    s->written_end = k * 19;
    s->generation = (uint64_t)k * 23u;
}

static int consistent(const fq_log_snapshot *s) {
    fq_log_snapshot want;
    snapshot_of(s->next_offset, &want);
    return memcmp(s, &want, sizeof want) == 0;
}

typedef struct {
    fq_log_state *st;
    int64_t commits;
} writer_arg;

static void *writer_main(void *p) {
    writer_arg *w = p;
    uint64_t me = fq_log_lock_word(5);
    for (int64_t k = 1; k <= w->commits; k++) {
        fq_log_snapshot s;
        snapshot_of(k, &s);
        if (fq_log_lock(w->st, me, 60000000000LL) != 0) return NULL;
        fq_log_commit(w->st, &s);
        fq_log_notify(w->st);
        fq_log_unlock(w->st, me);
    }
    return NULL;
}

typedef struct {
    fq_log_state *st;
    int64_t until;
    int64_t reads, woken;
    int ok;
} tail_arg;

/* A tailing reader: waits (futex, no spinning) for each next offset, then snapshots. */
static void *tail_main(void *p) {
    tail_arg *t = p;
    int64_t have = 0;
    while (have < t->until) {
        if (fq_log_wait(t->st, have, 60000000000LL, 0, NULL, 0) != 1) return NULL;
        fq_log_snapshot s;
        if (fq_log_snapshot_read(t->st, &s, 1000000000LL) != 0) return NULL;
        t->reads++;
        if (!consistent(&s) || s.next_offset <= have) return NULL;
        have = s.next_offset;
    }
    t->ok = 1;
    return NULL;
}

static void check_seqlock_and_wait(void) {
    fq_log_state *st = new_state();
    REQUIRE(st != NULL, "state mapping");
    writer_arg w = {st, FQ_LOG_COMMITS};
    tail_arg t = {st, FQ_LOG_COMMITS, 0, 0, 0};
    pthread_t tw, tt;
    pthread_create(&tt, NULL, tail_main, &t);
    pthread_create(&tw, NULL, writer_main, &w);
    int64_t last = 0, torn = 0, back = 0, reads = 0;
    for (;;) {   /* this thread reads as fast as it can while the writer commits */
        fq_log_snapshot s;
        if (!CHECK(fq_log_snapshot_read(st, &s, 1000000000LL) == 0, "snapshot_read timed out"))
            break;
        reads++;
        torn += !consistent(&s);
        back += s.next_offset < last;
        last = s.next_offset;
        if (last >= FQ_LOG_COMMITS) break;
    }
    pthread_join(tw, NULL);
    pthread_join(tt, NULL);
    CHECK(torn == 0 && back == 0,
          "%" PRId64 " of %" PRId64 " snapshots mixed two commits, %" PRId64 " went backwards",
          torn, reads, back);
    CHECK(t.ok, "the tailing reader stopped after %" PRId64 " reads (wait timed out, a torn "
          "snapshot or no progress)", t.reads);
    CHECK(st->seq == 2ull * FQ_LOG_COMMITS, "seq %" PRIu64 " after %d commits", st->seq,
          FQ_LOG_COMMITS);
    /* a writer that died mid-commit leaves seq odd: readers time out, repair closes it */
    __atomic_store_n(&st->seq, st->seq + 1, __ATOMIC_RELEASE);
    fq_log_snapshot s;
    CHECK(fq_log_snapshot_read(st, &s, 1000000) == FQ_ETIMEDOUT, "odd seqlock not waited out");
    fq_log_repair(st);
    CHECK(fq_log_snapshot_read(st, &s, 0) == 0 && consistent(&s), "repair did not close it");
    fq_unmap(st, FQ_STATE_SIZE);
}

/* ---- a small log in a file ------------------------------------------------------------- */
enum { SEG_SIZE = 1 << 20, BATCHES = 50, PER_BATCH = 9, INDEX_SLOTS = 1024 };

static void value_of(int64_t offset, uint8_t *buf, int32_t *len) {
    *len = (int32_t)(offset % 97);
    for (int32_t i = 0; i < *len; i++) buf[i] = (uint8_t)(offset * 13 + i);
}

static void check_small_log(void) {
    char dir[] = "/tmp/fq-ctest-XXXXXX", path[64];
    REQUIRE(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/00000000000000000000.log", dir);
    int fd = fq_open(path, O_RDWR | O_CREAT | O_EXCL, 0644);
    REQUIRE(fd >= 0, "open %s: %d", path, fd);
    void *wmem = NULL, *rmem = NULL;
    int rc = fq_preallocate(fd, SEG_SIZE);
    if (rc == 0) rc = fq_map(fd, SEG_SIZE, 1, &wmem);
    if (rc == 0) rc = fq_map(fd, SEG_SIZE, 0, &rmem);
    fq_log_state *st = new_state();
    uint8_t *idx = calloc(INDEX_SLOTS, FQ_INDEX_ENTRY);
    if (!CHECK(rc == 0 && st && idx, "segment setup: %d", rc)) goto out;

    /* append: encode at end_pos, index each batch, commit (the writer's protocol) */
    uint8_t *seg = wmem;
    uint64_t me = fq_log_lock_word(9);
    uint8_t values[PER_BATCH][128];
    for (int b = 0; b < BATCHES; b++) {
        fq_log_snapshot s;
        fq_log_snapshot_read(st, &s, 0);
        fq_record_in recs[PER_BATCH];
        memset(recs, 0, sizeof recs);
        for (int i = 0; i < PER_BATCH; i++) {
            value_of(s.next_offset + i, values[i], &recs[i].value_len);
            recs[i].value = values[i];
            recs[i].key_len = -1;
            recs[i].timestamp = 1000 + s.next_offset + i;
        }
        REQUIRE(fq_log_lock(st, me, 0) == 0, "lock");
        int64_t n = fq_batch_encode(seg + s.end_pos, (size_t)(SEG_SIZE - s.end_pos), s.next_offset,
                                    0, recs, PER_BATCH);
        if (!CHECK(n > 0, "encode batch %d: %" PRId64, b, n)) break;
        fq_index_put(idx, s.index_count, (uint32_t)(s.next_offset - s.active_base),
                     (uint32_t)s.end_pos);
        s.index_count++;
        s.end_pos += n;
        s.written_end = s.end_pos;
        s.next_offset += PER_BATCH;
        s.max_timestamp = recs[PER_BATCH - 1].timestamp;
        fq_log_commit(st, &s);
        fq_log_notify(st);
        fq_log_unlock(st, me);
    }
    CHECK(fq_msync(wmem, SEG_SIZE) == 0 && fq_datasync(fd) == 0, "msync/fdatasync");

    /* read back through the read-only mapping: scan every batch up to the committed end */
    fq_log_snapshot s;
    fq_log_snapshot_read(st, &s, 0);
    CHECK(s.next_offset == BATCHES * PER_BATCH && s.index_count == BATCHES,
          "committed end %" PRId64 ", %u index entries", s.next_offset, s.index_count);
    const uint8_t *rd = rmem;
    int64_t pos = 0, offset = 0;
    while (pos < s.end_pos) {
        fq_batch_info info;
        rc = fq_batch_validate(rd + pos, (size_t)(s.end_pos - pos), SEG_SIZE, 1, &info);
        if (!CHECK(rc == 0 && info.base_offset == offset && fq_batch_check_records(rd + pos, &info) == 0,
                   "batch at %" PRId64 ": rc %d base %" PRId64 " (expected %" PRId64 ")", pos, rc,
                   info.base_offset, offset))
            break;
        const uint8_t *p = rd + pos + FQ_BATCH_HEADER_SIZE;
        for (int i = 0; i < info.record_count; i++, offset++) {
            fq_record_view v;
            int k = fq_record_decode(p, (size_t)(rd + pos + info.total_size - p), &v);
            uint8_t want[128];
            int32_t wlen;
            value_of(offset, want, &wlen);
            CHECK(k > 0 && v.value_len == wlen && memcmp(v.value, want, (size_t)wlen) == 0 &&
                      info.base_timestamp + v.timestamp_delta == 1000 + offset,
                  "offset %" PRId64 ": decode %d, value length %d (expected %d)", offset, k,
                  v.value_len, wlen);
            p += k > 0 ? k : 0;
        }
        pos += info.total_size;
    }
    CHECK(pos == s.end_pos && offset == s.next_offset,
          "scan stopped at byte %" PRId64 " offset %" PRId64, pos, offset);
    /* the index finds the batch holding any offset */
    for (int64_t o = 0; o < s.next_offset; o += 7) {
        int64_t slot = fq_index_floor(idx, s.index_count, (uint32_t)o);
        uint32_t rel, bpos;
        fq_index_get(idx, slot, &rel, &bpos);
        fq_batch_info info;
        rc = fq_batch_validate(rd + bpos, (size_t)(s.end_pos - bpos), SEG_SIZE, 1, &info);
        CHECK(rc == 0 && info.base_offset <= o && o <= info.base_offset + info.last_offset_delta,
              "offset %" PRId64 ": index slot %" PRId64 " -> batch %" PRId64 "..%" PRId64, o, slot,
              info.base_offset, info.base_offset + info.last_offset_delta);
    }
    /* the clean-state checksum covers the commit group */
    uint32_t crc = fq_log_state_crc(st);
    st->next_offset ^= 1;
    CHECK(fq_log_state_crc(st) != crc, "clean_crc did not change with next_offset");
    st->next_offset ^= 1;
    CHECK(fq_log_state_crc(st) == crc, "clean_crc is not a function of the state");
out:
    free(idx);
    if (st) fq_unmap(st, FQ_STATE_SIZE);
    if (rmem) fq_unmap(rmem, SEG_SIZE);
    if (wmem) fq_unmap(wmem, SEG_SIZE);
    close(fd);
    unlink(path);
    rmdir(dir);
}

void suite_log(void) {
    check_lock();
    check_seqlock_and_wait();
    check_small_log();
}
