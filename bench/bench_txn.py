"""Transactions against plain publishing, and read_committed against read_uncommitted
reading, in one process, measured in the same run (issue 15's bars).

- A transaction of 100 records (``broker.transaction``: its state record for the added
  partition, one transactional ``publish_many`` batch of 100, the prepare record, the
  COMMIT marker, the complete record) against a plain ``Topic.publish_many`` of 100,
  100-byte values, 1-partition topics, durability "os". Bar: 0.5.
- Reading a partition of 100-record committed transactions (markers in between) with
  ``isolation="read_committed"`` against ``"read_uncommitted"``, the same log, every
  record's value touched. Bar: 0.9.
- ``q.subscribe(handler, guarantee="exactly-once")`` against ``"at-least-once"``: a
  queue of 500 small messages drained by one subscriber thread (``max_messages=16``)
  whose handler publishes one 100-byte record per message to a topic (through ``tx`` /
  plainly). Exactly-once pays a transaction per receive (state records, a prepare
  record, two COMMIT markers, the outcome record) and a lease extension per message;
  ``sub_eos1`` is exactly-once with ``max_messages=1`` (a transaction per message). Timed by the process's CPU time (the
  handler runs on the subscription's thread) and the wall clock. Reported; no bar.

Variants run interleaved, timed by the thread's CPU time (the shared 2-core VM's wall
clock swings with the other tenants' load; see bench_idempotent.py) and by the wall
clock; rates from the median round.
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time

import pytest

import fastq
from conftest import add_ratio

SIZE = 100
BATCH = 100
TXNS = 2_000
ROUNDS = 11

add_ratio("transaction of 100 / plain publish_many of 100 (thread CPU, interleaved)", "txn100_cpu",
          "many100_cpu", 0.5)
add_ratio("transaction of 100 / plain publish_many of 100 (wall clock, interleaved)", "txn100_wall",
          "many100_wall", 0.5)
add_ratio("read_committed / read_uncommitted reading (thread CPU, interleaved)", "read_committed_cpu",
          "read_uncommitted_cpu", 0.9)
add_ratio("read_committed / read_uncommitted reading (wall clock, interleaved)", "read_committed_wall",
          "read_uncommitted_wall", 0.9)
add_ratio("exactly-once / at-least-once queue subscribe, 1 output each (process CPU; no bar)", "sub_eos_cpu",
          "sub_alo_cpu", 0.0)
add_ratio("exactly-once / at-least-once queue subscribe, 1 output each (wall clock; no bar)", "sub_eos_wall",
          "sub_alo_wall", 0.0)
add_ratio("exactly-once, one message per transaction / at-least-once subscribe (process CPU; no bar)",
          "sub_eos1_cpu", "sub_alo_cpu", 0.0)
MESSAGES = 500


@pytest.fixture
def broker():
    d = tempfile.mkdtemp(prefix="fastq-bench-txn-")
    b = fastq.open(d)
    yield b
    b.close()
    shutil.rmtree(d, ignore_errors=True)


def _interleaved(benchmark, rates, variants, unit, repeat=1):
    """Run the variants one after another each round (each ``repeat`` times), timed by
    thread CPU and wall clock; record rates of ``unit`` per second from the median."""
    cpu = {k: [] for k in variants}
    wall = {k: [] for k in variants}

    def one_round():
        for name, fn in variants.items():
            w0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(repeat):
                fn()
            cpu[name].append(time.thread_time() - c0)
            wall[name].append(time.perf_counter() - w0)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    _record(benchmark, rates, cpu, wall, unit)


def _record(benchmark, rates, cpu, wall, unit):
    for name in cpu:
        for kind, times in (("cpu", cpu[name][1:]), ("wall", wall[name][1:])):   # [0]: the warm-up
            rate = unit / statistics.median(times)
            rates[f"{name}_{kind}"] = rate
            benchmark.extra_info[f"{name}_{kind}_per_s"] = round(rate)


def test_transaction_vs_publish_many(benchmark, broker, rates):
    values = [b"x" * SIZE] * BATCH
    plain = broker.topic("plain", partitions=1)
    broker.topic("tx", partitions=1)

    def many100():
        plain.publish_many(values, partition=0)

    def txn100():
        with broker.transaction("bench") as tx:
            tx.publish_many("tx", values, partition=0)

    _interleaved(benchmark, rates, {"many100": many100, "txn100": txn100}, TXNS, repeat=TXNS)
    benchmark.extra_info["unit"] = "calls of 100 records per second"


def test_read_committed_vs_read_uncommitted(benchmark, broker, rates):
    values = [b"x" * SIZE] * BATCH
    t = broker.topic("tx", partitions=1)
    for _ in range(TXNS):
        with broker.transaction("bench") as tx:
            tx.publish_many(t, values, partition=0)
    n = TXNS * BATCH

    def reader(isolation):
        def run():
            got = 0
            for r in t.read(0, isolation=isolation):
                r.value
                got += 1
            assert got == n
        return run

    _interleaved(benchmark, rates, {"read_uncommitted": reader("read_uncommitted"),
                                    "read_committed": reader("read_committed")}, n)
    benchmark.extra_info["unit"] = "records per second"


def test_exactly_once_vs_at_least_once_subscribe(benchmark, broker, rates):
    value = b"x" * SIZE
    out = broker.topic("out", partitions=1)
    queues = {"sub_alo": broker.queue("alo"), "sub_eos": broker.queue("eos"), "sub_eos1": broker.queue("eos1")}

    def alo(m):
        out.publish(value, partition=0)

    def eos(m, tx):
        tx.publish(out, value, partition=0)

    handlers = {"sub_alo": (alo, "at-least-once", 16), "sub_eos": (eos, "exactly-once", 16),
                "sub_eos1": (eos, "exactly-once", 1)}
    cpu = {k: [] for k in queues}
    wall = {k: [] for k in queues}

    def one_round():
        for name, q in queues.items():
            q.publish_many([b"m"] * MESSAGES)
            handler, guarantee, batch = handlers[name]
            w0, c0 = time.perf_counter(), time.process_time()
            with q.subscribe(handler, guarantee=guarantee, max_messages=batch) as sub:
                while sub.handled < MESSAGES:
                    time.sleep(0.0005)
                cpu[name].append(time.process_time() - c0)       # not the stop (a receive's wait)
                wall[name].append(time.perf_counter() - w0)
            assert sub.failed == 0, sub.errors

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    _record(benchmark, rates, cpu, wall, MESSAGES)
    benchmark.extra_info["unit"] = "messages handled per second"
