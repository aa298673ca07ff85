"""The ``tasks`` and ``tasks-bulk`` scenarios of ``fastq bench``: fastq's task queue
(:class:`fastq.TaskQueue` + :class:`fastq.Worker`) — and, with ``--compare``, the task-queue
peers of :mod:`fastq.bench.task_peers` — through one cross-process harness.

- ``tasks``: a producer process adds no-op jobs one per ``add`` call (``--messages`` of
  them, or stops at the ``--seconds`` cap); then ONE worker process (one worker,
  concurrency 1 unless a peer says otherwise) completes them all. Timed from the start
  signal (both processes started, connected and waiting) to the last job's completion:
  the add is part of the rate, as it is part of a job's cost. ``extra`` also gives the add
  and completion rates on their own. Then the delayed-job lateness below.
- ``tasks-bulk``: the same with ``add_bulk`` of ``TBATCH`` (1,000) jobs per call.
- delayed-job lateness (the ``tasks`` result's ``extra.lateness``): the worker runs, free,
  while the producer adds one job every ``LATE_PACE_S`` (5 ms) with a delay cycling
  through ``LATE_DELAYS_MS`` (10 … 100 ms); each job carries its due time (wall clock
  read just before the add + its delay) and the handler notes how late it started
  (wall clock, one clock for every process on the machine). ``--latency-seconds`` of
  adds; p50/p99/max in ms, and min (below 0: a job started early — fastq rounds due
  times up to the millisecond, so never; a peer that rounds them down may show up to
  about -1 ms).

Every job's data is ``{"i": n}`` (its number; delayed ones add ``"due"``), and its handler
marks that number in a shared map (the time of the last new job is taken there). The
worker process stops when every job added has run, or at ``drain_seconds`` (30 s, or 6 ×
``--seconds``) for a queue that cannot keep up (``drained`` false). A number seen twice is
a job run twice (``exactly_once`` false); fastq's worker also reports its own count of
completed jobs, which must match.

Durability: fastq ``"os"`` (the broker's default: survives a process crash, not a power
failure); each peer's closest setting is in its description.
"""
from __future__ import annotations

import os
import shutil
import threading
import time

from ..broker import open as open_broker
from ..tasks import TaskQueue, Worker
from .harness import (CTX, WorkloadConfig as Config, await_report, exit_child as _exit_child, percentile,
                      raise_child_errors as _raise_child_errors, result, set_up, start_children,
                      stop_children, with_batch)

TBATCH = 1000                   # jobs per add_bulk
LATE_PACE_S = 0.005             # one delayed job added every 5 ms in the lateness phase
LATE_DELAYS_MS = tuple(range(10, 101, 10))
NOOP = "noop"                   # the job name
WORKER_DONE_POLL_S = 0.002      # how often a worker process looks whether the count is reached


def drain_seconds(cfg: Config) -> float:
    """How long the worker process keeps at it: a queue whose worker is far slower than
    its adds is not waited for past this."""
    return max(30.0, 6 * cfg.seconds)


def late_jobs(cfg: Config) -> int:
    """Delayed jobs of the lateness phase: ``--latency-seconds`` of adds, one per
    ``LATE_PACE_S``."""
    return max(10, int(cfg.latency_seconds / LATE_PACE_S))


