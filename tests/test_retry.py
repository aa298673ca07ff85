"""fastq.retry / aretry / retrying (fastq.flow.retry; issue 17): client-side retries that
sleep max(backoff delay, exc.retry_after), give up on the last attempt, on an exception
they were not told to retry, or past their timeout."""
from __future__ import annotations

import asyncio
import time

import pytest

import fastq

TINY = fastq.Backoff.fixed(0.001)


class Flaky:
    """Raises the given exceptions in turn, then returns ``"ok"``; records call times."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls: list[float] = []

    def __call__(self, *args, **kwargs):
        self.calls.append(time.monotonic())
        self.args = (args, kwargs)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_retry_sleeps_at_least_retry_after_then_returns():
    f = Flaky(fastq.QueueFull("full", retry_after=0.15), fastq.RateLimited("slow down", 0.1, key="k"))
    waits: list[tuple[int, str, float]] = []
    out = fastq.retry(f, 1, x=2, backoff=TINY, on_retry=lambda n, e, d: waits.append((n, type(e).__name__, d)))
    assert out == "ok" and f.args == ((1,), {"x": 2})
    assert waits == [(1, "QueueFull", 0.15), (2, "RateLimited", 0.1)]
    gaps = [b - a for a, b in zip(f.calls, f.calls[1:])]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.1


def test_backoff_delay_wins_when_it_is_longer_than_retry_after():
    f = Flaky(fastq.QueueFull("full", retry_after=None), fastq.RateLimited("x", 0.01))
    waits = []
    fastq.retry(f, backoff=fastq.Backoff.exponential(0.05), on_retry=lambda n, e, d: waits.append(d))
    assert waits == [0.05, 0.1]


def test_gives_up_after_attempts_and_on_other_exceptions():
    f = Flaky(*[fastq.QueueFull("full")] * 5)
    with pytest.raises(fastq.QueueFull):
        fastq.retry(f, attempts=3, backoff=TINY)
    assert len(f.calls) == 3
    g = Flaky(KeyError("not retried"), fastq.QueueFull("x"))
    with pytest.raises(KeyError):
        fastq.retry(g, backoff=TINY)
    assert len(g.calls) == 1


def test_timeout_gives_up_rather_than_sleep_past_it():
    f = Flaky(fastq.RateLimited("x", retry_after=30.0))
    t0 = time.monotonic()
    with pytest.raises(fastq.RateLimited):
        fastq.retry(f, timeout=1.0)
    assert time.monotonic() - t0 < 0.5 and len(f.calls) == 1


def test_retry_on_a_class_or_a_predicate():
    f = Flaky(OSError("reset"), OSError("reset"))
    assert fastq.retry(f, retry_on=OSError, backoff=TINY) == "ok" and len(f.calls) == 3
    g = Flaky(ValueError("retry me"), ValueError("not me"))
    with pytest.raises(ValueError, match="not me"):
        fastq.retry(g, retry_on=lambda e: "retry" in str(e), backoff=TINY)
    for bad in (dict(attempts=0), dict(retry_on=()), dict(retry_on="OSError"), dict(timeout=-1),
                dict(backoff="fast"), dict(on_retry=3)):
        with pytest.raises(fastq.InvalidArgument):
            fastq.retry(f, **bad)
    with pytest.raises(fastq.InvalidArgument):
        fastq.retrying(attempts=True)


def test_decorator_sync_keeps_the_functions_own_keyword_names():
    f = Flaky(fastq.QueueFull("full", retry_after=0.01))

    @fastq.retrying(attempts=3, backoff=TINY)
    def publish(msg, attempts=None):
        """Docstring kept."""
        return f(msg, attempts=attempts)
    assert publish("m", attempts="mine") == "ok" and f.args == (("m",), {"attempts": "mine"})
    assert publish.__name__ == "publish" and publish.__doc__ == "Docstring kept."


def test_async_twin_and_decorator_and_cancellation():
    f = Flaky(fastq.RateLimited("x", 0.05), fastq.RateLimited("x", 0.05))

    async def call(v):
        return f(v)

    @fastq.retrying(backoff=TINY)
    async def decorated(v):
        return f(v)

    async def main():
        assert await fastq.aretry(call, 1, backoff=TINY) == "ok"
        assert len(f.calls) == 3 and f.calls[2] - f.calls[1] >= 0.05
        f.errors = [fastq.QueueFull("x", retry_after=0.01)]
        assert await decorated(2) == "ok"
        f.errors = [fastq.RateLimited("x", 30.0)] * 2        # a long wait, cancelled
        n = len(f.calls)
        t = asyncio.ensure_future(decorated(3))
        await asyncio.sleep(0.05)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert len(f.calls) == n + 1                         # no attempt after the cancel
    asyncio.run(main())
