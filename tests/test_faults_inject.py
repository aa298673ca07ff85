"""Injected system-call failures at every fault point, under every operation that reaches
it: the error is a clear FastqError subclass, nothing acknowledged is lost or skipped,
and the log (or broker) works again once the fault is gone.

The C points (``fastq._core._storage.FAULT_POINTS``: open, stat, preallocate, map, datasync,
msync, fsync_dir, flock) are armed with ``faultfs.c_fault``; the system calls fastq's
Python modules make (``os.open``/``os.write``/``os.fsync``/``os.replace``/``os.unlink``)
with ``faultfs.os_fault``. ``REACHES`` is the matrix of which C point each operation
reaches; ``test_fault_matrix_is_complete`` checks it against a dry run, so a new system
call on a path shows up here. Each (operation, point, errno) case fails the point's
first, middle and last call in turn (every call with FASTQ_TORTURE=1).

What every case asserts:
- the operation raises FsyncFailed for a failed fsync/msync (datasync, msync, fsync_dir),
  DiskFull for ENOSPC/EDQUOT, StorageError for anything else — never a raw OSError;
- after a failed fsync the log is failed: the next append raises FsyncFailed without
  another fsync (fsyncgate), until it is reopened;
- after any other error the same object appends and reads again once the fault clears;
- reopened, the log holds every record whose append returned, at the offset it
  returned, with dense offsets (records that raised may or may not be there).

FASTQ_TORTURE=1 adds a randomized sweep (random operation, point, errno, call), seed
printed.
"""
from __future__ import annotations

import errno
import os
import random
import threading

import pytest

import fastq
from faultfs import c_fault, os_fault
from fastq._core import _storage
from fastq.log import config as fastq_log_config
from fastq.log import log as fastq_log
from fastq.broker import offsets as fastq_offsets
from fastq.errors import DiskFull, FastqError, FsyncFailed, StorageError
from fastq.log import Log

TORTURE = os.environ.get("FASTQ_TORTURE") == "1"
FSYNC_POINTS = {"datasync", "msync", "fsync_dir"}
ERRNOS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}
VALUE = b"v" * 100
BIG = b"b" * 1000
HUGE = b"h" * (128 << 10)
ANY = None          # an acknowledged offset whose value the test does not know


@pytest.fixture(autouse=True)
def _disarm():
    _storage._fault_clear()
    yield
    _storage._fault_clear()


# ---------------------------------------------------------------------------------------
# the operations: prepare (no fault) -> act (fault armed) -> check
# ---------------------------------------------------------------------------------------

class Case:
    """One run of an operation: the logs it touches and what was acknowledged."""

    def __init__(self, root: str):
        self.root = root
        self.log: Log | None = None          # the bare log acted on (None for broker ops)
        self.broker = None
        self.topic = None
        self.acked: dict[str, dict[int, bytes]] = {}   # log dir -> offset -> value
        self.log_dirs: list[str] = []

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "log")

    def ack(self, path: str, offset: int, value: bytes | None) -> None:
        self.acked.setdefault(path, {})[offset] = value

    def open_log(self, **kw) -> Log:
        self.log = Log(self.log_path, **kw)
        if self.log_path not in self.log_dirs:
            self.log_dirs.append(self.log_path)
        return self.log

    def append(self, value: bytes = VALUE) -> None:
        off = self.log.append(value)
        self.ack(self.log_path, off, value)

    def open_broker(self, partitions: int = 2, durability: str = "group"):
        self.broker = fastq.open(os.path.join(self.root, "broker"), durability=durability)
        self.topic = self.broker.topic("t", partitions=partitions, segment_bytes=4096)
        self.log_dirs = [os.path.join(self.broker.path, "topics", "t", str(p)) for p in range(partitions)]
        return self.topic

    def publish(self, value: bytes, partition: int) -> None:
        meta = self.topic.publish(value, partition=partition)
        self.ack(self.log_dirs[meta.partition], meta.offset, value)

    def close(self) -> None:
        """Close what is open; a failed log closes without raising."""
        if self.broker is not None:
            self.broker.close()
        if self.log is not None:
            self.log.close()


