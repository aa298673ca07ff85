"""``ASGIMiddleware``: admission control for ASGI apps (Starlette, FastAPI, any ASGI 3 app).

Only ``http`` scopes are guarded; ``lifespan`` and ``websocket`` scopes pass through
untouched. Per request: the matching :class:`~fastq.admission.rules.Rule` (none: pass);
if its gate's sample is due, this request takes it — the queue is read in a worker thread
(``asyncio.to_thread``), never on the event loop, and requests arriving meanwhile use the
last decision; then 503 (overloaded), 429 (rate limited) or the app.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, MutableMapping

from .rules import Refusal, Rules

__all__ = ["ASGIMiddleware"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def send_refusal(send: Send, r: Refusal) -> None:
    await send({"type": "http.response.start", "status": r.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in r.headers]})
    await send({"type": "http.response.body", "body": r.body})


class ASGIMiddleware:
    """Wrap an ASGI app: ``app = ASGIMiddleware(app, queue=q, high=10_000, low=8_000)``
    (Starlette/FastAPI: ``app.add_middleware(ASGIMiddleware, queue=q, high=10_000)``).

    Options (all keyword): ``queue``, ``high``, ``low``, ``max_age``, ``interval``,
    ``window``, ``min_retry_after``, ``max_retry_after``, ``default_retry_after`` — the
    :class:`~fastq.admission.Gate`; ``limiter``, ``key`` (scope -> key, e.g.
    :func:`~fastq.admission.client_ip`), ``points``, ``methods`` — the rate limit;
    ``include``/``exclude`` (path prefixes) and ``routes`` (``{"/upload": {...options}}``,
    ``None`` to leave a prefix alone) — where they apply (:mod:`fastq.admission.rules`)."""

    def __init__(self, app, **options):
        self.app = app
        self.rules = Rules(**options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self.rules.match(scope.get("path", "/"), scope.get("method", "GET"))
        if rule is not None:
            gate = rule.gate
            if gate is not None and gate.stale() and gate.claim():
                await asyncio.to_thread(gate.sample_claimed)
            refusal = rule.refusal(scope)
            if refusal is not None:
                await send_refusal(send, refusal)
                return
        await self.app(scope, receive, send)
