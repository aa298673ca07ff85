"""What a publish returns: :class:`RecordMetadata` (compiled) and :class:`BatchMetadata`."""
from __future__ import annotations

from typing import NamedTuple

from .._core._storage import RecordMetadata

__all__ = ["RecordMetadata", "BatchMetadata"]


class BatchMetadata(NamedTuple):
    """Where a batch published with ``publish_many`` landed: ``count`` records at
    consecutive offsets from ``base_offset``. Iterate for one RecordMetadata each."""

    topic: str
    partition: int
    base_offset: int
    count: int
    timestamp: int

    @property
    def offsets(self) -> range:
        return range(self.base_offset, self.base_offset + self.count)

    def records(self) -> list[RecordMetadata]:
        return [RecordMetadata(self.topic, self.partition, o, self.timestamp) for o in self.offsets]
