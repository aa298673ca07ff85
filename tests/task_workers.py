"""Child processes of tests/test_tasks.py (a module of its own so the "spawn" start
method can import them). Not a test module."""
from __future__ import annotations

import os
import signal
import time

import fastq
import fastq.queue.queue


def serve_until(worker, stop_file: str) -> None:
    """Let ``worker`` run until ``stop_file`` exists (the test's signal), then close it."""
    try:
        while not os.path.exists(stop_file):
            time.sleep(0.01)
    finally:
        worker.close()


QUEUE = "images"


def _note(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def run_worker(broker_dir: str, runs_file: str, stop_file: str, hold_file: str = "") -> None:
    """A worker that notes every run in ``runs_file``; a job named "hold" reports 50%
    progress and waits while ``hold_file`` exists; "sleep" sleeps data seconds. Runs until
    ``stop_file`` exists."""
    with fastq.open(broker_dir) as b:
        tq = fastq.TaskQueue(QUEUE, b)

        def handle(job):
            _note(runs_file, f"{job.id} {job.attempts_made} {os.getpid()}")
            if job.name == "hold":
                job.update_progress(50)
                while hold_file and os.path.exists(hold_file):
                    time.sleep(0.01)
                job.update_progress(100)
            elif job.name == "sleep":
                time.sleep(job.data)
            elif job.name == "stall" and job.attempts_made == 1:
                time.sleep(60)                     # the first run hangs until it is killed
            return {"pid": os.getpid(), "doubled": job.data * 2 if isinstance(job.data, int) else None}

        w = fastq.Worker(tq, handle, concurrency=2)
        serve_until(w, stop_file)


def run_worker_killed_at_ack(broker_dir: str, runs_file: str, stop_file: str) -> None:
    """As run_worker, but the process kills itself -9 when it acks a job named
    "ackkill": after the job's completion is recorded, before its message is settled."""
    real_ack = fastq.queue.queue.Message.ack

    def ack(m):
        if b'"ackkill"' in bytes(m.body):
            os.kill(os.getpid(), signal.SIGKILL)
        real_ack(m)
    fastq.queue.queue.Message.ack = ack
    run_worker(broker_dir, runs_file, stop_file)


def add_and_wait(broker_dir: str, n: int, out_file: str) -> None:
    """Adds n jobs and writes the results it waited for, one per line."""
    with fastq.open(broker_dir) as b:
        tq = fastq.TaskQueue(QUEUE, b)
        jobs = [tq.add("double", i) for i in range(n)]
        for j in jobs:
            _note(out_file, str(j.result(timeout=30)["doubled"]))


def noop_worker(broker_dir: str, n: int, out_file: str) -> None:
    """Completes jobs until n are completed, then writes the seconds it took from its first job."""
    with fastq.open(broker_dir) as b:
        tq = fastq.TaskQueue("bench", b)
        w = fastq.Worker(tq, lambda job: None)
        t0 = time.monotonic()
        while w.completed < n:
            time.sleep(0.001)
        dt = time.monotonic() - t0
        w.close()
        _note(out_file, f"{dt}")


def run_failing_worker(broker_dir: str, dead_letter: str, kill_at: str, kill_data: int, stop_file: str) -> None:
    """A worker whose handler always raises, on task queue QUEUE with ``dead_letter``.
    ``kill_at``: "before-letter" kills the process -9 when it is about to send the dead
    letter of the job whose data is ``kill_data`` (after its failure is recorded),
    "after-letter" right after sending it (before the ack), "" never. Runs until
    ``stop_file`` exists."""
    import fastq.tasks.deadletter as dl
    real_send = dl.DeadLetters.send

    def send(self, s, m):
        if kill_at == "before-letter" and s["data"] == kill_data:
            os.kill(os.getpid(), signal.SIGKILL)
        real_send(self, s, m)
        if kill_at == "after-letter" and s["data"] == kill_data:
            os.kill(os.getpid(), signal.SIGKILL)
    dl.DeadLetters.send = send

    def handle(job):
        raise ValueError(f"cannot process {job.data}")

    with fastq.open(broker_dir) as b:
        tq = fastq.TaskQueue(QUEUE, b, dead_letter=dead_letter)
        w = fastq.Worker(tq, handle)
        serve_until(w, stop_file)
