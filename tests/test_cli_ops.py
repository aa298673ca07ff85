"""The operator commands of ``fastq`` (fastq issue 13) driven through click's runner:
topics, produce, consume, groups, dump, verify — their text and --json output, that the
read-only ones write nothing, and that every bad input (unknown topic or group, a path
that is not a broker, a bad format string or time) is one line and exit code 2."""
from __future__ import annotations

import json
import os
import struct

import pytest
from click.testing import CliRunner

import fastq
from fastq.cli import cli
from fastq.cli._common import fmt_time, parse_time
from logutil import tree_snapshot

T0 = 1_796_464_800_000          # 2026-12-05T10:00:00Z


def run(*args, ok=True, input=None, code=0):
    res = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    if ok:
        assert res.exit_code == code, (res.output, res.exception)
    assert "Traceback" not in res.output
    return res


def one_line_error(res, needle):
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastq: error: ") and needle in lines[0], res.output


@pytest.fixture
def broker(tmp_path):
    """A broker with topic "orders" (3 partitions): records k<i>=v<i> at T0 + i s, partition i % 3."""
    path = tmp_path / "b"
    with fastq.open(path) as b:
        t = b.topic("orders", partitions=3, segment_bytes=4096)
        for i in range(30):
            t.publish(b"v%d" % i, key=b"k%d" % i, partition=i % 3, timestamp=T0 + i * 1000,
                      headers=[("n", b"%d" % i)])
    return str(path)


# -- topics -------------------------------------------------------------------------------

def test_topics_create_makes_a_missing_or_empty_broker_but_never_adopts_another_directory(tmp_path):
    new = tmp_path / "new"
    assert "created: t" in run("topics", "create", "-b", new, "t", "-p", "2").output
    with fastq.open(new, create=False) as b:
        assert b.topics() == ["t"] and b.topic("t").partitions == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "created: t" in run("topics", "create", "-b", empty, "t").output
    assert (empty / "broker.json").is_file()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    one_line_error(run("topics", "create", "-b", other, "t", ok=False), "not a fastq broker directory")
    assert sorted(os.listdir(other)) == ["cat.jpg"]
    one_line_error(run("topics", "create", "-b", tmp_path / "no" / "such", "t", ok=False), "parent directory")
    one_line_error(run("topics", "list", "-b", tmp_path / "missing", ok=False), "no such directory")
    assert not (tmp_path / "missing").exists()


def test_topics_create_list_describe_alter_delete(broker):
    res = run("topics", "create", "-b", broker, "events", "--partitions", "2", "--retention-ms", "60000",
              "--compact")
    assert "created: events" in res.output
    one_line_error(run("topics", "create", "-b", broker, "events", ok=False), "already exists")
    assert "exists: events" in run("topics", "create", "-b", broker, "events", "--if-not-exists").output
    rows = {r["topic"]: r for r in json.loads(run("topics", "list", "-b", broker, "--json").output)}
    assert rows["orders"]["partitions"] == 3 and rows["orders"]["records"] == 30 and rows["orders"]["bytes"] > 0
    assert rows["events"] == {"topic": "events", "partitions": 2, "storage": "log", "records": 0, "bytes": 0,
                              "retention_ms": 60000, "retention_bytes": None, "compact": True}
    text = run("topics", "list", "-b", broker).output
    assert "orders" in text and "60,000 ms" in text
    doc = json.loads(run("topics", "describe", "-b", broker, "orders", "--json").output)
    assert [(p["partition"], p["start_offset"], p["end_offset"]) for p in doc["partitions"]] == \
        [(0, 0, 10), (1, 0, 10), (2, 0, 10)]
    assert doc["config"]["segment_bytes"] == 4096
    assert "segments" in run("topics", "describe", "-b", broker, "orders").output
    run("topics", "alter", "-b", broker, "events", "--partitions", "4", "--no-compact")
    doc = json.loads(run("topics", "describe", "-b", broker, "events", "--json").output)
    assert doc["config"]["partitions"] == 4 and doc["config"]["compact"] is False and len(doc["partitions"]) == 4
    one_line_error(run("topics", "alter", "-b", broker, "events", "--partitions", "2", ok=False), "only grow")
    one_line_error(run("topics", "alter", "-b", broker, "events", ok=False), "nothing to alter")
    assert "deleted: events" in run("topics", "delete", "-b", broker, "events").output
    assert [r["topic"] for r in json.loads(run("topics", "list", "-b", broker, "--json").output)] == ["orders"]


