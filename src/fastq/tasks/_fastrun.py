"""A thread-mode worker's common case, without building and encoding a state per step
(docs/TASKS.md "Speed"): the first delivery of a job added with the defaults that matter
here — no ``repeat``, no ``timeout``, ``gen`` 0, published at the current admin epoch —
on an unpaused queue, whose handler returns.

Its job message is byte for byte its first state record (:mod:`fastq.tasks.taskqueue`),
``{"id", "name", "data", "opts", "state": "waiting", "attempts_made": 0, "progress": 0,
"added_ms", "gen", "ep"}``: the ``active`` and ``completed`` records are the message's bytes
up to ``"state"`` followed by the fields the Python path's :meth:`Worker._activate` and
:meth:`Worker._completed` would write (the same keys and values, so the same state to a
reader), and their events are the same JSON, formatted — built and appended by the compiled
:class:`fastq._core._storage.TaskRunCore` (src/fastq/_core/_taskcore.pxi). Everything else — a handler that
raised, reported progress or logged, an admin operation that began meanwhile, a result the
codec cannot encode, retention — goes through the Python path's functions, so both paths
record the same states (tests/test_tasks_fastpath.py runs the task-queue tests both ways).

A received batch runs in :meth:`FastRun.run_batch`: a job's ``completed`` record and the
next job's ``active`` record go in one append (:meth:`TaskRunCore.step`), their events in
one more — half the appends per job, the same states to a reader or a crash.

A worker with a ``limiter`` takes the Python path for every job (its check comes first), and
an exactly-once worker its transactional path (:mod:`fastq.tasks.exactly_once`).
``FASTQ_TASKS_FASTPATH=0`` in the environment turns it off (every job takes the Python
path), which is what bench/bench_tasks.py compares it with.
"""
from __future__ import annotations

import logging
import os

import msgspec

from .._core._storage import LogCore, TaskRunCore
from ..errors import Closed, LeaseLost
from .admin import DROP, RUN
from .job import Job

__all__ = ["FastRun", "ENABLED"]

ENABLED = os.environ.get("FASTQ_TASKS_FASTPATH", "1") != "0"
_dec = msgspec.json.Decoder()
log = logging.getLogger("fastq.tasks")
# run_batch writes a job's completion with the next job's start (TaskRunCore.step); False: each
# alone, as before (bench/bench_tasks.py compares the two in one run)
_STEP = True


