"""What the domain needs to know about its deployment, as one immutable value.

The domain receives a ready-made Settings and never reads the environment: config.py (outside
the domain) parses and validates the environment and hands the result in, so the domain can be
driven by tests, the CLI or another front without importing the application's configuration.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    """Every tunable of the service, with secure defaults."""

    env: str = "development"
    database_url: str = ""
    redis_url: str | None = None
    redis_prefix: str = "security-api:"
    # PostgreSQL: a statement ends after this long; a silent server is given 5 s more.
    database_query_timeout_seconds: int = 10
    jwt_secret: str = field(default="", repr=False)
    jwt_algorithm: str = "HS256"
    jwt_private_key: str = field(default="", repr=False)
    jwt_key_id: str = ""
    jwt_issuer: str = "security-api"
    jwt_audience: str = "security-api"
    data_encryption_keys: tuple[str, ...] = field(default=(), repr=False)
    # HMAC keys of the audit chain, newest first: the first signs, all verify (rotation).
    audit_chain_keys: tuple[str, ...] = field(default=(), repr=False)
    jwt_leeway_seconds: int = 10
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 28800
    # A sign-in's refresh family ends this long after the sign-in, however often it rotates.
    refresh_family_max_seconds: int = 604800
    bcrypt_rounds: int = 12
    lockout_threshold: int = 5
    lockout_seconds: int = 900
    auth_rate_limit: int = 30
    auth_rate_window_seconds: int = 60
    max_body_bytes: int = 64 * 1024
    totp_issuer: str = "Security API"
    cors_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    # Observability: "json" or "text" logs ("" = text in development, json elsewhere); /metrics.
    log_format: str = ""
    metrics_enabled: bool = False
    metrics_token: str = field(default="", repr=False)
    # Access requests: provisioners, notifications, expiry.
    provisioner_timeout_seconds: int = 5
    webhook_signing_secret: str = field(default="", repr=False)
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    notify_webhook_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str = field(default="", repr=False)
    smtp_from: str = "security-api@localhost"
    smtp_starttls: bool = True
    public_base_url: str = "http://127.0.0.1:16381"
    reaper_interval_seconds: int = 60
    # auditseal: each worker's sequencer also seals what other processes left this often.
    audit_seal_interval_seconds: float = 1.0
    # A drift scan (access/drift.py) from the reaper at most this often, cluster-wide; 0: never.
    drift_interval_seconds: int = 3600
    # pendingexp: warn a grant's holder this long before it ends (0: no warnings).
    expiry_warning_minutes: int = 15
    # Deployment: proxies in front of the service, and tasks run once per instance at start.
    trusted_proxy_count: int = 0
    startup_tasks: tuple[str, ...] = ()
    instance_address: str = "imds:local-ipv4"
    instance_metadata_url: str = "http://169.254.169.254"
    startup_security_group_id: str = ""
    startup_security_group_ports: str = ""
    startup_notify_emails: tuple[str, ...] = ()
    # Approvals from Slack: posting needs the bot token and channel; the interactions
    # route needs the signing secret (see README, "Slack approvals").
    slack_bot_token: str = field(default="", repr=False)
    slack_channel: str = ""
    slack_signing_secret: str = field(default="", repr=False)
    slack_api_url: str = "https://slack.com/api"
    # Told at once of every break-glass use (besides the rule's reviewers and the security role).
    security_team_emails: tuple[str, ...] = ()

    @property
    def is_production(self) -> bool:
        """Tell whether production rules apply."""
        return self.env == "production"

    @property
    def slack_posting(self) -> bool:
        """Tell whether pending requests are posted to Slack (bot token and channel set)."""
        return bool(self.slack_bot_token and self.slack_channel)