def _prep_log(durability, pretouch=True, **kw):
    def prep(c: Case):
        c.open_log(durability=durability, **kw)
        if not pretouch:
            # how far ahead the file grows depends on the pretoucher thread's timing
            # (fastq.log._Pretoucher): without it the calls are the same every run
            c.log._pretouch = None
        for _ in range(3):
            c.append()
    return prep


def act_append(c: Case):
    for _ in range(4):
        c.append()


def act_append_many(c: Case):
    for _ in range(2):
        vals = [VALUE + bytes([i]) for i in range(5)]
        base = c.log.append_many(vals)
        for i, v in enumerate(vals):
            c.ack(c.log_path, base + i, v)


def act_roll(c: Case):
    c.log.roll()
    c.append()


def act_append_rolling(c: Case):
    for _ in range(8):                     # 4 KiB segments: rolls every few appends
        c.append(BIG)


def act_append_growing(c: Case):
    for _ in range(12):                    # 1.5 MiB into one segment: grows its file
        c.append(HUGE)


def act_group_commit(c: Case):
    errors = []

    def worker(k):
        try:
            for i in range(4):
                v = VALUE + bytes([k, i])
                off = c.log.append(v)
                c.ack(c.log_path, off, v)
        except BaseException as e:     # noqa: BLE001 - handed to the main thread
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:     # every thread's error must be the clear one: raise an odd one first
        odd = [e for e in errors if not isinstance(e, FsyncFailed)]
        raise (odd or errors)[0]


def act_flush(c: Case):
    c.append()
    c.log.flush()


def act_close(c: Case):
    c.append()
    lg, c.log = c.log, None
    try:
        lg.close()
    finally:
        c.log = lg if not lg.closed else None


def prep_nothing(c: Case):
    pass


def act_create_log(c: Case):
    c.open_log(durability="always")
    c.append()


def prep_closed_log(c: Case):
    _prep_log("group")(c)
    c.log.close()
    c.log = None


def act_reopen_log(c: Case):
    c.open_log()
    c.append()


def prep_retention(c: Case):
    c.open_log(durability="os", segment_bytes=4096, retention_bytes=8192)
    for _ in range(6):
        c.append(BIG)


def act_retention(c: Case):
    for _ in range(6):
        c.append(BIG)
    c.log.enforce_retention()


def act_topic_open(c: Case):
    c.open_broker()
    c.publish(VALUE, 0)
    c.publish(VALUE, 1)


def prep_topic(c: Case):
    c.open_broker()
    c.publish(VALUE, 0)
    c.publish(VALUE, 1)


def act_producer_drain(c: Case):
    done = []
    p = c.topic.producer(linger_ms=0, on_delivery=done.append)
    try:
        for i in range(6):
            p.send(VALUE + bytes([i]), partition=i % 2)
        p.flush()
    finally:
        try:
            p.close()
        finally:
            for m in done:     # RecordMetadata has no value: the record must exist
                c.ack(c.log_dirs[m.partition], m.offset, ANY)


OPS = {
    # name: (prepare, act)
    "append-os": (_prep_log("os"), act_append),
    "append-group": (_prep_log("group"), act_append),
    "append-always": (_prep_log("always"), act_append),
    "append_many": (_prep_log("group"), act_append_many),
    "roll": (_prep_log("group", segment_bytes=4096), act_roll),
    "append-rolling": (_prep_log("os", segment_bytes=4096), act_append_rolling),
    "append-growing": (_prep_log("os", segment_bytes=8 << 20, pretouch=False), act_append_growing),
    "group-commit": (_prep_log("group"), act_group_commit),
    "flush": (_prep_log("os"), act_flush),
    "close": (_prep_log("group"), act_close),
    "create-log": (prep_nothing, act_create_log),
    "reopen-log": (prep_closed_log, act_reopen_log),
    "retention": (prep_retention, act_retention),
    "topic-open": (prep_nothing, act_topic_open),
    "producer-drain": (prep_topic, act_producer_drain),
}

