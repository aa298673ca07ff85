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
sync :class:`fastq.consumer.Consumer` is never used from two threads at once, and work
queued there runs in call order. That thread does not exist in a forked child: there an
inherited async consumer raises :class:`fastq.errors.UsedAfterFork` (its ``close()``
returns at once) instead of handing work to a thread that will never run it.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import os
import time
from typing import Any, AsyncIterator

from .broker import Broker
from .errors import Closed, OffsetOutOfRange, RingFull, UsedAfterFork
from .memtopic import MemoryTopic
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

    def producer(self, **options) -> "AsyncProducer":
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


def _close_result(cf: concurrent.futures.Future) -> None:
    """In the worker: close what a cancelled creation made after all (one that failed
    made nothing; it runs after the creation, so ``cf`` is done)."""
    if cf.exception() is None:
        cf.result().close()


class AsyncConsumer:
    """Async face of :class:`fastq.consumer.Consumer`: ``await poll()``, ``async for``,
    and every other method as a coroutine. Create with ``await topic.consumer(...)``.
    A cancelled ``poll``/``async for`` consumes nothing (see the module docstring)."""

    sync: Any
    _pool: concurrent.futures.ThreadPoolExecutor
    _buffer: list          # fetched ahead by ``async for``, not handed out yet (loop side)
    _stash: list           # memory consumer: records a cancelled poll took (worker side)
    _closing: Any          # the close in progress (an asyncio future), once close() began
    _pid: int              # the process that made it: its worker thread exists only there

    def _forked(self) -> bool:
        """In a forked child the worker thread does not exist: a call handed to it would
        wait forever. The sync consumer was released at the fork (UsedAfterFork)."""
        return os.getpid() != self._pid

    def _submit(self, fn, *args) -> concurrent.futures.Future:
        if self._forked():
            raise UsedAfterFork("this async consumer was made before fork(): it belongs to the "
                                "parent; open the broker again in the child")
        if self._closing is not None:         # the pool is shut down: say what happened
            raise Closed("consumer is closed")
        return self._pool.submit(fn, *args)

    async def _call(self, fn, *args, **kwargs):
        return await asyncio.wrap_future(self._submit(functools.partial(fn, *args, **kwargs)))

    def _poll_sync(self, max_records: int, timeout: float) -> list:
        return self.sync.poll(max_records, timeout)

    def _give_back(self, cf: concurrent.futures.Future) -> None:
        """In the worker, after a poll whose await was cancelled: seek each partition
        back to the first record it returned, as if that poll had not run. It runs
        right after that poll, so ``cf`` is done; a poll that failed took nothing."""
        if cf.exception() is not None:
            return
        recs = cf.result()
        first: dict[int, int] = {}
        for r in recs:
            first.setdefault(r.partition, r.offset)
        del recs
        if first and not self.sync.closed:
            owned = set(self.sync.assignment())
            for p, off in first.items():
                if p in owned:
                    try:
                        self.sync.seek(p, off)
                    except OffsetOutOfRange:  # deleted meanwhile: the position resets anyway
                        pass

    async def _poll_once(self, max_records: int, timeout: float) -> list:
        cf = self._submit(self._poll_sync, max_records, timeout)
        try:
            return await asyncio.wrap_future(cf)
        except asyncio.CancelledError:
            if not cf.cancel() and self._closing is None:
                # the worker runs (or ran) it: queued next, before any later call, the
                # give-back undoes what it took
                self._pool.submit(self._give_back, cf)
            cf = None                        # the traceback must not pin the records
            raise

    async def poll(self, max_records: int = 500, timeout: float | None = None) -> list:
        """Up to ``max_records`` records; waits up to ``timeout`` s (None: until some
        arrive) in 100 ms slices, so cancellation is prompt. A cancelled poll hands out
        nothing and consumes nothing."""
        if self._buffer:
            out, self._buffer = self._buffer[:max_records], self._buffer[max_records:]
            return out
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - time.monotonic()))
            recs = await self._poll_once(max_records, left)
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
        """Close (idempotent). Cancelling the await does not stop the close: it finishes
        in the consumer's thread, and a later ``close()`` waits for it. In a forked child
        it returns at once (what the child inherited was released at the fork)."""
        if self._forked():
            return
        if self._closing is None:
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

            self._closing = asyncio.wrap_future(self._pool.submit(rewind_and_close))
            self._pool.shutdown(wait=False)           # the queued close still runs
        await asyncio.shield(self._closing)

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

    def _poll_sync(self, max_records: int, timeout: float) -> list:
        if self._stash:                      # taken by a cancelled poll: first in line
            out, self._stash = self._stash[:max_records], self._stash[max_records:]
            return out
        return self.sync.poll(max_records, timeout)

    def _give_back(self, cf: concurrent.futures.Future) -> None:
        """Records are taken from the ring, not positioned: keep those a cancelled poll
        took for the next poll (at-most-once still: lost if the consumer closes first).
        It runs right after that poll, so ``cf`` is done; a poll that failed took nothing."""
        if cf.exception() is None:
            self._stash = cf.result() + self._stash

    async def close(self) -> None:
        if self._closing is None:
            self._buffer = []

            def close():
                self._stash = []
                self.sync.close()

            self._closing = asyncio.wrap_future(self._pool.submit(close))
            self._pool.shutdown(wait=False)
        await asyncio.shield(self._closing)


