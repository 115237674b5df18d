"""End to end: `python app.py` as a subprocess; one SMS learner takes "Ruta segura" over real HTTP.

The learner texts the running server through signed Twilio webhooks (exactly as Twilio builds them) and
every reply is sent by the server's own dispatcher, through the real twilio Client, to the FakeTwilio
server. The test checks every message that reaches the provider, in order, and nothing more.
"""

from __future__ import annotations

import re
import time
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from twilio.request_validator import RequestValidator

from bot.catalog import load_catalog
from bot.courses import Course, Lesson, Question
from bot.messages import gsm_friendly, say
from bot.sms import analyse
from tests.conftest import sms_form
from tests.e2e._server import LESSONS, AppProcess, backend, serve, twilio_messages, wait_for
from tests.fakes.twilio_api import FakeTwilio, Sent

COURSE_ID = "ruta-segura"
LEARNER = "+525512345678"
SMS_FROM = "+15005550006"
LANG = "es"  # a new learner's language: Spanish first
STEP_TIMEOUT = 15.0  # seconds for one step's replies to reach the provider (the contract says about 1 s)
QUIET_SECONDS = 2.5  # how long nothing more may arrive at the end (the dispatcher polls every second)


# -- the server ---------------------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path: Path, database_url: str, fake_twilio: FakeTwilio) -> Iterator[AppProcess]:
    with serve(tmp_path, DATABASE_URL=database_url, LESSONS_DIR=str(LESSONS),
               TWILIO_ACCOUNT_SID=fake_twilio.account_sid, TWILIO_AUTH_TOKEN=fake_twilio.auth_token,
               TWILIO_SMS_FROM=SMS_FROM, TWILIO_API_BASE_URL=fake_twilio.base_url, VEREDA_SCHEDULER="off") as app:
        yield app


# -- what the learner should receive -------------------------------------------------------------------
@dataclass(frozen=True)
class Expected:
    """One SMS the provider must receive: its exact body and the author's content inside it."""

    what: str
    body: str
    author: tuple[str, ...] = ()  # course titles, lesson texts, questions, options, explanations

    def system_part(self) -> str:
        """The body without the author's content: Vereda's own wording, which must be GSM-7 on SMS."""
        rest = self.body
        for fragment in sorted(self.author, key=len, reverse=True):
            rest = rest.replace(fragment, "")
        return rest


def system(key: str, **values: object) -> str:
    return say(key, LANG, "sms", **values)


def numbered(options: list[str]) -> str:
    return "\n".join(f"{n}) {option}" for n, option in enumerate(options, start=1))


def options_of(question: Question) -> list[str]:
    return [option[LANG].strip() for option in question.options]


def lesson_message(number: int, lesson: Lesson) -> Expected:
    text = lesson.text_for(LANG, "sms")
    return Expected(f"lesson {number}", text, (text,))


def question_message(lesson: Lesson, index: int) -> Expected:
    question = lesson.quiz[index]
    ask, options = question.ask[LANG].strip(), options_of(question)
    head = system("question", n=index + 1, total=len(lesson.quiz), ask=ask)
    return Expected(f"question {index + 1}/{len(lesson.quiz)}", f"{head}\n{numbered(options)}", (ask, *options))


def feedback_message(question: Question, right: bool) -> Expected:
    options = options_of(question)
    if right:
        text, author = system("right"), []
    else:
        answer = f"{question.answer}) {options[question.answer - 1]}"
        text, author = system("wrong", answer=answer), [options[question.answer - 1]]
    explain = question.explain.get(LANG, "").strip()
    if explain:
        text, author = f"{text} {explain}", [*author, explain]
    return Expected("right" if right else "wrong", text, tuple(author))


def next_lesson_line(course: Course) -> str:
    # A daily course: the next lesson is always tomorrow at the course's hour, local time.
    assert course.schedule.days == tuple(range(7)), "the e2e expects a daily course"
    return system("next_at", when=system("tomorrow", time=course.schedule.at.strftime("%H:%M")))


# -- talking to the server ------------------------------------------------------------------------------
@dataclass
class Step:
    sent: str  # what the learner texted
    received: list[Sent]  # what reached the provider in reply, in order
    first_reply: float  # seconds from the webhook request to the first reply at the provider


