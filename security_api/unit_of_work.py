"""The one place a public operation ends its transaction.

Why: helpers used to roll back before raising, each in its own way, so nobody could tell who
owned a transaction. Now helpers only raise; the public operation runs its database work inside
`unit_of_work(session)`, which commits when the block ends and rolls back when it raises (an
error after a failed flush on PostgreSQL leaves the session unusable until then).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session


@contextmanager
def unit_of_work(session: Session) -> Iterator[Session]:
    """Commit the block's work at its end, or roll all of it back if the block raises."""
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    session.commit()


def end_reads(session: Session) -> None:
    """End a read-only transaction before an outside call, so no lock or snapshot is held."""
    session.rollback()
