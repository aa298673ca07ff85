"""Message queues with acknowledgements: publish, receive, ack — on fastq logs.

``q = broker.queue("jobs")`` gets or creates a queue; ``q.publish(data)`` stores a
message; ``q.receive()`` leases messages to this consumer for ``visibility_timeout``
seconds; ``message.ack()`` settles one for good, ``message.nack()`` hands it back. A
message whose consumer dies (or whose lease runs out) is delivered again: at-least-once.

Layout of a queue (see docs/QUEUES.md for the state machine and the failure table)::

    <broker>/queues/<name>/queue.json       configuration (stored config wins)
    <broker>/queues/<name>/queue.state      delivery state, mmap'd (csrc/fq_queue.h)
    <broker>/queues/<name>/notify           futex word every lane log bumps (Notifier)
    <broker>/queues/<name>/sessions/<i>.lock  flock'd by the process holding session i
    <broker>/queues/<name>/p<k>/<lane>/     a fastq Log: partition k, lane 0..9 = priority,
                                            lane 10 = delayed messages

Messages are records of the lane logs; a message's state (delivered how often, leased to
whom until when, acked) lives in queue.state for a window of each lane (Kafka's share
groups, KIP-932). A plain publish is one append — no queue lock. A delayed publish, a
publish with ``dedup_id`` and every receive, ack and nack take queue.state's lock (one
pid word in shared memory, taken over from a dead holder within a millisecond).

Message ids: ``offset << 12 | partition << 4 | lane`` of the record the message was
first written as; a message copied to another lane (a delayed message coming due, a
nack with delay or error) keeps its id in the ``fq-id`` header.

Record headers the queue writes (all start with ``fq-``; ``Message.headers`` hides them):
``fq-id`` (8 bytes, little-endian: the message id), ``fq-src`` (8 bytes: lane << 48 |
offset of the record copied, to recognise a copy after a crash), ``fq-due`` (8 bytes:
due time in ms, rounded up, delayed lane), ``fq-prio`` (1 byte: the priority a delayed message goes
to), ``fq-pub`` (8 bytes: the first publish time in ms), ``fq-del`` (4 bytes: deliveries
before this copy), ``fq-err`` (the last error a consumer reported), ``fq-dd`` (16 bytes: the
BLAKE2b hash of a dedup_id, so a publisher killed before recording it is recorded by the
next lock taker).

Sessions and dead consumers: a process's Queue handle claims a session slot (index i)
when it first receives and holds an flock on ``sessions/<i>.lock`` for its lifetime. The
kernel drops that flock when the process dies, however it dies, so a receiver finding a
slot with messages in flight whose flock it can take knows the holder is dead — never
fooled by a reused pid — and makes its messages available again at once. Every
receiver checks at most every ``liveness_interval`` (10 ms).

Durability: as the lane logs' (the broker's or ``durability=``). ``"os"``: a publish
and an ack survive any process crash (page cache); a power failure may lose the last
~30 s. ``"group"``/``"always"``: publish fsyncs its log; ack/nack msync queue.state
before returning.

Fork: a Queue belongs to the process that opened its broker; in a forked child it was
released at the fork and raises :class:`fastq.errors.UsedAfterFork`.
"""
from __future__ import annotations

import hashlib
import logging
import itertools
import os
import struct
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple

from .._core import _storage
from .._core._codec import os_errors
from .._core._storage import MessageCore, QueueCore, QueueState
from ..errors import (Closed, CodecError, CorruptRecord, DiskFull, FastqError, InvalidArgument, LeaseLost, QueueFull,
                      UsedAfterFork)
from ..broker.config import validate_name
from ..flow.limiter import limit_publish, unlimit_publish
from ..log.config import DURABILITY_MODES, check_int
from ..log.log import Log
from .bounds import BoundsMixin
from .codecs import Codec, resolve_codec
from .subscription import Subscription

if TYPE_CHECKING:
    from ..broker.broker import Broker

__all__ = ["Queue", "Message", "QueueDepth", "QUEUE_DEFAULTS", "validate_queue_config"]

log = logging.getLogger("fastq.queue")

QUEUE_FILE = "queue.json"
STATE_FILE = "queue.state"
LANES = _storage.QUEUE_LANES            # per partition: priorities 0..9, then the delayed lane
PRIORITIES = _storage.QUEUE_PRIORITIES
DELAYED = _storage.QUEUE_DELAYED
AVAILABLE, ACQUIRED, ACKED, ARCHIVED, WAITING = (_storage.SLOT_AVAILABLE, _storage.SLOT_ACQUIRED,
                                                 _storage.SLOT_ACKED, _storage.SLOT_ARCHIVED,
                                                 _storage.SLOT_WAITING)
OP_PROMOTE, OP_MOVE = 1, 2               # intent ops (csrc/fq_queue.h "Copies")
OP_DEDUP = 4                             # a publish with dedup_id: its record carries fq-dd
MAX_PARTITIONS = _storage.QUEUE_MAX_PARTITIONS
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

QUEUE_DEFAULTS: dict[str, Any] = {
    "partitions": 1,
    "visibility_timeout": 30.0,      # seconds a receive leases a message for
    "max_deliveries": None,          # deliveries before the message is dead-lettered (None: never)
    "dead_letter": None,             # name of the queue dead messages go to (None: dropped, counted)
    "dedup_window": 300.0,           # seconds a dedup_id is remembered
    "max_in_flight": 16384,          # window per lane: delivered but unsettled messages (power of 2)
    "max_delayed": 65536,            # delayed messages tracked per partition (power of 2)
    "dedup_capacity": 65536,         # dedup ids remembered at once (power of 2)
    "max_sessions": 256,             # processes (handles) receiving at once
    "durability": None,              # None: the broker's
    "segment_bytes": 16 << 20,       # lane log segments: the unit space is reclaimed in
    "max_record_bytes": 1 << 20,
    "ordered": False,                # one message per partition in flight, in order (SQS FIFO groups)
}


def _pow2(name: str, v, lo: int, hi: int) -> None:
    check_int(name, v, lo, hi)
    if v & (v - 1):
        raise InvalidArgument(f"{name}={v}: must be a power of two")


def _check_seconds(name: str, v, lo: float, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= lo) or v != v or v == float("inf"):
        raise InvalidArgument(f"{name} must be a finite number of seconds >= {lo}, got {v!r}")


def validate_queue_config(cfg: dict) -> None:
    check_int("partitions", cfg["partitions"], 1, MAX_PARTITIONS)
    _check_seconds("visibility_timeout", cfg["visibility_timeout"], 0.001)
    check_int("max_deliveries", cfg["max_deliveries"], 1, 1 << 30, allow_none=True)
    if cfg["dead_letter"] is not None:
        validate_name("dead_letter queue", cfg["dead_letter"])
    _check_seconds("dedup_window", cfg["dedup_window"], 0.0)
    _pow2("max_in_flight", cfg["max_in_flight"], 16, 1 << 24)
    _pow2("max_delayed", cfg["max_delayed"], 16, 1 << 24)
    _pow2("dedup_capacity", cfg["dedup_capacity"], 16, 1 << 24)
    check_int("max_sessions", cfg["max_sessions"], 1, _storage.QUEUE_MAX_SESSIONS)
    if cfg["durability"] is not None and cfg["durability"] not in DURABILITY_MODES:
        raise InvalidArgument(f"durability={cfg['durability']!r}: expected one of {sorted(DURABILITY_MODES)}")
    check_int("segment_bytes", cfg["segment_bytes"], 1 << 16, 1 << 31)
    check_int("max_record_bytes", cfg["max_record_bytes"], 1, 256 << 20)
    if not isinstance(cfg["ordered"], bool):
        raise InvalidArgument(f"ordered must be True or False, got {cfg['ordered']!r}")


class _Count(NamedTuple):
    ready: int
    delayed: int
    in_flight: int
    dead: int
    oldest_age: float
    runnable: int


