"""Consumer-group membership and partition ownership across processes, with no
coordinator: files, flocks and one shared futex word (protocol in docs/ARCHITECTURE.md,
"Consumer groups").

Layout under ``<broker>/groups/<group>/``::

    notify                          view word (fastq._core._storage.Notifier): bumped on every
                                    join, leave, eviction and partition release
    members/<topic>/<member_id>     one file per live member consuming <topic>; the member
                                    holds an exclusive flock on it for its lifetime
    partitions/<topic>.<p>.lock     ownership: a member consumes p only while holding an
                                    exclusive flock on this file
    offsets/<topic>.offsets         committed offsets (fastq.broker.offsets)

A member file is MEMBER_SIZE = 64 bytes, little-endian::

    0   magic               8 bytes  b"FQMEMB\\x00\\x01"
    8   pid                 u32
    12  session_timeout_ms  u32
    16  heartbeat_ns        u64      CLOCK_MONOTONIC (system-wide) at the last heartbeat
    24  joined_ns           u64      wall clock at join
    32  reserved            32 bytes zero

Member ids are ``<join time ns, 16 hex>-<pid>-<8 hex random>``: sorting them sorts
members by join time, so with the range assignor a newcomer mostly takes partitions
from the end and the others keep theirs.

Process-safety: every process may run members of the same group. Thread-safety: a
GroupMember belongs to one Consumer and is used by one thread.
"""
from __future__ import annotations

import dataclasses
import os
import re
import secrets
import struct
import time

from .._core import _storage
from .._core._codec import os_errors
from ..errors import Closed, GroupActive
from .offsets import OffsetStore

__all__ = ["GroupMember", "MemberInfo", "range_assign", "list_members", "reset_offsets", "MEMBER_SIZE"]

MEMBER_MAGIC = b"FQMEMB\x00\x01"
MEMBER_SIZE = 64
_MEMBER = struct.Struct("<8sIIQQ32x")
_U64 = struct.Struct("<Q")
_HEARTBEAT_AT = 16
_ID_RE = re.compile(r"[0-9a-f]{16}-[0-9]+-[0-9a-f]{8}")   # fullmatch ("$" admits "\n")
_TMP_MAX_AGE_S = 60.0          # a joiner's temp file older than this, unlocked, is debris


def range_assign(members: list[str], partitions: int) -> dict[str, list[int]]:
    """Kafka's range assignor: sorted members get contiguous runs of partitions, the
    first ``partitions % len(members)`` one extra. Every member computes the same answer
    from the same list, so no coordinator is needed."""
    members = sorted(members)
    out: dict[str, list[int]] = {}
    if not members:
        return out
    q, r = divmod(partitions, len(members))
    start = 0
    for i, m in enumerate(members):
        n = q + (1 if i < r else 0)
        out[m] = list(range(start, start + n))
        start += n
    return out


