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

Queue peers (compared with the ``queue`` and ``queue-batch`` scenarios; the harness is
:mod:`fastq.bench.queue_scenarios`): each runs one message per call, batches of 100, and
redelivery after a consumer holding a message is killed with SIGKILL.

- RabbitMQ: the distribution's ``rabbitmq-server`` (its own node name, cookie, epmd port
  and files under the run's directory), a durable classic queue, persistent messages
  (``delivery_mode=2``) published without confirms, ``basic_qos`` prefetch 100, manual acks.
  A killed consumer's TCP connection closes, and the broker requeues its unacked messages.
- Redis Streams with a consumer group: XADD -> XREADGROUP + XACK. Redis has no liveness
  check: consumers XAUTOCLAIM entries idle longer than their lease (30 s; 1 s in the
  redelivery trials).
- litequeue: put -> pop + done; consumers put back messages locked longer than their lease
  (``list_locked`` + ``retry``, what litequeue offers; 30 s, 1 s in the redelivery trials).
- persist-queue's ``SQLiteAckQueue``: put -> get + ack(id); it cannot hand a dead
  consumer's item to a running one, so its redelivery is reported as unsupported.

Task-queue peers (Huey on SQLite, the Python port of BullMQ; compared with the ``tasks``
and ``tasks-bulk`` scenarios) are in :mod:`fastq.bench.task_peers`; Redis pub/sub (compared
with the ``pubsub`` scenario) in :mod:`fastq.bench.pubsub_scenarios`.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from .servers import free_port as _free_port, start_redis as _start_redis, stop as _stop
from .servers import wait_port as _wait_port, which as _which
from .queue_scenarios import LEASE_S, LONG_LEASE_S, QBATCH, SWEEP_S, QConsumer, QProducer, QueueTransport, run_queue_peer
from .scenarios import CTX, STAMP, Config, Transport, pipe_scenario
from .pubsub_scenarios import PUBSUB_PEERS, PubSubTransport, run_pubsub
from .task_peers import TASK_PEERS
from .task_scenarios import TaskTransport, run_task_peer

POLL_SLEEP = 0.0005


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
        self.proc, self.port, self.dir = _start_redis(workdir)
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


# -- queue peers: the ``queue`` / ``queue-batch`` workload (acks) -----------------------------

