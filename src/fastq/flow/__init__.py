"""Back pressure building blocks, below queues and tasks so both use them.

Modules, bottom to top: (filled in as they land — each module's docstring names its
format and contracts).

- :mod:`fastq.flow.limiter`: RateLimiter / AsyncRateLimiter, GCRA buckets in a
  shared-memory file exact across processes (docs/BACKPRESSURE.md, "Rate limiting").
- ``backoff``: ``Backoff`` retry-delay policies (fixed, exponential, AWS full / equal /
  decorrelated jitter), stored with jobs as ``{"type", "delay", "cap", "jitter"}``.
- ``retry``: ``retry`` / ``aretry`` / ``retrying``, client-side retries that sleep
  ``max(backoff delay, exc.retry_after)``.
"""

from .limiter import AsyncRateLimiter, RateLimiter  # noqa: E402  (limiter.py: shared-memory GCRA)
