"""The task-queue benchmark (``fastq bench --scenario tasks``, :mod:`fastq.bench.task_scenarios`)
and its peers: the cross-process harness counts every job, spots one run twice, measures
how late delayed jobs start; the fastq scenarios run on a tiny workload with sane fields;
a peer whose library or server is missing is listed as skipped with the reason. No peer
server is started here; each test takes a few seconds at most."""
from __future__ import annotations

import heapq
import json
import queue as stdqueue
import threading
import time

import jsonschema
import pytest
from click.testing import CliRunner

from fastq.bench import peers as P, scenarios as B, task_peers as TP, task_scenarios as T
from fastq.cli import cli


class _StubTasks(T.TaskTransport):
    """A multiprocessing.Queue posing as a task queue: the harness's bookkeeping, tested
    without fastq or a peer. Its worker runs each job when due (a heap), ``late_s`` after;
    ``dup_every``: every that-many-th job is added twice."""
    name = "stub"
    description = "multiprocessing.Queue"
    bulk_description = "multiprocessing.Queue, put in a loop"
    dup_every = 0
    late_s = 0.0
    q = None

    def new_round(self):
        super().new_round()
        self._close()
        self.q = B.CTX.Queue()

    def _close(self):
        if self.q is not None:
            self.q.close()
            self.q.join_thread()

    def connect(self):
        tr, q = self, self.q

        class C(T.TaskClient):
            def add_jobs(self, n, batch, end):
                for i in range(n):
                    q.put({"i": i})
                    if tr.dup_every and (i + 1) % tr.dup_every == 0:
                        q.put({"i": i})
                return n

            def add_delayed(self, delays, pace_s):
                for i, d in enumerate(delays):
                    q.put({"i": i, "due": time.time() + d})
                    time.sleep(pace_s)

            def work(self, tick, done, give_up):
                def run():
                    heap, seq = [], 0
                    while not done.is_set() and time.monotonic() < give_up:
                        wait = 0.01 if not heap else max(0.0, min(0.01, heap[0][0] - time.time()))
                        try:
                            data = q.get(timeout=wait) if wait > 0 else q.get_nowait()
                            seq += 1
                            heapq.heappush(heap, (data.get("due", 0.0) + tr.late_s, seq, data))
                        except stdqueue.Empty:
                            pass
                        while heap and heap[0][0] <= time.time():
                            tick(heapq.heappop(heap)[2])
                th = threading.Thread(target=run, daemon=True)
                th.start()
                done.wait(max(0.0, give_up - time.monotonic()))
                th.join()
                return None

            def close(self):
                q.close()
                q.join_thread()
        return C()

    def teardown(self):
        self._close()


def _run(tr, cfg, **kw):
    tr.setup("/nonexistent", cfg)
    try:
        return T.run_tasks(tr, cfg, **kw)
    finally:
        tr.teardown()


def test_harness_counts_every_job_once():
    cfg = B.Config(messages=400, seconds=5)
    r = _run(_StubTasks(), cfg, n=400)
    assert r["added"] == r["completed"] == 400 and r["ran_again"] == 0
    assert r["drained"] and r["exactly_once"]
    assert 0 < r["add_seconds"] <= r["seconds"] and 0 < r["work_seconds"] <= r["seconds"]


def test_harness_spots_a_job_run_twice():
    cfg = B.Config(messages=300, seconds=5)
    tr = _StubTasks()
    tr.dup_every = 50
    r = _run(tr, cfg, n=300)
    # every job ran; the six added twice ran twice, unless the count was reached first
    assert r["added"] == r["completed"] == 300 and r["drained"]
    assert 0 < r["ran_again"] <= 6 and r["exactly_once"] is False


def test_harness_measures_how_late_delayed_jobs_start():
    cfg = B.Config(seconds=5)
    tr = _StubTasks()
    tr.late_s = 0.03                  # every job starts 30 ms after it is due
    delays = [0.01, 0.05, 0.02, 0.04]
    r = _run(tr, cfg, n=0, delays=delays)
    assert r["completed"] == 4 and len(r["lateness_s"]) == 4
    # a thread waking on time: 30 ms, plus scheduling on a busy machine
    assert all(0.03 <= x < 0.5 for x in r["lateness_s"]), r["lateness_s"]


def test_lateness_summary_shape():
    cfg = B.Config(seconds=5, latency_seconds=0.05)     # 10 delayed jobs
    tr = _StubTasks()
    tr.setup("/nonexistent", cfg)
    try:
        s = T.lateness_summary(tr, cfg)
    finally:
        tr.teardown()
    assert s["supported"] and s["jobs"] == s["started"] == 10
    assert 0 <= s["min_ms"] <= s["p50_ms"] <= s["p99_ms"] <= s["max_ms"] < 500, s
    tr.delay_unsupported = "a stub"
    assert T.lateness_summary(tr, cfg) == {"supported": False, "reason": "a stub"}


