/* fq_queue.c — per-message delivery state of a queue. Layout, lock and repair rule are in
 * fq_queue.h (docs/FORMAT.md and docs/QUEUES.md mirror them). Plain C11; no Python. */
#include "fq_queue.h"
#include "fq_os.h"
#include "fq_status.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(fq_q_hdr) == FQ_Q_HDR_SIZE, "queue header must be 4096 bytes");
_Static_assert(offsetof(fq_q_hdr, lock) == 64, "lock line");
_Static_assert(offsetof(fq_q_hdr, heap_len) == 192, "heap line");
_Static_assert(offsetof(fq_q_hdr, intent) == 256, "intent line");
_Static_assert(sizeof(fq_q_intent) == 40, "intent is 40 bytes");
_Static_assert(offsetof(fq_q_hdr, limits) == 512, "limits line");
_Static_assert(sizeof(fq_q_limits) == 64, "limits are 64 bytes");
_Static_assert(offsetof(fq_q_hdr, drain) == 576, "drain ring");
_Static_assert(sizeof(fq_q_drain) == 16 + 16 * FQ_Q_DRAIN_SAMPLES, "drain ring size");
_Static_assert(sizeof(fq_q_lane) == 64, "a lane is 64 bytes");
_Static_assert(sizeof(fq_q_session) == 32, "a session is 32 bytes");
_Static_assert(sizeof(fq_q_slot) == 16, "a slot is 16 bytes");
_Static_assert(sizeof(fq_q_heap_entry) == 16, "a heap entry is 16 bytes");
_Static_assert(sizeof(fq_q_dedup) == 32, "a dedup entry is 32 bytes");

#define RELAXED __ATOMIC_RELAXED
#define REF_LANE(r) ((uint32_t)((r) >> 48))
#define REF_OFFSET(r) ((int64_t)((r) & ((1ull << 48) - 1)))

static int pow2(uint32_t x) { return x >= 16 && (x & (x - 1)) == 0; }

static int geometry_ok(uint32_t partitions, uint32_t window, uint32_t delay_window,
                       uint32_t max_sessions, uint32_t dedup_capacity) {
    return partitions >= 1 && partitions <= FQ_Q_MAX_PARTITIONS && pow2(window) &&
           window <= (1u << 24) && pow2(delay_window) && delay_window <= (1u << 24) &&
           max_sessions >= 1 && max_sessions <= FQ_Q_MAX_SESSIONS && pow2(dedup_capacity) &&
           dedup_capacity <= (1u << 24);
}

int64_t fq_q_layout(uint32_t partitions, uint32_t window, uint32_t delay_window,
                    uint32_t max_sessions, uint32_t dedup_capacity) {
    if (!geometry_ok(partitions, window, delay_window, max_sessions, dedup_capacity))
        return FQ_EINVAL;
    int64_t n = FQ_Q_HDR_SIZE;
    n += (int64_t)partitions * FQ_Q_LANES * (int64_t)sizeof(fq_q_lane);
    n += (int64_t)max_sessions * (int64_t)sizeof(fq_q_session);
    n += (int64_t)partitions * ((int64_t)FQ_Q_PRIORITIES * window + delay_window) * (int64_t)sizeof(fq_q_slot);
    n += (int64_t)partitions * delay_window * (int64_t)sizeof(fq_q_heap_entry);
    n += (int64_t)dedup_capacity * (int64_t)sizeof(fq_q_dedup);
    return (n + 4095) & ~(int64_t)4095;
}

static void point(fq_q *q, uint8_t *base) {
    fq_q_hdr *h = (fq_q_hdr *)base;
    uint32_t lanes = h->partitions * FQ_Q_LANES;
    uint8_t *p = base + FQ_Q_HDR_SIZE;
    q->hdr = h;
    q->lanes = (fq_q_lane *)p;
    p += (size_t)lanes * sizeof(fq_q_lane);
    q->sessions = (fq_q_session *)p;
    p += (size_t)h->max_sessions * sizeof(fq_q_session);
    q->slots = (fq_q_slot *)p;
    p += (size_t)h->partitions * ((size_t)FQ_Q_PRIORITIES * h->window + h->delay_window) * sizeof(fq_q_slot);
    q->heap = (fq_q_heap_entry *)p;
    p += (size_t)h->partitions * h->delay_window * sizeof(fq_q_heap_entry);
    q->dedup = (fq_q_dedup *)p;
    q->me = (uint32_t)fq_getpid();
}

