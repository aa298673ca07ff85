# Records handed out by reads, and the sequential reader (included by _storage.pyx).

from cpython.dict cimport PyDict_Next, PyDict_Update


@cython.final
@cython.freelist(256)
@cython.no_gc            # refers to a Segment only, which refers to no record: no cycle
cdef class Record:
    """One record read from a log.

    ``key`` and ``value`` are zero-copy, read-only memoryviews into the segment's map
    (``None`` for a null key or a tombstone). They stay valid for as long as you hold
    them — also past the next read — but while any is alive the log refuses to close or
    truncate that segment (``BufferError``). Call ``bytes(rec.value)`` to keep a copy
    without pinning the segment. ``headers`` is a list of ``(str, bytes | None)``.
    """

    @property
    def key(self):
        if self.seg.data == NULL:
            raise Closed("the log holding this record was closed")
        return make_view(self.seg, self.kp, self.klen)

    @property
    def value(self):
        if self.seg.data == NULL:
            raise Closed("the log holding this record was closed")
        return make_view(self.seg, self.vp, self.vlen)

    @property
    def headers(self):
        cdef fq_header h
        cdef int i, rc
        cdef const uint8_t *p = self.hp
        cdef int64_t left = self.hlen
        if self.seg.data == NULL:
            raise Closed("the log holding this record was closed")
        out = []
        for i in range(self.nh):
            rc = fq_header_decode(p, <size_t>left, &h)
            if rc < 0:
                raise_status(rc, f"header of record {self.offset}", self.seg.path)
            k = (<const char *>h.key)[:h.key_len].decode("utf-8", "surrogateescape")
            v = None if h.value_len < 0 else PyBytes_FromStringAndSize(<const char *>h.value, h.value_len)
            out.append((k, v))
            p += rc
            left -= rc
        return out

    def __repr__(self):
        where = f"topic={self.topic!r}, partition={self.partition}, " if self.topic is not None else ""
        return (f"Record({where}offset={self.offset}, timestamp={self.timestamp}, "
                f"key={None if self.klen < 0 else bytes(self.key)!r}, "
                f"value_len={self.vlen})")


