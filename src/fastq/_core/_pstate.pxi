# Idempotent producers (Kafka's KIP-98) on one partition log: the producers' sequence state
# and the idempotent append (included by _storage.pyx, after _logcore.pxi).
#
# The state is a cache of the log: for each producer id, the newest epoch and the sequence
# ranges and offsets of its last FQ_PRODUCER_BATCHES batches, read from the batch headers
# (producerId, producerEpoch, baseSequence, lastOffsetDelta). Each process keeps its own
# copy per log (LogCore._pstate), built on first use from a snapshot file and the batches
# after it (fastq.log.producer_state), and brought up to the committed end under the
# writer lock before every idempotent append (batches other processes appended since are
# read then): the check and the append happen under one hold of the lock, so two
# processes can never both append the same sequence. The rule itself is C
# (csrc/fq_producer.h); policy (snapshots, producer ids, fencing) is Python.

from fastq.errors import OutOfOrderSequence, ProducerFenced


cdef class PEntry:
    """One producer id's sequence state in one partition (``fq_pentry``)."""

    @property
    def producer_id(self):
        return self.e.producer_id

    @property
    def epoch(self):
        """The newest epoch of this producer id seen in the partition."""
        return self.e.epoch

    @property
    def next_sequence(self):
        """The sequence this producer's next batch here must start with."""
        return fq_pentry_next_seq(&self.e)

    def batches(self):
        """The cached batches, oldest first: ``(first_seq, last_seq, base_offset,
        max_timestamp)`` tuples."""
        cdef int i, at
        out = []
        for i in range(self.e.count):
            at = (self.e.head - self.e.count + 1 + i + FQ_PRODUCER_BATCHES) % FQ_PRODUCER_BATCHES
            b = &self.e.batches[at]
            out.append((b.first_seq, b.last_seq, b.base_offset, b.max_timestamp))
        return out

    def __repr__(self):
        return (f"PEntry(producer_id={self.e.producer_id}, epoch={self.e.epoch}, "
                f"batches={self.batches()})")


cdef class ProducerState:
    """The idempotent producers' state of one partition as this process knows it: every
    batch below ``scanned_to`` has been applied. Not thread-safe by itself: it is read
    and changed under the log's writer lock (or by one thread building it)."""

    def __init__(self, int64_t scanned_to=0, int64_t loaded_from=-1):
        self.entries = {}
        self.scanned_to = scanned_to
        self.loaded_from = loaded_from
        self.pos = -1

    cdef PEntry entry(self, int64_t pid):
        """The entry of producer id `pid`, created empty when missing. The last two
        asked for are found without the dict (a producer's own appends, and two
        producers taking turns on a partition)."""
        cdef PEntry e = self._e0
        if e is not None and e.e.producer_id == pid:
            return e
        e = self._e1
        if e is None or e.e.producer_id != pid:
            key = pid
            e = self.entries.get(key)
            if e is None:
                e = PEntry.__new__(PEntry)
                e.e.producer_id = pid
                self.entries[key] = e
        self._e1 = self._e0
        self._e0 = e
        return e

    cdef int apply(self, const uint8_t *h) except -1:
        """Apply the validated batch header at `h` (a batch found in the log)."""
        cdef int64_t pid = <int64_t>fq_be_get64(h + FQ_BATCH_OFF_PRODUCER_ID)
        cdef int32_t first = <int32_t>fq_be_get32(h + FQ_BATCH_OFF_BASE_SEQUENCE)
        cdef int32_t delta = <int32_t>fq_be_get32(h + FQ_BATCH_OFF_LAST_OFFSET_DELTA)
        cdef int16_t attrs = <int16_t>fq_be_get16(h + FQ_BATCH_OFF_ATTRIBUTES)
        cdef PEntry e
        if pid < 0 or first < 0 or attrs & FQ_ATTR_CONTROL:
            return 0
        e = self.entry(pid)
        # Kafka: lastSequence = baseSequence + lastOffsetDelta (compaction may drop records)
        fq_pentry_record(&e.e, <int16_t>fq_be_get16(h + FQ_BATCH_OFF_PRODUCER_EPOCH), first,
                         fq_seq_last(first, delta + 1),
                         <int64_t>fq_be_get64(h + FQ_BATCH_OFF_BASE_OFFSET),
                         <int64_t>fq_be_get64(h + FQ_BATCH_OFF_MAX_TIMESTAMP))
        return 0

    def get(self, int64_t pid):
        """The :class:`PEntry` of producer id `pid`, or None."""
        return self.entries.get(pid)

    def rows(self):
        """Every entry as ``(producer_id, epoch, batches)`` (batches oldest first), in
        producer id order: what a snapshot stores."""
        return [(pid, (<PEntry>e).e.epoch, (<PEntry>e).batches())
                for pid, e in sorted(self.entries.items())]

    def add_row(self, int64_t pid, int epoch, batches):
        """Restore one entry from a snapshot row (see ``rows``)."""
        cdef PEntry e
        if pid < 0 or not -1 <= epoch <= 32767 or not 1 <= len(batches) <= FQ_PRODUCER_BATCHES:
            raise CorruptRecord(f"producer state row for producer id {pid}: epoch {epoch}, "
                                f"{len(batches)} batches is out of range")
        e = self.entry(pid)
        for first, last, base, ts in batches:
            if not (0 <= first <= INT32_MAX and 0 <= last <= INT32_MAX and base >= 0):
                raise CorruptRecord(f"producer state row for producer id {pid}: batch "
                                    f"({first}, {last}, {base}) is out of range")
            fq_pentry_record(&e.e, <int16_t>epoch, first, last, base, ts)

    def __len__(self):
        return len(self.entries)

    def __repr__(self):
        return f"<ProducerState producers={len(self.entries)} scanned_to={self.scanned_to}>"


