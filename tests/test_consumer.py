"""Consumer API: every call and error, standalone and in a group (in-process members),
committed offsets (format, torn and garbage files, reopen), eviction, fork."""
import os
import struct
import sys
import threading
import time

import pytest

import fastq
from fastq.broker import group as fgroup
from fastq.broker import offsets as foffsets
from fastq.broker.consumer import Consumer
from fastq.errors import (Closed, CorruptRecord, FastqError, InvalidArgument, InvalidName,
                          NotAssigned, OffsetOutOfRange)
from logutil import Interrupted, child_env, interrupt_after  # noqa: F401 (a fixture)


@pytest.fixture
def broker(tmp_path):
    b = fastq.open(tmp_path / "broker")
    yield b
    b.close()


def fill(t, n_per_partition, ts=None):
    for p in range(t.partitions):
        for i in range(n_per_partition):
            t.publish(b"%d-%d" % (p, i), partition=p, timestamp=ts)


def values(recs):
    return [(r.partition, r.offset, bytes(r.value)) for r in recs]


def drain(c, timeout=0.0):
    """Everything a consumer hands out until a poll comes back empty."""
    out = []
    while True:
        recs = c.poll(1000, timeout=timeout)
        if not recs:
            return out
        out += values(recs)


def settle(*consumers, partitions, timeout=5.0):
    """Run group maintenance (no records taken) until the members' assignments are
    disjoint and cover every partition."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in consumers:
            c._maintain(time.monotonic_ns(), force=True)
        owned = [p for c in consumers for p in c.assignment()]
        if sorted(owned) == list(range(partitions)):
            return [c.assignment() for c in consumers]
        time.sleep(0.005)
    raise AssertionError(f"no settled assignment: {[c.assignment() for c in consumers]}")


# -- construction and options ------------------------------------------------------------

@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "x" * 250, "é", 7, b"g"])
def test_bad_group_name(broker, name):
    t = broker.topic("t")
    with pytest.raises(InvalidName):
        t.consumer(group=name)


@pytest.mark.parametrize("kw", [
    {"from_": "beginning"}, {"session_timeout_ms": 5}, {"session_timeout_ms": 1.5},
    {"max_poll_records": 0}, {"spin_us": -1}, {"on_assign": 3}, {"on_revoke": "x"},
    {"auto_commit": 1}, {"wait": "spin"}, {"wait": None},
])
def test_bad_options(broker, kw):
    t = broker.topic("t")
    with pytest.raises(InvalidArgument):
        t.consumer("g", **kw)


def test_adaptive_wait_consumer_gets_every_record_and_learns_the_rate(broker):
    """wait="adaptive": the consumer paces its waits with a fastq.Pacer; a producer
    thread publishing every ~2 ms still has each record delivered, in order."""
    import threading
    t = broker.topic("paced", partitions=2)
    c = t.consumer(wait="adaptive", from_="earliest")
    assert isinstance(c.pacer, fastq.Pacer)
    with t.consumer() as plain:
        assert plain.pacer is None

    def produce():
        for i in range(200):
            time.sleep(0.002)
            t.publish(b"%d" % i, key=b"k")
    th = threading.Thread(target=produce)
    th.start()
    got = []
    while len(got) < 200:
        recs = c.poll(100, timeout=5)
        assert recs, f"nothing after {len(got)} records"
        got += [int(bytes(r.value)) for r in recs]
        del recs
    th.join()
    assert got == list(range(200))
    assert c.pacer.gap_us is not None and c.pacer.stats["early"] > 0, c.pacer
    c.close()


def test_auto_commit_needs_a_group(broker):
    with pytest.raises(InvalidArgument, match="needs a group"):
        broker.topic("t").consumer(auto_commit=True)


def test_errors_are_fastq_errors():
    assert issubclass(NotAssigned, FastqError) and issubclass(NotAssigned, LookupError)
    assert issubclass(OffsetOutOfRange, IndexError)


# -- standalone ----------------------------------------------------------------------------

def test_standalone_reads_every_partition_in_order(broker):
    t = broker.topic("t", partitions=3)
    fill(t, 5)
    with t.consumer() as c:
        assert c.assignment() == [0, 1, 2]
        assert c.member_id is None
        got = drain(c)
        assert sorted(got) == [(p, i, b"%d-%d" % (p, i)) for p in range(3) for i in range(5)]
        for p in range(3):
            assert [o for q, o, _ in got if q == p] == list(range(5))
        assert c.committed() == {0: None, 1: None, 2: None}
        assert c.lag() == {0: 0, 1: 0, 2: 0}
        with pytest.raises(InvalidArgument, match="no group"):
            c.commit()


def test_poll_respects_max_records_and_rotates_partitions(broker):
    t = broker.topic("t", partitions=2)
    fill(t, 10)
    with t.consumer() as c:
        first = c.poll(4, timeout=0)
        assert len(first) == 4
        seen = {r.partition for r in first}
        second = c.poll(4, timeout=0)
        assert {r.partition for r in second} | seen == {0, 1}
        del first, second


def test_poll_timeout_and_bad_arguments(broker):
    t = broker.topic("t")
    with t.consumer() as c:
        t0 = time.monotonic()
        assert c.poll(timeout=0.05) == []
        assert 0.04 <= time.monotonic() - t0 < 1.0
        assert c.poll(timeout=0) == []
        for bad in ({"max_records": 0}, {"max_records": "1"}, {"timeout": -1}, {"timeout": "1"}):
            with pytest.raises(InvalidArgument):
                c.poll(**bad)
        # with a record ready (poll's compiled path would hand it out): still refused,
        # and the record is not lost
        t.publish(b"r", partition=0)
        for bad in ({"max_records": 0}, {"max_records": True}, {"max_records": 1.0},
                    {"max_records": 10**7}, {"timeout": -1}, {"timeout": True},
                    {"timeout": float("nan")}, {"timeout": -float("inf")}, {"timeout": "1"}):
            with pytest.raises(InvalidArgument):
                c.poll(**bad)
        recs = c.poll(timeout=float("inf"))            # no limit: as None
        assert [bytes(r.value) for r in recs] == [b"r"]
        del recs
    with t.consumer("g") as c:                          # the Python path (a group)
        for forever in (float("inf"), 1e300):
            recs = c.poll(timeout=forever)
            assert [bytes(r.value) for r in recs] == [b"r"]
            del recs
            c.seek_to_beginning()


def test_int_timeouts_are_seconds(broker):
    """An int timeout (poll's fast path converts it without a float) means seconds, as
    a float does; a huge one means no limit."""
    t = broker.topic("t")
    with t.consumer() as c:
        t0 = time.monotonic()
        assert c.poll(timeout=1) == []
        assert 0.9 <= time.monotonic() - t0 < 5.0
        t0 = time.monotonic()
        assert t.log(0).wait(0, timeout=1) is False
        assert 0.9 <= time.monotonic() - t0 < 5.0
        t.publish(b"r")
        for forever in (10**30, 999_999_999, 2**63):
            recs = c.poll(timeout=forever)
            assert [bytes(r.value) for r in recs] == [b"r"]
            del recs
            c.seek_to_beginning()
        assert t.log(0).wait(0, timeout=10**30) is True


def test_idle_partitions_are_polled_and_then_read(broker):
    """Partitions with nothing new are passed over on the compiled path, also before the
    consumer has a reader there; a record arriving later in any of them is handed out,
    and a partition truncated under the consumer's position resets."""
    t = broker.topic("t", partitions=3)
    t.publish(b"a", partition=0)
    with t.consumer(from_="earliest") as c:
        assert [bytes(r.value) for r in c.poll(10, 0)] == [b"a"]
        for _ in range(50):                          # idle, never-written partitions 1 and 2
            assert c.poll(10, 0) == []
        assert c.position(1) == c.position(2) == 0
        t.publish(b"b", partition=2)
        t.publish(b"c", partition=1)
        t.publish(b"d", partition=0)
        recs = c.poll(10, 0)
        assert sorted((r.partition, bytes(r.value)) for r in recs) == [(0, b"d"), (1, b"c"), (2, b"b")]
        del recs
        assert [c.position(p) for p in range(3)] == [2, 1, 1]
        t.log(0).truncate(1)                         # below our position 2: reset (from_)
        assert c.poll(10, 0) == []
        assert c.position(0) == 0
        t.publish(b"e", partition=0)
        assert [bytes(r.value) for r in c.poll(10, 0)] == [b"a", b"e"]


def test_iteration_blocks_until_a_record_arrives(broker):
    t = broker.topic("t", partitions=2)
    with t.consumer("g") as c:
        def later():
            time.sleep(0.15)
            t.publish(b"late", partition=1)
        th = threading.Thread(target=later)
        t0 = time.monotonic()
        th.start()
        rec = next(iter(c))
        waited = time.monotonic() - t0
        th.join()
        assert (rec.partition, rec.offset, bytes(rec.value)) == (1, 0, b"late")
        assert c.position(1) == 1
        assert 0.1 < waited < 2.0
        del rec


def test_from_variants(broker):
    t = broker.topic("t", partitions=2)
    fill(t, 3)
    with t.consumer("g") as c:                  # committed, none yet -> earliest
        assert len(drain(c)) == 6
        c.commit({0: 2})
    with t.consumer("g") as c:                  # resumes from the committed offsets
        assert sorted(drain(c)) == [(0, 2, b"0-2")] + [(1, i, b"1-%d" % i) for i in range(3)]
    with t.consumer("g", from_="earliest") as c:
        assert len(drain(c)) == 6
    with t.consumer("g", from_="latest") as c:
        assert drain(c) == []
        t.publish(b"new", partition=0)
        assert drain(c) == [(0, 3, b"new")]
    with t.consumer(from_="latest") as c:       # standalone
        assert drain(c) == []
    with t.consumer(from_="committed") as c:    # standalone: like earliest
        assert len(drain(c)) == 7


# -- commits -----------------------------------------------------------------------------------

def test_commit_forms_and_committed(broker):
    t = broker.topic("t", partitions=2)
    fill(t, 4)
    with t.consumer("g") as c:
        assert c.committed() == {0: None, 1: None}
        recs = c.poll(100, timeout=0)
        c.commit(recs[0])
        assert c.committed()[recs[0].partition] == recs[0].offset + 1
        c.commit()
        assert c.committed() == {0: 4, 1: 4}
        c.commit({0: 1, 1: 0})
        assert c.committed() == {0: 1, 1: 0}
        with pytest.raises(OffsetOutOfRange, match=r"valid offsets are \[0, 4\]"):
            c.commit({0: 5})
        with pytest.raises(InvalidArgument):
            c.commit({0: "1"})
        with pytest.raises(InvalidArgument):
            c.commit({9: 1})
        with pytest.raises(InvalidArgument):
            c.commit("everything")
        assert c.committed() == {0: 1, 1: 0}      # a failed dict commit writes nothing
        del recs


def test_commit_record_of_another_topic(broker):
    a, b = broker.topic("a"), broker.topic("b")
    a.publish(b"x")
    b.publish(b"y")
    with a.consumer("g") as ca, b.consumer("g") as cb:
        rec = ca.poll(timeout=0)[0]
        with pytest.raises(InvalidArgument, match="topic 'a'"):
            cb.commit(rec)
        del rec


def test_commit_unowned_partition(broker):
    t = broker.topic("t", partitions=4)
    fill(t, 2)
    with t.consumer("g") as c1, t.consumer("g") as c2:
        a1, a2 = settle(c1, c2, partitions=4)
        assert a1 == [0, 1] and a2 == [2, 3]      # range assignor, members in join order
        recs = c2.poll(10, timeout=0)
        with pytest.raises(NotAssigned, match="partition 2"):
            c1.commit(recs[0])
        with pytest.raises(NotAssigned):
            c1.commit({3: 0})
        with pytest.raises(NotAssigned):
            c1.position(2)
        c2.commit(recs[0])
        del recs


def test_committed_survives_reopen(tmp_path):
    path = tmp_path / "b"
    with fastq.open(path) as b:
        t = b.topic("t", partitions=3)
        fill(t, 5)
        with t.consumer("g") as c:
            got = drain(c)
            assert len(got) == 15
            c.commit({0: 5, 1: 3})
    with fastq.open(path) as b:
        t = b.topic("t")
        with t.consumer("g") as c:
            assert c.committed() == {0: 5, 1: 3, 2: None}
            assert sorted(drain(c)) == [(1, 3, b"1-3"), (1, 4, b"1-4")] + [(2, i, b"2-%d" % i) for i in range(5)]


def test_auto_commit(broker):
    t = broker.topic("t", partitions=1)
    fill(t, 6)
    with t.consumer("g", auto_commit=True) as c:
        assert len(c.poll(4, timeout=0)) == 4
        assert c.committed() == {0: 0}            # the start position, not what it handed out
        assert len(c.poll(1, timeout=0)) == 1     # the next poll commits the previous ones
        assert c.committed() == {0: 4}
    with t.consumer("g") as c:                    # close committed the last one
        assert c.committed() == {0: 5}
        assert drain(c) == [(0, 5, b"0-5")]
    with t.consumer("g2", auto_commit=True) as c:
        it = iter(c)
        assert [next(it).offset for _ in range(6)] == list(range(6))
    with t.consumer("g2") as c:
        assert c.committed() == {0: 6}


def test_group_durability_commit_syncs(tmp_path):
    with fastq.open(tmp_path / "b", durability="always") as b:
        t = b.topic("t")
        t.publish(b"x")
        with t.consumer("g") as c:
            assert c._store.sync_commits
            c.poll(timeout=0)
            c.commit()
            assert c.committed() == {0: 1}


# -- seeks, positions, lag -----------------------------------------------------------------------

def test_seek_out_of_range_names_the_valid_range(broker):
    t = broker.topic("t", partitions=2)
    fill(t, 3)
    with t.consumer("g") as c:
        with pytest.raises(OffsetOutOfRange, match=r"valid offsets are \[0, 3\]"):
            c.seek(0, 4)
        with pytest.raises(OffsetOutOfRange, match=r"\[0, 3\]"):
            c.seek(1, -1)
        with pytest.raises(InvalidArgument, match="partition 2 out of range"):
            c.seek(2, 0)
        with pytest.raises(InvalidArgument):
            c.seek(0, "1")
        with pytest.raises(InvalidArgument):
            c.seek_to_timestamp(1.5)
        c.seek(0, 3)
        c.seek(1, 2)
        assert drain(c) == [(1, 2, b"1-2")]


def test_seek_positions_and_lag(broker):
    t = broker.topic("t", partitions=2)
    fill(t, 5, ts=1000)
    t.publish(b"later", partition=0, timestamp=2000)
    with t.consumer("g") as c:
        assert c.position(0) == 0 and c.lag() == {0: 6, 1: 5}
        c.seek(0, 4)
        assert c.position(0) == 4 and c.lag() == {0: 2, 1: 5}
        c.seek_to_end()
        assert c.lag() == {0: 0, 1: 0}
        c.seek_to_timestamp(1500)
        assert (c.position(0), c.position(1)) == (5, 5)   # none in p1 -> its end
        assert drain(c) == [(0, 5, b"later")]
        c.seek_to_beginning([1])
        assert c.position(1) == 0 and c.position(0) == 6
        c.seek_to_beginning()
        assert len(drain(c)) == 11
        with pytest.raises(InvalidArgument):
            c.position(5)


def test_seek_drops_buffered_records(broker):
    t = broker.topic("t")
    fill(t, 5)
    with t.consumer("g") as c:
        it = iter(c)
        assert next(it).offset == 0                # the rest is buffered
        c.seek(0, 3)
        assert [next(it).offset for _ in range(2)] == [3, 4]
        assert c.position(0) == 5


def test_seek_before_first_poll_applies_once_assigned(broker):
    t = broker.topic("t", partitions=4)
    fill(t, 6)
    with t.consumer("g") as c1:
        c2 = t.consumer("g")                       # joins, owns nothing yet
        assert c2.assignment() == []
        c2.seek(3, 4)                              # pending: applies on assignment
        c2.seek_to_end([2])
        c1.poll(timeout=0)                         # c1 gives 2 and 3 up
        settle(c1, c2, partitions=4)
        assert c2.assignment() == [2, 3]
        assert (c2.position(2), c2.position(3)) == (6, 4)
        assert drain(c2) == [(3, 4, b"3-4"), (3, 5, b"3-5")]
        with pytest.raises(NotAssigned):           # after the first poll: an error
            c2.seek(0, 1)
        c2.close()


def test_seek_to_timestamp_before_first_poll(broker):
    t = broker.topic("t", partitions=2)
    fill(t, 3, ts=1000)
    fill(t, 2, ts=5000)
    with t.consumer("g") as c:
        c.seek_to_timestamp(4000)
        assert sorted(drain(c)) == [(p, i, b"%d-%d" % (p, i - 3)) for p in range(2) for i in (3, 4)]


def test_out_of_range_position_resets(tmp_path):
    with fastq.open(tmp_path / "b") as b:
        t = b.topic("t", segment_bytes=4096)
        for i in range(200):
            t.publish(b"v" * 100, timestamp=1000)
        with t.consumer("g") as c:
            c.commit({0: 1})
        b.alter_topic("t", retention_bytes=4096)
        t = b.topic("t")
        assert t.maintain() > 0
        start = t.log(0).start_offset
        assert start > 1
        with t.consumer("g") as c:                 # committed 1 is gone: earliest
            assert c.position(0) == start
            with pytest.raises(OffsetOutOfRange, match=rf"\[{start}, 200\]"):
                c.seek(0, 0)
        with t.consumer("g", from_="latest") as c:
            assert c.position(0) == 200


# -- closed ----------------------------------------------------------------------------------------

def test_closed_consumer(broker):
    t = broker.topic("t")
    c = t.consumer("g")
    c.close()
    c.close()                                       # idempotent
    assert c.closed and "closed" in repr(c)
    for call in (lambda: c.poll(timeout=0), lambda: next(iter(c)), c.commit, c.committed,
                 lambda: c.seek(0, 0), c.seek_to_beginning, c.seek_to_end,
                 lambda: c.seek_to_timestamp(0), c.assignment, lambda: c.position(0), c.lag):
        with pytest.raises(Closed, match="closed"):
            call()
    t2 = broker.topic("t2")
    t2.close()
    with pytest.raises(Closed, match="t2"):
        Consumer(t2, "g")


def test_close_leaves_the_group(broker):
    t = broker.topic("t", partitions=2)
    c1 = t.consumer("g")
    mdir = os.path.join(broker.path, "groups", "g", "members", "t")
    assert os.listdir(mdir) == [c1.member_id]
    c1.close()
    assert os.listdir(mdir) == []
    for p in range(2):                               # ownership flocks released
        fd = os.open(os.path.join(broker.path, "groups", "g", "partitions", f"t.{p}.lock"), os.O_RDWR)
        try:
            assert fastq._core._storage.flock(fd, True, False)
        finally:
            os.close(fd)


def test_records_pin_the_log_until_dropped(broker):
    t = broker.topic("t")
    t.publish(b"keep me")
    c = t.consumer("g")
    rec = c.poll(timeout=0)[0]
    view = rec.value                                 # a zero-copy view into the segment
    kept = bytes(view)
    c.close()
    with pytest.raises(BufferError):
        t.close()
    del view, rec
    t.close()
    assert kept == b"keep me"


# -- groups in one process ---------------------------------------------------------------------------

def test_rebalance_on_join_and_leave_with_callbacks(broker):
    t = broker.topic("t", partitions=4)
    fill(t, 3)
    events = []
    c1 = t.consumer("g", on_assign=lambda ps: events.append(("a1", ps)),
                    on_revoke=lambda ps: events.append(("r1", ps)))
    assert c1.assignment() == [0, 1, 2, 3] and events == [("a1", [0, 1, 2, 3])]
    got1 = drain(c1)
    c1.commit()
    c2 = t.consumer("g", on_assign=lambda ps: events.append(("a2", ps)))
    settle(c1, c2, partitions=4)
    assert ("r1", [2, 3]) in events and ("a2", [2, 3]) in events
    assert drain(c2) == []                            # c1 committed everything
    fill(t, 1)
    assert sorted(drain(c1) + drain(c2)) == [(p, 3, b"%d-0" % p) for p in range(4)]
    c2.close()
    settle(c1, partitions=4)
    assert c1.assignment() == [0, 1, 2, 3]
    assert len(got1) == 12
    c1.close()


def test_new_member_gets_partitions_from_a_polling_member_quickly(broker):
    t = broker.topic("t", partitions=4)
    stop = threading.Event()
    c1 = t.consumer("g")

    def keep_polling():
        while not stop.is_set():
            c1.poll(timeout=0.05)
    th = threading.Thread(target=keep_polling)
    th.start()
    try:
        t0 = time.monotonic()
        with t.consumer("g") as c2:
            while not c2.assignment() and time.monotonic() - t0 < 3:
                c2.poll(timeout=0.05)
            took = time.monotonic() - t0
            assert c2.assignment() == [2, 3]
            assert took < 1.0, took
    finally:
        stop.set()
        th.join()
        c1.close()


def test_a_member_iterating_read_ahead_records_still_rebalances(broker):
    """Iteration hands out records read ahead without reading or polling; a member doing
    that still looks at the group (heartbeat, view) and gives a partition up to a new
    member, dropping that partition's read-ahead records."""
    t = broker.topic("t", partitions=2)
    for p in (0, 1):
        t.publish_many([b"x"] * 20_000, partition=p)    # more than the test can iterate
    stop = threading.Event()
    c1 = t.consumer("g", from_="earliest", max_poll_records=100_000, session_timeout_ms=1000)
    seen = []

    def iterate():
        for rec in c1:                       # one refill reads all 40,000; then read-ahead only
            seen.append(rec.partition)
            time.sleep(0.0005)
            if stop.is_set():
                return
    th = threading.Thread(target=iterate)
    th.start()
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        with t.consumer("g", session_timeout_ms=1000) as c2:
            while not c2.assignment() and time.monotonic() - t0 < 5:
                c2.poll(timeout=0.05)
            assert c2.assignment() == [1], time.monotonic() - t0
            assert time.monotonic() - t0 < 1.5
            n = len(seen)
            time.sleep(0.2)
            stop.set()
            th.join()
            assert set(seen[n + 5:]) == {0}   # read-ahead records of partition 1 were dropped
            assert c1.assignment() == [0]     # still a member: not evicted, just rebalanced
    finally:
        stop.set()
        th.join()
        c1.close()


def test_stale_member_is_evicted_and_rejoins(broker):
    t = broker.topic("t", partitions=2)
    fill(t, 2)
    c1 = t.consumer("g", session_timeout_ms=200)
    c2 = t.consumer("g", session_timeout_ms=200)
    settle(c1, c2, partitions=2)
    old_id = c1.member_id
    time.sleep(0.3)                                  # c1 stops heartbeating
    c2._maintain(time.monotonic_ns(), force=True)    # c2 sweeps: evicts c1
    assert old_id not in os.listdir(os.path.join(broker.path, "groups", "g", "members", "t"))
    assert c2.assignment() == [1]                    # c1 still holds 0: nothing moves yet
    c1.poll(timeout=0)                               # c1 notices, releases, rejoins
    assert c1.member_id != old_id
    a1, a2 = settle(c1, c2, partitions=2)
    assert sorted([a1, a2]) == [[0], [1]]
    c1.close()
    c2.close()


def test_dead_member_file_is_removed(broker):
    t = broker.topic("t", partitions=2)
    mdir = os.path.join(broker.path, "groups", "g", "members", "t")
    os.makedirs(mdir)
    ghost = "0000000000000001-1-deadbeef"
    with open(os.path.join(mdir, ghost), "wb") as f:    # nobody holds its flock
        f.write(b"\0" * 64)
    with open(os.path.join(mdir, "junk"), "wb") as f:   # not a member id: ignored
        f.write(b"junk")
    with t.consumer("g") as c:
        assert c.assignment() == [0, 1]
        assert ghost not in os.listdir(mdir)


def test_range_assign():
    assert fgroup.range_assign([], 4) == {}
    assert fgroup.range_assign(["b", "a"], 5) == {"a": [0, 1, 2], "b": [3, 4]}
    assert fgroup.range_assign(["a", "b", "c"], 2) == {"a": [0], "b": [1], "c": []}
    for m in range(1, 7):
        for n in range(0, 13):
            out = fgroup.range_assign([str(i) for i in range(m)], n)
            assert sorted(p for ps in out.values() for p in ps) == list(range(n))
            assert max(map(len, out.values())) - min(map(len, out.values())) <= 1


def test_consumer_inherited_across_fork_is_closed_in_the_child(broker):
    t = broker.topic("t", partitions=2)
    c = t.consumer("g")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = c.closed
        try:
            c.poll(timeout=0)
            ok = False
        except Closed as e:
            ok = ok and "fork" in str(e)
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)
    assert c.assignment() == [0, 1]                  # the parent keeps its partitions
    fd = os.open(os.path.join(broker.path, "groups", "g", "partitions", "t.0.lock"), os.O_RDWR)
    try:
        assert not fastq._core._storage.flock(fd, True, False)
    finally:
        os.close(fd)
    c.close()