int fq_q_init(void *map, uint32_t partitions, uint32_t window, uint32_t delay_window,
              uint32_t max_sessions, uint32_t dedup_capacity) {
    int64_t size = fq_q_layout(partitions, window, delay_window, max_sessions, dedup_capacity);
    if (size < 0) return (int)size;
    fq_q_hdr *h = (fq_q_hdr *)map;
    h->version = FQ_Q_VERSION;
    h->partitions = partitions;
    h->window = window;
    h->delay_window = delay_window;
    h->max_sessions = max_sessions;
    h->dedup_capacity = dedup_capacity;
    h->size = (uint64_t)size;
    fq_q q;
    point(&q, (uint8_t *)map);
    for (uint32_t i = 0; i < partitions * FQ_Q_LANES; i++) {
        q.lanes[i].next_expiry_ms = INT64_MAX;
    }
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(h->magic, FQ_Q_MAGIC, 8);
    return 0;
}

int fq_q_attach(fq_q *q, void *map, uint64_t size) {
    fq_q_hdr *h = (fq_q_hdr *)map;
    if (size < FQ_Q_HDR_SIZE || memcmp(h->magic, FQ_Q_MAGIC, 8) != 0) return FQ_EMAGIC;
    if (h->version != FQ_Q_VERSION) return FQ_EMAGIC;
    int64_t need = fq_q_layout(h->partitions, h->window, h->delay_window, h->max_sessions,
                               h->dedup_capacity);
    if (need < 0 || (uint64_t)need != h->size || (uint64_t)need > size) return FQ_ECORRUPT;
    point(q, (uint8_t *)map);
    return 0;
}

/* ---- lock: a pid word (the rule of fq_ring.c's locks, see fq_queue.h) */

int fq_q_lock(fq_q *q, int64_t timeout_ns) {
    uint32_t *lock = &q->hdr->lock, me = q->me, expect = 0;
    if (__atomic_compare_exchange_n(lock, &expect, me, 0, __ATOMIC_ACQUIRE, RELAXED))
        return (__atomic_load_n(&q->hdr->flags, RELAXED) & FQ_Q_FLAG_DIRTY) ? 1 : 0;
    int64_t now = fq_monotonic_ns();
    int64_t next_check = now + FQ_Q_LOCK_CHECK_NS;
    int64_t give_up = timeout_ns < 0 ? -1 : now + timeout_ns;
    for (uint32_t i = 1;; i++) {
        uint32_t owner = __atomic_load_n(lock, RELAXED);
        if (owner == 0) {
            expect = 0;
            if (__atomic_compare_exchange_n(lock, &expect, me, 0, __ATOMIC_ACQUIRE, RELAXED))
                return (__atomic_load_n(&q->hdr->flags, RELAXED) & FQ_Q_FLAG_DIRTY) ? 1 : 0;
            continue;
        }
        if (i < 128) fq_cpu_relax(); else fq_yield();
        if ((i & 15) != 0) continue;
        now = fq_monotonic_ns();
        if (now >= next_check) {
            next_check = now + FQ_Q_LOCK_CHECK_NS;
            if (owner != me && fq_pid_dead(owner) &&
                __atomic_compare_exchange_n(lock, &owner, me, 0, __ATOMIC_ACQUIRE, RELAXED)) {
                q->hdr->lock_steals++;
                __atomic_or_fetch(&q->hdr->flags, FQ_Q_FLAG_DIRTY, RELAXED);
                return 1;
            }
        }
        if (give_up >= 0 && now >= give_up) return FQ_ETIMEDOUT;
    }
}

void fq_q_unlock(fq_q *q) { __atomic_store_n(&q->hdr->lock, 0, __ATOMIC_RELEASE); }

/* ---- lanes and slots */

