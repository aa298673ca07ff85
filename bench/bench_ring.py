"""Ring buffer benchmarks: fastq.Ring beside multiprocessing.Queue and faster_fifo.Queue.

What is measured (100-byte bytes messages throughout; every queue carries bytes, faster-fifo
with identity dumps / `bytes` loads so nobody pays for pickle except multiprocessing.Queue,
which has no other mode):

* ``test_throughput_in_process``: one thread puts 100 messages then gets them back, over
  and over — the cost of a put+get pair with nobody waiting (``one``), or of one
  ``put_many(100)`` + ``get_many(100)`` (``batch``). multiprocessing.Queue's batched form is
  one ``put`` of a list of 100 messages.
* ``test_throughput_cross_process``: a forked child produces N messages as fast as it can,
  the parent consumes them; timed from the start signal to the last message received.
* ``test_latency_paced``: a forked child sends one message every 200 µs (5,000/s) stamped
  with CLOCK_MONOTONIC; the parent blocks in ``get`` and records arrival - stamp. p50/p99 in
  µs; the Ring runs once with busy-spin and once with futex sleep (spin 20 µs, then sleep).
  Producer and consumer are pinned to different CPUs; the producer sleeps most of each
  gap (multiprocessing.Queue's feeder thread needs the GIL) and spins the last 100 µs.

Results go to ``benchmark.extra_info`` (messages_per_s and mb_per_s through conftest's
``record()``, plus p50_us/p99_us/max_us for latency) and so into the pytest-benchmark JSON,
which also records the machine. Speed is reported, never asserted.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.queues
import os
import struct
import time

import pytest

from conftest import record as record_rate
from fastq import Ring

try:
    import faster_fifo
    FF_SKIP = None
except ImportError as e:  # optional bench dependency
    faster_fifo = None
    FF_SKIP = (f"faster-fifo, the optional peer of this comparison, is not importable ({e}); "
               f"pip install 'fastq-broker[bench]' to measure it beside fastq.Ring")

MSG = b"x" * 100
BATCH = 100
CTX = mp.get_context("fork")
KINDS = ["fastq.Ring", "fastq.Ring[spin]", "multiprocessing.Queue", "faster_fifo.Queue"]


def _identity(x):
    return x


def make(kind):
    if kind == "fastq.Ring":
        return Ring(1 << 22)
    if kind == "fastq.Ring[spin]":
        return Ring(1 << 22, wait="spin")
    if kind == "multiprocessing.Queue":
        return CTX.Queue()
    if faster_fifo is None:
        pytest.skip(FF_SKIP)
    return faster_fifo.Queue(1 << 22, loads=bytes, dumps=_identity)


def close(kind, q):
    q.close()
    if kind == "multiprocessing.Queue":
        q.join_thread()


def put_batch(kind, q, batch):
    if kind == "multiprocessing.Queue":
        q.put(batch)
    else:
        q.put_many(batch)


def get_batch(kind, q):
    if kind == "multiprocessing.Queue":
        return q.get()
    if kind == "faster_fifo.Queue":
        return q.get_many(max_messages_to_get=BATCH)
    return q.get_many(BATCH)


def record(benchmark, n):
    record_rate(benchmark, "ring_" + benchmark.name.removeprefix("test_"), n, len(MSG))


# ---------------------------------------------------------------- in-process

@pytest.mark.parametrize("mode", ["one", "batch"])
@pytest.mark.parametrize("kind", KINDS)
def test_throughput_in_process(benchmark, kind, mode):
    benchmark.group = f"ring in-process {mode}"
    q = make(kind)
    n = {"multiprocessing.Queue": 20_000}.get(kind, 200_000)
    batch = [MSG] * BATCH

    def one():
        for _ in range(n // BATCH):
            for _ in range(BATCH):
                q.put(MSG)
            for _ in range(BATCH):
                q.get()

    def batched():
        for _ in range(n // BATCH):
            put_batch(kind, q, batch)
            got = get_batch(kind, q)
            while len(got) < BATCH:   # faster-fifo may hand out part of a batch
                got += get_batch(kind, q)

    try:
        benchmark.pedantic(one if mode == "one" else batched, rounds=5, iterations=1, warmup_rounds=1)
        record(benchmark, n)
    finally:
        close(kind, q)


# ---------------------------------------------------------------- cross-process

def _produce(kind, q, n, mode, start):
    start.wait()
    if mode == "one":
        for _ in range(n):
            q.put(MSG)
    else:
        batch = [MSG] * BATCH
        for _ in range(n // BATCH):
            put_batch(kind, q, batch)
    if kind == "multiprocessing.Queue":
        q.close()
        q.join_thread()


@pytest.mark.parametrize("mode", ["one", "batch"])
@pytest.mark.parametrize("kind", KINDS)
def test_throughput_cross_process(benchmark, kind, mode):
    benchmark.group = f"ring cross-process {mode}"
    q = make(kind)
    n = {"multiprocessing.Queue": 50_000, "faster_fifo.Queue": 200_000}.get(kind, 1_000_000)
    if mode == "batch":
        n *= 4 if kind.startswith("fastq") else 1
    children = []

    def setup():
        for p in children:
            p.join()
        start = CTX.Event()
        p = CTX.Process(target=_produce, args=(kind, q, n, mode, start), daemon=True)
        p.start()
        children.append(p)
        return (start,), {}

    def consume(start):
        start.set()
        got = 0
        if mode == "one":
            get = q.get
            for _ in range(n):
                get()
        else:
            while got < n:
                got += len(get_batch(kind, q))

    try:
        benchmark.pedantic(consume, setup=setup, rounds=3, iterations=1)
        record(benchmark, n)
    finally:
        for p in children:
            p.join(30)
        close(kind, q)


# ---------------------------------------------------------------- paced latency

PACED_N = 5_000
PERIOD_NS = 200_000   # 5,000 messages per second


def _pin(cpu):
    """Pin the calling process to one CPU so producer and consumer never share a core (the
    scheduler otherwise sometimes stacks them, and a spinning consumer then waits for the
    producer's time slice). No-op with fewer than 2 CPUs or without sched_setaffinity."""
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[cpu]})


