"""``fastq.EventEmitter``: Node's EventEmitter for one process.

::

    orders = fastq.EventEmitter()

    @orders.on("order.created")
    def send_email(order): ...

    @orders.on("order.created")
    async def reserve_stock(order): ...       # async listeners are fine too

    orders.emit("order.created", {"id": 42})   # calls send_email, schedules reserve_stock

Rules (each is tested in tests/test_emitter.py):

* Listeners run in the order they were added, synchronously inside ``emit``, which
  returns True if the event had listeners. ``once`` listeners run at most once, even
  when several threads emit at the same time. ``on`` / ``once`` return the listener, so
  they work as decorators (``@em.on("x")``).
* **Async listeners** (a listener that returns an awaitable, e.g. an ``async def``):
  ``emit`` schedules it as a task on the event loop running in the calling thread, or,
  from another thread, on the loop given as ``EventEmitter(loop=...)``; with neither,
  emit raises :class:`fastq.InvalidArgument` (nothing to run it on). ``await
  emitter.emit_async(event, ...)`` instead runs every listener in turn and awaits each
  awaitable, so when it returns every listener has finished.
* **Errors are reported, never swallowed.** If a listener raises and the emitter has
  "error" listeners, they are called with the exception (``on("error", fn)`` gets
  ``fn(exc)``) and the remaining listeners still run. Without an "error" listener the
  exception propagates out of ``emit`` (the listeners after it do not run), as in Node.
  A scheduled async listener's failure goes to the "error" listeners, or, without one,
  to the loop's exception handler (``loop.call_exception_handler``, which logs it).
  ``emit("error", exc)`` with no "error" listener raises ``exc``
  (:class:`fastq.UnhandledEvent` if it is not an exception). An "error" listener that
  raises propagates (no loop of errors about errors).

Thread-safety: ``on``, ``once``, ``off`` and ``emit`` may be called from any thread; emit
takes a snapshot of the listeners under a lock and calls them outside it (a listener may
add or remove listeners; that takes effect from the next emit).
"""
from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any, Callable

from ..errors import InvalidArgument, UnhandledEvent

__all__ = ["EventEmitter"]

ERROR = "error"


