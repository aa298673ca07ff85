"""Errors and names under faults: a full disk is DiskFull (never a SIGBUS or a raw
OSError), a read-only filesystem is ReadOnly (or readable with readonly=True), the fd
limit is a StorageError that says which limit, huge integers are InvalidArgument or
OffsetOutOfRange (never OverflowError), names are checked whole, and every C status maps
to the same exception through every module (fastq._core._codec.status_error, the one table)."""
from __future__ import annotations

import errno
import glob
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import fastq
from fastq._core import _codec, _ring, _storage
from fastq.errors import (
    Closed, CorruptRecord, DiskFull, FastqError, InvalidArgument, InvalidName, OffsetOutOfRange,
    PermissionDenied, ReadOnly, RecordTooLarge, RingEmpty, RingFull, StorageError, Timeout,
    TooManyOpenFiles,
)
from fastq.log import Log
from fastq.broker.offsets import OffsetStore

from faultfs import fill

# the children import the fastq this run imports (src/ in a checkout, site-packages for a wheel)
SRC = os.path.dirname(os.path.dirname(os.path.abspath(fastq.__file__)))


def _child(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter: a regression that kills the process with a
    signal shows as a negative return code, not as a dead test runner."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _no_temp_files(root: str) -> list[str]:
    return [p for p in glob.glob(os.path.join(root, "**", "*.tmp.*"), recursive=True)]


# ---- names ------------------------------------------------------------------------------

BAD_NAMES = ["abc\n", "\nabc", "", ".", "..", "a" * 250, "a/b", "\x00", "a\x00b", "ä", " a", 5, None,
             b"abc"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_topic_and_group_names_are_rejected_whole(tmp_path, name):
    with fastq.open(tmp_path / "b") as b:
        with pytest.raises(InvalidName) as ei:
            b.topic(name)
        assert repr(name)[:40] in str(ei.value) or type(name).__name__ in str(ei.value)
        with pytest.raises(InvalidName):
            fastq.validate_name("group", name)
        t = b.topic("t")
        if name is not None:                      # group=None: a consumer without a group
            with pytest.raises(InvalidName):
                t.consumer(group=name)
        with pytest.raises(InvalidName):
            b.alter_topic(name, retention_ms=1)
        with pytest.raises(InvalidName):
            b.delete_topic(name)
        assert b.topics() == ["t"]
        assert sorted(os.listdir(tmp_path / "b" / "topics")) == ["t"]


def test_longest_valid_name_is_accepted(tmp_path):
    with fastq.open(tmp_path / "b") as b:
        assert b.topic("a" * 249).name == "a" * 249
        assert fastq.validate_name("group", "g-1.x_Y") == "g-1.x_Y"


@pytest.mark.parametrize("name", ["abc\n", "", ".", "..", "a" * 201, "a/b", "\x00", 5], ids=repr)
def test_invalid_ring_names_are_rejected_whole(name):
    with pytest.raises(InvalidName):
        _ring.ring_path(name)


# ---- start_offset / recovery_point ------------------------------------------------------

def test_log_start_offset_and_recovery_point_are_read_only_publicly(tmp_path):
    with Log(tmp_path / "l") as lg:
        lg.append(b"x")
        for attr in ("start_offset", "recovery_point"):
            before = getattr(lg, attr)
            with pytest.raises(AttributeError):
                setattr(lg, attr, 5)
            assert getattr(lg, attr) == before


# ---- full disk ----------------------------------------------------------------------------

_COMMIT_ALL = """
    import os, sys
    from fastq.broker.offsets import OffsetStore
    from faultfs import fill
    d = sys.argv[1] if len(sys.argv) > 1 else {d!r}
    with OffsetStore(os.path.join(d, "g.offsets"), 100) as s:
        fill(d, leave=0)
        for p in range(100):
            s.get(p)
            s.put(p, p + 1)
        for p in range(100):
            assert s.get(p) == p + 1, p
    print("ok")
"""


def test_offset_commit_on_full_ext4_disk_is_never_sigbus(ext4_dir):
    r = _child(_COMMIT_ALL.format(d=ext4_dir))
    assert r.returncode != -signal.SIGBUS, "an offset commit on a full disk died of SIGBUS"
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_offset_store_create_and_grow_on_full_disk_is_disk_full(ext4_dir):
    code = """
        import os
        from fastq.broker.offsets import OffsetStore
        from fastq.errors import DiskFull
        from faultfs import fill
        d = {d!r}
        with OffsetStore(os.path.join(d, "small.offsets"), 1) as s:
            s.put(0, 1)
        release = fill(d, leave=0)
        for name, n in (("small.offsets", 4000), ("new.offsets", 4000)):
            try:
                OffsetStore(os.path.join(d, name), n).close()
                print(name, "opened")
            except DiskFull as e:
                print(name, "DiskFull", e.filename)
        release()
        with OffsetStore(os.path.join(d, "small.offsets"), 4000) as s:
            s.put(3999, 7)
            assert s.get(3999) == 7 and s.get(0) == 1
        print([n for n in os.listdir(d) if ".tmp." in n])
    """.format(d=ext4_dir)
    r = _child(code)
    assert r.returncode == 0, (r.returncode, r.stderr)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("small.offsets DiskFull") and "small.offsets" in lines[0]
    assert lines[1].startswith("new.offsets DiskFull")
    assert lines[2] == "[]"


def test_topic_creation_on_full_disk_is_disk_full_and_leaves_no_temp_file(tmpfs_dir):
    with fastq.open(os.path.join(tmpfs_dir, "b")) as b:
        release = fill(tmpfs_dir, leave=0)
        try:
            with pytest.raises(DiskFull) as ei:
                b.topic("t")
            assert ei.value.errno == errno.ENOSPC
            assert "t" in str(ei.value)
            assert _no_temp_files(tmpfs_dir) == []
        finally:
            release()
        b.topic("t").publish(b"after the disk has room again")


def test_fastq_open_on_full_disk_is_disk_full(tmpfs_dir):
    release = fill(tmpfs_dir, leave=0)
    try:
        with pytest.raises(DiskFull):
            fastq.open(os.path.join(tmpfs_dir, "b"))
        with pytest.raises(DiskFull):
            Log(os.path.join(tmpfs_dir, "l"))
        assert _no_temp_files(tmpfs_dir) == []
    finally:
        release()


@pytest.mark.parametrize("fs", ["tmpfs_dir", "ext4_dir"])
def test_group_join_on_full_disk_is_disk_full(request, fs):
    tmpfs_dir = request.getfixturevalue(fs)
    with fastq.open(os.path.join(tmpfs_dir, "b")) as b:
        t = b.topic("t", segment_bytes=1 << 16)
        t.publish(b"x")
        release = fill(tmpfs_dir, leave=0)
        try:
            with pytest.raises(DiskFull):
                t.consumer(group="g")
            assert _no_temp_files(tmpfs_dir) == []
        finally:
            release()
        with t.consumer(group="g") as c:
            assert [r.value.tobytes() for r in c.poll(timeout=1)] == [b"x"]


def test_memory_topic_without_room_in_shared_memory_is_disk_full(tmp_path, tmpfs_dir, monkeypatch):
    """Rings live in shm_dir() (/dev/shm): here an 8 MiB tmpfs stands in for it, so a
    16 MiB memory topic finds no room on every machine, whatever its /dev/shm size."""
    import fastq._core._ring

    monkeypatch.setattr(fastq._core._ring, "shm_dir", lambda: tmpfs_dir)
    with fastq.open(tmp_path / "b") as b:
        with pytest.raises(DiskFull) as ei:
            b.topic("m", storage="memory", capacity_bytes=16 << 20)
        assert ei.value.errno == errno.ENOSPC and "shared memory" in str(ei.value)
        assert os.listdir(tmpfs_dir) == []          # no half-made ring left in shared memory


def test_memory_topic_state_on_full_disk_is_disk_full(tmpfs_dir):
    with fastq.open(os.path.join(tmpfs_dir, "b")) as b:
        b.topic("m", storage="memory", capacity_bytes=1 << 16, create=True).close()
        os.unlink(os.path.join(tmpfs_dir, "b", "topics", "m", "memory.state"))
        release = fill(tmpfs_dir, leave=0)
        try:
            with pytest.raises(DiskFull):
                b.topic("m")
        finally:
            release()


# ---- read-only filesystems --------------------------------------------------------------

def _remount(path: str, mode: str) -> None:
    r = subprocess.run(["mount", "-o", f"remount,{mode}", path], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"needs to remount the test's own tmpfs {mode} (root on Linux; CI runs as root): "
                    f"mount said {r.stderr.strip()!r}")


@pytest.fixture
def archived(tmpfs_dir):
    """A broker with a 2-partition topic of 10 records and a bare log, on a filesystem
    remounted read-only."""
    bdir = os.path.join(tmpfs_dir, "b")
    with fastq.open(bdir) as b:
        t = b.topic("t", partitions=2, segment_bytes=1 << 16)
        for i in range(10):
            t.publish(b"v%d" % i, partition=i % 2)
    with Log(os.path.join(tmpfs_dir, "l"), segment_bytes=1 << 16) as lg:
        lg.append_many([b"a", b"b", b"c"])
    _remount(tmpfs_dir, "ro")
    try:
        yield tmpfs_dir
    finally:
        _remount(tmpfs_dir, "rw")


def test_read_only_filesystem_open_is_read_only_error_not_erofs(archived):
    for create in (True, False):
        with pytest.raises(ReadOnly) as ei:
            fastq.open(os.path.join(archived, "b"), create=create).topic("t").publish(b"x")
        assert ei.value.errno == errno.EROFS
        assert "readonly=True" in str(ei.value)
        with pytest.raises(ReadOnly):
            Log(os.path.join(archived, "l"), create=create)


def test_readonly_open_reads_an_archived_log_without_writing(archived):
    with fastq.open(os.path.join(archived, "b"), readonly=True) as b:
        assert b.topics() == ["t"]
        t = b.topic("t")
        got = sorted(r.value.tobytes() for p in (0, 1) for r in t.read(p, 0))
        assert got == sorted(b"v%d" % i for i in range(10))
        assert t.end_offsets() == {0: 5, 1: 5}
        with t.consumer() as c:
            assert len(c.poll(timeout=0)) == 10
        with pytest.raises(ReadOnly):
            t.publish(b"x")
        with pytest.raises(ReadOnly):
            b.topic("new")
        with pytest.raises(ReadOnly):
            t.consumer(group="g")
    with Log(os.path.join(archived, "l"), readonly=True) as lg:
        assert [r.value.tobytes() for r in lg.read(0)] == [b"a", b"b", b"c"]
        assert (lg.start_offset, lg.end_offset) == (0, 3)
        assert lg.offset_for_timestamp(0) == 0
        with pytest.raises(ReadOnly):
            lg.append(b"x")
        with pytest.raises(ReadOnly):
            lg.truncate(0)


def test_readonly_open_of_a_missing_log_is_log_not_found(tmp_path):
    with pytest.raises(fastq.LogNotFound):
        Log(tmp_path / "none", readonly=True)
    with pytest.raises(fastq.LogNotFound):
        fastq.open(tmp_path / "none", readonly=True)
    assert not os.path.exists(tmp_path / "none")


def test_readonly_open_writes_nothing(tmp_path):
    bdir = tmp_path / "b"
    with fastq.open(bdir) as b:
        b.topic("t").publish(b"x")

    def snapshot():
        out = {}
        for root, _, files in os.walk(bdir):
            for f in files:
                p = os.path.join(root, f)
                with open(p, "rb") as fh:
                    out[p] = (os.stat(p).st_mtime_ns, fh.read())
        return out

    before = snapshot()
    with fastq.open(bdir, readonly=True) as b:
        assert [r.value.tobytes() for r in b.topic("t").read(0, 0)] == [b"x"]
    assert snapshot() == before


# ---- the fd limit -------------------------------------------------------------------------

def test_fd_limit_is_a_storage_error_naming_the_limit(tmp_path):
    code = """
        import resource, fastq
        from fastq.errors import StorageError
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        with fastq.open({d!r}) as b:
            t = b.topic("t", partitions=64, segment_bytes=1 << 16)
            try:
                for p in range(64):
                    t.publish(b"x", partition=p)
                print("no error")
            except StorageError as e:
                print(type(e).__name__, e.errno, e)
    """.format(d=str(tmp_path / "b"))
    r = _child(code)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("TooManyOpenFiles 24"), out
    assert "RLIMIT_NOFILE" in out and "64" in out and "ulimit -n" in out


# ---- huge integers --------------------------------------------------------------------

@pytest.mark.parametrize("big", [2**63, 2**64, 2**70, -2**63 - 1, -2**70])
def test_huge_offsets_and_timestamps_are_invalid_argument_not_overflow(tmp_path, big):
    with fastq.open(tmp_path / "b") as b:
        t = b.topic("t")
        t.publish(b"x", timestamp=1000)
        lg = t.log(0)
        calls = {
            "Log.read": lambda: lg.read(big),
            "Log.read end": lambda: [r.offset for r in lg.read(0, big)],
            "Log.wait": lambda: lg.wait(big, timeout=0),
            "Log.truncate": lambda: lg.truncate(big),
            "Log.offset_for_timestamp": lambda: lg.offset_for_timestamp(big),
            "Log.append timestamp": lambda: lg.append(b"x", timestamp=big),
            "Topic.read": lambda: t.read(0, big),
            "Topic.read timestamp": lambda: [r.offset for r in t.read(0, timestamp=big)],
            "Topic.publish timestamp": lambda: t.publish(b"x", timestamp=big),
            "Topic.publish_many timestamp": lambda: t.publish_many([b"x"], timestamp=big),
            "Topic.publish partition": lambda: t.publish(b"x", partition=big),
            "LogReader.read_many": lambda: [r.offset for r in lg.read(0).read_many(big)],
            "LogReader.read_values": lambda: lg.read(0).read_values(big),
        }
        # calls where a huge value has a meaning: an end past 2**63 is no end; no record
        # is later than 2**63 ms, every record is later than -2**63
        answers = {"Log.read end": [0] if big > 0 else [],
                   "Log.offset_for_timestamp": None if big > 0 else 0,
                   "Topic.read timestamp": [] if big > 0 else [0],
                   "LogReader.read_many": [0] if big > 0 else [],       # a huge count: no limit
                   "LogReader.read_values": [b"x"] if big > 0 else []}
        for what, call in calls.items():
            try:
                r = call()
            except (InvalidArgument, OffsetOutOfRange) as e:
                assert str(abs(big)) in str(e), (what, e)     # the message names the value
                continue
            except OverflowError as e:
                pytest.fail(f"{what}({big}) raised OverflowError: {e}")
            assert what in answers and r == answers[what], (what, r)
        with t.consumer() as c:
            for what, call in {"seek": lambda: c.seek(0, big),
                               "seek_to_timestamp": lambda: c.seek_to_timestamp(big)}.items():
                try:
                    call()
                    c.poll(timeout=0)
                except (InvalidArgument, OffsetOutOfRange):
                    pass
                except OverflowError as e:
                    pytest.fail(f"Consumer.{what}({big}) raised OverflowError: {e}")


# ---- one status mapping -------------------------------------------------------------------

FQ = {"FQ_ECORRUPT": -10001, "FQ_ETRUNCATED": -10002, "FQ_ETOOBIG": -10003, "FQ_EINVAL": -10004,
      "FQ_EFULL": -10005, "FQ_EEMPTY": -10006, "FQ_ETIMEDOUT": -10007, "FQ_ECLOSED": -10008,
      "FQ_EUNSUPPORTED": -10009, "FQ_EMAGIC": -10010}

# status -> (no operation, a ring put, a ring get)
EXPECTED = {
    FQ["FQ_ECORRUPT"]: (CorruptRecord,) * 3,
    FQ["FQ_ETRUNCATED"]: (CorruptRecord,) * 3,
    FQ["FQ_EMAGIC"]: (CorruptRecord,) * 3,
    FQ["FQ_ETOOBIG"]: (RecordTooLarge,) * 3,
    FQ["FQ_EINVAL"]: (InvalidArgument,) * 3,
    FQ["FQ_EFULL"]: (FastqError, RingFull, RingFull),
    FQ["FQ_EEMPTY"]: (FastqError, RingEmpty, RingEmpty),
    FQ["FQ_ETIMEDOUT"]: (Timeout, RingFull, RingEmpty),
    FQ["FQ_ECLOSED"]: (Closed,) * 3,
    FQ["FQ_EUNSUPPORTED"]: (FastqError,) * 3,
    -errno.ENOSPC: (DiskFull,) * 3,
    -errno.EDQUOT: (DiskFull,) * 3,
    -errno.EIO: (StorageError,) * 3,
    -errno.EROFS: (ReadOnly,) * 3,
    -errno.EMFILE: (TooManyOpenFiles,) * 3,
    -errno.ENFILE: (TooManyOpenFiles,) * 3,
    -errno.EACCES: (PermissionDenied,) * 3,
    -errno.EPERM: (PermissionDenied,) * 3,
    -12345: (FastqError,) * 3,
}


@pytest.mark.parametrize("rc", sorted(EXPECTED), ids=str)
def test_one_status_mapping_for_every_code_through_every_module(rc):
    no_op, put, get = EXPECTED[rc]
    got = {
        "codec": _codec._status_error(rc, "op", "/p/f", 12),
        "codec put": _codec._status_error(rc, "op", None, None, "put"),
        "codec get": _codec._status_error(rc, "op", None, None, "get"),
        "storage": _storage._status_error(rc, "op", "/p/f", 12),
        "ring put": _ring._status_error(rc, "put", "a 5-byte message"),
        "ring get": _ring._status_error(rc, "get", "a message"),
        "ring open": _ring._status_error(rc, "", "mapping 4096 bytes"),
    }
    want = {"codec": no_op, "codec put": put, "codec get": get, "storage": no_op,
            "ring put": put, "ring get": get, "ring open": no_op}
    for where, exc in got.items():
        assert type(exc) is want[where], (where, rc, exc)
        assert isinstance(exc, FastqError)
        if -4096 < rc < 0:
            assert isinstance(exc, OSError) and exc.errno == -rc, (where, exc)
            assert os.strerror(-rc) in str(exc)
    # the same status, the same class, the same words, whichever module raised it
    assert type(got["codec"]) is type(got["storage"]) is type(got["ring open"])
    assert "/p/f" in str(got["codec"]) and "/p/f" in str(got["storage"])
    if type(got["codec"]) is CorruptRecord:
        assert got["codec"].path == got["storage"].path == "/p/f"
        assert got["codec"].position == got["storage"].position == 12


def test_fd_exhaustion_status_says_which_limit():
    e = _codec._status_error(-errno.EMFILE, "open segment", "/x/0.log", None)
    assert type(e).__name__ == "TooManyOpenFiles"
    assert "RLIMIT_NOFILE" in str(e) and "ulimit -n" in str(e)
    e = _codec._status_error(-errno.ENFILE, "open segment", "/x/0.log", None)
    assert "fs.file-max" in str(e)


def test_new_exception_classes_are_public_and_catchable_as_stdlib_errors():
    for name in ("ReadOnly", "PermissionDenied", "TooManyOpenFiles"):
        assert name in fastq.__all__ and getattr(fastq, name) is getattr(fastq.errors, name)
    assert issubclass(fastq.ReadOnly, StorageError) and issubclass(fastq.ReadOnly, OSError)
    assert issubclass(fastq.PermissionDenied, PermissionError)
    assert issubclass(fastq.TooManyOpenFiles, StorageError)


def test_segment_file_names_are_matched_whole(tmp_path):
    with Log(tmp_path / "l", segment_bytes=1 << 16) as lg:
        lg.append(b"x")
    (tmp_path / "l" / ("0" * 19 + "5.log\n")).write_bytes(b"")
    with Log(tmp_path / "l") as lg:
        assert lg._segment_bases() == [0]          # "$" took the newline name for segment 5
        assert [r.value.tobytes() for r in lg.read(0)] == [b"x"]
    odd = "\u0665" * 20 + ".log"                   # Arabic-Indic digits: \d matched them
    (tmp_path / "l" / odd).write_bytes(b"")
    with pytest.raises(CorruptRecord) as ei:
        Log(tmp_path / "l")
    assert repr(odd) in str(ei.value)


def test_shared_state_setters_refuse_without_the_writer_lock(tmp_path):
    with Log(tmp_path / "l") as lg:
        lg.append(b"x")
        with pytest.raises(AssertionError, match="writer lock"):
            lg._store_start_offset(1)
        with pytest.raises(AssertionError, match="writer lock"):
            lg._store_recovery_point(0)
        assert (lg.start_offset, lg.recovery_point) == (0, lg.recovery_point)
        lg._lock_py()
        try:
            lg._store_recovery_point(lg.recovery_point)      # holder may
        finally:
            lg._unlock_py()


_SWEEP = """
    import os, shutil
    import fastq
    from fastq.errors import DiskFull
    from faultfs import fill, free_bytes
    root = {d!r}

    def scenario(d):
        with fastq.open(d) as b:
            t = b.topic("t", partitions=3, segment_bytes=1 << 16)
            for p in range(3):
                t.publish(b"x" * 100, partition=p)
            with t.consumer(group="g") as c:
                c.poll(timeout=0)
                c.commit()
            m = b.topic("m", storage="memory", capacity_bytes=1 << 16)
            m.publish(b"y")
            return free_bytes(root)

    before = free_bytes(root)
    used = before - scenario(os.path.join(root, "probe"))
    shutil.rmtree(os.path.join(root, "probe"))
    # every allocation of the scenario, the small late ones (offsets, member and memory
    # state files, topic.json) included: leave 0 .. used + 8 KiB, finest near the end
    leaves = sorted({{0, 4096, used // 4, used // 2}} | set(range(max(used - 96 * 1024, 0), used + 8192, 1024)))
    outcomes = []
    for leave in leaves:
        d = os.path.join(root, "b%d" % leave)
        release = fill(root, leave=leave)
        try:
            scenario(d)
            outcomes.append("ok")
        except DiskFull:
            outcomes.append("DiskFull")
        finally:
            release()
        try:                   # what a failed run left behind must not break the next one
            scenario(d)
        except Exception as e:
            outcomes[-1] += "-then-" + type(e).__name__
        shutil.rmtree(d, ignore_errors=True)
    print(used)
    print(" ".join("%d:%s" % x for x in zip(leaves, outcomes)))
"""


def test_full_disk_at_any_point_of_open_and_first_use_is_disk_full_never_a_signal(ext4_dir):
    """Fill the disk to leave 0 B up to just more than what opening a broker, a
    3-partition topic, a committing group consumer and a memory topic needs (1 KiB
    steps over the last 96 KiB, where the small files are made), and run them: every
    file fastq maps (state, notifier, indexes, segments, offsets, memory state) is
    allocated before it is mapped, so each run either works or raises DiskFull; none
    dies of SIGBUS or raises a raw OSError. Once the disk has room again, the same
    scenario on what the failed run left behind works."""
    r = _child(_SWEEP.format(d=ext4_dir), timeout=300)
    assert r.returncode >= 0, f"killed by signal {-r.returncode}: {r.stderr[-2000:]}"
    assert r.returncode == 0, r.stderr[-2000:]
    used, runs = r.stdout.splitlines()
    outcomes = [x.split(":")[1] for x in runs.split()]
    print(f"the scenario allocates {used} bytes; outcomes by bytes left: {runs}")
    assert set(outcomes) <= {"ok", "DiskFull"}
    assert outcomes[0] == "DiskFull" and outcomes[-1] == "ok"


def test_readonly_broker_refuses_every_write_with_read_only(tmp_path):
    bdir = tmp_path / "b"
    with fastq.open(bdir) as b:
        b.topic("t", partitions=1).publish(b"x")
        b.topic("m", storage="memory", capacity_bytes=1 << 16)
    with fastq.open(bdir, readonly=True) as b:
        t = b.topic("t")
        assert t.readonly and t.log(0).readonly
        refusals = {
            "memory topic": lambda: b.topic("m"),
            "create topic": lambda: b.topic("new"),
            "alter topic": lambda: b.alter_topic("t", retention_ms=1),
            "delete topic": lambda: b.delete_topic("t"),
            "producer": lambda: t.producer(),
            "group consumer": lambda: t.consumer(group="g"),
            "maintain": lambda: t.maintain(),
            "publish_many": lambda: t.publish_many([b"a", b"b"]),
            "roll": lambda: t.log(0).roll(),
            "retention": lambda: t.log(0).enforce_retention(),
        }
        for what, call in refusals.items():
            with pytest.raises(ReadOnly) as ei:
                call()
            assert "readonly" in str(ei.value) or "read-only" in str(ei.value), (what, ei.value)
        with pytest.raises(fastq.UnknownTopic):
            b.topic("new", create=False)
        assert b.topics() == ["m", "t"]
    with fastq.open(bdir) as b:                       # and nothing changed for writers
        assert [r.value.tobytes() for r in b.topic("t").read(0)] == [b"x"]


def test_os_errors_maps_by_errno_and_names_the_file():
    from fastq._core._codec import os_errors as _os_errors
    with pytest.raises(DiskFull) as ei:
        with _os_errors("write", "/x/topic.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert ei.value.filename == "/x/topic.json" and "write" in str(ei.value)
    assert isinstance(ei.value.__cause__, OSError)
    with pytest.raises(OSError) as ei:               # no errno: left as it is
        with _os_errors("write", "/x"):
            raise OSError("no errno")
    assert type(ei.value) is OSError
    with pytest.raises(Closed):                      # fastq errors pass through
        with _os_errors("write", "/x"):
            raise Closed("closed")


def test_offset_store_grow_cut_short_by_a_full_disk_changes_nothing(ext4_dir):
    """fallocate on a nearly full ext4 keeps what it got and extends the file by it
    before ENOSPC: a failed grow puts the size back (the file is as before), and the
    grow works once the disk has room."""
    code = """
        import os
        from fastq.broker.offsets import OffsetStore
        from fastq.errors import DiskFull
        from faultfs import fill
        d = {d!r}
        out = []
        for leave in (3 * 1024, 10 * 1024, 50 * 1024):
            path = os.path.join(d, "g%d.offsets" % leave)
            with OffsetStore(path, 1) as s:
                s.put(0, 5)
            release = fill(d, leave=leave)
            try:
                OffsetStore(path, 4000).close()
                out.append("opened")
            except DiskFull:
                out.append("DiskFull")
            finally:
                release()
            out.append(str(os.path.getsize(path)))
            with OffsetStore(path, 4000) as s:
                assert s.get(0) == 5
                s.put(3999, 9)
            os.unlink(path)
        print(" ".join(out))
    """.format(d=ext4_dir)
    r = _child(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["DiskFull", "128"] * 3      # 64-byte header + 1 slot, as before


def test_readonly_open_of_a_log_whose_active_file_is_short_refuses_instead_of_sigbus(tmp_path):
    with Log(tmp_path / "l", segment_bytes=1 << 16) as lg:
        lg.append_many([b"a" * 500] * 20)
        active = lg.segments()[-1]["path"]
    os.truncate(active, 1024)                 # shorter than the committed end
    code = """
        from fastq.log import Log
        from fastq.errors import ReadOnly
        try:
            with Log({d!r}, readonly=True) as lg:
                print("read", sum(1 for _ in lg.read(0)))
        except ReadOnly as e:
            print("ReadOnly", e)
    """.format(d=str(tmp_path / "l"))
    r = _child(code)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.startswith("ReadOnly") and "needs recovery" in r.stdout
