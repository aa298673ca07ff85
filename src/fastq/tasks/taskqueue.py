"""``TaskQueue``: BullMQ-style jobs on a fastq message queue (docs/TASKS.md).

A task queue ``name`` is two things in the broker:

- the message queue ``<name>.tasks`` (:class:`fastq.Queue`): one message per job run, with
  the queue's delay, priority, dedup (``job_id``), leases and dead-consumer detection —
  the task queue never reimplements them;
- the compacted topic ``<name>.jobs``: the job states (see :mod:`fastq.tasks.job`);
- the compacted topic ``<name>.sched``, once a job scheduler is made: the schedulers' definitions
  (see :mod:`fastq.tasks.scheduler`);
- the compacted topic ``<name>.dedup``, once an add uses ``deduplication``: the dedup
  entries (see :mod:`fastq.tasks.dedup`);
- the topic ``<name>.events``: what happened, for listeners and replay (see
  :mod:`fastq.tasks.events`), written right after each state record;
- the control topic ``<name>.ctl`` and the admin lock ``tasks/<name>/admin.lock``: the
  pause flag and the admin epoch (see :mod:`fastq.tasks.control`).

``add`` writes the job's first state, then publishes its message: a worker's "active"
can never be overwritten by the "waiting" that came before it. It takes no lock: its
messages carry the admin epoch it saw (``ep``; -1 while an admin operation is under way),
and a worker checks a message against the job state whenever the epoch moved since
(:mod:`fastq.tasks.control`).

A job message is msgspec JSON: ``id``, ``name``, ``data``, ``opts``, ``added_ms``, ``gen``
(the job incarnation it runs: a message whose ``gen`` is not the job state's is stale and
dropped), ``ep`` (the admin epoch when it was published), and ``a0`` (attempts made before
this message: a promoted retry keeps counting). A message with a ``job_id`` (or a retry)
is published with the queue dedup id ``"<gen>:<job id>"``.

Thread-safety: a TaskQueue may be shared by threads. Process-safety: any number of
processes may open the same task queue, add, run workers and read jobs.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import threading
import weakref
from typing import TYPE_CHECKING, Any, Iterable

import msgspec

from ..broker.config import validate_name
from ..errors import Closed, InvalidArgument, InvalidName, UnknownJob
from ..queue.codecs import resolve_codec
from ..queue.bounds import QueueLimits, QueueSignals, SignalWatcher
from ..queue.queue import PRIORITIES
from .admin import AdminMixin, dedup_id
from .backoff import Backoff
from .control import CTL_SUFFIX, Control
from .deadletter import DeadLetters
from .dedup import Deduplicator, validate_dedup
from .events import EVENTS_SUFFIX, EventLog, JobListeners, QueueEvents
from .job import FINISHED, Job, JobIndex, encode_state, now_ms
from .scheduler import Schedulers

if TYPE_CHECKING:
    from ..broker.broker import Broker

__all__ = ["TaskQueue", "JOB_OPTIONS"]

QUEUE_SUFFIX = ".tasks"
TOPIC_SUFFIX = ".jobs"
MAX_NAME = 249 - max(len(QUEUE_SUFFIX), len(TOPIC_SUFFIX), len(EVENTS_SUFFIX), len(CTL_SUFFIX))
MAX_JOB_ID = 512
# job ids: 128 random bits as 32 hex digits, like uuid4().hex without its urandom call per
# job; a private generator (a user's random.seed() must not repeat ids), reseeded in a
# forked child so parent and child never draw the same ids
_ids = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)


def _new_id() -> str:
    """A job id: 128 random bits as 32 hex digits (randbytes().hex(): ~0.2 µs less than
    formatting getrandbits(128), per add)."""
    return _ids.randbytes(16).hex()


_WAITING = {"event": "waiting"}
JOB_OPTIONS = ("delay", "attempts", "backoff", "priority", "job_id", "remove_on_complete",
               "remove_on_fail", "timeout", "deduplication")


def _keep(what: str, v) -> bool | int | dict:
    """The stored form of ``remove_on_complete`` / ``remove_on_fail``: True, False, a count
    of jobs to keep, or ``{"age": seconds, "count": n}`` (either key may be left out)."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v >= 0:
        return v
    if isinstance(v, dict) and v and not set(v) - {"age", "count"}:
        out: dict[str, Any] = {}
        age, count = v.get("age"), v.get("count")
        if age is not None:
            if isinstance(age, bool) or not isinstance(age, (int, float)) or not math.isfinite(age) or age < 0:
                raise InvalidArgument(f"{what}: age must be seconds >= 0, got {age!r}")
            out["age"] = float(age)
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise InvalidArgument(f"{what}: count must be an int >= 0, got {count!r}")
            out["count"] = count
        if out:
            return out
    raise InvalidArgument(f"{what} must be True, False, a count of jobs to keep >= 0 or "
                          f"{{'age': seconds, 'count': n}}, got {v!r}")


