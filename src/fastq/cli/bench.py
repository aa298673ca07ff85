"""``fastq bench``: runs the scenarios of :mod:`fastq.bench.scenarios` against an embedded
broker in a temporary directory, shows progress, prints a results table and optionally
writes ``--json`` (schema: docs/BENCHMARKS.md) and ``--plot``. ``--compare`` runs the
installed peers on the same workload (:mod:`fastq.bench.peers`)."""
from __future__ import annotations

import json

import click
from rich.markup import escape     # reasons hold "[compare]", which rich would take for markup

from ..bench import peers as P, scenarios as B
from ..bench.peers import peer_names
from ..bench.plot import plot
from ..errors import FastqError
from ._root import cli
from ._common import console as _console, console_stderr as _console_stderr, fmt_num as _fmt


def _lat(r, key) -> str:
    lat = r.get("latency")
    return _fmt(lat[key], 1) if lat else "-"


def _peer_choice():
    return click.Choice(peer_names(), case_sensitive=False)


@cli.command()
@click.option("--quick", is_flag=True, help="Small workload: the default run in about 15 seconds.")
@click.option("--messages", type=click.IntRange(1, 100_000_000), default=None,
              help="Messages per throughput phase  [default: 1,000,000; --quick: 200,000].")
@click.option("--size", type=click.IntRange(B.STAMP.size, 1 << 20), default=100, show_default=True,
              help="Message size in bytes (includes an 8-byte send timestamp).")
