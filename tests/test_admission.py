"""Admission control (fastq.admission; issue 17): the Gate's watermarks, hysteresis, cache
and drain-rate Retry-After on a fake clock; then real servers — uvicorn serving a Starlette
app and a raw ASGI app, wsgiref serving a plain WSGI app — driven with httpx by a load loop
that fills a real fastq queue past its high watermark (503 + Retry-After), drains it under
the low one (200 again), and a limiter's refusals (429)."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import socket
import threading
import time
import wsgiref.simple_server
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import fastq
from fastq.admission import ASGIMiddleware, Gate, WSGIMiddleware, client_ip, header

# -- helpers -------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class FakeQueue:
    """depth() -> an object with .ready/.oldest_age, as fastq.Queue's QueueDepth."""

    def __init__(self, ready=0, oldest_age=0.0):
        self.ready, self.oldest_age, self.calls = ready, oldest_age, 0
        self.block: threading.Event | None = None
        self.fail: Exception | None = None

    def depth(self):
        self.calls += 1
        if self.block is not None:
            self.block.wait(10)
        if self.fail is not None:
            raise self.fail
        return SimpleNamespace(ready=self.ready, oldest_age=self.oldest_age)


class FakeLimiter:
    """``per_key`` points per key, then fastq.RateLimited(retry_after=1.5)."""

    def __init__(self, per_key):
        self.left = collections.defaultdict(lambda: per_key)
        self.calls: list[tuple[int, object]] = []

    def consume(self, points, key=None):
        self.calls.append((points, key))
        if self.left[key] < points:
            raise fastq.RateLimited(f"key {key!r} is over its rate", 1.5, key=key)
        self.left[key] -= points


def fill(q, n):
    q.publish_many([b"x"] * n)


def drain(q, n):
    got = 0
    while got < n:
        ms = q.receive(n - got, wait=0)
        assert ms, f"queue ran dry after {got} of {n}"
        q.ack_many(ms)
        got += len(ms)


