"""fastq.Log API: appends, reads, segments, time lookups, retention, truncation, reopen,
configuration, zero-copy views and bad input."""
import json
import os
import random
import sys
import time

import pytest

from fastq import Log, open_log
from fastq.errors import (
    Closed, CorruptRecord, FastqError, InvalidArgument, LogNotFound, OffsetOutOfRange,
    RecordTooLarge,
)
from logutil import fast_dir, read_all, rec_tuple, seed_for  # noqa: F401
from fastq._core._storage import PRETOUCH_MIN_BYTES as PRETOUCH_MIN

SMALL = dict(segment_bytes=4096, max_record_bytes=1024)


def segment_files(path, ext=".log"):
    return sorted(n for n in os.listdir(path) if n.endswith(ext))


# -- appends and reads ------------------------------------------------------------------

def test_append_returns_dense_offsets(tmp_path):
    with Log(tmp_path) as log:
        assert (log.start_offset, log.end_offset, len(log)) == (0, 0, 0)
        assert log.append(b"a") == 0
        assert log.append_many([b"b", b"c", b"d"]) == 1
        assert log.append_batch([(b"e",), (b"f", b"k"), (b"g", None, [("h", b"1")], 7)]) == 4
        assert log.append(b"h") == 7
        assert (log.start_offset, log.end_offset, len(log)) == (0, 8, 8)
        assert [bytes(r.value) for r in log.read(0)] == [b"abcdefgh"[i:i + 1] for i in range(8)]
        assert [r.offset for r in log] == list(range(8))
        rec = log.get(5)
        assert (rec.offset, bytes(rec.key), bytes(rec.value)) == (5, b"k", b"f")
        del rec


def test_keys_and_values_none_empty_and_buffers(tmp_path):
    inputs = [None, b"", b"xyz", bytearray(b"ba"), memoryview(b"mv-bytes")[3:], b"\x00" * 300]
    with Log(tmp_path) as log:
        for v in inputs:
            for k in inputs:
                log.append(v, key=k)
        it = iter(log.read(0))
        for v in inputs:
            for k in inputs:
                r = next(it)
                assert (r.value is None) == (v is None)
                assert (r.key is None) == (k is None)
                if v is not None:
                    assert bytes(r.value) == bytes(v)
                if k is not None:
                    assert bytes(r.key) == bytes(k)
        del r, it
        # append_many / append_batch accept the same kinds
        first = log.append_many([bytearray(b"q"), memoryview(b"rs"), b"", None], key=bytearray(b"K"))
        assert [(_v and bytes(_v), bytes(_k)) for _v, _k in ((r.value, r.key) for r in log.read(first))] == \
            [(b"q", b"K"), (b"rs", b"K"), (b"", b"K"), (None, b"K")]
        first = log.append_batch([(None, None), (bytearray(b"x"), memoryview(b"y"))])
        got = [rec_tuple(r)[2:4] for r in log.read(first)]
        assert got == [(None, None), (b"y", b"x")]


def test_headers_list_and_dict(tmp_path):
    with Log(tmp_path) as log:
        log.append(b"v", headers=[("a", b"1"), ("a", b"2"), ("n\u00e4me", None), ("e", b"")])
        log.append(b"v", headers={"x": b"y", "z": None})
        log.append(b"v", headers=[(b"bytes-key", bytearray(b"bv"))])
        log.append(b"v", headers=[])
        log.append_many([b"1", b"2"], headers={"m": b"n"})
        log.append_batch([(b"b", None, [("p", b"q")]), (b"c", None, {"r": b"s"})])
        got = [r.headers for r in log.read(0)]
    assert got == [
        [("a", b"1"), ("a", b"2"), ("n\u00e4me", None), ("e", b"")],
        [("x", b"y"), ("z", None)],
        [("bytes-key", b"bv")],
        [],
        [("m", b"n")], [("m", b"n")],
        [("p", b"q")], [("r", b"s")],
    ]


def test_timestamps(tmp_path):
    # the whole range, far future included, once the ahead-of-the-clock limit is off
    # (its default refuses 2**62 - 1: see test_faults_cost.py)
    with Log(tmp_path, max_timestamp_ahead_ms=None) as log:
        before = int(time.time() * 1000)
        log.append(b"now")
        after = int(time.time() * 1000)
        log.append(b"t0", timestamp=0)
        log.append(b"big", timestamp=2**62 - 1)
        log.append_many([b"a", b"b", b"c"], timestamp=1234)
        log.append_batch([(b"x", None, None, 99), (b"y", None, None, 5), (b"z",)])
        recs = [r.timestamp for r in log.read(0)]
    assert before <= recs[0] <= after
    assert recs[1:8] == [0, 2**62 - 1, 1234, 1234, 1234, 99, 5]
    assert before <= recs[8] <= int(time.time() * 1000)


