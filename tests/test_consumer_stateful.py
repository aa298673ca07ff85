"""Hypothesis stateful test: a topic and a consumer group of one or two in-process
members (A, and B when it has joined) against a pure-Python model.

The model is a list of values per partition, the group's committed offsets, each live
member's position per owned partition, and the seeks A made before its first poll.
Ownership follows the documented rule — Kafka's range assignor over member ids sorted by
join time — and a partition that changes hands starts at the committed offset (the
earliest record if none), unless the new owner sought it before its first poll.
``crash_and_reopen`` drops A without committing (optionally reopening the whole broker):
what it consumed but did not commit is delivered again, nothing committed is.
Reproduce a failure from the ``@reproduce_failure`` blob hypothesis prints.
"""
from __future__ import annotations

import shutil
import tempfile
import time

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import fastq
from fastq.errors import NotAssigned, OffsetOutOfRange
from fastq.broker.group import range_assign

P = 3
values = st.lists(st.binary(min_size=0, max_size=12), min_size=1, max_size=6)
partition = st.integers(0, P - 1)
fraction = st.floats(0.0, 1.0)


class Member:
    """Model of one live consumer instance."""

    def __init__(self, consumer):
        self.c = consumer
        self.pos: dict[int, int] = {}
        self.ever: set[int] = set()
        self.pending: dict[int, int] = {}
        self.polled = False
        self.last: list = []


