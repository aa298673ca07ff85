"""``Worker``: runs a task queue's jobs in threads, on an asyncio event loop, or in child
processes (docs/TASKS.md, "Worker modes").

One run of a job:

1. receive the job's message from ``<queue>.tasks`` (a lease; the keeper thread extends
   it while the job runs, so long jobs are not redelivered);
2. admission (``TaskQueue._begin``, :mod:`fastq.tasks.admin`): while the queue is paused
   the message is held (its lease kept) until it resumes; a message whose job was
   removed, replaced (another ``gen``) or already completed or failed — its worker was
   killed between recording the end and acking — is acked and not run; a scheduler's
   tick job adds the scheduler's next tick first (:func:`fastq.tasks.scheduler.on_tick`;
   a removed, replaced or skipped tick is acked unrun); a redelivered one whose job is
   still ``active`` was *stalled*: the worker running it died. The job's ``stalled_count``
   grows (a ``stalled`` event); past the worker's ``max_stalled_count`` the job fails for
   good instead of running again;
3. record ``active`` (attempts_made = the message's delivery count plus its ``a0``: every
   run started, including stalled ones), call the handler;
4. returned: encode the result (a result the codec cannot encode fails the job, with
   that reason), record ``completed``, ack; raised (or ran past ``timeout``): record the
   stack; with attempts left (runs that ended, ``attempts_made - stalled_count``, below
   ``attempts``), record ``delayed``/``waiting`` and nack with the backoff's delay (the
   queue keeps the error), else record ``failed`` and ack;
5. apply ``remove_on_complete`` / ``remove_on_fail`` (tombstones in the job-state topic).

The state is always recorded before the message is settled: a kill between the two
redelivers a job whose state says where it got to (step 2). Each state record is followed
by its events (:mod:`fastq.tasks.events`). States after ``active`` are recorded only
while the job still exists (``TaskQueue._put_if_current``): a job removed by
``obliterate(force=True)`` while running is acked and stays gone. While the queue is
paused, workers receive nothing.

Modes: ``"thread"`` — ``concurrency`` threads call the handler; a timeout sets the job's
cancellation token. ``"asyncio"`` — ``async def`` handlers as tasks of one event loop (the
worker's own, in a thread, or the caller's: ``await worker.run()``), at most
``concurrency`` at once; the bookkeeping runs in the worker's threads, never on the
loop; a timeout cancels the task. ``"process"`` — ``concurrency`` spawned child processes
(:mod:`fastq.tasks._child`) each run one job at a time, fed by a thread of this process
that does the bookkeeping; a timeout kills the child and starts another.

Thread-safety: ``close()`` may be called from any thread. A Worker is not inherited by a
forked child.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import multiprocessing
import os
import pickle
import random
import threading
import time
import traceback
from typing import Any, Callable, Mapping, Union

import msgspec

from ..broker._aio import SLICE
from ..errors import Closed, CodecError, FastqError, InvalidArgument, LeaseLost, ProducerFenced, UnknownJob
from ..flow.limiter import as_limiter, group_key_function
from ..log.config import check_int
from . import _child
from ._fastrun import ENABLED as FAST_ENABLED, FastRun
from .backoff import Backoff
from .admin import DROP, FAILED, RUN
from .exactly_once import MODES as EOS_MODES
from .exactly_once import TaskRunner
from .job import FINISHED, Job, now_ms
from .scheduler import on_tick
from .taskqueue import TaskQueue

__all__ = ["Worker", "MODES", "GUARANTEES"]

MODES = ("thread", "asyncio", "process")
GUARANTEES = ("at-least-once", "exactly-once")
TICK_S = 0.01                        # how often the keeper checks timeouts
REPAIR_EVERY_S = 30.0                # the keeper's TaskQueue.repair(): jobs whose add died before the message
CHILD_START_S = 120.0                # a spawned child must load the handler within this
CHILD_STOP_S = 5.0                   # close(): a child that does not stop by then is killed
log = logging.getLogger("fastq.tasks")
_dec = msgspec.json.Decoder()
_SPAWN = multiprocessing.get_context("spawn")

Handler = Union[Callable[[Job], Any], Mapping[str, Callable[[Job], Any]]]


class _Permanent(Exception):
    """A failure that no retry can fix (no handler for the name, a result the codec
    cannot encode): the job fails now."""


class JobTimedOut(Exception):
    """The handler returned or raised after the job's timeout: the attempt failed."""


class _ChildFailed(Exception):
    """The handler raised in a child process: its reason and stack, as text."""

    def __init__(self, reason: str, stack: str):
        super().__init__(reason)
        self.reason = reason
        self.stack = stack


