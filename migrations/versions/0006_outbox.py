"""outbox: notifications written with the change, delivered after commit

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 05:00:00
"""
from alembic import op
import sqlalchemy as sa
import security_api.db


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('outbox',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('created_at', security_api.db.UTCDateTime(), nullable=False),
    sa.Column('next_attempt_at', security_api.db.UTCDateTime(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('claimed_until', security_api.db.UTCDateTime(), nullable=True),
    sa.Column('claim_token', sa.String(length=36), nullable=True),
    sa.Column('sent_channels', sa.Text(), nullable=False),
    sa.Column('last_error', sa.String(length=200), nullable=True),
    sa.Column('delivered_at', security_api.db.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_outbox_next_attempt_at'), 'outbox', ['next_attempt_at'],
                    unique=False)
    op.create_index(op.f('ix_outbox_delivered_at'), 'outbox', ['delivered_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_outbox_delivered_at'), table_name='outbox')
    op.drop_index(op.f('ix_outbox_next_attempt_at'), table_name='outbox')
    op.drop_table('outbox')
