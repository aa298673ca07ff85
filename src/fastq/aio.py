"""asyncio flavour of the broker: the same surface, as coroutines and async iterators.

``broker = await fastq.open_async(path)`` returns an :class:`AsyncBroker`. Calls that can
block (fsync under ``"group"``/``"always"`` durability, waiting for records, file
creation) run in worker threads; calls that take microseconds (a publish under ``"os"``
durability, a commit) run inline on the event loop. Blocking waits are sliced (100 ms),
so cancelling a task that waits in ``poll`` or ``async for`` takes effect promptly.

Each :class:`AsyncConsumer` runs its consumer in one dedicated thread, so the underlying
sync :class:`fastq.consumer.Consumer` is never used from two threads at once.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from typing import Any, AsyncIterator

from .broker import Broker
from .errors import Closed
from .topic import BatchMetadata, RecordMetadata, Topic

__all__ = ["open_async", "AsyncBroker", "AsyncTopic", "AsyncConsumer", "AsyncMemoryConsumer", "AsyncProducer"]

_SLICE = 0.1


async def _to_thread(fn, *args, **kwargs):
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))


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
        self._inline = topic.durability == "os"     # no fsync: an append takes microseconds

    async def publish(self, value, **options) -> RecordMetadata:
        if self._inline:
            return self.sync.publish(value, **options)
        return await _to_thread(self.sync.publish, value, **options)

    async def publish_many(self, values, **options) -> BatchMetadata:
        if self._inline:
            return self.sync.publish_many(values, **options)
        return await _to_thread(self.sync.publish_many, values, **options)

    def producer(self, **options) -> "AsyncProducer":
        return AsyncProducer(self.sync.producer(**options))

    async def read(self, partition: int, offset: int | None = None, *, timestamp: int | None = None,
                   end: int | None = None, chunk: int = 1000) -> AsyncIterator:
        """Replay a partition (see ``Topic.read``), yielding to the loop every ``chunk``
        records."""
        reader = await _to_thread(self.sync.read, partition, offset, timestamp=timestamp, end=end)
        read_many = getattr(reader, "read_many", None)
        while True:
            if read_many is not None:
                recs = read_many(chunk)
            else:
                recs = [r for _, r in zip(range(chunk), reader)]
            if not recs:
                return
            for r in recs:
                yield r
            del recs
            await asyncio.sleep(0)

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
        from .memtopic import MemoryTopic

        cls = AsyncMemoryConsumer if isinstance(self.sync, MemoryTopic) else AsyncConsumer
        ac = cls.__new__(cls)
        ac._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"fastq-consumer-{self.name}")
        ac._buffer = []
        try:
            ac.sync = await ac._call(self.sync.consumer, group, **options)
        except BaseException:
            ac._pool.shutdown(wait=False)
            raise
        return ac

    async def maintain(self, now_ms: int | None = None) -> int:
        return await _to_thread(self.sync.maintain, now_ms)

    def __repr__(self) -> str:
        return f"<fastq.AsyncTopic {self.name!r} partitions={self.partitions}>"


class AsyncConsumer:
    """Async face of :class:`fastq.consumer.Consumer`: ``await poll()``, ``async for``,
    and every other method as a coroutine. Create with ``await topic.consumer(...)``."""

    sync: Any
    _pool: concurrent.futures.ThreadPoolExecutor
    _buffer: list

    async def _call(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def poll(self, max_records: int = 500, timeout: float | None = None) -> list:
        """Up to ``max_records`` records; waits up to ``timeout`` s (None: until some
        arrive) in 100 ms slices, so cancellation is prompt."""
        if self._buffer:
            out, self._buffer = self._buffer[:max_records], self._buffer[max_records:]
            return out
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - time.monotonic()))
            recs = await self._call(self.sync.poll, max_records, left)
            if recs or (deadline is not None and time.monotonic() >= deadline):
                return recs

    def __aiter__(self) -> "AsyncConsumer":
        return self

    async def __anext__(self):
        while not self._buffer:
            if self.sync.closed:
                raise StopAsyncIteration
            self._buffer = await self.poll(500, None)
        return self._buffer.pop(0)

    def _undelivered(self) -> dict[int, int]:
        """{partition: offset of the first record fetched but not yet handed out}."""
        first: dict[int, int] = {}
        for r in self._buffer:
            first.setdefault(r.partition, r.offset)
        return first

    async def commit(self, what=None) -> None:
        """As ``Consumer.commit``; ``commit()`` covers only records this async consumer
        has handed out, not ones it has fetched ahead."""
        if what is None and self._buffer:
            first = self._undelivered()

            def commit_delivered():
                self.sync.commit({p: first.get(p, self.sync.position(p)) for p in self.sync.assignment()})

            await self._call(commit_delivered)
            return
        await self._call(self.sync.commit, what)

    async def committed(self) -> dict[int, int | None]:
        return await self._call(self.sync.committed)

    async def seek(self, partition: int, offset: int) -> None:
        self._drop_buffer(partition)
        await self._call(self.sync.seek, partition, offset)

    async def seek_to_beginning(self, partitions=None) -> None:
        self._buffer = []
        await self._call(self.sync.seek_to_beginning, partitions)

    async def seek_to_end(self, partitions=None) -> None:
        self._buffer = []
        await self._call(self.sync.seek_to_end, partitions)

    async def seek_to_timestamp(self, timestamp: int, partitions=None) -> None:
        self._buffer = []
        await self._call(self.sync.seek_to_timestamp, timestamp, partitions)

    def _drop_buffer(self, partition: int) -> None:
        self._buffer = [r for r in self._buffer if r.partition != partition]

    async def assignment(self) -> list[int]:
        return await self._call(self.sync.assignment)

    async def position(self, partition: int) -> int:
        return await self._call(self.sync.position, partition)

    async def lag(self) -> dict[int, int]:
        return await self._call(self.sync.lag)

    @property
    def closed(self) -> bool:
        return self.sync.closed

    async def close(self) -> None:
        first = self._undelivered()
        self._buffer = []

        def rewind_and_close():
            # records fetched ahead but never handed out must not count as consumed
            # when close() auto-commits
            if not self.sync.closed:
                owned = set(self.sync.assignment())
                for p, off in first.items():
                    if p in owned:
                        self.sync.seek(p, off)
            self.sync.close()

        try:
            await self._call(rewind_and_close)
        finally:
            self._pool.shutdown(wait=True)

    async def __aenter__(self) -> "AsyncConsumer":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class AsyncMemoryConsumer(AsyncConsumer):
    """Async face of :class:`fastq.memtopic.MemoryConsumer` (what ``await
    topic.consumer()`` returns for a memory topic): ``await poll()``, ``async for``,
    ``commit()`` (accepted, does nothing), ``close()``. Records are *taken*: those
    fetched ahead by ``async for`` (up to 500) and not handed out when the consumer
    closes are lost, as with the sync consumer (at-most-once). ``position`` and the
    ``seek*`` calls raise InvalidArgument."""

    async def commit(self, what=None) -> None:
        self.sync.commit(what)

    async def close(self) -> None:
        self._buffer = []
        try:
            await self._call(self.sync.close)
        finally:
            self._pool.shutdown(wait=True)


class AsyncProducer:
    """Async face of :class:`fastq.producer.Producer`: ``send`` queues (no await
    needed), ``await flush()`` / ``await close()`` append what is pending."""

    def __init__(self, producer):
        self.sync = producer

    def send(self, value, **options) -> None:
        if self.sync._closed:
            raise Closed("producer is closed")
        self.sync.send(value, **options)

    async def flush(self) -> int:
        return await _to_thread(self.sync.flush)

    async def close(self) -> None:
        await _to_thread(self.sync.close)

    async def __aenter__(self) -> "AsyncProducer":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
