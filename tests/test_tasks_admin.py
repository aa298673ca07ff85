"""Task-queue administration (fastq.tasks.admin, fastq.tasks.control): counts in every
BullMQ state, paging, pause/resume across processes and restarts, remove, drain, clean,
retry, promote, obliterate, retention by count / age / both, bad input, and kill -9 of a
process in the middle of drain, clean and obliterate (FASTQ_TORTURE=1: a longer loop)."""
from __future__ import annotations

import collections
import multiprocessing as mp
import os
import random
import signal
import threading
import time

import pytest

import fastq
from fastq.tasks.admin import COUNT_STATES

import task_admin_workers
import task_workers
from taskutil import broker, runs, tq, wait_for  # noqa: F401 - fixtures

CTX = mp.get_context("spawn")
TORTURE = os.environ.get("FASTQ_TORTURE") == "1"


def _start(target, *args):
    p = CTX.Process(target=target, args=args)
    p.start()
    return p


def _stop(p, stop_file) -> None:
    open(stop_file, "w").close()
    p.join(30)
    assert p.exitcode == 0


class Recorder:
    """A handler that records every run; jobs named "hold" wait for ``release``."""

    def __init__(self):
        self.ran = []
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, job):
        with self.lock:
            self.ran.append(job.id)
        if job.name == "hold":
            assert self.release.wait(30)
        if job.name == "fail":
            raise ValueError(f"boom {job.data}")
        return job.data


def _settled(tq) -> bool:
    d = tq.queue.depth()
    return d.ready == 0 and d.in_flight == 0


def _records(tq) -> list:
    """(key, state or None) of every record of the job-state topic, in order."""
    out = []
    for r in tq.topic.read(0):
        out.append((bytes(r.key), None if r.value is None else fastq.tasks.job.decode_state(r.value)))
    return out


def _live_states(tq) -> list:
    """The latest record of each job that is a job state (what compaction would keep,
    less tombstones)."""
    latest = dict(_records(tq))
    return [s for s in latest.values() if s is not None]


# -- counts and paging ---------------------------------------------------------------------

def test_counts_in_every_bullmq_state_and_the_count_helpers(tq):
    rec = Recorder()
    done = tq.add("plain", 1)
    bad = tq.add("fail", 2)
    with fastq.Worker(tq, rec):
        assert done.result(10) == 1
        with pytest.raises(fastq.JobFailed):
            bad.result(10)
        hold = tq.add("hold", 3)
        wait_for(lambda: hold.state == "active", what="the hold job to start")
        tq.add("wait", 4)                               # behind the hold job (concurrency 1)
        tq.add("prio", 5, priority=4)
        tq.add("later", 6, delay=60)
        c = tq.counts()
        assert c == {"waiting": 1, "active": 1, "delayed": 1, "prioritized": 1, "completed": 1, "failed": 1,
                     "paused": 0}
        assert list(c) == list(COUNT_STATES)
        tq.pause()
        c = tq.counts()
        assert c["paused"] == 1 and c["waiting"] == 0 and c["prioritized"] == 1     # BullMQ v5
        assert tq.get_waiting_count() == 1                                        # waiting includes paused
        assert tq.get_paused_count() == 1 and tq.get_prioritized_count() == 1
        assert tq.get_active_count() == 1 and tq.get_delayed_count() == 1
        assert tq.get_completed_count() == 1 and tq.get_failed_count() == 1
        assert tq.count() == 3                                                    # still to run
        assert tq.get_job_counts("failed", "completed") == {"completed": 1, "failed": 1}
        assert tq.get_job_count_by_types("waiting", "delayed") == 2
        assert {j.name for j in tq.get_jobs("waiting")} == {"wait"}               # the paused one
        assert {j.name for j in tq.get_jobs(["paused", "prioritized"])} == {"wait", "prio"}
        tq.resume()
        rec.release.set()
    assert tq.counts()["paused"] == 0


