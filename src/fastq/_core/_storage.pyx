# fastq._core._storage — mmap-backed segments and the log's append/read hot path.
#
# Policy (when to roll, what retention deletes, how recovery decides) lives in
# fastq/log.py, which subclasses LogCore. This module owns the mappings, their lifetime,
# the zero-copy views, the writer lock and the GIL.
#
# On-disk format: docs/FORMAT.md. A segment is `%020d.log` (Kafka RecordBatch v2
# batches, back to back from position 0, followed by zero-filled preallocated space),
# `%020d.index` (8-byte entries: relative offset u32 BE, position u32 BE) and
# `%020d.timeindex` (12-byte entries: timestamp i64 BE, relative offset u32 BE).
# A zero length field ends the data of a segment. Recovery rule (fastq/log.py, FORMAT.md):
# every batch below what was acknowledged must be present and valid (else CorruptRecord);
# only a torn tail past it is dropped.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.exc cimport PyErr_CheckSignals
from libc.string cimport memset, memcpy, memcmp
from libc.stdint cimport INT32_MAX, INT64_MAX, INT64_MIN
from cpython.pyport cimport PY_SSIZE_T_MAX
cimport cython

from fastq._core._cdefs cimport *
from fastq._core._codec cimport ERR_OP_NONE, ERR_OP_SYNC, status_error

import os
import time
import warnings

from fastq.errors import (
    Closed, CorruptRecord, DiskFull, FastqError, FsyncFailed, InvalidArgument, OffsetOutOfRange, ReadOnly,
    RecordTooLarge, StorageError, Timeout, UsedAfterFork,
)
from fastq.errors import LeaseLost, RateLimited

cdef extern from "fcntl.h" nogil:
    enum:
        O_RDONLY
        O_RDWR
        O_CREAT
        O_CLOEXEC
cdef extern from "unistd.h" nogil:
    int c_close "close"(int fd)
    int c_ftruncate "ftruncate"(int fd, long length)
cdef extern from "errno.h":
    int errno
cdef extern from "fq_os.h" nogil:
    int fq_open(const char *path, int flags, int mode)
    int fq_fd_path(int fd, char *buf, size_t n)


cdef inline int c_open(const char *path, int flags, int mode) noexcept nogil:
    """open(2) through fq_open (a fault point): the descriptor, or -1 with errno set."""
    global errno
    cdef int rc = fq_open(path, flags, mode)
    if rc < 0:
        errno = -rc
        return -1
    return rc

cdef enum:
    PAGE = 4096
    GROW_MIN = 1 << 20
    # A new segment's .log is preallocated FIRST_CHUNK bytes; each growth then adds as
    # much as the file holds (doubling), at most the log's grow chunk
    # (max(GROW_MIN, segment_bytes/16)), so a one-record topic costs 64 KiB of disk,
    # not a grow chunk, and a busy one still grows in few fallocate calls.
    FIRST_CHUNK = 64 << 10
    # The writer keeps the file allocated, and asks the pretoucher to populate the
    # mapping a window past what it writes, whenever fewer than half the window ahead
    # is populated (see LogCore._prepare_locked). The window starts at PRETOUCH_MIN and
    # doubles, up to PRETOUCH_MAX, each time the writer outruns the pretoucher; it
    # halves again when a request comes more than PRETOUCH_IDLE_NS after the last one.
    PRETOUCH_MIN = 32 << 10
    PRETOUCH_MAX = 16 << 20

cdef int64_t PRETOUCH_IDLE_NS = 1_000_000_000

SEGMENT_FIRST_CHUNK = FIRST_CHUNK    # bytes a new segment's .log is preallocated
PRETOUCH_MIN_BYTES = PRETOUCH_MIN    # the pretouch window of an idle log

# A blocking wait (Log.wait, a consumer's poll) sleeps with the GIL released in slices of
# this long, running the signal handlers between them: Ctrl-C interrupts it.
cdef int64_t WAIT_SLICE_NS = 100_000_000


cdef inline int64_t wait_deadline(int64_t timeout_ns) noexcept:
    """The monotonic end of a wait of `timeout_ns` (< 0: no limit, -1)."""
    return -1 if timeout_ns < 0 else fq_monotonic_ns() + timeout_ns


cdef inline int64_t wait_slice(int64_t deadline) noexcept:
    """How long the next nogil slice of a wait ending at `deadline` (-1: never) sleeps:
    at most WAIT_SLICE_NS; 0 once the deadline has passed."""
    cdef int64_t left
    if deadline < 0:
        return WAIT_SLICE_NS
    left = deadline - fq_monotonic_ns()
    return 0 if left <= 0 else (WAIT_SLICE_NS if left > WAIT_SLICE_NS else left)


# ---------------------------------------------------------------------------------------
# status -> exception, in one place
# ---------------------------------------------------------------------------------------

