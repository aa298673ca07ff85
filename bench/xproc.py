"""Cross-process workloads for the benchmarks: one producer process, one or more consumer
processes, started before the timed region and released together by an Event.

Each workload returns (setup, run, teardown) pieces for ``benchmark.pedantic``: ``setup``
starts the processes and waits until they are ready, the timed ``run`` releases them and
waits until every consumer has received every message, ``teardown`` reaps them.

The timed region ends when the consumer has the last message, for fastq as for the
Queue: each side reports before it shuts down, so a fastq broker's close (which fsyncs
the log, as a clean close does) is no more timed than the Queue's feeder-thread join.
"""
from __future__ import annotations

import functools
import multiprocessing as mp
import os
import shutil
import struct
import tempfile
import time

import fastq

CTX = mp.get_context("fork")
STAMP = struct.Struct("<q")


def payload(size: int) -> bytes:
    return b"x" * size


def pin(cpu: int) -> None:
    """Pin this process to one CPU (index into the allowed set) so a paced producer and a
    tailing consumer never share a core; as bench_ring does. No-op with < 2 CPUs."""
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[cpu]})


def steal_ms() -> float | None:
    """CPU time the hypervisor took from this guest (all CPUs, ms since boot; Linux's
    /proc/stat "steal", in clock ticks), or None where there is no such count. The
    latency benchmarks report it per round: a round with time stolen under it has stalls
    no waiting strategy can hide."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) * 1000.0 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def start(procs, ready) -> None:
    """Start the workload's processes and wait until the consumer says it is ready."""
    for p in procs:
        p.start()
    ready.wait(30)


def reap(procs) -> None:
    """Join the processes (kill one that does not finish within 30 s)."""
    for p in procs:
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join()


def paced_send(n: int, rate: float, size: int, send) -> None:
    """Call send(msg) n times at `rate` per second from CPU 0, each `size`-byte msg
    starting with the monotonic ns it was sent at. Sleeps most of each gap and spins
    the last 100 us: a sender spinning the whole gap would take a core from the
    receiver on a 2-core machine."""
    pad = b"p" * (size - STAMP.size)
    pin(0)
    interval = 1.0 / rate
    nxt = time.perf_counter()
    for _ in range(n):
        left = nxt - time.perf_counter()
        if left > 150e-6:
            time.sleep(left - 100e-6)
        while time.perf_counter() < nxt:
            pass
        send(STAMP.pack(time.monotonic_ns()) + pad)
        nxt += interval


def _report(q, msg) -> None:
    """Send a result and exit the child at once (skipping atexit and the parent's
    inherited handlers). The queue's feeder thread must flush before os._exit."""
    if msg is not None:
        q.put(msg)
    q.close()
    q.join_thread()
    os._exit(0)


# -- fastq ---------------------------------------------------------------------------------

def fastq_producer(path, topic, n, size, batch, rate, go, done):
    with fastq.open(path) as b:
        t = b.topic(topic)
        go.wait()
        if rate:
            paced_send(n, rate, size, functools.partial(t.publish, partition=0))
        elif batch == -1:                       # the batching producer: one send() per message
            msg = payload(size)
            with t.producer(linger_ms=1) as prod:
                send = prod.send
                for _ in range(n):
                    send(msg, partition=0)
        elif batch > 1:
            msg = payload(size)
            msgs = [msg] * batch
            for i in range(0, n, batch):
                t.publish_many(msgs[: min(batch, n - i)], partition=0)
        else:
            msg = payload(size)
            publish = t.publish
            for _ in range(n):
                publish(msg, partition=0)
        done.put(("producer", n))               # every record is appended; close() follows
    _report(done, None)


def fastq_consumer(path, topic, n, go, ready, done, latency, spin_us=50.0, wait="futex"):
    """Tail partition 0 with a LogReader and Log.wait (wait="adaptive": with a Pacer),
    or, for wait="consumer" / "consumer-adaptive", through the public Consumer API."""
    if wait.startswith("consumer"):
        return fastq_api_consumer(path, topic, n, go, ready, done, latency, spin_us, wait)
    lat = []
    pacer = fastq.Pacer() if wait == "adaptive" else None
    with fastq.open(path) as b:
        t = b.topic(topic)
        lg = t.log(0)
        ready.set()
        go.wait()
        if latency:
            pin(1)
        rd = lg.read(lg.start_offset, follow=True)    # one reader, tailing
        got = 0
        while got < n:
            if not lg.wait(rd.next_offset, timeout=30, spin_us=spin_us, pacer=pacer):
                break
            while True:
                values = rd.read_values(4096)          # bytes copies: what a Queue hands out
                if not values:
                    break
                if latency:
                    now = time.monotonic_ns()
                    for v in values:
                        lat.append(now - STAMP.unpack_from(v)[0])
                got += len(values)
        done.put(("consumer", got, lat))        # the clock stops here, not after close()
    _report(done, None)


