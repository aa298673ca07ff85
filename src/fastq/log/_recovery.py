"""Recovery of a log directory: what :class:`fastq.log.Log` does when it opens a log that
was not closed cleanly, and the checks every open makes. Split from fastq/log.py (which
owns the rest of the policy) to keep one module, one job; the rule is stated in
fastq/log.py's docstring and docs/FORMAT.md ("Recovery rule").

The rule in one line: what was acknowledged must be there (else :class:`CorruptRecord`
naming the file and position, and nothing is cut); only a torn tail past it is dropped;
a segment file that holds data is never unlinked, it is moved into ``damaged/``.
"""
from __future__ import annotations

import os
import time

from .._core import _storage
from .._core._storage import segment_name
from ..errors import CorruptRecord

__all__ = ["RecoveryMixin", "set_aside", "DAMAGED_DIR"]

_REPAIR_HINT = "; nothing was cut. Run `fastq verify` for the full report and `fastq repair` to " \
    "keep every intact batch and set the damage aside"
DAMAGED_DIR = "damaged"


def set_aside(log_dir: str, names: list[str], why: str) -> str | None:
    """Move the files ``names`` of ``log_dir`` that exist into
    ``log_dir/damaged/<UTC time>-<pid>/`` (with a README.txt saying why) — what recovery
    and repair do with data they cannot keep: never unlinked. Returns that folder, or
    None when none of the files existed."""
    present = [n for n in names if os.path.exists(os.path.join(log_dir, n))]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = os.path.join(log_dir, DAMAGED_DIR, f"{stamp}-{os.getpid()}")
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(dest, "README.txt"), "a") as f:
        f.write(f"{', '.join(present)}: {why}\n")
    for n in present:
        os.replace(os.path.join(log_dir, n), os.path.join(dest, n))
    _storage.fsync_dir(dest)
    _storage.fsync_dir(log_dir)
    return dest


