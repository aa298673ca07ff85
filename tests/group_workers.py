"""Child-process bodies for tests/test_group_multiprocess.py (importable under spawn).
Not a test module.

Every child opens the broker itself and appends one line per event to its own file with
unbuffered ``os.write`` (O_APPEND), so a line is on record the moment the call returns —
including in a child that is then killed with SIGKILL. Times are CLOCK_MONOTONIC
nanoseconds, which are comparable across processes on one machine.

Consumer lines::

    S <t>                              about to join
    J <t> <member_id>                  joined (its first A line may come before)
    A <t> <p,p,...>                    partitions assigned (ownership flock held)
    R <t> <p,p,...>                    partitions about to be released (already committed)
    C <t> <p> <offset> <key> <value>   a record processed (logged before it is committed;
                                       commits come every `commit_every` batches and in
                                       on_revoke, so a SIGKILL leaves an uncommitted range)
    X <t>                              closed cleanly

Producer lines::

    K <p> <offset> <key> <seq>         acknowledged publish
"""
from __future__ import annotations

import os
import time

import fastq


def _writer(path: str):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    return fd, (lambda line: os.write(fd, line.encode()))


def consumer_worker(path: str, topic: str, group: str, out: str, stop, session_timeout_ms: int,
                    commit_every: int = 1) -> None:
    fd, log = _writer(out)
    now = time.monotonic_ns
    try:
        with fastq.open(path) as b:
            t = b.topic(topic)
            holder = {}

            def on_assign(ps):
                log(f"A {now()} {','.join(map(str, ps))}\n")

            def on_revoke(ps):
                holder["c"].commit()            # positions == processed records
                log(f"R {now()} {','.join(map(str, ps))}\n")

            log(f"S {now()}\n")
            c = t.consumer(group, session_timeout_ms=session_timeout_ms,
                           on_assign=on_assign, on_revoke=on_revoke)
            holder["c"] = c
            log(f"J {now()} {c.member_id}\n")
            batches = 0
            while not stop.is_set():
                recs = c.poll(50, timeout=0.05)
                if recs:
                    t_ns = now()
                    log("".join(f"C {t_ns} {r.partition} {r.offset} {bytes(r.key).decode()} "
                                f"{bytes(r.value).decode()}\n" for r in recs))
                    batches += 1
                    if batches % commit_every == 0:   # leave ranges uncommitted on purpose
                        c.commit()
                del recs
            c.close()
            log(f"X {now()}\n")
    finally:
        os.close(fd)


def producer_worker(path: str, topic: str, idx: int, count: int, out: str, keys: int = 5) -> None:
    fd, log = _writer(out)
    try:
        with fastq.open(path) as b:
            t = b.topic(topic)
            for seq in range(count):
                key = f"P{idx}-K{seq % keys}"
                md = t.publish(f"{idx}:{seq}".encode(), key=key.encode())
                log(f"K {md.partition} {md.offset} {key} {seq}\n")
                if seq % 10 == 9:
                    time.sleep(0.004)
    finally:
        os.close(fd)
