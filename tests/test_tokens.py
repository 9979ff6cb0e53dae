"""Access-token verification: forged, tampered, malformed and misdirected JWTs are all a 401."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
import uuid
from datetime import UTC, datetime

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select

from security_api.accounts import principal_cache
from security_api.accounts.tokens import REQUIRED_CLAIMS, issue_access_token, verify_access_token
from security_api.errors import Unauthenticated
from security_api.models import RecoveryCode, RefreshFamily, RefreshToken, User
from tests.conftest import basic, bearer

DROP = object()  # a claim override that removes the claim


class In(int):
    """A claim override meaning "this many seconds from now"."""


# ---- crafting ------------------------------------------------------------------------------
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def craft(header: dict, claims: dict, sign=lambda signing_input: b"") -> str:
    """Build a compact JWS by hand, so nothing stops us from making a bad one."""
    signing_input = ".".join(b64url(json.dumps(part).encode()) for part in (header, claims))
    return f"{signing_input}.{b64url(sign(signing_input.encode('ascii')))}"


def hmac_signer(key: bytes, digest=hashlib.sha256):
    return lambda signing_input: hmac.new(key, signing_input, digest).digest()


def hs256(app, claims: dict, **header) -> str:
    """Sign with the app's own HS256 secret: only what we changed can make it fail."""
    secret = app.extensions["security_api"].keys.signing_key
    return craft({"alg": "HS256", "typ": "JWT", **header}, claims, hmac_signer(secret))


def with_overrides(claims: dict, overrides: dict) -> dict:
    now = int(time.time())
    changed = dict(claims)
    for name, value in overrides.items():
        if value is DROP:
            changed.pop(name, None)
        else:
            changed[name] = now + value if isinstance(value, In) else value
    return changed


def unverified_claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def new_ed25519_pem() -> str:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode("ascii")


# ---- checking ------------------------------------------------------------------------------
def profile(client, token: str):
    """GET /v1/profile with a token sent byte for byte as a real client would (latin-1 in WSGI)."""
    raw = ("Bearer " + token).encode("utf-8", "surrogatepass").decode("latin-1")
    return client.get("/v1/profile", headers={"Authorization": raw})


def assert_http_refused(client, token: str, code: str = "invalid_token") -> None:
    response = profile(client, token)
    assert response.status_code == 401, response.json
    assert response.json["error"] == code
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert "jwt_data" not in response.json


def assert_refused(app, token: str, code: str = "invalid_token") -> None:
    """Refused by verify_access_token itself and, through the API, with the same code."""
    services = app.extensions["security_api"]
    with pytest.raises(Unauthenticated) as caught:
        verify_access_token(token, keys=services.keys, audience=services.audience)
    assert caught.value.code == code
    assert_http_refused(app.test_client(), token, code)


def login(client, user) -> dict:
    response = client.post("/v1/login", headers=basic(user.username, user.password),
                           json={"totp": user.next_code()})
    assert response.status_code == 200, response.json
    return response.json


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture
def signed_in(make_user, login_as):
    """A real user with a real token: (user, token, claims of that token)."""
    user = make_user()
    token = login_as(user)["token"]
    return user, token, unverified_claims(token)


@pytest.fixture
def eddsa_app(app, make_app):
    return make_app(jwt_algorithm="EdDSA", jwt_private_key=new_ed25519_pem(), jwt_key_id="k1")


@pytest.fixture
def eddsa_signed_in(eddsa_app, make_user):
    user = make_user()
    token = login(eddsa_app.test_client(), user)["token"]
    return user, token, unverified_claims(token)


# ---- HS256 (default) -----------------------------------------------------------------------
def test_a_real_token_verifies(app, client, signed_in):
    user, token, claims = signed_in
    services = app.extensions["security_api"]
    verified = verify_access_token(token, keys=services.keys, audience=services.audience)
    assert verified["sub"] == user.id and verified["type"] == "access"
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert profile(client, token).json["jwt_data"]["jti"] == claims["jti"]


ACCEPTED = {
    "re-signed unchanged": {},
    "unknown extra claim": {"scope": "everything"},
    "iat within leeway": {"iat": In(5)},
    "nbf within leeway": {"nbf": In(5)},
    "exp just past, within leeway": {"exp": In(-5)},
}


