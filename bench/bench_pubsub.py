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
  off for pub/sub clients), driven as fast as Python can: raw sockets and hiredis's
  parser, pipelined ``PUBLISH`` batches of 1,000, subscribers ``PSUBSCRIBE orders.*``
  parsing whatever one ``recv`` brings (redis-py's ``get_message`` loop reached ~37k/s
  here). Skipped, with the reason, where redis-server or hiredis is missing.

Goal (issue 17): ≥ 1M messages/s delivered in total to 4 subscriber processes.
"""
from __future__ import annotations

import multiprocessing as mp
import shutil
import socket
import tempfile

import pytest

import fastq
from conftest import add_ratio, record
from fastq.bench.servers import start_redis, stop, which

try:
    import hiredis
except ImportError:                           # the Redis peer is skipped, with the reason
    hiredis = None

N = 200_000
N_REDIS = 100_000
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


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _redis_subscriber(port, n, conn):
    """Redis at its best from Python: the raw socket and hiredis's parser in bulk."""
    s = socket.create_connection(("127.0.0.1", port))
    rd = hiredis.Reader()
    s.sendall(_resp(b"PSUBSCRIBE", b"orders.*"))
    reply = False
    while reply is False:
        rd.feed(s.recv(4096))
        reply = rd.gets()
    conn.send("ready")
    got = 0
    s.settimeout(30)
    while got < n:
        data = s.recv(1 << 20)
        if not data:
            break
        rd.feed(data)
        m = rd.gets()
        while m is not False:
            if m[0] == b"pmessage":
                got += 1
            m = rd.gets()
    conn.send(got)
    s.close()


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
    if hiredis is None:
        pytest.skip("the hiredis package is missing (pip install fastq-broker[compare])")
    proc, port, _ = start_redis(bdir)
    state = {}
    try:
        pub = socket.create_connection(("127.0.0.1", port))
        rd = hiredis.Reader()
        pub.sendall(_resp(b"CONFIG", b"SET", b"client-output-buffer-limit", b"pubsub 0 0 0"))
        reply = False
        while reply is False:                 # never disconnect a slow subscriber
            rd.feed(pub.recv(4096))
            reply = rd.gets()
        batch = _resp(b"PUBLISH", CHANNEL.encode(), PAYLOAD) * BATCH

        def setup():
            state["procs"], state["conns"] = _start(_redis_subscriber, [(port, N_REDIS)] * 4)
            return (), {}

        def run():
            for _ in range(N_REDIS // BATCH):
                pub.sendall(batch)            # a pipeline of 1,000 PUBLISH, then their replies
                left = BATCH
                while left:
                    rd.feed(pub.recv(1 << 16))
                    while left and rd.gets() is not False:
                        left -= 1
            _finish(state["procs"], state["conns"], N_REDIS)

        benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
        pub.close()
    finally:
        stop(proc)
    record(benchmark, "pubsub_fanout[redis]", 4 * N_REDIS, SIZE)
    print(f"\npubsub_fanout[redis]: {benchmark.extra_info['messages_per_s']:,} messages/s delivered")
