"""Memory topics and the ring-accumulating producer, beside durable topics in the same run.

Measured, with 100-byte messages (messages/s in ``extra_info``; ratios printed at the end):
- in-process publish -> consume: ``publish`` one message at a time, ``poll(1000)`` after
  every 1,000, through a memory topic (``storage="memory"``, 16 MiB ring) and through a
  durable topic (durability "os") with a group-less consumer;
- cross-process: one forked publisher process, the consumer in the benchmark process,
  for both kinds of topic (the memory topic's ring blocks the publisher when full);
- the batching producer (``topic.producer().send`` per message, ring accumulator) into
  a durable 4-partition topic, unkeyed and keyed, including the final flush.
"""
from __future__ import annotations

import multiprocessing as mp
import shutil
import tempfile

import pytest

import fastq
from conftest import add_ratio, record

N = 100_000
SIZE = 100
PAYLOAD = b"x" * SIZE
ROUNDS = 3
CTX = mp.get_context("fork")

add_ratio("in-process: memory topic / durable topic", "memtopic_inproc[memory]", "memtopic_inproc[log]", 1.0)
add_ratio("cross-process: memory topic / durable topic", "memtopic_xproc[memory]", "memtopic_xproc[log]", 1.0)


@pytest.fixture
def bdir():
    d = tempfile.mkdtemp(prefix="fastq-bench-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _topic(b, kind, name):
    if kind == "memory":
        return b.topic(name, storage="memory", capacity_bytes=16 << 20)
    return b.topic(name)


def _consume(c, n):
    got = 0
    while got < n:
        recs = c.poll(1000, timeout=10)
        if not recs:
            raise RuntimeError(f"consumer starved after {got} of {n} records")
        got += len(recs)
        del recs


@pytest.mark.parametrize("kind", ["memory", "log"])
def test_memtopic_inproc(benchmark, bdir, kind):
    state = {"i": 0}

    def setup():
        state["i"] += 1
        b = fastq.open(f"{bdir}/{state['i']}")
        t = _topic(b, kind, "t")
        state["b"], state["t"], state["c"] = b, t, t.consumer()
        return (), {}

    def run():
        t, c = state["t"], state["c"]
        publish = t.publish
        for _ in range(N // 1000):
            for _ in range(1000):
                publish(PAYLOAD)
            _consume(c, 1000)

    try:
        benchmark.pedantic(run, setup=setup, teardown=lambda *a, **k: _close(state),
                           rounds=ROUNDS, iterations=1)
    finally:
        _close(state)
    record(benchmark, f"memtopic_inproc[{kind}]", N, SIZE)


def _close(state):
    for k in ("c", "b"):
        obj = state.pop(k, None)
        if obj is not None:
            obj.close()
    state.pop("t", None)


def _publisher(path, kind, n, go):
    with fastq.open(path) as b:
        t = _topic(b, kind, "x")
        go.wait(30)
        publish = t.publish
        for _ in range(n):
            publish(PAYLOAD)


@pytest.mark.parametrize("kind", ["memory", "log"])
def test_memtopic_xproc(benchmark, bdir, kind):
    state = {"i": 0}

    def setup():
        state["i"] += 1
        path = f"{bdir}/{state['i']}"
        b = fastq.open(path)
        t = _topic(b, kind, "x")
        go = CTX.Event()
        p = CTX.Process(target=_publisher, args=(path, kind, N, go))
        p.start()
        state.update(b=b, t=t, c=t.consumer(), go=go, p=p)
        return (), {}

    def run():
        state["go"].set()
        _consume(state["c"], N)

    def teardown(*a, **k):
        state["p"].join(30)
        _close(state)

    benchmark.pedantic(run, setup=setup, teardown=teardown, rounds=ROUNDS, iterations=1)
    record(benchmark, f"memtopic_xproc[{kind}]", N, SIZE)


@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])
def test_producer_send(benchmark, bdir, keyed):
    keys = [b"k%d" % i for i in range(64)]
    state = {"i": 0}

    def setup():
        state["i"] += 1
        b = fastq.open(f"{bdir}/{state['i']}")
        state["b"], state["t"] = b, b.topic("p", partitions=4)
        return (), {}

    def run():
        with state["t"].producer(linger_ms=5) as p:
            send = p.send
            if keyed:
                for i in range(N):
                    send(PAYLOAD, key=keys[i & 63])
            else:
                for _ in range(N):
                    send(PAYLOAD)

    benchmark.pedantic(run, setup=setup, teardown=lambda *a, **k: _close(state), rounds=ROUNDS, iterations=1)
    record(benchmark, f"producer_send[{'keyed' if keyed else 'unkeyed'}]", N, SIZE)