def test_get_jobs_pages_newest_first_or_oldest_first(tq):
    rec = Recorder()
    jobs = [tq.add("plain", i) for i in range(10)]
    with fastq.Worker(tq, rec):
        for j in jobs:
            j.result(10)
    order = [j.data for j in tq.get_jobs("completed")]
    assert order == list(range(9, -1, -1))                        # newest first (BullMQ's default)
    assert [j.data for j in tq.get_jobs("completed", asc=True)] == list(range(10))
    assert [j.data for j in tq.get_jobs("completed", 0, 2)] == [9, 8, 7]           # end inclusive
    assert [j.data for j in tq.get_jobs("completed", 3, 4, asc=True)] == [3, 4]
    assert [j.data for j in tq.get_jobs("completed", 8)] == [1, 0]
    assert tq.get_jobs("completed", 20) == []
    w = tq.add("plain", 99, delay=60)
    assert [j.id for j in tq.get_jobs(["delayed", "completed"], 0, 0)] == [w.id]
    assert [j.id for j in tq.get_jobs("wait")] == []                               # BullMQ's alias


# -- pause and resume ---------------------------------------------------------------------

def test_pause_in_one_process_stops_a_worker_in_another_and_resume_restarts_it(tmp_path, broker):
    d = broker.path
    tq = fastq.TaskQueue(task_workers.QUEUE, broker)
    runs_file, stop, hold = str(tmp_path / "runs"), str(tmp_path / "stop"), tmp_path / "hold"
    w = _start(task_workers.run_worker, d, runs_file, stop, str(hold))
    try:
        first = tq.add("double", 1)
        assert first.result(30)["pid"] == w.pid                     # the worker process is up
        hold.touch()
        running = tq.add("hold", 2)
        wait_for(lambda: running.progress == 50, 30, "the hold job to start")
        tq.pause()                                                   # while a job is active
        assert tq.is_paused()
        jobs = [tq.add("double", i) for i in range(5)]
        hold.unlink()
        assert running.result(30)["doubled"] == 4                    # the active job finishes
        time.sleep(0.5)
        assert {r[0] for r in runs(runs_file)}.isdisjoint(j.id for j in jobs)     # nothing new started
        assert all(j.state == "waiting" for j in jobs)
        c = tq.counts()
        assert c["paused"] == 5 and c["waiting"] == 0
        p = _start(task_admin_workers.pause_or_resume, d, task_workers.QUEUE, False)  # a third process
        p.join(30)
        assert p.exitcode == 0
        assert not tq.is_paused()
        assert [j.result(30)["doubled"] for j in jobs] == [0, 2, 4, 6, 8]
        assert all(r[2] == str(w.pid) for r in runs(runs_file))
    finally:
        _stop(w, stop)


def test_a_worker_paused_from_another_process_holds_nothing_and_runs_everything_once(tmp_path, broker):
    tq = fastq.TaskQueue("images", broker)
    rec = Recorder()
    with fastq.Worker(tq, rec, concurrency=3):
        p = _start(task_admin_workers.pause_or_resume, broker.path, "images", True)
        p.join(30)
        assert p.exitcode == 0
        wait_for(tq.is_paused, what="the other process's pause")
        jobs = [tq.add("plain", i) for i in range(20)]
        time.sleep(0.4)
        assert rec.ran == [] and tq.counts()["paused"] == 20
        tq.resume()
        assert [j.result(30) for j in jobs] == list(range(20))
    assert sorted(collections.Counter(rec.ran).values()) == [1] * 20


def test_pause_survives_reopening_the_broker(tmp_path):
    d = tmp_path / "data"
    with fastq.open(d) as b:
        tq = fastq.TaskQueue("images", b)
        tq.pause()
        tq.pause()                                                   # idempotent
        job = tq.add("plain", 7)
    with fastq.open(d) as b:
        tq = fastq.TaskQueue("images", b)
        assert tq.is_paused()
        rec = Recorder()
        with fastq.Worker(tq, rec):
            time.sleep(0.3)
            assert rec.ran == [] and tq.get_job(job.id).state == "waiting"
            tq.resume()
            assert tq.get_job(job.id).result(10) == 7
        assert not tq.is_paused()


# -- remove ---------------------------------------------------------------------------------

def test_removed_jobs_never_run(tq):
    rec = Recorder()
    waiting = tq.add("plain", 1)
    delayed = tq.add("plain", 2, delay=0.3)
    prio = tq.add("plain", 3, priority=5)
    keep = tq.add("plain", 4)
    tq.remove(waiting.id)
    delayed.remove()
    tq.remove(prio.id)
    assert waiting.state == "removed" and tq.counts() == dict.fromkeys(COUNT_STATES, 0) | {"waiting": 1}
    with pytest.raises(fastq.UnknownJob):
        tq.get_job(waiting.id)
    with pytest.raises(fastq.UnknownJob, match="removed before it finished"):
        waiting.result(1)
    with fastq.Worker(tq, rec):
        assert keep.result(10) == 4
        time.sleep(0.5)                                              # past the delayed job's due time
        wait_for(lambda: _settled(tq) and tq.queue.depth().delayed == 0, what="the removed messages to go")
    assert rec.ran == [keep.id]


