"""``fastq produce TOPIC`` and ``fastq consume TOPIC``: records in from lines or files,
records out through a kcat-style format string or as JSON lines.

``consume --follow`` runs until Ctrl-C (SIGINT) or SIGTERM, which end it at once with
exit code 0, as kcat and kafka-console-consumer do: stopping a follower is its normal
end, not a failure. With ``--group`` a signal that comes while a chunk is printed waits
until that chunk is committed (a second one does not wait), so what was printed is
what the group committed. Output is flushed after each chunk of records, so a pipe reader
sees them as they come. Without ``--group`` the broker is opened read-only, which is a
snapshot; the follower sees later appends by reading each partition's state file every
:data:`FOLLOW_POLL_S` seconds and reopening the topic when one moved. With ``--group``
it is a consumer of the group, woken by the topic's commits."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time

import click

from ..errors import InvalidArgument
from ..log.verify import read_state
from ._root import cli
from ._common import CliError, TIME_HELP, broker_option, open_broker, parse_position, progress


# -- produce ------------------------------------------------------------------------------

def _header(text: str) -> tuple[str, bytes]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise CliError(f"bad header {text!r}: expected NAME=VALUE")
    return name, value.encode()


@cli.command()
@click.argument("topic")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@broker_option
@click.option("-k", "--key-delimiter", metavar="SEP",
              help="Split each line at the first SEP into key and value (a line without SEP has no key).")
@click.option("-H", "--header", "headers", multiple=True, metavar="NAME=VALUE",
              help="Add this header to every record (repeatable).")
@click.option("-p", "--partition", type=click.IntRange(0), default=None,
              help="Write every record to this partition  [default: by key, else sticky].")
@click.option("-l", "--lines", is_flag=True, help="Read FILES line by line too (default: one record per file).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on stderr (no progress, no summary).")
def produce(topic, files, broker_path, key_delimiter, headers, partition, lines, as_json, quiet) -> None:
    """Write records to TOPIC: one per line of stdin, or one per FILE (per line with -l).
    On a terminal, a progress bar on stderr: bytes of FILES read, or records from stdin
    (FASTQ_PROGRESS=1 forces it, =0 hides it; never with --json or -q).

    \b
    printf 'k1:hello\\nk2:world\\n' | fastq produce -b DIR orders -k :
    fastq produce -b DIR images a.png b.png -H type=png
    """
    hdrs = [_header(h) for h in headers] or None
    if key_delimiter == "":
        raise CliError("--key-delimiter must not be empty")
    sep = key_delimiter.encode() if key_delimiter else None
    counts: dict[int, list[int]] = {}

    def delivered(meta) -> None:
        c = counts.setdefault(meta.partition, [meta.offset, meta.offset, 0])
        c[0], c[1], c[2] = min(c[0], meta.offset), max(c[1], meta.offset), c[2] + 1

    def records():
        """(record, bytes of input it took)"""
        if not files:
            for line in sys.stdin.buffer:
                yield line.rstrip(b"\r\n"), len(line)
            return
        for path in files:
            with open(path, "rb") as f:
                if lines:
                    for line in f:
                        yield line.rstrip(b"\r\n"), len(line)
                else:
                    data = f.read()
                    yield data, len(data)

    with open_broker(broker_path, readonly=False) as b:
        t = b.topic(topic, create=False)
        if partition is not None and partition >= t.partitions:
            raise InvalidArgument(f"partition {partition} out of range: topic {topic!r} has partitions "
                                  f"0..{t.partitions - 1}")
        with _produce_progress(files, enabled=not (as_json or quiet)) as tick, \
                t.producer(on_delivery=delivered) as prod:
            for rec, size in records():
                key = None
                if sep is not None:
                    k, found, v = rec.partition(sep)
                    if found:
                        key, rec = k, v
                prod.send(rec, key=key, headers=hdrs, partition=partition)
                tick(size)
    total = sum(c[2] for c in counts.values())
    doc = {"topic": topic, "records": total,
           "partitions": {str(p): {"first_offset": c[0], "last_offset": c[1], "records": c[2]}
                          for p, c in sorted(counts.items())}}
    if as_json:
        click.echo(json.dumps(doc))
    elif not quiet:
        click.echo(f"produced {total} record(s) to {topic}", err=True)


@contextlib.contextmanager
def _produce_progress(files, *, enabled: bool):
    """Yield ``tick(nbytes)``, called once per record read: drawn as bytes of ``files``
    read of their total, or (stdin, size unknown) a spinner and a record count. The bar
    is updated every 256 records or 1 MiB, not per record."""
    from rich.progress import (BarColumn, DownloadColumn, SpinnerColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    if files:
        bar = progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn(), enabled=enabled)
        total = sum(os.path.getsize(f) for f in files)
    else:
        bar = progress(SpinnerColumn(), TextColumn("{task.description}"),
                       TextColumn("{task.completed:,.0f} records"), TimeElapsedColumn(), enabled=enabled)
        total = None
    if bar.disable:
        yield lambda n: None
        return
    pending = [0, 0]                                       # records, bytes not yet shown

    def tick(n: int) -> None:
        pending[0] += 1
        pending[1] += n
        if pending[0] >= 256 or pending[1] >= 1 << 20:
            flush()

    def flush() -> None:
        bar.advance(task, pending[1] if files else pending[0])
        pending[0] = pending[1] = 0

    with bar:
        task = bar.add_task("produce", total=total)
        yield tick
        flush()
        bar.refresh()


# -- consume ------------------------------------------------------------------------------

_TOKENS = {"t": "topic", "p": "partition", "o": "offset", "k": "key", "s": "value", "K": "key_len",
           "S": "value_len", "T": "timestamp", "h": "headers", "%": "%"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "0": "\0"}
FORMAT_HELP = ("%t topic, %p partition, %o offset, %k key, %s value, %K key length, %S value length, "
               "%T timestamp (ms), %h headers (name=value,...), %% a percent; \\n \\t \\r \\\\ escapes")


def compile_format(fmt: str) -> list:
    """A kcat ``-f`` format as a list of literal bytes and field names; CliError for an
    unknown ``%x`` or a trailing ``%``/``\\``."""
    out: list = []
    lit = []
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c in "%\\":
            if i + 1 == len(fmt):
                raise CliError(f"bad format {fmt!r}: it ends in a lone {c!r} ({FORMAT_HELP})")
            n = fmt[i + 1]
            table = _TOKENS if c == "%" else _ESCAPES
            if n not in table:
                raise CliError(f"bad format {fmt!r}: unknown {c}{n} at position {i} ({FORMAT_HELP})")
            if c == "%" and n != "%":
                if lit:
                    out.append("".join(lit).encode())
                    lit = []
                out.append(table[n])
            else:
                lit.append("%" if n == "%" else table[n])
            i += 2
            continue
        lit.append(c)
        i += 1
    if lit:
        out.append("".join(lit).encode())
    return out


def _render(parts: list, topic: str, rec) -> bytes:
    b = []
    for p in parts:
        if isinstance(p, bytes):
            b.append(p)
        elif p == "value":
            b.append(bytes(rec.value) if rec.value is not None else b"")
        elif p == "key":
            b.append(bytes(rec.key) if rec.key is not None else b"")
        elif p == "topic":
            b.append(topic.encode())
        elif p == "partition":
            b.append(str(rec.partition).encode())
        elif p == "offset":
            b.append(str(rec.offset).encode())
        elif p == "timestamp":
            b.append(str(rec.timestamp).encode())
        elif p == "key_len":
            b.append(str(-1 if rec.key is None else len(rec.key)).encode())
        elif p == "value_len":
            b.append(str(-1 if rec.value is None else len(rec.value)).encode())
        elif p == "headers":
            b.append(b",".join(k.encode() + b"=" + (bytes(v) if v is not None else b"") for k, v in rec.headers or ()))
    return b"".join(b)


def _text(buf):
    """JSON value of key/value bytes: a str when UTF-8, else {"base64": ...}."""
    if buf is None:
        return None
    raw = bytes(buf)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode()}


def record_json(topic: str, rec) -> dict:
    return {"topic": topic, "partition": rec.partition, "offset": rec.offset, "timestamp": rec.timestamp,
            "key": _text(rec.key), "value": _text(rec.value),
            "headers": {k: _text(v) for k, v in rec.headers or ()}}


class _Stop(Exception):
    """SIGINT or SIGTERM asked ``consume`` to stop (it exits 0)."""


class _StopSignals:
    """SIGINT and SIGTERM end ``consume``: at once (``_Stop``) while it reads or waits;
    while it writes a chunk out and commits it (``held()``), only once that is done — so
    every record printed with ``--group`` is also committed (the next member neither
    prints it again nor skips one) and no line is cut in half — unless a second signal
    comes first. Installed in the main thread only, where signal handlers run."""

    def __init__(self):
        self.busy = False               # inside held(): a first signal waits for its end
        self.pending = False            # a signal came while busy
        self.old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.old[s] = signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)

    def _on_signal(self, signum, frame) -> None:
        if self.busy and not self.pending:
            self.pending = True
            return
        raise _Stop()

    @contextlib.contextmanager
    def held(self):
        self.busy = True
        try:
            yield
        finally:
            self.busy = False
        if self.pending:
            raise _Stop()


@cli.command()
@click.argument("topic")
@broker_option
@click.option("-g", "--group", default=None, help="Consume as a member of this group and commit what was "
              "printed  [default: no group, nothing committed, the broker opened read-only].")
@click.option("--from", "from_", default=None, metavar="WHERE",
              help="earliest | latest | OFFSET (fewer than 13 digits, or @N) | TIME  [default: earliest, or "
                   "the committed offset with --group]. " + TIME_HELP)
@click.option("-f", "--follow", is_flag=True,
              help="Keep waiting for new records; Ctrl-C or SIGTERM ends it with exit code 0.")
@click.option("-c", "--count", type=click.IntRange(1), default=None, help="Stop after this many records.")
@click.option("-p", "--partition", "partitions", type=click.IntRange(0), multiple=True,
              help="Print only this partition (repeatable; without --group).")
@click.option("--format", "fmt", default="%s\\n", show_default=True, metavar="FMT",
              help="Output format, as kcat's -f: " + FORMAT_HELP + ".")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per record (JSON lines).")
def consume(topic, broker_path, group, from_, follow, count, partitions, fmt, as_json) -> None:
    """Print TOPIC's records, from --from up to the end (or on, with --follow).

    \b
    fastq consume -b DIR orders --from -15m --format '%p:%o %k=%s\\n'
    fastq consume -b DIR orders --group billing --follow --json
    """
    parts = compile_format(fmt)
    where = parse_position(from_) if from_ is not None else None
    if group is not None and partitions:
        raise CliError("--partition cannot be used with --group (the group assigns partitions)")
    out = sys.stdout.buffer
    with _StopSignals() as stop:
        try:
            with open_broker(broker_path, readonly=group is None) as b:
                t = b.topic(topic, create=False)
                for p in partitions:
                    t._check_partition(p)
                _consume(t, group, where, follow, count, set(partitions) or None, parts, as_json, out, stop.held)
        except (KeyboardInterrupt, _Stop):    # KeyboardInterrupt: outside the main thread
            pass


def _start(t, p: int, where) -> int | None:
    """Where reading partition p starts, or None when it has no log yet (never written:
    a read-only open cannot create it)."""
    import os

    if not os.path.isdir(os.path.join(t.dir, str(p))):
        return None
    lg = t.log(p)
    lo, hi = lg.start_offset, lg.end_offset
    kind, value = where or ("earliest", None)
    if kind == "latest":
        return hi
    if kind == "offset":
        return min(max(value, lo), hi)
    if kind == "time":
        at = lg.offset_for_timestamp(value)
        return hi if at is None else max(at, lo)
    return lo


def _read_alone(t, where, follow, count, only, parts, as_json, out, held) -> None:
    """Without a group: read the partitions directly (read-only; nothing committed)."""
    wanted = sorted(only) if only is not None else list(range(t.partitions))
    pos: dict[int, int] = {}
    ends = None if follow else {p: _end(t, p) for p in wanted}
    printed = 0
    first = True
    while True:
        for p in wanted:                                    # partitions written since join in
            if p not in pos:
                at = _start(t, p, where if first else None)
                if at is not None:
                    pos[p] = at
        first = False
        progressed = False
        for p in list(pos):
            lg = t.log(p)
            pos[p] = max(pos[p], lg.start_offset)          # retention may have moved the start
            stop = lg.end_offset if ends is None else min(ends[p], lg.end_offset)
            stop = min(stop, pos[p] + 500)
            if count is not None:
                stop = min(stop, pos[p] + count - printed)
            if pos[p] >= stop:
                continue
            chunk = []
            for rec in t.read(p, pos[p], end=stop):
                chunk.append((json.dumps(record_json(t.name, rec)) + "\n").encode() if as_json
                             else _render(parts, t.name, rec))
            rec = None                                      # a view into the log: drop it
            pos[p] = stop                                   # (compaction leaves offset gaps)
            printed += len(chunk)
            progressed = True
            with held():
                out.write(b"".join(chunk))
                out.flush()
            if count is not None and printed >= count:
                return
        if progressed:
            continue
        if not follow:
            return
        if t.readonly:
            _await_commits(t, pos, wanted)
            t = _fresh_snapshot(t)
        else:
            t.wait_any(pos, timeout=0.5)                    # {} (nothing written yet): just waits


# A read-only follower cannot sleep on the topic's futex (waking needs a waiter count it
# would write), so it looks at the partitions' state files this often.
FOLLOW_POLL_S = 0.1


def _await_commits(t, pos: dict, wanted: list) -> None:
    """Read-only --follow: return once another process committed past ``pos`` in some
    partition, or a wanted partition's log appeared. A read-only broker is a snapshot
    taken when it was opened (``fastq.open(readonly=True)``): its logs never see later
    appends, and its notifier is private, so this reads each partition's fastq.state
    (a small read, nothing mapped writable) until its next offset moves."""
    while True:
        time.sleep(FOLLOW_POLL_S)       # first: at most one reopen per FOLLOW_POLL_S under a busy
        for p in wanted:                # writer; a signal ends the sleep (Ctrl-C, SIGTERM)
            st = read_state(os.path.join(t.dir, str(p)))
            if st is not None and (p not in pos or st["next_offset"] > pos[p]):
                return


def _fresh_snapshot(t):
    """The topic reopened read-only: a new snapshot that holds what was committed since."""
    t.close()
    return t.broker.topic(t.name, create=False)


def _end(t, p: int) -> int:
    import os

    return t.log(p).end_offset if os.path.isdir(os.path.join(t.dir, str(p))) else 0


def _consume(t, group, where, follow, count, only, parts, as_json, out, held) -> None:
    """Print the records (``held``: the section a stop signal does not cut, see
    :class:`_StopSignals`)."""
    if group is None:
        return _read_alone(t, where, follow, count, only, parts, as_json, out, held)
    kind = where[0] if where else "committed"
    c = t.consumer(group, from_=kind if kind in ("earliest", "latest", "committed") else "earliest")
    try:
        if kind == "offset":
            for p in range(t.partitions):
                c.seek(p, where[1])
        elif kind == "time":
            c.seek_to_timestamp(where[1])
        ends = t.end_offsets()
        wanted = only if only is not None else set(range(t.partitions))
        printed = 0
        polled = False
        while True:
            recs = c.poll(500, timeout=0.5 if follow else 0.1)
            polled = True
            chunk = []
            done: dict[int, int] = {}          # partition -> next offset, of what was printed
            for rec in recs:
                if rec.partition not in wanted:
                    continue
                chunk.append((json.dumps(record_json(t.name, rec)) + "\n").encode() if as_json
                             else _render(parts, t.name, rec))
                done[rec.partition] = rec.offset + 1
                printed += 1
                if count is not None and printed >= count:
                    break
            rec = recs = None                  # the records are views into the log: drop them
            with held():                       # a stop signal waits for the commit
                if chunk:
                    out.write(b"".join(chunk))
                    out.flush()
                if done:                       # commit only what was written out
                    c.commit(done)
            if count is not None and printed >= count:
                return
            if not follow and polled and _caught_up(c, ends, wanted, group):
                return
    finally:
        c.close()


def _caught_up(c, ends: dict, wanted: set, group) -> bool:
    mine = c.assignment() if group is not None else sorted(wanted)
    return all(c.position(p) >= ends[p] for p in mine if p in wanted)
