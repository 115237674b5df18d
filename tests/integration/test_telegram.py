"""POST /webhooks/telegram with raw Bot API updates; replies sent by the app through the real `telegram.Bot`.

Every update under tests/fixtures/telegram/ is posted as Telegram posts it (JSON, with the secret-token
header). The app's own dispatcher sends the replies with python-telegram-bot to FakeTelegram, a local
Bot API server (TELEGRAM_API_BASE_URL points at it).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bot.catalog import load_catalog
from bot.channels.base import split_text
from bot.channels.telegram import ALLOWED_UPDATES, TEXT_LIMIT, TelegramSender
from bot.config import Settings
from bot.dispatcher import utcnow
from bot.messages import say
from bot.models import Answer, Enrolment, InboundMessage, Learner, MessageEvent, OutboundMessage
from tests.fakes.telegram_api import TOKEN, Call, FakeTelegram, TgFailure
from tests.helpers import count
from tests.helpers import settle_due as settle

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "telegram"
COURSES_WHATSAPP = ROOT / "tests" / "fixtures" / "courses_whatsapp"  # has the 5,000-character lesson
PATH = "/webhooks/telegram"
SECRET = "vereda-webhook-secret_0123456789"
CHAT = 7012345678  # the chat of every private-chat fixture (over 32 bits, as new Telegram ids are)
COURSE_ID = "seguridad-humana"
USER = {"id": CHAT, "is_bot": False, "first_name": "María", "last_name": "López", "language_code": "es"}
PRIVATE = {"id": CHAT, "first_name": "María", "last_name": "López", "type": "private"}
BOT = {"id": 123456, "is_bot": True, "first_name": "Vereda", "username": "vereda_test_bot"}
FIRST_MESSAGE_ID = 1001  # FakeTelegram numbers the messages it accepts from 1001 on, in order


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


COURSE = load_catalog(ROOT / "lessons")[0].get(COURSE_ID)
assert COURSE is not None


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings, fake_telegram: FakeTelegram) -> Settings:
    """The shared settings with the Telegram channel on, pointed at the fake Bot API."""
    return settings.with_(telegram_bot_token=TOKEN, telegram_webhook_secret=SECRET,
                          telegram_api_base_url=fake_telegram.base_url)


class Telegram:
    """Posts updates as Telegram does, and reads what the fake Bot API received."""

    def __init__(self, client, fake: FakeTelegram) -> None:  # type: ignore[no-untyped-def]
        self.client, self.fake = client, fake
        self.update_id = 500000000

    def post(self, update: dict[str, Any] | None = None, secret: str | None = SECRET, **kwargs: Any):  # type: ignore[no-untyped-def]
        headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
        if update is None:
            return self.client.post(PATH, headers=headers, **kwargs)
        return self.client.post(PATH, json=update, headers=headers)

    def next_id(self) -> int:
        self.update_id += 1
        return self.update_id

    def text(self, text: str, chat: dict[str, Any] = PRIVATE):  # type: ignore[no-untyped-def]
        return self.post(message_update(self.next_id(), text, chat))

    def press(self, data: str, message_id: int = FIRST_MESSAGE_ID, query_id: str | None = None):  # type: ignore[no-untyped-def]
        return self.post(callback_update(self.next_id(), data, message_id, query_id))

    def sent_texts(self) -> list[str]:
        return [c.params["text"] for c in self.fake.sent(CHAT)]


def message_update(update_id: int, text: str, chat: dict[str, Any] = PRIVATE,
                   message_id: int | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"message_id": message_id or update_id % 100000, "from": USER, "chat": chat,
                               "date": int(time.time()), "text": text}
    if text.startswith("/"):
        message["entities"] = [{"offset": 0, "length": len(text.split(" ", 1)[0]), "type": "bot_command"}]
    return {"update_id": update_id, "message": message}


def callback_update(update_id: int, data: str, message_id: int, query_id: str | None = None) -> dict[str, Any]:
    return {"update_id": update_id, "callback_query": {
        "id": query_id or str(uuid.uuid4().int)[:19], "from": USER, "chat_instance": "-8391542273856624811",
        "message": {"message_id": message_id, "from": BOT, "chat": PRIVATE, "date": int(time.time()),
                    "text": "Pregunta"},
        "data": data}}


def keyboard(call: Call) -> list[tuple[str, str]]:
    """(label, callback_data) of each button of a sendMessage call's inline keyboard."""
    markup = call.params.get("reply_markup") or {}
    return [(button["text"], button["callback_data"]) for row in markup.get("inline_keyboard", []) for button in row]


