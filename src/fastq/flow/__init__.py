"""Back pressure building blocks, below queues and tasks so both use them.

Modules, bottom to top: (filled in as they land — each module's docstring names its
format and contracts).
"""

from .limiter import AsyncRateLimiter, RateLimiter  # noqa: E402  (limiter.py: shared-memory GCRA)
