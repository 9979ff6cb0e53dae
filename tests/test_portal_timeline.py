"""A request's story on its page (web/portal/timeline.py) for the endings the HTTP tests of
test_portal_access.py do not reach: still being set up, expired, and a removal that failed.
"""
from __future__ import annotations

from security_api.enums import RequestStatus
from security_api.models import AccessRequest
from web.portal.timeline import timeline

CREATED, DECIDED, GRANTED = "2026-01-05T10:00:00Z", "2026-01-05T10:05:00Z", "2026-01-05T10:06:00Z"
EXPIRES, ENDED = "2026-01-05T11:06:00Z", "2026-01-05T10:30:00Z"


def _view(status: str, **fields) -> dict:
    view = {"created_at": CREATED, "requester": "alice", "duration_minutes": 60,
            "approvals": [], "status": status, "provisioning": {}, "approvals_required": 1,
            "decided_at": DECIDED, "expires_at": None, "ended_at": None}
    return view | fields


def _story(app, view: dict, stored: RequestStatus) -> list[dict]:
    with app.test_request_context("/portal/"):
        return timeline(view, AccessRequest(status=stored), ["security/lead"])


def test_an_approved_request_being_set_up_says_so(app):
    approval = {"at": DECIDED, "decision": "approve", "approver": "lead", "comment": "ok"}
    story = _story(app, _view("granting", approvals=[approval]), RequestStatus.GRANTING)
    assert [event["kind"] for event in story] == ["created", "approve", "granting"]
    assert story[0]["text"] == "Requested by alice for 1 hour"
    assert story[1]["text"] == "Approved by lead" and story[1]["comment"] == "ok"
    assert story[2]["text"] == "The access is being set up" and story[2]["at"] == DECIDED


def test_an_expired_grant_tells_when_it_was_granted_and_when_it_ended(app):
    view = _view("expired", expires_at=EXPIRES, provisioning={"grant": {"ok": True, "at": GRANTED}})
    story = _story(app, view, RequestStatus.ACTIVE)  # stored active, past its end: expired
    assert [event["kind"] for event in story] == ["created", "active", "expired"]
    assert story[1]["at"] == GRANTED and story[1]["text"].startswith("Granted until ")
    assert story[2]["at"] == EXPIRES and story[2]["text"] == "Expired"
    assert story[2]["when"].endswith(" UTC")


def test_a_failed_removal_stays_on_the_story_of_a_revoked_grant(app):
    provisioning = {"grant": {"ok": True, "at": GRANTED},
                    "revoke": {"ok": False, "at": ENDED, "error": "connection refused"}}
    view = _view("revoked", expires_at=EXPIRES, ended_at=ENDED, provisioning=provisioning)
    story = _story(app, view, RequestStatus.REVOKED)
    assert [event["kind"] for event in story] == ["created", "active", "revoked", "failed"]
    assert story[3] == {"at": ENDED, "kind": "failed", "when": story[3]["when"],
                        "text": "Removing the access failed: connection refused (it is retried)"}


def test_a_pending_request_waits_for_the_approvals_still_missing(app):
    view = _view("pending", approvals_required=2, decided_at=None)
    story = _story(app, view, RequestStatus.PENDING)
    assert story[-1] == {"at": None, "kind": "waiting", "when": "",
                         "text": "Waiting for 2 more approvals by security/lead"}
