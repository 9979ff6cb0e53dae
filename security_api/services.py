"""The long-lived collaborators of the domain, built once per process."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from security_api.access.holdings import HoldingReader
from security_api.accounts.passwords import dummy_hash
from security_api.accounts.principal_cache import AUTH_VERSIONS_INFO, AuthVersions, PrincipalSource
from security_api.accounts.principal_query import principal_reader
from security_api.accounts.secretbox import SecretBox
from security_api.accounts.stores import StateStore, make_store
from security_api.accounts.tokens import SigningKeys, TokenAudience, TokenVerifier, eddsa_keys, hs256_keys
from security_api.audit import KEYS_INFO, SEALER_INFO, ChainKeys, Sealer
from security_api.db import ReadOnlyQuery, make_engine, make_session_factory
from security_api.integrations.notify import Notifier
from security_api.integrations.slack_outbox import POSTING_INFO
from security_api.settings import Settings


@dataclass(frozen=True)
class Services:
    """Settings, database, shared state store and signing keys, passed to domain operations."""

    settings: Settings
    engine: Engine
    session_factory: sessionmaker
    store: StateStore
    keys: SigningKeys
    audience: TokenAudience
    token_verifier: TokenVerifier
    principal_reader: ReadOnlyQuery
    principals: PrincipalSource
    dummy_password_hash: str
    secret_box: SecretBox
    notifier: Notifier
    audit_keys: ChainKeys
    # Who holds what, one read-only round trip (the permission guard, GET /v1/check).
    holdings: HoldingReader


def build_services(settings: Settings) -> Services:
    """Wire the collaborators described by the settings."""
    engine = make_engine(settings.database_url,
                         query_timeout_seconds=settings.database_query_timeout_seconds)
    audit_keys = ChainKeys.from_secrets(settings.audit_chain_keys)
    # With Redis, revocations publish per-user auth versions there (principal_cache).
    versions = (AuthVersions.from_url(settings.redis_url)
                if settings.redis_url else None)
    # One Sealer per process integrates the appended audit events (`audit/sequencer.py`).
    sealer = Sealer(engine, audit_keys, interval_seconds=settings.audit_seal_interval_seconds)
    # Every session chains and verifies audit events with these keys (`audit.session_keys`),
    # wakes the sealer, and registers principal changes with the auth versions.
    session_factory = make_session_factory(engine, info={KEYS_INFO: audit_keys,
                                                         SEALER_INFO: sealer,
                                                         POSTING_INFO: settings.slack_posting,
                                                         AUTH_VERSIONS_INFO: versions})
    reader = principal_reader(engine)
    if settings.jwt_algorithm == "EdDSA":
        keys = eddsa_keys(settings.jwt_private_key, settings.jwt_key_id)
    else:
        keys = hs256_keys(settings.jwt_secret)
    audience = TokenAudience(settings.jwt_issuer, settings.jwt_audience,
                             settings.access_token_ttl_seconds, settings.jwt_leeway_seconds)
    return Services(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        store=make_store(session_factory=session_factory, redis_url=settings.redis_url,
                         redis_prefix=settings.redis_prefix),
        keys=keys,
        audience=audience,
        token_verifier=TokenVerifier(keys, audience),
        principal_reader=reader,
        principals=PrincipalSource(reader, versions),
        dummy_password_hash=dummy_hash(rounds=settings.bcrypt_rounds),
        secret_box=SecretBox(list(settings.data_encryption_keys)),
        notifier=Notifier(settings),
        audit_keys=audit_keys,
        holdings=HoldingReader(engine),
    )
