"""The audit log through the HTTP API: who may read it, filters, pages, export, and verification
that finds rows changed, removed or inserted straight in the database (SQLite and PostgreSQL)."""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, insert, select, text, update

from security_api import audit
from security_api.access.catalog import ensure_rule
from security_api.audit.views import AuditFilters, encode_cursor, iterate_events
from security_api.clock import utcnow
from security_api.enums import PolicyMode
from security_api.models import AuditChainHead, AuditEvent, new_id
from tests.conftest import bearer
from web.api import audit as audit_routes

PATHS = ("/v1/audit", "/v1/audit/export", "/v1/audit/verify")
NDJSON = {"Accept": "application/x-ndjson"}
T0 = datetime(2020, 1, 1, tzinfo=UTC)


@pytest.fixture
def app(make_app):
    """The app with the audit blueprint, registered before any request if the factory has not."""
    app = make_app()
    if "audit_api" not in app.blueprints:
        app.register_blueprint(audit_routes.bp)
    return app


@dataclass
class World:
    admin: dict
    auditor: dict
    user: dict


@pytest.fixture
def world(app, make_user, login_as, db_session) -> World:
    """An admin (security/admin), an auditor (standing security-api.audit) and a plain user."""
    admin = make_user("root", role="security", subrole="admin")
    auditor = make_user("audrey", role="audit", subrole="reader")
    user = make_user("alice")
    ensure_rule(db_session, permission="security-api.audit", role="audit", subrole="reader",
                mode=PolicyMode.STANDING, actor="test", origin=audit.Origin(), now=utcnow())
    db_session.commit()
    return World(admin=bearer(login_as(admin)["token"]), auditor=bearer(login_as(auditor)["token"]),
                 user=bearer(login_as(user)["token"]))


def record(app, count: int = 1, *, actor: str = "carol", action: str = "test.event",
           at: datetime | None = None, step: timedelta = timedelta(minutes=1)) -> list[int]:
    """Append events the way the service does; return their seq numbers."""
    events = []
    with app.extensions["security_api"].session_factory() as session:
        for i in range(count):
            events.append(audit.record(session, action=action, actor=actor, target=f"t{i}",
                                       origin=audit.Origin(ip="10.0.0.1", request_id=f"r{i}"),
                                       now=(at or utcnow()) + i * step,
                                       details={"i": i, "note": "ü"}))
        session.commit()  # appended at commit, sealed (numbered) by the inline seal after it
        ids = [event.id for event in events]
        seqs = dict(session.execute(select(AuditEvent.id, AuditEvent.seq)
                                    .where(AuditEvent.id.in_(ids))).all())
    return [seqs[event_id] for event_id in ids]


def all_seqs(db_session) -> list[int]:
    db_session.expire_all()
    return list(db_session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))


def head_seq(db_session) -> int:
    db_session.expire_all()
    return db_session.scalar(select(AuditChainHead.seq))


def get(client, path: str, headers: dict, **params):
    return client.get(f"{path}?{urlencode(params)}" if params else path, headers=headers)


def export_lines(response) -> list[dict]:
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_data(as_text=True)
    assert body == "" or body.endswith("\n")
    return [json.loads(line) for line in body.splitlines()]


# ---- who may read ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
def test_anonymous_callers_get_401(client, path):
    response = client.get(path)
    assert response.status_code == 401
    assert response.json["error"] == "missing_token"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", PATHS)
def test_a_normal_user_gets_403(client, world, path):
    response = client.get(path, headers=world.user)
    assert response.status_code == 403
    assert response.json["error"] == "forbidden"


@pytest.mark.parametrize("who", ["admin", "auditor"])
def test_admin_and_audit_holders_read_the_log(client, world, who):
    headers = getattr(world, who)
    listed = client.get("/v1/audit", headers=headers)
    assert listed.status_code == 200
    assert listed.json["message"] is None
    assert listed.json["events"]
    assert client.get("/v1/audit/verify", headers=headers).json["ok"] is True
    assert export_lines(client.get("/v1/audit/export", headers={**headers, **NDJSON}))


