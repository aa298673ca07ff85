"""``fastq topics list | describe | create | alter | delete``: a broker's topics, their
partitions, offsets, sizes, retention and compaction (as ``kafka-topics`` shows them).
list and describe open the broker read-only."""
from __future__ import annotations

import os

import click

from ..errors import InvalidArgument, ReadOnly
from ._root import cli
from ._common import broker_option, console, echo_json, fmt_num, json_option, open_broker, table, topic_config


@cli.group()
def topics() -> None:
    """List, describe, create, alter and delete topics."""


def _partition_facts(t, p: int) -> dict:
    """Offsets and size of partition p; a partition never written has no directory yet."""
    if not os.path.isdir(os.path.join(t.dir, str(p))):
        return {"partition": p, "start_offset": 0, "end_offset": 0, "records": 0, "segments": 0, "bytes": 0}
    lg = t.log(p)
    segs = lg.segments()
    start, end = lg.start_offset, lg.end_offset
    return {"partition": p, "start_offset": start, "end_offset": end, "records": end - start,
            "segments": len(segs), "bytes": sum(s["bytes"] for s in segs)}


def describe_topic(b, name: str) -> dict:
    """A topic's configuration and, for a log topic, every partition's offsets and size."""
    cfg = topic_config(b, name)
    doc = {"topic": name, "config": {k: v for k, v in cfg.items() if k not in ("version",)}}
    if cfg.get("storage", "log") == "memory":
        doc["partitions"] = []           # a shared ring: no offsets or segments to show
        return doc
    try:
        t = b.topic(name, create=False)
    except ReadOnly:                     # raced with a change of storage: show the config
        doc["partitions"] = []
        return doc
    doc["partitions"] = [_partition_facts(t, p) for p in range(t.partitions)]
    return doc


def _retention(cfg: dict) -> str:
    parts = []
    if cfg.get("retention_ms") is not None:
        parts.append(f"{cfg['retention_ms']:,} ms")
    if cfg.get("retention_bytes") is not None:
        parts.append(f"{cfg['retention_bytes']:,} B")
    return ", ".join(parts) or "forever"


@topics.command("list")
@broker_option
@json_option
def list_(broker_path: str, as_json: bool) -> None:
    """List the topics with partitions, records, size on disk, retention and compaction."""
    with open_broker(broker_path) as b:
        docs = [describe_topic(b, n) for n in b.topics()]
    rows = []
    for d in docs:
        cfg, parts = d["config"], d["partitions"]
        rows.append({"topic": d["topic"], "partitions": cfg["partitions"], "storage": cfg.get("storage", "log"),
                     "records": sum(p["records"] for p in parts), "bytes": sum(p["bytes"] for p in parts),
                     "retention_ms": cfg.get("retention_ms"), "retention_bytes": cfg.get("retention_bytes"),
                     "compact": cfg.get("compact", False)})
    if as_json:
        echo_json(rows)
        return
    tb = table(["topic", "partitions>", "storage", "records>", "bytes>", "retention", "compact"])
    for r, d in zip(rows, docs):
        tb.add_row(r["topic"], str(r["partitions"]), r["storage"], fmt_num(r["records"]), fmt_num(r["bytes"]),
                   _retention(d["config"]), "yes" if r["compact"] else "no")
    console().print(tb)


@topics.command()
@click.argument("topic")
@broker_option
@json_option
def describe(topic: str, broker_path: str, as_json: bool) -> None:
    """Show TOPIC's configuration and each partition's offsets, segments and size."""
    with open_broker(broker_path) as b:
        doc = describe_topic(b, topic)
    if as_json:
        echo_json(doc)
        return
    out = console()
    for k, v in doc["config"].items():
        out.print(f"{k:<20} {v}")
    if doc["partitions"]:
        tb = table(["partition>", "start>", "end>", "records>", "segments>", "bytes>"])
        for p in doc["partitions"]:
            tb.add_row(str(p["partition"]), str(p["start_offset"]), str(p["end_offset"]), fmt_num(p["records"]),
                       str(p["segments"]), fmt_num(p["bytes"]))
        out.print(tb)


def _config_options(create: bool):
    def deco(f):
        opts = [
            click.option("--partitions", "-p", type=click.IntRange(1, 4096),
                         help="Number of partitions" + (" [default: 1]." if create else " (may only grow).")),
            click.option("--retention-ms", type=click.IntRange(0), help="Delete segments older than this."),
            click.option("--retention-bytes", type=click.IntRange(0), help="Per partition: keep at most this."),
            click.option("--compact/--no-compact", default=None, help="Keep the last record of each key."),
            click.option("--delete-retention-ms", type=click.IntRange(0),
                         help="How long compaction keeps tombstones."),
            click.option("--durability", type=click.Choice(["os", "group", "always"]),
                         help="fsync policy (default: the broker's)."),
        ]
        if create:
            opts += [
                click.option("--segment-bytes", type=click.IntRange(1), help="Segment size [default: 64 MiB]."),
                click.option("--max-record-bytes", type=click.IntRange(1), help="Largest record [default: 1 MiB]."),
                click.option("--storage", type=click.Choice(["log", "memory"]), help="log (durable) or memory."),
                click.option("--if-not-exists", is_flag=True, help="Succeed when the topic already exists."),
            ]
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


def _changes(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


@topics.command()
@click.argument("topic")
@broker_option
@_config_options(create=True)
@json_option
def create(topic: str, broker_path: str, if_not_exists: bool, as_json: bool, **config) -> None:
    """Create TOPIC (an error if it exists, unless --if-not-exists). A missing or empty
    broker directory becomes a new broker."""
    with open_broker(broker_path, readonly=False, create=True) as b:
        exists = topic in b.topics()
        if exists and not if_not_exists:
            raise InvalidArgument(f"topic {topic!r} already exists in {b.path} (change it with "
                                  f"`fastq topics alter`)")
        if not exists:
            b.topic(topic, **_changes(**config))
        doc = describe_topic(b, topic)
    if as_json:
        echo_json(doc)
    else:
        click.echo(f"{'exists' if exists else 'created'}: {topic} ({doc['config']['partitions']} partition(s))")


@topics.command()
@click.argument("topic")
@broker_option
@_config_options(create=False)
@json_option
def alter(topic: str, broker_path: str, as_json: bool, **config) -> None:
    """Change TOPIC's stored configuration (running processes see it when they reopen
    the topic)."""

    changes = _changes(**config)
    if not changes:
        raise InvalidArgument("nothing to alter: give at least one of --partitions, --retention-ms, "
                              "--retention-bytes, --compact/--no-compact, --delete-retention-ms, --durability")
    with open_broker(broker_path, readonly=False) as b:
        cfg = b.alter_topic(topic, **changes)
    if as_json:
        echo_json({"topic": topic, "config": cfg})
    else:
        click.echo(f"altered: {topic}: " + ", ".join(f"{k}={v}" for k, v in changes.items()))


@topics.command()
@click.argument("topic")
@broker_option
def delete(topic: str, broker_path: str) -> None:
    """Delete TOPIC and its data. Processes still using it get errors."""
    with open_broker(broker_path, readonly=False) as b:
        b.delete_topic(topic)
    click.echo(f"deleted: {topic}")
