"""The backend seam: what the code above a queue (``subscribe``, the asyncio face's
handlers, the task queue to come) may use of it. :class:`fastq.queue.Queue` — lane logs
and queue.state on one machine — is the first backend; a NATS JetStream backend, for
users who outgrow one machine, implements the same two protocols. Each operation and
its JetStream equivalent:

================================  =====================================================
``QueueBackend``                  NATS JetStream (WorkQueue stream + durable pull consumer)
================================  =====================================================
``publish(data, key, headers,``   ``js.publish(subject, data, headers)``; ``dedup_id`` →
``delay, priority, dedup_id)``    ``Nats-Msg-Id`` (stream ``duplicate_window``); ``delay`` →
                                  a message schedule (``Nats-Schedule``, server 2.12+);
                                  ``priority`` → one subject (and consumer) per priority
``publish_many(items)``           one ``js.publish`` each (async, awaited together)
``receive(max_messages, wait)``   ``sub.fetch(max_messages, timeout=wait)``
``ack_many(messages)``            ``msg.ack()`` each
``depth()``                       ``consumer_info``: ``num_pending`` (ready),
                                  ``num_ack_pending`` (in flight); dead: the DLQ stream
``closed`` / ``close()``          ``nc.close()``
================================  =====================================================

================================  =====================================================
``LeasedMessage``                 JetStream message
================================  =====================================================
``ack()``                         ``msg.ack()``
``nack(delay, error=)``           ``msg.nak(delay=delay)`` (error: a header on a republish)
``extend(seconds)``               ``msg.in_progress()`` (resets AckWait)
``reject(reason)``                ``msg.term()`` + publish to the DLQ stream
``delivery_count``                ``msg.metadata.num_delivered``
``settled``                       set by the client after ack/nak/term
visibility_timeout, max_deliveries  consumer ``ack_wait``, ``max_deliver`` (+ ``backoff``)
================================  =====================================================
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

__all__ = ["QueueBackend", "LeasedMessage"]


@runtime_checkable
class LeasedMessage(Protocol):
    """A message received from a backend and leased to its receiver."""

    id: Any
    key: bytes | None
    body: bytes
    delivery_count: int

    @property
    def data(self) -> Any: ...
    @property
    def headers(self) -> dict[str, bytes]: ...
    @property
    def settled(self) -> bool: ...
    def ack(self) -> None: ...
    def nack(self, delay: float = 0.0, *, error: Any = None) -> None: ...
    def extend(self, seconds: float) -> None: ...
    def reject(self, reason: Any = None) -> None: ...


@runtime_checkable
class QueueBackend(Protocol):
    """A queue as the layers above it see it."""

    name: str

    @property
    def closed(self) -> bool: ...
    def publish(self, data: Any, *, key: Any = None, headers: Any = None, delay: float | None = None,
                priority: int = 0, dedup_id: Any = None) -> Any: ...
    def publish_many(self, items: Iterable[Any], **options: Any) -> list[Any]: ...
    def receive(self, max_messages: int = 1, wait: float | None = None) -> Sequence[LeasedMessage]: ...
    def ack_many(self, messages: Iterable[LeasedMessage]) -> None: ...
    def depth(self) -> tuple: ...
    def close(self) -> None: ...