def test_remove_across_processes_a_removed_job_is_never_run_by_the_other_processs_worker(tmp_path, broker):
    d = broker.path
    tq = fastq.TaskQueue(task_workers.QUEUE, broker)
    runs_file, stop = str(tmp_path / "runs"), str(tmp_path / "stop")
    tq.pause()
    w = _start(task_workers.run_worker, d, runs_file, stop)
    try:
        doomed = [tq.add("double", i) for i in range(10)]
        kept = [tq.add("double", i) for i in range(10, 15)]
        for j in doomed:
            j.remove()
        tq.resume()
        assert [j.result(30)["doubled"] for j in kept] == [20, 22, 24, 26, 28]
        wait_for(lambda: _settled(tq), 30, "the removed jobs' messages to be dropped")
    finally:
        _stop(w, stop)
    ran = {r[0] for r in runs(runs_file)}
    assert ran == {j.id for j in kept}


def test_remove_refuses_an_active_job_and_an_unknown_one(tq):
    rec = Recorder()
    with fastq.Worker(tq, rec):
        hold = tq.add("hold", 1)
        wait_for(lambda: hold.state == "active", what="the job to start")
        with pytest.raises(fastq.JobActive, match="active"):
            hold.remove()
        with pytest.raises(fastq.UnknownJob):
            tq.remove("no-such-job")
        with pytest.raises(fastq.InvalidArgument):
            tq.remove(42)
        rec.release.set()
        assert hold.result(10) == 1
    hold.remove()                                                    # finished: removable
    assert tq.counts()["completed"] == 0
    assert tq.add("plain", 5).id                                     # the queue keeps working


def test_a_job_id_added_again_after_its_removal_runs_once_with_its_new_data(tq):
    rec = Recorder()
    first = tq.add("plain", "old", job_id="report")
    tq.remove("report")
    again = tq.add("plain", "new", job_id="report")
    assert again.data == "new"
    with fastq.Worker(tq, rec):
        assert again.result(10) == "new"
        wait_for(lambda: _settled(tq), what="the old message to be dropped")
        tq.remove("report")                                           # completed: removable
        third = tq.add("plain", "third", job_id="report")
        assert third.result(10) == "third"
    assert rec.ran == ["report", "report"] and first.id == "report"
    fresh = fastq.TaskQueue("images", tq.broker)                      # a reader from the start
    assert fresh.get_job("report").data == "third"


# -- drain and clean ------------------------------------------------------------------------

def test_drain_removes_waiting_and_on_request_delayed_jobs(tq):
    rec = Recorder()
    with fastq.Worker(tq, rec):
        hold = tq.add("hold", 0)
        wait_for(lambda: hold.state == "active", what="the hold job to start")
        tq.pause()
        waiting = [tq.add("plain", i) for i in range(5)] + [tq.add("plain", 9, priority=3)]
        delayed = [tq.add("plain", i, delay=0.4) for i in range(3)]
        assert tq.drain() == 6
        c = tq.counts()
        assert c["waiting"] == c["paused"] == c["prioritized"] == 0 and c["delayed"] == 3 and c["active"] == 1
        assert tq.drain(delayed=True) == 3
        assert tq.counts()["delayed"] == 0 and hold.state == "active"
        tq.resume()
        rec.release.set()
        assert hold.result(10) == 0
        time.sleep(0.6)                                               # past the delayed jobs' due time
        wait_for(lambda: _settled(tq) and tq.queue.depth().delayed == 0, what="the drained messages to go")
    assert rec.ran == [hold.id]
    assert all(j.state == "removed" for j in waiting + delayed)
    assert tq.drain() == 0


