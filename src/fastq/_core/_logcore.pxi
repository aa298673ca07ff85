# LogCore: shared state, writer lock, append and read hot paths (included by _storage.pyx).

from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_SIZE, PySequence_Fast_GET_ITEM
from cpython.ref cimport PyObject
from cpython.long cimport PyLong_AsLongLongAndOverflow
from bisect import bisect_right

import random as _random


cdef int64_t timeout_ns(object timeout) except -2:
    """A wait's ``timeout`` in seconds (None or inf: no limit, -1) as nanoseconds."""
    cdef double d
    cdef long long i
    cdef int overflow = 0
    if timeout is None:
        return -1
    if type(timeout) is int:              # poll(n, 0), wait(off, 30): no float on the way
        i = PyLong_AsLongLongAndOverflow(timeout, &overflow)
        if overflow == 0 and 0 <= i < 1_000_000_000:
            return i * 1_000_000_000
    elif type(timeout) is float:
        d = timeout
        if d >= 0:
            return -1 if d >= 1e9 else <int64_t>(d * 1e9)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout >= 0:
        raise InvalidArgument(f"timeout={timeout!r}: expected None or a number of seconds >= 0")
    if timeout >= 1e9:                     # ~31 years, and inf: no limit
        return -1
    return <int64_t>(timeout * 1e9)


