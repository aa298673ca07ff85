"""asyncio twin of the batching producer: :class:`AsyncProducer` (over a log topic's
:class:`fastq.Producer` or a memory topic's producer). The rules for what runs where,
and what a cancelled await does, are in :mod:`fastq.broker.aio`."""
from __future__ import annotations

import asyncio
import collections

from ._aio import to_thread as _to_thread

__all__ = ["AsyncProducer", "AsyncIdempotentProducer"]


class AsyncProducer:
    """Async face of :class:`fastq.broker.producer.Producer` (and of a memory topic's producer).

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


class AsyncIdempotentProducer:
    """Async face of :class:`fastq.IdempotentProducer`: every call runs in a thread (an
    append may wait for a partition's writer lock). A cancelled ``publish`` may still
    have appended (the thread runs on): retry it with ``sequence=`` — the error-free
    way to learn its fate — and a stored record is answered with its offset, once."""

    def __init__(self, producer):
        self.sync = producer

    @property
    def producer_id(self) -> int:
        return self.sync.producer_id

    @property
    def epoch(self) -> int:
        return self.sync.epoch

    @property
    def duplicates(self) -> int:
        return self.sync.duplicates

    async def publish(self, value, **options):
        return await _to_thread(self.sync.publish, value, **options)

    async def publish_many(self, values, **options):
        return await _to_thread(self.sync.publish_many, list(values), **options)

    async def next_sequence(self, partition: int) -> int:
        return await _to_thread(self.sync.next_sequence, partition)

    async def close(self) -> None:
        self.sync.close()

    async def __aenter__(self) -> "AsyncIdempotentProducer":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
