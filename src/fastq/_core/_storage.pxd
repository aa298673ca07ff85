# Header of fastq._core._storage: the mmap-backed segment and the log's hot path.
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from fastq._core._cdefs cimport fq_batch_info, fq_record_in, fq_header, fq_pentry, fq_record_view


cdef extern from "fq_log.h" nogil:
    enum:
        FQ_STATE_SIZE
        FQ_STATE_VERSION
        FQ_STATE_FLAG_CLEAN
        FQ_STATE_FLAG_CHECKED

    ctypedef struct fq_log_state:
        char magic[8]
        uint32_t version
        uint32_t size
        uint32_t flags
        uint32_t clean_crc
        int64_t created_ms
        uint8_t boot_id[16]
        uint64_t lock
        int64_t lock_acquired_ns
        uint64_t seq
        int64_t next_offset
        int64_t end_pos
        int64_t active_base
        int64_t max_timestamp
        uint32_t index_count
        uint32_t timeindex_count
        int64_t bytes_since_index
        int64_t written_end
        uint64_t generation
        uint32_t notify
        uint32_t waiters
        int64_t recovery_point
        int64_t log_start_offset
        uint64_t opens

    ctypedef struct fq_log_snapshot:
        int64_t next_offset
        int64_t end_pos
        int64_t active_base
        int64_t max_timestamp
        uint32_t index_count
        uint32_t timeindex_count
        int64_t bytes_since_index
        int64_t written_end
        uint64_t generation

    int fq_log_trylock(fq_log_state *st, uint64_t me)
    int fq_log_lock(fq_log_state *st, uint64_t me, int64_t timeout_ns)
    void fq_log_unlock(fq_log_state *st, uint64_t me)
    void fq_log_abandon(fq_log_state *st, uint64_t me)
    uint64_t fq_log_lock_word(uint32_t nonce)
    int fq_log_snapshot_read(const fq_log_state *st, fq_log_snapshot *out, int64_t timeout_ns)
    void fq_log_commit(fq_log_state *st, const fq_log_snapshot *s)
    void fq_log_repair(fq_log_state *st)
    uint32_t fq_log_state_crc(const fq_log_state *st)
    void fq_log_notify(fq_log_state *st)
    ctypedef struct fq_pace:
        int64_t last_ns
        int64_t gap_ns
        int64_t margin_ns
        int64_t early
        int64_t late
        int64_t woken
        int64_t resync

    int fq_log_wait(fq_log_state *st, int64_t offset, int64_t timeout_ns, int64_t spin_ns, fq_pace *pace,
                    int pace_window)
    void fq_notify_bump(uint32_t *notify, uint32_t *waiters)
    int fq_notify_wait(uint32_t *notify, uint32_t *waiters, uint32_t seen, int64_t timeout_ns,
                       int64_t spin_ns, fq_pace *pace, int pace_window)


cdef extern from "fq_hash.h" nogil:
    int32_t fq_murmur2(const uint8_t *data, size_t n)
    int32_t fq_kafka_partition(const uint8_t *key, size_t len, int32_t n)


cdef struct ScanResult:
    int64_t end_pos          # byte position after the last good batch
    int64_t next_offset      # offset after the last good batch
    int64_t max_timestamp    # largest maxTimestamp among good batches (-1 none)
    int64_t batches          # good batches walked
    int64_t index_count      # index entries written (when rebuilding)
    int64_t timeindex_count
    int64_t bytes_since_index
    int status               # 0 clean end (zero length / limit / stop offset), else FQ_E... of the bad batch
    int64_t bad_pos          # position of the bad batch (status != 0)


