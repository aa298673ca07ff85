"""Bounded queues, watermarks and depth signals (fastq.queue.bounds, docs/BACKPRESSURE.md).

- each overflow policy under producers faster than the consumer, across processes:
  nothing acknowledged is lost with reject and block (every publish that returned is
  received), drop-oldest loses only what it dead-lettered, and the depth a consumer sees
  stays within max_depth + the producers racing;
- watermark hysteresis and its callback; signals (runnable net of delayed and of nacks not
  yet due); the drain rate measured across processes against the rate a consumer kept;
- kill -9 of producers mid-publish (a loop): the depth counts match what a drain receives;
- fault injection into what this adds to queue.state (limits, drain ring): garbage there
  is read as sane values, never a crash or a negative/infinite rate;
- bad input; publish_many all or nothing; a dedup publish on a full dedup table stores nothing.
"""
from __future__ import annotations

import collections
import json
import math
import multiprocessing as mp
import os
import random
import signal
import struct
import threading
import time

import pytest

import fastq
from fastq.queue.bounds import RETRY_AFTER_MAX, RETRY_AFTER_MIN, retry_after_estimate
import asyncio

from bounded_workers import (QUEUE, TASKS, consumer, dropping_producer, task_dropper, killable_producer, producer, steady_consumer,
                             task_producer, task_worker)
from queue_workers import read_lines

TORTURE = os.environ.get("FASTQ_TORTURE") == "1"
CTX = mp.get_context("fork")


def run_procs(procs, timeout=120):
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"{p.name} exit code {p.exitcode}"


def overflow_run(tmp_path, overflow: str, retry: bool, **extra):
    """2 producer processes x n items into a queue of max_depth 40, one consumer process
    sleeping 1 ms per message. Returns (producer lines, consumer lines, queue handle, broker)."""
    path = str(tmp_path / "b")
    n, md = 300, 40
    b = fastq.open(path)
    q = b.queue(QUEUE, max_depth=md, overflow=overflow, **extra)
    stop = str(tmp_path / "stop")
    plogs = [str(tmp_path / f"p{w}.log") for w in range(2)]
    clog = str(tmp_path / "c.log")
    cons = CTX.Process(target=consumer, args=(path, clog, stop, 0.001), name="consumer")
    cons.start()
    run_procs([CTX.Process(target=producer, args=(path, plogs[w], w, n, retry), name=f"producer{w}")
               for w in range(2)])
    open(stop, "w").close()
    cons.join(120)
    assert cons.exitcode == 0
    plines = [ln for f in plogs for ln in read_lines(f)]
    return plines, read_lines(clog), q, b, md


def _recv(clines):
    return [ln[1] for ln in clines if ln[0] == "recv"]


def test_reject_across_processes_loses_nothing_acknowledged(tmp_path):
    plines, clines, q, b, md = overflow_run(tmp_path, "reject", retry=True)
    ok = {ln[1] for ln in plines if ln[0] == "ok"}
    full = [ln for ln in plines if ln[0] == "full"]
    assert len(ok) == 600
    assert full, "the producers never met the limit: the test did not test it"
    assert all(RETRY_AFTER_MIN <= float(ln[2]) <= RETRY_AFTER_MAX for ln in full)
    got = _recv(clines)
    assert set(got) == ok                      # every acknowledged publish arrived ...
    assert len(got) == len(ok)                 # ... once: a refused publish stored nothing
    assert max(int(ln[2]) for ln in clines if ln[0] == "recv") <= md + 2
    assert q.depth() == fastq.QueueDepth(0, 0, 0, 0, 0.0)
    b.close()


def test_block_across_processes_loses_nothing(tmp_path):
    plines, clines, q, b, md = overflow_run(tmp_path, "block", retry=False, block_timeout=60.0)
    ok = [ln[1] for ln in plines if ln[0] == "ok"]
    assert len(ok) == 600 and not [ln for ln in plines if ln[0] == "full"]
    got = _recv(clines)
    assert sorted(got) == sorted(ok)
    assert max(int(ln[2]) for ln in clines if ln[0] == "recv") <= md + 2
    b.close()


