"""Topics: named sets of partitions, each partition a :class:`fastq.Log`.

Process-safety: any number of processes publish to and read from the same topic and
partition; each partition log serializes appends with its shared-memory lock.
Thread-safety: a Topic may be shared by threads.
"""
from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import weakref
from typing import TYPE_CHECKING, Iterator, Sequence

from .._core import _storage
from ..errors import Closed, InvalidArgument, ReadOnly, UsedAfterFork
from ..log.columns import DEFAULT_MAX_RECORDS, Columns
from ..log.compaction import compact_log
from ..log.log import Log, Record
from .consumer import Consumer
from .metadata import BatchMetadata
from .producer import IdempotentProducer, Producer

if TYPE_CHECKING:
    from .broker import Broker

__all__ = ["Topic", "RecordMetadata", "BatchMetadata"]

ISOLATION_LEVELS = ("read_uncommitted", "read_committed")   # Kafka's isolation.level
STICKY_BATCH_BYTES = _storage.STICKY_BATCH_BYTES   # Kafka's batch.size: unkeyed records stick this long


RecordMetadata = _storage.RecordMetadata   # (topic, partition, offset, timestamp), tuple-like


_key_bytes = _storage.key_bytes


class Topic(_storage.TopicCore):
    """A topic of a :class:`fastq.Broker`: ``partitions`` logs under one name.

    Publishing: ``publish`` (one record; compiled, see ``TopicCore.publish``),
    ``publish_many`` (one batch), ``producer()`` (a batching producer). Reading:
    ``read(partition, offset | timestamp)`` replays a partition; ``consumer(group=...)``
    consumes with committed offsets.
    """

    def __init__(self, broker: "Broker", name: str, config: dict):
        self.broker = broker
        self.name = name
        self.config = config
        self.partitions: int = config["partitions"]
        self.durability: str = config["durability"] or broker.durability
        self.dir = os.path.join(broker.path, "topics", name)
        self._logs: list[Log | None] = [None] * self.partitions
        self._mutex = threading.RLock()
        self._closed = False
        self.readonly: bool = broker.readonly      # opened through fastq.open(readonly=True)
        self._forked = False
        self._notifier = _storage.Notifier(os.path.join(self.dir, "notify"), self.readonly)
        self._producers: weakref.WeakSet = weakref.WeakSet()   # closed (flushed) by close()
        self._sticky = random.randrange(self.partitions)
        self._sticky_bytes = 0
        self._txn_checked = -1e9             # monotonic time read_committed last aborted expired ones

    # -- partitions ---------------------------------------------------------------------

    def _check_partition(self, partition) -> int:
        if not isinstance(partition, int) or isinstance(partition, bool):
            raise InvalidArgument(f"partition must be an int, got {type(partition).__name__}")
        if not 0 <= partition < self.partitions:
            raise InvalidArgument(f"partition {partition} out of range: topic {self.name!r} has "
                                  f"partitions 0..{self.partitions - 1}")
        return partition

    def _check_closed(self) -> None:
        if self._closed:
            if self._forked:
                raise UsedAfterFork(f"topic {self.name!r} was opened before fork(): it belongs to "
                                    "the parent; open the broker again in the child")
            raise Closed(f"topic {self.name!r} is closed")

    def _abandon_after_fork(self) -> None:
        """In a forked child (see fastq.broker): release the child's copies of the logs
        and the notifier, mark the producers closed, take no lock a parent thread may
        have held at the fork."""
        self._forked = True
        self._closed = True
        self._mutex = threading.RLock()
        for p in list(self._producers):
            p._abandon_after_fork()
        for lg in self._logs:
            if lg is not None:
                lg._abandon_after_fork()
        self._logs = [None] * self.partitions
        self._notifier = None                 # unmapped with its last reference

    def log(self, partition: int) -> Log:
        """The partition's log (opened on first use, then cached)."""
        if self._closed:
            self._check_closed()
        lg = self._logs[partition] if 0 <= partition < self.partitions else None
        if lg is not None:
            return lg
        self._check_partition(partition)
        with self._mutex:
            if self._closed:                 # closed while we waited for the mutex
                self._check_closed()
            lg = self._logs[partition]
            if lg is None:
                cfg = self.config
                lg = Log(os.path.join(self.dir, str(partition)), durability=self.durability,
                         segment_bytes=cfg["segment_bytes"], max_record_bytes=cfg["max_record_bytes"],
                         retention_ms=cfg["retention_ms"], retention_bytes=cfg["retention_bytes"],
                         readonly=self.readonly)
                lg.topic_name = self.name
                lg.partition_id = partition
                lg._notifier = self._notifier
                self._logs[partition] = lg
            return lg

    def choose_partition(self, key=None, partition=None, size: int = 0) -> int:
        """The partition a record goes to: ``partition`` if given; else Kafka's default
        partitioner (murmur2 of the key, positive modulo) for a keyed record; else the
        sticky partition, which moves on after ~16 KiB (Kafka's batch.size)."""
        if partition is not None:
            return self._check_partition(partition)
        if key is not None:
            return _storage.kafka_partition(_key_bytes(key), self.partitions)
        self._sticky_bytes += size
        if self._sticky_bytes >= STICKY_BATCH_BYTES:
            self._sticky_bytes = 0
            if self.partitions > 1:
                nxt = random.randrange(self.partitions - 1)
                self._sticky = nxt if nxt < self._sticky else nxt + 1
        return self._sticky

    # -- publishing ---------------------------------------------------------------------

    def publish_many(self, values: Sequence, *, key=None, headers=None, partition: int | None = None,
                     timestamp: int | None = None) -> BatchMetadata:
        """Append many values as one batch to one partition (chosen as for ``publish``
        from ``key``/``partition``, or the sticky partition). Returns a compact
        :class:`BatchMetadata` (consecutive offsets)."""
        if timestamp is None:
            timestamp = int(time.time() * 1000)
        try:
            n = len(values)
        except TypeError:
            values = list(values)
            n = len(values)
        p = self.choose_partition(key, partition, STICKY_BATCH_BYTES)
        base = self.log(p).append_many(values, key, headers, timestamp)
        return BatchMetadata(self.name, p, base, n, timestamp)

    def producer(self, *, linger_ms: float = 5.0, batch_size: int = 16384, max_pending: int = 100_000,
                 on_delivery=None, buffer_bytes: int = 4 << 20, idempotent: bool = False,
                 transactional_id: str | None = None):
        """A batching producer: ``send()`` accumulates records in a ring buffer and the
        records of each partition are appended as one batch when ``batch_size`` bytes per
        partition are waiting or ``linger_ms`` has passed; ``flush()`` appends everything
        now (see :class:`fastq.Producer`).

        ``idempotent=True`` (implied by ``transactional_id``): a synchronous
        :class:`fastq.IdempotentProducer` instead — ``publish`` / ``publish_many``, each
        one batch, a retry stored once; ``transactional_id`` keeps its identity across
        restarts and fences the instance opened before. The batching options do not
        apply to it (InvalidArgument if given)."""

        self._check_closed()
        self._refuse_if_readonly("a producer")
        if idempotent or transactional_id is not None:
            if not isinstance(idempotent, bool):
                raise InvalidArgument(f"idempotent must be a bool, got {idempotent!r}")
            if (linger_ms, batch_size, max_pending, on_delivery, buffer_bytes) != (5.0, 16384, 100_000, None,
                                                                                     4 << 20):
                raise InvalidArgument("an idempotent producer publishes synchronously: linger_ms, "
                                      "batch_size, max_pending, on_delivery and buffer_bytes do not apply")
            p = IdempotentProducer(self, transactional_id=transactional_id)
        else:
            p = Producer(self, linger_ms=linger_ms, batch_size=batch_size, max_pending=max_pending,
                         on_delivery=on_delivery, buffer_bytes=buffer_bytes)
        with self._mutex:
            self._producers.add(p)
        return p

    # -- reading ------------------------------------------------------------------------

    def read(self, partition: int, offset: int | None = None, *, timestamp: int | None = None,
             end: int | None = None, isolation: str = "read_uncommitted") -> Iterator[Record]:
        """Replay one partition from ``offset`` (default: the earliest) or from the first
        record with timestamp >= ``timestamp``, up to ``end`` (exclusive; default: the
        end at the time of the call). Records' key and value are zero-copy memoryviews
        (see :class:`fastq.Record`).

        ``isolation`` (Kafka's ``isolation.level``; the default, as in Kafka, is
        ``"read_uncommitted"``: every record, those of open and aborted transactions
        included). ``"read_committed"``: never the records of aborted transactions, and
        stop at the partition's last stable offset — the first offset of the earliest
        transaction still open there. Transaction markers (control batches) are never
        returned."""
        self._check_partition(partition)
        if isolation not in ISOLATION_LEVELS:
            raise InvalidArgument(f"isolation={isolation!r}: expected one of {', '.join(ISOLATION_LEVELS)}")
        if offset is not None and timestamp is not None:
            raise InvalidArgument("give offset or timestamp, not both")
        lg = self.log(partition)
        if timestamp is not None:
            off = lg.offset_for_timestamp(timestamp)
            if off is None:
                return iter(())
            offset = off
        elif offset is None:
            offset = lg.start_offset
        if isolation == "read_uncommitted":
            return lg.read(offset, end)
        self._abort_expired_if_held(lg)
        return _storage._txn_reader(lg, offset, end)

    def last_stable_offset(self, partition: int) -> int:
        """The partition's last stable offset: read_committed readers stop before it (the
        first offset of its earliest open transaction; the end when none is open)."""
        self._check_partition(partition)
        return _storage._txn_lso(self.log(partition))

    def _abort_expired_if_held(self, lg) -> None:
        """An open transaction holds read_committed readers back: at most once a second,
        abort the transactions past their timeout (their process died)."""
        if _storage._txn_lso(lg) >= lg.end_offset:
            return
        now = time.monotonic()
        if now - self._txn_checked < 1.0:
            return
        self._txn_checked = now
        self.broker.abort_expired_transactions()

    def read_columns(self, partition: int, offset: int | None = None,
                     max_records: int = DEFAULT_MAX_RECORDS, end: int | None = None) -> Columns:
        """Up to ``max_records`` records of one partition from ``offset`` (default: the
        earliest) as numpy columns in Arrow's layout (see :meth:`fastq.Log.read_columns`);
        continue from the result's ``next_offset``. Needs ``fastq-broker[numpy]``."""
        self._check_partition(partition)
        lg = self.log(partition)
        return lg.read_columns(lg.start_offset if offset is None else offset, max_records, end)

    def end_offsets(self) -> dict[int, int]:
        """{partition: log end offset}."""
        return {p: self.log(p).end_offset for p in range(self.partitions)}

    def start_offsets(self) -> dict[int, int]:
        """{partition: first retained offset}."""
        return {p: self.log(p).start_offset for p in range(self.partitions)}

    def offsets_for_timestamp(self, timestamp: int) -> dict[int, int | None]:
        """{partition: first offset with timestamp >= ``timestamp``, or None}."""
        return {p: self.log(p).offset_for_timestamp(timestamp) for p in range(self.partitions)}

    def wait_any(self, positions: dict[int, int], timeout: float | None = None, spin_us: float = 50.0,
                 pacer: _storage.Pacer | None = None) -> bool:
        """Block until some partition p in ``positions`` has a record at or after
        ``positions[p]`` (True), or ``timeout`` seconds pass (False). One futex for the
        whole topic: every commit to any of its partitions bumps it. ``pacer``: adaptive
        waiting (see :class:`fastq.Pacer`); it learns the topic's commit rate."""
        deadline = None if timeout is None else time.monotonic() + timeout
        logs = [(self.log(p), off) for p, off in positions.items()]
        while True:
            seen = self._notifier.value
            for lg, off in logs:
                if lg.end_offset > off:
                    return True
            left = None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
            self._notifier.wait(seen, left, spin_us, pacer)

    def consumer(self, group: str | None = None, **options):
        """A consumer of this topic (see :class:`fastq.broker.consumer.Consumer`)."""

        if group is not None:
            self._refuse_if_readonly(f"a consumer in group {group!r} (it commits offsets)")
        return Consumer(self, group, **options)

    def _refuse_if_readonly(self, what: str) -> None:
        if self.readonly:
            raise ReadOnly(f"topic {self.name!r} was opened read-only (fastq.open(readonly=True)): "
                           f"{what} would write; read with Topic.read or a consumer without a group")

    # -- maintenance and lifetime -------------------------------------------------------

    def maintain(self, now_ms: int | None = None) -> int:
        """Apply retention (and compaction, for ``compact=True`` topics) to every
        partition. Returns the number of segments deleted."""
        self._refuse_if_readonly("retention and compaction")
        deleted = 0
        for p in range(self.partitions):
            lg = self.log(p)
            deleted += lg.enforce_retention(now_ms)
            if self.config["compact"]:

                compact_log(lg, delete_retention_ms=self.config["delete_retention_ms"], now_ms=now_ms)
        return deleted

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the partition logs opened through this topic. Idempotent. Producers of
        the topic that are still open are closed first, which appends what they hold
        (their records used to be dropped without an error when the topic closed under
        them)."""
        if self._closed:
            return
        with self._mutex:
            producers = list(self._producers)
        with contextlib.ExitStack() as stack:   # every close runs, then an error propagates
            stack.callback(self._close_logs)     # last, also after a producer's close failed
            for p in producers:                  # outside the mutex: their linger threads may
                stack.callback(p.close)          # need it to open a partition's log

    def _close_logs(self) -> None:
        with self._mutex:
            if self._closed:
                return
            errors = []
            for i, lg in enumerate(self._logs):
                if lg is not None:
                    try:
                        lg.close()
                    except BufferError as e:
                        errors.append(e)
                        continue
                    self._logs[i] = None
            if errors:
                raise errors[0]
            self._notifier.close()
            self._closed = True

    def __repr__(self) -> str:
        return f"<fastq.Topic {self.name!r} partitions={self.partitions}>"
