"""The coordinators' API (/api/v1) on SQLite and PostgreSQL: roles on every route, learner lists (filters,
pagination, masking), details, enrol/unenrol, tags, broadcasts, course stats, streamed CSV exports, OpenAPI."""

from __future__ import annotations

import csv
import inspect
import io
import json
import logging
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

import bot.reports as reports
import bot.web.api as api
from bot import broadcasts
from bot.auth import create_token, revoke_token
from bot.dispatcher import utcnow
from bot.models import Answer, ApiToken, Broadcast, Enrolment, Learner, LearnerAddress, LearnerTag, OutboundMessage
from bot.runtime import Runtime
from bot.services import Envelope, receive
from scheduler import tick
from tests.conftest import TwilioWebhook, at
from tests.fakes.twilio_api import FakeTwilio

SEGURIDAD, RUTA = "seguridad-humana", "ruta-segura"
MEXICO = "America/Mexico_City"
LONG_AGO = at("2026-01-05 18:00")
NOON_MX = at("2026-06-02 18:00")  # 12:00 in Mexico City
PHONES = {"ana": "+525511110001", "beto": "+525511110002", "carla": "+12125550103", "eva": "+525511110005"}
DANI_CHAT = 987654321
ROLES = (None, "viewer", "coordinator", "admin")
BROADCAST_BODY = {"text": {"es": "Taller el lunes", "en": "Workshop on Monday"},
                  "segment": {"course": SEGURIDAD, "channel": "sms", "language": "es", "tag": "taller-cdmx"},
                  "send_at": None}


# -- helpers -----------------------------------------------------------------------------------------


def add_learner(runtime: Runtime, *, phone: str | None = None, chat: int | None = None, channel: str = "sms",
                language: str = "es", zone: str = MEXICO, course: str | None = None, state: str = "active",
                position: int = 0, question: int | None = None, right: int = 0, answered: int = 0,
                tags: tuple[str, ...] = (), opted_out: bool = False, last_inbound: datetime = LONG_AGO) -> int:
    """A learner inserted directly, with an address, optionally an enrolment with `answered` answers of which
    the first `right` are right, and tags."""
    with runtime.factory() as session, session.begin():
        learner = Learner(phone=phone, telegram_chat_id=chat, language=language, timezone=zone, reasks=0,
                          created_at=last_inbound, opted_out_at=last_inbound if opted_out else None)
        session.add(learner)
        session.flush()
        address = str(chat) if channel == "telegram" else (f"whatsapp:{phone}" if channel == "whatsapp" else phone)
        session.add(LearnerAddress(learner_id=learner.id, channel=channel, address=address,
                                   last_inbound_at=last_inbound))
        if course is not None:
            enrolment = Enrolment(learner_id=learner.id, course_id=course, channel=channel, position=position,
                                  question=question, state=state, reminders=0, enrolled_at=last_inbound,
                                  finished_at=last_inbound if state == "finished" else None)
            session.add(enrolment)
            session.flush()
            quiz = [(n, q) for n, lesson in enumerate(runtime.catalog.get(course).lessons)  # type: ignore[union-attr]
                    for q in range(len(lesson.quiz))]
            session.add_all([Answer(enrolment_id=enrolment.id, course_id=course, lesson=n, question=q, choice=1,
                                    correct=i < right, answered_at=last_inbound + timedelta(minutes=i))
                             for i, (n, q) in enumerate(quiz[:answered])])
        session.add_all([LearnerTag(learner_id=learner.id, tag=tag) for tag in tags])
        return learner.id


def questions(runtime: Runtime, course: str) -> int:
    return sum(len(lesson.quiz) for lesson in runtime.catalog.get(course).lessons)  # type: ignore[union-attr]


@pytest.fixture
def people(runtime: Runtime) -> dict[str, int]:
    """Five learners across channels, courses, states, languages, tags and opt-out."""
    ruta = questions(runtime, RUTA)
    return {
        "ana": add_learner(runtime, phone=PHONES["ana"], course=SEGURIDAD, question=1, right=1, answered=1,
                           tags=("taller-cdmx",)),
        "beto": add_learner(runtime, phone=PHONES["beto"], channel="whatsapp", course=RUTA, state="finished",
                            position=9, right=ruta, answered=ruta),
        "carla": add_learner(runtime, phone=PHONES["carla"], language="en", zone="America/New_York",
                             course=SEGURIDAD, state="paused", tags=("consulado",)),
        "dani": add_learner(runtime, chat=DANI_CHAT, channel="telegram", course=RUTA, state="finished", position=9,
                            right=0, answered=ruta, opted_out=True),
        "eva": add_learner(runtime, phone=PHONES["eva"]),
    }


@pytest.fixture
def tokens(runtime: Runtime) -> dict[str | None, dict[str, str]]:
    """Request headers per role (None: no token)."""
    headers: dict[str | None, dict[str, str]] = {None: {}}
    for role in ROLES[1:]:
        assert role is not None
        headers[role] = {"Authorization": f"Bearer {create_token(runtime.factory, role, utcnow())}"}
    return headers


@pytest.fixture
def as_role(client, tokens):  # type: ignore[no-untyped-def]
    """as_role(role, method, url, json=None) -> response."""

    def call(role: str | None, method: str, url: str, body: Any = None):  # type: ignore[no-untyped-def]
        return client.open(url, method=method, json=body, headers=tokens[role])

    return call


def names(response: Any, people: dict[str, int]) -> set[str]:
    by_id = {learner_id: name for name, learner_id in people.items()}
    return {by_id[item["id"]] for item in response.get_json()["items"]}


