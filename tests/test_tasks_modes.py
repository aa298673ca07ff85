"""Worker modes (issue 16): asyncio (its own loop, or ``await worker.run()`` in the
caller's) and process (spawned children) run jobs, retries and timeouts; a timed-out
process handler is killed and replaced; graceful close finishes active jobs in every
mode; bad handlers are clear FastqErrors."""
from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import fastq
import task_event_workers as tew
from task_event_workers import broker, tq  # noqa: F401 - fixtures


# -- asyncio ------------------------------------------------------------------------------------

def test_asyncio_worker_runs_up_to_concurrency_tasks_with_progress_retries_and_results(tq):
    live, peak = [0], [0]

    async def handle(job):
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        try:
            await job.update_progress(10)
            await asyncio.sleep(0.1)
            if job.name == "flaky" and job.attempts_made < 2:
                raise ValueError("once")
            await job.log("slept")
            return {"n": job.data, "loop": threading.current_thread().name}
        finally:
            live[0] -= 1

    jobs = [tq.add("x", i) for i in range(8)]
    flaky = tq.add("flaky", 99, attempts=2, backoff=0.05)
    with fastq.Worker(tq, handle, mode="asyncio", concurrency=4) as w:
        assert [j.result(20)["n"] for j in jobs] == list(range(8))
        assert flaky.result(20)["n"] == 99
    assert peak[0] == 4                                 # never more, and it did run them together
    assert jobs[0].progress == 10 and jobs[0].logs == ["slept"]
    assert jobs[0].return_value["loop"].endswith("-loop")
    assert flaky.attempts_made == 2 and flaky.stacktrace[0].splitlines()[-1] == "ValueError: once"
    assert w.completed == 9 and w.retried == 1 and not w.running


def test_asyncio_timeout_cancels_the_task_and_fails_the_attempt(tq):
    cancelled = []

    async def handle(job):
        if job.name == "quick":
            return "fine"
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append((job.attempts_made, time.monotonic()))
            raise

    t0 = time.monotonic()
    slow = tq.add("slow", None, timeout=0.2, attempts=2)
    quick = tq.add("quick", None, timeout=5)
    with fastq.Worker(tq, handle, mode="asyncio", concurrency=2):
        with pytest.raises(fastq.JobFailed, match=r"timed out after 0.2 s"):
            slow.result(20)
        assert quick.result(10) == "fine"
    assert [a for a, _ in cancelled] == [1, 2]          # each attempt's task was cancelled
    assert 0.2 <= cancelled[0][1] - t0 < 2.0
    assert slow.attempts_made == 2 and len(slow.stacktrace) == 2


def test_asyncio_worker_on_the_callers_loop_never_blocks_it(tq):
    async def main():
        gaps = []
        tick = asyncio.ensure_future(tew.ticker(gaps))
        w = fastq.Worker(tq, tew.adouble, mode="asyncio", concurrency=3, autorun=False)
        run = asyncio.ensure_future(w.run())
        jobs = [tq.add("d", i) for i in range(30)]
        assert [await j.wait(20) for j in jobs] == [2 * i for i in range(30)]
        assert w.running
        await w.aclose()
        await asyncio.wait_for(run, 5)
        assert not w.running and w.completed == 30
        tick.cancel()
        return gaps

    gaps = asyncio.run(main())
    assert len(gaps) > 5 and max(gaps) < 0.25, max(gaps)


def test_cancelling_an_asyncio_run_hands_its_jobs_back(tq):
    started = []

    async def handle(job):
        started.append(job.id)
        await asyncio.sleep(30)

    async def main():
        w = fastq.Worker(tq, handle, mode="asyncio", autorun=False)
        job = tq.add("long", None)
        run = asyncio.ensure_future(w.run())
        while not started:
            await asyncio.sleep(0.01)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await asyncio.get_running_loop().run_in_executor(None, w.close, 10)
        return job

    job = asyncio.run(main())
    assert job.state == "waiting" and job.stalled_count == 0
    with fastq.Worker(tq, lambda j: "ran again"):
        assert job.result(10) == "ran again"
    assert job.attempts_made == 2 and job.stalled_count == 0


# -- process ------------------------------------------------------------------------------------

