"""Tell people about requests: a Slack-compatible webhook and email over SMTP.

Request notifications come from the outbox (outbox_delivery): `send` raises DeliveryFailed so
the row is tried again later. Errors name the error class only, never a URL or credential.
"""
from __future__ import annotations

import hashlib
import logging
import re
import smtplib
import ssl
import unicodedata
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import quote

import requests

from .settings import Settings

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "[Security API]"
MAX_FIELD = 200
MAX_JUSTIFICATION = 1000
# Bidirectional overrides can make a subject read differently from what it says.
BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
WHITESPACE_RUNS = re.compile(r"\s+")
# The outbox row's id: the same on every retry of one notification (see README, Notifications).
DELIVERY_HEADER = "X-Security-API-Delivery"
PENDING, DECIDED = "request.pending", "request.decided"
STATUS_WORDS = {"active": "approved", "denied": "denied", "failed": "approved, but provisioning failed",
                "cancelled": "cancelled", "revoked": "revoked", "expired": "expired"}


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
        subject, body, chat = _texts(kind, request, link=self.link(request))
        reached, errors = set(done), []
        if self.settings.notify_webhook_url and "webhook" not in reached:
            try:
                status = self._post_chat(chat, delivery_id=delivery_id)
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
                self._send_mail(addresses, subject=subject, body=body, delivery_id=delivery_id,
                                reached=reached)
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
                status = self._post_chat(slack_escape(clean(text)))
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
                self._send_mail(addresses, subject=f"{SUBJECT_PREFIX} {clean(subject)}",
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

    def link(self, request: dict) -> str:
        """Return the API address of the request."""
        base = self.settings.public_base_url.rstrip("/")
        return f"{base}/v1/requests/{quote(str(request.get('id', '')), safe='')}"

    def _post_chat(self, text: str, *, delivery_id: str | None = None) -> int:
        headers = {DELIVERY_HEADER: delivery_id} if delivery_id else {}
        with requests.post(self.settings.notify_webhook_url, json={"text": text}, headers=headers,
                           timeout=self.settings.provisioner_timeout_seconds,
                           allow_redirects=False, stream=True) as response:
            if not 200 <= response.status_code < 300:
                log.warning("notification webhook answered HTTP %s", response.status_code)
            return response.status_code

    def _send_mail(self, recipients: list[str], *, subject: str, body: str,
                   delivery_id: str | None = None, reached: set[str] | None = None) -> None:
        settings = self.settings
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port,
                          timeout=settings.provisioner_timeout_seconds) as smtp:
            if settings.smtp_starttls:
                # smtplib's own default context checks no certificate: anyone on the path
                # could read the password. The default context verifies chain and host name.
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password)
            # One message per recipient: approvers do not learn each other's addresses,
            # and one refused address does not stop the others.
            for recipient in recipients:
                message = build_message(sender=settings.smtp_from, recipient=recipient,
                                        subject=subject, body=body, delivery_id=delivery_id)
                try:
                    smtp.send_message(message)
                except smtplib.SMTPRecipientsRefused:
                    # Refused for good (no such mailbox): trying again would not help.
                    log.warning("mail server refused a notification recipient")
                if reached is not None:
                    reached.add(f"email:{recipient}")


def build_message(*, sender: str, recipient: str, subject: str, body: str,
                  delivery_id: str | None = None) -> EmailMessage:
    """Build one plain-text email; header values are already single-line.

    With a delivery id, the Message-ID is derived from it and the recipient: a message sent
    again after a crash carries the same Message-ID, so a mail system can drop the duplicate.
    """
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    domain = sender.rpartition("@")[2] or None
    if delivery_id:
        per_recipient = hashlib.sha256(recipient.encode()).hexdigest()[:16]
        message["Message-ID"] = f"<{delivery_id}.{per_recipient}@{domain or 'security-api'}>"
        message[DELIVERY_HEADER] = delivery_id
    else:
        message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(body)
    return message


def valid_recipients(addresses: list[str] | None) -> list[str]:
    """Drop empty, duplicate and malformed addresses, keeping order."""
    seen: dict[str, None] = {}
    for address in addresses or []:
        if not isinstance(address, str):
            continue
        address = address.strip()
        # Control characters or spaces in an address could smuggle SMTP commands or headers.
        if address.count("@") != 1 or any(ch.isspace() or ord(ch) < 32 for ch in address):
            continue
        seen.setdefault(address, None)
    return list(seen)


