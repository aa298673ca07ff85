"""asyncio face of a queue: ``q = await abroker.queue("jobs")`` gives an :class:`AsyncQueue`.

Inline or thread (the rule of :mod:`fastq.broker.aio`): under ``"os"`` durability a plain
publish (no delay, no dedup_id) to a lane whose log is open is one append into the page
cache, and an ack/nack/extend is a few stores under queue.state's lock (held for
microseconds; a dead holder loses it within a millisecond): those run inline. Everything
else — waiting for messages, receive's reads, fsync/msync under ``"group"``/``"always"``,
opening logs, depth, purge, redrive — runs in a worker thread; waits are sliced (100 ms).

Cancellation: a cancelled ``receive`` (or ``async for``) consumes nothing: messages the
worker thread leased after the cancel are handed back (``nack()``, available at once,
their delivery count one higher) as soon as the thread returns them.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

from ..broker._aio import SLICE, to_thread
from ..errors import Closed, InvalidArgument, LeaseLost
from ..log.config import check_int
from .subscription import GUARANTEES, resolve_backoff

if TYPE_CHECKING:
    from .queue import Message, Queue, QueueDepth

__all__ = ["AsyncQueue", "AsyncMessage", "AsyncSubscription"]

log = logging.getLogger("fastq.queue")


class AsyncMessage:
    """A received message (see :class:`fastq.queue.Message`) whose settling calls are
    coroutines: ``await m.ack()``, ``await m.nack(delay)``, ``await m.reject(reason)``,
    ``await m.extend(seconds)``. Every other attribute is the message's."""

    __slots__ = ("message", "_inline")

    def __init__(self, message: "Message", inline: bool):
        self.message = message
        self._inline = inline

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)

    async def _call(self, fn, *args, **kwargs):
        if self._inline:
            return fn(*args, **kwargs)
        return await to_thread(fn, *args, **kwargs)

    async def ack(self) -> None:
        await self._call(self.message.ack)

    async def nack(self, delay: float = 0.0, *, error=None) -> None:
        await self._call(self.message.nack, delay, error=error)

    async def reject(self, reason=None) -> None:
        await to_thread(self.message.reject, reason)      # may publish to the dead-letter queue

    async def extend(self, seconds: float) -> None:
        await self._call(self.message.extend, seconds)

    def __repr__(self) -> str:
        return f"<fastq.AsyncMessage {self.message!r}>"


def _give_back(fut: "asyncio.Future") -> None:
    """Done-callback of a receive whose await was cancelled: nack what it leased."""
    if fut.cancelled() or fut.exception() is not None:
        return
    msgs = fut.result()
    if msgs:
        def release():
            for m in msgs:
                try:
                    m.nack()
                except (LeaseLost, Closed):
                    pass
        asyncio.get_running_loop().run_in_executor(None, release)


