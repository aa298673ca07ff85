"""``fastq tasks`` (fastq.cli.tasks) driven through click's runner: counts, list, show,
pause/resume seen by a worker, retry-failed, promote, clean, drain, remove, obliterate —
their text and --json output, the questions before removing, and that bad input (an
unknown task queue or job, an active job) is one line and exit code 2."""
from __future__ import annotations

import json
import threading
import time

import pytest
from click.testing import CliRunner

import fastq
from fastq.cli import cli
from test_cli_ops import one_line_error
from taskutil import wait_for


def run(*args, ok=True, input=None, code=0):
    res = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    if ok:
        assert res.exit_code == code, (res.output, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception   # no crash
    return res


@pytest.fixture
def setup(tmp_path):
    """A broker with task queue "img": 2 completed jobs, 1 failed, 1 waiting, 1 delayed."""
    path = str(tmp_path / "b")
    with fastq.open(path) as b:
        tq = fastq.TaskQueue("img", b)

        def handle(job):
            if job.name == "bad":
                raise ValueError("broken image")
            return job.data * 2

        ids = {}
        with fastq.Worker(tq, handle):
            for n, d in (("ok", 1), ("ok", 2), ("bad", 3)):
                j = tq.add(n, d)
                try:
                    j.result(10)
                except fastq.JobFailed:
                    pass
                ids.setdefault(n, []).append(j.id)
        tq.pause()
        ids["wait"] = [tq.add("ok", 4).id]
        ids["later"] = [tq.add("ok", 5, delay=3600).id]
        tq.resume()
    return path, ids


def test_counts_list_show_text_and_json(setup):
    path, ids = setup
    doc = json.loads(run("tasks", "counts", "img", "-b", path, "--json").output)
    assert doc == {"queue": "img", "is_paused": False,
                   "counts": {"waiting": 1, "active": 0, "delayed": 1, "prioritized": 0, "completed": 2,
                              "failed": 1, "paused": 0}}
    text = run("tasks", "counts", "img", "-b", path).output
    assert "completed" in text and "is paused" not in text
    rows = json.loads(run("tasks", "list", "img", "-b", path, "--json").output)
    assert [r["id"] for r in rows] == [ids["later"][0], ids["wait"][0], ids["bad"][0], ids["ok"][1], ids["ok"][0]]
    rows = json.loads(run("tasks", "list", "img", "-b", path, "--json", "-s", "completed", "--asc").output)
    assert [r["return_value"] for r in rows] == [2, 4]
    rows = json.loads(run("tasks", "list", "img", "-b", path, "--json", "--start", "1", "--end", "1").output)
    assert [r["id"] for r in rows] == [ids["wait"][0]]
    text = run("tasks", "list", "img", "-b", path, "-s", "failed").output
    assert ids["bad"][0] in text and "ValueError: broken image" in text and ids["ok"][0] not in text
    doc = json.loads(run("tasks", "show", "img", ids["bad"][0], "-b", path, "--json").output)
    assert doc["state"] == "failed" and doc["data"] == 3 and "broken image" in doc["stacktrace"][0]
    text = run("tasks", "show", "img", ids["ok"][0], "-b", path).output
    assert "return_value: 2" in text and "state: completed" in text


def test_pause_and_resume_reach_a_running_worker(setup):
    path, ids = setup
    assert "paused: img" in run("tasks", "pause", "img", "-b", path).output
    assert "is paused" in run("tasks", "counts", "img", "-b", path).output
    with fastq.open(path) as b:
        tq = fastq.TaskQueue("img", b)
        ran = []
        with fastq.Worker(tq, lambda j: ran.append(j.id)):
            job = tq.add("ok", 9)
            time.sleep(0.3)
            assert ran == [] and tq.counts()["paused"] == 2
            assert "resumed: img" in run("tasks", "resume", "img", "-b", path).output
            job.result(10)
            wait_for(lambda: ids["wait"][0] in ran, what="the waiting job to run")
        assert sorted(ran) == sorted([job.id, ids["wait"][0]])


def test_retry_failed_promote_clean_drain_remove_obliterate(setup):
    path, ids = setup
    assert json.loads(run("tasks", "retry-failed", "img", "-b", path, "--json").output) == ids["bad"]
    assert "promoted: img: 1 job(s)" in run("tasks", "promote", "img", "-b", path).output
    with fastq.open(path) as b:
        tq = fastq.TaskQueue("img", b)
        assert tq.get_job(ids["bad"][0]).state == "waiting" and tq.get_job(ids["later"][0]).state == "waiting"
    assert run("tasks", "drain", "img", "-b", path, input="n\n", code=1).exit_code == 1      # asks first
    assert "drained: img: 3 job(s)" in run("tasks", "drain", "img", "-b", path, "--delayed", "--yes").output
    time.sleep(0.05)
    assert json.loads(run("tasks", "clean", "img", "-b", path, "--grace", "0", "--limit", "1", "--yes",
                          "--json").output) == [ids["ok"][0]]
    assert "cleaned: img: 1 job(s)" in run("tasks", "clean", "img", "-b", path, "--grace", "0", "--yes").output
    with fastq.open(path) as b:
        tq = fastq.TaskQueue("img", b)
        keep = tq.add("ok", 7).id
        gone = tq.add("ok", 8).id
    assert f"removed: img: {gone}" in run("tasks", "remove", "img", gone, "-b", path).output
    one_line_error(run("tasks", "remove", "img", gone, "-b", path, ok=False), "no job")
    assert "obliterated: img: 1 job(s)" in run("tasks", "obliterate", "img", "-b", path, "--yes").output
    doc = json.loads(run("tasks", "counts", "img", "-b", path, "--json").output)
    assert sum(doc["counts"].values()) == 0 and keep


def test_bad_input_is_one_line_and_exit_code_2(setup, tmp_path):
    path, ids = setup
    one_line_error(run("tasks", "counts", "nope", "-b", path, ok=False), "no task queue 'nope'")
    one_line_error(run("tasks", "show", "img", "no-such-job", "-b", path, ok=False), "no job 'no-such-job'")
    one_line_error(run("tasks", "promote", "img", ids["ok"][0], "-b", path, ok=False), "not delayed")
    one_line_error(run("tasks", "counts", "img", "-b", tmp_path / "missing", ok=False), "no such directory")
    assert run("tasks", "clean", "img", "-b", path, "--grace", "-1", ok=False).exit_code == 2
    assert run("tasks", "list", "img", "-b", path, "-s", "done", ok=False).exit_code == 2
    with fastq.open(path) as b:
        tq = fastq.TaskQueue("img", b)
        release = threading.Event()
        with fastq.Worker(tq, lambda j: release.wait(10)):
            wait_for(lambda: tq.counts()["active"] == 1, what="the waiting job to start")
            active = tq.get_jobs("active")[0].id
            one_line_error(run("tasks", "remove", "img", active, "-b", path, ok=False), "is active")
            one_line_error(run("tasks", "obliterate", "img", "-b", path, "--yes", ok=False), "force")
            release.set()
    assert "obliterated" in run("tasks", "obliterate", "img", "-b", path, "--yes").output


def test_add_makes_the_task_queue_and_a_job_a_worker_runs(tmp_path):
    path = tmp_path / "b"
    fastq.open(path).close()
    jid = run("tasks", "add", "img", "resize", '{"width": 800}', "-b", path, "--priority", "3").output.strip()
    assert run("tasks", "add", "img", "resize", "1", "-b", path, "--job-id", "r1").output.strip() == "r1"
    assert run("tasks", "add", "img", "resize", "2", "-b", path, "--job-id", "r1").output.strip() == "r1"
    doc = json.loads(run("tasks", "show", "img", jid, "-b", path, "--json").output)
    assert doc["data"] == {"width": 800} and doc["opts"]["priority"] == 3 and doc["state"] == "waiting"
    one_line_error(run("tasks", "add", "img", "resize", "{nope", "-b", path, ok=False), "DATA must be JSON")
    with fastq.open(path) as b:
        tq = fastq.TaskQueue("img", b)
        with fastq.Worker(tq, lambda j: j.data):
            assert tq.get_job(jid).result(10) == {"width": 800} and tq.get_job("r1").result(10) == 1
