"""Transactions (Kafka's KIP-98) on the local log: ``with broker.transaction("id") as tx``.

A transaction is a transactional producer's run of publishes, to any topics and
partitions, made visible together (COMMIT) or never (ABORT) to ``read_committed``
readers. As in Kafka:

- the transactional id (:mod:`fastq.broker.idempotence`) gives the producer id and, at
  each open, a higher epoch, which fences the instance opened before;
- every batch of a transaction is an idempotent batch with the *transactional* bit
  (attributes bit 4) set;
- the transaction ends with a control batch (a COMMIT or ABORT marker, attributes
  transactional | control, ``fq_batch_encode_control``) appended to every partition the
  transaction wrote to;
- readers with ``isolation="read_committed"`` skip the batches of aborted transactions
  and stop at the partition's *last stable offset*: the first offset of the earliest
  transaction there that has no marker yet (``fastq._core._storage.TxnIndex``).

The transaction coordinator's state is a small file per transactional id,
``<broker>/producers/<transactional_id>.txn`` — two slots of SLOT_SIZE bytes, written
alternately in place (``pwrite``; fdatasync for durability ``"group"``/``"always"``
brokers); integers little-endian::

    slot i at i * SLOT_SIZE:
        0   magic    8 bytes  b"FQTXST\\x00\\x01"
        8   seq      u64      write number; the valid slot with the higher one is current
        16  length   u32      payload bytes
        20  check    u32      CRC-32C of bytes [8, 20) and of the payload
        24  payload  JSON     {"state": S, "producer_id": P, "epoch": E,
                               "partitions": [[topic, partition], ...],
                               "started_ms": T, "timeout_ms": D,
                               "deadline_ms": T + 2 * D}

States (Kafka's coordinator states): ``"ongoing"`` (written, with the partition added,
*before* the first append to each new partition), ``"prepare_commit"`` /
``"prepare_abort"`` (written before the first marker when the transaction wrote to more
than one partition or carries group offsets — then the decision must outlive a crash
between markers; with one partition the marker itself is the decision),
``"complete_commit"`` / ``"complete_abort"`` / ``"complete"`` (after the last marker;
written lazily — by the next transaction's first record or at close — except when the
transaction carried offsets). A prepare record may hold ``"offsets": [[group, topic,
{partition: offset}], ...]`` (``tx.commit_offsets``), written to the groups' offset
stores after the COMMIT markers. A torn or damaged slot is ignored (the other one is the
state); both damaged is :class:`fastq.CorruptRecord`.

Recovery, each time the transactional id is opened (after the epoch bump has fenced the
previous instance), for a state not complete: on each listed partition where the
producer id still has a transaction without a marker (the partition's TxnIndex), a
COMMIT marker for ``prepare_commit`` (rolled forward), else ABORT; for
``prepare_commit`` the offsets are written (again: setting them twice is harmless); then
a complete record. A partition already marked gets nothing (a marker is applied only to
an open transaction anyway). An ongoing transaction whose process died and whose id
nobody reopens is aborted after its deadline by :func:`abort_expired`
(``Broker.abort_expired_transactions``; a read_committed read held back by an open
transaction calls it, at most once a second per topic); a state whose markers are all
written is left alone (its complete record is only late). The deadline is written as
start + 2 x ``timeout_ms``, and a transaction on the same partitions as the one before
reuses that one's "ongoing" record (no write) while its deadline is at least
``timeout_ms`` away: a transaction left open is aborted between ``timeout_ms`` and
2 x ``timeout_ms`` after it began.

Process-safety: one transactional id, one live instance (fencing); the state file is
written only by the instance holding the current epoch.
"""
from __future__ import annotations

import json
import os
import struct
import threading
import time

from .._core import _storage
from .._core._codec import crc32c, os_errors
from .._core._producer import IdempotentCore
from .. import errors as fastq_errors
from ..errors import (Closed, CorruptRecord, InvalidArgument, ProducerFenced, TransactionStateError, UnknownTopic,
                      UsedAfterFork)
from .idempotence import PRODUCERS_DIR, open_transactional
from .metadata import BatchMetadata
from .offsets import OffsetStore

__all__ = ["Transaction", "TransactionalProducer", "abort_expired", "read_state", "batch_status", "finish"]

MAGIC = b"FQTXST\x00\x01"
SUFFIX = ".txn"
SLOT_SIZE = 65536
_HEAD = struct.Struct("<8sQII")          # magic, seq, length, check
ATTR_TRANSACTIONAL = 0x10
DEFAULT_TIMEOUT_MS = 60_000


