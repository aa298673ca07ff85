"""Client-side retries that honour ``retry_after``: :func:`retry`, :func:`aretry` and the
decorator :func:`retrying` (sync and async).

Between attempts they sleep ``max(backoff delay, exc.retry_after)``: the policy's delay
(:class:`fastq.Backoff`, full jitter by default) unless the refusal said how long to wait —
``fastq.QueueFull.retry_after`` (the queue's drain estimate), ``fastq.RateLimited.retry_after``
(the limiter's exact refill time), or any exception carrying a numeric ``retry_after``
(an HTTP 429/503's ``Retry-After`` turned into one). Sleeping less than ``retry_after``
would only be refused again; sleeping at least the jittered delay keeps the retries of
many clients spread out.

Why not tenacity or stamina (both checked, both good): they retry on exceptions with
exponential backoff and jitter, and stamina's ``on=`` backoff hook may return a
wait, which covers ``retry_after``. What they lack is what fastq needs in the same object:
a policy that is stored with a job and replayed by another process (``Backoff.to_dict``),
used by queue nacks and task retries, with AWS's equal and decorrelated jitter. Depending
on tenacity for forty lines of loop was not worth a runtime dependency; a fastq.Backoff
plugs into either library as a wait function (docs/BACKPRESSURE.md shows how).

Thread-safety: the functions keep their state on the stack; a decorated function may be
called from many threads (its Backoff's random generator is thread-safe).
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import time
from typing import Any, Awaitable, Callable, TypeVar

from ..errors import InvalidArgument, QueueFull, RateLimited
from .backoff import Backoff

__all__ = ["retry", "aretry", "retrying", "retry_delay", "DEFAULT_RETRY_ON", "DEFAULT_BACKOFF"]

T = TypeVar("T")
log = logging.getLogger("fastq.retry")

DEFAULT_RETRY_ON = (QueueFull, RateLimited)
DEFAULT_BACKOFF = Backoff.exponential(0.1, cap=10.0, jitter="full")

def retry_delay(delay: float, exc: BaseException) -> float:
    """``max(delay, exc.retry_after)`` when the exception carries a usable ``retry_after``
    (a finite number of seconds >= 0), else ``delay``."""
    ra = getattr(exc, "retry_after", None)
    if isinstance(ra, (int, float)) and not isinstance(ra, bool) and math.isfinite(ra) and ra > delay:
        return float(ra)
    return delay


def _predicate(retry_on) -> Callable[[BaseException], bool]:
    if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
        retry_on = (retry_on,)
    if isinstance(retry_on, tuple) and retry_on and \
            all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
        classes = retry_on
        return lambda e: isinstance(e, classes)
    if callable(retry_on) and not isinstance(retry_on, (type, tuple)):
        return retry_on
    raise InvalidArgument(f"retry_on must be an exception class, a non-empty tuple of them or a "
                          f"predicate exc -> bool, got {retry_on!r}")


class _Run:
    """One retry loop's checked options and state (attempt count, the delay chain, the
    start time), shared by the sync and async flavours."""

    __slots__ = ("attempts", "should", "timeout", "on_retry", "attempt", "delays", "started")

    def __init__(self, backoff, attempts, retry_on, timeout, on_retry):
        b = DEFAULT_BACKOFF if backoff is None else Backoff.coerce(backoff)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise InvalidArgument(f"attempts must be an int >= 1, got {attempts!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0):
            raise InvalidArgument(f"timeout must be None or seconds > 0, got {timeout!r}")
        if on_retry is not None and not callable(on_retry):
            raise InvalidArgument(f"on_retry must be None or a callable, got {on_retry!r}")
        self.attempts = attempts
        self.should = _predicate(retry_on)
        self.timeout = timeout
        self.on_retry = on_retry
        self.attempt = 1
        self.delays = b.delays()
        self.started = time.monotonic()

    def wait(self, exc: BaseException) -> float | None:
        """Seconds to sleep before the next attempt, or None: give up and re-raise ``exc``."""
        n = self.attempt
        if n >= self.attempts or not self.should(exc):
            return None
        d = retry_delay(next(self.delays), exc)
        if self.timeout is not None and time.monotonic() - self.started + d > self.timeout:
            return None
        if self.on_retry is not None:
            self.on_retry(n, exc, d)
        log.debug("attempt %d failed (%s: %s); retrying in %.3f s", n, type(exc).__name__, exc, d)
        self.attempt = n + 1
        return d


def retry(fn: Callable[..., T], /, *args, backoff: "Backoff | float | None" = None, attempts: int = 5,
          retry_on: Any = DEFAULT_RETRY_ON, timeout: float | None = None,
          on_retry: Callable[[int, BaseException, float], Any] | None = None, **kwargs) -> T:
    """Call ``fn(*args, **kwargs)`` up to ``attempts`` times while it raises an exception
    matching ``retry_on`` (classes, or a predicate ``exc -> bool``; default
    ``(fastq.QueueFull, fastq.RateLimited)``), sleeping ``max(backoff delay,
    exc.retry_after)`` between attempts. ``backoff``: a :class:`fastq.Backoff` (default
    ``Backoff.exponential(0.1, cap=10, jitter="full")``) or seconds. ``timeout``: give up
    (re-raise) rather than sleep past this many seconds from the first call.
    ``on_retry(attempt, exc, delay)`` is called before each sleep. The last exception, or
    one that does not match, propagates unchanged."""
    run = _Run(backoff, attempts, retry_on, timeout, on_retry)
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if (d := run.wait(e)) is None:
                raise
        time.sleep(d)


async def aretry(fn: Callable[..., Awaitable[T]], /, *args, backoff: "Backoff | float | None" = None,
                 attempts: int = 5, retry_on: Any = DEFAULT_RETRY_ON, timeout: float | None = None,
                 on_retry: Callable[[int, BaseException, float], Any] | None = None, **kwargs) -> T:
    """:func:`retry` for a coroutine function: awaits ``fn(*args, **kwargs)`` and sleeps
    with ``asyncio.sleep`` (the event loop keeps running; cancelling stops the retries)."""
    run = _Run(backoff, attempts, retry_on, timeout, on_retry)
    while True:
        try:
            return await fn(*args, **kwargs)
        except Exception as e:
            if (d := run.wait(e)) is None:
                raise
        await asyncio.sleep(d)


def retrying(*, backoff: "Backoff | float | None" = None, attempts: int = 5, retry_on: Any = DEFAULT_RETRY_ON,
             timeout: float | None = None,
             on_retry: Callable[[int, BaseException, float], Any] | None = None) -> Callable[[Callable], Callable]:
    """Decorator form of :func:`retry` / :func:`aretry` (chosen by whether the function is
    a coroutine function)::

        @fastq.retrying(attempts=8, backoff=fastq.Backoff.exponential(0.05, cap=5, jitter="full"))
        def publish(msg):
            return q.publish(msg)          # QueueFull / RateLimited: wait retry_after, try again
    """
    _Run(backoff, attempts, retry_on, timeout, on_retry)             # bad options fail at decoration
    opts = dict(backoff=backoff, attempts=attempts, retry_on=retry_on, timeout=timeout, on_retry=on_retry)

    def deco(fn):
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(*args, **kwargs):
                return await aretry(functools.partial(fn, *args, **kwargs), **opts)
            return awrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return retry(functools.partial(fn, *args, **kwargs), **opts)
        return wrapper
    return deco
