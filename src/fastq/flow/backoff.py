"""``Backoff``: how long to wait before the next attempt — for queue nacks
(``Queue.subscribe(backoff=...)``), task retries (``TaskQueue.add(backoff=...)``) and
client-side retries (:func:`fastq.retry`).

Policies, after the AWS Architecture Blog's "Exponential Backoff and Jitter" (Marc
Brooker), with ``d(n) = min(cap, base * 2**(n-1))`` for attempt ``n`` (1-based):

========================  =====================================================
``fixed(s)``              ``s`` every time
``exponential(b)``        ``d(n)`` (no jitter)
``jitter="full"``         uniform in ``[0, d(n)]``       — AWS "Full Jitter"
``jitter="equal"``        uniform in ``[d(n)/2, d(n)]``  — AWS "Equal Jitter"
``jitter=f`` (0..1)       uniform in ``[d(n)*(1-f), d(n)]`` (BullMQ's jitter fraction;
                          ``1.0`` is full, ``0.5`` is equal jitter)
``jitter="decorrelated"`` ``s(n) = min(cap, uniform(base, 3*s(n-1)))``, ``s(0) = base`` —
                          AWS "Decorrelated Jitter": always in ``[base, cap]``
========================  =====================================================

Stored form: a task's backoff lives in its job options as the dict
``{"type": "fixed"|"exponential", "delay": s, "cap": s|None, "jitter": f|"decorrelated"}``
(:meth:`Backoff.to_dict`). ``"full"`` and ``"equal"`` are stored as the fractions 1.0 and
0.5 — the same distributions — so every stored policy but decorrelated stays readable by a
fastq that only knew fractions; a dict written by one is read here unchanged.

Decorrelated jitter is a chain: each delay depends on the one before. :meth:`Backoff.delays`
yields the real chain (what :func:`fastq.retry` uses); ``backoff(n)``, which a worker in
another process calls with only the attempt number, replays a fresh chain of ``n`` steps —
the same distribution for the n-th delay, without the state.

Thread-safety: a Backoff is immutable; its random draws use its own ``random.Random``
(``rng=`` seeds it for tests), which is safe to share between threads.
"""
from __future__ import annotations

import math
import random
from typing import Callable, Iterator

from ..errors import InvalidArgument

__all__ = ["Backoff", "TYPES", "JITTERS", "exponential_backoff"]

TYPES = ("fixed", "exponential")
JITTERS = ("none", "full", "equal", "decorrelated")   # named modes; a fraction in [0, 1] also works
_NAMED_FRACTIONS = {"none": 0.0, "full": 1.0, "equal": 0.5}
_MAX_DOUBLINGS = 60          # 2**60 * any sane base is past every cap; keeps floats finite
_MAX_CHAIN = 64              # a decorrelated chain replayed longer than this is at its cap