def _check_slot(data: bytes):
    """(seq, payload dict) of a slot, or None when it is empty, torn or damaged."""
    if len(data) < _HEAD.size:
        return None
    magic, seq, length, check = _HEAD.unpack_from(data, 0)
    if magic != MAGIC or length > SLOT_SIZE - _HEAD.size or len(data) < _HEAD.size + length:
        return None
    payload = data[_HEAD.size:_HEAD.size + length]
    if crc32c(data[8:20] + payload) != check:
        return None
    try:
        return seq, json.loads(payload)
    except ValueError:
        return None


def read_state(path: str):
    """``(seq, state dict)`` of a transaction state file, ``(0, None)`` when it holds none."""
    with os_errors("read", path):
        try:
            with open(path, "rb") as f:
                data = f.read(2 * SLOT_SIZE)
        except FileNotFoundError:
            return 0, None
    if not data.strip(b"\x00"):
        return 0, None
    slots = [s for s in (_check_slot(data[:SLOT_SIZE]), _check_slot(data[SLOT_SIZE:])) if s]
    if not slots:
        raise CorruptRecord(f"{path}: neither slot of the transaction state is intact", path, 0)
    return max(slots, key=lambda s: s[0])


class _StateFile:
    """The transactional id's state file, kept open by its live instance."""

    def __init__(self, path: str, sync: bool):
        self.path = path
        self.sync = sync
        self.seq, self.state = read_state(path)
        with os_errors("open", path):
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, state: dict) -> None:
        self.write_raw(json.dumps(state, separators=(",", ":")), len(state["partitions"]))

    def write_raw(self, text: str, nparts: int) -> None:
        payload = text.encode()
        if len(payload) > SLOT_SIZE - _HEAD.size:
            raise TransactionStateError(f"transaction touches too many partitions ({nparts}) for its "
                                        "state file")
        seq = self.seq + 1
        tail = struct.pack("<QI", seq, len(payload))
        buf = MAGIC + tail + struct.pack("<I", crc32c(tail + payload)) + payload
        with os_errors("write", self.path):
            os.pwrite(self.fd, buf, (seq % 2) * SLOT_SIZE)
            if self.sync:
                os.fdatasync(self.fd)
        self.seq, self.state = seq, None   # (read back only at open)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _part_json(name: str, p: int, _cache: dict = {}) -> str:
    """``[name, p]`` as JSON (cached: every state record repeats it)."""
    k = (name, p)
    j = _cache.get(k)
    if j is None:
        if len(_cache) > 4096:
            _cache.clear()
        j = _cache[k] = json.dumps([name, p], separators=(",", ":"))
    return j


def _apply_offsets(broker, offsets, consumers=None) -> None:
    """Commit ``offsets`` (``[[group, topic, {partition: offset}], ...]``) to the groups'
    offset stores (the same files ``Consumer.commit`` writes); setting them again is
    harmless, so recovery may repeat it."""
    for group, name, offs in offsets:
        c = (consumers or {}).get((group, name))
        store = c._store if c is not None and c._store is not None and not c._store.closed else None
        mine = store is None
        if mine:
            try:
                topic = broker.topic(name, create=False)
            except UnknownTopic:
                continue
            store = OffsetStore(os.path.join(broker.path, "groups", group, "offsets", f"{name}.offsets"),
                                topic.partitions, sync=topic.durability in ("group", "always"))
        try:
            for p, off in offs.items():
                store.put(int(p), off)
                if c is not None and int(p) in c._last_commit:
                    c._last_commit[int(p)] = off
            if store.sync_commits:
                store.sync()
        finally:
            if mine:
                store.close()


def _open_in(broker, partitions, producer_id: int) -> list:
    """The (topic, partition) of ``partitions`` where ``producer_id`` has a transaction
    without a marker (topics deleted since are skipped)."""
    out = []
    for name, p in partitions:
        try:
            topic = broker.topic(name, create=False)
        except UnknownTopic:
            continue
        lg = topic.log(p)
        _storage._txn_lso(lg)
        if producer_id in lg._txnidx.open:
            out.append((topic, p))
    return out


def _markers(parts, producer_id: int, epoch: int, fence, commit: bool, hook=None) -> None:
    """A COMMIT or ABORT marker on each (Topic, partition)."""
    for topic, p in parts:
        _storage._append_marker(topic.log(p), producer_id, epoch, commit, fence)
        if hook is not None:
            hook("marker")


