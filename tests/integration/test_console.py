"""The coordinators' web console on SQLite and PostgreSQL: roles per route, CSRF, login throttling, masking,
escaping, dashboard numbers, the broadcast composer end to end, learner changes and the simulator.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from markupsafe import escape
from sqlalchemy import func, select

from bot import reports
from bot.auth import create_user
from bot.dispatcher import utcnow
from bot.models import (
    Answer,
    Broadcast,
    Enrolment,
    Learner,
    LearnerAddress,
    LearnerTag,
    OutboundMessage,
)
from bot.runtime import Runtime
from bot.services import Envelope, receive
from bot.web.console import course_analysis, dashboard_numbers
from scheduler import tick
from tests.fakes.twilio_api import FakeTwilio

PASSWORD = "correct horse battery"
ROLES = ("viewer", "coordinator", "admin")
PHONE = "+525512345678"
COURSE = "seguridad-humana"


# -- helpers -----------------------------------------------------------------------------------------------


@pytest.fixture
def users(runtime: Runtime) -> dict[str, str]:
    now = utcnow()
    for role in ROLES:
        create_user(runtime.factory, f"{role}@example.org", role, PASSWORD, now)
    return {role: f"{role}@example.org" for role in ROLES}


def csrf(client: Any) -> str:
    client.get("/login")
    with client.session_transaction() as session:
        return str(session["csrf"])


def login(client: Any, email: str, password: str = PASSWORD) -> Any:
    return client.post("/login", data={"email": email, "password": password, "csrf_token": csrf(client)})


def as_role(app: Any, users: dict[str, str], role: str | None) -> Any:
    client = app.test_client()
    if role is not None:
        assert login(client, users[role]).status_code == 302
    return client


def learner_writes(runtime: Runtime, text: str, phone: str = PHONE, channel: str = "sms") -> int:
    """The learner texts us (replies are queued, not sent); returns their id."""
    address = f"whatsapp:{phone}" if channel == "whatsapp" else phone
    receive(runtime.factory, Envelope(channel=channel, provider_id=f"SM{uuid.uuid4().hex}", address=address,
                                      text=text), runtime.context(utcnow()), runtime.senders)
    with runtime.factory() as session:
        return int(session.scalars(select(Learner.id).where(Learner.phone == phone)).one())


def token_of(client: Any) -> str:
    with client.session_transaction() as session:
        return str(session["csrf"])


# -- every route x every role ----------------------------------------------------------------------------

GETS = [  # path, least role that may
    ("/", "viewer"),
    ("/learners", "viewer"),
    ("/learners/{learner}", "viewer"),
    ("/learners?channel=sms&opted_in=true", "viewer"),
    ("/courses", "viewer"),
    (f"/courses/{COURSE}", "viewer"),
    ("/broadcasts", "viewer"),
    ("/broadcasts/{broadcast}", "viewer"),
    ("/simulator", "coordinator"),
    ("/console/estimate?text_es=hola&channel=sms", "coordinator"),
]
POSTS = [  # path, form, least role, status when allowed
    ("/learners/{learner}", {"action": "tag", "tag": "taller-1"}, "coordinator", 302),
    ("/learners/{learner}", {"action": "unenrol", "course": COURSE}, "coordinator", 302),
    ("/broadcasts", {"action": "preview", "text_es": "Hola"}, "coordinator", 200),
    ("/broadcasts/{broadcast}/cancel", {}, "coordinator", 302),
    ("/simulator", {"channel": "telegram", "address": "1000001", "text": "hola"}, "coordinator", 302),
    ("/learners/{learner}", {"action": "erase", "confirm": "ERASE"}, "admin", 302),
    ("/logout", {}, "viewer", 302),
]
LEVEL = {"viewer": 0, "coordinator": 1, "admin": 2}


@pytest.mark.parametrize("role", [None, *ROLES])
def test_every_route_checks_the_role(app: Any, runtime: Runtime, users: dict[str, str], role: str | None) -> None:
    learner = learner_writes(runtime, "SEGURIDAD")
    from bot.broadcasts import create

    broadcast = create(runtime.factory, {"es": "Hola"}, {}, utcnow() + timedelta(days=1), runtime.catalog, utcnow())
    ids = {"learner": learner, "broadcast": broadcast}
    wrong = []
    for path, needed in GETS:
        client = as_role(app, users, role)
        response = client.get(path.format(**ids))
        expected = 302 if role is None else (200 if LEVEL[role] >= LEVEL[needed] else 403)
        if response.status_code != expected:
            wrong.append(("GET", path, response.status_code, expected))
        if role is None and response.status_code == 302:
            assert "/login?next=" in response.headers["Location"]
    for path, form, needed, allowed in POSTS:
        client = as_role(app, users, role)
        token = csrf(client)
        response = client.post(path.format(**ids), data={**form, "csrf_token": token})
        expected = 302 if role is None else (allowed if LEVEL[role] >= LEVEL[needed] else 403)
        if response.status_code != expected:
            wrong.append(("POST", path, form.get("action"), response.status_code, expected))
    assert wrong == []
    with runtime.factory() as session:
        erased = session.get(Learner, learner) is None
    assert erased == (role == "admin")


def test_login_page_and_static_are_public_and_self_contained(client: Any) -> None:
    page = client.get("/login")
    assert page.status_code == 200 and b'name="csrf_token"' in page.data
    assert b"http://" not in page.data and b"https://" not in page.data  # no CDN, fonts or scripts elsewhere
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    css = client.get("/console/static/console.css")
    assert css.status_code == 200 and b"@import" not in css.data and b"http" not in css.data
    js = client.get("/console/static/console.js")
    assert js.status_code == 200 and b"http" not in js.data


def test_login_redirects_back_and_logout_ends_the_session(app: Any, users: dict[str, str]) -> None:
    client = app.test_client()
    assert client.get("/learners").headers["Location"].startswith("/login?next=")
    token = csrf(client)
    response = client.post("/login", data={"email": users["viewer"], "password": PASSWORD, "csrf_token": token,
                                           "next": "/learners"})
    assert response.status_code == 302 and response.headers["Location"] == "/learners"
    assert token_of(client) != token  # a new session (and token) on sign-in
    assert client.get("/learners").status_code == 200
    offsite = app.test_client()
    response = offsite.post("/login", data={"email": users["viewer"], "password": PASSWORD,
                                            "csrf_token": csrf(offsite), "next": "//evil.example/x"})
    assert response.headers["Location"] == "/"
    assert client.post("/logout", data={"csrf_token": token_of(client)}).status_code == 302
    assert client.get("/learners").status_code == 302


def test_sign_out_ends_copies_of_the_session_and_a_disabled_account_has_none(app: Any, runtime: Runtime,
                                                                              users: dict[str, str]) -> None:
    from sqlalchemy import update

    from bot.models import User

    client = as_role(app, users, "coordinator")
    cookie = client.get_cookie("session")
    assert cookie is not None
    copy = app.test_client()  # the same cookie in another hand
    copy.set_cookie("session", cookie.value)
    other = as_role(app, users, "coordinator")  # the same account in another browser
    assert copy.get("/learners").status_code == 200 and other.get("/learners").status_code == 200
    assert client.post("/logout", data={"csrf_token": token_of(client)}).status_code == 302
    assert copy.get("/learners").status_code == 302  # to the login page
    assert other.get("/learners").status_code == 302
    again = as_role(app, users, "coordinator")  # signing in again works
    assert again.get("/learners").status_code == 200
    with runtime.factory() as session:
        session.execute(update(User).where(User.email == users["coordinator"]).values(disabled_at=utcnow()))
        session.commit()
    assert again.get("/learners").status_code == 302  # a disabled account's sessions end at once


def test_wrong_password_is_refused(app: Any, users: dict[str, str]) -> None:
    client = app.test_client()
    response = login(client, users["admin"], "not the password")
    assert response.status_code == 401 and b"Wrong e-mail or password" in response.data
    assert client.get("/").status_code == 302


def test_login_is_throttled_after_five_failures(app: Any, users: dict[str, str]) -> None:
    client = app.test_client()
    for _ in range(5):
        assert login(client, users["coordinator"], "guess-guess-guess").status_code == 401
    response = login(client, users["coordinator"])  # right password, too late
    assert response.status_code == 429
    assert b"Too many failed sign-in attempts" in response.data
    assert client.get("/").status_code == 302


def test_guesses_sent_at_once_get_five_checks_not_forty(runtime: Runtime, users: dict[str, str]) -> None:
    """The lockout holds under concurrency: each attempt is written down before its password is checked."""
    import threading

    from bot.auth import Throttled, authenticate

    outcomes: list[str] = []
    barrier = threading.Barrier(20)

    def guess() -> None:
        barrier.wait()
        try:
            user = authenticate(runtime.factory, users["admin"], "guess-guess-guess", "203.0.113.9", utcnow())
            outcomes.append("checked" if user is None else "signed in")
        except Throttled:
            outcomes.append("throttled")

    threads = [threading.Thread(target=guess) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["checked"] * 5 + ["throttled"] * 15
    with pytest.raises(Throttled):  # the right password is not even checked now
        authenticate(runtime.factory, users["admin"], PASSWORD, "198.51.100.7", utcnow())


# -- CSRF ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_posts_without_the_csrf_token_do_nothing(app: Any, runtime: Runtime, users: dict[str, str],
                                                 token: str | None) -> None:
    learner = learner_writes(runtime, "SEGURIDAD")
    client = as_role(app, users, "admin")
    extra = {} if token is None else {"csrf_token": token}
    assert client.post(f"/learners/{learner}", data={"action": "tag", "tag": "x", **extra}).status_code == 400
    assert client.post(f"/learners/{learner}", data={"action": "erase", "confirm": "ERASE",
                                                     **extra}).status_code == 400
    assert client.post("/broadcasts", data={"action": "send", "text_es": "Hola", **extra}).status_code == 400
    assert client.post("/simulator", data={"text": "hola", **extra}).status_code == 400
    assert client.post("/logout", data=extra).status_code == 400
    fresh = app.test_client()
    fresh.get("/login")
    assert fresh.post("/login", data={"email": users["admin"], "password": PASSWORD, **extra}).status_code == 400
    with runtime.factory() as session:
        assert session.get(Learner, learner) is not None
        assert session.scalar(select(func.count()).select_from(LearnerTag)) == 0
        assert session.scalar(select(func.count()).select_from(Broadcast)) == 0
    assert client.get("/").status_code == 200  # still signed in


# -- masking and escaping ----------------------------------------------------------------------------------


def test_phone_numbers_are_masked_for_viewers_and_in_lists(app: Any, runtime: Runtime,
                                                            users: dict[str, str]) -> None:
    learner = learner_writes(runtime, "SEGURIDAD")
    for role in ROLES:
        client = as_role(app, users, role)
        listing = client.get("/learners").get_data(as_text=True)
        assert PHONE not in listing and "•••5678" in listing
        page = client.get(f"/learners/{learner}").get_data(as_text=True)
        assert (PHONE in page) == (role == "admin")
        if role != "admin":
            assert "•••5678" in page


def test_learner_text_stays_escaped_on_the_learner_page_and_the_simulator(app: Any, runtime: Runtime,
                                                                           users: dict[str, str]) -> None:
    attack = "<script>alert('x')</script>"
    learner = learner_writes(runtime, "SEGURIDAD")
    learner_writes(runtime, attack)  # an answer the quiz cannot grade: kept as inbound text
    client = as_role(app, users, "admin")
    client.post(f"/learners/{learner}", data={"action": "tag", "tag": "<b>x</b>", "csrf_token": token_of(client)})
    page = client.get(f"/learners/{learner}").get_data(as_text=True)
    assert "<script>alert" not in page and str(escape(attack)) in page
    token = token_of(client)
    client.post("/simulator", data={"channel": "sms", "address": "+15555550142", "text": attack,
                                    "csrf_token": token})
    page = client.get("/simulator?channel=sms&address=%2B15555550142").get_data(as_text=True)
    assert "<script>alert" not in page and str(escape(attack)) in page
    assert "<script" not in page.replace('<script src="/console/static/console.js"', "")


# -- dashboard --------------------------------------------------------------------------------------------


def test_dashboard_numbers_equal_what_the_database_holds(app: Any, runtime: Runtime, users: dict[str, str]) -> None:
    now = utcnow()
    yesterday = now - timedelta(days=1, hours=1)
    with runtime.factory.begin() as session:
        def learner(phone: str, channel: str, last: datetime, opted_out: datetime | None = None) -> Learner:
            row = Learner(phone=phone, language="es", reasks=0, created_at=now, opted_out_at=opted_out)
            session.add(row)
            session.flush()
            address = f"whatsapp:{phone}" if channel == "whatsapp" else phone
            session.add(LearnerAddress(learner_id=row.id, channel=channel, address=address, last_inbound_at=last))
            return row

        a = learner("+525500000001", "sms", now)
        b = learner("+525500000002", "whatsapp", now - timedelta(hours=1))
        c = learner("+525500000003", "sms", now, opted_out=now)  # opted out today: not active
        d = learner("+525500000004", "whatsapp", now - timedelta(days=2))  # window closed, paused
        for row, course, state, channel in ((a, COURSE, "active", "sms"), (b, "ruta-segura", "active", "whatsapp"),
                                            (b, COURSE, "active", "whatsapp"), (c, COURSE, "active", "sms"),
                                            (d, COURSE, "paused", "whatsapp")):
            session.add(Enrolment(learner_id=row.id, course_id=course, channel=channel, position=0, state=state,
                                  reminders=0, enrolled_at=now))
        statuses = [("sent", now), ("sent", now), ("delivered", now), ("read", now), ("failed", now),
                    ("queued", now), ("held", now), ("failed", yesterday)]
        for n, (status, created) in enumerate(statuses):
            session.add(OutboundMessage(
                idempotency_key=f"test:{n}", learner_id=a.id, channel="sms", to_address=a.phone, body="lesson",
                kind="lesson", priority=10, status=status, attempts=0, next_attempt_at=created,
                created_at=created, updated_at=created))
    with runtime.factory() as session:
        numbers = dashboard_numbers(session, now)
    assert numbers["active_learners"] == 2
    assert numbers["active_by_channel"] == {"sms": 1, "whatsapp": 1}
    assert numbers["active_by_course"] == {COURSE: 2, "ruta-segura": 1}
    assert numbers["lessons_today"] | {} == {"queued": 2, "sent": 2, "delivered": 2, "failed": 1, "unknown": 0,
                                             "cancelled": 0}
    assert numbers["opted_out_today"] == 1 and numbers["opted_out_total"] == 1
    assert numbers["whatsapp"] == {"open": 1, "closed": 1, "held": 1}
    assert numbers["backlog"] == {"queued": 1, "held": 1, "sending": 0} and numbers["backlog_due"] == 1
    page = as_role(app, users, "viewer").get("/").get_data(as_text=True)
    for element, value in (("active-learners", 2), ("lessons-sent", 2), ("lessons-delivered", 2),
                           ("lessons-failed", 1), ("opted-out-today", 1), ("backlog-due", 1), ("wa-open", 1),
                           ("wa-closed", 1), ("active-sms", 1), ("active-whatsapp", 1), (f"course-{COURSE}", 2)):
        assert re.search(rf'id="{element}">{value}<', page), element
    assert "<svg" in page


def test_the_simulators_learners_are_not_counted_as_real_learners(app: Any, runtime: Runtime,
                                                                   users: dict[str, str]) -> None:
    course = runtime.catalog.get(COURSE)
    assert course is not None
    question = course.lessons[0].quiz[0]
    learner_writes(runtime, "SEGURIDAD")  # a real learner, on SMS
    client = as_role(app, users, "coordinator")
    for text in ("SEGURIDAD", str(question.answer), "BAJA"):  # a simulated one enrols, answers, then opts out
        response = client.post("/simulator", data={"channel": "sms", "address": "+15555550177", "text": text,
                                                   "csrf_token": token_of(client)})
        assert response.status_code == 302
    client.post("/simulator", data={"channel": "whatsapp", "address": "+15555550178", "text": "SEGURIDAD",
                                    "csrf_token": token_of(client)})
    now = utcnow()
    with runtime.factory() as session:
        assert session.scalar(select(func.count()).select_from(Enrolment).where(Enrolment.channel == "console")) == 2
        assert session.scalar(select(func.count()).select_from(Answer)) == 1  # the simulator's
        assert session.scalar(select(func.count()).select_from(Learner)
                              .where(Learner.opted_out_at.is_not(None))) == 1  # the simulator's
        numbers = dashboard_numbers(session, now)
        stats = {item["id"]: item["stats"] for item in reports.course_stats(session, runtime.catalog)}
        analysis = course_analysis(session, course)
    assert numbers["active_learners"] == 1
    assert numbers["active_by_channel"] == {"sms": 1} and numbers["active_by_course"] == {COURSE: 1}
    assert numbers["opted_out_today"] == 0 and numbers["opted_out_total"] == 0
    assert numbers["lessons_today"]["sent"] == 0  # the simulator's lessons went out on the console only
    assert stats[COURSE] == {"enrolled": 1, "active": 1, "paused": 0, "finished": 0, "passed": 0}
    assert analysis["enrolled"] == 1 and analysis["funnel"][0] == ("Enrolled", 1)
    assert all(item["answered"] == 0 for item in analysis["items"])


def test_course_statistics_equal_what_the_database_holds(runtime: Runtime) -> None:
    """course_stats and course_analysis (set-based: one query for every course's passes) against a count made
    in Python from every row, with finished enrolments just below, at and above the pass mark."""
    now = utcnow()
    courses = {course.id: course for course in runtime.catalog.courses}
    slots = {cid: [(li, qi, q.answer) for li, lesson in enumerate(c.lessons) for qi, q in enumerate(lesson.quiz)]
             for cid, c in courses.items()}
    with runtime.factory.begin() as session:
        n = 0
        for cid, course in courses.items():
            total = len(slots[cid])
            for right in sorted({0, max(total - 3, 0), total - 1, total, total // 2}):
                for state, position in (("finished", len(course.lessons) - 1), ("active", 1), ("paused", 0)):
                    n += 1
                    learner = Learner(phone=f"+5255000{n:05d}", language="es", reasks=0, created_at=now)
                    session.add(learner)
                    session.flush()
                    enrolment = Enrolment(learner_id=learner.id, course_id=cid, channel="sms", position=position,
                                          state=state, reminders=0, enrolled_at=now,
                                          finished_at=now if state == "finished" else None)
                    session.add(enrolment)
                    session.flush()
                    for k, (li, qi, answer) in enumerate(slots[cid]):
                        correct = k < right
                        choice = answer if correct else (answer % len(course.lessons[li].quiz[qi].options)) + 1
                        session.add(Answer(enrolment_id=enrolment.id, course_id=cid, lesson=li, question=qi,
                                           choice=choice, correct=correct, answered_at=now))
            # and twice over, a simulated learner (console transport) who finished and answered everything with
            # the last wrong option: not counted anywhere (the item analysis takes their answers back out)
            for _twin in range(2):
                n += 1
                learner = Learner(phone=f"+5255000{n:05d}", language="es", reasks=0, created_at=now)
                session.add(learner)
                session.flush()
                enrolment = Enrolment(learner_id=learner.id, course_id=cid, channel="console",
                                      position=len(course.lessons) - 1, state="finished", reminders=0,
                                      enrolled_at=now, finished_at=now)
                session.add(enrolment)
                session.flush()
                for li, qi, answer in slots[cid]:
                    options = len(course.lessons[li].quiz[qi].options)
                    session.add(Answer(enrolment_id=enrolment.id, course_id=cid, lesson=li, question=qi,
                                       choice=options if answer != options else options - 1, correct=False,
                                       answered_at=now))
    with runtime.factory() as session:
        enrolments = list(session.scalars(select(Enrolment)))
        answers = list(session.scalars(select(Answer)))
        stats = {item["id"]: item["stats"] for item in reports.course_stats(session, runtime.catalog)}
        analyses = {cid: course_analysis(session, course) for cid, course in courses.items()}
    by_enrolment = {e.id: e for e in enrolments}
    for cid, course in courses.items():
        mine = [e for e in enrolments if e.course_id == cid and e.channel != "console"]
        assert len(mine) < len([e for e in enrolments if e.course_id == cid])
        expected_passed = 0
        for e in mine:
            right = sum(1 for a in answers if a.enrolment_id == e.id and a.correct)
            if e.state == "finished" and reports.score(course, right, 0, True)["passed"]:
                expected_passed += 1
        assert 0 < expected_passed < len([e for e in mine if e.state == "finished"])
        assert stats[cid] == {"enrolled": len(mine), "active": sum(e.state == "active" for e in mine),
                              "paused": sum(e.state == "paused" for e in mine),
                              "finished": sum(e.state == "finished" for e in mine), "passed": expected_passed}
        analysis = analyses[cid]
        assert analysis["stats"]["stats"] == stats[cid]
        assert analysis["funnel"][0] == ("Enrolled", len(mine))
        assert analysis["funnel"][-2:] == [("Finished", stats[cid]["finished"]), ("Passed", expected_passed)]
        for index, (_label, count) in enumerate(analysis["funnel"][1:-2]):
            assert count == sum(1 for e in mine if e.position >= index)
        for item in analysis["items"]:
            li, qi = item["lesson"] - 1, item["question"] - 1
            rows = [a for a in answers if by_enrolment[a.enrolment_id].course_id == cid
                    and by_enrolment[a.enrolment_id].channel != "console" and (a.lesson, a.question) == (li, qi)]
            answer = course.lessons[li].quiz[qi].answer
            assert item["answered"] == len(rows)
            assert item["right"] == sum(1 for a in rows if a.choice == answer)
            wrong = Counter(a.choice for a in rows if a.choice != answer)
            top = max(((count, choice) for choice, count in wrong.items()), default=None)
            assert (item["top_wrong"] and (item["top_wrong"]["count"], item["top_wrong"]["choice"])) == (top or None)


# -- broadcasts -------------------------------------------------------------------------------------------


def _noon_mexico_after(now: datetime) -> datetime:
    noon = now.replace(hour=18, minute=0, second=0, microsecond=0)
    return noon if noon > now else noon + timedelta(days=1)


def test_a_broadcast_composed_previewed_and_sent_reaches_twilio(app: Any, runtime: Runtime, users: dict[str, str],
                                                                fake_twilio: FakeTwilio) -> None:
    learner_writes(runtime, "SEGURIDAD")
    learner_writes(runtime, "RUTA", phone="+525500000077")
    client = as_role(app, users, "coordinator")
    estimate = client.get(f"/console/estimate?course={COURSE}&text_es=Reunión mañana").get_json()
    assert estimate["total"] == 1 and estimate["recipients"] == {"sms": 1}
    assert estimate["sms"]["es"]["encoding"] == "UCS-2" and estimate["sms"]["es"]["ucs2_chars"] == ["ó"]  # ñ is GSM-7
    form = {"text_es": "Taller el martes a las 10", "course": COURSE, "csrf_token": token_of(client)}
    preview = client.post("/broadcasts", data={**form, "action": "preview"})
    assert preview.status_code == 200
    page = preview.get_data(as_text=True)
    assert "recipients: 1" in page and "GSM-7, 1 segment(s)" in page and 'value="send"' in page
    with runtime.factory() as session:
        assert session.scalar(select(func.count()).select_from(Broadcast)) == 0  # preview sends nothing
    bad = client.post("/broadcasts", data={**form, "course": "nope", "action": "preview"})
    assert bad.status_code == 400 and "segment.course" in bad.get_data(as_text=True)
    sent = client.post("/broadcasts", data={**form, "action": "send"})
    assert sent.status_code == 302
    broadcast_id = int(sent.headers["Location"].rsplit("/", 1)[1])
    with runtime.factory() as session:
        row = session.get(Broadcast, broadcast_id)
        assert row is not None and row.segment == {"course": COURSE} and row.created_by == users["coordinator"]
    tick(runtime, now=_noon_mexico_after(utcnow()), budget=10)
    assert [m.to for m in fake_twilio.messages if m.body == form["text_es"]] == [PHONE]
    report = client.get(f"/broadcasts/{broadcast_id}").get_data(as_text=True)
    assert re.search(r'id="sms-sent">1<', report) and 'id="recipients">1<' in report
    listing = client.get("/broadcasts").get_data(as_text=True)
    assert f"/broadcasts/{broadcast_id}" in listing
    # it has gone out to everyone: cancelling says so and changes nothing
    late = client.post(f"/broadcasts/{broadcast_id}/cancel", data={"csrf_token": token_of(client)},
                       follow_redirects=True)
    assert "has gone out to every recipient: nothing left to cancel." in late.get_data(as_text=True)
    with runtime.factory() as session:
        assert session.get(Broadcast, broadcast_id).state == "released"  # type: ignore[union-attr]


def test_cancelling_a_broadcast_twice_says_it_already_was(app: Any, runtime: Runtime, users: dict[str, str]) -> None:
    from bot.broadcasts import create

    broadcast_id = create(runtime.factory, {"es": "Hola"}, {}, utcnow() + timedelta(days=1), runtime.catalog,
                          utcnow())
    client = as_role(app, users, "coordinator")
    first = client.post(f"/broadcasts/{broadcast_id}/cancel", data={"csrf_token": token_of(client)},
                        follow_redirects=True).get_data(as_text=True)
    assert "Broadcast cancelled; 0 waiting message(s) withdrawn." in first
    again = client.post(f"/broadcasts/{broadcast_id}/cancel", data={"csrf_token": token_of(client)},
                        follow_redirects=True).get_data(as_text=True)
    assert "This broadcast was already cancelled." in again


# -- learner changes --------------------------------------------------------------------------------------


def test_coordinator_tags_unenrols_and_enrols_a_learner(app: Any, runtime: Runtime, users: dict[str, str]) -> None:
    learner = learner_writes(runtime, "SEGURIDAD")
    client = as_role(app, users, "coordinator")
    post = lambda **form: client.post(f"/learners/{learner}", data={**form, "csrf_token": token_of(client)})  # noqa: E731
    assert post(action="tag", tag="taller-1").status_code == 302
    assert post(action="unenrol", course=COURSE).status_code == 302
    with runtime.factory() as session:
        assert list(session.scalars(select(LearnerTag.tag))) == ["taller-1"]
        assert session.scalar(select(func.count()).select_from(Enrolment)) == 0
    assert post(action="enrol", course="ruta-segura").status_code == 302
    with runtime.factory() as session:
        assert list(session.scalars(select(Enrolment.course_id))) == ["ruta-segura"]
    assert post(action="erase", confirm="ERASE").status_code == 403  # erasing is the admin's
    page = client.get(f"/learners/{learner}").get_data(as_text=True)
    assert "taller-1" in page and "Enrolled in ruta-segura" in page


def test_course_page_shows_the_funnel_and_item_analysis(app: Any, runtime: Runtime, users: dict[str, str]) -> None:
    course = runtime.catalog.get(COURSE)
    assert course is not None
    question = course.lessons[0].quiz[0]
    wrong = 1 if question.answer != 1 else 2
    learner_writes(runtime, "SEGURIDAD", phone="+525500000011")
    learner_writes(runtime, str(question.answer), phone="+525500000011")
    learner_writes(runtime, "SEGURIDAD", phone="+525500000012")
    learner_writes(runtime, str(wrong), phone="+525500000012")
    page = as_role(app, users, "viewer").get(f"/courses/{COURSE}").get_data(as_text=True)
    assert "<svg" in page
    row = re.search(r"<tr><td>1</td><td>1</td>.*?</tr>", page, re.S)
    assert row is not None
    assert "50%" in row.group(0) and f"{wrong}. " in row.group(0)
    assert re.search(r"<td>Enrolled</td><td class=\"num\">2</td>", page)


# -- simulator --------------------------------------------------------------------------------------------


def test_the_simulator_takes_a_lesson_and_its_quiz(app: Any, runtime: Runtime, users: dict[str, str],
                                                   fake_twilio: FakeTwilio) -> None:
    course = runtime.catalog.get(COURSE)
    assert course is not None
    lesson = course.lessons[0]
    client = as_role(app, users, "coordinator")
    address = "+15555550123"

    def say(text: str) -> str:
        response = client.post("/simulator", data={"channel": "whatsapp", "address": address, "text": text,
                                                   "csrf_token": token_of(client)})
        assert response.status_code == 302
        return str(client.get(response.headers["Location"]).get_data(as_text=True))

    page = say("SEGURIDAD")
    assert str(escape(lesson.title["es"])) in page
    assert str(escape(lesson.quiz[0].ask["es"])) in page
    for question in lesson.quiz:
        page = say(str(question.answer))
    with runtime.factory() as session:
        answers = list(session.scalars(select(Answer.correct)))
        assert answers == [True] * len(lesson.quiz)
        assert session.scalar(select(func.count()).select_from(OutboundMessage)
                              .where(OutboundMessage.channel != "console")) == 0
        assert set(session.scalars(select(OutboundMessage.status))) == {"sent"}
        assert set(session.scalars(select(LearnerAddress.channel))) == {"console"}
    assert fake_twilio.messages == []
    assert page.count('class="in"') == 1 + len(lesson.quiz)


def test_the_simulator_refuses_a_real_learners_address(app: Any, runtime: Runtime, users: dict[str, str]) -> None:
    learner_writes(runtime, "SEGURIDAD")
    client = as_role(app, users, "admin")
    response = client.post("/simulator", data={"channel": "sms", "address": PHONE, "text": "SIGUIENTE",
                                               "csrf_token": token_of(client)})
    assert response.status_code == 409
    with runtime.factory() as session:
        assert set(session.scalars(select(Enrolment.channel))) == {"sms"}
    for address in ("abc", "--5", "²", "99999999999999999999", "0"):
        bad = client.post("/simulator", data={"channel": "telegram", "address": address, "text": "hola",
                                              "csrf_token": token_of(client)})
        assert bad.status_code == 400, address
        assert client.get(f"/simulator?channel=telegram&address={address}").status_code < 500


@pytest.mark.parametrize("target", ["/\t/evil.example", "/\n/evil.example", "/\r\n/evil.example", "/ /evil.example"])
def test_login_never_redirects_off_site_through_characters_browsers_drop(target: str, app: Any,
                                                                        users: dict[str, str]) -> None:
    client = app.test_client()
    response = client.post("/login", data={"email": users["viewer"], "password": PASSWORD,
                                           "csrf_token": csrf(client), "next": target})
    assert response.status_code == 302 and response.headers["Location"] == "/"


@pytest.mark.parametrize("path", ["/learners/9223372036854775808", "/broadcasts/99999999999999999999",
                                  "/learners/0", "/learners?page=²", "/learners?page=99999999999999999999",
                                  "/broadcasts?page=99999999999999999999"])
def test_odd_ids_and_pages_are_404_or_the_first_page(path: str, app: Any, users: dict[str, str]) -> None:
    client = as_role(app, users, "admin")
    response = client.get(path)
    assert response.status_code == (404 if "?" not in path else 200)
    if "/broadcasts/" in path:
        cancel = client.post(f"{path}/cancel", data={"csrf_token": token_of(client)})
        assert cancel.status_code == 404



def test_the_courses_page_lists_every_course_with_its_numbers_and_the_broken_ones(
        settings: Any, tmp_path: Any) -> None:
    """Counts equal course_stats (what the database holds); a course folder that failed to load is named,
    escaped, so the operator sees it without reading the logs."""
    import shutil

    from bot import reports
    from tests.conftest import LESSONS, _close, _testing_app

    lessons = tmp_path / "lessons"
    shutil.copytree(LESSONS, lessons)
    broken = lessons / "roto<script>x"
    broken.mkdir()
    (broken / "course.yaml").write_text("title: [unclosed\n", encoding="utf-8")
    app = _testing_app(settings.with_(lessons_dir=str(lessons)))
    runtime: Runtime = app.extensions["vereda"]
    try:
        now = utcnow()
        create_user(runtime.factory, "viewer@example.org", "viewer", PASSWORD, now)
        learner_writes(runtime, "SEGURIDAD")
        learner_writes(runtime, "RUTA", phone="+525512340002")
        learner_writes(runtime, "PAUSA", phone="+525512340002")
        client = app.test_client()
        assert login(client, "viewer@example.org").status_code == 302
        page = client.get("/courses").get_data(as_text=True)
        with runtime.factory() as db:
            stats = reports.course_stats(db, runtime.catalog)
        assert {s["id"] for s in stats} == {"seguridad-humana", "ruta-segura"}
        for course in stats:
            row = page[page.index(f'id="course-{course["id"]}"'):]
            row = row[:row.index("</tr>")]
            for key in ("enrolled", "active", "paused", "finished", "passed"):
                assert f'class="num {key}">{course["stats"][key]}<' in row, (course["id"], key, row)
        assert [s["stats"]["paused"] for s in stats if s["id"] == "ruta-segura"] == [1]
        assert 'href="/courses/seguridad-humana"' in page
        assert "Course problems" in page and "roto&lt;script&gt;x" in page and "<script>x" not in page
        assert 'href="/courses"' in page  # in the navigation
    finally:
        _close(runtime)
