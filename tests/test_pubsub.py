"""Pub/sub (fastq.pubsub): fan-out with independent cursors, NATS and glob patterns,
durable replay and resume, ephemeral drop-oldest, asyncio, kill -9 and injected faults."""
from __future__ import annotations

import asyncio
import errno
import fnmatch
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import uuid

import pytest

import fastq
import fastq._core._ring
import fastq.pubsub.ephemeral as eph
from fastq import InvalidArgument
from fastq._core._ring import ring_path
from faultfs import fill, os_fault

WORKERS = os.path.join(os.path.dirname(__file__), "pubsub_workers.py")


@pytest.fixture
def broker(tmp_path):
    with fastq.open(tmp_path / "b") as b:
        yield b


def nats_match(pattern: str, channel: str) -> bool:
    """Reference NATS matcher, token by token (independent of fastq.pubsub.patterns)."""
    p, c = pattern.split("."), channel.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(c) > i
        if i >= len(c) or (tok != "*" and tok != c[i]):
            return False
    return len(p) == len(c)


def _spawn(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WORKERS, *map(str, args)], stdout=subprocess.PIPE, text=True)


def _ready(p: subprocess.Popen) -> None:
    line = p.stdout.readline()
    assert line.strip() == "ready", f"worker said {line!r}, exit code {p.poll()}"


# -- patterns ------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern,channel,want", [
    ("orders.*.created", "orders.eu.created", True),
    ("orders.*.created", "orders.eu.x.created", False),
    ("orders.*.created", "orders.created", False),
    ("orders.>", "orders.eu", True),
    ("orders.>", "orders.eu.created", True),
    ("orders.>", "orders", False),
    (">", "a", True),
    ("*", "a.b", False),
    ("orders.eu.created", "orders.eu.created", True),
    ("orders.eu.created", "orders.eu.createdX", False),
])
def test_nats_patterns(pattern, channel, want):
    m = fastq.pubsub.Matcher([(pattern, "nats")])
    assert m(channel) is want is nats_match(pattern, channel)
    assert m(channel) is want                          # the cached verdict agrees


@pytest.mark.parametrize("pattern,channel,want", [
    ("orders:*", "orders:eu:created", True),
    ("orders:*", "order:eu", False),
    ("h?llo", "hello", True),
    ("h[ae]llo", "hallo", True),
    ("h[^e]llo", "hello", False),
    ("h[^e]llo", "hallo", True),
    ("h[a-c]llo", "hbllo", True),
    ("h[a-c]llo", "hdllo", False),
    ("a\\:b", "a:b", True),
    ("*.created", "orders.eu.created", True),
])
def test_glob_patterns(pattern, channel, want):
    assert fastq.pubsub.Matcher([(pattern, "glob")])(channel) is want


def test_matcher_against_reference_on_random_patterns():
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rnd = random.Random(seed)
    toks = ["a", "b", "ab", "orders", "eu"]
    for _ in range(300):
        chans = [".".join(rnd.choice(toks) for _ in range(rnd.randint(1, 4))) for _ in range(20)]
        pats = []
        for _ in range(rnd.randint(1, 3)):
            p = [rnd.choice(toks + ["*", "*"]) for _ in range(rnd.randint(1, 4))]
            if rnd.random() < 0.3:
                p[-1] = ">"
            pats.append(".".join(p))
        m = fastq.pubsub.Matcher([(p, "nats") for p in pats])
        for c in chans:
            assert m(c) == any(nats_match(p, c) for p in pats), (pats, c, seed)
        globs = []
        for _ in range(2):
            p = "".join(rnd.choice(["a", "b", ".", "*", "?", "[ab]", "[^a]"]) for _ in range(rnd.randint(1, 5)))
            try:
                fastq.pubsub.compile_pattern(p, "glob")
                globs.append(p)
            except InvalidArgument:         # only a wildcard-free pattern that is no valid channel
                assert not any(ch in p for ch in "*?[") and (".." in p or p[0] == "." or p[-1] == ".")
        if not globs:
            continue
        g = fastq.pubsub.Matcher([(p, "glob") for p in globs])
        for c in chans:
            want = any(fnmatch.fnmatchcase(c, p.replace("[^", "[!")) for p in globs)
            assert g(c) == want, (globs, c, seed)


