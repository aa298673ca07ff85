"""The ``pubsub`` scenario of ``fastq bench`` (fan-out through ``Broker.pubsub``) and, with
``--compare``, its peer Redis pub/sub, through one cross-process harness.

``SUBSCRIBERS`` (4) subscriber processes subscribe, each with a different wildcard pattern
that matches the channel (``orders.*.created``, ``orders.>``, ``orders.eu.*``, glob
``orders.*``; Redis: ``PSUBSCRIBE orders.*``), and get ready; after the start signal the
benchmark process publishes ``--size``-byte messages to ``orders.eu.created`` in batches of
``PBATCH`` (1,000): ``publish_many`` for fastq (a durable namespace, durability "os"), a
pipeline of 1,000 ``PUBLISH`` for Redis. It publishes ``--messages`` messages or stops at
the ``--seconds`` cap. Each subscriber reads in batches (fastq: ``poll(5000)``; Redis: the
raw socket parsed by hiredis, whatever one ``recv`` brings) until it has every message
published. The rate is the total delivered (subscribers × published) over the time from
the start signal to the last subscriber's last message. The Redis peer runs as fast as
Python can drive it (raw sockets, hiredis; redis-py's ``get_message`` loop is ~10× slower),
with the pub/sub output-buffer limit off so a slow subscriber is not disconnected.
"""
from __future__ import annotations

import os
import socket
import time

from ..broker import open as open_broker
from .harness import (CTX, WorkloadConfig as Config, exit_child as _exit_child, raise_child_errors,
                      result, start_children, stop_children)
from .servers import start_redis, stop

SUBSCRIBERS = 4
PBATCH = 1000
CHANNEL = "orders.eu.created"
PATTERNS = [("nats", "orders.*.created"), ("nats", "orders.>"), ("nats", "orders.eu.*"), ("glob", "orders.*")]
READ_WAIT_S = 0.1            # a subscriber's wait per read: how often it looks at the target


class PubSubTransport:
    """One pub/sub system: ``publisher()`` in the benchmark process, ``subscriber(i)`` in
    subscriber process i (made before the start signal, so it misses nothing)."""

    name = "fastq"
    description = ""
    compare_with: list[str] = []

    def setup(self, workdir: str, cfg: Config) -> None: ...

    def teardown(self) -> None: ...

    def publisher(self):
        """(publish_batch(payloads), close)"""
        raise NotImplementedError

    def subscriber(self, idx: int):
        """(read(timeout) -> messages taken, close)"""
        raise NotImplementedError


class FastqPubSub(PubSubTransport):
    description = (f"cross-process fan-out: publish_many of {PBATCH} to one channel -> "
                   f"{SUBSCRIBERS} subscriber processes with wildcard patterns, poll(5000) (durable)")

    def setup(self, workdir, cfg):
        self.path = os.path.join(workdir, "broker")

    def publisher(self):
        b = open_broker(self.path)
        ps = b.pubsub("bench", durable=True)

        def close():
            ps.close()
            b.close()
        return (lambda payloads: ps.publish_many(CHANNEL, payloads)), close

    def subscriber(self, idx):
        b = open_broker(self.path)
        ps = b.pubsub("bench")
        syntax, pattern = PATTERNS[idx % len(PATTERNS)]
        sub = ps.subscribe(pattern, syntax=syntax, max_poll=5000)

        def close():
            ps.close()
            b.close()
        return (lambda timeout: len(sub.poll(5000, timeout))), close


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class RedisPubSub(PubSubTransport):
    name = "Redis pub/sub"
    description = (f"cross-process fan-out: pipelined PUBLISH x{PBATCH} -> {SUBSCRIBERS} PSUBSCRIBE "
                   "processes (raw sockets + hiredis)")
    compare_with = ["pubsub"]
    module = "hiredis"
    binary = "redis-server"

    def setup(self, workdir, cfg):
        self.proc, self.port, self.dir = start_redis(workdir)
        self._call(_resp(b"CONFIG", b"SET", b"client-output-buffer-limit", b"pubsub 0 0 0"))

    def _connect(self):
        import hiredis  # noqa: PLC0415 - a peer's client library, imported only where it runs

        return socket.create_connection(("127.0.0.1", self.port)), hiredis.Reader()

    def _call(self, cmd: bytes):
        s, rd = self._connect()
        try:
            s.sendall(cmd)
            reply = False
            while reply is False:
                rd.feed(s.recv(4096))
                reply = rd.gets()
            return reply
        finally:
            s.close()

    def publisher(self):
        s, rd = self._connect()
        cache: dict[int, bytes] = {}

        def publish(payloads):
            cmd = cache.get(id(payloads))
            if cmd is None:
                cmd = cache[id(payloads)] = b"".join(_resp(b"PUBLISH", CHANNEL.encode(), p) for p in payloads)
            s.sendall(cmd)
            left = len(payloads)
            while left:
                rd.feed(s.recv(1 << 16))
                while left and rd.gets() is not False:
                    left -= 1
        return publish, s.close

    def subscriber(self, idx):
        s, rd = self._connect()
        s.sendall(_resp(b"PSUBSCRIBE", b"orders.*"))
        reply = False
        while reply is False:
            rd.feed(s.recv(4096))
            reply = rd.gets()

        def read(timeout):
            s.settimeout(timeout)
            try:
                data = s.recv(1 << 20)
            except (TimeoutError, socket.timeout):
                return 0
            if not data:
                raise RuntimeError("redis closed the subscriber's connection")
            rd.feed(data)
            n = 0
            m = rd.gets()
            while m is not False:
                n += m[0] == b"pmessage"
                m = rd.gets()
            return n
        return read, s.close

    def teardown(self):
        stop(self.proc)