def test_clean_removes_what_is_older_than_grace_up_to_limit(tq):
    rec = Recorder()
    with fastq.Worker(tq, rec):
        old = [tq.add("plain", i) for i in range(4)]
        for j in old:
            j.result(10)
        bad = tq.add("fail", 1)
        with pytest.raises(fastq.JobFailed):
            bad.result(10)
        time.sleep(0.3)
        new = [tq.add("plain", i) for i in range(3)]
        for j in new:
            j.result(10)
    assert tq.clean(0.2, 2) == [old[0].id, old[1].id]                 # oldest first, limit 2
    assert tq.clean(0.2, 0) == [old[2].id, old[3].id]                 # 0: no limit
    assert tq.clean(0.2) == []                                         # the new ones are younger
    assert tq.counts()["completed"] == 3
    assert tq.clean(0.2, state="failed") == [bad.id]
    later = tq.add("plain", 1, delay=60)
    w = tq.add("plain", 2)
    time.sleep(0.05)
    assert tq.clean(0.01, state="delayed") == [later.id]
    assert tq.clean(10, state="waiting") == []
    assert tq.clean(0, state="wait") == [w.id]
    assert tq.counts() == dict.fromkeys(COUNT_STATES, 0) | {"completed": 3}


# -- retry and promote ---------------------------------------------------------------------

def test_retry_failed_runs_failed_jobs_again_with_their_attempts_anew(tq):
    tries = collections.Counter()

    def handler(job):
        tries[job.id] += 1
        if tries[job.id] <= 2:
            raise ValueError(f"try {tries[job.id]}")
        return job.attempts_made

    jobs = [tq.add("x", i, attempts=2) for i in range(3)]
    with fastq.Worker(tq, handler):
        for j in jobs:
            with pytest.raises(fastq.JobFailed):
                j.result(10)
        assert tq.retry_failed(count=2) == [jobs[0].id, jobs[1].id]    # oldest failure first
        assert jobs[0].result(10) == 1 and jobs[1].result(10) == 1     # attempts start over
        assert jobs[2].state == "failed"
        jobs[2].retry()
        assert jobs[2].result(10) == 1
        assert len(jobs[2].stacktrace) == 2                            # the earlier failures are kept
        with pytest.raises(fastq.JobStateError, match="is completed, not failed"):
            jobs[2].retry()
        jobs[2].retry("completed")
        assert jobs[2].result(10) == 1 and tries[jobs[2].id] == 4
    assert tq.retry_failed() == []
    assert tries == {jobs[0].id: 3, jobs[1].id: 3, jobs[2].id: 4}


def test_promote_runs_a_delayed_job_now_and_never_again_when_its_old_time_comes(tq):
    rec = Recorder()
    a = tq.add("plain", 1, delay=0.5)
    b = tq.add("plain", 2, delay=60)
    c = tq.add("plain", 3, delay=60)
    now = tq.add("plain", 4)
    with pytest.raises(fastq.JobStateError, match="not delayed"):
        now.promote()
    with fastq.Worker(tq, rec):
        t0 = time.monotonic()
        a.promote()
        assert a.result(5) == 1 and time.monotonic() - t0 < 0.4         # before its delay
        assert tq.promote(count=1) == [b.id]
        assert b.result(5) == 2 and c.state == "delayed"
        assert tq.promote() == [c.id]
        assert c.result(5) == 3
        time.sleep(0.6)                                                # a's old message comes due
        wait_for(lambda: _settled(tq) and tq.queue.depth().delayed == 2, what="a's stale message to go")
    assert sorted(rec.ran) == sorted([a.id, b.id, c.id, now.id])       # each once; b's, c's stale wait


def test_promoting_a_retry_waiting_for_its_backoff_keeps_counting_attempts(tq):
    seen = []

    def handler(job):
        seen.append(job.attempts_made)
        raise ValueError("always")

    job = tq.add("x", 0, attempts=3, backoff=fastq.Backoff.fixed(60))
    with fastq.Worker(tq, handler):
        wait_for(lambda: job.state == "delayed", what="the first failure")
        job.promote()
        wait_for(lambda: seen == [1, 2] and job.state == "delayed", what="the second failure")
        job.promote()
        with pytest.raises(fastq.JobFailed):
            job.result(10)
    assert seen == [1, 2, 3] and job.attempts_made == 3


# -- retention ------------------------------------------------------------------------------

def _complete(tq, n, **opts):
    jobs = []
    with fastq.Worker(tq, lambda j: j.data):
        for i in range(n):
            j = tq.add("plain", i, **opts)
            j.result(10)
            jobs.append(j)
    return jobs


