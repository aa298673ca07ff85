"""Task-queue repeat (fastq.tasks.scheduler): job schedulers with cron + time zones or
``every``; exactly one job per tick with three processes upserting and running workers at
once, also while they are killed -9 and restarted; cron next times across daylight-saving
changes; what each ``missed`` policy does after a downtime; remove and replace; bad input."""
from __future__ import annotations

import errno
import multiprocessing as mp
import os
import random
import signal
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

import fastq
from faultfs import c_fault
from fastq._core import _storage
from fastq.tasks.scheduler import next_after, validate_repeat

import repeat_workers
from taskutil import broker, wait_for  # noqa: F401 (broker: a fixture)

CTX = mp.get_context("spawn")
TORTURE = os.environ.get("FASTQ_TORTURE") == "1"
PARIS = ZoneInfo("Europe/Paris")


@pytest.fixture
def tq(broker):
    return fastq.TaskQueue("cron", broker)


def runs(path) -> list[tuple[str, int, int, int]]:
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            jid, tick, att, pid = line.split()
            out.append((jid, int(tick), int(att), int(pid)))
    return out


class Recorder:
    """A handler noting (job id, tick_ms, run start ms) per run."""

    def __init__(self):
        self.runs: list[tuple[str, int, int]] = []

    def __call__(self, job):
        self.runs.append((job.id, job.opts["repeat"]["tick_ms"], int(time.time() * 1000)))

    @property
    def ticks(self) -> list[int]:
        return [r[1] for r in self.runs]


# -- exactly one job per tick, many processes ---------------------------------------------------

def _check_one_job_per_tick(tq, runs_file: str, every_ms: int) -> int:
    """Each tick time has one job and each job one tick time; the tick times run have no
    gap; a job run twice was run again only after its worker died (attempts_made grows);
    every job that ran is completed; the one pending job is the next tick. Returns the
    number of ticks."""
    rs = runs(runs_file)
    jobs_of_tick: dict[int, set] = {}
    ticks_of_job: dict[str, set] = {}
    attempts: dict[str, list] = {}
    for jid, tick, att, _ in rs:
        jobs_of_tick.setdefault(tick, set()).add(jid)
        ticks_of_job.setdefault(jid, set()).add(tick)
        attempts.setdefault(jid, []).append(att)
    dup = {t: j for t, j in jobs_of_tick.items() if len(j) > 1}
    assert not dup, f"ticks made more than one job: {dup}"
    assert all(len(t) == 1 for t in ticks_of_job.values())
    ticks = sorted(jobs_of_tick)
    assert len(ticks) >= 10, f"only {len(ticks)} ticks ran"
    missing = sorted(set(range(ticks[0], ticks[-1] + every_ms, every_ms)) - set(ticks))
    assert not missing, f"ticks with no job (gaps): {missing[:10]} of {len(ticks)}"
    assert all(t % every_ms == 0 for t in ticks)           # the grid: multiples of every since the epoch
    for jid, atts in attempts.items():
        assert atts == sorted(set(atts)), f"job {jid} ran twice in one attempt: {atts}"
        assert tq.get_job(jid).state == "completed", (jid, tq.get_job(jid).state)
    gens = {j.rsplit(":", 2)[1] for j in ticks_of_job}
    assert len(gens) == 1, f"the schedule was restarted: generations {gens}"
    pending = tq.get_jobs(["delayed", "waiting"])
    assert [j.opts["repeat"]["tick_ms"] for j in pending] == [ticks[-1] + every_ms]
    sch = tq.get_job_scheduler(repeat_workers.SCHEDULER)
    assert sch["next"] == (ticks[-1] + every_ms) / 1000.0 and sch["every"] == every_ms / 1000.0
    seqs = sorted(int(j.rsplit(":", 1)[1]) for j in ticks_of_job)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    return len(ticks)


def _start(*args):
    p = CTX.Process(target=repeat_workers.run_scheduler_and_worker, args=args)
    p.start()
    return p


def _stop_all(procs, stop_file) -> None:
    open(stop_file, "w").close()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0, p.exitcode