@contextlib.contextmanager
def uvicorn_server(app):
    """A real uvicorn on 127.0.0.1, a free port, in a thread; stopped on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="auto", ws="none"))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert t.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        t.join(20)
        sock.close()
        assert not t.is_alive()


class QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def wsgi_server(app):
    """wsgiref.simple_server on 127.0.0.1, a free port, in a thread; stopped on exit."""
    httpd = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        t.join(20)
        httpd.server_close()


def assert_refusal(r, status, error):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error
    assert r.headers["retry-after"] == str(max(1, math.ceil(body["retry_after"])))
    assert r.headers["content-type"] == "application/json" and r.headers["cache-control"] == "no-store"
    return body


@pytest.fixture
def broker(tmp_path):
    with fastq.open(tmp_path / "b") as b:
        yield b


# -- the Gate ------------------------------------------------------------------------------


def test_gate_hysteresis_trips_at_high_and_clears_under_low():
    q, clock = FakeQueue(), Clock()
    g = Gate(q, high=100, low=50, interval=0, clock=clock)
    seq = [(10, None), (99, None), (100, "depth"), (80, "depth"), (50, "depth"), (49, None), (99, None),
           (150, "depth"), (51, "depth"), (0, None)]
    for depth, want in seq:
        clock.t += 1
        q.ready = depth
        v = g.check()
        assert (v and v.reason) == want, (depth, v)
    assert Gate(q, high=10).low == 8                      # low defaults to 80 % of high


def test_gate_samples_once_per_interval_and_never_waits_for_a_sample_in_progress():
    q, clock = FakeQueue(ready=500), Clock()
    g = Gate(q, high=100, interval=0.5, clock=clock)
    for _ in range(100):
        assert g.check().reason == "depth"
    assert q.calls == 1
    clock.t += 0.5
    q.ready = 0
    assert g.check() is None and q.calls == 2
    # a sample stuck in the queue (a cross-process lock): other callers use the last decision
    clock.t += 1
    q.ready, q.block = 500, threading.Event()
    t = threading.Thread(target=g.check)
    t.start()
    deadline = time.monotonic() + 10
    while q.calls < 3:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert g.check() is None and not g.claim()             # answered at once, from the cache
    q.block.set()
    t.join(10)
    assert g.check().reason == "depth" and q.calls == 3


def test_retry_after_is_the_time_to_drain_under_low_at_the_measured_rate():
    q, clock = FakeQueue(ready=1000), Clock()
    g = Gate(q, high=1000, low=500, interval=0, window=10, min_retry_after=1, max_retry_after=60,
             default_retry_after=7, clock=clock)
    assert g.check().retry_after == 7                       # nothing measured yet
    for depth in (900, 800):                                # 100 messages/s
        clock.t += 1
        q.ready = depth
    assert g.check().drain_rate == pytest.approx(100.0)
    assert g.check().retry_after == pytest.approx((800 - 500 + 1) / 100)
    clock.t += 1
    q.ready = 1200                                          # rising: no drain in the window
    assert g.check().retry_after == 7 and g.check().drain_rate is None
    clock.t += 11
    q.ready = 1199                                          # the window moved on: 1 message in 11 s
    assert g.check().drain_rate == pytest.approx(1 / 11) and g.check().retry_after == 60   # clamped
    q2 = FakeQueue(ready=600)
    g2 = Gate(q2, high=500, low=499, interval=0, clock=clock)
    g2.check()
    clock.t += 1
    q2.ready = 510                                          # 90/s, 12 to go: clamped up to 1 s
    assert g2.check().retry_after == 1.0


def test_gate_refuses_while_consumers_lag_and_reads_task_queue_counts():
    q, clock = FakeQueue(ready=100, oldest_age=10.0), Clock()
    g = Gate(q, max_age=4.0, interval=0, clock=clock)
    v = g.check()
    assert v.reason == "lag" and v.oldest_age == 10.0
    clock.t += 1
    q.oldest_age = 3.0
    assert g.check() is None

    class Tasks:
        def counts(self):
            return {"waiting": 3, "prioritized": 4, "paused": 5, "delayed": 100, "active": 7, "completed": 9}
    g = Gate(Tasks(), high=12, interval=0)
    assert g.check().depth == 12


def test_gate_unwraps_async_faces_fails_open_on_a_read_error_and_checks_options(broker, caplog):
    q = broker.queue("jobs")
    aq = fastq.AsyncQueue(q)
    assert Gate(aq, high=5).queue is q
    fill(q, 5)
    g = Gate(aq, high=5, interval=0)
    assert g.check().depth == 5
    fq = FakeQueue(ready=9)
    g = Gate(fq, high=5, interval=0)
    assert g.check().reason == "depth"
    fq.fail = fastq.Closed("queue 'x' is closed")
    with caplog.at_level(logging.WARNING, logger="fastq.admission"):
        assert g.check().reason == "depth"                  # the last decision stands
    assert "Closed" in caplog.text
    for bad in (dict(), dict(high=0), dict(high=10, low=11), dict(high=10, interval=-1),
                dict(max_age=float("nan")), dict(high=5, min_retry_after=9, max_retry_after=2)):
        with pytest.raises(fastq.InvalidArgument):
            Gate(fq, **bad)
    with pytest.raises(fastq.InvalidArgument):
        fastq.admission.read_sample(object())
    with pytest.raises(fastq.InvalidArgument):
        ASGIMiddleware(None, queue=fq, hgih=3)
    with pytest.raises(fastq.InvalidArgument):
        ASGIMiddleware(None, high=3)                        # gate options without a queue
    with pytest.raises(fastq.InvalidArgument):
        WSGIMiddleware(None, limiter=object())


# -- routes --------------------------------------------------------------------------------


def test_rules_match_prefixes_methods_and_routes():
    q = FakeQueue()
    lim = FakeLimiter(1)
    m = ASGIMiddleware(None, queue=q, high=10, methods=["post"], include=["/api"], exclude=["/api/health"],
                       routes={"/upload": {"high": 3, "methods": None}, "/api/free": None,
                               "/login": {"queue": None, "limiter": lim}})
    r = m.rules
    assert r.match("/api/jobs", "POST") is r.default and r.match("/api", "POST") is r.default
    assert r.match("/api/jobs", "GET") is None                     # methods
    assert r.match("/apix", "POST") is None                        # whole segments only
    assert r.match("/api/health", "POST") is None and r.match("/api/free/x", "POST") is None
    up = r.match("/upload/a", "GET")
    assert up.gate.high == 3 and up.gate is not r.default.gate and up.gate.queue is q
    login = r.match("/login", "POST")
    assert login.gate is None and login.limiter is lim
    assert r.match("/other", "POST") is None
    assert len(r.gates) == 2


def test_websocket_and_lifespan_scopes_pass_through_untouched():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])
    q = FakeQueue(ready=10**6)
    m = ASGIMiddleware(app, queue=q, high=1, interval=0)

    async def main():
        for t in ("lifespan", "websocket"):
            await m({"type": t, "path": "/"}, None, None)
    asyncio.run(main())
    assert seen == ["lifespan", "websocket"] and q.calls == 0


def test_key_helpers_read_asgi_scopes_and_wsgi_environs():
    scope = {"type": "http", "client": ("10.0.0.7", 5555), "headers": [(b"x-api-key", b"k1")]}
    environ = {"REQUEST_METHOD": "GET", "REMOTE_ADDR": "10.0.0.8", "HTTP_X_API_KEY": "k2"}
    assert client_ip(scope) == "10.0.0.7" and client_ip(environ) == "10.0.0.8"
    assert header("X-Api-Key")(scope) == "k1" and header("x-api-key")(environ) == "k2"
    assert header("x-other")(scope) is None and header("x-other")(environ) is None


# -- real servers --------------------------------------------------------------------------


def starlette_app(q, limiter, started):
    aq = fastq.AsyncQueue(q)

    async def publish(request):
        await aq.publish(await request.body())
        return PlainTextResponse("queued")

    async def hello(request):
        return PlainTextResponse("hi")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        started.append(True)                                # lifespan reached the app through us
        yield

    return Starlette(routes=[Route("/jobs", publish, methods=["POST"]), Route("/health", hello),
                             Route("/login", hello, methods=["POST"])],
                     lifespan=lifespan,
                     middleware=[Middleware(ASGIMiddleware, queue=q, high=50, low=20, interval=0,
                                            default_retry_after=1, methods=["POST"], exclude=["/health"],
                                            routes={"/login": {"queue": None, "limiter": limiter,
                                                               "key": header("x-user")}})])


def load_until_refused(client, url, limit=500):
    """POST until the server refuses; returns (accepted, the refusal)."""
    for i in range(limit):
        r = client.post(url, content=b"job")
        if r.status_code != 200:
            return i, r
    raise AssertionError(f"no refusal after {limit} requests")


def test_uvicorn_starlette_503_above_high_recovers_under_low_and_429_from_the_limiter(broker):
    q = broker.queue("jobs")
    lim, started = FakeLimiter(3), []
    with uvicorn_server(starlette_app(q, lim, started)) as base, httpx.Client(base_url=base, timeout=20) as c:
        assert started == [True]
        accepted, r = load_until_refused(c, "/jobs")
        assert accepted == 50 and q.depth().ready == 50     # refused from the first request at high
        body = assert_refusal(r, 503, "overloaded")
        assert body["reason"] == "depth" and body["depth"] == 50 and (body["high"], body["low"]) == (50, 20)
        assert c.get("/health").status_code == 200          # excluded path, and not a POST
        drain(q, 25)                                        # 25: between low and high, still refused
        body = assert_refusal(c.post("/jobs", content=b"x"), 503, "overloaded")
        assert body["depth"] == 25
        drain(q, 6)                                         # 19 < low: admitted again
        assert c.post("/jobs", content=b"x").status_code == 200
        assert q.depth().ready == 20
        # the limiter: three per user, then 429; another user is not affected
        codes = [c.post("/login", headers={"x-user": "ann"}).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert_refusal(c.post("/login", headers={"x-user": "ann"}), 429, "rate_limited")
        assert c.post("/login", headers={"x-user": "bob"}).status_code == 200
        assert {k for _, k in lim.calls} == {"ann", "bob"}


def test_uvicorn_raw_asgi_serves_while_a_depth_read_is_stuck(broker):
    """The depth read runs in a thread: a stuck one does not stop the event loop."""
    q = FakeQueue(ready=0)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
    with uvicorn_server(ASGIMiddleware(app, queue=q, high=5, interval=0)) as base:
        q.block = threading.Event()
        stuck: list[int] = []
        t = threading.Thread(target=lambda: stuck.append(httpx.get(base + "/a", timeout=20).status_code))
        t.start()
        deadline = time.monotonic() + 10
        while q.calls < 1:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert httpx.get(base + "/b", timeout=5).status_code == 200     # served from the cache meanwhile
        assert t.is_alive() and not stuck
        q.block.set()
        t.join(20)
        assert stuck == [200]


def test_wsgi_server_503_and_recovery_and_429_per_client_ip(broker):
    q = broker.queue("jobs")
    lim = FakeLimiter(2)

    def app(environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            n = int(environ.get("CONTENT_LENGTH") or 0)
            q.publish(environ["wsgi.input"].read(n))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    guarded = WSGIMiddleware(app, queue=q, high=30, low=10, interval=0, methods=["POST"],
                             routes={"/login": {"queue": None, "limiter": lim, "key": client_ip, "points": 2}})
    with wsgi_server(guarded) as base, httpx.Client(base_url=base, timeout=20) as c:
        accepted, r = load_until_refused(c, "/jobs")
        assert accepted == 30
        assert_refusal(r, 503, "overloaded")
        assert c.get("/jobs").status_code == 200            # GETs are not guarded
        drain(q, 15)
        assert c.post("/jobs", content=b"x").status_code == 503      # 15: not under low yet
        drain(q, 6)
        assert c.post("/jobs", content=b"x").status_code == 200
        lim.left["127.0.0.1"] = 2                           # one request's worth (points=2)
        assert c.post("/login").status_code == 200
        assert_refusal(c.post("/login"), 429, "rate_limited")
        assert lim.calls[-1] == (2, "127.0.0.1")


def test_a_client_retrying_with_fastq_aretry_waits_retry_after_and_gets_in(broker):
    """The course's fetchWithBackoff, as docs/BACKPRESSURE.md writes it, against a real server."""
    q = broker.queue("jobs")
    lim, started = FakeLimiter(3), []

    async def fetch_with_backoff(client, url, **kw):
        async def once():
            r = await client.post(url, **kw)
            if r.status_code in (429, 503):
                err = fastq.RateLimited if r.status_code == 429 else fastq.QueueFull
                raise err(f"{url}: {r.status_code}", float(r.headers.get("retry-after", 1)))
            return r
        return await fastq.aretry(once, attempts=5, backoff=fastq.Backoff.exponential(0.05, cap=5, jitter="full"),
                                  on_retry=lambda n, e, d: waits.append(d) or threading.Thread(
                                      target=drain, args=(q, 40)).start())
    waits: list[float] = []
    fill(q, 50)
    with uvicorn_server(starlette_app(q, lim, started)) as base:
        async def main():
            async with httpx.AsyncClient(base_url=base, timeout=20) as client:
                t0 = time.monotonic()
                r = await fetch_with_backoff(client, "/jobs", content=b"job")
                return r, time.monotonic() - t0
        r, took = asyncio.run(main())
    assert r.status_code == 200 and len(waits) == 1
    assert waits[0] == 1.0 and took >= 1.0                  # slept Retry-After (1 s), not the backoff's <= 0.05