def test_process_worker_runs_jobs_in_child_processes(tq):
    jobs = [tq.add("double", i) for i in range(6)]
    with fastq.Worker(tq, tew.double, mode="process", concurrency=2) as w:
        res = [j.result(60) for j in jobs]
        pids = {c.pid for c in w._children}
    assert [r["doubled"] for r in res] == [2 * i for i in range(6)]
    assert {r["pid"] for r in res} <= pids and os.getpid() not in pids and len(pids) == 2
    assert jobs[0].progress == 50 and jobs[0].logs == [f"pid {res[0]['pid']}"]   # relayed by the parent
    for pid in pids:                                   # close() stopped the children
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_process_worker_retries_failures_and_reports_the_childs_stack(tq):
    flaky = tq.add("flaky", None, attempts=3)
    bad = tq.add("bad", None)
    with fastq.Worker(tq, {"flaky": tew.flaky, "bad": tew.unstorable}, mode="process"):
        assert flaky.result(60) == 3
        with pytest.raises(fastq.JobFailed, match="result cannot be stored.*cannot encode object"):
            bad.result(60)
    assert [s.splitlines()[-1] for s in flaky.stacktrace] == ["ValueError: attempt 1 broke",
                                                               "ValueError: attempt 2 broke"]
    assert "task_event_workers.py" in flaky.stacktrace[0]     # the child's traceback
    assert bad.attempts_made == 1


def test_a_timed_out_process_handler_is_killed_and_replaced(tq):
    slow = tq.add("sleep", 30, timeout=0.3, attempts=2)
    with fastq.Worker(tq, tew.sleeper, mode="process", concurrency=1) as w:
        first = w._children[0].pid
        t0 = time.monotonic()
        with pytest.raises(fastq.JobFailed, match=r"timed out after 0.3 s") as e:
            slow.result(60)
        assert time.monotonic() - t0 < 20                  # not the 30 s the handler sleeps
        after = tq.add("sleep", 0, timeout=10)
        pid = after.result(60)
        assert pid == w._children[0].pid and pid != first  # a new child runs the next job
        assert w._children[0].alive()
    assert slow.attempts_made == 2 and e.value.reason == "timed out after 0.3 s"
    assert all(s.splitlines()[0].startswith("Traceback") or "timed out" in s for s in slow.stacktrace)
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)                                  # the timed-out child is gone


def test_a_process_child_that_dies_mid_job_fails_the_attempt_not_a_stall_and_is_replaced(tq):
    job = tq.add("die", None, attempts=2)
    coro = tq.add("async", 21)
    with fastq.Worker(tq, {"die": tew.die_once, "async": tew.adouble}, mode="process") as w:
        pid = job.result(60)
        assert pid == w._children[0].pid                   # the replacement ran the retry
        assert coro.result(60) == 42                       # async def runs under asyncio.run there
    assert job.attempts_made == 2 and job.stalled_count == 0
    assert job.stacktrace[0].startswith("the worker's child process ") and "(exit code 3)" in job.stacktrace[0]


# -- every mode --------------------------------------------------------------------------------

async def _slow_async(job):
    await asyncio.sleep(0.4)
    return "finished"


@pytest.mark.parametrize("mode", ["thread", "asyncio", "process"])
def test_close_finishes_the_active_job_in_every_mode(tq, mode):
    handler = {"thread": lambda j: time.sleep(0.4) or "finished", "asyncio": _slow_async,
               "process": tew.sleeper}[mode]
    job = tq.add("s", 0.4)
    later = tq.add("s", 0.4)
    w = fastq.Worker(tq, handler, mode=mode)
    pids = [c.pid for c in w._children]
    deadline = time.monotonic() + 60
    while job.state != "active" and time.monotonic() < deadline:
        time.sleep(0.005)
    assert w.close(60)
    assert job.state == "completed"
    assert later.state == "waiting"                     # handed back, not started
    assert len(pids) == (1 if mode == "process" else 0)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_bad_handlers_are_clear_errors(tq):
    async def coro(job):
        return 1

    def nested(job):
        return 1

    cases = [
        (lambda: fastq.Worker(tq, coro), "async: run it with mode='asyncio'"),
        (lambda: fastq.Worker(tq, {"a": print, "b": coro}), "async"),
        (lambda: fastq.Worker(tq, print, mode="asyncio"), "async def"),
        (lambda: fastq.Worker(tq, lambda j: 1, mode="process"), "cannot be pickled"),
        (lambda: fastq.Worker(tq, nested, mode="process"), "cannot be pickled"),
        (lambda: fastq.Worker(tq, 42, mode="process"), "callable"),
        (lambda: fastq.Worker(tq, print, max_stalled_count=-1), "max_stalled_count"),
        (lambda: fastq.Worker(tq, print, autorun=1), "autorun"),
    ]
    for call, words in cases:
        with pytest.raises(fastq.FastqError, match=words) as e:
            call()
        assert isinstance(e.value, ValueError)
    w = fastq.Worker(tq, print, autorun=False)
    assert not w.running and w.close()
    job = tq.add("x", 5)
    with fastq.Worker(tq, tew.double, mode="process"):
        assert job.result(60)["doubled"] == 10          # the queue keeps working
