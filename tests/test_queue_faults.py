"""Faults under a queue (issue 14): a full disk, injected system-call failures, damaged
files and fork. Each raises a clear FastqError subclass — never a crash, never a raw
OSError — loses nothing that was acknowledged, and the queue works again once the
fault is gone."""
from __future__ import annotations

import errno
import glob
import os
import signal
import time

import pytest

import fastq
from faultfs import c_fault, fill
from fastq._core import _storage
from fastq.errors import CorruptRecord, DiskFull, FastqError, FsyncFailed, StorageError, UsedAfterFork
from logutil import TORTURE, fork_child, wait_child

SMALL = dict(max_in_flight=16, max_delayed=16, dedup_capacity=16, max_sessions=4, segment_bytes=1 << 16)


@pytest.fixture(autouse=True)
def _disarm():
    _storage._fault_clear()
    yield
    _storage._fault_clear()


def drain(q, wait=0.05) -> list:
    """Receive and ack until nothing comes; the data, in order."""
    out = []
    while True:
        got = q.receive(16, wait=wait)
        if not got:
            return out
        out += [m.data for m in got]
        q.ack_many(got)


def roundtrip(path: str, name: str = "jobs") -> None:
    """A fresh handle publishes (plain and delayed) and receives."""
    with fastq.open(path) as b:
        q = b.queue(name)
        q.publish("fresh")
        q.publish("fresh-delayed", delay=0.001)
        time.sleep(0.005)
        assert sorted(drain(q)) == ["fresh", "fresh-delayed"]


# ---------------------------------------------------------------------------------------
# a full disk


@pytest.mark.parametrize("fs", ["tmpfs_dir", "ext4_dir"])
def test_create_queue_on_full_disk_is_disk_full_and_leaves_no_half_queue(request, fs):
    root = request.getfixturevalue(fs)
    path = os.path.join(root, "b")
    b = fastq.open(path)
    release = fill(root, leave=16 << 10)
    try:
        with pytest.raises(DiskFull):
            b.queue("jobs", **SMALL)
        assert b.queues() == []
        assert not os.path.exists(os.path.join(path, "queues", "jobs", "queue.json"))
        with pytest.raises(fastq.UnknownQueue):
            b.queue("jobs", create=False)
    finally:
        release()
    q = b.queue("jobs", **SMALL)                 # a freed disk: created as if nothing happened
    assert q.config["max_in_flight"] == 16
    q.publish("x")
    assert drain(q) == ["x"]
    b.close()
    roundtrip(path)


def test_broker_without_queues_lists_none(tmp_path):
    """A broker whose first queue was never made (or failed to be) has no queues/ yet."""
    with fastq.open(str(tmp_path / "b")) as b:
        assert b.queues() == []
        with pytest.raises(fastq.UnknownQueue):
            b.queue("jobs", create=False)


@pytest.mark.parametrize("fs,how", [("tmpfs_dir", "plain"), ("ext4_dir", "batch"), ("ext4_dir", "delayed"),
                                    ("tmpfs_dir", "dedup")])
