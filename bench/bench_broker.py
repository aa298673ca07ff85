"""Broker benchmarks: publish and consume in one process, cross-process publish -> consume,
latency, consumer groups.

Measured, with 100-byte messages, in one process on a 4-partition topic (durability "os"):
- ``Topic.publish`` one message per call, and ``publish_many`` batches of 1,000;
- a consumer (no group) polling a pre-filled topic back, 4,096 records per poll, and
  iterating it back (``for rec in consumer``);
- what a tailing consumer pays per wake-up: ``Consumer.poll`` handing out one ready
  record per call, against the bare tail reader (``Log.wait`` + ``read_many(1)``) on a
  1-partition topic; and ``poll(timeout=0)`` with nothing new on 4 partitions;
and with one producer process and one consumer process (started before the timed region,
released together):
- throughput with one ``Topic.publish`` per message, and with ``publish_many`` batches
  of 1,000, the consumer tailing with ``Log.wait`` (futex) and reading in batches;
- the same workloads through ``multiprocessing.Queue`` (one ``put`` per message, and
  lists of 1,000 per ``put``), measured in the same run: the ratio fastq / Queue;
- paced publishing at 5,000 messages/s for one second: end-to-end latency percentiles
  (CLOCK_MONOTONIC stamps, shared by all processes) in ``extra_info``, for each way of
  waiting: a tail reader (``Log.wait``) sleeping on the futex after a 50 µs spin (the
  default), spinning through the gap, or paced by a ``fastq.Pacer``; and a ``Consumer``
  (default, and ``wait="adaptive"``) — and, as the baseline, ``multiprocessing.Queue``
  (a blocking ``get()``) on the same paced workload. Each round also reports the CPU
  time the hypervisor stole from the guest meanwhile (``steal_ms``, from /proc/stat):
  on a shared VM that, not the waiting strategy, is what most rounds that miss have;
- consumer-group throughput: 4 partitions, 2 consumer processes in one group.
"""
from __future__ import annotations

import shutil
import tempfile

import pytest

import fastq
from conftest import add_ratio, record, record_latency
from xproc import CTX, FastqPipe, MPQueuePipe, fastq_group_consumer, percentiles, reap

N = 200_000
SIZE = 100
ROUNDS = 3

add_ratio("xproc one-by-one: fastq publish / mp.Queue put", "xproc_fastq_one", "xproc_mpqueue_one", 15.0)
add_ratio("xproc one send per message: fastq Producer.send / mp.Queue put", "xproc_fastq_producer",
          "xproc_mpqueue_one", 15.0)
add_ratio("xproc batched: fastq publish_many / mp.Queue put", "xproc_fastq_batch", "xproc_mpqueue_one", 15.0)
add_ratio("xproc batched: fastq publish_many / mp.Queue put(list of 1,000)", "xproc_fastq_batch",
          "xproc_mpqueue_batch", 15.0)
# a poll does more than the bare tail reader (positions, ownership, the Python fallbacks);
# this bar keeps that extra from growing back
add_ratio("one record per wake-up: Consumer.poll / tail reader", "poll_one_ready", "tail_one_ready", 0.6)
# iteration hands out read-ahead records one per __next__; poll(4096) a list at a time
add_ratio("in-process: iteration / poll(4096)", "consume_iter", "consume_poll", 0.3)


def _pedantic(benchmark, pipe):
    benchmark.pedantic(pipe.run, setup=pipe.setup, teardown=lambda *a, **k: pipe.teardown(),
                       rounds=ROUNDS, iterations=1)


# Message counts are sized so that a round of each workload runs for about half a
# second or more on the development VM (process start-up stays outside the timed
# region; the first page faults and thread starts do not): the Queue moves N // 4.

def test_xproc_fastq_one(benchmark):
    _pedantic(benchmark, FastqPipe(N * 3, SIZE))
    record(benchmark, "xproc_fastq_one", N * 3, SIZE)


def test_xproc_fastq_producer(benchmark):
    """One Producer.send per message (the batching producer appends batches)."""
    _pedantic(benchmark, FastqPipe(N * 5, SIZE, batch=-1))
    record(benchmark, "xproc_fastq_producer", N * 5, SIZE)


def test_xproc_fastq_batch(benchmark):
    _pedantic(benchmark, FastqPipe(N * 5, SIZE, batch=1000))
    record(benchmark, "xproc_fastq_batch", N * 5, SIZE)


