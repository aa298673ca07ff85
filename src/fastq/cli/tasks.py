"""``fastq tasks add | counts | list | show | pause | resume | retry-failed | promote | repair | clean |
drain | remove | obliterate``: a broker's task queues (docs/TASKS.md) — jobs by state, one job in
full, and the operator's levers, each the :class:`fastq.TaskQueue` method of the same name.
Reading a task queue opens its queue and topics, so these commands open the broker
writable; only the levers change anything, and the ones that remove jobs ask first unless
given ``--yes``."""
from __future__ import annotations

import json

import click

from ..errors import InvalidArgument, UnknownQueue
from ..tasks.admin import CLEAN_STATES, COUNT_STATES
from ..tasks.taskqueue import QUEUE_SUFFIX, TOPIC_SUFFIX, TaskQueue
from ._root import cli
from ._common import broker_option, console, echo_json, fmt_num, fmt_time, json_option, open_broker, table

STATE_CHOICE = click.Choice([*COUNT_STATES, "wait"])


@cli.group()
def tasks() -> None:
    """Add, count, list and show the jobs of task queues; pause, resume, retry, promote,
    clean, drain, remove and obliterate."""


def _open(b, name: str):
    """An existing task queue (its queue and job-state topic exist): never creates one."""
    if name + QUEUE_SUFFIX not in b.queues() or name + TOPIC_SUFFIX not in b.topics():
        raise UnknownQueue(f"no task queue {name!r} in broker {b.path}")
    return TaskQueue(name, b)


def _ms(seconds) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def _job_doc(job, full: bool = True) -> dict:
    doc = {"id": job.id, "name": job.name, "state": job.state, "attempts_made": job.attempts_made,
           "progress": job.progress, "added": fmt_time(_ms(job.timestamp)),
           "processed": fmt_time(_ms(job.processed_on)), "finished": fmt_time(_ms(job.finished_on)),
           "failed_reason": job.failed_reason}
    if full:
        doc.update(data=job.data, opts=job.opts, return_value=job.return_value, stacktrace=job.stacktrace,
                   logs=job.logs)
    return doc


@tasks.command()
@click.argument("queue")
@click.argument("name")
@click.argument("data", required=False, default="null")
@click.option("--delay", type=click.FloatRange(0), help="Seconds before it may run.")
@click.option("--attempts", type=click.IntRange(1), default=1, show_default=True)
@click.option("--priority", type=click.IntRange(0, 9), default=0, show_default=True, help="Higher runs first.")
@click.option("--job-id", help="While a job with this id exists, adding it again does nothing.")
@broker_option
def add(queue: str, name: str, data: str, delay: float | None, attempts: int, priority: int, job_id: str | None,
        broker_path: str) -> None:
    """Add a job NAME with DATA (JSON) to QUEUE (made if missing); prints its id."""
    try:
        value = json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"DATA must be JSON, got {data!r}: {e}") from None
    with open_broker(broker_path, readonly=False) as b:
        job = TaskQueue(queue, b).add(name, value, delay=delay, attempts=attempts, priority=priority,
                                      job_id=job_id)
    click.echo(job.id)


@tasks.command()
@click.argument("queue")
@broker_option
@json_option
def counts(queue: str, broker_path: str, as_json: bool) -> None:
    """QUEUE's jobs by state: waiting, active, delayed, prioritized, completed, failed, paused."""
    with open_broker(broker_path, readonly=False) as b:
        tq = _open(b, queue)
        doc = {"queue": queue, "is_paused": tq.is_paused(), "counts": tq.counts()}
    if as_json:
        echo_json(doc)
        return
    tb = table(["state", "jobs>"])
    for s in COUNT_STATES:
        tb.add_row(s, fmt_num(doc["counts"][s]))
    console().print(tb)
    if doc["is_paused"]:
        click.echo(f"{queue} is paused: workers take no new job")


@tasks.command("list")
@click.argument("queue")
@click.option("-s", "--state", "states", type=STATE_CHOICE, multiple=True,
              help="Jobs in this state (repeatable)  [default: all].")
@click.option("--start", type=click.IntRange(0), default=0, show_default=True, help="First position.")
@click.option("--end", type=click.IntRange(-1), default=49, show_default=True,
              help="Last position, inclusive (-1: to the last).")
@click.option("--asc", is_flag=True, help="Oldest change first  [default: newest first].")
@broker_option
@json_option
def list_(queue: str, states: tuple, start: int, end: int, asc: bool, broker_path: str, as_json: bool) -> None:
    """List QUEUE's jobs, newest change first, positions --start..--end."""
    with open_broker(broker_path, readonly=False) as b:
        tq = _open(b, queue)
        rows = [_job_doc(j, full=as_json) for j in tq.get_jobs(states or COUNT_STATES, start, end, asc)]
    if as_json:
        echo_json(rows)
        return
    tb = table(["id", "name", "state", "attempts>", "added", "finished", "reason"])
    tb.columns[0].no_wrap = True                  # ids whole: they are what the other commands take
    tb.columns[0].min_width = max((len(r["id"]) for r in rows), default=2)
    tb.columns[-1].overflow = "ellipsis"
    for r in rows:
        tb.add_row(r["id"], r["name"], r["state"], fmt_num(r["attempts_made"]), r["added"], r["finished"],
                   (r["failed_reason"] or "")[:60])
    console().print(tb)