def test_read_only_commands_write_nothing(broker):
    with fastq.open(broker) as b, b.topic("orders").consumer("g") as c:
        c.poll(5, timeout=1)
        c.commit()
    seg = os.path.join(broker, "topics", "orders", "0", "00000000000000000000.log")
    before = tree_snapshot(broker)
    for args in (["topics", "list"], ["topics", "describe", "orders"], ["consume", "orders"],
                 ["consume", "orders", "--json", "--from", "-1h"], ["groups", "list"],
                 ["groups", "describe", "g"], ["groups", "reset-offsets", "g", "-t", "orders", "--to-earliest"]):
        run(*args, "-b", broker)
    run("dump", seg, "--records")
    run("verify", broker)
    assert tree_snapshot(broker) == before


# -- produce / consume --------------------------------------------------------------------

def test_produce_lines_with_keys_headers_and_partition(tmp_path):
    b = str(tmp_path / "b")
    fastq.open(b).close()
    run("topics", "create", "-b", b, "t", "-p", "2")
    res = run("produce", "-b", b, "t", "-k", ":", "-H", "src=cli", "-H", "n=1", "--json",
              input="a:one\nb:two\nno-key\n")
    doc = json.loads(res.output)
    assert doc["records"] == 3
    recs = [json.loads(line) for line in run("consume", "-b", b, "t", "--json").output.splitlines()]
    assert sorted((r["value"], r["key"]) for r in recs) == [("no-key", None), ("one", "a"), ("two", "b")]
    assert all(r["headers"] == {"src": "cli", "n": "1"} for r in recs)
    run("produce", "-b", b, "t", "-p", "1", input="x\ny\n")
    recs = [json.loads(line) for line in run("consume", "-b", b, "t", "--json", "-p", "1").output.splitlines()]
    assert [r["value"] for r in recs][-2:] == ["x", "y"] and all(r["partition"] == 1 for r in recs)
    one_line_error(run("produce", "-b", b, "t", "-p", "5", input="z\n", ok=False), "partition 5 out of range")
    one_line_error(run("produce", "-b", b, "t", "-H", "novalue", input="z\n", ok=False), "bad header")


def test_produce_files_one_record_each_or_per_line(tmp_path):
    b = str(tmp_path / "b")
    fastq.open(b).close()
    run("topics", "create", "-b", b, "t")
    (tmp_path / "a.bin").write_bytes(b"\x00\xffbinary\n")
    (tmp_path / "l.txt").write_text("l1\nl2\n")
    run("produce", "-b", b, "t", tmp_path / "a.bin")
    run("produce", "-b", b, "t", "--lines", tmp_path / "l.txt")
    recs = [json.loads(line) for line in run("consume", "-b", b, "t", "--json").output.splitlines()]
    assert [r["value"] for r in recs] == [{"base64": "AP9iaW5hcnkK"}, "l1", "l2"]


def _produce_inputs(tmp_path):
    b = str(tmp_path / "b")
    fastq.open(b).close()
    run("topics", "create", "-b", b, "t")
    big = tmp_path / "big.txt"
    big.write_text("".join(f"line {i}\n" for i in range(3000)))
    return b, big


def test_produce_draws_no_progress_when_stderr_is_not_a_terminal(tmp_path):
    b, big = _produce_inputs(tmp_path)
    res = run("produce", "-b", b, "t", "--lines", big)
    assert res.stderr == "produced 3000 record(s) to t\n"
    res = run("produce", "-b", b, "t", input="a\nb\n")
    assert res.stderr == "produced 2 record(s) to t\n"
    assert run("produce", "-b", b, "t", "-q", input="c\n").stderr == ""


def test_produce_progress_by_bytes_for_files_and_a_record_count_for_stdin(tmp_path):
    """FASTQ_PROGRESS=1 draws the bar as on a terminal (rich's force_terminal): bytes of
    FILES read of their total, or records read from stdin; never with --json or -q."""
    b, big = _produce_inputs(tmp_path)
    size = big.stat().st_size
    env = {"FASTQ_PROGRESS": "1"}
    res = CliRunner().invoke(cli, ["produce", "-b", b, "t", "--lines", str(big)], env=env)
    assert res.exit_code == 0, res.output
    assert "produce" in res.stderr and "\x1b[" in res.stderr           # drawn, with terminal controls
    assert f"{size / 1000:.1f}/{size / 1000:.1f} kB" in res.stderr      # bytes of the total, all read
    res = CliRunner().invoke(cli, ["produce", "-b", b, "t"], input="x\n" * 2500, env=env)
    assert res.exit_code == 0, res.output
    assert "2,500 records" in res.stderr and "\x1b[" in res.stderr
    for extra in (["--json"], ["-q"]):
        res = CliRunner().invoke(cli, ["produce", "-b", b, "t", "--lines", str(big), *extra], env=env)
        assert res.exit_code == 0 and "\x1b[" not in res.stderr and "kB" not in res.stderr, res.stderr
    recs = run("consume", "-b", b, "t", "--format", "%o\n").output.split()
    assert len(recs) == 3000 * 3 + 2500


