"""Python face of fastq's plain-C codec: CRC-32C, Kafka varints, RecordBatch v2, indexes.

Used by tests, tools and the Kafka front end; the storage hot path calls the C functions
directly. Every function here takes any buffer-protocol object where it reads bytes.
The byte layout of a batch is documented in csrc/fq_batch.h and docs/FORMAT.md.

Thread-safety: every function is re-entrant; ``crc32c`` releases the GIL for buffers
larger than 64 KiB.
"""
from collections import namedtuple
import os

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.errno cimport EACCES, EDQUOT, EMFILE, ENFILE, ENOSPC, EPERM, EROFS
from libc.stdint cimport INT16_MAX, INT16_MIN, INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN, int16_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memset

from fastq._core._cdefs cimport *

from fastq.errors import (
    Closed, CorruptRecord, DiskFull, FastqError, FsyncFailed, InvalidArgument, LeaseLost, PermissionDenied,
    ReadOnly, RecordTooLarge, RingEmpty, RingFull, StorageError, Timeout, TooManyOpenFiles,
)

__all__ = [
    "BatchInfo", "crc32c", "crc32c_hw", "crc32c_sw",
    "encode_varint", "decode_varint", "encode_varlong", "decode_varlong",
    "encode_uvarint", "decode_uvarint", "encode_batch", "decode_batch",
    "encode_control_batch", "control_type",
    "index_floor", "timeindex_ceil", "timeindex_floor",
    "index_put", "index_get", "timeindex_put", "timeindex_get",
    "BATCH_HEADER_SIZE", "INDEX_ENTRY", "TIMEINDEX_ENTRY",
]

BATCH_HEADER_SIZE = FQ_BATCH_HEADER_SIZE
INDEX_ENTRY = FQ_INDEX_ENTRY
TIMEINDEX_ENTRY = FQ_TIMEINDEX_ENTRY

U64_MAX = 0xFFFF_FFFF_FFFF_FFFF

cdef enum:
    GIL_RELEASE_BYTES = 65536  # below this, releasing the GIL costs more than the CRC


BatchInfo = namedtuple("BatchInfo", [
    "base_offset", "batch_length", "total_size", "attributes", "last_offset_delta",
    "base_timestamp", "max_timestamp", "producer_id", "producer_epoch", "base_sequence",
    "record_count", "crc",
])
BatchInfo.__doc__ = """Header fields of a validated RecordBatch v2 (csrc/fq_batch.h).

``total_size`` is the whole batch in bytes (12 + ``batch_length``); ``crc`` is the stored
CRC-32C of bytes [21, total_size).
"""
BatchInfo.__module__ = "fastq._core._codec"


# ---- status codes -> exceptions (the one place) ---------------------------------------
#
# Every C status (FQ_E... or -errno) and every OSError of the pure-Python modules becomes
# an exception here, as uvloop's convert_error does: _storage and _ring cimport
# status_error, Python modules call os_error (through fastq.errors._os_errors). The
# operation passes in as context (`op`), so a ring's FULL/EMPTY/TIMEDOUT and an fsync's
# failure are meanings of the caller, not second tables. docs/ARCHITECTURE.md, "Errors",
# has the table.

_OPS = {"": ERR_OP_NONE, "put": ERR_OP_PUT, "get": ERR_OP_GET, "sync": ERR_OP_SYNC}


cdef str _fd_limit_hint(int err):
    if err == ENFILE:
        return ("the system-wide limit of open files is reached (sysctl fs.file-max); "
                "close files elsewhere or raise it")
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        now = f" (now {soft}, hard limit {hard})"
    except (ImportError, OSError, ValueError):
        now = ""
    return (f"this process reached its limit of open file descriptors, RLIMIT_NOFILE{now}; "
            "each open partition log holds 3 (state, lock, active segment): raise it with `ulimit -n N` "
            "or resource.setrlimit(resource.RLIMIT_NOFILE, (N, hard)), or open fewer partitions")