# The C fault points each operation reaches (checked by test_fault_matrix_is_complete).
REACHES = {
    "append-os": set(),
    "append-group": {"datasync"},
    "append-always": {"datasync"},
    "append_many": {"datasync"},
    "roll": {"open", "stat", "preallocate", "map", "datasync", "fsync_dir"},
    "append-rolling": {"open", "stat", "preallocate", "map"},
    "append-growing": {"open", "stat", "preallocate"},
    "group-commit": {"datasync"},
    "flush": {"datasync"},
    "close": {"datasync", "msync", "flock"},
    "create-log": {"open", "stat", "preallocate", "map", "datasync", "msync", "fsync_dir", "flock"},
    "reopen-log": {"open", "stat", "preallocate", "map", "msync", "flock", "datasync"},
    "retention": {"open", "stat", "preallocate", "map"},
    "topic-open": {"open", "stat", "preallocate", "map", "msync", "fsync_dir", "flock", "datasync"},
    "producer-drain": {"datasync"},
}
# Operations whose number of calls depends on thread timing: fail their first call only.
NONDETERMINISTIC = {"group-commit"}


def run_dry(root: str, op: str) -> dict[str, int]:
    """Run ``op`` with every point armed to fail never; return the calls per point."""
    prep, act = OPS[op]
    c = Case(root)
    prep(c)
    try:
        for p in _storage.FAULT_POINTS:
            _storage._fault_inject(p, errno.EIO, 1 << 40, 1)
        try:
            act(c)
            calls = {p: _storage._fault_calls(p) for p in _storage.FAULT_POINTS}
        finally:
            _storage._fault_clear()
    finally:
        c.close()
    return {p: n for p, n in calls.items() if n}


def expected_error(point: str, err: int):
    if point in FSYNC_POINTS:
        return FsyncFailed
    return DiskFull if err in (errno.ENOSPC, errno.EDQUOT) else StorageError


def check_error(exc: BaseException, want: type) -> None:
    assert isinstance(exc, FastqError), f"raw {type(exc).__name__}: {exc!r}"
    assert isinstance(exc, want), f"expected {want.__name__}, got {type(exc).__name__}: {exc}"
    if want is StorageError:
        assert not isinstance(exc, (DiskFull, FsyncFailed)), repr(exc)


def check_after(c: Case, exc: BaseException | None) -> None:
    """The fault is cleared: the same log refuses (failed fsync) or works; then close,
    reopen every log, and check every acknowledged record and a fresh append."""
    lg = c.log
    if lg is not None and not lg.closed and exc is not None and isinstance(exc, FsyncFailed):
        pytest.fail(f"the log is still open after {exc!r}: a failed fsync must fail it")
    if lg is not None and exc is not None:
        if isinstance(exc, FsyncFailed):
            before = _storage._fault_calls("datasync")
            with pytest.raises(FsyncFailed):
                lg.append(b"after-failure")
            assert _storage._fault_calls("datasync") == before
        elif not lg.closed:
            c.append(b"after-clear")                 # usable again, same object
            assert bytes(next(iter(lg.read(lg.end_offset - 1))).value) == b"after-clear"
    if c.topic is not None and exc is not None and not isinstance(exc, FsyncFailed) and not c.topic.closed:
        c.publish(b"after-clear", 0)
    c.close()
    for d in c.log_dirs:
        if not os.path.isdir(d):
            continue
        with Log(d) as lg2:
            recs = [(r.offset, bytes(r.value)) for r in lg2]
            offs = [o for o, _ in recs]
            assert offs == list(range(lg2.start_offset, lg2.start_offset + len(offs))), f"{d}: offsets {offs}"
            have = dict(recs)
            for off, v in sorted(c.acked.get(d, {}).items()):
                if off < lg2.start_offset:          # retention may delete acked records
                    continue
                assert off in have and (v is ANY or have[off] == v), \
                    f"{d}: acknowledged record at offset {off} lost or changed"
            off = lg2.append(b"fresh")
            assert bytes(next(iter(lg2.read(off))).value) == b"fresh"


def run_case(root: str, op: str, point: str, err: int, after: int) -> int:
    """Fail call `after` of `point` during `op`; check everything. Returns the hits."""
    prep, act = OPS[op]
    c = Case(root)
    prep(c)
    exc = None
    try:
        with c_fault(point, err, after, 1) as hits:
            try:
                act(c)
            except Exception as e:   # noqa: BLE001 - checked below
                exc = e
            n = hits()
        if n:
            assert exc is not None, f"{op}: the injected {errno.errorcode[err]} at {point} call {after} was swallowed"
            check_error(exc, expected_error(point, err))
        elif exc is not None:
            raise exc
        check_after(c, exc)
    finally:
        c.close()
    return n


