/* test_queue.c — the queue state core (csrc/fq_queue.c) without Python.
 *
 *  - layout/init/attach: geometry rules, the exact size and section offsets of a state
 *    file, attach's refusal of a wrong magic/version and of a mapping too small for its
 *    header's geometry;
 *  - the window of a priority lane: deliveries in offset order, FQ_EFULL exactly when
 *    speo - spso == window, spso moving only over a prefix of settled slots, leases named
 *    by (offset, deliveries, owner) going stale (FQ_ESTALE) after an ack or a takeover;
 *  - nacks (AVAILABLE not before a time, lowest due one first), extend, expire by time and
 *    by a dead owner, settle_any;
 *  - the delayed lane and the delay heap (order by (due, ref)), the dedup table (expiry,
 *    the rebuild at 3/4 use, FQ_EFULL only when every entry is alive);
 *  - fq_q_repair recounting corrupted counters from the slots and rebuilding the heap;
 *  - the pid-word lock: taken over from a dead (zombie or reaped) holder, a timeout against
 *    a live one, and mutual exclusion of two threads of one process (same pid: the CAS on
 *    the word excludes them all the same, and a holder with our own pid is never "dead",
 *    so no takeover between threads) and of two processes on one MAP_SHARED mapping;
 *  - a seeded random walk of acquire/settle/nack/extend/expire/settle_any against a small
 *    reference model, comparing every slot, counter and spso/speo after each step.
 */
#define _GNU_SOURCE
#include "fqtest.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fq_os.h"
#include "fq_queue.h"
#include "fq_status.h"

#ifndef FQ_QUEUE_LOCKS
#define FQ_QUEUE_LOCKS 20000   /* locked increments per thread */
#endif
#ifndef FQ_QUEUE_STEPS
#define FQ_QUEUE_STEPS 20000   /* steps of the model walk */
#endif

#define LANE(p, prio) ((uint32_t)(p) * FQ_Q_LANES + (uint32_t)(prio))
#define DLANE(p) ((uint32_t)(p) * FQ_Q_LANES + FQ_Q_DELAYED)
#define FAR 1000000000000LL

/* A fresh, attached queue state in an anonymous MAP_SHARED mapping. */
static int new_q(fq_q *q, uint32_t parts, uint32_t window, uint32_t dwindow, uint32_t sessions,
                 uint32_t dedup, void **mem, uint64_t *size) {
    int64_t n = fq_q_layout(parts, window, dwindow, sessions, dedup);
    if (n < 0) return (int)n;
    *size = (uint64_t)n;
    if (fq_map_anon((size_t)n, mem) != 0) return -1;
    int rc = fq_q_init(*mem, parts, window, dwindow, sessions, dedup);
    if (rc != 0) return rc;
    return fq_q_attach(q, *mem, *size);
}

static int slot_is(fq_q *q, uint32_t lane, int64_t off, int state, uint32_t deliveries,
                   int owner, int64_t deadline) {
    fq_q_slot s;
    if (fq_q_slot_get(q, lane, off, &s) != 0) return 0;
    return s.state == state && s.deliveries == deliveries &&
           (owner < 0 || s.owner == (uint16_t)owner) && s.deadline_ms == deadline;
}

/* ---- layout, init, attach ------------------------------------------------------------ */
static void check_layout(void) {
    /* 4096 header + 11*64 lanes + 1*32 sessions + (10*16+16)*16 slots + 16*16 heap
     * + 16*32 dedup = 8416, rounded up to 4096: 12288 */
    CHECK(fq_q_layout(1, 16, 16, 1, 16) == 12288, "smallest layout %" PRId64,
          fq_q_layout(1, 16, 16, 1, 16));
    /* 4096 + 22*64 + 3*32 + 2*(10*32+64)*16 + 2*64*16 + 128*32 = 24512 -> 24576 */
    CHECK(fq_q_layout(2, 32, 64, 3, 128) == 24576, "layout %" PRId64, fq_q_layout(2, 32, 64, 3, 128));
    static const uint32_t bad[][5] = {
        {1, 24, 16, 1, 16}, {1, 8, 16, 1, 16}, {1, 0, 16, 1, 16}, {1, 1u << 25, 16, 1, 16},
        {1, 16, 24, 1, 16}, {1, 16, 8, 1, 16}, {1, 16, 0, 1, 16},
        {0, 16, 16, 1, 16}, {FQ_Q_MAX_PARTITIONS + 1, 16, 16, 1, 16},
        {1, 16, 16, 0, 16}, {1, 16, 16, FQ_Q_MAX_SESSIONS + 1, 16},
        {1, 16, 16, 1, 8}, {1, 16, 16, 1, 48},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const uint32_t *g = bad[i];
        CHECK(fq_q_layout(g[0], g[1], g[2], g[3], g[4]) == FQ_EINVAL,
              "layout(%u, %u, %u, %u, %u) accepted", g[0], g[1], g[2], g[3], g[4]);
    }
    CHECK(fq_q_layout(FQ_Q_MAX_PARTITIONS, 16, 16, FQ_Q_MAX_SESSIONS, 16) > 0, "largest counts refused");

    /* init + attach on a calloc'd buffer */
    uint64_t size = 24576;
    uint8_t *buf = calloc(1, size);
    REQUIRE(buf != NULL, "calloc");
    CHECK(fq_q_init(buf, 2, 24, 64, 3, 128) == FQ_EINVAL && buf[0] == 0,
          "init with a bad window wrote a header");
    REQUIRE(fq_q_init(buf, 2, 32, 64, 3, 128) == 0, "init");
    fq_q q;
    REQUIRE(fq_q_attach(&q, buf, size) == 0, "attach");
    fq_q_hdr *h = q.hdr;
    CHECK(memcmp(h->magic, FQ_Q_MAGIC, 8) == 0 && h->version == FQ_Q_VERSION && h->partitions == 2 &&
              h->window == 32 && h->delay_window == 64 && h->max_sessions == 3 &&
              h->dedup_capacity == 128 && h->size == size && h->lock == 0 && h->flags == 0 &&
              h->heap_len == 0 && h->dedup_used == 0,
          "header fields");
    CHECK((uint8_t *)&h->lock - buf == 64 && (uint8_t *)&h->heap_len - buf == 192 &&
              (uint8_t *)&h->intent - buf == 256 && (uint8_t *)&h->intent.dst_end - buf == 280,
          "header lines");
    CHECK((uint8_t *)q.lanes - buf == 4096, "lanes at %td", (uint8_t *)q.lanes - buf);
    CHECK((uint8_t *)q.sessions - buf == 4096 + 22 * 64, "sessions at %td", (uint8_t *)q.sessions - buf);
    CHECK((uint8_t *)q.slots - buf == 4096 + 22 * 64 + 3 * 32, "slots at %td", (uint8_t *)q.slots - buf);
    CHECK((uint8_t *)q.heap - buf == 4096 + 22 * 64 + 3 * 32 + 2 * 384 * 16, "heap at %td",
          (uint8_t *)q.heap - buf);
    CHECK((uint8_t *)q.dedup - buf == 4096 + 22 * 64 + 3 * 32 + 2 * 384 * 16 + 128 * 16,
          "dedup at %td", (uint8_t *)q.dedup - buf);
    CHECK((uint8_t *)(q.dedup + 128) <= buf + size, "dedup runs past the file");
    CHECK(q.me == (uint32_t)getpid(), "me %u", q.me);
    int lanes_ok = 1;
    for (uint32_t i = 0; i < 22; i++)
        lanes_ok &= q.lanes[i].spso == 0 && q.lanes[i].speo == 0 && q.lanes[i].next_expiry_ms == INT64_MAX;
    CHECK(lanes_ok, "a fresh lane is not spso = speo = 0, next_expiry = INT64_MAX");

    fq_q q2;
    CHECK(fq_q_attach(&q2, buf, size + 4096) == 0, "a larger mapping refused");
    CHECK(fq_q_attach(&q2, buf, size - 4096) == FQ_ECORRUPT, "a mapping smaller than the layout: %d",
          fq_q_attach(&q2, buf, size - 4096));
    CHECK(fq_q_attach(&q2, buf, 4095) == FQ_EMAGIC, "a mapping smaller than the header");
    h->size = size + 4096;
    CHECK(fq_q_attach(&q2, buf, size + 8192) == FQ_ECORRUPT, "header size unlike its geometry");
    h->size = size;
    h->window = 48;
    CHECK(fq_q_attach(&q2, buf, size) == FQ_ECORRUPT, "a non power of two window in the header");
    h->window = 32;
    h->version = 2;
    CHECK(fq_q_attach(&q2, buf, size) == FQ_EMAGIC, "version 2 accepted");
    h->version = FQ_Q_VERSION;
    h->magic[7] = '2';
    CHECK(fq_q_attach(&q2, buf, size) == FQ_EMAGIC, "wrong magic accepted");
    memset(buf, 0, size);
    CHECK(fq_q_attach(&q2, buf, size) == FQ_EMAGIC, "zeroed mapping accepted");
    free(buf);

    /* and on a MAP_SHARED mapping, as the file is */
    void *mem;
    REQUIRE(new_q(&q, 1, 16, 16, 1, 16, &mem, &size) == 0 && size == 12288, "mmap'd state");
    fq_unmap(mem, size);
}

