"""The house's layers, checked on the import graph itself (every import statement, inside functions too).

Layers, bottom to top: the core ``peftpipe`` (no Prefect), ``blocks`` (Prefect blocks), ``tasks``,
``flows``, and the command line ``cli``. A module may import its own layer or lower ones, never a
higher one, and no set of modules may import each other in a circle. Imports under
``if TYPE_CHECKING:`` count too: a circle for the type checker is still a circle for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = ("peftpipe", "blocks", "tasks", "flows", "cli")
# Run, never imported: ``python -m peftpipe`` hands over to the command line.
ENTRY_POINTS = {"peftpipe.__main__", "cli.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for layer in LAYERS for path in sorted((REPO / layer).rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its body (``from a import b`` counts a.b if it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            # The nearest project module: `peftpipe.spec.memory_mb` -> `peftpipe.spec`.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def layer_of(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for following in sorted(graph.get(node, ())):
            if following not in index:
                visit(following)
                low[node] = min(low[node], low[following])
            elif following in on_stack:
                low[node] = min(low[node], index[following])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read_whole() -> None:
    """The reader sees function-level imports: the CLI's `run` reaches the flow only inside the function."""
    graph = import_graph()
    assert "flows.finetune" in graph["cli.app"]
    assert {"peftpipe.engines", "peftpipe.validation", "cli.app", "flows.finetune"} <= set(graph)


def test_no_module_imports_a_higher_layer() -> None:
    graph = import_graph()
    upward = sorted(f"{module} -> {target}" for module, targets in graph.items() if module not in ENTRY_POINTS
                    for target in targets if layer_of(target) > layer_of(module))
    assert upward == [], "imports that run back up a layer (core < blocks < tasks < flows < cli):\n" + "\n".join(upward)


def test_no_import_circles() -> None:
    found = circles(import_graph())
    assert found == [], "modules that import each other in a circle:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_core_imports_no_prefect_anywhere() -> None:
    """Stronger than importing with prefect blocked: not even inside a function the core never calls in tests."""
    offenders = []
    for name, path in project_modules().items():
        if layer_of(name) != 0 or name in ENTRY_POINTS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{name}: {n}" for n in names if n.split(".")[0] in ("prefect", "prefect_aws")]
    assert offenders == []


def test_engines_are_reached_through_the_registry() -> None:
    """Outside an engine's own folder, only the engine registry names it: adding one is a folder plus a line."""
    from peftpipe.engine_registry import ENGINES

    graph = import_graph()
    folders = tuple(f"peftpipe.engines.{name}" for name in ENGINES)
    reaching = sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                      if target.startswith(folders)
                      and not module.startswith(".".join(target.split(".")[:3])))
    assert reaching == []
