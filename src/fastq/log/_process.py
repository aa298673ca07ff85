"""Per-process machinery of the log: the pretoucher thread and the at-fork registry
that releases a forked child's inherited objects (logs, brokers, consumers)."""
from __future__ import annotations

import os
import threading
import weakref

from .._core._storage import Segment

__all__ = ["fork_registry", "PRETOUCHER"]


class _Pretoucher:
    """One daemon thread per process that populates the active segments' mappings ahead
    of their writers (``Segment.prefault``: MADV_POPULATE_WRITE, GIL released), as
    Chronicle Queue's pretoucher does. Without it the append that first writes into a
    4 KiB page pays the page fault — ext4's page_mkwrite and a fresh page, measured at
    ~45 µs on a KVM guest, on every 24th 100-byte append — which is what set the p99 of
    paced publish → tail latency. The writer asks (``LogCore._prepare_locked``) when
    less than half a window ahead of its position is populated; the thread populates a
    window ahead. The window (``Log.pretouch_window``) starts at 32 KiB and doubles, up
    to 16 MiB, each time the writer has outrun the thread, which waits for the GIL to
    take a request and to finish one: a writer in a tight loop holds the GIL for a
    switch interval at a time. It halves again when a request comes more than a second
    after the previous one: what is populated stays resident (and is written back as
    zeros), so an idle topic should not hold more than a few pages ahead.

    Set FASTQ_PRETOUCH=0 to turn it off (every append then faults its own pages)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._work: dict = {}                  # segment -> populate up to
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def request(self, seg: Segment, upto: int) -> None:
        with self._lock:
            self._work[seg] = max(upto, self._work.get(seg, 0))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fastq-pretouch", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                self._wake.clear()
                work, self._work = self._work, {}
            for seg, upto in work.items():
                try:
                    seg.prefault(upto)
                finally:
                    seg.pf_requested = False


PRETOUCHER = _Pretoucher() if os.environ.get("FASTQ_PRETOUCH", "1") != "0" else None


def fork_registry() -> "weakref.WeakSet":
    """A set of this process's open objects (logs, brokers, consumers) that a forked
    child releases at the fork: an ``os.register_at_fork`` hook calls each member's
    ``_abandon_after_fork()`` in the child — before anything else runs there — and one
    member failing (a descriptor closed under it) does not stop the others."""
    members: "weakref.WeakSet" = weakref.WeakSet()

    def release() -> None:
        for obj in list(members):
            try:
                obj._abandon_after_fork()
            except OSError:           # a descriptor closed under it: the others still go
                pass
        members.clear()

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=release)
    return members


# the pretoucher's thread was not forked and its lock may be held: a child starts afresh
if PRETOUCHER is not None and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=PRETOUCHER.__init__)
