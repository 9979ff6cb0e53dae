"""portal sessions: server-side browser sessions

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 02:00:00
"""
from alembic import op
import sqlalchemy as sa
import security_api.db


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('portal_sessions',
    sa.Column('id_hash', sa.String(length=64), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('created_at', security_api.db.UTCDateTime(), nullable=False),
    sa.Column('last_seen_at', security_api.db.UTCDateTime(), nullable=False),
    sa.Column('expires_at', security_api.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id_hash')
    )
    op.create_index(op.f('ix_portal_sessions_expires_at'), 'portal_sessions', ['expires_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_portal_sessions_expires_at'), table_name='portal_sessions')
    op.drop_table('portal_sessions')
