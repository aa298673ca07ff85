"""``q.subscribe(handler, guarantee="exactly-once")``: what the handler publishes and the
message's ack, all or nothing.

A queue's ack is a word in queue.state, not a Kafka offset, so it cannot be written
*inside* a transaction. Instead the transaction records the ack's decision, and the ack
follows it:

1. The handler is called as ``handler(message, tx)``; it publishes through ``tx``
   (:class:`ExactlyOnce`): ``tx.publish`` / ``tx.publish_many`` to topics (records of
   the transaction), ``tx.enqueue`` to queues (kept in the outcome record, step 2).
2. After the handler returns, one **outcome record** is appended, in the same
   transaction, to the queue's outcome topic ``__eos.<queue>`` (one partition, the
   queue's durability; key: the first message id in decimal; value: JSON
   ``{"ids": [message id, ...], "tid": transactional id, "pid": producer id,
   "out": {"<message id>": [[queue, body (base64), key (base64 or null),
   {header: base64}, delay or null, priority], ...]}}``). The messages of one receive
   (``max_messages``) share one transaction and one outcome record; when a handler
   raises, the transaction is aborted, that message nacked, and the others of the
   batch handled again, each in a transaction of its own.
3. The leases are checked and extended (``message.extend``): a lease lost by now — the
   message was redelivered to someone else — aborts the transaction (the batch's other
   messages are handed back).
4. The transaction commits (its COMMIT markers are the decision); then the ``enqueue``
   outputs are published to their queues with ``dedup_id = "eos:<queue>:<id>:<i>"``;
   then the messages are acked.

A handler that raises aborts the transaction (nothing of it is ever visible to
read_committed readers) and nacks the message with the subscription's backoff.

**Redelivery** (``delivery_count > 1``): before calling the handler, the subscriber
looks for the message's outcome records (an index of the outcome topic this process
keeps, read from the message's first publish time on). An outcome record in a
transaction still open is finished first: its transactional id is opened (which fences
the instance that wrote it, alive or not, and rolls a prepared commit forward or aborts
the rest, :func:`fastq.broker.transaction.finish`). If one outcome is committed, the
message was handled: its ``enqueue`` outputs are published again (the dedup ids store
each once) and it is acked, *without* calling the handler. Otherwise the handler runs.

Why nothing is handled twice visibly: a second delivery can only be handed out after
the first one's lease ended. If that happened before step 3, step 3 fails and the first
attempt aborts. If after, the outcome record (step 2) was already in the log when the
second receiver looked, and finishing its transaction fences the first attempt: either
its commit is decided (then the second receiver acks without handling) or it is
aborted (then the first attempt can no longer commit). Each subscriber thread has its
own transactional id ``eos.<queue>.<session>.<slot>`` (slot: a number unique among the
process's subscriber threads of that queue handle), reopened by whoever next holds that
session and slot; the transactions of gone threads are finished by
:meth:`ExactlyOnceRunner.finish_dead` when a subscriber starts and, at most once a
second, at a redelivery.

Limits, stated: queue outputs are exactly once while the redelivery after a crash comes
within the target queue's ``dedup_window`` (default 300 s; a dead subscriber's
messages are redelivered at once, a hung one's after ``visibility_timeout``); a message
whose ack keeps failing may still be dead-lettered after ``max_deliveries`` with its
outputs committed; readers of the output topics must read with
``isolation="read_committed"``.

Thread- and process-safety: the outcome index is shared by the subscription's threads
under a lock; transactional ids are one per thread.
"""
from __future__ import annotations

import base64
import json
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from ..broker.idempotence import PRODUCERS_DIR
from ..broker.transaction import SUFFIX, TransactionalProducer, batch_status, finish, read_state
from ..errors import CorruptRecord, InvalidArgument

if TYPE_CHECKING:
    from .queue import Message, Queue

__all__ = ["ExactlyOnce", "Outcomes", "outcome_topic", "OUTCOME_PREFIX"]

OUTCOME_PREFIX = "__eos."
_LOOKBACK_MS = 60_000                     # clock slack when reading outcomes from a publish time
_SLOTS: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()   # queue handle -> slots in use
_SLOTS_LOCK = threading.Lock()


def outcome_topic(queue_name: str) -> str:
    """The name of the topic holding the outcome records of ``queue_name``."""
    return OUTCOME_PREFIX + queue_name


def _b64(b) -> str | None:
    return None if b is None else base64.b64encode(bytes(b)).decode()


def _unb64(s):
    return None if s is None else base64.b64decode(s)