class PersistAckQueue(QueueTransport):
    name = "persist-queue ack"
    description = ("cross-process: persistqueue.SQLiteAckQueue put per message -> get (polled) + ack(id) "
                   "per message")
    batch_description = (f"cross-process: SQLiteAckQueue, {QBATCH} puts (it has no batch put) -> up to "
                         f"{QBATCH} gets + acks (no batch get or ack)")
    module = "persistqueue"
    redelivery_unsupported = ("SQLiteAckQueue has no lease and no liveness check: a killed consumer's "
                              "unacked items come back only when a queue is opened with auto_resume, which "
                              "resets every consumer's unacked items")

    def setup(self, workdir, cfg):
        self.dir = os.path.join(workdir, "persist-ack")

    def _open(self):
        import persistqueue

        # auto_resume off: opening must not hand back the other consumers' unacked items
        return persistqueue.SQLiteAckQueue(os.path.join(self.dir, str(self.round)), multithreading=True,
                                           auto_resume=False)

    def new_round(self):
        super().new_round()
        self._open().close()

    def producer(self):
        q = self._open()

        class P(QProducer):
            send = staticmethod(q.put)
            close = staticmethod(q.close)
        return P()

    def consumer(self):
        import persistqueue

        q = self._open()

        class C(QConsumer):
            def recv(self, n, timeout):
                end = time.monotonic() + timeout
                out = []
                while len(out) < n:
                    try:
                        out.append(q.get(block=False, raw=True))
                    except persistqueue.Empty:
                        if out or time.monotonic() > end:
                            break
                        time.sleep(POLL_SLEEP)
                return out

            def body(self, m):
                return m["data"]

            def ack(self, m):
                q.ack(id=m["pqid"])

            close = staticmethod(q.close)
        return C()

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class LiteQueueAck(QueueTransport):
    name = "litequeue ack"
    description = (f"cross-process: litequeue put per message -> pop (polled) + done per message; "
                   f"consumers retry messages locked over {LONG_LEASE_S:g} s ({LEASE_S:g} s in the "
                   f"redelivery trials) with list_locked + retry")
    batch_description = (f"cross-process: litequeue, {QBATCH} puts in one transaction -> up to {QBATCH} "
                         f"pops (no batch pop) + their done in one transaction")
    module = "litequeue"

    def setup(self, workdir, cfg):
        self.dir = os.path.join(workdir, "litequeue-ack")
        os.makedirs(self.dir, exist_ok=True)

    def _open(self):
        import litequeue

        # SQLite's busy timeout up from 5 s: with a producer and two consumers contending for
        # the write lock, 5 s ran out and a consumer failed ("database is locked")
        return litequeue.LiteQueue(os.path.join(self.dir, f"{self.round}.sqlite3"), timeout=60)

    def new_round(self):
        super().new_round()
        self._open().close()

    def producer(self):
        q = self._open()

        class P(QProducer):
            def send(self, msg):
                return q.put(msg.decode("latin-1"))     # litequeue stores TEXT

            def send_many(self, msgs):
                with q.transaction():
                    for m in msgs:
                        q.put(m.decode("latin-1"))

            close = staticmethod(q.close)
        return P()

    def consumer(self):
        q = self._open()
        next_sweep, lease_s = [0.0], self.lease_s

        class C(QConsumer):
            def recv(self, n, timeout):
                end = time.monotonic() + timeout
                out = []
                while len(out) < n:
                    now = time.monotonic()
                    if now >= next_sweep[0]:    # the lease: locked too long -> ready again
                        next_sweep[0] = now + SWEEP_S
                        for m in list(q.list_locked(lease_s)):
                            q.retry(m.message_id)
                    m = q.pop()
                    if m is not None:
                        out.append(m)
                        continue
                    if out:
                        break
                    # empty: wait with peek (a read) rather than pop (a write transaction
                    # each time, which starved the producer of SQLite's write lock)
                    while q.peek() is None and time.monotonic() <= end:
                        time.sleep(POLL_SLEEP)
                    if time.monotonic() > end:
                        break
                return out

            def body(self, m):
                return m.data.encode("latin-1")

            def ack(self, m):
                q.done(m.message_id)

            def ack_many(self, msgs):
                with q.transaction():
                    for m in msgs:
                        q.done(m.message_id)

            close = staticmethod(q.close)
        return C()

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisStreamsGroup(QueueTransport):
    name = "Redis Streams group"
    description = (f"cross-process: XADD per message -> XREADGROUP COUNT 1 + XACK per message (AOF everysec); "
                   f"consumers XAUTOCLAIM entries idle over {LONG_LEASE_S:g} s ({LEASE_S:g} s in the "
                   f"redelivery trials)")
    batch_description = (f"cross-process: {QBATCH} XADDs in one pipeline -> XREADGROUP COUNT {QBATCH} + one "
                         f"XACK of the {QBATCH} ids")
    module = "redis"
    binary = "redis-server"

    def setup(self, workdir, cfg):
        self.proc, self.port, self.dir = _start_redis(workdir)

    def _client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)

    def new_round(self):
        super().new_round()
        r = self._client()
        r.xgroup_create(f"q{self.round}", "g", id="$", mkstream=True)
        r.close()

    def producer(self):
        r = self._client()
        key = f"q{self.round}"

        class P(QProducer):
            def send(self, msg):
                return r.xadd(key, {b"v": msg})

            def send_many(self, msgs):
                pipe = r.pipeline(transaction=False)
                for m in msgs:
                    pipe.xadd(key, {b"v": m})
                pipe.execute()

            close = staticmethod(r.close)
        return P()

    def consumer(self):
        r = self._client()
        key, me = f"q{self.round}", f"c{os.getpid()}"
        lease_ms = int(self.lease_s * 1000)
        next_sweep = [0.0]

        class C(QConsumer):
            def recv(self, n, timeout):
                now = time.monotonic()
                if now >= next_sweep[0]:        # Redis has no liveness check: claim what idles
                    next_sweep[0] = now + SWEEP_S
                    claimed = r.xautoclaim(key, "g", me, min_idle_time=lease_ms, start_id="0-0", count=n)[1]
                    if claimed:
                        return claimed
                block = max(1, int(min(timeout, next_sweep[0] - now) * 1000))
                res = r.xreadgroup("g", me, {key: ">"}, count=n, block=block)
                return res[0][1] if res else []

            def body(self, m):
                return m[1][b"v"]

            def ack(self, m):
                r.xack(key, "g", m[0])

            def ack_many(self, msgs):
                r.xack(key, "g", *[m[0] for m in msgs])

            close = staticmethod(r.close)
        return C()

    def teardown(self):
        _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def _rabbitmq_server() -> str | None:
    """The server script itself: Debian's ``/usr/sbin/rabbitmq-server`` is a wrapper that
    re-runs it as the rabbitmq user (who cannot write our temporary directory)."""
    found = _which("rabbitmq-server")
    if found is None:
        return None
    real = os.path.realpath(found)
    if os.path.basename(real) == "rabbitmq-script-wrapper":
        inner = os.path.join(os.path.dirname(real), "rabbitmq-server")
        if os.access(inner, os.X_OK):
            return inner
    return found


