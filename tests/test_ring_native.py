"""fastq.Ring only: zero-copy views, named rings, pickling, lifecycle, untrusted files."""
from __future__ import annotations

import gc
import os
import pickle
import struct
import threading
import time
import uuid

import pytest

from fastq import Closed, CorruptRecord, InvalidArgument, InvalidName, Ring, RingEmpty, StorageError
from fastq._core._ring import ring_path


@pytest.fixture
def name():
    n = "test-" + uuid.uuid4().hex
    yield n
    try:
        os.unlink(ring_path(n))
    except FileNotFoundError:
        pass


def test_get_view_consumes_on_release():
    with Ring(256) as r:
        r.put(b"zero-copy")
        r.put(b"second")
        with r.get_view() as mv:
            assert mv.readonly and bytes(mv) == b"zero-copy"
            assert r.qsize() == 2                    # not consumed while the view lives
            with pytest.raises(BufferError):
                r.get_nowait()
            with pytest.raises(BufferError):
                r.close()
            with pytest.raises(BufferError):
                memoryview(mv.obj)                   # the exporter exports once
        assert r.qsize() == 1
        assert r.get() == b"second"


def test_get_view_slices_keep_it_alive():
    with Ring(256) as r:
        r.put(b"abcdef")
        mv = r.get_view()
        part = mv[2:4]
        mv.release()
        assert r.qsize() == 1 and bytes(part) == b"cd"
        part.release()
        assert r.qsize() == 0


def test_get_view_dropped_view_is_consumed():
    with Ring(256) as r:
        r.put(b"a")
        r.put(b"b")
        r.get_view()                                 # dropped at once: consumed
        assert r.get() == b"b"


def test_get_view_empty_and_writable_refused():
    with Ring(256) as r:
        with pytest.raises(RingEmpty):
            r.get_view(block=False)
        r.put(b"ro")
        mv = r.get_view()
        with pytest.raises(TypeError):
            mv[0] = 1
        mv.release()


def test_named_ring_attach_and_unlink(name):
    with Ring(1024, name=name) as a, Ring.attach(name) as b:
        assert b.capacity == 1024 and b.name == name and a.path == b.path
        a.put(b"shared")
        assert b.get() == b"shared"
        with pytest.raises(StorageError):
            Ring(1024, name=name)                    # exists
        with pytest.raises(InvalidArgument):
            Ring(2048, name=name, create=False)      # wrong capacity
        a.unlink()
        assert not os.path.exists(a.path)
        b.put(b"still mapped")
        assert a.get() == b"still mapped"
    with pytest.raises(StorageError):
        Ring.attach(name)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "x" * 201, "sp ace", None])
def test_bad_names(bad):
    with pytest.raises(InvalidArgument):
        if bad is None:
            Ring(name=None, create=False)
        else:
            Ring(64, name=bad)
    if bad:
        with pytest.raises(InvalidName):
            ring_path(bad)


def test_untrusted_files(name):
    path = ring_path(name)
    with open(path, "wb") as f:                      # no magic: waits ~1 s, then refuses
        f.write(b"\0" * 4096)
    t0 = time.monotonic()
    with pytest.raises(CorruptRecord):
        Ring.attach(name)
    assert time.monotonic() - t0 < 5
    with Ring(1024, name="x" + name) as good:         # a real header with a bad capacity
        with open(good.path, "rb") as f:
            header = bytearray(f.read(1024))
        good.unlink()
    struct.pack_into("<Q", header, 16, 1000)
    with open(path, "wb") as f:
        f.write(header + b"\0" * 4096)
    with pytest.raises(CorruptRecord):
        Ring.attach(name)


def test_corrupt_record_length_is_reported(name):
    with Ring(1024, name=name) as r:
        r.put(b"hello")
        with open(r.path, "r+b") as f:               # scribble over the record's length
            f.seek(1024)
            f.write(struct.pack("<I", 900))
        with pytest.raises(CorruptRecord):
            r.get_nowait()


def test_pickle_named_in_process(name):
    with Ring(1024, name=name) as r:
        with pickle.loads(pickle.dumps(r)) as r2:
            r.put(b"p")
            assert r2.get() == b"p"


def test_pickle_closed_refused():
    r = Ring(64)
    r.close()
    with pytest.raises(Closed):
        pickle.dumps(r)


def test_unclosed_ring_warns():
    r = Ring(64)
    with pytest.warns(ResourceWarning, match="unclosed fastq.Ring"):
        del r
        gc.collect()


def test_close_interrupts_blocked_threads():
    r = Ring(64)
    errors = []

    def blocked_get():
        try:
            r.get(timeout=30)
        except Exception as e:                       # noqa: BLE001 - recorded for the assert
            errors.append(e)

    t = threading.Thread(target=blocked_get)
    t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    r.close()
    t.join(5)
    assert time.monotonic() - t0 < 2
    assert len(errors) == 1 and isinstance(errors[0], Closed)


def test_wait_releases_the_gil():
    with Ring(64) as r:
        t = threading.Thread(target=lambda: pytest.raises(RingEmpty, r.get, timeout=0.3))
        t.start()
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < 0.2:
            n += 1
        t.join()
        assert n > 1000


@pytest.mark.parametrize("wait", ["spin", "yield", "futex"])
def test_wait_strategies_threads(wait):
    n = 300
    with Ring(128, wait=wait, spin_ns=0) as r:
        def producer():
            for i in range(n):
                r.put(b"%d" % i, timeout=5)
        t = threading.Thread(target=producer)
        t.start()
        assert [r.get(timeout=5) for _ in range(n)] == [b"%d" % i for i in range(n)]
        t.join()


def test_single_producer_consumer_flags():
    with Ring(1024, single_producer=True, single_consumer=True) as r:
        assert r.single_producer and r.single_consumer
        r.put_many([b"a", b"b"])
        assert r.get_many() == [b"a", b"b"]


def test_large_messages_release_gil_path():
    with Ring(1 << 20) as r:
        big = os.urandom(300_000)
        r.put(big)
        r.put_many([big, b"x"])
        assert r.get() == big
        assert r.get_many(2) == [big, b"x"]
        r.put(big)
        buf = bytearray(400_000)
        assert r.get_into(buf) == len(big) and buf[:len(big)] == big


def test_repr_and_properties():
    r = Ring(100, wait="yield", max_messages=5)
    assert "capacity=128" in repr(r) and r.wait == "yield" and r.max_messages == 5
    r.close()
    assert "closed" in repr(r)
    with pytest.raises(InvalidArgument):
        Ring(64, wait="sleepy")
