"""Message queues (fastq.queue): one process's view of every promise in docs/QUEUES.md —
delivery order, leases, nack/extend/reject, dead letters, delay, priority, dedup, depth,
purge, space reclaim, codecs, bad input, subscribe and the asyncio face. The kill -9 and
fault-injection proofs are tests/test_queue_multiprocess.py and tests/test_queue_faults.py."""
from __future__ import annotations

import asyncio
import os
import pickle
import threading
import time

import pytest

import fastq
from fastq.queue.queue import ACQUIRED, AVAILABLE


@pytest.fixture
def broker(tmp_path):
    b = fastq.open(tmp_path / "b")
    yield b
    b.close()


def drain(q, n=1 << 30, wait=0.0):
    out = []
    while len(out) < n:
        got = q.receive(min(100, n - len(out)), wait=wait)
        if not got:
            break
        out.extend(got)
    return out


# -- the basics -----------------------------------------------------------------------------

def test_publish_receive_ack_fifo(broker):
    q = broker.queue("jobs")
    ids = [q.publish({"n": i}) for i in range(50)]
    assert len(set(ids)) == 50
    got = drain(q)
    assert [m.data for m in got] == [{"n": i} for i in range(50)]
    assert [m.id for m in got] == ids
    assert all(m.delivery_count == 1 for m in got)
    assert q.depth().in_flight == 50
    for m in got:
        m.ack()
    d = q.depth()
    assert (d.ready, d.delayed, d.in_flight, d.dead) == (0, 0, 0, 0)
    assert q.receive(wait=0) == []


def test_get_or_create_and_stored_config_wins(broker, tmp_path):
    q = broker.queue("jobs", visibility_timeout=5, max_deliveries=3)
    assert broker.queue("jobs") is q
    assert broker.queues() == ["jobs"]
    broker.close()
    with fastq.open(tmp_path / "b") as b2:
        q2 = b2.queue("jobs", visibility_timeout=99, max_deliveries=7)
        assert q2.visibility_timeout == 5.0 and q2.max_deliveries == 3
        with pytest.raises(fastq.UnknownQueue):
            b2.queue("nope", create=False)


def test_message_fields(broker):
    q = broker.queue("jobs")
    t0 = time.time()
    mid = q.publish([1, 2], key="user-1", headers={"trace": "abc", "bin": b"\x00\x01"})
    (m,) = q.receive(wait=0)
    assert m.id == mid and m.data == [1, 2] and m.key == b"user-1"
    assert m.headers == {"trace": b"abc", "bin": b"\x00\x01"}
    assert t0 - 1 <= m.published_at <= time.time() + 1
    assert m.body == b"[1,2]" and m.queue == "jobs"
    m.ack()


def test_priority_higher_first_fifo_within(broker):
    q = broker.queue("jobs")
    for i in range(5):
        for prio in (0, 9, 3):
            q.publish((prio, i), priority=prio)
    got = [tuple(m.data) for m in drain(q)]
    assert got == [(9, i) for i in range(5)] + [(3, i) for i in range(5)] + [(0, i) for i in range(5)]


def test_receive_wait_returns_when_a_message_comes(broker):
    q = broker.queue("jobs")
    threading.Timer(0.1, q.publish, args=("late",)).start()
    t = time.monotonic()
    got = q.receive(wait=5)
    assert [m.data for m in got] == ["late"] and time.monotonic() - t < 4
    assert q.receive(wait=0.05) == []


def test_wait_none_blocks_until_a_message(broker):
    q = broker.queue("jobs")
    threading.Timer(0.1, q.publish, args=(1,)).start()
    assert [m.data for m in q.receive()] == [1]


# -- leases ---------------------------------------------------------------------------------

