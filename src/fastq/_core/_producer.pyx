"""ProducerCore: the batching producer's hot path (fastq.broker.producer.Producer adds the policy);
memory_publish: a memory topic's publish. Both join a ring to the broker's types.

``send`` picks the partition and frames the record into the producer's ring with one C
call (``Ring._put_rec``). ``_drain_ring`` takes the ring's framed records in one read and
appends each partition's records with ``LogCore._append_recs``, the record fields pointing
straight into the ring's memory: no Python object per record on either side. The ring's
read stays open until the appends return, so the producers cannot reuse that memory
meanwhile. Frames are read with _ring's _frame_view/_frame_header, the one reader of the
layout (described above ``Ring._put_record`` in fastq/_ring.pyx).
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t

from fastq._core._cdefs cimport FQ_EEMPTY, FQ_ETIMEDOUT, fq_batch_size, fq_header, fq_record_in
from fastq._core._ring cimport OP_GET, FrameView, Ring, _frame_header, _frame_view, _raise_status
from fastq._core._storage cimport (IdemResult, LogCore, RecordMetadata, RecScratch, SharedWord, TopicCore,
                                   fq_kafka_partition, idem_many, idem_one)

import random

from fastq.errors import Closed, CorruptRecord, InvalidArgument, RecordTooLarge, RingFull, UsedAfterFork
from fastq._core._storage import STICKY_BATCH_BYTES, _producer_entry, key_bytes as _key_bytes

__all__ = ["ProducerCore", "IdempotentCore", "memory_publish"]

cdef int64_t _STICKY_BYTES = STICKY_BATCH_BYTES   # Kafka's batch.size, as Topic.publish uses


@cython.final
cdef class _Frames:
    """A growable array of FrameView (one drain's worth)."""
    cdef FrameView *f
    cdef Py_ssize_t n, cap

    def __dealloc__(self):
        PyMem_Free(self.f)

    cdef FrameView *next(self) except NULL:
        cdef void *p
        if self.n == self.cap:
            p = PyMem_Realloc(self.f, (self.cap * 2 + 256) * sizeof(FrameView))
            if p == NULL:
                raise MemoryError()
            self.f = <FrameView *>p
            self.cap = self.cap * 2 + 256
        return self.f + self.n


cdef int _fill(FrameView *f, fq_record_in *r, fq_header *h) except -1:
    """Point `r` (and h[0:f.n_headers]) at the frame's key, value and headers."""
    cdef uint32_t i
    r.timestamp = f.timestamp
    r.key = f.key
    r.key_len = f.key_len
    r.value = f.value
    r.value_len = f.value_len
    r.headers = h if f.n_headers else NULL
    r.n_headers = <int32_t>f.n_headers
    for i in range(f.n_headers):
        _frame_header(f, h + i)
    return 0


cdef class ProducerCore:
    """The state ``send`` and the drain share (see fastq.broker.producer.Producer).

    ``send`` and ``_drain_ring`` run with the GIL held from the start of a record's
    framing to the end of its put, and from a drain's read of the ring to its commit
    (except while a contended writer lock is awaited, see LogCore); draining is
    serialized by the subclass's lock."""
    cdef public object topic             # the fastq.Topic records go to
    cdef public Ring _ring               # the accumulator
    cdef public double linger            # seconds; 0 = append inside every send
    cdef public int64_t _drain_at        # ring bytes in use that make send drain inline
    cdef public bint _closed
    cdef public bint _forked             # inherited across fork(): the ring is the parent's
    cdef public object _error            # from a background drain, raised by the next call
    cdef public list _held               # framed records (bytes) a failed drain took: appended first
    cdef public int64_t _max_record      # the topic's max_record_bytes (send's fast size check)
    cdef int32_t _sticky                 # this producer's sticky partition (unkeyed records)
    cdef int64_t _sticky_bytes           # bytes sent to it since it was chosen
    cdef object _log_of                  # topic.log
    cdef int32_t _nparts                 # topic.partitions

    def __cinit__(self, *args, **kwargs):     # the Python subclass takes the arguments
        self._closed = True
        self._sticky = -1

    def _init_core(self, topic, Ring ring, double linger, int64_t drain_at):
        self.topic = topic
        self._log_of = topic.log
        self._ring = ring
        self.linger = linger
        self._drain_at = drain_at
        self._sticky = -1
        self._held = []
        self._max_record = topic.config["max_record_bytes"]
        self._nparts = topic.partitions

    cdef int32_t _next_sticky(self, int32_t nparts) except -1:
        """Kafka's sticky partitioner: after ~batch.size bytes, move to another partition."""
        cdef int32_t nxt
        self._sticky_bytes = 0
        if nparts <= 1:
            self._sticky = 0
        elif self._sticky < 0 or self._sticky >= nparts:
            self._sticky = random.randrange(nparts)
        else:
            nxt = random.randrange(nparts - 1)
            self._sticky = nxt if nxt < self._sticky else nxt + 1
        return self._sticky

    cdef int32_t _partition_for(self, object value, object key, object partition) except -1:
        """``partition`` if given (checked), else Kafka's default partitioner for a key,
        else this producer's sticky partition."""
        cdef int32_t nparts
        if partition is None and key is None:
            self._sticky_bytes += PyBytes_GET_SIZE(value) if type(value) is bytes else _STICKY_BYTES
            if self._sticky < 0 or self._sticky_bytes >= _STICKY_BYTES:
                self._next_sticky(self._nparts)
            return self._sticky
        if partition is None:
            if type(key) is not bytes:
                key = _key_bytes(key)
            return fq_kafka_partition(<const uint8_t *>PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key),
                                      self._nparts)
        nparts = self._nparts
        if type(partition) is int and 0 <= <long long>partition < nparts:   # the common case: no PyLong
            return <int32_t><long long>partition
        if not isinstance(partition, int) or isinstance(partition, bool):
            raise InvalidArgument(f"partition must be an int, got {type(partition).__name__}")
        if not 0 <= partition < nparts:
            raise InvalidArgument(f"partition {partition} out of range: topic {self.topic.name!r} has "
                                  f"partitions 0..{nparts - 1}")
        return partition

    cdef int _check_ts(self, int32_t p, object timestamp) except -1:
        """A timestamp the log refuses (max_timestamp_ahead_ms) is refused now, not at
        the drain."""
        cdef LogCore lg
        if timestamp is not None and type(timestamp) is int and 0 <= timestamp < (1 << 62):
            lg = self._log_of(p)
            if lg._ts_ahead_ms >= 0:
                lg._check_ahead(timestamp)
        return 0

    cdef int _check_usable(self) except -1:
        if self._closed:
            if self._forked:
                raise UsedAfterFork(f"producer of topic {self.topic.name!r} was created before "
                                    "fork(): it belongs to the parent; open a new one in the child")
            raise Closed("producer is closed")
        return 0

    def send(self, value, *, key=None, headers=None, partition=None, timestamp=None):
        """Queue one record for its partition: ``partition`` if given, else Kafka's
        default partitioner for a key (murmur2, positive modulo), else this producer's
        sticky partition. Returns nothing (see ``on_delivery``). Raises, with nothing
        queued, for a record the log could never take (RecordTooLarge, InvalidArgument)."""
        cdef int32_t p
        cdef Ring ring = self._ring
        self._check_usable()
        if self._error is not None:
            self._retry_or_raise()         # an earlier drain failed: retry its held records
        p = self._partition_for(value, key, partition)
        self._check_ts(p, timestamp)
        self._check_size(p, value, key, headers)
        try:
            ring._put_rec(<uint32_t>p, value, key, headers, timestamp, 0)
        except RecordTooLarge:
            # over a quarter of the ring: straight to the log, after everything before it
            self._append_direct(p, value, key, headers, timestamp)
            return
        except RingFull:
            self._drain()                  # back pressure: append inline, then retry
            ring._put_rec(<uint32_t>p, value, key, headers, timestamp, 0)
        # The record is queued: from here on an error is not this send's (raising would
        # tell the caller it was not sent). A failed drain holds what it took; the
        # error goes to the next call.
        if self.linger == 0 or <int64_t>ring._used() >= self._drain_at:
            try:
                self._drain()
            except Exception as e:
                self._error = e

    def _put_nowait(self, value, key=None, headers=None, partition=None, timestamp=None):
        """``send`` that never drains and never waits (fastq.broker.aio): 1 when the record is
        queued and a drain is due, 0 when it is queued and none is due, -1 when it was
        not queued because ``send`` itself would have to append or open the partition's
        log (the accumulator is full, the record bypasses it, an earlier drain failed,
        the log is not open yet). Bad records raise as in ``send``."""
        cdef int32_t p
        cdef Ring ring = self._ring
        self._check_usable()
        if self._error is not None or self._held:
            return -1
        p = self._partition_for(value, key, partition)
        if self.topic._logs[p] is None:
            return -1                      # the checks would open the log: flock, recovery
        self._check_ts(p, timestamp)
        self._check_size(p, value, key, headers)
        try:
            ring._put_rec(<uint32_t>p, value, key, headers, timestamp, 0)
        except (RecordTooLarge, RingFull):
            return -1
        return 1 if self.linger == 0 or <int64_t>ring._used() >= self._drain_at else 0

    def _drain_ring(self, Py_ssize_t limit, bint want_timestamps, list out):
        """Take up to `limit` records from the ring and append them: per partition, in
        ring order, in chunks each committed all or nothing (see _append_partition).
        Returns how many records were taken. Appends ``(partition, base_offset, count,
        timestamps or None)`` to `out` for each chunk appended, so a caller still learns
        of those when a later append raises. The ring's read is committed even then:
        the records not appended are copied to ``_held`` first (never dropped), and the
        next drain appends them before anything newer (``_drain_held``)."""
        cdef Ring ring = self._ring
        cdef const uint8_t *m = NULL
        cdef int64_t n
        cdef uint32_t nparts = <uint32_t>self.topic.partitions
        cdef _Frames fr = _Frames.__new__(_Frames)
        cdef FrameView *f
        if limit < 1:
            return 0
        ring._enter_read()
        try:
            n = ring._read_first(&m)
            if n == FQ_EEMPTY:
                return 0
            if n < 0:
                _raise_status(n, OP_GET, "drain")
            try:
                # 1. the frames, checked (a zero-length message is a wake-up: skipped)
                while True:
                    if n > 0:
                        f = fr.next()
                        _frame_view(m, n, f)
                        if f.partition >= nparts:
                            raise CorruptRecord(f"framed record for partition {f.partition} of a "
                                                f"{nparts}-partition topic")
                        fr.n += 1
                        if fr.n >= limit:
                            break
                    n = ring._read_next(&m)
                    if n == FQ_EEMPTY:
                        break
                    if n < 0:
                        _raise_status(n, OP_GET, "drain")
                # 2. the appends; what fails is held (copied out) before the commit
                self._append_all(fr, want_timestamps, out)
            finally:
                ring._read_commit()
        finally:
            ring._leave()
        return fr.n

    def _hold_ring(self):
        """Move every record left in the ring to ``_held`` without appending (close
        counts what it could not deliver). Returns how many were moved."""
        cdef Ring ring = self._ring
        cdef const uint8_t *m = NULL
        cdef int64_t n
        cdef Py_ssize_t moved = 0
        ring._enter_read()
        try:
            n = ring._read_first(&m)
            if n < 0:
                return 0
            try:
                while n >= 0:
                    if n > 0:                # a zero-length message is a wake-up
                        self._held.append(PyBytes_FromStringAndSize(<const char *>m, n))
                        moved += 1
                    n = ring._read_next(&m)
            finally:
                ring._read_commit()
        finally:
            ring._leave()
        return moved

    def _drain_held(self, bint want_timestamps, list out):
        """Append the records an earlier drain took but could not append (``_held``, in
        ring order) — before anything newer, so each partition keeps its send order.
        Those that fail again stay held. Returns how many were appended."""
        cdef list held = self._held
        cdef _Frames fr = _Frames.__new__(_Frames)
        cdef FrameView *f
        cdef bytes b
        if not held:
            return 0
        for b in held:                       # `held` keeps the bytes alive meanwhile
            f = fr.next()
            _frame_view(<const uint8_t *>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), f)
            fr.n += 1
        self._held = []
        self._append_all(fr, want_timestamps, out)
        return fr.n

    cdef int _append_all(self, _Frames fr, bint want_ts, list out) except -1:
        """Append every frame of `fr`, one partition after another (ascending). A
        partition whose append fails does not stop the others; the frames not appended
        are added to ``_held`` (as bytes, in ring order) and the first error is raised."""
        cdef Py_ssize_t i
        cdef uint8_t *done
        cdef object err = None
        cdef uint32_t first
        if fr.n == 0:
            return 0
        first = fr.f[0].partition
        parts = (first,)
        for i in range(1, fr.n):
            if fr.f[i].partition != first:
                parts = sorted({fr.f[i].partition for i in range(fr.n)})
                break
        done = <uint8_t *>PyMem_Calloc(fr.n, 1)
        if done == NULL:
            raise MemoryError()
        try:
            try:
                for part in parts:
                    try:
                        self._append_partition(fr, part, want_ts, out, done)
                    except Exception as e:
                        if err is None:
                            err = e
            finally:                         # also on KeyboardInterrupt: hold, then raise
                for i in range(fr.n):
                    if not done[i]:
                        self._held.append(PyBytes_FromStringAndSize(<const char *>fr.f[i].m, fr.f[i].len))
        finally:
            PyMem_Free(done)
        if err is not None:
            raise err
        return 0

    cdef int _append_partition(self, _Frames fr, uint32_t part, bint want_ts, list out,
                               uint8_t *done) except -1:
        """Append partition `part`'s frames in ring order, in chunks of at most a quarter
        of a segment (by a generous bound on their encoded size), so that each
        ``_append_recs`` commits all or nothing (it commits batch by batch only past a
        whole segment); a chunk appended is marked in `done` and reported in `out`."""
        cdef Py_ssize_t i, k, nh, at, start = 0, stop
        cdef int64_t bound, cap, base
        cdef FrameView *frames = fr.f
        cdef Py_ssize_t nf = fr.n
        cdef RecScratch sc
        cdef LogCore lg = self._log_of(part)
        lg._check_open()
        cap = max(lg.segment_bytes // 4, 1)
        while True:
            while start < nf and frames[start].partition != part:
                start += 1
            if start >= nf:
                return 0
            k = nh = 0
            bound = 0
            stop = start
            while stop < nf:
                if frames[stop].partition == part:
                    if k > 0 and bound + frames[stop].len + 64 + 2 * frames[stop].n_headers > cap:
                        break
                    bound += frames[stop].len + 64 + 2 * frames[stop].n_headers
                    k += 1
                    nh += frames[stop].n_headers
                stop += 1
            sc = RecScratch.__new__(RecScratch)
            sc.reserve(k, nh)
            k = at = 0
            for i in range(start, stop):
                if frames[i].partition == part:
                    _fill(frames + i, sc.recs + k, sc.hdrs + at)
                    at += frames[i].n_headers
                    k += 1
            try:
                base = lg._append_recs(sc.recs, <int32_t>k)
            except BaseException as e:
                base = getattr(e, "appended_offset", -1)
                if base < 0:
                    raise
                # committed, then the fsync failed: appended, not to be held and
                # appended again; the error still goes to the caller
                self._appended(fr, part, start, stop, done, out, base, k, sc, want_ts)
                raise
            self._appended(fr, part, start, stop, done, out, base, k, sc, want_ts)
            start = stop

    cdef int _appended(self, _Frames fr, uint32_t part, Py_ssize_t start, Py_ssize_t stop, uint8_t *done,
                       list out, int64_t base, Py_ssize_t k, RecScratch sc, bint want_ts) except -1:
        cdef Py_ssize_t i
        for i in range(start, stop):
            if fr.f[i].partition == part:
                done[i] = 1
        out.append((part, base, k, [sc.recs[i].timestamp for i in range(k)] if want_ts else None))
        return 0

    cdef int _check_size(self, int32_t p, object value, object key, object headers) except -1:
        """RecordTooLarge, before anything is queued, for a record the partition's log
        can never take (a one-record batch over its max_record_bytes): met by a drain,
        it used to fail that drain. A bound from the lengths in the common case; the
        exact size (fq_batch_size) only near the limit or with headers."""
        cdef Py_ssize_t klen
        if type(value) is bytes and not headers:
            if key is None:
                klen = 0
            elif type(key) is bytes:
                klen = PyBytes_GET_SIZE(key)
            else:
                return self._check_size_exact(p, value, key, headers)
            if PyBytes_GET_SIZE(value) + klen + _BATCH_BOUND <= self._max_record:
                return 0
        return self._check_size_exact(p, value, key, headers)

    cdef int _check_size_exact(self, int32_t p, object value, object key, object headers) except -1:
        cdef fq_record_in r
        cdef fq_header *h = NULL
        cdef Py_ssize_t i, n = 0
        cdef int64_t size, limit
        cdef list lens = None
        try:
            vlen = _length(value)
            klen = _length(key)
            if headers:
                lens = []
                for k, v in (headers.items() if isinstance(headers, dict) else headers):
                    if isinstance(k, str):
                        k = k.encode("utf-8", "surrogateescape")
                    elif not isinstance(k, bytes):
                        return 0
                    lens.append((len(k), _length(v)))
        except (TypeError, ValueError):
            return 0                         # not a record: _put_rec says what is wrong
        r.timestamp = 0
        r.value_len = vlen
        r.value = _DUMMY
        r.key_len = klen
        r.key = _DUMMY
        r.n_headers = 0
        r.headers = NULL
        if lens:
            n = len(lens)
            h = <fq_header *>PyMem_Malloc(n * sizeof(fq_header))
            if h == NULL:
                raise MemoryError()
            for i in range(n):
                h[i].key_len = lens[i][0]
                h[i].key = _DUMMY
                h[i].value_len = lens[i][1]
                h[i].value = _DUMMY
            r.headers = h
            r.n_headers = <int32_t>n
        try:
            size = fq_batch_size(&r, 1)       # reads lengths only: the pointers are dummies
        finally:
            PyMem_Free(h)
        if size < 0:
            return 0                         # too large for a record at all: _put_rec raises
        if size <= self._max_record:
            return 0
        limit = (<LogCore>self._log_of(p)).max_record_bytes
        if size > limit:
            raise RecordTooLarge(f"record of {size} encoded bytes exceeds max_record_bytes={limit} "
                                 f"of topic {self.topic.name!r}: not sent (nothing was queued)")
        return 0


cdef class IdempotentCore(ProducerCore):
    """The hot path of fastq.broker.producer.IdempotentProducer: each ``publish`` is one
    batch stamped with the producer id, the epoch and the partition's next sequence,
    appended by the log's idempotent append (``_storage.idem_one``), which stores a
    retry of a stored batch once and answers with the original offset. The partition
    is chosen as ``ProducerCore.send`` chooses it; no ring, no linger."""
    cdef public int64_t producer_id      # stamped into every batch
    cdef public int16_t epoch            # this instance's epoch
    cdef public SharedWord _fence        # the transactional id's epoch word, or None
    cdef public int64_t duplicates       # publishes answered from a stored batch
    cdef object _name                    # the topic's name
    cdef public int16_t _attrs           # batch attributes: FQ_ATTR_TRANSACTIONAL in a transaction

    def _init_idem(self, topic, int64_t producer_id, int16_t epoch, SharedWord fence):
        self.topic = topic
        self._log_of = topic.log
        self._ring = None
        self._held = []
        self._max_record = topic.config["max_record_bytes"]
        self._nparts = topic.partitions
        self.producer_id = producer_id
        self._name = topic.name
        self.epoch = epoch
        self._fence = fence
        self._sticky = -1
        self._closed = False

    cdef LogCore _log(self, int32_t p):
        """The partition's log: the topic's cached one, else opened through topic.log."""
        lg = (<TopicCore>self.topic)._logs[p]
        return self._log_of(p) if lg is None else lg

    cdef int32_t _seq_arg(self, object sequence) except -2:
        """`sequence` checked, or -1 (None): the log takes the producer's next one under
        its writer lock."""
        if sequence is None:
            return -1
        if not isinstance(sequence, int) or isinstance(sequence, bool) or not 0 <= sequence < (1 << 31):
            raise InvalidArgument(f"sequence must be an int in [0, 2**31), got {sequence!r}")
        return sequence

    cdef int _failed(self, int32_t p, int32_t seq, object err) except -1:
        """A publish raised. The error says what to retry with: ``err.partition``, and
        ``err.sequence`` — the sequence the batch was stamped with when it was (or may
        have been) appended; None when no sequence was taken (nothing was appended: a
        plain publish again is the retry)."""
        try:
            if getattr(err, "sequence", None) is None:
                err.sequence = seq if seq >= 0 else None
                err.partition = p
        except AttributeError:
            pass
        return 0

    def send(self, value, *, key=None, headers=None, partition=None, timestamp=None):
        """``publish`` that returns nothing (the batching producer's call): the record is
        appended, as one idempotent batch, before this returns."""
        self.publish(value, key=key, headers=headers, partition=partition, timestamp=timestamp)

    def _put_nowait(self, value, key=None, headers=None, partition=None, timestamp=None):
        """Nothing is ever queued without appending (there is no accumulator): -1."""
        self._check_usable()
        return -1

    cdef inline void _settled(self, IdemResult *r) noexcept:
        """A publish returned: count a duplicate."""
        if r.duplicate:
            self.duplicates += 1

    def publish(self, value, *, key=None, headers=None, partition=None, timestamp=None, sequence=None):
        """Append one record as one idempotent batch; returns its RecordMetadata — for a
        retry of a batch already stored (same ``sequence``), the original's, and
        nothing is appended. ``sequence``: this record's sequence in the partition
        (default: the next one); pass the one a failed publish raised with
        (``err.sequence``, ``err.partition``) to retry it; without it, the log stamps
        the producer's next sequence in the partition under its writer lock (threads
        sharing a producer never get the same one). Raises ProducerFenced,
        OutOfOrderSequence, and what ``Topic.publish`` raises."""
        cdef IdemResult r
        cdef int32_t p, seq
        cdef LogCore lg
        cdef RecordMetadata m
        self._check_usable()
        p = self._partition_for(value, key, partition)
        lg = self._log(p)
        seq = self._seq_arg(sequence)
        try:
            idem_one(lg, value, key, headers, timestamp, self.producer_id, self.epoch, seq, self._fence, &r,
                     self._attrs)
        except BaseException as e:
            self._failed(p, seq, e)
            raise
        self._settled(&r)
        m = RecordMetadata.__new__(RecordMetadata)
        m.topic = self._name
        m.partition = p
        m.offset = r.offset
        m.timestamp = r.timestamp
        return m

    def _publish_many(self, values, key, headers, partition, timestamp, sequence):
        """publish_many's core: ``(partition, base_offset, count, timestamp)``."""
        cdef IdemResult r
        cdef int32_t p, seq
        cdef int n
        cdef LogCore lg
        self._check_usable()
        p = self._partition_for(b"", key, partition) if key is not None or partition is not None \
            else self._next_sticky(self._nparts)
        lg = self._log(p)
        seq = self._seq_arg(sequence)
        try:
            n = idem_many(lg, values, key, headers, timestamp, self.producer_id, self.epoch, seq,
                          self._fence, &r, self._attrs)
        except BaseException as e:
            self._failed(p, seq, e)
            raise
        self._settled(&r)
        return p, r.offset, n, r.timestamp


cdef uint8_t _DUMMY_BYTE = 0
cdef const uint8_t *_DUMMY = &_DUMMY_BYTE
# 61-byte batch header + the most a one-record batch's varints can take (length, the
# deltas, key and value lengths, header count): a record this much under the limit fits
cdef int64_t _BATCH_BOUND = 96


cdef object _length(object obj):
    """A record field's length as fq_batch_size counts it: -1 for None."""
    if obj is None:
        return -1
    if type(obj) is bytes:
        return PyBytes_GET_SIZE(obj)
    if isinstance(obj, str):
        raise TypeError("str")
    return memoryview(obj).nbytes


# memory.state of a memory topic (fastq.broker.memtopic imports these): the mode byte's place
# and values. RING: publishers put into the ring; SPILL: into the topic's log.
cdef Py_ssize_t _MODE_AT = 8
cdef int _MODE_RING = 0
MEMORY_MODE_AT = _MODE_AT
MEMORY_MODE_RING = _MODE_RING
MEMORY_MODE_SPILL = 1


def memory_publish(self, value, *, key=None, headers=None, partition=None, timestamp=None,
                   timeout=None):
    """Put one record into the ring (or the spill log); returns its RecordMetadata
    (offset -1 for a record held in memory). ``timeout``: how long ``overflow="block"``
    waits for room (default forever), then RingFull."""
    # MemoryTopic.publish: the common case — ring mode, room in the ring — compiled;
    # a full ring goes to the topic's overflow policy (MemoryTopic._publish_full)
    cdef int64_t ts
    cdef RecordMetadata m
    if partition is not None:
        self._check_partition(partition)
    ring = self._ring
    if ring is None:
        if getattr(self, "_forked", False):
            raise UsedAfterFork(f"memory topic {self.name!r} was opened before fork(): it belongs "
                                "to the parent; open the broker again in the child")
        raise Closed(f"topic {self.name!r} is closed")
    if self._state.map[_MODE_AT] == _MODE_RING:
        try:
            ts = (<Ring>ring)._put_rec(0, value, key, headers, timestamp, 0)
        except RingFull:
            pass
        except RecordTooLarge as e:
            raise RecordTooLarge(f"memory topic {self.name!r}: {e}") from None
        else:
            m = RecordMetadata.__new__(RecordMetadata)
            m.topic = self.name
            m.partition = 0
            m.offset = -1
            m.timestamp = ts
            return m
    return self._publish_full(value, key, headers, timestamp, timeout)
