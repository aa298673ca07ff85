"""Compaction of a compacted topic written by transactions (issue 15): the cleaner must
not resurrect an aborted transaction's records, nor let them shadow the committed value
of their key, nor rewrite a transaction still open (its records would become visible
before its commit). As Kafka's cleaner: aborted records and markers are dropped, nothing
at or above the last stable offset is cleaned."""
from __future__ import annotations

import fastq


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