cdef object status_error(int64_t rc, str what, object path=None, object position=None,
                         int op=ERR_OP_NONE):
    cdef str where = ""
    if path is not None:
        where = f" {path}" if position is None else f" {path} at byte {position}"
    elif position is not None:
        where = f" at byte {position}"
    if rc == FQ_ECORRUPT:
        return CorruptRecord(f"{what}{where}: corrupt", path, position)
    if rc == FQ_ETRUNCATED:
        return CorruptRecord(f"{what}{where}: truncated", path, position)
    if rc == FQ_EMAGIC:
        return CorruptRecord(f"{what}{where}: unknown magic byte / format version", path, position)
    if rc == FQ_ESTALE:
        return LeaseLost(f"{what}{where}: the lease is no longer current")
    if rc == FQ_ETOOBIG:
        return RecordTooLarge(f"{what}{where}: too large")
    if rc == FQ_EINVAL:
        return InvalidArgument(f"{what}{where}: invalid argument")
    if rc == FQ_EFULL or (rc == FQ_ETIMEDOUT and op == ERR_OP_PUT):
        if op == ERR_OP_PUT or op == ERR_OP_GET:
            return RingFull(f"ring full: no room for {what}" +
                            (" before the timeout" if rc == FQ_ETIMEDOUT else ""))
        return FastqError(f"{what}{where}: no room")
    if rc == FQ_EEMPTY or (rc == FQ_ETIMEDOUT and op == ERR_OP_GET):
        if op == ERR_OP_PUT or op == ERR_OP_GET:
            return RingEmpty(f"ring empty: no {what or 'message'}" +
                             (" before the timeout" if rc == FQ_ETIMEDOUT else ""))
        return FastqError(f"{what}{where}: nothing there")
    if rc == FQ_ETIMEDOUT:
        return Timeout(f"{what}{where}: timed out")
    if rc == FQ_ECLOSED:
        if op == ERR_OP_PUT or op == ERR_OP_GET:
            return Closed(f"the ring was closed while this call waited ({what})")
        return Closed(f"{what}{where}: closed while the call waited")
    if rc == FQ_EUNSUPPORTED:
        return FastqError(f"{what}{where}: not supported on this platform")
    if -4096 < rc < 0:
        err = <int>-rc
        msg = f"{what}: {os.strerror(err)}"
        if op == ERR_OP_SYNC:
            return FsyncFailed(err, msg + " (a failed fsync is final: the log must be reopened)", path)
        if err == ENOSPC or err == EDQUOT:
            return DiskFull(err, msg, path)
        if err == EROFS:
            return ReadOnly(err, msg + " (read-only filesystem: open with readonly=True to read it)",
                            path)
        if err == EACCES or err == EPERM:
            return PermissionDenied(err, msg, path)
        if err == EMFILE or err == ENFILE:
            return TooManyOpenFiles(err, f"{msg}: {_fd_limit_hint(err)}", path)
        return StorageError(err, msg, path)
    return FastqError(f"{what}{where}: unknown status {rc}")


cdef int check_status(int64_t rc, str what, object position=None) except -1:
    if rc >= 0:
        return 0
    raise status_error(rc, what, None, position)


def os_error(exc, str what, path=None, str op=""):
    """The fastq exception for an ``OSError`` raised by Python code (same table as the C
    statuses): ``what`` names the operation, ``path`` the file (default: the error's),
    ``op`` is "" or "sync" (an fsync: FsyncFailed)."""
    if isinstance(exc, FastqError) or not isinstance(exc, OSError) or not exc.errno:
        return exc
    return status_error(-<int64_t>exc.errno, what, path if path is not None else exc.filename,
                        None, _OPS[op])


class os_errors:
    """``with os_errors(what, path):`` turns a raw ``OSError`` raised inside the block into
    the fastq exception for its errno (this module's one table), naming ``what`` and
    ``path``. For the cold paths (open, create, join) of the pure-Python modules."""

    __slots__ = ("what", "path")

    def __init__(self, str what, path=None):
        self.what = what
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is None or isinstance(exc, FastqError) or not isinstance(exc, OSError):
            return False
        mapped = os_error(exc, self.what, self.path)
        if mapped is exc:               # no errno: nothing to map
            return False
        raise mapped from exc


def _status_error(int64_t rc, str what, path=None, position=None, str op=""):
    """status_error from Python (tests, tools): ``op`` is "", "put", "get" or "sync"."""
    return status_error(rc, what, path, position, _OPS[op])


# ---- buffers ------------------------------------------------------------------------