class TransactionalProducer:
    """The live instance of a transactional id (``broker.transaction(id)`` opens or
    reuses it): its producer id, epoch and state file; one transaction at a time.
    Opening it fences the previous instance and finishes what that one left
    (see the module docstring). Not for threads to share mid-transaction."""

    def __init__(self, broker, transactional_id: str, *, timeout_ms: int = DEFAULT_TIMEOUT_MS):
        if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms < 1:
            raise InvalidArgument(f"timeout_ms must be a positive int, got {timeout_ms!r}")
        self.broker = broker
        self.transactional_id = transactional_id
        self.timeout_ms = timeout_ms
        self.producer_id, self.epoch, self._fence = open_transactional(broker.path, transactional_id)
        self._closed = False
        self._current: Transaction | None = None
        self._lock = threading.Lock()
        self._hook = None                    # tests: called with each step's name
        self._forked = False
        self._cores: dict = {}               # topic name -> (Topic, transactional IdempotentCore)
        self._pending: tuple | None = None   # (state, parts, started_ms) whose complete record is not written
        self._disk: tuple | None = None      # (state, {(topic, partition)}, deadline_ms) of the last record written
        try:
            path = os.path.join(broker.path, PRODUCERS_DIR, transactional_id + SUFFIX)
            self._state = _StateFile(path, broker.durability != "os")
            self._recover()
        except BaseException:
            self._fence.close()
            raise

    def _recover(self) -> None:
        """Finish what the previous instance left: markers where its transaction is
        still open (COMMIT for a prepared commit, else ABORT), then the complete record."""
        st = self._state.state
        if not st or st["state"].startswith("complete"):
            return
        commit = st["state"] == "prepare_commit"
        parts = _open_in(self.broker, st["partitions"], st["producer_id"])
        _markers(parts, st["producer_id"], self.epoch, self._fence, commit)
        if commit and st.get("offsets"):
            _apply_offsets(self.broker, st["offsets"])
        done = "complete_commit" if commit else "complete_abort" if parts or st["state"] != "ongoing" else "complete"
        self._state.write(dict(st, state=done))

    def _topic_core(self, topic):
        """(Topic, its transactional IdempotentCore), cached per topic name."""
        name = topic if isinstance(topic, str) else topic.name
        hit = self._cores.get(name)
        if hit is not None and not hit[0].closed:
            return hit
        if isinstance(topic, str):
            topic = self.broker.topic(topic, create=False)     # UnknownTopic
        core = IdempotentCore()
        core._init_idem(topic, self.producer_id, self.epoch, self._fence)
        core._attrs = ATTR_TRANSACTIONAL
        self._cores[name] = hit = (topic, core)
        return hit

    def _write_state(self, state: str, parts: list, started_ms: int, offsets: list | None = None) -> None:
        deadline = started_ms + 2 * self.timeout_ms
        self._state.write_raw(
            '{"state":"%s","producer_id":%d,"epoch":%d,"partitions":[%s],"started_ms":%d,"timeout_ms":%d,'
            '"deadline_ms":%d%s}'
            % (state, self.producer_id, self.epoch, ",".join(_part_json(n, p) for n, p in parts), started_ms,
               self.timeout_ms, deadline, "" if not offsets else ',"offsets":' + json.dumps(offsets)), len(parts))
        self._disk = (state, {(n, p) for n, p in parts}, deadline)

    def _check_fence(self) -> None:
        if _storage.fence_word_epoch(self._fence.load()) != self.epoch:
            raise ProducerFenced(f"transactional id {self.transactional_id!r} epoch {self.epoch} was "
                                 "fenced: it was opened again")

    def begin(self) -> "Transaction":
        """Start a transaction (``broker.transaction`` calls this)."""
        with self._lock:
            if self._closed:
                raise Closed(f"transactional producer {self.transactional_id!r} is closed")
            if self._current is not None:
                raise TransactionStateError(f"transactional id {self.transactional_id!r} already has a "
                                            "transaction under way (transactions do not nest)")
            self._check_fence()
            self._current = Transaction(self)
            return self._current

    def _abandon_after_fork(self) -> None:
        """In a forked child: unusable, nothing written, nothing closed that the parent
        uses (its transaction goes on in the parent)."""
        self._closed = True
        self._forked = True
        for _, core in self._cores.values():
            core._closed = True
            core._forked = True

    def _abandon(self) -> None:
        """Unusable from now on, without writing anything (a failed commit or abort)."""
        self._closed = True
        self._state.close()
        self._fence.close()

    def close(self) -> None:
        """Abort a transaction under way, then release the fence and the state file."""
        if self._closed:
            return
        if self._current is not None:
            try:
                self._current.abort()
            except (ProducerFenced, Closed):
                pass
        if self._pending is not None:
            try:
                self._check_fence()
                self._write_state(*self._pending)
            except (ProducerFenced, fastq_errors.StorageError):
                pass                         # the next open finds the markers written
            self._pending = None
        self._closed = True
        self._state.close()
        self._fence.close()


