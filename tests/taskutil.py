"""What the task-queue test modules share (not a test module)."""
from __future__ import annotations

import os
import time


def wait_for(cond, timeout=10.0, what="condition"):
    """Poll ``cond`` every 5 ms until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def runs(path) -> list[list[str]]:
    """The lines of a worker's runs file, split (``job_id attempts pid``)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [ln.split() for ln in f.read().splitlines() if ln]
