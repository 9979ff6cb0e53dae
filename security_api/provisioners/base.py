"""What every provisioner offers: its config and params models, grant, revoke, read-back.

Adding a provisioner is one new module in this package: it subclasses `Provisioner`, which
registers the class under its `name`, and `provisioners/__init__.py` finds the module by
itself. The module declares the shape of a permission's config and of a request's params as
pydantic models (`config_model`, `params_model`); the base class validates through them and
words the problems the way the rest of the API does (field `config.url`, `params.cidr`).
Checks a model cannot express (they need the network or the settings) follow the model, in
an override that calls `super()`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, RootModel, ValidationError

from security_api.access.catalog_schemas import problem_text
from security_api.errors import InvalidParams
from security_api.settings import Settings


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


@dataclass(frozen=True)
class Entry:
    """One entry at a target that this service made, as drift detection reads it back.

    `key` names the entry stably from one scan to the next (a finding is recorded once per
    key); `ref` is what `remove` needs to delete exactly this entry and nothing else.
    """

    target: str
    request_id: str
    key: str
    description: str
    ref: dict = field(default_factory=dict)


class ProvisionerModel(BaseModel):
    """A config or params shape: unknown keys and wrong types are refused, never coerced.

    `problems` gives, per field, the one sentence an admin reads for any error in that field
    (pydantic's own wording names types and constraints, not what the field should hold).
    A validator's ValueError keeps its own message.
    """

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    problems: ClassVar[dict[str, str]] = {}


class Nothing(ProvisionerModel):
    """The config or params of a provisioner that takes none."""


# Every concrete provisioner, by name; filled as their modules are imported.
REGISTRY: dict[str, type[Provisioner]] = {}


class Provisioner(ABC):
    """Makes a permission real in the outside world (a VPN, a database, a security group)."""

    name: ClassVar[str]
    config_model: ClassVar[type[BaseModel]] = Nothing
    params_model: ClassVar[type[BaseModel]] = Nothing

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
        return self._validated(self.config_model, {} if config is None else config, where="config")

    def validate_params(self, params: dict, *, config: dict) -> dict:
        """Return the normalised request params; raise InvalidParams for ones it cannot use."""
        return self._validated(self.params_model, {} if params is None else params, where="params")

    def _validated(self, model: type[BaseModel], data, *, where: str) -> dict:
        try:
            return model.model_validate(data).model_dump(by_alias=True, exclude_none=True)
        except ValidationError as exc:
            errors = self._errors(model, exc, where=where)
            # The message reads as before: "config.url: must be an http or https URL ...".
            message = "; ".join(f"{error['field']}: {error['problem']}" for error in errors)
            raise InvalidParams(message, errors=errors) from None

    def _errors(self, model: type[BaseModel], exc: ValidationError, *, where: str) -> list[dict]:
        errors, unknown = [], []
        for error in exc.errors(include_url=False):
            loc = error["loc"]
            if error["type"] == "extra_forbidden":
                unknown.append(str(loc[0]))
            elif not loc and error["type"] in ("model_type", "dict_type"):
                errors.append({"field": where, "problem": "must be a JSON object"})
            elif issubclass(model, RootModel) or not loc:
                errors.append({"field": where, "problem": _problem(model, "", error)})
            else:
                errors.append({"field": f"{where}.{loc[0]}",
                               "problem": _problem(model, str(loc[0]), error)})
        if unknown:
            problem = (f"the {self.name} provisioner takes no {where}" if not model.model_fields
                       else f"unknown keys {sorted(set(unknown))}")
            errors.insert(0, {"field": where, "problem": problem})
        # A union (a port or a range) reports each branch; the reader needs the problem once.
        return [dict(pair) for pair in dict.fromkeys(tuple(error.items()) for error in errors)]

    @abstractmethod
    def grant(self, ctx: GrantContext) -> dict:
        """Give the access; return a JSON-able result; raise ProvisioningError on failure."""

    @abstractmethod
    def revoke(self, ctx: GrantContext) -> dict:
        """Take the access back; return a JSON-able result; raise ProvisioningError on failure."""

    def is_present(self, ctx: GrantContext) -> bool | None:
        """Read the target back: is this request's access there right now?

        Run after each grant (it must be there) and each revoke (it must be gone): a call that
        answered 2xx is trusted only once the target agrees. None means this provisioner
        cannot read back (the default, so a new provisioner need not); raise ProvisioningError
        when the target could not be read (unreachable, a bad answer): that proves nothing
        either way, and the read-back is tried again later.
        """
        return None
    # ---- drift (security_api/access/drift.py): only a provisioner that can list what it made
    # at its target takes part; the others (none, webhook) have nothing to compare.
    inspectable: ClassVar[bool] = False

    def target_of(self, config: dict) -> str:
        """Name the target a permission's (validated) config points at, e.g. region/group."""
        raise NotImplementedError(f"{self.name} is not inspectable")

    def inventory(self, config: dict) -> list[Entry]:
        """List every entry at the config's target that carries this service's marker."""
        raise NotImplementedError(f"{self.name} is not inspectable")

    def present(self, config: dict, entries: list[Entry]) -> bool:
        """Tell whether a grant's own entries (those naming its request) make it whole."""
        return bool(entries)

    def remove(self, ref: dict) -> None:
        """Delete exactly the entry `ref` names (an orphan); raise ProvisioningError on failure."""
        raise NotImplementedError(f"{self.name} is not inspectable")


def _problem(model: type[BaseModel], field_name: str, error: dict) -> str:
    """A validator's own sentence, else the model's sentence for the field, else the catalog's."""
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    return getattr(model, "problems", {}).get(field_name) or problem_text(error)
