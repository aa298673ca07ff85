"""The ``fastq`` command line (console script ``fastq``; also ``python -m fastq``).

One module per command group; each registers its commands on :data:`cli`:

- ``topics`` (list, describe, create, alter, delete): :mod:`fastq.cli.topics`;
- ``produce`` / ``consume``: :mod:`fastq.cli.io`;
- ``groups`` (list, describe, reset-offsets): :mod:`fastq.cli.groups`;
- ``dump`` (a segment batch by batch, an index entry by entry): :mod:`fastq.cli.dump`;
- ``verify`` / ``repair`` (:mod:`fastq.verify`): :mod:`fastq.cli.verify`;
- ``bench`` (:mod:`fastq.benchmarks`): :mod:`fastq.cli.bench`; ``info``: :mod:`fastq.cli.info`.

Commands work on a broker directory (``-b DIR`` or ``FASTQ_BROKER``) and are safe while
other processes use it: commands that only look open it read-only
(``fastq.open(readonly=True)``: nothing is created, locked or written). Commands whose
output is data take ``--json``. Errors are one line on stderr, ``fastq: error: ...``,
with exit code 2, never a traceback; ``verify`` exits 1 when it finds damage.
Progress bars go to stderr, on a terminal only (``FASTQ_PROGRESS=1`` forces them, ``=0``
hides them: :func:`fastq.cli._common.progress`).
"""
from __future__ import annotations

import click

from .. import __version__
from ..errors import FastqError
from ._common import CliError, is_broken_pipe, message


class _Group(click.Group):
    """The root group: a FastqError or OSError escaping a command becomes one line and
    exit code 2 (a broken pipe — ``fastq consume ... | head`` — is left to click)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (FastqError, OSError) as e:
            if is_broken_pipe(e):
                raise
            raise CliError(message(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fastq")
def cli() -> None:
    """fastq: a fast, embedded, durable message log for Python.

    Operator commands take the broker directory as -b DIR (or FASTQ_BROKER) and are safe
    to run while other processes use it. Errors: one line, exit code 2.
    """


main = cli

from . import bench, dump, groups, info, io, topics, verify  # noqa: E402,F401  (register commands)

__all__ = ["cli", "main"]
