"""WhatsApp through Twilio: raw inbound payloads, one learner across SMS and WhatsApp, the 24-hour window,
63016, quick-reply buttons and provider opt-outs.

Inbound forms under tests/fixtures/whatsapp/ are posted signed, exactly as Twilio posts them; replies, drips
and templates go out through the app's outbox and the real twilio Client to FakeTwilio. Time is driven with
`scheduler.tick(runtime, now=...)`; the learners' own messages arrive at the real time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from bot.catalog import load_catalog
from bot.channels.twilio import BODY_LIMIT
from bot.config import Settings
from bot.dispatcher import utcnow
from bot.drips import NO_TEMPLATE, TEMPLATE_SENT
from bot.messages import say
from bot.models import Answer, Enrolment, InboundMessage, Learner, LearnerAddress, OutboundMessage
from scheduler import tick
from tests.conftest import TwilioWebhook, sms_form
from tests.fakes.twilio_api import Failure, FakeTwilio, Sent
from tests.helpers import count
from tests.helpers import settle_due as settle

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "whatsapp"
COURSES = ROOT / "tests" / "fixtures" / "courses_whatsapp"
CATALOG = load_catalog(COURSES)[0]
RUTA, SEGURIDAD, LARGA = CATALOG.get("ruta-segura"), CATALOG.get("seguridad-humana"), CATALOG.get("leccion-larga")
assert RUTA and SEGURIDAD and LARGA and RUTA.whatsapp_template and SEGURIDAD.whatsapp_buttons
assert SEGURIDAD.whatsapp_template is None  # the course without a template

WA = "whatsapp:+5215512345678"  # how WhatsApp reports many Mexican mobiles: +52 1 …
SMS = "+525512345678"  # the same line by SMS (Mexico dropped the mobile 1 in 2019)
OURS = "whatsapp:+14155238886"
MEXICO_CITY = ZoneInfo("America/Mexico_City")  # the learner's zone (from +52 55)
DRIPPED = OutboundMessage.idempotency_key.like("lesson:%")  # rows the drip queued (replies are keyed in:…)
WINDOW_CLOSED = "Failed to send freeform message because you are outside the allowed window."


def fixture(name: str) -> dict[str, str]:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings with the test courses that set whatsapp_template / whatsapp_buttons."""
    return settings.with_(lessons_dir=str(COURSES))


# -- helpers ------------------------------------------------------------------------------------------


def wa(body: str, sender: str = WA, sid: str | None = None, **extra: str) -> dict[str, str]:
    """An inbound WhatsApp text as Twilio posts it (ProfileName, WaId, MessageType included)."""
    wa_id = sender.removeprefix("whatsapp:+")
    return sms_form(sender, body, sid, ProfileName="María López", WaId=wa_id, MessageType="text",
                    ReferralNumMedia="0", **extra)


def since(fake: FakeTwilio, start: int) -> list[Sent]:
    with fake.lock:
        return list(fake.messages[start:])


def post(twilio: TwilioWebhook, runtime, fake: FakeTwilio, form: dict[str, str],  # type: ignore[no-untyped-def]
         expect: int | None = None) -> list[Sent]:
    """Post an inbound form; wait for `expect` new messages (or until the outbox is idle); return them."""
    start = len(fake.messages)
    response = twilio.post(form)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert b"<Response/>" in response.data
    if expect:
        fake.wait_for(start + expect)
    settle(runtime)
    return since(fake, start)


def answers(runtime) -> list[tuple[int, int, int, bool]]:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        return [(a.lesson, a.question, a.choice, a.correct)
                for a in session.scalars(select(Answer).order_by(Answer.id))]


def learner(runtime, phone: str = SMS) -> Learner:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        return session.scalars(select(Learner).where(Learner.phone == phone)).one()


def rows(runtime, *where) -> list[OutboundMessage]:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        return list(session.scalars(select(OutboundMessage).where(*where).order_by(OutboundMessage.id)))