cdef class SharedWord:
    """A 64-bit word at byte `at` (a multiple of 8) of a small existing file, mapped
    shared: every process that maps the file sees a store at once. Loads are acquire,
    stores release. A transactional producer's fence (fastq.broker.idempotence)."""

    def __cinit__(self):
        self.w = NULL
        self.map = NULL

    def __init__(self, str path, Py_ssize_t at):
        cdef int fd
        cdef int rc
        cdef int64_t size
        cdef void *p
        if at < 0 or at % 8:
            raise InvalidArgument(f"shared word offset {at} must be a multiple of 8")
        self.path = path
        fd = open_file(path, O_RDWR | O_CLOEXEC)
        try:
            size = fq_file_size(fd)
            if size < 0:
                raise_status(size, "stat", path)
            if size < at + 8:
                raise CorruptRecord(f"{path} is {size} bytes: too short for a word at {at}", path, size)
            rc = fq_map(fd, <size_t>size, 1, &p)
            if rc < 0:
                raise_status(rc, "map", path)
        finally:
            c_close(fd)
        self.map = p
        self.maplen = <size_t>size
        self.w = <uint64_t *>(<uint8_t *>p + at)

    cdef uint64_t *_word(self) except NULL:
        if self.w == NULL:
            raise Closed(f"shared word of {self.path} is closed")
        return self.w

    def load(self):
        return fq_load_acquire_u64(self._word())

    def store(self, uint64_t v):
        fq_store_release_u64(self._word(), v)

    def sync(self):
        """msync the mapping (the word then survives power failure)."""
        cdef int rc = fq_msync(self.map, self.maplen) if self._word() != NULL else 0
        if rc < 0:
            raise_status(rc, "msync", self.path)

    @property
    def closed(self):
        return self.w == NULL

    def close(self):
        if self.map != NULL:
            fq_unmap(self.map, self.maplen)
        self.map = NULL
        self.w = NULL

    def __dealloc__(self):
        if self.map != NULL:
            fq_unmap(self.map, self.maplen)


# A fence word holds an epoch in its low 32 bits and the complement of those bits in its
# high 32: one aligned 8-byte store changes both, and a damaged word does not pass.
cdef inline int64_t fence_epoch(uint64_t w) noexcept:
    """The epoch in fence word `w`, or -1 when the word is damaged."""
    cdef uint32_t lo = <uint32_t>w
    if <uint32_t>(w >> 32) != <uint32_t>(~lo):
        return -1
    return lo


def fence_word(uint32_t epoch):
    """The fence word holding `epoch` (see fence_epoch)."""
    return (<uint64_t>(~epoch) << 32) | epoch


def fence_word_epoch(uint64_t w):
    """The epoch a fence word holds, or -1 for a damaged word."""
    return fence_epoch(w)



