"""Back pressure building blocks, below queues and tasks so both use them.

Modules, bottom to top: (filled in as they land — each module's docstring names its
format and contracts).

- :mod:`fastq.flow.limiter`: RateLimiter / AsyncRateLimiter, GCRA buckets in a
  shared-memory file exact across processes (docs/BACKPRESSURE.md, "Rate limiting").
"""

from .limiter import AsyncRateLimiter, RateLimiter  # noqa: E402  (limiter.py: shared-memory GCRA)
