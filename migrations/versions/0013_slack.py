"""slack: users.slack_user_id, the posted Slack messages, and the replay store of interactions

Revision ID: 0013
Revises: 0012 (merged from the stepup branch; the lead re-chains)
Create Date: 2026-12-06 08:00:00
"""
from alembic import op
import sqlalchemy as sa
import security_api.db


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('slack_user_id', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_users_slack_user_id'), ['slack_user_id'],
                              unique=True)
    op.create_table('slack_messages',
    sa.Column('request_id', sa.String(length=36), nullable=False),
    sa.Column('channel', sa.String(length=64), nullable=True),
    sa.Column('ts', sa.String(length=64), nullable=True),
    sa.Column('posted_at', security_api.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['request_id'], ['access_requests.id'], ),
    sa.PrimaryKeyConstraint('request_id')
    )
    op.create_table('slack_interactions',
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('seen_at', security_api.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('digest')
    )
    op.create_index(op.f('ix_slack_interactions_seen_at'), 'slack_interactions', ['seen_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_slack_interactions_seen_at'), table_name='slack_interactions')
    op.drop_table('slack_interactions')
    op.drop_table('slack_messages')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_users_slack_user_id'))
        batch_op.drop_column('slack_user_id')
