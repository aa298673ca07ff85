/* test_ring.c — the shared-memory ring (csrc/fq_ring.c) driven by real threads.
 *
 * Each thread attaches its own handle to one anonymous shared mapping, as separate
 * processes do. Frames carry a sequence number and bytes derived from it, so a consumer
 * sees at once a frame out of order, torn (bytes of an older lap) or lost. The rings are
 * small (a few frames) so every put and get meets the other side's publication: on a
 * weakly ordered CPU (aarch64, or qemu's aarch64 running threads in parallel) a missing
 * acquire/release pair shows up as stale bytes behind a published tail or head.
 *
 * Covered: SPSC with every wait mode (spin, yield, futex with no spinning so sleeps are
 * frequent), zero-copy batched reads (read_begin/next/commit) with put_many, two
 * producers and two consumers through the pid-word locks, count()/used() read by a
 * third thread while the ring runs, a futex sleeper woken by a put / by a get, and
 * fq_ring_interrupt waking a sleeper with FQ_ECLOSED, fq_ring_wait_readable beside a
 * handle holding the consumer lock.
 */
#define _GNU_SOURCE
#include "fqtest.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "fq_os.h"
#include "fq_ring.h"
#include "fq_status.h"

#ifndef FQ_RING_FRAMES
#define FQ_RING_FRAMES 100000   /* per transfer; the whole suite stays ~1 s natively */
#endif

enum { MAX_MSG = 64, HDR = 12 };   /* frame: u64 seq, u32 producer, then derived bytes */
/* Every wait is bounded, so a lost wakeup or a stuck side fails a check instead of hanging
 * (qemu runs this ~20x slower than native, and nothing here takes a second natively). */
#define WAIT_NS 60000000000LL

static uint32_t frame_len(uint64_t seq) { return HDR + (uint32_t)((seq * 7) % (MAX_MSG - HDR + 1)); }
static uint8_t frame_byte(uint64_t seq, uint32_t producer, uint32_t i) {
    return (uint8_t)(seq * 31 + producer * 101 + i * 7);
}
static uint32_t make_frame(uint8_t *buf, uint64_t seq, uint32_t producer) {
    uint32_t n = frame_len(seq);
    memcpy(buf, &seq, 8);
    memcpy(buf + 8, &producer, 4);
    for (uint32_t i = HDR; i < n; i++) buf[i] = frame_byte(seq, producer, i);
    return n;
}
/* 1 if buf[0:n] is a whole, untorn frame; its seq and producer in *seq, *producer. */
static int parse_frame(const uint8_t *buf, int64_t n, uint64_t *seq, uint32_t *producer) {
    if (n < HDR) return 0;
    memcpy(seq, buf, 8);
    memcpy(producer, buf + 8, 4);
    if ((uint32_t)n != frame_len(*seq)) return 0;
    for (uint32_t i = HDR; i < (uint32_t)n; i++)
        if (buf[i] != frame_byte(*seq, *producer, i)) return 0;
    return 1;
}

typedef struct {
    void *mem;
    uint64_t len;
    int wait;
    int64_t spin_ns;
    uint64_t frames;
    uint32_t producer;      /* producer threads: their id */
    int batched;            /* put_many / read_begin+next+commit */
    int stop_on_empty;      /* consumers of the MPMC test: a 0-byte frame ends them */
    uint64_t *seen;         /* MPMC: per-producer bitmap of delivered seqs */
    uint64_t got;           /* out: frames taken */
    int failed;             /* out: 1 after the first bad frame (stops the checking) */
} side_arg;