def test_lease_expiry_redelivers_and_old_lease_is_lost(broker):
    q = broker.queue("jobs", visibility_timeout=0.05)
    q.publish("x")
    (m1,) = q.receive(wait=0)
    assert q.receive(wait=0) == []                 # leased
    (m2,) = q.receive(wait=2)                      # the lease ran out
    assert m2.id == m1.id and m2.delivery_count == 2
    with pytest.raises(fastq.LeaseLost):
        m1.ack()                                   # the first lease is stale: nothing changes
    m2.ack()
    with pytest.raises(fastq.LeaseLost):
        m2.ack()                                   # settled already
    assert q.depth().in_flight == 0


def test_extend_keeps_the_lease(broker):
    q = broker.queue("jobs", visibility_timeout=0.1)
    q.publish("x")
    (m,) = q.receive(wait=0)
    m.extend(5)
    time.sleep(0.2)
    assert q.receive(wait=0.05) == []
    m.ack()


def test_nack_redelivers_at_once_and_with_delay(broker):
    q = broker.queue("jobs")
    q.publish("a")
    (m,) = q.receive(wait=0)
    m.nack()
    (m,) = q.receive(wait=0)
    assert m.delivery_count == 2
    m.nack(delay=0.2)
    assert q.receive(wait=0) == []
    (m,) = q.receive(wait=3)
    assert m.data == "a" and m.delivery_count == 3
    m.nack(delay=1.5, error=ValueError("boom"))    # a long delay moves it to the delayed lane
    assert q.depth().delayed == 1
    assert q.receive(wait=0.5) == []
    (m,) = q.receive(wait=5)
    assert m.data == "a" and m.delivery_count == 4 and m.last_error == "ValueError: boom"
    m.ack()
    assert q.depth()[:4] == (0, 0, 0, 0)


def test_close_hands_back_messages_in_flight(broker, tmp_path):
    q = broker.queue("jobs", visibility_timeout=60)
    q.publish("x")
    with fastq.open(tmp_path / "b") as other:
        oq = other.queue("jobs")
        (m,) = oq.receive(wait=0)
        assert q.receive(wait=0) == []
    (m2,) = q.receive(wait=1)                      # its handle closed: available at once
    assert m2.data == "x" and m2.delivery_count == 2
    m2.ack()


def test_ack_many_reports_stale_leases_after_acking_the_rest(broker):
    q = broker.queue("jobs", visibility_timeout=0.05)
    q.publish_many(list(range(4)))
    got = q.receive(4, wait=0)
    got[3].extend(30)
    time.sleep(0.1)
    again = q.receive(1, wait=1)                   # message 0 taken again
    assert again[0].data == 0
    # a lease that ran out is lost even when nobody took the message again (1 and 2)
    with pytest.raises(fastq.LeaseLost, match="3 message") as e:
        q.ack_many(got)
    assert "the other 1 were acked" in str(e.value)
    again[0].ack()
    rest = q.receive(10, wait=0)
    assert [m.data for m in rest] == [1, 2] and all(m.delivery_count == 2 for m in rest)
    q.ack_many(rest)
    assert q.depth()[:3] == (0, 0, 0)


# -- dead letters ---------------------------------------------------------------------------

def test_max_deliveries_dead_letters_with_headers_and_redrive(broker):
    q = broker.queue("jobs", max_deliveries=2, dead_letter="jobs.dlq", visibility_timeout=60)
    mid = q.publish({"job": 1}, headers={"trace": "t1"})
    for attempt in (1, 2):
        (m,) = q.receive(wait=0)
        assert m.delivery_count == attempt
        m.nack(error=RuntimeError(f"fail {attempt}"))
    assert q.receive(wait=0.3) == []               # a third delivery is a dead letter
    assert q.depth().dead == 1
    dlq = broker.queue("jobs.dlq")
    (d,) = dlq.receive(wait=0)
    assert d.data == {"job": 1}
    h = d.headers
    assert h["trace"] == b"t1" and h["dlq-source-queue"] == b"jobs"
    assert int(h["dlq-original-id"]) == mid and int(h["dlq-delivery-count"]) == 2
    assert b"RuntimeError: fail 2" in h["dlq-reason"]
    assert int(h["dlq-dead-lettered-ms"]) >= int(h["dlq-published-ms"])
    d.nack()
    assert dlq.redrive() == 1
    (m,) = q.receive(wait=0)
    assert m.data == {"job": 1} and m.headers == {"trace": b"t1"} and m.delivery_count == 1
    m.ack()
    assert dlq.depth()[:3] == (0, 0, 0)