class _EosThread:
    """An exactly-once worker thread's slot (naming its transactional id) and producer."""

    def __init__(self, eos: TaskRunner):
        self.eos = eos
        self.slot = eos.claim_slot()
        self.tp = None

    def begin(self):
        """``(producer, transaction)``: a transaction begun by this thread's producer
        (opened again when another worker finished our id's last transaction)."""
        for _ in range(2):
            if self.tp is None or self.tp._closed:
                self.tp = self.eos.producer(self.slot)
            try:
                return self.tp, self.tp.begin()
            except ProducerFenced:
                self.tp.close()
        raise ProducerFenced(f"transactional id {self.tp.transactional_id!r} is fenced by another process")

    def abort(self, tx) -> None:
        if tx.state == "ongoing":
            try:
                tx.abort()
            except FastqError:
                self.reset()                         # fenced, or storage trouble: the next open of the id aborts it

    def reset(self) -> None:
        if self.tp is not None:
            self.tp.close()
            self.tp = None

    def close(self) -> None:
        self.reset()
        self.eos.release_slot(self.slot)


class _Running:
    __slots__ = ("job", "deadline", "child", "killed", "ticket")

    def __init__(self, job: Job | None, deadline: float | None):
        self.job = job
        self.deadline = deadline
        self.child: _Child | None = None        # process mode: the child running it
        self.killed = False                     # process mode: the keeper killed it (timeout)
        self.ticket: list | None = None         # TaskQueue._put_if_current's [epoch, offset]


class _Child:
    """A spawned child process of a process-mode worker (or of a :class:`fastq.WorkerPool`:
    ``target`` is then its child's ``main``, speaking the same start and stop handshake)
    and its end of the pipe. ``what`` names its owner in the errors of :meth:`ready`."""

    def __init__(self, payload: bytes, qname: str, target=_child.main, what: str = "mode='process'"):
        here, there = _SPAWN.Pipe()
        self.process = _SPAWN.Process(target=target, args=(there, payload, os.getpid()),
                                      name=f"fastq-worker-{qname}", daemon=True)
        self.process.start()
        there.close()
        self.conn = here
        self.what = what
        self.exitcode: int | None = None            # set by stop()

    def ready(self) -> None:
        """Wait for the child to load the handler; InvalidArgument if it could not."""
        if not self.conn.poll(CHILD_START_S):
            self.kill()
            raise FastqError(f"worker child process {self.process.pid} did not start within {CHILD_START_S} s")
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            self.kill()
            self.process.join(CHILD_STOP_S)
            raise FastqError(f"worker child process {self.process.pid} died while starting "
                             f"(exit code {self.process.exitcode}; its stderr says why). Child processes "
                             f"are spawned, so they import the main module again: a script that makes a "
                             f"process worker needs the `if __name__ == '__main__':` guard") from None
        if msg[0] != "ready":
            self.kill()
            raise InvalidArgument(f"{self.what}: the handler could not be loaded in a child process "
                                  f"({msg[1]}); it must be importable (a module-level function)")

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        try:
            self.process.kill()
        except (OSError, ValueError):
            pass

    def stop(self, timeout: float = CHILD_STOP_S) -> bool:
        """Ask the child to stop, wait ``timeout`` s, then kill it; True if it stopped by itself."""
        try:
            self.conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        graceful = not self.process.is_alive()
        if not graceful:
            self.kill()
            self.process.join(CHILD_STOP_S)
        self.exitcode = self.process.exitcode
        self.conn.close()
        self.process.close()
        return graceful


def pickled_for_child(obj, what: str, handler) -> bytes:
    """``obj`` pickled for a spawned child (:class:`_Child`), or InvalidArgument saying
    that ``what`` needs ``handler`` to pickle."""
    try:
        return pickle.dumps(obj)
    except Exception as e:                         # noqa: BLE001 - pickle raises many kinds
        raise InvalidArgument(f"{what} sends the handler to child processes by pickling, and {handler!r} "
                              f"cannot be pickled ({type(e).__name__}: {e}): use a module-level function") from None


def _is_async(fn) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


