"""``fastq groups list | describe | reset-offsets``: consumer groups, their members,
assignment, committed offsets and lag (as ``kafka-consumer-groups`` shows them). list
and describe open the broker read-only; reset-offsets is a dry run unless --execute."""
from __future__ import annotations

import os

import click

from ..broker.config import validate_name
from ..broker.group import list_members, range_assign, reset_offsets
from ..broker.offsets import read_committed
from ..errors import InvalidArgument, UnknownGroup
from ._root import cli
from .topics import _partition_facts
from ._common import (TIME_HELP, broker_option, console, echo_json, fmt_num, fmt_time, json_option, open_broker,
                      parse_time, table)


@cli.group()
def groups() -> None:
    """List and describe consumer groups; reset their committed offsets."""


def _group_dir(b, group: str) -> str:

    validate_name("group", group)
    d = os.path.join(b.path, "groups", group)
    if not os.path.isdir(d):
        raise UnknownGroup(f"no group {group!r} in broker {b.path}")
    return d


def _group_names(b) -> list[str]:
    root = os.path.join(b.path, "groups")
    try:
        return sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
    except FileNotFoundError:
        return []


def _group_topics(gdir: str) -> list[str]:
    """Topics the group consumed: a members directory or an offsets file names each."""
    names = set()
    try:
        names.update(os.listdir(os.path.join(gdir, "members")))
    except FileNotFoundError:
        pass
    try:
        names.update(n[:-len(".offsets")] for n in os.listdir(os.path.join(gdir, "offsets"))
                     if n.endswith(".offsets"))
    except FileNotFoundError:
        pass
    return sorted(names)


def describe_group(b, group: str, only_topic: str | None = None) -> dict:
    """Members, range assignment, committed offset and lag per partition of every topic
    the group consumes (or ``only_topic``)."""

    gdir = _group_dir(b, group)
    names = _group_topics(gdir)
    if only_topic is not None:
        names = [only_topic]
    out = {"group": group, "topics": []}
    for name in names:
        if name not in b.topics():
            continue                     # a deleted topic's leftovers
        t = b.topic(name, create=False)
        members = list_members(gdir, name)
        live = [m.member_id for m in members if m.live]
        owner = {p: m for m, ps in range_assign(live, t.partitions).items() for p in ps}
        committed = read_committed(os.path.join(gdir, "offsets", f"{name}.offsets"))
        parts = []
        for p in range(t.partitions):
            f = _partition_facts(t, p)
            c = committed.get(p)
            lag = f["end_offset"] - (c if c is not None else f["start_offset"])
            parts.append({"partition": p, "committed": c, "start_offset": f["start_offset"],
                          "end_offset": f["end_offset"], "lag": max(lag, 0), "member": owner.get(p)})
        out["topics"].append({
            "topic": name,
            "members": [{"member_id": m.member_id, "pid": m.pid, "live": m.live, "joined": fmt_time(m.joined_ms),
                         "heartbeat_age_ms": round(m.heartbeat_age_ms, 1),
                         "session_timeout_ms": m.session_timeout_ms,
                         "partitions": range_assign(live, t.partitions).get(m.member_id, []) if m.live else []}
                        for m in members],
            "partitions": parts, "lag": sum(p["lag"] for p in parts)})
    return out


@groups.command("list")
@broker_option
@json_option
def list_(broker_path: str, as_json: bool) -> None:
    """List the consumer groups with their topics, live members and total lag."""
    with open_broker(broker_path) as b:
        docs = [describe_group(b, g) for g in _group_names(b)]
    rows = [{"group": d["group"], "topics": [t["topic"] for t in d["topics"]],
             "members": sum(1 for t in d["topics"] for m in t["members"] if m["live"]),
             "lag": sum(t["lag"] for t in d["topics"])} for d in docs]
    if as_json:
        echo_json(rows)
        return
    tb = table(["group", "topics", "live members>", "lag>"])
    for r in rows:
        tb.add_row(r["group"], ", ".join(r["topics"]) or "-", str(r["members"]), fmt_num(r["lag"]))
    console().print(tb)


