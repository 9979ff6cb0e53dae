"""Which account a Slack member acts as: `users.slack_user_id`, set by an administrator.

A button pressed in Slack decides as the account whose slack_user_id is the presser's Slack
member id, so the link is as sensitive as a password: only administrators set it (admin API,
CLI), it is audited as a user change, one Slack member maps to at most one account (a unique
index), and service accounts, which never decide requests, cannot be linked.
"""
from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from security_api.enums import UserKind
from security_api.errors import Conflict, InvalidParams
from security_api.models import User

# Slack member ids: U or W, then upper-case letters and digits (e.g. U012AB3CD).
SLACK_USER_ID_PATTERN = re.compile(r"^[UW][A-Z0-9]{2,31}$")


def check_slack_user_id(session: Session, user: User, slack_user_id: str | None) -> None:
    """Refuse a malformed id, a service account, or an id another account already has."""
    if slack_user_id is None:
        return  # unlinking is always allowed
    if not SLACK_USER_ID_PATTERN.fullmatch(slack_user_id):
        raise InvalidParams.one("slack_user_id", "is not a Slack member id (e.g. U012AB3CD)")
    if user.kind != UserKind.PERSON:
        raise InvalidParams.one("slack_user_id", "service accounts cannot decide requests")
    holder = session.scalar(select(User.username).where(User.slack_user_id == slack_user_id,
                                                         User.id != user.id))
    if holder is not None:
        raise Conflict("That Slack member is already linked to another account.",
                       code="slack_user_taken")


def commit_slack_link(session: Session) -> None:
    """Commit a user change; a Slack id linked meanwhile by another admin is a 409, not a 500."""
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict("That Slack member is already linked to another account.",
                       code="slack_user_taken") from None
