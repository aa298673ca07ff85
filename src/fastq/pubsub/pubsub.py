"""Pub/sub over a broker: ``ps = broker.pubsub("events")``, ``ps.publish(channel, data)``,
``sub = ps.subscribe("orders.*.created")``, ``for msg in sub: msg.channel, msg.data``.

Every subscriber gets every message published to a channel its patterns match, with its
own cursor; subscribers never share or steal messages (that is what queues are for).
Patterns: :mod:`fastq.pubsub.patterns` (NATS subjects by default, Redis globs with
``psubscribe``).

Two modes, chosen when a namespace is created (stored in
``<broker>/pubsub/<namespace>/pubsub.json``, ``{"version": 1, "durable": bool}``; the
stored mode wins, and asking for the other one explicitly is InvalidArgument):

* **durable** (the default): every message is a record of the topic
  ``pubsub.<namespace>`` (one partition, so one order across channels) with the channel
  as its key and the data as its value; the topic's retention settings apply. Each
  subscriber reads the log with its own cursor and skips records of other channels.
  An anonymous subscriber starts at the end (it sees what is published after
  ``subscribe`` returns) or at ``from_offset`` / ``from_time``. A *named* subscription
  (``name="billing"``) is the consumer group ``pubsub.<namespace>.<name>``: its committed
  offset survives the subscriber's crash and restart, and it resumes there
  (at-least-once: what was handed out but not committed comes again). A new name starts
  at the end (or ``from_offset`` / ``from_time``) and commits that start at once.
  Messages handed out are committed at the next ``poll`` / iteration step and at
  ``close()``, or explicitly with ``commit()``. One process reads a name at a time; a
  second subscriber of the same name waits and takes over when the first closes or dies.
* **ephemeral** (``durable=False``, like Redis pub/sub): at-most-once, in memory, see
  :mod:`fastq.pubsub.ephemeral`: a subscriber not subscribed when a message is published
  never sees it; a slow subscriber loses its oldest messages instead of blocking
  publishers (``ps.dropped``). ``from_offset``, ``from_time`` and ``name`` are refused.

Reading: ``sub.poll(max_messages, timeout)`` hands out a list (the fast path);
iteration blocks for one message at a time. Messages are :class:`PubSubMessage`
(``channel`` str, ``data`` bytes, ``offset`` -1 when ephemeral, ``timestamp`` ms).

Process-safety: any number of processes publish and subscribe. Thread-safety: a PubSub
may be shared by threads for publishing; a Subscriber belongs to one thread.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import functools
import os
import threading
import time
import weakref
from collections import deque
from typing import Iterable, Iterator, Sequence

from .._core._codec import os_errors
from .._core._storage import PubSubMessage, _route_records
from ..broker.config import read_json, validate_name
from ..broker.topic import BatchMetadata, RecordMetadata
from ..errors import Closed, CorruptRecord, InvalidArgument, RingEmpty, UsedAfterFork
from ..log._process import fork_registry
from ..log.config import write_json_atomic
from .aio import AsyncSubscriber, to_thread
from .ephemeral import Fanout, Registration, _State, frame
from .patterns import Matcher, compile_pattern, validate_channel

__all__ = ["PubSub", "Subscriber", "PubSubMessage", "PUBSUB_FILE", "TOPIC_PREFIX"]

PUBSUB_FILE = "pubsub.json"
TOPIC_PREFIX = "pubsub."           # a durable namespace's topic is pubsub.<namespace>
TOPIC_OPTIONS = ("durability", "retention_ms", "retention_bytes", "segment_bytes", "max_record_bytes")
DEFAULT_BUFFER_BYTES = 1 << 20     # an ephemeral subscriber's ring
MAX_POLL = 100_000
_WAIT_SLICE_S = 0.5

_LIVE: "weakref.WeakSet[PubSub]" = fork_registry()    # released in a forked child


def _ms(from_time) -> int:
    if isinstance(from_time, datetime.datetime):
        if from_time.tzinfo is None:
            raise InvalidArgument("from_time: a naive datetime is ambiguous; give it a tzinfo")
        return int(from_time.timestamp() * 1000)
    if isinstance(from_time, (int, float)) and not isinstance(from_time, bool) and from_time >= 0:
        return int(from_time * 1000)
    raise InvalidArgument(f"from_time={from_time!r}: expected seconds since the epoch (time.time()) "
                          "or an aware datetime")


def _patterns(patterns, syntax: str) -> list[tuple[str, str]]:
    if isinstance(patterns, str):
        patterns = [patterns]
    try:
        items = list(patterns)
    except TypeError:
        raise InvalidArgument(f"patterns must be a str or an iterable of str, got "
                              f"{type(patterns).__name__}") from None
    return [(compile_pattern(p, syntax)[0], syntax) for p in items]


class PubSub:
    """A pub/sub namespace of a broker (``broker.pubsub(name, durable=...)``); see the
    module docstring. ``close()`` closes the subscribers made through it."""

    def __init__(self, broker, name: str, durable: bool | None = None, **topic_options):
        validate_name("pubsub namespace", name)
        validate_name("topic", TOPIC_PREFIX + name)
        if durable is not None and not isinstance(durable, bool):
            raise InvalidArgument(f"durable must be a bool or None, got {durable!r}")
        unknown = set(topic_options) - set(TOPIC_OPTIONS)
        if unknown:
            raise InvalidArgument(f"unknown pubsub option(s) {sorted(unknown)}; known: {list(TOPIC_OPTIONS)}")
        self.broker = broker
        self.name = name
        self.dir = os.path.join(broker.path, "pubsub", name)
        cfg = self._load_or_create(durable)
        self.durable: bool = cfg["durable"]
        if not self.durable and topic_options:
            raise InvalidArgument(f"{sorted(topic_options)}: log options apply to durable namespaces only")
        self._closed = False
        self._forked = False
        self._mutex = threading.Lock()
        self._subs: set[Subscriber] = set()
        self._keys: dict[str, bytes] = {}         # validated channel -> its key bytes
        self._topic = None
        self._state: _State | None = None
        self._fanout: Fanout | None = None
        if self.durable:
            self._topic = broker.topic(TOPIC_PREFIX + name, partitions=1, **topic_options)
            if self._topic.partitions != 1:
                raise InvalidArgument(f"topic {self._topic.name!r} has {self._topic.partitions} partitions: it "
                                      f"is not pub/sub namespace {name!r}'s (that topic has one); choose "
                                      "another namespace name")
        else:
            broker._refuse_if_readonly(f"open ephemeral pubsub {name!r}")
            self._state = _State(self.dir)
            self._fanout = Fanout(self.dir, self._state)
            try:
                self._fanout._refresh()       # reaps what killed subscribers left, publishing or not
            except BaseException:
                self._fanout.close()
                self._state.close()
                raise
        _LIVE.add(self)

    def _load_or_create(self, durable: bool | None) -> dict:
        path = os.path.join(self.dir, PUBSUB_FILE)
        if not os.path.exists(path):
            self.broker._refuse_if_readonly(f"create pubsub {self.name!r}")
            with self.broker._lock_dir():
                if not os.path.exists(path):
                    with os_errors(f"create pubsub {self.name!r}", self.dir):
                        os.makedirs(self.dir, exist_ok=True)
                    write_json_atomic(path, {"version": 1, "durable": True if durable is None else durable})
        cfg = read_json(path)
        if not isinstance(cfg, dict) or not isinstance(cfg.get("durable"), bool):
            raise CorruptRecord(f"{path}: expected {{'version': 1, 'durable': bool}}, got {cfg!r}", path)
        if durable is not None and durable != cfg["durable"]:
            mode = "durable" if cfg["durable"] else "ephemeral"
            raise InvalidArgument(f"pubsub {self.name!r} is {mode} (stored in {path}); asked for durable={durable}")
        return cfg

    # -- publishing -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            if self._forked:
                raise UsedAfterFork(f"pubsub {self.name!r} was opened before fork(): it belongs to the "
                                    "parent; open the broker again in the child")
            raise Closed(f"pubsub {self.name!r} is closed")

    def _key(self, channel) -> bytes:
        k = self._keys.get(channel)
        if k is None:
            k = validate_channel(channel).encode()
            if len(self._keys) >= 65536:
                self._keys.clear()
            self._keys[channel] = k
        return k

    def publish(self, channel: str, data) -> RecordMetadata | int:
        """Publish ``data`` (bytes-like) to ``channel``. Durable: returns the record's
        :class:`fastq.RecordMetadata` (its ``offset``). Ephemeral: returns how many
        subscribers it was copied to (as Redis's PUBLISH does)."""
        self._check_open()
        key = self._key(channel)
        if self._topic is not None:
            return self._topic.publish(data, key=key)
        f = frame(key, data, int(time.time() * 1000))     # framed even for no one: bad data is an error
        fo = self._fanout
        rings = fo.routes(channel)
        if rings:
            fo.put(rings, [f])
        return len(rings)

    def publish_many(self, channel: str, values: Sequence) -> BatchMetadata | int:
        """Publish many values to one channel as one batch (the fast path). Durable:
        returns the :class:`fastq.BatchMetadata`; ephemeral: the subscribers reached."""
        self._check_open()
        key = self._key(channel)
        if not isinstance(values, (list, tuple)):
            values = list(values)
        if not values:
            raise InvalidArgument("publish_many needs at least one value")
        if self._topic is not None:
            return self._topic.publish_many(values, key=key)
        ts = int(time.time() * 1000)
        frames = [frame(key, v, ts) for v in values]
        fo = self._fanout
        rings = fo.routes(channel)
        if rings:
            fo.put(rings, frames)
        return len(rings)

    @property
    def dropped(self) -> int:
        """Ephemeral: messages this process dropped from full subscriber rings (0 if durable)."""
        return 0 if self._fanout is None else self._fanout.dropped

    # -- subscribing ----------------------------------------------------------------------

    def subscribe(self, patterns: str | Iterable[str], *, syntax: str = "nats", name: str | None = None,
                  from_offset: int | None = None, from_time=None, buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                  max_poll: int = 1000) -> "Subscriber":
        """Subscribe to one pattern or several (NATS syntax unless ``syntax="glob"``).

        Durable namespaces: ``name`` makes a named, resumable subscription;
        ``from_offset`` (an offset of the namespace's log) or ``from_time`` (seconds since
        the epoch, or an aware datetime) replays from there. Ephemeral namespaces:
        ``buffer_bytes`` is the size of this subscriber's ring (a power of two is used);
        when it is full the oldest messages are dropped. ``max_poll``: the default batch
        of ``poll()`` and of iteration's read-ahead."""
        self._check_open()
        matcher = Matcher(_patterns(patterns, syntax))
        if not isinstance(max_poll, int) or isinstance(max_poll, bool) or not 1 <= max_poll <= MAX_POLL:
            raise InvalidArgument(f"max_poll={max_poll!r}: expected an int in [1, {MAX_POLL}]")
        if from_offset is not None and from_time is not None:
            raise InvalidArgument("give from_offset or from_time, not both")
        if from_offset is not None and (not isinstance(from_offset, int) or isinstance(from_offset, bool)
                                        or from_offset < 0):
            raise InvalidArgument(f"from_offset={from_offset!r}: expected an int >= 0")
        ts = None if from_time is None else _ms(from_time)
        if self.durable:
            if name is not None:
                validate_name("subscription", name)
                validate_name("group", f"{TOPIC_PREFIX}{self.name}.{name}")
            src = _DurableSource(self._topic, self.name, matcher, name, from_offset, ts)
        else:
            if name is not None or from_offset is not None or from_time is not None:
                raise InvalidArgument(f"pubsub {self.name!r} is ephemeral: name, from_offset and from_time "
                                      "need a durable namespace (broker.pubsub(name, durable=True))")
            if not isinstance(buffer_bytes, int) or isinstance(buffer_bytes, bool) or \
                    not 4096 <= buffer_bytes <= 1 << 30:
                raise InvalidArgument(f"buffer_bytes={buffer_bytes!r}: expected an int in [4096, 2**30]")
            src = _EphemeralSource(self, matcher, buffer_bytes)
        sub = Subscriber(self, src, matcher, name, max_poll)
        with self._mutex:
            self._subs.add(sub)
        return sub

    def psubscribe(self, patterns: str | Iterable[str], **options) -> "Subscriber":
        """``subscribe`` with Redis glob patterns (``orders:*``, ``news.[ab]?``)."""
        return self.subscribe(patterns, syntax="glob", **options)

    # -- asyncio --------------------------------------------------------------------------

    async def subscribe_async(self, patterns: str | Iterable[str], **options) -> AsyncSubscriber:
        """``subscribe`` made in a thread (it creates files and a ring), wrapped in an
        :class:`fastq.AsyncSubscriber` (``async for msg in sub``)."""
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fastq-pubsub")
        cf = pool.submit(functools.partial(self.subscribe, patterns, **options))
        try:
            sub = await asyncio.wrap_future(cf)
        except asyncio.CancelledError:
            cf.add_done_callback(lambda f: f.exception() is None and f.result().close())
            pool.shutdown(wait=False)
            raise
        except BaseException:
            pool.shutdown(wait=False)
            raise
        return AsyncSubscriber(sub, pool)

    async def psubscribe_async(self, patterns: str | Iterable[str], **options) -> AsyncSubscriber:
        """``subscribe_async`` with Redis glob patterns."""
        return await self.subscribe_async(patterns, syntax="glob", **options)

    async def publish_async(self, channel: str, data) -> RecordMetadata | int:
        """``publish`` in the loop's default executor (a durable append may wait for fsync)."""
        return await to_thread(self.publish, channel, data)

    async def publish_many_async(self, channel: str, values: Sequence) -> BatchMetadata | int:
        """``publish_many`` in the loop's default executor."""
        return await to_thread(self.publish_many, channel, values)

    def _forget(self, sub: "Subscriber") -> None:
        with self._mutex:
            self._subs.discard(sub)

    @property
    def closed(self) -> bool:
        return self._closed

    def _abandon_after_fork(self) -> None:
        """In a forked child: drop the inherited descriptors and mappings without touching
        what the parent holds (its subscribers stay registered, their rings stay)."""
        self._closed = self._forked = True
        for sub in list(self._subs):
            sub._abandon_after_fork()
        self._subs.clear()
        if self._fanout is not None:
            self._fanout.close()
            self._state.close()

    def close(self) -> None:
        """Close this handle and the subscribers made through it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._mutex:
            subs = list(self._subs)
        for s in subs:
            s.close()
        if self._fanout is not None:
            self._fanout.close()
            self._state.close()

    def __enter__(self) -> "PubSub":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<fastq.PubSub {self.name!r} {'durable' if self.durable else 'ephemeral'}>"


class _DurableSource:
    """Reads the namespace's log with a consumer (a group for a named subscription)."""

    def __init__(self, topic, ns: str, matcher: Matcher, name: str | None, from_offset, from_ts):
        group = None if name is None else f"{TOPIC_PREFIX}{ns}.{name}"
        self.matcher = matcher
        self.named = group is not None
        self.cache: dict[bytes, str | None] = {}
        self.consumer = topic.consumer(group, from_="committed" if group else "latest")
        try:
            if from_offset is not None:
                self.consumer.seek(0, from_offset)
            elif from_ts is not None:
                self.consumer.seek_to_timestamp(from_ts)
            elif group is not None and self.consumer.committed().get(0) is None:
                self.consumer.seek_to_end()
            if group is not None and (from_offset is not None or from_ts is not None
                                      or self.consumer.committed().get(0) is None):
                self._commit(self.position())              # the start survives a crash from now on
        except BaseException:
            self.consumer.close()
            raise

    def _classify(self, key: bytes) -> str | None:
        """A key not seen before: its channel if the patterns want it, else None (cached)."""
        try:
            ch = key.decode()
        except UnicodeDecodeError:
            ch = None
        v = ch if ch is not None and self.matcher(ch) else None
        if len(self.cache) >= 65536:
            self.cache.clear()
        self.cache[key] = v
        return v

    def fetch(self, max_n: int, timeout: float | None) -> list[PubSubMessage]:
        deadline = None if timeout is None else time.monotonic() + timeout
        c = self.consumer
        while True:
            left = _WAIT_SLICE_S if deadline is None else max(0.0, deadline - time.monotonic())
            recs = c.poll(max_n, left)
            out = _route_records(recs, self.cache, self._classify) if recs else recs
            recs = None                 # no view of the log outlives the call
            if out or (deadline is not None and time.monotonic() >= deadline):
                return out

    def position(self) -> int | None:
        """The next offset to read, or None while another subscriber of this name holds
        the partition (nothing to commit then)."""
        c = self.consumer
        return c.position(0) if 0 in c.assignment() else None

    def _commit(self, offset: int | None) -> None:
        if self.named and offset is not None and 0 in self.consumer.assignment():
            self.consumer.commit({0: offset})

    def seek(self, offset: int) -> None:
        self.consumer.seek(0, offset)

    def close(self) -> None:
        self.consumer.close()

    def abandon(self) -> None:
        pass                    # the broker released the consumer at the fork


class _EphemeralSource:
    """Takes messages from this subscriber's own ring (see fastq.pubsub.ephemeral)."""

    named = False

    def __init__(self, ps: PubSub, matcher: Matcher, buffer_bytes: int):
        self.reg = Registration(ps.broker.path, ps.name, ps.dir, ps._state, matcher, buffer_bytes)
        self.ring = self.reg.ring
        self.cache: dict[bytes, str | None] = {}

    def fetch(self, max_n: int, timeout: float | None) -> list[PubSubMessage]:
        deadline = None if timeout is None else time.monotonic() + timeout
        ring = self.ring
        while True:
            left = _WAIT_SLICE_S if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                recs = ring._get_records(max_n, True, left, "")
            except RingEmpty:
                recs = None
            if recs:
                return _route_records(recs, self.cache, self._classify)
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def _classify(self, key: bytes) -> str:
        """Publishers copy only what this subscriber's patterns match: decode, remember."""
        if len(self.cache) >= 65536:
            self.cache.clear()
        ch = self.cache[key] = key.decode()
        return ch

    def _commit(self, offset: int) -> None:
        pass

    def close(self) -> None:
        self.reg.close()

    def abandon(self) -> None:
        self.reg.abandon()


class Subscriber:
    """A subscription (``ps.subscribe(...)``): ``poll(max_messages, timeout)``, iteration,
    ``commit()``, ``close()``; see :mod:`fastq.pubsub.pubsub`. One thread at a time."""

    def __init__(self, ps: PubSub, source, matcher: Matcher, name: str | None, max_poll: int):
        self.pubsub = ps
        self.name = name
        self.patterns = list(matcher.patterns)
        self.max_poll = max_poll
        self._src = source
        self._buf: deque[PubSubMessage] = deque()
        self._closed = False

    @property
    def durable(self) -> bool:
        return self.pubsub.durable

    def _check_open(self) -> None:
        if self._closed:
            if self.pubsub._forked:
                raise UsedAfterFork(f"subscriber of pubsub {self.pubsub.name!r} was made before fork(): "
                                    "subscribe again in the child")
            raise Closed(f"subscriber of pubsub {self.pubsub.name!r} is closed")

    def _abandon_after_fork(self) -> None:
        self._closed = True
        self._buf.clear()
        self._src.abandon()

    def _handed_out_upto(self) -> int:
        """Durable: the offset after everything handed out (or skipped)."""
        return self._buf[0].offset if self._buf else self._src.position()

    def poll(self, max_messages: int | None = None, timeout: float | None = None) -> list[PubSubMessage]:
        """Up to ``max_messages`` (default ``max_poll``) messages, waiting up to ``timeout``
        seconds (None: until one arrives) for the first; [] on timeout. A named durable
        subscription commits what earlier calls handed out first."""
        self._check_open()
        if max_messages is None:
            max_messages = self.max_poll
        elif not isinstance(max_messages, int) or isinstance(max_messages, bool) or \
                not 1 <= max_messages <= MAX_POLL:
            raise InvalidArgument(f"max_messages={max_messages!r}: expected an int in [1, {MAX_POLL}]")
        if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                    or timeout < 0):
            raise InvalidArgument(f"timeout={timeout!r}: expected None or a number >= 0")
        src = self._src
        if src.named:
            src._commit(self._handed_out_upto())
        buf = self._buf
        if buf:
            return [buf.popleft() for _ in range(min(max_messages, len(buf)))]
        return src.fetch(max_messages, timeout)

    def _give_back(self, msgs: list[PubSubMessage]) -> None:
        """Put messages handed out but not delivered (a cancelled async poll) back in front."""
        if msgs and not self._closed:
            self._buf.extendleft(reversed(msgs))

    def __iter__(self) -> Iterator[PubSubMessage]:
        return self

    def __next__(self) -> PubSubMessage:
        buf = self._buf
        if buf:
            return buf.popleft()
        self._check_open()
        src = self._src
        if src.named:
            src._commit(src.position())
        buf.extend(src.fetch(self.max_poll, None))
        return buf.popleft()

    def commit(self) -> None:
        """Named durable subscription: commit everything handed out so far (done anyway at
        the next poll and at close). Otherwise nothing to do."""
        self._check_open()
        if self._src.named:
            self._src._commit(self._handed_out_upto())

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Idempotent. A named subscription commits what was handed out first."""
        if self._closed:
            return
        try:
            if self._src.named:
                self._src._commit(self._handed_out_upto())
        finally:
            self._closed = True
            self._buf.clear()
            self._src.close()
            self.pubsub._forget(self)

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<fastq.Subscriber {self.pubsub.name!r} {self.patterns!r}>"
