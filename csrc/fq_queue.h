/* fq_queue.h — the shared state of one message queue: per-message delivery state over
 * the queue's logs, leases, the delay heap and the deduplication table.
 *
 * A queue (fastq.queue) stores its messages in ordinary fastq logs, one per *lane*:
 * partition p has FQ_Q_PRIORITIES priority lanes (lane p*FQ_Q_LANES + prio) and one
 * delayed lane (p*FQ_Q_LANES + FQ_Q_DELAYED). Which message is where in its life lives
 * here, in one file `queue.state` that every process opening the queue maps MAP_SHARED.
 * Native byte order (little-endian on every supported platform); the file never leaves
 * the machine. The model is Kafka's share groups (KIP-932): records stay in the log;
 * state is kept only for a sliding *window* of each lane.
 *
 * Layout (byte offsets; fq_q_layout() computes the variable part):
 *   0     header line 0: magic "FQQUEUE1" | version u32 | partitions u32 | window u32 |
 *         delay_window u32 | max_sessions u32 | dedup_capacity u32 | size u64 (whole file)
 *   64    lock u32 (0 = free, else the holder's pid) | flags u32 | lock_steals u64
 *   128   reserved (waiting uses the queue's `notify` file, a fastq Notifier)
 *   192   heap_len u64 | dedup_used u64 | reserved
 *   256   intent: op u32 | lane u32 | offset i64 | dst_lane u32 | pad u32 | dst_end i64 |
 *         deliveries u32 | pad u32   (a copy in progress, see "Copies" below)
 *   512   limits (fq_q_limits, 64 bytes): max_depth i64 | max_bytes i64 | high i64 | low i64 |
 *         block_timeout_us i64 | overflow u32 | over u32 | pad   (see "Limits" below)
 *   576   drain: next u32 | pad u32 | last_ms i64 | samples[FQ_Q_DRAIN_SAMPLES] of
 *         (ms i64, settled i64)   (see "Drain rate" below)
 *   4096  lanes[partitions * FQ_Q_LANES], 64 bytes each (fq_q_lane)
 *   then  sessions[max_sessions], 32 bytes each (fq_q_session)
 *   then  slots: for every lane in order, a ring of fq_q_slot (16 bytes) indexed by
 *         offset & (ring - 1); ring = window for a priority lane, delay_window for a
 *         delayed lane. Both powers of two.
 *   then  heap[partitions * delay_window] of fq_q_heap_entry (16 bytes): a binary
 *         min-heap on (due_ms, ref) of the delayed messages not yet promoted
 *   then  dedup[dedup_capacity] of fq_q_dedup (32 bytes): open addressing, linear probe
 *
 * A lane's window: every offset below `spso` is settled (acknowledged, dead-lettered,
 * rejected, moved or purged); every offset at or above `speo` has never been delivered
 * (available, delivery count 0). Only [spso, speo) has slots, and speo - spso <= ring.
 * A delivery takes the lowest AVAILABLE slot in the window whose `deadline_ms` has
 * passed, else the record at speo (speo += 1). A full window (speo - spso == ring) stops
 * new deliveries from that lane until its oldest message is settled: the bound on
 * messages in flight per lane, like SQS's in-flight limit.
 *
 * Slot states: ACQUIRED (leased to session `owner` until deadline_ms), AVAILABLE (back
 * after a nack, an expired lease or its owner's death; not before deadline_ms), ACKED
 * (settled: acked, or moved on as a copy, or purged), ARCHIVED (settled as dead:
 * dead-lettered or rejected, counted in the lane's `dead` by fq_q_settle; a promoted
 * delayed message's source is ARCHIVED by fq_q_heap_pop, which counts nothing dead),
 * WAITING (delayed lane: in the heap until due).
 * `deliveries` counts deliveries; a lease is named by (lane, offset, deliveries), so an
 * ack after the lease was taken over finds a higher count and fails (FQ_ESTALE) instead
 * of acking the new holder's delivery.
 *
 * Lock: one pid word serializes every change. A holder killed inside a critical section
 * leaves at most one slot and some counters half-updated: the next taker finds the pid
 * dead (checked every FQ_Q_LOCK_CHECK_NS of waiting), takes the lock over (return 1 from
 * fq_q_lock) and runs fq_q_repair, which recounts every lane from its slots and rebuilds
 * the heap from the delayed lanes' WAITING slots. Slots and spso/speo are the truth;
 * counters, hints and the heap are derived. Each operation writes its slot before it
 * moves speo/spso, so a half-done one is either invisible (slot beyond speo) or whole.
 *
 * Copies (promotion of a due delayed message, a nack with delay, dead-lettering) append
 * to another log while holding the lock. The intent block names the source slot and the
 * destination log's end before the append; it is cleared after the source is settled.
 * After a takeover the Python layer checks the destination record at dst_end: if it is
 * the copy, the source is settled, else the copy never happened. Exactly one copy.
 * A publish with a dedup id uses the same block (op DEDUP, no source): its record carries
 * the id's hash, and a taker that finds the record records the id in the dedup table,
 * so a retry of the killed publish stores nothing.
 *
 * Limits (bounded queues, fastq.queue "Bounded queues"): written under the lock by whoever
 * sets them, read lock-free by every publisher. All zero (the state of a file made before
 * they existed: the bytes were reserved and zeroed) means unbounded and no watermarks, so
 * files of either age open with the same version. `over` is the watermark state with
 * hysteresis: set when the depth reaches `high`, cleared when it falls to `low`; any
 * process that computes the depth moves it (under the lock).
 *
 * Drain rate: `samples` is a ring of (wall-clock ms, settled messages of the priority
 * lanes so far), one sample at most every FQ_Q_DRAIN_EVERY_MS, appended under the lock by
 * fq_q_drain_sample (consumers' housekeeping, signals(), a refused publish). Every process
 * reads the same history, so the rate is measured across processes: fq_q_drain_rate
 * takes the difference between now and the oldest sample of the last window. The settled
 * counters are not recounted by a repair; a half-done settle killed mid-way may leave one
 * uncounted, which only nudges the rate.
 *
 * All functions return >= 0 on success or a negative FQ_E... status (fq_status.h). The
 * caller holds the lock for every function but fq_q_lock/fq_q_layout/fq_q_init.
 */
