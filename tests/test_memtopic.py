"""Memory topics: records in a shared ring, overflow policies, spill ordering, sharing
between processes, restart behaviour, bad arguments."""
import json
import multiprocessing as mp
import os
import queue
import threading
import time

import pytest

import fastq
from fastq.errors import Closed, FastqError, InvalidArgument, RecordTooLarge, RingFull
from fastq.broker.memtopic import MemoryTopic, ring_name
from fastq._core._ring import ring_path

SMALL = 1 << 16


@pytest.fixture
def bpath(tmp_path):
    return str(tmp_path / "b")


@pytest.fixture
def broker(bpath):
    with fastq.open(bpath) as b:
        yield b


def _drain(c, timeout=0.2):
    out = []
    while True:
        recs = c.poll(1000, timeout=timeout)
        if not recs:
            return out
        out.extend(recs)


def test_publish_consume_roundtrip_and_stored_config(broker, bpath):
    t = broker.topic("m", storage="memory", capacity_bytes=SMALL)
    assert isinstance(t, MemoryTopic) and t.overflow == "block"
    m = t.publish(b"v", key=b"k", headers=[("h", b"1"), ("n", None)], timestamp=123)
    assert (m.topic, m.partition, m.offset, m.timestamp) == ("m", 0, -1, 123)
    t.publish(None, key=bytearray(b"tomb"))
    bm = t.publish_many([b"a", memoryview(b"b")], key=b"K")
    assert bm.count == 2 and bm.base_offset == -1
    assert t.qsize() == 4
    with t.consumer(group="g") as c:
        recs = _drain(c)
    assert [(r.key, r.value) for r in recs] == [(b"k", b"v"), (b"tomb", None), (b"K", b"a"), (b"K", b"b")]
    assert recs[0].headers == [("h", b"1"), ("n", None)] and recs[0].timestamp == 123
    assert recs[0].offset == -1 and recs[2].headers == []
    with open(os.path.join(bpath, "topics", "m", "topic.json")) as f:
        cfg = json.load(f)
    assert cfg["storage"] == "memory" and cfg["overflow"] == "block" and cfg["capacity_bytes"] == SMALL
    # stored configuration wins over later arguments
    t.close()
    t2 = broker.topic("m", storage="log", overflow="reject")
    assert isinstance(t2, MemoryTopic) and t2.overflow == "block"


def test_memory_records_behave_as_the_named_tuple(broker):
    """Records taken from a memory topic are compiled objects (not tracked by the GC)
    with the interface of the named tuple they used to be: fields, indexing,
    unpacking, len, comparison with tuples, _asdict, _replace, pickling; headers is a
    new list on each access, so changing it changes nothing in the record."""
    import gc
    import pickle
    from fastq.broker.memtopic import MemoryRecord
    t = broker.topic("nt", storage="memory", capacity_bytes=SMALL)
    t.publish(b"v", key=b"k", headers={"h": b"1"}, timestamp=7)
    t.publish(b"w", timestamp=8)
    r, r2 = _drain(t.consumer())
    assert isinstance(r, MemoryRecord) and not gc.is_tracked(r)
    assert r.topic == "nt" and r._fields == ("partition", "offset", "timestamp", "key", "value", "headers")
    tup = (0, -1, 7, b"k", b"v", [("h", b"1")])
    assert tuple(r) == tup and len(r) == 6 and r[4] == b"v" and r[-1] == [("h", b"1")] and r[1:3] == (-1, 7)
    partition, offset, ts, key, value, headers = r
    assert (partition, offset, ts, key, value, headers) == tup
    assert r == tup and tup == r and r != r2 and r2 == (0, -1, 8, None, b"w", [])
    assert r < r2 and sorted([r2, r]) == [r, r2]
    assert r._asdict() == dict(zip(r._fields, tup))
    assert r.count(-1) == 1 and r.index(b"v") == 4
    assert repr(r) == "MemoryRecord(partition=0, offset=-1, timestamp=7, key=b'k', value=b'v', headers=[('h', b'1')])"
    r.headers.append(("x", b"y"))                 # a copy: the record keeps its headers
    assert r.headers == [("h", b"1")]
    s = r._replace(value=b"z", headers=[])
    assert (s.topic, s.value, s.headers, s.key) == ("nt", b"z", [], b"k") and r.value == b"v"
    with pytest.raises(InvalidArgument):
        r._replace(nope=1)
    p = pickle.loads(pickle.dumps(r))
    assert p == r and p.topic == "nt" and isinstance(p, MemoryRecord)
    with pytest.raises(TypeError):
        hash(r)                                   # as the tuple: headers is a list
    with pytest.raises(AttributeError):
        r.value = b"other"                        # read-only, as a tuple's fields
    with pytest.raises(InvalidArgument):
        MemoryRecord("nt", 0, -1, 0, "not bytes", None)
    with pytest.raises(InvalidArgument):
        MemoryRecord("nt", 0, -1, 0, None, None, [(1, b"x")])