def last_question(fake: FakeTelegram) -> tuple[int, list[tuple[str, str]]]:
    """The message id and buttons of the last message with an inline keyboard."""
    calls = fake.sent()
    for index in range(len(calls) - 1, -1, -1):
        if keyboard(calls[index]):
            return FIRST_MESSAGE_ID + index, keyboard(calls[index])
    raise AssertionError("no message with an inline keyboard was sent")


def answers(runtime) -> list[tuple[int, int, int, bool]]:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        return [(a.lesson, a.question, a.choice, a.correct)
                for a in session.scalars(select(Answer).order_by(Answer.id))]


def the_learner(runtime) -> Learner:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        return session.scalars(select(Learner).where(Learner.telegram_chat_id == CHAT)).one()


def rows(runtime) -> list[OutboundMessage]:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        return list(session.scalars(select(OutboundMessage).order_by(OutboundMessage.id)))


@pytest.fixture
def tg(client, fake_telegram: FakeTelegram) -> Telegram:  # type: ignore[no-untyped-def]
    return Telegram(client, fake_telegram)


def enrol(tg: Telegram, runtime) -> None:  # type: ignore[no-untyped-def]
    """/start seguridad-humana: enrolled, lesson 1 and its first question (three messages)."""
    assert tg.text(f"/start {COURSE_ID}").status_code == 200
    tg.fake.wait_for(3, CHAT)
    settle(runtime)


def press_right(tg: Telegram, runtime, lesson: int, question: int) -> None:  # type: ignore[no-untyped-def]
    message_id, buttons = last_question(tg.fake)
    right = COURSE.lessons[lesson].quiz[question].answer
    assert buttons[right - 1][1] == f"q:{COURSE_ID}:{lesson}:{question}|{right}"
    assert tg.press(buttons[right - 1][1], message_id).status_code == 200
    settle(runtime)


# -- every raw update, with its effect ----------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    replies: bool  # something is sent to the chat
    graded: bool = False  # a quiz answer is stored
    opted_out: bool = False
    first_reply: str | None = None  # the first reply's exact text, where it is fixed


MEDIA = say("media_only", "es")
Q2 = COURSE.lessons[0].quiz[1]  # the open question when each fixture arrives (its right answer is 1)
RIGHT = say("right", "es") + " " + Q2.explain["es"].strip()

EFFECTS: dict[str, Effect] = {
    "text": Effect(True, first_reply=say("greeting_question", "es")),  # "hola" mid-quiz
    "text_answer": Effect(True, graded=True, first_reply=RIGHT),
    "start_course": Effect(True, first_reply=say("already_enrolled", "es", course=COURSE.title["es"], position=1,
                                                 total=len(COURSE.lessons))),
    # /start without a known course is the menu, mid-quiz too: never taken as an (unrecognised) answer
    "start_plain": Effect(True, first_reply=say("welcome", "es")),
    "start_unknown_course": Effect(True, first_reply=say("welcome", "es")),
    "command_help": Effect(True, first_reply=say("help_telegram", "es")),
    "command_status_with_bot_name": Effect(True),
    "command_stop": Effect(False, opted_out=True),
    "callback_query": Effect(True, graded=True, first_reply=RIGHT),
    "callback_query_old": Effect(False),
    "callback_query_not_ours": Effect(False),
    "edited_message": Effect(False),
    "sticker": Effect(True, first_reply=MEDIA),
    "photo_with_caption": Effect(True, first_reply=MEDIA),
    "location": Effect(True, first_reply=MEDIA),
    "contact": Effect(True, first_reply=MEDIA),
    "voice": Effect(True, first_reply=MEDIA),
    "document": Effect(True, first_reply=MEDIA),
    "group_message": Effect(False),
    "supergroup_command": Effect(False),
    "channel_post": Effect(False),
    "my_chat_member_kicked": Effect(False, opted_out=True),
    "my_chat_member_member": Effect(False),
    "my_chat_member_group_added": Effect(False),
    "message_reaction": Effect(False),
    "inline_query": Effect(False),
}


def test_every_fixture_has_an_expected_effect() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(EFFECTS)
    assert len(EFFECTS) >= 15


@pytest.mark.parametrize("name", sorted(EFFECTS))
def test_raw_update_has_its_effect(name: str, tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    enrol(tg, runtime)
    press_right(tg, runtime, 0, 0)  # question 2 of lesson 1 is now open
    before_sent, before_answers = len(fake_telegram.sent(CHAT)), answers(runtime)
    update = fixture(name)
    effect = EFFECTS[name]

    started = time.monotonic()
    response = tg.post(update)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"ok": True}
    assert time.monotonic() - started < 2.0  # answered fast: replies go through the outbox
    settle(runtime)

    replies = [c.params["text"] for c in fake_telegram.sent(CHAT)[before_sent:]]
    assert bool(replies) == effect.replies, replies
    if effect.first_reply is not None:
        assert replies[0] == effect.first_reply
    graded = answers(runtime)[len(before_answers):]
    assert graded == ([(0, 1, 1, True)] if effect.graded else []), graded
    assert (the_learner(runtime).opted_out_at is not None) == effect.opted_out
    assert count(runtime, Learner) == 1  # groups, channels and bots never become learners
    if "callback_query" in update:  # every press is answered, counted or not
        ids = [c.params["callback_query_id"] for c in fake_telegram.of("answerCallbackQuery")]
        assert update["callback_query"]["id"] in ids
    # plain text only: no parse mode, so lesson punctuation can never break a message
    assert all("parse_mode" not in c.params for c in fake_telegram.sent())


