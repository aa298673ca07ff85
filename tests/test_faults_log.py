"""Faults in a log's files that recovery must never hide (fastq issue 12): a roll that
fails on a full disk, a truncated or deleted segment (active, sealed, first), a missing
index, a lost state file next to damaged segments — and ``fastq.log.verify`` /
``repair_log``, which report such damage and make the log usable again.

The invariant everywhere: every acknowledged record is either read back exactly, or
its loss is a :class:`CorruptRecord` naming the file and position — never a silent cut,
a skipped offset, an offset handed out twice, or a deleted segment file."""
from __future__ import annotations

import os
import random
import shutil

import pytest

import fastq
from fastq import Log
from fastq.errors import CorruptRecord, DiskFull, OffsetOutOfRange
from fastq.log.config import STATE_FILE
from fastq.log.verify import repair_log, verify_broker, verify_log
from faultfs import fill
from logutil import read_all, seed_for, tree_snapshot

SEG0 = "00000000000000000000"


def log_files(path):
    return sorted(n for n in os.listdir(path) if n.endswith((".log", ".index", ".timeindex")))


def values(log, start=None):
    return [bytes(r.value) for r in log.read(log.start_offset if start is None else start)]


def damaged_files(path):
    """Every file moved aside under <path>/damaged/ (relative names)."""
    root = os.path.join(path, "damaged")
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root) for n in names]
    return sorted(out)


def build(path, n, size=60, **opts):
    """A log of n records 'r<i>' padded to `size`; returns the values."""
    vals = [f"r{i}".encode().ljust(size, b".") for i in range(n)]
    with Log(path, **opts) as log:
        for i, v in enumerate(vals):
            log.append(v, timestamp=1000 + i)
    return vals


# -- item 1: a roll that fails on a full disk -------------------------------------------

def test_failed_roll_on_full_disk_loses_no_acked_record(tmpfs_dir):
    path = os.path.join(tmpfs_dir, "log")
    acked = {}
    with Log(path, segment_bytes=64 << 10) as log:
        acked[log.append(b"first")] = b"first"    # the segment's file is allocated in full
        release = fill(tmpfs_dir, leave=0)
        try:
            big, small = b"B" * 1000, b"s"
            with pytest.raises(DiskFull):
                while True:                       # until the roll cannot preallocate
                    acked[log.append(big)] = big
            assert log_files(path) == [SEG0 + ".index", SEG0 + ".log", SEG0 + ".timeindex"], \
                "the failed roll left files behind"
            with pytest.raises(DiskFull):
                while True:                       # smaller records still fit the old segment
                    acked[log.append(small)] = small
            assert len(acked) > 60 and small in acked.values()
        finally:
            release()
        for i in range(300):                      # the disk has room again: rolls work
            v = b"after%d" % i + b"." * 900
            acked[log.append(v)] = v
        assert len(log.segments()) > 2
    want = [acked[o] for o in sorted(acked)]
    assert sorted(acked) == list(range(len(acked)))
    with Log(path) as log:
        assert values(log) == want
    os.unlink(os.path.join(path, STATE_FILE))     # recovery from the segments alone
    files = log_files(path)
    with Log(path) as log:
        assert values(log) == want
        assert log.append(b"next") == len(want)
    assert set(files) <= set(log_files(path)), "recovery deleted segment files"


# -- item 3: a truncated or deleted active segment of a cleanly closed log --------------

