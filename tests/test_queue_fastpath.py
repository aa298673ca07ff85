"""The compiled hot path of fastq.queue (QueueCore / MessageCore, src/fastq/_core/_queuecore.pxi):
that the common case really runs compiled, that it hands out exactly what the Python path
hands out, and that every case it does not cover comes back to the Python path with the
same result or error. The promises themselves are test_queue*.py's, which run through it."""
import os
import random
import threading
import time

import pytest

import fastq
from fastq.errors import Closed, CodecError, InvalidArgument, LeaseLost
from test_queue import broker  # noqa: F401 - fixture


def _warm(q):
    """Claim the session and run the first housekeeping: from here on the common case
    takes the compiled path."""
    q.publish(b"warm")
    (m,) = q.receive(1, wait=1)
    m.ack()


def test_common_case_runs_compiled(broker):
    q = broker.queue("q", codec="raw")
    _warm(q)
    ids = [q.publish(b"m%d" % i) for i in range(3)]
    assert ids == [(1 + i) << 12 for i in range(3)]         # offset << 12 | partition 0, lane 0
    got = q._take_fast(2)
    assert got is not None, "the compiled path fell back to Python in the common case"
    assert [m.body for m in got] == [b"m0", b"m1"] and [m.id for m in got] == ids[:2]
    assert q._settle_many(got, fastq.queue.queue.ACKED) == []
    assert all(m.settled for m in got)
    assert [m.body for m in q._take_fast(5)] == [b"m2"]
    assert q._take_fast(5) == []


def test_compiled_and_python_paths_build_the_same_message(broker):
    q = broker.queue("q", codec="json")
    _warm(q)
    t0 = time.time()
    q.publish({"n": 1})
    q.publish({"n": 2})
    (fast,) = q._take_fast(1)
    q._next_expire_ms = 0                  # a lease-expiry pass is due: the Python path runs
    assert q._take_fast(1) is None
    (slow,) = q.receive(1, wait=0)
    assert type(fast) is type(slow) is fastq.Message
    for m, n, off in ((fast, 1, 1), (slow, 2, 2)):
        assert m.data == {"n": n} and m.body == b'{"n":%d}' % n
        assert m.id == off << 12 and m.key is None and m.headers == {}
        assert m.delivery_count == 1 and m.queue == "q" and not m.settled and m.last_error is None
        assert t0 - 1 <= m.published_at <= time.time() + 1
    q.ack_many([fast, slow])
    assert q.depth().in_flight == 0


def test_keys_headers_and_priorities_through_the_compiled_receive(broker):
    q = broker.queue("q", codec="raw")
    _warm(q)
    q.publish(b"plain", key=b"k1")
    q.publish(b"with-headers", key="k2", headers={"trace": b"t-1"})
    q.publish(b"urgent", priority=7)
    got = q.receive(10, wait=0)
    assert [(m.body, m.key, m.headers) for m in got] == [
        (b"urgent", None, {}), (b"plain", b"k1", {}), (b"with-headers", b"k2", {"trace": b"t-1"})]
    assert got[0].id & 0xF == 7
    q.ack_many(got)


def test_redelivery_counts_and_dead_letters_through_the_compiled_receive(broker):
    q = broker.queue("q", codec="raw", max_deliveries=2, dead_letter="dlq")
    _warm(q)
    q.publish(b"poison")
    for want in (1, 2):
        (m,) = q.receive(1, wait=1)
        assert (m.body, m.delivery_count) == (b"poison", want)
        m.nack()
    assert q.receive(1, wait=0.05) == []                  # the third delivery dead-letters it
    (d,) = broker.queue("dlq", codec="raw").receive(1, wait=1)
    assert d.body == b"poison" and d.headers["dlq-delivery-count"] == b"2"
    d.ack()


def test_ack_of_a_taken_over_lease_is_lease_lost(broker):
    q = broker.queue("q", codec="raw", visibility_timeout=0.05)
    _warm(q)
    q.publish(b"x")
    (first,) = q.receive(1, wait=1)
    time.sleep(0.08)
    (again,) = q.receive(1, wait=1)
    assert again.id == first.id and again.delivery_count == 2
    with pytest.raises(LeaseLost):
        first.ack()
    assert not first.settled
    again.ack()
    with pytest.raises(LeaseLost):
        again.ack()                                           # twice: settled already


def test_ack_many_with_a_foreign_message_acks_none(broker):
    q = broker.queue("q", codec="raw")
    other = broker.queue("other", codec="raw")
    _warm(q)
    _warm(other)
    q.publish(b"mine")
    other.publish(b"theirs")
    (mine,) = q.receive(1, wait=1)
    (theirs,) = other.receive(1, wait=1)
    with pytest.raises(InvalidArgument):
        q.ack_many([mine, theirs])
    assert not mine.settled and q.depth().in_flight == 1
    q.ack_many([mine])
    other.ack_many([theirs])


def test_compiled_publish_refuses_bad_input_like_the_python_path(broker):
    q = broker.queue("q", codec="raw")
    _warm(q)
    with pytest.raises(InvalidArgument):
        q.publish(b"x", priority=True)
    with pytest.raises(InvalidArgument):
        q.publish(b"x", priority=10)
    with pytest.raises(CodecError):
        q.publish("text")                                      # raw takes bytes-likes only
    assert q.publish(bytearray(b"ba")) == 1 << 12
    (m,) = q.receive(1, wait=1)
    assert m.body == b"ba"
    m.ack()
    q.close()
    for call in (lambda: q.publish(b"x"), lambda: q.receive(1, wait=0), m.ack):
        with pytest.raises(Closed):
            call()


