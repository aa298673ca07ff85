"""What every ``fastq`` command shares: the one-line error, the broker option, opening
a broker (read-only for commands that only look), time and offset parsing, consoles."""
from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import re
import sys
import time

import click

from .. import open as _open_broker
from ..broker.config import BROKER_FILE, TOPIC_FILE
from ..errors import FastqError, UnknownTopic



class CliError(click.ClickException):
    """A bad input or a failure, shown as one line ``fastq: error: ...`` with exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"fastq: error: {self.format_message()}", err=True)


def message(e: BaseException) -> str:
    """An exception's text; KeyError subclasses (UnknownTopic, UnknownGroup) unquoted."""
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    return str(e)


def fail(e: BaseException) -> "None":
    """Raise ``e`` (a FastqError or OSError) as a one-line CliError."""
    raise CliError(message(e)) from None


def is_broken_pipe(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno == errno.EPIPE


broker_option = click.option(
    "-b", "--broker", "broker_path", envvar="FASTQ_BROKER", required=True, metavar="DIR",
    type=click.Path(file_okay=False), help="The broker directory  [env: FASTQ_BROKER].")

json_option = click.option("--json", "as_json", is_flag=True, help="Print the output as JSON.")


def open_broker(path: str, *, readonly: bool = True, create: bool = False):
    """Open an existing broker. ``readonly`` (commands that only look): nothing in the
    directory is created or written. ``create`` (``topics create`` only): a missing
    directory, or an empty one, becomes a new broker; a directory that holds anything
    else is refused, so a mistyped path never turns into a broker."""
    if create and (not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path))):
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise CliError(f"{path}: its parent directory does not exist")
        try:
            return _open_broker(path, create=True)
        except (FastqError, OSError) as e:
            fail(e)
    if not os.path.isdir(path):
        raise CliError(f"{path}: no such directory")
    if not os.path.isfile(os.path.join(path, BROKER_FILE)):
        raise CliError(f"{path} is not a fastq broker directory (no {BROKER_FILE})")
    try:
        return _open_broker(path, create=False, readonly=readonly)
    except (FastqError, OSError) as e:
        fail(e)


def topic_config(broker, name: str) -> dict:
    """A topic's stored configuration (topic.json), read without opening the topic (a
    memory topic cannot be opened read-only)."""
    path = os.path.join(broker.path, "topics", name, TOPIC_FILE)
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise UnknownTopic(f"no topic {name!r} in broker {broker.path}") from None
    except ValueError as e:
        raise CliError(f"{path} is not valid JSON: {e}") from None


# -- time ---------------------------------------------------------------------------------

TIME_HELP = ("TIME is ISO-8601 (2026-12-05T10:00:00Z; no zone means UTC), epoch milliseconds "
             "(1796464800000) or relative to now (-15m, -2h, -30s, -1d, -500ms).")
_REL_RE = re.compile(r"-(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_time(text: str, *, now_ms: int | None = None) -> int:
    """Milliseconds since the epoch of an ISO-8601 time, epoch milliseconds, or a
    relative time (``-15m``). CliError (one line, exit 2) otherwise."""
    s = text.strip()
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    if s.isdigit():
        return int(s)
    m = _REL_RE.fullmatch(s)
    if m:
        return now_ms - int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    try:
        iso = s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s
        d = _dt.datetime.fromisoformat(iso)
    except ValueError:
        raise CliError(f"bad time {text!r}: {TIME_HELP}") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return int(d.timestamp() * 1000)


def fmt_time(ms: int | None) -> str:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds ('-' for None or negative)."""
    if ms is None or ms < 0:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def parse_position(text: str) -> tuple[str, int | None]:
    """``--from``: ("earliest"|"latest", None), ("offset", n) or ("time", ms)."""
    s = text.strip()
    if s in ("earliest", "beginning"):
        return "earliest", None
    if s in ("latest", "end"):
        return "latest", None
    if s.isdigit() and len(s) < 13:        # an epoch-ms time has 13 digits since 2001
        return "offset", int(s)
    if s.startswith("@") and s[1:].isdigit():
        return "offset", int(s[1:])
    return "time", parse_time(s)


# -- output -------------------------------------------------------------------------------

def fmt_num(v, digits=0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


def console():
    from rich.console import Console

    # a wide, plain console when not on a terminal (make run logs, CI, tests)
    return Console() if sys.stdout.isatty() else Console(width=132, no_color=True, highlight=False)


def console_stderr():
    from rich.console import Console

    return Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=132, no_color=True,
                                                                     highlight=False)


PROGRESS_ENV = "FASTQ_PROGRESS"


def progress(*columns, enabled: bool = True, **kw):
    """A rich progress bar on stderr (stdout stays data), drawn only when stderr is a
    terminal and ``enabled``; ``columns``: rich columns  [default: a bar and N/M].
    FASTQ_PROGRESS=1 draws it as on a terminal even when stderr is not one (rich's
    ``force_terminal``: for a pseudo-terminal that does not say so, and for tests);
    FASTQ_PROGRESS=0 never draws it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    force = os.environ.get(PROGRESS_ENV, "")
    err = Console(stderr=True, force_terminal=True) if force == "1" else console_stderr()
    draw = enabled and err.is_terminal and force != "0"
    columns = columns or (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=err, transient=True, disable=not draw, **kw)


def table(columns):
    """A rich Table with ``columns`` given as names; names ending in '>' are right-aligned."""
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    for c in columns:
        t.add_column(c.rstrip(">"), justify="right" if c.endswith(">") else "left")
    return t


def echo_json(doc) -> None:
    click.echo(json.dumps(doc, indent=1))
