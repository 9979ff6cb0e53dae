"""conflict sets: permissions of which a person may hold or wait for at most one

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 08:00:00
"""
from alembic import op
import sqlalchemy as sa
import security_api.db


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('conflict_sets',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.String(length=2000), nullable=False),
    sa.Column('created_at', security_api.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('conflict_set_members',
    sa.Column('set_name', sa.String(length=64), nullable=False),
    sa.Column('permission_key', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['permission_key'], ['permissions.key'], ),
    sa.ForeignKeyConstraint(['set_name'], ['conflict_sets.name'], ),
    sa.PrimaryKeyConstraint('set_name', 'permission_key')
    )
    op.create_index(op.f('ix_conflict_set_members_permission_key'), 'conflict_set_members',
                    ['permission_key'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_conflict_set_members_permission_key'),
                  table_name='conflict_set_members')
    op.drop_table('conflict_set_members')
    op.drop_table('conflict_sets')
