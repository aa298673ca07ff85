"""The idempotent producer (KIP-98 on the local log): a retry is stored once, an
out-of-order sequence is refused, a reopened transactional id fences the older instance,
and the producer state is rebuilt from the log (and snapshots) after a restart."""
import errno
import os
import subprocess
import sys
import warnings

import pytest

import fastq
from fastq._core import _storage
from fastq.broker import idempotence
from fastq.log import producer_state
from faultfs import c_fault

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)     # kafka-python's import (see test_kafka_interop)
    from kafka.record.default_records import DefaultRecordBatch


@pytest.fixture
def broker(tmp_path):
    b = fastq.open(tmp_path / "b")
    yield b
    b.close()


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def values(t, p=0):
    return [bytes(r.value) for r in t.read(p)]


def raw_batches(log):
    """(producer_id, epoch, base_sequence, base_offset, [values]) of every batch of a log,
    decoded by kafka-python from the segment files' bytes."""
    out = []
    for seg in log.segments():
        with open(seg["path"], "rb") as f:
            data = f.read(seg["bytes"])
        pos = 0
        while pos + 12 <= len(data):
            length = int.from_bytes(data[pos + 8:pos + 12], "big")
            if length == 0:
                break
            b = DefaultRecordBatch(data[pos:pos + 12 + length])
            assert b.validate_crc()
            out.append((b.producer_id, b.producer_epoch, b.base_sequence, b.base_offset,
                        [r.value for r in b]))
            pos += 12 + length
    return out


def test_kafka_python_decodes_idempotent_batches(broker):
    t = broker.topic("t", partitions=2)
    p = t.producer(idempotent=True)
    p.publish(b"a", partition=0)
    p.publish(b"b", partition=0)
    p.publish_many([b"c", b"d", b"e"], partition=0)
    p.publish(b"z", partition=1)
    q = t.producer(transactional_id="tx")
    q.publish(b"q", partition=0)
    assert raw_batches(t.log(0)) == [
        (p.producer_id, 0, 0, 0, [b"a"]),
        (p.producer_id, 0, 1, 1, [b"b"]),
        (p.producer_id, 0, 2, 2, [b"c", b"d", b"e"]),
        (q.producer_id, q.epoch, 0, 5, [b"q"]),
    ]
    assert raw_batches(t.log(1)) == [(p.producer_id, 0, 0, 0, [b"z"])]
    assert q.epoch == 1 and p.producer_id != q.producer_id
    p.close()
    q.close()


def test_retry_with_the_same_sequence_is_stored_once_and_answers_the_original(broker):
    t = broker.topic("t")
    p = t.producer(idempotent=True)
    m0 = p.publish(b"a")
    m1 = p.publish(b"b")
    again = p.publish(b"a", partition=m0.partition, sequence=0)
    assert again == m0 and p.duplicates == 1
    b = p.publish_many([b"c", b"d"], partition=0)
    assert p.publish_many([b"c", b"d"], partition=0, sequence=2) == b
    assert p.publish(b"b", partition=0, sequence=1) == m1
    assert values(t) == [b"a", b"b", b"c", b"d"]
    assert p.duplicates == 3
    assert p.publish(b"e").offset == 4                  # a fresh sequence after the retries
    p.close()


def test_retry_after_an_error_raised_once_the_batch_was_appended(broker, monkeypatch):
    """The append commits, then waiting for durability raises (a timeout): the caller
    does not know. Retrying with err.sequence stores it once."""
    t = broker.topic("t", durability="group")
    p = t.producer(idempotent=True)
    p.publish(b"before", partition=0)
    lg = t.log(0)
    real = lg._after_append
    calls = []

    def fail_once(done):
        calls.append(done)
        if len(calls) == 1:
            raise fastq.Timeout("injected: the fsync wait timed out")
        return real(done)

    monkeypatch.setattr(lg, "_after_append", fail_once)
    with pytest.raises(fastq.Timeout) as ei:
        p.publish(b"x", partition=0)
    err = ei.value
    assert (err.partition, err.sequence) == (0, 1)
    assert err.appended_offset == 1
    m = p.publish(b"x", partition=err.partition, sequence=err.sequence)
    assert m.offset == 1 and p.duplicates == 1
    assert values(t) == [b"before", b"x"]
    assert len(calls) == 2                               # the retry waited for durability too
    assert p.publish(b"after", partition=0).offset == 2  # a new record: a new sequence
    assert values(t) == [b"before", b"x", b"after"]
    p.close()


