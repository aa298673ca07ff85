"""fastq — a fast, embedded, durable message log and task queue for Python."""
from __future__ import annotations

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = ["__version__", *_errors_all]

# --- storage core (issue: compiled storage core) ---
# --- ring buffer (issue: Cython ring buffer) ---
