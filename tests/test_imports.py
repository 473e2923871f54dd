"""The package's modules import each other without a cycle: every import of vidanom/, also those
inside functions and under TYPE_CHECKING, read from the source (nothing is imported to find them)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vidanom"


def modules() -> dict[str, Path]:
    """Dotted name → file of every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that module `name` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import fsutil` imports the module fsutil, not the package
                module = f"{target}.{alias.name}"
                found.add(module if module in known else target)
    return {m for m in found if m in known and m != name}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (a list of modules, the first repeated at its end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_reader_sees_imports_inside_functions_and_under_type_checking():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert "vidanom.config" in graph["vidanom.project"]  # at the top
    assert "vidanom.interrupt" in graph["vidanom.project"]  # inside Project.writing
    assert "vidanom.detector" in graph["vidanom"]  # under TYPE_CHECKING
    assert "vidanom.fsutil" in graph["vidanom.cache"]  # `from . import fsutil`


def test_vidanom_has_no_import_cycle():
    known = modules()
    found = cycle({name: imports(name, path, known) for name, path in known.items()})
    assert found is None, "import cycle: " + " -> ".join(found or [])
