"""Sparse offset/time index searches against bisect on random sorted data."""
import bisect
import os
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastq._core import _codec
from fastq.errors import InvalidArgument

SEED = int(os.environ.get("FASTQ_SEED", random.randrange(2**32)))
I64_MIN, I64_MAX = -(2**63), 2**63 - 1


@pytest.fixture
def rng():
    print(f"seed={SEED} (replay with FASTQ_SEED={SEED})")
    return random.Random(SEED)


def build_index(rels, spare=3):
    buf = bytearray(8 * (len(rels) + spare))  # zero-filled tail, as in a preallocated file
    for i, r in enumerate(rels):
        _codec.index_put(buf, i, r, r * 100 % 2**32)
    return buf


def build_timeindex(tss, spare=3):
    buf = bytearray(12 * (len(tss) + spare))
    for i, t in enumerate(tss):
        _codec.timeindex_put(buf, i, t, i)
    return buf


def test_entry_layout_is_big_endian():
    buf = bytearray(8)
    _codec.index_put(buf, 0, 0x01020304, 0xA0B0C0D0)
    assert bytes(buf) == bytes.fromhex("01020304a0b0c0d0")
    assert _codec.index_get(buf, 0) == (0x01020304, 0xA0B0C0D0)
    tbuf = bytearray(12)
    _codec.timeindex_put(tbuf, 0, -2, 7)
    assert bytes(tbuf) == struct.pack(">qI", -2, 7)
    assert _codec.timeindex_get(tbuf, 0) == (-2, 7)


def test_empty_index():
    buf = bytearray(64)
    assert _codec.index_floor(buf, 0, 0) == -1
    assert _codec.index_floor(b"", 0, 2**32 - 1) == -1
    assert _codec.timeindex_ceil(b"", 0, 0) == 0
    assert _codec.timeindex_floor(b"", 0, I64_MAX) == -1


def test_index_floor_vs_bisect(rng):
    for _ in range(300):
        n = rng.randrange(0, 200)
        rels = sorted(rng.sample(range(0, 5000), n))
        buf = build_index(rels)
        probes = [0, 2**32 - 1] + [rng.randrange(0, 5100) for _ in range(30)] + rels[:5]
        for q in probes:
            assert _codec.index_floor(buf, n, q) == bisect.bisect_right(rels, q) - 1, (rels, q)


def test_timeindex_vs_bisect_with_duplicates(rng):
    for _ in range(300):
        n = rng.randrange(0, 200)
        tss = sorted(rng.choice([rng.randrange(-50, 50), rng.randrange(-2**40, 2**40)])
                     for _ in range(n))
        buf = build_timeindex(tss)
        probes = [I64_MIN, I64_MAX] + [rng.randrange(-60, 60) for _ in range(20)] + tss[:5]
        for q in probes:
            assert _codec.timeindex_ceil(buf, n, q) == bisect.bisect_left(tss, q), (tss, q)
            assert _codec.timeindex_floor(buf, n, q) == bisect.bisect_right(tss, q) - 1, (tss, q)


def test_all_equal_timestamps():
    tss = [5] * 17
    buf = build_timeindex(tss)
    assert _codec.timeindex_ceil(buf, 17, 5) == 0
    assert _codec.timeindex_floor(buf, 17, 5) == 16
    assert _codec.timeindex_ceil(buf, 17, 6) == 17
    assert _codec.timeindex_floor(buf, 17, 4) == -1


@given(st.lists(st.integers(0, 2**32 - 1), max_size=60), st.integers(0, 2**32 - 1))
def test_index_floor_hypothesis(rels, q):
    rels.sort()
    assert _codec.index_floor(build_index(rels, 0), len(rels), q) == bisect.bisect_right(rels, q) - 1


@given(st.lists(st.integers(I64_MIN, I64_MAX), max_size=60), st.integers(I64_MIN, I64_MAX))
def test_timeindex_hypothesis(tss, q):
    tss.sort()
    buf = build_timeindex(tss, 0)
    assert _codec.timeindex_ceil(buf, len(tss), q) == bisect.bisect_left(tss, q)
    assert _codec.timeindex_floor(buf, len(tss), q) == bisect.bisect_right(tss, q) - 1


def test_bounds_are_checked():
    buf = bytearray(8 * 4)
    with pytest.raises(InvalidArgument):
        _codec.index_floor(buf, 5, 0)  # more entries than the buffer holds
    with pytest.raises(InvalidArgument):
        _codec.index_floor(buf, -1, 0)
    with pytest.raises(InvalidArgument):
        _codec.index_put(buf, 4, 0, 0)
    with pytest.raises(InvalidArgument):
        _codec.index_put(buf, -1, 0, 0)
    with pytest.raises(InvalidArgument):
        _codec.index_put(b"\x00" * 8, 0, 0, 0)  # read-only
    with pytest.raises(InvalidArgument):
        _codec.timeindex_ceil(bytearray(23), 2, 0)
    with pytest.raises(InvalidArgument):
        _codec.timeindex_get(bytearray(12), 1)
    with pytest.raises(OverflowError):
        _codec.index_floor(buf, 1, -1)