@groups.command()
@click.argument("group")
@broker_option
@click.option("-t", "--topic", default=None, help="Only this topic  [default: every topic the group consumes].")
@json_option
def describe(group: str, broker_path: str, topic: str | None, as_json: bool) -> None:
    """Show GROUP's members (pid, heartbeat, assigned partitions) and, per partition,
    the committed offset, the log's start and end and the lag."""
    with open_broker(broker_path) as b:
        if topic is not None:
            b.topic(topic, create=False)             # UnknownTopic early
        doc = describe_group(b, group, topic)
    if as_json:
        echo_json(doc)
        return
    out = console()
    if not doc["topics"]:
        out.print(f"group {group}: no topics")
    for t in doc["topics"]:
        out.print(f"group {group}, topic {t['topic']}: lag {t['lag']:,}")
        tb = table(["partition>", "committed>", "start>", "end>", "lag>", "member"])
        for p in t["partitions"]:
            tb.add_row(str(p["partition"]), "-" if p["committed"] is None else str(p["committed"]),
                       str(p["start_offset"]), str(p["end_offset"]), fmt_num(p["lag"]), p["member"] or "-")
        out.print(tb)
        if t["members"]:
            mt = table(["member", "pid>", "state", "heartbeat ms ago>", "partitions"])
            for m in t["members"]:
                mt.add_row(m["member_id"], str(m["pid"]), "live" if m["live"] else "dead",
                           fmt_num(m["heartbeat_age_ms"]), ",".join(map(str, m["partitions"])) or "-")
            out.print(mt)


@groups.command("reset-offsets")
@click.argument("group")
@broker_option
@click.option("-t", "--topic", required=True, help="The topic whose committed offsets move.")
@click.option("-p", "--partition", "partitions", type=click.IntRange(0), multiple=True,
              help="Only this partition (repeatable)  [default: all].")
@click.option("--to-earliest", is_flag=True, help="To each partition's first retained record.")
@click.option("--to-latest", is_flag=True, help="To each partition's end (skip everything there now).")
@click.option("--to-offset", type=click.IntRange(0), default=None, help="To this offset (clamped to the log).")
@click.option("--to-datetime", "to_time", default=None, metavar="TIME",
              help="To the first record at or after TIME. " + TIME_HELP)
@click.option("--execute", is_flag=True, help="Commit the new offsets  [default: a dry run that only shows them].")
@json_option
def reset_offsets_(group, broker_path, topic, partitions, to_earliest, to_latest, to_offset, to_time, execute,
                   as_json) -> None:
    """Move GROUP's committed offsets of a topic, as kafka-consumer-groups
    --reset-offsets does: a dry run showing current and new offsets unless --execute.
    Refused while a live member of the group consumes the topic (stop it first).

    \b
    fastq groups reset-offsets -b DIR billing -t orders --to-datetime -1h
    fastq groups reset-offsets -b DIR billing -t orders --to-earliest --execute
    """
    chosen = [n for n, v in (("--to-earliest", to_earliest), ("--to-latest", to_latest),
                             ("--to-offset", to_offset is not None), ("--to-datetime", to_time is not None)) if v]
    if len(chosen) != 1:
        raise InvalidArgument(f"give exactly one of --to-earliest, --to-latest, --to-offset, --to-datetime"
                              f"{' (got ' + ', '.join(chosen) + ')' if chosen else ''}")
    ts = parse_time(to_time) if to_time is not None else None
    with open_broker(broker_path, readonly=not execute) as b:
        t = b.topic(topic, create=False)
        if execute:
            gdir = os.path.join(b.path, "groups", group)

            validate_name("group", group)
        else:
            gdir = _group_dir(b, group)
        for p in partitions:
            t._check_partition(p)
        parts = sorted(set(partitions)) or list(range(t.partitions))
        committed = read_committed(os.path.join(gdir, "offsets", f"{topic}.offsets"))

        plan = []
        for p in parts:
            f = _partition_facts(t, p)
            lo, hi = f["start_offset"], f["end_offset"]
            if to_earliest:
                new = lo
            elif to_latest:
                new = hi
            elif to_offset is not None:
                new = min(max(to_offset, lo), hi)
            else:
                at = t.log(p).offset_for_timestamp(ts) if f["segments"] else None
                new = hi if at is None else max(at, lo)
            plan.append({"partition": p, "current": committed.get(p), "new": new})
        if execute:
            reset_offsets(gdir, topic, {r["partition"]: r["new"] for r in plan}, t.partitions,
                          sync=t.durability in ("group", "always"))
    if as_json:
        echo_json({"group": group, "topic": topic, "executed": execute, "partitions": plan})
        return
    console().print(f"group {group}, topic {topic}: {'reset' if execute else 'dry run (add --execute to commit)'}")
    tb = table(["partition>", "current>", "new>"])
    for r in plan:
        tb.add_row(str(r["partition"]), "-" if r["current"] is None else str(r["current"]), str(r["new"]))
    console().print(tb)
