/* fq_ring.c — the ring algorithm. Layout, locking and waiting are described in fq_ring.h
 * and docs/RING.md. Plain C11 + GCC/Clang __atomic builtins; no Python. */
#if defined(__linux__)
#define _GNU_SOURCE
#endif
#include "fq_ring.h"
#include "fq_os.h"
#include "fq_status.h"

#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <string.h>

#if defined(__linux__)
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#endif

_Static_assert(sizeof(fq_ring_hdr) == FQ_RING_HDR_SIZE, "ring header must be 1024 bytes");
_Static_assert(offsetof(fq_ring_hdr, tail) == 1 * FQ_RING_LINE, "producer line");
_Static_assert(offsetof(fq_ring_hdr, prod_lock) == 160, "prod_lock offset");
_Static_assert(offsetof(fq_ring_hdr, head) == 2 * FQ_RING_LINE, "consumer line");
_Static_assert(offsetof(fq_ring_hdr, cons_lock) == 280, "cons_lock offset");
_Static_assert(offsetof(fq_ring_hdr, data_seq) == 3 * FQ_RING_LINE, "not-empty line");
_Static_assert(offsetof(fq_ring_hdr, space_seq) == 4 * FQ_RING_LINE, "not-full line");
_Static_assert(offsetof(fq_ring_hdr, lock_steals) == 5 * FQ_RING_LINE, "stats line");

#define RELAXED __ATOMIC_RELAXED
#define ALIGN8(x) (((uint64_t)(x) + 7u) & ~(uint64_t)7u)

static inline uint64_t rec_size(uint64_t len) { return FQ_RING_REC_HDR + ALIGN8(len); }

/* ---- own pid, cached: getpid() is a real syscall on current glibc and lock words need it
 * on every acquisition. pthread_atfork refreshes it in forked children. */
static int32_t g_pid;
static pthread_once_t g_pid_once = PTHREAD_ONCE_INIT;
static void pid_refresh(void) { __atomic_store_n(&g_pid, fq_getpid(), RELAXED); }
static void pid_init(void) {
    pid_refresh();
    pthread_atfork(NULL, NULL, pid_refresh);
}
static inline uint32_t self_pid(void) { return (uint32_t)__atomic_load_n(&g_pid, RELAXED); }

static inline int64_t deadline_of(int64_t timeout_ns) {
    if (timeout_ns < 0) return -1;
    if (timeout_ns == 0) return 0;
    return fq_monotonic_ns() + timeout_ns;
}

/* ---- locks: a pid word. Held only across a bounded critical section (copies), so waiters
 * spin, then yield; every FQ_RING_LOCK_CHECK_NS they check the holder is alive and take the
 * lock over from a dead one. Non-blocking callers give up after FQ_RING_NOWAIT_LOCK_NS. */
static int lock_take(fq_ring *r, uint32_t *lock, int trylock, int64_t deadline) {
    uint32_t me = self_pid(), expect = 0;
    if (__atomic_compare_exchange_n(lock, &expect, me, 0, __ATOMIC_ACQUIRE, RELAXED)) return 0;
    if (trylock) return FQ_RING_EBUSY;
    int64_t now = fq_monotonic_ns();
    int64_t next_check = now + FQ_RING_LOCK_CHECK_NS;
    int64_t give_up = deadline == 0 ? now + FQ_RING_NOWAIT_LOCK_NS : deadline;
    for (uint32_t i = 1;; i++) {
        uint32_t owner = __atomic_load_n(lock, RELAXED);
        if (owner == 0) {
            expect = 0;
            if (__atomic_compare_exchange_n(lock, &expect, me, 0, __ATOMIC_ACQUIRE, RELAXED)) return 0;
            continue;
        }
        if (i < 128) fq_cpu_relax(); else fq_yield();
        if ((i & 15) != 0) continue;
        if (__atomic_load_n(&r->closing, RELAXED)) return FQ_ECLOSED;
        now = fq_monotonic_ns();
        if (now >= next_check) {
            next_check = now + FQ_RING_LOCK_CHECK_NS;
            if (fq_pid_dead(owner) &&
                __atomic_compare_exchange_n(lock, &owner, me, 0, __ATOMIC_ACQUIRE, RELAXED)) {
                fq_fetch_add_u64(&r->hdr->lock_steals, 1);
                return 0;
            }
        }
        if (give_up > 0 && now >= give_up) return FQ_ETIMEDOUT;
    }
}