class AsyncProducer:
    """Async face of :class:`fastq.producer.Producer` (and of a memory topic's producer).

    ``send`` never blocks the loop and needs no await: when the record only has to be
    copied into the accumulator it is queued inline (a drain that is due then runs in a
    thread); otherwise — the accumulator is full, the record bypasses it, an earlier
    drain failed, or a memory topic may wait for room — it joins a backlog that a worker
    thread feeds to the sync producer in send order (later sends queue behind it).
    ``send`` returns a future: done once the record is queued; await it for back
    pressure and for the error of a record the backlog could not queue (a record the
    log can never take raises from ``send`` itself). A backlog error is also raised by
    the next ``flush``/``close``. ``await flush()`` / ``await close()`` append what is
    pending, in a thread."""

    def __init__(self, producer, inline: bool = True):
        self.sync = producer
        self._put_nowait = getattr(producer, "_put_nowait", None)   # None: a memory producer
        self._inline = inline                 # memory producer: its publish never waits
        self._backlog: collections.deque = collections.deque()    # (value, options, future)
        self._worker: asyncio.Task | None = None
        self._draining = False                # a drain runs in a thread
        self._done: asyncio.Future | None = None
        self._error: BaseException | None = None

    def _queued(self, loop) -> asyncio.Future:
        fut = self._done
        if fut is None or fut.get_loop() is not loop:
            fut = self._done = loop.create_future()
            fut.set_result(None)
        return fut

    def send(self, value, **options) -> asyncio.Future:
        """Queue one record (see the class docstring); returns a future done once it is
        queued. Raises at once, queueing nothing, for a closed producer or a record the
        log can never take."""
        sync = self.sync
        loop = asyncio.get_running_loop()
        if sync._closed:
            sync.send(value, **options)        # raises Closed (UsedAfterFork after fork)
        if not self._backlog:
            if self._put_nowait is not None:
                rc = self._put_nowait(value, **options)
                if rc >= 0:
                    if rc:
                        self._start_drain(loop)
                    return self._queued(loop)
            elif self._inline:
                sync.send(value, **options)
                return self._queued(loop)
        fut = loop.create_future()
        self._backlog.append((value, options, fut))
        if self._worker is None:
            self._worker = loop.create_task(self._feed())
        return fut

    def _start_drain(self, loop) -> None:
        if self._draining:
            return
        self._draining = True
        loop.run_in_executor(None, self._drain_in_thread).add_done_callback(self._drained)

    def _drain_in_thread(self) -> None:
        sync = self.sync
        try:
            sync._drain()
            while sync.linger == 0 and len(sync._ring) and not sync._closed:
                sync._drain()
        except Exception as e:                 # held by the producer; the next call retries
            sync._error = e

    def _drained(self, _fut) -> None:
        self._draining = False
        sync = self.sync
        if sync.linger == 0 and not sync._closed and len(sync._ring):
            self._start_drain(asyncio.get_running_loop())   # a send raced with the end

    def _send_all(self, items: list) -> list:
        """In a worker thread: the sync send of each backlog item (it may drain, wait for
        room, append directly); an item whose future was cancelled is skipped."""
        out = []
        for value, options, fut in items:
            if fut.cancelled():
                out.append(None)
                continue
            try:
                self.sync.send(value, **options)
                out.append(None)
            except Exception as e:
                out.append(e)
        return out

    async def _feed(self) -> None:
        try:
            while self._backlog:
                items = list(self._backlog)
                results = await _to_thread(self._send_all, items)
                for (_, _, fut), err in zip(items, results):
                    self._backlog.popleft()
                    if err is not None and self._error is None:
                        self._error = err
                    if not fut.done():
                        if err is None:
                            fut.set_result(None)
                        else:
                            fut.set_exception(err)
        finally:
            self._worker = None

    async def _settle(self) -> None:
        """Wait until the backlog is queued; raise the first error it met."""
        while self._worker is not None:
            await asyncio.shield(self._worker)
        err, self._error = self._error, None
        if err is not None:
            raise err

    async def flush(self) -> int:
        """Append everything sent so far (in a thread). A cancelled flush keeps going."""
        await self._settle()
        return await _to_thread(self.sync.flush)

    async def close(self) -> None:
        """Queue the backlog, then flush and close (in a thread). Idempotent."""
        try:
            await self._settle()
        finally:
            await _to_thread(self.sync.close)

    async def __aenter__(self) -> "AsyncProducer":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