# ---- listing -----------------------------------------------------------------------------------
def test_events_have_the_contract_shape_newest_first(app, client, world, db_session):
    seq = record(app, actor="carol", action="test.shape")[0]
    events = client.get("/v1/audit", headers=world.auditor).json["events"]
    assert [e["seq"] for e in events] == sorted((e["seq"] for e in events), reverse=True)
    event = events[0]
    assert set(event) == {"id", "seq", "at", "actor", "action", "target", "ip", "request_id",
                          "details", "hash", "prev_hash"}
    stored = db_session.scalar(select(AuditEvent).where(AuditEvent.seq == seq))
    assert event == {"id": stored.id, "seq": seq, "at": event["at"], "actor": "carol",
                     "action": "test.shape", "target": "t0", "ip": "10.0.0.1", "request_id": "r0",
                     "details": {"i": 0, "note": "ü"}, "hash": stored.hash,
                     "prev_hash": stored.prev_hash}
    assert datetime.fromisoformat(event["at"]) <= utcnow()
    assert event["at"].endswith("Z")


def test_filters_by_actor_and_action(app, client, world):
    carol = record(app, 3, actor="carol", action="test.alpha")
    record(app, 2, actor="dave", action="test.alpha")
    carol += record(app, 2, actor="carol", action="test.beta")

    def seqs(**params):
        response = get(client, "/v1/audit", world.auditor, **params)
        assert response.status_code == 200, response.json
        return [e["seq"] for e in response.json["events"]]

    assert seqs(actor="carol") == sorted(carol, reverse=True)
    assert len(seqs(action="test.alpha")) == 5
    assert seqs(actor="carol", action="test.beta") == sorted(carol[3:], reverse=True)
    assert seqs(actor="nobody") == []
    logins = get(client, "/v1/audit", world.auditor, action="login.succeeded").json["events"]
    assert {e["actor"] for e in logins} == {"root", "audrey", "alice"}


def test_filters_by_since_and_until(app, client, world):
    seqs = record(app, 4, at=T0, step=timedelta(hours=1), action="test.time")  # 00:00 .. 03:00

    def found(**params):
        response = get(client, "/v1/audit", world.auditor, action="test.time", **params)
        assert response.status_code == 200, response.json
        return sorted(e["seq"] for e in response.json["events"])

    assert found(since="2020-01-01T01:00:00Z") == seqs[1:]                  # since is inclusive
    assert found(until="2020-01-01T01:00:00Z") == seqs[:1]                  # until is exclusive
    assert found(since="2020-01-01T01:00:00Z", until="2020-01-01T03:00:00Z") == seqs[1:3]
    assert found(since="2020-01-01T02:00:00+01:00") == seqs[1:]             # 01:00 UTC
    assert found(since="2020-01-01T02:00:00") == seqs[2:]                   # no zone: UTC
    assert found(until="2020-01-01") == []
    assert found(since="2020-01-02") == []
    assert found(since="2020-01-01T00:30:00.5Z", until="2020-01-01T02:59:59Z") == seqs[1:3]


