"""Provisioners by name: every module of this package but `base` registers its class (see `base`)."""
from __future__ import annotations

import importlib
import pkgutil

from security_api.errors import InvalidParams
from security_api.provisioners.base import REGISTRY, GrantContext, Provisioner, ProvisioningError
from security_api.settings import Settings

__all__ = ["GrantContext", "Provisioner", "ProvisioningError", "get_provisioner", "names"]


def modules() -> list[str]:
    """Return the provisioner modules of this package: every module but `base`.

    Listing reads file names only; nothing is imported, so a provisioner's own dependencies
    (boto3) load on the first use of the registry, never on `import security_api`.
    """
    return sorted(info.name for info in pkgutil.iter_modules(__path__)
                  if info.name != "base" and not info.name.startswith("_"))


_LOADED: list[bool] = []  # set once every module was imported (the package never changes at run time)


def _registry() -> dict[str, type[Provisioner]]:
    # Scanning the package directory on every call cost a directory listing per request; the
    # modules register themselves on import, so one scan per process is enough. REGISTRY itself
    # is returned (not a copy): a class registered later (tests) still shows.
    if not _LOADED:
        for module in modules():
            importlib.import_module(f"{__name__}.{module}")
        _LOADED.append(True)
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