def test_drop_oldest_across_processes_dead_letters_the_oldest(tmp_path):
    plines, clines, q, b, md = overflow_run(tmp_path, "drop-oldest", retry=False, dead_letter="dropped")
    ok = [ln[1] for ln in plines if ln[0] == "ok"]
    assert len(ok) == 600                      # a publish never fails: it makes room
    dropped = sum(int(ln[1]) for ln in plines if ln[0] == "done")
    assert dropped > 0
    dlq = b.queue("dropped")
    dead = []
    while True:
        ms = dlq.receive(100, wait=0)
        if not ms:
            break
        for m in ms:
            assert m.headers["dlq-reason"].startswith(b"dropped:")
            dead.append(m.data)
        dlq.ack_many(ms)
    got = _recv(clines)
    assert len(dead) == dropped
    assert sorted(got + dead) == sorted(ok)    # each message either consumed or dead-lettered
    assert not set(got) & set(dead)
    assert q.depth().dead == dropped
    b.close()


def test_drop_oldest_drops_the_oldest_of_the_lowest_priority(tmp_path):
    with fastq.open(str(tmp_path / "b")) as b:
        q = b.queue("q", max_depth=6, overflow="drop-oldest")
        q.publish_many([0, 1, 2])
        q.publish_many([10, 11, 12], priority=5)
        held = q.receive(1, wait=0)                  # 10: in flight, never dropped
        q.publish(3)
        q.publish_many([4, 5])
        assert q.dropped == 3 and q.depth().dead == 3
        got = [m.data for m in q.receive(10, wait=0)]
        assert got == [11, 12, 3, 4, 5]
        q.set_limits(max_depth=1)
        with pytest.raises(fastq.QueueFull):        # only in-flight ones left: no room to make
            q.publish(6)
        assert held[0].data == 10


def test_max_bytes_bounds_the_estimated_stored_bytes(tmp_path):
    with fastq.open(str(tmp_path / "b")) as b:
        q = b.queue("q", codec="raw")
        q.publish(b"x" * 1000)
        d, nb, rec = q._bytes_fast()
        assert d == 1 and 1000 < rec < 1200 and nb == int(rec)     # a record's framing included
        q.set_limits(max_bytes=int(rec * 50.5))
        n = 1
        with pytest.raises(fastq.QueueFull) as ei:
            for _ in range(100):
                q.publish(b"x" * 1000)
                n += 1
        assert n == 50 and "max_bytes" in str(ei.value)
        s = q.signals()
        assert s.depth == 50 and s.max_bytes == int(rec * 50.5) and s.bytes == pytest.approx(50 * rec, rel=0.01)
        assert s.retry_after is not None
        for m in q.receive(10, wait=0):
            m.ack()
        q.publish_many([b"x" * 1000] * 10)                           # room again
        with pytest.raises(fastq.QueueFull):
            q.publish_many([b"x" * 1000] * 2)                         # all or nothing
        assert q.depth().ready == 50
        q.set_limits(overflow="drop-oldest")
        q.publish(b"y" * 1000)
        assert q.dropped == 1 and q.depth().ready == 50
        with pytest.raises(fastq.InvalidArgument):
            q.set_limits(max_bytes=0)


def test_block_times_out_with_queue_full(tmp_path):
    with fastq.open(str(tmp_path / "b")) as b:
        q = b.queue("q", max_depth=3, overflow="block", block_timeout=0.2)
        q.publish_many([1, 2, 3])
        t0 = time.monotonic()
        with pytest.raises(fastq.QueueFull) as ei:
            q.publish(4)
        assert time.monotonic() - t0 >= 0.2
        assert ei.value.retry_after == RETRY_AFTER_MAX     # nothing drains: the cap
        assert q.depth().ready == 3
        # a consumer in another thread makes room: the blocked publish goes on
        q.set_limits(block_timeout=30.0)
        done = threading.Event()

        def free():
            time.sleep(0.05)
            q.receive(1, wait=0)[0].ack()
            done.set()
        t = threading.Thread(target=free)
        t.start()
        q.publish(4)
        t.join()
        assert done.is_set() and q.depth().ready == 3


def test_publish_many_all_or_nothing_and_bad_batches(tmp_path):
    with fastq.open(str(tmp_path / "b")) as b:
        q = b.queue("q", max_depth=10)
        q.publish_many(list(range(8)))
        with pytest.raises(fastq.QueueFull):
            q.publish_many([8, 9, 10])
        assert q.depth().ready == 8
        with pytest.raises(fastq.QueueFull):
            q.publish_many([8, 9, 10], key=b"k", headers={"h": b"v"})   # the Python path too
        q.publish(8, delay=5.0)                                      # delayed ones count
        with pytest.raises(fastq.QueueFull):
            q.publish_many([9, 10])
        q.publish(9)
        assert q.depth().ready == 9 and q.depth().delayed == 1
        with pytest.raises(fastq.QueueFull):
            q.publish(10, delay=5.0)
        with pytest.raises(fastq.InvalidArgument):
            q.publish_many(list(range(11)))


