"""Exceptions raised by fastq.

Every error fastq raises on purpose is a :class:`FastqError`. Where a stdlib exception
already means the same thing, the fastq class subclasses it too, so code written against
``queue.Full`` or ``IndexError`` keeps working.
"""
from __future__ import annotations

import queue

__all__ = [
    "FastqError",
    "InvalidArgument",
    "InvalidName",
    "RecordTooLarge",
    "CorruptRecord",
    "StorageError",
    "DiskFull",
    "FsyncFailed",
    "Closed",
    "OffsetOutOfRange",
    "LogLocked",
    "UnknownTopic",
    "RingFull",
    "RingEmpty",
    "QueueFull",
    "QueueEmpty",
    "Timeout",
    "LogNotFound",
    "NotAssigned",
    "UsedAfterFork",
]


class FastqError(Exception):
    """Root of every error fastq raises on purpose."""


class InvalidArgument(FastqError, ValueError):
    """An argument has the wrong value (a negative size, an unknown mode, ...)."""


class InvalidName(InvalidArgument):
    """A topic, group or log name breaks the naming rules."""


class RecordTooLarge(InvalidArgument):
    """A record or message is larger than the configured maximum."""


class StorageError(FastqError, OSError):
    """An operating-system failure while reading or writing the log."""


class DiskFull(StorageError):
    """The disk has no room to preallocate a segment or index."""


class FsyncFailed(StorageError):
    """fsync failed. The log is failed and must be reopened: a failed fsync is never retried."""


class CorruptRecord(FastqError, ValueError):
    """Bytes on disk failed validation (CRC, magic, framing) where data was promised.

    ``path`` and ``position`` name the file and byte offset when known.
    """

    def __init__(self, message: str, path: str | None = None, position: int | None = None):
        super().__init__(message)
        self.path = path
        self.position = position


class Closed(FastqError, ValueError):
    """The object was used after ``close()``."""


class OffsetOutOfRange(FastqError, IndexError):
    """An offset outside ``[start, end]`` of a log; the message names the valid range."""


class LogLocked(FastqError, RuntimeError):
    """Another writer holds the log and this operation cannot wait for it."""


class UnknownTopic(FastqError, KeyError):
    """No topic with that name exists."""


class Timeout(FastqError, TimeoutError):
    """A blocking call ran out of time."""


class RingFull(FastqError, queue.Full):
    """The ring has no room for the message and the call may not wait."""


class RingEmpty(FastqError, queue.Empty):
    """The ring has no message and the call may not wait."""


class QueueFull(FastqError, queue.Full):
    """A queue reached its size limit."""


class QueueEmpty(FastqError, queue.Empty):
    """A queue has nothing to hand out."""


class LogNotFound(FastqError, FileNotFoundError):
    """No log exists at the path and ``create=False`` was given."""


class NotAssigned(FastqError, LookupError):
    """A consumer was asked about or to commit a partition it does not own right now."""


class UsedAfterFork(Closed):
    """An object opened before ``fork()`` (a broker, topic, log, producer or consumer) was
    used in the child process. The child's copy was released at the fork without touching
    what the parent holds; open a new one in the child."""
