# The compiled steps of a thread worker's common case (fastq/tasks/_fastrun.py, which owns
# the policy: when a job is the common case, what every other case does). A job message is
# byte for byte its first state record, {"id", "name", "data", "opts", "state": "waiting",
# "attempts_made": 0, "progress": 0, "added_ms", "gen", "ep"} (fastq/tasks/taskqueue.py);
# its "active" and "completed" records are that message up to ,"state" (the prefix)
# followed by the fields the Python path writes (Worker._activate / Worker._completed), each
# built here in one allocation and appended with LogCore._append_one — or, by step(), a
# job's completed record and the next job's active record as one two-record append.

cdef bytes TASK_WAITING = b',"state":"waiting","attempts_made":0,"progress":0,"added_ms":'
cdef bytes TASK_ACTIVE_EVENT = b'{"event":"active","attempts_made":1}'
cdef bytes TASK_COMPLETED_EVENT_HEAD = b'{"event":"completed","return_value":'
cdef bytes TASK_COMPLETED_EVENT_TAIL = b',"attempts_made":1}'


cdef bytes TASK_ACTIVE_HEAD = b',"state":"active","attempts_made":1,"progress":0,"added_ms":'
cdef bytes TASK_COMPLETED_HEAD = b',"state":"completed","attempts_made":1,"progress":0,"added_ms":'
cdef bytes TASK_PROCESSED = b',"gen":0,"processed_ms":'
cdef bytes TASK_RETURN_VALUE = b',"return_value":'
cdef bytes TASK_FINISHED = b',"failed_reason":null,"finished_ms":'
cdef bytes TASK_END = b'}'


cdef inline Py_ssize_t _task_put(char *p, bytes b) noexcept:
    """Copy ``b`` to ``p``; returns its length."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    memcpy(p, PyBytes_AS_STRING(b), n)
    return n


cdef Py_ssize_t _task_put_i64(char *p, int64_t v) noexcept:
    """Write ``v`` in decimal at ``p`` (at most 20 bytes); returns the length (snprintf's
    "%lld" was 5 % of a worker's time)."""
    cdef char tmp[24]
    cdef int n = 0, i
    cdef uint64_t u = <uint64_t>(-v) if v < 0 else <uint64_t>v
    while True:
        tmp[n] = <char>(48 + u % 10)
        n += 1
        u //= 10
        if u == 0:
            break
    i = 0
    if v < 0:
        p[0] = 45
        i = 1
    while n > 0:
        n -= 1
        p[i] = tmp[n]
        i += 1
    return i


cdef bytes _task_spliced(bytes prefix, const char *tail, Py_ssize_t tail_len, bytes raw, const char *tail2,
                    Py_ssize_t tail2_len):
    """prefix + tail [+ raw + tail2] as one new bytes (raw None: just prefix + tail)."""
    cdef Py_ssize_t n1 = PyBytes_GET_SIZE(prefix)
    cdef Py_ssize_t nr = 0 if raw is None else PyBytes_GET_SIZE(raw)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n1 + tail_len + nr + (0 if raw is None else tail2_len))
    cdef char *p = PyBytes_AS_STRING(out)
    memcpy(p, PyBytes_AS_STRING(prefix), n1)
    memcpy(p + n1, tail, tail_len)
    if raw is not None:
        memcpy(p + n1 + tail_len, PyBytes_AS_STRING(raw), nr)
        memcpy(p + n1 + tail_len + nr, tail2, tail2_len)
    return out


cdef Py_ssize_t _task_active_tail(char *tail, int64_t added, int64_t now) noexcept:
    """The ``active`` record's fields after the prefix (at most 160 bytes)."""
    cdef Py_ssize_t n = _task_put(tail, TASK_ACTIVE_HEAD)
    n += _task_put_i64(tail + n, added)
    n += _task_put(tail + n, TASK_PROCESSED)
    n += _task_put_i64(tail + n, now)
    n += _task_put(tail + n, TASK_END)
    return n


cdef inline bytes _task_completed_event(bytes raw):
    return TASK_COMPLETED_EVENT_HEAD + raw + TASK_COMPLETED_EVENT_TAIL


cdef inline void _task_rec(fq_record_in *r, bytes value, bytes key, int64_t ts) noexcept:
    """Point ``r`` at ``value`` keyed ``key`` (both kept alive by the caller)."""
    r.timestamp = ts
    r.value = <const uint8_t *>PyBytes_AS_STRING(value)
    r.value_len = <int32_t>PyBytes_GET_SIZE(value)
    r.key = <const uint8_t *>PyBytes_AS_STRING(key)
    r.key_len = <int32_t>PyBytes_GET_SIZE(key)
    r.headers = NULL
    r.n_headers = 0