def _cases():
    for op, points in REACHES.items():
        for point in sorted(points):
            for name in ERRNOS:
                yield pytest.param(op, point, name, id=f"{op}-{point}-{name}")


@pytest.mark.parametrize("op,point,errname", list(_cases()))
def test_injected_fault_is_clear_and_loses_no_acked_record(tmp_path, op, point, errname):
    calls = run_dry(str(tmp_path / "dry"), op)
    n = calls.get(point, 0)
    assert n > 0, f"{op} no longer reaches {point}: update REACHES"
    if op in NONDETERMINISTIC:
        nth = [0]
    elif TORTURE:
        nth = range(n)
    else:
        nth = sorted({0, n // 2, n - 1})
    for k in nth:
        hits = run_case(str(tmp_path / f"run{k}"), op, point, ERRNOS[errname], k)
        assert hits == 1, f"{op}: call {k} of {point} ({n} calls in the dry run) was not reached"


def test_fault_matrix_is_complete(tmp_path):
    """REACHES lists exactly the C points each operation calls."""
    got = {op: set(run_dry(str(tmp_path / op), op)) for op in OPS}
    assert got == REACHES


@pytest.mark.parametrize("point", [
    "flock", "msync",
    "open", "stat", "preallocate", "map", "fsync_dir",
])
def test_injected_fault_error_names_the_file(tmp_path, point):
    """Creating a log reaches every point but datasync; whichever fails, the error says
    which file (or directory) it was about."""
    with c_fault(point, errno.EIO):
        with pytest.raises(StorageError) as ei:
            Log(str(tmp_path / "log"), durability="always")
    assert str(tmp_path / "log") in str(ei.value), f"error names no file: {ei.value}"


def test_edquot_is_disk_full(tmp_path):
    c = Case(str(tmp_path))
    _prep_log("os", segment_bytes=4096)(c)
    try:
        with c_fault("preallocate", errno.EDQUOT):
            with pytest.raises(DiskFull):
                act_append_rolling(c)
        check_after(c, DiskFull())
    finally:
        c.close()


def test_fault_hook_counts_and_clears(tmp_path):
    """after/times select which calls fail; clear disarms."""
    with Log(str(tmp_path / "l"), durability="always") as lg:
        _storage._fault_inject("datasync", errno.EIO, after=2, times=1)
        lg.append(b"a")
        lg.append(b"b")
        assert _storage._fault_hits("datasync") == 0
        with pytest.raises(FsyncFailed):
            lg.append(b"c")
        assert _storage._fault_hits("datasync") == 1
        assert _storage._fault_calls("datasync") == 3
        _storage._fault_clear()
        assert _storage._fault_calls("datasync") == 0
    with pytest.raises(fastq.errors.InvalidArgument):
        _storage._fault_inject("write", errno.EIO)
    with pytest.raises(fastq.errors.InvalidArgument):
        _storage._fault_inject("open", 0)


# ---------------------------------------------------------------------------------------
# Python-level system calls
# ---------------------------------------------------------------------------------------

PY_CASES = [
    # (module, os function, operation, path filter)
    pytest.param(fastq_log_config, "open", "create-log", "log.json"),     # write_json_atomic
    pytest.param(fastq_log_config, "write", "create-log", None),
    pytest.param(fastq_log_config, "fsync", "create-log", None),
    pytest.param(fastq_log_config, "replace", "create-log", None),
    pytest.param(fastq_log, "open", "create-log", "fastq.lock"),
    pytest.param(fastq_log_config, "fsync", "topic-open", None),
    pytest.param(fastq_log_config, "replace", "topic-open", None),
    pytest.param(fastq_log, "unlink", "retention", None),
]


@pytest.mark.parametrize("module,name,op,path", PY_CASES,
                         ids=[f"{c.values[0].__name__.split('.')[-1]}.{c.values[1]}-{c.values[2]}"
                              + (f"-{c.values[3]}" if c.values[3] else "") for c in PY_CASES])
@pytest.mark.parametrize("errname", sorted(ERRNOS))
def test_python_syscall_fault_is_clear_and_loses_no_acked_record(tmp_path, module, name, op, path, errname):
    err = ERRNOS[errname]
    prep, act = OPS[op]
    c = Case(str(tmp_path))
    prep(c)
    exc = None
    try:
        with os_fault(module, name, err, path_contains=path) as count:
            try:
                act(c)
            except Exception as e:  # noqa: BLE001 - checked below
                exc = e
        assert count.hits == 1, f"{op} does not call {module.__name__}.os.{name}"
        assert exc is not None, f"the injected {errname} in os.{name} was swallowed"
        want = FsyncFailed if name == "fsync" else (DiskFull if err == errno.ENOSPC else StorageError)
        check_error(exc, want)
        assert exc.filename or any(s in str(exc) for s in ("/", "\\")), f"error does not name the file: {exc}"
        check_after(c, exc)
    finally:
        c.close()


def test_offsets_commit_fsync_fault_is_clear(tmp_path):
    """A group's offsets file is created temp -> fsync -> link; a failed fsync there is a
    StorageError naming the file (no log is failed: the file was never made), and the
    group works once the fault clears."""
    b = fastq.open(str(tmp_path / "b"))
    try:
        t = b.topic("t", partitions=1)
        t.publish(b"x", partition=0)
        with os_fault(fastq_offsets, "fsync", errno.EIO) as count:
            with pytest.raises(FastqError) as ei:
                with t.consumer(group="g") as cons:
                    cons.poll(timeout=0)
                    cons.commit()
        assert count.hits == 1
        assert isinstance(ei.value, StorageError), repr(ei.value)
        assert "t.offsets" in str(ei.value), f"error does not name the file: {ei.value}"
        with t.consumer(group="g") as cons:
            recs = cons.poll(timeout=1.0)
            assert [bytes(r.value) for r in recs] == [b"x"]
            cons.commit()
        with t.consumer(group="g") as cons:
            assert cons.committed() == {0: 1}
    finally:
        b.close()


# ---------------------------------------------------------------------------------------
# randomized sweep (FASTQ_TORTURE=1)
# ---------------------------------------------------------------------------------------

@pytest.mark.skipif(not TORTURE, reason="long randomized sweep: set FASTQ_TORTURE=1")
def test_torture_random_faults(tmp_path):
    seed = int(os.environ.get("FASTQ_SEED", random.randrange(1 << 32)))
    print(f"FASTQ_SEED={seed}")
    rng = random.Random(seed)
    ops = [op for op in REACHES if REACHES[op] and op not in NONDETERMINISTIC]
    for i in range(int(os.environ.get("FASTQ_TORTURE_ROUNDS", "300"))):
        op = rng.choice(ops)
        point = rng.choice(sorted(REACHES[op]))
        errname = rng.choice(sorted(ERRNOS))
        calls = run_dry(str(tmp_path / f"dry{i}"), op)
        k = rng.randrange(calls[point])
        print(f"round {i}: {op} {point} {errname} call {k}")
        run_case(str(tmp_path / f"run{i}"), op, point, ERRNOS[errname], k)


# ---------------------------------------------------------------------------------------
# a real full disk (no injection): the same promises
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("durability", ["os", "always"])
def test_roll_on_real_full_disk_loses_no_acked_record(ext4_dir, durability):
    from faultfs import fill

    c = Case(ext4_dir)
    _prep_log(durability, segment_bytes=4096)(c)
    release = fill(ext4_dir, leave=32 << 10)
    try:
        with pytest.raises(DiskFull) as ei:
            for _ in range(200):           # 4 KiB segments: a roll must preallocate soon
                c.append(BIG)
        assert ext4_dir in str(ei.value), f"error does not name the file: {ei.value}"
    finally:
        release()
    try:
        check_after(c, ei.value)
    finally:
        c.close()


def test_log_whose_creation_failed_after_the_state_file_opens_once_the_fault_clears(tmp_path):
    """Creating a log maps a zero-filled fastq.state, then flocks and initializes it. A
    failure in between (here the state flock; a kill -9 alike) left a state page of
    zeros that every later open refused as 'not a fastq state file'. A never-written
    (all-zero) state is a new one."""
    path = str(tmp_path / "log")
    with c_fault("flock", errno.EIO, after=1) as hits:   # call 0: fastq.lock, 1: fastq.state
        with pytest.raises(StorageError):
            Log(path)
        assert hits() == 1
    with Log(path) as lg:
        assert lg.append(b"x") == 0
    with Log(path) as lg:
        assert [bytes(r.value) for r in lg] == [b"x"]
