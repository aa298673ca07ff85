# Declarations for the shared-memory ring (csrc/fq_ring.h) and its Cython class.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

from fastq._core._cdefs cimport fq_header


cdef extern from "fq_ring.h" nogil:
    enum:
        FQ_RING_VERSION
        FQ_RING_HDR_SIZE
        FQ_RING_REC_HDR
        FQ_RING_MIN_CAPACITY
        FQ_RING_MAX_MESSAGE
        FQ_RING_F_SINGLE_PRODUCER
        FQ_RING_F_SINGLE_CONSUMER
        FQ_RING_WAIT_SPIN
        FQ_RING_WAIT_YIELD
        FQ_RING_WAIT_FUTEX
        FQ_RING_EBUSY
    uint64_t FQ_RING_MAX_CAPACITY

    ctypedef struct fq_ring_hdr:
        int32_t creator_pid
        uint32_t prod_lock
        uint32_t cons_lock
        uint64_t lock_steals

    ctypedef struct fq_ring:
        fq_ring_hdr *hdr
        uint8_t *data
        uint64_t capacity
        uint64_t max_messages
        uint32_t max_message
        uint32_t flags
        int wait
        int64_t spin_ns
        uint32_t rd_active

    ctypedef struct fq_ring_iov:
        const void *base
        uint32_t len

    uint64_t fq_ring_region_size(uint64_t capacity, uint32_t max_message)
    int fq_ring_format(void *mem, uint64_t len, uint64_t capacity, uint32_t max_message,
                       uint64_t max_messages, uint32_t flags, int32_t creator_pid)
    int fq_ring_attach(fq_ring *r, void *mem, uint64_t len, int wait, int64_t spin_ns)
    int fq_ring_put(fq_ring *r, const void *msg, uint32_t len, int64_t timeout_ns, int trylock)
    int fq_ring_put_many(fq_ring *r, const fq_ring_iov *v, int64_t n, int64_t timeout_ns, int trylock)
    int64_t fq_ring_read_begin(fq_ring *r, int64_t timeout_ns, int trylock, const uint8_t **msg)
    int64_t fq_ring_read_next(fq_ring *r, const uint8_t **msg)
    void fq_ring_read_commit(fq_ring *r)
    void fq_ring_read_abort(fq_ring *r)
    int fq_ring_wait_readable(fq_ring *r, int64_t timeout_ns) nogil
    int64_t fq_ring_get(fq_ring *r, void *dst, uint64_t cap, int64_t timeout_ns, int trylock,
                        uint64_t *needed)
    void fq_ring_interrupt(fq_ring *r)
    uint64_t fq_ring_count(const fq_ring *r)
    uint64_t fq_ring_used(const fq_ring *r)
    int fq_ring_is_full(const fq_ring *r)
    int fq_ring_debug_hold_lock(fq_ring *r, int which)


cdef enum:
    OP_PUT = 0         # _raise_status: which side a status came from
    OP_GET = 1
    OP_NONE = 2        # _raise_status: neither (create, attach, lock)
    REC_FIXED = 24     # framed record header (see Ring._put_record; read by fastq._core._producer)


cdef int _raise_status(int64_t rc, int op, str what) except -1


# One framed record, read in place (layout above Ring._put_record in _ring.pyx): the one
# reader of the frame layout, for Ring._get_records and fastq._core._producer's drain.
cdef struct FrameView:
    const uint8_t *m          # the framed record
    uint32_t len              # its length
    uint32_t partition
    int64_t timestamp
    const uint8_t *key        # NULL for a null key (key_len -1)
    int32_t key_len
    const uint8_t *value      # NULL for a null value (value_len -1)
    int32_t value_len
    uint32_t n_headers
    const uint8_t *hp         # the next header not yet read by _frame_header
    const uint8_t *hend       # the end of the header area

cdef int _frame_view(const uint8_t *m, int64_t n, FrameView *out) except -1
cdef int _frame_header(FrameView *f, fq_header *h) except -1


cdef class Ring:
    cdef fq_ring _r               # C handle: pointers into the mapping, wait strategy, read state
    cdef void *_mem               # start of the mapping; NULL once closed (or never opened)
    cdef size_t _mem_len          # bytes mapped
    cdef int _fd                  # descriptor of the backing file/memfd (-1 when closed)
    cdef object _path             # file path of a named ring, None for an anonymous one
    cdef object _name             # the name given by the user, None for an anonymous one
    cdef str _wait_name           # "futex" | "spin" | "yield", kept for pickling and repr
    cdef Py_ssize_t _exports      # memoryviews from get_view() still alive
    cdef bint _view_active        # a get_view() read holds this handle's consumer side
    cdef uint32_t _busy           # operations in flight on this handle (close waits for them)
    cdef int32_t _busy_pid        # process that counted _busy (a forked child ignores it)

    cdef int _open_fd(self, int fd, bint format, uint64_t capacity, uint32_t max_message,
                      uint64_t max_messages, uint32_t flags, int wait, int64_t spin_ns) except -1
    cdef int _enter(self) except -1
    cdef int _enter_read(self) except -1
    cdef void _leave(self) noexcept
    cdef bytes _take(self, const uint8_t *m, int64_t n)
    cdef int64_t _read_begin(self, int64_t tmo, const uint8_t **m) except? -2
    cdef int64_t _begin(self, int64_t tmo, const uint8_t **m) except? -1
    cdef void _release_view(self) noexcept
    cdef int _put_bytes(self, const void *p, uint64_t n, int64_t tmo, str what) except -1
    cdef int64_t _read_first(self, const uint8_t **m) except? -2
    cdef int64_t _read_next(self, const uint8_t **m) noexcept
    cdef void _read_commit(self) noexcept
    cdef uint64_t _used(self) noexcept
    cdef int64_t _put_rec(self, uint32_t partition, object value, object key, object headers,
                          object timestamp, int64_t tmo) except -1


cdef class _RingView:
    cdef Ring _ring               # the ring whose consumer side this view holds
    cdef const uint8_t *_ptr      # payload inside the mapping
    cdef Py_ssize_t _len          # payload length
    cdef int _state               # 0 fresh, 1 exported, 2 released (message consumed)