def test_read_with_end_and_out_of_range(tmp_path):
    with Log(tmp_path) as log:
        log.append_many([b"%d" % i for i in range(10)])
        assert [r.offset for r in log.read(2, 5)] == [2, 3, 4]
        assert [r.offset for r in log.read(3, 3)] == []
        assert [r.offset for r in log.read(8, 10**12)] == [8, 9]
        assert list(log.read(10)) == []
        it = log.read(0)                      # the end is fixed when the reader is made
        log.append(b"late")
        assert [r.offset for r in it] == list(range(10))
        with pytest.raises(OffsetOutOfRange, match=r"valid offsets are \[0, 11\]") as e:
            log.read(12)
        assert isinstance(e.value, IndexError) and isinstance(e.value, FastqError)
        with pytest.raises(OffsetOutOfRange, match=r"\[0, 11\]"):
            log.read(-1)
        with pytest.raises(OffsetOutOfRange, match=r"\[0, 11\)"):
            log.get(11)
        with pytest.raises(OffsetOutOfRange, match=r"\[0, 11\)"):
            log.get(-5)
        rd = log.read(4, 9)
        assert [r.offset for r in rd.read_many(3)] == [4, 5, 6]
        assert [r.offset for r in rd.read_many(100)] == [7, 8]
        assert rd.read_many(5) == []


def test_roll_many_small_segments_and_read_across(tmp_path):
    rng = random.Random(seed_for("roll"))
    expect = []
    with Log(tmp_path, **SMALL) as log:
        for i in range(600):
            v = rng.randbytes(rng.randrange(0, 200))
            expect.append((i, v))
            if i % 7 == 0:
                log.append_many([v])
            else:
                log.append(v, key=b"%d" % i, timestamp=i)
        segs = log.segments()
        assert len(segs) >= 15
        assert [s["base_offset"] for s in segs] == sorted(s["base_offset"] for s in segs)
        assert segs[0]["base_offset"] == 0 and not segs[-1]["sealed"]
        assert all(s["sealed"] and 0 < s["bytes"] <= 4096 for s in segs[:-1])
        assert len(segment_files(tmp_path)) == len(segs)
        assert [(r.offset, bytes(r.value)) for r in log.read(0)] == expect
        for start in [s["base_offset"] for s in segs] + rng.sample(range(600), 40):
            end = rng.randrange(start, 601)
            assert [(r.offset, bytes(r.value)) for r in log.read(start, end)] == expect[start:end]
            if start < 600:
                assert bytes(log.get(start).value) == expect[start][1]
        log.roll()
        log.roll()                                   # an empty active segment is not rolled again
        assert len(log.segments()) == len(segs) + 1
        assert log.append(b"after") == 600
    with Log(tmp_path) as log:
        assert [(r.offset, bytes(r.value)) for r in log.read(0)] == expect + [(600, b"after")]


