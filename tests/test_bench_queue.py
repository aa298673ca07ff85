"""The queue benchmark (``fastq bench --scenario queue``, :mod:`fastq.bench.queue_scenarios`)
and its peers: the cross-process harness counts what it sends and what comes back, spots a
duplicate, the fastq scenarios run on a tiny workload with sane fields, and a queue peer
whose library or server is missing — or whose scenarios were not selected — is listed as
skipped with the reason. No server is started here; every test takes about a second."""
from __future__ import annotations

import json
import queue as stdqueue
import time

import jsonschema
import pytest
from click.testing import CliRunner

from fastq.bench import peers as P, queue_scenarios as Q, scenarios as B
from fastq.cli import cli

TINY = ["--messages", "300", "--seconds", "2", "--redelivery-trials", "2", "--consumers", "2"]


class _StubQueue(Q.QueueTransport):
    """A multiprocessing.Queue posing as a queue with acks (acks do nothing): the harness's
    bookkeeping, tested without fastq's queue or any peer. ``dup_every``: deliver every
    that-many-th message twice."""
    name = "stub"
    description = "multiprocessing.Queue, acks ignored"
    redelivery_unsupported = "a stub"
    dup_every = 0
    slow_s = 0.0        # a consumer's pause per receive
    q = None

    def new_round(self):
        super().new_round()
        self._close()
        self.q = B.CTX.Queue()

    def _close(self):
        if self.q is not None:
            self.q.close()
            self.q.join_thread()

    def producer(self):
        q, dup = self.q, self.dup_every

        class Prod(Q.QProducer):
            n = 0

            def send(self, data):
                q.put(data)
                self.n += 1
                if dup and self.n % dup == 0:
                    q.put(data)

            def close(self):
                q.close()
                q.join_thread()
        return Prod()

    def consumer(self):
        q, slow_s = self.q, self.slow_s

        class Cons(Q.QConsumer):
            def recv(self, n, timeout):
                time.sleep(slow_s)
                try:
                    out = [q.get(timeout=timeout)]
                except stdqueue.Empty:
                    return []
                while len(out) < n:
                    try:
                        out.append(q.get_nowait())
                    except stdqueue.Empty:
                        break
                return out

            def body(self, m):
                return m

            def ack(self, m):
                pass
        return Cons()

    def teardown(self):
        self._close()


@pytest.mark.parametrize("producers, consumers, batch", [(1, 1, 1), (2, 2, 1), (1, 2, Q.QBATCH)])
def test_harness_counts_every_message_once(producers, consumers, batch):
    cfg = B.Config(messages=450, size=32, producers=producers, consumers=consumers, seconds=5)
    tr = _StubQueue()
    tr.setup("/nonexistent", cfg)
    try:
        r = Q.run_queue(tr, cfg, n=cfg.messages, batch=batch)
    finally:
        tr.teardown()
    assert r["published"] == r["delivered"] == 450
    assert r["exactly_once"] and r["seconds"] > 0


def test_harness_spots_duplicates():
    cfg = B.Config(messages=200, size=16, producers=1, consumers=1, seconds=5)
    tr = _StubQueue()
    tr.dup_every = 50
    tr.setup("/nonexistent", cfg)
    try:
        r = Q.run_queue(tr, cfg, n=cfg.messages, batch=1)
    finally:
        tr.teardown()
    assert r["published"] == 200 and r["delivered"] >= 200
    assert not r["exactly_once"]


def test_consumers_stop_at_the_drain_limit(monkeypatch):
    # a queue whose consumers cannot keep up is not waited for without end
    monkeypatch.setattr(Q, "drain_seconds", lambda cfg: 0.3)
    # (500 small messages fit the stub's pipe, so its producer finishes)
    cfg = B.Config(messages=500, size=16, producers=1, consumers=1, seconds=5)
    tr = _StubQueue()
    tr.slow_s = 0.01
    tr.setup("/nonexistent", cfg)
    try:
        r = Q.run_queue(tr, cfg, n=cfg.messages, batch=1)
    finally:
        tr.teardown()
    assert r["published"] == 500 and 0 < r["delivered"] < 500
    assert r["drained"] is False and r["exactly_once"] is None and r["seconds"] < 5


def test_peer_result_shape_and_ratios():
    cfg = B.Config(messages=300, size=16, producers=1, consumers=1, seconds=5, redelivery_trials=2)
    r = Q.run_queue_peer(_StubQueue(), cfg, "/nonexistent")
    assert r["messages"] == r["extra"]["published"] == 300
    assert r["extra"]["batch_result"]["messages"] == 300 and r["extra"]["batch_result"]["exactly_once"]
    assert r["extra"]["drained"] and r["extra"]["batch_result"]["drained"]
    by = r["extra"]["messages_per_s_by_scenario"]
    assert by["queue"] == r["messages_per_s"] and by["queue-batch"] > 0
    assert r["extra"]["redelivery"] == {"supported": False, "reason": "a stub"}
    # the ratio of each fastq queue scenario uses the peer's rate on that workload
    peer = {**r, "name": "stub", "status": "ok", "reason": None, "compare_with": ["queue", "queue-batch"]}
    fastq_rows = [{"name": "queue", "messages_per_s": 2 * by["queue"]},
                  {"name": "queue-batch", "messages_per_s": 3 * by["queue-batch"]}]
    ratios = {x["scenario"]: x["ratio"] for x in B.ratios(fastq_rows, [peer])}
    assert ratios == {"queue": 2.0, "queue-batch": 3.0}