class EventEmitter:
    """In-process publish/subscribe by event name (see the module docstring).

    ``loop``: the event loop to run async listeners on when ``emit`` is called from a
    thread that is not running one."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop | None = None):
        if loop is not None and not isinstance(loop, asyncio.AbstractEventLoop):
            raise InvalidArgument(f"loop must be an asyncio event loop or None, got {type(loop).__name__}")
        self._loop = loop
        self._lock = threading.Lock()
        self._events: dict[Any, list[list]] = {}   # event -> [[listener, once], ...]
        self._tasks: set = set()                    # scheduled async listeners (kept alive)

    # -- listeners ------------------------------------------------------------------------

    def _add(self, event, listener, once: bool):
        if listener is None:                        # used as a decorator
            return lambda fn: self._add(event, fn, once)
        if not callable(listener):
            raise InvalidArgument(f"listener must be callable, got {type(listener).__name__}")
        try:
            hash(event)
        except TypeError:
            raise InvalidArgument(f"event must be hashable, got {type(event).__name__}") from None
        with self._lock:
            self._events.setdefault(event, []).append([listener, once])
        return listener

    def on(self, event, listener: Callable | None = None):
        """Call ``listener(*args, **kwargs)`` on every ``emit(event, ...)``. Returns the
        listener (a decorator without it). Adding the same function twice calls it twice."""
        return self._add(event, listener, False)

    add_listener = on

    def once(self, event, listener: Callable | None = None):
        """Like ``on``, but the listener is removed before its first call."""
        return self._add(event, listener, True)

    def off(self, event, listener: Callable) -> bool:
        """Remove the most recently added registration of ``listener`` for ``event``.
        Returns False if it was not registered."""
        with self._lock:
            entries = self._events.get(event)
            if entries:
                for i in range(len(entries) - 1, -1, -1):
                    if entries[i][0] == listener:
                        del entries[i]
                        if not entries:
                            del self._events[event]
                        return True
        return False

    remove_listener = off

    def remove_all_listeners(self, event=None) -> None:
        """Remove every listener of ``event``, or of every event."""
        with self._lock:
            if event is None:
                self._events.clear()
            else:
                self._events.pop(event, None)

    def listeners(self, event) -> list[Callable]:
        """A copy of ``event``'s listeners, in call order."""
        with self._lock:
            return [e[0] for e in self._events.get(event, ())]

    def listener_count(self, event) -> int:
        with self._lock:
            return len(self._events.get(event, ()))

    def event_names(self) -> list:
        with self._lock:
            return list(self._events)

    # -- emitting -------------------------------------------------------------------------

    def _take(self, event) -> list[Callable]:
        """Snapshot ``event``'s listeners; once-listeners leave the table here, under the
        lock, so concurrent emits call each at most once."""
        with self._lock:
            entries = self._events.get(event)
            if not entries:
                return []
            out = [e[0] for e in entries]
            if any(e[1] for e in entries):
                keep = [e for e in entries if not e[1]]
                if keep:
                    self._events[event] = keep
                else:
                    del self._events[event]
            return out

    def _unhandled(self, event, args) -> bool:
        if event == ERROR:
            exc = args[0] if args else None
            if isinstance(exc, BaseException):
                raise exc
            raise UnhandledEvent(f"'error' event emitted with no 'error' listener: {exc!r}", exc)
        return False

    def _report(self, exc: BaseException, event) -> None:
        """A listener of ``event`` raised: to the "error" listeners, else re-raised."""
        if event == ERROR or not self.listener_count(ERROR):
            raise exc
        self.emit(ERROR, exc)

    def emit(self, event, *args, **kwargs) -> bool:
        """Call ``event``'s listeners with ``*args, **kwargs``; True if it had any. Async
        listeners are scheduled (see the module docstring)."""
        listeners = self._take(event)
        if not listeners:
            return self._unhandled(event, args)
        for fn in listeners:
            try:
                r = fn(*args, **kwargs)
            except Exception as e:          # noqa: BLE001 - reported, not swallowed
                self._report(e, event)
                continue
            if r is not None and inspect.isawaitable(r):
                self._schedule(r, event)
        return True

    def _schedule(self, aw, event) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            task = asyncio.ensure_future(aw)
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._async_done(t, event, loop))
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            if inspect.iscoroutine(aw):
                aw.close()                  # never awaited: no RuntimeWarning on top
            raise InvalidArgument(f"an async listener of {event!r} was emitted from a thread with no running "
                                  "event loop: create the EventEmitter with loop=... or use "
                                  "await emitter.emit_async(...)")
        fut = asyncio.run_coroutine_threadsafe(_await(aw), loop)
        self._tasks.add(fut)
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(self._async_done, f, event, loop))

    def _async_done(self, fut, event, loop) -> None:
        self._tasks.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            return
        if event != ERROR and self.listener_count(ERROR):
            try:
                self.emit(ERROR, exc)
                return
            except Exception as e:          # noqa: BLE001 - an error listener failed: to the loop
                exc = e
        loop.call_exception_handler({"message": f"fastq.EventEmitter: async listener of {event!r} failed",
                                     "exception": exc})

    async def emit_async(self, event, *args, **kwargs) -> bool:
        """Call ``event``'s listeners in order, awaiting each async one before the next;
        returns when all have finished. Errors as for ``emit``."""
        listeners = self._take(event)
        if not listeners:
            return self._unhandled(event, args)
        for fn in listeners:
            try:
                r = fn(*args, **kwargs)
                if r is not None and inspect.isawaitable(r):
                    await r
            except Exception as e:          # noqa: BLE001 - reported, not swallowed
                if event == ERROR or not self.listener_count(ERROR):
                    raise
                await self.emit_async(ERROR, e)
        return True

    async def wait_idle(self) -> None:
        """Wait until the async listeners ``emit`` scheduled on this loop have finished."""
        while True:
            pending = [t for t in self._tasks if isinstance(t, asyncio.Future) and not t.done()]
            if not pending:
                return
            await asyncio.gather(*pending, return_exceptions=True)

    def __repr__(self) -> str:
        with self._lock:
            n = sum(len(v) for v in self._events.values())
        return f"<fastq.EventEmitter {len(self._events)} events, {n} listeners>"


async def _await(aw):
    return await aw
