"""Stalled jobs (issue 16): a worker killed -9 mid-job — its job comes back (the queue's
dead-consumer detection), is counted as stalled (``job.stalled_count``, a ``stalled``
event), does not use up an attempt, and fails after the worker's ``max_stalled_count``
with a clear reason. The kill loop kills workers of every mode mid-job: every job ends
completed or failed, none is lost, none runs after it completed. Short by default; set
FASTQ_TORTURE=1 for the long version."""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time

import pytest

import fastq
import task_event_workers as tew
from task_event_workers import broker, tq, wait_for  # noqa: F401 - fixtures

CTX = mp.get_context("spawn")
TORTURE = os.environ.get("FASTQ_TORTURE") == "1"


class Workers:
    """Spawned kill_loop_worker processes, started and killed -9 by the test."""

    def __init__(self, d: str, tmp, max_stalled_count: int = 1):
        self.d, self.tmp, self.msc = d, tmp, max_stalled_count
        self.procs: list = []
        self.n = 0

    def start(self, mode: str = "thread"):
        self.n += 1
        ready = self.tmp / f"ready-{self.n}"
        p = CTX.Process(target=tew.kill_loop_worker, args=(self.d, mode, str(ready), self.msc))
        p.start()
        wait_for(ready.exists, 60, f"worker {self.n} ({mode}) to start")
        self.procs.append(p)
        return p

    def kill(self, p) -> None:
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        assert p.exitcode == -signal.SIGKILL
        self.procs.remove(p)

    def kill_all(self) -> None:
        for p in list(self.procs):
            self.kill(p)


def running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie no init reaped has stopped running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def runs_of(runs_file, jid) -> list[list[str]]:
    return [r for r in tew.lines(runs_file) if r[0] == jid]


def test_a_job_whose_worker_dies_is_stalled_then_fails_after_max_stalled_count(tmp_path, broker, tq):
    runs_file = str(tmp_path / "runs")
    ev = tq.events(offset=0)
    job = tq.add("hang", {"runs": runs_file, "d": 0}, attempts=5)
    ws = Workers(broker.path, tmp_path, max_stalled_count=1)
    try:
        a = ws.start()
        wait_for(lambda: len(runs_of(runs_file, job.id)) == 1, what="the first run")
        ws.kill(a)
        b = ws.start()                                   # redelivered at once: dead consumer found
        wait_for(lambda: len(runs_of(runs_file, job.id)) == 2, what="the second run")
        assert job.stalled_count == 1 and job.state == "active" and job.attempts_made == 2
        ws.kill(b)
        ws.start()
        with pytest.raises(fastq.JobFailed, match=r"job stalled more than allowable limit.*died 2 time\(s\) "
                                                  r"\(max_stalled_count=1\)"):
            job.result(30)
        time.sleep(0.3)
        assert len(runs_of(runs_file, job.id)) == 2       # failed instead of a third run
    finally:
        ws.kill_all()
    assert job.stalled_count == 2 and job.attempts_made == 2 and job.state == "failed"
    evs = [(e.event, e.data) for e in ev.poll(1000) if e.job_id == job.id]
    ev.close()
    assert [e for e, _ in evs] == ["added", "waiting", "active", "stalled", "active", "stalled", "failed"]
    assert [d["stalled_count"] for e, d in evs if e == "stalled"] == [1, 2]


def test_a_stalled_run_does_not_use_up_an_attempt_and_max_stalled_count_0_fails_at_once(tmp_path, broker, tq):
    runs_file = str(tmp_path / "runs")
    once = tq.add("stall-once", {"runs": runs_file, "d": 30}, attempts=1)
    ws = Workers(broker.path, tmp_path, max_stalled_count=1)
    try:
        a = ws.start()
        wait_for(lambda: len(runs_of(runs_file, once.id)) == 1, what="the first run")
        ws.kill(a)
        with fastq.Worker(tq, lambda j: "second run", max_stalled_count=1):
            assert once.result(30) == "second run"          # attempts=1, yet it ran again
        assert once.stalled_count == 1 and once.attempts_made == 2
        strict = Workers(broker.path, tmp_path, max_stalled_count=0)
        job = tq.add("hang", {"runs": runs_file, "d": 0})
        b = strict.start()
        wait_for(lambda: len(runs_of(runs_file, job.id)) == 1, what="the strict worker's run")
        strict.kill(b)
        strict.start()
        with pytest.raises(fastq.JobFailed, match=r"max_stalled_count=0"):
            job.result(30)
        assert job.stalled_count == 1 and len(runs_of(runs_file, job.id)) == 1
        strict.kill_all()
    finally:
        ws.kill_all()


def test_kill_9_of_workers_of_every_mode_in_a_loop_loses_no_job(tmp_path, broker, tq):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rnd = random.Random(seed)
    n_jobs, n_hang, rounds = (300, 10, 60) if TORTURE else (40, 3, 8)
    runs_file = str(tmp_path / "runs")
    jobs = [tq.add("work", {"runs": runs_file, "d": rnd.uniform(0.0, 0.15)}) for _ in range(n_jobs)]
    hang = [tq.add("hang", {"runs": runs_file, "d": 0}) for _ in range(n_hang)]
    ws = Workers(broker.path, tmp_path, max_stalled_count=1)
    modes = ["thread", "process", "asyncio"]
    seen_stalls: dict[str, list[int]] = {}
    try:
        for _ in range(2):
            ws.start(rnd.choice(modes))
        for _ in range(rounds):
            time.sleep(rnd.uniform(0.2, 0.6))
            ws.kill(rnd.choice(ws.procs))
            ws.start(rnd.choice(modes))
            for j in hang:
                seen_stalls.setdefault(j.id, []).append(j.stalled_count)
        # the hang jobs need their workers killed until they fail: keep killing busy ones
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and any(j.state not in ("completed", "failed") for j in jobs + hang):
            time.sleep(0.3)
            if any(j.state == "active" for j in hang):
                ws.kill(rnd.choice(ws.procs))
                ws.start(rnd.choice(modes))
            for j in hang:
                seen_stalls.setdefault(j.id, []).append(j.stalled_count)
    finally:
        ws.kill_all()
    states = {j.id: j.state for j in jobs + hang}
    assert all(s in ("completed", "failed") for s in states.values()), \
        {s: sum(v == s for v in states.values()) for s in set(states.values())}
    all_runs = tew.lines(runs_file)
    for j in jobs + hang:
        mine = [r for r in all_runs if r[0] == j.id]
        assert mine, f"job {j.id} never ran"
        if j.state == "completed":
            assert all(float(r[3]) <= j.finished_on + 0.001 for r in mine), "a run started after it completed"
            assert len(mine) == j.stalled_count + 1       # every extra run was a stall
        else:
            assert "stalled more than allowable limit" in j.failed_reason, j.failed_reason
            assert j.stalled_count == 2 and len(mine) == 2
    for j in hang:
        assert j.state == "failed" and j.stalled_count == 2
        counts = seen_stalls[j.id]
        assert counts == sorted(counts)                  # stalled counts only grow
    pids = {int(r[2]) for r in all_runs}
    time.sleep(0.5)                                      # a process worker's children follow it
    alive = [pid for pid in pids if running(pid)]
    assert not alive, f"handler processes outlived their killed worker: {alive}"
