"""Passwords: bcrypt over every byte (no 72-byte cut), the policy, and changing one via the API."""
from __future__ import annotations

import hashlib

import pytest

from security_api.accounts.passwords import dummy_hash, hash_password, policy_problems, verify_password
from tests.conftest import DEFAULT_PASSWORD, basic, bearer

ROUNDS = 4
STRONG = "kq7#Vx!m2Rz9"  # 12 characters, scores well
PREFIX_72 = "снег-на-крыше-тает-весной-ветер-поёт-2024!"  # exactly 72 UTF-8 bytes, 42 characters
LONG_MULTIBYTE = PREFIX_72 + "звёзды-горят-9999"  # 100 bytes, 59 characters
SAME_FIRST_72 = PREFIX_72 + "луна-светит-0000"
LONG_ASCII = hashlib.sha256(b"a").hexdigest() + hashlib.sha256(b"b").hexdigest()[:36]  # 100 chars


def test_the_fixture_passwords_have_the_lengths_the_tests_rely_on():
    assert len(PREFIX_72.encode()) == 72
    assert len(LONG_MULTIBYTE.encode()) == 100 and len(LONG_MULTIBYTE) <= 72
    assert LONG_MULTIBYTE.encode()[:72] == SAME_FIRST_72.encode()[:72]
    assert len(LONG_ASCII) == len(LONG_ASCII.encode()) == 100


# ---- hashing -------------------------------------------------------------------------------
def test_hash_then_verify_round_trip():
    hashed = hash_password("violet-harbour-kettle-42", rounds=ROUNDS)
    assert hashed.startswith("$2b$04$") and len(hashed) == 60
    assert verify_password("violet-harbour-kettle-42", hashed)
    assert not verify_password("violet-harbour-kettle-43", hashed)
    assert not verify_password("", hashed)


def test_hashes_are_salted():
    first, second = (hash_password(STRONG, rounds=ROUNDS) for _ in range(2))
    assert first != second
    assert verify_password(STRONG, first) and verify_password(STRONG, second)


LONG_PASSWORDS = {
    "73 ASCII": "a" * 73,
    "100 ASCII": LONG_ASCII,
    "100 é (200 bytes)": "é" * 100,
    "50 emoji (200 bytes)": "\U0001F600" * 50,
    "1024 characters": "x" * 1024,
    "1024 characters, 3 bytes each": "€" * 1024,
}


@pytest.mark.parametrize("password", LONG_PASSWORDS.values(), ids=LONG_PASSWORDS.keys())
def test_long_passwords_hash_and_verify_without_raising(password):
    hashed = hash_password(password, rounds=ROUNDS)
    assert verify_password(password, hashed)
    assert not verify_password(password[:-1], hashed)
    assert not verify_password(password + "x", hashed)


SAME_FIRST_72_BYTES = {
    "ASCII tail": ("A" * 72 + "one", "A" * 72 + "two"),
    "one extra byte": ("A" * 72, "A" * 73),
    "multi-byte tail": (LONG_MULTIBYTE, SAME_FIRST_72),
    "2-byte prefix": ("é" * 36 + "x", "é" * 36 + "y"),
    "character straddling byte 72": ("A" * 71 + "é", "A" * 71 + "è"),
}


@pytest.mark.parametrize(("first", "second"), SAME_FIRST_72_BYTES.values(), ids=SAME_FIRST_72_BYTES.keys())
def test_bytes_after_the_72nd_count(first, second):
    assert first.encode()[:72] == second.encode()[:72] and first != second
    assert not verify_password(second, hash_password(first, rounds=ROUNDS))
    assert not verify_password(first, hash_password(second, rounds=ROUNDS))


def test_composed_and_decomposed_accents_are_the_same_password():
    """NFC before hashing: the é typed on one keyboard matches the e + accent of another."""
    assert verify_password("Caf\u0065\u0301-violet-harbour", hash_password("Caf\u00e9-violet-harbour",
                                                                          rounds=ROUNDS))


@pytest.mark.parametrize("garbage", ["", "not-a-hash", "$2b$04$", "$2b$04$" + "x" * 53, "$1$abc$def",
                                     "$2b$04$é" + "x" * 52, "\x00" * 60])
def test_verify_against_a_garbage_hash_is_false(garbage):
    assert verify_password(STRONG, garbage) is False


def test_dummy_hash_matches_nothing_useful():
    hashed = dummy_hash(rounds=ROUNDS)
    assert hashed.startswith("$2b$04$")
    assert not verify_password("", hashed) and not verify_password(DEFAULT_PASSWORD, hashed)


# ---- policy --------------------------------------------------------------------------------
USER_INPUTS = ("alice", "alice@example.com")

