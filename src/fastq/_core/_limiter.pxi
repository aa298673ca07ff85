# LimiterCore: the compiled decision path under fastq.flow.RateLimiter (which subclasses
# it). The format, the algorithm and the key table live in csrc/fq_limiter.h; this file
# maps the file, hashes keys and turns statuses into exceptions. Included by _storage.pyx:
# it shares the fault points (open, stat, preallocate, map, msync, flock) and the status
# table of the log. Policy (paths, boot ids, configuration checks, blocking, asyncio) is
# fastq.flow.limiter's.

from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from cpython.long cimport PyLong_AsLongLong

cdef extern from "fq_limiter.h" nogil:
    enum:
        FQ_LIM_HDR_SIZE
        FQ_LIM_MAX_CAPACITY
        FQ_LIM_MAX_WINDOW
        FQ_LIM_EVICT
        FQ_LIM_COARSE
    ctypedef struct fq_lim_hdr:
        uint32_t capacity
        uint32_t window
        uint64_t points
        int64_t duration_ns
        uint64_t burst
        int64_t emission_ns
        int64_t tau_ns
        uint8_t boot_id[16]
        uint64_t lock_steals
        uint64_t inserts
        uint64_t evictions
        uint64_t busy_recoveries
    ctypedef struct fq_lim:
        fq_lim_hdr *hdr
        uint64_t burst
        int64_t emission_ns
        int64_t tau_ns
        uint32_t me
    int fq_lim_size(uint32_t capacity, uint64_t *size)
    int fq_lim_config(uint64_t points, int64_t duration_ns, uint64_t burst, int64_t *emission_ns,
                      int64_t *tau_ns)
    int fq_lim_format(void *mem, size_t len, uint32_t capacity, uint32_t window, uint64_t points,
                      int64_t duration_ns, uint64_t burst, const uint8_t *boot_id)
    int fq_lim_attach(fq_lim *lim, void *mem, size_t len, uint32_t pid)
    int fq_lim_same_boot(const fq_lim *lim, const uint8_t *boot_id)
    int fq_lim_reset(fq_lim *lim, const uint8_t *boot_id)
    int fq_lim_consume(fq_lim *lim, uint64_t key, uint64_t n, int64_t now_ns, int flags,
                       int64_t *retry_ns)
    int64_t fq_lim_available(fq_lim *lim, uint64_t key, int64_t now_ns)
    uint64_t fq_lim_hash(const void *data, size_t n, uint64_t seed)
    int64_t fq_lim_coarse_res_ns()

LIMITER_HEADER_SIZE = FQ_LIM_HDR_SIZE
LIMITER_MAX_KEYS = FQ_LIM_MAX_CAPACITY
LIMITER_MAX_WINDOW = FQ_LIM_MAX_WINDOW
LIMITER_EVICT = FQ_LIM_EVICT
LIMITER_COARSE = FQ_LIM_COARSE
LIMITER_MAX_KEY_BYTES = 1024        # a longer key is an InvalidArgument

# per-type seeds: "1", b"1" and 1 are three keys
cdef uint64_t _SEED_STR = 0x5354520000000001ULL
cdef uint64_t _SEED_BYTES = 0x4259540000000002ULL
cdef uint64_t _SEED_INT = 0x494e540000000003ULL


def limiter_coarse_resolution():
    """Resolution of CLOCK_MONOTONIC_COARSE in seconds (0.0 where there is none)."""
    return fq_lim_coarse_res_ns() / 1e9


def limiter_config(uint64_t points, int64_t duration_ns, uint64_t burst):
    """(emission_ns, tau_ns) of a configuration, or None when it is out of range."""
    cdef int64_t t, tau
    if fq_lim_config(points, duration_ns, burst, &t, &tau) < 0:
        return None
    return (t, tau)


def limiter_create(str path, uint32_t capacity, uint32_t window, uint64_t points,
                   int64_t duration_ns, uint64_t burst, bytes boot_id):
    """Write a fresh limiter file at `path` (a new file the caller links into place):
    preallocated in full (a full disk fails here, never as a SIGBUS later) and msynced, so
    the header survives a crash (the buckets need not: a new boot resets them)."""
    cdef uint64_t size
    if fq_lim_size(capacity, &size) < 0:
        raise InvalidArgument(f"max_keys={capacity}: expected 0 or a power of two <= {FQ_LIM_MAX_CAPACITY}")
    if len(boot_id) != 16:
        raise InvalidArgument("boot_id: 16 bytes expected")
    cdef int fd = open_file(path, O_RDWR | O_CREAT | O_CLOEXEC)
    cdef void *p = NULL
    cdef int rc
    try:
        rc = fq_preallocate(fd, <int64_t>size)
        if rc < 0:
            raise_status(rc, "preallocate rate limiter", path)
        rc = fq_map(fd, <size_t>size, 1, &p)
        if rc < 0:
            raise_status(rc, "map rate limiter", path)
        rc = fq_lim_format(p, <size_t>size, capacity, window, points, duration_ns, burst,
                           <const uint8_t *><char *>boot_id)
        if rc < 0:
            raise_status(rc, "format rate limiter", path)
        rc = fq_msync(p, <size_t>size)
        if rc < 0:
            raise_status(rc, "sync rate limiter", path, -1, ERR_OP_SYNC)
    finally:
        if p != NULL:
            fq_unmap(p, <size_t>size)
        c_close(fd)


