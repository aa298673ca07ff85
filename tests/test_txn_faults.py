"""Faults where transactions write files: the transaction state file (a full disk or a
failed fdatasync at each record). A failure before an append appends nothing; a failure
at the decision leaves the instance unusable and the next open aborts what it wrote."""
import errno

import pytest

import fastq
import fastq.broker.transaction as txmod
from faultfs import os_fault


def committed(t, p):
    return [bytes(r.value) for r in t.read(p, isolation="read_committed")]


def test_full_disk_when_a_partition_is_added_appends_nothing(tmp_path):
    with fastq.open(tmp_path / "b") as b:
        t = b.topic("t", partitions=2)
        tx = b.transaction("f")
        with os_fault(txmod, "pwrite", errno.ENOSPC) as hits:
            with pytest.raises(fastq.DiskFull):
                tx.publish("t", b"x", partition=0)
        assert hits.hits == 1
        assert t.log(0).end_offset == 0                  # the record was not appended
        tx.publish("t", b"y", partition=0)              # the transaction goes on
        tx.commit()
        assert committed(t, 0) == [b"y"]


@pytest.mark.parametrize("name,err,exc,rolled_forward", [("pwrite", errno.ENOSPC, fastq.DiskFull, False),
                                                         ("fdatasync", errno.EIO, fastq.StorageError, True)])
def test_failed_prepare_record_is_finished_by_the_next_open(tmp_path, name, err, exc, rolled_forward):
    """A prepare record that was not written is an abort; one written whose fdatasync
    failed is in the file, and the next open rolls the commit forward — either way the
    transaction is all or nothing."""
    with fastq.open(tmp_path / "b", durability="group") as b:
        t = b.topic("t", partitions=2)
        tx = b.transaction("f")
        tx.publish("t", b"a", partition=0)
        tx.publish("t", b"b", partition=1)
        with os_fault(txmod, name, err) as hits:
            with pytest.raises(exc):
                tx.commit()                              # the prepare record fails
        assert hits.hits == 1 and tx.state == "failed"
        with pytest.raises(fastq.TransactionStateError):
            tx.publish("t", b"c", partition=0)
        assert committed(t, 0) == [] and committed(t, 1) == []     # held back: still open
        with b.transaction("f") as tx2:                 # reopened: the failed one is finished
            tx2.publish("t", b"d", partition=1)
        if rolled_forward:
            assert committed(t, 0) == [b"a"] and committed(t, 1) == [b"b", b"d"]
        else:
            assert committed(t, 0) == [] and committed(t, 1) == [b"d"]
        assert t.last_stable_offset(0) == t.log(0).end_offset