static inline void lock_drop(uint32_t *lock) { __atomic_store_n(lock, 0, __ATOMIC_RELEASE); }

/* ---- conditions, evaluated without locks (the lock holder re-checks) */

/* tail - head and puts - gets as they stood at one instant, for callers on neither side
 * (len(), used_bytes(), full()) and for waiting producers of a multi-producer ring. Read
 * one at a time, the counters of a running ring give impossible values: a reader
 * descheduled between its load of head and its load of tail sees the producer's later
 * tail against an old head, more bytes than the ring holds (used_bytes() 776 in a
 * 256-byte ring, len() in the thousands, full() on a ring that never was). So the
 * consumer's counter is loaded before and after the producer's: it only grows, so when
 * both loads agree it held that value when the producer's counter was loaded. head1 <=
 * tail because the consumer stored head (release) only after it had seen such a tail
 * (acquire); tail - head2 <= capacity because the producer published tail (release)
 * only after it had seen a head <= head2. The same holds for gets/puts, which are stored
 * with release for this. A reader that never finds them still (both sides racing past
 * it for FQ_RING_SNAPSHOT_TRIES rounds) returns the last difference, clamped to `cap`
 * (tests/c/test_ring.c's observer checks these bounds while both sides run). */
#define FQ_RING_SNAPSHOT_TRIES 64
static inline uint64_t snapshot_diff(const uint64_t *cons, const uint64_t *prod, uint64_t cap) {
    uint64_t d = 0;
    for (int i = 0; i < FQ_RING_SNAPSHOT_TRIES; i++) {
        uint64_t c1 = fq_load_acquire_u64(cons);
        uint64_t p = fq_load_acquire_u64(prod);
        uint64_t c2 = fq_load_acquire_u64(cons);
        d = p - c1;
        if (c1 == c2) return d;   /* exact: no clamp hides a broken bound from the tests */
    }
    return d <= cap ? d : cap;
}

static inline uint64_t used_bytes(const fq_ring *r) {
    return snapshot_diff(&r->hdr->head, &r->hdr->tail, r->capacity);
}

/* at most capacity / 8 messages fit (a record takes 8 bytes at least), and max_messages */
static inline uint64_t used_messages(const fq_ring *r) {
    uint64_t cap = r->capacity / FQ_RING_REC_HDR;
    if (r->max_messages && r->max_messages < cap) cap = r->max_messages;
    return snapshot_diff(&r->hdr->gets, &r->hdr->puts, cap);
}

static inline int can_read(const fq_ring *r) {
    const fq_ring_hdr *h = r->hdr;
    uint64_t head = fq_load_acquire_u64(&h->head);
    return fq_load_acquire_u64(&h->tail) != head;
}

static inline int has_room(const fq_ring *r, uint64_t need, uint64_t nmsg) {
    if (used_bytes(r) + need > r->capacity) return 0;
    if (r->max_messages && used_messages(r) + nmsg > r->max_messages) return 0;
    return 1;
}

/* After publishing: full fence (pairs with the sleeper's fence between raising the waiter
 * count and re-checking), then wake only if someone sleeps. */
static inline void wake_side(uint32_t *seq, uint32_t *waiters) {
    fq_fence();
    if (__atomic_load_n(waiters, RELAXED)) {
        fq_fetch_add_u32(seq, 1);
        fq_wake(seq, INT_MAX);
    }
}

/* Wait until the side can proceed (side 0: a message to read; side 1: room for `need` bytes
 * and `nmsg` messages). 0 = re-check under the lock; FQ_EEMPTY/FQ_EFULL when deadline is 0
 * (do not wait); FQ_ETIMEDOUT; FQ_ECLOSED. */
