# QueueState: the mapped `queue.state` of one message queue (layout, lock and repair rule
# in csrc/fq_queue.h). Included by _storage.pyx: it shares the fault points, the status
# table and the file helpers of the log. Policy (which lane, dead letters, delay, dedup,
# sessions) is fastq.queue's; this class only maps the file, takes the lock and calls C.

QUEUE_PRIORITIES = FQ_Q_PRIORITIES
QUEUE_LANES = FQ_Q_LANES
QUEUE_DELAYED = FQ_Q_DELAYED
QUEUE_MAX_PARTITIONS = FQ_Q_MAX_PARTITIONS
QUEUE_MAX_SESSIONS = FQ_Q_MAX_SESSIONS
QUEUE_NO_OWNER = FQ_Q_NO_OWNER
SLOT_AVAILABLE = FQ_Q_AVAILABLE
SLOT_ACQUIRED = FQ_Q_ACQUIRED
SLOT_ACKED = FQ_Q_ACKED
SLOT_ARCHIVED = FQ_Q_ARCHIVED
SLOT_WAITING = FQ_Q_WAITING


def queue_state_size(uint32_t partitions, uint32_t window, uint32_t delay_window,
                     uint32_t max_sessions, uint32_t dedup_capacity):
    """Bytes of a queue.state file of this geometry (InvalidArgument when it is not one)."""
    cdef int64_t n = fq_q_layout(partitions, window, delay_window, max_sessions, dedup_capacity)
    if n < 0:
        raise InvalidArgument(
            f"queue geometry partitions={partitions} window={window} delay_window={delay_window} "
            f"max_sessions={max_sessions} dedup_capacity={dedup_capacity}: windows and the dedup "
            f"table must be powers of two >= 16 (at most 2**24), partitions 1..{FQ_Q_MAX_PARTITIONS}, "
            f"sessions 1..{FQ_Q_MAX_SESSIONS}")
    return n


def queue_state_create(str path, uint32_t partitions, uint32_t window, uint32_t delay_window,
                       uint32_t max_sessions, uint32_t dedup_capacity):
    """Write a fresh queue.state at `path` (a new file the caller renames into place):
    preallocated in full, so a full disk fails here and never as a SIGBUS later, and
    fsynced."""
    cdef int64_t size = queue_state_size(partitions, window, delay_window, max_sessions,
                                         dedup_capacity)
    cdef int fd = open_file(path, O_RDWR | O_CREAT | O_CLOEXEC)
    cdef void *p = NULL
    cdef int rc
    try:
        rc = fq_preallocate(fd, size)
        if rc < 0:
            raise_status(rc, "preallocate queue state", path)
        rc = fq_map(fd, <size_t>size, 1, &p)
        if rc < 0:
            raise_status(rc, "map queue state", path)
        rc = fq_q_init(p, partitions, window, delay_window, max_sessions, dedup_capacity)
        if rc < 0:
            raise_status(rc, "initialize queue state", path)
        rc = fq_msync(p, <size_t>size)
        if rc < 0:
            raise_status(rc, "sync queue state", path, -1, ERR_OP_SYNC)
    finally:
        if p != NULL:
            fq_unmap(p, <size_t>size)
        c_close(fd)