def test_memory_consumer_offset_calls(broker):
    """A memory topic's consumer answers the Consumer calls that make sense for taken
    records (assignment, lag, committed) and refuses the ones that need positions with
    InvalidArgument (they were AttributeError)."""
    t = broker.topic("oc", storage="memory", capacity_bytes=SMALL)
    t.publish(b"a")
    t.publish(b"b")
    with t.consumer() as c:
        assert c.assignment() == [0] and c.committed() == {0: None} and c.lag() == {0: 2}
        assert [r.value for r in c.poll(1)] == [b"a"] and c.lag() == {0: 1}
        for call in (lambda: c.position(0), lambda: c.seek(0, 0), c.seek_to_beginning, c.seek_to_end,
                     lambda: c.seek_to_timestamp(0)):
            with pytest.raises(InvalidArgument, match="memory topic"):
                call()
    with pytest.raises(Closed):
        c.lag()


def test_iteration_and_producer_interface(broker):
    t = broker.topic("it", storage="memory", capacity_bytes=SMALL)
    delivered = []
    with t.producer(linger_ms=5, on_delivery=delivered.append) as p:
        for i in range(100):
            p.send(b"%d" % i)
    assert p.sent == 100 and [d.offset for d in delivered] == [-1] * 100
    c = t.consumer()
    got = [int(next(c).value) for _ in range(100)]
    assert got == list(range(100))
    c.commit()                      # accepted, nothing to do
    c.close()
    with pytest.raises(Closed):
        c.poll(timeout=0)


def test_overflow_reject(broker):
    t = broker.topic("rej", storage="memory", overflow="reject", capacity_bytes=SMALL)
    n = 0
    with pytest.raises(RingFull) as ei:
        while True:
            t.publish(b"x" * 100)
            n += 1
    assert isinstance(ei.value, queue.Full) and isinstance(ei.value, FastqError)
    assert "rej" in str(ei.value) and n > 100
    with pytest.raises(RingFull):
        t.publish_many([b"y"] * 10)            # all or nothing
    with t.consumer() as c:
        vals = [r.value for r in _drain(c)]
    assert vals == [b"x" * 100] * n


def test_overflow_block_waits_then_times_out(broker):
    t = broker.topic("blk", storage="memory", overflow="block", capacity_bytes=SMALL)
    n = 0
    while t._ring.used_bytes + 200 < t._ring.capacity:
        t.publish(b"%d" % n + b"." * 100)
        n += 1
    while True:                                # top it up exactly
        try:
            t._ring._put_record(0, b"%d" % n + b"." * 100)
            n += 1
        except RingFull:
            break
    t0 = time.monotonic()
    with pytest.raises(RingFull):
        t.publish(b"late" + b"." * 100, timeout=0.05)
    assert time.monotonic() - t0 >= 0.04
    c = t.consumer()
    threading.Timer(0.05, lambda: c.poll(10, timeout=1)).start()
    t.publish(b"%d" % n + b"." * 100, timeout=5)     # waits for the consumer to make room
    n += 1
    time.sleep(0.01)
    rest = _drain(c)
    assert len(rest) == n - 10
    assert int(rest[-1].value.split(b".")[0]) == n - 1
    c.close()