def test_retry_after_an_error_before_the_append_appends_it_once(tmp_path):
    """A roll that cannot preallocate the next segment (a full disk): nothing was
    appended, and no sequence was taken (``err.sequence`` None): publishing again
    appends it, once; with an explicit sequence the error names it, and the retry with
    it appends once too."""
    b = fastq.open(tmp_path / "b")
    t = b.topic("t", segment_bytes=4096)
    p = t.producer(idempotent=True)
    big = b"v" * 1500
    third = b"t" * 1500
    p.publish(big, partition=0)
    p.publish(big, partition=0)
    with c_fault("preallocate", errno.ENOSPC, times=-1):
        with pytest.raises(fastq.DiskFull) as ei:
            p.publish(third, partition=0)                # needs a roll
        assert (ei.value.sequence, ei.value.partition) == (None, 0)
        with pytest.raises(fastq.DiskFull) as ei:
            p.publish(third, partition=0, sequence=2)
        assert (ei.value.sequence, ei.value.partition) == (2, 0)
    assert values(t) == [big, big]
    m = p.publish(third, partition=0, sequence=ei.value.sequence)
    assert m.offset == 2 and p.duplicates == 0
    assert p.publish(third, partition=0, sequence=2) == m and p.duplicates == 1
    assert values(t) == [big, big, third]
    p.close()
    b.close()


def test_threads_sharing_a_producer_never_share_a_sequence(broker):
    """Sequences without ``sequence=`` are taken under the writer lock, which a thread
    may wait for with the GIL released: two threads must still get two sequences (else
    the second record would pass for a retry of the first and be dropped)."""
    import threading
    t = broker.topic("t")
    p = t.producer(idempotent=True)
    other = broker.topic("t").producer(idempotent=True)
    per = 400

    def work(prod, tag):
        for i in range(per):
            prod.publish(b"%s%d" % (tag, i), partition=0)

    threads = [threading.Thread(target=work, args=(p, b"a%d." % j)) for j in range(3)]
    threads.append(threading.Thread(target=work, args=(other, b"o.")))
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    got = values(t)
    assert len(got) == 4 * per and len(set(got)) == 4 * per
    assert p.duplicates == other.duplicates == 0
    assert p.next_sequence(0) == 3 * per and other.next_sequence(0) == per
    p.close()
    other.close()


def test_out_of_order_and_too_old_sequences_raise_and_append_nothing(broker):
    t = broker.topic("t")
    p = t.producer(idempotent=True)
    for i in range(7):
        p.publish(b"%d" % i, partition=0)
    with pytest.raises(fastq.OutOfOrderSequence, match="next expected sequence is 7"):
        p.publish(b"gap", partition=0, sequence=9)
    with pytest.raises(fastq.OutOfOrderSequence):
        p.publish(b"0", partition=0, sequence=0)         # older than the last five batches
    with pytest.raises(fastq.OutOfOrderSequence):
        p.publish_many([b"5", b"6"], partition=0, sequence=5)   # overlaps two batches: not one of them
    assert p.publish(b"2", partition=0, sequence=2).offset == 2  # the fifth newest: still known
    assert values(t) == [b"%d" % i for i in range(7)]
    assert isinstance(fastq.OutOfOrderSequence("x"), ValueError)
    p.close()


@pytest.mark.parametrize("bad", [-1, 1 << 31, True, 1.0, "3"])
def test_bad_sequence_is_invalid_argument(broker, bad):
    p = broker.topic("t").producer(idempotent=True)
    with pytest.raises(fastq.InvalidArgument):
        p.publish(b"x", sequence=bad)
    p.close()


