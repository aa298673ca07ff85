"""Task-queue peers for ``fastq bench --compare``, compared with the ``tasks`` and
``tasks-bulk`` scenarios through the harness of :mod:`fastq.bench.task_scenarios` (add
no-op jobs, then one worker process completes them; delayed-job lateness with the worker
free). Each is skipped, with the reason, when its library is not importable or its server
binary is not on PATH.

- Huey with ``SqliteHuey`` (no server): one SQLite file in WAL mode with
  ``fsync=False`` (``synchronous=OFF``: survives a process crash, not a power failure —
  fastq's ``"os"``); the consumer runs one thread worker (``workers=1``,
  ``worker_type="thread"``) and polls an empty queue every 1 to 10 ms (``initial_delay``
  0.001, ``max_delay`` 0.01; Huey's defaults, 0.1 to 10 s, would only make its delayed jobs
  later). Huey has no bulk add: ``tasks-bulk`` uses ``Task.map``, which enqueues one by
  one. Delayed jobs: ``schedule(delay=…)``; its consumer's scheduler moves due jobs to the
  queue once a second (``scheduler_interval`` 1 s, its minimum).
- The Python port of BullMQ (PyPI ``bullmq``) on ``redis-server`` (RDB off, AOF with
  ``appendfsync everysec``, as the Redis peers of the other scenarios): ``Queue.add`` /
  ``Queue.addBulk``, a ``Worker`` with ``concurrency`` 1 (peer ``BullMQ-py c1``) or 8
  (``BullMQ-py c8``), one asyncio loop in the worker process; delayed jobs with the
  ``delay`` option. Completed jobs are kept (BullMQ's default, as fastq's).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import time

from .servers import start_redis, stop
from .task_scenarios import NOOP, TBATCH, WORKER_DONE_POLL_S, TaskClient, TaskTransport

CHUNK = 1024                    # jobs between looks at the time cap when adding one by one


# -- Huey -------------------------------------------------------------------------------------

class _HueyClient(TaskClient):
    def __init__(self, path: str):
        from huey import SqliteHuey

        self.huey = SqliteHuey("bench", filename=path, fsync=False)
        self._tick = None
        self.noop = self.huey.task(name=NOOP)(self._run)
        self.huey.storage.queue_size()          # open the connection before the start signal

    def _run(self, data):
        self._tick(data)

    def add_jobs(self, n, batch, end):
        i = 0
        noop = self.noop
        while i < n:
            k = min(i + (CHUNK if batch == 1 else batch), n)
            if batch == 1:
                for j in range(i, k):
                    noop({"i": j})
            else:
                noop.map([({"i": j},) for j in range(i, k)])
            i = k
            if time.monotonic() > end:
                break
        return i

    def add_delayed(self, delays, pace_s):
        wall = time.time
        for i, d in enumerate(delays):
            self.noop.schedule(args=({"i": i, "due": wall() + d},), delay=d)
            time.sleep(pace_s)

    def work(self, tick, done, give_up):
        self._tick = tick
        consumer = self.huey.create_consumer(workers=1, worker_type="thread", periodic=False,
                                             check_worker_health=False, initial_delay=0.001,
                                             backoff=1.15, max_delay=0.01, scheduler_interval=1)
        consumer.start()
        try:
            done.wait(max(0.0, give_up - time.monotonic()))
        finally:
            consumer.stop(graceful=True)
        return None

    def close(self):
        self.huey.storage.close()


class HueySqlite(TaskTransport):
    name = "Huey SQLite"
    description = ("cross-process: Huey task call per job (SqliteHuey, WAL, fsync off), then one consumer "
                   "process (one thread worker) completes them")
    bulk_description = (f"cross-process: Huey Task.map of {TBATCH:,} jobs (enqueues one by one), then one "
                        "consumer process (one thread worker) completes them")
    module = "huey"

    def setup(self, workdir, cfg):
        self.dir = os.path.join(workdir, "huey")
        os.makedirs(self.dir, exist_ok=True)

    def _path(self) -> str:
        return os.path.join(self.dir, f"bench{self.round}.db")

    def new_round(self):
        super().new_round()
        from huey import SqliteHuey

        SqliteHuey("bench", filename=self._path(), fsync=False).storage.close()   # the tables

    def connect(self):
        return _HueyClient(self._path())

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# -- BullMQ (Python) --------------------------------------------------------------------------

class _BullClient(TaskClient):
    def __init__(self, url: str, name: str, concurrency: int):
        from bullmq import Queue

        self.url, self.name, self.concurrency = url, name, concurrency
        self.loop = asyncio.new_event_loop()
        self.q = Queue(name, {"connection": url})
        self.loop.run_until_complete(self.q.getJobCounts())    # connected before the start signal

    def add_jobs(self, n, batch, end):
        q = self.q

        async def go():
            i = 0
            while i < n:
                k = min(i + (CHUNK if batch == 1 else batch), n)
                if batch == 1:
                    for j in range(i, k):
                        await q.add(NOOP, {"i": j})
                else:
                    await q.addBulk([{"name": NOOP, "data": {"i": j}} for j in range(i, k)])
                i = k
                if time.monotonic() > end:
                    break
            return i
        return self.loop.run_until_complete(go())

    def add_delayed(self, delays, pace_s):
        q, wall = self.q, time.time

        async def go():
            for i, d in enumerate(delays):
                await q.add(NOOP, {"i": i, "due": wall() + d}, {"delay": int(d * 1000)})
                await asyncio.sleep(pace_s)
        self.loop.run_until_complete(go())

    def work(self, tick, done, give_up):
        from bullmq import Worker

        async def process(job, token):
            tick(job.data)

        async def go():
            w = Worker(self.name, process, {"connection": self.url, "concurrency": self.concurrency})
            try:
                while not done.is_set() and time.monotonic() < give_up:
                    await asyncio.sleep(WORKER_DONE_POLL_S)
            finally:
                await w.close()
        self.loop.run_until_complete(go())
        return None

    def close(self):
        self.loop.run_until_complete(self.q.close())
        self.loop.close()


class _BullMQ(TaskTransport):
    module = "bullmq"
    binary = "redis-server"
    concurrency = 1

    def setup(self, workdir, cfg):
        self.proc, self.port, self.dir = start_redis(workdir)

    def connect(self):
        return _BullClient(f"redis://127.0.0.1:{self.port}", f"bench{self.round}", self.concurrency)

    def teardown(self):
        stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


_BULL_WORKER = "then one worker process (bullmq.Worker, concurrency {}) completes them (Redis AOF everysec)"


class BullMQ1(_BullMQ):
    name = "BullMQ-py c1"
    concurrency = 1
    description = f"cross-process: BullMQ (Python) Queue.add per job, {_BULL_WORKER.format(1)}"
    bulk_description = f"cross-process: BullMQ (Python) Queue.addBulk of {TBATCH:,} jobs, {_BULL_WORKER.format(1)}"


class BullMQ8(_BullMQ):
    name = "BullMQ-py c8"
    concurrency = 8
    description = f"cross-process: BullMQ (Python) Queue.add per job, {_BULL_WORKER.format(8)}"
    bulk_description = f"cross-process: BullMQ (Python) Queue.addBulk of {TBATCH:,} jobs, {_BULL_WORKER.format(8)}"


TASK_PEERS: list[type] = [HueySqlite, BullMQ1, BullMQ8]
