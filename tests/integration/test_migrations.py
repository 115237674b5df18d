"""Migrations on a database that already holds data: 0007 gives every stored answer its enrolment's course."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.exc import IntegrityError

from bot.db import MIGRATIONS, make_engine, migrate
from bot.models import Base

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
# (enrolment id, learner id, course, channel): two courses, two learners in both, one simulated enrolment
ENROLMENTS = [(1, 1, "seguridad-humana", "sms"), (2, 1, "ruta-segura", "sms"),
              (3, 2, "seguridad-humana", "whatsapp"), (4, 2, "ruta-segura", "telegram"),
              (5, 3, "ruta-segura", "console"), (6, 3, "seguridad-humana", "console")]


def _alembic(engine: Engine, action: str, revision: str) -> None:
    """As bot.db.migrate does, to a given revision."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _seed_at_0006(engine: Engine) -> dict[int, str]:
    """Learners, enrolments and answers as revision 0006 stores them (no course on the answers)."""
    _alembic(engine, "upgrade", "0006")
    expected: dict[int, str] = {}
    with engine.begin() as connection:
        for learner_id in (1, 2, 3):
            connection.execute(text(
                "INSERT INTO learners (id, phone, language, timezone, reasks, created_at) "
                "VALUES (:id, :phone, 'es', 'America/Mexico_City', 0, :now)"),
                {"id": learner_id, "phone": f"+52550000000{learner_id}", "now": NOW})
        for enrolment_id, learner_id, course, channel in ENROLMENTS:
            connection.execute(text(
                "INSERT INTO enrolments (id, learner_id, course_id, channel, position, state, reminders, "
                "enrolled_at) VALUES (:id, :learner, :course, :channel, 1, 'active', 0, :now)"),
                {"id": enrolment_id, "learner": learner_id, "course": course, "channel": channel, "now": NOW})
        answer_id = 0
        for enrolment_id, _learner, course, _channel in ENROLMENTS:
            for lesson in range(enrolment_id):  # a different number of answers per enrolment
                for question in range(2):
                    answer_id += 1
                    connection.execute(text(
                        "INSERT INTO answers (id, enrolment_id, lesson, question, choice, correct, answered_at) "
                        "VALUES (:id, :enrolment, :lesson, :question, :choice, :correct, :now)"),
                        {"id": answer_id, "enrolment": enrolment_id, "lesson": lesson, "question": question,
                         "choice": 1 + (answer_id % 3), "correct": answer_id % 2 == 0, "now": NOW})
                    expected[answer_id] = course
    return expected


def _answers(engine: Engine) -> list[tuple[int, int, int, int, int, bool]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(  # type: ignore[misc]
            "SELECT id, enrolment_id, lesson, question, choice, correct FROM answers ORDER BY id"))]


def test_0007_gives_every_stored_answer_its_enrolments_course(engine: Engine) -> None:
    expected = _seed_at_0006(engine)
    before = _answers(engine)
    migrate(engine)  # as the app starts: 0007 and anything after it
    with engine.connect() as connection:
        stored = dict(connection.execute(text("SELECT id, course_id FROM answers")).all())
        assert stored == expected and len(stored) == 2 * sum(e[0] for e in ENROLMENTS)
        # what the bench and the console rely on: the column declared NOT NULL and its index
        columns = {column["name"]: column for column in inspect(connection).get_columns("answers")}
        assert columns["course_id"]["nullable"] is False
        indexes = {index["name"]: index["column_names"] for index in inspect(connection).get_indexes("answers")}
        assert indexes["ix_answers_course_item"] == ["course_id", "lesson", "question", "choice"]
        assert indexes["ix_answers_enrolment_correct"] == ["enrolment_id", "correct"]
        # the migrated schema is the models' (SQLite rebuilt the table: constraints and indexes came along)
        diff = [d for d in compare_metadata(MigrationContext.configure(connection), Base.metadata)
                if "answers" in repr(d)]
        assert diff == []
    assert _answers(engine) == before  # nothing else changed
    with engine.begin() as connection:  # an answer without its course is refused
        with pytest.raises(IntegrityError), connection.begin_nested():
            connection.execute(text(
                "INSERT INTO answers (enrolment_id, lesson, question, choice, correct, answered_at) "
                "VALUES (1, 9, 0, 1, :true, :now)"), {"true": True, "now": NOW})
        with pytest.raises(IntegrityError), connection.begin_nested():  # first answers only, still
            connection.execute(text(
                "INSERT INTO answers (enrolment_id, course_id, lesson, question, choice, correct, answered_at) "
                "VALUES (1, 'seguridad-humana', 0, 0, 1, :true, :now)"), {"true": True, "now": NOW})
    with engine.begin() as connection:  # erasing a learner still takes their answers (the cascade survived)
        connection.execute(text("DELETE FROM learners WHERE id = 1"))
    with engine.connect() as connection:
        left = {row[0] for row in connection.execute(text("SELECT enrolment_id FROM answers"))}
    assert left == {3, 4, 5, 6}


