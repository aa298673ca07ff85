"""Dead letters of a task queue (issue 16): a job that ends failed — attempts used up, a
permanent failure, stalled too often — is also sent to a message queue or another task
queue, with its name, data, options, reason and stack traces, exactly once even when the
worker is killed -9 between recording the failure and settling its message."""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal

import msgspec
import pytest

import fastq

import task_workers
from taskutil import broker, wait_for  # noqa: F401 - a fixture

CTX = mp.get_context("spawn")


def _letters(broker, name: str) -> list[tuple[dict, dict]]:
    """(document, headers) of every dead letter in queue ``name``, acked."""
    q = broker.queue(name, codec="raw")
    out = []
    while True:
        got = q.receive(100, wait=0)
        if not got:
            return out
        for m in got:
            out.append((msgspec.json.decode(bytes(m.body)), m.headers))
            m.ack()


def _fail(job):
    raise ValueError(f"bad input {job.data}")


def test_a_job_that_fails_for_good_is_dead_lettered_once_with_its_stack_traces(broker):
    tq = fastq.TaskQueue("images", broker, dead_letter="failed-images")
    bad = tq.add("resize", {"url": "u"}, attempts=2, priority=3)
    good = tq.add("ok", 1)
    with fastq.Worker(tq, {"resize": _fail, "ok": lambda j: j.data}) as w:
        wait_for(lambda: w.failed == 1 and w.completed == 1, 10, "both jobs to end")
    assert bad.state == "failed" and w.retried == 1
    letters = _letters(broker, "failed-images")
    assert len(letters) == 1                           # not the retry, not the completed job
    doc, hdrs = letters[0]
    assert doc["queue"] == "images" and doc["id"] == bad.id and doc["name"] == "resize"
    assert doc["data"] == {"url": "u"} and doc["opts"]["attempts"] == 2 and doc["opts"]["priority"] == 3
    assert doc["failed_reason"] == "ValueError: bad input {'url': 'u'}" == bad.failed_reason
    assert doc["attempts_made"] == 2 and len(doc["stacktrace"]) == 2
    assert all("ValueError: bad input" in st for st in doc["stacktrace"])
    assert doc["finished_ms"] / 1000 == bad.finished_on and doc["gen"] == 0
    assert hdrs["dlq-source-queue"] == b"images.tasks" and hdrs["dlq-reason"].startswith(b"ValueError")


def test_a_permanent_failure_is_dead_lettered_and_the_queue_keeps_working(broker):
    tq = fastq.TaskQueue("images", broker, dead_letter="failed-images")
    job = tq.add("nobody-handles-this", 5, attempts=5)
    later = tq.add("ok", 2)
    with fastq.Worker(tq, {"ok": lambda j: j.data * 2}) as w:
        assert later.result(10) == 4
        wait_for(lambda: w.failed == 1, 10, "the job to fail")
    [(doc, _)] = _letters(broker, "failed-images")
    assert doc["id"] == job.id and "no handler for job name" in doc["failed_reason"]
    assert doc["attempts_made"] == 1                   # a permanent failure is not retried


def test_dead_letters_to_another_task_queue_are_jobs_there(broker):
    dead = fastq.TaskQueue("images-dead", broker)
    tq = fastq.TaskQueue("images", broker, dead_letter=dead)
    job = tq.add("resize", [1, 2])
    with fastq.Worker(tq, _fail) as w:
        wait_for(lambda: w.failed == 1, 10, "the job to fail")
    [letter] = dead.get_jobs("waiting")
    assert letter.name == "resize" and letter.data["id"] == job.id and letter.data["data"] == [1, 2]
    assert letter.data["failed_reason"] == "ValueError: bad input [1, 2]"
    seen = []
    with fastq.Worker(dead, lambda j: seen.append(j.data["id"])) as w2:
        wait_for(lambda: w2.completed == 1, 10, "the dead letter job to run")
    assert seen == [job.id]


