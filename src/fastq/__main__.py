"""``python -m fastq`` is the ``fastq`` command (see :mod:`fastq.cli`)."""
from .cli import cli

cli(prog_name="fastq")
