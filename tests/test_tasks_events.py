"""Task events (fastq.QueueEvents, job.on, await job.wait(); issue 16): the events of a
job's life in order, delivered to a listener in another process, replayed from an offset
or a time, retention of the events topic, asyncio iteration where a cancelled await
consumes nothing, and bad input."""
from __future__ import annotations

import asyncio
import datetime
import multiprocessing as mp
import threading
import time

import msgspec
import pytest

import fastq
import task_event_workers as tew
from task_event_workers import broker, tq, wait_for  # noqa: F401 - fixtures

CTX = mp.get_context("spawn")


def drain(ev, until=None, timeout=10.0):
    """Poll ``ev`` until an event satisfies ``until`` (or nothing more comes)."""
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = ev.poll(1000, 0.2)
        out += got
        if until is not None and any(until(e) for e in got):
            return out
        if until is None and not got:
            return out
    return out


def of(evs, job) -> list[str]:
    return [e.event for e in evs if e.job_id == job.id]


# -- what is written -------------------------------------------------------------------------

def test_the_events_of_a_job_life_in_order(tq):
    ok = tq.add("ok", 1)
    flaky = tq.add("flaky", 2, attempts=2, backoff=0.05)
    bad = tq.add("bad", 3)
    later = tq.add("later", 4, delay=0.1, remove_on_complete=True)

    def handle(j):
        if j.name == "flaky" and j.attempts_made == 1:
            raise ValueError("first try")
        if j.name == "bad":
            raise KeyError("nope")
        j.update_progress(30)
        j.update_progress(60)
        return j.data * 10

    with tq.events(offset=0) as ev:
        with fastq.Worker(tq, handle):
            for j in (ok, flaky, later):
                j.result(10)
            with pytest.raises(fastq.JobFailed):
                bad.result(10)
            evs = drain(ev, lambda e: e.event == "removed")
    assert of(evs, ok) == ["added", "waiting", "active", "progress", "progress", "completed"]
    assert of(evs, flaky) == ["added", "waiting", "active", "retried", "delayed", "active", "progress",
                              "progress", "completed"]
    assert of(evs, bad) == ["added", "waiting", "active", "failed"]
    assert of(evs, later) == ["added", "delayed", "active", "progress", "progress", "completed", "removed"]
    by = {(e.job_id, e.event): e for e in evs}
    assert by[(ok.id, "added")].data == {"name": "ok"}
    assert [e.data["progress"] for e in evs if e.job_id == ok.id and e.event == "progress"] == [30, 60]
    assert by[(ok.id, "completed")].data == {"return_value": 10, "attempts_made": 1}
    assert by[(flaky.id, "retried")].data == {"failed_reason": "ValueError: first try", "attempts_made": 1}
    due = by[(flaky.id, "delayed")].data["due_ms"] / 1000      # the state's due time, 50 ms of backoff
    assert flaky.timestamp + 0.05 <= due <= flaky.processed_on     # ... and the retry did not start before it
    assert by[(bad.id, "failed")].data == {"failed_reason": "KeyError: 'nope'", "attempts_made": 1}
    assert by[(later.id, "removed")].data == {"prev": "completed"}
    assert by[(later.id, "delayed")].data["due_ms"] == round(later.timestamp * 1000) + 100
    offsets = [e.offset for e in evs]
    assert offsets == list(range(len(evs)))                       # every event, each once
    assert all(a.timestamp <= b.timestamp + 0.001 for a, b in zip(evs, evs[1:]))
    assert ev.position == len(evs)


def test_the_on_disk_format_is_one_json_record_per_event_keyed_by_job_id(tq, broker):
    job = tq.add("x", 1)
    topic = broker.topic("images.events")
    assert topic.partitions == 1
    recs = [(bytes(r.key), msgspec.json.decode(bytes(r.value)), r.timestamp) for r in topic.read(0)]
    assert [(k, v) for k, v, _ in recs] == [(job.id.encode(), {"event": "added", "name": "x"}),
                                            (job.id.encode(), {"event": "waiting"})]
    assert abs(recs[0][2] / 1000 - job.timestamp) < 5
    cfg = topic.config
    assert cfg["retention_ms"] == 7 * 24 * 3600 * 1000 and cfg["retention_bytes"] == 64 << 20
    assert cfg["compact"] is False


# -- listeners in other processes -------------------------------------------------------------

def test_progress_and_completion_reach_a_listener_in_another_process(tmp_path, broker, tq):
    job = tq.add("double", 21)
    out, ready = tmp_path / "out", tmp_path / "ready"
    p = CTX.Process(target=tew.listen, args=(broker.path, job.id, str(out), str(ready)))
    p.start()
    try:
        wait_for(ready.exists, 60, "the listener to start")

        def handle(j):
            for pct in (25, 50, 75):
                j.update_progress(pct)
            return {"doubled": j.data * 2}

        with fastq.Worker(tq, handle):
            assert job.result(10) == {"doubled": 42}
        p.join(60)
        assert p.exitcode == 0
    finally:
        if p.is_alive():
            p.kill()
            p.join()
    got = [" ".join(x) for x in tew.lines(out)]
    assert [g for g in got if g.startswith("job-")] == ["job-progress 25", "job-progress 50", "job-progress 75",
                                                         "job-completed 42"]
    assert [g for g in got if g.startswith("qe-")] == ["qe-progress 25", "qe-progress 50", "qe-progress 75",
                                                        "qe-completed"]


