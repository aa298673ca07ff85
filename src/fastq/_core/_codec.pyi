"""Python face of fastq's plain-C codec: CRC-32C, Kafka varints, RecordBatch v2, indexes.

The byte layout of a batch is documented in csrc/fq_batch.h. Errors: malformed input
bytes raise :class:`fastq.errors.CorruptRecord`; bad arguments raise
:class:`fastq.errors.InvalidArgument` (``RecordTooLarge`` for oversize fields).
"""
from collections.abc import Sequence
from typing import NamedTuple, Optional, Tuple, Union

from typing_extensions import Buffer

BATCH_HEADER_SIZE: int  # 61: bytes of a batch before its first record
INDEX_ENTRY: int  # 8: relativeOffset uint32 BE | position uint32 BE
TIMEINDEX_ENTRY: int  # 12: timestamp int64 BE | relativeOffset uint32 BE

Header = Tuple[str, Optional[bytes]]
RecordIn = Tuple[int, Optional[Buffer], Optional[Buffer], Optional[Sequence[Tuple[str, Optional[Buffer]]]]]
RecordOut = Tuple[int, int, Optional[bytes], Optional[bytes], list[Header]]

class BatchInfo(NamedTuple):
    """Header fields of a validated RecordBatch v2."""

    base_offset: int
    batch_length: int  # as stored: bytes after the length field
    total_size: int  # 12 + batch_length
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int
    crc: int  # stored CRC-32C of bytes [21, total_size)

def crc32c(data: Buffer, crc: int = 0) -> int:
    """CRC-32C of the bytes of ``data``, continuing from ``crc`` (0 to start).

    Releases the GIL for buffers larger than 64 KiB.
    """

def crc32c_sw(data: Buffer, crc: int = 0) -> int:
    """CRC-32C computed by the slicing-by-8 table code (for tests and benchmarks)."""

def crc32c_hw() -> bool:
    """True when ``crc32c`` uses CPU instructions (SSE4.2 or ARMv8 CRC32)."""

def encode_varint(value: int) -> bytes:
    """Zigzag varint of a signed 32-bit ``value``; InvalidArgument when out of range."""

def encode_varlong(value: int) -> bytes:
    """Zigzag varint of a signed 64-bit ``value``; InvalidArgument when out of range."""

def encode_uvarint(value: int) -> bytes:
    """Unsigned LEB128 varint of ``value`` in [0, 2**64)."""

def decode_varint(buf: Buffer) -> Tuple[int, int]:
    """``(value, bytes consumed)`` of the zigzag int32 varint at the start of ``buf``.

    CorruptRecord when the input is truncated or longer than 5 bytes / overflows int32.
    """

def decode_varlong(buf: Buffer) -> Tuple[int, int]:
    """``(value, bytes consumed)`` of the zigzag int64 varint at the start of ``buf``."""

def decode_uvarint(buf: Buffer) -> Tuple[int, int]:
    """``(value, bytes consumed)`` of the unsigned varint at the start of ``buf``."""

def encode_batch(records: Sequence[RecordIn], *, base_offset: int = 0, attributes: int = 0) -> bytes:
    """Encode ``(timestamp, key, value, headers)`` records as one RecordBatch v2.

    Offset deltas are 0..n-1, the base timestamp is the first record's, producer fields
    are -1 and the CRC is filled in. Empty ``records``, wrong types, out-of-range ints and
    compression bits in ``attributes`` raise InvalidArgument.
    """

def encode_control_batch(kind: str, *, producer_id: int, producer_epoch: int, timestamp: int,
                         coordinator_epoch: int = 0, base_offset: int = 0) -> bytes: ...
def control_type(buf: Buffer) -> str: ...   # "commit" | "abort"
def decode_batch(buf: Buffer, *, check_crc: bool = True) -> Tuple[BatchInfo, list[RecordOut]]:
    """Validate and decode the batch at the start of ``buf``.

    Returns the header and ``(offset, timestamp, key, value, headers)`` per record. Bytes
    past ``info.total_size`` are ignored. Raises CorruptRecord (``position`` = byte offset
    in ``buf``) for truncation, bad framing, CRC mismatch or a compressed batch.
    """

def index_floor(buf: Buffer, n: int, rel: int) -> int:
    """Largest i < n with entry[i].relativeOffset <= rel; -1 if none."""

def timeindex_ceil(buf: Buffer, n: int, ts: int) -> int:
    """Smallest i < n with entry[i].timestamp >= ts; n if none."""

def timeindex_floor(buf: Buffer, n: int, ts: int) -> int:
    """Largest i < n with entry[i].timestamp <= ts; -1 if none."""

def index_put(buf: Union[bytearray, memoryview], i: int, rel: int, pos: int) -> None:
    """Write offset-index entry ``i``."""

def index_get(buf: Buffer, i: int) -> Tuple[int, int]:
    """Offset-index entry ``i`` as ``(relativeOffset, position)``."""

def timeindex_put(buf: Union[bytearray, memoryview], i: int, ts: int, rel: int) -> None:
    """Write time-index entry ``i``."""

def timeindex_get(buf: Buffer, i: int) -> Tuple[int, int]:
    """Time-index entry ``i`` as ``(timestamp, relativeOffset)``."""

def os_error(exc: BaseException, what: str, path: Optional[str] = None, op: str = "") -> BaseException:
    """The fastq exception for an OSError (the one status table; op "" or "sync")."""
    ...

class os_errors:
    """``with os_errors(what, path):`` maps a raw ``OSError`` in the block to its fastq exception."""
    what: str
    path: Optional[str]
    def __init__(self, what: str, path: Optional[str] = None) -> None: ...
    def __enter__(self) -> "os_errors": ...
    def __exit__(self, typ: object, exc: object, tb: object) -> bool: ...
