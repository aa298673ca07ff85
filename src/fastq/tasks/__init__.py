"""Task queues in the style of BullMQ (issue 16): named jobs with results, delay, attempts
and backoff, priority, progress, timeouts, retention and repeat (job schedulers, cron or
``every``: :mod:`fastq.tasks.scheduler`), run by workers — built on
:mod:`fastq.queue` (leases, delay, priority, dedup, dead-consumer detection) and a
compacted topic of job states. See docs/TASKS.md.
"""
from __future__ import annotations

from .backoff import Backoff
from .events import EVENTS, QueueEvents, TaskEvent
from .job import STATES, Job
from .taskqueue import JOB_OPTIONS, TaskQueue
from .worker import MODES, Worker

__all__ = ["TaskQueue", "Job", "Worker", "Backoff", "QueueEvents", "TaskEvent", "STATES", "JOB_OPTIONS",
           "MODES", "EVENTS"]