def validate_options(opts: dict) -> dict:
    """The stored form of a job's options, or InvalidArgument naming what is wrong."""
    unknown = set(opts) - set(JOB_OPTIONS)
    if "repeat" in unknown:
        raise InvalidArgument("repeat is an option of add() and upsert_job_scheduler() only (not of add_bulk "
                              "or of a scheduler's job options)")
    if unknown:
        raise InvalidArgument(f"unknown job option(s) {sorted(unknown)}; known: {list(JOB_OPTIONS)}")
    out: dict[str, Any] = {}
    delay = opts.get("delay")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) or delay < 0:
            raise InvalidArgument(f"delay must be None or seconds >= 0, got {delay!r}")
        out["delay"] = float(delay)
    attempts = opts.get("attempts", 1)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 1_000_000:
        raise InvalidArgument(f"attempts must be an int in 1..1000000, got {attempts!r}")
    out["attempts"] = attempts
    b = Backoff.coerce(opts.get("backoff"))
    out["backoff"] = None if b is None else b.to_dict()
    prio = opts.get("priority", 0)
    if isinstance(prio, bool) or not isinstance(prio, int) or not 0 <= prio < PRIORITIES:
        raise InvalidArgument(f"priority must be an int in 0..{PRIORITIES - 1} (higher runs first), got {prio!r}")
    out["priority"] = prio
    jid = opts.get("job_id")
    if jid is not None:
        if not isinstance(jid, str) or not 0 < len(jid) <= MAX_JOB_ID:
            raise InvalidArgument(f"job_id must be a non-empty str of at most {MAX_JOB_ID} characters, got {jid!r}")
        out["job_id"] = jid
    out["remove_on_complete"] = _keep("remove_on_complete", opts.get("remove_on_complete", False))
    out["remove_on_fail"] = _keep("remove_on_fail", opts.get("remove_on_fail", False))
    timeout = opts.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
                or timeout <= 0:
            raise InvalidArgument(f"timeout must be None or seconds > 0, got {timeout!r}")
        out["timeout"] = float(timeout)
    dd = opts.get("deduplication")
    if dd is not None:
        out["deduplication"] = validate_dedup(dd)
    return out


_DEFAULT_OPTIONS = validate_options({})
_RAW_DEFAULT_OPTIONS = msgspec.Raw(msgspec.json.encode(_DEFAULT_OPTIONS))
_WAITING_EVENT = msgspec.json.encode(_WAITING)
_FAST_ADD = os.environ.get("FASTQ_TASKS_FASTPATH", "1") != "0"    # (fastq.tasks._fastrun: off for comparison)
_added: dict[str, bytes] = {}                 # job name -> its ``added`` event, encoded


def _added_event(name: str) -> bytes:
    """The ``added`` event of a job named ``name``: ``{"event":"added","name":...}``."""
    b = _added.get(name)
    if b is None:
        b = b'{"event":"added","name":%s}' % msgspec.json.encode(name)
        if len(_added) < 1024:
            _added[name] = b
    return b


def _scheduled_options(opts: dict) -> dict:
    """A job scheduler's job options: :func:`validate_options`'s, without ``deduplication``
    (a scheduler makes one job per tick already)."""
    if opts.get("deduplication") is not None:
        raise InvalidArgument("deduplication is not an option of a job scheduler's jobs (a scheduler makes one "
                              "job per tick already)")
    return validate_options(opts)


