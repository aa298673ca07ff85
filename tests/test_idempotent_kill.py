"""Kill -9 loop: transactional producers killed after appending but before they
acknowledged, restarted with the same transactional id, retry with the same sequences —
every record is stored exactly once, in order. Two producers run at once on the same
partitions (kills also land while one holds a partition's writer lock). Short by
default; FASTQ_TORTURE=1 runs the long version."""
import os
import random
import select
import signal
import subprocess
import sys

import fastq
from logutil import TORTURE, seed_for

WORKER = os.path.join(os.path.dirname(__file__), "idempotent_worker.py")
TXIDS = ("ka", "kb")


def _start(path, txid, n, tmp):
    proc = subprocess.Popen([sys.executable, WORKER, path, txid, str(n), os.path.join(tmp, txid + ".progress"),
                             os.path.join(tmp, txid + ".dups"), "3", "0.001"],
                            stdout=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    assert ready and proc.stdout.readline().strip() == "ready", "worker did not start"
    return proc


def test_killed_transactional_producers_store_every_record_once(tmp_path):
    rng = random.Random(seed_for("idempotent kill loop"))
    n = 10000 if TORTURE else 1500
    min_kills = 8
    path = str(tmp_path / "b")
    fastq.open(path).close()
    # rounds of two producers until the loop has killed min_kills times: how many kills one
    # round gets depends on the machine (on a loaded one the survivor of a kill finishes
    # while its partner's interpreter starts), so a busy machine runs more rounds
    txids: list[str] = []
    kills = 0
    for rnd in range(20):
        pair = tuple(f"{t}{rnd}" for t in TXIDS)
        txids += pair
        kills += _kill_loop(path, pair, n, rng, str(tmp_path))
        if kills >= min_kills:
            break
    b = fastq.open(path)
    t = b.topic("t")
    stored = {p: [bytes(r.value) for r in t.read(p)] for p in (0, 1)}
    for txid in txids:
        for p in (0, 1):
            mine = [v for v in stored[p] if v.startswith(txid.encode() + b":")]
            assert mine == [b"%s:%d" % (txid.encode(), i) for i in range(p, n, 2)], (txid, p)
    retried = 0
    for txid in txids:
        with open(tmp_path / (txid + ".dups")) as f:
            for line in f:
                i, offset = map(int, line.split())
                assert t.log(i % 2).get(offset).value == b"%s:%d" % (txid.encode(), i)
                retried += 1
    print(f"rounds={len(txids) // 2} kills={kills} retries answered from a stored batch={retried}")
    assert kills >= min_kills
    assert retried > 0          # the loop did retry records that had been stored
    b.close()


def _kill_loop(path, pair, n, rng, tmp) -> int:
    """Run the producers of ``pair`` to the end, killing one at a random moment after
    its first publish again and again (each restart resumes). Returns the kills."""
    running, done, kills = {}, set(), 0
    for _ in range(100000):
        for txid in pair:
            if txid not in done and txid not in running:
                running[txid] = _start(path, txid, n, tmp)
        if not running:
            break
        txid = rng.choice(sorted(running))
        proc = running[txid]
        # the kill's clock starts at the worker's first publish ("" at EOF: it had none left)
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready and proc.stdout.readline().strip() in ("publishing", ""), "worker did not publish"
        try:
            proc.wait(timeout=rng.uniform(0.0, 0.12))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            assert proc.returncode == 0, f"worker {txid} failed with {proc.returncode}"
            done.add(txid)
        proc.stdout.close()
        del running[txid]
    assert done == set(pair)
    return kills