def test_consume_format_string_like_kcat(broker):
    res = run("consume", "-b", broker, "orders", "-p", "0", "--format", r"%t/%p/%o %k=%s (%K,%S) @%T [%h]%%\n",
              "-c", "2")
    assert res.output == (f"orders/0/0 k0=v0 (2,2) @{T0} [n=0]%\n"
                          f"orders/0/1 k3=v3 (2,2) @{T0 + 3000} [n=3]%\n")


@pytest.mark.parametrize("where, expect", [
    ("earliest", 30), ("latest", 0), ("7", 9), ("@7", 9),
    ("2026-12-05T10:00:20Z", 10), (str(T0 + 25_000), 5), ("2026-12-05T10:00:20", 10),
])
def test_consume_from(broker, where, expect):
    recs = [json.loads(line) for line in run("consume", "-b", broker, "orders", "--json", "--from", where)
            .output.splitlines()]
    assert len(recs) == expect
    if where.lstrip("@") == "7":
        assert min(r["offset"] for r in recs) == 7


def test_parse_time_forms():
    assert parse_time("2026-12-05T10:00:00Z") == T0
    assert parse_time("2026-12-05T11:00:00+01:00") == T0
    assert parse_time(str(T0)) == T0
    assert parse_time("-15m", now_ms=T0) == T0 - 900_000
    assert parse_time("-2h", now_ms=T0) == T0 - 7_200_000
    assert parse_time("-500ms", now_ms=T0) == T0 - 500


def test_consume_with_a_group_commits_what_it_printed(broker):
    res = run("consume", "-b", broker, "orders", "-g", "g", "-c", "4", "--format", r"%p:%o\n")
    assert len(res.output.splitlines()) == 4
    doc = json.loads(run("groups", "describe", "-b", broker, "g", "--json").output)
    (t,) = doc["topics"]
    assert sum(p["committed"] or 0 for p in t["partitions"]) == 4 and t["lag"] == 26
    rest = run("consume", "-b", broker, "orders", "-g", "g", "--format", r"%p:%o\n").output.splitlines()
    assert len(rest) == 26 and not set(rest) & set(res.output.splitlines())
    assert run("consume", "-b", broker, "orders", "-g", "g").output == ""


# -- groups -------------------------------------------------------------------------------

def test_groups_list_describe_and_reset_offsets(broker):
    run("consume", "-b", broker, "orders", "-g", "g")
    rows = json.loads(run("groups", "list", "-b", broker, "--json").output)
    assert rows == [{"group": "g", "topics": ["orders"], "members": 0, "lag": 0}]
    assert "orders" in run("groups", "list", "-b", broker).output
    text = run("groups", "describe", "-b", broker, "g").output
    assert "lag 0" in text and "committed" in text
    # a dry run first: shows the plan, commits nothing
    plan = json.loads(run("groups", "reset-offsets", "-b", broker, "g", "-t", "orders", "--to-offset", "8",
                          "--json").output)
    assert plan["executed"] is False
    assert [(p["partition"], p["current"], p["new"]) for p in plan["partitions"]] == [(0, 10, 8), (1, 10, 8),
                                                                                      (2, 10, 8)]
    assert json.loads(run("groups", "describe", "-b", broker, "g", "--json").output)["topics"][0]["lag"] == 0
    assert "dry run" in run("groups", "reset-offsets", "-b", broker, "g", "-t", "orders", "--to-latest").output
    run("groups", "reset-offsets", "-b", broker, "g", "-t", "orders", "--to-offset", "8", "-p", "1", "--execute")
    # the group's consumer then follows the new offsets
    out = run("consume", "-b", broker, "orders", "-g", "g", "--format", r"%p:%o\n").output.split()
    assert out == ["1:8", "1:9"]
    run("groups", "reset-offsets", "-b", broker, "g", "-t", "orders", "--to-datetime", "2026-12-05T10:00:24Z",
        "--execute")
    out = run("consume", "-b", broker, "orders", "-g", "g", "--format", r"%o/%s\n").output.split()
    assert sorted(out) == ["8/v24", "8/v25", "8/v26", "9/v27", "9/v28", "9/v29"]
    run("groups", "reset-offsets", "-b", broker, "g", "-t", "orders", "--to-earliest", "--execute")
    assert len(run("consume", "-b", broker, "orders", "-g", "g").output.split()) == 30
    # a brand-new group can be positioned before it ever consumes
    run("groups", "reset-offsets", "-b", broker, "new", "-t", "orders", "--to-latest", "--execute")
    assert run("consume", "-b", broker, "orders", "-g", "new").output == ""


