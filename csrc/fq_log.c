/* fq_log.c — writer lock, seqlock commit and tail notification of a log's shared state.
 * See fq_log.h for the layout and the protocol. */
#include "fq_log.h"
#include "fq_crc32c.h"
#include "fq_os.h"
#include "fq_status.h"

#include <stddef.h>
#include <limits.h>

_Static_assert(sizeof(fq_log_state) <= FQ_STATE_SIZE, "state must fit its file");
_Static_assert(offsetof(fq_log_state, lock) == 64, "lock on cache line 1");
_Static_assert(offsetof(fq_log_state, seq) == 128, "commit group on cache line 2");
_Static_assert(offsetof(fq_log_state, notify) == 256, "notify on cache line 4");
_Static_assert(offsetof(fq_log_state, recovery_point) == 320, "durability on cache line 5");
_Static_assert(offsetof(fq_log_state, clean_crc) == 20, "clean_crc where the pad was");
_Static_assert(sizeof(fq_log_state) == 384, "six cache lines");

uint32_t fq_log_state_crc(const fq_log_state *st) {
    const uint8_t *b = (const uint8_t *)st;
    const size_t crc_at = offsetof(fq_log_state, clean_crc);
    uint32_t c = fq_crc32c(0, b, crc_at);
    c = fq_crc32c(c, b + crc_at + 4, 64 - crc_at - 4);                   /* rest of line 0 */
    c = fq_crc32c(c, b + offsetof(fq_log_state, seq), 128);              /* lines 2-3 */
    return fq_crc32c(c, b + offsetof(fq_log_state, recovery_point), 64); /* line 5 */
}

uint64_t fq_log_lock_word(uint32_t nonce) {
    return (uint64_t)(uint32_t)fq_getpid() | ((uint64_t)(nonce | 1u) << 32);
}

int fq_log_trylock(fq_log_state *st, uint64_t me) {
    if (__atomic_load_n(&st->lock, __ATOMIC_RELAXED) != 0) return 0;
    /* uncontended: no clock read (lock_acquired_ns records waited-for and stolen locks) */
    return fq_cas_u64(&st->lock, 0, me) ? 1 : 0;
}

int fq_log_lock(fq_log_state *st, uint64_t me, int64_t timeout_ns) {
    int64_t start = fq_monotonic_ns();
    int64_t next_check = start + FQ_LOCK_CHECK_NS;
    unsigned spins = 0;
    for (;;) {
        uint64_t cur = __atomic_load_n(&st->lock, __ATOMIC_ACQUIRE);
        if (cur == 0) {
            if (fq_cas_u64(&st->lock, 0, me)) {
                st->lock_acquired_ns = fq_monotonic_ns();
                return 0;
            }
            continue;
        }
        if (spins < 256) {
            spins++;
            fq_cpu_relax();
            continue;
        }
        int64_t now = fq_monotonic_ns();
        if (now >= next_check) {
            next_check = now + FQ_LOCK_CHECK_NS;
            int32_t owner = (int32_t)(uint32_t)(cur & 0xffffffffu);
            if (fq_pid_alive(owner) == 0) {
                /* The owner died holding the lock: take it over. The CAS names the
                 * exact word we saw, so two stealers cannot both win. */
                if (fq_cas_u64(&st->lock, cur, me)) {
                    st->lock_acquired_ns = fq_monotonic_ns();
                    return 1;
                }
                continue;
            }
        }
        if (timeout_ns >= 0 && now - start >= timeout_ns) return FQ_ETIMEDOUT;
        if (spins < 2048) {
            spins++;
            fq_yield();
        } else {
            fq_sleep_ns(20000);
        }
    }
}

void fq_log_unlock(fq_log_state *st, uint64_t me) {
    uint64_t expected = me;
    __atomic_compare_exchange_n(&st->lock, &expected, 0, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED);
}

void fq_log_abandon(fq_log_state *st, uint64_t me) {
    uint64_t expected = me;
    __atomic_compare_exchange_n(&st->lock, &expected, FQ_LOCK_GONE, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED);
}