def test_reject_dead_letters_at_once(broker):
    q = broker.queue("jobs", dead_letter="dead")
    q.publish("bad")
    (m,) = q.receive(wait=0)
    m.reject("malformed")
    (d,) = broker.queue("dead").receive(wait=0)
    assert d.data == "bad" and d.headers["dlq-reason"] == b"rejected: malformed"
    with pytest.raises(fastq.LeaseLost):
        m.ack()


def test_reject_without_dead_letter_queue_drops_and_counts(broker):
    q = broker.queue("jobs")
    q.publish("bad")
    (m,) = q.receive(wait=0)
    m.reject()
    assert q.depth()[:4] == (0, 0, 0, 1)
    assert broker.queues() == ["jobs"]


# -- delay, dedup -----------------------------------------------------------------------------

def test_delayed_messages_come_in_due_order(broker):
    q = broker.queue("jobs")
    q.publish("c", delay=0.3)
    t0 = time.monotonic()               # before "a" is published: its delay runs from then on
    q.publish("a", delay=0.1)
    q.publish("now")
    q.publish("b", delay=0.2, priority=4)
    assert q.depth()[:2] == (1, 3)
    assert [m.data for m in q.receive(10, wait=0)] == ["now"]
    seen = []
    while len(seen) < 3 and time.monotonic() - t0 < 5:
        for m in q.receive(10, wait=1):
            seen.append((m.data, time.monotonic() - t0))
            m.ack()
    assert [s[0] for s in seen] == ["a", "b", "c"]
    assert seen[0][1] >= 0.09                      # never early


def test_long_delay_has_no_cap(broker):
    q = broker.queue("jobs")
    q.publish("next year", delay=365 * 24 * 3600)
    assert q.depth().delayed == 1 and q.receive(wait=0) == []


def test_delayed_beyond_the_window_wait_and_come_later(broker):
    q = broker.queue("jobs", max_delayed=16)
    for i in range(40):
        q.publish(i, delay=0.05)
    assert q.depth().delayed == 40
    got = []
    t0 = time.monotonic()
    while len(got) < 40 and time.monotonic() - t0 < 10:
        ms = q.receive(100, wait=1)
        q.ack_many(ms)
        got.extend(m.data for m in ms)
    assert sorted(got) == list(range(40))


def test_dedup_returns_the_first_id_within_the_window(broker):
    q = broker.queue("jobs", dedup_window=0.2)
    a = q.publish("one", dedup_id="order-7")
    assert q.publish("two", dedup_id="order-7") == a
    assert q.publish("three", dedup_id=b"order-8") != a
    assert [m.data for m in drain(q)] == ["one", "three"]
    time.sleep(0.3)
    b = q.publish("four", dedup_id="order-7")      # the window passed
    assert b != a and [m.data for m in drain(q)] == ["four"]


# -- inspection and administration ------------------------------------------------------------

def test_depth_peek_purge(broker):
    q = broker.queue("jobs")
    q.publish_many(["a", "b", "c"])
    q.publish("z", priority=2)
    q.publish("d", delay=60)
    (m,) = q.receive(wait=0)
    assert m.data == "z"
    d = q.depth()
    assert (d.ready, d.delayed, d.in_flight, d.dead) == (3, 1, 1, 0) and d.oldest_age >= 0
    assert [p.data for p in q.peek(10)] == ["a", "b", "c"]
    with pytest.raises(fastq.LeaseLost):
        q.peek(1)[0].ack()
    assert q.purge() == 4
    assert q.depth()[:3] == (0, 0, 1)               # in flight stays with its consumer
    m.ack()
    assert q.receive(wait=0) == []


