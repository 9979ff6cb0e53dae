"""What every provisioner offers: check params, grant, revoke. Adding one is one new module."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from ..settings import Settings


class ProvisioningError(Exception):
    """The outside system refused or did not answer; the message is recorded on the request."""


@dataclass(frozen=True)
class GrantContext:
    """Everything a provisioner may need about one access request."""

    request_id: str
    requester: str
    requester_ip: str | None
    permission: str
    params: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    expires_at: datetime | None = None


# Every concrete provisioner, by name; filled as their modules are imported.
REGISTRY: dict[str, type[Provisioner]] = {}


class Provisioner(ABC):
    """Makes a permission real in the outside world (a VPN, a database, a security group).

    A subclass registers itself under its `name` when its module is imported, so adding a
    provisioner is one new module plus its import in `provisioners/__init__.py`.
    """

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if REGISTRY.get(cls.name, cls) is not cls:
                raise TypeError(f"two provisioners are called {cls.name!r}")
            REGISTRY[cls.name] = cls

    def __init__(self, settings: Settings):
        self.settings = settings

    def validate_config(self, config: dict) -> dict:
        """Return the normalised permission config; raise InvalidParams when it is unusable."""
        return dict(config)

    def validate_params(self, params: dict, *, config: dict) -> dict:
        """Return the normalised request params; raise InvalidParams for ones it cannot use."""
        if params:
            from ..errors import InvalidParams
            raise InvalidParams.one("params", f"the {self.name} provisioner takes no params")
        return {}

    @abstractmethod
    def grant(self, ctx: GrantContext) -> dict:
        """Give the access; return a JSON-able result; raise ProvisioningError on failure."""

    @abstractmethod
    def revoke(self, ctx: GrantContext) -> dict:
        """Take the access back; return a JSON-able result; raise ProvisioningError on failure."""
