"""TaskQueue.repair: a job whose add was killed -9 between its first state record and its
queue message runs — exactly once — after the sweep (docs/TASKS.md, "What each failure
does").

The kill comes from a child process whose queue publish is replaced by a SIGKILL of
itself (the exact point between the two writes), and from a kill -9 loop at random times
while a child adds jobs (long version behind FASTQ_TORTURE=1).
"""
from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import fastq
import fastq.tasks.admin as admin_mod
import fastq.tasks.worker as worker_mod
from fastq.errors import InvalidArgument
from taskutil import fail_once, fault_calls, wait_for
from test_cli_tasks import run as cli_run

TORTURE = os.environ.get("FASTQ_TORTURE") == "1"

# adds jobs, dying by SIGKILL at the first queue publish: the state is written, the message never
DIE_AT_PUBLISH = textwrap.dedent("""
    import os, signal, sys
    import fastq
    path, how = sys.argv[1], sys.argv[2]
    b = fastq.open(path)
    tq = fastq.TaskQueue("t", b)
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    tq.queue.publish = die
    tq.queue.publish_many = die
    if how == "plain":
        tq.add("x", 1)
    elif how == "job_id":
        tq.add("x", 2, job_id="fixed")
    elif how == "delayed":
        tq.add("x", 3, delay=0.3)
    elif how == "bulk":
        tq.add_bulk([("x", i) for i in range(10, 15)])
    print("survived")
""")

# adds jobs one by one and in bulk until killed: by the parent at a random time, or (when
# die_after > 0) by itself at its die_after-th queue publish, between a state and its message
ADD_FOREVER = textwrap.dedent("""
    import os, signal, sys, time
    import fastq
    b = fastq.open(sys.argv[1])
    tq = fastq.TaskQueue("t", b)
    i, die_after = int(sys.argv[2]), int(sys.argv[3])
    if die_after:
        q, n = tq.queue, [0]
        def tripwire(fn):
            def call(*a, **k):
                n[0] += 1
                if n[0] == die_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                return fn(*a, **k)
            return call
        q.publish, q.publish_many = tripwire(q.publish), tripwire(q.publish_many)
    print("ready", flush=True)
    while True:
        tq.add("x", i, job_id=f"k{i}" if i % 3 == 0 else None)
        tq.add_bulk([("x", i + 1), ("x", i + 2)])
        i += 3
        time.sleep(0.002)
""")


