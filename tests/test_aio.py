"""The asyncio surface: AsyncBroker, AsyncTopic, AsyncConsumer, AsyncProducer."""
import asyncio

import pytest

import fastq
from fastq.errors import Closed, InvalidArgument, UnknownTopic


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_publish_read_and_topics(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as b:
            t = await b.topic("events", partitions=2)
            m = await t.publish(b"hello", key=b"k", timestamp=5)
            assert (m.topic, m.offset, m.timestamp) == ("events", 0, 5)
            bm = await t.publish_many([b"a", b"b"], partition=1)
            assert list(bm.offsets) == [0, 1]
            got = [bytes(r.value) async for r in t.read(1)]
            assert got == [b"a", b"b"]
            assert await b.topics() == ["events"]
            assert (await t.end_offsets())[1] == 2
            await b.delete_topic("events")
            with pytest.raises(UnknownTopic):
                await b.topic("events", create=False)
    run(main())


def test_group_durability_runs_in_threads(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b", durability="group") as b:
            t = await b.topic("g")
            ms = await asyncio.gather(*(t.publish(b"%d" % i) for i in range(20)))
            assert sorted(m.offset for m in ms) == list(range(20))
    run(main())


def test_consumer_async_iteration_and_commit(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as b:
            t = await b.topic("events", partitions=3)
            for i in range(30):
                await t.publish(b"%d" % i, key=b"k%d" % (i % 5))
            c = await t.consumer(group="g1", from_="earliest")
            seen = []
            async for rec in c:
                seen.append(int(bytes(rec.value)))
                await c.commit(rec)
                if len(seen) == 30:
                    break
            assert sorted(seen) == list(range(30))
            assert sum(v for v in (await c.committed()).values() if v) == 30
            assert await c.lag() == {0: 0, 1: 0, 2: 0}
            await c.close()
            assert c.closed
    run(main())


def test_memory_topic_async_consumer(tmp_path):
    """await topic.consumer() of a memory topic takes records (async for, poll), and
    commit/close/lag/assignment work; its commit() after iteration used to raise
    AttributeError (the async consumer assumed a log consumer's offsets)."""
    async def main():
        async with await fastq.open_async(tmp_path / "b") as b:
            t = await b.topic("jobs", storage="memory")
            for i in range(5):
                await t.publish(b"%d" % i)
            c = await t.consumer(group="workers")
            assert isinstance(c, fastq.AsyncMemoryConsumer)
            first = await c.__anext__()                  # fetches all 5 ahead, hands out 1
            assert first.value == b"0" and first.offset == -1
            await c.commit()                             # accepted: taking is consuming
            assert await c.assignment() == [0] and await c.committed() == {0: None}
            got = [r.value for r in await c.poll(10, timeout=1)]
            assert got == [b"1", b"2", b"3", b"4"]
            await t.publish(b"5")
            assert await c.lag() == {0: 1}
            async for r in c:
                assert r.value == b"5"
                break
            with pytest.raises(InvalidArgument):
                await c.seek(0, 0)
            with pytest.raises(InvalidArgument):
                await c.position(0)
            await c.close()
            assert c.closed
            with pytest.raises(Closed):
                c.sync.poll(timeout=0)
    run(main())


def test_consumer_waits_for_new_records(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as b:
            t = await b.topic("live")
            c = await t.consumer(group="g")
            assert await c.poll(timeout=0.05) == []

            async def later():
                await asyncio.sleep(0.05)
                await t.publish(b"late")

            task = asyncio.create_task(later())
            recs = await c.poll(timeout=5)
            assert [bytes(r.value) for r in recs] == [b"late"]
            del recs
            await task
            await c.close()
    run(main())


def test_poll_is_cancellable(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as b:
            t = await b.topic("idle")
            c = await t.consumer(group="g")
            task = asyncio.create_task(c.poll())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await c.close()
    run(main())


def test_commit_covers_only_delivered_records(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as b:
            t = await b.topic("buf")
            await t.publish_many([b"%d" % i for i in range(10)])
            c = await t.consumer(group="g", from_="earliest")
            it = c.__aiter__()
            first = await it.__anext__()       # fetches ahead, hands out one
            assert first.offset == 0
            del first
            await c.commit()
            assert (await c.committed()) == {0: 1}
            await c.close()
            c2 = await t.consumer(group="g", auto_commit=True)
            recs = await c2.poll(timeout=1)
            assert recs[0].offset == 1
            del recs
            await c2.close()
    run(main())


def test_async_producer(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as b:
            t = await b.topic("p", partitions=2)
            async with t.producer(linger_ms=1) as p:
                for i in range(1000):
                    p.send(b"%d" % i, key=b"%d" % (i % 3))
            assert sum((await t.end_offsets()).values()) == 1000
            with pytest.raises(Closed):
                p.send(b"x")
    run(main())
