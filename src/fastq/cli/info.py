"""``fastq info``: the machine and build facts that benchmark results are stored with
(:func:`fastq.bench.scenarios.machine_info`; CPU, cores and memory come from psutil)."""
from __future__ import annotations

import json

import click

from ..bench import scenarios as B
from ._root import cli


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(as_json: bool) -> None:
    """Describe this machine and fastq build (what benchmark results are stored with)."""
    m = B.machine_info()
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    for k, v in m.items():
        click.echo(f"{k:<22} {v}")


