"""The ``fastq`` command line (console script ``fastq``; also ``python -m fastq``).

One module per command group; each registers its commands on :data:`cli`:

- ``topics`` (list, describe, create, alter, delete): :mod:`fastq.cli.topics`;
- ``produce`` / ``consume``: :mod:`fastq.cli.io`;
- ``groups`` (list, describe, reset-offsets): :mod:`fastq.cli.groups`;
- ``queues`` (create, list, describe, peek, purge, redrive, delete): :mod:`fastq.cli.queues`;
- ``tasks`` (add, counts, list, show, pause, resume, retry-failed, promote, clean, drain, remove,
  obliterate): :mod:`fastq.cli.tasks`;
- ``dump`` (a segment batch by batch, an index entry by entry): :mod:`fastq.cli.dump`;
- ``verify`` / ``repair`` (:mod:`fastq.log.verify`): :mod:`fastq.cli.verify`;
- ``bench`` (:mod:`fastq.bench`): :mod:`fastq.cli.bench`; ``info``: :mod:`fastq.cli.info`.

Commands work on a broker directory (``-b DIR`` or ``FASTQ_BROKER``) and are safe while
other processes use it: commands that only look open it read-only
(``fastq.open(readonly=True)``: nothing is created, locked or written). Commands whose
output is data take ``--json``. Errors are one line on stderr, ``fastq: error: ...``,
with exit code 2, never a traceback; ``verify`` exits 1 when it finds damage.
Progress bars go to stderr, on a terminal only (``FASTQ_PROGRESS=1`` forces them, ``=0``
hides them: :func:`fastq.cli._common.progress`).
"""
from __future__ import annotations

from . import bench, dump, groups, info, io, queues, tasks, topics, verify  # noqa: F401  (each registers its commands)
from ._root import cli

main = cli

__all__ = ["cli", "main"]