class ExactlyOnce:
    """What an exactly-once handler publishes through (its second argument): everything
    it publishes here becomes visible (to read_committed readers, and in the target
    queues) if and only if the message is acked. ``message`` is the message handled;
    ``idempotency_key`` its stable key (the same on every redelivery); ``transaction``
    the underlying :class:`fastq.Transaction`."""

    def __init__(self, sub: "ExactlyOnceRunner", tx, message: "Message"):
        self._sub = sub
        self.transaction = tx
        self.message = message
        self._out: list = []

    @property
    def idempotency_key(self) -> str:
        return self.message.idempotency_key

    def publish(self, topic, value, **options):
        """``Transaction.publish``: one record to ``topic`` (a name or a Topic)."""
        return self.transaction.publish(topic, value, **options)

    def publish_many(self, topic, values, **options):
        """``Transaction.publish_many``: one batch to one partition of ``topic``."""
        return self.transaction.publish_many(topic, values, **options)

    def enqueue(self, queue: str, data: Any, *, key=None, headers: dict | None = None,
                delay: float | None = None, priority: int = 0) -> None:
        """Publish ``data`` to queue ``queue`` when (and only when) this message is acked.
        Encoded now by the subscribed queue's codec; published after the commit, deduplicated by
        message id and position, so a redelivery that finds this commit publishes it
        once. The target queue's ``dedup_window`` must be at least twice this queue's
        ``visibility_timeout``."""
        target = self._sub.target(queue)
        body = target.codec.encode(data)
        if key is not None and not isinstance(key, (str, bytes, bytearray, memoryview)):
            raise InvalidArgument(f"key must be str or bytes, got {type(key).__name__}")
        if isinstance(key, str):
            key = key.encode()
        hd = {}
        for k, v in (headers or {}).items():
            if not isinstance(k, str) or not isinstance(v, (str, bytes)):
                raise InvalidArgument(f"header {k!r}: names are str, values str or bytes")
            hd[k] = _b64(v.encode() if isinstance(v, str) else v)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
            raise InvalidArgument(f"priority must be an int in 0..9, got {priority!r}")
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0):
            raise InvalidArgument(f"delay must be None or seconds >= 0, got {delay!r}")
        self._out.append([queue, _b64(body), _b64(key), hd, delay, priority])


class Outcomes:
    """The outcome records of one queue's exactly-once subscribers, as this process has
    read them: message id -> [(offset, record value)]. Read lazily — from the first
    publish time of the first redelivered message asked about, extended backwards when
    an older one is asked about, and to the end on every question."""

    def __init__(self, queue: "Queue"):
        self.topic = queue.broker.topic(outcome_topic(queue.name), partitions=1, durability=queue.durability)
        self._lock = threading.Lock()
        self._lo: int | None = None
        self._hi = 0
        self._by_id: dict[int, list] = {}

    def _scan(self, a: int, b: int) -> None:
        a = max(a, self.topic.log(0).start_offset)     # retention may have moved past it
        if a >= b:
            return
        for rec in self.topic.read(0, a, end=b):
            v = json.loads(bytes(rec.value))
            for mid in v["ids"]:
                self._by_id.setdefault(mid, []).append((rec.offset, v))

    def _find(self, mid: int, since_ms: int) -> list:
        lg = self.topic.log(0)
        end = lg.end_offset
        start = self.topic.offsets_for_timestamp(since_ms)[0]
        start = max(lg.start_offset, end if start is None else start)
        if self._lo is None:
            self._lo = self._hi = start
        if start < self._lo:
            self._scan(start, self._lo)
            self._lo = start
        if self._hi < end:
            self._scan(self._hi, end)
            self._hi = end
        return list(self._by_id.get(mid, ()))

    def committed(self, m: "Message"):
        """The committed outcome of ``m`` (its record value), or None when no attempt at
        it committed. Transactions of outcomes still open are finished first (fencing
        whoever wrote them)."""
        with self._lock:
            for _ in range(8):
                found = self._find(m.id, int(m.published_at * 1000) - _LOOKBACK_MS)
                states = [(batch_status(self.topic, 0, off, v["pid"]), v) for off, v in found]
                done = [v for st, v in states if st == "committed"]
                if done:
                    return done[0]
                still = [v for st, v in states if st == "open"]
                if not still:
                    return None
                for v in still:
                    finish(self.topic.broker, v["tid"])
        return None