def sid_of_question(runtime, course_id: str, lesson: int, question: int) -> str:  # type: ignore[no-untyped-def]
    [row] = rows(runtime, OutboundMessage.ref == f"q:{course_id}:{lesson}:{question}")
    assert row.provider_id
    return row.provider_id


def next_due(runtime) -> datetime:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        due = session.scalars(select(Enrolment.next_due_at)).one()
    assert due is not None
    return due


def set_due(runtime, when: datetime) -> None:  # type: ignore[no-untyped-def]
    with runtime.factory.begin() as session:
        session.execute(update(Enrolment).values(next_due_at=when))


def noon_after(moment: datetime) -> datetime:
    """The first 12:00 in Mexico City after `moment`: a drip time outside the quiet hours, whenever tests run."""
    local = moment.astimezone(MEXICO_CITY)
    noon = local.replace(hour=12, minute=0, second=0, microsecond=0)
    return (noon if noon > local else noon + timedelta(days=1)).astimezone(UTC)


def numbered(text: str, options: list[str]) -> str:
    return text + "\n" + "\n".join(f"{n}) {option}" for n, option in enumerate(options, start=1))


def question_text(course, lesson: int, index: int) -> str:  # type: ignore[no-untyped-def]
    question = course.lessons[lesson].quiz[index]
    return say("question", "es", "whatsapp", n=index + 1, total=len(course.lessons[lesson].quiz),
               ask=question.ask["es"].strip())


def feedback(question, right: bool) -> str:  # type: ignore[no-untyped-def]
    if right:
        text = say("right", "es")
    else:
        text = say("wrong", "es", answer=f"{question.answer}) {question.options[question.answer - 1]['es']}")
    return f"{text} {question.explain['es'].strip()}" if question.explain.get("es") else text


def to_question_3(twilio: TwilioWebhook, runtime, fake: FakeTwilio) -> None:  # type: ignore[no-untyped-def]
    """Enrol in seguridad-humana on WhatsApp and answer two questions: question 3 (quick reply) is open."""
    post(twilio, runtime, fake, wa("SEGURIDAD"), expect=3)
    post(twilio, runtime, fake, wa("2"), expect=2)
    post(twilio, runtime, fake, wa("1"), expect=2)
    assert answers(runtime) == [(0, 0, 2, True), (0, 1, 1, True)]


def enrol_ruta(twilio: TwilioWebhook, runtime, fake: FakeTwilio) -> list[Sent]:  # type: ignore[no-untyped-def]
    """RUTA on WhatsApp: enrolled, lesson 1 (no quiz) and when the next lesson comes."""
    sent = post(twilio, runtime, fake, wa("RUTA"), expect=3)
    assert [m.to for m in sent] == [WA] * 3
    assert sent[1].body == RUTA.lessons[0].text_for("es", "whatsapp")
    return sent


# -- every raw payload, with its effect -----------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    replies: bool
    graded: tuple[int, int, int, bool] | None = None
    opted_out: bool = False
    first_reply: str | None = None
    posts: int = 1  # posted this many times (Twilio retries a webhook it thinks failed)
    replied_to: str | None = None  # OriginalRepliedMessageSid becomes the sid of this question: "open", "first"
    learners: int = 1


Q3 = SEGURIDAD.lessons[0].quiz[2]  # open when each payload arrives; its right answer is 3
MEDIA = say("media_only", "es", "whatsapp")
WELCOME = numbered(say("welcome", "es", "whatsapp"),
                   [c.title["es"] for c in CATALOG.courses if "whatsapp" in c.channels])