def test_media_reply_repeats_the_open_question_with_its_keyboard(tg: Telegram, runtime,
                                                                  fake_telegram: FakeTelegram) -> None:
    enrol(tg, runtime)
    before = len(fake_telegram.sent(CHAT))
    tg.post(fixture("photo_with_caption"))  # caption "1" is the right answer, but media is never graded
    settle(runtime)
    media, question = fake_telegram.sent(CHAT)[before:]
    assert media.params["text"] == MEDIA and not keyboard(media)
    assert [label for label, _ in keyboard(question)] == [o["es"] for o in COURSE.lessons[0].quiz[0].options]
    assert answers(runtime) == []


# -- authenticity and bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "", "wrong-secret", SECRET + "x", SECRET.upper()])
def test_wrong_or_missing_secret_is_403_without_effect(secret: str | None, tg: Telegram, runtime,
                                                       fake_telegram: FakeTelegram) -> None:
    for name in ("start_course", "callback_query", "my_chat_member_kicked"):
        response = tg.post(fixture(name), secret=secret)
        assert response.status_code == 403
        assert "X-Telegram-Bot-Api-Secret-Token" in response.get_data(as_text=True)
    time.sleep(0.2)
    assert count(runtime, InboundMessage) == 0 and count(runtime, Learner) == 0
    assert fake_telegram.calls == []  # not even answerCallbackQuery


@pytest.mark.parametrize(("body", "content_type"), [
    (b"", "application/json"),
    (b"not json", "application/json"),
    (b"{\"update_id\": 1,", "application/json"),
    (b"[]", "application/json"),
    (b"{}", "application/json"),
    (b"{\"update_id\": \"850000101\", \"message\": {}}", "application/json"),
    (b"{\"update_id\": null}", "application/json"),
    (b"{\"update_id\": 5, \"message\": \"hola\"}", "application/json"),
    (b"{\"update_id\": 5, \"message\": {\"message_id\": 1}}", "application/json"),
    (b"update_id=5", "application/x-www-form-urlencoded"),
    (b"{\"update_id\": 5, \"message\": {\"message_id\": 1, \"date\": 1764763401, \"text\": \"hola\", "
     b"\"chat\": {\"id\": 100000000000000000000000, \"type\": \"private\"}}}", "application/json"),
    (b"{\"update_id\": 100000000000000000000000, \"message\": {\"message_id\": 1, \"date\": 1764763401, "
     b"\"text\": \"hola\", \"chat\": {\"id\": 7, \"type\": \"private\"}}}", "application/json"),
    (b"{\"update_id\": 5, \"message\": {\"message_id\": 1, \"date\": 1764763401, \"text\": \"hola\"}}",
     "application/json"),
    *[(json.dumps({"update_id": 5, "message": {"message_id": 1, "date": 1764763401, "text": "hola",
                                                "chat": {"id": chat_id, "type": "private"}}}).encode(),
       "application/json") for chat_id in ("abc", "7007", 7008.5, 0, True)],
    (json.dumps({"update_id": True, "message": {"message_id": 1, "date": 1764763401, "text": "hola",
                                                 "chat": {"id": 7, "type": "private"}}}).encode(), "application/json"),
    (b"{\"update_id\": 5, \"message\": {\"message_id\": 1, \"date\": 1764763401, \"text\": \"\\ud800hola\", "
     b"\"chat\": {\"id\": 7, \"type\": \"private\"}}}", "application/json"),
    (json.dumps({"update_id": 5, "my_chat_member": {
        "from": {"id": 7, "is_bot": False, "first_name": "A"}, "date": 1764763401,
        "old_chat_member": {"status": "member", "user": {"id": 1, "is_bot": True, "first_name": "B"}},
        "new_chat_member": {"status": "kicked", "user": {"id": 1, "is_bot": True, "first_name": "B"},
                            "until_date": 0}}}).encode(), "application/json"),
    (json.dumps({"update_id": 5, "my_chat_member": {
        "chat": {"id": 7, "type": "private"}, "from": {"id": 7, "is_bot": False, "first_name": "A"},
        "date": 1764763401,
        "old_chat_member": {"status": "member", "user": {"id": 1, "is_bot": True, "first_name": "B"}}}}).encode(),
     "application/json"),
    (b"[" * 100_000, "application/json"),
    (b"{\"update_id\": 5, \"message\": {\"message_id\": 1, \"date\": 1764763401, \"text\": 12345, "
     b"\"chat\": {\"id\": 7, \"type\": \"private\"}}}", "application/json"),
])
def test_a_body_that_is_not_an_update_is_400(body: bytes, content_type: str, tg: Telegram, runtime,
                                             fake_telegram: FakeTelegram) -> None:
    response = tg.post(data=body, content_type=content_type)
    assert response.status_code == 400
    assert response.get_data(as_text=True).strip()  # a one-line reason
    assert count(runtime, InboundMessage) == 0 and fake_telegram.calls == []