class FastRun:
    """One thread-mode :class:`fastq.Worker`'s fast path; :meth:`run` per message."""

    def __init__(self, worker):
        self.w = worker
        tq = worker.queue
        self.tq = tq
        # one runner thread: the only one that counts (the keeper never does), so no lock
        self.alone = worker.concurrency == 1
        self.step = _STEP
        self.dumps = tq._codec.dumps                 # (Worker._encode says what went wrong)
        logs = (tq._lg, tq._events.topic.log(0), tq._ctl.log)
        # logs that are not fastq's own (a test's stand-in): no fast path
        self.core = TaskRunCore(*logs, tq._ctl, _dec.decode, tq._events._lost) \
            if all(isinstance(lg, LogCore) for lg in logs) else None

    def run(self, m) -> bool:
        """Run message ``m``'s job; False — with nothing written — when it is not the
        common case (or the queue was paused meanwhile): the Python path takes it."""
        if self.core is None:
            return False
        r = self.core.begin(m, self.w._handler, self.w._handlers)
        if r is None:
            return False
        p = self._start(m, r)
        if p is False:
            return False
        if p is not None:
            self._finish(p, self._complete(p))
        return True

    def run_batch(self, msgs: list, slot: int) -> None:
        """Run a received batch (the worker's loop for it, :meth:`Worker._serve`): each
        message as :meth:`run` or the Python path would, except that a job's
        ``completed`` record and the next job's ``active`` one are written together
        (:meth:`TaskRunCore.step`: one append for the two states, one for their events —
        half the appends of a job), the next message's job being decoded and checked
        first. The states a reader or a crash can see are the same as one at a time: job
        k completed and job k+1 active at one instant, never both active; job k's
        message is acked after that record (a kill before the ack: it is redelivered,
        found completed, acked — as on the Python path)."""
        w = self.w
        core = self.core
        pend = None                                   # a job whose handler returned; its completion not written
        done = []                                     # messages no longer held once the batch is over
        try:
            for m in msgs:
                if w._stop.is_set():
                    if pend is not None:
                        p, pend = pend, None
                        self._flush(p)
                    w._hand_back(m)
                    continue
                try:
                    r = None
                    if pend is not None:
                        p, pend = pend, None
                        prev, r = core.step(p[0], p[2], p[3], p[4], p[5], p[6], p[7][0], m, w._handler,
                                            w._handlers)
                        self._finish_guarded(p, prev)     # whatever it raises, m's job (begun) runs
                    if r is None:
                        r = core.begin(m, w._handler, w._handlers)
                    p = False if r is None else self._start(m, r)
                    if p is False:
                        try:
                            w._process(m, slot)
                        finally:
                            with w._lock:
                                w._held.pop(m, None)
                        continue
                    if p is not None:
                        if self.step:
                            pend = p
                        else:
                            self._finish(p, self._complete(p))
                except (LeaseLost, Closed):
                    pass
                except Exception:                     # storage trouble: the message comes back
                    log.exception("worker of %r could not run message %s", self.tq.name, m.id)
                done.append(m)
        finally:
            if pend is not None:
                self._flush(pend)
            with w._lock:
                for m in done:
                    w._held.pop(m, None)

    def _start(self, m, r):
        """Run the handler of the job :meth:`TaskRunCore.begin` (or ``step``) recorded
        active (``r``, its tuple). Returns False — the Python path takes ``m`` —, None
        (done here: dropped, failed, or completed by the Python path), or the pending
        completion ``(m, s, prefix, key, added, processed, raw, ticket, rv)``."""
        w = self.w
        s, fn, prefix, key, added, now, ep, since, a, moved = r
        tq = self.tq
        if not moved:
            ticket = [ep, a]
        else:                                        # an admin operation began meanwhile
            verdict, _, ticket = tq._begun_while_moved(s, ep, since, a)
            if verdict == DROP:
                m.ack()
                return None
            if verdict != RUN:                       # paused meanwhile: recorded waiting again
                return False
        job = Job(tq, s["id"], s, own=True)
        job._write = lambda what, v: w._write(s, what, v, ticket)
        try:
            rv = fn(job)
            try:
                raw = self.dumps(rv)
            except Exception:                        # noqa: BLE001 - the Python path names it
                raw = w._encode(rv)
        except Exception as e:                       # noqa: BLE001 - the handler's failure (as Worker._process)
            w._failed(m, s, e, False, None, ticket)
            return None
        if len(s) != 10 or s["progress"] != 0:       # progress or logs were recorded: the Python path
            w._completed(m, s, rv, raw, ticket)
            return None
        return (m, s, prefix, key, added, now, raw, ticket, rv)

    def _complete(self, p):
        """:meth:`TaskRunCore.complete` of pending completion ``p`` alone."""
        try:
            return self.core.complete(p[0], p[2], p[3], p[4], p[5], p[6], p[7][0])
        except LeaseLost:
            return False

    def _finish_guarded(self, p, prev) -> None:
        """:meth:`_finish`, logging what it raises (as the worker's loop does for a
        message): the next job, recorded active with it, must still run."""
        try:
            self._finish(p, prev)
        except (LeaseLost, Closed):
            pass
        except Exception:                             # noqa: BLE001 - storage trouble: the message comes back
            log.exception("worker of %r could not finish message %s", self.tq.name, p[0].id)

    def _flush(self, p) -> None:
        """Record pending completion ``p`` alone, then :meth:`_finish` it (errors logged)."""
        try:
            prev = self._complete(p)
        except (LeaseLost, Closed):
            return
        except Exception:                             # noqa: BLE001 - as above
            log.exception("worker of %r could not complete message %s", self.tq.name, p[0].id)
            return
        self._finish_guarded(p, prev)

    def _finish(self, p, prev) -> None:
        """After pending completion ``p`` was recorded (``prev``: what ``complete``
        returned, False: its lease was gone): the admin check if the epoch moved, the
        count, retention."""
        if prev is False:
            return
        m, s, _, _, _, _, raw, ticket, rv = p
        tq = self.tq
        w = self.w
        mine = True
        if prev is not None:                         # acked unless an admin operation began meanwhile
            off, fin = prev
            s.update(state="completed", return_value=msgspec.Raw(raw), failed_reason=None, finished_ms=fin)
            mine = tq._current_after_move(s, ticket, off)
            try:
                m.ack()
            except LeaseLost:
                return
        if mine:
            if self.alone:
                w.completed += 1
            else:
                with w._lock:
                    w.completed += 1
            if s["opts"].get("remove_on_complete", False) is not False:
                s.update(state="completed", return_value=rv, failed_reason=None)
                tq._retain(s, "remove_on_complete", "completed")
