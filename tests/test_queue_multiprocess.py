"""A queue's durability promises, proven by killing processes (issue 14).

- Consumers and publishers SIGKILLed at random moments, both start methods: every
  message is acked, none is acked twice or delivered again after its ack, no two
  deliveries of one message are handed out at once, a publish_many batch is all or none,
  a publish retried with its dedup_id after a crash is stored once.
- A consumer killed while it holds messages: another receives them within a second with
  visibility_timeout=60 (the dead are found by flock, not by the lease running out).
- A process killed while it holds queue.state's lock: the next one takes the lock over,
  repairs the state and works.
- A process killed in the middle of a copy (a delayed message's promotion, a nack that
  moves the message to the delayed lane): the message is delivered exactly once after.

Randomized tests print their seed (replay with FASTQ_SEED=<seed>); FASTQ_TORTURE=1 runs
many more rounds.
"""
from __future__ import annotations

import collections
import multiprocessing as mp
import os
import random
import signal
import time

import pytest

import fastq
from logutil import TORTURE, fork_child, seed_for, wait_child
from fastq.queue.queue import DELAYED, _now_ms
from queue_workers import QUEUE, consumer, holder, op_items, op_kind, publisher, read_lines, receiver


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kill(proc, logfile=None) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL, (
        f"exit code {proc.exitcode} before the kill: {read_lines(logfile)[-3:] if logfile else ''}")


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def settled(q) -> bool:
    d = q.depth()
    return d.ready == d.delayed == d.in_flight == 0


# ---------------------------------------------------------------------------------------
# kill -9 loop


@pytest.mark.parametrize("ctx_name", ["fork", "spawn"])
def test_kill_loop_loses_nothing_and_acks_nothing_twice(tmp_path, ctx_name):
    seed = seed_for(f"queue kill loop [{ctx_name}]")
    rng = random.Random(seed)
    rounds = 300 if TORTURE else 10
    per_round = 150 if TORTURE else 60     # messages the parent publishes per round
    n_cons, n_pubs, ops = 3, 2, (2000 if TORTURE else 200)
    path = str(tmp_path / "b")
    stop = str(tmp_path / "stop")
    ctx = mp.get_context(ctx_name)
    b = fastq.open(path)
    # 3 consumers live at a time, dozens over the run: dead ones' session slots (found by
    # flock) must be reused, or a new consumer gets QueueFull and exits non-zero
    q = b.queue(QUEUE, visibility_timeout=60.0, max_sessions=4)
    must: set[str] = set()
    n_parent = 0

    def publish_round():
        nonlocal n_parent
        items = [f"m{i}" for i in range(n_parent, n_parent + per_round)]
        q.publish_many(items)
        must.update(items)
        n_parent += per_round

    publish_round()
    cfiles: list[str] = []
    killed: set[str] = set()
    cons: list[tuple] = []
    pfiles = [str(tmp_path / f"p{w}.log") for w in range(n_pubs)]
    pubs: list = [None] * n_pubs

    def start_consumer():
        f = str(tmp_path / f"c{len(cfiles)}.log")
        cfiles.append(f)
        pr = ctx.Process(target=consumer, args=(path, f, stop, rng.randrange(2**32)))
        pr.start()
        return (pr, f)

    def start_publisher(w):
        pr = ctx.Process(target=publisher, args=(path, pfiles[w], w, ops, rng.randrange(2**32)))
        pr.start()
        pubs[w] = pr

    procs_started = []
    try:
        cons = [start_consumer() for _ in range(n_cons)]
        for w in range(n_pubs):
            start_publisher(w)
        kills = collections.Counter()
        for r in range(rounds):
            time.sleep(rng.uniform(0.01, 0.12))
            publish_round()
            alive_pubs = [w for w in range(n_pubs) if pubs[w].is_alive()]
            if alive_pubs and (r in (1, 4) or rng.random() < 0.3):
                w = rng.choice(alive_pubs)
                # it may finish between is_alive and the kill (seen under heavy load): exit 0,
                # its work done, nothing to restart
                os.kill(pubs[w].pid, signal.SIGKILL)
                pubs[w].join(10)
                if pubs[w].exitcode != 0:
                    assert pubs[w].exitcode == -signal.SIGKILL, f"publisher {w} exit code {pubs[w].exitcode}"
                    kills["publisher"] += 1
                    start_publisher(w)           # resumes from its log
            else:
                i = rng.randrange(n_cons)
                pr, f = cons[i]
                kill(pr, f)
                killed.add(f)
                kills["consumer"] += 1
                cons[i] = start_consumer()
        for w in range(n_pubs):
            pubs[w].join(60)
            assert pubs[w].exitcode == 0, f"publisher {w} exit code {pubs[w].exitcode}"
        wait_until(lambda: settled(q), 60, f"the consumers to drain the queue (depth {q.depth()})")
        open(stop, "w").close()
        for pr, f in cons:
            pr.join(30)
            assert pr.exitcode == 0, f"consumer exit code {pr.exitcode}: {read_lines(f)[-3:]}"
        procs_started = cons
    finally:
        for pr, _ in cons:
            if pr.is_alive():
                pr.kill()
                pr.join(5)
        for pr in pubs:
            if pr is not None and pr.is_alive():
                pr.kill()
                pr.join(5)
    d = q.depth()
    assert (d.ready, d.delayed, d.in_flight, d.dead) == (0, 0, 0, 0), d
    assert procs_started
    b.close()
    print(f"kills: {dict(kills)}")
    assert kills["publisher"] >= 1 and kills["consumer"] >= 1

    # -- what the publishers stored: every confirmed op, all or none of an unconfirmed one
    maybe_batches: list[set[str]] = []
    for w, pf in enumerate(pfiles):
        lines = read_lines(pf)
        assert lines[-1] == ["done"]
        pubbed = {int(ln[1]) for ln in lines if ln[0] == "pub"}
        tried = {int(ln[1]) for ln in lines if ln[0] == "try"}
        for j in range(ops):
            if j in pubbed:
                must.update(op_items(w, j))
            else:
                assert j in tried, f"publisher {w} skipped op {j}"
                assert op_kind(j) != "dedup", f"dedup op {j} of publisher {w} was not retried"
                maybe_batches.append(set(op_items(w, j)))
    check_consumer_logs(cfiles, killed, must, maybe_batches)


