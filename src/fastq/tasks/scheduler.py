"""Repeat: job schedulers for a :class:`fastq.TaskQueue` — BullMQ's ``upsertJobScheduler``
and ``repeat`` option, cron with time zones (croniter + zoneinfo) or ``every`` seconds.

Where a scheduler lives
-----------------------
- Its **definition**: the compacted topic ``<queue>.sched`` (one partition, created on the
  first upsert). Key ``s:<scheduler id>`` (UTF-8), value the definition as msgspec JSON::

      {"id", "gen", "name", "data", "opts",          # the jobs it makes (opts: stored job options)
       "cron", "every_ms", "tz",                     # exactly one of cron / every_ms; tz: IANA name
       "start_ms", "end_ms", "limit",                # null when not set
       "missed", "grace_ms", "updated_ms"}

  A tombstone (no value) when the scheduler is removed. ``gen`` (16 hex digits) names this
  version of the definition: BLAKE2b-64 of the previous ``gen`` and the definition, so the
  same upsert from many processes at once writes the same ``gen``. Key ``e:<scheduler id>``
  holds ``{"gen", "ms"}`` once the jobs of that ``gen`` came to their end (``limit``
  reached or past ``end``), so upserting the same definition again does not start it over.
- Its **ticks**: ordinary jobs of the task queue, one per tick, delayed until the tick's
  time (the queue's delay: never early). Job id ``repeat:<scheduler id>:<gen>:<seq>``;
  ``opts["repeat"]`` = ``{"scheduler", "gen", "seq", "count", "tick_ms"}`` (``count``: the
  how-manyth job this is, for ``limit``; ``tick_ms``: its time, ms since the epoch, UTC).

Exactly one job per tick
------------------------
Only the scheduler's next tick is stored, as BullMQ does. The worker that receives tick
``seq`` adds tick ``seq + 1`` *before* running it (:func:`on_tick`, called by the worker),
so the schedule goes on whatever the handler does. The successor's id depends on ``seq``,
not on its time: however many processes compute it, and whatever time each computes after
a downtime, there is one id, and adding an id that exists is a no-op (the job index,
and the queue's ``dedup_id`` for two adds at the same moment). The chain cannot fork.
A redelivered tick (its worker was killed) whose job had started adds nothing: its
successor was added before it started. Adding a tick writes its state, then its message;
whoever finds the state of a tick that has not started publishes the message again under
the same ``dedup_id`` (a no-op when it exists), so an adder that died between the two does
not stop the schedule — while the state is younger than the queue's ``dedup_window``.

A tick whose scheduler was removed, or whose ``gen`` is not the definition's any more (an
upsert changed it), is dropped when it comes due: never run, its job state removed.
Upsert and remove also remove the states of the pending ticks they can see.

Missed ticks (``missed``)
-------------------------
When tick ``T`` is received at ``now`` > ``T`` (nothing ran while it came due):
``"once"`` (default; BullMQ, Celery beat, APScheduler's coalesce) runs ``T`` and goes on
from the first tick after ``now``; ``"all"`` runs ``T`` and every tick after it, one job
each, oldest first; ``"skip"`` (Huey, Quartz's do-nothing) drops ``T`` when it is more than
``grace`` seconds late and goes on from the first tick after ``now``.

Thread- and process-safety: any number of processes and threads may upsert, remove and
run ticks at once; the topic's order settles which definition is the current one.
"""
from __future__ import annotations

import functools
import hashlib
import math
import threading
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import msgspec
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import CorruptRecord, InvalidArgument, UnknownTopic
from .admin import dedup_id
from .job import Job, JobIndex, now_ms

if TYPE_CHECKING:
    from .taskqueue import TaskQueue

__all__ = ["Schedulers", "on_tick", "validate_repeat", "next_after", "MISSED",
           "REPEAT_OPTIONS", "SCHED_SUFFIX"]

