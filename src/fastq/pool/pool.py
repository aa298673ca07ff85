"""``WorkerPool``: worker processes for a queue, between ``min`` and ``max``, scaled by
runnable depth (docs/BACKPRESSURE.md, "Worker pools and autoscaling").

``WorkerPool(q, handler, min=1, max=8, per_worker=100)`` runs ``handler`` in spawned
child processes (:mod:`fastq.pool._child`; the spawning and the start/stop handshake are
the process-mode :class:`fastq.Worker`'s, ``fastq.tasks.worker._Child``). ``q`` is a
:class:`fastq.Queue` (each child subscribes: ``handler(message)``, acked when it returns)
or a :class:`fastq.TaskQueue` (each child runs a :class:`fastq.Worker`: ``handler(job)``).

A decision thread in the pool's process, every ``interval`` seconds:

1. replaces children that died without being asked to (a crash, a kill -9: what they
   held comes back to the queue at once through its dead-consumer detection, or when its
   lease runs out) — counted in ``stats()["replaced"]``; when they keep dying,
   replacements (and scaling up) wait an exponential backoff
   (:class:`fastq.pool.scaling.Respawn`);
2. reads the runnable depth (:func:`runnable_depth`) and asks the
   :class:`fastq.pool.scaling.Scaler` for a count (ceil(depth / per_worker) in [min, max],
   up at once, down after ``cooldown`` with ``hysteresis``);
3. starts children up to it, or retires the newest ones down to it. A retired child
   finishes the messages it runs, hands back those it has not started and exits; one
   still running after ``stop_timeout`` is killed (its messages come back: never lost,
   possibly run again — at-least-once, as for any consumer).

``on_scale(callback)`` calls ``callback(decision)`` (a
:class:`fastq.pool.scaling.ScaleDecision`) from the decision thread whenever the count
changes; ``stats()`` is a JSON-ready dict of the pool's state with psutil's CPU and RSS of
every process.

Thread-safety: ``start``, ``stop``, ``stats`` and ``on_scale`` may be called from any
thread. Children are spawned, never forked (the pool's process has threads; a fork would
copy their locks held), so the handler must be picklable: a module-level function or an
instance of a module-level class.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Mapping

import psutil

from ..errors import InvalidArgument
from ..log.config import check_int
from ..queue.codecs import CODECS
from ..queue.queue import Queue
from ..tasks.taskqueue import TaskQueue
from ..tasks.worker import _Child, pickled_for_child
from . import _child
from .scaling import Respawn, Scaler, ScaleDecision, _seconds

__all__ = ["WorkerPool", "runnable_depth"]

log = logging.getLogger("fastq.pool")
KEEP_EXITS = 16                     # stats(): the last unexpected exits kept


def runnable_depth(q: "Queue | TaskQueue") -> int:
    """What the pool scales on: ``q.signals().runnable`` — messages (jobs) a receive could
    take now, net of delayed ones and of nacks and retries not yet due; a paused task
    queue's is 0, so a paused queue scales down."""
    return q.signals().runnable


class _Slot:
    """One child of the pool and psutil's handle on it (CPU percent needs the same handle
    between two reads)."""

    __slots__ = ("child", "started", "ps")

    def __init__(self, child: _Child):
        self.child = child
        self.started = time.time()
        try:
            self.ps: psutil.Process | None = psutil.Process(child.pid)
            self.ps.cpu_percent(None)            # the first read only sets the baseline
        except psutil.Error:
            self.ps = None


def _usage(ps: psutil.Process | None) -> dict:
    if ps is None:
        return {"cpu_percent": None, "rss": None}
    try:
        with ps.oneshot():
            return {"cpu_percent": ps.cpu_percent(None), "rss": ps.memory_info().rss}
    except psutil.Error:
        return {"cpu_percent": None, "rss": None}


