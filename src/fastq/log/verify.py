"""Check a log's files for damage, and repair a damaged log without deleting anything.

``verify_log(path)`` reads a log directory (read-only: segments are mapped read-only,
nothing is created, locked or rewritten) and returns a :class:`Report` whose
``problems`` each name the file, the byte position and the kind:

``crc-mismatch``      a complete batch whose CRC-32C does not match its bytes
``corrupt-batch``     a batch that fails another check (magic, framing, a record)
``truncated-batch``   a batch that runs past the end of its file
``offset-gap``        a segment ends before the next one begins (offsets in no file)
``missing-segment``   a segment the state names (the first, the active) has no file
``empty-segment``     a segment file with no data inside the log (a failed roll's leftover)
``overlap``           a segment starts below the end of the one before it
``index-entry``       an ``.index``/``.timeindex`` entry pointing at the wrong place
``missing-index``     a segment without its ``.index`` or ``.timeindex`` (rebuilt on open)
``state-checksum``    a cleanly closed ``fastq.state`` whose checksum no longer matches (the
                      segments are then judged alone; repair rebuilds the state from them)

Damage is judged against what was acknowledged: the state's committed end when the
state can be trusted (same boot, or closed cleanly), else its fsynced
``recovery_point``. Bytes past that end of the last segment are a torn tail that was
never acknowledged (recovery drops them), not a problem.

``repair_log(path)`` makes a damaged log openable again, keeping every intact batch: a
segment's batches before a damaged one, and after it (found by following the damaged
batch's length field; the segment is rewritten as its intact runs). What it cannot keep
is **moved aside** into ``<log>/damaged/<UTC time>-<pid>/`` (with a README.txt saying
why), never deleted: damaged bytes, empty or overlapping segment files, leftovers below
the log start, the old ``fastq.state``. Offsets never come back to life with other data: when offsets are lost
inside the log or at its end, the log is marked as having gaps (as compaction does) and
keeps its end offset, so the next append gets the offset it would have got. The log is
then reopened, which rebuilds the state and every index. ``dry_run=True`` only reports.
A repair needs the log closed everywhere (``LogLocked`` otherwise).

``verify_broker(path)`` runs ``verify_log`` on every partition of a broker directory.
"""
from __future__ import annotations

import dataclasses
import json
import mmap
import os
import time

from .._core import _storage
from .._core._codec import INDEX_ENTRY, TIMEINDEX_ENTRY, decode_batch, index_get, timeindex_get
from ._recovery import set_aside
from ..errors import CorruptRecord, InvalidArgument, LogLocked
from .config import (COMPACTED_MARK, CONFIG_FILE, DEFAULT_MAX_RECORD_BYTES, FLAG_CLEAN, LOCK_FILE, SEGMENT_RE,
                     STATE_FILE, boot_id)
from .log import Log, segment_name

__all__ = ["Problem", "Report", "RepairReport", "verify_log", "verify_broker", "broker_logs", "repair_log",
           "read_state"]

_BATCH_OVERHEAD = 12          # baseOffset i64 + batchLength i32


@dataclasses.dataclass
class Problem:
    """One piece of damage: its ``kind`` (see the module docstring), the ``path`` of the
    file and the byte ``position`` in it (None when the file is missing), the
    ``offsets`` [lo, hi) it affects when known, and a readable ``detail``."""
    kind: str
    path: str
    position: int | None
    detail: str
    offsets: tuple[int, int] | None = None


@dataclasses.dataclass
class Report:
    """What :func:`verify_log` found in one log directory."""
    path: str
    problems: list[Problem]
    start_offset: int | None = None      # first offset the files hold
    end_offset: int | None = None        # offset after the last intact record
    acked_end: int | None = None         # what the state says was acknowledged
    segments: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        return d