cdef int pstate_sync_locked(LogCore lg) except -1:
    """Writer lock held: bring lg's producer state up to the committed end — built first
    (``Log._load_producer_state``: a snapshot, else empty at the log start) when this
    process has none yet, or rebuilt when the log ends before what it has applied
    (truncated); then every batch appended since (by any process) is applied."""
    cdef ProducerState ps = lg._pstate
    cdef fq_log_state *st = lg.st
    cdef int64_t end = st.next_offset
    cdef LogReader rd
    if ps is None or ps.scanned_to > end:
        lg._pstate = None
        ps = lg._load_producer_state()
        lg._pstate = ps
    if ps.scanned_to < st.log_start_offset:
        ps.scanned_to = st.log_start_offset          # retention removed what lay below
        ps.pos = -1
    if ps.scanned_to >= end:
        return 0
    if (ps.pos >= 0 and ps.pos_gen == st.generation and ps.pos_base == st.active_base
            and lg._gen == st.generation and ps.pos <= st.end_pos):
        # another process appended to the active segment since: walk its batches from
        # where this state stopped (no reader, no index search)
        return pstate_walk_active(lg, ps, end)
    rd = lg.read(ps.scanned_to, end)
    while rd._next_batch():
        # _next_batch validated the batch (CRC included); its header sits before rp
        ps.apply(rd.rp - FQ_BATCH_HEADER_SIZE)
        rd.remaining = 0
        rd.next_offset = rd.expect
    ps.scanned_to = end
    pstate_at_end(ps, st)
    return 0


cdef inline void pstate_at_end(ProducerState ps, fq_log_state *st) noexcept:
    """The state has applied everything up to the committed end: remember where that is."""
    ps.pos = st.end_pos
    ps.pos_base = st.active_base
    ps.pos_gen = st.generation


cdef int pstate_walk_active(LogCore lg, ProducerState ps, int64_t end) except -1:
    """pstate_sync_locked's fast path: the batches in [ps.pos, end_pos) of the active
    segment, validated as a reader validates them (CRC, the offsets expected)."""
    cdef fq_batch_info info
    cdef Segment seg = lg._active
    cdef int64_t pos = ps.pos, limit = lg.st.end_pos, off = ps.scanned_to
    cdef int rc
    if seg.alloc_size < limit:
        seg.refresh_size()
    while pos < limit:
        rc = fq_batch_validate(seg.data + pos, <size_t>(limit - pos), INT32_MAX, 1, &info)
        if rc < 0:
            raise_status(rc, f"producer state: batch at offset {off}", seg.path, pos)
        if info.base_offset < off or (info.base_offset != off and not lg.allow_gaps):
            raise CorruptRecord(f"producer state: batch at position {pos} of {seg.path} has base "
                                f"offset {info.base_offset}, expected {off}", seg.path, pos)
        ps.apply(seg.data + pos)
        off = info.base_offset + info.last_offset_delta + 1
        pos += info.total_size
    if off != end:
        raise CorruptRecord(f"producer state: the batches of {seg.path} end at offset {off}, the "
                            f"log at {end}", seg.path, pos)
    ps.scanned_to = end
    pstate_at_end(ps, lg.st)
    return 0


cdef int check_fence(SharedWord fence, int16_t epoch) except -1:
    """ProducerFenced when a newer instance of the transactional producer owns the fence."""
    cdef int64_t cur = fence_epoch(fq_load_acquire_u64(fence._word()))
    if cur < 0:
        raise CorruptRecord(f"{fence.path}: the producer's epoch word is damaged (its halves do "
                            "not match)", fence.path, None)
    if cur != epoch:
        raise ProducerFenced(f"producer epoch {epoch} was fenced: the transactional id was opened "
                             f"again (epoch {cur}, {fence.path}); close this producer")
    return 0


