"""Which requests a middleware guards, and the refusals it sends — shared by the ASGI and
WSGI middleware so both answer alike.

A :class:`Rules` maps a request (path, method) to a :class:`Rule` or None (pass through):
``exclude`` path prefixes pass; then the longest matching prefix of ``routes`` gives the
rule (its options over the middleware's; ``None`` for a prefix: pass); otherwise the
middleware's own rule applies to paths under ``include`` (default: all). A rule applies
only to its ``methods`` (default: all). Prefixes match whole path segments (``/up``
does not match ``/upload``).

Refusals: **503** ``{"error": "overloaded", "reason": "depth"|"lag", "retry_after": s,
"depth": n, "high": h, "low": l, "oldest_age": s, "drain_rate": r}`` when the rule's gate
refuses, else **429** ``{"error": "rate_limited", "retry_after": s}`` when its limiter
raises ``fastq.RateLimited``; both with ``Retry-After`` (whole seconds, rounded up, at
least 1) and ``Cache-Control: no-store``. The gate is asked first so a request refused
for overload spends no rate-limit points.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping, NamedTuple

from ..errors import InvalidArgument, RateLimited
from .gate import Gate, Verdict

__all__ = ["Rule", "Rules", "Refusal", "client_ip", "header", "overloaded", "rate_limited", "GATE_OPTIONS"]

GATE_OPTIONS = ("queue", "high", "low", "max_age", "interval", "window", "min_retry_after",
                "max_retry_after", "default_retry_after")
RULE_OPTIONS = GATE_OPTIONS + ("limiter", "key", "points", "methods")
MATCH_CACHE = 4096          # distinct (path, method) pairs whose rule is remembered


class Refusal(NamedTuple):
    """An HTTP answer: status, headers as (lowercase name, value) str pairs, JSON body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _refusal(status: int, retry_after: float, payload: dict) -> Refusal:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Refusal(status, [("content-type", "application/json"), ("content-length", str(len(body))),
                            ("retry-after", str(max(1, math.ceil(retry_after)))),
                            ("cache-control", "no-store")], body)


def overloaded(v: Verdict, gate: Gate) -> Refusal:
    """The 503 for a gate's verdict."""
    return _refusal(503, v.retry_after, {
        "error": "overloaded", "reason": v.reason, "retry_after": round(v.retry_after, 3), "depth": v.depth,
        "high": gate.high, "low": gate.low, "oldest_age": v.oldest_age,
        "drain_rate": None if v.drain_rate is None else round(v.drain_rate, 3)})


def rate_limited(e: RateLimited) -> Refusal:
    """The 429 for a limiter's refusal."""
    ra = e.retry_after if isinstance(e.retry_after, (int, float)) and math.isfinite(e.retry_after) else 1.0
    return _refusal(429, ra, {"error": "rate_limited", "retry_after": round(max(0.0, ra), 3)})


def client_ip(req: Mapping) -> str | None:
    """The peer address of an ASGI scope (``scope["client"]``) or a WSGI environ
    (``REMOTE_ADDR``) — a ``key=`` for per-client limits. Behind a proxy, key on the
    header it sets instead (:func:`header`), and only when the proxy is trusted."""
    if "REMOTE_ADDR" in req:
        return req["REMOTE_ADDR"]
    client = req.get("client")
    return client[0] if client else None


def header(name: str) -> Callable[[Mapping], str | None]:
    """A ``key=`` that reads request header ``name`` (e.g. ``"x-api-key"``) from an ASGI
    scope or a WSGI environ."""
    lname = name.lower()
    raw = lname.encode("latin-1")
    wsgi = "HTTP_" + name.upper().replace("-", "_")

    def key(req: Mapping) -> str | None:
        if "headers" in req and "REQUEST_METHOD" not in req:
            for k, v in req["headers"]:
                if k.lower() == raw:
                    return v.decode("latin-1")
            return None
        return req.get(wsgi)
    return key


def _prefixes(what: str, v) -> tuple[str, ...]:
    if isinstance(v, str):
        v = (v,)
    v = tuple(v)
    if not all(isinstance(p, str) and p.startswith("/") for p in v):
        raise InvalidArgument(f"{what} must be path prefixes starting with '/', got {v!r}")
    return v


def _under(path: str, prefix: str) -> bool:
    if prefix == "/" or path == prefix:
        return True
    return path.startswith(prefix if prefix.endswith("/") else prefix + "/")