# -- committed-offsets file ----------------------------------------------------------------------------

def test_offset_store_torn_half_keeps_the_previous_commit(tmp_path):
    path = str(tmp_path / "t.offsets")
    s = foffsets.OffsetStore(path, 2)
    assert s.get(0) is None
    s.put(0, 10)
    s.put(0, 11)                                     # half 1 holds 11, half 0 holds 10
    s.close()
    slot = foffsets.HEADER_SIZE
    with open(path, "r+b") as f:                     # tear the newest half
        f.seek(slot + foffsets.HALF_SIZE + 8)
        f.write(struct.pack("<q", 99))
    s = foffsets.OffsetStore(path, 2)
    assert s.get(0) == 10
    s.put(0, 12)                                     # overwrites the torn half
    assert s.get(0) == 12
    s.close()
    with open(path, "r+b") as f:                     # a torn first commit: nothing committed
        f.seek(slot + foffsets.SLOT_SIZE)
        f.write(b"\x07" * 10)
    s = foffsets.OffsetStore(path, 2)
    assert s.get(1) is None
    s.close()


@pytest.mark.parametrize("damage", ["garbage-slot", "bad-magic", "bad-size", "short"])
def test_offsets_file_from_disk_is_untrusted(broker, damage):
    t = broker.topic("t", partitions=2)
    with t.consumer("g") as c:
        c.commit({0: 0})
    path = os.path.join(broker.path, "groups", "g", "offsets", "t.offsets")
    with open(path, "r+b") as f:
        if damage == "garbage-slot":
            f.seek(foffsets.HEADER_SIZE)
            f.write(os.urandom(foffsets.SLOT_SIZE) .replace(b"\0", b"\1"))
        elif damage == "bad-magic":
            f.write(b"NOTMAGIC")
        elif damage == "bad-size":
            f.seek(0, 2)
            f.write(b"\0" * 7)
        else:
            f.truncate(10)
    with pytest.raises(CorruptRecord):
        c = t.consumer("g")
        try:
            c.committed()
        finally:
            c.close()
    assert os.listdir(os.path.join(broker.path, "groups", "g", "members", "t")) == []


