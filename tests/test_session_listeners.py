"""The audit chain and the metrics listen to the service's own sessions only.

Why: listeners on SQLAlchemy's global Session fired for any session in the process (a test's
own, a script's), appending to the chain or counting transitions behind the service's back.
"""
from __future__ import annotations

import uuid

from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from security_api import audit, metrics
from security_api.clock import utcnow
from security_api.db import ServiceSession
from security_api.models import AuditEvent

TRANSITIONS = "security_api_access_request_transitions_total"


def _transitions(status: str) -> float:
    return REGISTRY.get_sample_value(TRANSITIONS, {"status": status}) or 0.0


def _events(session) -> int:
    return session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()


def _record_probe(session) -> None:
    audit.record(session, action="probe", actor="tester", target=None, origin=audit.Origin(),
                 now=utcnow(), details={})


def test_the_service_factory_makes_service_sessions(app):
    factory = app.extensions["security_api"].session_factory
    with factory() as session:
        assert isinstance(session, ServiceSession)


def test_a_foreign_session_neither_chains_nor_counts(app):
    engine = app.extensions["security_api"].session_factory.kw["bind"]
    status = f"probe-{uuid.uuid4().hex[:8]}"
    with Session(engine) as foreign:
        before = _events(foreign)
        metrics.stage_request_status(foreign, status)
        _record_probe(foreign)  # staged only: no chain keys here, so chaining would raise
        foreign.commit()
    with Session(engine) as reader:
        assert _events(reader) == before
    assert _transitions(status) == 0.0


def test_a_service_session_chains_and_counts(app):
    factory = app.extensions["security_api"].session_factory
    status = f"probe-{uuid.uuid4().hex[:8]}"
    with factory() as session:
        before = _events(session)
        metrics.stage_request_status(session, status)
        _record_probe(session)
        session.commit()
        assert _events(session) == before + 1
        assert audit.verify_chain(session).ok
    assert _transitions(status) == 1.0
