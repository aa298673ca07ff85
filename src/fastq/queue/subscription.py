"""``Queue.subscribe``: a pool of threads calling a handler for each message."""
from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Union

from ..errors import Closed, FastqError, InvalidArgument, LeaseLost
from ..flow.backoff import Backoff as FlowBackoff, exponential_backoff
from ..log.config import check_int

if TYPE_CHECKING:
    from .backend import LeasedMessage as Message, QueueBackend as Queue

__all__ = ["Subscription", "GUARANTEES", "exponential_backoff", "resolve_backoff"]

GUARANTEES = ("at-least-once", "at-most-once")
log = logging.getLogger("fastq.queue")

Backoff = Union[None, float, dict, Callable[[int], float]]


def resolve_backoff(backoff: Backoff) -> Callable[[int], float]:
    """None: :func:`exponential_backoff` (0.1 s doubling up to 60 s, full jitter); a number:
    that many seconds every time; a callable — a :class:`fastq.Backoff` is one — delivery
    count -> seconds."""
    if backoff is None:
        return exponential_backoff()
    if callable(backoff):
        return backoff
    if isinstance(backoff, dict):                    # the stored form of a fastq.Backoff
        return FlowBackoff.coerce(backoff)
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0 <= backoff < float("inf"):
        raise InvalidArgument(f"backoff must be None, seconds >= 0 or a callable, got {backoff!r}")
    fixed = float(backoff)
    return lambda n: fixed


class Subscription:
    """Handle of a running ``Queue.subscribe`` — written against the backend seam
    (:mod:`fastq.queue.backend`), so it drives any backend (a coroutine-function handler runs on an
    event loop of the worker thread's own): ``stop()`` asks the workers to finish the
    message in hand and return; ``join(timeout)`` waits for them; use as a context manager
    to stop and join on exit. ``handled`` counts messages handled without error,
    ``failed`` those whose handler raised; ``errors`` keeps the last few exceptions."""

    def __init__(self, queue: "Queue", handler: Callable[["Message"], Any], *, concurrency: int,
                 guarantee: str, max_messages: int, backoff: Backoff):
        if not callable(handler):
            raise InvalidArgument(f"handler must be callable, got {handler!r}")
        self.is_async = inspect.iscoroutinefunction(handler)
        check_int("concurrency", concurrency, 1, 1024)
        check_int("max_messages", max_messages, 1, 1 << 16)
        if guarantee not in GUARANTEES:
            raise InvalidArgument(f"guarantee={guarantee!r}: expected one of {GUARANTEES}")
        if queue.closed:
            raise Closed(f"queue {queue.name!r} is closed")
        self.queue = queue
        self.handler = handler
        self.guarantee = guarantee
        self.max_messages = max_messages
        self.backoff = resolve_backoff(backoff)
        self.handled = 0
        self.failed = 0
        self.errors: list[BaseException] = []
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"fastq-sub-{queue.name}-{i}", daemon=True)
                         for i in range(concurrency)]
        for t in self._threads:
            t.start()

    def _record(self, ok: bool, exc: BaseException | None = None) -> None:
        with self._count_lock:
            if ok:
                self.handled += 1
            else:
                self.failed += 1
                self.errors = (self.errors + [exc])[-16:]

    def _run(self) -> None:
        q = self.queue
        at_most = self.guarantee == "at-most-once"
        loop = asyncio.new_event_loop() if self.is_async else None   # a coroutine handler runs here
        try:
            self._loop(q, at_most, loop)
        finally:
            if loop is not None:
                loop.close()

    def _loop(self, q: "Queue", at_most: bool, loop) -> None:
        while not self._stop.is_set():
            try:
                msgs = q.receive(self.max_messages, wait=0.1)
            except Closed:
                return
            for m in msgs:
                if self._stop.is_set() and not at_most:
                    try:
                        m.nack()                 # not started: hand it back at once
                    except (LeaseLost, Closed):
                        pass
                    continue
                try:
                    if at_most:
                        m.ack()
                    if loop is not None:
                        loop.run_until_complete(self.handler(m))
                    else:
                        self.handler(m)
                except LeaseLost as e:
                    self._record(False, e)
                    continue
                except Exception as e:       # the handler's failure is the message's, not ours
                    log.debug("handler failed on %r", m, exc_info=True)
                    self._record(False, e)
                    if not at_most:
                        try:
                            m.nack(self.backoff(m.delivery_count), error=e)
                        except (LeaseLost, Closed):
                            pass
                    continue
                if not at_most and not m.settled:
                    try:
                        m.ack()
                    except LeaseLost as e:   # lease ran out while handling: it is redelivered
                        self._record(False, e)
                        continue
                    except FastqError as e:
                        self._record(False, e)
                        continue
                self._record(True)

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the workers; True when all have returned."""
        for t in self._threads:
            t.join(timeout)
        return not any(t.is_alive() for t in self._threads)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self.join()
