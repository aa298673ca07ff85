"""Columnar batch reads: a log's records as numpy arrays (``Log.read_columns``).

The result, :class:`Columns`, uses Arrow's variable-length layout: record i's value is
``values[value_offsets[i]:value_offsets[i + 1]]`` in one contiguous ``uint8`` buffer
(``value_offsets`` is int64, length n + 1, starting at 0), and the same for keys. A null
key or null value (tombstone) has an empty slice and ``False`` in ``key_valid`` /
``value_valid`` (Arrow's validity, as a bool array: True = present). Headers are not
included.

The bytes are copied, not zero-copy: a segment stores each record's value between its
varint-framed key and headers, so no segment holds the values contiguously; one copy
into a fresh buffer also leaves no segment pinned. The per-record work is the compiled
``LogReader._fill_columns``, filling arrays allocated here; when the value or key buffer
runs out it stops before the record that did not fit, the buffer grows (to the
average row size so far times the rows left, at least doubling) and the fill resumes.
numpy is an optional extra (``pip install fastq-broker[numpy]``); without it
``read_columns`` raises :class:`fastq.MissingDependency`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import MissingDependency
from .config import check_int

# numpy, imported on the first read_columns: it is an optional extra, and importing it
# costs ~60 ms that `import fastq` should not pay for a feature most programs never call.
np = None


def _numpy():
    global np
    if np is None:
        try:
            import numpy
        except ImportError as e:
            raise MissingDependency("read_columns needs numpy: pip install fastq-broker[numpy]") from e
        np = numpy
    return np

__all__ = ["Columns", "read_columns", "DEFAULT_MAX_RECORDS"]

# read_columns' default (and the size of the arrays it allocates up front).
DEFAULT_MAX_RECORDS = 65536
# The first value/key buffer: this many bytes per row, at least MIN_BUFFER.
_GUESS_BYTES_PER_ROW = 64
_MIN_BUFFER = 4096
_MAX_FIRST_BUFFER = 1 << 24


@dataclass(frozen=True, slots=True)
class Columns:
    """Records ``offsets[0]`` .. as columns (see :mod:`fastq.log.columns`); ``len()`` is
    the number of records. ``next_offset`` is where to continue reading (the log end
    when all were read)."""

    offsets: Any          # int64[n]
    timestamps: Any       # int64[n], ms
    values: Any           # uint8[value_offsets[n]]
    value_offsets: Any    # int64[n + 1]
    value_valid: Any      # bool[n]: False for a null value (tombstone)
    keys: Any             # uint8[key_offsets[n]]
    key_offsets: Any      # int64[n + 1]
    key_valid: Any        # bool[n]: False for a null key
    next_offset: int

    def __len__(self) -> int:
        """The number of records."""
        return len(self.offsets)

    def value(self, i: int) -> bytes | None:
        """Record i's value as bytes (None for a tombstone)."""
        if not self.value_valid[i]:
            return None
        return self.values[self.value_offsets[i]:self.value_offsets[i + 1]].tobytes()

    def key(self, i: int) -> bytes | None:
        """Record i's key as bytes (None for a null key)."""
        if not self.key_valid[i]:
            return None
        return self.keys[self.key_offsets[i]:self.key_offsets[i + 1]].tobytes()


def _grow(buf, used: int, need: int, rows: int, rows_left: int):
    """A larger buffer holding buf[:used]: room for the record that did not fit plus the
    rows left at the average size so far, and at least twice the old size."""
    guess = used // rows * rows_left if rows else 0
    new = np.empty(max(2 * len(buf), used + need + guess), dtype=np.uint8)
    new[:used] = buf[:used]
    return new


def read_columns(log, offset: int = 0, max_records: int = DEFAULT_MAX_RECORDS,
                 end: int | None = None) -> Columns:
    """Up to ``max_records`` records of ``log`` from ``offset`` (up to ``end``, exclusive;
    default the log end now) as numpy columns. Same offset errors as ``log.read``
    (OffsetOutOfRange outside [start, end]); MissingDependency without numpy."""
    _numpy()
    check_int("max_records", max_records, 0, math.inf)     # past int64 means no limit
    rd = log.read(offset, end)
    n = min(max_records, max(0, rd.end - rd.next_offset))   # offsets are dense or sparser
    offsets = np.empty(n, dtype=np.int64)
    timestamps = np.empty(n, dtype=np.int64)
    value_offsets = np.zeros(n + 1, dtype=np.int64)
    key_offsets = np.zeros(n + 1, dtype=np.int64)
    value_valid = np.empty(n, dtype=np.bool_)
    key_valid = np.empty(n, dtype=np.bool_)
    values = np.empty(min(_MAX_FIRST_BUFFER, max(_MIN_BUFFER, n * _GUESS_BYTES_PER_ROW)), dtype=np.uint8)
    keys = np.empty(_MIN_BUFFER, dtype=np.uint8)
    vv, kv = value_valid.view(np.uint8), key_valid.view(np.uint8)
    i = 0
    while True:
        i, vneed, kneed = rd._fill_columns(i, n, offsets, timestamps, value_offsets, values, vv,
                                           key_offsets, keys, kv)
        if not (vneed or kneed):
            break
        if vneed:
            values = _grow(values, int(value_offsets[i]), vneed, i, n - i)
        if kneed:
            keys = _grow(keys, int(key_offsets[i]), kneed, i, n - i)
    return Columns(offsets[:i], timestamps[:i], values[:value_offsets[i]], value_offsets[:i + 1],
                   value_valid[:i], keys[:key_offsets[i]], key_offsets[:i + 1], key_valid[:i],
                   rd.next_offset)


class ColumnsMixin:
    """``Log.read_columns`` (a mixin of :class:`fastq.log.Log`)."""

    def read_columns(self, offset: int = 0, max_records: int = DEFAULT_MAX_RECORDS,
                     end: int | None = None) -> Columns:
        """Up to ``max_records`` records from ``offset`` as numpy arrays in Arrow's
        layout (a :class:`fastq.log.columns.Columns`); continue from ``next_offset``.
        Needs numpy (``pip install fastq-broker[numpy]``)."""
        return read_columns(self, offset, max_records, end)
