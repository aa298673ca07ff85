"""The compiled core: Cython modules over the C in csrc/ (no policy here).

_codec    record batches, CRC-32C, varints, and the one status -> exception table
_storage  segments, the log core, readers, pacers, notifier, flock, fault points
_ring     the shared-memory ring (one writer lock, futex wait/wake)
_producer the batching producer's hot path over the ring and the log
"""