@pytest.mark.parametrize("reopen", [False, True])
def test_offset_for_timestamp_matches_brute_force(tmp_path, reopen):
    rng = random.Random(seed_for("offset_for_timestamp"))
    ts_list = []
    with Log(tmp_path, **SMALL) as log:
        while len(ts_list) < 800:
            if rng.random() < 0.3:
                batch = [(rng.randbytes(rng.randrange(50)), None, None, rng.randrange(10_000))
                         for _ in range(rng.randrange(1, 6))]
                log.append_batch(batch)
                ts_list += [b[3] for b in batch]
            else:
                ts = rng.randrange(10_000)
                log.append(rng.randbytes(rng.randrange(120)), timestamp=ts)
                ts_list.append(ts)
        assert len(log.segments()) > 5
    with Log(tmp_path) as log:
        if not reopen:
            log.append(b"extra", timestamp=5000)
            ts_list.append(5000)
        queries = {-1, 0, 10_000, 10_001, 2**40}
        for t in rng.sample(ts_list, 150):
            queries |= {t - 1, t, t + 1}
        for q in sorted(queries):
            want = next((i for i, t in enumerate(ts_list) if t >= q), None)
            assert log.offset_for_timestamp(q) == want, q
        q = sorted(ts_list)[len(ts_list) // 2]
        want = next(i for i, t in enumerate(ts_list) if t >= q)
        assert [r.offset for r in log.read_from_timestamp(q, want + 3)] == [want, want + 1, want + 2]
        assert list(log.read_from_timestamp(2**41)) == []
        with pytest.raises(InvalidArgument):
            log.offset_for_timestamp("1")


# -- retention --------------------------------------------------------------------------

def fill_segments(log, n, per=20, size=150, ts=lambda i: i):
    """Append until the log has at least n segments. Returns the values."""
    values = []
    while len(log.segments()) < n:
        i = len(values)
        v = bytes([i % 251]) * size
        log.append(v, key=b"%d" % i, timestamp=ts(i))
        values.append(v)
    return values


def test_retention_by_bytes_keeps_readers_of_deleted_segments(tmp_path):
    with Log(tmp_path, **SMALL) as log:
        values = fill_segments(log, 12)
        segs = log.segments()
        # a Record and a value view from the first segment, an iterator in the middle
        # of the segment that will be the last one deleted
        first = log.get(0)
        first_value = first.value
        doomed_last = segs[-5]
        it = log.read(doomed_last["base_offset"] + 1)
        mid = next(it)
        mid_value = mid.value
        keep_bytes = sum(s["bytes"] for s in segs[-4:])
        log.retention_bytes = keep_bytes
        assert log.enforce_retention() == len(segs) - 4
        assert log.start_offset == segs[-4]["base_offset"]
        assert [s["base_offset"] for s in log.segments()] == [s["base_offset"] for s in segs[-4:]]
        for s in segs[:-4]:
            assert not os.path.exists(s["path"])
            assert not os.path.exists(s["path"][:-4] + ".index")
        # the held views and the iterator still read the deleted segments' mappings
        assert bytes(first_value) == values[0] and bytes(first.key) == b"0"
        assert bytes(mid_value) == values[mid.offset]
        rest = [(r.offset, bytes(r.value)) for r in it]
        assert rest == [(o, values[o]) for o in range(mid.offset + 1, len(values))]
        with pytest.raises(OffsetOutOfRange, match=rf"\[{log.start_offset}, {len(values)}\]"):
            log.read(0)
        with pytest.raises(OffsetOutOfRange):
            log.get(log.start_offset - 1)
        assert log.enforce_retention() == 0
        del first, first_value, mid, mid_value, it
        start = log.start_offset
    with Log(tmp_path) as log:          # the start offset survives a reopen
        assert log.start_offset == start
        assert [bytes(r.value) for r in log.read(start)] == values[start:]


def test_retention_seen_by_another_instance_holding_a_record(tmp_path):
    with Log(tmp_path, **SMALL) as a, Log(tmp_path) as b:
        values = fill_segments(a, 6)
        held = b.get(1)
        view = held.value
        a.retention_bytes = 0
        assert a.enforce_retention() == 5
        assert b.start_offset == a.start_offset > 1
        assert [s["base_offset"] for s in b.segments()] == [a.start_offset]
        assert bytes(view) == values[1]
        assert [bytes(r.value) for r in b.read(b.start_offset)] == values[b.start_offset:]
        del held, view


def test_retention_by_time(tmp_path):
    # segment i holds timestamps in [1000 * i, 1000 * i + 999]
    with Log(tmp_path, **SMALL) as log:
        values = []
        for seg in range(10):
            for j in range(15):
                values.append(b"%d" % seg * 100)
                log.append(values[-1], timestamp=1000 * seg + j)
            log.roll()
        log.append(b"active", timestamp=0)
        assert log.enforce_retention(now_ms=10**9) == 0      # no retention configured
        log.retention_ms = 5000
        assert log.enforce_retention(now_ms=5000) == 0          # nothing older than 0
        assert log.enforce_retention(now_ms=10_500) == 6        # max ts < 5500: segments 0..5
        assert log.start_offset == 6 * 15
        assert log.enforce_retention(now_ms=10_500) == 0
        assert log.enforce_retention(now_ms=10_514) == 0        # segment 6's max ts is 6014
        assert log.enforce_retention(now_ms=11_015) == 1
        assert log.enforce_retention(now_ms=10**12) == 3        # every sealed segment
        assert len(log.segments()) == 1 and log.start_offset == 150
        assert [bytes(r.value) for r in log.read(log.start_offset)] == [b"active"]


def test_retention_on_roll(tmp_path):
    with Log(tmp_path, retention_bytes=3 * 4096, **SMALL) as log:
        for i in range(1000):
            log.append(b"x" * 100)
        segs = log.segments()
        assert len(segs) <= 4 and sum(s["bytes"] for s in segs) <= 4 * 4096
        assert log.start_offset == segs[0]["base_offset"] > 0
        assert len(list(log.read(log.start_offset))) == 1000 - log.start_offset
        assert len(segment_files(tmp_path)) == len(segs)


# -- truncation -------------------------------------------------------------------------

def test_truncate(tmp_path):
    with Log(tmp_path, **SMALL) as log:
        firsts = [log.append_many([b"%d-%d" % (i, j) for j in range(3)]) for i in range(300)]
        nseg = len(log.segments())
        assert nseg > 5
        with pytest.raises(InvalidArgument, match="batch boundary"):
            log.truncate(firsts[250] + 1)
        with pytest.raises(OffsetOutOfRange, match=r"\[0, 900\]"):
            log.truncate(901)
        log.truncate(900)                    # no-op at the end
        log.truncate(firsts[280])
        assert log.end_offset == firsts[280]
        assert log.append(b"new") == firsts[280]
        assert bytes(log.get(firsts[280]).value) == b"new"
        # truncating into an earlier segment drops the later segments' files
        log.truncate(firsts[20])
        assert log.end_offset == firsts[20]
        assert len(log.segments()) < nseg
        assert len(segment_files(tmp_path)) == len(log.segments())
        log.append_many([b"a", b"b"])
        # a view into the range being removed blocks truncation
        held = log.get(firsts[20] + 1).value
        with pytest.raises(BufferError):
            log.truncate(firsts[20])
        del held
        log.truncate(firsts[20])
        log.truncate(0)
        assert (log.start_offset, log.end_offset) == (0, 0)
        assert list(log.read(0)) == []
        log.append(b"fresh")
    with Log(tmp_path) as log:
        assert read_all(log)[0][3] == b"fresh" and log.end_offset == 1


# -- reopen and configuration -----------------------------------------------------------

def test_reopen_keeps_everything(tmp_path):
    rng = random.Random(seed_for("reopen"))
    with Log(tmp_path, **SMALL) as log:
        for i in range(300):
            log.append(rng.randbytes(rng.randrange(300)), key=rng.choice([None, b"k%d" % i]),
                       headers=[("i", b"%d" % i)], timestamp=rng.randrange(10**12))
            if i % 50 == 0:
                log.append_many([b"m"] * 5)
        before, segs = read_all(log), log.segments()
    for durability in ("os", "group", "always"):
        with Log(tmp_path, durability=durability) as log:
            assert read_all(log) == before
            assert log.segments() == segs
            assert log.durability == durability


def test_config_persisted_and_format_fixed(tmp_path):
    with Log(tmp_path, durability="group", segment_bytes=8192, max_record_bytes=2048,
             index_interval=128, retention_bytes=10**6) as log:
        log.append(b"x")
    cfg = json.loads((tmp_path / "log.json").read_text())
    assert cfg["segment_bytes"] == 8192 and cfg["max_record_bytes"] == 2048
    assert cfg["index_interval"] == 128 and cfg["durability"] == "group"
    assert cfg["retention_bytes"] == 10**6
    with Log(tmp_path, segment_bytes=4096, max_record_bytes=1 << 20, index_interval=4096) as log:
        assert (log.segment_bytes, log.max_record_bytes, log.index_interval) == (8192, 2048, 128)
        assert log.durability == "group"               # default comes from log.json
        with pytest.raises(RecordTooLarge):
            log.append(b"x" * 4000)
    with Log(tmp_path, durability="always", retention_bytes=5) as log:   # per-open settings
        assert log.durability == "always" and log.retention_bytes == 5


def test_open_log_and_create_false(tmp_path):
    with pytest.raises(LogNotFound) as e:
        Log(tmp_path / "missing", create=False)
    assert isinstance(e.value, FileNotFoundError)
    with open_log(tmp_path / "made") as log:
        log.append(b"1")
    with Log(str(tmp_path / "made"), create=False) as log:
        assert len(log) == 1 and "made" in repr(log)
    assert "closed" in repr(log)


# -- zero-copy views and closing --------------------------------------------------------

def test_views_are_readonly_zero_copy_and_pin_the_log(tmp_path):
    log = Log(tmp_path)
    log.append(b"value", key=b"key")
    rec = log.get(0)
    v = rec.value
    assert isinstance(v, memoryview) and v.readonly and v.tobytes() == b"value"
    with pytest.raises(TypeError):
        v[0] = 1
    k = rec.key
    with pytest.raises(BufferError, match="view"):
        log.close()
    assert not log.closed
    assert log.append(b"still open") == 1           # a refused close leaves the log usable
    del v
    with pytest.raises(BufferError):
        log.close()
    del k
    log.close()                                      # a Record alone does not pin
    assert log.closed
    log.close()                                      # idempotent
    with pytest.raises(Closed):
        rec.value
    with pytest.raises(Closed):
        log.append(b"x")
    with pytest.raises(Closed):
        log.read(0)
    with pytest.raises(Closed):
        log.end_offset
    del rec


def test_bytes_copy_does_not_pin(tmp_path):
    with Log(tmp_path) as log:
        log.append(b"abc")
        copies = [bytes(r.value) for r in log.read(0)]
    assert copies == [b"abc"]


# -- bad input --------------------------------------------------------------------------

def test_bad_appends(tmp_path):
    with Log(tmp_path, **SMALL) as log:
        for call in (lambda: log.append(b"x" * 2000), lambda: log.append(b"v", key=b"k" * 2000),
                     lambda: log.append_batch([(b"x" * 2000,)]),
                     lambda: log.append(b"v", headers=[("h", b"x" * 2000)])):
            with pytest.raises(RecordTooLarge, match="max_record_bytes=1024") as e:
                call()
            assert isinstance(e.value, ValueError)
        # many small values over the limit are split into several batches, densely
        first = log.append_many([b"%04d" % i + b"." * 96 for i in range(40)])
        assert [bytes(r.value)[:4] for r in log.read(first)] == [b"%04d" % i for i in range(40)]
        cases = [
            lambda: log.append("str value"),
            lambda: log.append(b"v", key="str key"),
            lambda: log.append(123),
            lambda: log.append(b"v", headers=[("k", "str")]),
            lambda: log.append(b"v", headers=[(1, b"x")]),
            lambda: log.append(b"v", headers=[("k",)]),
            lambda: log.append(b"v", headers=[["k", b"v"]]),
            lambda: log.append(b"v", headers=5),
            lambda: log.append(b"v", headers="ab"),
            lambda: log.append(b"v", timestamp=-1),
            lambda: log.append(b"v", timestamp=1.5),
            lambda: log.append(b"v", timestamp="1"),
            lambda: log.append(b"v", timestamp=True),
            lambda: log.append(b"v", timestamp=2**62),
            lambda: log.append_many([]),
            lambda: log.append_many(5),
            lambda: log.append_many([b"a", "b"]),
            lambda: log.append_batch([]),
            lambda: log.append_batch([b"not a tuple"]),
            lambda: log.append_batch([(b"v", None, None, -5)]),
            lambda: log.append_batch([(b"a", b"b", None, 1, "extra")]),
        ]
        end = log.end_offset
        for i, call in enumerate(cases):
            with pytest.raises(InvalidArgument) as e:
                call()
            assert isinstance(e.value, ValueError), i
        assert log.end_offset == end                      # nothing half-appended
        assert log.append(b"ok") == end


@pytest.mark.parametrize("kwargs", [
    dict(durability="bogus"), dict(segment_bytes=100), dict(segment_bytes=1 << 40),
    dict(segment_bytes="4096"), dict(segment_bytes=True), dict(max_record_bytes=10),
    dict(index_interval=0), dict(retention_bytes=-1), dict(retention_ms=-5),
])
def test_bad_options(tmp_path, kwargs):
    with pytest.raises(InvalidArgument):
        Log(tmp_path / "log", **kwargs)
    assert not os.path.exists(tmp_path / "log" / "log.json")   # nothing half-created


def test_path_is_a_file(tmp_path):
    p = tmp_path / "file"
    p.write_bytes(b"")
    with pytest.raises(InvalidArgument, match="not a directory"):
        Log(p)


def corrupt_cases():
    return {
        "foreign .log": ("abc.log", b"hello"),
        "foreign .index": ("1.index", b""),
        "short state": ("fastq.state", b"\x07" * 100),
        "junk state": ("fastq.state", bytes(range(256)) * 16),
        "junk config": ("log.json", b"{not json"),
        "config not a dict": ("log.json", b"[1, 2]"),
        "config wrong version": ("log.json", b'{"version": 99}'),
        "config wrong type": ("log.json", b'{"version": 1, "segment_bytes": "big"}'),
    }


@pytest.mark.parametrize("case", sorted(corrupt_cases()))
@pytest.mark.parametrize("existing", [False, True])
def test_foreign_or_truncated_files(tmp_path, case, existing):
    name, content = corrupt_cases()[case]
    if existing:
        with Log(tmp_path) as log:
            log.append(b"data")
    (tmp_path / name).write_bytes(content)
    exc = InvalidArgument if case == "config wrong type" else CorruptRecord
    with pytest.raises(exc) as e:
        Log(tmp_path)
    assert isinstance(e.value, FastqError) and isinstance(e.value, ValueError)
    if exc is CorruptRecord:
        assert name in str(e.value) or name in (e.value.path or "")


def test_error_classes():
    from fastq import errors
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.FastqError)
    assert issubclass(errors.CorruptRecord, ValueError)
    assert issubclass(errors.OffsetOutOfRange, IndexError)
    assert issubclass(errors.StorageError, OSError)


