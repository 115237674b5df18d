"""why a learner opted out

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('learners') as batch:
        batch.add_column(sa.Column('opted_out_by', sa.String(length=16), nullable=True))
    # Opt-outs recorded before this revision: the reason is unknown, so treat them as the learner's own STOP
    # (never lifted by anything but the learner's START).
    op.execute("UPDATE learners SET opted_out_by = 'keyword' WHERE opted_out_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('learners') as batch:
        batch.drop_column('opted_out_by')