int fq_log_snapshot_read(const fq_log_state *st, fq_log_snapshot *out, int64_t timeout_ns) {
    int64_t start = -1;
    for (;;) {
        uint64_t s1 = __atomic_load_n(&st->seq, __ATOMIC_ACQUIRE);
        if ((s1 & 1u) == 0) {
            out->next_offset = __atomic_load_n(&st->next_offset, __ATOMIC_RELAXED);
            out->end_pos = __atomic_load_n(&st->end_pos, __ATOMIC_RELAXED);
            out->active_base = __atomic_load_n(&st->active_base, __ATOMIC_RELAXED);
            out->max_timestamp = __atomic_load_n(&st->max_timestamp, __ATOMIC_RELAXED);
            out->index_count = __atomic_load_n(&st->index_count, __ATOMIC_RELAXED);
            out->timeindex_count = __atomic_load_n(&st->timeindex_count, __ATOMIC_RELAXED);
            out->bytes_since_index = __atomic_load_n(&st->bytes_since_index, __ATOMIC_RELAXED);
            out->written_end = __atomic_load_n(&st->written_end, __ATOMIC_RELAXED);
            out->generation = __atomic_load_n(&st->generation, __ATOMIC_RELAXED);
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            uint64_t s2 = __atomic_load_n(&st->seq, __ATOMIC_RELAXED);
            if (s1 == s2) return 0;
        }
        if (start < 0) start = fq_monotonic_ns();
        else if (timeout_ns >= 0 && fq_monotonic_ns() - start >= timeout_ns) return FQ_ETIMEDOUT;
        fq_cpu_relax();
    }
}

void fq_log_commit(fq_log_state *st, const fq_log_snapshot *s) {
    uint64_t seq = __atomic_load_n(&st->seq, __ATOMIC_RELAXED);
    __atomic_store_n(&st->seq, seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&st->next_offset, s->next_offset, __ATOMIC_RELAXED);
    __atomic_store_n(&st->end_pos, s->end_pos, __ATOMIC_RELAXED);
    __atomic_store_n(&st->active_base, s->active_base, __ATOMIC_RELAXED);
    __atomic_store_n(&st->max_timestamp, s->max_timestamp, __ATOMIC_RELAXED);
    __atomic_store_n(&st->index_count, s->index_count, __ATOMIC_RELAXED);
    __atomic_store_n(&st->timeindex_count, s->timeindex_count, __ATOMIC_RELAXED);
    __atomic_store_n(&st->bytes_since_index, s->bytes_since_index, __ATOMIC_RELAXED);
    __atomic_store_n(&st->written_end, s->written_end, __ATOMIC_RELAXED);
    __atomic_store_n(&st->generation, s->generation, __ATOMIC_RELAXED);
    __atomic_store_n(&st->seq, seq + 2, __ATOMIC_RELEASE);
}

void fq_log_repair(fq_log_state *st) {
    uint64_t seq = __atomic_load_n(&st->seq, __ATOMIC_RELAXED);
    if (seq & 1u) __atomic_store_n(&st->seq, seq + 1, __ATOMIC_RELEASE);
}

void fq_log_notify(fq_log_state *st) { fq_notify_bump(&st->notify, &st->waiters); }

static int paced_wait(uint32_t *notify, uint32_t *waiters, uint32_t seen, int64_t timeout_ns,
                      int64_t spin_ns, fq_pace *pace, int pace_window);

int fq_log_wait(fq_log_state *st, int64_t offset, int64_t timeout_ns, int64_t spin_ns, fq_pace *pace,
                int pace_window) {
    /* Every commit bumps `notify` after publishing next_offset, so: read notify, check
     * the offset, then wait for notify to move (fq_notify_wait registers as a waiter and
     * re-checks before sleeping). A commit after our check changes the word, so no wakeup
     * is lost. Spinning watches the notify word, not next_offset, which leaves the commit
     * group's cache line to the writer. */
    int64_t deadline = timeout_ns >= 0 ? fq_monotonic_ns() + timeout_ns : -1;
    int first = pace_window;
    for (;;) {
        uint32_t seen = __atomic_load_n(&st->notify, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&st->next_offset, __ATOMIC_ACQUIRE) > offset) return 1;
        int64_t left = -1;
        if (deadline >= 0) {
            left = deadline - fq_monotonic_ns();
            if (left <= 0) return 0;
        }
        /* sliced, so a waiter whose waker died mid-wake still re-checks */
        if (left < 0 || left > 100000000LL) left = 100000000LL;
        paced_wait(&st->notify, &st->waiters, seen, left, spin_ns, pace, first);
        spin_ns = 0;   /* spin once, and run the paced phase once, on the first slice only; */
        first = 0;     /* every slice still tells the pacer when a commit came */
    }
}

