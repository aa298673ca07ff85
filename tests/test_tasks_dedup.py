"""Job deduplication (BullMQ's deduplication option): simple, throttle and debounce
(extend / replace), across processes, with a kill -9 loop and bad input."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import fastq
from fastq.errors import InvalidArgument
from fastq.tasks.dedup import DEDUP_SUFFIX
from taskutil import fail_once, fault_calls, wait_for

TORTURE = os.environ.get("FASTQ_TORTURE") == "1"


@pytest.fixture
def tq(tmp_path):
    with fastq.open(tmp_path / "b") as b:
        q = fastq.TaskQueue("t", b)
        yield q
        q.close()


def _events(tq, name):
    with tq.events(offset=0) as ev:
        return [e for e in ev.poll(10_000, 1) if e.event == name]


def test_simple_mode_deduplicates_until_the_job_finishes_or_is_removed(tq):
    a = tq.add("x", 1, deduplication={"id": "u"})
    b = tq.add("x", 2, deduplication={"id": "u"}, priority=3)
    assert b.id == a.id and b.data == 1 and tq.counts()["waiting"] == 1
    assert tq.get_deduplication_job_id("u") == a.id
    assert [e.job_id for e in _events(tq, "deduplicated")] == [a.id]
    assert tq.get_job(a.id).opts["deduplication"] == {"id": "u"}
    with fastq.Worker(tq, lambda j: j.data):
        assert a.result(timeout=20) == 1
    c = tq.add("x", 3, deduplication={"id": "u"})              # finished: a new job
    assert c.id != a.id and tq.get_deduplication_job_id("u") == c.id
    tq.remove(c.id)
    assert tq.get_deduplication_job_id("u") is None
    d = tq.add("x", 4, deduplication={"id": "u"})              # removed: a new job
    assert d.id not in (a.id, c.id)
    assert tq.remove_deduplication_key("u") is True and tq.remove_deduplication_key("u") is False
    e = tq.add("x", 5, deduplication={"id": "u"})              # key forgotten: a new job though d waits
    assert e.id != d.id and tq.counts()["waiting"] == 2


def test_throttle_mode_deduplicates_for_ttl_whatever_became_of_the_job(tq):
    t0 = time.monotonic()
    a = tq.add("x", 1, deduplication={"id": "t", "ttl": 3.0})
    with fastq.Worker(tq, lambda j: j.data):
        assert a.result(timeout=20) == 1
    b = tq.add("x", 2, deduplication={"id": "t", "ttl": 3.0})
    assert time.monotonic() - t0 < 3.0, "the machine is too slow for this ttl"
    assert b.id == a.id                                        # completed, yet inside the ttl
    time.sleep(max(0.0, 3.1 - (time.monotonic() - t0)))
    c = tq.add("x", 3, deduplication={"id": "t", "ttl": 3.0})
    assert c.id != a.id
    d = tq.add("x", 4, deduplication={"id": "t2", "ttl": 30.0})
    tq.remove(d.id)
    assert tq.add("x", 5, deduplication={"id": "t2", "ttl": 30.0}).id != d.id   # removed: the key went too


def test_debounce_extend_restarts_the_ttl_at_each_add(tq):
    ext = [tq.add("x", i, deduplication={"id": "e", "ttl": 0.6, "extend": True}) for i in range(1)]
    plain = [tq.add("x", 0, deduplication={"id": "p", "ttl": 0.6})]
    end = time.monotonic() + 1.5
    while time.monotonic() < end:                              # adds every 0.1 s for 1.5 s
        time.sleep(0.1)
        ext.append(tq.add("x", 1, deduplication={"id": "e", "ttl": 0.6, "extend": True}))
        plain.append(tq.add("x", 1, deduplication={"id": "p", "ttl": 0.6}))
    assert len({j.id for j in ext}) == 1                       # every gap < ttl: one job
    assert len({j.id for j in plain}) >= 2                     # the ttl ran out at least once


def test_debounce_replace_runs_the_last_of_a_burst_once(tq):
    ran = []
    with fastq.Worker(tq, lambda j: ran.append(j.data) or j.data):
        for i in range(20):
            last = tq.add("x", i, delay=0.5, deduplication={"id": "r", "ttl": 5, "extend": True, "replace": True})
        assert last.data == 19
        assert last.result(timeout=20) == 19
        time.sleep(0.7)                                        # a replaced job would run by now
    assert ran == [19]
    evs = _events(tq, "deduplicated")
    assert len(evs) == 19 and all(e.data.get("replaced_by") for e in evs)
    assert tq.counts()["completed"] == 1 and tq.counts()["delayed"] == 0


def test_replace_leaves_an_active_job_and_deduplicates(tq):
    go = threading.Event()
    a = tq.add("x", 1, delay=0.05, deduplication={"id": "r", "ttl": 30, "replace": True})
    with fastq.Worker(tq, lambda j: go.wait(10) and j.data):
        wait_for(lambda: a.reload().state == "active", 20, "the job active")
        b = tq.add("x", 2, delay=0.05, deduplication={"id": "r", "ttl": 30, "replace": True})
        assert b.id == a.id                                    # running: not replaced
        go.set()
        assert a.result(timeout=20) == 1


ADDER = textwrap.dedent("""
    import sys
    import fastq
    b = fastq.open(sys.argv[1])
    tq = fastq.TaskQueue("t", b)
    n, ids = int(sys.argv[2]), []
    for i in range(n):
        ids.append(tq.add("x", i, deduplication={"id": "k%d" % (i % 5)}).id)
    print(" ".join(ids))
