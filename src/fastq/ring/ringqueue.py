"""RingQueue: a drop-in for ``multiprocessing.Queue`` on top of :class:`fastq.Ring`.

Objects are serialised with ``dumps`` (``pickle.dumps`` by default) and written straight
into shared memory by the calling thread: there is no feeder thread and no pipe, so
``join_thread``/``cancel_join_thread`` have nothing to do, ``put`` returns once the message
is visible to every consumer, and ``qsize`` works on every platform.

Differences from ``multiprocessing.Queue`` worth knowing:

* the queue is bounded in bytes (``capacity_bytes``) as well as in items (``maxsize``):
  ``put`` blocks (or raises :class:`fastq.RingFull`, a ``queue.Full``) when either is
  reached, where ``multiprocessing.Queue`` buffers without limit in the feeder thread;
* one serialised object may take at most ``capacity_bytes - 8`` bytes
  (:class:`fastq.RecordTooLarge` otherwise).

Safety: like the Ring beneath it, any number of threads and processes may put and get.
"""
from __future__ import annotations

import pickle
from typing import Any, Callable, Iterable

from .._core._ring import Ring

__all__ = ["RingQueue"]

DEFAULT_CAPACITY_BYTES = 1 << 22


class RingQueue:
    """``RingQueue(maxsize=0, *, capacity_bytes=4 MiB, dumps=pickle.dumps, loads=pickle.loads,
    name=None, wait="futex", ctx=None)``

    ``maxsize`` <= 0 means no item limit (only ``capacity_bytes``). ``name`` puts the ring in
    a named shared-memory file other processes can open with ``RingQueue.attach(name)``;
    without one the queue reaches processes by inheritance (fork) or pickling (spawn,
    forkserver), like ``multiprocessing.Queue``. ``ctx`` is accepted for signature
    compatibility and ignored.
    """

    def __init__(
        self,
        maxsize: int = 0,
        *,
        capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
        dumps: Callable[[Any], bytes] = pickle.dumps,
        loads: Callable[[bytes], Any] = pickle.loads,
        name: str | None = None,
        wait: str = "futex",
        ctx: Any = None,
        _ring: Ring | None = None,
    ) -> None:
        self._maxsize = maxsize if maxsize and maxsize > 0 else 0
        self._dumps = dumps
        self._loads = loads
        self._ring = _ring if _ring is not None else Ring(
            capacity_bytes, name=name, wait=wait, max_messages=self._maxsize)

    @classmethod
    def attach(cls, name: str, *, dumps=pickle.dumps, loads=pickle.loads, wait="futex") -> "RingQueue":
        """Open the queue another process created with ``RingQueue(name=name)``."""
        ring = Ring.attach(name, wait=wait)
        return cls(ring.max_messages, dumps=dumps, loads=loads, _ring=ring)

    @property
    def ring(self) -> Ring:
        """The underlying :class:`fastq.Ring`."""
        return self._ring

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        self._ring.put(self._dumps(obj), block, timeout)

    def put_nowait(self, obj: Any) -> None:
        self._ring.put(self._dumps(obj), False)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self._loads(self._ring.get(block, timeout))

    def get_nowait(self) -> Any:
        return self._loads(self._ring.get(False))

    def put_many(self, objs: Iterable[Any], block: bool = True, timeout: float | None = None) -> None:
        """Put a batch all or nothing (see :meth:`fastq.Ring.put_many`)."""
        dumps = self._dumps
        self._ring.put_many([dumps(o) for o in objs], block, timeout)

    def get_many(self, max_messages: int = 2**31 - 1, block: bool = True,
                 timeout: float | None = None) -> list:
        """Wait for one item, then take up to ``max_messages`` without waiting again."""
        loads = self._loads
        return [loads(m) for m in self._ring.get_many(max_messages, block, timeout)]

    def qsize(self) -> int:
        return self._ring.qsize()

    def empty(self) -> bool:
        return self._ring.empty()

    def full(self) -> bool:
        if self._maxsize and self._ring.qsize() >= self._maxsize:
            return True
        return self._ring.full()

    def close(self) -> None:
        """Close this process's handle (other processes keep theirs). Idempotent."""
        self._ring.close()

    def join_thread(self) -> None:
        """No feeder thread to join: put() has already written everything."""

    def cancel_join_thread(self) -> None:
        """No feeder thread: nothing to cancel."""

    def unlink(self) -> None:
        """Remove a named queue's shared-memory file."""
        self._ring.unlink()

    def __enter__(self) -> "RingQueue":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self):
        return (_rebuild, (self._ring, self._maxsize, self._dumps, self._loads))

    def __repr__(self) -> str:
        return f"<fastq.RingQueue maxsize={self._maxsize} ring={self._ring!r}>"


def _rebuild(ring: Ring, maxsize: int, dumps, loads) -> RingQueue:
    return RingQueue(maxsize, dumps=dumps, loads=loads, _ring=ring)
