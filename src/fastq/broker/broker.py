"""The embedded broker: one directory, any number of processes, no server.

Layout::

    <broker>/broker.json                 broker metadata (version, default durability)
    <broker>/broker.lock                 flock around topic create / alter / delete
    <broker>/topics/<topic>/topic.json   topic configuration (stored config wins)
    <broker>/topics/<topic>/notify       topic-wide futex word (fastq._core._storage.Notifier)
    <broker>/topics/<topic>/<n>/         partition n: a fastq.Log directory
    <broker>/groups/<group>/             consumer-group membership and committed offsets
    <broker>/queues/<queue>/             a message queue (fastq.queue: lane logs + queue.state)

Process-safety: every process may open the same broker directory; topic creation,
alteration and deletion are serialized with an flock on ``broker.lock``. Thread-safety:
a Broker and its Topics may be shared by threads.

Fork: a Broker (its topics, logs, producers, consumers) belongs to the process that
opened it. In a forked child everything inherited is released at the fork, without
touching what the parent holds; ``close()`` there returns at once and any other use
raises :class:`fastq.errors.UsedAfterFork`: open the broker again in the child.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
import weakref
from typing import Any

from .._core import _storage
from .._core._codec import os_errors
from ..errors import (Closed, CorruptRecord, InvalidArgument, LogNotFound, ReadOnly,
                     UnknownTopic, UsedAfterFork)
from ..log._process import fork_registry
from ..log.config import DURABILITY_MODES, write_json_atomic as _write_json_atomic
from .config import (ALTERABLE, BROKER_FILE, BROKER_LOCK, BROKER_VERSION, NAME_RE, TOPIC_DEFAULTS, TOPIC_FILE,
                     read_json, validate_name, validate_topic_config)
from .memtopic import MemoryTopic
from .topic import Topic
from .transaction import DEFAULT_TIMEOUT_MS, TransactionalProducer, abort_expired

__all__ = ["Broker", "open"]

class _DirLock:
    """flock on a file for the duration of a with-block (cross-process mutex)."""

    def __init__(self, path: str):
        self.path = path
        self.fd = -1

    def __enter__(self):
        with os_errors("open the broker lock", self.path):
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            _storage.flock(self.fd, True, True)
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise
        return self

    def __exit__(self, *exc):
        _storage.funlock(self.fd)
        os.close(self.fd)
        self.fd = -1


_OPEN_BROKERS: "weakref.WeakSet[Broker]" = fork_registry()   # this process's open brokers

# Kinds built on the broker by the layers above it (imports go only downward): fastq.queue
# registers "queue" at import with an object offering open(broker, name, codec, options),
# names(broker) and delete(broker, name); fastq.tasks registers "tasks" (open(broker, name,
# options), asyncio(task_queue)); fastq.pubsub registers "pubsub" (open(broker, name,
# durable, options)).
_KINDS: dict[str, Any] = {}


def register_kind(kind: str, impl: Any) -> None:
    """Called by a layer above the broker (fastq.queue) to serve ``Broker.<kind>()``."""
    _KINDS[kind] = impl


def _kind(kind: str) -> Any:
    try:
        return _KINDS[kind]
    except KeyError:
        raise InvalidArgument(f"{kind}s are served by fastq.{kind}: import fastq (not only "
                              "fastq.broker) first") from None


class Broker:
    """A broker in one directory, shared by every process that opens it.

    ``topic(name, ...)`` gets or creates a topic; ``topics()`` lists them;
    ``alter_topic`` changes a stored configuration; ``delete_topic`` removes one.
    Use as a context manager or call ``close()``. ``readonly=True``: see :func:`open`.

    Fork: after ``fork()`` the child must open its own Broker. The inherited one is
    released in the child at the fork (see the module docstring): its ``close()`` returns
    at once and never touches the parent's locks or marks a log clean; any other call
    on it, its topics, producers or consumers raises :class:`fastq.errors.UsedAfterFork`.
    """

    def __init__(self, path, *, durability: str = "os", create: bool = True, readonly: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        if durability not in DURABILITY_MODES:
            raise InvalidArgument(f"durability={durability!r}: expected one of {sorted(DURABILITY_MODES)}")
        self._closed = False
        self._forked = False
        self._mutex = threading.RLock()
        self._topics: dict[str, Any] = {}
        self._queues: dict[str, Any] = {}
        self._txns: dict[str, Any] = {}          # transactional id -> TransactionalProducer
        self.readonly = bool(readonly)
        if not os.path.isdir(self.path):
            if os.path.exists(self.path):
                raise InvalidArgument(f"{self.path} exists and is not a directory")
            if not create or readonly:
                raise LogNotFound(f"no broker at {self.path}")
        meta_path = os.path.join(self.path, BROKER_FILE)
        if readonly:
            if not os.path.exists(meta_path):
                raise LogNotFound(f"no broker at {self.path}: {BROKER_FILE} is missing")
            with os_errors("open broker", self.path):
                meta = self._read_meta(meta_path)
        else:
            with os_errors("open broker", self.path):
                os.makedirs(os.path.join(self.path, "topics"), exist_ok=True)
                os.makedirs(os.path.join(self.path, "groups"), exist_ok=True)
                with self._lock_dir():
                    if os.path.exists(meta_path):
                        meta = self._read_meta(meta_path)
                    else:
                        meta = {"version": BROKER_VERSION, "durability": durability,
                                "created_ms": int(time.time() * 1000)}
                        _write_json_atomic(meta_path, meta)
        self.meta = meta
        self.durability = durability
        _OPEN_BROKERS.add(self)

    @staticmethod
    def _read_meta(meta_path: str) -> dict:
        meta = read_json(meta_path)
        if meta.get("version") != BROKER_VERSION:
            raise CorruptRecord(f"{meta_path}: unknown broker version {meta.get('version')!r}", meta_path)
        return meta

    def _refuse_if_readonly(self, what: str) -> None:
        if self.readonly:
            raise ReadOnly(f"broker {self.path} was opened with readonly=True: cannot {what}")

    # -- topics -------------------------------------------------------------------------

    def _lock_dir(self) -> _DirLock:
        return _DirLock(os.path.join(self.path, BROKER_LOCK))

    def _check_open(self) -> None:
        if self._closed:
            self._check_fork()
            raise Closed(f"broker {self.path} is closed")

    def _check_fork(self) -> None:
        if self._forked:
            raise UsedAfterFork(f"broker {self.path} was opened before fork(): it belongs to the "
                                "parent; open it again in the child")

    def _abandon_after_fork(self) -> None:
        """In a forked child: release every inherited topic's copies (no lock that a
        parent thread may have held at the fork is taken) and mark the broker closed."""
        self._forked = True
        self._closed = True
        self._mutex = threading.RLock()
        for t in list(self._topics.values()):
            try:
                t._abandon_after_fork()
            except OSError:           # a descriptor closed under it: the others still go
                pass
        self._topics.clear()
        for q in list(self._queues.values()):
            try:
                q._abandon_after_fork()
            except OSError:
                pass
        self._queues.clear()
        for tp in list(self._txns.values()):
            tp._abandon_after_fork()            # the parent's transactions stay the parent's
        self._txns.clear()

    def _topic_dir(self, name: str) -> str:
        return os.path.join(self.path, "topics", name)

    def topic(self, name: str, *, partitions: int | None = None, durability: str | None = None,
              retention_ms: int | None = None, retention_bytes: int | None = None,
              segment_bytes: int | None = None, max_record_bytes: int | None = None,
              compact: bool | None = None, create: bool = True, storage: str | None = None,
              overflow: str | None = None, capacity_bytes: int | None = None):
        """Get or create a topic. For an existing topic the stored configuration wins
        over these arguments (change it with :meth:`alter_topic`). ``storage="memory"``
        makes a memory topic (a shared ring; ``overflow``, ``capacity_bytes``: see
        :mod:`fastq.broker.memtopic`)."""
        self._check_open()
        validate_name("topic", name)
        with self._mutex:
            t = self._topics.get(name)
            if t is not None and not t.closed:
                return t
            args = {"partitions": partitions, "durability": durability, "retention_ms": retention_ms,
                    "retention_bytes": retention_bytes, "segment_bytes": segment_bytes,
                    "max_record_bytes": max_record_bytes, "compact": compact, "storage": storage,
                    "overflow": overflow, "capacity_bytes": capacity_bytes}
            cfg = self._load_or_create_topic(name, args, create)
            if cfg["storage"] == "memory":
                self._refuse_if_readonly(f"open memory topic {name!r} (a shared ring, written by every user)")
            t = (MemoryTopic if cfg["storage"] == "memory" else Topic)(self, name, cfg)
            self._topics[name] = t
            return t

    def _load_or_create_topic(self, name: str, args: dict, create: bool) -> dict:
        d = self._topic_dir(name)
        path = os.path.join(d, TOPIC_FILE)
        if os.path.exists(path):
            return self._read_topic_config(path)
        if not create:
            raise UnknownTopic(f"no topic {name!r} in broker {self.path}")
        self._refuse_if_readonly(f"create topic {name!r}")
        with self._lock_dir():
            if os.path.exists(path):                 # another process won the race
                return self._read_topic_config(path)
            self._check_no_orphan_partitions(d, path)
            cfg = dict(TOPIC_DEFAULTS)
            cfg.update({k: v for k, v in args.items() if v is not None})
            validate_topic_config(cfg)
            cfg["version"] = 1
            cfg["created_ms"] = int(time.time() * 1000)
            made = not os.path.isdir(d)
            try:
                with os_errors(f"create topic {name!r}", d):
                    os.makedirs(d, exist_ok=True)
                    _write_json_atomic(path, cfg)
            except BaseException:
                if made:                             # no half-made topic directory left
                    shutil.rmtree(d, ignore_errors=True)
                raise
            return cfg

    @staticmethod
    def _check_no_orphan_partitions(d: str, path: str) -> None:
        """A topic directory whose topic.json is gone but whose partitions are not: never
        create the topic afresh over them (a default config would hide partitions and
        map segments with another size)."""
        try:
            parts = sorted(n for n in os.listdir(d) if n.isdigit())
        except FileNotFoundError:
            return
        if parts:
            raise CorruptRecord(f"{path} is missing but {d} holds partition logs {parts}: restore "
                                f"{TOPIC_FILE} (a copy, or one written with the topic's partitions "
                                "and segment_bytes) or delete the directory", path)

    @staticmethod
    def _read_topic_config(path: str) -> dict:
        cfg = read_json(path)
        for k, v in TOPIC_DEFAULTS.items():
            cfg.setdefault(k, v)
        try:
            validate_topic_config(cfg)
        except InvalidArgument as e:
            raise CorruptRecord(f"{path}: {e}", path) from None
        # partitions only grow (alter_topic): a partition log past the count means the
        # file is damaged, and trusting it would hide that partition's records
        d = os.path.dirname(path)
        with os_errors("list partitions", d):
            beyond = sorted(int(n) for n in os.listdir(d) if n.isdigit() and int(n) >= cfg["partitions"])
        if beyond:
            raise CorruptRecord(f"{path} says {cfg['partitions']} partition(s), but {d} holds partition "
                                f"logs {beyond}: the file is damaged; restore it (or write it with the "
                                "topic's partitions and segment_bytes)", path)
        return cfg

    def topics(self) -> list[str]:
        """Names of the existing topics, sorted."""
        self._check_open()
        root = os.path.join(self.path, "topics")
        with os_errors("list topics", root):
            names = os.listdir(root)
        return sorted(n for n in names
                      if NAME_RE.fullmatch(n) and n not in (".", "..")
                      and os.path.exists(os.path.join(root, n, TOPIC_FILE)))

    def alter_topic(self, name: str, **changes) -> dict:
        """Change a topic's stored configuration: ``partitions`` (may only grow),
        ``durability``, ``retention_ms``, ``retention_bytes``, ``compact``,
        ``delete_retention_ms``. Returns the new configuration. Takes effect for
        partitions opened afterwards (reopen the topic in running processes)."""
        self._check_open()
        validate_name("topic", name)
        self._refuse_if_readonly(f"alter topic {name!r}")
        unknown = set(changes) - ALTERABLE
        if unknown:
            raise InvalidArgument(f"cannot alter {sorted(unknown)}: alterable settings are {sorted(ALTERABLE)}")
        path = os.path.join(self._topic_dir(name), TOPIC_FILE)
        with self._lock_dir():
            if not os.path.exists(path):
                raise UnknownTopic(f"no topic {name!r} in broker {self.path}")
            cfg = self._read_topic_config(path)
            if "partitions" in changes and changes["partitions"] < cfg["partitions"]:
                raise InvalidArgument(f"partitions can only grow: {name} has {cfg['partitions']}, "
                                      f"asked for {changes['partitions']}")
            cfg.update(changes)
            validate_topic_config(cfg)
            _write_json_atomic(path, cfg)
        with self._mutex:
            t = self._topics.pop(name, None)
        if t is not None:
            t.close()
        return cfg

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its data. Processes still using it get errors."""
        self._check_open()
        validate_name("topic", name)
        self._refuse_if_readonly(f"delete topic {name!r}")
        d = self._topic_dir(name)
        with self._lock_dir():
            if not os.path.exists(os.path.join(d, TOPIC_FILE)):
                raise UnknownTopic(f"no topic {name!r} in broker {self.path}")
            with self._mutex:
                t = self._topics.pop(name, None)
            if t is not None:
                t.close()
            grave = os.path.join(self.path, "topics", f".deleted-{name}-{uuid.uuid4().hex[:8]}")
            with os_errors(f"delete topic {name!r}", d):
                os.rename(d, grave)
            _storage.fsync_dir(os.path.join(self.path, "topics"))
        shutil.rmtree(grave, ignore_errors=True)

    # -- queues (fastq.queue) ----------------------------------------------------------

    def queue(self, name: str, *, codec="json", create: bool = True, **options):
        """Get or create the message queue ``name`` (:class:`fastq.Queue`; options and their
        defaults: :data:`fastq.queue.QUEUE_DEFAULTS`). For an existing queue the stored
        configuration wins over ``options``. ``codec``: see :mod:`fastq.queue.codecs`.
        A missing queue with ``create=False`` is :class:`fastq.UnknownQueue`.
        ``rate_limit``: a producer limit on this process's handle (a
        :class:`fastq.RateLimiter` or ``(points, duration)``; see
        :meth:`fastq.Queue.set_rate_limit`)."""
        self._check_open()
        validate_name("queue", name)
        self._refuse_if_readonly(f"open queue {name!r} (receiving writes its delivery state)")
        rate_limit = options.pop("rate_limit", None)   # a producer option of this handle
        impl = _kind("queue")
        ident = (name, impl.codec_key(codec))        # one handle per queue and codec
        with self._mutex:
            q = self._queues.get(ident)
            if q is None or q.closed:
                q = impl.open(self, name, codec, options, create)
                self._queues[ident] = q
            elif options:
                impl.configure(q, options)        # limits given apply (the queue's are shared)
            if rate_limit is not None:
                q.set_rate_limit(rate_limit)
            return q

    def queues(self) -> list[str]:
        """Names of the existing queues, sorted."""
        self._check_open()
        return _kind("queue").names(self)

    def delete_queue(self, name: str) -> None:
        """Delete a queue and its messages. Processes still using it get errors."""
        self._check_open()
        validate_name("queue", name)
        self._refuse_if_readonly(f"delete queue {name!r}")
        with self._mutex:
            handles = [self._queues.pop(k) for k in list(self._queues) if k[0] == name]
        for q in handles:
            q.close()
        _kind("queue").delete(self, name)

    def tasks(self, name: str, **options):
        """The task queue ``name`` (:class:`fastq.TaskQueue`, get or create; ``options`` as
        its constructor's): a new handle each call, closed by its ``close()``."""
        self._check_open()
        return _kind("tasks").open(self, name, options)

    def pubsub(self, name: str, *, durable: bool | None = None, **options):
        """The pub/sub namespace ``name`` (:class:`fastq.PubSub`, get or create; a new
        handle each call, closed by its ``close()``). ``durable`` (default True for a new
        namespace; the stored mode wins): log-backed and replayable, or in memory and
        at-most-once. ``options``: the log settings of a durable namespace's topic
        (``retention_ms``, ``retention_bytes``, ``durability``, ...)."""
        self._check_open()
        return _kind("pubsub").open(self, name, durable, options)

    def transaction(self, transactional_id: str, *, timeout_ms: int | None = None):
        """Begin a transaction of ``transactional_id`` (Kafka's transactions, KIP-98):
        ``with broker.transaction("billing-tx") as tx: tx.publish(topic, value)`` —
        committed on a clean exit, aborted on an exception; or ``tx.commit()`` /
        ``tx.abort()``. read_committed readers see all of its records or none. The
        first transaction of an id in this broker object opens the id (fencing any
        other instance, and finishing what a crashed one left); later ones reuse it.
        ``timeout_ms`` (default 60 s): a transaction left open is aborted between
        ``timeout_ms`` and twice that after it began, by whoever calls
        :meth:`abort_expired_transactions` (read_committed reads held back call it). See
        :mod:`fastq.broker.transaction`."""
        tp = self._txns.get(transactional_id)
        if tp is not None and not tp._closed and (timeout_ms is None or tp.timeout_ms == timeout_ms) \
                and not self._closed:
            return tp.begin()                    # the common case: the id is open here
        self._check_open()
        self._refuse_if_readonly("transaction")
        with self._mutex:
            tp = self._txns.get(transactional_id)
            if tp is not None and (tp._closed or (timeout_ms is not None and tp.timeout_ms != timeout_ms)):
                if not tp._closed and tp._current is None:
                    tp.close()
                if tp._closed:
                    tp = None
            if tp is None:
                tp = TransactionalProducer(self, transactional_id,
                                           timeout_ms=DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms)
                self._txns[transactional_id] = tp
        return tp.begin()

    def abort_expired_transactions(self, now_ms: int | None = None) -> list[str]:
        """Abort every transaction left open past its ``timeout_ms`` (its process died, or
        hangs): the transactional id is opened, which fences its instance. Returns the
        transactional ids finished."""
        self._check_open()
        return abort_expired(self, now_ms)

    def maintain(self, now_ms: int | None = None) -> dict:
        """Run retention and compaction on every topic opened in this process.
        Returns {topic: segments deleted}."""
        self._check_open()
        with self._mutex:
            topics = list(self._topics.values())
        return {t.name: t.maintain(now_ms) for t in topics if not t.closed}

    # -- lifetime -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close every topic opened through this broker. Idempotent. In a forked child,
        a broker inherited from the parent was released at the fork: this returns."""
        if self._closed:
            return
        with self._mutex:
            topics = list(self._topics.values())
            for q in list(self._queues.values()):
                q.close()
            self._queues.clear()
            for tp in list(self._txns.values()):
                tp.close()                       # aborts a transaction under way
            self._txns.clear()
            for t in topics:
                t.close()
            self._topics.clear()
            self._closed = True
            _OPEN_BROKERS.discard(self)

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<fastq.Broker {self.path!r}{' closed' if self._closed else ''}>"


def open(path, *, durability: str = "os", create: bool = True, readonly: bool = False) -> Broker:  # noqa: A001
    """Open (creating if missing, unless ``create=False``) the broker in directory ``path``.

    ``readonly=True`` opens an existing broker to read without writing anything — for
    archived logs, read-only media or another user's files: no directory, lock, config or
    state file is created or changed, partition logs are mapped read-only (see
    :class:`fastq.Log`), topics are read with ``Topic.read`` or a consumer without a
    group, and anything that would write (publish, producers, group consumers, topic
    creation, alteration, deletion, retention, memory topics) raises
    :class:`fastq.ReadOnly`. A missing broker is :class:`fastq.LogNotFound`.

    Errors: a full disk is :class:`fastq.DiskFull`; a read-only filesystem opened without
    ``readonly=True`` is :class:`fastq.ReadOnly`; running out of file descriptors is
    :class:`fastq.TooManyOpenFiles`, which names the limit to raise.
    """
    return Broker(path, durability=durability, create=create, readonly=readonly)