SCHED_SUFFIX = ".sched"              # no longer than the job queue's ".tasks": names fit the same
DEF_PREFIX = "s:"
END_PREFIX = "e:"
JOB_PREFIX = "repeat:"
MISSED = ("once", "all", "skip")
DEFAULT_GRACE_S = 60.0               # "skip": later than this is missed (Quartz's misfire threshold)
REPEAT_OPTIONS = ("cron", "pattern", "every", "tz", "start", "end", "limit", "missed", "grace")
MAX_SCHEDULER_ID = 400              # a tick's job id adds "repeat:" and ":<gen>:<seq>": within 512
LIVE = ("waiting", "delayed", "active")
MAX_CRON = 256                       # characters of a cron expression
REPUBLISH_MARGIN_MS = 1000           # clock steps between processes: stay well inside dedup_window

_enc = msgspec.json.Encoder()
_sorted = msgspec.json.Encoder(order="sorted")
_dec = msgspec.json.Decoder()


# -- definitions ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _instant_ms(what: str, v) -> int | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        if v.tzinfo is None or v.utcoffset() is None:
            raise InvalidArgument(f"repeat {what} must be a timezone-aware datetime or seconds since the "
                                  f"epoch, got the naive datetime {v!r}")
        return int(round(v.timestamp() * 1000))
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise InvalidArgument(f"repeat {what} must be a timezone-aware datetime or seconds since the "
                              f"epoch (>= 0), got {v!r}")
    return int(round(v * 1000))


def _cron():
    import croniter      # deferred: ~30 ms, a tenth of `import fastq`, for the few programs that use cron
    return croniter


def _croniter(expr: str, start: datetime):
    return _cron().croniter(expr, start, second_at_beginning=True)


