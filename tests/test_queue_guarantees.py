"""The guarantees of ``Queue.subscribe`` under a kill loop, across processes (issue 14's
proof): subscriber processes are SIGKILLed at random moments while they handle messages.

- at-most-once: no message is handled twice (it is acked before its handler runs).
- at-least-once: every message is handled; the delivery counts a message is handled with
  only grow (no delivery handed out twice); exactly the messages that always fail land in
  the dead letters (after max_deliveries), none that succeeds does. (That an acked message
  is never delivered again is tests/test_queue_multiprocess.py's kill loop.)
- delayed messages are never handled before they are due; a higher priority published
  before the subscribers start is handled before any lower one.

The seed is printed (replay: FASTQ_SEED=<seed>); FASTQ_TORTURE=1 runs more rounds.
"""
from __future__ import annotations

import collections
import multiprocessing as mp
import os
import random
import signal
import time

import pytest

import fastq
from logutil import TORTURE, seed_for
from queue_workers import QUEUE, read_lines, subscriber

ROUNDS = 60 if TORTURE else 6


def _run(tmp_path, guarantee: str, ctx_name: str, seed: int):
    rng = random.Random(seed)
    path = str(tmp_path / "b")
    stop = str(tmp_path / "stop")
    with fastq.open(path) as b:
        q = b.queue(QUEUE, visibility_timeout=60, max_deliveries=3, dead_letter="dead")
        q.publish_many([f"p{i}" for i in range(20)], priority=9)     # before any subscriber
        q.publish_many([f"m{i}" for i in range(300)])
        q.publish_many([f"f{i}!" for i in range(10)])                  # always fail
        due = {}
        for i in range(20):
            d = rng.uniform(0.05, 0.6)
            due[f"d{i}"] = time.time_ns() // 1_000_000 + int(d * 1000)   # the earliest the queue may
            q.publish(f"d{i}", delay=d)                                  # make it due (ms, as it counts)
    ctx = mp.get_context(ctx_name)
    logs = []
    procs = []

    def start():
        lf = str(tmp_path / f"sub{len(logs)}.log")
        logs.append(lf)
        p = ctx.Process(target=subscriber, args=(path, lf, stop, guarantee))
        p.start()
        procs.append(p)
        return p

    live = [start()]                                   # the first alone: priority order is its
    t0 = time.monotonic()                              # (one handler thread)
    while not read_lines(logs[0]) or len([ln for ln in read_lines(logs[0]) if ln[0] == "handled"]) < 20:
        assert time.monotonic() - t0 < 60, "the first subscriber handled nothing"
        time.sleep(0.005)
    live.append(start())
    for _ in range(ROUNDS):
        time.sleep(rng.uniform(0.01, 0.15))
        victim = live.pop(rng.randrange(len(live)))
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        live.append(start())
    with fastq.open(path) as b:
        q = b.queue(QUEUE)
        t0 = time.monotonic()
        while True:
            d = q.depth()
            if d.ready == d.delayed == d.in_flight == 0:
                break
            assert time.monotonic() - t0 < 60, f"not drained: {d}"
            time.sleep(0.05)
        dead = sorted(m.data for m in _drain(b.queue("dead")))
    open(stop, "w").close()
    for p in live:
        p.join(30)
        assert p.exitcode == 0
    handled = [ln[1:] for lf in logs for ln in read_lines(lf) if ln[0] == "handled"]
    again = sum(1 for h in handled if int(h[1]) > 1 and not h[0].endswith("!"))
    print(f"{len(handled)} handled, {again} of them again after a kill")
    return handled, dead, due


def _drain(q):
    out = []
    while True:
        got = q.receive(100, wait=0.2)
        if not got:
            return out
        q.ack_many(got)
        out += got


@pytest.mark.parametrize("ctx_name", ["fork", "spawn"])
def test_at_least_once_under_kills(tmp_path, ctx_name):
    seed = seed_for("queue-guarantees-alo")
    print(f"seed {seed}")
    handled, dead, due = _run(tmp_path, "at-least-once", ctx_name, seed)
    by = collections.defaultdict(list)
    for data, count, mono, wall in handled:
        by[data].append((int(count), int(wall), int(mono)))
    everything = {f"p{i}" for i in range(20)} | {f"m{i}" for i in range(300)} | \
        {f"f{i}!" for i in range(10)} | set(due)
    assert set(by) == everything                                   # none lost
    for data, seen in by.items():
        counts = [c for c, _, _ in sorted(seen, key=lambda s: s[2])]   # in the order handled
        assert counts == sorted(set(counts)), f"{data}: deliveries {counts} do not only grow"
        if data.endswith("!"):
            assert max(counts) <= 3, f"{data}: handled at delivery {counts}, past max_deliveries=3"
    assert dead == sorted(f"f{i}!" for i in range(10))             # exactly the failing ones
    for data, when in due.items():                                 # never early
        assert min(w for _, w, _ in by[data]) >= when, f"{data} handled before it was due"
    first = [ln[0] for ln in handled[:20]]
    assert sorted(first) == sorted(f"p{i}" for i in range(20))     # priority 9 first


def test_at_most_once_never_handles_twice(tmp_path):
    seed = seed_for("queue-guarantees-amo")
    print(f"seed {seed}")
    handled, dead, due = _run(tmp_path, "at-most-once", "fork", seed)
    datas = [h[0] for h in handled]
    dup = [d for d, n in collections.Counter(datas).items() if n > 1]
    assert dup == [], f"handled twice under at-most-once: {dup[:10]}"
    assert dead == []                                              # acked first: never retried
