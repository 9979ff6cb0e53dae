"""Acting on one request from its page or a list: cancel, revoke, retry, approve, deny.

Every action runs the same domain transition as the API's POST /v1/requests/<id>/<action>;
the portal only flashes the outcome in words and goes back to where the form was.
"""
from __future__ import annotations

from flask import Response, flash, redirect, request, url_for
from flask_babel import gettext as _

from flask_api_functions import current_actor, db, origin, services
from security_api.access import lifecycle
from security_api.clock import utcnow
from security_api.enums import RequestStatus
from security_api.errors import ApiError, NotFound
from security_api.models import AccessRequest
from web.api import schemas

from .blueprint import bp, login_required, safe_next
from .formatting import provisioning_error, when
from .forms import field, flash_error, step_up_code, validated


def _back(request_id: str) -> Response:
    """Go back to where the form was (a portal path), else to the request's page."""
    target = request.form.get("next")
    return redirect(safe_next(target) if target else
                    url_for("portal.request_detail", request_id=request_id))


def run_transition(transition, request_id: str, *, with_comment: bool) -> Response:
    """Run a transition exactly as the API does; flash the outcome and go back."""
    kwargs = {}
    try:
        if with_comment:
            body = validated(schemas.DecisionBody,
                             {"comment": field("comment"), "totp": step_up_code()})
            kwargs.update(comment=body.comment, totp=body.totp)
        changed = transition(db(), services(), request_id=request_id, actor=current_actor(),
                             origin=origin(), now=utcnow(), **kwargs)
    except NotFound:
        raise  # the error page: as if the request did not exist
    except ApiError as exc:
        flash_error(exc)
        return _back(request_id)
    flash(*_outcome_message(transition, changed))
    return _back(request_id)


def _outcome_message(transition, changed: AccessRequest) -> tuple[str, str]:
    """The flash (text, category) saying what the transition did to the request."""
    if transition is lifecycle.cancel:
        return _("The request is cancelled."), "info"
    if transition is lifecycle.revoke:
        return _("The access is revoked."), "info"
    if transition is lifecycle.deny:
        return _("The request is denied."), "info"
    if transition is lifecycle.retry:
        return _retry_message(changed)
    return _approval_message(changed)


def _retry_message(changed: AccessRequest) -> tuple[str, str]:
    if changed.status == RequestStatus.ACTIVE:
        return _("Set up again: the access is granted until %(when)s.",
                 when=when(changed.expires_at)), "info"
    if changed.status == RequestStatus.FAILED:
        return _("Setting up the access failed again: %(error)s",
                 error=provisioning_error(changed.provisioning, "grant")), "error"
    return _("The access is being set up again."), "info"


def _approval_message(changed: AccessRequest) -> tuple[str, str]:
    if changed.status == RequestStatus.ACTIVE:
        return _("Approved: the access is granted until %(when)s.",
                 when=when(changed.expires_at)), "info"
    if changed.status == RequestStatus.FAILED:
        return _("Approved, but setting up the access failed: %(error)s",
                 error=provisioning_error(changed.provisioning, "grant")), "error"
    if changed.status == RequestStatus.PENDING:
        return _("Your approval is recorded; more approvals are needed."), "info"
    return _("Approved; the access is being set up."), "info"


@bp.post("/requests/<request_id>/cancel")
@login_required
def cancel(request_id: str) -> Response:
    """Withdraw one's own pending request."""
    return run_transition(lifecycle.cancel, request_id, with_comment=False)


@bp.post("/requests/<request_id>/revoke")
@login_required
def revoke(request_id: str) -> Response:
    """End an active grant now (requester or admin)."""
    return run_transition(lifecycle.revoke, request_id, with_comment=False)


@bp.post("/requests/<request_id>/retry")
@login_required
def retry(request_id: str) -> Response:
    """Set up a failed request's access again (its approvers and administrators)."""
    return run_transition(lifecycle.retry, request_id, with_comment=False)