def validate_repeat(repeat) -> dict:
    """The stored form of a ``repeat`` dict (see :meth:`fastq.TaskQueue.upsert_job_scheduler`),
    or InvalidArgument naming what is wrong."""
    if not isinstance(repeat, dict):
        raise InvalidArgument(f"repeat must be a dict like {{'cron': '0 9 * * *'}} or {{'every': 60}}, "
                              f"got {repeat!r}")
    unknown = set(repeat) - set(REPEAT_OPTIONS)
    if unknown:
        raise InvalidArgument(f"unknown repeat option(s) {sorted(map(repr, unknown))}; known: {list(REPEAT_OPTIONS)}")
    cron = repeat.get("cron")
    if repeat.get("pattern") is not None:             # BullMQ's name for it
        if cron is not None:
            raise InvalidArgument("repeat has both 'cron' and 'pattern' (the same thing): give one")
        cron = repeat["pattern"]
    every = repeat.get("every")
    if cron is not None and every is not None:
        raise InvalidArgument(f"repeat has both cron={cron!r} and every={every!r}: give one of them")
    if cron is None and every is None:
        raise InvalidArgument("repeat needs 'cron' (a cron expression) or 'every' (seconds)")
    tz = repeat.get("tz")
    if tz is None:
        tz = "UTC"
    if not isinstance(tz, str) or not tz:
        raise InvalidArgument(f"repeat tz must be an IANA time zone name like 'Europe/Paris', got {tz!r}")
    try:
        _zone(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise InvalidArgument(f"unknown time zone {tz!r} (repeat tz takes IANA names like "
                              "'Europe/Paris' or 'UTC')") from None
    every_ms = None
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not math.isfinite(every) \
                or every <= 0:
            raise InvalidArgument(f"repeat every must be seconds > 0, got {every!r}")
        every_ms = int(round(every * 1000))
        if every_ms < 1:
            raise InvalidArgument(f"repeat every must be at least 0.001 s, got {every!r}")
    if cron is not None:
        if not isinstance(cron, str) or not cron.strip() or len(cron) > MAX_CRON:
            shown = repr(cron) if len(repr(cron)) <= 80 else repr(cron)[:80] + "..."
            raise InvalidArgument(f"repeat cron must be a cron expression string of at most {MAX_CRON} "
                                  f"characters, got {shown}")
        cron = " ".join(cron.split())
        fields = len(cron.split())
        if not cron.startswith("@") and fields not in (5, 6):
            raise InvalidArgument(f"cron expression {cron!r} does not parse: it has {fields} fields; "
                                  "give 5 (minute hour day month weekday) or 6 (seconds first)")
        try:
            _croniter(cron, datetime.now(timezone.utc))
        except (ValueError, TypeError, KeyError) as e:          # croniter's errors are ValueErrors
            raise InvalidArgument(f"cron expression {cron!r} does not parse: {e}") from None
    start_ms = _instant_ms("start", repeat.get("start"))
    end_ms = _instant_ms("end", repeat.get("end"))
    if start_ms is not None and end_ms is not None and end_ms <= start_ms:
        raise InvalidArgument(f"repeat end ({repeat.get('end')!r}) must be after start ({repeat.get('start')!r})")
    limit = repeat.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidArgument(f"repeat limit must be None or an int >= 1 (jobs to make), got {limit!r}")
    missed = repeat.get("missed", "once")
    if missed not in MISSED:
        raise InvalidArgument(f"repeat missed must be one of {list(MISSED)}, got {missed!r}")
    grace = repeat.get("grace", DEFAULT_GRACE_S)
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not math.isfinite(grace) or grace < 0:
        raise InvalidArgument(f"repeat grace must be seconds >= 0, got {grace!r}")
    spec = {"cron": cron, "every_ms": every_ms, "tz": tz, "start_ms": start_ms, "end_ms": end_ms,
            "limit": limit, "missed": missed, "grace_ms": int(round(grace * 1000))}
    if cron is not None:
        try:
            next_after(spec, now_ms(), raise_never=True)
        except _cron().CroniterBadDateError:
            raise InvalidArgument(f"cron expression {cron!r} never matches a date") from None
    return spec


def next_after(d: dict, t_ms: int, *, raise_never: bool = False) -> int | None:
    """The definition's first tick strictly after ``t_ms`` (and not before its start), in
    ms since the epoch; None past its end. ``every``: ``start + k * every`` (start defaults
    to the epoch, so the grid is the same in every process); ``cron``: the next match in
    the definition's time zone (croniter's, except that a fixed-hour time that happens
    twice when the clocks go back runs once)."""
    start = d.get("start_ms")
    if d.get("every_ms") is not None:
        every, anchor = d["every_ms"], start or 0
        nxt = anchor if t_ms < anchor else anchor + ((t_ms - anchor) // every + 1) * every
    else:
        if start is not None and t_ms < start:
            t_ms = start - 1
        zone = _zone(d["tz"])
        try:
            it = _croniter(d["cron"], datetime.fromtimestamp(t_ms / 1000.0, zone))
            secs = it.get_next(float)
            while _second_of_a_repeated_time(secs, zone, it.expanded[1]):
                secs = it.get_next(float)
            nxt = int(round(secs * 1000))
        except _cron().CroniterBadDateError:
            if raise_never:
                raise
            return None
        if nxt <= t_ms:                                # sub-ms rounding: strictly after
            return next_after(d, t_ms + 1)
    end = d.get("end_ms")
    return None if end is not None and nxt > end else nxt


def _second_of_a_repeated_time(secs: float, zone: ZoneInfo, hours: list) -> bool:
    """When the clocks go back, a wall time happens twice; croniter matches both. An
    expression with fixed hours runs at the first only (as cronie does); one with ``*`` in
    the hour field keeps both (it means every so often, and time did pass)."""
    if hours == ["*"]:
        return False
    local = datetime.fromtimestamp(secs, zone)
    return local.fold == 1 and local.replace(fold=0).timestamp() != secs


def _same(cur: dict, body: dict) -> bool:
    return _dec.decode(_enc.encode(body)) == {k: cur.get(k) for k in body}


def _gen(prev: str, body: dict, seed: str) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(prev.encode())
    h.update(_sorted.encode(body))
    h.update(seed.encode())
    return h.hexdigest()


def _check_id(sid) -> None:
    if not isinstance(sid, str) or not 0 < len(sid) <= MAX_SCHEDULER_ID:
        raise InvalidArgument(f"scheduler id must be a non-empty str of at most {MAX_SCHEDULER_ID} "
                              f"characters, got {sid!r}")


class _Index(JobIndex):
    """The scheduler topic read up to ``position``: ``jobs`` maps a record key (``s:<id>``,
    ``e:<id>``) to its latest value (JobIndex's tailing, another record type)."""

    def _apply(self, rec) -> None:
        if rec.key is None:
            return
        key = bytes(rec.key).decode("utf-8", "replace")
        if rec.value is None:
            self.jobs.pop(key, None)
            return
        try:
            v = _dec.decode(rec.value)
        except msgspec.DecodeError as e:
            raise CorruptRecord(f"scheduler topic {self.topic.name!r}: record {rec.offset} ({key!r}) "
                                f"is not a scheduler: {e}") from None
        if not isinstance(v, dict) or (key.startswith(DEF_PREFIX) and not isinstance(v.get("gen"), str)):
            raise CorruptRecord(f"scheduler topic {self.topic.name!r}: record {rec.offset} ({key!r}) "
                                "is not a scheduler definition")
        self.jobs[key] = v

    def keys(self, prefix: str) -> list[str]:
        self.refresh()
        with self._lock:
            return [k[len(prefix):] for k in self.jobs if k.startswith(prefix)]


# -- a task queue's schedulers ---------------------------------------------------------------------

class Schedulers:
    """The job schedulers of one task queue (``tq.upsert_job_scheduler`` and friends call
    it; the TaskQueue makes it, handing it ``validate_options`` for the jobs' options:
    taskqueue imports this module, so this one cannot import taskqueue). Thread-safe."""

    def __init__(self, tq: "TaskQueue", validate_options):
        self.tq = tq
        self._validate_options = validate_options
        self._index: _Index | None = None
        self._lock = threading.Lock()

    def _open(self, create: bool) -> _Index | None:
        if self._index is None:
            with self._lock:
                if self._index is None:
                    try:
                        t = self.tq.broker.topic(self.tq.name + SCHED_SUFFIX, partitions=1, compact=True,
                                                 create=create)
                    except UnknownTopic:
                        return None
                    self._index = _Index(t)
        return self._index

    def _append(self, items: list) -> None:
        """(key, value or None) records, one append."""
        idx = self._open(True)
        idx.log.append_batch([(None if v is None else _enc.encode(v), k.encode(), None) for k, v in items])

    # -- definitions -------------------------------------------------------------------------

    def upsert(self, sid: str, repeat: dict, name: str | None = None, data: Any = None,
               opts: dict | None = None) -> Job | None:
        tq = self.tq
        tq._check_open()
        _check_id(sid)
        spec = validate_repeat(repeat)
        name = sid if name is None else name
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"job name must be a non-empty str, got {name!r}")
        opts = {} if opts is None else opts
        if not isinstance(opts, dict):
            raise InvalidArgument(f"job options must be a dict, got {opts!r}")
        bad = sorted({"job_id", "delay", "repeat"} & set(opts))
        if bad:
            raise InvalidArgument(f"a scheduler's job options cannot have {bad}: the scheduler sets the "
                                  "job's id and delay (use repeat's start to begin later)")
        stored = self._validate_options(opts)
        tq._codec.encode(data)                         # CodecError now, before anything is stored
        body = {"name": name, "data": data, "opts": stored, **spec}
        idx = self._open(True)
        cur = idx.get(DEF_PREFIX + sid)
        seed = ""
        if cur is not None and _same(cur, body):
            live = self._live(sid, cur["gen"])
            if live:
                nxt = min(live, key=lambda j: (j._s["state"] == "active", j._s["opts"]["repeat"]["tick_ms"]))
                self._republish(nxt.id, nxt._s)
                return nxt
            end = idx.get(END_PREFIX + sid, refresh=False)
            if end is not None and end.get("gen") == cur["gen"]:
                return None                            # it made all its jobs: the same definition adds none
            seed = f"restart:{now_ms()}:{uuid.uuid4().hex}"   # its pending tick was lost (removed)
        now = now_ms()
        gen = _gen(cur["gen"] if cur is not None else "", body, seed)
        rec = {"id": sid, "gen": gen, **body, "updated_ms": now}
        self._append([(DEF_PREFIX + sid, rec), (END_PREFIX + sid, None)])
        self._drop_pending(sid, keep_gen=gen)
        # from after the append: a tick of the replaced definition received before it has a
        # time before this, so the new schedule cannot make a second job for that time
        now = now_ms()
        first = next_after(rec, now)
        if first is None:
            self._append([(END_PREFIX + sid, {"gen": gen, "ms": now})])
            return None
        return self._add_tick(rec, 1, 1, first)

    def add_repeat(self, name: str, data: Any, repeat: dict, opts: dict) -> Job | None:
        """``tq.add(name, data, repeat=...)``: BullMQ's repeatable job, a scheduler whose id
        is ``job_id`` or, like BullMQ's repeat key, ``<name>::<end ms>:<tz>:<cron or every ms>``."""
        opts = dict(opts)
        jid = opts.pop("job_id", None)
        if opts.pop("delay", None) is not None:
            raise InvalidArgument("delay and repeat together: use repeat's start to begin later")
        spec = validate_repeat(repeat)
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"job name must be a non-empty str, got {name!r}")
        sid = jid if jid is not None else \
            f"{name}::{spec['end_ms'] or ''}:{spec['tz']}:{spec['cron'] or spec['every_ms']}"
        return self.upsert(sid, repeat, name, data, opts)

    def remove(self, sid: str) -> bool:
        _check_id(sid)
        self.tq._check_open()
        idx = self._open(False)
        if idx is None or idx.get(DEF_PREFIX + sid) is None:
            return False
        self._append([(DEF_PREFIX + sid, None), (END_PREFIX + sid, None)])
        self._drop_pending(sid, keep_gen=None)
        return True

    def get(self, sid: str) -> dict | None:
        _check_id(sid)
        idx = self._open(False)
        d = None if idx is None else idx.get(DEF_PREFIX + sid)
        return None if d is None else self._info(d)

    def list(self) -> list[dict]:
        idx = self._open(False)
        if idx is None:
            return []
        out = []
        for sid in sorted(idx.keys(DEF_PREFIX)):
            d = idx.get(DEF_PREFIX + sid, refresh=False)
            if d is not None:
                out.append(self._info(d))
        return out

    def _info(self, d: dict) -> dict:
        pending = [j._s["opts"]["repeat"]["tick_ms"] for j in self._live(d["id"], d["gen"])
                   if j._s["state"] != "active"]
        secs = (lambda ms: None if ms is None else ms / 1000.0)
        return {"id": d["id"], "name": d["name"], "data": d["data"], "opts": d["opts"],
                "cron": d["cron"], "every": secs(d["every_ms"]), "tz": d["tz"], "start": secs(d["start_ms"]),
                "end": secs(d["end_ms"]), "limit": d["limit"], "missed": d["missed"],
                "grace": d["grace_ms"] / 1000.0, "gen": d["gen"],
                "next": secs(min(pending)) if pending else None}

    # -- ticks -------------------------------------------------------------------------------

    def _ticks(self, sid: str, states=LIVE) -> list[Job]:
        tq = self.tq
        out = []
        for jid in tq._index.ids(states):
            s = tq._index.get(jid, refresh=False)
            rep = None if s is None else (s.get("opts") or {}).get("repeat")
            if isinstance(rep, dict) and rep.get("scheduler") == sid:
                out.append(Job(tq, jid, s))
        return out

    def _live(self, sid: str, gen: str) -> list[Job]:
        return [j for j in self._ticks(sid) if j._s["opts"]["repeat"].get("gen") == gen]

    def _drop_pending(self, sid: str, keep_gen: str | None) -> None:
        """Remove the states of pending (not started) ticks of other generations; their
        messages are dropped unrun when they come due (:func:`on_tick`)."""
        gone = [j.id for j in self._ticks(sid, ("waiting", "delayed"))
                if j._s["opts"]["repeat"].get("gen") != keep_gen]
        self.tq._remove_ids(gone)

    def _add_tick(self, d: dict, seq: int, count: int, tick_ms: int) -> Job:
        tq = self.tq
        jid = f"{JOB_PREFIX}{d['id']}:{d['gen']}:{seq}"
        s = tq._index.get(jid)
        if s is not None:                              # added already (another process, or before a crash)
            self._republish(jid, s)
            return Job(tq, jid, s)
        rep = {"scheduler": d["id"], "gen": d["gen"], "seq": seq, "count": count, "tick_ms": tick_ms}
        delay = max(0, tick_ms - now_ms()) / 1000.0
        opts = {**d["opts"], "job_id": jid, "delay": delay or None}
        # past max_depth: a schedule holds one pending job, it is not producer load, and a
        # refused tick would stop the schedule (or, the first, leave a definition without one)
        return tq._add_many([(d["name"], d["data"], opts)], repeat=rep, admit=False)[0]

    def _republish(self, jid: str, s: dict) -> None:
        """A tick's add writes its state, then its message: one that died in between (killed,
        or the publish failed) left a state with no message, and the schedule would stop
        there. Whoever finds the state of a tick that has not started publishes its message
        again with the same ``dedup_id``: the queue stores nothing when the message exists —
        it remembers the id ``dedup_window`` seconds, so this is done while the state is
        younger than that."""
        tq = self.tq
        now = now_ms()
        if s.get("state") not in ("waiting", "delayed") or \
                now - s.get("added_ms", 0) >= tq.queue.config["dedup_window"] * 1000 - REPUBLISH_MARGIN_MS:
            return
        due = s.get("due_ms")
        delay = None if due is None or due <= now else (due - now) / 1000.0
        # epoch -1: never a worker's fast path, so the job state decides (fastq.tasks.admin);
        # past the queue's bounds, as _add_tick
        q = tq.queue
        was = getattr(q._admitted, "on", False)
        q._admitted.on = True
        try:
            q.publish(tq._body(s, -1), delay=delay, priority=s["opts"]["priority"],
                      dedup_id=dedup_id(jid, s.get("gen", 0)))
        finally:
            q._admitted.on = was

    def tick(self, jid: str, rep: dict, prev: dict | None) -> bool:
        """See :func:`on_tick`."""
        if prev is not None and prev.get("attempts_made", 0) >= 1:
            return True                                # a retry or a killed worker's run: its successor exists
        idx = self._open(False)
        sid = rep.get("scheduler")
        d = None if idx is None else idx.get(DEF_PREFIX + str(sid))
        if d is None or d["gen"] != rep.get("gen"):
            self.tq._remove_ids([jid])                 # removed or replaced: never run
            return False
        now = now_ms()
        tick_ms = rep["tick_ms"]
        skip = d["missed"] == "skip" and now - tick_ms > d["grace_ms"]
        count = rep["count"] + (0 if skip else 1)
        nxt = next_after(d, tick_ms if d["missed"] == "all" else max(tick_ms, now))
        if nxt is None or (d["limit"] is not None and count > d["limit"]):
            self._append([(END_PREFIX + d["id"], {"gen": d["gen"], "ms": now})])
        else:
            self._add_tick(d, rep["seq"] + 1, count, nxt)
        if skip:
            self.tq._remove_ids([jid])
            return False
        return True


def on_tick(tq: "TaskQueue", jid: str, rep: dict, prev: dict | None) -> bool:
    """Called by a worker that received a scheduler's tick job, before it records the job
    active: adds the next tick (unless the job had started before, ``prev`` being its
    state then), and says whether to run this one — False for a tick whose scheduler was
    removed or changed, or a missed tick under ``missed="skip"`` (its state is removed;
    the worker acks the message)."""
    return tq._schedulers().tick(jid, rep, prev)