def test_job_on_in_this_process_fires_once_even_after_the_job_finished_and_off_stops_it(tq):
    a = tq.add("a", 1)
    seen = []
    a.on("progress", lambda p: seen.append(("p", p)))
    a.on("completed", lambda r: seen.append(("c", r)))

    def handle(j):
        j.update_progress(1)
        j.update_progress(2)
        return j.data + 100

    with fastq.Worker(tq, handle):
        assert a.result(10) == 101
        wait_for(lambda: ("c", 101) in seen, 10, "the completed callback")
        late = []
        a.on("completed", lambda r: late.append(r))       # already finished: at once, once
        assert late == [101]
        b = tq.add("b", 2)
        b.on("progress", lambda p: seen.append(("bp", p)))
        b.off("progress")
        fails = tq.add("f", 3, attempts=1)
        reasons = []
        fails.on("failed", reasons.append)
    with fastq.Worker(tq, {"b": handle, "f": lambda j: 1 / 0}):
        b.result(10)
        with pytest.raises(fastq.JobFailed):
            fails.result(10)
        wait_for(lambda: reasons, 10, "the failed callback")
    time.sleep(0.1)
    assert seen == [("p", 1), ("p", 2), ("c", 101)]          # none of b's: it was turned off
    assert reasons == ["ZeroDivisionError: division by zero"] and late == [101]


# -- replay ------------------------------------------------------------------------------------

def test_replay_from_a_time_or_an_offset_returns_past_events(tq):
    first = [tq.add("old", i) for i in range(3)]
    time.sleep(0.05)
    t_mid = time.time()
    time.sleep(0.01)
    second = [tq.add("new", i) for i in range(2)]
    with tq.events(since=t_mid) as ev:
        evs = ev.poll(100)
    assert [(e.event, e.job_id) for e in evs] == [(x, j.id) for j in second for x in ("added", "waiting")]
    assert all(e.timestamp >= t_mid for e in evs)
    with tq.events(since=datetime.datetime.fromtimestamp(t_mid)) as ev:
        assert ev.poll(100) == evs
    with tq.events(offset=2) as ev:                           # the second job's events on
        got = ev.poll(100)
    assert got[0].offset == 2 and got[0].job_id == first[1].id and len(got) == 2 * 5 - 2
    with tq.events(since=time.time() + 60) as ev:             # the future: nothing yet
        assert ev.poll(100, 0.05) == []
        tq.add("newest", 9)
        assert [e.event for e in ev.poll(100)] == ["added", "waiting"]
    with tq.events() as ev:                                   # default: new events only
        assert ev.poll(100, 0.05) == []


def test_retention_drops_old_events_and_a_reader_moves_to_the_first_retained(tmp_path):
    with fastq.open(tmp_path / "data") as b:
        # the stored configuration wins: small segments and a small byte limit
        b.topic("ret.events", partitions=1, segment_bytes=4096, retention_bytes=8192)
        tq = fastq.TaskQueue("ret", b)
        for i in range(200):
            tq.add("x", {"i": i, "pad": "p" * 40})
        ev = tq.events(offset=0)
        lg = b.topic("ret.events").log(0)
        b.maintain()
        assert 0 < lg.start_offset < 400 - 8192 // 200 and lg.end_offset == 400   # old segments went
        got = ev.poll(1000)
        assert got[0].offset == lg.start_offset and got[-1].offset == 399
        assert [e.offset for e in got] == list(range(lg.start_offset, 400))
        ev.close()
        tq.close()


# -- asyncio ------------------------------------------------------------------------------------

def test_async_for_and_a_cancelled_await_consumes_nothing(tq):
    async def main():
        ev = tq.events(offset=0)
        t = asyncio.ensure_future(ev.apoll(10, None))       # nothing yet: it waits
        await asyncio.sleep(0.05)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        job = tq.add("x", 1)
        t = asyncio.ensure_future(ev.apoll(10, None))       # cancelled while the thread reads
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await asyncio.sleep(0.05)
        assert ev.position == 0
        got = []
        async for e in ev:
            got.append(e)
            if len(got) == 1:
                break
        assert [(e.event, e.offset) for e in got] == [("added", 0)] and ev.position == 1
        async for e in ev:                                  # continues where it stopped
            got.append(e)
            break
        assert [e.event for e in got] == ["added", "waiting"] and got[1].job_id == job.id
        assert await ev.apoll(10, 0.05) == []
        ev.close()

    asyncio.run(main())


