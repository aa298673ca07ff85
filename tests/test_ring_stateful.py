"""Hypothesis stateful tests: fastq.Ring and the ReferenceRing against collections.deque.

The model is a deque of messages plus the byte accounting rule (a message takes
8 + align8(len) bytes; the ring is full when the next one does not fit), so every
RingFull/RingEmpty is predicted exactly. `reattach` closes the handle of a named ring and
attaches a new one: the contents must survive, as they do for another process.
"""
from __future__ import annotations

import collections
import uuid

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fastq import Ring, RingEmpty, RingFull
from ring_reference import ReferenceRing, record_size

CAPACITY = 128
messages = st.binary(max_size=CAPACITY - 8)


class RingMachine(RuleBasedStateMachine):
    impl = "native"

    @initialize(max_messages=st.sampled_from([0, 0, 3]))
    def open(self, max_messages):
        self.max_messages = max_messages
        self.name = "hyp-" + uuid.uuid4().hex if self.impl == "native" else None
        cls = Ring if self.impl == "native" else ReferenceRing
        self.ring = cls(CAPACITY, name=self.name, max_messages=max_messages)
        self.model: collections.deque[bytes] = collections.deque()

    def teardown(self):
        ring = getattr(self, "ring", None)
        if ring is not None:
            ring.close()
            if self.name:
                ring.unlink()

    def used(self):
        return sum(record_size(len(m)) for m in self.model)

    def fits(self, batch):
        need = sum(record_size(len(m)) for m in batch)
        count_ok = not self.max_messages or len(self.model) + len(batch) <= self.max_messages
        return self.used() + need <= CAPACITY and count_ok

    @rule(msg=messages)
    def put(self, msg):
        if self.fits([msg]):
            self.ring.put_nowait(msg)
            self.model.append(msg)
        else:
            try:
                self.ring.put_nowait(msg)
                raise AssertionError("put should have raised RingFull")
            except RingFull:
                pass

    @rule(batch=st.lists(st.binary(max_size=24), min_size=1, max_size=3))
    def put_many(self, batch):
        if self.fits(batch):
            self.ring.put_many(batch, block=False)
            self.model.extend(batch)
        else:
            try:
                self.ring.put_many(batch, block=False)
                raise AssertionError("put_many should have raised RingFull")
            except RingFull:
                pass

    @rule()
    def get(self):
        if self.model:
            assert self.ring.get_nowait() == self.model.popleft()
        else:
            try:
                self.ring.get_nowait()
                raise AssertionError("get should have raised RingEmpty")
            except RingEmpty:
                pass

    @rule(n=st.integers(1, 5))
    def get_many(self, n):
        if self.model:
            expect = [self.model.popleft() for _ in range(min(n, len(self.model)))]
            assert self.ring.get_many(n, block=False) == expect
        else:
            try:
                self.ring.get_many(n, block=False)
                raise AssertionError("get_many should have raised RingEmpty")
            except RingEmpty:
                pass

    @precondition(lambda self: self.impl == "native")
    @rule()
    def get_view(self):
        if self.model:
            with self.ring.get_view() as mv:
                assert bytes(mv) == self.model[0]
            self.model.popleft()

    @precondition(lambda self: self.impl == "native")
    @rule()
    def reattach(self):
        """Close this handle and attach a fresh one by name (as another process would)."""
        self.ring.close()
        self.ring = Ring.attach(self.name)

    @invariant()
    def sizes_agree(self):
        if hasattr(self, "ring"):
            assert self.ring.qsize() == len(self.model)
            assert self.ring.empty() == (not self.model)
            assert self.ring.used_bytes == self.used()


class ReferenceMachine(RingMachine):
    impl = "reference"


STATEFUL = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestNativeRing = RingMachine.TestCase
TestNativeRing.settings = STATEFUL
TestReferenceRing = ReferenceMachine.TestCase
TestReferenceRing.settings = STATEFUL