def test_reset_offsets_refuses_a_live_group(broker):
    with fastq.open(broker) as b, b.topic("orders").consumer("g") as c:
        c.poll(1, timeout=1)
        doc = json.loads(run("groups", "describe", "-b", broker, "g", "--json").output)
        (m,) = doc["topics"][0]["members"]
        assert m["live"] and m["pid"] == os.getpid() and m["partitions"] == [0, 1, 2]
        assert {p["member"] for p in doc["topics"][0]["partitions"]} == {c.member_id}
        res = run("groups", "reset-offsets", "-b", broker, "g", "-t", "orders", "--to-earliest", "--execute",
                  ok=False)
        one_line_error(res, "live member")


# -- dump / verify ------------------------------------------------------------------------

def _segment(broker, p=0):
    d = os.path.join(broker, "topics", "orders", str(p))
    return os.path.join(d, sorted(f for f in os.listdir(d) if f.endswith(".log"))[0])


def test_dump_prints_each_batch(broker):
    seg = _segment(broker)
    res = run("dump", seg)
    lines = res.output.splitlines()
    assert len(lines) == 10 and lines[0].startswith("baseOffset: 0 lastOffset: 0 count: 1 position: 0")
    assert all(" ok " in line for line in lines)
    docs = [json.loads(line) for line in run("dump", seg, "--json", "--records").output.splitlines()]
    assert [d["base_offset"] for d in docs] == list(range(10))
    assert docs[1]["records"] == [{"offset": 1, "timestamp": T0 + 3000, "key": "k3", "value": "v3",
                                   "headers": {"n": "3"}}]
    assert docs[1]["position"] == docs[0]["size"]
    assert "| offset: 1" in run("dump", seg, "-r").output


def test_verify_and_dump_name_corruption_planted_at_a_known_position(broker):
    seg = _segment(broker, 1)
    docs = [json.loads(line) for line in run("dump", seg, "--json").output.splitlines()]
    victim = docs[4]                                   # the batch of offset 4
    at = victim["position"] + victim["size"] - 1       # last byte of its last record
    with open(seg, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))
    res = run("verify", broker, ok=False)
    assert res.exit_code == 1
    assert f"crc-mismatch     {seg} @ {victim['position']}" in res.output
    doc = json.loads(run("verify", broker, "--json", ok=False).output)
    (p,) = [p for log in doc["logs"] for p in log["problems"]]
    assert (p["kind"], p["path"], p["position"]) == ("crc-mismatch", seg, victim["position"])
    res = run("dump", seg, ok=False)
    assert res.exit_code == 1
    bad = [line for line in res.output.splitlines() if "MISMATCH" in line]
    assert bad == [line for line in bad if f"position: {victim['position']} " in line] and len(bad) == 1


def test_dump_stops_at_a_torn_batch_and_names_its_position(broker, tmp_path):
    seg = _segment(broker)
    docs = [json.loads(line) for line in run("dump", seg, "--json").output.splitlines()]
    torn = tmp_path / "00000000000000000000.log"
    with open(seg, "rb") as f:
        torn.write_bytes(f.read(docs[3]["position"] + 20))
    res = run("dump", torn, ok=False)
    assert res.exit_code == 1
    assert res.output.splitlines()[-1].startswith(f"truncated-batch {torn} @ {docs[3]['position']}")


@pytest.fixture
def indexed(tmp_path):
    """A log (index_interval 100, 4 KiB segments) of 120 records v<i> at T0 + i s: three
    segments, each with a few .index/.timeindex entries; the first segment's paths."""
    path = tmp_path / "lg"
    with fastq.Log(path, index_interval=100, segment_bytes=4096) as lg:
        for i in range(120):
            lg.append(b"v%d" % i, timestamp=T0 + i * 1000)
    return str(path / "00000000000000000000")


