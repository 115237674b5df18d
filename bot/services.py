"""Use cases: each owns its transaction and receives what it needs (session factory, catalog, now…)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, sessionmaker

from bot import conversation as conv
from bot.channels.base import Sender
from bot.db import transaction
from bot.identity import e164, mask, zone_for
from bot.keywords import parse_keyword
from bot.models import Answer, Enrolment, InboundMessage, Learner, LearnerAddress, OutboundMessage
from bot.outbox import enqueue, opt_out, release_held

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Envelope:
    """An inbound message once its channel module has verified and parsed it."""

    channel: str  # sms, whatsapp, telegram
    provider_id: str  # MessageSid, update_id …: processed once
    address: str  # where replies go, exactly as the learner wrote from
    text: str = ""
    media_count: int = 0
    choice: int | None = None
    ref: str | None = None
    replied_to: str | None = None  # the provider id of our message a button reply answers (WhatsApp)
    course_start: str | None = None
    to: str | None = None  # our own address the learner wrote to
    telegram_chat_id: int | None = None


class _Duplicate(Exception):
    """This provider message id was stored before: roll back and do nothing."""


@dataclass(frozen=True)
class Received:
    duplicate: bool
    replies: int = 0
    # provider ids of our messages whose buttons answered a question that is now graded (Telegram clears them)
    stale_buttons: tuple[str, ...] = ()


def _learner_key(envelope: Envelope) -> dict[str, object]:
    if envelope.channel == "telegram":
        return {"telegram_chat_id": envelope.telegram_chat_id}
    return {"phone": e164(envelope.address)}


def _find_or_create_learner(session: Session, envelope: Envelope, now: datetime) -> tuple[Learner, bool]:
    key = _learner_key(envelope)
    column, value = next(iter(key.items()))
    # One round trip: the learner, locked (FOR UPDATE OF learners only: PostgreSQL cannot lock the
    # nullable side of the outer join), with their enrolments.
    query = (select(Learner).where(getattr(Learner, column) == value).with_for_update(of=Learner)
             .options(joinedload(Learner.enrolments)))
    learner = session.scalars(query).unique().first()
    if learner is not None:
        return learner, False
    try:
        with session.begin_nested():
            phone = key.get("phone")
            learner = Learner(**key, language="es", reasks=0, created_at=now,
                              timezone=zone_for(phone) if isinstance(phone, str) else None)
            session.add(learner)
        return learner, True
    except IntegrityError:  # the same new person wrote twice at once: the other request created them
        return session.scalars(query).unique().one(), False


def _insert(session: Session):  # type: ignore[no-untyped-def]
    """The dialect's INSERT, which knows ON CONFLICT."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _touch_address(session: Session, learner: Learner, envelope: Envelope, channel: str, now: datetime) -> None:
    statement = _insert(session)(LearnerAddress).values(
        learner_id=learner.id, channel=channel, address=envelope.address, last_inbound_at=now)
    session.execute(statement.on_conflict_do_update(
        index_elements=["channel", "address"], set_={"last_inbound_at": now, "learner_id": learner.id}))


def load_state(session: Session, learner: Learner, is_new: bool) -> conv.LearnerState:
    enrolments = {}
    answers: dict[int, dict[tuple[int, int], bool]] = {}
    if learner.enrolments:  # every answer of every enrolment in one query
        rows = session.execute(select(Answer.enrolment_id, Answer.lesson, Answer.question, Answer.correct)
                               .where(Answer.enrolment_id.in_([e.id for e in learner.enrolments])))
        for enrolment_id, lesson, question, correct in rows:
            answers.setdefault(enrolment_id, {})[(lesson, question)] = correct
    for enrolment in learner.enrolments:
        enrolments[enrolment.course_id] = conv.EnrolmentState(
            course_id=enrolment.course_id, channel=enrolment.channel, position=enrolment.position,
            question=enrolment.question, state=enrolment.state, next_due_at=enrolment.next_due_at,
            reminders=enrolment.reminders, answers=answers.get(enrolment.id, {}),
        )
    return conv.LearnerState(
        language=learner.language, timezone=learner.timezone, preferred_hour=learner.preferred_hour,
        opted_out=learner.opted_out, pending=learner.pending, reasks=learner.reasks,
        current_course=learner.current_course, enrolments=enrolments, is_new=is_new,
    )


def save_state(session: Session, learner: Learner, state: conv.LearnerState, effects: conv.Effects,
           now: datetime) -> None:
    learner.language, learner.pending, learner.reasks = state.language, state.pending, state.reasks
    learner.current_course = state.current_course
    if effects.opted_in:
        learner.opted_out_at, learner.opted_out_by = None, None
    by_course = {e.course_id: e for e in learner.enrolments}
    for course_id, es in state.enrolments.items():
        row = by_course.get(course_id)
        if row is None:
            row = Enrolment(learner_id=learner.id, course_id=course_id, enrolled_at=now)
            session.add(row)
            by_course[course_id] = row
        row.channel, row.position, row.question, row.state = es.channel, es.position, es.question, es.state
        row.next_due_at, row.reminders = es.next_due_at, es.reminders
        if es.lesson_sent:
            row.lesson_sent_at = now
        if es.state == "finished" and row.finished_at is None:
            row.finished_at = now
    session.flush()
    for graded in effects.graded:
        session.add(Answer(enrolment_id=by_course[graded.course_id].id, lesson=graded.lesson,
                           question=graded.question, choice=graded.choice, correct=graded.correct,
                           answered_at=now))
    if effects.opted_out:
        opt_out(session, learner.id, now, by="keyword")


