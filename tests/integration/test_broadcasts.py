"""Broadcasts against the fake Twilio, on SQLite and PostgreSQL: segments, quiet hours, the WhatsApp window,
once per recipient across interruptions and crashes, cancel, report, failures, and the `vereda broadcast` CLI.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

import bot.broadcasts as broadcasts
from bot.channels.base import Outgoing, SendResult
from bot.models import Broadcast, Enrolment, Learner, LearnerAddress, LearnerTag, OutboundMessage
from bot.outbox import Outbox
from bot.runtime import Runtime
from scheduler import tick
from tests.conftest import at
from tests.fakes.twilio_api import Failure, FakeTwilio
from tests.helpers import say

COURSE = "seguridad-humana"
MEXICO = "America/Mexico_City"
NOON_MX = at("2026-06-02 18:00")  # 12:00 in Mexico City, 03:00 the next day in Tokyo


# -- helpers -----------------------------------------------------------------------------------------


def add_learners(runtime: Runtime, phones: list[str], *, channel: str = "sms", zone: str | None = MEXICO,
                 language: str = "es", last_inbound: datetime = NOON_MX - timedelta(days=3),
                 course: str | None = COURSE, state: str = "active", tags: tuple[str, ...] = ()) -> list[int]:
    """Learners inserted directly (as an import would), with an address, an enrolment and tags."""
    ids = []
    with runtime.factory() as session, session.begin():
        for phone in phones:
            learner = Learner(phone=phone, language=language, reasks=0, created_at=last_inbound, timezone=zone)
            session.add(learner)
            session.flush()
            address = f"whatsapp:{phone}" if channel == "whatsapp" else phone
            session.add(LearnerAddress(learner_id=learner.id, channel=channel, address=address,
                                       last_inbound_at=last_inbound))
            if course is not None:
                session.add(Enrolment(learner_id=learner.id, course_id=course, channel=channel, position=0,
                                      question=0, state=state, next_due_at=None, reminders=0,
                                      enrolled_at=last_inbound))
            session.add_all([LearnerTag(learner_id=learner.id, tag=tag) for tag in tags])
            ids.append(learner.id)
    return ids


def phones(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n:04d}" for n in range(count)]


def create(runtime: Runtime, text: str | dict[str, str] = "Aviso: taller el lunes", segment: dict | None = None,
           now: datetime = NOON_MX, send_at: datetime | None = None, template: str | None = None) -> int:
    texts = {"es": text} if isinstance(text, str) else text
    return broadcasts.create(runtime.factory, texts, segment or {}, send_at or now, runtime.catalog, now,
                             whatsapp_template=template)


def materialise(runtime: Runtime, broadcast_id: int, now: datetime = NOON_MX, batch: int = 2000) -> int:
    return broadcasts.materialise(runtime.factory, broadcast_id, runtime.senders, now,
                                  runtime.settings.quiet_hours, batch=batch)


def rows_of(runtime: Runtime, broadcast_id: int) -> list[tuple[str, OutboundMessage]]:
    """(learner phone, outbox row) of a broadcast."""
    with runtime.factory() as session:
        return [(phone, row) for row, phone in session.execute(
            select(OutboundMessage, Learner.phone).join(Learner, Learner.id == OutboundMessage.learner_id)
            .where(OutboundMessage.broadcast_id == broadcast_id).order_by(OutboundMessage.id))]


def recipients(runtime: Runtime, broadcast_id: int) -> set[str]:
    return {phone for phone, _row in rows_of(runtime, broadcast_id)}


def report(runtime: Runtime, broadcast_id: int) -> dict[str, int]:
    with runtime.factory() as session:
        return broadcasts.report(session, broadcast_id)


def to_count(fake: FakeTwilio) -> dict[str, int]:
    counts: dict[str, int] = {}
    with fake.lock:
        for message in fake.messages:
            phone = message.to.removeprefix("whatsapp:")
            counts[phone] = counts.get(phone, 0) + 1
    return counts


class Killed(BaseException):
    """The process dies: not an error any handler may catch."""


class DiesAfterSending:
    """A sender that hands the message to the provider, then the process dies before recording it."""

    channels = ("whatsapp",)

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner

    def render(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.inner.render(*args, **kwargs)

    def send(self, message: Outgoing) -> SendResult:
        self.inner.send(message)
        raise Killed()


# -- segments ----------------------------------------------------------------------------------------


@pytest.fixture
def population(rt: Runtime) -> dict[str, str]:
    """Learners made through the conversation, as they would be for real."""
    t0 = NOON_MX - timedelta(hours=2)
    people = {
        "sms_active": "+525511110001", "sms_ruta_finished": "+525511110002", "whatsapp": "+525511110003",
        "english": "+12125550104", "paused": "+525511110005", "opted_out": "+525511110006",
        "no_course": "+525511110007",
    }
    say(rt, people["sms_active"], "SEGURIDAD", t0)
    say(rt, people["sms_ruta_finished"], "RUTA", t0)
    say(rt, people["whatsapp"], "SEGURIDAD", t0, channel="whatsapp")
    say(rt, people["english"], "EN", t0)
    say(rt, people["english"], "SECURITY", t0)
    say(rt, people["paused"], "SEGURIDAD", t0)
    say(rt, people["paused"], "PAUSA", t0)
    say(rt, people["opted_out"], "SEGURIDAD", t0)
    say(rt, people["opted_out"], "BAJA", t0)
    say(rt, people["no_course"], "hola", t0)
    with rt.factory() as session, session.begin():
        by_phone = dict(session.execute(select(Learner.phone, Learner.id)).all())
        session.execute(update(Enrolment).where(Enrolment.learner_id == by_phone[people["sms_ruta_finished"]])
                        .values(state="finished"))
        for who in ("sms_active", "whatsapp", "opted_out"):
            session.add(LearnerTag(learner_id=by_phone[people[who]], tag="taller-cdmx"))
        session.add(LearnerTag(learner_id=by_phone[people["english"]], tag="consulado"))
    return people


@pytest.mark.parametrize(("segment", "expected"), [
    ({}, {"sms_active", "sms_ruta_finished", "whatsapp", "english", "paused", "no_course"}),
    ({"course": COURSE}, {"sms_active", "whatsapp", "english", "paused"}),
    ({"course": "ruta-segura"}, {"sms_ruta_finished"}),
    ({"channel": "whatsapp"}, {"whatsapp"}),
    ({"channel": "sms"}, {"sms_active", "sms_ruta_finished", "english", "paused", "no_course"}),
    ({"language": "en"}, {"english"}),
    ({"language": "es", "course": COURSE}, {"sms_active", "whatsapp", "paused"}),
    ({"tag": "taller-cdmx"}, {"sms_active", "whatsapp"}),
    ({"tag": "consulado", "channel": "sms"}, {"english"}),
    ({"tag": "nadie"}, set()),
    ({"progress": "paused"}, {"paused"}),
    ({"progress": "finished"}, {"sms_ruta_finished"}),
    ({"progress": "active", "course": COURSE}, {"sms_active", "whatsapp", "english"}),
    ({"progress": "active", "course": "ruta-segura"}, set()),
], ids=lambda value: "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else None)
def test_segments_choose_the_recipients_and_never_the_opted_out(segment: dict[str, str], expected: set[str],
                                                                 population: dict[str, str], rt: Runtime,
                                                                 fake_twilio: FakeTwilio) -> None:
    text = {"es": "Aviso para el grupo", "en": "A note for the group"}
    with rt.factory() as session:
        shown = broadcasts.preview(session, text, segment)
    assert sum(shown.recipients.values()) == len(expected)
    broadcast_id = create(rt, text, segment)
    materialise(rt, broadcast_id)
    want = {population[name] for name in expected}
    assert recipients(rt, broadcast_id) == want
    # once each, in the learner's language, on the channel they use
    got = rows_of(rt, broadcast_id)
    assert len(got) == len(want)
    for phone, row in got:
        assert row.body == (text["en"] if phone == population["english"] else text["es"])
        assert row.channel == ("whatsapp" if phone == population["whatsapp"] else "sms")
    with rt.factory() as session:
        assert session.get(Broadcast, broadcast_id).recipients == len(want)  # type: ignore[union-attr]

    tick(rt, now=NOON_MX, budget=10)
    assert {row.status for _phone, row in rows_of(rt, broadcast_id)} <= {"sent"}
    sent_to = {m.to.removeprefix("whatsapp:") for m in fake_twilio.messages if m.body in text.values()}
    assert sent_to == want
    assert population["opted_out"] not in to_count(fake_twilio)


def test_a_learner_on_sms_and_whatsapp_gets_it_once_where_they_wrote_last(rt: Runtime,
                                                                         fake_twilio: FakeTwilio) -> None:
    phone = "+525511112222"
    say(rt, phone, "SEGURIDAD", NOON_MX - timedelta(hours=3))
    say(rt, phone, "ESTADO", NOON_MX - timedelta(hours=1), channel="whatsapp")  # one person, two channels
    with rt.factory() as session:
        assert session.scalar(select(func.count()).select_from(Learner)) == 1
        shown = broadcasts.preview(session, {"es": "Aviso"}, {})
    broadcast_id = create(rt, "Aviso")
    materialise(rt, broadcast_id)
    [(_phone, row)] = rows_of(rt, broadcast_id)
    assert (row.channel, row.to_address) == ("whatsapp", f"whatsapp:{phone}")
    assert sum(shown.recipients.values()) == 1, shown  # the preview counts people, not addresses


def test_preview_shows_recipients_encoding_segments_and_cost(rt: Runtime) -> None:
    add_learners(rt, phones("+52551000", 3))
    add_learners(rt, phones("+52551001", 2), channel="whatsapp")
    add_learners(rt, phones("+1212555", 2), language="en", zone="America/New_York")
    gsm = "Taller el lunes a las 10:00 en el albergue."
    ucs2 = "Taller el lunes 📅 en el albergue."
    long_gsm = "Aviso importante. " * 10  # 180 GSM-7 characters: 2 segments
    with rt.factory() as session:
        shown = broadcasts.preview(session, {"es": gsm, "en": long_gsm}, {})
        assert shown.recipients == {"sms": 5, "whatsapp": 2}
        assert shown.sms["es"][:2] == ("GSM-7", 1) and shown.sms["en"][:2] == ("GSM-7", 2)
        assert shown.sms_segments == 3 * 1 + 2 * 2  # Spanish on 3 phones, English (2 segments) on 2
        emoji = broadcasts.preview(session, {"es": ucs2}, {"channel": "sms"})
        assert emoji.recipients == {"sms": 5}
        assert emoji.sms["es"][0] == "UCS-2" and "📅" in emoji.sms["es"][2]
        lines = "\n".join(emoji.lines())
        assert "recipients: 5" in lines and "UCS-2" in lines and "📅" in lines
        assert "estimated SMS cost: 5 segment(s)" in lines
    assert rows_are_empty(rt)  # a preview sends nothing


def rows_are_empty(runtime: Runtime) -> bool:
    with runtime.factory() as session:
        return session.scalar(select(func.count()).select_from(OutboundMessage)) == 0


# -- quiet hours and the send time -------------------------------------------------------------------


def test_a_recipient_in_quiet_hours_gets_it_at_eight_local(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    now = at("2026-06-02 05:00")  # Mexico City 23:00, New York 01:00, Tokyo 14:00
    mx, ny, jp = "+525512340001", "+12125550001", "+81312340001"
    add_learners(rt, [mx])
    add_learners(rt, [ny], zone="America/New_York")
    add_learners(rt, [jp], zone="Asia/Tokyo")
    broadcast_id = create(rt, "Aviso", now=now)
    report_now = tick(rt, now=now, budget=10)
    assert report_now.broadcast_messages == 3
    assert to_count(fake_twilio) == {jp: 1}
    due = {phone: row.next_attempt_at for phone, row in rows_of(rt, broadcast_id)}
    assert due[mx].astimezone(ZoneInfo(MEXICO)).strftime("%d %H:%M") == "02 08:00"
    assert due[ny].astimezone(ZoneInfo("America/New_York")).strftime("%d %H:%M") == "02 08:00"
    assert tick(rt, now=at("2026-06-02 11:59"), budget=10).sent == 0
    assert tick(rt, now=at("2026-06-02 12:00"), budget=10).sent == 1  # 08:00 in New York
    assert to_count(fake_twilio) == {jp: 1, ny: 1}
    assert tick(rt, now=at("2026-06-02 13:59"), budget=10).sent == 0
    assert tick(rt, now=at("2026-06-02 14:00"), budget=10).sent == 1  # 08:00 in Mexico City
    assert to_count(fake_twilio) == {jp: 1, ny: 1, mx: 1}
    assert report(rt, broadcast_id)["sent"] == 3


def test_a_broadcast_for_later_waits_for_its_time(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    add_learners(rt, phones("+52551000", 3))
    broadcast_id = create(rt, "Mañana hay taller", send_at=NOON_MX + timedelta(hours=2))
    assert tick(rt, now=NOON_MX + timedelta(hours=1), budget=10).broadcast_messages == 0
    assert fake_twilio.messages == [] and rows_of(rt, broadcast_id) == []
    done = tick(rt, now=NOON_MX + timedelta(hours=2), budget=10)
    assert (done.broadcast_messages, done.sent) == (3, 3)
    with rt.factory() as session:
        assert session.get(Broadcast, broadcast_id).state == "released"  # type: ignore[union-attr]


def test_a_broken_broadcast_does_not_stop_the_others(rt: Runtime, fake_twilio: FakeTwilio,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A broadcast an older version stored with a segment no query can carry (a lone surrogate in its tag) is
    logged and left; the broadcasts after it still go out, and the tick goes on to send."""
    add_learners(rt, phones("+52551000", 2))
    broken = create(rt, "Primero")
    fine = create(rt, "Segundo")
    with rt.factory() as session:
        session.execute(update(Broadcast).where(Broadcast.id == broken).values(segment={"tag": "\ud83d"}))
        session.commit()
    done = tick(rt, now=NOON_MX, budget=10)
    assert (done.broadcast_messages, done.sent) == (2, 2)
    assert [m.body for m in fake_twilio.messages] == ["Segundo", "Segundo"]
    with rt.factory() as session:
        assert session.get(Broadcast, fine).state == "released"  # type: ignore[union-attr]
    assert any(f"broadcast {broken} could not be released" in r.getMessage() for r in caplog.records)


