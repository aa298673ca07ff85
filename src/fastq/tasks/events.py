"""Task events: what happened to a task queue's jobs, as a log any process can tail or
replay (BullMQ's ``QueueEvents``; docs/TASKS.md, "Events").

On disk (docs/FORMAT.md, "Task queues"): the topic ``<queue>.events`` — one partition, not
compacted, with retention (:data:`RETENTION_MS`, :data:`RETENTION_BYTES` per partition, in
segments of :data:`SEGMENT_BYTES`; applied by ``broker.maintain()``, changed with
``broker.alter_topic``). One record per event, Kafka RecordBatch v2 like every topic:

- key: the job id, UTF-8;
- value: a msgspec JSON object ``{"event": <name>, ...fields}``; the fields of each event
  are :data:`EVENT_FIELDS` (``return_value`` and ``progress`` are the job's JSON values);
- timestamp: when the event was written (ms since the epoch): replay by time uses the
  topic's time index.

Events are written by the process that changes the job's state, right after the state
record (``add`` writes ``added`` and ``waiting``/``delayed`` for a whole batch in one
append). A process killed between the two loses the event, never the state: events are
for watching, the job-state topic is the truth.

Reading: :class:`QueueEvents` keeps an offset (``position``) in the topic. A position
that retention deleted moves to the first retained event, as a consumer's does. A
cancelled ``await`` (``async for``, :meth:`QueueEvents.apoll`) consumes nothing: the
records are read in a thread, and the position moves only on the event loop once they
are handed out.

Thread-safety: :class:`EventLog` may be shared by threads. A :class:`QueueEvents` is read
(``poll``, iteration) from one thread or one event loop at a time; ``on``/``off`` may be
called from any thread, and listeners run in the QueueEvents' own dispatcher thread.
"""
from __future__ import annotations

import datetime
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

import msgspec

from ..broker._aio import SLICE, to_thread
from ..errors import Closed, CorruptRecord, FastqError, InvalidArgument

if TYPE_CHECKING:
    from .taskqueue import TaskQueue

__all__ = ["EVENTS", "EVENT_FIELDS", "TaskEvent", "QueueEvents", "EventLog"]

EVENTS_SUFFIX = ".events"
RETENTION_MS = 7 * 24 * 3600 * 1000     # a week of events ...
RETENTION_BYTES = 64 << 20               # ... or 64 MiB, whichever is less
SEGMENT_BYTES = 8 << 20                  # retention drops whole segments: keep them small
MAX_POLL = 10_000

#: event name -> the fields its value carries besides ``event``
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "added": ("name",),                          # add stored the job
    "waiting": (),                               # ready to run (added, or retried without backoff)
    "delayed": ("due_ms",),                      # not before due_ms (added with delay, or a backoff)
    "active": ("attempts_made",),                # a worker started a run
    "progress": ("progress",),                   # update_progress
    "completed": ("return_value", "attempts_made"),
    "failed": ("failed_reason", "attempts_made"),  # for good: no attempts left, or stalled too often
    "stalled": ("stalled_count",),               # its worker died mid-run; the job was picked up again
    "retried": ("failed_reason", "attempts_made"),  # a run failed with attempts left: it runs again
    "removed": ("prev",),                        # retention (or remove) deleted it; prev: its last state
    "deduplicated": ("dedup_id",),               # an add with its dedup id added nothing (or replaced_by: a new job)
}
EVENTS = tuple(EVENT_FIELDS)

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()
log = logging.getLogger("fastq.tasks")


def check_event(event) -> str:
    if event not in EVENT_FIELDS:
        raise InvalidArgument(f"unknown task event {event!r}; events are {list(EVENTS)}")
    return event


class TaskEvent:
    """One event: ``event`` (a name in :data:`EVENTS`), ``job_id``, ``offset`` (its place
    in the events topic: replay from ``offset + 1`` to continue after it), ``timestamp``
    (seconds since the epoch) and ``data`` (the event's fields, :data:`EVENT_FIELDS`)."""

    __slots__ = ("event", "job_id", "offset", "timestamp", "data")

    def __init__(self, event: str, job_id: str, offset: int, timestamp: float, data: dict):
        self.event = event
        self.job_id = job_id
        self.offset = offset
        self.timestamp = timestamp
        self.data = data

    def __eq__(self, other) -> bool:
        return isinstance(other, TaskEvent) and (self.event, self.job_id, self.offset) == \
            (other.event, other.job_id, other.offset)

    def __hash__(self) -> int:
        return hash((self.event, self.job_id, self.offset))

    def __repr__(self) -> str:
        return f"<fastq.TaskEvent {self.offset} {self.event} {self.job_id!r} {self.data!r}>"


