"""The operator commands as real subprocesses (``python -m fastq``) against a broker that
another process is writing to: the read-only ones succeed while the writer appends."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import fastq
from logutil import tree_snapshot

# Publishes to topic "live" (2 partitions, 4 KiB segments) until its stdin closes; says
# "ready" once each partition has rolled a few segments. Paced a little (a wait on the
# stop event, not a sleep-as-synchronization) so it does not eat a shared core.
WRITER = textwrap.dedent("""
    import sys, threading, fastq
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with fastq.open(sys.argv[1]) as b:
        t = b.topic("live", partitions=2, segment_bytes=4096)
        i = 0
        while not stop.is_set():
            t.publish(b"value-%d" % i, key=b"k%d" % i, partition=i % 2)
            i += 1
            if i == 600:
                print("ready", flush=True)
            if i % 50 == 0:
                stop.wait(0.002)
""")


class Lines:
    """A subprocess's stdout read line by line by a thread, so the test waits for a
    line with a bound (``next(timeout)`` fails the test) instead of blocking in
    readline forever when the child prints nothing."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.q: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.q.put(line)
        self.q.put(None)                                   # EOF

    def next(self, timeout: float = 30.0) -> str:
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from {self.proc.args} within {timeout} s") from None
        assert line is not None, f"{self.proc.args} closed its stdout (exit {self.proc.poll()})"
        return line

    def stop(self, sig: int, timeout: float = 30.0) -> tuple[int, str]:
        """Send ``sig``, wait (bounded) for the exit; (exit code, stderr)."""
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.proc.args} did not exit within {timeout} s of signal {sig}") from None
        self.thread.join(timeout)
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc, err


