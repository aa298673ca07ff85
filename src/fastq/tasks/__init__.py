"""Task queues in the style of BullMQ (issue 16): named jobs with results, delay, attempts
and backoff, priority, progress, timeouts, retention and repeat (job schedulers, cron or
``every``: :mod:`fastq.tasks.scheduler`), run by workers — built on
:mod:`fastq.queue` (leases, delay, priority, dedup, dead-consumer detection) and a
compacted topic of job states, with a control topic for pause and administration
(:mod:`fastq.tasks.control`, :mod:`fastq.tasks.admin`). See docs/TASKS.md.
"""
from __future__ import annotations

from ..broker import broker as _broker_mod
from .admin import CLEAN_STATES, COUNT_STATES
from .aio import AsyncTaskQueue
from .backoff import Backoff
from .events import EVENTS, QueueEvents, TaskEvent
from .exactly_once import TaskExactlyOnce
from .job import STATES, Job
from .taskqueue import JOB_OPTIONS, TaskQueue
from .worker import MODES, Worker

__all__ = ["TaskQueue", "AsyncTaskQueue", "Job", "Worker", "Backoff", "QueueEvents", "TaskEvent", "STATES", "COUNT_STATES",
           "CLEAN_STATES", "JOB_OPTIONS", "MODES", "EVENTS", "TaskExactlyOnce"]


class _TasksKind:
    """What ``Broker.tasks`` / ``AsyncBroker.tasks`` call (fastq.broker.broker.register_kind)."""

    @staticmethod
    def open(broker, name: str, options: dict) -> TaskQueue:
        return TaskQueue(name, broker, **options)

    @staticmethod
    def asyncio(tq: TaskQueue) -> AsyncTaskQueue:
        return AsyncTaskQueue(tq)


_broker_mod.register_kind("tasks", _TasksKind())