def check_consumer_logs(cfiles, killed, must, maybe_batches):
    recv = collections.defaultdict(list)       # data -> [(delivery count, id, file)]
    acking = collections.defaultdict(list)     # data -> [(delivery count, file)]
    acked = collections.defaultdict(list)
    for f in cfiles:
        lines = read_lines(f)
        if f not in killed:
            assert lines[-1] == ["exit"], f"{f} did not end cleanly"
        for ln in lines:
            if ln[0] == "recv":
                recv[ln[1]].append((int(ln[2]), int(ln[3]), f))
            elif ln[0] == "acking":
                acking[ln[1]].append((int(ln[2]), f))
            elif ln[0] == "acked":
                acked[ln[1]].append(int(ln[2]))
            elif ln[0] == "lost":
                raise AssertionError(f"{f}: a lease was lost with visibility_timeout=60: {ln}")
    got = set(recv)
    assert must <= got, f"{len(must - got)} stored messages never delivered, e.g. {sorted(must - got)[:5]}"
    maybe = set().union(*maybe_batches) if maybe_batches else set()
    assert got <= must | maybe, f"delivered but never published: {sorted(got - must - maybe)[:5]}"
    for batch in maybe_batches:
        assert not batch & got or batch <= got, f"a publish_many batch stored in part: {sorted(batch & got)}"
    redelivered = 0
    for data, lst in recv.items():
        counts = [c for c, _, _ in lst]
        assert len(counts) == len(set(counts)), f"{data}: one delivery handed out twice: {lst}"
        ids = {i for _, i, _ in lst}
        assert len(ids) == 1, f"{data} stored as {len(ids)} messages (ids {ids}): a duplicate"
        assert len(acked[data]) <= 1, f"{data} acked twice: {acked[data]}"
        last = max(counts)
        redelivered += len(counts) > 1
        if acked[data]:
            assert acked[data][0] == last, f"{data} delivered again after its ack: {sorted(lst)}"
        else:
            # the consumer of its last delivery died between "acking" and "acked": that ack
            # took effect (the queue is empty), and nothing delivered it after
            dying = [f for c, f in acking[data] if c == last]
            assert dying and dying[0] in killed, f"{data}: last delivery {last} never acked: {sorted(lst)}"
    print(f"{len(recv)} messages, {redelivered} delivered more than once")


