"""extend a grant without a gap: access_requests.extends_id and continues_id

An extension is a request that asked to extend another (`extends_id`, kept for ever) and,
while it leans on that grant (pending, or approved before the grant ended), `continues_id`.
A leaning row holds no slot of its own in uq_access_requests_open; at most one extension per
grant waits at a time (uq_access_requests_open_extension).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 08:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

OLD_SLOT = "status IN ('pending', 'granting', 'active')"
NEW_SLOT = "status IN ('pending', 'granting', 'active') AND continues_id IS NULL"
PENDING = "status = 'pending'"


def _where(condition: str) -> dict:
    return {"sqlite_where": sa.text(condition), "postgresql_where": sa.text(condition)}


def upgrade() -> None:
    with op.batch_alter_table('access_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('extends_id', sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column('continues_id', sa.String(length=36), nullable=True))
        batch_op.create_foreign_key('fk_access_requests_extends_id', 'access_requests',
                                    ['extends_id'], ['id'])
        batch_op.create_foreign_key('fk_access_requests_continues_id', 'access_requests',
                                    ['continues_id'], ['id'])
        batch_op.create_index(batch_op.f('ix_access_requests_extends_id'), ['extends_id'],
                              unique=False)
        batch_op.drop_index('uq_access_requests_open', **_where(OLD_SLOT))
        batch_op.create_index('uq_access_requests_open', ['requester_id', 'permission_key'],
                              unique=True, **_where(NEW_SLOT))
        batch_op.create_index('uq_access_requests_open_extension', ['continues_id'],
                              unique=True, **_where(PENDING))


def downgrade() -> None:
    with op.batch_alter_table('access_requests', schema=None) as batch_op:
        batch_op.drop_index('uq_access_requests_open_extension', **_where(PENDING))
        batch_op.drop_index('uq_access_requests_open', **_where(NEW_SLOT))
        batch_op.create_index('uq_access_requests_open', ['requester_id', 'permission_key'],
                              unique=True, **_where(OLD_SLOT))
        batch_op.drop_index(batch_op.f('ix_access_requests_extends_id'))
        batch_op.drop_constraint('fk_access_requests_continues_id', type_='foreignkey')
        batch_op.drop_constraint('fk_access_requests_extends_id', type_='foreignkey')
        batch_op.drop_column('continues_id')
        batch_op.drop_column('extends_id')