class TaskQueue(AdminMixin):
    """Named jobs with results, delay, attempts and backoff, priority, progress and
    retention, in the style of BullMQ: ``TaskQueue("images", broker)`` (get or create).
    ``visibility_timeout``: the lease of the underlying queue (workers keep extending it
    while a job runs; a killed worker's jobs come back at once through the queue's
    dead-consumer detection, not after the lease). ``dead_letter``: a message queue name or
    another TaskQueue that jobs ending failed are also sent to, exactly once
    (:mod:`fastq.tasks.deadletter`; every process running workers passes the same).
    Administration — counts, paging,
    pause/resume, drain, clean, retry, promote, remove, obliterate — is
    :class:`fastq.tasks.admin.AdminMixin`'s."""

    def __init__(self, name: str, broker: "Broker", *, visibility_timeout: float = 30.0,
                 max_depth: int | None = None, overflow: str | None = None, block_timeout: float | None = None,
                 high_watermark: int | None = None, low_watermark: int | None = None,
                 max_bytes: int | None = None, dead_letter: "str | TaskQueue | None" = None):
        validate_name("task queue", name)
        if len(name) > MAX_NAME:
            raise InvalidName(f"task queue name {name!r} is longer than {MAX_NAME} characters "
                              f"(its queue and topic add {QUEUE_SUFFIX!r} / {TOPIC_SUFFIX!r})")
        self._dead_letters = None if dead_letter is None else \
            DeadLetters(name, name + QUEUE_SUFFIX, broker, dead_letter)
        self.name = name
        self.broker = broker
        # limits (None: as they are) are the message queue's: one message per waiting or delayed job
        self.queue = broker.queue(name + QUEUE_SUFFIX, codec="raw", visibility_timeout=visibility_timeout,
                                  max_depth=max_depth, overflow=overflow, block_timeout=block_timeout,
                                  high_watermark=high_watermark, low_watermark=low_watermark,
                                  max_bytes=max_bytes)
        self.topic = broker.topic(name + TOPIC_SUFFIX, partitions=1, compact=True)
        self._codec = resolve_codec("json")        # job data, results: msgspec JSON (the queue is raw)
        self._index = JobIndex(self.topic)
        self._lg = self._index.log                 # the job-state log, cached for the hot paths
        self._ctl = Control(broker, name)
        self._sched = Schedulers(self, _scheduled_options)   # job schedulers (opens <name>.sched when used)
        self._events = EventLog(broker, name)
        self._job_listeners: JobListeners | None = None
        self._dedup: Deduplicator | None = None    # deduplication entries (opens <name>.dedup when used)
        self._listeners_lock = threading.Lock()
        self._closed = False
        hooks = self.queue._drop_hooks           # the broker's one handle of the queue: shared
        hooks[:] = [r for r in hooks if r() is not None] + [weakref.WeakMethod(self._job_dropped)]

    # -- adding ------------------------------------------------------------------------------

    def _prepare(self, name, data, opts: dict, repeat: dict | None = None) -> tuple[dict, Job | None]:
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"job name must be a non-empty str, got {name!r}")
        stored = validate_options(opts) if opts else dict(_DEFAULT_OPTIONS)   # add_bulk's (name, data)
        if repeat is not None:                     # a scheduler's tick (fastq.tasks.scheduler)
            stored["repeat"] = repeat
        jid = stored.get("job_id")
        gen = 0
        if jid is not None:
            s = self._index.get(jid)
            if s is not None:                      # BullMQ: an add with an existing jobId is ignored
                return {}, Job(self, jid, s)
            if jid in self._index.gens:            # added again after its removal: a new incarnation
                gen = self._index.gens[jid] + 1
        else:
            jid = _new_id()
        now = now_ms()
        delay = stored.get("delay")
        state = {"id": jid, "name": name, "data": data, "opts": stored,
                 "state": "delayed" if delay else "waiting", "attempts_made": 0, "progress": 0,
                 "added_ms": now, "gen": gen}
        if delay:
            state["due_ms"] = now + int(delay * 1000)
        return state, None

    def _body(self, s: dict, ep: int, a0: int = 0) -> bytes:
        """The queue message of job state ``s`` (module docstring), for a retry or a promote."""
        doc = {"id": s["id"], "name": s["name"], "data": s.get("data"), "opts": s["opts"],
               "added_ms": s.get("added_ms"), "gen": s.get("gen", 0), "ep": ep}
        if a0:
            doc["a0"] = a0
        return bytes(self._codec.encode(doc))

    def add(self, name: str, data: Any = None, *, delay: float | None = None, attempts: int = 1,
            backoff: Backoff | float | None = None, priority: int = 0, job_id: str | None = None,
            remove_on_complete: bool | int = False, remove_on_fail: bool | int = False,
            timeout: float | None = None, repeat: dict | None = None, **unknown) -> Job:
        """Add a job; returns it. ``delay``: seconds before it may run (never earlier).
        ``attempts``: runs before it fails for good; ``backoff``: the wait before each retry
        (:class:`fastq.Backoff`, or seconds). ``priority``: 0..9, higher first. ``job_id``:
        while a job with this id exists, adding it again returns that job. ``remove_on_complete``
        / ``remove_on_fail``: True removes the job when it finishes so, a count keeps that many
        of the most recent. ``timeout``: seconds a run may take (the handler sees
        ``job.cancelled``; past it the attempt fails). ``repeat``: ``{"cron": "0 9 * * *",
        "tz": ...}`` or ``{"every": seconds}`` makes a job scheduler instead (see
        :meth:`upsert_job_scheduler`; its id is ``job_id`` or derived from the name and the
        repeat) and returns its first job (None if it has no tick left).
        ``deduplication={"id": str, "ttl": s, "extend": bool, "replace": bool}``: BullMQ's
        simple / throttle / debounce modes — an add with the id of a job that still
        deduplicates returns that job and adds nothing (:mod:`fastq.tasks.dedup`). Unknown
        options are InvalidArgument.""" 
        if delay is None and backoff is None and job_id is None and timeout is None and repeat is None \
                and not unknown and remove_on_complete is False and remove_on_fail is False \
                and type(attempts) is int and attempts == 1 and type(priority) is int and priority == 0:
            if _FAST_ADD:
                return self._add_default(name, data)             # every option at its default
            return self._add_many([(name, data, {})])[0]
        opts = {"delay": delay, "attempts": attempts, "backoff": backoff, "priority": priority,
                "job_id": job_id, "remove_on_complete": remove_on_complete, "remove_on_fail": remove_on_fail,
                "timeout": timeout, **unknown}
        if unknown.get("deduplication") is not None:
            return self._add_deduplicated(name, data, opts, repeat)
        if repeat is not None:
            return self._schedulers().add_repeat(name, data, repeat, opts)
        return self._add_many([(name, data, opts)])[0]

    def _add_default(self, name, data) -> Job:
        """:meth:`_add_many` of one job with every option at its default: the same records
        (state = message body, then the ``added`` and ``waiting`` events), built directly."""
        self._check_open()
        if type(name) is not str or not name:
            raise InvalidArgument(f"job name must be a non-empty str, got {name!r}")
        jid = _new_id()
        s = {"id": jid, "name": name, "data": data, "opts": _RAW_DEFAULT_OPTIONS, "state": "waiting",
             "attempts_made": 0, "progress": 0, "added_ms": now_ms(), "gen": 0, "ep": self._ctl.add_epoch()}
        try:
            body = self._codec.dumps(s)
        except Exception:                         # noqa: BLE001 - CodecError, with the reason: nothing stored
            body = self._codec.encode(s)
        s["opts"] = dict(_DEFAULT_OPTIONS)
        k = jid.encode()
        q = self.queue
        if q._bounded_py():                       # admitted before its state is stored (_add_many)
            q._admit(1)
            q._admitted.on = True
            try:
                self._lg.append(body, k)
                q.publish(body)
            finally:
                q._admitted.on = False
        else:
            self._lg.append(body, k)
            q.publish(body)
        self._events.emit_raw_keyed(k, [_added_event(name), _WAITING_EVENT])
        return Job(self, jid, s)

    def add_bulk(self, jobs: Iterable) -> list[Job]:
        """Add many jobs at once: an iterable of ``(name, data)`` or ``(name, data, options)``
        (options: a dict of :meth:`add`'s keyword arguments). All are checked before any is
        stored; the states are one append."""
        items = []
        for j in jobs:
            if not isinstance(j, (tuple, list)) or len(j) not in (2, 3):
                raise InvalidArgument(f"add_bulk takes (name, data) or (name, data, options) items, got {j!r}")
            opts = j[2] if len(j) == 3 else {}
            if opts is None:
                opts = {}
            if not isinstance(opts, dict):
                raise InvalidArgument(f"job options must be a dict, got {opts!r}")
            if opts.get("deduplication") is not None:
                raise InvalidArgument("deduplication is an option of add() only (each add is checked "
                                      "against the others under a lock)")
            items.append((j[0], j[1], opts))
        return self._add_many(items)

    def _add_many(self, items: list, repeat: dict | None = None, admit: bool = True) -> list[Job]:
        """Store and publish jobs (add, add_bulk, a scheduler's ticks). ``admit=False``: past
        the queue's bounds (a scheduler's tick: fastq.tasks.scheduler)."""
        self._check_open()
        prepared = []
        first: dict[str, Job] = {}                 # a job_id twice in one add_bulk: the first wins
        for n, d, o in items:
            st, existing = self._prepare(n, d, o, repeat)
            jid = o.get("job_id")
            if existing is None and jid is not None:
                if jid in first:
                    st, existing = {}, first[jid]
                else:
                    first[jid] = Job(self, jid, st)
            prepared.append((st, existing))
        new = [s for s, existing in prepared if existing is None]
        if new and admit and self.queue._bounded_py():
            # a bounded queue admits the jobs before their states are stored: a job refused
            # (QueueFull) leaves nothing behind; the publishes below then skip the check
            self.queue._admit(len(new))
        if new:
            ep = self._ctl.add_epoch()             # -1 while an admin operation is under way
            encoded = []
            for s in new:                      # CodecError here: nothing stored
                s["ep"] = ep
                # one encoding is both the job's first state record and its message's body
                # (the worker reads the body's id, name, data, opts, added_ms, gen and ep)
                encoded.append((s, bytes(self._codec.encode(s))))
            lg = self._lg
            if len(encoded) == 1:              # add(): one record, not a batch of one
                lg.append(encoded[0][1], encoded[0][0]["id"].encode())
            else:
                lg.append_batch([(body, s["id"].encode(), None) for s, body in encoded])
            self.queue._admitted.on = True
            try:
                self._publish_jobs(encoded)
            finally:
                self.queue._admitted.on = False
            evs = []                               # last: a job is stored whatever happens to them
            for s in new:                          # (pre-encoded: the same JSON as EventLog.emit's)
                k = s["id"].encode()
                evs.append((_added_event(s["name"]), k, None))
                evs.append((b'{"event":"delayed","due_ms":%d}' % s["due_ms"] if "due_ms" in s else _WAITING_EVENT,
                            k, None))
            self._events.emit_raw_many(evs)
        out, it = [], iter(new)
        for s, existing in prepared:
            out.append(existing if existing is not None else Job(self, s["id"], next(it)))
        return out

    def _publish_jobs(self, encoded: list) -> None:
        """Publish the messages of jobs whose states were just stored."""
        plain: dict[int, list] = {}
        for s, body in encoded:
            o = s["opts"]
            if o.get("delay") or "job_id" in o:
                self.queue.publish(body, delay=o.get("delay"), priority=o["priority"],
                                   dedup_id=dedup_id(s["id"], s["gen"]) if "job_id" in o else None)
            else:
                plain.setdefault(o["priority"], []).append(body)
        for prio, bodies in plain.items():
            if len(bodies) == 1:
                self.queue.publish(bodies[0], priority=prio)
            else:
                self.queue.publish_many(bodies, priority=prio)

    # -- back pressure (the message queue's limits and signals, fastq.queue.bounds) ---------

    @property
    def limits(self) -> QueueLimits:
        """The limits of the job queue (a waiting or delayed job is one message)."""
        return self.queue.limits

    def set_limits(self, **limits) -> QueueLimits:
        """As :meth:`fastq.Queue.set_limits`: ``add`` of a job over ``max_depth`` raises
        QueueFull (reject) and stores nothing, waits (block), or drops the oldest waiting
        jobs (drop-oldest: each fails, ``failed_reason`` "dropped: ...", and never runs)."""
        return self.queue.set_limits(**limits)

    def watermarks(self, high: int | None, low: int | None = None) -> QueueLimits:
        return self.queue.watermarks(high, low)

    @property
    def over_high_watermark(self) -> bool:
        return self.queue.over_high_watermark

    def on_watermark(self, callback):
        """As :meth:`fastq.Queue.on_watermark`."""
        return self.queue.on_watermark(callback)

    def signals(self) -> QueueSignals:
        """Depth signals of the job queue (:class:`fastq.QueueSignals`): ``runnable`` =
        waiting jobs a worker could start now (0 while the queue is paused), ``delayed`` =
        delayed jobs and retries in backoff, ``in_flight`` = active jobs."""
        sig = self.queue.signals()
        if self._ctl.paused():
            sig = sig._replace(runnable=0)
        return sig

    def on_signals(self, callback, interval: float = 1.0) -> SignalWatcher:
        """Call ``callback(self.signals())`` every ``interval`` s from a thread (stop() it)."""
        return SignalWatcher(self, callback, interval)

    def _add_deduplicated(self, name, data, opts: dict, repeat) -> Job:
        if repeat is not None:
            raise InvalidArgument("deduplication and repeat cannot be combined (a job scheduler makes one "
                                  "job per tick already)")
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"job name must be a non-empty str, got {name!r}")
        dd = validate_options(opts)["deduplication"]       # every option checked before the lock
        return self._deduplicator().add(name, data, opts, dd)

    def _deduplicator(self) -> Deduplicator:
        self._check_open()
        with self._listeners_lock:
            if self._dedup is None:
                self._dedup = Deduplicator(self)
            return self._dedup

    def get_deduplication_job_id(self, dedup_id: str) -> str | None:
        """The id of the job that an add with ``deduplication={"id": dedup_id, ...}`` would
        return now, or None (BullMQ's getDeduplicationJobId)."""
        return self._deduplicator().job_id(dedup_id)

    def remove_deduplication_key(self, dedup_id: str) -> bool:
        """Forget ``dedup_id``: the next add with it adds a job (BullMQ's
        removeDeduplicationKey). False if it was not known."""
        return self._deduplicator().remove_key(dedup_id)

    # -- reading -----------------------------------------------------------------------------

    def get_job(self, job_id: str) -> Job:
        """The job with this id; :class:`fastq.UnknownJob` when there is none (or it was removed)."""
        s = self._index.get(job_id)
        if s is None:
            raise UnknownJob(f"no job {job_id!r} in task queue {self.name!r}")
        return Job(self, job_id, s)

    # -- repeat: job schedulers (fastq.tasks.scheduler) ------------------------------------------

    def upsert_job_scheduler(self, scheduler_id: str, repeat: dict, *, name: str | None = None,
                             data: Any = None, opts: dict | None = None) -> Job | None:
        """Create or replace the job scheduler ``scheduler_id`` (BullMQ's upsertJobScheduler):
        ``repeat`` is ``{"cron": expr}`` (5 fields, or 6 with seconds first; ``tz``: an IANA
        zone, default UTC) or ``{"every": seconds}``, with optional ``start`` / ``end``
        (aware datetimes or epoch seconds), ``limit`` (jobs to make), ``missed`` (``"once"``
        default, ``"all"``, ``"skip"``: ticks that passed while nothing ran) and ``grace``
        (seconds late before ``"skip"`` drops a tick, default 60). Each tick makes one job
        ``name`` (default: the scheduler id) with ``data`` and job ``opts`` (as :meth:`add`'s,
        without ``job_id`` / ``delay``), across all processes. The same definition again
        changes nothing; another one replaces the pending tick. Returns the next tick's job
        (None when the schedule has no more ticks). See docs/TASKS.md."""
        return self._schedulers().upsert(scheduler_id, repeat, name, data, opts)

    def get_job_scheduler(self, scheduler_id: str) -> dict | None:
        """The scheduler's definition and ``next`` tick (epoch seconds), or None."""
        return self._schedulers().get(scheduler_id)

    def get_job_schedulers(self) -> list[dict]:
        """All job schedulers of this queue, by id (see :meth:`get_job_scheduler`)."""
        return self._schedulers().list()

    def remove_job_scheduler(self, scheduler_id: str) -> bool:
        """Remove a job scheduler: no tick after this one starts. False if there was none."""
        return self._schedulers().remove(scheduler_id)

    def _schedulers(self) -> Schedulers:
        return self._sched

    # -- internals for the worker -----------------------------------------------------------

    def _job_dropped(self, m, why: str) -> bool:
        """``overflow="drop-oldest"`` took job message ``m`` (leased, unsettled): its job
        fails with ``why`` — the failed state and event, the dead letter, the ack, then
        ``remove_on_fail`` — as a job that failed at a worker. False when this handle is
        closed or ``m`` is no job message (the message queue handles it). Killed between
        the record and the ack, the message goes to a worker, whose ``_begin`` finds the
        job failed and acks it (sending the dead letter again, deduplicated)."""
        if self._closed:
            return False
        try:
            msg = msgspec.json.decode(m.body)
            jid = msg["id"]
        except (msgspec.DecodeError, KeyError, TypeError):
            return False
        s = None
        recorded = False
        # no admin operation meanwhile (the lease keeps workers off) — unless this thread runs
        # one whose publish is dropping (retry, repair, promote): it holds the lock already
        ctl = self._ctl
        with (contextlib.nullcontext() if ctl.held_exclusive() else ctl.shared()):
            prev = self._index.get(jid)
            if prev is None or prev.get("gen", 0) != msg.get("gen", 0) \
                    or prev.get("added_ms") != msg.get("added_ms"):
                pass                              # removed or replaced: a stale message, nothing to fail
            elif prev["state"] in FINISHED:       # recorded before a crash: send its dead letter again
                s = prev if prev["state"] == "failed" else None
            else:
                s = dict(prev)
                s.pop("due_ms", None)
                s.pop("ep", None)
                s.update(state="failed", failed_reason=why, finished_ms=now_ms(),
                         stacktrace=list(prev.get("stacktrace") or []) + [why])
                self._put(s, [{"event": "failed", "failed_reason": why,
                               "attempts_made": s.get("attempts_made", 0)}])
                recorded = True
        if s is not None and self._dead_letters is not None:
            self._dead_letters.send(s, m)
        m.ack()
        if recorded:
            self._retain(s, "remove_on_fail", "failed")
        return True

    def _put(self, state: dict, events=()) -> int:
        """Record a job's new state, then its events ``[{"event": name, ...fields}, ...]``;
        returns the state record's offset in the job-state topic."""
        key = state["id"].encode()
        off = self._lg.append(encode_state(state), key)
        if events:
            self._events.emit([(key, v) for v in events])
        return off

    def _remove_ids(self, ids: list[str]) -> None:
        """Remove these jobs from the job-state topic (a tombstone each, with the gen of a
        job_id job this process knows; a ``removed`` event each)."""
        if not ids:
            return
        idx = self._index
        idx.refresh()
        gens = []
        for j in ids:
            s = idx.final(j)
            gen = s.get("gen", 0) if s is not None and "job_id" in s.get("opts", {}) else None
            gens.append((j, gen, None if s is None else s.get("state")))
        self._tombstones(gens)

    # -- events ------------------------------------------------------------------------------

    def events(self, *, since=None, offset: int | None = None) -> QueueEvents:
        """This queue's events (:class:`fastq.QueueEvents`): new ones, or replayed from
        ``since`` (seconds since the epoch, or a datetime) or an ``offset``."""
        return QueueEvents(self, since=since, offset=offset)

    def _listeners(self) -> JobListeners:
        with self._listeners_lock:
            if self._job_listeners is None:
                self._check_open()
                self._job_listeners = JobListeners(self)
            return self._job_listeners

    def _check_open(self) -> None:
        if self._closed or self.broker.closed:
            raise Closed(f"task queue {self.name!r} is closed")

    @property
    def closed(self) -> bool:
        return self._closed or self.broker.closed

    def close(self) -> None:
        """Forget this handle (the broker owns the queue and topics) and stop the thread
        of ``job.on`` listeners, if any. Idempotent."""
        self._closed = True
        self._ctl.close()
        if self._job_listeners is not None:
            self._job_listeners.close()

    def __enter__(self) -> "TaskQueue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<fastq.TaskQueue {self.name!r}>"
