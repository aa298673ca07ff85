"""Shared helpers for fastq's benchmarks (pytest-benchmark).

Every benchmark measures a fixed number of messages per round and reports messages/s
and MB/s in ``extra_info``; baselines measured in the same run let each result be read
as a ratio (printed at the end of the session and stored in the JSON under
``fastq_ratios``). Machine details go into the JSON's machine_info.
"""
from __future__ import annotations

import pytest

from fastq.benchmarks import machine_info  # shared with `fastq bench`

_RESULTS: dict[str, float] = {}


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
            out.append({"ratio": label, "value": round(r, 3), "bar": bar, "met": r >= bar})
    return out


_EXTRA_RATIOS: list = []


def add_ratio(label: str, num: str, den: str, bar: float) -> None:
    """Let a bench module declare a ratio to report."""
    if (label, num, den, bar) not in _EXTRA_RATIOS:
        _EXTRA_RATIOS.append((label, num, den, bar))


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["fastq_rates"] = {k: round(v) for k, v in _RESULTS.items()}
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
            tr.write_line(f"  {r['ratio']:<48} {r['value']:>8.2f}x  (bar {r['bar']}x: "
                          f"{'met' if r['met'] else 'MISSED'})")
    info = machine_info()
    tr.write_line(f"  machine: {info['cpu_model']}, {info['cores']} cores, {info['memory_gib']} GiB, "
                  f"{info['os']}, Python {info['python']}")
