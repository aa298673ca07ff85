"""Compaction of a compacted topic written by transactions (issue 15): the cleaner must
not resurrect an aborted transaction's records, nor let them shadow the committed value
of their key, nor rewrite a transaction still open (its records would become visible
before its commit). As Kafka's cleaner: aborted records and markers are dropped, nothing
at or above the last stable offset is cleaned."""
from __future__ import annotations

import os

import fastq
from fastq.log.compaction import _producer_of


def _values(t, isolation):
    return [(bytes(r.key), bytes(r.value)) for r in t.read(0, isolation=isolation)]


def _open(tmp_path):
    b = fastq.open(tmp_path / "b")
    t = b.topic("kv", partitions=1, compact=True, segment_bytes=4096)
    return b, t


def _fill_sealed(t, n=120):
    """Plain filler records (distinct keys) until the segments before are sealed."""
    for i in range(n):
        t.publish(b"f" * 100, key=b"fill-%d" % i, partition=0)


def test_aborted_records_do_not_survive_compaction(tmp_path):
    b, t = _open(tmp_path)
    try:
        t.publish(b"good", key=b"k", partition=0)
        tx = b.transaction("t")
        tx.publish(t, b"aborted", key=b"k", partition=0)
        tx.abort()
        with b.transaction("t") as tx:
            tx.publish(t, b"committed", key=b"c", partition=0)
        _fill_sealed(t)
        before = [kv for kv in _values(t, "read_committed") if not kv[0].startswith(b"fill")]
        assert before == [(b"k", b"good"), (b"c", b"committed")]
        stats = t.maintain()
        assert len(t.log(0).segments()) > 1
        for iso in ("read_committed", "read_uncommitted"):
            got = [kv for kv in _values(t, iso) if not kv[0].startswith(b"fill")]
            assert got == [(b"k", b"good"), (b"c", b"committed")], (iso, stats)
    finally:
        b.close()
    b, t = _open(tmp_path)                       # a fresh process's view: rebuilt from the files
    try:
        got = [kv for kv in _values(t, "read_committed") if not kv[0].startswith(b"fill")]
        assert got == [(b"k", b"good"), (b"c", b"committed")]
    finally:
        b.close()


def test_open_transaction_is_not_compacted(tmp_path):
    b, t = _open(tmp_path)
    try:
        t.publish(b"old", key=b"k", partition=0)
        tx = b.transaction("t")
        tx.publish(t, b"pending", key=b"k", partition=0)
        _fill_sealed(t)
        t.maintain()
        assert (b"k", b"pending") not in _values(t, "read_committed")    # held back, not leaked
        assert (b"k", b"old") in _values(t, "read_committed")
        tx.commit()
        t.maintain()
        got = dict((k, v) for k, v in _values(t, "read_committed") if not k.startswith(b"fill"))
        assert got == {b"k": b"pending"}
    finally:
        b.close()


def test_compaction_keeps_producer_fields(tmp_path):
    """An idempotent producer that wrote only to segments compaction rewrote is still
    known to a state rebuilt from the log (no snapshot): its next sequence and a retry
    of its last batch."""
    b, t = _open(tmp_path)
    try:
        p = t.producer(transactional_id="c")
        for i in range(20):                          # keys a0..a9 twice: seq 10..19 survive
            p.publish(b"v%d" % i + b"." * 200, key=b"a%d" % (i % 10), partition=0)
        p.close()
        _fill_sealed(t)
        t.maintain()
        kept = [r for r in t.read(0) if bytes(r.key).startswith(b"a")]
        assert [r.offset for r in kept] == list(range(10, 20))      # compaction did rewrite
        del kept
        d = t.log(0).path
    finally:
        b.close()
    for name in os.listdir(d):
        if name.endswith(".snapshot"):
            os.unlink(os.path.join(d, name))
    b, t = _open(tmp_path)
    try:
        assert t.log(0).producer_state().loaded_from == -1
        p = t.producer(transactional_id="c")
        assert p.next_sequence(0) == 20
        again = p.publish(b"v19" + b"." * 200, key=b"a9", partition=0, sequence=19)
        assert again.offset == 19 and p.duplicates == 1
        p.close()
    finally:
        b.close()


def test_producer_of_a_record_is_its_batch_only():
    batches = [(0, 4, 7, 1, 0), (10, 10, 8, 2, 5)]           # (base, last, pid, epoch, base seq)
    firsts = [0, 10]
    assert _producer_of(batches, firsts, 3) == (7, 1, 3)
    assert _producer_of(batches, firsts, 5) == (-1, -1, -1)   # a plain batch between them
    assert _producer_of(batches, firsts, 10) == (8, 2, 5)
    assert _producer_of([(0, 2, 7, 1, 2**31 - 2)], [0], 2) == (7, 1, 0)   # sequences wrap
