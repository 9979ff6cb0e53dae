"""Reading the audit log: the contract's rendering, filtered lists with cursor pagination, export."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from security_api import cursors
from security_api.audit.sequencer import seal_for_reader
from security_api.clock import isoformat
from security_api.jsontext import loads_stored
from security_api.models import AuditEvent


@dataclass(frozen=True)
class AuditFilters:
    """What a reader narrows the log to: exact actor and action, `since` <= at < `until`."""

    actor: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _details(raw: str | None):
    """Parse the stored details; a row whose text is not JSON (tampered) shows the text itself."""
    try:
        return loads_stored(raw)
    except ValueError:
        return raw


def render(event: AuditEvent) -> dict:
    """Render an event as the contract describes it."""
    return {
        "id": event.id, "seq": event.seq, "at": isoformat(event.at), "actor": event.actor,
        "action": event.action, "target": event.target, "ip": event.ip,
        "request_id": event.request_id, "details": _details(event.details),
        "hash": event.hash, "prev_hash": event.prev_hash,
    }


def _filtered(filters: AuditFilters) -> Select:
    stmt = select(AuditEvent).where(AuditEvent.seq.is_not(None))
    if filters.actor is not None:
        stmt = stmt.where(AuditEvent.actor == filters.actor)
    if filters.action is not None:
        stmt = stmt.where(AuditEvent.action == filters.action)
    # Compared against the column, so the bound values go through UTCDateTime (naive UTC).
    if filters.since is not None:
        stmt = stmt.where(AuditEvent.at >= filters.since)
    if filters.until is not None:
        stmt = stmt.where(AuditEvent.at < filters.until)
    return stmt


def encode_cursor(seq: int) -> str:
    """Return an opaque cursor that continues after (below) the given sequence number."""
    return cursors.encode_seq(seq)


def list_events(session: Session, *, actor: str | None = None, action: str | None = None,
                since: datetime | None = None, until: datetime | None = None, limit: int,
                cursor: str | None = None) -> tuple[list[AuditEvent], str | None]:
    """Return one page of events, newest first (by seq), and the cursor of the next page.

    Every committed event is sealed first, so the list shows it; unsealed rows (no seq) never
    appear.
    """
    seal_for_reader(session)
    stmt = _filtered(AuditFilters(actor, action, since, until))
    if cursor:
        stmt = stmt.where(AuditEvent.seq < cursors.decode_seq(cursor))
    rows = list(session.scalars(stmt.order_by(AuditEvent.seq.desc()).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1].seq) if len(rows) > limit else None
    return rows[:limit], next_cursor


def iterate_events(session: Session, filters: AuditFilters, *, batch: int = 500) -> Iterator[AuditEvent]:
    """Yield every sealed matching event oldest first (by seq), `batch` rows at a time,
    after sealing every committed event."""
    seal_for_reader(session)
    last_seq = None
    while True:
        stmt = _filtered(filters)
        if last_seq is not None:
            stmt = stmt.where(AuditEvent.seq > last_seq)
        rows = list(session.scalars(stmt.order_by(AuditEvent.seq).limit(batch)))
        if not rows:
            return
        yield from rows
        last_seq = rows[-1].seq
        # Keep memory flat on long exports: the rendered rows are not needed any more.
        session.expunge_all()
        if len(rows) < batch:
            return
