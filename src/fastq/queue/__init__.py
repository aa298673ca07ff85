"""Message queues with acknowledgements (``broker.queue(name)``): publish, receive, ack,
nack, leases, dead letters, delay, priority, deduplication — see :mod:`fastq.queue.queue`
and docs/QUEUES.md.

This package serves ``Broker.queue`` / ``Broker.queues`` / ``Broker.delete_queue``
(registered with :func:`fastq.broker.broker.register_kind`: the broker sits a layer below
and never imports it).
"""
from __future__ import annotations

import os
import shutil
import time
import uuid

from .._core import _storage
from .._core._codec import os_errors
from ..broker import broker as _broker_mod
from ..broker.config import NAME_RE, read_json
from ..errors import CorruptRecord, InvalidArgument, UnknownQueue
from ..log.config import write_json_atomic
from .aio import AsyncQueue
from .backend import LeasedMessage, QueueBackend
from .bounds import LIMIT_OPTIONS, OVERFLOW_POLICIES, QueueLimits, QueueSignals, SignalWatcher, check_limits
from .codecs import CODECS, Codec, resolve_codec
from .queue import (QUEUE_DEFAULTS, QUEUE_FILE, STATE_FILE, Message, Queue, QueueDepth, create_state,
                    validate_queue_config)
from .exactly_once import ExactlyOnce
from .subscription import Subscription

__all__ = ["Queue", "Message", "QueueDepth", "Subscription", "AsyncQueue", "QUEUE_DEFAULTS", "CODECS", "Codec",
           "QueueBackend", "LeasedMessage", "ExactlyOnce", "QueueLimits", "QueueSignals", "SignalWatcher",
           "OVERFLOW_POLICIES"]

QUEUE_VERSION = 1


class _QueueKind:
    """What ``Broker.queue`` and friends call (see fastq.broker.broker.register_kind)."""

    @staticmethod
    def codec_key(codec):
        c = resolve_codec(codec)
        return c.name if isinstance(codec, str) else (c.dumps, c.loads)

    @staticmethod
    def asyncio(q: Queue) -> AsyncQueue:
        return AsyncQueue(q)

    @staticmethod
    def root(broker) -> str:
        return os.path.join(broker.path, "queues")

    def open(self, broker, name: str, codec, options: dict, create: bool) -> Queue:
        limits = self._limits(options)
        unknown = set(options) - set(QUEUE_DEFAULTS)
        if unknown:
            raise InvalidArgument(f"unknown queue option(s) {sorted(unknown)}; known: "
                                  f"{sorted(set(QUEUE_DEFAULTS) | set(LIMIT_OPTIONS))}")
        q = self._open(broker, name, codec, options, create)
        if limits:
            try:
                q.set_limits(**limits)
            except BaseException:
                q.close()
                raise
        return q

    def configure(self, q: Queue, options: dict) -> None:
        """``broker.queue(name, ...)`` found the handle open: apply the limits given (the
        rest of the configuration is the stored one, as for a queue opened anew)."""
        limits = self._limits(dict(options))
        if limits:
            q.set_limits(**limits)

    @staticmethod
    def _limits(options: dict) -> dict:
        """Pop the limit options (None: not given) and check each value. Limits live in
        queue.state (shared, changeable): given ones apply to an existing queue too,
        unlike the stored configuration."""
        limits = {k: options.pop(k) for k in LIMIT_OPTIONS if k in options}
        limits = {k: v for k, v in limits.items() if v is not None}
        high = limits.get("high_watermark")
        check_limits(limits.get("max_depth"), limits.get("overflow", "reject"), limits.get("block_timeout"),
                     high, limits.get("low_watermark") if high is not None else None, limits.get("max_bytes"))
        return limits

    def _open(self, broker, name: str, codec, options: dict, create: bool) -> Queue:
        codec = resolve_codec(codec)
        d = os.path.join(self.root(broker), name)
        path = os.path.join(d, QUEUE_FILE)
        if not os.path.exists(path):
            if not create:
                raise UnknownQueue(f"no queue {name!r} in broker {broker.path}")
            with broker._lock_dir():
                if not os.path.exists(path):
                    self._create(d, path, options)
        cfg = self._read_config(path)
        if not os.path.exists(os.path.join(d, STATE_FILE)):
            raise CorruptRecord(f"queue {name!r}: {STATE_FILE} is missing from {d} (its messages' delivery "
                                "state); restore it, or delete the queue", d)
        return Queue(broker, name, cfg, codec)

    @staticmethod
    def _create(d: str, path: str, options: dict) -> None:
        cfg = dict(QUEUE_DEFAULTS)
        cfg.update({k: v for k, v in options.items() if v is not None})
        if isinstance(cfg["visibility_timeout"], int):
            cfg["visibility_timeout"] = float(cfg["visibility_timeout"])
        validate_queue_config(cfg)
        cfg["version"] = QUEUE_VERSION
        cfg["created_ms"] = int(time.time() * 1000)
        made = not os.path.isdir(d)
        try:
            with os_errors("create queue", d):
                os.makedirs(d, exist_ok=True)
                create_state(os.path.join(d, STATE_FILE), cfg)
                _storage.Notifier(os.path.join(d, "notify")).close()   # it takes space too
                write_json_atomic(path, cfg)          # last: a queue exists once this is there
        except BaseException:
            if made:
                shutil.rmtree(d, ignore_errors=True)
            raise

    @staticmethod
    def _read_config(path: str) -> dict:
        cfg = read_json(path)
        if cfg.get("version") != QUEUE_VERSION:
            raise CorruptRecord(f"{path}: unknown queue version {cfg.get('version')!r}", path)
        for k, v in QUEUE_DEFAULTS.items():
            cfg.setdefault(k, v)
        try:
            validate_queue_config(cfg)
        except InvalidArgument as e:
            raise CorruptRecord(f"{path}: {e}", path) from None
        return cfg

    def names(self, broker) -> list[str]:
        root = self.root(broker)
        if not os.path.isdir(root):
            return []                                  # no queue was ever made here
        with os_errors("list queues", root):
            names = os.listdir(root)
        return sorted(n for n in names if NAME_RE.fullmatch(n) and n not in (".", "..")
                      and os.path.exists(os.path.join(root, n, QUEUE_FILE)))

    def delete(self, broker, name: str) -> None:
        root = self.root(broker)
        d = os.path.join(root, name)
        with broker._lock_dir():
            if not os.path.exists(os.path.join(d, QUEUE_FILE)):
                raise UnknownQueue(f"no queue {name!r} in broker {broker.path}")
            grave = os.path.join(root, f".deleted-{name}-{uuid.uuid4().hex[:8]}")
            with os_errors(f"delete queue {name!r}", d):
                os.rename(d, grave)
            _storage.fsync_dir(root)
        shutil.rmtree(grave, ignore_errors=True)


_broker_mod.register_kind("queue", _QueueKind())
