"""asyncio twins of the broker's consumers: :class:`AsyncConsumer` (a log topic's
:class:`fastq.Consumer`) and :class:`AsyncMemoryConsumer` (a memory topic's). The rules
for what runs where, and what a cancelled await does, are in :mod:`fastq.broker.aio`."""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import time
from typing import Any

from ..errors import Closed, OffsetOutOfRange, UsedAfterFork
from ._aio import SLICE as _SLICE

__all__ = ["AsyncConsumer", "AsyncMemoryConsumer"]


def _close_result(cf: concurrent.futures.Future) -> None:
    """In the worker: close what a cancelled creation made after all (one that failed
    made nothing; it runs after the creation, so ``cf`` is done)."""
    if cf.exception() is None:
        cf.result().close()


class AsyncConsumer:
    """Async face of :class:`fastq.broker.consumer.Consumer`: ``await poll()``, ``async for``,
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
    """Async face of :class:`fastq.broker.memtopic.MemoryConsumer` (what ``await
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
