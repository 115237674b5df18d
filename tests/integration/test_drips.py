"""Daily drips through `scheduler.tick` at fixed times, against the fake Twilio, on SQLite and PostgreSQL.

Learners write through `bot.services.receive` at fixed times (the webhook uses the real clock); every
scheduler pass is `tick(runtime, now=...)`. What counts is what reaches the fake provider, and when.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from bot.channels.base import Rendered
from bot.drips import plan_drips
from bot.messages import say as message
from bot.models import Enrolment, Learner, LearnerAddress, OutboundMessage
from bot.outbox import enqueue
from bot.runtime import Runtime
from scheduler import TickReport, tick
from tests.conftest import LESSONS, at
from tests.fakes.twilio_api import FakeTwilio, Sent
from tests.helpers import say

ROOT = Path(__file__).resolve().parents[2]
WHATSAPP_LESSONS = ROOT / "tests" / "fixtures" / "courses_whatsapp"
COURSE = "seguridad-humana"  # keyword SEGURIDAD; every lesson has a quiz
MX = "+525512345678"  # America/Mexico_City: UTC-6 all year (no DST since 2022)
US = "+12125550123"  # America/New_York: EST UTC-5, EDT UTC-4
HN = "+50422345678"  # America/Tegucigalpa: UTC-6, no DST
JP = "+81312345678"  # Asia/Tokyo: UTC+9
ZONES = {MX: "America/Mexico_City", US: "America/New_York", HN: "America/Tegucigalpa", JP: "Asia/Tokyo"}
STEP = timedelta(minutes=15)


# -- helpers -----------------------------------------------------------------------------------------


def enrolment(runtime: Runtime, phone: str, course: str = COURSE) -> Enrolment:
    with runtime.factory() as session:
        return session.scalars(select(Enrolment).join(Learner, Learner.id == Enrolment.learner_id)
                               .where(Learner.phone == phone, Enrolment.course_id == course)).one()


def answer_quiz(runtime: Runtime, phone: str, now: datetime, course: str = COURSE) -> int:
    """Answer every open question of the current lesson, right; returns how many answers were sent."""
    catalog_course = runtime.catalog.get(course)
    assert catalog_course is not None
    sent = 0
    while True:
        row = enrolment(runtime, phone, course)
        if row.question is None or row.state == "finished":
            return sent
        question = catalog_course.lessons[row.position].quiz[row.question]
        say(runtime, phone, str(question.answer), now)
        sent += 1
        assert sent < 10, "the quiz does not move on"


def set_learner(runtime: Runtime, phone: str, **values: object) -> None:
    with runtime.factory() as session, session.begin():
        session.execute(update(Learner).where(Learner.phone == phone).values(**values))


def local(moment: datetime, phone: str) -> datetime:
    return moment.astimezone(ZoneInfo(ZONES[phone]))


@dataclass(frozen=True)
class Drip:
    """A proactive message the scheduler queued: a lesson or a reminder (or the pause notice)."""

    phone: str
    kind: str  # lesson, reminder
    index: int  # the lesson's 0-based index
    planned_at: datetime  # the tick that queued it
    status: str
    body: str
    provider_id: str | None


def drips(runtime: Runtime) -> list[Drip]:
    """The first message of every drip (the lesson text, or the reminder text), in order."""
    with runtime.factory() as session:
        rows = session.execute(
            select(OutboundMessage, Learner.phone).join(Learner, Learner.id == OutboundMessage.learner_id)
            .where(OutboundMessage.idempotency_key.like("lesson:%")
                   | OutboundMessage.idempotency_key.like("reminder:%"))
            .order_by(OutboundMessage.id)).all()
    out = []
    for row, phone in rows:
        parts = row.idempotency_key.split(":")
        if parts[-2:] != ["0", "0"]:  # message 0, part 0: the lesson or reminder text itself
            continue
        out.append(Drip(phone, parts[0], int(parts[2]), row.created_at, row.status, row.body, row.provider_id))
    return out


class Driver:
    """Runs the scheduler at fixed times and notes which tick each provider message arrived in."""

    def __init__(self, runtime: Runtime, fake: FakeTwilio) -> None:
        self.runtime, self.fake = runtime, fake
        self.arrivals: list[tuple[datetime, Sent]] = []
        self.reports: list[tuple[datetime, TickReport]] = []

    def tick(self, now: datetime) -> TickReport:
        seen = len(self.fake.messages)
        report = tick(self.runtime, now=now, budget=10)
        with self.fake.lock:
            self.arrivals += [(now, m) for m in self.fake.messages[seen:]]
        self.reports.append((now, report))
        return report

    def run(self, start: datetime, end: datetime, step: timedelta = STEP,
            after: Callable[[datetime], None] | None = None) -> None:
        """A tick every `step` from `start` to `end` inclusive; `after(now)` runs after each tick."""
        now = start
        while now <= end:
            self.tick(now)
            if after is not None:
                after(now)
            now += step

    def to(self, phone: str) -> list[tuple[datetime, str]]:
        return [(when, m.body) for when, m in self.arrivals if m.to.removeprefix("whatsapp:") == phone]


def fake_sids(fake: FakeTwilio) -> set[str]:
    with fake.lock:
        return {m.sid for m in fake.messages}


def enrol_and_finish(runtime: Runtime, phones: list[str], now: datetime, keyword: str = "SEGURIDAD") -> None:
    for phone in phones:
        assert say(runtime, phone, keyword, now).replies == 3  # enrolled, lesson 1, question 1
        answer_quiz(runtime, phone, now + timedelta(minutes=2))


# -- the course hour, in the learner's own zone -----------------------------------------------------


def test_lesson_comes_at_the_course_hour_in_each_learners_zone_not_before(rt: Runtime,
                                                                        fake_twilio: FakeTwilio) -> None:
    t0 = at("2026-06-01 18:00")  # Mexico City 12:00, New York 14:00, Tokyo 03:00 the next day
    enrol_and_finish(rt, [MX, US], t0)
    assert say(rt, JP, "SEGURIDAD", t0).replies == 3
    answer_quiz(rt, JP, at("2026-06-01 23:00"))  # Tokyo 08:00 on 06-02: next lesson on 06-03 09:00
    driver = Driver(rt, fake_twilio)
    driver.tick(at("2026-06-01 23:05"))  # the replies so far go out
    replies = len(fake_twilio.messages)
    assert replies == 3 * (3 + 3 * 2)  # enrolled, lesson, question; then per answer feedback + next
    assert enrolment(rt, MX).next_due_at == at("2026-06-02 15:00")  # 09:00 UTC-6
    assert enrolment(rt, US).next_due_at == at("2026-06-02 13:00")  # 09:00 UTC-4 (EDT)
    assert enrolment(rt, JP).next_due_at == at("2026-06-03 00:00")  # 09:00 UTC+9

    # one minute before New York's 09:00: nothing for anyone
    report = driver.tick(at("2026-06-02 12:59"))
    assert (report.lessons_planned, report.sent) == (0, 0)
    # New York's 09:00: only New York
    report = driver.tick(at("2026-06-02 13:00"))
    assert (report.lessons_planned, report.sent) == (1, 2)  # lesson 2 and its first question
    lesson2 = rt.catalog.get(COURSE).lessons[1]  # type: ignore[union-attr]
    assert [body for _when, body in driver.to(US)[-2:]][0] == lesson2.text_for("es", "sms")
    assert driver.to(US)[-1][1].startswith("Pregunta 1 de 3")
    # Mexico City 08:59: not yet; 09:00: yes
    assert driver.tick(at("2026-06-02 14:59")).sent == 0
    assert driver.tick(at("2026-06-02 15:00")).lessons_planned == 1
    # Tokyo: not on its 06-02 (the quiz was finished that very day), but at 09:00 on 06-03
    assert driver.tick(at("2026-06-02 23:59")).sent == 0
    assert driver.tick(at("2026-06-03 00:00")).lessons_planned == 1
    # the same tick again, and later ticks the same day: nothing more (one lesson a day)
    for moment in ("2026-06-03 00:00", "2026-06-03 06:00", "2026-06-03 12:00"):
        assert driver.tick(at(moment)).sent == 0
    assert len(fake_twilio.messages) == replies + 3 * 2
    planned = {(d.phone, d.index): d.planned_at for d in drips(rt)}
    assert planned == {(US, 1): at("2026-06-02 13:00"), (MX, 1): at("2026-06-02 15:00"),
                       (JP, 1): at("2026-06-03 00:00")}
    assert all(d.status == "sent" and d.provider_id in fake_sids(fake_twilio) for d in drips(rt))


def test_preferred_hour_replaces_the_course_hour(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    t0 = at("2026-06-01 18:00")
    say(rt, MX, "SEGURIDAD", t0)
    set_learner(rt, MX, preferred_hour=18)
    answer_quiz(rt, MX, t0 + timedelta(minutes=1))
    assert local(enrolment(rt, MX).next_due_at, MX).time() == time(18, 0)  # type: ignore[arg-type]
    driver = Driver(rt, fake_twilio)
    driver.run(at("2026-06-02 00:00"), at("2026-06-03 05:45"))  # every 15 minutes for 30 hours
    [drip] = drips(rt)
    assert local(drip.planned_at, MX) == datetime(2026, 6, 2, 18, 0, tzinfo=ZoneInfo(ZONES[MX]))


def test_course_days_are_respected(make_runtime: Callable[..., Runtime], fake_twilio: FakeTwilio,
                                   tmp_path: Path) -> None:
    lessons = tmp_path / "lessons"
    shutil.copytree(LESSONS / COURSE, lessons / COURSE)
    course_file = lessons / COURSE / "course.yaml"
    text = course_file.read_text()
    assert 'schedule: {days: daily, at: "09:00"}' in text
    course_file.write_text(text.replace("days: daily", "days: [mon, wed, fri]"))
    runtime = make_runtime(lessons_dir=str(lessons))
    assert runtime.catalog.get(COURSE).schedule.days == (0, 2, 4)  # type: ignore[union-attr]

    enrol_and_finish(runtime, [MX], at("2026-06-01 18:00"))  # Monday 12:00 in Mexico City
    driver = Driver(runtime, fake_twilio)
    driver.run(at("2026-06-01 19:00"), at("2026-06-09 06:00"), step=timedelta(hours=1),
               after=lambda now: answer_quiz(runtime, MX, now + timedelta(minutes=1)))
    days = [local(d.planned_at, MX) for d in drips(runtime)]
    # Wednesday, Friday, then Monday: never on Tuesday, Thursday or the weekend; always at 09:00
    assert [d.strftime("%a %d %H:%M") for d in days] == ["Wed 03 09:00", "Fri 05 09:00", "Mon 08 09:00"]


# -- quiet hours -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("preferred", "expected"), [(22, time(8, 0)), (5, time(8, 0)), (8, time(8, 0)),
                                                     (20, time(20, 0))])
def test_a_preferred_hour_in_quiet_hours_moves_to_their_end(preferred: int, expected: time, rt: Runtime,
                                                             fake_twilio: FakeTwilio) -> None:
    t0 = at("2026-06-01 18:00")
    say(rt, MX, "SEGURIDAD", t0)
    set_learner(rt, MX, preferred_hour=preferred)
    answer_quiz(rt, MX, t0 + timedelta(minutes=1))
    Driver(rt, fake_twilio).run(at("2026-06-02 00:00"), at("2026-06-03 05:45"))
    [drip] = drips(rt)
    assert local(drip.planned_at, MX).date().isoformat() == "2026-06-02"
    assert local(drip.planned_at, MX).time() == expected


def test_custom_quiet_hours_are_respected(make_runtime: Callable[..., Runtime], fake_twilio: FakeTwilio) -> None:
    runtime = make_runtime(quiet_hours=(time(20, 0), time(10, 30)))
    enrol_and_finish(runtime, [MX], at("2026-06-01 18:00"))
    Driver(runtime, fake_twilio).run(at("2026-06-02 00:00"), at("2026-06-03 05:45"))
    [drip] = drips(runtime)
    assert local(drip.planned_at, MX).time() == time(10, 30)  # the course's 09:00 is still quiet


def test_a_lesson_due_during_downtime_waits_out_the_quiet_hours(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    """Due at 09:00, but the scheduler only comes back at 23:00 local: nothing at night, one lesson in the
    morning."""
    enrol_and_finish(rt, [MX], at("2026-06-01 18:00"))
    driver = Driver(rt, fake_twilio)
    driver.tick(at("2026-06-01 18:10"))
    before = len(fake_twilio.messages)
    # back at 23:00 local on 06-02 (05:00Z on 06-03), ticking every 15 minutes through the night
    driver.run(at("2026-06-03 05:00"), at("2026-06-03 16:00"))
    [drip] = drips(rt)
    sent_at = local(drip.planned_at, MX)
    assert sent_at.date().isoformat() == "2026-06-03" and time(8, 0) <= sent_at.time() <= time(9, 0), sent_at
    assert len(fake_twilio.messages) == before + 2
    for when, _body in driver.arrivals:
        assert not (local(when, MX).time() >= time(21, 0) or local(when, MX).time() < time(8, 0)), when


# -- an open quiz: one reminder a day, then a pause --------------------------------------------------


def test_open_quiz_gets_one_reminder_a_day_then_pauses_and_says_so(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    t0 = at("2026-06-01 18:00")
    assert say(rt, MX, "SEGURIDAD", t0).replies == 3  # and the learner never answers
    driver = Driver(rt, fake_twilio)
    driver.run(t0 + timedelta(hours=1), at("2026-06-08 06:00"), step=timedelta(hours=1))  # a week, hourly

    got = drips(rt)
    assert [d.kind for d in got] == ["reminder"] * 4  # never a lesson while the quiz is open
    assert [local(d.planned_at, MX).strftime("%d %H:%M") for d in got] == [
        "02 09:00", "03 09:00", "04 09:00", "05 09:00"]
    assert all(d.index == 0 for d in got)
    reminders, notice = got[:3], got[3]
    title = rt.catalog.get(COURSE).title["es"]  # type: ignore[union-attr]
    for reminder in reminders:
        assert reminder.body == message("reminder", "es", "sms", course=title)
    assert notice.body == message("paused_after_reminders", "es", "sms", course=title)
    assert "SEGUIR" in notice.body
    row = enrolment(rt, MX)
    assert (row.state, row.next_due_at, row.position, row.question) == ("paused", None, 0, 0)
    # each reminder re-asks the open question; the pause notice is alone
    messages = driver.to(MX)[3:]
    assert len(messages) == 3 * 2 + 1
    assert [body.startswith("Pregunta 1 de 3") for _w, body in messages] == [False, True] * 3 + [False]

    # after the pause: nothing more, ever, until the learner writes
    driver.run(at("2026-06-08 06:00"), at("2026-06-12 06:00"), step=timedelta(hours=1))
    assert len(driver.to(MX)) == 3 + 7


def test_answering_after_a_reminder_brings_the_next_lesson_the_next_day(rt: Runtime,
                                                                        fake_twilio: FakeTwilio) -> None:
    t0 = at("2026-06-01 18:00")
    say(rt, MX, "SEGURIDAD", t0)
    driver = Driver(rt, fake_twilio)
    driver.run(t0, at("2026-06-02 17:00"))  # the reminder at 09:00 on 06-02
    assert [d.kind for d in drips(rt)] == ["reminder"]
    answer_quiz(rt, MX, at("2026-06-02 17:30"))  # 11:30 local
    driver.run(at("2026-06-02 17:45"), at("2026-06-03 17:00"))
    got = drips(rt)
    assert [(d.kind, d.index) for d in got] == [("reminder", 0), ("lesson", 1)]
    assert local(got[1].planned_at, MX).strftime("%d %H:%M") == "03 09:00"


def test_resume_after_the_pause_lets_the_learner_answer_and_go_on(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    say(rt, MX, "SEGURIDAD", at("2026-06-01 18:00"))
    Driver(rt, fake_twilio).run(at("2026-06-01 18:05"), at("2026-06-06 00:00"), step=timedelta(hours=1))
    assert enrolment(rt, MX).state == "paused"
    assert say(rt, MX, "SEGUIR", at("2026-06-06 17:00")).replies >= 1
    assert enrolment(rt, MX).state == "active"
    answer_quiz(rt, MX, at("2026-06-06 17:05"))
    Driver(rt, fake_twilio).run(at("2026-06-06 18:00"), at("2026-06-07 17:00"), step=timedelta(hours=1))
    assert [(d.kind, d.index) for d in drips(rt)][-1] == ("lesson", 1)
    assert local(drips(rt)[-1].planned_at, MX).strftime("%d %H:%M") == "07 09:00"


# -- downtime: one lesson, not one per missed day ---------------------------------------------------


def test_after_five_days_of_downtime_each_due_learner_gets_exactly_one_lesson(rt: Runtime,
                                                                              fake_twilio: FakeTwilio) -> None:
    enrol_and_finish(rt, [MX, US, HN], at("2026-06-01 18:00"))
    driver = Driver(rt, fake_twilio)
    driver.tick(at("2026-06-01 18:10"))
    before = len(fake_twilio.messages)
    # the scheduler is down from 06-02 to 06-07; back at 16:00Z on 06-07 (10:00 Mexico, 12:00 New York)
    back = at("2026-06-07 16:00")
    report = driver.tick(back)
    assert (report.lessons_planned, report.sent) == (3, 6)
    for moment in (back, back + timedelta(minutes=15), at("2026-06-08 02:00")):  # and again, the same day
        assert driver.tick(moment).sent == 0
    assert len(fake_twilio.messages) == before + 6
    assert {(d.phone, d.kind, d.index) for d in drips(rt)} == {(p, "lesson", 1) for p in (MX, US, HN)}
    # the next one comes tomorrow at the course hour, not in a burst of missed days
    for phone in (MX, US, HN):
        answer_quiz(rt, phone, back + timedelta(minutes=30))
        assert local(enrolment(rt, phone).next_due_at, phone) == datetime(  # type: ignore[arg-type]
            2026, 6, 8, 9, 0, tzinfo=ZoneInfo(ZONES[phone]))


def test_after_downtime_an_open_quiz_gets_one_reminder_not_a_pause(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    say(rt, MX, "SEGURIDAD", at("2026-06-01 18:00"))  # never answered
    driver = Driver(rt, fake_twilio)
    driver.tick(at("2026-06-07 16:00"))
    driver.tick(at("2026-06-07 16:00"))
    driver.tick(at("2026-06-07 20:00"))
    got = drips(rt)
    assert [(d.kind, d.index) for d in got] == [("reminder", 0)]
    assert got[0].body.startswith("Recordatorio")
    assert enrolment(rt, MX).state == "active" and enrolment(rt, MX).reminders == 1


# -- daylight saving time ----------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["2026-03-05", "2026-10-29"], ids=["spring-forward", "fall-back"])
def test_every_day_exactly_one_lesson_at_nine_local_across_dst(start: str, rt: Runtime,
                                                                fake_twilio: FakeTwilio) -> None:
    """New York changes clocks on 2026-03-08 and 2026-11-01; Mexico City and Tegucigalpa do not."""
    t0 = at(f"{start} 18:00")  # New York 13:00/14:00, Mexico City and Tegucigalpa 12:00
    learners = [US, MX, HN]
    enrol_and_finish(rt, learners, t0)
    driver = Driver(rt, fake_twilio)

    def answer_all(now: datetime) -> None:
        for phone in learners:
            answer_quiz(rt, phone, now + timedelta(minutes=1))

    first = datetime.fromisoformat(start).date()
    end = at((first + timedelta(days=7)).isoformat() + " 06:00")
    driver.run(t0 + timedelta(hours=1), end, step=timedelta(hours=1), after=answer_all)  # hourly, all week

    course = rt.catalog.get(COURSE)
    assert course is not None
    days = [first + timedelta(days=n) for n in range(1, len(course.lessons))]  # lessons 2..7, one per day
    for phone in learners:
        got = [d for d in drips(rt) if d.phone == phone]
        assert [d.kind for d in got] == ["lesson"] * len(days)
        assert [d.index for d in got] == list(range(1, len(course.lessons)))
        assert [local(d.planned_at, phone).date() for d in got] == days, phone
        assert {local(d.planned_at, phone).time() for d in got} == {time(9, 0)}, phone
        assert all(d.status == "sent" and d.provider_id in fake_sids(fake_twilio) for d in got)
        assert enrolment(rt, phone).state == "finished"
        # what reached the provider for this learner: the lessons arrived in the tick at 09:00 local
        lesson_texts = {lesson.text_for("es", "sms"): n for n, lesson in enumerate(course.lessons)}
        arrived = [(when, lesson_texts[body]) for when, body in driver.to(phone) if body in lesson_texts]
        assert [n for _when, n in arrived] == list(range(len(course.lessons)))  # lesson 1 at enrolment
        assert [local(when, phone).time() for when, _n in arrived[1:]] == [time(9, 0)] * len(days)

    us_hours = sorted({d.planned_at.hour for d in drips(rt) if d.phone == US})
    assert us_hours == [13, 14]  # EDT and EST: the change really happened in the window
    assert {d.planned_at.hour for d in drips(rt) if d.phone in (MX, HN)} == {15}


# -- who receives nothing ----------------------------------------------------------------------------


def test_opted_out_paused_and_finished_enrolments_receive_nothing(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    opted_out, paused, finished, active = "+525511110001", "+525511110002", "+525511110003", "+525511110004"
    t0 = at("2026-06-01 18:00")
    enrol_and_finish(rt, [opted_out, paused, finished, active], t0)
    Driver(rt, fake_twilio).tick(t0 + timedelta(minutes=3))
    assert say(rt, opted_out, "BAJA", t0 + timedelta(minutes=5)).replies == 0
    say(rt, paused, "PAUSA", t0 + timedelta(minutes=5))
    # the last learner goes through the whole course at once with SIGUIENTE
    course = rt.catalog.get(COURSE)
    assert course is not None
    for _lesson in course.lessons[1:]:
        say(rt, finished, "SIGUIENTE", t0 + timedelta(minutes=10))
        answer_quiz(rt, finished, t0 + timedelta(minutes=10))
    assert enrolment(rt, finished).state == "finished"
    assert enrolment(rt, paused).state == "paused"
    driver = Driver(rt, fake_twilio)
    driver.tick(t0 + timedelta(minutes=20))
    before = {phone: len(driver.to(phone)) for phone in (opted_out, paused, finished)}
    assert before[opted_out] == 0  # nothing after BAJA, not even a confirmation

    # a finished enrolment with a stale due time in the past, as an old version might have left it
    with rt.factory() as session, session.begin():
        session.execute(update(Enrolment).where(Enrolment.state == "finished")
                        .values(next_due_at=at("2026-06-02 00:00")))
    driver.run(at("2026-06-02 00:00"), at("2026-06-06 00:00"), step=timedelta(hours=1))
    assert {phone: len(driver.to(phone)) for phone in (opted_out, paused, finished)} == before
    assert {d.phone for d in drips(rt)} == {active}
    assert sum(1 for d in drips(rt) if d.kind == "lesson") == 1  # the active one never answered again


def test_stop_after_the_lesson_was_queued_cancels_it(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    enrol_and_finish(rt, [MX], at("2026-06-01 18:00"))
    Driver(rt, fake_twilio).tick(at("2026-06-01 18:10"))
    before = len(fake_twilio.messages)
    assert plan_drips(rt.factory, rt.context(at("2026-06-02 15:00")), rt.senders) == 1  # queued, not sent
    say(rt, MX, "STOP", at("2026-06-02 15:00:05"))
    Driver(rt, fake_twilio).tick(at("2026-06-02 15:01"))
    assert len(fake_twilio.messages) == before
    assert {d.status for d in drips(rt)} == {"cancelled"}


# -- planning is safe and complete ------------------------------------------------------------------


def test_planning_twice_or_concurrently_queues_each_lesson_once(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    enrol_and_finish(rt, [MX, US, HN], at("2026-06-01 18:00"))
    due = at("2026-06-02 16:00")
    first = plan_drips(rt.factory, rt.context(due), rt.senders)
    again = plan_drips(rt.factory, rt.context(due + timedelta(minutes=1)), rt.senders)
    assert (first, again) == (3, 0)
    # a process that read the enrolment before it moved on plans the same lesson again: the outbox key
    # (one lesson per enrolment per position) refuses it, and the enrolment is left as it was
    with rt.factory() as session, session.begin():
        session.execute(update(Enrolment).values(next_due_at=at("2026-06-02 00:00"), position=0, question=None))
    assert plan_drips(rt.factory, rt.context(due), rt.senders) == 0
    keys = [d for d in drips(rt) if d.kind == "lesson"]
    assert len(keys) == 3
    Driver(rt, fake_twilio).tick(due)
    assert sum(1 for m in fake_twilio.messages if m.body.startswith(
        rt.catalog.get(COURSE).lessons[1].text_for("es", "sms")[:30])) == 3  # type: ignore[union-attr]


def test_a_lesson_queued_elsewhere_leaves_only_its_enrolment_and_each_learners_messages_keep_their_order(
        rt: Runtime) -> None:
    """Learners in two languages (two groups of alike rows, see bot.drips._Group), one of whose next lesson
    someone else already queued: the others are planned, that one is left as it was; every learner's rows are
    stored in message order (the dispatcher sends a learner's messages by id)."""
    enrol_and_finish(rt, [MX, US, HN], at("2026-06-01 18:00"))
    set_learner(rt, US, language="en")
    taken = enrolment(rt, HN)
    with rt.factory() as session, session.begin():
        enqueue(session, key=f"lesson:{taken.id}:1:0", learner_id=taken.learner_id, channel="sms", to_address=HN,
                kind="lesson", now=at("2026-06-02 15:00"), parts=[Rendered("queued by another process")])
    assert plan_drips(rt.factory, rt.context(at("2026-06-02 16:00")), rt.senders) == 2
    assert (enrolment(rt, HN).position, enrolment(rt, HN).question) == (taken.position, taken.question)
    course = rt.catalog.get(COURSE)
    assert course is not None
    for phone in (MX, US):
        assert (enrolment(rt, phone).position, enrolment(rt, phone).question) == (1, 0)
    with rt.factory() as session:
        assert session.scalars(select(OutboundMessage.body).where(
            OutboundMessage.idempotency_key.like(f"lesson:{taken.id}:1:%"))).all() == ["queued by another process"]
        for phone, language in ((MX, "es"), (US, "en")):
            rows = session.execute(select(OutboundMessage.idempotency_key, OutboundMessage.body)
                                   .join(Learner, Learner.id == OutboundMessage.learner_id)
                                   .where(Learner.phone == phone, OutboundMessage.idempotency_key.like("lesson:%"))
                                   .order_by(OutboundMessage.id)).all()
            keys = [key for key, _body in rows]
            assert keys == sorted(keys) and len(keys) >= 2 and keys[0].endswith(":1:0:0")
            assert rows[0].body.startswith(course.lessons[1].text_for(language, "sms")[:30])


def test_enrolments_that_cannot_be_served_do_not_block_the_others(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    """Due enrolments on a channel that is off (Telegram without a token here) sit at the head of the queue;
    the SMS learners behind them are still planned in the same pass."""
    enrol_and_finish(rt, [MX, US], at("2026-06-01 18:00"))
    with rt.factory() as session, session.begin():
        for n in range(5):
            learner = Learner(telegram_chat_id=9000 + n, language="es", reasks=0, created_at=at("2026-05-01 00:00"),
                              timezone="America/Mexico_City")
            session.add(learner)
            session.flush()
            session.add(LearnerAddress(learner_id=learner.id, channel="telegram", address=str(9000 + n),
                                       last_inbound_at=at("2026-05-01 00:00")))
            session.add(Enrolment(learner_id=learner.id, course_id=COURSE, channel="telegram", position=0,
                                  question=None, state="active", next_due_at=at("2026-05-02 15:00"), reminders=0,
                                  enrolled_at=at("2026-05-01 00:00")))
    assert "telegram" not in rt.senders
    planned = plan_drips(rt.factory, rt.context(at("2026-06-02 16:00")), rt.senders, limit=2)
    assert planned == 2
    assert {d.phone for d in drips(rt)} == {MX, US}


def due_sms_learners(rt: Runtime, phones: list[str]) -> datetime:
    """SMS learners of COURSE (Mexico City) who had lesson 1 on 1 June and are due lesson 2: when it is due."""
    t0, due = at("2026-06-01 18:00"), at("2026-06-02 15:00")
    with rt.factory() as session, session.begin():
        for phone in phones:
            learner = Learner(phone=phone, language="es", reasks=0, created_at=t0, timezone=ZONES[MX])
            session.add(learner)
            session.flush()
            session.add(LearnerAddress(learner_id=learner.id, channel="sms", address=phone, last_inbound_at=t0))
            session.add(Enrolment(learner_id=learner.id, course_id=COURSE, channel="sms", position=0, question=None,
                                  state="active", next_due_at=due, reminders=0, enrolled_at=t0))
    return due


def test_batches_planned_side_by_side_plan_each_due_enrolment_once(rt: Runtime) -> None:
    """On PostgreSQL two batches are planned at once (threads, SKIP LOCKED): 230 due enrolments in batches of 20
    give 230 lessons, one each, and the count returned is theirs; with a limit, no more than it."""
    due = due_sms_learners(rt, [f"+52552222{n:04d}" for n in range(230)])
    assert plan_drips(rt.factory, rt.context(due), rt.senders, limit=50, batch=20) == 50
    assert plan_drips(rt.factory, rt.context(due), rt.senders, batch=20) == 180
    assert plan_drips(rt.factory, rt.context(due), rt.senders, batch=20) == 0
    with rt.factory() as session:
        keys = list(session.scalars(select(OutboundMessage.idempotency_key).where(OutboundMessage.kind == "lesson")))
        moved = session.scalars(select(Enrolment.position)).all()
    lessons = {key.rsplit(":", 2)[0] for key in keys}
    assert len(lessons) == 230 and len(keys) == len(set(keys))
    assert set(moved) == {1}


# -- replies before bulk -----------------------------------------------------------------------------


def test_replies_go_before_drips(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    """A help reply queued after 240 drip messages is claimed first, so it does not wait behind them."""
    learners = [f"+52551111{n:04d}" for n in range(120)]
    due = due_sms_learners(rt, learners)  # 120 learners whose lesson 2 is due
    assert plan_drips(rt.factory, rt.context(due), rt.senders) == 120  # 240 bulk messages waiting
    asker = learners[-1]
    say(rt, asker, "AYUDA", due + timedelta(seconds=30))  # queued after them
    [first] = rt.outbox.claim(due + timedelta(minutes=1), limit=1)
    assert (first.to_address, first.body) == (asker, message("help", "es", "sms"))
    rt.outbox.unclaim([first.id], due + timedelta(minutes=1))

    Driver(rt, fake_twilio).tick(due + timedelta(minutes=1))
    sent = list(fake_twilio.messages)
    assert len(sent) == 241
    helps = [n for n, m in enumerate(sent) if m.body == message("help", "es", "sms")]
    assert len(helps) == 1 and helps[0] < 50  # in the first batch, not after the 240 bulk messages
    # the asker's own lesson still comes, after the reply
    mine = [m.body for m in sent if m.to == asker]
    assert mine[0] == message("help", "es", "sms") and len(mine) == 3


# -- WhatsApp's 24-hour window -----------------------------------------------------------------------


def test_whatsapp_drip_within_24_hours_is_free_form(make_runtime: Callable[..., Runtime],
                                                    fake_twilio: FakeTwilio) -> None:
    runtime = make_runtime(lessons_dir=str(WHATSAPP_LESSONS))
    say(runtime, MX, "RUTA", at("2026-06-01 18:00"), channel="whatsapp")  # lesson 1 has no quiz
    driver = Driver(runtime, fake_twilio)
    driver.tick(at("2026-06-01 18:01"))
    before = len(fake_twilio.messages)
    driver.tick(at("2026-06-02 15:00"))  # 21 h after the learner's message
    [drip] = drips(runtime)
    assert drip.status == "sent"
    lesson, closing = fake_twilio.messages[before:]  # lesson 2 has no quiz: its closing line follows
    assert lesson.to == "whatsapp:+525512345678" and "ContentSid" not in lesson.form
    assert lesson.body == runtime.catalog.get("ruta-segura").lessons[1].text_for("es", "whatsapp")  # type: ignore
    assert "SIGUIENTE" in closing.body


def test_whatsapp_drip_after_24_hours_sends_the_template_and_holds_the_lesson(
        make_runtime: Callable[..., Runtime], fake_twilio: FakeTwilio) -> None:
    runtime = make_runtime(lessons_dir=str(WHATSAPP_LESSONS))
    course = runtime.catalog.get("ruta-segura")
    assert course is not None and course.whatsapp_template
    say(runtime, MX, "RUTA", at("2026-06-01 13:00"), channel="whatsapp")  # 07:00 local
    driver = Driver(runtime, fake_twilio)
    driver.tick(at("2026-06-01 13:01"))
    before = len(fake_twilio.messages)
    driver.tick(at("2026-06-02 15:00"))  # 26 h later: the window is closed
    [template] = fake_twilio.messages[before:]
    assert template.form.get("ContentSid") == course.whatsapp_template
    assert "Body" not in template.form
    [drip] = drips(runtime)
    assert drip.status == "held"
    driver.tick(at("2026-06-02 16:00"))
    assert len(fake_twilio.messages) == before + 1  # the lesson waits for the learner
    # the learner answers the template: the held lesson goes out, and no second template
    say(runtime, MX, "hola", at("2026-06-02 16:30"), channel="whatsapp")
    driver.tick(at("2026-06-02 16:31"))
    assert fake_twilio.messages[before + 1].body == course.lessons[1].text_for("es", "whatsapp")
    assert sum(1 for m in fake_twilio.messages if m.form.get("ContentSid") == course.whatsapp_template) == 1


def test_whatsapp_drip_without_template_waits_for_the_learner(make_runtime: Callable[..., Runtime],
                                                             fake_twilio: FakeTwilio) -> None:
    runtime = make_runtime(lessons_dir=str(WHATSAPP_LESSONS))
    course = runtime.catalog.get(COURSE)
    assert course is not None and not course.whatsapp_template
    say(runtime, MX, "SEGURIDAD", at("2026-06-01 13:00"), channel="whatsapp")
    answer = course.lessons[0].quiz
    for question in answer:
        say(runtime, MX, str(question.answer), at("2026-06-01 13:01"), channel="whatsapp")
    driver = Driver(runtime, fake_twilio)
    driver.tick(at("2026-06-01 13:05"))
    before = len(fake_twilio.messages)
    driver.run(at("2026-06-02 14:00"), at("2026-06-02 20:00"))
    assert len(fake_twilio.messages) == before  # nothing free-form outside the window, and no template
    assert {d.status for d in drips(runtime)} == {"held"}
    say(runtime, MX, "hola", at("2026-06-02 20:10"), channel="whatsapp")
    driver.tick(at("2026-06-02 20:11"))
    assert fake_twilio.messages[before].body.startswith(course.lessons[1].title["es"])


def test_a_held_whatsapp_lesson_does_not_hold_the_same_persons_sms_course(make_runtime: Callable[..., Runtime],
                                                                          fake_twilio: FakeTwilio) -> None:
    runtime = make_runtime(lessons_dir=str(WHATSAPP_LESSONS))
    say(runtime, MX, "SEGURIDAD", at("2026-06-01 13:00"), channel="whatsapp")  # no template: lessons wait
    for question in runtime.catalog.get(COURSE).lessons[0].quiz:  # type: ignore[union-attr]
        say(runtime, MX, str(question.answer), at("2026-06-01 13:01"), channel="whatsapp")
    say(runtime, MX, "RUTA", at("2026-06-01 13:10"))  # the same person's SMS course; lesson 1 has no quiz
    with runtime.factory() as session, session.begin():  # both fall due in the same tick, WhatsApp's first
        session.execute(update(Enrolment).where(Enrolment.course_id == "ruta-segura")
                        .values(next_due_at=at("2026-06-02 15:00") + timedelta(seconds=1)))
    driver = Driver(runtime, fake_twilio)
    driver.tick(at("2026-06-01 13:15"))
    before = len(fake_twilio.messages)
    driver.tick(at("2026-06-02 15:01"))  # 26 h after the last WhatsApp message: that lesson is held
    assert [d.status for d in drips(runtime)].count("held") == 1
    sms = [m.body for m in fake_twilio.messages[before:] if m.to == MX]
    ruta = runtime.catalog.get("ruta-segura")
    assert ruta is not None and sms and sms[0] == ruta.lessons[1].text_for("es", "sms")


# -- the scheduler in a process ----------------------------------------------------------------------


def test_start_scheduler_runs_the_tick_every_few_seconds(rt: Runtime, fake_twilio: FakeTwilio) -> None:
    """`start_scheduler` (what `python app.py` and `vereda worker` run) plans and sends on the real clock."""
    import time as clock

    from scheduler import TICK_SECONDS, start_scheduler

    now = datetime.now(ZoneInfo("UTC"))
    offset = 12 - now.hour  # a zone where it is about midday now: no quiet hours in the way
    offset = offset - 24 if offset > 14 else offset + 24 if offset < -12 else offset
    zone = "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"
    with rt.factory() as session, session.begin():
        learner = Learner(phone=MX, language="es", reasks=0, created_at=now, timezone=zone)
        session.add(learner)
        session.flush()
        session.add(LearnerAddress(learner_id=learner.id, channel="sms", address=MX, last_inbound_at=now))
        session.add(Enrolment(learner_id=learner.id, course_id=COURSE, channel="sms", position=0, question=None,
                              state="active", next_due_at=now - timedelta(hours=1), reminders=0, enrolled_at=now))
    assert TICK_SECONDS <= 10
    scheduler = start_scheduler(rt)
    try:
        fake_twilio.wait_for(2, timeout=3 * TICK_SECONDS)
        clock.sleep(TICK_SECONDS + 1)  # a later tick sends nothing more
    finally:
        scheduler.shutdown(wait=True)
    lesson = rt.catalog.get(COURSE).lessons[1].text_for("es", "sms")  # type: ignore[union-attr]
    assert [m.body for m in fake_twilio.messages][0] == lesson
    assert len(fake_twilio.messages) == 2
