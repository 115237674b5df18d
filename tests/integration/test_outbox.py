"""The outbox against the fake Twilio: retries with backoff, timeouts, permanent errors, opt-outs, latency."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from bot.channels.twilio import TwilioSender
from bot.config import Settings
from bot.models import Learner, MessageEvent, OutboundMessage
from bot.outbox import Outbox
from bot.services import Envelope, Received, receive
from tests.conftest import TwilioWebhook, at
from tests.fakes.twilio_api import Failure, FakeTwilio

PHONE = "+525512345678"
T0 = at("2026-06-01 15:00")


def queue(runtime, text: str, now: datetime = T0, phone: str = PHONE) -> Received:  # type: ignore[no-untyped-def]
    """An inbound SMS handled without waking the dispatcher: its replies wait in the outbox."""
    envelope = Envelope(channel="sms", provider_id="SM" + uuid.uuid4().hex, address=phone, text=text,
                        to="+15005550006")
    return receive(runtime.factory, envelope, runtime.context(now), runtime.senders)


def rows(runtime) -> list[OutboundMessage]:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        return list(session.scalars(select(OutboundMessage).order_by(OutboundMessage.id)))


def events(runtime, message_id: int) -> list[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        return [(e.status, e.error_code) for e in session.scalars(
            select(MessageEvent).where(MessageEvent.message_id == message_id).order_by(MessageEvent.id))]


def opted_out_at(runtime, phone: str = PHONE) -> datetime | None:  # type: ignore[no-untyped-def]
    with runtime.factory() as session:
        return session.scalars(select(Learner.opted_out_at).where(Learner.phone == phone)).one()


def fixed(now: datetime):  # type: ignore[no-untyped-def]
    return lambda: now


# -- transient failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code"), [(500, None), (503, None), (429, 20429)])
def test_transient_error_retries_with_exponential_backoff(status: int, code: int | None, runtime,
                                                          fake_twilio: FakeTwilio) -> None:
    assert queue(runtime, "hola").replies == 1
    outbox: Outbox = runtime.outbox
    fake_twilio.fail_next(Failure(status, code))

    done = outbox.dispatch(fixed(T0))
    assert (done.sent, done.retried, done.failed) == (0, 1, 0)
    [row] = rows(runtime)
    assert (row.status, row.attempts) == ("queued", 1)
    assert row.error_code == str(code or status)
    first_wait = (row.next_attempt_at - T0).total_seconds()
    assert 1.6 <= first_wait <= 2.4  # 2 s ± 20 %
    assert fake_twilio.messages == [] and fake_twilio.requests == 1

    # not due yet: nothing is tried
    assert outbox.dispatch(fixed(T0 + timedelta(seconds=1))).total() == 0
    assert fake_twilio.requests == 1

    fake_twilio.fail_next(Failure(status, code))
    t1 = T0 + timedelta(seconds=3)
    assert outbox.dispatch(fixed(t1)).retried == 1
    [row] = rows(runtime)
    assert (row.status, row.attempts) == ("queued", 2)
    second_wait = (row.next_attempt_at - t1).total_seconds()
    assert 3.2 <= second_wait <= 4.8  # doubled
    assert fake_twilio.requests == 2

    t2 = T0 + timedelta(seconds=60)
    done = outbox.dispatch(fixed(t2))
    assert (done.sent, done.retried) == (1, 0)
    [row] = rows(runtime)
    [sent] = fake_twilio.messages
    assert (row.status, row.attempts, row.provider_id) == ("sent", 3, sent.sid)
    assert row.updated_at == t2
    assert sent.to == PHONE and "1) Ruta segura" in sent.body
    assert [e[0] for e in events(runtime, row.id)] == ["retry", "retry", "sent"]
    # sent once: later passes find nothing
    assert outbox.dispatch(fixed(T0 + timedelta(hours=1))).total() == 0
    assert fake_twilio.requests == 3


def test_timeout_is_retried_later(settings: Settings, runtime, fake_twilio: FakeTwilio) -> None:
    queue(runtime, "hola")
    sender = TwilioSender(settings, timeout=0.5)
    outbox = Outbox(runtime.factory, {"sms": sender, "whatsapp": sender})
    fake_twilio.fail_next(Failure(500, delay=3.0))

    started = time.monotonic()
    done = outbox.dispatch(fixed(T0))
    assert time.monotonic() - started < 2.0  # the client gave up after its timeout
    assert done.retried == 1
    [row] = rows(runtime)
    assert (row.status, row.attempts, row.error_code) == ("queued", 1, "network")
    assert row.next_attempt_at > T0
    assert row.claim_token is None and row.claimed_until is None
    assert fake_twilio.messages == []

    done = outbox.dispatch(fixed(T0 + timedelta(minutes=1)))
    assert done.sent == 1
    [row] = rows(runtime)
    assert (row.status, row.attempts) == ("sent", 2)
    assert [m.to for m in fake_twilio.messages] == [PHONE]


def test_unreachable_api_is_retried(settings: Settings, runtime, fake_twilio: FakeTwilio) -> None:
    queue(runtime, "hola")
    dead = TwilioSender(settings.with_(twilio_api_base_url="http://127.0.0.1:9"), timeout=0.5)
    assert Outbox(runtime.factory, {"sms": dead}).dispatch(fixed(T0)).retried == 1
    [row] = rows(runtime)
    assert (row.status, row.error_code) == ("queued", "network")
    assert runtime.outbox.dispatch(fixed(T0 + timedelta(minutes=1))).sent == 1
    assert len(fake_twilio.messages) == 1


# -- permanent failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [21610, 63014])
def test_unsubscribed_error_fails_and_opts_the_learner_out(code: int, runtime, fake_twilio: FakeTwilio) -> None:
    assert queue(runtime, "SEGURIDAD").replies == 3  # enrolled, lesson 1, question 1
    fake_twilio.fail_next(Failure(400, code, "Attempt to send to unsubscribed recipient"))

    runtime.outbox.dispatch(fixed(T0))
    first, *rest = rows(runtime)
    assert (first.status, first.attempts, first.error_code) == ("failed", 1, str(code))
    assert opted_out_at(runtime) == T0
    # the learner said STOP to Twilio: the rest of their messages never go out
    assert [r.status for r in rest] == ["cancelled", "cancelled"]
    assert fake_twilio.messages == [] and fake_twilio.requests == 1
    assert runtime.outbox.dispatch(fixed(T0 + timedelta(hours=1))).total() == 0
    assert fake_twilio.requests == 1


@pytest.mark.parametrize("code", [21211, 21614])
def test_invalid_number_fails_without_retry(code: int, runtime, fake_twilio: FakeTwilio) -> None:
    queue(runtime, "hola")
    fake_twilio.fail_next(Failure(400, code, "The 'To' number is not a valid phone number"))
    done = runtime.outbox.dispatch(fixed(T0))
    assert (done.failed, done.retried, done.sent) == (1, 0, 0)
    [row] = rows(runtime)
    assert (row.status, row.attempts, row.error_code) == ("failed", 1, str(code))
    assert (row.error_message or "").endswith("The 'To' number is not a valid phone number")
    assert events(runtime, row.id) == [("failed", str(code))]
    assert opted_out_at(runtime) is None  # an invalid number is not an opt-out
    assert runtime.outbox.dispatch(fixed(T0 + timedelta(days=1))).total() == 0
    assert fake_twilio.requests == 1 and fake_twilio.messages == []


def test_one_failing_recipient_does_not_stop_the_others(runtime, fake_twilio: FakeTwilio) -> None:
    others = ["+525512340001", "+525512340002"]
    queue(runtime, "hola")
    for phone in others:
        queue(runtime, "hola", phone=phone)
    fake_twilio.fail_next(Failure(400, 21211))
    done = runtime.outbox.dispatch(fixed(T0))
    assert (done.failed, done.sent) == (1, 2)
    # Learners are sent to side by side, so which one meets the failure is not fixed: the other two get theirs.
    outcome = {row.to_address: row.status for row in rows(runtime)}
    assert sorted(outcome.values()) == ["failed", "sent", "sent"]
    assert sorted(m.to for m in fake_twilio.messages) == sorted(a for a, s in outcome.items() if s == "sent")


# -- opted out while queued ------------------------------------------------------------------------


def test_queued_message_is_cancelled_when_the_learner_opts_out(runtime, fake_twilio: FakeTwilio) -> None:
    queue(runtime, "SEGURIDAD")
    assert [r.status for r in rows(runtime)] == ["queued"] * 3
    assert queue(runtime, "STOP", now=T0 + timedelta(seconds=1)).replies == 0
    assert [r.status for r in rows(runtime)] == ["cancelled"] * 3
    assert runtime.outbox.dispatch(fixed(T0 + timedelta(seconds=2))).total() == 0
    assert fake_twilio.requests == 0


def test_claim_cancels_rows_of_a_learner_who_opted_out_meanwhile(runtime, fake_twilio: FakeTwilio) -> None:
    """An opt-out committed by another process after the row was queued (no cancel ran on it)."""
    queue(runtime, "hola")
    with runtime.factory() as session, session.begin():
        session.execute(update(Learner).values(opted_out_at=T0))
    done = runtime.outbox.dispatch(fixed(T0 + timedelta(seconds=1)))
    assert done.sent == 0
    [row] = rows(runtime)
    assert row.status == "cancelled"
    assert events(runtime, row.id) == [("cancelled", None)]
    assert fake_twilio.requests == 0


# -- crash recovery --------------------------------------------------------------------------------


def test_reply_claimed_by_a_dead_process_is_sent_after_recovery(runtime, fake_twilio: FakeTwilio) -> None:
    queue(runtime, "hola")
    claimed = runtime.outbox.claim(T0)  # ... and the process dies before sending
    assert len(claimed) == 1
    assert runtime.outbox.dispatch(fixed(T0 + timedelta(seconds=5))).total() == 0  # still claimed
    assert runtime.outbox.recover(T0 + timedelta(seconds=30)) == 0  # claim not expired yet
    assert runtime.outbox.recover(T0 + timedelta(seconds=61)) == 1
    assert runtime.outbox.dispatch(fixed(T0 + timedelta(seconds=62))).sent == 1
    assert len(fake_twilio.messages) == 1
    [row] = rows(runtime)
    assert (row.status, row.attempts) == ("sent", 2)


def test_a_learner_waits_while_another_process_sends_to_them(runtime, fake_twilio: FakeTwilio) -> None:
    """Two dispatchers (two processes): the second never takes a later message of a learner the first is
    sending to, so each learner's messages arrive in order; other learners are not held up."""
    queue(runtime, "SEGURIDAD")  # three replies for PHONE, in order
    other = "+525587654321"
    queue(runtime, "hola", phone=other)
    second = Outbox(runtime.factory, runtime.senders)
    first_claim = runtime.outbox.claim(T0 + timedelta(seconds=1), limit=1)  # the first takes PHONE's first
    assert [m.to_address for m in first_claim] == [PHONE]
    taken = second.claim(T0 + timedelta(seconds=1))
    assert [m.to_address for m in taken] == [other]  # PHONE's second and third wait
    result = runtime.outbox.send(first_claim[0])
    runtime.outbox.record(first_claim[0], result, T0 + timedelta(seconds=1))
    for message in taken:
        second.record(message, second.send(message), T0 + timedelta(seconds=1))
    rest = second.claim(T0 + timedelta(seconds=2))  # PHONE's first is sent: the rest may go, in order
    assert [m.to_address for m in rest] == [PHONE, PHONE]
    assert [m.id for m in rest] == sorted(m.id for m in rest) and rest[0].id > first_claim[0].id


