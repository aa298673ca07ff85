"""Transactions (issue 15): broker.transaction(id), COMMIT/ABORT markers, the state file,
read_committed readers (aborted transactions skipped, the last stable offset), fencing,
timeouts, bad input, and kafka-python reading our transactional batches and markers
straight from a segment file."""
import os
import warnings

import pytest

import fastq
from fastq.broker import transaction as txmod

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record import MemoryRecords


@pytest.fixture
def broker(tmp_path):
    b = fastq.open(str(tmp_path / "b"))
    b.topic("t", partitions=2)
    b.topic("u", partitions=1)
    yield b
    b.close()


def values(t, p, iso="read_committed"):
    return [bytes(r.value) for r in t.read(p, isolation=iso)]


def test_commit_and_abort_as_a_context_manager(broker):
    t = broker.topic("t")
    with broker.transaction("tx") as tx:
        m = tx.publish("t", b"a", partition=0)
        bm = tx.publish_many(t, [b"b", b"c"], partition=1)
        tx.publish("u", b"d")
    assert (m.partition, m.offset, bm.partition, bm.base_offset, bm.count) == (0, 0, 1, 0, 2)
    assert tx.state == "committed"
    with pytest.raises(ZeroDivisionError):
        with broker.transaction("tx") as tx2:
            tx2.publish("t", b"x", partition=0)
            1 / 0
    assert tx2.state == "aborted"
    assert values(t, 0) == [b"a"] and values(t, 1) == [b"b", b"c"]
    assert values(broker.topic("u"), 0) == [b"d"]
    assert values(t, 0, "read_uncommitted") == [b"a", b"x"]      # Kafka's default sees it
    # markers: offsets 1 (commit) and 3 (abort) on partition 0, never returned as records
    assert [r.offset for r in t.read(0)] == [0, 2]
    assert t.log(0).end_offset == 4


def test_explicit_commit_abort_and_the_last_stable_offset(broker):
    t = broker.topic("t")
    t.publish(b"p0", partition=0)
    tx = broker.transaction("tx")
    tx.publish("t", b"open", partition=0)
    t.publish(b"p1", partition=0)            # after the open transaction: held back too
    assert t.last_stable_offset(0) == 1
    assert values(t, 0) == [b"p0"]
    assert values(t, 0, "read_uncommitted") == [b"p0", b"open", b"p1"]
    tx.abort()
    assert t.last_stable_offset(0) == t.log(0).end_offset == 4
    assert values(t, 0) == [b"p0", b"p1"]
    tx = broker.transaction("tx")
    tx.publish("t", b"c", partition=0)
    tx.commit()
    assert values(t, 0) == [b"p0", b"p1", b"c"]
    assert list(t.read(0, 2, end=3, isolation="read_committed")) != []     # p1, offset 2
    assert [r.offset for r in t.read(0, 3, isolation="read_committed")] == [4]


def test_another_producers_records_inside_an_aborted_range_stay(broker):
    t = broker.topic("t")
    a = broker.transaction("a")
    c = broker.transaction("c")
    a.publish("t", b"a1", partition=0)
    c.publish("t", b"c1", partition=0)
    a.publish("t", b"a2", partition=0)
    c.publish("t", b"c2", partition=0)
    assert values(t, 0) == []                # LSO: a's first record
    a.abort()
    assert values(t, 0) == []                # c still open, began at offset 1
    c.commit()
    assert values(t, 0) == [b"c1", b"c2"]


def test_bad_input_is_a_clear_error(broker):
    tx = broker.transaction("tx")
    with pytest.raises(fastq.TransactionStateError, match="do not nest"):
        broker.transaction("tx")
    with pytest.raises(fastq.UnknownTopic):
        tx.publish("nope", b"x")
    with pytest.raises(fastq.InvalidArgument):
        tx.publish("t", b"x", partition=7)
    tx.commit()
    for call in (lambda: tx.publish("t", b"x"), lambda: tx.publish_many("t", [b"x"]), tx.commit, tx.abort):
        with pytest.raises(fastq.TransactionStateError, match="is committed"):
            call()
    with pytest.raises(fastq.InvalidName):
        broker.transaction("../x")
    with pytest.raises(fastq.InvalidArgument):
        broker.topic("t").read(0, isolation="serializable")
    with pytest.raises(fastq.InvalidArgument):
        broker.transaction("tx2", timeout_ms=0)
    assert values(broker.topic("t"), 0) == []   # nothing published by the failed calls