def test_three_processes_upserting_and_working_make_one_job_per_tick(tmp_path, broker):
    every = 0.05
    runs_file, stop = str(tmp_path / "runs"), str(tmp_path / "stop")
    procs = [_start(broker.path, runs_file, stop, every) for _ in range(3)]
    try:
        wait_for(lambda: len(runs(runs_file)) >= 30, 60, "30 ticks")
    finally:
        _stop_all(procs, stop)
    tq = fastq.TaskQueue(repeat_workers.QUEUE, broker)
    n = _check_one_job_per_tick(tq, runs_file, 50)
    assert len({r[3] for r in runs(runs_file)}) >= 2        # more than one process ran ticks
    assert len(runs(runs_file)) == n                        # nobody was killed: each job ran once


def test_one_job_per_tick_while_processes_are_killed_and_restarted(tmp_path, broker):
    """Three processes upsert the scheduler and run workers; one at a time is killed -9 (mid
    job or not) and restarted, for 3 s (60 s with FASTQ_TORTURE=1). No tick has two jobs,
    none is missing (missed="all"), the restarts never restart the schedule."""
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    rnd = random.Random(seed)
    every = 0.05
    runs_file, stop = str(tmp_path / "runs"), str(tmp_path / "stop")
    procs = [_start(broker.path, runs_file, stop, every) for _ in range(3)]
    kills = 0
    try:
        wait_for(lambda: len(runs(runs_file)) >= 5, 60, "the first ticks")
        deadline = time.monotonic() + (60.0 if TORTURE else 3.0)
        while time.monotonic() < deadline:
            time.sleep(rnd.uniform(0.1, 0.4))
            last = runs(runs_file)[-1][3]                     # half the time: whoever ran the last
            alive = [k for k, p in enumerate(procs) if p.pid == last]   # tick, likely mid-job
            i = alive[0] if alive and rnd.random() < 0.5 else rnd.randrange(3)
            os.kill(procs[i].pid, signal.SIGKILL)
            procs[i].join(10)
            assert procs[i].exitcode == -signal.SIGKILL
            kills += 1
            procs[i] = _start(broker.path, runs_file, stop, every)
        before = len(runs(runs_file))
        wait_for(lambda: len(runs(runs_file)) >= before + 10, 60, "ticks after the last kill")
    finally:
        _stop_all(procs, stop)
    tq = fastq.TaskQueue(repeat_workers.QUEUE, broker)
    n = _check_one_job_per_tick(tq, runs_file, 50)
    print(f"{kills} kills, {n} ticks, {len(runs(runs_file)) - n} runs again after a kill")


# -- cron and time zones -------------------------------------------------------------------------

def _last_sunday(year: int, month: int) -> int:
    d = datetime(year, month + 1, 1) - timedelta(days=1)
    return d.day - (d.weekday() + 1) % 7


def _nine_am_paris(year: int, month: int, day: int, days: range) -> list[int]:
    """9:00 in Paris on ``day + k`` for k in ``days``, as epoch ms (zoneinfo's, not croniter's)."""
    out = []
    for k in days:
        d = datetime(year, month, day) + timedelta(days=k)
        out.append(int(datetime(d.year, d.month, d.day, 9, tzinfo=PARIS).timestamp() * 1000))
    return out


def test_cron_with_a_time_zone_keeps_local_time_across_daylight_saving_changes():
    year = datetime.now().year + 1
    d = validate_repeat({"cron": "0 9 * * *", "tz": "Europe/Paris"})
    for month in (3, 10):                                   # EU: the last Sundays of March, October
        sunday = _last_sunday(year, month)
        t = int(datetime(year, month, sunday - 3, 12, tzinfo=PARIS).timestamp() * 1000)
        got = []
        for _ in range(6):
            t = next_after(d, t)
            got.append(t)
        assert got == _nine_am_paris(year, month, sunday, range(-2, 4))
        utc_hours = [datetime.fromtimestamp(ms / 1000, timezone.utc).hour for ms in got]
        assert utc_hours == ([8, 8, 7, 7, 7, 7] if month == 3 else [7, 7, 8, 8, 8, 8])


@pytest.mark.parametrize("expr,tz", [("30 2 * * *", "Europe/Paris"), ("*/20 * * * *", "America/New_York"),
                                     ("15 1-3 * * 0", "Europe/London"), ("*/10 30 2 * * *", "Europe/Paris"),
                                     ("0 0 * * 1-5", "Asia/Kolkata"), ("@daily", "Europe/Paris"),
                                     ("*/30 * * * *", "Europe/Paris"), ("0 */2 * * *", "America/New_York")])
