"""Policy as code: a YAML file of roles, permissions and rules, checked whole, planned, applied.

The file is the full desired state of every non-built-in permission, role and rule: what it
does not name is deleted, except the built-in permissions, the security/admin role and its
standing rules for security-api.admin and security-api.audit, which are always kept.

    version: 1
    roles:
      - name: developer
        description: People who build the product
        subroles: [backend, {name: frontend, description: Web and mobile}]
    permissions:
      - key: vpn
        name: VPN access
        max_duration_minutes: 720
        provisioner: {name: none, config: {}}
    rules:
      - {permission: vpn, role: "*", subrole: "*", mode: auto}
    conflicts:                      # optional: see policyfile/conflicts.py
      - {name: vpn-or-bastion, permissions: [vpn, bastion]}

Every problem names the line and column of the offending node; a file with any problem is
refused whole and nothing changes. One module per step: read (YAML -> the catalog models of
access/catalog_schemas), plan (the diff against the database), apply (the changes and their
audit events) and export.
"""
from __future__ import annotations

from security_api.access.policyfile.apply import apply, stage
from security_api.access.policyfile.export import export
from security_api.access.policyfile.plan import Change, Diff, plan
from security_api.access.policyfile.read import PolicyFile, PolicyFileError, parse

__all__ = ["Change", "Diff", "PolicyFile", "PolicyFileError", "apply", "export", "parse", "plan",
           "stage"]