cdef inline Py_ssize_t count_arg(object n) except -1:
    """A record count argument: an int (not bool); past PY_SSIZE_T_MAX means no limit
    (Cython's conversion would raise OverflowError), below 0 means none."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise InvalidArgument(f"max_records must be an int, got {type(n).__name__}")
    return 0 if n < 0 else (PY_SSIZE_T_MAX if n > PY_SSIZE_T_MAX else n)


cdef bint range_aborted(dict aborted, int64_t pid, int64_t offset) except -1:
    """read_committed: whether the transactional batch of producer ``pid`` at ``offset``
    lies in one of its aborted transactions (``aborted[pid]``: ascending flat
    ``[first, last, first, last, ...]`` offset ranges, see TxnIndex)."""
    cdef list r = aborted.get(pid)
    cdef Py_ssize_t lo = 0, hi, mid
    if r is None:
        return 0
    hi = len(r) // 2
    while lo < hi:                       # the first range whose last >= offset
        mid = (lo + hi) // 2
        if <int64_t>r[2 * mid + 1] < offset:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(r) // 2 and <int64_t>r[2 * lo] <= offset


cdef class LogReader:
    """Iterator over a log's records from an offset to an end offset.

    Verifies every batch's CRC before handing out its records. Not thread-safe: use
    one reader per thread. Stops at ``end`` (exclusive) or at the log end when created.
    """

    def __iter__(self):
        return self

    cdef int _next_batch(self) except -1:
        """Advance to the batch holding next_offset. Returns 1 if one is ready, 0 at end."""
        cdef fq_batch_info info
        cdef int rc
        cdef int64_t p
        cdef fq_log_snapshot snap
        while True:
            if self.next_offset >= self.end:
                return 0
            if self.seg is not None and self.seg.data == NULL:
                self.seg = None                  # closed under us: locate afresh (see _recheck)
            if (self.seg is not None and self.seg.sealed_end < 0 and self.pos >= 0
                    and self.pos + FQ_BATCH_LOG_OVERHEAD > self.limit and self.log.st != NULL):
                # Tailing fast path: still reading the active segment, so just re-read
                # its committed end (a seqlock read) instead of locating from scratch.
                if fq_log_snapshot_read(self.log.st, &snap, 1000000000) == 0 \
                        and snap.generation == self.log._gen \
                        and snap.active_base == self.seg.base_offset:
                    if snap.next_offset <= self.next_offset:
                        return 0
                    if snap.end_pos > self.limit:
                        if self.seg.alloc_size < snap.end_pos:
                            self.seg.refresh_size()
                        self.limit = snap.end_pos
            if self.seg is None or self.pos + FQ_BATCH_LOG_OVERHEAD > self.limit or self.pos < 0:
                self.seg, self.limit, idx_count = self.log._locate(self.next_offset)
                if self.seg is None:
                    return 0
                p = self.seg._find_pos(self.next_offset, self.limit, idx_count)
                if p < 0:
                    # Nothing at or after next_offset in this segment: at the log end, or
                    # (compacted logs) the segment's last offsets were cleaned away.
                    nb = self.log._base_after(self.seg.base_offset)
                    if nb < 0 or nb <= self.next_offset:
                        self.seg = None
                        return 0
                    if not self.log.allow_gaps:
                        # a dense log must hold every offset up to the next segment
                        path = self.seg.path
                        self.seg = None
                        raise CorruptRecord(
                            f"read offset {self.next_offset}: {path} ends before it, but the "
                            f"next segment starts at {nb}: offsets are missing", path, None)
                    self.seg = None
                    self.next_offset = nb
                    continue
                self.pos = p
                self.expect = -1
            rc = fq_batch_validate(self.seg.data + self.pos, <size_t>(self.limit - self.pos),
                                   INT32_MAX, 1, &info)
            if rc < 0:
                raise_status(rc, f"read offset {self.next_offset}", self.seg.path, self.pos)
            if self.expect >= 0 and (info.base_offset < self.expect if self.log.allow_gaps
                                     else info.base_offset != self.expect):
                raise CorruptRecord(
                    f"read offset {self.next_offset}: batch at position {self.pos} of "
                    f"{self.seg.path} has base offset {info.base_offset}, expected {self.expect}",
                    self.seg.path, self.pos)
            if self.expect < 0 and info.base_offset > self.next_offset and not self.log.allow_gaps:
                # the batch found for next_offset starts after it: its base offset (outside
                # the CRC) is damaged, and its records would surface at wrong offsets
                raise CorruptRecord(
                    f"read offset {self.next_offset}: batch at position {self.pos} of "
                    f"{self.seg.path} starts at offset {info.base_offset}",
                    self.seg.path, self.pos)
            if info.attributes & FQ_ATTR_COMPRESSION_MASK:
                raise CorruptRecord(f"batch at position {self.pos} of {self.seg.path} is "
                                    f"compressed (codec {info.attributes & 7}); fastq stores "
                                    f"uncompressed batches", self.seg.path, self.pos)
            self.expect = info.base_offset + info.last_offset_delta + 1
            self.rp = self.seg.data + self.pos + FQ_BATCH_HEADER_SIZE
            self.rleft = info.total_size - FQ_BATCH_HEADER_SIZE
            self.remaining = info.record_count
            self.base = info.base_offset
            self.base_ts = info.base_timestamp
            self.pos += info.total_size
            if info.attributes & FQ_ATTR_CONTROL:
                if self.raw:
                    return 1             # a header walk (TxnIndex) sees the markers
                self.remaining = 0       # control batches carry no user records
                if self.expect > self.next_offset:
                    self.next_offset = self.expect
                continue
            if (info.attributes & FQ_ATTR_TRANSACTIONAL and self.aborted is not None
                    and range_aborted(self.aborted, info.producer_id, info.base_offset)):
                self.remaining = 0       # read_committed: a batch of an aborted transaction
                if self.expect > self.next_offset:
                    self.next_offset = self.expect
                continue
            if self.expect <= self.next_offset:
                self.remaining = 0
                continue
            return 1

    def __next__(self):
        r = self._next()
        if r is None:
            raise StopIteration
        return r

    cdef void _recheck(self) noexcept:
        """Forget the position inside a batch when its segment was closed under this
        reader (the log was closed, or truncated past it): the next batch is located
        afresh, which raises Closed for a closed log. Reading on from the unmapped
        batch crashed the process."""
        if self.remaining > 0 and (self.seg is None or self.seg.data == NULL):
            self.remaining = 0
            self.seg = None

    cdef Record _next(self):
        """The next record, or None at the end."""
        cdef fq_record_view v
        cdef int64_t off
        if not self._next_view(&v, &off):
            return None
        return self._record_of(&v, off)

    cdef int _next_view(self, fq_record_view *v, int64_t *offset) except -1:
        """Decode the next record into `v` (pointers into the current segment, valid
        while it is mapped) and its offset into `offset`: 1, or 0 at the end. For
        callers that copy what they need (fastq.queue's receive) instead of holding a
        Record."""
        cdef int rc
        cdef int64_t off
        self._recheck()
        while True:
            if self.remaining <= 0:
                if not self._next_batch():
                    return 0
            rc = fq_record_decode(self.rp, <size_t>self.rleft, v)
            if rc < 0:
                raise_status(rc, f"record in batch {self.base}", self.seg.path, self.pos)
            self.rp += rc
            self.rleft -= rc
            self.remaining -= 1
            off = self.base + v.offset_delta
            if off < self.next_offset:
                continue
            if off >= self.end:
                self.remaining = 0
                self.next_offset = self.end
                return 0
            self.next_offset = off + 1
            offset[0] = off
            return 1

    cdef Record _record_of(self, const fq_record_view *v, int64_t off):
        """The Record of what _next_view just decoded."""
        cdef Record r = Record.__new__(Record)
        r.offset = off
        r.timestamp = self.base_ts + v.timestamp_delta
        r.topic = self.log.topic_name
        r.partition = self.log.partition_id
        r.seg = self.seg
        r.kp = v.key
        r.klen = v.key_len
        r.vp = v.value
        r.vlen = v.value_len
        r.hp = v.headers
        r.nh = v.n_headers
        r.hlen = v.headers_len
        return r

    def read_values(self, max_records):
        """Up to max_records record values as a list of ``bytes`` copies (None for a
        tombstone) — the fastest way to drain a log when keys, headers and offsets are
        not needed; nothing stays pinned. ``next_offset`` tells where it stopped."""
        cdef list out = []
        cdef fq_record_view v
        cdef int rc
        cdef int64_t off
        cdef Py_ssize_t n = 0
        cdef Py_ssize_t limit = count_arg(max_records)
        self._recheck()
        while n < limit:
            if self.remaining <= 0:
                if not self._next_batch():
                    break
            rc = fq_record_decode(self.rp, <size_t>self.rleft, &v)
            if rc < 0:
                raise_status(rc, f"record in batch {self.base}", self.seg.path, self.pos)
            self.rp += rc
            self.rleft -= rc
            self.remaining -= 1
            off = self.base + v.offset_delta
            if off < self.next_offset:
                continue
            if off >= self.end:
                self.remaining = 0
                self.next_offset = self.end
                break
            if v.value_len < 0:
                out.append(None)
            else:
                out.append(PyBytes_FromStringAndSize(<const char *>v.value, v.value_len))
            self.next_offset = off + 1
            n += 1
        return out

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def _fill_columns(self, Py_ssize_t i, Py_ssize_t limit,
                      int64_t[::1] offsets, int64_t[::1] timestamps,
                      int64_t[::1] value_offsets, uint8_t[::1] values, uint8_t[::1] value_valid,
                      int64_t[::1] key_offsets, uint8_t[::1] keys, uint8_t[::1] key_valid):
        """The loop of :func:`fastq.log.columns.read_columns`: decode records into
        caller-owned column buffers (any writable C-contiguous buffers; numpy arrays in
        practice — this module never imports numpy).

        Fills rows ``i`` .. ``limit - 1``; row r's value is copied to
        ``values[value_offsets[r]:value_offsets[r + 1]]`` (Arrow's layout: the caller
        sets ``value_offsets[i]``/``key_offsets[i]``), a null value or key gets an
        empty slice and 0 in ``value_valid``/``key_valid``. Stops at ``limit``, at the
        reader's end, or before a record whose value or key does not fit in what is
        left of ``values``/``keys`` (that record is not consumed). Returns ``(rows
        filled so far, value bytes needed, key bytes needed)``: the two needs are 0
        unless it stopped for room, and then give the size of the record that did not
        fit, so the caller grows the buffers and calls again from that row."""
        cdef fq_record_view v
        cdef int rc
        cdef int64_t off, vpos, kpos, vcap, kcap, vlen, klen
        if (limit < i or i < 0 or offsets.shape[0] < limit or timestamps.shape[0] < limit
                or value_offsets.shape[0] <= limit or key_offsets.shape[0] <= limit
                or value_valid.shape[0] < limit or key_valid.shape[0] < limit):
            raise InvalidArgument(f"column buffers too short for rows [{i}, {limit})")
        vpos = value_offsets[i]
        kpos = key_offsets[i]
        vcap = values.shape[0]
        kcap = keys.shape[0]
        if not (0 <= vpos <= vcap and 0 <= kpos <= kcap):
            raise InvalidArgument(f"column start positions {vpos}/{kpos} outside the buffers")
        self._recheck()
        while i < limit:
            if self.remaining <= 0:
                if not self._next_batch():
                    break
            rc = fq_record_decode(self.rp, <size_t>self.rleft, &v)
            if rc < 0:
                raise_status(rc, f"record in batch {self.base}", self.seg.path, self.pos)
            off = self.base + v.offset_delta
            if off >= self.end and off >= self.next_offset:
                self.remaining = 0
                self.next_offset = self.end
                break
            if off >= self.next_offset:
                vlen = v.value_len if v.value_len > 0 else 0
                klen = v.key_len if v.key_len > 0 else 0
                if vpos + vlen > vcap or kpos + klen > kcap:
                    return i, vlen, klen     # not consumed: rp/remaining stay before it
                offsets[i] = off
                timestamps[i] = self.base_ts + v.timestamp_delta
                if vlen:
                    memcpy(&values[vpos], v.value, <size_t>vlen)
                vpos += vlen
                value_offsets[i + 1] = vpos
                value_valid[i] = v.value_len >= 0
                if klen:
                    memcpy(&keys[kpos], v.key, <size_t>klen)
                kpos += klen
                key_offsets[i + 1] = kpos
                key_valid[i] = v.key_len >= 0
                self.next_offset = off + 1
                i += 1
            self.rp += rc
            self.rleft -= rc
            self.remaining -= 1
        return i, 0, 0

    def read_many(self, max_records):
        """Up to max_records records as a list (an empty list at the end)."""
        max_records = count_arg(max_records)
        cdef list out = []
        cdef Record r
        cdef Py_ssize_t i
        for i in range(max_records):
            r = self._next()
            if r is None:
                break
            out.append(r)
        return out


# The most records one Consumer.poll hands out (its max_records cap).
MAX_POLL_RECORDS_CAP = 1_000_000

# The clock of Consumer's group checks (and of fastq.broker.group's heartbeats).
from time import monotonic_ns as _time_monotonic_ns
# deque.popleft, looked up once: ConsumerCore.__next__ calls it per record
from collections import deque as _deque
cdef object _popleft = _deque.popleft

# ConsumerCore._tail_one: this partition needs the Python _read_partition.
cdef enum:
    NOT_SERVED = -2


cdef class ConsumerCore:
    """The read hot path of :class:`fastq.broker.consumer.Consumer`, which subclasses it and
    keeps the policy (groups, commits, seeks, waiting) in Python.

    ``poll`` serves the common case — no group, no auto-commit, nothing buffered, and a
    tailing reader standing at each owned partition's position — without running
    Python code, and for a consumer of one partition it also waits there (on that
    log's futex word) and reads once woken. Everything else (argument errors, groups,
    auto-commit, iteration buffers, waiting on several partitions) is
    ``Consumer._poll``, whose reads go through the compiled ``_read_into`` too."""

    def __cinit__(self, *args, **kwargs):   # the Python subclass takes the arguments
        self._fetch = {}
        self._readers = {}
        self._pos = {}
        self._closed = True

    def __next__(self):
        """The next record (iteration blocks until there is one). A record already
        read ahead is handed out here; refilling, waiting, auto-commit and, when a
        group check is due, the group's heartbeat are ``Consumer._next_slow``."""
        cdef Record rec
        buf = self._buf
        if self._closed or not buf:
            return self._next_slow()
        if self._member is not None and _time_monotonic_ns() >= self._next_check:
            return self._next_slow()
        self._polled = True
        rec = <Record?>_popleft(buf)
        self._pos[rec.partition] = rec.offset + 1
        return rec

    def poll(self, max_records=500, timeout=None):
        """Up to ``max_records`` records from the partitions this consumer owns, waiting
        up to ``timeout`` seconds (None: until there is one; 0: do not wait) for the
        first. Returns [] on timeout. With ``auto_commit`` it first commits what earlier
        polls handed out."""
        cdef list out
        cdef int64_t t
        if self._closed:
            self._check_open()                       # raises Closed (says why)
        t = timeout_ns(timeout)                      # InvalidArgument for a bad timeout
        if (not self.auto_commit and self._member is None and not self._buf
                and type(max_records) is int and 0 < max_records <= MAX_POLL_RECORDS_CAP):
            self._polled = True
            out = []
            if self._read_ready(out, max_records):
                PyDict_Update(self._pos, self._fetch)
                return out
            if t == 0:
                return out
            if len(self._fetch) == 1:
                return self._wait_read(out, max_records, t)
        return self._poll(max_records, t)            # groups, buffers, waiting, bad max_records

    cdef object _wait_read(self, list out, Py_ssize_t max_records, int64_t timeout_ns):
        """The rest of ``poll`` for a consumer of one partition with nothing ready: wait
        on that log's futex word (``LogCore._wait``: spin, pacer, signal handlers) and
        read once woken, with no Python frame between the wake-up and the records."""
        cdef int64_t deadline, left = -1
        cdef int rc
        cdef LogCore lg
        cdef list logs = (<TopicCore>self.topic)._logs
        cdef fq_pace *pace = NULL if self.pacer is None else &self.pacer.p
        for p in self._fetch:
            break
        if not 0 <= <Py_ssize_t>p < len(logs) or logs[p] is None:
            return self._poll(max_records, timeout_ns)
        lg = <LogCore>logs[p]
        deadline = wait_deadline(timeout_ns)
        while True:
            if deadline >= 0:
                left = deadline - fq_monotonic_ns()
                if left <= 0:
                    return out
            rc = lg._wait(self._fetch[p], left, <int64_t>(self.spin_us * 1000.0), pace)
            if self._read_ready(out, max_records):
                PyDict_Update(self._pos, self._fetch)
                return out
            if rc == 0:
                return out

    def _read_into(self, out, Py_ssize_t max_records):
        """Read up to max_records from owned partitions into ``out`` (a list or deque)
        and advance their fetch positions; returns how many."""
        return self._read_ready(out, max_records)

    cdef Py_ssize_t _read_ready(self, object out, Py_ssize_t max_records) except -1:
        """``_read_into``, starting at a rotating partition so a busy partition cannot
        starve the others. Each partition whose tailing reader stands at its position
        (or that has nothing new) is read here; the others (no reader yet, a position
        the log no longer has, a closed log) go to the Python ``_read_partition``, in
        the same rotation order."""
        cdef Py_ssize_t n = len(self._fetch), start, i, got = 0, k
        cdef list parts
        cdef Py_ssize_t pos = 0
        cdef PyObject *key
        cdef PyObject *val
        if n == 0:
            return 0
        if n == 1:                       # one partition: no rotation, no list of keys
            PyDict_Next(self._fetch, &pos, &key, &val)
            p = <object>key
            got = self._tail_one(out, p, max_records)
            if got == NOT_SERVED:
                got = self._read_partition(out, p, max_records)
            return got
        start = self._rr % n
        self._rr += 1
        parts = list(self._fetch)
        for i in range(n):
            if got >= max_records:
                break
            p = parts[(start + i) % n]
            k = self._tail_one(out, p, max_records - got)
            if k == NOT_SERVED:
                k = self._read_partition(out, p, max_records - got)
            got += k
        return got

    cdef Py_ssize_t _tail_one(self, object out, object p, Py_ssize_t max_records) except -1:
        """If partition p has nothing new, 0; if its tailing reader ``_readers[p]``
        stands at ``_fetch[p]`` inside the log, append up to ``max_records`` of its new
        records to ``out``, advance ``_fetch[p]`` and return how many. Otherwise (no
        reader yet, a position the log no longer has, a log not open here or closed)
        NOT_SERVED, for the Python ``_read_partition``."""
        cdef list logs = (<TopicCore>self.topic)._logs
        cdef dict fetch = self._fetch
        cdef LogCore lg
        cdef LogReader rd
        cdef Record r = None
        cdef int64_t pos, end
        cdef Py_ssize_t got = 0
        lgo = logs[p] if 0 <= <Py_ssize_t>p < len(logs) else None
        if lgo is None or (<LogCore>lgo)._closed or (<LogCore>lgo).st == NULL:
            return NOT_SERVED
        lg = <LogCore>lgo
        pos = fetch[p]
        end = <int64_t>fq_load_acquire_u64(<uint64_t *>&lg.st.next_offset)
        if end == pos:
            return 0                                     # nothing new: the common idle case
        rdo = self._readers.get(p)
        if rdo is None or end < pos or pos < lg.st.log_start_offset:
            return NOT_SERVED
        rd = <LogReader>rdo
        if rd.next_offset != pos or rd.aborted is not None:
            return NOT_SERVED                            # read_committed: bounded by the LSO in Python
        while got < max_records:
            nxt = rd._next()
            if nxt is None:
                break
            r = nxt
            out.append(r)
            got += 1
        if got:
            fetch[p] = r.offset + 1
        elif rd.next_offset > pos:                       # nothing but a gap (compaction)
            fetch[p] = rd.next_offset
        return got
