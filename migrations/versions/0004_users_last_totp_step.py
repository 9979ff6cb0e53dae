"""the last accepted TOTP step moves onto the user row; the totp_steps table goes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 01:45:00

With REDIS_URL set the replay mark lived only in Redis, so a code could work again after
Redis lost its data. The database is now the one authority: `users.last_totp_step`, moved
forward by a conditional update. Marks already kept in `totp_steps` are carried over.
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_totp_step', sa.BigInteger(), nullable=True))
    op.execute("UPDATE users SET last_totp_step = "
               "(SELECT totp_steps.step FROM totp_steps WHERE totp_steps.user_id = users.id)")
    op.drop_table('totp_steps')


def downgrade() -> None:
    op.create_table('totp_steps',
    sa.Column('user_id', sa.String(length=36), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('user_id')
    )
    op.execute("INSERT INTO totp_steps (user_id, step) "
               "SELECT id, last_totp_step FROM users WHERE last_totp_step IS NOT NULL")
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('last_totp_step')