cdef inline uint64_t _limiter_key(object key) except? 0:
    """The 64-bit hash of a key (0: key is None, the global bucket)."""
    cdef const char *s
    cdef Py_ssize_t n
    cdef long long v
    if key is None:
        return 0
    if type(key) is str:
        s = PyUnicode_AsUTF8AndSize(key, &n)
        if n > LIMITER_MAX_KEY_BYTES:
            raise InvalidArgument(f"rate limiter key of {n} bytes: at most {LIMITER_MAX_KEY_BYTES}")
        return fq_lim_hash(s, <size_t>n, _SEED_STR)
    if type(key) is bytes:
        n = PyBytes_GET_SIZE(key)
        if n > LIMITER_MAX_KEY_BYTES:
            raise InvalidArgument(f"rate limiter key of {n} bytes: at most {LIMITER_MAX_KEY_BYTES}")
        return fq_lim_hash(PyBytes_AS_STRING(key), <size_t>n, _SEED_BYTES)
    if type(key) is int:
        try:
            v = PyLong_AsLongLong(key)
        except OverflowError:
            raise InvalidArgument(f"rate limiter key {key!r}: an int key must fit in 64 bits") from None
        return fq_lim_hash(&v, 8, _SEED_INT)
    raise InvalidArgument(f"rate limiter key must be str, bytes, int or None, got {type(key).__name__}")


