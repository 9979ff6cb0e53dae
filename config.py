"""Settings from the environment: the only place configuration is read.

The Settings type belongs to the domain (security_api.settings); this module builds and validates
one from the environment and hands it in.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import fields, replace
from pathlib import Path

# Settings lives in the domain (which never imports this module); re-exported as config.Settings.
from security_api.settings import Settings

ENVIRONMENTS = ("development", "testing", "production")
INSTANCE_DIR = Path(__file__).resolve().parent / "instance"
MIN_SECRET_BYTES = 32
# Values people paste from examples; refused even when long enough.
KNOWN_WEAK_SECRETS = {
    "changeme", "secret", "jwt_secret", "your-secret-key", "please-change-me",
}


class ConfigError(RuntimeError):
    """Raised when the service must not start with the given settings."""


# Environment variable -> (field name, parser). Documented one by one in README.
def _int(value: str) -> int:
    return int(value.strip())


def _float(value: str) -> float:
    parsed = float(value.strip())
    if parsed != parsed or parsed in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return parsed


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _origins(value: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in value.split(",") if o.strip())


ENV_VARIABLES = {
    "SECURITY_API_ENV": ("env", str),
    "DATABASE_URL": ("database_url", str),
    "REDIS_URL": ("redis_url", str),
    "REDIS_PREFIX": ("redis_prefix", str),
    "DATABASE_QUERY_TIMEOUT_SECONDS": ("database_query_timeout_seconds", _int),
    "JWT_SECRET": ("jwt_secret", str),
    "JWT_ALGORITHM": ("jwt_algorithm", str),
    "JWT_PRIVATE_KEY": ("jwt_private_key", str),
    "JWT_KEY_ID": ("jwt_key_id", str),
    "JWT_ISSUER": ("jwt_issuer", str),
    "JWT_AUDIENCE": ("jwt_audience", str),
    "DATA_ENCRYPTION_KEYS": ("data_encryption_keys", _origins),
    "AUDIT_CHAIN_KEY": ("audit_chain_keys", _origins),
    "JWT_LEEWAY_SECONDS": ("jwt_leeway_seconds", _int),
    "ACCESS_TOKEN_TTL_SECONDS": ("access_token_ttl_seconds", _int),
    "REFRESH_TOKEN_TTL_SECONDS": ("refresh_token_ttl_seconds", _int),
    "REFRESH_FAMILY_MAX_SECONDS": ("refresh_family_max_seconds", _int),
    "BCRYPT_ROUNDS": ("bcrypt_rounds", _int),
    "LOCKOUT_THRESHOLD": ("lockout_threshold", _int),
    "LOCKOUT_SECONDS": ("lockout_seconds", _int),
    "AUTH_RATE_LIMIT": ("auth_rate_limit", _int),
    "AUTH_RATE_WINDOW_SECONDS": ("auth_rate_window_seconds", _int),
    "MAX_BODY_BYTES": ("max_body_bytes", _int),
    "TOTP_ISSUER": ("totp_issuer", str),
    "CORS_ORIGINS": ("cors_origins", _origins),
    "LOG_LEVEL": ("log_level", str),
    "LOG_FORMAT": ("log_format", str),
    "METRICS_ENABLED": ("metrics_enabled", _bool),
    "METRICS_TOKEN": ("metrics_token", str),
    "PROVISIONER_TIMEOUT_SECONDS": ("provisioner_timeout_seconds", _int),
    "WEBHOOK_SIGNING_SECRET": ("webhook_signing_secret", str),
    "AWS_REGION": ("aws_region", str),
    "AWS_ENDPOINT_URL": ("aws_endpoint_url", str),
    "NOTIFY_WEBHOOK_URL": ("notify_webhook_url", str),
    "SMTP_HOST": ("smtp_host", str),
    "SMTP_PORT": ("smtp_port", _int),
    "SMTP_USERNAME": ("smtp_username", str),
    "SMTP_PASSWORD": ("smtp_password", str),
    "SMTP_FROM": ("smtp_from", str),
    "SMTP_STARTTLS": ("smtp_starttls", _bool),
    "PUBLIC_BASE_URL": ("public_base_url", str),
    "REAPER_INTERVAL_SECONDS": ("reaper_interval_seconds", _int),
    "AUDIT_SEAL_INTERVAL_SECONDS": ("audit_seal_interval_seconds", _float),
    "DRIFT_INTERVAL_SECONDS": ("drift_interval_seconds", _int),
    "EXPIRY_WARNING_MINUTES": ("expiry_warning_minutes", _int),
    "TRUSTED_PROXY_COUNT": ("trusted_proxy_count", _int),
    "STARTUP_TASKS": ("startup_tasks", _origins),
    "INSTANCE_ADDRESS": ("instance_address", str),
    "INSTANCE_METADATA_URL": ("instance_metadata_url", str),
    "STARTUP_SECURITY_GROUP_ID": ("startup_security_group_id", str),
    "STARTUP_SECURITY_GROUP_PORTS": ("startup_security_group_ports", str),
    "STARTUP_NOTIFY_EMAILS": ("startup_notify_emails", _origins),
    "SLACK_BOT_TOKEN": ("slack_bot_token", str),
    "SLACK_CHANNEL": ("slack_channel", str),
    "SLACK_SIGNING_SECRET": ("slack_signing_secret", str),
    "SLACK_API_URL": ("slack_api_url", str),
    "SECURITY_TEAM_EMAIL": ("security_team_emails", _origins),
}
MAX_TRUSTED_PROXIES = 5


def load_settings(environ: dict[str, str] | None = None, **overrides) -> Settings:
    """Build validated settings from the environment, then explicit overrides."""
    environ = os.environ if environ is None else environ
    values = {}
    for variable, (name, parse) in ENV_VARIABLES.items():
        raw = environ.get(variable)
        if raw is None or raw == "":
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{variable} is not valid: {exc}") from None
    known = {f.name for f in fields(Settings)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown settings: {sorted(unknown)}")
    values.update(overrides)
    settings = Settings(**values)
    settings = _fill_defaults(settings)
    validate(settings)
    return settings


def _fill_defaults(settings: Settings) -> Settings:
    """Give development a working database and secret; production gets none."""
    changes = {}
    if not settings.log_format:
        changes["log_format"] = "text" if settings.env == "development" else "json"
    if not settings.database_url and not settings.is_production:
        INSTANCE_DIR.mkdir(exist_ok=True)
        changes["database_url"] = f"sqlite:///{INSTANCE_DIR / 'security_api.sqlite3'}"
    if not settings.jwt_secret and settings.jwt_algorithm == "HS256":
        if settings.env == "development":
            changes["jwt_secret"] = _development_secret()
        elif settings.env == "testing":
            changes["jwt_secret"] = secrets.token_urlsafe(48)
    if not settings.data_encryption_keys and settings.env != "production":
        from security_api.accounts.secretbox import derived_key
        material = changes.get("jwt_secret") or settings.jwt_secret or settings.jwt_private_key
        if material:
            changes["data_encryption_keys"] = (derived_key(material),)
    if not settings.audit_chain_keys:
        if settings.env == "development":
            changes["audit_chain_keys"] = (_development_secret("audit-chain-key"),)
        elif settings.env == "testing":
            # Derived from the JWT key material, random per process when that is: processes
            # given one JWT_SECRET (a gunicorn's workers, its CLI) share one chain key too.
            material = changes.get("jwt_secret") or settings.jwt_secret or settings.jwt_private_key
            changes["audit_chain_keys"] = (_derived_secret(material, "audit chain key")
                                           if material else secrets.token_urlsafe(48),)
    return replace(settings, **changes) if changes else settings


def _derived_secret(material: str, purpose: str) -> str:
    return hmac.new(material.encode("utf-8"), purpose.encode("ascii"), hashlib.sha256).hexdigest()


def _development_secret(name: str = "jwt-secret") -> str:
    """Keep one random secret per checkout so every local worker signs alike."""
    INSTANCE_DIR.mkdir(exist_ok=True)
    path = INSTANCE_DIR / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def validate(settings: Settings) -> None:
    """Refuse settings that would make the service unsafe or broken."""
    if settings.env not in ENVIRONMENTS:
        raise ConfigError(f"SECURITY_API_ENV must be one of {ENVIRONMENTS}")
    if not settings.database_url:
        # A silent per-instance SQLite file would split state across instances.
        raise ConfigError("DATABASE_URL is required in production (PostgreSQL)")
    if settings.jwt_algorithm not in ("HS256", "EdDSA"):
        raise ConfigError("JWT_ALGORITHM must be HS256 or EdDSA")
    if settings.jwt_algorithm == "HS256":
        _check_secret(settings.jwt_secret)
    else:
        if not settings.jwt_private_key or not settings.jwt_key_id:
            raise ConfigError("EdDSA needs JWT_PRIVATE_KEY (PEM) and JWT_KEY_ID")
    _check_encryption_keys(settings)
    _check_audit_chain_keys(settings)
    if not 0 <= settings.jwt_leeway_seconds <= 30:
        raise ConfigError("JWT_LEEWAY_SECONDS must be between 0 and 30")
    if not 4 <= settings.bcrypt_rounds <= 16:
        raise ConfigError("BCRYPT_ROUNDS must be between 4 and 16")
    if settings.is_production and settings.bcrypt_rounds < 12:
        raise ConfigError("production needs BCRYPT_ROUNDS of at least 12")
    for name in ("access_token_ttl_seconds", "refresh_token_ttl_seconds",
                 "refresh_family_max_seconds",
                 "lockout_threshold", "lockout_seconds", "auth_rate_limit",
                 "auth_rate_window_seconds", "max_body_bytes", "provisioner_timeout_seconds",
                 "database_query_timeout_seconds"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{name.upper()} must be positive")
    if settings.reaper_interval_seconds < 0:
        raise ConfigError("REAPER_INTERVAL_SECONDS must be 0 (off) or positive")
    if not 0 < settings.audit_seal_interval_seconds <= 3600:
        raise ConfigError("AUDIT_SEAL_INTERVAL_SECONDS must be positive (at most 3600)")
    if settings.drift_interval_seconds < 0:
        raise ConfigError("DRIFT_INTERVAL_SECONDS must be 0 (off) or positive")
    if not 0 <= settings.expiry_warning_minutes <= 525600:
        raise ConfigError("EXPIRY_WARNING_MINUTES must be 0 (off) or between 1 and 525600")
    if settings.webhook_signing_secret and len(settings.webhook_signing_secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"WEBHOOK_SIGNING_SECRET must be at least {MIN_SECRET_BYTES} bytes")
    if settings.is_production and settings.smtp_username and not settings.smtp_starttls:
        raise ConfigError("SMTP_USERNAME without SMTP_STARTTLS would send the password in clear")
    _check_observability(settings)
    if settings.access_token_ttl_seconds > 3600:
        raise ConfigError("ACCESS_TOKEN_TTL_SECONDS must be at most 3600 (short-lived tokens)")
    _check_deployment(settings)
    _check_slack(settings)


def _check_slack(settings: Settings) -> None:
    # Whoever knows the signing secret can approve as any mapped Slack user: never a weak one.
    if settings.slack_signing_secret:
        _check_secret(settings.slack_signing_secret, "SLACK_SIGNING_SECRET")
    if not settings.slack_bot_token:
        return
    if not settings.slack_channel:
        raise ConfigError("SLACK_BOT_TOKEN needs SLACK_CHANNEL (the channel id to post to)")
    if settings.is_production and not settings.slack_signing_secret:
        raise ConfigError("SLACK_BOT_TOKEN in production needs SLACK_SIGNING_SECRET (from the "
                          "Slack app's Basic Information page)")
    if settings.is_production and not settings.slack_api_url.startswith("https://"):
        # The bot token travels in every call: never in clear.
        raise ConfigError("SLACK_API_URL must be https:// in production")


def _check_deployment(settings: Settings) -> None:
    # Trusting more proxies than stand in front would let a client choose its own address.
    if not 0 <= settings.trusted_proxy_count <= MAX_TRUSTED_PROXIES:
        raise ConfigError(f"TRUSTED_PROXY_COUNT must be between 0 and {MAX_TRUSTED_PROXIES} "
                          "(the number of proxies in front of the service; 0 = none)")
    from security_api.startup import check_startup_settings
    try:
        check_startup_settings(settings)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_observability(settings: Settings) -> None:
    if settings.log_format not in ("json", "text"):
        raise ConfigError("LOG_FORMAT must be json or text")
    if settings.metrics_token and len(settings.metrics_token.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"METRICS_TOKEN must be at least {MIN_SECRET_BYTES} bytes")
    if settings.is_production and settings.metrics_enabled and not settings.metrics_token:
        # Metrics reveal traffic and sign-in failure rates: never to anyone who asks.
        raise ConfigError("METRICS_ENABLED in production needs METRICS_TOKEN (a bearer token "
                          "for the scraper, at least 32 bytes)")


def _check_encryption_keys(settings: Settings) -> None:
    from security_api.accounts.secretbox import is_valid_key

    if not settings.data_encryption_keys:
        raise ConfigError("DATA_ENCRYPTION_KEYS is required: comma-separated Fernet keys, "
                          "e.g. `python -c 'from cryptography.fernet import Fernet; "
                          "print(Fernet.generate_key().decode())'`")
    for key in settings.data_encryption_keys:
        if not is_valid_key(key):
            raise ConfigError("DATA_ENCRYPTION_KEYS holds a value that is not a Fernet key")


def _check_audit_chain_keys(settings: Settings) -> None:
    # Whoever holds this key can rewrite the audit history unnoticed: never a weak one.
    if not settings.audit_chain_keys:
        raise ConfigError("AUDIT_CHAIN_KEY is required (at least 32 random bytes; "
                          "comma-separated, newest first, to rotate)")
    for key in settings.audit_chain_keys:
        _check_secret(key, "AUDIT_CHAIN_KEY")


def _check_secret(secret: str, name: str = "JWT_SECRET") -> None:
    if not secret:
        raise ConfigError(f"{name} is required (at least 32 random bytes)")
    raw = secret.encode("utf-8")
    if len(raw) < MIN_SECRET_BYTES:
        raise ConfigError(f"{name} must be at least {MIN_SECRET_BYTES} bytes")
    if secret.lower() in KNOWN_WEAK_SECRETS or len(set(raw)) < 8:
        raise ConfigError(f"{name} is too weak: use e.g. "
                          "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