class SmsLearner:
    """One phone sending signed Twilio webhooks to the server and checking what the provider receives."""

    def __init__(self, app: AppProcess, fake: FakeTwilio, http: httpx.Client) -> None:
        self.app, self.fake, self.http = app, fake, http
        self.validator = RequestValidator(fake.auth_token)
        self.expected: list[Expected] = []
        self.steps: list[Step] = []

    def post(self, form: dict[str, str], signature: str | None = None) -> httpx.Response:
        path = "/webhooks/twilio"
        if signature is None:  # what Twilio signs: the public URL it posts to, plus the form fields
            signature = self.validator.compute_signature(f"{self.app.base_url}{path}", form)
        return self.http.post(f"{self.app.base_url}{path}", data=form, headers={"X-Twilio-Signature": signature})

    def wait_for(self, count: int, timeout: float = STEP_TIMEOUT) -> list[Sent]:
        def failure(messages: list[Sent]) -> str:
            got = "\n".join(f"  {m.body[:70]!r}" for m in messages[len(self.expected):])
            return (f"expected {count} message(s) at the provider, got {len(messages)}; "
                    f"this step's so far:\n{got}\nserver log:\n{self.app.logs()[-4000:]}")

        return wait_for(lambda: twilio_messages(self.fake), count, timeout, failure)

    def text(self, body: str, expect: list[Expected], sid: str | None = None) -> list[Sent]:
        """Send `body` as an SMS and check that exactly `expect` arrives at the provider, in order."""
        start, started = len(self.expected), time.monotonic()
        form = sms_form(LEARNER, body, sid, to=SMS_FROM)
        response = self.post(form)
        assert response.status_code == 200, (body, response.status_code, response.text)
        assert response.headers["Content-Type"].startswith("text/xml")
        assert "<Response/>" in response.text  # replies never ride in the webhook response
        self.wait_for(start + 1)
        first_reply_seconds = time.monotonic() - started
        received = self.wait_for(start + len(expect))[start:]
        assert len(received) == len(expect), (
            f"after {body!r}: {len(received)} messages instead of {len(expect)}: {[m.body for m in received]}")
        for want, got in zip(expect, received, strict=True):
            self.check(want, got, after=body)
        self.expected.extend(expect)
        self.steps.append(Step(form["Body"], received, first_reply_seconds))
        return received

    def check(self, want: Expected, got: Sent, after: str) -> None:
        assert got.account_sid == self.fake.account_sid
        assert got.form.get("To") == LEARNER, (want.what, got.form)
        assert got.form.get("From") == SMS_FROM, (want.what, got.form)
        assert "MessagingServiceSid" not in got.form
        assert got.form.get("StatusCallback") == f"{self.app.base_url}/webhooks/twilio/status"
        assert got.body == want.body, f"after {after!r}, {want.what}:\n got: {got.body!r}\nwant: {want.body!r}"
        own = want.system_part()
        info = analyse(own)
        assert info.encoding == "GSM-7", (
            f"{want.what}: Vereda's own wording forces UCS-2 on SMS with {info.ucs2_chars}: {own!r}")


