"""The batching producer never drops a record silently.

A record the log can never take (too large for ``max_record_bytes``, bad header types) is
rejected by ``send`` itself: it raises, nothing is queued. A failure while draining (a
full disk, a topic closed under the producer) keeps every record the drain took: the
error reaches the caller (the next ``send``/``flush``/``close``), and the records are
appended, in order, by a later drain. After the error every good record is readable.
"""
import pytest

import fastq
from fastq.errors import Closed, InvalidArgument, RecordTooLarge, StorageError
from fastq.broker.producer import Producer
from faultfs import fill

LIMIT = 1024


def _values(t, partition=0):
    return [bytes(r.value) for r in t.read(partition)]


@pytest.fixture
def broker(tmp_path):
    b = fastq.open(tmp_path / "b")
    yield b
    b.close()


@pytest.mark.parametrize("linger_ms", [0, 1000])
def test_oversized_send_raises_record_too_large_and_no_good_record_is_dropped(broker, linger_ms):
    t = broker.topic("t", max_record_bytes=LIMIT)
    p = t.producer(linger_ms=linger_ms)
    good = [b"g%02d" % i for i in range(20)]
    for v in good[:10]:
        p.send(v, partition=0)
    with pytest.raises(RecordTooLarge) as ei:
        p.send(b"x" * 4000, partition=0)         # under a quarter of the ring: it used to be queued
    msg = str(ei.value)
    assert str(LIMIT) in msg and "4" in msg        # names the limit and the size
    for v in good[10:]:
        p.send(v, partition=0)
    p.flush()
    p.close()
    assert _values(t) == good


def test_send_size_check_is_exact_at_the_limit(broker):
    t = broker.topic("t", max_record_bytes=LIMIT)
    lg = t.log(0)
    for key, headers in [(None, None), (b"k" * 300, None), (b"key", [("h1", b"v" * 100), ("h2", None)])]:
        # the largest value Log.append takes with this key and headers
        n = LIMIT
        while True:
            try:
                lg.append(b"v" * n, key, headers)
                break
            except RecordTooLarge:
                n -= 1
        p = t.producer(linger_ms=1000)
        p.send(b"v" * n, key=key, headers=headers, partition=0)
        with pytest.raises(RecordTooLarge):
            p.send(b"v" * (n + 1), key=key, headers=headers, partition=0)
        assert p.pending == 1
        before = lg.end_offset
        p.close()
        assert lg.end_offset == before + 1


def test_bad_header_types_are_rejected_by_send_and_good_records_delivered(broker):
    t = broker.topic("t")
    p = t.producer(linger_ms=1000)
    p.send(b"a", partition=0)
    for bad in ([("k", 5)], [(5, b"v")], [("k",)], "not headers", 7):
        with pytest.raises(InvalidArgument):
            p.send(b"bad", headers=bad, partition=0)
    p.send(b"b", partition=0, headers=[("k", b"v")])
    assert p.pending == 2
    p.close()
    assert _values(t) == [b"a", b"b"]


def _full_disk_topic(path):
    b = fastq.open(path)
    # small segments: a drain soon needs a new (preallocated) segment file
    t = b.topic("t", segment_bytes=16384, max_record_bytes=LIMIT)
    t.log(0)                                  # opened (log.json written) before the disk fills
    return b, t


@pytest.mark.parametrize("linger_ms", [0, 1, 1000])
def test_full_disk_mid_drain_keeps_every_record_and_delivers_them_later(tmpfs_dir, linger_ms):
    b, t = _full_disk_topic(tmpfs_dir + "/b")
    delivered = []
    p = t.producer(linger_ms=linger_ms, on_delivery=lambda m: delivered.append(m.offset))
    accepted = []
    release = fill(tmpfs_dir, leave=0)
    failed = None
    try:
        for i in range(400):                  # ~45 KB: several rolls on a full disk
            v = b"r%04d-" % i + b"x" * 100
            try:
                p.send(v, partition=0)
                accepted.append(v)
            except StorageError as e:         # the record of a send that raises is not queued
                failed = e
        try:
            p.flush()
        except StorageError as e:
            failed = e
        assert failed is not None, "the disk was full, yet every drain succeeded"
        assert p.pending + len(delivered) == len(accepted)   # nothing taken and thrown away
    finally:
        release()
    p.flush()
    assert p.pending == 0
    p.close()
    assert _values(t) == accepted             # every accepted record, once, in order
    assert delivered == list(range(len(accepted)))
    b.close()


def test_topic_closed_under_producer_keeps_records_and_close_reports_them(broker):
    t = broker.topic("t")
    p = Producer(t, linger_ms=1000)           # not registered: the topic cannot flush it
    for i in range(5):
        p.send(b"%d" % i, partition=0)
    t.close()
    with pytest.raises(Closed):
        p.flush()
    assert p.pending == 5                     # still held, not silently dropped
    with pytest.raises(Closed) as ei:
        p.close()
    assert "5 record" in str(ei.value)
    t2 = broker.topic("t")
    assert _values(t2) == []


def test_failed_fsync_after_commit_is_reported_and_not_appended_twice(broker):
    t = broker.topic("t", durability="always")
    lg = t.log(0)
    real = lg._after_append
    calls = []

    def fail_once(done_offset):       # the batch is committed; its fsync "fails"
        calls.append(done_offset)
        if len(calls) == 1:
            raise StorageError(f"injected: fsync before offset {done_offset} failed")
        return real(done_offset)

    lg._after_append = fail_once
    delivered = []
    p = t.producer(linger_ms=1000, on_delivery=lambda m: delivered.append(m.offset))
    for i in range(5):
        p.send(b"%d" % i, partition=0)
    with pytest.raises(StorageError, match="injected"):
        p.flush()
    assert p.pending == 0                     # appended: nothing held to append again
    p.send(b"5", partition=0)
    p.close()
    del lg._after_append
    assert _values(t) == [b"%d" % i for i in range(6)]
    assert delivered == list(range(6))


def test_failed_fsync_in_a_background_drain_is_raised_by_the_next_flush(broker):
    t = broker.topic("t", durability="always")
    lg = t.log(0)
    real = lg._after_append
    failed = []

    def fail_once(done_offset):
        if not failed:
            failed.append(done_offset)
            raise StorageError("injected: fsync failed")
        return real(done_offset)

    lg._after_append = fail_once
    p = t.producer(linger_ms=1)
    p.send(b"a", partition=0)
    for _ in range(5000):                     # the linger thread appends it, the fsync fails
        if p._error is not None:
            break
        p._stop.wait(0.001)
    assert p._error is not None, "the linger thread did not drain within 5 s"
    with pytest.raises(StorageError, match="injected"):
        p.flush()                             # nothing held to retry: the error itself
    p.flush()                                 # reported once
    p.close()
    del lg._after_append
    assert _values(t) == [b"a"]