/* ---- the window of a priority lane ------------------------------------------------- */
static void check_window(void) {
    fq_q q;
    void *mem;
    uint64_t size;
    REQUIRE(new_q(&q, 2, 16, 16, 4, 16, &mem, &size) == 0, "setup");
    uint32_t lane = LANE(1, 3), d = 99;
    fq_q_lane *l = &q.lanes[lane];

    CHECK(fq_q_acquire(&q, lane, 0, 1, 100, 50, &d) == FQ_EEMPTY, "empty lane");
    CHECK(fq_q_acquire(&q, DLANE(1), 5, 1, 100, 50, &d) == FQ_EINVAL, "acquire from a delayed lane");
    CHECK(fq_q_acquire(&q, 22, 5, 1, 100, 50, &d) == FQ_EINVAL, "acquire from lane 22 of 22");
    for (int64_t i = 0; i < 16; i++) {
        d = 99;
        int64_t o = fq_q_acquire(&q, lane, 40, (uint32_t)(i % 2), 100 + i, 50, &d);
        if (!CHECK(o == i && d == 1 && l->speo == i + 1 && l->acquired == i + 1 && l->spso == 0,
                   "acquire #%" PRId64 ": offset %" PRId64 " deliveries %u speo %" PRId64, i, o, d, l->speo))
            break;
    }
    CHECK(slot_is(&q, lane, 3, FQ_Q_ACQUIRED, 1, 1, 153), "slot 3");
    CHECK(l->next_expiry_ms == 150, "next_expiry %" PRId64, l->next_expiry_ms);
    CHECK(q.sessions[0].inflight == 8 && q.sessions[1].inflight == 8, "inflight %" PRId64 "/%" PRId64,
          q.sessions[0].inflight, q.sessions[1].inflight);
    fq_q_slot s;
    CHECK(fq_q_slot_get(&q, lane, 16, &s) == FQ_EINVAL, "slot at speo");
    /* speo - spso == 16 == window: full, but only while new records remain */
    CHECK(fq_q_acquire(&q, lane, 40, 0, 200, 50, &d) == FQ_EFULL, "full window");
    CHECK(fq_q_acquire(&q, lane, 16, 0, 200, 50, &d) == FQ_EEMPTY, "full window, log at speo");
    CHECK(q.lanes[LANE(1, 2)].speo == 0 && q.lanes[LANE(0, 3)].speo == 0, "other lanes moved");

    /* acks out of order: spso waits for the lowest */
    CHECK(fq_q_settle(&q, lane, 2, 1, 0, FQ_Q_ACKED, 0) == 0, "ack 2");
    CHECK(fq_q_settle(&q, lane, 1, 1, 1, FQ_Q_ACKED, 0) == 0, "ack 1");
    CHECK(l->spso == 0 && l->acquired == 14, "spso %" PRId64 " after acking 2, 1", l->spso);
    CHECK(fq_q_acquire(&q, lane, 40, 0, 200, 50, &d) == FQ_EFULL, "still full");
    CHECK(fq_q_settle(&q, lane, 0, 1, 0, FQ_Q_ACKED, 0) == 0, "ack 0");
    CHECK(l->spso == 3 && l->settled == 3 && l->dead == 0 && l->acquired == 13, "spso %" PRId64 " settled %" PRId64,
          l->spso, l->settled);
    CHECK(q.sessions[0].inflight == 6 && q.sessions[1].inflight == 7, "inflight after acks");
    CHECK(fq_q_slot_get(&q, lane, 2, &s) == FQ_EINVAL, "slot below spso");
    for (int64_t want = 16; want < 19; want++) {
        int64_t o = fq_q_acquire(&q, lane, 40, 2, 300, 50, &d);
        CHECK(o == want && d == 1, "after acks: offset %" PRId64 " want %" PRId64, o, want);
    }
    CHECK(l->speo == 19 && fq_q_acquire(&q, lane, 40, 2, 300, 50, &d) == FQ_EFULL,
          "full again at speo 19 spso 3");
    CHECK(slot_is(&q, lane, 16, FQ_Q_ACQUIRED, 1, 2, 350), "slot 16 reuses ring slot 0");

    /* stale leases */
    CHECK(fq_q_settle(&q, lane, 4, 2, 0, FQ_Q_ACKED, 0) == FQ_ESTALE, "wrong deliveries");
    CHECK(fq_q_settle(&q, lane, 4, 1, 1, FQ_Q_ACKED, 0) == FQ_ESTALE, "wrong owner");
    CHECK(fq_q_settle(&q, lane, 0, 1, 0, FQ_Q_ACKED, 0) == FQ_ESTALE, "ack below spso");
    CHECK(fq_q_settle(&q, lane, 19, 1, 0, FQ_Q_ACKED, 0) == FQ_ESTALE, "ack at speo");
    CHECK(fq_q_settle(&q, 22, 4, 1, 0, FQ_Q_ACKED, 0) == FQ_ESTALE, "ack on lane 22 of 22");
    CHECK(fq_q_settle(&q, lane, 4, 1, 0, FQ_Q_WAITING, 0) == FQ_EINVAL, "settle to WAITING");
    CHECK(fq_q_settle(&q, lane, 4, 1, 0, FQ_Q_ACQUIRED, 0) == FQ_EINVAL, "settle to ACQUIRED");
    CHECK(fq_q_settle(&q, lane, 6, 1, 0, FQ_Q_ACKED, 0) == 0, "ack 6");
    CHECK(fq_q_settle(&q, lane, 6, 1, 0, FQ_Q_ACKED, 0) == FQ_ESTALE, "double ack");
    CHECK(fq_q_settle(&q, lane, 6, 1, 0, FQ_Q_AVAILABLE, 0) == FQ_ESTALE, "nack after ack");
    CHECK(fq_q_settle(&q, lane, 4, 1, 0, FQ_Q_ARCHIVED, 0) == 0, "archive 4");
    CHECK(l->spso == 3 && l->settled == 5 && l->dead == 1 && l->acquired == 14,
          "after ack 6 / archive 4: spso %" PRId64 " settled %" PRId64 " dead %" PRId64 " acquired %" PRId64,
          l->spso, l->settled, l->dead, l->acquired);
    CHECK(fq_q_settle(&q, lane, 3, 1, 1, FQ_Q_ACKED, 0) == 0 && l->spso == 5, "spso over 3, 4: %" PRId64, l->spso);
    CHECK(fq_q_settle(&q, lane, 5, 1, 1, FQ_Q_ACKED, 0) == 0 && l->spso == 7, "spso over 5, 6: %" PRId64, l->spso);
    fq_unmap(mem, size);
}

