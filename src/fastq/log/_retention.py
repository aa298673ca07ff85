"""Cutting a log from either end: retention (whole sealed segments from the start, by
size or age) and truncation (every record from an offset on). A mixin of
:class:`fastq.log.Log`; both run under the log's writer lock. Retention commits the new
start offset in the shared state (``fastq.state``, csrc/fq_log.h) before it unlinks a
file, so a crash between the two leaves files below the start, which opens ignore and
the next retention pass deletes (a failed unlink is retried there too).
Truncation, an administrative single-process operation, commits the new end first too,
then zeroes the rest of the new active segment and unlinks the segments past it: a crash
or a failed unlink in between leaves files past the end, which the next open sets aside
(``damaged/``) or ignores — never a gap below the end."""
from __future__ import annotations

import os
import time

from .._core._codec import os_errors
from .._core._storage import Segment
from ..errors import InvalidArgument, OffsetOutOfRange, StorageError
from . import producer_state

__all__ = ["RetentionMixin"]


class RetentionMixin:
    """Retention and truncation for :class:`fastq.log.Log` (see the module docstring)."""

    def enforce_retention(self, now_ms: int | None = None) -> int:
        """Delete whole sealed segments past ``retention_bytes`` / ``retention_ms``.
        Returns the number of segments deleted. Readers that still hold a deleted
        segment (here or in another process) keep reading it until they let go. A file
        that cannot be unlinked raises StorageError naming it, after the new start offset
        is committed: the file stays behind, below the start, and is ignored."""
        self._lock_py()
        try:
            if self.snapshot()["generation"] != self._gen:
                self._refresh()
            return self._enforce_retention_locked(now_ms)
        finally:
            self._unlock_py()

    def _enforce_retention_locked(self, now_ms: int | None = None) -> int:
        with self._seg_lock:
            if self.retention_bytes is None and self.retention_ms is None:
                return 0
            failed = self._delete_leftovers_below_start()
            n = self._delete_expired_locked(now_ms)
            if failed is not None:
                raise failed
            return n

    def _delete_leftovers_below_start(self) -> StorageError | None:
        """Unlink segment files below the first segment: what an earlier retention or
        truncation committed away but failed to delete (or died before deleting).
        Returns the first failure (the caller raises it after its own work)."""
        first = self._segments[0].base_offset
        with os_errors("list the log directory", self.path):
            bases = self._segment_bases(any_file=True)
        failed = None
        for base in bases:
            if base < first:
                try:
                    self._unlink_segment_files(base)
                except StorageError as e:
                    failed = failed or e
        return failed

    def delete_before(self, offset: int) -> int:
        """Delete the whole sealed segments that hold only records below ``offset`` — what
        their owner no longer needs (a queue's settled messages). Returns how many; the
        failure rules of :meth:`enforce_retention` apply."""
        if not isinstance(offset, int) or offset < 0:
            raise InvalidArgument(f"offset must be an int >= 0, got {offset!r}")
        self._lock_py()
        try:
            if self.snapshot()["generation"] != self._gen:
                self._refresh()
            with self._seg_lock:
                failed = self._delete_leftovers_below_start()
                n = self._delete_expired_locked(None, below=offset)
                if failed is not None:
                    raise failed
                return n
        finally:
            self._unlock_py()

    def _delete_expired_locked(self, now_ms: int | None, below: int | None = None) -> int:
        """Drop sealed segments from the start while retention wants them gone, or, with
        ``below``, while the next segment starts at or below that offset."""
        with self._seg_lock:
            now_ms = int(time.time() * 1000) if now_ms is None else now_ms
            s = self.snapshot()
            sealed = self._segments[:-1]
            total = sum(seg.sealed_end for seg in sealed) + s["end_pos"]
            doomed = []
            for i, seg in enumerate(sealed):
                if below is not None:
                    if self._segments[i + 1].base_offset > below:
                        break
                    doomed.append(seg)
                    continue
                too_big = self.retention_bytes is not None and total > self.retention_bytes
                too_old = (self.retention_ms is not None and seg.sealed_max_timestamp >= 0
                           and self._segment_age_ts(seg, now_ms) < now_ms - self.retention_ms)
                if not (too_big or too_old):
                    break
                doomed.append(seg)
                total -= seg.sealed_end
            if not doomed:
                return 0
            new_start = self._segments[len(doomed)].base_offset
            self._store_start_offset(new_start)
            gen = s["generation"] + 1
            self._commit(s["next_offset"], s["end_pos"], s["active_base"], s["max_timestamp"],
                         s["index_count"], s["timeindex_count"], s["bytes_since_index"],
                         s["written_end"], gen)
            failed = None
            for seg in doomed:
                try:
                    self._unlink_segment_files(seg.base_offset)
                except StorageError as e:       # the commit stands: finish the view first
                    failed = failed or e
                seg.deleted = True
            self._segments = self._segments[len(doomed):]
            self._gen = gen
            if failed is not None:
                raise failed
            return len(doomed)

    @staticmethod
    def _segment_age_ts(seg: Segment, now_ms: int) -> int:
        """The time a sealed segment is as old as: its newest record's timestamp, unless
        that is still in the future — a record stamped ahead of the clock (allowed up to
        max_timestamp_ahead_ms, or with the limit off) — then when its file was last
        written (mtime; with mmap writes it may lag the last write by the kernel's
        write-back interval, ~30 s). One far-future record would otherwise keep its
        segment, and every later one, until the clock caught up."""
        ts = seg.sealed_max_timestamp
        if ts > now_ms:
            try:
                ts = min(ts, os.stat(seg.path).st_mtime_ns // 1_000_000)
            except FileNotFoundError:
                pass
        return ts

    def truncate(self, offset: int) -> None:
        """Remove every record at ``offset`` and after (``offset`` must start a batch).

        Refuses with BufferError while record views into the removed range are alive in
        this process. Meant for single-process administration: readers in other
        processes positioned past ``offset`` see OffsetOutOfRange or new data."""
        self._lock_py()
        try:
            with self._seg_lock:     # the view changes before the commit
                s = self.snapshot()
                if s["generation"] != self._gen:
                    self._refresh()
                if not self.start_offset <= offset <= s["next_offset"]:
                    raise OffsetOutOfRange(f"cannot truncate to {offset}: valid offsets are "
                                           f"[{self.start_offset}, {s['next_offset']}]")
                if offset == s["next_offset"]:
                    return
                keep = [seg for seg in self._segments if seg.base_offset <= offset]
                # never drop the first segment entirely: truncating to its base empties it
                target = keep[-1]
                drop = [seg for seg in self._segments if seg.base_offset > offset]
                for seg in drop + [target]:
                    if seg.exports:
                        raise BufferError(f"cannot truncate {seg.path}: {seg.exports} record view(s) alive")
                limit = s["end_pos"] if target is self._active else target.sealed_end
                n, _ = target.valid_index_prefix(limit)
                pos = target.find_position(offset, limit, n)
                if pos < 0:
                    raise OffsetOutOfRange(f"offset {offset} not found")
                head = target.read_bytes(pos, pos + 12)
                if int.from_bytes(head[:8], "big") != offset:
                    raise InvalidArgument(f"offset {offset} is inside a batch; truncate to a batch boundary")
                written = max(s["written_end"], limit) if target is self._active else target.alloc_size
                r = target.scan(0, pos, target.base_offset, -1, False, True, self.index_interval,
                                allow_gaps=self.allow_gaps)
                # commit the new end first: a crash or a failed unlink below then leaves
                # files past the end (recovery sets them aside), never a gap below it
                gen = s["generation"] + 1
                self._commit(offset, pos, target.base_offset, r["max_timestamp"], r["index_count"],
                             r["timeindex_count"], r["bytes_since_index"], pos, gen)
                self._store_recovery_point(min(self.recovery_point, offset))
                self._pstate = None              # it applied batches that are gone now
                producer_state.drop_after(self.path, offset)
                self._segments = keep
                self._active = target
                target.sealed_end = -1
                self._gen = gen
                target.zero(pos, written)
                failed = None
                for seg in drop:
                    seg.deleted = True
                    seg.close()
                    try:
                        self._unlink_segment_files(seg.base_offset)
                    except StorageError as e:     # the commit stands: delete the others
                        failed = failed or e
                if failed is not None:
                    raise failed
        finally:
            self._unlock_py()
