"""``Worker(tq, handler, guarantee="exactly-once")`` (issue 15, fastq.tasks.exactly_once):
what the handler publishes through ``tx`` (topics, queues, jobs of task queues) is visible
if and only if the job completed with that run's result; a handler that raises aborts
and the job retries with its backoff; a redelivery that finds the run committed
completes the job with the stored result without calling the handler; modes other than
thread are refused. Then a kill -9 loop: worker processes killed at each step of a run
and at random moments; at the end every job is completed once, with its result, and
the read_committed topic, the output queue and the output task queue hold each job's
output exactly once. The seed is printed (FASTQ_SEED=<seed> replays it);
FASTQ_TORTURE=1 runs more rounds."""
from __future__ import annotations

import collections
import errno
import multiprocessing as mp
import os
import random
import threading
import time

import msgspec
import pytest

import fastq
import fastq.broker.transaction as txmod
from faultfs import os_fault
from fastq.queue.exactly_once import ExactlyOnceRunner, outcome_topic
from guarantee_workers import drain_data, kill_at_step, kill_rounds, wait_idle
from logutil import TORTURE, seed_for
from queue_workers import EventLog, read_lines
from taskutil import wait_for

OUT, NEXT, SIDE = "out", "next", "side"


@pytest.fixture
def broker(tmp_path):
    b = fastq.open(tmp_path / "b")
    b.topic(OUT, partitions=1)
    b.queue(NEXT)
    yield b
    b.close()


def committed(b) -> list[str]:
    return [bytes(r.value).decode() for r in b.topic(OUT).read(0, isolation="read_committed")]


def side_jobs(b) -> list:
    with b.tasks(SIDE) as t:
        return sorted(t._index.get(j)["data"] for j in t._index.ids(fastq.tasks.STATES))


def handler_for(calls: list, fail=lambda job: False):
    def handler(job, tx):
        calls.append((job.data, job.attempts_made))
        tx.publish(OUT, job.data.encode(), partition=0)
        tx.enqueue(NEXT, job.data)
        tx.add(SIDE, "side", job.data)
        if fail(job):
            raise ValueError(f"fails: {job.data}")
        return job.data.upper()
    return handler


def test_outputs_visible_iff_completed_and_a_raise_aborts_and_retries(broker):
    tq = broker.tasks("t")
    ok = [tq.add("j", f"a{i}") for i in range(6)]
    flaky = tq.add("j", "flaky", attempts=3, backoff=0.05)        # fails twice, then completes
    doomed = tq.add("j", "doomed", attempts=2)                    # fails for good
    calls: list = []
    fail = lambda job: job.data == "doomed" or (job.data == "flaky" and job.attempts_made < 3)  # noqa: E731
    with fastq.Worker(tq, handler_for(calls, fail), guarantee="exactly-once", concurrency=2) as w:
        assert [j.result(10) for j in ok] == [f"A{i}" for i in range(6)]
        assert flaky.result(10) == "FLAKY"
        with pytest.raises(fastq.JobFailed, match="fails: doomed"):
            doomed.result(10)
    want = sorted([f"a{i}" for i in range(6)] + ["flaky"])
    assert sorted(committed(broker)) == want                      # not doomed's, nor flaky's failed runs
    assert len(list(broker.topic(OUT).read(0))) == len(want) + 2 + 2      # the aborted ones are in the log
    assert sorted(drain_data(broker.queue(NEXT))) == want
    assert side_jobs(broker) == want
    assert [a for d, a in calls if d == "flaky"] == [1, 2, 3]
    assert flaky.attempts_made == 3 and len(flaky.stacktrace) == 2
    assert (w.completed, w.failed, w.retried, w.skipped) == (7, 1, 3, 0)


def test_a_committed_run_is_completed_by_its_redelivery_without_the_handler(broker, monkeypatch):
    """The worker fails right after the commit (before the outputs, the completion and
    the ack): the redelivery finds the committed outcome, applies the outputs once and
    completes the job with the stored result; the handler ran once."""
    tq = broker.tasks("t")
    jobs = [tq.add("j", f"c{i}") for i in range(4)]
    broke = []

    def hook(step):
        if step == "committed" and not broke:
            broke.append(1)
            raise RuntimeError("injected: after the commit")

    monkeypatch.setattr(ExactlyOnceRunner, "hook", staticmethod(hook))
    calls: list = []
    with fastq.Worker(tq, handler_for(calls), guarantee="exactly-once") as w:
        assert [j.result(10) for j in jobs] == [f"C{i}" for i in range(4)]
        wait_for(lambda: w.skipped == 1, what="the redelivery")
    assert sorted(d for d, _ in calls) == [f"c{i}" for i in range(4)]      # each handled once
    assert sorted(committed(broker)) == sorted(drain_data(broker.queue(NEXT))) == side_jobs(broker) \
        == [f"c{i}" for i in range(4)]
    assert all(j.stalled_count == 0 for j in jobs)
    assert w.completed == 4


