"""Benchmark scenarios behind ``fastq bench`` (and ``make run``).

Every scenario runs against an embedded broker in a directory of its own (a temporary
one, or under ``--dir``) and returns a result dict in the shape documented in
docs/BENCHMARKS.md (``SCENARIO_SCHEMA`` below is that schema; ``RESULT_SCHEMA`` is the
whole ``--json`` document). Scenarios:

- ``publish`` / ``publish-batch``: one process, ``Topic.publish`` per message / ``publish_many``
  batches of 1,000 (durability ``"os"``, ``--partitions`` partitions, sticky spreading);
- ``consume``: a consumer (no group) polls a pre-filled topic back;
- ``e2e``: ``--producers`` producer processes publish one message per call to a one-partition
  topic while a consumer process tails it (futex wake-ups); then the same processes paced at
  ``RATE`` messages/s for end-to-end latency percentiles (CLOCK_MONOTONIC stamps, one clock
  for every process on the machine);
- ``group``: ``--consumers`` member processes of one consumer group drain a pre-filled
  ``--partitions``-partition topic;
- ``durability-os`` / ``-group`` / ``-always``: ``--producers`` threads publishing one message
  per call under each durability mode;
- ``ring``: the ``e2e`` workload through a ``fastq.Ring`` (shared memory, not durable);
- ``queue`` / ``queue-batch``: the message queue with acks (``Broker.queue``), producer and
  consumer processes, one message per call / batches of 100, and redelivery after a consumer
  is killed; see :mod:`fastq.bench.queue_scenarios`;
- ``tasks`` / ``tasks-bulk``: the task queue (``TaskQueue`` + ``Worker``): a producer process
  adds no-op jobs (one per call / ``add_bulk`` of 1,000), then one worker process completes
  them, add included in the rate; and how late delayed jobs start; see
  :mod:`fastq.bench.task_scenarios`.

Throughput phases publish ``--messages`` messages or stop at a time cap, whichever comes
first (fsync-bound modes and slow peers hit the cap); rates are what was done in the time
taken. Peers (``--compare``) run the ``e2e`` workload (or, queue peers, the queue workload)
through the same harness, see :mod:`fastq.bench.peers`.
"""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
import threading
import time
from typing import Callable

from .. import __version__
from .._core import _storage
from .._core._ring import Ring
from ..broker import open as open_broker
from ..errors import InvalidArgument
from .harness import RATE  # noqa: F401 -- re-exported: the CLI's --rate default
from .harness import (CTX, STAMP, WorkloadConfig, await_report, exit_child as _exit_child, percentile,
                      raise_child_errors as _raise_child_errors, result, start_children, stop_children)
from .queue_scenarios import sc_queue, sc_queue_batch
from .task_scenarios import sc_tasks, sc_tasks_bulk
from .pubsub_scenarios import sc_pubsub

BATCH = 1000                     # publish_many batch size
SCHEMA_ID = "fastq-bench/1"
LAT_QS = (50, 90, 99, 99.9)


