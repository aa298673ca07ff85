"""Pub/sub and the in-process EventEmitter (issue 17; docs/BACKPRESSURE.md, "Pub/sub and
EventEmitter").

* :class:`PubSub` (``broker.pubsub(name, durable=...)``): fan-out to every subscriber, with
  NATS or Redis-glob channel patterns, durable (log-backed, replayable, resumable) or
  ephemeral (memory, at-most-once) — :mod:`fastq.pubsub.pubsub`;
* :class:`AsyncSubscriber`: the asyncio face of a subscriber — :mod:`fastq.pubsub.aio`;
* :class:`EventEmitter`: Node's EventEmitter for one process — :mod:`fastq.pubsub.emitter`.

This package serves ``Broker.pubsub`` (registered with
:func:`fastq.broker.broker.register_kind`: the broker sits a layer below and never imports it).
"""
from __future__ import annotations

from ..broker import broker as _broker_mod
from .aio import AsyncSubscriber
from .emitter import EventEmitter
from .patterns import SYNTAXES, Matcher, compile_pattern, validate_channel
from .pubsub import PubSub, PubSubMessage, Subscriber

__all__ = ["PubSub", "PubSubMessage", "Subscriber", "AsyncSubscriber", "EventEmitter", "Matcher",
           "SYNTAXES", "compile_pattern", "validate_channel"]


class _PubSubKind:
    """What ``Broker.pubsub`` calls (see fastq.broker.broker.register_kind)."""

    @staticmethod
    def open(broker, name: str, durable, options: dict) -> PubSub:
        return PubSub(broker, name, durable, **options)


_broker_mod.register_kind("pubsub", _PubSubKind())
