"""fastq — a fast, embedded, durable message log and task queue for Python."""
from __future__ import annotations

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = ["__version__", *_errors_all]

# --- storage core (issue: compiled storage core) ---
from .log import DURABILITY_MODES, Log, LogReader, Record, open_log  # noqa: E402

__all__ += ["Log", "LogReader", "Record", "open_log", "DURABILITY_MODES"]
# --- ring buffer (issue: Cython ring buffer) ---
from ._ring import Ring  # noqa: E402
from .ringqueue import RingQueue  # noqa: E402

__all__ += ["Ring", "RingQueue"]
