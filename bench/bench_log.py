"""Storage-core benchmarks: the append log (fastq.Log) against Python floors.

Measured, for 100-byte records:
- append one call per record, for each durability mode ("os", "group", "always");
- append in batches of 1,000 (``append_many``), for each durability mode;
- sequential read one record at a time (iterating ``log.read``, touching ``rec.value``)
  and in batches of 1,000 (``LogReader.read_many``);
and in the same run the floors they are compared with:
- a loop writing the same records to a buffered file (``f.write``),
- a loop appending them to a list,
- a bare ``os.write`` + ``os.fsync`` loop (the floor for ``"always"``).
Ratios are printed at the end of the run (see bench/conftest.py).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from conftest import record
from fastq import Log

SIZE = 100
PAYLOAD = b"x" * SIZE
N_FAST = 100_000           # messages per round where no fsync is involved
N_SYNC = {"os": N_FAST, "group": 300, "always": 300}
ROUNDS = 5


@pytest.fixture
def tmpdir_fast():
    d = tempfile.mkdtemp(prefix="fastq-bench-", dir=os.environ.get("FASTQ_BENCH_DIR"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _fresh_log(base, mode, counter=[0]):
    counter[0] += 1
    return Log(os.path.join(base, f"log{counter[0]}"), durability=mode)


def _on_fresh_logs(benchmark, base, mode, run):
    """Time run(log) for ROUNDS rounds, each on a new empty log closed after its round."""
    benchmark.pedantic(run, setup=lambda: ((_fresh_log(base, mode),), {}),
                       teardown=lambda log: log.close(), rounds=ROUNDS, iterations=1)


@pytest.mark.parametrize("mode", ["os", "group", "always"])
def test_log_append_one(benchmark, tmpdir_fast, mode):
    n = N_SYNC[mode]

    def run(log):
        append = log.append
        for _ in range(n):
            append(PAYLOAD)

    _on_fresh_logs(benchmark, tmpdir_fast, mode, run)
    record(benchmark, f"log_append_one[{mode}]", n, SIZE)


@pytest.mark.parametrize("mode", ["os", "group", "always"])
def test_log_append_batch(benchmark, tmpdir_fast, mode):
    n = N_FAST if mode == "os" else 30_000
    batch = [PAYLOAD] * 1000

    def run(log):
        append_many = log.append_many
        for _ in range(n // 1000):
            append_many(batch)

    _on_fresh_logs(benchmark, tmpdir_fast, mode, run)
    record(benchmark, f"log_append_batch[{mode}]", n, SIZE)


@pytest.fixture
def filled_log(tmpdir_fast):
    log = Log(os.path.join(tmpdir_fast, "filled"))
    batch = [PAYLOAD] * 1000
    for _ in range(N_FAST // 1000):
        log.append_many(batch)
    yield log
    log.close()


def test_log_read_one(benchmark, filled_log):
    def run():
        n = 0
        for rec in filled_log.read(0):
            rec.value
            n += 1
        assert n == N_FAST

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    record(benchmark, "log_read_one", N_FAST, SIZE)


def test_log_read_batch(benchmark, filled_log):
    def run():
        rd = filled_log.read(0)
        n = 0
        while True:
            recs = rd.read_many(1000)
            if not recs:
                break
            n += len(recs)
        assert n == N_FAST

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    record(benchmark, "log_read_batch", N_FAST, SIZE)


def test_baseline_buffered_file(benchmark, tmpdir_fast):
    path = os.path.join(tmpdir_fast, "buffered")

    def run():
        with open(path, "wb") as f:
            write = f.write
            for _ in range(N_FAST):
                write(PAYLOAD)

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    record(benchmark, "baseline_buffered_file", N_FAST, SIZE)


def test_baseline_list_append(benchmark):
    def run():
        out = []
        append = out.append
        for _ in range(N_FAST):
            append(PAYLOAD)

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    record(benchmark, "baseline_list_append", N_FAST, SIZE)


def test_baseline_write_fsync(benchmark, tmpdir_fast):
    path = os.path.join(tmpdir_fast, "fsync")
    n = N_SYNC["always"]

    def run():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(n):
                os.write(fd, PAYLOAD)
                os.fsync(fd)
        finally:
            os.close(fd)

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    record(benchmark, "baseline_write_fsync", n, SIZE)
