"""access_requests: read-back of grants and revokes (verified_at per step, owed read-backs)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 08:00:00
"""
from alembic import op
import sqlalchemy as sa

from security_api.db import UTCDateTime


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('access_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('grant_verified_at', UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('revoke_verified_at', UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('verify_due_at', UTCDateTime(), nullable=True))
        batch_op.create_index(batch_op.f('ix_access_requests_verify_due_at'), ['verify_due_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('access_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_access_requests_verify_due_at'))
        batch_op.drop_column('verify_due_at')
        batch_op.drop_column('revoke_verified_at')
        batch_op.drop_column('grant_verified_at')
