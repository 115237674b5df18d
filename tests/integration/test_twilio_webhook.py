"""POST /webhooks/twilio and /webhooks/twilio/status: signatures, bad input, dedupe, opt-out, callbacks."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import select

from bot.models import Answer, Enrolment, InboundMessage, Learner, MessageEvent, OutboundMessage
from tests.conftest import TwilioWebhook, sms_form
from tests.fakes.twilio_api import FakeTwilio
from tests.helpers import count, settle

PHONE = "+525512345678"
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
PUBLIC = "https://vereda.example.org"


# -- helpers ---------------------------------------------------------------------------------------


def inbound_bodies(runtime) -> list[str | None]:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        return list(session.scalars(select(InboundMessage.body).order_by(InboundMessage.id)))


def learner(runtime, phone: str = PHONE) -> Learner | None:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        return session.scalars(select(Learner).where(Learner.phone == phone)).first()


def assert_no_effect(runtime, fake: FakeTwilio) -> None:  # type: ignore[no-untyped-def]
    assert count(runtime, InboundMessage) == 0
    assert count(runtime, Learner) == 0
    assert count(runtime, OutboundMessage) == 0
    time.sleep(0.3)  # a reply, had one been queued, would be on its way by now
    assert fake.messages == []
    assert fake.requests == 0


# -- signatures ------------------------------------------------------------------------------------


def test_valid_signature_answers_empty_twiml(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    response = twilio.sms(PHONE, "hola")
    assert response.status_code == 200
    assert response.mimetype == "text/xml"
    assert response.data == EMPTY_TWIML
    assert inbound_bodies(runtime) == ["hola"]
    sent = fake_twilio.wait_for(1)
    assert [m.to for m in sent] == [PHONE]
    assert sent[0].form["From"] == "+15005550006"
    assert sent[0].form["StatusCallback"] == f"{PUBLIC}/webhooks/twilio/status"


@pytest.mark.parametrize("case", ["forged", "missing", "other_url", "body_changed", "field_added", "other_token"])
def test_bad_signature_is_refused_without_effect(case: str, twilio: TwilioWebhook, client, runtime,
                                                 fake_twilio: FakeTwilio) -> None:
    form = sms_form(PHONE, "hola")
    path = "/webhooks/twilio"
    if case == "forged":
        response = twilio.post(form, signature="bm90IGEgcmVhbCBzaWduYXR1cmU=")
    elif case == "missing":
        response = client.post(path, data=form)
    elif case == "other_url":
        signature = twilio.validator.compute_signature(f"https://attacker.example.org{path}", form)
        response = twilio.post(form, signature=signature)
    elif case == "body_changed":
        signature = twilio.sign(path, form)
        response = twilio.post({**form, "Body": "BORRAR"}, signature=signature)
    elif case == "field_added":
        signature = twilio.sign(path, form)
        response = twilio.post({**form, "NumMedia": "1", "MediaUrl0": "https://x.example/a.jpg"},
                               signature=signature)
    else:
        from twilio.request_validator import RequestValidator

        signature = RequestValidator("someone-elses-token").compute_signature(f"{PUBLIC}{path}", form)
        response = twilio.post(form, signature=signature)
    assert response.status_code == 403
    assert b"X-Twilio-Signature" in response.data
    assert_no_effect(runtime, fake_twilio)


def test_signature_for_the_status_route_is_not_valid_for_inbound(twilio: TwilioWebhook, runtime,
                                                                fake_twilio: FakeTwilio) -> None:
    form = sms_form(PHONE, "hola")
    response = twilio.post(form, signature=twilio.sign("/webhooks/twilio/status", form))
    assert response.status_code == 403
    assert_no_effect(runtime, fake_twilio)


def test_public_base_url_is_what_is_checked_behind_a_proxy(twilio: TwilioWebhook, client, runtime,
                                                           fake_twilio: FakeTwilio) -> None:
    """The app sees http://10.0.0.7:8000 (proxy to app); Twilio signed https://vereda.example.org."""
    inner = "http://10.0.0.7:8000"
    form = sms_form(PHONE, "hola")
    own_url_signature = twilio.validator.compute_signature(f"{inner}/webhooks/twilio", form)
    refused = client.post("/webhooks/twilio", data=form, base_url=inner,
                          headers={"X-Twilio-Signature": own_url_signature})
    assert refused.status_code == 403
    assert count(runtime, InboundMessage) == 0

    accepted = client.post("/webhooks/twilio", data=form, base_url=inner,
                           headers={"X-Twilio-Signature": twilio.sign("/webhooks/twilio", form)})
    assert accepted.status_code == 200
    assert accepted.data == EMPTY_TWIML
    assert inbound_bodies(runtime) == ["hola"]


