"""Consumer groups across processes: producer processes and consumer processes in one
group on one topic, with a member joining mid-stream, a producer and a consumer killed
with SIGKILL mid-stream, and a member leaving cleanly. Children open the broker
themselves (tests/group_workers.py) and log every event to their own file; the checks
below replay those files against the topic's log."""
import collections
import multiprocessing as mp
import os
import signal
import time

import pytest

import fastq
from fastq._core import _storage
from fastq.broker.offsets import OffsetStore

from group_workers import consumer_worker, producer_worker

TOPIC = "events"
GROUP = "g"
SESSION_MS = 2000
COUNT = 2500                      # records per producer


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_lines(path):
    try:
        with open(path) as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return [ln.split(" ") for ln in data.split("\n")[:-1]]    # drop a torn last line


def owned_now(path):
    owned = set()
    for ln in read_lines(path):
        if ln[0] == "A":
            owned |= set(map(int, ln[2].split(",")))
        elif ln[0] == "R":
            owned -= set(map(int, ln[2].split(",")))
    return owned


def held_locks(broker_path, partitions):
    """Which partition ownership flocks some process holds (tried without waiting)."""
    held = []
    for p in range(partitions):
        fd = os.open(os.path.join(broker_path, "groups", GROUP, "partitions", f"{TOPIC}.{p}.lock"),
                     os.O_RDWR | os.O_CREAT, 0o644)
        try:
            got = _storage.flock(fd, True, False)
            if got:
                _storage.funlock(fd)
            held.append(not got)
        finally:
            os.close(fd)
    return held


def consumed_pairs(paths):
    out = set()
    for path in paths:
        for ln in read_lines(path):
            if ln[0] == "C":
                out.add((int(ln[2]), int(ln[3])))
    return out


