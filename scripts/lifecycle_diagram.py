"""Draw the access-request lifecycle from its table and keep README's copy current.

    .venv/bin/python scripts/lifecycle_diagram.py          # rewrite README.md's diagram
    .venv/bin/python scripts/lifecycle_diagram.py --check  # exit 1 if README's is stale

Why generated: the table in security_api/access/transitions.py is what the code performs; a diagram
drawn by hand would drift from it. The Mermaid `stateDiagram-v2` goes between the markers
`<!-- lifecycle:begin -->` and `<!-- lifecycle:end -->`; tests/test_lifecycle_diagram.py
fails when README's copy is not what this script would write today.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from security_api.access.transitions import MOVES, SAME, Column  # noqa: E402

BEGIN, END = "<!-- lifecycle:begin -->", "<!-- lifecycle:end -->"
README = ROOT / "README.md"
INTERNAL = {"granting": "granting (internal: shown as pending)"}


def _status_lines() -> list[str]:
    lines = [f'    state "{label}" as {name}' for name, label in INTERNAL.items()]
    for move in MOVES:
        if move.column != Column.STATUS:
            continue
        label = move.event.value + (" (owes a revoke)" if move.owes_revoke else "")
        for source in move.sources or ("[*]",):
            target = source if move.target == SAME else move.target
            lines.append(f"    {source} --> {target}: {label}")
    return lines


def _provisioning_lines() -> list[str]:
    owing = ", ".join(dict.fromkeys(m.event.value for m in MOVES if m.owes_revoke))
    lines = ['    state "revoke owed (provisioning_state, beside the status)" as owed {',
             f"        [*] --> revoking: {owing}"]
    for move in MOVES:
        if move.column != Column.PROVISIONING:
            continue
        for source in move.sources:
            target = source if move.target == SAME else (move.target or "[*]")
            lines.append(f"        {source} --> {target}: {move.event.value}")
    return [*lines, "    }"]


def diagram() -> str:
    """Return the Mermaid block, markers included, as README holds it."""
    body = ["```mermaid", "stateDiagram-v2", *_status_lines(), *_provisioning_lines(), "```"]
    return "\n".join([BEGIN, *body, END])


def rewritten(readme: str) -> str:
    """Return README's text with the diagram between the markers replaced by today's."""
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + diagram() + readme[end:]


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    fresh = rewritten(text)
    if "--check" in argv:
        if fresh != text:
            print("README.md's lifecycle diagram is stale: run scripts/lifecycle_diagram.py")
            return 1
        return 0
    README.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