def test_remove_on_complete_count_keeps_exactly_the_newest(tq, broker):
    _complete(tq, 7, remove_on_complete=3)
    fresh = fastq.TaskQueue("images", broker)
    assert [j.data for j in fresh.get_jobs("completed", asc=True)] == [4, 5, 6]
    _complete(tq, 2, remove_on_complete=0)
    assert tq.counts()["completed"] == 0


def test_remove_on_complete_by_age_and_by_age_and_count(tq, broker):
    old = _complete(tq, 3, remove_on_complete={"age": 0.3})
    assert tq.counts()["completed"] == 3                              # all younger than 0.3 s
    time.sleep(0.4)
    new = _complete(tq, 1, remove_on_complete={"age": 0.3})
    assert [j.id for j in tq.get_jobs("completed")] == [new[0].id]     # the old ones aged out
    assert all(j.state == "removed" for j in old)
    both = _complete(tq, 5, remove_on_complete={"age": 60, "count": 2})
    assert [j.id for j in fastq.TaskQueue("images", broker).get_jobs("completed", asc=True)] == \
        [both[3].id, both[4].id]
    time.sleep(0.4)
    last = _complete(tq, 1, remove_on_complete={"age": 0.3, "count": 5})
    assert [j.id for j in tq.get_jobs("completed")] == [last[0].id]


def test_remove_on_fail_keeps_what_it_says_and_leaves_completed_alone(tq):
    def handler(job):
        if job.name == "fail":
            raise ValueError("no")
        return 1

    with fastq.Worker(tq, handler):
        ok = tq.add("ok", 0)
        ok.result(10)
        for i in range(4):
            j = tq.add("fail", i, remove_on_fail={"count": 1})
            with pytest.raises(fastq.JobFailed):
                j.result(10)
        gone = tq.add("fail", 9, remove_on_fail=True)
        with pytest.raises(fastq.JobFailed):
            gone.result(10)                                           # the waiter still gets the outcome
    assert [j.data for j in tq.get_jobs("failed")] == [3]
    assert gone.state == "removed" and ok.state == "completed"


def test_bad_retention_options_are_clear_errors(tq):
    for bad in ({"age": -1}, {"count": -2}, {"age": "1"}, {}, {"ages": 1}, -1, 1.5, "3", {"count": True}):
        with pytest.raises(fastq.InvalidArgument, match="remove_on_complete"):
            tq.add("plain", 1, remove_on_complete=bad)
    assert sum(tq.counts().values()) == 0
    j = tq.add("plain", 1, remove_on_fail={"age": 3600})
    assert j.opts["remove_on_fail"] == {"age": 3600.0}


# -- obliterate -----------------------------------------------------------------------------

def test_obliterate_leaves_nothing_and_the_queue_works_after(tq, broker):
    rec = Recorder()
    with fastq.Worker(tq, rec):
        [tq.add("plain", i).result(10) for i in range(3)]
        with pytest.raises(fastq.JobFailed):
            tq.add("fail", 1).result(10)
    tq.add("plain", 5)
    tq.add("plain", 6, delay=60, job_id="later")
    tq.add("plain", 7, priority=2)
    tq.upsert_job_scheduler("every-minute", {"every": 60})           # its pending tick is a job too
    tq.pause()
    assert tq.obliterate() == 8
    assert tq.get_job_schedulers() == []
    assert tq.counts() == dict.fromkeys(COUNT_STATES, 0)
    d = tq.queue.depth()
    assert (d.ready, d.delayed, d.in_flight) == (0, 0, 0)
    assert all(s is None for _, s in _records(tq))                     # only removals remain
    assert not tq.is_paused()                                          # as BullMQ: a fresh queue
    fresh = fastq.TaskQueue("images", broker)
    assert fresh.counts() == dict.fromkeys(COUNT_STATES, 0) and fresh.get_jobs() == []
    with fastq.Worker(tq, rec):
        assert tq.add("plain", 8).result(10) == 8
        assert tq.add("plain", 9, job_id="later").result(10) == 9    # its id is free again
    assert tq.obliterate() == 2