def test_xproc_mpqueue_one(benchmark):
    _pedantic(benchmark, MPQueuePipe(N // 4, SIZE))
    record(benchmark, "xproc_mpqueue_one", N // 4, SIZE)


def test_xproc_mpqueue_batch(benchmark):
    _pedantic(benchmark, MPQueuePipe(N, SIZE, batch=1000))
    record(benchmark, "xproc_mpqueue_batch", N, SIZE)


@pytest.mark.parametrize("wait,spin_us", [("futex", 50), ("futex", 1000), ("adaptive", 50),
                                          ("consumer", 50), ("consumer-adaptive", 50)])
def test_xproc_latency_paced(benchmark, wait, spin_us):
    """Paced 5,000/s. futex/50 (the default): the reader spins 50 µs, then sleeps on the
    futex, so at this rate most records arrive to a sleeping reader and pay the futex
    wake-up. futex/1000: it spins past the 200 µs gap between records (one busy core),
    so it sees them without a wake-up. adaptive: a fastq.Pacer sleeps through the
    learned gap and spins 50 µs either side of the expected arrival. consumer*: the
    same through ``Consumer.poll`` (default wait, and ``wait="adaptive"``). Every round
    keeps its percentiles; extra_info reports the round with the median p99."""
    rounds = []
    pipe = FastqPipe(5000, SIZE, rate=5000, latency=True, spin_us=spin_us, wait=wait)

    def run():
        pipe.run()
        rounds.append({**percentiles(pipe.result[2]), "steal_ms": pipe.steal_ms})
    benchmark.pedantic(run, setup=pipe.setup, teardown=lambda *a, **k: pipe.teardown(),
                       rounds=ROUNDS, iterations=1)
    label = f"{wait}, spin {spin_us} us"
    record(benchmark, f"xproc_latency_paced[{label}]", 5000, SIZE)   # ~ the pacing rate, by design
    mid = sorted(rounds, key=lambda r: r["p99_us"])[len(rounds) // 2]
    benchmark.extra_info.update(mid)
    benchmark.extra_info["rounds"] = rounds
    benchmark.extra_info["rate_per_s"] = 5000
    benchmark.extra_info["wait"] = wait
    benchmark.extra_info["spin_us"] = spin_us
    record_latency(f"paced 5,000/s {label}", rounds, (10.0, 50.0))
    print(f"paced latency ({label})", rounds)


def test_xproc_latency_paced_mpqueue(benchmark):
    """The baseline: the same paced 5,000/s workload through multiprocessing.Queue
    (a blocking get() in the other process)."""
    rounds = []
    pipe = MPQueuePipe(5000, SIZE, rate=5000, latency=True)

    def run():
        pipe.run()
        rounds.append({**percentiles(pipe.result[2]), "steal_ms": pipe.steal_ms})
    benchmark.pedantic(run, setup=pipe.setup, teardown=lambda *a, **k: pipe.teardown(),
                       rounds=ROUNDS, iterations=1)
    record(benchmark, "xproc_latency_paced[mp.Queue]", 5000, SIZE)
    benchmark.extra_info.update(sorted(rounds, key=lambda r: r["p99_us"])[len(rounds) // 2])
    benchmark.extra_info["rounds"] = rounds
    record_latency("paced 5,000/s multiprocessing.Queue (baseline)", rounds)


# -- in one process -------------------------------------------------------------------------

@pytest.fixture
def topic4():
    d = tempfile.mkdtemp(prefix="fastq-bench-")
    b = fastq.open(d)
    yield b.topic("t", partitions=4)
    b.close()
    shutil.rmtree(d, ignore_errors=True)


def test_publish_one(benchmark, topic4):
    msg = b"x" * SIZE

    def run():
        publish = topic4.publish
        for _ in range(N):
            publish(msg)

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    record(benchmark, "publish_one", N, SIZE)


def test_publish_batch(benchmark, topic4):
    msgs = [b"x" * SIZE] * 1000

    def run():
        for _ in range(N // 1000):
            topic4.publish_many(msgs)

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    record(benchmark, "publish_batch", N, SIZE)


def _fill(topic):
    """N records of SIZE bytes, spread over the topic's 4 partitions in batches of 1,000."""
    msgs = [b"x" * SIZE] * 1000
    for i in range(N // 1000):
        topic.publish_many(msgs, partition=i % 4)


def test_consume_poll(benchmark, topic4):
    _fill(topic4)

    def run():
        with topic4.consumer(from_="earliest") as c:
            got = 0
            while got < N:
                recs = c.poll(4096, timeout=5)
                assert recs, f"got {got} of {N}"
                got += len(recs)
                del recs

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    record(benchmark, "consume_poll", N, SIZE)


def test_consume_iter(benchmark, topic4):
    """The same pre-filled topic read back by iteration (``for rec in consumer``), the
    README's way to consume: one record per ``__next__``."""
    _fill(topic4)

    def run():
        with topic4.consumer(from_="earliest") as c:
            got = 0
            for _ in c:
                got += 1
                if got == N:
                    break

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    record(benchmark, "consume_iter", N, SIZE)


@pytest.fixture
def topic1():
    d = tempfile.mkdtemp(prefix="fastq-bench-")
    b = fastq.open(d)
    t = b.topic("t")
    msgs = [b"x" * SIZE] * 1000
    for _ in range(N // 1000):
        t.publish_many(msgs)
    yield t
    b.close()
    shutil.rmtree(d, ignore_errors=True)


def test_poll_one_ready(benchmark, topic1):
    """What a tailing consumer pays per wake-up: ``Consumer.poll(1, 0)`` with one record
    ready, N times. The baseline (``tail_one_ready``) is the bare tail reader doing the
    same: ``Log.wait(next, 0)`` and ``LogReader.read_many(1)``."""
    c = topic1.consumer(from_="earliest")

    def run():
        poll = c.poll
        for _ in range(N):
            poll(1, 0)

    benchmark.pedantic(run, setup=lambda: c.seek_to_beginning(), rounds=7, iterations=1)
    assert c.position(0) == N
    c.close()
    record(benchmark, "poll_one_ready", N, SIZE)


def test_tail_one_ready(benchmark, topic1):
    lg = topic1.log(0)
    state = {}

    def setup():
        state["rd"] = lg.read(0, follow=True)

    def run():
        rd = state["rd"]
        wait, read_many = lg.wait, rd.read_many
        for _ in range(N):
            wait(rd.next_offset, 0)
            read_many(1)

    benchmark.pedantic(run, setup=setup, rounds=7, iterations=1)
    assert state["rd"].next_offset == N
    record(benchmark, "tail_one_ready", N, SIZE)


def test_poll_idle(benchmark, topic4):
    """``Consumer.poll(timeout=0)`` of a 4-partition topic with nothing new (one
    partition read to its end, three never written): the cost of asking."""
    topic4.publish(b"x" * SIZE, partition=0)
    c = topic4.consumer(from_="earliest")
    assert len(c.poll(10, 0)) == 1

    def run():
        poll = c.poll
        for _ in range(N):
            poll(1, 0)

    benchmark.pedantic(run, rounds=7, iterations=1)
    c.close()
    record(benchmark, "poll_idle_4p", N, SIZE)


# -- consumer groups ---------------------------------------------------------------------------

def _group_setup(state, parts, members, n):
    state["dir"] = d = tempfile.mkdtemp(prefix="fastq-bench-")
    with fastq.open(d) as b:
        t = b.topic("g", partitions=parts)
        msgs = [b"x" * SIZE] * 1000
        per = n // parts
        for p in range(parts):
            for i in range(0, per, 1000):
                t.publish_many(msgs, partition=p)
    state["go"], state["done"] = CTX.Event(), CTX.Queue()
    readies = [CTX.Event() for _ in range(members)]
    state["procs"] = [CTX.Process(target=fastq_group_consumer,
                                  args=(d, "g", "bench", n, state["go"], r, state["done"]))
                      for r in readies]
    for p in state["procs"]:
        p.start()
    for r in readies:
        r.wait(30)
    return (), {}


def test_group_consume_4p_2c(benchmark):
    """Consumer-group throughput: 4 partitions pre-filled, 2 member processes."""
    n = 400_000
    state = {}

    def run():
        state["go"].set()
        got = 0
        while got < n:
            got += state["done"].get(timeout=120)[1]

    def teardown(*a, **k):
        reap(state["procs"])
        shutil.rmtree(state["dir"], ignore_errors=True)

    benchmark.pedantic(run, setup=lambda: _group_setup(state, 4, 2, n), teardown=teardown,
                       rounds=ROUNDS, iterations=1)
    record(benchmark, "group_consume_4p_2c", n, SIZE)
