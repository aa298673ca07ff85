"""Memory topics: ``broker.topic(name, storage="memory", overflow=..., capacity_bytes=...)``.

A memory topic keeps its records in one shared-memory :class:`fastq.Ring` instead of a
log: publishing is a copy into RAM, consuming *takes* records out (at-most-once; whatever
is in the ring is lost when the last process using the topic closes it or dies).

Sharing: the ring is named after the broker path and the topic (``ring_name``), so every
process that opens the same broker directory and topic shares it. Every opener holds a
shared flock on ``<topic>/memory.users``; the first opener (no other holder) discards a
stale ring and creates a fresh one, the last closer unlinks it. Creation, attachment and
the spill bookkeeping are serialized by an exclusive flock on ``<topic>/memory.lock``
(plus a thread lock, since flocks are per open file).

Delivery: a ring has one read cursor, so consumers share a work queue: each record goes
to exactly one consumer of the topic, whatever its group (groups share the ring; there is
no fan-out). ``commit()`` is accepted and does nothing: a record is consumed when it is
taken. Records taken from the ring have ``offset == -1``.

Overflow (stored in topic.json; the stored configuration wins):

* ``"block"`` (default): ``publish`` waits for room (``timeout=`` seconds, then
  :class:`fastq.RingFull`);
* ``"reject"``: ``publish`` raises :class:`fastq.RingFull` (a ``queue.Full``) at once;
* ``"drop-oldest"``: the oldest records are discarded until the new one fits
  (``topic.dropped`` counts this process's discards);
* ``"spill"``: when the ring is full, records go to the topic's durable log (partition
  0, a normal :class:`fastq.Log`) instead of blocking.

Spill ordering rule. A small state file ``<topic>/memory.state`` holds a *mode* (RING or
SPILL) and the *spill cursor* (next log offset to hand out). A publisher that finds the
ring full switches the mode to SPILL; from then on every publish goes to the log — even
when the ring has room again — until consumers have taken everything: consumers always
take from the ring first, read the log (from the cursor, advancing it) only when the ring
is empty, and switch the mode back to RING when the ring is empty and the cursor has
reached the log end. Spill appends and the switch back happen under the lock, and a
consumer samples the log end *before* checking that the ring is empty, so records of
one publisher are taken in the order it published them. Spilled records survive a
restart (they are in the log; the cursor is in the page cache and, like ring records,
may be handed out again or not after a power failure — at-most-once is the contract for
memory topics only across crashes of consumers, which never see a record twice).

Process-safety: any number of processes publish and consume. Thread-safety: a
MemoryTopic may be shared by threads; a consumer belongs to one thread.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import struct
import threading
import time
from collections import deque
from typing import Iterator, Sequence

from .._core import _storage
from .._core._producer import MEMORY_MODE_AT as _MODE_AT
from .._core._producer import MEMORY_MODE_RING as MODE_RING
from .._core._producer import MEMORY_MODE_SPILL as MODE_SPILL
from .._core._producer import memory_publish as _memory_publish
from .._core._codec import os_errors
from .._core._ring import MemoryRecord, Ring, _frame_record, ring_path
from ..errors import Closed, CorruptRecord, InvalidArgument, RecordTooLarge, RingFull, StorageError
from .config import OVERFLOW_MODES, STORAGE_MODES, validate_name
from .topic import BatchMetadata, RecordMetadata, Topic

__all__ = ["MemoryTopic", "MemoryConsumer", "MemoryProducer", "MemoryRecord", "OVERFLOW_MODES",
           "STORAGE_MODES", "ring_name"]


# memory.state, little-endian: magic 8 bytes, mode u8 at 8, spill cursor i64 at 16
STATE_MAGIC = b"FQMEMST1"
STATE_SIZE = 64
_CURSOR_AT = 16
_CURSOR = struct.Struct("<q")
_WAIT_SLICE_S = 1.0


def ring_name(broker_path: str, topic: str) -> str:
    """The shared-memory ring name of a memory topic: a hash of broker path and topic."""
    h = hashlib.sha1(f"{os.path.abspath(broker_path)}\0{topic}".encode()).hexdigest()[:32]
    return f"memtopic-{h}"


class _State:
    """The mapped memory.state file plus the cross-process lock (memory.lock)."""

    def __init__(self, d: str):
        with os_errors("open memory topic lock", os.path.join(d, "memory.lock")):
            self.lock_fd = os.open(os.path.join(d, "memory.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.tlock = threading.RLock()
        self.depth = 0
        path = os.path.join(d, "memory.state")
        try:
            with self, os_errors("open memory topic state", path):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    size = os.fstat(fd).st_size
                    if size == 0:
                        # written whole (not ftruncate'd): the mapped page is allocated, a
                        # full disk fails here and not as a SIGBUS at a later store
                        try:
                            n = os.pwrite(fd, STATE_MAGIC + bytes(STATE_SIZE - len(STATE_MAGIC)), 0)
                        except OSError:
                            os.ftruncate(fd, 0)      # an empty file is rewritten next time
                            raise
                        if n != STATE_SIZE:
                            os.ftruncate(fd, 0)
                            raise CorruptRecord(f"{path}: short write ({n} of {STATE_SIZE} bytes)", path)
                    elif size != STATE_SIZE:
                        raise CorruptRecord(f"{path}: {size} bytes, expected {STATE_SIZE}", path)
                    self.map = mmap.mmap(fd, STATE_SIZE)
                finally:
                    os.close(fd)
                if self.map[:8] != STATE_MAGIC or self.map[_MODE_AT] not in (MODE_RING, MODE_SPILL):
                    self.map.close()
                    raise CorruptRecord(f"{path}: bad magic or mode", path)
        except BaseException:
            os.close(self.lock_fd)
            raise

    def __enter__(self):
        self.tlock.acquire()
        if self.depth == 0:
            try:
                _storage.flock(self.lock_fd, True, True)
            except BaseException:
                self.tlock.release()
                raise
        self.depth += 1
        return self

    def __exit__(self, *exc):
        self.depth -= 1
        if self.depth == 0:
            _storage.funlock(self.lock_fd)
        self.tlock.release()

    @property
    def mode(self) -> int:
        return self.map[_MODE_AT]

    @mode.setter
    def mode(self, m: int) -> None:
        self.map[_MODE_AT] = m

    @property
    def cursor(self) -> int:
        return _CURSOR.unpack_from(self.map, _CURSOR_AT)[0]

    @cursor.setter
    def cursor(self, off: int) -> None:
        _CURSOR.pack_into(self.map, _CURSOR_AT, off)

    def close(self) -> None:
        self.map.close()
        os.close(self.lock_fd)


class MemoryTopic(Topic):
    """A topic whose records live in a shared-memory ring (see the module docstring).

    Same calls as a log topic: ``publish``, ``publish_many``, ``producer()``,
    ``consumer()``; ``read``/``end_offsets``/``wait_any`` see only the spill log.
    A memory topic has one partition.
    """

    def __init__(self, broker, name: str, config: dict):
        super().__init__(broker, name, config)
        self.overflow: str = config["overflow"]
        self.capacity_bytes: int = config["capacity_bytes"]
        self.dropped = 0            # records this process discarded (overflow="drop-oldest")
        self._ring: Ring | None = None
        self._users_fd = -1
        self._state = _State(self.dir)
        try:
            self._open_ring()
        except BaseException:
            self._state.close()
            super().close()
            raise

    def _open_ring(self) -> None:
        name = ring_name(self.broker.path, self.name)
        cap = 1 << (self.capacity_bytes - 1).bit_length()
        max_msg = min(self.config["max_record_bytes"] + 4096, cap - 8)
        with os_errors("open memory topic users file", os.path.join(self.dir, "memory.users")):
            fd = os.open(os.path.join(self.dir, "memory.users"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            with self._state:
                if _storage.flock(fd, True, False):          # nobody else: start fresh
                    try:
                        os.unlink(_ring_path(name))
                    except FileNotFoundError:
                        pass
                    ring = Ring(cap, name=name, max_message_size=max_msg)
                    _storage.flock(fd, False, True)          # downgrade to shared
                else:
                    _storage.flock(fd, False, True)
                    ring = Ring.attach(name)
        except BaseException:
            os.close(fd)
            raise
        self._ring, self._users_fd = ring, fd

    # -- publishing -----------------------------------------------------------------------

    def _ring_or_closed(self) -> Ring:
        ring = self._ring
        if ring is None:
            self._check_closed()
            raise Closed(f"topic {self.name!r} is closed")
        return ring

    publish = _memory_publish        # compiled (fastq._core._producer); a full ring comes here:

    def _publish_full(self, value, key, headers, timestamp, timeout) -> RecordMetadata:
        """publish() when the ring is full or the topic is in SPILL mode: the overflow
        policy."""
        ring = self._ring_or_closed()
        ov = self.overflow
        if ov == "spill":
            return self._spill_one(value, key, headers, timestamp)
        if ov == "block":
            try:
                ts = ring._put_record(0, value, key, headers, timestamp, True, timeout)
            except RingFull:
                raise RingFull(f"memory topic {self.name!r} stayed full for {timeout} s") from None
            return RecordMetadata(self.name, 0, -1, ts)
        if ov == "reject":
            raise RingFull(f"memory topic {self.name!r} is full ({ring.capacity} bytes, "
                           f"{len(ring)} records); overflow='reject'")
        while True:                                  # drop-oldest
            if ring._get_records(1):
                self.dropped += 1
            try:
                ts = ring._put_record(0, value, key, headers, timestamp)
                return RecordMetadata(self.name, 0, -1, ts)
            except RingFull:
                continue

    def _spill_one(self, value, key, headers, timestamp) -> RecordMetadata:
        st = self._state
        with st:
            if st.mode == MODE_RING:
                try:
                    ts = self._ring._put_record(0, value, key, headers, timestamp)
                    return RecordMetadata(self.name, 0, -1, ts)
                except RingFull:
                    st.mode = MODE_SPILL
            return self.log(0).publish(value, key, headers, timestamp)

    def publish_many(self, values: Sequence, *, key=None, headers=None, partition: int | None = None,
                     timestamp: int | None = None, timeout: float | None = None) -> BatchMetadata:
        """Put many values as one all-or-nothing ring write (or one spill-log batch).
        ``base_offset`` is -1 when the batch is held in memory."""
        if partition is not None:
            self._check_partition(partition)
        ring = self._ring_or_closed()
        values = list(values)
        if not values:
            raise InvalidArgument("publish_many needs at least one value")
        if timestamp is None:
            timestamp = int(time.time() * 1000)
        frames = [_frame_record(0, v, key, headers, timestamp)[0] for v in values]
        n = len(frames)
        mem = BatchMetadata(self.name, 0, -1, n, timestamp)
        st = self._state
        try:
            if st.map[_MODE_AT] == MODE_RING:
                try:
                    ring.put_many(frames, False)
                    return mem
                except RingFull:
                    pass
            ov = self.overflow
            if ov == "spill":
                with st:
                    if st.mode == MODE_RING:
                        try:
                            ring.put_many(frames, False)
                            return mem
                        except RingFull:
                            st.mode = MODE_SPILL
                    base = self.log(0).append_many(values, key, headers, timestamp)
                    return BatchMetadata(self.name, 0, base, n, timestamp)
            if ov == "block":
                try:
                    ring.put_many(frames, True, timeout)
                except RingFull:
                    raise RingFull(f"memory topic {self.name!r} had no room for {n} records "
                                   f"within {timeout} s") from None
                return mem
            if ov == "reject":
                raise RingFull(f"memory topic {self.name!r} has no room for {n} records; overflow='reject'")
            while True:                              # drop-oldest
                if ring._get_records(1):
                    self.dropped += 1
                try:
                    ring.put_many(frames, False)
                    return mem
                except RingFull:
                    continue
        except RecordTooLarge as e:
            raise RecordTooLarge(f"memory topic {self.name!r}: {e}") from None

    def producer(self, *, on_delivery=None, **options) -> "MemoryProducer":
        """A producer with the batching producer's interface. A ring put is already as
        cheap as batching, so ``send`` publishes at once (``linger_ms`` etc. are
        accepted and ignored)."""
        unknown = set(options) - {"linger_ms", "batch_size", "max_pending", "buffer_bytes"}
        if unknown:
            raise InvalidArgument(f"unknown producer options {sorted(unknown)}")
        return MemoryProducer(self, on_delivery)

    # -- consuming ------------------------------------------------------------------------

    def consumer(self, group: str | None = None, **options) -> "MemoryConsumer":
        """A consumer that takes records (work-queue semantics; see the module docstring)."""
        return MemoryConsumer(self, group, **options)

    def _take(self, max_records: int) -> list[MemoryRecord]:
        """Take up to max_records: from the ring, else (SPILL mode, ring empty) the log."""
        ring = self._ring_or_closed()
        got = ring._get_records(max_records, topic=self.name)
        if got:
            return got
        st = self._state
        if st.map[_MODE_AT] != MODE_SPILL:
            return []
        with st:
            if st.mode != MODE_SPILL:
                return []
            lg = self.log(0)
            end = lg.end_offset                      # sampled before the ring check
            got = ring._get_records(max_records, topic=self.name)
            if got:
                return got
            cur = max(st.cursor, lg.start_offset)
            if cur >= end:
                st.cursor = cur
                st.mode = MODE_RING                  # spill backlog drained
                return []
            out = []
            for rec in lg.read(cur, end):
                out.append(MemoryRecord(self.name, 0, rec.offset, rec.timestamp,
                                        None if rec.key is None else bytes(rec.key),
                                        None if rec.value is None else bytes(rec.value), rec.headers))
                if len(out) >= max_records:
                    break
            rec = None
            st.cursor = out[-1].offset + 1 if out else end
            return out

    def qsize(self) -> int:
        """Records waiting: in the ring plus the untaken spill backlog (a snapshot)."""
        n = len(self._ring_or_closed())
        st = self._state
        if st.map[_MODE_AT] == MODE_SPILL:
            lg = self.log(0)
            n += max(0, lg.end_offset - max(st.cursor, lg.start_offset))
        return n

    # -- lifetime -------------------------------------------------------------------------

    def _abandon_after_fork(self) -> None:
        """In a forked child: unmap the child's copy of the ring and close its descriptors
        without the flocks (memory.users, memory.lock) the parent shares: a child that
        took them could unlink the ring the parent still uses."""
        ring, self._ring = self._ring, None
        if ring is not None:
            try:
                ring.close()
            except BufferError:              # views alive in the child: unmapped with them
                pass
        if self._users_fd >= 0:
            os.close(self._users_fd)
            self._users_fd = -1
        self._state.close()
        super()._abandon_after_fork()

    def close(self) -> None:
        """Close the ring (unlinking it if this is the last process using the topic) and
        the spill log. Idempotent."""
        with self._mutex:
            ring, self._ring = self._ring, None
            if ring is not None:
                with self._state:
                    ring.close()
                    try:
                        if _storage.flock(self._users_fd, True, False):   # the last user
                            ring.unlink()
                    except (OSError, StorageError):
                        pass
                    os.close(self._users_fd)
                    self._users_fd = -1
                self._state.close()
            super().close()

    def __repr__(self) -> str:
        return f"<fastq.MemoryTopic {self.name!r} overflow={self.overflow!r} capacity={self.capacity_bytes}>"


def _ring_path(name: str) -> str:
    return ring_path(name)


class MemoryProducer:
    """``send`` publishes to the memory topic immediately (see MemoryTopic.producer)."""

    def __init__(self, topic: MemoryTopic, on_delivery=None):
        if on_delivery is not None and not callable(on_delivery):
            raise InvalidArgument(f"on_delivery must be callable or None, got {type(on_delivery).__name__}")
        self.topic = topic
        self.on_delivery = on_delivery
        self.sent = 0
        self._closed = False

    def send(self, value, *, key=None, headers=None, partition: int | None = None,
             timestamp: int | None = None) -> None:
        if self._closed:
            raise Closed(f"producer of memory topic {self.topic.name!r} is closed")
        meta = self.topic.publish(value, key=key, headers=headers, partition=partition, timestamp=timestamp)
        self.sent += 1
        if self.on_delivery is not None:
            self.on_delivery(meta)

    def flush(self) -> int:
        if self._closed:
            raise Closed(f"producer of memory topic {self.topic.name!r} is closed")
        return 0

    @property
    def pending(self) -> int:
        return 0

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "MemoryProducer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MemoryConsumer:
    """Takes records from a memory topic: ``poll(max_records, timeout)``, iteration
    (blocks), ``commit()`` (accepted, does nothing: taking is consuming), ``close()``;
    ``assignment()`` is ``[0]``, ``lag()`` the records waiting, ``committed()``
    ``{0: None}``; ``position`` and the ``seek*`` calls raise InvalidArgument (records
    are taken, there is no position). ``group`` is a label only: every consumer of the
    topic shares its ring."""

    _ACCEPTED = {"auto_commit", "from_", "session_timeout_ms", "spin_us", "on_assign", "on_revoke"}

    def __init__(self, topic: MemoryTopic, group: str | None = None, *, max_poll_records: int = 500,
                 **options):
        if group is not None:
            validate_name("group", group)
        unknown = set(options) - self._ACCEPTED
        if unknown:
            raise InvalidArgument(f"unknown consumer options {sorted(unknown)}")
        if (not isinstance(max_poll_records, int) or isinstance(max_poll_records, bool)
                or not 1 <= max_poll_records <= 1_000_000):
            raise InvalidArgument(f"max_poll_records={max_poll_records!r}: expected an int in [1, 1000000]")
        if topic.closed:
            raise Closed(f"topic {topic.name!r} is closed")
        self.topic = topic
        self.group = group
        self.max_poll_records = max_poll_records
        self._buf: deque[MemoryRecord] = deque()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"consumer of memory topic {self.topic.name!r} is closed")

    def poll(self, max_records: int | None = None, timeout: float | None = None) -> list[MemoryRecord]:
        """Take up to ``max_records`` records, waiting up to ``timeout`` seconds (None:
        forever) for the first; [] on timeout."""
        self._check_open()
        if max_records is None:
            max_records = self.max_poll_records
        if not isinstance(max_records, int) or isinstance(max_records, bool) or max_records < 1:
            raise InvalidArgument(f"max_records must be a positive int, got {max_records!r}")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
            raise InvalidArgument(f"timeout must be None or >= 0, got {timeout!r}")
        if self._buf:
            buf = self._buf
            return [buf.popleft() for _ in range(min(max_records, len(buf)))]
        deadline = None if timeout is None else time.monotonic() + timeout
        topic = self.topic
        while True:
            recs = topic._take(max_records)
            if recs:
                return recs
            left = _WAIT_SLICE_S
            if deadline is not None:
                left = min(left, deadline - time.monotonic())
                if left <= 0:
                    return []
            topic._ring_or_closed()._wait_readable(left)

    def __iter__(self) -> Iterator[MemoryRecord]:
        return self

    def __next__(self) -> MemoryRecord:
        self._check_open()
        if not self._buf:
            self._buf.extend(self.poll(self.max_poll_records, None))
        return self._buf.popleft()

    def commit(self, what=None) -> None:
        """Accepted for API compatibility; a taken record is already consumed."""
        self._check_open()

    def committed(self) -> dict[int, int | None]:
        """``{0: None}``: a memory topic keeps no committed offsets."""
        self._check_open()
        return {0: None}

    def assignment(self) -> list[int]:
        """``[0]``: every consumer of a memory topic takes from its one partition."""
        self._check_open()
        return [0]

    def lag(self) -> dict[int, int]:
        """``{0: records waiting}`` (ring plus untaken spill backlog, a snapshot)."""
        self._check_open()
        return {0: self.topic.qsize()}

    def _no_offsets(self, what: str):
        raise InvalidArgument(f"{what}: a memory topic's consumer takes records, which have no "
                              "positions to seek to (offsets are for log topics)")

    def position(self, partition: int) -> int:
        self._no_offsets("position")

    def seek(self, partition: int, offset: int) -> None:
        self._no_offsets("seek")

    def seek_to_beginning(self, partitions=None) -> None:
        self._no_offsets("seek_to_beginning")

    def seek_to_end(self, partitions=None) -> None:
        self._no_offsets("seek_to_end")

    def seek_to_timestamp(self, timestamp: int, partitions=None) -> None:
        self._no_offsets("seek_to_timestamp")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Idempotent. Records taken by iteration but not yet handed out are lost
        (at-most-once)."""
        self._closed = True
        self._buf.clear()

    def __enter__(self) -> "MemoryConsumer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<fastq.MemoryConsumer {self.topic.name!r} group={self.group!r}>"
