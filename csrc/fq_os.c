/* fq_os.c — the one place where fastq talks to the operating system.  See fq_os.h. */
#if defined(__linux__)
#define _GNU_SOURCE
#endif
#include "fq_os.h"
#include "fq_status.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <signal.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <limits.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

/* ---- injected faults (see fq_os.h) ---------------------------------------------------- */

typedef struct {
    int err;             /* positive errno to fail with; 0: point not armed */
    int64_t after;       /* calls that run for real first */
    int64_t times;       /* calls that fail after those (< 0: every one) */
    int64_t calls;       /* calls seen since armed */
    int64_t hits;        /* calls failed since armed */
} fq_fault_spec;

int fq_fault_armed = 0;
static fq_fault_spec fq_faults[FQ_FP_COUNT];

int fq_fault_arm(int point, int err, int64_t after, int64_t times) {
    if (point < 0 || point >= FQ_FP_COUNT || err <= 0 || after < 0) return FQ_EINVAL;
    fq_fault_spec *f = &fq_faults[point];
    __atomic_store_n(&f->err, 0, __ATOMIC_SEQ_CST);
    f->after = after;
    f->times = times;
    __atomic_store_n(&f->calls, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&f->hits, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&f->err, err, __ATOMIC_SEQ_CST);
    __atomic_store_n(&fq_fault_armed, 1, __ATOMIC_SEQ_CST);
    return 0;
}

void fq_fault_clear(void) {
    __atomic_store_n(&fq_fault_armed, 0, __ATOMIC_SEQ_CST);
    for (int i = 0; i < FQ_FP_COUNT; i++) {
        __atomic_store_n(&fq_faults[i].err, 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&fq_faults[i].calls, 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&fq_faults[i].hits, 0, __ATOMIC_SEQ_CST);
    }
}

int64_t fq_fault_hits(int point) {
    if (point < 0 || point >= FQ_FP_COUNT) return FQ_EINVAL;
    return __atomic_load_n(&fq_faults[point].hits, __ATOMIC_SEQ_CST);
}

int64_t fq_fault_calls(int point) {
    if (point < 0 || point >= FQ_FP_COUNT) return FQ_EINVAL;
    return __atomic_load_n(&fq_faults[point].calls, __ATOMIC_SEQ_CST);
}

int fq_fault_take(int point) {
    fq_fault_spec *f = &fq_faults[point];
    int err = __atomic_load_n(&f->err, __ATOMIC_SEQ_CST);
    if (err == 0) return 0;
    /* the n-th call (from 0) since arming fails when after <= n < after + times */
    int64_t n = __atomic_fetch_add(&f->calls, 1, __ATOMIC_SEQ_CST);
    if (n < f->after || (f->times >= 0 && n - f->after >= f->times)) return 0;
    __atomic_fetch_add(&f->hits, 1, __ATOMIC_SEQ_CST);
    return -err;
}

int fq_open(const char *path, int flags, int mode) {
    FQ_FAULT(FQ_FP_OPEN);
#ifdef O_CLOEXEC
    flags |= O_CLOEXEC;
#endif
    for (;;) {
        int fd = open(path, flags, mode);
        if (fd >= 0) return fd;
        if (errno != EINTR) return -errno;
    }
}

int fq_map(int fd, size_t len, int writable, void **out) {
    FQ_FAULT(FQ_FP_MAP);
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    void *p = mmap(NULL, len, prot, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return -errno;
    *out = p;
    return 0;
}

int fq_unmap(void *addr, size_t len) {
    if (munmap(addr, len) != 0) return -errno;
    return 0;
}

int fq_prefault_write(void *addr, size_t len) {
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)addr;
    uintptr_t start = a & ~((uintptr_t)pg - 1);
    if (madvise((void *)start, len + (a - start), MADV_POPULATE_WRITE) != 0) return -errno;
    return 0;
#else
    (void)addr; (void)len;
    return 0;
#endif
}

int fq_map_anon(size_t len, void **out) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -errno;
    *out = p;
    return 0;
}

int64_t fq_file_size(int fd) {
    FQ_FAULT(FQ_FP_STAT);
    struct stat st;
    if (fstat(fd, &st) != 0) return -errno;
    return (int64_t)st.st_size;
}

int fq_preallocate(int fd, int64_t len) {
    FQ_FAULT(FQ_FP_PREALLOCATE);
    int64_t cur = fq_file_size(fd);
    if (cur < 0) return (int)cur;
    if (cur >= len) return 0;   /* never shrink: another process may have it mapped */
#if defined(__linux__)
    int rc = posix_fallocate(fd, 0, (off_t)len);
    if (rc == 0) return 0;
    if (rc != EOPNOTSUPP && rc != EINVAL) return -rc;
    /* No fallocate here (musl, some FUSE/NFS): ftruncate alone would leave a hole, and a
     * store into a hole of a full disk through the mapping is a SIGBUS. Write zeros over
     * [cur, len) instead: past the old end nobody has stored anything. */
    {
        static const char zeros[65536];
        int64_t at = cur;
        while (at < len) {
            size_t n = (size_t)(len - at < (int64_t)sizeof zeros ? len - at : (int64_t)sizeof zeros);
            ssize_t w = pwrite(fd, zeros, n, (off_t)at);
            if (w < 0) {
                if (errno == EINTR) continue;
                return -errno;
            }
            at += w;
        }
        return 0;
    }
#elif defined(__APPLE__)
    fstore_t fst = {F_ALLOCATECONTIG, F_PEOFPOSMODE, 0, (off_t)(len - cur), 0};
    if (fcntl(fd, F_PREALLOCATE, &fst) == -1) {
        fst.fst_flags = F_ALLOCATEALL;
        if (fcntl(fd, F_PREALLOCATE, &fst) == -1) return -errno;
    }
#endif
    if (ftruncate(fd, (off_t)len) != 0) return -errno;
    return 0;
}

