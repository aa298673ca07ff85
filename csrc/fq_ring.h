/* fq_ring.h — a bounded ring of variable-length messages in shared memory.
 *
 * One mapping holds a 1024-byte header followed by the data area. Every field is in
 * native byte order (little-endian on every platform fastq supports): the mapping never
 * leaves the machine. Byte layout of the header (offsets in bytes, docs/RING.md mirrors it):
 *
 *   line 0 @0    configuration, written once by the creator before `magic`
 *     0   u64 magic          FQ_RING_MAGIC ("fqring01"), stored last with release order
 *     8   u32 version        FQ_RING_VERSION
 *     12  u32 flags          FQ_RING_F_SINGLE_PRODUCER | FQ_RING_F_SINGLE_CONSUMER
 *     16  u64 capacity       data bytes, a power of two
 *     24  u64 region_size    bytes of the whole mapping (header + data + slack)
 *     32  u32 max_message    largest payload accepted (<= capacity - 8)
 *     36  u32 hdr_size       offset of the data area (= FQ_RING_HDR_SIZE)
 *     40  u64 max_messages   message-count bound (0 = bounded by bytes only)
 *     48  i32 creator_pid
 *   line 1 @128  producer side (written by the producer holding prod_lock)
 *     128 u64 tail           monotonic byte counter: end of the last published record
 *     136 u64 puts           messages published so far (monotonic)
 *     144 u64 head_cache     last head the producers saw (saves reading line 2)
 *     152 u64 gets_cache     last `gets` the producers saw
 *     160 u32 prod_lock      0 = free, else the pid of the holding process
 *   line 2 @256  consumer side (written by the consumer holding cons_lock)
 *     256 u64 head           monotonic byte counter: start of the oldest unread record
 *     264 u64 gets           messages consumed so far (monotonic)
 *     272 u64 tail_cache     last tail the consumers saw
 *     280 u32 cons_lock      0 = free, else the pid of the holding process
 *   line 3 @384  not-empty futex: u32 data_seq, u32 cons_waiters
 *   line 4 @512  not-full futex:  u32 space_seq, u32 prod_waiters
 *   line 5 @640  u64 lock_steals  locks taken over from dead holders (diagnostics)
 *   @1024        data area: capacity bytes, then `slack` = align8(max_message) bytes
 *
 * Lines are 128 bytes apart (two 64-byte cache lines: the adjacent-line prefetcher pulls
 * pairs) so producers and consumers never write the same line on the fast path.
 *
 * A record is an 8-byte header (u32 payload length, u32 reserved = 0) and the payload,
 * padded to 8 bytes: record size = 8 + align8(len). A record always starts at an 8-aligned
 * offset `pos & (capacity-1)` and is always contiguous in memory: when it runs past the
 * end of the data area it continues into the slack behind it instead of wrapping. The
 * slack bytes belong to that record's counter range [pos, pos+size), which covers the same
 * number of bytes at the start of the data area; those stay unused for this lap. No
 * padding records, no split copies, and a zero-copy view of any record is one slice.
 * Space accounting: tail - head <= capacity, and (if max_messages) puts - gets <= max.
 *
 * Concurrency: one producer lock and one consumer lock, each a pid word in the header,
 * taken only when the ring allows several producers / consumers (the SPSC fast path takes
 * none). Every change a side makes becomes visible through one release store of tail or
 * head at the end of its critical section, so a process killed inside one leaves nothing
 * half-done: the next taker finds the lock's pid dead (checked every
 * FQ_RING_LOCK_CHECK_NS while it waits), takes the lock over and carries on. A consumer
 * killed mid-read leaves head unmoved: the message is delivered again to the next one.
 *
 * Waiting: busy-spin, spin-then-sched_yield, or spin-then-futex. A sleeper raises the
 * waiter count, reads the seq word, re-checks the condition and only then sleeps on the
 * seq word; the other side publishes, issues a full fence, and if the waiter count is
 * non-zero bumps seq and wakes everyone. Either the sleeper sees the new data in its
 * re-check or the bump makes its futex wait return at once: no wakeup is lost.
 *
 * All functions return >= 0 on success or a negative FQ_E... status (fq_status.h).
 */