def test_dedup_publish_on_a_full_table_stores_nothing(tmp_path):
    with fastq.open(str(tmp_path / "b")) as b:
        q = b.queue("q", dedup_capacity=16)
        ids = [q.publish(i, dedup_id=f"id{i}") for i in range(16)]
        before = q.depth().ready
        with pytest.raises(fastq.QueueFull):
            q.publish(99, dedup_id="one-too-many")
        assert q.depth().ready == before == 16          # the known bug: it used to be stored
        assert q.publish(0, dedup_id="id0") == ids[0]   # seen ids still answer
        # bounded: a retry of a stored dedup publish is answered, not refused
        q.set_limits(max_depth=16)
        assert q.publish(5, dedup_id="id5") == ids[5]


def test_bad_input(tmp_path):
    with fastq.open(str(tmp_path / "b")) as b:
        for bad in ({"max_depth": 0}, {"max_depth": -5}, {"max_depth": 1.5}, {"overflow": "spill"},
                    {"overflow": "nope"}, {"high_watermark": 5, "low_watermark": 10},
                    {"block_timeout": -1}, {"high_watermark": 0}, {"max_bytes": 0}, {"max_bytes": "1k"}):
            with pytest.raises(fastq.InvalidArgument):
                b.queue("q", **bad)
        q = b.queue("q")
        with pytest.raises(fastq.InvalidArgument):
            q.watermarks(high=5, low=6)
        with pytest.raises(fastq.InvalidArgument):
            q.set_limits(low_watermark=3)              # no high one
        with pytest.raises(fastq.InvalidArgument):
            q.on_signals(print, interval=0)
        with pytest.raises(fastq.InvalidArgument):
            q.on_watermark("not callable")
        assert q.limits.max_depth is None
        with pytest.raises(fastq.InvalidArgument):
            b.tasks("t", max_depth=0)
        assert q.set_limits(max_depth=1, overflow="block", block_timeout=0).block_timeout == 0.0
        assert q.set_limits(max_depth=2).block_timeout == 0.0        # kept, not reset to the default
        assert q.set_limits(block_timeout=None).block_timeout is None
        q.publish_many([1, 2])
        t0 = time.monotonic()
        q.set_limits(block_timeout=0)
        with pytest.raises(fastq.QueueFull):
            q.publish(3)                                             # a zero timeout: at once
        assert time.monotonic() - t0 < 5


def test_limits_are_shared_and_live_across_handles(tmp_path):
    path = str(tmp_path / "b")
    with fastq.open(path) as b1, fastq.open(path) as b2:
        q1 = b1.queue("q")
        q2 = b2.queue("q")
        q2.publish(1)                                  # its lane log is open in q2
        b1.queue("q", max_depth=2, overflow="reject")   # the cached handle applies it
        assert q2.limits.max_depth == 2 and q2.limits.overflow == "reject"
        q2.publish(2)
        with pytest.raises(fastq.QueueFull):
            q2.publish(3)
        q1.set_limits(max_depth=None)
        q2.publish(3)
        assert q1.depth().ready == 3


def test_watermark_hysteresis_and_callback(tmp_path):
    with fastq.open(str(tmp_path / "b")) as b:
        q = b.queue("q", high_watermark=10, low_watermark=5)
        seen = []
        remove = q.on_watermark(lambda over, sig: seen.append((over, sig.depth)))
        for i in range(9):
            q.publish(i)
        assert not q.over_high_watermark and seen == []
        q.publish(9)           # the callback runs as this publish is admitted, before it is stored
        assert q.over_high_watermark and seen == [(True, 9)]
        for expect in (True, True, True, True, False):       # 9, 8, 7, 6 still over; 5 off
            q.receive(1, wait=0)[0].ack()
            assert q.over_high_watermark is expect
        assert seen == [(True, 9), (False, 5)]
        q.publish(10)                                # 6: under high, stays off
        assert not q.signals().over_high_watermark
        remove()
        q.publish_many(list(range(4)))
        assert q.over_high_watermark and len(seen) == 2


