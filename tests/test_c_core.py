"""The C core's own tests (tests/c/), compiled with the host C compiler and run.

tests/c/ drives csrc/ without Python: CRC-32C (the dispatched hardware path against the
table, a bitwise reference, RFC 3720 and google-crc32c vectors), the batch codec, the ring
under producer/consumer/observer threads, the log's lock, seqlock and tail wait, and the
queue state (window, leases, delay heap, dedup, repair, pid lock, a model walk). The
same program runs cross-built for aarch64 under qemu-user (``make test-aarch64``); here
it runs natively so CI runs it on every change. ``make test-c`` is the same outside
pytest.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CTESTS = ROOT / "tests" / "c"
FLAGS = ["-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-pthread"]


def _compiler():
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        pytest.skip("no C compiler on this machine")
    if not CSRC.is_dir() or not CTESTS.is_dir():
        pytest.skip(f"{CSRC} or {CTESTS} missing (tests run against an installed package)")
    return cc


def _build(tmp_path, extra=()):
    cc = _compiler()
    exe = tmp_path / "test_core"
    sources = sorted(str(p) for p in (*CTESTS.glob("*.c"), *CSRC.glob("*.c")))
    cmd = [cc, *FLAGS, *extra, f"-I{CSRC}", f"-I{CTESTS}", "-o", str(exe), *sources]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, f"{' '.join(cmd)}\n{built.stdout}{built.stderr}"
    return exe


def _run(exe, env=None):
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=240, env=env)
    sys.stdout.write(run.stdout)   # the seed and the per-suite counts, shown with -s or on failure
    sys.stderr.write(run.stderr)
    return run


def test_c_core_passes_natively_warning_free(tmp_path):
    run = _run(_build(tmp_path))
    assert run.returncode == 0, f"C core tests failed:\n{run.stdout}{run.stderr}"
    assert run.stdout.rstrip().endswith(" 0 failed"), run.stdout


def test_c_core_has_no_data_race_under_threadsanitizer(tmp_path):
    """The ordering proof that emulation cannot give: qemu-user on an x86-64 host runs
    aarch64 threads with the host's (TSO) ordering, so a missing acquire/release passes
    there. ThreadSanitizer reports every plain access not ordered by happens-before, e.g. a
    consumer reading ring bytes behind a tail that was not published with release (with
    fq_os.h's acquire/release turned relaxed it reports 7 races in the ring suite)."""
    cc = _compiler()
    probe = subprocess.run([cc, "-fsanitize=thread", "-x", "c", "-o", str(tmp_path / "probe"), "-"],
                           input="int main(void){return 0;}", capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{cc} cannot build with -fsanitize=thread: {probe.stderr.strip()[:200]}")
    # -O1 keeps TSan's reports readable; fences are invisible to TSan (-Wno-tsan): the code
    # under test synchronizes its plain data through acquire/release atomics, which it sees.
    exe = _build(tmp_path, ["-O1", "-fsanitize=thread", "-Wno-tsan",
                            "-DFQ_RING_FRAMES=30000", "-DFQ_LOG_COMMITS=5000"])
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    run = _run(exe, env)
    assert "ThreadSanitizer" not in run.stderr, run.stderr
    assert run.returncode == 0, f"C core tests under TSan failed:\n{run.stdout}{run.stderr}"
