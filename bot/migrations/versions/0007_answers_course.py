"""the course on every answer, for the course page's item analysis

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('answers') as batch:
        batch.add_column(sa.Column('course_id', sa.String(length=64), nullable=True))
    # Answers stored before this revision: their enrolment's course (an enrolment never changes course, and every
    # answer has its enrolment: the foreign key cascades). One set-based statement, on SQLite as on PostgreSQL.
    op.execute("UPDATE answers SET course_id = "
               "(SELECT enrolments.course_id FROM enrolments WHERE enrolments.id = answers.enrolment_id)")
    with op.batch_alter_table('answers') as batch:
        batch.alter_column('course_id', existing_type=sa.String(length=64), nullable=False)
        # Answers per question and option of one course (the course page): a range of this index, no join.
        batch.create_index('ix_answers_course_item', ['course_id', 'lesson', 'question', 'choice'], unique=False)
    # The simulator's enrolments (console transport; a handful), whose answers that count takes back out.
    with op.batch_alter_table('enrolments') as batch:
        batch.create_index('ix_enrolments_simulated', ['course_id'], unique=False,
                           postgresql_where=sa.text("channel = 'console'"), sqlite_where=sa.text("channel = 'console'"))


def downgrade() -> None:
    with op.batch_alter_table('enrolments') as batch:
        batch.drop_index('ix_enrolments_simulated')
    with op.batch_alter_table('answers') as batch:
        batch.drop_index('ix_answers_course_item')
        batch.drop_column('course_id')
