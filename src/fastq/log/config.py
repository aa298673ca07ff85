"""The files, limits and small shared checks of a log directory (the bottom of
:mod:`fastq.log`; :mod:`fastq.broker` uses the same checks and atomic JSON writes).

The files of one log (formats in docs/FORMAT.md and csrc/fq_log.h)::

    fastq.state   shared state (STATE_FILE)      fastq.lock   open/close mutex (LOCK_FILE)
    log.json      configuration (CONFIG_FILE)    <base>.log / .index / .timeindex  segments
"""
from __future__ import annotations

import json
import os
import re
import threading
import time

from .._core import _storage
from .._core._codec import os_error, os_errors
from ..errors import InvalidArgument

__all__ = ["DURABILITY_MODES", "check_int", "write_json_atomic"]

DURABILITY_MODES = {"os": 0, "group": 1, "always": 2}
STATE_FILE = "fastq.state"
LOCK_FILE = "fastq.lock"
CONFIG_FILE = "log.json"
CONFIG_VERSION = 1
COMPACTED_MARK = "compacted"          # present once compaction has rewritten a segment

DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_MAX_RECORD_BYTES = 1 << 20
DEFAULT_INDEX_INTERVAL = 4096
MIN_SEGMENT_BYTES = 4096
MAX_SEGMENT_BYTES = 1 << 31            # positions in .index entries are u32
MAX_RECORD_BYTES_CAP = 256 << 20
# Kafka's log.message.timestamp.after.max.ms (KIP-937): an append stamped further ahead
# of the clock is refused, or it would hold time retention back until the clock caught up
DEFAULT_MAX_TIMESTAMP_AHEAD_MS = 3_600_000

SEGMENT_RE = re.compile(r"([0-9]{20})\.(log|index|timeindex)")   # fullmatch: "$" admits a trailing "\n"
FLAG_CLEAN = 1                        # FQ_STATE_FLAG_CLEAN (csrc/fq_log.h)
FLAG_CHECKED = 2                      # FQ_STATE_FLAG_CHECKED: clean_crc is set


def boot_id() -> bytes:
    """16 bytes that change when the machine reboots (Linux boot_id; boot time elsewhere)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return bytes.fromhex(f.read().strip().decode().replace("-", ""))[:16].ljust(16, b"\0")
    except OSError:
        boot = int(time.time() - time.monotonic())  # boot time, stable to the second
        return boot.to_bytes(16, "little", signed=True)


def write_json_atomic(path: str, obj: dict) -> None:
    """temp -> fsync -> rename -> fsync(dir): a metadata file is old or new, never torn.
    A failure (a full disk: DiskFull; EROFS: ReadOnly; ...) removes the temp file and
    raises the fastq error naming ``path``; a failed fsync is FsyncFailed."""
    write_bytes_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def write_bytes_atomic(path: str, data: bytes, sync: bool = True) -> None:
    """``write_json_atomic`` for bytes. ``sync=False`` skips both fsyncs: the file is
    then old or new after a process crash, but a power failure may leave it torn (for
    files that carry their own checksum and may be lost, such as producer snapshots)."""
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    data = memoryview(data)
    try:
        with os_errors("write", path):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                done = 0
                while done < len(data):            # os.write may write less than asked
                    done += os.write(fd, data[done:])
                if sync:
                    try:
                        os.fsync(fd)
                    except OSError as e:
                        raise os_error(e, "fsync", tmp, "sync") from e
            finally:
                os.close(fd)
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync:
        _storage.fsync_dir(os.path.dirname(path) or ".")


def check_int(name: str, value, lo: int, hi: int, allow_none: bool = False):
    """``value`` if it is an int in [lo, hi] (or None when allowed), else InvalidArgument
    naming the setting and the range. The one range check every fastq module uses."""
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidArgument(f"{name}={value!r}: expected an int in [{lo}, {hi}]")
    return value