def test_fastq_queue_scenarios_on_a_tiny_workload(tmp_path):
    cfg = B.Config(messages=300, size=64, producers=2, consumers=2, seconds=5, redelivery_trials=2,
                   directory=str(tmp_path))
    results = {}
    for name, batch in (("queue", 1), ("queue-batch", Q.QBATCH)):
        results[name] = r = B.run_scenario(name, cfg)
        jsonschema.validate(r, B.SCENARIO_SCHEMA)
        e = r["extra"]
        assert r["name"] == name and r["size"] == 64 and r["latency"] is None
        assert r["messages"] == e["published"] == 300 and e["exactly_once"], r
        assert r["seconds"] > 0 and r["messages_per_s"] > 0
        assert (e["batch"], e["producers"], e["consumers"]) == (batch, 2, 2)
    red = results["queue"]["extra"]["redelivery"]
    # a killed consumer's message reaches the other consumer: within seconds (the lease is
    # 30 s, so it is the dead session that was noticed), in every trial
    assert red["supported"] and red["trials"] == 2 and red["timeouts"] == 0, red
    assert 0 < red["p50_ms"] <= red["max_ms"] < 5000 and len(red["values_ms"]) == 2, red
    assert "redelivery" not in results["queue-batch"]["extra"]
    assert list(tmp_path.iterdir()) == []       # the scenarios' directories are removed


QUEUE_PEERS = [P.RabbitMQ, P.RedisStreamsGroup, P.PersistAckQueue, P.LiteQueueAck]


@pytest.mark.parametrize("peer", QUEUE_PEERS, ids=lambda p: p.name)
def test_queue_peer_missing_library_is_skipped_with_reason(peer, monkeypatch):
    monkeypatch.setattr(peer, "module", "fastq_no_such_client_module")
    why = P.availability(peer)
    assert why and "fastq_no_such_client_module" in why and "not importable" in why
    r = P.run_peer(peer, B.Config(), "/nonexistent")
    assert r["status"] == "skipped" and r["reason"] == why
    jsonschema.validate(r, B.PEER_SCHEMA)


@pytest.mark.parametrize("peer", [P.RabbitMQ, P.RedisStreamsGroup], ids=lambda p: p.name)
def test_queue_peer_missing_server_is_skipped_with_reason(peer, monkeypatch):
    monkeypatch.setattr(P, "_which", lambda binary: None)
    monkeypatch.setattr(peer, "module", "json")       # the client "importable"
    assert P.availability(peer) == f"{peer.binary} is not on PATH"


def test_rabbitmq_server_script_behind_debians_wrapper(tmp_path, monkeypatch):
    # Debian's rabbitmq-server on PATH re-runs the real script as the rabbitmq user; the
    # benchmark runs the real one (beside the wrapper) with its own environment
    libbin = tmp_path / "lib" / "rabbitmq" / "bin"
    libbin.mkdir(parents=True)
    wrapper, real = libbin / "rabbitmq-script-wrapper", libbin / "rabbitmq-server"
    for f in (wrapper, real):
        f.write_text("#!/bin/sh\n")
        f.chmod(0o755)
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    (sbin / "rabbitmq-server").symlink_to(wrapper)
    monkeypatch.setattr(P, "_which", lambda binary: str(sbin / binary))
    assert P._rabbitmq_server() == str(real)


def test_cli_lists_skipped_queue_peers_with_reasons(monkeypatch):
    monkeypatch.setattr(P.RabbitMQ, "module", "fastq_no_such_client_module")
    res = CliRunner().invoke(cli, ["bench", "--messages", "300", "--scenario", "publish", "--peer", "RabbitMQ",
                                   "--peer", "multiprocessing.Queue", "--json", "-"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    peers = {p["name"]: p for p in doc["peers"]}
    assert peers["RabbitMQ"]["status"] == "skipped"
    assert "fastq_no_such_client_module" in peers["RabbitMQ"]["reason"]
    # a peer whose scenarios did not run is skipped, and says so
    assert peers["multiprocessing.Queue"]["status"] == "skipped"
    assert "none of the scenarios" in peers["multiprocessing.Queue"]["reason"]
    assert "RabbitMQ" in res.stderr and "fastq_no_such_client_module" in res.stderr
    assert "'fastq-broker[compare]'" in res.stderr      # printed, not eaten as rich markup


def test_bad_redelivery_trials_is_a_usage_error():
    res = CliRunner().invoke(cli, ["bench", "--redelivery-trials", "-1"])
    assert res.exit_code == 2 and "--redelivery-trials" in res.output