@cython.final
cdef class QueueState:
    """A mapped queue.state. Process-safe through its lock (one pid word, see
    csrc/fq_queue.h); one object per process, shared by its threads, each taking the lock
    around every call but ``lock``/``unlock``/``close`` and the read-only properties."""
    cdef fq_q q                     # pointers into the mapping
    cdef void *map                  # the mapping (NULL when closed)
    cdef int64_t size               # its length
    cdef readonly str path          # the file
    cdef readonly uint32_t last_deliveries   # delivery count of the last acquire

    def __cinit__(self):
        self.map = NULL

    def __init__(self, str path):
        cdef int fd = open_file(path, O_RDWR | O_CLOEXEC)
        cdef int64_t size
        cdef int rc
        cdef void *p = NULL
        self.path = path
        try:
            size = fq_file_size(fd)
            if size < 0:
                raise_status(size, "stat queue state", path)
            if size < 4096:
                raise CorruptRecord(f"queue state {path}: {size} bytes, shorter than its header",
                                    path, None)
            rc = fq_map(fd, <size_t>size, 1, &p)
            if rc < 0:
                raise_status(rc, "map queue state", path)
        finally:
            c_close(fd)
        rc = fq_q_attach(&self.q, p, <uint64_t>size)
        if rc < 0:
            fq_unmap(p, <size_t>size)
            raise_status(rc, "read queue state", path)
        self.map = p
        self.size = size

    cdef inline int _live(self) except -1:
        if self.map == NULL:
            raise Closed(f"queue state {self.path} is closed")
        return 0

    def close(self):
        if self.map != NULL:
            fq_unmap(self.map, <size_t>self.size)
            self.map = NULL

    def __dealloc__(self):
        if self.map != NULL:
            fq_unmap(self.map, <size_t>self.size)
            self.map = NULL

    def after_fork(self):
        """In a forked child: the lock word names processes by pid."""
        self.q.me = <uint32_t>fq_getpid()

    @property
    def closed(self):
        return self.map == NULL

    @property
    def geometry(self):
        """(partitions, window, delay_window, max_sessions, dedup_capacity)."""
        self._live()
        h = self.q.hdr
        return (h.partitions, h.window, h.delay_window, h.max_sessions, h.dedup_capacity)

    @property
    def lock_steals(self):
        self._live()
        return self.q.hdr.lock_steals

    @property
    def heap_len(self):
        self._live()
        return self.q.hdr.heap_len

    def sync(self):
        """msync the whole state (durability "always"/"group" acks)."""
        cdef int rc
        self._live()
        with nogil:
            rc = fq_msync(self.map, <size_t>self.size)
        if rc < 0:
            raise_status(rc, "sync queue state", self.path, -1, ERR_OP_SYNC)

    # -- the lock -------------------------------------------------------------------

    def lock(self):
        """Take the lock (waiting without the GIL). True when it was taken over from a
        dead holder or a repair is still owed: call repair() before anything else."""
        cdef int rc
        self._live()
        rc = fq_q_lock(&self.q, 0)
        if rc == FQ_ETIMEDOUT:
            with nogil:
                rc = fq_q_lock(&self.q, -1)
        if rc < 0:
            raise_status(rc, "lock queue state", self.path)
        return rc == 1

    def unlock(self):
        if self.map != NULL:
            fq_q_unlock(&self.q)

    def holder(self):
        """pid holding the lock, 0 when free (diagnostic)."""
        self._live()
        return fq_load_acquire_u32(&self.q.hdr.lock)

    def repair(self):
        cdef int rc
        self._live()
        rc = fq_q_repair(&self.q)
        if rc < 0:
            raise_status(rc, "repair queue state", self.path)

    def lane_truncate(self, uint32_t lane, int64_t log_end):
        """The lane's log ends at log_end, before the window's end: drop the window's
        offsets from there on and repair. Returns how many were dropped."""
        self._lane(lane)
        cdef int64_t n = fq_q_lane_truncate(&self.q, lane, log_end)
        if n < 0:
            raise_status(n, "truncate queue lane", self.path)
        return n

    # -- lanes ----------------------------------------------------------------------

    cdef inline int _lane(self, uint32_t lane) except -1:
        self._live()
        if lane >= self.q.hdr.partitions * FQ_Q_LANES:
            raise InvalidArgument(f"lane {lane} out of range")
        return 0

    def acquire(self, uint32_t lane, int64_t log_end, uint32_t owner, int64_t now_ms,
                int64_t lease_ms):
        """Offset leased from `lane` (its delivery count in last_deliveries); -1 when
        nothing is due, -2 when the window is full."""
        cdef uint32_t d = 0
        cdef int64_t o
        self._lane(lane)
        o = fq_q_acquire(&self.q, lane, log_end, owner, now_ms, lease_ms, &d)
        if o >= 0:
            self.last_deliveries = d
            return o
        if o == FQ_EEMPTY:
            return -1
        if o == FQ_EFULL:
            return -2
        raise_status(o, "acquire from queue lane", self.path)

    cdef int _lock_fast(self) noexcept:
        """Take the lock for one short call of this process's fast paths: 0 taken, -1 when
        it is not (held by another thread or process, or a repair is owed): the caller
        goes the Python way then, whose wait holds the queue's mutex — so close() never
        unmaps the state under a thread waiting here."""
        if self.map == NULL:
            return -1
        cdef int rc = fq_q_lock(&self.q, 0)
        if rc == 0:
            return 0
        if rc == 1:
            fq_q_unlock(&self.q)
        return -1

    def settle_now(self, uint32_t lane, int64_t offset, uint32_t deliveries, uint32_t owner,
                   int new_state, int64_t not_before_ms=0):
        """settle() under the lock taken and released here (one call for an ack): True,
        False when the lease is not current, None when the lock is busy or a repair is
        owed (nothing done: take it the careful way)."""
        cdef int rc
        self._lane(lane)
        if self._lock_fast() < 0:
            return None
        rc = fq_q_settle(&self.q, lane, offset, deliveries, owner, new_state, not_before_ms)
        fq_q_unlock(&self.q)
        if rc == FQ_ESTALE:
            return False
        if rc < 0:
            raise_status(rc, "settle queue message", self.path)
        return True

    def take(self, list lanes, list ends, Py_ssize_t max_n, uint32_t owner, int64_t now_ms,
             int64_t lease_ms):
        """Lease up to max_n messages from lanes[0], then lanes[1], ... (whose logs end at
        ends[i]): [(i, offset, deliveries), ...]. One call for receive's whole loop."""
        cdef Py_ssize_t i, got = 0, n = len(lanes)
        cdef uint32_t d = 0, lane
        cdef int64_t o, end
        self._live()
        if len(ends) != n:
            raise InvalidArgument("lanes and ends differ in length")
        out = []
        for i in range(n):
            lane = lanes[i]
            end = ends[i]
            if lane >= self.q.hdr.partitions * FQ_Q_LANES:
                raise InvalidArgument(f"lane {lane} out of range")
            while got < max_n:
                o = fq_q_acquire(&self.q, lane, end, owner, now_ms, lease_ms, &d)
                if o < 0:
                    if o == FQ_EEMPTY or o == FQ_EFULL:
                        break
                    raise_status(o, "acquire from queue lane", self.path)
                out.append((i, o, d))
                got += 1
            if got >= max_n:
                break
        return out

    def settle(self, uint32_t lane, int64_t offset, uint32_t deliveries, uint32_t owner,
               int new_state, int64_t not_before_ms=0):
        """False when the lease is not current (acked, or expired and taken again)."""
        self._lane(lane)
        cdef int rc = fq_q_settle(&self.q, lane, offset, deliveries, owner, new_state, not_before_ms)
        if rc == FQ_ESTALE:
            return False
        if rc < 0:
            raise_status(rc, "settle queue message", self.path)
        return True

    def settle_any(self, uint32_t lane, int64_t offset, int new_state):
        self._lane(lane)
        cdef int rc = fq_q_settle_any(&self.q, lane, offset, new_state)
        if rc < 0:
            raise_status(rc, "settle queue message", self.path)
        return rc == 1

    def extend(self, uint32_t lane, int64_t offset, uint32_t deliveries, uint32_t owner,
               int64_t deadline_ms):
        self._lane(lane)
        cdef int rc = fq_q_extend(&self.q, lane, offset, deliveries, owner, deadline_ms)
        if rc == FQ_ESTALE:
            return False
        if rc < 0:
            raise_status(rc, "extend queue lease", self.path)
        return True

    def expire(self, uint32_t lane, int64_t now_ms, uint32_t dead_owner=FQ_Q_NO_OWNER):
        self._lane(lane)
        cdef int64_t n = fq_q_expire(&self.q, lane, now_ms, dead_owner)
        if n < 0:
            raise_status(n, "expire queue leases", self.path)
        return n

    def slot(self, uint32_t lane, int64_t offset):
        """(state, deliveries, owner, deadline_ms) of a message in the window, else None."""
        cdef fq_q_slot s
        self._lane(lane)
        if fq_q_slot_get(&self.q, lane, offset, &s) < 0:
            return None
        return (s.state, s.deliveries, s.owner, s.deadline_ms)

    def lane(self, uint32_t lane):
        """(spso, speo, available, acquired, next_expiry_ms, settled, dead)."""
        self._lane(lane)
        cdef fq_q_lane *l = &self.q.lanes[lane]
        return (l.spso, l.speo, l.available, l.acquired, l.next_expiry_ms, l.settled, l.dead)

    cpdef int64_t pending(self, uint32_t lane, int64_t log_end) except -1:
        """Messages of `lane` that may be deliverable: AVAILABLE ones plus the records
        never delivered (log_end - speo). Lock-free read: a hint for choosing a lane."""
        self._lane(lane)
        cdef fq_q_lane *l = &self.q.lanes[lane]
        return l.available + (log_end - l.speo if log_end > l.speo else 0)

    # -- delayed messages ------------------------------------------------------------

    def delay_track(self, uint32_t lane, int64_t offset, int64_t due_ms):
        """False when the delay window is full."""
        self._lane(lane)
        cdef int rc = fq_q_delay_track(&self.q, lane, offset, due_ms)
        if rc == FQ_EFULL:
            return False
        if rc < 0:
            raise_status(rc, f"track delayed message {offset} of lane {lane}", self.path)
        return True

    def heap_peek(self):
        """(due_ms, lane, offset) of the earliest delayed message, or None."""
        cdef int64_t due
        cdef uint64_t ref
        self._live()
        if fq_q_heap_peek(&self.q, &due, &ref) < 0:
            return None
        return (due, <uint32_t>(ref >> 48), <int64_t>(ref & ((1ULL << 48) - 1)))

    def heap_pop(self):
        self._live()
        fq_q_heap_pop(&self.q)

    # -- deduplication ---------------------------------------------------------------

    def dedup_get(self, uint64_t h1, uint64_t h2, int64_t now_ms):
        cdef uint64_t mid = 0
        self._live()
        if fq_q_dedup_get(&self.q, h1, h2, now_ms, &mid) == 1:
            return mid
        return None

    def dedup_put(self, uint64_t h1, uint64_t h2, int64_t expire_ms, uint64_t mid, int64_t now_ms):
        """False when every entry of the table is alive."""
        self._live()
        cdef int rc = fq_q_dedup_put(&self.q, h1, h2, expire_ms, mid, now_ms)
        if rc == FQ_EFULL:
            return False
        if rc < 0:
            raise_status(rc, "record dedup id", self.path)
        return True

    # -- copies in progress (see "Copies" in csrc/fq_queue.h) ------------------------

    def intent(self):
        """(op, lane, offset, dst_lane, dst_end, deliveries) or None."""
        self._live()
        cdef fq_q_intent *i = &self.q.hdr.intent
        if i.op == 0:
            return None
        return (i.op, i.lane, i.offset, i.dst_lane, i.dst_end, i.deliveries)

    def set_intent(self, uint32_t op, uint32_t lane, int64_t offset, uint32_t dst_lane,
                   int64_t dst_end, uint32_t deliveries):
        self._live()
        cdef fq_q_intent *i = &self.q.hdr.intent
        i.lane = lane
        i.offset = offset
        i.dst_lane = dst_lane
        i.dst_end = dst_end
        i.deliveries = deliveries
        fq_store_release_u32(&i.op, op)          # the block is whole before it counts

    def clear_intent(self):
        self._live()
        fq_store_release_u32(&self.q.hdr.intent.op, 0)

    # -- sessions --------------------------------------------------------------------

    def session_claim(self, uint32_t idx, uint32_t pid, int64_t now_ms):
        cdef fq_q_session *s
        self._live()
        if idx >= self.q.hdr.max_sessions:
            raise InvalidArgument(f"session {idx} out of range")
        s = &self.q.sessions[idx]
        s.pid = pid
        s.claimed_ms = now_ms
        s.live = 1

    def session_release(self, uint32_t idx):
        self._live()
        if idx < self.q.hdr.max_sessions:
            self.q.sessions[idx].live = 0

    def sessions_in_flight(self):
        """{session index: messages it holds} for sessions holding any."""
        self._live()
        cdef uint32_t i
        out = {}
        for i in range(self.q.hdr.max_sessions):
            if self.q.sessions[i].inflight > 0:
                out[i] = self.q.sessions[i].inflight
        return out

    def session(self, uint32_t idx):
        """(pid, live, inflight, claimed_ms)."""
        cdef fq_q_session *s
        self._live()
        if idx >= self.q.hdr.max_sessions:
            raise InvalidArgument(f"session {idx} out of range")
        s = &self.q.sessions[idx]
        return (s.pid, s.live, s.inflight, s.claimed_ms)

    # -- limits, watermarks and the drain rate (see "Limits" in csrc/fq_queue.h) --------

    def limits(self):
        """(max_depth, max_bytes, high, low, block_timeout_us, overflow, over): lock-free."""
        self._live()
        cdef fq_q_limits *l = &self.q.hdr.limits
        return (l.max_depth, l.max_bytes, l.high, l.low, l.block_timeout_us, l.overflow,
                fq_load_acquire_u32(&l.over))

    def set_limits(self, int64_t max_depth, int64_t max_bytes, int64_t high, int64_t low,
                   int64_t block_timeout_us, uint32_t overflow):
        """Write the limits (under the lock; the caller validated them)."""
        self._live()
        cdef fq_q_limits *l = &self.q.hdr.limits
        l.max_bytes = max_bytes
        l.high = high
        l.low = low
        l.block_timeout_us = block_timeout_us
        l.overflow = overflow
        l.max_depth = max_depth

    def set_over(self, bint over):
        self._live()
        fq_store_release_u32(&self.q.hdr.limits.over, 1 if over else 0)

    cdef inline bint _bounded(self) noexcept:
        """Whether publish must count the depth: a limit or a watermark is set."""
        return self.q.hdr.limits.max_depth > 0 or self.q.hdr.limits.high > 0 \
            or self.q.hdr.limits.max_bytes > 0

    cdef inline int64_t _unsettled(self, uint32_t lane, int64_t log_end) noexcept:
        """Messages of the lane not settled: in the window (available, or WAITING on a
        delayed lane, and acquired) plus the records past speo (log_end < 0: the log is
        not open here, its tail is not counted). Lock-free reads."""
        cdef fq_q_lane *l = &self.q.lanes[lane]
        cdef int64_t speo = <int64_t>fq_load_acquire_u64(<uint64_t *>&l.speo)
        cdef int64_t n = l.available + l.acquired
        if log_end > speo:
            n += log_end - speo
        return n if n > 0 else 0

    def unsettled(self, uint32_t lane, int64_t log_end):
        """Messages of `lane` not settled (see _unsettled)."""
        self._lane(lane)
        return self._unsettled(lane, log_end)

    def available_due(self, uint32_t lane, int64_t now_ms):
        """AVAILABLE slots of a priority lane due at now_ms (under the lock)."""
        self._lane(lane)
        cdef int64_t n = fq_q_available_due(&self.q, lane, now_ms)
        if n < 0:
            raise_status(n, "count due messages", self.path)
        return n

    def settled_total(self):
        self._live()
        return fq_q_settled_total(&self.q)

    def drain_sample(self, int64_t now_ms):
        """Add a drain sample unless the last is too recent (under the lock). True: added."""
        self._live()
        return fq_q_drain_sample(&self.q, now_ms) == 1

    def drain_last_ms(self):
        self._live()
        return self.q.hdr.drain.last_ms

    def drain_rate(self, int64_t now_ms, int64_t window_ms):
        """Messages settled per second over the last window_ms, or None with no sample
        old enough (under the lock)."""
        cdef double rate = 0.0
        self._live()
        if fq_q_drain_rate(&self.q, now_ms, window_ms, &rate) < 0:
            return None
        return rate
