"""``fastq bench``. Modules, bottom to top: ``harness`` (the workload configuration, result
dict and forked-process helpers every scenario shares), ``queue_scenarios`` (the message
queue's scenarios and the harness its peers share), ``scenarios`` (every scenario, the
JSON schema), ``peers`` (what they are compared with: multiprocessing, faster-fifo,
persist-queue, litequeue, Redis Streams, NATS JetStream; for the queue, RabbitMQ, Redis
Streams groups, SQLiteAckQueue and litequeue with acks) and ``plot``. Not imported by the
runtime (``import fastq``); the peers need the ``compare`` extra and the plot the ``plot``
extra."""
