"""fastq.Backoff policies (fastq.flow.backoff; issue 17): every policy's delays inside its
bounds, the jitter distributions where the AWS "Exponential Backoff and Jitter" post puts
them, the stored form old jobs wrote still readable, and the policy used by queue nacks and
task retries alike."""
from __future__ import annotations

import random
import statistics
import time

import pytest

import fastq
from fastq.flow.backoff import Backoff, exponential_backoff
from fastq.queue.subscription import resolve_backoff


@pytest.fixture
def rng():
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    return random.Random(seed)


def ceiling(base, cap, n):
    return min(cap, base * 2 ** (n - 1))


@pytest.mark.parametrize("jitter, lo_share", [("none", 1.0), (0.0, 1.0), ("full", 0.0), (1.0, 0.0),
                                              ("equal", 0.5), (0.5, 0.5), (0.25, 0.75)])
def test_exponential_delays_stay_inside_their_bounds(rng, jitter, lo_share):
    b = Backoff.exponential(0.1, cap=5.0, jitter=jitter, rng=rng)
    for n in range(1, 70):
        hi = ceiling(0.1, 5.0, n)
        xs = [b(n) for _ in range(100)]
        assert all(hi * lo_share <= x <= hi for x in xs), (n, min(xs), max(xs))
        assert b.bounds(n) == pytest.approx((hi * lo_share, hi))
        if lo_share < 1.0:
            assert len(set(xs)) > 90                # jittered, not one value
    assert Backoff.exponential(1.0, rng=rng)(2000) == 2.0 ** 60   # no cap: doubling stops, no overflow


def test_fixed_and_fixed_with_jitter(rng):
    assert {Backoff.fixed(2)(n) for n in range(1, 50)} == {2.0}
    b = Backoff.fixed(2, jitter=0.5, rng=rng)
    xs = [b(n) for n in range(1, 500)]
    assert all(1.0 <= x <= 2.0 for x in xs) and max(xs) - min(xs) > 0.5


def test_full_jitter_mean_is_half_the_ceiling_and_equal_jitter_three_quarters(rng):
    full = Backoff.exponential(1.0, cap=8.0, jitter="full", rng=rng)
    equal = Backoff.exponential(1.0, cap=8.0, jitter="equal", rng=rng)
    for n, hi in ((1, 1.0), (3, 4.0), (10, 8.0)):
        f = [full(n) for _ in range(4000)]
        e = [equal(n) for _ in range(4000)]
        # uniform on [0, hi]: sd hi/sqrt(12); the mean of 4000 is within 5 sd = 0.023 hi
        assert statistics.fmean(f) == pytest.approx(hi / 2, abs=0.025 * hi)
        assert statistics.fmean(e) == pytest.approx(hi * 0.75, abs=0.0125 * hi)
        assert min(f) < 0.05 * hi and min(e) >= hi / 2


def test_decorrelated_stays_within_base_and_cap_and_grows_at_most_threefold(rng):
    b = Backoff.exponential(0.2, cap=10.0, jitter="decorrelated", rng=rng)
    for n in range(1, 80):
        xs = [b(n) for _ in range(50)]
        assert all(0.2 <= x <= 10.0 for x in xs)
        lo, hi = b.bounds(n)
        assert all(lo <= x <= hi for x in xs) and hi <= min(10.0, 0.2 * 3 ** n)
    for _ in range(200):
        prev = 0.2
        for i, d in zip(range(40), b.delays()):
            assert 0.2 <= d <= min(10.0, 3 * prev), (i, prev, d)
            prev = d
    # a chain reaches its cap sometimes but not always (it is a random walk, not a ladder)
    late = [b(40) for _ in range(400)]
    assert 0 < sum(x == 10.0 for x in late) < 400 and statistics.fmean(late) > 2.0


def test_delays_iterates_the_same_policy(rng):
    b = Backoff.exponential(0.5, cap=4.0, rng=rng)
    it = b.delays()
    assert [next(it) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_stored_form_reads_old_jobs_and_round_trips_the_new_modes():
    old = {"type": "exponential", "delay": 1.0, "cap": 60.0, "jitter": 0.5}     # what PR 16's jobs hold
    assert Backoff.coerce(old) == Backoff.exponential(1.0, cap=60, jitter="equal")
    assert Backoff.coerce(old).to_dict() == old
    assert Backoff.exponential(1, jitter="full").to_dict()["jitter"] == 1.0    # readable by old readers
    dec = Backoff.exponential(0.5, cap=30, jitter="decorrelated")
    assert dec.to_dict() == {"type": "exponential", "delay": 0.5, "cap": 30.0, "jitter": "decorrelated"}
    assert Backoff.coerce(dec.to_dict()) == dec and hash(Backoff.coerce(dec.to_dict())) == hash(dec)
    assert repr(dec) == "Backoff.exponential(0.5, cap=30.0, jitter='decorrelated')"
    assert repr(Backoff.exponential(1, jitter="full")) == "Backoff.exponential(1.0, jitter='full')"
    for bad in (lambda: Backoff.exponential(1, jitter="fulll"), lambda: Backoff.exponential(1, jitter=-0.1),
                lambda: Backoff.fixed(1, jitter="decorrelated"),
                lambda: Backoff.exponential(2, cap=1, jitter="decorrelated"),
                lambda: Backoff.coerce({"type": "exponential", "delay": 1, "jitter": "x"}),
                lambda: Backoff.exponential(float("nan"))):
        with pytest.raises(fastq.InvalidArgument):
            bad()


def test_fastq_backoff_is_the_flow_policy_and_nack_default_is_full_jitter(rng):
    assert fastq.Backoff is Backoff and fastq.tasks.Backoff is Backoff
    f = exponential_backoff(0.1, 5.0, rng)
    assert f == Backoff.exponential(0.1, cap=5.0, jitter="full")
    assert resolve_backoff({"type": "fixed", "delay": 0.25})(3) == 0.25
    b = Backoff.exponential(0.1, cap=1.0, jitter="decorrelated")
    assert resolve_backoff(b) is b


def test_queue_subscription_nacks_with_a_backoff(tmp_path):
    with fastq.open(tmp_path / "b") as broker:
        q = broker.queue("jobs")
        q.publish(b"x")
        seen: list[float] = []

        def handler(m):
            seen.append(time.monotonic())
            if len(seen) < 3:
                raise RuntimeError("flaky")
        with q.subscribe(handler, backoff=Backoff.exponential(0.1, cap=0.3, jitter="equal")):
            deadline = time.monotonic() + 10
            while len(seen) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert len(seen) == 3
        assert seen[1] - seen[0] >= 0.05 and seen[2] - seen[1] >= 0.1      # equal jitter: >= half of 0.1, 0.2


def test_task_retry_stores_and_uses_a_decorrelated_backoff(tmp_path):
    with fastq.open(tmp_path / "b") as broker:
        tq = fastq.TaskQueue("t", broker)
        job = tq.add("flaky", None, attempts=3, backoff=Backoff.exponential(0.05, cap=0.2, jitter="decorrelated"))
        assert job.opts["backoff"] == {"type": "exponential", "delay": 0.05, "cap": 0.2, "jitter": "decorrelated"}
        runs: list[float] = []

        def handler(j):
            runs.append(time.monotonic())
            if len(runs) < 3:
                raise RuntimeError("flaky")
            return "ok"
        with fastq.Worker(tq, handler):
            assert job.result(20) == "ok"
        assert len(runs) == 3 and all(b - a >= 0.05 for a, b in zip(runs, runs[1:]))