/* ---- nack: AVAILABLE again, not before a time, lowest first ------------------------ */
static void check_nack(void) {
    fq_q q;
    void *mem;
    uint64_t size;
    REQUIRE(new_q(&q, 1, 16, 16, 4, 16, &mem, &size) == 0, "setup");
    uint32_t lane = 1, d;
    fq_q_lane *l = &q.lanes[lane];
    for (int i = 0; i < 3; i++) fq_q_acquire(&q, lane, 3, 1, 1000, 30000, &d);
    CHECK(fq_q_settle(&q, lane, 1, 1, 1, FQ_Q_AVAILABLE, 5000) == 0, "nack 1");
    CHECK(fq_q_settle(&q, lane, 0, 1, 1, FQ_Q_AVAILABLE, 6000) == 0, "nack 0");
    CHECK(l->available == 2 && l->acquired == 1 && l->spso == 0 && q.sessions[1].inflight == 1,
          "after nacks: available %" PRId64 " acquired %" PRId64, l->available, l->acquired);
    CHECK(slot_is(&q, lane, 1, FQ_Q_AVAILABLE, 1, -1, 5000), "slot 1 after nack");
    CHECK(fq_q_settle(&q, lane, 1, 1, 1, FQ_Q_ACKED, 0) == FQ_ESTALE, "ack of a nacked lease");
    CHECK(fq_q_acquire(&q, lane, 3, 2, 2000, 100, &d) == FQ_EEMPTY, "nothing due at 2000");
    CHECK(fq_q_acquire(&q, lane, 4, 2, 4999, 100, &d) == 3 && d == 1, "a new record while none is due");
    CHECK(fq_q_acquire(&q, lane, 4, 2, 4999, 100, &d) == FQ_EEMPTY, "nothing due at 4999");
    CHECK(fq_q_acquire(&q, lane, 4, 2, 5000, 100, &d) == 1 && d == 2, "offset 1 due at 5000 (d %u)", d);
    CHECK(slot_is(&q, lane, 1, FQ_Q_ACQUIRED, 2, 2, 5100), "slot 1 redelivered");
    CHECK(fq_q_acquire(&q, lane, 4, 2, 5999, 100, &d) == FQ_EEMPTY, "offset 0 not due at 5999");
    CHECK(fq_q_acquire(&q, lane, 4, 3, 6000, 100, &d) == 0 && d == 2, "offset 0 due at 6000");
    CHECK(l->available == 0 && l->acquired == 4, "counts after redeliveries");
    CHECK(fq_q_settle(&q, lane, 0, 1, 1, FQ_Q_ACKED, 0) == FQ_ESTALE, "first holder of 0 acks");
    CHECK(fq_q_settle(&q, lane, 0, 2, 3, FQ_Q_ACKED, 0) == 0 && l->spso == 1, "second holder acks 0");

    /* several due: the lowest first, whatever the nack order; a later one due while the
     * lowest is not */
    CHECK(fq_q_settle(&q, lane, 3, 1, 2, FQ_Q_AVAILABLE, 0) == 0, "nack 3");
    CHECK(fq_q_settle(&q, lane, 2, 1, 1, FQ_Q_AVAILABLE, 0) == 0, "nack 2");
    CHECK(fq_q_settle(&q, lane, 1, 2, 2, FQ_Q_AVAILABLE, 9000) == 0, "nack 1 till 9000");
    CHECK(fq_q_acquire(&q, lane, 4, 0, 7000, 100, &d) == 2 && d == 2, "lowest due is 2");
    CHECK(fq_q_acquire(&q, lane, 4, 0, 7000, 100, &d) == 3 && d == 2, "then 3");
    CHECK(fq_q_acquire(&q, lane, 4, 0, 7000, 100, &d) == FQ_EEMPTY, "then nothing until 9000");
    CHECK(fq_q_acquire(&q, lane, 4, 0, 9000, 100, &d) == 1 && d == 3, "1 at 9000, third delivery");
    fq_unmap(mem, size);
}

/* ---- leases: extend, expire, dead owners ------------------------------------------- */
static void check_leases(void) {
    fq_q q;
    void *mem;
    uint64_t size;
    REQUIRE(new_q(&q, 1, 16, 16, 4, 16, &mem, &size) == 0, "setup");
    uint32_t lane = 0, d;
    fq_q_lane *l = &q.lanes[lane];
    for (int i = 0; i < 4; i++) fq_q_acquire(&q, lane, 10, (uint32_t)(1 + i % 2), 0, 1000, &d);
    CHECK(l->next_expiry_ms == 1000, "next expiry %" PRId64, l->next_expiry_ms);
    CHECK(fq_q_extend(&q, lane, 0, 1, 1, 5000) == 0 && slot_is(&q, lane, 0, FQ_Q_ACQUIRED, 1, 1, 5000),
          "extend 0");
    CHECK(fq_q_extend(&q, lane, 0, 2, 1, 6000) == FQ_ESTALE, "extend, wrong deliveries");
    CHECK(fq_q_extend(&q, lane, 0, 1, 2, 6000) == FQ_ESTALE, "extend, wrong owner");
    CHECK(fq_q_extend(&q, lane, 4, 1, 1, 6000) == FQ_ESTALE, "extend at speo");
    CHECK(fq_q_expire(&q, lane, 999, FQ_Q_NO_OWNER) == 0 && l->acquired == 4, "expire at 999");
    CHECK(fq_q_expire(&q, lane, 1000, FQ_Q_NO_OWNER) == 3, "expire at 1000");
    CHECK(l->available == 3 && l->acquired == 1 && l->next_expiry_ms == 5000,
          "after expire: available %" PRId64 " acquired %" PRId64 " next %" PRId64, l->available,
          l->acquired, l->next_expiry_ms);
    CHECK(slot_is(&q, lane, 0, FQ_Q_ACQUIRED, 1, 1, 5000) && slot_is(&q, lane, 1, FQ_Q_AVAILABLE, 1, -1, 0),
          "slots after expire");
    CHECK(q.sessions[1].inflight == 1 && q.sessions[2].inflight == 0, "inflight after expire");
    CHECK(fq_q_expire(&q, FQ_Q_DELAYED, 1000, FQ_Q_NO_OWNER) == FQ_EINVAL, "expire a delayed lane");
    CHECK(fq_q_expire(&q, 11, 1000, FQ_Q_NO_OWNER) == FQ_EINVAL, "expire lane 11 of 11");
    /* the lease goes stale for its first holder once taken again */
    CHECK(fq_q_acquire(&q, lane, 10, 3, 1001, 1000, &d) == 1 && d == 2, "reacquire 1");
    CHECK(fq_q_settle(&q, lane, 1, 1, 2, FQ_Q_ACKED, 0) == FQ_ESTALE, "first holder's ack");
    CHECK(fq_q_extend(&q, lane, 1, 1, 2, 9000) == FQ_ESTALE, "first holder's extend");
    CHECK(fq_q_settle(&q, lane, 1, 2, 2, FQ_Q_ACKED, 0) == FQ_ESTALE, "first holder, new count");
    CHECK(fq_q_settle(&q, lane, 1, 2, 3, FQ_Q_ACKED, 0) == 0, "second holder's ack");
    /* a shorter extend lowers next_expiry: expire must not skip it */
    CHECK(fq_q_extend(&q, lane, 0, 1, 1, 1500) == 0 && l->next_expiry_ms <= 1500, "extend shorter: next %" PRId64,
          l->next_expiry_ms);
    CHECK(fq_q_expire(&q, lane, 1600, FQ_Q_NO_OWNER) == 1 && l->acquired == 0 && l->available == 3,
          "the shortened lease expires at 1600");
    CHECK(fq_q_expire(&q, lane, FAR, FQ_Q_NO_OWNER) == 0, "nothing acquired, nothing expires");

    /* a dead owner: only its leases, whatever the time */
    uint32_t lane2 = 2;
    fq_q_lane *l2 = &q.lanes[lane2];
    for (int i = 0; i < 6; i++) fq_q_acquire(&q, lane2, 10, (uint32_t)(i % 2), 0, FAR, &d);
    int64_t before0 = q.sessions[0].inflight;
    CHECK(fq_q_expire(&q, lane2, 0, 1) == 3, "expire owner 1");
    CHECK(l2->acquired == 3 && l2->available == 3 && q.sessions[1].inflight == 0 &&
              q.sessions[0].inflight == before0,
          "after owner 1 died: acquired %" PRId64 " available %" PRId64, l2->acquired, l2->available);
    int ok = 1;
    for (int64_t o = 0; o < 6; o++)
        ok &= o % 2 ? slot_is(&q, lane2, o, FQ_Q_AVAILABLE, 1, -1, 0) : slot_is(&q, lane2, o, FQ_Q_ACQUIRED, 1, 0, FAR);
    CHECK(ok, "owner 0's leases kept, owner 1's freed");
    CHECK(fq_q_expire(&q, lane2, 0, 1) == 0, "owner 1 again: nothing");
    CHECK(fq_q_acquire(&q, lane2, 10, 2, 5, 10, &d) == 1 && d == 2, "lowest freed offset first");

    /* settle_any: AVAILABLE (and WAITING) only */
    CHECK(fq_q_settle_any(&q, lane2, 0, FQ_Q_ACKED) == 0, "settle_any on ACQUIRED");
    CHECK(slot_is(&q, lane2, 0, FQ_Q_ACQUIRED, 1, 0, FAR), "ACQUIRED slot kept");
    CHECK(fq_q_settle_any(&q, lane2, 3, FQ_Q_ARCHIVED) == 1, "settle_any on AVAILABLE");
    CHECK(slot_is(&q, lane2, 3, FQ_Q_ARCHIVED, 1, -1, 0) && l2->available == 1 && l2->settled == 1,
          "after settle_any: available %" PRId64, l2->available);
    CHECK(fq_q_settle_any(&q, lane2, 3, FQ_Q_ARCHIVED) == 0, "settle_any twice");
    CHECK(fq_q_settle_any(&q, lane2, 6, FQ_Q_ACKED) == 0, "settle_any at speo");
    CHECK(fq_q_settle_any(&q, lane2, 5, FQ_Q_AVAILABLE) == FQ_EINVAL, "settle_any to AVAILABLE");
    CHECK(fq_q_settle(&q, lane2, 0, 1, 0, FQ_Q_ACKED, 0) == 0 && fq_q_settle(&q, lane2, 1, 2, 2, FQ_Q_ACKED, 0) == 0 &&
              fq_q_settle(&q, lane2, 2, 1, 0, FQ_Q_ACKED, 0) == 0 && l2->spso == 4,
          "spso over a settle_any'd slot: %" PRId64, l2->spso);
    CHECK(fq_q_settle_any(&q, lane2, 5, FQ_Q_ACKED) == 1 && l2->spso == 4, "settle_any 5 above spso");
    CHECK(fq_q_settle(&q, lane2, 4, 1, 0, FQ_Q_ACKED, 0) == 0 && l2->spso == 6 && l2->available == 0 &&
              l2->acquired == 0,
          "spso %" PRId64, l2->spso);
    fq_unmap(mem, size);
}

