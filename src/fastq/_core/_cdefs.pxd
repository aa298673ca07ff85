# Declarations of the plain-C core in csrc/ for every Cython module of fastq.
# One place, so a header change is mirrored once.
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "fq_status.h":
    enum:
        FQ_OK
        FQ_ECORRUPT
        FQ_ETRUNCATED
        FQ_ETOOBIG
        FQ_EINVAL
        FQ_EFULL
        FQ_EEMPTY
        FQ_ETIMEDOUT
        FQ_ECLOSED
        FQ_EUNSUPPORTED
        FQ_EMAGIC
        FQ_ESTALE


cdef extern from "fq_os.h" nogil:
    int fq_map(int fd, size_t len, int writable, void **out)
    int fq_unmap(void *addr, size_t len)
    int fq_map_anon(size_t len, void **out)
    int fq_prefault_write(void *addr, size_t len)
    int fq_preallocate(int fd, int64_t len)
    int64_t fq_file_size(int fd)
    int fq_datasync(int fd)
    int fq_msync(void *addr, size_t len)
    int fq_fsync_dir(const char *path)
    int fq_flock(int fd, int exclusive, int wait)
    int fq_funlock(int fd)
    int fq_pid_alive(int32_t pid)
    int fq_pid_dead(uint32_t pid)
    int32_t fq_getpid()
    int fq_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns)
    int fq_wake(uint32_t *addr, int n)
    int fq_has_futex()
    void fq_cpu_relax()
    void fq_yield()
    int64_t fq_monotonic_ns()
    int64_t fq_realtime_ms()
    int64_t fq_realtime_coarse_ms()
    void fq_sleep_ns(int64_t ns)
    uint64_t fq_load_acquire_u64(const uint64_t *p)
    void fq_store_release_u64(uint64_t *p, uint64_t v)
    uint32_t fq_load_acquire_u32(const uint32_t *p)
    void fq_store_release_u32(uint32_t *p, uint32_t v)
    int fq_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired)
    uint32_t fq_fetch_add_u32(uint32_t *p, uint32_t v)
    uint64_t fq_fetch_add_u64(uint64_t *p, uint64_t v)
    void fq_fence()


cdef extern from "fq_crc32c.h" nogil:
    uint32_t fq_crc32c(uint32_t crc, const void *data, size_t n)
    uint32_t fq_crc32c_sw(uint32_t crc, const void *data, size_t n)
    int fq_crc32c_hw()


cdef extern from "fq_varint.h" nogil:
    enum:
        FQ_VARINT_MAX
        FQ_VARLONG_MAX
    int fq_varint_size(int32_t v)
    int fq_varlong_size(int64_t v)
    int fq_varint_encode(uint8_t *dst, int32_t v)
    int fq_varlong_encode(uint8_t *dst, int64_t v)
    int fq_uvarint_encode(uint8_t *dst, uint64_t v)
    int fq_varint_decode(const uint8_t *src, size_t avail, int32_t *out)
    int fq_varlong_decode(const uint8_t *src, size_t avail, int64_t *out)
    int fq_uvarint_decode(const uint8_t *src, size_t avail, uint64_t *out)