def test_publish_on_full_disk_is_disk_full_and_loses_nothing_published(request, fs, how):
    root = request.getfixturevalue(fs)
    path = os.path.join(root, "b")
    b = fastq.open(path)
    q = b.queue("jobs", **{**SMALL, "dedup_capacity": 4096})
    q.publish("before-delayed", delay=0.001)     # the delayed lane exists; so does lane 0
    q.publish("before")
    release = fill(root, leave=96 << 10)
    published = ["before-delayed", "before"]
    body = "x" * 2000
    try:
        with pytest.raises(DiskFull):
            for i in range(1000):                # 2 MB: far more than is left
                if how == "plain":
                    q.publish(f"{i}:{body}")
                    published.append(f"{i}:{body}")
                elif how == "batch":
                    items = [f"{i}.{k}:{body}" for k in range(4)]
                    q.publish_many(items)
                    published += items
                elif how == "delayed":
                    q.publish(f"{i}:{body}", delay=0.001)
                    published.append(f"{i}:{body}")
                else:
                    q.publish(f"{i}:{body}", dedup_id=f"d{i}")
                    published.append(f"{i}:{body}")
        assert len(published) > 2, "nothing fit before the disk was full"
        ready = list(published)
        if how == "delayed":
            ready = ["before"]
            with pytest.raises(DiskFull):       # lane 0 full too: no room to promote into
                for i in range(1000):
                    q.publish(f"r{i}:{body}")
                    ready.append(f"r{i}:{body}")
            published += ready[1:]
        time.sleep(0.005)
        # on the full disk every ready message comes out and acks work (queue.state is
        # preallocated: settling needs no space); a due delayed message may wait for room
        # to be copied into its lane, but never stops the others
        got = drain(q)
        assert set(ready) <= set(got) <= set(published), sorted(set(ready) - set(got))[:3]
    finally:
        release()
    time.sleep(0.005)
    got += drain(q)
    assert sorted(got) == sorted(published)
    assert q._state.intent() is None
    q.publish("after")
    assert drain(q) == ["after"]
    b.close()
    roundtrip(path)


# ---------------------------------------------------------------------------------------
# injected system-call failures


def _prep_none(path):
    return None


def _prep_queue(durability="os"):
    def prep(path):
        with fastq.open(path) as b:
            q = b.queue("jobs", durability=durability, **SMALL)
            q.publish_many(["p0", "p1"])
            q.publish("p2", delay=0.001)
        return None
    return prep


class _Ctx:
    """What an operation leaves for its check: the broker handle, the messages whose
    publish returned, and the ones this handle holds."""

    def __init__(self, path):
        self.path = path
        self.b = None
        self.q = None
        self.published = []
        self.maybe = []
        self.held = []
        self.acked = set()          # their ack returned: never delivered again
        self.maybe_acked = set()    # their ack raised: delivered again or not


def act_create(c):
    c.b = fastq.open(c.path)
    c.q = c.b.queue("jobs", durability="always", **SMALL)
    c.maybe.append("c0")
    c.q.publish("c0")                            # "always": an fsync fault raises after the append
    c.published.append(c.maybe.pop())


def act_open(c):
    c.published += ["p0", "p1", "p2"]
    c.b = fastq.open(c.path)
    c.q = c.b.queue("jobs")


def act_publish_new_lane(c):
    c.published += ["p0", "p1", "p2"]
    c.b = fastq.open(c.path)
    c.q = c.b.queue("jobs")
    c.maybe.append("n0")
    c.q.publish("n0", priority=7)                # a lane log made now
    c.published.append(c.maybe.pop())
    c.maybe.append("n1")
    c.q.publish("n1", delay=0.001, dedup_id="n1", priority=8)
    c.published.append(c.maybe.pop())


def act_receive(c):
    c.published += ["p0", "p1", "p2"]
    c.b = fastq.open(c.path)
    c.q = c.b.queue("jobs")
    time.sleep(0.002)
    while len(c.held) < 3:
        got = c.q.receive(3, wait=1)
        assert got
        c.held += got


def act_ack_always(c):
    c.published += ["p0", "p1", "p2"]
    c.b = fastq.open(c.path)
    c.q = c.b.queue("jobs")
    time.sleep(0.002)
    while len(c.held) < 3:
        c.held += c.q.receive(3, wait=1)
    def ack(ms, call):
        c.maybe_acked.update(m.data for m in ms)
        call()
        c.acked.update(m.data for m in ms)
        c.maybe_acked.difference_update(m.data for m in ms)

    ack(c.held[:1], c.held[0].ack)
    c.held[1].nack(error="again")                # a copy to the delayed lane, synced
    ack(c.held[2:], lambda: c.q.ack_many(c.held[2:]))


OPS = {
    "create": (_prep_none, act_create),
    "open": (_prep_queue(), act_open),
    "publish_new_lane": (_prep_queue(), act_publish_new_lane),
    "receive": (_prep_queue(), act_receive),
    "ack_always": (_prep_queue("always"), act_ack_always),
}


