"""Task queues (fastq.TaskQueue, Job, Worker, Backoff; issue 16's first slice): jobs
added in one process and run in another, attempts and backoff timings, delay, priority,
job_id dedup, progress across processes, failures, timeouts, retention, bad input, and
a worker killed -9 mid-job."""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import threading
import time

import pytest

import fastq
from fastq.tasks.job import JobIndex

import task_workers
from taskutil import broker, runs, tq, wait_for  # noqa: F401 - fixtures

CTX = mp.get_context("spawn")


# -- the basics --------------------------------------------------------------------------

def test_add_run_result_and_job_fields(tq):
    t0 = time.time()
    job = tq.add("resize", {"url": "u", "width": 800})
    assert job.state == "waiting" and job.name == "resize" and job.data == {"url": "u", "width": 800}
    assert job.attempts_made == 0 and job.return_value is None
    assert tq.counts() == {"waiting": 1, "delayed": 0, "active": 0, "completed": 0, "failed": 0,
                           "prioritized": 0, "paused": 0}

    def handle(j):
        j.update_progress(40)
        j.log("resizing")
        return {"path": f"/out/{j.data['width']}"}

    with fastq.Worker(tq, handle):
        assert job.result(timeout=10) == {"path": "/out/800"}
    assert job.state == "completed" and job.progress == 40 and job.logs == ["resizing"]
    assert job.attempts_made == 1 and job.failed_reason is None and job.stacktrace == []
    assert t0 - 0.01 <= job.timestamp <= job.processed_on <= job.finished_on <= time.time() + 0.01
    assert tq.counts()["completed"] == 1
    assert [j.id for j in tq.get_jobs("completed")] == [job.id]
    assert tq.get_job(job.id).return_value == {"path": "/out/800"}


def test_a_handler_per_job_name(tq):
    a = tq.add("a", 1)
    b = tq.add("b", 2)
    c = tq.add("c", 3)
    with fastq.Worker(tq, {"a": lambda j: "A", "b": lambda j: j.data * 10}):
        assert a.result(10) == "A" and b.result(10) == 20
        with pytest.raises(fastq.JobFailed, match="no handler for job name 'c'"):
            c.result(10)
    assert c.attempts_made == 1


def test_add_and_result_across_processes(tmp_path):
    """A spawned process adds jobs and waits for their results; another runs them."""
    d = str(tmp_path / "data")
    fastq.open(d).close()
    stop, runs_file, out = tmp_path / "stop", tmp_path / "runs", tmp_path / "out"
    w = CTX.Process(target=task_workers.run_worker, args=(d, str(runs_file), str(stop)))
    a = CTX.Process(target=task_workers.add_and_wait, args=(d, 20, str(out)))
    w.start()
    a.start()
    try:
        a.join(60)
        assert a.exitcode == 0
        assert sorted(int(x[0]) for x in runs(out)) == [2 * i for i in range(20)]
        pids = {r[2] for r in runs(runs_file)}
        assert pids == {str(w.pid)}                  # run by the worker process, not the adder
    finally:
        stop.touch()
        w.join(30)
    assert w.exitcode == 0


def test_progress_is_visible_from_another_process(tmp_path, broker):
    d = broker.path
    tq = fastq.TaskQueue("images", broker)
    hold, stop, runs_file = tmp_path / "hold", tmp_path / "stop", tmp_path / "runs"
    hold.touch()
    job = tq.add("hold", 1)
    w = CTX.Process(target=task_workers.run_worker, args=(d, str(runs_file), str(stop), str(hold)))
    w.start()
    try:
        wait_for(lambda: tq.get_job(job.id).progress == 50, 30, "progress 50 from the worker process")
        assert job.state == "active" and tq.counts()["active"] == 1
        hold.unlink()
        assert job.result(30)["pid"] == w.pid
        assert job.progress == 100
    finally:
        stop.touch()
        w.join(30)


# -- attempts, backoff, failures -----------------------------------------------------------

def test_attempts_with_fixed_backoff_keep_their_timing_then_fail(tq):
    starts = []

    def handle(j):
        starts.append(time.monotonic())
        raise RuntimeError(f"attempt {j.attempts_made} broke")

    job = tq.add("flaky", None, attempts=3, backoff=fastq.Backoff.fixed(0.3))
    with fastq.Worker(tq, handle):
        with pytest.raises(fastq.JobFailed) as e:
            job.result(10)
    assert len(starts) == 3
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(0.3 <= g < 0.3 + 0.25 for g in gaps), gaps
    assert e.value.reason == "RuntimeError: attempt 3 broke" and e.value.job_id == job.id
    assert job.state == "failed" and job.attempts_made == 3
    assert job.failed_reason == "RuntimeError: attempt 3 broke"
    assert [s.splitlines()[-1] for s in job.stacktrace] == [f"RuntimeError: attempt {i} broke" for i in (1, 2, 3)]
    assert tq.counts()["failed"] == 1


