"""The layering of docs/architecture.md, kept true: the library never imports the stages (nor Ray or
DVC), stage modules do not import each other (only the drivers compose them), no import cycles, and the
stage layer stays thin. Read from the source (every import, function-level ones too), not from
``sys.modules``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

# the stages: one `run` each, entered from the CLI (and DVC)
STAGES = {"prepare", "shard", "train", "evaluate", "register", "tune", "predict"}
# the drivers: they compose stages' `run` (a study trains through the train stage; the CLI runs them all)
DRIVERS = {"cli", "study"}
MAX_LINES, MAX_FUNCTION_LINES = 300, 60  # of a file, of a function in pipelines/


def modules(package: str) -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted((ROOT / package).rglob("*.py"))
    }


ALL = {**modules("vista"), **modules("pipelines")}


def imports(name: str) -> set[str]:
    """The project modules ``name`` imports (absolute names; ``from x import y`` counts ``x.y`` when that
    is a module, else ``x``), and the third-party top-level packages it imports."""
    path = ALL[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *([node.module] if node.module else [])])
            subs = {f"{mod}.{a.name}" for a in node.names} & set(ALL)
            out |= subs or {mod}
    return out


GRAPH = {name: {m for m in imports(name) if m in ALL and m != name} for name in ALL}


def test_the_library_never_imports_the_stages_ray_or_dvc() -> None:
    bad = {
        name: sorted(m for m in imports(name) if m.split(".")[0] in ("pipelines", "ray", "dvc"))
        for name in ALL
        if name.startswith("vista")
    }
    assert not {k: v for k, v in bad.items() if v}, bad


def test_stage_modules_do_not_import_each_other() -> None:
    """A stage reaches other stages' work through the library and the support modules (ray_train,
    ray_worker, ...); only the drivers call a stage's ``run``; support modules import no stage."""
    layer = {f"pipelines.{s}": "stage" for s in STAGES} | {f"pipelines.{d}": "driver" for d in DRIVERS}
    bad = []
    for name in (n for n in ALL if n.startswith("pipelines.")):
        for m in GRAPH[name]:
            if layer.get(m) == "stage" and layer.get(name) != "driver":
                bad.append(f"{name} -> {m}")
            if layer.get(m) == "driver" and name != "pipelines.cli":
                bad.append(f"{name} -> {m}")
    assert not bad, bad


def test_no_import_cycles() -> None:
    """Package ``__init__`` files are left out: a package importing what it exports is no cycle."""
    graph = {
        n: {m for m in ms if ALL[m].name != "__init__.py"} for n, ms in GRAPH.items() if ALL[n].name != "__init__.py"
    }
    cycles, state = [], {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = "open"
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                cycles.append(" -> ".join([*stack[stack.index(m) :], m]))
            elif m not in state:
                visit(m, [*stack, m])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, cycles


@pytest.mark.parametrize("name", sorted(n for n in ALL if n.startswith("pipelines.")))
def test_the_stage_layer_stays_thin(name: str) -> None:
    text = ALL[name].read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"{ALL[name]}: {len(text.splitlines())} lines"
    long = [
        f"{n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for n in ast.walk(ast.parse(text))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{ALL[name]}: {long}"
