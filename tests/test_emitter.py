"""fastq.EventEmitter: Node's EventEmitter rules (fastq/pubsub/emitter.py docstring)."""
from __future__ import annotations

import asyncio
import os
import re
import threading

import pytest

import fastq
from fastq import EventEmitter, InvalidArgument, UnhandledEvent


def test_the_course_order_service_example():
    orders = EventEmitter()
    sent, reserved = [], []

    @orders.on("order.created")
    def send_email(order):
        sent.append(order["id"])

    @orders.on("order.created")
    def update_inventory(order):
        reserved.append(order["id"])

    assert orders.emit("order.created", {"id": 42}) is True
    assert sent == [42] and reserved == [42]
    assert orders.emit("order.cancelled", {"id": 42}) is False


def test_on_once_off_listeners_and_order():
    em = EventEmitter()
    calls = []
    a = em.on("x", lambda v: calls.append(("a", v)))
    b = em.once("x", lambda v: calls.append(("b", v)))
    em.on("x", a)                                   # the same function twice: called twice
    assert em.listeners("x") == [a, b, a] and em.listener_count("x") == 3
    em.emit("x", 1)
    em.emit("x", 2)
    assert calls == [("a", 1), ("b", 1), ("a", 1), ("a", 2), ("a", 2)]
    assert em.off("x", a) is True and em.listeners("x") == [a]
    assert em.off("x", b) is False
    em.off("x", a)
    assert em.listeners("x") == [] and em.event_names() == []
    em.on("y", a)
    em.remove_all_listeners()
    assert em.event_names() == []
    with pytest.raises(InvalidArgument):
        em.on("x", 42)
    with pytest.raises(InvalidArgument):
        em.on(["unhashable"], a)
    with pytest.raises(InvalidArgument):
        EventEmitter(loop="nope")


def test_listener_may_change_listeners_during_emit():
    em = EventEmitter()
    calls = []

    def first():
        calls.append("first")
        em.off("x", second)
        em.on("x", lambda: calls.append("third"))

    def second():
        calls.append("second")

    em.on("x", first)
    em.on("x", second)
    em.emit("x")                                     # the snapshot taken at emit runs
    assert calls == ["first", "second"]
    calls.clear()
    em.emit("x")
    assert calls == ["first", "third"]


def test_errors_go_to_error_listeners_and_the_rest_still_run():
    em = EventEmitter()
    errors, calls = [], []
    em.on("error", errors.append)
    em.on("x", lambda: 1 / 0)
    em.on("x", lambda: calls.append("after"))
    assert em.emit("x") is True
    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError) and calls == ["after"]


def test_without_error_listener_errors_raise():
    em = EventEmitter()
    calls = []
    em.on("x", lambda: 1 / 0)
    em.on("x", lambda: calls.append("after"))
    with pytest.raises(ZeroDivisionError):
        em.emit("x")
    assert calls == []                                # as in Node: the throw ends the emit
    with pytest.raises(KeyError):
        em.emit("error", KeyError("k"))
    with pytest.raises(UnhandledEvent) as ei:
        em.emit("error", "just a string")
    assert ei.value.value == "just a string" and isinstance(ei.value, fastq.FastqError)


def test_error_listener_that_raises_propagates():
    em = EventEmitter()
    em.on("error", lambda e: 1 / 0)
    em.on("x", lambda: [][1])
    with pytest.raises(ZeroDivisionError):
        em.emit("x")


def test_once_is_called_once_under_concurrent_emits():
    em = EventEmitter()
    calls = []
    lock = threading.Lock()

    def count(i):
        with lock:
            calls.append(i)

    for _ in range(100):
        em.once("x", count)
    em.on("x", lambda i: None)
    barrier = threading.Barrier(8)

    def emitter(i):
        barrier.wait()
        for _ in range(50):
            em.emit("x", i)

    ts = [threading.Thread(target=emitter, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(calls) == 100                          # each once-listener exactly once
    assert em.listener_count("x") == 1


def test_async_listeners_scheduled_by_emit_and_awaited_by_emit_async():
    async def main():
        em = EventEmitter()
        done = []

        @em.on("order.created")
        async def reserve(order):
            await asyncio.sleep(0)
            done.append(("reserve", order))

        em.on("order.created", lambda order: done.append(("email", order)))
        assert em.emit("order.created", 1)
        assert done == [("email", 1)]                  # the async one is scheduled, not run yet
        await em.wait_idle()
        assert done == [("email", 1), ("reserve", 1)]
        done.clear()
        assert await em.emit_async("order.created", 2)
        assert done == [("reserve", 2), ("email", 2)]   # in order, each awaited

    asyncio.run(main())


def test_async_listener_errors_are_reported():
    async def main():
        em = EventEmitter()

        async def boom():
            raise ValueError("bad")

        em.on("x", boom)
        reported = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda lp, ctx: reported.append(ctx["exception"]))
        em.emit("x")
        await em.wait_idle()
        await asyncio.sleep(0)
        assert len(reported) == 1 and isinstance(reported[0], ValueError)   # no error listener: the loop's handler
        errors = []
        em.on("error", errors.append)
        em.emit("x")
        await em.wait_idle()
        await asyncio.sleep(0)
        assert len(errors) == 1 and isinstance(errors[0], ValueError) and len(reported) == 1
        errors.clear()
        assert await em.emit_async("x") is True
        assert len(errors) == 1
        em.remove_all_listeners("error")
        with pytest.raises(ValueError):
            await em.emit_async("x")

    asyncio.run(main())


def test_async_listener_from_another_thread():
    async def main():
        loop = asyncio.get_running_loop()
        em = EventEmitter(loop=loop)
        got = asyncio.Event()
        seen = []

        async def listener(v):
            seen.append((v, threading.current_thread() is threading.main_thread()))
            got.set()

        em.on("x", listener)
        await asyncio.to_thread(em.emit, "x", 5)      # emitted from a worker thread
        await asyncio.wait_for(got.wait(), 5)
        assert seen == [(5, True)]                     # ran on the loop's thread

    asyncio.run(main())
    em = EventEmitter()

    async def listener():
        pass

    em.on("x", listener)
    with pytest.raises(InvalidArgument):               # no loop to run it on
        em.emit("x")


def test_docs_examples_run(tmp_path, monkeypatch, capsys):
    """The self-contained examples (those starting with ``import fastq``) of the pub/sub
    section of docs/BACKPRESSURE.md run as written."""
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "BACKPRESSURE.md")) as f:
        doc = f.read()
    section = doc.split("## Pub/sub and EventEmitter", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if b.startswith("import fastq")]
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for b in blocks:
        exec(compile(b, "BACKPRESSURE.md", "exec"), {})
    out = capsys.readouterr().out
    assert "email for order 42" in out and "reserve stock for order 42" in out
