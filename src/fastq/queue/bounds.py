"""Bounded queues, watermarks and depth signals of a :class:`fastq.Queue` (docs/BACKPRESSURE.md).

Where it is kept: the limits (``max_depth``, ``max_bytes``, ``overflow``, ``block_timeout``, the
watermarks and their ``over`` state) and a ring of drain samples live in the header of the
queue's ``queue.state`` (csrc/fq_queue.h "Limits", "Drain rate"; docs/FORMAT.md), so
every process that opens the queue obeys the same limits at once and measures the same
drain rate. A file made before they existed has zeros there: unbounded.

The depth a limit compares is the number of unsettled messages: ready, delayed and in
flight, across processes — derived from state that exists anyway (the lane logs' ends and
each lane's window counters), read without the lock. Nothing new is counted per publish,
so a kill -9 anywhere leaves nothing to repair. A publish checks the depth, then appends:
publishers racing in different processes may together overshoot ``max_depth`` by at most
the messages they are publishing at that instant (one each for ``publish``).

Overflow policies (the vocabulary of memory topics, minus ``spill``):

* ``"reject"`` (default): :class:`fastq.QueueFull` (a ``queue.Full``) with ``retry_after``;
  nothing was stored.
* ``"block"``: wait (sleep-polling, 0.5 ms doubling to 20 ms: acks wake nobody) up to
  ``block_timeout`` seconds (None: forever), then ``QueueFull``; nothing was stored.
* ``"drop-oldest"``: make room by dropping the oldest ready messages of the lowest
  priority first — dead-lettered when the queue has a ``dead_letter`` queue, else discarded
  and counted in ``depth().dead`` (and this handle's ``dropped``). In-flight and delayed
  messages are never dropped: when dropping the ready ones is not enough, ``QueueFull``.

``publish_many`` is all or nothing: it is admitted only when the whole batch fits (a batch
larger than ``max_depth`` is :class:`fastq.InvalidArgument`).

retry_after = messages over the limit / drain rate (messages settled per second over the
last ~5 s, from the shared samples), clamped to [0.01, 30] s; 30 s when nothing drains
(rate 0 or not measured yet): a client told to come back later must be told a number.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from .._core import _storage
from ..errors import FastqError, InvalidArgument, QueueFull
from ..log.config import check_int

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["QueueLimits", "QueueSignals", "SignalWatcher", "LIMIT_OPTIONS", "OVERFLOW_POLICIES",
           "retry_after_estimate"]

log = logging.getLogger("fastq.queue")

OVERFLOW_POLICIES = ("reject", "block", "drop-oldest")   # csrc/fq_queue.h FQ_Q_OVERFLOW_* order
LIMIT_OPTIONS = ("max_depth", "max_bytes", "overflow", "block_timeout", "high_watermark", "low_watermark")
RETRY_AFTER_MIN = 0.01
RETRY_AFTER_MAX = 30.0
DRAIN_WINDOW_MS = 5000
SCAN_INTERVAL = 0.1          # seconds between a bounded publisher's looks for lanes others opened
DEFAULT_BLOCK_TIMEOUT = 10.0
_KEEP: Any = object()


class QueueLimits(NamedTuple):
    """The limits of a queue (shared by every process): None means no limit."""

    max_depth: int | None
    overflow: str
    block_timeout: float | None
    high_watermark: int | None
    low_watermark: int | None
    max_bytes: int | None = None


class QueueSignals(NamedTuple):
    """One snapshot for admission control, worker pools and autoscalers.

    ``runnable``: messages a receive could take now (never delivered, or nacked and due),
    net of delayed ones and of nacks not yet due (no queue-level rate limit exists to net
    out); ``delayed``: published with a delay not yet come; ``in_flight``: leased, not
    settled; ``lag``: stored and not leased (``depth - in_flight``); ``drain_rate``:
    messages settled per second over the last ~5 s, across processes (0.0 before anything
    is measured); ``oldest_age``: seconds since the oldest unsettled message was published;
    ``over_high_watermark``: the watermark state (with hysteresis); ``depth``: unsettled
    messages (what ``max_depth`` bounds); ``max_depth``: the limit or None; ``retry_after``:
    seconds until the queue is likely back under its high watermark (when over it) or has
    room (when full), else None; ``dead``: dead-lettered, rejected or dropped so far;
    ``bytes``: estimated bytes the unsettled messages take in the lane logs (unsettled x
    the mean stored record size, framing included); ``max_bytes``: the limit or None;
    ``ready``: ``depth().ready`` (deliverable now or after a nack's delay), what
    fastq.admission's gate reads first."""

    runnable: int
    delayed: int
    in_flight: int
    lag: int
    drain_rate: float
    oldest_age: float
    over_high_watermark: bool
    depth: int
    max_depth: int | None
    retry_after: float | None
    dead: int
    bytes: int = 0
    max_bytes: int | None = None
    ready: int = 0


def retry_after_estimate(excess: int, drain_rate: float | None) -> float:
    """Seconds until ``excess`` messages have drained at ``drain_rate`` messages/s, clamped
    to [0.01, 30]; 30 when nothing drains (rate 0 or unknown)."""
    if not drain_rate or drain_rate <= 0:
        return RETRY_AFTER_MAX
    return min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, excess / drain_rate))


