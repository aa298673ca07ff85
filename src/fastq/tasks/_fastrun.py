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

A worker with a ``limiter`` takes the Python path for every job (its check comes first).
``FASTQ_TASKS_FASTPATH=0`` in the environment turns it off (every job takes the Python
path), which is what bench/bench_tasks.py compares it with.
"""
from __future__ import annotations

import os

import msgspec

from .._core._storage import LogCore, TaskRunCore
from .admin import DROP, RUN
from .job import Job

__all__ = ["FastRun", "ENABLED"]

ENABLED = os.environ.get("FASTQ_TASKS_FASTPATH", "1") != "0"
_dec = msgspec.json.Decoder()


class FastRun:
    """One thread-mode :class:`fastq.Worker`'s fast path; :meth:`run` per message."""

    def __init__(self, worker):
        self.w = worker
        tq = worker.queue
        self.tq = tq
        # one runner thread: the only one that counts (the keeper never does), so no lock
        self.alone = worker.concurrency == 1
        self.dumps = tq._codec.dumps                 # (Worker._encode says what went wrong)
        logs = (tq._lg, tq._events.topic.log(0), tq._ctl.log)
        # logs that are not fastq's own (a test's stand-in): no fast path
        self.core = TaskRunCore(*logs, tq._ctl, _dec.decode, tq._events._lost) \
            if all(isinstance(lg, LogCore) for lg in logs) else None

    def run(self, m) -> bool:
        """Run message ``m``'s job; False — with nothing written — when it is not the
        common case (or the queue was paused meanwhile): the Python path takes it."""
        w = self.w
        if self.core is None:
            return False
        r = self.core.begin(m, w._handler, w._handlers)
        if r is None:
            return False
        s, fn, prefix, key, added, now, ep, since, a, moved = r
        tq = self.tq
        if not moved:
            ticket = [ep, a]
        else:                                        # an admin operation began meanwhile
            verdict, _, ticket = tq._begun_while_moved(s, ep, since, a)
            if verdict == DROP:
                m.ack()
                return True
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
            return True
        if len(s) != 10 or s["progress"] != 0:       # progress or logs were recorded: the Python path
            w._completed(m, s, rv, raw, ticket)
            return True
        moved = self.core.complete(m, prefix, key, added, now, raw, ticket[0])
        mine = True
        if moved is not None:                        # acked unless an admin operation began meanwhile
            off, fin = moved
            s.update(state="completed", return_value=msgspec.Raw(raw), failed_reason=None, finished_ms=fin)
            mine = tq._current_after_move(s, ticket, off)
            m.ack()
        if mine:
            if self.alone:
                w.completed += 1
            else:
                with w._lock:
                    w.completed += 1
            if s["opts"].get("remove_on_complete", False) is not False:
                s.update(state="completed", return_value=rv, failed_reason=None)
                tq._retain(s, "remove_on_complete", "completed")
        return True
