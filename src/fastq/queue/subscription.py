"""``Queue.subscribe``: a pool of threads calling a handler for each message."""
from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Union

from ..errors import Closed, FastqError, InvalidArgument, LeaseLost, ProducerFenced
from ..flow.backoff import Backoff as FlowBackoff, exponential_backoff
from ..log.config import check_int
from .exactly_once import ExactlyOnceRunner

if TYPE_CHECKING:
    from .backend import LeasedMessage as Message, QueueBackend as Queue

__all__ = ["Subscription", "GUARANTEES", "exponential_backoff", "resolve_backoff"]

GUARANTEES = ("at-least-once", "at-most-once", "exactly-once")
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

    def _eos_loop(self, q: "Queue", _index: int, loop) -> None:
        """guarantee="exactly-once" (fastq.queue.exactly_once): the messages of one
        receive are handled in one transaction with their outcome record, committed
        before their acks; when a handler fails, the others of its batch run again, each
        in a transaction of its own."""
        eos = self._eos
        tp = None
        index = eos.claim_slot()                     # names this thread's transactional id
        try:
            while not self._stop.is_set():
                try:
                    msgs = q.receive(self.max_messages, wait=0.1)
                except Closed:
                    return
                if self._stop.is_set():
                    for m in msgs:
                        self._hand_back(m, None)     # not started: hand them back at once
                    continue
                pending = [[m for m in msgs if not self._eos_done_before(m)]]
                while pending:
                    batch = pending.pop(0)
                    if not batch:
                        continue
                    try:
                        if tp is None or tp._closed:
                            tp = eos.producer(index)
                    except FastqError as e:          # storage trouble: the messages come back
                        self._record(False, e)
                        for m in batch:
                            self._hand_back(m, e)
                        continue
                    pending = [[m] for m in self._eos_batch(q, batch, tp, loop)] + pending
        finally:
            if tp is not None:
                tp.close()
            eos.release_slot(index)

    def _eos_done_before(self, m: "Message") -> bool:
        """A redelivered message found handled by an earlier delivery (committed): its
        queue outputs are published (once) and it is acked, without the handler. True
        also when it needs nothing more from this worker (its lease was lost)."""
        if m.delivery_count <= 1:
            return False
        eos = self._eos
        try:
            eos.maybe_finish_dead()
            done = eos.outcomes.committed(m)
            if done is None:
                return False
            eos.apply(m, done["out"].get(str(m.id), ()))
            m.ack()
        except LeaseLost as e:
            self._record(False, e)
        except FastqError as e:
            self._record(False, e)
            self._hand_back(m, e)
        else:
            with self._count_lock:
                self.skipped += 1
        return True

    def _eos_batch(self, q: "Queue", ms: list, tp, loop) -> list:
        """Handle ``ms`` in one transaction. Returns the messages to handle again (each
        alone): the others of a batch whose handler failed on one."""
        eos = self._eos
        try:
            tx = tp.begin()
        except ProducerFenced as e:                  # another subscriber finished our id's transaction
            self._record(False, e)
            tp.close()
            return ms
        except FastqError as e:
            self._record(False, e)
            for m in ms:
                self._hand_back(m, e)
            return []
        ctxs: list = []
        try:
            for m in ms:
                ctx = eos.context(tx, m)
                self._call(loop, m, ctx)
                if m.settled:
                    raise InvalidArgument("an exactly-once handler must not ack, nack or reject its message: "
                                          "the subscription acks it with the transaction")
                ctxs.append(ctx)
            eos.step("handled")
            eos.outcome(ctxs, tp)
            eos.step("outcome")
            for m in ms:
                m.extend(q.visibility_timeout)       # still ours: nobody else can be handling them
            tx.commit()
            eos.step("committed")
        except Exception as e:
            if tx.state == "ongoing":
                try:
                    tx.abort()
                except FastqError:
                    pass                             # the next open of the id aborts it
            self._record(False, e)
            if len(ctxs) < len(ms):                  # the handler failed on ms[len(ctxs)]
                bad = ms[len(ctxs)]
                log.debug("exactly-once handler failed on %r", bad, exc_info=True)
                if not bad.settled:
                    self._hand_back(bad, e)
                return [m for m in ms if m is not bad]
            for m in ms:                             # a lease lost, storage trouble: all come back
                if not m.settled:
                    self._hand_back(m, None if isinstance(e, LeaseLost) else e)
            return []
        try:
            for ctx in ctxs:
                eos.apply(ctx.message, ctx._out)
            eos.step("applied")
            q.ack_many(ms)
        except FastqError as e:                      # committed: a redelivery finds it and acks
            self._record(False, e)
        with self._count_lock:
            self.handled += sum(1 for m in ms if m.settled)
        return []

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