def telegram_membership(factory: sessionmaker[Session], chat_id: int, blocked: bool, now: datetime) -> None:
    """The person blocked the bot (opt out) or unblocked it; unknown chats are ignored.

    Unblocking lifts only the opt-out that blocking caused: a learner who sent /stop (or whom a provider
    reported as unreachable) stays opted out until they write START themselves.
    """
    with transaction(factory) as session:
        learner = session.scalars(select(Learner).where(Learner.telegram_chat_id == chat_id)
                                  .with_for_update()).first()
        if learner is None:
            return
        if blocked:
            opt_out(session, learner.id, now, by="blocked")
        elif learner.opted_out_by == "blocked":
            learner.opted_out_at, learner.opted_out_by = None, None


def erase_learner(session: Session, learner_id: int) -> None:
    """Erase a learner for real: profile, enrolments, answers, message texts and outbox rows."""
    session.execute(update(InboundMessage).where(InboundMessage.learner_id == learner_id)
                    .values(body=None, learner_id=None))
    session.execute(delete(OutboundMessage).where(OutboundMessage.learner_id == learner_id))
    session.execute(delete(Learner).where(Learner.id == learner_id))


def receive(factory: sessionmaker[Session], envelope: Envelope, ctx: conv.Context,
            senders: dict[str, Sender], transport: str | None = None) -> Received:
    """Handle one inbound message once: store it, run the conversation, queue the replies.

    `transport` names the outbox channel when it differs from the conversation's (the terminal chat).
    """
    for _attempt in range(3):
        try:
            return _receive(factory, envelope, ctx, senders, transport)
        except _Duplicate:
            return Received(duplicate=True)
        except IntegrityError:
            # Another request stored the same provider id first (or created this learner); retry sees it.
            continue
    return Received(duplicate=True)


def _receive(factory: sessionmaker[Session], envelope: Envelope, ctx: conv.Context,
             senders: dict[str, Sender], transport: str | None) -> Received:
    now = ctx.now
    with transaction(factory) as session:
        learner, is_new = _find_or_create_learner(session, envelope, now)
        # Stored once: the unique (channel, provider_id) turns a repeated or racing twin into no row,
        # and then nothing else happens (the learner row created above, if any, is rolled back).
        inbound_id = session.scalar(
            _insert(session)(InboundMessage)
            .values(channel=envelope.channel, provider_id=envelope.provider_id, body=envelope.text,
                    media_count=envelope.media_count, received_at=now, learner_id=learner.id)
            .on_conflict_do_nothing(index_elements=["channel", "provider_id"])
            .returning(InboundMessage.id))
        if inbound_id is None:
            raise _Duplicate
        # The terminal chat keeps its learners on its own transport: drips and broadcasts for them never
        # reach a provider.
        channel = transport or envelope.channel
        _touch_address(session, learner, envelope, channel, now)
        if envelope.channel == "whatsapp" and release_held(session, learner.id, envelope.channel, now) \
                and parse_keyword(envelope.text) is None and not learner.opted_out:
            # This message answers our template (the window was closed): the held lesson is the reply.
            return Received(duplicate=False)
        state = load_state(session, learner, is_new)
        ref = envelope.ref
        if envelope.replied_to and ref is None:
            ref = session.scalar(select(OutboundMessage.ref).where(
                OutboundMessage.provider_id == envelope.replied_to)) or None
        effects = conv.respond(state, conv.Inbound(
            channel=envelope.channel, text=envelope.text, media_count=envelope.media_count,
            choice=envelope.choice, ref=ref, course_start=envelope.course_start), ctx)
        learner_id: int | None = learner.id
        if effects.erase:
            erase_learner(session, learner.id)
            learner_id = None
        else:
            if transport:
                for enrolment in state.enrolments.values():
                    enrolment.channel = transport
            save_state(session, learner, state, effects, now)
        log.info("inbound %s from %s via %s: %d repl%s", inbound_id, mask(envelope.address), envelope.channel,
                 len(effects.replies), "y" if len(effects.replies) == 1 else "ies")
        stale: tuple[str, ...] = ()
        if envelope.channel == "telegram" and effects.graded and learner_id is not None:
            refs = [f"q:{g.course_id}:{g.lesson}:{g.question}" for g in effects.graded]
            stale = tuple(session.scalars(select(OutboundMessage.provider_id).where(
                OutboundMessage.learner_id == learner_id, OutboundMessage.channel == "telegram",
                OutboundMessage.ref.in_(refs), OutboundMessage.provider_id.is_not(None))))
        sender = senders.get(channel)
        if sender is None:
            return Received(duplicate=False, stale_buttons=stale)
        for n, reply in enumerate(effects.replies):
            enqueue(session, key=f"in:{inbound_id}:{n}", learner_id=learner_id, channel=channel,
                    to_address=envelope.address, from_address=envelope.to, kind=reply.kind, now=now,
                    parts=sender.render(envelope.channel, reply.text, reply.choices, reply.quick_reply),
                    erase_after_send=effects.erase, ref=reply.ref)
        return Received(duplicate=False, replies=len(effects.replies), stale_buttons=stale)
