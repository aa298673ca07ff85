"""Administration of a task queue (BullMQ's Queue getters and operator methods), mixed into
:class:`fastq.TaskQueue`: counts by state, paging, pause/resume, drain, clean, retry,
promote, remove, obliterate, and the retention of finished jobs.

How a job is removed: its key gets a tombstone in the job-state topic ``<name>.jobs``;
for a job added with a ``job_id`` the tombstone's ``fq-gen`` header keeps its last
``gen``, so that adding the same ``job_id`` again makes a new incarnation (``gen`` + 1)
whose queue message has a dedup id of its own (:mod:`fastq.tasks.taskqueue`). The job's
queue message, if it is still waiting or delayed, stays in the queue; the worker that
receives it finds the job gone (or of another ``gen``, or added at another time) and acks
it without running it (:meth:`AdminMixin._begin`). Only ``obliterate`` also purges the
queue (no job is left to recover there).

Every operation here that removes jobs or makes a queue message stale holds the admin lock
exclusively and moves the admin epoch on first — before it reads a single job state
(:mod:`fastq.tasks.control`) — so a worker that records a job active without the lock
either did so before that read (and the operation sees the job active) or sees the epoch
moved and checks what the operation did (:meth:`AdminMixin._begin`).
A kill -9 at any point leaves each job either as it was or removed (one tombstone each,
written in batches of :data:`BATCH`); see docs/TASKS.md "Administration".

Thread- and process-safety: as :class:`fastq.TaskQueue`'s.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from ..errors import InvalidArgument, JobActive, JobStateError, UnknownJob
from .job import FINISHED, GEN_HEADER, Job, decode_state as _dec_state, encode_state, now_ms

__all__ = ["AdminMixin", "COUNT_STATES", "CLEAN_STATES", "REPAIR_GRACE", "dedup_id"]

COUNT_STATES = ("waiting", "active", "delayed", "prioritized", "completed", "failed", "paused")
CLEAN_STATES = ("completed", "failed", "waiting", "delayed", "prioritized", "paused")
ALIASES = {"wait": "waiting"}              # BullMQ's name for the wait list
BATCH = 1000                               # tombstones per append: a crash leaves whole batches
RUN, DROP, PAUSED, FAILED = "run", "drop", "paused", "failed"     # TaskQueue._begin verdicts
REPAIR_GRACE = 60.0                        # repair(): seconds a job may wait before its message is looked for


def dedup_id(jid: str, gen: int) -> str:
    """The queue dedup id of incarnation ``gen`` of job ``jid`` (injective: gen has no ':')."""
    return f"{gen}:{jid}"


def _states(states, allowed: tuple, what: str) -> set[str]:
    if isinstance(states, str):
        states = [states]
    try:
        out = [ALIASES.get(s, s) for s in states]
    except TypeError:
        raise InvalidArgument(f"{what} must be a state name or a list of them, got {states!r}") from None
    bad = [s for s in out if s not in allowed]
    if bad or not out:
        raise InvalidArgument(f"unknown job state(s) {bad or states!r} for {what}; states are {list(allowed)}")
    return set(out)


def _int(what: str, v, lo: int, none_ok: bool = False) -> int | None:
    if v is None and none_ok:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise InvalidArgument(f"{what} must be an int >= {lo}{' or None' if none_ok else ''}, got {v!r}")
    return v


class AdminMixin:
    """Queue-level getters and operator methods of :class:`fastq.TaskQueue` (module docstring)."""

    # -- reading -----------------------------------------------------------------------------

    def _classify(self, s: dict, now: int, paused: bool) -> str:
        """The BullMQ state a job counts in: a delayed job past its due time is waiting; a
        waiting job with priority > 0 is prioritized; while paused a waiting one is paused."""
        st = s["state"]
        if st == "delayed" and s.get("due_ms", 0) <= now:
            st = "waiting"
        if st == "waiting":
            if s["opts"].get("priority", 0) > 0:
                return "prioritized"
            if paused:
                return "paused"
        return st

    def _select(self, want: set[str]) -> list[tuple[int, str, dict]]:
        """(offset of the latest state, id, state) of the jobs counted in ``want``, in no order."""
        idx = self._index
        idx.refresh()
        paused = self._ctl.paused()
        now = now_ms()
        out = []
        with idx._lock:
            for st in ("waiting", "delayed", "active", "completed", "failed"):
                for j, off in idx.by_state[st].items():
                    s = idx.jobs[j]
                    if self._classify(s, now, paused) in want:
                        out.append((off, j, s))
        return out

    def counts(self) -> dict[str, int]:
        """``{"waiting", "active", "delayed", "prioritized", "completed", "failed", "paused": n}``
        (BullMQ's getJobCounts), as this process knows them: the job-state topic read to its
        end. ``waiting`` holds priority-0 jobs; ``prioritized`` waiting ones with priority > 0;
        while the queue is paused its priority-0 waiting jobs count as ``paused``."""
        idx = self._index
        idx.refresh()
        paused = self._ctl.paused()
        now = now_ms()
        out = dict.fromkeys(COUNT_STATES, 0)
        with idx._lock:
            for st in ("active", "completed", "failed"):
                out[st] = len(idx.by_state[st])
            for st in ("waiting", "delayed"):
                for j in idx.by_state[st]:
                    out[self._classify(idx.jobs[j], now, paused)] += 1
        return out

    def get_job_counts(self, *states: str) -> dict[str, int]:
        """BullMQ's ``getJobCounts(...types)``: :meth:`counts` of ``states`` (all when none)."""
        c = self.counts()
        return c if not states else {s: c[s] for s in sorted(_states(states, COUNT_STATES, "get_job_counts"),
                                                              key=COUNT_STATES.index)}

    def get_job_count_by_types(self, *states: str) -> int:
        """How many jobs are in any of ``states``; ``waiting`` includes ``paused`` (BullMQ)."""
        want = _states(states, COUNT_STATES, "get_job_count_by_types")
        if "waiting" in want:
            want.add("paused")
        c = self.counts()
        return sum(c[s] for s in want)

    def count(self) -> int:
        """Jobs still to run: waiting, paused, prioritized and delayed (BullMQ's ``count()``)."""
        return self.get_job_count_by_types("waiting", "prioritized", "delayed")

    def get_waiting_count(self) -> int:
        """Waiting (priority 0) jobs, paused ones included (BullMQ's getWaitingCount)."""
        return self.get_job_count_by_types("waiting")

    def get_active_count(self) -> int:
        return self.counts()["active"]

    def get_delayed_count(self) -> int:
        return self.counts()["delayed"]

    def get_prioritized_count(self) -> int:
        return self.counts()["prioritized"]

    def get_completed_count(self) -> int:
        return self.counts()["completed"]

    def get_failed_count(self) -> int:
        return self.counts()["failed"]

    def get_paused_count(self) -> int:
        return self.counts()["paused"]

    def get_jobs(self, states: Iterable[str] | str = COUNT_STATES, start: int = 0, end: int = -1,
                 asc: bool = False) -> list[Job]:
        """The jobs counted in any of ``states`` (see :meth:`counts`; ``waiting`` includes
        ``paused``, as BullMQ's getJobs), ordered by their last change — newest first, or
        oldest first with ``asc=True`` — and sliced to positions ``start..end`` inclusive
        (``end=-1``: to the last)."""
        want = _states(states, COUNT_STATES, "get_jobs")
        if "waiting" in want:
            want.add("paused")
        _int("start", start, 0)
        if isinstance(end, bool) or not isinstance(end, int) or end < -1:
            raise InvalidArgument(f"end must be an int >= -1 (-1: to the last), got {end!r}")
        rows = self._select(want)
        rows.sort(key=lambda r: r[0], reverse=not asc)
        rows = rows[start:] if end == -1 else rows[start:end + 1]
        return [Job(self, j, s) for _, j, s in rows]

    # -- pause ---------------------------------------------------------------------------------

    def pause(self) -> None:
        """Pause the queue for every process: workers take no new job until :meth:`resume`;
        jobs already running finish. Persistent (a record of the control topic)."""
        self._check_open()
        with self._ctl.exclusive():
            if not self._ctl.paused():
                self._ctl.set_paused(True)

    def resume(self) -> None:
        """Undo :meth:`pause`; waiting workers start taking jobs at once."""
        self._check_open()
        with self._ctl.exclusive():
            if self._ctl.paused():
                self._ctl.set_paused(False)

    def is_paused(self) -> bool:
        return self._ctl.paused()

    # -- removing ------------------------------------------------------------------------------

    def _op(self, op: str):
        """An admin operation: the admin lock exclusively, its begin record (the epoch moves
        before it reads anything), and its done record at the end, however it ends."""
        return self._ctl.operation(op, self.topic.log(0).end_offset)

    def _remove_states(self, states: list[dict]) -> None:
        """Remove these jobs: a tombstone each (see :meth:`_tombstones`)."""
        self._tombstones([(s["id"], s.get("gen", 0) if "job_id" in s.get("opts", {}) else None, s.get("state"))
                          for s in states])

    def _tombstones(self, ids: list, events: bool = True) -> None:
        """Append a tombstone per ``(job id, gen or None, previous state or None)``, in
        batches of :data:`BATCH` (a gen goes in the ``fq-gen`` header: a job_id job, see
        :mod:`fastq.tasks.job`), each batch followed by its ``removed`` events."""
        lg = self.topic.log(0)
        for i in range(0, len(ids), BATCH):
            part = ids[i:i + BATCH]
            lg.append_batch([(None, j.encode(), None if g is None else [(GEN_HEADER, str(g).encode())])
                             for j, g, _ in part])
            if events:
                self._events.emit([(j.encode(), {"event": "removed", "prev": prev}) for j, _, prev in part])

    def remove(self, job_id: str) -> None:
        """Remove a job that is not running (BullMQ's ``job.remove()``): its state goes, and
        its queue message, if any, is dropped by the worker that receives it — a removed
        job never runs. :class:`fastq.UnknownJob` when there is no such job,
        :class:`fastq.JobActive` while a worker runs it."""
        if not isinstance(job_id, str):
            raise InvalidArgument(f"job_id must be a str, got {job_id!r}")
        self._check_open()
        with self._op("remove"):              # the epoch moves before it reads: see _begin
            s = self._index.get(job_id)
            if s is None:
                raise UnknownJob(f"no job {job_id!r} in task queue {self.name!r}")
            if s["state"] == "active":
                raise JobActive(f"job {job_id!r} of task queue {self.name!r} is active (a worker is running "
                                "it): it cannot be removed until it finishes")
            self._remove_states([s])

    def drain(self, delayed: bool = False) -> int:
        """Remove every waiting job (prioritized and paused ones too) and, with
        ``delayed=True``, every delayed one; active and finished jobs stay. Returns how many."""
        if not isinstance(delayed, bool):
            raise InvalidArgument(f"delayed must be True or False, got {delayed!r}")
        self._check_open()
        want = {"waiting", "prioritized", "paused"} | ({"delayed"} if delayed else set())
        with self._op("drain"):
            doomed = [s for _, _, s in self._select(want)]
            self._remove_states(doomed)
        return len(doomed)

    def clean(self, grace: float, limit: int | None = 0, state: str = "completed") -> list[str]:
        """Remove up to ``limit`` jobs (0 or None: all) in ``state`` (completed, failed,
        waiting, prioritized, paused, delayed) that are older than ``grace`` seconds — by
        when they finished, or were added for jobs not finished — oldest first. Returns
        their ids (BullMQ's ``clean``). Active jobs cannot be cleaned (remove them when
        they finish)."""
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not math.isfinite(grace) or grace < 0:
            raise InvalidArgument(f"grace must be seconds >= 0, got {grace!r}")
        limit = _int("limit", limit, 0, none_ok=True)
        if state == "active":
            raise InvalidArgument("clean cannot remove active jobs (a worker is running them); clean "
                                  f"one of {list(CLEAN_STATES)}")
        want = _states(state, CLEAN_STATES, "clean")
        self._check_open()
        with self._op("clean"):
            cutoff = now_ms() - int(grace * 1000)
            rows = []
            for _, j, s in self._select(want):
                t = s.get("finished_ms") if s["state"] in FINISHED else s.get("added_ms")
                if t is not None and t <= cutoff:
                    rows.append((t, j, s))
            rows.sort(key=lambda r: r[0])
            if limit:
                rows = rows[:limit]
            self._remove_states([s for _, _, s in rows])
        return [j for _, j, _ in rows]

    def obliterate(self, *, force: bool = False) -> int:
        """Remove every job, job scheduler and queue message, and shrink the job-state topic
        to the removal records; the queue is left unpaused (as BullMQ's). Refuses with
        :class:`fastq.JobActive` while jobs are active unless ``force=True`` (then their
        workers finish them, record nothing, and the jobs stay gone). Returns how many jobs
        were removed."""
        if not isinstance(force, bool):
            raise InvalidArgument(f"force must be True or False, got {force!r}")
        self._check_open()
        idx = self._index
        lg = self.topic.log(0)
        with self._op("obliterate"):
            idx.refresh()
            with idx._lock:
                active = list(idx.by_state["active"])
                before = set(idx.jobs)
            if active and not force:
                raise JobActive(f"task queue {self.name!r} has {len(active)} active job(s) (e.g. {active[0]!r}): "
                                "obliterate refuses while workers run jobs; pass force=True")
            sched = self._schedulers()
            for d in sched.list():                 # job schedulers too (BullMQ's obliterate)
                sched.remove(d["id"])
            lg.roll()                              # what comes next starts a segment of its own
            base = lg.end_offset
            idx.refresh()
            with idx._lock:
                doomed = list(idx.jobs.values())
                before.update(idx.jobs)
                keep_gens = {j: g for j, g in idx.gens.items() if j not in idx.jobs}
            self._remove_states(doomed)            # readers of any position see the removals
            self._tombstones([(j, g, None) for j, g in keep_gens.items()], events=False)   # gens outlive the old segments
            self.queue.purge()
            idx.refresh()                          # jobs added (without the lock) before the purge ended
            with idx._lock:
                late = list(idx.jobs.values())
                before.update(idx.jobs)
            self._remove_states(late)              # their messages may be purged: they go too
            lg.delete_before(base)
            if self._ctl.paused():
                self._ctl.set_paused(False)
        return len(before)

    # -- running again -------------------------------------------------------------------------

    def _rerun(self, states: list[dict], ep: int, promote: bool) -> None:
        """Make each job a new incarnation that runs now: its message first, then its state
        (a crash between the two leaves a message of a gen the state does not know: workers
        drop it, and the job stays as it was). A worker admits a message of gen > 0 against
        the job state, so the run carries on from it (stack traces, logs, attempts)."""
        news = []
        for s in states:
            gen = s.get("gen", 0) + 1
            new = {k: v for k, v in s.items() if k not in ("due_ms", "finished_ms", "processed_ms")}
            new.update(state="waiting", gen=gen)
            if not promote:
                new.update(attempts_made=0, progress=0, return_value=None, failed_reason=None)
            a0 = s.get("attempts_made", 0) if promote else 0
            self.queue.publish(self._body(new, ep, a0), priority=s["opts"].get("priority", 0),
                               dedup_id=dedup_id(s["id"], gen))
            news.append(new)
        lg = self.topic.log(0)
        recs = [(encode_state(n), n["id"].encode(), None) for n in news]
        for i in range(0, len(recs), BATCH):
            lg.append_batch(recs[i:i + BATCH])

    def retry_failed(self, count: int | None = None) -> list[str]:
        """Run failed jobs again, oldest failure first, up to ``count`` (None: all): each
        starts over with its attempts (BullMQ's ``retryJobs``). Returns their ids."""
        count = _int("count", count, 1, none_ok=True)
        self._check_open()
        with self._ctl.exclusive():
            rows = sorted(self._select({"failed"}), key=lambda r: r[0])
            if count is not None:
                rows = rows[:count]
            if rows:
                self._rerun([s for _, _, s in rows], self._ctl.epoch, promote=False)
        return [j for _, j, _ in rows]

    def retry_job(self, job_id: str, state: str = "failed") -> None:
        """Run one finished job again (``job.retry()``): :class:`fastq.JobStateError` unless
        it is in ``state`` (``failed`` or ``completed``)."""
        if state not in FINISHED:
            raise InvalidArgument(f"state must be 'failed' or 'completed', got {state!r}")
        self._check_open()
        with self._ctl.exclusive():
            s = self._index.get(job_id)
            if s is None:
                raise UnknownJob(f"no job {job_id!r} in task queue {self.name!r}")
            if s["state"] != state:
                raise JobStateError(f"job {job_id!r} is {s['state']}, not {state}: only a {state} job can be "
                                    "retried this way")
            self._rerun([s], self._ctl.epoch, promote=False)

    def promote(self, job_id: str | None = None, *, count: int | None = None) -> list[str]:
        """Run delayed jobs now: the one ``job_id`` (:class:`fastq.JobStateError` unless it is
        delayed; BullMQ's ``job.promote()``) or, without it, up to ``count`` (None: all) of
        them, the soonest due first (``promoteJobs``). A job delayed by a retry's backoff
        keeps its attempts made. Returns the promoted ids."""
        count = _int("count", count, 1, none_ok=True)
        self._check_open()
        with self._op("promote") as ep:      # before reading (see _begin); the old delayed messages are stale
            if job_id is not None:
                s = self._index.get(job_id)
                if s is None:
                    raise UnknownJob(f"no job {job_id!r} in task queue {self.name!r}")
                if self._classify(s, now_ms(), False) != "delayed":
                    raise JobStateError(f"job {job_id!r} is {self._classify(s, now_ms(), False)}, "
                                        "not delayed: only a delayed job can be promoted")
                doomed = [s]
            else:
                doomed = sorted((s for _, _, s in self._select({"delayed"})), key=lambda s: s.get("due_ms", 0))
                if count is not None:
                    doomed = doomed[:count]
            if doomed:
                self._rerun(doomed, ep, promote=True)
        return [s["id"] for s in doomed]

    # -- repair: jobs whose add died between their state and their message -----------------------

    def repair(self, grace: float | None = None) -> list[str]:
        """Re-publish the jobs whose ``add`` was killed between the job's first state record
        and its queue message (the job would wait forever): every waiting or delayed job
        that was added — or came due — more than ``grace`` seconds ago and whose message
        (of its ``gen``) is not among the queue's unsettled ones runs again as a new
        incarnation (``gen`` + 1, as :meth:`promote` does: a late or missed original
        message is then stale and dropped, so a job never runs twice). ``grace`` (None:
        :data:`REPAIR_GRACE`) must exceed the longest an ``add`` may stall between the two.
        Workers call it every :data:`fastq.tasks.worker.REPAIR_EVERY_S`; returns the ids
        re-published.

        Cheap when there is nothing to repair: no lock and no admin epoch unless a job
        lacks its message; it reads the queue's unsettled messages only when some job has
        waited longer than ``grace``."""
        if grace is None:
            grace = REPAIR_GRACE
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not math.isfinite(grace) or grace < 0:
            raise InvalidArgument(f"grace must be seconds >= 0, got {grace!r}")
        self._check_open()
        cutoff = now_ms() - int(grace * 1000)
        idx = self._index
        idx.refresh()
        with idx._lock:                           # waiting and delayed only (not the finished many)
            old = [s for st in ("waiting", "delayed") for s in (idx.jobs[j] for j in idx.by_state[st])
                   if max(s.get("added_ms") or 0, s.get("due_ms") or 0) <= cutoff]
        if not old:
            return []
        queued = set()
        for body in self.queue.unsettled():
            try:
                m = _dec_state(body)
                queued.add((m["id"], m.get("gen", 0)))
            except Exception:                     # noqa: BLE001 - not a job message: not ours to judge
                continue
        lost = {s["id"]: s for s in old if (s["id"], s.get("gen", 0)) not in queued}
        if not lost:
            return []
        with self._op("repair") as ep:           # the epoch moves before the states are read again
            redo = []
            for jid, was in lost.items():
                s = self._index.get(jid)
                if s is not None and s["state"] in ("waiting", "delayed") and s.get("gen", 0) == was.get("gen", 0) \
                        and s.get("added_ms") == was.get("added_ms"):
                    redo.append(s)
            if redo:
                self._rerun(redo, ep, promote=True)
                self._events.emit([(s["id"].encode(), {"event": "waiting", "repaired": True}) for s in redo])
        return [s["id"] for s in redo]

    # -- retention (the worker calls it after recording a job's end) ------------------------------

    def _retain(self, s: dict, option: str, state: str) -> None:
        """Apply the finished job's ``remove_on_complete`` / ``remove_on_fail``: True removes
        it; a count keeps that many of the most recently finished jobs in ``state``;
        ``{"age", "count"}`` also removes those that finished more than ``age`` s ago."""
        keep = s["opts"].get(option, False)
        if keep is False:
            return
        idx = self._index
        with self._ctl.shared():                  # not across a retry of the same job
            idx.refresh()
            with idx._lock:
                ids = list(idx.by_state[state])   # oldest finish first
                if keep is True:
                    doomed = [idx.jobs[s["id"]]] if s["id"] in idx.by_state[state] else []
                else:
                    count = keep if isinstance(keep, int) else keep.get("count")
                    age = None if isinstance(keep, int) else keep.get("age")
                    old = set()
                    if age is not None:
                        cutoff = now_ms() - int(age * 1000)
                        old = {j for j in ids if idx.jobs[j].get("finished_ms", 0) < cutoff}
                    rest = [j for j in ids if j not in old]
                    if count is not None and len(rest) > count:
                        old.update(rest[:len(rest) - count])
                    doomed = [idx.jobs[j] for j in ids if j in old]
            if doomed:
                self._remove_states(doomed)

    # -- the worker's side of the admin lock ---------------------------------------------------

    def _begin(self, msg: dict, dc: int, active, before=None) -> tuple[str, dict | None, list | None]:
        """Admit the job of queue message ``msg`` (delivery ``dc``) and record it active:
        ``(RUN, state, ticket)`` — ``active(msg, prev, dc)`` built the state and its events,
        now recorded; ``(FAILED, state, None)`` — it built a ``failed`` state instead (a job
        stalled too often), recorded: ack the message;
        ``(DROP, None, None)`` — the job was removed, replaced by another ``gen`` or has
        finished, or ``before(prev)`` said no: ack the message, do not run it (``(DROP,
        state, None)`` for a job that failed: its dead letter is sent again first, see
        :mod:`fastq.tasks.deadletter`);
        ``(PAUSED, None, None)``. ``before``: called once admitted, before the record
        (a scheduler's tick adds its successor: :func:`fastq.tasks.scheduler.on_tick`).

        Fast path, no lock: a first delivery published at the current epoch (nothing
        removed or replaced since its add) is recorded active at once, and the epoch read
        again. Not moved: any admin operation starts after the record and sees the job
        active. Moved: wait for the operation (the lock, shared) and read the job's records
        since before the first epoch read — if the operation removed the job (before or
        after our record), drop it, and make sure it stays removed. Anything else is
        checked against the job's latest state under the lock."""
        ctl = self._ctl
        lg = self._lg
        since = lg.end_offset                     # before the epoch read: an admin op's writes come after
        clog = ctl.log
        ep = clog.end_offset                      # the epoch
        if ep != ctl._seen:
            ctl.paused()                          # read the new control records
        if ctl._paused:
            return PAUSED, None, None
        if dc == 1 and msg.get("ep") == ep and not msg.get("gen"):
            if before is not None and not before(None):
                return DROP, None, None
            s, evs = active(msg, None, dc)
            a = self._put(s, evs)
            if clog.end_offset == ep:
                return RUN, s, [ep, a]
            return self._begun_while_moved(s, ep, since, a)
        with ctl.shared():
            ep = ctl.epoch
            if ctl.paused():
                return PAUSED, None, None
            prev = self._index.get(msg["id"])
            if prev is None or prev.get("gen", 0) != msg.get("gen", 0) \
                    or prev.get("added_ms") != msg.get("added_ms"):   # (an incarnation whose gen was forgotten)
                return DROP, None, None
            if prev["state"] in FINISHED:         # its worker died before settling: failed ones are dead-lettered
                return DROP, (prev if prev["state"] == "failed" else None), None
            if before is not None and not before(prev if dc > 1 else None):
                return DROP, None, None
            s, evs = active(msg, prev, dc)
            a = self._put(s, evs)
            if s["state"] != "active":
                return FAILED, s, None            # stalled too often: failed for good (the worker acks)
            return RUN, s, [ep, a]

    def _begun_while_moved(self, s: dict, ep: int, since: int, a: int) -> tuple[str, dict | None, list | None]:
        """:meth:`_begin`'s fast path, once the job's ``active`` record ``s`` (at offset
        ``a``) is written and the epoch moved from ``ep`` since: an admin operation began
        meanwhile; wait for it, then RUN, DROP (it removed the job) or PAUSED (paused
        meanwhile: the job is recorded waiting again). ``since``: the job-state log's end
        before the epoch was read."""
        ctl = self._ctl
        with ctl.shared():                        # an admin operation began meanwhile: it is over now
            at = ctl.ops_since(ep)
            foreign, last, last_is_ours = (False, None, False) if at is None else \
                self._foreign(s["id"], s.get("gen", 0), max(since, at), self._lg.end_offset, a)
            if foreign:
                if last_is_ours:                  # our record came after its removal: undo it
                    self._undo(s, last)
                return DROP, None, None
            if ctl.paused():                      # paused meanwhile: back to waiting, held
                self._put({**s, "state": "waiting", "attempts_made": s["attempts_made"] - 1},
                          [{"event": "waiting"}])
                return PAUSED, None, None
            return RUN, s, [ctl.epoch, a]

    def _foreign(self, jid: str, gen: int, start: int, end: int, ours: int) -> tuple[bool, dict | None, bool]:
        """Read job ``jid``'s records in ``[start, end)`` but ``ours``: (whether one removed
        it or is of another gen, the last such one — None for a tombstone —, whether our
        record ``ours`` comes after it)."""
        key = jid.encode()
        foreign, last, at = False, None, -1
        lg = self.topic.log(0)
        start = max(start, lg.start_offset)       # obliterate drops old segments (its removals stay)
        for rec in lg.read(start, max(start, end)):
            if rec.offset == ours or rec.key is None or bytes(rec.key) != key:
                continue
            st = None if rec.value is None else _dec_state(rec.value)
            if st is None or st.get("gen", 0) != gen:
                foreign, last, at = True, st, rec.offset
        return foreign, last, foreign and ours > at

    def _undo(self, s: dict, last: dict | None) -> None:
        """Put back the admin operation's record of ``s``'s job that a worker record overwrote."""
        if last is None:
            self._remove_states([s])
        else:
            self._put(last)                       # a new incarnation (a re-added job_id)

    def _put_if_current(self, s: dict, ticket: list, events=()) -> bool:
        """Record worker state ``s`` of a running job, unless the job was removed
        (``obliterate(force=True)``) while it ran: False then, and the job stays removed.
        ``ticket``: ``[epoch, offset]`` — the epoch at admission and the offset of the
        job's last checked state (its ``active`` to begin with); updated here.

        Optimistic, so that a job's end costs no lock: append, then look at the epoch. Not
        moved — no admin operation began before the append, so none removed the job before
        it. Moved — wait for the operation (the lock, shared) and read the job's records
        since the ticket's offset, or since the first such operation began if later: if one
        before ours removed or replaced the job, put that back over ours."""
        w = self._put(s, events)
        if self._ctl.log.end_offset == ticket[0]:
            ticket[1] = w
            return True
        return self._current_after_move(s, ticket, w)

    def _current_after_move(self, s: dict, ticket: list, w: int) -> bool:
        """:meth:`_put_if_current` once ``s`` is written at offset ``w`` and the epoch moved
        since ``ticket[0]``: whether the job was still there (else it is put back removed)."""
        with self._ctl.shared():
            at = self._ctl.ops_since(ticket[0])
            foreign, last, _ = (False, None, False) if at is None else \
                self._foreign(s["id"], s.get("gen", 0), max(ticket[1] + 1, at), w, w)
            if not foreign:
                ticket[:] = [self._ctl.epoch, w]
                return True
            self._undo(s, last)                   # the job stays removed
            return False

    # -- for the type checker ------------------------------------------------------------------
    _index: Any
    _ctl: Any
    _schedulers: Any
    _events: Any
    queue: Any
    topic: Any
    name: str