def test_public_base_url_keeps_the_query_string(twilio: TwilioWebhook, client, runtime) -> None:
    form = sms_form(PHONE, "hola")
    path = "/webhooks/twilio?tenant=mx"
    good = twilio.validator.compute_signature(f"{PUBLIC}{path}", form)
    without_query = twilio.sign("/webhooks/twilio", form)
    assert client.post(path, data=form, headers={"X-Twilio-Signature": without_query}).status_code == 403
    assert client.post(path, data=form, headers={"X-Twilio-Signature": good}).status_code == 200
    assert count(runtime, InboundMessage) == 1


def test_without_public_base_url_the_request_url_is_checked(make_app, fake_twilio: FakeTwilio) -> None:
    application = make_app(public_base_url=None)
    runtime = application.extensions["vereda"]
    client = application.test_client()
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(fake_twilio.auth_token)
    form = sms_form(PHONE, "hola")
    public_signed = validator.compute_signature(f"{PUBLIC}/webhooks/twilio", form)
    response = client.post("/webhooks/twilio", data=form, base_url="http://bot.internal:5000",
                           headers={"X-Twilio-Signature": public_signed})
    assert response.status_code == 403
    assert count(runtime, InboundMessage) == 0

    own_signed = validator.compute_signature("http://bot.internal:5000/webhooks/twilio", form)
    response = client.post("/webhooks/twilio", data=form, base_url="http://bot.internal:5000",
                           headers={"X-Twilio-Signature": own_signed})
    assert response.status_code == 200
    assert response.data == EMPTY_TWIML
    assert count(runtime, InboundMessage) == 1
    # no public URL: no status callback can be asked for
    sent = fake_twilio.wait_for(1)
    assert "StatusCallback" not in sent[0].form


def test_status_route_checks_the_signature_too(twilio: TwilioWebhook, client, runtime,
                                               fake_twilio: FakeTwilio) -> None:
    twilio.sms(PHONE, "hola")
    sid = fake_twilio.wait_for(1)[0].sid
    settle(runtime)
    events_before = count(runtime, MessageEvent)
    form = status_form(sid, "delivered")
    path = "/webhooks/twilio/status"
    assert client.post(path, data=form).status_code == 403
    assert twilio.post(form, path=path, signature="Zm9yZ2Vk").status_code == 403
    stale = twilio.sign(path, {**form, "MessageStatus": "sent"})
    assert twilio.post(form, path=path, signature=stale).status_code == 403
    inbound_signed = twilio.sign("/webhooks/twilio", form)
    assert twilio.post(form, path=path, signature=inbound_signed).status_code == 403
    assert count(runtime, MessageEvent) == events_before
    assert outbound_by_sid(runtime, sid).status == "sent"

    response = twilio.post(form, path=path)
    assert response.status_code == 200
    assert response.data == EMPTY_TWIML
    assert outbound_by_sid(runtime, sid).status == "delivered"


@pytest.mark.parametrize("path", ["/webhooks/twilio", "/webhooks/twilio/status"])
def test_twilio_off_answers_503_with_one_line(make_app, path: str, fake_twilio: FakeTwilio) -> None:
    application = make_app(twilio_account_sid=None, twilio_auth_token=None)
    runtime = application.extensions["vereda"]
    client = application.test_client()
    form = sms_form(PHONE, "hola") if path == "/webhooks/twilio" else status_form("SM" + "1" * 32, "sent")
    response = client.post(path, data=form, headers={"X-Twilio-Signature": "anything"})
    assert response.status_code == 503
    text = response.get_data(as_text=True)
    assert text.endswith("\n") and text.count("\n") == 1
    assert "TWILIO_ACCOUNT_SID" in text and "TWILIO_AUTH_TOKEN" in text
    assert count(runtime, InboundMessage) == 0
    # the server still runs, with Twilio listed as off
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.get_json()["channels"] == []
    assert fake_twilio.requests == 0


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("drop", "reason"), [
    (("From",), "missing From"),
    (("MessageSid", "SmsMessageSid", "SmsSid"), "missing MessageSid"),
    (("From", "MessageSid", "SmsMessageSid", "SmsSid"), "missing From and MessageSid"),
])
def test_missing_from_or_sid_is_400_with_a_reason(drop: tuple[str, ...], reason: str, twilio: TwilioWebhook,
                                                  runtime, fake_twilio: FakeTwilio) -> None:
    form = {k: v for k, v in sms_form(PHONE, "hola").items() if k not in drop}
    response = twilio.post(form)
    assert response.status_code == 400
    assert response.get_data(as_text=True).strip() == reason
    assert_no_effect(runtime, fake_twilio)