cdef int append_idem(LogCore lg, const fq_record_in *recs, int32_t n, int64_t pid, int16_t epoch,
                     int32_t first_seq, SharedWord fence, IdemResult *out, int16_t attrs=0) except -1:
    """Append recs[0:n] as ONE batch stamped (pid, epoch, first_seq), unless it is a retry
    of a batch already stored (same producer id and sequence range): then nothing is
    appended and `out` names the original. `first_seq` -1: the producer's next sequence
    in this log, taken under the lock (so concurrent publishes of one producer never get
    the same one). Under one hold of the writer lock: the fence, the producer state
    brought up to date, the sequence rule, the append. Raises ProducerFenced,
    OutOfOrderSequence, RecordTooLarge (an idempotent batch is never split: retries are
    recognized batch by batch). An error raised once the batch was appended (its fsync)
    carries ``appended_offset``, ``sequence`` and ``partition``."""
    cdef int64_t size, first, done_offset, max_ts
    cdef int32_t last_seq, i
    cdef int rc
    cdef const fq_pbatch *dup = NULL
    cdef fq_log_snapshot s
    cdef PEntry e
    cdef Segment seg
    if n < 1:
        raise InvalidArgument("an idempotent append needs at least one record")
    if not -1 <= first_seq <= INT32_MAX:
        raise InvalidArgument(f"sequence {first_seq} out of range [0, 2**31)")
    if lg._ts_ahead_ms >= 0:
        for i in range(n):
            if recs[i].timestamp > lg._ts_bound:
                lg._check_ahead(recs[i].timestamp)
    size = fq_batch_size(recs, n)
    if size < 0:
        raise_status(size, "encode batch")
    if size > lg.max_record_bytes:
        raise RecordTooLarge(f"idempotent batch of {n} record(s), {size} encoded bytes, exceeds "
                             f"max_record_bytes={lg.max_record_bytes}: an idempotent publish is "
                             "one batch (retries are recognized batch by batch); publish fewer")
    max_ts = recs[0].timestamp
    for i in range(1, n):
        if recs[i].timestamp > max_ts:
            max_ts = recs[i].timestamp
    lg._lock()
    try:
        if fence is not None:
            check_fence(fence, epoch)
        if lg._pstate is None or lg._pstate.scanned_to != lg.st.next_offset:
            pstate_sync_locked(lg)               # another process appended, or first use
        e = lg._pstate.entry(pid)
        if first_seq < 0:
            first_seq = fq_pentry_next_seq(&e.e)
            if first_seq < 0:
                first_seq = 0                    # nothing of this producer id here
        out.first_seq = first_seq
        last_seq = fq_seq_last(first_seq, n)
        rc = fq_pentry_check(&e.e, epoch, first_seq, last_seq, &dup)
        if rc == FQ_PSEQ_DUPLICATE:
            out.duplicate = True
            out.offset = dup.base_offset
            out.timestamp = dup.max_timestamp
            out.next_seq = fq_pentry_next_seq(&e.e)
            done_offset = dup.base_offset + n
        elif rc == FQ_PSEQ_FENCED:
            raise ProducerFenced(f"producer id {pid} epoch {epoch} was fenced: epoch {e.e.epoch} of "
                                 f"the same producer id has written to {getattr(lg, 'path', '?')}")
        elif rc == FQ_PSEQ_OUT_OF_ORDER:
            raise OutOfOrderSequence(
                f"producer id {pid} epoch {epoch}: batch with sequences {first_seq}..{last_seq} is out "
                f"of order in {getattr(lg, 'path', '?')}: the next expected sequence is "
                f"{fq_pentry_next_seq(&e.e)} (a gap, or a retry of a batch older than the last "
                f"{FQ_PRODUCER_BATCHES} this producer stored)")
        else:
            lg._prepare_locked(size)
            lg._begin_locked(&s)
            first = s.next_offset
            seg = lg._active
            size = fq_batch_encode_producer(seg.data + s.end_pos, <size_t>size, first, attrs, pid, epoch,
                                            first_seq, recs, n)
            if size < 0:
                raise_status(size, "encode batch")
            lg._stage_locked(&s, s.end_pos, size, max_ts, n)
            lg._publish_locked(&s)
            fq_pentry_record(&e.e, epoch, first_seq, last_seq, first, max_ts)
            lg._pstate.scanned_to = s.next_offset
            lg._pstate.pos = s.end_pos
            lg._pstate.pos_base = s.active_base
            lg._pstate.pos_gen = s.generation
            out.duplicate = False
            out.offset = first
            out.timestamp = max_ts
            out.next_seq = fq_seq_next(last_seq)
            done_offset = s.next_offset
    finally:
        lg._unlock()
    if lg._durability:
        # also for a duplicate: its first attempt may have died before the fsync
        try:
            lg._after_append(done_offset)
        except BaseException as ex:
            ex.appended_offset = out.offset
            ex.sequence = out.first_seq
            ex.partition = lg.partition_id
            raise
    return 0


cdef int idem_one(LogCore lg, object value, object key, object headers, object timestamp, int64_t pid,
                  int16_t epoch, int32_t first_seq, SharedWord fence, IdemResult *out, int16_t attrs=0) except -1:
    """append_idem of one record (value, key, headers, timestamp as ``LogCore.append``)."""
    cdef fq_record_in rec
    if lg._closed:
        lg._check_open()
    keep = lg._fill_one(&rec, value, key, headers, check_ts(timestamp))
    return append_idem(lg, &rec, 1, pid, epoch, first_seq, fence, out, attrs)


