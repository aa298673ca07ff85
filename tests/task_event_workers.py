"""Child processes and importable handlers of tests/test_tasks_events.py and
tests/test_tasks_modes.py (a module of its own so spawned processes can import them).
Not a test module: the fixtures ``broker`` and ``tq`` are imported by those modules."""
from __future__ import annotations

import asyncio
import os
import time

import fastq
from task_workers import _note as note
from taskutil import broker, tq  # noqa: F401 - fixtures, re-exported to the test modules

QUEUE = "images"


def wait_for(cond, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def lines(path) -> list[list[str]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [ln.split() for ln in f.read().splitlines() if ln]


async def ticker(gaps: list) -> None:
    """Appends the gap between wake-ups of a 10 ms sleep loop: a blocked loop shows as a long gap."""
    last = time.monotonic()
    while True:
        await asyncio.sleep(0.01)
        now = time.monotonic()
        gaps.append(now - last)
        last = now


# -- handlers for process mode (importable, so picklable) ------------------------------------

def double(job):
    job.update_progress(50)
    job.log(f"pid {os.getpid()}")
    return {"pid": os.getpid(), "doubled": job.data * 2}


def flaky(job):
    if job.attempts_made < 3:
        raise ValueError(f"attempt {job.attempts_made} broke")
    return job.attempts_made


def sleeper(job):
    time.sleep(job.data)
    return os.getpid()


def die_once(job):
    if job.attempts_made == 1:
        os._exit(3)                                # the child dies mid-job (not a timeout)
    return os.getpid()


def unstorable(job):
    return object()


async def adouble(job):
    await asyncio.sleep(0.001)
    return job.data * 2


# -- a listener in another process -------------------------------------------------------------

def listen(broker_dir: str, job_id: str, out_file: str, ready_file: str) -> None:
    """Writes what job.on and QueueEvents deliver for ``job_id`` until it completes."""
    with fastq.open(broker_dir) as b:
        tq = fastq.TaskQueue(QUEUE, b)
        done = []
        with tq.events() as ev:
            ev.on("progress", lambda e: e.job_id == job_id and note(out_file, f"qe-progress {e.data['progress']}"))
            ev.on("completed", lambda e: e.job_id == job_id and note(out_file, "qe-completed"))
            job = tq.get_job(job_id)
            job.on("progress", lambda p: note(out_file, f"job-progress {p}"))
            job.on("completed", lambda r: (note(out_file, f"job-completed {r['doubled']}"), done.append(1)))
            note(ready_file, "ready")
            deadline = time.monotonic() + 60
            while not done and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)                        # the QueueEvents listener's line too
        tq.close()


# -- workers killed in a loop ------------------------------------------------------------------

def kill_loop_handle(job):
    """Notes the run in ``data["runs"]``; a job named "hang" hangs on every run until its
    worker is killed, others sleep ``data["d"]`` seconds. Importable: used in every mode."""
    note(job.data["runs"], f"{job.id} {job.attempts_made} {os.getpid()} {time.time():.6f}")
    if job.name == "hang":
        time.sleep(3600)
    time.sleep(job.data["d"])
    return os.getpid()


def kill_loop_worker(broker_dir: str, mode: str, ready_file: str, max_stalled_count: int = 1) -> None:
    """A worker (``mode``) of kill_loop_handle that runs until it is killed."""
    with fastq.open(broker_dir) as b:
        tq = fastq.TaskQueue(QUEUE, b)
        handler = akill_loop_handle if mode == "asyncio" else kill_loop_handle
        w = fastq.Worker(tq, handler, mode=mode, concurrency=2, max_stalled_count=max_stalled_count)
        note(ready_file, f"{os.getpid()} {mode}")
        try:
            while True:
                time.sleep(1)
        finally:
            w.close()


async def akill_loop_handle(job):
    """kill_loop_handle for asyncio workers."""
    note(job.data["runs"], f"{job.id} {job.attempts_made} {os.getpid()} {time.time():.6f}")
    if job.name == "hang":
        await asyncio.sleep(3600)
    await asyncio.sleep(job.data["d"])
    return os.getpid()