def test_bad_arguments(broker):
    t = broker.topic("t", max_record_bytes=1024)
    with pytest.raises(fastq.InvalidName):
        t.producer(transactional_id="no/slash")
    with pytest.raises(fastq.InvalidArgument):
        t.producer(idempotent=True, linger_ms=1)
    with pytest.raises(fastq.InvalidArgument):
        t.producer(idempotent="yes")
    p = t.producer(idempotent=True)
    with pytest.raises(fastq.RecordTooLarge, match="one batch"):
        p.publish_many([b"x" * 400] * 4, partition=0)    # would need two batches
    p.publish(b"ok", partition=0)
    assert values(t) == [b"ok"]
    p.close()
    with pytest.raises(fastq.Closed):
        p.publish(b"late")


def test_reopened_transactional_id_fences_the_old_instance_everywhere(broker):
    t = broker.topic("t", partitions=3)
    old = t.producer(transactional_id="billing")
    old.publish(b"o0", partition=0)
    old.publish(b"o1", partition=0)
    new = t.producer(transactional_id="billing")
    assert new.producer_id == old.producer_id and new.epoch == old.epoch + 1
    for part in (0, 1, 2):                               # 1 and 2: never written by the new one
        with pytest.raises(fastq.ProducerFenced):
            old.publish(b"zombie", partition=part)
    with pytest.raises(fastq.ProducerFenced):
        old.publish_many([b"z"], partition=2)
    assert new.next_sequence(0) == 2                     # sequences continue across epochs
    assert new.publish(b"o1", partition=0, sequence=1).offset == 1   # the old instance's batch
    assert new.publish(b"n2", partition=0).offset == 2
    assert values(t) == [b"o0", b"o1", b"n2"]
    assert values(t, 1) == values(t, 2) == []
    assert isinstance(fastq.ProducerFenced("x"), RuntimeError)
    old.close()
    new.close()


_FENCE_CHILD = r"""
import sys, fastq
b = fastq.open(sys.argv[1])
p = b.topic("t", partitions=2).producer(transactional_id="x")
p.publish(b"child", partition=1)
print(p.epoch, p.next_sequence(0), flush=True)
p.close(); b.close()
"""


def test_fencing_across_processes(broker):
    t = broker.topic("t", partitions=2)
    p = t.producer(transactional_id="x")
    p.publish(b"parent", partition=0)
    out = subprocess.run([sys.executable, "-c", _FENCE_CHILD, broker.path], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(p.epoch + 1), "1"]
    with pytest.raises(fastq.ProducerFenced):
        p.publish(b"zombie", partition=0)
    assert values(t) == [b"parent"] and values(t, 1) == [b"child"]
    p.close()


def test_producers_of_two_handles_see_each_others_batches(tmp_path):
    """Two brokers on one directory are two processes' views: each handle's producer
    state catches up with what the other appended, under the writer lock."""
    b1 = fastq.open(tmp_path / "b")
    b2 = fastq.open(tmp_path / "b")
    t1, t2 = b1.topic("t"), b2.topic("t")
    a = t1.producer(transactional_id="a")
    c = t2.producer(idempotent=True)
    for i in range(20):
        (a if i % 3 else c).publish(b"%d" % i, partition=0)
    # `a` reopened through the other handle: its state there comes from the log
    a2 = t2.producer(transactional_id="a")
    last = a2.next_sequence(0) - 1
    offsets = [r.offset for r in t2.read(0) if r.value == b"%d" % 19]
    assert a2.publish(b"19", partition=0, sequence=last).offset == offsets[0]
    assert a2.duplicates == 1
    assert values(t1) == [b"%d" % i for i in range(20)]
    with pytest.raises(fastq.ProducerFenced):
        a.publish(b"zombie", partition=0)
    for x in (a, c, a2):
        x.close()
    b1.close()
    b2.close()


def _restart(path, **kw):
    b = fastq.open(path)
    return b, b.topic("t", **kw)


