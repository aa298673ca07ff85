# QueueCore and MessageCore: the compiled hot path under fastq.queue's Queue and Message,
# which subclass them (as fastq.log.Log subclasses LogCore). Included by _storage.pyx after
# _queuestate.pxi: it leases through QueueState's C calls and reads the lane logs through
# LogReader's record views, building each Message straight from the mapped record — no
# Record, no tuple, no Python frame per message.
#
# Only the common case is compiled: one partition, not ordered, no delayed message due, no
# lease to expire or liveness check due, the lock free at once and no repair owed, no
# other thread inside. Then receive() is one lock round trip for the whole batch, ack()
# one more per message (ack_many one per call). In every other case these return None or
# 0, and fastq.queue's Python path — which owns the policy: housekeeping, promotion,
# dead letters, ordered lanes, sessions, errors — does the work, as before. Records with
# headers (copies, user headers) and deliveries past max_deliveries are handed to the
# Python Queue._message, so the rules about fq- headers and dead-lettering live in one place.

from cpython.object cimport PyObject, PyTypeObject

cdef int64_t _MAX_RECEIVE = 1 << 20           # receive's max_messages cap (queue.py checks it too)
cdef double _MAX_WAIT = 1e12                  # receive's wait cap, seconds
cdef tuple _NO_ARGS = ()                      # tp_new's args when receive builds a Message


