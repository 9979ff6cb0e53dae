"""Reading a Slack interaction body: form-encoded `payload=<JSON>`, as Slack sends it.

Read only after the signature checked out (slack_signature): until then nothing in the body is
trusted enough to parse. Strict but small: one `payload` field, JSON of bounded depth, and the
few fields acted on validated by a pydantic model (everything else Slack sends is ignored).
"""
from __future__ import annotations

import json
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from security_api import jsontext
from security_api.errors import BadRequest

SLACK_ID = r"^[A-Z0-9]{2,32}$"  # U012AB3CD, W..., T... (team): upper-case letters and digits


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SlackUser(_Lenient):
    id: StrictStr = Field(pattern=SLACK_ID)


class SlackTeam(_Lenient):
    id: StrictStr = Field(pattern=SLACK_ID)


class SlackChannel(_Lenient):
    id: StrictStr = Field(pattern=SLACK_ID)


class SlackAction(_Lenient):
    action_id: StrictStr = Field(max_length=255)
    value: StrictStr = Field(default="", max_length=2000)


class Interaction(_Lenient):
    """The part of a `block_actions` payload this service acts on."""

    type: StrictStr = Field(max_length=64)
    user: SlackUser
    team: SlackTeam | None = None
    channel: SlackChannel | None = None
    actions: list[SlackAction] = Field(default_factory=list, max_length=10)


def parse(raw_body: bytes) -> Interaction:
    """Return the interaction of a signed body; 400 `bad_payload` when it is not one."""
    try:
        fields = parse_qs(raw_body.decode("utf-8"), strict_parsing=True, max_num_fields=20,
                          errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise _bad("The body is not a UTF-8 form.") from None
    values = fields.get("payload", [])
    if len(values) != 1:
        raise _bad("The form needs exactly one `payload` field.")
    text = values[0]
    if jsontext.too_deep(text.encode("utf-8")):
        raise _bad("The payload nests too deep.")
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise _bad("The payload is not JSON.") from None
    if not isinstance(data, dict):
        raise _bad("The payload is not a JSON object.")
    try:
        return Interaction.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(payload)"
                           for e in exc.errors(include_url=False, include_input=False)[:5])
        raise _bad(f"The payload lacks or mistypes: {fields}.") from None


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="bad_payload")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")