ACCEPTABLE = {
    "12 characters, strong": STRONG,
    "64 characters": hashlib.sha256(b"64").hexdigest(),
    "72 characters": hashlib.sha512(b"72").hexdigest()[:72],
    "German": "Grüße-aus-Köln-über-Zürich",
    "Cyrillic": "снег-на-крыше-тает-весной",
    "Japanese": "日本の秋は美しい紅葉の季節",
    "100 bytes in 59 characters": LONG_MULTIBYTE,
}


@pytest.mark.parametrize("password", ACCEPTABLE.values(), ids=ACCEPTABLE.keys())
def test_policy_accepts(password):
    assert policy_problems(password, user_inputs=USER_INPUTS) == []


def test_policy_ignores_usernames_shorter_than_three_characters():
    assert policy_problems("al-" + STRONG, user_inputs=("al", "")) == []


LONG_ACCEPTABLE = {
    "73 characters": hashlib.sha512(b"73").hexdigest()[:73],
    "100 characters": LONG_ASCII,
    "1024 characters": hashlib.sha512(b"1024").hexdigest() * 8,
}


@pytest.mark.parametrize("password", LONG_ACCEPTABLE.values(), ids=LONG_ACCEPTABLE.keys())
def test_policy_accepts_strong_passwords_longer_than_72_characters(password):
    assert policy_problems(password, user_inputs=USER_INPUTS) == []


REFUSED = {
    "11 characters": (STRONG[:11], "must be at least 12 characters"),
    "empty": ("", "must be at least 12 characters"),
    "1025 characters": ("x" * 1025, "must be at most 1024 characters"),
    "password1234": ("password1234", "is too weak"),
    "qwertyuiop123": ("qwertyuiop123", "is too weak"),
    "Password1234!": ("Password1234!", "is too weak"),
    "twelve times the same": ("a" * 12, "is too weak"),
    "contains the username": ("alice-violet-harbour-42", "must not contain the username or email"),
    "contains the username, other case": ("ALICE-violet-harbour-42", "must not contain the username"),
    "contains the email": ("x-alice@example.com-x", "must not contain the username or email"),
    "tab": ("violet-harbour\tkettle-42", "must not contain control characters"),
    "newline": ("violet-harbour-kettle-42\n", "must not contain control characters"),
    "NUL": ("violet-harbour\x00kettle-42", "must not contain control characters"),
    "DEL": ("violet-harbour\x7fkettle-42", "must not contain control characters"),
    "escape": ("\x1b[31mviolet-harbour", "must not contain control characters"),
}


@pytest.mark.parametrize(("password", "problem"), REFUSED.values(), ids=REFUSED.keys())
def test_policy_refuses(password, problem):
    problems = policy_problems(password, user_inputs=USER_INPUTS)
    assert len(problems) == 1
    assert problems[0].startswith(problem)


# ---- through the API -----------------------------------------------------------------------
def change_password(client, token: str, new_password: str, current: str = DEFAULT_PASSWORD):
    return client.post("/v1/password", headers=bearer(token),
                       json={"current_password": current, "new_password": new_password})


def login_status(client, username: str, password: str) -> int:
    """A login attempt meant to fail on the password (the code is never checked then)."""
    return client.post("/v1/login", headers=basic(username, password), json={"totp": "000000"}).status_code


def test_change_to_a_100_byte_password_then_every_byte_counts_at_login(client, make_user, login_as):
    user = make_user()
    old_token = login_as(user)["token"]
    response = change_password(client, old_token, LONG_MULTIBYTE)
    assert response.status_code == 200, response.json
    assert client.get("/v1/profile", headers=bearer(old_token)).status_code == 401
    user.password = LONG_MULTIBYTE
    new_token = login_as(user)["token"]
    assert client.get("/v1/profile", headers=bearer(new_token)).status_code == 200
    assert login_status(client, user.username, SAME_FIRST_72) == 401
    assert login_status(client, user.username, DEFAULT_PASSWORD) == 401


def test_change_to_a_100_character_password(client, make_user, login_as):
    user = make_user()
    response = change_password(client, login_as(user)["token"], LONG_ASCII)
    assert response.status_code == 200, response.json
    user.password = LONG_ASCII
    assert login_as(user)["token_type"] == "Bearer"
    assert login_status(client, user.username, LONG_ASCII[:72] + "0" * 28) == 401


@pytest.mark.parametrize(("new_password", "problem"), [
    ("x" * 1025, "must be at most 1024 characters"),
    ("password1234", "is too weak"),
    ("alice-violet-harbour-42", "must not contain the username or email"),
    (DEFAULT_PASSWORD, "must differ from the current password"),
])
def test_change_to_a_refused_password_is_a_412(client, make_user, login_as, new_password, problem):
    user = make_user()
    token = login_as(user)["token"]
    response = change_password(client, token, new_password)
    assert response.status_code == 412, response.json
    assert response.json["errors"][0]["field"] == "new_password"
    assert response.json["errors"][0]["problem"].startswith(problem)
    assert client.get("/v1/profile", headers=bearer(token)).status_code == 200