class QueueDepth(NamedTuple):
    """What a queue holds. ``ready``: deliverable now or after a nack's delay; ``delayed``:
    published with a delay that has not come; ``in_flight``: leased, not settled;
    ``dead``: dead-lettered or rejected so far; ``oldest_age``: seconds since the oldest
    unsettled message was published (0.0 when there is none)."""

    ready: int
    delayed: int
    in_flight: int
    dead: int
    oldest_age: float


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _due_ms(delay: float) -> int:
    """The first whole millisecond at or after now + ``delay`` s: a due time never early
    (``_now_ms() + delay`` would be up to 1 ms early, which a receiver woken at the due
    time shows)."""
    return -(-(time.time_ns() + int(delay * 1e9)) // 1_000_000)


def message_id(offset: int, partition: int, lane: int) -> int:
    return (offset << 12) | (partition << 4) | lane


def _key(key) -> bytes:
    """A message key: str (stored as UTF-8) or bytes-like."""
    if isinstance(key, str):
        return key.encode()
    return bytes(_storage.key_bytes(key))


def _header_dict(headers) -> dict[str, bytes]:
    return {k: v for k, v in headers if not k.startswith("fq-")}


def _user_headers(headers) -> list[tuple[str, bytes]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    out = []
    try:
        for k, v in items:
            if not isinstance(k, str):
                raise InvalidArgument(f"header names must be str, got {type(k).__name__}")
            if k.startswith("fq-"):
                raise InvalidArgument(f"header {k!r}: names starting with 'fq-' are the queue's own")
            if isinstance(v, str):
                v = v.encode()
            elif not isinstance(v, (bytes, bytearray, memoryview)):
                raise InvalidArgument(f"header {k!r}: value must be str or bytes, got {type(v).__name__}")
            out.append((k, bytes(v)))
    except (TypeError, ValueError) as e:
        if isinstance(e, InvalidArgument):
            raise
        raise InvalidArgument(f"headers must be a dict or (name, value) pairs: {e}") from None
    return out


def _hdr_u64(headers, name: str) -> int | None:
    for k, v in headers:
        if k == name and v is not None and len(v) == 8:
            return _U64.unpack(v)[0]
    return None


def _hdr(headers, name: str) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None


class Message(MessageCore):
    """A message received from a queue, leased to this consumer until it is settled or
    its lease ends. ``data`` (decoded by the queue's codec on first access), ``body`` (the
    stored bytes), ``id``, ``key``, ``headers`` (dict), ``published_at`` (seconds since the
    epoch), ``delivery_count`` (1 on the first delivery), ``queue`` (its name).

    Settle with exactly one of :meth:`ack`, :meth:`nack`, :meth:`reject`; :meth:`extend`
    keeps the lease longer. Each raises :class:`fastq.LeaseLost` when the lease is no longer
    current (it ended and another consumer took the message, or it was settled).

    The fields, ``data`` and ``ack`` are compiled (:class:`fastq._core._storage.MessageCore`):
    receive builds messages there, without running this ``__init__``."""

    __slots__ = ()

    def __init__(self, q: "Queue", lane: int, offset: int, deliveries: int, session: int, mid: int,
                 key, body: bytes, raw_headers, published_ms: int, delivery_count: int):
        self._q = q
        self._lane = lane
        self._offset = offset
        self._deliveries = deliveries
        self._session = session
        self.id = mid
        self.key = key
        self.body = body
        self._raw_headers = raw_headers
        self._pub_ms = published_ms
        self.delivery_count = delivery_count

    @property
    def headers(self) -> dict[str, bytes]:
        h = self._headers
        if h is None:
            h = self._headers = _header_dict(self._raw_headers) if self._raw_headers else {}
        return h

    @property
    def published_at(self) -> float:
        return self._pub_ms / 1000.0

    @property
    def idempotency_key(self) -> str:
        """``"<queue>:<message id>"``: the same on every delivery of this message (a copy
        made by a nack or a delay keeps its id), different for every message of the
        broker's queues. Record it with a side effect to do that side effect once (see
        docs/GUARANTEES.md, "Side effects outside fastq")."""
        return f"{self._q.name}:{self.id}"

    @property
    def queue(self) -> str:
        return self._q.name

    @property
    def settled(self) -> bool:
        """True once this handle acked, nacked, rejected or dead-lettered it."""
        return self._settled

    @property
    def last_error(self) -> str | None:
        """The error the previous delivery's consumer reported with ``nack(error=...)``."""
        e = _hdr(self._raw_headers, "fq-err")
        return None if e is None else bytes(e).decode("utf-8", "replace")

    def nack(self, delay: float = 0.0, *, error: str | BaseException | None = None) -> None:
        """Hand the message back, to be delivered again after ``delay`` seconds. ``error``
        (an exception or text) is kept with it: the next delivery sees it as
        ``last_error`` and the dead-letter queue records it."""
        _check_seconds("delay", delay, 0.0)
        self._q._nack(self, delay, error)

    def reject(self, reason: str | BaseException | None = None) -> None:
        """Settle without processing: dead-lettered now (with ``reason``) if the queue has
        a dead-letter queue, else dropped; counted in ``depth().dead``."""
        self._q._reject(self, reason)

    def extend(self, seconds: float) -> None:
        """Keep the lease for ``seconds`` more from now."""
        _check_seconds("seconds", seconds, 0.001)
        self._q._extend(self, seconds)

    def __repr__(self) -> str:
        return (f"<fastq.Message {self.id} of queue {self._q.name!r} delivery {self.delivery_count}"
                f"{' settled' if self._settled else ''}>")


class _Lane:
    __slots__ = ("index", "partition", "prio", "log", "path", "reader")

    def __init__(self, index: int, partition: int, prio: int, path: str):
        self.index = index
        self.partition = partition
        self.prio = prio
        self.log: Log | None = None
        self.path = path
        self.reader = None


class Queue(QueueCore, BoundsMixin):
    """A message queue of a :class:`fastq.Broker` (see the module docstring). Made by
    ``broker.queue(name, ...)``; shared by threads; every process opens its own.

    ``receive`` and the acks run compiled in the common case
    (:class:`fastq._core._storage.QueueCore`, src/fastq/_core/_queuecore.pxi); every other
    case comes back to the Python methods here."""

    liveness_interval = 0.010            # seconds between checks for dead consumers
    reclaim_interval = 1.0               # seconds between space reclaim passes per lane

    def __init__(self, broker: "Broker", name: str, config: dict, codec):
        self.broker = broker
        self.name = name
        self.config = config
        self.codec: Codec = resolve_codec(codec)
        self.partitions: int = config["partitions"]
        self.durability: str = config["durability"] or broker.durability
        self.visibility_timeout: float = float(config["visibility_timeout"])
        self.max_deliveries: int | None = config["max_deliveries"]
        self.dead_letter: str | None = config["dead_letter"]
        self.ordered: bool = config["ordered"]
        self.dir = os.path.join(broker.path, "queues", name)
        self._closed = False
        self._forked = False
        self._mutex = threading.RLock()     # this process's threads around queue.state's lock
        self._holder: int | None = None     # thread holding queue.state's lock through _lock()
        self.healed: list[tuple[str, int, int]] = []   # (lane log, its end, state's end) healed here
        self._notifier = _storage.Notifier(os.path.join(self.dir, "notify"))
        self._state = QueueState(os.path.join(self.dir, STATE_FILE))
        self._lanes = [_Lane(i, i // LANES, i % LANES, os.path.join(self.dir, f"p{i // LANES}", str(i % LANES)))
                       for i in range(self.partitions * LANES)]
        # receive order: priorities high to low; within one, partitions round-robin
        self._order = [[self._lanes[p * LANES + prio] for p in range(self.partitions)]
                       for prio in range(PRIORITIES - 1, -1, -1)]
        self._rr = itertools.count()
        self._session = -1
        self._session_fd = -1
        self._next_housekeeping = 0.0
        self._next_scan = 0.0
        self._lease_ms = int(self.visibility_timeout * 1000)
        self._live_rows: list[list[_Lane]] = []
        self._live: list[_Lane] = []
        self._live_ids: list[int] = []
        self._next_reclaim = time.monotonic() + self.reclaim_interval
        self._next_expire_ms = 0
        self._sync = self.durability != "os"
        self._dlq: "Queue | None" = None
        self._core_init(self._state, Message, resolve_codec("raw"))
        self._set_notifier(self._notifier)
        self._bounds_init()

    # -- lanes --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            if self._forked:
                raise UsedAfterFork(f"queue {self.name!r} was opened before fork(): it belongs to the "
                                    "parent; open the broker again in the child")
            raise Closed(f"queue {self.name!r} is closed")

    def _lane_log(self, lane: _Lane, create: bool = False) -> Log | None:
        lg = lane.log
        if lg is not None:
            return lg
        with self._mutex:
            self._check_open()
            if lane.log is None:
                if not create and not os.path.exists(os.path.join(lane.path, "log.json")):
                    return None
                cfg = self.config
                speo = self._state.lane(lane.index)[1]     # read first: it only grows
                lg = Log(lane.path, durability=self.durability, segment_bytes=cfg["segment_bytes"],
                         max_record_bytes=cfg["max_record_bytes"])
                if lg.end_offset < speo:
                    try:
                        self._heal_lane(lane, lg)
                    except BaseException:
                        lg.close()
                        raise
                lg.topic_name = self.name
                lg.partition_id = lane.partition
                lg._notifier = self._notifier
                lane.log = lg
                self._relist()
            return lane.log

    def _heal_lane(self, lane: _Lane, lg: Log) -> None:
        """The lane log ends before the offsets queue.state has delivered from it: its tail
        is gone — a power failure took what the kernel had not written back (durability
        "os"), or the log was deleted or replaced. New messages would get offsets the state
        has as delivered or settled and never be delivered, silently; so the state forgets
        its window from the log's end (fq_q_lane_truncate) and says so in a warning: the
        messages in that tail are lost, everything published from now on is delivered."""
        held = self._holder == threading.get_ident()
        if not held:
            self._lock()
        try:
            speo = self._state.lane(lane.index)[1]
            end = lg.end_offset
            if end < speo:
                n = self._state.lane_truncate(lane.index, end)
                log.warning("queue %r: lane log %s ends at offset %d but queue.state had delivered up to "
                            "%d: its tail is gone (a power failure under durability 'os', or the log was "
                            "deleted); offsets %d..%d forgotten (%d of them in its window), new messages go "
                            "on from %d", self.name, lane.path, end, speo, end, speo - 1, n, end)
                self.healed.append((lane.path, end, speo))
        finally:
            if not held:
                self._unlock()

    def _scan_lanes(self) -> None:
        """Open lane logs other processes created since we last looked."""
        for lane in self._lanes:
            if lane.log is None and lane.prio != DELAYED:
                self._lane_log(lane)

    # -- queue.state's lock ---------------------------------------------------------------

    def _lock(self) -> None:
        """Take this process's mutex, then queue.state's lock; after a takeover from a dead
        holder, repair the state and finish or forget the copy it was making."""
        self._mutex.acquire()
        try:
            self._check_open()
            took_over = self._state.lock()
            self._holder = threading.get_ident()
            if took_over:
                try:
                    self._state.repair()
                    self._resolve_intent()
                except BaseException:
                    self._holder = None
                    self._state.unlock()
                    raise
        except BaseException:
            self._mutex.release()
            raise

    def _unlock(self) -> None:
        self._holder = None
        self._state.unlock()
        self._mutex.release()

    def _resolve_intent(self) -> None:
        """A holder died mid-copy (csrc/fq_queue.h "Copies"): settle the source if the copy
        is in the destination log, else leave the source as it is (it is copied again)."""
        st = self._state
        it = st.intent()
        if it is None:
            return
        op, src, offset, dst, dst_end, deliveries = it
        if op == OP_DEDUP:
            self._resolve_dedup(dst, dst_end)
            st.clear_intent()
            return
        ref = _U64.pack((src << 48) | offset)
        lg = self._lane_log(self._lanes[dst])
        found = False
        if lg is not None:
            for rec in lg.read(max(dst_end, lg.start_offset)):
                if _hdr(rec.headers, "fq-src") == ref:
                    found = True
                    break
        if found:
            if op == OP_PROMOTE:
                st.settle_any(src, offset, ARCHIVED)     # its heap entry is dropped when it surfaces
            elif op == OP_MOVE:
                slot = st.slot(src, offset)
                if slot is not None and slot[0] == ACQUIRED and slot[1] == deliveries:
                    st.settle(src, offset, deliveries, slot[2], ACKED)
        st.clear_intent()

    def _copy_failed(self) -> None:
        """The append of a copy (or of a message with a dedup_id) raised, under the lock:
        the record may be in the log all the same (written, then its fsync failed). Settle
        the source if the copy is there, else forget the intent. When the log cannot be
        read (a failed fsync fails it) the intent stays: at worst the message is delivered
        twice, never lost."""
        try:
            self._resolve_intent()
        except FastqError:
            pass

    def _resolve_dedup(self, dst: int, dst_end: int) -> None:
        """A publisher died between appending a message with a dedup_id and recording the
        id: record it now (from the record's fq-dd header), so a retry finds it."""
        lane = self._lanes[dst]
        lg = self._lane_log(lane)
        if lg is None:
            return
        found = rec = None
        for rec in lg.read(max(dst_end, lg.start_offset)):
            dd = _hdr(rec.headers, "fq-dd")
            if dd is not None and len(dd) == 16:
                mid = _hdr_u64(rec.headers, "fq-id")
                found = (bytes(dd), mid if mid is not None else message_id(rec.offset, lane.partition, lane.prio))
                break
        del rec
        if found is not None:
            h1, h2 = struct.unpack("<QQ", found[0])
            now = _now_ms()
            self._state.dedup_put(h1, h2, now + int(self.config["dedup_window"] * 1000), found[1], now)

    # -- publishing -----------------------------------------------------------------------

    def _partition_for(self, key) -> int:
        if self.partitions == 1:
            return 0
        if key is None:
            return next(self._rr) % self.partitions
        return zlib.crc32(key) % self.partitions

    def _publish(self, data, *, key=None, headers=None, delay: float | None = None, priority: int = 0,
                 dedup_id: str | bytes | None = None, encoded: bool = False) -> int:
        """publish() when its compiled path (QueueCore.publish: one partition, no options
        but the priority, the lane log open) does not apply. ``encoded``: ``data`` is
        the body already encoded by this queue's codec (exactly-once outputs)."""
        self._check_open()
        body = bytes(data) if encoded else self.codec.encode(data)
        if key is not None:
            key = _key(key)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority < PRIORITIES:
            raise InvalidArgument(f"priority must be an int in 0..{PRIORITIES - 1}, got {priority!r}")
        hdrs = _user_headers(headers)
        if delay is not None:
            _check_seconds("delay", delay, 0.0)
        p = self._partition_for(key)
        if not delay and dedup_id is None:
            lane = self._lanes[p * LANES + priority]
            lg = lane.log or self._lane_log(lane, create=True)
            if self._bounded_py():
                self._admit(1)
            off = lg.append(body, key, hdrs or None)
            return message_id(off, p, priority)
        h = self._dedup_hash(dedup_id) if dedup_id is not None else None
        if self._bounded_py():
            if h is not None:             # a retry of a stored publish is no new message
                self._lock()
                try:
                    seen = self._state.dedup_get(h[0], h[1], _now_ms())
                finally:
                    self._unlock()
                if seen is not None:
                    return seen
            self._admit(1)
        now = _now_ms()
        self._lock()
        try:
            extra = None
            if h is not None:
                seen = self._state.dedup_get(h[0], h[1], now)
                if seen is not None:
                    return seen
                # room for the id before the message is stored: a QueueFull raised after the
                # append would make the caller's retry store it twice. The reservation is dead
                # at once (expire = now) and only this lock holder can reuse it, so the put
                # after the append finds room (it updates this entry).
                if not self._state.dedup_put(h[0], h[1], now, 0, now):
                    raise QueueFull(f"queue {self.name!r}: all {self.config['dedup_capacity']} dedup "
                                    "entries are alive; raise dedup_capacity or shorten dedup_window; "
                                    "nothing was stored")
                # dying between the append and dedup_put must not let the retry store it
                # again: the intent names the log, the record carries the id's hash
                dl = self._lanes[p * LANES + (DELAYED if delay else priority)]
                self._state.set_intent(OP_DEDUP, 0, 0, dl.index, self._lane_log(dl, create=True).end_offset, 0)
                extra = [("fq-dd", struct.pack("<QQ", *h))]
            try:
                mid = self._append_locked(p, priority, body, key, hdrs, now, delay, None, 0, extra)
            except BaseException:
                if h is not None:
                    self._copy_failed()
                raise
            if h is not None:
                exp = now + int(self.config["dedup_window"] * 1000)
                self._state.dedup_put(h[0], h[1], exp, mid, now)   # cannot fail: room was reserved
                self._state.clear_intent()
            return mid
        finally:
            self._unlock()

    def _publish_many(self, items: Iterable, *, key=None, headers=None, delay: float | None = None,
                      priority: int = 0) -> list[int]:
        """publish_many() when its compiled path (QueueCore.publish_many: a list, one
        partition, no options but the priority, the lane log open) does not apply."""
        self._check_open()
        if isinstance(items, (str, bytes, bytearray, memoryview, dict)):
            raise InvalidArgument(f"publish_many takes an iterable of messages, got {type(items).__name__}")
        bodies = [self.codec.encode(d) for d in items]
        if not bodies:
            return []
        if self._bounded_py():
            self._admit(len(bodies))          # all or nothing: the whole batch fits, or QueueFull
        if delay:
            return self._publish_many_delayed(bodies, key, headers, delay, priority)
        if key is not None:
            key = _key(key)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority < PRIORITIES:
            raise InvalidArgument(f"priority must be an int in 0..{PRIORITIES - 1}, got {priority!r}")
        hdrs = _user_headers(headers)
        p = self._partition_for(key)
        lane = self._lanes[p * LANES + priority]
        lg = lane.log or self._lane_log(lane, create=True)
        if hdrs:
            base = lg.append_batch([(b, key, hdrs) for b in bodies])
        else:
            base = lg.append_many(bodies, key)
        return [message_id(base + i, p, priority) for i in range(len(bodies))]

    def _publish_many_delayed(self, bodies, key, headers, delay, priority) -> list[int]:
        _check_seconds("delay", delay, 0.0)
        if key is not None:
            key = _key(key)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority < PRIORITIES:
            raise InvalidArgument(f"priority must be an int in 0..{PRIORITIES - 1}, got {priority!r}")
        hdrs = _user_headers(headers)
        p = self._partition_for(key)
        now = _now_ms()
        self._lock()
        try:
            return [self._append_locked(p, priority, b, key, hdrs, now, delay, None, 0, None) for b in bodies]
        finally:
            self._unlock()

    def _append_locked(self, p: int, prio: int, body, key, hdrs: list, now: int, delay: float | None,
                       mid: int | None, deliveries: int, extra: list | None) -> int:
        """Append a message (under the state lock). Delayed messages go to the delayed lane
        with their due time and are tracked in order; returns the message id."""
        if delay:
            lane = self._lanes[p * LANES + DELAYED]
            lg = self._lane_log(lane, create=True)
            end = lg.end_offset
            mid = message_id(end, p, DELAYED) if mid is None else mid
            # 0.001: _nack's "again at once" that keeps an error; else never before the delay
            due = now + 1 if delay <= 0.001 else _due_ms(delay)
            h = [("fq-id", _U64.pack(mid)), ("fq-due", _U64.pack(due)),
                 ("fq-prio", bytes((prio,))), ("fq-pub", _U64.pack(now))]
            if deliveries:
                h.append(("fq-del", _U32.pack(deliveries)))
            off = lg.append(body, key, h + (extra or []) + hdrs)
            if mid >> 12 != off and (mid & 0xF) == DELAYED and extra is None and deliveries == 0:
                # another writer appended between end_offset and our append (only possible for a
                # log used outside the queue): the id must name our record
                raise CorruptRecord(f"queue {self.name!r}: delayed lane {lane.path} was written by "
                                    "something other than the queue", lane.path)
            self._track_delayed(lane)
            return mid
        lane = self._lanes[p * LANES + prio]
        lg = lane.log or self._lane_log(lane, create=True)
        if mid is None and not extra and not deliveries:
            return message_id(lg.append(body, key, hdrs or None), p, prio)
        h = [("fq-id", _U64.pack(mid)), ("fq-pub", _U64.pack(now))] if mid is not None else []
        if deliveries:
            h.append(("fq-del", _U32.pack(deliveries)))
        off = lg.append(body, key, h + (extra or []) + hdrs)
        return mid if mid is not None else message_id(off, p, prio)

    def _track_delayed(self, lane: _Lane) -> None:
        """Track the delayed lane's records not yet in queue.state (in order; stops when
        the delay window is full: the rest wait there, never delivered early)."""
        st = self._state
        lg = lane.log
        if lg is None:
            return
        speo = st.lane(lane.index)[1]
        end = lg.end_offset
        while speo < end:
            rec = lg.get(speo)
            due = _hdr_u64(rec.headers, "fq-due")
            if due is None:
                raise CorruptRecord(f"queue {self.name!r}: delayed record {speo} of {lane.path} has "
                                    "no fq-due header", lane.path)
            if not st.delay_track(lane.index, speo, due):
                return
            speo += 1

    @staticmethod
    def _dedup_hash(dedup_id) -> tuple[int, int]:
        if isinstance(dedup_id, str):
            dedup_id = dedup_id.encode()
        elif not isinstance(dedup_id, (bytes, bytearray)):
            raise InvalidArgument(f"dedup_id must be str or bytes, got {type(dedup_id).__name__}")
        if not dedup_id:
            raise InvalidArgument("dedup_id must not be empty")
        d = hashlib.blake2b(bytes(dedup_id), digest_size=16).digest()
        h1, h2 = struct.unpack("<QQ", d)
        return (h1 or 1, h2)

    # -- receiving ------------------------------------------------------------------------

    def _claim_session(self) -> int:
        """Claim a free session slot: one whose lock file no live process holds."""
        sdir = os.path.join(self.dir, "sessions")
        with os_errors("open queue sessions", sdir):
            os.makedirs(sdir, exist_ok=True)
        n = self.config["max_sessions"]
        deadline = time.monotonic() + 1.0
        while True:
            for idx in range(n):
                fd = self._try_session_lock(sdir, idx)
                if fd < 0:
                    continue
                self._lock()
                try:
                    self._reap_locked(idx)
                    self._state.session_claim(idx, os.getpid(), _now_ms())
                finally:
                    self._unlock()
                self._session_fd = fd
                self._session = idx
                return idx
            # a receiver reaping a dead session holds its flock for a moment: look again
            if time.monotonic() >= deadline:
                raise QueueFull(f"queue {self.name!r}: all {n} consumer sessions are held by live processes; "
                                "raise max_sessions")
            time.sleep(0.002)

    @staticmethod
    def _try_session_lock(sdir: str, idx: int) -> int:
        path = os.path.join(sdir, f"{idx}.lock")
        with os_errors("open queue session lock", path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if _storage.flock(fd, True, False):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return -1

    def _if_session_dead(self, idx: int, fn: Callable[[], Any]) -> bool:
        """Call ``fn()`` holding session ``idx``'s lock when no live process holds it (so
        none claims it meanwhile); False, without calling it, when one does."""
        fd = self._try_session_lock(os.path.join(self.dir, "sessions"), idx)
        if fd < 0:
            return False
        try:
            fn()
        finally:
            _storage.funlock(fd)
            os.close(fd)
        return True

    def _reap_locked(self, idx: int) -> int:
        """Session idx's process is gone: every message it held is available again."""
        n = 0
        now = _now_ms()
        for lane in self._lanes:
            if lane.prio != DELAYED:
                n += self._state.expire(lane.index, now, idx)
        self._state.session_release(idx)
        return n

    def _check_liveness(self) -> None:
        """Find sessions with messages in flight whose process died; free their messages."""
        held = self._state.sessions_in_flight()
        held.pop(self._session, None)
        if not held:
            return
        sdir = os.path.join(self.dir, "sessions")
        for idx in held:
            fd = self._try_session_lock(sdir, idx)
            if fd < 0:
                continue                       # alive
            try:
                self._lock()
                try:
                    self._reap_locked(idx)
                finally:
                    self._unlock()
            finally:
                _storage.funlock(fd)
                os.close(fd)

    def _maintain_locked(self, now: int) -> None:
        """Promote due delayed messages and expire ended leases (under the lock)."""
        st = self._state
        while True:
            top = st.heap_peek()
            if top is None or top[0] > now:
                break
            due, src, offset = top
            slot = st.slot(src, offset)
            if slot is None or slot[0] != WAITING:
                st.heap_pop()                 # left by a holder that died after settling it
                continue
            lane = self._lanes[src]
            rec = lane.log.get(offset) if lane.log is not None else self._lane_log(lane).get(offset)
            hs = rec.headers
            prio = _hdr(hs, "fq-prio")
            prio = prio[0] if prio else 0
            dst = self._lanes[lane.partition * LANES + prio]
            dlg = dst.log or self._lane_log(dst, create=True)
            carry = [(k, bytes(v) if v is not None else None) for k, v in hs
                     if k not in ("fq-due", "fq-prio", "fq-src")]
            st.set_intent(OP_PROMOTE, src, offset, dst.index, dlg.end_offset, 0)
            try:
                dlg.append(rec.value, rec.key, [("fq-src", _U64.pack((src << 48) | offset))] + carry)
            except BaseException as e:
                self._copy_failed()
                if isinstance(e, DiskFull):
                    break                     # promoted when there is room; receive goes on
                raise
            st.heap_pop()
            st.clear_intent()
        if now >= self._next_expire_ms:
            for i in self._live_ids:
                st.expire(i, now)
            self._next_expire_ms = now + 5

    def _receive(self, max_messages: int = 1, wait: float | None = None) -> list[Message]:
        """receive() when its compiled path (QueueCore.receive) did not return messages:
        checks the arguments, claims a session, waits."""
        if type(max_messages) is not int or not 0 < max_messages <= 1 << 20:
            check_int("max_messages", max_messages, 1, 1 << 20)
        if wait is not None and (type(wait) not in (int, float) or not 0 <= wait < 1e12):
            _check_seconds("wait", wait, 0.0)
        if self._closed:
            self._check_open()
        if self._session < 0:
            with self._mutex:
                if self._session < 0:
                    self._claim_session()
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            seen = self._notifier.value
            msgs = self._take(max_messages)
            if msgs:
                return msgs
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return []
            timeout = self.liveness_interval
            if deadline is not None:
                timeout = min(timeout, deadline - now)
            top = self._state.heap_peek()      # unlocked: only a hint, the wait stays capped
            if top is not None:                # wake when the next delayed message is due
                timeout = min(timeout, max(top[0] / 1000 - time.time(), 0.0001))
            self._notifier.wait(seen, timeout)

    def _housekeeping(self, mono: float) -> None:
        """Every liveness_interval: dead sessions, lanes other processes opened, delayed
        records left untracked (a publisher died between its append and tracking it, or
        the delay window was full); every reclaim_interval: space."""
        self._next_housekeeping = mono + self.liveness_interval
        self._check_liveness()
        self._drain_tick(_now_ms())
        if self._state.limits()[2]:
            self._note_depth(self._depth_fast())
        if mono >= self._next_scan:
            self._next_scan = mono + 0.05
            before = sum(lane.log is not None for lane in self._lanes)
            self._scan_lanes()
            for lane in self._lanes:
                if lane.prio == DELAYED and lane.log is None:
                    self._lane_log(lane)
            if sum(lane.log is not None for lane in self._lanes) != before:
                self._relist()
        delayed = [lane for lane in self._lanes if lane.prio == DELAYED and lane.log is not None]
        if delayed:
            st = self._state
            self._lock()
            try:
                for lane in delayed:
                    if lane.log.end_offset > st.lane(lane.index)[1]:
                        self._track_delayed(lane)
            finally:
                self._unlock()
        if mono >= self._next_reclaim:
            self._next_reclaim = mono + self.reclaim_interval
            self.reclaim()

    def _relist(self) -> None:
        """Recompute the open priority lanes in receive order (rows of one priority)."""
        self._live_rows = [[lane for lane in row if lane.log is not None] for row in self._order]
        self._live_rows = [row for row in self._live_rows if row]
        self._live = [lane for row in self._live_rows for lane in row]
        self._live_ids = [lane.index for lane in self._live]
        one = self.partitions == 1
        self._set_fast_lanes(self._live if one and not self.ordered else [],
                             [lane.log for lane in self._lanes[:PRIORITIES]] if one else [])
        self._sync_bound_logs()

    def _sync_bound_logs(self) -> None:
        self._set_bound_logs([lane.log for lane in self._lanes])

    def _take(self, max_messages: int) -> list[Message]:
        st = self._state
        mono = time.monotonic()
        if mono >= self._next_housekeeping:
            self._housekeeping(mono)
        got = self._take_fast(max_messages)  # nothing to promote or expire: all compiled
        if got is not None:
            return got
        now = _now_ms()
        lease = self._lease_ms
        self._lock()
        try:
            if st.heap_len or now >= self._next_expire_ms:
                self._maintain_locked(now)
            if self.ordered:
                pairs: list = []
                self._acquire_ordered(pairs, max_messages, next(self._rr), now, lease)
                live = [p[0] for p in pairs]
                got = [(k, p[1], p[2]) for k, p in enumerate(pairs)]
            elif self.partitions == 1:
                live = self._live
                got = st.take(self._live_ids, [lane.log.end_offset for lane in live], max_messages,
                              self._session, now, lease)
            else:
                rr = next(self._rr)
                live = []
                for row in self._live_rows:       # partitions round-robin within a priority
                    k = rr % len(row)
                    live += row[k:] + row[:k]
                got = st.take([lane.index for lane in live], [lane.log.end_offset for lane in live],
                              max_messages, self._session, now, lease)
        finally:
            self._unlock()
        return self._messages(got, live)

    def _messages(self, taken: list, live: list) -> list[Message]:
        """Read and build the messages ``take`` leased: [(index into live, offset, deliveries)]."""
        try:
            return self._read_messages(taken, live)
        except CorruptRecord:
            self._release_readable([(live[i], o, d) for i, o, d in taken])
            raise

    def _read_messages(self, taken: list, live: list) -> list[Message]:
        if len(taken) == 1 and self.max_deliveries is None:     # receive() one at a time
            i, off, d = taken[0]
            lane = live[i]
            with self._mutex:                 # the lane's reader, where the last read ended
                r = lane.reader
                rec = next(r, None) if r is not None and r.next_offset == off and off < r.end else None
                if rec is None or rec.offset != off:
                    rec = self._read_run(lane, off, 1)[0]
            if not rec.headers:
                key = rec.key
                value = rec.value
                return [Message(self, lane.index, off, d, self._session, (off << 12) | (lane.partition << 4) | lane.prio,
                                None if key is None else bytes(key), b"" if value is None else bytes(value), (),
                                rec.timestamp, d)]
            return self._messages_of_run([(lane, off, d)], [rec])
        got = [(live[i], o, d) for i, o, d in taken]
        n = len(got)
        if not n:
            return []
        # A lane's offsets come out strictly increasing and lanes one after another, so
        # when the first and last share a lane and span n offsets, it is one run.
        if got[0][0] is got[-1][0] and got[-1][1] - got[0][1] == n - 1:
            return self._messages_of_run(got, self._read_run(got[0][0], got[0][1], n))
        out = []
        i = 0
        while i < n:                         # runs of consecutive offsets: one reader each
            lane, o, _ = got[i]
            j = i + 1
            while j < n and got[j][0] is lane and got[j][1] == got[j - 1][1] + 1:
                j += 1
            out += self._messages_of_run(got[i:j], self._read_run(lane, o, j - i))
            i = j
        return out

    def _messages_of_run(self, got: list, recs: list) -> list[Message]:
        lane = got[0][0]
        li = lane.index
        pl = (lane.partition << 4) | lane.prio
        sess = self._session
        plain = self.max_deliveries is None
        out = []
        for (_, off, d), rec in zip(got, recs):
            if plain and not rec.headers:    # a plain publish: nothing to parse
                key = rec.key
                value = rec.value
                out.append(Message(self, li, off, d, sess, (off << 12) | pl, None if key is None else bytes(key),
                                   b"" if value is None else bytes(value), (), rec.timestamp, d))
            else:
                m = self._message(lane, off, d, rec)
                if m is not None:
                    out.append(m)
        return out

    def _acquire_ordered(self, got: list, max_messages: int, rr: int, now: int, lease: int) -> None:
        """ordered=True: at most one message of a partition in flight, and a lane's head
        that waits out a nack delay holds the lane — so the messages of one key (one
        partition) are delivered one at a time, in publish order (SQS FIFO groups). A lane
        settles in order then, so its only AVAILABLE slot can be its first (spso)."""
        st = self._state
        n = self.partitions
        for j in range(n):
            if len(got) >= max_messages:
                return
            p = (rr + j) % n
            lanes = [lane for lane in self._lanes[p * LANES:p * LANES + PRIORITIES] if lane.log is not None]
            if any(st.lane(lane.index)[3] for lane in lanes):
                continue                            # one in flight already
            for lane in reversed(lanes):            # priorities high to low
                spso, _, avail = st.lane(lane.index)[:3]
                if avail:
                    head = st.slot(lane.index, spso)
                    if head is not None and head[0] == AVAILABLE and head[3] > now:
                        continue                    # the head waits for its nack delay
                o = st.acquire(lane.index, lane.log.end_offset, self._session, now, lease)
                if o >= 0:
                    got.append((lane, o, st.last_deliveries))
                    break

    def _release_readable(self, got: list) -> None:
        """Reading what a receive leased failed on a damaged record: hand back every leased
        message that reads (the caller gets none of them), so one damaged record never holds
        the others back. The damaged ones stay leased: their error comes back when the
        lease ends."""
        good = []
        for lane, o, d in got:
            try:
                lane.log.get(o)
            except FastqError:                   # damaged, or beyond the log's end
                continue
            good.append((lane.index, o, d))
        self._lock()
        try:
            for lane_index, o, d in good:
                self._state.settle(lane_index, o, d, self._session, AVAILABLE, 0)
        finally:
            self._unlock()

    def _read_run(self, lane: _Lane, first: int, count: int) -> list:
        """Records first..first+count-1 of a lane. A reader per lane is kept where the last
        run ended: a batch stored by publish_many is one RecordBatch, and reading message
        by message through get() would walk it from its start every time."""
        with self._mutex:
            r = lane.reader
            if r is None or r.next_offset != first or r.end < first + count:
                r = lane.reader = lane.log.read(first)
            recs = r.read_many(count)
        if len(recs) != count:
            raise CorruptRecord(f"queue {self.name!r}: lane log {lane.path} ends before offset "
                                f"{first + count - 1}, which queue.state has delivered", lane.path)
        return recs

    def _message(self, lane: _Lane, offset: int, deliveries: int, rec) -> Message | None:
        hs = rec.headers
        if not hs and (self.max_deliveries is None or deliveries <= self.max_deliveries):
            key = rec.key                     # the common case: a plain publish, no headers
            value = rec.value
            return Message(self, lane.index, offset, deliveries, self._session,
                           (offset << 12) | (lane.partition << 4) | lane.prio,
                           None if key is None else bytes(key), b"" if value is None else bytes(value),
                           (), rec.timestamp, deliveries)
        mid = _hdr_u64(hs, "fq-id")
        if mid is None:
            mid = message_id(offset, lane.partition, lane.prio)
        pub = _hdr_u64(hs, "fq-pub")
        carried = _hdr(hs, "fq-del")
        total = deliveries + (_U32.unpack(carried)[0] if carried is not None and len(carried) == 4 else 0)
        key = rec.key
        m = Message(self, lane.index, offset, deliveries, self._session, mid,
                    bytes(key) if key is not None else None, bytes(rec.value) if rec.value is not None else b"",
                    [(k, bytes(v) if v is not None else None) for k, v in hs] if hs else [],
                    pub if pub is not None else rec.timestamp, total)
        if self.max_deliveries is not None and total > self.max_deliveries:
            err = m.last_error or "visibility timeout ran out (the consumer died, or was too slow)"
            m.delivery_count = total - 1        # this delivery never happened
            self._dead_letter(m, f"delivered {total - 1} times, max_deliveries={self.max_deliveries}; "
                                 f"last error: {err}")
            return None
        return m

    def messages(self, wait: float | None = None) -> Iterator[Message]:
        """Iterate over messages as they come (ack each); ends when ``wait`` seconds pass
        with none (None: never ends; stop with ``break``)."""
        while True:
            got = self.receive(1, wait)
            if not got:
                return
            yield got[0]

    __iter__ = messages

    # -- settling -------------------------------------------------------------------------

    def _own(self, m: Message) -> None:
        if m._q is not self:
            raise InvalidArgument(f"{m!r} was not received through this handle of queue {self.name!r}")
        if m._session < 0:
            raise LeaseLost(f"message {m.id} of queue {self.name!r} was peeked, not received: it has "
                            "no lease to settle")

    def _settle(self, m: Message, state: int, not_before: int, lost: str = "") -> None:
        """Settle m's lease; LeaseLost (saying ``lost``, or that the lease ended or was
        settled) when it is not current. msync under "group"/"always"."""
        if m._q is not self or m._session < 0:
            self._own(m)
        if self._closed:
            self._check_open()
        ok = self._state.settle_now(m._lane, m._offset, m._deliveries, m._session, state, not_before)
        if ok is None:                       # a repair is owed: the careful way
            self._lock()
            try:
                ok = self._state.settle(m._lane, m._offset, m._deliveries, m._session, state, not_before)
            finally:
                self._unlock()
        if not ok:
            raise LeaseLost(f"message {m.id} of queue {self.name!r}: " + (lost or (
                f"its lease (delivery {m.delivery_count}) ended or it was settled already; nothing was "
                "changed")))
        m._settled = True
        if self._sync:
            self._state.sync()

    def ack_many(self, messages: Iterable[Message]) -> None:
        """Ack several messages under one lock. Raises LeaseLost naming those whose lease
        was no longer current, after acking all the others."""
        ms = messages if isinstance(messages, list) else list(messages)
        lost = self._settle_many(ms, ACKED)       # compiled, one lock; None: the careful way
        if lost is None:
            for m in ms:
                if m._q is not self or m._session < 0:
                    self._own(m)
            lost = self._state_settle_many(ms, ACKED)
        if self._sync and len(lost) < len(ms):
            self._state.sync()
        if lost:
            raise LeaseLost(f"queue {self.name!r}: the leases of {len(lost)} message(s) had ended or "
                            f"they were settled already (ids {[m.id for m in lost[:10]]}); the other "
                            f"{len(ms) - len(lost)} were acked")

    def _state_settle_many(self, ms: list, state: int) -> list:
        settle = self._state.settle
        lost = []
        self._lock()
        try:
            for m in ms:
                if settle(m._lane, m._offset, m._deliveries, m._session, state, 0):
                    m._settled = True
                else:
                    lost.append(m)
        finally:
            self._unlock()
        return lost

    def _nack(self, m: Message, delay: float, error) -> None:
        if self.ordered:                     # stays at the head of its lane: order holds
            self._settle(m, AVAILABLE, _due_ms(delay) if delay else 0)
            self._notifier.bump()
            return
        if not delay and error is None:
            self._settle(m, AVAILABLE, 0)
            self._notifier.bump()
            return
        if delay < 1.0 and error is None:
            self._settle(m, AVAILABLE, _due_ms(delay))
            return
        # a long delay, or an error to keep: copy it to the delayed lane and settle this one,
        # so a waiting message does not hold a slot of the lane's window
        self._own(m)
        extra = []
        if error is not None:
            text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            extra.append(("fq-err", text.encode("utf-8", "replace")[:4096]))
        lane = self._lanes[m._lane]
        now = _now_ms()
        self._lock()
        try:
            st = self._state
            slot = st.slot(m._lane, m._offset)
            if slot is None or slot[0] != ACQUIRED or slot[1] != m._deliveries or slot[2] != m._session:
                raise LeaseLost(f"message {m.id} of queue {self.name!r}: its lease ended or it was settled "
                                "already; nothing was changed")
            dl = self._lanes[lane.partition * LANES + DELAYED]
            dlg = self._lane_log(dl, create=True)
            st.set_intent(OP_MOVE, m._lane, m._offset, dl.index, dlg.end_offset, m._deliveries)
            src = [("fq-src", _U64.pack((m._lane << 48) | m._offset))]
            try:
                self._append_locked(lane.partition, lane.prio, m.body, m.key, list(m.headers.items()), now,
                                    max(delay, 0.001), m.id, m.delivery_count, src + extra)
            except BaseException:
                self._copy_failed()
                raise
            st.settle(m._lane, m._offset, m._deliveries, m._session, ACKED, 0)   # lives on as the copy
            st.clear_intent()
        finally:
            self._unlock()
        m._settled = True
        if self._sync:
            self._state.sync()

    def _extend(self, m: Message, seconds: float) -> None:
        self._own(m)
        self._lock()
        try:
            ok = self._state.extend(m._lane, m._offset, m._deliveries, m._session,
                                    _now_ms() + int(seconds * 1000))
        finally:
            self._unlock()
        if not ok:
            raise LeaseLost(f"message {m.id} of queue {self.name!r}: its lease ended or it was settled "
                            "already; it cannot be extended")

    def _reject(self, m: Message, reason) -> None:
        text = None if reason is None else (reason if isinstance(reason, str)
                                            else f"{type(reason).__name__}: {reason}")
        self._dead_letter(m, f"rejected: {text}" if text else "rejected")

    def _dead_letter(self, m: Message, why: str) -> None:
        """Publish to the dead-letter queue (deduplicated by message and delivery, so a
        crash between the two steps never stores it twice), then settle as dead."""
        self._own(m)
        if self.dead_letter is not None:
            self._dead_letter_queue()._publish_dead(m, m.body, m.key, dict(m.headers), why,
                                                    f"dlq:{self.name}:{m.id}:{m._lane}:{m._offset}")
        self._settle(m, ARCHIVED, -1, "its lease ended before it was dead-lettered; the other delivery stands")

    def _dead_letter_queue(self) -> "Queue":
        if self._dlq is None or self._dlq._closed:
            self._dlq = self.broker.queue(self.dead_letter, codec=self.codec)
        return self._dlq

    def _publish_dead(self, m: Message, body: bytes, key, headers: dict, why: str, dedup_id: str) -> int:
        """Publish ``body`` with ``key`` to this (dead-letter) queue for message ``m`` of another
        queue, with ``headers`` and the dlq-* headers (docs/QUEUES.md); ``dedup_id`` makes a second
        publish of the same dead letter (after a crash) store nothing. The task queue's
        dead letters (:mod:`fastq.tasks.deadletter`) come this way too."""
        headers.update({"dlq-source-queue": m.queue, "dlq-original-id": str(m.id),
                        "dlq-delivery-count": str(m.delivery_count), "dlq-reason": why[:4096],
                        "dlq-published-ms": str(int(m.published_at * 1000)),
                        "dlq-dead-lettered-ms": str(_now_ms())})
        return self._publish_raw(body, key, headers, dedup_id=dedup_id)

    def _publish_raw(self, body: bytes, key, headers: dict, dedup_id: str) -> int:
        """Publish already-encoded bytes (dead-lettering and redrive)."""
        raw = self.codec
        try:
            self.codec = resolve_codec("raw")
            return self.publish(body, key=key, headers=headers, dedup_id=dedup_id)
        finally:
            self.codec = raw

    # -- inspection and administration ----------------------------------------------------

    def depth(self) -> QueueDepth:
        """Counts of what the queue holds (see :class:`QueueDepth`); a snapshot."""
        return QueueDepth(*self._count()[:5])

    def _count(self, due: bool = False) -> _Count:
        """depth()'s counts, and with ``due`` the runnable ones: records never delivered
        plus AVAILABLE ones whose nack delay has passed (else runnable is 0)."""
        self._check_open()
        self._scan_lanes()
        ready = delayed = in_flight = dead = runnable = 0
        now_ms = _now_ms()
        oldest = None
        self._lock()
        try:
            st = self._state
            for lane in self._lanes:
                if lane.prio == DELAYED:
                    lg = self._lane_log(lane)
                    spso, speo, avail, acq, _, _, dd = st.lane(lane.index)
                    delayed += avail + ((lg.end_offset - speo) if lg is not None else 0)
                    dead += dd
                    continue
                spso, speo, avail, acq, _, _, dd = st.lane(lane.index)
                lg = lane.log
                end = lg.end_offset if lg is not None else speo
                ready += avail + max(0, end - speo)
                if due:
                    runnable += max(0, end - speo) + (st.available_due(lane.index, now_ms) if avail else 0)
                in_flight += acq
                dead += dd
                if lg is not None and spso < end:
                    try:
                        rec = lg.get(max(spso, lg.start_offset))
                    except CorruptRecord:
                        continue                # damaged (receive reports it): its age is unknown
                    pub = _hdr_u64(rec.headers, "fq-pub")
                    ts = pub if pub is not None else rec.timestamp
                    del rec
                    oldest = ts if oldest is None else min(oldest, ts)
        finally:
            self._unlock()
        age = max(0.0, (_now_ms() - oldest) / 1000.0) if oldest is not None else 0.0
        return _Count(ready, delayed, in_flight, dead, age, runnable)

    def __len__(self) -> int:
        d = self.depth()
        return d.ready + d.delayed + d.in_flight

    def peek(self, max_messages: int = 10) -> list[Message]:
        """Up to ``max_messages`` ready messages in delivery order, without leasing them
        (their ack/nack raise LeaseLost)."""
        check_int("max_messages", max_messages, 1, 1 << 20)
        self._check_open()
        self._scan_lanes()
        out: list[Message] = []
        self._lock()
        try:
            st = self._state
            for row in self._order:
                for lane in row:
                    lg = lane.log
                    if lg is None:
                        continue
                    spso, speo = st.lane(lane.index)[:2]
                    o = spso
                    end = lg.end_offset
                    while o < end and len(out) < max_messages:
                        slot = st.slot(lane.index, o) if o < speo else (AVAILABLE, 0, 0, 0)
                        if slot is not None and slot[0] == AVAILABLE:
                            rec = lg.get(o)
                            hs = [(k, bytes(v) if v is not None else None) for k, v in rec.headers]
                            mid = _hdr_u64(hs, "fq-id")
                            pub = _hdr_u64(hs, "fq-pub")
                            out.append(Message(self, lane.index, o, -1, -1,
                                               mid if mid is not None else message_id(o, lane.partition, lane.prio),
                                               bytes(rec.key) if rec.key is not None else None,
                                               bytes(rec.value) if rec.value is not None else b"", hs,
                                               pub if pub is not None else rec.timestamp, slot[1]))
                            del rec
                        o += 1
        finally:
            self._unlock()
        return out

    def unsettled(self) -> list[bytes]:
        """The raw bodies of every message not settled — ready, delayed or in flight — in
        no order. The lane logs are read without the lock, which is taken per chunk of
        records only to look at their slots; so a message that moves lanes meanwhile
        (coming due, a nack) may be seen twice or not at all: for a sweep that must only
        mostly find a message (fastq.tasks' repair), not for accounting."""
        self._check_open()
        self._scan_lanes()
        out: list[bytes] = []
        for lane in self._lanes:
            lg = lane.log
            if lg is None:
                continue
            self._lock()
            try:
                spso = self._state.lane(lane.index)[0]
            finally:
                self._unlock()
            end = lg.end_offset
            pos = max(spso, lg.start_offset)
            while pos < end:
                chunk = [(rec.offset, bytes(rec.value) if rec.value is not None else b"")
                         for rec in lg.read(pos, min(end, pos + 4096))]
                if not chunk:
                    break
                pos = chunk[-1][0] + 1
                self._lock()
                try:
                    st = self._state
                    speo = st.lane(lane.index)[1]
                    for off, body in chunk:
                        if off < speo:
                            slot = st.slot(lane.index, off)
                            if slot is not None and slot[0] in (ACKED, ARCHIVED):
                                continue
                        out.append(body)
                finally:
                    self._unlock()
        return out

    def purge(self) -> int:
        """Drop every message that is ready or delayed (messages in flight stay with their
        consumers, as in SQS). Returns how many were dropped."""
        self._check_open()
        self._scan_lanes()
        if self._session < 0:
            with self._mutex:
                if self._session < 0:
                    self._claim_session()
        n = 0
        self._lock()
        try:
            st = self._state
            now = _now_ms()
            far = now + 10**12
            for lane in self._lanes:
                lg = self._lane_log(lane)
                if lg is None:
                    continue
                if lane.prio == DELAYED:
                    self._track_delayed(lane)
                    spso, speo = st.lane(lane.index)[:2]
                    for o in range(spso, speo):
                        n += st.settle_any(lane.index, o, ACKED)
                    continue
                spso, speo = st.lane(lane.index)[:2]
                for o in range(spso, speo):
                    n += st.settle_any(lane.index, o, ACKED)
                end = lg.end_offset
                while True:
                    o = st.acquire(lane.index, end, self._session, far, 0)
                    if o < 0:
                        break
                    st.settle(lane.index, o, st.last_deliveries, self._session, ACKED, 0)
                    n += 1
        finally:
            self._unlock()
        return n

    def reclaim(self) -> int:
        """Delete lane log segments that hold only settled messages; returns how many.
        Receivers call it on their own about once a second."""
        self._check_open()
        n = 0
        for lane in self._lanes:
            lg = lane.log
            if lg is None:
                continue
            spso = self._state.lane(lane.index)[0]
            if spso > lg.start_offset:
                n += lg.delete_before(spso)
        return n

    def redrive(self, to: "Queue | str | None" = None, max_messages: int | None = None) -> int:
        """Move this (dead-letter) queue's messages to ``to`` (a queue or its name; default:
        each message's ``dlq-source-queue``). Each is published there, then acked here; a
        crash in between publishes it once (deduplicated). Returns how many moved."""
        moved = 0
        targets: dict[str, Queue] = {}
        while max_messages is None or moved < max_messages:
            got = self.receive(1, wait=0)
            if not got:
                break
            m = got[0]
            dest = to
            if dest is None:
                dest = m.headers.get("dlq-source-queue", b"").decode() or None
                if dest is None:
                    m.nack()
                    raise InvalidArgument(f"message {m.id} of {self.name!r} has no dlq-source-queue header; "
                                          "pass to=")
            if isinstance(dest, str):
                dest = targets.get(dest) or targets.setdefault(dest, self.broker.queue(dest, codec=self.codec))
            hdrs = {k: v for k, v in m.headers.items() if not k.startswith("dlq-")}
            dest._publish_raw(m.body, m.key, hdrs, dedup_id=f"redrive:{self.name}:{m.id}:{m._lane}:{m._offset}")
            m.ack()
            moved += 1
        return moved

    def subscribe(self, handler: Callable[[Message], Any], *, concurrency: int = 1,
                  guarantee: str = "at-least-once", max_messages: int = 1,
                  backoff=None) -> "Subscription":
        """Call ``handler(message)`` for each message in ``concurrency`` threads until
        ``stop()``. ``guarantee="at-least-once"``: ack after the handler returns, nack
        with the exception as the error when it raises, to come back after ``backoff``
        (None: exponential from 0.1 s to 60 s with full jitter; seconds; or a callable
        delivery count -> seconds, see :func:`fastq.queue.subscription.exponential_backoff`);
        ``"at-most-once"``: ack before calling it. ``"exactly-once"``: the handler is
        called as ``handler(message, tx)`` and publishes through ``tx``
        (:class:`fastq.ExactlyOnce`: ``publish`` / ``publish_many`` to topics, ``enqueue``
        to queues); those outputs and the ack happen together or not at all, and a
        redelivered message whose outputs were committed is acked without calling the
        handler again (see :mod:`fastq.queue.exactly_once`). Returns a :class:`Subscription`."""
        return Subscription(self, handler, concurrency=concurrency, guarantee=guarantee,
                            max_messages=max_messages, backoff=backoff)

    # -- lifetime -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def set_rate_limit(self, rate_limit) -> None:
        """Limit publishing through this handle (``broker.queue(name, rate_limit=...)``):
        a :class:`fastq.RateLimiter`, or ``(points, duration)`` for limiter
        ``queue.<name>.publish`` shared by every process; None removes it. Over the limit
        ``publish``/``publish_many`` raise :class:`fastq.RateLimited` and store nothing
        (:func:`fastq.flow.limiter.limit_publish`)."""
        limit_publish(self, rate_limit)

    def close(self) -> None:
        """Release this handle: messages it holds become available to others at once."""
        with self._mutex:
            if self._closed:
                return
            unlimit_publish(self)
            if self._session >= 0:
                try:
                    self._lock()
                    try:
                        self._reap_locked(self._session)
                    finally:
                        self._unlock()
                finally:
                    _storage.funlock(self._session_fd)
                    os.close(self._session_fd)
                    self._session = -1
                    self._session_fd = -1
            self._closed = True
            self._set_fast_lanes([], [])
            self._set_bound_logs([])
            errors = []
            for lane in self._lanes:
                lane.reader = None
                if lane.log is not None:
                    try:
                        lane.log.close()
                    except BufferError as e:
                        errors.append(e)
                    lane.log = None
            self._state.close()
            self._notifier.close()
            if errors:
                raise errors[0]

    def _abandon_after_fork(self) -> None:
        """In a forked child: drop this process's copies without touching the parent's
        locks (the session flock stays the parent's: we only close our descriptor)."""
        self._forked = True
        self._closed = True
        self._set_fast_lanes([], [])
        self._set_bound_logs([])
        self._mutex = threading.RLock()
        self._holder = None
        for lane in self._lanes:
            lane.reader = None
            if lane.log is not None:
                lane.log._abandon_after_fork()
                lane.log = None
        if self._session_fd >= 0:
            try:
                os.close(self._session_fd)
            except OSError:
                pass
            self._session_fd = -1
            self._session = -1
        self._state.close()

    def __enter__(self) -> "Queue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<fastq.Queue {self.name!r} partitions={self.partitions}{' closed' if self._closed else ''}>"


def create_state(path: str, cfg: dict) -> None:
    """Write a fresh queue.state for ``cfg`` (atomically: a temp file renamed)."""
    tmp = path + ".tmp"
    _storage.queue_state_create(tmp, cfg["partitions"], cfg["max_in_flight"], cfg["max_delayed"],
                                cfg["max_sessions"], cfg["dedup_capacity"])
    os.replace(tmp, path)
    _storage.fsync_dir(os.path.dirname(path))
