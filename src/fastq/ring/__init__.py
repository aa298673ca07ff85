"""The shared-memory ring: :class:`Ring` (compiled, :mod:`fastq._core._ring`; see
docs/RING.md) and :class:`RingQueue`, a ``queue.Queue``-like face over it for Python
objects (``ringqueue``)."""
from .._core._ring import Ring
from .ringqueue import RingQueue

__all__ = ["Ring", "RingQueue"]