cdef inline int check_offset_arg(object v, str what) except -1:
    """An offset argument must be an int (bool is not); one that does not fit in 64 bits
    is OffsetOutOfRange here, where Cython's conversion would raise OverflowError."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise InvalidArgument(f"{what} must be an int, got {type(v).__name__}")
    if what != "end" and not INT64_MIN <= v <= INT64_MAX:    # a huge end just means no end
        raise OffsetOutOfRange(f"{what} {v} out of range: offsets are 64-bit integers")
    return 0


cdef inline int64_t check_ts(object timestamp) except -2:
    cdef int64_t ts
    if timestamp is None:
        return fq_realtime_ms()
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise InvalidArgument(f"timestamp must be an int of milliseconds, got {type(timestamp).__name__}")
    if timestamp < 0 or timestamp > INT64_MAX // 2:
        raise InvalidArgument(f"timestamp {timestamp} out of range (milliseconds since the epoch, >= 0)")
    ts = timestamp
    return ts


cdef inline int set_field(object obj, const uint8_t **ptr, int32_t *length, list keep, str what) except -1:
    """Point (ptr, length) at a bytes-like object's bytes; None -> length -1.
    Non-bytes buffers are copied to bytes kept alive in `keep`."""
    cdef Py_ssize_t n
    if obj is None:
        ptr[0] = NULL
        length[0] = -1
        return 0
    if type(obj) is not bytes:
        if isinstance(obj, str):
            raise InvalidArgument(f"{what} must be bytes-like, not str (encode it first)")
        try:
            obj = bytes(memoryview(obj))
        except TypeError:
            raise InvalidArgument(f"{what} must be bytes-like or None, got {type(obj).__name__}") from None
        keep.append(obj)
    n = PyBytes_GET_SIZE(obj)
    if n > INT32_MAX - 1024:
        raise RecordTooLarge(f"{what} of {n} bytes is larger than a record can be")
    ptr[0] = <const uint8_t *>PyBytes_AS_STRING(obj)
    length[0] = <int32_t>n
    return 0


@cython.final
cdef class RecScratch:
    """Per-call arrays of records and headers for one append. Per call, not per log:
    an append may wait for the writer lock (or roll) with the GIL released, and another
    thread appending meanwhile must not write over the records being planned."""

    def __dealloc__(self):
        PyMem_Free(self.recs)
        PyMem_Free(self.hdrs)

    cdef int reserve(self, Py_ssize_t n, Py_ssize_t nh) except -1:
        """Room for n records and nh headers (existing entries kept; pointers into
        hdrs are invalidated when it grows, so size it before filling)."""
        cdef void *p
        if n > self.recs_cap:
            p = PyMem_Realloc(self.recs, n * sizeof(fq_record_in))
            if p == NULL:
                raise MemoryError()
            self.recs = <fq_record_in *>p
            self.recs_cap = n
        if nh > self.hdrs_cap:
            p = PyMem_Realloc(self.hdrs, nh * sizeof(fq_header))
            if p == NULL:
                raise MemoryError()
            self.hdrs = <fq_header *>p
            self.hdrs_cap = nh
        return 0


cdef class LogCore:
    """Shared state of one log directory plus the append/read hot path.

    Subclassed by :class:`fastq.log.Log`, which supplies the policy methods this class
    calls: ``_refresh()`` (rescan segments after another process changed the list),
    ``_roll_locked()`` and ``_group_sync(offset)``.

    Process-safety: appends from any number of processes are serialized by the writer
    lock in the shared state; readers never lock. Thread-safety: one LogCore may be
    shared by threads: the records of an append live in per-call memory (the stack or a
    RecScratch), never in the LogCore, because the shared lock is taken without the GIL
    when contended and a roll runs Python code, so another thread may append meanwhile.
    """

    def __cinit__(self):
        self.st = NULL
        self.state_fd = -1
        self._segments = []
        self._durability = 0
        self.segment_bytes = 1 << 26
        self.max_record_bytes = 1 << 20
        self.index_interval = 4096
        self.lockword = fq_log_lock_word(<uint32_t>_random.getrandbits(32))
        self.partition_id = -1
        self.pretouch_window = PRETOUCH_MIN
        self._ts_ahead_ms = -1
        self._ts_bound = -1

    # -- shared state -------------------------------------------------------------------

    def _map_state(self, str path):
        """Open (creating if missing) and map the state file. Returns its size before
        mapping (0 for a new file). The caller initializes a new state."""
        cdef bytes b = os.fsencode(path)
        cdef int fd = c_open(b, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        cdef void *p
        cdef int rc
        cdef int64_t size
        if fd < 0:
            raise_status(-errno, "open state", path)
        self.state_fd = fd
        size = fq_file_size(fd)
        if size < 0:
            raise_status(size, "stat state", path)
        if 0 < size < FQ_STATE_SIZE:
            # A create that failed part-way leaves a short file of zeros (on a full disk
            # fallocate keeps, and sizes the file to, what it got before ENOSPC); a written
            # state never is one (its header is written once the whole page is
            # allocated): start anew rather than refuse the log forever.
            try:
                head = os.pread(fd, <Py_ssize_t>size, 0)
            except OSError as e:
                raise_status(-e.errno, "read state", path)
            if head.count(0) != len(head):
                raise CorruptRecord(f"{path} is {size} bytes, not a fastq state file "
                                    f"({FQ_STATE_SIZE} bytes)", path, size)
            size = 0
        rc = fq_preallocate(fd, FQ_STATE_SIZE)
        if rc < 0:
            raise_status(rc, "preallocate state", path)
        rc = fq_map(fd, FQ_STATE_SIZE, 1, &p)
        if rc < 0:
            raise_status(rc, "map state", path)
        self.st = <fq_log_state *>p
        return size

    def _map_state_copy(self, str path):
        """readonly=True: read the state file into private memory instead of mapping it.
        Nothing is ever written to the file; what readers store in the state (waiter
        counts) stays in this copy. Returns the file's size."""
        cdef void *p
        cdef int rc
        self.state_fd = open_file(path, O_RDONLY | O_CLOEXEC)
        size = fq_file_size(self.state_fd)
        if size < 0:
            raise_status(size, "stat state", path)
        if size != FQ_STATE_SIZE:
            raise CorruptRecord(f"{path} is {size} bytes, not a fastq state file "
                                f"({FQ_STATE_SIZE} bytes)", path, size)
        try:
            data = os.pread(self.state_fd, FQ_STATE_SIZE, 0)
        except OSError as e:
            raise_status(-e.errno, "read state", path)
        if len(data) != FQ_STATE_SIZE:
            raise CorruptRecord(f"{path}: short read of the state file", path, len(data))
        rc = fq_map_anon(FQ_STATE_SIZE, &p)
        if rc < 0:
            raise_status(rc, "map a private copy of the state", path)
        memcpy(p, <char *>data, FQ_STATE_SIZE)
        self.st = <fq_log_state *>p
        self._readonly = True
        return size

    def _refuse_write(self):
        raise ReadOnly(f"log {getattr(self, 'path', '?')} was opened with readonly=True: "
                       "appends, rolls, retention and truncation are refused")

    @property
    def state_fd(self):
        return self.state_fd

    def _state_valid(self):
        return self.st != NULL and self.st.magic[:8] == b"FQSTATE1" and \
            self.st.version == FQ_STATE_VERSION and self.st.size == FQ_STATE_SIZE

    def _state_init(self, int64_t created_ms):
        memset(self.st, 0, FQ_STATE_SIZE)
        memcpy(self.st.magic, b"FQSTATE1", 8)
        self.st.version = FQ_STATE_VERSION
        self.st.size = FQ_STATE_SIZE
        self.st.created_ms = created_ms
        self.st.max_timestamp = -1

    cdef fq_log_state *_state(self) except NULL:
        """The mapped shared state; Closed once close() released it (a property read
        from another thread after, or during, a close must not touch the mapping)."""
        if self.st == NULL:
            self._check_open()
            raise Closed(f"log {getattr(self, 'path', '?')} is closed")
        return self.st

    def _state_raw(self):
        return PyBytes_FromStringAndSize(<char *>self._state(), FQ_STATE_SIZE)

    def _mark_clean(self):
        """Last one out, writer lock held: flag the state clean and store its checksum
        (csrc/fq_log.h, "Clean close")."""
        cdef fq_log_state *st = self._state()
        st.flags = st.flags | FQ_STATE_FLAG_CLEAN | FQ_STATE_FLAG_CHECKED
        st.clean_crc = fq_log_state_crc(st)

    def _clean_state_damaged(self):
        """True for a clean, checksummed state whose bytes no longer match its checksum
        (the file was damaged while no process had the log open)."""
        cdef fq_log_state *st = self._state()
        return bool(st.flags & FQ_STATE_FLAG_CLEAN and st.flags & FQ_STATE_FLAG_CHECKED
                    and st.clean_crc != fq_log_state_crc(st))

    def _state_fields(self):
        """The state's fields as they stand, read without the seqlock: for a private copy
        (``_map_state_copy``) that nothing writes, such as ``fastq.log.verify`` reading the
        state of a log it does not open (a dead writer's odd seqlock must not stall it)."""
        cdef fq_log_state *st = self._state()
        return {"flags": st.flags, "boot_id": PyBytes_FromStringAndSize(<char *>st.boot_id, 16),
                "next_offset": st.next_offset, "end_pos": st.end_pos,
                "active_base": st.active_base, "recovery_point": st.recovery_point,
                "start_offset": st.log_start_offset,
                "checksum_ok": not self._clean_state_damaged()}

    property _flags:
        def __get__(self): return self._state().flags
        def __set__(self, uint32_t v): self._state().flags = v

    property _boot_id:
        def __get__(self): return PyBytes_FromStringAndSize(<char *>self._state().boot_id, 16)
        def __set__(self, bytes v):
            if len(v) != 16:
                raise InvalidArgument("boot id must be 16 bytes")
            memcpy(self._state().boot_id, <char *>v, 16)

    property _opens:
        def __get__(self): return self._state().opens
        def __set__(self, uint64_t v): self._state().opens = v

    @property
    def recovery_point(self):
        """Every offset below this has been fsynced (the durable watermark). Read-only:
        the log moves it (shared state, written under the writer lock)."""
        return self._state().recovery_point

    @property
    def start_offset(self):
        """The first offset still in the log (raised by retention). Read-only: the log
        moves it (shared state, written under the writer lock)."""
        return self._state().log_start_offset

    cdef int _check_writer(self, str what) except -1:
        """Shared state is written only by the writer-lock holder, or by the process that
        opens the log alone (recovery under the exclusive state flock)."""
        cdef fq_log_state *st = self._state()
        if not self._exclusive and fq_load_acquire_u64(&st.lock) != self.lockword:
            raise AssertionError(f"{what} of {getattr(self, 'path', '?')} written without the "
                                 "writer lock")
        return 0

    def _store_recovery_point(self, int64_t v):
        """Set recovery_point (writer lock held, or alone at open; see _check_writer)."""
        self._check_writer("recovery_point")
        self.st.recovery_point = v

    def _store_start_offset(self, int64_t v):
        """Set start_offset (writer lock held, or alone at open; see _check_writer)."""
        self._check_writer("start_offset")
        self.st.log_start_offset = v

    @property
    def end_offset(self):
        """The offset the next appended record will get (Kafka's log end offset)."""
        return fq_load_acquire_u64(<uint64_t *>&self._state().next_offset)

    def snapshot(self):
        """A consistent copy of the commit group as a dict."""
        cdef fq_log_snapshot s
        cdef int rc
        rc = fq_log_snapshot_read(self._state(), &s, 1000000000)
        if rc < 0:
            raise_status(rc, "read log state")
        return {"next_offset": s.next_offset, "end_pos": s.end_pos, "active_base": s.active_base,
                "max_timestamp": s.max_timestamp, "index_count": s.index_count,
                "timeindex_count": s.timeindex_count, "bytes_since_index": s.bytes_since_index,
                "written_end": s.written_end, "generation": s.generation}

    def _commit(self, int64_t next_offset, int64_t end_pos, int64_t active_base, int64_t max_timestamp,
                int64_t index_count, int64_t timeindex_count, int64_t bytes_since_index,
                int64_t written_end, uint64_t generation):
        """Publish a new commit group (caller holds the writer lock)."""
        cdef fq_log_snapshot s
        s.next_offset = next_offset
        s.end_pos = end_pos
        s.active_base = active_base
        s.max_timestamp = max_timestamp
        s.index_count = <uint32_t>index_count
        s.timeindex_count = <uint32_t>timeindex_count
        s.bytes_since_index = bytes_since_index
        s.written_end = written_end
        s.generation = generation
        fq_log_commit(self.st, &s)
        fq_log_notify(self.st)
        if self._notifier is not None and self._notifier.words != NULL:   # NULL: topic closed
            fq_notify_bump(self._notifier.words, self._notifier.words + 1)

    def _raise_recovery_point(self, int64_t v):
        """recovery_point = max(recovery_point, v), atomically across processes."""
        cdef uint64_t cur
        cdef fq_log_state *st = self._state()
        while True:
            cur = fq_load_acquire_u64(<uint64_t *>&st.recovery_point)
            if <int64_t>cur >= v or fq_cas_u64(<uint64_t *>&st.recovery_point, cur, <uint64_t>v):
                return

    # -- writer lock --------------------------------------------------------------------

    cdef int _lock(self) except -1:
        cdef int rc
        cdef fq_log_state *st = self.st
        if st == NULL or self._closing:
            self._check_open()
            raise Closed(f"log {getattr(self, 'path', '?')} is closing")
        if self._readonly:
            self._refuse_write()
        if fq_log_trylock(st, self.lockword):
            return 0
        self._in_wait += 1                  # close leaves the mapping to us (_wait_done)
        with nogil:
            rc = fq_log_lock(st, self.lockword, -1)
        self._lock_done(st, rc, False)
        if rc < 0:
            raise_status(rc, "take the log's writer lock")
        if rc == 1:
            self._repair_locked()
        return 0

    cdef int _lock_done(self, fq_log_state *st, int rc, bint closer) except -1:
        """Back from waiting for the writer lock (rc from fq_log_lock). When the log was
        closed meanwhile (or is closing, for anyone but close itself), give the lock up
        before the mapping goes and raise Closed: release it, or, when it was stolen
        from a dead holder, leave it to a gone owner so the next taker repairs what that
        holder left."""
        cdef bint gone = self.st == NULL or (self._closing and not closer)
        if gone:
            if rc == 0:
                fq_log_unlock(st, self.lockword)
            elif rc == 1:
                fq_log_abandon(st, self.lockword)
        self._wait_done()                   # the last one out unmaps; raises Closed if closed
        if gone:
            raise Closed(f"log {getattr(self, 'path', '?')} is closing")
        return 0

    cdef inline void _unlock(self) noexcept:
        fq_log_unlock(self.st, self.lockword)

    def _lock_py(self, timeout=None, closer=False):
        """Take the writer lock from Python (roll, retention, truncation; close passes
        closer=True, the only caller allowed while the log is closing)."""
        cdef int rc
        cdef int64_t t = -1 if timeout is None else <int64_t>(timeout * 1e9)
        cdef fq_log_state *st
        self._check_open()
        if self._closing and not closer:
            raise Closed(f"log {getattr(self, 'path', '?')} is closing")
        if self._readonly:
            self._refuse_write()
        st = self.st
        self._in_wait += 1
        with nogil:
            rc = fq_log_lock(st, self.lockword, t)
        self._lock_done(st, rc, closer)
        if rc < 0:
            raise_status(rc, "take the log's writer lock")
        if rc == 1:
            self._repair_locked()

    def _await_writer(self, double timeout):
        """For close: wait until no thread of this process holds the writer lock (one
        may be mid-append, mid-roll or mid-retention; each needs the GIL to finish, so
        this naps with it released). Set _closing first: a thread that takes the lock
        after that gives it up at once. Returns False after `timeout` seconds."""
        cdef int64_t deadline = fq_monotonic_ns() + <int64_t>(timeout * 1e9)
        while self.st != NULL and fq_load_acquire_u64(&self.st.lock) == self.lockword:
            if fq_monotonic_ns() >= deadline:
                return False
            with nogil:
                fq_sleep_ns(500000)
        return True

    def _unlock_py(self):
        fq_log_unlock(self.st, self.lockword)

    def _repair_locked(self):
        """We took the lock from a writer that died holding it: drop what it left past
        the committed end, so nothing uncommitted can ever surface."""
        fq_log_repair(self.st)
        if self.st.generation != self._gen:
            self._refresh()
        seg = self._active
        if seg is not None:
            seg.refresh_size()
            seg.zero(self.st.end_pos, max(self.st.written_end, self.st.end_pos))
            seg.zero_index(self.st.index_count, self.st.timeindex_count)
            self.st.written_end = self.st.end_pos

    # -- appends ------------------------------------------------------------------------

    cdef int _check_open(self) except -1:
        if self._closed or self.st == NULL:
            if self._forked:
                raise UsedAfterFork(f"log {getattr(self, 'path', '')} was opened before fork(): "
                                    "it belongs to the parent; open a new one in the child")
            if self._failure is not None:
                raise FsyncFailed(f"log failed earlier and must be reopened: {self._failure}")
            raise Closed(f"log {getattr(self, 'path', '?')} is closed")
        return 0

    cdef int _prepare_locked(self, int64_t size) except -1:
        """Make room for `size` bytes at the end of the active segment (refresh after
        another process changed segments, roll when full or old, grow the file).
        The caller writes at st.end_pos."""
        cdef int64_t pos, need, win, now
        cdef bint ask
        cdef Segment seg
        if self.st.generation != self._gen:
            self._refresh()
        pos = self.st.end_pos
        if pos > 0 and (pos + size > self.segment_bytes or
                        (self.segment_ms > 0
                         and fq_realtime_coarse_ms() - self._active_created_ms >= self.segment_ms)):
            self._roll_locked()
            pos = self.st.end_pos
        seg = self._active
        need = pos + size
        win = self.pretouch_window
        ask = (need + win // 2 > seg.populated and not seg.pf_requested
               and self._pretouch is not None)
        if ask:
            now = fq_monotonic_ns()
            if 0 < seg.populated < need and win < PRETOUCH_MAX:
                # the writer passed the end of the last window before the pretoucher was
                # back (it waits for the GIL, up to a switch interval, twice per window):
                # a fast writer gets a wider window
                win = self.pretouch_window = win * 2
            elif (win > PRETOUCH_MIN and self._pretouch_asked_ns > 0
                  and now - self._pretouch_asked_ns > PRETOUCH_IDLE_NS):
                # a slow one (over a second per half window) a narrower one: what is
                # populated stays resident, and a once-busy idle log should not hold
                # 16 MiB per segment
                win = self.pretouch_window = win // 2
            self._pretouch_asked_ns = now
        if need + win > seg.alloc_size:
            # allocate ahead, so the pretoucher can populate ahead (Segment._grow stops
            # at segment_bytes and never passes the mapping)
            seg._grow(need, need + win)
        if need > self.st.written_end:
            self.st.written_end = need
        if ask:
            seg.pf_requested = True
            self._pretouch(seg, need + win)
        return 0

    cdef void _stage_locked(self, fq_log_snapshot *s, int64_t pos, int64_t size, int64_t max_ts,
                            int32_t n) noexcept:
        """Account for a batch of `n` records written at `pos` in the pending commit
        group `s` (offsets, end, max timestamp), adding index entries as due. The
        entries are written before the commit publishes them, so readers never see an
        entry for uncommitted bytes."""
        cdef Segment seg = self._active
        cdef int64_t base = s.next_offset
        cdef int64_t ts
        cdef uint32_t r
        s.next_offset = base + n
        s.end_pos = pos + size
        if max_ts > s.max_timestamp:
            s.max_timestamp = max_ts
        s.bytes_since_index += size
        if s.bytes_since_index > self.index_interval:
            if s.index_count < seg.idx_avail:
                fq_index_put(seg.idx, s.index_count, <uint32_t>(base - seg.base_offset), <uint32_t>pos)
                s.index_count += 1
            if s.timeindex_count < seg.idx_avail:
                ts = -1
                if s.timeindex_count > 0:
                    fq_timeindex_get(seg.tidx, s.timeindex_count - 1, &ts, &r)
                if s.max_timestamp > ts:
                    fq_timeindex_put(seg.tidx, s.timeindex_count, s.max_timestamp,
                                     <uint32_t>(base + n - 1 - seg.base_offset))
                    s.timeindex_count += 1
            s.bytes_since_index = 0

    cdef void _begin_locked(self, fq_log_snapshot *s) noexcept:
        """The pending commit group starts as the current one (writer lock held)."""
        cdef fq_log_state *st = self.st
        s.next_offset = st.next_offset
        s.end_pos = st.end_pos
        s.active_base = st.active_base
        s.max_timestamp = st.max_timestamp
        s.index_count = st.index_count
        s.timeindex_count = st.timeindex_count
        s.bytes_since_index = st.bytes_since_index
        s.written_end = st.written_end
        s.generation = st.generation

    cdef void _publish_locked(self, fq_log_snapshot *s) noexcept:
        """Publish the commit group and wake tailing readers."""
        fq_log_commit(self.st, s)
        fq_log_notify(self.st)
        if self._notifier is not None and self._notifier.words != NULL:   # NULL: topic closed
            fq_notify_bump(self._notifier.words, self._notifier.words + 1)

    cdef int64_t _write_chunk_locked(self, fq_log_snapshot *s, const fq_record_in *recs, int32_t k,
                                     int64_t size) except -1:
        """Encode recs[0:k] as one batch at the pending end; stage it."""
        cdef int64_t pos = s.end_pos
        cdef int64_t rc, max_ts
        cdef int32_t j
        cdef Segment seg = self._active
        rc = fq_batch_encode(seg.data + pos, <size_t>size, s.next_offset, 0, recs, k)
        if rc < 0:
            raise_status(rc, "encode batch")
        max_ts = recs[0].timestamp
        for j in range(1, k):
            if recs[j].timestamp > max_ts:
                max_ts = recs[j].timestamp
        self._stage_locked(s, pos, size, max_ts, k)
        return 0

    cdef int64_t _append_recs(self, const fq_record_in *recs, int32_t n) except -1:
        """Append recs[0:n] (memory the caller owns until this returns) under one hold
        of the writer lock; returns the first offset. Records that do not fit one batch
        (max_record_bytes) are split into several, and still published by one commit —
        all or nothing to readers and to recovery — unless together they exceed a whole
        segment (then each batch is committed as it is written)."""
        cdef int64_t size, first, total = 0, done_offset
        cdef int32_t i = 0, k
        cdef fq_log_snapshot s
        cdef list plan = None
        if self._ts_ahead_ms >= 0:
            # one compare per record against a bound that only moves when a timestamp
            # passes it (no clock read while records are stamped "now")
            for i in range(n):
                if recs[i].timestamp > self._ts_bound:
                    self._check_ahead(recs[i].timestamp)
            i = 0
        # plan the batches before taking the lock
        size = fq_batch_size(recs, n)
        if size < 0:
            raise_status(size, "encode batch")
        if size > self.max_record_bytes:
            plan = []                                # greedy: the longest batch that fits, in turn
            while i < n:
                k = fq_batch_fit(recs + i, n - i, self.max_record_bytes, &size)
                if k < 0:
                    raise_status(k, "encode batch")
                if k == 0:
                    raise RecordTooLarge(
                        f"record of {size} encoded bytes exceeds max_record_bytes={self.max_record_bytes}")
                plan.append((i, k, size))
                total += size
                i += k
        self._lock()
        try:
            if plan is None:
                self._prepare_locked(size)
                self._begin_locked(&s)
                first = s.next_offset
                self._write_chunk_locked(&s, recs, n, size)
                self._publish_locked(&s)
            elif total <= self.segment_bytes:
                self._prepare_locked(total)          # rolls first if they would not fit
                self._begin_locked(&s)
                first = s.next_offset
                for i, k, size in plan:
                    self._write_chunk_locked(&s, recs + i, k, size)
                self._publish_locked(&s)
            else:
                first = -1
                for i, k, size in plan:
                    self._prepare_locked(size)
                    self._begin_locked(&s)
                    if first < 0:
                        first = s.next_offset
                    self._write_chunk_locked(&s, recs + i, k, size)
                    self._publish_locked(&s)
            done_offset = self.st.next_offset
        finally:
            self._unlock()
        if self._durability:
            try:
                self._after_append(done_offset)
            except BaseException as e:
                # committed (readable, maybe not durable): a caller that retries must
                # not append these records again (fastq.broker.producer holds failed drains)
                e.appended_offset = first
                raise
        return first

    cdef int _check_ahead(self, int64_t ts) except -1:
        """Refuse `ts` if it is more than max_timestamp_ahead_ms ahead of the clock
        (Kafka's KIP-937): a far-future timestamp would hold its segment, and every
        later one, back from time retention until the clock caught up."""
        cdef int64_t now = fq_realtime_ms()
        self._ts_bound = now + self._ts_ahead_ms
        if ts > self._ts_bound:
            raise InvalidArgument(
                f"timestamp {ts} is {ts - now} ms ahead of the clock ({now}), more than "
                f"max_timestamp_ahead_ms={self._ts_ahead_ms}: a far-future timestamp would hold "
                f"back time-based retention (fix the clock that stamped it, or raise the limit)")
        return 0

    def _set_ts_ahead(self, int64_t ms):
        """Set max_timestamp_ahead_ms (-1: off); see fastq.log.Log."""
        self._ts_ahead_ms = ms
        self._ts_bound = -1

    def _after_append(self, int64_t done_offset):
        """Durability after an append (see fastq.log.Log). A failed fsync fails the
        log for good (fsyncgate): every later call raises FsyncFailed."""
        try:
            if self._durability == 2:
                seg = self._active
                if seg is None or self._closing:
                    raise Closed(f"log closed before the append at offset {done_offset - 1} was "
                                 "fsynced (it was appended)")
                seg.sync()                       # raises Closed if the log closes first
                self._raise_recovery_point(done_offset)
            else:
                self._group_sync(done_offset)
        except FsyncFailed as e:
            self._failure = str(e)
            self._closed = True
            raise

    def append(self, value, key=None, headers=None, timestamp=None):
        """Append one record as its own batch; returns its offset.

        ``value`` and ``key`` are bytes-like or None; ``headers`` a list of
        ``(str, bytes | None)`` or a dict; ``timestamp`` integer ms (default now).
        Returns once the record is committed and, per the log's durability, synced."""
        return self._append_one(value, key, headers, check_ts(timestamp))

    cdef int64_t _append_one(self, object value, object key, object headers, int64_t ts) except -1:
        """append() for C callers (LogCore.publish, TopicCore.publish): `ts` checked."""
        cdef fq_record_in rec
        if self._closed:
            self._check_open()
        keep = self._fill_one(&rec, value, key, headers, ts)
        return self._append_recs(&rec, 1)

    cdef object _fill_one(self, fq_record_in *r, object value, object key, object headers, int64_t ts):
        """Point `r` at one record's fields (`ts` checked). Returns what must stay alive
        while `r` is in use (copies of non-bytes buffers, the header array), or None."""
        cdef list keep = None
        cdef RecScratch sc = None
        cdef int32_t nh = 0
        r.timestamp = ts
        if type(value) is bytes and PyBytes_GET_SIZE(value) < INT32_MAX - 1024:
            r.value = <const uint8_t *>PyBytes_AS_STRING(value)
            r.value_len = <int32_t>PyBytes_GET_SIZE(value)
        else:                      # other buffers, None, or too large: set_field says which
            keep = []
            set_field(value, &r.value, &r.value_len, keep, "value")
        if key is None:
            r.key = NULL
            r.key_len = -1
        else:
            if keep is None:
                keep = []
            set_field(key, &r.key, &r.key_len, keep, "key")
        if headers:
            if keep is None:
                keep = []
            sc = RecScratch.__new__(RecScratch)
            nh = self._fill_headers(headers, sc, 0, keep)
            r.headers = sc.hdrs
            keep.append(sc)
        else:
            r.headers = NULL
        r.n_headers = nh
        return keep

    def publish(self, value, key=None, headers=None, timestamp=None):
        """``append`` that returns a :class:`RecordMetadata` (topic, partition, offset,
        timestamp) — the broker's publish hot path."""
        cdef RecordMetadata m = RecordMetadata.__new__(RecordMetadata)
        cdef int64_t ts = check_ts(timestamp)
        m.offset = self._append_one(value, key, headers, ts)
        m.topic = self.topic_name
        m.partition = self.partition_id
        m.timestamp = ts
        return m

    cdef int32_t _fill_headers(self, object headers, RecScratch sc, Py_ssize_t at, list keep) except -1:
        """Fill sc.hdrs[at:at+n] from a header list or dict; returns n. Grows sc.hdrs,
        so pointers into it are taken only after every header list is filled."""
        cdef Py_ssize_t i, n
        if isinstance(headers, dict):
            headers = list(headers.items())
        try:
            seq = PySequence_Fast(headers, "headers must be a list of (str, bytes) pairs")
        except TypeError as e:
            raise InvalidArgument(str(e)) from None
        n = PySequence_Fast_GET_SIZE(seq)
        sc.reserve(0, at + n)
        for i in range(n):
            item = <object>PySequence_Fast_GET_ITEM(seq, i)
            if not isinstance(item, tuple) or len(item) != 2:
                raise InvalidArgument(f"header {i} must be a (str, bytes) pair, got {item!r:.60}")
            k, v = item
            if isinstance(k, str):
                k = k.encode("utf-8", "surrogateescape")
            elif not isinstance(k, bytes):
                raise InvalidArgument(f"header key must be str, got {type(k).__name__}")
            keep.append(k)
            sc.hdrs[at + i].key = <const uint8_t *>PyBytes_AS_STRING(k)
            sc.hdrs[at + i].key_len = <int32_t>PyBytes_GET_SIZE(k)
            set_field(v, &sc.hdrs[at + i].value, &sc.hdrs[at + i].value_len, keep, "header value")
        return <int32_t>n

    def append_many(self, values, key=None, headers=None, timestamp=None):
        """Append many values as one batch (split only if larger than max_record_bytes),
        with one key, one header list and one timestamp for all. Returns the first
        offset; the records get consecutive offsets."""
        cdef list keep = []
        cdef RecScratch sc = RecScratch.__new__(RecScratch)
        cdef Py_ssize_t n
        self._check_open()
        n = self._fill_many(values, key, headers, check_ts(timestamp), sc, keep)
        return self._append_recs(sc.recs, <int32_t>n)

    cdef Py_ssize_t _fill_many(self, object values, object key, object headers, int64_t ts, RecScratch sc,
                               list keep) except -1:
        """Fill sc.recs with one record per value, all with `key`, `headers` and `ts`
        (checked); copies of non-bytes buffers go into `keep`. Returns how many."""
        cdef Py_ssize_t i, n
        cdef const uint8_t *kp = NULL
        cdef int32_t klen = -1, nh = 0
        cdef fq_record_in *r
        try:
            seq = PySequence_Fast(values, "values must be a sequence of bytes-like objects")
        except TypeError as e:
            raise InvalidArgument(str(e)) from None
        n = PySequence_Fast_GET_SIZE(seq)
        if n == 0:
            raise InvalidArgument("append_many needs at least one value")
        if n > INT32_MAX // 2:
            raise InvalidArgument(f"too many values ({n}) for one call")
        set_field(key, &kp, &klen, keep, "key")
        if headers:
            nh = self._fill_headers(headers, sc, 0, keep)
        sc.reserve(n, 0)
        keep.append(seq)                   # the values' bytes are pointed at, not copied
        for i in range(n):
            v = <object>PySequence_Fast_GET_ITEM(seq, i)
            r = sc.recs + i
            if type(v) is bytes and PyBytes_GET_SIZE(v) < INT32_MAX - 1024:
                r.value = <const uint8_t *>PyBytes_AS_STRING(v)
                r.value_len = <int32_t>PyBytes_GET_SIZE(v)
            else:
                set_field(v, &r.value, &r.value_len, keep, f"value {i}")
            r.timestamp = ts
            r.key = kp
            r.key_len = klen
            r.headers = sc.hdrs if nh else NULL
            r.n_headers = nh
        return n

    def append_batch(self, records):
        """Append records given as ``(value, key, headers, timestamp)`` tuples (any
        trailing items may be omitted) in one batch. Returns the first offset."""
        cdef Py_ssize_t i, n, nh_total = 0, at = 0
        cdef list keep = []
        cdef RecScratch sc = RecScratch.__new__(RecScratch)
        cdef list items
        cdef fq_record_in *r
        cdef int32_t nh
        self._check_open()
        items = list(records)
        n = len(items)
        if n == 0:
            raise InvalidArgument("append_batch needs at least one record")
        if n > INT32_MAX // 2:
            raise InvalidArgument(f"too many records ({n}) for one call")
        for i in range(n):
            it = items[i]
            if not isinstance(it, tuple) or not 1 <= len(it) <= 4:
                raise InvalidArgument(f"record {i} must be a (value, key, headers, timestamp) tuple")
            if len(it) > 2 and it[2]:
                h = it[2]
                nh_total += len(h)
        sc.reserve(n, nh_total)
        for i in range(n):
            it = items[i]
            r = sc.recs + i
            set_field(it[0], &r.value, &r.value_len, keep, f"value {i}")
            set_field(it[1] if len(it) > 1 else None, &r.key, &r.key_len, keep, f"key {i}")
            r.timestamp = check_ts(it[3] if len(it) > 3 else None)
            if len(it) > 2 and it[2]:
                nh = self._fill_headers(it[2], sc, at, keep)
                r.headers = sc.hdrs + at
                r.n_headers = nh
                at += nh
            else:
                r.headers = NULL
                r.n_headers = 0
        return self._append_recs(sc.recs, <int32_t>n)

    # -- reads --------------------------------------------------------------------------

    def _locate(self, int64_t offset):
        """(segment, committed data end in it, valid index entries) for `offset`, or
        (None, 0, 0) when offset is at or past the log end."""
        cdef fq_log_snapshot s
        cdef int rc
        cdef Segment seg
        self._check_open()
        rc = fq_log_snapshot_read(self.st, &s, 1000000000)
        if rc < 0:
            raise_status(rc, "read log state")
        while s.generation != self._gen:
            # Loop: a writer may roll again between our refresh and this snapshot; a
            # segment list older than the snapshot would treat the new active segment's
            # predecessor as sealed at a stale end and end the read early.
            self._refresh()                  # Python: another thread may close meanwhile
            rc = fq_log_snapshot_read(self._state(), &s, 1000000000)
            if rc < 0:
                raise_status(rc, "read log state")
        if offset >= s.next_offset:
            return None, 0, 0
        if offset < self._state().log_start_offset:
            raise OffsetOutOfRange(f"offset {offset} is below the log start: valid offsets are "
                                   f"[{self.st.log_start_offset}, {s.next_offset}]")
        segs = self._segments               # one list: another thread's _refresh may swap it
        i = bisect_right(segs, offset, key=_base_of) - 1
        if i < 0:
            if offset < self._state().log_start_offset:
                raise OffsetOutOfRange(f"offset {offset} is below the log start: valid offsets are "
                                       f"[{self.st.log_start_offset}, {s.next_offset}]")
            # the state says the log starts at or below `offset`, yet no segment file
            # holds it: the first segment was deleted under us (never a silent skip)
            missing = os.path.join(getattr(self, "path", ""), "%020d.log" % self.st.log_start_offset)
            raise CorruptRecord(f"read offset {offset}: {missing} is missing (the first segment "
                                f"left starts at {segs[0].base_offset if segs else s.next_offset}); "
                                f"run `fastq verify` / `fastq repair`", missing, 0)
        seg = segs[i]
        if seg.base_offset == s.active_base:
            if seg.alloc_size < s.end_pos:
                seg.refresh_size()
            return seg, s.end_pos, s.index_count
        return seg, seg.sealed_end, seg.sealed_index_count

    def read(self, offset=0, end=None, bint follow=False):
        """Iterate records from `offset` up to `end` (exclusive; default: the log end
        now). Raises OffsetOutOfRange when offset is outside [start, end].

        With ``follow=True`` the reader has no end: at the log end iteration stops (or
        ``read_many``/``read_values`` return an empty list), and the same reader picks
        up where it left off once more records exist (pair it with ``wait``)."""
        cdef LogReader rd
        cdef int64_t hi = self.end_offset
        cdef int64_t lo = self._state().log_start_offset
        check_offset_arg(offset, "offset")
        if offset < lo or offset > hi:
            raise OffsetOutOfRange(f"offset {offset} out of range: valid offsets are [{lo}, {hi}]")
        if end is not None:
            check_offset_arg(end, "end")
            end = min(max(end, offset), INT64_MAX)   # past 2**63 - 1: no end; below offset: empty
        rd = LogReader.__new__(LogReader)
        rd.log = self
        rd.seg = None
        rd.next_offset = offset
        if follow:
            rd.end = INT64_MAX
        else:
            rd.end = hi if end is None else <int64_t>end
        rd.expect = -1
        rd.remaining = 0
        return rd

    def get(self, offset):
        """The record at `offset` (OffsetOutOfRange if there is none)."""
        cdef int64_t hi = self.end_offset
        cdef int64_t lo = self._state().log_start_offset
        check_offset_arg(offset, "offset")
        if offset < lo or offset >= hi:
            raise OffsetOutOfRange(f"offset {offset} out of range: valid offsets are [{lo}, {hi})")
        for rec in self.read(offset, offset + 1):
            return rec
        raise CorruptRecord(f"offset {offset} is missing from the log")

    def wait(self, offset, timeout=None, double spin_us=50.0, Pacer pacer=None):
        """Block until a record at `offset` exists (end_offset > offset) or `timeout`
        seconds pass; returns True if it exists. Spins for up to `spin_us` µs, then
        sleeps on a futex in the shared state that every commit bumps (a 50 µs
        sleep-poll off Linux) — not by polling. With a :class:`fastq.Pacer` (the same
        one on every call), sleeps through the learned gap between arrivals and spins
        around the next expected one instead (lower latency, some CPU; see Pacer).
        Signal handlers run while it waits (Ctrl-C raises KeyboardInterrupt)."""
        check_offset_arg(offset, "offset")
        if offset < 0 or offset > INT64_MAX:
            raise OffsetOutOfRange(f"cannot wait for offset {offset}: offsets are in [0, 2**63)")
        return self._wait(offset, timeout_ns(timeout), <int64_t>(spin_us * 1000.0),
                          NULL if pacer is None else &pacer.p) == 1

    cdef int _wait(self, int64_t offset, int64_t timeout_ns, int64_t spin_ns, fq_pace *pace) except -1:
        """``wait`` for C callers: 1 when a record at `offset` exists, 0 after
        `timeout_ns` (< 0: no limit). Sleeps in WAIT_SLICE_NS slices with the GIL
        released and runs the signal handlers between them; the paced phase and the
        spin belong to the first slice."""
        cdef int64_t deadline, left
        cdef int rc, first = 1
        self._check_open()
        if fq_load_acquire_u64(<uint64_t *>&self.st.next_offset) > <uint64_t>offset:
            return 1                        # there already: no clock read
        deadline = wait_deadline(timeout_ns)
        while True:
            if not first:
                self._check_open()
                if fq_load_acquire_u64(<uint64_t *>&self.st.next_offset) > <uint64_t>offset:
                    return 1
            left = wait_slice(deadline)
            if left == 0:
                return 0
            self._in_wait += 1
            with nogil:
                rc = fq_log_wait(self.st, offset, left, spin_ns, pace, first)
            self._wait_done()
            if rc == 1:
                return 1
            first = 0
            spin_ns = 0
            PyErr_CheckSignals()

    cdef int _wait_done(self) except -1:
        """A thread is back from the nogil part of _wait (or of a wait for the writer
        lock, _lock_done). If the log was closed meanwhile,
        the last such thread unmaps the shared state (close leaves it mapped while anyone
        sleeps on it), and each raises Closed."""
        self._in_wait -= 1
        if self._st_unmap != NULL and self._in_wait == 0:
            fq_unmap(self._st_unmap, FQ_STATE_SIZE)
            self._st_unmap = NULL
        if self.st == NULL:
            self._check_open()
        return 0

    # -- lifetime -----------------------------------------------------------------------

    def _release_state(self):
        if self.st != NULL:
            if self._in_wait:
                # threads of this process sleep on this mapping (Log.wait, a consumer's
                # poll) or wait for its writer lock: wake the sleepers; the last one out
                # unmaps it (_wait_done)
                self._st_unmap = self.st
                fq_log_notify(self.st)
            else:
                fq_unmap(self.st, FQ_STATE_SIZE)
            self.st = NULL
        if self.state_fd >= 0:
            c_close(self.state_fd)
            self.state_fd = -1

    def _release_after_fork(self):
        """In a forked child: unmap this process's copy of the state and close its
        descriptor, and nothing else — no notify, no flock change (the flock belongs to
        the open file description the parent shares), no wait for threads that were
        in _wait in the parent (they do not exist here)."""
        self._forked = True
        self._closed = True
        self._in_wait = 0
        if self.st != NULL:
            fq_unmap(self.st, FQ_STATE_SIZE)
            self.st = NULL
        if self._st_unmap != NULL:
            fq_unmap(self._st_unmap, FQ_STATE_SIZE)
            self._st_unmap = NULL
        if self.state_fd >= 0:
            c_close(self.state_fd)
            self.state_fd = -1

    def __dealloc__(self):
        if self.st != NULL or self.state_fd >= 0:
            if not self._closed:
                try:
                    warnings.warn("unclosed fastq log", ResourceWarning)
                except Exception:
                    pass
        if self.st != NULL:
            fq_unmap(self.st, FQ_STATE_SIZE)
        if self._st_unmap != NULL:
            fq_unmap(self._st_unmap, FQ_STATE_SIZE)
        if self.state_fd >= 0:
            c_close(self.state_fd)


def _base_of(Segment s):
    return s.base_offset