def test_delete_queue(broker):
    q = broker.queue("jobs")
    q.publish(1)
    broker.delete_queue("jobs")
    assert broker.queues() == [] and q.closed
    with pytest.raises(fastq.UnknownQueue):
        broker.delete_queue("jobs")
    assert broker.queue("jobs").receive(wait=0) == []


def test_space_is_reclaimed_after_acks(broker):
    q = broker.queue("jobs", codec="raw", segment_bytes=1 << 16)
    lane = os.path.join(broker.path, "queues", "jobs", "p0", "0")
    for _ in range(20):
        q.publish_many([b"x" * 1000] * 50)
    segs = lambda: len([f for f in os.listdir(lane) if f.endswith(".log")])  # noqa: E731
    before = segs()
    assert before > 5
    ms = drain(q)
    assert len(ms) == 1000
    q.ack_many(ms)
    assert q.reclaim() == before - 1
    assert segs() == 1
    q.publish(b"after")
    assert [m.body for m in q.receive(wait=0)] == [b"after"]


def test_partitions_spread_keys_and_deliver_all(broker):
    q = broker.queue("jobs", partitions=4)
    for i in range(100):
        q.publish(i, key=f"k{i % 10}")
    parts = {m.id >> 4 & 0xFF for m in q.peek(100)}
    assert len(parts) > 1
    got = drain(q)
    assert sorted(m.data for m in got) == list(range(100))
    by_key: dict = {}
    for m in got:
        by_key.setdefault(m.key, []).append(m.data)
    assert all(v == sorted(v) for v in by_key.values())   # one key: one partition, FIFO


# -- codecs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec,value", [
    ("json", {"a": [1, 2.5, None, True, "é"]}),
    ("msgpack", {"a": b"\x00bytes", "n": 1 << 40}),
    ("pickle", {1, 2, 3}),
    ("raw", b"\x00\xffraw"),
    ((pickle.dumps, pickle.loads), frozenset({"custom"})),
])
def test_codecs_round_trip(broker, codec, value):
    q = broker.queue("c", codec=codec)
    q.publish(value)
    (m,) = q.receive(wait=0)
    assert m.data == value
    m.ack()


def test_codec_errors_are_clear(broker):
    with pytest.raises(fastq.CodecError, match="raw"):
        broker.queue("r", codec="raw").publish("text")
    with pytest.raises(fastq.CodecError, match="json"):
        broker.queue("j").publish(object())
    with pytest.raises(fastq.InvalidArgument, match="codec"):
        broker.queue("x", codec="yaml")
    broker.queue("r", codec="raw").publish(b"\xff not json")
    (m,) = broker.queue("r").receive(wait=0)       # a json handle of the same queue
    with pytest.raises(fastq.CodecError, match="decode"):
        m.data
    assert m.body == b"\xff not json"
    m.reject("undecodable")


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda q: q.publish(1, priority=10),
    lambda q: q.publish(1, priority=-1),
    lambda q: q.publish(1, priority=True),
    lambda q: q.publish(1, delay=-1),
    lambda q: q.publish(1, delay=float("nan")),
    lambda q: q.publish(1, dedup_id=""),
    lambda q: q.publish(1, dedup_id=5),
    lambda q: q.publish(1, headers={"fq-id": b"x"}),
    lambda q: q.publish(1, headers={"a": 5}),
    lambda q: q.publish(1, headers=5),
    lambda q: q.publish_many("abc"),
    lambda q: q.receive(0),
    lambda q: q.receive(1, wait=-1),
    lambda q: q.receive("1"),
])
def test_bad_input_is_invalid_argument(broker, call):
    q = broker.queue("jobs")
    with pytest.raises(fastq.InvalidArgument):
        call(q)
    assert q.depth()[:3] == (0, 0, 0)              # and nothing was stored


@pytest.mark.parametrize("opts", [
    {"visibility_timeout": 0}, {"max_deliveries": 0}, {"max_in_flight": 100}, {"max_delayed": 8},
    {"partitions": 0}, {"partitions": 300}, {"dead_letter": "a/b"}, {"bogus": 1}, {"durability": "never"},
])
def test_bad_queue_options(broker, opts):
    with pytest.raises(fastq.InvalidArgument):
        broker.queue("jobs", **opts)
    assert broker.queues() == []