cdef class Segment:
    """One segment: a .log file of RecordBatches plus its .index and .timeindex."""
    cdef readonly int64_t base_offset   # first offset the segment may hold (its file name)
    cdef readonly str path              # path of the .log file
    cdef readonly str index_path        # path of the .index file
    cdef readonly str timeindex_path    # path of the .timeindex file
    cdef int fd                         # .log file descriptor (-1 when closed)
    cdef int idx_fd                     # .index file descriptor
    cdef int tidx_fd                    # .timeindex file descriptor
    cdef uint8_t *data                  # mapping of the .log file, map_size bytes of address space
    cdef uint8_t *idx                   # mapping of the .index file
    cdef uint8_t *tidx                  # mapping of the .timeindex file
    cdef readonly int64_t map_size      # address space reserved for data (segment_bytes + one batch)
    cdef int64_t idx_cap                # capacity of .index in entries
    cdef int64_t tidx_cap               # capacity of .timeindex in entries
    cdef readonly int64_t alloc_size    # bytes of the .log file known to be allocated on disk
    cdef int64_t grow_chunk             # largest preallocation step (steps double up to it)
    cdef int64_t alloc_limit            # allocation ahead stops here (segment_bytes, page-rounded)
    cdef int64_t interval               # index_interval the index files are sized by (0: in full)
    cdef int64_t idx_avail              # entries both index files are known to hold
    cdef readonly int64_t exports       # live memoryviews into the data mapping
    cdef public int64_t sealed_end      # committed data end once sealed; -1 while active
    cdef public int64_t sealed_index_count      # valid .index entries once sealed
    cdef public int64_t sealed_timeindex_count  # valid .timeindex entries once sealed
    cdef public int64_t sealed_max_timestamp    # largest timestamp once sealed (-1 none)
    cdef public bint deleted            # unlinked by retention/truncation; mapping lives on for readers
    cdef public object inode            # st_ino of the .log file when opened (compaction swaps files)
    cdef readonly int64_t populated     # page tables of this mapping populated for [0, populated)
    cdef public bint pf_requested       # a pretouch of this segment is queued (see fastq.log)
    cdef int pf_active                  # a prefault runs without the GIL: close() waits for it
    cdef int sync_active                # fsyncs/msyncs running without the GIL: close() waits for them
    cdef readonly bint readonly         # opened for reading only: files O_RDONLY, mappings PROT_READ

    cdef int _live(self) except -1
    cdef int _grow(self, int64_t needed, int64_t wanted=*) except -1
    cdef inline int64_t _entries_for(self, int64_t nbytes) noexcept
    cdef int _set_alloc(self, int64_t size) except -1
    cdef bint _batch_head_at(self, int64_t p, int64_t limit, int64_t offset) noexcept
    cdef int _grow_indexes(self, int64_t log_size) except -1
    cdef int _ensure_fd(self) except -1
    cdef int64_t _find_pos(self, int64_t offset, int64_t limit, int64_t idx_count) except -2
    cdef int _scan(self, int64_t start, int64_t limit, int64_t expected, int64_t stop_offset,
                   int check, int rebuild, int64_t interval, int64_t max_size, int allow_gaps,
                   ScanResult *out) except -1


cdef class RecordMetadata:
    """Where a published record landed (see _logcore.pxi)."""
    cdef readonly str topic           # topic name, or None for a bare log
    cdef readonly int32_t partition   # partition number
    cdef readonly int64_t offset      # offset in the partition
    cdef readonly int64_t timestamp   # record timestamp, ms since the epoch


cdef class Pacer:
    """Adaptive waiting state for one waiter (see fq_pace in csrc/fq_log.h)."""
    cdef fq_pace p


cdef class Notifier:
    """A (notify, waiters) word pair in a shared 4 KiB file: a futex many logs bump."""
    cdef uint32_t *words        # [0] notify, [1] waiters
    cdef int fd                 # the mapped file (-1 when closed)
    cdef readonly str path      # its path
    cdef int _in_wait           # threads of this process asleep in wait (GIL released)
    cdef uint32_t *_unmap       # mapping close left to the last of them to unmap


cdef struct IdemResult:
    int64_t offset            # first offset of the batch (the original one for a duplicate)
    int64_t timestamp         # the batch's max timestamp as stored
    int32_t next_seq          # the sequence this producer's next batch here must start with
    int32_t first_seq         # the sequence the batch was stamped with (asked for, or the next)
    bint duplicate            # the batch was a retry of one already stored: nothing appended


cdef class PEntry:
    """One producer id's sequence state in one partition (see _pstate.pxi)."""
    cdef fq_pentry e


cdef class ProducerState:
    """Idempotent producers' state of one partition log, as this process knows it."""
    cdef dict entries                   # producer id -> PEntry
    cdef public int64_t scanned_to      # every batch below this offset has been applied
    cdef public int64_t loaded_from     # offset of the snapshot it started from (-1: none)
    cdef int64_t pos                    # byte position of scanned_to in the active segment, or -1
    cdef int64_t pos_base               # ... of the segment with this base offset
    cdef uint64_t pos_gen               # ... while the log's generation is this one
    cdef PEntry _e0                     # the entry `entry` returned last (None: none)
    cdef PEntry _e1                     # the one before (producers alternating on a partition)

    cdef PEntry entry(self, int64_t pid)
    cdef int apply(self, const uint8_t *h) except -1


cdef class SharedWord:
    """A 64-bit word in a small file, mapped shared (a transactional producer's fence)."""
    cdef uint64_t *w            # the word in the mapping (NULL when closed)
    cdef void *map              # the mapping
    cdef size_t maplen          # its length
    cdef readonly str path      # the file

    cdef uint64_t *_word(self) except NULL


