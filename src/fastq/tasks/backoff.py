"""``Backoff``: how long a failed job waits before its next attempt (BullMQ's ``backoff``).

A backoff is stored with the job (as ``{"type", "delay", "cap", "jitter"}`` in its
options), so whichever worker process runs the retry computes the same policy.
``Backoff.exponential`` is :func:`fastq.queue.subscription.exponential_backoff`.
"""
from __future__ import annotations

import math
import random

from ..errors import InvalidArgument
from ..queue.subscription import exponential_backoff

__all__ = ["Backoff"]

TYPES = ("fixed", "exponential")


def _seconds(what: str, v, lo: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo:
        raise InvalidArgument(f"{what} must be a finite number of seconds >= {lo}, got {v!r}")
    return float(v)


class Backoff:
    """A retry delay policy: ``Backoff.fixed(5)`` waits 5 s before every retry;
    ``Backoff.exponential(1.0, cap=3600, jitter=0.5)`` waits ``min(cap, 1 * 2**(n-1))`` s
    before retry n (1, 2, 4, ...), less up to half of it at random. Immutable; equal
    policies compare equal."""

    __slots__ = ("type", "delay", "cap", "jitter", "_fn")

    def __init__(self, type: str, delay: float, cap: float | None = None, jitter: float = 0.0):  # noqa: A002
        if type not in TYPES:
            raise InvalidArgument(f"backoff type {type!r}: expected one of {TYPES}")
        self.type = type
        self.delay = _seconds("backoff delay", delay)
        self.cap = None if cap is None else _seconds("backoff cap", cap)
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0.0 <= jitter <= 1.0:
            raise InvalidArgument(f"backoff jitter must be a fraction in [0, 1], got {jitter!r}")
        self.jitter = float(jitter)
        if type == "exponential":
            self._fn = exponential_backoff(self.delay, math.inf if self.cap is None else self.cap,
                                           random.Random(), self.jitter)
        else:
            self._fn = None

    @classmethod
    def fixed(cls, seconds: float, *, jitter: float = 0.0) -> "Backoff":
        """The same delay before every retry (less up to ``jitter`` of it at random)."""
        return cls("fixed", seconds, None, jitter)

    @classmethod
    def exponential(cls, base: float, *, cap: float | None = None, jitter: float = 0.0) -> "Backoff":
        """``min(cap, base * 2**(n-1))`` before retry n, less up to ``jitter`` of it at random
        (``jitter=1.0`` is AWS's full jitter)."""
        return cls("exponential", base, cap, jitter)

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

    def __call__(self, attempt: int) -> float:
        """Seconds to wait before the retry that follows failed attempt ``attempt`` (1-based)."""
        if self._fn is not None:
            return self._fn(attempt)
        if not self.jitter:
            return self.delay
        return random.uniform(self.delay * (1.0 - self.jitter), self.delay)

    def to_dict(self) -> dict:
        return {"type": self.type, "delay": self.delay, "cap": self.cap, "jitter": self.jitter}

    def __eq__(self, other) -> bool:
        return isinstance(other, Backoff) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.to_dict().values()))

    def __repr__(self) -> str:
        extra = (f", cap={self.cap}" if self.cap is not None else "") + (f", jitter={self.jitter}" if self.jitter else "")
        return f"Backoff.{self.type}({self.delay}{extra})"