def _paced(q, start):
    _pin(1)
    start.wait()
    pad = b"\0" * (len(MSG) - 8)
    nxt = time.perf_counter_ns()
    for _ in range(PACED_N):
        # sleep most of the gap (releases the GIL: multiprocessing.Queue's feeder thread
        # needs it to flush), spin the last 100 us for an exact send time
        left = nxt - time.perf_counter_ns()
        if left > 150_000:
            time.sleep((left - 100_000) / 1e9)
        while time.perf_counter_ns() < nxt:
            pass
        q.put(struct.pack("<q", time.perf_counter_ns()) + pad)
        nxt += PERIOD_NS
    if isinstance(q, mp.queues.Queue):
        q.close()
        q.join_thread()


@pytest.mark.parametrize("kind", KINDS)
def test_latency_paced(benchmark, kind):
    """perf_counter_ns is CLOCK_MONOTONIC on Linux: one clock for both processes."""
    benchmark.group = "ring paced latency (5,000 msgs/s, cross-process)"
    q = make(kind)
    lat = []

    def run():
        start = CTX.Event()
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        p = CTX.Process(target=_paced, args=(q, start), daemon=True)
        p.start()
        _pin(0)
        try:
            start.set()
            for _ in range(PACED_N):
                m = q.get()
                lat.append(time.perf_counter_ns() - struct.unpack_from("<q", m)[0])
        finally:
            if affinity:
                os.sched_setaffinity(0, affinity)
        p.join(30)

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
        record(benchmark, PACED_N)
        lat.sort()
        benchmark.extra_info["p50_us"] = round(lat[len(lat) // 2] / 1e3, 1)
        benchmark.extra_info["p99_us"] = round(lat[int(len(lat) * 0.99)] / 1e3, 1)
        benchmark.extra_info["max_us"] = round(lat[-1] / 1e3, 1)
    finally:
        close(kind, q)
