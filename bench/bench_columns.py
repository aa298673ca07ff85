"""Columnar reads: ``Log.read_columns`` against iterating ``Log.read`` into lists.

Both drain the same log of 100,000 records (100-byte values, 8-byte keys) and end with
the same information — offsets, timestamps, value and key bytes:
- ``columns_read``: ``read_columns`` in chunks of 65,536, continuing from ``next_offset``
  (numpy arrays in Arrow's layout, bytes copied once into one buffer per column);
- ``columns_iterate_read``: ``for rec in log.read(0)`` appending ``rec.offset``,
  ``rec.timestamp``, ``bytes(rec.key)`` and ``bytes(rec.value)`` to four lists.
The ratio (issue 18's bar: 5x) is printed at the end of the run (see bench/conftest.py).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from conftest import add_ratio, record
from fastq import Log

np = pytest.importorskip("numpy", reason="read_columns needs numpy (fastq-broker[numpy])")

SIZE = 100
N = 100_000
ROUNDS = 5
CHUNK = 65_536

add_ratio("read_columns / iterate read into lists", "columns_read", "columns_iterate_read", 5.0)


@pytest.fixture(scope="module")
def keyed_log():
    d = tempfile.mkdtemp(prefix="fastq-bench-", dir=os.environ.get("FASTQ_BENCH_DIR"))
    log = Log(os.path.join(d, "keyed"))
    for b in range(N // 1000):
        log.append_batch([(b"x" * SIZE, b"key%05d" % (i % 100_000)) for i in range(b * 1000, b * 1000 + 1000)])
    yield log
    log.close()
    shutil.rmtree(d, ignore_errors=True)


def test_columns_read(benchmark, keyed_log):
    def run():
        off, n = 0, 0
        while True:
            c = keyed_log.read_columns(off, CHUNK)
            if not len(c):
                break
            n += len(c)
            off = c.next_offset
        assert n == N

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    record(benchmark, "columns_read", N, SIZE)


def test_columns_iterate_read(benchmark, keyed_log):
    def run():
        offs, tss, keys, vals = [], [], [], []
        for rec in keyed_log.read(0):
            offs.append(rec.offset)
            tss.append(rec.timestamp)
            keys.append(bytes(rec.key))
            vals.append(bytes(rec.value))
        assert len(offs) == N

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    record(benchmark, "columns_iterate_read", N, SIZE)
