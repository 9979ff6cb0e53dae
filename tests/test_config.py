"""Settings: secure defaults, and production refuses to start unsafe."""
import pytest

from config import ConfigError, load_settings

STRONG = "Zq8v3LkP0wX1yT7rN4mB6cD9eF2gH5jK"
DATA_KEY = "x7Jm3kQ9vR2tY5wZ8aB1cD4eF6gH0iJ2kL3mN5oP7qE="
AUDIT_KEY = "pW4nR8tZ2vB6xD0fH3jL7mQ1sU5yA9cE"


@pytest.mark.parametrize("environ,message", [
    ({"SECURITY_API_ENV": "production"}, "JWT_SECRET is required"),
    ({"SECURITY_API_ENV": "production", "JWT_SECRET": "short-secret"}, "at least 32 bytes"),
    ({"SECURITY_API_ENV": "production", "JWT_SECRET": "a" * 40}, "too weak"),
    ({"SECURITY_API_ENV": "production", "JWT_SECRET": STRONG, "BCRYPT_ROUNDS": "4",
      "DATA_ENCRYPTION_KEYS": DATA_KEY, "AUDIT_CHAIN_KEY": AUDIT_KEY}, "BCRYPT_ROUNDS"),
    ({"SECURITY_API_ENV": "staging"}, "SECURITY_API_ENV"),
    ({"JWT_ALGORITHM": "none"}, "JWT_ALGORITHM"),
    ({"JWT_ALGORITHM": "EdDSA"}, "JWT_PRIVATE_KEY"),
    ({"JWT_LEEWAY_SECONDS": "60"}, "LEEWAY"),
    ({"ACCESS_TOKEN_TTL_SECONDS": "86400"}, "short-lived"),
    ({"LOCKOUT_THRESHOLD": "0"}, "LOCKOUT_THRESHOLD"),
    ({"AUTH_RATE_LIMIT": "many"}, "AUTH_RATE_LIMIT"),
    ({"DATABASE_QUERY_TIMEOUT_SECONDS": "0"}, "DATABASE_QUERY_TIMEOUT_SECONDS"),
    ({"AUDIT_SEAL_INTERVAL_SECONDS": "0"}, "AUDIT_SEAL_INTERVAL_SECONDS"),
    ({"AUDIT_SEAL_INTERVAL_SECONDS": "-1"}, "AUDIT_SEAL_INTERVAL_SECONDS"),
    ({"AUDIT_SEAL_INTERVAL_SECONDS": "nan"}, "AUDIT_SEAL_INTERVAL_SECONDS"),
    ({"AUDIT_SEAL_INTERVAL_SECONDS": "inf"}, "AUDIT_SEAL_INTERVAL_SECONDS"),
    ({"AUDIT_SEAL_INTERVAL_SECONDS": "soon"}, "AUDIT_SEAL_INTERVAL_SECONDS"),
])
def test_unsafe_settings_are_refused(environ, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({"DATABASE_URL": "sqlite://", **environ})


def test_production_starts_with_a_strong_secret():
    settings = load_settings({"SECURITY_API_ENV": "production", "JWT_SECRET": STRONG,
                              "DATABASE_URL": "sqlite://", "DATA_ENCRYPTION_KEYS": DATA_KEY,
                              "AUDIT_CHAIN_KEY": AUDIT_KEY})
    assert settings.is_production and settings.bcrypt_rounds == 12
    assert settings.audit_chain_keys == (AUDIT_KEY,)


def test_production_app_refuses_to_start_without_secret(monkeypatch):
    from flask_api import create_app

    monkeypatch.setenv("SECURITY_API_ENV", "production")
    monkeypatch.delenv("JWT_SECRET", raising=False)
    with pytest.raises(ConfigError):
        create_app()


def test_secrets_stay_out_of_repr():
    settings = load_settings({"DATABASE_URL": "sqlite://", "JWT_SECRET": STRONG,
                              "AUDIT_CHAIN_KEY": AUDIT_KEY})
    assert STRONG not in repr(settings) and AUDIT_KEY not in repr(settings)


def test_defaults_are_the_contract_ones():
    settings = load_settings({"DATABASE_URL": "sqlite://", "JWT_SECRET": STRONG})
    assert (settings.lockout_threshold, settings.lockout_seconds) == (5, 900)
    assert settings.jwt_algorithm == "HS256" and settings.cors_origins == ()
    assert settings.access_token_ttl_seconds <= 900


def test_production_needs_an_explicit_database_url():
    with pytest.raises(ConfigError, match="DATABASE_URL is required in production"):
        load_settings({"SECURITY_API_ENV": "production", "JWT_SECRET": STRONG,
                       "DATA_ENCRYPTION_KEYS": DATA_KEY})


def test_production_needs_data_encryption_keys():
    base = {"SECURITY_API_ENV": "production", "JWT_SECRET": STRONG, "DATABASE_URL": "sqlite://"}
    with pytest.raises(ConfigError, match="DATA_ENCRYPTION_KEYS is required"):
        load_settings(base)
    with pytest.raises(ConfigError, match="not a Fernet key"):
        load_settings({**base, "DATA_ENCRYPTION_KEYS": "not-a-key"})


def test_production_needs_a_strong_audit_chain_key():
    base = {"SECURITY_API_ENV": "production", "JWT_SECRET": STRONG, "DATABASE_URL": "sqlite://",
            "DATA_ENCRYPTION_KEYS": DATA_KEY}
    with pytest.raises(ConfigError, match="AUDIT_CHAIN_KEY is required"):
        load_settings(base)
    with pytest.raises(ConfigError, match="AUDIT_CHAIN_KEY must be at least 32 bytes"):
        load_settings({**base, "AUDIT_CHAIN_KEY": "short-audit-key"})
    with pytest.raises(ConfigError, match="AUDIT_CHAIN_KEY is too weak"):
        load_settings({**base, "AUDIT_CHAIN_KEY": "b" * 48})
    # Rotation: every listed key must be strong, not only the one that signs.
    with pytest.raises(ConfigError, match="AUDIT_CHAIN_KEY must be at least 32 bytes"):
        load_settings({**base, "AUDIT_CHAIN_KEY": f"{AUDIT_KEY},old"})
    rotated = load_settings({**base, "AUDIT_CHAIN_KEY": f"{AUDIT_KEY},{STRONG}"})
    assert rotated.audit_chain_keys == (AUDIT_KEY, STRONG)


def test_production_app_refuses_to_start_without_an_audit_chain_key(monkeypatch):
    from flask_api import create_app

    for name, value in {"SECURITY_API_ENV": "production", "JWT_SECRET": STRONG,
                        "DATABASE_URL": "sqlite://", "DATA_ENCRYPTION_KEYS": DATA_KEY}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AUDIT_CHAIN_KEY", raising=False)
    with pytest.raises(ConfigError, match="AUDIT_CHAIN_KEY"):
        create_app()


def test_testing_derives_the_audit_chain_key_from_the_jwt_secret():
    """Processes given one JWT_SECRET (a gunicorn's workers, its CLI) share one chain key."""
    first = load_settings({"SECURITY_API_ENV": "testing", "DATABASE_URL": "sqlite://",
                           "JWT_SECRET": STRONG})
    second = load_settings({"SECURITY_API_ENV": "testing", "DATABASE_URL": "sqlite://",
                            "JWT_SECRET": STRONG})
    assert first.audit_chain_keys == second.audit_chain_keys
    assert first.audit_chain_keys[0] != STRONG


def test_the_audit_seal_interval_takes_fractions_of_a_second():
    assert load_settings({"DATABASE_URL": "sqlite://"}).audit_seal_interval_seconds == 1.0
    assert load_settings({"DATABASE_URL": "sqlite://",
                          "AUDIT_SEAL_INTERVAL_SECONDS": "0.25"}).audit_seal_interval_seconds == 0.25
