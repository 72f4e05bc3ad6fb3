"""The package's import graph, read from the source (nothing is imported or executed).

Rules of the codebase: no two modules import each other (nor any longer cycle), counting
imports under TYPE_CHECKING and inside functions; and the pipeline never imports the tools
(skor_bridge.tools: benchmark, demo, demo receiver), which may import everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "skor_bridge"

#: Tools built on the pipeline (bench, demo, the demo receiver); the pipeline never imports
#: them.
TOOLS = ("skor_bridge.tools",)
#: The front ends: they may import tools (the CLI has `bench` and `demo` commands) and are
#: not imported by the pipeline either. `reference` renders the CLI's help into the README.
FRONT = ("skor_bridge.cli", "skor_bridge.__main__", "skor_bridge.reference")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """First-party modules `name` imports anywhere in its source (a name imported from a
    package counts as its submodule when it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
    return {target for target in found if target in MODULES and target != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_the_import_reader_sees_type_checking_and_function_level_imports():
    # Guards the guard: a reader that missed these would pass every rule below.
    assert "skor_bridge.tools.bench.context" in GRAPH["skor_bridge.tools.bench.throughput"]
    cli_run = GRAPH["skor_bridge.cli.run"]
    assert "skor_bridge.bridge" in cli_run  # imported inside the command function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_two_modules_import_each_other():
    mutual = sorted(
        {tuple(sorted((a, b))) for a, targets in GRAPH.items() for b in targets if a in GRAPH[b]}
    )
    assert mutual == []


def test_the_package_has_no_import_cycle():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("tool", ["bench", "demo", "receiver"])
def test_the_tools_exist_where_this_test_looks(tool):
    assert f"skor_bridge.tools.{tool}" in MODULES


def test_no_pipeline_module_imports_a_tool_or_the_cli():
    pipeline = [name for name in GRAPH if not _within(name, TOOLS + FRONT)]
    assert len(pipeline) > 50
    offending = {
        name: sorted(t for t in GRAPH[name] if _within(t, TOOLS + FRONT)) for name in pipeline
    }
    assert {name: bad for name, bad in offending.items() if bad} == {}
