"""What the task-queue test modules share (not a test module): the ``broker`` and ``tq``
fixtures (import them: ``from taskutil import broker, tq``), polling, runs files, faults."""
from __future__ import annotations

import errno
import os
import time

import pytest

import fastq


@pytest.fixture
def broker(tmp_path):
    """A broker in a fresh directory, closed after the test."""
    with fastq.open(tmp_path / "data") as b:
        yield b


@pytest.fixture
def tq(broker):
    """The task queue "images" of ``broker``, closed after the test."""
    q = fastq.TaskQueue("images", broker)
    yield q
    q.close()


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


def fault_calls(fn) -> dict:
    """{C fault point: calls} that ``fn()`` makes (tests/faultfs.py; none fails)."""
    from fastq._core import _storage
    for p in _storage.FAULT_POINTS:
        _storage._fault_inject(p, errno.EIO, 1 << 40, 1)
    try:
        fn()
        calls = {p: _storage._fault_calls(p) for p in _storage.FAULT_POINTS}
    finally:
        _storage._fault_clear()
    return {p: n for p, n in calls.items() if n}


def fail_once(open_broker, point: str, k: int, op, what: str) -> bool:
    """Open a broker (``open_broker()``), run ``op(broker)`` with C fault ``point`` failing
    its call ``k`` with EIO, close it; True if the fault was hit. A hit may only surface as
    a FastqError (or not at all); a miss must not fail."""
    from faultfs import c_fault
    b = open_broker()
    exc = None
    try:
        with c_fault(point, errno.EIO, k, 1) as hits:
            try:
                op(b)
            except Exception as e:                     # noqa: BLE001 - checked below
                exc = e
            hit = hits()
    finally:
        try:
            b.close()
        except fastq.FastqError:
            pass
    if hit:
        assert exc is None or isinstance(exc, fastq.FastqError), f"{what} {point}#{k}: {exc!r}"
    elif exc is not None:
        raise exc
    return bool(hit)