def test_signals_runnable_net_of_delayed_and_nacks(tmp_path):
    with fastq.open(str(tmp_path / "b")) as b:
        q = b.queue("q")
        q.publish_many([1, 2, 3])
        q.publish(4, delay=60)
        q.publish(5, delay=60)
        m = q.receive(1, wait=0)[0]
        m.nack(delay=0.5)                            # AVAILABLE, not due for 0.5 s
        s = q.signals()
        assert (s.runnable, s.delayed, s.in_flight, s.depth, s.lag, s.ready) == (2, 2, 0, 5, 5, 3)
        assert s.max_depth is None and s.retry_after is None and not s.over_high_watermark
        held = q.receive(1, wait=0)
        s = q.signals()
        assert (s.runnable, s.in_flight, s.lag) == (1, 1, 4)
        held[0].ack()
        assert q.signals().depth == 4


def test_drain_rate_across_processes(tmp_path):
    path = str(tmp_path / "b")
    b = fastq.open(path)
    q = b.queue(QUEUE, max_depth=100000)
    q.publish_many(list(range(3000)))
    stop = str(tmp_path / "stop")
    clog = str(tmp_path / "c.log")
    rate = 400.0
    c = CTX.Process(target=steady_consumer, args=(path, clog, stop, rate))
    c.start()
    try:
        time.sleep(2.5)
        s = q.signals()
    finally:
        open(stop, "w").close()
        c.join(30)
    assert c.exitcode == 0
    (_, n, t0, t1), = [ln for ln in read_lines(clog) if ln[0] == "acked"]
    actual = int(n) / (float(t1) - float(t0))
    print(f"drain rate measured {s.drain_rate:.1f}/s, the consumer's {actual:.1f}/s")
    assert 0.5 * actual <= s.drain_rate <= 1.5 * actual
    # retry_after comes from it: over by k messages -> about k / rate
    q.set_limits(max_depth=q.depth().ready - 50)
    with pytest.raises(fastq.QueueFull) as ei:
        q.publish(0)
    assert ei.value.retry_after == pytest.approx(51 / q._drain_rate(), rel=0.05)
    b.close()


def test_retry_after_estimate():
    assert retry_after_estimate(10, 0.0) == RETRY_AFTER_MAX
    assert retry_after_estimate(10, None) == RETRY_AFTER_MAX
    assert retry_after_estimate(10, 100.0) == pytest.approx(0.1)
    assert retry_after_estimate(1, 1e9) == RETRY_AFTER_MIN
    assert retry_after_estimate(10**9, 1.0) == RETRY_AFTER_MAX


def test_on_signals_thread(tmp_path):
    with fastq.open(str(tmp_path / "b")) as b:
        q = b.queue("q")
        q.publish(1)
        got = []
        ticks = threading.Event()

        def cb(sig):
            got.append(sig)
            if len(got) >= 3:
                ticks.set()
            if len(got) == 2:
                raise RuntimeError("a callback that raises is logged, the watcher goes on")
        with q.on_signals(cb, interval=0.01) as w:
            assert ticks.wait(10)
            assert w.running
        assert not w.running and w.errors == 1
        assert all(isinstance(s, fastq.QueueSignals) and s.runnable == 1 for s in got)
        n = len(got)
        w.stop()                                      # idempotent
        assert len(got) == n


def kill_round(tmp_path, rng, target, path: str, tag: str, ids: list[int]) -> list[str]:
    """Start ``target(path, logfile, w)`` for each w in ids, let them run 50-300 ms, kill
    them -9; returns their log files."""
    logs = [str(tmp_path / f"{tag}-{w}.log") for w in ids]
    ps = [CTX.Process(target=target, args=(path, f, w)) for f, w in zip(logs, ids)]
    for p in ps:
        p.start()
    time.sleep(rng.uniform(0.05, 0.3))
    for p in ps:
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        assert p.exitcode == -signal.SIGKILL
    return logs


