"""Import hygiene: no import cycles among the project's modules, layers in one direction, and a Prefect-free core.

The graph is built from the source with ``ast`` (nothing is imported): only module-level imports count (those in
functions run later, on call), ``if TYPE_CHECKING:`` blocks do not count, relative imports are resolved, and
``from pkg import name`` is an import of ``pkg.name`` when that is a module of ours.
"""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("anodet_core", "tasks", "flows")
# anodet_core -> nothing of ours; tasks -> anodet_core; flows -> tasks, anodet_core
LAYER = {"anodet_core": 0, "tasks": 1, "flows": 2}
ORCHESTRATION = ("prefect", "prefect_dask", "dask", "distributed")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is package) for every module of the project's packages."""
    out: dict[str, tuple[Path, bool]] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts.pop()
            out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports executed when the module is imported: the module body, class bodies and module-level blocks."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue  # runs on call, not on import
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try | ast.TryStar):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.ClassDef | ast.With | ast.AsyncWith | ast.For | ast.AsyncFor | ast.While):
                visit(node.body)
                visit(getattr(node, "orelse", []))
            elif isinstance(node, ast.Match):
                for case in node.cases:
                    visit(case.body)

    visit(tree.body)
    return found


def _imported_names(modname: str, is_pkg: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute names of the modules an import statement imports (third-party ones included)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = modname.split(".") if is_pkg else modname.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = [target]
    for a in node.names:  # ``from pkg import name`` where pkg.name is a submodule imports it too
        if f"{target}.{a.name}" in MODULES:
            out.append(f"{target}.{a.name}")
    return out


@functools.cache
def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between our modules, every top-level package each module imports at module level)."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    top: dict[str, set[str]] = {m: set() for m in MODULES}
    for modname, (path, is_pkg) in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        own_ancestors = {".".join(modname.split(".")[:i]) for i in range(1, modname.count(".") + 1)}
        for node in _module_level_imports(tree):
            for name in _imported_names(modname, is_pkg, node):
                top[modname].add(name.split(".")[0])
                parts = name.split(".")
                # importing a.b.c runs a/__init__ and a/b/__init__ first; the importer's own ancestors are
                # already (being) imported when it runs, so they are no edge
                for i in range(1, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    if dep in MODULES and dep != modname and dep not in own_ancestors:
                        edges[modname].add(dep)
    return edges, top


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_the_packages():
    edges, top = _graph()
    assert {"anodet_core.models", "anodet_core.models._registry", "tasks.inspection", "flows.nightly", "flows.cli"} <= set(MODULES)
    assert "anodet_core.models._registry" in edges["anodet_core.models.anodfdnet"]  # from ._registry import ...
    assert "anodet_core.models.anodfdnet" in edges["anodet_core.models"]  # from . import anodfdnet
    assert "tasks.inspection" in edges["flows.nightly"] and "prefect" in top["flows.nightly"]


def test_no_import_cycles():
    edges, _ = _graph()
    cycles = [c for c in _strongly_connected(edges) if len(c) > 1]
    assert not cycles, f"module-level import cycles: {cycles}"


def test_layers_import_downwards_only():
    """anodet_core imports nothing of tasks/flows; tasks nothing of flows."""
    edges, _ = _graph()
    upward = sorted(
        f"{m} -> {d}" for m, ds in edges.items() for d in ds if LAYER[d.split('.')[0]] > LAYER[m.split('.')[0]]
    )
    assert not upward, f"imports against the layering anodet_core < tasks < flows: {upward}"


def test_core_never_imports_orchestration_at_module_level():
    _, top = _graph()
    bad = sorted(f"{m}: {sorted(top[m] & set(ORCHESTRATION))}" for m in MODULES if m.startswith("anodet_core") and top[m] & set(ORCHESTRATION))
    assert not bad, f"anodet_core must not import Prefect or Dask at module level: {bad}"


def test_importing_all_of_core_loads_no_orchestration():
    core = sorted(m for m in MODULES if m.split(".")[0] == "anodet_core")
    code = "\n".join(
        [f"import {m}" for m in core]
        + [
            "import sys",
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {ORCHESTRATION!r})",
            "assert not bad, bad",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_cycle_finder_reports_a_cycle():
    comps = _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert sorted(comps) == [["a", "b", "c"], ["d"]]


def test_importing_the_nightly_flow_builds_no_task_runner():
    """The flow's runner is built from the environment when a run starts, not when flows.nightly is imported."""
    code = """
import dask
from flows.nightly import nightly_inspection
from flows.runners import SettingsTaskRunner
assert dask.config.get("distributed.nanny.pre-spawn-environ", default={}).get("MALLOC_TRIM_THRESHOLD_") != "68719476736"
assert dask.config.get("distributed.worker.profile.enabled") is True
assert type(nightly_inspection.task_runner) is SettingsTaskRunner
runner = nightly_inspection.task_runner.duplicate()  # what a flow run enters
assert type(runner) is not SettingsTaskRunner and runner.address == "tcp://10.0.0.1:8786", runner.address
"""
    env = {**os.environ, "ANODET_DASK_ADDRESS": "tcp://10.0.0.1:8786"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
