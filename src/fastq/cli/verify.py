"""``fastq verify DIR`` / ``fastq repair DIR``: check a broker or log directory for damage
(read-only) and make a damaged log openable again (:mod:`fastq.log.verify`)."""
from __future__ import annotations

import json
import sys

import click

from ..errors import FastqError
from ..log.verify import broker_logs, is_broker, repair_log, verify_broker, verify_log
from ._root import cli
from ._common import fail as _fail, progress


def _problem_line(p) -> str:
    where = p.path if p.position is None else f"{p.path} @ {p.position}"
    return f"  {p.kind:<16} {where}: {p.detail}"


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(directory: str, as_json: bool) -> None:
    """Check a broker or log DIRECTORY for damage without changing it.

    Reads every batch (CRC, framing, offsets) and every .index/.timeindex entry; safe
    while other processes write (bytes past the acknowledged end are not judged).
    Lists each problem with its file, byte position and kind (crc-mismatch,
    truncated-batch, offset-gap, missing-segment, index-entry, ...). Exit status: 0 when
    clean, 1 when damage was found, 2 on an error."""

    try:
        paths = broker_logs(directory) if is_broker(directory) else [directory]
        reports = []
        with progress() as bar:
            task = bar.add_task("verify", total=len(paths))
            for path in paths:
                reports.append(verify_log(path))
                bar.advance(task)
    except (FastqError, OSError) as e:
        _fail(e)
    bad = [r for r in reports if not r.ok]
    if as_json:
        click.echo(json.dumps({"ok": not bad, "logs": [r.to_dict() for r in reports]}, indent=1))
    else:
        for r in reports:
            click.echo(f"{r.path}: {'ok' if r.ok else f'{len(r.problems)} problem(s)'}"
                       + (f" (offsets [{r.start_offset}, {r.end_offset}))" if r.end_offset is not None else ""))
            for p in r.problems:
                click.echo(_problem_line(p))
        if bad:
            click.echo(f"{len(bad)} of {len(reports)} log(s) damaged: `fastq repair` keeps every intact "
                       f"batch and moves the rest aside")
    sys.exit(1 if bad else 0)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--dry-run", is_flag=True, help="Report what would be kept and moved; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def repair(directory: str, dry_run: bool, as_json: bool) -> None:
    """Make a damaged broker or log DIRECTORY openable again.

    Keeps every intact batch; what it cannot keep is moved into <log>/damaged/<time>/,
    never deleted. The logs must not be open in any process. Exit status: 0 when done
    (or nothing to do), 2 on an error."""

    try:
        if is_broker(directory):
            paths = [r.path for r in verify_broker(directory) if not r.ok]
        else:
            paths = [directory]
        results = [repair_log(p, dry_run=dry_run) for p in paths]
    except (FastqError, OSError) as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "logs": [r.to_dict() for r in results]}, indent=1))
        return
    if not results:
        click.echo(f"{directory}: nothing to repair")
    verb = "would " if dry_run else ""
    for r in results:
        if not r.problems:
            click.echo(f"{r.path}: ok, nothing to repair")
            continue
        click.echo(f"{r.path}:")
        for k in r.kept:
            click.echo(f"  {verb}keep  {k['path']}: {k['bytes']} bytes, offsets [{k['offsets'][0]}, "
                       f"{k['offsets'][1]})")
        for m in r.moved:
            click.echo(f"  {verb}move  {m['path']} from byte {m['position']} aside: {m['why']}")
        for lo, hi in r.lost:
            click.echo(f"  lost  offsets [{lo}, {hi}) (no intact batch holds them)")
        if r.damaged_dir:
            click.echo(f"  moved files are in {r.damaged_dir}")


