"""Handlers of tests/test_pool.py: a module of its own, since a WorkerPool's processes are
spawned and unpickle their handler by importing it. Not a test module."""
from __future__ import annotations

import os
import time


from task_workers import _note as note      # one O_APPEND write per line: processes never mix lines


def lines(path: str) -> list[list[str]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [ln.split() for ln in f.read().splitlines()]


class Record:
    """Handler for a message (``m.data``) or a job (``job.data``): an int ``n``. Sleeps
    ``delay`` s, then notes ``done <n> <pid> <delivery>`` in ``path`` (the last thing before it
    returns and the message is acked). ``n < 0`` is held: it notes ``begin <n> <pid>``
    first, then waits while ``hold`` exists."""

    def __init__(self, path: str, delay: float = 0.0, hold: str = ""):
        self.path = path
        self.delay = delay
        self.hold = hold

    def __call__(self, m) -> int:
        n = m.data
        delivery = getattr(m, "delivery_count", None) or getattr(m, "attempts_made", 0)
        if n < 0:
            note(self.path, f"begin {n} {os.getpid()} {delivery}")
            while self.hold and os.path.exists(self.hold):
                time.sleep(0.01)
        time.sleep(self.delay)
        note(self.path, f"done {n} {os.getpid()} {delivery}")
        return n


def _refuse():
    raise RuntimeError("this handler refuses to load")


class Unloadable:
    """Pickles, but raises when a child unpickles it."""

    def __reduce__(self):
        return (_refuse, ())

    def __call__(self, m):                        # pragma: no cover - never loaded
        return None


async def arecord(m) -> int:
    """An ``async def`` handler: notes ``done <n> <pid>`` in the file named by $POOL_OUT
    (spawned processes inherit the environment)."""
    note(os.environ["POOL_OUT"], f"done {m.data} {os.getpid()}")
    return m.data


POOL_MAIN = """
import sys, time
import fastq, pool_workers as pw
with fastq.open(sys.argv[1]) as b:
    q = b.queue("work")
    with fastq.WorkerPool(q, pw.Record(sys.argv[2], delay=0.005), min=2, max=2, interval=0.05):
        print("ready", flush=True)
        time.sleep(600)
"""


def exit_thread(m) -> None:
    """On a message's first delivery, ends the consuming thread (SystemExit is no handler
    failure the subscription catches); later deliveries are handled."""
    if m.delivery_count == 1:
        raise SystemExit(5)
