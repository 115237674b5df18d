"""Erasing a learner's data (BORRAR, SI), starting with a broken course folder, and GET /healthz."""

from __future__ import annotations

import logging
import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.channels.base import Rendered
from bot.config import Settings
from bot.dispatcher import utcnow
from bot.models import (
    Answer,
    Base,
    Enrolment,
    InboundMessage,
    Learner,
    LearnerAddress,
    MessageEvent,
    OutboundMessage,
)
from bot.outbox import enqueue
from tests.conftest import LESSONS, TwilioWebhook
from tests.fakes.twilio_api import FakeTwilio
from tests.helpers import count, settle

PHONE = "+525512345678"
DIGITS = "5512345678"


def every_stored_value(runtime) -> list[str]:  # type: ignore[no-untyped-def]
    """Every value in every table, as text (to look for a phone number anywhere)."""
    values = []
    with runtime.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in connection.execute(table.select()):
                values += [str(value) for value in row]
    return values


# -- erase -----------------------------------------------------------------------------------------


def test_borrar_then_si_erases_everything_and_still_confirms(twilio: TwilioWebhook, runtime,
                                                             fake_twilio: FakeTwilio) -> None:
    twilio.sms(PHONE, "SEGURIDAD")  # enrolled, lesson 1, question 1
    fake_twilio.wait_for(3)
    twilio.sms(PHONE, "2")  # right, question 2
    fake_twilio.wait_for(5)
    twilio.sms("whatsapp:+5215512345678", "ESTADO")  # the same person on WhatsApp: a second address
    fake_twilio.wait_for(6)
    settle(runtime)
    assert count(runtime, Learner) == 1
    assert count(runtime, Enrolment) == 1
    assert count(runtime, Answer) == 1
    assert count(runtime, LearnerAddress) == 2
    assert count(runtime, OutboundMessage) == 6
    assert count(runtime, MessageEvent) == 6

    twilio.sms(PHONE, "BORRAR")
    sent = fake_twilio.wait_for(7)
    assert sent[6].body.startswith("¿Borrar todos tus datos")
    assert count(runtime, Learner) == 1  # only asked, nothing erased yet

    response = twilio.sms(PHONE, "  Sí. ")
    assert response.status_code == 200
    sent = fake_twilio.wait_for(8)
    assert sent[7].to == PHONE
    assert sent[7].body == "Tus datos fueron borrados. Si vuelves a escribir, empezaras de cero."
    settle(runtime)

    assert count(runtime, Learner) == 0
    assert count(runtime, Enrolment) == 0
    assert count(runtime, Answer) == 0
    assert count(runtime, LearnerAddress) == 0
    with runtime.factory() as session:
        inbound = list(session.scalars(select(InboundMessage)))
        assert len(inbound) == 5  # ids kept (so a repeat is still recognised), texts gone
        assert [(m.body, m.learner_id) for m in inbound] == [(None, None)] * 5
        [confirmation] = session.scalars(select(OutboundMessage))
        assert confirmation.status == "sent"
        assert confirmation.learner_id is None
        assert confirmation.body == ""
        assert DIGITS not in confirmation.to_address
        assert confirmation.provider_id == sent[7].sid
        # only the confirmation's own history is left
        assert {e.message_id for e in session.scalars(select(MessageEvent))} == {confirmation.id}
    leftovers = [value for value in every_stored_value(runtime) if DIGITS in value]
    assert leftovers == []
    for text in ("SEGURIDAD", "BORRAR", "Pregunta", "Borrar todos"):
        assert not [value for value in every_stored_value(runtime) if text in value]

    # the learner is a stranger now: writing again starts from scratch
    twilio.sms(PHONE, "hola")
    assert "1) Ruta segura" in fake_twilio.wait_for(9)[8].body
    assert count(runtime, Learner) == 1
    assert count(runtime, Enrolment) == 0