def _dry_calls(root, op):
    prep, act = OPS[op]
    path = os.path.join(root, "b")
    prep(path)
    c = _Ctx(path)
    for p in _storage.FAULT_POINTS:
        _storage._fault_inject(p, errno.EIO, 1 << 40, 1)
    try:
        act(c)
        calls = {p: _storage._fault_calls(p) for p in _storage.FAULT_POINTS}
    finally:
        _storage._fault_clear()
        if c.b is not None:
            c.b.close()
    return {p: n for p, n in calls.items() if n}


def _expected(point, err):
    if point in ("datasync", "msync", "fsync_dir"):
        return FsyncFailed
    return DiskFull if err == errno.ENOSPC else StorageError


def _check_after(c, exc):
    """Fault cleared: the messages whose publish returned are all there (once); the one
    that raised is there at most once; a fresh handle publishes and receives."""
    if c.b is not None:
        try:
            c.b.close()
        except FastqError:
            pass
    with fastq.open(c.path) as b:
        if "jobs" not in b.queues():
            assert not c.published
            return
        q = b.queue("jobs")
        time.sleep(0.005)
        got = drain(q)
        if not isinstance(exc, FsyncFailed):   # after one, a copy may be delivered twice
            for d in set(got):
                assert got.count(d) == 1, f"{d} delivered twice after {exc!r}: {got}"
        want = set(c.published) - c.acked - c.maybe_acked
        assert want <= set(got), f"lost {want - set(got)} after {exc!r}"
        assert set(got) <= (set(c.published) | set(c.maybe)) - c.acked, got
        d = q.depth()
        assert (d.ready, d.delayed, d.in_flight) == (0, 0, 0), d
    roundtrip(c.path)


@pytest.mark.parametrize("errname", ["EIO", "ENOSPC"])
@pytest.mark.parametrize("op", list(OPS))
def test_injected_fault_is_clear_and_loses_nothing(tmp_path, op, errname):
    err = getattr(errno, errname)
    calls = _dry_calls(str(tmp_path / "dry"), op)
    assert calls, f"{op} reaches no fault point"
    if err == errno.ENOSPC:                      # where a full disk shows (EIO covers the rest)
        calls = {p: n for p, n in calls.items() if p in ("preallocate", "open")}
    hit_any = 0
    for point, n in sorted(calls.items()):
        for k in (range(n) if TORTURE else sorted({0, n - 1})):
            root = tmp_path / f"{point}{k}"
            root.mkdir()
            path = str(root / "b")
            prep, act = OPS[op]
            prep(path)
            c = _Ctx(path)
            exc = None
            with c_fault(point, err, k, 1) as hits:
                try:
                    act(c)
                except Exception as e:   # noqa: BLE001 - checked below
                    exc = e
                n_hit = hits()
            if n_hit:
                hit_any += 1
                assert exc is not None, f"{op}: {errname} at {point} call {k} was swallowed"
                assert isinstance(exc, FastqError), f"{op} {point}#{k}: raw {type(exc).__name__}: {exc!r}"
                want = _expected(point, err)
                assert isinstance(exc, want), f"{op} {point}#{k}: expected {want.__name__}, got {exc!r}"
            elif exc is not None:
                raise exc
            _check_after(c, exc)
    assert hit_any, f"{op}: no injected fault was reached"


# ---------------------------------------------------------------------------------------
# damaged files


def _made(tmp_path, n=5):
    path = str(tmp_path / "b")
    with fastq.open(path) as b:
        q = b.queue("jobs", **SMALL)
        for i in range(n):
            q.publish(f"m{i}")
    return path, os.path.join(path, "queues", "jobs")


