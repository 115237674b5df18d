"""sign-out ends every console session of the account begun before it

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa

import bot.models


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Console sessions are signed cookies: without a mark on the account, a copy of one outlived sign-out.
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('sessions_ended_at', bot.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.drop_column('sessions_ended_at')
