"""The scaling rule of a :class:`fastq.WorkerPool`, as pure policy (no processes, no clock
of its own), so it can be tested alone and reused by an external autoscaler.

The course's rule: ``desired = ceil(runnable_depth / per_worker)``, clamped to
``[min, max]``. Two things keep a pool from flapping around a threshold:

- **cooldown** — scaling *up* happens at the first sample that asks for it (a spike is
  served at once); scaling *down* only after every sample for ``cooldown`` seconds asked
  for fewer workers, and then to the largest count any of those samples asked for
  (Kubernetes' HPA scale-down stabilization window works the same way);
- **hysteresis** — a sample asks for fewer workers only when the depth is below what the
  smaller count serves with a margin: the down rule divides by
  ``per_worker * (1 - hysteresis)``. With ``per_worker=100`` and ``hysteresis=0.2``, three
  workers start at a depth of 201 but go back to two only below 160: a depth wandering
  between 160 and 200 changes nothing.

A worker that dies unasked is replaced at once — but a handler that kills its process
every time would have the pool respawn processes as fast as they start: :class:`Respawn`
spaces replacements by an exponential backoff once deaths follow each other (the
second within ``window`` seconds of the first waits ``base`` s, then 2×, 4×, ... up to
``cap``), and forgets the streak after ``window`` s without a death.

Thread-safety: a :class:`Scaler` or :class:`Respawn` belongs to one thread (the pool's
decision loop).
"""
from __future__ import annotations

import math
from typing import NamedTuple

from ..errors import InvalidArgument
from ..log.config import check_int
from ..flow.backoff import Backoff

__all__ = ["desired_workers", "Scaler", "ScaleDecision", "Respawn", "check_policy"]


def _seconds(name: str, v, lo: float, hi: float = math.inf, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
            not (v > lo if lo_open else v >= lo) or v > hi:
        bound = f"> {lo}" if lo_open else f">= {lo}"
        raise InvalidArgument(f"{name} must be a number {bound}" + (f" and <= {hi}" if hi != math.inf else "")
                              + f", got {v!r}")
    return float(v)


def check_policy(min_workers, max_workers, per_worker) -> None:
    """InvalidArgument unless ``0 <= min <= max`` (max >= 1) and ``per_worker > 0``."""
    check_int("min", min_workers, 0, 1024)
    check_int("max", max_workers, 1, 1024)
    if min_workers > max_workers:
        raise InvalidArgument(f"min={min_workers} is greater than max={max_workers}")
    if isinstance(per_worker, bool) or not isinstance(per_worker, (int, float)) or \
            not math.isfinite(per_worker) or per_worker <= 0:
        raise InvalidArgument(f"per_worker must be a number > 0 (runnable messages one worker serves), "
                              f"got {per_worker!r}")


def desired_workers(depth: int, *, per_worker: float = 100, min: int = 1, max: int = 8) -> int:  # noqa: A002
    """``ceil(depth / per_worker)`` clamped to ``[min, max]`` — the course's rule, without
    cooldown or hysteresis (what an external autoscaler would compute from a depth)."""
    check_policy(min, max, per_worker)
    return _clamp(math.ceil(depth / per_worker) if depth > 0 else 0, min, max)


def _clamp(n: int, lo: int, hi: int) -> int:
    return lo if n < lo else hi if n > hi else n


class ScaleDecision(NamedTuple):
    """One sample of the decision loop. ``at``: wall-clock time (``time.time()``);
    ``depth``: the runnable depth read (-1 for the replacement of dead workers); ``workers``: live workers before; ``target``:
    workers after; ``reason``: why, in words."""

    at: float
    depth: int
    workers: int
    target: int
    reason: str


class Scaler:
    """Turns depth samples into worker counts (see the module docstring). ``decide(depth,
    workers, now)`` returns ``(target, reason)``; ``now`` is a monotonic time in seconds."""

    def __init__(self, *, min_workers: int, max_workers: int, per_worker: float, cooldown: float,
                 hysteresis: float):
        check_policy(min_workers, max_workers, per_worker)
        self.min = min_workers
        self.max = max_workers
        self.per_worker = per_worker
        self.cooldown = _seconds("cooldown", cooldown, 0.0)
        self.hysteresis = _seconds("hysteresis", hysteresis, 0.0, 0.9)
        self._low_since: float | None = None     # when samples started asking for fewer workers
        self._low_peak = 0                       # the most any of those samples asked for

    def up(self, depth: int) -> int:
        return _clamp(math.ceil(depth / self.per_worker) if depth > 0 else 0, self.min, self.max)

    def down(self, depth: int) -> int:
        per = self.per_worker * (1.0 - self.hysteresis)
        return _clamp(math.ceil(depth / per) if depth > 0 else 0, self.min, self.max)

    def decide(self, depth: int, workers: int, now: float) -> tuple[int, str]:
        rule = f"ceil({depth}/{self.per_worker:g}) in [{self.min}, {self.max}]"
        want = self.up(depth)
        if want > workers:
            self._low_since = None
            return want, f"scale up: depth {depth} -> {rule} = {want}"
        low = self.down(depth)
        if low >= workers:
            self._low_since = None
            return workers, f"steady: depth {depth} -> {rule} = {want}, {workers} running"
        if self._low_since is None:
            self._low_since, self._low_peak = now, low
        else:
            self._low_peak = low if low > self._low_peak else self._low_peak
        waited = now - self._low_since
        if waited < self.cooldown:
            return workers, (f"cooldown: depth {depth} asks for {low} (hysteresis {self.hysteresis:g}) "
                             f"for {waited:.1f} of {self.cooldown:g} s")
        target = self._low_peak
        self._low_since = None
        return target, f"scale down: depth low for {self.cooldown:g} s, at most {target} needed"


class Respawn:
    """When to replace dead workers (see the module docstring): ``died(n, now)`` records
    ``n`` unasked deaths at monotonic time ``now``; ``wait(now)`` is how many seconds the
    replacements must still wait (0.0: now)."""

    def __init__(self, *, base: float = 0.5, cap: float = 30.0, window: float = 60.0):
        self.backoff = Backoff.exponential(base, cap=cap)
        self.window = window
        self.streak = 0                          # deaths in a row, each within window of the last
        self._last: float | None = None
        self._until = 0.0

    def died(self, n: int, now: float) -> None:
        if self._last is None or now - self._last > self.window:
            self.streak = 0
        first = self.streak == 0
        self.streak += n
        self._last = now
        self._until = now if first and n == 1 else now + self.backoff(self.streak - 1)

    def wait(self, now: float) -> float:
        return self._until - now if self._until > now else 0.0
