"""README's lifecycle diagram is the one scripts/lifecycle_diagram.py draws from the table today."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("lifecycle_diagram",
                                               ROOT / "scripts" / "lifecycle_diagram.py")
lifecycle_diagram = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lifecycle_diagram)


def test_readme_holds_the_diagram_the_table_draws_today():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert lifecycle_diagram.diagram() in readme, \
        "README.md's lifecycle diagram is stale: run .venv/bin/python scripts/lifecycle_diagram.py"


def test_the_diagram_shows_every_move_and_the_internal_states():
    drawn = lifecycle_diagram.diagram()
    assert "stateDiagram-v2" in drawn
    assert 'state "granting (internal: shown as pending)" as granting' in drawn
    assert "pending --> granting: approve" in drawn
    assert "active --> expired: expire (owes a revoke)" in drawn
    assert "revoking --> revoke_failed: revoke_failed" in drawn


def test_a_stale_readme_is_rewritten_and_the_check_fails(tmp_path, monkeypatch, capsys):
    stale = f"before\n{lifecycle_diagram.BEGIN}\nold picture\n{lifecycle_diagram.END}\nafter\n"
    readme = tmp_path / "README.md"
    readme.write_text(stale, encoding="utf-8")
    monkeypatch.setattr(lifecycle_diagram, "README", readme)
    assert lifecycle_diagram.main(["--check"]) == 1
    assert readme.read_text(encoding="utf-8") == stale  # a check writes nothing
    assert lifecycle_diagram.main([]) == 0
    fresh = readme.read_text(encoding="utf-8")
    assert fresh.startswith("before\n") and fresh.endswith("\nafter\n")
    assert "old picture" not in fresh and lifecycle_diagram.diagram() in fresh
    assert lifecycle_diagram.main(["--check"]) == 0
