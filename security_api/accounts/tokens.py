"""Issue and verify access tokens (JWT) with a pinned algorithm; JWKS for EdDSA."""
from __future__ import annotations

import base64
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from security_api.clock import epoch
from security_api.errors import Unauthenticated

UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
JTI_PATTERN = re.compile(r"[0-9a-f]{32}")
REQUIRED_CLAIMS = ["iss", "aud", "sub", "iat", "nbf", "exp", "jti", "type"]
MAX_TOKEN_LENGTH = 4096
TOKEN_TYPE = "access"  # noqa: S105 (a claim value, not a secret)


@dataclass(frozen=True)
class SigningKeys:
    """The pinned algorithm with the keys to sign and verify."""

    algorithm: str
    signing_key: object
    verification_key: object
    kid: str | None = None
    public_jwk: dict | None = None


def hs256_keys(secret: str) -> SigningKeys:
    """Keys for HMAC-SHA256 with a shared secret."""
    raw = secret.encode("utf-8")
    return SigningKeys("HS256", raw, raw)


def eddsa_keys(private_pem: str, kid: str) -> SigningKeys:
    """Keys for Ed25519 from a PEM private key; the public half goes to the JWKS."""
    private_key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None)
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ValueError("JWT_PRIVATE_KEY must be an Ed25519 private key")
    public_key = private_key.public_key()
    raw_public = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
        "x": base64.urlsafe_b64encode(raw_public).rstrip(b"=").decode("ascii"),
    }
    return SigningKeys("EdDSA", private_key, public_key, kid=kid, public_jwk=jwk)


@dataclass(frozen=True)
class TokenAudience:
    """Who issues tokens and for whom, and how long they live."""

    issuer: str
    audience: str
    ttl_seconds: int
    leeway_seconds: int


def issue_access_token(*, keys: SigningKeys, audience: TokenAudience, user, session_id: str,
                       now: datetime) -> tuple[str, dict]:
    """Sign an access token for a user; return it with its claims."""
    # Never issue a token that is dead on arrival after a same-second password change.
    issued_at = max(epoch(now), user.tokens_valid_after)
    claims = {
        "iss": audience.issuer,
        "aud": audience.audience,
        "sub": user.id,
        "iat": issued_at,
        "nbf": issued_at,
        "exp": issued_at + audience.ttl_seconds,
        "jti": uuid.uuid4().hex,
        "type": TOKEN_TYPE,
        "sid": session_id,
        "user_id": user.id,
        "user_name": user.username,
        "user_roles": user.roles,
        "role": user.role,
        "subrole": user.subrole,
    }
    headers = {"kid": keys.kid} if keys.kid else None
    token = jwt.encode(claims, keys.signing_key, algorithm=keys.algorithm, headers=headers)
    return token, claims


def verify_access_token(token: str, *, keys: SigningKeys, audience: TokenAudience) -> dict:
    """Return the claims of a valid access token; raise Unauthenticated otherwise."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise Unauthenticated("Invalid token.", code="invalid_token")
    try:
        # The algorithm is pinned here, never taken from the token; one parse for header and claims.
        decoded = jwt.decode_complete(
            token, keys.verification_key, algorithms=[keys.algorithm],
            audience=audience.audience, issuer=audience.issuer,
            leeway=audience.leeway_seconds,
            options={"require": REQUIRED_CLAIMS, "verify_signature": True, "verify_exp": True,
                     "verify_nbf": True, "verify_iat": True, "verify_aud": True,
                     "verify_iss": True, "strict_aud": True},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("Token expired.", code="token_expired") from None
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        raise Unauthenticated("Invalid token.", code="invalid_token") from None
    header, claims = decoded["header"], decoded["payload"]
    if header.get("alg") != keys.algorithm or (keys.kid is not None and header.get("kid") != keys.kid):
        raise Unauthenticated("Invalid token.", code="invalid_token")
    if claims.get("type") != TOKEN_TYPE or not _matches(UUID_PATTERN, claims.get("sub")) \
            or not _matches(JTI_PATTERN, claims.get("jti")) \
            or not _matches(UUID_PATTERN, claims.get("sid")) \
            or not all(_is_int(claims.get(name)) for name in ("iat", "nbf", "exp")):
        raise Unauthenticated("Invalid token.", code="invalid_token")
    return claims


def _matches(pattern: re.Pattern, value) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _is_int(value) -> bool:
    # PyJWT accepts numeric text and booleans where a NumericDate belongs; we do not.
    return isinstance(value, int) and not isinstance(value, bool)


def jwks(keys: SigningKeys) -> dict:
    """Return the public keys as a JWK Set (empty for a shared HMAC secret)."""
    return {"keys": [keys.public_jwk] if keys.public_jwk else []}


class TokenVerifier:
    """Verify access tokens, remembering per process which exact token strings were verified.

    A token string's signature and fixed claims never change, so a repeat only needs the
    time-based checks again; this keeps the per-request cost of a bearer token low.
    """

    def __init__(self, keys: SigningKeys, audience: TokenAudience, *, cache_size: int = 4096):
        self.keys = keys
        self.audience = audience
        self._cache_size = cache_size
        self._verified: dict[str, dict] = {}
        self._lock = threading.Lock()

    def verify(self, token: str, *, now: float) -> dict:
        """Return the claims of a valid access token; raise Unauthenticated otherwise."""
        claims = self._verified.get(token)
        if claims is None:
            claims = verify_access_token(token, keys=self.keys, audience=self.audience)
            with self._lock:
                if len(self._verified) >= self._cache_size:
                    self._verified.pop(next(iter(self._verified)))
                self._verified[token] = claims
        leeway = self.audience.leeway_seconds
        if now >= claims["exp"] + leeway:
            raise Unauthenticated("Token expired.", code="token_expired")
        if claims["nbf"] > now + leeway or claims["iat"] > now + leeway:
            raise Unauthenticated("Invalid token.", code="invalid_token")
        return dict(claims)