static int wait_until(fq_ring *r, int side, uint64_t need, uint64_t nmsg, int64_t deadline) {
    fq_ring_hdr *h = r->hdr;
    uint32_t *seq = side ? &h->space_seq : &h->data_seq;
    uint32_t *waiters = side ? &h->prod_waiters : &h->cons_waiters;
    int64_t start = -1, now = 0;
    for (uint32_t i = 0;; i++) {
        if (side ? has_room(r, need, nmsg) : can_read(r)) return 0;
        if (__atomic_load_n(&r->closing, RELAXED)) return FQ_ECLOSED;
        if (deadline == 0) return side ? FQ_EFULL : FQ_EEMPTY;
        if (r->wait == FQ_RING_WAIT_SPIN) {
            fq_cpu_relax();
            if ((i & 63) == 63 && deadline > 0 && fq_monotonic_ns() >= deadline) return FQ_ETIMEDOUT;
            continue;
        }
        if (i < 16) { fq_cpu_relax(); continue; }   /* the first few re-checks cost no clock read */
        now = fq_monotonic_ns();
        if (start < 0) start = now;
        if (deadline > 0 && now >= deadline) return FQ_ETIMEDOUT;
        if (now - start < r->spin_ns) { fq_cpu_relax(); continue; }
        if (r->wait == FQ_RING_WAIT_YIELD) { fq_yield(); continue; }
        /* futex: announce, fence, read seq, re-check, sleep on seq (see fq_ring.h) */
        fq_fetch_add_u32(waiters, 1);
        fq_fence();
        uint32_t s = fq_load_acquire_u32(seq);
        int rc = 0;
        if (!(side ? has_room(r, need, nmsg) : can_read(r)) && !__atomic_load_n(&r->closing, RELAXED))
            rc = fq_wait(seq, s, deadline > 0 ? deadline - now : -1);
        fq_fetch_add_u32(waiters, (uint32_t)-1);
        if (rc < 0 && rc != FQ_ETIMEDOUT) fq_sleep_ns(50000); /* futex unusable: degrade to polling */
    }
}

/* ---- setup */
uint64_t fq_ring_region_size(uint64_t capacity, uint32_t max_message) {
    if (capacity < FQ_RING_MIN_CAPACITY || capacity > FQ_RING_MAX_CAPACITY) return 0;
    if (capacity & (capacity - 1)) return 0;
    if ((uint64_t)max_message > capacity - FQ_RING_REC_HDR || max_message > FQ_RING_MAX_MESSAGE) return 0;
    return (uint64_t)FQ_RING_HDR_SIZE + capacity + ALIGN8(max_message);
}

int fq_ring_format(void *mem, uint64_t len, uint64_t capacity, uint32_t max_message,
                   uint64_t max_messages, uint32_t flags, int32_t creator_pid) {
    uint64_t need = fq_ring_region_size(capacity, max_message);
    if (need == 0 || (flags & ~(uint32_t)(FQ_RING_F_SINGLE_PRODUCER | FQ_RING_F_SINGLE_CONSUMER)))
        return FQ_EINVAL;
    if (len < need) return FQ_ETOOBIG;
    fq_ring_hdr *h = (fq_ring_hdr *)mem;
    memset(h, 0, sizeof *h);
    h->version = FQ_RING_VERSION;
    h->flags = flags;
    h->capacity = capacity;
    h->region_size = need;
    h->max_message = max_message;
    h->hdr_size = FQ_RING_HDR_SIZE;
    h->max_messages = max_messages;
    h->creator_pid = creator_pid;
    fq_store_release_u64(&h->magic, FQ_RING_MAGIC);   /* attachers wait for this */
    return 0;
}

int fq_ring_attach(fq_ring *r, void *mem, uint64_t len, int wait, int64_t spin_ns) {
    pthread_once(&g_pid_once, pid_init);
    memset(r, 0, sizeof *r);
    if (wait < FQ_RING_WAIT_SPIN || wait > FQ_RING_WAIT_FUTEX || spin_ns < 0) return FQ_EINVAL;
    if (mem == NULL || len < sizeof(fq_ring_hdr)) return FQ_EMAGIC;
    fq_ring_hdr *h = (fq_ring_hdr *)mem;
    if (fq_load_acquire_u64(&h->magic) != FQ_RING_MAGIC) return FQ_EMAGIC;
    if (h->version != FQ_RING_VERSION) return FQ_EMAGIC;
    /* the mapping may come from a file anyone could write: check everything used later */
    uint64_t need = fq_ring_region_size(h->capacity, h->max_message);
    if (need == 0 || h->region_size != need || need > len || h->hdr_size != FQ_RING_HDR_SIZE ||
        (h->flags & ~(uint32_t)(FQ_RING_F_SINGLE_PRODUCER | FQ_RING_F_SINGLE_CONSUMER)))
        return FQ_ECORRUPT;
    r->hdr = h;
    r->data = (uint8_t *)mem + FQ_RING_HDR_SIZE;
    r->capacity = h->capacity;
    r->mask = h->capacity - 1;
    r->max_message = h->max_message;
    r->max_messages = h->max_messages;
    r->flags = h->flags;
    r->wait = wait;
    r->spin_ns = spin_ns;
    return 0;
}

