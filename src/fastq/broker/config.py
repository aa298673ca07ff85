"""Names, limits and stored configuration of a broker directory: the bottom of
:mod:`fastq.broker`, imported by every module above it (offsets, groups, topics).

A topic's configuration is ``topics/<name>/topic.json`` (written atomically with
:func:`fastq.log.log.write_json_atomic`, under the broker lock, see
:mod:`fastq.broker.broker`): :data:`TOPIC_DEFAULTS` fills what an older file lacks,
and :func:`validate_topic_config` checks every value (a stored file that fails is
:class:`fastq.CorruptRecord`).
"""
from __future__ import annotations

import json
import re
from typing import Any

from .._core._codec import os_errors
from ..errors import CorruptRecord, InvalidArgument, InvalidName
from ..log.config import DURABILITY_MODES, MAX_RECORD_BYTES_CAP, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES, check_int

__all__ = ["validate_name", "MAX_PARTITIONS", "TOPIC_DEFAULTS", "validate_topic_config", "read_json"]

BROKER_FILE = "broker.json"
BROKER_LOCK = "broker.lock"
TOPIC_FILE = "topic.json"
BROKER_VERSION = 1
MAX_PARTITIONS = 4096
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")   # used with fullmatch: "$" admits a trailing "\n"

# memory topics (fastq.broker.memtopic): where records live and what a full ring does
STORAGE_MODES = ("log", "memory")
OVERFLOW_MODES = ("block", "reject", "drop-oldest", "spill")
MIN_CAPACITY_BYTES = 1 << 16
MAX_CAPACITY_BYTES = 1 << 36
DEFAULT_CAPACITY_BYTES = 16 << 20

TOPIC_DEFAULTS: dict[str, Any] = {
    "partitions": 1,
    "durability": None,          # None: the broker's default
    "retention_ms": None,
    "retention_bytes": None,     # per partition, as in Kafka
    "segment_bytes": 64 << 20,
    "max_record_bytes": 1 << 20,
    "compact": False,
    "delete_retention_ms": 24 * 3600 * 1000,  # how long tombstones survive compaction
    "storage": "log",            # "log" (durable) or "memory" (a shared ring; fastq.broker.memtopic)
    "overflow": "block",         # memory topics: block | reject | drop-oldest | spill
    "capacity_bytes": 16 << 20,  # memory topics: ring size (rounded up to a power of two)
}
ALTERABLE = {"partitions", "durability", "retention_ms", "retention_bytes", "compact",
              "delete_retention_ms"}


def validate_name(kind: str, name) -> str:
    """Topic and group names: ``[A-Za-z0-9._-]``, 1–249 characters, not ``.`` or ``..``."""
    if not isinstance(name, str):
        raise InvalidName(f"{kind} name must be a str, got {type(name).__name__}")
    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise InvalidName(f"invalid {kind} name {name!r}: use 1-249 characters from "
                          f"[A-Za-z0-9._-], not '.' or '..'")
    return name


def read_json(path: str) -> dict:
    try:
        with os_errors("read", path), open(path, "rb") as f:
            obj = json.loads(f.read())
    except ValueError as e:
        raise CorruptRecord(f"{path} is not valid JSON: {e}", path) from None
    if not isinstance(obj, dict):
        raise CorruptRecord(f"{path} does not hold a JSON object", path)
    return obj


def validate_topic_config(cfg: dict) -> None:
    check_int("partitions", cfg["partitions"], 1, MAX_PARTITIONS)
    if cfg["durability"] is not None and cfg["durability"] not in DURABILITY_MODES:
        raise InvalidArgument(f"durability={cfg['durability']!r}: expected one of {sorted(DURABILITY_MODES)}")
    check_int("retention_ms", cfg["retention_ms"], 0, 1 << 62, allow_none=True)
    check_int("retention_bytes", cfg["retention_bytes"], 0, 1 << 62, allow_none=True)
    check_int("segment_bytes", cfg["segment_bytes"], MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)
    check_int("max_record_bytes", cfg["max_record_bytes"], 128, MAX_RECORD_BYTES_CAP)
    check_int("delete_retention_ms", cfg["delete_retention_ms"], 0, 1 << 62)
    if not isinstance(cfg["compact"], bool):
        raise InvalidArgument(f"compact must be a bool, got {cfg['compact']!r}")
    if cfg["storage"] not in STORAGE_MODES:
        raise InvalidArgument(f"storage={cfg['storage']!r}: expected one of {', '.join(STORAGE_MODES)}")
    if cfg["overflow"] not in OVERFLOW_MODES:
        raise InvalidArgument(f"overflow={cfg['overflow']!r}: expected one of {', '.join(OVERFLOW_MODES)}")
    check_int("capacity_bytes", cfg["capacity_bytes"], MIN_CAPACITY_BYTES, MAX_CAPACITY_BYTES)
    if cfg["storage"] == "memory" and cfg["partitions"] != 1:
        raise InvalidArgument(f"a memory topic has one partition, got partitions={cfg['partitions']}")