def test_claims_racing_in_postgresql_keep_each_learner_in_order(runtime, fake_twilio: FakeTwilio) -> None:
    """PostgreSQL: while one claim holds a learner's first message locked (not yet marked sending), another
    claim, which SKIP LOCKED makes blind to that row, must not take the learner's later messages."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("SQLite claims are serial (BEGIN IMMEDIATE): no race to test")
    from bot.outbox import CLAIM_DUE, CLAIM_LOCK, LEARNER_LOCKS

    queue(runtime, "SEGURIDAD")
    with runtime.engine.connect() as holder:
        transaction = holder.begin()
        first = holder.execute(CLAIM_DUE, {"now": T0 + timedelta(seconds=1), "channels": ["sms"], "limit": 1}).one()
        holder.execute(LEARNER_LOCKS, {"space": CLAIM_LOCK, "learners": [first.learner_id]})
        # a claim in flight: row locked and learner locked, nothing committed yet
        assert Outbox(runtime.factory, runtime.senders).claim(T0 + timedelta(seconds=1)) == []
        transaction.rollback()
    assert len(runtime.outbox.claim(T0 + timedelta(seconds=1))) == 3  # free again: all three, in one batch


def test_rows_are_unique_per_idempotency_key(runtime) -> None:
    received = queue(runtime, "SEGURIDAD")
    with runtime.factory() as session:
        keys = list(session.scalars(select(OutboundMessage.idempotency_key)))
        assert len(keys) == len(set(keys)) == received.replies
        assert session.scalar(select(func.count()).select_from(OutboundMessage)) == 3


# -- latency through the real dispatcher thread ----------------------------------------------------


def test_replies_reach_twilio_within_a_second(twilio: TwilioWebhook, fake_twilio: FakeTwilio) -> None:
    response = twilio.sms(PHONE, "hola")
    returned = time.monotonic()
    assert response.status_code == 200
    fake_twilio.wait_for(1, timeout=5)
    assert time.monotonic() - returned < 2.0

    time.sleep(1.5)  # the dispatcher has gone idle; the next reply must not wait for its idle tick
    response = twilio.sms(PHONE, "SEGURIDAD")
    returned = time.monotonic()
    sent = fake_twilio.wait_for(4, timeout=5)
    assert time.monotonic() - returned < 2.0
    assert sent[1].body.startswith("Te inscribiste")
    assert sent[3].body.startswith("Pregunta 1 de 3")


def test_webhook_answers_fast_even_when_twilio_is_slow(twilio: TwilioWebhook, fake_twilio: FakeTwilio) -> None:
    """Replies do not ride in the webhook: a slow REST API does not slow the webhook down."""
    fake_twilio.fail_next(Failure(500, delay=3.0))
    twilio.sms(PHONE, "hola")  # the dispatcher now waits on the slow fake
    time.sleep(0.2)
    started = time.monotonic()
    response = twilio.sms("+525512340009", "hola")
    assert response.status_code == 200
    assert time.monotonic() - started < 1.0


# -- results recorded together ---------------------------------------------------------------------


def commits(runtime) -> list[int]:  # type: ignore[no-untyped-def]
    """A list that grows by one at every COMMIT on the runtime's engine."""
    from sqlalchemy import event

    seen: list[int] = []
    event.listen(runtime.engine, "commit", lambda _connection: seen.append(1))
    return seen