# ---------------------------------------------------------------------------------------
# a dead consumer's messages come back at once, not after the visibility timeout


@pytest.mark.parametrize("ctx_name", ["fork", "spawn"])
def test_killed_consumers_messages_are_redelivered_within_a_second(tmp_path, ctx_name):
    path = str(tmp_path / "b")
    stop = str(tmp_path / "stop")
    ctx = mp.get_context(ctx_name)
    with fastq.open(path) as b:
        b.queue(QUEUE, visibility_timeout=60.0).publish_many(["x0", "x1", "x2"])
    hf, rf = str(tmp_path / "holder.log"), str(tmp_path / "receiver.log")
    h = ctx.Process(target=holder, args=(path, hf, 3))
    r = ctx.Process(target=receiver, args=(path, rf, stop))
    try:
        h.start()
        wait_until(lambda: ["held"] in read_lines(hf), 30, "the holder to hold all three")
        r.start()
        wait_until(lambda: ["ready"] in read_lines(rf), 30, "the receiver to start")
        time.sleep(0.05)
        assert not [ln for ln in read_lines(rf) if ln[0] == "recv"], "received while the holder lived"
        t_kill = time.monotonic_ns()
        kill(h)
        wait_until(lambda: len([ln for ln in read_lines(rf) if ln[0] == "recv"]) == 3, 10,
                   "the receiver to get the dead holder's messages")
        open(stop, "w").close()
        r.join(10)
        assert r.exitcode == 0
    finally:
        for pr in (h, r):
            if pr.is_alive():
                pr.kill()
                pr.join(5)
    got = [ln for ln in read_lines(rf) if ln[0] == "recv"]
    assert sorted(ln[1] for ln in got) == ["x0", "x1", "x2"]
    assert all(ln[2] == "2" for ln in got), got          # second delivery each
    worst = max(int(ln[4]) - t_kill for ln in got) / 1e6
    print(f"redelivered {worst:.1f} ms after the kill")
    assert worst < 1000, f"redelivery took {worst:.0f} ms with visibility_timeout=60"
    with fastq.open(path) as b:
        d = b.queue(QUEUE).depth()
        assert (d.ready, d.delayed, d.in_flight) == (0, 0, 0)


# ---------------------------------------------------------------------------------------
# killed while holding queue.state's lock


def _alarm(seconds):
    def handler(signum, frame):
        raise AssertionError(f"blocked for {seconds} s: the dead holder's lock was not taken over")
    signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_lock_holder_killed_lock_is_taken_over_and_state_repaired(tmp_path, reap):
    path = str(tmp_path / "b")
    b = fastq.open(path)
    q = b.queue(QUEUE, visibility_timeout=60.0)
    q.publish_many([f"a{i}" for i in range(5)])
    q.publish("late0", delay=0.01)

    def child():
        b2 = fastq.open(path)
        q2 = b2.queue(QUEUE)
        held = q2.receive(2, wait=5)              # two in flight on a session that dies
        assert [m.data for m in held] == ["a0", "a1"]
        q2._lock()
        # inside the critical section: a delayed publish's append and tracking done
        q2._append_locked(0, 0, q2.codec.encode("late1"), None, [], _now_ms(),
                          0.01, None, 0, None)
        os.kill(os.getpid(), signal.SIGKILL)

    pid = fork_child(child)
    if reap:
        assert wait_child(pid) == -signal.SIGKILL
    else:
        wait_until(lambda: proc_state(pid) == "Z", 10, "the child to die")
    assert q._state.holder() == pid
    _alarm(10)
    try:
        q.publish("late2", delay=0.01)            # takes the lock over and repairs
        steals = q._state.lock_steals
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 8 and time.monotonic() < deadline:
            got += q.receive(8, wait=0.5)
    finally:
        signal.alarm(0)
    if not reap:
        assert wait_child(pid) == -signal.SIGKILL
    assert steals == 1
    assert sorted(m.data for m in got) == sorted([f"a{i}" for i in range(5)] + ["late0", "late1", "late2"])
    counts = {m.data: m.delivery_count for m in got}
    assert counts["a0"] == counts["a1"] == 2 and counts["a2"] == 1
    d = q.depth()
    assert (d.ready, d.delayed, d.in_flight, d.dead) == (0, 0, 8, 0), d
    q.ack_many(got)
    assert q.receive(1, wait=0.1) == []
    d = q.depth()
    assert (d.ready, d.delayed, d.in_flight, d.dead) == (0, 0, 0, 0), d
    assert q._state.holder() == 0
    b.close()