def test_obliterate_refuses_while_jobs_are_active_unless_forced(tq):
    rec = Recorder()
    with fastq.Worker(tq, rec):
        hold = tq.add("hold", 1)
        other = tq.add("plain", 2, delay=60)
        wait_for(lambda: hold.state == "active", what="the job to start")
        with pytest.raises(fastq.JobActive, match="force=True"):
            tq.obliterate()
        assert other.state == "delayed" and tq.counts()["active"] == 1      # nothing was touched
        assert tq.obliterate(force=True) == 2
        assert tq.counts() == dict.fromkeys(COUNT_STATES, 0)
        rec.release.set()
        wait_for(lambda: _settled(tq), what="the forced-out job's worker to finish")
        assert tq.counts() == dict.fromkeys(COUNT_STATES, 0)              # its end was not recorded
        assert _live_states(tq) == []
        assert tq.add("plain", 3).result(10) == 3
    assert rec.ran.count(hold.id) == 1


# -- bad input -----------------------------------------------------------------------------

def test_bad_input_is_a_clear_error_and_the_queue_keeps_working(tq):
    cases = [
        (lambda: tq.get_jobs(["done"]), fastq.InvalidArgument, "unknown job state"),
        (lambda: tq.get_jobs([]), fastq.InvalidArgument, "unknown job state"),
        (lambda: tq.get_jobs("completed", -1), fastq.InvalidArgument, "start"),
        (lambda: tq.get_jobs("completed", 0, -2), fastq.InvalidArgument, "end"),
        (lambda: tq.get_job_counts("nope"), fastq.InvalidArgument, "unknown job state"),
        (lambda: tq.clean(-1), fastq.InvalidArgument, "grace"),
        (lambda: tq.clean(float("nan")), fastq.InvalidArgument, "grace"),
        (lambda: tq.clean(1, -1), fastq.InvalidArgument, "limit"),
        (lambda: tq.clean(1, 0, "active"), fastq.InvalidArgument, "active"),
        (lambda: tq.clean(1, 0, "bogus"), fastq.InvalidArgument, "unknown job state"),
        (lambda: tq.retry_failed(count=0), fastq.InvalidArgument, "count"),
        (lambda: tq.retry_failed(count=-3), fastq.InvalidArgument, "count"),
        (lambda: tq.promote(count=0), fastq.InvalidArgument, "count"),
        (lambda: tq.promote("nope"), fastq.UnknownJob, "nope"),
        (lambda: tq.retry_job("nope"), fastq.UnknownJob, "nope"),
        (lambda: tq.retry_job("nope", "waiting"), fastq.InvalidArgument, "state"),
        (lambda: tq.remove("nope"), fastq.UnknownJob, "nope"),
        (lambda: tq.drain(delayed="yes"), fastq.InvalidArgument, "delayed"),
        (lambda: tq.obliterate(force=1), fastq.InvalidArgument, "force"),
    ]
    for call, err, match in cases:
        with pytest.raises(err, match=match):
            call()
        assert issubclass(err, fastq.FastqError)
    with fastq.Worker(tq, lambda j: j.data * 2):
        assert tq.add("plain", 21).result(10) == 42


# -- kill -9 in the middle of drain, clean, obliterate -------------------------------------

def _kill_mid(tmp_path, d, op, rng, i, n):
    """Runs ``op`` in a child and kills it -9: at a random moment (even loops), or just
    before a random one of its appends (odd loops: surely in the middle)."""
    note = str(tmp_path / f"note-{op}-{i}")
    kill_at = rng.randrange(n + 2) if i % 2 else -1
    p = _start(task_admin_workers.admin_op, d, "images", op, note, 1, kill_at)
    if kill_at < 0:
        wait_for(lambda: runs(note), 60, "the admin process to be ready")
        time.sleep(rng.uniform(0.0, 0.06))
        os.kill(p.pid, signal.SIGKILL)
    p.join(60)
    assert p.exitcode in (0, -signal.SIGKILL)
    return any(r[0] == "done" for r in runs(note))


def _run_all_and_check(tq, added, what):
    """Every job still waiting or delayed runs exactly once; a removed one never."""
    rec = Recorder()
    pending = {j for j in added if (tq._index.get(j) or {}).get("state") in ("waiting", "delayed")}
    with fastq.Worker(tq, rec, concurrency=2):
        wait_for(lambda: sum(tq.counts()[s] for s in ("waiting", "delayed", "prioritized", "active")) == 0
                 and _settled(tq) and tq.queue.depth().delayed == 0, 60, f"every job to run after {what}")
    ran = collections.Counter(rec.ran)
    assert not set(ran) - pending, f"{what}: a removed job ran"
    assert set(ran) == pending, f"{what}: a job that was left was not run"
    assert all(n == 1 for n in ran.values()), f"{what}: a job ran twice"


