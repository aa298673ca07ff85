# Broker-side helpers of the storage core (included by _storage.pyx): the tuple-like
# RecordMetadata publish returns, the topic-wide Notifier futex, Kafka's partitioner hash,
# and the single-record batch writer compaction uses.


@cython.final
@cython.freelist(64)
@cython.no_gc            # holds a str and numbers only: no reference cycle through it
cdef class RecordMetadata:
    """Where a published record landed: ``topic, partition, offset, timestamp``.

    Behaves like a 4-tuple (unpacking, indexing, equality) and has ``_asdict()``."""

    def __init__(self, topic, int32_t partition, int64_t offset, int64_t timestamp):
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp

    def _astuple(self):
        return (self.topic, self.partition, self.offset, self.timestamp)

    def _asdict(self):
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "timestamp": self.timestamp}

    def __iter__(self):
        return iter(self._astuple())

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self._astuple()[i]

    def __eq__(self, other):
        if isinstance(other, RecordMetadata):
            return self._astuple() == (<RecordMetadata>other)._astuple()
        if isinstance(other, tuple):
            return self._astuple() == other
        return NotImplemented

    def __hash__(self):
        return hash(self._astuple())

    def __reduce__(self):
        return (RecordMetadata, self._astuple())

    def __repr__(self):
        return (f"RecordMetadata(topic={self.topic!r}, partition={self.partition}, "
                f"offset={self.offset}, timestamp={self.timestamp})")


cdef class Pacer:
    """Adaptive waiting for one tailing reader or consumer: pass the same Pacer to every
    ``Log.wait`` / ``Topic.wait_any`` call (``Consumer(wait="adaptive")`` does).

    A waiter that sleeps on the futex pays the wake-up when a record comes: 10-50 µs
    on a VM whose idle vCPU must leave halt. A Pacer learns the gap between arrivals
    (the median of the last 8) and, once that gap is longer than the plain spin,
    sleeps only until ``margin_us`` before the next expected arrival (an earlier
    record still wakes it through the futex), then spins until ``margin_us`` after
    it. A record later than that is waited for as usual.

    It keeps its beat through a sender's jitter and slow wake-ups:

    - a record seen while spinning but after the expected moment (sent late) moves
      the next expected arrival by at most ``margin_us / 2``; a stall or a record
      found already there does not move the median gap;
    - a record that came while the Pacer slept, or after its window, was seen a
      wake-up late, and the next expected arrival is reckoned from that late moment.
      When wake-ups take longer than the margin (common on a busy VM) that would
      repeat for every later record, so the next window opens early instead: half a
      gap, at most ``8 * margin_us``, before the expected arrival. The next record is
      then seen while spinning, which anchors the pace again.

    Cost: up to ``2 * margin_us`` of spinning per arrival — at 5,000 records/s and the
    default 50 µs, at most half of one core — and up to ``7 * margin_us`` more after
    an arrival seen late. Pacing applies to gaps up to 100 ms (a wait sleeps in
    100 ms slices; the paced phase runs in the first); longer gaps are waited for as
    usual. Gaps over 1 s count as idle time, not rate. Not shared between threads."""

    def __init__(self, double margin_us=50.0):
        if not 0 < margin_us <= 100_000:
            raise InvalidArgument(f"margin_us must be in (0, 100000], got {margin_us!r}")
        self.p.margin_ns = <int64_t>(margin_us * 1000.0)
        self.reset()

    def reset(self):
        """Forget the learned gap (e.g. after a pause the rate will not resume from)."""
        cdef int64_t margin = self.p.margin_ns
        memset(&self.p, 0, sizeof(fq_pace))
        self.p.margin_ns = margin

    @property
    def margin_us(self):
        """The spin window on each side of the expected arrival, in µs."""
        return self.p.margin_ns / 1000.0

    @property
    def gap_us(self):
        """The learned gap between arrivals in µs, or None before two arrivals."""
        return self.p.gap_ns / 1000.0 if self.p.gap_ns > 0 else None

    @property
    def stats(self):
        """``{"early": n, "late": n, "woken": n}``: paced waits whose record came
        before the end of the spin window (early), or after it, through the futex
        (late); ``woken`` counts the early ones that came while the Pacer still slept
        and woke it (seen a wake-up late, not while spinning)."""
        return {"early": self.p.early, "late": self.p.late, "woken": self.p.woken}

    def __repr__(self):
        return f"Pacer(margin_us={self.margin_us:g}, gap_us={self.gap_us!r}, stats={self.stats})"