#ifndef FQ_RING_H
#define FQ_RING_H

#include <stddef.h>
#include <stdint.h>

#define FQ_RING_MAGIC 0x3130676e69727166ULL   /* bytes "fqring01" read as a little-endian u64 */
#define FQ_RING_MAX_CAPACITY (1ULL << 40)

enum {
    FQ_RING_VERSION = 1,
    FQ_RING_LINE = 128,
    FQ_RING_HDR_SIZE = 1024,
    FQ_RING_REC_HDR = 8,          /* u32 length + u32 reserved */
    FQ_RING_MIN_CAPACITY = 16,
    FQ_RING_MAX_MESSAGE = 0x7FFFFFF0,

    FQ_RING_F_SINGLE_PRODUCER = 1,
    FQ_RING_F_SINGLE_CONSUMER = 2,

    FQ_RING_WAIT_SPIN = 0,        /* spin with a pause instruction until the deadline */
    FQ_RING_WAIT_YIELD = 1,       /* spin spin_ns, then sched_yield in a loop */
    FQ_RING_WAIT_FUTEX = 2,       /* spin spin_ns, then sleep on the futex word */

    /* Internal: the lock is busy and the caller asked for try-lock only (the Cython layer
     * then retries without the GIL). Never surfaced to Python. */
    FQ_RING_EBUSY = -10100,
};

/* How often a lock waiter checks whether the holder's process still exists, and how long a
 * non-blocking call waits for a busy lock before reporting full/empty. */
#define FQ_RING_LOCK_CHECK_NS 500000LL
#define FQ_RING_NOWAIT_LOCK_NS 2000000LL

typedef struct fq_ring_hdr {
    uint64_t magic;
    uint32_t version;
    uint32_t flags;
    uint64_t capacity;
    uint64_t region_size;
    uint32_t max_message;
    uint32_t hdr_size;
    uint64_t max_messages;
    int32_t creator_pid;
    uint8_t _pad0[FQ_RING_LINE - 52];

    uint64_t tail;
    uint64_t puts;
    uint64_t head_cache;
    uint64_t gets_cache;
    uint32_t prod_lock;
    uint8_t _pad1[FQ_RING_LINE - 36];

    uint64_t head;
    uint64_t gets;
    uint64_t tail_cache;
    uint32_t cons_lock;
    uint8_t _pad2[FQ_RING_LINE - 28];

    uint32_t data_seq;
    uint32_t cons_waiters;
    uint8_t _pad3[FQ_RING_LINE - 8];

    uint32_t space_seq;
    uint32_t prod_waiters;
    uint8_t _pad4[FQ_RING_LINE - 8];

    uint64_t lock_steals;
    uint8_t _pad5[FQ_RING_HDR_SIZE - 5 * FQ_RING_LINE - 8];
} fq_ring_hdr;

/* A process-local handle on a mapped ring. Not shared: each process (and each Python Ring
 * object) has its own. The rd_* fields describe a read begun by fq_ring_read_begin. */
typedef struct fq_ring {
    fq_ring_hdr *hdr;       /* start of the mapping */
    uint8_t *data;          /* hdr + hdr_size */
    uint64_t capacity;
    uint64_t mask;          /* capacity - 1 */
    uint64_t max_messages;
    uint32_t max_message;
    uint32_t flags;
    int wait;               /* FQ_RING_WAIT_* */
    int64_t spin_ns;        /* how long YIELD/FUTEX spin before yielding/sleeping */
    uint32_t closing;       /* set by fq_ring_interrupt: waits return FQ_ECLOSED */
    uint32_t rd_active;     /* a read is begun and not yet committed/aborted */
    uint32_t rd_locked;     /* ... and holds cons_lock */
    uint32_t rd_count;      /* messages in the begun read */
    uint64_t rd_head;       /* head after the begun read */
    uint64_t rd_tail;       /* tail seen when the read began */
} fq_ring;

