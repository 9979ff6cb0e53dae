"""TOTP: RFC 6238 vectors, the +-1 step window, and the strict six-ASCII-digit format."""
from __future__ import annotations

import base64
from urllib.parse import parse_qs, unquote, urlparse

import pyotp
import pytest

from security_api.accounts import totp

RFC_SECRET = base64.b32encode(b"12345678901234567890").decode("ascii")
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
NOW = 1_700_000_015  # in the middle of step 56_666_667
STEP = NOW // 30


@pytest.mark.parametrize(("unix_time", "expected"), [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
])
def test_rfc_6238_sha1_vectors(unix_time, expected):
    assert totp.code_at(RFC_SECRET, unix_time, digits=8) == expected
    # Six digits are the low six of the same number (leading zeros kept).
    assert totp.code_at(RFC_SECRET, unix_time) == expected[-6:]


def code(offset_steps: int) -> str:
    return totp.code_at(SECRET, NOW + 30 * offset_steps)


def test_the_fixture_codes_are_distinct():
    """Otherwise a refusal of step +-2 below could be a coincidence."""
    assert len({code(k) for k in range(-3, 4)}) == 7


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_current_and_adjacent_steps_are_accepted_with_their_step(offset):
    assert totp.matching_step(SECRET, code(offset), unix_time=NOW) == STEP + offset


@pytest.mark.parametrize("offset", [-3, -2, 2, 3])
def test_steps_outside_the_window_are_refused(offset):
    assert totp.matching_step(SECRET, code(offset), unix_time=NOW) is None


def test_window_edges_follow_the_step_boundary():
    start = STEP * 30
    assert totp.matching_step(SECRET, code(0), unix_time=start + 29) == STEP
    # One second later the window has moved on: step-1 drops out.
    assert totp.matching_step(SECRET, code(-1), unix_time=start + 30) is None


def test_a_code_of_another_secret_is_refused():
    other = totp.code_at("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", NOW)
    assert other not in {code(k) for k in (-1, 0, 1)}
    assert totp.matching_step(SECRET, other, unix_time=NOW) is None


FULL_WIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))
ARABIC_INDIC = str.maketrans("0123456789", "".join(chr(0x0660 + d) for d in range(10)))
DEVANAGARI = str.maketrans("0123456789", "".join(chr(0x0966 + d) for d in range(10)))


@pytest.mark.parametrize("table", [FULL_WIDTH, ARABIC_INDIC, DEVANAGARI],
                         ids=["full-width", "arabic-indic", "devanagari"])
def test_non_ascii_digits_are_refused_even_when_they_mean_the_right_code(table):
    lookalike = code(0).translate(table)
    assert lookalike != code(0) and int(lookalike) == int(code(0))
    assert totp.matching_step(SECRET, lookalike, unix_time=NOW) is None
    assert not totp.is_well_formed(lookalike)


MALFORMED = {
    "five digits": lambda c: c[:5],
    "seven digits": lambda c: c + "0",
    "leading space": lambda c: " " + c,
    "trailing space": lambda c: c + " ",
    "inner space": lambda c: c[:3] + " " + c[3:],
    "trailing newline": lambda c: c + "\n",
    "leading plus": lambda c: "+" + c[1:],
    "eight-digit form": lambda c: "00" + c,
    "empty": lambda c: "",
}


@pytest.mark.parametrize("mangle", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_strings_are_refused(mangle):
    candidate = mangle(code(0))
    assert not totp.is_well_formed(candidate)
    assert totp.matching_step(SECRET, candidate, unix_time=NOW) is None


@pytest.mark.parametrize("value", [None, 123456, 123456.0, b"123456", ["123456"], {"totp": "123456"}])
def test_non_string_input_is_refused(value):
    assert not totp.is_well_formed(value)
    assert totp.matching_step(SECRET, value, unix_time=NOW) is None


def test_a_numeric_code_of_the_right_value_is_still_refused():
    assert totp.matching_step(SECRET, int(code(0)), unix_time=NOW) is None


@pytest.mark.parametrize("value", ["000000", "123456", "999999"])
def test_is_well_formed_accepts_six_ascii_digits(value):
    assert totp.is_well_formed(value)


def test_new_secret_is_160_bits_of_base32_and_fresh():
    secrets = {totp.new_secret() for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert len(base64.b32decode(secret)) == 20


def test_provisioning_uri_names_issuer_account_and_secret():
    uri = totp.provisioning_uri(SECRET, account="alice@example.com", issuer="Security API")
    parsed = urlparse(uri)
    query = parse_qs(parsed.query)
    assert (parsed.scheme, parsed.netloc) == ("otpauth", "totp")
    assert unquote(parsed.path) == "/Security API:alice@example.com"
    assert query["secret"] == [SECRET]
    assert query["issuer"] == ["Security API"]
    parsed_back = pyotp.parse_uri(uri)
    assert (parsed_back.name, parsed_back.issuer) == ("alice@example.com", "Security API")
    assert parsed_back.at(NOW) == code(0)
