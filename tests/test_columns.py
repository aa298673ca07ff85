"""Log.read_columns / Topic.read_columns: records as numpy columns in Arrow's layout,
checked record by record against Log.read."""
import os
import random
import struct
import subprocess
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastq
from fastq import Log
from fastq._core._codec import crc32c
from fastq.errors import CorruptRecord, FastqError, InvalidArgument, MissingDependency, OffsetOutOfRange
from fastq.log import columns as columns_mod
from logutil import seed_for

np = pytest.importorskip("numpy", reason="read_columns needs numpy (the fastq-broker[numpy] extra)")

SMALL = dict(segment_bytes=4096, max_record_bytes=1024)


def rows_of(c):
    """read_columns' result as (offset, timestamp, key, value) tuples."""
    return [(int(c.offsets[i]), int(c.timestamps[i]), c.key(i), c.value(i)) for i in range(len(c))]


def rows_read(log, offset=0, end=None, n=None):
    out = []
    for r in log.read(offset, end):
        if n is not None and len(out) >= n:
            break
        out.append((r.offset, r.timestamp, None if r.key is None else bytes(r.key),
                    None if r.value is None else bytes(r.value)))
    return out


def check_layout(c):
    """Arrow's invariants: n + 1 monotone offsets from 0 to the buffer length, the
    dtypes, and empty slices for nulls."""
    n = len(c)
    assert c.offsets.dtype == np.int64 and c.timestamps.dtype == np.int64
    assert c.values.dtype == np.uint8 and c.keys.dtype == np.uint8
    assert c.value_offsets.dtype == np.int64 and c.key_offsets.dtype == np.int64
    assert c.value_valid.dtype == np.bool_ and c.key_valid.dtype == np.bool_
    for offs, buf, valid in ((c.value_offsets, c.values, c.value_valid),
                             (c.key_offsets, c.keys, c.key_valid)):
        assert len(offs) == n + 1 and offs[0] == 0 and offs[-1] == len(buf)
        assert (np.diff(offs) >= 0).all()
        assert (np.diff(offs)[~valid] == 0).all()
    assert c.values.flags["C_CONTIGUOUS"] and c.keys.flags["C_CONTIGUOUS"]


def random_records(rng, n):
    out = []
    for _ in range(n):
        v = None if rng.random() < 0.1 else rng.randbytes(rng.choice((0, 1, 7, 50, 300, 900)))
        k = None if rng.random() < 0.3 else rng.randbytes(rng.choice((0, 3, 40)))
        out.append((v, k, None, rng.randrange(1, 2**40)))
    return out


def test_read_columns_equals_read_record_by_record_random_batches(tmp_path):
    rng = random.Random(seed_for("read_columns_random"))
    with Log(tmp_path, **SMALL) as log:
        for _ in range(rng.randrange(5, 40)):
            log.append_batch(random_records(rng, rng.randrange(1, 12)))
        assert len(log.segments()) > 1
        end = log.end_offset
        for _ in range(30):
            off = rng.randrange(0, end + 1)
            n = rng.randrange(0, end + 5)
            c = log.read_columns(off, n)
            check_layout(c)
            want = rows_read(log, off, n=n)
            assert rows_of(c) == want
            if len(want) < n:                     # stopped at the log end
                assert c.next_offset == end
            elif want:
                assert c.next_offset == want[-1][0] + 1
            else:
                assert c.next_offset == off
        # a whole drain in steps, continuing from next_offset, equals one read
        got, off = [], 0
        while off < end:
            c = log.read_columns(off, rng.randrange(1, 20))
            got += rows_of(c)
            off = c.next_offset
        assert got == rows_read(log)


FIELD = st.one_of(st.none(), st.binary(max_size=700))
BATCHES = st.lists(st.lists(st.tuples(FIELD, st.one_of(st.none(), st.binary(max_size=40))),
                            min_size=1, max_size=8), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=BATCHES, start=st.integers(0, 120), n=st.integers(0, 130))
def test_read_columns_agrees_with_read_hypothesis(batches, start, n):
    with tempfile.TemporaryDirectory() as d, Log(d, **SMALL) as log:
        for b in batches:
            log.append_batch(b)
        start = min(start, log.end_offset)
        c = log.read_columns(start, n)
        check_layout(c)
        assert rows_of(c) == rows_read(log, start, n=n)


def test_read_columns_null_keys_and_empty_values(tmp_path):
    with Log(tmp_path) as log:
        log.append_batch([(b"", None), (None, b"k"), (b"v", b""), (None, None), (b"", b"")])
        c = log.read_columns(0)
        check_layout(c)
        assert c.value_valid.tolist() == [True, False, True, False, True]
        assert c.key_valid.tolist() == [False, True, True, False, True]
        assert c.value_offsets.tolist() == [0, 0, 0, 1, 1, 1]
        assert c.key_offsets.tolist() == [0, 0, 1, 1, 1, 1]
        assert rows_of(c) == rows_read(log)


