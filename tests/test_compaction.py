"""Log compaction: latest record per key, offsets preserved, tombstones expire."""
import random

import pytest

import fastq
from fastq.log.compaction import compact_log


def _fill(log, n, keys, seed, tomb=0.05):
    rnd = random.Random(seed)
    model = {}
    for i in range(n):
        k = b"k%d" % rnd.randrange(keys)
        v = None if rnd.random() < tomb else b"v%d" % i
        off = log.append(v, key=k, timestamp=1000 + i)
        model[k] = (off, v)
    return model


def _snapshot(log):
    out = []
    for r in log.read(log.start_offset):
        out.append((r.offset, bytes(r.key), None if r.value is None else bytes(r.value)))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_compaction_keeps_latest_per_key(tmp_path, seed):
    print("seed", seed)
    log = fastq.Log(tmp_path / "c", segment_bytes=4096, compact=True)
    model = _fill(log, 3000, 40, seed)
    before = _snapshot(log)
    end = log.end_offset
    stats = compact_log(log, delete_retention_ms=10**12, now_ms=5000)
    assert stats["segments"] > 0 and stats["removed"] > 0
    after = _snapshot(log)
    offs = [o for o, _, _ in after]
    assert offs == sorted(set(offs))                          # ascending, offsets preserved
    assert set(after) <= set(before)                         # nothing invented or altered
    assert {k: (o, v) for o, k, v in after} == model          # latest per key (incl. tombstones)
    assert log.end_offset == end
    # appends continue after compaction
    off = log.append(b"new", key=b"k0")
    assert off == end
    log.close()
    with fastq.Log(tmp_path / "c") as log2:
        assert _snapshot(log2)[:-1] == after


def test_tombstones_expire(tmp_path):
    log = fastq.Log(tmp_path / "c", segment_bytes=4096, compact=True)
    for i in range(200):
        log.append(b"v" * 50, key=b"a", timestamp=1000)
    log.append(None, key=b"a", timestamp=2000)               # delete "a"
    for i in range(200):
        log.append(b"w" * 50, key=b"b%d" % (i % 3), timestamp=3000)
    log.roll()
    compact_log(log, delete_retention_ms=1000, now_ms=2500)  # tombstone still young
    keys = [(k, v) for _, k, v in _snapshot(log)]
    assert (b"a", None) in keys
    compact_log(log, delete_retention_ms=1000, now_ms=10_000)  # tombstone old enough
    keys = [k for _, k, _ in _snapshot(log)]
    assert b"a" not in keys and set(keys) == {b"b0", b"b1", b"b2"}
    log.close()


def test_read_from_removed_offset_and_recovery(tmp_path):
    log = fastq.Log(tmp_path / "c", segment_bytes=4096, compact=True)
    _fill(log, 1000, 5, 7, tomb=0)
    compact_log(log, delete_retention_ms=10**12, now_ms=0)
    after = _snapshot(log)
    first = after[0][0]
    # reading from an offset that was compacted away starts at the next record
    r = next(iter(log.read(0)))
    assert r.offset == first
    del r
    # unclean reopen (state lost) rebuilds from the compacted segments
    log.close()
    (tmp_path / "c" / "fastq.state").unlink()
    with fastq.Log(tmp_path / "c") as log2:
        assert _snapshot(log2) == after


def test_topic_maintain_compacts(tmp_path):
    with fastq.open(tmp_path / "b") as b:
        t = b.topic("kv", partitions=1, compact=True, segment_bytes=4096)
        for i in range(2000):
            t.publish(b"%d" % i, key=b"k%d" % (i % 10))
        t.log(0).roll()
        t.maintain()
        latest = {}
        for r in t.read(0):
            latest[bytes(r.key)] = int(bytes(r.value))
        del r
        assert latest == {b"k%d" % j: 1990 + j for j in range(10)}
        assert sum(1 for _ in t.read(0)) == 10
