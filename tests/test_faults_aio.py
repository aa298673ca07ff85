"""asyncio faults: cancellation consumes nothing, and nothing blocks the event loop.

A cancelled await of the async API (``asyncio.wait_for`` timing out, ``task.cancel()``)
must not consume records or lose anything acknowledged: a worker thread that was
abandoned mid-poll gives what it took back before the next call runs. Calls that can
block (a full memory topic under ``overflow="block"``, a producer's drain) run in
threads: a heartbeat task keeps ticking meanwhile. The blocking points are held on
threading Events that the heartbeat sets, so a blocked loop shows as a missing tick,
never as a timing assertion.
"""
import asyncio
import random
import threading

import pytest

import fastq
from fastq.errors import Closed


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


class Heartbeat:
    """A task ticking on the loop; `after(n)` is a threading.Event set once it has ticked
    n more times (a loop blocked by a call never sets it)."""

    def __init__(self):
        self.ticks = 0
        self._waits = []
        self._task = asyncio.create_task(self._run())

    async def _run(self):
        while True:
            await asyncio.sleep(0.001)
            self.ticks += 1
            for n, ev in self._waits:
                if self.ticks >= n:
                    ev.set()

    def after(self, n: int) -> threading.Event:
        ev = threading.Event()
        self._waits.append((self.ticks + n, ev))
        return ev

    async def stop(self):
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


def test_cancelled_poll_consumes_nothing_next_poll_and_commit_continue_in_order(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as b:
            t = await b.topic("t")
            await t.publish_many([b"%d" % i for i in range(10)])
            c = await t.consumer(group="g", from_="earliest")
            got = await c.poll(10, timeout=5)
            assert [r.offset for r in got] == list(range(10))
            del got
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.poll(10, timeout=5), 0.02)
            # published while the abandoned worker thread still waits in its poll
            await t.publish_many([b"%d" % i for i in range(10, 15)])
            got = await c.poll(10, timeout=5)
            assert [r.offset for r in got] == list(range(10, 15))
            del got
            await c.commit()
            assert await c.committed() == {0: 15}
            await c.close()
            with pytest.raises(Closed):
                await c.poll(1, timeout=0)
    run(main())


