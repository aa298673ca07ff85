# The framed records of memory topics and the producer's accumulator (included by
# _ring.pyx): the layout is described above Ring._put_record. Writing (_write_frame,
# _frame_record), reading (_frame_view, _frame_header — fastq._producer reads frames
# with these into RecordBatch fields) and decoding into record tuples (_decode_record).


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


cdef extern from "Python.h":
    ctypedef struct PyTypeObject:
        pass
    object PyType_GenericAlloc(PyTypeObject *t, Py_ssize_t nitems)


cdef inline void _set_item(object t, Py_ssize_t i, object x):
    Py_INCREF(x)                  # PyTuple_SET_ITEM steals a reference
    PyTuple_SET_ITEM(t, i, x)


cdef inline object _record_tuple(object cls, object a, object b, object c, object d, object e, object f):
    """An instance of the tuple subclass `cls` (checked by _get_records: no fields of its
    own) holding (a..f), built without calling Python code: tuple.__new__ by hand."""
    cdef object t = PyType_GenericAlloc(<PyTypeObject *>cls, 6)
    _set_item(t, 0, a)
    _set_item(t, 1, b)
    _set_item(t, 2, c)
    _set_item(t, 3, d)
    _set_item(t, 4, e)
    _set_item(t, 5, f)
    return t


cdef int _decode_record(const uint8_t *m, int64_t n, list out, object record_type) except -1:
    cdef FrameView f
    cdef fq_header h
    cdef uint32_t i
    _frame_view(m, n, &f)
    key = None if f.key == NULL else PyBytes_FromStringAndSize(<const char *>f.key, f.key_len)
    value = None if f.value == NULL else PyBytes_FromStringAndSize(<const char *>f.value, f.value_len)
    headers = []
    for i in range(f.n_headers):
        _frame_header(&f, &h)
        headers.append(((<const char *>h.key)[:h.key_len].decode("utf-8", "surrogateescape"),
                        None if h.value == NULL else PyBytes_FromStringAndSize(<const char *>h.value,
                                                                               h.value_len)))
    # the field order of fastq.memtopic.MemoryRecord (offset -1: not from a log)
    if record_type is None:
        out.append((f.partition, -1, f.timestamp, key, value, headers))
    else:
        out.append(_record_tuple(record_type, f.partition, -1, f.timestamp, key, value, headers))
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