def test_offsets_file_grows_with_partitions(tmp_path):
    path = str(tmp_path / "t.offsets")
    s = foffsets.OffsetStore(path, 2)
    s.put(1, 5)
    s.close()
    s = foffsets.OffsetStore(path, 8)
    assert os.path.getsize(path) == foffsets.HEADER_SIZE + 8 * foffsets.SLOT_SIZE
    assert s.get(1) == 5 and s.get(7) is None
    with pytest.raises(InvalidArgument):
        s.get(8)
    s.close()
    with pytest.raises(Closed):
        s.get(0)


def test_unclosed_consumer_warns_and_leaves(broker):
    import gc
    t = broker.topic("t")
    c = t.consumer("g")
    mdir = os.path.join(broker.path, "groups", "g", "members", "t")
    assert len(os.listdir(mdir)) == 1
    with pytest.warns(ResourceWarning, match="unclosed fastq consumer"):
        del c
        gc.collect()
    assert os.listdir(mdir) == []


@pytest.mark.parametrize("wait", ["futex", "adaptive"])
@pytest.mark.parametrize("partitions", [1, 3])
def test_a_blocking_poll_runs_signal_handlers(broker, interrupt_after, wait, partitions):
    """poll() with no timeout sleeps with the GIL released; it used to sleep through
    Ctrl-C until a record came. It now wakes to run signal handlers (every 100 ms)."""
    t = broker.topic("t", partitions=partitions)
    with t.consumer(wait=wait) as c:
        interrupt_after(0.2)
        t0 = time.monotonic()
        with pytest.raises(Interrupted):
            c.poll()
        assert 0.15 < time.monotonic() - t0 < 2.0
        t.publish(b"after", partition=0)
        assert [bytes(r.value) for r in c.poll(timeout=5)] == [b"after"]