cdef int raise_status(int64_t rc, str what, str path=None, int64_t pos=-1,
                      int op=ERR_OP_NONE) except -1:
    """Raise the exception for a negative status code from csrc/, naming the file and
    position. The mapping itself is fastq._core._codec.status_error (the one place)."""
    raise status_error(rc, what, path, pos if pos >= 0 else None, op)


def _status_error(int64_t rc, str what, str path=None, int64_t pos=-1):
    """The exception raise_status would raise (tests: the one mapping, seen from here)."""
    try:
        raise_status(rc, what, path, pos)
    except FastqError as e:          # every status maps to one
        return e


cdef inline int64_t round_up(int64_t n, int64_t to) noexcept nogil:
    return (n + to - 1) // to * to


# ---------------------------------------------------------------------------------------
# zero-copy views
# ---------------------------------------------------------------------------------------

cdef char *FMT_B = "B"


@cython.final
@cython.freelist(64)
@cython.no_gc            # refers to a Segment only: no cycle (one per key/value view handed out)
cdef class _View:
    """Buffer exporter for a slice of a segment mapping; counts as a live export."""
    cdef Segment seg
    cdef const uint8_t *ptr
    cdef Py_ssize_t length

    def __getbuffer__(self, Py_buffer *view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("fastq record views are read-only")
        if self.seg.data == NULL:
            raise Closed("the segment behind this record was closed")
        view.buf = <void *>self.ptr
        view.obj = self
        view.len = self.length
        view.readonly = 1
        view.itemsize = 1
        view.format = FMT_B if (flags & 0x0004) else NULL   # PyBUF_FORMAT
        view.ndim = 1
        view.shape = &self.length if (flags & 0x0008) else NULL  # PyBUF_ND
        view.strides = NULL
        view.suboffsets = NULL
        view.internal = NULL
        self.seg.exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self.seg.exports -= 1


cdef inline object make_view(Segment seg, const uint8_t *p, int32_t n):
    if n < 0:
        return None
    cdef _View v = _View.__new__(_View)
    v.seg = seg
    v.ptr = p
    v.length = n
    return memoryview(v)


# ---------------------------------------------------------------------------------------
# Segment
# ---------------------------------------------------------------------------------------

cdef int open_file(str path, int flags) except -1:
    cdef bytes b = os.fsencode(path)
    cdef int fd = c_open(b, flags, 0o644)
    if fd < 0:
        raise_status(-errno, "open", path)
    return fd


cdef inline int64_t index_bytes(int64_t entries, int64_t entry) noexcept nogil:
    """File (and mapping) size of an index holding `entries` entries: whole pages."""
    return round_up(max(entries * entry, PAGE), PAGE)


cdef void *map_index(int fd, int64_t cap_bytes, int64_t alloc_bytes, str path,
                     bint readonly=False) except NULL:
    """Map an index file: `cap_bytes` of address space (a full segment's entries), of
    which `alloc_bytes` are preallocated (zero-filled) now; the rest is allocated as the
    .log grows (Segment._grow), before any entry there can be written. `readonly`: map
    it for reading as it is; a file shorter than `alloc_bytes` is CorruptRecord (reading
    its missing entries through the mapping would be a SIGBUS)."""
    cdef void *p
    cdef int rc
    cdef int64_t size
    if readonly:
        size = fq_file_size(fd)
        if size < 0:
            raise_status(size, "stat index", path)
        if size < min(alloc_bytes, cap_bytes):
            raise CorruptRecord(f"index file {path} is {size} bytes, shorter than the "
                                f"{min(alloc_bytes, cap_bytes)} its .log needs", path, size)
    else:
        rc = fq_preallocate(fd, min(alloc_bytes, cap_bytes))
        if rc < 0:
            raise_status(rc, "preallocate index", path)
    rc = fq_map(fd, <size_t>cap_bytes, not readonly, &p)
    if rc < 0:
        raise_status(rc, "map index", path)
    return p


def segment_name(int64_t base_offset):
    return "%020d" % base_offset


cdef class Segment:
    """One segment of a log: ``%020d.log`` + ``.index`` + ``.timeindex``, all mapped.

    Process-safety: any number of processes map the same segment. Bytes below the
    committed end (``LogCore.snapshot()``) are immutable while the segment exists; only
    the writer holding the log lock writes past it. Thread-safety: a Segment is used by
    one LogCore under the GIL.
    """

    def __cinit__(self):
        self.fd = -1
        self.idx_fd = -1
        self.tidx_fd = -1
        self.data = NULL
        self.idx = NULL
        self.tidx = NULL
        self.sealed_end = -1
        self.sealed_max_timestamp = -1

    def __init__(self, str directory, int64_t base_offset, int64_t map_size, int64_t index_cap,
                 bint create=False, int64_t grow_chunk=0, int64_t index_interval=0,
                 int64_t alloc_limit=0, bint readonly=False):
        """Open (or with ``create``, create empty) the segment at ``base_offset``.

        ``map_size`` bytes of address space are mapped for data and ``index_cap``
        entries for each index. The .log is allocated as it is written: FIRST_CHUNK
        when created, then doubling up to ``grow_chunk`` per step, never past
        ``alloc_limit`` (segment_bytes) unless one batch needs it. With
        ``index_interval`` the index files are allocated to what the allocated .log can
        need (``alloc // index_interval + 2`` entries), grown before the .log; without
        it they are allocated in full. ``readonly``: open and map the files for reading
        only (nothing is written; growing raises ReadOnly)."""
        cdef int flags = (O_RDONLY if readonly else O_RDWR) | O_CLOEXEC | (O_CREAT if create else 0)
        cdef int iflags = (O_RDONLY if readonly else O_RDWR | O_CREAT) | O_CLOEXEC
        cdef int rc
        cdef void *p
        cdef int64_t size
        self.base_offset = base_offset
        name = os.path.join(directory, segment_name(base_offset))
        self.path = name + ".log"
        self.index_path = name + ".index"
        self.timeindex_path = name + ".timeindex"
        self.idx_cap = index_cap
        self.tidx_cap = index_cap
        self.interval = index_interval
        self.grow_chunk = max(grow_chunk if grow_chunk > 0 else GROW_MIN, FIRST_CHUNK)
        try:
            self.fd = open_file(self.path, flags)
            size = fq_file_size(self.fd)
            if size < 0:
                raise_status(size, "stat segment", self.path)
            self.map_size = round_up(max(map_size, size, PAGE), PAGE)
            self.alloc_limit = self.map_size if alloc_limit <= 0 else \
                min(self.map_size, round_up(alloc_limit, PAGE))
            if create and size == 0:
                size = min(FIRST_CHUNK, self.alloc_limit)
                rc = fq_preallocate(self.fd, size)
                if rc < 0:
                    raise_status(rc, "preallocate segment", self.path)
            self.alloc_size = size
            self.idx_avail = self._entries_for(size)
            self.inode = os.fstat(self.fd).st_ino
            self.readonly = readonly
            rc = fq_map(self.fd, <size_t>self.map_size, not readonly, &p)
            if rc < 0:
                raise_status(rc, "map segment", self.path)
            self.data = <uint8_t *>p
            # Index files cover at least what the .log's size can need, in every
            # process that sees that size (see _grow): make it so for this one too.
            self.idx_fd = open_file(self.index_path, iflags)
            self.idx = <uint8_t *>map_index(self.idx_fd, index_bytes(index_cap, FQ_INDEX_ENTRY),
                                            index_bytes(self.idx_avail, FQ_INDEX_ENTRY), self.index_path,
                                            readonly)
            self.tidx_fd = open_file(self.timeindex_path, iflags)
            self.tidx = <uint8_t *>map_index(self.tidx_fd, index_bytes(index_cap, FQ_TIMEINDEX_ENTRY),
                                             index_bytes(self.idx_avail, FQ_TIMEINDEX_ENTRY),
                                             self.timeindex_path, readonly)
            # The index mappings outlive the descriptors (growth reopens the files by
            # path, on the slow path): close them, or a log with many segments would
            # hold three descriptors per segment.
            c_close(self.idx_fd)
            self.idx_fd = -1
            c_close(self.tidx_fd)
            self.tidx_fd = -1
        except BaseException:
            self.close()
            raise

    cdef inline int64_t _entries_for(self, int64_t nbytes) noexcept:
        """Index entries a .log of `nbytes` can need: an entry follows more than
        `interval` bytes of batches, so fewer than nbytes // interval (+ 2 to spare)."""
        if self.interval <= 0:
            return self.idx_cap
        return min(self.idx_cap, nbytes // self.interval + 2)

    cdef int _set_alloc(self, int64_t size) except -1:
        """The .log is known to be `size` bytes, so its indexes hold _entries_for(size)."""
        self.alloc_size = size
        self.idx_avail = max(self.idx_avail, self._entries_for(size))
        return 0

    cdef int _grow_indexes(self, int64_t log_size) except -1:
        """Allocate both index files for a .log of `log_size` bytes (before the .log
        grows: whoever sees the .log's size may use the entries that size can need)."""
        cdef int64_t entries = self._entries_for(log_size)
        cdef int fd, rc
        if entries <= self.idx_avail:
            return 0
        for path, entry in ((self.index_path, FQ_INDEX_ENTRY), (self.timeindex_path, FQ_TIMEINDEX_ENTRY)):
            fd = open_file(path, O_RDWR | O_CLOEXEC | O_CREAT)
            with nogil:
                rc = fq_preallocate(fd, index_bytes(entries, entry))
            c_close(fd)
            if rc < 0:
                raise_status(rc, "preallocate index", path)
        self.idx_avail = entries
        return 0

    cdef int _ensure_fd(self) except -1:
        """Reopen the .log descriptor that release_fd closed (a sealed segment made
        active again by truncation needs it to grow), checking it is the same file."""
        cdef int fd
        if self.fd >= 0:
            return 0
        self._live()
        fd = open_file(self.path, O_RDWR | O_CLOEXEC)
        if os.fstat(fd).st_ino != self.inode:
            c_close(fd)
            raise StorageError(0, f"{self.path} was replaced while mapped; reopen the log")
        self.fd = fd
        return 0

    def release_fd(self):
        """Close the .log descriptor of a sealed segment: reads use the mapping, sync()
        then msyncs it, and it never grows unless truncation makes it active again
        (_grow reopens it). Waits for an fsync in progress on it."""
        while self.sync_active:
            with nogil:
                fq_sleep_ns(100000)
        if self.fd >= 0:
            c_close(self.fd)
            self.fd = -1

    @property
    def has_fd(self):
        return self.fd >= 0

    @property
    def closed(self):
        return self.data == NULL

    cdef int _live(self) except -1:
        """Closed once the segment is unmapped (its log was closed, or truncated past
        it, possibly by another thread meanwhile): nothing may touch the mappings."""
        if self.data == NULL:
            raise Closed(f"segment {self.path} is closed")
        return 0

    @property
    def index_capacity(self):
        return self.idx_cap

    cdef int _grow(self, int64_t needed, int64_t wanted=0) except -1:
        """Preallocate the .log file to cover `needed` bytes, and ahead towards `wanted`
        (a full disk fails here, never as a SIGBUS later). Each step adds as much as the
        file holds (at least FIRST_CHUNK, at most grow_chunk), stopping at alloc_limit
        unless `needed` itself is past it. The index files grow first."""
        cdef int64_t target, cur, chunk
        cdef int rc
        if needed <= self.alloc_size and (wanted <= self.alloc_size or self.alloc_size >= self.alloc_limit):
            return 0
        self._live()
        if self.readonly:
            raise ReadOnly(f"cannot grow {self.path}: opened with readonly=True")
        if needed > self.map_size:
            raise RecordTooLarge(f"batch would end at byte {needed}, past the segment's "
                                 f"mapped size {self.map_size}")
        self._ensure_fd()
        cur = fq_file_size(self.fd)
        if cur < 0:
            raise_status(cur, "stat segment", self.path)
        if cur > self.alloc_size:
            self._set_alloc(cur)             # another process grew it
        if needed <= self.alloc_size and (wanted <= self.alloc_size or self.alloc_size >= self.alloc_limit):
            return 0
        chunk = min(max(self.alloc_size, FIRST_CHUNK), self.grow_chunk)
        target = min(max(wanted, self.alloc_size + chunk), self.alloc_limit)
        target = min(self.map_size, round_up(max(target, needed), PAGE))
        self._grow_indexes(target)
        with nogil:
            rc = fq_preallocate(self.fd, target)
        if rc < 0:
            raise_status(rc, "preallocate segment", self.path)
        self._set_alloc(target)
        return 0

    def grow(self, int64_t needed, int64_t wanted=0):
        """Make sure `needed` bytes of the .log are allocated (see _grow)."""
        self._grow(needed, wanted)

    @property
    def index_allocated(self):
        """Entries both index files are known to hold (grown with the .log)."""
        return self.idx_avail

    def prefault(self, int64_t upto):
        """Populate this mapping's page tables, writable, for [populated, upto) within
        the allocated file (MADV_POPULATE_WRITE, GIL released): the page faults a
        writer would otherwise take once per 4 KiB — ext4's page_mkwrite, a fresh
        page, tens of µs on a VM — happen here instead. Run by the pretoucher thread
        (fastq.log); close() waits for it. Returns the new populated end."""
        cdef int64_t start = self.populated
        cdef int64_t end = min(upto, self.alloc_size) // PAGE * PAGE
        cdef uint8_t *data = self.data
        if data == NULL or self.pf_active or end <= start or self.readonly:
            return self.populated
        self.pf_active = 1
        try:
            with nogil:
                fq_prefault_write(data + start, <size_t>(end - start))
        finally:
            self.pf_active = 0
        # also on failure (an old kernel without MADV_POPULATE_WRITE): faults then
        # happen on the append path, as they would without a pretoucher
        if end > self.populated:
            self.populated = end
        return self.populated

    def refresh_size(self):
        """Re-read the allocated size (another process may have grown the file)."""
        cdef int64_t cur
        if self.fd < 0:                      # released (sealed): the path names the file
            try:
                cur = os.stat(self.path).st_size
            except OSError as e:
                raise_status(-e.errno, "stat segment", self.path)
        else:
            cur = fq_file_size(self.fd)
            if cur < 0:
                raise_status(cur, "stat segment", self.path)
        self._set_alloc(cur)
        return cur

    cdef int64_t _find_pos(self, int64_t offset, int64_t limit, int64_t idx_count) except -2:
        """Position of the batch that holds `offset`, searching below `limit`.
        Returns -1 when `offset` is at or past the end of the segment's data."""
        cdef int64_t i, pos = 0, rel = offset - self.base_offset
        cdef uint32_t r, p
        cdef fq_batch_info info
        cdef int rc
        self._live()
        if rel < 0:
            rel = 0
        if idx_count > 0 and rel <= 0xFFFFFFFF:
            i = fq_index_floor(self.idx, idx_count, <uint32_t>rel)
            if i >= 0:
                fq_index_get(self.idx, i, &r, &p)
                if p < limit:
                    pos = p
        while pos + FQ_BATCH_LOG_OVERHEAD <= limit:
            rc = fq_batch_validate(self.data + pos, <size_t>(limit - pos), INT32_MAX, 0, &info)
            if rc < 0:
                raise_status(rc, "find offset", self.path, pos)
            if info.base_offset + info.last_offset_delta >= offset:
                return pos
            pos += info.total_size
        return -1

    def find_position(self, int64_t offset, int64_t limit, int64_t idx_count):
        return self._find_pos(offset, limit, idx_count)

    cdef int _scan(self, int64_t start, int64_t limit, int64_t expected, int64_t stop_offset,
                   int check, int rebuild, int64_t interval, int64_t max_size, int allow_gaps,
                   ScanResult *out) except -1:
        """Walk batches from `start` while they are valid and their offsets dense.

        check=1 verifies CRCs and record framing. rebuild=1 rewrites the indexes from
        position `start` (which must then be 0) as the writer would have. Stops at a zero
        length field, `limit`, a batch whose base offset is >= stop_offset (when >= 0),
        or the first bad batch (out.status, out.bad_pos). A batch claiming more than
        `max_size` bytes is corrupt, not torn: a torn write keeps its length field."""
        cdef int64_t pos = start
        cdef int64_t nxt = expected
        cdef int rc
        cdef fq_batch_info info
        cdef int64_t bsi = 0, icount = 0, tcount = 0, maxts = -1, last_tts = -1
        out.status = 0
        out.bad_pos = -1
        out.batches = 0
        with nogil:
            while pos + FQ_BATCH_LOG_OVERHEAD <= limit:
                if fq_be_get32(self.data + pos + FQ_BATCH_OFF_LENGTH) == 0 and \
                        fq_be_get64(self.data + pos) == 0:
                    break   # zero-filled preallocated space: end of data
                if stop_offset >= 0 and <int64_t>fq_be_get64(self.data + pos) >= stop_offset:
                    break
                rc = fq_batch_validate(self.data + pos, <size_t>(limit - pos), max_size, check, &info)
                if rc == 0 and (info.base_offset < nxt if allow_gaps else info.base_offset != nxt):
                    rc = FQ_ECORRUPT
                if rc == 0 and check:
                    if (info.attributes & FQ_ATTR_COMPRESSION_MASK) == 0:
                        rc = fq_batch_check_records(self.data + pos, &info)
                if rc < 0:
                    out.status = rc
                    out.bad_pos = pos
                    break
                if info.max_timestamp > maxts:
                    maxts = info.max_timestamp
                if rebuild:
                    bsi += info.total_size
                    if bsi > interval:
                        if icount < self.idx_avail:
                            fq_index_put(self.idx, icount, <uint32_t>(info.base_offset - self.base_offset),
                                         <uint32_t>pos)
                            icount += 1
                        if maxts > last_tts and tcount < self.idx_avail:
                            fq_timeindex_put(self.tidx, tcount, maxts,
                                             <uint32_t>(info.base_offset + info.last_offset_delta - self.base_offset))
                            tcount += 1
                            last_tts = maxts
                        bsi = 0
                nxt = info.base_offset + info.last_offset_delta + 1
                pos += info.total_size
                out.batches += 1
            if rebuild:
                # clear stale entries after the rebuilt ones
                if icount < self.idx_avail:
                    memset(self.idx + icount * FQ_INDEX_ENTRY, 0, <size_t>((self.idx_avail - icount) * FQ_INDEX_ENTRY))
                if tcount < self.idx_avail:
                    memset(self.tidx + tcount * FQ_TIMEINDEX_ENTRY, 0,
                           <size_t>((self.idx_avail - tcount) * FQ_TIMEINDEX_ENTRY))
        out.end_pos = pos
        out.next_offset = nxt
        out.max_timestamp = maxts
        out.index_count = icount
        out.timeindex_count = tcount
        out.bytes_since_index = bsi
        return 0

    def scan(self, int64_t start=0, int64_t limit=-1, int64_t expected=-1, int64_t stop_offset=-1,
             bint check=True, bint rebuild=False, int64_t interval=4096, int64_t max_size=INT32_MAX,
             bint allow_gaps=False):
        """Walk valid batches (see _scan). Returns a dict describing where it stopped."""
        cdef ScanResult r
        if self.data == NULL:
            raise Closed(f"segment {self.path} is closed")
        if limit < 0 or limit > self.alloc_size:
            limit = self.alloc_size
        if expected < 0:
            expected = self.base_offset
        if rebuild and start != 0:
            raise InvalidArgument("index rebuild must scan from position 0")
        if rebuild and self.readonly:
            raise ReadOnly(f"cannot rebuild the indexes of {self.path}: opened with readonly=True")
        self._scan(start, limit, expected, stop_offset, check, rebuild, interval, max_size, allow_gaps, &r)
        return {
            "end_pos": r.end_pos, "next_offset": r.next_offset, "max_timestamp": r.max_timestamp,
            "batches": r.batches, "index_count": r.index_count, "timeindex_count": r.timeindex_count,
            "bytes_since_index": r.bytes_since_index, "status": r.status,
            "bad_pos": r.bad_pos if r.status else None, "limit": limit,
        }

    cdef bint _batch_head_at(self, int64_t p, int64_t limit, int64_t offset) noexcept:
        """Whether a batch header for `offset` plausibly starts at `p`: its base offset,
        the magic byte and a length that ends by `limit` — O(1), no CRC (a shifted index
        entry passing all three by chance is one in billions, not one in 256)."""
        cdef int64_t length
        if p + FQ_BATCH_HEADER_SIZE > limit:
            return False
        length = <int32_t>fq_be_get32(self.data + p + FQ_BATCH_OFF_LENGTH)
        return (<int64_t>fq_be_get64(self.data + p) == offset
                and self.data[p + FQ_BATCH_OFF_MAGIC] == FQ_BATCH_MAGIC
                and length >= FQ_BATCH_HEADER_SIZE - FQ_BATCH_LOG_OVERHEAD
                and p + FQ_BATCH_LOG_OVERHEAD + length <= limit)

    def valid_index_prefix(self, int64_t limit):
        """Number of leading .index/.timeindex entries that are strictly increasing and
        point below `limit` at a batch header for the entry's offset (_batch_head_at) —
        how a sealed segment's index is trusted on open (a damaged entry ends the
        trusted prefix, and the rest is found by scanning)."""
        cdef int64_t i, n = 0, t = 0
        cdef uint32_t r, p, pr = 0, pp = 0
        cdef int64_t ts, pts = -1
        self._live()
        for i in range(self.idx_avail):
            fq_index_get(self.idx, i, &r, &p)
            if p >= limit or (i > 0 and (r <= pr or p <= pp)) or (i == 0 and r == 0 and p == 0):
                break
            if not self._batch_head_at(p, limit, self.base_offset + r):
                break
            pr = r
            pp = p
            n += 1
        for i in range(self.idx_avail):
            fq_timeindex_get(self.tidx, i, &ts, &r)
            if ts <= pts or (i == 0 and ts == 0 and r == 0):
                break
            pts = ts
            t += 1
        return n, t

    def last_timeindex(self, int64_t count):
        """(timestamp, relative offset) of entry count-1, or None."""
        cdef int64_t ts
        cdef uint32_t r
        if count <= 0:
            return None
        self._live()
        fq_timeindex_get(self.tidx, count - 1, &ts, &r)
        return ts, r

    def timeindex_floor(self, int64_t count, int64_t ts):
        """Relative offset of the last time-index entry with timestamp <= ts, or -1."""
        cdef int64_t i
        cdef int64_t t
        cdef uint32_t r
        self._live()
        i = fq_timeindex_floor(self.tidx, count, ts)
        if i < 0:
            return -1
        fq_timeindex_get(self.tidx, i, &t, &r)
        return r

    def zero(self, int64_t start, int64_t end):
        """Overwrite [start, end) of the data with zeros (discard an uncommitted or torn
        tail; the file never shrinks because other processes may have it mapped)."""
        if self.data == NULL:
            raise Closed(f"segment {self.path} is closed")
        if self.readonly:
            raise ReadOnly(f"cannot write {self.path}: opened with readonly=True")
        end = min(end, self.alloc_size)
        if end > start >= 0:
            memset(self.data + start, 0, <size_t>(end - start))

    def zero_index(self, int64_t index_from, int64_t timeindex_from):
        self._live()
        if self.readonly:
            raise ReadOnly(f"cannot write {self.index_path}: opened with readonly=True")
        if index_from < self.idx_avail:
            memset(self.idx + index_from * FQ_INDEX_ENTRY, 0,
                   <size_t>((self.idx_avail - index_from) * FQ_INDEX_ENTRY))
        if timeindex_from < self.idx_avail:
            memset(self.tidx + timeindex_from * FQ_TIMEINDEX_ENTRY, 0,
                   <size_t>((self.idx_avail - timeindex_from) * FQ_TIMEINDEX_ENTRY))

    def sync(self):
        """fdatasync the .log file (msync of the mapping once release_fd closed the
        descriptor: the same write-back on Linux). A failure is final: raise
        FsyncFailed, never retry."""
        cdef int rc
        cdef int fd = self.fd
        cdef uint8_t *data = self.data
        cdef size_t n = <size_t>self.alloc_size
        if data == NULL:
            raise Closed(f"segment {self.path} is closed")
        self.sync_active += 1                # close()/release_fd() wait: fd and mapping stay
        try:
            with nogil:
                rc = fq_datasync(fd) if fd >= 0 else (fq_msync(data, n) if n > 0 else 0)
        finally:
            self.sync_active -= 1
        if rc < 0:
            raise_status(rc, "fsync", self.path, -1, ERR_OP_SYNC)

    def sync_range(self, int64_t start, int64_t end):
        cdef int rc
        if self.data == NULL:
            raise Closed(f"segment {self.path} is closed")
        if end <= start:
            return
        self.sync_active += 1                # close() waits: the mapping stays until we are done
        try:
            with nogil:
                rc = fq_msync(self.data + start, <size_t>(end - start))
        finally:
            self.sync_active -= 1
        if rc < 0:
            raise_status(rc, "msync", self.path, -1, ERR_OP_SYNC)

    def read_bytes(self, int64_t start, int64_t end):
        """Copy of raw data bytes [start, end) (tools and tests)."""
        if self.data == NULL:
            raise Closed(f"segment {self.path} is closed")
        end = min(end, self.alloc_size)
        if end <= start:
            return b""
        return PyBytes_FromStringAndSize(<char *>self.data + start, end - start)

    def view(self, int64_t start, int64_t end):
        """Zero-copy memoryview of data bytes [start, end) — e.g. to serve a Kafka fetch."""
        if self.data == NULL:
            raise Closed(f"segment {self.path} is closed")
        if not (0 <= start <= end <= self.alloc_size):
            raise InvalidArgument(f"range [{start}, {end}) outside the segment's {self.alloc_size} bytes")
        return make_view(self, self.data + start, <int32_t>(end - start))

    def close(self):
        """Unmap and close. Refuses with BufferError while memoryviews are alive; waits
        for a prefault or sync in progress (another thread) to finish."""
        if self.exports > 0:
            raise BufferError(f"cannot close {self.path}: {self.exports} record view(s) still alive")
        while self.pf_active or self.sync_active:
            with nogil:
                fq_sleep_ns(100000)
        if self.data != NULL:
            fq_unmap(self.data, <size_t>self.map_size)
            self.data = NULL
        if self.idx != NULL:
            fq_unmap(self.idx, <size_t>round_up(max(self.idx_cap * FQ_INDEX_ENTRY, PAGE), PAGE))
            self.idx = NULL
        if self.tidx != NULL:
            fq_unmap(self.tidx, <size_t>round_up(max(self.tidx_cap * FQ_TIMEINDEX_ENTRY, PAGE), PAGE))
            self.tidx = NULL
        if self.fd >= 0:
            c_close(self.fd)
            self.fd = -1
        if self.idx_fd >= 0:
            c_close(self.idx_fd)
            self.idx_fd = -1
        if self.tidx_fd >= 0:
            c_close(self.tidx_fd)
            self.tidx_fd = -1

    def __dealloc__(self):
        # Internal object: a dropped segment (retention) is unmapped quietly once no
        # reader holds it. Views hold a reference, so exports is 0 here.
        if self.data != NULL:
            fq_unmap(self.data, <size_t>self.map_size)
        if self.idx != NULL:
            fq_unmap(self.idx, <size_t>round_up(max(self.idx_cap * FQ_INDEX_ENTRY, PAGE), PAGE))
        if self.tidx != NULL:
            fq_unmap(self.tidx, <size_t>round_up(max(self.tidx_cap * FQ_TIMEINDEX_ENTRY, PAGE), PAGE))
        if self.fd >= 0:
            c_close(self.fd)
        if self.idx_fd >= 0:
            c_close(self.idx_fd)
        if self.tidx_fd >= 0:
            c_close(self.tidx_fd)

    def __repr__(self):
        return f"<Segment {self.path} base={self.base_offset} sealed_end={self.sealed_end}>"


# ---------------------------------------------------------------------------------------
# small OS helpers for fastq.log (policy code calls these; the OS layer stays in C)
# ---------------------------------------------------------------------------------------

cdef extern from *:
    """
    #ifdef FASTQ_DEBUG
    #define FQ_DEBUG_BUILD 1
    #else
    #define FQ_DEBUG_BUILD 0
    #endif
    """
    int FQ_DEBUG_BUILD

DEBUG_BUILD = bool(FQ_DEBUG_BUILD)   # built with FASTQ_DEBUG=1 or FASTQ_SANITIZE=1
CRC_HW = bool(fq_crc32c_hw())        # CRC-32C runs on CPU instructions
STATUS_TRUNCATED = FQ_ETRUNCATED   # scan status: a batch runs past the end of the file
STATUS_CORRUPT = FQ_ECORRUPT


def fsync_dir(str path):
    """fsync a directory (a create/rename/unlink in it becomes durable)."""
    cdef bytes b = os.fsencode(path)
    cdef const char *cp = b
    cdef int rc
    with nogil:
        rc = fq_fsync_dir(cp)
    if rc < 0:
        raise_status(rc, "fsync directory", path, -1, ERR_OP_SYNC)


def flock(int fd, bint exclusive, bint wait):
    """flock the file; returns False when `wait` is false and the lock is held."""
    cdef int rc
    with nogil:
        rc = fq_flock(fd, exclusive, wait)
    if rc == 0:
        return True
    if not wait and rc in (-11, -35):   # EWOULDBLOCK on Linux / macOS
        return False
    raise_status(rc, "flock", fd_path(fd))


cdef str fd_path(int fd):
    """The path of an open descriptor, for an error message (None where unknown)."""
    cdef char buf[4096]
    if fq_fd_path(fd, buf, sizeof(buf)) < 0:
        return None
    return os.fsdecode(<bytes>buf)


def funlock(int fd):
    cdef int rc = fq_funlock(fd)
    if rc < 0:
        raise_status(rc, "unlock")


def truncate_file(str path, int64_t length):
    """Shrink or extend a file to `length` bytes. Only for files no other process has
    mapped (recovery runs alone)."""
    try:
        os.truncate(path, length)
    except OSError as e:
        raise_status(-e.errno, "truncate", path)


def msync_state(LogCore log):
    """Write the state page back (msync) — used when marking a log clean."""
    cdef int rc
    if log.st == NULL:
        return
    rc = fq_msync(log.st, FQ_STATE_SIZE)
    if rc < 0:
        raise_status(rc, "msync state", fd_path(log.state_fd), -1, ERR_OP_SYNC)


def scan_buffer(buf, int64_t base_offset, int64_t expected=-1, int64_t stop_offset=-1,
                int64_t max_size=INT32_MAX, bint allow_gaps=False):
    """Walk the valid batches of a segment's bytes held in any buffer (a read-only mmap:
    ``fastq verify`` changes nothing) exactly as recovery does (Segment.scan with CRC
    and record checks, no index rebuild). Returns the same dict as Segment.scan."""
    cdef Py_buffer view
    cdef ScanResult r
    cdef Segment seg = Segment.__new__(Segment)     # borrows the buffer: never mapped
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        seg.data = <uint8_t *>view.buf
        seg.base_offset = base_offset
        seg._scan(0, view.len, base_offset if expected < 0 else expected, stop_offset, 1, 0,
                  4096, max_size, allow_gaps, &r)
    finally:
        seg.data = NULL
        PyBuffer_Release(&view)
    return {
        "end_pos": r.end_pos, "next_offset": r.next_offset, "max_timestamp": r.max_timestamp,
        "batches": r.batches, "status": r.status, "bad_pos": r.bad_pos if r.status else None,
        "limit": view.len,
    }


def index_entry(Segment seg, int64_t i):
    """(relative offset, position) of .index entry i."""
    cdef uint32_t r, p
    if seg.idx == NULL or not 0 <= i < seg.idx_avail:
        raise InvalidArgument(f"index entry {i} out of range")
    fq_index_get(seg.idx, i, &r, &p)
    return r, p


def timeindex_entry(Segment seg, int64_t i):
    """(timestamp, relative offset) of .timeindex entry i."""
    cdef int64_t ts
    cdef uint32_t r
    if seg.tidx == NULL or not 0 <= i < seg.idx_avail:
        raise InvalidArgument(f"time index entry {i} out of range")
    fq_timeindex_get(seg.tidx, i, &ts, &r)
    return ts, r


include "_faults.pxi"
include "_records.pxi"
include "_logcore.pxi"
include "_pstate.pxi"
include "_topicsupport.pxi"
include "_queuestate.pxi"
include "_queuecore.pxi"
include "_limiter.pxi"
include "_pubsub.pxi"
include "_taskcore.pxi"
