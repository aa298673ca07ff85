"""The durable log: one directory of Kafka RecordBatch v2 segments, shared by processes.

Modules, bottom to top: ``config``, ``_process``, ``_recovery``, ``_retention``, ``columns``, ``log``,
``compaction``, ``verify``.

``log``        :class:`Log` — open and recover, append, read, roll, retention, truncation,
               durability, close (the hot path is :mod:`fastq._core._storage`)
``config``     the files and limits of a log directory; checks shared with the broker
``_recovery``  recovery of an unclean log (a mixin of :class:`Log`)
``_retention`` retention and truncation (a mixin of :class:`Log`)
``_process``   per-process machinery: the pretoucher thread, the at-fork registry
``columns``    ``Log.read_columns``: records as numpy arrays (a mixin of :class:`Log`)
``compaction`` log compaction (keep the last record per key)
``verify``     ``fastq verify`` / ``fastq repair``: check every batch and index, repair
"""
from .._core._storage import LogReader, Pacer, Record
from .columns import Columns
from .compaction import compact_log
from .config import DURABILITY_MODES
from .log import Log, open_log
from .verify import repair_log, verify_broker, verify_log

__all__ = ["Log", "open_log", "Record", "LogReader", "Pacer", "DURABILITY_MODES", "Columns", "compact_log",
           "verify_log", "verify_broker", "repair_log"]
