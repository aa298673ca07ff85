"""Idempotent publishing against plain publishing, in one process, measured in the same run.

Measured, with 100-byte messages on 1-partition topics (durability "os"), one record per
call: ``Topic.publish`` (the baseline), ``IdempotentProducer.publish`` (every batch
stamped with a producer id and sequence and checked against the partition's producer
state under the writer lock), and the same through a transactional id (its fence word
checked too). The ratio idempotent / plain has a bar of 0.9 (issue 15).

Also two processes publishing to the same partition at once, 1 record per call, each
process's producer state catching up under the writer lock with the other's batches
before each idempotent append: idempotent against plain, rounds interleaved, wall clock
from the release of both processes to the end of the slower (no bar: a measurement of
what the catch-up costs under contention).

The variants run interleaved — plain, idempotent, transactional, plain, ... — and each
round is timed by the publishing thread's CPU time (``time.thread_time``) as well as by
the wall clock: on the shared 2-core VM these benchmarks run on, wall-clock rounds of
consecutive tests swing by 2x with the other tenants' load (a ratio of 0.66x in one run
and 1.57x in the next), while interleaved CPU time is steady. Rates are from the median
round; both ratios are reported against the same bar; the CPU-time one is the measurement that
means something on a loaded machine.
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time

import pytest

import fastq
from conftest import add_ratio
from xproc import CTX, reap

N = 100_000
SIZE = 100
ROUNDS = 15

add_ratio("idempotent publish / plain publish (thread CPU, interleaved)", "idem_publish_cpu",
          "plain_publish_cpu", 0.9)
add_ratio("transactional-id publish / plain publish (thread CPU, interleaved)", "txid_publish_cpu",
          "plain_publish_cpu", 0.9)
add_ratio("idempotent publish / plain publish (wall clock, interleaved)", "idem_publish_wall",
          "plain_publish_wall", 0.9)
add_ratio("2 processes, 1 partition: idempotent / plain (wall clock)", "xproc2_idem", "xproc2_plain", 0.0)


@pytest.fixture
def broker():
    d = tempfile.mkdtemp(prefix="fastq-bench-idem-")
    b = fastq.open(d)
    yield b
    b.close()
    shutil.rmtree(d, ignore_errors=True)


def test_idempotent_vs_plain_publish(benchmark, broker, rates):
    value = b"x" * SIZE
    plain = broker.topic("plain", partitions=1)
    idem = broker.topic("idem", partitions=1).producer(idempotent=True)
    txid = broker.topic("txid", partitions=1).producer(transactional_id="bench")
    variants = {"plain_publish": plain.publish, "idem_publish": idem.publish, "txid_publish": txid.publish}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    wall: dict[str, list[float]] = {k: [] for k in variants}

    def one_round():
        for name, publish in variants.items():
            w0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(N):
                publish(value, partition=0)
            cpu[name].append(time.thread_time() - c0)
            wall[name].append(time.perf_counter() - w0)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    for name in variants:
        for kind, times in (("cpu", cpu[name][1:]), ("wall", wall[name][1:])):   # [0]: the warm-up
            rate = N / statistics.median(times)
            rates[f"{name}_{kind}"] = rate
            benchmark.extra_info[f"{name}_{kind}_messages_per_s"] = round(rate)
    benchmark.extra_info["messages_per_round_per_variant"] = N
    benchmark.extra_info["message_bytes"] = SIZE
    idem.close()
    txid.close()


def _publisher(path, idempotent, n, ready, go):
    b = fastq.open(path)
    t = b.topic("t", partitions=1)
    p = t.producer(idempotent=True) if idempotent else t
    t.log(0)
    value = b"x" * SIZE
    ready.release()
    go.wait()
    for _ in range(n):
        p.publish(value, partition=0)
    b.close()


def test_two_processes_one_partition(benchmark, broker, rates):
    n = N // 2
    times: dict[str, list[float]] = {"xproc2_plain": [], "xproc2_idem": []}
    broker.topic("t", partitions=1)

    def one_round():
        for name in times:
            ready, go = CTX.Semaphore(0), CTX.Event()
            procs = [CTX.Process(target=_publisher, args=(broker.path, name == "xproc2_idem", n, ready, go))
                     for _ in range(2)]
            for pr in procs:
                pr.start()
            for _ in procs:
                ready.acquire()
            t0 = time.perf_counter()
            go.set()
            reap(procs)
            times[name].append(time.perf_counter() - t0)
            assert all(pr.exitcode == 0 for pr in procs)

    benchmark.pedantic(one_round, rounds=5, iterations=1)
    for name, ts in times.items():
        rates[name] = 2 * n / statistics.median(ts)
        benchmark.extra_info[f"{name}_messages_per_s"] = round(rates[name])
