"""The idempotent producer against a pure-Python reference of the sequence rule
(docs/FORMAT.md, "Idempotent producers"), by a hypothesis state machine: publishes with
the next sequence, retries of recent and old batches, gaps, reopened transactional ids,
zombies, rolls (snapshots) and crash_and_reopen (the state rebuilt from the log and the
snapshots). Every answer — appended, the original's offset, out of order, fenced — and
the log's content must match the model."""
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import fastq
from logutil import TORTURE

PARTITIONS = 2
PRODUCERS = 2
KEEP = 5                     # batches a partition remembers per producer


class Model:
    """Per (producer, partition): every stored batch as (first_seq, last_seq, offset)."""

    def __init__(self):
        self.batches = {}            # (k, p) -> [(first, last, offset)]
        self.log = {p: [] for p in range(PARTITIONS)}

    def next_seq(self, k, p):
        b = self.batches.get((k, p))
        return b[-1][1] + 1 if b else 0

    def judge(self, k, p, first, n):
        """("append", None) | ("duplicate", offset) | ("out_of_order", None)."""
        b = self.batches.get((k, p))
        if not b:
            return "append", None
        last = first + n - 1
        for f, l, off in b[-KEEP:]:
            if (f, l) == (first, last):
                return "duplicate", off
        return ("append", None) if first == b[-1][1] + 1 else ("out_of_order", None)

    def append(self, k, p, first, values):
        off = len(self.log[p])
        self.batches.setdefault((k, p), []).append((first, first + len(values) - 1, off))
        self.log[p].extend(values)
        return off


class IdempotentMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="fastq-idem-sm-")
        self.model = Model()
        self.counter = 0
        self.zombies = []
        self._open()

    def _open(self):
        self.broker = fastq.open(self.dir)
        self.topic = self.broker.topic("t", partitions=PARTITIONS, segment_bytes=4096)
        self.producers = [self.topic.producer(transactional_id=f"p{k}") for k in range(PRODUCERS)]

    def _values(self, n):
        self.counter += 1
        return [b"%d.%d" % (self.counter, i) + b"." * 150 for i in range(n)]

    def _publish(self, prod, k, p, first, n):
        values = self._values(n)
        want, off = self.model.judge(k, p, first, n)
        if want == "out_of_order":
            with pytest.raises(fastq.OutOfOrderSequence):
                prod.publish_many(values, partition=p, sequence=first)
            return
        meta = prod.publish_many(values, partition=p, sequence=first)
        if want == "duplicate":
            assert meta.base_offset == off
        else:
            assert meta.base_offset == self.model.append(k, p, first, values)

    @rule(k=st.integers(0, PRODUCERS - 1), p=st.integers(0, PARTITIONS - 1), n=st.integers(1, 3))
    def publish_next(self, k, p, n):
        self._publish(self.producers[k], k, p, self.model.next_seq(k, p), n)

    @initialize(times=st.integers(0, 8))
    def history(self, times):
        """Start with a history (the machine's runs are short): producer 0's batches in
        partition 0, some past the remembered window."""
        self.burst(0, 0, times)

    @rule(k=st.integers(0, PRODUCERS - 1), p=st.integers(0, PARTITIONS - 1), times=st.integers(2, 7))
    def burst(self, k, p, times):
        """Several batches in a row: retries then reach past the remembered window."""
        for _ in range(times):
            self._publish(self.producers[k], k, p, self.model.next_seq(k, p), 1)

    @rule(k=st.integers(0, PRODUCERS - 1), p=st.integers(0, PARTITIONS - 1), back=st.sampled_from([1, 2, 5, 6, 8]),
          data=st.data())
    def retry(self, k, p, back, data):
        stored = self.model.batches.get((k, p))
        if not stored:
            return
        f, l, _ = stored[-min(back, len(stored))]
        # the same range (a retry), or the same first sequence with another count
        n = data.draw(st.sampled_from([l - f + 1, l - f + 2]))
        self._publish(self.producers[k], k, p, f, n)

    @rule(k=st.integers(0, PRODUCERS - 1), p=st.integers(0, PARTITIONS - 1), gap=st.integers(1, 3))
    def publish_with_gap(self, k, p, gap):
        if not self.model.batches.get((k, p)):
            return                   # an unknown producer may start anywhere
        self._publish(self.producers[k], k, p, self.model.next_seq(k, p) + gap, 1)

    @rule(k=st.integers(0, PRODUCERS - 1))
    def reopen(self, k):
        self.zombies.append(self.producers[k])
        self.producers[k] = self.topic.producer(transactional_id=f"p{k}")

    @precondition(lambda self: self.zombies)
    @rule(p=st.integers(0, PARTITIONS - 1))
    def zombie_publishes(self, p):
        with pytest.raises(fastq.ProducerFenced):
            self.zombies[-1].publish(b"zombie", partition=p)

    @rule(p=st.integers(0, PARTITIONS - 1))
    def roll(self, p):
        self.topic.log(p).roll()

    @rule()
    def crash_and_reopen(self):
        for z in self.zombies:
            z.close()
        self.zombies = []
        for prod in self.producers:
            prod.close()
        self.broker.close()
        self._open()

    @invariant()
    def content_and_sequences_match(self):
        for p in range(PARTITIONS):
            assert [bytes(r.value) for r in self.topic.read(p)] == self.model.log[p]
            for k in range(PRODUCERS):
                assert self.producers[k].next_sequence(p) == self.model.next_seq(k, p)

    def teardown(self):
        for z in self.zombies:
            z.close()
        for prod in self.producers:
            prod.close()
        self.broker.close()
        shutil.rmtree(self.dir, ignore_errors=True)


IdempotentMachine.TestCase.settings = settings(
    max_examples=200 if TORTURE else 30, stateful_step_count=80 if TORTURE else 50,
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TestIdempotentMachine = IdempotentMachine.TestCase