def plain(text: str) -> str:
    """How a learner on a basic phone types an option: lower case, no accents."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()


# -- the course walk ----------------------------------------------------------------------------------
@dataclass
class Walk:
    """What the learner should get at each step, given the answers so far (first answers only)."""

    course: Course
    right: int = 0
    answered: int = 0

    def __post_init__(self) -> None:
        self.title = self.course.title[LANG]
        self.by_lesson: dict[int, int] = {}

    @property
    def percent(self) -> int:
        return round(100 * self.right / self.answered)

    @property
    def passed(self) -> bool:
        return self.percent >= round(self.course.pass_mark * 100)

    def enrolled(self) -> Expected:
        return Expected("enrolled", system("enrolled", course=self.title, total=len(self.course.lessons)),
                        (self.title,))

    def lesson(self, number: int) -> list[Expected]:
        """Lesson `number` and its first question, or its closing line when it has no quiz."""
        lesson = self.course.lessons[number - 1]
        first = question_message(lesson, 0) if lesson.quiz else self.lesson_end(number, scored=False)
        return [lesson_message(number, lesson), first]

    def answer(self, number: int, index: int, right: bool) -> list[Expected]:
        """The feedback, then the next question or the lesson's closing line."""
        lesson = self.course.lessons[number - 1]
        self.answered += 1
        self.right += right
        self.by_lesson[number] = self.by_lesson.get(number, 0) + right
        after = [feedback_message(lesson.quiz[index], right)]
        if index + 1 < len(lesson.quiz):
            return [*after, question_message(lesson, index + 1)]
        return [*after, self.lesson_end(number, scored=True)]

    def lesson_end(self, number: int, scored: bool) -> Expected:
        """The lesson score (after a quiz), then when the next lesson comes, or the course result."""
        lines = []
        if scored:
            total = len(self.course.lessons[number - 1].quiz)
            lines.append(system("lesson_score", n=number, right=self.by_lesson.get(number, 0), total=total))
        if number < len(self.course.lessons):
            return Expected(f"lesson {number} end", "\n".join([*lines, next_lesson_line(self.course)]))
        mark = round(self.course.pass_mark * 100)
        result = system("course_passed" if self.passed else "course_failed", course=self.title,
                        percent=self.percent, right=self.right, total=self.answered, mark=mark)
        return Expected("course result", "\n".join([*lines, result]), (self.title,))

    def status(self) -> Expected:
        lessons = len(self.course.lessons)
        line = system("status_line", course=self.title, position=lessons, total=lessons, right=self.right,
                      answered=self.answered, state=system("state_finished"))
        return Expected("status", line, (self.title,))