#ifndef FQ_QUEUE_H
#define FQ_QUEUE_H
#include <stddef.h>
#include <stdint.h>

#define FQ_Q_MAGIC "FQQUEUE1"
#define FQ_Q_VERSION 1
#define FQ_Q_HDR_SIZE 4096
#define FQ_Q_PRIORITIES 10          /* priorities 0..9, higher first */
#define FQ_Q_DELAYED 10             /* lane index of the delayed lane inside a partition */
#define FQ_Q_LANES 11               /* lanes per partition */
#define FQ_Q_MAX_PARTITIONS 256
#define FQ_Q_MAX_SESSIONS 4096
#define FQ_Q_LOCK_CHECK_NS 1000000LL
#define FQ_Q_NO_OWNER 0xFFFFu

enum { FQ_Q_FREE = 0, FQ_Q_AVAILABLE = 1, FQ_Q_ACQUIRED = 2, FQ_Q_ACKED = 3,
       FQ_Q_ARCHIVED = 4, FQ_Q_WAITING = 5 };
enum { FQ_Q_OP_NONE = 0, FQ_Q_OP_PROMOTE = 1, FQ_Q_OP_MOVE = 2, FQ_Q_OP_DEADLETTER = 3,
       FQ_Q_OP_DEDUP = 4 };  /* DEDUP: a publish with a dedup id; dst_lane/dst_end name its append */
#define FQ_Q_FLAG_DIRTY 0x1u        /* repair needed (a holder died, or a repair did) */
enum { FQ_Q_OVERFLOW_REJECT = 0, FQ_Q_OVERFLOW_BLOCK = 1, FQ_Q_OVERFLOW_DROP_OLDEST = 2 };
#define FQ_Q_DRAIN_SAMPLES 32
#define FQ_Q_DRAIN_EVERY_MS 250

typedef struct fq_q_slot {
    uint8_t state;
    uint8_t _pad;
    uint16_t owner;        /* session index of the lease holder (ACQUIRED) */
    uint32_t deliveries;   /* times delivered so far */
    int64_t deadline_ms;   /* ACQUIRED: lease end; AVAILABLE: not before; WAITING: due */
} fq_q_slot;

typedef struct fq_q_lane {
    int64_t spso;          /* every offset below is settled */
    int64_t speo;          /* offsets from here on were never delivered */
    int64_t available;     /* AVAILABLE (delayed lane: WAITING) slots in the window */
    int64_t acquired;      /* ACQUIRED slots in the window */
    int64_t next_expiry_ms;/* <= the earliest ACQUIRED deadline (INT64_MAX: none) */
    int64_t avail_hint;    /* no AVAILABLE slot below this offset */
    int64_t settled;       /* messages settled so far (diagnostic) */
    int64_t dead;          /* of which dead-lettered or rejected (diagnostic) */
} fq_q_lane;

typedef struct fq_q_session {
    uint32_t pid;          /* process of the session (diagnostic; liveness is its flock) */
    uint32_t live;         /* 1 while claimed */
    int64_t inflight;      /* ACQUIRED slots it holds */
    int64_t claimed_ms;
    int64_t _pad;
} fq_q_session;