def fastq_api_consumer(path, topic, n, go, ready, done, latency, spin_us, wait):
    lat = []
    with fastq.open(path) as b:
        c = b.topic(topic).consumer(from_="earliest", spin_us=spin_us,
                                    wait="adaptive" if wait == "consumer-adaptive" else "futex")
        ready.set()
        go.wait()
        if latency:
            pin(1)
        got = 0
        while got < n:
            recs = c.poll(4096, timeout=30)
            if not recs:
                break
            if latency:
                now = time.monotonic_ns()
                for r in recs:
                    lat.append(now - STAMP.unpack_from(r.value)[0])
            got += len(recs)
            del recs
        done.put(("consumer", got, lat))
        c.close()
    _report(done, None)


def fastq_group_consumer(path, topic, group, total, go, ready, done):
    got = 0
    with fastq.open(path) as b:
        t = b.topic(topic)
        c = t.consumer(group=group, from_="earliest", session_timeout_ms=5000)
        ready.set()
        go.wait()
        # each member reports what it got; the parent sums until `total`
        idle_since = None
        while True:
            recs = c.poll(4096, timeout=0.2)
            if recs:
                got += len(recs)
                idle_since = None
                done.put(("consumer", len(recs), []))
                del recs
            else:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 2.0:
                    break
        c.close()
    _report(done, None)


class FastqPipe:
    """setup/run/teardown for fastq: 1 producer -> 1 consumer on a 1-partition topic."""

    def __init__(self, n, size, batch=1, rate=0, latency=False, spin_us=50.0, wait="futex"):
        self.n, self.size, self.batch, self.rate, self.latency = n, size, batch, rate, latency
        self.spin_us, self.wait = spin_us, wait
        self.result = None

    def setup(self):
        self.dir = tempfile.mkdtemp(prefix="fastq-bench-")
        with fastq.open(self.dir) as b:
            b.topic("bench", partitions=1)
        self.go, ready, self.done = CTX.Event(), CTX.Event(), CTX.Queue()
        self.procs = [
            CTX.Process(target=fastq_consumer, args=(self.dir, "bench", self.n, self.go, ready, self.done, self.latency,
                                                     self.spin_us, self.wait)),
            CTX.Process(target=fastq_producer, args=(self.dir, "bench", self.n, self.size, self.batch, self.rate,
                                                     self.go, self.done)),
        ]
        start(self.procs, ready)
        return (), {}

    def run(self):
        before = steal_ms()
        self.go.set()
        while True:                 # the producer's report may come first; the consumer's ends it
            got = self.done.get(timeout=600)
            if got[0] == "consumer":
                break
        self.result = got
        self.steal_ms = _stolen(before)
        assert got[1] == self.n, f"consumer got {got[1]} of {self.n}"

    def teardown(self):
        reap(self.procs)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- multiprocessing.Queue ---------------------------------------------------------------

def mpq_producer(q, n, size, batch, go, rate=0):
    msg = payload(size)
    go.wait()
    if rate:
        paced_send(n, rate, size, q.put)
    elif batch > 1:
        msgs = [msg] * batch
        for i in range(0, n, batch):
            q.put(msgs[: min(batch, n - i)])
    else:
        put = q.put
        for _ in range(n):
            put(msg)
    q.close()
    q.join_thread()
    os._exit(0)


def mpq_consumer(q, n, batch, go, ready, done, latency=False):
    ready.set()
    go.wait()
    got = 0
    get = q.get
    lat = []
    if latency:
        pin(1)
        while got < n:
            item = get()
            lat.append(time.monotonic_ns() - STAMP.unpack_from(item)[0])
            got += 1
    while got < n:
        item = get()
        got += len(item) if batch > 1 else 1
    _report(done, ("consumer", got, lat))


class MPQueuePipe:
    """The same workload through multiprocessing.Queue (pickled, through a pipe);
    ``rate``/``latency`` as FastqPipe's."""

    def __init__(self, n, size, batch=1, rate=0, latency=False):
        self.n, self.size, self.batch, self.rate, self.latency = n, size, batch, rate, latency
        self.result = None

    def setup(self):
        self.q = CTX.Queue()
        self.go, ready, self.done = CTX.Event(), CTX.Event(), CTX.Queue()
        self.procs = [
            CTX.Process(target=mpq_consumer, args=(self.q, self.n, self.batch, self.go, ready, self.done,
                                                   self.latency)),
            CTX.Process(target=mpq_producer, args=(self.q, self.n, self.size, self.batch, self.go, self.rate)),
        ]
        start(self.procs, ready)
        return (), {}

    def run(self):
        before = steal_ms()
        self.go.set()
        msg = self.done.get(timeout=600)
        assert msg[1] == self.n
        self.result = msg
        self.steal_ms = _stolen(before)

    def teardown(self):
        reap(self.procs)
        self.q.close()
        self.q.join_thread()


def _stolen(before: float | None) -> float | None:
    after = steal_ms()
    return None if before is None or after is None else round(after - before, 1)


def percentiles(values_ns, qs=(50, 90, 99, 99.9)):
    v = sorted(values_ns)
    if not v:
        return {}
    out = {}
    for q in qs:
        i = min(len(v) - 1, max(0, int(round(q / 100 * (len(v) - 1)))))
        out[f"p{q:g}_us"] = round(v[i] / 1000, 2)
    out["max_us"] = round(v[-1] / 1000, 2)
    return out