def _seconds(what: str, v, lo: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo:
        raise InvalidArgument(f"{what} must be a finite number of seconds >= {lo}, got {v!r}")
    return float(v)


def _jitter(v) -> "float | str":
    """A jitter option as stored: a fraction in [0, 1], or ``"decorrelated"``."""
    if isinstance(v, str):
        if v == "decorrelated":
            return v
        if v in _NAMED_FRACTIONS:
            return _NAMED_FRACTIONS[v]
        raise InvalidArgument(f"backoff jitter {v!r}: expected one of {JITTERS} or a fraction in [0, 1]")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise InvalidArgument(f"backoff jitter must be one of {JITTERS} or a fraction in [0, 1], got {v!r}")
    return float(v)


class Backoff:
    """A retry delay policy: ``Backoff.fixed(5)`` waits 5 s before every retry;
    ``Backoff.exponential(1.0, cap=60, jitter="full")`` waits a random time in
    ``[0, min(60, 2**(n-1))]`` before retry n. See the module docstring for every policy.
    Call it with the attempt number (1-based) for one delay, or iterate :meth:`delays`.
    Immutable; equal policies compare equal (the random generator is not part of it)."""

    __slots__ = ("type", "delay", "cap", "jitter", "_rng")

    def __init__(self, type: str, delay: float, cap: float | None = None,  # noqa: A002
                 jitter: "float | str" = 0.0, *, rng: random.Random | None = None):
        if type not in TYPES:
            raise InvalidArgument(f"backoff type {type!r}: expected one of {TYPES}")
        self.type = type
        self.delay = _seconds("backoff delay", delay)
        self.cap = None if cap is None else _seconds("backoff cap", cap)
        self.jitter = _jitter(jitter)
        if self.jitter == "decorrelated" and type != "exponential":
            raise InvalidArgument("decorrelated jitter is an exponential policy: use Backoff.exponential")
        if self.cap is not None and self.cap < self.delay and self.jitter == "decorrelated":
            raise InvalidArgument(f"decorrelated jitter needs cap >= base, got base={self.delay} cap={self.cap}")
        self._rng = rng if rng is not None else random.Random()

    @classmethod
    def fixed(cls, seconds: float, *, jitter: "float | str" = 0.0,
              rng: random.Random | None = None) -> "Backoff":
        """The same delay before every retry (less up to ``jitter`` of it at random)."""
        return cls("fixed", seconds, None, jitter, rng=rng)

    @classmethod
    def exponential(cls, base: float, *, cap: float | None = None, jitter: "float | str" = 0.0,
                    rng: random.Random | None = None) -> "Backoff":
        """``min(cap, base * 2**(n-1))`` before retry n, jittered: ``jitter`` is ``"full"``,
        ``"equal"``, ``"decorrelated"``, ``"none"`` or a fraction in [0, 1] (the share of the
        delay that may be taken off at random; 1.0 is full jitter)."""
        return cls("exponential", base, cap, jitter, rng=rng)

    @classmethod
    def coerce(cls, v) -> "Backoff | None":
        """None, a Backoff, seconds (fixed, as BullMQ's ``backoff: 1000``) or the stored dict."""
        if v is None or isinstance(v, Backoff):
            return v
        if isinstance(v, dict):
            unknown = set(v) - {"type", "delay", "cap", "jitter"}
            if unknown or "type" not in v or "delay" not in v:
                raise InvalidArgument(f"backoff dict needs 'type' and 'delay' (and may have 'cap', "
                                      f"'jitter'), got {v!r}")
            return cls(v["type"], v["delay"], v.get("cap"), v.get("jitter", 0.0))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return cls.fixed(v)
        raise InvalidArgument(f"backoff must be None, seconds, a fastq.Backoff or a dict, got {v!r}")

    @property
    def _top(self) -> float:
        return math.inf if self.cap is None else self.cap

    def _ceiling(self, attempt: int) -> float:
        """The un-jittered delay before the retry after attempt ``attempt``."""
        if self.type == "fixed":
            return self.delay
        return min(self._top, self.delay * (2.0 ** max(0, min(attempt - 1, _MAX_DOUBLINGS))))

    def _decorrelated_step(self, prev: float) -> float:
        return min(self._top, self._rng.uniform(self.delay, prev * 3.0))

    def __call__(self, attempt: int) -> float:
        """Seconds to wait before the retry that follows failed attempt ``attempt`` (1-based)."""
        if self.jitter == "decorrelated":
            s = self.delay
            for _ in range(max(1, min(attempt, _MAX_CHAIN))):
                s = self._decorrelated_step(s)
            return s
        d = self._ceiling(attempt)
        return d if not self.jitter else self._rng.uniform(d * (1.0 - self.jitter), d)

    def delays(self) -> Iterator[float]:
        """The delays before retries 1, 2, 3, ... — forever; a decorrelated policy's are one
        real chain (each drawn from the one before)."""
        if self.jitter == "decorrelated":
            s = self.delay
            while True:
                s = self._decorrelated_step(s)
                yield s
        n = 1
        while True:
            yield self(n)
            n += 1

    def bounds(self, attempt: int) -> tuple[float, float]:
        """``(lo, hi)``: every delay ``self(attempt)`` can return lies in this range."""
        if self.jitter == "decorrelated":
            return self.delay, min(self._top, self.delay * 3.0 ** max(1, min(attempt, _MAX_CHAIN)))
        d = self._ceiling(attempt)
        return d * (1.0 - self.jitter), d

    def to_dict(self) -> dict:
        """The stored form (module docstring)."""
        return {"type": self.type, "delay": self.delay, "cap": self.cap, "jitter": self.jitter}

    def __eq__(self, other) -> bool:
        return isinstance(other, Backoff) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.to_dict().values()))

    def __repr__(self) -> str:
        j = self.jitter
        jr = repr(j) if isinstance(j, str) else {1.0: "'full'", 0.5: "'equal'"}.get(j, str(j))
        extra = (f", cap={self.cap}" if self.cap is not None else "") + (f", jitter={jr}" if j else "")
        return f"Backoff.{self.type}({self.delay}{extra})"


def exponential_backoff(base: float = 0.1, cap: float = 60.0, rng: random.Random | None = None,
                        jitter: "float | str" = 1.0) -> Callable[[int], float]:
    """The default nack delay of ``Queue.subscribe``: delivery count n -> seconds,
    ``min(cap, base * 2**(n-1))`` with full jitter (``jitter=1.0``). Jitter spreads the
    retries of messages that failed together (a dependency down) so they do not all come
    back at the same moment. The same as ``Backoff.exponential(base, cap=cap, jitter=jitter)``."""
    return Backoff.exponential(base, cap=cap, jitter=jitter, rng=rng)
