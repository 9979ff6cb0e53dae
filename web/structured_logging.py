"""Log output: one JSON object (or one text line) per record, with the request id, secrets scrubbed.

The application never logs a secret on purpose; the redaction filter is the second line of
defence for a message or exception text that would quote one by accident.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime

from flask import g, has_request_context
from gunicorn import glogging

REDACTED = "[REDACTED]"
# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}
# Names of fields that hold a credential (matched as whole words).
_SECRET_FIELDS = "|".join((
    "password", "new_password", "current_password", "passwd", "secret", "totp_secret", "token",
    "access_token", "refresh_token", "id_token", "totp", "totp_code", "code", "recovery_code",
    "recovery_codes", "authorization", "api_key", "cookie"))
_KEY_VALUE = re.compile(r"""(?i)(["']?\b(?:""" + _SECRET_FIELDS
                        + r""")\b["']?\s*[:=]\s*)("[^"]*"|'[^']*'|[^\s,&;}\]]+)""")
_REDACTIONS = (
    # Authorization header values, wherever they are quoted.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    # Anything shaped like a JWT.
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    # TOTP provisioning URIs carry the seed.
    (re.compile(r"(?i)otpauth://\S+"), REDACTED),
    # key=value, key: value, "key": "value" for keys that name a secret.
    (_KEY_VALUE, r"\1" + REDACTED),
)


def redact(text: str) -> str:
    """Replace whatever looks like a credential in `text`."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class RedactionFilter(logging.Filter):
    """Scrub the rendered message, string extras and exception text of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        for name, value in list(vars(record).items()):
            if name not in _RECORD_ATTRIBUTES and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class RequestIdFilter(logging.Filter):
    """Stamp records made while serving a request with that request's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = g.get("request_id") if has_request_context() else None
        return True


def _extras(record: logging.LogRecord) -> dict:
    return {name: value for name, value in vars(record).items()
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, request_id, then extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", None):
            entry["request_id"] = record.request_id
        entry.update(_extras(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """A readable line for development: time, level, logger, request id, message, extras."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = getattr(record, "request_id", None) or "-"
        line = super().format(record)
        extras = " ".join(f"{name}={value}" for name, value in _extras(record).items())
        return f"{line} {extras}" if extras else line


class _CurrentStderrHandler(logging.StreamHandler):
    """Write to whatever sys.stderr is when a record comes (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def make_handler(log_format: str, stream=None) -> logging.Handler:
    """Build a handler with the request id, the redaction filter and the chosen formatter."""
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderrHandler()
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactionFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure_logging(*, log_format: str, level: str) -> None:
    """Send every record of this process through one handler of ours on the root logger."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "security_api", False)]:
        root.removeHandler(handler)
    handler = make_handler(log_format)
    handler.security_api = True
    root.addHandler(handler)
    root.setLevel(level)


def log_format_from_environment() -> str:
    """The LOG_FORMAT the application will use, for processes that load no settings (gunicorn's master)."""
    chosen = os.environ.get("LOG_FORMAT", "").strip().lower()
    if chosen:
        return chosen
    return "text" if os.environ.get("SECURITY_API_ENV", "development") == "development" else "json"


class GunicornLogger(glogging.Logger):
    """gunicorn's own error log in the application's format (its access log stays as configured)."""

    def setup(self, cfg):
        super().setup(cfg)
        if log_format_from_environment() == "json":
            for handler in self.error_log.handlers:
                handler.addFilter(RedactionFilter())
                handler.setFormatter(JsonFormatter())
