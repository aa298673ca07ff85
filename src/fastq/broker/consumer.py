"""Consumers: read a topic alone, or as one member of a consumer group whose members in
any processes share the topic's partitions, with committed offsets.

Records are handed out zero-copy: ``rec.key`` and ``rec.value`` are memoryviews into the
partition's mapped segment. They stay valid as long as you hold them, but while any is
alive the log refuses to close (``BufferError`` from ``topic.close()`` /
``broker.close()``). Keep a copy with ``bytes(rec.value)`` and drop the record. Close
consumers before their broker.

Delivery: commit *after* processing (``commit(rec)``, ``commit()``, or
``auto_commit=True``, which commits what earlier polls handed out at the next poll, when
partitions are revoked and at close) and no record is ever skipped; a record is
delivered again only if it was not committed when its partition changed hands or the
consumer crashed (at-least-once).

Group protocol (membership files, flocks, range assignment; see docs/ARCHITECTURE.md,
"Consumer groups") lives in :mod:`fastq.broker.group`, committed offsets in
:mod:`fastq.broker.offsets`.
"""
from __future__ import annotations

import os
import time
import warnings
import weakref
from collections import deque
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from .config import validate_name
from ..errors import Closed, InvalidArgument, NotAssigned, OffsetOutOfRange, UsedAfterFork
from .group import GroupMember
from .._core._storage import MAX_POLL_RECORDS_CAP, ConsumerCore
from .._core import _storage
from .._core._storage import Pacer, Record
from ..log._process import fork_registry
from ..log.config import check_int as _check_int
from .offsets import OffsetStore

if TYPE_CHECKING:
    from .topic import Topic

__all__ = ["Consumer", "FROM_CHOICES"]

FROM_CHOICES = ("committed", "earliest", "latest")
# "futex": spin spin_us, then sleep until a commit wakes us (the default: no CPU while idle)
# "adaptive": learn the arrival rate; sleep through the gap, spin around the next arrival
WAIT_CHOICES = ("futex", "adaptive")
MIN_SESSION_TIMEOUT_MS = 100
MAX_SESSION_TIMEOUT_MS = 3_600_000
_CHECK_NS = 10_000_000          # during busy consumption, look at the group every 10 ms
_monotonic_ns = time.monotonic_ns

_LIVE: "weakref.WeakSet[Consumer]" = fork_registry()   # released in a forked child