@pytest.mark.parametrize("op", ["drain", "clean", "obliterate"])
def test_a_kill_during_an_admin_operation_leaves_a_consistent_queue(tmp_path, op):
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    rng = random.Random(seed)
    loops = 12 if TORTURE else 4
    n = 3000 if TORTURE else 1200
    for i in range(loops):
        d = str(tmp_path / f"data-{i}")
        with fastq.open(d) as b:
            tq = fastq.TaskQueue("images", b)
            if op == "clean":
                with fastq.Worker(tq, lambda j: None, batch=64):
                    jobs = tq.add_bulk([("plain", k) for k in range(n)])
                    wait_for(lambda: tq.counts()["completed"] == n, 60, "the jobs to complete")
            else:
                jobs = tq.add_bulk([("plain", k, {"delay": 0.2} if k % 3 == 0 else {}) for k in range(n)])
            added = [j.id for j in jobs]
        finished = _kill_mid(tmp_path, d, op, rng, i, n)
        with fastq.open(d) as b:
            tq = fastq.TaskQueue("images", b)
            c = tq.counts()
            left = sum(c.values())
            assert 0 <= left <= n and c["active"] == 0, (seed, i, c)
            if finished:
                assert left == 0, (seed, i, c)
            print(f"{op} loop {i}: killed {'after' if finished else 'during or before'} it, {left} of {n} jobs left")
            if op == "clean":
                assert all(tq._index.jobs[j]["state"] == "completed" for j in added if j in tq._index.jobs)
            _run_all_and_check(tq, added, f"a kill during {op} (seed {seed}, loop {i})")
            t0 = time.monotonic()                                    # the lock is free: finishing works
            if op == "clean":
                tq.clean(0)
            else:
                getattr(tq, op)()
            assert time.monotonic() - t0 < 30
            assert tq.counts()["waiting"] == tq.counts()["delayed"] == 0
            if op == "obliterate":
                assert tq.counts() == dict.fromkeys(COUNT_STATES, 0) and _live_states(tq) == []


# -- admin operations racing busy workers in other processes ----------------------------

def test_admin_operations_racing_workers_in_two_processes_never_run_a_removed_job(tmp_path, broker):
    """Two worker processes run jobs while this one adds jobs and removes, drains,
    cleans, promotes, pauses, resumes and obliterates (forced) at random. A job cleaned while waiting or delayed
    never runs; no job runs twice; at the end every job left is completed."""
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    rng = random.Random(seed)
    d = broker.path
    tq = fastq.TaskQueue(task_workers.QUEUE, broker)
    runs_file = str(tmp_path / "runs")
    stops = [str(tmp_path / f"stop-{i}") for i in range(2)]
    workers = [_start(task_workers.run_worker, d, runs_file, s) for s in stops]
    cleaned: set[str] = set()
    added: list[str] = []
    try:
        assert tq.add("double", 0).result(30)                        # the workers are up
        deadline = time.monotonic() + (20.0 if TORTURE else 3.0)
        while time.monotonic() < deadline:
            batch = [("double", i, rng.choice([{}, {}, {"delay": rng.uniform(0.01, 0.3)}, {"priority": 3}]))
                     for i in range(rng.randrange(1, 40))]
            added += [j.id for j in tq.add_bulk(batch)]
            op = rng.randrange(8)
            if op == 0:
                cleaned.update(tq.clean(0, 0, rng.choice(["waiting", "delayed", "prioritized", "paused"])))
            elif op == 1:
                try:
                    tq.remove(rng.choice(added))
                except (fastq.JobActive, fastq.UnknownJob):
                    pass
            elif op == 2:
                tq.promote(count=rng.randrange(1, 10))
            elif op == 3:
                tq.pause()
                time.sleep(rng.uniform(0, 0.05))
                tq.resume()
            elif op == 4:
                tq.clean(0, rng.randrange(0, 20), "completed")
            elif op == 5:
                tq.drain(delayed=rng.random() < 0.5)
            elif op == 6 and rng.random() < 0.2:
                tq.obliterate(force=True)
            time.sleep(rng.uniform(0, 0.02))
        tq.resume()
        wait_for(lambda: sum(tq.counts()[s] for s in ("waiting", "delayed", "prioritized", "active", "paused")) == 0
                 and _settled(tq) and tq.queue.depth().delayed == 0, 60, "every job left to run")
    finally:
        for w, s in zip(workers, stops):
            _stop(w, s)
    ran = collections.Counter(r[0] for r in runs(runs_file))
    if cleaned & set(ran):
        bad = sorted(cleaned & set(ran))[0]
        for r in tq.topic.read(0):
            if bytes(r.key).decode() == bad:
                v = None if r.value is None else fastq.tasks.job.decode_state(r.value)
                print(r.offset, None if v is None else (v["state"], v.get("gen"), v.get("attempts_made")))
        print([r for r in runs(runs_file) if r[0] == bad])
    assert cleaned, f"seed {seed}: the loop cleaned nothing (it proves nothing)"
    assert not cleaned & set(ran), f"seed {seed}: cleaned jobs ran: {sorted(cleaned & set(ran))[:5]}"
    assert max(ran.values()) == 1, f"seed {seed}: a job ran twice"
    left = {j.id for j in tq.get_jobs()}
    assert all(tq.get_job(j).state == "completed" for j in left)
    assert left <= set(ran) and left.isdisjoint(cleaned)
    assert len({r[2] for r in runs(runs_file)}) == 2                  # both processes worked