EFFECTS: dict[str, Effect] = {
    "text": Effect(True, first_reply=say("greeting_question", "es", "whatsapp")),  # "hola" mid-quiz
    "text_answer": Effect(True, graded=(0, 2, 3, True), first_reply=feedback(Q3, True)),
    "button_reply": Effect(True, graded=(0, 2, 3, True), first_reply=feedback(Q3, True), replied_to="open"),
    "button_reply_stale": Effect(False, replied_to="first"),
    "location": Effect(True, first_reply=MEDIA),
    "image_only": Effect(True, first_reply=MEDIA),
    "image_with_caption": Effect(True, first_reply=MEDIA),  # caption "3" is right, but media is never graded
    "audio": Effect(True, first_reply=MEDIA),
    "sticker": Effect(True, first_reply=MEDIA),
    "contact": Effect(True, first_reply=MEDIA),
    "sender_without_1": Effect(True, graded=(0, 2, 3, True), first_reply=feedback(Q3, True)),
    "stop": Effect(False, opted_out=True),
    "duplicate": Effect(True, posts=2, first_reply=say("reask", "es", "whatsapp", count=3)),
    "other_country": Effect(True, first_reply=WELCOME, learners=2),
}


def test_every_fixture_has_an_expected_effect() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.json")) == sorted(EFFECTS)
    assert len(EFFECTS) >= 10
    for name in EFFECTS:
        form = fixture(name)
        assert form["From"].startswith("whatsapp:+") and form["To"] == OURS
        assert form["MessageSid"] == form["SmsMessageSid"] == form["SmsSid"]
        assert all(isinstance(value, str) for value in form.values())  # a form: strings only