def test_mixed_results_are_recorded_in_one_transaction(runtime, fake_twilio: FakeTwilio) -> None:
    from bot.channels.base import SendResult
    from bot.outbox import _outcome

    queue(runtime, "SEGURIDAD")  # PHONE: three rows
    phones = ["+525512340001", "+525512340002", "+525512340003", "+525512340004"]
    for phone in phones:
        queue(runtime, "hola", phone=phone)
    outbox: Outbox = runtime.outbox
    claimed = outbox.claim(T0)
    by_phone: dict[str, list] = {}
    for message in claimed:
        by_phone.setdefault(message.to_address, []).append(message)
    first, *later = by_phone[PHONE]
    assert len(later) == 2
    results = {
        first.id: SendResult(False, error_code="21610", error_message="unsubscribed", opt_out=True),
        by_phone[phones[0]][0].id: SendResult(True, provider_id="SMok"),
        by_phone[phones[1]][0].id: SendResult(False, error_code="500", error_message="boom", retry=True),
        by_phone[phones[2]][0].id: SendResult(False, error_code="21211", error_message="bad", invalid_address=True),
        by_phone[phones[3]][0].id: SendResult(True, provider_id="SMgone"),
    }
    with runtime.factory() as session, session.begin():  # erased while it was being sent
        session.execute(OutboundMessage.__table__.delete().where(OutboundMessage.id == by_phone[phones[3]][0].id))
    entries = [_outcome(m, results[m.id], T0) for m in claimed if m.id in results]
    seen = commits(runtime)
    outbox._write(entries)
    assert len(seen) == 1
    assert [e.status for e in entries] == ["failed", "sent", "queued", "failed", "gone"]
    status = {(r.to_address, r.id): r for r in rows(runtime)}
    got = {key[0]: [] for key in status}
    for (phone, _id), row in sorted(status.items(), key=lambda item: item[0][1]):
        got[phone].append(row.status)
    # the opt-out cancelled what still waited for PHONE (its two later rows are still claimed: `sending`)
    assert got[PHONE][0] == "failed" and opted_out_at(runtime) == T0
    assert got[phones[0]] == ["sent"] and got[phones[1]] == ["queued"] and got[phones[2]] == ["failed"]
    assert phones[3] not in got
    sent_row = next(r for r in status.values() if r.to_address == phones[0])
    assert (sent_row.provider_id, sent_row.claim_token) == ("SMok", None)
    retried = next(r for r in status.values() if r.to_address == phones[1])
    assert retried.next_attempt_at > T0 and events(runtime, retried.id) == [("retry", "500")]
    assert events(runtime, first.id) == [("failed", "21610")]
    assert events(runtime, sent_row.id) == [("sent", None)]