""")


def test_many_processes_adding_with_one_dedup_id_make_one_job_each(tmp_path):
    with fastq.open(tmp_path / "b") as b:
        fastq.TaskQueue("t", b).close()
    procs = [subprocess.Popen([sys.executable, "-c", ADDER, str(tmp_path / "b"), "60"], stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    ids = {x for o in outs for x in o.split()}
    with fastq.open(tmp_path / "b") as b:
        tq = fastq.TaskQueue("t", b)
        jobs = tq.get_jobs()
        assert len(jobs) == 5 and ids == {j.id for j in jobs}, (len(jobs), len(ids))
        assert sorted(j.opts["deduplication"]["id"] for j in jobs) == [f"k{i}" for i in range(5)]
        tq.close()


ADD_UNTIL_KILLED = textwrap.dedent("""
    import sys
    import fastq
    b = fastq.open(sys.argv[1])
    tq = fastq.TaskQueue("t", b)
    i = int(sys.argv[2])
    tq.add("x", i, deduplication={"id": "d%d" % (i % 50), "ttl": 0.01})
    print("adding", flush=True)
    while True:
        i += 1
        tq.add("x", i, deduplication={"id": "d%d" % (i % 50), "ttl": 0.01 * (i % 3 + 1)})
""")


def test_kill_9_loop_every_dedup_entry_names_a_stored_job(tmp_path):
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rnd = random.Random(seed)
    for r in range(30 if TORTURE else 5):
        p = subprocess.Popen([sys.executable, "-c", ADD_UNTIL_KILLED, str(tmp_path / "b"), str(r * 100_000)],
                             stdout=subprocess.PIPE, text=True)
        # killed while adding, not while importing (an import can outlast a fixed sleep on a busy box)
        assert p.stdout.readline() == "adding\n"
        time.sleep(rnd.uniform(0.0, 0.5))
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
    with fastq.open(tmp_path / "b") as b:
        tq = fastq.TaskQueue("t", b)
        d = tq._deduplicator()
        with d._locked():                                      # every record decodes (or CorruptRecord)
            entries = dict(d._entries)
        assert entries, "nothing was added before the kills"
        for did, e in entries.items():                         # the job is stored before its entry
            assert tq.get_job(e["job"]).opts["deduplication"]["id"] == did
        assert b.topic("t" + DEDUP_SUFFIX).end_offsets()[0] >= len(entries)
        assert tq.add("x", 0, deduplication={"id": "fresh"}).state == "waiting"   # still works
        tq.close()


@pytest.mark.parametrize("bad", [
    "u", {"ttl": 1}, {"id": ""}, {"id": 3}, {"id": "u", "ttl": 0}, {"id": "u", "ttl": -1},
    {"id": "u", "ttl": float("nan")}, {"id": "u", "extend": True}, {"id": "u", "ttl": 1, "replace": 1},
    {"id": "u", "color": 1}, {"id": "x" * 513},
])
def test_bad_deduplication_is_invalid_argument_and_nothing_is_added(tq, bad):
    with pytest.raises(InvalidArgument):
        tq.add("x", 1, deduplication=bad)
    assert tq.counts()["waiting"] == 0
    assert tq.add("x", 1, deduplication={"id": "ok"}).state == "waiting"


def test_deduplication_is_refused_in_add_bulk_and_with_repeat(tq):
    with pytest.raises(InvalidArgument, match="add\\(\\) only"):
        tq.add_bulk([("x", 1, {"deduplication": {"id": "u"}})])
    with pytest.raises(InvalidArgument, match="repeat"):
        tq.add("x", 1, repeat={"every": 10}, deduplication={"id": "u"})
    with pytest.raises(InvalidArgument):
        tq.add("", 1, deduplication={"id": "u"})
    with pytest.raises(InvalidArgument, match="scheduler"):
        tq.upsert_job_scheduler("s", {"every": 10}, opts={"deduplication": {"id": "u"}})
    assert tq.counts()["waiting"] == 0 and tq.get_job_schedulers() == []


def test_injected_io_errors_in_a_deduplicated_add_are_clear_and_nothing_is_lost(tmp_path):
    """Every C fault point a deduplicated add reaches fails once (EIO), at its first and
    last call: the add raises a FastqError or succeeds; after reopening, every dedup entry
    names a stored job, repair() gives a job left without its message one, and every job
    runs exactly once."""
    def op(tq, i):
        tq.add("x", i, deduplication={"id": f"u{i % 2}"})

    def add_one(b, i):
        tq = fastq.TaskQueue("t", b)
        try:
            op(tq, i)
        finally:
            tq.close()

    with fastq.open(tmp_path / "dry", durability="always") as b:
        tq = fastq.TaskQueue("t", b)
        op(tq, 0)                                              # the topics exist: count a steady add
        calls = fault_calls(lambda: op(tq, 1))
        tq.close()
    assert calls, "a deduplicated add reaches no fault point"
    print("fault points reached:", calls)
    hit_any = 0
    for point, n in sorted(calls.items()):
        for k in (range(n) if TORTURE else sorted({0, n - 1})):
            path = str(tmp_path / f"{point}{k}")

            with fastq.open(path, durability="always") as b0:
                add_one(b0, 0)
            hit_any += fail_once(lambda: fastq.open(path, durability="always"), point, k,
                                 lambda b: add_one(b, 1), "deduplicated add")
            with fastq.open(path) as b:
                tq = fastq.TaskQueue("t", b)
                d = tq._deduplicator()
                with d._locked():
                    entries = dict(d._entries)
                for did, e in entries.items():
                    assert tq.get_job(e["job"]).opts["deduplication"]["id"] == did, f"{point}#{k}"
                tq.repair(grace=0)
                ran = []
                ids = {j.id for j in tq.get_jobs()}
                with fastq.Worker(tq, lambda j: ran.append(j.id)):
                    wait_for(lambda: tq.counts()["completed"] == len(ids), 20, f"{point}#{k}: all run")
                    time.sleep(0.1)
                assert sorted(ran) == sorted(ids), f"{point}#{k}: {ran} vs {ids}"
                op(tq, 1)                                      # works again
                tq.close()
    assert hit_any, "no injected fault was reached"