int fq_datasync(int fd) {
    FQ_FAULT(FQ_FP_DATASYNC);
#if defined(__APPLE__)
    if (fcntl(fd, F_FULLFSYNC) == 0) return 0;
    if (fsync(fd) != 0) return -errno;
    return 0;
#elif defined(__linux__)
    if (fdatasync(fd) != 0) return -errno;
    return 0;
#else
    if (fsync(fd) != 0) return -errno;
    return 0;
#endif
}

int fq_msync(void *addr, size_t len) {
    FQ_FAULT(FQ_FP_MSYNC);
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)addr;
    uintptr_t start = a & ~((uintptr_t)pg - 1);
    size_t n = len + (a - start);
    if (msync((void *)start, n, MS_SYNC) != 0) return -errno;
    return 0;
}

int fq_fsync_dir(const char *path) {
    FQ_FAULT(FQ_FP_FSYNC_DIR);
    int fd = open(path, O_RDONLY
#ifdef O_DIRECTORY
                  | O_DIRECTORY
#endif
    );
    if (fd < 0) return -errno;
    int rc = fsync(fd) != 0 ? -errno : 0;
    close(fd);
    return rc;
}

int fq_flock(int fd, int exclusive, int wait) {
    FQ_FAULT(FQ_FP_FLOCK);
    int op = (exclusive ? LOCK_EX : LOCK_SH) | (wait ? 0 : LOCK_NB);
    for (;;) {
        if (flock(fd, op) == 0) return 0;
        if (errno == EINTR) continue;
        return -errno;
    }
}

int fq_fd_path(int fd, char *buf, size_t n) {
    if (n == 0) return -EINVAL;
#if defined(__linux__)
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t k = readlink(link, buf, n - 1);
    if (k < 0) return -errno;
    buf[k] = '\0';
    return (int)k;
#elif defined(__APPLE__)
    char tmp[PATH_MAX];
    if (fcntl(fd, F_GETPATH, tmp) == -1) return -errno;
    size_t k = strlen(tmp);
    if (k >= n) return -ENAMETOOLONG;
    memcpy(buf, tmp, k + 1);
    return (int)k;
#else
    (void)fd; (void)buf;
    return -ENOSYS;
#endif
}

int fq_funlock(int fd) {
    if (flock(fd, LOCK_UN) != 0) return -errno;
    return 0;
}

int fq_pid_alive(int32_t pid) {
    if (pid <= 0) return 0;
    if (kill((pid_t)pid, 0) == 0) return 1;
    if (errno == ESRCH) return 0;
    if (errno == EPERM) return 1; /* exists, owned by someone else */
    return -errno;
}

int32_t fq_getpid(void) { return (int32_t)getpid(); }

int fq_pid_dead(uint32_t pid) {
    int rc = fq_pid_alive((int32_t)pid);
    if (rc == 0) return 1;
    if (rc < 0) return 0;
#if defined(__linux__)
    char path[48], buf[512];
    snprintf(path, sizeof path, "/proc/%u/stat", (unsigned)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* comm may contain spaces and parens */
    if (p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X')) return 1;
#endif
    return 0;
}

int fq_has_futex(void) {
#if defined(__linux__)
    return 1;
#else
    return 0;
#endif
}

int fq_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns) {
#if defined(__linux__)
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
        ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
        tsp = &ts;
    }
    long rc = syscall(SYS_futex, addr, FUTEX_WAIT, expected, tsp, NULL, 0);
    if (rc == 0) return 0;
    if (errno == EAGAIN || errno == EINTR) return 0;  /* value changed / signal: re-check */
    if (errno == ETIMEDOUT) return FQ_ETIMEDOUT;
    return -errno;
#else
    /* Fallback: poll the word every 50 us until it changes or time runs out. */
    int64_t deadline = timeout_ns >= 0 ? fq_monotonic_ns() + timeout_ns : -1;
    for (;;) {
        if (__atomic_load_n(addr, __ATOMIC_ACQUIRE) != expected) return 0;
        if (deadline >= 0 && fq_monotonic_ns() >= deadline) return FQ_ETIMEDOUT;
        fq_sleep_ns(50000);
    }
#endif
}

int64_t fq_timer_slack(int64_t ns) {
#if defined(__linux__)
    if (ns <= 0) return -1;
    int prev = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    if (prev < 0 || prctl(PR_SET_TIMERSLACK, (unsigned long)ns, 0, 0, 0) < 0) return -1;
    return prev;
#else
    (void)ns;
    return -1;
#endif
}

int fq_wake(uint32_t *addr, int n) {
#if defined(__linux__)
    long rc = syscall(SYS_futex, addr, FUTEX_WAKE, n, NULL, NULL, 0);
    if (rc < 0) return -errno;
    return (int)rc;
#else
    (void)addr; (void)n;
    return 0;
#endif
}

void fq_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

void fq_yield(void) { sched_yield(); }

int64_t fq_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t fq_realtime_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

int64_t fq_realtime_coarse_ms(void) {
    struct timespec ts;
#if defined(CLOCK_REALTIME_COARSE)
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
#else
    clock_gettime(CLOCK_REALTIME, &ts);
#endif
    return (int64_t)ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

void fq_sleep_ns(int64_t ns) {
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

