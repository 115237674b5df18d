"""End to end: a WhatsApp learner takes "Ruta segura" while the 24-hour window closes between two lessons.

`python app.py` serves the webhooks (VEREDA_SCHEDULER=off); the daily drip is run the way an operator's
cron does it, as `vereda tick --now <a day later>` in its own process against the same DATABASE_URL and the
same fake Twilio. Outside the window the tick sends the course's approved template (ContentSid) and not the
lesson; the lesson arrives as soon as the learner answers. Quiz questions whose options fit WhatsApp buttons
go out as the course's quick-reply template and are answered with ButtonPayload.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from bot.catalog import load_catalog
from bot.courses import Course
from bot.db import make_engine
from bot.messages import say
from bot.models import Enrolment, OutboundMessage
from tests.conftest import sms_form
from tests.e2e._server import ROOT, AppProcess, backend, environment, serve, twilio_messages, vereda, wait_for
from tests.fakes.twilio_api import FakeTwilio, Sent

LESSONS = ROOT / "tests" / "fixtures" / "courses_whatsapp"
COURSE_ID = "ruta-segura"
LEARNER = "whatsapp:+5215512345678"
OURS = "whatsapp:+14155238886"
LANG = "es"
STEP_TIMEOUT = 15.0
QUIET_SECONDS = 2.5


def configuration(database_url: str, fake: FakeTwilio) -> dict[str, str]:
    """The settings of the web process and of `vereda tick`: SMS and WhatsApp at the fake Twilio, no scheduler."""
    return {
        "DATABASE_URL": database_url, "LESSONS_DIR": str(LESSONS), "TWILIO_ACCOUNT_SID": fake.account_sid,
        "TWILIO_AUTH_TOKEN": fake.auth_token, "TWILIO_SMS_FROM": "+15005550006", "TWILIO_WHATSAPP_FROM": OURS,
        "TWILIO_API_BASE_URL": fake.base_url, "VEREDA_SCHEDULER": "off",
    }


@pytest.fixture
def server(tmp_path: Path, database_url: str, fake_twilio: FakeTwilio) -> Iterator[AppProcess]:
    with serve(tmp_path, **configuration(database_url, fake_twilio)) as app:
        yield app


def vereda_tick(tmp_path: Path, database_url: str, fake: FakeTwilio, now: datetime) -> str:
    """`vereda tick --now NOW` in its own process (the console script), as cron would run it."""
    done = subprocess.run(vereda("tick", "--now", now.isoformat(), "--budget", "20"), cwd=tmp_path,
                          env=environment(**configuration(database_url, fake)), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# -- what the learner should receive ------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    what: str
    body: str | None  # None: a Content template, no body
    content_sid: str | None = None
    variables: dict[str, str] | None = None


def numbered(text: str, options: list[str]) -> str:
    return text + "\n" + "\n".join(f"{n}) {option}" for n, option in enumerate(options, start=1))


def next_at(course: Course) -> str:
    return say("next_at", LANG, "whatsapp", when=say("tomorrow", LANG, "whatsapp",
                                                     time=course.schedule.at.strftime("%H:%M")))


def fits_buttons(options: list[str]) -> bool:
    return len(options) <= 3 and all(len(option) <= 20 for option in options)


class Walk:
    def __init__(self, course: Course) -> None:
        self.course, self.right, self.answered = course, 0, 0

    def lesson(self, number: int) -> list[Expected]:
        lesson = self.course.lessons[number - 1]
        text = Expected(f"lesson {number}", lesson.text_for(LANG, "whatsapp"))
        return [text, self.question(number, 0) if lesson.quiz else self.end(number, scored=False)]

    def question(self, number: int, index: int) -> Expected:
        lesson = self.course.lessons[number - 1]
        q = lesson.quiz[index]
        ask = say("question", LANG, "whatsapp", n=index + 1, total=len(lesson.quiz), ask=q.ask[LANG].strip())
        options = [o[LANG].strip() for o in q.options]
        if fits_buttons(options) and self.course.whatsapp_buttons:
            variables = {"1": ask} | {str(n): option for n, option in enumerate(options, start=2)}
            return Expected(f"lesson {number} question {index + 1} (buttons)", None, self.course.whatsapp_buttons,
                            variables)
        return Expected(f"lesson {number} question {index + 1}", numbered(ask, options))

    def answer(self, number: int, index: int) -> list[Expected]:
        """Right answers only: feedback, then the next question or the lesson's end."""
        q = self.course.lessons[number - 1].quiz[index]
        self.right, self.answered = self.right + 1, self.answered + 1
        feedback = Expected("right", f"{say('right', LANG)} {q.explain[LANG].strip()}")
        if index + 1 < len(self.course.lessons[number - 1].quiz):
            return [feedback, self.question(number, index + 1)]
        return [feedback, self.end(number, scored=True)]

    def end(self, number: int, scored: bool) -> Expected:
        lesson = self.course.lessons[number - 1]
        line = say("lesson_score", LANG, "whatsapp", n=number, right=len(lesson.quiz), total=len(lesson.quiz))
        lines = [line] if scored else []
        if number < len(self.course.lessons):
            return Expected(f"lesson {number} end", "\n".join([*lines, next_at(self.course)]))
        percent = round(100 * self.right / self.answered)
        result = say("course_passed", LANG, "whatsapp", course=self.course.title[LANG], percent=percent,
                     right=self.right, total=self.answered, mark=round(self.course.pass_mark * 100))
        return Expected("course result", "\n".join([*lines, result]))


