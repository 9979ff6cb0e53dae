"""The layering the design promises, checked on the source: the domain stands on its own, the
layers point one way, and no import cycle exists.

security_api/ is the domain: it is handed its settings and never reaches out to the web framework
or to the application's configuration module, so it can serve the HTTP API, the portal, the CLI
and tests alike. These checks read the import statements with ast (nothing is imported), so a
forbidden import fails here even when it sits in a function body or under TYPE_CHECKING.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = ROOT / "security_api"
# Top-level modules the domain must never import: the web framework and the app's configuration.
FORBIDDEN_IN_DOMAIN = {"flask", "config"}


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports stay inside the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def forbidden_imports(path: Path) -> list[str]:
    """The imports of a file whose top-level package is forbidden in the domain."""
    return sorted(name for name in imported_modules(path)
                  if name.split(".")[0] in FORBIDDEN_IN_DOMAIN)


def domain_files() -> list[Path]:
    return sorted(DOMAIN.rglob("*.py"))


def test_domain_has_modules_to_check():
    # Guard against a moved package making the check below vacuously pass.
    assert len(domain_files()) > 20


@pytest.mark.parametrize("path", domain_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_domain_never_imports_flask_or_config(path):
    assert forbidden_imports(path) == []


@pytest.mark.parametrize("source, expected", [
    ("import flask", ["flask"]),
    ("from flask import g", ["flask"]),
    ("import flask.json as j", ["flask.json"]),
    ("def f():\n    from config import Settings", ["config"]),
    ("from .config import x\nfrom alembic.config import Config\nimport flask_babel", []),
])
def test_checker_recognises_forbidden_imports(tmp_path, source, expected):
    module = tmp_path / "module.py"
    module.write_text(source)
    assert forbidden_imports(module) == expected


# ---- the import graph -----------------------------------------------------------------------
# Every first-party import that runs counts, at module level or inside a function (a function-
# level import is the usual way a cycle hides); only `if TYPE_CHECKING:` blocks are left out,
# because they never run. Importing `a.b.c` also runs the packages `a` and `a.b`: edges too.
FIRST_PARTY = ("security_api", "web", "flask_api", "flask_api_functions", "config")

FIRST_PARTY = ("security_api", "web", "flask_api", "flask_api_functions", "config")


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in FIRST_PARTY and rel.with_suffix("").parts[0] not in FIRST_PARTY:
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _known(name: str) -> str | None:
    """The first-party module that `name` (a module or something inside one) belongs to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(inner) for inner in ast.walk(node)}
    return skipped


def _imported(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets |= {_known(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets |= {_known(f"{base}.{alias.name}") for alias in node.names}
    edges = set()
    for target in targets - {None, module}:
        parts = target.split(".")
        edges |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & MODULES.keys()
    # A module's own packages are already being imported when it runs: not an edge.
    return {edge for edge in edges if edge != module and not module.startswith(edge + ".")}


GRAPH = {module: _imported(module, path) for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert len(GRAPH) > 40, "the walk found too few modules to mean anything"
    cycles = _cycles(GRAPH)
    described = [" -> ".join(cycle) + " : " + "; ".join(
        f"{member} imports {sorted(GRAPH[member] & set(cycle))}" for member in cycle)
        for cycle in cycles]
    assert not cycles, "\n".join(described)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("security_api.")))
def test_the_domain_never_imports_the_http_layer_or_the_face(module):
    outside = {edge for edge in GRAPH[module]
               if edge.split(".")[0] in ("web", "flask_api", "flask_api_functions", "config")}
    assert not outside, f"{module} imports {sorted(outside)}"


def test_the_http_layer_never_imports_the_app_module():
    """Blueprints are handed the app; importing flask_api from them would build it twice."""
    offenders = [module for module in MODULES
                 if module.startswith("web.") and "flask_api" in GRAPH[module]]
    assert not offenders