def test_a_batch_with_mixed_results_keeps_every_rule(runtime, fake_twilio: FakeTwilio) -> None:
    """Through dispatch: failures in one learner's sequence hold back or cancel that learner's later rows only."""
    queue(runtime, "SEGURIDAD")  # PHONE: three rows
    stop_phone = "+525512340009"
    queue(runtime, "SEGURIDAD", phone=stop_phone)
    others = [f"+52551234{n:04d}" for n in range(10, 16)]
    for phone in others:
        queue(runtime, "hola", phone=phone)
    # every request fails at first, whichever learner's it is: 500, 21610, then the rest go through
    fake_twilio.fail_next(Failure(500), Failure(400, 21610))
    done = runtime.outbox.dispatch(fixed(T0))
    by_phone: dict[str, list[str]] = {}
    for row in rows(runtime):
        by_phone.setdefault(row.to_address, []).append(row.status)
    assert done.total() == done.sent + done.retried + done.failed + done.skipped
    assert (done.retried, done.failed) == (1, 1)
    statuses = sorted(by_phone.values())
    # one learner's first row is queued for retry with its later rows behind it; one is opted out and its
    # later rows cancelled; every other row is sent
    retried = [s for s in statuses if s[0] == "queued"]
    stopped = [s for s in statuses if s[0] == "failed"]
    assert len(retried) == 1 and len(stopped) == 1
    assert all(x == "queued" for x in retried[0]) and all(x == "cancelled" for x in stopped[0][1:])
    assert sum(s.count("sent") for s in statuses) == done.sent == len(fake_twilio.messages)
    with runtime.factory() as session:
        for row in session.scalars(select(OutboundMessage)):
            assert row.claim_token is None and row.status != "sending"
            history = [e.status for e in session.scalars(select(MessageEvent).where(MessageEvent.message_id == row.id))]
            assert history.count("sent") == (row.status == "sent")