def test_pagination_walks_every_event_exactly_once(app, client, world, db_session):
    record(app, 23)
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        response = get(client, "/v1/audit", world.admin, **params)
        assert response.status_code == 200, response.json
        assert len(response.json["events"]) <= 7
        seen += [e["seq"] for e in response.json["events"]]
        cursor, pages = response.json["next_cursor"], pages + 1
        if cursor is None:
            break
    assert seen == sorted(all_seqs(db_session), reverse=True)
    assert pages == -(-len(seen) // 7)
    # Filters hold across pages too.
    first = get(client, "/v1/audit", world.admin, actor="carol", limit=20).json
    assert len(first["events"]) == 20 and first["next_cursor"]
    rest = get(client, "/v1/audit", world.admin, actor="carol", limit=20, cursor=first["next_cursor"])
    assert [e["actor"] for e in rest.json["events"]] == ["carol"] * 3
    assert rest.json["next_cursor"] is None


def test_default_limit_is_50(app, client, world):
    record(app, 60)
    response = client.get("/v1/audit", headers=world.auditor)
    assert len(response.json["events"]) == 50
    assert response.json["next_cursor"]


@pytest.mark.parametrize("params,field", [
    ({"since": "yesterday"}, "since"),
    ({"until": "2020-13-01T00:00:00Z"}, "until"),
    ({"since": "2020-01-01T00:00:00 01:00"}, "since"),     # an unencoded + became a space
    ({"since": "２０２０-01-01"}, "since"),
    ({"since": "2020-01-02", "until": "2020-01-01"}, "until"),
    ({"limit": "0"}, "limit"),
    ({"limit": "201"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"limit": "-5"}, "limit"),
    ({"limit": "１０"}, "limit"),
    ({"cursor": "garbage!"}, "cursor"),
    ({"cursor": "c2VxOi0x"}, "cursor"),                    # "seq:-1"
    ({"actor": ""}, "actor"),
    ({"actor": "eve\x00"}, "actor"),
    ({"action": "x" * 300}, "action"),
])
def test_bad_parameters_are_412(client, world, params, field):
    response = get(client, "/v1/audit", world.auditor, **params)
    assert response.status_code == 412, response.json
    assert response.json["error"] == "invalid_params"
    assert field in {e["field"] for e in response.json["errors"]}


def test_a_cursor_from_this_api_round_trips(app, client, world):
    seqs = record(app, 3)
    response = get(client, "/v1/audit", world.auditor, cursor=encode_cursor(seqs[-1]), limit=2)
    assert [e["seq"] for e in response.json["events"]] == [seqs[1], seqs[0]]


# ---- export ------------------------------------------------------------------------------------
def test_export_streams_ndjson_that_matches_the_log(app, client, world, db_session):
    record(app, 5, actor="carol", action="test.export")
    response = client.get("/v1/audit/export", headers={**world.auditor, **NDJSON})
    assert response.mimetype == "application/x-ndjson"
    assert response.is_streamed
    assert "attachment" in response.headers["Content-Disposition"]
    assert response.headers["Cache-Control"] == "no-store"
    lines = export_lines(response)
    assert [line["seq"] for line in lines] == all_seqs(db_session)           # oldest first
    listed = get(client, "/v1/audit", world.auditor, limit=200).json["events"]
    assert lines == list(reversed(listed))


def test_export_applies_the_filters_without_pagination(app, client, world):
    seqs = record(app, 260, actor="bulk", action="test.bulk", at=T0, step=timedelta(seconds=1))
    everything = export_lines(get(client, "/v1/audit/export", {**world.admin, **NDJSON},
                                  actor="bulk"))
    assert [line["seq"] for line in everything] == seqs
    window = export_lines(get(client, "/v1/audit/export", {**world.admin, **NDJSON},
                              action="test.bulk", since="2020-01-01T00:01:00Z",
                              until="2020-01-01T00:02:00Z"))
    assert [line["seq"] for line in window] == seqs[60:120]
    assert export_lines(get(client, "/v1/audit/export", world.admin, actor="nobody")) == []


def test_iterate_events_reads_in_batches(app, db_session):
    seqs = record(app, 20, actor="batch")
    got = [e.seq for e in iterate_events(db_session, AuditFilters(actor="batch"), batch=7)]
    assert got == seqs
    assert [e.seq for e in iterate_events(db_session, AuditFilters(actor="batch"), batch=4)] == seqs


@pytest.mark.parametrize("accept,status", [
    ("application/x-ndjson", 200), ("*/*", 200), ("application/json", 200),
    ("application/*", 200), ("text/html", 406), ("text/csv", 406),
])
def test_export_negotiates_ndjson(client, world, accept, status):
    response = client.get("/v1/audit/export", headers={**world.auditor, "Accept": accept})
    assert response.status_code == status
    if status == 406:
        assert response.json["error"] == "not_acceptable"


def test_export_refuses_bad_parameters_in_json(client, world):
    response = get(client, "/v1/audit/export", {**world.auditor, **NDJSON}, since="soon")
    assert response.status_code == 412
    assert response.mimetype == "application/json"
    assert response.json["errors"][0]["field"] == "since"


# ---- verification ------------------------------------------------------------------------------
def test_verify_reports_an_intact_chain(app, client, world, db_session):
    record(app, 5)
    response = client.get("/v1/audit/verify", headers=world.auditor)
    assert response.status_code == 200
    assert response.json == {"message": f"Audit chain intact: {head_seq(db_session)} events.",
                             "ok": True, "events": head_seq(db_session),
                             "first_broken_seq": None, "problem": None}


def _forged_row(db_session, *, seq: int, prev_hash: str, correct_hash: bool) -> dict:
    """A row hashed, when `correct_hash`, with the real key: the worst case, a forger holding it."""
    key = audit.session_keys(db_session).signing
    forged = AuditEvent(id=new_id(), seq=seq, at=utcnow().replace(microsecond=0), actor="mallory",
                        action="login.succeeded", target="mallory", ip="10.6.6.6", request_id=None,
                        details="{}", prev_hash=prev_hash, key_id=key.id)
    forged.hash = audit.event_hash(forged, key) if correct_hash else secrets.token_hex(32)
    return {column: getattr(forged, column) for column in
            ("id", "seq", "at", "actor", "action", "target", "ip", "request_id", "details",
             "prev_hash", "hash", "key_id")}


def _update_actor(db_session, mid, last):
    db_session.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = :s"), {"s": mid})
    return mid, "event content changed"


def _update_details(db_session, mid, last):
    db_session.execute(text("UPDATE audit_events SET details = :d WHERE seq = :s"),
                       {"d": '{"i":99,"note":"ü"}', "s": mid})
    return mid, "event content changed"


def _update_time(db_session, mid, last):
    db_session.execute(update(AuditEvent).where(AuditEvent.seq == mid + 1).values(at=T0))
    return mid + 1, "event content changed"


def _relink(db_session, mid, last):
    """Change a row and recompute its hash (even with the key): the row's entry MAC, made when
    it was appended, no longer matches (and the next row's link breaks)."""
    event = db_session.scalar(select(AuditEvent).where(AuditEvent.seq == mid))
    event.actor = "mallory"
    db_session.execute(update(AuditEvent).where(AuditEvent.seq == mid).values(
        actor="mallory", hash=audit.event_hash(event, audit.session_keys(db_session).signing)))
    db_session.expunge(event)
    return mid, "entry MAC"


def _delete_middle(db_session, mid, last):
    db_session.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": mid})
    return mid, "missing event"


def _delete_last(db_session, mid, last):
    db_session.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": last})
    return last, "removed"


def _delete_first(db_session, mid, last):
    db_session.execute(text("DELETE FROM audit_events WHERE seq = 1"))
    return 1, "missing event"


def _insert_plausible(db_session, mid, last):
    """A forged row after the last one: right seq and link, a well-formed but made-up hash."""
    prev = db_session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == last))
    db_session.execute(insert(AuditEvent).values(
        **_forged_row(db_session, seq=last + 1, prev_hash=prev, correct_hash=False)))
    return last + 1, "event inserted after the last one"


