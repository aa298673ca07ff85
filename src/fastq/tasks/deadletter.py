"""Dead letters of a task queue: ``TaskQueue(name, broker, dead_letter=...)`` (docs/TASKS.md,
"Dead letters").

A job that ends ``failed`` — attempts used up, a permanent failure (no handler, a result
the codec cannot store), or stalled past ``max_stalled_count`` — is also sent to the dead
letters, by the worker that recorded the failure, after the record and before it settles the
job's queue message:

- ``dead_letter="name"``: a message of the message queue ``name`` (:meth:`Broker.queue`),
  published through the queue's own dead-lettering (:meth:`fastq.Queue._publish_dead`): the
  same ``dlq-*`` headers as a message queue's dead letters (docs/QUEUES.md), the job id as
  the key, and as body the msgspec JSON document :func:`letter` — ``queue`` (the task
  queue's name), ``id``, ``name``, ``data``, ``opts``, ``attempts_made``, ``failed_reason``,
  ``stacktrace`` (one entry per failed attempt), ``added_ms``, ``finished_ms``, ``gen``;
- ``dead_letter=other_task_queue`` (a :class:`fastq.TaskQueue`): a job of that task queue,
  with the failed job's name and the same document as its data.

Exactly once: the letter's identity is the failure itself — ``(task queue, gen, job id,
finished_ms)`` of the recorded ``failed`` state, which a crash does not change. A worker
killed between recording the failure and settling the message leaves the message to be
redelivered; the worker that receives it finds the job failed (:meth:`AdminMixin._begin`
hands it the state) and sends the letter again before acking. The second send stores
nothing: the queue's dedup id (``dedup_window``, default 300 s, covers the redelivery,
which dead-consumer detection makes at once) or, for a task queue, the job id of the
letter's job (an add with an existing ``job_id`` adds nothing).

Every process that runs workers of the task queue must open it with the same
``dead_letter``: the option is a property of the handle, not stored with the queue.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import msgspec

from ..broker.config import validate_name
from ..errors import InvalidArgument

if TYPE_CHECKING:
    from ..broker.broker import Broker

__all__ = ["DeadLetters", "letter"]

_enc = msgspec.json.Encoder()
MAX_LETTER_ID = 512                         # fastq.tasks.taskqueue.MAX_JOB_ID


def letter(tq_name: str, s: dict) -> dict:
    """The dead letter of failed job state ``s`` of task queue ``tq_name``."""
    return {"queue": tq_name, "id": s["id"], "name": s["name"], "data": s.get("data"), "opts": s.get("opts"),
            "attempts_made": s.get("attempts_made", 0), "failed_reason": s.get("failed_reason"),
            "stacktrace": list(s.get("stacktrace") or []), "added_ms": s.get("added_ms"),
            "finished_ms": s.get("finished_ms"), "gen": s.get("gen", 0)}


def letter_id(tq_name: str, s: dict) -> str:
    """The identity of one failure of one job incarnation (stable across redeliveries)."""
    lid = f"dlq:{tq_name}:{s.get('gen', 0)}:{s.get('finished_ms')}:{s['id']}"
    if len(lid) > MAX_LETTER_ID:                # a long job id: a task queue's job_id has a limit
        lid = "dlq:" + hashlib.sha256(lid.encode()).hexdigest()
    return lid


class DeadLetters:
    """Where a task queue's failed jobs go (module docstring). Thread-safe: the broker's
    queue handle and :meth:`TaskQueue.add` are."""

    def __init__(self, tq_name: str, own_queue: str, broker: "Broker", dest: Any):
        self.tq_name = tq_name
        self.broker = broker
        if hasattr(dest, "add_bulk") and hasattr(dest, "queue"):   # a TaskQueue (taskqueue imports this module)
            if dest.name == tq_name:
                raise InvalidArgument(f"dead_letter of task queue {tq_name!r} cannot be itself")
            self.target: Any = dest
            self.queue_name = None
        else:
            if not isinstance(dest, str):
                raise InvalidArgument(f"dead_letter must be a queue name (str) or a fastq.TaskQueue, got {dest!r}")
            validate_name("dead_letter queue", dest)
            if dest == own_queue:
                raise InvalidArgument(f"dead_letter {dest!r} is the task queue's own message queue")
            self.target = None
            self.queue_name = dest

    def __repr__(self) -> str:
        return f"<dead letters of {self.tq_name!r} -> {self.queue_name or self.target!r}>"

    def send(self, s: dict, m) -> None:
        """Send failed job state ``s`` (recorded), whose queue message is ``m`` (unsettled)."""
        doc = letter(self.tq_name, s)
        lid = letter_id(self.tq_name, s)
        if self.target is not None:
            self.target.add(s["name"], doc, job_id=lid)
            return
        dlq = self.broker.queue(self.queue_name)
        dlq._publish_dead(m, _enc.encode(doc), s["id"].encode(), dict(m.headers), s.get("failed_reason") or "failed", lid)