def test_state_survives_a_restart_without_a_snapshot(tmp_path):
    b, t = _restart(tmp_path / "b")
    p = t.producer(transactional_id="r")
    for i in range(4):
        p.publish(b"%d" % i, partition=0)
    p.close()
    b.close()
    b, t = _restart(tmp_path / "b")
    p = t.producer(transactional_id="r")
    assert p.next_sequence(0) == 4
    assert p.publish(b"3", partition=0, sequence=3).offset == 3 and p.duplicates == 1
    assert t.log(0).producer_state().loaded_from == -1
    assert values(t) == [b"0", b"1", b"2", b"3"]
    p.close()
    b.close()


def _snapshots(t):
    d = t.log(0).path
    return sorted(n for n in os.listdir(d) if n.endswith(".snapshot"))


def test_roll_writes_a_snapshot_and_a_restart_loads_it(tmp_path):
    b, t = _restart(tmp_path / "b", segment_bytes=4096)
    p = t.producer(transactional_id="s")
    for i in range(40):
        p.publish(b"%03d" % i + b"." * 300, partition=0)
    snaps = _snapshots(t)
    assert 1 <= len(snaps) <= producer_state.KEEP
    p.close()
    b.close()
    b, t = _restart(tmp_path / "b")
    st = t.log(0).producer_state()
    assert st.loaded_from == int(snaps[-1].split(".")[0])
    p = t.producer(transactional_id="s")
    assert p.next_sequence(0) == 40
    assert p.publish(b"039" + b"." * 300, partition=0, sequence=39).offset == 39
    assert len(values(t)) == 40
    p.close()
    b.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing", "garbage"])
def test_damaged_or_missing_snapshot_is_skipped_and_the_log_rebuilds_the_state(tmp_path, damage):
    b, t = _restart(tmp_path / "b", segment_bytes=4096)
    p = t.producer(transactional_id="s")
    for i in range(40):
        p.publish(b"%03d" % i + b"." * 300, partition=0)
    d = t.log(0).path
    p.close()
    b.close()
    for name in [n for n in os.listdir(d) if n.endswith(".snapshot")]:
        path = os.path.join(d, name)
        data = bytearray(_read(path))
        if damage == "flip":
            data[40] ^= 0x10
        elif damage == "truncate":
            data = data[:len(data) - 7]
        elif damage == "garbage":
            data = bytearray(os.urandom(len(data)))
        if damage == "missing":
            os.unlink(path)
        else:
            _write(path, data)
    b, t = _restart(tmp_path / "b")
    assert t.log(0).producer_state().loaded_from == -1
    p = t.producer(transactional_id="s")
    assert p.next_sequence(0) == 40
    assert p.publish(b"039" + b"." * 300, partition=0, sequence=39).offset == 39
    with pytest.raises(fastq.OutOfOrderSequence):
        p.publish(b"x", partition=0, sequence=30)
    assert len(values(t)) == 40
    p.close()
    b.close()


def test_truncate_forgets_batches_past_the_new_end(tmp_path):
    b, t = _restart(tmp_path / "b", segment_bytes=4096)
    p = t.producer(transactional_id="tr")
    for i in range(30):
        p.publish(b"%03d" % i + b"." * 300, partition=0)
    lg = t.log(0)
    lg.truncate(5)
    assert all(int(n.split(".")[0]) <= 5 for n in _snapshots(t))
    p.close()
    p = t.producer(transactional_id="tr")
    assert p.next_sequence(0) == 5
    assert p.publish(b"new5", partition=0).offset == 5          # sequence 5 again, now appended
    assert values(t)[-1] == b"new5" and len(values(t)) == 6
    p.close()
    b.close()