def test_an_abandoned_open_outcome_is_aborted_and_the_job_runs_again(broker, monkeypatch):
    """A run whose outcome record was appended but not committed (its worker stopped
    there): the redelivery finishes the transaction — aborted, its writer fenced — and
    runs the handler again; the output holds the second run only."""
    tq = broker.tasks("t", visibility_timeout=0.5)
    job = tq.add("j", "x")
    seen = threading.Event()
    release = threading.Event()
    worker = []

    def hook(step):
        if step == "outcome" and not seen.is_set():
            seen.set()
            with worker[0]._lock:
                worker[0]._held.clear()        # the keeper stops extending its lease, as if hung
            release.wait(10)                   # stuck after the outcome record: its lease runs out

    monkeypatch.setattr(ExactlyOnceRunner, "hook", staticmethod(hook))
    calls: list = []
    with fastq.Worker(tq, handler_for(calls), guarantee="exactly-once", concurrency=2, autorun=False) as w:
        worker.append(w)
        threading.Thread(target=w.run, daemon=True).start()
        assert seen.wait(10)
        assert job.result(10) == "X"           # the other thread ran it again, after fencing the first
        release.set()
        wait_for(lambda: len(calls) == 2 and w.completed == 1, what="both runs")
        more = [tq.add("j", f"y{i}") for i in range(6)]     # the fenced thread goes on with a new producer
        assert [j.result(10) for j in more] == [f"Y{i}" for i in range(6)]
    assert calls[:2] == [("x", 1), ("x", 2)] and w.failed == 0
    want = ["x"] + [f"y{i}" for i in range(6)]
    assert sorted(committed(broker)) == sorted(drain_data(broker.queue(NEXT))) == side_jobs(broker) == want
    outcomes = [r for r in broker.topic(outcome_topic("t.tasks")).read(0) if job.id.encode() in bytes(r.value)]
    assert len(outcomes) == 2                  # both runs of x wrote one; one committed


def test_a_job_timeout_aborts_the_outputs(broker):
    tq = broker.tasks("t")
    job = tq.add("j", "slow", timeout=0.05, attempts=2)
    calls: list = []

    def handler(job, tx):
        calls.append(job.attempts_made)
        tx.publish(OUT, b"slow", partition=0)
        if job.attempts_made == 1:
            time.sleep(0.2)                    # past the timeout: the attempt fails
        return "ok"

    with fastq.Worker(tq, handler, guarantee="exactly-once"):
        assert job.result(10) == "ok"
    assert calls == [1, 2] and committed(broker) == ["slow"]


def test_bad_combinations_are_refused(broker):
    tq = broker.tasks("t")

    async def ahandler(job, tx):
        return None

    with pytest.raises(fastq.InvalidArgument, match="mode 'thread' only, not mode='asyncio'"):
        fastq.Worker(tq, ahandler, mode="asyncio", guarantee="exactly-once", autorun=False)
    with pytest.raises(fastq.InvalidArgument, match="mode 'thread' only, not mode='process'"):
        fastq.Worker(tq, len, mode="process", guarantee="exactly-once", autorun=False)
    with pytest.raises(fastq.InvalidArgument, match="guarantee='at-most-once'"):
        fastq.Worker(tq, len, guarantee="at-most-once", autorun=False)
    # inside the handler: bad adds fail the attempt, nothing of it is visible
    jobs = {k: tq.add("j", k) for k in ("repeat", "dedup", "data", "name")}

    def handler(job, tx):
        tx.publish(OUT, job.data.encode(), partition=0)
        if job.data == "repeat":
            tx.add(SIDE, "s", 1, repeat={"every": 1})
        elif job.data == "dedup":
            tx.add(SIDE, "s", 1, deduplication={"id": "d"})
        elif job.data == "data":
            tx.add(SIDE, "s", object())
        else:
            tx.add(SIDE, "", 1)

    with fastq.Worker(tq, handler, guarantee="exactly-once"):
        for k, j in jobs.items():
            with pytest.raises(fastq.JobFailed, match="InvalidArgument"):
                j.result(10)
    assert committed(broker) == []


# -- faults -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,err,after", [("pwrite", errno.ENOSPC, a) for a in range(6)]
                         + [("fdatasync", errno.EIO, a) for a in range(6)])
def test_state_file_fault_at_each_write_completes_each_job_once(tmp_path, name, err, after):
    """A full disk or a failed fdatasync at each write of the transaction state (an
    added partition's records — inside the handler's publish: the attempt fails and is
    retried —, the prepare record — at the commit: the job is handed back, and its
    redelivery completes it from the committed outcome or runs it again): every job
    completed with its result, the output holds each once."""
    with fastq.open(tmp_path / "b", durability="group") as b:
        b.topic(OUT, partitions=1)
        b.queue(NEXT)
        tq = b.tasks("t")
        jobs = [tq.add("j", d, attempts=2) for d in ("a", "b", "c")]
        calls: list = []
        with os_fault(txmod, name, err, after=after) as hits:
            with fastq.Worker(tq, handler_for(calls), guarantee="exactly-once") as w:
                assert [j.result(10) for j in jobs] == ["A", "B", "C"]
                wait_for(lambda: len(calls) + w.skipped == 4, what="the failed attempt's redelivery")
        assert hits.hits == 1
        assert sorted(committed(b)) == sorted(drain_data(b.queue(NEXT))) == side_jobs(b) == ["a", "b", "c"]
        assert w.completed == 3


