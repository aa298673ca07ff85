"""The package layout's one rule: imports go only downward, and nothing imports in a circle.

Layers, bottom to top (docs/ARCHITECTURE.md opens with this map)::

    errors  <  _core  <  log | ring  <  broker  <  flow  <  queue | pubsub  <  tasks
            <  admission | pool  <  fastq (the public face, fastq/__init__.py)  <  bench  <  cli
            <  __main__

A module may import its own layer's package and any layer below; packages that share a
layer (``log`` and ``ring``) are independent of each other. Every import of a fastq
module sits at module level — an import inside a function is how a cycle hides — except
under ``if TYPE_CHECKING:`` (annotations only). The Cython sources (``.pyx``, ``.pxd``,
``.pxi``) are read too: their ``cimport`` and ``import`` lines are edges like any other.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap

import pytest

import fastq

SRC = os.path.dirname(fastq.__file__)

LAYERS = [
    {"errors"},
    {"_core"},
    {"log", "ring"},
    {"broker"},
    {"flow"},                             # back pressure: rate limiter, backoff (queue and tasks use them)
    {"queue", "pubsub"},
    {"tasks"},                            # task queues are built on queue's leases
    {"admission", "pool"},                # HTTP admission middleware, WorkerPool: over queues and tasks
    {""},                                 # fastq/__init__.py: the public face
    {"bench"},
    {"cli"},
    {"__main__"},
]
LAYER_OF = {pkg: i for i, pkgs in enumerate(LAYERS) for pkg in pkgs}


def package_of(module: str) -> str:
    """``fastq.broker.topic`` -> ``broker``; ``fastq`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(root: str, path: str) -> str:
    rel = os.path.relpath(path, root)
    stem = re.sub(r"\.(py|pyx|pxd|pxi)$", "", rel).replace(os.sep, ".")
    name = "fastq" if stem == "__init__" else "fastq." + stem
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _exists(root: str, module: str) -> bool:
    rel = os.path.join(root, *module.split(".")[1:])
    return any(os.path.exists(rel + ext) for ext in (".py", ".pyx", ".pxd")) or \
        os.path.isdir(rel) or any(os.path.exists(rel + "." + e) for e in ("so",))


def _resolve(root: str, importer: str, is_pkg: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _python_edges(root: str, path: str, module: str, out: list, problems: list) -> None:
    is_pkg = path.endswith("__init__.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)

    def visit(node, depth_in_def: int, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, depth_in_def + 1, typing_only)
                continue
            if isinstance(child, ast.If) and _is_type_checking(child):
                for n in child.body:
                    visit(ast.Module(body=[n], type_ignores=[]), depth_in_def, True)
                for n in child.orelse:
                    visit(ast.Module(body=[n], type_ignores=[]), depth_in_def, typing_only)
                continue
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names if a.name.split(".")[0] == "fastq"]
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(root, module, is_pkg, child.level, child.module)
                if base.split(".")[0] == "fastq":
                    for a in child.names:
                        sub = f"{base}.{a.name}"
                        targets.append(sub if a.name != "*" and _exists(root, sub) else base)
            for t in targets:
                if typing_only:
                    continue
                if depth_in_def:
                    problems.append(f"{path}:{child.lineno}: {module} imports {t} inside a function")
                out.append((module, t, f"{path}:{child.lineno}"))
            visit(child, depth_in_def, typing_only)

    visit(tree, 0, False)


_CY_IMPORT = re.compile(r"^\s*(?:from\s+(fastq[\w.]*)\s+c?import|c?import\s+(fastq[\w.]*))", re.M)


def collect(root: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Every (importer, imported, where) edge between fastq modules under ``root``, and
    the function-level imports found."""
    edges: list = []
    problems: list = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            module = _module_name(root, path)
            if f.endswith(".py"):
                _python_edges(root, path, module, edges, problems)
            elif f.endswith((".pyx", ".pxd", ".pxi")):
                with open(path) as fh:
                    text = fh.read()
                for m in _CY_IMPORT.finditer(text):
                    target = m.group(1) or m.group(2)
                    line = text.count("\n", 0, m.start()) + 1
                    edges.append((module, target, f"{path}:{line}"))
    return edges, problems


def layering_violations(edges) -> list[str]:
    out = []
    for src, dst, where in edges:
        a, b = package_of(src), package_of(dst)
        if a not in LAYER_OF or b not in LAYER_OF:
            out.append(f"{where}: {src} or {dst} is in no layer (add its package to LAYERS and the map)")
        elif LAYER_OF[b] > LAYER_OF[a]:
            out.append(f"{where}: {src} imports upward: {dst}")
        elif LAYER_OF[b] == LAYER_OF[a] and a != b:
            out.append(f"{where}: {src} imports its sibling layer {dst}")
    return out


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a self-loop."""
    graph: dict[str, set] = {}
    for src, dst, _ in edges:
        if src != dst:
            graph.setdefault(src, set()).add(dst)
            graph.setdefault(dst, set())
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_imports_go_only_downward():
    edges, _ = collect(SRC)
    assert len(edges) > 50, "the scan found almost no imports: it is broken"
    assert layering_violations(edges) == []


def test_no_import_cycle():
    edges, _ = collect(SRC)
    assert cycles(edges) == []


def test_no_function_level_import_of_a_fastq_module():
    _, problems = collect(SRC)
    assert problems == []


def test_every_package_has_a_layer():
    pkgs = {d for d in os.listdir(SRC) if os.path.isdir(os.path.join(SRC, d)) and d != "__pycache__"}
    mods = {f[:-3] for f in os.listdir(SRC) if f.endswith(".py") and f != "__init__.py"}
    assert pkgs | mods <= set(LAYER_OF)


def test_the_runtime_never_imports_bench_or_cli():
    code = "import sys, fastq; print(sorted(m for m in sys.modules if m.startswith(('fastq.bench', 'fastq.cli'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the checker itself catches what it is for -----------------------------------------------

def _tree(tmp_path, files: dict[str, str]) -> str:
    root = tmp_path / "fastq"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return str(root)


def test_checker_sees_an_upward_import_a_cycle_and_a_function_level_import(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "from .log import Log\n",
        "errors.py": "",
        "log/__init__.py": "from .log import Log\n",
        "log/log.py": "from ..broker.topic import Topic\nclass Log: pass\n",       # upward
        "broker/__init__.py": "",
        "broker/topic.py": "from .producer import Producer\nclass Topic: pass\n",
        "broker/producer.py": "def p():\n    from .topic import Topic\n",          # hidden cycle
        "broker/consumer.py": "from .group import G\n",
        "broker/group.py": "from .consumer import C\nG = 1\n",                     # cycle
        "_core/_codec.pyx": "from fastq.log.log cimport Log\n",                    # upward in Cython
        "ring/ringqueue.py": "from ..log import Log\n",                            # sibling
    })
    edges, problems = collect(root)
    bad = "\n".join(layering_violations(edges))
    assert "fastq.log.log imports upward: fastq.broker.topic" in bad
    assert "fastq._core._codec imports upward: fastq.log.log" in bad
    assert "fastq.ring.ringqueue imports its sibling layer fastq.log" in bad
    assert ["fastq.broker.consumer", "fastq.broker.group"] in cycles(edges)
    assert any("fastq.broker.producer imports fastq.broker.topic inside a function" in p for p in problems)


@pytest.mark.parametrize("name", sorted(set(fastq.__all__)))
def test_every_public_name_is_reachable_from_fastq(name):
    assert getattr(fastq, name) is not None
