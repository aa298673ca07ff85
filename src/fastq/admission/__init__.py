"""Admission control: refuse work at the door when a queue is overloaded (503) or a caller
is over its rate (429), with ``Retry-After`` from the measured drain rate.

``fastq.admission.ASGIMiddleware`` (Starlette, FastAPI) and ``WSGIMiddleware`` (Flask,
Django) over a :class:`Gate` (watermarks with hysteresis, consumer lag, drain rate) and
any rate limiter with ``consume(points, key=...)`` raising ``fastq.RateLimited``. Nothing
here needs a third-party package at run time. docs/BACKPRESSURE.md has the walk-through.
"""
from __future__ import annotations

from .asgi import ASGIMiddleware
from .gate import DrainRate, Gate, Sample, Verdict, read_sample
from .rules import Refusal, Rule, Rules, client_ip, header
from .wsgi import WSGIMiddleware

__all__ = ["ASGIMiddleware", "WSGIMiddleware", "Gate", "Verdict", "Sample", "DrainRate", "read_sample",
           "Rule", "Rules", "Refusal", "client_ip", "header"]