@pytest.mark.parametrize("pattern,syntax", [
    ("", "nats"), ("a..b", "nats"), ("a.>.b", "nats"), ("a*.b", "nats"), ("a.b>", "nats"), (".a", "nats"),
    ("a b", "nats"), ("h[ello", "glob"), ("ab\\", "glob"), ("a]", "glob"), ("h[z-a]", "glob"),
    (b"bytes", "nats"), (None, "nats"), ("ok", "regex"), ("x" * 1025, "nats"),
])
def test_bad_patterns_are_invalid_argument(broker, pattern, syntax):
    with broker.pubsub("ev") as ps:
        with pytest.raises(InvalidArgument):
            ps.subscribe(pattern, syntax=syntax)


@pytest.mark.parametrize("durable", [True, False])
@pytest.mark.parametrize("channel", ["", "a b", "a.*", "a.>", "a?", "a..b", ".a", "a.", "x\n", 7, None, "x" * 1025])
def test_bad_channels_are_invalid_argument(broker, durable, channel):
    with broker.pubsub("ev", durable=durable) as ps:
        with pytest.raises(InvalidArgument):
            ps.publish(channel, b"x")
        with pytest.raises(InvalidArgument):
            ps.publish_many(channel, [b"x"])


def test_bad_arguments(broker):
    with pytest.raises(InvalidArgument):
        broker.pubsub("bad name")
    with pytest.raises(InvalidArgument):
        broker.pubsub("ev", durable="yes")
    with pytest.raises(InvalidArgument):
        broker.pubsub("ev", colour=1)
    with broker.pubsub("ev") as ps:
        with pytest.raises(InvalidArgument):
            ps.subscribe("a", from_offset=1, from_time=1.0)
        with pytest.raises(InvalidArgument):
            ps.subscribe("a", from_offset=-1)
        with pytest.raises(InvalidArgument):
            ps.subscribe("a", from_time="yesterday")
        with pytest.raises(InvalidArgument):
            ps.subscribe("a", name="no spaces")
        with pytest.raises(InvalidArgument):
            ps.subscribe([])
        with ps.subscribe("a") as sub:
            with pytest.raises(InvalidArgument):
                sub.poll(0)
            with pytest.raises(InvalidArgument):
                sub.poll(1, timeout=-1)
        with pytest.raises(InvalidArgument):
            ps.publish_many("a", [])
    with pytest.raises(InvalidArgument):       # the stored mode wins; asking for the other is an error
        broker.pubsub("ev", durable=False)
    broker.topic("pubsub.taken", partitions=2)
    with pytest.raises(InvalidArgument):       # a user's topic where the namespace's would be
        broker.pubsub("taken")
    with broker.pubsub("eph", durable=False) as ps:
        for kw in ({"name": "n"}, {"from_offset": 0}, {"from_time": 0}, {"buffer_bytes": 10}):
            with pytest.raises(InvalidArgument):
                ps.subscribe("a", **kw)
    with pytest.raises(fastq.Closed):
        ps.publish("a", b"x")


# -- fan-out across processes ----------------------------------------------------------------

PATTERNS = [("nats", "orders.*.created"), ("nats", "orders.>"), ("nats", "orders.eu.*"), ("glob", "*.created")]


@pytest.mark.parametrize("durable", [True, False])
def test_four_subscriber_processes_each_see_every_matching_message_in_order(broker, tmp_path, durable):
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rnd = random.Random(seed)
    ps = broker.pubsub("ev", durable=durable)
    procs = []
    try:
        for i, (syntax, pattern) in enumerate(PATTERNS):
            procs.append(_spawn("subscribe", broker.path, "ev", syntax, pattern, tmp_path / f"out{i}"))
        for p in procs:
            _ready(p)
        channels = ["orders.eu.created", "orders.us.created", "orders.eu.shipped", "orders.eu.x.created",
                    "users.created", "orders", "orders.us"]
        published = []
        i = 0
        while i < 3000:
            ch = rnd.choice(channels)
            if rnd.random() < 0.5:
                n = rnd.randint(1, 50)
                vals = [f"{ch}#{i + j}" for j in range(n)]
                ps.publish_many(ch, [v.encode() for v in vals])
                published += [(ch, v) for v in vals]
                i += n
            else:
                ps.publish(ch, f"{ch}#{i}".encode())
                published.append((ch, f"{ch}#{i}"))
                i += 1
        ps.publish("orders.eu.created", b"END")          # matched by every pattern
        for p in procs:
            assert p.wait(60) == 0
        for i, (syntax, pattern) in enumerate(PATTERNS):
            match = (lambda c: nats_match(pattern, c)) if syntax == "nats" else \
                (lambda c: fnmatch.fnmatchcase(c, pattern))
            want = [[c, v] for c, v in published if match(c)]
            with open(tmp_path / f"out{i}") as f:
                got = [json.loads(line) for line in f]
            assert [g[:2] for g in got] == want, (pattern, seed)
            offsets = [g[2] for g in got]
            if durable:
                assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
            else:
                assert set(offsets) == {-1}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
        ps.close()