static inline uint32_t nlanes(const fq_q *q) { return q->hdr->partitions * FQ_Q_LANES; }
static inline int is_delayed(uint32_t lane) { return lane % FQ_Q_LANES == FQ_Q_DELAYED; }
static inline uint32_t ring_of(const fq_q *q, uint32_t lane) {
    return is_delayed(lane) ? q->hdr->delay_window : q->hdr->window;
}
static fq_q_slot *ring_base(const fq_q *q, uint32_t lane) {
    uint32_t part = lane / FQ_Q_LANES, k = lane % FQ_Q_LANES;
    size_t per_part = (size_t)FQ_Q_PRIORITIES * q->hdr->window + q->hdr->delay_window;
    return q->slots + part * per_part + (size_t)k * q->hdr->window;
}
static inline fq_q_slot *slot_at(const fq_q *q, uint32_t lane, int64_t offset) {
    return ring_base(q, lane) + ((uint64_t)offset & (ring_of(q, lane) - 1));
}

static void session_add(fq_q *q, uint32_t owner, int64_t d) {
    if (owner < q->hdr->max_sessions) q->sessions[owner].inflight += d;
}

/* Advance spso over settled slots. */
static void advance(fq_q *q, uint32_t lane) {
    fq_q_lane *l = &q->lanes[lane];
    int64_t s = l->spso;
    while (s < l->speo) {
        uint8_t st = slot_at(q, lane, s)->state;
        if (st != FQ_Q_ACKED && st != FQ_Q_ARCHIVED) break;
        s++;
    }
    __atomic_store_n(&l->spso, s, __ATOMIC_RELEASE);
    if (l->avail_hint < s) l->avail_hint = s;
}

int64_t fq_q_acquire(fq_q *q, uint32_t lane, int64_t log_end, uint32_t owner, int64_t now_ms,
                     int64_t lease_ms, uint32_t *deliveries) {
    if (lane >= nlanes(q) || is_delayed(lane)) return FQ_EINVAL;
    fq_q_lane *l = &q->lanes[lane];
    int64_t deadline = now_ms + lease_ms;
    if (l->available > 0) {
        int64_t lowest = -1;
        for (int64_t o = l->avail_hint; o < l->speo; o++) {
            fq_q_slot *s = slot_at(q, lane, o);
            if (s->state != FQ_Q_AVAILABLE) continue;
            if (lowest < 0) lowest = o;
            if (s->deadline_ms > now_ms) continue;
            s->deliveries += 1;
            s->owner = (uint16_t)owner;
            s->deadline_ms = deadline;
            s->state = FQ_Q_ACQUIRED;
            l->available -= 1;
            l->acquired += 1;
            if (deadline < l->next_expiry_ms) l->next_expiry_ms = deadline;
            if (lowest == o) l->avail_hint = o + 1;
            session_add(q, owner, 1);
            *deliveries = s->deliveries;
            return o;
        }
        l->avail_hint = lowest < 0 ? l->speo : lowest;
    }
    if (l->speo >= log_end) return FQ_EEMPTY;
    if (l->speo - l->spso >= (int64_t)ring_of(q, lane)) return FQ_EFULL;
    int64_t o = l->speo;
    fq_q_slot *s = slot_at(q, lane, o);
    s->state = FQ_Q_ACQUIRED;
    s->owner = (uint16_t)owner;
    s->deliveries = 1;
    s->deadline_ms = deadline;
    __atomic_store_n(&l->speo, o + 1, __ATOMIC_RELEASE);   /* the slot is whole before it counts */
    l->acquired += 1;
    if (deadline < l->next_expiry_ms) l->next_expiry_ms = deadline;
    session_add(q, owner, 1);
    *deliveries = 1;
    return o;
}

static fq_q_slot *lease_of(fq_q *q, uint32_t lane, int64_t offset, uint32_t deliveries,
                           uint32_t owner) {
    if (lane >= nlanes(q)) return NULL;
    fq_q_lane *l = &q->lanes[lane];
    if (offset < l->spso || offset >= l->speo) return NULL;
    fq_q_slot *s = slot_at(q, lane, offset);
    if (s->state != FQ_Q_ACQUIRED || s->deliveries != deliveries || s->owner != owner) return NULL;
    return s;
}

