"""Child processes of tests/test_tasks_admin.py (a module of its own so the "spawn" start
method can import them). Not a test module."""
from __future__ import annotations

import os
import signal
import time

import fastq
import fastq.log.log
import fastq.tasks.admin

from task_workers import _note


def admin_op(broker_dir: str, name: str, op: str, note_file: str, batch: int, kill_at: int = -1) -> None:
    """Runs one admin operation on task queue ``name`` with ``batch`` removals per append
    (small, so that a kill lands mid-operation); notes "ready" before it and "done" after.
    ``kill_at`` >= 0: the process kills itself -9 just before its append number ``kill_at``
    (a kill that surely lands in the middle)."""
    fastq.tasks.admin.BATCH = batch
    if kill_at >= 0:
        real = fastq.log.log.Log.append_batch
        seen = [0]

        def append_batch(lg, records):
            if seen[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            seen[0] += 1
            return real(lg, records)
        fastq.log.log.Log.append_batch = append_batch
    with fastq.open(broker_dir) as b:
        tq = fastq.TaskQueue(name, b)
        _note(note_file, "ready")
        t0 = time.monotonic()
        run_op(tq, op)
        _note(note_file, f"done {time.monotonic() - t0:.4f}")


def run_op(tq, op: str, clean_state: str = "completed") -> None:
    """One admin operation of the kill and fault tests, on everything it can remove."""
    if op == "drain":
        tq.drain(delayed=True)
    elif op == "clean":
        tq.clean(0, 0, clean_state)
    elif op == "obliterate":
        tq.obliterate()
    elif op == "pause":
        tq.pause()
    else:
        raise ValueError(op)


def pause_or_resume(broker_dir: str, name: str, pause: bool) -> None:
    """Pauses (or resumes) task queue ``name`` from a process of its own, then exits."""
    with fastq.open(broker_dir) as b:
        tq = fastq.TaskQueue(name, b)
        if pause:
            tq.pause()
        else:
            tq.resume()