cdef class QueueCore:
    """The compiled receive/ack path of :class:`fastq.Queue` (see _queuecore.pxi). The
    fields are the Queue's own attributes; ``_core_init`` and ``_set_fast_lanes`` wire the
    rest. Thread-safety as the Queue's: shared by threads, a thread inside the compiled
    take makes the others take the Python path."""
    cdef QueueState _st                 # queue.state (kept here: tests may wrap Queue._state)
    cdef public bint _closed            # close() ran (or the handle was abandoned at fork)
    cdef public int _session            # our session slot, -1 before the first receive
    cdef public int64_t _lease_ms       # visibility timeout in ms
    cdef public bint _sync              # durability "group"/"always": settles msync (Python path)
    cdef public double _next_housekeeping   # time.monotonic() of the next liveness check
    cdef public int64_t _next_expire_ms     # wall-clock ms of the next lease-expiry pass
    cdef public object max_deliveries   # int, or None: never dead-lettered
    cdef public object codec            # fastq.queue.codecs.Codec of this handle
    cdef object _message_type           # fastq.queue.Message: the class receive builds
    cdef object _raw_codec              # the "raw" Codec: bytes are stored as they are
    cdef list _publish_logs             # one partition: lane log per priority (None: not open); else []
    cdef list _fast_lanes               # open priority lanes in receive order ([]: Python path)
    cdef list _fast_logs                # their lane logs (LogCore)
    cdef list _fast_readers             # a following LogReader per lane, or None
    cdef Py_ssize_t _fast_n             # len(_fast_lanes)
    cdef uint32_t _fast_index[FQ_Q_PRIORITIES]  # their lane numbers in queue.state
    cdef int64_t _fast_bits[FQ_Q_PRIORITIES]    # partition << 4 | priority: the low bits of an id
    cdef bint _busy                     # a thread is inside _take_fast
    cdef list _bound_logs               # every lane's log (LogCore, None: not open here), by lane
    cdef public double _next_bound_scan # time.monotonic() when a bounded publish looks for new lanes
    cdef public bint _seen_over         # the watermark state this process last saw
    cdef public int64_t _credit         # publishes admitted without counting the depth again ...
    cdef int64_t _credit_ms             # ... from this fq_realtime_ms() to the next millisecond ...
    cdef uint32_t _credit_notify        # ... while the queue's notify word is this (no other commit)
    cdef Notifier _notifier_core        # the queue's notify word (every lane commit bumps it)
    cdef double _record_bytes           # the last mean stored record size seen (bytes estimate)

    def _core_init(self, QueueState state, message_type, raw_codec):
        """Wire the state, the Message class and the raw codec (Queue.__init__ calls it
        once)."""
        if not (isinstance(message_type, type) and issubclass(message_type, MessageCore)):
            raise InvalidArgument(f"message_type must subclass MessageCore, got {message_type!r}")
        self._st = state
        self._message_type = message_type
        self._raw_codec = raw_codec
        self._set_fast_lanes([], [])
        self._bound_logs = []

    def _set_notifier(self, Notifier notifier):
        """The queue's notify word: a credit holds only while no other commit moved it."""
        self._notifier_core = notifier

    def _set_bound_logs(self, list logs):
        """Every lane's log (LogCore or None), in lane order: what the depth counts."""
        for lg in logs:
            if lg is not None and not isinstance(lg, LogCore):
                raise InvalidArgument("bound logs: LogCore or None expected")
        self._bound_logs = list(logs)

    cdef int64_t _depth_now(self, int64_t *nbytes=NULL) except -1:
        """Unsettled messages; with nbytes, also an estimate of their stored bytes: per
        lane, unsettled x the mean record size of its active segment (end_pos / records;
        a segment just rolled has none: the last mean seen stands in)."""
        cdef QueueState st = self._st
        cdef Py_ssize_t i, n = len(self._bound_logs)
        cdef int64_t d = 0, end, u, k
        cdef double b = 0.0
        cdef fq_log_state *ls
        cdef object lg
        if st is None or st.map == NULL:
            raise Closed("queue is closed")
        if n > <Py_ssize_t>(st.q.hdr.partitions * FQ_Q_LANES):
            n = st.q.hdr.partitions * FQ_Q_LANES
        for i in range(n):
            lg = self._bound_logs[i]
            end = -1
            if lg is not None:
                ls = (<LogCore>lg)._state()
                end = <int64_t>fq_load_acquire_u64(<uint64_t *>&ls.next_offset)
                u = st._unsettled(<uint32_t>i, end)
                if nbytes != NULL and u > 0:
                    k = end - ls.active_base
                    if k > 0 and ls.end_pos > 0:
                        self._record_bytes = <double>ls.end_pos / <double>k
                    b += u * self._record_bytes
            else:
                u = st._unsettled(<uint32_t>i, end)
                if nbytes != NULL:
                    b += u * self._record_bytes
            d += u
        if nbytes != NULL:
            nbytes[0] = <int64_t>b
        return d

    def _bytes_fast(self):
        """(unsettled messages, estimated bytes they take in the lane logs, the mean stored
        record size used: 0.0 before any record was seen), lock-free."""
        cdef int64_t nb = 0
        cdef int64_t d = self._depth_now(&nb)
        return d, nb, self._record_bytes

    def _depth_fast(self):
        """Unsettled messages across processes (lock-free; lanes not open in this process
        count only their window): what max_depth and the watermarks compare."""
        return self._depth_now()

    cdef bint _admit_fast(self, int64_t n, int64_t now_ms) except -1:
        """Whether a plain publish of n messages may go on without the Python path: the
        queue is unbounded, or the depth leaves room and the watermark state this process
        saw has not moved. False: the Python path decides (wait, refuse, drop, callbacks).

        Counting the depth reads every lane; to keep a bounded publish near an unbounded
        one, a count grants a *credit*: 1/16 of the room left (below max_depth, max_bytes
        and the high watermark) that holds while the queue's notify word — bumped by every
        commit to any lane, in any process — moved only by this handle's own publishes,
        and within 1-2 ms (the wall-clock millisecond publish reads for the record's
        timestamp anyway, and the next; a clock stepped back ends it). So a credit never
        lets a publish past a depth someone else's publish made: the bound is as tight as
        without credits (one message per racing publisher), and a lone publisher counts
        about once per 16th of the room. The count itself is lock-free, and a consumer
        moving a message between counters may make it one off for an instant: within 16
        of a limit the Python path counts under the lock."""
        cdef QueueState st = self._st
        cdef Notifier nt = self._notifier_core
        cdef int64_t d, room, nb = 0
        cdef uint32_t word
        if st is None or st.map == NULL or nt is None or nt.words == NULL:
            return 0
        if (fq_load_acquire_u32(&st.q.hdr.limits.over) != 0) != self._seen_over:
            return 0
        if not st._bounded():
            return 1
        word = fq_load_acquire_u32(nt.words)
        if (self._credit >= n and word == self._credit_notify
                and self._credit_ms <= now_ms <= self._credit_ms + 1):
            self._credit -= n
            self._credit_notify = word + 1        # the commit this publish makes
            return 1
        self._credit = 0
        if <double>fq_monotonic_ns() * 1e-9 >= self._next_bound_scan:
            return 0
        if st.q.hdr.limits.max_bytes > 0:
            d = self._depth_now(&nb) + n
        else:
            d = self._depth_now() + n
        room = INT64_MAX
        if st.q.hdr.limits.max_bytes > 0:
            if self._record_bytes <= 0 or nb + 16 * (n + 1) * self._record_bytes > st.q.hdr.limits.max_bytes:
                return 0                    # within 16 records of the byte limit: the Python path
            room = <int64_t>((st.q.hdr.limits.max_bytes - nb) / self._record_bytes) - n
        if st.q.hdr.limits.max_depth > 0:
            if d + 16 > st.q.hdr.limits.max_depth:
                return 0
            room = min(room, st.q.hdr.limits.max_depth - d)
        if st.q.hdr.limits.high > 0:
            if st.q.hdr.limits.over:
                if d <= st.q.hdr.limits.low:
                    return 0
            elif d >= st.q.hdr.limits.high:
                return 0
            else:
                room = min(room, st.q.hdr.limits.high - d - 1)
        self._credit = min(room // 16, 4096)
        self._credit_ms = now_ms
        self._credit_notify = word + 1            # read before the count: a commit since ends it
        return 1

    def publish(self, data, *, key=None, headers=None, delay=None, priority=0, dedup_id=None):
        """Store one message; returns its id once it is stored (durably, under
        ``"group"``/``"always"``). ``key``: bytes or str, picks the partition. ``delay``:
        seconds before it may be delivered (no upper limit). ``priority``: 0..9, higher
        delivered first, FIFO within one. ``dedup_id``: a publish with an id seen in the
        last ``dedup_window`` seconds stores nothing and returns the first one's id."""
        cdef LogCore lg
        cdef int64_t off, now_ms
        cdef long prio
        if (key is None and headers is None and delay is None and dedup_id is None
                and type(priority) is int and 0 <= priority < FQ_Q_PRIORITIES and not self._closed
                and self._publish_logs):
            prio = priority
            lg = self._publish_logs[prio]
            now_ms = fq_realtime_ms()
            if lg is not None and self._admit_fast(1, now_ms):   # a plain publish: one append, no lock
                if type(data) is bytes and self.codec is self._raw_codec:
                    body = data
                else:
                    body = self.codec.encode(data)
                off = lg._append_one(body, None, None, now_ms)
                return (off << 12) | prio     # message id: offset, partition 0, lane
        return self._publish(data, key=key, headers=headers, delay=delay, priority=priority,
                             dedup_id=dedup_id)

    def publish_many(self, items, *, key=None, headers=None, delay=None, priority=0):
        """Store several messages (one append when there is no delay); returns their ids."""
        cdef LogCore lg
        cdef int64_t base
        cdef long prio
        cdef Py_ssize_t i, n
        cdef list bodies
        if (type(items) is list and key is None and headers is None and delay is None
                and type(priority) is int and 0 <= priority < FQ_Q_PRIORITIES and not self._closed
                and self._publish_logs):
            prio = priority
            lg = self._publish_logs[prio]
            n = len(<list>items)
            if lg is not None and n > 0 and self._admit_fast(n, fq_realtime_ms()):   # one append_many, no lock
                bodies = <list>items
                if self.codec is self._raw_codec:
                    for i in range(n):
                        if type(bodies[i]) is not bytes:
                            bodies = None
                            break
                else:
                    bodies = None
                if bodies is None:
                    encode = self.codec.encode
                    bodies = [encode(x) for x in <list>items]
                base = lg.append_many(bodies)
                return [((base + i) << 12) | prio for i in range(n)]
        return self._publish_many(items, key=key, headers=headers, delay=delay, priority=priority)

    def _set_fast_lanes(self, list lanes, list publish_logs):
        """The lanes receive may take from on the compiled path, in receive order (the
        open priority lanes of a one-partition, unordered queue; [] turns it off), and the
        lane logs publish appends to (a one-partition queue's, by priority, None where not
        open; [] turns it off)."""
        cdef Py_ssize_t k, n = len(lanes)
        if n > FQ_Q_PRIORITIES:
            raise InvalidArgument(f"{n} lanes: a partition has {FQ_Q_PRIORITIES} priority lanes")
        if publish_logs and (len(publish_logs) != FQ_Q_PRIORITIES
                             or not all(lg is None or isinstance(lg, LogCore) for lg in publish_logs)):
            raise InvalidArgument(f"publish_logs: {FQ_Q_PRIORITIES} lane logs (or None) expected")
        self._publish_logs = list(publish_logs)
        logs = []
        for k in range(n):
            lane = lanes[k]
            lg = lane.log
            if not isinstance(lg, LogCore):
                raise InvalidArgument(f"lane {lane.index} has no open log")
            self._fast_index[k] = lane.index
            self._fast_bits[k] = (lane.partition << 4) | lane.prio
            logs.append(lg)
        self._fast_lanes = list(lanes)
        self._fast_logs = logs
        self._fast_readers = [None] * n
        self._fast_n = n

    def receive(self, max_messages=1, wait=None):
        """Lease up to ``max_messages`` messages: the highest priority first, FIFO within
        one. ``wait``: seconds to wait for the first (None: until one comes; 0: return at
        once). Returns a list (empty when the wait ran out)."""
        cdef list got
        if (type(max_messages) is int and 0 < max_messages <= _MAX_RECEIVE
                and (wait is None or ((type(wait) is float or type(wait) is int) and 0 <= wait < _MAX_WAIT))):
            got = self._take_fast(max_messages)
            if got:
                return got
        return self._receive(max_messages, wait)

    def _take_fast(self, Py_ssize_t max_messages):
        """What receive's compiled path leased (a list, maybe empty), or None when the
        Python path must run (see the top of _queuecore.pxi)."""
        return self._take_plain(max_messages)

    cdef object _take_plain(self, Py_ssize_t max_n):
        cdef QueueState st = self._st
        cdef Py_ssize_t k, got = 0, n = self._fast_n
        cdef int64_t now, o, err = 0
        cdef uint32_t d = 0, owner
        cdef int64_t ends[FQ_Q_PRIORITIES]
        cdef int64_t small_off[16]
        cdef uint32_t small_del[16]
        cdef uint8_t small_k[16]
        cdef int64_t *offs = small_off
        cdef uint32_t *dels = small_del
        cdef uint8_t *ks = small_k
        cdef LogCore lg
        if (n == 0 or self._busy or self._closed or self._session < 0 or st is None or st.map == NULL
                or max_n <= 0):
            return None
        if <double>fq_monotonic_ns() * 1e-9 >= self._next_housekeeping:
            return None
        now = fq_realtime_ms()
        if now >= self._next_expire_ms or st.q.hdr.heap_len != 0:
            return None
        for k in range(n):                    # before the lock: a closed log raises here
            lg = <LogCore>self._fast_logs[k]
            ends[k] = <int64_t>fq_load_acquire_u64(<uint64_t *>&lg._state().next_offset)
        if max_n > 16:
            offs = <int64_t *>PyMem_Malloc(max_n * sizeof(int64_t))
            dels = <uint32_t *>PyMem_Malloc(max_n * sizeof(uint32_t))
            ks = <uint8_t *>PyMem_Malloc(max_n * sizeof(uint8_t))
            if offs == NULL or dels == NULL or ks == NULL:
                PyMem_Free(offs)
                PyMem_Free(dels)
                PyMem_Free(ks)
                raise MemoryError()
        self._busy = 1
        try:
            if st._lock_fast() < 0:
                return None
            owner = <uint32_t>self._session
            for k in range(n):
                while got < max_n:
                    o = fq_q_acquire(&st.q, self._fast_index[k], ends[k], owner, now, self._lease_ms, &d)
                    if o < 0:
                        if o != FQ_EEMPTY and o != FQ_EFULL:
                            err = o
                        break
                    offs[got] = o
                    dels[got] = d
                    ks[got] = <uint8_t>k
                    got += 1
                if got >= max_n or err:
                    break
            fq_q_unlock(&st.q)
            if err:
                raise_status(err, "acquire from queue lane", st.path)
            if got == 0:
                return []
            return self._build_plain(got, offs, dels, ks)
        finally:
            self._busy = 0
            if offs != small_off:
                PyMem_Free(offs)
                PyMem_Free(dels)
                PyMem_Free(ks)

    cdef list _build_plain(self, Py_ssize_t got, const int64_t *offs, const uint32_t *dels, const uint8_t *ks):
        """The Messages of what _take_plain leased. A damaged record: every readable one is
        handed back (Queue._release_readable) and CorruptRecord raised, as on the Python
        path. The lane lists and numbers are read once: Queue._message is Python, and while
        it runs another thread may open a lane (_set_fast_lanes)."""
        cdef list out = []
        cdef list lanes = self._fast_lanes, logs = self._fast_logs, readers = self._fast_readers
        cdef uint32_t index[FQ_Q_PRIORITIES]
        cdef int64_t bits[FQ_Q_PRIORITIES]
        cdef Py_ssize_t i
        cdef int k
        cdef int64_t off, roff, maxd = -1
        cdef fq_record_view v
        cdef LogReader rd
        cdef MessageCore m
        cdef PyTypeObject *mtype = <PyTypeObject *>self._message_type   # tp_new straight: no __new__ lookup
        if self.max_deliveries is not None:
            maxd = self.max_deliveries
        memcpy(index, self._fast_index, sizeof(index))
        memcpy(bits, self._fast_bits, sizeof(bits))
        try:
            for i in range(got):
                k = ks[i]
                off = offs[i]
                rd = <LogReader>readers[k]
                if rd is None or rd.next_offset != off:
                    rd = (<LogCore>logs[k]).read(off, None, True)
                    readers[k] = rd
                if not rd._next_view(&v, &roff) or roff != off:
                    lane = lanes[k]
                    raise CorruptRecord(f"queue {self.name!r}: lane log {lane.path} ends before offset "
                                        f"{off}, which queue.state has delivered", lane.path)
                if v.n_headers != 0 or (maxd >= 0 and dels[i] > maxd):
                    m2 = self._message(lanes[k], off, dels[i], rd._record_of(&v, roff))
                    if m2 is not None:
                        out.append(m2)
                    continue
                m = <MessageCore>mtype.tp_new(<type>mtype, <PyObject *>_NO_ARGS, NULL)
                m._q = self
                m._lane = index[k]
                m._offset = off
                m._deliveries = dels[i]
                m._session = self._session
                m.id = (off << 12) | bits[k]
                m.key = None if v.key_len < 0 else PyBytes_FromStringAndSize(<const char *>v.key, v.key_len)
                m.body = (b"" if v.value_len < 0
                          else PyBytes_FromStringAndSize(<const char *>v.value, v.value_len))
                m._raw_headers = ()
                m._pub_ms = rd.base_ts + v.timestamp_delta
                m.delivery_count = dels[i]
                out.append(m)
        except CorruptRecord:
            self._release_readable([(lanes[ks[i]], offs[i], dels[i]) for i in range(got)])
            raise
        return out

    cdef int _settle_fast(self, MessageCore m, int state) except -1:
        """Settle m's lease on the compiled path: 1 done; 0 when the Python path must
        (closed, msync owed, peeked, lock busy, repair owed, or the lease not current —
        which the Python path reports as LeaseLost)."""
        cdef QueueState st = self._st
        cdef int rc
        if self._closed or self._sync or m._session < 0 or st is None:
            return 0
        if st._lock_fast() < 0:
            return 0
        rc = fq_q_settle(&st.q, <uint32_t>m._lane, m._offset, <uint32_t>m._deliveries,
                         <uint32_t>m._session, state, 0)
        fq_q_unlock(&st.q)
        if rc < 0:
            return 0
        m._settled = True
        return 1

    def _settle_many(self, list messages, int state):
        """Settle every message of ``messages`` under one lock: the list of those whose
        lease was not current (nothing done to them). None when the Python path must —
        closed, msync owed, the lock busy, a repair owed, or a message that is not a
        leased one of this handle (nothing done at all then)."""
        cdef QueueState st = self._st
        cdef MessageCore m
        cdef list lost = []
        cdef int rc
        if self._closed or self._sync or st is None:
            return None
        for x in messages:
            if not isinstance(x, MessageCore):
                return None
            m = <MessageCore>x
            if m._q is not self or m._session < 0:
                return None
        if st._lock_fast() < 0:
            return None
        for x in messages:
            m = <MessageCore>x
            rc = fq_q_settle(&st.q, <uint32_t>m._lane, m._offset, <uint32_t>m._deliveries,
                             <uint32_t>m._session, state, 0)
            if rc == 0:
                m._settled = True
            else:
                lost.append(m)     # no allocation under the lock but for a lost lease
        fq_q_unlock(&st.q)
        return lost


cdef class MessageCore:
    """The fields of :class:`fastq.Message` and its two hot calls, ``ack`` and ``data``
    (the Python subclass has the rest)."""
    cdef public QueueCore _q            # the queue handle it was received (or peeked) through
    cdef public int _lane               # lane number in queue.state
    cdef public int64_t _offset         # offset in the lane log
    cdef public int64_t _deliveries     # delivery count in queue.state: names the lease (-1: peeked)
    cdef public int _session            # session that holds the lease (-1: peeked)
    cdef public object id               # the message id (int)
    cdef public object key              # bytes, or None
    cdef public object body             # the stored bytes
    cdef public object _raw_headers     # [(name, bytes)] of the record, fq- ones included; () for none
    cdef public object _headers         # dict of the user's headers once built, else None
    cdef public int64_t _pub_ms         # first publish time, ms since the epoch
    cdef public int64_t delivery_count  # deliveries so far, this one included (1: the first)
    cdef public object _data            # the decoded data once _decoded
    cdef public bint _decoded           # data was decoded (it may decode to None)
    cdef public bint _settled           # this handle acked, nacked, rejected or dead-lettered it

    @property
    def data(self):
        """The message decoded by the queue's codec (on first access; a stored message
        the codec cannot decode raises CodecError here, ``body`` stays readable)."""
        if self._decoded:
            return self._data
        codec = self._q.codec
        loads = codec.loads
        if loads is bytes:                  # raw: the body is the data
            d = self.body
        else:
            try:
                d = loads(self.body)
            except Exception:               # named only when it fails: no f-string per message
                d = codec.decode(self.body, f"message {self.id} of queue {self._q.name!r}")
        self._data = d
        self._decoded = True
        return d

    def ack(self):
        """Settle for good: the message is never delivered again. Raises
        :class:`fastq.LeaseLost` when the lease is no longer current (it ended and another
        consumer took the message, or it was settled)."""
        cdef QueueCore q = self._q
        if q is None:
            raise InvalidArgument("this message belongs to no queue")
        if q._settle_fast(self, FQ_Q_ACKED) == 0:
            q._settle(self, FQ_Q_ACKED, 0)
