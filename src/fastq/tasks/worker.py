"""``Worker``: runs a task queue's jobs in threads (docs/TASKS.md).

One run of a job, in a worker thread:

1. receive the job's message from ``<queue>.tasks`` (a lease; the lease keeper thread
   extends it while the job runs, so long jobs are not redelivered);
2. admission (``TaskQueue._begin``, :mod:`fastq.tasks.admin`): while the queue is paused
   the message is held (its lease kept) until it resumes; a message whose job was
   removed, replaced (another ``gen``) or already completed or failed — its worker was
   killed between recording the end and acking — is acked and not run;
3. a scheduler's tick job adds the scheduler's next tick first
   (:func:`fastq.tasks.scheduler.on_tick`; a removed, replaced or skipped tick is acked
   unrun); record ``active`` (attempts_made = the message's delivery count plus its ``a0``:
   a run that a killed worker never finished counts, as BullMQ's stalled counter), call
   the handler;
4. returned: encode the result (a result the codec cannot encode fails the job, with
   that reason), record ``completed``, ack; raised (or ran past ``timeout``): record the
   stack; with attempts left, record ``delayed``/``waiting`` and nack with the backoff's
   delay (the queue keeps the error), else record ``failed`` and ack;
5. apply ``remove_on_complete`` / ``remove_on_fail`` (tombstones in the job-state topic).

The state is always recorded before the message is settled: a kill between the two
redelivers a job whose state says where it got to (step 2). States after ``active`` are
recorded only while the job still exists (``TaskQueue._put_if_current``): a job removed
by ``obliterate(force=True)`` while running is acked and stays gone. While the queue is
paused, workers receive nothing.

Thread-safety: ``close()`` may be called from any thread. A Worker is not inherited by a
forked child.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any, Callable, Mapping, Union

import msgspec

from ..errors import Closed, CodecError, FastqError, InvalidArgument, LeaseLost, UnknownJob
from ..log.config import check_int
from .backoff import Backoff
from .admin import DROP, RUN
from .job import Job, now_ms
from .scheduler import on_tick
from .taskqueue import TaskQueue

__all__ = ["Worker", "MODES"]

MODES = ("thread",)                 # "asyncio" and "process" are not built yet (issue 16)
TICK_S = 0.01                        # how often the lease keeper checks timeouts
log = logging.getLogger("fastq.tasks")
_dec = msgspec.json.Decoder()

Handler = Union[Callable[[Job], Any], Mapping[str, Callable[[Job], Any]]]


class _Permanent(Exception):
    """A failure that no retry can fix (no handler for the name, a result the codec
    cannot encode): the job fails now."""


def _active(msg: dict, prev: dict | None, dc: int) -> dict:
    """The ``active`` state of the job of message ``msg``, delivery ``dc`` (its ``a0`` added),
    carrying on from its state ``prev`` (None: a first run, nothing to carry)."""
    s = dict(prev) if prev is not None else {"id": msg["id"], "name": msg["name"], "progress": 0,
                                             "added_ms": msg.get("added_ms")}
    s.update(data=msg.get("data"), opts=msg["opts"], state="active", attempts_made=dc + msg.get("a0", 0),
             processed_ms=now_ms(), gen=msg.get("gen", 0))
    s.pop("due_ms", None)
    s.pop("finished_ms", None)
    return s


class _Running:
    __slots__ = ("job", "deadline")

    def __init__(self, job: Job | None, deadline: float | None):
        self.job = job
        self.deadline = deadline


class Worker:
    """Runs the jobs of ``queue`` with ``handler(job)`` (or a dict ``{job name: handler}``)
    in ``concurrency`` threads, from construction until :meth:`close`. ``completed``,
    ``failed`` and ``retried`` count what this worker did. ``batch``: messages taken per
    receive (more is faster for short jobs; each waits its turn in its thread)."""

    def __init__(self, queue: TaskQueue, handler: Handler, *, concurrency: int = 1, mode: str = "thread",
                 batch: int | None = None):
        if not isinstance(queue, TaskQueue):
            raise InvalidArgument(f"Worker takes a fastq.TaskQueue, got {queue!r}")
        if isinstance(handler, Mapping):
            bad = {k: v for k, v in handler.items() if not isinstance(k, str) or not callable(v)}
            if bad or not handler:
                raise InvalidArgument(f"handler dict must map job names to callables, got {dict(handler)!r}")
            self._handlers: Mapping | None = dict(handler)
            self._handler = None
        elif callable(handler):
            self._handlers, self._handler = None, handler
        else:
            raise InvalidArgument(f"handler must be callable or a dict of job name -> callable, got {handler!r}")
        if mode not in MODES:
            raise InvalidArgument(f"mode={mode!r}: this version runs {MODES} workers "
                                  "(asyncio and process workers are not built yet)")
        check_int("concurrency", concurrency, 1, 1024)
        batch = (1 if concurrency > 1 else 32) if batch is None else batch
        check_int("batch", batch, 1, 1024)
        queue._check_open()
        self.queue = queue
        self.mode = mode
        self.concurrency = concurrency
        self.completed = 0
        self.failed = 0
        self.retried = 0
        self._batch = batch
        self._q = queue.queue
        self._vt = float(self._q.config["visibility_timeout"])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._held: dict = {}                      # message -> _Running (lease kept by the keeper)
        self._threads = [threading.Thread(target=self._run, name=f"fastq-worker-{queue.name}-{i}", daemon=True)
                         for i in range(concurrency)]
        self._keeper = threading.Thread(target=self._keep, name=f"fastq-worker-{queue.name}-keeper", daemon=True)
        for t in self._threads:
            t.start()
        self._keeper.start()

    # -- threads ---------------------------------------------------------------------------

    def _run(self) -> None:
        q = self._q
        ctl = self.queue._ctl
        while not self._stop.is_set():
            try:
                if ctl.paused():                  # take nothing while paused (any process's pause)
                    ctl.wait_change(0.1)
                    continue
                msgs = q.receive(self._batch, wait=0.1)
            except Closed:
                return
            with self._lock:
                for m in msgs:
                    self._held[m] = _Running(None, None)
            for i, m in enumerate(msgs):
                try:
                    if self._stop.is_set():
                        try:
                            m.nack()              # not started: hand it back at once
                        except (LeaseLost, Closed):
                            pass
                        continue
                    self._process(m)
                except (LeaseLost, Closed):
                    pass
                except Exception:               # storage trouble: the message comes back
                    log.exception("worker of %r could not run message %s", self.queue.name, m.id)
                finally:
                    with self._lock:
                        self._held.pop(m, None)

    def _keep(self) -> None:
        """Extend the leases of held messages; cancel jobs past their timeout."""
        extend_every = max(self._vt / 3.0, TICK_S)
        last = time.monotonic()
        while not (self._stop.is_set() and not self._held and not any(t.is_alive() for t in self._threads)):
            time.sleep(TICK_S)
            now = time.monotonic()
            with self._lock:
                held = list(self._held.items())
            for m, r in held:
                if r.deadline is not None and now >= r.deadline and r.job is not None:
                    r.job._cancel.set()
            if now - last >= extend_every:
                last = now
                for m, _ in held:
                    try:
                        m.extend(self._vt)
                    except (LeaseLost, Closed):
                        pass
                    except FastqError:
                        log.exception("worker of %r could not extend message %s", self.queue.name, m.id)

    # -- one run ---------------------------------------------------------------------------

    def _process(self, m) -> None:
        tq = self.queue
        try:
            msg = _dec.decode(m.body)
            jid, name, opts = msg["id"], msg["name"], msg["opts"]
        except (msgspec.DecodeError, KeyError, TypeError) as e:
            m.reject(f"not a fastq job message: {e}")
            return
        tick = None                                  # a scheduler's tick: add the next one first
        if opts.get("repeat") is not None:
            tick = lambda prev: on_tick(tq, jid, opts["repeat"], prev)      # noqa: E731
        while True:
            verdict, s, ticket = tq._begin(msg, m.delivery_count, _active, tick)   # records "active" on RUN
            if verdict == RUN:
                break
            if verdict == DROP:                      # removed, replaced, finished or a dropped tick: never run it
                m.ack()
                return
            while tq._ctl.paused():                  # paused: hold it (the keeper keeps its lease)
                if self._stop.is_set():
                    m.nack()
                    return
                tq._ctl.wait_change(0.1)
        job = Job(tq, jid, s, own=True)
        job._write = lambda what, v: self._write(s, what, v, ticket)
        timeout = opts.get("timeout")
        deadline = None
        if timeout is not None:
            job._cancel = threading.Event()
            deadline = time.monotonic() + timeout
        with self._lock:
            self._held[m] = _Running(job, deadline)
        try:
            fn = self._handler if self._handlers is None else self._handlers.get(name)
            if fn is None:
                raise _Permanent(f"no handler for job name {name!r} (this worker handles "
                                 f"{sorted(self._handlers)})")
            rv = fn(job)
            if deadline is not None and (job.cancelled or time.monotonic() >= deadline):
                raise JobTimedOut(timeout)
            try:
                raw = tq._codec.encode(rv)
            except CodecError as e:
                raise _Permanent(f"the handler's result cannot be stored: {e}") from None
        except Exception as e:
            timed_out = deadline is not None and (job.cancelled or time.monotonic() >= deadline)
            self._failed(m, s, e, timed_out, timeout, ticket)
            return
        s.update(state="completed", return_value=msgspec.Raw(raw), failed_reason=None, finished_ms=now_ms())
        mine = tq._put_if_current(s, ticket)
        s["return_value"] = rv
        m.ack()
        if not mine:                                 # removed while it ran (obliterate, force)
            return
        with self._lock:
            self.completed += 1
        tq._retain(s, "remove_on_complete", "completed")

    def _failed(self, m, s: dict, e: Exception, timed_out: bool, timeout, ticket: list) -> None:
        tq = self.queue
        opts = s["opts"]
        if timed_out:
            reason = f"timed out after {timeout} s"
        elif isinstance(e, _Permanent):
            reason = str(e)
        else:
            reason = f"{type(e).__name__}: {e}"
        stack = reason if isinstance(e, _Permanent) else "".join(traceback.format_exception(e)).rstrip()
        s["stacktrace"] = list(s.get("stacktrace") or []) + [stack]
        s["failed_reason"] = reason
        dc = s["attempts_made"]
        if not isinstance(e, _Permanent) and dc < opts.get("attempts", 1):
            b = Backoff.coerce(opts.get("backoff"))
            delay = b(dc) if b is not None else 0.0
            s.update(state="delayed" if delay else "waiting")
            if delay:
                s["due_ms"] = now_ms() + int(delay * 1000)
            if not tq._put_if_current(s, ticket):
                m.ack()
                return
            m.nack(delay, error=reason)
            with self._lock:
                self.retried += 1
            return
        s.update(state="failed", finished_ms=now_ms())
        mine = tq._put_if_current(s, ticket)
        m.ack()
        if not mine:
            return
        with self._lock:
            self.failed += 1
        tq._retain(s, "remove_on_fail", "failed")

    def _write(self, s: dict, what: str, v, ticket: list) -> None:
        new = dict(s)
        if what == "progress":
            new["progress"] = v
        else:
            new["logs"] = list(s.get("logs") or []) + [v]
        if not self.queue._put_if_current(new, ticket):  # CodecError here reaches the handler, s unchanged
            raise UnknownJob(f"job {s['id']!r} was removed from task queue {self.queue.name!r} while it ran")
        s.update(new)

    # -- lifetime ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking jobs, let the running ones finish (messages received but not started
        are handed back at once), and wait up to ``timeout`` s. True when all stopped."""
        self._stop.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._keeper.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.running

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<fastq.Worker of {self.queue.name!r} {self.mode} x{self.concurrency} "
                f"completed={self.completed} failed={self.failed}>")


class JobTimedOut(Exception):
    """The handler returned or raised after the job's timeout: the attempt failed."""