def test_lock_holder_killed_mid_update_derived_counters_are_rebuilt(tmp_path):
    """A holder killed inside an operation leaves counters, hints, the heap and session
    counts half-updated (csrc/fq_queue.h "Lock"): slots are the truth, and the taker's
    repair rebuilds the rest. Garbled on purpose here before the kill."""
    import struct
    path = str(tmp_path / "b")
    b = fastq.open(path)
    q = b.queue(QUEUE, visibility_timeout=60.0)
    q.publish_many([f"a{i}" for i in range(5)])
    q.publish("late0", delay=0.3)                # tracked: a heap entry, due after the kill
    state = os.path.join(q.dir, "queue.state")

    def child():
        b2 = fastq.open(path)
        q2 = b2.queue(QUEUE)
        held = q2.receive(2, wait=5)
        assert [m.data for m in held] == ["a0", "a1"]
        held[1].nack()                            # an AVAILABLE slot inside the window
        session = q2._session
        q2._lock()
        fd = os.open(state, os.O_RDWR)
        lane0 = 4096                              # lanes[0]: spso speo available acquired
        os.pwrite(fd, struct.pack("<qqqqq", 999, -7, 0, 1 << 40, 0), lane0 + 16)  # .. expiry hint
        os.pwrite(fd, struct.pack("<Q", 0), 192)  # heap_len: the delayed message forgotten
        sessions = 4096 + 11 * 64
        os.pwrite(fd, struct.pack("<q", 0), sessions + 32 * session + 8)   # its in-flight count
        os.kill(os.getpid(), signal.SIGKILL)

    assert wait_child(fork_child(child)) == -signal.SIGKILL
    _alarm(10)
    try:
        q.publish("late1", delay=0.01)            # takes the lock over and repairs
    finally:
        signal.alarm(0)
    d = q.depth()
    assert (d.ready, d.delayed, d.in_flight, d.dead) == (4, 2, 1, 0), d
    time.sleep(0.02)
    got = []
    deadline = time.monotonic() + 3
    while len(got) < 7 and time.monotonic() < deadline:
        got += q.receive(8, wait=0.3)
    counts = {m.data: m.delivery_count for m in got}
    assert counts == {"a0": 2, "a1": 2, "a2": 1, "a3": 1, "a4": 1, "late0": 1, "late1": 1}, counts
    q.ack_many(got)
    assert q.receive(1, wait=0.1) == []
    d = q.depth()
    assert (d.ready, d.delayed, d.in_flight, d.dead) == (0, 0, 0, 0), d
    b.close()


def test_lock_holder_killed_while_another_process_waits(tmp_path):
    """The waiter blocked in the lock (not a newcomer) takes it over."""
    path = str(tmp_path / "b")
    with fastq.open(path) as b:
        b.queue(QUEUE, visibility_timeout=60.0).publish("w0")
    ready = str(tmp_path / "locked")

    def locker():
        b2 = fastq.open(path)
        q2 = b2.queue(QUEUE)
        q2._lock()
        open(ready, "w").close()
        time.sleep(0.3)                           # the waiter is spinning on the word now
        os.kill(os.getpid(), signal.SIGKILL)

    def waiter():
        wait_until(lambda: os.path.exists(ready), 10, "the locker")
        b2 = fastq.open(path)
        q2 = b2.queue(QUEUE)
        t0 = time.monotonic()
        got = q2.receive(1, wait=5)
        assert [m.data for m in got] == ["w0"], got
        assert time.monotonic() - t0 < 3
        got[0].ack()
        assert q2._state.lock_steals == 1
        b2.close()

    lp = fork_child(locker)
    wp = fork_child(waiter)
    assert wait_child(lp) == -signal.SIGKILL
    assert wait_child(wp) == 0
    with fastq.open(path) as b:
        d = b.queue(QUEUE).depth()
        assert (d.ready, d.delayed, d.in_flight) == (0, 0, 0), d


# ---------------------------------------------------------------------------------------
# killed in the middle of a copy (the intent protocol)