cdef int idem_many(LogCore lg, object values, object key, object headers, object timestamp, int64_t pid,
                   int16_t epoch, int32_t first_seq, SharedWord fence, IdemResult *out, int16_t attrs=0) except -1:
    """append_idem of many values as one batch (as ``LogCore.append_many``); returns how
    many records the batch holds."""
    cdef list keep = []
    cdef RecScratch sc = RecScratch.__new__(RecScratch)
    cdef Py_ssize_t n
    lg._check_open()
    n = lg._fill_many(values, key, headers, check_ts(timestamp), sc, keep)
    append_idem(lg, sc.recs, <int32_t>n, pid, epoch, first_seq, fence, out, attrs)
    return <int>n


def _producer_entry(LogCore lg, int64_t pid):
    """Under the writer lock, with the state brought up to date: the :class:`PEntry` of
    producer id `pid` in this log, or None (a producer asks where it left off)."""
    lg._lock()
    try:
        return _producer_entry_locked(lg, pid)
    finally:
        lg._unlock()


def _producer_entry_locked(LogCore lg, int64_t pid):
    """``_producer_entry`` with the writer lock held."""
    pstate_sync_locked(lg)
    e = lg._pstate.entries.get(pid)
    return None if e is None or (<PEntry>e).e.count == 0 else e


def _producer_state_locked(LogCore lg):
    """Writer lock held (a roll): the producer state brought up to the committed end, or
    None when this process never built one (then it writes no snapshot)."""
    if lg._pstate is None:
        return None
    pstate_sync_locked(lg)
    return lg._pstate


cdef int append_control(LogCore lg, int64_t pid, int16_t epoch, int16_t kind, SharedWord fence) except -1:
    """Append a transaction marker (Kafka's control batch: COMMIT ``kind`` 1 or ABORT 0)
    for producer ``pid`` under the writer lock, then wait for the log's durability.
    Returns 0; the marker's offset is the log end before the call."""
    cdef fq_log_snapshot s
    cdef int64_t size, done
    cdef Segment seg
    lg._check_open()
    lg._lock()
    try:
        if fence is not None:
            check_fence(fence, epoch)           # a fenced instance writes no marker
        lg._prepare_locked(FQ_CONTROL_BATCH_SIZE)
        lg._begin_locked(&s)
        seg = lg._active
        size = fq_batch_encode_control(seg.data + s.end_pos, FQ_CONTROL_BATCH_SIZE, s.next_offset, pid,
                                       epoch, kind, 0, <int64_t>(time.time() * 1000))
        if size < 0:
            raise_status(size, "encode control batch")
        lg._stage_locked(&s, s.end_pos, size, <int64_t>(time.time() * 1000), 1)
        lg._publish_locked(&s)
        done = s.next_offset
    finally:
        lg._unlock()
    if lg._durability:
        lg._after_append(done)
    return 0


def _append_marker(LogCore lg, int64_t pid, int epoch, bint commit, SharedWord fence=None):
    """Write a COMMIT (``commit``) or ABORT marker for producer ``pid`` to ``lg``, unless
    ``fence`` (the transactional id's epoch word) says ``epoch`` was fenced."""
    append_control(lg, pid, <int16_t>epoch, FQ_CONTROL_COMMIT if commit else FQ_CONTROL_ABORT, fence)