# -- WhatsApp's 24-hour window -----------------------------------------------------------------------


def test_whatsapp_outside_the_window_gets_the_template(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    inside, outside = "+525512340011", "+525512340012"
    add_learners(rt, [inside], channel="whatsapp", last_inbound=NOON_MX - timedelta(hours=2))
    add_learners(rt, [outside], channel="whatsapp", last_inbound=NOON_MX - timedelta(days=2))
    template = "HX" + "a" * 32
    broadcast_id = create(rt, "Aviso del albergue", template=template)
    tick(rt, now=NOON_MX, budget=10)
    by_to = {m.to: m.form for m in fake_twilio.messages}
    assert by_to[f"whatsapp:{inside}"].get("Body") == "Aviso del albergue"
    assert "ContentSid" not in by_to[f"whatsapp:{inside}"]
    assert by_to[f"whatsapp:{outside}"].get("ContentSid") == template
    assert "Body" not in by_to[f"whatsapp:{outside}"]
    assert report(rt, broadcast_id)["sent"] == 2


def test_whatsapp_outside_the_window_without_template_waits_for_the_learner(rt: Runtime,
                                                                           fake_twilio: FakeTwilio) -> None:
    inside, outside = "+525512340021", "+525512340022"
    add_learners(rt, [inside], channel="whatsapp", last_inbound=NOON_MX - timedelta(hours=2))
    add_learners(rt, [outside], channel="whatsapp", last_inbound=NOON_MX - timedelta(days=2))
    broadcast_id = create(rt, "Aviso del albergue")
    tick(rt, now=NOON_MX, budget=10)
    assert to_count(fake_twilio) == {inside: 1}
    held = {phone: row.status for phone, row in rows_of(rt, broadcast_id)}
    assert held == {inside: "sent", outside: "held"}
    assert report(rt, broadcast_id) == {"queued": 1, "sent": 1, "delivered": 0, "failed": 0, "unknown": 0,
                                        "cancelled": 0}
    tick(rt, now=NOON_MX + timedelta(hours=5), budget=10)
    assert to_count(fake_twilio) == {inside: 1}  # still waiting
    say(rt, outside, "hola", NOON_MX + timedelta(hours=6), channel="whatsapp")  # the window opens
    tick(rt, now=NOON_MX + timedelta(hours=6, minutes=1), budget=10)
    assert fake_twilio.messages[1].to == f"whatsapp:{outside}"
    assert fake_twilio.messages[1].body == "Aviso del albergue"
    assert report(rt, broadcast_id)["sent"] == 2


# -- once per recipient ------------------------------------------------------------------------------


def test_materialising_twice_adds_nobody_twice(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    add_learners(rt, phones("+52551000", 25))
    broadcast_id = create(rt)
    assert materialise(rt, broadcast_id, batch=4) == 25
    assert materialise(rt, broadcast_id, batch=4) == 0
    # even when a released broadcast is forced to start over from the first learner
    with rt.factory() as session, session.begin():
        session.execute(update(Broadcast).values(state="materialising", cursor=0))
    assert materialise(rt, broadcast_id, batch=7) == 0
    tick(rt, now=NOON_MX, budget=10)
    assert set(to_count(fake_twilio).values()) == {1} and len(to_count(fake_twilio)) == 25


def test_materialising_interrupted_half_way_resumes_without_duplicates(rt: Runtime, fake_twilio: FakeTwilio,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    add_learners(rt, phones("+52551000", 25))
    broadcast_id = create(rt)
    real_rows = broadcasts._rows
    calls = {"n": 0}

    def crash_on_third_batch(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("the process dies while materialising batch 3")
        return real_rows(*args, **kwargs)

    monkeypatch.setattr(broadcasts, "_rows", crash_on_third_batch)
    with pytest.raises(RuntimeError):
        materialise(rt, broadcast_id, batch=4)
    assert len(rows_of(rt, broadcast_id)) == 8  # two batches were committed, the third rolled back
    with rt.factory() as session:
        assert session.get(Broadcast, broadcast_id).state == "materialising"  # type: ignore[union-attr]
    monkeypatch.setattr(broadcasts, "_rows", real_rows)

    # the next tick picks it up where it stopped, and sends
    done = tick(rt, now=NOON_MX + timedelta(minutes=1), budget=10)
    assert (done.broadcast_messages, done.sent) == (17, 25)
    assert materialise(rt, broadcast_id) == 0
    assert tick(rt, now=NOON_MX + timedelta(minutes=2), budget=10).sent == 0
    counts = to_count(fake_twilio)
    assert len(counts) == 25 and set(counts.values()) == {1}
    with rt.factory() as session:
        row = session.get(Broadcast, broadcast_id)
        assert (row.state, row.recipients) == ("released", 25)  # type: ignore[union-attr]


def test_two_processes_materialising_at_once_queue_each_recipient_once(make_runtime: Callable[..., Runtime],
                                                                       fake_twilio: FakeTwilio) -> None:
    first, second = make_runtime(), make_runtime()  # two engines: two processes' connection pools
    add_learners(first, phones("+52551000", 60))
    broadcast_id = create(first)
    errors: list[BaseException] = []

    def run(runtime: Runtime) -> None:
        try:
            for _ in range(3):
                materialise(runtime, broadcast_id, batch=5)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(r,)) for r in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    materialise(first, broadcast_id)
    got = rows_of(first, broadcast_id)
    assert len(got) == 60 and len({phone for phone, _row in got}) == 60
    tick(first, now=NOON_MX, budget=10)
    assert set(to_count(fake_twilio).values()) == {1} and len(to_count(fake_twilio)) == 60


def test_a_sender_that_dies_mid_send_never_sends_a_broadcast_twice(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    """One process claims a batch and dies before trying any; another dies right after the provider took one.
    The first batch still goes out; the one that may have reached the person is `unknown`, never re-sent."""
    sms = phones("+52551000", 12)
    add_learners(rt, sms)
    victim = "+525512349999"
    add_learners(rt, [victim], channel="whatsapp", last_inbound=NOON_MX - timedelta(hours=1))
    broadcast_id = create(rt, "Aviso")
    assert materialise(rt, broadcast_id) == 13

    claimed = rt.outbox.claim(NOON_MX, limit=5)  # ... and that process is killed before sending any
    assert len(claimed) == 5 and {m.channel for m in claimed} == {"sms"}
    dying = Outbox(rt.factory, {"whatsapp": DiesAfterSending(rt.senders["whatsapp"])})
    with pytest.raises(Killed):
        dying.dispatch(lambda: NOON_MX)
    assert to_count(fake_twilio) == {victim: 1}  # the provider took it; the process never recorded that

    tick(rt, now=NOON_MX + timedelta(seconds=30), budget=10)  # claims not yet expired: 7 others go out
    assert len(to_count(fake_twilio)) == 1 + 7
    later = NOON_MX + timedelta(minutes=2)
    done = tick(rt, now=later, budget=10)
    assert done.recovered == 6
    tick(rt, now=later + timedelta(minutes=10), budget=10)
    counts = to_count(fake_twilio)
    assert set(counts.values()) == {1}, counts  # nobody twice
    assert set(counts) == set(sms) | {victim}  # nobody lost: the untried batch went out after all
    statuses = {phone: row.status for phone, row in rows_of(rt, broadcast_id)}
    assert statuses.pop(victim) == "unknown"
    assert set(statuses.values()) == {"sent"}
    assert report(rt, broadcast_id) == {"queued": 0, "sent": 12, "delivered": 0, "failed": 0, "unknown": 1,
                                        "cancelled": 0}


# -- cancel and report -------------------------------------------------------------------------------


def test_cancel_withdraws_what_is_still_queued(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    awake = phones("+52551000", 4)  # Mexico City at noon
    asleep = phones("+81312340", 3)  # Tokyo at 03:00: queued for 08:00
    add_learners(rt, awake)
    add_learners(rt, asleep, zone="Asia/Tokyo")
    waiting = "+525512340031"
    add_learners(rt, [waiting], channel="whatsapp", last_inbound=NOON_MX - timedelta(days=3))  # held
    broadcast_id = create(rt, "Aviso")
    tick(rt, now=NOON_MX, budget=10)
    assert report(rt, broadcast_id) == {"queued": 4, "sent": 4, "delivered": 0, "failed": 0, "unknown": 0,
                                        "cancelled": 0}
    assert broadcasts.cancel(rt.factory, broadcast_id, NOON_MX + timedelta(minutes=5)).withdrawn == 4
    assert report(rt, broadcast_id) == {"queued": 0, "sent": 4, "delivered": 0, "failed": 0, "unknown": 0,
                                        "cancelled": 4}
    tick(rt, now=NOON_MX + timedelta(hours=12), budget=10)  # Tokyo's morning
    say(rt, waiting, "hola", NOON_MX + timedelta(hours=12), channel="whatsapp")
    tick(rt, now=NOON_MX + timedelta(hours=12, minutes=1), budget=10)
    assert sorted(m.to for m in fake_twilio.messages if m.body == "Aviso") == awake
    assert {m.to for m in fake_twilio.messages} <= {*awake, f"whatsapp:{waiting}"}  # "hola" got its usual reply
    with rt.factory() as session:
        assert session.get(Broadcast, broadcast_id).state == "cancelled"  # type: ignore[union-attr]


def test_cancel_before_the_send_time_sends_nothing(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    add_learners(rt, phones("+52551000", 3))
    broadcast_id = create(rt, "Aviso", send_at=NOON_MX + timedelta(hours=1))
    assert broadcasts.cancel(rt.factory, broadcast_id, NOON_MX) == (0, False)
    assert broadcasts.cancel(rt.factory, broadcast_id, NOON_MX) == (0, True)  # twice: says it already was
    tick(rt, now=NOON_MX + timedelta(hours=2), budget=10)
    assert fake_twilio.messages == [] and rows_of(rt, broadcast_id) == []
    with pytest.raises(broadcasts.BroadcastError):
        broadcasts.cancel(rt.factory, 999_999, NOON_MX)


def test_a_broadcast_that_has_gone_out_to_everyone_cannot_be_cancelled(rt: Runtime, cli,
                                                                       fake_twilio: FakeTwilio) -> None:
    add_learners(rt, phones("+52551000", 2))
    broadcast_id = create(rt, "Aviso")
    tick(rt, now=NOON_MX, budget=10)
    assert len(fake_twilio.messages) == 2
    with pytest.raises(broadcasts.AlreadySent):
        broadcasts.cancel(rt.factory, broadcast_id, NOON_MX + timedelta(minutes=1))
    code, lines = cli("broadcast", "cancel", str(broadcast_id), ok=False)
    assert code != 0 and "gone out to every recipient" in lines[-1]
    with rt.factory() as session:
        assert session.get(Broadcast, broadcast_id).state == "released"  # type: ignore[union-attr]
    assert report(rt, broadcast_id)["sent"] == 2 and report(rt, broadcast_id)["cancelled"] == 0


def test_report_counts_each_outcome(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    ok = phones("+52551000", 5)
    add_learners(rt, ok)
    add_learners(rt, ["+81312340001"], zone="Asia/Tokyo")  # asleep: queued
    victim = "+525512349999"
    add_learners(rt, [victim], channel="whatsapp", last_inbound=NOON_MX - timedelta(hours=1))
    broadcast_id = create(rt, "Aviso")
    materialise(rt, broadcast_id)
    dying = Outbox(rt.factory, {"whatsapp": DiesAfterSending(rt.senders["whatsapp"])})
    with pytest.raises(Killed):
        dying.dispatch(lambda: NOON_MX)
    fake_twilio.fail_next(Failure(400, 21211, "The 'To' number is not a valid phone number"))
    tick(rt, now=NOON_MX + timedelta(minutes=5), budget=10)  # recovers the victim as unknown, sends the rest
    sids = {phone: row.provider_id for phone, row in rows_of(rt, broadcast_id) if row.status == "sent"}
    assert len(sids) == 4
    delivered = sorted(sids)[0]
    assert rt.outbox.status_callback_received(sids[delivered], "delivered", None, NOON_MX + timedelta(minutes=6))
    assert report(rt, broadcast_id) == {"queued": 1, "sent": 3, "delivered": 1, "failed": 1, "unknown": 1,
                                        "cancelled": 0}


# -- one failing recipient never stops the rest ------------------------------------------------------


@pytest.mark.parametrize(("code", "opts_out"), [(21610, True), (63014, True), (21211, False), (21614, False),
                                                (30005, False), (30006, False)])
def test_a_blocked_or_invalid_recipient_does_not_stop_the_rest(code: int, opts_out: bool, rt: Runtime,
                                                               fake_twilio: FakeTwilio) -> None:
    everyone = phones("+52551000", 10)
    add_learners(rt, everyone)
    broadcast_id = create(rt, "Aviso")
    fake_twilio.fail_next(Failure(400, code, "fake permanent error"))
    tick(rt, now=NOON_MX, budget=10)
    tick(rt, now=NOON_MX + timedelta(hours=1), budget=10)
    assert fake_twilio.requests == 10  # nothing retried
    [(failed, row)] = [(phone, row) for phone, row in rows_of(rt, broadcast_id) if row.status == "failed"]
    assert row.error_code == str(code)
    assert set(to_count(fake_twilio)) == set(everyone) - {failed}
    assert report(rt, broadcast_id) == {"queued": 0, "sent": 9, "delivered": 0, "failed": 1, "unknown": 0,
                                        "cancelled": 0}
    with rt.factory() as session:
        opted = session.scalar(select(Learner.opted_out_at).where(Learner.phone == failed))
    assert (opted is not None) == opts_out


def test_a_blocked_and_an_invalid_recipient_in_one_broadcast(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    everyone = phones("+52551000", 30)
    add_learners(rt, everyone)
    broadcast_id = create(rt, "Aviso")
    fake_twilio.fail_next(Failure(400, 21610, "unsubscribed"), Failure(400, 21211, "invalid"))
    tick(rt, now=NOON_MX, budget=10)
    counts = report(rt, broadcast_id)
    assert (counts["sent"], counts["failed"]) == (28, 2)
    assert len(to_count(fake_twilio)) == 28


@pytest.mark.parametrize(("status", "code"), [(500, None), (503, None), (429, 20429), (400, 30008), (429, 63018)])
def test_transient_errors_are_retried_and_sent_once(status: int, code: int | None, rt: Runtime,
                                                    fake_twilio: FakeTwilio) -> None:
    everyone = phones("+52551000", 5)
    add_learners(rt, everyone)
    broadcast_id = create(rt, "Aviso")
    fake_twilio.fail_next(Failure(status, code), Failure(status, code))
    first = tick(rt, now=NOON_MX, budget=10)
    assert (first.sent, first.retried) == (3, 2)
    assert tick(rt, now=NOON_MX + timedelta(seconds=1), budget=10).sent == 0  # backoff not elapsed
    assert tick(rt, now=NOON_MX + timedelta(minutes=1), budget=10).sent == 2
    counts = to_count(fake_twilio)
    assert set(counts) == set(everyone) and set(counts.values()) == {1}
    assert report(rt, broadcast_id)["sent"] == 5


# -- the CLI -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("option", "value", "says"), [("--at", "2020-01-01T00:00", "is in the past"),
                                                       ("--at", "garbage", "not an ISO-8601"),
                                                       ("--template", "nothx", "Content SID")])
def test_cli_broadcast_refuses_a_bad_time_or_template(rt: Runtime, cli, option: str, value: str,  # type: ignore[no-untyped-def]
                                                      says: str) -> None:
    code, lines = cli("broadcast", "create", "--text-es", "hola", option, value, "--yes", ok=False)
    output = "\n".join(lines)
    assert code == 2 and says in output and option in output and "--now" not in output
    with rt.factory() as session:
        assert session.scalar(select(func.count()).select_from(Broadcast)) == 0


@pytest.mark.parametrize("args", [
    ("tick", "--now", "9999-12-31T23:00:00+00:00"), ("tick", "--now", "0001-01-01T00:00:00+14:00"),
    ("tick", "--budget", "nan"), ("tick", "--budget", "-1"),
    ("broadcast", "create", "--text-es", "hola", "--at", "9999-12-31T23:59-06:00", "--yes"),
    ("broadcast", "report", "99999999999999999999"), ("broadcast", "cancel", "0"),
    ("admin", "revoke-token", "99999999999999999999"),
])
def test_cli_refuses_out_of_range_times_budgets_and_ids(rt: Runtime, cli, args: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    code, lines = cli(*args, ok=False)
    assert code == 2 and lines[-1].startswith("Error: Invalid value for"), lines
    with rt.factory() as session:
        assert session.scalar(select(func.count()).select_from(Broadcast)) == 0


def test_cli_broadcast_create_preview_list_tick_report_cancel(rt: Runtime, cli, fake_twilio: FakeTwilio) -> None:
    # the learners exist first (the CLI shares the database)
    add_learners(rt, phones("+52551000", 3))
    add_learners(rt, phones("+52551001", 2), language="en", zone="America/New_York")
    add_learners(rt, phones("+81312340", 2), zone="Asia/Tokyo", tags=("japon",))

    _code, lines = cli("broadcast", "preview", "--text-es", "Reunión el lunes 📅", "--text-en", "Meeting on Monday")
    text = "\n".join(lines)
    assert "recipients: 7" in text and "sms: 7" in text
    assert "SMS text [es]: UCS-2, 1 segment(s)" in text and "📅" in text
    assert "SMS text [en]: GSM-7, 1 segment(s)" in text
    assert "estimated SMS cost: 7 segment(s)" in text
    assert rows_are_empty(rt)

    at_time = "2030-01-15T18:00:00Z"  # 12:00 in Mexico City, 13:00 in New York, 03:00 in Tokyo
    _code, lines = cli("broadcast", "create", "--text-es", "Hola a todos", "--text-en", "Hello everyone",
                       "--at", at_time, "--yes")
    broadcast_id = int(lines[-1])
    with rt.factory() as session:
        row = session.get(Broadcast, broadcast_id)
        assert row is not None and row.state == "scheduled" and row.segment == {}
        assert row.text == {"es": "Hola a todos", "en": "Hello everyone"}
    _code, lines = cli("broadcast", "create", "--text-es", "Solo Japón", "--tag", "japon", "--yes")
    tagged = int(lines[-1])
    assert not any(line.startswith("warning:") for line in lines)
    _code, lines = cli("broadcast", "create", "--text-es", "Nadie", "--tag", "nadie", "--at", at_time, "--yes")
    assert lines[0] == "warning: no learner matches this segment now; it goes to whoever matches when it is sent"
    int(lines[-1])  # created all the same: who matches is decided when it is sent

    _code, lines = cli("broadcast", "list")
    listed = {int(line.split("\t")[0]): line for line in lines}
    assert "scheduled" in listed[broadcast_id] and "Hola a todos" in listed[broadcast_id]

    _code, lines = cli("tick", "--now", at_time, "--budget", "10")
    assert len(lines) == 1
    assert "released 9 broadcast message(s)" in lines[0] and "sent 5," in lines[0], lines
    # Tokyo is asleep: "Solo Japón" (sent now, 03:00 there) and the scheduled one wait for 08:00

    _code, lines = cli("broadcast", "report", str(broadcast_id))
    assert lines[0] == f"broadcast {broadcast_id}: released, 7 recipient(s)"
    assert {"queued: 2", "sent: 5", "delivered: 0", "failed: 0", "unknown: 0"} <= set(lines)

    _code, lines = cli("broadcast", "cancel", str(broadcast_id))
    assert lines[-1] == f"broadcast {broadcast_id} cancelled; 2 message(s) withdrawn"
    _code, lines = cli("broadcast", "report", str(broadcast_id))
    assert {"queued: 0", "sent: 5", "cancelled: 2"} <= set(lines)
    _code, lines = cli("broadcast", "cancel", str(broadcast_id))
    assert lines[-1] == f"broadcast {broadcast_id} was already cancelled; nothing withdrawn"

    cli("tick", "--now", "2030-01-16T00:00:00Z", "--budget", "10")  # 09:00 in Tokyo
    tokyo = [m for m in fake_twilio.messages if m.to.startswith("+813")]
    assert sorted(m.body for m in tokyo) == ["Solo Japón", "Solo Japón"]
    _code, lines = cli("broadcast", "report", str(tagged))
    assert "sent: 2" in lines
    assert len(fake_twilio.messages) == 7


def test_cli_create_refuses_without_yes_and_names_bad_fields(rt: Runtime, cli) -> None:
    code, lines = cli("broadcast", "create", "--text-es", "Hola", ok=False)
    assert code != 0 and "--yes" in "\n".join(lines)
    code, lines = cli("broadcast", "create", "--text-es", "Hola", "--course", "no-such-course", "--yes", ok=False)
    assert code != 0 and "segment.course" in "\n".join(lines)
    code, lines = cli("broadcast", "create", "--yes", ok=False)
    assert code != 0 and "text" in "\n".join(lines)
    code, lines = cli("broadcast", "report", "424242", ok=False)
    assert code != 0
    code, lines = cli("broadcast", "create", "--text-es", "Hola", "--text-en", "a" * 1601, "--yes", ok=False)
    assert code != 0 and "text.en: 1,601 characters; a broadcast is at most 1,600" in "\n".join(lines)
    with rt.factory() as session:
        assert session.scalar(select(func.count()).select_from(Broadcast)) == 0


def test_cli_tick_plans_and_sends_due_lessons(rt: Runtime, cli, fake_twilio: FakeTwilio) -> None:
    say(rt, "+525512345678", "SEGURIDAD", at("2026-06-01 18:00"))
    course = rt.catalog.get(COURSE)
    assert course is not None
    for question in course.lessons[0].quiz:
        say(rt, "+525512345678", str(question.answer), at("2026-06-01 18:01"))
    _code, lines = cli("tick", "--now", "2026-06-01T18:05:00Z")
    assert lines == ["planned 0 lesson(s); released 0 broadcast message(s); recovered 0; "
                     "sent 9, failed 0, retry later 0"]
    _code, lines = cli("tick", "--now", "2026-06-02T14:59:00Z")
    assert lines[-1].startswith("planned 0 lesson(s)") and "sent 0," in lines[-1]
    _code, lines = cli("tick", "--now", "2026-06-02T15:00:00+00:00")
    assert lines[-1].startswith("planned 1 lesson(s)") and "sent 2," in lines[-1]
    assert fake_twilio.messages[-2].body == course.lessons[1].text_for("es", "sms")
    code, lines = cli("tick", "--now", "not a time", ok=False)
    assert code != 0 and "ISO-8601" in "\n".join(lines)