@dataclasses.dataclass
class RepairReport:
    """What :func:`repair_log` kept, moved aside and lost (``dry_run``: would)."""
    path: str
    dry_run: bool
    kept: list[dict]                       # {"path", "bytes", "offsets": [lo, hi)} per segment
    moved: list[dict]                      # {"path", "position", "why"}: set aside, never deleted
    lost: list[tuple[int, int]]            # acknowledged offset ranges no intact batch holds
    damaged_dir: str | None = None         # where the moved files went
    problems: list[Problem] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- reading a log's files without changing them --------------------------------------------

def read_state(path: str) -> dict | None:
    """The fields of the log's state file (``flags``, ``boot_id``, ``next_offset``,
    ``end_pos``, ``active_base``, ``recovery_point``, ``start_offset``; layout in
    csrc/fq_log.h), read into a private copy by the log core itself — nothing is mapped
    writable or written — or None when the file is missing or is not a state file."""
    state = os.path.join(path, STATE_FILE)
    if not os.path.exists(state):
        return None
    core = _storage.LogCore()
    try:
        core._map_state_copy(state)
        return core._state_fields() if core._state_valid() else None
    except CorruptRecord:                # not FQ_STATE_SIZE bytes: not a state file
        return None
    finally:
        core._release_state()


def _config(path: str) -> dict:
    try:
        with open(os.path.join(path, CONFIG_FILE), "rb") as f:
            cfg = json.loads(f.read())
    except FileNotFoundError:
        cfg = {}
    except ValueError as e:
        raise CorruptRecord(f"{os.path.join(path, CONFIG_FILE)} is not a fastq log config: {e}",
                            os.path.join(path, CONFIG_FILE)) from None
    return cfg if isinstance(cfg, dict) else {}


def _bases(path: str) -> list[int]:
    return sorted({int(m.group(1)) for m in map(SEGMENT_RE.match, os.listdir(path))
                   if m and m.group(2) == "log"})


class _Mapped:
    """A segment file mapped read-only (an empty file reads as b"")."""

    def __init__(self, path: str):
        self.f = open(path, "rb")
        self.size = os.fstat(self.f.fileno()).st_size
        self.buf = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""

    def close(self):
        if self.size:
            self.buf.close()
        self.f.close()


def _batch_problem(seg_path: str, buf, pos: int, status: int, offset: int) -> Problem:
    if status == _storage.STATUS_TRUNCATED:
        return Problem("truncated-batch", seg_path, pos,
                       f"batch at position {pos} (offset {offset}) runs past the end of the file")
    kind, why = "corrupt-batch", "fails validation"
    if _decodes(buf[pos:], check_crc=False) and not _decodes(buf[pos:]):
        kind, why = "crc-mismatch", "has a CRC-32C that does not match its bytes"
    return Problem(kind, seg_path, pos, f"batch at position {pos} (offset {offset}) {why}")


def _decodes(buf, check_crc: bool = True) -> bool:
    """Whether the batch at the start of ``buf`` decodes (the codec's own validation)."""
    try:
        decode_batch(buf, check_crc=check_crc)
    except CorruptRecord:
        return False
    return True


def _resync(m: _Mapped, r: dict, max_size: int, stop: int, problems: list) -> list[tuple]:
    """Runs of intact batches after a damaged one, found by trusting the damaged batch's
    length field (a flipped bit elsewhere leaves it intact) and scanning on from the
    position after it; each further damaged batch is reported and skipped the same way.
    Returns [(start position, end position, first offset, next offset)]."""
    runs = []
    pos, status, expected = r["bad_pos"], r["status"], r["next_offset"]
    with memoryview(m.buf) as mv:
        while status not in (0, _storage.STATUS_TRUNCATED) and pos + _BATCH_OVERHEAD <= m.size:
            length = int.from_bytes(mv[pos + 8:pos + 12], "big")
            at = pos + _BATCH_OVERHEAD + length
            if not 49 <= length <= max_size or at + _BATCH_OVERHEAD > m.size:
                break
            sub = mv[at:]
            try:
                r2 = _storage.scan_buffer(sub, 0, expected + 1, stop, max_size, True)
                first = int.from_bytes(sub[:8], "big")
            finally:
                sub.release()
            if r2["batches"] == 0:
                break
            runs.append((at, at + r2["end_pos"], first, r2["next_offset"]))
            expected, status = r2["next_offset"], r2["status"]
            if status != 0:
                pos = at + r2["bad_pos"]
                problems.append(_batch_problem(m.f.name, m.buf, pos, status, expected))
    return runs