def _open_rw(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


class GroupMember:
    """This process's membership of ``group`` as a consumer of ``topic``.

    ``refresh()`` heartbeats and, when the view word moved or a sweep is due, re-lists
    the members (removing dead and evicting stale ones); it returns True when the live
    member list changed. ``assigned()`` is this member's share under the range assignor.
    ``try_own(p)`` / ``release(p)`` take and drop partition ownership flocks.
    """

    def __init__(self, group_dir: str, topic: str, partitions: int, session_timeout_ms: int):
        self.group_dir = group_dir
        self.topic = topic
        self.partitions = partitions
        self.session_timeout_ms = session_timeout_ms
        self.members_dir = os.path.join(group_dir, "members", topic)
        self.partitions_dir = os.path.join(group_dir, "partitions")
        with os_errors("join group: create its directories", group_dir):
            os.makedirs(self.members_dir, exist_ok=True)
            os.makedirs(self.partitions_dir, exist_ok=True)
        self.heartbeat_interval_ns = max(session_timeout_ms * 1_000_000 // 5, 1_000_000)
        self.sweep_interval_ns = min(100_000_000, session_timeout_ms * 1_000_000 // 4)
        self.member_id = ""
        self.needs_rejoin = False
        self._fd = -1
        self._peer_fds: dict[str, int] = {}
        self._lock_fds: dict[int, int] = {}
        self._owned: set[int] = set()
        self._members: list[str] = []
        self._seen = 0
        self._next_heartbeat = 0
        self._next_sweep = 0
        self.notifier = _storage.Notifier(os.path.join(group_dir, "notify"))
        try:
            with os_errors("join group: write the member file", self.members_dir):
                self._join()
        except BaseException:
            self.notifier.close()
            raise

    # -- membership ---------------------------------------------------------------------

    def _join(self) -> None:
        """Create the member file under a temp name, lock it, fill it, then rename it into
        place: a sweeper never sees a listed member file that is not locked."""
        while True:
            mid = f"{time.time_ns():016x}-{os.getpid()}-{secrets.token_hex(4)}"
            tmp = os.path.join(self.members_dir, f".join-{mid}")
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _storage.flock(fd, True, True)
                now = time.monotonic_ns()
                os.pwrite(fd, _MEMBER.pack(MEMBER_MAGIC, os.getpid(), self.session_timeout_ms,
                                           now, time.time_ns()), 0)
                os.rename(tmp, os.path.join(self.members_dir, mid))
            except FileNotFoundError:          # a sweeper took our temp file for debris
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            break
        self.member_id = mid
        self._fd = fd
        self._next_heartbeat = now + self.heartbeat_interval_ns
        self.notifier.bump()
        self._seen = self.notifier.value
        self._sweep(now)

    def evicted(self) -> bool:
        """True when another member removed our file (we stopped heartbeating)."""
        return os.fstat(self._fd).st_nlink == 0

    def rejoin(self) -> None:
        """After an eviction: drop every partition and join again under a new id."""
        for p in list(self._owned):
            self.release(p)
        os.close(self._fd)
        self._fd = -1
        self.needs_rejoin = False
        with os_errors("rejoin group: write the member file", self.members_dir):
            self._join()

    def heartbeat(self, now: int) -> None:
        with os_errors("heartbeat", os.path.join(self.members_dir, self.member_id)):
            os.pwrite(self._fd, _U64.pack(now), _HEARTBEAT_AT)
        self._next_heartbeat = now + self.heartbeat_interval_ns

    def refresh(self, now: int | None = None) -> bool:
        """Heartbeat if due; re-list members if the view word moved (a join, leave or
        release) or a periodic sweep is due. Returns True if it re-listed: recompute the
        assignment and retry taking missing partitions. ``needs_rejoin`` is then set if
        this member was evicted."""
        if self._fd < 0:
            raise Closed(f"group member {self.member_id} has left")
        if now is None:
            now = time.monotonic_ns()
        if now >= self._next_heartbeat:
            self.heartbeat(now)
        seen = self.notifier.value
        if seen == self._seen and now < self._next_sweep:
            return False
        self._seen = seen
        if self.evicted():
            self.needs_rejoin = True           # the consumer revokes everything, then rejoin()
            return True
        self._sweep(now)
        return True

    def _sweep(self, now: int) -> None:
        """List the members; remove the dead (their flock is free: the kernel dropped it
        when they died) and evict the stale (no heartbeat for their session timeout)."""
        self._next_sweep = now + self.sweep_interval_ns
        removed = False
        live = []
        names = os.listdir(self.members_dir)
        for name in names:
            if name == self.member_id:
                live.append(name)
                continue
            if not _ID_RE.fullmatch(name):
                if name.startswith(".join-"):
                    self._clean_debris(os.path.join(self.members_dir, name))
                continue
            path = os.path.join(self.members_dir, name)
            fd = self._peer_fds.get(name)
            if fd is None:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                except OSError as e:          # EMFILE, EACCES, ...: not a vanished member
                    with os_errors("open a group member's file", path):
                        raise e
                self._peer_fds[name] = fd
            if _storage.flock(fd, True, False):
                self._remove_peer(name, path, fd)   # dead: its holder is gone
                removed = True
                continue
            if self._stale(fd, now) and self._stale(fd, time.monotonic_ns()):
                self._remove_peer(name, path, fd)   # alive but silent: evict
                removed = True
                continue
            live.append(name)
        for name in set(self._peer_fds) - set(live):
            os.close(self._peer_fds.pop(name))
        self._members = sorted(live)
        if removed:
            self.notifier.bump()
            self._seen = self.notifier.value

    @staticmethod
    def _stale(fd: int, now: int) -> bool:
        try:
            raw = os.pread(fd, MEMBER_SIZE, 0)
        except OSError:
            return False
        if len(raw) != MEMBER_SIZE:
            return False
        magic, _pid, timeout_ms, hb, _joined = _MEMBER.unpack(raw)
        if magic != MEMBER_MAGIC or timeout_ms == 0:
            return False                       # unreadable: trust the flock alone
        return now - hb > timeout_ms * 1_000_000

    def _remove_peer(self, name: str, path: str, fd: int) -> None:
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(self._peer_fds.pop(name))

    @staticmethod
    def _clean_debris(path: str) -> None:
        try:
            if time.time() - os.stat(path).st_mtime < _TMP_MAX_AGE_S:
                return
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            if _storage.flock(fd, True, False):
                os.unlink(path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def members(self) -> list[str]:
        """The live members as of the last sweep, sorted (this one included)."""
        return list(self._members)

    def assigned(self) -> list[int]:
        """This member's partitions under the range assignor over the current view."""
        return range_assign(self._members, self.partitions).get(self.member_id, [])

    # -- ownership ----------------------------------------------------------------------

    def lock_path(self, p: int) -> str:
        return os.path.join(self.partitions_dir, f"{self.topic}.{p}.lock")

    def try_own(self, p: int) -> bool:
        """Take partition p's ownership flock without waiting; False if another member
        (or a dead one's not yet released lock) holds it."""
        if p in self._owned:
            return True
        fd = self._lock_fds.get(p)
        if fd is None:
            with os_errors("open partition ownership lock", self.lock_path(p)):
                fd = self._lock_fds[p] = _open_rw(self.lock_path(p))
        if _storage.flock(fd, True, False):
            self._owned.add(p)
            return True
        return False

    def release(self, p: int) -> None:
        """Drop ownership of p (commit first!) and wake members waiting for it."""
        if p in self._owned:
            self._owned.discard(p)
            _storage.funlock(self._lock_fds[p])
            self.notifier.bump()

    def owned(self) -> set[int]:
        return set(self._owned)

    def wait(self, timeout: float) -> None:
        """Sleep until the view word moves (join, leave, release) or ``timeout`` s pass."""
        self.notifier.wait(self._seen, timeout, 0.0)

    # -- lifetime -----------------------------------------------------------------------

    def leave(self) -> None:
        """Release every partition, remove the member file, tell the others. Idempotent."""
        if self._fd < 0:
            return
        for p in list(self._owned):
            self.release(p)
        try:
            path = os.path.join(self.members_dir, self.member_id)
            if os.stat(path).st_ino == os.fstat(self._fd).st_ino:
                os.unlink(path)
        except FileNotFoundError:
            pass
        self.notifier.bump()
        self.abandon()

    def abandon(self) -> None:
        """Close every descriptor without unlinking or bumping (used after fork in the
        child, whose descriptors share the parent's flocks: closing them keeps the
        parent's locks, which a forked child must not touch)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for fd in self._peer_fds.values():
            os.close(fd)
        self._peer_fds.clear()
        for fd in self._lock_fds.values():
            os.close(fd)
        self._lock_fds.clear()
        self._owned.clear()
        self.notifier.close()

    @property
    def closed(self) -> bool:
        return self._fd < 0


# -- inspecting and administering a group from outside (the fastq CLI) ---------------------

@dataclasses.dataclass
class MemberInfo:
    """One member file of a group, as :func:`list_members` read it. ``live``: its process
    holds the member flock and heartbeated within its session timeout."""
    member_id: str
    pid: int
    session_timeout_ms: int
    heartbeat_age_ms: float        # since the last heartbeat (CLOCK_MONOTONIC)
    joined_ms: int                 # wall clock, ms since the epoch
    live: bool


def _held(path: str) -> bool:
    """True when another process holds a flock on ``path``: probed with a shared,
    non-blocking lock on a read-only descriptor, dropped at once (nothing is written)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if _storage.flock(fd, False, False):
            _storage.funlock(fd)
            return False
        return True
    finally:
        os.close(fd)


def list_members(group_dir: str, topic: str) -> list[MemberInfo]:
    """The member files of ``group_dir`` for ``topic``, sorted by join time, live or not
    (a dead member's file stays until a live member sweeps it). Reads only: nothing is
    created or written, so it is safe on a group in use and on read-only media."""
    d = os.path.join(group_dir, "members", topic)
    with os_errors("list group members", d):
        try:
            names = sorted(n for n in os.listdir(d) if _ID_RE.fullmatch(n))
        except FileNotFoundError:
            return []
    now = time.monotonic_ns()
    out = []
    for name in names:
        path = os.path.join(d, name)
        try:
            with open(path, "rb") as f:
                raw = f.read(MEMBER_SIZE)
        except FileNotFoundError:              # left while we listed
            continue
        magic, pid, timeout_ms, hb, joined = (_MEMBER.unpack(raw) if len(raw) == MEMBER_SIZE
                                              else (b"", 0, 0, now, 0))
        fresh = magic != MEMBER_MAGIC or timeout_ms == 0 or now - hb <= timeout_ms * 1_000_000
        out.append(MemberInfo(name, pid, timeout_ms, max(now - hb, 0) / 1e6, joined // 1_000_000,
                              fresh and _held(path)))
    return out


def reset_offsets(group_dir: str, topic: str, offsets: dict[int, int], partitions: int, *,
                  sync: bool = False) -> None:
    """Commit ``offsets`` ({partition: offset}) for ``topic`` in the group at
    ``group_dir`` from outside the group, as ``kafka-consumer-groups --reset-offsets``
    does. Refused with :class:`GroupActive` while the group has a live member consuming
    ``topic``; each partition's ownership flock is held while its slot is written, so a
    member that joins meanwhile waits and then resumes from the new offset."""
    live = [m.member_id for m in list_members(group_dir, topic) if m.live]
    if live:
        raise GroupActive(f"group {os.path.basename(group_dir)!r} has {len(live)} live member(s) "
                          f"consuming {topic!r} ({', '.join(live)}): stop them before resetting offsets")

    part_dir = os.path.join(group_dir, "partitions")
    fds: list[int] = []
    store = None
    try:
        with os_errors("reset group offsets", group_dir):
            os.makedirs(part_dir, exist_ok=True)
            for p in sorted(offsets):
                fd = _open_rw(os.path.join(part_dir, f"{topic}.{p}.lock"))
                fds.append(fd)
                if not _storage.flock(fd, True, False):
                    raise GroupActive(f"partition {p} of {topic!r} is owned by a member of group "
                                      f"{os.path.basename(group_dir)!r}: stop it before resetting offsets")
            store = OffsetStore(os.path.join(group_dir, "offsets", f"{topic}.offsets"), partitions, sync=sync)
            for p, off in sorted(offsets.items()):
                store.get(p)
                store.put(p, off)
            if sync:
                store.sync()
    finally:
        if store is not None:
            store.close()
        for fd in fds:
            os.close(fd)
