"""Byte compatibility with Kafka's RecordBatch v2, using kafka-python as the other side."""
import os
import random
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():
    # kafka-python 3.x calls importlib.resources.read_text at import (deprecated in 3.11);
    # the suite runs with warnings as errors, so silence only this import
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from fastq._core import _codec

SEED = int(os.environ.get("FASTQ_SEED", random.randrange(2**32)))

maybe_bytes = st.one_of(st.none(), st.binary(max_size=200))
header = st.tuples(st.text(max_size=12), maybe_bytes)
# kafka-python does not wrap timestamp deltas to int64: keep deltas inside it
record = st.tuples(st.integers(0, 2**45), maybe_bytes, maybe_bytes, st.lists(header, max_size=3))


def kafka_decode(buf):
    batch = DefaultRecordBatch(bytes(buf))
    assert batch.validate_crc()
    out = [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in batch]
    return batch, out


def kafka_build(records):
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=0, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=1 << 30)
    for i, (ts, key, value, headers) in enumerate(records):
        assert builder.append(i, ts, key, value, headers) is not None
    return bytes(builder.build())


def norm(records, base_offset=0):
    return [(base_offset + i, ts, k, v, list(h)) for i, (ts, k, v, h) in enumerate(records)]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record, min_size=1, max_size=10), st.integers(0, 2**40))
def test_ours_decoded_by_kafka(records, base_offset):
    enc = _codec.encode_batch(records, base_offset=base_offset)
    batch, out = kafka_decode(enc)
    assert out == norm(records, base_offset)
    assert batch.base_offset == base_offset
    assert batch.magic == 2
    assert batch.records_count == len(records)
    assert batch.last_offset_delta == len(records) - 1
    assert batch.first_timestamp == records[0][0]
    assert batch.max_timestamp == max(r[0] for r in records)
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (-1, -1, -1)
    assert batch.size_in_bytes == len(enc)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record, min_size=1, max_size=10))
def test_kafka_decoded_by_us(records):
    built = kafka_build(records)
    info, out = _codec.decode_batch(built)
    assert out == norm(records)
    assert info.total_size == len(built)
    assert info.record_count == len(records)
    # both sides produce the same bytes for the same records
    assert _codec.encode_batch(records) == built


def test_fixed_example_both_ways():
    records = [(1_700_000_000_000, b"user-42", b'{"n": 1}', [("trace", b"abc"), ("null", None)]),
               (1_699_999_999_000, None, b"", []),
               (1_700_000_000_123, b"", None, [("\u00e9t\u00e9", b"\x00")])]
    built = kafka_build(records)
    ours = _codec.encode_batch(records)
    assert ours == built
    assert kafka_decode(ours)[1] == norm(records)
    assert _codec.decode_batch(built)[1] == norm(records)


def test_kafka_rejects_our_corruption_too():
    enc = bytearray(_codec.encode_batch([(0, b"k", b"v" * 50, [])]))
    enc[-10] ^= 0x40
    assert not DefaultRecordBatch(bytes(enc)).validate_crc()


def test_transactional_attribute_understood_by_kafka():
    enc = _codec.encode_batch([(5, None, b"v", [])], attributes=0x10)
    batch = DefaultRecordBatch(enc)
    assert batch.is_transactional and not batch.is_control_batch
    assert batch.validate_crc()
