"""RingQueue as a drop-in for multiprocessing.Queue (process tests: test_ring_process.py)."""
from __future__ import annotations

import json
import pickle
import queue
import uuid

import pytest

from fastq import Closed, RecordTooLarge, RingEmpty, RingFull, RingQueue


def test_objects_round_trip():
    with RingQueue() as q:
        objs = [1, "two", {"three": [3.0]}, None, b"bytes", (1, 2)]
        for o in objs:
            q.put(o)
        assert q.qsize() == len(objs) and not q.empty()
        assert [q.get() for _ in objs] == objs
        assert q.empty()


def test_maxsize_and_exceptions():
    with RingQueue(2) as q:
        q.put(1)
        q.put_nowait(2)
        assert q.full()
        with pytest.raises(queue.Full):
            q.put(3, timeout=0.01)
        with pytest.raises(RingFull):
            q.put_nowait(3)
        assert q.get_nowait() == 1 and q.get(timeout=1) == 2
        with pytest.raises(queue.Empty):
            q.get(timeout=0.01)
        with pytest.raises(RingEmpty):
            q.get_nowait()


def test_pluggable_serialization():
    dumps = lambda o: json.dumps(o).encode()   # noqa: E731
    with RingQueue(dumps=dumps, loads=json.loads) as q:
        q.put({"a": [1, 2]})
        assert q.ring.get_view().tobytes() == b'{"a": [1, 2]}'
        q.put({"b": 2})
        assert q.get() == {"b": 2}


def test_batches():
    with RingQueue() as q:
        q.put_many(range(10))
        assert q.get_many(4) == [0, 1, 2, 3]
        assert q.get_many() == list(range(4, 10))


def test_capacity_bytes_bound():
    with RingQueue(capacity_bytes=256) as q:
        with pytest.raises(RecordTooLarge):
            q.put(b"x" * 1000)


def test_close_and_join_thread():
    q = RingQueue()
    q.put(1)
    q.close()
    q.close()
    q.join_thread()
    q.cancel_join_thread()
    with pytest.raises(ValueError):
        q.put(2)
    with pytest.raises(Closed):
        q.get()


def test_named_attach():
    name = "rq-" + uuid.uuid4().hex
    with RingQueue(3, name=name) as q, RingQueue.attach(name) as q2:
        q.put("hi")
        assert q2.get() == "hi"
        assert q2.full() is False
        q.unlink()


def test_pickle_in_process_named():
    name = "rq-" + uuid.uuid4().hex
    with RingQueue(name=name) as q:
        with pickle.loads(pickle.dumps(q)) as q2:
            q.put([1])
            assert q2.get() == [1]
        q.unlink()