def test_borrar_then_anything_else_erases_nothing(twilio: TwilioWebhook, runtime,
                                                  fake_twilio: FakeTwilio) -> None:
    twilio.sms(PHONE, "SEGURIDAD")
    fake_twilio.wait_for(3)
    twilio.sms(PHONE, "BORRAR")
    fake_twilio.wait_for(4)
    twilio.sms(PHONE, "no")
    sent = fake_twilio.wait_for(5)
    assert sent[4].body == "No se borro nada."
    assert count(runtime, Learner) == 1
    assert count(runtime, Enrolment) == 1
    with runtime.factory() as session:
        assert list(session.scalars(select(InboundMessage.body).order_by(InboundMessage.id))) == [
            "SEGURIDAD", "BORRAR", "no"]


def test_erase_cancels_what_was_still_queued(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    twilio.sms(PHONE, "hola")
    fake_twilio.wait_for(1)
    twilio.sms(PHONE, "DELETE")
    fake_twilio.wait_for(2)
    settle(runtime)
    # a lesson queued for later (a drip due tomorrow) must vanish with the learner
    with runtime.factory() as session, session.begin():
        learner_id = session.scalars(select(Learner.id)).one()
        enqueue(session, key="drip:test", learner_id=learner_id, channel="sms", to_address=PHONE,
                parts=[Rendered("lesson for tomorrow")], kind="lesson", now=utcnow() + timedelta(days=1))
    twilio.sms(PHONE, "YES")
    fake_twilio.wait_for(3)
    settle(runtime)
    assert [r.body for r in _outbound(runtime)] == [""]
    assert not [m for m in fake_twilio.messages if m.body == "lesson for tomorrow"]


def _outbound(runtime) -> list[OutboundMessage]:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        return list(session.scalars(select(OutboundMessage).order_by(OutboundMessage.id)))


# -- startup with broken courses -------------------------------------------------------------------

GOOD_COURSE = """\
title: {es: "Curso roto", en: "Broken course"}
description: {es: "Prueba", en: "Test"}
keywords: [ROTO, BROKEN]
languages: [es, en]
schedule: {days: daily, at: "09:00"}
timezone: America/Mexico_City
pass_mark: 0.7
channels: [sms, whatsapp, telegram]
"""

OUT_OF_RANGE_LESSON = """\
title: {es: "Uno", en: "One"}
body: {es: "Texto", en: "Text"}
quiz:
  - ask: {es: "¿Cuál?", en: "Which?"}
    options:
      - {es: "A", en: "A"}
      - {es: "B", en: "B"}
    answer: 3
"""

BAD_YAML_COURSE = """\
title: {es: "Sin cerrar", en: "Unclosed"
keywords: [ABIERTO]
"""


@pytest.fixture
def broken_lessons(tmp_path: Path) -> Path:
    root = tmp_path / "lessons"
    shutil.copytree(LESSONS, root)
    (root / "roto").mkdir()
    (root / "roto" / "course.yaml").write_text(GOOD_COURSE, encoding="utf-8")
    (root / "roto" / "01-uno.yaml").write_text(OUT_OF_RANGE_LESSON, encoding="utf-8")
    (root / "mal-yaml").mkdir()
    (root / "mal-yaml" / "course.yaml").write_text(BAD_YAML_COURSE, encoding="utf-8")
    (root / "mal-yaml" / "01-uno.yaml").write_text(OUT_OF_RANGE_LESSON.replace("answer: 3", "answer: 1"),
                                                   encoding="utf-8")
    return root


def test_broken_course_is_left_out_and_logged_once(make_app, broken_lessons: Path, twilio: TwilioWebhook,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    application = make_app(lessons_dir=str(broken_lessons))
    client = application.test_client()

    health = client.get("/healthz")
    assert health.status_code == 200
    data = health.get_json()
    assert data["status"] == "ok"
    assert data["courses"] == ["ruta-segura", "seguridad-humana"]
    assert data["course_problems"] == 2

    lesson = broken_lessons / "roto" / "01-uno.yaml"
    course = broken_lessons / "mal-yaml" / "course.yaml"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    about_lesson = [m for m in errors if str(lesson) in m]
    about_course = [m for m in errors if str(course) in m]
    assert len(about_lesson) == 1, errors
    assert len(about_course) == 1, errors
    assert re.search(re.escape(f"{lesson}:8: ") + r"quiz\[1\]\.answer: 3 is out of range", about_lesson[0])
    assert re.search(re.escape(f"{course}:2: YAML syntax error"), about_course[0])
    assert not [m for m in errors if "ruta-segura" in m or "seguridad-humana" in m]

    # the broken course's keyword enrols nobody; the menu lists the valid courses only
    runtime = application.extensions["vereda"]
    assert [c.id for c in runtime.catalog.courses] == ["ruta-segura", "seguridad-humana"]
    assert runtime.catalog.by_keyword("ROTO") is None


def test_missing_lessons_folder_still_starts(make_app, tmp_path: Path) -> None:
    application = make_app(lessons_dir=str(tmp_path / "nowhere"))
    health = application.test_client().get("/healthz")
    assert health.status_code == 200
    assert health.get_json()["courses"] == []
    assert health.get_json()["course_problems"] == 1


# -- health ----------------------------------------------------------------------------------------


def test_healthz(client, settings: Settings) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    data = response.get_json()
    assert data["status"] == "ok"
    assert data["database"] == ("sqlite" if settings.database_url.startswith("sqlite") else "postgresql")
    assert data["courses"] == ["ruta-segura", "seguridad-humana"]
    assert data["channels"] == ["sms", "whatsapp"]
    assert data["course_problems"] == 0


def test_healthz_is_503_when_the_database_does_not_answer(make_app, tmp_path: Path) -> None:
    application = make_app()
    runtime = application.extensions["vereda"]
    runtime.engine.dispose()
    from sqlalchemy import create_engine

    runtime.engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none",
                                   connect_args={"connect_timeout": 1})
    response = application.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["status"] == "error"


# -- vereda lessons check -----------------------------------------------------------------------------------


def test_lessons_check_reports_each_course_and_its_sms_cost(cli) -> None:  # type: ignore[no-untyped-def]
    _code, lines = cli("lessons", "check", str(LESSONS))
    assert lines[-1] == "ok: 2 course(s)"
    assert any(line.startswith("ruta-segura: 10 lesson(s)") for line in lines)
    assert "  ruta-segura/01-copias-de-documentos [sms es] GSM-7, 2 segments, 201 units" in lines


def test_lessons_check_names_each_problem_at_its_line_and_fails(cli, broken_lessons: Path) -> None:  # type: ignore[no-untyped-def]
    code, lines = cli("lessons", "check", str(broken_lessons), ok=False)
    assert code == 1
    lesson = broken_lessons / "roto" / "01-uno.yaml"
    assert any(line.startswith(f"{lesson}:") and "answer" in line for line in lines)
    assert any(line.startswith(f"{broken_lessons / 'mal-yaml' / 'course.yaml'}:") for line in lines)
    assert lines[-1] == "2 problem(s)"
    assert any(line.startswith("ruta-segura:") for line in lines)  # the valid courses are still reported


def test_lessons_check_on_one_course_folder_points_at_its_parent(cli) -> None:  # type: ignore[no-untyped-def]
    code, lines = cli("lessons", "check", str(LESSONS / "ruta-segura"), ok=False)
    assert code == 1
    assert lines[-1] == (f"{LESSONS / 'ruta-segura'}: no courses found; it is one course: check the folder that "
                         f"holds it ({LESSONS.resolve()})")
    code, lines = cli("lessons", "check", str(LESSONS / "nowhere"), ok=False)
    assert code != 0 and "nowhere" in lines[-1]
