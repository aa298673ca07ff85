"""asyncio flavour of the broker: the same surface, as coroutines and async iterators.

``broker = await fastq.open_async(path)`` returns an :class:`AsyncBroker`.

Inline or thread — the rule: nothing that can block runs on the event loop. A call runs
inline only when it cannot wait for another party or for the disk: a publish to a log
topic under ``"os"`` durability whose partition logs are all open (a copy into the page
cache under the writer lock, which a process holds for an append's microseconds and a
dead one loses within a millisecond; the one piece of file-system work left inline is
the roll once per ``segment_bytes``, which creates and preallocates the next segment
file without syncing it), a publish to a memory topic whose overflow policy never waits
(``"reject"``, ``"drop-oldest"``) or, under ``"block"``, that finds room at once (tried
with ``timeout=0``), and a producer ``send`` that only copies into the accumulator.
Everything else runs in a worker thread: opening a partition log (flock, recovery),
fsync (``"group"``/``"always"``), a full memory ring (``"block"``) or a spill append,
a producer drain, waiting for records, file creation. Blocking waits are sliced
(100 ms).

Cancellation: a cancelled await (``task.cancel()``, ``asyncio.wait_for`` timing out)
consumes nothing and loses nothing acknowledged. A worker thread cannot be stopped, so
what it does after the cancel is made harmless: records a cancelled ``poll`` (or ``async
for``) took are given back before the consumer's next call runs (the log consumer seeks
back to them; the memory consumer keeps them and hands them out first), so the next
poll continues at the first record not handed out and ``commit()`` never covers them.
A cancelled ``close`` still closes (in the background); a cancelled ``publish`` or
producer ``send`` may or may not have appended its record, which was not acknowledged
either way; a cancelled ``flush`` keeps flushing.

Each :class:`AsyncConsumer` runs its consumer in one dedicated thread, so the underlying
sync :class:`fastq.broker.consumer.Consumer` is never used from two threads at once, and work
queued there runs in call order. That thread does not exist in a forked child: there an
inherited async consumer raises :class:`fastq.errors.UsedAfterFork` (its ``close()``
returns at once) instead of handing work to a thread that will never run it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from typing import AsyncIterator

from ..errors import RingFull
from ._aio import SLICE as _SLICE, to_thread as _to_thread
from .aio_consumer import AsyncConsumer, AsyncMemoryConsumer, _close_result
from .aio_producer import AsyncIdempotentProducer, AsyncProducer
from .broker import Broker, _kind
from .memtopic import MemoryTopic
from .topic import BatchMetadata, RecordMetadata, Topic

__all__ = ["open_async", "AsyncBroker", "AsyncTopic", "AsyncConsumer", "AsyncMemoryConsumer", "AsyncProducer"]


async def open_async(path, **options) -> "AsyncBroker":
    """Open (creating if missing) the broker in ``path``; see :func:`fastq.open`."""
    return AsyncBroker(await _to_thread(Broker, path, **options))


class AsyncBroker:
    """Async face of :class:`fastq.Broker` (``async with`` closes it)."""

    def __init__(self, broker: Broker):
        self.sync = broker
        self._topics: dict[str, AsyncTopic] = {}

    @property
    def path(self) -> str:
        return self.sync.path

    @property
    def closed(self) -> bool:
        return self.sync.closed

    async def topic(self, name: str, **options) -> "AsyncTopic":
        t = await _to_thread(self.sync.topic, name, **options)
        at = self._topics.get(name)
        if at is None or at.sync is not t:
            at = self._topics[name] = AsyncTopic(t)
        return at

    async def topics(self) -> list[str]:
        return await _to_thread(self.sync.topics)

    async def alter_topic(self, name: str, **changes) -> dict:
        self._topics.pop(name, None)
        return await _to_thread(self.sync.alter_topic, name, **changes)

    async def delete_topic(self, name: str) -> None:
        self._topics.pop(name, None)
        await _to_thread(self.sync.delete_topic, name)

    async def maintain(self, now_ms: int | None = None) -> dict:
        return await _to_thread(self.sync.maintain, now_ms)

    async def queue(self, name: str, **options):
        """The queue's asyncio face (:class:`fastq.queue.AsyncQueue`); see ``Broker.queue``."""
        q = await _to_thread(self.sync.queue, name, **options)
        return _kind("queue").asyncio(q)

    async def tasks(self, name: str, **options):
        """The task queue's asyncio face (:class:`fastq.AsyncTaskQueue`); see ``Broker.tasks``."""
        tq = await _to_thread(self.sync.tasks, name, **options)
        return _kind("tasks").asyncio(tq)

    async def pubsub(self, name: str, **options):
        """The pub/sub namespace (:class:`fastq.PubSub`; see ``Broker.pubsub``), opened in a
        thread. Use its asyncio methods: ``await ps.subscribe_async(...)``,
        ``await ps.publish_async(...)``."""
        return await _to_thread(self.sync.pubsub, name, **options)

    async def queues(self) -> list[str]:
        return await _to_thread(self.sync.queues)

    async def delete_queue(self, name: str) -> None:
        await _to_thread(self.sync.delete_queue, name)

    async def close(self) -> None:
        await _to_thread(self.sync.close)

    async def __aenter__(self) -> "AsyncBroker":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<fastq.AsyncBroker {self.sync.path!r}>"