def test_log_and_topic_waits_run_signal_handlers(broker, interrupt_after):
    t = broker.topic("t", partitions=2)
    interrupt_after(0.1)
    with pytest.raises(Interrupted):
        t.log(0).wait(0)
    interrupt_after(0.1)
    with pytest.raises(Interrupted):
        t.wait_any({0: 0, 1: 0})
    for bad in (-1, -0.5, "1", True, float("nan")):
        with pytest.raises(InvalidArgument):
            t.log(0).wait(0, timeout=bad)
    assert t.log(0).wait(0, timeout=0) is False
    t.publish(b"x", partition=1)
    assert t.log(1).wait(0, timeout=float("inf")) is True


@pytest.mark.parametrize("wait", ["futex", "adaptive"])
def test_a_one_partition_consumer_wakes_for_each_record(broker, wait):
    """A consumer of one partition waits in the compiled poll; records published by
    another thread, paced, wake it one by one, in order, and a timeout still ends an
    empty wait."""
    t = broker.topic("t")
    n = 40

    def writer():
        for i in range(n):
            time.sleep(0.003)
            t.publish(b"%d" % i)

    with t.consumer(wait=wait) as c:
        th = threading.Thread(target=writer)
        th.start()
        got = []
        while len(got) < n:
            recs = c.poll(timeout=5)
            assert recs, f"woke with nothing after {len(got)} records"
            got.extend(int(bytes(r.value)) for r in recs)
            del recs
        th.join()
        assert got == list(range(n))
        assert c.position(0) == n
        t0 = time.monotonic()
        assert c.poll(timeout=0.05) == []
        assert 0.04 <= time.monotonic() - t0 < 1.0


