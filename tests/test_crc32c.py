"""CRC-32C: published vectors, hardware vs table vs google-crc32c, chaining, alignment."""
import os
import random

import google_crc32c
import pytest

from fastq._core import _codec
from fastq.errors import InvalidArgument

SEED = int(os.environ.get("FASTQ_SEED", random.randrange(2**32)))


@pytest.fixture
def rng():
    print(f"seed={SEED} (replay with FASTQ_SEED={SEED})")
    return random.Random(SEED)


# RFC 3720 appendix B.4 and the common check value
VECTORS = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
    (b"", 0),
]


@pytest.mark.parametrize("fn", [_codec.crc32c, _codec.crc32c_sw])
@pytest.mark.parametrize("data,expected", VECTORS)
def test_published_vectors(fn, data, expected):
    assert fn(data) == expected


def test_hw_flag_is_bool():
    assert isinstance(_codec.crc32c_hw(), bool)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_buffer_types(wrap):
    assert _codec.crc32c(wrap(b"123456789")) == 0xE3069283


def test_memoryview_slices_and_readonly_mmap_like():
    data = bytes(range(256)) * 10
    mv = memoryview(data)[3:1003]
    assert _codec.crc32c(mv) == google_crc32c.value(data[3:1003])


def test_non_contiguous_and_wrong_types_rejected():
    with pytest.raises(InvalidArgument):
        _codec.crc32c(memoryview(b"abcdef")[::2])
    with pytest.raises(InvalidArgument):
        _codec.crc32c("text")
    with pytest.raises(InvalidArgument):
        _codec.crc32c(b"x", -1)
    with pytest.raises(InvalidArgument):
        _codec.crc32c(b"x", 2**32)


def test_random_sizes_against_oracle(rng):
    blob = rng.randbytes(70016)
    sizes = [0, 1, 7, 8, 9, 255, 256, 767, 768, 769, 8191, 24575, 24576, 24577, 65536,
             65537, 70000] + [rng.randrange(70001) for _ in range(60)]
    for n in sizes:
        a = rng.randrange(16)
        chunk = blob[a:a + n]
        want = google_crc32c.value(chunk)
        assert _codec.crc32c(chunk) == want, (n, a)
        assert _codec.crc32c_sw(chunk) == want, (n, a)


def test_every_alignment_and_small_size(rng):
    buf = bytearray(rng.randbytes(4096 + 16))
    mv = memoryview(buf)
    for a in range(16):
        for n in list(range(0, 80)) + [800, 3000, 4096]:
            want = google_crc32c.value(bytes(buf[a:a + n]))
            assert _codec.crc32c(mv[a:a + n]) == want, (a, n)
            assert _codec.crc32c_sw(mv[a:a + n]) == want, (a, n)


def test_chaining(rng):
    for _ in range(200):
        a = rng.randbytes(rng.randrange(3000))
        b = rng.randbytes(rng.randrange(30000))
        whole = _codec.crc32c(a + b)
        assert _codec.crc32c(b, _codec.crc32c(a)) == whole
        assert _codec.crc32c_sw(b, _codec.crc32c_sw(a)) == whole
        assert whole == google_crc32c.extend(google_crc32c.value(a), b)


def test_large_buffer_releases_gil_and_matches():
    data = os.urandom(3 * 1024 * 1024 + 5)
    assert _codec.crc32c(data) == google_crc32c.value(data)