def test_gates_over_a_real_task_queue_and_a_closed_queue(broker, caplog):
    tq = fastq.TaskQueue("t", broker)
    for i in range(4):
        tq.add("job", i, priority=i % 2)
    tq.add("later", 0, delay=60)                            # delayed: not backlog yet
    g = fastq.admission.Gate(fastq.AsyncTaskQueue(tq), high=4, interval=0)
    v = g.check()
    assert v.reason == "depth" and v.depth == 4             # waiting + prioritized
    q = broker.queue("jobs")
    fill(q, 3)
    g = Gate(q, high=3, interval=0)
    assert g.check().depth == 3
    q.close()
    with caplog.at_level(logging.WARNING, logger="fastq.admission"):
        assert g.check().depth == 3                          # the read fails: the last decision stands
    assert "Closed" in caplog.text


def test_refusals_are_built_once_per_sample_and_the_route_memo_is_bounded(monkeypatch):
    q, clock = FakeQueue(ready=50), Clock()
    m = WSGIMiddleware(None, queue=q, high=10, interval=1)
    rule = m.rules.match("/a", "GET")
    rule.gate._clock = clock
    rule.gate.refresh()
    r1, r2 = rule.refusal({}), rule.refusal({})
    assert r1 is r2 and r1.status == 503
    clock.t += 1
    q.ready = 60
    rule.gate.refresh()
    r3 = rule.refusal({})
    assert r3 is not r1 and b'"depth":60' in r3.body
    monkeypatch.setattr(fastq.admission.rules, "MATCH_CACHE", 8)
    for i in range(100):
        assert m.rules.match(f"/jobs/{i}", "POST") is rule
    assert len(m.rules._cache) <= 8


def test_asgi_429_with_points_per_request_and_a_route_limiter():
    lim = FakeLimiter(5)
    sent: list[dict] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(msg):
        sent.append(msg)
    m = ASGIMiddleware(app, limiter=lim, key=client_ip, points=lambda scope: 3 if scope["path"] == "/bulk" else 1)

    async def main():
        for path in ("/bulk", "/one", "/one", "/bulk"):
            await m({"type": "http", "method": "POST", "path": path, "client": ("10.1.1.1", 1)}, None, send)
    asyncio.run(main())
    statuses = [s["status"] for s in sent if s["type"] == "http.response.start"]
    assert statuses == [200, 200, 200, 429]
    assert lim.calls == [(3, "10.1.1.1"), (1, "10.1.1.1"), (1, "10.1.1.1"), (3, "10.1.1.1")]
    start = next(s for s in sent if s.get("status") == 429)
    assert (b"retry-after", b"2") in start["headers"]
