"""The architecture as the imports show it: quart_app's modules import one way, and bent library internals live
in quart_app/speedups.py alone."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "quart_app"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (relative imports resolved), at any depth of the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def app_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in APP.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def test_quart_app_modules_import_each_other_one_way():
    """No import cycle between quart_app's modules (a package's __init__ counts as the package)."""
    graph = app_graph()
    # A package's own modules importing the package's __init__ is how Python
    # loads them, not a dependency of theirs on what __init__ builds.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend([*path, node, nxt])
                return True
            if nxt not in state and visit(nxt, [*path, node]):
                return True
        state[node] = 2
        return False

    for start in sorted(graph):
        if start not in state and visit(start, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_exceptions_are_a_leaf_module():
    """quart_app/exceptions.py, which every layer raises from, imports nothing of the app."""
    assert not {m for m in imports_of(APP / "exceptions.py") if m.startswith("quart_app")}


def test_library_internals_are_bent_only_in_speedups():
    """Private or overridden library internals (the measured speed-ups) are imported by speedups.py alone."""
    internals = ("quart.globals", "quart.sessions", "flask.templating", "itsdangerous", "quart_login.cookie")
    offenders = {
        module_name(path): sorted(m for m in imports_of(path) if m.startswith(internals))
        for path in APP.rglob("*.py")
        if path.name != "speedups.py"
    }
    assert {name: found for name, found in offenders.items() if found} == {}
    assert "gc.freeze" not in "".join(p.read_text() for p in APP.rglob("*.py") if p.name != "speedups.py")