_CLOSE_WHILE_WAITING = r"""
import sys, tempfile, threading, time
import fastq
from fastq.errors import Closed
kind, parts = sys.argv[1], int(sys.argv[2])
b = fastq.open(tempfile.mkdtemp())
t = b.topic("t", partitions=parts)
c = t.consumer(wait="adaptive" if kind == "consumer-adaptive" else "futex")
out = []
def waiter():
    try:
        if kind == "log":
            out.append(t.log(0).wait(0, timeout=10))
        elif kind == "wait_any":
            out.append(t.wait_any({p: 0 for p in range(parts)}, timeout=10))
        else:
            out.append(c.poll(timeout=10))
    except Closed:
        out.append("Closed")
th = threading.Thread(target=waiter)
th.start()
time.sleep(0.3)                       # the waiter is asleep in the futex (GIL released)
t0 = time.monotonic()
if kind.startswith("consumer"):
    c.close()
b.close()                             # unmaps the logs' shared state under the waiter
closed_in = time.monotonic() - t0
th.join(10)
print(out, "alive" if th.is_alive() else "joined", round(closed_in, 3))
"""


@pytest.mark.parametrize("kind,parts", [("log", 1), ("wait_any", 3), ("consumer", 1), ("consumer", 3),
                                        ("consumer-adaptive", 1)])
def test_closing_the_broker_under_a_waiting_thread(kind, parts, tmp_path):
    """A thread asleep in a wait on a log (or on a topic's notifier) while another thread
    closes the broker: the close used to unmap the shared state under the sleeper, which
    then crashed the process (SIGSEGV) when it woke. Now the sleeper raises Closed and
    the last one out unmaps; close does not wait for it. In a child process, so a crash
    fails this test instead of ending the run."""
    import subprocess
    r = subprocess.run([sys.executable, "-c", _CLOSE_WHILE_WAITING, kind, str(parts)],
                       capture_output=True, text=True, env=child_env(tmp_path), timeout=60)
    assert r.returncode == 0, f"child died with {r.returncode}: {r.stderr[-2000:]}"
    got, state, closed_in = r.stdout.split("] ")[0] + "]", *r.stdout.split("] ")[1].split()
    assert state == "joined"
    assert got == "['Closed']", r.stdout
    assert float(closed_in) < 1.0
