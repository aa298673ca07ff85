"""The operator commands as real subprocesses (``python -m fastq``) against a broker that
another process is writing to: the read-only ones succeed while the writer appends."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import fastq

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