static void *producer_main(void *p) {
    side_arg *a = p;
    fq_ring r;
    if (!CHECK(fq_ring_attach(&r, a->mem, a->len, a->wait, a->spin_ns) == 0, "producer attach"))
        return NULL;
    uint8_t bufs[8][MAX_MSG];
    fq_ring_iov iov[8];
    for (uint64_t seq = 0; seq < a->frames;) {
        /* batches of 1..3 frames: 3 of the largest (216 bytes) fit the 256-byte ring */
        int k = a->batched ? 1 + (int)(seq % 3) : 1;
        if (seq + (uint64_t)k > a->frames) k = (int)(a->frames - seq);
        for (int i = 0; i < k; i++) {
            iov[i].base = bufs[i];
            iov[i].len = make_frame(bufs[i], seq + (uint64_t)i, a->producer);
        }
        int rc = fq_ring_put_many(&r, iov, k, WAIT_NS, 0);
        if (!CHECK(rc == 0, "producer %u: put of seq %" PRIu64 ": %d", a->producer, seq, rc)) {
            a->failed = 1;
            return NULL;
        }
        seq += (uint64_t)k;
    }
    return NULL;
}

/* SPSC consumer: frames arrive in order 0, 1, 2, ... */
static void *consumer_main(void *p) {
    side_arg *a = p;
    fq_ring r;
    if (!CHECK(fq_ring_attach(&r, a->mem, a->len, a->wait, a->spin_ns) == 0, "consumer attach"))
        return NULL;
    uint8_t buf[MAX_MSG];
    uint64_t seq = 0;
    uint32_t prod = 0;
    while (a->got < a->frames && !a->failed) {
        if (a->batched) {
            const uint8_t *m;
            int64_t n = fq_ring_read_begin(&r, WAIT_NS, 0, &m);
            if (!CHECK(n >= 0, "read_begin at frame %" PRIu64 ": %" PRId64, a->got, n)) {
                a->failed = 1;
                break;
            }
            while (n >= 0) {
                if (!CHECK(parse_frame(m, n, &seq, &prod) && seq == a->got,
                           "zero-copy read: frame %" PRIu64 " expected, got a %" PRId64
                           "-byte frame claiming seq %" PRIu64,
                           a->got, n, seq)) {
                    a->failed = 1;
                    break;
                }
                a->got++;
                n = fq_ring_read_next(&r, &m);
            }
            CHECK(a->failed || n == FQ_EEMPTY, "read_next ended with %" PRId64, n);
            fq_ring_read_commit(&r);
        } else {
            int64_t n = fq_ring_get(&r, buf, sizeof buf, WAIT_NS, 0, NULL);
            if (!CHECK(n >= 0 && parse_frame(buf, n, &seq, &prod) && seq == a->got,
                       "get: frame %" PRIu64 " expected, got status/length %" PRId64
                       " claiming seq %" PRIu64,
                       a->got, n, seq)) {
                a->failed = 1;
                break;
            }
            a->got++;
        }
    }
    return NULL;
}

/* A third party reading the counters while both sides run (Ring.__len__ does this from
 * any process): count() and used() must stay within what the ring can hold. */
typedef struct {
    void *mem;
    uint64_t len, capacity;
    int stop;
    uint64_t reads;
} observer_arg;

static void *observer_main(void *p) {
    observer_arg *o = p;
    fq_ring r;
    if (!CHECK(fq_ring_attach(&r, o->mem, o->len, FQ_RING_WAIT_SPIN, 0) == 0, "observer attach"))
        return NULL;
    while (!__atomic_load_n(&o->stop, __ATOMIC_ACQUIRE)) {
        uint64_t c = fq_ring_count(&r), u = fq_ring_used(&r);
        if (c > o->capacity / 8 || u > o->capacity) {   /* one CHECK per failure, not per read */
            CHECK(c <= o->capacity / 8 && u <= o->capacity, "observer saw count %" PRIu64 " used %" PRIu64 " in a %" PRIu64 "-byte ring",
                  c, u, o->capacity);
            break;
        }
        o->reads++;   /* hot: preempted between its loads now and then, as a busy machine does */
    }
    return NULL;
}

static int new_ring(uint64_t capacity, uint32_t flags, void **mem, uint64_t *len) {
    *len = fq_ring_region_size(capacity, MAX_MSG);
    if (fq_map_anon((size_t)*len, mem) != 0) return -1;
    return fq_ring_format(*mem, *len, capacity, MAX_MSG, 0, flags, fq_getpid());
}

