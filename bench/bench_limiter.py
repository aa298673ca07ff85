"""Rate limiter benchmarks: fastq.RateLimiter decisions per second, beside baselines.

What is measured (a "decision" is one ``try_consume(1)`` call returning True or False):

* ``test_limiter_in_process``: one thread, N decisions in a loop on a bound method —
  ``admit`` (1e9 points/s, burst 1e9: every call takes a point, one CAS each) and
  ``refuse`` (1 point per 1000 s, already taken: every call refused, a load and no
  store), on the global bucket and on a key (``"user-42"``, hashed per call).
* baselines in the same run: a token bucket in Python behind a ``threading.Lock`` (what
  an application writes by hand; in-process only) and pyrate-limiter's in-memory
  ``Limiter`` (``try_acquire(blocking=False)``), when it is installed.
* ``test_limiter_cross_process``: 4 forked processes each make N decisions on one
  shared limiter (``admit``: all of them CAS the same word; ``refuse``: all read it),
  timed from the start signal until the last one is done; decisions/s in total.
  pyrate-limiter's ``MultiprocessBucket`` (a multiprocessing lock around a shared list)
  is the cross-process baseline.

Rates go to ``benchmark.extra_info`` (messages_per_s = decisions/s) through conftest's
``record()``. Speed is reported, never asserted.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time

import pytest

from conftest import add_ratio, record

import fastq

try:
    import pyrate_limiter
except ImportError:  # optional bench dependency
    pyrate_limiter = None

CTX = mp.get_context("fork")
N = 200_000
NPROC = 4
N_PROC_EACH = 200_000

add_ratio("limiter admit (global) / threading.Lock token bucket", "limiter[admit-global]",
          "baseline_lock_bucket", 1.0)
add_ratio("limiter across 4 processes (admit) / one process", "limiter_xproc[admit]",
          "limiter[admit-global]", 0.2)


@pytest.fixture(scope="module")
def directory():
    d = tempfile.mkdtemp(prefix="fastq-bench-limiter-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _limiter(directory, mode):
    name = f"bench-{mode}-{os.getpid()}-{time.monotonic_ns()}"
    if mode == "admit":
        return fastq.RateLimiter(name, directory, points=10**9, duration=1.0, burst=10**9)
    lim = fastq.RateLimiter(name, directory, points=1, duration=1000.0)
    lim.consume(1)
    lim.consume(1, key="user-42")
    return lim


@pytest.mark.parametrize("case", ["admit-global", "admit-key", "refuse-global", "refuse-key"])
def test_limiter_in_process(benchmark, directory, case):
    mode, where = case.split("-")
    lim = _limiter(directory, mode)
    tc = lim.try_consume
    key = "user-42" if where == "key" else None

    def run():
        if key is None:
            for _ in range(N):
                tc()
        else:
            for _ in range(N):
                tc(1, key)

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["coarse_clock"] = lim.coarse_clock
    record(benchmark, f"limiter[{case}]", N, 0)
    lim.close()


class LockBucket:
    """A token bucket as an application writes it by hand: in-process, under a lock."""

    def __init__(self, rate, burst):
        self.rate, self.burst = rate, burst
        self.tokens, self.t = float(burst), time.monotonic()
        self.lock = threading.Lock()

    def try_consume(self, n=1):
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now
            if self.tokens >= n:
                self.tokens -= n
                return True
            return False


def test_baseline_lock_bucket(benchmark):
    tc = LockBucket(1e9, 1e9).try_consume

    def run():
        for _ in range(N):
            tc()

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    record(benchmark, "baseline_lock_bucket", N, 0)


@pytest.mark.skipif(pyrate_limiter is None, reason="pyrate-limiter, an optional comparison peer, is not installed (pip install fastq-broker[compare])")
def test_baseline_pyrate_in_memory(benchmark):
    n = 20_000
    lim = pyrate_limiter.Limiter(pyrate_limiter.Rate(10**9, pyrate_limiter.Duration.SECOND))

    def run():
        for _ in range(n):
            lim.try_acquire("x", blocking=False)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    record(benchmark, "baseline_pyrate_in_memory", n, 0)


def _child(path_args, n, ready, go, done):
    name, directory = path_args
    lim = fastq.RateLimiter(name, directory)
    tc = lim.try_consume
    ready.release()
    go.wait()
    for _ in range(n):
        tc()
    lim.close()
    done.release()


def _race(benchmark, target, args, rounds):
    """Time NPROC forked processes running ``target(*args, ready, go, done)`` from the
    start signal until the last one is done (started and made ready before each round)."""
    state = {}

    def setup():
        for p in state.get("procs", []):
            p.join()
        ready, done, go = CTX.Semaphore(0), CTX.Semaphore(0), CTX.Event()
        procs = [CTX.Process(target=target, args=(*args, ready, go, done)) for _ in range(NPROC)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.acquire()
        state.update(procs=procs, go=go, done=done)
        return (), {}

    def run():
        state["go"].set()
        for _ in state["procs"]:
            state["done"].acquire()

    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    for p in state["procs"]:
        p.join()
    benchmark.extra_info["processes"] = NPROC


@pytest.mark.parametrize("mode", ["admit", "refuse"])
def test_limiter_cross_process(benchmark, directory, mode):
    lim = _limiter(directory, mode)
    _race(benchmark, _child, ((lim.name, directory), N_PROC_EACH), rounds=3)
    record(benchmark, f"limiter_xproc[{mode}]", N_PROC_EACH * NPROC, 0)
    lim.close()


def _pyrate_child(bucket, n, ready, go, done):
    lim = pyrate_limiter.Limiter(bucket)
    ready.release()
    go.wait()
    for _ in range(n):
        lim.try_acquire("x", blocking=False)
    done.release()


@pytest.mark.skipif(pyrate_limiter is None, reason="pyrate-limiter, an optional comparison peer, is not installed (pip install fastq-broker[compare])")
def test_baseline_pyrate_cross_process(benchmark):
    n_each = 2_000
    bucket = pyrate_limiter.MultiprocessBucket.init([pyrate_limiter.Rate(10**9, pyrate_limiter.Duration.SECOND)])
    _race(benchmark, _pyrate_child, (bucket, n_each), rounds=2)
    record(benchmark, "baseline_pyrate_xproc", n_each * NPROC, 0)
