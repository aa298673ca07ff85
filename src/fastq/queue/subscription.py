"""``Queue.subscribe``: a pool of threads calling a handler for each message."""
from __future__ import annotations

import asyncio
import inspect
import logging
import random
import threading
from typing import TYPE_CHECKING, Any, Callable, Union

from ..errors import Closed, FastqError, InvalidArgument, LeaseLost, ProducerFenced
from ..log.config import check_int
from .exactly_once import ExactlyOnceRunner

if TYPE_CHECKING:
    from .backend import LeasedMessage as Message, QueueBackend as Queue

__all__ = ["Subscription", "GUARANTEES", "exponential_backoff", "resolve_backoff"]

GUARANTEES = ("at-least-once", "at-most-once", "exactly-once")
log = logging.getLogger("fastq.queue")

Backoff = Union[None, float, Callable[[int], float]]


def exponential_backoff(base: float = 0.1, cap: float = 60.0, rng: random.Random | None = None,
                        jitter: float = 1.0) -> Callable[[int], float]:
    """Delay before the next delivery after the n-th failed one: exponential with jitter
    (AWS's "Exponential Backoff and Jitter"): d = min(cap, base * 2**(n-1)), then uniform in
    [d * (1 - jitter), d]. ``jitter=1.0`` (the default) is full jitter, ``0.0`` none
    (BullMQ's ``jitter`` option means the same fraction). Jitter spreads the retries of
    messages that failed together (a dependency down) so they do not all come back at the
    same moment."""
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0.0 <= jitter <= 1.0:
        raise InvalidArgument(f"jitter must be a fraction in [0, 1], got {jitter!r}")
    r = rng or random.Random()

    def delay(n: int) -> float:
        d = min(cap, base * (2.0 ** max(0, min(n - 1, 60))))
        return d if not jitter else r.uniform(d * (1.0 - jitter), d)
    return delay


def resolve_backoff(backoff: Backoff) -> Callable[[int], float]:
    """None: :func:`exponential_backoff` (0.1 s doubling up to 60 s, full jitter); a number:
    that many seconds every time; a callable: delivery count -> seconds."""
    if backoff is None:
        return exponential_backoff()
    if callable(backoff):
        return backoff
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
    ``failed`` those whose handler raised; ``errors`` keeps the last few exceptions.
    ``"exactly-once"``: see :mod:`fastq.queue.exactly_once` (``skipped`` counts the
    redelivered messages found already handled and acked without calling the handler)."""

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
        self._eos = ExactlyOnceRunner(queue) if guarantee == "exactly-once" else None
        self.skipped = 0
        self.handled = 0
        self.failed = 0
        self.errors: list[BaseException] = []
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"fastq-sub-{queue.name}-{i}",
                                          daemon=True) for i in range(concurrency)]
        for t in self._threads:
            t.start()

    def _record(self, ok: bool, exc: BaseException | None = None) -> None:
        with self._count_lock:
            if ok:
                self.handled += 1
            else:
                self.failed += 1
                self.errors = (self.errors + [exc])[-16:]

    def _run(self, index: int) -> None:
        q = self.queue
        at_most = self.guarantee == "at-most-once"
        loop = asyncio.new_event_loop() if self.is_async else None   # a coroutine handler runs here
        try:
            if self._eos is not None:
                self._eos_loop(q, index, loop)
            else:
                self._loop(q, at_most, loop)
        finally:
            if loop is not None:
                loop.close()

    def _call(self, loop, *args) -> None:
        if loop is not None:
            loop.run_until_complete(self.handler(*args))
        else:
            self.handler(*args)

    def _hand_back(self, m: "Message", e: BaseException | None) -> None:
        """nack (after the backoff when the handler failed), ignoring a lost lease."""
        try:
            m.nack(self.backoff(m.delivery_count) if e is not None else 0.0, error=e)
        except (LeaseLost, Closed):
            pass

    def _eos_loop(self, q: "Queue", index: int, loop) -> None:
        """guarantee="exactly-once" (fastq.queue.exactly_once): the handler's outputs and
        the outcome record in one transaction, committed before the ack."""
        eos = self._eos
        tp = None
        try:
            while not self._stop.is_set():
                try:
                    msgs = q.receive(self.max_messages, wait=0.1)
                except Closed:
                    return
                for m in msgs:
                    if self._stop.is_set():
                        self._hand_back(m, None)     # not started: hand it back at once
                        continue
                    try:
                        if tp is None or tp._closed:
                            tp = eos.producer(index)
                        if m.delivery_count > 1:
                            eos.maybe_finish_dead()
                            done = eos.outcomes.committed(m)
                            if done is not None:     # handled by an earlier delivery: finish it
                                eos.apply(m, done["out"])
                                m.ack()
                                with self._count_lock:
                                    self.skipped += 1
                                continue
                        tx = tp.begin()
                    except ProducerFenced as e:      # another subscriber finished our id's transaction
                        self._record(False, e)
                        if tp is not None:
                            tp.close()
                            tp = None
                        self._hand_back(m, None)
                        continue
                    except LeaseLost as e:
                        self._record(False, e)
                        continue
                    except FastqError as e:          # storage trouble: the message comes back
                        self._record(False, e)
                        self._hand_back(m, e)
                        continue
                    self._eos_one(q, m, tx, tp, loop)
        finally:
            if tp is not None:
                tp.close()

    def _eos_one(self, q: "Queue", m: "Message", tx, tp, loop) -> None:
        eos = self._eos
        try:
            ctx = eos.context(tx, m)
            self._call(loop, m, ctx)
            eos.step("handled")
            if m.settled:
                raise InvalidArgument("an exactly-once handler must not ack, nack or reject its message: "
                                      "the subscription acks it with the transaction")
            eos.outcome(ctx, tp)
            eos.step("outcome")
            m.extend(q.visibility_timeout)   # still ours: nobody else can be handling it
            tx.commit()
            eos.step("committed")
        except Exception as e:
            if tx.state == "ongoing":
                try:
                    tx.abort()
                except FastqError:
                    pass                     # the next open of the id aborts it
            self._record(False, e)
            if not isinstance(e, LeaseLost) and not m.settled:
                log.debug("exactly-once handler failed on %r", m, exc_info=True)
                self._hand_back(m, e)
            return
        try:
            eos.apply(m, ctx._out)
            eos.step("applied")
            m.ack()
        except (LeaseLost, FastqError) as e:     # committed: a redelivery finds it and acks
            self._record(False, e)
            return
        self._record(True)

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