def test_cancelled_async_for_consumes_nothing(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as b:
            t = await b.topic("t", partitions=2)
            c = await t.consumer(group="g", from_="earliest")
            seen = []

            async def consume(n):
                async for r in c:
                    seen.append((r.partition, r.offset))
                    if len(seen) == n:
                        return

            for round_ in range(5):
                task = asyncio.create_task(consume(10 ** 9))
                await asyncio.sleep(0.01)        # the task waits in __anext__ -> poll
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await t.publish_many([b"r%d" % round_] * 3, partition=round_ % 2)
            await consume(15)
            assert sorted(seen) == sorted([(p, o) for p, n in ((0, 9), (1, 6)) for o in range(n)])
            await c.commit()
            assert await c.committed() == {0: 9, 1: 6}
            await c.close()
    run(main())


def test_cancellation_at_every_await_consumes_nothing_and_loses_nothing_acked(tmp_path):
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rnd = random.Random(seed)

    async def cancel_soon(aw):
        """Run `aw`, cancelled after 0..2 loop iterations or 0..3 ms; its result or None."""
        task = asyncio.ensure_future(aw)
        if rnd.random() < 0.5:
            for _ in range(rnd.randrange(3)):
                await asyncio.sleep(0)
        else:
            await asyncio.sleep(rnd.random() * 0.003)
        task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return None

    async def main():
        async with await fastq.open_async(tmp_path / "b") as b:
            t = None
            while t is None:                          # topic creation, cancelled or not
                t = await cancel_soon(b.topic("t", partitions=2))
            t = await b.topic("t")
            acked = set()
            for i in range(40):                       # publish
                m = await cancel_soon(t.publish(b"p%d" % i, partition=i % 2))
                if m is not None:
                    acked.add((m.partition, m.offset))
            p = t.producer(linger_ms=1000)
            for i in range(40):                       # producer send and flush
                await cancel_soon(p.send(b"s%d" % i, partition=i % 2))
                if i % 10 == 9:
                    await cancel_soon(p.flush())
            await p.close()
            for _ in range(5):                        # consumer creation: a cancelled one is closed
                made = await cancel_soon(t.consumer(group="other"))
                if made is not None:
                    await made.close()
            c = await t.consumer(group="g", from_="earliest")
            handed = []
            for _ in range(60):                       # poll, async for, commit
                what = rnd.randrange(3)
                if what == 0:
                    recs = await cancel_soon(c.poll(5, timeout=0.05))
                    handed += [(r.partition, r.offset) for r in recs or ()]
                elif what == 1:
                    r = await cancel_soon(c.__anext__())
                    if r is not None:
                        handed.append((r.partition, r.offset))
                else:
                    await cancel_soon(c.commit())
                recs = r = None
            while True:                                # the rest, uncancelled
                recs = await c.poll(100, timeout=0.2)
                if not recs:
                    break
                handed += [(r.partition, r.offset) for r in recs]
            recs = None
            ends = await t.end_offsets()
            assert acked <= set(handed)
            # every record exactly once, in order per partition
            for part in (0, 1):
                offs = [o for p_, o in handed if p_ == part]
                assert offs == list(range(ends[part])), (part, offs)
            await c.commit()
            await cancel_soon(c.close())
            await c.close()
            assert c.closed
            c2 = await t.consumer(group="g", from_="committed")
            assert await c2.poll(10, timeout=0.05) == []
            await c2.close()
    run(main())


def test_cancelled_memory_topic_poll_keeps_what_it_took(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as b:
            t = await b.topic("m", storage="memory")
            c = await t.consumer()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.poll(10, timeout=5), 0.02)
            for i in range(3):                         # taken by the abandoned worker
                await t.publish(b"%d" % i)
            got = await c.poll(10, timeout=5)
            assert [bytes(r.value) for r in got] == [b"0", b"1", b"2"]
            await c.close()
    run(main())


def test_publish_to_full_memory_topic_does_not_block_the_loop(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as b:
            t = await b.topic("m", storage="memory", capacity_bytes=1 << 16, overflow="block")
            n = 0
            while True:                                # fill the ring
                try:
                    t.sync.publish(b"x" * 1000, timeout=0)
                    n += 1
                except fastq.errors.RingFull:
                    break
            hb = Heartbeat()
            ticked = hb.after(5)
            freed = threading.Event()

            def consumer():                            # frees room once the loop has ticked
                ok = ticked.wait(10)
                c = t.sync.consumer()
                c.poll(n, timeout=0)
                c.close()
                freed.set()
                return ok

            th = asyncio.get_running_loop().run_in_executor(None, consumer)
            m = await t.publish(b"y" * 1000)          # waits for room: not on the loop
            assert m.offset == -1
            assert await th, "the loop did not tick while publish waited for room"
            await hb.stop()
    run(main())


def test_producer_send_that_drains_does_not_block_the_loop(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b", durability="always") as b:
            t = await b.topic("t")
            hb = Heartbeat()
            ticked = hb.after(5)
            waited = []

            def on_delivery(meta):                     # runs where the drain runs
                waited.append(ticked.wait(10))

            p = t.producer(linger_ms=0, on_delivery=on_delivery)   # every send drains
            p.send(b"x")                               # (its future need not be awaited)
            await p.flush()
            assert waited and all(waited), "the loop did not tick while the drain ran"
            await p.close()
            await hb.stop()
            assert (await t.end_offsets()) == {0: 1}
    run(main())


def test_async_producer_send_keeps_order_under_back_pressure(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as b:
            t = await b.topic("t")
            # a tiny accumulator: sends run into a full ring and wait for drains
            p = t.producer(linger_ms=1000, buffer_bytes=1 << 16, max_pending=16)
            futs = [p.send(b"%05d" % i, partition=0) for i in range(300)]   # not awaited
            await asyncio.gather(*futs)
            await p.close()
            vals = [bytes(r.value) async for r in t.read(0)]
            assert vals == [b"%05d" % i for i in range(300)]
            with pytest.raises(Closed):
                p.send(b"x")
    run(main())