class AsyncQueue:
    """Async face of :class:`fastq.Queue` (``async with`` closes it)."""

    def __init__(self, queue: "Queue"):
        self.queue = queue
        self.name = queue.name
        self._inline = queue.durability == "os"

    @property
    def closed(self) -> bool:
        return self.queue.closed

    async def publish(self, data, *, key=None, headers=None, delay: float | None = None, priority: int = 0,
                      dedup_id=None) -> int:
        q = self.queue
        if self._inline and not delay and dedup_id is None and isinstance(priority, int) \
                and 0 <= priority < 10 and q.partitions == 1 and q._lanes[priority].log is not None \
                and not q._may_block():            # overflow "block" may sleep: never on the loop
            return q.publish(data, key=key, headers=headers, priority=priority)
        return await to_thread(q.publish, data, key=key, headers=headers, delay=delay, priority=priority,
                               dedup_id=dedup_id)

    async def publish_many(self, items, **options) -> list[int]:
        return await to_thread(self.queue.publish_many, list(items), **options)

    async def receive(self, max_messages: int = 1, wait: float | None = None) -> list[AsyncMessage]:
        """As :meth:`fastq.Queue.receive`; a cancelled await consumes nothing."""
        check_int("max_messages", max_messages, 1, 1 << 20)
        if wait is not None and (isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0):
            raise InvalidArgument(f"wait must be None or seconds >= 0, got {wait!r}")
        loop = asyncio.get_running_loop()
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            left = SLICE if deadline is None else max(0.0, min(SLICE, deadline - time.monotonic()))
            fut = loop.run_in_executor(None, self.queue.receive, max_messages, left)
            try:
                msgs = await asyncio.shield(fut)
            except asyncio.CancelledError:
                fut.add_done_callback(_give_back)
                raise
            if msgs:
                return [AsyncMessage(m, self._inline) for m in msgs]
            if deadline is not None and time.monotonic() >= deadline:
                return []

    async def ack_many(self, messages) -> None:
        ms = [m.message if isinstance(m, AsyncMessage) else m for m in messages]
        if self._inline:
            self.queue.ack_many(ms)
        else:
            await to_thread(self.queue.ack_many, ms)

    async def messages(self, wait: float | None = None) -> AsyncIterator[AsyncMessage]:
        """Messages as they come; ends after ``wait`` seconds with none (None: never)."""
        while True:
            got = await self.receive(1, wait)
            if not got:
                return
            yield got[0]

    def __aiter__(self) -> AsyncIterator[AsyncMessage]:
        return self.messages()

    async def depth(self) -> "QueueDepth":
        return await to_thread(self.queue.depth)

    async def signals(self):
        """Queue.signals() off the event loop (it takes the queue lock)."""
        return await to_thread(self.queue.signals)

    async def set_limits(self, **limits):
        return await to_thread(self.queue.set_limits, **limits)

    async def over_high_watermark(self) -> bool:
        return await to_thread(lambda: self.queue.over_high_watermark)

    async def peek(self, max_messages: int = 10) -> list["Message"]:
        return await to_thread(self.queue.peek, max_messages)

    async def unsettled(self) -> list[bytes]:
        return await to_thread(self.queue.unsettled)

    async def purge(self) -> int:
        return await to_thread(self.queue.purge)

    async def redrive(self, to=None, max_messages: int | None = None) -> int:
        if isinstance(to, AsyncQueue):
            to = to.queue
        return await to_thread(self.queue.redrive, to, max_messages)

    def subscribe(self, handler: Callable[[AsyncMessage], Awaitable[Any] | Any], *, concurrency: int = 1,
                  guarantee: str = "at-least-once", backoff=None) -> "AsyncSubscription":
        """Run ``handler`` for each message in ``concurrency`` tasks (a coroutine function is
        awaited; a plain function runs in a worker thread). Acks, and backs off failures,
        as ``Queue.subscribe``."""
        return AsyncSubscription(self, handler, concurrency=concurrency, guarantee=guarantee,
                                 backoff=backoff)

    async def close(self) -> None:
        await to_thread(self.queue.close)

    async def __aenter__(self) -> "AsyncQueue":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<fastq.AsyncQueue {self.name!r}>"


class AsyncSubscription:
    """Handle of ``AsyncQueue.subscribe``: ``stop()``, ``await join()``; ``async with``
    stops and joins on exit. Counters as :class:`fastq.queue.Subscription`."""

    def __init__(self, q: AsyncQueue, handler, *, concurrency: int, guarantee: str, backoff):
        if not callable(handler):
            raise InvalidArgument(f"handler must be callable, got {handler!r}")
        check_int("concurrency", concurrency, 1, 4096)
        if guarantee not in GUARANTEES:
            raise InvalidArgument(f"guarantee={guarantee!r}: expected one of {GUARANTEES}")
        if guarantee == "exactly-once":
            raise InvalidArgument("AsyncQueue.subscribe has no guarantee='exactly-once' yet: use "
                                  "Queue.subscribe(handler, guarantee='exactly-once') (a coroutine handler "
                                  "runs there on its worker thread's own event loop)")
        self.q = q
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        self.at_most = guarantee == "at-most-once"
        self.backoff = resolve_backoff(backoff)
        self.handled = 0
        self.failed = 0
        self.errors: list[BaseException] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.get_running_loop().create_task(self._run()) for _ in range(concurrency)]

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                got = await self.q.receive(1, wait=SLICE)
            except Closed:
                return
            for m in got:
                try:
                    if self.at_most:
                        await m.ack()
                    if self.is_async:
                        await self.handler(m)
                    else:
                        await to_thread(self.handler, m)
                except asyncio.CancelledError:
                    if not self.at_most and not m.message.settled:
                        try:
                            await to_thread(m.message.nack)
                        except (LeaseLost, Closed):
                            pass
                    raise
                except Exception as e:
                    log.debug("handler failed on %r", m, exc_info=True)
                    self.failed += 1
                    self.errors = (self.errors + [e])[-16:]
                    if not self.at_most:
                        try:
                            await m.nack(self.backoff(m.delivery_count), error=e)
                        except (LeaseLost, Closed):
                            pass
                    continue
                if not self.at_most and not m.message.settled:
                    try:
                        await m.ack()
                    except LeaseLost as e:
                        self.failed += 1
                        self.errors = (self.errors + [e])[-16:]
                        continue
                self.handled += 1

    def stop(self) -> None:
        self._stop.set()

    async def join(self) -> None:
        await asyncio.gather(*self._tasks)

    async def __aenter__(self) -> "AsyncSubscription":
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop()
        await self.join()