/* ---- the delayed lane and the heap -------------------------------------------------- */
typedef struct { int64_t due; uint64_t ref; int live; } tracked;

static void check_delayed(void) {
    fq_q q;
    void *mem;
    uint64_t size;
    REQUIRE(new_q(&q, 2, 16, 16, 1, 16, &mem, &size) == 0, "setup");
    fqt_rng rng = fqt_rng_new(fqt_seed ^ 0xDE1A7);
    CHECK(fq_q_delay_track(&q, LANE(0, 0), 0, 5) == FQ_EINVAL, "track on a priority lane");
    CHECK(fq_q_delay_track(&q, DLANE(0), 1, 5) == FQ_EINVAL, "track offset 1 at speo 0");
    CHECK(fq_q_delay_track(&q, DLANE(2), 0, 5) == FQ_EINVAL, "track on lane 32 of 22");
    int64_t due = 0; uint64_t ref = 0;
    CHECK(fq_q_heap_peek(&q, &due, &ref) == FQ_EEMPTY && fq_q_heap_pop(&q) == FQ_EEMPTY, "empty heap");

    for (int round = 0; round < 3; round++) {
        tracked t[32];
        int n = 0;
        for (uint32_t p = 0; p < 2; p++) {
            uint32_t lane = DLANE(p);
            int64_t base = q.lanes[lane].speo;
            for (int64_t i = 0; i < 16; i++) {
                int64_t du = 1000 + (int64_t)fqt_below(&rng, 8);   /* many equal dues: ties on ref */
                int rc = fq_q_delay_track(&q, lane, base + i, du);
                if (!CHECK(rc == 0, "round %d: track %u/%" PRId64 ": %d", round, lane, base + i, rc)) break;
                tracked x = {du, ((uint64_t)lane << 48) | (uint64_t)(base + i), 1};
                t[n++] = x;
            }
            fq_q_lane *l = &q.lanes[lane];
            CHECK(l->speo == base + 16 && l->spso == base && l->available == 16,
                  "lane %u: speo %" PRId64 " available %" PRId64, lane, l->speo, l->available);
            CHECK(slot_is(&q, lane, base + 5, FQ_Q_WAITING, 0, FQ_Q_NO_OWNER, t[n - 11].due), "a WAITING slot");
            CHECK(fq_q_delay_track(&q, lane, base + 16, 1) == FQ_EFULL, "delay window full");
        }
        CHECK(q.hdr->heap_len == 32, "heap_len %" PRIu64, q.hdr->heap_len);
        /* pop in (due, ref) order; each peek is the least of those left */
        for (int k = 0; k < 32; k++) {
            int best = -1;
            for (int i = 0; i < n; i++)
                if (t[i].live && (best < 0 || t[i].due < t[best].due || (t[i].due == t[best].due && t[i].ref < t[best].ref)))
                    best = i;
            int rc = fq_q_heap_peek(&q, &due, &ref);
            if (!CHECK(rc == 0 && due == t[best].due && ref == t[best].ref,
                       "round %d pop %d: peek (%" PRId64 ", %" PRIx64 ") want (%" PRId64 ", %" PRIx64 ")",
                       round, k, due, ref, t[best].due, t[best].ref))
                break;
            CHECK(fq_q_heap_pop(&q) == 0 && q.hdr->heap_len == (uint64_t)(31 - k), "pop");
            t[best].live = 0;
            uint32_t lane = (uint32_t)(ref >> 48);
            int64_t off = (int64_t)(ref & 0xFFFFFFFFFFFFull);
            fq_q_lane *l = &q.lanes[lane];
            /* spso: the lowest offset of this lane still live */
            int64_t want = l->speo;
            for (int i = 0; i < n; i++)
                if (t[i].live && (uint32_t)(t[i].ref >> 48) == lane && (int64_t)(t[i].ref & 0xFFFFFFFFFFFFull) < want)
                    want = (int64_t)(t[i].ref & 0xFFFFFFFFFFFFull);
            CHECK(l->spso == want, "spso %" PRId64 " want %" PRId64, l->spso, want);
            fq_q_slot s;
            CHECK(off < l->spso || (fq_q_slot_get(&q, lane, off, &s) == 0 && s.state == FQ_Q_ARCHIVED),
                  "popped slot not ARCHIVED");
        }
        CHECK(fq_q_heap_peek(&q, &due, &ref) == FQ_EEMPTY && q.lanes[DLANE(0)].available == 0 &&
                  q.lanes[DLANE(1)].available == 0,
              "round %d: heap and lanes empty at the end", round);
    }
    fq_unmap(mem, size);
}

/* A purge (settle_any on WAITING) leaves the heap entry behind (popped later as a no-op):
 * those entries must not make delay_track report a full window that is empty. */
static void check_delay_purge(void) {
    fq_q q;
    void *mem;
    uint64_t size;
    REQUIRE(new_q(&q, 1, 16, 16, 1, 16, &mem, &size) == 0, "setup");
    uint32_t lane = DLANE(0);
    for (int64_t i = 0; i < 16; i++) fq_q_delay_track(&q, lane, i, FAR - i);
    for (int64_t i = 0; i < 16; i++)
        CHECK(fq_q_settle_any(&q, lane, i, FQ_Q_ARCHIVED) == 1, "purge %" PRId64, i);
    CHECK(q.lanes[lane].spso == 16 && q.lanes[lane].available == 0, "purged lane spso %" PRId64,
          q.lanes[lane].spso);
    int rc = fq_q_delay_track(&q, lane, 16, 500);
    CHECK(rc == 0, "track into an empty delay window after a purge: %d", rc);
    int64_t due = 0; uint64_t ref = 0;
    rc = fq_q_heap_peek(&q, &due, &ref);
    CHECK(rc == 0 && due == 500 && ref == (((uint64_t)lane << 48) | 16),
          "the live entry is the earliest: (%" PRId64 ", %" PRIx64 ")", due, ref);
    for (int64_t i = 17; i < 32; i++) CHECK(fq_q_delay_track(&q, lane, i, 600) == 0, "track %" PRId64, i);
    CHECK(fq_q_delay_track(&q, lane, 32, 600) == FQ_EFULL, "16 live: full");
    CHECK(q.hdr->heap_len == 16, "heap_len %" PRIu64 ": the purged entries dropped", q.hdr->heap_len);
    for (int64_t i = 16; i < 32; i++) {
        rc = fq_q_heap_peek(&q, &due, &ref);
        if (!CHECK(rc == 0 && due == (i == 16 ? 500 : 600) && ref == (((uint64_t)lane << 48) | (uint64_t)i),
                   "pop %" PRId64 ": (%" PRId64 ", %" PRIx64 ")", i, due, ref))
            break;
        fq_q_heap_pop(&q);
    }
    CHECK(q.lanes[lane].spso == 32 && q.hdr->heap_len == 0, "spso %" PRId64, q.lanes[lane].spso);
    fq_unmap(mem, size);
}

