"""RecordBatch v2 encode/decode: a pure-Python reference encoder, round trips, and the
decoder's behaviour on truncated, bit-flipped, re-framed and random (untrusted) bytes."""
import os
import random
import struct

import google_crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastq._core import _codec
from fastq.errors import CorruptRecord, InvalidArgument, RecordTooLarge

SEED = int(os.environ.get("FASTQ_SEED", random.randrange(2**32)))
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
CRC_START = 21  # the CRC covers bytes [21, end)


@pytest.fixture
def rng():
    print(f"seed={SEED} (replay with FASTQ_SEED={SEED})")
    return random.Random(SEED)


# ---- reference encoder (readable, slow) ------------------------------------------------

def _uvarint(u):
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def _varint(v, bits=32):
    return _uvarint(((v << 1) ^ (v >> (bits - 1))) & ((1 << bits) - 1))


def _bytes_field(b):
    return _varint(-1) if b is None else _varint(len(b)) + bytes(b)


def _wrap64(v):
    return (v + 2**63) % 2**64 - 2**63


def ref_encode(records, base_offset=0, attributes=0):
    base_ts = records[0][0]
    body = bytearray()
    for i, (ts, key, value, headers) in enumerate(records):
        headers = headers or ()
        rec = bytearray(b"\x00")
        rec += _varint(_wrap64(ts - base_ts), 64) + _varint(i)
        rec += _bytes_field(key) + _bytes_field(value) + _varint(len(headers))
        for hk, hv in headers:
            rec += _bytes_field(hk.encode()) + _bytes_field(hv)
        body += _varint(len(rec)) + rec
    after_crc = struct.pack(">hiqqqhii", attributes, len(records) - 1, base_ts,
                            max(r[0] for r in records), -1, -1, -1, len(records)) + body
    crc = google_crc32c.value(bytes(after_crc))
    return struct.pack(">qiibI", base_offset, 49 + len(body), 0, 2, crc) + after_crc


def expected_records(records, base_offset=0):
    return [(base_offset + i, ts, None if k is None else bytes(k), None if v is None else bytes(v),
             [(hk, None if hv is None else bytes(hv)) for hk, hv in (h or ())])
            for i, (ts, k, v, h) in enumerate(records)]


def refresh_crc(buf: bytearray) -> bytearray:
    struct.pack_into(">I", buf, 17, google_crc32c.value(bytes(buf[CRC_START:])))
    return buf


# ---- strategies ---------------------------------------------------------------------------

