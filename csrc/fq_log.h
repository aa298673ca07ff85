/* fq_log.h — the shared state of one log directory and its writer lock.
 *
 * Every process that opens a log maps the same `fastq.state` file (FQ_STATE_SIZE bytes,
 * host byte order — little-endian on every supported platform; the file is not meant
 * to be copied across endianness). It holds the committed end of the log, which readers
 * load without locks, and the writer lock, which serializes appends from any number of
 * threads and processes without a system call when uncontended.
 *
 * Layout (byte offsets; each group on its own 64-byte cache line):
 *   0    magic "FQSTATE1" | version u32 | size u32 | flags u32 | clean_crc u32 | created_ms i64 |
 *        boot_id [16]u8 (which boot of the machine last opened the log)
 *   64   lock u64 (0 = free, else owner pid in the low 32 bits, a nonce in the high 32)
 *        lock_acquired_ns i64 (monotonic time the lock was last taken after a wait or
 *                         a steal; diagnostic — an uncontended take skips the clock)
 *   128  seq u64            seqlock over the commit group below (odd = update in progress)
 *        next_offset i64    committed log end offset: every offset below it is readable
 *        end_pos i64        committed byte end inside the active segment
 *        active_base i64    base offset of the active segment
 *        max_timestamp i64  largest record timestamp in the active segment (-1 none)
 *        index_count u32, timeindex_count u32   valid entries in the active indexes
 *        bytes_since_index i64  bytes appended since the last .index entry
 *        written_end i64    high-water of bytes ever written into the active segment
 *        generation u64     bumped whenever the segment list changes (roll, retention,
 *                           truncation, recovery): readers rescan the directory then
 *   256  notify u32         bumped after every commit; tailing readers futex-wait on it
 *        waiters u32        readers currently sleeping on `notify` (writers skip the wake
 *                           syscall when 0)
 *   320  recovery_point i64 every offset below it has been fsynced (durable watermark)
 *        log_start_offset i64 first offset still retained
 *        opens u64           number of opens (diagnostic)
 *
 * Clean close: the last process to close sets FQ_STATE_FLAG_CLEAN and FQ_STATE_FLAG_CHECKED
 * and stores clean_crc = fq_log_state_crc(): CRC-32C of line 0 (but clean_crc itself),
 * lines 2-3 (the commit group) and line 5 — everything that is still when no process has
 * the log open (the lock word and the notify words are not). The next process to open
 * the log trusts a clean state only if that CRC matches: a damaged file (a flipped bit
 * in next_offset) is then reported as damage of fastq.state, not of the segments it
 * would misjudge. Opening clears both flags. A state written before the checksum has
 * FQ_STATE_FLAG_CHECKED clear (clean_crc was padding) and is trusted as before.
 *
 * Writer protocol: acquire the lock; append bytes at end_pos (raising written_end
 * first); fq_log_commit() publishes (next_offset, end_pos, ...) under the seqlock; bump
 * notify and wake sleepers; release. A writer killed while holding the lock leaves only
 * uncommitted bytes past end_pos: the next writer detects the dead owner (its pid no
 * longer exists) after FQ_LOCK_CHECK_NS of waiting, steals the lock and repairs
 * (fq_log_repair: closes an odd seqlock, the caller zeroes [end_pos, written_end)).
 */
#ifndef FQ_LOG_H
#define FQ_LOG_H
#include <stddef.h>
#include <stdint.h>

#define FQ_STATE_SIZE 4096
#define FQ_STATE_VERSION 1
#define FQ_STATE_FLAG_CLEAN 0x1u      /* the last process closed the log cleanly */
#define FQ_STATE_FLAG_CHECKED 0x2u    /* clean_crc holds fq_log_state_crc() of the clean state */
#define FQ_LOCK_CHECK_NS 1000000LL    /* check the owner's liveness every 1 ms of waiting */
#define FQ_LOCK_GONE (1ull << 32)     /* a lock word whose owner (pid 0) never exists */

typedef struct fq_log_state {
    /* line 0: identity */
    char magic[8];
    uint32_t version;
    uint32_t size;
    uint32_t flags;
    uint32_t clean_crc;    /* see "Clean close" above */
    int64_t created_ms;
    uint8_t boot_id[16];   /* boot the commit group was last written in (see fastq/log.py) */
    uint8_t _pad1[16];
    /* line 1: writer lock */
    uint64_t lock;
    int64_t lock_acquired_ns;
    uint8_t _pad2[48];
    /* line 2-3: committed end, under the seqlock */
    uint64_t seq;
    int64_t next_offset;
    int64_t end_pos;
    int64_t active_base;
    int64_t max_timestamp;
    uint32_t index_count;
    uint32_t timeindex_count;
    int64_t bytes_since_index;
    int64_t written_end;
    uint64_t generation;
    uint8_t _pad3[56];
    /* line 4: notification */
    uint32_t notify;
    uint32_t waiters;
    uint8_t _pad4[56];
    /* line 5: durability and retention */
    int64_t recovery_point;
    int64_t log_start_offset;
    uint64_t opens;
    uint8_t _pad5[40];
} fq_log_state;

/* A consistent copy of the commit group. */
typedef struct fq_log_snapshot {
    int64_t next_offset;
    int64_t end_pos;
    int64_t active_base;
    int64_t max_timestamp;
    uint32_t index_count;
    uint32_t timeindex_count;
    int64_t bytes_since_index;
    int64_t written_end;
    uint64_t generation;
} fq_log_snapshot;

