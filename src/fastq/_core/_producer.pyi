# Stub for the compiled module fastq._core._producer (src/fastq/_producer.pyx): the batching
# producer's hot path. fastq.broker.producer.Producer subclasses ProducerCore.
from typing import Any

from ._ring import Ring

class ProducerCore:
    topic: Any                  # the fastq.Topic records go to
    _ring: Ring                 # the accumulator
    linger: float               # seconds; 0 = append inside every send
    _drain_at: int              # ring bytes in use that make send drain inline
    _closed: bool
    _forked: bool               # inherited across fork(): the ring is the parent's
    _error: BaseException | None
    def _init_core(self, topic: Any, ring: Ring, linger: float, drain_at: int) -> None: ...
    def send(self, value: Any, *, key: Any = None, headers: Any = None, partition: int | None = None,
             timestamp: int | None = None) -> None: ...
    _held: list[bytes]          # framed records a failed drain took: appended first by the next
    _max_record: int            # the topic's max_record_bytes (send's size check)
    def _put_nowait(self, value: Any, key: Any = None, headers: Any = None, partition: int | None = None,
                    timestamp: int | None = None) -> int: ...   # 1 queued, drain due; 0 queued; -1 not queued
    def _drain_ring(self, limit: int, want_timestamps: bool,
                    out: list[tuple[int, int, int, list[int] | None]]) -> int: ...
    def _drain_held(self, want_timestamps: bool, out: list[tuple[int, int, int, list[int] | None]]) -> int: ...
    def _hold_ring(self) -> int: ...

class IdempotentCore(ProducerCore):
    """The idempotent producer's hot path (fastq.broker.producer.IdempotentProducer)."""
    producer_id: int
    epoch: int
    duplicates: int             # publishes answered from a stored batch
    _fence: Any                 # _storage.SharedWord of the transactional id, or None
    def _init_idem(self, topic: Any, producer_id: int, epoch: int, fence: Any) -> None: ...
    def publish(self, value: Any, *, key: Any = None, headers: Any = None, partition: int | None = None,
                timestamp: int | None = None, sequence: int | None = None) -> Any: ...  # RecordMetadata
    def _publish_many(self, values: Any, key: Any, headers: Any, partition: int | None,
                      timestamp: int | None, sequence: int | None) -> tuple[int, int, int, int]: ...

MEMORY_MODE_AT: int     # memory.state: offset of the mode byte
MEMORY_MODE_RING: int   # mode: publishers put into the ring
MEMORY_MODE_SPILL: int  # mode: publishers append to the topic's log

def memory_publish(self: Any, value: Any, *, key: Any = None, headers: Any = None,
                   partition: int | None = None, timestamp: int | None = None,
                   timeout: float | None = None) -> Any: ...   # MemoryTopic.publish: RecordMetadata
