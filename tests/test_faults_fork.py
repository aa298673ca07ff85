"""fork(): a child that inherits an open broker, topic, log, producer or consumer.

The rule (docs/ARCHITECTURE.md, "fork"): everything a process opened belongs to it. In a
forked child the inherited objects are abandoned at the fork: their mappings and
descriptors are the child's copies and are released there without touching anything the
parent holds (the shared flocks, the state's clean flag, the writer lock); ``close()`` in
the child returns at once; any other use raises :class:`fastq.errors.UsedAfterFork`.
Each child runs with a hard timeout (``wait_child`` kills it) and leaves with os._exit.
"""
import multiprocessing as mp
import os
import threading

import pytest

import fastq
from fastq.errors import Closed, FastqError, UsedAfterFork
from fastq.log import Log
from logutil import fork_child, wait_child

CTX = mp.get_context("fork")


def _in_child(body, timeout=20.0) -> None:
    """Run body() in a forked child; fail if it raised or hung."""
    assert wait_child(fork_child(body), timeout) == 0


def _third_process_publishes(path: str, value: bytes) -> None:
    with fastq.open(path) as b:
        b.topic("t").publish(value, partition=0)


def _publish_from_fresh_process(path: str, value: bytes, timeout: float = 20.0) -> None:
    """Another process (multiprocessing "fork": it inherits this one's objects and
    must ignore them) opens the broker anew and publishes; it must not block."""
    p = CTX.Process(target=_third_process_publishes, args=(path, value))
    p.start()
    p.join(timeout)
    if p.exitcode is None:
        p.kill()
        p.join()
        raise AssertionError(f"a third process's publish blocked for {timeout} s")
    assert p.exitcode == 0


def _values(path: str, partitions: int = 1) -> list:
    with fastq.open(path) as b:
        t = b.topic("t")
        out = []
        for p in range(partitions):
            out += [bytes(r.value) for r in t.read(p)]
        return out


def test_fork_child_close_does_not_hang_mark_clean_or_lock_out_others(tmp_path):
    path = str(tmp_path / "b")
    b = fastq.open(path)
    t = b.topic("t", partitions=1)
    acked = [b"a%d" % i for i in range(200)]
    for v in acked:
        t.publish(v)
    lg = t.log(0)

    _in_child(b.close)                      # the child closes what it inherited
    assert lg._flags & 1 == 0                # not marked clean: the parent still has it open
    for i in range(200, 400):                # the parent keeps writing
        v = b"a%d" % i
        t.publish(v)
        acked.append(v)
    _publish_from_fresh_process(path, b"third")   # the shared flock is still shared
    acked.append(b"third")
    for i in range(400, 450):
        v = b"a%d" % i
        t.publish(v)
        acked.append(v)
    b.close()
    assert sorted(_values(path)) == sorted(acked)


def test_fork_twice_children_close_and_a_third_process_still_publishes(tmp_path):
    path = str(tmp_path / "b")
    b = fastq.open(path)
    t = b.topic("t", partitions=1)
    acked = []
    for round_ in range(2):                  # "with a later fork": two children in turn
        for i in range(100):
            v = b"r%d-%d" % (round_, i)
            t.publish(v)
            acked.append(v)
        _in_child(b.close)
        _publish_from_fresh_process(path, b"third%d" % round_)
        acked.append(b"third%d" % round_)
    b.close()
    assert sorted(_values(path)) == sorted(acked)


def test_fork_while_producer_thread_and_pretoucher_run_child_close_is_safe(tmp_path):
    path = str(tmp_path / "b")
    b = fastq.open(path)
    t = b.topic("t", partitions=2, segment_bytes=1 << 20)
    acked = []
    lock = threading.Lock()

    def on_delivery(meta):
        with lock:
            acked.append((meta.partition, meta.offset))

    prod = t.producer(linger_ms=1, on_delivery=on_delivery)
    stop = threading.Event()

    def writer():                            # keeps the linger thread and the pretoucher busy
        i = 0
        while not stop.is_set():
            prod.send(b"x" * 200 + b"%d" % i)
            i += 1

    th = threading.Thread(target=writer)
    th.start()
    try:
        for _ in range(3):                   # fork in the middle of appends, prefaults, rolls
            _in_child(b.close)
            _publish_from_fresh_process(path, b"third")
    finally:
        stop.set()
        th.join()
    prod.flush()
    prod.close()
    b.close()
    with fastq.open(path) as b2:
        t2 = b2.topic("t")
        present = {(p, r.offset) for p in range(2) for r in t2.read(p)}
    with lock:
        assert acked and set(acked) <= present


