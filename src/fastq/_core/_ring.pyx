"""Ring: a bounded ring of bytes messages in shared memory (csrc/fq_ring.c underneath).

The algorithm and the byte layout live in csrc/fq_ring.h and docs/RING.md. This module owns
the mapping's lifetime, the buffer protocol, GIL release and the status → exception mapping.
"""
import os
import re
import struct
import tempfile
import warnings

cimport cython
from cpython.buffer cimport (PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_FillInfo, PyBuffer_Release,
                             PyObject_GetBuffer)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject_RichCompare
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from fastq._core._cdefs cimport (FQ_ECLOSED, FQ_ECORRUPT, FQ_EEMPTY, FQ_EFULL, FQ_EINVAL, FQ_EMAGIC,
                           FQ_ETIMEDOUT, FQ_ETOOBIG, fq_getpid, fq_has_futex, fq_load_acquire_u32,
                           fq_map, fq_monotonic_ns, fq_preallocate, fq_realtime_ms, fq_sleep_ns,
                           fq_unmap)

from fastq._core._codec cimport ERR_OP_GET, ERR_OP_NONE, ERR_OP_PUT, status_error
from fastq._core._codec import os_error

from fastq.errors import (Closed, CorruptRecord, FastqError, InvalidArgument, InvalidName,
                          RecordTooLarge, RingEmpty, RingFull, StorageError, Timeout)

__all__ = ["Ring"]

_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")

# Copies up to this many bytes run with the GIL held: releasing and re-taking the GIL costs
# more than copying a few kilobytes. Larger copies, and every wait, release it.
cdef enum:
    GIL_COPY_MAX = 16384
    REC_STACK = 512    # framed records up to this size are built on the stack

DEF_SPIN_NS = {"futex": 20_000, "yield": 5_000, "spin": 0}
_WAITS = {"spin": FQ_RING_WAIT_SPIN, "yield": FQ_RING_WAIT_YIELD, "futex": FQ_RING_WAIT_FUTEX}
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")
_ATTACH_WAIT_S = 1.0   # how long an attacher waits for the creator to finish formatting

MAX_CAPACITY = FQ_RING_MAX_CAPACITY

# getpid() is a real syscall on current glibc; the busy bookkeeping needs it per call
cdef int32_t _pid = fq_getpid()


def _refresh_pid():
    global _pid
    _pid = fq_getpid()


os.register_at_fork(after_in_child=_refresh_pid)
MAX_MESSAGE = FQ_RING_MAX_MESSAGE


def shm_dir():
    """Directory for named rings: /dev/shm when usable (RAM-backed), else the temp dir."""
    d = "/dev/shm"
    if os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
        return d
    return tempfile.gettempdir()


