"""Kafka zigzag varints and unsigned LEB128: edges, overlong/truncated input, round trips."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastq._core import _codec
from fastq.errors import CorruptRecord, InvalidArgument

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def ref_uvarint(u: int) -> bytes:
    """Reference LEB128 encoder."""
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def zigzag(v: int, bits: int) -> int:
    return ((v << 1) ^ (v >> (bits - 1))) & ((1 << bits) - 1)


EDGES32 = [0, 1, -1, 2, -2, 63, -63, 64, -64, 65, -65, 127, -127, 128, -128, 8191, 8192,
           -8192, -8193, I32_MIN, I32_MAX, I32_MIN + 1, I32_MAX - 1]
EDGES64 = EDGES32 + [I64_MIN, I64_MAX, 2**32, -(2**32), 2**62, -(2**62), I64_MIN + 1]


@pytest.mark.parametrize("v", EDGES32)
def test_varint_edges(v):
    enc = _codec.encode_varint(v)
    assert enc == ref_uvarint(zigzag(v, 32))
    assert _codec.decode_varint(enc) == (v, len(enc))
    assert _codec.decode_varint(enc + b"\xff\x00") == (v, len(enc))  # trailing bytes ignored


@pytest.mark.parametrize("v", EDGES64)
def test_varlong_edges(v):
    enc = _codec.encode_varlong(v)
    assert enc == ref_uvarint(zigzag(v, 64))
    assert _codec.decode_varlong(enc) == (v, len(enc))


def test_known_bytes():
    assert _codec.encode_varint(0) == b"\x00"
    assert _codec.encode_varint(-1) == b"\x01"
    assert _codec.encode_varint(1) == b"\x02"
    assert _codec.encode_varint(-64) == b"\x7f"
    assert _codec.encode_varint(64) == b"\x80\x01"
    assert _codec.encode_varint(I32_MAX) == b"\xfe\xff\xff\xff\x0f"
    assert _codec.encode_varint(I32_MIN) == b"\xff\xff\xff\xff\x0f"
    assert _codec.encode_varlong(I64_MIN) == b"\xff" * 9 + b"\x01"
    assert _codec.encode_uvarint(127) == b"\x7f"
    assert _codec.encode_uvarint(128) == b"\x80\x01"
    assert _codec.encode_uvarint(2**64 - 1) == b"\xff" * 9 + b"\x01"


@pytest.mark.parametrize("u", [0, 1, 127, 128, 16383, 16384, 2**32, 2**63, 2**64 - 1])
def test_uvarint_edges(u):
    enc = _codec.encode_uvarint(u)
    assert enc == ref_uvarint(u)
    assert _codec.decode_uvarint(enc) == (u, len(enc))


@pytest.mark.parametrize("fn,bad", [
    (_codec.encode_varint, [I32_MAX + 1, I32_MIN - 1, 2**40]),
    (_codec.encode_varlong, [I64_MAX + 1, I64_MIN - 1]),
    (_codec.encode_uvarint, [-1, 2**64]),
])
def test_out_of_range_rejected(fn, bad):
    for v in bad:
        with pytest.raises(InvalidArgument):
            fn(v)
    with pytest.raises(InvalidArgument):
        fn("1")
    with pytest.raises(InvalidArgument):
        fn(1.0)


@pytest.mark.parametrize("fn", [_codec.decode_varint, _codec.decode_varlong, _codec.decode_uvarint])
@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff\xff", b"\x80\x80\x80\x80"])
def test_truncated_rejected(fn, data):
    with pytest.raises(CorruptRecord, match="truncated"):
        fn(data)


def test_overlong_rejected():
    # 6 bytes for an int32, 11 for an int64: longer than the type allows
    for data in [b"\x80" * 5 + b"\x00", b"\xff" * 5 + b"\x01", b"\x80" * 6]:
        with pytest.raises(CorruptRecord, match="corrupt"):
            _codec.decode_varint(data)
    for data in [b"\x80" * 10 + b"\x00", b"\xff" * 11]:
        with pytest.raises(CorruptRecord, match="corrupt"):
            _codec.decode_varlong(data)
        with pytest.raises(CorruptRecord, match="corrupt"):
            _codec.decode_uvarint(data)


def test_last_byte_overflow_rejected():
    # the 5th byte of an int32 carries only 4 bits, the 10th of an int64 only 1
    assert _codec.decode_varint(b"\xff\xff\xff\xff\x0f")[1] == 5
    with pytest.raises(CorruptRecord):
        _codec.decode_varint(b"\xff\xff\xff\xff\x1f")
    assert _codec.decode_varlong(b"\xff" * 9 + b"\x01")[1] == 10
    with pytest.raises(CorruptRecord):
        _codec.decode_varlong(b"\xff" * 9 + b"\x02")


def test_non_minimal_within_limit_accepted():
    # as Kafka and protobuf readers do
    assert _codec.decode_varint(b"\x80\x00") == (0, 2)
    assert _codec.decode_varlong(b"\x81\x80\x80\x00") == (-1, 4)


def test_decode_accepts_buffers():
    enc = _codec.encode_varlong(-123456789)
    assert _codec.decode_varlong(bytearray(enc)) == (-123456789, len(enc))
    assert _codec.decode_varlong(memoryview(b"xx" + enc)[2:]) == (-123456789, len(enc))
    with pytest.raises(InvalidArgument):
        _codec.decode_varint("\x01")


@given(st.integers(I32_MIN, I32_MAX))
def test_varint_roundtrip(v):
    enc = _codec.encode_varint(v)
    assert len(enc) <= 5
    assert _codec.decode_varint(enc) == (v, len(enc))
    assert enc == ref_uvarint(zigzag(v, 32))


@given(st.integers(I64_MIN, I64_MAX))
def test_varlong_roundtrip(v):
    enc = _codec.encode_varlong(v)
    assert len(enc) <= 10
    assert _codec.decode_varlong(enc) == (v, len(enc))
    assert enc == ref_uvarint(zigzag(v, 64))


@given(st.integers(0, 2**64 - 1))
def test_uvarint_roundtrip(u):
    enc = _codec.encode_uvarint(u)
    assert _codec.decode_uvarint(enc) == (u, len(enc))


@given(st.binary(max_size=12))
def test_decode_garbage_never_crashes(data):
    for fn in (_codec.decode_varint, _codec.decode_varlong, _codec.decode_uvarint):
        try:
            v, n = fn(data)
        except CorruptRecord:
            continue
        assert 1 <= n <= len(data)
        assert data[n - 1] < 0x80 and all(b >= 0x80 for b in data[:n - 1])
