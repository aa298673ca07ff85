"""``Gate``: is a queue overloaded, and for how long? — the admission decision behind the
HTTP middleware, kept apart from HTTP so any server, worker or script can use it.

A gate samples its queue at most once per ``interval`` seconds (a cached decision in
between: a request never waits on the queue but for the one that takes a due sample), and
trips with hysteresis: **overloaded** once the depth reaches ``high``, and stays so until
the depth falls below ``low`` (a queue hovering at the limit does not flap between 200 and
503); also overloaded while the oldest unsettled message is older than ``max_age`` seconds
(consumers lag), when set.

What a queue is, to a gate (duck typing; see :func:`read_sample`): anything with
``signals()`` (a snapshot with ``ready``/``depth``, ``oldest_age``, ``drain_rate``), or
``depth()`` returning a :class:`fastq.QueueDepth` (or anything with ``.ready``, or an int),
or ``counts()`` returning a TaskQueue's count dict, or a zero-argument callable returning a
depth. Async faces (``fastq.AsyncQueue``, ``fastq.AsyncTaskQueue``) are unwrapped to their
sync queue: the gate reads from a thread.

Retry-After comes from the measured drain rate (:class:`DrainRate`: the net fall of the
depth per second over a sliding window of samples, unless the queue's own ``signals()``
reports one): the seconds until the depth is back under ``low``, clamped to
``[min_retry_after, max_retry_after]``; ``default_retry_after`` while nothing drains.

Thread-safety: :meth:`Gate.check` and :meth:`Gate.refresh` may be called from any number
of threads; one takes a due sample (a non-blocking claim), the others use the last
decision. Asyncio code calls :meth:`Gate.claim` on the loop and :meth:`Gate.sample_claimed`
in a thread (``fastq.Queue.depth`` takes a cross-process lock and reads the log: it can
block, so it never runs on an event loop).
"""
from __future__ import annotations

import collections
import inspect
import logging
import math
import threading
import time
from typing import Any, Callable, NamedTuple

from ..errors import InvalidArgument

__all__ = ["Gate", "Verdict", "Sample", "DrainRate", "read_sample"]

log = logging.getLogger("fastq.admission")

TASK_BACKLOG = ("waiting", "prioritized", "paused")   # a TaskQueue's jobs that wait for a worker


class Sample(NamedTuple):
    """One reading of a queue: ``depth`` (ready to run), ``oldest_age`` (seconds, None when
    unknown), ``drain_rate`` (messages/s the queue reports itself, None when it does not)."""

    depth: int
    oldest_age: float | None = None
    drain_rate: float | None = None


class Verdict(NamedTuple):
    """Why a gate refuses: ``reason`` is ``"depth"`` (over the high watermark, not yet under
    the low one) or ``"lag"`` (oldest message older than ``max_age``); ``retry_after``
    seconds; the reading it was decided on."""

    reason: str
    retry_after: float
    depth: int
    oldest_age: float | None
    drain_rate: float | None


def _unwrap(queue: Any) -> Any:
    """An async face's sync queue (``AsyncTaskQueue.sync``, ``AsyncQueue.queue``)."""
    for attr in ("signals", "depth", "counts"):
        fn = getattr(queue, attr, None)
        if fn is not None and inspect.iscoroutinefunction(fn):
            inner = getattr(queue, "sync", None) or getattr(queue, "queue", None)
            if inner is None:
                raise InvalidArgument(f"queue {queue!r}: {attr}() is a coroutine function and there is "
                                      f"no sync queue (.sync or .queue) to read from a thread")
            return inner
    return queue


def _depth_of(v: Any, what: str) -> int:
    d = getattr(v, "ready", v)
    if isinstance(d, bool) or not isinstance(d, int):
        raise InvalidArgument(f"{what} must give an int depth or an object with .ready, got {v!r}")
    return d


def read_sample(queue: Any) -> Sample:
    """Read one :class:`Sample` from ``queue`` (module docstring: what a queue may be).
    Blocking: it calls the queue."""
    signals = getattr(queue, "signals", None)
    if callable(signals):
        s = signals()
        depth = getattr(s, "ready", None)
        if depth is None:
            depth = getattr(s, "depth")
        return Sample(_depth_of(depth, "signals()"), getattr(s, "oldest_age", None), getattr(s, "drain_rate", None))
    depth = getattr(queue, "depth", None)
    if callable(depth):
        d = depth()
        return Sample(_depth_of(d, "depth()"), getattr(d, "oldest_age", None))
    counts = getattr(queue, "counts", None)
    if callable(counts):
        c = counts()
        return Sample(sum(int(c.get(k, 0)) for k in TASK_BACKLOG))
    if callable(queue):
        return Sample(_depth_of(queue(), "queue()"))
    raise InvalidArgument(f"queue {queue!r}: expected an object with signals(), depth() or counts(), "
                          f"or a callable returning a depth")


class DrainRate:
    """The net drain rate of a queue, from depth samples: how fast the depth fell (messages
    per second) between the oldest and newest sample of the last ``window`` seconds; None
    while it did not fall or the samples span less than ``min_span`` seconds. Not
    thread-safe: its :class:`Gate` calls it under its claim."""

    def __init__(self, window: float = 10.0, min_span: float = 0.2):
        self.window = window
        self.min_span = min_span
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, t: float, depth: int) -> None:
        s = self._samples
        s.append((t, depth))
        while len(s) > 2 and t - s[1][0] >= self.window:
            s.popleft()

    def rate(self) -> float | None:
        s = self._samples
        if len(s) < 2:
            return None
        (t0, d0), (t1, d1) = s[0], s[-1]
        if t1 - t0 < self.min_span or d1 >= d0:
            return None
        return (d0 - d1) / (t1 - t0)