/* ---- dedup -------------------------------------------------------------------------- */
static void check_dedup(void) {
    fq_q q;
    void *mem;
    uint64_t size, id;
    REQUIRE(new_q(&q, 1, 16, 16, 1, 64, &mem, &size) == 0, "setup");
    CHECK(fq_q_dedup_get(&q, 5, 7, 0, &id) == 0, "empty table");
    CHECK(fq_q_dedup_put(&q, 5, 7, 1000, 42, 0) == 0, "put");
    id = 0;
    CHECK(fq_q_dedup_get(&q, 5, 7, 999, &id) == 1 && id == 42, "get alive: id %" PRIu64, id);
    CHECK(fq_q_dedup_get(&q, 5, 7, 1000, &id) == 0, "get at expiry");
    CHECK(fq_q_dedup_get(&q, 5, 8, 0, &id) == 0 && fq_q_dedup_get(&q, 69, 7, 0, &id) == 0, "other keys");
    /* same home slot (h1 & 63 == 5): linear probing */
    CHECK(fq_q_dedup_put(&q, 69, 7, 1000, 43, 0) == 0 && fq_q_dedup_put(&q, 133, 7, 1000, 44, 0) == 0, "colliding puts");
    CHECK(fq_q_dedup_get(&q, 69, 7, 0, &id) == 1 && id == 43 && fq_q_dedup_get(&q, 133, 7, 0, &id) == 1 && id == 44,
          "colliding gets");
    CHECK(fq_q_dedup_put(&q, 0, 9, 1000, 45, 0) == 0 && fq_q_dedup_get(&q, 0, 9, 0, &id) == 1 && id == 45,
          "h1 == 0 stored as 1");
    CHECK(q.hdr->dedup_used == 4, "used %" PRIu64, q.hdr->dedup_used);
    /* an expired entry is reused in place; the same key overwrites */
    CHECK(fq_q_dedup_put(&q, 5, 7, 3000, 46, 2000) == 0 && fq_q_dedup_get(&q, 5, 7, 2000, &id) == 1 && id == 46,
          "re-put after expiry");
    CHECK(fq_q_dedup_put(&q, 197, 1, 3000, 47, 2000) == 0 && q.hdr->dedup_used == 4,
          "a dead entry reused: used %" PRIu64, q.hdr->dedup_used);
    CHECK(fq_q_dedup_get(&q, 197, 1, 2000, &id) == 1 && id == 47 && fq_q_dedup_get(&q, 5, 7, 2000, &id) == 1 && id == 46,
          "after reuse");
    fq_unmap(mem, size);

    /* rebuild at 3/4: 40 entries that die at 100, 8 that live: 48 of 64 used */
    REQUIRE(new_q(&q, 1, 16, 16, 1, 64, &mem, &size) == 0, "setup");
    for (uint64_t k = 0; k < 48; k++) {
        uint64_t h1 = 0x1000 + k * 37;
        CHECK(fq_q_dedup_put(&q, h1, ~h1, k < 40 ? 100 : FAR, 500 + k, 0) == 0, "put %" PRIu64, k);
    }
    CHECK(q.hdr->dedup_used == 48, "used %" PRIu64, q.hdr->dedup_used);
    CHECK(fq_q_dedup_put(&q, 0x9999, 1, FAR, 999, 200) == 0, "put that rebuilds");
    CHECK(q.hdr->dedup_used == 9, "after the rebuild used %" PRIu64 " (8 alive + 1)", q.hdr->dedup_used);
    uint64_t nonzero = 0;
    for (uint32_t i = 0; i < 64; i++) nonzero += q.dedup[i].h1 != 0;
    CHECK(nonzero == 9, "%" PRIu64 " entries in the table", nonzero);
    int ok = 1;
    for (uint64_t k = 0; k < 48; k++) {
        uint64_t h1 = 0x1000 + k * 37;
        id = 0;
        int got = fq_q_dedup_get(&q, h1, ~h1, 200, &id);
        ok &= k < 40 ? got == 0 : (got == 1 && id == 500 + k);
    }
    CHECK(ok && fq_q_dedup_get(&q, 0x9999, 1, 200, &id) == 1 && id == 999, "live entries survive the rebuild");
    fq_unmap(mem, size);

    /* every entry alive: FQ_EFULL */
    REQUIRE(new_q(&q, 1, 16, 16, 1, 16, &mem, &size) == 0, "setup");
    for (uint64_t k = 0; k < 16; k++)
        CHECK(fq_q_dedup_put(&q, 3 + k * 16, k, 1000 + (int64_t)k, k, 0) == 0, "put %" PRIu64 " of 16", k);
    CHECK(q.hdr->dedup_used == 16, "used %" PRIu64, q.hdr->dedup_used);
    CHECK(fq_q_dedup_put(&q, 77, 77, 5000, 77, 0) == FQ_EFULL, "17th live entry");
    ok = 1;
    for (uint64_t k = 0; k < 16; k++) ok &= fq_q_dedup_get(&q, 3 + k * 16, k, 0, &id) == 1 && id == k;
    CHECK(ok, "all 16 still there after FQ_EFULL");
    CHECK(fq_q_dedup_get(&q, 77, 77, 0, &id) == 0, "the refused key absent");
    CHECK(fq_q_dedup_put(&q, 3 + 5 * 16, 5, 9000, 55, 0) == 0 && fq_q_dedup_get(&q, 3 + 5 * 16, 5, 8000, &id) == 1 &&
              id == 55,
          "a full table still updates an existing key");
    CHECK(fq_q_dedup_put(&q, 77, 77, 5000, 77, 1000) == 0 && fq_q_dedup_get(&q, 77, 77, 1000, &id) == 1 && id == 77,
          "once one entry died there is room");
    CHECK(fq_q_dedup_get(&q, 3, 0, 1000, &id) == 0 && fq_q_dedup_get(&q, 3 + 16, 1, 1000, &id) == 1 && id == 1,
          "the dead one gone, the next kept");
    fq_unmap(mem, size);
}

/* ---- repair ------------------------------------------------------------------------- */
static void check_repair(void) {
    fq_q q;
    void *mem;
    uint64_t size;
    REQUIRE(new_q(&q, 2, 16, 16, 4, 16, &mem, &size) == 0, "setup");
    fqt_rng rng = fqt_rng_new(fqt_seed ^ 0x8E9A18);
    uint32_t d, lane = LANE(1, 4);
    for (int i = 0; i < 12; i++) fq_q_acquire(&q, lane, 20, (uint32_t)(i % 3), 100, 1000 + i, &d);
    fq_q_settle(&q, lane, 0, 1, 0, FQ_Q_ACKED, 0);
    fq_q_settle(&q, lane, 1, 1, 1, FQ_Q_ACKED, 0);
    fq_q_settle(&q, lane, 3, 1, 0, FQ_Q_ACKED, 0);
    fq_q_settle(&q, lane, 4, 1, 1, FQ_Q_AVAILABLE, 50);
    fq_q_settle(&q, lane, 7, 1, 1, FQ_Q_AVAILABLE, 50);
    fq_q_settle(&q, lane, 5, 1, 2, FQ_Q_ARCHIVED, 0);
    fq_q_settle(&q, lane, 2, 1, 2, FQ_Q_AVAILABLE, 50);   /* spso stays 2 */
    for (uint32_t p = 0; p < 2; p++)
        for (int64_t i = 0; i < 10 + p * 3; i++)   /* (1, 6) due last: still there after two pops */
            fq_q_delay_track(&q, DLANE(p), i, p == 1 && i == 6 ? 100 : (int64_t)fqt_below(&rng, 20));
    fq_q_heap_pop(&q);
    fq_q_heap_pop(&q);
    fq_q_settle_any(&q, DLANE(1), 6, FQ_Q_ARCHIVED);   /* purged: its heap entry is left */
    uint64_t heap_before = q.hdr->heap_len;   /* 21, one of them stale */

    fq_q_lane want[22];
    memcpy(want, q.lanes, sizeof want);
    fq_q_session want_s[4];
    memcpy(want_s, q.sessions, sizeof want_s);
    /* the pop order, from a copy */
    void *copy;
    REQUIRE(fq_map_anon((size_t)size, &copy) == 0, "copy");
    memcpy(copy, mem, size);
    fq_q qc;
    REQUIRE(fq_q_attach(&qc, copy, size) == 0, "attach copy");
    int64_t order_due[32];
    uint64_t order_ref[32];
    int n = 0;
    while (n < 32 && fq_q_heap_peek(&qc, &order_due[n], &order_ref[n]) == 0) {
        fq_q_heap_pop(&qc);
        if (order_ref[n] != (((uint64_t)DLANE(1) << 48) | 6)) n++;   /* the stale one is a no-op */
    }
    CHECK(n == 20, "%d live delayed messages", n);

    /* a holder died mid-update: counters, hints, heap and sessions off; spso of lane
     * behind a settled prefix (an ack whose advance did not happen) */
    fq_q_lane *l = &q.lanes[lane];
    l->available = 999;
    l->acquired = -5;
    l->next_expiry_ms = INT64_MAX;
    l->avail_hint = l->speo;
    q.lanes[DLANE(0)].available = 0;
    q.lanes[LANE(0, 0)].acquired = 7;
    q.sessions[0].inflight = 42;
    q.sessions[3].inflight = -1;
    q.hdr->heap_len = 3;
    memset(q.heap, 0xAB, 16 * 3);
    q.lanes[DLANE(1)].spso = 0;   /* offsets 0.. of DLANE(1): only the popped ones settled */
    q.hdr->flags |= FQ_Q_FLAG_DIRTY;
    /* a copy in progress: the taker reads the intent after repair, so repair keeps it */
    fq_q_intent intent = {FQ_Q_OP_PROMOTE, DLANE(1), 3, LANE(1, 9), 0, 77, 1, 0};
    q.hdr->intent = intent;
    CHECK(fq_q_repair(&q) == 0, "repair");
    CHECK(memcmp(&q.hdr->intent, &intent, sizeof intent) == 0, "repair changed the intent block");
    CHECK((q.hdr->flags & FQ_Q_FLAG_DIRTY) == 0, "DIRTY left after repair");
    for (uint32_t i = 0; i < 22; i++) {
        fq_q_lane *a = &q.lanes[i], *b = &want[i];
        CHECK(a->spso == b->spso && a->speo == b->speo && a->available == b->available &&
                  a->acquired == b->acquired,
              "lane %u: spso %" PRId64 "/%" PRId64 " speo %" PRId64 "/%" PRId64 " available %" PRId64 "/%" PRId64
              " acquired %" PRId64 "/%" PRId64,
              i, a->spso, b->spso, a->speo, b->speo, a->available, b->available, a->acquired, b->acquired);
    }
    CHECK(l->available == 3 && l->acquired == 5 && l->spso == 2 && l->speo == 12, "lane %u exact counts", lane);
    CHECK(l->next_expiry_ms == 1106, "next expiry recomputed: %" PRId64, l->next_expiry_ms);
    CHECK(l->avail_hint <= 2, "avail_hint %" PRId64, l->avail_hint);
    for (int i = 0; i < 4; i++)
        CHECK(q.sessions[i].inflight == want_s[i].inflight, "session %d inflight %" PRId64 " want %" PRId64, i,
              q.sessions[i].inflight, want_s[i].inflight);
    CHECK(q.hdr->heap_len == heap_before - 1, "heap_len %" PRIu64 " want %" PRIu64, q.hdr->heap_len, heap_before - 1);
    for (int k = 0; k < n; k++) {
        int64_t due = 0; uint64_t ref = 0;
        int rc = fq_q_heap_peek(&q, &due, &ref);
        if (!CHECK(rc == 0 && due == order_due[k] && ref == order_ref[k],
                   "pop %d after repair: (%" PRId64 ", %" PRIx64 ") want (%" PRId64 ", %" PRIx64 ")", k, due, ref,
                   order_due[k], order_ref[k]))
            break;
        fq_q_heap_pop(&q);
    }
    CHECK(q.hdr->heap_len == 0, "heap left %" PRIu64, q.hdr->heap_len);
    /* still usable: the nacked offsets come back lowest first */
    CHECK(fq_q_acquire(&q, lane, 20, 3, 60, 10, &d) == 2 && d == 2, "acquire after repair");
    CHECK(fq_q_acquire(&q, lane, 20, 3, 60, 10, &d) == 4 && d == 2, "then 4");

    /* what it cannot repair */
    q.lanes[lane].speo = q.lanes[lane].spso + 17;
    CHECK(fq_q_repair(&q) == FQ_ECORRUPT, "window wider than the ring");
    q.lanes[lane].speo = 12;
    fq_q_slot *raw = q.slots + (size_t)1 * (10 * 16 + 16) + 4 * 16 + 9;   /* lane (1, 4), offset 9 */
    CHECK(raw->state == FQ_Q_ACQUIRED && raw->deliveries == 1, "raw slot address");
    raw->state = FQ_Q_WAITING;
    CHECK(fq_q_repair(&q) == FQ_ECORRUPT, "WAITING in a priority lane");
    raw->state = 9;
    CHECK(fq_q_repair(&q) == FQ_ECORRUPT, "unknown slot state");
    raw->state = FQ_Q_ACQUIRED;
    CHECK(fq_q_repair(&q) == 0, "repaired once the slot is sane");
    fq_unmap(copy, size);
    fq_unmap(mem, size);
}