@pytest.mark.parametrize("name", sorted(EFFECTS))
def test_raw_payload_has_its_effect(name: str, twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    to_question_3(twilio, runtime, fake_twilio)
    effect, form = EFFECTS[name], fixture(name)
    if effect.replied_to:
        question = 2 if effect.replied_to == "open" else 0
        form["OriginalRepliedMessageSid"] = sid_of_question(runtime, "seguridad-humana", 0, question)
    before_answers, start = answers(runtime), len(fake_twilio.messages)
    inbound_before = count(runtime, InboundMessage)

    for _ in range(effect.posts):
        response = twilio.post(form)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert b"<Response/>" in response.data
    settle(runtime)
    time.sleep(0.1)

    sent = since(fake_twilio, start)
    assert bool(sent) == effect.replies, [m.body for m in sent]
    assert all(m.to == form["From"] and m.form["From"] == OURS for m in sent)  # the exact address written from
    if effect.first_reply is not None:
        assert sent[0].body == effect.first_reply
    graded = answers(runtime)[len(before_answers):]
    assert graded == ([effect.graded] if effect.graded else [])
    assert (learner(runtime).opted_out_at is not None) == effect.opted_out
    assert count(runtime, Learner) == effect.learners
    assert count(runtime, InboundMessage) == inbound_before + 1  # once, whatever the number of posts
    if effect.first_reply in (MEDIA, say("reask", "es", "whatsapp", count=3)):
        # acknowledged (or re-asked), then the open question again, with its buttons; once only
        assert len(sent) == 2 and sent[1].form["ContentSid"] == SEGURIDAD.whatsapp_buttons


@pytest.mark.parametrize("name", ["text", "button_reply", "location"])
def test_payload_with_a_bad_signature_is_403_without_effect(name: str, twilio: TwilioWebhook, runtime,
                                                            fake_twilio: FakeTwilio) -> None:
    form = fixture(name)
    forged = twilio.sign("/webhooks/twilio", {**form, "Body": "otra cosa"})
    assert twilio.post(form, signature=forged).status_code == 403
    time.sleep(0.2)
    assert count(runtime, InboundMessage) == 0 and count(runtime, Learner) == 0 and fake_twilio.requests == 0


def test_payload_without_from_is_400(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    form = {key: value for key, value in fixture("text").items() if key != "From"}
    response = twilio.post(form)
    assert response.status_code == 400 and "From" in response.get_data(as_text=True)
    assert count(runtime, InboundMessage) == 0


@pytest.mark.parametrize("payload", ["²", "9" * 5000, "1" * 4, "otra-app", "-1"])
def test_a_button_payload_that_is_not_an_option_number_is_read_as_its_text(payload: str, twilio: TwilioWebhook,
                                                                          runtime, fake_twilio: FakeTwilio) -> None:
    """Not one of our buttons (we send 1, 2, 3 …): no 5xx, and the message counts for what it says."""
    form = {**fixture("text"), "Body": "hola", "ButtonPayload": payload, "ButtonText": "hola",
            "OriginalRepliedMessageSid": "SMa1b2c3d4e5f60718293a4b5c6d7e8f90"}
    [welcome] = post(twilio, runtime, fake_twilio, form, expect=1)
    assert welcome.body.startswith(say("welcome", "es", "whatsapp")[:20])
    assert count(runtime, InboundMessage) == 1


# -- one person, one learner ------------------------------------------------------------------------------


def test_whatsapp_521_and_sms_52_are_one_learner_answered_where_they_wrote(twilio: TwilioWebhook, runtime,
                                                                          fake_twilio: FakeTwilio) -> None:
    [welcome] = post(twilio, runtime, fake_twilio, sms_form(SMS, "hola"), expect=1)
    assert welcome.to == SMS and welcome.form["From"] == "+15005550006"

    sent = post(twilio, runtime, fake_twilio, wa("RUTA"), expect=3)
    assert [(m.to, m.form["From"]) for m in sent] == [(WA, OURS)] * 3

    [status] = post(twilio, runtime, fake_twilio, sms_form(SMS, "ESTADO"), expect=1)
    assert status.to == SMS and "Ruta segura" in status.body  # the SMS side knows the WhatsApp enrolment

    assert count(runtime, Learner) == 1
    person = learner(runtime)
    assert person.phone == SMS and person.timezone == "America/Mexico_City"
    with runtime.factory() as session:
        addresses = sorted((a.channel, a.address) for a in session.scalars(select(LearnerAddress)))
    assert addresses == [("sms", SMS), ("whatsapp", WA)]  # each kept exactly as written from


def test_both_whatsapp_spellings_of_a_mexican_line_are_one_learner(twilio: TwilioWebhook, runtime,
                                                                   fake_twilio: FakeTwilio) -> None:
    post(twilio, runtime, fake_twilio, wa("RUTA"), expect=3)
    [reply] = post(twilio, runtime, fake_twilio, wa("AYUDA", sender="whatsapp:+525512345678"), expect=1)
    assert reply.to == "whatsapp:+525512345678" and reply.body == say("help", "es", "whatsapp")
    assert count(runtime, Learner) == 1 and count(runtime, Enrolment) == 1


def test_whatsapp_stop_silences_the_sms_side_too(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    post(twilio, runtime, fake_twilio, fixture("stop"))
    assert post(twilio, runtime, fake_twilio, sms_form(SMS, "hola")) == []
    assert learner(runtime).opted_out_at is not None


# -- quick-reply buttons ---------------------------------------------------------------------------------


def test_question_goes_out_as_quick_reply_buttons_when_the_course_has_them(twilio: TwilioWebhook, runtime,
                                                                          fake_twilio: FakeTwilio) -> None:
    to_question_3(twilio, runtime, fake_twilio)
    first_sid = sid_of_question(runtime, "seguridad-humana", 0, 0)
    open_sid = sid_of_question(runtime, "seguridad-humana", 0, 2)
    with fake_twilio.lock:
        by_sid = {m.sid: m for m in fake_twilio.messages}
    # options longer than a WhatsApp button title (20): numbered text
    first = by_sid[first_sid]
    options = [o["es"] for o in SEGURIDAD.lessons[0].quiz[0].options]
    assert first.body == numbered(question_text(SEGURIDAD, 0, 0), options)
    assert "ContentSid" not in first.form
    # short options: the course's twilio/quick-reply template, with the question and options as variables
    buttons = by_sid[open_sid]
    assert buttons.to == WA and buttons.form["From"] == OURS
    assert buttons.form["ContentSid"] == SEGURIDAD.whatsapp_buttons
    assert json.loads(buttons.form["ContentVariables"]) == {
        "1": question_text(SEGURIDAD, 0, 2), "2": "Militar", "3": "Tecnológica", "4": "Alimentaria"}
    assert "Body" not in buttons.form

    # the learner taps the second button: ButtonPayload "2" is option 2 (wrong)
    reply = fixture("button_reply")
    reply.update(ButtonPayload="2", ButtonText="Tecnológica", Body="Tecnológica", OriginalRepliedMessageSid=open_sid)
    sent = post(twilio, runtime, fake_twilio, reply, expect=2)
    assert answers(runtime)[-1] == (0, 2, 2, False)
    assert sent[0].body == feedback(Q3, right=False)
    assert sent[1].body.startswith(say("lesson_score", "es", "whatsapp", n=1, right=2, total=3))

    # the same button again, and a button of an older question: neither counts
    again = dict(reply, MessageSid="SM" + "1" * 32, SmsMessageSid="SM" + "1" * 32, SmsSid="SM" + "1" * 32,
                 ButtonPayload="3", ButtonText="Alimentaria", Body="Alimentaria")
    older = dict(again, MessageSid="SM" + "2" * 32, SmsMessageSid="SM" + "2" * 32, SmsSid="SM" + "2" * 32,
                 OriginalRepliedMessageSid=first_sid)
    assert post(twilio, runtime, fake_twilio, again) == []
    assert post(twilio, runtime, fake_twilio, older) == []
    assert len(answers(runtime)) == 3


def test_stale_button_while_a_later_question_is_open_does_not_count(twilio: TwilioWebhook, runtime,
                                                                   fake_twilio: FakeTwilio) -> None:
    post(twilio, runtime, fake_twilio, wa("SEGURIDAD"), expect=3)
    first_sid = sid_of_question(runtime, "seguridad-humana", 0, 0)
    post(twilio, runtime, fake_twilio, wa("2"), expect=2)  # question 2 is open now
    stale = fixture("button_reply_stale")  # ButtonPayload "2" pressed under question 1
    stale["OriginalRepliedMessageSid"] = first_sid
    assert post(twilio, runtime, fake_twilio, stale) == []
    assert answers(runtime) == [(0, 0, 2, True)]
    # a typed "1" still answers question 2
    post(twilio, runtime, fake_twilio, wa("1"), expect=2)
    assert answers(runtime) == [(0, 0, 2, True), (0, 1, 1, True)]


def test_sms_gets_numbered_options_for_the_same_question(twilio: TwilioWebhook, runtime,
                                                         fake_twilio: FakeTwilio) -> None:
    post(twilio, runtime, fake_twilio, sms_form("+525598765432", "SEGURIDAD"), expect=3)
    post(twilio, runtime, fake_twilio, sms_form("+525598765432", "2"), expect=2)
    sent = post(twilio, runtime, fake_twilio, sms_form("+525598765432", "1"), expect=2)
    assert "ContentSid" not in sent[1].form
    ask = say("question", "es", "sms", n=3, total=3, ask=Q3.ask["es"].strip())
    assert sent[1].body == numbered(ask, ["Militar", "Tecnológica", "Alimentaria"])


# -- the 24-hour window: drips ----------------------------------------------------------------------------


def template_of(message: Sent, course, lesson_number: int) -> None:  # type: ignore[no-untyped-def]
    assert message.to == WA and message.form["From"] == OURS
    assert message.form["ContentSid"] == course.whatsapp_template
    assert json.loads(message.form["ContentVariables"]) == {"1": course.title["es"], "2": str(lesson_number)}
    assert "Body" not in message.form


def test_drip_outside_the_window_sends_the_template_and_the_lesson_follows_the_answer(
        twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    enrol_ruta(twilio, runtime, fake_twilio)
    when = noon_after(max(next_due(runtime), utcnow() + timedelta(hours=25)))
    start = len(fake_twilio.messages)

    report = tick(runtime, now=when, budget=5)
    assert report.lessons_planned == 1 and report.sent == 1
    [template] = since(fake_twilio, start)
    template_of(template, RUTA, 2)
    held = rows(runtime, DRIPPED)
    assert [r.status for r in held] == ["held", "held"]
    assert all(r.error_message == TEMPLATE_SENT and r.to_address == WA for r in held)
    assert held[0].body == RUTA.lessons[1].text_for("es", "whatsapp")

    # an SMS from the same person does not open the WhatsApp window
    post(twilio, runtime, fake_twilio, sms_form(SMS, "ESTADO"), expect=1)
    assert [r.status for r in rows(runtime, DRIPPED)] == ["held", "held"]
    assert tick(runtime, now=when + timedelta(hours=1), budget=5).sent == 0  # never retried blindly

    # the learner answers the template on WhatsApp: the lesson is the reply
    start = len(fake_twilio.messages)
    sent = post(twilio, runtime, fake_twilio, wa("Sí, quiero seguir"), expect=2)
    assert [m.body for m in sent] == [r.body for r in held]
    assert all(m.to == WA and "ContentSid" not in m.form for m in sent)
    assert [r.status for r in rows(runtime, DRIPPED)] == ["sent", "sent"]
    time.sleep(0.3)
    assert len(fake_twilio.messages) == start + 2  # nothing else: "Sí, quiero seguir" is not answered again


def test_days_of_silence_send_one_template_and_hold_one_lesson(twilio: TwilioWebhook, runtime,
                                                               fake_twilio: FakeTwilio) -> None:
    """Templates cost money and lessons come one a day: a silent learner is not sent one template a day, and
    does not find a pile of lessons when they come back."""
    enrol_ruta(twilio, runtime, fake_twilio)
    first = noon_after(max(next_due(runtime), utcnow() + timedelta(hours=25)))
    start = len(fake_twilio.messages)
    for day in range(4):
        tick(runtime, now=first + timedelta(days=day), budget=5)
    [template] = since(fake_twilio, start)
    template_of(template, RUTA, 2)
    held = rows(runtime, OutboundMessage.status == "held")
    assert [r.body for r in held] == [RUTA.lessons[1].text_for("es", "whatsapp"), held[1].body]
    assert next_due(runtime) > first + timedelta(days=3)  # lesson 3 waits for its own day

    sent = post(twilio, runtime, fake_twilio, wa("hola, aquí estoy"), expect=2)
    assert [m.body for m in sent] == [r.body for r in held]  # lesson 2 only, not lessons 2 to 5
    time.sleep(0.3)
    assert len(fake_twilio.messages) == start + 3
    with runtime.factory() as session:
        assert session.scalars(select(Enrolment.position)).one() == 1  # lesson 2 is the one delivered


def test_our_own_sends_do_not_extend_the_window(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    enrol_ruta(twilio, runtime, fake_twilio)
    wrote = utcnow()
    inside, outside = noon_after(wrote), noon_after(wrote + timedelta(hours=24))
    assert inside - wrote < timedelta(hours=24) <= outside - wrote
    set_due(runtime, inside)
    start = len(fake_twilio.messages)
    assert tick(runtime, now=inside, budget=5).sent == 2  # free-form, inside 24 h
    assert [m.body for m in since(fake_twilio, start)][0] == RUTA.lessons[1].text_for("es", "whatsapp")

    set_due(runtime, outside)
    start = len(fake_twilio.messages)
    assert tick(runtime, now=outside, budget=5).sent == 1  # our lesson at `inside` did not extend it
    [template] = since(fake_twilio, start)
    template_of(template, RUTA, 3)
    assert [r.status for r in rows(runtime, DRIPPED)][-2:] == ["held", "held"]


def test_without_a_template_the_lesson_waits_with_a_visible_reason(twilio: TwilioWebhook, runtime,
                                                                   fake_twilio: FakeTwilio) -> None:
    to_question_3(twilio, runtime, fake_twilio)
    post(twilio, runtime, fake_twilio, wa("3"), expect=2)  # lesson 1 done
    when = noon_after(max(next_due(runtime), utcnow() + timedelta(hours=25)))
    start = len(fake_twilio.messages)

    report = tick(runtime, now=when, budget=5)
    assert report.lessons_planned == 1 and report.sent == 0
    assert since(fake_twilio, start) == []  # nothing at all: no template exists
    waiting = rows(runtime, OutboundMessage.status == "held")
    assert [r.kind for r in waiting] == ["lesson", "lesson"]  # the lesson and its first question
    assert all(r.error_message == NO_TEMPLATE for r in waiting)
    assert "no whatsapp_template" in NO_TEMPLATE
    assert count(runtime, OutboundMessage, OutboundMessage.kind == "template") == 0

    sent = post(twilio, runtime, fake_twilio, wa("hola"), expect=2)
    assert [m.body for m in sent] == [SEGURIDAD.lessons[1].text_for("es", "whatsapp"),
                                      numbered(question_text(SEGURIDAD, 1, 0),
                                               [o["es"] for o in SEGURIDAD.lessons[1].quiz[0].options])]
    assert all(r.error_message is None for r in rows(runtime, OutboundMessage.id.in_([w.id for w in waiting])))


# -- 63016 from Twilio -----------------------------------------------------------------------------------


def test_63016_holds_the_message_sends_one_template_and_never_retries(twilio: TwilioWebhook, runtime,
                                                                      fake_twilio: FakeTwilio) -> None:
    enrol_ruta(twilio, runtime, fake_twilio)
    when = noon_after(utcnow())  # inside our window by our clock, but Twilio says otherwise
    set_due(runtime, when)
    fake_twilio.fail_next(Failure(400, 63016, WINDOW_CLOSED))
    start, requests = len(fake_twilio.messages), fake_twilio.requests

    tick(runtime, now=when, budget=5)
    lesson = rows(runtime, DRIPPED)
    assert len(lesson) == 2 and all(r.status == "held" for r in lesson)  # the lesson and its closing line
    assert (lesson[0].error_code, lesson[0].error_message, lesson[0].attempts) == ("63016", TEMPLATE_SENT, 1)
    assert lesson[1].attempts == 0  # kept in order behind the first, never tried in vain
    [template] = since(fake_twilio, start)  # one template, not one per held message
    template_of(template, RUTA, 2)  # {{2}}: the lesson that waits
    assert fake_twilio.requests == requests + 2

    assert tick(runtime, now=when + timedelta(hours=2), budget=5).sent == 0  # never retried blindly
    assert fake_twilio.requests == requests + 2
    assert [(r.status, r.attempts) for r in rows(runtime, DRIPPED)] == [("held", 1), ("held", 0)]

    sent = post(twilio, runtime, fake_twilio, wa("hola"), expect=2)
    assert [m.body for m in sent] == [r.body for r in lesson]  # in order, as the answer to the template
    assert [r.status for r in rows(runtime, DRIPPED)] == ["sent", "sent"]


def test_63016_without_a_template_just_waits(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    to_question_3(twilio, runtime, fake_twilio)
    post(twilio, runtime, fake_twilio, wa("3"), expect=2)
    when = noon_after(utcnow())  # within 24 h of the learner's message
    set_due(runtime, when)
    fake_twilio.fail_next(Failure(400, 63016, WINDOW_CLOSED))
    start, requests = len(fake_twilio.messages), fake_twilio.requests
    tick(runtime, now=when, budget=5)
    assert since(fake_twilio, start) == [] and fake_twilio.requests == requests + 1
    held = rows(runtime, DRIPPED)
    assert len(held) == 2 and all(r.status == "held" for r in held)  # lesson 2 and its first question
    assert (held[0].error_code, held[0].error_message) == ("63016", NO_TEMPLATE)  # the visible reason
    assert count(runtime, OutboundMessage, OutboundMessage.kind == "template") == 0
    assert tick(runtime, now=when + timedelta(hours=2), budget=5).sent == 0
    assert fake_twilio.requests == requests + 1


def test_63016_in_a_status_callback_holds_the_message_too(twilio: TwilioWebhook, runtime,
                                                          fake_twilio: FakeTwilio) -> None:
    """Twilio often accepts the request and reports 63016 later, in the status callback."""
    enrol_ruta(twilio, runtime, fake_twilio)
    when = noon_after(utcnow())  # within 24 h of the learner's message
    set_due(runtime, when)
    tick(runtime, now=when, budget=5)
    lesson = rows(runtime, DRIPPED)
    assert [r.status for r in lesson] == ["sent", "sent"]
    start = len(fake_twilio.messages)
    for row in lesson:
        form = {"MessageSid": row.provider_id, "SmsSid": row.provider_id, "MessageStatus": "failed",
                "SmsStatus": "failed", "ErrorCode": "63016", "AccountSid": fake_twilio.account_sid,
                "From": OURS, "To": WA, "ApiVersion": "2010-04-01", "ChannelPrefix": "whatsapp"}
        assert twilio.post(form, path="/webhooks/twilio/status").status_code == 200
    assert [r.status for r in rows(runtime, DRIPPED)] == ["held", "held"]
    [template] = fake_twilio.wait_for(start + 1)[start:]  # the dispatcher sends the template
    template_of(template, RUTA, 2)
    time.sleep(0.3)
    assert len(fake_twilio.messages) == start + 1
    sent = post(twilio, runtime, fake_twilio, wa("hola"), expect=2)
    assert [m.body for m in sent] == [r.body for r in lesson]


# -- opt-out signals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [63014, 21610])
def test_blocked_or_unsubscribed_opts_out(code: int, twilio: TwilioWebhook, runtime,
                                          fake_twilio: FakeTwilio) -> None:
    fake_twilio.fail_next(Failure(400, code, "blocked"))
    response = twilio.post(wa("RUTA"))
    assert response.status_code == 200
    deadline = time.monotonic() + 5
    while learner(runtime).opted_out_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    settle(runtime)
    assert learner(runtime).opted_out_at is not None
    assert [r.status for r in rows(runtime)] == ["failed", "cancelled", "cancelled"]
    assert fake_twilio.messages == []
    assert post(twilio, runtime, fake_twilio, wa("hola")) == []
    when = noon_after(max(next_due(runtime), utcnow() + timedelta(hours=25)))
    assert tick(runtime, now=when, budget=5).lessons_planned == 0


def test_63014_in_a_status_callback_opts_out(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    [_enrolled, lesson, _next] = enrol_ruta(twilio, runtime, fake_twilio)
    form = {"MessageSid": lesson.sid, "MessageStatus": "undelivered", "ErrorCode": "63014",
            "AccountSid": fake_twilio.account_sid, "From": OURS, "To": WA, "ApiVersion": "2010-04-01"}
    assert twilio.post(form, path="/webhooks/twilio/status").status_code == 200
    assert learner(runtime).opted_out_at is not None


# -- length -------------------------------------------------------------------------------------------------------


def test_long_lesson_is_split_under_1600_in_order(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    text = LARGA.lessons[0].text_for("es", "whatsapp")
    assert len(text) > 5000
    sent = post(twilio, runtime, fake_twilio, wa("LARGA"), expect=6)
    enrolled, *parts, question = sent
    assert enrolled.body.startswith("Te inscribiste")
    bodies = [m.body for m in parts]
    assert len(bodies) >= 4 and all(len(body) <= BODY_LIMIT for body in bodies)
    assert "\n\n".join(bodies) == text  # in order, cut between paragraphs, nothing lost
    assert all(m.to == WA for m in sent)
    assert question.body == numbered(question_text(LARGA, 0, 0), ["911", "089"])  # no buttons course: numbered
