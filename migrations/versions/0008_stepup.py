"""permissions.step_up: risky permissions need a fresh TOTP code to request or decide

Revision ID: 0008_stepup
Revises: 0007
Create Date: 2026-12-06 08:10:00

Existing permissions keep working as before: the column defaults to false.
"""
from alembic import op
import sqlalchemy as sa


revision = '0008_stepup'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('permissions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('step_up', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('permissions', schema=None) as batch_op:
        batch_op.drop_column('step_up')