# -- the learner's phone ------------------------------------------------------------------------------------


class Phone:
    def __init__(self, app: AppProcess, fake: FakeTwilio, http: httpx.Client) -> None:
        self.app, self.fake, self.http = app, fake, http
        self.validator = RequestValidator(fake.auth_token)
        self.seen = 0
        self.first_replies: list[float] = []

    def post(self, form: dict[str, str]) -> httpx.Response:
        url = f"{self.app.base_url}/webhooks/twilio"
        signature = self.validator.compute_signature(url, form)
        return self.http.post(url, data=form, headers={"X-Twilio-Signature": signature})

    def wait_for(self, count: int) -> list[Sent]:
        def failure(messages: list[Sent]) -> str:
            got = [(m.body or m.form.get("ContentSid", ""))[:60] for m in messages[self.seen:]]
            return f"expected {count} messages, got {self.seen + len(got)}: {got}\n{self.app.stderr()[-4000:]}"

        return wait_for(lambda: twilio_messages(self.fake), count, STEP_TIMEOUT, failure)

    def receive(self, expect: list[Expected]) -> list[Sent]:
        received = self.wait_for(self.seen + len(expect))[self.seen:]
        assert len(received) == len(expect), [m.body[:60] for m in received]
        for want, got in zip(expect, received, strict=True):
            assert got.to == LEARNER and got.form.get("From") == OURS, (want.what, got.form)
            if want.content_sid:
                assert got.form.get("ContentSid") == want.content_sid, (want.what, got.form)
                assert json.loads(got.form["ContentVariables"]) == want.variables, want.what
                assert "Body" not in got.form
            else:
                assert "ContentSid" not in got.form, (want.what, got.form)
                assert got.body == want.body, f"{want.what}:\n got: {got.body!r}\nwant: {want.body!r}"
        self.seen += len(expect)
        return received

    def send(self, body: str, expect: list[Expected], **extra: str) -> list[Sent]:
        started = time.monotonic()
        form = sms_form(LEARNER, body, ProfileName="María López", WaId=LEARNER.removeprefix("whatsapp:+"),
                        MessageType="button" if "ButtonPayload" in extra else "text", **extra)
        response = self.post(form)
        assert response.status_code == 200 and "<Response/>" in response.text, response.text
        if expect:
            self.wait_for(self.seen + 1)
            self.first_replies.append(time.monotonic() - started)
        return self.receive(expect)

    def answer(self, question: Sent, option: int, label: str, expect: list[Expected]) -> list[Sent]:
        if "ContentSid" in question.form:  # a quick-reply button: ButtonPayload is the option's number
            return self.send(label, expect, ButtonPayload=str(option), ButtonText=label,
                             OriginalRepliedMessageSender=OURS, OriginalRepliedMessageSid=question.sid)
        return self.send(str(option), expect)


def noon_after(moment: datetime) -> datetime:
    """The first 12:00 in Mexico City after `moment`: a drip time outside the quiet hours, whenever tests run."""
    local = moment.astimezone(ZoneInfo("America/Mexico_City"))
    noon = local.replace(hour=12, minute=0, second=0, microsecond=0)
    return (noon if noon > local else noon + timedelta(days=1)).astimezone(UTC)


def due_of_the_enrolment(database_url: str) -> datetime:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            due = connection.execute(select(Enrolment.next_due_at)).scalar_one()
    finally:
        engine.dispose()
    assert due is not None
    return due


def outbox(database_url: str) -> list[tuple[str, str, str | None]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(  # type: ignore[misc]
                select(OutboundMessage.kind, OutboundMessage.status, OutboundMessage.error_message)
                .order_by(OutboundMessage.id))]
    finally:
        engine.dispose()