@click.option("--partitions", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Partitions of the topic in publish, consume and group.")
@click.option("--producers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Producer processes in e2e/ring and peers; publishing threads in durability-*.")
@click.option("--consumers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Consumer processes in the group and queue scenarios (and their queue peers).")
@click.option("--seconds", type=click.FloatRange(0.01, 3600), default=None,
              help="Time cap of one throughput phase  [default: 5; --quick: 1].")
@click.option("--latency-seconds", type=click.FloatRange(0.01, 3600), default=None,
              help="Length of the paced latency phase, and of the delayed-job adds in tasks  "
                   "[default: 2; --quick: 0.5].")
@click.option("--rate", type=click.IntRange(1, 1_000_000), default=B.RATE, show_default=True,
              help="Paced messages/s in the latency phase.")
@click.option("--redelivery-trials", type=click.IntRange(0, 1000), default=None,
              help="Kill-a-consumer trials in the queue scenario  [default: 5; --quick: 3].")
@click.option("--scenario", "scenarios", multiple=True, type=click.Choice(list(B.SCENARIOS)),
              help="Run only this scenario (repeatable)  [default: all].")
@click.option("--dir", "directory", type=click.Path(file_okay=False, writable=True), default=None,
              help="Put the benchmark data under this directory  [default: a temporary one].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the results as JSON to this file ('-' for stdout).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Draw messages/s per scenario and the latency CDF to this PNG (needs matplotlib).")
@click.option("--compare", is_flag=True,
              help="Also run the installed peers on the e2e workload (queue peers: the queue workload; "
                   "task-queue peers: the tasks workload).")
@click.option("--peer", "peers", multiple=True, type=_peer_choice(),
              help="Compare only with this peer (repeatable; implies --compare).")
@click.option("--list", "list_only", is_flag=True, help="List scenarios and peers, then exit.")
def bench(quick, messages, size, partitions, producers, consumers, seconds, latency_seconds, rate,
          redelivery_trials, scenarios, directory, json_path, plot_path, compare, peers, list_only) -> None:
    """Run fastq's benchmark scenarios and print messages/s, MB/s and latency percentiles.

    Every scenario runs against an embedded broker in a fresh directory. --compare runs,
    on the same cross-process workload, the peers that are installed
    (multiprocessing.Queue, faster-fifo, persist-queue, litequeue, Redis Streams, NATS
    JetStream; for the queue scenarios RabbitMQ, Redis Streams consumer groups,
    persist-queue's SQLiteAckQueue and litequeue with acks; for the task scenarios Huey on
    SQLite and the Python port of BullMQ) and prints fastq/peer ratios;
    missing peers, and peers whose scenarios were not selected, are listed as skipped,
    with the reason.
    """

    if list_only:
        _list(P)
        return
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            raise click.UsageError(f"--plot needs matplotlib ({e}); pip install 'fastq-broker[plot]'") from None
    cfg = B.quick_config() if quick else B.Config()
    if messages is not None:
        cfg.messages = messages
    if seconds is not None:
        cfg.seconds = seconds
    if latency_seconds is not None:
        cfg.latency_seconds = latency_seconds
    if redelivery_trials is not None:
        cfg.redelivery_trials = redelivery_trials
    cfg.size, cfg.partitions, cfg.producers, cfg.consumers, cfg.rate = size, partitions, producers, consumers, rate
    cfg.directory = directory
    cfg.scenarios = list(dict.fromkeys(scenarios)) or list(B.SCENARIOS)
    try:
        cfg.check()
    except FastqError as e:
        raise click.UsageError(str(e)) from None
    compare = compare or bool(peers)
    wanted = {p.lower() for p in peers}
    peer_classes = [p for p in P.PEERS if not wanted or p.name.lower() in wanted] if compare else []

    console = _console()
    m = B.machine_info()
    to_stdout = json_path == "-"
    out = console if not to_stdout else _console_stderr()
    out.print(f"fastq bench{' --quick' if cfg.quick else ''}: {cfg.messages:,} x {cfg.size}-byte messages "
              f"per phase (cap {cfg.seconds:g} s), {cfg.partitions} partitions, {cfg.producers} producer(s), "
              f"{cfg.consumers} group consumer(s)")
    out.print(f"machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, "
              f"Python {m['python']}, fastq {m['fastq_version']}"
              f"{' (DEBUG BUILD)' if m['fastq_debug_build'] else ''}")

    results, peer_results = _run_all(out, cfg, peer_classes)
    doc = B.report(cfg, results, peer_results)
    _print_tables(out, doc)
    if json_path:
        text = json.dumps(doc, indent=2)
        if to_stdout:
            click.echo(text)
        else:
            with open(json_path, "w") as f:
                f.write(text + "\n")
            out.print(f"wrote {json_path}")
    if plot_path:

        plot(doc, plot_path)
        out.print(f"wrote {plot_path}")


def _list(P) -> None:
    click.echo("scenarios:")
    for name, fn in B.SCENARIOS.items():
        click.echo(f"  {name}")
    click.echo("peers (--compare):")
    for p in P.PEERS:
        why = P.availability(p)
        click.echo(f"  {p.name:<24} {'available' if why is None else 'skipped: ' + why}")


def _run_all(console, cfg, peer_classes):
    import tempfile

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


    results, peer_results = [], []
    steps = len(cfg.scenarios) + len(peer_classes)
    # auto_refresh off: no refresh thread, so the scenarios' fork() happens in a
    # single-threaded process; the bar is redrawn at each step
    progress = Progress(SpinnerColumn(), TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, auto_refresh=False, transient=True)
    with progress:
        task = progress.add_task("starting", total=steps)
        for name in cfg.scenarios:
            progress.update(task, description=f"fastq {name}", refresh=True)
            try:
                r = B.run_scenario(name, cfg)
            except Exception as e:
                raise click.ClickException(f"scenario {name} failed: {type(e).__name__}: {e}") from e
            results.append(r)
            console.print(f"  {name:<20} {_fmt(r['messages_per_s']):>12} msg/s {_fmt(r['mb_per_s'], 1):>9} MB/s"
                          + _detail(r))
            progress.advance(task)
            progress.refresh()
        for peer in peer_classes:
            progress.update(task, description=f"peer {peer.name}", refresh=True)
            workdir = tempfile.mkdtemp(prefix="fastq-bench-peer-", dir=cfg.directory)
            # a peer is only measured beside a fastq scenario of this run
            unselected = {} if set(peer.compare_with) & set(cfg.scenarios) else {
                peer.name: f"none of the scenarios it is compared with ({', '.join(peer.compare_with)}) "
                           f"was selected"}
            try:
                pr = P.run_peer(peer, cfg, workdir, skip=unselected)
            finally:
                import shutil

                shutil.rmtree(workdir, ignore_errors=True)
            peer_results.append(pr)
            if pr["status"] == "ok":
                console.print(f"  {peer.name:<20} {_fmt(pr['messages_per_s']):>12} msg/s "
                              f"{_fmt(pr['mb_per_s'], 1):>9} MB/s" + _detail(pr))
            else:
                console.print(f"  {peer.name:<20} {pr['status']}: {escape(pr['reason'])}")
            progress.advance(task)
            progress.refresh()
    return results, peer_results


def _redelivery(r) -> str:
    red = (r.get("extra") or {}).get("redelivery")
    if not red:
        return ""
    if not red["supported"]:
        return "redelivery after kill: unsupported"
    if red["p50_ms"] is None:
        return f"redelivery after kill: none within the time limit in {red['trials']} trials"
    late = f", {red['timeouts']} of {red['trials']} never came" if red["timeouts"] else ""
    return f"redelivery after kill p50 {_fmt(red['p50_ms'], 1)} ms, max {_fmt(red['max_ms'], 1)} ms{late}"


def _lateness(r) -> str:
    late = (r.get("extra") or {}).get("lateness")
    if not late:
        return ""
    if not late["supported"]:
        return "delayed jobs: unsupported"
    if late["p50_ms"] is None:
        return f"delayed jobs: none of {late['jobs']} started"
    missing = f", {late['jobs'] - late['started']} of {late['jobs']} never started" \
        if late["started"] < late["jobs"] else ""
    return (f"delayed jobs start late by p50 {_fmt(late['p50_ms'], 2)} ms, p99 {_fmt(late['p99_ms'], 2)} ms, "
            f"max {_fmt(late['max_ms'], 2)} ms{missing}")


def _detail(r) -> str:
    """What follows msg/s and MB/s on a progress line: latency, or the queue extras."""
    if r.get("latency"):
        return f"   p50 {_lat(r, 'p50_us')} µs  p99 {_lat(r, 'p99_us')} µs"
    extra, out = r.get("extra") or {}, []
    if "batch_result" in extra:
        out.append(f"batch {_fmt(extra['batch_result']['messages_per_s'])} msg/s")
    if _redelivery(r):
        out.append(_redelivery(r))
    if _lateness(r):
        out.append(_lateness(r))
    for what, e in (("", extra), ("batch ", extra.get("batch_result") or {})):
        if e.get("exactly_once") is False:
            out.append(f"{what}NOT exactly once (lost or duplicated messages)")
        if e.get("drained") is False:
            out.append(f"{what}consumers stopped at the drain limit with messages left")
    return ("   " + "; ".join(out)) if out else ""


def _print_tables(console, doc) -> None:
    from rich.table import Table

    t = Table(title="fastq", title_justify="left")
    for col, just in (("scenario", "left"), ("messages", "right"), ("msg/s", "right"), ("MB/s", "right"),
                      ("p50 µs", "right"), ("p99 µs", "right"), ("what", "left")):
        t.add_column(col, justify=just)
    for r in doc["scenarios"]:
        t.add_row(r["name"], _fmt(r["messages"]), _fmt(r["messages_per_s"]), _fmt(r["mb_per_s"], 1),
                  _lat(r, "p50_us"), _lat(r, "p99_us"),
                  "; ".join(x for x in (r["description"], _redelivery(r), _lateness(r)) if x))
    console.print(t)
    if not doc["peers"]:
        return
    ratios = {}
    for x in doc["ratios"]:
        ratios.setdefault(x["peer"], []).append(f"{x['ratio']:,.1f}x ({x['scenario']})")
    t = Table(title="peers, same cross-process workload as the scenario in brackets", title_justify="left")
    for col, just in (("peer", "left"), ("status", "left"), ("msg/s", "right"), ("MB/s", "right"),
                      ("p50 µs", "right"), ("p99 µs", "right"), ("fastq / peer", "right")):
        t.add_column(col, justify=just)
    for p in doc["peers"]:
        if p["status"] == "ok":
            notes = "; ".join(x for x in (_redelivery(p), _lateness(p)) if x)
            t.add_row(p["name"], "ok" + (f" ({notes})" if notes else ""),
                      _fmt(p["messages_per_s"]), _fmt(p["mb_per_s"], 1), _lat(p, "p50_us"),
                      _lat(p, "p99_us"), ", ".join(ratios.get(p["name"], [])) or "-")
        else:
            t.add_row(p["name"], f"{p['status']}: {escape(p['reason'])}", "-", "-", "-", "-", "-")
    console.print(t)


