"""Pub/sub fan-out (fastq.pubsub) beside Redis pub/sub, in the same run.

Measured: one publisher (the benchmark process) publishes N 100-byte messages to
``orders.eu.created`` with ``publish_many`` batches of 1,000; 4 subscriber processes
(forked before the round, each subscribed with a different wildcard pattern that matches
the channel: ``orders.*.created``, ``orders.>``, ``orders.eu.*``, glob ``orders.*``) read
with ``poll(max_messages=5000)`` until each has N. The round ends when all four have
everything; ``messages_per_s`` is the total delivered (4 × N) over the round's time.

- ``pubsub_fanout[durable]``: log-backed namespace (durability "os");
- ``pubsub_fanout[ephemeral]``: memory namespace, a 32 MiB ring per subscriber (no drops);
- ``pubsub_fanout[redis]``: ``redis-server`` on 127.0.0.1 (a free port, output-buffer limit
  off for pub/sub clients), redis-py: pipelined ``PUBLISH`` batches of 1,000, subscribers
  ``PSUBSCRIBE orders.*`` reading with ``get_message``. Skipped, with the reason, where
  redis-server or the redis package is missing.

Goal (issue 17): ≥ 1M messages/s delivered in total to 4 subscriber processes.
"""
from __future__ import annotations

import multiprocessing as mp
import shutil
import tempfile

import pytest

import fastq
from conftest import add_ratio, record
from fastq.bench.servers import start_redis, stop, which

N = 200_000
N_REDIS = 50_000
SIZE = 100
BATCH = 1000
PAYLOAD = b"x" * SIZE
ROUNDS = 3
CTX = mp.get_context("fork")
PATTERNS = [("nats", "orders.*.created"), ("nats", "orders.>"), ("nats", "orders.eu.*"), ("glob", "orders.*")]
CHANNEL = "orders.eu.created"

add_ratio("pub/sub fan-out to 4 processes: durable / Redis pub/sub", "pubsub_fanout[durable]",
          "pubsub_fanout[redis]", 1.0)
add_ratio("pub/sub fan-out to 4 processes: ephemeral / Redis pub/sub", "pubsub_fanout[ephemeral]",
          "pubsub_fanout[redis]", 1.0)


def _fastq_subscriber(path, ns, syntax, pattern, n, conn):
    with fastq.open(path) as b:
        ps = b.pubsub(ns)
        opts = {} if ps.durable else {"buffer_bytes": 32 << 20}
        sub = ps.subscribe(pattern, syntax=syntax, max_poll=5000, **opts)
        conn.send("ready")
        got = 0
        while got < n:
            msgs = sub.poll(5000, timeout=30)
            if not msgs:
                break
            got += len(msgs)
        conn.send(got)
        ps.close()


def _redis_subscriber(port, n, conn):
    import redis                            # noqa: PLC0415 - only in the child, only for this peer
    r = redis.Redis(port=port)
    p = r.pubsub(ignore_subscribe_messages=True)
    p.psubscribe("orders.*")
    while p.get_message(timeout=1.0) is None and not p.subscribed:
        pass
    conn.send("ready")
    got = 0
    while got < n:
        m = p.get_message(timeout=30)
        if m is None:
            break
        got += 1
    conn.send(got)
    p.close()
    r.close()


def _start(target, argss):
    procs, conns = [], []
    for args in argss:
        a, b = CTX.Pipe()
        pr = CTX.Process(target=target, args=(*args, b))
        pr.start()
        procs.append(pr)
        conns.append(a)
    for c in conns:
        assert c.recv() == "ready"
    return procs, conns


def _finish(procs, conns, n):
    got = [c.recv() for c in conns]
    for p in procs:
        p.join(30)
    assert got == [n] * len(procs), f"subscribers got {got} of {n}"


@pytest.fixture
def bdir():
    d = tempfile.mkdtemp(prefix="fastq-bench-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("mode", ["durable", "ephemeral"])
def test_pubsub_fanout(benchmark, bdir, mode):
    state = {"i": 0}
    b = fastq.open(f"{bdir}/b")

    def setup():
        state["i"] += 1
        ns = f"ev{state['i']}"
        ps = b.pubsub(ns, durable=(mode == "durable"))
        state["ps"] = ps
        state["procs"], state["conns"] = _start(
            _fastq_subscriber, [(b.path, ns, s, p, N) for s, p in PATTERNS])
        return (), {}

    def run():
        publish_many = state["ps"].publish_many
        values = [PAYLOAD] * BATCH
        for _ in range(N // BATCH):
            publish_many(CHANNEL, values)
        _finish(state["procs"], state["conns"], N)

    try:
        benchmark.pedantic(run, setup=setup, teardown=lambda *a, **k: state["ps"].close(),
                           rounds=ROUNDS, iterations=1)
    finally:
        b.close()
    record(benchmark, f"pubsub_fanout[{mode}]", 4 * N, SIZE)
    print(f"\npubsub_fanout[{mode}]: {benchmark.extra_info['messages_per_s']:,} messages/s delivered")


def test_pubsub_fanout_redis(benchmark, bdir):
    if which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (Debian: apt-get install redis-server)")
    redis = pytest.importorskip("redis", reason="the redis package (pip install fastq[compare])")
    proc, port, _ = start_redis(bdir)
    state = {}
    try:
        r = redis.Redis(port=port)
        r.config_set("client-output-buffer-limit", "pubsub 0 0 0")   # never disconnect a slow subscriber

        def setup():
            state["procs"], state["conns"] = _start(_redis_subscriber, [(port, N_REDIS)] * 4)
            return (), {}

        def run():
            values = [PAYLOAD] * BATCH
            for _ in range(N_REDIS // BATCH):
                pipe = r.pipeline(transaction=False)
                for v in values:
                    pipe.publish(CHANNEL, v)
                pipe.execute()
            _finish(state["procs"], state["conns"], N_REDIS)

        benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
        r.close()
    finally:
        stop(proc)
    record(benchmark, "pubsub_fanout[redis]", 4 * N_REDIS, SIZE)
    print(f"\npubsub_fanout[redis]: {benchmark.extra_info['messages_per_s']:,} messages/s delivered")
