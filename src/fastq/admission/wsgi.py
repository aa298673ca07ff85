"""``WSGIMiddleware``: admission control for WSGI apps (Flask, Django, any PEP 3333 app).

Per request: the matching :class:`~fastq.admission.rules.Rule` (none: pass); if its gate's
sample is due, this request's thread reads the queue (others meanwhile use the last
decision); then 503 (overloaded), 429 (rate limited) or the app.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from .rules import Rules

__all__ = ["WSGIMiddleware"]

_REASONS = {429: "429 Too Many Requests", 503: "503 Service Unavailable"}


class WSGIMiddleware:
    """Wrap a WSGI app: ``app.wsgi_app = WSGIMiddleware(app.wsgi_app, queue=q, high=10_000)``
    (Flask), or ``application = WSGIMiddleware(get_wsgi_application(), ...)`` (Django). The
    options are :class:`~fastq.admission.ASGIMiddleware`'s; ``key`` and ``points`` callables
    receive the WSGI environ."""

    def __init__(self, app, **options):
        self.app = app
        self.rules = Rules(**options)

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        rule = self.rules.match(environ.get("PATH_INFO", "") or "/", environ.get("REQUEST_METHOD", "GET"))
        if rule is not None:
            if rule.gate is not None:
                rule.gate.refresh()
            refusal = rule.refusal(environ)
            if refusal is not None:
                start_response(_REASONS[refusal.status], [(k.title(), v) for k, v in refusal.headers])
                return [refusal.body]
        return self.app(environ, start_response)
