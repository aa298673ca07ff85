"""Inspecting and administering a consumer group from outside it (what ``fastq groups``
needs): ``group.list_members`` (live and dead members, read only),
``offsets.read_committed`` (committed offsets without mapping or writing the file) and
``group.reset_offsets`` (refused while a member is live; a consumer then resumes from the
new offsets)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import fastq
from fastq.errors import CorruptRecord, GroupActive
from fastq.broker.group import list_members, reset_offsets
from fastq.broker.offsets import read_committed
from logutil import tree_snapshot

JOIN_AND_WAIT = textwrap.dedent("""
    import sys, fastq
    with fastq.open(sys.argv[1]) as b:
        c = b.topic("t").consumer("g", session_timeout_ms=600000)
        c.poll(1, timeout=0)
        print(c.member_id, flush=True)
        sys.stdin.read()
        c.close()
""")


def _filled(tmp_path, n=10, partitions=2):
    b = fastq.open(tmp_path / "b")
    t = b.topic("t", partitions=partitions)
    for i in range(n):
        t.publish(b"v%d" % i, partition=i % partitions)
    return b, t


def test_read_committed_reads_offsets_without_writing(tmp_path):
    b, t = _filled(tmp_path)
    path = os.path.join(b.path, "groups", "g", "offsets", "t.offsets")
    assert read_committed(path) == {}                        # no file: nothing committed
    with t.consumer("g") as c:
        c.commit({0: 3})
        before = tree_snapshot(os.path.join(b.path, "groups"))
        assert read_committed(path) == {0: 3, 1: None}
        assert tree_snapshot(os.path.join(b.path, "groups")) == before
    b.close()


def test_read_committed_refuses_a_foreign_file(tmp_path):
    p = tmp_path / "x.offsets"
    p.write_bytes(b"NOTOFFS!" + bytes(120))
    with pytest.raises(CorruptRecord, match="not a fastq offsets file"):
        read_committed(str(p))
    p.write_bytes(b"short")
    with pytest.raises(CorruptRecord, match="size 5"):
        read_committed(str(p))


def test_list_members_tells_live_from_dead(tmp_path):
    b, t = _filled(tmp_path)
    gdir = os.path.join(b.path, "groups", "g")
    child = subprocess.Popen([sys.executable, "-c", JOIN_AND_WAIT, b.path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        dead_id = child.stdout.readline().strip()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdin.close()
        child.stdout.close()
    # no live member swept the dead one's file: it is listed, as dead (its flock is free)
    before = tree_snapshot(gdir)
    (dead,) = list_members(gdir, "t")
    assert tree_snapshot(gdir) == before                               # listing wrote nothing
    assert dead.member_id == dead_id and not dead.live and dead.pid == child.pid
    with t.consumer("g", session_timeout_ms=600000) as c:
        c.poll(1, timeout=0)
        members = {m.member_id: m for m in list_members(gdir, "t")}
        assert members[c.member_id].live and members[c.member_id].pid == os.getpid()
        assert members[c.member_id].session_timeout_ms == 600000
        assert all(not m.live for k, m in members.items() if k != c.member_id)
    assert list_members(gdir, "other") == []
    b.close()


def test_reset_offsets_is_refused_while_a_member_is_live(tmp_path):
    b, t = _filled(tmp_path)
    gdir = os.path.join(b.path, "groups", "g")
    with t.consumer("g") as c:
        c.poll(10, timeout=0)
        c.commit()
        with pytest.raises(GroupActive, match="live member"):
            reset_offsets(gdir, "t", {0: 0, 1: 0}, t.partitions)
        assert c.committed() == {0: 5, 1: 5}
    b.close()


def test_reset_offsets_moves_a_group_a_consumer_then_follows(tmp_path):
    b, t = _filled(tmp_path)
    gdir = os.path.join(b.path, "groups", "g")
    with t.consumer("g") as c:
        while len(c.poll(10, timeout=0.5)):
            pass
        c.commit()
    reset_offsets(gdir, "t", {0: 2, 1: 4}, t.partitions)
    assert read_committed(os.path.join(gdir, "offsets", "t.offsets")) == {0: 2, 1: 4}
    got = []
    with t.consumer("g") as c:
        while True:
            recs = c.poll(10, timeout=0.5)
            if not recs:
                break
            got += [(r.partition, r.offset) for r in recs]
            del recs
    assert sorted(got) == [(0, 2), (0, 3), (0, 4), (1, 4)]
    b.close()
