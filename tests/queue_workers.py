"""Child processes of tests/test_queue_multiprocess.py (a module of its own so the
"spawn" start method can import them). Not a test module.

Every child opens the broker itself and appends one line per event to its own file with
a single O_APPEND write, so a SIGKILL leaves at most a torn last line (dropped by
``read_lines``). Lines are ``<event> <fields...>``; data items contain no spaces.
"""
from __future__ import annotations

import os
import random
import time

import fastq

QUEUE = "jobs"


class EventLog:
    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def __call__(self, *fields) -> None:
        os.write(self.fd, (" ".join(map(str, fields)) + "\n").encode())


def read_lines(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return [ln.split(" ") for ln in data.split("\n")[:-1]]    # drop a torn last line


def consumer(path: str, logfile: str, stopfile: str, seed: int) -> None:
    """receive -> log "recv" -> ack (between "acking" and "acked"), and now and then a
    nack (plain, with a short delay, or with an error: the copy through the delayed lane)
    or an ack_many, until ``stopfile`` exists and the queue gave nothing for a moment."""
    log = EventLog(logfile)
    try:
        _consume(path, log, stopfile, random.Random(seed))
    except BaseException as e:
        log("error", repr(e).replace(" ", "_").replace("\n", "_"))   # what the test reports
        raise


def _consume(path, log, stopfile, rng):
    log("start", os.getpid())
    b = fastq.open(path)
    q = b.queue(QUEUE)
    while True:
        ms = q.receive(rng.choice((1, 1, 1, 3)), wait=0.02)
        if not ms:
            if os.path.exists(stopfile):
                break
            continue
        for m in ms:
            log("recv", m.data, m.delivery_count, m.id, time.monotonic_ns())
        if len(ms) > 1 and rng.random() < 0.5:
            for m in ms:
                log("acking", m.data, m.delivery_count)
            try:
                q.ack_many(ms)
            except fastq.LeaseLost as e:
                log("lost", "ack_many", str(e).replace(" ", "_"))
                continue
            for m in ms:
                log("acked", m.data, m.delivery_count)
            continue
        for m in ms:
            r = rng.random()
            try:
                if r < 0.04:
                    log("nacking", m.data, m.delivery_count)
                    m.nack()
                elif r < 0.07:
                    log("nacking", m.data, m.delivery_count)
                    m.nack(delay=0.005)
                elif r < 0.10:
                    log("nacking", m.data, m.delivery_count)
                    m.nack(error="retry-me")          # copied through the delayed lane
                else:
                    log("acking", m.data, m.delivery_count)
                    m.ack()
                    log("acked", m.data, m.delivery_count)
            except fastq.LeaseLost:
                log("lost", m.data, m.delivery_count)
    log("exit")
    b.close()


def publisher(path: str, logfile: str, w: int, count: int, seed: int) -> None:
    """Publish ops j = 0..count-1 of writer ``w``: kind by j % 4 — a publish_many batch of
    5, a delayed message, a message with a dedup_id, a plain one. Logs "try j" before and
    "pub j" after each op. Restarted after a SIGKILL it resumes from its own log: the op
    that was in flight is retried when it had a dedup_id (the point of dedup ids) and
    skipped otherwise (it may or may not have been stored; the test checks all-or-none)."""
    rng = random.Random(seed)
    done = {int(ln[1]) for ln in read_lines(logfile) if ln[0] == "pub"}
    tried = [int(ln[1]) for ln in read_lines(logfile) if ln[0] == "try"]
    j = 0
    if tried:
        last = max(tried)
        j = last + 1 if last in done or op_kind(last) != "dedup" else last
    log = EventLog(logfile)
    b = fastq.open(path)
    q = b.queue(QUEUE)
    while j < count:
        kind = op_kind(j)
        log("try", j)
        if kind == "batch":
            q.publish_many(op_items(w, j))
        elif kind == "delayed":
            q.publish(op_items(w, j)[0], delay=rng.choice((0.001, 0.01, 0.03)))
        elif kind == "dedup":
            q.publish(op_items(w, j)[0], dedup_id=op_items(w, j)[0])
        else:
            q.publish(op_items(w, j)[0])
        log("pub", j)
        j += 1
        if rng.random() < 0.5:
            time.sleep(0.003)                    # paced: it is still publishing when killed
    log("done")
    b.close()


def op_kind(j: int) -> str:
    return ("batch", "delayed", "dedup", "plain")[j % 4]


def op_items(w: int, j: int) -> list[str]:
    if op_kind(j) == "batch":
        return [f"w{w}b{j}.{k}" for k in range(5)]
    return [f"w{w}{op_kind(j)[0]}{j}"]


def holder(path: str, logfile: str, count: int) -> None:
    """Receive ``count`` messages, log them, say "held", then sleep until killed."""
    log = EventLog(logfile)
    b = fastq.open(path)
    q = b.queue(QUEUE)
    got = []
    while len(got) < count:
        got += q.receive(count - len(got), wait=5)
    for m in got:
        log("recv", m.data, m.delivery_count, m.id, time.monotonic_ns())
    log("held")
    time.sleep(600)


def receiver(path: str, logfile: str, stopfile: str) -> None:
    """Receive and ack, logging "ready" once its session is claimed."""
    log = EventLog(logfile)
    b = fastq.open(path)
    q = b.queue(QUEUE)
    first = q.receive(8, wait=0)            # claims the session
    log("ready")
    for m in first:
        log("recv", m.data, m.delivery_count, m.id, time.monotonic_ns())
        m.ack()
    while not os.path.exists(stopfile):
        for m in q.receive(8, wait=0.02):
            log("recv", m.data, m.delivery_count, m.id, time.monotonic_ns())
            m.ack()
    b.close()


def subscriber(path: str, logfile: str, stopfile: str, guarantee: str) -> None:
    """``Queue.subscribe`` in this process: the handler logs "handled <data> <delivery>
    <monotonic ns> <wall ms>" and fails (raises) on every delivery of data that ends in
    "!" — those must end in the dead letters after max_deliveries. Stops when
    ``stopfile`` exists."""
    log = EventLog(logfile)
    log("start", os.getpid())
    b = fastq.open(path)
    q = b.queue(QUEUE)

    def handler(m):
        log("handled", m.data, m.delivery_count, time.monotonic_ns(), time.time_ns() // 1_000_000)
        time.sleep(0.001)                     # work: the kills land while messages are in hand
        if m.data.endswith("!"):
            raise ValueError("always fails")

    sub = q.subscribe(handler, guarantee=guarantee, backoff=0.0)
    while not os.path.exists(stopfile):
        time.sleep(0.01)
    sub.stop()
    sub.join()
    b.close()
    log("stopped")