cdef class Notifier:
    """A topic-wide wake-up word in a shared 4 KiB file.

    Every partition log of a topic bumps it after each commit (``LogCore._notifier``);
    a consumer of several partitions reads ``value``, checks its partitions, then
    ``wait(value)`` — a commit after the check changes the word, so no wakeup is lost.
    Process-safe; one object per process may be shared by threads.
    """

    def __cinit__(self):
        self.words = NULL
        self.fd = -1

    def __init__(self, str path, bint readonly=False):
        """``readonly``: a private word in anonymous memory, the file untouched (a read-only
        topic sees no new commits to be woken for)."""
        cdef void *p
        cdef int rc
        self.path = path
        if readonly:
            rc = fq_map_anon(PAGE, &p)
            if rc < 0:
                raise_status(rc, "map a private notifier", path)
            self.words = <uint32_t *>p
            return
        self.fd = open_file(path, O_RDWR | O_CREAT | O_CLOEXEC)
        rc = fq_preallocate(self.fd, PAGE)
        if rc < 0:
            raise_status(rc, "preallocate notifier", path)
        rc = fq_map(self.fd, PAGE, 1, &p)
        if rc < 0:
            raise_status(rc, "map notifier", path)
        self.words = <uint32_t *>p
        c_close(self.fd)             # only ever used through the mapping: one fd less per topic
        self.fd = -1

    @property
    def value(self):
        if self.words == NULL:
            raise Closed("notifier is closed")
        return fq_load_acquire_u32(self.words)

    def bump(self):
        if self.words == NULL:
            raise Closed("notifier is closed")
        fq_notify_bump(self.words, self.words + 1)

    def wait(self, uint32_t seen, timeout=None, double spin_us=50.0, Pacer pacer=None):
        """Wait until the word differs from `seen` (True) or `timeout` s pass (False);
        paced by `pacer` if given (see Log.wait). Signal handlers run while it waits."""
        cdef int64_t deadline = wait_deadline(timeout_ns(timeout)), left
        cdef int64_t spin = <int64_t>(spin_us * 1000.0)
        cdef int rc, first = 1
        cdef fq_pace *pp = NULL if pacer is None else &pacer.p
        while True:                     # in slices, as LogCore._wait
            if self.words == NULL:
                raise Closed("notifier is closed")
            left = wait_slice(deadline)
            if left == 0:
                return fq_load_acquire_u32(self.words) != seen
            self._in_wait += 1
            with nogil:
                rc = fq_notify_wait(self.words, self.words + 1, seen, left, spin, pp, first)
            self._in_wait -= 1
            if self._unmap != NULL and self._in_wait == 0:   # closed meanwhile: the last
                fq_unmap(self._unmap, PAGE)                  # one out unmaps (see close)
                self._unmap = NULL
            if rc == 1:
                return True
            first = 0
            spin = 0
            PyErr_CheckSignals()

    def close(self):
        """Close. Threads of this process asleep in wait() are woken (they raise Closed);
        the last of them unmaps the word, so close never pulls it from under one."""
        if self.words != NULL:
            if self._in_wait:
                self._unmap = self.words
                fq_notify_bump(self.words, self.words + 1)
            else:
                fq_unmap(self.words, PAGE)
            self.words = NULL
        if self.fd >= 0:
            c_close(self.fd)
            self.fd = -1

    def __dealloc__(self):
        if self.words != NULL:
            fq_unmap(self.words, PAGE)
        if self._unmap != NULL:
            fq_unmap(self._unmap, PAGE)
        if self.fd >= 0:
            c_close(self.fd)


def murmur2(data):
    """Kafka's murmur2 hash of a bytes-like object, as a signed 32-bit int."""
    cdef const uint8_t[::1] mv
    if isinstance(data, str):
        raise InvalidArgument("murmur2 needs bytes, not str")
    mv = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    if mv.shape[0] == 0:
        return fq_murmur2(NULL, 0)
    return fq_murmur2(&mv[0], <size_t>mv.shape[0])


def kafka_partition(key, int32_t partitions):
    """The partition Kafka's default partitioner picks for `key` among `partitions`."""
    cdef const uint8_t *p
    cdef Py_ssize_t n
    if partitions < 1:
        raise InvalidArgument(f"partitions must be >= 1, got {partitions}")
    if type(key) is bytes:
        p = <const uint8_t *>PyBytes_AS_STRING(key)
        n = PyBytes_GET_SIZE(key)
        return fq_kafka_partition(p, <size_t>n, partitions)
    return (murmur2(key) & 0x7fffffff) % partitions