static void spsc(const char *what, uint64_t frames, int wait, int64_t spin_ns, int batched,
                 int observe) {
    void *mem;
    uint64_t len, capacity = 256;   /* 3-5 frames: the sides meet on every operation */
    REQUIRE(new_ring(capacity, FQ_RING_F_SINGLE_PRODUCER | FQ_RING_F_SINGLE_CONSUMER, &mem,
                     &len) == 0,
            "%s: ring setup", what);
    side_arg prod = {mem, len, wait, spin_ns, frames, 7, batched, 0, NULL, 0, 0};
    side_arg cons = prod;
    observer_arg obs = {mem, len, capacity, 0, 0};
    pthread_t tp, tc, to;
    pthread_create(&tc, NULL, consumer_main, &cons);
    pthread_create(&tp, NULL, producer_main, &prod);
    if (observe) pthread_create(&to, NULL, observer_main, &obs);
    pthread_join(tp, NULL);
    if (prod.failed) cons.failed = 1;   /* best effort: a consumer waiting forever is a hang */
    pthread_join(tc, NULL);
    if (observe) {
        __atomic_store_n(&obs.stop, 1, __ATOMIC_RELEASE);
        pthread_join(to, NULL);
        CHECK(obs.reads > 0, "%s: the observer never ran", what);
    }
    CHECK(cons.got == frames, "%s: consumer took %" PRIu64 " of %" PRIu64 " frames", what,
          cons.got, frames);
    fq_ring r;
    fq_ring_attach(&r, mem, len, FQ_RING_WAIT_SPIN, 0);
    CHECK(fq_ring_count(&r) == 0 && fq_ring_used(&r) == 0, "%s: ring not empty at the end", what);
    fq_unmap(mem, (size_t)len);
}

/* Two producers, two consumers, locks on both sides. Each consumer sees each producer's
 * frames in increasing order; together they see every frame exactly once. */
static void *mpmc_consumer_main(void *p) {
    side_arg *a = p;
    fq_ring r;
    if (!CHECK(fq_ring_attach(&r, a->mem, a->len, a->wait, a->spin_ns) == 0, "consumer attach"))
        return NULL;
    uint8_t buf[MAX_MSG];
    int64_t last[2] = {-1, -1};
    for (;;) {
        int64_t n = fq_ring_get(&r, buf, sizeof buf, WAIT_NS, 0, NULL);
        if (n == 0) return NULL;   /* the end marker */
        if (n < 0) {   /* FQ_ETIMEDOUT: nothing came for WAIT_NS */
            CHECK(0, "mpmc consumer %u: get returned %" PRId64, a->producer, n);
            a->failed = 1;
            return NULL;
        }
        uint64_t seq = 0;
        uint32_t prod = 0;
        if (!CHECK(parse_frame(buf, n, &seq, &prod) && prod < 2 && seq < a->frames &&
                       (int64_t)seq > last[prod],
                   "mpmc get: status/length %" PRId64 " seq %" PRIu64 " producer %u", n, seq,
                   prod)) {
            a->failed = 1;
            continue;   /* keep draining so the producers are not stuck on a full ring */
        }
        last[prod] = (int64_t)seq;
        uint64_t *word = &a->seen[prod * (a->frames / 64 + 1) + seq / 64], bit = 1ull << (seq % 64);
        uint64_t old = __atomic_fetch_or(word, bit, __ATOMIC_RELAXED);
        CHECK(!(old & bit), "producer %u frame %" PRIu64 " delivered twice", prod, seq);
        a->got++;
    }
}