/* ---- producing */
int fq_ring_put_many(fq_ring *r, const fq_ring_iov *v, int64_t n, int64_t timeout_ns, int trylock) {
    if (n < 0) return FQ_EINVAL;
    if (n == 0) return 0;
    uint64_t need = 0;
    for (int64_t i = 0; i < n; i++) {
        if (v[i].len > r->max_message) return FQ_ETOOBIG;
        need += rec_size(v[i].len);
    }
    if (need > r->capacity || (r->max_messages && (uint64_t)n > r->max_messages)) return FQ_ETOOBIG;
    fq_ring_hdr *h = r->hdr;
    const int multi = !(r->flags & FQ_RING_F_SINGLE_PRODUCER);
    const int64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        if (multi) {
            int rc = lock_take(r, &h->prod_lock, trylock, deadline);
            if (rc) return rc;
        }
        uint64_t tail = __atomic_load_n(&h->tail, RELAXED);   /* ours while we hold the side */
        uint64_t puts = __atomic_load_n(&h->puts, RELAXED);
        if (tail & 7) {
            if (multi) lock_drop(&h->prod_lock);
            return FQ_ECORRUPT;
        }
        int fits = tail + need - h->head_cache <= r->capacity &&
                   (!r->max_messages || puts + (uint64_t)n - h->gets_cache <= r->max_messages);
        if (!fits) {   /* the caches only ever lag: refresh and look again */
            h->head_cache = fq_load_acquire_u64(&h->head);
            h->gets_cache = fq_load_acquire_u64(&h->gets);
            fits = tail + need - h->head_cache <= r->capacity &&
                   (!r->max_messages || puts + (uint64_t)n - h->gets_cache <= r->max_messages);
        }
        if (fits) {
            for (int64_t i = 0; i < n; i++) {
                uint8_t *p = r->data + (tail & r->mask);
                uint32_t w[2] = {v[i].len, 0};
                memcpy(p, w, sizeof w);
                if (v[i].len) memcpy(p + FQ_RING_REC_HDR, v[i].base, v[i].len);
                tail += rec_size(v[i].len);
            }
            /* release: a reader of puts then sees a head <= the one we checked against */
            __atomic_store_n(&h->puts, puts + (uint64_t)n, __ATOMIC_RELEASE);
            fq_store_release_u64(&h->tail, tail);   /* the one publishing store */
            if (multi) lock_drop(&h->prod_lock);
            wake_side(&h->data_seq, &h->cons_waiters);
            return 0;
        }
        if (multi) lock_drop(&h->prod_lock);
        int rc = wait_until(r, 1, need, (uint64_t)n, deadline);
        if (rc) return rc;
    }
}

int fq_ring_put(fq_ring *r, const void *msg, uint32_t len, int64_t timeout_ns, int trylock) {
    fq_ring_iov v = {msg, len};
    return fq_ring_put_many(r, &v, 1, timeout_ns, trylock);
}

/* ---- consuming */
static inline int64_t parse(const fq_ring *r, uint64_t head, uint64_t tail, const uint8_t **msg) {
    const uint8_t *p = r->data + (head & r->mask);
    uint32_t len;
    if (head & 7) return FQ_ECORRUPT;
    memcpy(&len, p, sizeof len);
    if (len > r->max_message || rec_size(len) > tail - head) return FQ_ECORRUPT;
    *msg = p + FQ_RING_REC_HDR;
    return (int64_t)len;
}