/* ---- lock --------------------------------------------------------------------------- */
typedef struct {
    void *mem;
    uint64_t size;
    int iters;
    uint64_t *counter;
    int bad;
} qlock_arg;

static void *qlocker_main(void *p) {
    qlock_arg *a = p;
    fq_q q;
    if (fq_q_attach(&q, a->mem, a->size) != 0) {
        a->bad = -1;
        return NULL;
    }
    for (int i = 0; i < a->iters; i++) {
        int rc = fq_q_lock(&q, 60000000000LL);
        if (rc != 0) {   /* 1 would be a takeover between threads of one (live) pid */
            a->bad = rc;
            return NULL;
        }
        uint64_t v = *a->counter;
        if (i % 64 == 0) fq_yield();
        *a->counter = v + 1;
        fq_q_unlock(&q);
    }
    return NULL;
}

/* Fork a child that attaches, takes the lock and exits holding it. Returns its pid. */
static pid_t child_dies_holding(void *mem, uint64_t size) {
    pid_t pid = fork();
    if (pid == 0) {
        fq_q c;
        int rc = fq_q_attach(&c, mem, size);
        if (rc == 0) rc = fq_q_lock(&c, 1000000000LL);
        _exit(rc == 0 ? 0 : 3);
    }
    return pid;
}

static void check_lock(void) {
    fq_q q;
    void *mem;
    uint64_t size;
    REQUIRE(new_q(&q, 1, 16, 16, 1, 16, &mem, &size) == 0, "setup");
    uint32_t me = (uint32_t)getpid();
    CHECK(fq_q_lock(&q, 0) == 0 && q.hdr->lock == me, "free lock: word %u", q.hdr->lock);
    int64_t t0 = fq_monotonic_ns();
    CHECK(fq_q_lock(&q, 5000000) == FQ_ETIMEDOUT, "held by our own pid: timeout, no takeover");
    CHECK(fq_monotonic_ns() - t0 >= 5000000, "timed out early");
    CHECK(q.hdr->lock == me && q.hdr->lock_steals == 0, "word after timeout %u", q.hdr->lock);
    fq_q_unlock(&q);
    CHECK(q.hdr->lock == 0, "unlock");

    /* a dead holder, reaped */
    pid_t pid = child_dies_holding(mem, size);
    REQUIRE(pid > 0, "fork");
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    CHECK(q.hdr->lock == (uint32_t)pid, "child left the word %u, its pid %d", q.hdr->lock, (int)pid);
    CHECK(fq_q_lock(&q, 5000000000LL) == 1, "takeover from a reaped holder");
    CHECK(q.hdr->lock == me && q.hdr->lock_steals == 1 && (q.hdr->flags & FQ_Q_FLAG_DIRTY),
          "after takeover: word %u steals %" PRIu64 " flags %u", q.hdr->lock, q.hdr->lock_steals, q.hdr->flags);
    fq_q_unlock(&q);
    CHECK(fq_q_lock(&q, 0) == 1, "still DIRTY: the next taker repairs");
    CHECK(fq_q_repair(&q) == 0 && q.hdr->flags == 0, "repair clears DIRTY");
    fq_q_unlock(&q);
    CHECK(fq_q_lock(&q, 0) == 0, "clean after repair");
    fq_q_unlock(&q);

    /* a dead holder not yet reaped (a zombie: kill(pid, 0) still succeeds) */
    pid = child_dies_holding(mem, size);
    REQUIRE(pid > 0, "fork");
    siginfo_t si;
    memset(&si, 0, sizeof si);
    CHECK(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) == 0 && si.si_pid == pid, "waitid");
    CHECK(q.hdr->lock == (uint32_t)pid && kill(pid, 0) == 0, "zombie %d holds the word %u", (int)pid, q.hdr->lock);
    CHECK(fq_q_lock(&q, 5000000000LL) == 1 && q.hdr->lock_steals == 2, "takeover from a zombie");
    fq_q_repair(&q);
    fq_q_unlock(&q);
    waitpid(pid, &status, 0);

    /* a live holder in another process: timeout, then the lock once it lets go */
    int up[2], down[2];
    REQUIRE(pipe(up) == 0 && pipe(down) == 0, "pipes");
    pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        fq_q c;
        char b = 0;
        int ok = fq_q_attach(&c, mem, size) == 0 && fq_q_lock(&c, 1000000000LL) == 0;
        if (write(up[1], &b, 1) != 1) _exit(4);
        if (read(down[0], &b, 1) != 1) _exit(5);
        fq_q_unlock(&c);
        _exit(ok ? 0 : 3);
    }
    char b;
    CHECK(read(up[0], &b, 1) == 1, "child locked");
    CHECK(fq_q_lock(&q, 20000000) == FQ_ETIMEDOUT && q.hdr->lock == (uint32_t)pid,
          "a live holder is not taken over (word %u)", q.hdr->lock);
    CHECK(write(down[1], &b, 1) == 1, "release child");
    CHECK(fq_q_lock(&q, 5000000000LL) == 0 && q.hdr->lock == me, "lock after the child let go");
    fq_q_unlock(&q);
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "live holder child status %d", status);
    close(up[0]); close(up[1]); close(down[0]); close(down[1]);
    CHECK(q.hdr->lock_steals == 2, "steals %" PRIu64, q.hdr->lock_steals);

    /* two threads of one process: the CAS on the word excludes them */
    static uint64_t counter;
    counter = 0;
    qlock_arg a[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        qlock_arg x = {mem, size, FQ_QUEUE_LOCKS, &counter, 0};
        a[i] = x;
        pthread_create(&t[i], NULL, qlocker_main, &a[i]);
    }
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    CHECK(a[0].bad == 0 && a[1].bad == 0, "fq_q_lock returned %d / %d", a[0].bad, a[1].bad);
    CHECK(counter == 2ull * FQ_QUEUE_LOCKS, "counter %" PRIu64 " after 2 x %d locked increments", counter,
          FQ_QUEUE_LOCKS);
    CHECK(q.hdr->lock == 0 && q.hdr->lock_steals == 2, "word %u steals %" PRIu64 " after threads", q.hdr->lock,
          q.hdr->lock_steals);

    /* two processes, the counter in the shared mapping (the first sessions entry's pad) */
    uint64_t *shared = (uint64_t *)&q.sessions[0]._pad;
    *shared = 0;
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        if (kids[k] == 0) {
            fq_q c;
            if (fq_q_attach(&c, mem, size) != 0) _exit(3);
            for (int i = 0; i < FQ_QUEUE_LOCKS / 4; i++) {
                if (fq_q_lock(&c, 60000000000LL) != 0) _exit(4);
                uint64_t v = *(volatile uint64_t *)shared;
                if (i % 64 == 0) fq_yield();
                *(volatile uint64_t *)shared = v + 1;
                fq_q_unlock(&c);
            }
            _exit(0);
        }
    }
    for (int k = 0; k < 2; k++) {
        status = -1;
        if (kids[k] > 0) waitpid(kids[k], &status, 0);
        CHECK(kids[k] > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "locker process %d status %d", k,
              status);
    }
    CHECK(*shared == 2ull * (FQ_QUEUE_LOCKS / 4), "counter %" PRIu64 " after 2 processes x %d", *shared,
          FQ_QUEUE_LOCKS / 4);
    CHECK(q.hdr->lock_steals == 2, "a live process was taken over: steals %" PRIu64, q.hdr->lock_steals);
    fq_unmap(mem, size);
}

