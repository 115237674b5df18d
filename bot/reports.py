"""What coordinators see and change through the API: learner lists and details, course stats, CSV exports,
and the few changes a coordinator makes to a learner (enrol, unenrol, tags, erase).

Functions take what they need (session factory, catalog, now) and return plain data. Phone numbers and chat ids
pass through `show`, the caller's masking rule, before they leave this module.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, case, delete, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot import broadcasts
from bot import conversation as conv
from bot.broadcasts import CHANNELS, PROGRESS, TAG, TAG_RULE
from bot.channels.base import Sender
from bot.courses import WEEKDAYS, Catalog, Course
from bot.db import transaction
from bot.drips import BULK_PRIORITY, NO_TEMPLATE, TEMPLATE_SENT, queue_template, window_open
from bot.messages import say
from bot.models import (
    Answer,
    Broadcast,
    Enrolment,
    InboundMessage,
    Learner,
    LearnerAddress,
    LearnerTag,
    OutboundMessage,
)
from bot.outbox import enqueue
from bot.schedule import quiet_hours_end
from bot.services import erase_learner, fetch_learner, load_state, save_state

log = logging.getLogger(__name__)

Show = Callable[[str | None], str]  # how a phone number or chat id is shown to this reader (masked or not)
EXPORT_BATCH = 1000  # rows read per query (and per transaction) while streaming an export
MESSAGES = 50  # latest messages shown in a learner's detail
LANGUAGES = ("es", "en")
SIMULATED = "console"  # the transport of the simulator's (and `vereda chat`'s) learners: not real learners


class Invalid(ValueError):
    """A request value that cannot be used; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Missing(LookupError):
    """The learner, enrolment or broadcast asked for does not exist."""