int fq_q_settle(fq_q *q, uint32_t lane, int64_t offset, uint32_t deliveries, uint32_t owner,
                int new_state, int64_t not_before_ms) {
    if (new_state != FQ_Q_ACKED && new_state != FQ_Q_ARCHIVED && new_state != FQ_Q_AVAILABLE)
        return FQ_EINVAL;
    fq_q_slot *s = lease_of(q, lane, offset, deliveries, owner);
    if (s == NULL) return FQ_ESTALE;
    fq_q_lane *l = &q->lanes[lane];
    l->acquired -= 1;
    session_add(q, owner, -1);
    if (new_state == FQ_Q_AVAILABLE) {
        s->deadline_ms = not_before_ms;
        s->state = FQ_Q_AVAILABLE;
        l->available += 1;
        if (offset < l->avail_hint) l->avail_hint = offset;
        return 0;
    }
    s->state = (uint8_t)new_state;
    l->settled += 1;
    if (new_state == FQ_Q_ARCHIVED) l->dead += 1;
    if (offset == l->spso) advance(q, lane);
    return 0;
}

int fq_q_settle_any(fq_q *q, uint32_t lane, int64_t offset, int new_state) {
    if (lane >= nlanes(q) || (new_state != FQ_Q_ACKED && new_state != FQ_Q_ARCHIVED)) return FQ_EINVAL;
    fq_q_lane *l = &q->lanes[lane];
    if (offset < l->spso || offset >= l->speo) return 0;
    fq_q_slot *s = slot_at(q, lane, offset);
    if (s->state != FQ_Q_AVAILABLE && s->state != FQ_Q_WAITING) return 0;
    s->state = (uint8_t)new_state;
    l->available -= 1;
    l->settled += 1;
    if (offset == l->spso) advance(q, lane);
    return 1;
}

int fq_q_extend(fq_q *q, uint32_t lane, int64_t offset, uint32_t deliveries, uint32_t owner,
                int64_t deadline_ms) {
    fq_q_slot *s = lease_of(q, lane, offset, deliveries, owner);
    if (s == NULL) return FQ_ESTALE;
    s->deadline_ms = deadline_ms;
    if (deadline_ms < q->lanes[lane].next_expiry_ms) q->lanes[lane].next_expiry_ms = deadline_ms;
    return 0;
}

int64_t fq_q_expire(fq_q *q, uint32_t lane, int64_t now_ms, uint32_t dead_owner) {
    if (lane >= nlanes(q) || is_delayed(lane)) return FQ_EINVAL;
    fq_q_lane *l = &q->lanes[lane];
    if (l->acquired == 0) return 0;
    if (dead_owner == FQ_Q_NO_OWNER && now_ms < l->next_expiry_ms) return 0;
    int64_t n = 0, next = INT64_MAX;
    for (int64_t o = l->spso; o < l->speo; o++) {
        fq_q_slot *s = slot_at(q, lane, o);
        if (s->state != FQ_Q_ACQUIRED) continue;
        if (s->deadline_ms <= now_ms || s->owner == dead_owner) {
            session_add(q, s->owner, -1);
            s->deadline_ms = 0;
            s->state = FQ_Q_AVAILABLE;
            l->acquired -= 1;
            l->available += 1;
            if (o < l->avail_hint) l->avail_hint = o;
            n++;
        } else if (s->deadline_ms < next) {
            next = s->deadline_ms;
        }
    }
    l->next_expiry_ms = next;
    return n;
}

int fq_q_slot_get(fq_q *q, uint32_t lane, int64_t offset, fq_q_slot *out) {
    if (lane >= nlanes(q)) return FQ_EINVAL;
    fq_q_lane *l = &q->lanes[lane];
    if (offset < l->spso || offset >= l->speo) return FQ_EINVAL;
    *out = *slot_at(q, lane, offset);
    return 0;
}

/* ---- the delay heap: min on (due_ms, ref) */

static inline int heap_less(const fq_q_heap_entry *a, const fq_q_heap_entry *b) {
    return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->ref < b->ref);
}

