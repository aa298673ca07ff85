"""The batching producer's ring accumulator: order, callbacks, threads, back pressure,
errors from background flushes, oversize records, close semantics."""
import threading
import time

import pytest

import fastq
from fastq.errors import Closed, InvalidArgument, RecordTooLarge


@pytest.fixture
def broker(tmp_path):
    with fastq.open(tmp_path / "b") as b:
        yield b


def _values(t, part):
    return [(None if r.key is None else bytes(r.key), bytes(r.value), r.offset) for r in t.read(part)]


def test_callbacks_carry_the_offsets_and_timestamps_in_the_log(broker):
    t = broker.topic("cb", partitions=3)
    got = []
    with t.producer(linger_ms=1, batch_size=512, on_delivery=got.append) as p:
        for i in range(3000):
            p.send(b"v%d" % i, key=b"k%d" % (i % 7), timestamp=1000 + i)
    assert len(got) == 3000 and p.sent == 3000 and p.pending == 0
    by_pos = {(m.partition, m.offset): m for m in got}
    assert len(by_pos) == 3000
    for part in range(3):
        for rec in t.read(part):
            m = by_pos[(part, rec.offset)]
            assert m.topic == "cb" and m.timestamp == rec.timestamp == 1000 + int(bytes(rec.value)[1:])


def test_headers_keys_none_values_and_explicit_partitions_survive_the_ring(broker):
    t = broker.topic("h", partitions=2)
    with t.producer(linger_ms=0) as p:
        p.send(b"a", key=b"k", headers=[("x", b"1"), ("y", None)], partition=1)
        p.send(None, key=bytearray(b"tomb"), partition=1)
        p.send(memoryview(b"mv"), headers={"z": b"2"}, partition=0)
    r = list(t.read(1))
    assert [bytes(r[0].value), r[0].headers] == [b"a", [("x", b"1"), ("y", None)]]
    assert r[1].value is None and bytes(r[1].key) == b"tomb"
    (r0,) = list(t.read(0))
    assert bytes(r0.value) == b"mv" and r0.headers == [("z", b"2")]
    del r, r0