typedef struct fq_ring_iov {
    const void *base;
    uint32_t len;
} fq_ring_iov;

/* Bytes of mapping needed for a ring, or 0 if capacity/max_message are out of range. */
uint64_t fq_ring_region_size(uint64_t capacity, uint32_t max_message);
/* Format a fresh, zeroed mapping of `len` bytes. Publishes magic last (release). */
int fq_ring_format(void *mem, uint64_t len, uint64_t capacity, uint32_t max_message,
                   uint64_t max_messages, uint32_t flags, int32_t creator_pid);
/* Validate a mapping's header (it is untrusted input) and fill a handle.
 * FQ_EMAGIC: no magic yet / not a ring; FQ_ECORRUPT: inconsistent header. */
int fq_ring_attach(fq_ring *r, void *mem, uint64_t len, int wait, int64_t spin_ns);

/* timeout_ns: 0 = do not wait, < 0 = wait forever, > 0 = wait that long.
 * trylock: if the side's lock is busy return FQ_RING_EBUSY instead of waiting for it. */
int fq_ring_put(fq_ring *r, const void *msg, uint32_t len, int64_t timeout_ns, int trylock);
/* All or nothing: waits until every message fits, writes them and publishes them with one
 * store. FQ_ETOOBIG if one message exceeds max_message or the batch can never fit. */
int fq_ring_put_many(fq_ring *r, const fq_ring_iov *v, int64_t n, int64_t timeout_ns, int trylock);

/* Begin a read: waits for a message, takes the consumer lock (multi-consumer rings) and
 * returns the first message's length with *msg pointing at its payload inside the ring.
 * fq_ring_read_next adds the following message to the read (FQ_EEMPTY if none published).
 * fq_ring_read_commit consumes them all (one release store of head) and releases the
 * lock; fq_ring_read_abort releases the lock and leaves them in the ring. */
int64_t fq_ring_read_begin(fq_ring *r, int64_t timeout_ns, int trylock, const uint8_t **msg);
int64_t fq_ring_read_next(fq_ring *r, const uint8_t **msg);
void fq_ring_read_commit(fq_ring *r);
void fq_ring_read_abort(fq_ring *r);
/* Wait up to timeout_ns (0: just look, < 0: forever) until the ring holds a message, taking
 * nothing and no lock: 0 when one is there, else FQ_EEMPTY (timeout 0), FQ_ETIMEDOUT or
 * FQ_ECLOSED. For a thread that only wants to know (a batching producer's linger thread):
 * holding the consumer lock to look would make a drainer in the same process wait for it. */
int fq_ring_wait_readable(fq_ring *r, int64_t timeout_ns);
/* Copy the next message into dst. FQ_ETOOBIG (message left in place, *needed = its length)
 * when it does not fit in cap bytes. */
int64_t fq_ring_get(fq_ring *r, void *dst, uint64_t cap, int64_t timeout_ns, int trylock,
                    uint64_t *needed);

/* Make every current and future wait of this handle return FQ_ECLOSED (other handles on
 * the same ring see one spurious wakeup and carry on). */
void fq_ring_interrupt(fq_ring *r);

uint64_t fq_ring_count(const fq_ring *r);      /* messages in the ring (a snapshot) */
uint64_t fq_ring_used(const fq_ring *r);       /* bytes in the ring (a snapshot) */
int fq_ring_is_full(const fq_ring *r);         /* not even a zero-length message fits */

/* Test hook: take the producer (which=0) or consumer (which=1) lock and keep it, to
 * simulate a process killed inside its critical section. */
int fq_ring_debug_hold_lock(fq_ring *r, int which);

#endif
