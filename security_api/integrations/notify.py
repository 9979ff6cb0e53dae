"""Tell people about requests: the Notifier composes the texts (notify_texts) and the channels
(notify_channels: a Slack-compatible webhook and email over SMTP).

Request notifications come from the outbox (outbox_delivery): `send` raises DeliveryFailed so
the row is tried again later. Errors name the error class only, never a URL or credential.
"""
from __future__ import annotations

import logging
import smtplib
from urllib.parse import quote

import requests

from security_api.integrations.notify_channels import post_chat, send_mail, valid_recipients
from security_api.integrations.notify_texts import (
    DECIDED,
    DRIFT,
    EXPIRY_WARNING,
    MAX_JUSTIFICATION,
    PENDING,
    SUBJECT_PREFIX,
    clean,
    slack_escape,
    texts,
)
from security_api.settings import Settings

log = logging.getLogger(__name__)


class NotificationError(Exception):
    """An operational notice reached no one; the message names no URL or credential."""


class DeliveryFailed(Exception):
    """Some channel of a notification failed; `reached` names the channels that did not."""

    def __init__(self, message: str, *, reached: set[str]):
        super().__init__(message)
        self.reached = reached


class Notifier:
    """Sends request notifications to the configured webhook and mail server."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def request_pending(self, request: dict, *, approver_emails: list[str]) -> None:
        """Tell approvers a request waits for them now; never raises (the outbox uses `send`)."""
        self._send_quietly(PENDING, request, approver_emails)

    def request_decided(self, request: dict, *, requester_email: str | None) -> None:
        """Tell the requester (and the channel) how a request was decided now; never raises."""
        self._send_quietly(DECIDED, request, [requester_email] if requester_email else [])

    def send(self, kind: str, request: dict, *, recipients: list[str],
             delivery_id: str | None = None, done: frozenset[str] = frozenset()) -> set[str]:
        """Send one notification to every channel not in `done`; return the channels reached.

        Each channel fails on its own (a dead webhook does not stop the mail); when any
        failed, raise DeliveryFailed carrying the ones reached, so a retry skips them.
        `delivery_id` (the outbox row's id) goes with each channel so a receiver can drop a
        duplicate (a crash between sending and recording it sends again).
        """
        link = (self.drift_link() if kind == DRIFT
                else self.portal_link(request) if kind == EXPIRY_WARNING else self.link(request))
        subject, body, chat = texts(kind, request, link=link)
        reached, errors = set(done), []
        if self.settings.notify_webhook_url and "webhook" not in reached:
            try:
                status = post_chat(self.settings, chat, delivery_id=delivery_id)
            except Exception as exc:  # noqa: BLE001 -- any failure is retried, never raised raw
                errors.append(f"webhook: {type(exc).__name__}")
            else:
                if 200 <= status < 300:
                    reached.add("webhook")
                else:
                    errors.append(f"webhook: HTTP {status}")
        addresses = [a for a in valid_recipients(recipients) if f"email:{a}" not in reached]
        if self.settings.smtp_host and addresses:
            try:
                send_mail(self.settings, addresses, subject=subject, body=body,
                          delivery_id=delivery_id, reached=reached)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"email: {type(exc).__name__}")
        if errors:
            raise DeliveryFailed("; ".join(errors), reached=reached)
        return reached

    def _send_quietly(self, kind: str, request: dict, recipients: list[str]) -> None:
        try:
            self.send(kind, request, recipients=recipients)
        except Exception as exc:  # noqa: BLE001 -- a notification must never break the caller
            _warn(kind.removeprefix("request."), request, exc)

    def service_notice(self, *, subject: str, text: str, recipients: list[str]) -> dict:
        """Send an operational notice (e.g. "service started"); raise when a channel fails.

        Unlike request notifications, the caller wants to know: a start-up task audits it.
        """
        sent, errors = {}, []
        if self.settings.notify_webhook_url:
            try:
                status = post_chat(self.settings, slack_escape(clean(text)))
            except requests.RequestException as exc:
                errors.append(f"webhook failed: {type(exc).__name__}")
            else:
                if 200 <= status < 300:
                    sent["webhook"] = status
                else:
                    errors.append(f"webhook answered HTTP {status}")
        addresses = valid_recipients(recipients)
        if self.settings.smtp_host and addresses:
            try:
                send_mail(self.settings, addresses, subject=f"{SUBJECT_PREFIX} {clean(subject)}",
                          body=clean(text, limit=MAX_JUSTIFICATION) + "\n")
            except (OSError, smtplib.SMTPException) as exc:
                errors.append(f"email failed: {type(exc).__name__}")
            else:
                sent["email"] = len(addresses)
        if errors:
            raise NotificationError("; ".join(errors))
        if not sent:
            raise NotificationError("no notification channel is configured")
        return sent

    def drift_link(self) -> str:
        """Return the API address of the drift report."""
        return f"{self.settings.public_base_url.rstrip('/')}/v1/admin/drift"

    def link(self, request: dict) -> str:
        """Return the API address of the request."""
        base = self.settings.public_base_url.rstrip("/")
        return f"{base}/v1/requests/{quote(str(request.get('id', '')), safe='')}"

    def portal_link(self, request: dict) -> str:
        """Return the portal page of the request, where its holder can extend it."""
        base = self.settings.public_base_url.rstrip("/")
        return f"{base}/portal/requests/{quote(str(request.get('id', '')), safe='')}"


def _warn(channel: str, request: dict, exc: Exception) -> None:
    # The class name only: messages of SMTP and HTTP errors can echo addresses or credentials.
    request_id = request.get("id") if isinstance(request, dict) else None
    # DeliveryFailed's own text is made of channel names and error classes only.
    reason = str(exc) if isinstance(exc, DeliveryFailed) else type(exc).__name__
    log.warning("notification %s for request %s failed: %s", channel, clean(request_id) or "?",
                reason)
