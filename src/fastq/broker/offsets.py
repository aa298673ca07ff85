"""Committed offsets of one consumer group for one topic: a small mmap'd file with one
fixed slot per partition, so a commit is a few stores into shared memory (~1 µs), not a
file write.

File ``<broker>/groups/<group>/offsets/<topic>.offsets``, all integers little-endian::

    header, HEADER_SIZE = 64 bytes
        0   magic      8 bytes  b"FQOFFS\\x00\\x01"
        8   version    u32      FORMAT_VERSION (1)
        12  slot_size  u32      SLOT_SIZE (64)
        16  reserved   48 bytes zero
    slot of partition p at HEADER_SIZE + SLOT_SIZE * p: two HALF_SIZE = 32-byte halves
        0   seq        u64      commit sequence of this slot, from 1
        8   offset     i64      the committed offset (next record to consume)
        16  check      u32      CRC-32C of pack("<QqI", seq, offset, p)
        20  reserved   12 bytes zero

The file holds ``(size - 64) / 64`` slots; it grows (never shrinks: others have it
mapped) when a topic gains partitions. Every byte mapped is allocated on disk first
(``posix_fallocate``, or zeros written where the filesystem cannot): a commit is a store
into the mapping, and a store into an unallocated page of a full disk is a SIGBUS, so a
full disk must be :class:`DiskFull` when the file is created, grown or opened instead. A commit writes the half *not* holding the newest
commit, so a process killed mid-store tears at most the half being written and the other
half still holds the previous commit: a commit is atomic.

Read rule, per slot: a half that is all zero is empty; a half whose check matches is
valid; anything else is torn. The valid half with the larger ``seq`` is the committed
offset. No valid half and at most one torn half (a first commit cut short) means nothing
was committed (None). Two torn halves cannot come from a crash — only from a damaged or
foreign file — and raise :class:`CorruptRecord`, as does a bad header or size.

Durability: the slot lives in the page cache, so a commit survives the crash of any
process. For topics with durability ``"group"`` or ``"always"`` the committer msyncs
the file before ``commit()`` returns, so a commit also survives power failure.

Process-safety: many processes map the file; each slot has one writer at a time — the
member holding the partition's ownership flock — which calls :meth:`OffsetStore.get`
after taking ownership and before its first :meth:`OffsetStore.put`. Thread-safety: none
(one OffsetStore per consumer).
"""
from __future__ import annotations

import errno
import mmap
import os
import struct

from .._core import _storage
from .._core._codec import crc32c, os_errors
from .config import MAX_PARTITIONS
from ..errors import Closed, CorruptRecord, InvalidArgument

__all__ = ["OffsetStore", "read_committed", "HEADER_SIZE", "SLOT_SIZE", "MAGIC"]

MAGIC = b"FQOFFS\x00\x01"
FORMAT_VERSION = 1
HEADER_SIZE = 64
SLOT_SIZE = 64
HALF_SIZE = 32
MAX_FILE_SIZE = HEADER_SIZE + SLOT_SIZE * MAX_PARTITIONS

_HEADER = struct.Struct("<8sII48x")
_HALF = struct.Struct("<QqI")            # seq, offset, check (the rest of the half stays zero)
_CHECKED = struct.Struct("<QqI")         # what the check covers: seq, offset, partition
_ZERO_HALF = bytes(HALF_SIZE)
_I64_MAX = (1 << 63) - 1


def _check(seq: int, offset: int, partition: int) -> int:
    return crc32c(_CHECKED.pack(seq, offset, partition))


def _allocate(fd: int, start: int, end: int) -> None:
    """Make sure bytes [start, end) of the file have disk blocks, extending it to ``end``
    (the mapping's stores then never fault on a full disk). Raises OSError (ENOSPC)."""
    try:
        os.posix_fallocate(fd, start, end - start)
        return
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    # No fallocate on this filesystem: write zeros, but only past the end of the file —
    # below it another process may be storing a commit through its mapping right now.
    start = max(start, os.fstat(fd).st_size)
    zeros = bytes(max(end - start, 0))
    done = 0
    while done < len(zeros):
        done += os.pwrite(fd, zeros[done:], start + done)


def _read_slot(buf, p: int, path: str) -> tuple[int, int, int] | None:
    """(seq, half, offset) of partition p's newest valid commit in ``buf`` (the read
    rule in the module docstring), or None when nothing was committed."""
    base = HEADER_SIZE + SLOT_SIZE * p
    best = None
    torn = 0
    for half in (0, 1):
        at = base + HALF_SIZE * half
        if buf[at:at + HALF_SIZE] == _ZERO_HALF:
            continue
        seq, offset, check = _HALF.unpack_from(buf, at)
        if seq == 0 or offset < 0 or check != _check(seq, offset, p):
            torn += 1
            continue
        if best is None or seq > best[0]:
            best = (seq, half, offset)
    if best is None and torn == 2:
        raise CorruptRecord(f"{path}: committed-offset slot of partition {p} holds "
                            f"garbage (both halves fail their check)", path, base)
    return best