static void mpmc(void) {
    void *mem;
    uint64_t len, frames = FQ_RING_FRAMES / 4;
    REQUIRE(new_ring(512, 0, &mem, &len) == 0, "mpmc ring setup");
    size_t words = (size_t)(frames / 64 + 1);
    static uint64_t seen[2 * (FQ_RING_FRAMES / 4 / 64 + 1)];
    memset(seen, 0, sizeof seen);
    side_arg p[2], c[2];
    pthread_t tp[2], tc[2];
    for (int i = 0; i < 2; i++) {
        side_arg a = {mem, len, FQ_RING_WAIT_FUTEX, 2000, frames, (uint32_t)i, 0, 1, seen, 0, 0};
        p[i] = c[i] = a;
        p[i].batched = i;   /* one producer puts batches, the other single frames */
    }
    for (int i = 0; i < 2; i++) pthread_create(&tc[i], NULL, mpmc_consumer_main, &c[i]);
    for (int i = 0; i < 2; i++) pthread_create(&tp[i], NULL, producer_main, &p[i]);
    for (int i = 0; i < 2; i++) pthread_join(tp[i], NULL);
    fq_ring r;
    fq_ring_attach(&r, mem, len, FQ_RING_WAIT_FUTEX, 0);
    for (int i = 0; i < 2; i++)   /* one end marker per consumer, after every frame */
        CHECK(fq_ring_put(&r, "", 0, WAIT_NS, 0) == 0, "end marker");
    for (int i = 0; i < 2; i++) pthread_join(tc[i], NULL);
    uint64_t missing = 0;
    for (int prod = 0; prod < 2; prod++)
        for (uint64_t s = 0; s < frames; s++)
            missing += !(seen[(size_t)prod * words + s / 64] & (1ull << (s % 64)));
    CHECK(missing == 0 && c[0].got + c[1].got == 2 * frames,
          "mpmc: %" PRIu64 " frames missing, %" PRIu64 " + %" PRIu64 " delivered", missing,
          c[0].got, c[1].got);
    CHECK(__atomic_load_n(&r.hdr->lock_steals, __ATOMIC_RELAXED) == 0,
          "a lock held by a live thread was stolen");
    fq_unmap(mem, (size_t)len);
}

/* ---- futex sleepers: woken by the other side, and by interrupt ---------------------- */
typedef struct {
    void *mem;
    uint64_t len;
    int side;        /* 0: get from an empty ring; 1: put into a full one */
    fq_ring r;
    int64_t rc;
} sleeper_arg;

static void *sleeper_main(void *p) {
    sleeper_arg *s = p;
    uint8_t buf[MAX_MSG];
    if (s->side == 0) s->rc = fq_ring_get(&s->r, buf, sizeof buf, WAIT_NS, 0, NULL);
    else s->rc = fq_ring_put(&s->r, buf, make_frame(buf, 1, 0), WAIT_NS, 0);
    return NULL;
}

/* Start a thread that sleeps on the futex, and return once it has announced itself. */
static void start_sleeper(sleeper_arg *s, pthread_t *t) {
    fq_ring_attach(&s->r, s->mem, s->len, FQ_RING_WAIT_FUTEX, 0);
    pthread_create(t, NULL, sleeper_main, s);
    uint32_t *waiters = s->side ? &s->r.hdr->prod_waiters : &s->r.hdr->cons_waiters;
    while (__atomic_load_n(waiters, __ATOMIC_ACQUIRE) == 0) fq_yield();
}

static void futex_wakeups(void) {
    void *mem;
    uint64_t len;
    REQUIRE(new_ring(128, FQ_RING_F_SINGLE_PRODUCER | FQ_RING_F_SINGLE_CONSUMER, &mem, &len) == 0,
            "futex ring setup");
    fq_ring me;
    fq_ring_attach(&me, mem, len, FQ_RING_WAIT_FUTEX, 0);
    uint8_t buf[MAX_MSG];
    pthread_t t;

    sleeper_arg s = {mem, len, 0, {0}, 0};   /* a get on the empty ring, woken by a put */
    start_sleeper(&s, &t);
    uint32_t n = make_frame(buf, 42, 3);
    CHECK(fq_ring_put(&me, buf, n, 0, 0) == 0, "put to wake the getter");
    pthread_join(t, NULL);
    CHECK(s.rc == (int64_t)n, "woken getter returned %" PRId64, s.rc);

    while (fq_ring_put(&me, buf, make_frame(buf, 0, 0), 0, 0) == 0) {   /* fill it */
    }
    s.side = 1;   /* a put on the full ring, woken by a get */
    start_sleeper(&s, &t);
    CHECK(fq_ring_get(&me, buf, sizeof buf, 0, 0, NULL) >= 0, "get to wake the putter");
    pthread_join(t, NULL);
    CHECK(s.rc == 0, "woken putter returned %" PRId64, s.rc);
    while (fq_ring_get(&me, buf, sizeof buf, 0, 0, NULL) >= 0) {   /* empty it */
    }

    s.side = 0;   /* a get on the empty ring, interrupted */
    start_sleeper(&s, &t);
    fq_ring_interrupt(&s.r);
    pthread_join(t, NULL);
    CHECK(s.rc == FQ_ECLOSED, "interrupted getter returned %" PRId64, s.rc);
    fq_unmap(mem, (size_t)len);
}