# -- injected faults ------------------------------------------------------------------------

def _fault_op(tq, op):
    task_admin_workers.run_op(tq, op, clean_state="waiting")


def _fault_prep(path, n=30):
    with fastq.open(path, durability="always") as b:
        tq = fastq.TaskQueue("images", b)
        return [j.id for j in tq.add_bulk([("plain", k, {"delay": 0.05} if k % 2 else {}) for k in range(n)])]


@pytest.mark.parametrize("op", ["drain", "clean", "obliterate", "pause"])
def test_an_injected_storage_fault_in_an_admin_operation_is_clear_and_leaves_a_consistent_queue(tmp_path, op, caplog):
    """Every system call the operation makes that can fail (the C layer's fault points:
    flock, open, preallocate, map, fsync, ...) fails once, in turn: the operation raises a
    FastqError (or, in the best-effort event log, a warning), and after reopening every job
    is either as it was or removed — the ones left run once, the removed ones never — and
    the operation then completes."""
    from faultfs import c_fault
    from fastq._core import _storage
    import errno

    dry = str(tmp_path / "dry")
    _fault_prep(dry)
    with fastq.open(dry, durability="always") as b:
        tq = fastq.TaskQueue("images", b)
        for p in _storage.FAULT_POINTS:
            _storage._fault_inject(p, errno.EIO, 1 << 40, 1)
        try:
            _fault_op(tq, op)
            calls = {p: _storage._fault_calls(p) for p in _storage.FAULT_POINTS}
        finally:
            _storage._fault_clear()
    calls = {p: n for p, n in calls.items() if n}
    assert calls, f"{op} reaches no fault point"
    print(op, "fault points reached:", calls)
    hit_any = 0
    for point, n in sorted(calls.items()):
        for k in (range(n) if TORTURE else sorted({0, n - 1})):
            path = str(tmp_path / f"{point}{k}")
            added = _fault_prep(path)
            exc = None
            caplog.clear()
            b = fastq.open(path, durability="always")
            try:
                tq = fastq.TaskQueue("images", b)
                with c_fault(point, errno.EIO, k, 1) as hits:
                    try:
                        _fault_op(tq, op)
                    except Exception as e:   # noqa: BLE001 - checked below
                        exc = e
                    hit = hits()
            finally:
                try:
                    b.close()
                except fastq.FastqError:
                    pass
            if hit:
                hit_any += 1
                if exc is None:                  # it hit the events topic: logged, the states stand
                    assert "task events of" in caplog.text, f"{op} {point}#{k}: swallowed"
                else:
                    assert isinstance(exc, fastq.FastqError), f"{op} {point}#{k}: {exc!r}"
            elif exc is not None:
                raise exc
            with fastq.open(path) as b:
                tq = fastq.TaskQueue("images", b)
                if op == "pause":
                    assert tq.is_paused() in (True, False)
                    tq.resume()
                _run_all_and_check(tq, added, f"{op} with {point}#{k} failing")
                _fault_op(tq, op)                                    # completes now
                if op == "obliterate":
                    assert tq.counts() == dict.fromkeys(COUNT_STATES, 0)
    assert hit_any, f"{op}: no injected fault was reached"