def _truncate(n):
    def damage(f):
        os.truncate(f, n if n >= 0 else os.path.getsize(f) // 2)
    return damage


def _overwrite(at, data):
    def damage(f):
        with open(f, "r+b") as fh:
            fh.seek(at)
            fh.write(data)
    return damage


@pytest.mark.parametrize("damage", [
    pytest.param(_truncate(0), id="zero-length"),
    pytest.param(_truncate(1000), id="truncated-header"),
    pytest.param(_truncate(-1), id="truncated-half"),
    pytest.param(_overwrite(0, b"FQLOG001"), id="wrong-magic"),
    pytest.param(_overwrite(8, b"\x07\x00\x00\x00"), id="wrong-version"),
    pytest.param(_overwrite(16, b"\x00\x01\x00\x00"), id="wrong-geometry"),
])
def test_damaged_queue_state_is_corrupt_record_naming_it(tmp_path, damage):
    path, qd = _made(tmp_path)
    state = os.path.join(qd, "queue.state")
    damage(state)
    with fastq.open(path) as b:
        with pytest.raises(CorruptRecord) as ei:
            b.queue("jobs")
        assert state in str(ei.value) and ei.value.path == state, ei.value
        with pytest.raises(CorruptRecord):      # the same again: nothing was half-opened
            b.queue("jobs")


def test_missing_queue_state_is_corrupt_record_naming_it(tmp_path):
    path, qd = _made(tmp_path)
    os.unlink(os.path.join(qd, "queue.state"))
    with fastq.open(path) as b:
        with pytest.raises(CorruptRecord) as ei:
            b.queue("jobs")
    assert "queue.state" in str(ei.value) and qd in str(ei.value)
    assert not os.path.exists(os.path.join(qd, "queue.state")), "a fresh state would forget every ack"


@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage", b'{"partitions": 1, "visib', b"[1, 2]",
                                     b'{"version": 99}', b'{"version": 1, "max_in_flight": 17}'],
                         ids=["empty", "garbage", "truncated", "not-an-object", "version", "invalid"])
def test_corrupt_queue_json_is_corrupt_record_naming_it(tmp_path, content):
    path, qd = _made(tmp_path)
    cfg = os.path.join(qd, "queue.json")
    with open(cfg, "wb") as f:
        f.write(content)
    with fastq.open(path) as b:
        with pytest.raises(CorruptRecord) as ei:
            b.queue("jobs")
    assert cfg in str(ei.value)


def test_flipped_byte_in_a_lane_record_is_corrupt_record_at_receive(tmp_path):
    path, qd = _made(tmp_path)
    seg = glob.glob(os.path.join(qd, "p0", "0", "*.log"))[0]
    with open(seg, "rb") as f:
        data = bytearray(f.read())
    i = data.find(b'"m2"')
    assert i > 0
    data[i + 2] ^= 0x01
    with open(seg, "r+b") as f:
        f.write(bytes(data))
    with fastq.open(path) as b:
        q = b.queue("jobs")
        assert [m.data for m in q.receive(1, wait=0)] == ["m0"]
        assert [m.data for m in q.receive(1, wait=0)] == ["m1"]
        with pytest.raises(CorruptRecord) as ei:
            q.receive(1, wait=0)
        assert seg in str(ei.value)
        # the damaged record does not wedge the queue: the ones after it are delivered
        assert [m.data for m in q.receive(1, wait=0)] == ["m3"]
        assert [m.data for m in q.receive(1, wait=0)] == ["m4"]