class AsyncTopic:
    """Async face of :class:`fastq.Topic`."""

    def __init__(self, topic: Topic):
        self.sync = topic
        self.name = topic.name
        self.partitions = topic.partitions
        # how a publish runs (see the module docstring, "Inline or thread")
        if isinstance(topic, MemoryTopic):
            self._how = {"reject": "inline", "drop-oldest": "inline", "block": "try"}.get(topic.overflow, "thread")
        else:
            self._how = "open-logs" if topic.durability == "os" else "thread"

    def _inline(self) -> bool:
        how = self._how
        if how == "open-logs":                # a first publish opens a log: flock, recovery
            if None in self.sync._logs:
                return False
            self._how = how = "inline"
        return how == "inline"

    async def publish(self, value, **options) -> RecordMetadata:
        if self._inline():
            return self.sync.publish(value, **options)
        if self._how == "try" and options.get("timeout") != 0:
            try:
                return self.sync.publish(value, **{**options, "timeout": 0})
            except RingFull:
                pass                          # full: wait for room in a thread
        return await _to_thread(self.sync.publish, value, **options)

    async def publish_many(self, values, **options) -> BatchMetadata:
        if self._inline():
            return self.sync.publish_many(values, **options)
        if self._how == "try" and options.get("timeout") != 0:
            values = list(values)
            try:
                return self.sync.publish_many(values, **{**options, "timeout": 0})
            except RingFull:
                pass
        return await _to_thread(self.sync.publish_many, values, **options)

    def producer(self, **options) -> "AsyncProducer | AsyncIdempotentProducer":
        """The batching producer's async face, or with ``idempotent=True`` /
        ``transactional_id`` an :class:`AsyncIdempotentProducer` (opened in the calling
        thread: allocating a producer id writes a small file)."""
        if options.get("idempotent") or options.get("transactional_id") is not None:
            return AsyncIdempotentProducer(self.sync.producer(**options))
        return AsyncProducer(self.sync.producer(**options), inline=self._how == "inline")

    async def read(self, partition: int, offset: int | None = None, *, timestamp: int | None = None,
                   end: int | None = None, chunk: int = 1000) -> AsyncIterator:
        """Replay a partition (see ``Topic.read``), ``chunk`` records at a time read in a
        thread (a cold segment's pages come from the disk)."""
        reader = await _to_thread(self.sync.read, partition, offset, timestamp=timestamp, end=end)
        read_many = getattr(reader, "read_many", None)
        if read_many is None:
            def read_many(n):
                return [r for _, r in zip(range(n), reader)]
        while True:
            recs = await _to_thread(read_many, chunk)
            if not recs:
                return
            for r in recs:
                yield r
            del recs

    async def end_offsets(self) -> dict[int, int]:
        return await _to_thread(self.sync.end_offsets)

    async def start_offsets(self) -> dict[int, int]:
        return await _to_thread(self.sync.start_offsets)

    async def offsets_for_timestamp(self, timestamp: int) -> dict[int, int | None]:
        return await _to_thread(self.sync.offsets_for_timestamp, timestamp)

    async def wait_any(self, positions: dict[int, int], timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            if left <= 0:
                return False
            if await _to_thread(self.sync.wait_any, positions, left):
                return True

    async def consumer(self, group: str | None = None, **options) -> "AsyncConsumer":
        cls = AsyncMemoryConsumer if isinstance(self.sync, MemoryTopic) else AsyncConsumer
        ac = cls.__new__(cls)
        ac._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"fastq-consumer-{self.name}")
        ac._pid = os.getpid()
        ac._buffer = []
        ac._stash = []
        ac._closing = None
        cf = ac._pool.submit(self.sync.consumer, group, **options)
        try:
            ac.sync = await asyncio.wrap_future(cf)
        except BaseException:
            if not cf.cancel():               # created meanwhile (cancelled await): close it
                ac._pool.submit(_close_result, cf)
            ac._pool.shutdown(wait=False)
            raise
        return ac

    async def maintain(self, now_ms: int | None = None) -> int:
        return await _to_thread(self.sync.maintain, now_ms)

    def __repr__(self) -> str:
        return f"<fastq.AsyncTopic {self.name!r} partitions={self.partitions}>"
