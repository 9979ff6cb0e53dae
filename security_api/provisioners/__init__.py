"""Provisioners by name: `none`, `webhook`, `aws_security_group`."""
from __future__ import annotations

from ..errors import InvalidParams
from ..settings import Settings
from .base import GrantContext, Provisioner, ProvisioningError

__all__ = ["GrantContext", "Provisioner", "ProvisioningError", "get_provisioner", "names"]


def _registry() -> dict[str, type[Provisioner]]:
    # Imported here so a provisioner's own dependencies load only when it is used.
    from .aws_security_group import AwsSecurityGroupProvisioner
    from .none import NoneProvisioner
    from .webhook import WebhookProvisioner

    return {cls.name: cls for cls in (NoneProvisioner, WebhookProvisioner,
                                      AwsSecurityGroupProvisioner)}


def names() -> list[str]:
    """Return the names of every provisioner."""
    return sorted(_registry())


def get_provisioner(name: str, settings: Settings) -> Provisioner:
    """Return the provisioner called `name`; 412 for an unknown one."""
    cls = _registry().get(name)
    if cls is None:
        raise InvalidParams.one("provisioner", f"unknown provisioner {name!r}; one of {names()}")
    return cls(settings)
