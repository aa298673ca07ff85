"""A durable, segmented, multi-process append log — the storage core of fastq.

One directory is one log::

    fastq.state                       shared state: committed end, writer lock, notify word
    fastq.lock                        open/close mutex (flock)
    log.json                          configuration, written once at creation
    00000000000000000000.log          RecordBatch v2 batches (Kafka's format)
    00000000000000000000.index        offset -> position, sparse
    00000000000000000000.timeindex    timestamp -> offset, sparse

The hot path (append, read) lives in :mod:`fastq._core._storage`; this module owns the policy:
opening and recovery, rolling, retention, truncation, durability and closing.

Durability (``durability=``), what each loses on power failure:

``"os"`` (default)
    An append returns once the batch is in the OS page cache (a memcpy into the map).
    Survives the crash of any process; a power failure or kernel crash may lose what the
    OS had not written back yet (typically up to ~30 s on Linux).
``"group"``
    An append returns after an fsync that covers it; appends that arrive while an fsync
    is in flight share the next one (group commit). Loses nothing acknowledged.
``"always"``
    Every append calls fsync before returning. Loses nothing acknowledged.

Timestamps: an append stamped more than ``max_timestamp_ahead_ms`` (default one hour,
Kafka's ``log.message.timestamp.after.max.ms``) ahead of the clock raises
:class:`InvalidArgument`, or one far-future record would hold time retention back.

Recovery: the last process to close a log marks it clean. An unclean log is recovered by
the next process to open it, alone (under an exclusive lock). What was acknowledged is
known from the shared state: if the machine has not rebooted since it was written, its
committed end is exact; after a reboot only the durable watermark (``recovery_point``,
what fsync covered) is. Every batch below that end must be there and validate: a
missing segment file, a truncated file or a batch that fails its checks raises
:class:`CorruptRecord` naming the file and position, and nothing is cut. Only bytes past
it — a torn tail, never acknowledged — are dropped. Without a state file nothing is
known, so every segment but the last must reach the next one (else CorruptRecord); the
last one's torn tail is dropped. Recovery never unlinks a segment file that holds data:
segments past the recovered end are moved into ``damaged/``; only an empty leftover of a
roll that failed or died is removed. Indexes are rebuilt for every scanned segment.

Every open also checks that segment files cover ``[start, end)`` (the first segment is
there and each sealed segment reaches the next): a gap is CorruptRecord, never a moved
start or a skipped range. :mod:`fastq.log.verify` reports such damage (``fastq verify``) and
``repair_log`` (``fastq repair``) makes the log openable again, keeping every intact
batch and moving the rest aside.
"""
from __future__ import annotations

import json
import os
import threading
import time
import weakref
from typing import Iterator

from .._core import _storage
from .._core._codec import os_errors
from .._core._storage import LogCore, LogReader, Pacer, Record, Segment, segment_name
from ..errors import (
    Closed,
    CorruptRecord,
    FsyncFailed,
    InvalidArgument,
    LogNotFound,
    ReadOnly,
    Timeout,
    UsedAfterFork,
)
from . import producer_state
from ._process import PRETOUCHER, fork_registry
from ._recovery import RecoveryMixin
from .columns import ColumnsMixin
from ._retention import RetentionMixin
from .config import (DURABILITY_MODES, STATE_FILE, LOCK_FILE, CONFIG_FILE, CONFIG_VERSION, COMPACTED_MARK,
                     DEFAULT_SEGMENT_BYTES, DEFAULT_MAX_RECORD_BYTES, DEFAULT_INDEX_INTERVAL, MIN_SEGMENT_BYTES,
                     MAX_SEGMENT_BYTES, MAX_RECORD_BYTES_CAP, DEFAULT_MAX_TIMESTAMP_AHEAD_MS, check_int,
                     write_json_atomic, boot_id, SEGMENT_RE, FLAG_CLEAN, FLAG_CHECKED)

__all__ = ["Log", "open_log", "Record", "LogReader", "Pacer", "DURABILITY_MODES"]

_UNSET = object()                     # an argument not given (None means "off" for some)



_OPEN_LOGS: "weakref.WeakSet[Log]" = fork_registry()    # this process's open logs


