"""Break-glass in the portal: using it from the request-access page, and the reviews queue.

The same domain operations as POST /v1/requests (under a break_glass rule) and
POST /v1/requests/<id>/review; a refusal re-shows the page with what was typed.
"""
from __future__ import annotations

from flask import Response, flash, redirect, request, url_for
from flask_babel import gettext as _

from flask_api_functions import current_actor, db, origin, services
from security_api.access import break_glass as break_glass_ops
from security_api.access.request_views import list_requests
from security_api.access.request_views import render as render_requests
from security_api.clock import utcnow
from security_api.enums import PolicyMode, RequestStatus
from security_api.errors import ApiError, NotFound
from security_api.models import AccessRequest
from web.api import schemas

from .blueprint import bp, login_required, render, safe_next
from .catalog_views import _flash_created, submit_catalog_form
from .formatting import ago, duration, when
from .forms import field, flash_error, validated
from .permission_names import permission_names
from .request_views import PAGE_SIZE


@bp.post("/break-glass")
@login_required
def break_glass() -> Response:
    """Grant oneself a break-glass permission at once (justification and code always needed)."""
    created, refused = submit_catalog_form()
    if refused is not None:
        return refused
    if created.mode != PolicyMode.BREAK_GLASS or created.status != RequestStatus.ACTIVE:
        _flash_created(created)  # the rule changed meanwhile, or the grant failed: say what became
    else:
        flash(_("Break-glass used: you hold it until %(when)s. The security team has been told, "
                "and the use will be reviewed.", when=when(created.expires_at)), "info")
    return redirect(url_for("portal.request_detail", request_id=created.id))


@bp.get("/reviews")
@login_required
def reviews() -> Response:
    """List the break-glass uses awaiting review; forms where the caller may review."""
    now, actor = utcnow(), current_actor()
    page, next_cursor = list_requests(db(), actor=actor, scope="unreviewed", status=None,
                                      permission=None, limit=PAGE_SIZE,
                                      cursor=request.args.get("cursor") or None, now=now)
    reviewable = {row.id for row in page if break_glass_ops.is_reviewer(db(), row, actor)}
    rows = render_requests(db(), page, now=now)
    names = permission_names(row["permission"] for row in rows)
    items = [dict(row, name=names.get(row["permission"], row["permission"]),
                  duration=duration(row["duration_minutes"]), age=ago(row["created_at"], now),
                  due=when(row["review"]["due_at"]), may_review=row["id"] in reviewable)
             for row in rows]
    more = url_for("portal.reviews", cursor=next_cursor) if next_cursor else None
    return render("portal/reviews.html", entries=items, more=more, here=url_for("portal.reviews"))


@bp.post("/requests/<request_id>/review")
@login_required
def review(request_id: str) -> Response:
    """Record the review of a break-glass use, exactly as the API does."""
    try:
        body = validated(schemas.ReviewBody, {"verdict": field("verdict"),
                                              "comment": field("comment")})
        reviewed = break_glass_ops.review(
            db(), services(), request_id=request_id, actor=current_actor(),
            verdict=body.verdict, comment=body.comment, origin=origin(), now=utcnow())
    except NotFound:
        raise  # the error page: as if the request did not exist
    except ApiError as exc:
        flash_error(exc)
    else:
        flash(*_reviewed_message(body.verdict, reviewed))
    target = request.form.get("next")
    return redirect(safe_next(target) if target else
                    url_for("portal.request_detail", request_id=request_id))


def _reviewed_message(verdict: str, reviewed: AccessRequest) -> tuple[str, str]:
    if verdict == "unjustified" and reviewed.status == RequestStatus.REVOKED:
        return _("Reviewed as unjustified: the access is revoked."), "info"
    return _("Your review is recorded."), "info"
