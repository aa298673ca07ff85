"""Ring semantics, run against both fastq.Ring and the pure-Python ReferenceRing."""
from __future__ import annotations

import array
import collections
import queue
import random
import threading
import time

import pytest

from fastq import Closed, InvalidArgument, RecordTooLarge, Ring, RingEmpty, RingFull
from logutil import Interrupted, interrupt_after  # noqa: F401 (a fixture)
from ring_reference import REC_HDR, ReferenceRing, record_size


@pytest.fixture(params=["native", "reference"])
def make(request):
    opened = []

    def factory(capacity, **kw):
        cls = Ring if request.param == "native" else ReferenceRing
        r = cls(capacity, **kw)
        opened.append(r)
        return r

    yield factory
    for r in opened:
        r.close()


def pattern(n: int, seed: int) -> bytes:
    return bytes((seed * 31 + i * 7) & 0xFF for i in range(n))


def advance(r, nbytes: int) -> None:
    """Move head and tail forward by nbytes (a multiple of 8) through a put/get."""
    if nbytes:
        r.put(b"\xee" * (nbytes - REC_HDR))
        assert r.get() == b"\xee" * (nbytes - REC_HDR)


def test_fifo_and_counts(make):
    r = make(1024)
    assert r.empty() and not r.full() and r.qsize() == 0
    msgs = [b"a", b"", b"hello world", bytes(100)]
    for m in msgs:
        r.put(m)
    assert r.qsize() == 4 and not r.empty()
    assert [r.get() for _ in msgs] == msgs
    assert r.empty()


def test_capacity_rounds_up_to_power_of_two(make):
    assert make(1000).capacity == 1024
    assert make(16).capacity == 16
    assert make(1025).max_message_size == 2048 - 8


def test_bytes_like_inputs(make):
    r = make(256)
    r.put(bytearray(b"ba"))
    r.put(memoryview(b"xmvx")[1:3])
    r.put(array.array("i", [1, 2]))
    assert r.get() == b"ba"
    assert r.get() == b"mv"
    assert r.get() == array.array("i", [1, 2]).tobytes()


def test_zero_length_messages(make):
    r = make(64)
    for _ in range(8):            # 8 zero-length records of 8 bytes fill 64 bytes
        r.put(b"")
    assert r.full()
    with pytest.raises(RingFull):
        r.put_nowait(b"")
    assert [r.get() for _ in range(8)] == [b""] * 8


@pytest.mark.parametrize("offset", range(0, 64, 8))
def test_exact_capacity_message_at_every_offset(make, offset):
    r = make(64)
    advance(r, offset)
    big = pattern(56, offset)      # record = 64 bytes = the whole ring
    r.put(big)
    assert r.full()
    with pytest.raises(RingFull):
        r.put_nowait(b"")
    assert r.get() == big
    assert r.empty()


def test_oversize_rejected(make):
    r = make(64)
    with pytest.raises(RecordTooLarge):
        r.put(bytes(57))
    with pytest.raises(ValueError):          # RecordTooLarge is an InvalidArgument/ValueError
        r.put(bytes(1000), block=False)
    r2 = make(1024, max_message_size=100)
    r2.put(bytes(100))
    with pytest.raises(RecordTooLarge):
        r2.put(bytes(101))
    assert r.empty() and r2.qsize() == 1


@pytest.mark.parametrize("offset", range(0, 64, 8))
def test_wraparound_at_every_boundary(make, offset):
    """Every message size, starting at every 8-byte offset of a 64-byte ring."""
    r = make(64)
    advance(r, offset)
    for size in range(0, 57):
        m = pattern(size, size + offset)
        r.put(m)
        assert r.get() == m
        # keep a small record in flight so the next one starts somewhere else
        r.put(b"k" * (size % 9))
        assert r.get() == b"k" * (size % 9)


