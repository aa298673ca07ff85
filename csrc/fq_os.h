/* fq_os.h — every operating-system specific call fastq makes lives behind this header.
 *
 * Linux is the first platform; macOS is supported through the fallbacks noted per
 * function; Windows is not yet built (each function documents what it would use).
 * All functions return >= 0 on success or -errno (or an FQ_E... code) on failure.
 */
#ifndef FQ_OS_H
#define FQ_OS_H

#include <stddef.h>
#include <stdint.h>

/* ---- injected faults (tests only) ----------------------------------------------------
 * Every system call below that can fail on a sick disk passes through a fault point. A
 * test arms a point (fq_fault_arm) to make its calls return a chosen -errno: the first
 * `after` calls run for real, the next `times` calls (times < 0: all of them) fail
 * without making the system call. When nothing is armed, the cost is one load of
 * fq_fault_armed and a branch predicted not taken.
 *
 * The state is a plain global of this file, and fq_os.c is compiled into several Python
 * extension modules (loaded RTLD_LOCAL): each has its own copy. fastq._core._storage exposes
 * its copy (_fault_inject/_fault_clear/_fault_hits), which covers every call the log,
 * its segments, the topic notifier and fastq.log's fsync_dir/flock make; the ring in
 * fastq._core._ring has its own copy, which nothing arms. */
enum fq_fault_point {
    FQ_FP_OPEN,          /* fq_open */
    FQ_FP_STAT,          /* fq_file_size (fstat) */
    FQ_FP_PREALLOCATE,   /* fq_preallocate (posix_fallocate / F_PREALLOCATE / ftruncate) */
    FQ_FP_MAP,           /* fq_map (mmap of a file) */
    FQ_FP_DATASYNC,      /* fq_datasync (fdatasync / F_FULLFSYNC) */
    FQ_FP_MSYNC,         /* fq_msync (msync MS_SYNC) */
    FQ_FP_FSYNC_DIR,     /* fq_fsync_dir */
    FQ_FP_FLOCK,         /* fq_flock */
    FQ_FP_COUNT
};
extern int fq_fault_armed;                     /* nonzero while any point is armed */
/* Arm `point`: calls after the first `after` fail with -err, `times` of them (< 0: all).
 * Resets the point's call and hit counters. Returns 0, or FQ_EINVAL for a bad point. */
int fq_fault_arm(int point, int err, int64_t after, int64_t times);
void fq_fault_clear(void);                     /* disarm every point, zero the counters */
int64_t fq_fault_hits(int point);              /* calls failed on purpose since armed */
int64_t fq_fault_calls(int point);             /* calls seen since armed (failed or not) */
int fq_fault_take(int point);                  /* slow path: -err if this call fails, else 0 */
#define FQ_FAULT(point)                                                     \
    do {                                                                    \
        if (__builtin_expect(fq_fault_armed != 0, 0)) {                     \
            int fq_fault_rc_ = fq_fault_take(point);                        \
            if (fq_fault_rc_ != 0) return fq_fault_rc_;                     \
        }                                                                   \
    } while (0)

/* open(2) with O_CLOEXEC added; returns the descriptor or -errno. */
int fq_open(const char *path, int flags, int mode);

/* Map `len` bytes of `fd` from offset 0, shared and read/write (or read-only when
 * `writable` is 0). The file may be shorter than `len`: touching pages past its end
 * raises SIGBUS, so callers only touch bytes below what they allocated. */
int fq_map(int fd, size_t len, int writable, void **out);
int fq_unmap(void *addr, size_t len);
/* Prefault [addr, addr+len) of a writable shared mapping so later stores do not take a
 * page fault each (Linux >= 5.14: madvise(MADV_POPULATE_WRITE); elsewhere a no-op).
 * Best effort: returns 0 or -errno, and callers may ignore failures. */
int fq_prefault_write(void *addr, size_t len);
/* Anonymous shared memory (inherited over fork). */
int fq_map_anon(size_t len, void **out);