@pytest.mark.parametrize("then", ["publish", "receive", "depth"])
def test_lane_log_that_lost_its_tail_is_healed_loudly(tmp_path, then, caplog):
    """A lane log that ends before what queue.state delivered from it — a power failure
    under durability "os" took its tail, or it was deleted or replaced: a new record would
    get an offset the state has as settled and never be delivered, silently. The state
    forgets its window from the log's end (with a warning naming the log), and every
    message published from then on is delivered."""
    import shutil
    path, qd = _made(tmp_path)
    with fastq.open(path) as b:
        q = b.queue("jobs")
        q.ack_many(q.receive(3, wait=0))
    lane = os.path.join(qd, "p0", "0")
    shutil.rmtree(lane)
    caplog.set_level("WARNING", logger="fastq.queue")
    with fastq.open(path) as b:
        q = b.queue("jobs")
        if then != "publish":
            os.makedirs(lane)
            with fastq.Log(lane):                     # an empty log in its place
                pass
            if then == "receive":
                assert q.receive(1, wait=0) == []     # opens the lane: healed
            else:
                assert q.depth()[:3] == (0, 0, 0)
        q.publish("new")
        assert q.healed == [(lane, 0, 3)]
        assert any(lane in r.getMessage() and "tail is gone" in r.getMessage() for r in caplog.records)
        got = drain_all(q)
        assert [m.data for m in got] == ["new"]
        got[0].ack()
    with fastq.open(path) as b:
        q = b.queue("jobs")
        assert q.receive(1, wait=0) == [] and q.healed == []   # healed once, for good
        assert q.depth()[:3] == (0, 0, 0)


def drain_all(q):
    out = []
    while True:
        ms = q.receive(100, wait=0.3)
        if not ms:
            return out
        out += ms


def test_damaged_record_in_a_received_batch_holds_back_no_other_message(tmp_path):
    """receive(10) leases m0..m4 and fails reading m2: the error is raised, the four good
    ones are handed back at once (not after their lease), the damaged one stays leased and
    its error comes back when that lease ends — one bad record never wedges the queue."""
    path = str(tmp_path / "b")
    with fastq.open(path) as b:
        q = b.queue("jobs", visibility_timeout=0.3, **SMALL)
        for i in range(5):
            q.publish(f"m{i}")
    seg = glob.glob(os.path.join(path, "queues", "jobs", "p0", "0", "*.log"))[0]
    with open(seg, "r+b") as f:
        data = bytearray(f.read())
        data[data.find(b'"m2"') + 2] ^= 0x01
        f.seek(0)
        f.write(bytes(data))
    with fastq.open(path) as b:
        q = b.queue("jobs")
        with pytest.raises(CorruptRecord):
            q.receive(10, wait=0)
        got = q.receive(10, wait=0)
        assert [m.data for m in got] == ["m0", "m1", "m3", "m4"]
        q.ack_many(got)
        d = q.depth()
        assert (d.ready, d.in_flight) == (0, 1), d
        time.sleep(0.35)
        with pytest.raises(CorruptRecord):       # not dropped in silence: it is reported again
            q.receive(10, wait=0)


# ---------------------------------------------------------------------------------------
# fork


def test_queue_used_in_forked_child_is_used_after_fork(tmp_path):
    path = str(tmp_path / "b")
    b = fastq.open(path)
    q = b.queue("jobs", visibility_timeout=60.0)
    q.publish_many(["held", "other"])
    (held,) = q.receive(1, wait=1)

    def child():
        calls = {
            "publish": lambda: q.publish("z"),
            "publish delayed": lambda: q.publish("z", delay=1),
            "publish_many": lambda: q.publish_many(["z"]),
            "receive": lambda: q.receive(1, wait=0),
            "depth": q.depth,
            "purge": q.purge,
            "ack": held.ack,
            "nack": held.nack,
            "extend": lambda: held.extend(5),
            "broker.queue": lambda: b.queue("jobs"),
        }
        for what, call in calls.items():
            try:
                call()
            except UsedAfterFork as e:
                assert "fork" in str(e), (what, str(e))
            else:
                raise AssertionError(f"{what} worked on a queue inherited across fork()")
        q.close()
        b.close()
        # its own broker works; the message the parent holds stays the parent's
        with fastq.open(path) as b2:
            q2 = b2.queue("jobs")
            got = q2.receive(5, wait=0.2)
            assert [m.data for m in got] == ["other"], [m.data for m in got]
            got[0].nack()                        # back for the parent
            q2.publish("from-child")

    assert wait_child(fork_child(child)) == 0
    held.ack()                                   # still the parent's lease
    assert sorted(drain(q)) == ["from-child", "other"]
    d = q.depth()
    assert (d.ready, d.delayed, d.in_flight) == (0, 0, 0), d
    b.close()


