# The framed records of memory topics and the producer's accumulator (included by
# _ring.pyx): the layout is described above Ring._put_record. Writing (_write_frame,
# _frame_record), reading (_frame_view, _frame_header — fastq._core._producer reads frames
# with these into RecordBatch fields) and decoding into MemoryRecord objects or tuples
# (_decode_record).


cdef inline int64_t _record_ts(object timestamp) except -1:
    """A framed record's timestamp: now for None, else an int of ms in [0, 2**62]."""
    if timestamp is None:
        return fq_realtime_ms()
    if isinstance(timestamp, int) and not isinstance(timestamp, bool) and 0 <= timestamp <= (1 << 62):
        return timestamp
    raise InvalidArgument(f"timestamp must be an int of milliseconds >= 0, got {timestamp!r}")


cdef inline object _record_bytes(object obj, str what):
    """`obj` as bytes (None stays None), no longer than a ring message can be."""
    if obj is None:
        return None
    if type(obj) is not bytes:
        obj = _as_bytes(obj, what)
    if PyBytes_GET_SIZE(obj) > FQ_RING_MAX_MESSAGE:
        raise RecordTooLarge(f"{what} of {PyBytes_GET_SIZE(obj)} bytes is larger than a ring message can be")
    return obj


cdef inline uint64_t _frame_size(object key, object value, object hb) noexcept:
    return (REC_FIXED + <uint64_t>(0 if key is None else PyBytes_GET_SIZE(key))
            + <uint64_t>(0 if value is None else PyBytes_GET_SIZE(value))
            + <uint64_t>(0 if hb is None else PyBytes_GET_SIZE(hb)))


cdef void _write_frame(uint8_t *w, uint32_t partition, int64_t ts, object key, object value,
                       object hb) noexcept:
    """Write one framed record (layout above Ring._put_record) at `w`; the caller sized it
    with _frame_size and normalized key/value/headers with _record_bytes/_encode_headers."""
    cdef Py_ssize_t klen = -1 if key is None else PyBytes_GET_SIZE(key)
    cdef Py_ssize_t vlen = -1 if value is None else PyBytes_GET_SIZE(value)
    cdef Py_ssize_t hlen = 0 if hb is None else PyBytes_GET_SIZE(hb)
    (<uint32_t *>w)[0] = partition
    (<int32_t *>(w + 4))[0] = <int32_t>klen
    (<int32_t *>(w + 8))[0] = <int32_t>vlen
    (<uint32_t *>(w + 12))[0] = <uint32_t>hlen
    (<int64_t *>(w + 16))[0] = ts
    w += REC_FIXED
    if klen > 0:
        memcpy(w, PyBytes_AS_STRING(key), klen)
        w += klen
    if vlen > 0:
        memcpy(w, PyBytes_AS_STRING(value), vlen)
        w += vlen
    if hlen:
        memcpy(w, PyBytes_AS_STRING(hb), hlen)


cdef bytes _as_bytes(object obj, str what):
    if isinstance(obj, str):
        raise InvalidArgument(f"{what} must be bytes-like, not str (encode it first)")
    try:
        return bytes(memoryview(obj))
    except TypeError:
        raise InvalidArgument(f"{what} must be bytes-like or None, got {type(obj).__name__}") from None


cdef bytes _encode_headers(object headers):
    """u32 count, then (u32 key_len, key, i32 value_len | -1, value) per header."""
    if isinstance(headers, dict):
        headers = list(headers.items())
    try:
        items = list(headers)
    except TypeError:
        raise InvalidArgument(f"headers must be a list of (str, bytes) pairs or a dict, "
                              f"got {type(headers).__name__}") from None
    parts = [_U32.pack(len(items))]
    for i, item in enumerate(items):
        if not isinstance(item, tuple) or len(item) != 2:
            raise InvalidArgument(f"header {i} must be a (str, bytes) pair, got {item!r:.60}")
        k, v = item
        if isinstance(k, str):
            k = k.encode("utf-8", "surrogateescape")
        elif not isinstance(k, bytes):
            raise InvalidArgument(f"header key must be str, got {type(k).__name__}")
        parts.append(_U32.pack(len(k)))
        parts.append(k)
        if v is None:
            parts.append(_I32.pack(-1))
        else:
            if type(v) is not bytes:
                v = _as_bytes(v, "header value")
            parts.append(_I32.pack(len(v)))
            parts.append(v)
    return b"".join(parts)