def test_cron_next_times_are_croniter_s_in_the_zone(expr, tz):
    """Across both changes of a year: croniter's instants with a zoneinfo start (a 2:30
    that does not exist runs at 3:00), except that a wall time that happens twice when the
    clocks go back runs once — the first — unless the hour field is ``*``."""
    d = validate_repeat({"cron": expr, "tz": tz})
    zone = ZoneInfo(tz)
    year = datetime.now().year + 1
    fields = expr.split()
    wildcard_hour = len(fields) in (5, 6) and fields[len(fields) - 4] == "*"   # 6 fields: seconds first
    for month in (3, 10, 11):
        start = datetime(year, month, 1, tzinfo=zone)
        it = croniter(expr, start, second_at_beginning=True)
        theirs = [int(round(it.get_next(float) * 1000)) for _ in range(300)]
        ours, t = [], int(start.timestamp() * 1000)
        while True:
            t = next_after(d, t)
            if t > theirs[-1]:
                break
            ours.append(t)

        def wall(ms):
            return datetime.fromtimestamp(ms / 1000, zone).replace(tzinfo=None)
        assert set(ours) <= set(theirs)
        dropped = sorted(set(theirs) - set(ours))
        assert not (dropped and wildcard_hour)
        for x in dropped:                                   # the second of a repeated wall time
            assert any(wall(y) == wall(x) and y < x for y in ours), datetime.fromtimestamp(x / 1000, zone)


def test_a_fixed_time_runs_once_when_the_clocks_go_back_and_an_interval_runs_on():
    year = datetime.now().year + 1
    sunday = _last_sunday(year, 10)
    day_start = int(datetime(year, 10, sunday, tzinfo=PARIS).timestamp() * 1000)
    day_end = int(datetime(year, 10, sunday, 23, 59, 59, tzinfo=PARIS).timestamp() * 1000)

    def on_that_day(expr):
        d, t, out = validate_repeat({"cron": expr, "tz": "Europe/Paris"}), day_start - 1, []
        while (t := next_after(d, t)) < day_end:
            out.append(datetime.fromtimestamp(t / 1000, timezone.utc).strftime("%H:%M"))
        return out
    assert on_that_day("30 2 * * *") == ["00:30"]           # 2:30 CEST; not 2:30 CET too
    assert on_that_day("*/30 0-3 * * *") == ["22:00", "22:30", "23:00", "23:30", "00:00", "00:30"] + \
        ["02:00", "02:30"]                                  # fixed hours 0-3: 2:xx once
    assert on_that_day("0,30 * * * *")[2:8] == ["23:00", "23:30", "00:00", "00:30", "01:00", "01:30"]


def test_a_scheduler_s_chain_follows_the_cron_across_a_daylight_saving_change(tq):
    """Through the task queue: the first job is at the first match after start, each tick's
    successor the next match (computed by the tick, as a worker would)."""
    year = datetime.now().year + 1
    sunday = _last_sunday(year, 3)
    start = datetime(year, 3, sunday - 2, 12, tzinfo=PARIS)
    job = tq.upsert_job_scheduler("report", {"cron": "0 9 * * *", "tz": "Europe/Paris", "start": start,
                                             "limit": 4}, data={"k": 1})
    assert job.state == "delayed" and job.name == "report" and job.data == {"k": 1}
    s = tq._schedulers()
    got = []
    while job is not None:
        rep = job.opts["repeat"]
        got.append(rep["tick_ms"])
        assert s.tick(job.id, rep, None) is True
        nxt = [j for j in tq.get_jobs(["delayed"]) if j.opts["repeat"]["seq"] == rep["seq"] + 1]
        job = nxt[0] if nxt else None
    assert got == _nine_am_paris(year, 3, sunday, range(-1, 3))
    assert len(tq.get_jobs(["delayed"])) == 4                 # limit 4: no fifth tick
    tq._remove_ids([j.id for j in tq.get_jobs(["delayed"])])  # as if they ran, with remove_on_complete
    assert tq.get_job_scheduler("report")["next"] is None
    assert tq.upsert_job_scheduler("report", {"cron": "0 9 * * *", "tz": "Europe/Paris", "start": start,
                                              "limit": 4}, data={"k": 1}) is None   # not started over