def key_bytes(key):
    """A record key as bytes (bytes-like objects are copied; str is refused: encode it)."""
    if type(key) is bytes:
        return key
    if isinstance(key, str):
        raise InvalidArgument("key must be bytes-like, not str (encode it first)")
    try:
        return bytes(memoryview(key))
    except TypeError:
        raise InvalidArgument(f"key must be bytes-like or None, got {type(key).__name__}") from None


# Kafka's batch.size: unkeyed records stick to a partition for this many bytes
STICKY_BATCH_BYTES = 16384


cdef class TopicCore:
    """The publish hot path of fastq.broker.topic.Topic (which subclasses this and supplies
    ``log(p)``, opening a partition's log on first use, and ``choose_partition``)."""

    def __cinit__(self, *args, **kwargs):     # the Python subclass takes the arguments
        self._logs = []

    def publish(self, value, *, key=None, headers=None, partition=None, timestamp=None):
        """Append one record; returns its :class:`RecordMetadata` once it is committed
        (and synced, per the topic's durability). The partition: ``partition`` if given,
        else Kafka's default partitioner for a key (murmur2, positive modulo), else the
        sticky partition, which moves on after ~16 KiB (Kafka's batch.size).
        ``headers``: list of (str, bytes) pairs or a dict. ``timestamp``: integer ms
        since the epoch (default now)."""
        cdef int32_t p
        cdef int64_t ts
        cdef LogCore lg
        cdef RecordMetadata m
        if partition is None and key is None:
            self._sticky_bytes += PyBytes_GET_SIZE(value) if type(value) is bytes else STICKY_BATCH_BYTES
            if self._sticky_bytes >= STICKY_BATCH_BYTES:
                self.choose_partition(None, None, 0)
            p = self._sticky
        elif partition is None:
            key = key_bytes(key)
            p = fq_kafka_partition(<const uint8_t *>PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key),
                                   self.partitions)
        else:
            if not isinstance(partition, int) or isinstance(partition, bool):
                raise InvalidArgument(f"partition must be an int, got {type(partition).__name__}")
            if not 0 <= partition < self.partitions:
                raise InvalidArgument(f"partition {partition} out of range: topic {self.name!r} has "
                                      f"partitions 0..{self.partitions - 1}")
            p = partition
        lgo = self._logs[p]
        lg = self.log(p) if lgo is None else lgo
        ts = check_ts(timestamp)
        m = RecordMetadata.__new__(RecordMetadata)
        m.offset = lg._append_one(value, key, headers, ts)
        m.topic = self.name
        m.partition = p
        m.timestamp = ts
        return m


def write_single_batch(Segment seg, int64_t pos, int64_t offset, int64_t timestamp, key, value,
                       headers=None, int64_t producer_id=-1, int producer_epoch=-1, int32_t sequence=-1):
    """Encode one record as its own batch with base offset `offset` at `pos` of `seg`
    (used by compaction to write a cleaned segment), with the producer fields given
    (-1: none). Returns the batch size."""
    cdef fq_record_in r
    cdef list keep = []
    cdef Py_ssize_t i, n = 0
    cdef fq_header *hdrs = NULL
    cdef int64_t size, rc
    if seg.data == NULL:
        raise Closed(f"segment {seg.path} is closed")
    r.timestamp = timestamp
    set_field(key, &r.key, &r.key_len, keep, "key")
    set_field(value, &r.value, &r.value_len, keep, "value")
    if headers:
        n = len(headers)
        hdrs = <fq_header *>PyMem_Malloc(n * sizeof(fq_header))
        if hdrs == NULL:
            raise MemoryError()
    try:
        for i in range(n):
            k, v = headers[i]
            kb = k.encode("utf-8", "surrogateescape") if isinstance(k, str) else bytes(k)
            keep.append(kb)
            hdrs[i].key = <const uint8_t *>PyBytes_AS_STRING(kb)
            hdrs[i].key_len = <int32_t>PyBytes_GET_SIZE(kb)
            set_field(v, &hdrs[i].value, &hdrs[i].value_len, keep, "header value")
        r.headers = hdrs
        r.n_headers = <int32_t>n
        size = fq_batch_size(&r, 1)
        if size < 0:
            raise_status(size, "encode batch")
        seg._grow(pos + size)
        rc = fq_batch_encode_producer(seg.data + pos, <size_t>size, offset, 0, producer_id,
                                      <int16_t>producer_epoch, sequence, &r, 1)
        if rc < 0:
            raise_status(rc, "encode batch")
        return size
    finally:
        PyMem_Free(hdrs)