def test_bad_queue_name(broker):
    with pytest.raises(fastq.InvalidName):
        broker.queue("../x")


def test_message_from_another_handle_is_refused(broker):
    q = broker.queue("a")
    q2 = broker.queue("b")
    q.publish(1)
    (m,) = q.receive(wait=0)
    with pytest.raises(fastq.InvalidArgument):
        q2.ack_many([m])
    m.ack()


def test_closed_queue_raises_closed(broker):
    q = broker.queue("jobs")
    q.close()
    with pytest.raises(fastq.Closed):
        q.publish(1)
    with pytest.raises(fastq.Closed):
        q.receive(wait=0)


# -- subscribe, iteration ------------------------------------------------------------------------

def test_subscribe_at_least_once_retries_failures(broker):
    q = broker.queue("jobs", max_deliveries=3, dead_letter="dlq")
    q.publish_many(list(range(20)))
    seen = []
    lock = threading.Lock()

    def handler(m):
        with lock:
            seen.append(m.data)
        if m.data == 7 and m.delivery_count < 2:
            raise ValueError("flaky")
        if m.data == 13:
            raise ValueError("always")

    with q.subscribe(handler, concurrency=4) as sub:
        t0 = time.monotonic()
        while (sub.handled < 19 or broker.queue("dlq").depth().ready < 1) and time.monotonic() - t0 < 10:
            time.sleep(0.02)
    assert sub.handled == 19 and sub.failed == 4    # 7 once, 13 three times
    assert seen.count(7) == 2 and seen.count(13) == 3
    assert sorted(set(seen)) == list(range(20))
    assert q.depth()[:3] == (0, 0, 0)


def test_subscribe_at_most_once_acks_first(broker):
    q = broker.queue("jobs")
    q.publish_many([1, 2, 3])

    def handler(m):
        raise RuntimeError("lost on purpose")

    sub = q.subscribe(handler, guarantee="at-most-once")
    t0 = time.monotonic()
    while sub.failed < 3 and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    sub.stop()
    assert sub.join(5)
    assert sub.failed == 3 and q.depth()[:3] == (0, 0, 0)


def test_subscribe_bad_arguments(broker):
    q = broker.queue("jobs")
    with pytest.raises(fastq.InvalidArgument):
        q.subscribe(print, guarantee="exactly-once-please")
    with pytest.raises(fastq.InvalidArgument):
        q.subscribe(print, concurrency=0)
    with pytest.raises(fastq.InvalidArgument):
        q.subscribe(print, backoff=-1)


def test_subscribe_runs_coroutine_handlers_in_its_threads(broker):
    q = broker.queue("jobs")
    q.publish_many(list(range(6)))
    seen = []

    async def handler(m):
        await asyncio.sleep(0.001)
        seen.append(m.data)
    with q.subscribe(handler, concurrency=2) as sub:
        t0 = time.monotonic()
        while sub.handled < 6 and time.monotonic() - t0 < 5:
            time.sleep(0.01)
    assert sorted(seen) == list(range(6)) and q.depth()[:3] == (0, 0, 0)


def test_subscribe_backs_off_failures_with_the_given_delays(broker):
    q = broker.queue("jobs")
    q.publish("x")
    times = []

    def handler(m):
        times.append(time.monotonic())
        if m.delivery_count < 3:
            raise ValueError("not yet")
    asked = []

    def backoff(n):
        asked.append(n)
        return 0.2 * n
    with q.subscribe(handler, backoff=backoff) as sub:
        t0 = time.monotonic()
        while sub.handled < 1 and time.monotonic() - t0 < 10:
            time.sleep(0.01)
    assert asked == [1, 2] and len(times) == 3
    assert times[1] - times[0] >= 0.19 and times[2] - times[1] >= 0.39


