"""Child processes of tests/test_queue_bounded.py (a module of its own so the "spawn" start
method can import them). Not a test module. Each child logs one line per event with a
single O_APPEND write (queue_workers.EventLog), so a SIGKILL leaves at most a torn last line.
"""
from __future__ import annotations

import os
import time

import fastq
from queue_workers import EventLog
from task_workers import serve_until

QUEUE = "bounded"


def producer(path: str, logfile: str, w: int, count: int, retry: bool) -> None:
    """Publish items "w-j" as fast as it can: "ok <item>" once publish returned,
    "full <item> <retry_after>" on QueueFull (then again, when ``retry``)."""
    log = EventLog(logfile)
    with fastq.open(path) as b:
        q = b.queue(QUEUE)
        for j in range(count):
            item = f"{w}-{j}"
            while True:
                try:
                    q.publish(item)
                except fastq.QueueFull as e:
                    log("full", item, e.retry_after)
                    if retry:
                        time.sleep(min(e.retry_after, 0.005))
                        continue
                    break
                log("ok", item)
                break
        log("done", q.dropped)


def consumer(path: str, logfile: str, stopfile: str, pause: float) -> None:
    """Receive, log "recv <item> <depth>" (the depth it saw), ack; ``pause`` s per message
    (slower than the producers); until ``stopfile`` exists and the queue gave nothing."""
    log = EventLog(logfile)
    with fastq.open(path) as b:
        q = b.queue(QUEUE)
        idle = 0
        while True:
            got = q.receive(1, wait=0.05)
            if not got:
                if os.path.exists(stopfile):
                    idle += 1
                    if idle > 3:
                        break
                continue
            idle = 0
            m = got[0]
            log("recv", m.data, q._excess(0)[0])   # counted under the lock: exact but for appends racing
            m.ack()
            if pause:
                time.sleep(pause)
        log("end")


def steady_consumer(path: str, logfile: str, stopfile: str, rate: float) -> None:
    """Ack about ``rate`` messages per second until ``stopfile`` exists; logs
    "acked <count> <first_ack_s> <last_ack_s>" at the end."""
    log = EventLog(logfile)
    with fastq.open(path) as b:
        q = b.queue(QUEUE)
        n = 0
        t0 = t1 = None
        nxt = time.monotonic()
        while not os.path.exists(stopfile):
            got = q.receive(1, wait=0.05)
            if not got:
                continue
            got[0].ack()
            t1 = time.monotonic()
            t0 = t0 if t0 is not None else t1
            n += 1
            nxt += 1.0 / rate
            time.sleep(max(0.0, nxt - time.monotonic()))
        log("acked", n, t0, t1)


def killable_producer(path: str, logfile: str, w: int) -> None:
    """Publish forever (batches and single messages) into a bounded queue, retrying on
    QueueFull; logs "ok <n>" after each publish that returned (n messages)."""
    log = EventLog(logfile)
    with fastq.open(path) as b:
        q = b.queue(QUEUE)
        j = 0
        while True:
            try:
                if j % 3 == 0:
                    q.publish_many([f"{w}-{j}-{k}" for k in range(4)])
                    log("ok", 4)
                else:
                    q.publish(f"{w}-{j}")
                    log("ok", 1)
            except fastq.QueueFull:
                time.sleep(0.001)
            j += 1


TASKS = "btasks"


def task_producer(path: str, logfile: str, w: int, count: int) -> None:
    """Add jobs "w-j" as fast as it can into a bounded task queue, retrying on QueueFull:
    "ok <job id> <item>" once add returned, "full <item>" on each refusal."""
    log = EventLog(logfile)
    with fastq.open(path) as b:
        tq = b.tasks(TASKS)
        try:
            for j in range(count):
                item = f"{w}-{j}"
                while True:
                    try:
                        job = tq.add("item", item)
                    except fastq.QueueFull as e:
                        log("full", item)
                        time.sleep(min(e.retry_after, 0.005))
                        continue
                    log("ok", job.id, item)
                    break
        finally:
            tq.close()


def task_worker(path: str, logfile: str, stopfile: str) -> None:
    """Run jobs one at a time (1 ms each), logging "ran <job id> <item>", until stopfile."""
    log = EventLog(logfile)
    with fastq.open(path) as b:
        tq = b.tasks(TASKS)

        def handle(job):
            log("ran", job.id, job.data)
            time.sleep(0.001)
        try:
            serve_until(fastq.Worker(tq, handle, concurrency=1), stopfile)
        finally:
            tq.close()


def dropping_producer(path: str, logfile: str, w: int) -> None:
    """Publish forever into a drop-oldest queue: "ok <item>" after each publish returned."""
    log = EventLog(logfile)
    with fastq.open(path) as b:
        q = b.queue(QUEUE)
        j = 0
        while True:
            item = f"{w}-{j}"
            try:
                q.publish(item)
                log("ok", item)
            except fastq.QueueFull:
                time.sleep(0.001)
            j += 1


def task_dropper(path: str, w: int) -> None:
    """Add jobs forever into a drop-oldest task queue (a kill loop's victim)."""
    with fastq.open(path) as b:
        tq = b.tasks(TASKS)
        j = 0
        while True:
            tq.add("item", f"{w}-{j}")
            j += 1