def test_many_sizes_against_model(make):
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    r = make(512)
    model: collections.deque[bytes] = collections.deque()
    used = 0
    for step in range(4000):
        if rng.random() < 0.55:
            m = pattern(rng.choice([0, 1, 7, 8, 9, rng.randrange(0, 505)]), step)
            if used + record_size(len(m)) <= 512:
                r.put_nowait(m)
                model.append(m)
                used += record_size(len(m))
            else:
                with pytest.raises(RingFull):
                    r.put_nowait(m)
        elif model:
            m = model.popleft()
            assert r.get_nowait() == m, f"seed={seed} step={step}"
            used -= record_size(len(m))
        else:
            with pytest.raises(RingEmpty):
                r.get_nowait()
        assert r.qsize() == len(model)
        assert r.used_bytes == used


def test_full_and_empty_are_queue_exceptions(make):
    r = make(64)
    with pytest.raises(queue.Empty):
        r.get_nowait()
    with pytest.raises(queue.Empty):
        r.get(timeout=0)
    r.put(bytes(56))
    with pytest.raises(queue.Full):
        r.put_nowait(b"")
    with pytest.raises(queue.Full):
        r.put(b"", block=False)


def test_timeouts_wait_then_raise(make):
    r = make(64)
    t0 = time.monotonic()
    with pytest.raises(RingEmpty):
        r.get(timeout=0.05)
    assert 0.04 < time.monotonic() - t0 < 2
    r.put(bytes(56))
    t0 = time.monotonic()
    with pytest.raises(RingFull):
        r.put(b"x", timeout=0.05)
    assert 0.04 < time.monotonic() - t0 < 2


def test_blocking_get_woken_by_thread(make):
    r = make(256)
    threading.Timer(0.05, r.put, args=(b"late",)).start()
    assert r.get(timeout=5) == b"late"


def test_blocking_put_woken_by_thread(make):
    r = make(64)
    r.put(bytes(56))
    threading.Timer(0.05, r.get).start()
    r.put(b"next", timeout=5)
    assert r.get() == b"next"


def test_put_many_all_or_nothing(make):
    r = make(128)
    r.put_many([b"a" * 8, b"b" * 8])          # 32 bytes
    with pytest.raises(RingFull):
        r.put_many([bytes(40)] * 2 + [b""], block=False)   # 104 bytes > 96 free
    assert r.qsize() == 2
    with pytest.raises(RecordTooLarge):
        r.put_many([bytes(56)] * 3)              # 3 * 64 > 128: can never fit
    with pytest.raises(RecordTooLarge):
        r.put_many([b"ok", bytes(121)])          # one message over the limit
    assert r.qsize() == 2
    r.put_many(iter([b"c", b"d"]))             # any iterable
    r.put_many([])
    assert r.get_many(3) == [b"a" * 8, b"b" * 8, b"c"]
    assert r.get_many() == [b"d"]
    with pytest.raises(RingEmpty):
        r.get_many(5, block=False)
    with pytest.raises(RingEmpty):
        r.get_many(5, timeout=0.01)
    with pytest.raises(InvalidArgument):
        r.get_many(0)


def test_max_messages(make):
    r = make(1024, max_messages=3)
    for i in range(3):
        r.put(b"%d" % i)
    assert r.full()
    with pytest.raises(RingFull):
        r.put_nowait(b"x")
    with pytest.raises(RecordTooLarge):
        r.put_many([b""] * 4)
    assert r.get() == b"0"
    r.put_nowait(b"3")
    assert r.get_many() == [b"1", b"2", b"3"]


def test_get_into(make):
    r = make(256)
    r.put(b"hello")
    r.put(bytes(50))
    buf = bytearray(16)
    assert r.get_into(buf) == 5 and buf[:5] == b"hello"
    with pytest.raises(RecordTooLarge):
        r.get_into(buf)                      # 50 bytes do not fit 16: left in the ring
    assert r.qsize() == 1
    big = bytearray(64)
    assert r.get_into(memoryview(big)[4:]) == 50
    with pytest.raises(RingEmpty):
        r.get_into(big, block=False)
    with pytest.raises((TypeError, BufferError)):
        r.get_into(b"readonly")