@pytest.mark.parametrize("overrides", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_hand_signed_tokens_the_checks_accept(app, client, signed_in, overrides):
    """The control group: the crafting helpers make tokens the service does accept."""
    user, _token, claims = signed_in
    response = profile(client, hs256(app, with_overrides(claims, overrides)))
    assert response.status_code == 200, response.json
    assert response.json["user"]["id"] == user.id


REFUSED_CLAIMS = {
    "iss other": ({"iss": "evil-issuer"}, "invalid_token"),
    "iss prefix of ours": ({"iss": "security"}, "invalid_token"),
    "iss ours plus suffix": ({"iss": "security-api-evil"}, "invalid_token"),
    "iss other case": ({"iss": "Security-API"}, "invalid_token"),
    "iss as list": ({"iss": ["security-api"]}, "invalid_token"),
    "aud other": ({"aud": "another-service"}, "invalid_token"),
    "aud as list of ours": ({"aud": ["security-api"]}, "invalid_token"),
    "aud as list with others": ({"aud": ["other", "security-api"]}, "invalid_token"),
    "expired": ({"exp": In(-60)}, "token_expired"),
    "expired long ago": ({"iat": In(-7200), "nbf": In(-7200), "exp": In(-3600)}, "token_expired"),
    "nbf in the future": ({"nbf": In(60)}, "invalid_token"),
    "iat in the future": ({"iat": In(60)}, "invalid_token"),
    **{f"{name} missing": ({name: DROP}, "invalid_token") for name in REQUIRED_CLAIMS},
    **{f"{name} null": ({name: None}, "invalid_token") for name in REQUIRED_CLAIMS},
    "sid missing": ({"sid": DROP}, "invalid_token"),
    "type refresh": ({"type": "refresh"}, "invalid_token"),
    "type other case": ({"type": "Access"}, "invalid_token"),
    "type as list": ({"type": ["access"]}, "invalid_token"),
    "sub empty": ({"sub": ""}, "invalid_token"),
    "sub number": ({"sub": 1}, "invalid_token"),
    "sub too long": ({"sub": "u" * 65}, "invalid_token"),
    "jti number": ({"jti": 7}, "invalid_token"),
    "exp text": ({"exp": "tomorrow"}, "invalid_token"),
    "iat text": ({"iat": "recently"}, "invalid_token"),
    "nbf object": ({"nbf": {"t": 1}}, "invalid_token"),
}


@pytest.mark.parametrize(("overrides", "code"), REFUSED_CLAIMS.values(), ids=REFUSED_CLAIMS.keys())
def test_bad_claims_are_refused_even_when_signed_with_our_key(app, signed_in, overrides, code):
    _user, _token, claims = signed_in
    assert_refused(app, hs256(app, with_overrides(claims, overrides)), code)




def test_signed_token_with_iat_as_numeric_text_is_a_401(app, client, signed_in):
    _user, _token, claims = signed_in
    response = profile(client, hs256(app, {**claims, "iat": str(int(time.time()))}))
    assert response.status_code == 401
    assert response.json["error"] == "invalid_token"


@pytest.mark.parametrize("claim", ["sub", "sid", "jti"])
def test_signed_token_with_nul_in_an_id_claim_is_a_401(app, client, signed_in, claim):
    _user, _token, claims = signed_in
    response = profile(client, hs256(app, {**claims, claim: claims[claim] + "\x00"}))
    assert response.status_code == 401, response.json
    assert response.json["error"] == "invalid_token"


def test_signed_token_of_a_session_that_never_existed_is_a_401(app, client, signed_in):
    import uuid

    _user, _token, claims = signed_in
    response = profile(client, hs256(app, {**claims, "sid": str(uuid.uuid4())}))
    assert response.status_code == 401


def _tampered(token: str, **changes) -> str:
    """Swap the payload for an edited one and keep the original signature."""
    header, _payload, signature = token.split(".")
    claims = {**unverified_claims(token), **changes}
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


TAMPERING = {
    "user_name": {"user_name": "root"},
    "role": {"role": "security", "subrole": "admin", "user_roles": ["security", "security/admin"]},
    "exp extended": {"exp": 4_102_444_800},
    "same claims re-serialised": {},
}


@pytest.mark.parametrize("changes", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampered_payload_with_the_original_signature_is_refused(app, signed_in, changes):
    _user, token, _claims = signed_in
    assert_refused(app, _tampered(token, **changes))


def test_signature_stripped_or_swapped_is_refused(app, make_user, login_as, signed_in):
    _user, token, _claims = signed_in
    other_token = login_as(make_user("bob"))["token"]
    head, payload, signature = token.split(".")
    assert_refused(app, f"{head}.{payload}.")
    assert_refused(app, f"{head}.{payload}")
    assert_refused(app, f"{head}.{payload}.{other_token.split('.')[2]}")
    assert_refused(app, f"{head}.{payload}.{signature[:-2]}")


def _ed25519_signer():
    key = Ed25519PrivateKey.generate()
    return key.sign


HS256_WRONG_KEY_OR_ALG = {
    "alg none, no signature": lambda claims, secret: craft({"alg": "none"}, claims),
    "alg None": lambda claims, secret: craft({"alg": "None", "typ": "JWT"}, claims),
    "alg NONE": lambda claims, secret: craft({"alg": "NONE"}, claims),
    "alg none, HMAC signature kept": lambda claims, secret: craft(
        {"alg": "none"}, claims, hmac_signer(secret)),
    "no alg header": lambda claims, secret: craft({"typ": "JWT"}, claims, hmac_signer(secret)),
    "alg as list": lambda claims, secret: craft({"alg": ["HS256"]}, claims, hmac_signer(secret)),
    "HS384 with our secret": lambda claims, secret: jwt.encode(claims, secret, algorithm="HS384"),
    "HS512 with our secret": lambda claims, secret: jwt.encode(claims, secret, algorithm="HS512"),
    "HS256 header, HMAC-SHA512 bytes": lambda claims, secret: craft(
        {"alg": "HS256"}, claims, hmac_signer(secret, hashlib.sha512)),
    "EdDSA with some Ed25519 key": lambda claims, secret: craft(
        {"alg": "EdDSA"}, claims, _ed25519_signer()),
    "HS256 with another secret": lambda claims, secret: craft(
        {"alg": "HS256", "typ": "JWT"}, claims, hmac_signer(b"another-secret-of-more-than-32-bytes!!")),
    "HS256 with an empty secret": lambda claims, secret: craft({"alg": "HS256"}, claims, hmac_signer(b"")),
    "HS256 with our secret plus a byte": lambda claims, secret: craft(
        {"alg": "HS256"}, claims, hmac_signer(secret + b"x")),
}


@pytest.mark.parametrize("make_token", HS256_WRONG_KEY_OR_ALG.values(), ids=HS256_WRONG_KEY_OR_ALG.keys())
def test_hs256_app_refuses_other_algorithms_and_keys(app, signed_in, make_token):
    _user, _token, claims = signed_in
    secret = app.extensions["security_api"].keys.signing_key
    assert_refused(app, make_token(claims, secret))


def test_unknown_crit_header_is_refused(app, signed_in):
    _user, _token, claims = signed_in
    assert_refused(app, hs256(app, claims, crit=["urn:example:must-understand"],
                              **{"urn:example:must-understand": True}))
    assert_refused(app, hs256(app, claims, crit="exp"))
    assert_refused(app, hs256(app, claims, crit=[]))


@pytest.fixture
def listener():
    """A local TCP port that records whether anyone connected (a jku/x5u fetch would)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)

    def connected() -> bool:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    yield f"http://127.0.0.1:{server.getsockname()[1]}", connected
    server.close()


@pytest.mark.parametrize("param", ["jku", "x5u"])
def test_jku_and_x5u_are_never_fetched(app, client, signed_in, listener, param):
    """Verified with the configured key alone: the URL neither rescues nor sinks a token."""
    _user, _token, claims = signed_in
    url, connected = listener
    good = hs256(app, claims, **{param: f"{url}/jwks.json", "kid": "attacker"})
    forged = craft({"alg": "HS256", param: f"{url}/jwks.json"}, claims,
                   hmac_signer(b"attacker-secret-published-at-the-jku-url"))
    assert profile(client, good).status_code == 200
    assert_refused(app, forged)
    nowhere = hs256(app, claims, **{param: "http://127.0.0.1:9/jwks.json"})
    assert profile(client, nowhere).status_code == 200
    assert not connected()


GARBAGE = {
    "empty": "",
    "dot": ".",
    "two dots": "..",
    "a.b": "a.b",
    "a.b.c": "a.b.c",
    "five parts (JWE shape)": "a.b.c.d.e",
    "bad base64": "!!!.@@@.###",
    "header not JSON": f"{b64url(b'not json')}.{b64url(b'{}')}.",
    "header a JSON list": f"{b64url(b'[]')}.{b64url(b'{}')}.",
    "header a JSON string": f"{b64url(json.dumps('HS256').encode())}.{b64url(b'{}')}.",
    "payload not JSON": f"{b64url(json.dumps({'alg': 'HS256'}).encode())}.{b64url(b'nope')}.c2ln",
    "just over the length limit": "a" * 4097,
    "very long": "eyJhbGciOiJIUzI1NiJ9." + "A" * 100_000 + ".sig",
    "latin-1 letters": "é.é.é",
    "non-ASCII (emoji)": "\U0001F600.\U0001F600.\U0001F600",
    "lone surrogate": "\udce9.a.b",
    "null": "null",
    "Bearer repeated": "Bearer x.y.z",
}


@pytest.mark.parametrize("token", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_tokens_are_a_401(app, token):
    assert_refused(app, token)


def test_a_refresh_token_is_not_an_access_token(app, make_user, login_as):
    tokens = login_as(make_user())
    assert_refused(app, tokens["refresh_token"])


def test_missing_bearer_is_a_401_with_a_challenge(client):
    for headers in ({}, {"Authorization": "Basic YWxpY2U6eA=="}, {"Authorization": "Token abc"}):
        response = client.get("/v1/profile", headers=headers)
        assert response.status_code == 401
        assert response.json["error"] == "missing_token"
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")


@pytest.mark.parametrize("param", ["access_token", "token", "jwt"])
def test_token_in_the_query_string_is_refused(client, signed_in, param):
    _user, token, _claims = signed_in
    for headers in ({}, bearer(token)):
        response = client.get(f"/v1/profile?{param}={token}", headers=headers)
        assert response.status_code == 400
        assert response.json["error"] == "credentials_in_query"
        assert "jwt_data" not in response.json


# ---- the user behind the token -------------------------------------------------------------
def test_token_of_an_unknown_sub_is_refused(app, client, signed_in):
    _user, _token, claims = signed_in
    token = hs256(app, {**claims, "sub": "7d1f3c1e-0000-4000-8000-000000000000"})
    assert_http_refused(client, token, "invalid_token")


def test_token_of_a_deleted_user_is_refused(app, client, signed_in):
    user, token, _claims = signed_in
    with app.extensions["security_api"].session_factory() as session:
        principal_cache.changed(session, user.id)  # a bulk delete must register (safety net)
        families = select(RefreshFamily.id).where(RefreshFamily.user_id == user.id)
        session.execute(delete(RefreshToken).where(RefreshToken.family_id.in_(families)))
        for model in (RefreshFamily, RecoveryCode):
            session.execute(delete(model).where(model.user_id == user.id))
        session.execute(delete(User).where(User.id == user.id))
        session.commit()
    assert_http_refused(client, token, "invalid_token")


def test_token_of_a_deactivated_user_is_refused(app, client, signed_in):
    user, token, _claims = signed_in
    assert profile(client, token).status_code == 200
    with app.extensions["security_api"].session_factory() as session:
        session.get(User, user.id).active = False
        session.commit()
    assert_http_refused(client, token, "token_revoked")


# ---- issue_access_token --------------------------------------------------------------------
def test_issue_then_verify_round_trip(app, signed_in):
    user, _token, _claims = signed_in
    services = app.extensions["security_api"]
    with services.session_factory() as session:
        row = session.get(User, user.id)
        token, claims = issue_access_token(keys=services.keys, audience=services.audience, user=row,
                                           session_id=str(uuid.uuid4()), now=datetime.now(UTC))
    assert set(REQUIRED_CLAIMS) <= set(claims)
    assert claims["exp"] - claims["iat"] == services.audience.ttl_seconds
    assert claims["user_roles"] == ["developer", "developer/backend"]
    assert verify_access_token(token, keys=services.keys, audience=services.audience) == claims


# ---- EdDSA ---------------------------------------------------------------------------------
def test_eddsa_login_profile_and_offline_verification_with_the_jwks(eddsa_app, eddsa_signed_in):
    user, token, _claims = eddsa_signed_in
    client = eddsa_app.test_client()
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": "k1", "typ": "JWT"}
    assert profile(client, token).json["user"]["id"] == user.id
    keys = client.get("/v1/.well-known/jwks.json").json["keys"]
    assert len(keys) == 1
    jwk = keys[0]
    assert (jwk["kty"], jwk["crv"], jwk["kid"]) == ("OKP", "Ed25519", "k1")
    assert "d" not in jwk
    public = jwt.PyJWK(jwk)
    claims = jwt.decode(token, public.key, algorithms=["EdDSA"], audience="security-api",
                        issuer="security-api")
    assert claims["sub"] == user.id


def test_hs256_jwks_is_empty(client):
    response = client.get("/v1/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.json["keys"] == []


def _eddsa_public_forms(app) -> dict[str, bytes]:
    public = app.extensions["security_api"].keys.verification_key
    return {
        "raw": public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        "pem": public.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo),
        "der": public.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo),
        "jwk x": app.extensions["security_api"].keys.public_jwk["x"].encode("ascii"),
    }


@pytest.mark.parametrize("form", ["raw", "pem", "der", "jwk x"])
def test_eddsa_app_refuses_hs256_signed_with_its_public_key(eddsa_app, eddsa_signed_in, form):
    """The classic algorithm confusion: the public key used as an HMAC secret."""
    _user, _token, claims = eddsa_signed_in
    secret = _eddsa_public_forms(eddsa_app)[form]
    assert_refused(eddsa_app, craft({"alg": "HS256", "kid": "k1", "typ": "JWT"}, claims,
                                    hmac_signer(secret)))


EDDSA_FORGERIES = {
    "HS256 with some secret": lambda claims: jwt.encode(
        claims, "a-shared-secret-that-is-long-enough!!", algorithm="HS256", headers={"kid": "k1"}),
    "HS512 with some secret": lambda claims: craft(
        {"alg": "HS512", "kid": "k1"}, claims, hmac_signer(b"a-shared-secret", hashlib.sha512)),
    "alg none": lambda claims: craft({"alg": "none", "kid": "k1"}, claims),
    "EdDSA with another key": lambda claims: craft({"alg": "EdDSA", "kid": "k1"}, claims,
                                                   _ed25519_signer()),
    "EdDSA with another key embedded as jwk": lambda claims: _embedded_jwk_token(claims),
    "alg Ed25519 (not the pinned name)": lambda claims: craft({"alg": "Ed25519", "kid": "k1"}, claims,
                                                              _ed25519_signer()),
}


def _embedded_jwk_token(claims: dict) -> str:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    header = {"alg": "EdDSA", "kid": "k1", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}}
    return craft(header, claims, key.sign)


@pytest.mark.parametrize("make_token", EDDSA_FORGERIES.values(), ids=EDDSA_FORGERIES.keys())
def test_eddsa_app_refuses_forgeries(eddsa_app, eddsa_signed_in, make_token):
    _user, _token, claims = eddsa_signed_in
    assert_refused(eddsa_app, make_token(claims))


def test_eddsa_app_refuses_its_own_signature_under_a_wrong_kid(eddsa_app, eddsa_signed_in):
    _user, _token, claims = eddsa_signed_in
    private = eddsa_app.extensions["security_api"].keys.signing_key
    assert profile(eddsa_app.test_client(),
                   craft({"alg": "EdDSA", "kid": "k1"}, claims, private.sign)).status_code == 200
    assert_refused(eddsa_app, craft({"alg": "EdDSA", "kid": "k2"}, claims, private.sign))
    assert_refused(eddsa_app, craft({"alg": "EdDSA"}, claims, private.sign))


def test_hs256_token_of_another_app_is_refused_by_an_eddsa_app(app, eddsa_app, signed_in):
    """A token the HS256 deployment issued means nothing to the EdDSA one, and vice versa."""
    _user, token, _claims = signed_in
    assert_refused(eddsa_app, token)


def test_eddsa_token_is_refused_by_an_hs256_app(app, eddsa_signed_in):
    _user, token, _claims = eddsa_signed_in
    assert_refused(app, token)


def test_verifier_rechecks_time_on_every_use_of_a_remembered_token(app, signed_in):
    from security_api.errors import Unauthenticated

    _user, token, claims = signed_in
    verifier = app.extensions["security_api"].token_verifier
    assert verifier.verify(token, now=claims["iat"])["jti"] == claims["jti"]
    with pytest.raises(Unauthenticated) as expired:
        verifier.verify(token, now=claims["exp"] + 31)
    assert expired.value.code == "token_expired"
    with pytest.raises(Unauthenticated):
        verifier.verify(token, now=claims["nbf"] - 31)


def test_verifier_never_remembers_a_failed_token(app, signed_in):
    from security_api.errors import Unauthenticated

    _user, token, claims = signed_in
    verifier = app.extensions["security_api"].token_verifier
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            verifier.verify(forged, now=claims["iat"])
