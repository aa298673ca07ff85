"""``Worker(tq, handler, guarantee="exactly-once")``: what the handler publishes and the
job's completion (its result), all or nothing.

The machinery is the exactly-once queue subscriber's (:mod:`fastq.queue.exactly_once`),
run on the task queue's message queue ``<name>.tasks``: one transactional producer per
worker thread (``eos.<name>.tasks.<session>.<slot>``), the outcome topic
``__eos.<name>.tasks``, the finishing (fencing, roll forward or abort) of the
transactions of dead workers. A job's state is a record of the compacted topic
``<name>.jobs``, read uncommitted by every process, so, like a queue's ack, the
completion cannot be a record of the transaction: the transaction carries its decision
and the completion follows it.

One run (thread mode):

1. admission and ``active`` as for any run (:mod:`fastq.tasks.worker`);
2. the transaction begins; the handler is called as ``handler(job, tx)``
   (:class:`TaskExactlyOnce`): ``tx.publish`` / ``tx.publish_many`` to topics (records
   of the transaction), ``tx.enqueue`` to queues and ``tx.add`` of jobs to task queues
   (kept in the outcome record, applied after the commit);
3. the result is encoded; past the job's ``timeout`` the attempt fails here;
4. the outcome record (the queue's format, plus ``"jobs": {"<message id>": {"id": job
   id, "gen": job gen, "rv": the result as JSON text, "add": [[task queue, job name,
   data as JSON text, stored options], ...]}}``) is appended in the transaction, the
   lease is checked (``extend``: lost means the job went to another worker — abort);
5. commit (the decision); publish the ``enqueue`` outputs (dedup ids) and add the jobs
   (job ids ``eos:<name>.tasks:<message id>:<i>`` unless given: adding one again is a
   no-op while it exists or its removal is remembered); record ``completed`` with the
   result; ack.

The handler raising (or the job timing out) aborts the transaction and the attempt
fails as in any mode: retried with its backoff while attempts are left (no output of
the failed attempt is ever visible). A failure of the machinery itself (a full disk at
the commit, a fenced producer) records the job ``waiting`` and hands its message back.

**Redelivery** (``delivery_count > 1``, before admission): the message's outcome is
looked up (open transactions finished first, fencing their writers). Committed: its
queue outputs and job adds are applied again (each once), and the job — if still
unfinished, of the same ``gen`` — is recorded ``completed`` with the stored result and
the message acked, **without calling the handler** (``Worker.skipped`` counts these; a
job whose worker died after the commit is not counted as stalled). Not committed: the
run goes on as any redelivery (stalled count, attempts).

Between the commit and the ``completed`` record, read_committed readers see the
outputs while the job still reads ``active``: the completion is due, and a kill there is
finished by the redelivery (at once for a dead worker's process, whose session is
found dead). Thread mode only: the other modes are refused (:data:`MODES`).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import InvalidArgument
from ..queue.exactly_once import ExactlyOnce, ExactlyOnceRunner
from .taskqueue import validate_options

if TYPE_CHECKING:
    from .job import Job

__all__ = ["TaskExactlyOnce", "TaskRunner", "MODES"]

MODES = ("thread",)                          # the worker modes with an exactly-once guarantee
_NO_ADD_OPTIONS = ("repeat", "deduplication")


class TaskExactlyOnce(ExactlyOnce):
    """What an exactly-once task handler publishes through (its second argument): all of
    it becomes visible (to read_committed readers, in the target queues and task queues)
    if and only if the job is completed with this run's result. ``job`` is the job run;
    ``message`` its queue message; ``idempotency_key`` is stable across its deliveries.
    ``publish``, ``publish_many``, ``enqueue`` as :class:`fastq.ExactlyOnce`'s."""

    def __init__(self, runner: "TaskRunner", tx, message, job: "Job"):
        super().__init__(runner, tx, message)
        self.job = job
        self._adds: list = []

    def add(self, queue: str, name: str, data: Any = None, **options) -> str:
        """Add job ``name`` to task queue ``queue`` when (and only when) this job
        completes; returns its job id. ``options``: :meth:`fastq.TaskQueue.add`'s but
        ``repeat`` and ``deduplication``. The job id is ``options["job_id"]`` or
        ``"eos:<this queue>.tasks:<message id>:<i>"``: adding it again (a redelivery
        that finds this commit) adds nothing while the job exists or its removal is
        remembered (:data:`fastq.tasks.job.GEN_MEMORY` removed ids)."""
        bad = [k for k in _NO_ADD_OPTIONS if options.get(k) is not None]
        if bad:
            raise InvalidArgument(f"tx.add does not take {bad[0]} (use TaskQueue.add outside the transaction)")
        if not isinstance(queue, str) or not isinstance(name, str) or not name:
            raise InvalidArgument(f"tx.add(queue, name, ...): str names, got {queue!r}, {name!r}")
        jid = options.get("job_id") or f"eos:{self._sub.queue.name}:{self.message.id}:{len(self._adds)}"
        stored = validate_options({**options, "job_id": jid})
        try:
            raw = msgspec.json.encode(data).decode()
        except (TypeError, msgspec.EncodeError) as e:
            raise InvalidArgument(f"tx.add: job data must be JSON-encodable: {e}") from None
        self._adds.append([queue, name, raw, stored])
        return jid


class TaskRunner(ExactlyOnceRunner):
    """The exactly-once part of a thread-mode :class:`fastq.Worker`: the queue
    subscriber's machinery on the task queue's message queue, plus the job fields of the
    outcome record and the task queues ``tx.add`` writes to."""

    def __init__(self, tq):
        super().__init__(tq.queue, codec="json")     # the task queue's own queue is raw
        self.tq = tq
        self._tqs: dict[str, Any] = {}
        self._tq_lock = threading.Lock()

    def task_context(self, tx, m, job: "Job") -> TaskExactlyOnce:
        return TaskExactlyOnce(self, tx, m, job)

    def job_outcome(self, ctx: TaskExactlyOnce, tp, s: dict, raw: bytes) -> None:
        """Append the outcome record of ``ctx``'s job (state ``s``, result ``raw``)."""
        j = {"id": s["id"], "gen": s.get("gen", 0), "rv": bytes(raw).decode()}
        if ctx._adds:
            j["add"] = ctx._adds
        self.outcome([ctx], tp, {"jobs": {str(ctx.message.id): j}})

    def apply_job(self, m, out: list, adds: list) -> None:
        """Publish an outcome's queue outputs and add its jobs (each once)."""
        self.apply(m, out)
        for qname, name, raw, stored in adds:
            t = self._task_queue(qname)
            jid = stored["job_id"]
            if t._index.get(jid) is None and jid not in t._index.gens:
                t.add(name, msgspec.json.decode(raw), **stored)

    def _task_queue(self, name: str):
        with self._tq_lock:
            t = self._tqs.get(name)
            if t is None or t.closed:
                t = self._tqs[name] = self.tq if name == self.tq.name else self.broker.tasks(name)
            return t

    def close(self) -> None:
        with self._tq_lock:
            for t in self._tqs.values():
                if t is not self.tq:
                    t.close()
            self._tqs.clear()