def test_overflow_drop_oldest_keeps_the_newest(broker):
    t = broker.topic("drop", storage="memory", overflow="drop-oldest", capacity_bytes=SMALL)
    for i in range(5000):
        t.publish(b"%d" % i + b"." * 100)
    t.publish_many([b"a", b"b"])
    assert t.dropped > 0
    with t.consumer() as c:
        vals = [r.value for r in _drain(c)]
    nums = [int(v.split(b".")[0]) for v in vals[:-2]]
    assert vals[-2:] == [b"a", b"b"]
    assert nums == list(range(nums[0], 5000)) and len(vals) + t.dropped == 5002


def test_spill_keeps_publish_order(broker):
    t = broker.topic("sp", storage="memory", overflow="spill", capacity_bytes=SMALL)
    c = t.consumer()
    got = []
    i = 0
    for rnd in range(6):
        for _ in range(1500):                  # ~1.5x what the ring holds: spills
            t.publish(b"%d" % i + b"." * 60)
            i += 1
        if rnd % 2 == 0:
            t.publish_many([b"%d" % (i + k) for k in range(50)])
            i += 50
        for r in c.poll(700, timeout=0.1):     # consume part of it, then publish more
            got.append(r)
    got.extend(_drain(c))
    nums = [int(r.value.split(b".")[0]) for r in got]
    assert nums == list(range(i))
    assert any(r.offset >= 0 for r in got) and any(r.offset == -1 for r in got)
    assert t.end_offsets()[0] > 0 and t.qsize() == 0
    # drained: the topic went back to the ring
    assert t.publish(b"again").offset == -1
    c.close()


def test_spill_ordering_under_concurrent_publishers_and_consumers(broker):
    t = broker.topic("spc", storage="memory", overflow="spill", capacity_bytes=SMALL)
    got = {n: [] for n in range(3)}
    lock = threading.Lock()
    done = threading.Event()

    def pub(n):
        for i in range(4000):
            t.publish(b"%d:%d" % (n, i))

    def con():
        c = t.consumer()
        while True:
            recs = c.poll(50, timeout=0.05)
            with lock:
                for r in recs:
                    n, i = map(int, r.value.split(b":"))
                    got[n].append(i)
            if not recs and done.is_set():
                break
        c.close()

    pubs = [threading.Thread(target=pub, args=(n,)) for n in range(3)]
    cons = threading.Thread(target=con)
    for th in pubs:
        th.start()
    cons.start()
    for th in pubs:
        th.join()
    done.set()
    cons.join()
    assert got == {n: list(range(4000)) for n in range(3)}


def _mp_publisher(path, n, start):
    with fastq.open(path) as b:
        t = b.topic("x", storage="memory", capacity_bytes=SMALL)
        start.wait(10)
        for i in range(n):
            t.publish(b"%d" % i)


def _mp_consumer(path, n_total, out):
    with fastq.open(path) as b:
        t = b.topic("x", storage="memory", capacity_bytes=SMALL)
        c = t.consumer(group="workers")
        mine = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            recs = c.poll(100, timeout=0.3)
            if not recs and mine:
                break
            mine.extend(int(r.value) for r in recs)
        c.close()
        out.put(mine)


