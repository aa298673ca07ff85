"""``q.subscribe(handler, guarantee="exactly-once")`` in one process (issue 15): outputs and
ack together, a failed handler's outputs never visible, a redelivery of a committed
message acked without calling the handler, an open outcome transaction finished (its
writer fenced), a handler that lost its lease aborting, queue outputs once, bad use.
The kill -9 loop is tests/test_guarantees_kill.py."""
from __future__ import annotations

import asyncio
import errno
import threading
import time

import pytest

import fastq
import fastq.broker.transaction as txmod
from faultfs import os_fault
from guarantee_workers import drain_data, wait_idle
from fastq.queue.exactly_once import ExactlyOnceRunner, outcome_topic


@pytest.fixture
def broker(tmp_path):
    b = fastq.open(tmp_path / "b")
    yield b
    b.close()


def committed(b, topic="out"):
    return [bytes(r.value).decode() for r in b.topic(topic).read(0, isolation="read_committed")]


drain = drain_data


def run_until_empty(q, sub, timeout=10.0):
    wait_idle(q, timeout)
    sub.stop()
    assert sub.join(10)


def test_outputs_and_ack_together_failure_aborts(broker):
    broker.topic("out")
    nxt = broker.queue("next")
    q = broker.queue("jobs")
    q.publish_many([f"m{i}" for i in range(40)])
    calls = []

    def handler(m, tx):
        calls.append((m.data, m.delivery_count))
        tx.publish("out", m.data.encode(), partition=0)
        tx.enqueue("next", m.data + "-next")
        if m.data == "m7" and m.delivery_count == 1:
            raise ValueError("boom")

    sub = q.subscribe(handler, guarantee="exactly-once", backoff=0.0, concurrency=2)
    run_until_empty(q, sub)
    assert sorted(committed(broker)) == sorted(f"m{i}" for i in range(40))
    assert len([r for r in broker.topic("out").read(0)]) == 41          # the aborted one is in the log
    assert sorted(drain(nxt)) == sorted(f"m{i}-next" for i in range(40))  # not the failed attempt's
    assert ("m7", 2) in calls and sub.failed == 1 and sub.handled == 40
    assert isinstance(sub.errors[0], ValueError)


def test_a_batch_shares_a_transaction_and_a_failure_reruns_the_others_alone(broker):
    broker.topic("out")
    q = broker.queue("jobs")
    q.publish_many([f"m{i}" for i in range(24)])
    calls = []

    def handler(m, tx):
        calls.append((m.data, m.delivery_count))
        tx.publish("out", m.data.encode(), partition=0)
        if m.data == "m2" and m.delivery_count == 1:
            raise ValueError("boom")

    sub = q.subscribe(handler, guarantee="exactly-once", backoff=0.0, max_messages=8)
    run_until_empty(q, sub)
    assert sorted(committed(broker)) == sorted(f"m{i}" for i in range(24))
    assert sub.handled == 24 and sub.failed == 1
    assert ("m0", 1) in calls and calls.count(("m0", 1)) == 2      # ran again, alone, same delivery
    assert ("m2", 2) in calls
    outcomes = list(broker.topic(outcome_topic("jobs")).read(0, isolation="read_committed"))
    assert len(outcomes) <= 8 + 1 + 2                               # the later batches shared one each
    del outcomes


def _commit_without_ack(broker, q, data_out: str, commit: bool = True):
    """What a subscriber killed after its commit (or, ``commit=False``, before it) leaves."""
    m = q.receive(1)[0]
    runner = ExactlyOnceRunner(q)
    tp = runner.producer(0)
    tx = tp.begin()
    ctx = runner.context(tx, m)
    ctx.publish("out", data_out.encode(), partition=0)
    ctx.enqueue("next", data_out)
    runner.outcome([ctx], tp)
    if commit:
        tx.commit()
        runner.apply(m, ctx._out)            # and died before the ack
    return m, tp, tx


def test_redelivery_of_committed_message_is_acked_without_the_handler(broker):
    broker.topic("out")
    nxt = broker.queue("next")
    q = broker.queue("jobs", visibility_timeout=0.05)
    q.publish("a")
    _commit_without_ack(broker, q, "first")[1].close()
    calls = []

    def handler(m, tx):
        calls.append(m.data)
        tx.publish("out", b"second", partition=0)

    sub = q.subscribe(handler, guarantee="exactly-once")
    run_until_empty(q, sub)
    assert calls == [] and sub.skipped == 1
    assert committed(broker) == ["first"]
    assert drain(nxt) == ["first"]                    # applied twice, stored once (dedup id)


def test_open_outcome_transaction_is_finished_and_its_writer_fenced(broker):
    broker.topic("out")
    nxt = broker.queue("next")
    q = broker.queue("jobs", visibility_timeout=0.05)
    q.publish("a")
    m, tp, tx = _commit_without_ack(broker, q, "zombie", commit=False)   # hangs before its commit

    def handler(m, tx):
        tx.publish("out", b"live", partition=0)
        tx.enqueue("next", "live")

    sub = q.subscribe(handler, guarantee="exactly-once")
    run_until_empty(q, sub)
    with pytest.raises(fastq.ProducerFenced):
        tx.commit()                                   # the zombie wakes up: fenced
    tp.close()
    assert committed(broker) == ["live"]
    assert drain(nxt) == ["live"]
    assert broker.topic("out").last_stable_offset(0) == broker.topic("out").end_offsets()[0]


