# Pub/sub's read path (fastq.pubsub): records -> PubSubMessage, filtered by channel.
# Included by _storage.pyx (it reads Record's fields directly: no key or value view is made).

cdef object _ROUTE_MISS = object()


@cython.final
@cython.no_gc            # holds a str, a bytes and two ints: no cycle
cdef class PubSubMessage:
    """One message handed to a pub/sub subscriber: ``channel`` (str), ``data`` (bytes, or
    None for a null value), ``offset`` (its offset in the namespace's log; -1 in
    ephemeral mode) and ``timestamp`` (ms since the epoch, set by the publisher)."""

    def __init__(self, str channel, data, int64_t offset, int64_t timestamp):
        self.channel = channel
        self.data = data
        self.offset = offset
        self.timestamp = timestamp

    def __eq__(self, other):
        if not isinstance(other, PubSubMessage):
            return NotImplemented
        cdef PubSubMessage o = <PubSubMessage>other
        return (self.channel == o.channel and self.data == o.data and self.offset == o.offset
                and self.timestamp == o.timestamp)

    __hash__ = None

    def __reduce__(self):
        return (PubSubMessage, (self.channel, self.data, self.offset, self.timestamp))

    def __repr__(self):
        d = self.data if self.data is None or len(self.data) <= 40 else self.data[:40] + b"..."
        return f"PubSubMessage(channel={self.channel!r}, data={d!r}, offset={self.offset})"


cdef inline PubSubMessage _message(object channel, object data, int64_t offset, int64_t timestamp):
    cdef PubSubMessage m = PubSubMessage.__new__(PubSubMessage)
    m.channel = channel
    m.data = data
    m.offset = offset
    m.timestamp = timestamp
    return m


def _route_records(list recs, dict channels, classify):
    """The PubSubMessages of ``recs`` whose channel is wanted. ``recs``: log Records (key
    and value read in place) or records with ``key``/``value``/``offset``/``timestamp``
    attributes (a ring's MemoryRecords). ``channels`` maps a key (bytes) to its channel
    (str) or None (not wanted); a key it lacks goes to ``classify(key)``, which returns
    the same and is expected to remember it. A record with a null key is skipped.
    Consecutive records with the same key are looked up once."""
    cdef list out = []
    cdef Record r
    cdef object ch = None
    cdef object kb
    cdef const uint8_t *pk = NULL
    cdef int32_t pklen = -2
    cdef object prev_key = _ROUTE_MISS
    for obj in recs:
        if type(obj) is Record:
            r = <Record>obj
            if r.klen != pklen or (r.klen > 0 and memcmp(r.kp, pk, r.klen) != 0):
                pk = r.kp
                pklen = r.klen
                if r.klen < 0:
                    ch = None
                else:
                    kb = PyBytes_FromStringAndSize(<const char *>r.kp, r.klen)
                    ch = channels.get(kb, _ROUTE_MISS)
                    if ch is _ROUTE_MISS:
                        ch = classify(kb)
            if ch is None:
                continue
            out.append(_message(ch, None if r.vlen < 0 else
                                PyBytes_FromStringAndSize(<const char *>r.vp, r.vlen),
                                r.offset, r.timestamp))
        else:
            kb = obj.key
            if kb is not prev_key:
                prev_key = kb
                if kb is None:
                    ch = None
                else:
                    ch = channels.get(kb, _ROUTE_MISS)
                    if ch is _ROUTE_MISS:
                        ch = classify(kb)
            if ch is None:
                continue
            out.append(_message(ch, obj.value, obj.offset, obj.timestamp))
    return out
