"""Admission middleware: what ``fastq.admission`` adds to a request, in process (no network).

Measured, 100,000 requests per round on one asyncio loop (ASGI) or one thread (WSGI), the
gate over a real fastq queue with the default 0.1 s sample interval (so a round takes a
handful of real ``Queue.depth()`` samples, in a thread under ASGI):
- ``asgi_bare``: a minimal ASGI app answering 200, called directly — the baseline;
- ``asgi_admit``: the same app under ``ASGIMiddleware`` with the queue under its high
  watermark (every request admitted; path matched, cached verdict read);
- ``asgi_refuse``: the queue over its high watermark (every request answered 503 + JSON);
- ``asgi_limiter``: admitted, with a no-op limiter keyed by client IP;
- ``wsgi_bare`` / ``wsgi_admit``: the same for a WSGI app and ``WSGIMiddleware``.
The ratios middleware / bare (printed at the end of the run) are the share of a no-op app's
throughput left with admission on — a harsh baseline (the bare WSGI call is ~0.15 us, the
middleware adds under a microsecond: route lookup memoized, verdict and its 503 cached per
sample); a real app's handler costs far more than either.
"""
from __future__ import annotations

import asyncio
import shutil
import tempfile

import pytest

import fastq
from conftest import add_ratio, record
from fastq.admission import ASGIMiddleware, WSGIMiddleware, client_ip

N = 100_000
ROUNDS = 3

add_ratio("ASGI admitted through admission / bare app", "asgi_admit", "asgi_bare", 0.25)   # one more coroutine frame
add_ratio("WSGI admitted through admission / bare app", "wsgi_admit", "wsgi_bare", 0.1)

SCOPE = {"type": "http", "method": "POST", "path": "/jobs", "client": ("127.0.0.1", 5000), "headers": []}
ENVIRON = {"REQUEST_METHOD": "POST", "PATH_INFO": "/jobs", "REMOTE_ADDR": "127.0.0.1"}


async def asgi_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi_app(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]


class NoLimit:
    def consume(self, points, key=None):
        pass


@pytest.fixture(scope="module")
def queues():
    d = tempfile.mkdtemp(prefix="fastq-bench-admission-")
    broker = fastq.open(d)
    low, high = broker.queue("low"), broker.queue("high")
    high.publish_many([b"x"] * 200)
    yield low, high
    broker.close()
    shutil.rmtree(d, ignore_errors=True)


def run_asgi(app):
    async def send(msg):
        pass

    async def go():
        for _ in range(N):
            await app(SCOPE, None, send)
    asyncio.run(go())


def run_wsgi(app):
    def start_response(status, headers):
        pass
    for _ in range(N):
        app(ENVIRON, start_response)


@pytest.mark.parametrize("case", ["asgi_bare", "asgi_admit", "asgi_refuse", "asgi_limiter"])
def test_asgi(benchmark, queues, case):
    low, high = queues
    app = {"asgi_bare": asgi_app,
           "asgi_admit": ASGIMiddleware(asgi_app, queue=low, high=100),
           "asgi_refuse": ASGIMiddleware(asgi_app, queue=high, high=100),
           "asgi_limiter": ASGIMiddleware(asgi_app, queue=low, high=100, limiter=NoLimit(), key=client_ip)}[case]
    benchmark.pedantic(run_asgi, args=(app,), rounds=ROUNDS, iterations=1)
    record(benchmark, case, N, 0)


@pytest.mark.parametrize("case", ["wsgi_bare", "wsgi_admit"])
def test_wsgi(benchmark, queues, case):
    low, _ = queues
    app = wsgi_app if case == "wsgi_bare" else WSGIMiddleware(wsgi_app, queue=low, high=100)
    benchmark.pedantic(run_wsgi, args=(app,), rounds=ROUNDS, iterations=1)
    record(benchmark, case, N, 0)