# -- durable: replay, resume ----------------------------------------------------------------

def test_late_subscriber_replays_from_an_offset_or_a_time(broker):
    with broker.pubsub("ev") as ps:
        live = ps.subscribe("a.*")
        for i in range(10):
            ps.publish("a.x" if i % 2 else "b.x", b"%d" % i)
        t_mid = time.time()
        time.sleep(0.01)                                   # timestamps are ms: a distinct ms for the rest
        metas = [ps.publish("a.y", b"late%d" % i) for i in range(5)]
        assert [m.data for m in live.poll(100, timeout=1)] == [b"1", b"3", b"5", b"7", b"9"] + \
            [b"late%d" % i for i in range(5)]
        with ps.subscribe("a.*", from_offset=3) as late:
            got = late.poll(100, timeout=1)
            assert [m.offset for m in got] == [3, 5, 7, 9] + [m.offset for m in metas]
            assert got[0].channel == "a.x" and got[0].data == b"3"
        with ps.subscribe("a.y", from_time=t_mid) as late:
            assert [m.data for m in late.poll(100, timeout=1)] == [b"late%d" % i for i in range(5)]
        with ps.subscribe("a.*") as fresh:                 # anonymous: starts at the end
            assert fresh.poll(100, timeout=0.05) == []
            ps.publish("a.z", b"new")
            assert [m.data for m in fresh.poll(100, timeout=1)] == [b"new"]
        live.close()


def test_named_subscription_resumes_from_its_commit(broker):
    with broker.pubsub("ev") as ps:
        ps.subscribe(">", name="billing").close()          # a new name starts at the end, committed
        for i in range(10):
            ps.publish("o.c", b"%d" % i)
        sub = ps.subscribe(">", name="billing")
        assert [m.data for m in sub.poll(4, timeout=1)] == [b"0", b"1", b"2", b"3"]
        sub.close()                                        # commits what was handed out
        sub = ps.subscribe(">", name="billing")
        it = iter(sub)
        assert [next(it).data for _ in range(3)] == [b"4", b"5", b"6"]
        sub.commit()
        sub.close()
        with ps.subscribe(">", name="billing") as sub:
            assert [m.data for m in sub.poll(100, timeout=1)] == [b"7", b"8", b"9"]
        with ps.subscribe(">", name="billing", from_offset=0) as sub:   # explicit replay wins
            assert sub.poll(1, timeout=1)[0].data == b"0"


def test_durable_subscription_resumes_after_kill_9(broker, tmp_path):
    torture = os.environ.get("FASTQ_TORTURE") == "1"
    n, kills = (50_000, 20) if torture else (6_000, 3)
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rnd = random.Random(seed)
    with broker.pubsub("ev") as ps:
        ps.subscribe(">", name="audit").close()
        for i in range(0, n, 100):
            ps.publish_many(f"c.{i % 7}", [b"%d" % j for j in range(i, i + 100)])
    out = tmp_path / "seen"
    runs = []
    env = dict(os.environ, FASTQ_SLOW="1")
    for k in range(kills + 1):
        before = _lines(out)
        p = subprocess.Popen([sys.executable, WORKERS, "durable", broker.path, "ev", "audit", str(out), str(n)],
                             stdout=subprocess.PIPE, text=True, env=env)
        try:
            _ready(p)
            if k < kills:
                target = len(before) + rnd.randint(50, 600)
                deadline = time.monotonic() + 30
                while len(_lines(out)) < target and p.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.005)
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
            else:
                assert p.wait(120) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
        runs.append(_lines(out)[len(before):])
    seen_max = -1
    for r in runs:
        if r:
            assert r[0] <= seen_max + 1, f"a restart skipped {seen_max + 1}..{r[0] - 1} (seed {seed})"
            assert r == list(range(r[0], r[0] + len(r))), f"gap or reorder within a run (seed {seed})"
            seen_max = max(seen_max, r[-1])
    assert sorted(set(sum(runs, []))) == list(range(n))