void fq_notify_bump(uint32_t *notify, uint32_t *waiters) {
    __atomic_fetch_add(notify, 1u, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(waiters, __ATOMIC_SEQ_CST) != 0) fq_wake(notify, INT_MAX);
}

/* Gaps longer than this are idle periods, not the arrival rate. */
#define FQ_PACE_MAX_GAP_NS 1000000000LL

/* The median of the last FQ_PACE_GAPS gaps: one stall (a gap of several periods, or a
 * record the reader found already there, so no wait saw it arrive) must not move the
 * expected arrival of the next several records, as a moving average would. */
static int64_t gap_median(const fq_pace *pace) {
    int n = pace->ngaps < FQ_PACE_GAPS ? (int)pace->ngaps : FQ_PACE_GAPS;
    int64_t v[FQ_PACE_GAPS];
    for (int i = 0; i < n; i++) {          /* insertion sort: at most 8 values */
        int64_t x = pace->gaps[i];
        int j = i;
        for (; j > 0 && v[j - 1] > x; j--) v[j] = v[j - 1];
        v[j] = x;
    }
    return v[n / 2];
}

void fq_pace_arrived(fq_pace *pace, int64_t now_ns) {
    /* A record seen while spinning after the expected time may have been sent late;
     * the sender's next one will most likely come on its old beat, so the pace moves
     * by at most half a margin per arrival (cap_ns). A pace that really moved later
     * ends up after the window, and that arrival re-anchors it at once. */
    int64_t at = now_ns;
    if (pace->cap_ns > 0 && at > pace->cap_ns) at = pace->cap_ns;
    pace->cap_ns = 0;
    if (pace->last_ns > 0) {
        int64_t gap = at - pace->last_ns;
        if (gap > 0 && gap < FQ_PACE_MAX_GAP_NS) {
            pace->gaps[pace->ngaps % FQ_PACE_GAPS] = gap;
            pace->ngaps++;
            pace->gap_ns = gap_median(pace);
        }
    }
    pace->last_ns = at;
}

/* Spin until *notify != seen (1) or the monotonic clock passes `until` (0). */
static int spin_until(const uint32_t *notify, uint32_t seen, int64_t until) {
    for (unsigned i = 0;; i++) {
        if (__atomic_load_n(notify, __ATOMIC_ACQUIRE) != seen) return 1;
        fq_cpu_relax();
        if ((i & 63) == 63 && fq_monotonic_ns() >= until) return 0;
    }
}

/* Register as a waiter and sleep on the futex until *notify != seen (1) or `left_ns`
 * passes (0); left_ns < 0 waits one 100 ms slice. */
static int sleep_once(uint32_t *notify, uint32_t *waiters, uint32_t seen, int64_t left_ns) {
    __atomic_fetch_add(waiters, 1u, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(notify, __ATOMIC_SEQ_CST) != seen) {
        __atomic_fetch_sub(waiters, 1u, __ATOMIC_SEQ_CST);
        return 1;
    }
    if (left_ns < 0 || left_ns > 100000000LL) left_ns = 100000000LL;
    fq_wait(notify, seen, left_ns);
    __atomic_fetch_sub(waiters, 1u, __ATOMIC_SEQ_CST);
    return __atomic_load_n(notify, __ATOMIC_ACQUIRE) != seen;
}