def test_six_field_cron_has_seconds_first_as_bullmq(tq):
    job = tq.upsert_job_scheduler("s", {"cron": "*/15 * * * * *"})
    tick = job.opts["repeat"]["tick_ms"]
    assert tick % 15000 == 0 and 0 < tick - time.time() * 1000 <= 15000


# -- missed ticks -------------------------------------------------------------------------------

EVERY_MS = 100


def _downtime(tq, missed: str, down: float = 0.6, up: float = 0.5, grace: float = 0.05):
    """The scheduler is upserted while no worker runs (a downtime of ``down`` s), then a
    worker runs for ``up`` s. Returns (recorder, the first tick, the time the worker started)."""
    first = tq.upsert_job_scheduler("m", {"every": EVERY_MS / 1000, "missed": missed, "grace": grace}, name="m")
    t1 = first.opts["repeat"]["tick_ms"]
    time.sleep(down)
    rec = Recorder()
    started = int(time.time() * 1000)
    with fastq.Worker(tq, rec):
        time.sleep(up)
    return rec, first, t1, started


def test_missed_all_makes_every_tick_that_passed(tq):
    rec, first, t1, started = _downtime(tq, "all")
    ticks = rec.ticks
    assert ticks[0] == t1 < started
    assert ticks == list(range(t1, ticks[-1] + EVERY_MS, EVERY_MS))   # every tick, oldest first, once
    assert sum(t < started for t in ticks) >= 4             # the ones that passed while down


def test_missed_once_runs_the_overdue_tick_once_then_goes_on_from_now(tq):
    rec, first, t1, started = _downtime(tq, "once")
    (jid0, tick0, ran0), (jid1, tick1, _) = rec.runs[:2]
    assert tick0 == t1 < started - EVERY_MS                 # the first missed tick ran
    assert started < tick1 and tick1 - EVERY_MS <= ran0     # then the first tick after it ran
    assert [t for t in rec.ticks if t < started] == [t1]    # the others that passed were not made
    assert rec.ticks == sorted(set(rec.ticks))
    assert all((b - a) % EVERY_MS == 0 for a, b in zip(rec.ticks[1:], rec.ticks[2:]))   # on the grid
    assert len(rec.ticks) >= 3                              # and the schedule went on


def test_missed_skip_drops_ticks_later_than_grace(tq):
    rec, first, t1, started = _downtime(tq, "skip", grace=0.08)
    assert rec.runs and all(t > started for t in rec.ticks)  # nothing that passed while down ran
    assert rec.ticks == sorted(set(rec.ticks))
    assert all((b - a) % EVERY_MS == 0 for a, b in zip(rec.ticks, rec.ticks[1:]))
    with pytest.raises(fastq.UnknownJob):
        tq.get_job(first.id)                                 # the skipped tick's job is gone


# -- remove, replace, limit, end -----------------------------------------------------------------

def test_remove_stops_future_ticks(tq):
    rec = Recorder()
    tq.upsert_job_scheduler("r", {"every": 0.05})
    with fastq.Worker(tq, rec):
        wait_for(lambda: len(rec.runs) >= 3, 10, "3 ticks")
        assert tq.remove_job_scheduler("r") is True
        removed = int(time.time() * 1000)
        time.sleep(0.4)
    assert all(tick <= removed for _, tick, _ in rec.runs)     # no tick due after it ran
    assert sum(ran > removed for _, _, ran in rec.runs) <= 1   # at most one received before it
    assert tq.get_job_schedulers() == [] and tq.get_job_scheduler("r") is None
    assert tq.remove_job_scheduler("r") is False
    assert tq.counts()["delayed"] == 0 and tq.counts()["waiting"] == 0


def test_a_tick_of_a_removed_scheduler_is_dropped_when_it_comes_due(tq):
    job = tq.upsert_job_scheduler("r", {"every": 0.2})
    assert tq.remove_job_scheduler("r")
    with pytest.raises(fastq.UnknownJob):
        tq.get_job(job.id)
    rec = Recorder()
    with fastq.Worker(tq, rec):
        wait_for(lambda: tq.queue.depth().delayed == 0 and tq.queue.depth().ready == 0
                 and tq.queue.depth().in_flight == 0, 10, "the stale tick to be settled")
    assert rec.runs == []