cdef int _frame_view(const uint8_t *m, int64_t n, FrameView *out) except -1:
    """Check one framed record's lengths and point `out` at its fields (no copies)."""
    cdef int32_t klen, vlen
    cdef uint32_t hlen
    cdef const uint8_t *p
    if n < REC_FIXED:
        raise CorruptRecord(f"framed record of {n} bytes is shorter than its {REC_FIXED}-byte header")
    klen = (<const int32_t *>(m + 4))[0]
    vlen = (<const int32_t *>(m + 8))[0]
    hlen = (<const uint32_t *>(m + 12))[0]
    if (REC_FIXED + <uint64_t>(klen if klen > 0 else 0) + <uint64_t>(vlen if vlen > 0 else 0) + hlen
            != <uint64_t>n or klen < -1 or vlen < -1 or (hlen != 0 and hlen < 4)):
        raise CorruptRecord(f"framed record: lengths (key {klen}, value {vlen}, headers {hlen}) "
                            f"do not add up to its {n} bytes")
    out.m = m
    out.len = <uint32_t>n
    out.partition = (<const uint32_t *>m)[0]
    out.timestamp = (<const int64_t *>(m + 16))[0]
    p = m + REC_FIXED
    out.key = p if klen >= 0 else NULL
    out.key_len = klen
    p += klen if klen > 0 else 0
    out.value = p if vlen >= 0 else NULL
    out.value_len = vlen
    p += vlen if vlen > 0 else 0
    out.hend = p + hlen
    out.n_headers = (<const uint32_t *>p)[0] if hlen else 0
    out.hp = p + 4 if hlen else p
    return 0


cdef int _frame_header(FrameView *f, fq_header *h) except -1:
    """Read the next header of `f` into `h` (pointers into the frame), checking bounds."""
    cdef const uint8_t *p = f.hp
    cdef uint32_t kl
    cdef int32_t vl
    if f.hend - p < 4:
        raise CorruptRecord("framed record: truncated headers")
    kl = (<const uint32_t *>p)[0]
    p += 4
    if <uint64_t>(f.hend - p) < <uint64_t>kl + 4:
        raise CorruptRecord("framed record: truncated header key")
    h.key = p
    h.key_len = <int32_t>kl
    p += kl
    vl = (<const int32_t *>p)[0]
    p += 4
    if vl < -1 or (vl > 0 and f.hend - p < vl):
        raise CorruptRecord("framed record: truncated header value")
    h.value = p if vl >= 0 else NULL
    h.value_len = vl
    f.hp = p + (vl if vl > 0 else 0)
    return 0


_MEMORY_RECORD_FIELDS = ("partition", "offset", "timestamp", "key", "value", "headers")