@pytest.mark.parametrize("ctx_name,n_producers,partitions", [("fork", 3, 6), ("spawn", 2, 4)])
def test_group_across_processes(tmp_path, ctx_name, n_producers, partitions):
    path = str(tmp_path / "b")
    with fastq.open(path) as b:
        b.topic(TOPIC, partitions=partitions)
    ctx = mp.get_context(ctx_name)
    cfiles = [str(tmp_path / f"c{i}.log") for i in range(3)]
    pfiles = [str(tmp_path / f"p{i}.log") for i in range(n_producers)]
    stops = [ctx.Event() for _ in range(3)]
    procs = []

    def start(target, args):
        pr = ctx.Process(target=target, args=args)
        pr.start()
        procs.append(pr)
        return pr

    def start_consumer(i):
        return start(consumer_worker, (path, TOPIC, GROUP, cfiles[i], stops[i], SESSION_MS, 4))

    try:
        cons = [start_consumer(0), start_consumer(1)]
        wait_until(lambda: owned_now(cfiles[0]) | owned_now(cfiles[1]) == set(range(partitions))
                   and owned_now(cfiles[0]) and owned_now(cfiles[1]), 30, "two members to split the topic")
        assert all(held_locks(path, partitions))

        prods = [start(producer_worker, (path, TOPIC, i, COUNT, pfiles[i])) for i in range(n_producers)]
        wait_until(lambda: len(read_lines(pfiles[1])) >= COUNT // 4, 30, "producer 1 to be mid-stream")

        cons.append(start_consumer(2))                # a member joins mid-stream
        wait_until(lambda: owned_now(cfiles[2]), 10, "the new member to receive partitions")

        os.kill(prods[1].pid, signal.SIGKILL)         # a producer dies mid-append (maybe)
        prods[1].join(10)
        time.sleep(0.2)

        assert owned_now(cfiles[1]), "consumer 1 owns nothing to hand over"
        t_kill = time.monotonic_ns()
        os.kill(cons[1].pid, signal.SIGKILL)          # a consumer dies mid-stream
        cons[1].join(10)
        victim_owned = owned_now(cfiles[1])           # what it owned when it died

        for i, pr in enumerate(prods):
            if i != 1:
                pr.join(60)
                assert pr.exitcode == 0, f"producer {i} exit code {pr.exitcode}"

        stops[0].set()                                # a clean leave: commit, then hand over
        cons[0].join(30)
        assert cons[0].exitcode == 0

        with fastq.open(path) as b:
            ends = b.topic(TOPIC).end_offsets()
        everything = {(p, o) for p, end in ends.items() for o in range(end)}
        wait_until(lambda: everything <= consumed_pairs(cfiles), 30, "the group to consume every record")
        wait_until(lambda: owned_now(cfiles[2]) == set(range(partitions)), 10,
                   "the last member to own every partition")
        assert all(held_locks(path, partitions))
        stops[2].set()
        cons[2].join(30)
        assert cons[2].exitcode == 0
        assert not any(held_locks(path, partitions))
        assert os.listdir(os.path.join(path, "groups", GROUP, "members", TOPIC)) == []
    finally:
        for pr in procs:
            if pr.is_alive():
                pr.kill()
                pr.join(5)

    check_run(path, partitions, cfiles, pfiles, killed=1, t_kill=t_kill, victim_owned=victim_owned)


def check_run(path, partitions, cfiles, pfiles, killed, t_kill, victim_owned):
    # -- what the topic holds ------------------------------------------------------------
    log_recs = {}
    with fastq.open(path) as b:
        t = b.topic(TOPIC)
        for p in range(partitions):
            last_seq = {}
            for rec in t.read(p):
                key, value = bytes(rec.key).decode(), bytes(rec.value).decode()
                seq = int(value.split(":")[1])
                assert last_seq.get(key, -1) < seq, f"key {key} out of order in partition {p}"
                last_seq[key] = seq
                log_recs[(p, rec.offset)] = (key, value)
            del rec
        with OffsetStore(os.path.join(path, "groups", GROUP, "offsets", f"{TOPIC}.offsets"),
                         partitions) as store:
            committed = {p: store.get(p) for p in range(partitions)}
        ends = t.end_offsets()
    assert committed == ends, "the last member committed everything before leaving"

    # -- every acknowledged record is in the log -------------------------------------------
    acked = 0
    for i, pf in enumerate(pfiles):
        for ln in read_lines(pf):
            p, off, key, seq = int(ln[1]), int(ln[2]), ln[3], int(ln[4])
            assert log_recs[(p, off)] == (key, f"{i}:{seq}")
            acked += 1
    assert acked >= (len(pfiles) - 1) * COUNT + COUNT // 4

    # -- replay each consumer's stream ----------------------------------------------------
    intervals = collections.defaultdict(list)        # p -> [(start, end, consumer, session)]
    seen = collections.defaultdict(list)              # (p, off) -> [consumer]
    sessions = []                                     # (consumer, p, start, end, [offsets])
    first_assign, start_time = {}, {}
    for i, cf in enumerate(cfiles):
        open_s = {}
        for ln in read_lines(cf):
            kind, ts = ln[0], int(ln[1])
            if kind == "S":
                start_time[i] = ts
            elif kind == "A":
                first_assign.setdefault(i, ts)
                for p in map(int, ln[2].split(",")):
                    assert p not in open_s
                    open_s[p] = (ts, [], {})
            elif kind == "R":
                for p in map(int, ln[2].split(",")):
                    s, offs, _ = open_s.pop(p)
                    sessions.append((i, p, s, ts, offs))
            elif kind == "C":
                p, off, key, value = int(ln[2]), int(ln[3]), ln[4], ln[5]
                assert p in open_s, f"consumer {i} consumed partition {p} it did not own"
                s, offs, last_seq = open_s[p]
                assert log_recs[(p, off)] == (key, value)
                assert not offs or off == offs[-1] + 1, f"consumer {i} skipped in partition {p}"
                seq = int(value.split(":")[1])
                assert last_seq.get(key, -1) < seq, f"consumer {i}: key {key} out of order"
                last_seq[key] = seq
                offs.append(off)
                seen[(p, off)].append(i)
        if i == killed:
            assert set(open_s) == victim_owned
            for p, (s, offs, _) in open_s.items():
                sessions.append((i, p, s, None, offs))    # ended by SIGKILL after t_kill
        else:
            assert not open_s, f"consumer {i} left without releasing {sorted(open_s)}"
            assert read_lines(cf)[-1][0] == "X"

    # every record consumed at least once; duplicates only from the killed member's
    # uncommitted range
    assert set(seen) == set(log_recs)
    dups = {k: v for k, v in seen.items() if len(v) > 1}
    assert all(killed in v for v in dups.values()), f"duplicates without a crash: {list(dups.items())[:5]}"
    print(f"{len(seen)} records, {len(dups)} delivered twice (uncommitted by the killed consumer)")

    # one owner at a time per partition; clean handovers resume exactly at the commit
    for p in range(partitions):
        ss = sorted((s for s in sessions if s[1] == p), key=lambda s: s[2])
        expected = None
        for prev, nxt in zip(ss, ss[1:]):
            end = prev[3] if prev[3] is not None else t_kill
            assert end < nxt[2], f"partition {p} owned by consumers {prev[0]} and {nxt[0]} at once"
        for s in ss:
            i, _, start, end, offs = s
            if offs:
                if expected is not None:
                    if expected[1]:
                        assert offs[0] == expected[0], (
                            f"partition {p}: consumer {i} started at {offs[0]} after a clean "
                            f"handover committed {expected[0]}")
                    else:
                        assert offs[0] <= expected[0], f"partition {p}: records skipped after a crash"
                expected = (offs[-1] + 1, end is not None)

    # the dead member's partitions moved to survivors within the session timeout
    for p in victim_owned:
        after = [s[2] for s in sessions if s[1] == p and s[0] != killed and s[2] > t_kill]
        assert after, f"partition {p} of the killed consumer never moved"
        moved_ms = (min(after) - t_kill) / 1e6
        assert moved_ms <= SESSION_MS, f"partition {p} moved after {moved_ms:.0f} ms"
        print(f"partition {p} of the killed consumer moved after {moved_ms:.0f} ms")

    # the member that joined mid-stream received partitions within a couple of seconds
    joined_ms = (first_assign[2] - start_time[2]) / 1e6
    print(f"new member received partitions {joined_ms:.0f} ms after starting to join")
    assert joined_ms < 2000
