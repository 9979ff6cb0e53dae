"""A request's story, told from its own fields and its decisions, oldest first.

The request keeps no event log of its own; its times (created, decided, ended), its approvals
and its provisioning record are enough to retell what happened and what it waits for.
"""
from __future__ import annotations

from flask_babel import gettext as _
from flask_babel import ngettext

from security_api.enums import RequestStatus
from security_api.models import AccessRequest

from .formatting import approvers_text, duration, provisioning_error, when

# The statuses a grant was in force for; their story says until when it was granted.
GRANTED = (RequestStatus.ACTIVE, RequestStatus.EXPIRED, RequestStatus.REVOKED)


def timeline(view: dict, access_request: AccessRequest, approvers: list[str]) -> list[dict]:
    """The request's story: asked, decided, waiting or set up, how it ended, failed removals."""
    events = [{"at": view["created_at"], "kind": "created",
               "text": _("Requested by %(user)s for %(duration)s", user=view["requester"],
                         duration=duration(view["duration_minutes"]))}]
    events += _decisions(view)
    events += _under_way(view, access_request.status, approvers)
    events += _outcome(view)
    events += _readback(view)
    events += _failed_removal(view)
    for event in events:
        event["when"] = when(event["at"]) if event["at"] else ""
    return events


def _decisions(view: dict) -> list[dict]:
    return [{"at": decision["at"], "kind": decision["decision"],
             "text": _("Approved by %(user)s", user=decision["approver"])
             if decision["decision"] == "approve"
             else _("Denied by %(user)s", user=decision["approver"]),
             "comment": decision["comment"]}
            for decision in view["approvals"]]


def _under_way(view: dict, stored: RequestStatus, approvers: list[str]) -> list[dict]:
    """What a request not yet settled waits for (by its stored status, not its effective one)."""
    if stored == RequestStatus.PENDING:
        missing = view["approvals_required"] - sum(
            1 for decision in view["approvals"] if decision["decision"] == "approve")
        return [{"at": None, "kind": "waiting", "text": ngettext(
            "Waiting for %(num)s more approval by %(approvers)s",
            "Waiting for %(num)s more approvals by %(approvers)s", max(missing, 1),
            approvers=approvers_text(approvers))}]
    if stored == RequestStatus.GRANTING:
        return [{"at": view["decided_at"], "kind": "granting",
                 "text": _("The access is being set up")}]
    return []


def _outcome(view: dict) -> list[dict]:
    """How the request turned out: granted (and how that ended), failed, or cancelled."""
    status = view["status"]
    granted_at = (view["provisioning"].get("grant") or {}).get("at") or view["decided_at"]
    events = []
    if status in GRANTED and view["expires_at"]:
        events.append({"at": granted_at, "kind": "active",
                       "text": _("Granted until %(when)s", when=when(view["expires_at"]))})
    if status == RequestStatus.FAILED:
        events.append({"at": granted_at, "kind": "failed",
                       "text": _("Setting up the access failed: %(error)s",
                                 error=provisioning_error(view["provisioning"], "grant"))})
    if status == RequestStatus.CANCELLED:
        events.append({"at": view["decided_at"], "kind": "cancelled",
                       "text": _("Cancelled by %(user)s", user=view["requester"])})
    if status == RequestStatus.REVOKED:
        events.append({"at": view["ended_at"], "kind": "revoked", "text": _("Revoked")})
    if status == RequestStatus.EXPIRED:
        # An undecided request (expired_reason not_decided) has no expires_at: its deadline.
        events.append({"at": view["ended_at"] or view["expires_at"]
                       or view.get("pending_expires_at"), "kind": "expired",
                       "text": _("Expired")})
    return events


def _readback(view: dict) -> list[dict]:
    """What the target said when it was read back after the grant and after the removal."""
    verified = view.get("verified_at") or {}
    events = []
    if verified.get("grant"):
        events.append({"at": verified["grant"], "kind": "verified",
                       "text": _("Verified at the target: the access is in place")})
    if (view["provisioning"].get("verify_grant") or {}).get("outcome") == "contradicted":
        events.append({"at": view["provisioning"]["verify_grant"].get("at"), "kind": "failed",
                       "text": _("Not found at the target after setting it up: undone")})
    if verified.get("revoke"):
        events.append({"at": verified["revoke"], "kind": "verified",
                       "text": _("Verified at the target: the access is removed")})
    elif (view["provisioning"].get("verify_revoke") or {}).get("outcome") == "contradicted":
        events.append({"at": view["provisioning"]["verify_revoke"].get("at"), "kind": "failed",
                       "text": _("Still present at the target after removing it (it is retried)")})
    return events


def _failed_removal(view: dict) -> list[dict]:
    """A removal the provisioner reported as failed: the grant may still be in place."""
    revoke = view["provisioning"].get("revoke") or {}
    if not revoke or revoke.get("ok"):
        return []
    return [{"at": revoke.get("at"), "kind": "failed",
             "text": _("Removing the access failed: %(error)s (it is retried)",
                       error=revoke.get("error") or _("no details"))}]
