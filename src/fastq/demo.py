"""End-to-end run of the storage core: ``python -m fastq.demo`` (what ``make run`` runs).

A producer process appends 100-byte messages to an embedded log in a temporary
directory while a consumer process tails the same log (woken through the shared-memory
futex, not by polling) and reads every message back. Prints messages/s for the
producer, the consumer and end-to-end, then paced end-to-end latency percentiles
(the producer stamps each message with CLOCK_MONOTONIC, which all processes share).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import struct
import tempfile
import time

from .log import DURABILITY_MODES, Log

_STAMP = struct.Struct("<q")


def _producer(path, n, size, batch, rate, durability, ready, go):
    pad = b"p" * (size - _STAMP.size)
    with Log(path, durability=durability) as log:
        ready.set()
        go.wait()
        t0 = time.perf_counter()
        if rate:
            interval = 1.0 / rate
            nxt = time.perf_counter()
            for _ in range(n):
                while time.perf_counter() < nxt:
                    pass
                log.append(_STAMP.pack(time.monotonic_ns()) + pad)
                nxt += interval
        elif batch > 1:
            for i in range(0, n, batch):
                k = min(batch, n - i)
                stamp = _STAMP.pack(time.monotonic_ns()) + pad
                log.append_many([stamp] * k)
        else:
            append = log.append
            for _ in range(n):
                append(_STAMP.pack(time.monotonic_ns()) + pad)
        return time.perf_counter() - t0


def _producer_main(path, n, size, batch, rate, durability, ready, go, out):
    out.put(_producer(path, n, size, batch, rate, durability, ready, go))


def _consumer_main(path, n, ready, go, out, want_latency):
    lat = []
    with Log(path) as log:
        ready.set()
        go.wait()
        t0 = time.perf_counter()
        pos = log.start_offset
        got = 0
        unpack = _STAMP.unpack_from
        while got < n:
            if not log.wait(pos, timeout=10.0):
                break
            rd = log.read(pos)
            while True:
                recs = rd.read_many(4096)
                if not recs:
                    break
                now = time.monotonic_ns()
                if want_latency:
                    for rec in recs:
                        lat.append(now - unpack(rec.value)[0])
                got += len(recs)
                pos = recs[-1].offset + 1
                del recs
        elapsed = time.perf_counter() - t0
    out.put((got, elapsed, lat))


def run_once(directory, n, size, batch=1, rate=0, durability="os", latency=False):
    """One producer process -> one consumer process. Returns a result dict."""
    path = os.path.join(directory, f"demo-{time.monotonic_ns()}")
    Log(path, durability=durability).close()
    ctx = mp.get_context("spawn")
    ready_p, ready_c, go = ctx.Event(), ctx.Event(), ctx.Event()
    qp, qc = ctx.Queue(), ctx.Queue()
    prod = ctx.Process(target=_producer_main, args=(path, n, size, batch, rate, durability, ready_p, go, qp))
    cons = ctx.Process(target=_consumer_main, args=(path, n, ready_c, go, qc, latency))
    cons.start()
    prod.start()
    try:
        ready_p.wait(30)
        ready_c.wait(30)
        t0 = time.perf_counter()
        go.set()
        p_elapsed = qp.get(timeout=600)
        got, c_elapsed, lat = qc.get(timeout=600)
        total = time.perf_counter() - t0
    finally:
        prod.join(30)
        cons.join(30)
        for p in (prod, cons):
            if p.is_alive():
                p.kill()
                p.join()
        shutil.rmtree(path, ignore_errors=True)
    if got != n:
        raise RuntimeError(f"consumer read {got} of {n} messages")
    return {"messages": n, "size": size, "producer_msgs_per_s": n / p_elapsed,
            "consumer_msgs_per_s": n / c_elapsed, "end_to_end_msgs_per_s": n / total,
            "latency_ns": sorted(lat)}


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q / 100 * (len(sorted_values) - 1)))))
    return sorted_values[i]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastq.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--rate", type=int, default=5000, help="paced publishing rate for the latency run")
    ap.add_argument("--seconds", type=float, default=2.0, help="length of the latency run")
    ap.add_argument("--durability", choices=sorted(DURABILITY_MODES), default="os")
    ap.add_argument("--dir", default=None, help="directory for the log (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.size < _STAMP.size:
        ap.error(f"--size must be at least {_STAMP.size}")
    directory = args.dir or tempfile.mkdtemp(prefix="fastq-demo-")
    try:
        print(f"fastq end-to-end: 1 producer process -> 1 consumer process, {args.size}-byte messages, "
              f"durability={args.durability!r}, log in {directory}")
        for label, batch in (("one append per message", 1), ("append_many, 1000 per batch", 1000)):
            r = run_once(directory, args.messages, args.size, batch=batch, durability=args.durability)
            print(f"  {label:<30} producer {r['producer_msgs_per_s']:>12,.0f} msg/s   "
                  f"consumer {r['consumer_msgs_per_s']:>12,.0f} msg/s   "
                  f"end-to-end {r['end_to_end_msgs_per_s']:>12,.0f} msg/s "
                  f"({r['end_to_end_msgs_per_s'] * args.size / 1e6:,.0f} MB/s)")
        n = max(1, int(args.rate * args.seconds))
        r = run_once(directory, n, args.size, rate=args.rate, durability=args.durability, latency=True)
        lat = r["latency_ns"]
        print(f"  paced at {args.rate:,}/s for {args.seconds:g}s ({n:,} messages): end-to-end latency "
              + "  ".join(f"p{q:g} {percentile(lat, q) / 1000:,.1f} µs" for q in (50, 90, 99, 99.9))
              + f"  max {lat[-1] / 1000:,.1f} µs")
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
