"""Jobs and where their state lives: the job-state topic and each process's index of it.

Every transition of a job appends its whole latest state to the compacted topic
``<queue>.jobs`` (one partition; key = job id, value = the state as msgspec JSON; a
tombstone when the job is removed), so the topic's latest record per key *is* the job.
Any process reads a job by tailing that topic into a :class:`JobIndex` from where it
last read. Compaction keeps the latest record per key, so a reader starting later sees
the same jobs.

A state record is a JSON object: ``id``, ``name``, ``data``, ``opts`` (the add options,
backoff as a dict), ``state`` (``waiting``/``delayed``/``active``/``completed``/``failed``),
``due_ms`` (delayed: not before), ``attempts_made`` (times started, including a run a
killed worker never finished), ``progress``, ``return_value``, ``failed_reason``,
``stacktrace`` (one text per failed attempt), ``logs``, ``added_ms``, ``processed_ms``,
``finished_ms``, ``stalled_count`` (runs whose worker died mid-run; absent: 0), ``gen``
(the job's incarnation: 0 when added, + 1 at each retry or promote, and when a removed
``job_id`` is added again; its queue message names it), ``ep`` (first record only: the
admin epoch its add saw; the record is also the job's queue message).

A removed job is a tombstone; one of a job added with a ``job_id`` carries its last ``gen``
in the header ``fq-gen`` (ASCII digits), so that adding the id again makes incarnation
``gen + 1`` (see :mod:`fastq.tasks.admin`). Compaction drops tombstones after a day.

Thread-safety: a JobIndex takes its own lock; Job objects may be read from any thread.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import msgspec

from ..broker._aio import to_thread
from ..errors import CorruptRecord, InvalidArgument, JobCancelled, JobFailed, Timeout, UnknownJob

if TYPE_CHECKING:
    from .taskqueue import TaskQueue

__all__ = ["Job", "JobIndex", "STATES", "encode_state", "decode_state"]

STATES = ("waiting", "delayed", "active", "completed", "failed")
FINISHED = ("completed", "failed")
GEN_HEADER = "fq-gen"              # on a removed job_id's tombstone: its last gen (ASCII digits)
GEN_MEMORY = 100_000               # removed job_ids whose last gen is remembered
REMOVED_MEMORY = 10_000            # final states of removed jobs kept for result() waiters

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


def now_ms() -> int:
    return time.time_ns() // 1_000_000          # (int(time.time() * 1000), without the float)


def encode_state(state: dict) -> bytes:
    return _enc.encode(state)


def decode_state(raw) -> Any:
    return _dec.decode(raw)


def effective_state(s: dict, now: int | None = None) -> str:
    """A delayed job whose time has come is waiting (nobody writes that transition)."""
    st = s["state"]
    if st == "delayed" and s.get("due_ms", 0) <= (now_ms() if now is None else now):
        return "waiting"
    return st


class JobIndex:
    """This process's view of one task queue's jobs: the job-state topic read up to
    ``position``, latest state per job, and the ids by state (finished ones in the order
    they finished, for retention)."""

    def __init__(self, topic):
        self.topic = topic
        self.log = topic.log(0)
        self.position = 0
        self.jobs: dict[str, dict] = {}
        self.by_state: dict[str, OrderedDict] = {s: OrderedDict() for s in STATES}
        self.removed: OrderedDict = OrderedDict()
        self.gens: OrderedDict = OrderedDict()     # removed job_ids: the gen their tombstone names
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Read what was appended since the last refresh (cheap when nothing was)."""
        lg = self.log
        if lg.end_offset <= self.position:
            return
        with self._lock:
            end = lg.end_offset
            pos = max(self.position, lg.start_offset)
            if pos >= end:
                return
            for rec in lg.read(pos, end):
                self._apply(rec)
            self.position = end

    def _apply(self, rec) -> None:
        if rec.key is None:
            return
        jid = bytes(rec.key).decode("utf-8", "replace")
        old = self.jobs.get(jid)
        if old is not None:
            self.by_state[old["state"]].pop(jid, None)
        if rec.value is None:                      # removed
            for k, v in rec.headers:
                if k == GEN_HEADER and v is not None and v.isdigit():
                    self.gens[jid] = int(v)
                    self.gens.move_to_end(jid)
                    if len(self.gens) > GEN_MEMORY:
                        self.gens.popitem(last=False)
            if old is not None:
                del self.jobs[jid]
                self.removed[jid] = old
                self.removed.move_to_end(jid)
                while len(self.removed) > REMOVED_MEMORY:
                    self.removed.popitem(last=False)
            return
        try:
            s = _dec.decode(rec.value)
        except msgspec.DecodeError as e:
            raise CorruptRecord(f"job-state topic {self.topic.name!r}: record {rec.offset} (job {jid!r}) "
                                f"is not a job state: {e}") from None
        if not isinstance(s, dict) or s.get("state") not in STATES:
            raise CorruptRecord(f"job-state topic {self.topic.name!r}: record {rec.offset} (job {jid!r}) "
                                f"has no valid state")
        self.jobs[jid] = s
        self.removed.pop(jid, None)
        self.by_state[s["state"]][jid] = rec.offset

    def get(self, jid: str, refresh: bool = True) -> dict | None:
        if refresh:
            self.refresh()
        with self._lock:
            return self.jobs.get(jid)

    def state_and_offset(self, jid: str) -> tuple[dict | None, int | None]:
        """The job's latest state and the offset of its record (None, None when there is none)."""
        self.refresh()
        with self._lock:
            s = self.jobs.get(jid)
            return (None, None) if s is None else (s, self.by_state[s["state"]].get(jid))

    def final(self, jid: str) -> dict | None:
        """The state of a job, or the last state of a removed one (while remembered)."""
        self.refresh()
        with self._lock:
            s = self.jobs.get(jid)
            return s if s is not None else self.removed.get(jid)

    def ids(self, states) -> list[str]:
        """Ids of the jobs whose effective state (a due delayed job is waiting) is in ``states``."""
        self.refresh()
        now = now_ms()
        with self._lock:
            out = []
            want = set(states)
            for st in STATES:
                for j in self.by_state[st]:
                    if effective_state(self.jobs[j], now) in want:
                        out.append(j)
            return out

    def wait(self, timeout: float | None) -> bool:
        """Block until something is appended past ``position`` (True) or ``timeout``."""
        return self.topic.wait_any({0: self.position}, timeout)