class Log(RecoveryMixin, RetentionMixin, ColumnsMixin, LogCore):
    """A durable append-only log in one directory, shared by any number of processes.

    Offsets are dense integers from 0. ``append`` / ``append_many`` / ``append_batch``
    return the (first) offset; ``read(offset)`` iterates :class:`Record` objects whose
    key and value are zero-copy memoryviews; ``wait(offset)`` blocks until a record at
    ``offset`` exists.

    Process-safety: every method may be used from several processes at once on the
    same directory; appends are serialized by a lock in shared memory (no system call
    when uncontended) that survives the kill of its holder (stolen after the holder's
    pid is gone, checked every millisecond). Thread-safety: a Log may be shared by
    threads.

    ``readonly=True`` reads a log without writing anything (archives, read-only media,
    another user's files): files are opened and mapped read-only, the shared state is
    read into a private copy, and no lock file, config or recovery is written. The log
    is seen as it was when opened; appends, rolls, retention and truncation raise
    :class:`fastq.ReadOnly`. A log that was not closed cleanly before a reboot needs
    recovery first (``ReadOnly`` says so); a missing log is :class:`fastq.LogNotFound`.
    Without ``readonly=True``, a log on a read-only filesystem raises ``ReadOnly``.

    Fork: a Log belongs to the process that opened it. In a forked child the inherited
    Log is released at the fork (an ``os.register_at_fork`` hook: no check on the append
    path): the child's copies of the mappings and descriptors are dropped without
    touching the flocks, the clean flag or the writer lock, which the parent still
    holds; ``close()`` in the child returns at once (it never marks the log clean, never
    waits for the parent's threads) and every other call raises
    :class:`fastq.errors.UsedAfterFork`. Open a new Log in the child.
    """

    def __init__(self, path, *, durability: str | None = None, segment_bytes: int | None = None,
                 segment_ms: int | None = None, max_record_bytes: int | None = None,
                 index_interval: int | None = None, retention_ms: int | None = None,
                 retention_bytes: int | None = None, compact: bool | None = None, create: bool = True,
                 max_timestamp_ahead_ms=_UNSET, readonly: bool = False):
        self.path = os.fspath(path)
        if not isinstance(self.path, str):
            raise InvalidArgument(f"path must be a str or os.PathLike[str], got {type(self.path).__name__}")
        self._closed = True
        self._failure = None
        self._lock_fd = -1
        self._gc = threading.Condition()
        # Guards this process's view of the segments (_segments, _active, _gen): a
        # reader's _refresh (no writer lock) must not interleave with a roll,
        # retention or truncation that commits a new generation and then updates
        # the view, or it can leave a view older than the shared state.
        self._seg_lock = threading.RLock()
        self._sealed_next: dict[int, int] = {}   # sealed segment base -> offset its data ends at
        self._synced = 0
        self._syncing = False
        if not os.path.isdir(self.path):
            if not os.path.exists(self.path):
                if not create or readonly:
                    raise LogNotFound(f"no log at {self.path}")
                with os_errors("create log directory", self.path):
                    os.makedirs(self.path, exist_ok=True)
            elif not os.path.isdir(self.path):     # not one another process made just now
                raise InvalidArgument(f"{self.path} exists and is not a directory")
        args = dict(durability=durability, segment_bytes=segment_bytes, segment_ms=segment_ms,
                    max_record_bytes=max_record_bytes, index_interval=index_interval,
                    retention_ms=retention_ms, retention_bytes=retention_bytes, compact=compact,
                    max_timestamp_ahead_ms=max_timestamp_ahead_ms)
        try:
            with os_errors("open log", self.path):
                if readonly:
                    self._open_readonly(args)
                    return
                with os_errors("open lock file", os.path.join(self.path, LOCK_FILE)):
                    self._lock_fd = os.open(os.path.join(self.path, LOCK_FILE),
                                            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                _storage.flock(self._lock_fd, True, True)
                try:
                    self._open_locked(args)
                finally:
                    _storage.funlock(self._lock_fd)
        except BaseException:
            self._abort_open()
            raise

    # -- opening ------------------------------------------------------------------------

    def _abort_open(self):
        """Let go of everything a failed open or a read-only close holds: segments,
        the state mapping, the lock file's descriptor (a read-only log holds no lock)."""
        self._closed = True
        with self._seg_lock:                # not under a reader's _refresh
            for seg in self._segments:
                try:
                    seg.close()
                except BufferError:         # a view outlives us: its mapping goes with it
                    pass
            self._segments = []
            self._active = None
        self._release_state()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _load_config(self, args: dict, readonly: bool = False) -> dict:
        path = os.path.join(self.path, CONFIG_FILE)
        try:
            with open(path, "rb") as f:
                cfg = json.loads(f.read())
            if not isinstance(cfg, dict) or cfg.get("version") != CONFIG_VERSION:
                raise ValueError("unknown version")
        except FileNotFoundError:
            if readonly:
                raise LogNotFound(f"no log at {self.path}: {CONFIG_FILE} is missing") from None
            cfg = None
        except ValueError as e:
            raise CorruptRecord(f"{path} is not a fastq log config: {e}", path) from None
        except OSError as e:            # e.g. a directory in its place: name the file
            with os_errors("read log config", path):
                raise e
        defaults = {"durability": "os", "segment_bytes": DEFAULT_SEGMENT_BYTES, "segment_ms": 0,
                    "max_record_bytes": DEFAULT_MAX_RECORD_BYTES,
                    "index_interval": DEFAULT_INDEX_INTERVAL, "retention_ms": None,
                    "retention_bytes": None, "compact": False,
                    "max_timestamp_ahead_ms": DEFAULT_MAX_TIMESTAMP_AHEAD_MS}
        # max_timestamp_ahead_ms=None turns the check off: only _UNSET means "not given"
        given = {k: v for k, v in args.items()
                 if v is not _UNSET and (v is not None or k == "max_timestamp_ahead_ms")}
        if cfg is None:
            cfg = {"version": CONFIG_VERSION}
            for k, v in defaults.items():
                cfg[k] = given.get(k, v)
            self._validate_config(cfg)
            write_json_atomic(path, cfg)
        else:
            for k, v in defaults.items():
                cfg.setdefault(k, v)
            # Format settings are fixed at creation (every process must map segments
            # the same way); durability and retention may differ per open.
            for k in ("durability", "retention_ms", "retention_bytes", "segment_ms", "compact",
                      "max_timestamp_ahead_ms"):
                if k in given:
                    cfg[k] = given[k]
            self._validate_config(cfg)
        return cfg

    @staticmethod
    def _validate_config(cfg: dict) -> None:
        if cfg["durability"] not in DURABILITY_MODES:
            raise InvalidArgument(f"durability={cfg['durability']!r}: expected one of {sorted(DURABILITY_MODES)}")
        check_int("segment_bytes", cfg["segment_bytes"], MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)
        check_int("max_record_bytes", cfg["max_record_bytes"], 128, MAX_RECORD_BYTES_CAP)
        check_int("index_interval", cfg["index_interval"], 64, 1 << 30)
        check_int("segment_ms", cfg["segment_ms"], 0, 1 << 62)
        for k in ("retention_ms", "retention_bytes", "max_timestamp_ahead_ms"):
            if cfg[k] is not None:
                check_int(k, cfg[k], 0, 1 << 62)
        if not isinstance(cfg["compact"], bool):
            raise InvalidArgument(f"compact must be a bool, got {cfg['compact']!r}")

    def _open_readonly(self, args: dict) -> None:
        """readonly=True: map nothing writable and write nothing — no lock file, log.json
        or state is created, the state is a private copy (``LogCore._map_state_copy``),
        no recovery runs. For archives and read-only media: the log is read as it was
        when opened (appends made afterwards by other processes are not seen)."""
        try:
            self._lock_fd = os.open(os.path.join(self.path, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._lock_fd = -1
        if self._lock_fd >= 0:          # not while another process opens or recovers it
            _storage.flock(self._lock_fd, True, True)
        try:
            self._apply_config(self._load_config(args, readonly=True))
            self._check_directory()
            state = os.path.join(self.path, STATE_FILE)
            if not os.path.exists(state):
                raise LogNotFound(f"no log at {self.path}: {STATE_FILE} is missing")
            self._map_state_copy(state)
            if not self._state_valid():
                raise CorruptRecord(f"{state} is not a fastq state file", state, 0)
            self._refuse_damaged_state(state)
            if not (self._flags & FLAG_CLEAN or self._boot_id == boot_id()):
                raise ReadOnly(f"log {self.path} was not closed cleanly before a reboot: its tail "
                               "needs recovery, which writes; open it once without readonly=True")
            if not self._consistent():      # reading past a file's end would be a SIGBUS
                raise ReadOnly(f"log {self.path}: its active segment does not match the state "
                               "(shorter than the committed end, or an index is missing) and "
                               "needs recovery, which writes; open it once without readonly=True")
            self._closed = False
            self._gen = -1 & 0xFFFFFFFFFFFFFFFF
            self._refresh()
            self._check_complete()
            self._synced = self.recovery_point
            self._pretouch = None
        finally:
            if self._lock_fd >= 0:
                _storage.funlock(self._lock_fd)

    def _apply_config(self, cfg: dict) -> None:
        self.config = cfg
        self._durability = DURABILITY_MODES[cfg["durability"]]
        self.segment_bytes = cfg["segment_bytes"]
        self.segment_ms = cfg["segment_ms"]
        self.max_record_bytes = cfg["max_record_bytes"]
        self.index_interval = cfg["index_interval"]
        self.retention_ms = cfg["retention_ms"]
        self.retention_bytes = cfg["retention_bytes"]
        self.max_timestamp_ahead_ms = cfg["max_timestamp_ahead_ms"]
        # a log that was ever compacted keeps gaps in its offsets
        self.allow_gaps = bool(cfg["compact"]) or os.path.exists(os.path.join(self.path, COMPACTED_MARK))
        self._map_size = self.segment_bytes + self.max_record_bytes
        self._index_cap = self._map_size // self.index_interval + 2

    def _open_locked(self, args: dict) -> None:
        self._apply_config(self._load_config(args))
        self._check_directory()
        size = self._map_state(os.path.join(self.path, STATE_FILE))
        first = _storage.flock(self.state_fd, True, False)
        self._exclusive = first          # alone: recovery may write the shared state
        boot = boot_id()
        if size == 0 or not self._state_valid():
            if size != 0 and any(self._state_raw()):    # all zero: created, never written
                raise CorruptRecord(f"{os.path.join(self.path, STATE_FILE)} is not a fastq state file",
                                    os.path.join(self.path, STATE_FILE), 0)
            # A new log, or a state file lost before it was written: rebuild from the
            # segments themselves (the .log files are the source of truth).
            self._state_init(int(time.time() * 1000))
            try:
                self._recover(trust_state=False, have_state=False)
            except BaseException:
                # leave no state behind: on the next open it would pass for one that
                # was written, and the segments would be judged by it
                os.unlink(os.path.join(self.path, STATE_FILE))
                raise
        elif first:
            self._refuse_damaged_state(os.path.join(self.path, STATE_FILE))
            if not (self._flags & FLAG_CLEAN and self._boot_id == boot and self._consistent()):
                self._recover(trust_state=self._boot_id == boot, have_state=True)
        if first:
            # a snapshot past the end describes batches the log no longer has (a tail lost
            # to a power failure under "os"): once the log grew past it again it would
            # pass for this history's
            producer_state.drop_after(self.path, self.snapshot()["next_offset"])
            self._flags = self._flags & ~(FLAG_CLEAN | FLAG_CHECKED)
            self._boot_id = boot
            self._opens = self._opens + 1
            _storage.msync_state(self)
            self._exclusive = False
            _storage.flock(self.state_fd, False, True)   # EX -> SH: we stay a live user
        else:
            _storage.flock(self.state_fd, False, True)
        self._closed = False
        self._gen = -1 & 0xFFFFFFFFFFFFFFFF
        self._refresh()
        self._check_complete()
        self._synced = self.recovery_point
        _OPEN_LOGS.add(self)
        self._pretouch = None if PRETOUCHER is None else PRETOUCHER.request

    def _refuse_damaged_state(self, state: str) -> None:
        """A clean state whose checksum does not match was damaged while the log was
        closed: trusting it would misjudge intact segments (a flipped bit in its end
        offset). Say so, naming the state file; the segments rebuild it."""
        if self._clean_state_damaged():
            raise CorruptRecord(f"{state}: the log was closed cleanly, but the state's checksum no "
                                "longer matches its bytes: the file was damaged since. The segments "
                                "are the source of truth: move this file aside and open the log "
                                "again to rebuild the state from them", state, 0)

    def _check_directory(self):
        for name in os.listdir(self.path):
            if name.endswith((".log", ".index", ".timeindex")) and not SEGMENT_RE.fullmatch(name):
                raise CorruptRecord(f"unexpected file {name!r} in log directory {self.path}: "
                                    f"segment files are named %020d.log/.index/.timeindex",
                                    os.path.join(self.path, name))

    def _segment_bases(self, any_file: bool = False) -> list[int]:
        """Bases of the segments in the directory: those with a ``.log`` file, or with
        ``any_file`` also an ``.index`` / ``.timeindex`` left without one."""
        bases = set()
        for name in os.listdir(self.path):
            m = SEGMENT_RE.fullmatch(name)
            if m and (any_file or m.group(2) == "log"):
                bases.add(int(m.group(1)))
        return sorted(bases)

    def _open_segment(self, base: int, create: bool = False) -> Segment:
        # Allocated as written (64 KiB, doubling up to segment_bytes/16 per step, never
        # ahead past segment_bytes), indexes sized to match: see Segment and
        # docs/ARCHITECTURE.md "What a topic costs".
        return Segment(self.path, base, self._map_size, self._index_cap, create,
                       max(1 << 20, self.segment_bytes // 16), self.index_interval, self.segment_bytes,
                       readonly=self._readonly)

    def _repair_locked(self) -> None:
        """We stole the writer lock from a process that died holding it. Besides the
        uncommitted bytes LogCore drops, a roller that died between creating the next
        segment and committing the roll left that segment's files past the active one.
        Remove them: once we append to the active segment and roll later, such a file
        would sit inside the log as an empty segment and hide the offsets appended
        meanwhile (reads skipped them; recovery cut the log at it)."""
        LogCore._repair_locked(self)
        active = self.snapshot()["active_base"]
        for b in self._segment_bases():
            if b > active:
                self._unlink_segment_files(b)

    def _unlink_segment_files(self, base: int) -> None:
        name = os.path.join(self.path, segment_name(base))
        for ext in (".log", ".index", ".timeindex"):
            with os_errors("delete segment file", name + ext):
                try:
                    os.unlink(name + ext)
                except FileNotFoundError:
                    pass

    # -- segment list -------------------------------------------------------------------

    def _refresh(self) -> None:
        """Bring the segment list in line with the directory and the shared state (after
        this or another process rolled, deleted, truncated or compacted)."""
        with self._seg_lock:
            if self._closed:                # closed while this thread waited for the lock
                raise Closed(f"log {self.path} is closed")
            if not self.allow_gaps and os.path.exists(os.path.join(self.path, COMPACTED_MARK)):
                self.allow_gaps = True
            s = self.snapshot()
            start = self.start_offset
            bases = [b for b in self._segment_bases()
                     if start <= b <= s["active_base"] or b == s["active_base"]]
            if s["active_base"] not in bases:
                raise CorruptRecord(f"active segment {segment_name(s['active_base'])}.log is missing "
                                    f"from {self.path}", self.path)
            old = {seg.base_offset: seg for seg in self._segments}
            segs = []
            for b in bases:
                seg = old.pop(b, None)
                if seg is not None and seg.base_offset != s["active_base"] and self.allow_gaps:
                    # compaction swaps a sealed segment's file: reopen to see the new one
                    try:
                        if os.stat(seg.path).st_ino != seg.inode:
                            seg.deleted = True
                            seg = None
                    except FileNotFoundError:
                        pass
                if seg is None:
                    seg = self._open_segment(b)
                segs.append(seg)
            for seg in old.values():
                seg.deleted = True       # mapping lives on for readers that still hold it
                self._sealed_next.pop(seg.base_offset, None)
            for i, seg in enumerate(segs):
                if seg.base_offset == s["active_base"]:
                    seg.sealed_end = -1
                    continue
                if seg.sealed_end < 0:
                    self._seal_info(seg, segs[i + 1].base_offset)
                    seg.release_fd()         # sealed: the mapping is enough
            self._segments = segs
            self._active = segs[-1]
            self._gen = s["generation"]
            self._active_created_ms = self._first_timestamp(self._active)

    def _seal_info(self, seg: Segment, next_base: int) -> None:
        """Find a sealed segment's data end and max timestamp from its indexes."""
        size = seg.refresh_size()
        n, t = seg.valid_index_prefix(size)
        start, expected = 0, seg.base_offset
        if n > 0:
            rel, pos = _storage.index_entry(seg, n - 1)
            start, expected = pos, seg.base_offset + rel
        r = seg.scan(start, size, expected, next_base, False, False, self.index_interval,
                     allow_gaps=self.allow_gaps)
        seg.sealed_end = r["end_pos"]
        self._sealed_next[seg.base_offset] = r["next_offset"]
        seg.sealed_index_count = n
        seg.sealed_timeindex_count = t
        last = seg.last_timeindex(t)
        seg.sealed_max_timestamp = max(r["max_timestamp"], last[0] if last else -1)

    @staticmethod
    def _first_timestamp(seg: Segment) -> int:
        now = int(time.time() * 1000)
        head = seg.read_bytes(0, 35)
        if len(head) == 35 and any(head[:12]):
            # never later than now: a far-future first record must not stop segment_ms
            return min(int.from_bytes(head[27:35], "big", signed=True), now)
        return now

    def _roll_locked(self) -> None:
        """Seal the active segment and start a new one at the log end (writer lock held).
        Its fsyncs (the old segment, the directory) fail the log if they fail (_fsync)."""
        self._fsync(self._seal_and_roll_locked)

    def _seal_and_roll_locked(self) -> None:
        """_roll_locked without the failure rule."""
        with self._seg_lock:
            s = self.snapshot()
            old = self._active
            if self._durability:
                old.sync()
            # Files between the active segment and the new one are leftovers of rolls
            # that failed (a full disk) or died before committing: inside the log they
            # would hide the offsets appended to the active segment since.
            for b in self._segment_bases():
                if s["active_base"] < b < s["next_offset"]:
                    self._drop_unacked_segment(b, "left by a roll that never committed")
            try:
                seg = self._open_segment(s["next_offset"], create=True)
            except BaseException:
                # e.g. DiskFull preallocating it: leave nothing behind (the active
                # segment takes smaller appends still, and the next roll tries again)
                self._drop_unacked_segment(s["next_offset"], "left by a roll that failed")
                raise
            if any(seg.read_bytes(0, 12)):
                seg.zero(0, seg.alloc_size)      # left by a roller that died before committing
            if self._durability:
                _storage.fsync_dir(self.path)
            old.sealed_end = s["end_pos"]
            old.sealed_index_count = s["index_count"]
            old.sealed_timeindex_count = s["timeindex_count"]
            old.sealed_max_timestamp = s["max_timestamp"]
            old.release_fd()                     # sealed: the mapping is enough
            gen = s["generation"] + 1
            self._commit(s["next_offset"], 0, seg.base_offset, -1, 0, 0, 0, 0, gen)
            if self._durability:
                self._raise_recovery_point(s["next_offset"])
            self._segments.append(seg)
            self._active = seg
            self._gen = gen
            self._active_created_ms = int(time.time() * 1000)
            self._snapshot_producers_locked(s["next_offset"])
            self._enforce_retention_locked()

    # -- idempotent producers -----------------------------------------------------------

    def _load_producer_state(self) -> _storage.ProducerState:
        """Writer lock held (called from the idempotent append path): a new producer
        state from the newest usable snapshot, else empty at the log start; the caller
        reads the batches after it (see fastq.log.producer_state)."""
        return producer_state.load(self.path, self.end_offset, self.start_offset)

    def _snapshot_producers_locked(self, offset: int) -> None:
        """At a roll (writer lock held, the log ends at ``offset``): snapshot the producer
        state, if this process has one. Best effort: a failure costs a longer rebuild."""
        state = _storage._producer_state_locked(self)
        if state is not None and state.scanned_to == offset:
            producer_state.write(self.path, state, offset, sync=bool(self._durability))

    def producer_state(self) -> _storage.ProducerState:
        """The idempotent producers' state of this log, brought up to its end (a copy's
        worth of diagnostics: ``get(producer_id)`` gives a PEntry)."""
        self._lock_py()
        try:
            _storage._producer_entry_locked(self, -1)      # builds it, brings it up to date
            return self._pstate
        finally:
            self._unlock_py()

    def roll(self) -> None:
        """Seal the active segment now (if it holds any data) and start a new one."""
        self._lock_py()
        try:
            if self.snapshot()["generation"] != self._gen:
                self._refresh()
            if self.snapshot()["end_pos"] > 0:
                self._roll_locked()
        finally:
            self._unlock_py()

    # -- durability ---------------------------------------------------------------------

    def _fsync(self, sync, *args) -> None:
        """Run one fsync (``seg.sync``, ``fsync_dir``). A failure fails the log for good
        (fsyncgate: the kernel may have dropped the dirty pages, so a retry could
        succeed over lost data): every later call raises FsyncFailed until reopened."""
        try:
            sync(*args)
        except FsyncFailed as e:
            self._failure = str(e)
            self._closed = True
            raise

    def _group_sync(self, offset: int) -> None:
        """Return once an fsync covering ``offset`` has completed. The first caller to
        arrive becomes the leader and fsyncs everything committed so far; callers that
        arrive meanwhile wait and share the next fsync (group commit)."""
        with self._gc:
            while self._synced < offset:
                if self._failure is not None:     # the leader's fsync failed: so did ours
                    self._check_open_py()
                if self._closing or self._closed:
                    raise Closed(f"{self.path} was closed before an fsync covered offset {offset}: the "
                                 "record was appended, and is durable if that close was the last one "
                                 "(which fsyncs)")
                if self.recovery_point >= offset:
                    break
                if self._syncing:
                    self._gc.wait()
                    continue
                self._syncing = True
                target = self.end_offset
                seg = self._active
                self._gc.release()
                try:
                    seg.sync()
                finally:
                    self._gc.acquire()
                    self._syncing = False
                    self._gc.notify_all()
                self._synced = max(self._synced, target)
                self._raise_recovery_point(target)

    def flush(self) -> None:
        """fsync everything appended so far, whatever the durability mode (nothing to do
        for a log opened with readonly=True)."""
        self._check_open_py()
        if self._readonly:
            return
        target = self.end_offset
        for seg in list(self._segments):
            if seg.base_offset >= 0 and not seg.closed:
                self._fsync(seg.sync)
        self._raise_recovery_point(target)

    # -- reads by time ------------------------------------------------------------------

    def offset_for_timestamp(self, timestamp: int) -> int | None:
        """The first offset whose record timestamp is >= ``timestamp`` (Kafka's
        offsetsForTimes), or None if no record is that late."""
        if not isinstance(timestamp, int):
            raise InvalidArgument(f"timestamp must be an int of milliseconds, got {timestamp!r:.60}")
        # Stored timestamps lie in [-2**62, 2**62) (appends check it): clamping keeps the
        # answer and keeps the index search in 64 bits (no OverflowError for 2**64).
        timestamp = min(max(timestamp, -(1 << 62)), 1 << 62)
        self._check_open_py()
        if self.snapshot()["generation"] != self._gen:
            self._refresh()
        s = self.snapshot()
        segs = list(self._segments)
        for i, seg in enumerate(segs):
            active = seg.base_offset == s["active_base"]
            maxts = s["max_timestamp"] if active else seg.sealed_max_timestamp
            if maxts < timestamp:
                continue
            tcount = s["timeindex_count"] if active else seg.sealed_timeindex_count
            if active:
                # the state's count is only as good as the file: a .timeindex recreated
                # empty under an open log reads as entries (0, 0), which would skip
                # the segment's first record
                tcount = min(tcount, seg.valid_index_prefix(s["end_pos"])[1])
            rel = seg.timeindex_floor(tcount, timestamp - 1)
            start = max(seg.base_offset + rel + 1 if rel >= 0 else seg.base_offset, self.start_offset)
            # scan this segment only: its max timestamp says the answer is in it
            end = s["next_offset"] if active else segs[i + 1].base_offset
            if start >= end:
                continue
            for rec in self.read(start, end):
                if rec.timestamp >= timestamp:
                    return rec.offset
        return None

    def _base_after(self, base: int) -> int:
        """Base offset of the segment after the one at ``base``, or -1."""
        for seg in self._segments:
            if seg.base_offset > base:
                return seg.base_offset
        return -1

    def read_from_timestamp(self, timestamp: int, end: int | None = None) -> Iterator[Record]:
        """Iterate from the first record with timestamp >= ``timestamp``."""
        off = self.offset_for_timestamp(timestamp)
        if off is None:
            return iter(())
        return self.read(off, end)

    # -- introspection ------------------------------------------------------------------

    def _check_open_py(self):
        if self._closed:
            if self._forked:
                raise UsedAfterFork(f"log {self.path} was opened before fork(): it belongs to the "
                                    "parent; open a new one in the child")
            if self._failure is not None:
                raise FsyncFailed(f"log failed earlier and must be reopened: {self._failure}")
            raise Closed(f"log {self.path} is closed")

    @property
    def max_timestamp_ahead_ms(self) -> int | None:
        """Appends stamped more than this many ms ahead of the clock raise
        InvalidArgument (None: no limit). Default one hour, as Kafka's
        ``log.message.timestamp.after.max.ms``: time retention judges a segment by its
        newest timestamp, so a far-future one would keep it. Checked per record against
        a cached bound (the clock is read only when a timestamp passes it)."""
        return None if self._ts_ahead_ms < 0 else self._ts_ahead_ms

    @max_timestamp_ahead_ms.setter
    def max_timestamp_ahead_ms(self, value: int | None) -> None:
        check_int("max_timestamp_ahead_ms", value, 0, 1 << 62, allow_none=True)
        self._set_ts_ahead(-1 if value is None else value)

    @property
    def durability(self) -> str:
        return {v: k for k, v in DURABILITY_MODES.items()}[self._durability]

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def readonly(self) -> bool:
        """Opened with ``readonly=True``: reads only, nothing written (see ``Log``)."""
        return self._readonly

    def segments(self) -> list[dict]:
        """One dict per segment: base_offset, path, bytes, sealed."""
        self._check_open_py()
        if self.snapshot()["generation"] != self._gen:
            self._refresh()
        s = self.snapshot()
        return [{"base_offset": seg.base_offset, "path": seg.path,
                 "bytes": s["end_pos"] if seg is self._active else seg.sealed_end,
                 "sealed": seg is not self._active} for seg in self._segments]

    def __len__(self) -> int:
        return self.end_offset - self.start_offset

    def __iter__(self) -> Iterator[Record]:
        return self.read(self.start_offset)

    def __enter__(self) -> "Log":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"<fastq.Log {self.path!r} closed>"
        return (f"<fastq.Log {self.path!r} offsets=[{self.start_offset}, {self.end_offset}) "
                f"durability={self.durability!r}>")

    # -- closing ------------------------------------------------------------------------

    def _abandon_after_fork(self) -> None:
        """In a forked child (see the class docstring): drop this process's copies.
        Segments go with their last reference (a record view the child still holds
        keeps its mapping); no lock is taken — another thread of the parent may have
        held it at the fork and does not exist here."""
        if self._forked:
            return
        self._seg_lock = threading.RLock()
        self._gc = threading.Condition()
        self._segments = []
        self._active = None
        self._notifier = None
        self._release_after_fork()
        if self._lock_fd >= 0:               # close only: the flock is the parent's
            os.close(self._lock_fd)
            self._lock_fd = -1

    def close(self) -> None:
        """Close the log. Idempotent. Refuses with BufferError while record views are
        alive. The last process to close fsyncs and marks the log clean. In a forked
        child, a Log inherited from the parent was released at the fork: close returns."""
        if self._forked or (self._closed and self.state_fd < 0):
            return
        for seg in self._segments:
            if seg.exports:
                raise BufferError(f"cannot close {self.path}: {seg.exports} record view(s) into "
                                  f"{seg.path} still alive; release them (or copy with bytes())")
        if self._readonly:                  # wrote nothing, holds no lock: just let go
            self._abort_open()
            return
        failed = self._failure is not None
        # Another thread of this process may be appending (or rolling, or applying
        # retention) with the writer lock held; tearing the mappings down under it
        # crashed the process. From here on, a thread that takes the lock gives it up
        # and raises Closed; wait for the one that holds it to finish.
        self._closing = True
        if not self._await_writer(10.0):
            self._closing = False
            raise Timeout(f"cannot close {self.path}: another thread of this process has held "
                          "its writer lock for 10 s")
        with self._gc:                      # and for a group-commit fsync in progress
            while self._syncing:
                self._gc.wait()
        try:
            _storage.flock(self._lock_fd, True, True)
        except BaseException:
            self._closing = False           # nothing was torn down: close may be retried
            raise
        try:
            if not failed and self.state_fd >= 0 and _storage.flock(self.state_fd, True, False):
                # last one out: take the writer lock (stealing it from a dead holder
                # repairs what that holder left), fsync, and mark clean
                self._closed = False
                self._lock_py(timeout=5.0, closer=True)
                try:
                    if self.snapshot()["generation"] != self._gen:
                        self._refresh()
                    self.flush()
                    self._mark_clean()           # the flag and the state's checksum
                    _storage.msync_state(self)
                finally:
                    self._unlock_py()
        finally:
            self._closed = True
            _OPEN_LOGS.discard(self)
            with self._seg_lock:            # not under a reader's _refresh
                for seg in self._segments:
                    seg.close()
                self._segments = []
                self._active = None
            self._release_state()
            _storage.funlock(self._lock_fd)
            os.close(self._lock_fd)
            self._lock_fd = -1


def open_log(path, **options) -> Log:
    """Open (creating if missing) the log in directory ``path``. See :class:`Log`."""
    return Log(path, **options)
