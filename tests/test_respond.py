"""respond(): a success body goes out through the model its view documents for that status."""
from __future__ import annotations

import json
from collections import defaultdict
from itertools import count

import pytest
from flask import Flask
from pydantic import BaseModel, ValidationError

import flask_api_functions
from flask_api_functions import DRIFT_CHECK_EVERY, respond
from web.api.openapi import documented


class Thing(BaseModel):
    message: str | None
    count: int
    note: str | None = None


@pytest.fixture(autouse=True)
def fresh_sample(monkeypatch):
    """Each test counts its endpoint's responses from the first."""
    monkeypatch.setattr(flask_api_functions, "_responses_sent", defaultdict(count))


def _app(payload: dict, *, testing: bool, status: int = 200) -> Flask:
    app = Flask(__name__)
    app.testing = testing

    @app.get("/thing")
    @documented(summary="A thing", tag="test", responses={200: Thing, 201: Thing})
    def thing():
        return respond("hi", status=status, **payload)

    return app


def test_the_documented_fields_go_out_as_set():
    response = _app({"count": 3}, testing=True).test_client().get("/thing")
    assert response.status_code == 200
    # `note` has a default but was not set: it is not sent (the payload's keys are kept).
    assert json.loads(response.data) == {"message": "hi", "count": 3}


def test_the_status_picks_the_model():
    response = _app({"count": 3}, testing=True, status=201).test_client().get("/thing")
    assert response.status_code == 201


@pytest.mark.parametrize("payload", [{"count": "3"}, {"count": None}, {}])
def test_a_value_the_model_refuses_fails_under_test(payload):
    with pytest.raises(ValidationError):
        _app(payload, testing=True).test_client().get("/thing")


def test_a_field_the_model_does_not_know_fails_under_test():
    with pytest.raises(AssertionError, match="Thing"):
        _app({"count": 3, "extra": 1}, testing=True).test_client().get("/thing")


def test_in_production_drift_is_logged_and_the_payload_sent(caplog):
    response = _app({"count": "3"}, testing=False).test_client().get("/thing")
    assert response.status_code == 200
    assert json.loads(response.data) == {"message": "hi", "count": "3"}
    assert "drifted from Thing" in caplog.text


def test_in_production_a_field_the_model_does_not_know_is_logged_and_sent(caplog):
    response = _app({"count": 3, "extra": 1}, testing=False).test_client().get("/thing")
    assert json.loads(response.data) == {"message": "hi", "count": 3, "extra": 1}
    assert "drifted from Thing" in caplog.text and "would change it" in caplog.text


def test_in_production_an_endpoints_first_response_then_one_in_a_sample_is_checked(caplog):
    client = _app({"count": "3"}, testing=False).test_client()
    logged = []
    for _ in range(2 * DRIFT_CHECK_EVERY + 1):
        caplog.clear()
        response = client.get("/thing")
        assert json.loads(response.data) == {"message": "hi", "count": "3"}  # always sent as is
        logged.append("drifted from Thing" in caplog.text)
    assert [number for number, was in enumerate(logged) if was] == [0, DRIFT_CHECK_EVERY,
                                                                   2 * DRIFT_CHECK_EVERY]


def test_each_endpoint_has_its_own_sample(caplog):
    client = _app({"count": "3"}, testing=False).test_client()
    for _ in range(3):
        client.get("/thing")
    other = Flask(__name__)

    @other.get("/other")
    @documented(summary="Another thing", tag="test", responses={200: Thing})
    def other_thing():
        return respond("hi", count="4")

    caplog.clear()
    other.test_client().get("/other")
    assert "drifted from Thing (other_thing)" in caplog.text
