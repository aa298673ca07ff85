"""The ``queue`` and ``queue-batch`` scenarios of ``fastq bench``: fastq's message queue with
acks (``Broker.queue``) — and, with ``--compare``, the queue peers of
:mod:`fastq.bench.peers` — through one cross-process harness.

- ``queue``: ``--producers`` producer processes publish one message per call while
  ``--consumers`` consumer processes receive one message per call and ack it. Timed from
  the start signal (every process started, connected and waiting) to the last ack. Then
  the redelivery trials below.
- ``queue-batch``: the same with ``publish_many`` of ``QBATCH`` (100) messages and
  ``receive(max_messages=100)`` + ``ack_many``.
- redelivery after kill (the ``queue`` result's ``extra.redelivery``): one message is
  published; consumer A receives it and is sent SIGKILL before it acks; consumer B, already
  waiting, receives it again. Measured from the kill to B's receipt (CLOCK_MONOTONIC, one
  clock for every process on the machine), ``--redelivery-trials`` times; p50 and max in ms.
  fastq's queue runs with a long visibility timeout (``LONG_LEASE_S``, 30 s) so what is
  measured is its detection of a dead consumer session, not a lease running out. Peers with
  no liveness check sweep for messages idle longer than their lease: ``LONG_LEASE_S`` in the
  throughput phases (a short one hands slow messages out twice under load), ``LEASE_S``
  (1 s) in the trials, so the time measured is mostly that lease. A peer with no redelivery
  to a running consumer reports why not.

The first 8 bytes of every message are its id (little-endian int64, ids 0 … n-1 over all
producers). Each consumer sums the ids it acked; the count and the sum against the
published ones say whether every message was delivered exactly once (``exactly_once``).
Throughput phases publish ``--messages`` messages or stop at the ``--seconds`` cap,
whichever comes first, like the other scenarios; consumers drain what was published, but
stop at ``drain_seconds`` (30 s, or 6 × ``--seconds``) for a queue that cannot keep up
(``drained`` false; ``exactly_once`` is then None, not known).
"""
from __future__ import annotations

import operator
import os
import shutil
import signal
import struct
import time

from ..broker import open as open_broker
from ..queue import Message
from .harness import (CTX, WorkloadConfig as Config, exit_child as _exit_child, percentile,
                      raise_child_errors as _raise_child_errors, result, set_up, start_children,
                      stop_children, with_batch)

ID = struct.Struct("<q")        # first 8 bytes of every message: its id
QBATCH = 100                    # publish_many / receive(max_messages) / ack_many batch
LEASE_S = 1.0                   # lease of sweeping peers in the redelivery trials
LONG_LEASE_S = 30.0             # visibility timeout / lease in the throughput phases
SWEEP_S = 0.05                  # how often such a peer's consumer sweeps
RECV_WAIT_S = 0.05              # a consumer's wait per receive in the throughput phases


class QProducer:
    """In a producer child: publish one message, a list of them; close."""

    def send(self, data: bytes) -> object:
        raise NotImplementedError

    def send_many(self, datas: list[bytes]) -> object:
        for d in datas:
            self.send(d)

    def close(self) -> None:
        """Release the connection/queue."""


class QConsumer:
    """In a consumer child: receive up to `n` messages waiting up to `timeout` s ([] if none
    came), a received message's bytes, ack one, ack a list; close."""

    def recv(self, n: int, timeout: float) -> list:
        raise NotImplementedError

    def body(self, msg) -> bytes:
        raise NotImplementedError

    def ack(self, msg) -> None:
        raise NotImplementedError

    def ack_many(self, msgs: list) -> None:
        for m in msgs:
            self.ack(m)

    def close(self) -> None:
        """Release the connection/queue."""


class QueueTransport:
    """What the queue workload needs from a queue with acks. Built in the parent;
    ``setup`` and ``new_round`` run there (before any fork), ``producer()`` and
    ``consumer()`` in the children."""
    name = "?"
    description = ""
    compare_with = ["queue", "queue-batch"]
    # None: redelivery after kill can be measured; else why this queue cannot do it
    redelivery_unsupported: str | None = None
    round = 0       # a fresh queue per phase and per redelivery trial
    lease_s = LONG_LEASE_S      # for peers that sweep: idle this long -> hand out again

    def setup(self, workdir: str, cfg: Config) -> None:
        """Start what the queue needs (a server, a directory)."""

    def new_round(self) -> None:
        """Make the queue of the next phase (parent, no child running)."""
        self.round += 1

    def producer(self) -> QProducer:
        raise NotImplementedError

    def consumer(self) -> QConsumer:
        raise NotImplementedError

    def teardown(self) -> None:
        """Stop/remove what setup made (parent, after the children are gone)."""


