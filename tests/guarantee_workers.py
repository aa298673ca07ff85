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


def eos_subscriber(path: str, logfile: str, stopfile: str, kill_step: str | None, kill_at: int,
                   concurrency: int) -> None:
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
    sub = q.subscribe(handler, guarantee="exactly-once", backoff=0.0, concurrency=concurrency)
    while not os.path.exists(stopfile):
        time.sleep(0.01)
    sub.stop()
    sub.join()
    b.close()
    log("stopped")
