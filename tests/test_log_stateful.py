"""fastq.Log against a list model, driven by hypothesis: appends, reads, gets, rolls,
retention by bytes, truncation, unclean crashes and clean reopens in any order."""
import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fastq import Log
from logutil import TORTURE, fork_child, read_all, wait_child

# timestamps up to 2**41 (2039): the ahead-of-the-clock limit is off (stored in log.json)
OPTS = dict(segment_bytes=4096, max_record_bytes=1024, index_interval=256, max_timestamp_ahead_ms=None)
values = st.one_of(st.none(), st.binary(max_size=300))
keys = st.one_of(st.none(), st.binary(max_size=12))
timestamps = st.integers(0, 2**41)
header_lists = st.lists(st.tuples(st.text(max_size=4), st.one_of(st.none(), st.binary(max_size=6))), max_size=3)


class LogMachine(RuleBasedStateMachine):
    """The model: `model[i]` is (timestamp, key, value, headers) of offset start + i;
    `batch_starts` are offsets known to begin a batch (where truncate may cut)."""

    @initialize()
    def open(self):
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.tmp = tempfile.mkdtemp(prefix="fastq-stateful-", dir=base)
        self.path = os.path.join(self.tmp, "log0")
        self.copies = 0
        self.log = Log(self.path, **OPTS)
        self.start = 0
        self.model = []
        self.batch_starts = set()

    def teardown(self):
        if getattr(self, "log", None) is not None:
            self.log.close()
        if getattr(self, "tmp", None):
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def end(self):
        return self.start + len(self.model)

    def expected(self, lo, hi):
        return [(lo + i, *self.model[lo - self.start + i]) for i in range(hi - lo)]

    # -- appends ------------------------------------------------------------------------

    @rule(value=values, key=keys, ts=timestamps, headers=header_lists)
    def append(self, value, key, ts, headers):
        assert self.log.append(value, key=key, headers=headers, timestamp=ts) == self.end
        self.batch_starts.add(self.end)
        self.model.append((ts, key, value, headers))

    @rule(vals=st.lists(st.binary(max_size=250), min_size=1, max_size=8), key=keys, ts=timestamps)
    def append_many(self, vals, key, ts):
        assert self.log.append_many(vals, key=key, timestamp=ts) == self.end
        self.batch_starts.add(self.end)          # may be split further; the first is a start
        self.model += [(ts, key, v, []) for v in vals]

    @rule(recs=st.lists(st.tuples(values, keys, header_lists, timestamps), min_size=1, max_size=5))
    def append_batch(self, recs):
        assert self.log.append_batch(recs) == self.end
        self.batch_starts.add(self.end)
        self.model += [(ts, k, v, h) for (v, k, h, ts) in recs]

    # -- reads --------------------------------------------------------------------------

    @rule(data=st.data())
    def read_range(self, data):
        lo = data.draw(st.integers(self.start, self.end))
        hi = data.draw(st.integers(lo, self.end + 2))
        assert read_all(self.log, lo, hi) == self.expected(lo, min(hi, self.end))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def get(self, data):
        off = data.draw(st.integers(self.start, self.end - 1))
        rec = self.log.get(off)
        got = (rec.offset, rec.timestamp, None if rec.key is None else bytes(rec.key),
               None if rec.value is None else bytes(rec.value), rec.headers)
        del rec
        assert got == self.expected(off, off + 1)[0]

    # -- segments -----------------------------------------------------------------------

    @rule()
    def roll(self):
        before = self.log.segments()
        self.log.roll()
        after = self.log.segments()
        assert len(after) == len(before) + (1 if before[-1]["bytes"] > 0 else 0)
        assert after[-1]["base_offset"] == self.end

    @rule(data=st.data())
    def retention(self, data):
        segs = self.log.segments()
        total = sum(s["bytes"] for s in segs)
        limit = data.draw(st.integers(0, total + 10))
        self.log.retention_bytes = limit
        try:
            n = self.log.enforce_retention()
        finally:
            self.log.retention_bytes = None
        kept = self.log.segments()
        assert n == len(segs) - len(kept)
        assert [s["base_offset"] for s in kept] == [s["base_offset"] for s in segs[n:]]
        kept_bytes = sum(s["bytes"] for s in kept)
        assert kept_bytes <= limit or len(kept) == 1          # deleted enough
        if n:
            assert kept_bytes + segs[n - 1]["bytes"] > limit    # and no more than needed
        new_start = kept[0]["base_offset"]
        assert self.log.start_offset == new_start >= self.start
        # the records kept are exactly the model's tail
        self.model = self.model[new_start - self.start:]
        self.start = new_start
        self.batch_starts = {b for b in self.batch_starts if b >= new_start}
        assert read_all(self.log) == self.expected(self.start, self.end)

    @precondition(lambda self: self.batch_starts)
    @rule(data=st.data())
    def truncate(self, data):
        to = data.draw(st.sampled_from(sorted(self.batch_starts)))
        self.log.truncate(to)
        self.model = self.model[:to - self.start]
        self.batch_starts = {b for b in self.batch_starts if b < to}
        assert self.log.end_offset == to

    # -- crashes and reopens ------------------------------------------------------------

    @rule(junk=st.binary(min_size=0, max_size=300))
    def crash_by_copy_and_reopen(self, junk):
        """Copy the directory while the log is open (its files are what a process crash
        leaves: the page cache survives, the state is not marked clean), add bytes of an
        unfinished append past the committed end, and continue on the copy."""
        self.copies += 1
        copy = os.path.join(self.tmp, f"log{self.copies}")
        shutil.copytree(self.path, copy)
        end_pos = self.log.snapshot()["end_pos"]
        active = os.path.join(copy, os.path.basename(self.log.segments()[-1]["path"]))
        self.log.close()
        self.log = None
        with open(active, "r+b") as f:
            f.seek(end_pos)
            f.write(junk)
        shutil.rmtree(self.path)
        self.path = copy
        self.log = Log(self.path, **OPTS)

    @rule(vals=st.lists(st.binary(max_size=200), min_size=0, max_size=6), ts=timestamps)
    def crash_in_child_and_reopen(self, vals, ts):
        """A forked process opens the log, appends, and dies without closing while it
        is the log's only user."""
        self.log.close()
        self.log = None
        path, expect = self.path, self.end

        def body():
            child = Log(path)
            for i, v in enumerate(vals):
                assert child.append(v, key=b"child", timestamp=ts) == expect + i
            os._exit(0)
        assert wait_child(fork_child(body)) == 0
        self.log = Log(self.path, **OPTS)
        for v in vals:
            self.batch_starts.add(self.end)
            self.model.append((ts, b"child", v, []))

    @rule()
    def reopen(self):
        self.log.close()
        self.log = Log(self.path, **OPTS)

    @invariant()
    def offsets_agree(self):
        if getattr(self, "log", None) is not None:
            assert (self.log.start_offset, self.log.end_offset) == (self.start, self.end)


LogMachine.TestCase.settings = settings(
    max_examples=300 if TORTURE else 40, stateful_step_count=40 if TORTURE else 30,
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TestLogMachine = LogMachine.TestCase