def test_handler_that_lost_its_lease_aborts(broker):
    broker.topic("out")
    q = broker.queue("jobs", visibility_timeout=0.1)
    q.publish("a")
    second_done = threading.Event()

    def handler(m, tx):
        tx.publish("out", f"{m.data}-{m.delivery_count}".encode(), partition=0)
        if m.delivery_count == 1:
            assert second_done.wait(10)               # hangs past its lease; the message moves on
        else:
            second_done.set()

    sub = q.subscribe(handler, guarantee="exactly-once", concurrency=2)
    run_until_empty(q, sub)
    sub.join(10)
    assert committed(broker) == ["a-2"]
    assert any(isinstance(e, fastq.LeaseLost) for e in sub.errors)


def test_async_handler_and_idempotency_key(broker):
    broker.topic("out")
    q = broker.queue("jobs")
    q.publish("a")
    keys = []

    async def handler(m, tx):
        keys.append((m.idempotency_key, tx.idempotency_key))
        tx.publish("out", b"x", partition=0)
        if m.delivery_count == 1:
            raise ValueError("again")

    sub = q.subscribe(handler, guarantee="exactly-once", backoff=0.0)
    run_until_empty(q, sub)
    assert committed(broker) == ["x"]
    assert len(keys) == 2 and len(set(keys)) == 1 and keys[0][0] == keys[0][1]
    assert keys[0][0].startswith("jobs:")


def test_bad_use(broker):
    broker.topic("out")
    broker.queue("short", dedup_window=1.0)
    q = broker.queue("jobs", visibility_timeout=30)
    q.publish_many(["ack-myself", "short-window"])

    def handler(m, tx):
        tx.publish("out", m.data.encode(), partition=0)
        if m.data == "ack-myself":
            m.ack()
        else:
            tx.enqueue("short", "x")

    sub = q.subscribe(handler, guarantee="exactly-once", backoff=30.0)
    t0 = time.monotonic()
    while len(sub.errors) < 2:
        assert time.monotonic() - t0 < 10
        time.sleep(0.01)
    sub.stop()
    sub.join(10)
    msgs = sorted(str(e) for e in sub.errors)
    assert all(isinstance(e, fastq.InvalidArgument) for e in sub.errors)
    assert "must not ack" in msgs[0] and "dedup_window=1.0" in msgs[1]
    assert committed(broker) == []
    assert broker.topic(outcome_topic("jobs")).end_offsets()[0] >= 0
    with pytest.raises(fastq.InvalidArgument):
        q.subscribe(lambda m, tx: None, guarantee="exactly_once")


def test_asyncio_face_refuses_exactly_once(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as b:
            aq = await b.queue("jobs")
            with pytest.raises(fastq.InvalidArgument, match="exactly-once"):
                aq.subscribe(lambda m: None, guarantee="exactly-once")
    asyncio.run(main())


# -- IdempotencyStore -----------------------------------------------------------------------

def test_idempotency_store_counts_only_committed_keys(tmp_path, broker):
    store = fastq.IdempotencyStore(broker, "done")
    assert "k1" not in store and len(store) == 0
    store.record("k1")
    with broker.transaction("t") as tx:
        store.record(b"k2", tx)
        assert not store.seen("k2")                   # open: not done yet
    with pytest.raises(RuntimeError):
        with broker.transaction("t") as tx:
            store.record("k3", tx)
            raise RuntimeError("aborted")
    store.record("k4")                                # after the aborted one: still read
    assert [store.seen(k) for k in ("k1", "k2", "k3", "k4")] == [True, True, False, True]
    with fastq.open(tmp_path / "b") as other:         # another handle (as another process)
        assert len(fastq.IdempotencyStore(other, "done")) == 3
    with store.once("k5") as first:
        assert first
    with store.once("k5") as first:
        assert not first
    with pytest.raises(ValueError):
        with store.once("k6") as first:
            raise ValueError("the work failed: not recorded")
    assert "k6" not in store and "k5" in store
    with pytest.raises(fastq.InvalidArgument):
        store.seen(6)


def test_idempotency_store_in_an_exactly_once_handler(broker):
    store = fastq.IdempotencyStore(broker, "charged")
    q = broker.queue("jobs")
    q.publish_many([{"order": "o1"}, {"order": "o2"}, {"order": "o1"}])   # o1 twice, as two messages
    charged = []

    def handler(m, tx):
        with store.once(m.data["order"], tx) as first:
            if first:
                charged.append(m.data["order"])

    sub = q.subscribe(handler, guarantee="exactly-once")
    run_until_empty(q, sub)
    assert charged == ["o1", "o2"] and len(store) == 2


# -- faults -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,err,after", [("pwrite", errno.ENOSPC, a) for a in range(6)]
                         + [("fdatasync", errno.EIO, a) for a in range(6)])
def test_state_file_fault_at_each_write_handles_each_message_once(tmp_path, name, err, after):
    """A full disk or a failed fdatasync at each write of the transaction state (the
    records of an added partition, the prepare record) while an exactly-once subscriber
    works: the attempt fails and the message comes back — rolled forward (a prepare
    record whose sync failed is in the file: acked without the handler) or aborted
    (handled again) — and the output holds every message once."""
    with fastq.open(tmp_path / "b", durability="group") as b:
        b.topic("out")
        q = b.queue("jobs")
        q.publish_many(["a", "b", "c"])
        calls = []

        def handler(m, tx):
            calls.append(m.data)
            tx.publish("out", m.data.encode(), partition=0)

        with os_fault(txmod, name, err, after=after) as hits:
            sub = q.subscribe(handler, guarantee="exactly-once", backoff=0.0)
            run_until_empty(q, sub)
        assert hits.hits == 1
        assert sorted(committed(b)) == ["a", "b", "c"]
        assert sub.failed == 1 and isinstance(sub.errors[0], fastq.StorageError)
        assert len(calls) + sub.skipped == 4                # the failed attempt ran again or was found done
