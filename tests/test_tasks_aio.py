"""The asyncio task queue (fastq.AsyncTaskQueue): the sync surface as coroutines, nothing
blocking the event loop, and a cancelled await consumes nothing.

A blocked loop is seen as a heartbeat that stops ticking while another thread holds what
the call waits for (the admin lock): the holder lets go only after the heartbeat ticked,
so a call that blocked the loop shows as the holder timing out, not as a timing assertion.
"""
from __future__ import annotations

import asyncio
import random
import threading

import pytest

import fastq
from fastq.errors import InvalidArgument, JobActive, UnknownJob
from test_faults_aio import Heartbeat


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_broker_tasks_gives_the_task_queue_sync_and_async(tmp_path):
    with fastq.open(tmp_path / "b") as b:
        tq = b.tasks("t")
        assert isinstance(tq, fastq.TaskQueue) and tq.name == "t"
        tq.add("x", 1)
        tq.close()

    async def main():
        async with await fastq.open_async(tmp_path / "b") as ab:
            atq = await ab.tasks("t", visibility_timeout=10.0)
            assert isinstance(atq, fastq.AsyncTaskQueue) and atq.sync.name == "t"
            assert (await atq.counts())["waiting"] == 1        # the job added by the sync face
            with pytest.raises(fastq.errors.InvalidName):
                await ab.tasks("bad/name")
            await atq.close()
            assert atq.closed
    run(main())


def test_add_get_count_and_run_through_the_async_face(tmp_path):
    async def main():
        async with await fastq.open_async(tmp_path / "b") as ab:
            atq = await ab.tasks("t")
            j = await atq.add("double", 21, attempts=2, priority=0)
            d = await atq.add("later", 1, delay=60)
            bulk = await atq.add_bulk(iter([("double", 1), ("double", 2, {"job_id": "two"})]))
            assert [x.id for x in bulk][1] == "two"
            assert (await atq.get_job(j.id)).data == 21
            with pytest.raises(UnknownJob):
                await atq.get_job("nope")
            with pytest.raises(InvalidArgument):
                await atq.add("x", 1, color="red")
            c = await atq.counts()
            assert c["waiting"] == 3 and c["delayed"] == 1, c
            assert await atq.get_waiting_count() == 3 and await atq.get_delayed_count() == 1
            assert await atq.count() == 4
            assert await atq.get_job_counts("delayed") == {"delayed": 1}
            assert {x.id for x in await atq.get_jobs("delayed")} == {d.id}
            assert {x.id for x in await atq.get_jobs(iter(["waiting"]))} == {j.id, bulk[0].id, "two"}

            async def handle(job):
                await asyncio.sleep(0)
                return job.data * 2

            w = atq.worker(handle, mode="asyncio", concurrency=2, autorun=False)
            task = asyncio.ensure_future(w.run())
            # every job waited for: aclose finishes active jobs only, and under load the
            # third may not have been received yet (it would stay waiting, rightly)
            assert await j.wait(20) == 42 and await bulk[1].wait(20) == 4
            assert await bulk[0].wait(20) == 2
            await w.aclose()
            await asyncio.wait_for(task, 10)
            assert await atq.get_completed_count() == 3

            # administration
            assert await atq.promote(d.id) == [d.id]
            await atq.pause()
            assert await atq.is_paused()
            await atq.resume()
            assert not await atq.is_paused()
            assert sorted(await atq.clean(0, 0, "completed")) == sorted([j.id, bulk[0].id, "two"])
            assert await atq.get_completed_count() == 0
            assert await atq.drain() == 1                      # the promoted job, waiting now
            k = await atq.add("k", 0)
            await atq.remove(k.id)
            with pytest.raises(UnknownJob):
                await atq.remove(k.id)
            assert await atq.retry_failed() == []
            await atq.add("z", 0)
            ev = await atq.events(offset=0)
            first = await ev.apoll(10, timeout=5)
            assert first and first[0].event == "added"
            ev.close()
            assert await atq.repair(0) == []                  # its message is there
            dd = await atq.add("d", 1, deduplication={"id": "u"})
            assert (await atq.add("d", 2, deduplication={"id": "u"})).id == dd.id
            assert await atq.get_deduplication_job_id("u") == dd.id
            assert await atq.remove_deduplication_key("u") is True
            assert await atq.obliterate() == 2
            assert await atq.counts() == dict.fromkeys(fastq.tasks.COUNT_STATES, 0)
            await atq.close()
    run(main())


