"""Type stub of fastq._core._storage: mmap-backed segments and the log's hot path (Cython)."""
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional, Union

from typing_extensions import Buffer

SEGMENT_FIRST_CHUNK: int  # bytes a new segment's .log is preallocated
PRETOUCH_MIN_BYTES: int  # the pretouch window of an idle log
DEBUG_BUILD: bool  # built with FASTQ_DEBUG=1 or FASTQ_SANITIZE=1
CRC_HW: bool  # CRC-32C runs on CPU instructions
STATUS_TRUNCATED: int  # scan status: a batch runs past the end of the file
STATUS_CORRUPT: int  # scan status: a complete batch failed validation

HeaderList = Union[Sequence[tuple[str, Optional[Buffer]]], dict[str, Optional[Buffer]]]

def murmur2(data: Buffer) -> int:
    """Kafka's murmur2 hash (signed 32-bit, as Java computes it)."""

def kafka_partition(key: Buffer, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""

MAX_POLL_RECORDS_CAP: int  # the most records one Consumer.poll hands out

class ConsumerCore:
    """The compiled read path of fastq.Consumer (which subclasses it)."""

    topic: Any
    _fetch: dict[int, int]
    _readers: dict[int, LogReader]
    _pos: dict[int, int]
    _buf: Any
    _member: Any
    _closed: bool
    auto_commit: bool
    _polled: bool
    _rr: int
    spin_us: float
    pacer: Optional[Pacer]
    _next_check: int
    def __next__(self) -> Record:
        """A record already read ahead, compiled; else Consumer._next_slow."""
    def poll(self, max_records: int = 500, timeout: Optional[float] = None) -> list[Record]:
        """Records ready at the tailing readers, compiled; else Consumer._poll."""
    def _read_into(self, out: Any, max_records: int) -> int:
        """Read up to max_records from owned partitions into out; returns how many."""

def key_bytes(key: Buffer) -> bytes:
    """A record key as bytes (bytes-like objects copied; str refused: encode it first)."""

STICKY_BATCH_BYTES: int    # Kafka's batch.size: unkeyed records stick to a partition this long

class TopicCore:
    """The compiled publish path of fastq.Topic (which subclasses it)."""

    name: str
    partitions: int
    _logs: list[Optional[LogCore]]
    _sticky: int
    _sticky_bytes: int
    def publish(self, value: Optional[Buffer], *, key: Optional[Buffer] = None,
                headers: Optional[HeaderList] = None, partition: Optional[int] = None,
                timestamp: Optional[int] = None) -> RecordMetadata: ...

def write_single_batch(seg: Segment, pos: int, offset: int, timestamp: int, key: Optional[Buffer],
                       value: Optional[Buffer], headers: Optional[Sequence[tuple[str, Optional[Buffer]]]] = None,
                       producer_id: int = -1, producer_epoch: int = -1, sequence: int = -1) -> int:
    """Encode one record as its own batch at ``pos`` (compaction), with the producer
    fields given (-1: none); returns its size."""

def segment_name(base_offset: int) -> str:
    """``%020d`` of the base offset: the stem of a segment's file names."""

FAULT_POINTS: tuple[str, ...]  # TEST ONLY: the C fault points (csrc/fq_os.h)

def _fault_inject(point: str, errno: int, after: int = 0, times: int = 1) -> None:
    """TEST ONLY. Calls of ``point`` after the first ``after`` fail with ``-errno``,
    ``times`` of them (< 0: all)."""
def _fault_clear() -> None:
    """TEST ONLY. Disarm every fault point."""
def _fault_hits(point: str) -> int:
    """TEST ONLY. Calls of ``point`` failed on purpose since armed."""
def _fault_calls(point: str) -> int:
    """TEST ONLY. Calls of ``point`` seen since armed."""

def fsync_dir(path: str) -> None: ...
def flock(fd: int, exclusive: bool, wait: bool) -> bool: ...
def funlock(fd: int) -> None: ...
def truncate_file(path: str, length: int) -> None: ...
def msync_state(log: LogCore) -> None: ...
def scan_buffer(buf: Buffer, base_offset: int, expected: int = -1, stop_offset: int = -1,
                max_size: int = ..., allow_gaps: bool = False) -> dict[str, Any]:
    """Walk the valid batches of a segment's bytes in any buffer, as recovery does."""
def index_entry(seg: Segment, i: int) -> tuple[int, int]: ...
def timeindex_entry(seg: Segment, i: int) -> tuple[int, int]: ...

class Segment:
    """One segment: ``%020d.log`` + ``.index`` + ``.timeindex``, all mapped."""

    base_offset: int
    path: str
    index_path: str
    timeindex_path: str
    map_size: int
    alloc_size: int
    exports: int
    sealed_end: int
    sealed_index_count: int
    sealed_timeindex_count: int
    sealed_max_timestamp: int
    deleted: bool
    populated: int          # page tables populated for [0, populated) in this mapping
    pf_requested: bool      # a pretouch is queued (fastq.log's pretoucher)
    def prefault(self, upto: int) -> int: ...
    def __init__(self, directory: str, base_offset: int, map_size: int, index_cap: int,
                 create: bool = False, grow_chunk: int = 0, index_interval: int = 0,
                 alloc_limit: int = 0, readonly: bool = False) -> None: ...
    readonly: bool  # opened for reading only: files O_RDONLY, mappings PROT_READ
    @property
    def closed(self) -> bool: ...
    @property
    def index_capacity(self) -> int: ...
    def grow(self, needed: int, wanted: int = 0) -> None: ...
    @property
    def index_allocated(self) -> int: ...
    @property
    def has_fd(self) -> bool: ...
    def release_fd(self) -> None:
        """Close a sealed segment's .log descriptor (the mapping is enough)."""
    def refresh_size(self) -> int: ...
    def find_position(self, offset: int, limit: int, idx_count: int) -> int: ...
    def scan(self, start: int = 0, limit: int = -1, expected: int = -1, stop_offset: int = -1,
             check: bool = True, rebuild: bool = False, interval: int = 4096,
             max_size: int = ...) -> dict[str, Any]: ...
    def valid_index_prefix(self, limit: int) -> tuple[int, int]: ...
    def last_timeindex(self, count: int) -> Optional[tuple[int, int]]: ...
    def timeindex_floor(self, count: int, ts: int) -> int: ...
    def zero(self, start: int, end: int) -> None: ...
    def zero_index(self, index_from: int, timeindex_from: int) -> None: ...
    def sync(self) -> None: ...
    def sync_range(self, start: int, end: int) -> None: ...
    def read_bytes(self, start: int, end: int) -> bytes: ...
    def view(self, start: int, end: int) -> memoryview:
        """Zero-copy view of raw segment bytes (e.g. to serve a Kafka fetch)."""
    def close(self) -> None: ...

class RecordMetadata:
    """Where a published record landed; behaves like a 4-tuple."""

    topic: Optional[str]
    partition: int
    offset: int
    timestamp: int
    def __init__(self, topic: Optional[str], partition: int, offset: int, timestamp: int) -> None: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> Any: ...
    def _asdict(self) -> dict[str, Any]: ...

class Pacer:
    """Adaptive waiting state for one waiter: sleeps through the learned gap between
    arrivals and spins ``margin_us`` on each side of the next expected one."""

    def __init__(self, margin_us: float = 50.0) -> None: ...
    def reset(self) -> None: ...
    @property
    def margin_us(self) -> float: ...
    @property
    def gap_us(self) -> Optional[float]: ...
    @property
    def stats(self) -> dict[str, int]: ...

class Notifier:
    """A topic-wide futex word in a shared file (see Topic.wait_any)."""

    path: str
    def __init__(self, path: str, readonly: bool = False) -> None: ...
    @property
    def value(self) -> int: ...
    def bump(self) -> None: ...
    def wait(self, seen: int, timeout: Optional[float] = None, spin_us: float = 50.0,
             pacer: Optional[Pacer] = None) -> bool: ...
    def close(self) -> None: ...

class Record:
    """One record. ``key``/``value`` are read-only zero-copy memoryviews (None if null)."""

    offset: int
    timestamp: int
    topic: Optional[str]
    partition: int
    @property
    def key(self) -> Optional[memoryview]: ...
    @property
    def value(self) -> Optional[memoryview]: ...
    @property
    def headers(self) -> list[tuple[str, Optional[bytes]]]: ...

class LogReader(Iterator[Record]):
    """Sequential reader; verifies each batch's CRC before handing out its records."""

    next_offset: int
    end: int
    def __iter__(self) -> LogReader: ...
    def __next__(self) -> Record: ...
    def read_many(self, max_records: int) -> list[Record]: ...
    def read_values(self, max_records: int) -> list[Optional[bytes]]:
        """Values only, as bytes copies (nothing pinned)."""
    def _fill_columns(self, i: int, limit: int, offsets: Any, timestamps: Any,
                      value_offsets: Any, values: Any, value_valid: Any,
                      key_offsets: Any, keys: Any, key_valid: Any) -> tuple[int, int, int]:
        """Decode records into caller-owned column buffers (fastq.log.columns); returns
        (rows filled, value bytes needed, key bytes needed)."""

class LogCore:
    """Shared state of a log plus the append/read hot path (see fastq.log.Log)."""

    segment_bytes: int
    segment_ms: int
    max_record_bytes: int
    index_interval: int
    @property
    def recovery_point(self) -> int: ...  # read-only: the log moves it under its writer lock
    @property
    def start_offset(self) -> int: ...  # read-only: retention / truncation move it
    topic_name: Optional[str]
    partition_id: int
    allow_gaps: bool
    @property
    def pretouch_window(self) -> int:
        """Bytes the pretoucher populates ahead of this process's writer: 32 KiB,
        doubling up to 16 MiB while the writer outruns it, halving when it slows."""
    _pretouch_asked_ns: int  # monotonic time of the last pretouch request
    _ts_ahead_ms: int        # max_timestamp_ahead_ms, -1 when off (see fastq.log.Log)
    def _set_ts_ahead(self, ms: int) -> None: ...
    @property
    def end_offset(self) -> int: ...
    def snapshot(self) -> dict[str, int]: ...
    def append(self, value: Optional[Buffer], key: Optional[Buffer] = None,
               headers: Optional[HeaderList] = None, timestamp: Optional[int] = None) -> int: ...
    def append_many(self, values: Sequence[Optional[Buffer]], key: Optional[Buffer] = None,
                    headers: Optional[HeaderList] = None, timestamp: Optional[int] = None) -> int: ...
    def append_batch(self, records: Sequence[tuple[Any, ...]]) -> int: ...
    def publish(self, value: Optional[Buffer], key: Optional[Buffer] = None,
                headers: Optional[HeaderList] = None, timestamp: Optional[int] = None) -> RecordMetadata: ...
    def read(self, offset: int = 0, end: Optional[int] = None, follow: bool = False) -> LogReader: ...
    def get(self, offset: int) -> Record: ...
    def wait(self, offset: int, timeout: Optional[float] = None, spin_us: float = 50.0,
             pacer: Optional[Pacer] = None) -> bool: ...
    _pstate: Optional[ProducerState]   # idempotent producers' state, built on first use

# -- idempotent producers (_pstate.pxi over csrc/fq_producer.h) ---------------------------

class PEntry:
    """One producer id's sequence state in one partition."""
    @property
    def producer_id(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def next_sequence(self) -> int: ...
    def batches(self) -> list[tuple[int, int, int, int]]: ...  # (first_seq, last_seq, base_offset, max_ts)

class ProducerState:
    """Idempotent producers' state of one partition log (every batch below scanned_to applied)."""
    scanned_to: int
    loaded_from: int        # offset of the snapshot it started from, -1: none
    def __init__(self, scanned_to: int = 0, loaded_from: int = -1) -> None: ...
    def get(self, pid: int) -> Optional[PEntry]: ...
    def rows(self) -> list[tuple[int, int, list[tuple[int, int, int, int]]]]: ...
    def add_row(self, pid: int, epoch: int, batches: Sequence[tuple[int, int, int, int]]) -> None: ...
    def __len__(self) -> int: ...

class SharedWord:
    """A 64-bit word in a small file, mapped shared (a transactional producer's fence)."""
    path: str
    def __init__(self, path: str, at: int) -> None: ...
    def load(self) -> int: ...
    def store(self, v: int) -> None: ...
    def sync(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...

def fence_word(epoch: int) -> int: ...
def fence_word_epoch(w: int) -> int: ...     # -1: damaged
def _producer_entry(lg: LogCore, pid: int) -> Optional[PEntry]: ...
def _producer_entry_locked(lg: LogCore, pid: int) -> Optional[PEntry]: ...
def _producer_state_locked(lg: LogCore) -> Optional[ProducerState]: ...

# -- queue state (_queuestate.pxi over csrc/fq_queue.h; used by fastq.queue) --------------

QUEUE_PRIORITIES: int   # 10: priority lanes 0..9 per partition
QUEUE_LANES: int        # 11 lanes per partition
QUEUE_DELAYED: int      # 10: the delayed lane's index inside a partition
QUEUE_MAX_PARTITIONS: int
QUEUE_MAX_SESSIONS: int
QUEUE_NO_OWNER: int
SLOT_AVAILABLE: int
SLOT_ACQUIRED: int
SLOT_ACKED: int
SLOT_ARCHIVED: int
SLOT_WAITING: int

def queue_state_size(partitions: int, window: int, delay_window: int, max_sessions: int,
                     dedup_capacity: int) -> int:
    """Bytes of a queue.state of this geometry (InvalidArgument when it is not valid)."""
def queue_state_create(path: str, partitions: int, window: int, delay_window: int,
                       max_sessions: int, dedup_capacity: int) -> None:
    """Write a fresh, preallocated, fsynced queue.state at ``path`` (the caller renames it)."""

class QueueState:
    """A mapped queue.state (csrc/fq_queue.h). Every method but lock/unlock/close, the
    properties and pending() needs the lock held."""

    path: str
    last_deliveries: int     # delivery count of the last acquire
    def __init__(self, path: str) -> None: ...
    def close(self) -> None: ...
    def after_fork(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def geometry(self) -> tuple[int, int, int, int, int]: ...
    @property
    def lock_steals(self) -> int: ...
    @property
    def heap_len(self) -> int: ...
    def sync(self) -> None: ...
    def lock(self) -> bool:
        """True when taken over from a dead holder (or a repair is owed): call repair()."""
    def unlock(self) -> None: ...
    def holder(self) -> int: ...
    def repair(self) -> None: ...
    def lane_truncate(self, lane: int, log_end: int) -> int:
        """Drop the window's offsets from log_end on (the lane log lost its tail); repair."""
    def acquire(self, lane: int, log_end: int, owner: int, now_ms: int, lease_ms: int) -> int:
        """Offset leased; -1 when nothing is due, -2 when the lane's window is full."""
    def settle_now(self, lane: int, offset: int, deliveries: int, owner: int, new_state: int,
                   not_before_ms: int = 0) -> Optional[bool]:
        """settle() taking and releasing the lock itself; None when the lock is busy or a
        repair is owed (nothing done)."""
    def take(self, lanes: list[int], ends: list[int], max_n: int, owner: int, now_ms: int,
             lease_ms: int) -> list[tuple[int, int, int]]:
        """Lease up to max_n from lanes in order: [(index into lanes, offset, deliveries)]."""
    def settle(self, lane: int, offset: int, deliveries: int, owner: int, new_state: int,
               not_before_ms: int = 0) -> bool: ...
    def settle_any(self, lane: int, offset: int, new_state: int) -> bool: ...
    def extend(self, lane: int, offset: int, deliveries: int, owner: int, deadline_ms: int) -> bool: ...
    def expire(self, lane: int, now_ms: int, dead_owner: int = ...) -> int: ...
    def slot(self, lane: int, offset: int) -> Optional[tuple[int, int, int, int]]:
        """(state, deliveries, owner, deadline_ms) inside the window, else None."""
    def lane(self, lane: int) -> tuple[int, int, int, int, int, int, int]:
        """(spso, speo, available, acquired, next_expiry_ms, settled, dead)."""
    def pending(self, lane: int, log_end: int) -> int: ...
    def delay_track(self, lane: int, offset: int, due_ms: int) -> bool: ...
    def heap_peek(self) -> Optional[tuple[int, int, int]]:
        """(due_ms, lane, offset) of the earliest delayed message."""
    def heap_pop(self) -> None: ...
    def dedup_get(self, h1: int, h2: int, now_ms: int) -> Optional[int]: ...
    def dedup_put(self, h1: int, h2: int, expire_ms: int, mid: int, now_ms: int) -> bool: ...
    def intent(self) -> Optional[tuple[int, int, int, int, int, int]]: ...
    def set_intent(self, op: int, lane: int, offset: int, dst_lane: int, dst_end: int,
                   deliveries: int) -> None: ...
    def clear_intent(self) -> None: ...
    def session_claim(self, idx: int, pid: int, now_ms: int) -> None: ...
    def session_release(self, idx: int) -> None: ...
    def sessions_in_flight(self) -> dict[int, int]: ...
    def session(self, idx: int) -> tuple[int, int, int, int]: ...
    def limits(self) -> tuple[int, int, int, int, int, int, int]:
        """(max_depth, max_bytes, high, low, block_timeout_us, overflow, over), lock-free."""
    def set_limits(self, max_depth: int, max_bytes: int, high: int, low: int, block_timeout_us: int,
                   overflow: int) -> None: ...
    def set_over(self, over: bool) -> None: ...
    def unsettled(self, lane: int, log_end: int) -> int: ...
    def available_due(self, lane: int, now_ms: int) -> int: ...
    def settled_total(self) -> int: ...
    def drain_sample(self, now_ms: int) -> bool: ...
    def drain_last_ms(self) -> int: ...
    def drain_rate(self, now_ms: int, window_ms: int) -> Optional[float]: ...

class QueueCore:
    """The compiled receive/ack/publish path under fastq.queue.Queue (its subclass):
    _queuecore.pxi. Fields are the Queue's attributes."""

    _closed: bool
    _session: int
    _lease_ms: int
    _sync: bool
    _next_housekeeping: float
    _next_expire_ms: int
    _next_bound_scan: float
    _seen_over: bool
    max_deliveries: Optional[int]
    codec: Any
    def _core_init(self, state: QueueState, message_type: type, raw_codec: Any) -> None: ...
    def _set_fast_lanes(self, lanes: list[Any], publish_logs: list[Optional[LogCore]]) -> None:
        """Lanes receive takes from when compiled ([]: off); lane logs by priority publish
        appends to ([]: off)."""
    def _set_bound_logs(self, logs: list[Optional[LogCore]]) -> None:
        """Every lane's log (None: not open here), in lane order: what the depth counts."""
    def _depth_fast(self) -> int:
        """Unsettled messages across processes, lock-free."""
    def _bytes_fast(self) -> tuple[int, int, float]:
        """(unsettled messages, their estimated stored bytes, the mean record size used)."""
    def publish(self, data: Any, *, key: Any = None, headers: Any = None, delay: Optional[float] = None,
                priority: int = 0, dedup_id: Union[str, bytes, None] = None) -> int: ...
    def publish_many(self, items: Any, *, key: Any = None, headers: Any = None,
                     delay: Optional[float] = None, priority: int = 0) -> list[int]: ...
    def receive(self, max_messages: int = 1, wait: Optional[float] = None) -> list[Any]: ...
    def _take_fast(self, max_messages: int) -> Optional[list[Any]]:
        """Leased messages on the compiled path, or None when the Python path must run."""
    def _settle_many(self, messages: list[Any], state: int) -> Optional[list[Any]]:
        """Messages whose lease was not current; None when the Python path must run."""

class MessageCore:
    """Fields of fastq.Message, and its compiled ``data`` and ``ack``."""

    _q: QueueCore
    _lane: int
    _offset: int
    _deliveries: int
    _session: int
    id: Any
    key: Optional[bytes]
    body: Any
    _raw_headers: Any
    _headers: Optional[dict[str, bytes]]
    _pub_ms: int
    delivery_count: int
    _data: Any
    _decoded: bool
    _settled: bool
    @property
    def data(self) -> Any: ...
    def ack(self) -> None: ...

class TaskRunCore:
    """A thread-mode task worker's compiled steps (fastq.tasks._fastrun): the common case's
    ``active`` and ``completed`` records, spliced from the job message's bytes."""

    def __init__(self, jobs: LogCore, events: LogCore, ctl: LogCore, control: Any,
                 decode: Callable[[bytes], Any], lost: Callable[[int, Exception], None]) -> None: ...
    def epoch(self) -> int: ...
    def begin(self, m: MessageCore, handler: Optional[Callable[..., Any]],
              handlers: Optional[dict[str, Callable[..., Any]]]) -> Optional[tuple[Any, ...]]: ...
    def complete(self, m: MessageCore, prefix: bytes, key: bytes, added: int, processed: int, raw: bytes,
                 ep: int) -> Optional[tuple[int, int]]: ...
    def step(self, pm: MessageCore, pprefix: bytes, pkey: bytes, padded: int, pprocessed: int, raw: bytes,
             pep: int, m: MessageCore, handler: Optional[Callable[..., Any]],
             handlers: Optional[dict[str, Callable[..., Any]]]) -> tuple[Any, Optional[tuple[Any, ...]]]: ...

class TxnIndex:
    """A partition's transactions as this process knows them (read_committed)."""
    scanned_to: int
    open: dict[int, int]
    aborted: dict[int, list[int]]
    def sync(self, lg: Any, end: int) -> int: ...

def _append_marker(lg: Any, pid: int, epoch: int, commit: bool, fence: Optional[SharedWord] = None) -> None: ...
def _txn_reader(lg: Any, offset: int, end: Optional[int], follow: bool = False) -> LogReader: ...
def _txn_lso(lg: Any) -> int: ...
def _batch_producers(lg: Any, start: int, end: int) -> list[tuple[int, int, int, int, int]]: ...
def _set_reader_end(rd: LogReader, end: int) -> None: ...

# -- rate limiter (_limiter.pxi over csrc/fq_limiter.c) ----------------------------------
LIMITER_HEADER_SIZE: int  # bytes before the key slots
LIMITER_MAX_KEYS: int  # most key slots a limiter file may have
LIMITER_MAX_WINDOW: int  # most slots one key may probe
LIMITER_EVICT: int  # flag: a new key evicts the live key closest to refilled
LIMITER_COARSE: int  # flag: decisions read CLOCK_MONOTONIC_COARSE
LIMITER_MAX_KEY_BYTES: int  # longest key (bytes, or str as UTF-8)

def limiter_coarse_resolution() -> float: ...
def limiter_config(points: int, duration_ns: int, burst: int) -> Optional[tuple[int, int]]: ...
def limiter_create(path: str, capacity: int, window: int, points: int, duration_ns: int, burst: int,
                   boot_id: bytes) -> None: ...

LimiterKey = Union[str, bytes, int, None]

class LimiterCore:
    """The mapped file of one rate limiter and its compiled decisions."""
    path: str
    name: str
    def _open(self, path: str, name: str, boot_id: bytes, flags: int) -> None: ...
    def try_consume(self, points: int = 1, key: LimiterKey = None) -> bool: ...
    def consume(self, points: int = 1, key: LimiterKey = None) -> None: ...
    def _retry_after(self, points: int = 1, key: LimiterKey = None) -> float: ...
    def available(self, key: LimiterKey = None) -> int: ...
    def _use_coarse_clock(self, on: bool) -> None: ...
    def _after_fork(self) -> None: ...
    @property
    def points(self) -> int: ...
    @property
    def duration(self) -> float: ...
    @property
    def burst(self) -> int: ...
    @property
    def max_keys(self) -> int: ...
    @property
    def emission_interval(self) -> float: ...
    @property
    def coarse_clock(self) -> bool: ...
    def stats(self) -> dict[str, int]: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
class PubSubMessage:
    """One message handed to a pub/sub subscriber (fastq.pubsub)."""

    channel: str
    data: Optional[bytes]
    offset: int
    timestamp: int
    def __init__(self, channel: str, data: Optional[bytes], offset: int, timestamp: int) -> None: ...

def _route_records(recs: list[Any], channels: dict[bytes, Optional[str]],
                   classify: Callable[[bytes], Optional[str]]) -> list[PubSubMessage]: ...
