"""Exceptions raised by fastq.

Every error fastq raises on purpose is a :class:`FastqError`. Where a stdlib exception
already means the same thing, the fastq class subclasses it too, so code written against
``queue.Full`` or ``IndexError`` keeps working.
"""
from __future__ import annotations

import queue

__all__ = [
    "FastqError",
    "TransactionStateError",
    "LeaseLost",
    "UnknownQueue",
    "CodecError",
    "InvalidArgument",
    "InvalidName",
    "RecordTooLarge",
    "CorruptRecord",
    "StorageError",
    "DiskFull",
    "ReadOnly",
    "PermissionDenied",
    "TooManyOpenFiles",
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
    "UnknownGroup",
    "GroupActive",
    "MissingDependency",
    "JobFailed",
    "JobCancelled",
    "UnknownJob",
    "JobStateError",
    "JobActive",
    "ProducerFenced",
    "OutOfOrderSequence",
    "RateLimited",
]


class FastqError(Exception):
    """Root of every error fastq raises on purpose."""


class InvalidArgument(FastqError, ValueError):
    """An argument has the wrong value (a negative size, an unknown mode, ...)."""


class InvalidName(InvalidArgument):
    """A topic, group or log name breaks the naming rules."""


class MissingDependency(FastqError, ImportError):
    """An optional extra that a call needs is not installed; the message names the
    ``pip install`` line (e.g. ``read_columns`` needs ``fastq-broker[numpy]``)."""


class RecordTooLarge(InvalidArgument):
    """A record or message is larger than the configured maximum."""


class StorageError(FastqError, OSError):
    """An operating-system failure while reading or writing fastq's files or shared
    memory. ``errno`` is the OS error number and ``filename`` the file, when known.
    The status -> exception table is ``fastq._core._codec.status_error`` (docs/ARCHITECTURE.md,
    "Errors")."""


class DiskFull(StorageError):
    """The filesystem (or /dev/shm, or a quota) has no room: ENOSPC or EDQUOT. fastq
    preallocates what it maps, so a full disk is this error at create/grow time, never a
    crash at a later write."""


class ReadOnly(StorageError):
    """A write was refused: the filesystem is read-only (EROFS), or the log or broker was
    opened with ``readonly=True``. Archived logs can be read with ``readonly=True``."""


class PermissionDenied(StorageError, PermissionError):
    """The OS refused access to a file (EACCES or EPERM)."""


class TooManyOpenFiles(StorageError):
    """The process (EMFILE, ``RLIMIT_NOFILE``) or the system (ENFILE) ran out of file
    descriptors; the message says which limit and how to raise it."""


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
    """A queue reached its size limit. ``retry_after``: seconds until there is likely
    room (estimated from the measured drain rate), or None when nothing is known."""

    def __init__(self, message: str = "", retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class QueueEmpty(FastqError, queue.Empty):
    """A queue has nothing to hand out."""


class ProducerFenced(FastqError, RuntimeError):
    """An idempotent producer was fenced: its transactional id was opened again (a newer
    epoch), so this instance may no longer write. Close it; the newer one carries on."""


class TransactionStateError(FastqError, RuntimeError):
    """A transaction was used outside its life: a publish, commit or abort after it
    ended, or a second transaction of the same transactional id while one is under way
    (transactions do not nest)."""


class OutOfOrderSequence(FastqError, ValueError):
    """An idempotent producer's batch does not continue its sequence in the partition:
    a gap, or a retry of a batch older than the last five it stored. The message names
    the sequence expected next."""


class LogNotFound(FastqError, FileNotFoundError):
    """No log exists at the path and ``create=False`` was given."""


class NotAssigned(FastqError, LookupError):
    """A consumer was asked about or to commit a partition it does not own right now."""


class UsedAfterFork(Closed):
    """An object opened before ``fork()`` (a broker, topic, log, producer or consumer) was
    used in the child process. The child's copy was released at the fork without touching
    what the parent holds; open a new one in the child."""


class UnknownGroup(FastqError, KeyError):
    """No consumer group with that name exists (nothing joined or committed)."""


class GroupActive(FastqError, RuntimeError):
    """A consumer group has live members where the operation needs none (resetting
    committed offsets of partitions a member owns)."""


class LeaseLost(FastqError, RuntimeError):
    """A queue message was acked, nacked, extended or rejected through a lease that is no
    longer current: it was settled already, or its lease ended and another consumer took
    the message. Nothing was changed; the other delivery stands."""


class UnknownQueue(FastqError, KeyError):
    """No queue with that name exists and the call may not create one."""


class CodecError(InvalidArgument):
    """A queue's codec could not encode the data given to publish, or decode a stored
    message (the error names the codec and the message)."""


class JobFailed(FastqError, RuntimeError):
    """A task-queue job ended failed (``job.result()``): ``job_id``, ``reason`` (the last
    attempt's error, or why it timed out) and ``stacktrace`` (one text per failed attempt)."""

    def __init__(self, message: str, job_id: str | None = None, reason: str | None = None,
                 stacktrace: list | None = None):
        super().__init__(message)
        self.job_id = job_id
        self.reason = reason
        self.stacktrace = stacktrace or []


class JobCancelled(FastqError, RuntimeError):
    """Raised by ``job.raise_if_cancelled()`` in a handler whose job ran past its
    ``timeout`` (or whose worker was told to stop without waiting)."""


class UnknownJob(FastqError, KeyError):
    """No job with that id is known to the task queue (never added, or removed)."""


class JobStateError(FastqError, RuntimeError):
    """A task-queue job is not in a state the operation needs (``job.retry()`` of a job
    that did not fail, ``job.promote()`` of one that is not delayed); the message names the
    job and its state."""


class JobActive(JobStateError):
    """A task-queue job is being run by a worker, so it cannot be removed (BullMQ's job
    lock); ``obliterate()`` refuses while jobs are active unless ``force=True``."""


class RateLimited(FastqError):
    """A rate limiter refused: there are not enough points now. ``retry_after``: seconds
    until the request would be admitted; ``key``: the limited key (None: the whole limiter)."""

    def __init__(self, message: str, retry_after: float, key=None):
        super().__init__(message)
        self.retry_after = retry_after
        self.key = key


# --- pub/sub and EventEmitter (fastq.pubsub) ---
class UnhandledEvent(FastqError, RuntimeError):
    """``EventEmitter.emit("error", x)`` with no "error" listener, where ``x`` is not an
    exception to re-raise (Node's ERR_UNHANDLED_ERROR); ``value`` is what was emitted."""

    def __init__(self, message: str, value=None):
        super().__init__(message)
        self.value = value


__all__ += ["UnhandledEvent"]