# -- fastq ------------------------------------------------------------------------------------

class FastqQueue(QueueTransport):
    name = "fastq"
    description = "cross-process: Queue.publish per message -> receive(1) + ack() per message"
    batch_description = (f"cross-process: Queue.publish_many of {QBATCH} -> receive(max_messages={QBATCH}) "
                         f"+ ack_many")

    def setup(self, workdir, cfg):
        self.path = os.path.join(workdir, "queue")

    def _name(self) -> str:
        return f"bench{self.round}"

    def _open(self, b):
        return b.queue(self._name(), codec="raw", visibility_timeout=LONG_LEASE_S)

    def new_round(self):
        super().new_round()
        with open_broker(self.path) as b:
            self._open(b).close()

    def producer(self):
        tr = self

        class P(QProducer):
            def __init__(self):
                self.b = open_broker(tr.path)
                self.q = tr._open(self.b)
                self.send = self.q.publish
                self.send_many = self.q.publish_many

            def close(self):
                self.q.close()
                self.b.close()
        return P()

    def consumer(self):
        tr = self

        class C(QConsumer):
            def __init__(self):
                self.b = open_broker(tr.path)
                self.q = tr._open(self.b)
                # the public calls themselves, as a user's loop makes them: no wrapper frame
                # per message (receive(n, wait), m.data, m.ack())
                self.recv = self.q.receive
                self.ack_many = self.q.ack_many
                self.body = operator.attrgetter("data")
                self.ack = Message.ack

            def close(self):
                self.q.close()
                self.b.close()
        return C()

    def teardown(self):
        shutil.rmtree(self.path, ignore_errors=True)


# -- throughput -------------------------------------------------------------------------------

def _q_producer(tr, idx, producers, n, size, batch, cap_s, ready, go, sent, errors) -> None:
    code = 0
    try:
        p = tr.producer()
        pad = b"p" * (size - ID.size)
        pack = ID.pack
        ready.release()
        go.wait()
        end = time.monotonic() + cap_s
        i = 0
        if batch == 1:
            send = p.send
            while i < n:
                k = min(i + 1024, n)
                for j in range(i, k):
                    send(pack(j * producers + idx) + pad)
                i = k
                if time.monotonic() > end:
                    break
        else:
            send_many = p.send_many
            while i < n:
                k = min(i + batch, n)
                send_many([pack(j * producers + idx) + pad for j in range(i, k)])
                i = k
                if time.monotonic() > end:
                    break
        p.close()
        sent[idx] = i
    except BaseException as e:  # reported to the parent, which raises
        errors.put(f"producer {idx}: {type(e).__name__}: {e}")
        code = 1
    errors.close()                  # flush the report before the _exit (the queue's feeder thread)
    errors.join_thread()
    _exit_child(code)


def _q_consumer(tr, idx, producers, batch, give_up_s, drain_s, ready, go, sent, acked, out) -> None:
    got = idsum = t_last = 0
    try:
        c = tr.consumer()
        recv, body, ack, ack_many = c.recv, c.body, c.ack, c.ack_many
        unpack = ID.unpack_from
        consumers = len(acked)
        ready.release()
        go.wait()
        t_last = time.monotonic_ns()
        idle_since = time.monotonic()
        stop_at = idle_since + drain_s
        next_check = 0
        while True:
            msgs = recv(batch, RECV_WAIT_S)
            if msgs:
                for m in msgs:
                    idsum += unpack(body(m))[0]
                if batch == 1:
                    for m in msgs:
                        ack(m)
                else:
                    ack_many(msgs)
                got += len(msgs)
                t_last = time.monotonic_ns()
                del msgs
                if got < next_check:          # the bookkeeping below every 256 messages, not
                    continue                  # per message: it would cost as much as a fast queue
                next_check = got + 256
                acked[idx] = got
                idle_since = time.monotonic()
            else:
                acked[idx] = got
                if time.monotonic() - idle_since > give_up_s:
                    raise TimeoutError(f"acked {got} messages, then nothing for {give_up_s:.0f} s")
            if time.monotonic() > stop_at:    # a queue far slower than its producers
                break
            total = 0
            for i in range(producers):
                s = sent[i]
                if s < 0:
                    break
                total += s
            else:
                if sum(acked[j] for j in range(consumers)) >= total:
                    break
        c.close()
        out.put(("ok", got, idsum, t_last))
    except BaseException as e:
        out.put(("error", f"consumer {idx}: {type(e).__name__}: {e}", 0, 0))
    out.close()
    out.join_thread()
    _exit_child(0)