def _lines(path) -> list[int]:
    try:
        with open(path) as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return [int(x) for x in data.split("\n")[:-1]]      # a torn last line (no newline) is dropped


# -- ephemeral --------------------------------------------------------------------------------

def test_ephemeral_is_at_most_once_and_never_blocks_the_publisher(broker):
    with broker.pubsub("live", durable=False) as ps:
        assert ps.publish("a.b", b"nobody") == 0
        slow = ps.subscribe("a.*", buffer_bytes=4096)      # never reads while we publish
        fast = ps.subscribe("a.*", buffer_bytes=1 << 22)
        other = ps.subscribe("z.*")
        n = 20_000
        t0 = time.monotonic()
        for i in range(0, n, 100):
            assert ps.publish_many("a.b", [b"%d" % j for j in range(i, i + 100)]) == 2
        elapsed = time.monotonic() - t0
        assert ps.dropped > 0
        got_fast = [int(m.data) for m in fast.poll(n, timeout=1)]
        assert got_fast == list(range(n))                  # the big ring kept everything, in order
        got_slow = []
        while True:
            batch = slow.poll(1000, timeout=0)
            if not batch:
                break
            got_slow += [int(m.data) for m in batch]
        # the slow one kept the newest messages, in order, and lost the oldest
        assert got_slow and got_slow[-1] == n - 1 and got_slow == list(range(got_slow[0], n))
        assert got_slow[0] > 0 and ps.dropped == got_slow[0]
        assert other.poll(10, timeout=0) == []
        print(f"published {n} with a full subscriber in {elapsed:.3f} s")
        late = ps.subscribe("a.*")                          # joins late: sees only what follows
        assert late.poll(10, timeout=0) == []
        assert ps.publish("a.c", b"x") == 3
        assert [(m.channel, m.data, m.offset) for m in late.poll(10, timeout=1)] == [("a.c", b"x", -1)]
        slow.close()
        assert ps.publish("a.c", b"y") == 2                # unsubscribed at once
        small = ps.subscribe("big", buffer_bytes=4096)
        fits = ps.subscribe("big", buffer_bytes=1 << 16)
        dropped = ps.dropped
        assert ps.publish("big", b"x" * 10_000) == 2       # too large for one ring: dropped there only
        assert ps.dropped == dropped + 1
        assert small.poll(1, timeout=0) == [] and len(fits.poll(1, timeout=1)[0].data) == 10_000
        for bad in ("str", 5):                             # bad data is an error even with no subscriber
            with pytest.raises(InvalidArgument):
                ps.publish("nobody", bad)
            with pytest.raises(InvalidArgument):
                ps.publish_many("nobody", [bad])


def test_killed_ephemeral_subscriber_is_reaped(broker):
    with broker.pubsub("live", durable=False) as ps:
        p = _spawn("hold", broker.path, "live")
        try:
            _ready(p)
            assert ps.publish("a", b"1") == 1
            subs = os.path.join(ps.dir, "subs")
            with open(os.path.join(subs, os.listdir(subs)[0])) as f:
                reg = json.load(f)
            assert os.path.exists(ring_path(reg["ring"]))
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
        deadline = time.monotonic() + 10                  # the publisher rescans within RESCAN_S
        while ps.publish("a", b"2") != 0:
            assert time.monotonic() < deadline, "the dead subscriber was never reaped"
            time.sleep(0.05)
        assert os.listdir(subs) == [] and not os.path.exists(ring_path(reg["ring"]))
        p = _spawn("hold", broker.path, "live")                # killed again: now opening the namespace reaps
        try:
            _ready(p)
            with open(os.path.join(subs, os.listdir(subs)[0])) as f:
                reg = json.load(f)
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
        assert os.path.exists(ring_path(reg["ring"]))
        broker.pubsub("live").close()
        assert os.listdir(subs) == [] and not os.path.exists(ring_path(reg["ring"]))