@tasks.command()
@click.argument("queue")
@click.argument("job_id")
@broker_option
@json_option
def show(queue: str, job_id: str, broker_path: str, as_json: bool) -> None:
    """Everything about one job of QUEUE: data, options, result, reason, stack traces, logs."""
    with open_broker(broker_path, readonly=False) as b:
        doc = _job_doc(_open(b, queue).get_job(job_id))
    if as_json:
        echo_json(doc)
        return
    for k, v in doc.items():
        if k in ("stacktrace", "logs"):
            for i, line in enumerate(v):
                click.echo(f"{k}[{i}]: {line}")
        else:
            click.echo(f"{k}: {v}")


@tasks.command()
@click.argument("queue")
@broker_option
def pause(queue: str, broker_path: str) -> None:
    """Pause QUEUE: workers in every process take no new job (running ones finish)."""
    with open_broker(broker_path, readonly=False) as b:
        _open(b, queue).pause()
    click.echo(f"paused: {queue}")


@tasks.command()
@click.argument("queue")
@broker_option
def resume(queue: str, broker_path: str) -> None:
    """Resume QUEUE after a pause."""
    with open_broker(broker_path, readonly=False) as b:
        _open(b, queue).resume()
    click.echo(f"resumed: {queue}")


def _done(what: str, queue: str, ids: list, as_json: bool) -> None:
    if as_json:
        echo_json(ids)
    else:
        click.echo(f"{what}: {queue}: {len(ids):,} job(s)")


@tasks.command("retry-failed")
@click.argument("queue")
@click.option("-n", "--count", type=click.IntRange(1), default=None, help="At most this many  [default: all].")
@broker_option
@json_option
def retry_failed(queue: str, count: int | None, broker_path: str, as_json: bool) -> None:
    """Run QUEUE's failed jobs again (oldest failure first), their attempts anew."""
    with open_broker(broker_path, readonly=False) as b:
        ids = _open(b, queue).retry_failed(count)
    _done("retried", queue, ids, as_json)


@tasks.command()
@click.argument("queue")
@click.argument("job_id", required=False)
@click.option("-n", "--count", type=click.IntRange(1), default=None, help="At most this many  [default: all].")
@broker_option
@json_option
def promote(queue: str, job_id: str | None, count: int | None, broker_path: str, as_json: bool) -> None:
    """Run QUEUE's delayed jobs now (or only JOB_ID)."""
    with open_broker(broker_path, readonly=False) as b:
        ids = _open(b, queue).promote(job_id, count=count)
    _done("promoted", queue, ids, as_json)


@tasks.command()
@click.argument("queue")
@click.option("--grace", type=click.FloatRange(0), default=None,
              help="Only jobs waiting longer than this (seconds)  [default: 60].")
@broker_option
@json_option
def repair(queue: str, grace: float | None, broker_path: str, as_json: bool) -> None:
    """Re-publish QUEUE's jobs whose add died between their state and their message."""
    with open_broker(broker_path, readonly=False) as b:
        ids = _open(b, queue).repair(grace)
    _done("repaired", queue, ids, as_json)


def _confirm(yes: bool, what: str) -> None:
    if not yes:
        click.confirm(what, abort=True)


@tasks.command()
@click.argument("queue")
@click.option("--grace", type=click.FloatRange(0), required=True, help="Only jobs older than this (seconds).")
@click.option("--limit", type=click.IntRange(0), default=0, show_default=True, help="At most this many (0: all).")
@click.option("-s", "--state", type=click.Choice([*CLEAN_STATES, "wait"]), default="completed", show_default=True)
@click.option("--yes", is_flag=True, help="Do not ask.")
@broker_option
@json_option
def clean(queue: str, grace: float, limit: int, state: str, yes: bool, broker_path: str, as_json: bool) -> None:
    """Remove QUEUE's jobs in --state older than --grace seconds (finished: since they
    finished; others: since they were added)."""
    _confirm(yes, f"remove {state} jobs of {queue!r} older than {grace} s?")
    with open_broker(broker_path, readonly=False) as b:
        ids = _open(b, queue).clean(grace, limit, state)
    _done("cleaned", queue, ids, as_json)


@tasks.command()
@click.argument("queue")
@click.option("--delayed", is_flag=True, help="Delayed jobs too.")
@click.option("--yes", is_flag=True, help="Do not ask.")
@broker_option
def drain(queue: str, delayed: bool, yes: bool, broker_path: str) -> None:
    """Remove QUEUE's waiting jobs (and --delayed ones); active and finished jobs stay."""
    _confirm(yes, f"remove every waiting{' and delayed' if delayed else ''} job of {queue!r}?")
    with open_broker(broker_path, readonly=False) as b:
        n = _open(b, queue).drain(delayed)
    click.echo(f"drained: {queue}: {n:,} job(s)")


@tasks.command()
@click.argument("queue")
@click.argument("job_ids", nargs=-1, required=True)
@broker_option
def remove(queue: str, job_ids: tuple, broker_path: str) -> None:
    """Remove jobs JOB_IDS of QUEUE (refused for an active job: it is running)."""
    with open_broker(broker_path, readonly=False) as b:
        tq = _open(b, queue)
        for j in job_ids:
            tq.remove(j)
            click.echo(f"removed: {queue}: {j}")


@tasks.command()
@click.argument("queue")
@click.option("--force", is_flag=True, help="Even while jobs are active (their results are dropped).")
@click.option("--yes", is_flag=True, help="Do not ask.")
@broker_option
def obliterate(queue: str, force: bool, yes: bool, broker_path: str) -> None:
    """Remove every job and message of QUEUE (refused while jobs are active, unless --force)."""
    _confirm(yes, f"remove every job of {queue!r}, in every state?")
    with open_broker(broker_path, readonly=False) as b:
        n = _open(b, queue).obliterate(force=force)
    click.echo(f"obliterated: {queue}: {n:,} job(s)")
