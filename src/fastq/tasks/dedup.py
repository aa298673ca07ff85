"""Job deduplication — BullMQ's ``deduplication: {id, ttl, extend, replace}`` — across
processes: ``tq.add(name, data, deduplication={"id": "user-42"})``.

Modes (docs/TASKS.md, "Deduplication"):

- **simple** (``{"id"}``): while the job added with this id is not finished (waiting,
  delayed, active) and not removed, adding another with the same id adds nothing and
  returns that job;
- **throttle** (``{"id", "ttl"}``): for ``ttl`` seconds after the job was added, adding
  another with the id adds nothing, whether the job finished or not (a removed job
  deduplicates nothing);
- **debounce** (``{"id", "ttl", "extend": True}`` and/or ``"replace": True``): ``extend``
  restarts the ``ttl`` at each deduplicated add; ``replace`` makes the new add replace the
  deduplicated job while that one is still ``delayed`` (not started: it is removed and the
  new job added, with its own data, options and delay) — the debounce of BullMQ, where
  the last of a burst runs.

Each deduplicated add emits a ``deduplicated`` event on the kept job (``dedup_id``).

On disk: ``<broker>/topics/<name>.dedup/`` — a compacted topic, one partition, key = the
dedup id (UTF-8), value = msgspec JSON ``{"job": job id, "ms": set (ms since the epoch),
"exp": expiry in ms or null}``; a tombstone forgets the id (``remove_deduplication_key``).
The latest record of an id is its entry. ``<broker>/tasks/<name>/dedup.lock`` — an flock
held exclusively around each add with ``deduplication`` (never by a plain ``add``): the
entry's check, the job's add and the entry's record are one step for every process.
The kernel drops the flock when its holder dies.

Crash rule: the job is added first, then its entry recorded. A kill -9 between the two
leaves the job without an entry — the next add with that id is not deduplicated against
it (that add never returned, so nothing acknowledged is affected); an entry whose job does
not exist (removed, or never stored) deduplicates nothing in simple mode.

Thread- and process-safety: as :class:`fastq.TaskQueue`'s.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import TYPE_CHECKING, Any, Iterator

import msgspec

from .._core import _storage
from .._core._codec import os_errors
from ..errors import CorruptRecord, InvalidArgument, JobActive, UnknownJob
from .job import FINISHED, Job, now_ms

if TYPE_CHECKING:
    from .taskqueue import TaskQueue

__all__ = ["Deduplicator", "validate_dedup", "DEDUP_SUFFIX"]

DEDUP_SUFFIX = ".dedup"
LOCK_FILE = "dedup.lock"
MAX_DEDUP_ID = 512
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


def validate_dedup(v) -> dict:
    """The stored form of the ``deduplication`` option, or InvalidArgument."""
    if not isinstance(v, dict) or "id" not in v or set(v) - {"id", "ttl", "extend", "replace"}:
        raise InvalidArgument("deduplication must be a dict {'id': str, 'ttl': seconds (optional), "
                              f"'extend': bool, 'replace': bool}}, got {v!r}")
    did, ttl = v["id"], v.get("ttl")
    if not isinstance(did, str) or not 0 < len(did) <= MAX_DEDUP_ID:
        raise InvalidArgument(f"deduplication id must be a non-empty str of at most {MAX_DEDUP_ID} characters, "
                              f"got {did!r}")
    out: dict[str, Any] = {"id": did}
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
            raise InvalidArgument(f"deduplication ttl must be None or seconds > 0, got {ttl!r}")
        out["ttl"] = float(ttl)
    for k in ("extend", "replace"):
        f = v.get(k, False)
        if not isinstance(f, bool):
            raise InvalidArgument(f"deduplication {k} must be True or False, got {f!r}")
        if f:
            if ttl is None:
                raise InvalidArgument(f"deduplication {k}=True needs a ttl (debounce mode)")
            out[k] = True
    return out


class Deduplicator:
    """The dedup entries of one task queue (module docstring); made on first use."""

    def __init__(self, tq: "TaskQueue"):
        self.tq = tq
        self.topic = tq.broker.topic(tq.name + DEDUP_SUFFIX, partitions=1, compact=True)
        self.log = self.topic.log(0)
        self.lock_path = os.path.join(os.path.dirname(tq._ctl.lock_path), LOCK_FILE)
        self._mutex = threading.Lock()          # this process's threads, and the entries dict
        self._entries: dict[str, dict] = {}
        self._seen = 0

    def _catch_up(self) -> None:
        lg = self.log
        end = lg.end_offset
        pos = max(self._seen, lg.start_offset)
        if pos < end:
            for rec in lg.read(pos, end):
                k = bytes(rec.key).decode()
                if rec.value is None:
                    self._entries.pop(k, None)
                    continue
                try:
                    self._entries[k] = _dec.decode(rec.value)
                except msgspec.DecodeError as e:
                    raise CorruptRecord(f"dedup topic {self.topic.name!r}: record {rec.offset}: {e}") from None
        self._seen = end

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._mutex:
            with os_errors("open the task queue dedup lock", self.lock_path):
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                _storage.flock(fd, True, True)
                try:
                    self._catch_up()
                    yield
                finally:
                    _storage.funlock(fd)
            finally:
                os.close(fd)

    def _live(self, e: dict | None, now: int) -> dict | None:
        """The state of the entry's job if the entry still deduplicates, else None."""
        if e is None:
            return None
        s = self.tq._index.get(e["job"])
        if s is None:                             # removed (or never stored): as BullMQ, the key goes too
            return None
        if e.get("exp") is not None:
            return s if now < e["exp"] else None
        return s if s["state"] not in FINISHED else None

    def _record(self, did: str, jid: str, now: int, ttl: float | None) -> None:
        v = {"job": jid, "ms": now, "exp": None if ttl is None else now + int(ttl * 1000)}
        self.log.append(_enc.encode(v), did.encode())
        self._entries[did] = v

    def add(self, name: str, data: Any, opts: dict, dd: dict) -> Job:
        """``TaskQueue.add`` with ``deduplication=dd`` (validated) and the other ``opts``."""
        tq = self.tq
        did, ttl = dd["id"], dd.get("ttl")
        with self._locked():
            now = now_ms()
            e = self._entries.get(did)
            kept = self._live(e, now)
            if kept is not None:
                if dd.get("replace") and kept.get("state") == "delayed":
                    try:
                        tq.remove(kept["id"])             # the admin lock: refuses once a worker took it
                    except (JobActive, UnknownJob):
                        pass
                    else:
                        job = tq._add_many([(name, data, opts)])[0]
                        self._record(did, job.id, now, ttl if dd.get("extend") else (e["exp"] - now) / 1000)
                        tq._events.emit([(kept["id"].encode(), {"event": "deduplicated", "dedup_id": did,
                                                                "replaced_by": job.id})])
                        return job
                if dd.get("extend"):
                    self._record(did, e["job"], now, ttl)
                tq._events.emit([(e["job"].encode(), {"event": "deduplicated", "dedup_id": did})])
                return Job(tq, e["job"], kept)
            job = tq._add_many([(name, data, opts)])[0]
            self._record(did, job.id, now, ttl)
            return job

    def job_id(self, did: str) -> str | None:
        """The id of the job that deduplicates ``did`` now, or None."""
        with self._locked():
            e = self._entries.get(did)
            return e["job"] if self._live(e, now_ms()) is not None else None

    def remove_key(self, did: str) -> bool:
        """Forget ``did``: the next add with it is not deduplicated. False if it had no entry."""
        with self._locked():
            if did not in self._entries:
                return False
            self.log.append_batch([(None, did.encode(), None)])
            del self._entries[did]
            return True
