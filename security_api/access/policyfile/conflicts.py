"""The policy file's `conflicts` section: conflict sets (separation of duties) as code.

    conflicts:
      - name: payments-maker-checker
        permissions: [payments-create, payments-approve]
        description: Who creates a payment never approves one

The section is optional. Absent, the file says nothing about conflict sets and they stay as they
are (a file written before sets existed applies unchanged); present (even `conflicts: []`), it
is their full desired state like the other sections. Kept here, one module for the section's
read, plan values and export, so the general steps stay about the general shape.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from security_api.access.admin_conflicts import members
from security_api.access.catalog import BUILTIN_PERMISSIONS
from security_api.access.catalog_schemas import ConflictSetSpec
from security_api.models import ConflictSet


def read_conflicts(reader, items: list[tuple[int, dict]]) -> dict[str, ConflictSetSpec]:
    """Check each set with ConflictSetSpec, then that it names permissions of the file."""
    sets: dict[str, ConflictSetSpec] = {}
    for i, item in items:
        spec = reader.model(ConflictSetSpec, item, ("conflicts", i))
        if spec is None:
            continue
        before = len(reader.located.problems)
        for j, key in enumerate(spec.permissions):
            if key not in reader.declared and key not in BUILTIN_PERMISSIONS:
                reader.fail(("conflicts", i, "permissions", j),
                            f"{key!r} is neither in the file's permissions nor built in")
        if spec.name in sets:
            reader.fail(("conflicts", i, "name"), f"conflict set {spec.name!r} is listed twice")
        elif len(reader.located.problems) == before:
            sets[spec.name] = spec
    return sets


def stored_conflicts(session: Session) -> dict[tuple, dict]:
    """Return the sets in the database, as the plan compares them."""
    keys = members(session)
    return {(row.name,): {"permissions": keys.get(row.name, []), "description": row.description}
            for row in session.scalars(select(ConflictSet))}


def wanted_conflicts(sets: dict[str, ConflictSetSpec]) -> dict[tuple, dict]:
    """Return the file's sets, as the plan compares them (permissions sorted: order is no change)."""
    return {(spec.name,): {"permissions": sorted(spec.permissions), "description": spec.description}
            for spec in sets.values()}


def export_conflicts(session: Session) -> list[dict]:
    """Return the sets as the file writes them, by name; the description only when there is one."""
    entries = []
    for (name,), values in sorted(stored_conflicts(session).items()):
        entry = {"name": name, "permissions": values["permissions"]}
        if values["description"]:
            entry["description"] = values["description"]
        entries.append(entry)
    return entries