def _fixed_subscriber_id(monkeypatch, broker_path: str, ns: str) -> str:
    """The next subscriber's id is fixed: returns the path its ring would have."""
    fixed = uuid.UUID(int=random.getrandbits(128))
    monkeypatch.setattr(eph.uuid, "uuid4", lambda: fixed)
    return ring_path(eph.ephemeral_ring_name(broker_path, ns, fixed.hex))


def test_registration_fault_leaves_nothing_behind(broker, monkeypatch):
    with broker.pubsub("live", durable=False) as ps:
        ring = _fixed_subscriber_id(monkeypatch, broker.path, "live")
        with os_fault(eph, "rename", errno.ENOSPC) as hit:
            with pytest.raises(fastq.StorageError):
                ps.subscribe(">")
        assert hit.hits == 1
        assert os.listdir(os.path.join(ps.dir, "subs")) == []
        assert not os.path.exists(ring)
        assert ps.publish("a", b"x") == 0
        with ps.subscribe(">") as sub:                     # works again once the fault is gone
            assert os.path.exists(ring)                    # (the same id: the path checked above is right)
            assert ps.publish("a", b"x") == 1
            assert sub.poll(1, timeout=1)[0].data == b"x"


def test_state_file_fault_and_damage(broker):
    d = os.path.join(broker.path, "pubsub", "live")
    with os_fault(eph, "pwrite", errno.ENOSPC):
        with pytest.raises(fastq.DiskFull):
            broker.pubsub("live", durable=False)
    assert os.path.getsize(os.path.join(d, "pubsub.state")) == 0
    with broker.pubsub("live") as ps:                      # rewritten; the stored mode is kept
        assert not ps.durable
        with ps.subscribe(">") as sub:
            with open(os.path.join(d, "pubsub.state"), "r+b") as f:
                f.write(b"garbage!")                       # a damaged counter: rewritten on open
            with broker.pubsub("live") as ps2:
                assert ps2.publish("x", b"1") == 1
            assert sub.poll(1, timeout=1)[0].data == b"1"


def test_full_disk_is_disk_full_for_state_registration_and_ring(tmpfs_dir, monkeypatch):
    """A real full filesystem (tmpfs): opening a namespace, registering a subscriber and
    making its ring fail with DiskFull and leave nothing half-made."""
    monkeypatch.setattr(fastq._core._ring, "shm_dir", lambda: os.path.join(tmpfs_dir, "shm"))
    os.mkdir(os.path.join(tmpfs_dir, "shm"))
    with fastq.open(os.path.join(tmpfs_dir, "b")) as b:
        b.pubsub("live", durable=False).close()
        d = os.path.join(b.path, "pubsub", "live")
        os.unlink(os.path.join(d, "pubsub.state"))
        release = fill(tmpfs_dir, leave=0)
        try:
            with pytest.raises(fastq.DiskFull):
                b.pubsub("live")
        finally:
            release()
        with b.pubsub("live") as ps:
            release = fill(tmpfs_dir, leave=0)
            try:
                with pytest.raises(fastq.DiskFull):
                    ps.subscribe(">", buffer_bytes=1 << 20)
            finally:
                release()
            assert os.listdir(os.path.join(tmpfs_dir, "shm")) == []
            subs = os.path.join(d, "subs")
            assert not os.path.exists(subs) or os.listdir(subs) == []
            assert ps.publish("a", b"x") == 0
            with ps.subscribe(">") as sub:
                assert ps.publish("a", b"x") == 1 and sub.poll(1, timeout=1)[0].data == b"x"
            monkeypatch.undo()                              # rings in the real shm: only the file fails
            ring = _fixed_subscriber_id(monkeypatch, b.path, "live")
            release = fill(tmpfs_dir, leave=0)
            try:
                with pytest.raises(fastq.DiskFull):
                    ps.subscribe(">")
            finally:
                release()
            assert not os.path.exists(ring) and os.listdir(subs) == []


