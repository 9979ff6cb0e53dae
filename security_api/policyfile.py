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

Every problem names the line and column of the offending node; a file with any problem is
refused whole and nothing changes. One module per step: policyfile_read (YAML -> the catalog
models of catalog_schemas), policyfile_plan (the diff against the database), policyfile_apply
(the changes and their audit events) and policyfile_export.
"""
from __future__ import annotations

from .policyfile_apply import apply, stage
from .policyfile_export import export
from .policyfile_plan import Change, Diff, plan
from .policyfile_read import PolicyFile, PolicyFileError, parse

__all__ = ["Change", "Diff", "PolicyFile", "PolicyFileError", "apply", "export", "parse", "plan",
           "stage"]