class Conflict(ValueError):
    """The request is well formed but the learner's state does not allow it; `field` names what is at fault."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


# -- learner lists ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LearnerFilter:
    course: str | None = None
    channel: str | None = None
    language: str | None = None
    progress: str | None = None
    tag: str | None = None
    opted_in: bool | None = None

    @classmethod
    def parse(cls, args: Mapping[str, str], catalog: Catalog) -> LearnerFilter:
        """The filters of a query string; Invalid names the one at fault."""
        values = {key: (args.get(key) or "").strip() or None for key in ("course", "channel", "language",
                                                                           "progress", "tag", "opted_in")}
        if values["course"] and catalog.get(values["course"]) is None:
            raise Invalid("course", f"no course {values['course']!r}")
        for key, allowed in (("channel", CHANNELS), ("language", LANGUAGES), ("progress", PROGRESS)):
            if values[key] and values[key] not in allowed:
                raise Invalid(key, f"{values[key]!r} is not one of {', '.join(allowed)}")
        opted_in = values.pop("opted_in")
        if opted_in and opted_in.lower() not in ("true", "false"):
            raise Invalid("opted_in", "use true or false")
        return cls(**values, opted_in=None if opted_in is None else opted_in.lower() == "true")

    def apply(self, query: Select) -> Select:  # type: ignore[type-arg]
        if self.language:
            query = query.where(Learner.language == self.language)
        if self.opted_in is not None:
            query = query.where(Learner.opted_out_at.is_(None) if self.opted_in else Learner.opted_out_at.is_not(None))
        if self.channel:
            query = query.where(exists().where(LearnerAddress.learner_id == Learner.id,
                                               LearnerAddress.channel == self.channel))
        if self.tag:
            query = query.where(exists().where(LearnerTag.learner_id == Learner.id, LearnerTag.tag == self.tag))
        if self.course or self.progress:  # both on the same enrolment, as broadcast segments do
            conditions = [Enrolment.learner_id == Learner.id]
            if self.course:
                conditions.append(Enrolment.course_id == self.course)
            if self.progress:
                conditions.append(Enrolment.state == self.progress)
            query = query.where(exists().where(and_(*conditions)))
        return query


def list_learners(session: Session, catalog: Catalog, filters: LearnerFilter, page: int, per_page: int,
                  show: Show) -> dict[str, Any]:
    """One page of learners matching `filters`, oldest first, with the total count."""
    total = session.scalar(filters.apply(select(func.count()).select_from(Learner))) or 0
    learners = list(session.scalars(filters.apply(select(Learner)).order_by(Learner.id)
                                    .offset((page - 1) * per_page).limit(per_page)))
    items = _summaries(session, catalog, learners, show)
    return {"items": items, "page": page, "per_page": per_page, "total": total,
            "next_page": page + 1 if page * per_page < total else None}


def _summaries(session: Session, catalog: Catalog, learners: list[Learner], show: Show) -> list[dict[str, Any]]:
    ids = [learner.id for learner in learners]
    addresses: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    tags: dict[int, list[str]] = {i: [] for i in ids}
    enrolments: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if ids:
        for a in session.scalars(select(LearnerAddress).where(LearnerAddress.learner_id.in_(ids))
                                 .order_by(LearnerAddress.id)):
            addresses[a.learner_id].append({"channel": a.channel, "address": show(a.address),
                                            "last_inbound_at": iso(a.last_inbound_at)})
        for learner_id, tag in session.execute(select(LearnerTag.learner_id, LearnerTag.tag)
                                               .where(LearnerTag.learner_id.in_(ids)).order_by(LearnerTag.tag)):
            tags[learner_id].append(tag)
        for e in session.scalars(select(Enrolment).where(Enrolment.learner_id.in_(ids)).order_by(Enrolment.id)):
            enrolments[e.learner_id].append(_enrolment(e, catalog.get(e.course_id)))
    return [{
        "id": learner.id, "phone": show(learner.phone) or None,
        "telegram_chat_id": show(str(learner.telegram_chat_id) if learner.telegram_chat_id else None) or None,
        "language": learner.language, "timezone": learner.timezone, "opted_in": not learner.opted_out,
        "opted_out_at": iso(learner.opted_out_at), "created_at": iso(learner.created_at),
        "channels": addresses[learner.id], "tags": tags[learner.id], "enrolments": enrolments[learner.id],
    } for learner in learners]


def _enrolment(e: Enrolment, course: Course | None) -> dict[str, Any]:
    return {"course": e.course_id, "channel": e.channel, "state": e.state, "lesson": e.position + 1,
            "lessons": len(course.lessons) if course else None, "question": None if e.question is None
            else e.question + 1, "enrolled_at": iso(e.enrolled_at), "lesson_sent_at": iso(e.lesson_sent_at),
            "next_due_at": iso(e.next_due_at), "finished_at": iso(e.finished_at)}


def score(course: Course | None, right: int, answered: int, finished: bool) -> dict[str, Any]:
    """As the conversation scores a course: right first answers over every question; passed once finished."""
    total = sum(len(lesson.quiz) for lesson in course.lessons) if course else None
    percent = (round(100 * right / total) if total else 100) if total is not None else None
    passed = None
    if course is not None and finished and percent is not None:
        passed = percent >= round(course.pass_mark * 100)
    return {"right": right, "answered": answered, "questions": total, "percent": percent, "passed": passed}


def learner_detail(session: Session, catalog: Catalog, learner_id: int, show: Show) -> dict[str, Any]:
    """A learner with progress and score per enrolment, every quiz answer and the latest messages."""
    learner = session.get(Learner, learner_id)
    if learner is None:
        raise Missing(f"no learner {learner_id}")
    detail = _summaries(session, catalog, [learner], show)[0]
    answers = session.execute(
        select(Enrolment.course_id, Answer.lesson, Answer.question, Answer.choice, Answer.correct,
               Answer.answered_at).join(Enrolment, Enrolment.id == Answer.enrolment_id)
        .where(Enrolment.learner_id == learner_id).order_by(Answer.answered_at, Answer.id)).all()
    by_enrolment: dict[str, list[bool]] = {}
    for row in answers:
        by_enrolment.setdefault(row.course_id, []).append(row.correct)
    for item in detail["enrolments"]:
        results = by_enrolment.get(item["course"], [])
        item["score"] = score(catalog.get(item["course"]), sum(results), len(results), item["state"] == "finished")
    detail["answers"] = [{"course": row.course_id, "lesson": row.lesson + 1, "question": row.question + 1,
                          "choice": row.choice, "correct": row.correct, "answered_at": iso(row.answered_at)}
                         for row in answers]
    inbound = session.execute(
        select(InboundMessage.channel, InboundMessage.body, InboundMessage.media_count, InboundMessage.received_at)
        .where(InboundMessage.learner_id == learner_id).order_by(InboundMessage.id.desc()).limit(MESSAGES)).all()
    outbound = session.execute(
        select(OutboundMessage.channel, OutboundMessage.body, OutboundMessage.kind, OutboundMessage.status,
               OutboundMessage.error_code, OutboundMessage.created_at)
        .where(OutboundMessage.learner_id == learner_id).order_by(OutboundMessage.id.desc()).limit(MESSAGES)).all()
    messages = [{"direction": "in", "channel": r.channel, "text": r.body, "media": r.media_count,
                 "at": r.received_at} for r in inbound]
    messages += [{"direction": "out", "channel": r.channel, "text": r.body, "kind": r.kind, "status": r.status,
                  "error_code": r.error_code, "at": r.created_at} for r in outbound]
    messages.sort(key=lambda message: message["at"])
    detail["messages"] = [message | {"at": iso(message["at"])} for message in messages[-MESSAGES:]]
    return detail


# -- courses ---------------------------------------------------------------------------------------------


def _right_needed(course: Course) -> int:
    """The fewest right answers that pass the course (as the conversation rounds the percentage)."""
    total = sum(len(lesson.quiz) for lesson in course.lessons)
    mark = round(course.pass_mark * 100)
    return next((right for right in range(total + 1) if (round(100 * right / total) if total else 100) >= mark),
                total)


def passed_counts(session: Session, courses: Sequence[Course]) -> dict[str, int]:
    """Finished enrolments with a pass, per course, in one query: the right answers of each finished enrolment are
    counted from ix_answers_enrolment_correct alone. Enrolments on the console transport are left out."""
    needed = {course.id: _right_needed(course) for course in courses}
    if not needed:
        return {}
    right = (select(func.count()).select_from(Answer)
             .where(Answer.enrolment_id == Enrolment.id, Answer.correct.is_(True)).scalar_subquery())
    return {str(course_id): int(count) for course_id, count in session.execute(
        select(Enrolment.course_id, func.count())
        .where(Enrolment.course_id.in_(list(needed)), Enrolment.state == "finished", Enrolment.channel != SIMULATED,
               right >= case(needed, value=Enrolment.course_id))
        .group_by(Enrolment.course_id))}


def course_summary(course: Course, states: Mapping[str, int], passed: int) -> dict[str, Any]:
    """A course as the API lists it, with its enrolments by state and its passes."""
    return {
        "id": course.id, "title": course.title, "description": course.description,
        "languages": list(course.languages), "channels": list(course.channels), "keywords": list(course.keywords),
        "lessons": len(course.lessons), "questions": sum(len(lesson.quiz) for lesson in course.lessons),
        "pass_mark": course.pass_mark, "timezone": course.timezone,
        "schedule": {"days": [WEEKDAYS[day] for day in course.schedule.days],
                     "at": course.schedule.at.strftime("%H:%M")},
        "stats": {"enrolled": sum(states.values()), "active": states.get("active", 0),
                  "paused": states.get("paused", 0), "finished": states.get("finished", 0), "passed": passed},
    }


def course_stats(session: Session, catalog: Catalog) -> list[dict[str, Any]]:
    """Every course with its enrolments by state and how many finished with a pass. Enrolments on the console
    transport (the browser simulator's and `vereda chat`'s learners) are not counted."""
    states: dict[str, dict[str, int]] = {}
    for course_id, state, count in session.execute(
            select(Enrolment.course_id, Enrolment.state, func.count()).where(Enrolment.channel != SIMULATED)
            .group_by(Enrolment.course_id, Enrolment.state)):
        states.setdefault(course_id, {})[state] = int(count)
    passed = passed_counts(session, catalog.courses)
    return [course_summary(course, states.get(course.id, {}), passed.get(course.id, 0))
            for course in catalog.courses]


# -- CSV exports: streamed in keyset batches, each its own short transaction -------------------------------

PROGRESS_COLUMNS = ("learner_id", "phone", "telegram_chat_id", "language", "opted_in", "course", "channel", "state",
                    "lesson", "lessons", "answered", "right", "percent", "passed", "enrolled_at", "finished_at")
ANSWER_COLUMNS = ("learner_id", "phone", "telegram_chat_id", "course", "lesson", "question", "choice", "correct",
                  "answered_at")


def _cell(value: object) -> object:
    """A CSV cell a spreadsheet will not run as a formula (phone numbers such as +52… stay as they are)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        if not (value[:1] in "+-" and value[1:].isdigit()):
            return "'" + value
    return value