def test_upsert_with_the_same_definition_changes_nothing_and_a_new_one_replaces_the_next_tick(tq):
    a = tq.upsert_job_scheduler("u", {"every": 0.3}, name="u", data=[1])
    assert tq.upsert_job_scheduler("u", {"every": 0.3}, name="u", data=[1]).id == a.id
    assert len(tq.get_jobs(["delayed"])) == 1
    b = tq.upsert_job_scheduler("u", {"every": 0.2}, name="u", data=[2])
    assert b.id != a.id and b.opts["repeat"]["gen"] != a.opts["repeat"]["gen"]
    with pytest.raises(fastq.UnknownJob):
        tq.get_job(a.id)                                     # the old next tick is gone
    assert [j.id for j in tq.get_jobs(["delayed"])] == [b.id]
    assert tq.get_job_scheduler("u")["every"] == 0.2
    seen = []
    with fastq.Worker(tq, lambda job: seen.append((job.opts["repeat"]["gen"], job.data))):
        wait_for(lambda: len(seen) >= 3, 10, "3 ticks")
    assert {g for g, _ in seen} == {b.opts["repeat"]["gen"]} and all(d == [2] for _, d in seen)


def test_a_lost_pending_tick_is_restarted_by_the_next_upsert(tq):
    a = tq.upsert_job_scheduler("l", {"every": 60})
    tq.queue.purge()
    tq._remove_ids([a.id])                                   # what an admin drain does to it
    b = tq.upsert_job_scheduler("l", {"every": 60})
    assert b is not None and b.state == "delayed" and b.opts["repeat"]["gen"] != a.opts["repeat"]["gen"]


def test_limit_and_end(tq):
    rec = Recorder()
    tq.upsert_job_scheduler("lim", {"every": 0.05, "limit": 3}, name="lim")
    end_ms = int((time.time() + 0.5) * 1000)
    tq.upsert_job_scheduler("end", {"every": 0.1, "end": end_ms / 1000, "missed": "all"}, name="end")

    def of(sid):
        return [t for j, t, _ in rec.runs if j.startswith(f"repeat:{sid}:")]
    with fastq.Worker(tq, rec):
        wait_for(lambda: len(of("lim")) >= 3 and of("end") and of("end")[-1] + 100 > end_ms, 10,
                 "the last ticks")
        time.sleep(0.3)
    assert len(of("lim")) == 3
    ends = of("end")
    assert ends == list(range(ends[0], end_ms - end_ms % 100 + 1, 100))   # every tick up to end, none after
    assert len(ends) >= 4
    assert tq.counts()["delayed"] == 0 and tq.counts()["waiting"] == 0
    assert tq.get_job_scheduler("lim")["next"] is None and tq.get_job_scheduler("end")["next"] is None


def test_start_sets_the_every_grid(tq):
    start = time.time() + 100.0123
    job = tq.upsert_job_scheduler("st", {"every": 7, "start": start})
    assert job.opts["repeat"]["tick_ms"] == round(start * 1000)   # a future start is the first tick
    past = time.time() - 100.5
    now = int(time.time() * 1000)
    tick = tq.upsert_job_scheduler("st2", {"every": 7, "start": past}).opts["repeat"]["tick_ms"]
    assert (tick - round(past * 1000)) % 7000 == 0 and now < tick <= now + 7000 + 50


