"""indexes for the console's dashboard and course statistics

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Right answers per enrolment (who passed a course) without reading the answers themselves.
    with op.batch_alter_table('answers') as batch:
        batch.create_index('ix_answers_enrolment_correct', ['enrolment_id', 'correct'], unique=False)
    # Active learners by channel (dashboard): read from the index alone.
    with op.batch_alter_table('enrolments') as batch:
        batch.create_index('ix_enrolments_state_channel', ['state', 'channel', 'learner_id'], unique=False)
    # Lessons sent today by outcome (dashboard): a range of the index, no table rows read.
    with op.batch_alter_table('outbound_messages') as batch:
        batch.create_index('ix_outbound_kind_created', ['kind', 'created_at', 'status', 'channel'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbound_messages') as batch:
        batch.drop_index('ix_outbound_kind_created')
    with op.batch_alter_table('enrolments') as batch:
        batch.drop_index('ix_enrolments_state_channel')
    with op.batch_alter_table('answers') as batch:
        batch.drop_index('ix_answers_enrolment_correct')
