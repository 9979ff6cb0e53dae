"""pending expiry and expiry warnings: a rule's pending_ttl_minutes, a request's pending
deadline, why it expired, and the grant end that was last warned about

Requests still pending when this runs get the default deadline (created_at + 1440 minutes),
so they expire like new ones; requests already expired were grants that ended.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 08:00:00
"""
from datetime import timedelta

from alembic import op
import sqlalchemy as sa
import security_api.db


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

DEFAULT_PENDING_TTL_MINUTES = 1440


def upgrade() -> None:
    with op.batch_alter_table('policy_rules', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pending_ttl_minutes', sa.Integer(), nullable=False,
                                      server_default=str(DEFAULT_PENDING_TTL_MINUTES)))
    with op.batch_alter_table('access_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pending_expires_at', security_api.db.UTCDateTime(),
                                      nullable=True))
        batch_op.add_column(sa.Column('expired_reason', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('expiry_warned_for', security_api.db.UTCDateTime(),
                                      nullable=True))
        batch_op.create_index(batch_op.f('ix_access_requests_pending_expires_at'),
                              ['pending_expires_at'], unique=False)
    _backfill()


def _backfill() -> None:
    bind = op.get_bind()
    requests = sa.table('access_requests', sa.column('id', sa.String),
                        sa.column('status', sa.String),
                        sa.column('created_at', security_api.db.UTCDateTime()),
                        sa.column('pending_expires_at', security_api.db.UTCDateTime()),
                        sa.column('expired_reason', sa.String))
    bind.execute(requests.update().where(requests.c.status == 'expired')
                 .values(expired_reason='ended'))
    pending = bind.execute(sa.select(requests.c.id, requests.c.created_at)
                           .where(requests.c.status == 'pending')).all()
    for request_id, created_at in pending:
        bind.execute(requests.update().where(requests.c.id == request_id).values(
            pending_expires_at=created_at + timedelta(minutes=DEFAULT_PENDING_TTL_MINUTES)))


def downgrade() -> None:
    with op.batch_alter_table('access_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_access_requests_pending_expires_at'))
        batch_op.drop_column('expiry_warned_for')
        batch_op.drop_column('expired_reason')
        batch_op.drop_column('pending_expires_at')
    with op.batch_alter_table('policy_rules', schema=None) as batch_op:
        batch_op.drop_column('pending_ttl_minutes')
