"""Notifications against a real local SMTP server and a real local HTTP receiver."""
from __future__ import annotations

import logging
import socket
import ssl
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import pytest
from aiosmtpd.smtp import AuthResult

from config import load_settings
from security_api.integrations.notify import Notifier
from security_api.integrations.notify_texts import clean, slack_escape
from tests.mail_server import MailServer
from tests.receivers import serving

JWT_SECRET = "Zq8v3LkP0wX1yT7rN4mB6cD9eF2gH5jK"
SMTP_PASSWORD = "smtp-password-Vq3Lm8Xr"
INJECTION = "need it now\r\nBcc: evil@x\r\n\r\nforged body"


def make_settings(**overrides):
    """Build real, validated settings without the Flask app; no channel unless asked."""
    values = {"jwt_secret": JWT_SECRET, "provisioner_timeout_seconds": 2,
              "smtp_from": "security-api@example.com", "smtp_starttls": False,
              "public_base_url": "https://access.example.com/", **overrides}
    return load_settings({"DATABASE_URL": "sqlite://"}, **values)


def free_port() -> int:
    """Return a port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def a_request(**overrides) -> dict:
    """Return a request as the API renders it."""
    return {"id": "7f0c6f5e-7d1a-4c55-9d7e-2b7f3f1d2a10", "requester": "alice", "permission": "vpn",
            "justification": "on call tonight", "status": "pending", "duration_minutes": 60,
            "expires_at": None, "approvals": [], **overrides}


# ---- a local SMTP server ------------------------------------------------------------------------
class Inbox:
    """aiosmtpd handler: keeps every envelope it is given."""

    def __init__(self):
        self.envelopes = []
        self.logins = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 -- aiosmtpd's hook name
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login, auth_data.password))
        # handled=False: let aiosmtpd answer 535 itself on a wrong password.
        return AuthResult(success=auth_data.password == SMTP_PASSWORD.encode(), handled=False)

    def messages(self):
        return [(e.rcpt_tos, message_from_bytes(e.content, policy=policy.default))
                for e in self.envelopes]


@pytest.fixture
def inbox():
    handler = Inbox()
    controller = MailServer(handler, hostname="127.0.0.1", port=free_port(),
                            authenticator=handler.authenticate, auth_require_tls=False)
    controller.start()
    handler.port = controller.port
    yield handler
    controller.stop()


@pytest.fixture
def receiver():
    with serving("/services/T000/B000/xyz") as server:
        yield server


@pytest.fixture
def notifier(inbox, receiver):
    return Notifier(make_settings(smtp_host="127.0.0.1", smtp_port=inbox.port,
                                  notify_webhook_url=receiver.url))


# ---- pending ------------------------------------------------------------------------------------
def test_pending_mails_each_approver_once(notifier, inbox):
    notifier.request_pending(a_request(), approver_emails=[
        "bob@example.com", "carol@example.com", "bob@example.com", "", "no-at-sign", None])

    messages = inbox.messages()
    assert [rcpt for rcpt, _ in messages] == [["bob@example.com"], ["carol@example.com"]]
    for rcpt, message in messages:
        # One message per approver: nobody learns the others' addresses.
        assert message["To"] == rcpt[0]
        assert message["From"] == "security-api@example.com"
        assert message["Subject"] == "[Security API] alice requests vpn"
        body = message.get_content()
        assert "alice requests vpn for 60 minutes." in body
        assert "Justification: on call tonight" in body
        assert "https://access.example.com/v1/requests/7f0c6f5e-7d1a-4c55-9d7e-2b7f3f1d2a10" in body


def test_pending_posts_to_the_chat_webhook(notifier, receiver):
    notifier.request_pending(a_request(), approver_emails=[])
    [call] = receiver.received
    assert call["headers"]["Content-Type"] == "application/json"
    text = call["json"]["text"]
    assert set(call["json"]) == {"text"}
    assert "alice" in text and "`vpn`" in text and "on call tonight" in text
    assert ("<https://access.example.com/v1/requests/7f0c6f5e-7d1a-4c55-9d7e-2b7f3f1d2a10"
            "|Review request>") in text


def test_no_recipients_means_no_mail(notifier, inbox, receiver):
    notifier.request_pending(a_request(), approver_emails=[])
    assert inbox.envelopes == []
    assert len(receiver.received) == 1


def test_nothing_configured_sends_nothing(inbox, receiver):
    Notifier(make_settings()).request_pending(a_request(), approver_emails=["bob@example.com"])
    Notifier(make_settings()).request_decided(a_request(status="active"),
                                              requester_email="alice@example.com")
    assert inbox.envelopes == [] and receiver.received == []


# ---- decided ------------------------------------------------------------------------------------
def test_decided_mails_the_requester(notifier, inbox, receiver):
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    request = a_request(status="active", expires_at=expires, approvals=[
        {"approver": "bob", "decision": "approve", "comment": "ok, be careful",
         "at": "2026-11-28T11:00:00Z"}])
    notifier.request_decided(request, requester_email="alice@example.com")

    [(rcpt, message)] = inbox.messages()
    assert rcpt == ["alice@example.com"]
    assert message["Subject"] == "[Security API] alice's request for vpn: approved"
    body = message.get_content()
    assert "Your request for vpn is approved." in body
    assert "bob decided: approve (ok, be careful)" in body
    assert f"Access ends at {expires}." in body
    text = receiver.received[0]["json"]["text"]
    assert "*Access request approved*" in text and "bob (approve)" in text


@pytest.mark.parametrize("status,word", [("denied", "denied"), ("failed", "provisioning failed"),
                                         ("revoked", "revoked")])
def test_decided_subject_names_the_outcome(notifier, inbox, status, word):
    notifier.request_decided(a_request(status=status), requester_email="alice@example.com")
    [(_, message)] = inbox.messages()
    # A long subject is folded onto the next line; the parser keeps the fold's space.
    subject = str(message["Subject"]).strip()
    assert subject.startswith("[Security API] alice's request for vpn: ") and word in subject


def test_decided_without_requester_email_only_posts(notifier, inbox, receiver):
    notifier.request_decided(a_request(status="denied"), requester_email=None)
    assert inbox.envelopes == []
    assert "denied" in receiver.received[0]["json"]["text"]


# ---- hostile user text --------------------------------------------------------------------------
def test_justification_cannot_inject_headers(notifier, inbox):
    notifier.request_pending(a_request(justification=INJECTION, requester="mallory\r\nBcc: evil@x"),
                             approver_emails=["bob@example.com"])

    [(rcpt, message)] = inbox.messages()
    assert rcpt == ["bob@example.com"]
    assert message["Bcc"] is None
    assert message["Subject"] == "[Security API] mallory Bcc: evil@x requests vpn"
    assert "Justification: need it now Bcc: evil@x forged body" in message.get_content()
    raw = inbox.envelopes[0].content
    assert b"\nBcc:" not in raw and b"\r\nforged body" not in raw


def test_chat_text_escapes_slack_markup(notifier, receiver):
    notifier.request_pending(
        a_request(justification="<!channel> & <https://evil.example|click me>",
                  requester="eve<@U123>"),
        approver_emails=[])
    text = receiver.received[0]["json"]["text"]
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click me&gt;" in text
    assert "eve&lt;@U123&gt;" in text
    assert "<!channel>" not in text and "<@U123>" not in text


@pytest.mark.parametrize("raw,expected", [
    ("a\r\nb", "a b"),
    ("a\x00\x1b[31mb", "a [31mb"),
    ("a\u2028b\u2029c\x85d", "a b c d"),
    ("abc\u202egnp.exe", "abc gnp.exe"),
    ("  many   spaces\t\t", "many spaces"),
    (None, ""),
    (60, "60"),
])
def test_clean_makes_one_line(raw, expected):
    assert clean(raw) == expected


def test_clean_caps_length():
    assert clean("x" * 500, limit=10) == "x" * 9 + "…"


def test_slack_escape():
    assert slack_escape("a < b & c > d") == "a &lt; b &amp; c &gt; d"


# ---- failures never reach the caller ------------------------------------------------------------
def test_unreachable_channels_do_not_raise(caplog):
    notifier = Notifier(make_settings(
        smtp_host="127.0.0.1", smtp_port=free_port(), smtp_username="robot",
        smtp_password=SMTP_PASSWORD,
        notify_webhook_url=f"http://127.0.0.1:{free_port()}/hook?token=hook-secret"))
    with caplog.at_level(logging.WARNING, logger="security_api.integrations.notify"):
        notifier.request_pending(a_request(), approver_emails=["bob@example.com"])
        notifier.request_decided(a_request(status="denied"), requester_email="alice@example.com")

    assert "ConnectionError" in caplog.text and "ConnectionRefusedError" in caplog.text
    assert SMTP_PASSWORD not in caplog.text and "hook-secret" not in caplog.text


def test_a_failing_webhook_does_not_stop_the_mail(inbox, receiver, caplog):
    receiver.status = 500
    notifier = Notifier(make_settings(smtp_host="127.0.0.1", smtp_port=inbox.port,
                                      notify_webhook_url=receiver.url))
    with caplog.at_level(logging.WARNING, logger="security_api.integrations.notify"):
        notifier.request_pending(a_request(), approver_emails=["bob@example.com"])
    assert "HTTP 500" in caplog.text
    assert len(inbox.envelopes) == 1


def test_a_malformed_request_does_not_raise(notifier, caplog):
    with caplog.at_level(logging.WARNING, logger="security_api.integrations.notify"):
        notifier.request_pending(None, approver_emails=["bob@example.com"])
        notifier.request_decided({"id": "x", "approvals": ["junk", None]}, requester_email="a@b.c")
    assert "notification pending for request ? failed: AttributeError" in caplog.text


# ---- SMTP authentication and TLS ----------------------------------------------------------------
def test_login_uses_the_configured_credentials(inbox):
    notifier = Notifier(make_settings(smtp_host="127.0.0.1", smtp_port=inbox.port,
                                      smtp_username="robot", smtp_password=SMTP_PASSWORD))
    notifier.request_pending(a_request(), approver_emails=["bob@example.com"])
    assert inbox.logins == [(b"robot", SMTP_PASSWORD.encode())]
    assert len(inbox.envelopes) == 1


def test_wrong_credentials_do_not_raise(inbox, caplog):
    notifier = Notifier(make_settings(smtp_host="127.0.0.1", smtp_port=inbox.port,
                                      smtp_username="robot", smtp_password="wrong-password"))
    with caplog.at_level(logging.WARNING, logger="security_api.integrations.notify"):
        notifier.request_pending(a_request(), approver_emails=["bob@example.com"])
    assert "SMTPAuthenticationError" in caplog.text and "wrong-password" not in caplog.text
    assert inbox.envelopes == []


@pytest.fixture
def untrusted_tls_inbox(tmp_path):
    """An SMTP server offering STARTTLS with a self-signed certificate nobody trusts."""
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = Inbox()
    controller = MailServer(handler, hostname="127.0.0.1", port=free_port(), tls_context=context,
                            authenticator=handler.authenticate)
    controller.start()
    handler.port = controller.port
    yield handler
    controller.stop()


def test_starttls_verifies_the_server_certificate(untrusted_tls_inbox, caplog):
    # smtplib's default STARTTLS checks nothing; a man in the middle must not get the password.
    notifier = Notifier(make_settings(smtp_host="127.0.0.1", smtp_port=untrusted_tls_inbox.port,
                                      smtp_starttls=True, smtp_username="robot",
                                      smtp_password=SMTP_PASSWORD))
    with caplog.at_level(logging.WARNING, logger="security_api.integrations.notify"):
        notifier.request_pending(a_request(), approver_emails=["bob@example.com"])
    assert "SSLCertVerificationError" in caplog.text
    assert untrusted_tls_inbox.logins == [] and untrusted_tls_inbox.envelopes == []


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