def test_without_token_or_secret_the_channel_is_off_503(make_app, fake_telegram: FakeTelegram) -> None:
    for changes in ({"telegram_bot_token": None}, {"telegram_webhook_secret": None}):
        client = make_app(**changes).test_client()
        response = client.post(PATH, json=fixture("text"), headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
        assert response.status_code == 503
        assert response.get_data(as_text=True).count("\n") == 1
    assert fake_telegram.calls == []


# -- once per update_id ----------------------------------------------------------------------------------


def test_same_update_twice_is_processed_once(tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    update = fixture("start_course")
    assert tg.post(update).status_code == 200
    fake_telegram.wait_for(3, CHAT)
    assert tg.post(update).status_code == 200  # Telegram re-delivers when it missed our 200
    settle(runtime)
    time.sleep(0.3)
    assert len(fake_telegram.sent(CHAT)) == 3
    assert count(runtime, InboundMessage) == 1 and count(runtime, Enrolment) == 1


def test_same_update_eight_times_at_once_is_processed_once(live_server: str, runtime,
                                                           fake_telegram: FakeTelegram) -> None:
    barrier = threading.Barrier(8)
    statuses: list[int] = []
    lock = threading.Lock()
    body = json.dumps(fixture("start_course")).encode()

    def post() -> None:
        with httpx.Client(timeout=30, trust_env=False) as http:
            request = http.build_request("POST", f"{live_server}{PATH}", content=body, headers={
                "Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET})
            barrier.wait()
            status = http.send(request).status_code
        with lock:
            statuses.append(status)

    workers = [threading.Thread(target=post) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert statuses == [200] * 8
    fake_telegram.wait_for(3, CHAT)
    settle(runtime)
    time.sleep(0.3)
    assert len(fake_telegram.sent(CHAT)) == 3
    assert count(runtime, InboundMessage) == 1 and count(runtime, Learner) == 1


# -- buttons ---------------------------------------------------------------------------------------------


def test_question_goes_out_as_an_inline_keyboard(tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    enrol(tg, runtime)
    enrolled, lesson, question = fake_telegram.sent(CHAT)
    title = COURSE.title["es"]
    assert enrolled.params["text"] == say("enrolled", "es", course=title, total=len(COURSE.lessons))
    assert lesson.params["text"] == COURSE.lessons[0].text_for("es", "telegram")
    first = COURSE.lessons[0].quiz[0]
    assert question.params["text"] == say("question", "es", n=1, total=3, ask=first.ask["es"].strip())
    assert keyboard(question) == [(o["es"], f"q:{COURSE_ID}:0:0|{n}") for n, o in enumerate(first.options, 1)]
    assert "1)" not in question.params["text"]  # buttons, not numbered text
    assert not keyboard(enrolled) and not keyboard(lesson)


def test_press_is_acknowledged_before_it_is_graded(tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    enrol(tg, runtime)
    message_id, buttons = last_question(fake_telegram)
    query_id = "4382bfdwdsb3230001"
    response = tg.press(buttons[1][1], message_id, query_id=query_id)
    assert response.status_code == 200
    # answered synchronously, before the webhook returned: the client's spinner stops at once
    assert [c.params["callback_query_id"] for c in fake_telegram.of("answerCallbackQuery")] == [query_id]
    settle(runtime)
    with fake_telegram.lock:
        calls = list(fake_telegram.calls)
    acked = next(i for i, c in enumerate(calls) if c.method == "answerCallbackQuery")
    graded = next(i for i, c in enumerate(calls)
                  if c.method == "sendMessage" and c.params["text"].startswith(say("right", "es")))
    assert acked < graded
    assert answers(runtime) == [(0, 0, 2, True)]


@pytest.mark.parametrize("number", ["²", "9" * 5000, "1" * 4, ""])
def test_a_press_whose_data_is_not_ours_is_answered_and_ignored(number: str, tg: Telegram, runtime,
                                                                fake_telegram: FakeTelegram) -> None:
    enrol(tg, runtime)
    message_id, buttons = last_question(fake_telegram)
    ref = buttons[0][1].rpartition("|")[0]
    sent = len(fake_telegram.sent(CHAT))
    assert tg.press(f"{ref}|{number}", message_id).status_code == 200
    assert len(fake_telegram.of("answerCallbackQuery")) == 1  # the spinner stops
    settle(runtime)
    time.sleep(0.2)
    assert len(fake_telegram.sent(CHAT)) == sent and answers(runtime) == []


def test_old_press_and_double_press_count_once(tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    enrol(tg, runtime)
    message_id, buttons = last_question(fake_telegram)
    assert tg.press(buttons[1][1], message_id).status_code == 200  # right
    settle(runtime)
    sent = len(fake_telegram.sent(CHAT))
    assert tg.press(buttons[1][1], message_id).status_code == 200  # the same button again
    assert tg.press(buttons[0][1], message_id).status_code == 200  # another button of the old question
    settle(runtime)
    time.sleep(0.2)
    assert len(fake_telegram.sent(CHAT)) == sent  # no feedback, no re-ask
    assert len(fake_telegram.of("answerCallbackQuery")) == 3  # but every press is answered
    assert answers(runtime) == [(0, 0, 2, True)]
    with runtime.factory() as session:
        assert session.scalars(select(Enrolment)).one().question == 1


def test_press_of_a_stale_button_after_a_typed_answer_does_not_count(tg: Telegram, runtime,
                                                                   fake_telegram: FakeTelegram) -> None:
    enrol(tg, runtime)
    message_id, buttons = last_question(fake_telegram)
    tg.text("1")  # typed: wrong
    settle(runtime)
    tg.press(buttons[1][1], message_id)  # then the right button of the same question
    settle(runtime)
    assert answers(runtime) == [(0, 0, 1, False)]


def cleared(fake: FakeTelegram, count: int, timeout: float = 5.0) -> list[int]:
    """The message ids whose keyboard was removed (editMessageReplyMarkup without a markup), once `count` are."""
    deadline = time.monotonic() + timeout
    while True:
        edits = fake.of("editMessageReplyMarkup")
        if len(edits) >= count or time.monotonic() > deadline:
            assert all(not c.params.get("reply_markup") for c in edits)
            assert all(int(c.params["chat_id"]) == CHAT for c in edits)
            return sorted(int(c.params["message_id"]) for c in edits)
        time.sleep(0.02)


def test_a_pressed_keyboard_is_removed(tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    enrol(tg, runtime)
    message_id, buttons = last_question(fake_telegram)
    tg.press(buttons[1][1], message_id)
    settle(runtime)
    assert cleared(fake_telegram, 1) == [message_id]
    # the next question has its own keyboard, untouched
    next_id, _ = last_question(fake_telegram)
    assert next_id != message_id
    tg.press(buttons[0][1], message_id)  # a press on the spent keyboard (an old client) clears it again
    assert cleared(fake_telegram, 2) == [message_id, message_id]
    assert answers(runtime) == [(0, 0, 2, True)]


def test_a_typed_answer_removes_the_question_keyboard(tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    enrol(tg, runtime)
    message_id, _ = last_question(fake_telegram)
    tg.text("2")
    settle(runtime)
    assert cleared(fake_telegram, 1) == [message_id]
    assert answers(runtime) == [(0, 0, 2, True)]
    tg.text("AYUDA")  # no answer graded: no keyboard touched
    settle(runtime)
    time.sleep(0.2)
    assert cleared(fake_telegram, 1, timeout=0) == [message_id]


def test_a_failing_keyboard_edit_changes_nothing(tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    enrol(tg, runtime)
    message_id, buttons = last_question(fake_telegram)
    fake_telegram.fail_next("editMessageReplyMarkup", TgFailure(400, "Bad Request: message can't be edited"))
    assert tg.press(buttons[1][1], message_id).status_code == 200
    settle(runtime)
    deadline = time.monotonic() + 5
    while fake_telegram.failures["editMessageReplyMarkup"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not fake_telegram.failures["editMessageReplyMarkup"]  # tried, and refused
    assert answers(runtime) == [(0, 0, 2, True)]
    next_id, next_buttons = last_question(fake_telegram)
    tg.press(next_buttons[0][1], next_id)  # the course goes on, and the next edit works
    settle(runtime)
    assert cleared(fake_telegram, 1) == [next_id]
    assert len(answers(runtime)) == 2


def test_edited_answer_is_never_graded_again(tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    enrol(tg, runtime)
    original = message_update(tg.next_id(), "3", message_id=77)
    assert tg.post(original).status_code == 200
    settle(runtime)
    assert answers(runtime) == [(0, 0, 3, False)]
    sent = len(fake_telegram.sent(CHAT))
    edited_message = dict(original["message"], text="2", edit_date=int(time.time()))
    assert tg.post({"update_id": tg.next_id(), "edited_message": edited_message}).status_code == 200
    settle(runtime)
    time.sleep(0.2)
    assert answers(runtime) == [(0, 0, 3, False)]
    assert len(fake_telegram.sent(CHAT)) == sent


def test_menu_buttons_enrol(tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    assert tg.post(fixture("start_plain")).status_code == 200  # /start without a course: the menu
    [welcome] = fake_telegram.wait_for(1, CHAT)
    assert welcome.params["text"] == say("welcome", "es")
    labels = [label for label, _ in keyboard(welcome)]
    assert COURSE.title["es"] in labels
    data = keyboard(welcome)[labels.index(COURSE.title["es"])][1]
    assert data.startswith("menu|")
    tg.press(data, FIRST_MESSAGE_ID)
    fake_telegram.wait_for(4, CHAT)
    settle(runtime)
    assert fake_telegram.sent(CHAT)[1].params["text"].startswith(say("enrolled", "es", course=COURSE.title["es"],
                                                                     total=len(COURSE.lessons))[:20])
    with runtime.factory() as session:
        assert session.scalars(select(Enrolment.course_id)).one() == COURSE_ID


@pytest.mark.parametrize(("command", "reply"), [
    ("/help", say("help_telegram", "es")),
    ("/next", say("finish_quiz_first", "es")),
    ("/status", say("status_line_reading", "es", course=COURSE.title["es"], position=1, total=len(COURSE.lessons),
                    state="")),  # nothing answered yet: no score
    ("/lang", say("language_ask", "es")),
    ("/help@vereda_test_bot", say("help_telegram", "es")),
])
def test_commands_map_to_keywords(command: str, reply: str, tg: Telegram, runtime,
                                  fake_telegram: FakeTelegram) -> None:
    enrol(tg, runtime)
    before = len(fake_telegram.sent(CHAT))
    tg.text(command)
    settle(runtime)
    assert fake_telegram.sent(CHAT)[before].params["text"] == reply


def test_stop_then_start_deep_link_opts_in_again(tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    enrol(tg, runtime)
    before = len(fake_telegram.sent(CHAT))
    tg.text("/stop")
    tg.text("/help")
    settle(runtime)
    time.sleep(0.2)
    assert len(fake_telegram.sent(CHAT)) == before  # no confirmation, nothing at all
    tg.text(f"/start {COURSE_ID}")
    settle(runtime)
    assert fake_telegram.sent(CHAT)[before].params["text"] == say("welcome_back", "es")
    assert the_learner(runtime).opted_out_at is None


# -- provider signals --------------------------------------------------------------------------------------


def test_kicked_opts_out_and_no_drip_follows(tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    from scheduler import tick

    enrol(tg, runtime)
    press_right(tg, runtime, 0, 0)
    sent = len(fake_telegram.sent(CHAT))
    assert tg.post(fixture("my_chat_member_kicked")).status_code == 200
    assert the_learner(runtime).opted_out_at is not None
    report = tick(runtime, now=utcnow() + timedelta(days=2), budget=5)
    assert report.lessons_planned == 0 and report.sent == 0
    assert len(fake_telegram.sent(CHAT)) == sent
    # unblocked: Telegram says member again, and the learner is reachable again
    assert tg.post(fixture("my_chat_member_member")).status_code == 200
    assert the_learner(runtime).opted_out_at is None


def test_unblocking_after_stop_does_not_opt_in_again(tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    from scheduler import tick

    enrol(tg, runtime)
    tg.text("/stop")
    settle(runtime)
    sent = len(fake_telegram.sent(CHAT))
    assert tg.post(fixture("my_chat_member_kicked")).status_code == 200
    assert tg.post(fixture("my_chat_member_member")).status_code == 200
    assert the_learner(runtime).opted_out_at is not None  # /stop was theirs: only their START lifts it
    report = tick(runtime, now=utcnow() + timedelta(days=2), budget=5)
    assert report.lessons_planned == 0 and report.sent == 0
    assert len(fake_telegram.sent(CHAT)) == sent
    tg.text("START")
    settle(runtime)
    assert the_learner(runtime).opted_out_at is None


def test_kicked_from_an_unknown_chat_creates_nobody(tg: Telegram, runtime) -> None:
    assert tg.post(fixture("my_chat_member_kicked")).status_code == 200
    assert count(runtime, Learner) == 0


def test_403_on_send_opts_the_learner_out(tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    fake_telegram.fail_next("sendMessage", TgFailure(403))
    assert tg.text(f"/start {COURSE_ID}").status_code == 200  # three replies queued
    deadline = time.monotonic() + 5
    while the_learner(runtime).opted_out_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    settle(runtime)
    assert the_learner(runtime).opted_out_at is not None
    statuses = [(r.status, r.error_code) for r in rows(runtime)]
    assert statuses[0] == ("failed", "403")
    assert [s for s, _ in statuses[1:]] == ["cancelled", "cancelled"]  # nothing more to a person who blocked us
    assert fake_telegram.sent(CHAT) == []
    tg.text("hola")
    settle(runtime)
    time.sleep(0.2)
    assert fake_telegram.sent(CHAT) == []


def test_429_is_retried_after_exactly_retry_after(tg: Telegram, runtime, fake_telegram: FakeTelegram) -> None:
    fake_telegram.fail_next("sendMessage", TgFailure(429, retry_after=37))
    assert tg.text("/help").status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        [row] = rows(runtime)
        if row.error_code == "429" and row.status == "queued":
            break
        time.sleep(0.02)
    assert (row.status, row.error_code, row.attempts) == ("queued", "429", 1)
    assert row.next_attempt_at - row.updated_at == timedelta(seconds=37)
    with runtime.factory() as session:
        assert [(e.status, e.error_code) for e in session.scalars(select(MessageEvent))] == [("retry", "429")]
    assert fake_telegram.sent(CHAT) == []
    # not a moment before retry_after …
    early = runtime.outbox.dispatch(lambda: row.next_attempt_at - timedelta(milliseconds=1))
    assert early.total() == 0 and fake_telegram.sent(CHAT) == []
    # … and at retry_after it goes
    due = runtime.outbox.dispatch(lambda: row.next_attempt_at)
    assert due.sent == 1
    assert [c.params["text"] for c in fake_telegram.sent(CHAT)] == [say("help_telegram", "es")]
    [row] = rows(runtime)
    assert (row.status, row.attempts) == ("sent", 2)
    assert row.provider_id == f"{CHAT}:{FIRST_MESSAGE_ID}"


# -- long lessons -------------------------------------------------------------------------------------------


def test_render_splits_a_5000_character_lesson_in_order_under_4096() -> None:
    sender = TelegramSender(Settings(telegram_bot_token=TOKEN))
    words = [f"palabra{n:04d}" for n in range(5000 // 12 + 20)]
    paragraphs = [" ".join(words[i:i + 40]) for i in range(0, len(words), 40)]
    text = "\n\n".join(paragraphs)
    assert len(text) > 5000
    parts = sender.render("telegram", text, ("Sí", "No"))
    assert len(parts) == 2
    assert all(len(part.body) <= TEXT_LIMIT for part in parts)
    assert "\n\n".join(part.body for part in parts) == text  # cut at a paragraph boundary, nothing lost
    assert [part.buttons for part in parts] == [(), ("Sí", "No")]  # the keyboard rides on the last part
    one_paragraph = " ".join(words)
    parts = sender.render("telegram", one_paragraph, ())
    assert all(len(part.body) <= TEXT_LIMIT for part in parts)
    assert " ".join(part.body for part in parts) == one_paragraph  # cut between words
    assert all(part.body.split(" ")[0] in words and part.body.split(" ")[-1] in words for part in parts)


@pytest.mark.parametrize("unit", ["😀", "🇲🇽", "e\u0301", "👩\u200d⚕\ufe0f", "ñ"])
def test_render_never_breaks_a_character(unit: str) -> None:
    """Text without any space or line break is cut hard, but never inside what the reader sees as one character."""
    text = "x" + unit * (5000 // len(unit) + 1)
    parts = TelegramSender(Settings(telegram_bot_token=TOKEN)).render("telegram", text, ())
    assert len(parts) >= 2
    assert "".join(part.body for part in parts) == text
    for part in parts:
        assert 0 < len(part.body) <= TEXT_LIMIT
        part.body.encode("utf-8")  # no lone surrogate
        rest = part.body[1:] if part is parts[0] else part.body
        assert rest.startswith(unit) and rest.endswith(unit), (unit, part.body[:5], part.body[-5:])


def test_split_text_keeps_order_for_every_limit() -> None:
    text = "\n\n".join(f"Párrafo {n}. " + "texto " * (n % 17 + 3) for n in range(200))
    for limit in (80, 160, 1600, 4096):
        pieces = split_text(text, limit)
        assert all(len(piece) <= limit for piece in pieces)
        assert " ".join(" ".join(pieces).split()) == " ".join(text.split())


def test_long_lesson_reaches_telegram_in_order_as_plain_text(make_app, fake_telegram: FakeTelegram) -> None:
    application = make_app(lessons_dir=str(COURSES_WHATSAPP))
    runtime = application.extensions["vereda"]
    course = runtime.catalog.get("leccion-larga")
    lesson_text = course.lessons[0].text_for("es", "telegram")
    assert len(lesson_text) > 5000
    tg = Telegram(application.test_client(), fake_telegram)
    assert tg.text("/start leccion-larga").status_code == 200
    fake_telegram.wait_for(4, CHAT)
    settle(runtime)
    enrolled, *parts, question = fake_telegram.sent(CHAT)
    assert enrolled.params["text"].startswith("Te inscribiste")
    bodies = [p.params["text"] for p in parts]
    assert len(bodies) == 2 and all(len(body) <= TEXT_LIMIT for body in bodies)
    assert "\n\n".join(bodies) == lesson_text  # in order, cut between paragraphs
    assert bodies[1].startswith("Párrafo ")
    assert not any(keyboard(p) for p in parts) and keyboard(question)
    assert all("parse_mode" not in c.params for c in fake_telegram.sent())


# -- the operator commands ------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(fake_telegram: FakeTelegram, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no .env file of the developer's
    return {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_WEBHOOK_SECRET": SECRET,
            "TELEGRAM_API_BASE_URL": fake_telegram.base_url, "PUBLIC_BASE_URL": "https://vereda.example.org/",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}


def vereda(env: dict[str, str], *args: str):  # type: ignore[no-untyped-def]
    from bot.cli import main

    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_cli_sets_shows_and_deletes_the_webhook(cli_env: dict[str, str], fake_telegram: FakeTelegram) -> None:
    result = vereda(cli_env, "telegram", "set-webhook")
    assert result.exit_code == 0, result.output
    assert fake_telegram.webhook["url"] == "https://vereda.example.org/webhooks/telegram"
    assert fake_telegram.webhook["secret_token"] == SECRET
    assert fake_telegram.webhook["allowed_updates"] == ALLOWED_UPDATES
    assert set(ALLOWED_UPDATES) >= {"message", "edited_message", "callback_query", "my_chat_member"}
    assert "https://vereda.example.org/webhooks/telegram" in result.output
    assert SECRET not in result.output  # the secret is never printed

    result = vereda(cli_env, "telegram", "info")
    assert result.exit_code == 0, result.output
    assert "@vereda_test_bot" in result.output and "123456" in result.output
    assert "https://vereda.example.org/webhooks/telegram" in result.output
    assert ", ".join(ALLOWED_UPDATES) in result.output

    result = vereda(cli_env, "telegram", "delete-webhook")
    assert result.exit_code == 0, result.output
    assert fake_telegram.webhook == {} and len(fake_telegram.of("deleteWebhook")) == 1
    result = vereda(cli_env, "telegram", "info")
    assert "webhook: (none)" in result.output


def test_cli_set_webhook_with_an_explicit_url(cli_env: dict[str, str], fake_telegram: FakeTelegram) -> None:
    url = "https://bot.example.net/webhooks/telegram"
    result = vereda(cli_env, "telegram", "set-webhook", "--url", url)
    assert result.exit_code == 0, result.output
    assert fake_telegram.webhook["url"] == url and fake_telegram.webhook["secret_token"] == SECRET


@pytest.mark.parametrize("missing", ["TELEGRAM_BOT_TOKEN", "TELEGRAM_WEBHOOK_SECRET"])
def test_cli_set_webhook_refuses_without_token_or_secret(missing: str, cli_env: dict[str, str],
                                                        fake_telegram: FakeTelegram) -> None:
    result = vereda({**cli_env, missing: ""}, "telegram", "set-webhook")
    assert result.exit_code != 0
    assert missing in result.output
    assert fake_telegram.of("setWebhook") == []


# -- a slow Bot API never slows the webhook ---------------------------------------------------------------------


@pytest.fixture
def silent_api() -> Iterator[str]:
    """A Bot API address that accepts connections and never answers (an outage, a black-holed network)."""
    import socket

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_press_is_answered_fast_even_when_the_bot_api_hangs(make_app, silent_api: str) -> None:
    application = make_app(telegram_api_base_url=silent_api)
    runtime = application.extensions["vereda"]
    tg = Telegram(application.test_client(), FakeTelegram())
    tg.text(f"/start {COURSE_ID}")  # queued; the dispatcher cannot send it, which does not matter here
    started = time.monotonic()
    response = tg.press(f"q:{COURSE_ID}:0:0|2")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed < 5.0, f"the webhook waited {elapsed:.1f} s for answerCallbackQuery"
    assert answers(runtime) == [(0, 0, 2, True)]  # graded all the same
