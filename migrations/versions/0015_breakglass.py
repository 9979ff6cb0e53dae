"""break-glass: a rule's review window, and one review row per break-glass request

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 08:10:00
"""
from alembic import op
import sqlalchemy as sa
import security_api.db


revision = '0015'
# Chained after 0008_stepup, which this branch merged (step-up is called by break-glass).
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rules get the default window; it only matters for break_glass rules.
    with op.batch_alter_table('policy_rules', schema=None) as batch_op:
        batch_op.add_column(sa.Column('review_within_minutes', sa.Integer(),
                                      server_default='1440', nullable=False))
    op.create_table('break_glass_reviews',
    sa.Column('request_id', sa.String(length=36), nullable=False),
    sa.Column('due_at', security_api.db.UTCDateTime(), nullable=False),
    sa.Column('verdict', sa.String(length=16), nullable=True),
    sa.Column('reviewer_id', sa.String(length=36), nullable=True),
    sa.Column('reviewed_at', security_api.db.UTCDateTime(), nullable=True),
    sa.Column('comment', sa.String(length=2000), nullable=False),
    sa.Column('overdue_notified_at', security_api.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['request_id'], ['access_requests.id'], ),
    sa.ForeignKeyConstraint(['reviewer_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('request_id')
    )
    op.create_index('ix_break_glass_reviews_open', 'break_glass_reviews', ['verdict', 'due_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_break_glass_reviews_open', table_name='break_glass_reviews')
    op.drop_table('break_glass_reviews')
    with op.batch_alter_table('policy_rules', schema=None) as batch_op:
        batch_op.drop_column('review_within_minutes')