def test_producer_ids_are_unique_across_processes(tmp_path):
    code = ("import sys; from fastq.broker.idempotence import allocate_producer_id as a; "
            "print(*[a(sys.argv[1]) for _ in range(15)])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    ids = []
    for pr in procs:
        out, _ = pr.communicate(timeout=120)
        assert pr.returncode == 0
        ids += [int(x) for x in out.split()]
    assert len(ids) == 60 and len(set(ids)) == 60
    os.unlink(os.path.join(tmp_path, "producers", "ids.json"))     # lost: the clock floor keeps ids new
    assert idempotence.allocate_producer_id(str(tmp_path)) > max(ids)


def test_damaged_registry_files_are_corrupt_record(broker):
    t = broker.topic("t")
    t.producer(transactional_id="d").close()
    d = os.path.join(broker.path, "producers")
    path = os.path.join(d, "d.producer")
    data = bytearray(_read(path))
    data[17] ^= 1                                        # the producer id: under the check
    _write(path, data)
    with pytest.raises(fastq.CorruptRecord, match="d.producer"):
        t.producer(transactional_id="d")
    data[17] ^= 1
    data[44] ^= 1                                        # the epoch word's halves disagree
    _write(path, data)
    with pytest.raises(fastq.CorruptRecord, match="epoch word"):
        t.producer(transactional_id="d")
    _write(path, bytes(data[:30]))
    with pytest.raises(fastq.CorruptRecord, match="30 bytes"):
        t.producer(transactional_id="d")
    _write(os.path.join(d, "ids.json"), b"{not json")
    with pytest.raises(fastq.CorruptRecord, match="ids.json"):
        t.producer(idempotent=True)


def test_epochs_exhausted_gives_a_new_producer_id_and_fences_the_old(broker):
    t = broker.topic("t")
    old = t.producer(transactional_id="e")
    old.publish(b"a", partition=0)
    # drive the word to the last epoch, as MAX_EPOCH opens would
    w = _storage.SharedWord(os.path.join(broker.path, "producers", "e.producer"), idempotence.EPOCH_AT)
    w.store(_storage.fence_word(idempotence.MAX_EPOCH))
    w.close()
    new = t.producer(transactional_id="e")
    assert new.producer_id != old.producer_id and new.epoch == 1
    with pytest.raises(fastq.ProducerFenced):
        old.publish(b"zombie", partition=0)
    assert new.publish(b"b", partition=0).offset == 1
    assert values(t) == [b"a", b"b"]
    old.close()
    new.close()


def test_send_appends_at_once_and_async_face(broker):
    import asyncio
    t = broker.topic("t")
    p = t.producer(idempotent=True)
    p.send(b"s", partition=0)                            # no accumulator: appended now
    assert values(t) == [b"s"] and p._put_nowait(b"x") == -1 and p.flush() == 0
    p.close()

    async def main():
        ab = fastq.AsyncBroker(broker)
        at = await ab.topic("t")
        async with at.producer(transactional_id="aio") as ap:
            m = await ap.publish(b"a", partition=0)
            again = await ap.publish(b"a", partition=0, sequence=await ap.next_sequence(0) - 1)
            assert again == m and ap.duplicates == 1
            b = await ap.publish_many([b"b", b"c"], partition=0)
            assert b.offsets == range(2, 4)

    asyncio.run(main())
    assert values(t) == [b"s", b"a", b"b", b"c"]


def test_first_open_deletes_snapshots_past_the_end(tmp_path):
    """A snapshot past the log's end (its tail lost to a power failure under "os")
    would pass for this history's once the log grew past it: the first open deletes it."""
    b, t = _restart(tmp_path / "b")
    p = t.producer(transactional_id="pf")
    p.publish(b"a", partition=0)
    d = t.log(0).path
    state = t.log(0).producer_state()
    p.close()
    b.close()
    stale = os.path.join(d, producer_state.snapshot_name(100))
    _write(stale, producer_state.encode(state, 100))
    kept = os.path.join(d, producer_state.snapshot_name(1))
    _write(kept, producer_state.encode(state, 1))
    b, t = _restart(tmp_path / "b")
    t.log(0)
    assert not os.path.exists(stale) and os.path.exists(kept)
    assert t.log(0).producer_state().loaded_from == 1
    b.close()


def test_forked_child_cannot_use_the_parents_producer(broker):
    t = broker.topic("t")
    p = t.producer(transactional_id="fork")
    p.publish(b"parent", partition=0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                         # child: report, never return into pytest
        code = 1
        try:
            try:
                p.publish(b"child", partition=0)
            except fastq.UsedAfterFork:
                code = 0
        finally:
            os.write(w, b"%d" % code)
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"0"
    os.waitpid(pid, 0)
    assert p.publish(b"after", partition=0).offset == 1
    assert values(t) == [b"parent", b"after"]
    p.close()