def test_fork_with_consumer_in_group_child_close_keeps_parent_working(tmp_path):
    path = str(tmp_path / "b")
    b = fastq.open(path)
    t = b.topic("t", partitions=2)
    for i in range(20):
        t.publish(b"%d" % i, partition=i % 2)
    c = t.consumer("g")
    got = c.poll(100, timeout=5)
    assert len(got) == 20
    del got

    def child():
        c.close()                            # an inherited consumer: closes nothing shared
        b.close()

    _in_child(child)
    assert c.assignment() == [0, 1]
    t.publish(b"after", partition=0)
    got = c.poll(10, timeout=5)
    assert [bytes(r.value) for r in got] == [b"after"]
    del got
    c.commit()
    c.close()
    _publish_from_fresh_process(path, b"third")
    b.close()
    assert sorted(_values(path, 2)) == sorted([b"%d" % i for i in range(20)] + [b"after", b"third"])


def test_fork_child_use_of_inherited_objects_raises_used_after_fork(tmp_path):
    path = str(tmp_path / "b")
    b = fastq.open(path)
    t = b.topic("t", partitions=2)
    t.publish(b"x", partition=0)              # partition 0 open, partition 1 not yet
    prod = t.producer(linger_ms=1000)
    prod.send(b"pending-in-parent", partition=0)
    c = t.consumer("g")
    lg = Log(str(tmp_path / "bare"))
    lg.append(b"y")

    def child():
        calls = {
            "broker.topic": lambda: b.topic("t"),
            "broker.topics": b.topics,
            "topic.publish": lambda: t.publish(b"z", partition=0),
            "topic.publish unopened partition": lambda: t.publish(b"z", partition=1),
            "topic.publish_many": lambda: t.publish_many([b"z"], partition=0),
            "topic.read": lambda: list(t.read(0)),
            "topic.end_offsets": t.end_offsets,
            "topic.producer": lambda: t.producer(),
            "producer.send": lambda: prod.send(b"z"),
            "producer.flush": prod.flush,
            "consumer.poll": lambda: c.poll(timeout=0),
            "log.append": lambda: lg.append(b"z"),
            "log.read": lambda: list(lg.read(0)),
            "log.end_offset": lambda: lg.end_offset,
        }
        for what, call in calls.items():
            try:
                call()
            except UsedAfterFork as e:
                assert "fork" in str(e) and "child" in str(e), (what, str(e))
                assert isinstance(e, FastqError) and isinstance(e, Closed)
            else:
                raise AssertionError(f"{what} worked on an object inherited across fork()")
        for obj in (prod, c, lg, b):         # close in the child: quiet, idempotent
            obj.close()
            obj.close()

    _in_child(child)
    # the parent is untouched: its producer still holds the record, its logs still work
    assert prod.pending == 1
    prod.flush()
    assert [bytes(r.value) for r in t.read(0)] == [b"x", b"pending-in-parent"]
    assert lg.append(b"w") == 1
    prod.close()
    c.close()
    lg.close()
    b.close()


def test_fork_child_opens_its_own_broker_and_publishes(tmp_path):
    path = str(tmp_path / "b")
    b = fastq.open(path)
    t = b.topic("t", partitions=1)
    t.publish(b"parent")

    def child():
        with fastq.open(path) as b2:          # the rule: open a new one in the child
            b2.topic("t").publish(b"child")

    _in_child(child)
    t.publish(b"parent2")
    b.close()
    assert sorted(_values(path)) == [b"child", b"parent", b"parent2"]


def test_fork_memory_topic_child_close_keeps_parent_ring(tmp_path):
    path = str(tmp_path / "b")
    b = fastq.open(path)
    t = b.topic("m", storage="memory", capacity_bytes=1 << 16)
    t.publish(b"one")

    def child():
        with pytest.raises(UsedAfterFork):
            t.publish(b"child")
        b.close()                            # must not unlink the ring the parent uses

    _in_child(child)
    t.publish(b"two")
    with fastq.open(path) as b2:             # another opener attaches to the same ring
        c = b2.topic("m").consumer()
        got = [bytes(r.value) for r in c.poll(10, timeout=5)]
        c.close()
    assert got == [b"one", b"two"]
    b.close()


def test_fork_child_use_of_an_inherited_async_consumer_raises_instead_of_hanging(tmp_path):
    """The async consumer's worker thread does not exist in a forked child: a call must
    raise UsedAfterFork at once, not wait forever for that thread."""
    import asyncio

    path = str(tmp_path / "b")

    async def parent_side():
        ab = await fastq.open_async(path)
        at = await ab.topic("t", partitions=1)
        await at.publish(b"x")
        ac = await at.consumer()
        assert [bytes(r.value) for r in await ac.poll(10, timeout=1)] == [b"x"]
        return ab, ac

    ab, ac = asyncio.run(parent_side())

    def child():
        async def use():
            with pytest.raises(UsedAfterFork):
                await ac.poll(10, timeout=1)
            with pytest.raises(UsedAfterFork):
                await ac.commit()
        asyncio.run(use())

    _in_child(child, timeout=10.0)

    async def parent_close():
        await ac.close()
        await ab.close()

    asyncio.run(parent_close())
