"""The webhook provisioner's read-back: ask the receiver's `status_url` whether a grant is there.

``GET <status_url>?request_id=<id>&sent_at=<iso>`` (appended with ``&`` when the URL has a
query of its own), with the config's headers and the same two headers as the events:
``X-Security-API-Signature: sha256=<HMAC-SHA256 of the appended query string, exactly as
sent>`` and ``X-Security-API-Timestamp``. The receiver answers 200 with ``{"present": true}``
or ``{"present": false}``. Anything else (another status, a redirect, not JSON, no boolean
``present``, more than MAX_ANSWER_BYTES, a timeout) proves nothing and raises
ProvisioningError, so the read-back is tried again later. The leading underscore keeps the
provisioner registry from taking this helper for a provisioner.
"""
from __future__ import annotations

import json
from urllib.parse import urlencode

import requests

from security_api.clock import epoch, isoformat, utcnow
from security_api.provisioners.base import ProvisioningError

MAX_ANSWER_BYTES = 1024


def status_query(request_id: str, *, sent_at: str) -> str:
    """Return the query string that is appended to status_url and signed."""
    return urlencode({"request_id": request_id, "sent_at": sent_at})


def read_status(status_url: str, *, request_id: str, headers: dict, sign, timeout: int) -> bool:
    """Return the receiver's `present`; raise ProvisioningError for any other answer.

    `sign(bytes) -> str` makes the signature header (the events' own HMAC and secret).
    """
    now = utcnow()
    query = status_query(request_id, sent_at=isoformat(now))
    url = status_url + ("&" if "?" in status_url else "?") + query
    sent = {**headers, "Accept": "application/json", "X-Security-API-Signature": sign(query.encode()),
            "X-Security-API-Timestamp": str(epoch(now))}
    # Messages name the error class only: the URL may carry a token in its path or query.
    try:
        with requests.get(url, headers=sent, timeout=timeout, allow_redirects=False,
                          stream=True) as response:
            status = response.status_code
            body = response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
    except requests.Timeout:
        raise ProvisioningError(f"status_url timed out after {timeout}s") from None
    except (requests.RequestException, OSError) as exc:
        raise ProvisioningError(f"status_url failed: {type(exc).__name__}") from None
    if status != 200:
        raise ProvisioningError(f"status_url answered HTTP {status}")
    return _present(body)


def _present(body: bytes) -> bool:
    if len(body) > MAX_ANSWER_BYTES:
        raise ProvisioningError("status_url answer is too large")
    try:
        answer = json.loads(body)
    except ValueError:
        raise ProvisioningError("status_url answer is not JSON") from None
    present = answer.get("present") if isinstance(answer, dict) else None
    if not isinstance(present, bool):
        raise ProvisioningError('status_url answer has no boolean "present"')
    return present