def test_dump_index_and_timeindex_entry_by_entry(indexed):
    batches = {d["base_offset"]: d for d in map(json.loads, run("dump", indexed + ".log", "--json").output.splitlines())}
    entries = [json.loads(line) for line in run("dump", indexed + ".index", "--json").output.splitlines()]
    assert len(entries) >= 3
    assert [e["entry"] for e in entries] == list(range(len(entries)))
    for e in entries:                           # each points at the batch that starts its offset
        assert e["offset"] == e["relative_offset"] and batches[e["offset"]]["position"] == e["position"]
    text = run("dump", indexed + ".index").output.splitlines()
    e = entries[1]
    assert text[1] == f"offset: {e['offset']} relativeOffset: {e['relative_offset']} position: {e['position']}"
    times = [json.loads(line) for line in run("dump", indexed + ".timeindex", "--json").output.splitlines()]
    assert len(times) >= 3
    for e in times:                             # timestamps grow with the offsets here: T0 + offset s
        assert e["timestamp"] == T0 + e["offset"] * 1000 and e["offset"] == e["relative_offset"]
    text = run("dump", indexed + ".timeindex").output.splitlines()
    assert text[0] == (f"timestamp: {times[0]['timestamp']} ({fmt_time(times[0]['timestamp'])}) "
                       f"offset: {times[0]['offset']} relativeOffset: {times[0]['relative_offset']}")
    later = os.path.join(os.path.dirname(indexed), "00000000000000000057.index")
    (first,) = [json.loads(line) for line in run("dump", later, "--json").output.splitlines()][:1]
    assert first["offset"] == 57 + first["relative_offset"]      # absolute = base + relative
    one_line_error(run("dump", indexed + ".index", "-r", ok=False), "--records needs a .log file")


def test_dump_index_names_an_entry_out_of_order(indexed):
    entries = [json.loads(line) for line in run("dump", indexed + ".index", "--json").output.splitlines()]
    with open(indexed + ".index", "r+b") as f:               # entry 2 now points below entry 1
        f.seek(2 * 8 + 4)
        f.write(struct.pack(">I", entries[1]["position"] - 1))
    res = run("dump", indexed + ".index", ok=False)
    assert res.exit_code == 1
    assert res.output.splitlines()[-1].startswith(f"index-entry {indexed}.index @ 16: entry 2 ")
    assert len(res.output.splitlines()) == 3                  # entries 0 and 1, then the problem
    docs = [json.loads(line) for line in run("dump", indexed + ".index", "--json", ok=False).output.splitlines()]
    assert docs[-1]["problem"] == "index-entry" and docs[-1]["position"] == 16


# -- bad input: one line, exit 2 -----------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["topics", "describe", "nope"], "no topic 'nope'"),
    (["topics", "delete", "nope"], "no topic 'nope'"),
    (["consume", "nope"], "no topic 'nope'"),
    (["produce", "nope"], "no topic 'nope'"),
    (["groups", "describe", "nope"], "no group 'nope'"),
    (["groups", "describe", "bad/name"], "invalid group name"),
    (["groups", "reset-offsets", "nope", "-t", "orders", "--to-earliest"], "no group 'nope'"),
    (["groups", "reset-offsets", "g", "-t", "orders"], "exactly one of"),
    (["groups", "reset-offsets", "g", "-t", "orders", "--to-datetime", "yesterday"], "bad time 'yesterday'"),
    (["consume", "orders", "--format", "%s %x"], "unknown %x at position 3"),
    (["consume", "orders", "--format", "%"], "lone '%'"),
    (["consume", "orders", "--from", "noon"], "bad time 'noon'"),
    (["consume", "orders", "--from", "2026-13-45"], "bad time"),
    (["consume", "orders", "-p", "9"], "partition 9 out of range"),
    (["consume", "orders", "-g", "g", "-p", "0"], "--partition cannot be used with --group"),
])
def test_bad_input_is_one_line_and_exit_2(broker, args, needle):
    res = run(*args, "-b", broker, ok=False)
    one_line_error(res, needle)


