"""A thread worker's settling inside a received batch (32 messages for concurrency 1): a
completed job is recorded completed (and acked) before the next handler runs, its events
stay after its state, and a worker killed -9 mid-batch leaves the jobs it finished completed
(never run again) and the one it was running stalled — whatever the worker does to save
appends (a batched settle was tried and measured slower, see docs/BENCHMARKS.md)."""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

import fastq
from task_event_workers import broker, tq, wait_for  # noqa: F401 - fixtures

CTX = mp.get_context("spawn")
N = 50
KILL_AT = 10                     # inside the first received batch (32)


def test_a_completion_is_recorded_before_the_next_handler_runs(tq):
    tq.add_bulk([("x", i) for i in range(N)])
    order: list[str] = []
    wrong: list = []
    done = threading.Event()

    def handler(job):
        if order:
            prev = tq.get_job(order[-1])
            if prev.state != "completed":
                wrong.append((order[-1], prev.state))
        order.append(job.id)
        if len(order) == N:
            done.set()
        return job.data * 2

    w = fastq.Worker(tq, handler)                          # concurrency 1: batches of 32
    assert done.wait(30)
    w.close()
    assert wrong == []
    assert w.completed == N
    wait_for(lambda: tq.counts()["completed"] == N, 10, "every job completed")
    assert sorted(tq.get_job(j).return_value for j in order) == [2 * i for i in range(N)]


def test_events_follow_their_states_in_a_batch(tq):
    ev = tq.events()
    jobs = tq.add_bulk([("x", i) for i in range(N)])
    with fastq.Worker(tq, lambda j: j.data):
        wait_for(lambda: tq.counts()["completed"] == N, 30, "every job completed")
    seen = []
    while len(seen) < 4 * N:
        got = ev.poll(5)
        assert got, f"{len(seen)} events of {4 * N}"
        seen.extend(got)
    ev.close()
    by_job: dict = {}
    for e in seen:
        by_job.setdefault(e.job_id, []).append(e.event)
    assert all(by_job[j.id] == ["added", "waiting", "active", "completed"] for j in jobs)
    # each completed event is written before the next job's active one
    run_order = [e.job_id for e in seen if e.event == "active"]
    at = {(e.event, e.job_id): e.offset for e in seen}
    for a, b in zip(run_order, run_order[1:]):
        assert at[("completed", a)] < at[("active", b)]


def _killed_mid_batch(path: str) -> None:
    """A worker process whose handler dies on job data KILL_AT (os._exit: no cleanup)."""
    with fastq.open(path) as b:
        tq = fastq.TaskQueue("settle", b)

        def handler(job):
            if job.data == KILL_AT:
                os._exit(9)
            return job.data

        fastq.Worker(tq, handler)
        time.sleep(60)                                   # the handler ends this process


def test_a_worker_killed_mid_batch_leaves_finished_jobs_completed(tmp_path):
    path = str(tmp_path / "data")
    with fastq.open(path) as b:
        tq = fastq.TaskQueue("settle", b)
        jobs = tq.add_bulk([("x", i) for i in range(N)])
        p = CTX.Process(target=_killed_mid_batch, args=(path,))
        p.start()
        p.join(60)
        assert p.exitcode == 9
        states = [tq.get_job(j.id).state for j in jobs]
        assert states[:KILL_AT] == ["completed"] * KILL_AT       # recorded before job KILL_AT started
        assert states[KILL_AT] == "active"                       # it died running this one
        assert set(states[KILL_AT + 1:]) == {"waiting"}
        ran: list = []
        lock = threading.Lock()

        def handler(job):
            with lock:
                ran.append(job.data)
            return job.data

        w = fastq.Worker(tq, handler)
        try:
            wait_for(lambda: tq.counts()["completed"] == N, 60, "every job completed")
        finally:
            w.close()
        assert sorted(ran) == list(range(KILL_AT, N))             # none of the finished ones again
        k = tq.get_job(jobs[KILL_AT].id)
        assert k.stalled_count == 1 and k.state == "completed"
        tq.close()