/* The paced part of a wait: 2 if the word changed while we spun (so now is when it
 * came, within a spin step: an exact anchor for the next expected arrival), 1 if it
 * changed while we slept or before we looked (seen late, by a wake-up's worth), 0 if
 * not by the end of the window. After an arrival seen late (or after the window) the
 * pace is off by up to a wake-up, and a plain margin would make the next sleep end after
 * the next arrival again, so one late wake-up would pull the next one late (on a busy
 * VM wake-ups of 50-150 us are common, more than the margin). `resync` makes the next
 * window start earlier, half a gap (at most 8 margins) before the expected arrival, so
 * the next record is seen while spinning and anchors the pace again. */
static int paced(uint32_t *notify, uint32_t *waiters, uint32_t seen, int64_t deadline, fq_pace *pace) {
    int64_t now = fq_monotonic_ns();
    int64_t expected = pace->last_ns + pace->gap_ns;
    int64_t margin = pace->margin_ns, lead = margin;
    if (pace->resync) {
        lead = pace->gap_ns / 2;
        if (lead > 8 * margin) lead = 8 * margin;
        if (lead < margin) lead = margin;
    }
    int64_t early = expected - lead, until = expected + margin;
    if (deadline >= 0 && until > deadline) until = deadline;
    if (deadline >= 0 && early > deadline) early = deadline;   /* never sleep past the timeout */
    if (now >= until) return 0;                      /* the window is behind us */
    int slept = now < early;
    if (slept) {
        /* timer slack (50 us by default) would make the timed sleep overshoot the window */
        int64_t slack = fq_timer_slack(1000);
        while (now < early) {
            if (sleep_once(notify, waiters, seen, early - now)) {
                fq_timer_slack(slack);
                return 1;
            }
            now = fq_monotonic_ns();
        }
        fq_timer_slack(slack);
    }
    if (slept && __atomic_load_n(notify, __ATOMIC_ACQUIRE) != seen) return 1;   /* came during the sleep */
    if (!spin_until(notify, seen, until)) return 0;
    pace->cap_ns = expected + margin / 2;
    return 2;
}

/* `pace_window`: run the paced phase (only on the first slice of a wait: later slices
 * are past the expected arrival anyway). */
static int notify_wait(uint32_t *notify, uint32_t *waiters, uint32_t seen, int64_t timeout_ns,
                       int64_t spin_ns, fq_pace *pace, int pace_window) {
    int64_t now = fq_monotonic_ns();
    int64_t deadline = timeout_ns >= 0 ? now + timeout_ns : -1;
    if (pace != NULL && pace_window && pace->last_ns > 0 && pace->gap_ns > spin_ns && pace->margin_ns > 0) {
        int rc = paced(notify, waiters, seen, deadline, pace);
        pace->resync = rc != 2;
        if (rc) {
            pace->early++;
            if (rc == 1) pace->woken++;
            return 1;
        }
        spin_ns = 0;                                 /* the window was the spin */
        pace->late++;
    }
    if (spin_ns > 0) {
        int64_t spin_end = now + spin_ns;
        if (deadline >= 0 && deadline < spin_end) spin_end = deadline;
        if (spin_until(notify, seen, spin_end)) return 1;
    }
    for (;;) {
        int64_t left = -1;
        if (deadline >= 0) {
            left = deadline - fq_monotonic_ns();
            if (left <= 0) return __atomic_load_n(notify, __ATOMIC_ACQUIRE) != seen;
        }
        if (sleep_once(notify, waiters, seen, left)) return 1;
    }
}

static int paced_wait(uint32_t *notify, uint32_t *waiters, uint32_t seen, int64_t timeout_ns,
                      int64_t spin_ns, fq_pace *pace, int pace_window) {
    int rc = notify_wait(notify, waiters, seen, timeout_ns, spin_ns, pace, pace_window);
    if (rc == 1 && pace != NULL) fq_pace_arrived(pace, fq_monotonic_ns());
    return rc;
}

int fq_notify_wait(uint32_t *notify, uint32_t *waiters, uint32_t seen, int64_t timeout_ns,
                   int64_t spin_ns, fq_pace *pace, int pace_window) {
    return paced_wait(notify, waiters, seen, timeout_ns, spin_ns, pace, pace_window);
}