def _check_indexes(path: str, base: int, buf, data_end: int, out: list) -> None:
    """Missing index files, and .index entries below data_end that do not point at the
    batch starting their offset (the .timeindex is only a lower bound for searches, and
    the open rebuilds both when missing)."""
    name = os.path.join(path, segment_name(base))
    for ext in (".index", ".timeindex"):
        if not os.path.exists(name + ext):
            out.append(Problem("missing-index", name + ext, None,
                               f"{name}{ext} is missing (rebuilt when the log is opened)"))
    try:
        with open(name + ".index", "rb") as f:
            idx = f.read()
    except FileNotFoundError:
        idx = b""
    prev = (-1, -1)
    for i in range(len(idx) // INDEX_ENTRY):
        rel, pos = index_get(idx, i)
        if rel == 0 and pos == 0:
            break                               # the zero-filled end of the entries
        if pos >= data_end:
            break                               # past the data: not trusted, never used
        ok = (rel > prev[0] and pos > prev[1] and pos + 17 <= len(buf)
              and int.from_bytes(buf[pos:pos + 8], "big") == base + rel and buf[pos + 16] == 2)
        if not ok:
            out.append(Problem("index-entry", name + ".index", INDEX_ENTRY * i,
                               f"entry {i} (offset {base + rel} at position {pos}) does not point at "
                               f"the batch starting that offset"))
            break
        prev = (rel, pos)
    _check_timeindex(name + ".timeindex", base, buf, data_end, out)


_LAST_OFFSET_DELTA_AT = 23     # RecordBatch v2 header (csrc/fq_batch.h): lastOffsetDelta int32
_MAX_TIMESTAMP_AT = 35         # maxTimestamp int64


def _check_timeindex(path: str, base: int, buf, data_end: int, out: list) -> None:
    """``.timeindex`` entries (docs/FORMAT.md) must ascend and each must name the last
    offset of a batch with a timestamp no smaller than every record up to it: a smaller
    one would make ``offset_for_timestamp`` skip records. Walks the batch headers below
    ``data_end`` (already validated by the scan), one step per batch."""
    try:
        with open(path, "rb") as f:
            tix = f.read()
    except FileNotFoundError:
        return
    upto: dict[int, int] = {}          # batch last offset -> max timestamp up to it
    pos, running = 0, -1
    while pos + 61 <= data_end:
        length = int.from_bytes(buf[pos + 8:pos + 12], "big")
        last = int.from_bytes(buf[pos:pos + 8], "big") + \
            int.from_bytes(buf[pos + _LAST_OFFSET_DELTA_AT:pos + _LAST_OFFSET_DELTA_AT + 4], "big")
        running = max(running, int.from_bytes(buf[pos + _MAX_TIMESTAMP_AT:pos + _MAX_TIMESTAMP_AT + 8],
                                              "big", signed=True))
        upto[last] = running
        pos += 12 + length
    end = max(upto, default=base - 1)
    prev = (None, -1)
    for i in range(len(tix) // TIMEINDEX_ENTRY):
        ts, rel = timeindex_get(tix, i)
        if ts == 0 and rel == 0:
            break                               # the zero-filled end of the entries
        if base + rel > end:
            break                               # past the data: not trusted, never used
        want = upto.get(base + rel)
        why = None
        if prev[0] is not None and not (ts > prev[0] and rel > prev[1]):
            why = "does not ascend"
        elif want is None:
            why = "does not name the last offset of a batch"
        elif ts < want:
            why = f"says {ts}, but records up to it reach {want}: timestamp lookups would skip records"
        if why:
            out.append(Problem("index-entry", path, TIMEINDEX_ENTRY * i,
                               f"{path}: entry {i} (timestamp {ts}, offset {base + rel}) {why}"))
            break
        prev = (ts, rel)


def _scan_log(path: str) -> tuple[Report, list[dict]]:
    """Verify, and also return per segment what a repair needs."""
    if not os.path.isdir(path):
        raise InvalidArgument(f"{path} is not a directory")
    if not any(os.path.exists(os.path.join(path, n)) for n in (CONFIG_FILE, STATE_FILE, LOCK_FILE)):
        raise InvalidArgument(f"{path} is not a fastq log directory (no {CONFIG_FILE}, {STATE_FILE} "
                              f"or {LOCK_FILE}); give a log or a broker directory")
    cfg = _config(path)
    gaps = bool(cfg.get("compact")) or os.path.exists(os.path.join(path, COMPACTED_MARK))
    max_size = cfg.get("max_record_bytes", DEFAULT_MAX_RECORD_BYTES)
    st = read_state(path)
    problems: list[Problem] = []
    if st is not None and not st["checksum_ok"]:
        problems.append(Problem("state-checksum", os.path.join(path, STATE_FILE), 0,
                                "the log was closed cleanly, but the state's checksum no longer "
                                "matches its bytes: its offsets are not trusted"))
        st = None                                # judge the segments alone
    acked = None
    if st is not None:
        trusted = st["flags"] & FLAG_CLEAN or st["boot_id"] == boot_id()
        acked = st["next_offset"] if trusted else st["recovery_point"]
    bases = _bases(path)
    start = st["start_offset"] if st is not None else (bases[0] if bases else 0)
    below = [b for b in bases if b < start]      # retention's leftovers (it died before unlinking)
    bases = [b for b in bases if b >= start]
    report = Report(path, problems, acked_end=acked, segments=len(bases))
    if st is not None and st["active_base"] not in bases and acked is not None and acked > st["active_base"]:
        missing = os.path.join(path, segment_name(st["active_base"]) + ".log")
        problems.append(Problem("missing-segment", missing, None,
                                f"active segment {missing} is missing", (st["active_base"], acked)))
    if bases and acked is not None and bases[0] > start and not gaps:
        missing = os.path.join(path, segment_name(start) + ".log")
        problems.append(Problem("missing-segment", missing, None,
                                f"first segment {missing} is missing: offsets [{start}, {bases[0]}) "
                                f"are in no file", (start, bases[0])))
    segs = []
    expected = bases[0] if bases else start
    for i, base in enumerate(bases):
        seg_path = os.path.join(path, segment_name(base) + ".log")
        last = i == len(bases) - 1
        nxt = bases[i + 1] if not last else -1
        m = _Mapped(seg_path)
        try:
            r = _storage.scan_buffer(m.buf, base, base, -1, max_size, gaps)
            info = {"base": base, "path": seg_path, "size": m.size, "end_pos": r["end_pos"],
                    "next_offset": r["next_offset"], "batches": r["batches"], "action": "keep",
                    "runs": [(0, r["end_pos"], base, r["next_offset"])]}
            segs.append(info)
            if r["batches"] == 0 and not last and not any(m.buf[:_BATCH_OVERHEAD]):
                problems.append(Problem("empty-segment", seg_path, 0,
                                        f"{seg_path} holds no data but the log goes on after it "
                                        f"(left by a roll that failed)"))
                info["action"] = "move"
                continue
            if base < expected:
                problems.append(Problem("overlap", seg_path, 0,
                                        f"{seg_path} starts at offset {base}, below the end {expected} "
                                        f"of the segment before it", (base, expected)))
                info["action"] = "move"
                continue
            if base > expected and not gaps:
                problems.append(Problem("offset-gap", segs[-2]["path"] if len(segs) > 1 else seg_path,
                                        segs[-2]["end_pos"] if len(segs) > 1 else 0,
                                        f"offsets [{expected}, {base}) are in no file: a segment was "
                                        f"truncated or a segment file deleted", (expected, base)))
            end_known = acked if last else nxt
            if r["status"] != 0:
                torn = last and (acked is None or r["next_offset"] >= acked)
                if not torn:
                    stop = (acked if acked is not None else -1) if last else nxt
                    at_problem = len(problems)
                    info["runs"] += _resync(m, r, max_size, stop, problems)
                    p = _batch_problem(seg_path, m.buf, r["bad_pos"], r["status"], r["next_offset"])
                    after = info["runs"][1][2] if len(info["runs"]) > 1 else end_known
                    p.offsets = (r["next_offset"], after if after is not None else r["next_offset"])
                    problems.insert(at_problem, p)
                    info["action"] = "cut"
                    info["next_offset"] = info["runs"][-1][3]
                    r = dict(r, next_offset=info["next_offset"])
            elif not last and r["next_offset"] < nxt and not gaps and \
                    not any(p.kind == "offset-gap" and p.offsets == (r["next_offset"], nxt) for p in problems):
                problems.append(Problem("offset-gap", seg_path, r["end_pos"],
                                        f"{seg_path} ends at offset {r['next_offset']} (position "
                                        f"{r['end_pos']}) but the next segment starts at {nxt}",
                                        (r["next_offset"], nxt)))
                info["action"] = "cut"
            elif last and acked is not None and r["next_offset"] < acked and not gaps:
                problems.append(Problem("truncated-batch" if r["end_pos"] >= m.size else "offset-gap",
                                        seg_path, r["end_pos"],
                                        f"{seg_path} ends at offset {r['next_offset']} (position "
                                        f"{r['end_pos']}) but the log was acknowledged up to {acked}",
                                        (r["next_offset"], acked)))
                info["action"] = "cut"
            _check_indexes(path, base, m.buf, r["end_pos"], problems)
            expected = r["next_offset"] if not gaps else max(expected, r["next_offset"])
            if last and acked is not None and acked > r["next_offset"] and info["action"] == "keep":
                info["action"] = "cut"
        finally:
            m.close()
    for b in below:
        segs.insert(0, {"base": b, "path": os.path.join(path, segment_name(b) + ".log"), "size": 0,
                        "end_pos": 0, "next_offset": b, "batches": 0, "action": "move", "below": True})
    if segs:
        kept = [s for s in segs if s["action"] != "move"]
        report.start_offset = kept[0]["base"] if kept else None
        report.end_offset = kept[-1]["next_offset"] if kept else None
    return report, segs


def verify_log(path) -> Report:
    """Check one log directory without changing it; see the module docstring."""
    return _scan_log(os.fspath(path))[0]


def verify_broker(path) -> list[Report]:
    """:func:`verify_log` for every partition of every topic of a broker directory.
    The result is a list with an ``ok`` attribute (no partition has a problem)."""
    return _Reports(verify_log(p) for p in broker_logs(path))


def broker_logs(path) -> list[str]:
    """The partition log directories of a broker directory, by topic then partition
    (a tool that verifies them one by one can show its progress)."""
    path = os.fspath(path)
    topics = os.path.join(path, "topics")
    if not os.path.isdir(topics):
        raise InvalidArgument(f"{path} is not a fastq broker directory (no topics/)")
    out = []
    for t in sorted(os.listdir(topics)):
        tdir = os.path.join(topics, t)
        if not os.path.isdir(tdir) or t.startswith(".deleted-"):   # a delete in progress
            continue
        out += [os.path.join(tdir, p) for p in sorted((n for n in os.listdir(tdir) if n.isdigit()), key=int)]
    return out


class _Reports(list):
    @property
    def ok(self) -> bool:
        return all(r.ok for r in self)


def is_broker(path) -> bool:
    """Whether ``path`` is a broker directory (rather than one log)."""
    return os.path.isdir(os.path.join(os.fspath(path), "topics"))


# -- repair ---------------------------------------------------------------------------------

def _lock_alone(path: str) -> list[int]:
    """Take the log's open mutex and the exclusive state lock: no process may have it
    open while it is repaired. Returns the descriptors to release."""
    fds = []
    try:
        for name, wait in ((LOCK_FILE, True), (STATE_FILE, False)):
            p = os.path.join(path, name)
            if not os.path.exists(p):
                continue
            fd = os.open(p, os.O_RDWR | os.O_CLOEXEC)
            fds.append(fd)
            if not _storage.flock(fd, True, wait):
                raise LogLocked(f"{path} is open in another process; close it everywhere before "
                                f"repairing")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def repair_log(path, *, dry_run: bool = False) -> RepairReport:
    """Make the damaged log at ``path`` openable again, keeping every intact batch and
    moving what it cannot keep aside; see the module docstring. Returns what it kept,
    moved and lost (with ``dry_run``, what it would)."""
    path = os.fspath(path)
    fds = _lock_alone(path) if not dry_run else []
    try:
        report, segs = _scan_log(path)
        st = read_state(path)
        if st is not None and not st["checksum_ok"]:
            st = None                            # damaged: the segments say where the log starts
        out = RepairReport(path, dry_run, [], [], [], problems=report.problems)
        if report.ok:
            out.kept = [{"path": s["path"], "bytes": s["end_pos"], "offsets": [s["base"], s["next_offset"]]}
                        for s in segs]
            return out
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        why = {p.path: f"{p.kind}: {p.detail}" for p in reversed(report.problems)}
        kept = [s for s in segs if s["action"] != "move"]
        for s in segs:
            name = segment_name(s["base"])
            if s["action"] == "move":
                reason = "below the log start (retention had deleted it)" if s.get("below") else \
                    why.get(s["path"], "not part of the log")
                out.moved.append({"path": s["path"], "position": 0, "why": reason})
                if not dry_run:
                    out.damaged_dir = set_aside(path, [name + e for e in (".log", ".index", ".timeindex")],
                                                reason)
            elif s["action"] == "cut" and len(s["runs"]) > 1:
                out.moved.append({"path": s["path"], "position": s["end_pos"],
                                  "why": why.get(s["path"], "damaged batches") +
                                  " (the damaged batches; the intact ones after them are kept)"})
                if not dry_run:
                    _rewrite(path, s, stamp)
            elif s["action"] == "cut" and s["size"] > s["end_pos"]:
                tail = f"{name}.log.from-{s['end_pos']}"
                out.moved.append({"path": s["path"], "position": s["end_pos"],
                                  "why": why.get(s["path"], "damaged tail") + f" (bytes from {s['end_pos']})"})
                if not dry_run:
                    _move_tail(path, s, tail, stamp)
            if s["action"] != "move":
                out.kept.append({"path": s["path"], "bytes": sum(e - b for b, e, _, _ in s["runs"]),
                                 "offsets": [s["base"], s["next_offset"]]})
        logs = {segment_name(s["base"]) for s in segs}
        orphans = sorted(n for n in os.listdir(path) if (m := SEGMENT_RE.match(n))
                         and m.group(2) != "log" and m.group(1) not in logs)
        if orphans:
            out.moved += [{"path": os.path.join(path, n), "position": 0, "why": "index of a missing segment"}
                          for n in orphans]
            if not dry_run:
                out.damaged_dir = set_aside(path, orphans, "index of a missing segment")
        # what was acknowledged and no kept batch holds
        start = st["start_offset"] if st is not None else (kept[0]["base"] if kept else 0)
        end = max([report.acked_end or 0] + [s["next_offset"] for s in kept])
        at = start
        for s in kept:
            for i, (_, _, first, nxt_off) in enumerate(s["runs"]):
                lo = s["base"] if i == 0 else first
                if lo > at:
                    out.lost.append((at, lo))
                at = max(at, nxt_off)
        if end > at:
            out.lost.append((at, end))
        gaps_inside = any(lo > start for lo, _ in out.lost)
        if not dry_run:
            if gaps_inside:
                _mark_gaps(path)
            if not kept or end > kept[-1]["next_offset"]:
                # an empty segment at the old end: the next append gets the offset it
                # would have got, so no offset is ever handed out twice
                open(os.path.join(path, segment_name(end) + ".log"), "ab").close()
            moved_state = set_aside(path, [STATE_FILE], "replaced by repair: rebuilt from the segments")
            out.damaged_dir = out.damaged_dir or moved_state
            for fd in fds:
                os.close(fd)
            fds = []
            with Log(path):                      # recovery from the segments: state, indexes
                pass
        return out
    finally:
        for fd in fds:
            os.close(fd)


def _move_tail(path: str, s: dict, name: str, stamp: str) -> None:
    """Copy a segment's bytes from its first bad batch into damaged/, then cut the
    segment there (no process has it open: repair holds the log alone)."""
    dest = os.path.join(path, "damaged", f"{stamp}-{os.getpid()}")
    os.makedirs(dest, exist_ok=True)
    with open(s["path"], "rb") as src, open(os.path.join(dest, name), "wb") as dst:
        src.seek(s["end_pos"])
        while chunk := src.read(1 << 20):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    with open(os.path.join(dest, "README.txt"), "a") as f:
        f.write(f"{name}: bytes of {os.path.basename(s['path'])} from position {s['end_pos']}, after "
                f"its last intact batch\n")
    _storage.fsync_dir(dest)
    _storage.truncate_file(s["path"], s["end_pos"])


def _rewrite(path: str, s: dict, stamp: str) -> None:
    """Rewrite a segment as its intact runs back to back; the bytes between and after
    them go into damaged/ first. temp -> fsync -> rename -> fsync(dir)."""
    dest = os.path.join(path, "damaged", f"{stamp}-{os.getpid()}")
    os.makedirs(dest, exist_ok=True)
    name = os.path.basename(s["path"])
    tmp = s["path"] + ".repair.tmp"
    with open(s["path"], "rb") as src:
        data = src.read()
    cuts = [(e, b2) for (_, e, _, _), (b2, _, _, _) in zip(s["runs"], s["runs"][1:])]
    cuts.append((s["runs"][-1][1], len(data)))
    with open(os.path.join(dest, "README.txt"), "a") as f:
        for lo, hi in cuts:
            if hi > lo and any(data[lo:hi]):
                with open(os.path.join(dest, f"{name}.bytes-{lo}-{hi}"), "wb") as piece:
                    piece.write(data[lo:hi])
                    piece.flush()
                    os.fsync(piece.fileno())
                f.write(f"{name}.bytes-{lo}-{hi}: damaged bytes of {name} between intact batches\n")
    with open(tmp, "wb") as out:
        for b, e, _, _ in s["runs"]:
            out.write(data[b:e])
        out.flush()
        os.fsync(out.fileno())
    _storage.fsync_dir(dest)
    os.replace(tmp, s["path"])
    _storage.fsync_dir(path)


def _mark_gaps(path: str) -> None:
    """Record durably that this log's offsets may skip (what compaction writes)."""
    mark = os.path.join(path, COMPACTED_MARK)
    if not os.path.exists(mark):
        with open(mark, "wb") as f:
            f.write(b"offsets in this log may have gaps (fastq repair set damaged ranges aside)\n")
            os.fsync(f.fileno())
        _storage.fsync_dir(path)