# -- asyncio ---------------------------------------------------------------------------------

@pytest.mark.parametrize("durable", [True, False])
def test_asyncio_subscriber(broker, durable):
    async def main():
        ps = await fastq.AsyncBroker(broker).pubsub("aio", durable=durable)
        sub = await ps.subscribe_async("a.*")
        # a cancelled poll consumes nothing
        t = asyncio.ensure_future(sub.poll(10))
        await asyncio.sleep(0.05)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        for i in range(5):
            await ps.publish_async("a.b", b"%d" % i)
        await ps.publish_many_async("a.c", [b"5", b"6"])
        got = []
        async for m in sub:
            got.append(m.data)
            if len(got) == 7:
                break
        assert got == [b"%d" % i for i in range(7)]
        # a poll cancelled after its worker fetched messages gives them back
        await ps.publish_async("a.b", b"7")
        for _ in range(20):
            t = asyncio.ensure_future(sub.poll(10, timeout=1))
            await asyncio.sleep(0)
            t.cancel()
            try:
                got = await t
                break                                      # it finished first: handed out normally
            except asyncio.CancelledError:
                got = None
        if got is None:
            got = await sub.poll(10, timeout=1)
        assert [m.data for m in got] == [b"7"]
        await sub.close()
        await sub.close()
        ps.close()

    asyncio.run(main())


def test_psubscribe_several_patterns_and_messages(broker):
    with broker.pubsub("ev") as ps:
        sub = ps.psubscribe(["orders:*", "users:?"])
        both = ps.subscribe(["a.*", "b.>", "c"])
        for ch in ["orders:eu", "users:1", "users:12", "a.x", "b.x.y", "c", "c.d", "a"]:
            ps.publish(ch, ch.encode())
        assert [m.channel for m in sub.poll(100, timeout=1)] == ["orders:eu", "users:1"]
        got = both.poll(100, timeout=1)
        assert [m.channel for m in got] == ["a.x", "b.x.y", "c"]
        m = got[0]
        assert isinstance(m, fastq.PubSubMessage) and m.data == b"a.x" and m.offset == 3
        assert pickle.loads(pickle.dumps(m)) == m and m != got[1] and "a.x" in repr(m)
        assert sub.patterns == [("orders:*", "glob"), ("users:?", "glob")]
        sub.close()
        both.close()
        with pytest.raises(fastq.Closed):
            sub.poll(1, timeout=0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only: where there is no fork, no copy of a subscriber can reach a child to release")
@pytest.mark.parametrize("durable", [True, False])
def test_fork_releases_the_childs_copy_only(broker, durable):
    ps = broker.pubsub("f", durable=durable)
    sub = ps.subscribe(">")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                           # the child: everything inherited is released
        code = 0
        try:
            for call in (lambda: ps.publish("a", b"x"), lambda: sub.poll(1, timeout=0)):
                try:
                    call()
                    code = 1
                except fastq.UsedAfterFork:
                    pass
            sub.close()
            ps.close()
        except BaseException:
            code = 2
        os.write(w, bytes([code]))
        os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"\x00" and status == 0
    got = ps.publish("a", b"after")                        # the parent's subscriber is intact
    assert durable or got == 1
    assert [m.data for m in sub.poll(10, timeout=1)] == [b"after"]
    ps.close()
    assert sub.closed


def test_asyncio_named_subscription_commits_only_what_it_handed_out(broker):
    async def main():
        ps = broker.pubsub("an")
        await (await ps.subscribe_async(">", name="n")).close()    # a new name: start committed
        await ps.publish_many_async("x", [b"%d" % i for i in range(10)])
        sub = await ps.subscribe_async(">", name="n")
        got = []
        async for m in sub:                                        # reads all 10 ahead
            got.append(m.data)
            if len(got) == 3:
                break
        await sub.commit()
        assert [m.data for m in await sub.poll(2)] == [b"3", b"4"]
        await sub.close()                                          # 5.. were fetched, not handed out
        sub = await ps.subscribe_async(">", name="n")
        assert [m.data for m in await sub.poll(100, timeout=1)] == [b"%d" % i for i in range(5, 10)]
        await sub.close()
        ps.close()

    asyncio.run(main())
