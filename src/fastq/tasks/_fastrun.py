"""A thread-mode worker's common case, without building and encoding a state per step
(docs/TASKS.md "Speed"): the first delivery of a job added with the defaults that matter
here — no ``repeat``, no ``timeout``, ``gen`` 0, published at the current admin epoch —
on an unpaused queue, whose handler returns.

Its job message is byte for byte its first state record (:mod:`fastq.tasks.taskqueue`),
``{"id", "name", "data", "opts", "state": "waiting", "attempts_made": 0, "progress": 0,
"added_ms", "gen", "ep"}``: the ``active`` and ``completed`` records are the message's bytes
up to ``"state"`` followed by the fields the Python path's :meth:`Worker._activate` and
:meth:`Worker._completed` would write (the same keys and values, so the same state to a
reader), and their events are the same JSON, formatted. Everything else — a handler that
raised, reported progress or logged, an admin operation that began meanwhile, a result the
codec cannot encode, retention — goes through the Python path's functions, so both paths
record the same states (tests/test_tasks_fastpath.py runs the task-queue tests both ways).

``FASTQ_TASKS_FASTPATH=0`` in the environment turns it off (every job takes the Python
path), which is what bench/bench_tasks.py compares it with.
"""
from __future__ import annotations

import os
import time

import msgspec

from .admin import DROP, RUN
from .job import Job

__all__ = ["FastRun", "ENABLED"]

ENABLED = os.environ.get("FASTQ_TASKS_FASTPATH", "1") != "0"
WAITING = b',"state":"waiting","attempts_made":0,"progress":0,"added_ms":'
ACTIVE_EVENT = b'{"event":"active","attempts_made":1}'
ACTIVE = b'%s,"state":"active","attempts_made":1,"progress":0,"added_ms":%d,"gen":0,"processed_ms":%d}'
COMPLETED = (b'%s,"state":"completed","attempts_made":1,"progress":0,"added_ms":%d,"gen":0,"processed_ms":%d,'
             b'"return_value":%s,"failed_reason":null,"finished_ms":%d}')
COMPLETED_EVENT = b'{"event":"completed","return_value":%s,"attempts_made":1}'
_dec = msgspec.json.Decoder()
_time = time.time


class FastRun:
    """One thread-mode :class:`fastq.Worker`'s fast path; :meth:`run` per message."""

    def __init__(self, worker):
        self.w = worker
        tq = worker.queue
        self.tq = tq
        self.ctl = tq._ctl
        self.clog = tq._ctl.log
        self.lg = tq._lg
        self.events = tq._events

    def run(self, m) -> bool:
        """Run message ``m``'s job; False — with nothing written — when it is not the
        common case (or the queue was paused meanwhile): the Python path takes it."""
        if m.delivery_count != 1:
            return False
        body = m.body
        i = body.rfind(WAITING)
        if i < 0:
            return False
        try:
            s = _dec.decode(body)
            opts = s["opts"]
            added = s["added_ms"]
        except (msgspec.DecodeError, KeyError, TypeError):
            return False
        w = self.w
        fn = w._handler if w._handlers is None else w._handlers.get(s.get("name"))
        ctl, clog = self.ctl, self.clog
        ep = clog.end_offset
        if fn is None or type(added) is not int or s.get("gen") != 0 or s.pop("ep", None) != ep or "a0" in s \
                or ep != ctl._seen or ctl._paused or type(opts) is not dict or opts.get("repeat") is not None \
                or opts.get("timeout") is not None:
            return False
        lg = self.lg
        since = lg.end_offset
        now = int(_time() * 1000)
        prefix = body[:i]
        key = s["id"].encode()
        s.pop("due_ms", None)                        # (as Worker._activate's first-run state)
        s["state"] = "active"
        s["attempts_made"] = 1
        s["processed_ms"] = now
        a = lg.append(ACTIVE % (prefix, added, now), key)
        self.events.emit_raw(key, ACTIVE_EVENT)
        tq = self.tq
        if clog.end_offset == ep:
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
            raw = w._encode(rv)
        except Exception as e:                       # noqa: BLE001 - the handler's failure (as Worker._process)
            w._failed(m, s, e, False, None, ticket)
            return True
        if len(s) != 10 or s["progress"] != 0:       # progress or logs were recorded: the Python path
            w._completed(m, s, rv, raw, ticket)
            return True
        fin = int(_time() * 1000)
        off = lg.append(COMPLETED % (prefix, added, now, raw, fin), key)
        self.events.emit_raw(key, COMPLETED_EVENT % raw)
        mine = True
        if clog.end_offset != ticket[0]:
            s.update(state="completed", return_value=msgspec.Raw(raw), failed_reason=None, finished_ms=fin)
            mine = tq._current_after_move(s, ticket, off)
        m.ack()
        if mine:
            with w._lock:
                w.completed += 1
            if opts.get("remove_on_complete", False) is not False:
                s.update(state="completed", return_value=rv, failed_reason=None, finished_ms=fin)
                tq._retain(s, "remove_on_complete", "completed")
        return True
