"""Provisioners by name: each module registers its class (see `base.Provisioner`)."""
from __future__ import annotations

import importlib

from ..errors import InvalidParams
from ..settings import Settings
from .base import REGISTRY, GrantContext, Provisioner, ProvisioningError

__all__ = ["GrantContext", "Provisioner", "ProvisioningError", "get_provisioner", "names"]

# Imported on first use, so a provisioner's own dependencies (boto3) load only when needed.
MODULES = ("none", "webhook", "aws_security_group")


def _registry() -> dict[str, type[Provisioner]]:
    for module in MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return REGISTRY


def names() -> list[str]:
    """Return the names of every provisioner."""
    return sorted(_registry())


def get_provisioner(name: str, settings: Settings) -> Provisioner:
    """Return the provisioner called `name`; 412 for an unknown one."""
    cls = _registry().get(name)
    if cls is None:
        raise InvalidParams.one("provisioner", f"unknown provisioner {name!r}; one of {names()}")
    return cls(settings)