def test_read_columns_across_segment_boundaries_and_buffer_growth(tmp_path):
    """Many segments, and values far larger than the first buffer guess (64 B a row),
    so the fill stops for room and resumes mid-batch."""
    with Log(tmp_path, segment_bytes=8192, max_record_bytes=4096) as log:
        for i in range(40):
            log.append_batch([(bytes([i]) * (3000 if j % 2 else 5), b"key%d" % j) for j in range(3)])
        assert len([f for f in os.listdir(tmp_path) if f.endswith(".log")]) > 5
        c = log.read_columns(0, 1000)
        check_layout(c)
        assert len(c) == 120 and c.next_offset == 120
        assert rows_of(c) == rows_read(log)
        c = log.read_columns(7, 50)
        assert rows_of(c) == rows_read(log, 7, n=50) and c.next_offset == 57


def test_read_columns_offset_past_end_and_below_start_raise_like_read(tmp_path):
    with Log(tmp_path, **SMALL) as log:
        for i in range(30):
            log.append_many([b"x" * 200] * 3)
        log.retention_bytes = 0
        assert log.enforce_retention() > 0
        lo, hi = log.start_offset, log.end_offset
        assert lo > 0
        for bad in (hi + 1, lo - 1, 0):
            with pytest.raises(FastqError) as want:
                log.read(bad)
            with pytest.raises(type(want.value)):
                log.read_columns(bad)
        with pytest.raises(OffsetOutOfRange):
            log.read_columns(hi + 1)
        with pytest.raises(OffsetOutOfRange):
            log.read_columns(lo - 1)
        with pytest.raises(OffsetOutOfRange):
            log.read_columns(-1)
        assert rows_of(log.read_columns(lo)) == rows_read(log, lo)
        c = log.read_columns(hi)                 # at the end: empty, not an error
        assert len(c) == 0 and c.next_offset == hi and len(c.value_offsets) == 1
        check_layout(c)


def test_read_columns_max_records_bounds(tmp_path):
    with Log(tmp_path) as log:
        log.append_many([b"a", b"b", b"c"])
        assert len(log.read_columns(0, 0)) == 0 and log.read_columns(0, 0).next_offset == 0
        assert [c for c in rows_of(log.read_columns(0, 2))] == rows_read(log, n=2)
        assert len(log.read_columns(0, 2**70)) == 3         # past int64: no limit
        for bad in (-1, 1.5, True, "3", None):
            with pytest.raises(InvalidArgument):
                log.read_columns(0, bad)
        assert len(log.read_columns(1, 10, end=2)) == 1


def test_read_columns_compressed_batch_raises_corrupt_record_like_read(tmp_path):
    """fastq stores uncompressed batches only: a batch whose attributes say compressed
    (CRC refreshed, so only the codec bits are wrong) is refused by both reads."""
    with Log(tmp_path) as log:
        log.append_many([b"a", b"b"])
    seg = os.path.join(tmp_path, "%020d.log" % 0)
    with open(seg, "r+b") as f:
        head = bytearray(f.read(61))
        size = struct.unpack_from(">i", head, 8)[0] + 12
        f.seek(0)
        buf = bytearray(f.read(size))
        struct.pack_into(">h", buf, 21, 1)                  # gzip
        struct.pack_into(">I", buf, 17, crc32c(bytes(buf[21:])))
        f.seek(0)
        f.write(buf)
    with Log(tmp_path) as log:
        with pytest.raises(CorruptRecord, match="compressed"):
            list(log.read(0))
        with pytest.raises(CorruptRecord, match="compressed"):
            log.read_columns(0)


def test_read_columns_without_numpy_raises_missing_dependency(tmp_path, monkeypatch):
    monkeypatch.setattr(columns_mod, "np", None)
    monkeypatch.setitem(sys.modules, "numpy", None)      # `import numpy` raises ImportError
    with Log(tmp_path) as log:
        log.append(b"a")
        with pytest.raises(MissingDependency, match=r"pip install fastq-broker\[numpy\]") as ei:
            log.read_columns(0)
    assert isinstance(ei.value, FastqError) and isinstance(ei.value, ImportError)
    assert "MissingDependency" in fastq.errors.__all__


def test_import_fastq_does_not_import_numpy():
    """numpy is imported by the first read_columns, not by `import fastq`."""
    code = ("import sys, fastq; assert 'numpy' not in sys.modules, 'imported'; "
            "import tempfile; d = tempfile.mkdtemp(); log = fastq.Log(d); log.append(b'x'); "
            "assert log.read_columns(0).offsets.tolist() == [0]; assert 'numpy' in sys.modules; log.close()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_read_columns_does_not_pin_the_segment(tmp_path):
    """The columns are copies: closing the log while they are alive works and they
    stay readable."""
    log = Log(tmp_path)
    log.append_many([b"abc", b"de"])
    c = log.read_columns(0)
    log.close()
    assert c.value(0) == b"abc" and c.value(1) == b"de"


def test_topic_read_columns(tmp_path):
    with fastq.open(tmp_path / "broker") as b:
        t = b.topic("t", partitions=2)
        for i in range(20):
            t.publish(b"v%d" % i, key=b"k%d" % i)
        for p in range(2):
            lg = t.log(p)
            c = t.read_columns(p)
            assert rows_of(c) == rows_read(lg) and c.next_offset == lg.end_offset
            c = t.read_columns(p, 1, max_records=2)
            assert rows_of(c) == rows_read(lg, 1, n=2)
        with pytest.raises(FastqError):
            t.read_columns(5)