def test_a_path_that_is_not_a_broker_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    # (topics create makes a broker of a missing or empty directory: see the test above)
    for cmd in (["topics", "list"], ["groups", "list"], ["consume", "t"], ["topics", "describe", "t"]):
        one_line_error(run(*cmd, "-b", tmp_path / "empty", ok=False), "is not a fastq broker directory")
        one_line_error(run(*cmd, "-b", tmp_path / "missing", ok=False), "no such directory")
    assert not os.listdir(tmp_path / "empty")             # nothing was created there
    one_line_error(run("dump", tmp_path / "file", ok=False), "is not a segment file")
    one_line_error(run("dump", tmp_path / "00000000000000000000.log", ok=False), "no such file")


def test_every_command_has_help():
    for path in (["topics"], ["topics", "list"], ["topics", "describe"], ["topics", "create"], ["topics", "alter"],
                 ["topics", "delete"], ["produce"], ["consume"], ["groups"], ["groups", "list"],
                 ["groups", "describe"], ["groups", "reset-offsets"], ["dump"], ["verify"], ["repair"],
                 ["bench"], ["info"]):
        res = run(*path, "--help")
        assert "Usage: " in res.output and len(res.output.splitlines()) > 3, path
    assert "-15m" in run("consume", "--help").output and "ISO-8601" in run("consume", "--help").output
    assert "%k key" in run("consume", "--help").output


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_consume_stopped_by_a_signal_commits_every_record_it_printed(broker, monkeypatch, sig):
    """A stop signal that lands between printing a chunk and committing it (here: just
    before Consumer.commit runs) waits for the commit, so the next member of the group
    neither re-prints nor skips a record; exit code 0."""
    import signal as _signal

    from fastq import Consumer

    commit = Consumer.commit
    sent = []

    def signalled_commit(self, *a, **kw):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), getattr(_signal, sig))  # handled at the next bytecode
        return commit(self, *a, **kw)

    monkeypatch.setattr(Consumer, "commit", signalled_commit)
    res = run("consume", "-b", broker, "orders", "-g", "g", "--follow", "--format", r"%p:%o\n")
    monkeypatch.undo()
    printed = res.output.split()
    assert sent and printed
    rest = run("consume", "-b", broker, "orders", "-g", "g", "--format", r"%p:%o\n").output.split()
    assert not set(printed) & set(rest) and len(printed) + len(rest) == 30


def test_queues_list_describe_peek_purge_redrive_delete(tmp_path):
    path = tmp_path / "qb"
    with fastq.open(path) as b:
        q = b.queue("jobs", max_deliveries=1, dead_letter="jobs.dead")
        q.publish_many([{"n": 1}, {"n": 2}])
        q.publish({"n": 3}, delay=3600)
        (m,) = q.receive(wait=0)
        m.reject("bad")
    rows = json.loads(run("queues", "list", "-b", path, "--json").output)
    assert [(r["queue"], r["ready"], r["delayed"], r["in_flight"], r["dead"]) for r in rows] == \
        [("jobs", 1, 1, 0, 1), ("jobs.dead", 1, 0, 0, 0)]
    assert "jobs.dead" in run("queues", "list", "-b", path).output
    doc = json.loads(run("queues", "describe", "jobs", "-b", path, "--json").output)
    assert doc["config"]["max_deliveries"] == 1 and doc["ready"] == 1
    peeked = json.loads(run("queues", "peek", "jobs.dead", "-b", path, "--json").output)
    assert peeked[0]["body"] == '{"n":1}' and peeked[0]["headers"]["dlq-reason"] == "rejected: bad"
    assert "redriven: jobs.dead: 1" in run("queues", "redrive", "jobs.dead", "-b", path).output
    assert "purged: jobs: 3" in run("queues", "purge", "jobs", "-b", path, "--yes").output
    assert run("queues", "purge", "jobs", "-b", path, input="n\n", code=1).exit_code == 1
    assert "deleted: jobs.dead" in run("queues", "delete", "jobs.dead", "-b", path, "--yes").output
    one_line_error(run("queues", "describe", "nope", "-b", path, ok=False), "no queue 'nope'")
    one_line_error(run("queues", "create", "jobs", "-b", path, ok=False), "already exists")
    assert "exists: jobs" in run("queues", "create", "jobs", "-b", path, "--if-not-exists").output
    assert "created: q2" in run("queues", "create", "q2", "-b", path, "--ordered", "-p", "2").output
    with fastq.open(path) as b:
        assert b.queues() == ["jobs", "q2"] and b.queue("jobs").depth()[:3] == (0, 0, 0)
        assert b.queue("q2").ordered and b.queue("q2").partitions == 2