def _insert_in_the_middle(db_session, mid, last):
    """Make room by moving later rows up one seq, then slip a correctly hashed row in."""
    prev = db_session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == mid))
    for seq in range(last, mid, -1):
        db_session.execute(text("UPDATE audit_events SET seq = :n WHERE seq = :s"),
                           {"n": seq + 1, "s": seq})
    db_session.execute(insert(AuditEvent).values(
        **_forged_row(db_session, seq=mid + 1, prev_hash=prev, correct_hash=True)))
    # The forged row links perfectly; the row it pushed aside no longer does.
    return mid + 2, "link to previous event broken"


# ---- an attacker who can write the database but lacks AUDIT_CHAIN_KEY ---------------------------
WRONG_KEY = audit.chain_key(secrets.token_urlsafe(48))


def _rehash_from(db_session, mid, *, hasher, key_id="keep", actor="mallory"):
    """Change row `mid`, re-hash it and every row after it, and move the head to the new end."""
    db_session.expire_all()
    rows = list(db_session.scalars(select(AuditEvent).where(AuditEvent.seq >= mid)
                                   .order_by(AuditEvent.seq)))
    prev = rows[0].prev_hash
    for row in rows:
        if row.seq == mid:
            row.actor = actor
        if key_id != "keep":
            row.key_id = key_id
        row.prev_hash = prev
        row.hash = prev = hasher(row)
    db_session.flush()
    head = db_session.get(AuditChainHead, audit.HEAD_ID)
    head.last_hash = prev
    return head


def _rehash_with_plain_sha256(db_session, mid, last):
    """What the unkeyed chain could not see: a changed row, every hash after it recomputed."""
    _rehash_from(db_session, mid, hasher=audit.legacy_event_hash)
    return mid, "event content changed"


def _rehash_as_legacy_rows(db_session, mid, last):
    """The same, claiming the rows predate the key (key id cleared): no seal covers them."""
    _rehash_from(db_session, mid, hasher=audit.legacy_event_hash, key_id=None)
    return mid, "legacy unkeyed events are not sealed"


def _rehash_with_a_wrong_key(db_session, mid, last):
    """Re-hash with a key of the attacker's own under the real key id, and sign the head."""
    head = _rehash_from(db_session, mid, hasher=lambda row: audit.event_hash(row, WRONG_KEY))
    head.signature = WRONG_KEY.sign(audit.checkpoint_message(head.seq, head.last_hash))
    return mid, "event content changed"