def test_threads_keep_per_thread_order_and_lose_nothing(broker):
    t = broker.topic("thr", partitions=4)
    got = []
    lock = threading.Lock()

    def deliver(m):
        with lock:
            got.append(m)

    p = t.producer(linger_ms=1, batch_size=2048, max_pending=500, on_delivery=deliver)

    def work(n):
        for i in range(3000):
            p.send(b"%d:%d" % (n, i), key=b"t%d" % n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    p.close()
    assert len(got) == 12000 == sum(t.end_offsets().values())
    seen = {}
    for part in range(4):
        for k, v, _ in _values(t, part):
            n, i = map(int, v.split(b":"))
            seen.setdefault(n, []).append(i)
    assert {n: v for n, v in seen.items()} == {n: list(range(3000)) for n in range(4)}


def test_back_pressure_appends_inline_when_the_ring_is_full(broker):
    t = broker.topic("bp")
    # tiny accumulator, huge linger and batch: only back pressure can append
    p = t.producer(linger_ms=60_000, batch_size=1 << 30, max_pending=10, buffer_bytes=1 << 16)
    for i in range(1000):
        p.send(b"%d" % i)
    assert t.end_offsets()[0] >= 990 and p.pending <= 10
    p.close()                      # close does not wait out the 60 s linger
    assert [int(v) for _, v, _ in _values(t, 0)] == list(range(1000))


def test_oversize_record_goes_straight_to_the_log_in_order(broker):
    t = broker.topic("big", max_record_bytes=1 << 20)
    with t.producer(linger_ms=50, buffer_bytes=1 << 16) as p:
        p.send(b"before")
        p.send(b"x" * 40_000)       # over a quarter of the 64 KiB ring
        p.send(b"after")
    vals = [v for _, v, _ in _values(t, 0)]
    assert vals == [b"before", b"x" * 40_000, b"after"]


def test_background_error_is_raised_by_the_next_call(broker):
    t = broker.topic("err", max_record_bytes=1024)
    p = t.producer(linger_ms=1)
    with pytest.raises(RecordTooLarge):
        p.send(b"x" * 4000)        # fits the ring, too large for the log: rejected by send
    t.log(0).close()               # the partition's log closes under the producer
    p.send(b"a", partition=0)
    deadline = time.monotonic() + 5
    while p._error is None and time.monotonic() < deadline:
        time.sleep(0.002)
    with pytest.raises(Closed):    # the next call retries the held record: still failing
        p.send(b"not queued", partition=0)
    t._logs[0] = None              # (test only) the topic reopens the partition's log
    p.send(b"ok", partition=0)     # the retry succeeds: the held record first
    p.close()
    assert [v for _, v, _ in _values(t, 0)] == [b"a", b"ok"]


def test_flush_and_close_semantics_and_bad_arguments(broker):
    t = broker.topic("fc", partitions=2)
    p = t.producer(linger_ms=60_000, batch_size=1 << 30)
    for i in range(100):
        p.send(b"%d" % i)
    assert p.pending == 100 and sum(t.end_offsets().values()) == 0
    assert p.flush() == 100 and p.pending == 0
    assert sum(t.end_offsets().values()) == 100
    p.close()
    p.close()
    with pytest.raises(Closed):
        p.send(b"x")
    for bad in ({"linger_ms": -1}, {"batch_size": 0}, {"max_pending": 0}, {"buffer_bytes": 100},
                {"on_delivery": 3}, {"linger_ms": True}):
        with pytest.raises(InvalidArgument):
            t.producer(**bad)
    with t.producer() as q:
        with pytest.raises(InvalidArgument):
            q.send("text")
        with pytest.raises(InvalidArgument):
            q.send(b"x", key="text")
        with pytest.raises(InvalidArgument):
            q.send(b"x", partition=5)
        with pytest.raises(InvalidArgument):
            q.send(b"x", timestamp="now")
        with pytest.raises(InvalidArgument):
            q.send(b"x", headers=[("k",)])


def test_closing_the_broker_appends_what_its_producers_hold(tmp_path):
    """Records sent to a producer and still lingering when the broker (or the topic)
    closes are appended by that close, and the producer is closed with it. They used to
    be dropped without an error: the linger thread met the closed topic, took the
    records out of its ring and returned quietly."""
    b = fastq.open(tmp_path / "b")
    t = b.topic("t", partitions=2)
    acked = []
    p = t.producer(linger_ms=60_000, on_delivery=acked.append)     # nothing lingers out
    for i in range(10):
        p.send(b"%d" % i, partition=i % 2)
    assert p.pending == 10
    b.close()
    assert p.pending == 0 and len(acked) == 10
    with pytest.raises(Closed):
        p.send(b"late")
    with pytest.raises(Closed):
        t.producer()
    with fastq.open(tmp_path / "b") as again:
        t2 = again.topic("t")
        assert sorted(bytes(r.value) for part in (0, 1) for r in t2.read(part)) == \
            sorted(b"%d" % i for i in range(10))


def test_a_producer_failing_at_close_does_not_keep_the_topic_open(tmp_path):
    """Topic.close closes every producer and then the logs even when one producer's
    close raises (here its on_delivery callback); the error reaches the caller after."""
    with fastq.open(tmp_path / "b") as b:
        t = b.topic("t")

        def boom(meta):
            raise RuntimeError("callback failed")
        bad = t.producer(linger_ms=60_000, on_delivery=boom)
        good = t.producer(linger_ms=60_000)
        bad.send(b"a")
        good.send(b"b")
        with pytest.raises(RuntimeError, match="callback failed"):
            t.close()
        assert t.closed and good.pending == 0
        with pytest.raises(Closed):
            t.publish(b"late")
    with fastq.open(tmp_path / "b") as again:
        assert sorted(bytes(r.value) for r in again.topic("t").read(0)) == [b"a", b"b"]


def test_a_drain_waits_out_a_busy_accumulator_lock_instead_of_taking_it_for_empty(broker):
    """A full accumulator makes send drain inline. When the ring's consumer lock is busy for
    longer than a non-blocking take waits (2 ms: a holder descheduled under load, which CI
    met as the linger thread holding it while it waited for the GIL), the drain must wait
    for it, not take the ring for empty — send raised RingFull for a record it should
    have queued. Here a forked child holds the lock for 300 ms, then dies holding it."""
    import os
    t = broker.topic("busy")
    p = t.producer(linger_ms=60_000, batch_size=1 << 30, buffer_bytes=1 << 16, max_pending=16)
    for i in range(16):                        # full: max_pending records wait
        p.send(b"%05d" % i, partition=0)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:                               # pragma: no cover - the child
        try:
            p._ring._debug_hold_lock("consumer")
            os.write(wfd, b"x")
            time.sleep(0.3)
        finally:
            os._exit(0)
    try:
        assert os.read(rfd, 1) == b"x"
        p.send(b"%05d" % 16, partition=0)      # drains once the dead holder's lock is taken over
    finally:
        os.waitpid(pid, 0)
        os.close(rfd)
        os.close(wfd)
    p.close()
    assert [v for _, v, _ in _values(t, 0)] == [b"%05d" % i for i in range(17)]