def test_the_replies_of_one_message_are_recorded_in_one_transaction(runtime, fake_twilio: FakeTwilio) -> None:
    received = queue(runtime, "SEGURIDAD")
    assert len(received.reply_keys) == 3
    seen = commits(runtime)
    done = runtime.outbox.send_now(list(received.reply_keys), fixed(T0))
    assert done.sent == 3
    assert len(seen) == 2  # the claim, then the three results
    assert [r.status for r in rows(runtime)] == ["sent"] * 3
    assert [r.provider_id for r in rows(runtime)] == [m.sid for m in fake_twilio.messages]


def test_replies_to_a_later_message_never_overtake_those_to_an_earlier_one(runtime, fake_twilio: FakeTwilio) -> None:
    """Two messages of one learner handled side by side (two workers): the second request's thread sends
    its replies while the first one's are still unsent. They wait for the dispatcher, which sends all in order;
    another learner's replies queued earlier hold nothing back."""
    first = queue(runtime, "hola")
    queue(runtime, "hola", phone="+525587654321")
    second = queue(runtime, "SEGURIDAD")
    assert runtime.outbox.send_now(list(second.reply_keys), fixed(T0)).sent == 0
    assert fake_twilio.requests == 0
    assert runtime.outbox.dispatch(fixed(T0)).sent == 1 + 1 + 3
    mine = [m.body for m in fake_twilio.messages if m.to == PHONE]
    [welcome] = [r.body for r in rows(runtime) if r.idempotency_key == first.reply_keys[0]]
    assert mine[0] == welcome and len(mine) == 4
    # the learner's next message goes straight out: nothing of theirs is left ahead of it
    queue(runtime, "SEGURIDAD", now=T0 + timedelta(seconds=1), phone="+525587654321")
    later = queue(runtime, "1", now=T0 + timedelta(seconds=1))
    keys = list(later.reply_keys)
    assert runtime.outbox.send_now(keys, fixed(T0 + timedelta(seconds=1))).sent == len(keys) > 0