def test_closed(make):
    r = make(64)
    r.put(b"x")
    r.close()
    r.close()
    assert r.closed
    for call in (lambda: r.put(b"y"), r.get_nowait, r.qsize, lambda: r.get_many(1)):
        with pytest.raises(Closed):
            call()
    with pytest.raises(ValueError):          # Closed is a ValueError, like a closed mp.Queue
        r.put(b"z")


def test_context_manager(make):
    with make(64) as r:
        r.put(b"q")
    assert r.closed


@pytest.mark.parametrize("bad", [0, 8, -1, 1.5, "64", True, 2**41])
def test_bad_capacity(make, bad):
    with pytest.raises(InvalidArgument):
        make(bad)


def test_bad_arguments(make):
    r = make(64)
    with pytest.raises(InvalidArgument):
        r.get(timeout=-1)
    with pytest.raises(InvalidArgument):
        make(64, max_message_size=57)
    with pytest.raises(InvalidArgument):
        make(64, max_messages=-1)


def test_threads_mpmc_exactly_once_in_order(make):
    """4 producer threads, 3 consumer threads: every message once, per-producer order."""
    r = make(4096)
    n_prod, per = 4, 3000
    got = [[] for _ in range(3)]
    done = threading.Event()

    def produce(p):
        for i in range(per):
            r.put(b"%d:%d" % (p, i), timeout=10)

    def consume(c):
        while True:
            try:
                for m in r.get_many(16, timeout=0.05):
                    got[c].append(tuple(map(int, m.split(b":"))))
            except RingEmpty:
                if done.is_set() and r.empty():
                    return

    cons = [threading.Thread(target=consume, args=(c,)) for c in range(3)]
    prods = [threading.Thread(target=produce, args=(p,)) for p in range(n_prod)]
    for t in cons + prods:
        t.start()
    for t in prods:
        t.join(30)
    done.set()
    for t in cons:
        t.join(30)
    everything = sorted(x for g in got for x in g)
    assert everything == sorted((p, i) for p in range(n_prod) for i in range(per))
    for g in got:
        for p in range(n_prod):
            seq = [i for (q, i) in g if q == p]
            assert seq == sorted(seq)


def _fill(r):
    while True:
        try:
            r.put(b"f" * 1000, block=False)
        except RingFull:
            return


@pytest.mark.parametrize("call", ["get", "get_into", "get_many", "wait_readable", "put", "put_many"])
def test_a_blocking_call_runs_signal_handlers(interrupt_after, call):
    """A get() on an empty ring (a put() on a full one) with no timeout waits with the
    GIL released; it used to wait through Ctrl-C until a message (or room) came. It now
    runs signal handlers every 100 ms, and the ring is unchanged by the interruption."""
    r = Ring(1 << 16)
    try:
        if call.startswith("put"):
            _fill(r)
        before = len(r)
        fn = {"get": r.get, "get_into": lambda: r.get_into(bytearray(2000)),
              "get_many": lambda: r._get_records(10, block=True),
              "wait_readable": r._wait_readable, "put": lambda: r.put(b"p" * 1000),
              "put_many": lambda: r.put_many([b"p" * 1000, b"q"])}[call]
        interrupt_after(0.2)
        t0 = time.monotonic()
        with pytest.raises(Interrupted):
            fn()
        assert 0.15 < time.monotonic() - t0 < 2.0
        assert len(r) == before
        t0 = time.monotonic()                     # a timeout still ends a sliced wait
        with pytest.raises(RingFull if call.startswith("put") else RingEmpty):
            (r.put(b"p" * 1000, timeout=0.25) if call.startswith("put") else r.get(timeout=0.25))
        assert 0.2 <= time.monotonic() - t0 < 2.0
    finally:
        r.close()