class RabbitMQ(QueueTransport):
    name = "RabbitMQ"
    description = ("cross-process: basic_publish per message (persistent, durable classic queue, no "
                   f"publisher confirms) -> consumer with basic_qos prefetch {QBATCH}, basic_ack per message")
    batch_description = (f"cross-process: {QBATCH} basic_publish (AMQP has no batch publish) -> up to {QBATCH} "
                         f"deliveries (prefetch {QBATCH}) + one basic_ack(multiple=True)")
    module = "pika"
    binary = "rabbitmq-server"

    def setup(self, workdir, cfg):
        self.dir = os.path.join(workdir, "rabbitmq")
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        self.port, self.epmd_port = _free_port(), _free_port()
        # its own node, cookie (HOME), epmd and files: nothing of a system RabbitMQ is touched
        self.env = {**os.environ, "HOME": self.dir, "RABBITMQ_NODENAME": f"fastqbench{self.port}@localhost",
                    "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
                    "RABBITMQ_DIST_PORT": str(_free_port()), "ERL_EPMD_PORT": str(self.epmd_port),
                    "RABBITMQ_MNESIA_BASE": os.path.join(self.dir, "mnesia"),
                    "RABBITMQ_LOG_BASE": os.path.join(self.dir, "log"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.dir, "enabled_plugins"),
                    "RABBITMQ_PID_FILE": os.path.join(self.dir, "pid"),
                    "RABBITMQ_CONFIG_FILE": os.path.join(self.dir, "rabbitmq"),
                    "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(self.dir, "advanced.config"),
                    "RABBITMQ_CONF_ENV_FILE": os.path.join(self.dir, "rabbitmq-env.conf")}
        self.proc = subprocess.Popen([_rabbitmq_server()], env=self.env, cwd=self.dir, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(self.port, self.proc, timeout=90)
        except BaseException:
            self.teardown()
            raise

    def _params(self):
        import pika

        return pika.ConnectionParameters(host="127.0.0.1", port=self.port, heartbeat=0)

    def new_round(self):
        import pika

        super().new_round()
        conn = pika.BlockingConnection(self._params())
        conn.channel().queue_declare(f"q{self.round}", durable=True)
        conn.close()

    def producer(self):
        import pika

        conn = pika.BlockingConnection(self._params())
        ch = conn.channel()
        name, props = f"q{self.round}", pika.BasicProperties(delivery_mode=2)   # persistent

        class P(QProducer):
            def send(self, msg):
                ch.basic_publish("", name, msg, props)

            close = staticmethod(conn.close)
        return P()

    def consumer(self):
        import collections

        import pika

        conn = pika.BlockingConnection(self._params())
        ch = conn.channel()
        ch.basic_qos(prefetch_count=QBATCH)
        buf = collections.deque()
        ch.basic_consume(f"q{self.round}", lambda _ch, m, _p, body: buf.append((m.delivery_tag, body)))

        class C(QConsumer):
            def recv(self, n, timeout):
                if not buf:
                    conn.process_data_events(time_limit=timeout)
                return [buf.popleft() for _ in range(min(n, len(buf)))]

            def body(self, m):
                return m[1]

            def ack(self, m):
                ch.basic_ack(m[0])

            def ack_many(self, msgs):
                ch.basic_ack(msgs[-1][0], multiple=True)    # tags rise; everything before is ours

            close = staticmethod(conn.close)
        return C()

    def teardown(self):
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)    # the script and the Erlang VM it runs
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        epmd = _which("epmd") or "/usr/lib/erlang/bin/epmd"
        if os.access(epmd, os.X_OK):       # the epmd our node started, on its own port
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


PEERS: list[type] = [MPQueue, FasterFifo, PersistQueue, LiteQueue, RedisStreams, NatsJetStream,
                     PersistAckQueue, LiteQueueAck, RedisStreamsGroup, RabbitMQ, *TASK_PEERS, *PUBSUB_PEERS]


def peer_names() -> list[str]:
    return [p.name for p in PEERS]


def availability(peer: type) -> str | None:
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


def run_peer(peer: type, cfg: Config, workdir: str, *, skip: dict[str, str] | None = None) -> dict:
    """Run one peer's workload (e2e; the queue workload for a queue peer, the task workload
    for a task-queue peer); a skipped or failed peer is returned with its reason."""
    base = {"name": peer.name, "compare_with": list(peer.compare_with), "description": peer.description}
    # what is missing first: it is what a user can fix
    reason = availability(peer) or (skip or {}).get(peer.name)
    if reason:
        return {**base, "status": "skipped", "reason": reason}
    try:
        if issubclass(peer, QueueTransport):
            r = run_queue_peer(peer(), cfg, workdir)
        elif issubclass(peer, TaskTransport):
            r = run_task_peer(peer(), cfg, workdir)
        elif issubclass(peer, PubSubTransport):
            r = run_pubsub(peer(), cfg, workdir)
        else:
            r = pipe_scenario(peer.name, peer(), cfg, workdir)
    except Exception as e:  # a peer failing is reported, not fatal to the run
        return {**base, "status": "failed", "reason": f"{type(e).__name__}: {e}"}
    r.pop("name")
    return {**base, **r, "status": "ok", "reason": None}


__all__ = ["PEERS", "peer_names", "availability", "run_peer", "STAMP"]
