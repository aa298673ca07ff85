"""The task queue's fast paths (fastq/tasks/_fastrun.py: a thread worker's common case with
records spliced from the message bytes; TaskQueue._add_default) against the Python path
they stand in for: the same records and events for the same jobs, each fallback (the epoch
moved, progress and logs, a failure, retention, an unencodable result) — and
tests/test_tasks.py run again here with the Python path (FASTQ_TASKS_FASTPATH=0, which
spawned worker processes inherit), so both paths pass the same tests."""
from __future__ import annotations

import errno
import threading
import time

import msgspec
import pytest

import fastq
import fastq.tasks._fastrun as _fastrun
import fastq.tasks.taskqueue as taskqueue_mod
import fastq.tasks.worker as worker_mod
from fastq.tasks.events import EventLog

from taskutil import wait_for
from test_tasks import *                    # noqa: F401,F403 - run again below, with the Python path
import test_tasks

TIMES = ("added_ms", "processed_ms", "finished_ms")


@pytest.fixture(autouse=True)
def python_path(request, monkeypatch):
    """Tests imported from test_tasks (and the "python" parameter below) take the Python path."""
    param = getattr(request, "param", None)
    slow = param == "python" or (param is None and request.function.__module__ == test_tasks.__name__)
    if slow:
        monkeypatch.setenv("FASTQ_TASKS_FASTPATH", "0")
        monkeypatch.setattr(worker_mod, "FAST_ENABLED", False)
        monkeypatch.setattr(taskqueue_mod, "_FAST_ADD", False)
    return "python" if slow else "fast"


both = pytest.mark.parametrize("python_path", ["fast", "python"], indirect=True)


def _records(tq, jid: str, t0: int, t1: int) -> list[dict]:
    """The job's state records, oldest first, timestamps checked (in [t0, t1] ms, in
    order) and blanked."""
    lg = tq.topic.log(0)
    out = []
    for rec in lg.read(lg.start_offset, lg.end_offset):
        if bytes(rec.key) == jid.encode() and rec.value is not None:
            s = msgspec.json.decode(bytes(rec.value))
            times = [s[k] for k in TIMES if k in s]
            assert times == sorted(times) and all(type(t) is int and t0 <= t <= t1 for t in times), s
            out.append({k: (0 if k in TIMES else v) for k, v in s.items()})
    return out


def _events(tq, jid: str) -> list[dict]:
    lg = tq._events.topic.log(0)
    return [msgspec.json.decode(bytes(r.value)) for r in lg.read(lg.start_offset, lg.end_offset)
            if bytes(r.key) == jid.encode()]


def _run(tq, handler, n: int, **kw) -> fastq.Worker:
    w = fastq.Worker(tq, handler, **kw)
    wait_for(lambda: w.completed + w.failed >= n, 10, f"{n} jobs to end")
    w.close()
    return w


def test_both_paths_record_the_same_states_and_events(tmp_path):
    seen = {}
    for path in ("fast", "python"):
        mp = pytest.MonkeyPatch()
        if path == "python":
            mp.setattr(worker_mod, "FAST_ENABLED", False)
            mp.setattr(taskqueue_mod, "_FAST_ADD", False)
        try:
            with fastq.open(tmp_path / path) as b:
                tq = fastq.TaskQueue("same", b)
                t0 = int(time.time() * 1000)
                job = tq.add("resize", {"url": "u", "w": [1, 2]})
                _run(tq, lambda j: {"ok": j.data["w"]}, 1)
                t1 = int(time.time() * 1000)
                seen[path] = (_records(tq, job.id, t0, t1), _events(tq, job.id), job.return_value)
                ids = {job.id}
        finally:
            mp.undo()
        for s in seen[path][0]:
            assert s.pop("id") in ids
    assert seen["fast"] == seen["python"]
    states, events, rv = seen["fast"]
    assert [s["state"] for s in states] == ["waiting", "active", "completed"] and rv == {"ok": [1, 2]}
    assert [e["event"] for e in events] == ["added", "waiting", "active", "completed"]


@both
def test_progress_logs_failures_and_retention_take_the_python_steps(tq, python_path):
    def handle(j):
        if j.name == "progress":
            j.update_progress(40)
            j.log("halfway")
            return "p"
        if j.name == "fail":
            raise ValueError("no")
        if j.name == "unencodable":
            return object()
        return "plain"

    p = tq.add("progress", 1)
    f = tq.add("fail", 2, attempts=2)
    u = tq.add("unencodable", 3)
    r = tq.add("plain", 4, remove_on_complete=True)
    kept = tq.add("plain", 5)
    w = _run(tq, handle, 5)
    assert (w.completed, w.failed, w.retried) == (3, 2, 1)
    assert p.state == "completed" and p.progress == 40 and p.logs == ["halfway"] and p.return_value == "p"
    assert f.state == "failed" and f.attempts_made == 2 and len(f.stacktrace) == 2
    assert u.state == "failed" and "cannot be stored" in u.failed_reason and u.attempts_made == 1
    assert r.state == "removed" and kept.return_value == "plain"


