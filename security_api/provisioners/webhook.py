"""The `webhook` provisioner: POST a signed JSON event to a URL the admin configured.

The receiver gets, as the exact body bytes,
``{"event": "grant"|"revoke", "request_id", "requester", "requester_ip", "permission",
"params", "expires_at", "sent_at"}`` and two headers:

- ``X-Security-API-Signature: sha256=<hex HMAC-SHA256 of the body with WEBHOOK_SIGNING_SECRET>``
- ``X-Security-API-Timestamp: <unix seconds>``, the same instant as ``sent_at``.

A receiver must recompute the HMAC over the raw body (constant-time compare), and reject
events whose timestamp is older than a few minutes. The timestamp header is not signed
itself; ``sent_at`` inside the signed body is, so compare the two. Treat
``(request_id, event)`` as the idempotency key: a replay within the window must do no harm.

Read-back: with an optional ``status_url`` in the config, the service asks the receiver after
each grant and revoke whether the access is there (see `_webhook_status` for the signed GET
and the ``{"present": bool}`` answer). Without one, the webhook cannot be read back.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from typing import Annotated, ClassVar
from urllib.parse import urlsplit

import requests
from pydantic import AfterValidator, ConfigDict, Field, RootModel, StrictBool, StrictInt, StrictStr

from security_api.clock import epoch, isoformat, utcnow
from security_api.errors import InvalidParams
from security_api.provisioners._webhook_status import read_status
from security_api.provisioners.base import GrantContext, Provisioner, ProvisionerModel, ProvisioningError

SIGNATURE_HEADER = "X-Security-API-Signature"
TIMESTAMP_HEADER = "X-Security-API-Timestamp"
USER_AGENT = "security-api-webhook/1"
MAX_URL_LENGTH = 2000
MAX_HEADERS = 20
MAX_PARAMS = 20
MAX_PARAM_KEY = 64
MAX_PARAM_STRING = 500
# Larger integers lose precision in JavaScript receivers.
MAX_PARAM_INT = 2**53 - 1
PARAM_KEY = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
# Headers the signature and the transport depend on: config may not replace them.
RESERVED_HEADERS = {"content-type", "content-length", "host", "transfer-encoding", "connection",
                    SIGNATURE_HEADER.lower(), TIMESTAMP_HEADER.lower()}
URL_PROBLEM = "must be an http or https URL with a host"


def _checked_url(url: str) -> str:
    """What a pattern cannot say about a URL: it parses, as http(s), with a host and port."""
    if any(ord(ch) < 33 or ord(ch) == 127 for ch in url):
        raise ValueError("not a valid URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(URL_PROBLEM)
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        raise ValueError("has an invalid port") from None
    return url


def _unreserved(headers: dict[str, str] | None) -> dict[str, str]:
    """Refuse headers the signature and the transport depend on; null means none."""
    for name in headers or {}:
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"{name} is set by the service")
    return dict(headers or {})


HeaderName = Annotated[StrictStr, Field(pattern=HEADER_NAME)]
# CR or LF in a value would let the config inject extra headers; a tab is fine.
HeaderValue = Annotated[StrictStr, Field(pattern=r"^[^\x00-\x08\x0a-\x1f]*$")]
ParamKey = Annotated[StrictStr, Field(pattern=PARAM_KEY, max_length=MAX_PARAM_KEY)]
ParamValue = (StrictBool | Annotated[StrictInt, Field(ge=-MAX_PARAM_INT, le=MAX_PARAM_INT)]
              | Annotated[StrictStr, Field(max_length=MAX_PARAM_STRING)])


class WebhookConfig(ProvisionerModel):
    """Where to POST the events, and extra headers for the receiver (e.g. its own token)."""

    problems: ClassVar[dict[str, str]] = {
        "url": URL_PROBLEM,
        "status_url": URL_PROBLEM,
        "headers": f"must be an object of at most {MAX_HEADERS} one-line string headers "
                   "with valid names"}

    url: Annotated[StrictStr, Field(min_length=1, max_length=MAX_URL_LENGTH),
                   AfterValidator(_checked_url)]
    # Where to read a grant back (GET, {"present": bool}); none: the webhook is not read back.
    status_url: Annotated[StrictStr, Field(min_length=1, max_length=MAX_URL_LENGTH),
                          AfterValidator(_checked_url)] | None = None
    # null is read as no headers, as before.
    headers: Annotated[dict[HeaderName, HeaderValue] | None, Field(max_length=MAX_HEADERS),
                       AfterValidator(_unreserved)] = Field(default_factory=dict)


class WebhookParams(RootModel[Annotated[dict[ParamKey, ParamValue], Field(max_length=MAX_PARAMS)]]):
    """A flat object the receiver gets as is: JSON-safe scalars only, small keys and values."""

    model_config = ConfigDict(strict=True)
    problems: ClassVar[dict[str, str]] = {
        "": f"must be an object of at most {MAX_PARAMS} keys (slugs of at most {MAX_PARAM_KEY} "
            f"characters) with string (at most {MAX_PARAM_STRING} characters), integer or "
            "boolean values"}


class WebhookProvisioner(Provisioner):
    """Tells an outside service to grant or revoke, with an HMAC-signed event."""

    name = "webhook"

    config_model = WebhookConfig
    params_model = WebhookParams

    def grant(self, ctx: GrantContext) -> dict:
        """POST the grant event; the request is active only on a 2xx answer."""
        return self._send("grant", ctx)

    def revoke(self, ctx: GrantContext) -> dict:
        """POST the revoke event; anything but a 2xx answer is a failure."""
        return self._send("revoke", ctx)

    def is_present(self, ctx: GrantContext) -> bool | None:
        """Ask the config's status_url; None without one (nothing to read back)."""
        config = self._config_for(ctx)
        if not config.get("status_url"):
            return None
        secret = self._secret()
        return read_status(config["status_url"], request_id=ctx.request_id,
                           headers=config["headers"], sign=lambda data: sign(data, secret=secret),
                           timeout=self.settings.provisioner_timeout_seconds)

    def _secret(self) -> str:
        secret = self.settings.webhook_signing_secret
        if not secret:
            # Unsigned events would let anyone who can reach the receiver forge grants.
            raise ProvisioningError("WEBHOOK_SIGNING_SECRET is not set")
        return secret

    def _send(self, event: str, ctx: GrantContext) -> dict:
        secret = self._secret()
        config = self._config_for(ctx)
        now = utcnow()
        body = event_body(event, ctx, sent_at=isoformat(now))
        headers = {**config["headers"], "Content-Type": "application/json",
                   "User-Agent": USER_AGENT, SIGNATURE_HEADER: sign(body, secret=secret),
                   TIMESTAMP_HEADER: str(epoch(now))}
        status = self._post(config["url"], body=body, headers=headers)
        return {"provisioner": self.name, "status": status}

    def _config_for(self, ctx: GrantContext) -> dict:
        # The stored config was checked when saved; check again in case it was edited by hand.
        try:
            return self.validate_config(ctx.config)
        except InvalidParams as exc:
            raise ProvisioningError(f"webhook config is invalid: {exc.message}") from None

    def _post(self, url: str, *, body: bytes, headers: dict) -> int:
        timeout = self.settings.provisioner_timeout_seconds
        # Messages name the error class only: the URL may carry a token in its path or query.
        try:
            # A redirect could carry the signed event somewhere the admin never configured.
            # stream=True: the status is all we need; never buffer a huge answer.
            with requests.post(url, data=body, headers=headers, timeout=timeout,
                               allow_redirects=False, stream=True) as response:
                status = response.status_code
        except requests.Timeout:
            raise ProvisioningError(f"webhook timed out after {timeout}s") from None
        except requests.RequestException as exc:
            raise ProvisioningError(f"webhook failed: {type(exc).__name__}") from None
        if not 200 <= status < 300:
            raise ProvisioningError(f"webhook answered HTTP {status}")
        return status


def event_body(event: str, ctx: GrantContext, *, sent_at: str) -> bytes:
    """Serialise one event: compact, key-sorted UTF-8 JSON, the bytes that get signed."""
    payload = {"event": event, "request_id": ctx.request_id, "requester": ctx.requester,
               "requester_ip": ctx.requester_ip, "permission": ctx.permission,
               "params": dict(ctx.params), "expires_at": isoformat(ctx.expires_at),
               "sent_at": sent_at}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")


def sign(body: bytes, *, secret: str) -> str:
    """Return the signature header value for these exact body bytes."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"
