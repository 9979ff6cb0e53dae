"""The layering the design promises, checked on the source: the domain stands on its own.

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