# -- the test ---------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_whatsapp_course_across_a_closed_window(server: AppProcess, fake_twilio: FakeTwilio, database_url: str,
                                                tmp_path: Path) -> None:
    began = time.monotonic()
    catalog, problems = load_catalog(LESSONS)
    assert not problems, problems
    course = catalog.get(COURSE_ID)
    assert course is not None and course.whatsapp_template and course.whatsapp_buttons
    assert not course.lessons[0].quiz and not course.lessons[1].quiz  # lesson 1 ends at once; 2 is the drip
    assert any(fits_buttons([o[LANG] for o in q.options]) for lesson in course.lessons for q in lesson.quiz)
    walk = Walk(course)

    with httpx.Client(timeout=10.0, trust_env=False) as http:
        phone = Phone(server, fake_twilio, http)

        # The course keyword: enrolled, lesson 1 (no quiz: it ends at once with when the next one comes).
        enrolled = say("enrolled", LANG, "whatsapp", course=course.title[LANG], total=len(course.lessons))
        phone.send("RUTA", [Expected("enrolled", enrolled), *walk.lesson(1)])

        # A day and more passes without a word from the learner: the 24-hour window is closed. The operator's
        # cron runs the tick in its own process: the template goes out, and not the lesson.
        wrote = datetime.now(UTC)
        when = noon_after(max(wrote + timedelta(hours=25), due_of_the_enrolment(database_url)))
        report = vereda_tick(tmp_path, database_url, fake_twilio, when)
        assert "planned 1 lesson(s)" in report and "sent 1," in report, report
        template = {"1": course.title[course.languages[0]], "2": "2"}
        phone.receive([Expected("template", None, course.whatsapp_template, template)])
        time.sleep(QUIET_SECONDS)
        assert len(fake_twilio.messages) == phone.seen  # the lesson waits
        waiting = [(kind, status) for kind, status, _reason in outbox(database_url) if status == "held"]
        assert waiting == [("lesson", "held"), ("lesson", "held")]

        # Running the tick again changes nothing: the lesson waits for the learner, never sent blindly.
        report = vereda_tick(tmp_path, database_url, fake_twilio, when + timedelta(minutes=5))
        assert "planned 0 lesson(s)" in report and "sent 0," in report, report

        # The learner answers the template: lesson 2 is the reply, and nothing else.
        phone.send("Sí, quiero seguir", walk.lesson(2))

        # The rest of the course, one lesson after another with SIGUIENTE, every question answered right.
        for number in range(3, len(course.lessons) + 1):
            received = phone.send("SIGUIENTE", walk.lesson(number))
            lesson = course.lessons[number - 1]
            for index, q in enumerate(lesson.quiz):
                label = q.options[q.answer - 1][LANG].strip()
                received = phone.answer(received[-1], q.answer, label, walk.answer(number, index))

        # ESTADO: the course is finished, with every answer right.
        status = say("status_line", LANG, "whatsapp", course=course.title[LANG], position=len(course.lessons),
                     total=len(course.lessons), right=walk.right, answered=walk.answered,
                     state=say("state_finished", LANG, "whatsapp"))
        phone.send("ESTADO", [Expected("status", status)])

        time.sleep(QUIET_SECONDS)
        with fake_twilio.lock:
            arrived, requests = list(fake_twilio.messages), fake_twilio.requests
        assert len(arrived) == phone.seen, [m.body[:60] for m in arrived[phone.seen:]]
        assert requests == len(arrived)  # no failed or repeated sends
        buttons = [m for m in arrived if m.form.get("ContentSid") == course.whatsapp_buttons]
        templates = [m for m in arrived if m.form.get("ContentSid") == course.whatsapp_template]
        assert len(buttons) >= 1 and len(templates) == 1

    assert walk.answered == sum(len(lesson.quiz) for lesson in course.lessons) and walk.right == walk.answered
    slowest = max(phone.first_replies)
    assert slowest < 5.0, phone.first_replies
    code = server.stop()
    assert not server.killed
    logs = server.stderr()
    assert "Traceback" not in logs and " ERROR " not in logs, logs[-4000:]
    assert "5512345678" not in logs  # no full phone number in the log
    print(f"\n[e2e whatsapp {backend(database_url)}] {len(arrived)} messages ({len(templates)} template, "
          f"{len(buttons)} with buttons), {walk.right}/{walk.answered} right, slowest first reply {slowest:.2f} s, "
          f"exit {code}, {time.monotonic() - began:.1f} s")
