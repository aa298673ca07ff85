"""Child processes of tests/test_tasks_repeat.py (a module of its own so the "spawn"
start method can import them). Not a test module."""
from __future__ import annotations

import os
import random
import signal
import time

import fastq
from task_workers import _note, serve_until

QUEUE = "cron"
SCHEDULER = "tick"


def run_scheduler_and_worker(broker_dir: str, runs_file: str, stop_file: str, every: float,
                             missed: str = "all") -> None:
    """What every process of an application does: upsert the scheduler at start (the same
    definition each time) and run a worker. Each run is noted as ``job_id tick_ms
    attempts_made pid``; the handler takes 0-40 ms so that kills land mid-job too. Runs
    until ``stop_file`` exists."""
    with fastq.open(broker_dir) as b:
        tq = fastq.TaskQueue(QUEUE, b)
        tq.upsert_job_scheduler(SCHEDULER, {"every": every, "missed": missed}, name="tick", data={"n": 1})
        rnd = random.Random(os.getpid())

        def handle(job):
            _note(runs_file, f"{job.id} {job.opts['repeat']['tick_ms']} {job.attempts_made} {os.getpid()}")
            time.sleep(rnd.random() * 0.04)

        w = fastq.Worker(tq, handle, concurrency=2)
        serve_until(w, stop_file)


def run_killed_between_tick_state_and_message(broker_dir: str, runs_file: str, stop_file: str, every: float,
                                              seq: int) -> None:
    """As run_scheduler_and_worker, but the process kills itself -9 when it publishes the
    message of tick ``seq``: after that tick's job state was written, before its message."""
    import fastq.queue.queue as qmod
    real = qmod.Queue.publish

    def publish(self, *args, **kwargs):
        dd = kwargs.get("dedup_id")
        if isinstance(dd, str) and dd.partition(":")[2].startswith("repeat:") and dd.endswith(f":{seq}"):  # <gen>:<id>
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *args, **kwargs)
    qmod.Queue.publish = publish
    run_scheduler_and_worker(broker_dir, runs_file, stop_file, every)


def run_flipping_definitions(broker_dir: str, runs_file: str, stop_file: str) -> None:
    """A worker, and a loop that upserts one of two definitions of the scheduler (the same
    50 ms grid, different data) every 0-60 ms, as processes of a rolling deploy would.
    Runs are noted as in run_scheduler_and_worker."""
    with fastq.open(broker_dir) as b:
        tq = fastq.TaskQueue(QUEUE, b)
        rnd = random.Random(os.getpid())

        def handle(job):
            _note(runs_file, f"{job.id} {job.opts['repeat']['tick_ms']} {job.attempts_made} {os.getpid()}")

        w = fastq.Worker(tq, handle, concurrency=2)
        try:
            while not os.path.exists(stop_file):
                tq.upsert_job_scheduler(SCHEDULER, {"every": 0.05, "missed": "all"}, name="tick",
                                        data={"v": rnd.randrange(2)})
                time.sleep(rnd.random() * 0.06)
        finally:
            w.close()
