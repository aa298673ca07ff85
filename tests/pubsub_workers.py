"""Child-process bodies for tests/test_pubsub.py (run as ``python pubsub_workers.py CMD ...``).

``subscribe PATH NS SYNTAX PATTERN OUT``: subscribe, print "ready", take messages until
one with data b"END", then write every message before it to OUT as JSON lines.

``durable PATH NS NAME OUT END``: a named durable subscription; appends each message's
offset to OUT (one line, written before the next poll commits it) until it sees offset
END - 1; with FASTQ_SLOW=1 it pauses a little per batch so a kill lands mid-way.
"""
from __future__ import annotations

import json
import os
import sys
import time

import fastq


def subscribe(path: str, ns: str, syntax: str, pattern: str, out: str) -> None:
    with fastq.open(path) as broker:
        ps = broker.pubsub(ns)
        opts = {} if ps.durable else {"buffer_bytes": 8 << 20}
        sub = ps.subscribe(pattern, syntax=syntax, **opts)
        print("ready", flush=True)
        got = []
        done = False
        while not done:
            msgs = sub.poll(1000, timeout=30)
            if not msgs:
                raise SystemExit("no message for 30 s")
            for m in msgs:
                if m.data == b"END":
                    done = True
                    break
                got.append([m.channel, m.data.decode(), m.offset])
        with open(out, "w") as f:
            for g in got:
                f.write(json.dumps(g) + "\n")
        ps.close()


def durable(path: str, ns: str, name: str, out: str, end: int) -> None:
    slow = os.environ.get("FASTQ_SLOW") == "1"
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    with fastq.open(path) as broker:
        ps = broker.pubsub(ns)
        sub = ps.subscribe(">", name=name)
        print("ready", flush=True)
        while True:
            msgs = sub.poll(50, timeout=30)
            if not msgs:
                raise SystemExit("no message for 30 s")
            os.write(fd, "".join(f"{m.offset}\n" for m in msgs).encode())
            if msgs[-1].offset >= end - 1:
                break
            if slow:
                time.sleep(0.002)
        sub.close()
        ps.close()
    os.close(fd)


def hold(path: str, ns: str) -> None:
    """Subscribe to everything and never read: the test kills this process."""
    with fastq.open(path) as broker:
        broker.pubsub(ns).subscribe(">")
        print("ready", flush=True)
        time.sleep(60)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "subscribe":
        subscribe(*args)
    elif cmd == "hold":
        hold(*args)
    elif cmd == "durable":
        durable(args[0], args[1], args[2], args[3], int(args[4]))
    else:
        raise SystemExit(f"unknown command {cmd}")
