"""``fastq.IdempotencyStore(broker, "payments")``: the keys of work already done, kept in a
topic, so work keyed by them is done once.

Format: the topic ``name`` (created with one partition; the broker's retention unless
``retention_ms`` is given at creation): one record per key done — key: the key's UTF-8
bytes, value empty, no headers. Recorded inside a transaction (``record(key, tx)``,
``tx`` a :class:`fastq.Transaction` or an exactly-once handler's
:class:`fastq.ExactlyOnce`), the key is done exactly when that transaction commits —
with an exactly-once queue handler, exactly when the message is acked. Read back with
``isolation="read_committed"``: an aborted or open transaction's keys do not count.

Each store object keeps the set of keys it has read (from the log start on its first
question, then what was committed since): memory grows with the keys retained.

What it does not do: make a side effect outside fastq atomic with the key (a process
killed after the side effect and before the commit does it again on the next
delivery — record the key in the side effect's own database transaction for that, see
docs/GUARANTEES.md), or stop two handlers of the same key running at once (both may
find it new; use the key as the message key of an ordered queue, or a unique
constraint in your database).

Thread-safety: shared by threads (one lock around the catch-up). Process-safety: each
process's store reads what every process recorded.
"""
from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Iterator

from ..errors import InvalidArgument

if TYPE_CHECKING:
    from .broker import Broker

__all__ = ["IdempotencyStore"]


def _key_bytes(key) -> bytes:
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise InvalidArgument(f"an idempotency key is str or bytes, got {type(key).__name__}")


class IdempotencyStore:
    """Keys of work done, in topic ``name`` of ``broker`` (see the module docstring).
    ``key in store`` / :meth:`seen`: done before? :meth:`record`: mark it done (inside
    ``tx`` when given). ``with store.once(key, tx) as first_time:`` does both around
    your work: records the key when the block exits without an exception, if it was new."""

    def __init__(self, broker: "Broker", name: str, *, retention_ms: int | None = None):
        self.topic = broker.topic(name, partitions=1, retention_ms=retention_ms)
        self.name = name
        self._keys: set[bytes] = set()
        self._pos = -1
        self._lock = threading.Lock()

    def _catch_up(self) -> None:
        lg = self.topic.log(0)
        if self._pos < lg.start_offset:
            self._pos = lg.start_offset
        lso = self.topic.last_stable_offset(0)
        if lso > self._pos:
            for rec in self.topic.read(0, self._pos, end=lso, isolation="read_committed"):
                self._keys.add(bytes(rec.key))
            self._pos = lso

    def seen(self, key: str | bytes) -> bool:
        """True when ``key`` was recorded and (if in a transaction) committed."""
        k = _key_bytes(key)
        with self._lock:
            if k in self._keys:
                return True
            self._catch_up()
            return k in self._keys

    __contains__ = seen

    def record(self, key: str | bytes, tx=None) -> None:
        """Mark ``key`` done: now, or with ``tx`` (a Transaction or an ExactlyOnce
        context) when it commits."""
        k = _key_bytes(key)
        if tx is None:
            self.topic.publish(b"", key=k, partition=0)
        else:
            tx.publish(self.topic, b"", key=k, partition=0)

    @contextlib.contextmanager
    def once(self, key: str | bytes, tx=None) -> Iterator[bool]:
        """``with store.once(key, tx) as first_time: if first_time: work()`` — records
        ``key`` (with ``tx``) when the block exits cleanly and the key was new."""
        first = not self.seen(key)
        yield first
        if first:
            self.record(key, tx)

    def __len__(self) -> int:
        with self._lock:
            self._catch_up()
            return len(self._keys)

    def __repr__(self) -> str:
        return f"<fastq.IdempotencyStore {self.name!r}>"