class Consumer(ConsumerCore):
    """Consumes one topic: alone (``group=None``: every partition, no committed offsets)
    or as a member of consumer group ``group`` (each partition owned by exactly one
    member at a time, across processes; committed offsets).

    - iterate (``for rec in consumer``) to block for records one at a time, or
      ``poll(max_records, timeout)`` for a list;
    - ``commit()`` commits every position consumed so far, ``commit(rec)`` commits
      ``rec.offset + 1`` for its partition, ``commit({p: offset})`` exact offsets;
      ``committed()`` reads them back;
    - ``seek(p, offset)``, ``seek_to_beginning()``, ``seek_to_end()``,
      ``seek_to_timestamp(ts)`` move positions. Called before the first poll they also
      apply to partitions the consumer is assigned later (on their first assignment);
    - ``assignment()``, ``position(p)``, ``lag()`` describe the current state;
    - ``close()`` (idempotent; context manager) commits first if ``auto_commit``.

    ``from_`` says where this consumer starts in a partition it is assigned for the first
    time: ``"committed"`` (default) resumes from the group's committed offset (the
    earliest record if there is none, or without a group); ``"earliest"`` / ``"latest"``
    start at the first retained record / the log end regardless. Later assignments of
    the same partition resume from the committed offset. A position that falls out of
    the log (retention deleted it) is reset to the earliest record, or to the end for
    ``from_="latest"``. Records the log should hold but whose segment file is gone (deleted
    by hand) raise :class:`CorruptRecord` from ``poll`` and from opening the partition —
    never an empty poll loop; ``fastq repair`` moves the log start past them, and the
    position is then reset as above.

    ``session_timeout_ms``: a member that does not poll for this long is evicted from
    the group and rejoins when it next polls; a member that dies is noticed within
    ~100 ms. ``on_assign(partitions)`` / ``on_revoke(partitions)`` are called inside
    poll/iteration when partitions arrive / are about to leave (commit there if you do
    not use ``auto_commit``).

    Records' ``key`` and ``value`` are zero-copy memoryviews (see the module docstring:
    copy with ``bytes(rec.value)`` to keep one past closing).

    Waiting for records: ``spin_us`` (default 50) of spinning, then a futex sleep until a
    commit wakes it (``wait="futex"``, the default: no CPU while idle). ``wait="adaptive"``
    paces the waits with a :class:`fastq.Pacer` (``consumer.pacer``): it learns the gap
    between arrivals, sleeps through it and spins 50 µs either side of the next expected
    one — lower latency at a steady rate, at up to 100 µs of CPU per arrival.

    ``isolation`` (Kafka's ``isolation.level``): ``"read_uncommitted"`` (the default, as
    in Kafka) hands out every record, those of open and aborted transactions included;
    ``"read_committed"`` never hands out a record of an aborted transaction and stops
    at each partition's last stable offset (the first offset of its earliest open
    transaction) — while one holds it back, the consumer looks again every 2 ms instead
    of sleeping on the log's futex. Transaction markers are never handed out.

    Process-safety: any number of consumers in any processes may join the same group.
    Thread-safety: none — use a consumer from one thread. After ``fork()`` a consumer
    inherited by the child is closed there (the parent keeps its partitions).
    """

    def __init__(self, topic: "Topic", group: str | None = None, *, auto_commit: bool = False,
                 from_: str = "committed", session_timeout_ms: int = 10_000,
                 max_poll_records: int = 500, spin_us: float = 50.0, wait: str = "futex",
                 on_assign: Callable[[list[int]], None] | None = None,
                 on_revoke: Callable[[list[int]], None] | None = None,
                 isolation: str = "read_uncommitted"):
        self._closed = True
        self._forked = False
        self._member: GroupMember | None = None
        self._store: OffsetStore | None = None
        if group is not None:
            validate_name("group", group)
        if not isinstance(auto_commit, bool):
            raise InvalidArgument(f"auto_commit must be a bool, got {auto_commit!r}")
        if auto_commit and group is None:
            raise InvalidArgument("auto_commit=True needs a group: committed offsets belong to a group")
        if from_ not in FROM_CHOICES:
            raise InvalidArgument(f"from_={from_!r}: expected one of {', '.join(FROM_CHOICES)}")
        _check_int("session_timeout_ms", session_timeout_ms, MIN_SESSION_TIMEOUT_MS, MAX_SESSION_TIMEOUT_MS)
        _check_int("max_poll_records", max_poll_records, 1, MAX_POLL_RECORDS_CAP)
        if not isinstance(spin_us, (int, float)) or isinstance(spin_us, bool) or not 0 <= spin_us <= 1e6:
            raise InvalidArgument(f"spin_us={spin_us!r}: expected a number in [0, 1e6]")
        if isolation not in ("read_uncommitted", "read_committed"):
            raise InvalidArgument(f"isolation={isolation!r}: expected 'read_uncommitted' or 'read_committed'")
        self.isolation = isolation
        self._lso_held = False
        if wait not in WAIT_CHOICES:
            raise InvalidArgument(f"wait={wait!r}: expected one of {', '.join(WAIT_CHOICES)}")
        for name, cb in (("on_assign", on_assign), ("on_revoke", on_revoke)):
            if cb is not None and not callable(cb):
                raise InvalidArgument(f"{name} must be callable or None, got {type(cb).__name__}")
        if topic.closed:
            raise Closed(f"topic {topic.name!r} is closed")
        self.topic = topic
        self.group = group
        self.auto_commit = auto_commit
        self.from_ = from_
        self.session_timeout_ms = session_timeout_ms
        self.max_poll_records = max_poll_records
        self.spin_us = float(spin_us)
        #: the :class:`fastq.Pacer` of ``wait="adaptive"`` (its ``stats``), else None
        self.pacer = Pacer() if wait == "adaptive" else None
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._pos: dict[int, int] = {}         # owned partition -> next offset to hand out
        self._fetch: dict[int, int] = {}       # owned partition -> next offset to read
        self._readers: dict = {}               # owned partition -> tailing LogReader at _fetch[p]
        self._last_commit: dict[int, int | None] = {}   # owned partition -> committed offset
        self._target: set[int] = set()         # this member's share of the current view
        self._pending: dict[int, tuple] = {}   # seeks made before the first poll
        self._seen_before: set[int] = set()    # partitions this consumer was ever assigned
        self._buf: deque[Record] = deque()     # read but not yet handed out (iteration)
        self._polled = False
        self._rr = 0
        self._next_check = 0
        if group is None:
            self._closed = False
            try:
                for p in range(topic.partitions):
                    self._take(p)           # opens the log: CorruptRecord for a damaged one
            except BaseException:
                self.close()
                raise
        else:
            gdir = os.path.join(topic.broker.path, "groups", group)
            self._store = OffsetStore(os.path.join(gdir, "offsets", f"{topic.name}.offsets"),
                                      topic.partitions, sync=topic.durability in ("group", "always"))
            try:
                self._member = GroupMember(gdir, topic.name, topic.partitions, session_timeout_ms)
            except BaseException:
                self._store.close()
                raise
            self._closed = False
            try:
                self._maintain(_monotonic_ns(), force=True)
            except BaseException:
                self.close()
                raise
        _LIVE.add(self)

    # -- group maintenance --------------------------------------------------------------

    def _maintain(self, now: int, force: bool = False) -> None:
        """Heartbeat, notice view changes, revoke what is no longer ours, take what is."""
        self._next_check = now + _CHECK_NS
        m = self._member
        if m is None:
            return
        if not m.refresh(now) and not force:
            return
        if m.needs_rejoin:                     # evicted while alive: start over
            self._revoke(sorted(self._pos))
            m.rejoin()
        target = set(m.assigned())
        gone = [p for p in self._pos if p not in target]
        if gone:
            self._revoke(sorted(gone))
        self._target = target
        new = [p for p in sorted(target) if p not in self._pos and m.try_own(p)]
        if new:
            for i, p in enumerate(new):
                try:
                    self._take(p)
                except BaseException:
                    for q in new[i:]:
                        m.release(q)
                    raise
            if self._on_assign is not None:
                self._on_assign(new)

    def _take(self, p: int) -> None:
        """Start consuming partition p (its ownership flock is held)."""
        lg = self.topic.log(p)
        committed = self._store.get(p) if self._store is not None else None
        first = p not in self._seen_before
        spec = self._pending.pop(p, None) if first else None
        if spec is not None:
            off = self._resolve(p, spec)
        elif first and self.from_ == "earliest":
            off = lg.start_offset
        elif first and self.from_ == "latest":
            off = lg.end_offset
        else:
            off = committed if committed is not None else self._reset_offset(p)
        if not lg.start_offset <= off <= lg.end_offset:
            off = self._reset_offset(p)
        self._seen_before.add(p)
        self._pos[p] = self._fetch[p] = off
        self._last_commit[p] = committed

    def _revoke(self, parts: list[int]) -> None:
        """Give partitions up: on_revoke, auto-commit, drop buffered records, release."""
        if not parts:
            return
        try:
            if self._on_revoke is not None:
                self._on_revoke(list(parts))
            if self.auto_commit:
                self._commit_positions(parts)
        finally:
            if self._buf:
                gone = set(parts)
                self._buf = deque(r for r in self._buf if r.partition not in gone)
            for p in parts:
                self._pos.pop(p, None)
                self._fetch.pop(p, None)
                self._readers.pop(p, None)
                self._last_commit.pop(p, None)
                if self._store is not None:
                    self._store.forget(p)
                if self._member is not None:
                    self._member.release(p)

    def _reset_offset(self, p: int) -> int:
        lg = self.topic.log(p)
        return lg.end_offset if self.from_ == "latest" else lg.start_offset

    def _resolve(self, p: int, spec: tuple) -> int:
        lg = self.topic.log(p)
        kind = spec[0]
        if kind == "offset":
            return spec[1]
        if kind == "beginning":
            return lg.start_offset
        if kind == "end":
            return lg.end_offset
        off = lg.offset_for_timestamp(spec[1])
        return lg.end_offset if off is None else off

    # -- reading ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            if self._forked:
                raise UsedAfterFork(f"consumer of topic {self.topic.name!r} was inherited across "
                                    f"fork(): open a new consumer in the child")
            raise Closed(f"consumer of topic {self.topic.name!r}"
                         f"{'' if self.group is None else f' (group {self.group!r})'} is closed")

    def _read_partition(self, out, p: int, max_records: int) -> int:
        """Read up to max_records of partition p into ``out``, (re)opening its tailing
        reader and resetting a position the log no longer has."""
        lg = self.topic.log(p)
        pos = self._fetch[p]
        end = lg.end_offset
        if end <= pos:
            if end < pos:                       # the log was truncated under us
                self._readers.pop(p, None)
                self._set_position(p, self._reset_offset(p))
            return 0
        try:
            if pos < lg.start_offset:
                raise OffsetOutOfRange(f"offset {pos} was deleted by retention")
            # one tailing reader per partition, kept while the position only moves by
            # reading: no segment lookup and index search per poll
            rd = self._readers.get(p)
            if self.isolation == "read_committed":
                # Kafka's read_committed: aborted transactions skipped, stop at the LSO
                self.topic._abort_expired_if_held(lg)
                if rd is None or rd.next_offset != pos:
                    rd = self._readers[p] = _storage._txn_reader(lg, pos, None, True)
                lso = _storage._txn_lso(lg)
                _storage._set_reader_end(rd, lso)
                if lso <= pos:
                    self._lso_held = True        # records exist past an open transaction
                    return 0
            elif rd is None or rd.next_offset != pos:
                rd = self._readers[p] = lg.read(pos, follow=True)
            recs = rd.read_many(max_records)
        except OffsetOutOfRange:                # retention deleted our position
            self._readers.pop(p, None)
            self._set_position(p, self._reset_offset(p))
            return 0
        if recs:
            self._fetch[p] = recs[-1].offset + 1
            out.extend(recs)
        elif rd.next_offset > pos:              # nothing but a gap (compaction)
            self._fetch[p] = rd.next_offset
        return len(recs)

    def _wait(self, timeout: float | None) -> None:
        """Block until an owned partition has data past our read position, the group
        view moves, or ``timeout`` passes — in slices, so view changes are noticed."""
        if self._lso_held:                    # held back by an open transaction: no futex wakes
            self._lso_held = False            # us when it ends; look again in a moment
            time.sleep(0.002 if timeout is None else max(0.0, min(timeout, 0.002)))
            return
        m = self._member
        if m is not None:
            slice_s = m.sweep_interval_ns / 1e9
            timeout = slice_s if timeout is None else min(timeout, slice_s)
        if len(self._fetch) == 1:             # one partition: wait on its log's own futex word
            (p, off), = self._fetch.items()
            self.topic.log(p).wait(off, timeout, self.spin_us, self.pacer)
        elif self._fetch:
            self.topic.wait_any(dict(self._fetch), timeout, self.spin_us, self.pacer)
        elif m is not None:
            m.wait(timeout)

    def _sync_positions(self) -> None:
        """With nothing buffered, everything read has been handed out (or skipped)."""
        self._pos.update(self._fetch)

    # poll(max_records=500, timeout=None) is ConsumerCore.poll: records ready at the
    # tailing readers are handed out there, compiled; every other case comes here.

    def _poll(self, max_records: int, timeout_ns: int) -> list[Record]:
        """The whole of ``poll`` past its timeout check (``timeout_ns``: the timeout,
        checked, in ns; -1 for none): max_records, auto-commit, group maintenance,
        buffered records, and waiting for the first record."""
        self._check_open()
        _check_int("max_records", max_records, 1, MAX_POLL_RECORDS_CAP)
        if timeout_ns >= 0:
            deadline = _monotonic_ns() + timeout_ns
        self._polled = True
        if self.auto_commit:
            self._commit_positions(list(self._pos))
        member = self._member
        while True:
            if member is not None:               # group view, heartbeat (a no-op without a group)
                self._maintain(_monotonic_ns())
            if self._buf:
                return self._take_buffered(max_records)
            out: list[Record] = []
            if self._read_into(out, max_records):
                self._pos.update(self._fetch)    # _sync_positions, inlined: the wake-up path
                return out
            self._sync_positions()
            if timeout_ns < 0:
                self._wait(None)
            else:
                left = deadline - _monotonic_ns()
                if left <= 0:
                    return out
                self._wait(left / 1e9)

    def _take_buffered(self, max_records: int) -> list[Record]:
        buf = self._buf
        out = [buf.popleft() for _ in range(min(max_records, len(buf)))]
        pos = self._pos
        for rec in out:
            pos[rec.partition] = rec.offset + 1
        return out

    def __iter__(self) -> Iterator[Record]:
        return self

    # __next__ is ConsumerCore.__next__: a record already read ahead is handed out
    # there, compiled; refilling the buffer, waiting and group checks come here.

    def _next_slow(self) -> Record:
        if self._closed:
            self._check_open()
        self._polled = True
        now = _monotonic_ns()
        if now >= self._next_check:
            self._maintain(now)
        buf = self._buf
        while not buf:
            self._sync_positions()
            if self.auto_commit:
                self._commit_positions(list(self._pos))
            if self._read_into(buf, self.max_poll_records):
                break
            self._sync_positions()
            self._wait(None)
            self._maintain(_monotonic_ns())
            buf = self._buf
        rec = buf.popleft()
        self._pos[rec.partition] = rec.offset + 1
        return rec

    # -- committing ---------------------------------------------------------------------

    def _need_store(self) -> OffsetStore:
        if self._store is None:
            raise InvalidArgument(f"consumer of topic {self.topic.name!r} has no group: committed "
                                  f"offsets need topic.consumer(group=...)")
        return self._store

    def _not_owned(self, p: int, what: str) -> NotAssigned:
        return NotAssigned(f"cannot {what} partition {p} of topic {self.topic.name!r}: this consumer "
                           f"owns {sorted(self._pos)}")

    def _commit_positions(self, parts: Iterable[int]) -> None:
        store = self._store
        if store is None:
            return
        changed = False
        for p in parts:
            off = self._pos[p]
            if off != self._last_commit[p]:
                store.put(p, off)
                self._last_commit[p] = off
                changed = True
        if changed and store.sync_commits:
            store.sync()

    def commit(self, what=None) -> None:
        """Commit consumed positions durably (atomic; survives kill -9 and reopen):

        - ``commit()``: every owned partition's position (the offset after the last
          record handed out);
        - ``commit(record)``: ``record.offset + 1`` for the record's partition;
        - ``commit({partition: offset})``: those offsets (each in [0, log end]).

        Raises NotAssigned for a partition this consumer does not own now.
        """
        self._check_open()
        store = self._need_store()
        if what is None:
            self._commit_positions(list(self._pos))
            return
        if type(what) is Record or (hasattr(what, "partition") and hasattr(what, "offset")):
            topic = getattr(what, "topic", None)
            if topic is not None and topic != self.topic.name:
                raise InvalidArgument(f"record of topic {topic!r} committed to a consumer of "
                                      f"{self.topic.name!r}")
            p = what.partition
            if p not in self._pos:
                raise self._not_owned(p, "commit")
            off = what.offset + 1
            store.put(p, off)
            self._last_commit[p] = off
        elif isinstance(what, dict):
            checked = []
            for p, off in what.items():
                self.topic._check_partition(p)
                if p not in self._pos:
                    raise self._not_owned(p, "commit")
                if not isinstance(off, int) or isinstance(off, bool):
                    raise InvalidArgument(f"offset for partition {p} must be an int, got {off!r}")
                end = self.topic.log(p).end_offset
                if not 0 <= off <= end:
                    raise OffsetOutOfRange(f"commit of offset {off} for partition {p} of topic "
                                           f"{self.topic.name!r}: valid offsets are [0, {end}]")
                checked.append((p, off))
            for p, off in checked:
                store.put(p, off)
                self._last_commit[p] = off
        else:
            raise InvalidArgument(f"commit() takes nothing, a Record or a {{partition: offset}} dict, "
                                  f"not {type(what).__name__}")
        if store.sync_commits:
            store.sync()

    def committed(self) -> dict[int, int | None]:
        """{partition: the group's committed offset, or None} for every partition of the
        topic (whoever owns it). Without a group, all None."""
        self._check_open()
        if self._store is None:
            return {p: None for p in range(self.topic.partitions)}
        return {p: self._store.get(p) for p in range(self.topic.partitions)}

    # -- positions ----------------------------------------------------------------------

    def _set_position(self, p: int, off: int) -> None:
        self._pos[p] = self._fetch[p] = off
        if self._buf:
            self._buf = deque(r for r in self._buf if r.partition != p)

    def _partitions_arg(self, partitions) -> list[int]:
        if partitions is None:
            return list(range(self.topic.partitions))
        if isinstance(partitions, int):
            partitions = [partitions]
        return [self.topic._check_partition(p) for p in partitions]

    def _seek_spec(self, spec: tuple, partitions, explicit: bool) -> None:
        """Apply a seek to owned partitions now; before the first poll, remember it for
        partitions not owned yet. After that, naming an unowned partition is an error."""
        for p in self._partitions_arg(partitions):
            if p in self._pos:
                self._set_position(p, self._resolve(p, spec))
            elif not self._polled:
                self._pending[p] = spec
            elif explicit:
                raise self._not_owned(p, "seek")

    def seek(self, partition: int, offset: int) -> None:
        """Consume ``partition`` from ``offset`` next. OffsetOutOfRange (naming the valid
        range) unless start <= offset <= end."""
        self._check_open()
        p = self.topic._check_partition(partition)
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise InvalidArgument(f"offset must be an int, got {type(offset).__name__}")
        lg = self.topic.log(p)
        lo, hi = lg.start_offset, lg.end_offset
        if not lo <= offset <= hi:
            raise OffsetOutOfRange(f"seek to offset {offset} of partition {p} of topic "
                                   f"{self.topic.name!r}: valid offsets are [{lo}, {hi}]")
        self._seek_spec(("offset", offset), [p], True)

    def seek_to_beginning(self, partitions: Iterable[int] | None = None) -> None:
        """Move to the first retained record (of ``partitions``; default: all owned)."""
        self._check_open()
        self._seek_spec(("beginning",), partitions, partitions is not None)

    def seek_to_end(self, partitions: Iterable[int] | None = None) -> None:
        """Move to the log end: only records published from now on."""
        self._check_open()
        self._seek_spec(("end",), partitions, partitions is not None)

    def seek_to_timestamp(self, timestamp: int, partitions: Iterable[int] | None = None) -> None:
        """Move to the first record with timestamp >= ``timestamp`` (ms since the
        epoch), or to the end of a partition that has none."""
        self._check_open()
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise InvalidArgument(f"timestamp must be an int (ms since the epoch), got {timestamp!r}")
        self._seek_spec(("timestamp", timestamp), partitions, partitions is not None)

    def assignment(self) -> list[int]:
        """The partitions this consumer owns now, sorted."""
        self._check_open()
        return sorted(self._pos)

    def position(self, partition: int) -> int:
        """The offset of the next record this consumer hands out from ``partition``."""
        self._check_open()
        p = self.topic._check_partition(partition)
        if p not in self._pos:
            raise self._not_owned(p, "report the position of")
        return self._pos[p]

    def lag(self) -> dict[int, int]:
        """{owned partition: records between this consumer's position and the log end}."""
        self._check_open()
        return {p: self.topic.log(p).end_offset - off for p, off in sorted(self._pos.items())}

    @property
    def member_id(self) -> str | None:
        """This consumer's id in its group (None without a group); changes on rejoin."""
        return None if self._member is None else self._member.member_id

    # -- lifetime -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Leave the group: on_revoke, commit if ``auto_commit``, release partitions,
        remove membership. Idempotent."""
        if self._closed:
            return
        _LIVE.discard(self)
        try:
            if self._member is not None:
                self._revoke(sorted(self._pos))   # on_revoke may still commit
        finally:
            self._closed = True
            self._buf.clear()
            self._pos.clear()
            self._fetch.clear()
            self._readers.clear()
            if self._member is not None:
                self._member.leave()
            if self._store is not None:
                self._store.close()

    def _abandon_after_fork(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._forked = True
        self._buf.clear()
        if self._member is not None:
            self._member.abandon()
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:
                pass
            finally:
                warnings.warn(f"unclosed fastq consumer of topic {self.topic.name!r}",
                              ResourceWarning, source=self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"partitions={sorted(self._pos)}"
        group = "" if self.group is None else f" group={self.group!r}"
        return f"<fastq.Consumer topic={self.topic.name!r}{group} {state}>"
