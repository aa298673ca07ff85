"""fastq — a fast, embedded, durable message log and task queue for Python.

The public API is this module's ``__all__``; the packages under it (``fastq.log``,
``fastq.broker``, ``fastq.ring``, ...) are the map of the code (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = ["__version__", *_errors_all]

# --- storage core: the log ---
from .log import DURABILITY_MODES, Log, LogReader, Pacer, Record, open_log  # noqa: E402

__all__ += ["Log", "LogReader", "Record", "Pacer", "open_log", "DURABILITY_MODES"]

# --- the broker: topics, producers, consumer groups, memory topics, asyncio twins ---
from .broker import (AsyncBroker, AsyncConsumer, AsyncIdempotentProducer, AsyncMemoryConsumer,  # noqa: E402
                     AsyncProducer, AsyncTopic, BatchMetadata, Broker, Consumer, IdempotentProducer, Producer,
                     RecordMetadata, Topic, Transaction, open, open_async, validate_name)

__all__ += ["open", "Broker", "Topic", "Producer", "RecordMetadata", "BatchMetadata", "validate_name",
            "open_async", "AsyncBroker", "AsyncTopic", "AsyncConsumer", "AsyncMemoryConsumer",
            "AsyncProducer", "Consumer", "IdempotentProducer", "AsyncIdempotentProducer", "Transaction"]

# --- the shared-memory ring ---
from .ring import Ring, RingQueue  # noqa: E402

__all__ += ["Ring", "RingQueue"]

# --- message queues with acks (broker.queue) ---
from .queue import AsyncQueue, Message, Queue, QueueDepth, Subscription  # noqa: E402

__all__ += ["Queue", "Message", "QueueDepth", "Subscription", "AsyncQueue"]

# --- task queues in the style of BullMQ (fastq.tasks) ---
from .tasks import AsyncTaskQueue, Backoff, Job, QueueEvents, TaskEvent, TaskQueue, Worker  # noqa: E402

__all__ += ["TaskQueue", "AsyncTaskQueue", "Job", "Worker", "Backoff", "QueueEvents", "TaskEvent"]

# --- rate limiting in shared memory (fastq.flow.limiter; issue 17) ---
from .flow.limiter import AsyncRateLimiter, RateLimiter  # noqa: E402

__all__ += ["RateLimiter", "AsyncRateLimiter"]

# --- back pressure: backoff policies, client-side retries, HTTP admission (issue 17) ---
from . import admission  # noqa: E402
from .flow.retry import aretry, retry, retry_delay, retrying  # noqa: E402

__all__ += ["admission", "retry", "aretry", "retrying", "retry_delay"]

# --- worker processes scaled by runnable depth (fastq.pool, issue 17) ---
from . import pool  # noqa: E402
from .pool import ScaleDecision, WorkerPool  # noqa: E402

__all__ += ["WorkerPool", "ScaleDecision"]

# --- pub/sub (broker.pubsub) and the in-process EventEmitter (fastq.pubsub) ---
from .pubsub import AsyncSubscriber, EventEmitter, PubSub, PubSubMessage, Subscriber  # noqa: E402

__all__ += ["PubSub", "PubSubMessage", "Subscriber", "AsyncSubscriber", "EventEmitter"]

# --- exactly-once queue handlers and idempotency keys (issue 15) ---
from .broker import IdempotencyStore  # noqa: E402
from .queue import ExactlyOnce  # noqa: E402

__all__ += ["ExactlyOnce", "IdempotencyStore"]

# --- exactly-once task workers: Worker(tq, handler, guarantee="exactly-once") (issue 15) ---
from .tasks import TaskExactlyOnce  # noqa: E402

__all__ += ["TaskExactlyOnce"]

# --- bounded queues and depth signals (issue 17, fastq.queue.bounds) ---
from .queue import OVERFLOW_POLICIES, QueueLimits, QueueSignals, SignalWatcher  # noqa: E402

__all__ += ["QueueLimits", "QueueSignals", "SignalWatcher", "OVERFLOW_POLICIES"]