cdef class TaskRunCore:
    """One thread-mode task worker's compiled steps (:class:`fastq.tasks._fastrun.FastRun`):
    :meth:`begin` records a job's ``active`` state and event, :meth:`complete` its
    ``completed`` ones and acks. Thread-safety: as its logs' (any thread may call)."""

    cdef LogCore jobs           # the job-state log (<queue>.jobs, partition 0)
    cdef LogCore events         # the events log (<queue>.events, partition 0)
    cdef LogCore ctl            # the control log: its end offset is the admin epoch
    cdef object control         # fastq.tasks.control.Control: _seen, _paused (read, never written)
    cdef object decode          # the msgspec JSON decoder's decode
    cdef object lost            # lost(n, error): events that could not be written (EventLog._lost)

    def __init__(self, LogCore jobs, LogCore events, LogCore ctl, control, decode, lost):
        self.jobs = jobs
        self.events = events
        self.ctl = ctl
        self.control = control
        self.decode = decode
        self.lost = lost

    def epoch(self):
        """The admin epoch now (the control log's end offset)."""
        return self._epoch()

    cdef inline int64_t _epoch(self) except -1:
        return <int64_t>fq_load_acquire_u64(<uint64_t *>&self.ctl._state().next_offset)

    cdef int _event(self, bytes value, bytes key) except -1:
        """Append one event; one that cannot be written is counted lost (the state is the truth)."""
        try:
            self.events._append_one(value, key, None, fq_realtime_ms())
        except Closed:
            raise
        except FastqError as e:
            self.lost(1, e)
        return 0

    cdef object _check(self, MessageCore m, handler, dict handlers):
        """The common-case test of :meth:`begin`, nothing written: None, or ``(s, fn,
        prefix, key, added, ep)`` with ``s`` the job's state as it will be once active."""
        cdef bytes body
        cdef Py_ssize_t i
        cdef int64_t ep
        if m.delivery_count != 1 or type(m.body) is not bytes:
            return None
        body = <bytes>m.body
        i = body.rfind(TASK_WAITING)
        if i < 0:
            return None
        try:
            s = self.decode(body)
            opts = s["opts"]
            added_o = s["added_ms"]
            name = s["name"]
        except Exception:                    # (msgspec.DecodeError, KeyError, TypeError): the Python path says
            return None
        if type(s) is not dict or type(opts) is not dict or type(added_o) is not int:
            return None
        fn = handler if handlers is None else handlers.get(name)
        ep = self._epoch()
        control = self.control
        if (fn is None or s.get("gen") != 0 or "a0" in s or s.get("ep") != ep or control._seen != ep
                or control._paused or opts.get("repeat") is not None or opts.get("timeout") is not None):
            return None
        if type(s["id"]) is not str:
            return None
        del s["ep"]
        s.pop("due_ms", None)
        s["state"] = "active"
        s["attempts_made"] = 1
        return (s, fn, body[:i], (<str>s["id"]).encode(), added_o, ep)

    def begin(self, MessageCore m, handler, dict handlers):
        """Record the ``active`` state of ``m``'s job if it is the common case — first
        delivery, ``gen`` 0, no ``a0``, published at the current epoch on an unpaused
        queue, no ``repeat`` or ``timeout``, a handler for its name (``handler``, or
        ``handlers[name]`` when ``handlers`` is not None). Returns None (nothing written)
        or ``(state, handler, prefix, key, added_ms, processed_ms, epoch, since, offset,
        moved)``: ``moved`` — the epoch moved after the record (the caller checks what the
        admin operation did); ``since`` — the job log's end before the epoch was read."""
        cdef int64_t ep, since, a, added, now
        cdef char tail[160]
        cdef Py_ssize_t n
        c = self._check(m, handler, handlers)
        if c is None:
            return None
        s, fn, prefix, key, added_o, ep_o = c
        added = added_o
        ep = ep_o
        since = fq_load_acquire_u64(<uint64_t *>&self.jobs._state().next_offset)
        now = fq_realtime_ms()
        s["processed_ms"] = now
        n = _task_active_tail(tail, added, now)
        a = self.jobs._append_one(_task_spliced(prefix, tail, n, None, NULL, 0), key, None, now)
        self._event(TASK_ACTIVE_EVENT, key)
        return (s, fn, prefix, key, added, now, ep, since, a, self._epoch() != ep)

    def complete(self, MessageCore m, bytes prefix, bytes key, int64_t added, int64_t processed, bytes raw,
                 int64_t ep):
        """Record the ``completed`` state (result ``raw``, encoded) and event of a job
        :meth:`begin` recorded, then — unless the epoch moved from ``ep`` — ack ``m``.
        Returns None when acked, else ``(offset, finished_ms)`` (the caller checks the
        admin operation, then acks)."""
        cdef int64_t fin = fq_realtime_ms()
        cdef int64_t off
        off = self.jobs._append_one(self._completed_rec(prefix, added, processed, raw, fin), key, None, fin)
        self._event(_task_completed_event(raw), key)
        if self._epoch() != ep:
            return (off, fin)
        m.ack()
        return None

    cdef bytes _completed_rec(self, bytes prefix, int64_t added, int64_t processed, bytes raw, int64_t fin):
        cdef char tail[200]
        cdef char tail2[96]
        cdef Py_ssize_t n, n2
        n = _task_put(tail, TASK_COMPLETED_HEAD)
        n += _task_put_i64(tail + n, added)
        n += _task_put(tail + n, TASK_PROCESSED)
        n += _task_put_i64(tail + n, processed)
        n += _task_put(tail + n, TASK_RETURN_VALUE)
        n2 = _task_put(tail2, TASK_FINISHED)
        n2 += _task_put_i64(tail2 + n2, fin)
        n2 += _task_put(tail2 + n2, TASK_END)
        return _task_spliced(prefix, tail, n, raw, tail2, n2)

    def step(self, MessageCore pm, bytes pprefix, bytes pkey, int64_t padded, int64_t pprocessed, bytes raw,
             int64_t pep, MessageCore m, handler, dict handlers):
        """:meth:`complete` of the previous job (message ``pm``) and :meth:`begin` of the
        next (``m``) — when ``m`` is the common case and the epoch is still ``pep`` —
        with their two state records in ONE append (one commit: the previous job is
        completed and the next active at the same instant; nothing else changes), and
        their two events in one. Otherwise the same as ``complete`` alone (then ``m`` is
        untouched: the caller begins it, or gives it to the Python path).

        Returns ``(prev, begun)``: ``prev`` as :meth:`complete` returns, or False when the
        ack found its lease gone (the job is recorded completed, as with ``complete``
        raising LeaseLost); ``begun`` None (``m`` not begun) or :meth:`begin`'s tuple."""
        cdef int64_t ep, since, first, now
        cdef char tail[160]
        cdef Py_ssize_t n
        cdef fq_record_in recs[2]
        cdef bytes rec0, rec1
        c = self._check(m, handler, handlers)
        if c is None or <int64_t>c[5] != pep:
            try:
                return (self.complete(pm, pprefix, pkey, padded, pprocessed, raw, pep), None)
            except LeaseLost:
                return (False, None)
        s, fn, prefix, key, added_o, ep_o = c
        ep = pep
        since = fq_load_acquire_u64(<uint64_t *>&self.jobs._state().next_offset)
        now = fq_realtime_ms()
        s["processed_ms"] = now
        rec0 = self._completed_rec(pprefix, padded, pprocessed, raw, now)
        n = _task_active_tail(tail, <int64_t>added_o, now)
        rec1 = _task_spliced(<bytes>prefix, tail, n, None, NULL, 0)
        _task_rec(&recs[0], rec0, pkey, now)
        _task_rec(&recs[1], rec1, <bytes>key, now)
        if self.jobs._closed:
            self.jobs._check_open()
        first = self.jobs._append_recs(recs, 2)
        ev0 = _task_completed_event(raw)
        _task_rec(&recs[0], ev0, pkey, now)
        _task_rec(&recs[1], TASK_ACTIVE_EVENT, <bytes>key, now)
        try:
            if self.events._closed:
                self.events._check_open()
            self.events._append_recs(recs, 2)
        except Closed:
            raise
        except FastqError as e:
            self.lost(2, e)
        moved = self._epoch() != ep
        if moved:
            prev = (first, now)
        else:
            prev = None
            try:
                pm.ack()
            except LeaseLost:
                prev = False
        return (prev, (s, fn, prefix, key, added_o, now, ep, since, first + 1, moved))
