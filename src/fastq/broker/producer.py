"""The batching producer: accumulate records in a ring, append them to the log as batches.

Thread-safety: ``send`` may be called from any number of threads. Process-safety: each
process has its own producers; their batches interleave safely in the partition logs.

The accumulator is an anonymous in-process :class:`fastq.Ring`. The hot path is compiled
(``fastq._core._producer.ProducerCore``): ``send`` picks the partition and frames the record
(partition, key, value, headers, timestamp; see ``Ring._put_record``) into the ring with
one CAS-guarded copy — no Python lock, no per-partition lists. Whoever drains (the
linger thread, ``flush``, or a ``send`` that found the accumulator full or
``batch_size`` reached) takes the ring's records in one read and appends each
partition's records as one RecordBatch whose fields point straight into the ring memory
(``ProducerCore._drain_ring``): no Python object per record. Draining is serialized by
one lock, so a partition's batches reach the log in the order their records were sent.
A drain whose append fails copies the records it could not append out of the ring
(``_held``, framed bytes) before committing its read; the next drain appends them
first. This module keeps the policy: the linger thread, flush, close, callbacks, errors.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from .._core._producer import IdempotentCore, ProducerCore
from .._core._ring import Ring
from .._core._storage import RecordMetadata, _producer_entry
from ..errors import Closed, InvalidArgument, RingFull, UsedAfterFork
from .idempotence import allocate_producer_id, open_transactional
from .metadata import BatchMetadata

__all__ = ["Producer", "IdempotentProducer"]

MIN_BUFFER_BYTES = 1 << 16
DEFAULT_BUFFER_BYTES = 4 << 20
MAX_BUFFER_BYTES = 1 << 30
_IDLE_WAIT_S = 1.0          # the linger thread re-checks for close at least this often


class Producer(ProducerCore):
    """Accumulates records in a ring and appends each partition's pending records as one
    RecordBatch once ``linger_ms`` has passed since the drainer saw the first of them
    (a background thread), or inline in ``send`` once ``batch_size`` bytes per partition
    in use are waiting. ``flush()`` appends everything sent before it now; leaving the
    ``with`` block flushes and stops the thread.

    Unkeyed records without a partition stick to one partition for ~16 KiB
    (``batch.size``), then move to another, chosen at random — per producer, as in
    Kafka's sticky partitioner.

    ``send`` returns nothing; pass ``on_delivery(meta: RecordMetadata)`` to learn each
    record's offset (called from whichever thread appended the batch, in offset order
    per partition, only for records appended), or use ``Topic.publish`` for a
    synchronous answer.

    No record is ever dropped silently. A record the log can never take is rejected by
    ``send`` itself — over the topic's ``max_record_bytes`` (RecordTooLarge naming the
    size and the limit), a bad key, value, header or partition (InvalidArgument) — and
    nothing is queued. A drain that fails (a full disk, a topic closed under the
    producer, a failed fsync) keeps every record it took, in send order (``pending``
    counts them), and the error reaches the caller: the next ``send`` or ``flush``
    first retries them and raises if that still fails (a ``send`` that raises has
    queued nothing); a later drain appends them before anything newer. ``close`` that
    still cannot append them raises the error, saying how many records are dropped
    with the producer. A batch committed before its fsync failed (``"group"``/``"always"``)
    is appended — readable, reported to ``on_delivery`` — and never appended again; the
    error still reaches the caller.

    Back pressure: the accumulator holds at most ``max_pending`` records and
    ``buffer_bytes`` bytes (a power of two, default 4 MiB). A ``send`` that finds it full
    appends everything pending inline (it never waits for another thread, and never
    drops). A record too large for the accumulator (over a quarter of ``buffer_bytes``)
    is appended directly, after everything sent before it.
    """

    def __init__(self, topic, *, linger_ms: float = 5.0, batch_size: int = 16384, max_pending: int = 100_000,
                 on_delivery: Callable[[RecordMetadata], None] | None = None,
                 buffer_bytes: int = DEFAULT_BUFFER_BYTES):
        if not isinstance(linger_ms, (int, float)) or isinstance(linger_ms, bool) or not 0 <= linger_ms <= 3.6e6:
            raise InvalidArgument(f"linger_ms must be a number in [0, 3600000], got {linger_ms!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidArgument(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(max_pending, int) or isinstance(max_pending, bool) or max_pending < 1:
            raise InvalidArgument(f"max_pending must be a positive int, got {max_pending!r}")
        if (not isinstance(buffer_bytes, int) or isinstance(buffer_bytes, bool)
                or not MIN_BUFFER_BYTES <= buffer_bytes <= MAX_BUFFER_BYTES):
            raise InvalidArgument(f"buffer_bytes must be an int in [{MIN_BUFFER_BYTES}, {MAX_BUFFER_BYTES}], "
                                  f"got {buffer_bytes!r}")
        if on_delivery is not None and not callable(on_delivery):
            raise InvalidArgument(f"on_delivery must be callable or None, got {type(on_delivery).__name__}")
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.on_delivery = on_delivery
        self._thread = None
        capacity = 1 << (buffer_bytes - 1).bit_length()
        # a record over a quarter of the ring bypasses it: keeps the ring's slack small
        ring = Ring(capacity, max_message_size=capacity // 4, max_messages=max_pending)
        # drain inline once this many bytes wait: batch_size for each partition in use,
        # but never more than half the ring (leave room for other senders meanwhile)
        self._init_core(topic, ring, linger_ms / 1000.0, min(batch_size * min(topic.partitions, 16), capacity // 2))
        self._drain_lock = threading.Lock()
        self._stop = threading.Event()         # set by close(): cuts a linger sleep short
        self._error: BaseException | None = None
        self._closed = False
        self.sent = 0          # records appended so far
        if self.linger > 0:
            self._thread = threading.Thread(target=self._run, name=f"fastq-producer-{topic.name}", daemon=True)
            self._thread.start()

    def _retry_or_raise(self) -> None:
        """A background (or inline) drain failed. When it held records, retry them now
        and raise what still fails; when it held none (its batch was appended, then the
        fsync failed), raise its error: nothing else would report it. A send that
        raises has queued nothing."""
        err, self._error = self._error, None
        if err is not None and not self._held:
            raise err
        self._drain()

    def _append_direct(self, p: int, value, key, headers, timestamp) -> None:
        ts = int(time.time() * 1000) if timestamp is None else timestamp
        with self._drain_lock:
            self._drain_locked(None)
            base = self.topic.log(p).append_batch([(value, key, headers, ts)])
            self.sent += 1
            if self.on_delivery is not None:
                self.on_delivery(RecordMetadata(self.topic.name, p, base, ts))

    def _drain(self, limit: int | None = None) -> int:
        with self._drain_lock:
            return self._drain_locked(limit)

    def _report(self, appended: list) -> None:
        cb = self.on_delivery
        name = self.topic.name
        for p, base, count, stamps in appended:
            self.sent += count
            if cb is not None:
                for i, ts in enumerate(stamps):
                    cb(RecordMetadata(name, p, base + i, ts))

    def _drain_locked(self, limit: int | None) -> int:
        """Append the records held from a failed drain, then what the ring holds (at most
        `limit` records from it). Holds _drain_lock. On an error the records not
        appended are held (see ProducerCore._drain_ring) and the error goes to the
        caller, after the callbacks for what was appended. Returns the records appended."""
        want = self.on_delivery is not None
        done = 0
        if self._held:
            appended: list = []
            try:
                done = self._drain_held(want, appended)    # raises: the ring waits its turn
            finally:
                self._report(appended)
        n = 0
        while limit is None or n < limit:
            appended = []
            try:
                taken = self._drain_ring(self.max_pending if limit is None else limit - n, want, appended)
            finally:
                self._report(appended)
            if not taken:
                break
            n += taken
        return done + n

    def _run(self) -> None:
        ring = self._ring
        while not self._closed:
            try:
                if self._error is not None or self._held:
                    # a drain failed (a full disk...): retry once a second, not per linger
                    if self._stop.wait(_IDLE_WAIT_S):
                        return
                elif not ring._wait_readable(_IDLE_WAIT_S):
                    continue
                elif self._stop.wait(self.linger):
                    return                       # close() drains what is left
                self._drain()
            except Closed as e:
                if not self._closed:             # the topic closed under us: the records
                    self._error = e              # are held; flush/close say so
                return
            except BaseException as e:  # reported to the caller on its next call
                self._error = e

    def _check_fork(self) -> None:
        if self._forked:
            raise UsedAfterFork(f"producer of topic {self.topic.name!r} was created before fork(): "
                                "it belongs to the parent; open a new one in the child")

    def _abandon_after_fork(self) -> None:
        """In a forked child: the accumulator is shared memory that the parent's linger
        thread drains, so the child must never take from it (it would append, or lose,
        the parent's records). Mark the producer closed; leave the ring alone."""
        self._forked = True
        self._closed = True
        self._thread = None
        self._error = None
        self._drain_lock = threading.Lock()      # may have been held by a parent thread

    def flush(self) -> int:
        """Append every record sent before this call now (first those an earlier drain
        could not append); returns how many were appended. Raises what the drain met (a
        full disk, a closed topic): the records not appended stay pending, in order, for
        the next ``flush``/``send``/``close``."""
        self._check_fork()
        err, self._error = self._error, None
        if err is not None and not self._held:
            raise err                        # appended, then the fsync failed: say so once
        if not (len(self._ring) or self._held):
            return 0
        return self._drain(len(self._ring) or None)   # held records first; raises if failing

    @property
    def pending(self) -> int:
        """Records sent but not yet appended (a snapshot), held ones included."""
        self._check_fork()
        return (0 if self._ring.closed else len(self._ring)) + len(self._held)

    def close(self) -> None:
        """Flush and stop the linger thread. Idempotent. Records it could not append
        (a full disk, a closed topic) are dropped with it and reported: :class:`Closed`
        saying how many, its ``__cause__`` the error that kept them. In a forked child, a
        producer inherited from the parent is already closed: this returns at once."""
        if self._closed:
            return
        err = None
        try:
            self.flush()
        except BaseException as e:
            err = e
        self._closed = True
        self._stop.set()
        try:
            self._ring.put_nowait(b"")           # wake the linger thread (skipped as a record)
        except RingFull:
            pass                                 # not empty: the thread is not asleep
        if self._thread is not None:
            self._thread.join()
        try:
            self._drain()                        # sends that raced with close; a last retry
        except BaseException as e:
            err = e
        self._hold_ring()
        left = len(self._held)
        self._held = []
        self._ring.close()
        if left:                                 # the error that kept them is the cause
            why = f": {err}" if err is not None else " (sent while it closed)"
            raise Closed(f"producer of topic {self.topic.name!r} closed with {left} record(s) "
                         f"not appended{why}") from err
        if err is not None:
            raise err

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()




class IdempotentProducer(IdempotentCore):
    """A synchronous producer whose retries are stored once (Kafka's idempotent producer,
    KIP-98): ``topic.producer(idempotent=True)``.

    It has a producer id, allocated broker-wide (:mod:`fastq.broker.idempotence`), and an
    epoch; every ``publish`` / ``publish_many`` is one RecordBatch stamped with them and
    with the partition's next sequence number. The partition's log checks the sequence
    under its writer lock, whichever process appends: a batch with the sequence range
    of one of the producer's last five batches there is a retry — nothing is appended
    and the original's offset is returned (``duplicates`` counts these); any other
    sequence than the next raises :class:`fastq.OutOfOrderSequence`.

    Retrying: a publish that raises once its batch was appended (a failed fsync, a
    timeout, an interrupt) did store it. The error carries ``partition`` and
    ``sequence``; publishing the same record again with ``partition=err.partition,
    sequence=err.sequence`` stores it once. ``err.sequence`` is None when no sequence
    was taken (nothing was appended): publish it again plainly. A publish without
    ``sequence`` is stamped with the producer's next sequence in the partition under
    the partition's writer lock, so it is never taken for a retry, and threads that
    share the producer never get the same one.

    ``transactional_id="name"``: a stable identity across restarts. The producer id is
    the same at every open and the epoch higher; the instance opened before is fenced
    (its next publish raises :class:`fastq.ProducerFenced`), and sequences continue
    where the previous instance stopped (``next_sequence``). A process that died after
    appending but before it learned so retries with the sequence it had used (its own
    record numbering, or ``next_sequence`` to learn what was stored) and the record is
    stored once.

    Thread-safety: may be shared by threads (sequences are taken under the partition's
    writer lock). Process-safety: any number of producers in any number of processes.
    """

    def __init__(self, topic, *, transactional_id: str | None = None):
        path = topic.broker.path
        if transactional_id is None:
            pid, epoch, fence = allocate_producer_id(path), 0, None
        else:
            pid, epoch, fence = open_transactional(path, transactional_id)
        self.transactional_id = transactional_id
        self._init_idem(topic, pid, epoch, fence)

    def publish_many(self, values, *, key=None, headers=None, partition: int | None = None,
                     timestamp: int | None = None, sequence: int | None = None):
        """Append many values as one idempotent batch (one sequence per record, from
        ``sequence``, default the next); returns a :class:`fastq.BatchMetadata` — the
        original's for a retry. The batch must fit ``max_record_bytes`` (an idempotent
        batch is never split)."""
        if timestamp is None:
            timestamp = int(time.time() * 1000)
        p, base, n, ts = self._publish_many(values, key, headers, partition, timestamp, sequence)
        return BatchMetadata(self.topic.name, p, base, n, ts)

    def next_sequence(self, partition: int) -> int:
        """The sequence this producer id's next batch in ``partition`` must start with:
        0 when nothing of it is stored there, else one past the last stored record. Read
        from the log (under its writer lock), so after a restart it tells what the
        previous instance stored."""
        self._check_fork()
        if self._closed:
            raise Closed("producer is closed")
        e = _producer_entry(self.topic.log(self.topic._check_partition(partition)), self.producer_id)
        return 0 if e is None else e.next_sequence

    def _check_fork(self) -> None:
        if self._forked:
            raise UsedAfterFork(f"producer of topic {self.topic.name!r} was created before fork(): "
                                "it belongs to the parent; open a new one in the child")

    def _abandon_after_fork(self) -> None:
        self._forked = True
        self._closed = True

    def flush(self) -> int:
        """Nothing waits in an idempotent producer: every publish appended. Returns 0."""
        return 0

    def close(self) -> None:
        """Stop publishing and unmap the fence. Idempotent."""
        self._closed = True
        if self._fence is not None:
            self._fence.close()

    def __enter__(self) -> "IdempotentProducer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        tx = f" transactional_id={self.transactional_id!r}" if self.transactional_id else ""
        return (f"<fastq.IdempotentProducer topic={self.topic.name!r} producer_id={self.producer_id} "
                f"epoch={self.epoch}{tx}{' closed' if self._closed else ''}>")