def quiet_dispatcher(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> None:
    """Keep what the API queued in the outbox (the in-process sender is not woken)."""
    monkeypatch.setattr(runtime.dispatcher, "wake", lambda: None)


# -- every route x every role --------------------------------------------------------------------------

# (method, url, body, the least role allowed, its success status)
ROUTES: list[tuple[str, str, Any, str, int]] = [
    ("GET", "/api/v1/learners", None, "viewer", 200),
    ("GET", "/api/v1/learners/{ana}", None, "viewer", 200),
    ("DELETE", "/api/v1/learners/{eva}", None, "admin", 200),
    ("POST", "/api/v1/learners/{eva}/enrolments", {"course": RUTA}, "coordinator", 201),
    ("DELETE", "/api/v1/learners/{ana}/enrolments/" + SEGURIDAD, None, "coordinator", 200),
    ("POST", "/api/v1/learners/{ana}/tags", {"tag": "nuevo"}, "coordinator", 201),
    ("DELETE", "/api/v1/learners/{ana}/tags/taller-cdmx", None, "coordinator", 200),
    ("GET", "/api/v1/broadcasts", None, "viewer", 200),
    ("POST", "/api/v1/broadcasts", BROADCAST_BODY, "coordinator", 201),
    ("POST", "/api/v1/broadcasts/preview", BROADCAST_BODY, "coordinator", 200),
    ("GET", "/api/v1/broadcasts/{broadcast}", None, "viewer", 200),
    ("POST", "/api/v1/broadcasts/{broadcast}/cancel", None, "coordinator", 200),
    ("GET", "/api/v1/courses", None, "viewer", 200),
    ("GET", "/api/v1/exports/progress.csv", None, "coordinator", 200),
    ("GET", "/api/v1/exports/answers.csv", None, "coordinator", 200),
]
ALLOWED = {"viewer": {"viewer", "coordinator", "admin"}, "coordinator": {"coordinator", "admin"}, "admin": {"admin"}}


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role or "no-token")
@pytest.mark.parametrize(("method", "url", "body", "least", "success"), ROUTES,
                         ids=[f"{method} {url}" for method, url, *_ in ROUTES])
def test_every_route_answers_each_role(role: str | None, method: str, url: str, body: Any, least: str, success: int,
                                       as_role, people: dict[str, int], runtime: Runtime,  # type: ignore[no-untyped-def]
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    quiet_dispatcher(monkeypatch, runtime)
    broadcast_id = broadcasts.create(runtime.factory, {"es": "Aviso"}, {}, utcnow() + timedelta(days=1),
                                     runtime.catalog, utcnow())
    response = as_role(role, method, url.format(**people, broadcast=broadcast_id), body)
    expected = 401 if role is None else success if role in ALLOWED[least] else 403
    assert response.status_code == expected, response.get_data(as_text=True)
    if expected in (401, 403):
        assert response.is_json and response.get_json()["error"]
    if expected == 201 and url == "/api/v1/broadcasts":
        assert response.get_json() == {"id": response.get_json()["id"]}


def flask_routes(app) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(METHOD, /api/v1/path/{param}) of every API route the app serves."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            found |= {(method, path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return found


def test_the_role_table_and_the_openapi_document_cover_every_route(app, client) -> None:  # type: ignore[no-untyped-def]
    served = flask_routes(app)
    tested = {(method, re.sub(r"\{(ana|eva)\}", "{learner_id}", url).replace("{broadcast}", "{broadcast_id}")
               .replace(SEGURIDAD, "{course_id}").replace("taller-cdmx", "{tag}")) for method, url, *_ in ROUTES}
    assert served - {("GET", "/api/v1/openapi.json")} == tested
    response = client.get("/api/v1/openapi.json")  # public: it describes, it reveals no data
    assert response.status_code == 200
    document = json.loads(response.get_data(as_text=True))
    assert document["openapi"] == "3.1.0"
    described = {(method.upper(), path) for path, item in document["paths"].items()
                 for method in item if method != "parameters"}
    assert described == served
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation["responses"], (method, path)
            if path != "/api/v1/openapi.json":
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
            if method in ("post",) and not path.endswith("/cancel"):
                assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(document)):
        assert ref in document["components"]["schemas"]


