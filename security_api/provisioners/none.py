"""The `none` provisioner: the grant lives only in this service's records."""
from __future__ import annotations

from .base import GrantContext, Provisioner


class NoneProvisioner(Provisioner):
    """Records the grant only; nothing outside changes."""

    name = "none"

    def validate_config(self, config: dict) -> dict:
        """The `none` provisioner takes no config: anything given is a mistake."""
        if config:
            from ..errors import InvalidParams
            raise InvalidParams.one("config", "the none provisioner takes no config")
        return {}

    def grant(self, ctx: GrantContext) -> dict:
        """Nothing to do outside."""
        return {"provisioner": self.name}

    def revoke(self, ctx: GrantContext) -> dict:
        """Nothing to undo outside."""
        return {"provisioner": self.name}