maybe_bytes = st.one_of(st.none(), st.binary(max_size=300))
header = st.tuples(st.text(max_size=20), maybe_bytes)
record = st.tuples(
    st.one_of(st.integers(I64_MIN, I64_MAX), st.integers(-(2**41), 2**41)),
    maybe_bytes, maybe_bytes, st.lists(header, max_size=4),
)
records_st = st.lists(record, min_size=1, max_size=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(records_st, st.integers(0, 2**62), st.sampled_from([0, 0x10]))
def test_roundtrip_matches_reference(records, base_offset, attributes):
    enc = _codec.encode_batch(records, base_offset=base_offset, attributes=attributes)
    assert enc == ref_encode(records, base_offset, attributes)
    info, out = _codec.decode_batch(enc)
    assert out == expected_records(records, base_offset)
    assert info.base_offset == base_offset
    assert info.total_size == len(enc) == info.batch_length + 12
    assert info.record_count == len(records) == info.last_offset_delta + 1
    assert info.base_timestamp == records[0][0]
    assert info.max_timestamp == max(r[0] for r in records)
    assert (info.producer_id, info.producer_epoch, info.base_sequence) == (-1, -1, -1)
    assert info.attributes == attributes
    assert info.crc == google_crc32c.value(enc[CRC_START:])


def test_buffer_types_and_trailing_bytes():
    recs = [(5, bytearray(b"k"), memoryview(b"value"), [("h", bytearray(b"x"))])]
    enc = _codec.encode_batch(recs)
    assert enc == ref_encode([(5, b"k", b"value", [("h", b"x")])])
    info, out = _codec.decode_batch(bytearray(enc) + b"\x00" * 50)  # the next batch's bytes
    assert info.total_size == len(enc)
    assert out == [(0, 5, b"k", b"value", [("h", b"x")])]
    assert _codec.decode_batch(memoryview(b"junk" + enc)[4:])[1] == out


def test_null_empty_and_large_fields():
    big = os.urandom(3 * 1024 * 1024)
    recs = [(0, None, None, None), (1, b"", b"", []), (2, big, big[:1000], [("k", None), ("", b"")])]
    enc = _codec.encode_batch(recs, base_offset=10**12)
    assert enc == ref_encode(recs, 10**12)
    assert _codec.decode_batch(enc)[1] == expected_records(recs, 10**12)


def test_negative_and_extreme_timestamp_deltas():
    recs = [(1000, None, b"a", None), (-5, None, b"b", None), (I64_MAX, None, b"c", None),
            (I64_MIN, None, b"d", None)]
    info, out = _codec.decode_batch(_codec.encode_batch(recs))
    assert [r[1] for r in out] == [1000, -5, I64_MAX, I64_MIN]
    assert info.max_timestamp == I64_MAX


def test_log_append_time_reports_max_timestamp():
    recs = [(10, None, b"a", None), (30, None, b"b", None), (20, None, b"c", None)]
    info, out = _codec.decode_batch(_codec.encode_batch(recs, attributes=0x08))
    assert [r[1] for r in out] == [30, 30, 30]


def test_unicode_header_keys():
    recs = [(0, None, b"v", [("ключ-🔑", b"\x00\xff")])]
    assert _codec.decode_batch(_codec.encode_batch(recs))[1][0][4] == [("ключ-🔑", b"\x00\xff")]


# ---- bad arguments ------------------------------------------------------------------------

@pytest.mark.parametrize("records", [
    [],
    (),
    [(0, b"k", b"v")],                      # three fields
    [(0, b"k", b"v", None, None)],          # five
    [None],
    [(1.5, None, None, None)],              # float timestamp
    [(2**63, None, None, None)],            # out of range
    [("0", None, None, None)],
    [(0, "text key", None, None)],
    [(0, None, 12, None)],
    [(0, None, None, [("k",)])],
    [(0, None, None, [(b"bytes-key", b"v")])],
    [(0, None, None, [(None, b"v")])],
    [(0, None, None, [("k", "str value")])],
    [(0, None, None, 5)],
    [(0, None, None, None), (1, None, memoryview(b"abcd")[::2], None)],
])
def test_bad_records_rejected(records):
    with pytest.raises(InvalidArgument):
        _codec.encode_batch(records)


def test_bad_options_rejected():
    rec = [(0, None, b"v", None)]
    for kw in [{"attributes": 1}, {"attributes": 0x04}, {"attributes": 2**15},
               {"base_offset": 2**63}, {"base_offset": "0"}]:
        with pytest.raises(InvalidArgument):
            _codec.encode_batch(rec, **kw)
    with pytest.raises(InvalidArgument):
        _codec.encode_batch(42)
    assert issubclass(RecordTooLarge, InvalidArgument)


def test_generator_of_records_accepted():
    enc = _codec.encode_batch((t, None, b"x", None) for t in range(3))
    assert len(_codec.decode_batch(enc)[1]) == 3


# ---- untrusted input -----------------------------------------------------------------------

SAMPLE = [(1_700_000_000_000, b"key", b"value" * 7, [("a", b"1"), ("b", None)]),
          (1_699_999_999_990, None, b"", []),
          (1_700_000_000_500, b"", None, [("c", b"")])]


def test_every_truncation_raises():
    enc = _codec.encode_batch(SAMPLE)
    for cut in range(len(enc)):
        with pytest.raises(CorruptRecord) as ei:
            _codec.decode_batch(enc[:cut])
        assert "truncated" in str(ei.value)
        assert ei.value.position == 0


def test_every_reframed_truncation_raises():
    """Cut the record area and fix batchLength and CRC: the record framing must notice."""
    enc = _codec.encode_batch(SAMPLE)
    for cut in range(61, len(enc)):
        buf = bytearray(enc[:cut])
        struct.pack_into(">i", buf, 8, cut - 12)
        refresh_crc(buf)
        with pytest.raises(CorruptRecord):
            _codec.decode_batch(buf)


def test_single_bit_flips_in_crc_range_detected():
    enc = _codec.encode_batch(SAMPLE)
    for i in range(CRC_START, len(enc)):
        for bit in range(8):
            buf = bytearray(enc)
            buf[i] ^= 1 << bit
            with pytest.raises(CorruptRecord):
                _codec.decode_batch(buf)
            try:  # without the CRC: decoded or refused, never a crash
                _codec.decode_batch(buf, check_crc=False)
            except CorruptRecord:
                pass


def test_bit_flips_in_fields_before_crc():
    enc = _codec.encode_batch(SAMPLE)
    for i in range(CRC_START):
        for bit in range(8):
            buf = bytearray(enc)
            buf[i] ^= 1 << bit
            if i < 8 or 12 <= i < 16:  # baseOffset, leader epoch: outside the CRC
                try:
                    info, out = _codec.decode_batch(buf)
                    assert info.base_offset == struct.unpack_from(">q", buf)[0]
                except CorruptRecord as e:
                    assert "overflows" in str(e)
            else:
                with pytest.raises(CorruptRecord):
                    _codec.decode_batch(buf)


def test_bad_header_fields():
    enc = bytearray(_codec.encode_batch(SAMPLE))
    cases = {
        16: (b"\x01", "magic"),
        8: (struct.pack(">i", 0), "batchLength"),
        57: (struct.pack(">i", -1), "recordCount"),
        23: (struct.pack(">i", 0), "lastOffsetDelta"),  # fewer than recordCount - 1
    }
    for off, (patch, word) in cases.items():
        buf = bytearray(enc)
        buf[off:off + len(patch)] = patch
        refresh_crc(buf)
        with pytest.raises(CorruptRecord, match=word):
            _codec.decode_batch(buf)
    buf = bytearray(enc)
    struct.pack_into(">i", buf, 57, 2)  # recordCount says fewer records than the bytes hold
    with pytest.raises(CorruptRecord, match="left in the batch"):
        _codec.decode_batch(refresh_crc(buf))
    buf = bytearray(enc)
    struct.pack_into(">i", buf, 57, 100_000_000)  # more records than could fit
    with pytest.raises(CorruptRecord, match="recordCount"):
        _codec.decode_batch(refresh_crc(buf))


def test_compressed_batch_rejected():
    buf = bytearray(_codec.encode_batch(SAMPLE))
    for codec in (1, 2, 3, 4):
        struct.pack_into(">h", buf, 21, codec)
        with pytest.raises(CorruptRecord, match="compression unsupported"):
            _codec.decode_batch(refresh_crc(buf))


def test_crc_mismatch_message_and_check_crc_false():
    buf = bytearray(_codec.encode_batch(SAMPLE))
    struct.pack_into(">I", buf, 17, 0xDEADBEEF)
    with pytest.raises(CorruptRecord, match="CRC mismatch") as ei:
        _codec.decode_batch(buf)
    assert ei.value.position == 17
    info, out = _codec.decode_batch(buf, check_crc=False)
    assert info.crc == 0xDEADBEEF and len(out) == 3


def test_handmade_record_framing_errors():
    """Records whose lengths lie, built by hand: each must be refused."""
    def batch_with(record_bytes, count=1):
        after_crc = struct.pack(">hiqqqhii", 0, count - 1, 0, 0, -1, -1, -1, count) + record_bytes
        head = struct.pack(">qiibI", 0, 49 + len(record_bytes), 0, 2, 0)
        return refresh_crc(bytearray(head + after_crc))

    ok = b"\x00" + _varint(0, 64) + _varint(0) + _varint(-1) + _varint(1) + b"v" + _varint(0)
    assert _codec.decode_batch(batch_with(_varint(len(ok)) + ok))[1] == [(0, 0, None, b"v", [])]
    bad_records = [
        _varint(len(ok) + 1) + ok + b"\x00",                      # record longer than its fields
        _varint(len(ok) - 1) + ok[:-1],                           # shorter: header count missing
        _varint(-3) + ok,                                         # negative record length
        _varint(2**30) + ok,                                      # runs past the batch
        b"\xff\xff\xff\xff\xff\xff" + ok,                         # overlong length varint
        _varint(7) + b"\x00\x00\x00" + _varint(-2) + b"\x00\x00\x00",  # key length -2
        _varint(7) + b"\x00\x00\x00\x00" + _varint(50) + b"\x00\x00",  # value past record
        _varint(8) + b"\x00\x00\x00\x00\x00" + _varint(-1) + _varint(0) + b"\x00",  # trailing
        _varint(6) + b"\x00\x00\x00\x00\x00" + _varint(-1),       # header count -1
        _varint(8) + b"\x00\x00\x00\x00\x00" + _varint(1) + _varint(-1) + _varint(0),  # null header key
        _varint(9) + b"\x00\x00\x00\x00\x00" + _varint(1) + _varint(1) + b"\xff" + _varint(-1),  # not UTF-8
        _varint(6) + b"\x00\x00\x00\x00\x00" + _varint(2**20),   # absurd header count
    ]
    for rec in bad_records:
        with pytest.raises(CorruptRecord):
            _codec.decode_batch(batch_with(rec))
    # offset deltas must ascend within [0, lastOffsetDelta]
    r0 = b"\x00" + _varint(0, 64) + _varint(1) + _varint(-1) + _varint(-1) + _varint(0)
    r1 = b"\x00" + _varint(0, 64) + _varint(0) + _varint(-1) + _varint(-1) + _varint(0)
    two = _varint(len(r0)) + r0 + _varint(len(r1)) + r1
    with pytest.raises(CorruptRecord, match="out of order"):
        _codec.decode_batch(batch_with(two, count=2))


def test_random_garbage_never_crashes(rng):
    for _ in range(3000):
        data = rng.randbytes(rng.randrange(200))
        with pytest.raises(CorruptRecord):
            _codec.decode_batch(data)


def test_mutated_batches_with_fixed_crc(rng):
    """Mutate the record area, re-frame and re-CRC so the record parser sees the damage."""
    enc = _codec.encode_batch(SAMPLE + [(0, os.urandom(40), None, [("x" * 5, b"y" * 9)])])
    decoded = refused = 0
    for _ in range(4000):
        buf = bytearray(enc)
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(61, len(buf))
            op = rng.randrange(3)
            if op == 0:
                buf[i] = rng.randrange(256)
            elif op == 1:
                del buf[i:i + rng.randrange(1, 8)]
            else:
                buf[i:i] = rng.randbytes(rng.randrange(1, 8))
        struct.pack_into(">i", buf, 8, len(buf) - 12)
        refresh_crc(buf)
        try:
            info, out = _codec.decode_batch(buf)
            decoded += 1
            assert len(out) == info.record_count
        except CorruptRecord:
            refused += 1
    print(f"decoded={decoded} refused={refused}")
    assert refused > 0


@settings(max_examples=500)
@given(st.binary(min_size=61, max_size=300))
def test_hypothesis_garbage_with_valid_frame(data):
    buf = bytearray(data)
    struct.pack_into(">ib", buf, 8, len(buf) - 12, 0)
    buf[16] = 2
    refresh_crc(buf)
    try:
        info, out = _codec.decode_batch(buf)
    except CorruptRecord:
        return
    assert info.total_size == len(buf)
    assert len(out) == info.record_count