class GroupMachine(RuleBasedStateMachine):

    @initialize()
    def open(self):
        self.dir = tempfile.mkdtemp(prefix="fastq-hyp-", dir="/dev/shm" if _shm() else None)
        self.broker = fastq.open(self.dir)
        self.topic = self.broker.topic("t", partitions=P)
        self.log: list[list[bytes]] = [[] for _ in range(P)]
        self.committed: dict[int, int | None] = {p: None for p in range(P)}
        self.a = Member(self.topic.consumer("g"))
        self.b: Member | None = None
        self.settle()

    def teardown(self):
        for m in (getattr(self, "a", None), getattr(self, "b", None)):
            if m is not None:
                m.last = []
                m.c.close()
        if getattr(self, "broker", None) is not None:
            self.broker.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- model helpers --------------------------------------------------------------------

    def members(self) -> list[Member]:
        return [m for m in (self.a, self.b) if m is not None]

    def settle(self):
        """Run group maintenance until ownership matches the range assignor, then apply
        the handover rule to the model."""
        ms = self.members()
        want = range_assign([m.c.member_id for m in ms], P)
        deadline = time.monotonic() + 5
        while True:
            for m in ms:
                m.c._maintain(time.monotonic_ns(), force=True)
            if all(m.c.assignment() == want[m.c.member_id] for m in ms):
                break
            assert time.monotonic() < deadline, f"no settled assignment: {[m.c.assignment() for m in ms]}"
            time.sleep(0.002)
        for m in ms:
            owned = set(want[m.c.member_id])
            for p in list(m.pos):
                if p not in owned:
                    del m.pos[p]
            for p in owned - set(m.pos):
                if p not in m.ever and p in m.pending:
                    m.pos[p] = m.pending.pop(p)
                else:
                    c = self.committed[p]
                    m.pos[p] = 0 if c is None else c
                m.ever.add(p)

    def check_records(self, m: Member, recs):
        for r in recs:
            p = r.partition
            assert p in m.pos, f"record of partition {p} not owned by this member"
            assert r.offset == m.pos[p], (p, r.offset, m.pos[p])
            assert bytes(r.value) == self.log[p][r.offset]
            m.pos[p] += 1

    def available(self, m: Member) -> int:
        return sum(len(self.log[p]) - off for p, off in m.pos.items())

    # -- rules ----------------------------------------------------------------------------

    @rule(p=partition, vals=values)
    def publish(self, p, vals):
        if len(vals) == 1:
            self.topic.publish(vals[0], partition=p)
        else:
            self.topic.publish_many(vals, partition=p)
        self.log[p].extend(vals)

    @rule(use_b=st.booleans(), max_records=st.integers(1, 8))
    def poll(self, use_b, max_records):
        m = self.b if use_b and self.b is not None else self.a
        avail = self.available(m)
        recs = m.c.poll(max_records, timeout=0)
        m.polled = True
        assert len(recs) <= max_records
        assert bool(recs) == bool(avail), (len(recs), avail)
        self.check_records(m, recs)
        m.last = recs

    @rule(n=st.integers(1, 4))
    def iterate(self, n):
        m = self.a
        if self.available(m) < n:
            return
        it = iter(m.c)
        recs = [next(it) for _ in range(n)]
        m.polled = True
        self.check_records(m, recs)
        m.last = recs

    @rule(use_b=st.booleans())
    def drain(self, use_b):
        m = self.b if use_b and self.b is not None else self.a
        want = {p: self.log[p][off:] for p, off in m.pos.items()}
        got = {p: [] for p in m.pos}
        m.polled = True
        while True:
            recs = m.c.poll(1000, timeout=0)
            if not recs:
                break
            for r in recs:
                got[r.partition].append(bytes(r.value))
            self.check_records(m, recs)
        m.last = []
        assert got == want

    @rule()
    def commit_all(self):
        self.a.c.commit()
        for p, off in self.a.pos.items():
            self.committed[p] = off

    @rule(i=st.integers(0, 100))
    def commit_record(self, i):
        m = self.a
        if not m.last:
            return
        rec = m.last[i % len(m.last)]
        if rec.partition not in m.pos:
            # a rebalance since the poll moved its partition to another member
            with pytest.raises(NotAssigned):
                m.c.commit(rec)
            return
        m.c.commit(rec)
        self.committed[rec.partition] = rec.offset + 1

    @rule(p=partition, f=fraction)
    def commit_offset(self, p, f):
        off = int(f * len(self.log[p]))
        if p in self.a.pos:
            self.a.c.commit({p: off})
            self.committed[p] = off
        else:
            try:
                self.a.c.commit({p: off})
                raise AssertionError("commit of an unowned partition succeeded")
            except NotAssigned:
                pass

    @rule(p=partition, f=fraction)
    def seek(self, p, f):
        m = self.a
        off = int(f * len(self.log[p]))
        if p in m.pos:
            m.c.seek(p, off)
            m.pos[p] = off
        elif not m.polled:
            m.c.seek(p, off)
            m.pending[p] = off
        else:
            try:
                m.c.seek(p, off)
                raise AssertionError("seek of an unowned partition after the first poll succeeded")
            except NotAssigned:
                pass

    @rule(p=partition, k=st.integers(1, 3))
    def seek_out_of_range(self, p, k):
        try:
            self.a.c.seek(p, len(self.log[p]) + k)
            raise AssertionError("seek past the end succeeded")
        except OffsetOutOfRange as e:
            assert f"[0, {len(self.log[p])}]" in str(e)

    @rule(to_end=st.booleans())
    def seek_all(self, to_end):
        m = self.a
        if to_end:
            m.c.seek_to_end()
        else:
            m.c.seek_to_beginning()
        for p in m.pos:
            m.pos[p] = len(self.log[p]) if to_end else 0
        if not m.polled:
            for p in range(P):
                if p not in m.pos:
                    m.pending[p] = len(self.log[p]) if to_end else 0

    @rule(reopen_broker=st.booleans())
    def crash_and_reopen(self, reopen_broker):
        """Drop A without committing; optionally close and reopen the whole broker."""
        self.a.last = []
        self.a.c.close()
        self.a = None
        if reopen_broker:
            if self.b is not None:
                self.b.last = []
                self.b.c.close()
                self.b = None
            self.broker.close()
            self.broker = fastq.open(self.dir)
            self.topic = self.broker.topic("t")
        elif self.b is not None:
            self.settle()                          # B takes everything over meanwhile
        self.a = Member(self.topic.consumer("g"))
        self.settle()

    @precondition(lambda self: self.b is None)
    @rule()
    def b_joins(self):
        self.b = Member(self.topic.consumer("g"))
        self.settle()

    @precondition(lambda self: self.b is not None)
    @rule(clean=st.booleans())
    def b_leaves(self, clean):
        if clean:
            self.b.c.commit()
            for p, off in self.b.pos.items():
                self.committed[p] = off
        self.b.last = []
        self.b.c.close()
        self.b = None
        self.settle()

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def agrees_with_model(self):
        if not hasattr(self, "a") or self.a is None:
            return
        for m in self.members():
            assert m.c.assignment() == sorted(m.pos)
            for p, off in m.pos.items():
                assert m.c.position(p) == off
            assert m.c.lag() == {p: len(self.log[p]) - off for p, off in sorted(m.pos.items())}
        assert self.a.c.committed() == self.committed
        owned = [p for m in self.members() for p in m.pos]
        assert sorted(owned) == list(range(P))


def _shm():
    import os
    return os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)


TestConsumerGroup = GroupMachine.TestCase
TestConsumerGroup.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                      print_blob=True)