def _minor_faults():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the pretoucher uses MADV_POPULATE_WRITE, which only Linux has; "
                           "elsewhere there is no pretoucher and appends fault their own pages")
def test_pretoucher_keeps_page_faults_off_the_append_path(tmp_path):
    """Writing into a fresh page of a file mapping is a page fault (ext4's page_mkwrite,
    a fresh page): ~45 µs on a VM, once per 4 KiB, which is what the append that
    crosses the page boundary pays. The log's pretoucher thread populates the mapping
    ahead of the writer, so appends at a paced rate take (almost) no faults. (The
    thread itself faults, but getrusage counts a process's faults, so the appends run
    in a thread-free stretch: each waits until the pretoucher is idle.)"""
    with Log(tmp_path / "l", segment_bytes=8 << 20) as lg:
        lg.append(b"x" * 100)
        pages = 0
        faults = 0
        for _ in range(400):            # ~2 pages per step, under half the 32 KiB lookahead
            deadline = time.monotonic() + 5
            while lg._active.pf_requested and time.monotonic() < deadline:
                time.sleep(0.001)
            before = _minor_faults()
            for _ in range(50):
                lg.append(b"x" * 100)
            faults += _minor_faults() - before
            pages += 50 * 170 // 4096
        deadline = time.monotonic() + 5
        while lg._active.pf_requested and time.monotonic() < deadline:
            time.sleep(0.001)
        assert lg._active.populated >= lg.snapshot()["end_pos"]
        assert lg.pretouch_window == PRETOUCH_MIN     # a writer it keeps up with: no wider
    # without pretouching this is ~1 fault per page written (800 here)
    assert faults < pages // 10, f"{faults} page faults for ~{pages} pages appended"


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the pretoucher uses MADV_POPULATE_WRITE, which only Linux has; "
                           "elsewhere there is no pretoucher and appends fault their own pages")