class Config(WorkloadConfig):
    """One run's workload (:class:`fastq.bench.harness.WorkloadConfig`), checked against
    the scenarios this module knows."""

    def check(self) -> None:
        super().check()
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown:
            raise InvalidArgument(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")


def quick_config(**overrides) -> Config:
    """The ``--quick`` workload: the whole default run in about ten seconds."""
    cfg = Config(messages=200_000, seconds=1.0, latency_seconds=0.5, redelivery_trials=3, quick=True)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


# -- machine ----------------------------------------------------------------------------

def _cpu_model() -> str:
    # psutil has no CPU model name: /proc/cpuinfo on Linux, platform elsewhere
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float:
    import psutil

    return round(psutil.virtual_memory().total / 2**30, 1)


def machine_info() -> dict:
    """CPU model, cores (logical, physical), memory, OS, Python, fastq version and build
    flags. Cores and memory come from psutil."""
    import sysconfig

    import psutil


    return {
        "cpu_model": _cpu_model(),
        "cores": psutil.cpu_count() or 0,
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "fastq_version": __version__,
        "fastq_debug_build": bool(_storage.DEBUG_BUILD),
        "crc32c_hardware": bool(_storage.CRC_HW),
        "cflags": sysconfig.get_config_var("CFLAGS") or "",
    }


# -- results ----------------------------------------------------------------------------

def latency_summary(values_ns, rate: int) -> dict | None:
    """p50/p90/p99/p99.9/max in µs plus a 101-point CDF (the value at 0%, 1%, … 100%)."""
    v = sorted(values_ns)
    if not v:
        return None
    out = {f"p{q:g}_us".replace(".", "_"): round(percentile(v, q) / 1e3, 2) for q in LAT_QS}
    out["max_us"] = round(v[-1] / 1e3, 2)
    out["count"] = len(v)
    out["rate_per_s"] = rate
    out["cdf_us"] = [round(percentile(v, q) / 1e3, 2) for q in range(101)]
    return out


# -- cross-process harness ----------------------------------------------------------------

class Transport:
    """What a cross-process workload needs from a queue or log. Built in the parent (before
    the fork), then ``producer()`` / ``consumer()`` are called in the children."""
    name = "?"
    description = ""
    round = 0       # bumped before each phase: a stream/subject per phase where it matters

    def setup(self, workdir: str, cfg: Config) -> None:
        """Create the queue/topic/stream (parent, before any child starts)."""

    def producer(self) -> tuple[Callable[[bytes], object], Callable[[], None]]:
        """In a producer child: (send one message, close)."""
        raise NotImplementedError

    def consumer(self) -> tuple[Callable[[float], list], Callable[[], None]]:
        """In the consumer child: (receive a batch, waiting up to `timeout` s — [] if none
        came, close)."""
        raise NotImplementedError

    def stamp(self, item) -> int:
        """The CLOCK_MONOTONIC send stamp of a received item."""
        return STAMP.unpack_from(item)[0]

    def teardown(self) -> None:
        """Release what setup made (parent, after the children are gone)."""


def _producer_child(tr: Transport, idx: int, n: int, size: int, rate: int, deadline_s: float,
                    ready, go, counts, errors) -> None:
    code = 0
    try:
        send, close = tr.producer()
        pad = b"p" * (size - STAMP.size)
        pack, now_ns = STAMP.pack, time.monotonic_ns
        ready.release()
        go.wait()
        sent = 0
        if rate:
            interval = 1e9 / rate
            nxt = now_ns()
            for _ in range(n):
                left = nxt - now_ns()
                if left > 150_000:
                    time.sleep((left - 100_000) / 1e9)
                while now_ns() < nxt:
                    pass
                send(pack(now_ns()) + pad)
                nxt += interval
            sent = n
        else:
            end = time.monotonic() + deadline_s
            while sent < n:
                k = min(1024, n - sent)
                for _ in range(k):
                    send(pack(now_ns()) + pad)
                sent += k
                if time.monotonic() > end:
                    break
        close()
        counts[idx] = sent
    except BaseException as e:  # reported to the parent, which raises
        errors.put(f"producer {idx}: {type(e).__name__}: {e}")
        code = 1
    _exit_child(code)


def _consumer_child(tr: Transport, producers: int, latency: bool, timeout_s: float,
                    ready, go, counts, out) -> None:
    lat: list[int] = []
    got = 0
    t_last = 0
    try:
        recv, close = tr.consumer()
        stamp, now_ns = tr.stamp, time.monotonic_ns
        ready.release()
        go.wait()
        t_first = time.monotonic_ns()
        give_up = time.monotonic() + timeout_s
        while True:
            batch = recv(0.05)
            if batch:
                t_last = now_ns()
                got += len(batch)
                if latency:
                    lat.extend(t_last - stamp(x) for x in batch)
                del batch
            else:
                if time.monotonic() > give_up:
                    raise TimeoutError(f"received {got} messages, then nothing for {timeout_s:.0f} s")
                if t_last == 0:
                    t_last = t_first
            total = 0
            for i in range(producers):
                c = counts[i]
                if c < 0:
                    break
                total += c
            else:
                if got >= total:
                    break
        close()
        out.put(("ok", got, t_last, lat))
    except BaseException as e:
        out.put(("error", f"consumer: {type(e).__name__}: {e}", 0, []))
    out.close()
    out.join_thread()
    _exit_child(0)


def run_pipe(tr: Transport, cfg: Config, *, n: int, rate: int = 0, latency: bool = False) -> dict:
    """``cfg.producers`` producer processes -> one consumer process through `tr`; returns
    {"messages", "seconds", "latency_ns"}. Throughput is timed from the start signal to
    the consumer's receipt of the last message."""
    producers = cfg.producers
    per = [n // producers + (1 if i < n % producers else 0) for i in range(producers)]
    counts = CTX.RawArray("q", [-1] * producers)
    ready, go = CTX.Semaphore(0), CTX.Event()
    out, errors = CTX.Queue(), CTX.Queue()
    deadline = 1e9 if rate else cfg.seconds
    procs = [CTX.Process(target=_consumer_child,
                         args=(tr, producers, latency, max(60.0, 4 * cfg.seconds), ready, go, counts, out),
                         daemon=True)]
    procs += [CTX.Process(target=_producer_child,
                          args=(tr, i, per[i], cfg.size, rate // producers if rate else 0, deadline,
                                ready, go, counts, errors), daemon=True)
              for i in range(producers)]
    try:
        t0 = start_children(procs, ready, go, errors, tr.name)
        status, got, t_last, lat = await_report(out, errors, procs[0], tr.name, "consumer")
        if status != "ok":
            raise RuntimeError(f"{tr.name}: {got}")
        _raise_child_errors(errors)
        return {"messages": got, "seconds": max(t_last - t0, 1) / 1e9, "latency_ns": lat}
    finally:
        stop_children(procs, go, (out, errors))


def pipe_scenario(name: str, tr: Transport, cfg: Config, workdir: str) -> dict:
    """Throughput phase then paced latency phase through one transport."""
    tr.setup(workdir, cfg)
    try:
        tr.round += 1
        thr = run_pipe(tr, cfg, n=cfg.messages)
        # pace at RATE, or at half what the transport sustained if that is lower: latency
        # under a load it can carry, not the queueing delay of an overload
        sustained = thr["messages"] / thr["seconds"]
        rate = max(1, min(cfg.rate, int(sustained / 2)))
        n_lat = max(cfg.producers, int(rate * cfg.latency_seconds))
        tr.round += 1
        lat = run_pipe(tr, cfg, n=n_lat, rate=rate, latency=True)
    finally:
        tr.teardown()
    return result(name, tr.description, thr["messages"], cfg.size, thr["seconds"],
                  latency_summary(lat["latency_ns"], rate), producers=cfg.producers, consumers=1)


# -- fastq transports ---------------------------------------------------------------------

class FastqTransport(Transport):
    name = "fastq"
    description = "cross-process: Topic.publish per message -> consumer tailing the log (futex wake-ups)"

    def setup(self, workdir, cfg):
        self.path = os.path.join(workdir, "e2e")

        with open_broker(self.path) as b:
            b.topic("bench", partitions=1)
        self._broker = None

    def producer(self):

        b = open_broker(self.path)
        t = b.topic("bench")

        def send(msg, _pub=t.publish):
            return _pub(msg, partition=0)
        return send, b.close

    def consumer(self):

        b = open_broker(self.path)
        lg = b.topic("bench").log(0)
        state = [lg.end_offset]     # opened before the start signal: every new record is ours

        def recv(timeout):
            pos = state[0]
            if not lg.wait(pos, timeout=timeout):
                return []
            recs = lg.read(pos).read_many(4096)
            if recs:
                state[0] = recs[-1].offset + 1
            return recs
        return recv, b.close

    def stamp(self, rec):
        return STAMP.unpack_from(rec.value)[0]

    def teardown(self):
        shutil.rmtree(self.path, ignore_errors=True)


class RingTransport(Transport):
    name = "fastq.Ring"
    description = "cross-process: fastq.Ring put per message -> get_many (shared memory, not durable)"

    def setup(self, workdir, cfg):

        self.ring = Ring(1 << 22)

    def producer(self):
        return self.ring.put, lambda: None

    def consumer(self):
        ring = self.ring

        def recv(timeout):
            try:
                return ring.get_many(4096, timeout=timeout)
            except Exception:       # RingEmpty (queue.Empty) on timeout
                return []
        return recv, lambda: None

    def teardown(self):
        self.ring.close()


# -- in-process scenarios -----------------------------------------------------------------

def _payloads(size: int) -> bytes:
    return STAMP.pack(0) + b"x" * (size - STAMP.size)


def _timed_loop(n: int, cap_s: float, step: int, body: Callable[[int], None]) -> tuple[int, float]:
    """Run body(k) for chunks of up to `step` until n done or cap_s passed."""
    done = 0
    t0 = time.perf_counter()
    end = t0 + cap_s
    while done < n:
        k = min(step, n - done)
        body(k)
        done += k
        if time.perf_counter() > end:
            break
    return done, time.perf_counter() - t0


def _broker(workdir, name, durability="os"):

    return open_broker(os.path.join(workdir, name), durability=durability)


def sc_publish(cfg: Config, workdir: str) -> dict:
    msg = _payloads(cfg.size)
    with _broker(workdir, "publish") as b:
        t = b.topic("bench", partitions=cfg.partitions)
        publish = t.publish

        def body(k):
            for _ in range(k):
                publish(msg)
        n, secs = _timed_loop(cfg.messages, cfg.seconds, 1024, body)
    return result("publish", "one process, Topic.publish per message (durability os)",
                  n, cfg.size, secs, partitions=cfg.partitions)


def sc_publish_batch(cfg: Config, workdir: str) -> dict:
    msgs = [_payloads(cfg.size)] * BATCH
    with _broker(workdir, "publish-batch") as b:
        t = b.topic("bench", partitions=cfg.partitions)

        def body(k):
            t.publish_many(msgs[:k])
        n, secs = _timed_loop(cfg.messages, cfg.seconds, BATCH, body)
    return result("publish-batch", f"one process, Topic.publish_many of {BATCH:,} (durability os)",
                  n, cfg.size, secs, partitions=cfg.partitions, batch=BATCH)


def _prefill(t, n: int, size: int, partitions: int) -> None:
    msgs = [_payloads(size)] * BATCH
    for i in range(0, n, BATCH):
        t.publish_many(msgs[: min(BATCH, n - i)], partition=(i // BATCH) % partitions)


def sc_consume(cfg: Config, workdir: str) -> dict:
    with _broker(workdir, "consume") as b:
        t = b.topic("bench", partitions=cfg.partitions)
        _prefill(t, cfg.messages, cfg.size, cfg.partitions)
        with t.consumer(from_="earliest") as c:
            got = 0
            t0 = time.perf_counter()
            while got < cfg.messages:
                recs = c.poll(4096, timeout=5.0)
                if not recs:
                    raise RuntimeError(f"consume: got {got} of {cfg.messages} messages")
                got += len(recs)
                del recs
            secs = time.perf_counter() - t0
    return result("consume", "one process, Consumer.poll(4096) over a pre-filled topic (no group)",
                  got, cfg.size, secs, partitions=cfg.partitions)


def _group_member(path, parts_total, idx, counts, ready, go) -> None:
    code = 0
    try:

        with open_broker(path) as b:
            c = b.topic("bench").consumer(group="bench", from_="earliest", session_timeout_ms=5000)
            c.poll(1, timeout=0)        # join the group before the start signal
            c.seek_to_beginning()
            ready.release()
            go.wait()
            got = 0
            give_up = time.monotonic() + 120
            while time.monotonic() < give_up:
                recs = c.poll(4096, timeout=0.05)
                if recs:
                    got += len(recs)
                    counts[2 * idx] = got
                    counts[2 * idx + 1] = time.monotonic_ns()
                    del recs
                if sum(counts[2 * i] for i in range(len(counts) // 2)) >= parts_total:
                    break
            c.close()
    except BaseException:
        code = 1
    _exit_child(code)


def sc_group(cfg: Config, workdir: str) -> dict:
    path = os.path.join(workdir, "group")

    with open_broker(path) as b:
        _prefill(b.topic("bench", partitions=cfg.partitions), cfg.messages, cfg.size, cfg.partitions)
    members = cfg.consumers
    counts = CTX.RawArray("q", [0] * (2 * members))
    ready, go = CTX.Semaphore(0), CTX.Event()
    procs = [CTX.Process(target=_group_member, args=(path, cfg.messages, i, counts, ready, go), daemon=True)
             for i in range(members)]
    try:
        for p in procs:
            p.start()
        for _ in procs:
            if not ready.acquire(timeout=60):
                raise RuntimeError("group: a member did not join in 60 s")
        # the first members to join are handed everything; wait for the group to settle
        time.sleep(0.3)
        t0 = time.monotonic_ns()
        go.set()
        for p in procs:
            p.join(180)
            if p.exitcode != 0:
                raise RuntimeError(f"group: member exited with code {p.exitcode}")
        got = sum(counts[2 * i] for i in range(members))
        t_end = max(counts[2 * i + 1] for i in range(members))
        if got < cfg.messages:
            raise RuntimeError(f"group: members consumed {got} of {cfg.messages}")
    finally:
        go.set()
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
    per_member = [counts[2 * i] for i in range(members)]
    # records handed out again after a rebalance (at-least-once) are work, not messages
    return result("group", f"{members} consumer processes in one group over a pre-filled "
                  f"{cfg.partitions}-partition topic", cfg.messages, cfg.size, (t_end - t0) / 1e9,
                  partitions=cfg.partitions, consumers=members, per_member=per_member,
                  redelivered=got - cfg.messages)


def _durability(mode: str) -> Callable[[Config, str], dict]:
    def sc(cfg: Config, workdir: str) -> dict:
        msg = _payloads(cfg.size)
        with _broker(workdir, f"durability-{mode}", durability=mode) as b:
            t = b.topic("bench", partitions=1)
            counts = [0] * cfg.producers
            t_end = [0.0]
            start = threading.Barrier(cfg.producers + 1)
            per = cfg.messages // cfg.producers or 1

            def worker(i):
                publish = t.publish
                start.wait()

                def body(k):
                    for _ in range(k):
                        publish(msg, partition=0)
                counts[i], _ = _timed_loop(per, cfg.seconds, 64 if mode != "os" else 1024, body)

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(cfg.producers)]
            for th in threads:
                th.start()
            start.wait()
            t0 = time.perf_counter()
            for th in threads:
                th.join()
            t_end[0] = time.perf_counter() - t0
        return result(f"durability-{mode}",
                      f"{cfg.producers} thread(s), Topic.publish per message, durability {mode!r}",
                      sum(counts), cfg.size, t_end[0], durability=mode, producers=cfg.producers)
    return sc


def sc_e2e(cfg: Config, workdir: str) -> dict:
    return pipe_scenario("e2e", FastqTransport(), cfg, workdir)


def sc_ring(cfg: Config, workdir: str) -> dict:
    return pipe_scenario("ring", RingTransport(), cfg, workdir)


SCENARIOS: dict[str, Callable[[Config, str], dict]] = {
    "publish": sc_publish,
    "publish-batch": sc_publish_batch,
    "consume": sc_consume,
    "e2e": sc_e2e,
    "group": sc_group,
    "durability-os": _durability("os"),
    "durability-group": _durability("group"),
    "durability-always": _durability("always"),
    "ring": sc_ring,
    "queue": sc_queue,
    "queue-batch": sc_queue_batch,
    "tasks": sc_tasks,
    "tasks-bulk": sc_tasks_bulk,
    "pubsub": sc_pubsub,
}


def run_scenario(name: str, cfg: Config) -> dict:
    """Run one scenario in a fresh directory (removed afterwards)."""
    base = cfg.directory
    if base is not None:
        os.makedirs(base, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix=f"fastq-bench-{name}-", dir=base)
    try:
        return SCENARIOS[name](cfg, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def ratios(scenarios: list[dict], peers: list[dict]) -> list[dict]:
    """fastq / peer messages/s on the same workload (peers that ran). A peer that ran more
    than one workload (the queue peers: one by one and batched) gives its rate per fastq
    scenario in ``extra.messages_per_s_by_scenario``."""
    by_name = {s["name"]: s for s in scenarios}
    out = []
    for p in peers:
        if p["status"] != "ok":
            continue
        rates = (p.get("extra") or {}).get("messages_per_s_by_scenario", {})
        for basis in p.get("compare_with", ["e2e"]):
            s = by_name.get(basis)
            rate = rates.get(basis, p["messages_per_s"])
            if s and rate > 0:
                out.append({"scenario": basis, "peer": p["name"],
                            "fastq_messages_per_s": s["messages_per_s"],
                            "peer_messages_per_s": rate,
                            "ratio": round(s["messages_per_s"] / rate, 3)})
    return out


def report(cfg: Config, scenarios: list[dict], peers: list[dict]) -> dict:
    """The whole ``--json`` document (see RESULT_SCHEMA)."""
    import datetime

    return {
        "schema": SCHEMA_ID,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {"messages": cfg.messages, "size": cfg.size, "partitions": cfg.partitions,
                   "producers": cfg.producers, "consumers": cfg.consumers, "quick": cfg.quick,
                   "seconds_cap": cfg.seconds, "latency_seconds": cfg.latency_seconds,
                   "latency_rate_per_s": cfg.rate, "redelivery_trials": cfg.redelivery_trials,
                   "scenarios": [s["name"] for s in scenarios]},
        "scenarios": scenarios,
        "peers": peers,
        "ratios": ratios(scenarios, peers),
    }


# -- JSON schema (mirrored in docs/BENCHMARKS.md) ---------------------------------------------

_NUM = {"type": "number", "minimum": 0}
_INT = {"type": "integer", "minimum": 0}
LATENCY_SCHEMA = {
    "type": ["object", "null"],
    "required": ["p50_us", "p90_us", "p99_us", "p99_9_us", "max_us", "count", "rate_per_s", "cdf_us"],
    "properties": {
        "p50_us": _NUM, "p90_us": _NUM, "p99_us": _NUM, "p99_9_us": _NUM, "max_us": _NUM,
        "count": _INT, "rate_per_s": _INT,
        "cdf_us": {"type": "array", "items": _NUM, "minItems": 101, "maxItems": 101},
    },
    "additionalProperties": False,
}
SCENARIO_SCHEMA = {
    "type": "object",
    "required": ["name", "description", "messages", "size", "seconds", "messages_per_s", "mb_per_s",
                 "latency", "extra"],
    "properties": {
        "name": {"type": "string"}, "description": {"type": "string"},
        "messages": _INT, "size": _INT, "seconds": _NUM, "messages_per_s": _NUM, "mb_per_s": _NUM,
        "latency": LATENCY_SCHEMA, "extra": {"type": "object"},
    },
    "additionalProperties": False,
}
PEER_SCHEMA = {
    "type": "object",
    "required": ["name", "status", "reason", "compare_with"],
    "properties": {
        "name": {"type": "string"},
        "status": {"enum": ["ok", "skipped", "failed"]},
        "reason": {"type": ["string", "null"]},
        "compare_with": {"type": "array", "items": {"type": "string"}},
        "description": {"type": "string"}, "messages": _INT, "size": _INT, "seconds": _NUM,
        "messages_per_s": _NUM, "mb_per_s": _NUM, "latency": LATENCY_SCHEMA, "extra": {"type": "object"},
    },
    "allOf": [
        {"if": {"properties": {"status": {"const": "ok"}}},
         "then": {"required": ["messages", "seconds", "messages_per_s", "mb_per_s", "latency"],
                  "properties": {"reason": {"type": "null"}}},
         "else": {"properties": {"reason": {"type": "string", "minLength": 1}}}},
    ],
    "additionalProperties": False,
}
RESULT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "fastq bench --json output",
    "type": "object",
    "required": ["schema", "created", "machine", "config", "scenarios", "peers", "ratios"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "created": {"type": "string"},
        "machine": {
            "type": "object",
            "required": ["cpu_model", "cores", "memory_gib", "os", "machine", "python",
                         "python_implementation", "fastq_version", "fastq_debug_build",
                         "crc32c_hardware", "cflags"],
            "properties": {
                "cpu_model": {"type": "string"}, "cores": _INT, "memory_gib": _NUM,
                "physical_cores": {"type": ["integer", "null"]},
                "os": {"type": "string"}, "machine": {"type": "string"}, "python": {"type": "string"},
                "python_implementation": {"type": "string"}, "fastq_version": {"type": "string"},
                "fastq_debug_build": {"type": "boolean"}, "crc32c_hardware": {"type": "boolean"},
                "cflags": {"type": "string"},
            },
        },
        "config": {
            "type": "object",
            "required": ["messages", "size", "partitions", "producers", "consumers", "quick",
                         "seconds_cap", "latency_seconds", "latency_rate_per_s", "scenarios"],
            "properties": {
                "messages": _INT, "size": _INT, "partitions": _INT, "producers": _INT, "consumers": _INT,
                "quick": {"type": "boolean"}, "seconds_cap": _NUM, "latency_seconds": _NUM,
                "latency_rate_per_s": _INT, "redelivery_trials": _INT,
                "scenarios": {"type": "array", "items": {"type": "string"}},
            },
        },
        "scenarios": {"type": "array", "items": SCENARIO_SCHEMA},
        "peers": {"type": "array", "items": PEER_SCHEMA},
        "ratios": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["scenario", "peer", "fastq_messages_per_s", "peer_messages_per_s", "ratio"],
                "properties": {"scenario": {"type": "string"}, "peer": {"type": "string"},
                               "fastq_messages_per_s": _NUM, "peer_messages_per_s": _NUM, "ratio": _NUM},
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