def _child(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def _run_all(tq, runs_path):
    """Run every job with a worker; returns {job id: runs}."""
    def handle(job):
        with open(runs_path, "a") as f:
            f.write(job.id + "\n")
        return job.data

    ids = [j.id for j in tq.get_jobs()]
    with fastq.Worker(tq, handle, concurrency=2):
        wait_for(lambda: tq.counts()["completed"] == len(ids), 60, "every job completed")
        time.sleep(0.3)                                   # a duplicate run would show meanwhile
    with open(runs_path) as f:
        got = f.read().split()
    return {j: got.count(j) for j in set(got) | set(ids)}


@pytest.mark.parametrize("how", ["plain", "job_id", "delayed", "bulk"])
def test_a_job_whose_add_died_before_its_message_runs_once_after_repair(tmp_path, how):
    p = _child(DIE_AT_PUBLISH, tmp_path / "b", how)
    assert p.returncode == -signal.SIGKILL and "survived" not in p.stdout, p
    with fastq.open(tmp_path / "b") as b:
        tq = fastq.TaskQueue("t", b)
        jobs = tq.get_jobs()
        assert len(jobs) == (5 if how == "bulk" else 1)
        assert all(j.state in ("waiting", "delayed") for j in jobs)
        assert tq.queue.unsettled() == []                    # no message: nothing would ever run it
        assert tq.repair(grace=60) == []                     # too young to be judged lost
        if how == "delayed":
            assert tq.repair(grace=0) == []                  # not due yet
            time.sleep(0.35)
        fixed = sorted(tq.repair(grace=0))
        assert fixed == sorted(j.id for j in jobs)
        assert tq.repair(grace=0) == []                      # their messages are there now
        runs = _run_all(tq, tmp_path / "runs")
        assert set(runs.values()) == {1}, runs
        assert sorted(j.return_value for j in tq.get_jobs()) == sorted(j.data for j in jobs)
        tq.close()


def test_repair_leaves_jobs_with_messages_alone_and_a_late_original_message_is_dropped(tmp_path):
    with fastq.open(tmp_path / "b") as b:
        tq = fastq.TaskQueue("t", b)
        ok = [tq.add("x", i) for i in range(5)] + [tq.add("x", 9, delay=0.05, job_id="d")]
        time.sleep(0.1)
        ep = tq._ctl.epoch
        assert tq.repair(grace=0) == []                      # each has its message (ready or delayed)
        assert tq._ctl.epoch == ep                           # and nothing to repair takes no admin op
        tq.pause()                                           # a held (in-flight) message counts too
        got = tq.queue.receive(1, wait=1)
        assert got and tq.repair(grace=0) == []
        got[0].nack()
        tq.resume()
        # a job whose message is published after the repair (an add that stalled past the grace)
        s = {"id": "late", "name": "x", "data": 7, "opts": dict(fastq.tasks.taskqueue._DEFAULT_OPTIONS),
             "state": "waiting", "attempts_made": 0, "progress": 0, "added_ms": fastq.tasks.job.now_ms(),
             "gen": 0, "ep": tq._ctl.add_epoch()}
        body = bytes(tq._codec.encode(s))
        tq.topic.log(0).append(body, b"late")
        assert tq.repair(grace=0) == ["late"]
        tq.queue.publish(body)                               # the original arrives after all
        runs = _run_all(tq, tmp_path / "runs")
        assert runs == {j.id: 1 for j in ok} | {"late": 1}, runs
        with pytest.raises(InvalidArgument):
            tq.repair(grace=-1)
        tq.close()


def test_workers_repair_on_their_own(tmp_path, monkeypatch):
    monkeypatch.setattr(worker_mod, "REPAIR_EVERY_S", 0.2)
    monkeypatch.setattr(admin_mod, "REPAIR_GRACE", 0.3)
    p = _child(DIE_AT_PUBLISH, tmp_path / "b", "plain")
    assert p.returncode == -signal.SIGKILL
    with fastq.open(tmp_path / "b") as b:
        tq = fastq.TaskQueue("t", b)
        (job,) = tq.get_jobs()
        with fastq.Worker(tq, lambda j: j.data + 1):
            assert job.result(timeout=20) == 2
        tq.close()


def test_kill_9_loop_while_adding_every_stored_job_runs_exactly_once(tmp_path):
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rnd = random.Random(seed)
    rounds = 40 if TORTURE else 6
    for r in range(rounds):
        die_after = rnd.randint(1, 60) if r % 2 else 0
        proc = subprocess.Popen([sys.executable, "-c", ADD_FOREVER, str(tmp_path / "b"), str(r * 1_000_000),
                                 str(die_after)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # the kill lands while it adds: counted from its "ready", not from its start (a
        # loaded machine took longer than the whole window to start the interpreter)
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready and proc.stdout.readline() == b"ready\n", proc.stderr.read() if proc.poll() is not None else ""
        try:
            proc.wait(rnd.uniform(0.02, 0.5))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        err = proc.stderr.read()
        proc.stderr.close()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL, err
    with fastq.open(tmp_path / "b") as b:
        tq = fastq.TaskQueue("t", b)
        jobs = tq.get_jobs()
        assert jobs, "no job was added before the kills"
        queued = {fastq.tasks.job.decode_state(x)["id"] for x in tq.queue.unsettled()}
        lost = {j.id for j in jobs} - queued
        fixed = set(tq.repair(grace=0))
        assert fixed == lost, (sorted(fixed), sorted(lost))
        assert fixed, "the tripwire rounds must leave jobs without messages"
        runs = _run_all(tq, tmp_path / "runs")
        assert set(runs.values()) == {1}, {k: v for k, v in runs.items() if v != 1}
        print("jobs", len(jobs), "repaired", len(fixed))
        tq.close()


def test_cli_tasks_repair(tmp_path):
    p = _child(DIE_AT_PUBLISH, tmp_path / "b", "job_id")
    assert p.returncode == -signal.SIGKILL
    path = str(tmp_path / "b")
    assert cli_run("tasks", "repair", "t", "-b", path).output.strip() == "repaired: t: 0 job(s)"   # not 60 s old
    assert json.loads(cli_run("tasks", "repair", "t", "--grace", "0", "-b", path, "--json").output) == ["fixed"]
    assert json.loads(cli_run("tasks", "repair", "t", "--grace", "0", "-b", path, "--json").output) == []
    assert cli_run("tasks", "repair", "nope", "-b", path, ok=False).exit_code != 0


def test_queue_unsettled_lists_ready_delayed_and_in_flight_not_acked(tmp_path):
    with fastq.open(tmp_path / "b") as b:
        q = b.queue("q", codec="raw")
        for x in (b"a", b"b", b"c"):
            q.publish(x)
        q.publish(b"d", delay=60)
        got = q.receive(2, wait=1)
        assert [m.body for m in got] == [b"a", b"b"]
        got[0].ack()
        assert sorted(q.unsettled()) == [b"b", b"c", b"d"]
        got[1].ack()
        assert sorted(q.unsettled()) == [b"c", b"d"]


def test_injected_io_errors_in_repair_are_clear_and_the_next_repair_finishes(tmp_path):
    """Every C fault point repair() reaches fails once (EIO), at its first and last call:
    repair raises a FastqError or succeeds; a repair after it, then a worker, runs the
    lost job exactly once."""
    seed_dir = tmp_path / "seed"
    p = _child(DIE_AT_PUBLISH, seed_dir, "bulk")
    assert p.returncode == -signal.SIGKILL

    def fresh(dst):
        shutil.copytree(seed_dir, dst)
        return fastq.open(dst, durability="always")

    def repair(b):
        tq = fastq.TaskQueue("t", b)
        try:
            return tq.repair(grace=0)
        finally:
            tq.close()

    with fresh(tmp_path / "dry") as b:
        calls = fault_calls(lambda: len(repair(b)) == 5 or pytest.fail("the dry run repaired not 5"))
    assert calls, "repair reaches no fault point"
    print("fault points reached:", calls)
    hit_any = 0
    for point, n in sorted(calls.items()):
        for k in (range(n) if TORTURE else sorted({0, n - 1})):
            dst = tmp_path / f"{point}{k}"
            shutil.copytree(seed_dir, dst)
            hit_any += fail_once(lambda: fastq.open(dst, durability="always"), point, k, repair, "repair")
            with fastq.open(dst) as b:
                tq = fastq.TaskQueue("t", b)
                tq.repair(grace=0)
                runs = _run_all(tq, dst / "runs")
                assert len(runs) == 5 and set(runs.values()) == {1}, (point, k, runs)
                tq.close()
    assert hit_any, "no injected fault was reached"
