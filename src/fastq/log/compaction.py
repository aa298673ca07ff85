"""Log compaction: keep the latest record per key (Kafka's cleaner, for one machine).

Compaction rewrites **sealed** segments only; the active segment is never touched, so
appends never wait for it. For every key it keeps the record with the highest offset in
the whole log; records with a null key are kept. A tombstone (null value) is kept until
its timestamp is older than ``delete_retention_ms``, so consumers that lag behind still
see the delete, then it is dropped too. Offsets are preserved, as in Kafka: a compacted
segment holds ascending offsets with gaps (one record per batch), and readers skip the
gaps.

Transactions (issue 15), as Kafka's cleaner: only segments wholly below the last stable
offset are cleaned (a transaction still open is never rewritten — its records would
lose their transactional bit and show before the commit); records are read as
read_committed readers see them, so an aborted transaction's records neither shadow the
committed value of their key nor survive the rewrite, and COMMIT/ABORT markers in a
rewritten segment are dropped (the records kept are committed: they are rewritten as
plain batches; a segment left as it is keeps its transactional batches and markers). Producer fields (id, epoch, sequence) are not kept by the rewrite.

Crash safety: a cleaned segment is written to a temporary directory and fsynced; then
the old segment's indexes are unlinked, the new ``.log`` is renamed over the old one,
and the new indexes are renamed in (each step leaves a readable segment: a missing index
is rebuilt as an empty one and lookups fall back to scanning). Readers in other
processes keep their mapping of the old file until they refresh (the writer-lock
generation is bumped at the end). One compactor at a time per log (``compact.lock``).
"""
from __future__ import annotations

import bisect
import os
import shutil
import time

from .._core import _storage
from .._core._storage import Segment, segment_name, write_single_batch
from .config import COMPACTED_MARK
from .log import Log

__all__ = ["compact_log"]


def compact_log(log: Log, *, delete_retention_ms: int = 24 * 3600 * 1000, now_ms: int | None = None) -> dict:
    """Compact the sealed segments of ``log``. Returns counts of what was done:
    ``{"segments": rewritten, "removed": records dropped, "kept": records kept}``,
    or ``{"skipped": True}`` when another process is compacting this log."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    lock_fd = os.open(os.path.join(log.path, "compact.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if not _storage.flock(lock_fd, True, False):
            return {"skipped": True}
        try:
            return _compact_locked(log, delete_retention_ms, now_ms)
        finally:
            _storage.funlock(lock_fd)
    finally:
        os.close(lock_fd)


def _ensure_mark(log: Log) -> None:
    """Record, durably and before any gap appears, that this log's offsets may skip."""
    path = os.path.join(log.path, COMPACTED_MARK)
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(b"offsets in this log may have gaps (compaction)\n")
            os.fsync(f.fileno())
        _storage.fsync_dir(log.path)
    log.allow_gaps = True


def _producer_of(batches: list, firsts: list, offset: int) -> tuple[int, int, int]:
    """(producer id, epoch, sequence) of the record at ``offset`` — from the batch
    holding it among ``batches`` (``_storage._batch_producers``) — or -1s for none."""
    i = bisect.bisect_right(firsts, offset) - 1
    if i < 0 or batches[i][1] < offset:
        return -1, -1, -1
    base, _, pid, epoch, seq = batches[i]
    return pid, epoch, -1 if seq < 0 else (seq + offset - base) & 0x7FFFFFFF


def _records_in(log: Log, start: int, end: int) -> int:
    """How many records offsets [start, end) of ``log`` hold, aborted ones included
    (markers are not records: a segment left as it is keeps them, and they stay right)."""
    n = 0
    for _ in log.read(start, end):
        n += 1
    return n


def _compact_locked(log: Log, delete_retention_ms: int, now_ms: int) -> dict:
    log.segments()                        # refresh the segment list
    snap = log.snapshot()
    lso = _storage._txn_lso(log)          # nothing at or above it is cleaned
    bases = [seg.base_offset for seg in log._segments]
    sealed = [seg for i, seg in enumerate(log._segments)
              if seg.base_offset != snap["active_base"] and i + 1 < len(bases) and bases[i + 1] <= lso]
    stats = {"segments": 0, "removed": 0, "kept": 0}
    if not sealed:
        return stats
    latest: dict[bytes, int] = {}
    for rec in _storage._txn_reader(log, log.start_offset, snap["next_offset"]):
        k = rec.key
        if k is not None:
            latest[bytes(k)] = rec.offset
        del rec, k
    cutoff = now_ms - delete_retention_ms
    tmp = os.path.join(log.path, ".compact-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    emptied: list[int] = []
    for seg in sealed:
        nxt = bases[bases.index(seg.base_offset) + 1]
        start = max(seg.base_offset, log.start_offset)
        keep = []
        total = _records_in(log, start, nxt)
        for rec in _storage._txn_reader(log, start, nxt):
            total += 1
            key = None if rec.key is None else bytes(rec.key)
            value = None if rec.value is None else bytes(rec.value)
            if key is not None and latest.get(key) != rec.offset:
                continue
            if value is None and rec.timestamp < cutoff:
                continue                   # an old tombstone: the delete has been seen long enough
            keep.append((rec.offset, rec.timestamp, key, value, rec.headers))
        if len(keep) == total:                 # nothing to drop (no aborted records either)
            continue
        if not keep and seg is not sealed[0]:
            # nothing left: the segment goes away (the first one stays, empty, so the log
            # start offset does not move — offsets below the first record stay readable)
            emptied.append(seg.base_offset)
            stats["segments"] += 1
            stats["removed"] += total
            continue
        batches = _storage._batch_producers(log, start, nxt)
        firsts = [bt[0] for bt in batches]
        os.makedirs(tmp, exist_ok=True)
        _ensure_mark(log)
        new = Segment(tmp, seg.base_offset, log._map_size, log._index_cap, True,
                      max(1 << 20, log.segment_bytes // 16))
        try:
            pos = 0
            for off, ts, key, value, headers in keep:
                pid, epoch, seq = _producer_of(batches, firsts, off)
                pos += write_single_batch(new, pos, off, ts, key, value, headers, pid, epoch, seq)
            new.scan(0, pos, seg.base_offset, -1, False, True, log.index_interval, allow_gaps=True)
            new.sync()
        finally:
            new.close()
        name = segment_name(seg.base_offset)
        for ext in (".index", ".timeindex"):
            try:
                os.unlink(os.path.join(log.path, name + ext))
            except FileNotFoundError:
                pass
        for ext in (".log", ".index", ".timeindex"):
            os.replace(os.path.join(tmp, name + ext), os.path.join(log.path, name + ext))
        _storage.fsync_dir(log.path)
        stats["segments"] += 1
        stats["removed"] += total - len(keep)
        stats["kept"] += len(keep)
    shutil.rmtree(tmp, ignore_errors=True)
    if stats["segments"]:
        # tell every process (this one included) to reopen the swapped segments
        log._lock_py()
        try:
            s = log.snapshot()
            if emptied:
                _ensure_mark(log)
                for b in emptied:
                    log._unlink_segment_files(b)
                _storage.fsync_dir(log.path)
            log._commit(s["next_offset"], s["end_pos"], s["active_base"], s["max_timestamp"],
                        s["index_count"], s["timeindex_count"], s["bytes_since_index"],
                        s["written_end"], s["generation"] + 1)
        finally:
            log._unlock_py()
        log.segments()
    return stats
