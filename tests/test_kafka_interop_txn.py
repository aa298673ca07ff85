"""Kafka's transactional formats, both directions with kafka-python: transaction markers
(control batches of one COMMIT/ABORT record) written by fastq, and transactional batches
with producer id, epoch and sequence written by kafka-python, read by fastq. These are
the on-disk pieces of transactions (issue 15); markers written by real transactions are
read back by kafka-python in test_txn.py."""
import warnings

import pytest

import fastq
from fastq._core import _codec

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)      # kafka-python's import (see test_kafka_interop)
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder


@pytest.mark.parametrize("kind,kafka_type", [("commit", 1), ("abort", 0)])
def test_our_markers_are_kafka_control_batches(kind, kafka_type):
    enc = _codec.encode_control_batch(kind, producer_id=123456789, producer_epoch=7, timestamp=1_700_000_000_000,
                                      coordinator_epoch=3, base_offset=42)
    assert len(enc) == 78
    b = DefaultRecordBatch(enc)
    assert b.validate_crc()
    assert b.is_control_batch and b.is_transactional
    assert (b.producer_id, b.producer_epoch, b.base_sequence, b.base_offset) == (123456789, 7, -1, 42)
    (rec,) = list(b)
    assert (rec.version, rec.type, rec.offset, rec.timestamp) == (0, kafka_type, 42, 1_700_000_000_000)
    assert rec.value == b"\x00\x00\x00\x00\x00\x03"          # version 0, coordinatorEpoch 3
    assert _codec.control_type(enc) == kind
    info, _ = _codec.decode_batch(enc)
    assert info.attributes == 0x30


def test_control_type_refuses_what_is_not_a_marker():
    plain = _codec.encode_batch([(1, b"k", b"v", None)])
    with pytest.raises(fastq.CorruptRecord, match="not a transaction marker"):
        _codec.control_type(plain)
    enc = bytearray(_codec.encode_control_batch("commit", producer_id=1, producer_epoch=0, timestamp=1))
    enc[-3] ^= 1                                              # inside the CRC
    with pytest.raises(fastq.CorruptRecord):
        _codec.control_type(bytes(enc))
    with pytest.raises(fastq.InvalidArgument):
        _codec.encode_control_batch("maybe", producer_id=1, producer_epoch=0, timestamp=1)
    with pytest.raises(fastq.InvalidArgument):
        _codec.encode_control_batch("commit", producer_id=-1, producer_epoch=0, timestamp=1)


def test_kafka_transactional_batches_decode_in_fastq():
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=1, producer_id=99,
                                        producer_epoch=4, base_sequence=17, batch_size=1 << 20)
    for i in range(3):
        builder.append(i, 1000 + i, b"k%d" % i, b"v%d" % i, [])
    buf = bytes(builder.build())
    info, recs = _codec.decode_batch(buf)
    assert (info.producer_id, info.producer_epoch, info.base_sequence) == (99, 4, 17)
    assert info.attributes & 0x10 and not info.attributes & 0x20
    assert [(r[0], r[2], r[3]) for r in recs] == [(0, b"k0", b"v0"), (1, b"k1", b"v1"), (2, b"k2", b"v2")]