def test_blank_from_is_400(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    response = twilio.post(sms_form("  ", "hola"))
    assert response.status_code == 400
    assert "From" in response.get_data(as_text=True)
    assert_no_effect(runtime, fake_twilio)


def test_from_that_is_no_phone_number_is_400(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    response = twilio.post(sms_form("not-a-number", "hola"))
    assert response.status_code == 400
    assert response.get_data(as_text=True).startswith("From:")
    assert count(runtime, Learner) == 0
    assert count(runtime, OutboundMessage) == 0


@pytest.mark.parametrize("media", ["-3", "11", "1" * 5000, "²", "1.5", "uno"])
def test_num_media_that_twilio_never_sends_is_400(media: str, twilio: TwilioWebhook, runtime,
                                                  fake_twilio: FakeTwilio) -> None:
    response = twilio.post(sms_form(PHONE, "hola", NumMedia=media))
    assert response.status_code == 400
    assert response.get_data(as_text=True).strip() == "NumMedia must be a whole number from 0 to 10"
    assert_no_effect(runtime, fake_twilio)


def _media_form(sender: str) -> dict[str, str]:
    return sms_form(sender, "", NumMedia="1", MediaContentType0="image/jpeg",
                    MediaUrl0="https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM1/Media/ME1")


def test_media_only_first_message_gets_a_gentle_prompt(twilio: TwilioWebhook, runtime,
                                                       fake_twilio: FakeTwilio) -> None:
    response = twilio.post(_media_form(PHONE))
    assert response.status_code == 200
    sent = fake_twilio.wait_for(2)
    assert sent[0].body == "Recibi tu archivo, pero solo puedo leer texto."  # GSM-7 form on SMS
    assert "1) Ruta segura" in sent[1].body
    with runtime.factory() as session:
        row = session.scalars(select(InboundMessage)).one()
        assert (row.body, row.media_count) == ("", 1)


def test_media_only_mid_quiz_is_never_graded(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    twilio.sms(PHONE, "SEGURIDAD")
    sent = fake_twilio.wait_for(3)
    assert sent[2].body.startswith("Pregunta 1 de 3")
    settle(runtime)

    response = twilio.post(_media_form(PHONE))
    assert response.status_code == 200
    sent = fake_twilio.wait_for(5)
    assert sent[3].body == "Recibi tu archivo, pero solo puedo leer texto."
    assert sent[4].body.startswith("Pregunta 1 de 3")  # asked again, same question
    settle(runtime)
    time.sleep(0.2)
    assert len(fake_twilio.messages) == 5
    assert count(runtime, Answer) == 0
    with runtime.factory() as session:
        enrolment = session.scalars(select(Enrolment)).one()
        assert (enrolment.position, enrolment.question) == (0, 0)
        assert session.scalars(select(Learner)).one().reasks == 0

    # and the quiz still counts the learner's first real answer
    twilio.sms(PHONE, "2")
    fake_twilio.wait_for(7)
    with runtime.factory() as session:
        answer = session.scalars(select(Answer)).one()
        assert (answer.lesson, answer.question, answer.choice, answer.correct) == (0, 0, 2, True)


@pytest.mark.parametrize("body", [
    "x" * 5000,
    "Hola 👋🏽 ¿cómo estás? 🇲🇽👨‍👩‍👧",
    "nul\x00in the\x00middle\x00",
    "\x00",
    "C:\\ruta\\0 \\\\0 \x00\\ \\",
    "مرحبا، أريد التسجيل في الدورة",
    "\u200fשלום, אני רוצה ללמוד\u200f",
    "'; DROP TABLE learners; --",
    "Robert'); DELETE FROM inbound_messages WHERE ('1'='1",
    "  leading and trailing spaces\r\nand CRLF  ",
], ids=["5000-chars", "emoji", "nul-bytes", "only-nul", "backslashes", "arabic", "hebrew-rlm", "sql-drop", "sql-delete",
        "whitespace"])
def test_odd_bodies_are_stored_exactly(body: str, twilio: TwilioWebhook, runtime,
                                       fake_twilio: FakeTwilio) -> None:
    response = twilio.sms(PHONE, body)
    assert response.status_code == 200
    assert response.data == EMPTY_TWIML
    assert inbound_bodies(runtime) == [body]
    fake_twilio.wait_for(1)  # the learner still gets an answer
    assert count(runtime, Learner) == 1  # the learners table is still there
    # and the same text twice more (as a new message) still goes through
    again = twilio.sms(PHONE, body)
    assert again.status_code == 200
    assert inbound_bodies(runtime) == [body, body]


# -- dedupe ----------------------------------------------------------------------------------------


def test_same_message_sid_twice_has_one_effect(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    form = sms_form(PHONE, "hola")
    first = twilio.post(form)
    assert first.status_code == 200
    fake_twilio.wait_for(1)
    settle(runtime)
    second = twilio.post(form)
    assert second.status_code == 200
    assert second.data == EMPTY_TWIML
    settle(runtime)
    time.sleep(0.3)
    assert count(runtime, InboundMessage) == 1
    assert count(runtime, OutboundMessage) == 1
    assert len(fake_twilio.messages) == 1


def test_same_quiz_answer_twice_is_graded_once(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    twilio.sms(PHONE, "SEGURIDAD")
    fake_twilio.wait_for(3)
    form = sms_form(PHONE, "1")  # wrong answer
    assert twilio.post(form).status_code == 200
    assert twilio.post(form).status_code == 200
    fake_twilio.wait_for(5)
    settle(runtime)
    time.sleep(0.2)
    assert len(fake_twilio.messages) == 5
    with runtime.factory() as session:
        assert [(a.question, a.choice, a.correct) for a in session.scalars(select(Answer))] == [(0, 1, False)]
        assert session.scalars(select(Enrolment)).one().question == 1


def _post_at_once(url: str, form: dict[str, str], signature: str, threads: int = 8) -> list[int]:
    barrier = threading.Barrier(threads)
    statuses: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def post() -> None:
        try:
            with httpx.Client(timeout=30) as http:
                request = http.build_request("POST", url, data=form, headers={"X-Twilio-Signature": signature})
                barrier.wait()
                status = http.send(request).status_code
            with lock:
                statuses.append(status)
        except BaseException as error:  # noqa: BLE001 - reported below
            with lock:
                errors.append(error)

    workers = [threading.Thread(target=post) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert errors == []
    return statuses


def test_same_request_eight_times_at_once_has_one_effect(live_server: str, twilio: TwilioWebhook, runtime,
                                                         fake_twilio: FakeTwilio) -> None:
    url = f"{live_server}/webhooks/twilio"
    # a new learner (their creation races too), then a keyword from the same learner
    rounds = [("hola", 1, "1) Ruta segura"), ("SEGURIDAD", 3, "Te inscribiste")]
    expected_total = 0
    for number, (text, replies, first_words) in enumerate(rounds, start=1):
        form = sms_form(PHONE, text)
        statuses = _post_at_once(url, form, twilio.sign("/webhooks/twilio", form))
        assert statuses == [200] * 8
        expected_total += replies
        sent = fake_twilio.wait_for(expected_total)
        settle(runtime)
        time.sleep(0.3)
        assert len(fake_twilio.messages) == expected_total
        assert first_words in fake_twilio.messages[expected_total - replies].body
        assert count(runtime, InboundMessage) == number
        assert count(runtime, Learner) == 1
        assert count(runtime, OutboundMessage) == expected_total
        assert len({m.body for m in sent}) == len(sent)  # nothing went out twice
    assert count(runtime, Enrolment) == 1


def test_eight_different_new_learners_at_once(live_server: str, twilio: TwilioWebhook, runtime,
                                              fake_twilio: FakeTwilio) -> None:
    """Concurrent, distinct messages all take effect (dedupe must not swallow real messages)."""
    url = f"{live_server}/webhooks/twilio"
    phones = [f"+5255123456{n:02d}" for n in range(8)]
    barrier = threading.Barrier(len(phones))
    statuses: list[int] = []

    def post(phone: str) -> None:
        form = sms_form(phone, "hola")
        with httpx.Client(timeout=30) as http:
            barrier.wait()
            response = http.post(url, data=form, headers={"X-Twilio-Signature": twilio.sign("/webhooks/twilio",
                                                                                             form)})
            statuses.append(response.status_code)

    workers = [threading.Thread(target=post, args=(phone,)) for phone in phones]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert statuses == [200] * 8
    sent = fake_twilio.wait_for(8)
    assert sorted(m.to for m in sent) == phones
    assert count(runtime, Learner) == 8
    assert count(runtime, InboundMessage) == 8


# -- opted out -------------------------------------------------------------------------------------


def test_stop_silences_until_start(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> None:
    twilio.sms(PHONE, "hola")
    fake_twilio.wait_for(1)
    settle(runtime)
    outbound_before = count(runtime, OutboundMessage)

    assert twilio.sms(PHONE, "STOP").status_code == 200
    stopped = learner(runtime)
    assert stopped is not None and stopped.opted_out_at is not None
    assert twilio.sms(PHONE, "hola").status_code == 200
    assert twilio.sms(PHONE, "SEGURIDAD").status_code == 200
    assert twilio.sms(PHONE, "AYUDA").status_code == 200
    time.sleep(1.5)  # longer than the dispatcher's idle wait: anything queued would have gone out
    assert len(fake_twilio.messages) == 1
    assert count(runtime, OutboundMessage) == outbound_before
    assert count(runtime, Enrolment) == 0
    assert count(runtime, InboundMessage) == 5  # still recorded, never answered

    assert twilio.sms(PHONE, "START").status_code == 200
    sent = fake_twilio.wait_for(2)
    assert sent[1].to == PHONE
    assert sent[1].body == "Volviste a activar los mensajes de Vereda."
    back = learner(runtime)
    assert back is not None and back.opted_out_at is None
    twilio.sms(PHONE, "AYUDA")
    assert fake_twilio.wait_for(3)[2].body.startswith("Comandos:")


@pytest.mark.parametrize("word", ["baja", "  Stop! ", "CANCELAR", "unsubscribe"])
def test_opt_out_keywords_send_no_confirmation(word: str, twilio: TwilioWebhook, runtime,
                                               fake_twilio: FakeTwilio) -> None:
    assert twilio.sms(PHONE, word).status_code == 200
    time.sleep(1.2)
    assert fake_twilio.messages == []
    assert count(runtime, OutboundMessage) == 0
    found = learner(runtime)
    assert found is not None and found.opted_out_at is not None


def test_whatsapp_stop_also_silences_sms_of_the_same_line(twilio: TwilioWebhook, runtime,
                                                          fake_twilio: FakeTwilio) -> None:
    assert twilio.sms("whatsapp:+5215512345678", "BAJA").status_code == 200
    assert twilio.sms(PHONE, "hola").status_code == 200
    time.sleep(1.2)
    assert fake_twilio.messages == []
    assert count(runtime, Learner) == 1


# -- status callbacks ------------------------------------------------------------------------------


def status_form(sid: str, status: str, error_code: str = "") -> dict[str, str]:
    form = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status,
            "AccountSid": "AC" + "0" * 32, "From": "+15005550006", "To": PHONE, "ApiVersion": "2010-04-01"}
    if error_code:
        form["ErrorCode"] = error_code
    return form


def outbound_by_sid(runtime, sid: str) -> OutboundMessage:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        return session.scalars(select(OutboundMessage).where(OutboundMessage.provider_id == sid)).one()


def events_of(runtime, message_id: int) -> list[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        return [(e.status, e.error_code) for e in session.scalars(
            select(MessageEvent).where(MessageEvent.message_id == message_id).order_by(MessageEvent.id))]


@pytest.fixture
def delivered_sid(twilio: TwilioWebhook, runtime, fake_twilio: FakeTwilio) -> str:  # type: ignore[no-untyped-def]
    """The provider sid of a reply the fake accepted (the outbox row is 'sent')."""
    twilio.sms(PHONE, "hola")
    sid = fake_twilio.wait_for(1)[0].sid
    settle(runtime)
    assert outbound_by_sid(runtime, sid).status == "sent"
    return sid


def test_status_moves_forward_and_never_back(delivered_sid: str, twilio: TwilioWebhook, runtime) -> None:
    path = "/webhooks/twilio/status"
    row_id = outbound_by_sid(runtime, delivered_sid).id
    assert twilio.post(status_form(delivered_sid, "sent"), path=path).status_code == 200
    assert outbound_by_sid(runtime, delivered_sid).status == "sent"
    response = twilio.post(status_form(delivered_sid, "delivered"), path=path)
    assert response.status_code == 200
    assert response.data == EMPTY_TWIML
    assert outbound_by_sid(runtime, delivered_sid).status == "delivered"
    # a late "sent" after "delivered": history only
    assert twilio.post(status_form(delivered_sid, "sent"), path=path).status_code == 200
    assert outbound_by_sid(runtime, delivered_sid).status == "delivered"
    assert events_of(runtime, row_id) == [("sent", None), ("sent", None), ("delivered", None), ("sent", None)]
    # and "read" (WhatsApp) still moves it on
    assert twilio.post(status_form(delivered_sid, "read"), path=path).status_code == 200
    assert outbound_by_sid(runtime, delivered_sid).status == "read"


def test_undelivered_21610_opts_the_learner_out(delivered_sid: str, twilio: TwilioWebhook, runtime,
                                                fake_twilio: FakeTwilio) -> None:
    path = "/webhooks/twilio/status"
    response = twilio.post(status_form(delivered_sid, "undelivered", "21610"), path=path)
    assert response.status_code == 200
    row = outbound_by_sid(runtime, delivered_sid)
    assert (row.status, row.error_code) == ("failed", "21610")
    assert events_of(runtime, row.id)[-1] == ("undelivered", "21610")
    found = learner(runtime)
    assert found is not None and found.opted_out_at is not None
    twilio.sms(PHONE, "AYUDA")
    time.sleep(1.2)
    assert len(fake_twilio.messages) == 1


def test_undelivered_other_error_does_not_opt_out(delivered_sid: str, twilio: TwilioWebhook, runtime) -> None:
    response = twilio.post(status_form(delivered_sid, "undelivered", "30003"), path="/webhooks/twilio/status")
    assert response.status_code == 200
    row = outbound_by_sid(runtime, delivered_sid)
    assert (row.status, row.error_code) == ("failed", "30003")
    found = learner(runtime)
    assert found is not None and found.opted_out_at is None


def test_unknown_message_sid_is_200_without_effect(delivered_sid: str, twilio: TwilioWebhook, runtime) -> None:
    events = count(runtime, MessageEvent)
    unknown = "SM" + uuid.uuid4().hex
    response = twilio.post(status_form(unknown, "undelivered", "21610"), path="/webhooks/twilio/status")
    assert response.status_code == 200
    assert response.data == EMPTY_TWIML
    assert count(runtime, MessageEvent) == events
    assert outbound_by_sid(runtime, delivered_sid).status == "sent"
    found = learner(runtime)
    assert found is not None and found.opted_out_at is None


def test_status_callback_without_sid_or_status_is_400(twilio: TwilioWebhook, runtime) -> None:
    path = "/webhooks/twilio/status"
    no_sid = {k: v for k, v in status_form("SM1", "sent").items() if k not in ("MessageSid", "SmsSid")}
    no_status = {k: v for k, v in status_form("SM1", "sent").items() if k not in ("MessageStatus", "SmsStatus")}
    for form in (no_sid, no_status):
        response = twilio.post(form, path=path)
        assert response.status_code == 400
        assert response.get_data(as_text=True).strip() == "missing MessageSid or MessageStatus"
    assert count(runtime, MessageEvent) == 0


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("MessageStatus", "x" * 100_000, "MessageStatus must be"),
    ("MessageStatus", "entregado!", "MessageStatus must be"),
    ("ErrorCode", "1" * 40, "ErrorCode must be"),
    ("ErrorCode", "30003; DROP", "ErrorCode must be"),
])
def test_status_callback_with_odd_fields_is_400_without_effect(field: str, value: str, reason: str,
                                                               delivered_sid: str, twilio: TwilioWebhook,
                                                               runtime) -> None:
    before = count(runtime, MessageEvent)
    form = {**status_form(delivered_sid, "delivered", "30003"), field: value}
    response = twilio.post(form, path="/webhooks/twilio/status")
    assert response.status_code == 400 and response.get_data(as_text=True).startswith(reason)
    assert count(runtime, MessageEvent) == before
    assert outbound_by_sid(runtime, delivered_sid).status == "sent"


def test_a_status_word_we_do_not_know_is_kept_in_the_history_only(delivered_sid: str, twilio: TwilioWebhook,
                                                                   runtime) -> None:
    response = twilio.post(status_form(delivered_sid, "canceled"), path="/webhooks/twilio/status")
    assert response.status_code == 200
    row = outbound_by_sid(runtime, delivered_sid)
    assert row.status == "sent"
    with runtime.factory() as session:
        history = session.scalars(select(MessageEvent.status).where(MessageEvent.message_id == row.id)).all()
    assert "canceled" in history