@both
def test_an_admin_operation_between_the_active_record_and_its_check(tq, python_path, monkeypatch):
    """A pause that lands right after a job's first record: the job goes back to waiting,
    held, and runs after resume (the fast path hands it to the Python path)."""
    paused = threading.Event()
    if python_path == "fast":                   # between the compiled record and its epoch check
        class PausingCore:
            def __init__(self, real):
                self.real = real

            def begin(self, m, handler, handlers):
                r = self.real.begin(m, handler, handlers)
                if r is not None and not paused.is_set():
                    paused.set()
                    tq.pause()
                    r = r[:-1] + (self.real.epoch() != r[6],)
                return r

            def complete(self, *a):
                return self.real.complete(*a)

            def step(self, *a):
                return self.real.step(*a)
        real_init = _fastrun.FastRun.__init__

        def init(self, worker):
            real_init(self, worker)
            self.core = PausingCore(self.core)
        monkeypatch.setattr(_fastrun.FastRun, "__init__", init)
    else:
        real = EventLog.emit

        def emit(self, events):
            real(self, events)
            if not paused.is_set() and self is tq._events and events[0][1].get("event") == "active":
                paused.set()
                tq.pause()
        monkeypatch.setattr(EventLog, "emit", emit)
    job = tq.add("x", 1)
    w = fastq.Worker(tq, lambda j: j.data + 1)
    try:
        assert paused.wait(10)
        wait_for(lambda: job.state == "waiting", 10, "the job to be put back")
        tq.resume()
        assert job.result(10) == 2
        assert job.attempts_made == 1
    finally:
        w.close()


@both
def test_an_admin_operation_while_the_handler_runs(tq, python_path):
    """The epoch moves while the job runs (another job is removed): its completion is
    checked against the operation, and stands."""
    other = tq.add("other", 0, delay=60)
    def handle(j):
        if j.name == "x":
            tq.remove(other.id)
        return j.data
    job = tq.add("x", 7)
    _run(tq, handle, 1)
    assert job.state == "completed" and job.return_value == 7 and other.state == "removed"


@pytest.mark.parametrize("jobs", [1, 2])
def test_an_injected_io_error_on_the_fast_path_loses_no_job(tmp_path, monkeypatch, jobs):
    """Each C fault point that one fast-path batch run (FastRun.run_batch, the receive
    before it not included) reaches, with durability "always" (the syncs too), fails once
    with EIO, at its first and last call: the worker logs it and goes on (a failed fsync
    closes the log for good: fsyncgate), and with the broker reopened every job ends
    completed — run again if its completion was not recorded — never lost. One job: its
    records alone; two in one batch: the first's completion and the second's start in one
    append each (TaskRunCore.step)."""
    from fastq._core import _storage
    real_run = _fastrun.FastRun.run_batch
    arm = {}                 # {"point", "k"}: fail that call; {"dry"}: count the calls; "done" after one run

    def run(self, msgs, slot):
        if not arm or "done" in arm:
            return real_run(self, msgs, slot)
        dry = "point" not in arm
        for p in (_storage.FAULT_POINTS if dry else [arm["point"]]):
            _storage._fault_inject(p, errno.EIO, 1 << 40 if dry else arm["k"], 1)
        try:
            return real_run(self, msgs, slot)
        finally:
            if dry:
                arm["calls"] = {p: _storage._fault_calls(p) for p in _storage.FAULT_POINTS}
                arm["batch"] = len(msgs)
            else:
                arm["hit"] = _storage._fault_hits(arm["point"])
            arm["done"] = True                     # one armed run only
            _storage._fault_clear()
    monkeypatch.setattr(_fastrun.FastRun, "run_batch", run)

    def one(path, ran) -> list:
        with fastq.open(path, durability="always") as b:
            tq = fastq.TaskQueue("f", b, visibility_timeout=0.3)
            jids = [tq.add("x", 1).id for _ in range(jobs)]
            with fastq.Worker(tq, lambda j: ran.append(j.id) or j.data + 1) as w:
                wait_for(lambda: "done" in arm or w.completed, 10, "the first run")
            tq.close()
        return jids

    arm["dry"] = True
    one(tmp_path / "dry", [])
    assert arm.pop("batch") == jobs                 # both jobs in the one armed batch
    calls = {p: n for p, n in arm.pop("calls").items() if n}
    arm.clear()
    print("fault points reached:", calls)
    assert calls
    for i, (point, n) in enumerate(sorted(calls.items())):
        for k in sorted({0, n - 1}):
            path, ran = tmp_path / f"{i}-{k}", []
            arm.update(point=point, k=k)
            jids = one(path, ran)
            assert arm.get("hit") == 1, f"{point}#{k} was not reached"
            arm.clear()
            with fastq.open(path) as b:                # reopened: what the fault left is recovered
                tq = fastq.TaskQueue("f", b, visibility_timeout=0.3)
                with fastq.Worker(tq, lambda j: ran.append(j.id) or j.data + 1):
                    for jid in jids:
                        assert tq.get_job(jid).result(20) == 2, f"{point}#{k}"
                    assert tq.add("x", 2).result(10) == 3
                tq.close()
            for jid in jids:
                assert 1 <= ran.count(jid) <= 2, f"{point}#{k}: ran {ran}"
