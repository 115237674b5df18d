"""Daily drips: each due enrolment gets its next lesson, once (the outbox key is per lesson)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot import conversation as conv
from bot.channels.base import Rendered, Sender
from bot.courses import Catalog, Course
from bot.db import transaction
from bot.models import Enrolment, Learner, LearnerAddress, OutboundMessage
from bot.outbox import enqueue
from bot.services import load_state, save_state

log = logging.getLogger(__name__)

BULK_PRIORITY = 10  # replies to learners go before drips and broadcasts
WHATSAPP_WINDOW = timedelta(hours=24)  # free-form WhatsApp only within 24 h of the learner's last message
NO_TEMPLATE = "waiting for the learner: WhatsApp 24 h window closed and the course has no whatsapp_template"
TEMPLATE_SENT = "waiting for the learner's answer to the WhatsApp template"


def window_open(last_inbound_at: datetime | None, now: datetime) -> bool:
    """Whether a free-form WhatsApp message may go out now (our own sends never extend the window)."""
    return last_inbound_at is not None and now - last_inbound_at < WHATSAPP_WINDOW


def queue_template(session: Session, course: Course, learner_id: int, address: str, key: str,
                   lesson_number: int, now: datetime) -> None:
    """Queue the course's approved template: {{1}} the course title, {{2}} the lesson number."""
    assert course.whatsapp_template is not None
    variables = {"1": course.title[course.languages[0]], "2": str(lesson_number)}
    enqueue(session, key=key, learner_id=learner_id, channel="whatsapp", to_address=address, kind="template",
            now=now, priority=BULK_PRIORITY, parts=[Rendered(f"[template {course.whatsapp_template}]")],
            content_sid=course.whatsapp_template, content_variables=variables)


def window_closed_hook(catalog: Catalog):  # type: ignore[no-untyped-def]
    """For the outbox: a send failed with 63016, so reach the learner with their course's template."""

    def hook(session: Session, row: OutboundMessage, now: datetime) -> None:
        learner = session.get(Learner, row.learner_id) if row.learner_id else None
        course = catalog.get(learner.current_course or "") if learner else None
        row.error_message = NO_TEMPLATE
        if learner is None or course is None or not course.whatsapp_template:
            return
        row.error_message = TEMPLATE_SENT
        queue_template(session, course, learner.id, row.to_address, f"template:{row.id}", 0, now)

    return hook


def due_enrolments(session: Session, now: datetime, limit: int) -> list[int]:
    """Ids of active enrolments due a lesson (quiz finished) or a reminder (quiz open), not opted out."""
    query = (
        select(Enrolment.id)
        .join(Learner, Learner.id == Enrolment.learner_id)
        .where(Enrolment.state == "active", Enrolment.next_due_at <= now, Learner.opted_out_at.is_(None))
        .order_by(Enrolment.next_due_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def plan_drips(factory: sessionmaker[Session], ctx: conv.Context, senders: dict[str, Sender],
               limit: int = 500) -> int:
    """Queue the next lesson of every due enrolment; safe when several processes run it at once."""
    with factory() as session:
        ids = due_enrolments(session, ctx.now, limit)
    planned = 0
    for enrolment_id in ids:
        try:
            planned += _drip_one(factory, enrolment_id, ctx, senders)
        except IntegrityError:  # another process queued this lesson first
            continue
    return planned


def _drip_one(factory: sessionmaker[Session], enrolment_id: int, ctx: conv.Context,
              senders: dict[str, Sender]) -> int:
    with transaction(factory) as session:
        row = session.scalars(
            select(Enrolment).where(Enrolment.id == enrolment_id).with_for_update(skip_locked=True)
        ).first()
        if row is None or row.state != "active" or row.next_due_at is None or row.next_due_at > ctx.now:
            return 0  # someone else took it, or it changed since we looked
        course = ctx.catalog.get(row.course_id)
        learner = session.get(Learner, row.learner_id)
        sender = senders.get(row.channel)
        if learner is None or learner.opted_out or sender is None:
            return 0
        if course is None or row.position + 1 >= len(course.lessons) and row.question is None:
            row.next_due_at = None  # the course is gone or has no further lesson: nothing is due any more
            return 0
        contact = session.scalars(select(LearnerAddress).where(
            LearnerAddress.learner_id == learner.id, LearnerAddress.channel == row.channel)
            .order_by(LearnerAddress.last_inbound_at.desc())).first()
        if contact is None:
            return 0
        address = contact.address
        held = row.channel == "whatsapp" and not window_open(contact.last_inbound_at, ctx.now)
        state = load_state(session, learner, is_new=False)
        enrolment = state.enrolments[row.course_id]
        out: list[conv.Outbound] = []
        if row.question is not None:  # the quiz is still open: a reminder instead of a lesson
            index, kind = row.position, "reminder"
            key = f"reminder:{row.id}:{row.position}:{row.question}:{row.reminders}"
            conv.remind(state, course, enrolment, row.channel, ctx, out)
        else:
            index, kind = row.position + 1, "lesson"
            key = f"lesson:{row.id}:{index}"
            conv.deliver_lesson(state, course, enrolment, index, row.channel, ctx, out)
        save_state(session, learner, state, conv.Effects(), ctx.now)
        reason = None
        if held:
            reason = TEMPLATE_SENT if course.whatsapp_template else NO_TEMPLATE
            if course.whatsapp_template:
                queue_template(session, course, learner.id, address, f"template:{key}", index + 1, ctx.now)
            else:
                log.warning("enrolment %d: %s", row.id, NO_TEMPLATE)
        for n, message in enumerate(out):
            enqueue(session, key=f"{key}:{n}", learner_id=learner.id, channel=row.channel,
                    to_address=address, kind=kind, now=ctx.now, priority=BULK_PRIORITY,
                    parts=sender.render(row.channel, message.text, message.choices, message.quick_reply),
                    ref=message.ref, status="held" if held else "queued", reason=reason)
        log.info("%s for lesson %d of %s queued for learner %d", kind, index + 1, course.id, learner.id)
        return 1