class EventLog:
    """Writes one task queue's events (the topic ``<queue>.events``, made on first use).

    An event that cannot be written (a full disk, an I/O error) is logged and counted in
    ``lost``, and the caller goes on: the job's state, written before, is the truth, and a
    job must not fail — nor an ``add`` look failed after it stored the job — because its
    report could not be written."""

    def __init__(self, broker, queue_name: str):
        self.topic = broker.topic(queue_name + EVENTS_SUFFIX, partitions=1, retention_ms=RETENTION_MS,
                                  retention_bytes=RETENTION_BYTES, segment_bytes=SEGMENT_BYTES)
        self.topic.log(0)                  # opened now, not in the first add
        self.lost = 0

    def emit(self, events) -> None:
        """Append ``[(job id as bytes, {"event": name, ...fields}), ...]`` in one batch."""
        if not events:
            return
        try:
            lg = self.topic.log(0)
            if len(events) == 1:
                key, value = events[0]
                lg.append(_enc.encode(value), key)
            else:
                lg.append_batch([(_enc.encode(v), k, None) for k, v in events])
        except Closed:
            raise
        except FastqError as e:
            self._lost(len(events), e)

    def emit_raw(self, key: bytes, value: bytes) -> None:
        """Append one event already encoded (``value``: its msgspec JSON object), as :meth:`emit`."""
        try:
            self.topic.log(0).append(value, key)
        except Closed:
            raise
        except FastqError as e:
            self._lost(1, e)

    def emit_raw_many(self, records: list) -> None:
        """Append ``[(encoded event, job id as bytes, None), ...]`` in one batch, as :meth:`emit`."""
        try:
            self.topic.log(0).append_batch(records)
        except Closed:
            raise
        except FastqError as e:
            self._lost(len(records), e)

    def emit_raw_keyed(self, key: bytes, values: list) -> None:
        """:meth:`emit_raw_many` of events of one job (``key``): ``append_many``, which
        reads no tuple per record."""
        try:
            self.topic.log(0).append_many(values, key)
        except Closed:
            raise
        except FastqError as e:
            self._lost(len(values), e)

    def _lost(self, n: int, e: FastqError) -> None:
        self.lost += n
        log.warning("task events of %r: %d event(s) not written (%s: %s); the jobs' states are",
                    self.topic.name, n, type(e).__name__, e)


def _decode(topic_name: str, rec) -> TaskEvent:
    try:
        v = _dec.decode(rec.value)
        ev = v.pop("event")
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError) as e:
        raise CorruptRecord(f"task events topic {topic_name!r}: record {rec.offset} is not a task event: "
                            f"{e}") from None
    return TaskEvent(ev, bytes(rec.key).decode("utf-8", "replace"), rec.offset, rec.timestamp / 1000.0, v)


def _start_offset(topic, since, offset) -> int:
    lg = topic.log(0)
    if since is not None and offset is not None:
        raise InvalidArgument("give since or offset, not both")
    if offset is not None:
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidArgument(f"offset must be an int >= 0, got {offset!r}")
        return offset
    if since is None:
        return lg.end_offset
    if isinstance(since, datetime.datetime):
        since = since.timestamp()
    if isinstance(since, bool) or not isinstance(since, (int, float)) or since != since:
        raise InvalidArgument(f"since must be seconds since the epoch or a datetime, got {since!r}")
    off = lg.offset_for_timestamp(max(0, int(since * 1000)))
    return lg.end_offset if off is None else off


class _Cursor:
    """Reads the events topic from ``position`` (no state besides it)."""

    def __init__(self, topic, position: int):
        self.topic = topic
        self.position = position

    def read(self, position: int, max_events: int, wait: float | None) -> list[TaskEvent]:
        """Events from ``position`` on (waiting up to ``wait`` s for one); does not move."""
        topic = self.topic
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            if topic.closed:
                raise Closed(f"task events topic {topic.name!r} is closed")
            lg = topic.log(0)
            pos = max(position, lg.start_offset)      # retention deleted it: the first retained
            end = lg.end_offset
            if end > pos:
                out = []
                for rec in lg.read(pos, min(end, pos + max_events)):
                    out.append(_decode(topic.name, rec))
                    del rec
                return out
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return []
            topic.wait_any({0: pos}, left)