cdef class TxnIndex:
    """The transactions of one partition as this process knows them (read_committed):
    every batch below ``scanned_to`` has been applied. ``open``: producer id -> first
    offset of its transaction still without a marker; ``aborted``: producer id ->
    ascending flat ``[first, last, ...]`` offset ranges of its aborted transactions
    (first transactional batch .. its ABORT marker). Rebuilt by each process from the
    batch headers of the log (validated, CRC included), from the log start; kept up to
    date by walking what was appended since. The last stable offset is the smallest
    first offset of an open transaction, else the end."""
    cdef public int64_t scanned_to
    cdef public dict open
    cdef public dict aborted

    def __init__(self):
        self.scanned_to = -1
        self.open = {}
        self.aborted = {}

    def sync(self, LogCore lg, int64_t end):
        """Apply the batches in [scanned_to, end); returns the last stable offset."""
        cdef LogReader rd
        cdef const uint8_t *h
        cdef int16_t attrs
        cdef int64_t pid, base
        cdef fq_record_view v
        cdef int kind
        cdef int64_t start = lg._state().log_start_offset
        if self.scanned_to > end:                # truncated: start over
            self.scanned_to = -1
            self.open = {}
            self.aborted = {}
        if self.scanned_to < start:
            self.scanned_to = start              # retention removed what lay below
        if self.scanned_to < end:
            rd = lg.read(self.scanned_to, end)
            rd.raw = True
            while rd._next_batch():
                h = rd.rp - FQ_BATCH_HEADER_SIZE
                attrs = <int16_t>fq_be_get16(h + FQ_BATCH_OFF_ATTRIBUTES)
                if attrs & FQ_ATTR_TRANSACTIONAL:
                    pid = <int64_t>fq_be_get64(h + FQ_BATCH_OFF_PRODUCER_ID)
                    base = <int64_t>fq_be_get64(h + FQ_BATCH_OFF_BASE_OFFSET)
                    if attrs & FQ_ATTR_CONTROL:
                        if fq_record_decode(rd.rp, <size_t>rd.rleft, &v) < 0 or v.key_len != 4:
                            raise CorruptRecord(f"control batch at offset {base} of "
                                                f"{getattr(lg, 'path', '?')} is not a transaction marker",
                                                getattr(lg, 'path', None), None)
                        kind = (v.key[2] << 8) | v.key[3]
                        first = self.open.pop(pid, None)
                        if first is not None and kind == FQ_CONTROL_ABORT:
                            r = self.aborted.get(pid)
                            if r is None:
                                self.aborted[pid] = [first, base]
                            else:
                                r.append(first)
                                r.append(base)
                    elif pid not in self.open:
                        self.open[pid] = base
                rd.remaining = 0
                rd.next_offset = rd.expect
            self.scanned_to = end
        return min(self.open.values()) if self.open else end


def _txn_reader(LogCore lg, int64_t offset, object end, bint follow=False):
    """A read_committed LogReader of ``lg`` from ``offset``: it skips the batches of
    aborted transactions and (control batches are always skipped) stops at the last
    stable offset as of now, or at ``end`` if smaller. ``follow``: no end set here; the
    caller bounds it with ``_txn_lso`` before each read."""
    cdef TxnIndex idx = lg._txnidx
    cdef LogReader rd
    cdef int64_t lso
    if idx is None:
        idx = lg._txnidx = TxnIndex()
    lso = idx.sync(lg, lg.end_offset)
    rd = lg.read(offset, None if follow else (lso if end is None else min(lso, max(end, offset))),
                 follow)
    rd.aborted = idx.aborted
    return rd


def _batch_producers(LogCore lg, int64_t start, int64_t end):
    """The producer fields of the data batches of ``lg`` in [start, end) that have any
    (producer id >= 0): a list of ``(base_offset, last_offset, producer_id, epoch,
    base_sequence)``, ascending (compaction keeps them when it rewrites a record)."""
    cdef LogReader rd
    cdef const uint8_t *h
    cdef int16_t attrs
    cdef int64_t pid, base
    cdef list out = []
    if start >= end:
        return out
    rd = lg.read(start, end)
    rd.raw = True
    while rd._next_batch():
        h = rd.rp - FQ_BATCH_HEADER_SIZE
        attrs = <int16_t>fq_be_get16(h + FQ_BATCH_OFF_ATTRIBUTES)
        pid = <int64_t>fq_be_get64(h + FQ_BATCH_OFF_PRODUCER_ID)
        if pid >= 0 and not attrs & FQ_ATTR_CONTROL:
            base = <int64_t>fq_be_get64(h + FQ_BATCH_OFF_BASE_OFFSET)
            out.append((base, base + <int32_t>fq_be_get32(h + FQ_BATCH_OFF_LAST_OFFSET_DELTA), pid,
                        <int16_t>fq_be_get16(h + FQ_BATCH_OFF_PRODUCER_EPOCH),
                        <int32_t>fq_be_get32(h + FQ_BATCH_OFF_BASE_SEQUENCE)))
        rd.remaining = 0
        rd.next_offset = rd.expect
    return out


def _txn_lso(LogCore lg):
    """The last stable offset of ``lg`` now (read_committed readers stop there)."""
    cdef TxnIndex idx = lg._txnidx
    if idx is None:
        idx = lg._txnidx = TxnIndex()
    return idx.sync(lg, lg.end_offset)


def _set_reader_end(LogReader rd, int64_t end):
    """Move a reader's end (a following read_committed reader bounded by the LSO)."""
    rd.end = end
