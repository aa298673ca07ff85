"""The root ``fastq`` command group: every command module registers on :data:`cli`."""
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