def ring_path(name):
    """File path of the named ring `name` (validated: [A-Za-z0-9._-], 1-200 characters)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise InvalidName(f"ring name must be 1-200 characters of [A-Za-z0-9._-], got {name!r}")
    return os.path.join(shm_dir(), "fastq-" + name)


cdef int _raise_status(int64_t rc, int op, str what) except -1:
    """Raise fastq._core._codec.status_error (the one mapping) for a ring status: `op` says whether
    it came from a put (FULL/TIMEDOUT: RingFull), a get (EMPTY/TIMEDOUT: RingEmpty) or
    neither (OP_NONE: creating, attaching, a lock)."""
    raise status_error(rc, what, None, None,
                       ERR_OP_PUT if op == OP_PUT else ERR_OP_GET if op == OP_GET else ERR_OP_NONE)


def _status_error(int64_t rc, str op, str what):
    """The exception _raise_status would raise; `op` is "put", "get" or "" (tests)."""
    try:
        _raise_status(rc, OP_PUT if op == "put" else OP_GET if op == "get" else OP_NONE, what)
    except FastqError as e:          # every status maps to one
        return e


cdef int64_t _timeout_ns(bint block, object timeout) except? -2:
    """block/timeout as queue.Queue takes them → 0 (don't wait), -1 (forever) or nanoseconds."""
    if not block:
        return 0
    if timeout is None:
        return -1
    cdef double t = float(timeout)
    if not (t >= 0):
        raise InvalidArgument(f"'timeout' must be a non-negative number, got {timeout!r}")
    if t > 1e9:
        return -1
    cdef int64_t ns = <int64_t>(t * 1e9)
    return 1 if (ns == 0 and t > 0) else ns


# A blocking call waits with the GIL released in slices of this long and runs the signal
# handlers between them, so Ctrl-C interrupts a get() or put() that would wait forever.
cdef int64_t WAIT_SLICE_NS = 100_000_000


cdef inline int64_t _deadline(int64_t tmo) noexcept:
    """The monotonic end of a wait of tmo ns (as _timeout_ns gives it), -1 for none."""
    return -1 if tmo < 0 else fq_monotonic_ns() + tmo


cdef inline int64_t _slice(int64_t tmo, int64_t deadline) noexcept:
    """The timeout to pass to the next nogil call of a wait (0 stays 0: do not wait)."""
    cdef int64_t left
    if tmo == 0:
        return 0
    if deadline < 0:
        return WAIT_SLICE_NS
    left = deadline - fq_monotonic_ns()
    return 1 if left < 1 else (WAIT_SLICE_NS if left > WAIT_SLICE_NS else left)


cdef int _again(int64_t rc, int64_t deadline) except -1:
    """After a slice of a wait: 1 to wait another slice (it timed out before the wait's
    own end), having run the signal handlers, which may raise (KeyboardInterrupt)."""
    if rc != FQ_ETIMEDOUT or (deadline >= 0 and fq_monotonic_ns() >= deadline):
        return 0
    PyErr_CheckSignals()
    return 1


def _attach_path(path, wait, spin_ns):
    cdef Ring r = Ring.__new__(Ring)
    r._path = path
    r._name = os.path.basename(path)[len("fastq-"):]
    fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    r._open_fd(fd, False, 0, 0, 0, 0, _WAITS[wait], spin_ns)
    r._wait_name = wait
    return r


def _attach_fd(dupfd, wait, spin_ns):
    cdef Ring r = Ring.__new__(Ring)
    fd = dupfd.detach()
    r._open_fd(fd, False, 0, 0, 0, 0, _WAITS[wait], spin_ns)
    r._wait_name = wait
    return r


cdef class Ring:
    """A bounded ring of bytes messages in shared memory, for threads and processes.

    ``Ring(capacity, *, name=None, create=True, wait="futex", spin_ns=None,
    max_message_size=None, max_messages=0, single_producer=False, single_consumer=False)``

    * ``capacity``: data bytes, rounded up to a power of two (16 B .. 1 TiB). Each message
      takes 8 + its length rounded up to 8 bytes.
    * ``name=None`` maps anonymous shared memory (a memfd): threads share the object, forked
      children inherit it, and pickling passes the descriptor to ``spawn``/``forkserver``
      children. ``name="jobs"`` creates (or with ``create=False`` attaches to) the file
      ``fastq-jobs`` under /dev/shm (the temp dir where there is none); any process can
      attach by name; ``unlink()`` removes it.
    * ``wait``: how blocked calls wait — ``"spin"`` (busy-spin, lowest latency, burns a
      core), ``"yield"`` (spin ``spin_ns`` then ``sched_yield``), ``"futex"`` (spin
      ``spin_ns`` then sleep on a futex; off Linux a 50 µs sleep-poll). Per handle.
    * ``max_message_size``: largest message (default and maximum ``capacity - 8``, a message
      that fills the whole ring). The mapping is ``1024 + capacity + max_message_size``
      bytes: records never wrap; one that runs past the end continues into that slack.
    * ``max_messages``: also bound the number of messages (0 = bytes only).
    * ``single_producer`` / ``single_consumer``: a promise that at most one thread in one
      process puts (gets) at a time; that side then takes no lock. Otherwise each side is
      guarded by a lock in shared memory that a killed process cannot wedge: waiters take
      it over from a dead holder within about a millisecond (see docs/RING.md).

    Methods follow ``queue.Queue``: ``put(msg, block=True, timeout=None)``,
    ``get(block=True, timeout=None) -> bytes``, ``put_nowait``, ``get_nowait``, ``qsize``,
    ``empty``, ``full``; full and empty raise :class:`fastq.RingFull` /
    :class:`fastq.RingEmpty` (subclasses of ``queue.Full`` / ``queue.Empty``), also on
    timeout. A message over ``max_message_size`` raises :class:`fastq.RecordTooLarge`.
    Zero-copy reads: ``get_into(buffer)`` and ``get_view()``.

    Batching (the broker's producer accumulator): ``put_many(msgs)`` writes a batch all or
    nothing and publishes it with one store, so consumers see it appear at once;
    ``get_many(n, timeout=...)`` waits for the first message and then drains up to ``n``
    without waiting again — one lock round trip per batch on each side. A producer loop
    that accumulates records for the log is ``put_many`` on the hot side and, on the
    appender's side, ``get_many(max_batch, timeout=linger)`` turned into one RecordBatch.

    Safety: one Ring object may be shared by threads (each side's lock serialises them unless
    the ring was created single-producer/-consumer); ``close()`` interrupts calls blocked on
    this handle (they raise :class:`fastq.Closed`) and refuses with ``BufferError`` while
    ``get_view()`` memoryviews are alive. Other processes' handles are unaffected by close.
    """

    def __cinit__(self):
        self._mem = NULL
        self._mem_len = 0
        self._fd = -1
        self._path = None
        self._name = None
        self._wait_name = "futex"
        self._exports = 0
        self._view_active = False
        self._busy = 0
        self._busy_pid = 0

    def __init__(self, capacity=None, *, name=None, bint create=True, wait="futex", spin_ns=None,
                 max_message_size=None, max_messages=0, bint single_producer=False,
                 bint single_consumer=False):
        if wait not in _WAITS:
            raise InvalidArgument(f"wait must be 'futex', 'spin' or 'yield', got {wait!r}")
        if spin_ns is None:
            spin_ns = DEF_SPIN_NS[wait]
        if spin_ns < 0:
            raise InvalidArgument(f"spin_ns must be >= 0, got {spin_ns!r}")
        self._wait_name = wait
        if not create:
            if name is None:
                raise InvalidArgument("create=False needs the name of the ring to attach to")
            self._attach(ring_path(name), name, _WAITS[wait], spin_ns)
            if capacity is not None and _round_capacity(capacity) != self._r.capacity:
                actual = self._r.capacity
                self.close()
                raise InvalidArgument(f"ring {name!r} has capacity {actual}, not {capacity}")
            return
        if capacity is None:
            raise InvalidArgument("capacity is required when creating a ring")
        cdef uint64_t cap = _round_capacity(capacity)
        limit = min(int(cap) - FQ_RING_REC_HDR, int(FQ_RING_MAX_MESSAGE))
        if max_message_size is None:
            max_message_size = limit
        if not isinstance(max_message_size, int) or not (0 <= max_message_size <= limit):
            raise InvalidArgument(f"max_message_size must be in [0, {limit}] for capacity {cap}, "
                                  f"got {max_message_size!r}")
        if max_messages is None or max_messages < 0 or max_messages >= 2**62:
            raise InvalidArgument(f"max_messages must be >= 0, got {max_messages!r}")
        cdef uint32_t flags = ((FQ_RING_F_SINGLE_PRODUCER if single_producer else 0) |
                               (FQ_RING_F_SINGLE_CONSUMER if single_consumer else 0))
        cloexec = getattr(os, "O_CLOEXEC", 0)
        if name is not None:
            path = ring_path(name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | cloexec, 0o600)
            except FileExistsError as e:
                raise StorageError(e.errno, f"ring {name!r} already exists ({path}); "
                                            f"pass create=False to attach to it") from None
            except OSError as e:
                raise os_error(e, f"create ring {name!r}", path) from None
            try:
                self._open_fd(fd, True, cap, max_message_size, max_messages, flags,
                              _WAITS[wait], spin_ns)
            except BaseException:
                os.unlink(path)
                raise
            self._path = path
            self._name = name
        else:
            if hasattr(os, "memfd_create"):
                fd = os.memfd_create("fastq-ring", os.MFD_CLOEXEC)
            else:   # no memfd (macOS): an unlinked file in the shm dir is just as anonymous
                fd, tmp = tempfile.mkstemp(prefix="fastq-ring-", dir=shm_dir())
                os.unlink(tmp)
            self._open_fd(fd, True, cap, max_message_size, max_messages, flags,
                          _WAITS[wait], spin_ns)

    def _attach(self, path, name, int wait, int64_t spin_ns):
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise StorageError(2, f"no ring named {name!r} ({path})") from None
        except OSError as e:
            raise os_error(e, f"attach to ring {name!r}", path) from None
        self._open_fd(fd, False, 0, 0, 0, 0, wait, spin_ns)
        self._path = path
        self._name = name

    cdef int _open_fd(self, int fd, bint format, uint64_t capacity, uint32_t max_message,
                      uint64_t max_messages, uint32_t flags, int wait, int64_t spin_ns) except -1:
        """Map fd (taking ownership of it) and format or attach. Closes fd on failure."""
        cdef void *mem = NULL
        cdef uint64_t size
        cdef int rc
        cdef int64_t deadline
        import time
        try:
            if format:
                size = fq_ring_region_size(capacity, max_message)
                if size == 0:
                    raise InvalidArgument(f"bad ring geometry: capacity {capacity}, "
                                          f"max_message_size {max_message}")
                rc = fq_preallocate(fd, <int64_t>size)
                if rc < 0:
                    _raise_status(rc, OP_NONE, f"allocating {size} bytes of shared memory")
                rc = fq_map(fd, size, 1, &mem)
                if rc < 0:
                    _raise_status(rc, OP_NONE, f"mapping {size} bytes")
                rc = fq_ring_format(mem, size, capacity, max_message, max_messages, flags, fq_getpid())
                if rc == 0:
                    rc = fq_ring_attach(&self._r, mem, size, wait, spin_ns)
                if rc < 0:
                    fq_unmap(mem, size)
                    _raise_status(rc, OP_NONE, "formatting the ring")
            else:
                # the creator may still be sizing and formatting the file: wait for its magic
                deadline = <int64_t>((time.monotonic() + _ATTACH_WAIT_S) * 1e9)
                while True:
                    size = <uint64_t>os.fstat(fd).st_size
                    rc = FQ_EMAGIC
                    if size >= FQ_RING_HDR_SIZE:
                        rc = fq_map(fd, size, 1, &mem)
                        if rc < 0:
                            _raise_status(rc, OP_NONE, f"mapping {size} bytes")
                        rc = fq_ring_attach(&self._r, mem, size, wait, spin_ns)
                        if rc < 0:
                            fq_unmap(mem, size)
                            mem = NULL
                    if rc == 0:
                        break
                    if rc != FQ_EMAGIC or time.monotonic() * 1e9 > deadline:
                        _raise_status(rc, OP_NONE, f"attaching to the {size}-byte ring file")
                    time.sleep(0.001)
        except BaseException:
            os.close(fd)
            raise
        self._mem = mem
        self._mem_len = size
        self._fd = fd
        return 0

    # ---- lifetime

    cdef int _enter(self) except -1:
        if self._mem == NULL:
            raise Closed("the ring is closed")
        self._busy += 1
        if self._busy == 1:
            self._busy_pid = _pid
        return 0

    cdef int _enter_read(self) except -1:
        if self._view_active:
            raise BufferError("a memoryview from get_view() still holds this ring's consumer "
                              "side; release it before the next get")
        return self._enter()

    cdef void _leave(self) noexcept:
        self._busy -= 1

    def close(self):
        """Unmap this handle (idempotent). Calls blocked on this handle in other threads raise
        Closed. Raises BufferError while memoryviews from get_view() are alive."""
        if self._mem == NULL:
            return
        if self._exports > 0:
            raise BufferError(f"cannot close the ring: {self._exports} memoryview(s) from "
                              f"get_view() are still alive")
        cdef uint32_t *busy = &self._busy
        if self._busy and self._busy_pid == _pid:
            fq_ring_interrupt(&self._r)
            with nogil:   # the interrupted calls need the GIL to finish
                while fq_load_acquire_u32(busy) != 0:
                    fq_sleep_ns(100000)
        fq_unmap(self._mem, self._mem_len)
        self._mem = NULL
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def unlink(self):
        """Remove a named ring's file (attached handles keep working until closed). No-op for
        an anonymous ring or an already removed file."""
        if self._path is not None:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass

    @classmethod
    def attach(cls, name, *, wait="futex", spin_ns=None):
        """Attach to the named ring `name` created by any process."""
        return cls(name=name, create=False, wait=wait, spin_ns=spin_ns)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __dealloc__(self):
        # never raises: a warning turned into an error is reported as unraisable
        cdef bint leaked = self._mem != NULL
        if self._mem != NULL:
            fq_unmap(self._mem, self._mem_len)
            self._mem = NULL
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if leaked:
            warnings.warn(f"unclosed fastq.Ring (name={self._name!r}); call close()",
                          ResourceWarning, stacklevel=1)

    def __reduce__(self):
        if self._mem == NULL:
            raise Closed("cannot pickle a closed ring")
        spin = self._r.spin_ns
        if self._path is not None:
            return (_attach_path, (self._path, self._wait_name, spin))
        from multiprocessing import reduction   # passes the fd to spawn/forkserver children
        return (_attach_fd, (reduction.DupFd(self._fd), self._wait_name, spin))

    def __repr__(self):
        if self._mem == NULL:
            return f"<fastq.Ring name={self._name!r} closed>"
        return (f"<fastq.Ring name={self._name!r} capacity={self._r.capacity} "
                f"messages={fq_ring_count(&self._r)} wait={self._wait_name!r}>")

    # ---- properties

    @property
    def closed(self):
        return self._mem == NULL

    @property
    def name(self):
        """The ring's name, or None for an anonymous ring."""
        return self._name

    @property
    def path(self):
        """The backing file of a named ring, or None."""
        return self._path

    @property
    def capacity(self):
        self._check()
        return self._r.capacity

    @property
    def max_message_size(self):
        self._check()
        return self._r.max_message

    @property
    def max_messages(self):
        self._check()
        return self._r.max_messages

    @property
    def wait(self):
        return self._wait_name

    @property
    def single_producer(self):
        self._check()
        return bool(self._r.flags & FQ_RING_F_SINGLE_PRODUCER)

    @property
    def single_consumer(self):
        self._check()
        return bool(self._r.flags & FQ_RING_F_SINGLE_CONSUMER)

    @property
    def used_bytes(self):
        """Bytes taken by unread messages (headers and padding included); a snapshot."""
        self._check()
        return fq_ring_used(&self._r)

    @property
    def lock_steals(self):
        """How many times a lock was taken over from a dead process (diagnostics)."""
        self._check()
        return self._r.hdr.lock_steals

    def _check(self):
        if self._mem == NULL:
            raise Closed("the ring is closed")

    def qsize(self):
        """Number of messages in the ring (a snapshot under concurrency)."""
        self._check()
        return fq_ring_count(&self._r)

    def empty(self):
        self._check()
        return fq_ring_count(&self._r) == 0

    def full(self):
        """True when not even a zero-length message fits."""
        self._check()
        return bool(fq_ring_is_full(&self._r))

    def __len__(self):
        return self.qsize()

    # ---- producing

    cdef int _put_bytes(self, const void *p, uint64_t n, int64_t tmo, str what) except -1:
        """Put n bytes as one message (the caller is inside _enter): with the GIL held for
        a small copy into a free ring, else — contended, or waiting for room — without."""
        cdef int64_t deadline, sl
        cdef int rc = FQ_RING_EBUSY
        cdef fq_ring *r = &self._r
        if n > r.max_message:
            raise RecordTooLarge(f"{what} of {n} bytes exceeds this ring's "
                                 f"max_message_size of {r.max_message} bytes")
        if n <= GIL_COPY_MAX:
            rc = fq_ring_put(r, p, <uint32_t>n, 0, 1)
        if rc == FQ_RING_EBUSY or (rc == FQ_EFULL and tmo != 0):
            deadline = _deadline(tmo)
            while True:
                sl = _slice(tmo, deadline)
                with nogil:
                    rc = fq_ring_put(r, p, <uint32_t>n, sl, 0)
                if not _again(rc, deadline):
                    break
        if rc < 0:
            _raise_status(rc, OP_PUT, f"a {n}-byte {what}")
        return 0

    def put(self, msg, bint block=True, timeout=None):
        """Append one bytes-like message; wait for room unless block=False (RingFull)."""
        cdef int64_t tmo = _timeout_ns(block, timeout)
        cdef Py_buffer view
        cdef bint have_view = False
        cdef const char *p
        cdef Py_ssize_t n
        if type(msg) is bytes:
            p = PyBytes_AS_STRING(msg)
            n = PyBytes_GET_SIZE(msg)
        else:
            PyObject_GetBuffer(msg, &view, PyBUF_SIMPLE)
            have_view = True
            p = <const char *>view.buf
            n = view.len
        try:
            self._enter()
            try:
                self._put_bytes(p, <uint64_t>n, tmo, "message")
            finally:
                self._leave()
        finally:
            if have_view:
                PyBuffer_Release(&view)

    def put_nowait(self, msg):
        """put(msg, block=False)."""
        self.put(msg, False)

    def put_many(self, msgs, bint block=True, timeout=None):
        """Append a batch all or nothing, published with one store. Waits until the whole
        batch fits (RingFull on timeout or with block=False; nothing written then).
        RecordTooLarge if one message exceeds max_message_size or the batch can never fit."""
        cdef int64_t deadline, sl
        cdef tuple seq = msgs if type(msgs) is tuple else tuple(msgs)
        cdef Py_ssize_t n = len(seq), i, nbufs = 0
        cdef int64_t tmo = _timeout_ns(block, timeout)
        cdef fq_ring_iov *iov
        cdef Py_buffer *bufs = NULL
        cdef uint64_t total = 0
        cdef int rc = FQ_RING_EBUSY
        cdef fq_ring *r = &self._r
        cdef object item
        if n == 0:
            return
        self._check()
        iov = <fq_ring_iov *>PyMem_Malloc(n * sizeof(fq_ring_iov))
        if iov == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                item = seq[i]
                if type(item) is bytes:
                    iov[i].base = PyBytes_AS_STRING(item)
                    iov[i].len = <uint32_t>min(PyBytes_GET_SIZE(item), 0xFFFFFFFF)
                    if PyBytes_GET_SIZE(item) > r.max_message:
                        raise RecordTooLarge(f"message {i} of the batch has {len(item)} bytes, over "
                                             f"max_message_size {r.max_message}")
                else:
                    if bufs == NULL:
                        bufs = <Py_buffer *>PyMem_Malloc(n * sizeof(Py_buffer))
                        if bufs == NULL:
                            raise MemoryError()
                    PyObject_GetBuffer(item, &bufs[nbufs], PyBUF_SIMPLE)
                    nbufs += 1
                    if bufs[nbufs - 1].len > r.max_message:
                        raise RecordTooLarge(f"message {i} of the batch has {bufs[nbufs - 1].len} "
                                             f"bytes, over max_message_size {r.max_message}")
                    iov[i].base = bufs[nbufs - 1].buf
                    iov[i].len = <uint32_t>bufs[nbufs - 1].len
                total += FQ_RING_REC_HDR + ((<uint64_t>iov[i].len + 7) & ~(<uint64_t>7))
            if total > r.capacity or (r.max_messages and <uint64_t>n > r.max_messages):
                raise RecordTooLarge(f"a batch of {n} messages taking {total} bytes can never fit "
                                     f"a ring of {r.capacity} bytes / max_messages "
                                     f"{r.max_messages}; split it")
            self._enter()
            try:
                if total <= GIL_COPY_MAX:
                    rc = fq_ring_put_many(r, iov, n, 0, 1)
                if rc == FQ_RING_EBUSY or (rc == FQ_EFULL and tmo != 0):
                    deadline = _deadline(tmo)
                    while True:
                        sl = _slice(tmo, deadline)
                        with nogil:
                            rc = fq_ring_put_many(r, iov, n, sl, 0)
                        if not _again(rc, deadline):
                            break
                if rc < 0:
                    _raise_status(rc, OP_PUT, f"a batch of {n} messages ({total} bytes)")
            finally:
                self._leave()
        finally:
            for i in range(nbufs):
                PyBuffer_Release(&bufs[i])
            PyMem_Free(bufs)
            PyMem_Free(iov)

    # ---- consuming

    cdef bytes _take(self, const uint8_t *m, int64_t n):
        """A bytes copy of a message inside a begun read (the read stays begun)."""
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
        cdef char *dst = PyBytes_AS_STRING(out)
        if n > GIL_COPY_MAX:
            with nogil:
                memcpy(dst, m, n)
        else:
            memcpy(dst, m, n)
        return out

    cdef int64_t _read_begin(self, int64_t tmo, const uint8_t **m) except? -2:
        """fq_ring_read_begin, waiting up to tmo ns for a message (with the GIL held
        for a free lock and a ready message, else without it, in signal-checked
        slices). Returns its status: the message size, FQ_EEMPTY, FQ_ETIMEDOUT, ..."""
        cdef int64_t deadline, sl
        cdef int64_t n = fq_ring_read_begin(&self._r, 0, 1, m)
        cdef fq_ring *r = &self._r
        if n == FQ_RING_EBUSY or (n == FQ_EEMPTY and tmo != 0):
            deadline = _deadline(tmo)
            while True:
                sl = _slice(tmo, deadline)
                with nogil:
                    n = fq_ring_read_begin(r, sl, 0, m)
                if not _again(n, deadline):
                    break
        return n

    cdef int64_t _begin(self, int64_t tmo, const uint8_t **m) except? -1:
        cdef int64_t n = self._read_begin(tmo, m)
        if n < 0:
            if n == FQ_EINVAL:
                raise InvalidArgument("two threads read a single_consumer ring through one "
                                      "handle at the same time")
            _raise_status(n, OP_GET, "message")
        return n

    def get(self, bint block=True, timeout=None):
        """Remove and return the oldest message as bytes; wait unless block=False (RingEmpty)."""
        cdef int64_t tmo = _timeout_ns(block, timeout)
        cdef const uint8_t *m = NULL
        cdef int64_t n
        cdef bytes out
        self._enter_read()
        try:
            n = self._begin(tmo, &m)
            try:
                out = self._take(m, n)
            except BaseException:
                fq_ring_read_abort(&self._r)
                raise
            fq_ring_read_commit(&self._r)
            return out
        finally:
            self._leave()

    def get_nowait(self):
        """get(block=False)."""
        return self.get(False)

    def get_many(self, max_messages=2**31 - 1, bint block=True, timeout=None):
        """Wait for one message (RingEmpty on timeout / block=False), then take up to
        `max_messages` already in the ring without waiting again. One lock round trip."""
        if max_messages < 1:
            raise InvalidArgument(f"max_messages must be >= 1, got {max_messages!r}")
        cdef int64_t tmo = _timeout_ns(block, timeout)
        cdef Py_ssize_t limit = min(max_messages, 2**62), got = 1
        cdef const uint8_t *m = NULL
        cdef int64_t n
        cdef list out = []
        self._enter_read()
        try:
            n = self._begin(tmo, &m)
            try:
                out.append(self._take(m, n))
                while got < limit:
                    n = fq_ring_read_next(&self._r, &m)
                    if n == FQ_EEMPTY:
                        break
                    if n < 0:
                        _raise_status(n, OP_GET, "message for get_many")
                    out.append(self._take(m, n))
                    got += 1
            except BaseException:
                fq_ring_read_abort(&self._r)
                raise
            fq_ring_read_commit(&self._r)
            return out
        finally:
            self._leave()

    def get_into(self, buffer, bint block=True, timeout=None):
        """Copy the oldest message into a writable buffer and return its length. If it does
        not fit, RecordTooLarge names the size needed and the message stays in the ring."""
        cdef int64_t deadline, sl
        cdef int64_t tmo = _timeout_ns(block, timeout)
        cdef Py_buffer view
        cdef int64_t n = FQ_RING_EBUSY
        cdef uint64_t needed = 0
        cdef fq_ring *r = &self._r
        PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE)
        try:
            self._enter_read()
            try:
                if view.len <= GIL_COPY_MAX:
                    n = fq_ring_get(r, view.buf, <uint64_t>view.len, 0, 1, &needed)
                if n == FQ_RING_EBUSY or (n == FQ_EEMPTY and tmo != 0):
                    deadline = _deadline(tmo)
                    while True:
                        sl = _slice(tmo, deadline)
                        with nogil:
                            n = fq_ring_get(r, view.buf, <uint64_t>view.len, sl, 0, &needed)
                        if not _again(n, deadline):
                            break
                if n == FQ_ETOOBIG:
                    raise RecordTooLarge(f"the next message has {needed} bytes; the buffer "
                                         f"holds {view.len}")
                if n < 0:
                    _raise_status(n, OP_GET, "message")
                return n
            finally:
                self._leave()
        finally:
            PyBuffer_Release(&view)

    def get_view(self, bint block=True, timeout=None):
        """Zero-copy read: a read-only memoryview of the oldest message inside the ring.

        The message is consumed when the view (and every slice of it) is released — use
        ``with ring.get_view() as mv:``. Until then this handle's consumer side is held
        (other consumers wait; in a multi-consumer ring a killed holder's message is
        delivered again), further gets on this handle raise BufferError, and close()
        raises BufferError."""
        cdef int64_t tmo = _timeout_ns(block, timeout)
        cdef const uint8_t *m = NULL
        cdef int64_t n
        cdef _RingView v
        self._enter_read()
        try:
            n = self._begin(tmo, &m)
            v = _RingView.__new__(_RingView)
            v._ring = self
            v._ptr = m
            v._len = <Py_ssize_t>n
            self._view_active = True
            try:
                return memoryview(v)
            except BaseException:
                self._view_active = False
                fq_ring_read_abort(&self._r)
                raise
        finally:
            self._leave()

    cdef void _release_view(self) noexcept:
        self._exports -= 1
        self._view_active = False
        fq_ring_read_commit(&self._r)

    # ---- framed records (the producer's accumulator and memory topics)
    #
    # One ring message per record, native byte order (the memory never leaves the machine):
    #   0  u32 partition   4  i32 key_len (-1: null)   8  i32 value_len (-1: null)
    #   12 u32 headers_len 16 i64 timestamp (ms)       24 key, value, headers bytes
    # headers: u32 count, then per header u32 key_len, key (UTF-8), i32 value_len (-1:
    # null), value. A zero-length message is a wake-up and is skipped by _get_records.

    def _put_record(self, uint32_t partition, value, key=None, headers=None, timestamp=None,
                    bint block=False, timeout=None):
        """Frame one record (see above) and put it; returns its timestamp. Raises RingFull
        (full and not blocking / timed out), RecordTooLarge, InvalidArgument."""
        return self._put_rec(partition, value, key, headers, timestamp, _timeout_ns(block, timeout))

    cdef int64_t _put_rec(self, uint32_t partition, object value, object key, object headers,
                          object timestamp, int64_t tmo) except -1:
        """_put_record for C callers (fastq._core._producer); returns the record's timestamp."""
        cdef int64_t ts = _record_ts(timestamp)
        cdef uint64_t total
        cdef uint8_t stack[REC_STACK]
        cdef uint8_t *buf = stack
        value = _record_bytes(value, "value")
        key = _record_bytes(key, "key")
        hb = _encode_headers(headers) if headers else None
        total = _frame_size(key, value, hb)
        self._enter()
        try:
            if total > self._r.max_message:         # before allocating for it
                raise RecordTooLarge(f"a record of {total} bytes (framed) exceeds this ring's "
                                     f"max_message_size of {self._r.max_message} bytes")
            if total > REC_STACK:
                buf = <uint8_t *>PyMem_Malloc(total)
                if buf == NULL:
                    raise MemoryError()
            try:
                _write_frame(buf, partition, ts, key, value, hb)
                self._put_bytes(buf, total, tmo, "record")
            finally:
                if buf != stack:
                    PyMem_Free(buf)
        finally:
            self._leave()
        return ts

    # ---- a batch read for fastq._core._producer's drain. These go through this module because
    # fq_ring.c must be linked once: its pid cache (lock words) is per copy.

    cdef int64_t _read_first(self, const uint8_t **m) except? -2:
        """Begin a read without waiting for a message: the first message's length, or a
        status (FQ_EEMPTY, ...). A busy consumer lock is waited for, GIL released and
        signals checked, however long its holder takes (descheduled under load; a dead
        holder's lock is taken over): a busy lock is never reported as an empty ring —
        a drainer that took it for one left a full accumulator behind it."""
        cdef fq_ring *r = &self._r
        cdef int64_t n = fq_ring_read_begin(r, 0, 1, m)
        while n == FQ_RING_EBUSY or n == FQ_ETIMEDOUT:
            if n == FQ_ETIMEDOUT:
                PyErr_CheckSignals()
            with nogil:
                n = fq_ring_read_begin(r, 0, 0, m)
        return n

    cdef int64_t _read_next(self, const uint8_t **m) noexcept:
        return fq_ring_read_next(&self._r, m)

    cdef void _read_commit(self) noexcept:
        fq_ring_read_commit(&self._r)

    cdef uint64_t _used(self) noexcept:
        return fq_ring_used(&self._r)

    def _get_records(self, max_messages=2**31 - 1, bint block=False, timeout=None, topic=None):
        """Take up to `max_messages` framed records (waiting for the first only if
        `block`). Returns a list of ``(partition, -1, timestamp, key, value, headers)``
        tuples, or of :class:`MemoryRecord` of `topic` when a topic name is given;
        empty when there is nothing (never RingEmpty unless blocking timed out)."""
        if max_messages < 1:
            raise InvalidArgument(f"max_messages must be >= 1, got {max_messages!r}")
        if topic is not None and type(topic) is not str:
            raise InvalidArgument(f"topic must be a str or None, got {topic!r}")
        cdef int64_t tmo = _timeout_ns(block, timeout)
        cdef Py_ssize_t limit = min(max_messages, 2**62), got = 0
        cdef const uint8_t *m = NULL
        cdef int64_t n
        cdef list out = []
        cdef fq_ring *r = &self._r
        self._enter_read()
        try:
            n = self._read_begin(tmo, &m)
            if n == FQ_EEMPTY or n == FQ_ETIMEDOUT:
                return out
            if n < 0:
                _raise_status(n, OP_GET, "record")
            try:
                while True:
                    if n > 0:
                        _decode_record(m, n, out, topic)
                        got += 1
                        if got >= limit:
                            break
                    n = fq_ring_read_next(r, &m)
                    if n == FQ_EEMPTY:
                        break
                    if n < 0:
                        _raise_status(n, OP_GET, "record")
            except BaseException:
                fq_ring_read_abort(r)
                raise
            fq_ring_read_commit(r)
            return out
        finally:
            self._leave()

    def _wait_readable(self, timeout=None):
        """Wait until the ring holds a message without taking it, or any lock (see
        fq_ring_wait_readable). True if one is there."""
        cdef int64_t tmo = _timeout_ns(True, timeout)
        cdef int64_t deadline, sl
        cdef int rc
        cdef fq_ring *r = &self._r
        self._enter_read()
        try:
            rc = fq_ring_wait_readable(r, 0)
            if rc == FQ_EEMPTY and tmo != 0:
                deadline = _deadline(tmo)
                while True:
                    sl = _slice(tmo, deadline)
                    with nogil:
                        rc = fq_ring_wait_readable(r, sl)
                    if not _again(rc, deadline):
                        break
            if rc == 0:
                return True
            if rc == FQ_EEMPTY or rc == FQ_ETIMEDOUT:
                return False
            _raise_status(rc, OP_GET, "message to wait for")
        finally:
            self._leave()

    # ---- test hooks

    def _debug_hold_lock(self, which):
        """Take the 'producer' or 'consumer' lock and never release it (crash tests)."""
        self._check()
        cdef int rc
        cdef fq_ring *r = &self._r
        cdef int w = 1 if which == "consumer" else 0
        with nogil:
            rc = fq_ring_debug_hold_lock(r, w)
        if rc < 0:
            _raise_status(rc, OP_NONE, "holding a lock")


cdef class _RingView:
    """Buffer exporter behind Ring.get_view(): one export, consumed on release."""

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if self._state != 0:
            raise BufferError("a ring view can be exported only once")
        PyBuffer_FillInfo(buffer, self, <void *>self._ptr, self._len, 1, flags)
        self._state = 1
        self._ring._exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        if self._state == 1:
            self._state = 2
            self._ring._release_view()


cdef uint64_t _round_capacity(object capacity) except 0:
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise InvalidArgument(f"capacity must be an int, got {capacity!r}")
    if capacity < FQ_RING_MIN_CAPACITY or capacity > FQ_RING_MAX_CAPACITY:
        raise InvalidArgument(f"capacity must be in [{FQ_RING_MIN_CAPACITY}, "
                              f"{FQ_RING_MAX_CAPACITY}] bytes, got {capacity!r}")
    cdef uint64_t c = FQ_RING_MIN_CAPACITY
    while c < <uint64_t>capacity:
        c <<= 1
    return c


include "_ringframe.pxi"