cdef class RecScratch:
    """Per-call record and header arrays for one append (see _logcore.pxi)."""
    cdef fq_record_in *recs             # records (PyMem), recs_cap of them
    cdef fq_header *hdrs                # headers the records point into, hdrs_cap of them
    cdef Py_ssize_t recs_cap
    cdef Py_ssize_t hdrs_cap

    cdef int reserve(self, Py_ssize_t n, Py_ssize_t nh) except -1


cdef class LogCore:
    """The shared state of a log and its append/read hot path (see fastq.log.Log)."""
    cdef fq_log_state *st               # the mapped fastq.state file
    cdef int state_fd                   # its descriptor (also flock'ed, see fastq.log)
    cdef uint64_t lockword              # our writer-lock word (pid | nonce)
    cdef public list _segments          # Segment objects, ascending base_offset
    cdef public Segment _active         # the segment appends go to
    cdef public uint64_t _gen           # state generation our segment list reflects
    cdef public int _durability         # 0 "os", 1 "group", 2 "always"
    cdef public int64_t segment_bytes   # roll when an append would pass this many bytes
    cdef public int64_t segment_ms      # roll when the active segment is older than this (0 = never)
    cdef public int64_t max_record_bytes  # largest encoded batch accepted
    cdef public int64_t index_interval  # bytes between .index entries
    cdef public bint _closed            # close() has run (or the log failed)
    cdef public bint _closing           # close() has begun: appends and lock takers raise Closed
    cdef public bint _exclusive         # opening alone (exclusive state flock): may write state unlocked
    cdef public bint _readonly          # readonly=True: state is a private copy; the writer lock refuses
    cdef public bint _forked            # inherited across fork(): released in the child (fastq.log)
    cdef public object _failure         # why the log failed (a failed fsync), else None
    cdef public int64_t _active_created_ms  # when the active segment was created (for segment_ms)
    cdef public object topic_name       # topic this log is a partition of (str) or None
    cdef public int32_t partition_id    # partition number (-1 for a bare log)
    cdef public Notifier _notifier      # topic-wide notifier bumped after every commit, or None
    cdef public bint allow_gaps         # compacted log: batch offsets ascend but may skip
    cdef public object _pretouch        # callable(segment, upto) queueing a prefault, or None
    cdef readonly int64_t pretouch_window  # bytes populated ahead of the writer (grows, see _prepare_locked)
    cdef public int64_t _pretouch_asked_ns  # monotonic time of the last pretouch request
    cdef public int64_t _ts_ahead_ms    # refuse appends stamped more than this ahead of the clock (-1: off)
    cdef int64_t _ts_bound              # a timestamp bound known to pass: coarse clock + _ts_ahead_ms, when read
    cdef int _in_wait                   # threads of this process in _wait or waiting for the lock (GIL released)
    cdef fq_log_state *_st_unmap        # state mapping close left to the last of them to unmap
    cdef public ProducerState _pstate   # idempotent producers' state (built on first use), or None
    cdef public object _txnidx          # TxnIndex: transactions' state for read_committed (on first use), or None

    cdef int _lock(self) except -1
    cdef int _check_writer(self, str what) except -1
    cdef inline void _unlock(self) noexcept
    cdef int _prepare_locked(self, int64_t size) except -1
    cdef void _stage_locked(self, fq_log_snapshot *s, int64_t pos, int64_t size, int64_t max_ts,
                            int32_t n) noexcept
    cdef void _begin_locked(self, fq_log_snapshot *s) noexcept
    cdef void _publish_locked(self, fq_log_snapshot *s) noexcept
    cdef int64_t _write_chunk_locked(self, fq_log_snapshot *s, const fq_record_in *recs, int32_t k,
                                     int64_t size) except -1
    cdef int _check_open(self) except -1
    cdef fq_log_state *_state(self) except NULL
    cdef int64_t _append_recs(self, const fq_record_in *recs, int32_t n) except -1
    cdef int _check_ahead(self, int64_t ts) except -1
    cdef int64_t _append_one(self, object value, object key, object headers, int64_t ts) except -1
    cdef int _wait(self, int64_t offset, int64_t timeout_ns, int64_t spin_ns, fq_pace *pace) except -1
    cdef int _wait_done(self) except -1
    cdef int _lock_done(self, fq_log_state *st, int rc, bint closer) except -1
    cdef int32_t _fill_headers(self, object headers, RecScratch sc, Py_ssize_t at, list keep) except -1
    cdef object _fill_one(self, fq_record_in *r, object value, object key, object headers, int64_t ts)
    cdef Py_ssize_t _fill_many(self, object values, object key, object headers, int64_t ts, RecScratch sc,
                               list keep) except -1


cdef class TopicCore:
    """A topic's partition logs and its publish hot path (see _topicsupport.pxi)."""
    cdef public object name             # the topic's name (str)
    cdef public int32_t partitions      # number of partitions
    cdef public list _logs              # partition -> fastq.log.Log, or None until opened
    cdef public int32_t _sticky         # the sticky partition of unkeyed records
    cdef public int64_t _sticky_bytes   # bytes sent to it since it was chosen