/* Make [0, len) of the file exist on disk so writes into a mapping cannot SIGBUS on a
 * full disk. Linux: posix_fallocate; macOS: F_PREALLOCATE + ftruncate; else ftruncate.
 * Never shrinks the file. Returns -ENOSPC on a full disk. */
int fq_preallocate(int fd, int64_t len);
int64_t fq_file_size(int fd);

/* Flush written data of a file to stable storage (fdatasync on Linux, F_FULLFSYNC on
 * macOS). Callers must never retry a failure (fsyncgate): the page cache may have
 * dropped the dirty pages already. */
int fq_datasync(int fd);
/* msync(MS_SYNC) a byte range of a mapping (rounded out to pages). */
int fq_msync(void *addr, size_t len);
/* fsync a directory so a create/rename/unlink in it is durable. */
int fq_fsync_dir(const char *path);

/* Whole-file advisory locks that the kernel releases when the process dies
 * (flock on POSIX). `exclusive` 1 for exclusive, 0 for shared; `wait` 0 for try-lock
 * (returns -EWOULDBLOCK when held). */
int fq_flock(int fd, int exclusive, int wait);
int fq_funlock(int fd);
/* The path `fd` was opened with, NUL-terminated in buf[0:n] (for error messages; cold).
 * Linux: readlink of /proc/self/fd/N; macOS: F_GETPATH; elsewhere -ENOSYS. Returns the
 * length or -errno. */
int fq_fd_path(int fd, char *buf, size_t n);

/* 1 if a process with this pid exists, 0 if it does not, <0 on error. PIDs can be
 * reused: callers treat "exists" as "maybe alive" and bound their waits. */
int fq_pid_alive(int32_t pid);
/* 1 if the process holding a pid-word lock is certainly gone. kill(pid, 0) succeeds on
 * zombies, and a parent blocked on a lock its own killed (unreaped) child held would never
 * reap it, so on Linux a zombie counts as dead too. 0 when alive or unknown. */
int fq_pid_dead(uint32_t pid);
int32_t fq_getpid(void);

/* Cross-process wait/wake on a 32-bit word in shared memory.
 * Linux: futex (not FUTEX_PRIVATE, so it works across processes on a shared mapping).
 * Elsewhere: a bounded sleep-poll (50 us) fallback; wakes are then no-ops.
 * fq_wait returns 0 when woken or the word changed, FQ_ETIMEDOUT on timeout
 * (timeout_ns < 0 waits forever). Spurious wakeups are possible: callers re-check. */
int fq_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns);
/* Set this thread's timer slack (how late the kernel may end a timed sleep, 50 us by
 * default on Linux) to ns; returns the previous value, or -1 where there is no such
 * setting (then nothing changes, and fq_timer_slack(-1) is a no-op). */
int64_t fq_timer_slack(int64_t ns);
int fq_wake(uint32_t *addr, int n);   /* n = INT32_MAX wakes all */
int fq_has_futex(void);

void fq_cpu_relax(void);   /* pause / yield hint inside spin loops */
void fq_yield(void);       /* sched_yield */
int64_t fq_monotonic_ns(void);
int64_t fq_realtime_ms(void);
/* The same clock, read at the kernel tick's resolution (1-4 ms on Linux; exact
 * elsewhere): for age checks, where it is ~5x cheaper than an exact read on a VM. */
int64_t fq_realtime_coarse_ms(void);
void fq_sleep_ns(int64_t ns);

/* Atomics on shared memory. The shared words are plain uint64_t/uint32_t inside a
 * mapping; the GCC/Clang __atomic builtins give them C11 memory-order semantics without
 * _Atomic-qualified storage (which Cython cannot declare). static inline: these sit on
 * the hot path. */
static inline uint64_t fq_load_acquire_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void fq_store_release_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint32_t fq_load_acquire_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void fq_store_release_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline int fq_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
static inline uint32_t fq_fetch_add_u32(uint32_t *p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }
static inline uint64_t fq_fetch_add_u64(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }
static inline void fq_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#endif
