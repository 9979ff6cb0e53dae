"""auditseal: audit events are appended unsealed, then a sequencer chains them in batches

seq, prev_hash and hash become nullable (NULL: appended, not sealed yet); append_key orders the
pending events and entry_mac covers their content until they are sealed. Existing rows are
sealed already: their new columns stay NULL.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 11:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

PENDING = "seq IS NULL"


def upgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('append_key', sa.String(length=48), nullable=True))
        batch_op.add_column(sa.Column('entry_mac', sa.String(length=64), nullable=True))
        batch_op.alter_column('seq', existing_type=sa.BigInteger(), nullable=True)
        batch_op.alter_column('prev_hash', existing_type=sa.String(length=64), nullable=True)
        batch_op.alter_column('hash', existing_type=sa.String(length=64), nullable=True)
        batch_op.create_index('ix_audit_events_pending', ['append_key'], unique=False,
                              sqlite_where=sa.text(PENDING), postgresql_where=sa.text(PENDING))


def downgrade() -> None:
    # Seal pending events first (`flask audit verify` does): rows without a seq cannot go back.
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_pending', sqlite_where=sa.text(PENDING),
                            postgresql_where=sa.text(PENDING))
        batch_op.alter_column('hash', existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column('prev_hash', existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column('seq', existing_type=sa.BigInteger(), nullable=False)
        batch_op.drop_column('entry_mac')
        batch_op.drop_column('append_key')