def _positive(what: str, v, *, allow_none: bool = False, zero: bool = False) -> Any:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
            not (v >= 0 if zero else v > 0):
        raise InvalidArgument(f"{what} must be a finite number {'>=' if zero else '>'} 0"
                              f"{' or None' if allow_none else ''}, got {v!r}")
    return v


class Gate:
    """Admission decision for one queue (module docstring). ``check()`` returns None to
    admit or a :class:`Verdict` to refuse.

    ``high``/``low``: depth watermarks (``low`` defaults to 80 % of ``high``; None for
    ``high`` leaves only ``max_age``). ``max_age``: seconds; refuse while the oldest
    unsettled message is older. ``interval``: seconds between samples (cache).
    ``window``: the drain-rate window. A read that fails (a closed queue) is logged and the
    last decision kept (admit when there is none yet): a broken read neither takes the
    server down nor flips the answer."""

    def __init__(self, queue: Any, *, high: int | None = None, low: int | None = None,
                 max_age: float | None = None, interval: float = 0.1, window: float = 10.0,
                 min_retry_after: float = 1.0, max_retry_after: float = 60.0,
                 default_retry_after: float = 5.0, clock: Callable[[], float] = time.monotonic):
        if high is None and max_age is None:
            raise InvalidArgument("a gate needs high= (a depth watermark) or max_age= (seconds), or both")
        if high is not None and (isinstance(high, bool) or not isinstance(high, int) or high < 1):
            raise InvalidArgument(f"high must be an int >= 1, got {high!r}")
        if low is None and high is not None:
            low = high * 4 // 5
        if high is not None and (isinstance(low, bool) or not isinstance(low, int) or not 0 <= low <= high):
            raise InvalidArgument(f"low must be an int in [0, high={high}], got {low!r}")
        self.queue = _unwrap(queue)
        self.high, self.low = high, low
        self.max_age = _positive("max_age", max_age, allow_none=True)
        self.interval = _positive("interval", interval, zero=True)
        self.min_retry_after = _positive("min_retry_after", min_retry_after, zero=True)
        self.max_retry_after = _positive("max_retry_after", max_retry_after)
        if self.min_retry_after > self.max_retry_after:
            raise InvalidArgument(f"min_retry_after {min_retry_after} > max_retry_after {max_retry_after}")
        self.default_retry_after = _positive("default_retry_after", default_retry_after, zero=True)
        self._drain = DrainRate(_positive("window", window))
        self._clock = clock
        self._claim = threading.Lock()      # held by the one caller taking a sample
        self._due = -math.inf               # clock time of the next sample
        self._over = False                  # the depth hysteresis: tripped at high, cleared under low
        self._verdict: Verdict | None = None
        self.last: Sample | None = None     # the last reading (for metrics and tests)

    # -- sampling ---------------------------------------------------------------------------

    def stale(self) -> bool:
        """Is a sample due?"""
        return self._clock() >= self._due

    def claim(self) -> bool:
        """Take the right to sample now: True (then call :meth:`sample_claimed`, which
        releases it) when a sample is due and nobody else is taking one. Never blocks."""
        if not self.stale() or not self._claim.acquire(blocking=False):
            return False
        if not self.stale():                # another caller sampled between the two checks
            self._claim.release()
            return False
        return True

    def sample_claimed(self) -> None:
        """Read the queue and decide (blocking: call it from a thread in asyncio code);
        releases the claim."""
        try:
            try:
                s = read_sample(self.queue)
            except Exception as e:          # noqa: BLE001 -- keep serving, loudly
                log.warning("admission gate: reading %r failed (%s: %s); keeping the last decision",
                            self.queue, type(e).__name__, e)
            else:
                self._decide(s, self._clock())
            self._due = self._clock() + self.interval
        finally:
            self._claim.release()

    def refresh(self) -> None:
        """Sample now if due and nobody else is (blocking)."""
        if self._clock() >= self._due and self.claim():
            self.sample_claimed()

    def check(self) -> Verdict | None:
        """Refresh if due (blocking), then the decision: None to admit, or a Verdict."""
        self.refresh()
        return self._verdict

    def verdict(self) -> Verdict | None:
        """The last decision, without touching the queue."""
        return self._verdict

    # -- deciding ---------------------------------------------------------------------------

    def _decide(self, s: Sample, now: float) -> None:
        self.last = s
        self._drain.add(now, s.depth)
        rate = s.drain_rate if s.drain_rate is not None and s.drain_rate > 0 else self._drain.rate()
        if self.high is not None:
            if s.depth >= self.high:
                self._over = True
            elif s.depth < self.low:
                self._over = False
        if self._over:
            ra = self._eta(s.depth - self.low + 1, rate)
            self._verdict = Verdict("depth", ra, s.depth, s.oldest_age, rate)
        elif self.max_age is not None and s.oldest_age is not None and s.oldest_age > self.max_age:
            # the messages older than max_age, if arrivals were even over oldest_age seconds
            behind = s.depth * (s.oldest_age - self.max_age) / s.oldest_age
            self._verdict = Verdict("lag", self._eta(behind, rate), s.depth, s.oldest_age, rate)
        else:
            self._verdict = None

    def _eta(self, backlog: float, rate: float | None) -> float:
        """Seconds to work off ``backlog`` messages at ``rate``, clamped."""
        t = self.default_retry_after if not rate else backlog / rate
        return min(self.max_retry_after, max(self.min_retry_after, t))
