"""drift: findings of drift scans, and the schedule row of the periodic scan

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 08:00:00
"""
from alembic import op
import sqlalchemy as sa
import security_api.db


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('drift_findings',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('key', sa.String(length=400), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('provisioner', sa.String(length=64), nullable=False),
    sa.Column('permission_key', sa.String(length=64), nullable=True),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.Column('target', sa.String(length=200), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=False),
    sa.Column('ref', sa.Text(), nullable=False),
    sa.Column('found_at', security_api.db.UTCDateTime(), nullable=False),
    sa.Column('resolved_at', security_api.db.UTCDateTime(), nullable=True),
    sa.Column('resolution', sa.String(length=16), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_drift_findings_resolved_at'), 'drift_findings', ['resolved_at'],
                    unique=False)
    op.create_index('uq_drift_findings_open', 'drift_findings', ['key'], unique=True,
                    sqlite_where=sa.text('resolved_at IS NULL'),
                    postgresql_where=sa.text('resolved_at IS NULL'))
    op.create_table('drift_schedule',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('next_scan_at', security_api.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('drift_schedule')
    op.drop_index('uq_drift_findings_open', table_name='drift_findings',
                  sqlite_where=sa.text('resolved_at IS NULL'),
                  postgresql_where=sa.text('resolved_at IS NULL'))
    op.drop_index(op.f('ix_drift_findings_resolved_at'), table_name='drift_findings')
    op.drop_table('drift_findings')
