"""What every ``fastq bench`` scenario shares, below both :mod:`fastq.bench.scenarios` and
:mod:`fastq.bench.queue_scenarios`: the workload configuration, the result dict, the
multiprocessing context, and the helpers of forked benchmark processes."""
from __future__ import annotations

import multiprocessing as mp
import os
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import InvalidArgument

STAMP = struct.Struct("<q")      # first 8 bytes of every message: CLOCK_MONOTONIC ns at send
RATE = 5000                      # paced messages/s for the latency phase
CTX = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")


@dataclass
class WorkloadConfig:
    """One run's workload; the CLI fills it from its options."""
    messages: int = 1_000_000
    size: int = 100
    partitions: int = 4
    producers: int = 1
    consumers: int = 2
    seconds: float = 5.0              # time cap of one throughput phase
    latency_seconds: float = 2.0      # length of the paced latency phase
    rate: int = RATE
    redelivery_trials: int = 5        # kill-a-consumer trials of the queue scenario
    quick: bool = False
    directory: str | None = None
    scenarios: list[str] = field(default_factory=list)

    def check(self) -> None:
        for name, lo in (("messages", 1), ("partitions", 1), ("producers", 1), ("consumers", 1), ("rate", 1),
                         ("redelivery_trials", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < lo:
                raise InvalidArgument(f"{name}={v!r}: expected an int >= {lo}")
        if not STAMP.size <= self.size <= 1 << 20:
            raise InvalidArgument(f"size={self.size!r}: expected {STAMP.size} to {1 << 20} bytes "
                                  f"(every message carries an {STAMP.size}-byte timestamp)")
        if self.partitions > 256:
            raise InvalidArgument(f"partitions={self.partitions}: at most 256 in a benchmark")
        if self.producers > 64 or self.consumers > 64:
            raise InvalidArgument("producers and consumers: at most 64 each in a benchmark")


def percentile(sorted_values, q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (nan when empty)."""
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q / 100 * (len(sorted_values) - 1)))))
    return sorted_values[i]


def result(name: str, description: str, messages: int, size: int, seconds: float,
           latency: dict | None = None, **extra) -> dict:
    rate = messages / seconds if seconds > 0 else 0.0
    return {"name": name, "description": description, "messages": messages, "size": size,
            "seconds": round(seconds, 6), "messages_per_s": round(rate, 1),
            "mb_per_s": round(rate * size / 1e6, 3), "latency": latency, "extra": extra}


def exit_child(code: int = 0) -> None:
    # skip atexit handlers and finalizers inherited from the parent (fork)
    os._exit(code)


def raise_child_errors(errors) -> None:
    try:
        msg = errors.get_nowait()
    except Exception:
        return
    raise RuntimeError(msg)


def start_children(procs, ready, go, errors, name: str) -> int:
    """Start the benchmark's processes, wait until each is ready (60 s at most, raising
    what a child reported), then release them all at once; returns the start time (ns)."""
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=60):
            raise_child_errors(errors)
            raise RuntimeError(f"{name}: a benchmark process did not get ready in 60 s")
    t0 = time.monotonic_ns()
    go.set()
    return t0


def stop_children(procs, go, queues) -> None:
    """After a benchmark (also when it failed): release children still waiting for the
    start signal, give each 10 s to exit, kill the rest, close the queues."""
    go.set()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()
    for q in queues:
        q.close()
        q.join_thread()


def await_report(out, errors, proc, name: str, role: str):
    """The one report `proc` puts on `out`; raises what a child put on `errors`, or that
    `proc` died without reporting."""
    while True:
        try:
            return out.get(timeout=1.0)
        except Exception:
            raise_child_errors(errors)
            if not proc.is_alive():
                raise RuntimeError(f"{name}: the {role} process died (exit code {proc.exitcode})") from None


@contextmanager
def set_up(tr, cfg: WorkloadConfig, workdir: str):
    """`tr` set up (its server, directory) for the block, torn down after it."""
    tr.setup(workdir, cfg)
    try:
        yield tr
    finally:
        tr.teardown()


def with_batch(one: dict, many: dict, fields, scenarios: tuple[str, str]) -> dict:
    """A peer's result: its one-by-one result `one`, with its batched one `many` (the rate
    and ``many["extra"]``'s `fields`) in ``extra.batch_result`` and the rate to set beside
    each of the two fastq `scenarios` in ``extra.messages_per_s_by_scenario``."""
    b = {k: many[k] for k in ("description", "messages", "seconds", "messages_per_s", "mb_per_s")}
    b.update((k, many["extra"][k]) for k in fields)
    one["extra"]["batch_result"] = b
    one["extra"]["messages_per_s_by_scenario"] = {scenarios[0]: one["messages_per_s"],
                                                  scenarios[1]: many["messages_per_s"]}
    return one