def _subscriber_child(tr, idx, target, done, ready, go, errors) -> None:
    code = 0
    try:
        read, close = tr.subscriber(idx)
        ready.release()
        go.wait()
        got = 0
        while True:
            want = target.value
            if 0 <= want <= got:
                break
            n = read(READ_WAIT_S)
            got += n
            if n:
                done[2 * idx + 1] = time.monotonic_ns()      # the last message's arrival
        done[2 * idx] = got
        close()
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        errors.put(f"subscriber {idx}: {type(e).__name__}: {e}")
        code = 1
    _exit_child(code)


def run_pubsub(tr: PubSubTransport, cfg: Config, workdir: str) -> dict:
    """Run the fan-out workload through ``tr`` (set up and torn down here)."""
    tr.setup(workdir, cfg)
    try:
        ready, go, errors = CTX.Semaphore(0), CTX.Event(), CTX.Queue()
        target = CTX.Value("q", -1, lock=False)
        done = CTX.Array("q", 2 * SUBSCRIBERS, lock=False)
        procs = [CTX.Process(target=_subscriber_child, args=(tr, i, target, done, ready, go, errors), daemon=True)
                 for i in range(SUBSCRIBERS)]
        publish, close = tr.publisher()
        try:
            t0 = start_children(procs, ready, go, errors, tr.name)
            payloads = [b"x" * cfg.size] * PBATCH
            n = max(PBATCH, cfg.messages // PBATCH * PBATCH)
            cap = t0 + int(cfg.seconds * 1e9)
            published = 0
            while published < n and time.monotonic_ns() < cap:
                publish(payloads)
                published += PBATCH
            target.value = published
            end = time.monotonic() + max(60.0, 6 * cfg.seconds)
            for p in procs:
                p.join(max(0.0, end - time.monotonic()))
            raise_child_errors(errors)
            got = [done[2 * i] for i in range(SUBSCRIBERS)]
            if got != [published] * SUBSCRIBERS:
                raise RuntimeError(f"{tr.name}: subscribers got {got} of {published} messages")
            seconds = (max(done[2 * i + 1] for i in range(SUBSCRIBERS)) - t0) / 1e9
        finally:
            close()
            stop_children(procs, go, [errors])
    finally:
        tr.teardown()
    return result("pubsub" if tr.name == "fastq" else tr.name, tr.description, published * SUBSCRIBERS,
                  cfg.size, seconds, None, subscribers=SUBSCRIBERS, published=published, batch=PBATCH)


def sc_pubsub(cfg: Config, workdir: str) -> dict:
    return run_pubsub(FastqPubSub(), cfg, workdir)


PUBSUB_PEERS: list[type] = [RedisPubSub]

__all__ = ["PubSubTransport", "FastqPubSub", "RedisPubSub", "run_pubsub", "sc_pubsub", "PUBSUB_PEERS",
           "SUBSCRIBERS", "PBATCH"]