def test_cross_process_publish_and_shared_consumption_with_fork(bpath):
    ctx = mp.get_context("fork")
    with fastq.open(bpath) as b:
        t = b.topic("x", storage="memory", capacity_bytes=SMALL)    # block: back pressure
        start = ctx.Event()
        out = ctx.Queue()
        pub = ctx.Process(target=_mp_publisher, args=(bpath, 20000, start))
        cons = [ctx.Process(target=_mp_consumer, args=(bpath, 20000, out)) for _ in range(2)]
        for p in [pub, *cons]:
            p.start()
        start.set()
        results = [out.get(timeout=60) for _ in cons]
        for p in [pub, *cons]:
            p.join(30)
            assert p.exitcode == 0
        out.close()
        out.join_thread()
        # each record went to exactly one consumer, in order within each consumer
        assert sorted(results[0] + results[1]) == list(range(20000))
        for r in results:
            assert r == sorted(r)
        assert len(t._ring) == 0


def test_restart_loses_memory_records_but_keeps_spilled_ones(bpath):
    with fastq.open(bpath) as b:
        t = b.topic("r", storage="memory", overflow="spill", capacity_bytes=SMALL)
        i = 0
        while t.end_offsets()[0] < 100:
            t.publish(b"%d" % i)
            i += 1
        in_ring = len(t._ring)
        assert in_ring > 0
        assert os.path.exists(ring_path(ring_name(bpath, "r")))
    # last user closed: the ring is gone with its records
    assert not os.path.exists(ring_path(ring_name(bpath, "r")))
    with fastq.open(bpath) as b:
        t = b.topic("r")
        assert isinstance(t, MemoryTopic) and t.overflow == "spill"
        with t.consumer() as c:
            nums = [int(r.value) for r in _drain(c)]
        assert nums == list(range(in_ring, i))         # only the spilled records survive
        assert t.publish(b"fresh").offset == -1


def _hold_and_die(path, ready):
    b = fastq.open(path)
    t = b.topic("k", storage="memory", capacity_bytes=SMALL)
    t.publish(b"from the dead")
    ready.set()
    time.sleep(60)


def test_a_killed_user_does_not_keep_the_ring_alive(bpath):
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=_hold_and_die, args=(bpath, ready))
    p.start()
    assert ready.wait(10)
    with fastq.open(bpath) as b:        # shares the live ring
        t = b.topic("k")
        assert [r.value for r in t.consumer().poll(10, timeout=1)] == [b"from the dead"]
        t.publish(b"left behind")
    p.kill()
    p.join()
    with fastq.open(bpath) as b:        # nobody else: a fresh ring
        with b.topic("k").consumer() as c:
            assert c.poll(10, timeout=0.05) == []


def test_bad_arguments(broker):
    for bad in ({"storage": "disk"}, {"storage": "memory", "overflow": "explode"},
                {"storage": "memory", "capacity_bytes": 100}, {"storage": "memory", "capacity_bytes": "big"},
                {"storage": "memory", "partitions": 2}):
        with pytest.raises(InvalidArgument):
            broker.topic("bad", **bad)
    assert "bad" not in broker.topics()
    t = broker.topic("m", storage="memory", capacity_bytes=SMALL, max_record_bytes=1024)
    with pytest.raises(InvalidArgument):
        t.publish("text")
    with pytest.raises(InvalidArgument):
        t.publish(b"x", key="text")
    with pytest.raises(InvalidArgument):
        t.publish(b"x", partition=1)
    with pytest.raises(InvalidArgument):
        t.publish(b"x", timestamp=-5)
    with pytest.raises(InvalidArgument):
        t.publish_many([])
    with pytest.raises(RecordTooLarge):
        t.publish(b"x" * SMALL)
    with pytest.raises(InvalidArgument):
        t.consumer(bogus=1)
    with pytest.raises(InvalidArgument):
        t.consumer(group="no/slash")
    with pytest.raises(InvalidArgument):
        t.consumer().poll(0)
    with pytest.raises(InvalidArgument):
        t.producer(whatever=1)
    t.close()
    with pytest.raises(Closed):
        t.publish(b"x")
    with pytest.raises(Closed):
        t.consumer()
