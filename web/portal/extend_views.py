"""Extending an active grant from its page or from "my access": POST /portal/requests/<id>/extend.

The same domain operation as the API's POST /v1/requests/<id>/extend, checked with the same
body schema; the portal only says what happened: extended at once, or sent for approval (the
extension's own page is shown then).
"""
from __future__ import annotations

from flask import Response, flash, redirect, request, url_for
from flask_babel import gettext as _

from flask_api_functions import current_actor, db, origin, services
from security_api.access import lifecycle
from security_api.clock import utcnow
from security_api.errors import ApiError, NotFound
from web.api import schemas

from .blueprint import bp, login_required, safe_next
from .formatting import approvers_text, when
from .forms import field, flash_error, minutes_field, step_up_code, validated


@bp.post("/requests/<request_id>/extend")
@login_required
def extend(request_id: str) -> Response:
    """Extend one's own active grant exactly as the API does; flash the outcome."""
    back = request.form.get("next")
    back = safe_next(back) if back else url_for("portal.request_detail", request_id=request_id)
    try:
        body = validated(schemas.ExtendBody, {
            "duration_minutes": minutes_field(field("duration_minutes")),
            "justification": field("justification"), "totp": step_up_code()})
        shown, created = lifecycle.extend(
            db(), services(), request_id=request_id, actor=current_actor(),
            justification=body.justification, duration_minutes=body.duration_minutes,
            origin=origin(), now=utcnow(), totp=body.totp)
    except NotFound:
        raise  # the error page: as if the request did not exist
    except ApiError as exc:
        flash_error(exc)
        return redirect(back)
    if created:
        flash(_("Extension sent for approval to %(approvers)s; your access continues meanwhile.",
                approvers=approvers_text(lifecycle.approver_groups(db(), shown.id))), "info")
        return redirect(url_for("portal.request_detail", request_id=shown.id))
    flash(_("Extended: the access now ends %(when)s.", when=when(shown.expires_at)), "info")
    return redirect(back)