def clean(value, *, limit: int = MAX_FIELD) -> str:
    """Make user text one line: control characters become spaces, runs collapse, length capped."""
    text = "" if value is None else str(value)
    text = "".join(" " if _is_control(ch) else ch for ch in text)
    text = WHITESPACE_RUNS.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_escape(text: str) -> str:
    """Escape the three characters Slack treats as markup (mentions, links)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def pending_subject(request: dict) -> str:
    """Return e.g. '[Security API] alice requests vpn'."""
    return f"{SUBJECT_PREFIX} {_requester(request)} requests {clean(request.get('permission'))}"


def decided_subject(request: dict) -> str:
    """Return e.g. '[Security API] alice's request for vpn: approved'."""
    return (f"{SUBJECT_PREFIX} {_requester(request)}'s request for "
            f"{clean(request.get('permission'))}: {_status_word(request)}")


def pending_body(request: dict, *, link: str) -> str:
    """Return the plain-text email for approvers."""
    return "\n".join([
        f"{_requester(request)} requests {clean(request.get('permission'))} "
        f"for {clean(request.get('duration_minutes'))} minutes.",
        "",
        f"Justification: {_justification(request)}",
        f"Status: {clean(request.get('status'))}",
        "",
        f"Review it: {link}",
    ]) + "\n"


def decided_body(request: dict, *, link: str) -> str:
    """Return the plain-text email for the requester."""
    lines = [f"Your request for {clean(request.get('permission'))} is {_status_word(request)}.", ""]
    lines += [f"{name} decided: {word}" + (f" ({comment})" if comment else "")
              for name, word, comment in _decisions(request)]
    if request.get("expires_at"):
        lines.append(f"Access ends at {clean(request['expires_at'])}.")
    lines += [f"Justification: {_justification(request)}", "", f"Details: {link}"]
    return "\n".join(lines) + "\n"


def pending_chat(request: dict, *, link: str) -> str:
    """Return the Slack text for a new pending request."""
    return (f"*Access request pending*: {slack_escape(_requester(request))} requests "
            f"`{slack_escape(clean(request.get('permission')))}` for "
            f"{slack_escape(clean(request.get('duration_minutes')))} minutes\n"
            f"Justification: {slack_escape(_justification(request))}\n"
            f"<{link}|Review request>")


def decided_chat(request: dict, *, link: str) -> str:
    """Return the Slack text for a decided request."""
    deciders = ", ".join(f"{name} ({word})" for name, word, _ in _decisions(request))
    return (f"*Access request {slack_escape(_status_word(request))}*: "
            f"{slack_escape(_requester(request))} for "
            f"`{slack_escape(clean(request.get('permission')))}`"
            + (f" by {slack_escape(deciders)}" if deciders else "")
            + f"\nJustification: {slack_escape(_justification(request))}\n<{link}|View request>")


def _texts(kind: str, request: dict, *, link: str) -> tuple[str, str, str]:
    """Return (mail subject, mail body, chat text) of one notification kind."""
    if kind == PENDING:
        return (pending_subject(request), pending_body(request, link=link),
                pending_chat(request, link=link))
    return (decided_subject(request), decided_body(request, link=link),
            decided_chat(request, link=link))


def _requester(request: dict) -> str:
    requester = request.get("requester")
    if isinstance(requester, dict):
        requester = requester.get("username")
    return clean(requester) or "someone"


def _justification(request: dict) -> str:
    return clean(request.get("justification"), limit=MAX_JUSTIFICATION) or "(none)"


def _status_word(request: dict) -> str:
    status = clean(request.get("status"))
    return STATUS_WORDS.get(status, status)


def _decisions(request: dict) -> list[tuple[str, str, str]]:
    """Return (approver, decision, comment) for each approval, all cleaned."""
    approvals = request.get("approvals") or []
    return [(clean(a.get("approver")) or "someone", clean(a.get("decision")),
             clean(a.get("comment"), limit=MAX_JUSTIFICATION))
            for a in approvals if isinstance(a, dict)]


def _is_control(ch: str) -> bool:
    # Cc: C0/C1 controls (CR, LF, NUL...); Zl/Zp: Unicode line and paragraph separators.
    return unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in BIDI_CONTROLS


def _warn(channel: str, request: dict, exc: Exception) -> None:
    # The class name only: messages of SMTP and HTTP errors can echo addresses or credentials.
    request_id = request.get("id") if isinstance(request, dict) else None
    # DeliveryFailed's own text is made of channel names and error classes only.
    reason = str(exc) if isinstance(exc, DeliveryFailed) else type(exc).__name__
    log.warning("notification %s for request %s failed: %s", channel, clean(request_id) or "?",
                reason)