cdef extern from "fq_batch.h" nogil:
    enum:
        FQ_BATCH_OFF_BASE_OFFSET
        FQ_BATCH_OFF_LENGTH
        FQ_BATCH_OFF_LEADER_EPOCH
        FQ_BATCH_OFF_MAGIC
        FQ_BATCH_OFF_CRC
        FQ_BATCH_OFF_ATTRIBUTES
        FQ_BATCH_OFF_LAST_OFFSET_DELTA
        FQ_BATCH_OFF_BASE_TIMESTAMP
        FQ_BATCH_OFF_MAX_TIMESTAMP
        FQ_BATCH_OFF_PRODUCER_ID
        FQ_BATCH_OFF_PRODUCER_EPOCH
        FQ_BATCH_OFF_BASE_SEQUENCE
        FQ_BATCH_OFF_RECORD_COUNT
        FQ_BATCH_HEADER_SIZE
        FQ_BATCH_LOG_OVERHEAD
        FQ_BATCH_MAGIC
        FQ_ATTR_COMPRESSION_MASK
        FQ_ATTR_TIMESTAMP_LOG_APPEND
        FQ_ATTR_TRANSACTIONAL
        FQ_ATTR_CONTROL

    ctypedef struct fq_header:
        const uint8_t *key
        int32_t key_len
        const uint8_t *value
        int32_t value_len

    ctypedef struct fq_record_in:
        int64_t timestamp
        const uint8_t *key
        int32_t key_len
        const uint8_t *value
        int32_t value_len
        const fq_header *headers
        int32_t n_headers

    ctypedef struct fq_batch_info:
        int64_t base_offset
        int32_t batch_length
        int64_t total_size
        int16_t attributes
        int32_t last_offset_delta
        int64_t base_timestamp
        int64_t max_timestamp
        int64_t producer_id
        int16_t producer_epoch
        int32_t base_sequence
        int32_t record_count
        uint32_t crc

    ctypedef struct fq_record_view:
        int32_t size
        int8_t attributes
        int64_t timestamp_delta
        int32_t offset_delta
        const uint8_t *key
        int32_t key_len
        const uint8_t *value
        int32_t value_len
        const uint8_t *headers
        int32_t n_headers
        int32_t headers_len

    int64_t fq_record_size(const fq_record_in *r, int64_t timestamp_delta, int32_t offset_delta)
    int64_t fq_batch_size(const fq_record_in *recs, int32_t n)
    int32_t fq_batch_fit(const fq_record_in *recs, int32_t n, int64_t max_bytes, int64_t *size)
    int64_t fq_batch_encode(uint8_t *dst, size_t cap, int64_t base_offset, int16_t attributes,
                            const fq_record_in *recs, int32_t n)
    int64_t fq_batch_encode_producer(uint8_t *dst, size_t cap, int64_t base_offset, int16_t attributes,
                                     int64_t producer_id, int16_t producer_epoch, int32_t base_sequence,
                                     const fq_record_in *recs, int32_t n)
    enum:
        FQ_CONTROL_ABORT
        FQ_CONTROL_COMMIT
        FQ_CONTROL_BATCH_SIZE
    int64_t fq_batch_encode_control(uint8_t *dst, size_t cap, int64_t base_offset, int64_t producer_id,
                                    int16_t producer_epoch, int16_t type, int32_t coordinator_epoch,
                                    int64_t timestamp)
    int fq_batch_control_type(const uint8_t *batch, const fq_batch_info *info)
    void fq_batch_set_base_offset(uint8_t *batch, int64_t base_offset)
    int fq_batch_validate(const uint8_t *buf, size_t avail, int64_t max_size, int check_crc,
                          fq_batch_info *info)
    int fq_record_decode(const uint8_t *p, size_t avail, fq_record_view *out)
    int fq_header_decode(const uint8_t *p, size_t avail, fq_header *out)
    int fq_batch_check_records(const uint8_t *batch, const fq_batch_info *info)
    void fq_be_put64(uint8_t *p, uint64_t v)
    void fq_be_put32(uint8_t *p, uint32_t v)
    void fq_be_put16(uint8_t *p, uint16_t v)
    uint64_t fq_be_get64(const uint8_t *p)
    uint32_t fq_be_get32(const uint8_t *p)
    uint16_t fq_be_get16(const uint8_t *p)


cdef extern from "fq_producer.h" nogil:
    enum:
        FQ_PRODUCER_BATCHES
        FQ_PSEQ_APPEND
        FQ_PSEQ_DUPLICATE
        FQ_PSEQ_FENCED
        FQ_PSEQ_OUT_OF_ORDER

    ctypedef struct fq_pbatch:
        int32_t first_seq
        int32_t last_seq
        int64_t base_offset
        int64_t max_timestamp

    ctypedef struct fq_pentry:
        int64_t producer_id
        int16_t epoch
        int16_t count
        int16_t head
        fq_pbatch batches[5]

    int32_t fq_seq_next(int32_t seq)
    int32_t fq_seq_last(int32_t first, int32_t count)
    int fq_pentry_check(const fq_pentry *e, int16_t epoch, int32_t first_seq, int32_t last_seq,
                        const fq_pbatch **dup)
    int32_t fq_pentry_next_seq(const fq_pentry *e)
    void fq_pentry_record(fq_pentry *e, int16_t epoch, int32_t first_seq, int32_t last_seq,
                          int64_t base_offset, int64_t max_timestamp)


cdef extern from "fq_index.h" nogil:
    enum:
        FQ_INDEX_ENTRY
        FQ_TIMEINDEX_ENTRY
    int64_t fq_index_floor(const uint8_t *idx, int64_t n, uint32_t rel)
    int64_t fq_timeindex_ceil(const uint8_t *tidx, int64_t n, int64_t ts)
    int64_t fq_timeindex_floor(const uint8_t *tidx, int64_t n, int64_t ts)
    void fq_index_put(uint8_t *idx, int64_t i, uint32_t rel, uint32_t pos)
    void fq_index_get(const uint8_t *idx, int64_t i, uint32_t *rel, uint32_t *pos)
    void fq_timeindex_put(uint8_t *tidx, int64_t i, int64_t ts, uint32_t rel)
    void fq_timeindex_get(const uint8_t *tidx, int64_t i, int64_t *ts, uint32_t *rel)