@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_truncated_or_deleted_active_segment_raises_corrupt_record(tmp_path, how):
    path = str(tmp_path / "log")
    vals = build(path, 100, segment_bytes=64 << 10)
    seg = os.path.join(path, SEG0 + ".log")
    if how == "truncated":
        os.truncate(seg, 1000)
    else:
        os.unlink(seg)
    for _ in range(2):                            # refused every time, nothing cut
        with pytest.raises(CorruptRecord) as ei:
            Log(path)
        assert ei.value.path == seg
        assert "fastq repair" in str(ei.value)
        if how == "truncated":
            assert ei.value.position is not None and ei.value.position <= 1000
            assert os.path.getsize(seg) == 1000
        else:
            assert not os.path.exists(seg)
    report = verify_log(path)
    assert not report.ok and any(p.path == seg for p in report.problems)
    repair_log(path)
    with Log(path) as log:
        kept = values(log)
        assert kept == vals[:len(kept)]           # an exact prefix of what was acked
        assert log.end_offset == 100              # lost offsets are never handed out again
        assert log.append(b"x") == 100
    assert verify_log(path).ok


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_truncated_or_deleted_sealed_segment_in_the_middle_raises_corrupt_record(tmp_path, how):
    path = str(tmp_path / "log")
    vals = build(path, 300, segment_bytes=4096)
    with Log(path) as log:
        segs = log.segments()
    assert len(segs) > 4
    mid = segs[2]
    if how == "truncated":
        os.truncate(mid["path"], mid["bytes"] // 2)
    else:
        os.unlink(mid["path"])
    with pytest.raises(CorruptRecord) as ei:
        Log(path)
    assert ei.value.path in (mid["path"], segs[1]["path"])
    assert "fastq repair" in str(ei.value)
    report = verify_log(path)
    assert not report.ok
    assert {p.kind for p in report.problems} & {"truncated-batch", "offset-gap", "missing-segment"}
    assert len(log_files(path)) == 3 * len(segs) - (1 if how == "deleted" else 0)
    report = repair_log(path)
    assert report.lost, report
    with Log(path) as log:
        got = [(r.offset, bytes(r.value)) for r in log.read(0)]
        assert log.end_offset == 300
    # every record still there is at its own offset; what is missing is what was damaged
    assert all(vals[o] == v for o, v in got)
    lost = set(range(300)) - {o for o, _ in got}
    assert lost and all(mid["base_offset"] <= o < segs[3]["base_offset"] for o in lost)
    assert verify_log(path).ok


# -- item 4: the first segment deleted ---------------------------------------------------

def test_deleted_first_segment_read_raises_and_repair_moves_the_start(tmp_path):
    path = str(tmp_path / "log")
    vals = build(path, 600, segment_bytes=4096)
    os.unlink(os.path.join(path, SEG0 + ".log"))
    with pytest.raises(CorruptRecord) as ei:
        Log(path)
    assert ei.value.path == os.path.join(path, SEG0 + ".log")
    report = repair_log(path)
    with Log(path) as log:
        first = log.start_offset
        assert first > 0 and report.lost == [(0, first)]
        with pytest.raises(OffsetOutOfRange, match=f"{first}"):
            next(iter(log.read(0)))
        assert values(log) == vals[first:]
        assert log.append(b"x") == 600


def _broker_with_deleted_head(tmp_path, group_offset):
    bpath = str(tmp_path / "b")
    with fastq.open(bpath) as b:
        t = b.topic("t", partitions=1, segment_bytes=4096)
        for i in range(600):
            t.publish(b"v%d" % i)
        if group_offset is not None:
            with t.consumer("g") as c:
                c.poll(1, timeout=1)
                c.commit({0: group_offset})
    part = os.path.join(bpath, "topics", "t", "0")
    return bpath, part


@pytest.mark.parametrize("group", [None, "g"])
def test_deleted_first_segment_consumer_never_spins(tmp_path, group):
    bpath, part = _broker_with_deleted_head(tmp_path, 50 if group else None)
    os.unlink(os.path.join(part, SEG0 + ".log"))
    with fastq.open(bpath) as b:
        with pytest.raises(CorruptRecord):        # refused loudly, not an empty poll loop
            with b.topic("t").consumer(group) as c:
                c.poll(10, timeout=0.2)
    assert not verify_broker(bpath).ok
    repair_log(part)
    with fastq.open(bpath) as b:
        t = b.topic("t")
        first = t.log(0).start_offset
        assert first > 50
        with t.consumer(group) as c:              # the committed 50 is gone: reset to earliest
            recs = c.poll(10, timeout=1)
            assert [r.offset for r in recs] == list(range(first, first + 10))
            assert bytes(recs[0].value) == b"v%d" % first


def test_first_segment_deleted_under_an_open_log_raises_in_the_consumer(tmp_path):
    """Another process deletes the first segment and rolls: this process's consumer,
    positioned at 0, gets CorruptRecord from poll — not an empty poll loop at 100% CPU
    (the log start in the state still says 0, no segment file holds it)."""
    bpath, part = _broker_with_deleted_head(tmp_path, None)
    with fastq.open(bpath) as b:
        t = b.topic("t")
        with t.consumer() as c:
            other = Log(part)                     # another handle, as another process has
            try:
                os.unlink(os.path.join(part, SEG0 + ".log"))
                other.roll()                      # a new generation: every reader rescans
            finally:
                other.close()
            with pytest.raises(CorruptRecord, match="missing"):
                for _ in range(3):
                    c.poll(10, timeout=0.1)


# -- item 5: offset_for_timestamp without an index --------------------------------------

@pytest.mark.parametrize("which", [".timeindex", ".index"])
@pytest.mark.parametrize("where", ["active", "sealed"])
def test_offset_for_timestamp_without_index_finds_first_record(tmp_path, which, where):
    path = str(tmp_path / "log")
    with Log(path, segment_bytes=1 << 16, index_interval=256) as log:
        for i in range(1000):
            log.append(b"v" * 60, timestamp=10_000 + i)
        if where == "sealed":
            log.roll()
        segs = log.segments()
    target = segs[-2] if where == "sealed" else segs[-1]
    os.unlink(target["path"][:-4] + which)
    first = target["base_offset"]
    with Log(path) as log:
        assert log.offset_for_timestamp(10_000 + first) == first
        assert log.offset_for_timestamp(10_000 + first + 1) == first + 1
        assert log.offset_for_timestamp(0) == 0
        assert log.offset_for_timestamp(10_999) == 999


# -- recovery without fastq.state ---------------------------------------------------------

@pytest.mark.parametrize("damage", ["empty-segment", "truncated-sealed", "deleted-sealed"])
def test_recovery_without_state_never_deletes_intact_segments(tmp_path, damage):
    path = str(tmp_path / "log")
    vals = build(path, 300, segment_bytes=4096)
    with Log(path) as log:
        segs = log.segments()
    mid = segs[2]
    if damage == "empty-segment":                 # what a failed roll used to leave
        open(os.path.join(path, "%020d.log" % (mid["base_offset"] + 3)), "wb").close()
    elif damage == "truncated-sealed":
        os.truncate(mid["path"], mid["bytes"] // 2)
    else:
        os.unlink(mid["path"])
    os.unlink(os.path.join(path, STATE_FILE))
    before = {n: os.path.getsize(os.path.join(path, n)) for n in log_files(path) if n.endswith(".log")}
    for _ in range(2):                            # the second open judges by the files again
        with pytest.raises(CorruptRecord) as ei:
            Log(path)
        assert "fastq repair" in str(ei.value)
        assert not os.path.exists(os.path.join(path, STATE_FILE))
    after = {n: os.path.getsize(os.path.join(path, n)) for n in log_files(path) if n.endswith(".log")}
    assert after == before, "recovery changed or deleted segment files it could not trust"
    report = repair_log(path)
    assert damaged_files(path), "repair must move what it cannot keep aside, not delete it"
    with Log(path) as log:
        got = {r.offset: bytes(r.value) for r in log.read(0)}
    assert all(vals[o] == v for o, v in got.items())
    if damage == "empty-segment":
        assert sorted(got) == list(range(300)) and report.lost == []
    else:
        assert set(range(segs[3]["base_offset"], 300)) <= set(got)


# -- the torn-tail rule is unchanged ------------------------------------------------------

def test_torn_tail_past_the_committed_end_is_still_dropped(tmp_path):
    """Bytes past the committed end were never acknowledged: recovery may drop them, and
    verify does not call them damage."""
    path = str(tmp_path / "log")
    vals = build(path, 50)
    seg = os.path.join(path, SEG0 + ".log")
    with Log(path) as log:
        end = log.snapshot()["end_pos"]
    with open(seg, "r+b") as f:                   # a torn, never-committed batch
        f.seek(end)
        f.write((50).to_bytes(8, "big") + (300).to_bytes(4, "big") + b"\x01" * 40)
    assert verify_log(path).ok
    with Log(path) as log:
        assert values(log) == vals


# -- verify / repair ----------------------------------------------------------------------

def test_verify_reports_a_flipped_bit_with_file_and_position(tmp_path):
    rng = random.Random(seed_for("verify_bitflip"))
    path = str(tmp_path / "log")
    build(path, 200, segment_bytes=4096)
    with Log(path) as log:
        seg = log.segments()[1]
    pos = rng.randrange(80, seg["bytes"] - 10)
    with open(seg["path"], "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x10]))
    report = verify_log(path)
    assert not report.ok
    p = report.problems[0]
    assert p.path == seg["path"] and p.position <= pos and p.kind in ("crc-mismatch", "corrupt-batch")
    assert report.to_dict()["problems"][0]["path"] == seg["path"]


def test_verify_reports_an_index_entry_pointing_wrong(tmp_path):
    path = str(tmp_path / "log")
    build(path, 400, segment_bytes=1 << 16, index_interval=256)
    idx = os.path.join(path, SEG0 + ".index")
    with open(idx, "r+b") as f:
        f.seek(8 * 2 + 4)                         # entry 2's position
        f.write((7).to_bytes(4, "big"))
    report = verify_log(path)
    assert [p.kind for p in report.problems] == ["index-entry"]
    assert report.problems[0].path == idx
    repair_log(path)
    assert verify_log(path).ok


def test_repair_dry_run_changes_nothing(tmp_path):
    path = str(tmp_path / "log")
    build(path, 300, segment_bytes=4096)
    with Log(path) as log:
        mid = log.segments()[2]
    os.truncate(mid["path"], mid["bytes"] // 2)
    snap = tree_snapshot(path)
    report = repair_log(path, dry_run=True)
    assert report.moved and report.lost
    assert tree_snapshot(path) == snap


def test_repair_refuses_a_log_open_elsewhere(tmp_path):
    path = str(tmp_path / "log")
    build(path, 10)
    with Log(path):
        with pytest.raises(fastq.errors.LogLocked):
            repair_log(path)


# -- after a reboot: only the fsynced watermark is trusted ---------------------------------

def _as_after_reboot(path, recovery_point):
    """Make an unclean log's state look written before a reboot, with `recovery_point`."""
    with open(os.path.join(path, STATE_FILE), "r+b") as f:
        f.seek(32)
        f.write(os.urandom(16))                   # another boot's id
        f.seek(320)
        f.write(recovery_point.to_bytes(8, "little"))


@pytest.mark.parametrize("where", ["below", "above"])
def test_after_a_reboot_damage_below_the_watermark_raises_above_it_is_set_aside(tmp_path, where):
    src, path = str(tmp_path / "src"), str(tmp_path / "log")
    vals = [b"r%d" % i for i in range(300)]
    with Log(src, segment_bytes=4096) as log:
        for v in vals:
            log.append(v.ljust(60, b"."))
        segs = log.segments()
        shutil.copytree(src, path)                # unclean, as after a power failure
    watermark = segs[3]["base_offset"]
    _as_after_reboot(path, watermark)
    hit = segs[1] if where == "below" else segs[4]
    hit_path = os.path.join(path, os.path.basename(hit["path"]))
    os.truncate(hit_path, hit["bytes"] // 2)
    later = [os.path.basename(s["path"]) for s in segs[5:]]
    if where == "below":
        with pytest.raises(CorruptRecord) as ei:
            Log(path)
        assert ei.value.path == hit_path
        return
    with Log(path) as log:
        got = [bytes(r.value).rstrip(b".") for r in log.read(0)]
        assert got == vals[:len(got)] and len(got) > segs[4]["base_offset"]
        assert log.append(b"x") == len(got)
    # the segments past the torn tail were never fsynced: dropped from the log, but
    # moved aside with their data, not unlinked
    assert set(later) <= {os.path.basename(n) for n in damaged_files(path)}


def test_repair_keeps_the_intact_batches_after_a_damaged_one(tmp_path):
    """A flipped bit inside one batch of a sealed segment loses that batch only: repair
    keeps the batches after it in the same segment (found through the damaged batch's
    length field), moves the damaged bytes aside, and the log's offsets stay put."""
    rng = random.Random(seed_for("repair_bitflip"))
    path = str(tmp_path / "log")
    vals = build(path, 300, segment_bytes=4096)
    with Log(path) as log:
        seg = log.segments()[2]
        base = seg["base_offset"]
        victim = base + rng.randrange(5, 25)      # a batch inside the segment (one record each)
        pos = log._segments[2].find_position(victim, seg["bytes"], 0)
    with open(seg["path"], "r+b") as f:
        f.seek(pos + 70)                          # inside the record, covered by the CRC
        b = f.read(1)
        f.seek(pos + 70)
        f.write(bytes([b[0] ^ 0x01]))
    with Log(path) as log:                        # the open does not scan CRCs of sealed segments...
        with pytest.raises(CorruptRecord) as ei:  # ...reads do, naming file and position
            read_all(log)
        assert ei.value.path == seg["path"] and ei.value.position == pos
    report = verify_log(path)
    assert [(p.kind, p.path, p.position) for p in report.problems] == [("crc-mismatch", seg["path"], pos)]
    rep = repair_log(path)
    assert rep.lost == [(victim, victim + 1)]
    assert any(n.startswith(os.path.basename(seg["path"]) + ".bytes-") for n in
               (os.path.basename(x) for x in damaged_files(path)))
    with Log(path) as log:
        got = {r.offset: bytes(r.value) for r in log.read(0)}
        assert log.end_offset == 300 and log.append(b"x") == 300
    assert got == {o: v for o, v in enumerate(vals) if o != victim}
    assert verify_log(path).ok


def test_deleted_active_segment_of_a_topic_is_refused_then_repaired(tmp_path):
    """Item 3 through the broker: a topic whose partition lost its active segment refuses
    to publish (CorruptRecord), instead of handing offset 0 out again."""
    bpath = str(tmp_path / "b")
    with fastq.open(bpath) as b:
        t = b.topic("t", partitions=1)
        for i in range(100):
            t.publish(b"v%d" % i)
    part = os.path.join(bpath, "topics", "t", "0")
    os.unlink(os.path.join(part, SEG0 + ".log"))
    with fastq.open(bpath) as b:
        with pytest.raises(CorruptRecord, match="fastq repair"):
            b.topic("t").publish(b"again")
    assert [p.kind for r in verify_broker(bpath) for p in r.problems] == ["missing-segment"]
    repair_log(part)
    assert log_files(part) == ["%020d.index" % 100, "%020d.log" % 100, "%020d.timeindex" % 100]
    with fastq.open(bpath) as b:
        assert b.topic("t").publish(b"again").offset == 100


def test_flipped_bit_in_a_clean_state_is_reported_as_damage_of_the_state(tmp_path):
    """A cleanly closed state carries a checksum (csrc/fq_log.h, "Clean close"): a bit
    flipped in its end offset is damage of fastq.state — not of the intact segments it
    would misjudge — and moving it aside (or `repair`) rebuilds it from the segments
    with every record."""
    path = str(tmp_path / "log")
    vals = build(path, 50, segment_bytes=4096)
    state = os.path.join(path, STATE_FILE)
    with open(state, "r+b") as f:               # next_offset (csrc/fq_log.h): 50 -> 48
        f.seek(136)
        b = f.read(1)
        f.seek(136)
        f.write(bytes([b[0] ^ 0x02]))
    with pytest.raises(CorruptRecord) as ei:
        Log(path)
    assert ei.value.path == state and "checksum" in str(ei.value)
    with pytest.raises(CorruptRecord) as ei:
        Log(path, readonly=True)
    assert ei.value.path == state
    report = verify_log(path)
    assert [(p.kind, p.path) for p in report.problems] == [("state-checksum", state)]
    repaired = repair_log(path)
    assert repaired.lost == []
    with Log(path) as log:
        assert values(log) == vals and log.end_offset == 50
        log.append(b"next")
        assert log.end_offset == 51
    assert verify_log(path).ok


def test_a_clean_state_from_before_the_checksum_is_still_trusted(tmp_path):
    """A clean state written before the checksum existed (FQ_STATE_FLAG_CHECKED clear,
    clean_crc zero: it was padding) opens as before."""
    path = str(tmp_path / "log")
    vals = build(path, 20)
    state = os.path.join(path, STATE_FILE)
    with open(state, "r+b") as f:
        f.seek(16)                               # flags u32, clean_crc u32
        flags = int.from_bytes(f.read(4), "little")
        assert flags & 3 == 3                    # clean and checksummed by this version
        f.seek(16)
        f.write((flags & ~2).to_bytes(4, "little") + bytes(4))
    with Log(path) as log:
        assert values(log) == vals


def test_truncate_that_fails_while_unlinking_leaves_an_openable_log_at_the_new_end(tmp_path):
    """Truncate commits the new end before it unlinks a dropped segment: a delete that
    fails half-way (here the second file of a dropped segment; a kill -9 there is the same
    state) leaves a log that opens at the new end, never a gap that is CorruptRecord."""
    import errno

    from faultfs import os_fault
    from fastq.log import log as fastq_log

    path = str(tmp_path / "l")
    with Log(path, segment_bytes=4096) as log:
        for i in range(200):
            log.append(b"v%03d" % i + b"x" * 60)
        assert len(log.segments()) >= 3
        cut = log.segments()[1]["base_offset"] - 5        # inside the first segment, at a batch
        with os_fault(fastq_log, "unlink", errno.EIO, after=1) as count:
            with pytest.raises(fastq.StorageError):
                log.truncate(cut)
        assert count.hits == 1
    with Log(path) as log:
        assert log.start_offset == 0 and log.end_offset == cut
        assert values(log) == [b"v%03d" % i + b"x" * 60 for i in range(cut)]
        log.append(b"after")
        assert log.end_offset == cut + 1
    assert verify_log(path).ok


@pytest.mark.parametrize("dies_at_unlink", [0, 1, 3])
def test_truncate_killed_between_commit_and_unlink_opens_at_the_new_end(tmp_path, dies_at_unlink):
    """The process dies (SIGKILL) at the ``dies_at_unlink``-th file delete of a truncate:
    the next open recovers the log at the new end with every record below it."""
    import signal

    from faultfs import _OsProxy
    from fastq.log import log as fastq_log
    from logutil import fork_child, wait_child

    path = str(tmp_path / "l")
    with Log(path, segment_bytes=4096) as log:
        for i in range(200):
            log.append(b"v%03d" % i + b"x" * 60)
        cut = log.segments()[1]["base_offset"] - 5

    def child():
        calls = [0]
        real = os.unlink

        def unlink(p, *a, **k):
            if calls[0] == dies_at_unlink:
                os.kill(os.getpid(), signal.SIGKILL)
            calls[0] += 1
            return real(p, *a, **k)

        fastq_log.os = _OsProxy(os, {"unlink": unlink})
        with Log(path) as log:
            log.truncate(cut)

    assert wait_child(fork_child(child)) == -signal.SIGKILL
    with Log(path) as log:
        assert log.end_offset == cut
        assert values(log) == [b"v%03d" % i + b"x" * 60 for i in range(cut)]


def test_a_segment_retention_failed_to_delete_is_deleted_by_the_next_retention(tmp_path):
    """Retention commits the new start, then unlinks. A file whose unlink failed stays
    below the start (ignored by readers); the next retention pass deletes it, so a
    transient EIO never leaks disk space for good."""
    import errno

    from faultfs import os_fault
    from fastq.log import log as fastq_log

    path = str(tmp_path / "l")
    with Log(path, segment_bytes=4096, retention_bytes=8192) as log:
        for i in range(200):
            log.append(b"v%03d" % i + b"x" * 60)
        first = log.segments()[0]["base_offset"]
        stale = os.path.join(path, "%020d.log" % first)
        with os_fault(fastq_log, "unlink", errno.EIO, path_contains=".index") as count:
            with pytest.raises(fastq.StorageError) as ei:
                log.enforce_retention()
        assert count.hits == 1 and stale[:-4] + ".index" in str(ei.value)
        assert not os.path.exists(stale)                  # .log went, its .index stayed
        assert os.path.exists(stale[:-4] + ".index") and log.start_offset > first
        start = log.start_offset
        log.enforce_retention()
        assert not os.path.exists(stale)
        assert not os.path.exists(stale[:-4] + ".index")
        assert log.start_offset == start
        assert values(log)[-1] == b"v199" + b"x" * 60


@pytest.mark.parametrize("damage", ["smaller-timestamp", "offset-out-of-order", "offset-inside-a-batch"])
def test_verify_reports_a_timeindex_entry_that_would_misdirect_a_lookup(tmp_path, damage):
    path = str(tmp_path / "log")
    with Log(path, segment_bytes=1 << 16, index_interval=256) as log:
        for b in range(60):                           # batches of 5 records, ascending time
            log.append_many([b"r%d.%d" % (b, i) * 10 for i in range(5)], timestamp=1000 + 10 * b)
    assert verify_log(path).ok
    tix = os.path.join(path, SEG0 + ".timeindex")
    with open(tix, "r+b") as f:
        entries = f.read()
        ts2, rel2 = int.from_bytes(entries[24:32], "big"), int.from_bytes(entries[32:36], "big")
        assert rel2 > 0, "the log has fewer than three time-index entries"
        if damage == "smaller-timestamp":
            f.seek(24)
            f.write((ts2 - 1).to_bytes(8, "big"))    # still above entry 1, below its records
            assert ts2 - 1 > int.from_bytes(entries[12:20], "big")
        elif damage == "offset-out-of-order":
            f.seek(32)
            f.write((1).to_bytes(4, "big"))
        else:
            f.seek(32)
            f.write((rel2 - 1).to_bytes(4, "big"))
    report = verify_log(path)
    assert [(p.kind, p.path, p.position) for p in report.problems] == [("index-entry", tix, 24)]
    repair_log(path)
    assert verify_log(path).ok