def test_without_dead_letters_nothing_is_published(broker):
    tq = fastq.TaskQueue("images", broker)
    tq.add("resize", 1)
    with fastq.Worker(tq, _fail) as w:
        wait_for(lambda: w.failed == 1, 10, "the job to fail")
    assert "failed-images" not in broker.queues()


@pytest.mark.parametrize("bad, match", [(123, "queue name .* or a fastq.TaskQueue"),
                                        ("images.tasks", "own message queue"),
                                        ("bad name!", "dead_letter queue"),
                                        ("", "dead_letter queue")])
def test_bad_dead_letter_targets_are_refused(broker, bad, match):
    with pytest.raises(fastq.InvalidArgument, match=match):
        fastq.TaskQueue("images", broker, dead_letter=bad)
    tq = fastq.TaskQueue("images", broker)               # nothing was left half-made
    assert tq.add("x", 1).state == "waiting"


def test_a_task_queue_cannot_dead_letter_to_itself(broker):
    tq = fastq.TaskQueue("images", broker)
    with pytest.raises(fastq.InvalidArgument, match="cannot be itself"):
        fastq.TaskQueue("images", broker, dead_letter=tq)


def test_a_job_stalled_too_often_is_dead_lettered(tmp_path, broker):
    tq = fastq.TaskQueue(task_workers.QUEUE, broker, dead_letter="dead")
    job = tq.add("stall", 1)                            # its first run hangs
    p = CTX.Process(target=task_workers.run_worker, args=(broker.path, str(tmp_path / "runs"),
                                                          str(tmp_path / "stop")))
    p.start()
    try:
        wait_for(lambda: job.state == "active", 30, "the job to start")
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
    with fastq.Worker(tq, lambda j: None, max_stalled_count=0) as w:
        wait_for(lambda: w.failed == 1, 10, "the stalled job to fail")
    [(doc, _)] = _letters(broker, "dead")
    assert doc["id"] == job.id and "stalled more than allowable limit" in doc["failed_reason"]


def _kill_loop(tmp_path, loops: int, seed: int) -> None:
    rng = random.Random(seed)
    d = tmp_path / "data"
    with fastq.open(d) as b:
        tq = fastq.TaskQueue(task_workers.QUEUE, b, dead_letter="dead")
        jobs = []
        for i in range(loops):
            jobs.append(tq.add("resize", i))
            kill_at = rng.choice(["before-letter", "after-letter"])
            stop = tmp_path / f"stop-{i}"
            p = CTX.Process(target=task_workers.run_failing_worker, args=(str(d), "dead", kill_at, i, str(stop)))
            p.start()
            p.join(60)
            assert p.exitcode == -signal.SIGKILL, f"loop {i} ({kill_at}, seed {seed}): exit code {p.exitcode}"
            assert jobs[-1].state == "failed"              # recorded before the kill
        stop = tmp_path / "stop-last"                      # a worker that is not killed settles the rest
        p = CTX.Process(target=task_workers.run_failing_worker, args=(str(d), "dead", "", -1, str(stop)))
        p.start()
        try:
            wait_for(lambda: tq.queue.depth().in_flight == 0 and tq.queue.depth().ready == 0, 30,
                     "the redelivered messages to be settled")
        finally:
            stop.touch()
            p.join(30)
        assert p.exitcode == 0
        letters = _letters(b, "dead")
        ids = sorted(doc["id"] for doc, _ in letters)
        assert ids == sorted(j.id for j in jobs), f"seed {seed}: {len(letters)} letters for {len(jobs)} jobs"
        assert all(j.state == "failed" and j.attempts_made == 1 for j in jobs)


def test_kill_9_between_the_failure_and_the_ack_leaves_exactly_one_dead_letter(tmp_path):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    _kill_loop(tmp_path, 24 if os.environ.get("FASTQ_TORTURE") == "1" else 4, seed)
