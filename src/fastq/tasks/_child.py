"""The child side of a ``Worker(mode="process")``: a spawned process that runs one job
at a time for its parent (docs/TASKS.md, "Worker modes").

The parent does all the bookkeeping (leases, states, events, retries); the child only
calls the handler. Protocol over a ``multiprocessing`` pipe, pickled tuples:

- child → parent once: ``("ready",)`` or ``("fatal", reason)`` (the handler did not load);
- parent → child: ``("run", job_id, state)`` (the job's state dict), or ``("stop",)``;
- child → parent while running: ``("progress", value)``, ``("log", line)``; then one of
  ``("done", result_json)``, ``("error", reason, stacktrace)``, ``("permanent", reason)``
  (the result cannot be encoded: no retry helps).

The child exits when the pipe closes or its parent dies (a watchdog thread looks every
200 ms), so a kill -9 of the worker's process never leaves handlers running.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import threading
import time
import traceback

from ..errors import CodecError
from ..queue.codecs import resolve_codec
from .job import Job

_codec = resolve_codec("json")              # as the parent's TaskQueue stores data and results
WATCH_S = 0.2


def _watch_parent(ppid: int) -> None:
    while True:
        time.sleep(WATCH_S)
        if os.getppid() != ppid:
            os._exit(70)


def main(conn, payload: bytes, ppid: int) -> None:
    threading.Thread(target=_watch_parent, args=(ppid,), daemon=True, name="fastq-parent-watch").start()
    try:
        handler = pickle.loads(payload)
    except BaseException as e:                   # noqa: BLE001 - reported to the parent, which raises
        conn.send(("fatal", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] != "run":
            return
        _, jid, state = msg
        _run_one(conn, handler, jid, state)


def _run_one(conn, handler, jid: str, state: dict) -> None:
    job = Job(None, jid, state, own=True)

    def write(what, v):
        if what == "progress":
            _codec.encode(v)                     # CodecError here, in the handler, as in a thread
        conn.send((what, v))
        state.update({"progress": v} if what == "progress" else {})

    job._write = write
    fn = handler if callable(handler) else handler[state["name"]]
    try:
        rv = fn(job)
        if inspect.isawaitable(rv):
            rv = asyncio.run(_await(rv))
        try:
            raw = bytes(_codec.encode(rv))
        except CodecError as e:
            conn.send(("permanent", f"the handler's result cannot be stored: {e}"))
            return
    except BaseException as e:                   # noqa: BLE001 - the attempt failed; the parent decides
        conn.send(("error", f"{type(e).__name__}: {e}", "".join(traceback.format_exception(e)).rstrip()))
        return
    conn.send(("done", raw))


async def _await(aw):
    return await aw