class Transaction:
    """One transaction: ``publish`` / ``publish_many`` to any topics, then ``commit()`` or
    ``abort()`` — or use it as a context manager (commit on a clean exit, abort on an
    exception). After either, it takes nothing more (:class:`fastq.TransactionStateError`)."""

    def __init__(self, owner: TransactionalProducer):
        self._owner = owner
        self._parts: list = []               # [topic, partition] in the order first written
        self._seen: set = set()
        self._started_ms = int(time.time() * 1000)
        self._offsets: dict = {}             # (group, topic) -> {partition: offset}
        self._consumers: dict = {}           # (group, topic) -> Consumer
        self.state = "ongoing"               # then "committed" / "aborted"

    @property
    def transactional_id(self) -> str:
        return self._owner.transactional_id

    def _check_ongoing(self) -> None:
        if self._owner._forked:
            raise UsedAfterFork(f"transaction of {self.transactional_id!r} was begun before fork(): it "
                                "belongs to the parent; begin one in the child")
        if self.state != "ongoing":
            raise TransactionStateError(f"transaction of {self.transactional_id!r} is {self.state}: "
                                        "it takes no more publishes, commit or abort")

    def _add_partition(self, topic, p: int) -> None:
        """Kafka's AddPartitionsToTxn: recorded in the state file before the first append
        there (this record also completes the transaction before, see ``_end``)."""
        k = (topic.name, p)
        if k in self._seen:
            return
        self._parts.append([topic.name, p])
        o = self._owner
        d = o._disk
        if d is None or d[0] != "ongoing" or k not in d[1] or d[2] - self._started_ms < o.timeout_ms:
            try:
                o._write_state("ongoing", self._parts, self._started_ms)
            except BaseException:
                self._parts.pop()
                raise
        # else: the record on disk already says "ongoing" with this partition (the
        # transaction before, on the same partitions, left it; its complete record is
        # lazy), and its deadline is at least timeout_ms away: nothing to write
        o._pending = None
        self._seen.add(k)
        if o._hook is not None:
            o._hook("add_partition")

    def publish(self, topic, value, *, key=None, headers=None, partition=None, timestamp=None):
        """Publish one record to ``topic`` (a name or a Topic) inside the transaction;
        returns its RecordMetadata. Visible to read_committed readers once committed."""
        self._check_ongoing()
        topic, core = self._owner._topic_core(topic)
        p = topic.choose_partition(key, partition)
        self._add_partition(topic, p)
        m = core.publish(value, key=key, headers=headers, partition=p, timestamp=timestamp)
        if self._owner._hook is not None:
            self._owner._hook("publish")
        return m

    def publish_many(self, topic, values, *, key=None, headers=None, partition=None, timestamp=None):
        """Publish many values as one transactional batch to one partition of ``topic``;
        returns a :class:`fastq.BatchMetadata`."""
        self._check_ongoing()
        topic, core = self._owner._topic_core(topic)
        p = topic.choose_partition(key, partition)
        self._add_partition(topic, p)
        if timestamp is None:
            timestamp = int(time.time() * 1000)
        p, base, n, ts = core._publish_many(values, key, headers, p, timestamp, None)
        if self._owner._hook is not None:
            self._owner._hook("publish")
        return BatchMetadata(topic.name, p, base, n, ts)

    def commit_offsets(self, consumer, offsets: dict | None = None) -> None:
        """Commit ``consumer``'s group offsets with this transaction (Kafka's
        ``sendOffsetsToTransaction``: consume -> process -> produce, exactly once): they
        move when the transaction commits, never if it aborts. ``offsets``:
        ``{partition: offset}`` (default: the consumer's positions, the offset after the
        last record it handed out, for every partition it owns). Open the transactional
        id (``broker.transaction``) *before* the consumer reads its committed offsets
        (before its first poll): that open rolls a killed instance's prepared commit
        forward, offsets included; a consumer that read them earlier would resume from
        the older offset and process those records again. Start the consumer with the
        default ``from_="committed"``."""
        self._check_ongoing()
        store = getattr(consumer, "_store", None)
        if store is None or getattr(consumer, "group", None) is None:
            raise InvalidArgument("commit_offsets needs a consumer with a group (topic.consumer(group=...))")
        if offsets is None:
            offsets = dict(consumer._pos)
        if not isinstance(offsets, dict):
            raise InvalidArgument(f"offsets must be a dict {{partition: offset}}, got {type(offsets).__name__}")
        for p, off in offsets.items():
            consumer.topic._check_partition(p)
            if not isinstance(off, int) or isinstance(off, bool) or off < 0:
                raise InvalidArgument(f"offset {off!r} of partition {p}: expected an int >= 0")
        k = (consumer.group, consumer.topic.name)
        self._offsets.setdefault(k, {}).update(offsets)
        self._consumers[k] = consumer

    def _end(self, commit: bool) -> None:
        self._check_ongoing()
        o = self._owner
        try:
            o._check_fence()
            offsets = [[g, t, offs] for (g, t), offs in self._offsets.items()] if commit else None
            if self._parts or offsets:
                parts = [(o._topic_core(name)[0], p) for name, p in self._parts]
                if len(parts) > 1 or offsets:
                    # several partitions: the decision is recorded before the first marker
                    o._write_state("prepare_commit" if commit else "prepare_abort", self._parts,
                                   self._started_ms, offsets)
                    if o._hook is not None:
                        o._hook("prepare")
                # one partition: its marker is the decision (recovery looks for it)
                _markers(parts, o.producer_id, o.epoch, o._fence, commit, o._hook)
                if offsets:
                    _apply_offsets(o.broker, offsets, self._consumers)
                    if o._hook is not None:
                        o._hook("offsets")
                # the complete record is written by the next transaction's first record
                # (or at close): recovery finds the markers written and writes nothing
                o._pending = ("complete_commit" if commit else "complete_abort", self._parts, self._started_ms)
                if offsets:                  # eagerly: a recovery must not set them again later
                    o._write_state(*o._pending)
                    o._pending = None
                if o._hook is not None:
                    o._hook("complete")
        except BaseException:
            # unfinished: this instance stops here; the next open of the transactional id
            # finishes it from the state file (a prepared commit rolled forward)
            self.state = "failed"
            o._current = None
            o._abandon()
            raise
        self.state = "committed" if commit else "aborted"
        o._current = None

    def commit(self) -> None:
        """Make every record of the transaction visible to read_committed readers: a
        prepare-commit state record, a COMMIT marker on each partition written to, a
        complete-commit record. Once the prepare record is written the commit is
        decided: a crash after it is rolled forward at the next open."""
        self._end(True)

    def abort(self) -> None:
        """Discard the transaction: ABORT markers on each partition written to."""
        self._end(False)

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.state != "ongoing":
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def abort_expired(broker, now_ms: int | None = None) -> list[str]:
    """Finish every transaction whose ``timeout_ms`` has passed without an end: its
    transactional id is opened (which fences a live instance, as Kafka's coordinator
    does) and recovered (ongoing → aborted, prepared → finished). Returns the ids."""
    d = os.path.join(broker.path, PRODUCERS_DIR)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    done = []
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return done
    for name in names:
        if not name.endswith(SUFFIX):
            continue
        try:
            _, st = read_state(os.path.join(d, name))
        except CorruptRecord:
            continue
        if not st or st["state"].startswith("complete") or st.get("deadline_ms", st["started_ms"] + st["timeout_ms"]) > now:
            continue
        if not _open_in(broker, st["partitions"], st["producer_id"]):
            continue                         # its markers are written (the complete record is lazy)
        TransactionalProducer(broker, name[:-len(SUFFIX)]).close()
        done.append(name[:-len(SUFFIX)])
    return done


def batch_status(topic, partition: int, offset: int, producer_id: int) -> str:
    """The fate of producer ``producer_id``'s transactional batch at ``offset`` of
    ``topic``/``partition`` as the log says now: ``"open"`` (no marker yet),
    ``"aborted"`` or ``"committed"`` (the partition's TxnIndex, brought up to date)."""
    lg = topic.log(partition)
    _storage._txn_lso(lg)
    idx = lg._txnidx
    first = idx.open.get(producer_id)
    if first is not None and first <= offset:
        return "open"
    r = idx.aborted.get(producer_id) or ()
    for i in range(0, len(r), 2):
        if r[i] <= offset <= r[i + 1]:
            return "aborted"
    return "committed"


def finish(broker, transactional_id: str) -> None:
    """Open ``transactional_id`` once and close it: its live instance, if any, is fenced
    and the transaction it left open is finished — rolled forward when its commit was
    prepared, else aborted (what a redelivered exactly-once message needs to know)."""
    TransactionalProducer(broker, transactional_id).close()
