"""Use cases: each owns its transaction and receives what it needs (session factory, catalog, now…)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, Table, bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

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
    # the outbox keys of the replies, in order, when they may go out at once (nothing held waits before them)
    reply_keys: tuple[str, ...] = ()


def _learner_key(envelope: Envelope) -> dict[str, object]:
    if envelope.channel == "telegram":
        return {"telegram_chat_id": envelope.telegram_chat_id}
    return {"phone": e164(envelope.address)}


# The inbound path runs for every message a learner sends, so it speaks SQLAlchemy Core on the session's
# connection with statements built once here: executing a prepared construct costs a fraction of building one.
LEARNERS: Table = Learner.__table__  # type: ignore[assignment]
ENROLMENTS: Table = Enrolment.__table__  # type: ignore[assignment]
ANSWERS: Table = Answer.__table__  # type: ignore[assignment]
ADDRESSES: Table = LearnerAddress.__table__  # type: ignore[assignment]
INBOUND: Table = InboundMessage.__table__  # type: ignore[assignment]
STATE_FIELDS = ("channel", "position", "question", "state", "next_due_at", "reminders")
_LEARNER_NAMES = [c.name for c in LEARNERS.c]
_ENROLMENT_NAMES = [c.name for c in ENROLMENTS.c]


def _fetch_by(column: str) -> Select[Any]:
    """The learner (locked: FOR UPDATE OF learners, as PostgreSQL cannot lock the nullable side of the outer
    join; SQLite's BEGIN IMMEDIATE already serialises writers) with their enrolments, in one round trip."""
    return (select(LEARNERS, *[c.label(f"e_{c.name}") for c in ENROLMENTS.c])
            .select_from(LEARNERS.outerjoin(ENROLMENTS, ENROLMENTS.c.learner_id == LEARNERS.c.id))
            .where(LEARNERS.c[column] == bindparam("key")).with_for_update(of=LEARNERS))


FETCH = {column: _fetch_by(column) for column in ("id", "phone", "telegram_chat_id")}
ANSWERS_OF = select(ANSWERS.c.enrolment_id, ANSWERS.c.lesson, ANSWERS.c.question, ANSWERS.c.correct).where(
    ANSWERS.c.enrolment_id.in_(bindparam("ids", expanding=True)))
UPDATE_LEARNER = update(LEARNERS).where(LEARNERS.c.id == bindparam("_id"))
UPDATE_ENROLMENT = update(ENROLMENTS).where(ENROLMENTS.c.id == bindparam("_id"))
INSERT_ANSWERS = insert(ANSWERS)


def _dialect_statements(dialect: Any) -> dict[str, Any]:
    """The INSERT … ON CONFLICT statements, in the dialect's own construct."""
    create = {column: dialect.insert(LEARNERS).on_conflict_do_nothing(index_elements=[column])
              .returning(LEARNERS.c.id) for column in ("phone", "telegram_chat_id")}
    upsert = dialect.insert(ADDRESSES)
    return {
        "learner": create,
        "inbound": dialect.insert(INBOUND).on_conflict_do_nothing(index_elements=["channel", "provider_id"])
        .returning(INBOUND.c.id),
        "address": upsert.on_conflict_do_update(index_elements=["channel", "address"], set_={
            "last_inbound_at": upsert.excluded.last_inbound_at, "learner_id": upsert.excluded.learner_id}),
        "enrolment": insert(ENROLMENTS).returning(ENROLMENTS.c.id),
    }


_STATEMENTS = {"postgresql": _dialect_statements(postgresql), "sqlite": _dialect_statements(sqlite)}


def _statements(connection: Connection) -> dict[str, Any]:
    return _STATEMENTS["postgresql" if connection.dialect.name == "postgresql" else "sqlite"]


@dataclass
class LearnerRow:
    """A learner as read (and locked) for one message: their columns and their enrolments by course."""

    values: dict[str, Any]
    enrolments: dict[str, dict[str, Any]]

    @property
    def id(self) -> int:
        return int(self.values["id"])


def fetch_learner(connection: Connection, column: str, key: object) -> LearnerRow | None:
    """The learner whose `column` (id, phone or telegram_chat_id) is `key`, locked, with their enrolments."""
    found: LearnerRow | None = None
    for row in connection.execute(FETCH[column], {"key": key}):
        if found is None:
            found = LearnerRow(dict(zip(_LEARNER_NAMES, row, strict=False)), {})
        enrolment = row[len(_LEARNER_NAMES):]
        if enrolment[0] is not None:
            values = dict(zip(_ENROLMENT_NAMES, enrolment, strict=True))
            found.enrolments[values["course_id"]] = values
    return found


def _find_or_create_learner(connection: Connection, envelope: Envelope, now: datetime) -> tuple[LearnerRow, bool]:
    key = _learner_key(envelope)
    column, value = next(iter(key.items()))
    learner = fetch_learner(connection, column, value)
    if learner is not None:
        return learner, False
    phone = key.get("phone")
    values: dict[str, Any] = {**key, "language": "es", "reasks": 0, "created_at": now,
                              "timezone": zone_for(phone) if isinstance(phone, str) else None}
    new_id = connection.execute(_statements(connection)["learner"][column], values).scalar()
    if new_id is None:  # the same new person wrote twice at once: the other request created them
        learner = fetch_learner(connection, column, value)
        assert learner is not None
        return learner, False
    full = dict.fromkeys(_LEARNER_NAMES)
    full.update(values, id=new_id)
    return LearnerRow(full, {}), True


def _touch_address(connection: Connection, learner_id: int, envelope: Envelope, channel: str, now: datetime) -> None:
    connection.execute(_statements(connection)["address"], {
        "learner_id": learner_id, "channel": channel, "address": envelope.address, "last_inbound_at": now})


def load_state(connection: Connection, learner: LearnerRow, is_new: bool) -> conv.LearnerState:
    answers: dict[int, dict[tuple[int, int], bool]] = {}
    if learner.enrolments:  # every answer of every enrolment in one query
        ids = [e["id"] for e in learner.enrolments.values()]
        rows = connection.execute(ANSWERS_OF, {"ids": ids})
        for enrolment_id, lesson, question, correct in rows:
            answers.setdefault(enrolment_id, {})[(lesson, question)] = correct
    enrolments = {
        course_id: conv.EnrolmentState(
            course_id=course_id, channel=e["channel"], position=e["position"], question=e["question"],
            state=e["state"], next_due_at=e["next_due_at"], reminders=e["reminders"],
            answers=answers.get(e["id"], {}))
        for course_id, e in learner.enrolments.items()
    }
    v = learner.values
    return conv.LearnerState(
        language=v["language"], timezone=v["timezone"], preferred_hour=v["preferred_hour"],
        opted_out=v["opted_out_at"] is not None, pending=v["pending"], reasks=v["reasks"],
        current_course=v["current_course"], enrolments=enrolments, is_new=is_new,
    )


def save_state(connection: Connection, learner: LearnerRow, state: conv.LearnerState, effects: conv.Effects,
               now: datetime) -> None:
    """Write what the conversation changed: only the columns and rows that differ."""
    wanted: dict[str, Any] = {"language": state.language, "pending": state.pending, "reasks": state.reasks,
                              "current_course": state.current_course}
    if effects.opted_in:
        wanted.update(opted_out_at=None, opted_out_by=None)
    changed = {k: v for k, v in wanted.items() if learner.values.get(k) != v}
    if changed:
        connection.execute(UPDATE_LEARNER, {"_id": learner.id, **changed})
        learner.values.update(changed)
    for course_id, es in state.enrolments.items():
        row = learner.enrolments.get(course_id)
        values = {name: getattr(es, name) for name in STATE_FIELDS}
        if es.lesson_sent:
            values["lesson_sent_at"] = now
        if es.state == "finished" and (row is None or row["finished_at"] is None):
            values["finished_at"] = now
        if row is None:
            values.update(learner_id=learner.id, course_id=course_id, enrolled_at=now)
            values["id"] = connection.execute(_statements(connection)["enrolment"], values).scalar_one()
            learner.enrolments[course_id] = {c.name: values.get(c.name) for c in ENROLMENTS.c}
            continue
        differ = {k: v for k, v in values.items() if row.get(k) != v}
        if differ:
            connection.execute(UPDATE_ENROLMENT, {"_id": row["id"], **differ})
            row.update(differ)
    if effects.graded:
        connection.execute(INSERT_ANSWERS, [
            {"enrolment_id": learner.enrolments[g.course_id]["id"], "course_id": g.course_id, "lesson": g.lesson,
             "question": g.question, "choice": g.choice, "correct": g.correct, "answered_at": now}
            for g in effects.graded])
    if effects.opted_out:
        opt_out(connection, learner.id, now, by="keyword")


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
    for attempt in range(3):
        try:
            return _receive(factory, envelope, ctx, senders, transport)
        except _Duplicate:
            return Received(duplicate=True)
        except IntegrityError:
            # Another request stored the same provider id first (or created this learner); retry sees it.
            continue
        except DBAPIError as error:
            # A pooled connection the database dropped (it restarted): the pool is renewed, try once more.
            if not error.connection_invalidated or attempt:
                raise
    return Received(duplicate=True)


def _receive(factory: sessionmaker[Session], envelope: Envelope, ctx: conv.Context,
             senders: dict[str, Sender], transport: str | None) -> Received:
    now = ctx.now
    with transaction(factory) as session:
        connection = session.connection()
        learner, is_new = _find_or_create_learner(connection, envelope, now)
        # Stored once: the unique (channel, provider_id) turns a repeated or racing twin into no row,
        # and then nothing else happens (the learner row created above, if any, is rolled back).
        inbound_id = connection.execute(_statements(connection)["inbound"], {
            "channel": envelope.channel, "provider_id": envelope.provider_id, "body": envelope.text,
            "media_count": envelope.media_count, "received_at": now, "learner_id": learner.id}).scalar()
        if inbound_id is None:
            raise _Duplicate
        # The terminal chat keeps its learners on its own transport: drips and broadcasts for them never
        # reach a provider.
        channel = transport or envelope.channel
        _touch_address(connection, learner.id, envelope, channel, now)
        opted_out = learner.values["opted_out_at"] is not None
        released = envelope.channel == "whatsapp" and release_held(connection, learner.id, envelope.channel, now)
        if released and parse_keyword(envelope.text) is None and not opted_out:
            # This message answers our template (the window was closed): the held lesson is the reply.
            return Received(duplicate=False)
        state = load_state(connection, learner, is_new)
        ref = envelope.ref
        if envelope.replied_to and ref is None:
            ref = connection.scalar(select(OutboundMessage.ref).where(
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
            save_state(connection, learner, state, effects, now)
        log.info("inbound %s from %s via %s: %d repl%s", inbound_id, mask(envelope.address), envelope.channel,
                 len(effects.replies), "y" if len(effects.replies) == 1 else "ies")
        stale: tuple[str, ...] = ()
        if envelope.channel == "telegram" and effects.graded and learner_id is not None:
            refs = [f"q:{g.course_id}:{g.lesson}:{g.question}" for g in effects.graded]
            stale = tuple(connection.scalars(select(OutboundMessage.provider_id).where(
                OutboundMessage.learner_id == learner_id, OutboundMessage.channel == "telegram",
                OutboundMessage.ref.in_(refs), OutboundMessage.provider_id.is_not(None))))
        sender = senders.get(channel)
        if sender is None:
            return Received(duplicate=False, stale_buttons=stale)
        keys: list[str] = []
        for n, reply in enumerate(effects.replies):
            added = enqueue(connection, key=f"in:{inbound_id}:{n}", learner_id=learner_id, channel=channel,
                            to_address=envelope.address, from_address=envelope.to, kind=reply.kind, now=now,
                            parts=sender.render(envelope.channel, reply.text, reply.choices, reply.quick_reply),
                            erase_after_send=effects.erase, ref=reply.ref)
            keys += [f"in:{inbound_id}:{n}:{part}" for part in range(added)]
        # Released lessons go before these replies: then the dispatcher sends them all, in order.
        return Received(duplicate=False, replies=len(effects.replies), stale_buttons=stale,
                        reply_keys=() if released else tuple(keys))