def test_pretouch_window_widens_for_a_writer_that_outruns_it(tmp_path):
    """The pretoucher thread needs the GIL to pick a request up and again to report it
    done, so a writer holding the GIL in a tight loop writes on meanwhile. A writer that
    asks again and finds itself past the populated end gets a window twice as wide (at
    most 16 MiB); one the pretoucher keeps up with keeps 32 KiB. The pretoucher is
    replaced here by a queue the test serves, so who is ahead is decided, not raced."""
    with Log(tmp_path / "l", segment_bytes=256 << 20) as lg:
        asked = []
        lg._pretouch = lambda seg, upto: asked.append((seg, upto))

        def serve():                           # the pretoucher's work, done now
            seg, upto = asked.pop()
            seg.prefault(upto)
            seg.pf_requested = False
            return seg.populated                 # upto, rounded down to a page

        rec = b"z" * 4000                      # ~4 KiB per append
        lg.append(rec)
        assert lg.pretouch_window == PRETOUCH_MIN and len(asked) == 1
        populated = serve()
        while not asked:                       # kept up with: the writer asks again when
            lg.append(rec)                     # half a window is left, window unchanged
        assert lg.snapshot()["end_pos"] + PRETOUCH_MIN // 2 > populated
        assert lg.pretouch_window == PRETOUCH_MIN
        serve()
        for want in [PRETOUCH_MIN << k for k in range(1, 10)] + [16 << 20]:   # 64 KiB .. 16 MiB
            while not asked:
                lg.append(rec)
            upto = asked[0][1]
            while lg.snapshot()["end_pos"] <= upto:    # not served: the writer runs past it
                lg.append(rec)
            assert len(asked) == 1             # one request at a time
            serve()                            # reported late
            lg.append(rec)                     # so the next request widens the window
            assert lg.pretouch_window == want and len(asked) == 1
            assert asked[0][1] == lg.snapshot()["end_pos"] + want
            assert lg._active.alloc_size >= asked[0][1]
            serve()
        n = lg.end_offset
    with Log(tmp_path / "l") as lg:
        assert lg.end_offset == n
        assert all(len(r.value) == 4000 for r in lg.read(0))