typedef struct fq_q_heap_entry {
    int64_t due_ms;
    uint64_t ref;          /* lane << 48 | offset */
} fq_q_heap_entry;

typedef struct fq_q_dedup {
    uint64_t h1, h2;       /* 128-bit hash of the dedup id; h1 == 0: never used */
    int64_t expire_ms;     /* entry is dead from here on */
    uint64_t id;           /* message id the first publish returned */
} fq_q_dedup;

typedef struct fq_q_intent {
    uint32_t op;
    uint32_t lane;
    int64_t offset;
    uint32_t dst_lane;
    uint32_t _pad;
    int64_t dst_end;
    uint32_t deliveries;
    uint32_t _pad2;
} fq_q_intent;

typedef struct fq_q_limits {
    int64_t max_depth;         /* unsettled messages allowed (0: unbounded) */
    int64_t max_bytes;         /* estimated stored bytes allowed (0: unbounded) */
    int64_t high;              /* watermarks (high 0: none) */
    int64_t low;
    int64_t block_timeout_us;  /* overflow "block": how long a publish waits */
    uint32_t overflow;         /* FQ_Q_OVERFLOW_* */
    uint32_t over;             /* 1: reached high, not yet back to low */
    uint8_t _pad[16];
} fq_q_limits;

typedef struct fq_q_drain_point {
    int64_t ms;
    int64_t settled;
} fq_q_drain_point;

typedef struct fq_q_drain {
    uint32_t next;             /* samples written so far (index next % FQ_Q_DRAIN_SAMPLES next) */
    uint32_t _pad;
    int64_t last_ms;           /* time of the latest sample (0: none) */
    fq_q_drain_point samples[FQ_Q_DRAIN_SAMPLES];
} fq_q_drain;

typedef struct fq_q_hdr {
    char magic[8];
    uint32_t version;
    uint32_t partitions;
    uint32_t window;
    uint32_t delay_window;
    uint32_t max_sessions;
    uint32_t dedup_capacity;
    uint64_t size;
    uint8_t _pad0[24];
    /* @64 */
    uint32_t lock;
    uint32_t flags;
    uint64_t lock_steals;
    uint8_t _pad1[48];
    /* @128 */
    uint8_t _pad2[64];
    /* @192 */
    uint64_t heap_len;
    uint64_t dedup_used;
    uint8_t _pad3[48];
    /* @256 */
    fq_q_intent intent;
    uint8_t _pad4[512 - 256 - sizeof(fq_q_intent)];
    /* @512 */
    fq_q_limits limits;
    /* @576 */
    fq_q_drain drain;
    uint8_t _pad5[FQ_Q_HDR_SIZE - 576 - sizeof(fq_q_drain)];
} fq_q_hdr;

/* A mapped queue state: pointers into the mapping, computed by fq_q_attach. */
typedef struct fq_q {
    fq_q_hdr *hdr;
    fq_q_lane *lanes;
    fq_q_session *sessions;
    fq_q_slot *slots;      /* all lanes' rings */
    fq_q_heap_entry *heap;
    fq_q_dedup *dedup;
    uint32_t me;           /* our pid, for the lock word */
} fq_q;

/* Bytes of a state file for this geometry, or FQ_EINVAL (window and delay_window powers
 * of two >= 16, partitions 1..FQ_Q_MAX_PARTITIONS, sessions 1..FQ_Q_MAX_SESSIONS,
 * dedup_capacity a power of two >= 16). */
int64_t fq_q_layout(uint32_t partitions, uint32_t window, uint32_t delay_window,
                    uint32_t max_sessions, uint32_t dedup_capacity);
/* Write a fresh header into a zeroed mapping of fq_q_layout() bytes (magic last). */
int fq_q_init(void *map, uint32_t partitions, uint32_t window, uint32_t delay_window,
              uint32_t max_sessions, uint32_t dedup_capacity);
/* Check a mapping of `size` bytes and fill `q`. FQ_EMAGIC / FQ_ECORRUPT when it is not a
 * queue state of a geometry that fits `size`. */
int fq_q_attach(fq_q *q, void *map, uint64_t size);

/* Take the lock, waiting up to timeout_ns (< 0: forever). 0 = taken, 1 = taken over
 * from a dead holder (call fq_q_repair before anything else), FQ_ETIMEDOUT. */
int fq_q_lock(fq_q *q, int64_t timeout_ns);
void fq_q_unlock(fq_q *q);
/* Recount lanes from slots, rebuild the heap, clear FQ_Q_FLAG_DIRTY. */
int fq_q_repair(fq_q *q);
/* The lane's log ends at log_end, before the window's end: its tail is gone (a power
 * failure took what the kernel had not written back, under durability "os"). Forget the
 * slots from log_end on (speo = log_end; spso too when it was beyond) so the offsets the
 * log hands out next are new messages, then repair (counters, sessions, the heap).
 * Returns how many offsets of the window were dropped (0: nothing to do). */
