"""asyncio face of a task queue: ``tq = await abroker.tasks("images")`` (or
``fastq.AsyncTaskQueue(fastq.TaskQueue("images", broker))``) gives an
:class:`AsyncTaskQueue` whose calls are coroutines: ``await tq.add(...)``, ``add_bulk``,
``get_job``, ``get_jobs``, ``counts`` and the getters, and the admin methods (pause /
resume, drain, clean, retry_failed, retry_job, promote, remove, obliterate, repair)
and job schedulers.

Inline or thread (the rule of :mod:`fastq.broker.aio`): every one of these may wait for
another process — the admin lock (``flock``), the job-state topic read to its end, a
queue append under ``"group"``/``"always"`` durability (fsync) — so every call runs in a
worker thread of the loop's default executor; none runs on the event loop. The jobs it
returns are ordinary :class:`fastq.Job` objects (``await job.wait()`` is asyncio already).

Cancellation: a cancelled await consumes nothing and loses nothing acknowledged. A call
whose thread had not started when its await was cancelled never runs; one that had started
cannot be stopped and goes on to its end: a cancelled ``add`` then adds the whole job (its
state and its message: it runs exactly once) — as a sync ``add`` whose return was never
seen; a cancelled admin operation finishes (it holds the admin lock until its done record,
and removes whole jobs only). Nothing is read or taken on the loop, so no job is ever
half-added or half-taken by a cancelled await.
Workers are :class:`fastq.Worker` (``mode="asyncio"`` runs coroutine
handlers on a loop): :meth:`AsyncTaskQueue.worker` builds one on the sync queue.

Thread-safety: as :class:`fastq.TaskQueue`'s (one AsyncTaskQueue may be shared by tasks
of one loop, or loops of several threads).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from ..broker._aio import to_thread
from .admin import COUNT_STATES
from .worker import Worker

if TYPE_CHECKING:
    from .events import QueueEvents
    from .job import Job
    from .taskqueue import TaskQueue

__all__ = ["AsyncTaskQueue"]


class AsyncTaskQueue:
    """Async face of :class:`fastq.TaskQueue` (``async with`` closes it). ``sync``: the
    TaskQueue underneath, for what is not a coroutine (``events()``, a ``Worker``)."""

    def __init__(self, tq: "TaskQueue"):
        self.sync = tq
        self.name = tq.name

    @property
    def closed(self) -> bool:
        return self.sync.closed

    # -- adding ------------------------------------------------------------------------------

    async def add(self, name: str, data: Any = None, **options) -> "Job":
        """As :meth:`fastq.TaskQueue.add` (same options, same errors), in a thread."""
        return await to_thread(self.sync.add, name, data, **options)

    async def add_bulk(self, jobs: Iterable) -> list["Job"]:
        """As :meth:`fastq.TaskQueue.add_bulk`; the items are listed on the loop first (an
        iterator is never consumed from another thread)."""
        return await to_thread(self.sync.add_bulk, list(jobs))

    # -- reading -----------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> "Job":
        return await to_thread(self.sync.get_job, job_id)

    async def get_jobs(self, states: Iterable[str] | str = COUNT_STATES, start: int = 0, end: int = -1,
                       asc: bool = False) -> list["Job"]:
        if not isinstance(states, str):
            states = list(states)
        return await to_thread(self.sync.get_jobs, states, start, end, asc)

    async def signals(self):
        """TaskQueue.signals() off the event loop."""
        return await to_thread(self.sync.signals)

    async def set_limits(self, **limits):
        return await to_thread(self.sync.set_limits, **limits)

    async def counts(self) -> dict[str, int]:
        return await to_thread(self.sync.counts)

    async def get_job_counts(self, *states: str) -> dict[str, int]:
        return await to_thread(self.sync.get_job_counts, *states)

    async def get_job_count_by_types(self, *states: str) -> int:
        return await to_thread(self.sync.get_job_count_by_types, *states)

    async def count(self) -> int:
        return await to_thread(self.sync.count)

    async def get_waiting_count(self) -> int:
        return await to_thread(self.sync.get_waiting_count)

    async def get_active_count(self) -> int:
        return await to_thread(self.sync.get_active_count)

    async def get_delayed_count(self) -> int:
        return await to_thread(self.sync.get_delayed_count)

    async def get_prioritized_count(self) -> int:
        return await to_thread(self.sync.get_prioritized_count)

    async def get_completed_count(self) -> int:
        return await to_thread(self.sync.get_completed_count)

    async def get_failed_count(self) -> int:
        return await to_thread(self.sync.get_failed_count)

    async def get_paused_count(self) -> int:
        return await to_thread(self.sync.get_paused_count)

    # -- administration ------------------------------------------------------------------------

    async def pause(self) -> None:
        await to_thread(self.sync.pause)

    async def resume(self) -> None:
        await to_thread(self.sync.resume)

    async def is_paused(self) -> bool:
        return await to_thread(self.sync.is_paused)

    async def remove(self, job_id: str) -> None:
        await to_thread(self.sync.remove, job_id)

    async def drain(self, delayed: bool = False) -> int:
        return await to_thread(self.sync.drain, delayed)

    async def clean(self, grace: float, limit: int | None = 0, state: str = "completed") -> list[str]:
        return await to_thread(self.sync.clean, grace, limit, state)

    async def retry_failed(self, count: int | None = None) -> list[str]:
        return await to_thread(self.sync.retry_failed, count)

    async def retry_job(self, job_id: str, state: str = "failed") -> None:
        await to_thread(self.sync.retry_job, job_id, state)

    async def promote(self, job_id: str | None = None, *, count: int | None = None) -> list[str]:
        return await to_thread(self.sync.promote, job_id, count=count)

    async def obliterate(self, *, force: bool = False) -> int:
        return await to_thread(self.sync.obliterate, force=force)

    async def repair(self, grace: float | None = None) -> list[str]:
        """As :meth:`fastq.TaskQueue.repair`: re-publish jobs whose ``add`` died between
        their state and their message."""
        return await to_thread(self.sync.repair, grace)

    async def get_deduplication_job_id(self, dedup_id: str) -> str | None:
        return await to_thread(self.sync.get_deduplication_job_id, dedup_id)

    async def remove_deduplication_key(self, dedup_id: str) -> bool:
        return await to_thread(self.sync.remove_deduplication_key, dedup_id)

    # -- job schedulers --------------------------------------------------------------------------

    async def upsert_job_scheduler(self, scheduler_id: str, repeat: dict, *, name: str | None = None,
                                   data: Any = None, opts: dict | None = None) -> "Job | None":
        return await to_thread(self.sync.upsert_job_scheduler, scheduler_id, repeat, name=name, data=data,
                               opts=opts)

    async def get_job_scheduler(self, scheduler_id: str) -> dict | None:
        return await to_thread(self.sync.get_job_scheduler, scheduler_id)

    async def get_job_schedulers(self) -> list[dict]:
        return await to_thread(self.sync.get_job_schedulers)

    async def remove_job_scheduler(self, scheduler_id: str) -> bool:
        return await to_thread(self.sync.remove_job_scheduler, scheduler_id)

    # -- events and workers -----------------------------------------------------------------------

    async def events(self, *, since=None, offset: int | None = None) -> "QueueEvents":
        """This queue's :class:`fastq.QueueEvents`, opened in a thread (``async for`` and
        ``apoll`` on it wait in threads too)."""
        return await to_thread(self.sync.events, since=since, offset=offset)

    def worker(self, handler, **options) -> "Worker":
        """A :class:`fastq.Worker` on this queue (``mode="asyncio"`` for coroutine handlers;
        ``await worker.run()`` runs it on the current loop, ``await worker.aclose()`` stops it)."""
        return Worker(self.sync, handler, **options)

    async def close(self) -> None:
        await to_thread(self.sync.close)

    async def __aenter__(self) -> "AsyncTaskQueue":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<fastq.AsyncTaskQueue {self.name!r}>"
