"""End to end: `python app.py` as a subprocess; one Telegram learner takes "Seguridad humana" with buttons.

The learner's client is played by this test: it posts Updates to /webhooks/telegram with the secret token,
reads the inline keyboards the server sent to FakeTelegram (a local Bot API, reached through the real
python-telegram-bot `Bot` via TELEGRAM_API_BASE_URL), and presses the right buttons with callback_query
Updates built from them. Every message the server sends is checked, in order, and nothing more arrives.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.catalog import load_catalog
from bot.courses import Course
from bot.messages import say
from tests.e2e._server import LESSONS, AppProcess, backend, serve, wait_for
from tests.fakes.telegram_api import TOKEN, Call, FakeTelegram

COURSE_ID = "seguridad-humana"
SECRET = "e2e-secret-token_9f8e7d6c5b4a"
CHAT = 7012345678
USER = {"id": CHAT, "is_bot": False, "first_name": "María", "language_code": "es"}
PRIVATE = {"id": CHAT, "first_name": "María", "type": "private"}
BOT = {"id": 123456, "is_bot": True, "first_name": "Vereda", "username": "vereda_test_bot"}
FIRST_MESSAGE_ID = 1001  # FakeTelegram numbers the messages it accepts from 1001 on, in order
STEP_TIMEOUT = 15.0
QUIET_SECONDS = 2.5
LANG = "es"


@pytest.fixture
def server(tmp_path: Path, database_url: str, fake_telegram: FakeTelegram) -> Iterator[AppProcess]:
    """`python app.py` with only the Telegram channel configured."""
    with serve(tmp_path, DATABASE_URL=database_url, LESSONS_DIR=str(LESSONS), TELEGRAM_BOT_TOKEN=TOKEN,
               TELEGRAM_WEBHOOK_SECRET=SECRET, TELEGRAM_API_BASE_URL=fake_telegram.base_url,
               VEREDA_SCHEDULER="off") as app:
        yield app


# -- what the learner should receive ----------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    what: str
    text: str
    buttons: tuple[tuple[str, str], ...] = ()  # (label, callback_data)


def question(course: Course, lesson: int, index: int) -> Expected:
    q = course.lessons[lesson].quiz[index]
    text = say("question", LANG, "telegram", n=index + 1, total=len(course.lessons[lesson].quiz),
               ask=q.ask[LANG].strip())
    buttons = tuple((o[LANG].strip(), f"q:{course.id}:{lesson}:{index}|{n}") for n, o in enumerate(q.options, 1))
    return Expected(f"lesson {lesson + 1} question {index + 1}", text, buttons)


def right(course: Course, lesson: int, index: int) -> Expected:
    q = course.lessons[lesson].quiz[index]
    return Expected("right", f"{say('right', LANG)} {q.explain[LANG].strip()}")


def lesson_end(course: Course, lesson: int, right_answers: int, total_right: int, answered: int) -> Expected:
    score = say("lesson_score", LANG, n=lesson + 1, right=right_answers, total=len(course.lessons[lesson].quiz))
    if lesson + 1 < len(course.lessons):
        when = say("tomorrow", LANG, time=course.schedule.at.strftime("%H:%M"))
        return Expected(f"lesson {lesson + 1} end", f"{score}\n{say('next_at', LANG, 'telegram', when=when)}")
    percent = round(100 * total_right / answered)
    key = "course_passed" if percent >= round(course.pass_mark * 100) else "course_failed"
    result = say(key, LANG, "telegram", course=course.title[LANG], percent=percent, right=total_right,
                 total=answered, mark=round(course.pass_mark * 100))
    return Expected("course result", f"{score}\n{result}")


# -- the learner's Telegram client -----------------------------------------------------------------------


def keyboard(call: Call) -> tuple[tuple[str, str], ...]:
    markup = call.params.get("reply_markup") or {}
    return tuple((b["text"], b["callback_data"]) for row in markup.get("inline_keyboard", []) for b in row)


class Client:
    def __init__(self, app: AppProcess, fake: FakeTelegram, http: httpx.Client) -> None:
        self.app, self.fake, self.http = app, fake, http
        self.update_id = 730000000
        self.expected: list[Expected] = []
        self.presses: list[str] = []
        self.first_replies: list[float] = []

    def post(self, update: dict[str, Any], secret: str = SECRET) -> httpx.Response:
        return self.http.post(f"{self.app.base_url}/webhooks/telegram", json=update,
                              headers={"X-Telegram-Bot-Api-Secret-Token": secret})

    def message(self, text: str) -> dict[str, Any]:
        self.update_id += 1
        message: dict[str, Any] = {"message_id": self.update_id % 100000, "from": USER, "chat": PRIVATE,
                                   "date": int(time.time()), "text": text}
        if text.startswith("/"):
            message["entities"] = [{"offset": 0, "length": len(text.split(" ")[0]), "type": "bot_command"}]
        return {"update_id": self.update_id, "message": message}

    def callback(self, data: str, message_id: int) -> dict[str, Any]:
        self.update_id += 1
        query_id = f"{self.update_id}{CHAT}"[:19]
        self.presses.append(query_id)
        message = {"message_id": message_id, "from": BOT, "chat": PRIVATE, "date": int(time.time()),
                   "text": "…", "reply_markup": {"inline_keyboard": [[{"text": "…", "callback_data": data}]]}}
        return {"update_id": self.update_id, "callback_query": {
            "id": query_id, "from": USER, "chat_instance": "-8391542273856624811", "message": message,
            "data": data}}

    def wait_for(self, count: int) -> list[Call]:
        def failure(calls: list[Call]) -> str:
            got = [c.params["text"][:60] for c in calls[len(self.expected):]]
            return (f"expected {count} messages, got {len(calls)}; this step's: {got}\n"
                    f"server log:\n{self.app.stderr()[-4000:]}")

        return wait_for(lambda: self.fake.sent(CHAT), count, STEP_TIMEOUT, failure)

    def step(self, update: dict[str, Any], expect: list[Expected]) -> list[Call]:
        start, started = len(self.expected), time.monotonic()
        response = self.post(update)
        assert response.status_code == 200 and response.json() == {"ok": True}, response.text
        ack = None
        if "callback_query" in update:  # answered before the webhook returned
            ack = self.fake.of("answerCallbackQuery")[-1]
            assert ack.params["callback_query_id"] == update["callback_query"]["id"]
        if expect:
            self.wait_for(start + 1)
            self.first_replies.append(time.monotonic() - started)
        received = self.wait_for(start + len(expect))[start:]
        assert len(received) == len(expect), [c.params["text"][:60] for c in received]
        for want, got in zip(expect, received, strict=True):
            assert got.params["text"] == want.text, f"{want.what}:\n got: {got.params['text']!r}\nwant: {want.text!r}"
            assert keyboard(got) == want.buttons, want.what
            assert "parse_mode" not in got.params  # plain text
            assert int(got.params["chat_id"]) == CHAT
        if ack is not None and received:  # … and before the grading reply
            with self.fake.lock:
                order = [id(call) for call in self.fake.calls]
            assert order.index(id(ack)) < order.index(id(received[0]))
        self.expected.extend(expect)
        return received

    def press(self, option: int, expect: list[Expected]) -> list[Call]:
        """Press button `option` of the last keyboard the bot sent, as the Telegram client does."""
        calls = self.fake.sent(CHAT)
        index = max(i for i, call in enumerate(calls) if keyboard(call))
        data = keyboard(calls[index])[option - 1][1]
        return self.step(self.callback(data, FIRST_MESSAGE_ID + index), expect)


# -- the test --------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_telegram_learner_takes_seguridad_humana_with_buttons(server: AppProcess, fake_telegram: FakeTelegram,
                                                              database_url: str) -> None:
    began = time.monotonic()
    catalog, problems = load_catalog(LESSONS)
    assert not problems, problems
    course = catalog.get(COURSE_ID)
    assert course is not None and "telegram" in course.channels and course.schedule.days == tuple(range(7))

    health = httpx.get(f"{server.base_url}/healthz", timeout=5.0, trust_env=False).json()
    assert health["status"] == "ok" and health["channels"] == ["telegram"]

    with httpx.Client(timeout=10.0, trust_env=False) as http:
        client = Client(server, fake_telegram, http)

        # Not Telegram: refused, and nothing happens (checked by the final count).
        assert client.post(client.message("/start"), secret="guess").status_code == 403
        assert http.post(f"{server.base_url}/webhooks/telegram", content=b"{}",
                         headers={"X-Telegram-Bot-Api-Secret-Token": SECRET,
                                  "Content-Type": "application/json"}).status_code == 400

        # The deep link t.me/<bot>?start=seguridad-humana: enrolled, lesson 1 and its first question.
        title = course.title[LANG]
        client.step(client.message(f"/start {COURSE_ID}"), [
            Expected("enrolled", say("enrolled", LANG, course=title, total=len(course.lessons))),
            Expected("lesson 1", course.lessons[0].text_for(LANG, "telegram")),
            question(course, 0, 0),
        ])

        total_right = answered = 0
        for number, lesson in enumerate(course.lessons):
            if number > 0:  # the next lesson now, with the /next command
                client.step(client.message("/next"), [
                    Expected(f"lesson {number + 1}", lesson.text_for(LANG, "telegram")),
                    question(course, number, 0)])
            for index, q in enumerate(lesson.quiz):
                total_right, answered = total_right + 1, answered + 1
                after = (question(course, number, index + 1) if index + 1 < len(lesson.quiz)
                         else lesson_end(course, number, len(lesson.quiz), total_right, answered))
                client.press(q.answer, [right(course, number, index), after])
                if number == 0 and index == 0:
                    # a double tap on the same button, and a tap on the answered question: neither counts
                    calls = fake_telegram.sent(CHAT)
                    first_question = max(i for i, call in enumerate(calls[:-2]) if keyboard(call))
                    old = keyboard(calls[first_question])
                    client.step(client.callback(old[q.answer - 1][1], FIRST_MESSAGE_ID + first_question), [])
                    client.step(client.callback(old[q.answer % len(old)][1], FIRST_MESSAGE_ID + first_question),
                                [])

        # /status after the course; then Telegram re-delivers that update (we were slow): processed once.
        status = say("status_line", LANG, course=title, position=len(course.lessons), total=len(course.lessons),
                     right=total_right, answered=answered, state=say("state_finished", LANG))
        update = client.message("/status")
        client.step(update, [Expected("status", status)])
        assert client.post(update).status_code == 200

        time.sleep(QUIET_SECONDS)
        sent = fake_telegram.sent(CHAT)
        assert len(sent) == len(client.expected), [c.params["text"][:60] for c in sent[len(client.expected):]]
        assert [c.params["callback_query_id"] for c in fake_telegram.of("answerCallbackQuery")] == client.presses
        assert len(fake_telegram.calls) == len(sent) + len(client.presses) + len(fake_telegram.of("getMe")) + len(
            fake_telegram.of("editMessageReplyMarkup"))

    result = next(e for e in client.expected if e.what == "course result")
    assert f"100% ({answered} de {answered})" in result.text and "Aprobado" in result.text
    slowest = max(client.first_replies)
    assert slowest < 5.0, client.first_replies
    code = server.stop()
    assert not server.killed, f"python app.py ignored SIGTERM:\n{server.stderr()[-4000:]}"
    logs = server.stderr()
    assert "Traceback" not in logs and " ERROR " not in logs, logs[-4000:]
    assert TOKEN not in logs and TOKEN.split(":")[1] not in logs  # the bot token never reaches the log
    print(f"\n[e2e telegram {backend(database_url)}] {len(client.presses)} presses, {len(sent)} messages, "
          f"{answered} answers, slowest first reply {slowest:.2f} s, exit {code}, "
          f"{time.monotonic() - began:.1f} s")