class _StateProxy:
    """Stands in for a Queue's QueueState (a C type whose methods cannot be patched): the
    named method SIGKILLs the process right after it ran."""

    def __init__(self, real, die_after: str):
        self._real = real
        self._die_after = die_after

    def __getattr__(self, name):
        attr = getattr(self._real, name)
        if name != self._die_after:
            return attr

        def call(*a, **k):
            r = attr(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
            return r
        return call


def _die_after_append(lg, before=False):
    real = lg.append

    def append(*a, **k):
        if before:
            os.kill(os.getpid(), signal.SIGKILL)
        r = real(*a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
        return r
    lg.append = append


def _lane(q, prio):
    return q._lanes[prio]        # partition 0


@pytest.mark.parametrize("point", ["set_intent", "append", "heap_pop"])
def test_promotion_killed_mid_copy_delivers_exactly_once(tmp_path, point):
    """Promotion of a due delayed message: intent, append to the priority lane, heap_pop
    (settles the source), clear intent. Killed after each step."""
    path = str(tmp_path / "b")
    b = fastq.open(path)
    q = b.queue(QUEUE, visibility_timeout=60.0)
    q.publish("early", priority=3)
    q.publish("after", priority=3)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def child():
        b2 = fastq.open(path)
        q2 = b2.queue(QUEUE)
        assert [m.data for m in q2.receive(2, wait=5)] == ["early", "after"]   # acked below
        dst = q2._lane_log(_lane(q2, 3), create=True)
        if point == "append":
            _die_after_append(dst)
        else:
            q2._state = _StateProxy(q2._state, point)
        os.write(ready_w, b"r")
        assert os.read(go_r, 1) == b"g"        # "due" is published now: due in 50 ms
        time.sleep(0.1)
        q2.receive(1, wait=5)
        raise AssertionError("the promotion did not happen")

    # "due" is published only once the child is armed: published before, its 50 ms could
    # pass while a loaded machine forked and opened the child, which then promoted it
    # unarmed in its first receive
    pid = fork_child(child, close_fds=(ready_r, go_w))
    try:
        assert os.read(ready_r, 1) == b"r"
        q.publish("due", delay=0.05, priority=3)
        os.write(go_w, b"g")
    finally:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
    assert wait_child(pid) == -signal.SIGKILL
    it = q._state.intent()
    assert it is not None and it[0] == 1, f"not killed mid-promotion: intent {it}"
    dlog = q._lane_log(_lane(q, 3))
    copies = [r for r in dlog.read(0) if bytes(r.value) == b'"due"']
    assert len(copies) == (0 if point == "set_intent" else 1)
    del copies
    _expect_exactly(q, {"early": 2, "after": 2, "due": 1})
    b.close()


@pytest.mark.parametrize("point", ["set_intent", "append", "settle"])
def test_nack_move_killed_mid_copy_delivers_exactly_once(tmp_path, point):
    """nack(error=...) moves the message to the delayed lane: intent, append there,
    settle the source, clear intent. Killed after each step."""
    path = str(tmp_path / "b")
    b = fastq.open(path)
    q = b.queue(QUEUE, visibility_timeout=60.0)
    q.publish("moved")

    def child():
        b2 = fastq.open(path)
        q2 = b2.queue(QUEUE)
        (m,) = q2.receive(1, wait=5)
        dl = q2._lane_log(_lane(q2, DELAYED), create=True)
        if point == "append":
            _die_after_append(dl)
        else:
            q2._state = _StateProxy(q2._state, point)
        m.nack(error="boom")
        raise AssertionError("the nack did not copy")

    assert wait_child(fork_child(child)) == -signal.SIGKILL
    it = q._state.intent()
    assert it is not None and it[0] == 2, f"not killed mid-move: intent {it}"
    time.sleep(0.01)
    got = _expect_exactly(q, {"moved": 2})
    # the copy carries the error exactly when it was made
    assert got["moved"].last_error == (None if point == "set_intent" else "boom")
    b.close()


def _expect_exactly(q, want: dict) -> dict:
    """Receive until nothing more comes: each of ``want`` exactly once, with that delivery
    count; ack them; the queue is empty after."""
    got = {}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for m in q.receive(10, wait=0.3):
            assert m.data not in got, f"{m.data!r} delivered twice"
            got[m.data] = m
        if set(got) == set(want):
            break
    assert {k: m.delivery_count for k, m in got.items()} == want
    assert q.receive(1, wait=0.3) == [], "something was delivered again"
    q.ack_many(got.values())
    d = q.depth()
    assert (d.ready, d.delayed, d.in_flight) == (0, 0, 0), d
    assert q._state.intent() is None
    return got


@pytest.mark.parametrize("delay", [None, 0.01], ids=["plain", "delayed"])
def test_dedup_publish_killed_after_its_append_is_stored_once_when_retried(tmp_path, delay):
    """The point of a dedup_id: a publisher that died without knowing whether its publish
    was stored retries with the same id. Killed right after the append (before the dedup
    table knew the id), the retry must still find it."""
    path = str(tmp_path / "b")
    b = fastq.open(path)
    q = b.queue(QUEUE, visibility_timeout=60.0)

    def child():
        b2 = fastq.open(path)
        q2 = b2.queue(QUEUE)
        _die_after_append(q2._lane_log(_lane(q2, DELAYED if delay else 0), create=True))
        q2.publish("once", dedup_id="order-1", delay=delay)
        raise AssertionError("the publish did not append")

    assert wait_child(fork_child(child)) == -signal.SIGKILL
    mid = q.publish("once", dedup_id="order-1", delay=delay)          # the retry
    assert q.publish("once", dedup_id="order-1", delay=delay) == mid
    time.sleep(0.02)
    got = _expect_exactly(q, {"once": 1})
    assert got["once"].id == mid
    b.close()


@pytest.mark.parametrize("point", ["dlq_append", "settle"])
def test_dead_lettering_killed_midway_stores_one_dead_letter(tmp_path, point):
    """Dead-lettering publishes to the dead-letter queue (with a dedup_id naming the
    message), then settles the source. Killed after either step, the message ends up in the
    dead-letter queue once and is never delivered from its queue again."""
    path = str(tmp_path / "b")
    b = fastq.open(path)
    q = b.queue(QUEUE, visibility_timeout=60.0, max_deliveries=1, dead_letter="dlq")
    dlq = b.queue("dlq")
    q.publish("poison")
    q.publish("fine")

    def child():
        b2 = fastq.open(path)
        q2 = b2.queue(QUEUE)
        (m,) = q2.receive(1, wait=5)
        m.nack()                                  # the next delivery is one too many
        d2 = q2._dead_letter_queue()
        if point == "dlq_append":
            _die_after_append(d2._lane_log(_lane(d2, 0), create=True))
        else:                                     # the settle takes the lock itself (settle_now)
            q2._state = _StateProxy(q2._state, "settle_now")
        q2.receive(1, wait=5)
        raise AssertionError("not dead-lettered")

    assert wait_child(fork_child(child)) == -signal.SIGKILL
    _expect_exactly(q, {"fine": 1})               # "poison" is dead-lettered (again) on the way
    got = _expect_exactly(dlq, {"poison": 1})
    assert got["poison"].headers["dlq-source-queue"] == QUEUE.encode()
    assert q.depth().dead == 1
    b.close()


def test_new_consumer_is_not_refused_while_another_reaps_a_dead_session(tmp_path):
    """A receiver reaping a dead consumer holds that session's flock for a moment; a
    consumer starting just then (as a replacement does) found every slot held and got
    QueueFull, with max_sessions free slots in truth. It must wait that moment out."""
    import threading
    from fastq._core import _storage
    path = str(tmp_path / "b")
    b = fastq.open(path)
    q = b.queue(QUEUE, visibility_timeout=60.0, max_sessions=1)
    q.publish("x")

    def child():
        b2 = fastq.open(path)
        assert len(b2.queue(QUEUE).receive(1, wait=5)) == 1
        os.kill(os.getpid(), signal.SIGKILL)

    assert wait_child(fork_child(child)) == -signal.SIGKILL
    fd = os.open(os.path.join(q.dir, "sessions", "0.lock"), os.O_RDWR)
    assert _storage.flock(fd, True, False)        # a reaper's probe of the dead session
    release = threading.Timer(0.1, lambda: (_storage.funlock(fd), os.close(fd)))
    release.start()
    try:
        got = q.receive(1, wait=5)
    finally:
        release.join()
    assert [(m.data, m.delivery_count) for m in got] == [("x", 2)]
    got[0].ack()
    b.close()
