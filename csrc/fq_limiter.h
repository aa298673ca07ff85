/* fq_limiter.h — a rate limiter (GCRA) in a shared-memory file, exact across processes.
 *
 * Algorithm: GCRA, the Generic Cell Rate Algorithm (a token bucket expressed as one
 * "theoretical arrival time" per bucket). With emission interval T = duration / points
 * (ns, rounded UP so the limiter never admits more than configured) and tolerance
 * tau = burst * T, a request for n points at time `now` computes
 *     new_tat = max(tat, now) + n * T
 * and is admitted iff new_tat - now <= tau, in which case tat becomes new_tat (one CAS on
 * a 64-bit word: lock-free, and exact across every process mapping the file). A refused
 * request writes nothing; it may retry after new_tat - tau - now ns. A bucket whose tat
 * is in the past is full (burst points available): it holds no state worth keeping.
 *
 * Clock: CLOCK_MONOTONIC (fq_monotonic_ns, or its coarse twin: FQ_LIM_COARSE). It is one clock for every process of one
 * boot, never jumps with NTP or the wall clock, and stops during suspend (a limiter does
 * not refill while the machine sleeps: conservative, never over-admits). It restarts at
 * each boot, so the header records the boot id it was written under; an opener that
 * finds another boot's id resets every bucket to full (fq_lim_reset) under the file's
 * flock. Times are 60-bit; now and tau stay below 2^59 ns (18 years of uptime; beyond
 * that decisions return FQ_EUNSUPPORTED).
 *
 * Layout (native byte order, little-endian on every supported platform; the file never
 * leaves the machine; byte offsets):
 *   0     magic "FQLIMIT1" u64 | version u32 | header_size u32 (FQ_LIM_HDR_SIZE)
 *   16    capacity u32 (key slots, a power of two, 0 = no key table) | window u32 (probe
 *         window) | points u64 | duration_ns i64 | burst u64 | emission_ns i64 (T) |
 *         tau_ns i64 (burst * T) | boot_id[16] | size u64 (whole file)
 *   88    crc u32: CRC-32C of bytes [0, 88) — the immutable configuration; a mismatch,
 *         a wrong magic/version or a file shorter than `size` is FQ_ECORRUPT/FQ_EMAGIC
 *   128   lock u32 (0 = free, else the holder's pid) | pad u32 | lock_steals u64 |
 *         inserts u64 | evictions u64 (live keys evicted) | busy_recoveries u64
 *   192   global state u64 (the bucket of key=None)
 *   256   slots[capacity], 16 bytes each: key u64 (64-bit hash of the key, never 0;
 *         0 = never used) | state u64
 *
 * State word: bits 63..60 gen, bits 59..0 tat (ns of CLOCK_MONOTONIC). gen counts the
 * times a slot changed key (0..14, wrapping), so a CAS prepared against the previous
 * key's state fails (it would take 15 re-keys during one CAS and the very same tat to
 * succeed). gen 0xF marks BUSY: a slot being re-keyed, bits 43..40 the old gen, bits
 * 31..0 the pid of the process re-keying it.
 *
 * Key table: open addressing, linear probing from hash & (capacity - 1) over at most
 * `window` slots. Slots never become empty again (key 0) except by a reset, so a
 * lookup stops at the first empty slot. Consuming for a key found in the table is lock
 * free (load state, re-check the key, CAS state). Inserting a key takes the pid-word
 * lock (only inserts do; a holder found dead is taken over), re-scans the window (another
 * process may have inserted it), then uses, in this order: the first empty slot; the
 * first slot whose tat is in the past (a full bucket: forgetting it loses nothing); and
 * when every slot of the window holds a live key, with FQ_LIM_EVICT the slot with the
 * oldest tat (that key loses at most its remaining debt, tat - now: it may over-admit by
 * that much; counted in `evictions`), else FQ_EFULL with the time until that slot frees.
 * Re-keying an occupied slot: CAS state -> BUSY(pid), store the new key, store state =
 * (gen + 1, tat 0). A consumer that meets BUSY waits; if the pid is dead (killed
 * mid-re-key) it replaces BUSY by (gen + 1, tat 0), a full bucket, which is what the
 * re-keying would have written. Two keys with one 64-bit hash share a bucket.
 *
 * All functions return >= 0 on success or a negative FQ_E... status (fq_status.h).
 */
#ifndef FQ_LIMITER_H
#define FQ_LIMITER_H
#include <stddef.h>
#include <stdint.h>

#define FQ_LIM_MAGIC "FQLIMIT1"
#define FQ_LIM_VERSION 1
#define FQ_LIM_HDR_SIZE 256
#define FQ_LIM_CRC_END 88
#define FQ_LIM_MAX_CAPACITY (1u << 24)
#define FQ_LIM_MAX_WINDOW 64
#define FQ_LIM_TAT_BITS 60
#define FQ_LIM_TAT_MASK ((1ull << FQ_LIM_TAT_BITS) - 1)
#define FQ_LIM_MAX_NS ((int64_t)1 << 59)   /* bound of tau and of now (18 years) */
#define FQ_LIM_GEN_BUSY 0xFu
#define FQ_LIM_LOCK_CHECK_NS 1000000LL
/* a tat this far past now + tau cannot have been written on this boot: damaged bytes
 * (more than a coarse clock's tick, so processes reading either clock agree) */
#define FQ_LIM_SLACK_NS 1000000000LL