class Job:
    """A job of a :class:`fastq.TaskQueue`. Its fields read the job's latest state, as this
    process knows it (the job-state topic, refreshed on read): ``id``, ``name``, ``data``,
    ``opts``, ``state``, ``attempts_made``, ``progress``, ``return_value``,
    ``failed_reason``, ``stacktrace`` (one per failed attempt), ``logs``, ``timestamp``
    (added), ``processed_on``, ``finished_on`` (seconds since the epoch, or None).

    Inside a handler the job is the worker's: ``update_progress``, ``log``, ``cancelled``
    and ``raise_if_cancelled`` are for it. ``result(timeout)`` blocks until the job
    finishes, from any process."""

    __slots__ = ("_tq", "id", "_s", "_own", "_cancel", "_write")

    def __init__(self, tq: "TaskQueue", jid: str, state: dict | None, own: bool = False):
        self._tq = tq
        self.id = jid
        self._s = state
        self._own = own                     # the worker running it: its state is the truth
        self._cancel: threading.Event | None = None
        self._write = None

    def _state(self) -> dict:
        if not self._own:
            s = self._tq._index.final(self.id)
            if s is not None:
                self._s = s
        return self._s or {}

    def reload(self) -> "Job":
        self._state()
        return self

    name = property(lambda self: self._state().get("name"))
    data = property(lambda self: self._state().get("data"))
    opts = property(lambda self: dict(self._state().get("opts") or {}))
    attempts_made = property(lambda self: self._state().get("attempts_made", 0))
    stalled_count = property(lambda self: self._state().get("stalled_count", 0))
    progress = property(lambda self: self._state().get("progress"))
    return_value = property(lambda self: self._state().get("return_value"))
    failed_reason = property(lambda self: self._state().get("failed_reason"))
    stacktrace = property(lambda self: list(self._state().get("stacktrace") or []))
    logs = property(lambda self: list(self._state().get("logs") or []))
    timestamp = property(lambda self: _secs(self._state().get("added_ms")))
    processed_on = property(lambda self: _secs(self._state().get("processed_ms")))
    finished_on = property(lambda self: _secs(self._state().get("finished_ms")))

    @property
    def state(self) -> str:
        """waiting, delayed, active, completed or failed ("removed" once it is gone)."""
        s = self._state()
        if not self._own and self._tq._index.get(self.id, refresh=False) is None and s:
            return "removed"
        return effective_state(s) if s else "removed"

    # -- inside a handler ------------------------------------------------------------------

    def update_progress(self, progress: Any):
        """Record progress (a number or any JSON value); any process sees it in
        ``progress`` and as a ``progress`` event. In an asyncio worker it returns an
        awaitable (``await job.update_progress(50)``): the write runs off the loop."""
        self._check_own("update_progress")
        return self._write("progress", progress)

    def log(self, line: str):
        """Append a line to the job's log (``logs``); awaitable in an asyncio worker."""
        self._check_own("log")
        return self._write("log", str(line))

    @property
    def cancelled(self) -> bool:
        """True once the job ran past its ``timeout``: stop and return (or raise)."""
        return self._cancel is not None and self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise JobCancelled(f"job {self.id!r} was cancelled: it ran past its timeout of "
                               f"{self._state().get('opts', {}).get('timeout')} s")

    def _check_own(self, what: str) -> None:
        if self._write is None:
            from_ = "this job is not being run by a worker of this process"
            raise InvalidArgument(f"job {self.id!r}: {what} is for the handler running it ({from_})")

    # -- administration (TaskQueue's, for this job) ----------------------------------------

    def remove(self) -> None:
        """Remove this job (:meth:`fastq.TaskQueue.remove`; refused while it is active)."""
        self._tq.remove(self.id)

    def retry(self, state: str = "failed") -> None:
        """Run this failed (or, with ``state="completed"``, completed) job again."""
        self._tq.retry_job(self.id, state)

    def promote(self) -> None:
        """Run this delayed job now."""
        self._tq.promote(self.id)

    # -- listening -------------------------------------------------------------------------

    def on(self, event: str, callback) -> None:
        """From any process: ``callback(progress)`` on each ``"progress"`` of this job,
        ``callback(return_value)`` once it is ``"completed"``, ``callback(failed_reason)``
        once it has ``"failed"`` for good (at once, if it already has). Callbacks run in the
        task queue's listener thread (stopped by ``TaskQueue.close()``)."""
        self._tq._listeners().add(self, event, callback)

    def off(self, event: str, callback=None) -> None:
        """Stop calling ``callback`` (every callback of ``event`` for this job when None)."""
        self._tq._listeners().remove(self, event, callback)

    # -- waiting ---------------------------------------------------------------------------

    async def wait(self, timeout: float | None = None) -> Any:
        """The asyncio twin of :meth:`result`. It never blocks the loop: the task queue's
        event listener wakes it when the job completes or fails (and it looks every second
        anyway, in a thread), so waiters cost no thread each. A cancelled wait leaves
        nothing behind."""
        loop = asyncio.get_running_loop()
        woke = asyncio.Event()

        def wake(_payload) -> None:              # the listener thread
            try:
                loop.call_soon_threadsafe(woke.set)
            except RuntimeError:                 # the loop is gone
                pass

        deadline = None if timeout is None else time.monotonic() + timeout
        lst = None
        try:
            lst = await to_thread(self._tq._listeners)
            await to_thread(lst.add, self, "completed", wake)
            await to_thread(lst.add, self, "failed", wake)
            while True:
                try:
                    return await to_thread(self.result, 0)
                except Timeout:
                    pass
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    s = self._s
                    raise Timeout(f"job {self.id!r} did not finish within {timeout} s "
                                  f"(state: {effective_state(s) if s else 'unknown'})") from None
                try:
                    await asyncio.wait_for(woke.wait(), 1.0 if left is None else min(left, 1.0))
                except asyncio.TimeoutError:
                    pass
                woke.clear()
        finally:
            if lst is not None:
                lst.remove(self, "completed", wake)
                lst.remove(self, "failed", wake)

    def result(self, timeout: float | None = None) -> Any:
        """Block until the job finishes: its return value when completed; raises
        :class:`fastq.JobFailed` (with the reason) when it failed, :class:`fastq.Timeout`
        when ``timeout`` seconds pass first."""
        idx = self._tq._index
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            s = idx.final(self.id)
            if s is not None:
                self._s = s
                if s["state"] == "completed":
                    return s.get("return_value")
                if s["state"] == "failed":
                    raise JobFailed(f"job {self.id!r} ({s.get('name')}) failed after {s.get('attempts_made')} "
                                    f"attempt(s): {s.get('failed_reason')}", self.id, s.get("failed_reason"),
                                    s.get("stacktrace"))
                if idx.get(self.id, refresh=False) is None:
                    raise UnknownJob(f"job {self.id!r} was removed before it finished (it was {s['state']})")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise Timeout(f"job {self.id!r} did not finish within {timeout} s "
                              f"(state: {effective_state(s) if s else 'unknown'})")
            idx.wait(0.5 if left is None else min(left, 0.5))

    def __repr__(self) -> str:
        s = self._s or {}
        return f"<fastq.Job {self.id!r} {s.get('name')!r} {s.get('state', '?')}>"


def _secs(ms) -> float | None:
    return None if ms is None else ms / 1000.0