def drain_seconds(cfg: Config) -> float:
    """How long consumers keep at it after the start signal: producers stop at the
    ``--seconds`` cap, and a queue whose consumers are far slower than its producers is not
    waited for past this."""
    return max(30.0, 6 * cfg.seconds)


def _expected_idsum(sent: list[int]) -> int:
    producers = len(sent)
    return sum(producers * s * (s - 1) // 2 + idx * s for idx, s in enumerate(sent))


def run_queue(tr: QueueTransport, cfg: Config, *, n: int, batch: int) -> dict:
    """``cfg.producers`` producer processes and ``cfg.consumers`` consumer processes on one
    fresh queue of `tr`; returns {"published", "delivered", "seconds", "drained",
    "exactly_once"}. The consumers stop at ``drain_seconds(cfg)`` even if the queue still
    holds messages then (``drained`` false, ``exactly_once`` None: not known)."""
    tr.new_round()
    producers, consumers = cfg.producers, cfg.consumers
    per = [n // producers + (1 if i < n % producers else 0) for i in range(producers)]
    sent = CTX.RawArray("q", [-1] * producers)
    acked = CTX.RawArray("q", [0] * consumers)
    ready, go = CTX.Semaphore(0), CTX.Event()
    out, errors = CTX.Queue(), CTX.Queue()
    give_up = max(60.0, 4 * cfg.seconds)
    drain = drain_seconds(cfg)
    procs = [CTX.Process(target=_q_consumer, daemon=True,
                         args=(tr, i, producers, batch, give_up, drain, ready, go, sent, acked, out))
             for i in range(consumers)]
    procs += [CTX.Process(target=_q_producer, daemon=True,
                          args=(tr, i, producers, per[i], cfg.size, batch, cfg.seconds, ready, go, sent, errors))
              for i in range(producers)]
    try:
        t0 = start_children(procs, ready, go, errors, tr.name)
        reports = []
        while len(reports) < consumers:
            try:
                reports.append(out.get(timeout=1.0))
            except Exception:
                _raise_child_errors(errors)
                dead = [p for p in procs[:consumers] if not p.is_alive()]
                if len(dead) > len(reports):
                    raise RuntimeError(f"{tr.name}: a consumer process died "
                                       f"(exit code {dead[0].exitcode})") from None
        for status, msg, _, _ in reports:
            if status != "ok":
                raise RuntimeError(f"{tr.name}: {msg}")
        for p in procs[consumers:]:       # producers: done by their cap, long before the drain limit
            p.join(60)
        _raise_child_errors(errors)
        sent_l = list(sent)
        if min(sent_l) < 0:
            raise RuntimeError(f"{tr.name}: a producer did not finish")
        delivered = sum(r[1] for r in reports)
        published = sum(sent_l)
        drained = delivered >= published
        return {"published": published, "delivered": delivered,
                "seconds": max(max(r[3] for r in reports) - t0, 1) / 1e9, "drained": drained,
                "exactly_once": (delivered == published and sum(r[2] for r in reports) == _expected_idsum(sent_l))
                if drained else None}
    finally:
        stop_children(procs, go, (out, errors))


# -- redelivery after kill ----------------------------------------------------------------------

def _victim(tr, got) -> None:
    """Consumer A: receive the one message, say so, and hang until killed (never acks)."""
    try:
        c = tr.consumer()
        give_up = time.monotonic() + 30
        while time.monotonic() < give_up:
            if c.recv(1, RECV_WAIT_S):
                got.put(("ok", time.monotonic_ns()))
                break
        else:
            got.put(("error", "consumer A received nothing in 30 s"))
        got.close()
        got.join_thread()
        time.sleep(3600)
    except BaseException as e:
        got.put(("error", f"consumer A: {type(e).__name__}: {e}"))
        got.close()
        got.join_thread()
    _exit_child(1)


def _survivor(tr, ready, out, give_up_s) -> None:
    """Consumer B: wait for the message A held, note when it came, ack it."""
    try:
        c = tr.consumer()
        ready.release()
        give_up = time.monotonic() + give_up_s
        while time.monotonic() < give_up:
            msgs = c.recv(1, 0.01)
            if msgs:
                t = time.monotonic_ns()
                c.ack(msgs[0])
                out.put(("ok", t))
                break
        else:
            out.put(("timeout", 0))
        c.close()
    except BaseException as e:
        out.put(("error", f"consumer B: {type(e).__name__}: {e}"))
    out.close()
    out.join_thread()
    _exit_child(0)


def redelivery_trial(tr: QueueTransport, give_up_s: float = 30.0) -> float | None:
    """One trial; ms from SIGKILL of the consumer holding the message to its receipt by
    another consumer, None when it did not come within `give_up_s`."""
    tr.new_round()
    p = tr.producer()
    p.send(ID.pack(0) + b"r" * 8)
    p.close()
    got, out, ready = CTX.Queue(), CTX.Queue(), CTX.Semaphore(0)
    a = CTX.Process(target=_victim, args=(tr, got), daemon=True)
    b = None
    try:
        a.start()
        status, what = got.get(timeout=60)
        if status != "ok":
            raise RuntimeError(f"{tr.name}: {what}")
        b = CTX.Process(target=_survivor, args=(tr, ready, out, give_up_s), daemon=True)
        b.start()
        if not ready.acquire(timeout=60):
            raise RuntimeError(f"{tr.name}: consumer B did not get ready in 60 s")
        time.sleep(0.05)                # B is waiting in its receive loop
        t_kill = time.monotonic_ns()
        os.kill(a.pid, signal.SIGKILL)
        a.join()
        status, t = out.get(timeout=give_up_s + 30)
        if status == "timeout":
            return None
        if status != "ok":
            raise RuntimeError(f"{tr.name}: {t}")
        return (t - t_kill) / 1e6
    finally:
        for proc in (a, b):
            if proc is None:
                continue
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for q in (got, out):
            q.close()
            q.join_thread()


def redelivery_summary(tr: QueueTransport, trials: int) -> dict:
    """{"trials", "p50_ms", "max_ms", "values_ms", "timeouts"} — or, for a queue that cannot
    hand a dead consumer's message to another, {"supported": false, "reason"}."""
    if tr.redelivery_unsupported:
        return {"supported": False, "reason": tr.redelivery_unsupported}
    tr.lease_s = LEASE_S
    try:
        values = [redelivery_trial(tr) for _ in range(trials)]
    finally:
        tr.lease_s = LONG_LEASE_S
    ok = sorted(v for v in values if v is not None)
    return {"supported": True, "trials": trials, "timeouts": len(values) - len(ok),
            "p50_ms": round(percentile(ok, 50), 2) if ok else None,
            "max_ms": round(ok[-1], 2) if ok else None,
            "values_ms": [None if v is None else round(v, 2) for v in values]}


# -- scenarios --------------------------------------------------------------------------------

def queue_phase(name: str, tr: QueueTransport, cfg: Config, batch: int, **extra) -> dict:
    r = run_queue(tr, cfg, n=cfg.messages, batch=batch)
    return result(name, tr.description if batch == 1 else batch_description(tr), r["delivered"], cfg.size,
                  r["seconds"], producers=cfg.producers, consumers=cfg.consumers, batch=batch,
                  published=r["published"], drained=r["drained"], exactly_once=r["exactly_once"], **extra)


def batch_description(tr: QueueTransport) -> str:
    return getattr(tr, "batch_description", None) or f"{tr.description}, in batches of {QBATCH}"


def sc_queue(cfg: Config, workdir: str) -> dict:
    with set_up(FastqQueue(), cfg, workdir) as tr:
        r = queue_phase("queue", tr, cfg, 1)
        r["extra"]["redelivery"] = redelivery_summary(tr, cfg.redelivery_trials)
        return r


def sc_queue_batch(cfg: Config, workdir: str) -> dict:
    with set_up(FastqQueue(), cfg, workdir) as tr:
        return queue_phase("queue-batch", tr, cfg, QBATCH)


def run_queue_peer(tr: QueueTransport, cfg: Config, workdir: str) -> dict:
    """A peer's whole queue workload: one-by-one (the result's main fields), batches (in
    ``extra.batch``) and redelivery after kill; ``extra.messages_per_s_by_scenario`` gives
    the rate to set beside each fastq scenario."""
    with set_up(tr, cfg, workdir):
        one = with_batch(queue_phase(tr.name, tr, cfg, 1), queue_phase(tr.name, tr, cfg, QBATCH),
                         ("published", "drained", "exactly_once"), ("queue", "queue-batch"))
        one["extra"]["redelivery"] = redelivery_summary(tr, cfg.redelivery_trials)
        return one
