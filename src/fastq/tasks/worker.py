"""``Worker``: runs a task queue's jobs in threads (docs/TASKS.md).

One run of a job, in a worker thread:

1. receive the job's message from ``<queue>.tasks`` (a lease; the lease keeper thread
   extends it while the job runs, so long jobs are not redelivered);
2. a redelivered message (delivery 2+) whose job is already completed or failed — its
   worker was killed between recording the end and acking — is acked and not run again;
3. a scheduler's tick job adds the scheduler's next tick first
   (:func:`fastq.tasks.scheduler.on_tick`; a removed, replaced or skipped tick is acked
   unrun); record ``active`` (attempts_made = the message's delivery count: a run that a killed
   worker never finished counts, as BullMQ's stalled counter), call the handler;
4. returned: encode the result (a result the codec cannot encode fails the job, with
   that reason), record ``completed``, ack; raised (or ran past ``timeout``): record the
   stack; with attempts left, record ``delayed``/``waiting`` and nack with the backoff's
   delay (the queue keeps the error), else record ``failed`` and ack;
5. apply ``remove_on_complete`` / ``remove_on_fail`` (tombstones in the job-state topic).

The state is always recorded before the message is settled: a kill between the two
redelivers a job whose state says where it got to (step 2).

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

from ..errors import Closed, CodecError, FastqError, InvalidArgument, LeaseLost
from ..log.config import check_int
from .backoff import Backoff
from .job import FINISHED, Job, now_ms
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
        while not self._stop.is_set():
            try:
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
        dc = m.delivery_count
        prev = None
        if dc > 1:                                   # a retry, or a killed worker's job
            prev = tq._index.get(jid)
            if prev is not None and prev["state"] in FINISHED:
                m.ack()                              # finished before its worker died: never again
                return
        if opts.get("repeat") is not None and not on_tick(tq, jid, opts["repeat"], prev):
            m.ack()                                  # a removed, replaced or skipped scheduler tick
            return
        s = dict(prev) if prev is not None else {"id": jid, "name": name, "progress": 0,
                                                 "added_ms": msg.get("added_ms")}
        s.update(data=msg.get("data"), opts=opts, state="active", attempts_made=dc, processed_ms=now_ms())
        s.pop("due_ms", None)
        s.pop("finished_ms", None)
        tq._put(s)
        job = Job(tq, jid, s, own=True)
        job._write = lambda what, v: self._write(s, what, v)
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
            self._failed(m, s, e, timed_out, timeout)
            return
        s.update(state="completed", return_value=msgspec.Raw(raw), failed_reason=None, finished_ms=now_ms())
        tq._put(s)
        s["return_value"] = rv
        m.ack()
        with self._lock:
            self.completed += 1
        self._retain(s, "remove_on_complete", "completed")

    def _failed(self, m, s: dict, e: Exception, timed_out: bool, timeout) -> None:
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
        dc = m.delivery_count
        if not isinstance(e, _Permanent) and dc < opts.get("attempts", 1):
            b = Backoff.coerce(opts.get("backoff"))
            delay = b(dc) if b is not None else 0.0
            s.update(state="delayed" if delay else "waiting")
            if delay:
                s["due_ms"] = now_ms() + int(delay * 1000)
            tq._put(s)
            m.nack(delay, error=reason)
            with self._lock:
                self.retried += 1
            return
        s.update(state="failed", finished_ms=now_ms())
        tq._put(s)
        m.ack()
        with self._lock:
            self.failed += 1
        self._retain(s, "remove_on_fail", "failed")

    def _write(self, s: dict, what: str, v) -> None:
        new = dict(s)
        if what == "progress":
            new["progress"] = v
        else:
            new["logs"] = list(s.get("logs") or []) + [v]
        self.queue._put(new)                   # CodecError here reaches the handler, s unchanged
        s.update(new)

    def _retain(self, s: dict, option: str, state: str) -> None:
        keep = s["opts"].get(option, False)
        if keep is False:
            return
        tq = self.queue
        if keep is True:
            tq._remove_ids([s["id"]])
            return
        ids = tq._index.finished_ids(state)
        if len(ids) > keep:
            tq._remove_ids(ids[: len(ids) - keep])

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
