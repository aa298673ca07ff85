"""``fastq queues create | list | describe | peek | purge | redrive | delete``: a broker's message
queues (docs/QUEUES.md) — depth, configuration, the next messages, and the operator's
levers. A queue's depth is read under its state lock, so unlike ``topics list`` these
commands open the broker writable; only purge, redrive and delete change messages."""
from __future__ import annotations

import click

from ..errors import InvalidArgument, UnknownQueue
from ._root import cli
from ._common import broker_option, console, echo_json, fmt_num, json_option, open_broker, table


@cli.group()
def queues() -> None:
    """Create, list, describe, peek into, purge, redrive and delete message queues."""


def _open(b, name: str):
    """An existing queue (raw codec: the CLI shows bytes, whatever the producers' codec)."""
    if name not in b.queues():
        raise UnknownQueue(f"no queue {name!r} in broker {b.path}")
    return b.queue(name, codec="raw", create=False)


def _depth_doc(q) -> dict:
    d = q.depth()
    return {"queue": q.name, "ready": d.ready, "delayed": d.delayed, "in_flight": d.in_flight,
            "dead": d.dead, "oldest_age_s": round(d.oldest_age, 3)}


@queues.command()
@click.argument("queue")
@click.option("--visibility-timeout", type=click.FloatRange(0.001), help="Lease seconds [default: 30].")
@click.option("--max-deliveries", type=click.IntRange(1), help="Deliveries before dead-lettering.")
@click.option("--dead-letter", help="Queue that dead messages go to.")
@click.option("-p", "--partitions", type=click.IntRange(1, 256), help="Partitions [default: 1].")
@click.option("--ordered", is_flag=True, default=None, help="One message per partition in flight, in order.")
@click.option("--durability", type=click.Choice(["os", "group", "always"]), help="[default: the broker's].")
@click.option("--if-not-exists", is_flag=True, help="Succeed when the queue already exists.")
@broker_option
def create(queue: str, broker_path: str, if_not_exists: bool, **options) -> None:
    """Create QUEUE (the directory becomes a broker if it is missing or empty)."""
    with open_broker(broker_path, readonly=False, create=True) as b:
        if queue in b.queues():
            if if_not_exists:
                click.echo(f"exists: {queue}")
                return
            raise InvalidArgument(f"queue {queue!r} already exists (--if-not-exists to accept that)")
        b.queue(queue, **{k: v for k, v in options.items() if v is not None})
    click.echo(f"created: {queue}")


@queues.command("list")
@broker_option
@json_option
def list_(broker_path: str, as_json: bool) -> None:
    """List the queues with their depth: ready, delayed, in flight, dead, oldest age."""
    with open_broker(broker_path, readonly=False) as b:
        rows = [_depth_doc(_open(b, n)) for n in b.queues()]
    if as_json:
        echo_json(rows)
        return
    tb = table(["queue", "ready>", "delayed>", "in flight>", "dead>", "oldest (s)>"])
    for r in rows:
        tb.add_row(r["queue"], fmt_num(r["ready"]), fmt_num(r["delayed"]), fmt_num(r["in_flight"]),
                   fmt_num(r["dead"]), fmt_num(r["oldest_age_s"], 3))
    console().print(tb)


@queues.command()
@click.argument("queue")
@broker_option
@json_option
def describe(queue: str, broker_path: str, as_json: bool) -> None:
    """QUEUE's configuration and depth."""
    with open_broker(broker_path, readonly=False) as b:
        q = _open(b, queue)
        doc = _depth_doc(q)
        doc["config"] = {k: v for k, v in q.config.items() if k != "version"}
    if as_json:
        echo_json(doc)
        return
    for k in ("queue", "ready", "delayed", "in_flight", "dead", "oldest_age_s"):
        click.echo(f"{k}: {doc[k]}")
    for k, v in doc["config"].items():
        click.echo(f"config.{k}: {v}")


@queues.command()
@click.argument("queue")
@click.option("-n", "--count", type=click.IntRange(1, 10000), default=10, show_default=True,
              help="Messages to show.")
@broker_option
@json_option
def peek(queue: str, count: int, broker_path: str, as_json: bool) -> None:
    """Show QUEUE's next ready messages without taking them."""
    with open_broker(broker_path, readonly=False) as b:
        msgs = _open(b, queue).peek(count)
        rows = [{"id": m.id, "key": None if m.key is None else m.key.decode("utf-8", "replace"),
                 "deliveries": m.delivery_count, "published_at": m.published_at,
                 "headers": {k: v.decode("utf-8", "replace") for k, v in m.headers.items()},
                 "body": m.body.decode("utf-8", "replace")} for m in msgs]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r['id']}\t{r['deliveries']}\t{r['key'] or ''}\t{r['body']}")


@queues.command()
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask.")
@broker_option
def purge(queue: str, yes: bool, broker_path: str) -> None:
    """Drop every ready and delayed message of QUEUE (in-flight ones stay)."""
    if not yes:
        click.confirm(f"purge every ready and delayed message of {queue!r}?", abort=True)
    with open_broker(broker_path, readonly=False) as b:
        n = _open(b, queue).purge()
    click.echo(f"purged: {queue}: {n:,} message(s)")


@queues.command()
@click.argument("queue")
@click.option("--to", "to", default=None, help="Destination queue [default: each message's source queue].")
@click.option("-n", "--count", type=click.IntRange(1), default=None, help="At most this many.")
@broker_option
def redrive(queue: str, to: str | None, count: int | None, broker_path: str) -> None:
    """Move dead letters from QUEUE back to their source queue (or --to)."""
    with open_broker(broker_path, readonly=False) as b:
        q = _open(b, queue)
        dest = _open(b, to) if to is not None else None
        n = q.redrive(dest, count)
    click.echo(f"redriven: {queue}: {n:,} message(s)")


@queues.command()
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask.")
@broker_option
def delete(queue: str, yes: bool, broker_path: str) -> None:
    """Delete QUEUE and its messages. Processes still using it get errors."""
    if not yes:
        click.confirm(f"delete queue {queue!r} and its messages?", abort=True)
    with open_broker(broker_path, readonly=False) as b:
        b.delete_queue(queue)
    click.echo(f"deleted: {queue}")
