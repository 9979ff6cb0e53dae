"""The two delivery channels of a notification: a Slack-compatible webhook and email over SMTP.

Apart from Notifier (notify.py), which decides what goes where and what a failure means:
here only how one message reaches one channel. Errors are left to the caller.
"""
from __future__ import annotations

import hashlib
import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import requests

from security_api.settings import Settings

log = logging.getLogger(__name__)

# The outbox row's id: the same on every retry of one notification (see README, Notifications).
DELIVERY_HEADER = "X-Security-API-Delivery"


def post_chat(settings: Settings, text: str, *, delivery_id: str | None = None) -> int:
    """Post one chat message to the webhook; return its HTTP status (logged when not 2xx)."""
    headers = {DELIVERY_HEADER: delivery_id} if delivery_id else {}
    with requests.post(settings.notify_webhook_url, json={"text": text}, headers=headers,
                       timeout=settings.provisioner_timeout_seconds,
                       allow_redirects=False, stream=True) as response:
        if not 200 <= response.status_code < 300:
            log.warning("notification webhook answered HTTP %s", response.status_code)
        return response.status_code


def send_mail(settings: Settings, recipients: list[str], *, subject: str, body: str,
              delivery_id: str | None = None, reached: set[str] | None = None) -> None:
    """Send one message per recipient; add "email:<address>" to `reached` for each one done.

    Done means sent or refused for good by the server: a retry of the notification skips both.
    """
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
