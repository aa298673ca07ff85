"""Kill -9 loop over transactions (issue 15): a transactional producer is killed at each
step of a transaction (after a partition is added to it, after an append, after the
prepare record, after each marker, after the complete record), deterministically and
then at random moments; each restart reopens the transactional id, which finishes what
the dead one left. read_committed readers then never see an aborted or partial
transaction, and every committed transaction's records appear exactly once. Short by
default; FASTQ_TORTURE=1 runs the long version."""
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter

import fastq
from logutil import TORTURE, seed_for

WORKER = os.path.join(os.path.dirname(__file__), "txn_worker.py")
STEPS = ("add_partition", "publish", "prepare", "marker", "complete")
RECORDS = 6                                   # per transaction: out/0 x2, out/1 x3, other/0 x1


def _spawn(args, kill_after=None, timing=None):
    """Run a worker script until it exits, or SIGKILL it ``kill_after`` seconds after it
    said ``ready``; returns its exit status. A run that ended by itself appends its
    seconds from ``ready`` to the end to the list ``timing``, when one is given."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    assert ready and proc.stdout.readline().strip() == "ready", "worker did not start"
    t0 = time.monotonic()
    if kill_after is None and timing is not None:
        proc.wait(timeout=300)
        timing.append(time.monotonic() - t0)
    elif kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=300)
    proc.stdout.close()
    if kill_after is not None and timing is not None and proc.returncode == 0:
        timing.append(time.monotonic() - t0)
    return proc.returncode


def _run(path, run, ntx, ack, crash="none:0", kill_after=None, timing=None):
    return _spawn([WORKER, path, "tk", str(run), str(ntx), ack, crash], kill_after, timing)


def _check(path, ack):
    """After recovery: read_committed shows whole committed transactions once each, no
    aborted one, every acknowledged one; read_uncommitted shows at least as much."""
    b = fastq.open(path)
    b.transaction("tk").abort()               # open the id: finishes what a dead instance left
    out, other = b.topic("out"), b.topic("other")
    seen = Counter()
    for t, p in ((out, 0), (out, 1), (other, 0)):
        assert t.last_stable_offset(p) == t.log(p).end_offset    # nothing left open
        for r in t.read(p, isolation="read_committed"):
            v = bytes(r.value)
            if v.startswith(b"plain"):
                continue
            seen[v] += 1
    assert all(c == 1 for c in seen.values()), [v for v, c in seen.items() if c > 1][:5]
    groups = Counter(v.rsplit(b":", 1)[0] for v in seen)
    partial = {g: c for g, c in groups.items() if c != RECORDS}
    assert not partial, f"partial transactions visible: {list(partial.items())[:5]}"
    assert not [g for g in groups if int(g.split(b":")[1]) % 4 == 3], "an aborted transaction is visible"
    with open(ack) as f:
        acked = {line.strip().encode() for line in f if line.strip()}
    assert acked <= set(groups), f"acknowledged but not committed: {sorted(acked - set(groups))[:5]}"
    plain = [bytes(r.value) for r in out.read(0, isolation="read_committed") if bytes(r.value).startswith(b"plain")]
    assert plain == [b"plain%d" % i for i in range(len(plain))]
    unc = sum(1 for t, p in ((out, 0), (out, 1), (other, 0)) for _ in t.read(p))
    b.close()
    return len(groups), len(acked), unc


def _setup(tmp_path):
    path, ack = str(tmp_path / "b"), str(tmp_path / "ack")
    with fastq.open(path) as b:
        b.topic("out", partitions=2)
        b.topic("other", partitions=1)
    return path, ack


def test_kill_at_each_step_of_a_transaction(tmp_path):
    path, ack = _setup(tmp_path)
    run = 0
    plain = 0
    for step in STEPS:
        for nth in (1, 2, 3, 5):
            run += 1
            rc = _run(path, run, 8, ack, f"{step}:{nth}")
            assert rc == -signal.SIGKILL, (step, nth, rc)
            with fastq.open(path) as b:              # plain records between the runs
                b.topic("out").publish(b"plain%d" % plain, partition=0)
                plain += 1
            committed, acked, unc = _check(path, ack)
            print(f"killed at {step} #{nth}: committed transactions {committed}, acknowledged {acked}, "
                  f"records read uncommitted {unc}")
    assert committed >= acked > 0


def test_kill_at_random_moments(tmp_path):
    """The kill lands anywhere in a run: the window is the shortest whole run seen (the
    first run is not killed; one that finishes before its kill shortens the window), so
    the test kills on a fast machine and a loaded one alike."""
    rng = random.Random(seed_for("txn kill loop"))
    path, ack = _setup(tmp_path)
    whole: list[float] = []
    assert _run(path, 1, 200, ack, timing=whole) == 0
    kills = 0
    for run in range(2, (120 if TORTURE else 12) + 1):
        rc = _run(path, run, 200, ack, kill_after=rng.uniform(0.0, min(whole)), timing=whole)
        assert rc in (0, -signal.SIGKILL), rc
        kills += rc == -signal.SIGKILL
        if run % 4 == 0:
            _check(path, ack)
    committed, acked, unc = _check(path, ack)
    print(f"kills={kills} committed={committed} acknowledged={acked} uncommitted records={unc} "
          f"shortest whole run {min(whole):.3f} s")
    assert kills >= 3


def test_consume_process_produce_exactly_once_under_kills(tmp_path):
    """The consumer's group offsets commit with the transaction that published its
    output: killed at random and restarted, the output holds every input once, in order."""
    rng = random.Random(seed_for("txn eos kill loop"))
    n = 100_000 if TORTURE else 20_000
    path = str(tmp_path / "b")
    with fastq.open(path) as b:
        b.topic("in").publish_many([b"m%d" % i for i in range(n)], partition=0)
        b.topic("out2")
    worker = os.path.join(os.path.dirname(__file__), "eos_worker.py")
    kills = 0
    for _ in range(1000):
        rc = _spawn([worker, path, str(n), str(rng.randint(1, 7))], rng.uniform(0.0, 0.04))
        if rc == 0:
            break
        assert rc == -signal.SIGKILL, rc
        kills += 1
    assert rc == 0, "the worker never finished"
    with fastq.open(path) as b:
        b.transaction("eos").abort()
        out = [bytes(r.value) for r in b.topic("out2").read(0, isolation="read_committed")]
        assert out == [b"m%d-out" % i for i in range(n)]
        raw = sum(1 for _ in b.topic("out2").read(0))
    print(f"kills={kills} output records read uncommitted={raw} (committed {n})")
    assert kills >= 3