def test_0007_downgrades_and_upgrades_again(engine: Engine) -> None:
    expected = _seed_at_0006(engine)
    before = _answers(engine)
    migrate(engine)
    _alembic(engine, "downgrade", "0006")
    with engine.connect() as connection:
        assert "course_id" not in {column["name"] for column in inspect(connection).get_columns("answers")}
        assert "ix_answers_course_item" not in {index["name"] for index in inspect(connection).get_indexes("answers")}
    assert _answers(engine) == before
    migrate(engine)
    with engine.connect() as connection:
        assert dict(connection.execute(text("SELECT id, course_id FROM answers")).all()) == expected


def test_0008_gives_the_outbox_its_queue_index_and_the_schema_is_the_models(engine: Engine) -> None:
    _alembic(engine, "upgrade", "0007")
    migrate(engine)
    with engine.connect() as connection:
        indexes = {index["name"]: index for index in inspect(connection).get_indexes("outbound_messages")}
        assert indexes["ix_outbound_queue"]["column_names"] == ["priority", "id"]
        # every table as the models declare it, after every migration
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    _alembic(engine, "downgrade", "0007")
    with engine.connect() as connection:
        assert "ix_outbound_queue" not in {i["name"] for i in inspect(connection).get_indexes("outbound_messages")}
    migrate(engine)


def test_a_claim_reads_the_queue_index_instead_of_sorting_the_backlog(engine: Engine) -> None:
    """The query plan of a claim: the queue index in (priority, id) order, no sort of every queued row."""
    from datetime import timedelta

    from bot.outbox import CLAIM_DUE

    migrate(engine)
    params = {"now": NOW + timedelta(minutes=1), "channels": ["sms"], "limit": 50}
    with engine.connect() as connection:
        connection.execute(text("INSERT INTO learners (id, phone, language, timezone, reasks, created_at) "
                                "VALUES (1, '+525500000001', 'es', 'America/Mexico_City', 0, :now)"), {"now": NOW})
        connection.execute(text(
            "INSERT INTO outbound_messages (idempotency_key, learner_id, channel, to_address, body, kind, priority, "
            "status, attempts, next_attempt_at, erase_after_send, created_at, updated_at) "
            "VALUES (:key, 1, 'sms', '+525500000001', 'x', 'lesson', 10, 'queued', 0, :now, :no, :now, :now)"),
            [{"key": f"k{n}", "now": NOW, "no": False} for n in range(200)])
        connection.execute(text("ANALYZE"))
        seen: list[tuple[str, object]] = []

        def grab(_conn, _cursor, statement, parameters, _context, _many):  # type: ignore[no-untyped-def]
            seen.append((statement, parameters))

        if connection.dialect.name == "postgresql":
            connection.execute(text("SET enable_seqscan = off"))  # a 200-row table: show the plan a backlog gets
        event.listen(connection, "before_cursor_execute", grab)
        assert len(connection.execute(CLAIM_DUE, params).all()) == 50  # one batch of the 200
        event.remove(connection, "before_cursor_execute", grab)
        statement, parameters = seen[0]
        if connection.dialect.name == "postgresql":
            plan = "\n".join(row[0] for row in connection.exec_driver_sql("EXPLAIN " + statement, parameters))
            assert "ix_outbound_queue" in plan and "Sort" not in plan, plan
        else:
            plan = "\n".join(str(row[-1]) for row in connection.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + statement, parameters))
            assert "ix_outbound_queue" in plan and "TEMP B-TREE" not in plan, plan
        connection.rollback()