def test_exponential_backoff_has_full_jitter_under_a_cap():
    import random

    from fastq.queue.subscription import exponential_backoff
    f = exponential_backoff(0.1, 5.0, random.Random(7))
    for n in range(1, 40):
        ds = [f(n) for _ in range(50)]
        assert all(0 <= d <= min(5.0, 0.1 * 2 ** (n - 1)) for d in ds)
        assert len(set(ds)) > 40                    # jittered, not one value


def test_ordered_queue_delivers_a_key_one_at_a_time_in_order(broker):
    q = broker.queue("orders", ordered=True, partitions=2, visibility_timeout=60)
    for i in range(6):
        q.publish(("a", i), key="a")
    p_a = q.peek(1)[0].id >> 4 & 0xFF
    k = next(k for k in (f"k{i}" for i in range(100)) if zlib_part(k, 2) != p_a)
    q.publish((k, 0), key=k)
    got = q.receive(10, wait=0)                     # one per partition in flight
    assert sorted(tuple(m.data) for m in got) == sorted([("a", 0), (k, 0)])
    ma = next(m for m in got if m.data[0] == "a")
    assert q.receive(10, wait=0) == []
    ma.nack(delay=0.2, error="retry")               # stays at the head: nothing overtakes it
    assert q.receive(10, wait=0.1) == []
    (again,) = q.receive(1, wait=2)
    assert again.data == ["a", 0] and again.delivery_count == 2
    again.ack()
    order = []
    for _ in range(5):
        (m,) = q.receive(1, wait=0)
        order.append(m.data[1])
        assert q.receive(1, wait=0) == []
        m.ack()
    assert order == [1, 2, 3, 4, 5]


def zlib_part(key: str, n: int) -> int:
    import zlib
    return zlib.crc32(key.encode()) % n


def test_messages_iterates_until_wait_passes(broker):
    q = broker.queue("jobs")
    q.publish_many(["a", "b"])
    out = []
    for m in q.messages(wait=0.05):
        out.append(m.data)
        m.ack()
    assert out == ["a", "b"]


# -- slots in queue.state -----------------------------------------------------------------------

def test_state_records_the_lease(broker):
    q = broker.queue("jobs")
    q.publish(1)
    (m,) = q.receive(wait=0)
    st = q._state
    assert st.slot(m._lane, m._offset)[0] == ACQUIRED
    m.nack(0.5)
    assert st.slot(m._lane, m._offset)[0] == AVAILABLE
    assert st.slot(m._lane, m._offset)[3] > time.time() * 1000


# -- fork ---------------------------------------------------------------------------------------