class Worker:
    """Runs the jobs of ``queue`` with ``handler(job)`` (or a dict ``{job name: handler}``).

    ``mode``: ``"thread"`` (default: ``concurrency`` threads), ``"asyncio"`` (``async def``
    handlers, up to ``concurrency`` at once on an event loop) or ``"process"``
    (``concurrency`` child processes; the handler must be importable, since it is sent to
    spawned children by pickling). ``autorun`` (default True) starts at construction —
    an asyncio worker then runs its own loop in a thread; with ``autorun=False`` call
    ``run()``: it blocks until :meth:`close` (``await worker.run()`` for asyncio: runs on
    the caller's loop). ``max_stalled_count``: how many times a job's worker may die under
    it before the job fails (BullMQ's ``maxStalledCount``, default 1). ``batch``: messages
    taken per receive in thread mode (more is faster for short jobs; each waits its turn).

    ``limiter``: BullMQ's worker rate limit, across every worker of the queue in every
    process — ``{"max": n, "duration": seconds}`` (limiter ``tasks.<queue>.worker``), a
    :class:`fastq.RateLimiter`, or either with ``"group_key"`` (a dict
    ``{"limiter": RateLimiter, "group_key": ...}`` for the latter): a callable of the
    job's data, or the name of a data field, giving each group its own bucket (BullMQ
    Pro's groups). A job over its limit is not run now and not lost: its message is
    published again delayed by the limiter's ``retry_after`` (with its attempt count
    carried over), then the taken one is acked; ``rate_limited`` counts these.

    ``guarantee``: ``"at-least-once"`` (default: a job whose worker dies mid-run runs
    again) or ``"exactly-once"`` (thread mode only): the handler is called as
    ``handler(job, tx)`` (:class:`fastq.TaskExactlyOnce`) and what it publishes through
    ``tx`` is visible if and only if the job completes with that run's result; a job whose
    outputs committed is never run again (:mod:`fastq.tasks.exactly_once`).

    ``completed``, ``failed``, ``retried``, ``stalled``, ``rate_limited`` and ``skipped``
    (exactly-once: redeliveries found committed, completed without the handler) count
    what this worker did.
    """

    def __init__(self, queue: TaskQueue, handler: Handler, *, concurrency: int = 1, mode: str = "thread",
                 batch: int | None = None, max_stalled_count: int = 1, autorun: bool = True,
                 limiter=None, guarantee: str = "at-least-once"):
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
            raise InvalidArgument(f"mode={mode!r}: expected one of {', '.join(MODES)}")
        if guarantee not in GUARANTEES:
            raise InvalidArgument(f"guarantee={guarantee!r}: expected one of {', '.join(GUARANTEES)}")
        if guarantee == "exactly-once" and mode not in EOS_MODES:
            raise InvalidArgument(f"guarantee='exactly-once' works in mode {' or '.join(map(repr, EOS_MODES))} "
                                  f"only, not mode={mode!r}: run the handler as handler(job, tx) in threads "
                                  "(a coroutine or a child process cannot share the worker thread's transaction)")
        fns = list(self._handlers.values()) if self._handlers is not None else [handler]
        if mode == "thread" and any(_is_async(f) for f in fns):
            raise InvalidArgument(f"handler {handler!r} is async: run it with mode='asyncio' (or 'process')")
        if mode == "asyncio" and not all(_is_async(f) for f in fns):
            raise InvalidArgument(f"mode='asyncio' runs 'async def' handlers, got {handler!r} "
                                  "(use mode='thread' or 'process' for plain functions)")
        self._payload = b""
        if mode == "process":
            self._payload = pickled_for_child(handler, "mode='process'", handler)
        check_int("concurrency", concurrency, 1, 1024)
        batch = (1 if concurrency > 1 or mode == "process" else 32) if batch is None else batch
        check_int("batch", batch, 1, 1024)
        check_int("max_stalled_count", max_stalled_count, 0, 1_000_000)
        if not isinstance(autorun, bool):
            raise InvalidArgument(f"autorun must be a bool, got {autorun!r}")
        queue._check_open()
        group_key = None
        if isinstance(limiter, dict) and "limiter" in limiter:
            group_key = limiter.get("group_key")
            limiter = limiter["limiter"]
        elif isinstance(limiter, dict):
            group_key = limiter.get("group_key")
        self._group_key = group_key_function(group_key)
        self._limiter, self._limiter_owned = (None, False) if limiter is None else as_limiter(
            f"tasks.{queue.name}.worker", queue.broker, limiter, "limiter")
        self.rate_limited = 0
        self.skipped = 0
        self.guarantee = guarantee
        self._eos = TaskRunner(queue) if guarantee == "exactly-once" else None
        self.queue = queue
        self.mode = mode
        self.concurrency = concurrency
        self.max_stalled_count = max_stalled_count
        self.completed = 0
        self.failed = 0
        self.retried = 0
        self.stalled = 0
        self._batch = batch
        self._fast = FAST_ENABLED                  # the common case without per-step encoding (_fastrun)
        self._q = queue.queue
        self._vt = float(self._q.config["visibility_timeout"])
        self._stop = threading.Event()
        self._finished = threading.Event()          # every runner has ended
        self._lock = threading.Lock()
        self._held: dict = {}                      # message -> _Running (lease kept by the keeper)
        self._threads: list[threading.Thread] = []
        self._children: list[_Child | None] = []
        self._keeper: threading.Thread | None = None
        self._repairing = threading.Lock()        # held while a repair() thread runs
        self._started = False
        self._loop_thread: int | None = None       # asyncio: the thread whose loop runs it
        if autorun:
            self._start(own_loop=True)

    # -- starting ----------------------------------------------------------------------------

    def _start(self, own_loop: bool) -> None:
        with self._lock:
            if self._started:
                raise InvalidArgument(f"{self!r} is already running")
            self._started = True
        if self.mode == "process":
            self._children = [_Child(self._payload, self.queue.name) for _ in range(self.concurrency)]
            try:
                for c in self._children:
                    c.ready()
            except BaseException:
                for c in self._children:
                    c.kill()
                    c.stop()
                self._finished.set()
                raise
        if self.mode == "asyncio":
            if own_loop:
                self._threads = [threading.Thread(target=lambda: asyncio.run(self._arun()), daemon=True,
                                                  name=f"fastq-worker-{self.queue.name}-loop")]
        else:
            self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                              name=f"fastq-worker-{self.queue.name}-{i}")
                             for i in range(self.concurrency)]
        self._keeper = threading.Thread(target=self._keep, name=f"fastq-worker-{self.queue.name}-keeper",
                                        daemon=True)
        self._keeper.start()
        for t in self._threads:
            t.start()
        if self._threads:
            threading.Thread(target=self._join_runners, daemon=True).start()

    def _join_runners(self) -> None:
        for t in self._threads:
            t.join()
        if self._eos is not None:
            self._eos.close()                      # the task queues tx.add wrote to
        self._finished.set()

    def run(self):
        """Run until :meth:`close` (for ``autorun=False``). Thread and process modes:
        blocks. Asyncio mode: a coroutine — ``await worker.run()`` runs the jobs on the
        caller's loop; cancelling it hands back the jobs it was running."""
        if self.mode == "asyncio":
            return self._arun_caller()
        self._start(own_loop=False)
        self._finished.wait()
        if self._keeper is not None:
            self._keeper.join()
        return None

    async def _arun_caller(self) -> None:
        self._start(own_loop=False)
        try:
            await self._arun()
        finally:
            self._finished.set()

    # -- thread and process modes --------------------------------------------------------------

    def _run(self, slot: int) -> None:
        if self._eos is None:
            return self._serve(slot, None)
        th = _EosThread(self._eos)
        try:
            self._serve(slot, th)
        finally:
            th.close()
        return None

    def _serve(self, slot: int, th: "_EosThread | None") -> None:
        q = self._q
        ctl = self.queue._ctl
        # the fast path is the common case without a limiter (its check is the Python path's)
        # and at-least-once (exactly-once runs take the transactional path)
        fast = FastRun(self) if self.mode == "thread" and self._fast and self._limiter is None and th is None \
            else None
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
            if fast is not None and fast.core is not None and not self._stop.is_set():
                fast.run_batch(msgs, slot)             # the same per message, two jobs' records per append
                continue
            for m in msgs:
                try:
                    if self._stop.is_set():
                        self._hand_back(m)
                        continue
                    if th is not None:
                        self._eos_process(m, th)
                    elif fast is None or not fast.run(m):
                        self._process(m, slot)
                except (LeaseLost, Closed):
                    pass
                except Exception:               # storage trouble: the message comes back
                    log.exception("worker of %r could not run message %s", self.queue.name, m.id)
                finally:
                    with self._lock:
                        self._held.pop(m, None)
                if self.mode == "process" and not self._stop.is_set():
                    try:
                        self._ensure_child(slot)   # a timeout killed it: start another now
                    except FastqError:
                        log.exception("worker of %r could not start a child process", self.queue.name)
        if self.mode == "process":
            c, self._children[slot] = self._children[slot], None
            if c is not None:
                c.stop()

    def _process(self, m, slot: int) -> None:
        begun = self._begin(m)
        if begun is None:
            return
        job, s, running = begun
        timeout = s["opts"].get("timeout")
        try:
            fn = self._handler_for(s["name"])
            if self.mode == "process":
                raw = self._in_child(slot, job, s, running)
                rv = _dec.decode(raw)
            else:
                rv = fn(job)
                raw = self._encode(rv)
            if running.deadline is not None and (job.cancelled or time.monotonic() >= running.deadline):
                raise JobTimedOut(timeout)
        except Exception as e:
            self._failed(m, s, e, self._timed_out(job, running), timeout, running.ticket)
            return
        self._completed(m, s, rv, raw, running.ticket)

    # -- exactly-once (thread mode): fastq.tasks.exactly_once ---------------------------------

    def _eos_process(self, m, th: "_EosThread") -> None:
        """One run of ``m`` whose outputs (through ``tx``) and completion are one
        transaction's decision (the steps: :mod:`fastq.tasks.exactly_once`)."""
        if m.delivery_count > 1 and self._eos_done_before(m):
            return
        begun = self._begin(m)
        if begun is None:
            return
        job, s, running = begun
        eos = self._eos
        try:
            tp, tx = th.begin()
        except FastqError:                           # storage trouble: the job comes back unstarted
            log.exception("worker of %r could not begin a transaction", self.queue.name)
            self._hand_back(m, s)
            return
        timeout = s["opts"].get("timeout")
        ctx = eos.task_context(tx, m, job)
        try:
            fn = self._handler_for(s["name"])
            rv = fn(job, ctx)
            raw = self._encode(rv)
            if running.deadline is not None and (job.cancelled or time.monotonic() >= running.deadline):
                raise JobTimedOut(timeout)
        except ProducerFenced:                       # another worker took our id over: not the job's failure
            th.abort(tx)
            th.reset()
            self._hand_back(m, s)
            return
        except Exception as e:                       # the attempt failed: nothing of it is visible
            th.abort(tx)
            self._failed(m, s, e, self._timed_out(job, running), timeout, running.ticket)
            return
        try:
            eos.step("handled")
            eos.job_outcome(ctx, tp, s, raw)
            eos.step("outcome")
            m.extend(self._vt)                       # still ours: no other delivery can be running
            tx.commit()
            eos.step("committed")
        except LeaseLost:                            # redelivered meanwhile: that delivery decides
            th.abort(tx)
            th.reset()                               # (and it has likely fenced our id)
            return
        except Exception:                            # noqa: BLE001 - undecided: the redelivery finds out (fencing us)
            log.exception("worker of %r could not commit the run of job %s", self.queue.name, s["id"])
            th.abort(tx)
            th.reset()                               # the next open of our id finishes this one
            self._hand_back(m, s)
            return
        eos.apply_job(m, ctx._out, ctx._adds)        # raises: committed, the redelivery applies and completes
        eos.step("applied")
        self._completed(m, s, rv, raw, running.ticket)

    def _eos_done_before(self, m) -> bool:
        """A redelivered message whose outcome is committed: apply its outputs (once),
        record its job ``completed`` with the stored result (unless finished, removed or
        replaced), ack — True, the handler is not called."""
        eos = self._eos
        eos.maybe_finish_dead()
        done = eos.outcomes.committed(m)
        if done is None:
            return False
        j = done.get("jobs", {}).get(str(m.id))
        if j is None:
            raise FastqError(f"outcome of message {m.id} of {self._q.name!r} has no job: not a task worker's")
        eos.apply_job(m, done["out"].get(str(m.id), ()), j.get("add", ()))
        tq = self.queue
        ticket = [tq._ctl.log.end_offset, None]      # the epoch before the read (TaskQueue._put_if_current)
        prev, ticket[1] = tq._index.state_and_offset(j["id"])
        if prev is None or prev.get("gen", 0) != j["gen"] or prev["state"] in FINISHED:
            m.ack()
        else:
            raw = j["rv"].encode()
            self._completed(m, dict(prev), _dec.decode(raw), raw, ticket)
        with self._lock:
            self.skipped += 1
        return True

    def _in_child(self, slot: int, job: Job, s: dict, running: _Running) -> bytes:
        c = self._ensure_child(slot)
        with self._lock:
            running.child = c
        state = {k: v for k, v in s.items() if k != "return_value"}
        c.conn.send(("run", job.id, state))
        while True:
            try:
                if not c.conn.poll(SLICE):
                    continue
                msg = c.conn.recv()
            except (EOFError, OSError):
                c.process.join(CHILD_STOP_S)
                if running.killed:
                    raise JobTimedOut(s["opts"].get("timeout")) from None
                raise _ChildFailed(f"the worker's child process {c.pid} died while running the job "
                                   f"(exit code {c.process.exitcode})", "") from None
            kind = msg[0]
            if kind == "done":
                return msg[1]
            if kind == "error":
                raise _ChildFailed(msg[1], msg[2])
            if kind == "permanent":
                raise _Permanent(msg[1])
            try:                                   # progress, log
                self._write(s, kind, msg[1], running.ticket)
            except FastqError:
                log.exception("worker of %r could not record the %s of job %s", self.queue.name, kind, job.id)

    def _ensure_child(self, slot: int) -> _Child:
        c = self._children[slot]
        if c is not None and c.alive():
            return c
        if c is not None:
            c.stop()
        self._children[slot] = None
        c = _Child(self._payload, self.queue.name)
        c.ready()
        self._children[slot] = c
        return c

    def _keep(self) -> None:
        """Extend the leases of held messages; cancel jobs past their timeout."""
        extend_every = max(self._vt / 3.0, TICK_S)
        last = time.monotonic()
        repair_at = last + REPAIR_EVERY_S * (0.5 + random.random())    # jittered: processes spread out
        while not (self._finished.is_set() and not self._held):
            time.sleep(TICK_S)
            now = time.monotonic()
            with self._lock:
                held = list(self._held.items())
            for m, r in held:
                if r.deadline is not None and now >= r.deadline and r.job is not None:
                    r.job._cancel.set()
                    if r.child is not None and not r.killed:
                        r.killed = True
                        r.child.kill()             # process mode: the timeout kills; _run replaces it
            if now - last >= extend_every:
                last = now
                for m, _ in held:
                    try:
                        m.extend(self._vt)
                    except (LeaseLost, Closed):
                        pass
                    except FastqError:
                        log.exception("worker of %r could not extend message %s", self.queue.name, m.id)
            if now >= repair_at and not self._stop.is_set() and not self._repairing.locked():
                repair_at = now + REPAIR_EVERY_S * (0.5 + random.random())
                threading.Thread(target=self._repair, daemon=True,   # not in the way of lease extensions
                                 name=f"fastq-worker-{self.queue.name}-repair").start()

    def _repair(self) -> None:
        """TaskQueue.repair, in a thread of its own (it may read the whole backlog)."""
        with self._repairing:
            try:
                self.queue.repair()
            except Closed:
                pass
            except Exception:                     # noqa: BLE001 - a background sweep: log, try next time
                log.exception("worker of %r could not repair jobs", self.queue.name)

    # -- asyncio mode ------------------------------------------------------------------------

    async def _arun(self) -> None:
        """Receive in one thread, record states in another (in order), run handlers as
        tasks of this loop, at most ``concurrency`` at once."""
        loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._recv = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"fastq-worker-{self.queue.name}-recv")
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"fastq-worker-{self.queue.name}-io")
        tasks: set[asyncio.Task] = set()
        try:
            while not self._stop.is_set():
                free = self.concurrency - len(tasks)
                if free <= 0:
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                cf = self._recv.submit(self._receive, free)
                try:
                    msgs = await asyncio.wrap_future(cf)
                except asyncio.CancelledError:
                    cf.add_done_callback(self._give_back)
                    raise
                except Closed:
                    break
                for m in msgs:
                    if self._stop.is_set():
                        await loop.run_in_executor(self._writer, self._hand_back, m)
                        continue
                    t = loop.create_task(self._aprocess(m))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            self._stop.set()
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks)
            raise
        finally:
            # never wait on the loop: what is queued still runs (hand-backs hold their
            # message in _held until done, and close() waits for the keeper, which waits
            # for _held to empty)
            self._recv.shutdown(wait=False)
            self._writer.shutdown(wait=False)

    def _receive(self, n: int) -> list:
        msgs = self._q.receive(n, wait=SLICE)
        with self._lock:
            for m in msgs:
                self._held[m] = _Running(None, None)
        return msgs

    def _give_back(self, cf: concurrent.futures.Future) -> None:
        """A receive whose await was cancelled: hand its messages back."""
        if cf.cancelled() or cf.exception() is not None:
            return
        for m in cf.result():
            self._hand_back(m)

    def _hand_back(self, m, s: dict | None = None) -> None:
        """Give a message back unstarted (``s``: the job was started: record it waiting)."""
        try:
            if s is not None:
                s = dict(s, state="waiting")
                self.queue._put(s, [{"event": "waiting"}])
            m.nack()
        except (LeaseLost, Closed):
            pass
        finally:
            with self._lock:
                self._held.pop(m, None)

    async def _aprocess(self, m) -> None:
        loop = asyncio.get_running_loop()
        w = self._writer
        try:
            begun = await loop.run_in_executor(w, self._begin, m)
        except Exception:                              # noqa: BLE001 - storage trouble: it comes back
            log.exception("worker of %r could not run message %s", self.queue.name, m.id)
            with self._lock:
                self._held.pop(m, None)
            return
        if begun is None:
            with self._lock:
                self._held.pop(m, None)
            return
        job, s, running = begun
        job._write = lambda what, v: self._awrite(s, what, v, running.ticket)
        timeout = s["opts"].get("timeout")
        handed = False
        try:
            try:
                fn = self._handler_for(s["name"])
                coro = fn(job)
                rv = await (coro if timeout is None else asyncio.wait_for(coro, timeout))
                raw = self._encode(rv)
            except asyncio.CancelledError:
                handed = True                         # the worker was cancelled: not this job's fault
                w.submit(self._hand_back, m, s)
                raise
            except Exception as e:
                timed_out = self._timed_out(job, running)
                await loop.run_in_executor(w, self._failed, m, s, e, timed_out, timeout, running.ticket)
                return
            await loop.run_in_executor(w, self._completed, m, s, rv, raw, running.ticket)
        except (LeaseLost, Closed):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:                              # noqa: BLE001
            log.exception("worker of %r could not settle message %s", self.queue.name, m.id)
        finally:
            if not handed:
                with self._lock:
                    self._held.pop(m, None)

    def _awrite(self, s: dict, what: str, v, ticket: list) -> asyncio.Future:
        if what == "progress":
            self.queue._codec.encode(v)            # CodecError now, in the handler
        return asyncio.wrap_future(self._writer.submit(self._write, s, what, v, ticket))

    # -- one run: shared by every mode -------------------------------------------------------

    def _handler_for(self, name: str):
        fn = self._handler if self._handlers is None else self._handlers.get(name)
        if fn is None:
            raise _Permanent(f"no handler for job name {name!r} (this worker handles {sorted(self._handlers)})")
        return fn

    def _encode(self, rv) -> bytes:
        try:
            return self.queue._codec.encode(rv)
        except CodecError as e:
            raise _Permanent(f"the handler's result cannot be stored: {e}") from None

    @staticmethod
    def _timed_out(job: Job, running: _Running) -> bool:
        return running.deadline is not None and (job.cancelled or time.monotonic() >= running.deadline)

    def _begin(self, m):
        """Record the run's start; None when the message is not to be run (settled here)."""
        tq = self.queue
        try:
            msg = _dec.decode(m.body)
            jid, name, opts = msg["id"], msg["name"], msg["opts"]
        except (msgspec.DecodeError, KeyError, TypeError) as e:
            m.reject(f"not a fastq job message: {e}")
            return None
        if self._limiter is not None and self._defer_if_limited(m, msg):
            return None
        tick = None                                  # a scheduler's tick: add the next one first
        if opts.get("repeat") is not None:
            tick = lambda prev: on_tick(tq, jid, opts["repeat"], prev)      # noqa: E731
        while True:
            verdict, s, ticket = tq._begin(msg, m.delivery_count, self._activate, tick)  # records it
            if verdict == RUN:
                break
            if verdict == DROP:                      # removed, replaced, finished or a dropped tick: never run it
                if s is not None:                    # failed, its worker died before the ack
                    self._dead_letter(s, m)
                m.ack()
                return None
            if verdict == FAILED:                    # stalled past max_stalled_count: failed for good
                self._dead_letter(s, m)
                m.ack()
                with self._lock:
                    self.failed += 1
                tq._retain(s, "remove_on_fail", "failed")
                return None
            while tq._ctl.paused():                  # paused: hold it (the keeper keeps its lease)
                if self._stop.is_set():
                    m.nack()
                    return None
                tq._ctl.wait_change(0.1)
        job = Job(tq, jid, s, own=True)
        job._write = lambda what, v: self._write(s, what, v, ticket)
        timeout = opts.get("timeout")
        deadline = None
        if timeout is not None:
            job._cancel = threading.Event()
            deadline = time.monotonic() + timeout
        running = _Running(job, deadline)
        running.ticket = ticket
        with self._lock:
            self._held[m] = running
        return job, s, running

    def _defer_if_limited(self, m, msg: dict) -> bool:
        """Over the limiter (its group's bucket): publish the message again, delayed by the
        wait, its ``a0`` grown by the deliveries this one used (so attempts_made stays what
        it would have been), and ack this one. True when deferred. A kill between the two
        leaves a duplicate message, which admission drops once the job has run."""
        key = self._group_key(msg.get("data")) if self._group_key is not None else None
        wait = self._limiter._retry_after(1, key)
        if wait == 0.0:
            return False
        doc = dict(msg)
        a0 = msg.get("a0", 0) + m.delivery_count - 1
        if a0:
            doc["a0"] = a0
        self._q.publish(bytes(self.queue._codec.encode(doc)), delay=wait,
                        priority=msg["opts"].get("priority", 0))
        m.ack()
        with self._lock:
            self.rate_limited += 1
        return True

    def _activate(self, msg: dict, prev: dict | None, dc: int) -> tuple[dict, list]:
        """The ``active`` state of the job of message ``msg`` (delivery ``dc``, its ``a0``
        added), carrying on from its state ``prev`` (None: a first run), and its events —
        or, for a job whose worker died under it more than ``max_stalled_count`` times, its
        ``failed`` state (:meth:`TaskQueue._begin` records either)."""
        n = dc + msg.get("a0", 0)
        if prev is None:                             # a first run: one dict, in the order below
            return ({"id": msg["id"], "name": msg["name"], "progress": 0, "added_ms": msg.get("added_ms"),
                     "data": msg.get("data"), "opts": msg["opts"], "attempts_made": n, "gen": msg.get("gen", 0),
                     "state": "active", "processed_ms": now_ms()},
                    [{"event": "active", "attempts_made": n}])
        s = dict(prev)
        stalled = prev["state"] == "active"          # its run never ended
        s.update(data=msg.get("data"), opts=msg["opts"], attempts_made=n, gen=msg.get("gen", 0))
        s.pop("due_ms", None)
        s.pop("ep", None)
        evs = []
        if stalled:
            sc = s.get("stalled_count", 0) + 1
            s["stalled_count"] = sc
            evs.append({"event": "stalled", "stalled_count": sc})
            with self._lock:
                self.stalled += 1
            if sc > self.max_stalled_count:
                reason = (f"job stalled more than allowable limit: the worker running it died {sc} time(s) "
                          f"(max_stalled_count={self.max_stalled_count})")
                s.update(state="failed", attempts_made=n - 1, failed_reason=reason, finished_ms=now_ms(),
                         stacktrace=list(s.get("stacktrace") or []) + [reason])
                evs.append({"event": "failed", "failed_reason": reason, "attempts_made": n - 1})
                return s, evs
        s.update(state="active", processed_ms=now_ms())
        s.pop("finished_ms", None)
        evs.append({"event": "active", "attempts_made": n})
        return s, evs

    def _completed(self, m, s: dict, rv, raw, ticket: list) -> None:
        s.update(state="completed", return_value=msgspec.Raw(raw), failed_reason=None, finished_ms=now_ms())
        tq = self.queue
        mine = tq._put_if_current(s, ticket, [{"event": "completed", "return_value": s["return_value"],
                                               "attempts_made": s["attempts_made"]}])
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
        elif isinstance(e, (_Permanent, _ChildFailed)):
            reason = str(e)
        else:
            reason = f"{type(e).__name__}: {e}"
        if isinstance(e, _ChildFailed) and e.stack:
            stack = e.stack if not timed_out else f"{reason}\n{e.stack}"
        elif isinstance(e, (_Permanent, _ChildFailed)):
            stack = reason
        else:
            stack = "".join(traceback.format_exception(e)).rstrip()
        s["stacktrace"] = list(s.get("stacktrace") or []) + [stack]
        s["failed_reason"] = reason
        dc = s["attempts_made"]                      # the delivery count, plus a promoted retry's a0
        runs = dc - s.get("stalled_count", 0)        # stalled runs do not use up attempts (BullMQ)
        if not isinstance(e, _Permanent) and runs < opts.get("attempts", 1):
            b = Backoff.coerce(opts.get("backoff"))
            delay = b(runs) if b is not None else 0.0
            s.update(state="delayed" if delay else "waiting")
            evs = [{"event": "retried", "failed_reason": reason, "attempts_made": dc}]
            if delay:
                s["due_ms"] = now_ms() + int(delay * 1000)
                evs.append({"event": "delayed", "due_ms": s["due_ms"]})
            else:
                evs.append({"event": "waiting"})
            if not tq._put_if_current(s, ticket, evs):
                m.ack()                              # removed while it ran (obliterate, force)
                return
            m.nack(delay, error=reason)
            with self._lock:
                self.retried += 1
            return
        s.update(state="failed", finished_ms=now_ms())
        mine = tq._put_if_current(s, ticket, [{"event": "failed", "failed_reason": reason, "attempts_made": dc}])
        if mine:
            self._dead_letter(s, m)
        m.ack()
        if not mine:
            return
        with self._lock:
            self.failed += 1
        tq._retain(s, "remove_on_fail", "failed")

    def _dead_letter(self, s: dict, m) -> None:
        """Send failed job ``s`` to the task queue's dead letters, if it has them (before the
        ack: a crash in between sends it again, deduplicated — :mod:`fastq.tasks.deadletter`)."""
        dl = self.queue._dead_letters
        if dl is not None:
            dl.send(s, m)

    def _write(self, s: dict, what: str, v, ticket: list) -> None:
        new = dict(s)
        if what == "progress":
            new["progress"] = v
            evs = [{"event": "progress", "progress": v}]
        else:
            new["logs"] = list(s.get("logs") or []) + [v]
            evs = []
        if not self.queue._put_if_current(new, ticket, evs):  # CodecError here reaches the handler, s unchanged
            raise UnknownJob(f"job {s['id']!r} was removed from task queue {self.queue.name!r} while it ran")
        s.update(new)

    # -- lifetime ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._started and not self._finished.is_set()

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking jobs, let the running ones finish (messages received but not started
        are handed back at once), stop the child processes, and wait up to ``timeout`` s.
        True when all stopped. Called on the loop that runs ``await worker.run()`` it only
        asks it to stop (await :meth:`aclose`, or the ``run()`` task)."""
        self._stop.set()
        if not self._started:
            self._close_limiter()
            return True
        if self._loop_thread == threading.get_ident() and not self._threads:
            return self._finished.is_set()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._finished.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self._keeper is not None:
            self._keeper.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if not self.running:
            self._close_limiter()
        return not self.running and not (self._keeper is not None and self._keeper.is_alive())

    def _close_limiter(self) -> None:
        if self._limiter_owned and self._limiter is not None:
            self._limiter.close()

    async def aclose(self) -> None:
        """Stop taking jobs and wait (off the loop) until the running ones finished."""
        self._stop.set()
        while self._started and not self._finished.is_set():
            await asyncio.sleep(TICK_S)
        self._close_limiter()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<fastq.Worker of {self.queue.name!r} {self.mode} x{self.concurrency} "
                f"completed={self.completed} failed={self.failed}>")