def test_a_reply_waiting_for_its_retry_holds_back_the_learners_later_messages(runtime,
                                                                            fake_twilio: FakeTwilio) -> None:
    """A send fails (500) and waits for its retry: the learner's next replies wait behind it, whoever sends
    them, and then all go in order; other learners are not held up, nor are replies by bulk waiting ahead."""
    first = queue(runtime, "hola")
    fake_twilio.fail_next(Failure(500))
    assert runtime.outbox.send_now(list(first.reply_keys), fixed(T0)).retried == 1
    [welcome] = rows(runtime)
    retry_at = welcome.next_attempt_at
    later = queue(runtime, "1", now=T0 + timedelta(seconds=1))
    other = queue(runtime, "hola", now=T0 + timedelta(seconds=1), phone="+525587654321")
    assert runtime.outbox.send_now(list(later.reply_keys), fixed(T0 + timedelta(seconds=1))).sent == 0
    assert runtime.outbox.dispatch(fixed(T0 + timedelta(seconds=1))).sent == len(other.reply_keys)
    assert [m.to for m in fake_twilio.messages] == ["+525587654321"]
    done = runtime.outbox.dispatch(fixed(retry_at))
    assert done.sent == 1 + len(later.reply_keys)
    mine = [m.body for m in fake_twilio.messages if m.to == PHONE]
    assert mine == [r.body for r in rows(runtime) if r.to_address == PHONE]  # in the order they were queued
    # a bulk message deferred (quiet hours) ahead of a reply does not hold the reply back
    with runtime.factory() as session:
        session.execute(update(OutboundMessage).where(OutboundMessage.id == welcome.id)
                        .values(status="queued", priority=10, next_attempt_at=T0 + timedelta(hours=9)))
        session.commit()
    t = retry_at + timedelta(seconds=1)
    reply = queue(runtime, "AYUDA", now=t)
    assert runtime.outbox.send_now(list(reply.reply_keys), fixed(t)).sent == 1