def test_fork_child_gets_used_after_fork(broker, tmp_path):
    q = broker.queue("jobs")
    q.publish(1)
    (m,) = q.receive(wait=0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # pragma: no cover - child
        code = 1
        try:
            try:
                q.receive(wait=0)
            except fastq.UsedAfterFork:
                code = 0
            try:
                m.ack()
                code = 1
            except fastq.UsedAfterFork:
                pass
            with fastq.open(tmp_path / "b") as b2:
                if b2.queue("jobs").receive(wait=0):
                    code = 1                        # the parent's message stays the parent's
        finally:
            os.write(w, bytes([code]))
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"\x00"
    os.waitpid(pid, 0)
    os.close(r)
    m.ack()


# -- asyncio ------------------------------------------------------------------------------------

def test_async_publish_receive_ack(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as ab:
            q = await ab.queue("jobs")
            await q.publish({"a": 1})
            await q.publish({"a": 2}, delay=0.05)
            (m,) = await q.receive(wait=1)
            assert m.data == {"a": 1}
            await m.ack()
            (m,) = await q.receive(wait=2)
            assert m.data == {"a": 2}
            await m.nack()
            got = []
            async for m in q.messages(wait=0.05):
                got.append(m.data)
                await m.ack()
            assert got == [{"a": 2}]
            assert (await q.depth())[:3] == (0, 0, 0)
    asyncio.run(main())


def test_async_cancelled_receive_consumes_nothing(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as ab:
            q = await ab.queue("jobs", visibility_timeout=60)
            task = asyncio.ensure_future(q.receive(wait=5))
            await asyncio.sleep(0.05)
            await q.publish("x")                   # the worker thread may lease it...
            task.cancel()                          # ...as the await is cancelled
            with pytest.raises(asyncio.CancelledError):
                await task
            (m,) = await q.receive(wait=2)         # ...and it is handed back, not lost
            assert m.data == "x"
            await m.ack()
    asyncio.run(main())


def test_async_subscribe_runs_coroutine_handlers(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as ab:
            q = await ab.queue("jobs")
            await q.publish_many(list(range(10)))
            seen = []

            async def handler(m):
                await asyncio.sleep(0.001)
                seen.append(m.data)
            async with q.subscribe(handler, concurrency=3) as sub:
                for _ in range(500):
                    if len(seen) == 10:
                        break
                    await asyncio.sleep(0.01)
            assert sorted(seen) == list(range(10)) and sub.handled == 10
            assert (await q.depth())[:3] == (0, 0, 0)
    asyncio.run(main())


# -- the backend seam -----------------------------------------------------------------------------

class _ListMessage:
    """A message of the in-memory backend below."""

    def __init__(self, owner, data, count):
        self.owner, self.id, self.key, self.body, self.delivery_count = owner, id(self), None, b"", count
        self.data, self.headers, self.settled = data, {}, False

    def ack(self):
        self.settled = True
        self.owner.acked.append(self.data)

    def nack(self, delay=0.0, *, error=None):
        self.settled = True
        self.owner.items.append((self.data, self.delivery_count))

    def extend(self, seconds):
        pass

    def reject(self, reason=None):
        self.settled = True


class _ListBackend:
    """The smallest other backend: a list, one process."""

    name = "list"

    def __init__(self):
        self.items, self.acked, self.closed = [], [], False

    def publish(self, data, **options):
        self.items.append((data, 0))

    def publish_many(self, items, **options):
        return [self.publish(d) for d in items]

    def receive(self, max_messages=1, wait=None):
        if not self.items:
            time.sleep(0.001)
            return []
        data, count = self.items.pop(0)
        return [_ListMessage(self, data, count + 1)]

    def ack_many(self, messages):
        for m in messages:
            m.ack()

    def depth(self):
        return (len(self.items), 0, 0, 0, 0.0)

    def close(self):
        self.closed = True


def test_subscribe_drives_any_backend_of_the_seam(broker):
    from fastq.queue import LeasedMessage, QueueBackend, Subscription
    assert isinstance(broker.queue("jobs"), QueueBackend)
    broker.queue("jobs").publish(1)
    assert isinstance(broker.queue("jobs").receive(wait=0)[0], LeasedMessage)
    other = _ListBackend()
    assert isinstance(other, QueueBackend)
    other.publish_many([1, 2, 3])

    def handler(m):
        if m.data == 2 and m.delivery_count == 1:
            raise ValueError("once")
    sub = Subscription(other, handler, concurrency=1, guarantee="at-least-once", max_messages=1, backoff=0)
    t0 = time.monotonic()
    while sub.handled < 3 and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    sub.stop()
    sub.join()
    assert sorted(other.acked) == [1, 2, 3] and sub.failed == 1


# -- dedup across handles, processes and restarts ----------------------------------------------------

def _publish_dedup(path, out):
    with fastq.open(path) as b:
        out.put(b.queue("jobs").publish("from child", dedup_id="once"))


def test_dedup_holds_across_processes_and_restarts(tmp_path):
    import multiprocessing as mp
    path = tmp_path / "b"
    with fastq.open(path) as b:
        first = b.queue("jobs").publish("first", dedup_id="once")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_publish_dedup, args=(str(path), out))
    p.start()
    assert out.get(timeout=60) == first
    p.join(60)
    with fastq.open(path) as b:                      # a restart: the table is in queue.state
        q = b.queue("jobs")
        assert q.publish("again", dedup_id="once") == first
        assert [m.data for m in drain(q)] == ["first"]
