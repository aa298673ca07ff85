"""Details of the task queue's hot paths: job ids are random 32-hex-digit strings that a
user's ``random.seed`` cannot repeat and a forked child never shares with its parent; an
add with every option at its default (which skips the option checks) stores what a checked
add stores, and values equal to a default but of the wrong type are still refused; and a
receiver waiting on a queue wakes when a delayed message comes due, not at its next
periodic check (what makes delayed jobs start on time), and never before it is due."""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import re
import time

import pytest

import fastq
from fastq.tasks.taskqueue import validate_options

from taskutil import broker  # noqa: F401 - a fixture


def test_job_ids_are_random_hex_and_ignore_random_seed(broker):
    tq = fastq.TaskQueue("ids", broker)
    random.seed(1234)
    a = [tq.add("x").id for _ in range(50)]
    random.seed(1234)
    b = [tq.add("x").id for _ in range(50)] + [j.id for j in tq.add_bulk([("x", i) for i in range(50)])]
    assert all(re.fullmatch(r"[0-9a-f]{32}", j) for j in a + b)
    assert len(set(a + b)) == 150


def test_default_options_add_stores_the_checked_defaults(broker):
    tq = fastq.TaskQueue("opts", broker)
    plain = tq.add("x", 1)
    bulk = tq.add_bulk([("x", 2)])[0]
    explicit = tq.add("x", 3, delay=None, attempts=1, backoff=None, priority=0, remove_on_complete=False,
                      remove_on_fail=False, timeout=None)
    want = validate_options({})
    assert plain.opts == bulk.opts == explicit.opts == want
    assert tq.add("x", 4, remove_on_complete=0).opts["remove_on_complete"] == 0     # keep none, not False
    assert tq.add("x", 5, delay=0).opts["delay"] == 0.0
    for bad in ({"attempts": True}, {"priority": False}, {"attempts": 1.0}, {"priority": 0.0}, {"nope": 1}):
        with pytest.raises(fastq.InvalidArgument):
            tq.add("x", 6, **bad)
    assert tq.counts()["waiting"] == 5


def _child_ids(path, conn):
    with fastq.open(path) as b:
        conn.send([fastq.TaskQueue("ids", b).add("x").id for _ in range(20)])
    conn.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform (Windows): only a forked child inherits the job-id generator, a spawned one seeds its own")
def test_a_forked_child_draws_other_job_ids(broker):
    tq = fastq.TaskQueue("ids", broker)
    tq.add("x")                         # the generator has been used in the parent
    ctx = mp.get_context("fork")
    ids = []
    for _ in range(2):
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(target=_child_ids, args=(broker.path, child_end))
        p.start()
        ids.append(parent_end.recv())
        p.join(30)
        assert p.exitcode == 0
    ids.append([tq.add("x").id for _ in range(20)])
    assert len({j for batch in ids for j in batch}) == 60


def test_a_waiting_receive_wakes_when_a_delayed_message_is_due(broker):
    q = broker.queue("wake", codec="raw")
    # with a check only every 0.5 s, a receiver that slept until its next check would get
    # the message up to 0.5 s late; it must come within a small margin of its due time
    q.liveness_interval = 0.5
    late = []
    for delay in (0.05, 0.12, 0.2):
        t0 = time.monotonic()
        q.publish(b"d", delay=delay)
        msgs = q.receive(1, wait=3.0)
        took = time.monotonic() - t0
        assert len(msgs) == 1
        msgs[0].ack()
        late.append(took - delay)
    # never early (due times are rounded up to the millisecond); a busy machine: some ms late
    assert all(0 <= x < 0.25 for x in late), late
    assert sorted(late)[1] < 0.1, late