class ExactlyOnceRunner:
    """The exactly-once part of a :class:`fastq.queue.subscription.Subscription`: one
    :class:`TransactionalProducer` per worker thread, the outcome index, the handles of
    the queues ``enqueue`` writes to."""

    hook = None                           # tests: called with each step's name (and the transaction's)

    def __init__(self, queue: "Queue"):
        broker = getattr(queue, "broker", None)
        if broker is None or not hasattr(queue, "_session"):
            raise InvalidArgument(f"guarantee='exactly-once' needs a fastq queue with a broker, got {queue!r}")
        self.queue = queue
        self.broker = broker
        self.outcomes = Outcomes(queue)
        self._targets: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def step(self, name: str) -> None:
        if self.hook is not None:
            self.hook(name)

    def target(self, name: str):
        with self._lock:
            t = self._targets.get(name)
            if t is None or t.closed:
                t = self.broker.queue(name, codec=self.queue.codec, create=False)
                need = 2 * self.queue.visibility_timeout
                if t.config["dedup_window"] < need:
                    raise InvalidArgument(
                        f"queue {name!r} has dedup_window={t.config['dedup_window']} s: exactly-once "
                        f"outputs of queue {self.queue.name!r} need at least {need} s (twice its "
                        "visibility_timeout)")
                self._targets[name] = t
            return t

    def finish_dead(self) -> list[str]:
        """Finish the transactions left open by subscriber threads that are gone: those
        of sessions no live process holds (killed subscribers), and those of this
        process's session whose slot no thread here uses (a killed process's slot, now
        ours, that this process does not run). Until then they hold read_committed
        readers of the topics they wrote to back. Returns the transactional ids finished."""
        self._next_sweep = time.monotonic() + 1.0
        d = os.path.join(self.broker.path, PRODUCERS_DIR)
        prefix = f"eos.{self.queue.name}."
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        done = []
        for name in names:
            if not (name.startswith(prefix) and name.endswith(SUFFIX)):
                continue
            tid = name[:-len(SUFFIX)]
            session, _, slot = tid[len(prefix):].partition(".")
            if not (session.isdigit() and slot.isdigit()):
                continue
            mine = int(session) == self.queue._session
            if mine:
                with _SLOTS_LOCK:
                    if int(slot) in _SLOTS.get(self.queue, ()):
                        continue             # a thread here runs it
            try:
                _, st = read_state(os.path.join(d, name))
            except CorruptRecord:
                continue
            if not st or st["state"].startswith("complete"):
                continue
            if mine:
                finish(self.broker, tid)
            elif not self.queue._if_session_dead(int(session), lambda: finish(self.broker, tid)):
                continue
            done.append(tid)
        return done

    def maybe_finish_dead(self) -> None:
        """:meth:`finish_dead`, at most once a second (a redelivery may follow a crash)."""
        if time.monotonic() >= self._next_sweep:
            self.finish_dead()

    def claim_slot(self) -> int:
        """A thread slot of this queue handle no other subscriber thread of this process
        uses (it names the thread's transactional id); give it back with release_slot."""
        with _SLOTS_LOCK:
            used = _SLOTS.setdefault(self.queue, set())
            slot = next(i for i in range(len(used) + 1) if i not in used)
            used.add(slot)
            return slot

    def release_slot(self, slot: int) -> None:
        with _SLOTS_LOCK:
            _SLOTS.get(self.queue, set()).discard(slot)

    def producer(self, slot: int) -> TransactionalProducer:
        """A new transactional producer for the thread holding ``slot`` (after a receive:
        the queue's session is known); first, the transactions that dead sessions and
        unused slots left open are finished."""
        self.finish_dead()
        tp = TransactionalProducer(self.broker, f"eos.{self.queue.name}.{self.queue._session}.{slot}")
        tp._hook = self.hook
        return tp

    def context(self, tx, m: "Message") -> ExactlyOnce:
        return ExactlyOnce(self, tx, m)

    def outcome(self, ctxs: list, tp: TransactionalProducer) -> None:
        """Append the outcome record of the messages of ``ctxs`` (one transaction)."""
        ids = [c.message.id for c in ctxs]
        v = {"ids": ids, "tid": tp.transactional_id, "pid": tp.producer_id,
             "out": {str(c.message.id): c._out for c in ctxs if c._out}}
        ctxs[0].transaction.publish(self.outcomes.topic, json.dumps(v, separators=(",", ":")).encode(),
                                    key=str(ids[0]).encode(), partition=0)

    def apply(self, m: "Message", out: list) -> None:
        """Publish an outcome's ``enqueue`` outputs (deduplicated: once, however often
        this runs within the targets' dedup windows)."""
        for i, (name, body, key, hd, delay, prio) in enumerate(out):
            t = self.target(name)
            raw = {k: _unb64(v) for k, v in hd.items()}
            t._publish(_unb64(body), encoded=True, key=_unb64(key), headers=raw or None, delay=delay, priority=prio,
                               dedup_id=f"eos:{self.queue.name}:{m.id}:{i}")