cdef inline int get_buffer(object obj, Py_buffer *view, int flags, str what) except -1:
    try:
        PyObject_GetBuffer(obj, view, flags)
    except TypeError:
        raise InvalidArgument(f"{what} must be a bytes-like object, not {type(obj).__name__}") from None
    except BufferError as e:
        raise InvalidArgument(f"{what}: {e}") from None
    return 0


# ---- CRC-32C ----------------------------------------------------------------------------

cdef uint32_t as_crc(object crc) except? 0xFFFFFFFF:
    if not isinstance(crc, int):
        raise InvalidArgument(f"crc must be an int, not {type(crc).__name__}")
    if not 0 <= crc <= 0xFFFFFFFF:
        raise InvalidArgument(f"crc must be in [0, 2**32), got {crc}")
    return <uint32_t>crc


def crc32c(data, crc=0):
    """CRC-32C of the bytes of ``data``, continuing from ``crc`` (0 to start)."""
    cdef uint32_t c = as_crc(crc)
    cdef Py_buffer view
    get_buffer(data, &view, PyBUF_SIMPLE, "data")
    try:
        if view.len > GIL_RELEASE_BYTES:
            with nogil:
                c = fq_crc32c(c, view.buf, <size_t>view.len)
        else:
            c = fq_crc32c(c, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return c


def crc32c_sw(data, crc=0):
    """CRC-32C computed by the slicing-by-8 table code (for tests and benchmarks)."""
    cdef uint32_t c = as_crc(crc)
    cdef Py_buffer view
    get_buffer(data, &view, PyBUF_SIMPLE, "data")
    try:
        with nogil:
            c = fq_crc32c_sw(c, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return c


def crc32c_hw():
    """True when ``crc32c`` uses CPU instructions (SSE4.2 or ARMv8 CRC32), False for tables."""
    return fq_crc32c_hw() != 0


# ---- varints ------------------------------------------------------------------------

cdef int64_t as_int64(object v, int64_t lo, int64_t hi, str what) except? -1:
    if not isinstance(v, int):
        raise InvalidArgument(f"{what} must be an int, not {type(v).__name__}")
    if not lo <= v <= hi:
        raise InvalidArgument(f"{what} must be in [{lo}, {hi}], got {v}")
    return <int64_t>v


def encode_varint(value):
    """Zigzag varint of a signed 32-bit ``value`` (Kafka's int32 record fields)."""
    cdef uint8_t out[FQ_VARINT_MAX]
    cdef int32_t v = <int32_t>as_int64(value, INT32_MIN, INT32_MAX, "varint value")
    return PyBytes_FromStringAndSize(<char *>out, fq_varint_encode(out, v))


def encode_varlong(value):
    """Zigzag varint of a signed 64-bit ``value`` (Kafka's timestamp delta)."""
    cdef uint8_t out[FQ_VARLONG_MAX]
    cdef int64_t v = as_int64(value, INT64_MIN, INT64_MAX, "varlong value")
    return PyBytes_FromStringAndSize(<char *>out, fq_varlong_encode(out, v))


def encode_uvarint(value):
    """Unsigned LEB128 varint of ``value`` in [0, 2**64)."""
    cdef uint8_t out[FQ_VARLONG_MAX]
    if not isinstance(value, int):
        raise InvalidArgument(f"uvarint value must be an int, not {type(value).__name__}")
    if not 0 <= value <= U64_MAX:
        raise InvalidArgument(f"uvarint value must be in [0, 2**64), got {value}")
    cdef uint64_t v = <uint64_t>value
    return PyBytes_FromStringAndSize(<char *>out, fq_uvarint_encode(out, v))


cdef int varint_check(int rc, str kind) except -1:
    if rc == FQ_ETRUNCATED:
        raise CorruptRecord(f"{kind} truncated: input ends inside the number", position=0)
    if rc < 0:
        raise CorruptRecord(f"{kind} corrupt: longer than the type allows or overflows it",
                            position=0)
    return 0


def decode_varint(buf):
    """Decode a zigzag int32 varint at the start of ``buf``: ``(value, bytes consumed)``."""
    cdef Py_buffer view
    cdef int32_t v = 0
    cdef int rc
    get_buffer(buf, &view, PyBUF_SIMPLE, "buf")
    try:
        rc = fq_varint_decode(<const uint8_t *>view.buf, <size_t>view.len, &v)
    finally:
        PyBuffer_Release(&view)
    varint_check(rc, "varint")
    return v, rc


def decode_varlong(buf):
    """Decode a zigzag int64 varint at the start of ``buf``: ``(value, bytes consumed)``."""
    cdef Py_buffer view
    cdef int64_t v = 0
    cdef int rc
    get_buffer(buf, &view, PyBUF_SIMPLE, "buf")
    try:
        rc = fq_varlong_decode(<const uint8_t *>view.buf, <size_t>view.len, &v)
    finally:
        PyBuffer_Release(&view)
    varint_check(rc, "varlong")
    return v, rc


def decode_uvarint(buf):
    """Decode an unsigned varint (<= 64 bits) at the start of ``buf``: ``(value, bytes)``."""
    cdef Py_buffer view
    cdef uint64_t v = 0
    cdef int rc
    get_buffer(buf, &view, PyBUF_SIMPLE, "buf")
    try:
        rc = fq_uvarint_decode(<const uint8_t *>view.buf, <size_t>view.len, &v)
    finally:
        PyBuffer_Release(&view)
    varint_check(rc, "uvarint")
    return v, rc


# ---- record batches -----------------------------------------------------------------

cdef struct Views:
    # Py_buffers held while encoding, for bytes-likes that are not `bytes`
    Py_buffer *v
    Py_ssize_t n
    Py_ssize_t cap


cdef str field_name(Py_ssize_t i, Py_ssize_t j, str field):
    """'record i field' or 'record i header j field', built only for error messages."""
    if j < 0:
        return f"record {i} {field}"
    return f"record {i} header {j} {field}"


cdef int field_bytes(object obj, Views *views, const uint8_t **ptr, int32_t *length,
                     Py_ssize_t i, Py_ssize_t j, str field) except -1:
    """Point *ptr/*length at obj's bytes (None -> NULL/-1); may hold a buffer in views."""
    cdef Py_ssize_t n
    if obj is None:
        ptr[0] = NULL
        length[0] = -1
        return 0
    if type(obj) is bytes:  # fast path: the caller keeps the object alive
        ptr[0] = <const uint8_t *>PyBytes_AS_STRING(obj)
        n = PyBytes_GET_SIZE(obj)
    else:
        if views.n >= views.cap:
            raise AssertionError("buffer slots exhausted")  # sized by the first pass
        try:
            PyObject_GetBuffer(obj, &views.v[views.n], PyBUF_SIMPLE)
        except (TypeError, BufferError):
            raise InvalidArgument(f"{field_name(i, j, field)} must be bytes-like or None, "
                                  f"not {type(obj).__name__}") from None
        views.n += 1
        ptr[0] = <const uint8_t *>views.v[views.n - 1].buf
        n = views.v[views.n - 1].len
    if n > INT32_MAX:
        raise RecordTooLarge(f"{field_name(i, j, field)} is {n} bytes, more than a record can hold")
    length[0] = <int32_t>n
    return 0


cdef int64_t as_timestamp(object ts, Py_ssize_t i) except? -1:
    if type(ts) is int:
        try:
            return <int64_t>ts
        except OverflowError:
            pass
    return as_int64(ts, INT64_MIN, INT64_MAX, field_name(i, -1, "timestamp"))


def encode_batch(records, *, base_offset=0, attributes=0):
    """Encode records as one Kafka RecordBatch v2 and return its bytes.

    ``records`` is a non-empty sequence of ``(timestamp, key, value, headers)``: timestamp
    an int (ms), key and value bytes-like or None, headers a sequence of
    ``(str, bytes-like or None)`` pairs (or None for none). Offset deltas are 0..n-1; the
    base timestamp is the first record's. ``attributes`` may not ask for compression.
    Raises InvalidArgument for anything malformed.
    """
    cdef int64_t base = as_int64(base_offset, INT64_MIN, INT64_MAX, "base_offset")
    cdef int16_t attrs = <int16_t>as_int64(attributes, INT16_MIN, INT16_MAX, "attributes")
    if attrs & FQ_ATTR_COMPRESSION_MASK:
        raise InvalidArgument(f"compression unsupported: attributes={attributes:#x}")
    try:
        recs = records if type(records) is list or type(records) is tuple else list(records)
    except TypeError:
        raise InvalidArgument(f"records must be a sequence, not {type(records).__name__}") from None
    cdef Py_ssize_t n = len(recs), i, j, n_headers = 0, hi = 0, nh
    if n == 0:
        raise InvalidArgument("a batch needs at least one record")
    if n > INT32_MAX:
        raise InvalidArgument(f"too many records for one batch: {n}")

    # First pass: shapes and header counts, so native arrays are sized once.
    rows = []
    for i in range(n):
        rec = recs[i]
        try:
            ts, key, value, headers = rec
        except (TypeError, ValueError):
            raise InvalidArgument(
                f"record {i} must be a (timestamp, key, value, headers) tuple, got {rec!r:.80}"
            ) from None
        # a private tuple: nothing can resize it between the two passes
        if headers is None:
            headers = ()
        elif type(headers) is not tuple:
            try:
                headers = tuple(headers)
            except TypeError:
                raise InvalidArgument(
                    f"record {i}: headers must be a sequence of (str, bytes) pairs") from None
        n_headers += len(headers)
        rows.append((ts, key, value, headers))

    cdef fq_record_in *cr = NULL
    cdef fq_header *ch = NULL
    cdef Views views
    views.n = 0
    views.cap = 2 * n + n_headers
    keep = []  # UTF-8 encodings of header keys, alive until encoded
    cdef int64_t size, rc
    cdef bytes out
    try:
        cr = <fq_record_in *>PyMem_Malloc(n * sizeof(fq_record_in))
        ch = <fq_header *>PyMem_Malloc((n_headers or 1) * sizeof(fq_header))
        views.v = <Py_buffer *>PyMem_Malloc(views.cap * sizeof(Py_buffer))
        if cr == NULL or ch == NULL or views.v == NULL:
            raise MemoryError()
        for i in range(n):
            ts, key, value, headers = rows[i]
            cr[i].timestamp = as_timestamp(ts, i)
            field_bytes(key, &views, &cr[i].key, &cr[i].key_len, i, -1, "key")
            field_bytes(value, &views, &cr[i].value, &cr[i].value_len, i, -1, "value")
            nh = len(headers)
            cr[i].headers = &ch[hi]
            cr[i].n_headers = <int32_t>nh
            for j in range(nh):
                try:
                    hk, hv = headers[j]
                except (TypeError, ValueError):
                    raise InvalidArgument(
                        f"record {i} header {j} must be a (str, bytes) pair") from None
                if type(hk) is not str:
                    raise InvalidArgument(
                        f"record {i} header {j} key must be str, not {type(hk).__name__}")
                hkb = (<str>hk).encode("utf-8")
                keep.append(hkb)
                field_bytes(hkb, &views, &ch[hi].key, &ch[hi].key_len, i, j, "key")
                field_bytes(hv, &views, &ch[hi].value, &ch[hi].value_len, i, j, "value")
                hi += 1
        size = fq_batch_size(cr, <int32_t>n)
        check_status(size, "encode_batch")
        out = PyBytes_FromStringAndSize(NULL, size)
        rc = fq_batch_encode(<uint8_t *>PyBytes_AS_STRING(out), <size_t>size, base, attrs,
                             cr, <int32_t>n)
        check_status(rc, "encode_batch")
        if rc != size:
            raise AssertionError(f"fq_batch_encode wrote {rc} bytes, sized {size}")
        return out
    finally:
        for i in range(views.n):
            PyBuffer_Release(&views.v[i])
        PyMem_Free(views.v)
        PyMem_Free(ch)
        PyMem_Free(cr)


cdef inline object view_bytes(const uint8_t *p, int32_t n):
    if n < 0:
        return None
    return PyBytes_FromStringAndSize(<const char *>p, n)


cdef object decode_headers(const uint8_t *p, int32_t n, int32_t area, Py_ssize_t pos):
    cdef fq_header h
    cdef int rc
    cdef int32_t i
    cdef size_t left = <size_t>area
    out = []
    for i in range(n):
        rc = fq_header_decode(p, left, &h)
        if rc < 0:  # cannot happen after fq_record_decode; keep the guard anyway
            raise CorruptRecord(f"record header {i} corrupt", position=pos)
        try:
            key = PyUnicode_DecodeUTF8(<const char *>h.key, h.key_len, NULL)
        except UnicodeDecodeError as e:
            raise CorruptRecord(f"record header {i} key is not UTF-8: {e}", position=pos) from None
        out.append((key, view_bytes(h.value, h.value_len)))
        p += rc
        left -= <size_t>rc
    return out


def encode_control_batch(str kind, *, producer_id, producer_epoch, timestamp, coordinator_epoch=0,
                         base_offset=0):
    """A Kafka transaction marker: a control batch (attributes transactional | control)
    holding one COMMIT (``kind="commit"``) or ABORT (``"abort"``) record for the
    producer, as Kafka's brokers write them (csrc/fq_batch.h). Returns its bytes."""
    cdef uint8_t buf[FQ_CONTROL_BATCH_SIZE]
    cdef int64_t n
    if kind not in ("commit", "abort"):
        raise InvalidArgument(f"kind={kind!r}: expected 'commit' or 'abort'")
    n = fq_batch_encode_control(buf, FQ_CONTROL_BATCH_SIZE,
                                as_int64(base_offset, 0, INT64_MAX, "base_offset"),
                                as_int64(producer_id, 0, INT64_MAX, "producer_id"),
                                <int16_t>as_int64(producer_epoch, 0, INT16_MAX, "producer_epoch"),
                                FQ_CONTROL_COMMIT if kind == "commit" else FQ_CONTROL_ABORT,
                                <int32_t>as_int64(coordinator_epoch, INT32_MIN, INT32_MAX, "coordinator_epoch"),
                                as_int64(timestamp, 0, INT64_MAX, "timestamp"))
    if n < 0:
        raise status_error(n, "encode control batch")
    return PyBytes_FromStringAndSize(<char *>buf, n)


def control_type(buf):
    """``"commit"`` or ``"abort"`` for the control batch at the start of ``buf`` (validated,
    CRC included); CorruptRecord for anything else."""
    cdef Py_buffer view
    cdef fq_batch_info info
    cdef int rc
    get_buffer(buf, &view, PyBUF_SIMPLE, "buf")
    try:
        rc = fq_batch_validate(<const uint8_t *>view.buf, <size_t>view.len, INT32_MAX, 1, &info)
        if rc < 0:
            raise batch_error(rc, <const uint8_t *>view.buf, view.len, True)
        rc = fq_batch_control_type(<const uint8_t *>view.buf, &info)
    finally:
        PyBuffer_Release(&view)
    if rc < 0:
        raise CorruptRecord("not a transaction marker (control batch of one COMMIT/ABORT record)", None, 0)
    return "commit" if rc == FQ_CONTROL_COMMIT else "abort"


def decode_batch(buf, *, check_crc=True):
    """Validate and decode the RecordBatch v2 at the start of ``buf``.

    Returns ``(BatchInfo, [(offset, timestamp, key, value, headers), ...])`` with headers
    a list of ``(str, bytes or None)``. Bytes after the batch (``info.total_size``) are
    ignored. Batches with LogAppendTime (attribute bit 3) report maxTimestamp for every
    record, as Kafka does. Raises CorruptRecord, with ``position`` the byte offset in
    ``buf`` where the problem was found, for anything invalid: truncation, bad framing,
    CRC mismatch (when ``check_crc``), compressed batches.
    """
    cdef Py_buffer view
    cdef fq_batch_info info
    cdef fq_record_view rv
    cdef const uint8_t *base
    cdef const uint8_t *p
    cdef const uint8_t *end
    cdef int rc
    cdef int32_t i
    cdef int64_t prev = -1, ts
    cdef bint log_append
    cdef bint crc_flag = check_crc
    get_buffer(buf, &view, PyBUF_SIMPLE, "buf")
    try:
        base = <const uint8_t *>view.buf
        rc = fq_batch_validate(base, <size_t>view.len, INT32_MAX, crc_flag, &info)
        if rc < 0:
            raise batch_error(rc, base, view.len, crc_flag)
        if info.attributes & FQ_ATTR_COMPRESSION_MASK:
            raise CorruptRecord(
                f"compression unsupported: batch attributes {info.attributes:#x} name codec "
                f"{info.attributes & FQ_ATTR_COMPRESSION_MASK}; fastq stores uncompressed batches",
                position=FQ_BATCH_OFF_ATTRIBUTES)
        if info.base_offset > INT64_MAX - info.last_offset_delta:
            raise CorruptRecord(
                f"baseOffset {info.base_offset} + lastOffsetDelta {info.last_offset_delta} "
                f"overflows int64", position=0)
        log_append = (info.attributes & FQ_ATTR_TIMESTAMP_LOG_APPEND) != 0
        p = base + FQ_BATCH_HEADER_SIZE
        end = base + info.total_size
        records = []
        for i in range(info.record_count):
            rc = fq_record_decode(p, <size_t>(end - p), &rv)
            if rc < 0:
                raise CorruptRecord(
                    f"record {i} of {info.record_count} {'runs past the batch end' if rc == FQ_ETRUNCATED else 'is corrupt'}",
                    position=p - base)
            if rv.offset_delta <= prev or rv.offset_delta > info.last_offset_delta:
                raise CorruptRecord(
                    f"record {i} offsetDelta {rv.offset_delta} out of order "
                    f"(previous {prev}, lastOffsetDelta {info.last_offset_delta})",
                    position=p - base)
            prev = rv.offset_delta
            if log_append:
                ts = info.max_timestamp
            else:  # wraps like Java longs, matching the encoder
                ts = <int64_t>(<uint64_t>info.base_timestamp + <uint64_t>rv.timestamp_delta)
            records.append((
                info.base_offset + rv.offset_delta, ts,
                view_bytes(rv.key, rv.key_len), view_bytes(rv.value, rv.value_len),
                decode_headers(rv.headers, rv.n_headers, rv.headers_len, p - base),
            ))
            p += rc
        if p != end:
            raise CorruptRecord(
                f"{end - p} bytes left in the batch after its {info.record_count} records",
                position=p - base)
    finally:
        PyBuffer_Release(&view)
    return BatchInfo(
        info.base_offset, info.batch_length, info.total_size, info.attributes,
        info.last_offset_delta, info.base_timestamp, info.max_timestamp, info.producer_id,
        info.producer_epoch, info.base_sequence, info.record_count, info.crc,
    ), records


cdef object batch_error(int rc, const uint8_t *b, Py_ssize_t avail, bint check_crc):
    """A CorruptRecord saying which header check failed (fq_batch_validate's codes)."""
    cdef int64_t length
    cdef uint32_t stored, actual
    cdef int magic
    if avail < FQ_BATCH_LOG_OVERHEAD:
        return CorruptRecord(
            f"batch truncated: {avail} bytes, the length field alone needs "
            f"{FQ_BATCH_LOG_OVERHEAD}", position=0)
    length = <int32_t>fq_be_get32(b + FQ_BATCH_OFF_LENGTH)
    if rc == FQ_ETRUNCATED:
        return CorruptRecord(
            f"batch truncated: batchLength {length} needs {FQ_BATCH_LOG_OVERHEAD + length} "
            f"bytes, have {avail}", position=0)
    if rc == FQ_EMAGIC:
        magic = <signed char>b[FQ_BATCH_OFF_MAGIC]
        return CorruptRecord(f"batch magic is {magic}, "
                             f"expected {FQ_BATCH_MAGIC}", position=FQ_BATCH_OFF_MAGIC)
    if check_crc and fq_batch_validate(b, <size_t>avail, INT32_MAX, 0, NULL) == 0:
        stored = fq_be_get32(b + FQ_BATCH_OFF_CRC)
        actual = fq_crc32c(0, b + FQ_BATCH_OFF_ATTRIBUTES,
                           <size_t>(FQ_BATCH_LOG_OVERHEAD + length - FQ_BATCH_OFF_ATTRIBUTES))
        return CorruptRecord(f"batch CRC mismatch: stored {stored:#010x}, computed {actual:#010x}",
                             position=FQ_BATCH_OFF_CRC)
    if rc == FQ_ECORRUPT:
        return CorruptRecord(
            f"batch header corrupt: batchLength={length}, recordCount="
            f"{<int32_t>fq_be_get32(b + FQ_BATCH_OFF_RECORD_COUNT)}, lastOffsetDelta="
            f"{<int32_t>fq_be_get32(b + FQ_BATCH_OFF_LAST_OFFSET_DELTA)}", position=0)
    return status_error(rc, "batch", None, 0)


# ---- indexes ------------------------------------------------------------------------

cdef int index_view(object buf, Py_buffer *view, int64_t n, int64_t entry, bint writable,
                    str what) except -1:
    if n < 0:
        raise InvalidArgument(f"{what}: entry count must be >= 0, got {n}")
    get_buffer(buf, view, PyBUF_WRITABLE if writable else PyBUF_SIMPLE, "buf")
    if n > view.len // entry:
        PyBuffer_Release(view)
        raise InvalidArgument(
            f"{what}: {n} entries of {entry} bytes do not fit a {view.len}-byte buffer")
    return 0


def index_floor(buf, int64_t n, uint32_t rel):
    """Largest i < n whose offset-index entry has relativeOffset <= rel; -1 if none."""
    cdef Py_buffer view
    index_view(buf, &view, n, FQ_INDEX_ENTRY, False, "index_floor")
    try:
        return fq_index_floor(<const uint8_t *>view.buf, n, rel)
    finally:
        PyBuffer_Release(&view)


def timeindex_ceil(buf, int64_t n, int64_t ts):
    """Smallest i < n whose time-index entry has timestamp >= ts; n if none."""
    cdef Py_buffer view
    index_view(buf, &view, n, FQ_TIMEINDEX_ENTRY, False, "timeindex_ceil")
    try:
        return fq_timeindex_ceil(<const uint8_t *>view.buf, n, ts)
    finally:
        PyBuffer_Release(&view)


def timeindex_floor(buf, int64_t n, int64_t ts):
    """Largest i < n whose time-index entry has timestamp <= ts; -1 if none."""
    cdef Py_buffer view
    index_view(buf, &view, n, FQ_TIMEINDEX_ENTRY, False, "timeindex_floor")
    try:
        return fq_timeindex_floor(<const uint8_t *>view.buf, n, ts)
    finally:
        PyBuffer_Release(&view)


def index_put(buf, int64_t i, uint32_t rel, uint32_t pos):
    """Write offset-index entry i (relativeOffset, position) into a writable buffer."""
    cdef Py_buffer view
    if i < 0:
        raise InvalidArgument(f"index_put: entry index must be >= 0, got {i}")
    index_view(buf, &view, i + 1, FQ_INDEX_ENTRY, True, "index_put")
    try:
        fq_index_put(<uint8_t *>view.buf, i, rel, pos)
    finally:
        PyBuffer_Release(&view)


def index_get(buf, int64_t i):
    """Offset-index entry i as (relativeOffset, position)."""
    cdef Py_buffer view
    cdef uint32_t rel, pos
    if i < 0:
        raise InvalidArgument(f"index_get: entry index must be >= 0, got {i}")
    index_view(buf, &view, i + 1, FQ_INDEX_ENTRY, False, "index_get")
    try:
        fq_index_get(<const uint8_t *>view.buf, i, &rel, &pos)
    finally:
        PyBuffer_Release(&view)
    return rel, pos


def timeindex_put(buf, int64_t i, int64_t ts, uint32_t rel):
    """Write time-index entry i (timestamp, relativeOffset) into a writable buffer."""
    cdef Py_buffer view
    if i < 0:
        raise InvalidArgument(f"timeindex_put: entry index must be >= 0, got {i}")
    index_view(buf, &view, i + 1, FQ_TIMEINDEX_ENTRY, True, "timeindex_put")
    try:
        fq_timeindex_put(<uint8_t *>view.buf, i, ts, rel)
    finally:
        PyBuffer_Release(&view)


def timeindex_get(buf, int64_t i):
    """Time-index entry i as (timestamp, relativeOffset)."""
    cdef Py_buffer view
    cdef int64_t ts
    cdef uint32_t rel
    if i < 0:
        raise InvalidArgument(f"timeindex_get: entry index must be >= 0, got {i}")
    index_view(buf, &view, i + 1, FQ_TIMEINDEX_ENTRY, False, "timeindex_get")
    try:
        fq_timeindex_get(<const uint8_t *>view.buf, i, &ts, &rel)
    finally:
        PyBuffer_Release(&view)
    return ts, rel
