"""asyncio face of pub/sub: ``sub = await ps.subscribe_async("orders.>")``, then
``async for msg in sub`` or ``await sub.poll(...)``; ``await ps.publish_async(...)``.

Nothing blocks the event loop: a subscriber's reads run in its own worker thread (one
per subscriber, so its reads stay in order), in slices of 100 ms so cancellation is
prompt; publishing runs in the loop's default executor. A cancelled ``poll`` /
``async for`` consumes nothing: messages the worker fetched for it are put back in
front of the subscriber's buffer (in the worker, before any later call), so the next
poll hands them out — for a named durable subscription they are not committed either.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import time
from typing import TYPE_CHECKING

from ..errors import Closed, UsedAfterFork

if TYPE_CHECKING:
    from .pubsub import PubSubMessage, Subscriber

__all__ = ["AsyncSubscriber", "SLICE"]

SLICE = 0.1


class AsyncSubscriber:
    """Async twin of :class:`fastq.pubsub.Subscriber` (``await ps.subscribe_async(...)``):
    ``await poll(max_messages, timeout)``, ``async for``, ``await commit()``,
    ``await close()`` (or ``async with``)."""

    def __init__(self, sync: "Subscriber", pool: concurrent.futures.ThreadPoolExecutor | None = None):
        self.sync = sync
        self._pool = pool or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fastq-pubsub")
        self._buffer: list = []       # fetched ahead by ``async for``, reversed: pop() is the next
        self._closing = None
        self._pid = os.getpid()

    def _submit(self, fn, *args) -> concurrent.futures.Future:
        if os.getpid() != self._pid:
            raise UsedAfterFork("this async subscriber was made before fork(): subscribe again in the child")
        if self._closing is not None:
            raise Closed("subscriber is closed")
        return self._pool.submit(fn, *args)

    def _give_back(self, cf: concurrent.futures.Future) -> None:
        if cf.exception() is None:
            self.sync._give_back(cf.result())

    async def _poll_once(self, max_messages: int | None, timeout: float) -> list:
        cf = self._submit(self.sync.poll, max_messages, timeout)
        try:
            return await asyncio.wrap_future(cf)
        except asyncio.CancelledError:
            if not cf.cancel() and self._closing is None:
                self._pool.submit(self._give_back, cf)     # runs next in the worker, before any later poll
            cf = None
            raise

    async def poll(self, max_messages: int | None = None, timeout: float | None = None) -> list["PubSubMessage"]:
        """As ``Subscriber.poll``; a cancelled poll hands out nothing and consumes nothing."""
        buf = self._buffer
        if buf:
            return [buf.pop() for _ in range(min(max_messages or self.sync.max_poll, len(buf)))]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SLICE if deadline is None else max(0.0, min(SLICE, deadline - time.monotonic()))
            msgs = await self._poll_once(max_messages, left)
            if msgs or (deadline is not None and time.monotonic() >= deadline):
                return msgs

    def __aiter__(self) -> "AsyncSubscriber":
        return self

    async def __anext__(self) -> "PubSubMessage":
        while not self._buffer:
            if self.sync.closed:
                raise StopAsyncIteration
            self._buffer = (await self.poll(None, None))[::-1]
        return self._buffer.pop()

    async def commit(self) -> None:
        """Commit what was handed out (messages fetched ahead by ``async for`` are given
        back to the subscriber first, so they are not committed)."""
        buf, self._buffer = self._buffer[::-1], []
        await asyncio.wrap_future(self._submit(self._commit_delivered, buf))

    def _commit_delivered(self, buf: list) -> None:
        self.sync._give_back(buf)
        self.sync.commit()

    @property
    def closed(self) -> bool:
        return self.sync.closed

    async def close(self) -> None:
        """Close (idempotent); messages fetched ahead and not handed out are not committed.
        Cancelling the await does not stop the close."""
        if os.getpid() != self._pid:
            return
        if self._closing is None:
            buf, self._buffer = self._buffer[::-1], []

            def close():
                self.sync._give_back(buf)
                self.sync.close()

            self._closing = asyncio.wrap_future(self._pool.submit(close))
            self._pool.shutdown(wait=False)
        await asyncio.shield(self._closing)

    async def __aenter__(self) -> "AsyncSubscriber":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def to_thread(fn, *args, **kwargs):
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))
