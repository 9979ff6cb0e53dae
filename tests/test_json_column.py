"""JSONText writes exactly the text the hand-written json.dumps calls wrote, and reads tolerantly."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from security_api.json_column import JSONText
from security_api.models import AccessRequest, Permission, PolicyRule, PortalSession

VALUE = {"b": [1, 2], "a": {"z": None, "y": "é\udc00"}, "c": True}


def _column_type(model, name: str) -> JSONText:
    column_type = model.__table__.c[name].type
    assert isinstance(column_type, JSONText)
    return column_type


@pytest.mark.parametrize(("model", "name", "old_call"), [
    # The call each column's writers made before JSONText: its text must not change.
    (AccessRequest, "params", lambda v: json.dumps(v, sort_keys=True)),
    (AccessRequest, "provisioning", lambda v: json.dumps(v, sort_keys=True)),
    (Permission, "provisioner_config", json.dumps),
    (PolicyRule, "approvers", json.dumps),
    (PortalSession, "data", json.dumps),
])
def test_stored_text_is_byte_identical_to_the_old_calls(model, name, old_call):
    column_type = _column_type(model, name)
    assert column_type.process_bind_param(VALUE, None) == old_call(VALUE)
    assert column_type.process_bind_param(["x", "y"], None) == old_call(["x", "y"])


def test_pinned_serialisation():
    assert JSONText(sort_keys=True).process_bind_param(VALUE, None) == (
        '{"a": {"y": "\\u00e9\\udc00", "z": null}, "b": [1, 2], "c": true}')
    assert JSONText().process_bind_param({"b": 1, "a": 2}, None) == '{"b": 1, "a": 2}'


def test_reading_is_tolerant_like_loads_stored():
    column_type = JSONText()
    assert column_type.process_result_value('{"x": "\\udc00", "y": "\\ud83d\\ude00"}', None) == \
        {"x": "\ufffd", "y": "\U0001f600"}
    assert column_type.process_result_value('{"x": "\\\\udc00"}', None) == {"x": "\\udc00"}
    assert column_type.process_result_value(None, None) == {}
    assert JSONText(empty="[]").process_result_value("", None) == []


def test_json_text_is_refused_on_the_way_in():
    with pytest.raises(TypeError):
        JSONText().process_bind_param('{"a": 1}', None)


def test_round_trip_through_the_database(app, db_session):
    permission = db_session.get(Permission, "vpn") or db_session.query(Permission).first()
    permission.provisioner_config = {"url": "http://127.0.0.1:9/", "headers": {"X-A": "\udc00"}}
    db_session.commit()
    stored = db_session.execute(text("SELECT provisioner_config FROM permissions WHERE key = :k"),
                                {"k": permission.key}).scalar_one()
    assert stored == '{"url": "http://127.0.0.1:9/", "headers": {"X-A": "\\udc00"}}'
    db_session.expire_all()
    assert db_session.get(Permission, permission.key).provisioner_config == \
        {"url": "http://127.0.0.1:9/", "headers": {"X-A": "\ufffd"}}