def test_pretoucher_and_close_race(tmp_path):
    """Closing (or rolling past) a segment while the pretoucher populates it waits for
    that, never unmaps under it."""
    for i in range(20):
        with Log(tmp_path / f"l{i}", segment_bytes=1 << 20) as lg:
            for _ in range(3000):           # rolls every ~6,000 records... and closes mid-pretouch
                lg.append(b"y" * 300)
        with Log(tmp_path / f"l{i}") as lg:
            assert lg.end_offset == 3000


def test_a_closed_log_raises_closed_for_its_state(tmp_path):
    """Every property and call that reads the shared state raises Closed after close
    (recovery_point read the unmapped state and crashed the process)."""
    lg = Log(tmp_path / "l")
    lg.append(b"x")
    lg.close()
    for name in ("recovery_point", "start_offset", "end_offset"):
        with pytest.raises(Closed):
            getattr(lg, name)
    for call in (lg.snapshot, lg.flush, lambda: lg.append(b"y"), lambda: lg.read(0),
                 lambda: lg.get(0), lambda: lg.wait(0, timeout=0)):
        with pytest.raises(Closed):
            call()


def test_a_reader_of_a_closed_log_raises_closed(tmp_path):
    """A LogReader kept past close (inside a batch, or between two) raises Closed; it
    used to read on from the unmapped segment and crash the process."""
    lg = Log(tmp_path / "l")
    lg.append_many([b"a", b"b", b"c"])
    lg.append(b"d")
    inside, between = lg.read(0), lg.read(0)
    assert bytes(next(inside).value) == b"a"         # 2 records left in this batch
    assert between.read_values(3) == [b"a", b"b", b"c"]
    lg.close()
    with pytest.raises(Closed):
        next(inside)
    with pytest.raises(Closed):
        inside.read_values(5)
    with pytest.raises(Closed):
        between.read_values(5)


