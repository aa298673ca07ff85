"""Snapshots of a partition log's idempotent-producer state (Kafka's ``.snapshot`` files).

The state itself — per producer id, the newest epoch and the sequence ranges and offsets
of its last five batches — lives in the log: every idempotent batch carries producerId,
producerEpoch and baseSequence in its header (docs/FORMAT.md). A process rebuilds it by
reading the batch headers (``fastq._core._storage.ProducerState``). A snapshot only saves
reading the whole log: it holds the state as of an offset, and the batches from that
offset on are read on top of it. Losing or damaging one loses nothing but time.

File ``<log>/%020d.snapshot``, named by ``offset``; integers little-endian::

    header, HEADER_SIZE = 32 bytes
        0   magic      8 bytes  b"FQPSNAP\\x01"
        8   version    u32      FORMAT_VERSION (1)
        12  count      u32      number of entries
        16  offset     i64      every batch below this offset is applied (= the name)
        24  check      u32      CRC-32C of bytes [0, 24) and of every entry
        28  reserved   u32      zero
    entry, ENTRY_SIZE = 136 bytes, ascending producer id
        0   producer_id  i64
        8   epoch        i16
        10  nbatches     u16    1..5
        12  reserved     u32    zero
        16  5 batch slots of 24 bytes, oldest first (unused slots zero):
            first_seq i32 | last_seq i32 | base_offset i64 | max_timestamp i64

Written by the process that rolls the log, if it has the state in memory, for the new
segment's base offset: temp -> (fsync) -> rename -> (fsync dir), the fsyncs only for
durability ``"group"``/``"always"`` logs (the check catches a file torn by a power
failure). A failure to write one (a full disk) leaves no file and does not fail the
roll. The newest ``KEEP`` snapshots are kept, older ones deleted.

Load rule: the newest snapshot whose offset is at most the log's end and that passes
every check (size, magic, version, checksum, ranges) is used; a damaged one is skipped
for the next older one; without any, the state is built from the log's first offset.
``Log.truncate`` deletes the snapshots past the new end, and so does the first open of the
log by any process (after a recovery that cut a tail lost to a power failure, a snapshot
past the end would otherwise pass for this history's once the log grew past it again).
"""
from __future__ import annotations

import os
import re
import struct

from .._core._codec import crc32c, os_errors
from .._core._storage import ProducerState
from ..errors import CorruptRecord, StorageError
from .config import write_bytes_atomic

__all__ = ["load", "write", "drop_after", "snapshot_name", "MAGIC", "HEADER_SIZE", "ENTRY_SIZE"]

MAGIC = b"FQPSNAP\x01"
FORMAT_VERSION = 1
HEADER_SIZE = 32
ENTRY_SIZE = 136
SLOTS = 5
KEEP = 2
MAX_ENTRIES = 1 << 20                      # a count above this is damage, not a state

SNAPSHOT_RE = re.compile(r"([0-9]{20})\.snapshot")
_HEADER = struct.Struct("<8sIIqII")
_ENTRY_HEAD = struct.Struct("<qhHI")
_SLOT = struct.Struct("<iiqq")


def snapshot_name(offset: int) -> str:
    return "%020d.snapshot" % offset


def _offsets(log_dir: str) -> list[int]:
    """Offsets of the snapshot files in ``log_dir``, newest first."""
    return sorted((int(m.group(1)) for m in map(SNAPSHOT_RE.fullmatch, os.listdir(log_dir)) if m),
                  reverse=True)


def encode(state: ProducerState, offset: int) -> bytes:
    rows = state.rows()
    body = bytearray(ENTRY_SIZE * len(rows))
    for i, (pid, epoch, batches) in enumerate(rows):
        at = ENTRY_SIZE * i
        _ENTRY_HEAD.pack_into(body, at, pid, epoch, len(batches), 0)
        for j, b in enumerate(batches):
            _SLOT.pack_into(body, at + 16 + 24 * j, *b)
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, len(rows), offset, 0, 0)[:24]
    check = crc32c(bytes(body), crc32c(head))
    return head + struct.pack("<II", check, 0) + bytes(body)


def decode(data: bytes, path: str) -> ProducerState:
    """The state a snapshot holds; CorruptRecord naming ``path`` for anything amiss."""
    if len(data) < HEADER_SIZE:
        raise CorruptRecord(f"{path}: {len(data)} bytes, shorter than a snapshot header", path, 0)
    magic, version, count, offset, check, _ = _HEADER.unpack_from(data, 0)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise CorruptRecord(f"{path}: not a fastq producer snapshot (magic {magic!r}, version {version})",
                            path, 0)
    if count > MAX_ENTRIES or len(data) != HEADER_SIZE + ENTRY_SIZE * count:
        raise CorruptRecord(f"{path}: {len(data)} bytes do not hold {count} entries", path, 0)
    if crc32c(data[HEADER_SIZE:], crc32c(data[:24])) != check:
        raise CorruptRecord(f"{path}: checksum mismatch", path, 24)
    if offset < 0:
        raise CorruptRecord(f"{path}: offset {offset} is negative", path, 16)
    state = ProducerState(offset, offset)
    for i in range(count):
        at = HEADER_SIZE + ENTRY_SIZE * i
        pid, epoch, n, _ = _ENTRY_HEAD.unpack_from(data, at)
        if not 1 <= n <= SLOTS:
            raise CorruptRecord(f"{path}: entry {i} has {n} batches", path, at)
        state.add_row(pid, epoch, [_SLOT.unpack_from(data, at + 16 + 24 * j) for j in range(n)])
    return state


def load(log_dir: str, end_offset: int, start_offset: int) -> ProducerState:
    """The state from the newest usable snapshot (see the load rule), else an empty state
    at ``start_offset``."""
    for off in _offsets(log_dir):
        if off > end_offset:
            continue                           # from before a truncation or a torn tail
        path = os.path.join(log_dir, snapshot_name(off))
        try:
            with open(path, "rb") as f:
                data = f.read(HEADER_SIZE + ENTRY_SIZE * MAX_ENTRIES + 1)
            state = decode(data, path)
        except (OSError, CorruptRecord):
            continue                           # damaged or unreadable: an older one, or the log
        if state.scanned_to != off:
            continue                           # a file renamed by hand: its name is the offset
        return state
    return ProducerState(start_offset, -1)


def write(log_dir: str, state: ProducerState, offset: int, sync: bool) -> bool:
    """Write the snapshot of ``state`` (brought up to ``offset``) and delete all but the
    newest KEEP. Returns False, leaving no file, when the filesystem refuses (a full
    disk): a snapshot is an optimization, never a reason to fail the roll."""
    try:
        write_bytes_atomic(os.path.join(log_dir, snapshot_name(offset)), encode(state, offset), sync)
    except (StorageError, OSError):
        return False
    for off in _offsets(log_dir)[KEEP:]:
        try:
            os.unlink(os.path.join(log_dir, snapshot_name(off)))
        except OSError:
            pass
    return True


def drop_after(log_dir: str, offset: int) -> None:
    """Delete the snapshots past ``offset`` (the log was truncated to it, or recovered to
    it after losing its tail). One that cannot be deleted fails the caller, naming it."""
    for off in _offsets(log_dir):
        if off > offset:
            path = os.path.join(log_dir, snapshot_name(off))
            with os_errors("delete producer snapshot", path):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