def _rehash_under_a_key_id_of_its_own(db_session, mid, last):
    head = _rehash_from(db_session, mid, hasher=lambda row: audit.event_hash(row, WRONG_KEY),
                        key_id=WRONG_KEY.id)
    head.key_id = WRONG_KEY.id
    head.signature = WRONG_KEY.sign(audit.checkpoint_message(head.seq, head.last_hash))
    return mid, "not configured"


def _truncate(db_session, last, removed, *, sign=None):
    """Delete the last `removed` events and move the head back to the new last one."""
    db_session.execute(text("DELETE FROM audit_events WHERE seq > :s"), {"s": last - removed})
    new_last = db_session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == last - removed))
    values = {"seq": last - removed, "last_hash": new_last}
    if sign is not None:
        values.update(key_id=sign.id, signature=sign.sign(audit.checkpoint_message(
            last - removed, new_last)))
    db_session.execute(update(AuditChainHead).where(AuditChainHead.id == audit.HEAD_ID)
                       .values(**values))
    return last - removed + 1, "events after the last one were removed"


def _truncate_and_move_the_head_back(db_session, mid, last):
    return _truncate(db_session, last, 2)


def _truncate_and_sign_the_head_with_a_wrong_key(db_session, mid, last):
    return _truncate(db_session, last, 3, sign=WRONG_KEY)


def _truncate_and_erase_the_signature(db_session, mid, last):
    broken = _truncate(db_session, last, 1)
    db_session.execute(update(AuditChainHead).values(signature=None, key_id=None))
    return broken


TAMPERING = [_update_actor, _update_details, _update_time, _relink, _delete_middle, _delete_last,
             _delete_first, _insert_plausible, _insert_in_the_middle,
             _rehash_with_plain_sha256, _rehash_as_legacy_rows, _rehash_with_a_wrong_key,
             _rehash_under_a_key_id_of_its_own, _truncate_and_move_the_head_back,
             _truncate_and_sign_the_head_with_a_wrong_key, _truncate_and_erase_the_signature]


@pytest.mark.parametrize("tamper", TAMPERING, ids=lambda f: f.__name__.lstrip("_"))
def test_verify_finds_the_first_tampered_row(app, client, world, db_session, runner, tamper):
    seqs = record(app, 6)
    mid, last = seqs[2], head_seq(db_session)
    assert last == seqs[-1]
    broken, problem = tamper(db_session, mid, last)
    db_session.commit()

    response = client.get("/v1/audit/verify", headers=world.admin)
    assert response.status_code == 200
    body = response.json
    assert body["ok"] is False, body
    assert body["first_broken_seq"] == broken, body
    assert problem in body["problem"]
    assert body["events"] == broken - 1
    assert body["message"] == f"Audit chain broken at event {broken}: {body['problem']}."
    # The log itself stays readable for the people investigating.
    assert client.get("/v1/audit", headers=world.auditor).status_code == 200
    assert export_lines(client.get("/v1/audit/export", headers={**world.auditor, **NDJSON}))

    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 1
    assert f"broken at event {broken}" in result.output


def test_verify_finds_a_correctly_hashed_row_appended_after_the_head(app, client, world, db_session):
    record(app, 3)
    last = head_seq(db_session)
    prev = db_session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == last))
    db_session.execute(insert(AuditEvent).values(
        **_forged_row(db_session, seq=last + 1, prev_hash=prev, correct_hash=True)))
    db_session.commit()
    body = client.get("/v1/audit/verify", headers=world.admin).json
    assert body["ok"] is False
    assert body["first_broken_seq"] == last + 1, body


def test_a_tampered_details_text_that_is_not_json_is_shown_as_text(app, client, world, db_session):
    seq = record(app)[0]
    db_session.execute(text("UPDATE audit_events SET details = 'oops' WHERE seq = :s"), {"s": seq})
    db_session.commit()
    event = get(client, "/v1/audit", world.auditor, limit=1).json["events"][0]
    assert event["seq"] == seq and event["details"] == "oops"
    assert client.get("/v1/audit/verify", headers=world.auditor).json["first_broken_seq"] == seq


def test_cli_verify_passes_on_an_intact_chain(app, runner, world, db_session):
    record(app, 3)
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 0
    assert f"intact: {db_session.scalar(select(func.count()).select_from(AuditEvent))} events" \
        in result.output


def test_reading_the_log_writes_nothing_to_it(client, world, db_session):
    before = head_seq(db_session)
    for path in PATHS:
        client.get(path, headers={**world.auditor, **NDJSON})
    assert head_seq(db_session) == before