def spawn(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fastq", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def end_offsets(path: str, topic: str = "live") -> dict[int, int]:
    with fastq.open(path, create=False, readonly=True) as b:
        return b.topic(topic, create=False).end_offsets()


def fq(*args, ok=True, timeout=60):
    res = subprocess.run([sys.executable, "-m", "fastq", *map(str, args)], capture_output=True, text=True,
                         timeout=timeout)
    assert "Traceback" not in res.stderr, res.stderr
    if ok:
        assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res


@pytest.fixture
def live(tmp_path):
    """A broker directory with a writer process appending to topic "live"."""
    path = str(tmp_path / "b")
    fastq.open(path).close()
    w = subprocess.Popen([sys.executable, "-c", WRITER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert w.stdout.readline().strip() == "ready"
        yield path
    finally:
        w.stdin.close()
        assert w.wait(timeout=60) == 0
        w.stdout.close()


def test_read_only_commands_while_another_process_writes(live):
    rows = json.loads(fq("topics", "list", "-b", live, "--json").stdout)
    assert rows[0]["topic"] == "live" and rows[0]["records"] >= 600
    doc = json.loads(fq("topics", "describe", "-b", live, "live", "--json").stdout)
    assert all(p["segments"] >= 2 for p in doc["partitions"])
    recs = [json.loads(line) for line in fq("consume", "-b", live, "live", "--json", "-c", "50").stdout.splitlines()]
    assert len(recs) == 50 and all(r["value"].startswith("value-") for r in recs)
    res = fq("verify", live)
    assert res.stdout.count(": ok") == 2
    active = sorted(f for f in os.listdir(os.path.join(live, "topics", "live", "0")) if f.endswith(".log"))[-1]
    res = fq("dump", os.path.join(live, "topics", "live", "0", active), "--json")
    assert all(json.loads(line)["crc_ok"] for line in res.stdout.splitlines())
    assert json.loads(fq("groups", "list", "-b", live, "--json").stdout) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_consume_follow_prints_records_written_after_it_started_and_stops_cleanly(live, sig):
    """``fastq consume --follow`` (no group: the broker opened read-only) as a process
    beside the writer: it prints records appended after it started, then a signal ends
    it at once with exit code 0 and no traceback."""
    before = end_offsets(live)
    c = Lines(spawn("consume", "-b", live, "live", "--follow", "--json", "--from", "latest"))
    try:
        recs = [json.loads(c.next()) for _ in range(40)]
    finally:
        rc, err = c.stop(sig)
    assert "Traceback" not in err and rc == 0, (rc, err)
    assert all(r["offset"] >= before[r["partition"]] for r in recs), (before, recs[:3])
    for p in (0, 1):                                    # in order within each partition
        offs = [r["offset"] for r in recs if r["partition"] == p]
        assert offs == sorted(offs) and len(set(offs)) == len(offs)


def flip_byte(path: str, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def test_verify_beside_a_writer_finds_corruption_planted_in_a_sealed_segment(live):
    """``fastq verify`` as a process while the writer appends: clean → exit 0; a byte
    flipped inside a sealed segment's batch of the partition being written → exit 1,
    and the report names that file and that batch's position (the live active segment
    is judged only up to its acknowledged end, so the appends are no problem)."""
    assert fq("verify", live).stdout.count(": ok") == 2
    d = os.path.join(live, "topics", "live", "0")
    segs = sorted(f for f in os.listdir(d) if f.endswith(".log"))
    assert len(segs) >= 2
    seg = os.path.join(d, segs[0])                      # sealed: the writer appends to segs[-1]
    batches = [json.loads(line) for line in fq("dump", seg, "--json").stdout.splitlines()]
    victim = batches[len(batches) // 2]
    at = victim["position"] + victim["size"] - 2        # the last value byte (a header count follows)
    flip_byte(seg, at)
    res = fq("verify", live, ok=False)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert f"crc-mismatch     {seg} @ {victim['position']}" in res.stdout, res.stdout
    assert "1 of 2 log(s) damaged" in res.stdout
    doc = json.loads(fq("verify", live, "--json", ok=False).stdout)
    problems = [(p["kind"], p["path"], p["position"]) for log in doc["logs"] for p in log["problems"]]
    assert problems == [("crc-mismatch", seg, victim["position"])]
    flip_byte(seg, at)                                  # put it back: clean again, the writer still on
    assert fq("verify", live).stdout.count(": ok") == 2


@pytest.fixture
def filled(tmp_path):
    """A broker with topic "t" (2 partitions) holding v0..v19, partition i % 2 (offsets 0..9)."""
    path = str(tmp_path / "b")
    with fastq.open(path) as b:
        t = b.topic("t", partitions=2)
        for i in range(20):
            t.publish(b"v%d" % i, partition=i % 2)
    return path


def committed(path: str, group: str = "g") -> dict[int, int | None]:
    doc = json.loads(fq("groups", "describe", "-b", path, group, "--json").stdout)
    return {p["partition"]: p["committed"] for p in doc["topics"][0]["partitions"]}


def test_reset_offsets_moves_a_group_that_a_consumer_process_then_follows(filled):
    """A member process (``consume --group --follow``) prints and commits everything;
    while it lives, ``reset-offsets --execute`` is refused (one line, exit 2); once a
    signal stopped it, the dry run shows the plan and writes nothing, ``--execute``
    moves the group, and a new member process starts exactly there and follows on."""
    m = Lines(spawn("consume", "-b", filled, "t", "-g", "g", "--follow", "--json"))
    try:
        got = sorted((r["partition"], r["offset"]) for r in (json.loads(m.next()) for _ in range(20)))
        assert got == [(p, o) for p in (0, 1) for o in range(10)]
        res = fq("groups", "reset-offsets", "-b", filled, "g", "-t", "t", "--to-offset", "3", "--execute", ok=False)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("fastq: error: ") \
            and "live member" in lines[0], res.stderr
    finally:
        rc, err = m.stop(signal.SIGINT)
    assert rc == 0 and "Traceback" not in err, err
    assert committed(filled) == {0: 10, 1: 10}          # all it printed, committed before it stopped

    before = tree_snapshot(filled)
    plan = json.loads(fq("groups", "reset-offsets", "-b", filled, "g", "-t", "t", "--to-offset", "3", "--json").stdout)
    assert plan["executed"] is False
    assert [(p["partition"], p["current"], p["new"]) for p in plan["partitions"]] == [(0, 10, 3), (1, 10, 3)]
    assert "dry run" in fq("groups", "reset-offsets", "-b", filled, "g", "-t", "t", "--to-offset", "3").stdout
    assert tree_snapshot(filled) == before               # the dry runs changed nothing
    fq("groups", "reset-offsets", "-b", filled, "g", "-t", "t", "--to-offset", "3", "--execute")
    assert committed(filled) == {0: 3, 1: 3}

    c = Lines(spawn("consume", "-b", filled, "t", "-g", "g", "--follow", "--json"))
    try:
        recs = [json.loads(c.next()) for _ in range(14)]
        for p in (0, 1):
            assert [r["offset"] for r in recs if r["partition"] == p] == list(range(3, 10))
        with fastq.open(filled, create=False) as b:      # appended while it follows
            t = b.topic("t", create=False)
            t.publish(b"late0", partition=0)
            t.publish(b"late1", partition=1)
        late = sorted((r["partition"], r["offset"], r["value"]) for r in (json.loads(c.next()) for _ in range(2)))
        assert late == [(0, 10, "late0"), (1, 10, "late1")]
    finally:
        rc, err = c.stop(signal.SIGTERM)
    assert rc == 0 and "Traceback" not in err, err
    assert committed(filled) == {0: 11, 1: 11}


def test_dump_index_files_beside_the_writer(live):
    """The .index and .timeindex of every segment, the active one included, dump
    cleanly (exit 0, no problem) while the writer appends. The writer's 4 KiB segments
    stay under the default 4 KiB index interval, so these files hold no entry: the
    entries themselves are checked in test_cli_ops (test_dump_index_*)."""
    d = os.path.join(live, "topics", "live", "0")
    names = sorted(f for f in os.listdir(d) if f.endswith((".index", ".timeindex")))
    assert len(names) >= 4
    for n in names:
        entries = [json.loads(line) for line in fq("dump", os.path.join(d, n), "--json").stdout.splitlines()]
        assert all("problem" not in e for e in entries)
        offsets = [e["offset"] for e in entries]
        assert offsets == sorted(set(offsets)) and all(o >= int(n[:20]) for o in offsets)
