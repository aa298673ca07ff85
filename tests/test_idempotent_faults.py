"""Faults where the idempotent producer writes files: producer snapshots (a failure costs
a longer rebuild, never a roll or a record), the producer-id file and transactional-id
files (a full disk is DiskFull with nothing half-written left behind)."""
import errno
import os

import pytest

import fastq
import fastq.broker.idempotence
import fastq.log.config
from faultfs import fill, os_fault


def _leftovers(d):
    return [n for n in os.listdir(d) if ".tmp." in n]


def _fill_log(t, p, n=40):
    for i in range(n):
        p.publish(b"%03d" % i + b"." * 300, partition=0)


@pytest.mark.parametrize("call", ["open", "replace"])
def test_snapshot_write_failure_fails_no_roll_and_leaves_no_file(tmp_path, call):
    b = fastq.open(tmp_path / "b")
    t = b.topic("t", segment_bytes=4096, durability="group")
    p = t.producer(transactional_id="f")
    with os_fault(fastq.log.config, call, errno.ENOSPC, times=-1, path_contains=".snapshot") as hits:
        _fill_log(t, p)
    assert hits.hits > 0
    d = t.log(0).path
    assert len(t.log(0).segments()) > 3                  # rolls went on
    assert not [n for n in os.listdir(d) if "snapshot" in n]
    assert _leftovers(d) == []
    p.close()
    b.close()
    b = fastq.open(tmp_path / "b")
    t = b.topic("t")
    p = t.producer(transactional_id="f")
    assert p.next_sequence(0) == 40                       # rebuilt from the log
    assert p.publish(b"039" + b"." * 300, partition=0, sequence=39).offset == 39
    assert len(list(t.read(0))) == 40
    p.close()
    b.close()


def test_snapshot_fsync_failure_is_only_a_missing_snapshot(tmp_path):
    b = fastq.open(tmp_path / "b")
    t = b.topic("t", segment_bytes=4096, durability="group")
    p = t.producer(transactional_id="f")
    real = fastq.log.config.os.fsync
    calls = {"n": 0}

    class Proxy:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def fsync(fd):
            if ".snapshot" in os.readlink(f"/proc/self/fd/{fd}"):
                calls["n"] += 1
                raise OSError(errno.EIO, "injected")
            return real(fd)

    saved = fastq.log.config.os
    fastq.log.config.os = Proxy()
    try:
        _fill_log(t, p)
    finally:
        fastq.log.config.os = saved
    assert calls["n"] > 0
    d = t.log(0).path
    assert not [n for n in os.listdir(d) if "snapshot" in n]
    assert [bytes(r.value)[:3] for r in t.read(0)] == [b"%03d" % i for i in range(40)]
    p.close()
    b.close()


def test_full_disk_allocating_a_producer_id_is_disk_full_and_leaves_nothing(tmp_path):
    b = fastq.open(tmp_path / "b")
    t = b.topic("t")
    d = os.path.join(b.path, "producers")
    with os_fault(fastq.log.config, "open", errno.ENOSPC, times=-1, path_contains="ids.json"):
        with pytest.raises(fastq.DiskFull):
            t.producer(idempotent=True)
        with pytest.raises(fastq.DiskFull):
            t.producer(transactional_id="n")
    assert _leftovers(d) == [] and not os.path.exists(os.path.join(d, "n.producer"))
    p = t.producer(transactional_id="n")
    p.publish(b"x", partition=0)
    assert p.epoch == 1
    p.close()
    b.close()


def test_full_disk_creating_a_transactional_file_leaves_no_partial_file(tmp_path):
    b = fastq.open(tmp_path / "b")
    t = b.topic("t")
    with os_fault(fastq.broker.idempotence, "write", errno.ENOSPC, times=-1):
        with pytest.raises(fastq.DiskFull):
            t.producer(transactional_id="w")
    d = os.path.join(b.path, "producers")
    assert _leftovers(d) == [] and not os.path.exists(os.path.join(d, "w.producer"))
    p = t.producer(transactional_id="w")
    assert p.publish(b"x", partition=0).offset == 0
    p.close()
    b.close()


def test_really_full_filesystem(tmpfs_dir):
    b = fastq.open(os.path.join(tmpfs_dir, "b"))
    t = b.topic("t")
    t.log(0)
    free = fill(tmpfs_dir)
    try:
        with pytest.raises(fastq.DiskFull):
            t.producer(transactional_id="full")
    finally:
        free()
    d = os.path.join(b.path, "producers")
    if os.path.isdir(d):
        assert _leftovers(d) == []
    p = t.producer(transactional_id="full")
    assert p.publish(b"x", partition=0).offset == 0
    p.close()
    b.close()
