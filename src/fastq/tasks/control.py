"""A task queue's control state: the pause flag, the admin epoch, and the admin lock.

Three things every process that opens task queue ``<name>`` shares:

``<broker>/topics/<name>.ctl/`` — the **control topic**: compacted, one partition, key =
a UTF-8 name, value = msgspec JSON. Two keys:

- ``paused``: ``{"paused": bool, "ms": int}`` — the latest record is the flag
  (:meth:`TaskQueue.pause` / ``resume``). No record: not paused.
- ``op``: ``{"op": str, "ms": int, "at": int}`` — written by every admin operation that
  removes jobs or makes a job's queue message stale (remove, drain, clean, obliterate,
  promote, repair) *before* it reads or changes anything, to move the epoch on; ``at`` is the
  job-state topic's end offset just before, below which the operation writes nothing (a
  worker checking what the operations since its epoch did reads from there);
- ``done``: ``{"op": str, "ms": int}`` — written when that operation ends, however it
  ends. An ``op`` with no ``done`` after it is an operation under way (or killed midway:
  then until the next one is done).

The control topic's end offset is the **admin epoch**: it only grows (compaction keeps
offsets), so "the epoch did not move" means "no admin operation started". ``add`` stores
the epoch it saw in each job message (``ep``) — or -1 while an operation is under way, so
that no message published during one is ever admitted on a worker's fast path.

``<broker>/tasks/<name>/admin.lock`` — the **admin lock** (an flock): admin operations
hold it exclusively, from their ``op`` record (written before they read any job state)
to their ``done`` record; a worker admitting a message off its fast path holds it shared.
``add`` takes no lock: a job added while an operation runs carries ``ep`` -1, or an epoch
the operation moves on, so workers check it against its state after the operation.
The kernel releases an flock when its process dies, so a kill -9 never leaves it held.

How a worker admits a job (:meth:`fastq.tasks.admin.AdminMixin._begin`): a first delivery
published at the current epoch (``ep``) — nothing was removed or replaced since its add —
is recorded ``active`` at once, without the lock, and the epoch read again. Unmoved: any
admin operation begins after the record and reads the job as active (``remove`` refuses,
``drain``/``clean`` skip it). Moved: the worker waits for the operation (the lock, shared)
and reads the job's records since before its first epoch read; if the operation removed
the job, it does not run it (and removes it again if its ``active`` came after the
removal). Every other message — a redelivery, an older epoch, a retried or promoted
incarnation (``gen`` > 0) — is admitted under the lock, against the job's latest state:
gone, of another ``gen``, or finished, and it is acked unrun. A job's later records
(progress, the end) are written the same optimistic way.

Crash rules: the epoch record comes first, so an operation killed after it changed
nothing, or changed a prefix of what it meant to (each job's removal is one tombstone,
applied in batches); every intermediate state is one the rules above handle.

Thread-safety: a Control may be shared by threads (the shared lock takes one file
descriptor per concurrent holder, from a pool). Process-safety: as above.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from typing import TYPE_CHECKING, Iterator

import msgspec

from .._core import _storage
from .._core._codec import os_errors
from ..errors import CorruptRecord

if TYPE_CHECKING:
    from ..broker.broker import Broker

__all__ = ["Control", "CTL_SUFFIX", "LOCK_FILE"]

CTL_SUFFIX = ".ctl"
TASKS_DIR = "tasks"
LOCK_FILE = "admin.lock"
KEY_PAUSED = b"paused"
KEY_OP = b"op"
KEY_DONE = b"done"

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


class Control:
    """The pause flag, admin epoch and admin lock of task queue ``name`` (module docstring)."""

    def __init__(self, broker: "Broker", name: str):
        self.topic = broker.topic(name + CTL_SUFFIX, partitions=1, compact=True)
        self.log = self.topic.log(0)
        d = os.path.join(broker.path, TASKS_DIR, name)
        with os_errors("create the task queue directory", d):
            os.makedirs(d, exist_ok=True)
        self.lock_path = os.path.join(d, LOCK_FILE)
        self._mutex = threading.Lock()
        self._seen = 0                      # control records read up to here
        self._paused = False
        self._busy = False                  # the last op record read has no done record after it
        self._pool: list[int] = []          # unlocked fds for shared holders
        self._closed = False

    # -- the epoch and the flag ------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The admin epoch (the control topic's end offset): one atomic load."""
        return self.log.end_offset

    def _catch_up(self) -> None:
        lg = self.log
        if lg.end_offset <= self._seen:
            return
        with self._mutex:
            end = lg.end_offset
            pos = max(self._seen, lg.start_offset)
            if pos >= end:
                return
            for rec in lg.read(pos, end):
                key = None if rec.key is None else bytes(rec.key)
                if key == KEY_OP:
                    self._busy = True
                elif key == KEY_DONE:
                    self._busy = False
                if key == KEY_PAUSED and rec.value is not None:
                    try:
                        v = _dec.decode(rec.value)
                        self._paused = bool(v["paused"])
                    except (msgspec.DecodeError, KeyError, TypeError) as e:
                        raise CorruptRecord(f"control topic {self.topic.name!r}: record {rec.offset} "
                                            f"is not a pause record: {e}") from None
            self._seen = end

    def paused(self) -> bool:
        """Whether the task queue is paused (cheap when nothing changed)."""
        self._catch_up()
        return self._paused

    def set_paused(self, paused: bool) -> None:
        """Record the flag (the caller holds the admin lock exclusively)."""
        self.log.append(_enc.encode({"paused": paused, "ms": int(time.time() * 1000)}), KEY_PAUSED)

    def bump(self, op: str, at: int) -> int:
        """Move the epoch on before an admin operation reads or changes anything; ``at``:
        the job-state topic's end offset read just before (the operation writes nothing
        below it). Returns the new epoch."""
        self.log.append(_enc.encode({"op": op, "ms": int(time.time() * 1000), "at": at}), KEY_OP)
        return self.log.end_offset

    def ops_since(self, epoch: int) -> int | None:
        """The lowest job-state offset an admin operation begun at or after ``epoch`` may
        have written at (its ``at``), or None when none began (only pause records); 0 when
        compaction dropped some of the records since (then nothing is known)."""
        lg = self.log
        low = None
        start, end = max(epoch, lg.start_offset), max(epoch, lg.end_offset)
        n = 0
        for rec in lg.read(start, end):
            n += 1
            if rec.key is not None and bytes(rec.key) == KEY_OP and rec.value is not None:
                try:
                    at = int(_dec.decode(rec.value).get("at", 0))
                except (msgspec.DecodeError, AttributeError, TypeError, ValueError) as e:
                    raise CorruptRecord(f"control topic {self.topic.name!r}: record {rec.offset} "
                                        f"is not an op record: {e}") from None
                low = at if low is None else min(low, at)
        if n != end - epoch:                       # compacted (or below the start): assume the worst
            return 0
        return low

    def add_epoch(self) -> int:
        """The epoch an ``add`` stores in its messages: the current one, or -1 (never a
        worker's fast path) while an admin operation is under way — begun, not done — or
        was killed midway (until the next one is done)."""
        e = self.log.end_offset
        if e != self._seen:
            self._catch_up()
        return -1 if self._busy else e

    @contextlib.contextmanager
    def operation(self, op: str, at: int) -> Iterator[int]:
        """An admin operation: hold the lock exclusively, write its begin record (yields
        the new epoch), and its done record when the block ends, however it ends."""
        with self.exclusive():
            ep = self.bump(op, at)
            try:
                yield ep
            finally:
                self.log.append(_enc.encode({"op": op, "ms": int(time.time() * 1000)}), KEY_DONE)

    def wait_change(self, timeout: float) -> bool:
        """Block until a control record is appended past what was read, or ``timeout``."""
        return self.topic.wait_any({0: max(self._seen, self.log.end_offset)}, timeout)

    # -- the admin lock ----------------------------------------------------------------------

    def _open_fd(self) -> int:
        with os_errors("open the task queue admin lock", self.lock_path):
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def shared(self) -> "_Shared":
        """Hold the admin lock shared (a worker's admission off its fast path, retention):
        ``with ctl.shared(): ...``. Uncontended it costs two flock calls."""
        return _Shared(self)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the admin lock exclusively (an admin operation)."""
        fd = self._open_fd()
        try:
            _storage.flock(fd, True, True)
            held = _held_paths()
            held.add(self.lock_path)
            try:
                yield
            finally:
                held.discard(self.lock_path)
                _storage.funlock(fd)
        finally:
            os.close(fd)

    def held_exclusive(self) -> bool:
        """Whether this thread holds the admin lock exclusively (through any handle): a
        shared take would then wait for itself (flock locks belong to open files)."""
        return self.lock_path in _held_paths()

    def close(self) -> None:
        """Close the pooled descriptors (holders return theirs closed). Idempotent."""
        self._closed = True
        pool, self._pool = self._pool, []
        for fd in pool:
            os.close(fd)


_HELD = threading.local()


def _held_paths() -> set:
    paths = getattr(_HELD, "paths", None)
    if paths is None:
        paths = _HELD.paths = set()
    return paths


class _Shared:
    """One holding of the admin lock, shared. A pooled descriptor per holder (flock locks
    belong to the open file, so holders in one process must not share one); try without
    blocking first, holding the GIL, and block only with it released."""

    __slots__ = ("ctl", "fd")

    def __init__(self, ctl: Control):
        self.ctl = ctl
        self.fd = -1

    def __enter__(self) -> None:
        ctl = self.ctl
        try:
            fd = ctl._pool.pop()                 # list.pop/append are atomic under the GIL
        except IndexError:
            fd = ctl._open_fd()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:              # an admin operation holds it: wait, GIL released
                _storage.flock(fd, False, True)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def __exit__(self, *exc) -> None:
        fd, self.fd = self.fd, -1
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            if self.ctl._closed:
                os.close(fd)
            else:
                self.ctl._pool.append(fd)
