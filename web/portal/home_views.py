"""My access: what I hold now and what I am waiting for."""
from __future__ import annotations

from flask import Response

from flask_api_functions import current_actor, current_subject, db, services
from security_api.access import grants
from security_api.access.request_views import list_requests
from security_api.access.request_views import render as render_requests
from security_api.clock import utcnow

from .blueprint import bp, login_required, render
from .formatting import ending_soon, time_left, when
from .permission_names import step_up_keys


@bp.get("/")
@login_required
def my_access() -> Response:
    """Show standing permissions, active grants with the time left, and pending requests."""
    now = utcnow()
    held = grants.held_permissions(db(), current_subject(), now=now)
    standing = [item for item in held if item["source"] == "standing"]
    granted = [item for item in held if item["source"] == "grant"]
    stepped = step_up_keys(item["permission"] for item in granted)
    warning = services().settings.expiry_warning_minutes
    # Grants about to end are highlighted, with the Extend form right there.
    active = [dict(item, time_left=time_left(item["expires_at"], now),
                   step_up=item["permission"] in stepped,
                   ending_soon=ending_soon(item["expires_at"], now, warning)) for item in granted]
    pending, _cursor = list_requests(db(), actor=current_actor(), scope="own", status="pending",
                                     permission=None, limit=200, cursor=None, now=now)
    waiting = [dict(row, expires=when(row["pending_expires_at"]))
               for row in render_requests(db(), pending, now=now)]
    return render("portal/my_access.html", standing=standing, active=active, pending=waiting)
