"""Shared helpers for fastq's benchmarks (pytest-benchmark).

Every benchmark measures a fixed number of messages per round and reports messages/s
and MB/s in ``extra_info``; baselines measured in the same run let each result be read
as a ratio (printed at the end of the session and stored in the JSON under
``fastq_ratios``). Machine details go into the JSON's machine_info.
"""
from __future__ import annotations

import pytest

from fastq.bench.scenarios import machine_info  # shared with `fastq bench`

_RESULTS: dict[str, float] = {}
_LATENCY: dict[str, tuple[list[dict], tuple[float, float] | None]] = {}


def record_latency(label: str, rounds: list[dict], bar: tuple[float, float] | None = None) -> None:
    """Keep each round's latency percentiles (``percentiles()`` dicts) for the summary;
    ``bar``: (p50, p99) limits in µs to mark each round against."""
    _LATENCY[label] = (rounds, bar)


def record(benchmark, name: str, messages: int, size: int) -> None:
    """Turn the timing of one round of `messages` messages into rates (median round)."""
    # the median round: robust to the odd round disturbed by another process
    median = benchmark.stats.stats.median
    rate = messages / median if median > 0 else 0.0
    benchmark.extra_info["messages"] = messages
    benchmark.extra_info["message_bytes"] = size
    benchmark.extra_info["messages_per_s"] = round(rate)
    benchmark.extra_info["mb_per_s"] = round(rate * size / 1e6, 2)
    _RESULTS[name] = rate


@pytest.fixture
def rates():
    return _RESULTS


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info.update({"fastq": globals()["machine_info"]()})  # the hook's argument shadows the import


RATIOS = [
    # (label, numerator, denominator, bar)
    ("append one-by-one (os) / buffered file", "log_append_one[os]", "baseline_buffered_file", 0.40),
    ("append batch-1000 (os) / buffered file", "log_append_batch[os]", "baseline_buffered_file", 2.0),
    ("read one-by-one / buffered file", "log_read_one", "baseline_buffered_file", 0.50),
    ("append one-by-one (always) / write+fsync", "log_append_one[always]", "baseline_write_fsync", 0.90),
]


def compute_ratios() -> list[dict]:
    out = []
    for label, num, den, bar in RATIOS + _EXTRA_RATIOS:
        if num in _RESULTS and den in _RESULTS and _RESULTS[den] > 0:
            r = _RESULTS[num] / _RESULTS[den]
            out.append({"ratio": label, "value": round(r, 3), "bar": bar or None,
                        "met": None if not bar else r >= bar})
    return out


_EXTRA_RATIOS: list = []


def add_ratio(label: str, num: str, den: str, bar: float) -> None:
    """Let a bench module declare a ratio to report."""
    if (label, num, den, bar) not in _EXTRA_RATIOS:
        _EXTRA_RATIOS.append((label, num, den, bar))


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["fastq_rates"] = {k: round(v) for k, v in _RESULTS.items()}
    output_json["fastq_latency"] = {k: r for k, (r, _) in _LATENCY.items()}
    output_json["fastq_ratios"] = compute_ratios()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section("fastq: messages per second (same run)")
    for k, v in sorted(_RESULTS.items()):
        tr.write_line(f"  {k:<44} {v:>14,.0f} msg/s")
    ratios = compute_ratios()
    if ratios:
        tr.section("fastq: ratios against baselines measured in this run")
        for r in ratios:
            verdict = "a measurement, no bar" if r["bar"] is None else \
                f"bar {r['bar']}x: {'met' if r['met'] else 'MISSED'}"
            tr.write_line(f"  {r['ratio']:<48} {r['value']:>8.2f}x  ({verdict})")
    if _LATENCY:
        tr.section("fastq: latency per round, p50 / p99 / p99.9 (µs); st: ms the hypervisor stole")
        for label, (rounds, bar) in _LATENCY.items():
            cells = []
            for r in rounds:
                met = "" if bar is None else (" ✓" if r["p50_us"] <= bar[0] and r["p99_us"] <= bar[1] else " ✗")
                stolen = "" if r.get("steal_ms") is None else f" (st {r['steal_ms']:g})"
                cells.append(f"{r['p50_us']:.1f} / {r['p99_us']:.1f} / {r['p99.9_us']:.0f}{met}{stolen}")
            tail = "" if bar is None else f"   (bar p50 ≤ {bar[0]:g}, p99 ≤ {bar[1]:g})"
            tr.write_line(f"  {label:<34} " + " | ".join(cells) + tail)
    info = machine_info()
    tr.write_line(f"  machine: {info['cpu_model']}, {info['cores']} cores, {info['memory_gib']} GiB, "
                  f"{info['os']}, Python {info['python']}")
