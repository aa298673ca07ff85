"""A readable pure-Python ring with the same semantics and byte accounting as fastq.Ring.

Same record format (8-byte header: u32 length + u32 zero, payload padded to 8 bytes), same
monotonic head/tail counters, same "slack instead of wrap" rule: a record that runs past the
end of the data area continues into `max_message_size` extra bytes behind it. One process,
any number of threads (a Condition guards everything). The shared test module
(test_ring.py) runs against both this and the compiled ring.
"""
from __future__ import annotations

import struct
import threading
import time

from fastq.errors import Closed, InvalidArgument, RecordTooLarge, RingEmpty, RingFull

REC_HDR = 8
MIN_CAPACITY = 16
MAX_MESSAGE = 0x7FFFFFF0


def align8(n: int) -> int:
    return (n + 7) & ~7


def record_size(length: int) -> int:
    return REC_HDR + align8(length)


class ReferenceRing:
    def __init__(self, capacity, *, max_message_size=None, max_messages=0, **_ignored):
        if not isinstance(capacity, int) or isinstance(capacity, bool) or not (
                MIN_CAPACITY <= capacity <= 1 << 40):
            raise InvalidArgument(f"bad capacity {capacity!r}")
        cap = MIN_CAPACITY
        while cap < capacity:
            cap *= 2
        limit = min(cap - REC_HDR, MAX_MESSAGE)
        if max_message_size is None:
            max_message_size = limit
        if not 0 <= max_message_size <= limit:
            raise InvalidArgument(f"bad max_message_size {max_message_size!r}")
        if max_messages < 0:
            raise InvalidArgument(f"bad max_messages {max_messages!r}")
        self.capacity = cap
        self.max_message_size = max_message_size
        self.max_messages = max_messages
        self._data = bytearray(cap + align8(max_message_size))
        self._head = self._tail = 0          # monotonic byte counters
        self._puts = self._gets = 0          # monotonic message counters
        self._cond = threading.Condition()
        self._closed = False

    # -- helpers
    def _check(self):
        if self._closed:
            raise Closed("the ring is closed")

    def _room(self, need: int, n: int) -> bool:
        if self._tail - self._head + need > self.capacity:
            return False
        return not self.max_messages or self._puts - self._gets + n <= self.max_messages

    def _deadline(self, block, timeout):
        if not block:
            return 0.0
        if timeout is None:
            return None
        if timeout < 0:
            raise InvalidArgument("'timeout' must be a non-negative number")
        return time.monotonic() + timeout

    def _wait(self, ready, deadline, exc):
        while not ready():
            if self._closed:
                raise Closed("the ring was closed while this call waited")
            if deadline == 0.0:
                raise exc
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise exc
            self._cond.wait(left)

    def _write(self, msg: bytes):
        off = self._tail % self.capacity
        self._data[off:off + REC_HDR] = struct.pack("<II", len(msg), 0)
        self._data[off + REC_HDR:off + REC_HDR + len(msg)] = msg
        self._tail += record_size(len(msg))
        self._puts += 1

    def _read(self) -> bytes:
        off = self._head % self.capacity
        (length, _zero) = struct.unpack_from("<II", self._data, off)
        msg = bytes(self._data[off + REC_HDR:off + REC_HDR + length])
        self._head += record_size(length)
        self._gets += 1
        return msg

    # -- API
    def put(self, msg, block=True, timeout=None):
        self.put_many([msg], block, timeout)

    def put_nowait(self, msg):
        self.put(msg, False)

    def put_many(self, msgs, block=True, timeout=None):
        msgs = [bytes(memoryview(m)) for m in msgs]
        if not msgs:
            return
        deadline = self._deadline(block, timeout)
        with self._cond:
            self._check()
            for m in msgs:
                if len(m) > self.max_message_size:
                    raise RecordTooLarge(f"message of {len(m)} bytes exceeds max_message_size")
            need = sum(record_size(len(m)) for m in msgs)
            if need > self.capacity or (self.max_messages and len(msgs) > self.max_messages):
                raise RecordTooLarge(f"batch of {need} bytes can never fit")
            self._wait(lambda: self._room(need, len(msgs)), deadline, RingFull("ring full"))
            for m in msgs:
                self._write(m)
            self._cond.notify_all()

    def get(self, block=True, timeout=None):
        return self.get_many(1, block, timeout)[0]

    def get_nowait(self):
        return self.get(False)

    def get_many(self, max_messages=2**31 - 1, block=True, timeout=None):
        if max_messages < 1:
            raise InvalidArgument("max_messages must be >= 1")
        deadline = self._deadline(block, timeout)
        with self._cond:
            self._check()
            self._wait(lambda: self._tail != self._head, deadline, RingEmpty("ring empty"))
            out = []
            while self._tail != self._head and len(out) < max_messages:
                out.append(self._read())
            self._cond.notify_all()
            return out

    def get_into(self, buffer, block=True, timeout=None):
        dst = memoryview(buffer)
        if dst.readonly:
            raise TypeError("buffer is read-only")
        deadline = self._deadline(block, timeout)
        with self._cond:
            self._check()
            self._wait(lambda: self._tail != self._head, deadline, RingEmpty("ring empty"))
            (length,) = struct.unpack_from("<I", self._data, self._head % self.capacity)
            if length > dst.nbytes:
                raise RecordTooLarge(f"the next message has {length} bytes")
            msg = self._read()
            dst.cast("B")[:length] = msg
            self._cond.notify_all()
            return length

    def qsize(self):
        self._check()
        return self._puts - self._gets

    def empty(self):
        return self.qsize() == 0

    def full(self):
        self._check()
        return not self._room(REC_HDR, 1)

    @property
    def used_bytes(self):
        return self._tail - self._head

    @property
    def closed(self):
        return self._closed

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