def check_limits(max_depth, overflow, block_timeout, high, low, max_bytes=None) -> None:
    """InvalidArgument for a bad limit (None: no limit)."""
    check_int("max_depth", max_depth, 1, 1 << 62, allow_none=True)
    check_int("max_bytes", max_bytes, 1, 1 << 62, allow_none=True)
    if overflow not in OVERFLOW_POLICIES:
        raise InvalidArgument(f"overflow={overflow!r}: expected one of {list(OVERFLOW_POLICIES)}")
    if block_timeout is not None and (isinstance(block_timeout, bool) or not isinstance(block_timeout, (int, float))
                                      or not 0 <= block_timeout < 1e9):
        raise InvalidArgument(f"block_timeout must be None or seconds in [0, 1e9), got {block_timeout!r}")
    check_int("high_watermark", high, 1, 1 << 62, allow_none=True)
    check_int("low_watermark", low, 0, 1 << 62, allow_none=True)
    if high is None and low is not None:
        raise InvalidArgument(f"low_watermark={low} without a high_watermark")
    if high is not None and low is not None and low > high:
        raise InvalidArgument(f"low_watermark={low} is above high_watermark={high}: the state turns on at "
                              "high and off at low, so low <= high")


class BoundsMixin:
    """The bounded-queue half of :class:`fastq.Queue` (it mixes this in): limits,
    admission of publishes, drop-oldest, watermarks and signals. Thread-safe as the Queue;
    the limits and watermark state are per queue (shared by processes), the callbacks and
    ``dropped`` per handle."""

    dropped: int

    def _bounds_init(self) -> None:
        self.dropped = 0                   # messages this handle dropped (overflow="drop-oldest")
        self._watermark_callbacks: list[Callable[[bool, QueueSignals], Any]] = []
        self._next_bound_scan = 0.0
        self._seen_over = False
        self._admitted = threading.local()  # .on: this thread's publishes were admitted already
        # weakref.WeakMethod(h) each: h(message, why) settles a message drop-oldest took and
        # returns True, or False to pass it on (a task queue fails its job: fastq.tasks)
        self._drop_hooks: list = []

    # -- limits ------------------------------------------------------------------------

    @property
    def limits(self: "Queue") -> QueueLimits:
        """The queue's limits (shared by every process that opens it)."""
        self._check_open()
        md, mb, high, low, bt, ov, _ = self._state.limits()
        return QueueLimits(md or None, OVERFLOW_POLICIES[ov] if ov < len(OVERFLOW_POLICIES) else "reject",
                           None if bt < 0 else (DEFAULT_BLOCK_TIMEOUT if bt == 0 else bt / 1e6 if bt > 1 else 0.0),
                           high or None, (low if high else None), (mb if mb > 0 else None))

    def set_limits(self: "Queue", *, max_depth=_KEEP, overflow=_KEEP, block_timeout=_KEEP,
                   high_watermark=_KEEP, low_watermark=_KEEP, max_bytes=_KEEP) -> QueueLimits:
        """Change the queue's limits for every process at once (left out: unchanged; None:
        no limit). ``max_depth``: unsettled messages allowed; ``max_bytes``: estimated
        bytes they may take in the lane logs (a publish is admitted while they fit);
        ``overflow``: "reject",
        "block" or "drop-oldest" (module docstring); ``block_timeout``: seconds a blocked
        publish waits (None: forever; default 10); ``high_watermark``/``low_watermark``:
        the ``over_high_watermark`` state turns on at high and off at low (low defaults to
        80% of high). Returns the new limits."""
        cur = self.limits
        md = cur.max_depth if max_depth is _KEEP else max_depth
        mb = cur.max_bytes if max_bytes is _KEEP else max_bytes
        ov = cur.overflow if overflow is _KEEP else overflow
        bt = cur.block_timeout if block_timeout is _KEEP else block_timeout
        high = cur.high_watermark if high_watermark is _KEEP else high_watermark
        if low_watermark is _KEEP:
            low = cur.low_watermark if high_watermark is _KEEP else None
        else:
            low = low_watermark
        if high is not None and low is None and isinstance(high, int) and not isinstance(high, bool):
            low = high * 8 // 10
        check_limits(md, ov, bt, high, low, mb)
        self._lock()
        try:
            # block_timeout_us: -1 forever, 0 never set (a zero timeout is kept as 1 us)
            self._state.set_limits(md or 0, mb or 0, high or 0, low or 0, -1 if bt is None else (int(bt * 1e6) or 1),
                                   OVERFLOW_POLICIES.index(ov))
            if not high:
                self._state.set_over(False)
        finally:
            self._unlock()
        self._note_depth(self._depth_fast())
        return self.limits

    def watermarks(self: "Queue", high: int | None, low: int | None = None) -> QueueLimits:
        """Set the high/low watermarks (None: none; low defaults to 80% of high)."""
        return self.set_limits(high_watermark=high, low_watermark=low)

    # -- admission (the Python path of a bounded publish) ----------------------------

    def _bounded_py(self: "Queue") -> bool:
        """Whether a Python-path publish must go through _admit."""
        if getattr(self._admitted, "on", False):
            return False
        lim = self._state.limits()
        return bool(lim[0] or lim[1] or lim[2]) or bool(lim[6]) != self._seen_over

    def _may_block(self: "Queue") -> bool:
        """A publish may wait (overflow "block" with a limit): never inline on an event loop."""
        lim = self._state.limits()
        return bool(lim[0] or lim[1]) and lim[5] == 1

    def _admit(self: "Queue", n: int) -> None:
        """Before storing n messages: let them in, wait, drop, or raise QueueFull (nothing
        stored then). Also moves the watermark state and runs its callbacks."""
        mono = time.monotonic()
        if mono >= self._next_bound_scan:
            self._next_bound_scan = mono + SCAN_INTERVAL
            self._scan_lanes()            # lanes other processes opened count from now on
            self._sync_bound_logs()
        d, excess = self._excess(n)
        self._note_depth(d + n, n)
        if not excess:
            return
        md, mb, _, _, bt, ov, _ = self._state.limits()
        if md and n > md:
            raise InvalidArgument(f"queue {self.name!r}: a batch of {n} messages can never fit max_depth={md}")
        if ov == 1:
            deadline = None if bt < 0 else mono + (bt / 1e6 if bt else DEFAULT_BLOCK_TIMEOUT)
            pause = 0.0005
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                time.sleep(pause if deadline is None else min(pause, deadline - now))
                pause = min(pause * 2, 0.02)
                self._check_open()
                d, excess = self._excess(n)
                if not excess:
                    self._note_depth(d + n, n)
                    return
        elif ov == 2:
            # other publishers may take the room made before this one's append: drop again,
            # until it fits or nothing ready is left to drop
            for _ in range(1000):
                if not self._drop_oldest(excess):
                    break
                d, excess = self._excess(n)
                if not excess:
                    return
        raise self._full(excess, d + n, OVERFLOW_POLICIES[ov] if ov < 3 else "reject")

    def _excess(self: "Queue", n: int) -> tuple[int, int]:
        """(depth, messages over the limits if n more were stored: 0 when they fit),
        counted under the lock: every counter writer holds it, so no message is seen
        half-way between two counters (only publishers' appends race). Over max_bytes:
        the estimated bytes plus n mean-sized records exceed it."""
        md, mb = self._state.limits()[:2]
        self._lock()
        try:
            d, nb, rec = self._bytes_fast()
        finally:
            self._unlock()
        over = d + n - md if md else 0
        if mb and rec > 0 and nb + n * rec > mb:
            over = max(over, math.ceil((nb + n * rec - mb) / rec))
        return d, max(0, over)

    def _full(self: "Queue", excess: int, total: int, policy: str) -> QueueFull:
        rate = self._drain_rate()
        ra = retry_after_estimate(excess, rate)
        lim = self.limits
        what = {"reject": "", "block": " after waiting block_timeout",
                "drop-oldest": " and dropping every ready message was not enough (the rest are in flight "
                               "or delayed)"}[policy]
        return QueueFull(f"queue {self.name!r} is full: {total} messages would exceed max_depth={lim.max_depth} "
                         f"/ max_bytes={lim.max_bytes} by {excess}"
                         f"{what}; overflow={policy!r}; retry after ~{ra:.3g} s (drain rate "
                         f"{(rate or 0.0):.1f}/s); nothing was stored", retry_after=ra)

    def _drop_oldest(self: "Queue", k: int) -> int:
        """Drop up to k ready messages, lowest priority first, oldest first (never one in
        flight or delayed): dead-lettered, or discarded when there is no dead_letter queue.
        Each is leased first, so a process killed half way leaves it to be delivered again."""
        if self._session < 0:
            with self._mutex:
                if self._session < 0:
                    self._claim_session()
        st = self._state
        dropped = 0
        for lane in sorted(self._lanes, key=lambda ln: (ln.prio, ln.partition)):
            if lane.prio == _storage.QUEUE_DELAYED or dropped >= k:   # delayed ones are never dropped
                continue
            lg = lane.log
            if lg is None:
                continue
            while dropped < k:
                self._lock()
                try:
                    off = st.acquire(lane.index, lg.end_offset, self._session, _now_ms(), self._lease_ms)
                    deliveries = st.last_deliveries
                finally:
                    self._unlock()
                if off < 0:
                    break
                rec = lg.get(off)
                m = self._message(lane, off, deliveries, rec)
                del rec
                dropped += 1
                if m is None:                 # past max_deliveries: dead-lettered there
                    continue
                try:
                    self._drop(m, f"dropped: queue {self.name!r} full (overflow='drop-oldest')")
                except BaseException:
                    try:
                        m.nack()                # a full dead-letter queue: it stays here
                    except FastqError:
                        pass
                    raise
        self.dropped += dropped
        return dropped

    def _drop(self: "Queue", m, why: str) -> None:
        """Settle message ``m`` that drop-oldest took (leased): the first drop hook that
        takes it (a task queue fails the message's job), else the dead-letter queue, or
        nothing without one (the message is discarded and counted)."""
        for ref in list(self._drop_hooks):
            hook = ref()
            if hook is not None and hook(m, why):
                return
        self._dead_letter(m, why)

    # -- watermarks -------------------------------------------------------------------

    def _note_depth(self: "Queue", d: int, extra: int = 0) -> None:
        """Move the shared watermark state for depth d (hysteresis; ``extra``: messages
        being published, counted in d), then run this handle's callbacks if the state it
        last saw changed. Turning the state off takes a fresh count over every lane: a
        lane another process opened and this one has not would make d too small."""
        st = self._state
        _, _, high, low, _, _, over = st.limits()
        if high and over and d <= low:
            self._scan_lanes()
            d = self._depth_fast() + extra
        if high and ((not over and d >= high) or (over and d <= low)):
            self._lock()
            try:
                _, _, high, low, _, _, over = st.limits()
                if high and not over and d >= high:
                    st.set_over(True)
                elif high and over and d <= low:
                    st.set_over(False)
            finally:
                self._unlock()
        now_over = bool(st.limits()[6])
        if now_over != self._seen_over:
            self._seen_over = now_over
            if self._watermark_callbacks:
                sig = self.signals()
                for cb in list(self._watermark_callbacks):
                    try:
                        cb(now_over, sig)
                    except Exception:
                        log.exception("queue %r: watermark callback %r raised", self.name, cb)

    @property
    def over_high_watermark(self: "Queue") -> bool:
        """The watermark state: True from the moment the depth reached the high watermark
        until it fell to the low one (any process moves it; this reads the depth now)."""
        self._check_open()
        self._scan_lanes()
        self._note_depth(self._depth_fast())
        return bool(self._state.limits()[6])

    def on_watermark(self: "Queue", callback: Callable[[bool, QueueSignals], Any]) -> Callable[[], None]:
        """Call ``callback(over, signals)`` in this process whenever it sees the watermark
        state change (on a publish, ``signals()``, ``over_high_watermark``, or an
        ``on_signals`` watcher's tick; a callback that raises is logged). Returns a
        function that removes it."""
        if not callable(callback):
            raise InvalidArgument(f"callback must be callable, got {type(callback).__name__}")
        self._watermark_callbacks.append(callback)

        def remove() -> None:
            try:
                self._watermark_callbacks.remove(callback)
            except ValueError:
                pass
        return remove

    # -- signals ----------------------------------------------------------------------

    def _drain_rate(self: "Queue") -> float:
        st = self._state
        now = _now_ms()
        self._lock()
        try:
            st.drain_sample(now)
            rate = st.drain_rate(now, DRAIN_WINDOW_MS)
        finally:
            self._unlock()
        return rate or 0.0

    def _drain_tick(self: "Queue", now_ms: int) -> None:
        """Consumers' housekeeping: add a drain sample when the last is old enough."""
        if now_ms - self._state.drain_last_ms() >= 250:
            self._lock()
            try:
                self._state.drain_sample(now_ms)
            finally:
                self._unlock()

    def signals(self: "Queue") -> QueueSignals:
        """Depth signals in one call (see :class:`QueueSignals`): a snapshot across
        processes. Also moves the watermark state."""
        c = self._count(due=True)
        depth = c.ready + c.delayed + c.in_flight
        self._note_depth(depth)
        rate = self._drain_rate()
        md, mb, high, low, _, _, over = self._state.limits()
        _, excess = self._excess(1)
        _, nb, _ = self._bytes_fast()
        ra = None
        if high and over:
            ra = retry_after_estimate(max(1, depth - low), rate)
        elif excess:
            ra = retry_after_estimate(excess, rate)
        return QueueSignals(c.runnable, c.delayed, c.in_flight, depth - c.in_flight, rate, c.oldest_age,
                            bool(over), depth, md or None, ra, c.dead, nb, mb or None, c.ready)

    def on_signals(self: "Queue", callback: Callable[[QueueSignals], Any], interval: float = 1.0) -> "SignalWatcher":
        """Call ``callback(self.signals())`` every ``interval`` seconds from a daemon thread
        until the returned :class:`SignalWatcher` is stopped (``stop()``, or use it as a
        context manager) or the queue is closed."""
        return SignalWatcher(self, callback, interval)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SignalWatcher:
    """A background thread calling ``callback(queue.signals())`` every ``interval`` s
    (made by :meth:`Queue.on_signals`). A callback that raises is logged and the watcher
    goes on; it ends when stopped or when the queue is closed. ``stop()`` is idempotent
    and joins the thread (unless called from the callback itself)."""

    def __init__(self, queue, callback: Callable[[QueueSignals], Any], interval: float = 1.0):
        if not callable(callback):
            raise InvalidArgument(f"callback must be callable, got {type(callback).__name__}")
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0.001 <= interval <= 86400:
            raise InvalidArgument(f"interval must be seconds in [0.001, 86400], got {interval!r}")
        self.queue = queue
        self.callback = callback
        self.interval = float(interval)
        self.errors = 0                      # callback exceptions so far (each logged)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fastq-signals-{queue.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.queue.closed:
                return
            try:
                sig = self.queue.signals()
            except FastqError:
                if self.queue.closed:
                    return
                raise
            try:
                self.callback(sig)
            except Exception:
                self.errors += 1
                log.exception("queue %r: signals callback %r raised", self.queue.name, self.callback)
            self._stop.wait(self.interval)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> "SignalWatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
