"""The batching producer: accumulate records per partition, append them as batches.

Thread-safety: ``send`` may be called from any number of threads. Process-safety: each
process has its own producers; their batches interleave safely in the partition logs.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from .errors import Closed, InvalidArgument
from .topic import RecordMetadata

__all__ = ["Producer"]


class Producer:
    """Accumulates records per partition and appends each partition's pending records
    as one RecordBatch when ``batch_size`` bytes are waiting or ``linger_ms`` has passed
    since the first of them (a background thread flushes on time). ``flush()`` appends
    everything now; leaving the ``with`` block flushes and stops the thread.

    ``send`` returns nothing; pass ``on_delivery(meta: RecordMetadata)`` to learn each
    record's offset, or use ``Topic.publish`` for a synchronous answer. An error in a
    background flush is raised by the next ``send``/``flush``/``close``. With more than
    ``max_pending`` records waiting, ``send`` flushes inline (back pressure) instead of
    growing without bound.
    """

    def __init__(self, topic, *, linger_ms: float = 5.0, batch_size: int = 16384, max_pending: int = 100_000,
                 on_delivery: Callable[[RecordMetadata], None] | None = None):
        if not isinstance(linger_ms, (int, float)) or linger_ms < 0:
            raise InvalidArgument(f"linger_ms must be >= 0, got {linger_ms!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgument(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(max_pending, int) or max_pending < 1:
            raise InvalidArgument(f"max_pending must be a positive int, got {max_pending!r}")
        self.topic = topic
        self.linger = linger_ms / 1000.0
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.on_delivery = on_delivery
        self._pending: dict[int, list] = {}
        self._bytes: dict[int, int] = {}
        self._since: dict[int, float] = {}
        self._count = 0
        self._cond = threading.Condition()
        self._append_lock = threading.Lock()
        self._error: BaseException | None = None
        self._closed = False
        self.sent = 0          # records appended so far
        self._thread = None
        if self.linger > 0:
            self._thread = threading.Thread(target=self._run, name=f"fastq-producer-{topic.name}", daemon=True)
            self._thread.start()

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def send(self, value, *, key=None, headers=None, partition: int | None = None,
             timestamp: int | None = None) -> None:
        """Queue one record for its partition (chosen as by ``Topic.publish``)."""
        if self._closed:
            raise Closed("producer is closed")
        self._raise_pending_error()
        if value is not None and not isinstance(value, (bytes, bytearray, memoryview)):
            if isinstance(value, str):
                raise InvalidArgument("value must be bytes-like, not str (encode it first)")
            try:
                value = bytes(memoryview(value))
            except TypeError:
                raise InvalidArgument(f"value must be bytes-like or None, got {type(value).__name__}") from None
        size = 0 if value is None else len(value)
        if timestamp is None:
            timestamp = int(time.time() * 1000)
        flush_now = False
        with self._cond:
            p = self.topic.choose_partition(key, partition, size)
            lst = self._pending.get(p)
            if lst is None:
                lst = self._pending[p] = []
                self._bytes[p] = 0
                self._since[p] = time.monotonic()
                self._cond.notify()
            lst.append((value, key, headers, timestamp))
            self._bytes[p] += size + 16
            self._count += 1
            if self._bytes[p] >= self.batch_size or self.linger == 0:
                flush_now = True
            elif self._count >= self.max_pending:
                flush_now = True
                p = None
        if flush_now:
            # take and append under one lock, so batches of a partition reach the log
            # in the order their records were sent (per-key order)
            with self._append_lock:
                with self._cond:
                    work = self._take(p) if p is not None else self._take_all()
                if work:
                    self._append(work)

    def _take(self, p: int) -> list:
        lst = self._pending.pop(p, None)
        self._bytes.pop(p, None)
        self._since.pop(p, None)
        if lst:
            self._count -= len(lst)
            return [(p, lst)]
        return []

    def _take_all(self) -> list:
        out = []
        for p in list(self._pending):
            out.extend(self._take(p))
        return out

    def _append(self, work: list) -> int:
        n = 0
        for p, records in work:
            base = self.topic.log(p).append_batch(records)
            n += len(records)
            if self.on_delivery is not None:
                for i, rec in enumerate(records):
                    self.on_delivery(RecordMetadata(self.topic.name, p, base + i, rec[3]))
        self.sent += n
        return n

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                if not any(now - t >= self.linger for t in self._since.values()):
                    wait = None
                    if self._since:
                        wait = max(0.0, min(self._since.values()) + self.linger - now)
                    self._cond.wait(wait)
                    continue
            with self._append_lock:
                with self._cond:
                    now = time.monotonic()
                    work = []
                    for p in [p for p, t in self._since.items() if now - t >= self.linger]:
                        work.extend(self._take(p))
                try:
                    if work:
                        self._append(work)
                except BaseException as e:  # reported to the caller on its next call
                    self._error = e

    def flush(self) -> int:
        """Append every pending record now; returns how many were appended."""
        self._raise_pending_error()
        with self._append_lock:
            with self._cond:
                work = self._take_all()
            n = self._append(work) if work else 0
        self._raise_pending_error()
        return n

    @property
    def pending(self) -> int:
        return self._count

    def close(self) -> None:
        """Flush and stop the linger thread. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