def test_bad_and_revoked_tokens_are_refused(client, runtime: Runtime) -> None:  # type: ignore[no-untyped-def]
    for header in ("Bearer nope", "Basic dXNlcjpwYXNz", "Bearer ", "vrd_abc"):
        response = client.get("/api/v1/learners", headers={"Authorization": header})
        assert response.status_code == 401 and response.get_json()["error"]
    token = create_token(runtime.factory, "admin", utcnow())
    assert client.get("/api/v1/learners", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with runtime.factory() as session:
        token_id = session.scalars(select(ApiToken.id).order_by(ApiToken.id.desc())).first()
    revoke_token(runtime.factory, token_id, utcnow())  # type: ignore[arg-type]
    assert client.get("/api/v1/learners", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_cli_tokens_are_created_listed_and_revoked_once(cli, client) -> None:  # type: ignore[no-untyped-def]
    _code, lines = cli("admin", "create-token", "--role", "coordinator", "--label", "mision")
    token = lines[-1]
    assert client.get("/api/v1/learners", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    _code, listed = cli("admin", "list-tokens")
    [row] = [line.split("\t") for line in listed]
    assert row[1:] == ["coordinator", "active", "mision"] and token not in "".join(listed)
    assert cli("admin", "revoke-token", row[0])[1] == [f"token {row[0]} revoked"]
    assert cli("admin", "revoke-token", row[0])[1] == [f"token {row[0]} was already revoked"]
    assert cli("admin", "list-tokens")[1] == [f"{row[0]}\tcoordinator\trevoked\tmision"]
    assert client.get("/api/v1/learners", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    code, lines = cli("admin", "revoke-token", "999", ok=False)
    assert code != 0 and lines[-1] == "Error: no token 999"


def test_unknown_routes_and_methods_answer_json(as_role) -> None:  # type: ignore[no-untyped-def]
    missing = as_role("admin", "GET", "/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.get_json()["error"]
    wrong = as_role("admin", "PUT", "/api/v1/courses")
    assert wrong.status_code == 405 and wrong.get_json()["error"] and "GET" in wrong.headers["Allow"]
    assert as_role("admin", "GET", "/api/v1/learners/999999").status_code == 404
    assert as_role("admin", "GET", "/api/v1/broadcasts/999999").status_code == 404


# -- learner lists ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "expected"), [
    ("", {"ana", "beto", "carla", "dani", "eva"}),
    (f"course={SEGURIDAD}", {"ana", "carla"}),
    (f"course={RUTA}", {"beto", "dani"}),
    ("channel=sms", {"ana", "carla", "eva"}),
    ("channel=whatsapp", {"beto"}),
    ("channel=telegram", {"dani"}),
    ("language=en", {"carla"}),
    ("language=es", {"ana", "beto", "dani", "eva"}),
    ("progress=finished", {"beto", "dani"}),
    ("progress=paused", {"carla"}),
    ("progress=active", {"ana"}),
    (f"progress=active&course={RUTA}", set()),
    ("tag=taller-cdmx", {"ana"}),
    ("tag=nadie", set()),
    ("opted_in=false", {"dani"}),
    ("opted_in=true", {"ana", "beto", "carla", "eva"}),
    (f"course={SEGURIDAD}&language=es&channel=sms", {"ana"}),
])
def test_each_filter(query: str, expected: set[str], as_role, people: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    response = as_role("viewer", "GET", f"/api/v1/learners?{query}")
    assert response.status_code == 200
    assert names(response, people) == expected
    assert response.get_json()["total"] == len(expected)


@pytest.mark.parametrize(("query", "field"), [
    ("course=nope", "course"), ("channel=fax", "channel"), ("language=fr", "language"),
    ("progress=lost", "progress"), ("opted_in=maybe", "opted_in"), ("page=0", "page"), ("page=x", "page"),
    ("per_page=501", "per_page"), ("per_page=-1", "per_page"), ("page=²", "page"), ("per_page=²", "per_page"),
    ("page=9223372036854775807", "page"), ("page=99999999999999999999999", "page"),
])
def test_invalid_filters_name_the_field(query: str, field: str, as_role) -> None:  # type: ignore[no-untyped-def]
    response = as_role("viewer", "GET", f"/api/v1/learners?{query}")
    assert response.status_code == 400
    assert response.get_json()["field"] == field and response.get_json()["error"]


def test_learners_are_paginated(as_role, people: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    seen: list[int] = []
    page: int | None = 1
    while page is not None:
        data = as_role("viewer", "GET", f"/api/v1/learners?per_page=2&page={page}").get_json()
        assert data["per_page"] == 2 and data["total"] == 5 and len(data["items"]) <= 2
        seen += [item["id"] for item in data["items"]]
        page = data["next_page"]
    assert seen == sorted(people.values())
    assert as_role("viewer", "GET", "/api/v1/learners?per_page=2&page=9").get_json()["items"] == []


def test_phone_numbers_are_masked_unless_admin(as_role, people: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    for role in ("viewer", "coordinator"):
        listed = as_role(role, "GET", "/api/v1/learners").get_json()
        text = json.dumps(listed, ensure_ascii=False)
        for phone in PHONES.values():
            assert phone not in text and phone[1:] not in text
        assert str(DANI_CHAT) not in text
        ana = next(item for item in listed["items"] if item["id"] == people["ana"])
        assert ana["phone"] == "•••0001"
        assert ana["channels"][0]["address"] == "•••0001"
        dani = next(item for item in listed["items"] if item["id"] == people["dani"])
        assert dani["telegram_chat_id"] == "•••4321" and dani["phone"] is None
        detail = as_role(role, "GET", f"/api/v1/learners/{people['beto']}").get_json()
        assert detail["phone"] == "•••0002" and detail["channels"][0]["address"] == "•••0002"
    exported = as_role("coordinator", "GET", "/api/v1/exports/progress.csv").get_data(as_text=True)
    assert "•••0001" in exported and PHONES["ana"] not in exported
    listed = as_role("admin", "GET", "/api/v1/learners").get_json()
    ana = next(item for item in listed["items"] if item["id"] == people["ana"])
    assert ana["phone"] == PHONES["ana"] and ana["channels"][0]["address"] == PHONES["ana"]
    beto = as_role("admin", "GET", f"/api/v1/learners/{people['beto']}").get_json()
    assert beto["channels"][0]["address"] == f"whatsapp:{PHONES['beto']}"
    assert PHONES["ana"] in as_role("admin", "GET", "/api/v1/exports/progress.csv").get_data(as_text=True)


def test_learner_summary_shape(as_role, people: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    carla = next(item for item in as_role("viewer", "GET", "/api/v1/learners?language=en").get_json()["items"])
    assert carla == {
        "id": people["carla"], "phone": "•••0103", "telegram_chat_id": None, "language": "en",
        "timezone": "America/New_York", "opted_in": True, "opted_out_at": None, "created_at": LONG_AGO.isoformat(),
        "channels": [{"channel": "sms", "address": "•••0103", "last_inbound_at": LONG_AGO.isoformat()}],
        "tags": ["consulado"],
        "enrolments": [{"course": SEGURIDAD, "channel": "sms", "state": "paused", "lesson": 1, "lessons": 7,
                        "question": None, "enrolled_at": LONG_AGO.isoformat(), "lesson_sent_at": None,
                        "next_due_at": None, "finished_at": None}],
    }


# -- learner detail --------------------------------------------------------------------------------------


def text_in(runtime: Runtime, phone: str, text: str, now: datetime | None = None) -> None:
    envelope = Envelope(channel="sms", provider_id="SM" + uuid.uuid4().hex, address=phone, text=text,
                        to="+15005550006")
    receive(runtime.factory, envelope, runtime.context(now or utcnow()), runtime.senders)


def test_learner_detail_has_progress_answers_and_messages(as_role, runtime: Runtime) -> None:  # type: ignore[no-untyped-def]
    phone = "+525512340000"
    text_in(runtime, phone, "SEGURIDAD")
    text_in(runtime, phone, "<script>alert('x')</script>")  # not an answer: re-asked, never graded
    text_in(runtime, phone, "1")
    with runtime.factory() as session:
        learner_id = session.scalars(select(Learner.id).where(Learner.phone == phone)).one()
    response = as_role("viewer", "GET", f"/api/v1/learners/{learner_id}")
    assert response.status_code == 200
    assert response.mimetype == "application/json" and response.headers["X-Content-Type-Options"] == "nosniff"
    detail = response.get_json()
    assert detail["id"] == learner_id and detail["phone"] == "•••0000"
    [enrolment] = detail["enrolments"]
    assert enrolment["course"] == SEGURIDAD and enrolment["state"] == "active" and enrolment["lesson"] == 1
    assert enrolment["lessons"] == 7
    total = questions(runtime, SEGURIDAD)
    assert enrolment["score"]["answered"] == 1 and enrolment["score"]["questions"] == total
    assert enrolment["score"]["passed"] is None  # not finished yet
    [answer] = detail["answers"]
    assert answer["course"] == SEGURIDAD and answer["lesson"] == 1 and answer["question"] == 1
    assert answer["choice"] == 1 and isinstance(answer["correct"], bool)
    assert enrolment["score"]["right"] == int(answer["correct"])
    inbound = [m["text"] for m in detail["messages"] if m["direction"] == "in"]
    assert inbound == ["SEGURIDAD", "<script>alert('x')</script>", "1"]  # exactly as written, as JSON strings
    outbound = [m for m in detail["messages"] if m["direction"] == "out"]
    assert outbound and {m["kind"] for m in outbound} >= {"lesson", "question"}
    assert all(m["status"] and m["at"] for m in outbound)
    times = [m["at"] for m in detail["messages"]]
    assert times == sorted(times)


def test_admin_erases_a_learner(as_role, people: dict[str, int], runtime: Runtime) -> None:  # type: ignore[no-untyped-def]
    assert as_role("coordinator", "DELETE", f"/api/v1/learners/{people['ana']}").status_code == 403
    response = as_role("admin", "DELETE", f"/api/v1/learners/{people['ana']}")
    assert response.status_code == 200 and response.get_json() == {"erased": people["ana"]}
    assert as_role("admin", "GET", f"/api/v1/learners/{people['ana']}").status_code == 404
    assert as_role("admin", "DELETE", f"/api/v1/learners/{people['ana']}").status_code == 404
    with runtime.factory() as session:
        assert session.scalar(select(func.count()).select_from(Answer)) == 2 * questions(runtime, RUTA)


# -- enrol / unenrol -------------------------------------------------------------------------------------


def test_enrolling_queues_lesson_1_and_the_learner_can_answer(as_role, people: dict[str, int], runtime: Runtime,  # type: ignore[no-untyped-def]
                                                             fake_twilio: FakeTwilio, twilio: TwilioWebhook,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "utcnow", lambda: NOON_MX)  # daytime for the learner (and already due)
    response = as_role("coordinator", "POST", f"/api/v1/learners/{people['eva']}/enrolments", {"course": SEGURIDAD})
    assert response.status_code == 201, response.get_json()
    done = response.get_json()
    assert done["learner"] == people["eva"] and done["course"] == SEGURIDAD and done["channel"] == "sms"
    assert done["status"] == "queued"
    course = runtime.catalog.get(SEGURIDAD)
    assert course is not None
    with runtime.factory() as session:
        enrolment = session.scalars(select(Enrolment).where(Enrolment.learner_id == people["eva"])).one()
        assert (enrolment.course_id, enrolment.channel, enrolment.position, enrolment.question, enrolment.state) \
            == (SEGURIDAD, "sms", 0, 0, "active")
        assert enrolment.lesson_sent_at is not None
        learner = session.get(Learner, people["eva"])
        assert learner is not None and learner.current_course == SEGURIDAD
        rows = session.scalars(select(OutboundMessage).where(OutboundMessage.learner_id == people["eva"])
                               .order_by(OutboundMessage.id)).all()
        assert [row.kind for row in rows] == ["reply", "lesson", "question"]
        assert all(row.to_address == PHONES["eva"] and row.idempotency_key.startswith("enrol:") for row in rows)
    lesson_text = course.lessons[0].text_for("es", "sms")
    sent = fake_twilio.wait_for(3)
    bodies = [message.body for message in sent if message.to == PHONES["eva"]]
    assert "1 de 7" in bodies[0] and bodies[1] == lesson_text.strip()
    assert bodies[2].startswith(rows[2].body[:20])
    twilio.sms(PHONES["eva"], "1")  # the learner answers the question the API's enrolment asked
    with runtime.factory() as session:
        graded = session.scalars(select(Answer).join(Enrolment).where(Enrolment.learner_id == people["eva"])).all()
        assert [(a.lesson, a.question, a.choice) for a in graded] == [(0, 0, 1)]


def test_enrolling_in_quiet_hours_waits_for_the_learners_morning(as_role, people: dict[str, int],  # type: ignore[no-untyped-def]
                                                                 runtime: Runtime,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    quiet_dispatcher(monkeypatch, runtime)
    night = at("2026-06-02 05:00")  # 23:00 in Mexico City
    monkeypatch.setattr(api, "utcnow", lambda: night)
    response = as_role("coordinator", "POST", f"/api/v1/learners/{people['eva']}/enrolments", {"course": RUTA})
    assert response.status_code == 201
    assert response.get_json()["sends_at"] == at("2026-06-02 14:00").isoformat()  # 08:00 there
    with runtime.factory() as session:
        due = session.scalars(select(OutboundMessage.next_attempt_at)
                              .where(OutboundMessage.learner_id == people["eva"])).all()
    assert due and set(due) == {at("2026-06-02 14:00")}


def test_enrolling_on_whatsapp_outside_the_window_holds_lesson_1(as_role, people: dict[str, int],  # type: ignore[no-untyped-def]
                                                                 runtime: Runtime,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    quiet_dispatcher(monkeypatch, runtime)
    response = as_role("coordinator", "POST", f"/api/v1/learners/{people['beto']}/enrolments", {"course": SEGURIDAD})
    assert response.status_code == 201 and response.get_json()["channel"] == "whatsapp"
    assert response.get_json()["status"] == "held"
    with runtime.factory() as session:
        rows = session.scalars(select(OutboundMessage).where(OutboundMessage.learner_id == people["beto"])).all()
    assert rows and {row.status for row in rows} == {"held"}
    assert {row.to_address for row in rows} == {f"whatsapp:{PHONES['beto']}"}


@pytest.mark.parametrize(("who", "body", "status", "field"), [
    ("eva", {"course": "nope"}, 400, "course"),
    ("eva", {}, 400, "course"),
    ("eva", {"course": 7}, 400, "course"),
    ("eva", {"course": RUTA, "channel": "fax"}, 400, "channel"),
    ("eva", {"course": RUTA, "channel": "whatsapp"}, 409, "channel"),  # eva has no WhatsApp address
    ("eva", {"course": RUTA, "channel": "telegram"}, 409, "channel"),  # Telegram is off here
    ("ana", {"course": SEGURIDAD}, 409, "course"),  # already enrolled
    ("dani", {"course": SEGURIDAD}, 409, None),  # opted out
    ("nobody", {"course": RUTA}, 404, None),
])
def test_enrol_refusals(who: str, body: dict[str, Any], status: int, field: str | None, as_role,  # type: ignore[no-untyped-def]
                        people: dict[str, int], runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    quiet_dispatcher(monkeypatch, runtime)
    response = as_role("coordinator", "POST", f"/api/v1/learners/{people.get(who, 999999)}/enrolments", body)
    assert response.status_code == status
    assert response.get_json().get("field") == field and response.get_json()["error"]
    with runtime.factory() as session:
        assert session.scalar(select(func.count()).select_from(OutboundMessage)) == 0


def test_enrol_needs_a_json_object(client, tokens, people: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    response = client.post(f"/api/v1/learners/{people['eva']}/enrolments", data="course=ruta",
                           headers=tokens["coordinator"])
    assert response.status_code == 400 and "JSON" in response.get_json()["error"]


def test_unenrol_removes_the_enrolment_and_withdraws_its_lessons(as_role, people: dict[str, int],  # type: ignore[no-untyped-def]
                                                                 runtime: Runtime,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    quiet_dispatcher(monkeypatch, runtime)
    assert as_role("coordinator", "POST", f"/api/v1/learners/{people['eva']}/enrolments",
                   {"course": SEGURIDAD}).status_code == 201
    response = as_role("coordinator", "DELETE", f"/api/v1/learners/{people['eva']}/enrolments/{SEGURIDAD}")
    assert response.status_code == 200
    assert response.get_json() == {"learner": people["eva"], "course": SEGURIDAD, "withdrawn": 3}
    with runtime.factory() as session:
        assert session.scalar(select(func.count()).select_from(Enrolment)
                              .where(Enrolment.learner_id == people["eva"])) == 0
        assert set(session.scalars(select(OutboundMessage.status)
                                   .where(OutboundMessage.learner_id == people["eva"]))) == {"cancelled"}
        assert session.get(Learner, people["eva"]).current_course is None  # type: ignore[union-attr]
    ana = as_role("coordinator", "DELETE", f"/api/v1/learners/{people['ana']}/enrolments/{SEGURIDAD}")
    assert ana.status_code == 200
    assert as_role("viewer", "GET", f"/api/v1/learners/{people['ana']}").get_json()["answers"] == []
    again = as_role("coordinator", "DELETE", f"/api/v1/learners/{people['ana']}/enrolments/{SEGURIDAD}")
    assert again.status_code == 404 and again.get_json()["error"]
    assert as_role("coordinator", "DELETE", f"/api/v1/learners/999999/enrolments/{SEGURIDAD}").status_code == 404


# -- tags ------------------------------------------------------------------------------------------------


def test_tags_are_added_and_removed(as_role, people: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/v1/learners/{people['eva']}/tags"
    first = as_role("coordinator", "POST", url, {"tag": "región norte"})
    assert first.status_code == 201 and first.get_json() == {"tags": ["región norte"]}
    again = as_role("coordinator", "POST", url, {"tag": " región norte "})
    assert again.status_code == 200 and again.get_json() == {"tags": ["región norte"]}
    assert as_role("coordinator", "POST", url, {"tag": "b-2"}).get_json() == {"tags": ["b-2", "región norte"]}
    assert names(as_role("viewer", "GET", "/api/v1/learners?tag=b-2"), people) == {"eva"}
    assert as_role("viewer", "GET", f"/api/v1/learners/{people['eva']}").get_json()["tags"] == ["b-2", "región norte"]
    removed = as_role("coordinator", "DELETE", f"{url}/b-2")
    assert removed.status_code == 200 and removed.get_json() == {"removed": True, "tags": ["región norte"]}
    assert as_role("coordinator", "DELETE", f"{url}/b-2").get_json() == {"removed": False, "tags": ["región norte"]}
    for bad in ({"tag": ""}, {"tag": "<b>"}, {"tag": "x" * 65}, {}, {"tag": ["a"]}):
        response = as_role("coordinator", "POST", url, bad)
        assert response.status_code == 400 and response.get_json()["field"] == "tag"
    assert as_role("coordinator", "POST", "/api/v1/learners/999999/tags", {"tag": "a"}).status_code == 404


# -- broadcasts ------------------------------------------------------------------------------------------


def test_broadcast_created_then_counted_by_outcome(as_role, people: dict[str, int], runtime: Runtime,  # type: ignore[no-untyped-def]
                                                   fake_twilio: FakeTwilio) -> None:
    body = {"text": {"es": "Taller el lunes", "en": "Workshop on Monday"}, "segment": {"channel": "sms"},
            "send_at": "2030-01-07T18:00:00Z"}
    response = as_role("coordinator", "POST", "/api/v1/broadcasts", body)
    assert response.status_code == 201
    assert set(response.get_json()) == {"id"}
    broadcast_id = response.get_json()["id"]
    assert response.headers["Location"].endswith(f"/api/v1/broadcasts/{broadcast_id}")
    before = as_role("viewer", "GET", f"/api/v1/broadcasts/{broadcast_id}").get_json()
    assert before["state"] == "scheduled" and before["send_at"] == at("2030-01-07 18:00").isoformat()
    assert before["segment"] == {"channel": "sms"} and before["text"] == body["text"]
    assert before["counts"] == {"queued": 0, "sent": 0, "delivered": 0, "failed": 0, "unknown": 0, "cancelled": 0}
    tick(runtime, now=at("2030-01-07 18:00"), budget=10)  # noon in Mexico City: released and sent
    sent = fake_twilio.wait_for(3)
    assert {message.to for message in sent} == {PHONES["ana"], PHONES["carla"], PHONES["eva"]}
    assert {message.body for message in sent if message.to == PHONES["carla"]} == {"Workshop on Monday"}
    with runtime.factory() as session, session.begin():
        rows = session.scalars(select(OutboundMessage).where(OutboundMessage.broadcast_id == broadcast_id)
                               .order_by(OutboundMessage.id)).all()
        rows[0].status, rows[1].status = "delivered", "failed"
    after = as_role("viewer", "GET", f"/api/v1/broadcasts/{broadcast_id}").get_json()
    assert after["state"] == "released" and after["recipients"] == 3
    assert after["counts"] == {"queued": 0, "sent": 1, "delivered": 1, "failed": 1, "unknown": 0, "cancelled": 0}
    listed = as_role("viewer", "GET", "/api/v1/broadcasts").get_json()
    assert [item["id"] for item in listed["items"]] == [broadcast_id] and listed["total"] == 1


def test_broadcast_preview_counts_recipients_and_sms_cost(as_role, people: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    response = as_role("coordinator", "POST", "/api/v1/broadcasts/preview",
                       {"text": {"es": "Taller el lunes ñ", "en": "Workshop on Monday"}, "segment": {}})
    assert response.status_code == 200
    preview = response.get_json()
    assert preview["recipients"] == {"total": 4, "by_channel": {"sms": 3, "whatsapp": 1}}  # dani opted out
    assert preview["sms"]["es"] == {"encoding": "GSM-7", "segments": 1, "ucs2_chars": []}
    assert preview["sms_segments"] == 3
    one = as_role("coordinator", "POST", "/api/v1/broadcasts/preview", BROADCAST_BODY).get_json()
    assert one["recipients"] == {"total": 1, "by_channel": {"sms": 1}}  # ana
    assert as_role("coordinator", "POST", "/api/v1/broadcasts/preview",
                   {"text": {"es": "x"}, "segment": {"course": "nope"}}).get_json()["field"] == "segment.course"


def test_broadcast_cancel(as_role, people: dict[str, int], runtime: Runtime) -> None:  # type: ignore[no-untyped-def]
    broadcast_id = as_role("coordinator", "POST", "/api/v1/broadcasts",
                           {"text": {"es": "Aviso"}, "send_at": "2030-01-07T18:00:00+00:00"}).get_json()["id"]
    response = as_role("coordinator", "POST", f"/api/v1/broadcasts/{broadcast_id}/cancel")
    assert response.status_code == 200
    assert response.get_json() == {"id": broadcast_id, "state": "cancelled", "withdrawn": 0}
    again = as_role("coordinator", "POST", f"/api/v1/broadcasts/{broadcast_id}/cancel")
    assert again.status_code == 200 and again.get_json()["already_cancelled"] is True
    assert as_role("viewer", "GET", f"/api/v1/broadcasts/{broadcast_id}").get_json()["state"] == "cancelled"
    tick(runtime, now=at("2030-01-07 18:00"), budget=5)
    with runtime.factory() as session:
        assert session.scalar(select(func.count()).select_from(OutboundMessage)
                              .where(OutboundMessage.broadcast_id == broadcast_id)) == 0
    assert as_role("coordinator", "POST", "/api/v1/broadcasts/999999/cancel").status_code == 404


def test_a_broadcast_that_has_gone_out_is_not_cancelled(as_role, runtime: Runtime) -> None:  # type: ignore[no-untyped-def]
    body = {"text": {"es": "a" * 1600}, "segment": {"tag": "nobody-has-it"}}  # the longest text allowed
    broadcast_id = as_role("coordinator", "POST", "/api/v1/broadcasts", body).get_json()["id"]
    tick(runtime, now=at("2030-01-07 18:00"), budget=5)  # released: to nobody, so nothing is waiting
    response = as_role("coordinator", "POST", f"/api/v1/broadcasts/{broadcast_id}/cancel")
    assert response.status_code == 409 and "nothing left to cancel" in response.get_json()["error"]
    assert as_role("viewer", "GET", f"/api/v1/broadcasts/{broadcast_id}").get_json()["state"] == "released"


@pytest.mark.parametrize(("body", "field"), [
    ({"text": {"es": "x"}, "segment": {"course": "nope"}}, "segment.course"),
    ({"text": {"es": "x"}, "segment": {"channel": "fax"}}, "segment.channel"),
    ({"text": {"es": "x"}, "segment": {"language": "fr"}}, "segment.language"),
    ({"text": {"es": "x"}, "segment": {"progress": "lost"}}, "segment.progress"),
    ({"text": {"es": "x"}, "segment": {"colour": "red"}}, "segment.colour"),
    ({"text": {"es": "x"}, "segment": {"tag": 5}}, "segment.tag"),
    ({"text": {"es": "x"}, "segment": "everyone"}, "segment"),
    ({"segment": {}}, "text"),
    ({"text": "hola"}, "text"),
    ({"text": {"es": "  ", "en": ""}}, "text"),
    ({"text": {"fr": "salut"}}, "text"),
    ({"text": {"es": ["x"]}}, "text.es"),
    ({"text": {"es": "hola", "en": "a\x01b"}}, "text.en"),
    ({"text": {"es": "hola \ud800"}}, "text.es"),
    ({"text": {"es": "a" * 1601}}, "text.es"),
    ({"text": {"es": "x"}, "send_at": "tomorrow"}, "send_at"),
    ({"text": {"es": "x"}, "send_at": "2030-01-07T18:00:00"}, "send_at"),
    ({"text": {"es": "x"}, "whatsapp_template": "nope"}, "whatsapp_template"),
    ({"text": {"es": "x"}, "whatsapp_template": "HX" + "0" * 32 + "\n"}, "whatsapp_template"),
    ({"text": {"es": "x"}, "sendat": None}, "sendat"),
    ({"text": {"es": "x"}, "segment": {"tag": "\ud83d"}}, "segment.tag"),
    ({"text": {"es": "x"}, "segment": {"tag": "a" * 65}}, "segment.tag"),
    ({"text": {"es": "x"}, "send_at": "2020-01-01T00:00:00Z"}, "send_at"),
    ({"text": {"es": "x"}, "send_at": "0001-01-01T00:00:00+06:00"}, "send_at"),
    ({"text": {"es": "x"}, "send_at": "9999-12-31T23:59:59-06:00"}, "send_at"),
])
def test_broadcast_validation_names_the_field(body: dict[str, Any], field: str, as_role,  # type: ignore[no-untyped-def]
                                              runtime: Runtime) -> None:
    response = as_role("coordinator", "POST", "/api/v1/broadcasts", body)
    assert response.status_code == 400
    assert response.get_json()["field"] == field and response.get_json()["error"]
    with runtime.factory() as session:
        assert session.scalar(select(func.count()).select_from(Broadcast)) == 0


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/learners/9223372036854775808"), ("DELETE", "/api/v1/learners/2147483648"),
    ("POST", "/api/v1/learners/99999999999999999999/tags"), ("GET", "/api/v1/broadcasts/9223372036854775808"),
    ("POST", "/api/v1/broadcasts/2147483648/cancel"), ("GET", "/api/v1/learners/0"),
])
def test_an_id_no_row_can_have_is_404(method: str, path: str, as_role) -> None:  # type: ignore[no-untyped-def]
    response = as_role("admin", method, path, {"tag": "x"} if method == "POST" else None)
    assert response.status_code == 404 and response.get_json()["error"]


def test_preview_refuses_a_tag_no_learner_can_have(as_role) -> None:  # type: ignore[no-untyped-def]
    response = as_role("coordinator", "POST", "/api/v1/broadcasts/preview",
                       {"text": {"es": "x"}, "segment": {"tag": "\ud83d"}})
    assert response.status_code == 400 and response.get_json()["field"] == "segment.tag"


def test_broadcast_body_must_be_json(client, tokens) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/broadcasts", data="text=hola", headers=tokens["coordinator"])
    assert response.status_code == 400 and "field" not in response.get_json()
    nested = "[" * 100_000  # deeper than the JSON parser goes
    response = client.post("/api/v1/broadcasts", data=nested, content_type="application/json",
                           headers=tokens["coordinator"])
    assert response.status_code == 400 and "JSON object" in response.get_json()["error"]


# -- courses ---------------------------------------------------------------------------------------------


def test_courses_with_stats(as_role, people: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    response = as_role("viewer", "GET", "/api/v1/courses")
    assert response.status_code == 200
    courses = {course["id"]: course for course in response.get_json()["items"]}
    assert set(courses) == {SEGURIDAD, RUTA}
    assert courses[SEGURIDAD]["stats"] == {"enrolled": 2, "active": 1, "paused": 1, "finished": 0, "passed": 0}
    assert courses[RUTA]["stats"] == {"enrolled": 2, "active": 0, "paused": 0, "finished": 2, "passed": 1}
    ruta = courses[RUTA]
    assert ruta["title"] == {"es": "Ruta segura", "en": "Safe route"} and ruta["lessons"] == 10
    assert ruta["pass_mark"] == 0.7 and ruta["schedule"]["at"] == "09:00" and len(ruta["schedule"]["days"]) == 7
    assert set(ruta["channels"]) == {"sms", "whatsapp", "telegram"} and "RUTA" in ruta["keywords"]


def test_passed_follows_the_pass_mark(as_role, runtime: Runtime) -> None:  # type: ignore[no-untyped-def]
    total = questions(runtime, SEGURIDAD)
    need = reports._right_needed(runtime.catalog.get(SEGURIDAD))  # type: ignore[arg-type]
    assert 0 < need <= total and round(100 * need / total) >= 70 > round(100 * (need - 1) / total)
    for n, right in enumerate((need, need - 1, total)):
        add_learner(runtime, phone=f"+52551112{n:04d}", course=SEGURIDAD, state="finished", position=6,
                    right=right, answered=total)
    stats = {c["id"]: c["stats"] for c in as_role("viewer", "GET", "/api/v1/courses").get_json()["items"]}
    assert stats[SEGURIDAD]["finished"] == 3 and stats[SEGURIDAD]["passed"] == 2


# -- CSV exports -----------------------------------------------------------------------------------------


def read_csv(response: Any) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


def test_progress_export_is_streamed_csv(as_role, people: dict[str, int], runtime: Runtime) -> None:  # type: ignore[no-untyped-def]
    response = as_role("coordinator", "GET", "/api/v1/exports/progress.csv")
    assert response.status_code == 200 and response.is_streamed
    assert response.mimetype == "text/csv" and "attachment" in response.headers["Content-Disposition"]
    rows = read_csv(response)
    assert [row["learner_id"] for row in rows] == [str(people[n]) for n in ("ana", "beto", "carla", "dani")]
    assert list(rows[0]) == list(reports.PROGRESS_COLUMNS)
    beto = rows[1]
    total = questions(runtime, RUTA)
    assert beto["phone"] == "•••0002" and beto["course"] == RUTA and beto["state"] == "finished"
    assert (beto["answered"], beto["right"], beto["percent"], beto["passed"]) == (str(total), str(total), "100", "True")
    dani = rows[3]
    assert dani["telegram_chat_id"] == "•••4321" and dani["opted_in"] == "False" and dani["passed"] == "False"
    ana = rows[0]
    assert (ana["lesson"], ana["lessons"], ana["answered"], ana["right"], ana["passed"]) == ("1", "7", "1", "1", "")


def test_answers_export_is_streamed_csv(as_role, people: dict[str, int], runtime: Runtime) -> None:  # type: ignore[no-untyped-def]
    response = as_role("admin", "GET", "/api/v1/exports/answers.csv")
    assert response.status_code == 200 and response.is_streamed and response.mimetype == "text/csv"
    rows = read_csv(response)
    total = questions(runtime, RUTA)
    assert len(rows) == 1 + 2 * total and list(rows[0]) == list(reports.ANSWER_COLUMNS)
    assert rows[0] == {"learner_id": str(people["ana"]), "phone": PHONES["ana"], "telegram_chat_id": "",
                       "course": SEGURIDAD, "lesson": "1", "question": "1", "choice": "1", "correct": "True",
                       "answered_at": LONG_AGO.isoformat()}
    assert {row["correct"] for row in rows if row["learner_id"] == str(people["dani"])} == {"False"}


def test_exports_read_in_batches_never_all_at_once(people: dict[str, int], runtime: Runtime,  # type: ignore[no-untyped-def]
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "EXPORT_BATCH", 2)
    show = str
    progress = reports.export_progress(runtime.factory, runtime.catalog, lambda a: show(a or ""))
    assert inspect.isgenerator(progress)
    chunks = list(progress)
    assert len(chunks) == 1 + 2  # the header, then 4 enrolments 2 at a time
    assert all(len(list(csv.reader(io.StringIO(chunk)))) == 2 for chunk in chunks[1:])
    answers = list(reports.export_answers(runtime.factory, lambda a: a or ""))
    total = 1 + 2 * questions(runtime, RUTA)
    assert len(answers) == 1 + (total + 1) // 2


def test_csv_cells_never_run_as_formulas() -> None:
    assert reports._cell("=HYPERLINK(\"x\")") == "'=HYPERLINK(\"x\")"
    assert reports._cell("@SUM(A1)") == "'@SUM(A1)"
    assert reports._cell("+52551234") == "+52551234"  # a phone number stays a phone number
    assert reports._cell("+1+1") == "'+1+1"
    assert reports._cell(5) == 5


# -- logs ------------------------------------------------------------------------------------------------


def test_api_logs_no_phone_number_or_message_text(as_role, people: dict[str, int], runtime: Runtime,  # type: ignore[no-untyped-def]
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    quiet_dispatcher(monkeypatch, runtime)
    caplog.set_level(logging.INFO)
    as_role("coordinator", "POST", f"/api/v1/learners/{people['eva']}/enrolments", {"course": RUTA})
    as_role("coordinator", "DELETE", f"/api/v1/learners/{people['eva']}/enrolments/{RUTA}")
    broadcast_id = as_role("coordinator", "POST", "/api/v1/broadcasts", BROADCAST_BODY).get_json()["id"]
    as_role("coordinator", "POST", f"/api/v1/broadcasts/{broadcast_id}/cancel")
    as_role("admin", "DELETE", f"/api/v1/learners/{people['ana']}")
    logged = "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.INFO)
    assert "through the API" in logged
    for secret in (*PHONES.values(), *(p[1:] for p in PHONES.values()), "Taller el lunes", "Workshop"):
        assert secret not in logged