def test_a_reopened_transactional_id_fences_and_aborts_the_old_one(tmp_path, broker):
    t = broker.topic("t")
    old = broker.transaction("f")
    old.publish("t", b"old", partition=0)
    with fastq.open(broker.path) as b2:      # another instance (as another process would)
        new = b2.transaction("f")           # fences `old` and aborts its transaction
        assert values(b2.topic("t"), 0) == []
        assert b2.topic("t").last_stable_offset(0) == b2.topic("t").log(0).end_offset
        with pytest.raises(fastq.ProducerFenced):
            old.publish("t", b"more", partition=0)
        new.publish("t", b"new", partition=0)
        new.commit()
    with pytest.raises(fastq.ProducerFenced):
        old.commit()
    assert values(t, 0) == [b"new"]


def test_expired_transactions_are_aborted_by_whoever_reads(broker):
    t = broker.topic("t")
    with fastq.open(broker.path) as b2:
        dead = b2.transaction("slow", timeout_ms=50)
        dead.publish("t", b"never", partition=0)
        b2._txns.clear()                     # as if its process died: nobody closes it
        dead._owner._state.close()
    assert broker.abort_expired_transactions(now_ms=0) == []        # not expired yet at time 0
    import time
    time.sleep(0.15)                         # past 2 x timeout_ms
    t.publish(b"after", partition=0)
    assert values(t, 0) == [b"after"]        # the read found it held back and aborted it
    assert txmod.read_state(os.path.join(broker.path, "producers", "slow.txn"))[1]["state"] == "complete_abort"


def test_prepared_commit_is_rolled_forward_at_the_next_open(broker):
    t = broker.topic("t")
    tx = broker.transaction("rf")
    tx.publish("t", b"x", partition=0)
    tx.publish("t", b"y", partition=1)

    def crash(step):
        if step == "marker":
            raise KeyboardInterrupt("crash after the first marker")
    tx._owner._hook = crash
    with pytest.raises(KeyboardInterrupt):
        tx.commit()
    assert values(t, 0) == [b"x"] and values(t, 1) == []       # partition 1 has no marker yet
    with pytest.raises(fastq.Closed):
        tx._owner.begin()                    # the failed instance is done
    broker.transaction("rf").abort()         # the reopen finishes the commit
    assert values(t, 0) == [b"x"] and values(t, 1) == [b"y"]


def test_state_file_slots_survive_one_damaged_slot(tmp_path, broker):
    path = os.path.join(broker.path, "producers", "s.txn")
    with broker.transaction("s") as tx:
        tx.publish("t", b"x", partition=0)
        tx.publish("t", b"y", partition=1)
    seq, st = txmod.read_state(path)
    # two partitions: the prepare record; the complete one is written lazily
    assert st["state"] == "prepare_commit" and st["partitions"] == [["t", 0], ["t", 1]]
    broker.close()                               # close writes the complete record
    seq, st = txmod.read_state(path)
    assert st["state"] == "complete_commit"
    with open(path, "r+b") as f:                 # tear the current slot
        f.seek((seq % 2) * txmod.SLOT_SIZE + 30)
        f.write(b"\xff")
    seq2, st2 = txmod.read_state(path)
    assert seq2 == seq - 1 and st2["state"] == "prepare_commit"
    with fastq.open(broker.path) as b:           # finds both markers written: nothing to add
        end = b.topic("t").log(0).end_offset
        b.transaction("s").abort()
        assert b.topic("t").log(0).end_offset == end
        assert values(b.topic("t"), 0) == [b"x"] and values(b.topic("t"), 1) == [b"y"]
    assert txmod.read_state(path)[1]["state"] == "complete_commit"
    with open(path, "r+b") as f:
        f.write(b"\x00" * 64)
        f.seek(txmod.SLOT_SIZE)
        f.write(b"\x00" * 64)
    with pytest.raises(fastq.CorruptRecord):
        txmod.read_state(path)


def test_kafka_python_reads_our_transactional_batches_and_markers(broker):
    t = broker.topic("u")
    with broker.transaction("k") as tx:
        tx.publish_many("u", [b"v0", b"v1"])
    with pytest.raises(RuntimeError):
        with broker.transaction("k") as tx:
            tx.publish("u", b"gone")
            raise RuntimeError
    broker.close()
    seg = os.path.join(broker.path, "topics", "u", "0", "00000000000000000000.log")
    with open(seg, "rb") as f:
        data = f.read()
    end = 0
    while end + 12 <= len(data) and int.from_bytes(data[end + 8:end + 12], "big") > 0:
        end += 12 + int.from_bytes(data[end + 8:end + 12], "big")     # the file is preallocated
    recs = MemoryRecords(data[:end])
    got = []
    while recs.has_next():
        b = recs.next_batch()
        assert b.validate_crc()
        items = list(b)
        got.append((b.base_offset, b.is_transactional, b.is_control_batch, b.producer_epoch >= 1,
                    [(getattr(r, "type", None), r.offset) if b.is_control_batch else (bytes(r.value), r.offset)
                     for r in items]))
    assert got == [(0, True, False, True, [(b"v0", 0), (b"v1", 1)]),
                   (2, True, True, True, [(1, 2)]),              # COMMIT
                   (3, True, False, True, [(b"gone", 3)]),
                   (4, True, True, True, [(0, 4)])]              # ABORT


