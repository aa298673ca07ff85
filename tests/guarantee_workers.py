"""Subscriber processes for tests/test_guarantees_kill.py (not a test module).

``eos_subscriber``: ``q.subscribe(handler, guarantee="exactly-once")`` on queue ``in``;
the handler publishes ``<data>`` to topic ``out`` and enqueues it to queue ``next``, and
logs "handled <data> <delivery>". With ``kill_step``, the process SIGKILLs itself at the
``kill_at``-th time the subscription reaches that step (the exactly-once runner's and
the transaction's step names), else it runs until ``stopfile`` exists."""
from __future__ import annotations

import os
import signal
import time

import fastq
from fastq.queue import exactly_once
from queue_workers import EventLog

IN, OUT, NEXT = "in", "out", "next"


def drain_data(q, wait: float = 0.05) -> list:
    """Receive and ack everything ``q`` holds; their data."""
    out = []
    while True:
        got = q.receive(100, wait=wait)
        if not got:
            return out
        q.ack_many(got)
        out += [m.data for m in got]


def wait_idle(q, timeout: float, *, pause: float = 0.01) -> None:
    """Wait until ``q`` holds nothing ready, delayed or in flight (fails after ``timeout``)."""
    t0 = time.monotonic()
    while True:
        d = q.depth()
        if d.ready == d.delayed == d.in_flight == 0:
            return
        assert time.monotonic() - t0 < timeout, f"not drained: {d}"
        time.sleep(pause)


def _serve_until(stopfile: str, sub, b) -> None:
    """Let ``sub`` run until ``stopfile`` exists, then stop it and close ``b``."""
    while not os.path.exists(stopfile):
        time.sleep(0.01)
    sub.stop()
    sub.join()
    b.close()


def eos_subscriber(path: str, logfile: str, stopfile: str, kill_step: str | None, kill_at: int,
                   concurrency: int, max_messages: int = 1) -> None:
    log = EventLog(logfile)
    log("start", os.getpid())
    b = fastq.open(path)
    q = b.queue(IN)
    seen = {"n": 0}

    def hook(step):
        if step == kill_step:
            seen["n"] += 1
            if seen["n"] >= kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    def handler(m, tx):
        log("handled", m.data, m.delivery_count)
        tx.publish(OUT, m.data.encode(), partition=0)
        tx.enqueue(NEXT, m.data)
        if m.data.endswith("!") and m.delivery_count == 1:
            raise ValueError("fails on its first delivery")

    if kill_step is not None:
        exactly_once.ExactlyOnceRunner.hook = staticmethod(hook)
    sub = q.subscribe(handler, guarantee="exactly-once", backoff=0.0, concurrency=concurrency,
                      max_messages=max_messages)
    _serve_until(stopfile, sub, b)
    log("stopped")


def recipe_source(doc: str) -> str:
    """The Python block after ``<!-- recipe:sqlite -->`` in ``doc`` (docs/GUARANTEES.md)."""
    with open(doc) as f:
        text = f.read()
    after = text.split("<!-- recipe:sqlite -->", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def sqlite_subscriber(path: str, workdir: str, doc: str, logfile: str, stopfile: str, kill_after: int) -> None:
    """The docs' sqlite recipe as an at-least-once handler of queue ``orders``; with
    ``kill_after``, SIGKILLs itself right after the handler's ``kill_after``-th return
    — its DB transaction committed, its ack not made."""
    log = EventLog(logfile)
    os.chdir(workdir)
    ns: dict = {}
    exec(recipe_source(doc), ns)
    b = fastq.open(path)
    q = b.queue("orders")
    done = {"n": 0}

    def handler(m):
        log("handled", m.data["order"], m.delivery_count)
        ns["handle"](m)
        done["n"] += 1
        if done["n"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    sub = q.subscribe(handler, backoff=0.0)
    _serve_until(stopfile, sub, b)
    ns["db"].close()


def plain_subscriber(path: str, logfile: str, stopfile: str, guarantee: str, kill: str | None, kill_at: int) -> None:
    """``q.subscribe(handler, guarantee=guarantee)`` on queue ``in``; the handler's effect
    is the line "effect <data>" appended to ``logfile`` (an O_APPEND write: done once it
    returns). With ``kill``, SIGKILLs itself at the ``kill_at``-th handler call:
    ``"before"`` its effect or ``"after"`` it (before the handler returns)."""
    log = EventLog(logfile)
    b = fastq.open(path)
    q = b.queue(IN)
    calls = {"n": 0}

    def handler(m):
        calls["n"] += 1
        if kill == "before" and calls["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        log("effect", m.data)
        if kill == "after" and calls["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    sub = q.subscribe(handler, guarantee=guarantee, backoff=0.0)
    _serve_until(stopfile, sub, b)
