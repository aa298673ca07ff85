"""``fastq bench``: the benchmark scenarios (``scenarios``; the message queue's in
``queue_scenarios``), the peers they are compared with (``peers``: multiprocessing,
faster-fifo, persist-queue, litequeue, Redis Streams, NATS JetStream, RabbitMQ) and the
plot (``plot``). Not imported by the runtime (``import fastq``);
the peers need the ``compare`` extra and the plot the ``plot`` extra."""
