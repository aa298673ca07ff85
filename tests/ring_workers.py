"""Child-process bodies for the ring's cross-process tests.

They live in a plain module (not a test module) so spawn children import them cheaply; the
children find `fastq` through the parent's sys.path, which multiprocessing hands to spawn
children — true both with PYTHONPATH=src and with an editable install.
"""
from __future__ import annotations

import os
import time

from fastq import Ring, RingEmpty


def echo(inbox: Ring, outbox: Ring, n: int) -> None:
    """Read n messages from inbox, write each reversed to outbox."""
    try:
        for _ in range(n):
            m = inbox.get(timeout=20)
            outbox.put(m[::-1], timeout=20)
    finally:
        inbox.close()
        outbox.close()


def queue_echo(q_in, q_out, n: int) -> None:
    try:
        for _ in range(n):
            q_out.put(("echo", q_in.get(timeout=20)), timeout=20)
    finally:
        q_in.close()
        q_out.close()


def produce(ring: Ring, producer: int, n: int, batch: int = 1) -> None:
    """Send b"<producer>:<seq>" for seq in range(n), one by one or in batches."""
    try:
        i = 0
        while i < n:
            if batch == 1:
                ring.put(b"%d:%d" % (producer, i), timeout=30)
                i += 1
            else:
                k = min(batch, n - i)
                ring.put_many([b"%d:%d" % (producer, j) for j in range(i, i + k)], timeout=30)
                i += k
    finally:
        ring.close()


def consume(ring: Ring, results: Ring, consumer: int) -> None:
    """Take messages until a b"stop" arrives; report what was seen, in order, on results."""
    seen = []
    try:
        while True:
            msgs = ring.get_many(64, timeout=30)
            stops = msgs.count(b"stop")
            seen += [m for m in msgs if m != b"stop"]
            if stops:
                for _ in range(stops - 1):   # one stop per consumer: hand back the others
                    ring.put(b"stop", timeout=30)
                break
        results.put(b"%d|" % consumer + b",".join(seen), timeout=30)
    finally:
        ring.close()
        results.close()


def hold_lock_forever(ring: Ring, which: str, ready) -> None:
    """Take a side's lock and sit on it until killed."""
    ring._debug_hold_lock(which)
    ready.set()
    time.sleep(600)


def hold_view_forever(ring: Ring, ready) -> None:
    """Begin a zero-copy read (holds the consumer side) and sit on it until killed."""
    view = ring.get_view(timeout=20)
    assert bytes(view) == b"precious"
    ready.set()
    time.sleep(600)


def produce_forever(ring: Ring, producer: int) -> None:
    """Send numbered messages until killed (it never closes the ring)."""
    i = 0
    while True:
        ring.put(b"%d:%d" % (producer, i), timeout=30)
        i += 1


def consume_forever(ring: Ring, counter) -> None:
    """Take messages until killed."""
    while True:
        try:
            ring.get(timeout=30)
        except RingEmpty:
            continue
        counter.value += 1   # a RawValue: this process is its only writer


def ping_pong(ping: Ring, pong: Ring, rounds: int) -> None:
    """Answer every ping with a pong. A lost wakeup would stall a get past its timeout."""
    try:
        for i in range(rounds):
            m = ping.get(timeout=5)
            assert m == b"%d" % i, (m, i)
            pong.put(m, timeout=5)
    finally:
        ping.close()
        pong.close()


def pid() -> int:
    return os.getpid()
