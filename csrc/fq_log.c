/* fq_log.c — writer lock, seqlock commit and tail notification of a log's shared state.
 * See fq_log.h for the layout and the protocol. */
#include "fq_log.h"
#include "fq_os.h"
#include "fq_status.h"

#include <stddef.h>
#include <limits.h>

_Static_assert(sizeof(fq_log_state) <= FQ_STATE_SIZE, "state must fit its file");
_Static_assert(offsetof(fq_log_state, lock) == 64, "lock on cache line 1");
_Static_assert(offsetof(fq_log_state, seq) == 128, "commit group on cache line 2");
_Static_assert(offsetof(fq_log_state, notify) == 256, "notify on cache line 4");
_Static_assert(offsetof(fq_log_state, recovery_point) == 320, "durability on cache line 5");

uint64_t fq_log_lock_word(uint32_t nonce) {
    return (uint64_t)(uint32_t)fq_getpid() | ((uint64_t)(nonce | 1u) << 32);
}

int fq_log_trylock(fq_log_state *st, uint64_t me) {
    if (__atomic_load_n(&st->lock, __ATOMIC_RELAXED) != 0) return 0;
    if (fq_cas_u64(&st->lock, 0, me)) {
        st->lock_acquired_ns = fq_monotonic_ns();
        return 1;
    }
    return 0;
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

int fq_log_wait(fq_log_state *st, int64_t offset, int64_t timeout_ns, int64_t spin_ns) {
    /* Every commit bumps `notify` after publishing next_offset, so: read notify, check
     * the offset, then wait for notify to move (fq_notify_wait registers as a waiter and
     * re-checks before sleeping). A commit after our check changes the word, so no wakeup
     * is lost. Spinning watches the notify word, not next_offset, which leaves the commit
     * group's cache line to the writer. */
    int64_t deadline = timeout_ns >= 0 ? fq_monotonic_ns() + timeout_ns : -1;
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
        fq_notify_wait(&st->notify, &st->waiters, seen, left, spin_ns);
        spin_ns = 0;   /* spin once, on the first wait only */
    }
}

void fq_notify_bump(uint32_t *notify, uint32_t *waiters) {
    __atomic_fetch_add(notify, 1u, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(waiters, __ATOMIC_SEQ_CST) != 0) fq_wake(notify, INT_MAX);
}

int fq_notify_wait(uint32_t *notify, uint32_t *waiters, uint32_t seen, int64_t timeout_ns,
                   int64_t spin_ns) {
    int64_t now = fq_monotonic_ns();
    int64_t deadline = timeout_ns >= 0 ? now + timeout_ns : -1;
    if (spin_ns > 0) {
        int64_t spin_end = now + spin_ns;
        if (deadline >= 0 && deadline < spin_end) spin_end = deadline;
        for (unsigned i = 0;; i++) {
            if (__atomic_load_n(notify, __ATOMIC_ACQUIRE) != seen) return 1;
            fq_cpu_relax();
            if ((i & 63) == 63 && fq_monotonic_ns() >= spin_end) break;
        }
    }
    for (;;) {
        __atomic_fetch_add(waiters, 1u, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(notify, __ATOMIC_SEQ_CST) != seen) {
            __atomic_fetch_sub(waiters, 1u, __ATOMIC_SEQ_CST);
            return 1;
        }
        int64_t left = -1;
        if (deadline >= 0) {
            left = deadline - fq_monotonic_ns();
            if (left <= 0) {
                __atomic_fetch_sub(waiters, 1u, __ATOMIC_SEQ_CST);
                return 0;
            }
        }
        if (left < 0 || left > 100000000LL) left = 100000000LL;
        fq_wait(notify, seen, left);
        __atomic_fetch_sub(waiters, 1u, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(notify, __ATOMIC_ACQUIRE) != seen) return 1;
    }
}