def test_a_call_waiting_for_the_admin_lock_does_not_block_the_loop(tmp_path):
    """Each admin call waits for the lock another handle holds; the holder lets go only
    once the heartbeat ticked (so a call blocking the loop would hold it for 10 s, fail)."""
    async def main():
        async with await fastq.open_async(tmp_path / "b") as ab:
            atq = await ab.tasks("t")
            other = fastq.TaskQueue("t", ab.sync)             # another Control: another lock fd
            job = await atq.add("x", 1)
            calls = [lambda: atq.pause(), lambda: atq.resume(), lambda: atq.drain(delayed=True),
                     lambda: atq.clean(0, 0, "failed"), lambda: atq.promote(), lambda: atq.retry_failed(),
                     lambda: atq.obliterate()]
            hb = Heartbeat()
            for call in calls:
                held, release_ok = threading.Event(), []
                ticked = hb.after(5)

                def holder():
                    with other._ctl.exclusive():
                        held.set()
                        release_ok.append(ticked.wait(10))

                th = threading.Thread(target=holder)
                th.start()
                await asyncio.get_running_loop().run_in_executor(None, held.wait, 10)
                await call()
                th.join()
                assert release_ok == [True], f"the loop did not tick while {call} waited for the admin lock"
            await hb.stop()
            with pytest.raises(UnknownJob):
                await atq.get_job(job.id)                    # obliterated
            other.close()
            await atq.close()
    run(main())


def test_cancelled_adds_consume_nothing_each_job_is_whole_and_runs_once(tmp_path):
    """adds cancelled at random points: each job is either not there or whole (state and
    message) and runs exactly once; nothing is left waiting without a message."""
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rnd = random.Random(seed)

    async def main():
        async with await fastq.open_async(tmp_path / "b") as ab:
            atq = await ab.tasks("t")
            cancelled = 0
            for i in range(60):
                t = asyncio.ensure_future(atq.add("j", i, job_id=f"j{i}", delay=rnd.choice([None, 0.05])))
                await asyncio.sleep(rnd.choice([0, 0, 0.0001, 0.001]))
                if not t.done():
                    t.cancel()
                try:
                    await t
                except asyncio.CancelledError:
                    cancelled += 1
            ran = []

            def handle(job):
                ran.append(job.id)
                return job.data

            await asyncio.sleep(0.2)                          # cancelled adds' threads have ended
            present = {j.id for j in await atq.get_jobs()}
            depth = await asyncio.get_running_loop().run_in_executor(None, atq.sync.queue.depth)
            assert depth.ready + depth.delayed == len(present), (depth, len(present))   # a message per job
            with atq.worker(handle, concurrency=2):
                for jid in present:
                    await (await atq.get_job(jid)).wait(30)
                await asyncio.sleep(0.3)                      # a duplicate would run meanwhile
            assert sorted(ran) == sorted(present), "a job ran twice or not at all"
            print("cancelled", cancelled, "of 60; jobs", len(present))
            await atq.close()
    run(main())


def test_a_cancelled_admin_call_in_its_thread_still_finishes_and_the_queue_keeps_working(tmp_path):
    """drain cancelled while its thread waits for the admin lock: it finishes (whole) once
    the lock is free; the queue keeps working."""
    async def main():
        async with await fastq.open_async(tmp_path / "b") as ab:
            atq = await ab.tasks("t")
            other = fastq.TaskQueue("t", ab.sync)
            await atq.add_bulk([("x", i) for i in range(200)])
            go = threading.Event()

            def holder():
                with other._ctl.exclusive():
                    go.wait(10)

            th = threading.Thread(target=holder)
            th.start()
            await asyncio.sleep(0.05)
            t = asyncio.ensure_future(atq.drain())
            await asyncio.sleep(0.2)                          # its thread waits for the lock
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            assert (await atq.counts())["waiting"] == 200
            go.set()
            th.join()
            for _ in range(500):                              # the drain finishes in its thread
                if (await atq.counts())["waiting"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert (await atq.counts())["waiting"] == 0
            j = await atq.add("y", 1)
            assert j.state == "waiting"
            atq.sync._put({**j._state(), "state": "active"})   # as a worker running it
            with pytest.raises(JobActive):
                await atq.remove(j.id)
            other.close()
            await atq.close()
    run(main())
