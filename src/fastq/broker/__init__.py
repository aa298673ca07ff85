"""The embedded broker: topics of partition logs, producers, consumer groups, memory topics.

Modules, bottom to top (each imports only those above it in this list, and
:mod:`fastq.log`, :mod:`fastq._core`, :mod:`fastq.errors`):

``config``        names, limits and the stored topic configuration
``offsets``       committed offsets of a group (one mapped file, torn-write safe)
``group``         group membership, assignment, heartbeats; list / reset for operators
``producer``      the batching producer;            ``aio_producer``  its asyncio twin
``consumer``      consumers with committed offsets; ``aio_consumer``  their asyncio twins
``topic``         a topic: publish, read, producer(), consumer(), retention, compaction
``memtopic``      memory topics: a shared ring, block / reject / drop-oldest / spill
``broker``        the broker directory: get, create, alter, delete topics
``aio``           asyncio faces of the broker and its topics (the rule: nothing that can
                  block runs on the event loop; a cancelled await consumes nothing)
``idempotency_store``  keys of work done, in a topic, recorded in transactions
"""
from .._core._storage import RecordMetadata
from .aio import AsyncBroker, AsyncTopic, open_async
from .aio_consumer import AsyncConsumer, AsyncMemoryConsumer
from .aio_producer import AsyncIdempotentProducer, AsyncProducer
from .broker import Broker, open
from .config import validate_name
from .idempotency_store import IdempotencyStore
from .consumer import Consumer
from .memtopic import MemoryTopic
from .producer import IdempotentProducer, Producer
from .topic import BatchMetadata, Topic
from .transaction import Transaction

__all__ = ["Broker", "open", "Topic", "MemoryTopic", "Producer", "Consumer", "RecordMetadata", "BatchMetadata",
           "validate_name", "open_async", "AsyncBroker", "AsyncTopic", "AsyncConsumer", "AsyncMemoryConsumer",
           "AsyncProducer", "IdempotentProducer", "AsyncIdempotentProducer", "Transaction",
           "IdempotencyStore"]