# -- the kill -9 loop ---------------------------------------------------------------------

STEPS = ["add_partition", "publish", "handled", "outcome", "prepare", "marker", "committed", "applied"]
ROUNDS = 100 if TORTURE else 20
BATCH = 8
N = ROUNDS * BATCH


def eos_worker(path: str, logfile: str, stopfile: str, kill_step: str | None, kill_at: int,
               concurrency: int) -> None:
    log = EventLog(logfile)
    b = fastq.open(path)
    tq = b.tasks("t")

    def handler(job, tx):
        log("handled", job.data, job.attempts_made)
        tx.publish(OUT, job.data.encode(), partition=0)
        tx.enqueue(NEXT, job.data)
        tx.add(SIDE, "side", job.data)
        if job.data.endswith("!") and job.attempts_made == 1:
            raise ValueError("fails on its first run")
        return job.data.upper()

    if kill_step is not None:
        ExactlyOnceRunner.hook = staticmethod(kill_at_step(kill_step, kill_at))
    w = fastq.Worker(tq, handler, guarantee="exactly-once", concurrency=concurrency, max_stalled_count=1_000_000)
    while not os.path.exists(stopfile):
        time.sleep(0.01)
    w.close()
    tq.close()
    b.close()


def test_exactly_once_jobs_under_kills(tmp_path):
    seed = seed_for("tasks-eos-kill")
    rng = random.Random(seed)
    path = str(tmp_path / "b")
    stop = str(tmp_path / "stop")
    items = [f"j{i}" if i % 7 else f"j{i}!" for i in range(N)]       # "!": fails on its first run
    with fastq.open(path) as b:
        b.topic(OUT, partitions=1)
        b.queue(NEXT)
        b.tasks(SIDE).close()
        b.tasks("t").close()
    ctx = mp.get_context("fork")
    logs: list[str] = []

    def start(kill_step, kill_at):
        lf = str(tmp_path / f"w{len(logs)}.log")
        logs.append(lf)
        p = ctx.Process(target=eos_worker, args=(path, lf, stop, kill_step, kill_at, rng.choice((1, 2))))
        p.start()
        return p

    ids: list[str] = []

    def add_round(r):
        with fastq.open(path) as b, b.tasks("t") as tq:
            ids.extend(j.id for j in tq.add_bulk([("j", d, {"attempts": 3})
                                                  for d in items[r * BATCH:(r + 1) * BATCH]]))

    kills = kill_rounds(rng, ROUNDS, add_round, start, path, STEPS, queue="t.tasks", max_at=3, pause=(0.05, 0.3))
    last = start(None, 0)                                # one more, left to finish every job
    with fastq.open(path) as b:
        wait_idle(b.queue("t.tasks"), 60, pause=0.05)
        open(stop, "w").close()
        last.join(30)
        assert last.exitcode == 0
        with b.tasks("t") as tq:
            results = {tq.get_job(j).data: (tq.get_job(j).state, tq.get_job(j).return_value) for j in ids}
            completions = collections.Counter(
                bytes(r.key).decode() for r in tq.topic.read(0)
                if r.value is not None and msgspec.json.decode(bytes(r.value))["state"] == "completed")
        out = committed(b)
        nxt = drain_data(b.queue(NEXT), wait=0.2)
        side = side_jobs(b)
        everything = list(b.topic(OUT).read(0))
    runs = [ln for lf in logs for ln in read_lines(lf) if ln[0] == "handled"]
    print(f"kills {dict(kills)}; {len(runs)} handler runs for {N} jobs; {len(everything)} records "
          f"written to {OUT!r}, {len(out)} committed")
    assert kills["none"] < ROUNDS                        # the loop did kill
    bad = {d: r for d, r in results.items() if r != ("completed", d.upper())}
    assert not bad, f"not completed with their result: {dict(list(bad.items())[:10])}"
    assert max(completions.values()) == 1, [j for j, n in completions.items() if n > 1][:10]
    for name, got in ((OUT + " (read_committed)", out), (NEXT, nxt), (SIDE, side)):
        c = collections.Counter(got)
        twice = sorted(k for k, n in c.items() if n > 1)
        lost = sorted(set(items) - set(c))
        assert not twice and not lost, f"{name}: twice {twice[:10]}, lost {lost[:10]}"
    assert len(runs) > N                                 # handlers did run again: the test had teeth