def test_kill_producers_mid_publish_keeps_depth_consistent(tmp_path):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    path = str(tmp_path / "b")
    b = fastq.open(path)
    q = b.queue(QUEUE, max_depth=500, overflow="reject")
    rounds = 40 if TORTURE else 6
    for r in range(rounds):
        kill_round(tmp_path, rng, killable_producer, path, f"k{r}", [0, 1])
        # receive a few, so the window moves too
        for m in q.receive(rng.randrange(1, 60), wait=0):
            m.ack()
        d = q.depth()
        assert q._depth_fast() == d.ready + d.delayed + d.in_flight
        assert d.ready <= 500 + 2 * 4
    # a drain receives exactly what the depth said
    d = q.depth()
    n = 0
    while True:
        ms = q.receive(256, wait=0)
        if not ms:
            break
        n += len(ms)
        q.ack_many(ms)
    assert n == d.ready
    assert q.depth().ready == 0 and q._depth_fast() == 0
    b.close()


def _drain_all(q) -> list:
    out = []
    while True:
        ms = q.receive(256, wait=0.2)
        if not ms:
            return out
        out += [m.data for m in ms]
        q.ack_many(ms)


def test_kill_droppers_mid_drop_loses_nothing_and_never_drops_in_flight(tmp_path):
    """drop-oldest producers killed -9 at random points (mid-drop too): every publish that
    returned is in the queue or the dead-letter queue; messages held in flight by this
    process through every round are never dropped."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    path = str(tmp_path / "b")
    b = fastq.open(path)
    q = b.queue(QUEUE, max_depth=30, overflow="drop-oldest", dead_letter="dead")
    q.publish_many([f"held-{i}" for i in range(5)])
    held = q.receive(5, wait=0)
    for m in held:
        m.extend(600)
    logs = []
    for r in range(30 if TORTURE else 6):
        logs += kill_round(tmp_path, rng, dropping_producer, path, f"d{r}", [r * 2, r * 2 + 1])
        assert q.depth().in_flight >= 5
    ok = {ln[1] for f in logs for ln in read_lines(f) if ln[0] == "ok"}
    assert len(ok) > 30
    for m in held:
        m.ack()
    # a killed dropper's leased messages come back once its session is found dead
    got = _drain_all(q)
    dead = _drain_all(b.queue("dead"))
    assert dead, "nothing was dropped: the test did not test it"
    assert not {m.data for m in held} & set(dead)
    assert ok <= set(got) | set(dead)                 # nothing that was acknowledged is lost
    assert q.depth() == fastq.QueueDepth(0, 0, 0, q.depth().dead, 0.0)
    b.close()


def test_damaged_limits_and_drain_ring_are_read_sanely(tmp_path):
    """Fault injection into the header bytes this adds (csrc/fq_queue.h @512..): the depth
    is derived from lanes and logs, so only the limits and the samples can be damaged."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    path = str(tmp_path / "b")
    with fastq.open(path) as b:
        q = b.queue("q")
        q.publish_many(list(range(20)))
        for m in q.receive(5, wait=0):
            m.ack()
        q.signals()
    state = os.path.join(path, "queues", "q", "queue.state")
    for trial in range(20):
        with open(state, "r+b") as f:
            f.seek(512 + 40)                      # overflow and over: any u32
            f.write(struct.pack("<II", rng.randrange(1 << 32), rng.randrange(1 << 32)))
            f.seek(576)                           # the drain ring: garbage
            f.write(rng.randbytes(16 + 16 * 32))
        with fastq.open(path) as b:
            q = b.queue("q")
            s = q.signals()
            assert math.isfinite(s.drain_rate) and s.drain_rate >= 0.0
            assert s.depth == 15
            assert q.limits.overflow in ("reject", "block", "drop-oldest")
            q.publish(1)                          # unbounded (max_depth 0): always admitted
            with pytest.raises(fastq.QueueFull) as ei:
                q.set_limits(max_depth=1, overflow="reject")
                q.publish(2)
            assert RETRY_AFTER_MIN <= ei.value.retry_after <= RETRY_AFTER_MAX
            q.set_limits(max_depth=None)
            for m in q.receive(1, wait=0):
                m.ack()


def test_task_queue_bounded_and_signals(tmp_path):
    with fastq.open(str(tmp_path / "b")) as b:
        tq = b.tasks("t", max_depth=3, overflow="reject", high_watermark=2, low_watermark=1)
        try:
            tq.add("a", 1)
            tq.add("a", 2, delay=60)
            tq.add("a", 3)
            with pytest.raises(fastq.QueueFull):
                tq.add("a", 4)
            with pytest.raises(fastq.QueueFull):
                tq.add_bulk([("a", 5)])
            assert tq.get_job_counts()["waiting"] == 2 if hasattr(tq, "get_job_counts") else True
            s = tq.signals()
            assert (s.runnable, s.delayed, s.depth, s.over_high_watermark) == (2, 1, 3, True)
            tq.pause()
            assert tq.signals().runnable == 0
            tq.resume()
            assert tq.limits.max_depth == 3
        finally:
            tq.close()


