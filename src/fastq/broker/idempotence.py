"""Producer ids and transactional ids of a broker: who an idempotent producer is.

An idempotent producer stamps its batches with a producer id, an epoch and a
per-partition sequence (KIP-98; the partition's check is ``fastq._core._storage``'s
idempotent append, the rule ``csrc/fq_producer.h``). This module hands out the ids,
durably and broker-wide (any number of processes), and keeps the identity of a
*transactional id* across restarts: the same producer id every time, a higher epoch at
each open, which fences the instance opened before (its next publish raises
:class:`fastq.ProducerFenced`).

Files under ``<broker>/producers/``:

``ids.json``
    ``{"version": 1, "next_id": N}``: the next producer id to hand out, rewritten
    temp -> fsync -> rename -> fsync(dir) under the flock of ``ids.lock`` for every
    id handed out (ids are never reused: a reused id would let a new producer's batch
    pass for a retry of an old one's). An id is also at least ``now_ms << 16``, so a
    lost ``ids.json`` cannot hand out an id again while the clock does not go back.
    A damaged ``ids.json`` is :class:`fastq.CorruptRecord` (deleting it is safe).

``<transactional_id>.producer`` — FILE_SIZE = 64 bytes, integers little-endian::

        0   magic        8 bytes  b"FQTXNID\\x01"
        8   version      u32      FORMAT_VERSION (1)
        12  reserved     u32      zero
        16  producer_id  i64
        24  created_ms   i64
        32  check        u32      CRC-32C of bytes [0, 32)
        36  reserved     u32      zero
        40  epoch word   u64      epoch in the low 32 bits, their complement in the high
        48  reserved     16 bytes zero

    Created complete (temp -> fsync -> link -> fsync(dir)) with epoch 0. Bytes [0, 40)
    never change. Opening the transactional id takes the file's flock, bumps the epoch
    word in place (one aligned 8-byte store, then msync) and keeps the file mapped: every
    idempotent append of that producer compares the word with its own epoch under the
    partition's writer lock, so once an open returned, the older instance cannot append
    anywhere. Epochs run to MAX_EPOCH; the open after that gives the transactional id a
    new producer id (the old file's word set to MAX_EPOCH + 1, which fences its users,
    then the file replaced): sequences start afresh, so a retry across that one open is
    not recognized. A file that fails its checks is :class:`fastq.CorruptRecord`.

Process-safety: every function may run in any number of processes at once (flocks).
"""
from __future__ import annotations

import json
import os
import struct
import time

from .._core import _storage
from .._core._codec import crc32c, os_errors
from ..errors import CorruptRecord
from ..log.config import write_json_atomic
from .config import validate_name

__all__ = ["allocate_producer_id", "open_transactional", "MAX_EPOCH"]

PRODUCERS_DIR = "producers"
IDS_FILE = "ids.json"
IDS_LOCK = "ids.lock"
SUFFIX = ".producer"
MAGIC = b"FQTXNID\x01"
FORMAT_VERSION = 1
FILE_SIZE = 64
EPOCH_AT = 40
MAX_EPOCH = 32766                          # producerEpoch is an int16; one value kept to fence
_HEAD = struct.Struct("<8sIIqq")           # magic, version, reserved, producer_id, created_ms


def _dir(broker_path: str) -> str:
    d = os.path.join(broker_path, PRODUCERS_DIR)
    with os_errors("create directory", d):
        os.makedirs(d, exist_ok=True)
    return d


def allocate_producer_id(broker_path: str) -> int:
    """A producer id never handed out before by this broker (see ``ids.json``)."""
    d = _dir(broker_path)
    lock = os.path.join(d, IDS_LOCK)
    with os_errors("open", lock):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _storage.flock(fd, True, True)
        path = os.path.join(d, IDS_FILE)
        stored = 0
        try:
            with open(path, "rb") as f:
                meta = json.loads(f.read(4096))
            if (not isinstance(meta, dict) or meta.get("version") != 1
                    or not isinstance(meta.get("next_id"), int) or meta["next_id"] < 0):
                raise ValueError(f"unexpected content {meta!r:.80}")
            stored = meta["next_id"]
        except FileNotFoundError:
            pass
        except ValueError as e:
            raise CorruptRecord(f"{path} is damaged ({e}); deleting it is safe (producer ids also "
                                "follow the clock)", path, 0) from None
        pid = max(stored, int(time.time() * 1000) << 16)
        write_json_atomic(path, {"version": 1, "next_id": pid + 1})
        return pid
    finally:
        os.close(fd)                         # drops the flock


def _encode(pid: int, epoch: int) -> bytes:
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, 0, pid, int(time.time() * 1000))
    return (head + struct.pack("<II", crc32c(head), 0) + struct.pack("<Q", _storage.fence_word(epoch))
            + bytes(16))


def _create(path: str, pid: int, *, replace: bool) -> None:
    """Write the file complete under a temp name, then link it in (never over a file
    another process made) or, with ``replace``, rename it over the old one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with os_errors("create", path):
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, _encode(pid, 0))
                os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    _storage.fsync_dir(os.path.dirname(path))


def _read(fd: int, path: str) -> int:
    """The producer id in the file; CorruptRecord when it fails its checks."""
    data = os.pread(fd, FILE_SIZE + 1, 0)
    if len(data) != FILE_SIZE:
        raise CorruptRecord(f"{path} is {len(data)} bytes, not a transactional producer file "
                            f"({FILE_SIZE})", path, 0)
    magic, version, _, pid, _ = _HEAD.unpack_from(data, 0)
    (check,) = struct.unpack_from("<I", data, 32)
    if magic != MAGIC or version != FORMAT_VERSION or check != crc32c(data[:32]) or pid < 0:
        raise CorruptRecord(f"{path} is not an intact transactional producer file (magic {magic!r}, "
                            f"version {version})", path, 0)
    return pid


def open_transactional(broker_path: str, transactional_id: str) -> tuple[int, int, "_storage.SharedWord"]:
    """Open ``transactional_id``: ``(producer_id, epoch, fence)`` with the epoch bumped (the
    instance opened before is fenced from now on) and ``fence`` the mapped epoch word,
    which the caller closes."""
    validate_name("transactional id", transactional_id)
    path = os.path.join(_dir(broker_path), transactional_id + SUFFIX)
    if not os.path.exists(path):
        _create(path, allocate_producer_id(broker_path), replace=False)
    while True:
        with os_errors("open", path):
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            _storage.flock(fd, True, True)
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                continue                     # replaced (a new producer id) while we waited
            pid = _read(fd, path)
            fence = _storage.SharedWord(path, EPOCH_AT)
            try:
                epoch = _storage.fence_word_epoch(fence.load())
                if epoch < 0 or epoch > MAX_EPOCH + 1:
                    raise CorruptRecord(f"{path}: the epoch word is damaged", path, EPOCH_AT)
                if epoch >= MAX_EPOCH:
                    # epochs exhausted: fence every user of this file, then a new producer id
                    fence.store(_storage.fence_word(MAX_EPOCH + 1))
                    fence.sync()
                    fence.close()
                    _create(path, allocate_producer_id(broker_path), replace=True)
                    continue
                epoch += 1
                fence.store(_storage.fence_word(epoch))
                fence.sync()
            except BaseException:
                fence.close()
                raise
            return pid, epoch, fence
        finally:
            os.close(fd)                     # drops the flock
