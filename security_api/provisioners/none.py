"""The `none` provisioner: the grant lives only in this service's records."""
from __future__ import annotations

from security_api.provisioners.base import GrantContext, Provisioner


class NoneProvisioner(Provisioner):
    """Records the grant only; nothing outside changes (no config, no params: the defaults)."""

    name = "none"

    def grant(self, ctx: GrantContext) -> dict:
        """Nothing to do outside."""
        return {"provisioner": self.name}

    def revoke(self, ctx: GrantContext) -> dict:
        """Nothing to undo outside."""
        return {"provisioner": self.name}

    def is_present(self, ctx: GrantContext) -> None:
        """Nothing outside to read back: the request's own record is the whole grant, so
        calling it verified would claim a check that never happened."""
        return None