cdef class LimiterCore:
    """The mapped file of one rate limiter and its compiled decisions (see
    csrc/fq_limiter.h). Process-safe without locks (a decision is one CAS on shared
    memory) and thread-safe (the GIL is held; the CAS excludes threads too)."""
    cdef fq_lim lim                 # pointers into the mapping, the cached configuration
    cdef void *map                  # the mapping (NULL when closed)
    cdef int64_t size               # its length
    cdef int flags                  # FQ_LIM_EVICT | FQ_LIM_COARSE
    cdef bint _table_full           # the last refusal was a full key table (its message)
    cdef readonly str path          # the file
    cdef readonly str name          # the limiter's name (error messages)

    def __cinit__(self, *args, **kwargs):   # a Python subclass's __init__ takes arguments
        self.map = NULL

    def _open(self, str path, str name, bytes boot_id, int flags):
        """Map an existing limiter file; reset its buckets when it was written under
        another boot (under its flock, then msynced)."""
        if self.map != NULL:
            raise InvalidArgument("limiter already open")
        if len(boot_id) != 16:
            raise InvalidArgument("boot_id: 16 bytes expected")
        self.path = path
        self.name = name
        self.flags = flags
        cdef const uint8_t *boot = <const uint8_t *><char *>boot_id
        cdef int fd = open_file(path, O_RDWR | O_CLOEXEC)
        cdef int64_t size
        cdef int rc
        cdef void *p = NULL
        try:
            size = fq_file_size(fd)
            if size < 0:
                raise_status(size, "stat rate limiter", path)
            if size < FQ_LIM_HDR_SIZE:
                raise CorruptRecord(f"rate limiter {path}: {size} bytes, shorter than its header",
                                    path, None)
            rc = fq_map(fd, <size_t>size, 1, &p)
            if rc < 0:
                raise_status(rc, "map rate limiter", path)
            rc = fq_lim_attach(&self.lim, p, <size_t>size, <uint32_t>fq_getpid())
            if rc < 0:
                raise_status(rc, "read rate limiter", path)
            if not fq_lim_same_boot(&self.lim, boot):
                rc = fq_flock(fd, 1, 1)
                if rc < 0:
                    raise_status(rc, "lock rate limiter", path)
                try:
                    if not fq_lim_same_boot(&self.lim, boot):
                        fq_lim_reset(&self.lim, boot)
                        rc = fq_msync(p, <size_t>size)
                        if rc < 0:
                            raise_status(rc, "sync rate limiter", path, -1, ERR_OP_SYNC)
                finally:
                    fq_funlock(fd)
        except BaseException:
            if p != NULL:
                fq_unmap(p, <size_t>size)
            raise
        finally:
            c_close(fd)
        self.map = p
        self.size = size

    cdef inline int _live(self) except -1:
        if self.map == NULL:
            raise Closed(f"rate limiter {self.name!r} is closed")
        return 0

    cdef int64_t _take(self, object n, object key) except -2:
        """0 when the points were taken, else the ns to wait (> 0)."""
        cdef int64_t retry = 0
        cdef uint64_t h
        cdef int rc
        cdef long long points = 0
        if self.map == NULL:
            self._live()
        h = _limiter_key(key)
        if type(n) is int:            # not bool, not float (Cython's conversion would truncate)
            try:
                points = PyLong_AsLongLong(n)
            except OverflowError:
                points = 0
        if points < 1 or <uint64_t>points > self.lim.burst:
            raise InvalidArgument(
                f"points={n!r}: expected an int in 1..{self.lim.burst} (the limiter's burst)")
        rc = fq_lim_consume(&self.lim, h, <uint64_t>points, -1, self.flags, &retry)
        if rc == 0:
            return 0
        if rc == 1:
            return retry if retry > 0 else 1
        if rc == FQ_EFULL:            # on_full="refuse": a refusal, until a slot frees
            self._table_full = True
            return retry if retry > 0 else 1
        if rc == FQ_EINVAL and h != 0:
            raise InvalidArgument(f"rate limiter {self.name!r} has no key table (max_keys=0)")
        raise_status(rc, f"rate limiter {self.name!r}", self.path)

    def try_consume(self, points=1, key=None):
        """Take ``points`` from the bucket of ``key`` (None: the limiter's one global
        bucket) if they are there now: True, else False and nothing is taken."""
        return self._take(points, key) == 0

    def consume(self, points=1, key=None):
        """Take ``points`` from the bucket of ``key``, or raise :class:`fastq.RateLimited`
        (nothing taken) whose ``retry_after`` is the seconds until they are there."""
        self._table_full = False
        cdef int64_t r = self._take(points, key)
        if r != 0 and self._table_full:
            raise RateLimited(
                f"rate limiter {self.name!r}: its key table is full of keys still limited "
                f"(max_keys={self.lim.hdr.capacity}, on_full='refuse'); retry after "
                f"{r / 1e9:.6f} s", r / 1e9, key)
        if r != 0:
            raise RateLimited(
                f"rate limiter {self.name!r}: {points} point(s) not available"
                f"{'' if key is None else f' for key {key!r}'}; retry after {r / 1e9:.6f} s",
                r / 1e9, key)

    def _retry_after(self, points=1, key=None):
        """Take the points if they are there: 0.0; else the seconds until they are."""
        return self._take(points, key) / 1e9

    def available(self, key=None):
        """Points the bucket of ``key`` holds now (``burst`` for a key never seen)."""
        self._live()
        return fq_lim_available(&self.lim, _limiter_key(key), -1)

    def _use_coarse_clock(self, bint on):
        """Read CLOCK_MONOTONIC_COARSE (on) or the exact clock for decisions."""
        self.flags = (self.flags | FQ_LIM_COARSE) if on else (self.flags & ~FQ_LIM_COARSE)

    def _after_fork(self):
        """In a forked child: the insert lock and BUSY marks name processes by pid."""
        self.lim.me = <uint32_t>fq_getpid()

    @property
    def points(self):
        self._live()
        return self.lim.hdr.points

    @property
    def duration(self):
        """Seconds (float) of the window ``points`` refill over."""
        self._live()
        return self.lim.hdr.duration_ns / 1e9

    @property
    def burst(self):
        self._live()
        return self.lim.burst

    @property
    def max_keys(self):
        self._live()
        return self.lim.hdr.capacity

    @property
    def emission_interval(self):
        """Seconds per point (ns-exact, rounded up)."""
        self._live()
        return self.lim.emission_ns / 1e9

    @property
    def coarse_clock(self):
        """True when decisions read CLOCK_MONOTONIC_COARSE (see csrc/fq_limiter.h)."""
        return bool(self.flags & FQ_LIM_COARSE)

    def stats(self):
        """Counters of the shared file: key inserts, live keys evicted, lock takeovers,
        re-keys repaired after their process died."""
        self._live()
        h = self.lim.hdr
        return {"inserts": h.inserts, "evictions": h.evictions, "lock_steals": h.lock_steals,
                "busy_recoveries": h.busy_recoveries}

    @property
    def closed(self):
        return self.map == NULL

    def close(self):
        """Unmap the file (idempotent). Other processes' buckets are not affected."""
        if self.map != NULL:
            fq_unmap(self.map, <size_t>self.size)
            self.map = NULL

    def __dealloc__(self):
        if self.map != NULL:
            fq_unmap(self.map, <size_t>self.size)
            self.map = NULL
            # never raises: a warning turned into an error is reported as unraisable (as Ring's)
            warnings.warn(f"unclosed rate limiter {self.name!r}; call close()", ResourceWarning, stacklevel=1)