class WorkerPool:
    """Worker processes for ``queue`` (a :class:`fastq.Queue` or :class:`fastq.TaskQueue`)
    running ``handler``, between ``min`` and ``max`` of them: ``ceil(runnable depth /
    per_worker)``, sampled every ``interval`` s, scaled down only after ``cooldown`` s of
    low depth and ``hysteresis`` (see :mod:`fastq.pool.scaling`). ``concurrency``: handler
    threads in each process (or asyncio tasks for ``async def`` handlers);
    ``max_messages``: messages one thread takes per receive. ``stop_timeout``: how long a
    retired process may take to finish what it runs before it is killed.

    ``start()`` spawns ``min`` processes (waiting until they consume) and the decision
    thread; ``stop()`` stops both; as a context manager it starts and stops. ``queue``
    stays the caller's: the pool reads its depth and never closes it."""

    def __init__(self, queue: "Queue | TaskQueue", handler: Callable[[Any], Any] | Mapping[str, Callable], *,
                 min: int = 1, max: int = 8, per_worker: float = 100,  # noqa: A002 - the course's names
                 interval: float = 1.0, cooldown: float = 30.0, hysteresis: float = 0.2,
                 concurrency: int = 1, max_messages: int = 1, stop_timeout: float = 30.0):
        if isinstance(queue, TaskQueue):
            kind, qname, codec = "tasks", queue.name, None
            if isinstance(handler, Mapping):
                if not handler or any(not isinstance(k, str) or not callable(v) for k, v in handler.items()):
                    raise InvalidArgument(f"handler dict must map job names to callables, got {dict(handler)!r}")
                handler = dict(handler)
        elif isinstance(queue, Queue):
            kind, qname, codec = "queue", queue.name, queue.codec
            if CODECS.get(codec.name) is codec:
                codec = codec.name                  # by name: the child resolves the same one
        else:
            raise InvalidArgument(f"WorkerPool takes a fastq.Queue or a fastq.TaskQueue, got {queue!r}")
        if not callable(handler) and not isinstance(handler, dict):
            raise InvalidArgument(f"handler must be callable, got {handler!r}")
        self.scaler = Scaler(min_workers=min, max_workers=max, per_worker=per_worker, cooldown=cooldown,
                             hysteresis=hysteresis)
        self.interval = _seconds("interval", interval, 0.0, lo_open=True)
        self.stop_timeout = _seconds("stop_timeout", stop_timeout, 0.0)
        check_int("concurrency", concurrency, 1, 1024)
        check_int("max_messages", max_messages, 1, 1024)
        queue._check_open()
        spec = {"kind": kind, "path": queue.broker.path, "durability": queue.broker.durability, "name": qname,
                "codec": codec, "handler": handler, "concurrency": concurrency, "max_messages": max_messages}
        self._payload = pickled_for_child(spec, "WorkerPool", handler)
        self.queue = queue
        self.handler = handler
        self.min = min
        self.max = max
        self.per_worker = per_worker
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []
        self._retiring: list[threading.Thread] = []
        self._callbacks: list[Callable[[ScaleDecision], Any]] = []
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "new"                       # new -> running -> stopped
        self._last: ScaleDecision | None = None
        self._exits: list[dict] = []              # unexpected exits: pid, exit code, when
        self._respawn = Respawn()                 # spaces replacements when workers keep dying
        self._owed: list[tuple[int, int | None]] = []   # dead workers not replaced yet: (pid, exit code)
        self._counts = {"started": 0, "retired": 0, "replaced": 0, "killed_on_stop": 0, "start_failures": 0}
        self._self_ps = psutil.Process(os.getpid())
        self._self_ps.cpu_percent(None)

    # -- lifetime ------------------------------------------------------------------------------

    def start(self) -> "WorkerPool":
        """Spawn ``min`` processes, wait until they consume, start the decision thread.
        A handler or queue that does not load in a child raises here (nothing is left
        running)."""
        with self._lock:
            if self._state != "new":
                raise InvalidArgument(f"{self!r} was already started (a pool starts once)")
            self._state = "running"
        try:
            self._spawn(self.min)
        except BaseException:
            self._state = "stopped"
            self._retire_all()
            raise
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"fastq-pool-{self.queue.name}")
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Stop scaling and every process: each finishes the messages it runs and hands
        back the rest (a process still running after ``stop_timeout`` is killed; what it
        held comes back to the queue). Waits up to ``timeout`` s (None: until done).
        True when every process has exited. Idempotent."""
        with self._lock:
            was = self._state
            self._state = "stopped"
        self._halt.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(None if deadline is None else _left(deadline))
        if was == "running":
            self._retire_all()
        for t in list(self._retiring):
            t.join(None if deadline is None else _left(deadline))
        return not any(t.is_alive() for t in self._retiring)

    close = stop

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def workers(self) -> int:
        """Live worker processes (retiring ones are not counted)."""
        with self._lock:
            return len(self._slots)

    def pids(self) -> list[int]:
        with self._lock:
            return [s.child.pid for s in self._slots]

    def on_scale(self, callback: Callable[[ScaleDecision], Any]) -> Callable[[ScaleDecision], Any]:
        """Call ``callback(decision)`` from the decision thread whenever the number of
        processes changes (scale up, down, or a replacement). An exception it raises is
        logged (``fastq.pool``) and does not stop the pool. Returns ``callback`` (a
        decorator)."""
        if not callable(callback):
            raise InvalidArgument(f"on_scale takes a callable, got {callback!r}")
        with self._lock:
            self._callbacks.append(callback)
        return callback

    def __enter__(self) -> "WorkerPool":
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the decision loop ---------------------------------------------------------------------

    def _loop(self) -> None:
        failing = None          # the repr of the failure logged last: a repeat is not logged again
        while not self._halt.wait(self.interval):
            try:
                self._tick()
                failing = None
            except Exception as e:                 # noqa: BLE001 - one bad sample must not end scaling
                if repr(e) != failing:             # a closed queue handle must not log every interval
                    failing = repr(e)
                    log.exception("worker pool of %r: a scaling step failed (logged again only when "
                                  "the failure changes)", self.queue.name)

    def _tick(self) -> ScaleDecision:
        """One step of the decision loop: replace dead processes, sample the depth, scale."""
        dead = self._reap()
        now = time.monotonic()
        if dead:
            self._respawn.died(len(dead), now)
            self._owed.extend(dead)
        hold = self._respawn.wait(now)
        if self._owed and not hold and not self._halt.is_set():
            before = self.workers
            owed, self._owed = self._owed, []
            self._spawn(len(owed) if before + len(owed) <= self.max else self.max - before)
            self._count("replaced", self.workers - before)
            self._announce(ScaleDecision(time.time(), -1, before, self.workers,
                                         "replaced " + ", ".join(f"pid {p} (exit code {c})" for p, c in owed)))
        depth = runnable_depth(self.queue)
        workers = self.workers
        target, reason = self.scaler.decide(depth, workers, time.monotonic())
        if hold and target > workers:
            target, reason = workers, (f"respawn backoff: {self._respawn.streak} workers died in a row, "
                                       f"next start in {hold:.1f} s ({reason})")
        if self._halt.is_set():
            target = workers
        if target > workers:
            self._spawn(target - workers)
        elif target < workers:
            with self._lock:
                going, self._slots = self._slots[target:], self._slots[:target]
            for s in reversed(going):             # the newest first
                self._retire(s)
            self._count("retired", len(going))
        d = ScaleDecision(time.time(), depth, workers, self.workers, reason)
        if d.target != workers:
            self._announce(d)
        else:
            self._last = d
        return d

    def _announce(self, d: ScaleDecision) -> None:
        self._last = d
        log.info("worker pool of %r: %d -> %d workers (%s)", self.queue.name, d.workers, d.target, d.reason)
        with self._lock:
            callbacks = list(self._callbacks)
        for cb in callbacks:
            try:
                cb(d)
            except Exception:                      # noqa: BLE001 - reported, never swallowed silently
                log.exception("worker pool of %r: on_scale callback %r raised", self.queue.name, cb)

    def _reap(self) -> list[tuple[int, int | None]]:
        """Children that exited unasked: removed, their exits recorded."""
        with self._lock:
            dead = [s for s in self._slots if not s.child.alive()]
            self._slots = [s for s in self._slots if s not in dead]
        out = []
        for s in dead:
            pid = s.child.pid
            s.child.stop(0)                        # joins and closes the pipe
            out.append((pid, s.child.exitcode))
            self._exits = (self._exits + [{"pid": pid, "exit_code": s.child.exitcode, "at": time.time()}])[-KEEP_EXITS:]
            log.warning("worker pool of %r: worker pid %d exited unasked (exit code %s); replacing it",
                        self.queue.name, pid, s.child.exitcode)
        return out

    def _spawn(self, n: int) -> None:
        """Start ``n`` children at once, then wait for each to consume."""
        new = [_Child(self._payload, self.queue.name, target=_child.main, what="WorkerPool") for _ in range(n)]
        failed: BaseException | None = None
        ok = []
        for c in new:
            try:
                c.ready()
                ok.append(c)
            except BaseException as e:             # noqa: BLE001 - every child is waited for, then raised
                failed = failed or e
                c.stop(0)
        with self._lock:
            stopping = self._state != "running"
            if not stopping:
                self._slots.extend(_Slot(c) for c in ok)
        self._count("started", len(ok))
        if stopping:                               # stop() came while these started
            for c in ok:
                self._retire(_Slot(c))
        if failed is not None:
            self._count("start_failures", len(new) - len(ok))
            self._respawn.died(len(new) - len(ok), time.monotonic())   # a child that cannot start backs off too
            raise failed

    def _retire(self, s: _Slot) -> None:
        t = threading.Thread(target=self._stop_child, args=(s.child,), daemon=True,
                             name=f"fastq-pool-{self.queue.name}-retire-{s.child.pid}")
        with self._lock:
            self._retiring = [r for r in self._retiring if r.is_alive()] + [t]
        t.start()

    def _stop_child(self, child: _Child) -> None:
        if not child.stop(self.stop_timeout):
            self._count("killed_on_stop")
            log.warning("worker pool of %r: pid %d did not stop within %g s and was killed (what it held "
                        "comes back to the queue)", self.queue.name, child.pid, self.stop_timeout)

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._counts[what] += n

    def _retire_all(self) -> None:
        with self._lock:
            going, self._slots = self._slots, []
        for s in going:
            self._retire(s)

    # -- what it looks like ----------------------------------------------------------------------

    def stats(self) -> dict:
        """The pool now, as a JSON-ready dict: ``workers`` (live processes), ``min``,
        ``max``, ``per_worker``, ``running``, ``processes`` (per worker: ``pid``,
        ``cpu_percent`` since the previous ``stats()`` call, ``rss`` bytes, ``uptime`` s),
        ``pool`` (the same for this process), ``last_decision`` (a
        :class:`fastq.pool.scaling.ScaleDecision` as a dict, or None), ``started``,
        ``retired``, ``replaced``, ``killed_on_stop``, ``start_failures`` and ``exits``
        (the last unexpected exits: pid, exit code, time)."""
        with self._lock:
            slots = list(self._slots)
            retiring = sum(t.is_alive() for t in self._retiring)
            counts = dict(self._counts)
        now = time.time()
        procs = [{"pid": s.child.pid, **_usage(s.ps), "uptime": round(now - s.started, 3)} for s in slots]
        last = self._last
        return {
            "workers": len(slots), "retiring": retiring, "min": self.min, "max": self.max,
            "per_worker": self.per_worker, "running": self.running, "processes": procs,
            "pool": {"pid": os.getpid(), **_usage(self._self_ps)},
            "last_decision": None if last is None else last._asdict(),
            **counts, "exits": list(self._exits),
        }

    def __repr__(self) -> str:
        return (f"<fastq.WorkerPool of {self.queue.name!r} {self._state} workers={len(self._slots)} "
                f"[{self.min}, {self.max}] per_worker={self.per_worker:g}>")


def _left(deadline: float) -> float:
    t = deadline - time.monotonic()
    return t if t > 0 else 0.0