cdef class Record:
    """One record read from a log (see _records.pxi)."""
    cdef readonly int64_t offset      # the record's offset in its log
    cdef readonly int64_t timestamp   # milliseconds since the epoch
    cdef readonly str topic           # topic name, or None for a bare log
    cdef readonly int32_t partition   # partition number (-1 for a bare log)
    cdef Segment seg                  # keeps the mapping alive
    cdef const uint8_t *kp            # key bytes in the mapping
    cdef const uint8_t *vp            # value bytes in the mapping
    cdef const uint8_t *hp            # first header in the mapping
    cdef int32_t klen                 # -1 = null key
    cdef int32_t vlen                 # -1 = null value
    cdef int32_t nh                   # number of headers
    cdef int32_t hlen                 # bytes of the header area


cdef class PubSubMessage:
    """A message handed to a pub/sub subscriber (see _pubsub.pxi)."""
    cdef readonly str channel         # the channel it was published to
    cdef readonly object data         # its bytes (None for a null value)
    cdef readonly int64_t offset      # offset in the namespace's log; -1 when ephemeral
    cdef readonly int64_t timestamp   # ms since the epoch


cdef class LogReader:
    """Sequential reader over a log (see _records.pxi)."""
    cdef LogCore log          # the log read from
    cdef Segment seg          # current segment (None before the first batch)
    cdef int64_t pos          # position of the next batch in seg
    cdef int64_t limit        # committed data end of seg as last seen
    cdef readonly int64_t next_offset  # offset of the next record to hand out
    cdef readonly int64_t end          # stop before this offset
    cdef int64_t expect       # base offset the next batch must have (-1 unknown)
    cdef const uint8_t *rp    # next record in the current batch
    cdef int64_t rleft        # bytes left in the current batch's records area
    cdef int32_t remaining    # records left in the current batch
    cdef int64_t base         # base offset of the current batch
    cdef int64_t base_ts      # base timestamp of the current batch
    cdef dict aborted         # read_committed: producer id -> [first, last, ...] aborted ranges, else None
    cdef bint raw             # hand out control batches too (a header walk), not their records

    cdef int _next_batch(self) except -1
    cdef void _recheck(self) noexcept
    cdef Record _next(self)
    cdef int _next_view(self, fq_record_view *v, int64_t *offset) except -1
    cdef Record _record_of(self, const fq_record_view *v, int64_t off)


cdef class ConsumerCore:
    """The read hot path of fastq.broker.consumer.Consumer (see _records.pxi)."""
    cdef public object topic            # the Topic read (a TopicCore)
    cdef public dict _fetch             # owned partition -> next offset to read
    cdef public dict _readers           # owned partition -> tailing LogReader at _fetch[p]
    cdef public dict _pos               # owned partition -> next offset to hand out
    cdef public object _buf             # deque: read but not yet handed out (iteration)
    cdef public object _member          # GroupMember, or None without a group
    cdef public bint _closed
    cdef public bint auto_commit
    cdef public bint _polled            # poll/iteration has run (seeks apply at once)
    cdef public Py_ssize_t _rr          # rotation counter: where the next read starts
    cdef public double spin_us          # how long a wait spins before it sleeps
    cdef public Pacer pacer             # wait="adaptive": paces the waits; else None
    cdef public int64_t _next_check     # time.monotonic_ns() at which iteration next
                                        # looks at the group (heartbeat, view changes)

    cdef Py_ssize_t _read_ready(self, object out, Py_ssize_t max_records) except -1
    cdef Py_ssize_t _tail_one(self, object out, object p, Py_ssize_t max_records) except -1
    cdef object _wait_read(self, list out, Py_ssize_t max_records, int64_t timeout_ns)


cdef int pstate_sync_locked(LogCore lg) except -1
cdef int append_control(LogCore lg, int64_t pid, int16_t epoch, int16_t kind, SharedWord fence) except -1
cdef int append_idem(LogCore lg, const fq_record_in *recs, int32_t n, int64_t pid, int16_t epoch,
                     int32_t first_seq, SharedWord fence, IdemResult *out, int16_t attrs=*) except -1
cdef int idem_one(LogCore lg, object value, object key, object headers, object timestamp, int64_t pid,
                  int16_t epoch, int32_t first_seq, SharedWord fence, IdemResult *out, int16_t attrs=*) except -1
cdef int idem_many(LogCore lg, object values, object key, object headers, object timestamp, int64_t pid,
                   int16_t epoch, int32_t first_seq, SharedWord fence, IdemResult *out, int16_t attrs=*) except -1