class Rule:
    """What guards one group of routes: a :class:`Gate` (or None), a limiter (any object
    with ``consume(points, key=...)`` raising ``fastq.RateLimited``; or None), ``key``
    (callable: scope/environ -> key), ``points`` (int, or callable: scope/environ -> int),
    ``methods`` (None: all)."""

    __slots__ = ("gate", "limiter", "key", "points", "methods", "_last")

    def __init__(self, gate: Gate | None, limiter: Any, key, points, methods):
        if limiter is not None and not callable(getattr(limiter, "consume", None)):
            raise InvalidArgument(f"limiter must have consume(points, key=...), got {limiter!r}")
        if key is not None and not callable(key):
            raise InvalidArgument(f"key must be None or a callable (scope/environ -> key), got {key!r}")
        if not callable(points) and (isinstance(points, bool) or not isinstance(points, int) or points < 1):
            raise InvalidArgument(f"points must be an int >= 1 or a callable, got {points!r}")
        if methods is not None:
            if isinstance(methods, str):
                methods = (methods,)
            methods = frozenset(m.upper() for m in methods)
        self.gate, self.limiter, self.key, self.points, self.methods = gate, limiter, key, points, methods
        self._last: tuple = (None, None)   # (verdict, its 503): built once per sample, not per request

    def refusal(self, req: Mapping) -> Refusal | None:
        """The refusal for a request whose gate sample is fresh enough (the gate's cached
        verdict is read, the queue is not called), or None to admit. The limiter's
        ``consume`` is called here: it must not block (``fastq.RateLimiter.consume``
        refuses rather than waits)."""
        if self.gate is not None:
            v = self.gate.verdict()
            if v is not None:
                last = self._last
                if last[0] is not v:
                    last = self._last = (v, overloaded(v, self.gate))
                return last[1]
        if self.limiter is not None:
            pts = self.points(req) if callable(self.points) else self.points
            try:
                self.limiter.consume(pts, key=None if self.key is None else self.key(req))
            except RateLimited as e:
                return rate_limited(e)
        return None


class Rules:
    """The middleware's options turned into rules (module docstring)."""

    def __init__(self, *, include=("/",), exclude=(), routes: Mapping[str, Mapping | None] | None = None,
                 **options):
        unknown = set(options) - set(RULE_OPTIONS)
        if unknown:
            raise InvalidArgument(f"unknown admission options {sorted(unknown)}; expected {RULE_OPTIONS}")
        self.include = _prefixes("include", include)
        self.exclude = _prefixes("exclude", exclude)
        self._gates: dict[tuple, Gate] = {}
        self._cache: dict[tuple[str, str], Rule | None] = {}
        self.default = self._rule(options)
        self.routes: list[tuple[str, Rule | None]] = []
        for prefix, over in (routes or {}).items():
            _prefixes("routes", (prefix,))
            if over is None:
                self.routes.append((prefix, None))
                continue
            if not isinstance(over, Mapping) or set(over) - set(RULE_OPTIONS):
                raise InvalidArgument(f"routes[{prefix!r}] must be None or a dict of {RULE_OPTIONS}, got {over!r}")
            merged = {**options, **over}
            if "queue" in over and over["queue"] is None:       # this prefix: no gate, maybe a limiter
                merged = {k: v for k, v in merged.items() if k not in GATE_OPTIONS}
            self.routes.append((prefix, self._rule(merged)))
        self.routes.sort(key=lambda r: len(r[0]), reverse=True)

    @property
    def gates(self) -> list[Gate]:
        return list(self._gates.values())

    def _rule(self, o: Mapping) -> Rule | None:
        gate = None
        if o.get("queue") is not None:
            g = {k: o[k] for k in GATE_OPTIONS if o.get(k) is not None}
            sig = (id(g["queue"]),) + tuple(sorted((k, v) for k, v in g.items() if k != "queue"))
            gate = self._gates.get(sig)
            if gate is None:
                gate = self._gates[sig] = Gate(g.pop("queue"), **g)   # one gate (one hysteresis) per setting
        elif any(o.get(k) is not None for k in GATE_OPTIONS):
            raise InvalidArgument(f"admission gate options {[k for k in GATE_OPTIONS if o.get(k) is not None]} "
                                  f"need queue=")
        if gate is None and o.get("limiter") is None:
            return None
        return Rule(gate, o.get("limiter"), o.get("key"), o.get("points", 1), o.get("methods"))

    def match(self, path: str, method: str) -> Rule | None:
        """The rule guarding a request, or None to pass it through (memoized for the
        first :data:`MATCH_CACHE` distinct paths and methods)."""
        k = (path, method)
        try:
            return self._cache[k]
        except KeyError:
            pass
        rule = self._match(path, method)
        if len(self._cache) >= MATCH_CACHE:
            self._cache.clear()             # paths with ids in them: do not grow without bound
        self._cache[k] = rule
        return rule

    def _match(self, path: str, method: str) -> Rule | None:
        if any(_under(path, p) for p in self.exclude):
            return None
        for prefix, rule in self.routes:
            if _under(path, prefix):
                break
        else:
            rule = self.default if any(_under(path, p) for p in self.include) else None
        if rule is None or (rule.methods is not None and method.upper() not in rule.methods):
            return None
        return rule