def test_add_with_repeat_is_a_scheduler(tq):
    job = tq.add("daily-report", {}, repeat={"cron": "0 9 * * *"}, attempts=2)
    assert job.state == "delayed" and job.opts["attempts"] == 2
    tick = datetime.fromtimestamp(job.opts["repeat"]["tick_ms"] / 1000, timezone.utc)
    assert (tick.hour, tick.minute, tick.second) == (9, 0, 0)
    assert tick - datetime.now(timezone.utc) <= timedelta(days=1)
    (sch,) = tq.get_job_schedulers()
    assert sch["cron"] == "0 9 * * *" and sch["tz"] == "UTC" and sch["name"] == "daily-report"
    again = tq.add("daily-report", {}, repeat={"cron": "0 9 * * *"}, attempts=2)
    assert again.id == job.id and len(tq.get_job_schedulers()) == 1
    mine = tq.add("x", 1, repeat={"every": 5}, job_id="my-id")
    assert mine.opts["repeat"]["scheduler"] == "my-id"


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("repeat,match", [
    ({"cron": "61 * * * *"}, "does not parse"),
    ({"cron": "not a cron"}, "does not parse"),
    ({"cron": "@sometimes"}, "does not parse"),
    ({"cron": 9}, "cron expression string"),
    ({"cron": "*/1 " * 1000}, "at most 256 characters"),
    ({"every": 1, 7: 1}, "unknown repeat option"),
    ({"cron": "* * * * * * *"}, "does not parse"),
    ({"cron": "0 0 30 2 *"}, "never matches"),
    ({"cron": "0 9 * * *", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"cron": "0 9 * * *", "tz": ""}, "IANA"),
    ({"every": 0}, "every must be seconds > 0"),
    ({"every": -1}, "every must be seconds > 0"),
    ({"every": float("nan")}, "every must be seconds > 0"),
    ({"every": 0.0001}, "at least 0.001"),
    ({"every": True}, "every must be"),
    ({"cron": "0 9 * * *", "every": 60}, "both cron"),
    ({"cron": "0 9 * * *", "pattern": "0 9 * * *"}, "both 'cron' and 'pattern'"),
    ({}, "needs 'cron'"),
    ({"every": 1, "when": 3}, "unknown repeat option"),
    ({"every": 1, "missed": "sometimes"}, "missed must be one of"),
    ({"every": 1, "limit": 0}, "limit"),
    ({"every": 1, "grace": -1}, "grace"),
    ({"every": 1, "start": datetime(2030, 1, 1)}, "naive"),
    ({"every": 1, "start": 10, "end": 5}, "end"),
    ("0 9 * * *", "must be a dict"),
])
def test_bad_repeat_is_invalid_argument_and_the_queue_keeps_working(tq, repeat, match):
    with pytest.raises(fastq.InvalidArgument, match=match):
        tq.upsert_job_scheduler("bad", repeat)
    with pytest.raises(fastq.InvalidArgument, match=match):
        tq.add("bad", None, repeat=repeat)
    assert tq.get_job_schedulers() == [] and tq.counts()["delayed"] == 0
    job = tq.add("ok", 20)
    with fastq.Worker(tq, lambda j: j.data + 1):
        assert job.result(10) == 21


def test_bad_scheduler_arguments(tq):
    with pytest.raises(fastq.InvalidArgument, match="scheduler id"):
        tq.upsert_job_scheduler("", {"every": 1})
    with pytest.raises(fastq.InvalidArgument, match="scheduler id"):
        tq.upsert_job_scheduler("x" * 1000, {"every": 1})
    with pytest.raises(fastq.InvalidArgument, match="job name"):
        tq.upsert_job_scheduler("a", {"every": 1}, name="")
    with pytest.raises(fastq.InvalidArgument, match=r"cannot have \['delay', 'job_id'\]"):
        tq.upsert_job_scheduler("a", {"every": 1}, opts={"job_id": "j", "delay": 1})
    with pytest.raises(fastq.InvalidArgument, match="attempts"):
        tq.upsert_job_scheduler("a", {"every": 1}, opts={"attempts": 0})
    with pytest.raises(fastq.InvalidArgument, match="unknown job option"):
        tq.upsert_job_scheduler("a", {"every": 1}, opts={"colour": "red"})
    with pytest.raises(fastq.CodecError):
        tq.upsert_job_scheduler("a", {"every": 1}, data=object())
    with pytest.raises(fastq.InvalidArgument, match="delay and repeat"):
        tq.add("a", None, repeat={"every": 1}, delay=5)
    with pytest.raises(fastq.InvalidArgument, match="repeat is an option of add"):
        tq.add_bulk([("a", None, {"repeat": {"every": 1}})])
    assert tq.get_job_schedulers() == [] and tq.counts() == {"waiting": 0, "delayed": 0, "active": 0,
                                                             "completed": 0, "failed": 0, "prioritized": 0,
                                                             "paused": 0}
    assert tq.upsert_job_scheduler("a", {"every": 1}) is not None