def test_task_queue_reject_across_processes_every_added_job_runs(tmp_path):
    path = str(tmp_path / "b")
    stop = str(tmp_path / "stop")
    b = fastq.open(path)
    tq = b.tasks(TASKS, max_depth=20, overflow="reject")
    plogs = [str(tmp_path / f"tp{w}.log") for w in range(2)]
    wlog = str(tmp_path / "w.log")
    worker = CTX.Process(target=task_worker, args=(path, wlog, stop))
    worker.start()
    try:
        run_procs([CTX.Process(target=task_producer, args=(path, plogs[w], w, 150)) for w in range(2)])
        ok = {ln[1]: ln[2] for f in plogs for ln in read_lines(f) if ln[0] == "ok"}
        assert len(ok) == 300
        assert any(ln[0] == "full" for f in plogs for ln in read_lines(f)), "the limit was never met"
        deadline = time.monotonic() + 60
        while tq.counts()["completed"] < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        open(stop, "w").close()
        worker.join(60)
    assert worker.exitcode == 0
    ran = {ln[1]: ln[2] for ln in read_lines(wlog) if ln[0] == "ran"}
    assert ran == ok                              # every added job ran; a refused add left no job
    c = tq.counts()
    assert c["completed"] == 300 and c["waiting"] == 0
    tq.close()
    b.close()


def test_watermark_state_is_shared_across_processes(tmp_path):
    path = str(tmp_path / "b")
    with fastq.open(path) as b:
        q = b.queue(QUEUE, high_watermark=30, low_watermark=10)
        seen = []
        q.on_watermark(lambda over, sig: seen.append(over))
        run_procs([CTX.Process(target=producer, args=(path, str(tmp_path / "p.log"), 0, 40, False))])
        assert q.over_high_watermark and seen == [True]     # moved by the other process's publishes
        for m in q.receive(30, wait=0):
            m.ack()
        s = q.signals()
        assert not s.over_high_watermark and s.depth == 10
        assert seen == [True, False]


def test_async_publish_with_block_never_blocks_the_loop(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as ab:
            aq = await ab.queue("q", max_depth=2, overflow="block", block_timeout=5.0)
            await aq.publish(1)
            await aq.publish(2)
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.005)
                    ticks += 1
            t = asyncio.ensure_future(ticker())
            pub = asyncio.ensure_future(aq.publish(3))     # blocks in a thread, not on the loop
            while ticks < 5:
                await asyncio.sleep(0.005)
            assert not pub.done()
            m = (await aq.receive(1, wait=0))[0]
            await m.ack()
            await asyncio.wait_for(pub, 10)
            t.cancel()
            assert (await aq.depth()).ready == 2
            assert (await aq.signals()).depth == 2
            assert (await aq.set_limits(high_watermark=2)).high_watermark == 2
            assert await aq.over_high_watermark()
            atq = await ab.tasks("t", max_depth=1)
            await atq.add("a", 1)
            with pytest.raises(fastq.QueueFull):
                await atq.add("a", 2)
            assert (await atq.signals()).runnable == 1
            assert (await atq.set_limits(max_depth=None)).max_depth is None
            await atq.close()
    asyncio.run(main())


