"""Ephemeral pub/sub: one shared-memory ring per live subscriber, filled by publishers.

A :class:`fastq.Ring` has one read cursor (its readers share a work queue), so fan-out
is done by the publisher, as a Redis server copies a message into each subscriber's
output buffer: every subscriber owns a ring, registers it with its patterns, and a
publisher puts a copy of each message into the ring of every live subscriber whose
patterns match the channel. A subscriber therefore receives only what it asked for,
reads at its own pace, and misses what was published while it was not subscribed.

A ring that is full drops its *oldest* messages to make room (the publisher takes them
out; ``PubSub.dropped`` counts this process's drops): a slow subscriber loses messages
and never blocks a publisher. A message larger than a ring can ever hold is dropped for
that subscriber alone (counted too). At-most-once: a subscriber that dies loses its ring.

Files, in ``<broker>/pubsub/<namespace>/``::

    pubsub.json         {"version": 1, "durable": false}
    pubsub.lock         flock around registration changes
    pubsub.state        STATE_SIZE bytes, little-endian:
                          0  magic       8 bytes  b"FQPSST01"
                          8  generation  u64      bumped on every (un)registration
                         16  reserved    48 bytes zero
    subs/<id>.json      a live subscriber: {"pid": int, "ring": ring name,
                        "patterns": [[pattern, syntax], ...]}; written to a temp name and
                        renamed into place while the subscriber holds an exclusive flock
                        on it, which it keeps until it closes or dies.

A publisher reads ``generation`` (a load from a mapping) on every publish and re-reads
``subs/`` when it changed, and at least every second. A registration file whose flock
it can take belongs to a dead subscriber (killed): the publisher unlinks it and its
ring (opening the namespace does the same, so a ring is left behind only until the
namespace is next opened). Registration happens before ``subscribe`` returns, so a message published after
that (in any process) reaches the subscriber.

Recovery: ``pubsub.state`` of the wrong size or magic is rewritten (it holds no data,
only a change counter: rewriting it makes every publisher re-read ``subs/``); a
registration file that cannot be parsed is treated as a dead subscriber's.

Process-safety: any number of publisher and subscriber processes. Thread-safety: a
:class:`Fanout` serializes its refreshes with a lock; a subscriber belongs to one thread.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import threading
import time
import uuid

from .._core import _storage
from .._core._codec import os_errors
from .._core._ring import Ring, _frame_record, ring_path
from ..errors import Closed, FastqError, RecordTooLarge, RingEmpty, RingFull, StorageError
from .patterns import Matcher

__all__ = ["Fanout", "Registration", "STATE_MAGIC", "STATE_SIZE", "ephemeral_ring_name"]

STATE_MAGIC = b"FQPSST01"
STATE_SIZE = 64
_GEN_AT = 8
_GEN = struct.Struct("<Q")
RESCAN_S = 1.0                 # a publisher re-reads subs/ at least this often (dead subscribers)
SUBS_DIR = "subs"


def ephemeral_ring_name(broker_path: str, namespace: str, sub_id: str) -> str:
    h = hashlib.sha1(f"{os.path.abspath(broker_path)}\0{namespace}\0{sub_id}".encode()).hexdigest()[:32]
    return f"pubsub-{h}"


class _State:
    """pubsub.state (the generation counter) and pubsub.lock."""

    def __init__(self, d: str):
        self.lock_path = os.path.join(d, "pubsub.lock")
        path = os.path.join(d, "pubsub.state")
        with os_errors("open pub/sub lock", self.lock_path):
            self.lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            with self, os_errors("open pub/sub state", path):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    if os.fstat(fd).st_size != STATE_SIZE:
                        # absent, torn or foreign: it holds only a change counter, so a fresh
                        # one is safe (every reader re-reads subs/ when the value changes).
                        # Written whole, so a full disk fails here, not as a SIGBUS later.
                        os.ftruncate(fd, 0)
                        if os.pwrite(fd, STATE_MAGIC + bytes(STATE_SIZE - len(STATE_MAGIC)), 0) != STATE_SIZE:
                            os.ftruncate(fd, 0)
                            raise StorageError(f"{path}: short write")
                    self.map = mmap.mmap(fd, STATE_SIZE)
                finally:
                    os.close(fd)
                if self.map[:8] != STATE_MAGIC:
                    self.map[:STATE_SIZE] = STATE_MAGIC + bytes(STATE_SIZE - len(STATE_MAGIC))
        except BaseException:
            os.close(self.lock_fd)
            raise

    def __enter__(self):
        _storage.flock(self.lock_fd, True, True)
        return self

    def __exit__(self, *exc):
        _storage.funlock(self.lock_fd)

    @property
    def generation(self) -> int:
        return _GEN.unpack_from(self.map, _GEN_AT)[0]

    def bump(self) -> None:
        """Under the lock: tell every publisher to re-read subs/."""
        _GEN.pack_into(self.map, _GEN_AT, (self.generation + 1) & 0xFFFFFFFFFFFFFFFF)

    def close(self) -> None:
        self.map.close()
        os.close(self.lock_fd)


class Registration:
    """A live ephemeral subscriber's ring and registration file (subscriber side)."""

    def __init__(self, broker_path: str, namespace: str, d: str, state: _State, matcher: Matcher,
                 buffer_bytes: int):
        self.id = uuid.uuid4().hex
        self.dir = os.path.join(d, SUBS_DIR)
        self.path = os.path.join(self.dir, f"{self.id}.json")
        self.state = state
        name = ephemeral_ring_name(broker_path, namespace, self.id)
        self.ring = Ring(1 << (buffer_bytes - 1).bit_length(), name=name)
        self.fd = -1
        try:
            os.makedirs(self.dir, exist_ok=True)
            tmp = os.path.join(self.dir, f".{self.id}.tmp")
            body = json.dumps({"pid": os.getpid(), "ring": name,
                               "patterns": [list(p) for p in matcher.patterns]}).encode()
            with os_errors("register pub/sub subscriber", tmp):
                self.fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                _storage.flock(self.fd, True, True)
                try:
                    if os.write(self.fd, body) != len(body):
                        raise StorageError(f"{tmp}: short write")
                    with state:
                        os.rename(tmp, self.path)
                        state.bump()
                except BaseException:
                    try:
                        os.unlink(tmp)
                    except FileNotFoundError:
                        pass
                    raise
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        ring = self.ring
        if ring is not None and not ring.closed:
            ring.close()
            try:
                ring.unlink()
            except (OSError, StorageError):
                pass

    def close(self) -> None:
        """Unregister (publishers stop copying) and free the ring. Idempotent."""
        if self.fd < 0:
            return
        try:
            with self.state:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                self.state.bump()
        finally:
            self._release()

    def abandon(self) -> None:
        """In a forked child: drop the inherited descriptors and mapping, touching nothing
        the parent holds (the flock is shared with the parent's descriptor: closing the
        child's copy keeps it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.ring is not None and not self.ring.closed:
            try:
                self.ring.close()
            except BufferError:
                pass


class _Target:
    __slots__ = ("id", "matcher", "ring", "fd")

    def __init__(self, sub_id: str, matcher: Matcher, ring: Ring, fd: int):
        self.id, self.matcher, self.ring, self.fd = sub_id, matcher, ring, fd

    def close(self) -> None:
        self.ring.close()
        os.close(self.fd)


class Fanout:
    """The publisher side: the live subscribers' rings, routed per channel.

    ``routes(channel)`` is the rings to copy a message of ``channel`` into (cached per
    channel until the registrations change); ``put(rings, frames)`` copies, dropping
    the oldest messages of a full ring."""

    def __init__(self, d: str, state: _State):
        self.dir = os.path.join(d, SUBS_DIR)
        self.state = state
        self.dropped = 0
        self._lock = threading.Lock()
        self._targets: dict[str, _Target] = {}
        self._routes: dict[str, list[Ring]] = {}
        self._gen = -1
        self._next_scan = 0.0

    def routes(self, channel: str) -> list[Ring]:
        if self.state.generation != self._gen or time.monotonic() >= self._next_scan:
            self._refresh()
        r = self._routes.get(channel)
        if r is None:
            r = [t.ring for t in self._targets.values() if t.matcher(channel)]
            if len(self._routes) >= 65536:
                self._routes.clear()
            self._routes[channel] = r
        return r

    def _refresh(self) -> None:
        with self._lock:
            gen = self.state.generation
            self._next_scan = time.monotonic() + RESCAN_S
            try:
                names = [n for n in os.listdir(self.dir) if n.endswith(".json")]
            except FileNotFoundError:
                names = []
            live = {}
            old = self._targets
            for n in names:
                sid = n[:-5]
                path = os.path.join(self.dir, n)
                t = old.pop(sid, None)
                if t is not None:
                    if _storage.flock(t.fd, False, False):   # its owner died: reap it
                        self._reap(path, t.fd)
                        t.close()
                        continue
                else:
                    t = self._attach(path, sid)
                if t is not None:
                    live[sid] = t
            for t in old.values():                         # unregistered
                t.close()
            self._targets = live
            self._routes = {}
            self._gen = gen

    def _attach(self, path: str, sid: str) -> _Target | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if _storage.flock(fd, False, False):      # nobody holds it: a dead subscriber
                self._reap(path, fd)
            else:
                try:
                    reg = json.loads(os.pread(fd, 1 << 20, 0))
                    matcher = Matcher((p, s) for p, s in reg["patterns"])
                    ring = Ring.attach(reg["ring"])
                except (ValueError, KeyError, TypeError, OSError, FastqError):
                    pass                               # closing meanwhile, or damaged: skip
                else:
                    return _Target(sid, matcher, ring, fd)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    def _reap(self, path: str, fd: int) -> None:
        try:
            ring = json.loads(os.pread(fd, 1 << 20, 0))["ring"]
        except (ValueError, KeyError, TypeError, OSError):
            ring = None
        with self.state:
            for p in (path, ring_path(ring) if isinstance(ring, str) else None):
                if p is not None:
                    try:
                        os.unlink(p)
                    except OSError:
                        pass
            self.state.bump()

    def put(self, rings: list[Ring], frames: list[bytes]) -> None:
        """Copy ``frames`` into every ring, dropping the oldest messages of a full one."""
        for ring in rings:
            try:
                ring.put_many(frames, False)
                continue
            except RingFull:
                pass
            except RecordTooLarge:                     # the batch is larger than the ring
                if len(frames) == 1:                   # one message larger than this ring:
                    self.dropped += 1                  # lost to this subscriber, never an error
                    continue                           # for the publisher (or the others)
                for f in frames:
                    self.put([ring], [f])
                continue
            except (StorageError, OSError, Closed):    # the subscriber went away meanwhile
                continue
            n = len(frames)
            while True:
                try:
                    got = ring.get_many(n, False)
                    self.dropped += len(got)
                except RingEmpty:                      # the subscriber made room meanwhile
                    pass
                try:
                    ring.put_many(frames, False)
                    break
                except RingFull:
                    continue

    def close(self) -> None:
        with self._lock:
            for t in self._targets.values():
                t.close()
            self._targets = {}
            self._routes = {}


def frame(channel_key: bytes, value, timestamp: int) -> bytes:
    return _frame_record(0, value, channel_key, None, timestamp)[0]