# -- faults --------------------------------------------------------------------------------------

def _upsert_fresh(path):
    with fastq.open(path) as b:
        fastq.TaskQueue("cron", b).upsert_job_scheduler("f", {"every": 0.05, "missed": "all"}, name="f")


def _fault_calls(path) -> dict:
    for p in _storage.FAULT_POINTS:
        _storage._fault_inject(p, errno.EIO, 1 << 40, 1)
    try:
        _upsert_fresh(path)
        return {p: n for p in _storage.FAULT_POINTS if (n := _storage._fault_calls(p))}
    finally:
        _storage._fault_clear()


def test_a_failed_system_call_during_the_first_upsert_is_clear_and_the_retry_schedules_once(tmp_path):
    """The first upsert creates the scheduler topic and the queue's delayed lane: each
    system call on the way fails once (EIO; the first and last call of each point, all
    with FASTQ_TORTURE=1). The upsert raises a FastqError; run again in a fresh process
    view, it schedules, and the ticks that follow have one job each, no gap."""
    calls = _fault_calls(str(tmp_path / "dry" / "b"))
    assert calls
    for point, n in sorted(calls.items()):
        for k in (range(n) if TORTURE else sorted({0, n - 1})):
            path = str(tmp_path / f"{point}{k}" / "b")
            with c_fault(point, errno.EIO, k, 1) as hits:
                try:
                    _upsert_fresh(path)
                    exc = None
                except Exception as e:       # noqa: BLE001 - checked below
                    exc = e
                hit = hits()
            if hit:
                assert isinstance(exc, fastq.FastqError), f"{point}#{k}: raw {exc!r}"
            elif exc is not None:
                raise exc
            _upsert_fresh(path)
            with fastq.open(path) as b:
                tq = fastq.TaskQueue("cron", b)
                rec = Recorder()
                with fastq.Worker(tq, rec):
                    wait_for(lambda: len(rec.runs) >= 4, 10, f"ticks after a fault at {point}#{k}")
                ticks = rec.ticks
                assert ticks == list(range(ticks[0], ticks[0] + 50 * len(ticks), 50)), (point, k, ticks)
                assert len({r[0].rsplit(":", 2)[1] for r in rec.runs}) == 1
                assert len(tq.get_job_schedulers()) == 1


def test_a_worker_killed_between_a_tick_s_state_and_its_message_does_not_stop_the_schedule(tmp_path, broker):
    """The worker adding tick 3 dies after writing its job state, before its message: the
    next worker gets tick 2 again, finds tick 3's state and publishes its message (the
    queue's dedup would make that a no-op had it been published); the ticks go on."""
    runs_file, stop = str(tmp_path / "runs"), str(tmp_path / "stop")
    a = CTX.Process(target=repeat_workers.run_killed_between_tick_state_and_message,
                    args=(broker.path, runs_file, stop, 0.05, 3))
    a.start()
    a.join(60)
    assert a.exitcode == -signal.SIGKILL
    tq = fastq.TaskQueue(repeat_workers.QUEUE, broker)
    (tick3,) = [j for j in tq.get_jobs(["delayed", "waiting"]) if j.opts["repeat"]["seq"] == 3]
    assert tq.queue.depth().delayed + tq.queue.depth().ready == 0      # its message is missing
    b = _start(broker.path, runs_file, stop, 0.05)
    try:
        wait_for(lambda: len(runs(runs_file)) >= 12, 60, "the ticks after tick 3")
    finally:
        _stop_all([b], stop)
    _check_one_job_per_tick(tq, runs_file, 50)
    assert tick3.id in {r[0] for r in runs(runs_file)}


def test_a_task_queue_with_the_longest_name_has_schedulers(broker):
    from fastq.tasks.taskqueue import MAX_NAME
    tq = fastq.TaskQueue("q" * MAX_NAME, broker)
    assert tq.upsert_job_scheduler("s", {"every": 60}) is not None
    assert [s["id"] for s in tq.get_job_schedulers()] == ["s"]


