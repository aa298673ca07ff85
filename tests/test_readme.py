"""Every example in README.md runs.

Each ```python block is written to a file and run by this interpreter in a fresh temporary
directory (so ``./data`` lands there), with warnings as errors. Each ```console block
that runs a ``$ fastq …`` command has all its ``$ `` lines run by bash, one after the
other, in a fresh temporary directory, with this interpreter's ``bin`` directory first on
PATH (so ``fastq`` and ``python`` are the ones under test); every command must exit 0.
Lines without ``$ `` (and ```sh blocks: install and make commands) are not run.

A block preceded by ``<!-- no-run: why -->`` is skipped (at most two, each saying why).
Blocks run standalone, in file order, each in its own directory, and may only use the
public API: ``fastq.<name>`` for names in ``fastq.__all__``.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import fastq

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK_TIMEOUT_S = 60
NO_RUN = re.compile(r"<!--\s*no-run:\s*\S.*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


def readme_blocks(text: str) -> list[tuple[str, int, str, bool]]:
    """(language, line number of the opening fence, code, marked no-run) per fenced block."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        if j == len(lines):
            raise AssertionError(f"README.md:{start + 1}: code fence never closed")
        prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        blocks.append((m.group(1), start + 1, "\n".join(lines[start + 1:j]) + "\n",
                       bool(NO_RUN.search(prev))))
        i = j + 1
    return blocks


def console_commands(code: str) -> list[str]:
    return [ln[2:] for ln in code.splitlines() if ln.startswith("$ ")]


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b[0] == "python"]
CONSOLE = [b for b in BLOCKS if b[0] == "console"
           and any(c.startswith("fastq ") for c in console_commands(b[2]))]


def run(argv: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    """Run argv in its own session; on timeout kill the whole group (a block's children
    too) and fail naming the block."""
    env = dict(os.environ)
    env.pop("FASTQ_BROKER", None)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{what} did not finish in {BLOCK_TIMEOUT_S} s\n"
                    f"stdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def check_ran(res: subprocess.CompletedProcess, what: str) -> None:
    detail = f"\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert res.returncode == 0, f"{what} exited {res.returncode}{detail}"
    # An unraisable exception (e.g. a ResourceWarning in a destructor under -W error)
    # does not change the exit status; it is still a broken example.
    assert "Exception ignored" not in res.stderr, f"{what} printed an ignored exception{detail}"


@pytest.mark.parametrize("block", PYTHON, ids=[f"README.md:{b[1]}" for b in PYTHON])
def test_readme_python_block_runs(block, tmp_path):
    _, line, code, no_run = block
    if no_run:
        pytest.skip(f"README.md:{line} is marked no-run")
    script = tmp_path / f"readme_{line}.py"
    script.write_text(code, encoding="utf-8")
    work = tmp_path / "cwd"
    work.mkdir()
    check_ran(run([sys.executable, "-W", "error", str(script)], work,
                  f"README.md:{line} (python)"), f"README.md:{line} (python)")


@pytest.mark.parametrize("block", CONSOLE, ids=[f"README.md:{b[1]}" for b in CONSOLE])
def test_readme_console_block_runs(block, tmp_path):
    _, line, code, no_run = block
    if no_run:
        pytest.skip(f"README.md:{line} is marked no-run")
    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "fastq")):
        pytest.skip("no `fastq` console script beside this interpreter (not installed here)")
    for cmd in console_commands(code):
        what = f"README.md:{line}: $ {cmd}"
        check_ran(run(["bash", "-o", "pipefail", "-c", cmd], tmp_path, what), what)


def test_readme_has_the_examples_and_few_no_run_marks():
    """The parser found the examples (a broken fence would silently run nothing), and
    no more than two blocks opt out of running."""
    assert len(PYTHON) >= 6, [b[1] for b in PYTHON]
    assert len(CONSOLE) >= 1
    skipped = [b[1] for b in BLOCKS if b[3]]
    assert len(skipped) <= 2, f"too many <!-- no-run --> blocks at README.md lines {skipped}"


PUBLIC_ATTR = re.compile(r"\bfastq\.([A-Za-z_]\w*)")
SUBMODULE_IMPORT = re.compile(r"^\s*(from\s+fastq\.\w|import\s+fastq\.\w)", re.M)


@pytest.mark.parametrize("block", PYTHON + CONSOLE,
                         ids=[f"README.md:{b[1]}" for b in PYTHON + CONSOLE])
def test_readme_examples_use_only_the_public_api(block):
    """Module paths inside the package move; README examples use ``fastq.<public name>``."""
    _, line, code, _ = block
    assert not SUBMODULE_IMPORT.search(code), f"README.md:{line} imports a fastq submodule"
    for name in PUBLIC_ATTR.findall(code):
        assert name in fastq.__all__, f"README.md:{line}: fastq.{name} is not in fastq.__all__"


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", ["README.md", "docs/BENCHMARKS.md"])
def test_relative_links_resolve(doc):
    path = README.parent / doc
    missing = [t for t in LINK.findall(path.read_text(encoding="utf-8"))
               if "://" not in t and not (path.parent / t).exists()]
    assert not missing, f"{doc} links to missing files: {missing}"
