"""What a topic really costs (fastq issue 12): disk, file descriptors and memory of
small topics, preallocation that grows with the data (and still fails as DiskFull, never
as a SIGBUS), and timestamps far in the future, which used to pin time retention.

The bounds asserted here come from the sizes in fastq._core._storage: a segment's first
preallocation (SEGMENT_FIRST_CHUNK, 64 KiB) doubling up to the grow chunk, index files of one
page while that covers the data, a pretouch window starting at PRETOUCH_MIN_BYTES (32 KiB).
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest

import fastq
from fastq import Log
from fastq._core import _storage
from fastq.errors import DiskFull, InvalidArgument
from faultfs import fill

KiB = 1 << 10
PAGE = 4096


def allocated(path):
    """Bytes the filesystem allocated for the file (st_blocks), not its length."""
    return os.stat(path).st_blocks * 512


def segment_alloc(log_dir, ext):
    return {n: allocated(os.path.join(log_dir, n)) for n in sorted(os.listdir(log_dir)) if n.endswith(ext)}


def open_fds():
    return len(os.listdir("/proc/self/fd"))


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")


# -- disk ---------------------------------------------------------------------------------

def test_one_record_topic_allocates_a_small_first_chunk_not_megabytes(tmp_path):
    """A topic with one record used to allocate 4 MiB of .log (segment_bytes/16) and
    328 KiB of index files (capacity for a full 64 MiB segment): 4.3 GB for 1,000 such
    topics. Now: the first chunk (64 KiB) and a page per index file."""
    assert _storage.SEGMENT_FIRST_CHUNK == 64 * KiB
    with fastq.open(tmp_path / "b") as b:
        t = b.topic("small", partitions=1)
        t.publish(b"x" * 100)
        part = os.path.join(b.path, "topics", "small", "0")
        logs = segment_alloc(part, ".log")
        idx = segment_alloc(part, ".index")
        tidx = segment_alloc(part, ".timeindex")
    assert list(logs.values()) == [64 * KiB], logs
    assert list(idx.values()) == [PAGE] and list(tidx.values()) == [PAGE], (idx, tidx)
    total = sum(allocated(os.path.join(r, n)) for r, _, ns in os.walk(tmp_path / "b") for n in ns)
    assert total <= 64 * KiB + 12 * PAGE, f"{total} bytes allocated for a one-record topic"


def test_sealed_segment_allocation_stays_within_segment_bytes(tmp_path):
    """64 KiB segments used to be sealed at 1.1 MB each: the allocation ran a pretouch
    window (1 MiB) past the data, up to segment_bytes + max_record_bytes. Now the
    allocation ahead stops at segment_bytes (a batch may pass it only when it is the
    segment's first)."""
    seg_bytes = 64 * KiB
    with Log(tmp_path / "l", segment_bytes=seg_bytes) as lg:
        while len(lg.segments()) < 6:
            lg.append(b"y" * 1000)
        sealed = [s for s in lg.segments() if s["sealed"]]
        for s in sealed:
            assert s["bytes"] <= seg_bytes
            assert allocated(s["path"]) <= seg_bytes, (s, allocated(s["path"]))
            assert os.path.getsize(s["path"]) <= seg_bytes
        for n, a in segment_alloc(tmp_path / "l", ".index").items():
            assert a == PAGE, (n, a)


def test_preallocation_doubles_as_the_writer_advances(tmp_path):
    """The .log file grows 64 KiB, 128 KiB, 256 KiB, ... (then by the grow chunk), each
    step preallocated before anything is written into it, and always ahead of the data."""
    with Log(tmp_path / "l", segment_bytes=8 << 20) as lg:
        # no pretoucher: a slow one (a loaded machine) widens the window, and a wider
        # window allocates further ahead, which would make the steps depend on timing
        lg._pretouch = None
        seen = []
        for _ in range(3000):                        # ~3 MiB
            lg.append(b"z" * 1000)
            a = lg._active.alloc_size
            assert a >= lg.snapshot()["end_pos"]
            assert a <= os.path.getsize(lg._active.path)
            if not seen or seen[-1] != a:
                seen.append(a)
        assert seen[:4] == [64 * KiB, 128 * KiB, 256 * KiB, 512 * KiB], seen
        assert all(b - a <= max(a, 1 << 20) for a, b in zip(seen, seen[1:])), seen
        end = lg.snapshot()["end_pos"]
        assert allocated(lg._active.path) <= 2 * end + 64 * KiB


def test_index_files_grow_with_the_log_and_lookups_still_work(tmp_path):
    """Index files are sized to the data the .log can hold, grown with it; offset and
    time lookups, and a reopen (which trusts or rebuilds them), still find every record."""
    with Log(tmp_path / "l", segment_bytes=16 << 20, index_interval=256) as lg:
        for i in range(6000):
            lg.append(b"v" * 500, timestamp=1_000_000 + i)
        n_idx = lg.snapshot()["index_count"]
        assert n_idx > PAGE // 8                      # past one page of entries
        idx_path = lg._active.index_path
        size = os.path.getsize(idx_path)
        assert size >= n_idx * 8
        assert size <= (lg._active.alloc_size // 256 + 2) * 8 + PAGE
        assert lg.get(4321).offset == 4321
        assert lg.offset_for_timestamp(1_000_000 + 5000) == 5000
        lg.roll()
        lg.append(b"w")
    with Log(tmp_path / "l") as lg:
        assert lg.get(4321).offset == 4321
        assert lg.offset_for_timestamp(1_000_000 + 5999) == 5999
        assert lg.end_offset == 6001


GROW_CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from faultfs import fill
    from fastq import Log
    from fastq.errors import DiskFull
    path = {path!r}
    lg = Log(os.path.join(path, "l"), segment_bytes=4 << 20)
    lg.append(b"a" * 1000)
    release = fill(path, leave=0)
    acked = 1
    try:
        for i in range(100000):
            lg.append(b"a" * 1000)
            acked += 1
        print("NOFULL", acked)
        sys.exit(3)
    except DiskFull as e:
        print("DISKFULL", acked, str(e)[:200])
    release()
    lg.append(b"b" * 1000)                 # room again: appends resume
    acked += 1
    lg.close()
    with Log(os.path.join(path, "l")) as lg:
        got = sum(1 for _ in lg.read(0))
    print("READ", got, acked)
    sys.exit(0 if got == acked else 4)
""")


@pytest.mark.parametrize("fs", ["tmpfs_dir", "ext4_dir"])
def test_growth_on_a_full_disk_is_diskfull_never_sigbus(fs, request):
    """Growth is lazier now, but each step is still preallocated before the writer
    touches it: a full disk is a DiskFull from the append that needs the next chunk,
    never a SIGBUS (a signal death of the child) when the mapping is written. Every
    acknowledged record survives and appends resume once there is room."""
    path = request.getfixturevalue(fs)
    tests = os.path.dirname(__file__)
    r = subprocess.run([sys.executable, "-c", GROW_CHILD.format(tests=tests, path=path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode >= 0, f"writer killed by signal {-r.returncode}: {r.stderr[-2000:]}"
    assert r.returncode == 0, (r.stdout, r.stderr[-2000:])
    assert "DISKFULL" in r.stdout and "preallocate" in r.stdout, r.stdout


# -- file descriptors ---------------------------------------------------------------------

@needs_proc
def test_descriptors_per_one_partition_topic_are_bounded(tmp_path):
    """A one-record topic held 4 descriptors (state, lock, active .log, notify). The
    notify file is only ever used through its mapping: now 3 (state and lock are
    flock'ed, the active .log is grown and fsynced through its descriptor)."""
    with fastq.open(tmp_path / "b") as b:
        b.topic("warm", partitions=1).publish(b"w")
        before = open_fds()
        n = 20
        for i in range(n):
            b.topic(f"t{i}", partitions=1).publish(b"x")
        per_topic = (open_fds() - before) / n
    assert per_topic <= 3, f"{per_topic} descriptors per one-partition topic"


@needs_proc
def test_sealed_segments_hold_no_descriptor(tmp_path):
    """A sealed segment is read through its mapping and never grows again: its .log
    descriptor is closed at the roll (and when a sealed segment is opened), so a log's
    descriptors do not grow with its segments. Flush still syncs them (msync)."""
    before = open_fds()
    with Log(tmp_path / "l", segment_bytes=4096, durability="group") as lg:
        while len(lg.segments()) < 12:
            lg.append(b"s" * 300)
        assert open_fds() - before <= 3
        lg.flush()
    with Log(tmp_path / "l") as lg:                # reopen: sealed ones opened by _refresh
        assert len(lg.segments()) == 12
        assert open_fds() - before <= 3
        assert sum(1 for _ in lg.read(0)) == lg.end_offset
        lg.flush()
        lg.truncate(lg.segments()[-3]["base_offset"] + 1)   # a sealed one becomes active again
        lg.append(b"t" * 300)
        lg.flush()
        n = lg.end_offset
    with Log(tmp_path / "l") as lg:
        assert lg.end_offset == n and bytes(lg.get(n - 1).value) == b"t" * 300


# -- memory -------------------------------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pretoucher is Linux-only")
def test_idle_topic_pretouches_a_small_window(tmp_path):
    """The pretoucher populated (made resident) 1 MiB ahead of every active segment, so
    1,000 idle topics were ~1 GiB of RSS. The window now starts at 32 KiB."""
    assert _storage.PRETOUCH_MIN_BYTES == 32 * KiB
    with Log(tmp_path / "l") as lg:
        asked = []
        lg._pretouch = lambda seg, upto: asked.append(upto)
        lg.append(b"x" * 100)
        assert asked == [lg.snapshot()["end_pos"] + 32 * KiB]
        assert lg._active.alloc_size == 64 * KiB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pretoucher is Linux-only")
def test_pretouch_window_shrinks_for_a_writer_gone_slow(tmp_path):
    """The window doubles while the writer outruns the pretoucher; once the writer takes
    over a second per half window it halves again (down to PRETOUCH_MIN), so a topic
    that was busy once does not keep 16 MiB resident per segment. (Time is moved by
    setting the last request's clock back, not by sleeping.)"""
    with Log(tmp_path / "l", segment_bytes=64 << 20) as lg:
        asked = []
        lg._pretouch = lambda seg, upto: asked.append((seg, upto))

        def serve():
            seg, upto = asked.pop()
            seg.prefault(upto)
            seg.pf_requested = False

        rec = b"z" * 4000
        lg.append(rec)
        serve()
        while lg.pretouch_window < 1 << 20:          # outrun it: the window widens
            while not asked:
                lg.append(rec)
            upto = asked[0][1]
            while lg.snapshot()["end_pos"] <= upto:
                lg.append(rec)
            serve()
            lg.append(rec)
            serve()
        wide = lg.pretouch_window
        for _ in range(3):                           # now slow: > 1 s per request
            while not asked:
                lg._pretouch_asked_ns -= 2_000_000_000
                lg.append(rec)
            serve()
        assert lg.pretouch_window == wide // 8


# -- timestamps ---------------------------------------------------------------------------

def test_far_future_timestamp_is_rejected_with_the_limit_named(tmp_path):
    """One record stamped far in the future kept its segment (and every later one) from
    time retention for as long as the clock took to catch up. As Kafka does (KIP-937,
    log.message.timestamp.after.max.ms), an append more than max_timestamp_ahead_ms
    (default one hour) ahead of the clock is refused, naming the timestamp and limit."""
    now = int(time.time() * 1000)
    far = now + 10 * 365 * 86_400_000
    with Log(tmp_path / "l") as lg:
        assert lg.max_timestamp_ahead_ms == 3_600_000
        assert lg.append(b"ok", timestamp=now + 1_800_000) == 0
        for call in (lambda: lg.append(b"x", timestamp=far),
                     lambda: lg.append_many([b"x", b"y"], timestamp=far),
                     lambda: lg.append_batch([(b"x", None, None, now), (b"y", None, None, far)]),
                     lambda: lg.publish(b"x", timestamp=far)):
            with pytest.raises(InvalidArgument) as ei:
                call()
            assert str(far) in str(ei.value) and "3600000" in str(ei.value)
        assert lg.end_offset == 1                       # nothing half-appended
    with fastq.open(tmp_path / "b") as b:
        t = b.topic("t")
        with pytest.raises(InvalidArgument, match=str(far)):
            t.publish(b"x", timestamp=far)
        with pytest.raises(InvalidArgument, match=str(far)):
            t.publish_many([b"x"], timestamp=far)


def test_timestamp_ahead_limit_is_per_log_and_can_be_disabled(tmp_path):
    now = int(time.time() * 1000)
    with Log(tmp_path / "l", max_timestamp_ahead_ms=1000) as lg:
        with pytest.raises(InvalidArgument, match="max_timestamp_ahead_ms=1000"):
            lg.append(b"x", timestamp=now + 60_000)
    with Log(tmp_path / "l") as lg:                 # stored in log.json
        assert lg.max_timestamp_ahead_ms == 1000
    with Log(tmp_path / "l", max_timestamp_ahead_ms=None) as lg:
        assert lg.max_timestamp_ahead_ms is None
        assert lg.append(b"x", timestamp=now + 10**12) == 0
    for bad in (-1, "1h", 1.5, True):
        with pytest.raises(InvalidArgument, match="max_timestamp_ahead_ms"):
            Log(tmp_path / "m", max_timestamp_ahead_ms=bad)


def test_negative_and_default_timestamps(tmp_path):
    """timestamp=None stamps the clock (never refused by the limit); a negative one is
    refused by name (Kafka's -1 'no timestamp' is not accepted on append)."""
    with Log(tmp_path / "l", max_timestamp_ahead_ms=0) as lg:
        before = int(time.time() * 1000)
        lg.append(b"now")
        lg.append_many([b"a", b"b"])
        lg.append_batch([(b"c",)])
        after = int(time.time() * 1000)
        assert all(before <= r.timestamp <= after for r in lg.read(0))
        for bad in (-1, -(2**63)):
            with pytest.raises(InvalidArgument, match=str(bad)):
                lg.append(b"x", timestamp=bad)
        with pytest.raises(InvalidArgument):
            lg.append(b"x", timestamp=2**64)


def test_far_future_timestamp_cannot_pin_time_retention_when_the_limit_is_off(tmp_path):
    """With the limit disabled a far-future record is accepted; time retention then
    judges a segment whose newest timestamp is still in the future by when its file was
    last written, so it (and the segments after it) still expire."""
    now = int(time.time() * 1000)
    day = 86_400_000
    with Log(tmp_path / "l", segment_bytes=4096, max_timestamp_ahead_ms=None,
             retention_ms=day) as lg:
        for i in range(20):
            lg.append(b"p" * 300, timestamp=now)
        lg.append(b"future", timestamp=now + 1000 * day)
        for i in range(40):
            lg.append(b"q" * 300, timestamp=now)
        sealed = len(lg.segments()) - 1
        assert sealed >= 4
        assert lg.enforce_retention(now_ms=now + day // 2) == 0
        # two days on, by the record timestamps alone the future one pinned everything
        # from its segment on; by the files' write times all sealed segments expire
        assert lg.enforce_retention(now_ms=now + 2 * day) == sealed


def test_producer_refuses_a_far_future_timestamp_at_send(tmp_path):
    """A producer queues records and appends them later: refusing a far-future one only
    at the drain would fail the whole drain (the records queued with it were dropped).
    send() checks it against the partition's limit, so the others are appended."""
    far = int(time.time() * 1000) + 400 * 86_400_000
    with fastq.open(tmp_path / "b") as b:
        t = b.topic("t", partitions=1)
        with t.producer(linger_ms=60_000) as p:
            p.send(b"a")
            with pytest.raises(InvalidArgument, match=str(far)):
                p.send(b"x", timestamp=far)
            p.send(b"b")
            p.flush()
        assert [bytes(r.value) for r in t.log(0).read(0)] == [b"a", b"b"]


def test_far_future_first_record_does_not_stop_segment_ms_rolls(tmp_path):
    """segment_ms measures the active segment's age from its first record's timestamp
    when a process picks the segment up: one stamped far ahead made it "younger than
    now" for years, so the segment never rolled by time. It counts as now at most."""
    far = int(time.time() * 1000) + 400 * 86_400_000
    with Log(tmp_path / "l", segment_ms=60_000, max_timestamp_ahead_ms=None) as lg:
        lg.append(b"future", timestamp=far)
    with Log(tmp_path / "l") as lg:
        assert lg._active_created_ms <= int(time.time() * 1000)