def _csv(rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerows([tuple(_cell(value) for value in row) for row in rows])
    return buffer.getvalue()


def export_progress(factory: sessionmaker[Session], catalog: Catalog, show: Show,
                    batch: int | None = None) -> Iterator[str]:
    """Progress CSV, one row per enrolment: header, then a chunk per batch (never the whole table in memory)."""
    batch = batch or EXPORT_BATCH
    yield _csv([PROGRESS_COLUMNS])
    after = 0
    while True:
        with factory() as session:
            rows = session.execute(
                select(Enrolment.id, Enrolment.learner_id, Learner.phone, Learner.telegram_chat_id, Learner.language,
                       Learner.opted_out_at, Enrolment.course_id, Enrolment.channel, Enrolment.state,
                       Enrolment.position, Enrolment.enrolled_at, Enrolment.finished_at)
                .join(Learner, Learner.id == Enrolment.learner_id)
                .where(Enrolment.id > after).order_by(Enrolment.id).limit(batch)).all()
            if not rows:
                return
            results = {row[0]: (int(row[1]), int(row[2] or 0)) for row in session.execute(
                select(Answer.enrolment_id, func.count(), func.sum(case((Answer.correct.is_(True), 1), else_=0)))
                .where(Answer.enrolment_id.in_([row.id for row in rows])).group_by(Answer.enrolment_id))}
        out = []
        for row in rows:
            course = catalog.get(row.course_id)
            answered, right = results.get(row.id, (0, 0))
            result = score(course, right, answered, row.state == "finished")
            out.append((row.learner_id, show(row.phone), show(_chat(row.telegram_chat_id)), row.language,
                        row.opted_out_at is None, row.course_id, row.channel, row.state, row.position + 1,
                        len(course.lessons) if course else "", answered, right, result["percent"],
                        "" if result["passed"] is None else result["passed"], iso(row.enrolled_at),
                        iso(row.finished_at) or ""))
        yield _csv(out)
        after = rows[-1].id


def export_answers(factory: sessionmaker[Session], show: Show, batch: int | None = None) -> Iterator[str]:
    """Answers CSV, one row per graded first answer, streamed in batches like export_progress."""
    batch = batch or EXPORT_BATCH
    yield _csv([ANSWER_COLUMNS])
    after = 0
    while True:
        with factory() as session:
            rows = session.execute(
                select(Answer.id, Enrolment.learner_id, Learner.phone, Learner.telegram_chat_id, Enrolment.course_id,
                       Answer.lesson, Answer.question, Answer.choice, Answer.correct, Answer.answered_at)
                .join(Enrolment, Enrolment.id == Answer.enrolment_id).join(Learner, Learner.id == Enrolment.learner_id)
                .where(Answer.id > after).order_by(Answer.id).limit(batch)).all()
        if not rows:
            return
        yield _csv([(row.learner_id, show(row.phone), show(_chat(row.telegram_chat_id)), row.course_id,
                     row.lesson + 1, row.question + 1, row.choice, row.correct, iso(row.answered_at))
                    for row in rows])
        after = rows[-1].id


def _chat(chat_id: int | None) -> str | None:
    return str(chat_id) if chat_id is not None else None


# -- changes a coordinator makes -------------------------------------------------------------------------


def enrol(factory: sessionmaker[Session], ctx: conv.Context, senders: Mapping[str, Sender], learner_id: int,
          course_id: str, channel: str | None = None) -> dict[str, Any]:
    """Enrol a learner as texting the course keyword would: the enrolment, then lesson 1 queued on the channel
    they wrote from last (or `channel`); held behind the course template outside WhatsApp's 24 h window, and
    due when the learner's quiet hours end."""
    course = ctx.catalog.get(course_id)
    if course is None:
        raise Invalid("course", f"no course {course_id!r}")
    if channel is not None and channel not in course.channels:
        raise Invalid("channel", f"{channel!r} is not one of the course's channels ({', '.join(course.channels)})")
    now = ctx.now
    with transaction(factory) as session:
        connection = session.connection()
        learner = fetch_learner(connection, "id", learner_id)
        if learner is None:
            raise Missing(f"no learner {learner_id}")
        if learner.values["opted_out_at"] is not None:
            raise Conflict(None, "the learner opted out: nothing may be sent to them")
        if course.id in learner.enrolments:
            raise Conflict("course", f"the learner is already enrolled in {course.id}")
        if channel is not None and channel not in senders:
            raise Conflict("channel", f"the {channel} channel is off (its credentials are not set)")
        usable = [c for c in ([channel] if channel else course.channels) if c in senders]
        address = session.scalars(
            select(LearnerAddress).where(LearnerAddress.learner_id == learner.id, LearnerAddress.channel.in_(usable))
            .order_by(LearnerAddress.last_inbound_at.desc(), LearnerAddress.id.desc())).first()
        if address is None:
            raise Conflict("channel", "the learner has no address on a channel of this course that is on")
        state = load_state(connection, learner, False)
        enrolment = conv.EnrolmentState(course_id=course.id, channel=address.channel, new=True)
        state.enrolments[course.id] = enrolment
        state.current_course, state.pending = course.id, None
        language = state.language if state.language in course.languages else course.languages[0]
        out = [conv.Outbound(say("enrolled", language, address.channel, course=course.title[language],
                                 total=len(course.lessons)))]
        conv.deliver_lesson(state, course, enrolment, 0, address.channel, ctx, out)
        try:
            with session.begin_nested():
                save_state(connection, learner, state, conv.Effects(), now)
        except IntegrityError:  # enrolled by another request (or by the learner's keyword) at the same moment
            raise Conflict("course", f"the learner is already enrolled in {course.id}") from None
        enrolment_id = session.scalars(select(Enrolment.id).where(
            Enrolment.learner_id == learner.id, Enrolment.course_id == course.id)).one()
        held = address.channel == "whatsapp" and not window_open(address.last_inbound_at, now)
        if held and course.whatsapp_template:
            queue_template(session, course, learner.id, address.address, f"template:enrol:{enrolment_id}", 1, now)
        sender = senders[address.channel]
        for n, message in enumerate(out):
            enqueue(session, key=f"enrol:{enrolment_id}:{n}", learner_id=learner.id, channel=address.channel,
                    to_address=address.address, kind=message.kind, now=now, priority=BULK_PRIORITY, ref=message.ref,
                    parts=sender.render(address.channel, message.text, message.choices, message.quick_reply),
                    status="held" if held else "queued",
                    reason=(TEMPLATE_SENT if course.whatsapp_template else NO_TEMPLATE) if held else None)
        due = quiet_hours_end(now, learner.values["timezone"] or course.timezone, ctx.quiet_hours)
        if due is not None:  # a coordinator's enrolment is not a reply: it waits for the learner's morning
            session.execute(update(OutboundMessage).where(OutboundMessage.learner_id == learner.id, or_(
                *[OutboundMessage.idempotency_key.startswith(p, autoescape=True) for p in _keys(enrolment_id)]))
                .values(next_attempt_at=due))
    log.info("learner %d enrolled in %s through the API (channel %s)", learner_id, course.id, address.channel)
    return {"learner": learner_id, "course": course.id, "channel": address.channel,
            "status": "held" if held else "queued", "sends_at": iso(due or now)}


def _keys(enrolment_id: int) -> list[str]:
    """Outbox key prefixes of what was queued for one enrolment (drips, reminders, API enrolment, templates)."""
    prefixes = [f"lesson:{enrolment_id}:", f"reminder:{enrolment_id}:", f"enrol:{enrolment_id}:"]
    return prefixes + [f"template:{prefix}" for prefix in prefixes]


def unenrol(factory: sessionmaker[Session], learner_id: int, course_id: str, now: datetime) -> dict[str, Any]:
    """Remove an enrolment (with its answers); lessons of it still waiting in the outbox are withdrawn."""
    with transaction(factory) as session:
        learner = session.scalars(select(Learner).where(Learner.id == learner_id).with_for_update()).first()
        if learner is None:
            raise Missing(f"no learner {learner_id}")
        enrolment = session.scalars(select(Enrolment).where(
            Enrolment.learner_id == learner_id, Enrolment.course_id == course_id)).first()
        if enrolment is None:
            raise Missing(f"learner {learner_id} is not enrolled in {course_id}")
        result = session.execute(update(OutboundMessage).where(
            OutboundMessage.learner_id == learner_id, OutboundMessage.status.in_(("queued", "held")),
            or_(OutboundMessage.ref.startswith(f"q:{course_id}:", autoescape=True),
                *[OutboundMessage.idempotency_key.startswith(p, autoescape=True) for p in _keys(enrolment.id)]))
            .values(status="cancelled", updated_at=now))
        session.delete(enrolment)
        if learner.current_course == course_id:
            learner.current_course = session.scalars(
                select(Enrolment.course_id).where(Enrolment.learner_id == learner_id, Enrolment.id != enrolment.id)
                .order_by(Enrolment.enrolled_at.desc(), Enrolment.id.desc())).first()
            learner.pending = None
    log.info("learner %d unenrolled from %s through the API", learner_id, course_id)
    return {"learner": learner_id, "course": course_id, "withdrawn": int(result.rowcount)}  # type: ignore[attr-defined]


def _tags(session: Session, learner_id: int) -> list[str]:
    return list(session.scalars(select(LearnerTag.tag).where(LearnerTag.learner_id == learner_id)
                                .order_by(LearnerTag.tag)))


def add_tag(factory: sessionmaker[Session], learner_id: int, tag: str) -> tuple[bool, list[str]]:
    """Label a learner; (whether the tag is new, the learner's tags)."""
    tag = tag.strip()
    if not TAG.fullmatch(tag):
        raise Invalid("tag", TAG_RULE)
    with transaction(factory) as session:
        if session.get(Learner, learner_id) is None:
            raise Missing(f"no learner {learner_id}")
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        added = session.scalar(insert(LearnerTag).values(learner_id=learner_id, tag=tag)
                               .on_conflict_do_nothing(index_elements=["learner_id", "tag"])
                               .returning(LearnerTag.id))
        return added is not None, _tags(session, learner_id)


def remove_tag(factory: sessionmaker[Session], learner_id: int, tag: str) -> tuple[bool, list[str]]:
    """Take a label off; (whether it was there, the learner's tags)."""
    with transaction(factory) as session:
        if session.get(Learner, learner_id) is None:
            raise Missing(f"no learner {learner_id}")
        result = session.execute(delete(LearnerTag).where(LearnerTag.learner_id == learner_id, LearnerTag.tag == tag))
        return bool(result.rowcount), _tags(session, learner_id)  # type: ignore[attr-defined]


def erase(factory: sessionmaker[Session], learner_id: int) -> None:
    """Erase a learner for real, as their own BORRAR would."""
    with transaction(factory) as session:
        if session.get(Learner, learner_id) is None:
            raise Missing(f"no learner {learner_id}")
        erase_learner(session, learner_id)
    log.info("learner %d erased through the API", learner_id)


# -- broadcasts ------------------------------------------------------------------------------------------


def _broadcast(row: Broadcast) -> dict[str, Any]:
    return {"id": row.id, "state": row.state, "text": row.text, "segment": row.segment,
            "whatsapp_template": row.whatsapp_template, "send_at": iso(row.send_at), "recipients": row.recipients,
            "created_by": row.created_by, "created_at": iso(row.created_at), "released_at": iso(row.released_at)}


def list_broadcasts(session: Session, page: int, per_page: int) -> dict[str, Any]:
    """Broadcasts, newest first, one page at a time."""
    total = session.scalar(select(func.count()).select_from(Broadcast)) or 0
    rows = session.scalars(select(Broadcast).order_by(Broadcast.id.desc()).offset((page - 1) * per_page)
                           .limit(per_page))
    return {"items": [_broadcast(row) for row in rows], "page": page, "per_page": per_page, "total": total,
            "next_page": page + 1 if page * per_page < total else None}


def broadcast_detail(session: Session, broadcast_id: int) -> dict[str, Any]:
    """A broadcast with its recipients counted by outcome (queued, sent, delivered, failed, unknown, cancelled)."""
    row = session.get(Broadcast, broadcast_id)
    if row is None:
        raise Missing(f"no broadcast {broadcast_id}")
    return _broadcast(row) | {"counts": broadcasts.report(session, broadcast_id)}