int64_t fq_ring_read_begin(fq_ring *r, int64_t timeout_ns, int trylock, const uint8_t **msg) {
    fq_ring_hdr *h = r->hdr;
    const int multi = !(r->flags & FQ_RING_F_SINGLE_CONSUMER);
    const int64_t deadline = deadline_of(timeout_ns);
    /* the rd_* fields belong to whoever holds the consumer side: threads sharing a handle of
     * a multi-consumer ring find them free once they hold the lock */
    if (!multi && r->rd_active) return FQ_EINVAL;
    for (;;) {
        if (multi) {
            int rc = lock_take(r, &h->cons_lock, trylock, deadline);
            if (rc) return rc;
            if (r->rd_active) {
                lock_drop(&h->cons_lock);
                return FQ_EINVAL;
            }
        }
        uint64_t head = __atomic_load_n(&h->head, RELAXED);
        uint64_t tail = h->tail_cache;
        if (head == tail) {
            tail = fq_load_acquire_u64(&h->tail);
            h->tail_cache = tail;
        }
        if (head != tail) {
            int64_t len = parse(r, head, tail, msg);
            if (len < 0) {
                if (multi) lock_drop(&h->cons_lock);
                return len;
            }
            r->rd_active = 1;
            r->rd_locked = (uint32_t)multi;
            r->rd_count = 1;
            r->rd_head = head + rec_size((uint64_t)len);
            r->rd_tail = tail;
            return len;
        }
        if (multi) lock_drop(&h->cons_lock);
        int rc = wait_until(r, 0, 0, 0, deadline);
        if (rc) return rc;
    }
}

int64_t fq_ring_read_next(fq_ring *r, const uint8_t **msg) {
    if (!r->rd_active) return FQ_EINVAL;
    uint64_t head = r->rd_head, tail = r->rd_tail;
    if (head == tail) {
        tail = fq_load_acquire_u64(&r->hdr->tail);
        r->rd_tail = r->hdr->tail_cache = tail;   /* we hold the consumer side */
        if (head == tail) return FQ_EEMPTY;
    }
    int64_t len = parse(r, head, tail, msg);
    if (len < 0) return len;
    r->rd_head = head + rec_size((uint64_t)len);
    r->rd_count++;
    return len;
}

void fq_ring_read_commit(fq_ring *r) {
    if (!r->rd_active) return;
    fq_ring_hdr *h = r->hdr;
    /* release: a reader of gets then sees every put of the messages it counts */
    __atomic_store_n(&h->gets, __atomic_load_n(&h->gets, RELAXED) + r->rd_count, __ATOMIC_RELEASE);
    fq_store_release_u64(&h->head, r->rd_head);   /* the one consuming store */
    r->rd_active = 0;
    if (r->rd_locked) lock_drop(&h->cons_lock);
    wake_side(&h->space_seq, &h->prod_waiters);
}

void fq_ring_read_abort(fq_ring *r) {
    if (!r->rd_active) return;
    r->rd_active = 0;
    if (r->rd_locked) lock_drop(&r->hdr->cons_lock);
}

int64_t fq_ring_get(fq_ring *r, void *dst, uint64_t cap, int64_t timeout_ns, int trylock,
                    uint64_t *needed) {
    const uint8_t *m;
    int64_t n = fq_ring_read_begin(r, timeout_ns, trylock, &m);
    if (n < 0) return n;
    if ((uint64_t)n > cap) {
        if (needed) *needed = (uint64_t)n;
        fq_ring_read_abort(r);
        return FQ_ETOOBIG;
    }
    if (n) memcpy(dst, m, (size_t)n);
    fq_ring_read_commit(r);
    return n;
}

int fq_ring_wait_readable(fq_ring *r, int64_t timeout_ns) {
    return wait_until(r, 0, 0, 0, deadline_of(timeout_ns));
}

/* ---- state */
void fq_ring_interrupt(fq_ring *r) {
    fq_ring_hdr *h = r->hdr;
    __atomic_store_n(&r->closing, 1, __ATOMIC_SEQ_CST);
    /* bump the seq words so a waiter between its re-check and its futex wait returns */
    fq_fetch_add_u32(&h->data_seq, 1);
    fq_fetch_add_u32(&h->space_seq, 1);
    fq_wake(&h->data_seq, INT_MAX);
    fq_wake(&h->space_seq, INT_MAX);
}

uint64_t fq_ring_count(const fq_ring *r) { return used_messages(r); }

uint64_t fq_ring_used(const fq_ring *r) { return used_bytes(r); }

int fq_ring_is_full(const fq_ring *r) { return !has_room(r, FQ_RING_REC_HDR, 1); }

int fq_ring_debug_hold_lock(fq_ring *r, int which) {
    return lock_take(r, which ? &r->hdr->cons_lock : &r->hdr->prod_lock, 0, -1);
}