int64_t fq_q_lane_truncate(fq_q *q, uint32_t lane, int64_t log_end);

/* Deliver from `lane` whose log ends at log_end: the lowest due AVAILABLE slot, else the
 * record at speo. Leases it to `owner` until now_ms + lease_ms. Returns the offset and
 * the delivery count in *deliveries; FQ_EEMPTY when nothing is due; FQ_EFULL when only
 * new records remain and the window is full. */
int64_t fq_q_acquire(fq_q *q, uint32_t lane, int64_t log_end, uint32_t owner, int64_t now_ms,
                     int64_t lease_ms, uint32_t *deliveries);
/* Settle the lease (lane, offset, deliveries) held by `owner`: new_state ACKED or
 * ARCHIVED, or AVAILABLE (not before not_before_ms) to deliver it again. FQ_ESTALE when
 * that lease is not current (settled, expired and taken again, or never given). */
int fq_q_settle(fq_q *q, uint32_t lane, int64_t offset, uint32_t deliveries, uint32_t owner,
                int new_state, int64_t not_before_ms);
/* Settle any message of the window that is not ACQUIRED (purge, redrive of an AVAILABLE
 * one): 1 if it was settled here, 0 if it was not in a settleable state. */
int fq_q_settle_any(fq_q *q, uint32_t lane, int64_t offset, int new_state);
/* Move a lease's deadline to deadline_ms. FQ_ESTALE as for fq_q_settle. */
int fq_q_extend(fq_q *q, uint32_t lane, int64_t offset, uint32_t deliveries, uint32_t owner,
                int64_t deadline_ms);
/* Make every lease of `lane` that ended before now_ms, or that `dead_owner` holds
 * (FQ_Q_NO_OWNER: none), AVAILABLE again. Returns how many. */
int64_t fq_q_expire(fq_q *q, uint32_t lane, int64_t now_ms, uint32_t dead_owner);
/* The slot of (lane, offset) as (state, deliveries, owner, deadline); FQ_EINVAL outside
 * the window (below spso: settled; at or above speo: never delivered). */
int fq_q_slot_get(fq_q *q, uint32_t lane, int64_t offset, fq_q_slot *out);

/* Delayed lanes. Track the delayed record at `offset` (== the lane's speo) due at
 * due_ms: slot WAITING, pushed on the heap. FQ_EFULL when the delay window is full.
 * For FQ_EINVAL when offset != speo (the caller indexes records in order). */
int fq_q_delay_track(fq_q *q, uint32_t lane, int64_t offset, int64_t due_ms);
/* The earliest delayed message: FQ_EEMPTY or 0 with *due_ms and *ref. A message settled
 * by fq_q_settle_any (a purge) keeps its entry until it is popped (a no-op for the slot)
 * or fq_q_delay_track needs the room: check the slot is WAITING before promoting it. */
int fq_q_heap_peek(fq_q *q, int64_t *due_ms, uint64_t *ref);
/* Remove the earliest delayed message from the heap and settle its slot (ARCHIVED). */
int fq_q_heap_pop(fq_q *q);

/* Deduplication. 1 and *id when (h1, h2) has an entry alive at now_ms, else 0. */
int fq_q_dedup_get(fq_q *q, uint64_t h1, uint64_t h2, int64_t now_ms, uint64_t *id);
/* Record (h1, h2) -> id until expire_ms. Dead entries are reused; the table is rebuilt
 * without them when it is 3/4 used. FQ_EFULL when every entry is alive. */
int fq_q_dedup_put(fq_q *q, uint64_t h1, uint64_t h2, int64_t expire_ms, uint64_t id,
                   int64_t now_ms);

/* AVAILABLE slots of a priority lane that are due at now_ms (a nack's "not before" has
 * passed): what a receive could take now besides the records never delivered. */
int64_t fq_q_available_due(fq_q *q, uint32_t lane, int64_t now_ms);
/* Drain rate. Messages settled from the priority lanes so far (acked, dead, moved, purged). */
int64_t fq_q_settled_total(fq_q *q);
/* Append (now_ms, fq_q_settled_total) to the drain ring unless the latest sample is less
 * than FQ_Q_DRAIN_EVERY_MS old. 1: sampled, 0: too soon. */
int fq_q_drain_sample(fq_q *q, int64_t now_ms);
/* Messages settled per second over the last window_ms: from the oldest sample not older
 * than window_ms (or, when there is none, the newest sample) to (now_ms, settled_now).
 * FQ_EEMPTY when there is no sample at least FQ_Q_DRAIN_EVERY_MS old. */
int fq_q_drain_rate(fq_q *q, int64_t now_ms, int64_t window_ms, double *rate);

#endif