/* CRC-32C of the parts of the state that are still while no process has the log open
 * (see "Clean close" above). */
uint32_t fq_log_state_crc(const fq_log_state *st);

/* Try once to take the lock. Returns 1 on success, 0 when held. */
int fq_log_trylock(fq_log_state *st, uint64_t me);
/* Take the lock, waiting (spin, then yield, then short sleeps) for at most timeout_ns
 * (< 0: forever). While waiting, every FQ_LOCK_CHECK_NS the owner's pid is checked;
 * a dead owner's lock is stolen. Returns 0 (taken), 1 (taken by stealing from a dead
 * owner: the caller must repair before appending), FQ_ETIMEDOUT. Call without the GIL. */
int fq_log_lock(fq_log_state *st, uint64_t me, int64_t timeout_ns);
void fq_log_unlock(fq_log_state *st, uint64_t me);
/* Give up a lock taken by stealing (fq_log_lock returned 1) without repairing: it goes
 * to FQ_LOCK_GONE, an owner that does not exist, so the next taker steals it in turn and
 * repairs. For a handle closed while it waited for the lock. */
void fq_log_abandon(fq_log_state *st, uint64_t me);
/* A lock word for this process: pid | nonce << 32. */
uint64_t fq_log_lock_word(uint32_t nonce);

/* Read the commit group consistently (retries while a writer is mid-commit; a dead
 * writer's odd seqlock is waited out at most `timeout_ns`, then FQ_ETIMEDOUT). */
int fq_log_snapshot_read(const fq_log_state *st, fq_log_snapshot *out, int64_t timeout_ns);
/* Publish a new commit group (caller holds the lock). */
void fq_log_commit(fq_log_state *st, const fq_log_snapshot *s);
/* After stealing the lock: make the seqlock even again. */
void fq_log_repair(fq_log_state *st);
/* Bump notify and wake sleepers if any. */
void fq_log_notify(fq_log_state *st);
/* Adaptive ("paced") waiting, for readers that want low latency without spinning all
 * the time. A waiter that sleeps pays the wake-up: on a VM, 10-50 us for a vCPU to come
 * out of halt, whether a futex wake or a timer ends the sleep. A fq_pace learns the gap
 * between arrivals (the median of the last 8 gaps between the times waits ended with new
 * data) and, when that gap is longer than the plain spin, sleeps on the futex only until
 * `margin_ns` before the next expected arrival (a record that comes earlier still wakes
 * it), then spins until `margin_ns` after it; a record later than that is waited for on
 * the futex as usual. Cost: up to 2 * margin_ns of spinning per arrival (at 5,000
 * arrivals/s and a 50 us margin, at most half a core).
 * Robust to a sender's jitter and to slow wake-ups (see paced() and fq_pace_arrived() in
 * fq_log.c): a record seen late in the window moves the pace by at most half a margin;
 * after an arrival seen late (it came during the sleep, or after the window) the next
 * window opens half a gap (at most 8 margins) before the expected arrival.
 * The paced phase runs in a wait's first 100 ms slice, so it helps for gaps up to
 * ~100 ms; a wait never sleeps past its timeout. Owned by one waiter; not shared.
 * Zero it all but margin_ns to start (or forget) a pace. */
#define FQ_PACE_GAPS 8
typedef struct fq_pace {
    int64_t last_ns;      /* monotonic time the previous arrival is reckoned at (0: none) */
    int64_t gap_ns;       /* median of the last gaps between arrivals (0: unknown) */
    int64_t margin_ns;    /* spin window on each side of the expected arrival */
    int64_t early;        /* arrivals seen in the spin window or earlier (statistics) */
    int64_t late;         /* arrivals that came after the window, through the futex */
    int64_t woken;        /* of the early ones, those that came while it slept (seen late) */
    int64_t resync;       /* 1: the last arrival was seen late; the next window opens early */
    int64_t cap_ns;       /* set by a wait that saw its record while spinning (else 0) */
    int64_t gaps[FQ_PACE_GAPS];   /* the last gaps, a ring */
    int64_t ngaps;        /* gaps recorded so far */
} fq_pace;

/* Wait until next_offset > offset or timeout. Spins (cpu_relax, no syscall) for up to
 * spin_ns first — a tailing reader at high rates then never sleeps, and one that does
 * sleep wakes through the futex. With a `pace` (may be NULL), waits as described above;
 * `pace_window` 0 skips the paced phase (a caller waiting in slices passes 1 on its first
 * slice only; every slice still tells the pacer when data came).
 * Returns 1 if data is there, 0 on timeout. */
int fq_log_wait(fq_log_state *st, int64_t offset, int64_t timeout_ns, int64_t spin_ns, fq_pace *pace,
                int pace_window);

/* The same bump/wake and wait protocol on any (notify, waiters) word pair in shared
 * memory — e.g. a topic-wide word that commits to every partition bump, so a consumer
 * of several partitions sleeps on one futex. */
void fq_notify_bump(uint32_t *notify, uint32_t *waiters);
/* Sleep until *notify != seen or timeout (spinning up to spin_ns first; paced when
 * `pace` is not NULL and `pace_window`, as fq_log_wait). Returns 1 when the word changed,
 * 0 on timeout. */
int fq_notify_wait(uint32_t *notify, uint32_t *waiters, uint32_t seen, int64_t timeout_ns,
                   int64_t spin_ns, fq_pace *pace, int pace_window);
/* Tell `pace` new data was seen at monotonic time now_ns, after a wait that found none. */
void fq_pace_arrived(fq_pace *pace, int64_t now_ns);

#endif