cdef extern from "fq_queue.h" nogil:
    enum:
        FQ_Q_PRIORITIES
        FQ_Q_DELAYED
        FQ_Q_LANES
        FQ_Q_MAX_PARTITIONS
        FQ_Q_MAX_SESSIONS
        FQ_Q_NO_OWNER
        FQ_Q_FREE
        FQ_Q_AVAILABLE
        FQ_Q_ACQUIRED
        FQ_Q_ACKED
        FQ_Q_ARCHIVED
        FQ_Q_WAITING
        FQ_Q_FLAG_DIRTY
    ctypedef struct fq_q_slot:
        uint8_t state
        uint16_t owner
        uint32_t deliveries
        int64_t deadline_ms
    ctypedef struct fq_q_lane:
        int64_t spso
        int64_t speo
        int64_t available
        int64_t acquired
        int64_t next_expiry_ms
        int64_t avail_hint
        int64_t settled
        int64_t dead
    ctypedef struct fq_q_session:
        uint32_t pid
        uint32_t live
        int64_t inflight
        int64_t claimed_ms
    ctypedef struct fq_q_intent:
        uint32_t op
        uint32_t lane
        int64_t offset
        uint32_t dst_lane
        int64_t dst_end
        uint32_t deliveries
    ctypedef struct fq_q_limits:
        int64_t max_depth
        int64_t max_bytes
        int64_t high
        int64_t low
        int64_t block_timeout_us
        uint32_t overflow
        uint32_t over
    ctypedef struct fq_q_drain:
        uint32_t next
        int64_t last_ms
    ctypedef struct fq_q_hdr:
        uint32_t version
        uint32_t partitions
        uint32_t window
        uint32_t delay_window
        uint32_t max_sessions
        uint32_t dedup_capacity
        uint64_t size
        uint32_t lock
        uint32_t flags
        uint64_t lock_steals
        uint64_t heap_len
        uint64_t dedup_used
        fq_q_intent intent
        fq_q_limits limits
        fq_q_drain drain
    ctypedef struct fq_q:
        fq_q_hdr *hdr
        fq_q_lane *lanes
        fq_q_session *sessions
        uint32_t me
    int64_t fq_q_layout(uint32_t partitions, uint32_t window, uint32_t delay_window,
                        uint32_t max_sessions, uint32_t dedup_capacity)
    int fq_q_init(void *map, uint32_t partitions, uint32_t window, uint32_t delay_window,
                  uint32_t max_sessions, uint32_t dedup_capacity)
    int fq_q_attach(fq_q *q, void *map, uint64_t size)
    int fq_q_lock(fq_q *q, int64_t timeout_ns)
    void fq_q_unlock(fq_q *q)
    int fq_q_repair(fq_q *q)
    int64_t fq_q_lane_truncate(fq_q *q, uint32_t lane, int64_t log_end)
    int64_t fq_q_acquire(fq_q *q, uint32_t lane, int64_t log_end, uint32_t owner, int64_t now_ms,
                         int64_t lease_ms, uint32_t *deliveries)
    int fq_q_settle(fq_q *q, uint32_t lane, int64_t offset, uint32_t deliveries, uint32_t owner,
                    int new_state, int64_t not_before_ms)
    int fq_q_settle_any(fq_q *q, uint32_t lane, int64_t offset, int new_state)
    int fq_q_extend(fq_q *q, uint32_t lane, int64_t offset, uint32_t deliveries, uint32_t owner,
                    int64_t deadline_ms)
    int64_t fq_q_expire(fq_q *q, uint32_t lane, int64_t now_ms, uint32_t dead_owner)
    int fq_q_slot_get(fq_q *q, uint32_t lane, int64_t offset, fq_q_slot *out)
    int fq_q_delay_track(fq_q *q, uint32_t lane, int64_t offset, int64_t due_ms)
    int fq_q_heap_peek(fq_q *q, int64_t *due_ms, uint64_t *ref)
    int fq_q_heap_pop(fq_q *q)
    int64_t fq_q_available_due(fq_q *q, uint32_t lane, int64_t now_ms)
    int64_t fq_q_settled_total(fq_q *q)
    int fq_q_drain_sample(fq_q *q, int64_t now_ms)
    int fq_q_drain_rate(fq_q *q, int64_t now_ms, int64_t window_ms, double *rate)
    int fq_q_dedup_get(fq_q *q, uint64_t h1, uint64_t h2, int64_t now_ms, uint64_t *id)
    int fq_q_dedup_put(fq_q *q, uint64_t h1, uint64_t h2, int64_t expire_ms, uint64_t id,
                       int64_t now_ms)