def test_pacer_learns_the_gap_and_misses_nothing(tmp_path):
    """A reader waiting with a Pacer on a log written every ~2 ms: every record is
    seen (a paced wait that sleeps until just before the expected arrival still wakes
    for an early one, and falls back to the futex for a late one), the learned gap is
    about the writer's, and most arrivals land in the spin window."""
    import threading
    from fastq import Pacer
    n, gap_s = 300, 0.002
    with Log(tmp_path / "l") as lg:
        def writer():
            for i in range(n):
                time.sleep(gap_s)
                lg.append(b"%d" % i)
        th = threading.Thread(target=writer)
        pacer = Pacer(margin_us=200)
        th.start()
        got = []
        off = 0
        while off < n:
            assert lg.wait(off, timeout=5, pacer=pacer), f"record {off} never came"
            while off < lg.end_offset:
                got.append(bytes(lg.get(off).value))
                off += 1
        th.join()
        assert got == [b"%d" % i for i in range(n)]
        # sleep(0.002) is 2 ms or more: the moving average must be close to that
        assert 1500 < pacer.gap_us < 4000, pacer
        assert pacer.stats["early"] + pacer.stats["late"] > n // 2, pacer
        assert pacer.stats["early"] > pacer.stats["late"], pacer
        # an idle log: a paced wait still ends at its timeout
        t0 = time.monotonic()
        assert not lg.wait(off, timeout=0.05, pacer=pacer)
        assert 0.04 < time.monotonic() - t0 < 1.0
        pacer.reset()
        assert pacer.gap_us is None and pacer.stats == {"early": 0, "late": 0, "woken": 0}


def _paced_reads(tmp_path, schedule_ms, margin_us, observe):
    """A thread appends record i at schedule_ms[i] (ms after the start); this thread
    waits for each with one Pacer(margin_us) and collects observe(pacer) after each."""
    import threading
    from fastq import Pacer
    with Log(tmp_path / "l") as lg:
        t0 = time.monotonic()

        def writer():
            for i, at in enumerate(schedule_ms):
                time.sleep(max(0.0, t0 + at / 1000 - time.monotonic()))
                lg.append(b"%d" % i)
        th = threading.Thread(target=writer)
        pacer = Pacer(margin_us=margin_us)
        th.start()
        out = []
        for off in range(len(schedule_ms)):
            assert lg.wait(off, timeout=2, pacer=pacer), f"record {off} never came"
            out.append(observe(pacer))
        th.join()
    return out


def test_pacer_reanchors_after_an_arrival_seen_late(tmp_path):
    """An arrival that comes while a Pacer sleeps (before its spin window) wakes it
    through the futex, so it is seen a wake-up late, and the next expected arrival is
    reckoned from that late moment. On a busy VM a wake-up often takes longer than the
    margin, and the pacer used to sleep past every following arrival the same way. Now
    the window after an arrival seen late opens early (half a gap, at most 8 margins,
    before the expected arrival), so the next record is caught while spinning and
    anchors the pace again. Here, with a 5 ms margin and a 100 ms writer: one record
    comes 50 ms early (it wakes the pacer), and the next 70 ms after it, ~24 ms before
    the expected arrival: inside the early-opened window (caught spinning), but ~19 ms
    before a plain window would open (it would wake the pacer again).

    A spinning thread on a starved CPU can be descheduled past the arrival (seen at
    pytest -n 6 beside two busy loops on 2 cores), so the schedule gets three tries; the
    old pacer, whose window opened ~19 ms after that arrival, is woken in every one."""
    tries = []
    for attempt in range(3):
        seen = _paced_reads(tmp_path / f"try{attempt}", [100 * k for k in range(1, 11)] + [1050, 1120],
                            5000, lambda pacer: dict(pacer.stats))
        before, early, after = seen[9], seen[10], seen[11]
        assert early == {**before, "early": before["early"] + 1, "woken": before["woken"] + 1}, seen
        tries.append(seen)
        if after == {**early, "early": early["early"] + 1}:
            return
    raise AssertionError(f"the record after the late one was never caught spinning: {tries}")


def test_pacer_gap_ignores_a_stall(tmp_path):
    """The learned gap is the median of the last 8: one stall of 5 periods (a writer
    that paused, or a record the reader found already there) leaves it at the beat.
    A moving average with 1/8 weight moved it by half a period and kept the next
    windows off for several records."""
    gaps = _paced_reads(tmp_path, [20 * k for k in range(1, 11)] + [300, 320], 3000,
                        lambda pacer: pacer.gap_us)
    assert 15_000 < gaps[9] < 25_000, gaps       # the beat
    assert 15_000 < gaps[10] < 25_000, gaps      # after the 100 ms gap: still the beat
    assert 15_000 < gaps[11] < 25_000, gaps


@pytest.mark.parametrize("margin", [0, -1, 1e9, float("nan")])
def test_pacer_bad_margin(margin):
    from fastq import Pacer
    with pytest.raises(InvalidArgument):
        Pacer(margin_us=margin)