def test_a_sender_that_raises_fails_that_message_and_the_rest_go_on(runtime, fake_twilio: FakeTwilio,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    queue(runtime, "SEGURIDAD")  # three replies
    real = runtime.outbox.senders["sms"].send
    calls: list[int] = []

    def flaky(message):  # type: ignore[no-untyped-def]
        calls.append(message.id)
        if len(calls) == 1:
            raise ValueError(f"invalid literal for int(): {message.to_address!r}")
        return real(message)

    runtime.outbox.senders["sms"].send = flaky
    try:
        with caplog.at_level("INFO"):
            done = runtime.outbox.dispatch(fixed(T0))
    finally:
        runtime.outbox.senders["sms"].send = real
    assert (done.sent, done.failed) == (2, 1)
    first, *rest = rows(runtime)
    assert (first.status, first.error_code) == ("failed", "internal")
    assert [r.status for r in rest] == ["sent", "sent"] and len(fake_twilio.messages) == 2
    assert all(r.claim_token is None for r in rows(runtime))
    logged = [r for r in caplog.records if r.levelno >= 20]
    assert any("failed unexpectedly (ValueError)" in r.getMessage() for r in logged)
    assert not any(PHONE[-8:] in r.getMessage() or r.exc_info for r in logged)  # no address, no traceback


def test_a_reply_that_fails_holds_back_the_rest_of_the_request(runtime, fake_twilio: FakeTwilio) -> None:
    received = queue(runtime, "SEGURIDAD")
    fake_twilio.fail_next(Failure(500))
    done = runtime.outbox.send_now(list(received.reply_keys), fixed(T0))
    assert (done.sent, done.retried) == (0, 1)
    [first, *rest] = rows(runtime)
    assert (first.status, first.attempts, first.error_code) == ("queued", 1, "500")
    assert [(r.status, r.attempts, r.next_attempt_at) for r in rest] == [("queued", 0, first.next_attempt_at)] * 2
    assert fake_twilio.requests == 1


def test_results_of_concurrent_senders_share_a_transaction(runtime, fake_twilio: FakeTwilio) -> None:
    """Group commit: while one thread's write waits for the database, results handed in meanwhile queue up
    and are written together, in one transaction, once it is through; each caller returns once its own is."""
    import threading

    from bot.channels.base import SendResult
    from bot.outbox import _outcome

    phones = ["+525512340001", "+525512340002", "+525512340003"]
    for phone in phones:
        queue(runtime, "hola", phone=phone)
    outbox: Outbox = runtime.outbox
    claimed = outbox.claim(T0)
    assert len(claimed) == 3
    entries = [_outcome(m, SendResult(True, provider_id=f"SM{m.id}"), T0) for m in claimed]

    def wait(condition) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.01)

    seen = commits(runtime)
    threads = [threading.Thread(target=outbox._journal, args=([entry],)) for entry in entries]
    with runtime.factory() as session, session.begin():  # another writer holds the first row (the SQLite lock)
        session.execute(update(OutboundMessage).where(OutboundMessage.id == claimed[0].id)
                        .values(updated_at=T0))
        session.flush()
        threads[0].start()
        wait(lambda: outbox._journal_busy)  # the first write is waiting for the database
        threads[1].start()
        threads[2].start()
        wait(lambda: len(outbox._journal_pending) == 2)
        assert not any(entry.done for entry in entries)
    for thread in threads:
        thread.join(10)
    assert all(entry.done and entry.status == "sent" for entry in entries)
    assert len(seen) == 3  # the other writer's, the first result's, then the other two together
    assert {r.provider_id for r in rows(runtime)} == {f"SM{m.id}" for m in claimed}
    assert all(events(runtime, m.id) == [("sent", None)] for m in claimed)