/* ---- random walk against a reference model ----------------------------------------- */
enum { M_WINDOW = 16, M_OWNERS = 4, M_MAX = FQ_QUEUE_STEPS + 64 };
typedef struct { uint8_t state; uint32_t deliveries, owner; int64_t deadline; } mslot;

static void check_model(void) {
    fq_q q;
    void *mem;
    uint64_t size;
    REQUIRE(new_q(&q, 1, M_WINDOW, 16, M_OWNERS, 16, &mem, &size) == 0, "setup");
    mslot *m = calloc(M_MAX + 32, sizeof *m);   /* reads a little past log_end */
    REQUIRE(m != NULL, "model");
    uint64_t seed = fqt_seed ^ 0x30DE1;
    fqt_rng rng = fqt_rng_new(seed);
    printf("    queue model: seed %" PRIu64 " (FQ_TEST_SEED=%" PRIu64 ")\n", seed, fqt_seed);
    uint32_t lane = 7;
    fq_q_lane *l = &q.lanes[lane];
    int64_t spso = 0, speo = 0, log_end = 0, now = 0;
    uint64_t ops[8] = {0}, full = 0, empty = 0, redelivered = 0, stale = 0, expired = 0;
    for (int step = 0; step < FQ_QUEUE_STEPS; step++) {
        int op = (int)fqt_below(&rng, 8);
        now += (int64_t)fqt_below(&rng, 20);
        /* 1000 steps with records ahead (full windows), then 1000 without (empty lanes) */
        if (log_end < M_MAX - 1 && (step / 1000) % 2 == 0 && log_end - speo < 40 && fqt_below(&rng, 3) == 0)
            log_end += (int64_t)fqt_below(&rng, 3);
        const char *what = "";
        if (op <= 2) {   /* acquire */
            what = "acquire";
            uint32_t owner = (uint32_t)fqt_below(&rng, M_OWNERS), d = 0;
            int64_t lease = 1 + (int64_t)fqt_below(&rng, 200);
            int64_t want = -1;
            for (int64_t o = spso; o < speo && want < 0; o++)
                if (m[o].state == FQ_Q_AVAILABLE && m[o].deadline <= now) want = o;
            int64_t wrc = want;
            if (want < 0) wrc = speo >= log_end ? FQ_EEMPTY : speo - spso >= M_WINDOW ? FQ_EFULL : speo;
            int64_t got = fq_q_acquire(&q, lane, log_end, owner, now, lease, &d);
            if (wrc >= 0) {
                if (wrc == speo) { speo++; m[wrc].deliveries = 0; }
                m[wrc].state = FQ_Q_ACQUIRED;
                m[wrc].deliveries++;
                m[wrc].owner = owner;
                m[wrc].deadline = now + lease;
            }
            full += wrc == FQ_EFULL;
            empty += wrc == FQ_EEMPTY;
            redelivered += wrc >= 0 && m[wrc].deliveries > 1;
            if (!CHECK(got == wrc && (got < 0 || d == m[got].deliveries),
                       "step %d acquire: %" PRId64 " want %" PRId64 " (d %u)", step, got, wrc, d))
                break;
        } else if (op <= 4) {   /* settle: ack / archive / nack a lease, sometimes a stale one */
            what = "settle";
            int64_t o = speo > spso ? spso + (int64_t)fqt_below(&rng, (uint64_t)(speo - spso + 1)) : spso;
            if (fqt_below(&rng, 10) == 0) o = spso - 1 - (int64_t)fqt_below(&rng, 3);
            if (o < 0) o = 0;
            uint32_t deliv = o < M_MAX ? m[o].deliveries : 1, owner = o < M_MAX ? m[o].owner : 0;
            if (fqt_below(&rng, 8) == 0) deliv += 1;
            if (fqt_below(&rng, 8) == 0) owner = (owner + 1) % M_OWNERS;
            static const int states[3] = {FQ_Q_ACKED, FQ_Q_ARCHIVED, FQ_Q_AVAILABLE};
            int ns = states[fqt_below(&rng, 3)];
            int64_t nb = now + (int64_t)fqt_below(&rng, 100) - 20;
            int current = o >= spso && o < speo && m[o].state == FQ_Q_ACQUIRED && m[o].deliveries == deliv &&
                          m[o].owner == owner;
            int rc = fq_q_settle(&q, lane, o, deliv, owner, ns, nb);
            stale += !current;
            if (current) {
                m[o].state = (uint8_t)ns;
                if (ns == FQ_Q_AVAILABLE) m[o].deadline = nb;
            }
            if (!CHECK(rc == (current ? 0 : FQ_ESTALE), "step %d settle %" PRId64 ": %d want %d", step, o, rc,
                       current ? 0 : FQ_ESTALE))
                break;
        } else if (op == 5) {   /* expire by time, or a dead owner */
            what = "expire";
            uint32_t dead = fqt_below(&rng, 4) == 0 ? (uint32_t)fqt_below(&rng, M_OWNERS) : FQ_Q_NO_OWNER;
            int64_t want = 0;
            for (int64_t o = spso; o < speo; o++)
                if (m[o].state == FQ_Q_ACQUIRED && (m[o].deadline <= now || m[o].owner == dead)) {
                    m[o].state = FQ_Q_AVAILABLE;
                    m[o].deadline = 0;
                    want++;
                }
            int64_t got = fq_q_expire(&q, lane, now, dead);
            expired += (uint64_t)want;
            if (!CHECK(got == want, "step %d expire(%" PRId64 ", %u): %" PRId64 " want %" PRId64, step, now, dead,
                       got, want))
                break;
        } else if (op == 6) {   /* extend a lease (maybe a stale one) */
            what = "extend";
            int64_t o = speo > spso ? spso + (int64_t)fqt_below(&rng, (uint64_t)(speo - spso)) : spso;
            uint32_t deliv = m[o].deliveries + (fqt_below(&rng, 8) == 0), owner = m[o].owner;
            int64_t dl = now + (int64_t)fqt_below(&rng, 300);
            int current = o < speo && m[o].state == FQ_Q_ACQUIRED && m[o].deliveries == deliv && m[o].owner == owner;
            int rc = fq_q_extend(&q, lane, o, deliv, owner, dl);
            if (current) m[o].deadline = dl;
            if (!CHECK(rc == (current ? 0 : FQ_ESTALE), "step %d extend %" PRId64 ": %d", step, o, rc)) break;
        } else {   /* settle_any */
            what = "settle_any";
            int64_t o = spso + (int64_t)fqt_below(&rng, M_WINDOW + 1);
            int want = o < speo && m[o].state == FQ_Q_AVAILABLE;
            int rc = fq_q_settle_any(&q, lane, o, FQ_Q_ARCHIVED);
            if (want) m[o].state = FQ_Q_ARCHIVED;
            if (!CHECK(rc == want, "step %d settle_any %" PRId64 ": %d want %d", step, o, rc, want)) break;
        }
        ops[op]++;
        while (spso < speo && (m[spso].state == FQ_Q_ACKED || m[spso].state == FQ_Q_ARCHIVED)) spso++;
        int64_t avail = 0, acq = 0, inflight[M_OWNERS] = {0};
        int slots_ok = 1;
        for (int64_t o = spso; o < speo; o++) {
            avail += m[o].state == FQ_Q_AVAILABLE;
            if (m[o].state == FQ_Q_ACQUIRED) { acq++; inflight[m[o].owner]++; }
            slots_ok &= slot_is(&q, lane, o, m[o].state, m[o].deliveries,
                                m[o].state == FQ_Q_ACQUIRED ? (int)m[o].owner : -1, m[o].deadline);
        }
        int sess_ok = 1;
        for (int i = 0; i < M_OWNERS; i++) sess_ok &= q.sessions[i].inflight == inflight[i];
        if (!CHECK(l->spso == spso && l->speo == speo && l->available == avail && l->acquired == acq && slots_ok &&
                       sess_ok,
                   "step %d after %s: spso %" PRId64 "/%" PRId64 " speo %" PRId64 "/%" PRId64 " available %" PRId64
                   "/%" PRId64 " acquired %" PRId64 "/%" PRId64 " slots %d sessions %d",
                   step, what, l->spso, spso, l->speo, speo, l->available, avail, l->acquired, acq, slots_ok, sess_ok))
            break;
    }
    CHECK(ops[0] + ops[1] + ops[2] > 1000 && speo > 500 && l->settled > 500 && full > 50 && empty > 5 &&
              redelivered > 100 && stale > 100 && expired > 100,
          "the walk did little: speo %" PRId64 " settled %" PRId64 " full %" PRIu64 " empty %" PRIu64
          " redelivered %" PRIu64 " stale %" PRIu64 " expired %" PRIu64,
          speo, l->settled, full, empty, redelivered, stale, expired);
    free(m);
    fq_unmap(mem, size);
}

