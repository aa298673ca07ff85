# Broker-side helpers of the storage core (included by _storage.pyx): the tuple-like
# RecordMetadata publish returns, the topic-wide Notifier futex, Kafka's partitioner hash,
# and the single-record batch writer compaction uses.


@cython.final
@cython.freelist(64)
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

    def __init__(self, str path):
        cdef void *p
        cdef int rc
        self.path = path
        self.fd = open_file(path, O_RDWR | O_CREAT | O_CLOEXEC)
        rc = fq_preallocate(self.fd, PAGE)
        if rc < 0:
            raise_status(rc, "preallocate notifier", path)
        rc = fq_map(self.fd, PAGE, 1, &p)
        if rc < 0:
            raise_status(rc, "map notifier", path)
        self.words = <uint32_t *>p

    @property
    def value(self):
        if self.words == NULL:
            raise Closed("notifier is closed")
        return fq_load_acquire_u32(self.words)

    def bump(self):
        if self.words == NULL:
            raise Closed("notifier is closed")
        fq_notify_bump(self.words, self.words + 1)

    def wait(self, uint32_t seen, timeout=None, double spin_us=50.0):
        """Wait until the word differs from `seen` (True) or `timeout` s pass (False)."""
        cdef int64_t t = -1 if timeout is None else <int64_t>(max(timeout, 0.0) * 1e9)
        cdef int64_t spin = <int64_t>(spin_us * 1000.0)
        cdef int rc
        if self.words == NULL:
            raise Closed("notifier is closed")
        with nogil:
            rc = fq_notify_wait(self.words, self.words + 1, seen, t, spin)
        return rc == 1

    def close(self):
        if self.words != NULL:
            fq_unmap(self.words, PAGE)
            self.words = NULL
        if self.fd >= 0:
            c_close(self.fd)
            self.fd = -1

    def __dealloc__(self):
        if self.words != NULL:
            fq_unmap(self.words, PAGE)
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


def write_single_batch(Segment seg, int64_t pos, int64_t offset, int64_t timestamp, key, value,
                       headers=None):
    """Encode one record as its own batch with base offset `offset` at `pos` of `seg`
    (used by compaction to write a cleaned segment). Returns the batch size."""
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
        rc = fq_batch_encode(seg.data + pos, <size_t>size, offset, 0, &r, 1)
        if rc < 0:
            raise_status(rc, "encode batch")
        return size
    finally:
        PyMem_Free(hdrs)