def test_forked_child_outliving_a_killed_parent_does_not_keep_its_messages(tmp_path):
    """The session's flock is shared with a forked child through the inherited descriptor;
    the child drops its copy at the fork, so the parent's death still frees its messages."""
    path = str(tmp_path / "b")
    with fastq.open(path) as b:
        b.queue("jobs", visibility_timeout=60.0).publish_many(["a", "b"])
    r, w = os.pipe()

    def parent():
        os.close(r)
        b2 = fastq.open(path)
        q2 = b2.queue("jobs")
        got = q2.receive(2, wait=1)
        assert len(got) == 2
        pid = os.fork()
        if pid == 0:                             # the grandchild: lives on, never uses fastq
            os.write(w, b"%d\n" % os.getpid())
            time.sleep(30)
            os._exit(0)
        os.kill(os.getpid(), signal.SIGKILL)

    p = fork_child(parent)
    os.close(w)
    grandchild = int(os.read(r, 64).split()[0])
    os.close(r)
    try:
        assert wait_child(p) == -signal.SIGKILL
        with fastq.open(path) as b:
            q = b.queue("jobs")
            t0 = time.monotonic()
            got = q.receive(2, wait=5)
            assert sorted(m.data for m in got) == ["a", "b"], "the dead parent's messages stayed held"
            assert time.monotonic() - t0 < 1
            assert all(m.delivery_count == 2 for m in got)
            q.ack_many(got)
    finally:
        os.kill(grandchild, signal.SIGKILL)


# ---------------------------------------------------------------------------------------
# an exception right after a copy's append (Ctrl-C, a signal handler's exception): the
# record is in the log although the call raised; exactly one of source and copy stands


def _raise_after_append(lg):
    real = lg.append

    def append(*a, **k):
        real(*a, **k)
        lg.append = real                         # once
        raise KeyboardInterrupt
    lg.append = append


def _received_once(q, want):
    got = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and len(got) < len(want):
        got += q.receive(8, wait=0.1)
    assert sorted(m.data for m in got) == sorted(want)
    q.ack_many(got)
    assert q.receive(1, wait=0.1) == [], "delivered twice"
    assert q._state.intent() is None


def test_nack_move_interrupted_after_append_delivers_once(tmp_path):
    with fastq.open(str(tmp_path / "b")) as b:
        q = b.queue("jobs", visibility_timeout=60.0, **SMALL)
        q.publish("m")
        (m,) = q.receive(1, wait=1)
        _raise_after_append(q._lane_log(q._lanes[10], create=True))
        with pytest.raises(KeyboardInterrupt):
            m.nack(error="boom")
        q.close()                                # its leases end: the source, were it still held
        q = b.queue("jobs")
        _received_once(q, ["m"])


def test_promotion_interrupted_after_append_delivers_once(tmp_path):
    with fastq.open(str(tmp_path / "b")) as b:
        q = b.queue("jobs", visibility_timeout=60.0, **SMALL)
        q.publish("d", delay=0.001)
        time.sleep(0.005)
        _raise_after_append(q._lane_log(q._lanes[0], create=True))
        with pytest.raises(KeyboardInterrupt):
            q.receive(1, wait=1)
        _received_once(q, ["d"])


@pytest.mark.parametrize("delay", [None, 0.001])
def test_dedup_publish_interrupted_after_append_is_stored_once_when_retried(tmp_path, delay):
    with fastq.open(str(tmp_path / "b")) as b:
        q = b.queue("jobs", **SMALL)
        _raise_after_append(q._lane_log(q._lanes[10 if delay else 0], create=True))
        with pytest.raises(KeyboardInterrupt):
            q.publish("x", dedup_id="k", delay=delay)
        q.publish("x", dedup_id="k", delay=delay)
        time.sleep(0.005)
        _received_once(q, ["x"])