/* flags of fq_lim_consume: FQ_LIM_EVICT evicts a live key when the window is full;
 * FQ_LIM_COARSE reads CLOCK_MONOTONIC_COARSE (the same clock at the kernel tick, 1-4 ms;
 * ~25 ns instead of ~30-180 ns on a VM). With the coarse clock refills arrive once a tick,
 * so a caller uses it only when tau spans many ticks; the bound then holds against the
 * exact clock within one tick's worth of points (the coarse clock lags it by < 1 tick). */
enum { FQ_LIM_EVICT = 1, FQ_LIM_COARSE = 2 };

typedef struct fq_lim_slot {
    uint64_t key;
    uint64_t state;
} fq_lim_slot;

typedef struct fq_lim_hdr {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint32_t capacity;
    uint32_t window;
    uint64_t points;
    int64_t duration_ns;
    uint64_t burst;
    int64_t emission_ns;
    int64_t tau_ns;
    uint8_t boot_id[16];
    uint64_t size;
    uint32_t crc;
    uint8_t _pad0[128 - 92];
    uint32_t lock;
    uint32_t _pad1;
    uint64_t lock_steals;
    uint64_t inserts;
    uint64_t evictions;
    uint64_t busy_recoveries;
    uint8_t _pad2[192 - 168];
    uint64_t global;
    uint8_t _pad3[256 - 200];
} fq_lim_hdr;

_Static_assert(sizeof(fq_lim_slot) == 16, "slot is 16 bytes");
_Static_assert(sizeof(fq_lim_hdr) == FQ_LIM_HDR_SIZE, "header is 256 bytes");
_Static_assert(offsetof(fq_lim_hdr, capacity) == 16, "capacity at 16");
_Static_assert(offsetof(fq_lim_hdr, boot_id) == 64, "boot_id at 64");
_Static_assert(offsetof(fq_lim_hdr, size) == 80, "size at 80");
_Static_assert(offsetof(fq_lim_hdr, crc) == 88, "crc at 88");
_Static_assert(offsetof(fq_lim_hdr, lock) == 128, "lock line at 128");
_Static_assert(offsetof(fq_lim_hdr, global) == 192, "global state at 192");

/* A process's view of a mapped limiter (the configuration copied out of the header
 * after fq_lim_attach validated it). */
typedef struct fq_lim {
    fq_lim_hdr *hdr;
    fq_lim_slot *slots;
    uint64_t mask;         /* capacity - 1 */
    uint32_t window;
    uint32_t me;           /* our pid, for the lock word and BUSY marks */
    uint64_t burst;
    int64_t emission_ns;
    int64_t tau_ns;
} fq_lim;

/* Bytes of a limiter file with `capacity` key slots (0 or a power of two <= MAX). */
int fq_lim_size(uint32_t capacity, uint64_t *size);
/* T = ceil(duration_ns / points), tau = burst * T; FQ_EINVAL when out of range
 * (points, burst >= 1, duration_ns >= 1, T >= 1, tau < FQ_LIM_MAX_NS). */
int fq_lim_config(uint64_t points, int64_t duration_ns, uint64_t burst, int64_t *emission_ns,
                  int64_t *tau_ns);
/* Write a fresh header (every bucket full) into zeroed memory of fq_lim_size bytes. */
int fq_lim_format(void *mem, size_t len, uint32_t capacity, uint32_t window, uint64_t points,
                  int64_t duration_ns, uint64_t burst, const uint8_t boot_id[16]);
/* Validate a mapping of `len` bytes (len = the file's size) and fill `lim`. */
int fq_lim_attach(fq_lim *lim, void *mem, size_t len, uint32_t pid);
/* 1 if the header was written under boot_id, else 0. */
int fq_lim_same_boot(const fq_lim *lim, const uint8_t boot_id[16]);
/* Every bucket full, the table empty, boot_id recorded (caller holds the file's flock
 * and no process of this boot has it mapped: a new boot). */
int fq_lim_reset(fq_lim *lim, const uint8_t boot_id[16]);

/* Take n points (1 <= n <= burst) from the bucket of `key` (a 64-bit hash, 0 = the
 * global bucket) at time now_ns (< 0: read CLOCK_MONOTONIC; tests pass a fake clock).
 * Returns 0 admitted, 1 refused (*retry_ns = ns until n points are there), FQ_EFULL when
 * the key table's window is full of live keys and FQ_LIM_EVICT is not set (*retry_ns =
 * ns until one frees), FQ_ECORRUPT for a state word that cannot be (a tat beyond
 * now + tau), FQ_EINVAL for a bad n, FQ_EUNSUPPORTED past 2^55 ns of uptime. */
int fq_lim_consume(fq_lim *lim, uint64_t key, uint64_t n, int64_t now_ns, int flags,
                   int64_t *retry_ns);
/* Points available now in the bucket of `key` (burst for an unknown key); no change. */
int64_t fq_lim_available(fq_lim *lim, uint64_t key, int64_t now_ns);
/* CLOCK_MONOTONIC_COARSE now, and its resolution (0 when there is no such clock). */
int64_t fq_lim_coarse_ns(void);
int64_t fq_lim_coarse_res_ns(void);
/* 64-bit hash of a key's bytes (never 0), seeded per key type by the caller. */
uint64_t fq_lim_hash(const void *data, size_t n, uint64_t seed);

/* The insert lock (exposed for tests): 0 = taken, 1 = taken over from a dead holder. */
int fq_lim_lock(fq_lim *lim);
void fq_lim_unlock(fq_lim *lim);

#endif