def test_drop_oldest_on_a_task_queue_fails_the_dropped_jobs(tmp_path):
    """A job whose message overflow="drop-oldest" dropped ends failed ("dropped: ..."), with a
    failed event, a dead letter and remove_on_fail honoured — it used to stay "waiting" for
    ever, a job nobody would run. The jobs kept run once each."""
    with fastq.open(str(tmp_path / "b")) as b:
        tq = b.tasks("t", max_depth=3, overflow="drop-oldest", dead_letter="t-dead")
        events = tq.events()
        gone = tq.add("a", 0, remove_on_fail=True)
        jobs = [tq.add("a", i, attempts=3) for i in range(1, 6)]   # 3, 4, 5 drop gone, 1, 2
        assert tq.queue.dropped == 3
        for j in jobs[:2]:
            assert j.state == "failed" and j.attempts_made == 0, (j.id, j.state)
            assert j.failed_reason == "dropped: queue 't.tasks' full (overflow='drop-oldest')"
        with pytest.raises(fastq.UnknownJob):
            tq.get_job(gone.id)                            # remove_on_fail=True: not kept
        c = tq.counts()
        assert (c["waiting"], c["failed"], c["active"]) == (3, 2, 0), c
        failed = [ev.job_id for ev in events.poll(1000, timeout=1) if ev.event == "failed"]
        assert sorted(failed) == sorted([gone.id, jobs[0].id, jobs[1].id])
        events.close()
        dlq = b.queue("t-dead", codec="raw")
        letters = [json.loads(bytes(m.body)) for m in dlq.receive(100, wait=0)]
        assert sorted(d["id"] for d in letters) == sorted([gone.id, jobs[0].id, jobs[1].id])
        assert all(d["failed_reason"].startswith("dropped:") for d in letters)
        ran = []
        with fastq.Worker(tq, lambda job: ran.append(job.data)) as w:
            deadline = time.monotonic() + 10
            while w.completed < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
        assert sorted(ran) == [3, 4, 5]
        assert tq.counts()["failed"] == 2 and tq.counts()["completed"] == 3
        tq.close()


def test_kill_9_of_task_droppers_leaves_every_job_run_once_or_failed_dropped(tmp_path):
    """Two processes add to a drop-oldest task queue until killed -9 (mid-drop too), round
    after round; then one worker runs what is left. Every job ends completed (run once) or
    failed as dropped (never run) — none stays waiting, none runs after being dropped."""
    seed = random.randrange(2**32)
    print(f"task dropper kill loop: seed={seed}")
    rng = random.Random(seed)
    path = str(tmp_path / "b")
    b = fastq.open(path)
    tq = b.tasks(TASKS, max_depth=10, overflow="drop-oldest")
    for _ in range(24 if TORTURE else 6):
        before = sum(tq.counts().values())     # every state: dropped jobs are failed ones
        procs = [CTX.Process(target=task_dropper, args=(path, w)) for w in range(2)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + 60
        while sum(tq.counts().values()) < before + 20:
            assert time.monotonic() < deadline, "the droppers added nothing"
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            p.join(10)
            assert p.exitcode == -signal.SIGKILL, p.exitcode
    assert tq.queue.signals().depth <= 10 + 2     # the bound, give or take the killed adds
    repaired = tq.repair(grace=0)                   # adds killed between their state and their message
    ran = collections.Counter()
    with fastq.Worker(tq, lambda job: ran.update([job.id])) as w:
        deadline = time.monotonic() + 60
        while True:
            c = tq.counts()
            if c["waiting"] == c["active"] == c["delayed"] == 0:
                break
            assert time.monotonic() < deadline, c
            time.sleep(0.01)
    jobs = tq.get_jobs()
    failed = {j.id for j in jobs if j.state == "failed"}
    completed = {j.id for j in jobs if j.state == "completed"}
    assert failed | completed == {j.id for j in jobs}, {j.state for j in jobs}
    assert all(tq.get_job(j).failed_reason.startswith("dropped:") for j in failed)
    assert set(ran) == completed and set(ran.values()) == {1}
    assert failed and completed
    print(f"jobs={len(jobs)} dropped={len(failed)} ran={len(completed)} repaired={len(repaired)}")
    tq.close()
    b.close()


def test_an_admin_retry_that_drops_on_a_full_task_queue_does_not_wait_for_itself(tmp_path):
    """retry_job holds the admin lock exclusively while it publishes; the drop its publish
    makes fails a job under that lock — it took the lock shared again, on another open file,
    and waited for itself for ever (found by the kill loop above, in repair)."""
    with fastq.open(str(tmp_path / "b")) as b:
        tq = b.tasks("t", max_depth=2, overflow="drop-oldest")
        a, x, y = tq.add("a", 1), tq.add("a", 2), tq.add("a", 3)     # y drops a
        assert a.state == "failed"
        done = []
        th = threading.Thread(target=lambda: done.append(tq.retry_job(a.id)), daemon=True)
        th.start()
        th.join(20)
        assert not th.is_alive(), "retry_job waited for its own admin lock"
        assert a.state == "waiting" and x.state == "failed" and x.failed_reason.startswith("dropped:")
        assert y.state == "waiting"
        tq.close()
