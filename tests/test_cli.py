"""The ``fastq`` command line: every bench scenario runs (tiny sizes, no timing asserted),
--json validates against the documented schema, --compare reports missing peers as
skipped with a reason, --plot draws a PNG, bad options are usage errors."""
from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
from click.testing import CliRunner

from fastq.bench import peers as _benchpeers, scenarios as benchmarks
from fastq.cli import cli

TINY = ["--messages", "300", "--seconds", "2", "--latency-seconds", "0.02", "--rate", "1000",
        "--partitions", "2", "--consumers", "2", "--redelivery-trials", "2"]


def run(*args, ok=True):
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def validate(doc):
    jsonschema.validate(doc, benchmarks.RESULT_SCHEMA,
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_every_scenario_runs_and_json_validates(tmp_path):
    out = tmp_path / "r.json"
    res = run("bench", *TINY, "--dir", str(tmp_path / "data"), "--json", str(out))
    doc = json.loads(out.read_text())
    validate(doc)
    assert [s["name"] for s in doc["scenarios"]] == list(benchmarks.SCENARIOS)
    assert doc["peers"] == [] and doc["ratios"] == []
    for s in doc["scenarios"]:
        assert s["messages"] > 0 and s["messages_per_s"] > 0, s
        assert s["name"] in res.output
    lat = {s["name"]: s["latency"] for s in doc["scenarios"]}
    assert lat["e2e"]["count"] > 0 and lat["ring"]["count"] > 0 and lat["publish"] is None
    assert len(lat["e2e"]["cdf_us"]) == 101
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["fastq_version"]
    assert list((tmp_path / "data").iterdir()) == []      # scenario directories are removed


def test_json_to_stdout_and_producers(tmp_path):
    res = CliRunner().invoke(cli, ["bench", *TINY, "--scenario", "e2e", "--scenario", "durability-group",
                                   "--producers", "2", "--json", "-"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    validate(doc)
    assert [s["name"] for s in doc["scenarios"]] == ["e2e", "durability-group"]
    assert doc["scenarios"][0]["extra"]["producers"] == 2


class _Missing(benchmarks.Transport):
    name = "no-such-peer"
    description = "a peer whose client library is not installed"
    compare_with = ["e2e"]
    module = "fastq_no_such_module_for_tests"


class _Broken(benchmarks.Transport):
    name = "broken-peer"
    description = "a peer that fails in setup"
    compare_with = ["e2e"]

    def setup(self, workdir, cfg):
        raise OSError("cannot start")


def test_compare_reports_missing_and_failed_peers(tmp_path, monkeypatch):
    monkeypatch.setattr(_benchpeers, "PEERS", [_benchpeers.MPQueue, _Missing, _Broken])
    out = tmp_path / "r.json"
    res = run("bench", *TINY, "--scenario", "e2e", "--compare", "--json", str(out))
    doc = json.loads(out.read_text())
    validate(doc)
    peers = {p["name"]: p for p in doc["peers"]}
    assert set(peers) == {"multiprocessing.Queue", "no-such-peer", "broken-peer"}
    assert peers["no-such-peer"]["status"] == "skipped"
    assert "fastq_no_such_module_for_tests" in peers["no-such-peer"]["reason"]
    assert peers["broken-peer"]["status"] == "failed" and "cannot start" in peers["broken-peer"]["reason"]
    assert peers["multiprocessing.Queue"]["status"] == "ok"
    assert [(r["scenario"], r["peer"]) for r in doc["ratios"]] == [("e2e", "multiprocessing.Queue")]
    assert "skipped" in res.output and "no-such-peer" in res.output


def test_missing_server_binary_is_skipped(monkeypatch):
    monkeypatch.setattr(_benchpeers, "_which", lambda binary: None)
    # with its client importable (a stand-in module), a peer is still skipped for a
    # missing server binary, and the reason says so
    monkeypatch.setattr(_benchpeers.RedisStreams, "module", "json")
    assert _benchpeers.availability(_benchpeers.RedisStreams) == "redis-server is not on PATH"
    monkeypatch.setattr(_benchpeers.RedisStreams, "module", "fastq_no_such_client_module")
    assert "not importable" in _benchpeers.availability(_benchpeers.RedisStreams)
    cfg = benchmarks.quick_config(messages=10)
    r = _benchpeers.run_peer(_benchpeers.NatsJetStream, cfg, "/nonexistent")
    assert r["status"] == "skipped" and r["reason"]


def test_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'fastq-broker[plot]')")
    png = tmp_path / "b.png"
    run("bench", *TINY, "--scenario", "publish", "--scenario", "ring", "--plot", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, needle", [
    (["--messages", "0"], "--messages"),
    (["--size", "4"], "--size"),
    (["--partitions", "x"], "--partitions"),
    (["--scenario", "nope"], "--scenario"),
    (["--peer", "nope"], "--peer"),
    (["--bogus"], "--bogus"),
])
def test_bad_options_are_usage_errors(args, needle):
    res = run("bench", *args, ok=False)
    assert res.exit_code == 2, res.output
    assert "Usage:" in res.output and needle in res.output
    assert "Traceback" not in res.output


def test_list_info_and_help():
    res = run("bench", "--list")
    for name in benchmarks.SCENARIOS:
        assert name in res.output
    for name in _benchpeers.peer_names():
        assert name in res.output
    doc = json.loads(run("info", "--json").output)
    assert doc["cores"] >= 1 and "cpu_model" in doc
    assert "--compare" in run("bench", "--help").output


def test_console_entry_point_runs():
    # python -m fastq is the console script's twin; a subprocess proves it starts cleanly
    res = subprocess.run([sys.executable, "-m", "fastq", "bench", *TINY, "--scenario", "publish"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "publish" in res.stdout and "msg/s" in res.stdout


def test_schema_rejects_a_skipped_peer_without_reason():
    doc = {"name": "x", "status": "skipped", "reason": None, "compare_with": []}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, benchmarks.PEER_SCHEMA)


# -- verify / repair (fastq issue 12) -----------------------------------------------------

def _damaged_broker(tmp_path):
    import os

    import fastq

    bpath = tmp_path / "b"
    with fastq.open(bpath) as b:
        t = b.topic("t", partitions=2, segment_bytes=4096)
        for i in range(400):
            t.publish(b"v%d" % i, partition=i % 2)
        segs = t.log(1).segments()
    os.truncate(segs[1]["path"], segs[1]["bytes"] // 2 + 1)     # inside a batch
    return bpath, segs[1]["path"]


def test_verify_and_repair_commands(tmp_path):
    bpath, seg = _damaged_broker(tmp_path)
    res = run("verify", str(bpath), ok=False)
    assert res.exit_code == 1 and seg in res.output and "fastq repair" in res.output
    res = run("verify", str(bpath), "--json", ok=False)
    doc = json.loads(res.stdout)
    assert res.exit_code == 1 and not doc["ok"]
    assert any(p["path"] == seg for log in doc["logs"] for p in log["problems"])
    res = run("repair", str(bpath), "--dry-run")
    assert "would keep" in res.output and "would move" in res.output
    assert run("verify", str(bpath), ok=False).exit_code == 1       # the dry run changed nothing
    res = run("repair", str(bpath))
    assert "lost  offsets" in res.output and "damaged" in res.output
    res = run("verify", str(bpath))
    assert "problem" not in res.output
    assert run("verify", str(bpath / "topics" / "t" / "0")).exit_code == 0


def test_verify_and_repair_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for cmd in ("verify", "repair"):
        for d in ("nope", "empty"):
            res = CliRunner().invoke(cli, [cmd, str(tmp_path / d)])
            assert res.exit_code == 2 and "Traceback" not in res.output
            assert len(res.output.strip().splitlines()) == 1, res.output


def test_repair_of_a_log_open_elsewhere_is_one_line(tmp_path):
    from fastq import Log

    with Log(tmp_path / "log") as log:
        log.append(b"x")
        res = CliRunner().invoke(cli, ["repair", str(tmp_path / "log")])
    assert res.exit_code == 2 and "open in another process" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