static void heap_up(fq_q_heap_entry *h, uint64_t i) {
    fq_q_heap_entry e = h[i];
    while (i > 0) {
        uint64_t parent = (i - 1) / 2;
        if (!heap_less(&e, &h[parent])) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = e;
}

static void heap_down(fq_q_heap_entry *h, uint64_t n, uint64_t i) {
    fq_q_heap_entry e = h[i];
    for (;;) {
        uint64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_less(&h[c + 1], &h[c])) c++;
        if (!heap_less(&h[c], &e)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = e;
}

static uint64_t heap_cap(const fq_q *q) { return (uint64_t)q->hdr->partitions * q->hdr->delay_window; }

/* Drop the entries whose slot is no longer WAITING (settled by fq_q_settle_any: a purge
 * leaves its entry, which heap_pop would skip only once it is due). Live entries are at
 * most one per slot of the delayed lanes, so afterwards the heap has room unless every
 * delay window is full. Killed half-way, fq_q_repair rebuilds the heap from the slots. */
static void heap_drop_settled(fq_q *q) {
    uint64_t n = q->hdr->heap_len, k = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint32_t lane = REF_LANE(q->heap[i].ref);
        int64_t o = REF_OFFSET(q->heap[i].ref);
        if (lane < nlanes(q) && is_delayed(lane) && o >= q->lanes[lane].spso && o < q->lanes[lane].speo &&
            slot_at(q, lane, o)->state == FQ_Q_WAITING)
            q->heap[k++] = q->heap[i];
    }
    for (uint64_t i = k / 2; i-- > 0;) heap_down(q->heap, k, i);
    q->hdr->heap_len = k;
}

int fq_q_delay_track(fq_q *q, uint32_t lane, int64_t offset, int64_t due_ms) {
    if (lane >= nlanes(q) || !is_delayed(lane) || offset < 0 || offset >= (1ll << 48)) return FQ_EINVAL;
    fq_q_lane *l = &q->lanes[lane];
    if (offset != l->speo) return FQ_EINVAL;
    if (l->speo - l->spso >= (int64_t)ring_of(q, lane)) return FQ_EFULL;
    if (q->hdr->heap_len >= heap_cap(q)) heap_drop_settled(q);
    if (q->hdr->heap_len >= heap_cap(q)) return FQ_EFULL;
    fq_q_slot *s = slot_at(q, lane, offset);
    s->state = FQ_Q_WAITING;
    s->owner = FQ_Q_NO_OWNER;
    s->deliveries = 0;
    s->deadline_ms = due_ms;
    __atomic_store_n(&l->speo, offset + 1, __ATOMIC_RELEASE);
    l->available += 1;
    uint64_t n = q->hdr->heap_len;
    q->heap[n].due_ms = due_ms;
    q->heap[n].ref = ((uint64_t)lane << 48) | (uint64_t)offset;
    q->hdr->heap_len = n + 1;
    heap_up(q->heap, n);
    return 0;
}

int fq_q_heap_peek(fq_q *q, int64_t *due_ms, uint64_t *ref) {
    if (q->hdr->heap_len == 0) return FQ_EEMPTY;
    *due_ms = q->heap[0].due_ms;
    *ref = q->heap[0].ref;
    return 0;
}

int fq_q_heap_pop(fq_q *q) {
    uint64_t n = q->hdr->heap_len;
    if (n == 0) return FQ_EEMPTY;
    uint64_t ref = q->heap[0].ref;
    uint32_t lane = REF_LANE(ref);
    int64_t offset = REF_OFFSET(ref);
    /* the slot first: a holder killed after it leaves a heap entry for a settled slot,
     * which fq_q_repair drops when it rebuilds the heap from the WAITING slots */
    if (lane < nlanes(q)) fq_q_settle_any(q, lane, offset, FQ_Q_ARCHIVED);
    q->heap[0] = q->heap[n - 1];
    q->hdr->heap_len = n - 1;
    if (n - 1 > 0) heap_down(q->heap, n - 1, 0);
    return 0;
}

/* ---- repair after a takeover */

int64_t fq_q_lane_truncate(fq_q *q, uint32_t lane, int64_t log_end) {
    if (lane >= nlanes(q) || log_end < 0) return FQ_EINVAL;
    fq_q_lane *l = &q->lanes[lane];
    if (log_end >= l->speo) return 0;
    int64_t dropped = l->speo - (log_end > l->spso ? log_end : l->spso);
    q->hdr->flags |= FQ_Q_FLAG_DIRTY;         /* a death from here on: the taker repairs */
    if (log_end < l->spso) l->spso = log_end;
    __atomic_store_n(&l->speo, log_end, __ATOMIC_RELEASE);
    int rc = fq_q_repair(q);
    return rc < 0 ? rc : dropped;
}

int fq_q_repair(fq_q *q) {
    uint64_t hn = 0;
    for (uint32_t lane = 0; lane < nlanes(q); lane++) {
        fq_q_lane *l = &q->lanes[lane];
        if (l->spso < 0 || l->speo < l->spso || l->speo - l->spso > (int64_t)ring_of(q, lane)) {
            return FQ_ECORRUPT;
        }
        l->available = l->acquired = 0;
        l->next_expiry_ms = INT64_MAX;
        l->avail_hint = l->spso;
        for (int64_t o = l->spso; o < l->speo; o++) {
            fq_q_slot *s = slot_at(q, lane, o);
            switch (s->state) {
            case FQ_Q_AVAILABLE: l->available++; break;
            case FQ_Q_ACQUIRED:
                l->acquired++;
                if (s->deadline_ms < l->next_expiry_ms) l->next_expiry_ms = s->deadline_ms;
                break;
            case FQ_Q_WAITING:
                if (!is_delayed(lane) || hn >= heap_cap(q)) return FQ_ECORRUPT;
                l->available++;
                q->heap[hn].due_ms = s->deadline_ms;
                q->heap[hn].ref = ((uint64_t)lane << 48) | (uint64_t)o;
                hn++;
                break;
            case FQ_Q_ACKED: case FQ_Q_ARCHIVED: break;
            default: return FQ_ECORRUPT;
            }
        }
        advance(q, lane);
    }
    for (uint32_t i = 0; i < q->hdr->max_sessions; i++) q->sessions[i].inflight = 0;
    for (uint32_t lane = 0; lane < nlanes(q); lane++) {
        if (is_delayed(lane)) continue;
        fq_q_lane *l = &q->lanes[lane];
        for (int64_t o = l->spso; o < l->speo; o++) {
            fq_q_slot *s = slot_at(q, lane, o);
            if (s->state == FQ_Q_ACQUIRED) session_add(q, s->owner, 1);
        }
    }
    q->hdr->heap_len = hn;
    for (uint64_t i = hn / 2; i-- > 0;) heap_down(q->heap, hn, i);
    __atomic_and_fetch(&q->hdr->flags, ~FQ_Q_FLAG_DIRTY, RELAXED);
    return 0;
}

/* ---- deduplication: open addressing on h1, linear probe */

static inline uint64_t dd_mask(const fq_q *q) { return (uint64_t)q->hdr->dedup_capacity - 1; }

int fq_q_dedup_get(fq_q *q, uint64_t h1, uint64_t h2, int64_t now_ms, uint64_t *id) {
    if (h1 == 0) h1 = 1;
    uint64_t m = dd_mask(q);
    for (uint64_t i = h1 & m, n = 0; n <= m; i = (i + 1) & m, n++) {
        fq_q_dedup *e = &q->dedup[i];
        if (e->h1 == 0) return 0;
        if (e->h1 == h1 && e->h2 == h2) {
            if (e->expire_ms <= now_ms) return 0;
            *id = e->id;
            return 1;
        }
    }
    return 0;
}

static int dedup_insert(fq_q *q, uint64_t h1, uint64_t h2, int64_t expire_ms, uint64_t id,
                        int64_t now_ms) {
    uint64_t m = dd_mask(q);
    fq_q_dedup *reuse = NULL;
    for (uint64_t i = h1 & m, n = 0; n <= m; i = (i + 1) & m, n++) {
        fq_q_dedup *e = &q->dedup[i];
        if (e->h1 == 0) {
            if (reuse == NULL) {
                reuse = e;
                q->hdr->dedup_used += 1;
            }
            break;
        }
        if (e->h1 == h1 && e->h2 == h2) { reuse = e; break; }
        if (reuse == NULL && e->expire_ms <= now_ms) reuse = e;
    }
    if (reuse == NULL) return FQ_EFULL;
    reuse->h2 = h2;
    reuse->expire_ms = expire_ms;
    reuse->id = id;
    reuse->h1 = h1;
    return 0;
}

int fq_q_dedup_put(fq_q *q, uint64_t h1, uint64_t h2, int64_t expire_ms, uint64_t id,
                   int64_t now_ms) {
    if (h1 == 0) h1 = 1;
    uint64_t cap = q->hdr->dedup_capacity;
    if (q->hdr->dedup_used * 4 >= cap * 3) {
        /* rebuild without dead entries: probe chains only ever grow otherwise */
        fq_q_dedup *live = malloc(sizeof(fq_q_dedup) * cap);
        if (live == NULL) return -12; /* -ENOMEM */
        uint64_t k = 0;
        for (uint64_t i = 0; i < cap; i++) {
            if (q->dedup[i].h1 != 0 && q->dedup[i].expire_ms > now_ms) live[k++] = q->dedup[i];
        }
        memset(q->dedup, 0, sizeof(fq_q_dedup) * cap);
        q->hdr->dedup_used = 0;
        for (uint64_t i = 0; i < k; i++) {
            dedup_insert(q, live[i].h1, live[i].h2, live[i].expire_ms, live[i].id, now_ms);
        }
        free(live);
    }
    return dedup_insert(q, h1, h2, expire_ms, id, now_ms);
}

int64_t fq_q_available_due(fq_q *q, uint32_t lane, int64_t now_ms) {
    if (lane >= nlanes(q) || is_delayed(lane)) return FQ_EINVAL;
    fq_q_lane *l = &q->lanes[lane];
    if (l->available <= 0) return 0;
    int64_t n = 0;
    for (int64_t o = l->avail_hint; o < l->speo; o++) {
        const fq_q_slot *s = slot_at(q, lane, o);
        if (s->state == FQ_Q_AVAILABLE && s->deadline_ms <= now_ms) n++;
    }
    return n;
}

/* ---- drain rate */

int64_t fq_q_settled_total(fq_q *q) {
    int64_t total = 0;
    for (uint32_t lane = 0; lane < nlanes(q); lane++) {
        if (!is_delayed(lane)) total += __atomic_load_n(&q->lanes[lane].settled, RELAXED);
    }
    return total;
}

int fq_q_drain_sample(fq_q *q, int64_t now_ms) {
    fq_q_drain *d = &q->hdr->drain;
    if (d->last_ms != 0 && now_ms - d->last_ms < FQ_Q_DRAIN_EVERY_MS && now_ms >= d->last_ms) return 0;
    fq_q_drain_point *s = &d->samples[d->next % FQ_Q_DRAIN_SAMPLES];
    s->ms = now_ms;
    s->settled = fq_q_settled_total(q);
    d->next += 1;
    d->last_ms = now_ms;
    return 1;
}

int fq_q_drain_rate(fq_q *q, int64_t now_ms, int64_t window_ms, double *rate) {
    fq_q_drain *d = &q->hdr->drain;
    uint32_t n = d->next < FQ_Q_DRAIN_SAMPLES ? d->next : FQ_Q_DRAIN_SAMPLES;
    const fq_q_drain_point *best = NULL, *newest_old = NULL;
    for (uint32_t i = 0; i < n; i++) {
        const fq_q_drain_point *s = &d->samples[(d->next - 1 - i) % FQ_Q_DRAIN_SAMPLES];
        int64_t age = now_ms - s->ms;
        if (age < FQ_Q_DRAIN_EVERY_MS) continue;          /* too short a span to measure */
        if (age <= window_ms) best = s;                    /* older and older, still in the window */
        else if (newest_old == NULL || s->ms > newest_old->ms) newest_old = s;
    }
    if (best == NULL) best = newest_old;
    if (best == NULL) return FQ_EEMPTY;
    int64_t done = fq_q_settled_total(q) - best->settled;
    if (done < 0) done = 0;                                /* counters reset (a new file) */
    *rate = (double)done * 1000.0 / (double)(now_ms - best->ms);
    return 0;
}