def read_committed(path: str) -> dict[int, int | None]:
    """{partition: committed offset or None} of every slot in the offsets file at
    ``path``, read without writing or mapping anything ({} when the file is missing):
    for tools that inspect a group while its members commit (one slot read is a
    snapshot of that slot; a commit racing the read shows the previous one)."""
    with os_errors("read offsets file", path):
        try:
            with open(path, "rb") as f:
                buf = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return {}
    if len(buf) < HEADER_SIZE or len(buf) > MAX_FILE_SIZE or (len(buf) - HEADER_SIZE) % SLOT_SIZE:
        raise CorruptRecord(f"{path}: size {len(buf)} is not a header of {HEADER_SIZE} plus "
                            f"{SLOT_SIZE}-byte slots", path, 0)
    magic, version, slot_size = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC or version != FORMAT_VERSION or slot_size != SLOT_SIZE:
        raise CorruptRecord(f"{path}: not a fastq offsets file (magic {magic!r}, version "
                            f"{version}, slot size {slot_size})", path, 0)
    out = {}
    for p in range((len(buf) - HEADER_SIZE) // SLOT_SIZE):
        best = _read_slot(buf, p, path)
        out[p] = None if best is None else best[2]
    return out


class OffsetStore:
    """The committed offsets of one (group, topic): ``get(p)``, ``put(p, offset)``,
    ``sync()``. See the module docstring for the format and the single-writer rule."""

    def __init__(self, path: str, partitions: int, *, sync: bool = False):
        self.path = path
        self.partitions = partitions
        self.sync_commits = sync
        self._mm: mmap.mmap | None = None
        self._state: dict[int, tuple[int, int]] = {}   # p -> (newest seq, half holding it)
        need = HEADER_SIZE + SLOT_SIZE * partitions
        with os_errors("open offsets file", path):
            if not os.path.exists(path):
                self._create(need)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                if size < need and size >= HEADER_SIZE:
                    size = self._grow(fd, need)
                self._check_size(size)
                _allocate(fd, 0, size)         # files of older versions were sparse
                self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
        magic, version, slot_size = _HEADER.unpack_from(self._mm, 0)
        if magic != MAGIC or version != FORMAT_VERSION or slot_size != SLOT_SIZE:
            self.close()
            raise CorruptRecord(f"{path}: not a fastq offsets file (magic {magic!r}, version "
                                f"{version}, slot size {slot_size})", path, 0)

    def _create(self, size: int) -> None:
        """temp -> fsync -> rename -> fsync(dir): the file appears complete or not at all."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.tmp.{os.getpid()}.{id(self):x}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            try:
                os.pwrite(fd, _HEADER.pack(MAGIC, FORMAT_VERSION, SLOT_SIZE), 0)
                _allocate(fd, HEADER_SIZE, size)   # slots: zero (empty) and allocated
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path)        # never replaces a file another process made
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
        _storage.fsync_dir(os.path.dirname(self.path))

    def _grow(self, fd: int, need: int) -> int:
        _storage.flock(fd, True, True)
        try:
            size = os.fstat(fd).st_size
            if size < need:
                try:
                    _allocate(fd, size, need)  # new slots: zero (empty) and allocated
                except OSError:
                    # ENOSPC may leave the file extended by what fallocate got, which no
                    # longer reads as whole slots: back to the old size (nobody maps
                    # past it: growing is under this flock, mapping follows the size)
                    os.ftruncate(fd, size)
                    raise
                os.fsync(fd)
                size = need
            return size
        finally:
            _storage.funlock(fd)

    def _check_size(self, size: int) -> None:
        if size < HEADER_SIZE + SLOT_SIZE * self.partitions or size > MAX_FILE_SIZE \
                or (size - HEADER_SIZE) % SLOT_SIZE:
            raise CorruptRecord(f"{self.path}: size {size} is not a header of {HEADER_SIZE} plus "
                                f"{SLOT_SIZE}-byte slots for {self.partitions} partitions "
                                f"(at most {MAX_PARTITIONS})", self.path, 0)

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            raise Closed(f"offset store {self.path} is closed")
        return self._mm

    def _check_partition(self, p: int) -> None:
        if not 0 <= p < self.partitions:
            raise InvalidArgument(f"partition {p} out of range [0, {self.partitions})")

    def get(self, p: int) -> int | None:
        """The committed offset of partition ``p``, or None if none was committed."""
        self._check_partition(p)
        best = _read_slot(self._map(), p, self.path)
        if best is None:
            self._state[p] = (0, 1)            # next put writes half 0
            return None
        self._state[p] = (best[0], best[1])
        return best[2]

    def put(self, p: int, offset: int) -> None:
        """Commit ``offset`` for partition ``p`` (caller owns p and has called get(p))."""
        st = self._state.get(p)
        if st is None:
            self.get(p)
            st = self._state[p]
        if not 0 <= offset <= _I64_MAX:
            raise InvalidArgument(f"offset {offset} out of range [0, 2**63)")
        seq = st[0] + 1
        half = st[1] ^ 1
        _HALF.pack_into(self._map(), HEADER_SIZE + SLOT_SIZE * p + HALF_SIZE * half,
                        seq, offset, _check(seq, offset, p))
        self._state[p] = (seq, half)

    def forget(self, p: int) -> None:
        """Drop the cached slot state of p (ownership moved; another process may write it)."""
        self._state.pop(p, None)

    def sync(self) -> None:
        """msync the file (a commit then survives power failure)."""
        self._map().flush()

    @property
    def closed(self) -> bool:
        return self._mm is None

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self) -> "OffsetStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<fastq.OffsetStore {self.path!r}{' closed' if self._mm is None else ''}>"