def test_exponential_backoff_doubles(tq):
    starts = []

    def handle(j):
        starts.append(time.monotonic())
        if j.attempts_made < 4:
            raise ValueError("not yet")
        return "done"

    job = tq.add("flaky", None, attempts=4, backoff=fastq.Backoff.exponential(0.1))
    with fastq.Worker(tq, handle):
        assert job.result(10) == "done"
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    for g, want in zip(gaps, (0.1, 0.2, 0.4)):
        assert want <= g < want + 0.25, gaps
    assert job.attempts_made == 4 and len(job.stacktrace) == 3


def test_backoff_policies_and_jitter_bounds():
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    random.seed(seed)
    b = fastq.Backoff.exponential(1.0, cap=5.0, jitter=0.5)
    for n, full in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (30, 5.0)):
        xs = [b(n) for _ in range(200)]
        assert all(full * 0.5 <= x <= full for x in xs) and max(xs) - min(xs) > 0
    assert [fastq.Backoff.exponential(0.5)(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert fastq.Backoff.fixed(2)(7) == 2.0
    assert fastq.Backoff.coerce(1.5) == fastq.Backoff.fixed(1.5)
    assert fastq.Backoff.coerce(b.to_dict()) == b
    for bad in (lambda: fastq.Backoff.fixed(-1), lambda: fastq.Backoff.exponential(1, jitter=2),
                lambda: fastq.Backoff.coerce("fast"), lambda: fastq.Backoff("linear", 1)):
        with pytest.raises(fastq.InvalidArgument):
            bad()


def test_a_timeout_cancels_through_the_token_and_fails_the_job(tq):
    seen = []

    def handle(j):
        while not j.cancelled:
            time.sleep(0.005)
        seen.append(time.monotonic())
        j.raise_if_cancelled()

    t0 = time.monotonic()
    job = tq.add("slow", None, timeout=0.2)
    ok = tq.add("quick", None, timeout=5)
    with fastq.Worker(tq, {"slow": handle, "quick": lambda j: "fine"}):
        with pytest.raises(fastq.JobFailed, match=r"timed out after 0.2 s"):
            job.result(10)
        assert ok.result(10) == "fine"
    assert 0.2 <= seen[0] - t0 < 1.0
    assert "JobCancelled" in job.stacktrace[0]


def test_a_handler_that_ignores_the_token_still_fails_past_its_timeout(tq):
    job = tq.add("slow", None, timeout=0.05)
    with fastq.Worker(tq, lambda j: time.sleep(0.15) or "late"):
        with pytest.raises(fastq.JobFailed, match="timed out"):
            job.result(10)
    assert job.return_value is None


# -- delay, priority, dedup ------------------------------------------------------------------

def test_delayed_jobs_never_run_early(tq):
    started = {}
    lock = threading.Lock()

    def handle(j):
        with lock:
            started[j.id] = time.time()

    delays = [0.25, 0.5, 0.35, 0.6, 0.0, 0.45]   # the shortest outlasts six adds on a loaded machine
    jobs = [(tq.add("d", None, delay=d), d) for d in delays]
    assert tq.counts()["delayed"] == 5 and jobs[1][0].state == "delayed"
    with fastq.Worker(tq, handle, concurrency=2):
        for j, _ in jobs:
            j.result(10)
    for j, d in jobs:
        assert started[j.id] >= j.timestamp + d - 0.002, (d, started[j.id] - j.timestamp)
        assert started[j.id] - j.timestamp < d + 0.5


def test_priority_higher_first(tq):
    order = []
    for i, p in enumerate([0, 5, 9, 1, 9, 0]):
        tq.add("p", i, priority=p)
    with fastq.Worker(tq, lambda j: order.append(j.data), batch=1):
        wait_for(lambda: len(order) == 6, what="six jobs")
    assert order == [2, 4, 1, 3, 0, 5]


def test_job_id_dedup_returns_the_existing_job(tq, broker):
    a = tq.add("once", {"v": 1}, job_id="order-7")
    b = tq.add("once", {"v": 2}, job_id="order-7")
    assert a.id == b.id == "order-7" and b.data == {"v": 1}
    other = fastq.TaskQueue("images", broker)        # another handle (a new index) sees it too
    assert other.add("once", {"v": 3}, job_id="order-7").data == {"v": 1}
    n = []
    with fastq.Worker(tq, lambda j: n.append(j.data) or "ran"):
        assert a.result(10) == "ran"
        assert tq.add("once", {"v": 4}, job_id="order-7").state == "completed"
        time.sleep(0.2)
    assert n == [{"v": 1}]
    assert tq.counts()["completed"] == 1


def test_add_bulk(tq):
    jobs = tq.add_bulk([("a", 1), ("b", 2, {"priority": 3}), ("c", 3, {"delay": 0.1, "job_id": "c1"})])
    assert [j.name for j in jobs] == ["a", "b", "c"] and jobs[2].id == "c1"
    with fastq.Worker(tq, lambda j: j.data + 1):
        assert [j.result(10) for j in jobs] == [2, 3, 4]
    with pytest.raises(fastq.InvalidArgument):
        tq.add_bulk([("a", 1, {"atempts": 2})])
    with pytest.raises(fastq.InvalidArgument):
        tq.add_bulk(["a"])
    twice = tq.add_bulk([("t", 1, {"job_id": "t"}), ("t", 2, {"job_id": "t"})])
    assert [j.id for j in twice] == ["t", "t"] and twice[1].data == 1
    assert tq.get_job("t").data == 1


# -- retention ---------------------------------------------------------------------------------

def test_remove_on_complete_and_on_fail(tq, broker):
    gone = tq.add("x", 1, remove_on_complete=True)
    kept = tq.add("x", 2)
    failed_gone = tq.add("bad", 3, remove_on_fail=True)
    with fastq.Worker(tq, {"x": lambda j: j.data, "bad": lambda j: 1 / 0}):
        assert gone.result(10) == 1                     # a waiter still gets the result
        assert kept.result(10) == 2
        with pytest.raises(fastq.JobFailed, match="ZeroDivisionError"):
            failed_gone.result(10)
    assert gone.state == "removed" and failed_gone.state == "removed"
    fresh = fastq.TaskQueue("images", broker)           # a reader starting from the topic
    with pytest.raises(fastq.UnknownJob):
        fresh.get_job(gone.id)
    with pytest.raises(fastq.UnknownJob):
        fresh.get_job(failed_gone.id)
    assert fresh.get_job(kept.id).return_value == 2
    assert fresh.counts()["completed"] == 1 and fresh.counts()["failed"] == 0


def test_remove_on_complete_count_keeps_the_latest(tq, broker):
    jobs = [tq.add("x", i, remove_on_complete=3) for i in range(8)]
    with fastq.Worker(tq, lambda j: j.data, batch=1):
        for j in jobs:
            j.result(10)
    fresh = fastq.TaskQueue("images", broker)
    assert [j.data for j in fresh.get_jobs("completed", asc=True)] == [5, 6, 7]
    assert fresh.counts()["completed"] == 3


# -- bad input ---------------------------------------------------------------------------------

def test_bad_input_is_a_clear_error_and_the_queue_keeps_working(tq):
    cases = [
        (lambda: tq.add("x", 1, atempts=3), "unknown job option"),
        (lambda: tq.add("x", 1, delay=-1), "delay"),
        (lambda: tq.add("x", 1, attempts=0), "attempts"),
        (lambda: tq.add("x", 1, attempts=-2), "attempts"),
        (lambda: tq.add("x", 1, priority=10), "priority"),
        (lambda: tq.add("x", 1, timeout=0), "timeout"),
        (lambda: tq.add("x", 1, remove_on_complete=-1), "remove_on_complete"),
        (lambda: tq.add("", 1), "job name"),
        (lambda: tq.add("x", 1, job_id=""), "job_id"),
        (lambda: tq.add("x", object()), "cannot encode"),
        (lambda: fastq.Worker(tq, "not callable"), "handler"),
        (lambda: fastq.Worker(tq, {"a": 1}), "handler"),
        (lambda: fastq.Worker(tq, print, mode="fiber"), "mode"),
        (lambda: fastq.Worker(tq, print, concurrency=0), "concurrency"),
        (lambda: tq.get_jobs(["done"]), "unknown job state"),
    ]
    for call, words in cases:
        with pytest.raises(fastq.FastqError, match=words) as e:
            call()
        assert isinstance(e.value, ValueError)
    with pytest.raises(fastq.InvalidName):
        fastq.TaskQueue("no/slash", tq.broker)
    with pytest.raises(fastq.UnknownJob):
        tq.get_job("nope")
    assert sum(tq.counts().values()) == 0               # nothing half-added

    bad = tq.add("r", 1)
    good = tq.add("g", 2)
    with fastq.Worker(tq, {"r": lambda j: object(), "g": lambda j: "ok"}):
        with pytest.raises(fastq.JobFailed, match="result cannot be stored.*cannot encode object") as e:
            bad.result(10)
        assert good.result(10) == "ok"
    assert isinstance(e.value, fastq.FastqError)
    assert bad.attempts_made == 1


def test_result_timeout_and_worker_only_calls(tq):
    job = tq.add("never", None)
    with pytest.raises(fastq.Timeout):
        job.result(timeout=0.05)
    with pytest.raises(fastq.InvalidArgument, match="handler running it"):
        job.update_progress(5)


# -- worker lifetime and crashes ---------------------------------------------------------------

def test_close_finishes_the_active_job(tq):
    began = threading.Event()

    def handle(j):
        began.set()
        time.sleep(0.2)
        return "finished"

    job = tq.add("s", None)
    later = tq.add("s", None)
    w = fastq.Worker(tq, handle)
    assert began.wait(10)
    assert w.close(10)
    assert job.state == "completed" and job.return_value == "finished"
    assert later.state == "waiting"                     # handed back, not started


def _start(target, *args):
    p = CTX.Process(target=target, args=args)
    p.start()
    return p


def _kill(p) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert p.exitcode == -signal.SIGKILL


def test_a_worker_killed_mid_job_its_job_completes_in_another_then_never_runs_again(tmp_path, broker):
    d = broker.path
    tq = fastq.TaskQueue("images", broker)
    runs_file = str(tmp_path / "runs")
    job = tq.add("stall", 21)                            # its first run hangs
    a = _start(task_workers.run_worker, d, runs_file, str(tmp_path / "stop-a"))
    try:
        wait_for(lambda: any(r[0] == job.id for r in runs(runs_file)), 30, "the job to start")
        assert job.state == "active" and job.attempts_made == 1
    finally:
        _kill(a)
    t_kill = time.monotonic()
    b = _start(task_workers.run_worker, d, runs_file, str(tmp_path / "stop-b"))
    try:
        assert job.result(30)["doubled"] == 42
        mine = [r for r in runs(runs_file) if r[0] == job.id]
        assert [r[1] for r in mine] == ["1", "2"] and mine[1][2] == str(b.pid)
        assert job.attempts_made == 2 and job.state == "completed"
        assert time.monotonic() - t_kill < 20            # not after a 30 s lease: the dead consumer was found
    finally:
        _kill(b)
    c = _start(task_workers.run_worker, d, runs_file, str(tmp_path / "stop-c"))
    try:
        sentinel = tq.add("double", 5)                   # c is up and running jobs
        assert sentinel.result(30)["doubled"] == 10
        time.sleep(0.2)
    finally:
        (tmp_path / "stop-c").touch()
        c.join(30)
    assert sum(r[0] == job.id for r in runs(runs_file)) == 2
    assert tq.counts()["completed"] == 2


def test_killed_after_completion_before_the_ack_the_job_is_not_run_again(tmp_path, broker):
    """The worker records "completed", then dies before settling the message: the
    message is redelivered, and the next worker acks it without running the job."""
    d = broker.path
    tq = fastq.TaskQueue("images", broker)
    runs_file = str(tmp_path / "runs")
    job = tq.add("ackkill", 4)
    a = _start(task_workers.run_worker_killed_at_ack, d, runs_file, str(tmp_path / "stop-a"))
    a.join(30)
    assert a.exitcode == -signal.SIGKILL
    assert job.result(1)["doubled"] == 8                  # recorded before the kill
    b = _start(task_workers.run_worker, d, runs_file, str(tmp_path / "stop-b"))
    try:
        sentinel = tq.add("double", 1)
        assert sentinel.result(30)["doubled"] == 2
        wait_for(lambda: tq.queue.depth().in_flight == 0 and tq.queue.depth().ready == 0, 10,
                 "the redelivered message to be settled")
    finally:
        (tmp_path / "stop-b").touch()
        b.join(30)
    assert [r[0] for r in runs(runs_file)].count(job.id) == 1
    assert job.state == "completed" and job.attempts_made == 1
