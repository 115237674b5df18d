"""Daily drips: each due enrolment gets its next lesson, once (the outbox key is per lesson)."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot import conversation as conv
from bot.channels.base import Sender
from bot.db import transaction
from bot.models import Enrolment, Learner, LearnerAddress
from bot.outbox import enqueue
from bot.services import load_state, save_state

log = logging.getLogger(__name__)

BULK_PRIORITY = 10  # replies to learners go before drips and broadcasts


def due_enrolments(session: Session, now: datetime, limit: int) -> list[int]:
    """Ids of active enrolments whose next lesson is due, the quiz before it finished, not opted out."""
    query = (
        select(Enrolment.id)
        .join(Learner, Learner.id == Enrolment.learner_id)
        .where(Enrolment.state == "active", Enrolment.question.is_(None), Enrolment.next_due_at <= now,
               Learner.opted_out_at.is_(None))
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
        if row is None or row.state != "active" or row.question is not None or row.next_due_at is None \
                or row.next_due_at > ctx.now:
            return 0  # someone else took it, or it changed since we looked
        course = ctx.catalog.get(row.course_id)
        learner = session.get(Learner, row.learner_id)
        sender = senders.get(row.channel)
        if course is None or learner is None or learner.opted_out or sender is None:
            return 0
        address = session.scalars(select(LearnerAddress.address).where(
            LearnerAddress.learner_id == learner.id, LearnerAddress.channel == row.channel)).first()
        if address is None:
            return 0
        state = load_state(session, learner, is_new=False)
        enrolment = state.enrolments[row.course_id]
        index = enrolment.position + 1
        if index >= len(course.lessons):
            return 0
        out: list[conv.Outbound] = []
        conv.deliver_lesson(state, course, enrolment, index, row.channel, ctx, out)
        save_state(session, learner, state, conv.Effects(), ctx.now)
        for n, message in enumerate(out):
            enqueue(session, key=f"lesson:{row.id}:{index}:{n}", learner_id=learner.id, channel=row.channel,
                    to_address=address, kind="lesson", now=ctx.now, priority=BULK_PRIORITY,
                    parts=sender.render(row.channel, message.text, message.choices), ref=message.ref)
        log.info("lesson %d of %s queued for learner %d", index + 1, course.id, learner.id)
        return 1