/* fq_ring_wait_readable looks without the consumer lock: it answers while another handle
 * holds a read open (a batching producer's linger thread must not make its drainer wait),
 * says empty / timed out / closed, and takes nothing. */
static void wait_readable(void) {
    void *mem;
    uint64_t len;
    REQUIRE(new_ring(256, 0, &mem, &len) == 0, "wait_readable ring setup");
    fq_ring a, b;
    fq_ring_attach(&a, mem, len, FQ_RING_WAIT_FUTEX, 0);
    fq_ring_attach(&b, mem, len, FQ_RING_WAIT_FUTEX, 0);
    uint8_t buf[MAX_MSG];
    const uint8_t *m;
    CHECK(fq_ring_wait_readable(&b, 0) == FQ_EEMPTY, "empty ring, no wait");
    CHECK(fq_ring_wait_readable(&b, 1000000) == FQ_ETIMEDOUT, "empty ring, 1 ms");
    uint32_t n = make_frame(buf, 7, 1);
    CHECK(fq_ring_put(&a, buf, n, 0, 0) == 0, "put");
    CHECK(fq_ring_read_begin(&a, 0, 1, &m) == (int64_t)n, "a opens a read: holds the consumer lock");
    CHECK(fq_ring_read_begin(&b, 0, 1, &m) == FQ_RING_EBUSY, "b cannot take the lock");
    CHECK(fq_ring_wait_readable(&b, 0) == 0, "b still sees the message without the lock");
    fq_ring_read_abort(&a);
    CHECK(fq_ring_wait_readable(&b, -1) == 0, "the message is still there");
    CHECK(fq_ring_count(&b) == 1, "nothing taken: count %" PRIu64, fq_ring_count(&b));
    CHECK(fq_ring_get(&b, buf, sizeof buf, 0, 0, NULL) == (int64_t)n, "b takes it");
    fq_ring_interrupt(&b);
    CHECK(fq_ring_wait_readable(&b, -1) == FQ_ECLOSED, "interrupted: closed, not a hang");
    fq_unmap(mem, (size_t)len);
}

static void timed(const char *what, void (*fn)(void)) {
    int64_t t0 = fq_monotonic_ns();
    fn();
    printf("    ring %-28s %.2f s\n", what, (double)(fq_monotonic_ns() - t0) / 1e9);
}

/* Pure spinning hands over only when both threads are on a core: on a loaded 2-core
 * machine each handover can wait for a scheduler tick, so that variant moves fewer frames. */
static void spsc_spin(void) { spsc("spsc spin", FQ_RING_FRAMES / 10, FQ_RING_WAIT_SPIN, 0, 0, 0); }
static void spsc_yield_observed(void) {
    spsc("spsc yield", FQ_RING_FRAMES, FQ_RING_WAIT_YIELD, 0, 0, 1);
}
/* every handover a futex sleep and wake: two system calls a frame */
static void spsc_futex(void) { spsc("spsc futex", FQ_RING_FRAMES / 3, FQ_RING_WAIT_FUTEX, 0, 0, 0); }
static void spsc_batched(void) {
    spsc("spsc batched", FQ_RING_FRAMES, FQ_RING_WAIT_FUTEX, 20000, 1, 0);
}

void suite_ring(void) {
    timed("spsc, spin", spsc_spin);
    timed("spsc, yield, + observer", spsc_yield_observed);
    timed("spsc, futex (no spin)", spsc_futex);
    timed("spsc, put_many/zero-copy", spsc_batched);
    timed("2 producers, 2 consumers", mpmc);
    timed("futex wakeups, interrupt", futex_wakeups);
    timed("wait_readable, lock-free", wait_readable);
}