# -- the test ---------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_sms_learner_takes_ruta_segura_end_to_end(server: AppProcess, fake_twilio: FakeTwilio,
                                                  database_url: str) -> None:
    began = time.monotonic()
    db = backend(database_url)
    catalog, problems = load_catalog(LESSONS)
    assert not problems, problems
    course = catalog.get(COURSE_ID)
    assert course is not None and "sms" in course.channels and LANG in course.languages
    assert sum(len(lesson.quiz) for lesson in course.lessons) >= 3, "the answer plan needs 3 questions"

    health = httpx.get(f"{server.base_url}/healthz", timeout=5.0, trust_env=False).json()
    assert health["status"] == "ok" and health["database"] == db
    assert COURSE_ID in health["courses"] and "sms" in health["channels"]

    walk = Walk(course)
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        learner = SmsLearner(server, fake_twilio, http)

        # A forged request is refused and sends nothing (checked by the final count).
        forged = learner.post(sms_form(LEARNER, "hola", to=SMS_FROM), signature="bm90IGEgc2lnbmF0dXJl")
        assert forged.status_code == 403

        # "hola": the welcome with the numbered menu of the courses on SMS.
        menu = [c for c in catalog.courses if "sms" in c.channels]
        # the menu is Vereda's message: the titles in it are GSM-7 too (one "ó" would make it UCS-2)
        titles = [gsm_friendly(c.title.get(LANG) or c.title[c.languages[0]]) for c in menu]
        welcome = Expected("welcome menu", f"{system('welcome')}\n{numbered(titles)}")
        [menu_message] = learner.text("hola", [welcome])
        assert menu_message.body.startswith("¡Hola! Soy Vereda")
        found = re.search(rf"^(\d+)\) {re.escape(walk.title)}$", menu_message.body, re.MULTILINE)
        assert found, menu_message.body
        choice = found.group(1)
        assert menu[int(choice) - 1].id == COURSE_ID

        # The course's menu number: enrolment and lesson 1 at once.
        learner.text(choice, [walk.enrolled(), *walk.lesson(1)])

        # Every lesson, every question. The plan: question 1 right by number; question 2 first an
        # unrecognised reply (re-asked once, not graded), then wrong by letter; question 3 right by the
        # option's own text typed without accents or capitals; any further one right by number.
        for number, lesson in enumerate(course.lessons, start=1):
            if number > 1:
                learner.text("SIGUIENTE", walk.lesson(number))
            for index, question in enumerate(lesson.quiz):
                options = options_of(question)
                if walk.answered == 1:
                    learner.text("no sé", [Expected("re-ask", system("reask", count=len(options))),
                                           question_message(lesson, index)])
                    wrong = 1 if question.answer != 1 else 2
                    learner.text(f"{chr(ord('A') + wrong - 1)})", walk.answer(number, index, right=False))
                elif walk.answered == 2:
                    learner.text(plain(options[question.answer - 1]), walk.answer(number, index, right=True))
                else:
                    learner.text(str(question.answer), walk.answer(number, index, right=True))

        # ESTADO after the course; then Twilio delivers that same webhook again (a retry): same
        # MessageSid, processed once, so the replay sends nothing (checked by the final count).
        replay_sid = "SM" + uuid.uuid4().hex
        learner.text("ESTADO", [walk.status()], sid=replay_sid)
        again = learner.post(sms_form(LEARNER, "ESTADO", replay_sid, to=SMS_FROM))
        assert again.status_code == 200 and "<Response/>" in again.text

        # Nothing extra arrives: no drip, no duplicate, no late reply.
        time.sleep(QUIET_SECONDS)
        with fake_twilio.lock:
            arrived = list(fake_twilio.messages)
            requests = fake_twilio.requests
        assert len(arrived) == len(learner.expected), [m.body for m in arrived[len(learner.expected):]]
        assert requests == len(arrived)  # one provider request per message: no failed or repeated sends

    # The course result, spelled out: score and pass/fail.
    [at] = [n for n, e in enumerate(learner.expected) if e.what == "course result"]
    result = arrived[at].body
    assert f"{walk.percent}% ({walk.right} de {walk.answered})" in result
    assert ("No aprobado" in result) == (not walk.passed) and ("Aprobado" in result) == walk.passed

    # Replies reach the provider about a second after the inbound message (generous bound here).
    slowest = max(step.first_reply for step in learner.steps)
    assert slowest < 5.0, [(s.sent, round(s.first_reply, 2)) for s in learner.steps]

    # Stopped cleanly: SIGTERM was enough.
    code = server.stop()
    assert not server.killed, f"python app.py ignored SIGTERM:\n{server.stderr()[-4000:]}"

    # The process logs, at the default INFO level: no full phone number and no message text.
    logs = server.logs()
    assert " INFO bot." in logs, "expected Vereda's own INFO log lines"
    assert "INFO vereda courses from " in logs and "ruta-segura (10 lessons)" in logs  # what started, said once
    assert "INFO vereda SMS and WhatsApp: on" in logs
    assert "Traceback" not in logs and " ERROR " not in logs, logs[-4000:]
    for phone in (LEARNER, LEARNER.lstrip("+"), LEARNER.removeprefix("+52"), SMS_FROM, SMS_FROM.lstrip("+")):
        assert phone not in logs, f"a full phone number ({phone}) is in the server log"
    texts = {line.strip() for e in learner.expected for line in e.body.splitlines()}
    texts |= {step.sent for step in learner.steps}
    leaked = sorted(t for t in texts if len(t) >= 4 and t in logs)
    assert not leaked, f"message text in the server log: {leaked}"

    lessons = sum(1 for e in learner.expected if re.fullmatch(r"lesson \d+", e.what))
    assert lessons == len(course.lessons)
    segments = sum(analyse(m.body).segments for m in arrived)
    ucs2 = sum(1 for m in arrived if analyse(m.body).encoding == "UCS-2")
    print(f"\n[e2e {db}] {len(learner.steps)} SMS in, {len(arrived)} SMS out ({segments} segments; "
          f"{ucs2} UCS-2, all for the author's text), {lessons}/{len(course.lessons)} lessons, "
          f"quiz {walk.right}/{walk.answered} = {walk.percent}% -> {'passed' if walk.passed else 'not passed'}"
          f" (pass mark {round(course.pass_mark * 100)}%); first replies "
          f"{', '.join(f'{s.sent!r} {s.first_reply:.2f} s' for s in learner.steps)}; "
          f"exit {code}; {time.monotonic() - began:.1f} s")