def test_await_job_wait_never_blocks_the_loop(tq):
    async def main():
        ok = tq.add("ok", 2)
        bad = tq.add("bad", 3)
        gaps = []
        tick = asyncio.ensure_future(tew.ticker(gaps))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ok.wait(), 0.3)            # cancelled: leaves nothing behind
        with pytest.raises(fastq.Timeout):
            await ok.wait(timeout=0.2)
        w = fastq.Worker(tq, {"ok": lambda j: (time.sleep(0.3), j.data * 2)[1], "bad": lambda j: 1 / 0})
        try:
            assert await ok.wait(10) == 4
            with pytest.raises(fastq.JobFailed, match="ZeroDivisionError"):
                await bad.wait(10)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, w.close)
        tick.cancel()
        return gaps

    gaps = asyncio.run(main())
    assert len(gaps) > 30 and max(gaps) < 0.25, max(gaps)   # the loop kept ticking throughout


# -- bad input ----------------------------------------------------------------------------------

def test_bad_input_is_a_clear_error(tq, broker):
    job = tq.add("x", 1)
    with tq.events() as ev:
        cases = [
            (lambda: ev.on("finished", print), "unknown task event 'finished'"),
            (lambda: ev.off("nope"), "unknown task event"),
            (lambda: ev.on("completed", "not callable"), "callable"),
            (lambda: ev.poll(0), "max_events"),
            (lambda: tq.events(since=1, offset=2), "since or offset"),
            (lambda: tq.events(offset=-1), "offset"),
            (lambda: tq.events(since="yesterday"), "since"),
            (lambda: fastq.QueueEvents(broker), "TaskQueue"),
            (lambda: job.on("active", print), "job.on takes"),
            (lambda: job.on("progress", 5), "callable"),
            (lambda: job.off("removed"), "job.off takes"),
        ]
        for call, words in cases:
            with pytest.raises(fastq.FastqError, match=words) as e:
                call()
            assert isinstance(e.value, ValueError)
    with pytest.raises(fastq.Closed):
        ev.poll()
    with fastq.Worker(tq, lambda j: "fine"):
        assert job.result(10) == "fine"                         # the queue keeps working


# -- faults ------------------------------------------------------------------------------------

class _FailingLog:
    def __init__(self, err):
        self.err = err

    def append_batch(self, recs):
        raise self.err

    def append(self, value, key):
        raise self.err

    def append_many(self, values, key):
        raise self.err


class _FailingTopic:
    """The events topic with appends failing as a full disk does (the C fault points are
    process-wide: they would hit the job-state log first)."""

    def __init__(self, topic, err):
        self._topic, self._log = topic, _FailingLog(err)
        self.name = topic.name

    def log(self, p):
        return self._log


def test_an_event_that_cannot_be_written_is_logged_and_loses_no_job(tq, caplog):
    real = tq._events.topic
    ev = tq.events()
    tq._events.topic = _FailingTopic(real, fastq.DiskFull(28, "No space left on device"))
    try:
        job = tq.add("x", 1)                                  # stored and published all the same
        with fastq.Worker(tq, lambda j: j.data + 1):
            assert job.result(10) == 2
    finally:
        tq._events.topic = real
    assert tq._events.lost == 4                               # added, waiting, active, completed
    assert "event(s) not written (DiskFull" in caplog.text
    assert ev.poll(10) == []
    again = tq.add("x", 2)
    with fastq.Worker(tq, lambda j: j.data + 1):
        assert again.result(10) == 3
    assert [e.event for e in drain(ev, lambda e: e.event == "completed")] == \
        ["added", "waiting", "active", "completed"]
    ev.close()


def test_many_waits_share_one_listener_and_a_cancelled_one_leaves_no_callback(tq):
    """200 waiters are woken by the task queue's one listener: they do not hold the
    loop's default executor (200 waiters polling there in 100 ms slices would keep any
    other run_in_executor call waiting for seconds)."""
    jobs = [tq.add("x", i) for i in range(200)]
    gate = threading.Event()

    async def main():
        gone = asyncio.ensure_future(jobs[0].wait())
        await asyncio.sleep(0.2)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        waits = asyncio.gather(*(j.wait(60) for j in jobs))
        await asyncio.sleep(0.5)                               # all registered, none finished
        t0 = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)
        executor_wait = time.monotonic() - t0
        w = fastq.Worker(tq, lambda j: gate.wait() and j.data + 1, batch=200)
        try:
            while w.completed < 0 or jobs[0].state != "active":
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            gate.set()                                         # all 200 finish within milliseconds
            got = await waits
            return got, time.monotonic() - t0, executor_wait
        finally:
            await asyncio.get_running_loop().run_in_executor(None, w.close)

    got, took, executor_wait = asyncio.run(main())
    assert got == [i + 1 for i in range(200)]
    assert took < 1.5, took
    assert executor_wait < 0.5, executor_wait
    assert tq._job_listeners._by_job == {}                    # every callback was removed
