"""Child processes of tests/test_tasks_repeat.py (a module of its own so the "spawn"
start method can import them). Not a test module."""
from __future__ import annotations

import os
import random
import time

import fastq
from task_workers import _note

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
        try:
            while not os.path.exists(stop_file):
                time.sleep(0.01)
        finally:
            w.close()
