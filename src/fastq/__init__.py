"""fastq — a fast, embedded, durable message log and task queue for Python."""
from __future__ import annotations

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = ["__version__", *_errors_all]

# --- storage core (issue: compiled storage core) ---
from .log import DURABILITY_MODES, Log, LogReader, Pacer, Record, open_log  # noqa: E402

__all__ += ["Log", "LogReader", "Record", "Pacer", "open_log", "DURABILITY_MODES"]
# --- broker (issue: embedded broker) ---
from . import broker as _broker  # noqa: E402
from .broker import Broker, validate_name  # noqa: E402
from .producer import Producer  # noqa: E402
from .topic import BatchMetadata, RecordMetadata, Topic  # noqa: E402

from .aio import AsyncBroker, AsyncConsumer, AsyncMemoryConsumer, AsyncProducer, AsyncTopic, open_async  # noqa: E402

open = _broker.open  # noqa: A001  (fastq.open(path) -> Broker, as the product sketch says)
__all__ += ["open", "Broker", "Topic", "Producer", "RecordMetadata", "BatchMetadata", "validate_name",
            "open_async", "AsyncBroker", "AsyncTopic", "AsyncConsumer", "AsyncMemoryConsumer",
           "AsyncProducer"]
from .consumer import Consumer  # noqa: E402

__all__ += ["Consumer"]

# --- ring buffer (issue: Cython ring buffer) ---
from ._ring import Ring  # noqa: E402
from .ringqueue import RingQueue  # noqa: E402

__all__ += ["Ring", "RingQueue"]