def test_read_committed_consumer(broker):
    t = broker.topic("t")
    c = t.consumer("g", isolation="read_committed", from_="earliest")
    u = t.consumer("h", from_="earliest")
    assert u.isolation == "read_uncommitted"
    tx = broker.transaction("cx")
    tx.publish("t", b"a", partition=0)
    t.publish(b"plain", partition=0)
    assert [bytes(r.value) for r in c.poll(timeout=0.05)] == []         # held at the LSO
    assert sorted(bytes(r.value) for r in u.poll(timeout=0.05)) == [b"a", b"plain"]
    tx.abort()
    assert [bytes(r.value) for r in c.poll(timeout=1)] == [b"plain"]
    with broker.transaction("cx") as tx:
        tx.publish("t", b"b", partition=1)
        tx.publish("t", b"c", partition=0)
    got = []
    for _ in range(5):
        got += [bytes(r.value) for r in c.poll(timeout=0.2)]
    assert sorted(got) == [b"b", b"c"]
    with pytest.raises(fastq.InvalidArgument):
        t.consumer(isolation="dirty")
    c.close()
    u.close()


def test_commit_offsets_move_with_the_transaction(broker):
    src, dst = broker.topic("u"), broker.topic("t")
    for i in range(6):
        src.publish(b"in%d" % i)
    c = src.consumer("eos", from_="earliest")
    recs = c.poll(max_records=3, timeout=1)
    assert len(recs) == 3
    with pytest.raises(RuntimeError):
        with broker.transaction("eos") as tx:
            for r in recs:
                tx.publish(dst, bytes(r.value) + b"-out", partition=0)
            tx.commit_offsets(c)
            raise RuntimeError("handler failed")
    assert c.committed().get(0) is None                   # aborted: offsets did not move
    with broker.transaction("eos") as tx:
        for r in recs:
            tx.publish(dst, bytes(r.value) + b"-out", partition=0)
        tx.commit_offsets(c)
    assert c.committed().get(0) == 3
    assert values(dst, 0) == [b"in0-out", b"in1-out", b"in2-out"]
    # crash after the prepare record and the marker, before the offsets: rolled forward
    recs = c.poll(max_records=3, timeout=1)
    tx = broker.transaction("eos")
    tx.publish(dst, b"last", partition=0)
    tx.commit_offsets(c, {0: 6})

    def crash(step):
        if step == "marker":
            raise KeyboardInterrupt
    tx._owner._hook = crash
    with pytest.raises(KeyboardInterrupt):
        tx.commit()
    assert c.committed().get(0) == 3
    broker.transaction("eos").abort()               # the reopen applies the offsets
    assert c.committed().get(0) == 6
    plain = src.consumer()
    with pytest.raises(fastq.InvalidArgument):
        broker.transaction("eos2").commit_offsets(plain)                   # no group
    plain.close()
    c.close()


def test_a_forked_child_cannot_use_the_parents_transaction(broker):
    tx = broker.transaction("fk")
    tx.publish("t", b"parent", partition=0)
    pid = os.fork()
    if pid == 0:                                 # child: report through the exit status
        code = 1
        try:
            tx.publish("t", b"child", partition=0)
        except fastq.UsedAfterFork:
            code = 0
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    tx.commit()                                  # the parent's transaction goes on
    assert values(broker.topic("t"), 0) == [b"parent"]


def test_a_reused_ongoing_record_still_aborts_a_killed_transaction(broker):
    t = broker.topic("t")
    path = os.path.join(broker.path, "producers", "r.txn")
    with broker.transaction("r") as tx:
        tx.publish("t", b"one", partition=0)
    seq = txmod.read_state(path)[0]
    tx = broker.transaction("r")
    tx.publish("t", b"two", partition=0)         # same partition: the record on disk is reused
    assert txmod.read_state(path)[0] == seq
    assert txmod.read_state(path)[1]["state"] == "ongoing"
    with fastq.open(broker.path) as b2:          # as after a kill -9: another instance opens the id
        b2.transaction("r").abort()
        assert values(b2.topic("t"), 0) == [b"one"]
        assert b2.topic("t").last_stable_offset(0) == b2.topic("t").log(0).end_offset
