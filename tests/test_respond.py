"""respond(): a success body goes out through the model its view documents for that status."""
from __future__ import annotations

import json

import pytest
from flask import Flask
from pydantic import BaseModel, ValidationError

from flask_api_functions import respond
from web.api.openapi import documented


class Thing(BaseModel):
    message: str | None
    count: int
    note: str | None = None


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