class RecoveryMixin:
    """Opening checks and recovery of :class:`fastq.log.Log` (mixed into it; uses its
    ``path``, ``snapshot``, ``_segment_bases``, ``_open_segment``, ``_commit``, ...).
    Runs under the log's open mutex; ``_recover`` only while no other process has the
    log open."""

    def _consistent(self) -> bool:
        """Cheap checks that a clean state matches the files. A missing index of the
        active segment counts: the state's entry counts would point into a new,
        zero-filled file (recovery rebuilds it)."""
        s = self.snapshot()
        path = os.path.join(self.path, segment_name(s["active_base"]))
        try:
            return (os.path.getsize(path + ".log") >= s["end_pos"] and s["next_offset"] >= s["active_base"]
                    and os.path.getsize(path + ".index") > 0 and os.path.getsize(path + ".timeindex") > 0)
        except OSError:
            return False

    def _check_complete(self) -> None:
        """On open: every offset in [start, end) must be in a segment file. A first
        segment that is gone, or a sealed segment that ends before the next one begins
        (truncated, or a segment file deleted after it), is CorruptRecord naming the
        file and position — never a start moved or a range skipped without a word.
        Costs nothing extra: _refresh has just found each sealed segment's end."""
        if self.allow_gaps:                  # compaction removes emptied segments
            return
        segs = self._segments
        start = self.start_offset
        if segs[0].base_offset != start:
            missing = os.path.join(self.path, segment_name(start) + ".log")
            raise CorruptRecord(f"{missing} is missing: offsets [{start}, {segs[0].base_offset}) of "
                                f"{self.path} are gone{_REPAIR_HINT}", missing, 0)
        for seg, nxt in zip(segs, segs[1:]):
            end = self._sealed_next.get(seg.base_offset)
            if end is not None and end != nxt.base_offset:
                raise CorruptRecord(
                    f"{seg.path} ends at position {seg.sealed_end} with offset {end}, but the next "
                    f"segment starts at {nxt.base_offset}: offsets [{end}, {nxt.base_offset}) are "
                    f"missing (segment truncated, or a segment file deleted){_REPAIR_HINT}",
                    seg.path, seg.sealed_end)

    # -- recovery -----------------------------------------------------------------------

    def _recover(self, *, trust_state: bool, have_state: bool) -> None:
        """Rebuild the committed end from the segment files (exclusive: no other process
        has the log open). See the module docstring for the rules: acknowledged records
        that are missing or damaged raise CorruptRecord, never a cut; only a torn tail
        past what was acknowledged is dropped; a segment file is never unlinked unless
        it holds no data at all (a roll's leftover), others are set aside."""
        bases = self._segment_bases()
        s = self.snapshot()
        start = self.start_offset if have_state else (bases[0] if bases else 0)
        # What is known to have been acknowledged: all of the state's commit group on
        # the same boot; after a reboot only what fsync covered; without a state,
        # nothing is known, so no segment but the last may end early.
        acked = s["next_offset"] if trust_state else (self.recovery_point if have_state else None)
        if not bases:
            if acked is not None and acked > start:
                missing = os.path.join(self.path, segment_name(start) + ".log")
                raise CorruptRecord(f"{missing} is missing: acknowledged offsets [{start}, {acked}) of "
                                    f"{self.path} are gone{_REPAIR_HINT}", missing, 0)
            seg = self._open_segment(start, create=True)
            seg.close()
            self._commit(start, 0, start, -1, 0, 0, 0, 0, s["generation"] + 1)
            self._store_start_offset(start)
            self._store_recovery_point(start)
            return
        if trust_state:
            active = s["active_base"]
            if active not in bases:
                missing = os.path.join(self.path, segment_name(active) + ".log")
                if s["next_offset"] > active:
                    raise CorruptRecord(
                        f"active segment {missing} is missing: acknowledged offsets [{active}, "
                        f"{s['next_offset']}) are gone{_REPAIR_HINT}", missing, 0)
                self._open_segment(active, create=True).close()   # it held nothing
                bases = sorted(bases + [active])
            first_i = bases.index(active)
            last_i = first_i                  # later files lie past the committed end
        else:
            watermark = acked or 0
            first_i = 0
            for i, b in enumerate(bases):
                if b <= watermark:
                    first_i = i
            last_i = len(bases) - 1
        expected = bases[first_i]
        if acked is not None and start < acked and start < expected and first_i == 0 \
                and not self.allow_gaps:
            missing = os.path.join(self.path, segment_name(start) + ".log")
            raise CorruptRecord(f"{missing} is missing: acknowledged offsets [{start}, {expected}) "
                                f"are gone{_REPAIR_HINT}", missing, 0)
        cut_i = last_i
        result = None
        prev = None
        for i in range(first_i, last_i + 1):
            base = bases[i]
            nxt = bases[i + 1] if i + 1 <= last_i else -1
            if base != expected and not (self.allow_gaps and base > expected):
                # offsets [expected, base) are in no file: a segment was deleted or cut
                if acked is None or expected < acked:
                    where = prev.path if prev is not None else os.path.join(
                        self.path, segment_name(base) + ".log")
                    raise CorruptRecord(
                        f"offsets [{expected}, {base}) of {self.path} are in no segment: {where} "
                        f"ends at offset {expected} but the next segment starts at {base}"
                        f"{_REPAIR_HINT}", where, result[1]["end_pos"] if result else 0)
                cut_i = i - 1                 # past the durable watermark: torn after a reboot
                break
            seg = self._open_segment(base)
            try:
                stop = nxt
                if trust_state:
                    stop = s["next_offset"]   # bytes past the committed end were never acked
                r = seg.scan(0, -1, base, stop, True, True, self.index_interval, self.max_record_bytes,
                             self.allow_gaps)
                short = r["status"] != 0 or (nxt >= 0 and r["next_offset"] != nxt and not self.allow_gaps)
                if short and (r["next_offset"] < (acked or 0) or (acked is None and nxt >= 0)):
                    bad = r["bad_pos"] if r["status"] != 0 else r["end_pos"]
                    what = {_storage.STATUS_TRUNCATED: "truncated record batch",
                            0: "end of data"}.get(r["status"], "corrupt record batch")
                    known = f"acknowledged up to offset {acked}" if acked is not None else \
                        f"followed by segment {segment_name(nxt)}"
                    raise CorruptRecord(
                        f"{what} at position {bad} of {seg.path} (offset {r['next_offset']}), "
                        f"but the log was {known}{_REPAIR_HINT}", seg.path, bad)
                if trust_state and r["next_offset"] != s["next_offset"] and not self.allow_gaps:
                    raise CorruptRecord(
                        f"{seg.path} holds offsets up to {r['next_offset']}, but the log was "
                        f"acknowledged up to {s['next_offset']}{_REPAIR_HINT}", seg.path, r["end_pos"])
                result = (base, r)
                prev = seg
                expected = r["next_offset"]
                if short:
                    cut_i = i
                    break
            finally:
                seg.close()
        if result is None:                 # the first scanned segment was itself a gap
            cut_i = max(cut_i, first_i)
            base = bases[cut_i]
            seg = self._open_segment(base)
            try:
                r = seg.scan(0, -1, base, -1, True, True, self.index_interval, self.max_record_bytes,
                             self.allow_gaps)
            finally:
                seg.close()
            result = (base, r)
        base, r = result
        # Files after the cut hold nothing acknowledged (past the committed end, or past
        # a torn tail above the durable watermark): a roll's empty leftover is removed,
        # anything with data is set aside in damaged/, never unlinked.
        for b in bases[cut_i + 1:]:
            self._drop_unacked_segment(b, f"past the recovered end {r['next_offset']}")
        # We are alone: shrink the active file to its data and preallocate again, which
        # zero-fills whatever a dead writer or a torn write left past the end.
        seg = self._open_segment(base)
        try:
            _storage.truncate_file(seg.path, r["end_pos"])
            seg.refresh_size()           # its allocated size shrank with the truncate
            seg.grow(max(r["end_pos"], 1))
        finally:
            seg.close()
        self._commit(r["next_offset"], r["end_pos"], base, r["max_timestamp"], r["index_count"],
                     r["timeindex_count"], r["bytes_since_index"], r["end_pos"], s["generation"] + 1)
        if not have_state:
            self._store_start_offset(bases[0])
        elif self.start_offset < bases[0]:
            self._store_start_offset(bases[0])
        self._store_recovery_point(min(self.recovery_point, r["next_offset"]))

    def _drop_unacked_segment(self, base: int, why: str) -> None:
        """Remove the segment at ``base``, which holds nothing acknowledged: unlink it
        when its data is empty (a roll that failed or died before committing), else
        move its files into damaged/ (a human decides)."""
        name = os.path.join(self.path, segment_name(base))
        try:
            with open(name + ".log", "rb") as f:
                head = f.read(12)
        except FileNotFoundError:
            head = b""
        if any(head):
            set_aside(self.path, [segment_name(base) + ext for ext in (".log", ".index", ".timeindex")],
                      why)
        else:
            self._unlink_segment_files(base)