class QueueEvents:
    """The events of a task queue, from any process: ``QueueEvents(tq)`` or ``tq.events()``.

    Where it starts: the end of the log when made (new events only, as BullMQ's), or
    ``since`` (seconds since the epoch, or a datetime: the first event at or after it) or
    ``offset`` (an event's offset: replay from there).

    - ``on(event, callback)`` / ``off(event, callback=None)``: ``callback(ev)`` is called
      with each :class:`TaskEvent` of that name, in order, in this object's dispatcher
      thread (started by the first ``on``, from where the object starts);
    - ``for ev in events`` blocks for the next event; ``poll(max_events, timeout)`` returns
      a list; ``async for ev in events`` and ``await apoll(...)`` are the asyncio twins
      (never blocking the loop; a cancelled await consumes nothing);
    - ``position``: the offset of the next event iteration hands out;
    - ``close()`` (idempotent; context manager) stops the dispatcher thread. Close it
      before the broker.
    """

    def __init__(self, tq: "TaskQueue", *, since: float | datetime.datetime | None = None,
                 offset: int | None = None):
        if not isinstance(getattr(tq, "_events", None), EventLog):     # a TaskQueue (it imports us)
            raise InvalidArgument(f"QueueEvents takes a fastq.TaskQueue, got {tq!r}")
        tq._check_open()
        self.queue = tq
        self.topic = tq._events.topic
        self._start = _start_offset(self.topic, since, offset)
        self._cursor = _Cursor(self.topic, self._start)
        self._listeners: dict[str, list[Callable]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False

    @property
    def position(self) -> int:
        return self._cursor.position

    # -- listeners --------------------------------------------------------------------------

    def on(self, event: str, callback: Callable[[TaskEvent], Any]) -> None:
        """Call ``callback(ev)`` for every event named ``event`` (see :data:`EVENTS`)."""
        check_event(event)
        if not callable(callback):
            raise InvalidArgument(f"callback must be callable, got {callback!r}")
        self._check_open()
        with self._lock:
            self._listeners.setdefault(event, []).append(callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._dispatch, daemon=True,
                                                name=f"fastq-events-{self.queue.name}")
                self._thread.start()

    def off(self, event: str, callback: Callable | None = None) -> None:
        """Stop calling ``callback`` (every callback of ``event`` when None)."""
        check_event(event)
        with self._lock:
            cbs = self._listeners.get(event, [])
            self._listeners[event] = [] if callback is None else [c for c in cbs if c != callback]

    def _dispatch(self) -> None:
        cur = _Cursor(self.topic, self._start)
        while not self._stop.is_set():
            try:
                evs = cur.read(cur.position, 1000, SLICE)
            except Closed:
                return
            except Exception:                       # noqa: BLE001 - a thread must say why it stopped
                log.exception("task events of %r: the dispatcher stopped", self.queue.name)
                return
            for ev in evs:
                cur.position = ev.offset + 1
                with self._lock:
                    cbs = list(self._listeners.get(ev.event, ()))
                for cb in cbs:
                    try:
                        cb(ev)
                    except Exception:               # noqa: BLE001 - one listener must not stop the others
                        log.exception("task events of %r: listener %r failed on %r", self.queue.name, cb, ev)

    # -- reading ----------------------------------------------------------------------------

    def poll(self, max_events: int = 500, timeout: float | None = 0.0) -> list[TaskEvent]:
        """Up to ``max_events`` events from ``position``; waits up to ``timeout`` s (None:
        until one comes) when there is none yet."""
        self._check_open()
        _check_max(max_events)
        c = self._cursor
        evs = c.read(c.position, max_events, timeout)
        if evs:
            c.position = evs[-1].offset + 1
        return evs

    def __iter__(self) -> Iterator[TaskEvent]:
        while not self._closed:                          # close() from another thread ends it
            try:
                evs = self.poll(1, SLICE)
            except Closed:
                return
            if evs:
                yield evs[0]

    async def apoll(self, max_events: int = 500, timeout: float | None = 0.0) -> list[TaskEvent]:
        """The asyncio twin of :meth:`poll`: the reading and waiting run in a thread, in
        slices of 100 ms; a cancelled await consumes nothing."""
        self._check_open()
        _check_max(max_events)
        c = self._cursor
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SLICE if deadline is None else max(0.0, min(SLICE, deadline - time.monotonic()))
            pos = c.position
            evs = await to_thread(c.read, pos, max_events, left)
            if evs:
                if c.position == pos:                   # nobody else moved it meanwhile
                    c.position = evs[-1].offset + 1
                    return evs
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def __aiter__(self):
        return self._aiter()

    async def _aiter(self):
        buf: list[TaskEvent] = []
        c = self._cursor
        while True:
            if not buf:
                evs = await to_thread(c.read, c.position, 500, SLICE)
                if self._closed:
                    return
                buf = evs
                continue
            ev = buf.pop(0)
            c.position = ev.offset + 1                  # handed out: consumed
            yield ev

    # -- lifetime ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("QueueEvents is closed")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the dispatcher thread (waits for the listener call in progress). Idempotent."""
        self._closed = True
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()

    def __enter__(self) -> "QueueEvents":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def __aenter__(self) -> "QueueEvents":
        return self

    async def __aexit__(self, *exc) -> None:
        await to_thread(self.close)

    def __repr__(self) -> str:
        return f"<fastq.QueueEvents of {self.queue.name!r} at {self.position}>"


def _check_max(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_POLL:
        raise InvalidArgument(f"max_events must be an int in 1..{MAX_POLL}, got {n!r}")


class JobListeners:
    """``job.on(...)`` for one TaskQueue: one QueueEvents (from the log's end when first
    needed) dispatching to callbacks by job id."""

    PAYLOAD = {"progress": "progress", "completed": "return_value", "failed": "failed_reason"}

    def __init__(self, tq: "TaskQueue"):
        self.tq = tq
        self.events = QueueEvents(tq)
        self._by_job: dict[str, dict[str, list]] = {}
        self._lock = threading.Lock()
        for e in self.PAYLOAD:
            self.events.on(e, self._deliver)

    def add(self, job, event: str, callback: Callable) -> None:
        if event not in self.PAYLOAD:
            raise InvalidArgument(f"job.on takes {list(self.PAYLOAD)}, got {event!r}")
        if not callable(callback):
            raise InvalidArgument(f"callback must be callable, got {callback!r}")
        entry = [callback, False]                       # [cb, fired]: completed/failed come once
        with self._lock:
            self._by_job.setdefault(job.id, {}).setdefault(event, []).append(entry)
        s = self.tq._index.final(job.id)                # it may have finished before we listened
        if s is not None and s["state"] in ("completed", "failed"):
            if s["state"] == event:
                self._fire(entry, s.get(self.PAYLOAD[event]))
            self.remove(job, event, callback)           # nothing more will come for it

    def remove(self, job, event: str, callback: Callable | None) -> None:
        if event not in self.PAYLOAD:
            raise InvalidArgument(f"job.off takes {list(self.PAYLOAD)}, got {event!r}")
        with self._lock:
            evs = self._by_job.get(job.id, {})
            evs[event] = [] if callback is None else [e for e in evs.get(event, []) if e[0] != callback]
            if not any(evs.values()):
                self._by_job.pop(job.id, None)

    def _fire(self, entry, payload) -> None:
        with self._lock:
            if entry[1]:
                return
            entry[1] = True
        try:
            entry[0](payload)
        except Exception:                               # noqa: BLE001
            log.exception("job listener %r failed", entry[0])

    def _deliver(self, ev: TaskEvent) -> None:
        with self._lock:
            entries = list(self._by_job.get(ev.job_id, {}).get(ev.event, ()))
        for entry in entries:
            payload = ev.data.get(self.PAYLOAD[ev.event])
            if ev.event == "progress":
                try:
                    entry[0](payload)
                except Exception:                       # noqa: BLE001
                    log.exception("job listener %r failed", entry[0])
            else:
                self._fire(entry, payload)
        if ev.event in ("completed", "failed"):        # final: nothing more will come for it
            with self._lock:
                self._by_job.pop(ev.job_id, None)

    def close(self) -> None:
        self.events.close()