class TaskClient:
    """A task queue as one child process sees it (made by :meth:`TaskTransport.connect`)."""

    def add_jobs(self, n: int, batch: int, end: float) -> int:
        """Add no-op jobs with data ``{"i": 0}``, ``{"i": 1}``, … — one per call (``batch``
        1) or ``batch`` per bulk call — until `n` are added or ``time.monotonic()`` passes
        `end` (checked every 1,024 jobs or every batch); returns how many were added."""
        raise NotImplementedError

    def add_delayed(self, delays: list[float], pace_s: float) -> None:
        """Add one no-op job per delay (seconds), `pace_s` apart; the data of job i is
        ``{"i": i, "due": time.time() + delay}``, the time read just before its add."""
        raise NotImplementedError

    def work(self, tick, done: threading.Event, give_up: float) -> int | None:
        """Run one worker whose handler calls ``tick(job.data)`` for each job, until
        `done` is set (tick sets it) or ``time.monotonic()`` passes `give_up`; then
        close the worker, letting it finish. Returns the worker's own count of completed
        jobs, or None when it keeps none."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


class TaskTransport:
    """What the task workload needs from a task queue. Built in the parent; ``setup`` and
    ``new_round`` run there (before any fork), ``connect()`` in the children."""
    name = "?"
    description = ""
    bulk_description = ""
    compare_with = ["tasks", "tasks-bulk"]
    # None: delayed jobs can be measured; else why this queue cannot do it
    delay_unsupported: str | None = None
    round = 0                   # a fresh queue per phase

    def setup(self, workdir: str, cfg: Config) -> None:
        """Start what the queue needs (a server, a directory)."""

    def new_round(self) -> None:
        """Make the queue of the next phase (parent, no child running)."""
        self.round += 1

    def connect(self) -> TaskClient:
        raise NotImplementedError

    def teardown(self) -> None:
        """Stop/remove what setup made (parent, after the children are gone)."""


# -- fastq ------------------------------------------------------------------------------------

class _FastqClient(TaskClient):
    def __init__(self, path: str, name: str):
        self.b = open_broker(path)
        self.tq = TaskQueue(name, self.b)

    def add_jobs(self, n, batch, end):
        i = 0
        if batch == 1:
            add = self.tq.add
            while i < n:
                k = min(i + 1024, n)
                for j in range(i, k):
                    add(NOOP, {"i": j})
                i = k
                if time.monotonic() > end:
                    break
        else:
            add_bulk = self.tq.add_bulk
            while i < n:
                k = min(i + batch, n)
                add_bulk([(NOOP, {"i": j}) for j in range(i, k)])
                i = k
                if time.monotonic() > end:
                    break
        return i

    def add_delayed(self, delays, pace_s):
        add, wall = self.tq.add, time.time
        for i, d in enumerate(delays):
            add(NOOP, {"i": i, "due": wall() + d}, delay=d)
            time.sleep(pace_s)

    def work(self, tick, done, give_up):
        def handler(job):
            tick(job.data)

        w = Worker(self.tq, handler, concurrency=1)
        try:
            done.wait(max(0.0, give_up - time.monotonic()))
        finally:
            w.close()
        return w.completed

    def close(self):
        self.tq.close()
        self.b.close()


class FastqTasks(TaskTransport):
    name = "fastq"
    description = ("cross-process: TaskQueue.add per job, then one worker process (Worker, one thread) "
                   "completes them (durability os)")
    bulk_description = (f"cross-process: TaskQueue.add_bulk of {TBATCH:,} jobs, then one worker process "
                        f"(Worker, one thread) completes them (durability os)")

    def setup(self, workdir, cfg):
        self.path = os.path.join(workdir, "tasks")

    def new_round(self):
        super().new_round()
        with open_broker(self.path) as b:
            TaskQueue(self._name(), b).close()

    def _name(self) -> str:
        return f"bench{self.round}"

    def connect(self):
        return _FastqClient(self.path, self._name())

    def teardown(self):
        shutil.rmtree(self.path, ignore_errors=True)


# -- the harness ------------------------------------------------------------------------------

def _ticker(seen, count, late, target: int, done: threading.Event):
    """The handlers' bookkeeping: seen[i] = 1 for job i; count[0] distinct jobs run,
    count[1] the CLOCK_MONOTONIC ns of the last new one, count[2] jobs run again; a job
    with a due time notes how late it started (s) in late[i]; `done` is set when
    `target` distinct jobs ran."""
    now_ns, wall = time.monotonic_ns, time.time

    def tick(data):
        i = data["i"]
        if seen[i]:
            count[2] += 1
            return
        seen[i] = 1
        due = data.get("due")
        if due is not None:
            late[i] = wall() - due
        c = count[0] + 1
        count[0] = c
        count[1] = now_ns()
        if c >= target:
            done.set()
    return tick


def _adder(tr, mode, n, batch, cap_s, delays, ready, go, start, added, errors) -> None:
    code = 0
    try:
        c = tr.connect()
        ready.release()
        go.wait()
        if mode == "delayed":
            c.add_delayed(delays, LATE_PACE_S)
            got = len(delays)
        else:
            got = c.add_jobs(n, batch, time.monotonic() + cap_s)
        added[0] = got
        added[1] = time.monotonic_ns()
        start.set()
        c.close()
    except BaseException as e:  # reported to the parent, which raises
        errors.put(f"producer: {type(e).__name__}: {e}")
        code = 1
    _exit_child(code)


def _worker(tr, mode, n_delayed, drain_s, ready, go, start, added, seen, count, late, out) -> None:
    try:
        c = tr.connect()
        ready.release()
        go.wait()
        give_up = time.monotonic() + drain_s
        if mode == "delayed":                # free and waiting before the first add
            target = n_delayed
        else:
            while not start.wait(0.5):
                if time.monotonic() > give_up:
                    raise TimeoutError("the producer did not finish adding")
            target = added[0]
        t_start = time.monotonic_ns()
        done = threading.Event()
        if target <= 0:
            done.set()
        completed = c.work(_ticker(seen, count, late, target, done), done, give_up)
        c.close()
        out.put(("ok", t_start, completed))
    except BaseException as e:
        out.put(("error", f"worker: {type(e).__name__}: {e}", None))
    out.close()
    out.join_thread()
    _exit_child(0)


def run_tasks(tr: TaskTransport, cfg: Config, *, n: int, batch: int = 1, delays: list[float] | None = None) -> dict:
    """One producer process and one worker process on a fresh queue of `tr`. Throughput
    (`delays` None): add `n` jobs (batch 1: one per add; else bulk adds of `batch`), then the
    worker completes them. Lateness (`delays` given): the worker runs while one delayed job
    per delay is added. Returns {"added", "completed" (distinct jobs run), "ran_again",
    "seconds", "add_seconds", "work_seconds", "drained", "exactly_once", "lateness_s"}."""
    tr.new_round()
    mode = "delayed" if delays is not None else "throughput"
    delays = list(delays or [])
    added = CTX.RawArray("q", [-1, 0])          # jobs added, CLOCK_MONOTONIC ns when done
    count = CTX.RawArray("q", [0, 0, 0])        # distinct jobs run, ns of the last, runs again
    seen = CTX.RawArray("b", max(1, n, len(delays)))
    late = CTX.RawArray("d", max(1, len(delays)))
    ready, go, start = CTX.Semaphore(0), CTX.Event(), CTX.Event()
    out, errors = CTX.Queue(), CTX.Queue()
    drain = drain_seconds(cfg) + (max(delays) + len(delays) * LATE_PACE_S if delays else 0)
    procs = [CTX.Process(target=_worker, daemon=True,
                         args=(tr, mode, len(delays), drain, ready, go, start, added, seen, count, late, out)),
             CTX.Process(target=_adder, daemon=True,
                         args=(tr, mode, n, batch, cfg.seconds, delays, ready, go, start, added, errors))]
    try:
        t0 = start_children(procs, ready, go, errors, tr.name)
        status, t_start, completed = await_report(out, errors, procs[0], tr.name, "worker")
        if status != "ok":
            raise RuntimeError(f"{tr.name}: {t_start}")
        procs[1].join(60)
        _raise_child_errors(errors)
        n_added = added[0]
        if n_added < 0:
            raise RuntimeError(f"{tr.name}: the producer did not finish")
        ran, t_last, again = count[0], count[1], count[2]
        drained = ran >= n_added
        exactly_once = None
        if drained:
            exactly_once = again == 0 and (completed is None or completed == n_added)
        return {"added": n_added, "completed": ran, "ran_again": again,
                "seconds": max(t_last - t0, 1) / 1e9, "add_seconds": max(added[1] - t0, 1) / 1e9,
                "work_seconds": max(t_last - t_start, 1) / 1e9, "drained": drained,
                "exactly_once": exactly_once,
                "lateness_s": [late[i] for i in range(len(delays)) if seen[i]]}
    finally:
        stop_children(procs, go, (out, errors))


def lateness_summary(tr: TaskTransport, cfg: Config) -> dict:
    """{"supported", "jobs", "started", "p50_ms", "p99_ms", "max_ms", "min_ms", "delays_ms",
    "pace_ms"} — or, for a queue without delayed jobs, {"supported": false, "reason"}."""
    if tr.delay_unsupported:
        return {"supported": False, "reason": tr.delay_unsupported}
    k = late_jobs(cfg)
    delays = [LATE_DELAYS_MS[i % len(LATE_DELAYS_MS)] / 1000 for i in range(k)]
    r = run_tasks(tr, cfg, n=0, delays=delays)
    v = sorted(x * 1000 for x in r["lateness_s"])
    out = {"supported": True, "jobs": k, "started": len(v),
           "delays_ms": [LATE_DELAYS_MS[0], LATE_DELAYS_MS[-1]], "pace_ms": LATE_PACE_S * 1000}
    for key, q in (("p50_ms", 50), ("p99_ms", 99)):
        out[key] = round(percentile(v, q), 3) if v else None
    out["max_ms"] = round(v[-1], 3) if v else None
    out["min_ms"] = round(v[0], 3) if v else None
    return out


# -- scenarios --------------------------------------------------------------------------------

def tasks_phase(name: str, tr: TaskTransport, cfg: Config, batch: int, **extra) -> dict:
    r = run_tasks(tr, cfg, n=cfg.messages, batch=batch)
    desc = tr.description if batch == 1 else tr.bulk_description
    return result(name, desc, r["completed"], 0, r["seconds"], batch=batch, jobs_added=r["added"],
                  add_jobs_per_s=round(r["added"] / r["add_seconds"], 1),
                  work_jobs_per_s=round(r["completed"] / r["work_seconds"], 1),
                  drained=r["drained"], exactly_once=r["exactly_once"], ran_again=r["ran_again"], **extra)


def sc_tasks(cfg: Config, workdir: str) -> dict:
    with set_up(FastqTasks(), cfg, workdir) as tr:
        r = tasks_phase("tasks", tr, cfg, 1)
        r["extra"]["lateness"] = lateness_summary(tr, cfg)
        return r


def sc_tasks_bulk(cfg: Config, workdir: str) -> dict:
    with set_up(FastqTasks(), cfg, workdir) as tr:
        return tasks_phase("tasks-bulk", tr, cfg, TBATCH)


def run_task_peer(tr: TaskTransport, cfg: Config, workdir: str) -> dict:
    """A peer's whole task workload: one add per job (the result's main fields), bulk adds
    (``extra.batch_result``) and delayed-job lateness (``extra.lateness``);
    ``extra.messages_per_s_by_scenario`` gives the rate to set beside each fastq scenario."""
    with set_up(tr, cfg, workdir):
        one = with_batch(tasks_phase(tr.name, tr, cfg, 1), tasks_phase(tr.name, tr, cfg, TBATCH),
                         ("jobs_added", "add_jobs_per_s", "work_jobs_per_s", "drained", "exactly_once",
                          "ran_again"), ("tasks", "tasks-bulk"))
        one["extra"]["lateness"] = lateness_summary(tr, cfg)
        return one
