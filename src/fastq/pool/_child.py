"""The child side of a :class:`fastq.WorkerPool`: one spawned worker process.

It speaks the start and stop handshake of a process-mode :class:`fastq.Worker`'s child
(:mod:`fastq.tasks._child`; the parent side is the same ``_Child`` of
:mod:`fastq.tasks.worker`), over a ``multiprocessing`` pipe of pickled tuples:

- child → parent once: ``("ready",)`` once it consumes, or ``("fatal", reason)`` (the
  handler did not unpickle, or the queue did not open);
- parent → child: ``("stop",)``.

The payload is a pickled dict: ``kind`` (``"queue"`` or ``"tasks"``), the broker's
``path`` and ``durability``, the queue's ``name`` and ``codec`` (a name or a pickled
:class:`fastq.queue.Codec`), ``handler``, ``concurrency``, ``max_messages``.

A message queue is consumed as ``Queue.subscribe`` does (at-least-once: ack after the
handler returns); a task queue by a thread-mode (``async def`` handler: asyncio-mode)
:class:`fastq.Worker`. On ``("stop",)``, on SIGTERM and when the pipe closes, the child
stops taking messages, lets the handler finish the ones it runs, hands back the ones it
received but did not start, closes the broker (its session is released: nothing stays
leased to it) and exits 0. A child whose consuming threads all end unasked (a handler
raised ``SystemExit``) exits 3, and the pool replaces it. SIGINT is ignored: a Ctrl-C in a terminal reaches the whole
process group, and the pool's process decides (``pool.stop()``). A child whose parent dies
exits at once (the watchdog of :mod:`fastq.tasks._child`); what it held comes back to the
queue through its dead-consumer detection, as after a kill -9.
"""
from __future__ import annotations

import os
import pickle
import signal
import sys
import threading

from ..broker.broker import Broker
from ..tasks._child import _watch_parent
from ..tasks.taskqueue import TaskQueue
from ..tasks.worker import Worker, _is_async

POLL_S = 0.2                    # how often the main thread looks at the stop flag
EXIT_CONSUMER_ENDED = 3         # exit code: the consumer's threads ended without being asked


class _Consumer:
    """What runs in the child: a subscription or a task worker, and how it stops."""

    def __init__(self, spec: dict):
        self.broker = Broker(spec["path"], durability=spec["durability"], create=False)
        try:
            if spec["kind"] == "tasks":
                handler = spec["handler"]
                fns = list(handler.values()) if isinstance(handler, dict) else [handler]
                mode = "asyncio" if all(_is_async(f) for f in fns) else "thread"
                self.tq = TaskQueue(spec["name"], self.broker)
                self.run = Worker(self.tq, handler, concurrency=spec["concurrency"], mode=mode,
                                  batch=spec["max_messages"] if mode == "thread" else None)
            else:
                q = self.broker.queue(spec["name"], codec=spec["codec"], create=False)
                self.run = q.subscribe(spec["handler"], concurrency=spec["concurrency"],
                                       max_messages=spec["max_messages"])
        except BaseException:
            self.broker.close()
            raise

    def close(self) -> None:
        try:
            if isinstance(self.run, Worker):
                self.run.close()
                self.tq.close()
            else:
                self.run.stop()
                self.run.join()
        finally:
            self.broker.close()


def main(conn, payload: bytes, ppid: int) -> None:
    threading.Thread(target=_watch_parent, args=(ppid,), daemon=True, name="fastq-parent-watch").start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        spec = pickle.loads(payload)
    except BaseException as e:                   # noqa: BLE001 - reported to the parent, which raises
        conn.send(("fatal", f"{type(e).__name__}: {e}"))
        return
    try:
        consumer = _Consumer(spec)
    except BaseException as e:                   # noqa: BLE001
        conn.send(("fatal", f"{spec['kind']} {spec['name']!r} of {spec['path']} did not open "
                            f"in pid {os.getpid()}: {type(e).__name__}: {e}"))
        return
    ended = False
    try:
        conn.send(("ready",))
        while not stop.is_set():
            if conn.poll(POLL_S):
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    break
                if msg[0] == "stop":
                    break
            elif not consumer.run.running:        # its threads ended (a handler raised SystemExit...)
                ended = True
                break
    finally:
        consumer.close()
    if ended:
        sys.exit(EXIT_CONSUMER_ENDED)             # the pool replaces a worker that consumes no more
