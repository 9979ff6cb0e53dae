"""Create the access requests scripts/fuzz.sh aims the request operations at.

    python scripts/lib/fuzz_requests.py BASE_URL   (requester's token on standard input)

Without them the fuzzer only ever sends made-up ids to /v1/requests/{request_id}/... and sees
404. The requester asks for fz-approve, fz-deny and fz-cancel (approval by security/admin, the
fuzzer's admin; one pending request per permission is all the API allows) and for vpn (auto);
the output is shell assignments for each operation's target:
    FUZZ_APPROVE_REQUEST_ID  pending: the admin approves it, and the grant is provisioned
    FUZZ_DENY_REQUEST_ID     pending: the admin denies it
    FUZZ_CANCEL_REQUEST_ID   pending: the requester withdraws it (scripts/lib/fuzz_hooks.py)
    FUZZ_ACTIVE_REQUEST_ID   active: the admin revokes it; also the target of GET and retry
The first valid case of each operation changes the request; the later ones meet the 409 of a
request that is no longer in that state, as a second caller would.
"""
from __future__ import annotations

import sys

import requests

TIMEOUT_SECONDS = 15
JUSTIFICATION = "Fuzzing the request operations."
TARGETS = (
    ("FUZZ_APPROVE_REQUEST_ID", "fz-approve", "pending"),
    ("FUZZ_DENY_REQUEST_ID", "fz-deny", "pending"),
    ("FUZZ_CANCEL_REQUEST_ID", "fz-cancel", "pending"),
    ("FUZZ_ACTIVE_REQUEST_ID", "vpn", "active"),
)


def create(base_url: str, token: str, permission: str, status: str) -> str:
    """Ask for a permission and check the request landed in the expected status."""
    response = requests.post(f"{base_url}/v1/requests", timeout=TIMEOUT_SECONDS,
                             headers={"Authorization": f"Bearer {token}"},
                             json={"permission": permission, "justification": JUSTIFICATION})
    if response.status_code != 201 or response.json()["request"]["status"] != status:
        raise SystemExit(f"fuzz_requests: {permission} answered {response.status_code} "
                         f"{response.text}, expected 201 {status}")
    return response.json()["request"]["id"]


if __name__ == "__main__":
    base = sys.argv[1]
    requester_token = sys.stdin.readline().strip()
    for variable, permission, status in TARGETS:
        print(f"{variable}={create(base, requester_token, permission, status)}")