def test_roll_by_age(tmp_path):
    """segment_ms: an append to a segment older than that rolls first (the age is read
    from a coarse clock, at the kernel tick's resolution)."""
    with Log(tmp_path / "l", segment_ms=100) as lg:
        lg.append(b"a")
        lg.append(b"b")
        assert len(lg.segments()) == 1
        time.sleep(0.25)
        lg.append(b"c")
        segs = lg.segments()
        assert [s["base_offset"] for s in segs] == [0, 2]
        assert [bytes(r.value) for r in lg.read(0)] == [b"a", b"b", b"c"]


def test_paced_wait_keeps_its_timeout_when_the_learned_gap_is_longer(tmp_path):
    """A Pacer that learned an ~80 ms gap sleeps toward the next expected arrival, but a
    wait with a shorter timeout (20 ms) still ends at that timeout, not at the arrival."""
    import threading
    from fastq import Pacer
    with Log(tmp_path / "l") as lg:
        def writer():
            for _ in range(5):
                time.sleep(0.08)
                lg.append(b"x")
        th = threading.Thread(target=writer)
        pacer = Pacer()
        th.start()
        for off in range(5):                # each record arrives while we wait for it
            assert lg.wait(off, timeout=2, pacer=pacer)
        th.join()
        assert pacer.gap_us is not None and pacer.gap_us > 60_000, pacer
        t0 = time.monotonic()
        assert not lg.wait(5, timeout=0.02, pacer=pacer)
        took = time.monotonic() - t0
        assert 0.015 < took < 0.05, f"a 20 ms wait took {took * 1000:.1f} ms"


def test_a_large_append_is_split_greedily(tmp_path):
    """An append_many larger than max_record_bytes becomes batches that each hold as
    many records as fit (the split used to halve and re-measure: quadratic in the
    records of a large append), all published by one commit."""
    import struct
    vals = [bytes([65 + i % 26]) * (50 + (i * 37) % 300) for i in range(3000)]
    with Log(tmp_path / "l", max_record_bytes=4096, segment_bytes=8 << 20) as lg:
        first = lg.append_many(vals)
        assert first == 0 and lg.end_offset == len(vals)
        assert [bytes(r.value) for r in lg.read(0)] == vals
        end = lg.snapshot()["end_pos"]
        with open(lg._active.path, "rb") as f:
            data = f.read(end)
    pos, counts, sizes = 0, [], []
    while pos < len(data):
        base, length = struct.unpack_from(">qi", data, pos)
        assert base == sum(counts)                       # dense, in order
        sizes.append(12 + length)
        counts.append(struct.unpack_from(">i", data, pos + 57)[0])
        pos += 12 + length
    assert sum(counts) == len(vals)
    assert max(sizes) <= 4096
    # greedy: every batch but the last was full up to less than one more record
    # (the largest record here encodes in < 360 bytes)
    assert all(s > 4096 - 360 for s in sizes[:-1]), sizes


def test_a_reader_refresh_cannot_leave_the_writer_a_view_older_than_a_roll(tmp_path):
    """A thread that sees a new generation rebuilds the segment list (``_refresh``)
    without the writer lock. When it read the shared state before another thread's
    roll and finished after it, it left the previous segment as the active one, and the
    append in progress wrote its batch at position 0 of the previous segment's file,
    over its first records (found 2026-11-28 with publish, producer and poll threads on
    one topic). The interleaving is forced: the refresh pauses after listing the
    segments until the writer, past its roll, asks the pretoucher for the new segment."""
    import threading
    with Log(tmp_path, segment_bytes=4096, max_record_bytes=1024) as log:
        values = [b"%03d" % i + b"v" * 300 for i in range(11)]
        for v in values[:10]:
            log.append(v)                        # ~3.7 KB: the 11th append rolls
        assert len(log.segments()) == 1
        paused, in_append, refreshed = threading.Event(), threading.Event(), threading.Event()
        list_bases = log._segment_bases

        def paused_bases():
            out = list_bases()
            paused.set()
            in_append.wait(1.0)                  # with the fix the roll waits for us instead
            return out

        def refresh():
            try:
                log._refresh()
            finally:
                refreshed.set()

        log._segment_bases = paused_bases
        th = threading.Thread(target=refresh)
        th.start()
        assert paused.wait(5)
        log._segment_bases = list_bases
        pretouch = log._pretouch

        def pretouch_after_refresh(seg, upto):
            in_append.set()
            refreshed.wait(1.0)
            if pretouch is not None:
                pretouch(seg, upto)

        log._pretouch = pretouch_after_refresh
        assert log.append(values[10]) == 10
        th.join()
        log._pretouch = pretouch
        assert in_append.is_set()                # the interleaving happened as intended
        assert len(log.segments()) == 2
        assert [(r[0], r[3]) for r in read_all(log)] == list(enumerate(values))
