"""Slack's interactivity Request URL: Approve and Deny buttons pressed in the channel."""
from __future__ import annotations

from typing import Literal

from flask import Blueprint, request
from pydantic import BaseModel, Field, StrictStr

from flask_api_functions import db, origin, respond, services
from security_api.clock import utcnow
from security_api.integrations import slack_interactions
from web.api import schemas
from web.api.inputs import read_raw_body
from web.api.openapi import documented

bp = Blueprint("slack", __name__, url_prefix="/v1/integrations/slack")
E = schemas.Error


class SlackInteractionForm(BaseModel):
    """The form Slack posts (application/x-www-form-urlencoded)."""

    payload: StrictStr = Field(description="The interaction as JSON (a `block_actions` "
                                           "payload: `type`, `user.id`, `actions[].action_id` "
                                           "approve | deny and `actions[].value` the request id).")


class SlackAnswer(BaseModel):
    message: str | None = Field(description="The same text as `text`.")
    text: str = Field(description="What the person who pressed the button is told.")
    response_type: Literal["ephemeral"]
    replace_original: bool


@bp.post("/interactions")
@documented(
    summary="Slack interactivity: Approve / Deny pressed on a posted request", tag="integrations",
    form=SlackInteractionForm, responses={200: SlackAnswer, 400: E, 401: E, 413: E},
    headers=(("X-Slack-Signature", "`v0=` + hex HMAC-SHA256 of `v0:<timestamp>:<raw body>` "
                                   "under SLACK_SIGNING_SECRET"),
             ("X-Slack-Request-Timestamp", "Unix time; within 5 minutes of the server's")),
    description="No bearer token: Slack signs the raw body instead. 401 "
                "`invalid_slack_signature`, and nothing changes, for a missing or wrong "
                "signature, a timestamp more than 5 minutes off either way, a payload seen "
                "before (each signed body acts once), or no SLACK_SIGNING_SECRET configured. "
                "400 `bad_payload` for a signed body without exactly one JSON `payload`. "
                "Otherwise 200 with the text for the person who pressed: a Slack user not "
                "linked to an active account by `slack_user_id` is told so; Approve and Deny "
                "follow exactly the API's rules (eligibility, separation of duties, quorum, "
                "conflicts) and their refusals are the text; a permission with step-up answers "
                "with a link to the portal and is not decided. Every outcome is audited "
                "(`slack.interaction`).")
def interactions():
    """Verify Slack's signature over the raw body, then act once on the button pressed."""
    raw = read_raw_body()  # before any form parsing: the signature covers these exact bytes
    answer = slack_interactions.handle(
        db(), services(), raw_body=raw, timestamp=request.headers.get("X-Slack-Request-Timestamp"),
        signature=request.headers.get("X-Slack-Signature"), origin=origin(), now=utcnow())
    return respond(answer.text, text=answer.text, response_type="ephemeral",
                   replace_original=False)