/* ---- a lane log that lost its tail ---------------------------------------------------- */
static void check_lane_truncate(void) {
    fq_q q;
    void *mem;
    uint64_t size;
    REQUIRE(new_q(&q, 1, 16, 16, 4, 16, &mem, &size) == 0, "setup");
    uint32_t lane = 0, d;
    fq_q_lane *l = &q.lanes[lane];
    for (int i = 0; i < 8; i++) fq_q_acquire(&q, lane, 8, 1, 1000, 30000, &d);
    CHECK(fq_q_settle(&q, lane, 0, 1, 1, FQ_Q_ACKED, 0) == 0 && fq_q_settle(&q, lane, 1, 1, 1, FQ_Q_ACKED, 0) == 0,
          "ack 0 and 1");
    CHECK(fq_q_settle(&q, lane, 6, 1, 1, FQ_Q_AVAILABLE, 0) == 0, "nack 6");
    CHECK(fq_q_lane_truncate(&q, lane, 8) == 0 && l->speo == 8, "a log that reaches speo: nothing to do");
    /* the log ends at 5: offsets 5, 6, 7 are gone; 2, 3, 4 stay leased */
    CHECK(fq_q_lane_truncate(&q, lane, 5) == 3, "three offsets dropped");
    CHECK(l->spso == 2 && l->speo == 5 && l->acquired == 3 && l->available == 0,
          "window after truncate: spso %" PRId64 " speo %" PRId64 " acquired %" PRId64 " available %" PRId64,
          l->spso, l->speo, l->acquired, l->available);
    CHECK(q.sessions[1].inflight == 3, "session in flight recounted: %" PRId64, q.sessions[1].inflight);
    CHECK((q.hdr->flags & FQ_Q_FLAG_DIRTY) == 0, "repaired");
    CHECK(fq_q_acquire(&q, lane, 6, 2, 1000, 100, &d) == 5 && d == 1, "the next record at 5 is new");
    /* below spso: every offset was settled; the window restarts at the log's end */
    for (int64_t o = 2; o < 5; o++) CHECK(fq_q_settle(&q, lane, o, 1, 1, FQ_Q_ACKED, 0) == 0, "ack %" PRId64, o);
    CHECK(fq_q_settle(&q, lane, 5, 1, 2, FQ_Q_ACKED, 0) == 0 && l->spso == 6, "all acked");
    CHECK(fq_q_lane_truncate(&q, lane, 3) == 0 && l->spso == 3 && l->speo == 3, "spso and speo at 3");
    CHECK(fq_q_acquire(&q, lane, 4, 2, 1000, 100, &d) == 3 && d == 1, "record 3 is new");
    CHECK(fq_q_lane_truncate(&q, 99, 0) == FQ_EINVAL && fq_q_lane_truncate(&q, lane, -1) == FQ_EINVAL,
          "bad lane or end");
    fq_unmap(mem, size);
}

/* The drain ring: one sample per FQ_Q_DRAIN_EVERY_MS at most, the rate from the oldest
 * sample of the window, FQ_EEMPTY with no sample old enough, the ring wrapping. */
static void check_drain(void) {
    fq_q q;
    void *mem;
    uint64_t size;
    double rate = -1;
    REQUIRE(new_q(&q, 1, 64, 16, 4, 16, &mem, &size) == 0, "setup");
    CHECK(q.hdr->limits.max_depth == 0 && q.hdr->limits.overflow == 0 && q.hdr->drain.last_ms == 0,
          "a new file: unbounded, no samples");
    CHECK(fq_q_drain_rate(&q, 1000, 5000, &rate) == FQ_EEMPTY, "no sample: no rate");
    CHECK(fq_q_drain_sample(&q, 1000) == 1 && fq_q_drain_sample(&q, 1100) == 0, "one sample per 250 ms");
    CHECK(fq_q_drain_rate(&q, 1100, 5000, &rate) == FQ_EEMPTY, "a sample 100 ms old is too recent");
    uint32_t d;
    for (int i = 0; i < 40; i++) fq_q_acquire(&q, LANE(0, 3), 40, 1, 1000, 30000, &d);
    for (int64_t o = 0; o < 40; o++) fq_q_settle(&q, LANE(0, 3), o, 1, 1, FQ_Q_ACKED, 0);
    CHECK(fq_q_available_due(&q, LANE(0, 3), 1000) == 0, "nothing available");
    fq_q_acquire(&q, LANE(0, 2), 3, 1, 1000, 30000, &d);
    fq_q_acquire(&q, LANE(0, 2), 3, 1, 1000, 30000, &d);
    fq_q_settle(&q, LANE(0, 2), 0, 1, 1, FQ_Q_AVAILABLE, 0);
    fq_q_settle(&q, LANE(0, 2), 1, 1, 1, FQ_Q_AVAILABLE, 5000);
    CHECK(fq_q_available_due(&q, LANE(0, 2), 1000) == 1 && fq_q_available_due(&q, LANE(0, 2), 5000) == 2,
          "one due now, both at 5000");
    CHECK(fq_q_available_due(&q, DLANE(0), 1000) == FQ_EINVAL, "not for the delayed lane");
    CHECK(fq_q_settled_total(&q) == 40, "settled total %" PRId64, fq_q_settled_total(&q));
    CHECK(fq_q_drain_rate(&q, 3000, 5000, &rate) == 0 && rate > 19.99 && rate < 20.01,
          "40 settled in 2 s: %f/s", rate);
    /* samples every 250 ms for 20 s, 10 settled per sample: 40/s; the window covers 5 s */
    int64_t t = 1250;
    for (int k = 0; k < 80; k++, t += 250) {
        q.lanes[LANE(0, 1)].settled += 10;
        CHECK(fq_q_drain_sample(&q, t) == 1, "sample at %" PRId64, t);
    }
    CHECK(q.hdr->drain.next == 81, "81 samples written");
    CHECK(fq_q_drain_rate(&q, t, 5000, &rate) == 0 && rate > 30.0 && rate <= 40.0,
          "steady 40/s, last 250 ms without a sample: %f", rate);
    CHECK(fq_q_drain_rate(&q, t + 60000, 5000, &rate) == 0 && rate < 1.0, "a minute idle: %f", rate);
    CHECK(fq_q_drain_sample(&q, t - 100000) == 1, "a clock stepped back still samples");
    fq_unmap(mem, size);
}

void suite_queue(void) {
    check_drain();
    check_lane_truncate();
    check_layout();
    check_window();
    check_nack();
    check_leases();
    check_delayed();
    check_delay_purge();
    check_dedup();
    check_repair();
    check_lock();
    check_model();
}