def test_peer_result_shape_and_ratios():
    cfg = B.Config(messages=200, seconds=5, latency_seconds=0.05)
    r = T.run_task_peer(_StubTasks(), cfg, "/nonexistent")
    assert r["messages"] == r["extra"]["jobs_added"] == 200 and r["extra"]["exactly_once"]
    assert r["extra"]["batch_result"]["messages"] == 200 and r["extra"]["batch_result"]["exactly_once"]
    assert r["extra"]["lateness"]["started"] == 10
    by = r["extra"]["messages_per_s_by_scenario"]
    assert by["tasks"] == r["messages_per_s"] and by["tasks-bulk"] > 0
    peer = {**r, "name": "stub", "status": "ok", "reason": None, "compare_with": ["tasks", "tasks-bulk"]}
    jsonschema.validate(peer, B.PEER_SCHEMA)
    fastq_rows = [{"name": "tasks", "messages_per_s": 10 * by["tasks"]},
                  {"name": "tasks-bulk", "messages_per_s": 20 * by["tasks-bulk"]}]
    assert {x["scenario"]: x["ratio"] for x in B.ratios(fastq_rows, [peer])} == {"tasks": 10.0, "tasks-bulk": 20.0}


def test_fastq_task_scenarios_on_a_tiny_workload(tmp_path):
    cfg = B.Config(messages=500, seconds=5, latency_seconds=0.1, directory=str(tmp_path))
    results = {}
    for name, batch in (("tasks", 1), ("tasks-bulk", T.TBATCH)):
        results[name] = r = B.run_scenario(name, cfg)
        jsonschema.validate(r, B.SCENARIO_SCHEMA)
        e = r["extra"]
        assert r["name"] == name and r["latency"] is None and e["batch"] == batch
        assert r["messages"] == e["jobs_added"] == 500 and e["drained"] and e["exactly_once"], r
        assert e["ran_again"] == 0
        assert r["messages_per_s"] > 0 and e["add_jobs_per_s"] >= r["messages_per_s"]
        assert e["work_jobs_per_s"] >= r["messages_per_s"]
    late = results["tasks"]["extra"]["lateness"]
    assert late["supported"] and late["jobs"] == late["started"] == 20, late
    # never early: fastq rounds due times up to the millisecond. The upper bound is not a
    # speed claim: one that a delayed job left waiting for a poll of seconds would miss.
    assert 0 <= late["min_ms"] <= late["p50_ms"] <= late["p99_ms"] <= late["max_ms"] < 1000, late
    assert "lateness" not in results["tasks-bulk"]["extra"]
    assert list(tmp_path.iterdir()) == []       # the scenarios' directories are removed


@pytest.mark.parametrize("peer", TP.TASK_PEERS, ids=lambda p: p.name)
def test_task_peer_missing_library_is_skipped_with_reason(peer, monkeypatch):
    monkeypatch.setattr(peer, "module", "fastq_no_such_task_module")
    why = P.availability(peer)
    assert why and "fastq_no_such_task_module" in why and "not importable" in why
    r = P.run_peer(peer, B.Config(), "/nonexistent")
    assert r["status"] == "skipped" and r["reason"] == why
    assert r["compare_with"] == ["tasks", "tasks-bulk"]
    jsonschema.validate(r, B.PEER_SCHEMA)


@pytest.mark.parametrize("peer", [TP.BullMQ1, TP.BullMQ8], ids=lambda p: p.name)
def test_bullmq_without_redis_server_is_skipped_with_reason(peer, monkeypatch):
    monkeypatch.setattr(P, "_which", lambda binary: None)
    monkeypatch.setattr(peer, "module", "json")       # the client "importable"
    assert P.availability(peer) == "redis-server is not on PATH"


def test_task_peers_are_listed_with_both_concurrencies():
    names = P.peer_names()
    assert {"Huey SQLite", "BullMQ-py c1", "BullMQ-py c8"} <= set(names)
    assert (TP.BullMQ1.concurrency, TP.BullMQ8.concurrency) == (1, 8)


def test_cli_tasks_scenario_reports_lateness_and_skipped_peers(monkeypatch):
    monkeypatch.setattr(TP.HueySqlite, "module", "fastq_no_such_task_module")
    res = CliRunner().invoke(cli, ["bench", "--scenario", "tasks", "--messages", "300", "--latency-seconds", "0.05",
                                   "--peer", "Huey SQLite", "--json", "-"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    jsonschema.validate(doc, B.RESULT_SCHEMA)
    (r,) = doc["scenarios"]
    assert r["name"] == "tasks" and r["messages"] == 300 and r["extra"]["lateness"]["started"] == 10
    (p,) = doc["peers"]
    assert p["name"] == "Huey SQLite" and p["status"] == "skipped"
    assert "fastq_no_such_task_module" in p["reason"]
    assert "delayed jobs start late by p50" in res.stderr