@cython.freelist(256)
@cython.no_gc            # holds a str, bytes, ints and a tuple of (str, bytes) pairs: no cycle
cdef class MemoryRecord:
    """A record taken from a memory topic. Behaves as the named tuple
    ``(partition, offset, timestamp, key, value, headers)``: attribute access, indexing,
    unpacking, ``len``, comparison with tuples and other records, ``_asdict()``,
    ``_replace()``, ``_fields``; plus ``topic``. ``key``/``value`` are bytes copies (or
    None), so it pins nothing; ``headers`` is a new list of ``(str, bytes)`` pairs on
    each access. ``offset`` is -1 for a record from the ring, the log offset for a
    spilled one. Not a ``tuple`` subclass: a compiled object the garbage collector does
    not track (taking records out of the ring used to build a tuple and a list per
    record, both tracked, which cost more than the rest of the take)."""

    cdef readonly str topic
    cdef readonly uint32_t partition
    cdef readonly int64_t offset
    cdef readonly int64_t timestamp
    cdef readonly object key
    cdef readonly object value
    cdef tuple _headers

    _fields = _MEMORY_RECORD_FIELDS

    def __init__(self, str topic, uint32_t partition, int64_t offset, int64_t timestamp, key, value,
                 headers=()):
        if key is not None and type(key) is not bytes:
            raise InvalidArgument(f"key must be bytes or None, got {type(key).__name__}")
        if value is not None and type(value) is not bytes:
            raise InvalidArgument(f"value must be bytes or None, got {type(value).__name__}")
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp
        self.key = key
        self.value = value
        self._headers = _header_pairs(headers)

    @property
    def headers(self):
        """A new list of ``(str, bytes)`` pairs (empty when the record has none)."""
        return list(self._headers)

    cdef tuple _astuple(self):
        return (self.partition, self.offset, self.timestamp, self.key, self.value, list(self._headers))

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return self._astuple()[i]

    def __iter__(self):
        return iter(self._astuple())

    def __richcmp__(self, other, int op):
        if isinstance(other, MemoryRecord):
            other = (<MemoryRecord>other)._astuple()
        elif not isinstance(other, tuple):
            return NotImplemented
        return PyObject_RichCompare(self._astuple(), other, op)

    def __hash__(self):
        return hash(self._astuple())         # TypeError, as for the tuple: headers is a list

    def __reduce__(self):
        return (MemoryRecord, (self.topic, self.partition, self.offset, self.timestamp, self.key,
                               self.value, self._headers))

    def count(self, x):
        return self._astuple().count(x)

    def index(self, x, *args):
        return self._astuple().index(x, *args)

    def _asdict(self):
        return dict(zip(_MEMORY_RECORD_FIELDS, self._astuple()))

    def _replace(self, **changes):
        d = self._asdict()
        bad = set(changes) - set(_MEMORY_RECORD_FIELDS)
        if bad:
            raise InvalidArgument(f"unknown field(s) {sorted(bad)!r}; fields are {_MEMORY_RECORD_FIELDS!r}")
        d.update(changes)
        return MemoryRecord(self.topic, d["partition"], d["offset"], d["timestamp"], d["key"], d["value"],
                            d["headers"])

    def __repr__(self):
        return (f"MemoryRecord(partition={self.partition}, offset={self.offset}, "
                f"timestamp={self.timestamp}, key={self.key!r}, value={self.value!r}, "
                f"headers={list(self._headers)!r})")


cdef tuple _header_pairs(object headers):
    """Headers as a tuple of (str, bytes | None) pairs (a dict is accepted too)."""
    if not headers:
        return ()
    if isinstance(headers, dict):
        headers = headers.items()
    out = []
    for h in headers:
        k, v = h
        if type(k) is not str:
            raise InvalidArgument(f"header keys must be str, got {type(k).__name__}")
        if v is not None and type(v) is not bytes:
            v = _as_bytes(v, "header value")
        out.append((k, v))
    return tuple(out)


cdef int _decode_record(const uint8_t *m, int64_t n, list out, str topic) except -1:
    """Append the framed record at m: a MemoryRecord of `topic`, or a plain tuple when
    topic is None."""
    cdef FrameView f
    cdef fq_header h
    cdef uint32_t i
    cdef MemoryRecord r
    _frame_view(m, n, &f)
    key = None if f.key == NULL else PyBytes_FromStringAndSize(<const char *>f.key, f.key_len)
    value = None if f.value == NULL else PyBytes_FromStringAndSize(<const char *>f.value, f.value_len)
    headers = []
    for i in range(f.n_headers):
        _frame_header(&f, &h)
        headers.append(((<const char *>h.key)[:h.key_len].decode("utf-8", "surrogateescape"),
                        None if h.value == NULL else PyBytes_FromStringAndSize(<const char *>h.value,
                                                                               h.value_len)))
    if topic is None:
        out.append((f.partition, -1, f.timestamp, key, value, headers))
        return 0
    r = MemoryRecord.__new__(MemoryRecord)
    r.topic = topic
    r.partition = f.partition
    r.offset = -1
    r.timestamp = f.timestamp
    r.key = key
    r.value = value
    r._headers = tuple(headers) if f.n_headers else ()
    out.append(r)
    return 0


def _frame_record(uint32_t partition, value, key=None, headers=None, timestamp=None):
    """The framed bytes ``Ring._put_record`` would put (for all-or-nothing ``put_many``
    of several records). Returns ``(frame, timestamp)``."""
    cdef int64_t ts = _record_ts(timestamp)
    value = _record_bytes(value, "value")
    key = _record_bytes(key, "key")
    hb = _encode_headers(headers) if headers else None
    cdef uint64_t total = _frame_size(key, value, hb)
    if total > FQ_RING_MAX_MESSAGE:
        raise RecordTooLarge(f"a record of {total} bytes (framed) is larger than a ring message can be")
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>total)
    _write_frame(<uint8_t *>PyBytes_AS_STRING(out), partition, ts, key, value, hb)
    return out, ts
