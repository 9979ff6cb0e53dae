"""keyed audit chain: key id per event, signed checkpoint and legacy seal on the head

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 01:40:00

Rows written before this revision keep their plain SHA-256 hashes (key_id NULL); the
service writes HMAC-keyed rows from now on. `flask --app flask_api audit rekey` verifies
the legacy segment and seals it under the key (README "Audit").
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('key_id', sa.String(length=16), nullable=True))
    with op.batch_alter_table('audit_chain_head', schema=None) as batch_op:
        batch_op.add_column(sa.Column('key_id', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('signature', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('sealed_seq', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('sealed_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('seal_key_id', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('seal_signature', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('audit_chain_head', schema=None) as batch_op:
        for column in ('seal_signature', 'seal_key_id', 'sealed_hash', 'sealed_seq',
                       'signature', 'key_id'):
            batch_op.drop_column(column)
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_column('key_id')