@pytest.mark.parametrize("value", [b"not json", b'{"id": "x"}', b"[1, 2]"])
def test_a_damaged_scheduler_record_is_corrupt_record_naming_the_topic(broker, value):
    tq = fastq.TaskQueue("cron", broker)
    tq.upsert_job_scheduler("ok", {"every": 60})
    broker.topic("cron.sched").publish(value, key=b"s:x")
    with pytest.raises(fastq.CorruptRecord, match=r"scheduler topic 'cron.sched': record 2 \('s:x'\)"):
        fastq.TaskQueue("cron", broker).get_job_schedulers()


def test_a_failing_tick_is_retried_and_its_successor_is_added_once(tq):
    """Each tick's first attempt raises; the retry (delivery 2, started before) adds no
    second successor: one job per tick, two runs each, no gap."""
    tq.upsert_job_scheduler("f", {"every": 0.1, "missed": "all"}, opts={"attempts": 2, "backoff": 0.01})
    seen: list[tuple[str, int, int]] = []

    def handle(job):
        seen.append((job.id, job.opts["repeat"]["tick_ms"], job.attempts_made))
        if job.attempts_made == 1:
            raise RuntimeError("first attempt fails")
    with fastq.Worker(tq, handle, concurrency=2):
        wait_for(lambda: len({s[0] for s in seen}) >= 6, 20, "6 ticks")
    done = [j for j in tq.get_jobs(["completed"])]
    assert len(done) >= 5
    ticks = sorted(j.opts["repeat"]["tick_ms"] for j in done)
    assert ticks == list(range(ticks[0], ticks[0] + 100 * len(ticks), 100))
    for j in done:
        assert sorted(a for i, _, a in seen if i == j.id) == [1, 2] and len(j.stacktrace) == 1
    live = tq.get_jobs(["waiting", "delayed", "active"])
    assert len({j.opts["repeat"]["seq"] for j in live}) == len(live)
    assert max(j.opts["repeat"]["seq"] for j in done + live) == len(done) + len(live)


def test_definitions_replaced_by_racing_processes_never_make_two_jobs_for_one_tick(tmp_path, broker):
    """Three processes keep replacing the scheduler's definition (two definitions on the same
    grid) while their workers run its ticks: however the replacements interleave, no tick
    time gets a job from two generations."""
    runs_file, stop = str(tmp_path / "runs"), str(tmp_path / "stop")
    procs = [CTX.Process(target=repeat_workers.run_flipping_definitions, args=(broker.path, runs_file, stop))
             for _ in range(3)]
    for p in procs:
        p.start()
    try:
        wait_for(lambda: len(runs(runs_file)) >= 20, 60, "20 ticks")
    finally:
        _stop_all(procs, stop)
    jobs_of_tick: dict[int, set] = {}
    for jid, tick, _, _ in runs(runs_file):
        jobs_of_tick.setdefault(tick, set()).add(jid)
    dup = {t: j for t, j in jobs_of_tick.items() if len(j) > 1}
    assert not dup, f"ticks with jobs of two generations: {dup}"
    assert len({j.rsplit(":", 2)[1] for js in jobs_of_tick.values() for j in js}) >= 2   # it was replaced


def test_a_full_bounded_queue_does_not_stop_a_schedule(broker):
    """A scheduler's next tick is admitted past max_depth: a schedule is one pending job per
    scheduler, not producer load, and a tick refused with QueueFull left the tick's message
    unacknowledged until its lease ran out — the schedule stalled for visibility_timeout at
    every tick while the queue was full. Producers' adds are still refused."""
    tq = fastq.TaskQueue("bounded-cron", broker, max_depth=2, overflow="reject")
    tq.upsert_job_scheduler("r", {"every": 0.05})           # depth 1: the first tick
    tq.add("filler", None, delay=3600)                      # depth 2: full
    with pytest.raises(fastq.QueueFull):
        tq.add("more", None)
    rec = Recorder()
    with fastq.Worker(tq, rec) as w:                       # the filler is due in an hour
        wait_for(lambda: len(rec.runs) >= 4, 10, "4 ticks while the queue is full")
        assert w.failed == 0
    with pytest.raises(fastq.QueueFull):
        tq.add("more", None)
    assert rec.ticks == sorted(set(rec.ticks))
    tq.close()