def test_receive_waits_out_a_busy_lock_on_the_python_path(broker):
    """The compiled path never waits for the lock: held elsewhere, receive and ack go the
    Python way, which waits for it."""
    q = broker.queue("q", codec="raw")
    _warm(q)
    q.publish(b"x")
    st = q._state
    assert st.lock() is False                 # held as another process would hold it
    out = []
    t = threading.Thread(target=lambda: out.append(q.receive(1, wait=5)))
    try:
        t.start()
        time.sleep(0.1)
        assert out == [], "receive went past a held lock"
    finally:
        st.unlock()
    t.join(5)
    (got,) = out
    assert [m.body for m in got] == [b"x"]
    assert st.lock() is False
    acker = threading.Thread(target=got[0].ack)
    try:
        acker.start()
        time.sleep(0.05)
        assert not got[0].settled
    finally:
        st.unlock()
    acker.join(5)
    assert got[0].settled and q.depth().in_flight == 0


@pytest.mark.parametrize("mixed", [False, True], ids=["plain", "headers-and-new-lanes"])
def test_threads_share_a_handle_and_get_each_message_once(broker, mixed):
    """mixed: some messages carry headers (built by the Python Queue._message from inside
    the compiled receive, where another thread may run) and priorities open new lanes while
    the threads receive (the compiled path's lane lists change under them)."""
    q = broker.queue("q", codec="raw")
    n, per = 4, 5000
    seen = [[] for _ in range(n)]
    bad = []
    stop = threading.Event()

    def consume(i):
        while not stop.is_set():
            for m in q.receive(random.choice((1, 1, 7)), wait=0.01):
                h = m.headers
                if h and h.get("i") != m.body:
                    bad.append((m.body, h))
                seen[i].append(m.body)
                m.ack()

    ts = [threading.Thread(target=consume, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rnd = random.Random(seed)
    for i in range(n * per):
        if mixed and rnd.random() < 0.2:
            q.publish(b"%d" % i, headers={"i": b"%d" % i}, priority=min(9, i * 10 // (n * per)))
        else:
            q.publish(b"%d" % i)
    deadline = time.monotonic() + 30
    while sum(map(len, seen)) < n * per and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for t in ts:
        t.join(5)
    assert bad == []
    bodies = [b for s in seen for b in s]
    assert len(bodies) == n * per and len(set(bodies)) == n * per
    if not mixed:
        for s in seen:                                         # each thread's share in order
            assert [int(b) for b in s] == sorted(int(b) for b in s)
    assert q.depth() == (0, 0, 0, 0, 0.0)


def test_reader_follows_the_lane_across_segments_and_reclaims(broker):
    """Receive keeps one reader per lane that follows the log as it grows: through segment
    rolls, and while acked segments are deleted behind it."""
    q = broker.queue("q", codec="raw", segment_bytes=1 << 16)
    _warm(q)
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rnd = random.Random(seed)
    sent = got = 0
    while sent < 6000:
        for _ in range(rnd.randrange(1, 300)):
            q.publish(b"%08d" % sent + b"." * 92)
            sent += 1
        while got < sent - rnd.randrange(0, 50):
            ms = q.receive(rnd.choice((1, 100)), wait=0)
            assert [int(m.body[:8]) for m in ms] == list(range(got, got + len(ms)))
            if len(ms) == 1:
                ms[0].ack()
            else:
                q.ack_many(ms)
            got += len(ms)
        q.reclaim()
    ms = q.receive(1 << 20, wait=0)
    assert [int(m.body[:8]) for m in ms] == list(range(got, sent))
    q.ack_many(ms)
    q.reclaim()
    segs = [f for f in os.listdir(q._lanes[0].path) if f.endswith(".log")]
    assert len(segs) <= 2, f"acked segments were not reclaimed: {segs}"


def test_compiled_publish_many_ids_codecs_and_refusals(broker):
    q = broker.queue("q", codec="raw")
    _warm(q)
    assert q.publish_many([b"a", b"b"]) == [1 << 12, 2 << 12]
    assert q.publish_many([b"c", bytearray(b"d")]) == [3 << 12, 4 << 12]     # encoded one by one
    assert q.publish_many((x for x in [b"e"]), priority=2) == [(0 << 12) | 2]   # not a list: Python
    assert q.publish_many([]) == []
    with pytest.raises(CodecError):
        q.publish_many([b"ok", "text"])
    with pytest.raises(InvalidArgument):
        q.publish_many(b"bytes are not a list of messages")
    with pytest.raises(InvalidArgument):
        q.publish_many([b"x"], priority=-1)
    got = q.receive(10, wait=0)
    assert [m.body for m in got] == [b"e", b"a", b"b", b"c", b"d"]
    q.ack_many(got)
    j = broker.queue("j")                                   # json
    _warm(j)
    ids = j.publish_many([{"n": 1}, [2], "three"], priority=9)
    assert ids == [(o << 12) | 9 for o in range(3)]
    assert [m.data for m in j.receive(3, wait=0)] == [{"n": 1}, [2], "three"]
