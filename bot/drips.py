"""Daily drips: each due enrolment gets its next lesson, once (the outbox key is per lesson)."""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, bindparam, case, cast, func, literal_column, null, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from bot import conversation as conv
from bot.channels.base import Rendered, Sender
from bot.courses import Catalog, Course
from bot.db import transaction
from bot.models import Answer, Base, Enrolment, Learner, LearnerAddress, OutboundMessage
from bot.outbox import enqueue
from bot.schedule import next_lesson_at, quiet_hours_end

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
        # One template per silence: not one per held message (each of them may come back with 63016).
        last_inbound = session.scalar(select(LearnerAddress.last_inbound_at).where(
            LearnerAddress.channel == "whatsapp", LearnerAddress.address == row.to_address))
        pending = select(OutboundMessage.id).where(
            OutboundMessage.learner_id == learner.id, OutboundMessage.kind == "template",
            OutboundMessage.status.not_in(("failed", "cancelled")))
        if last_inbound is not None:
            pending = pending.where(OutboundMessage.created_at >= last_inbound)
        if session.scalar(pending.limit(1)) is not None:
            return
        position = session.scalar(select(Enrolment.position).where(
            Enrolment.learner_id == learner.id, Enrolment.course_id == course.id)) or 0
        queue_template(session, course, learner.id, row.to_address, f"template:{row.id}", position + 1, now)

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


PLAN_LIMIT = 5000  # enrolments one call (one scheduler tick) plans at most
PLAN_BATCH = 1000  # enrolments per transaction
PLAN_THREADS = 2  # PostgreSQL: batches planned side by side (each in its own transaction and connection)
OUTBOX = Base.metadata.tables["outbound_messages"]
ENROLMENTS = Base.metadata.tables["enrolments"]
# The outbox columns that differ between a batch's rows; the others are the same for all (see _write).
_VARYING = ("idempotency_key", "learner_id", "channel", "to_address", "body", "choices", "ref", "content_sid",
            "content_variables", "kind", "status", "error_message")
_CONSTANT = ("from_address", "priority", "attempts", "next_attempt_at", "erase_after_send", "created_at", "updated_at")
# What a planned enrolment's change carries, in order, followed by its id (see _plan_batch and _write).
_CHANGED = ("position", "question", "state", "next_due_at", "reminders", "lesson_sent")
# PostgreSQL: a batch in one statement per table, its rows sent as one JSON array (psycopg would otherwise send a
# statement per row, or parse a VALUES list of tens of thousands of placeholders, or escape arrays in Python).
_PG_INSERT = text(f"""
    INSERT INTO outbound_messages ({", ".join(_VARYING + _CONSTANT)})
    SELECT r->>0, CAST(r->>1 AS integer), r->>2, r->>3, r->>4, CAST(r->>5 AS json), r->>6, r->>7,
           CAST(r->>8 AS json), r->>9, r->>10, r->>11, NULL, :priority, 0, :now, false, :now, :now
    FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS r
    ON CONFLICT (idempotency_key) DO NOTHING
""")
# As save_state: lesson_sent_at is now when a lesson went out, finished_at is now when the course has just ended.
_PG_UPDATE = text("""
    UPDATE enrolments AS e
    SET position = CAST(r->>0 AS integer), question = CAST(r->>1 AS smallint), state = r->>2,
        next_due_at = CAST(r->>3 AS timestamptz), reminders = CAST(r->>4 AS smallint),
        lesson_sent_at = CASE WHEN CAST(r->>5 AS boolean) THEN :now ELSE e.lesson_sent_at END,
        finished_at = CASE WHEN r->>2 = 'finished' AND e.finished_at IS NULL THEN :now ELSE e.finished_at END
    FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS r
    WHERE e.id = CAST(r->>6 AS integer)
""")
# SQLite: the driver's own executemany, the values converted by the columns' own types (as the ORM stores them).
_SQLITE_INSERT = (f"INSERT INTO outbound_messages ({', '.join(_VARYING + _CONSTANT)}) "
                  f"VALUES ({', '.join('?' * (len(_VARYING) + len(_CONSTANT)))}) "
                  "ON CONFLICT (idempotency_key) DO NOTHING")
_SQLITE_UPDATE = ("UPDATE enrolments SET position = ?1, question = ?2, state = ?3, next_due_at = ?4, reminders = ?5, "
                  "lesson_sent_at = CASE WHEN ?6 THEN ?8 ELSE lesson_sent_at END, "
                  "finished_at = CASE WHEN ?3 = 'finished' AND finished_at IS NULL THEN ?8 ELSE finished_at END "
                  "WHERE id = ?7")


@dataclass
class _Due:
    """A due enrolment as the batch query reads it (locked), with its learner's fields."""

    id: int
    learner_id: int
    course_id: str
    channel: str
    position: int
    question: int | None
    state: str  # (not next_due_at: the step sets it and never reads it; 100,000 conversions saved)
    reminders: int
    language: str
    timezone: str | None
    preferred_hour: int | None
    reasks: int


@dataclass(frozen=True)
class _Step:
    """What the conversation does for one due enrolment: its messages, rendered, and the enrolment after."""

    kind: str  # lesson or reminder
    index: int  # the lesson it is about
    messages: tuple[tuple[str | None, tuple[Rendered, ...]], ...]  # (ref, rendered parts) of each message
    position: int
    question: int | None
    state: str
    next_due_at: datetime | None
    reminders: int
    lesson_sent: bool
    reasks: int


def plan_drips(factory: sessionmaker[Session], ctx: conv.Context, senders: dict[str, Sender],
               limit: int = PLAN_LIMIT, batch: int = PLAN_BATCH) -> int:
    """Queue the next lesson (or a reminder) of up to `limit` due enrolments, `batch` per transaction.

    Safe when several processes run it at once: each batch locks its enrolments (SKIP LOCKED on PostgreSQL;
    SQLite writers are serial), so an enrolment is planned by one of them, once. On PostgreSQL two batches are
    planned side by side, so that one's Python work overlaps the other's statements. Returns how many were
    planned.
    """
    seen: list[int] = []  # enrolments read by this call: one left due (no address…) is not read again
    steps: dict[tuple[object, ...], _Step] = {}  # the conversation is pure: equal inputs, equal step
    lock = threading.Lock()
    budget = {"reserved": 0, "finished": False}  # enrolments the running batches may read; nothing more due

    def plan() -> int:
        planned = 0
        while True:
            with lock:
                if budget["finished"] or int(budget["reserved"]) >= limit:
                    return planned
                size = min(batch, limit - int(budget["reserved"]))
                budget["reserved"] = int(budget["reserved"]) + size
                skip = list(seen)
            with transaction(factory) as session:
                read, done = _plan_batch(session, ctx, senders, size, skip, steps)
                with lock:  # before the commit: until then our locks hide these from the other batch anyway
                    seen.extend(read)
            planned += done
            with lock:
                budget["reserved"] = int(budget["reserved"]) - (size - len(read))
                if len(read) < size:
                    budget["finished"] = True

    if factory.kw["bind"].dialect.name != "postgresql" or limit <= batch:
        return plan()
    with ThreadPoolExecutor(PLAN_THREADS, thread_name_prefix="vereda-plan") as pool:
        running = [pool.submit(plan) for _ in range(PLAN_THREADS)]
        return sum(future.result() for future in running)


def _among(column: Any, values: list[Any], postgres: bool) -> Any:
    """`column IN values`, the values sent as one JSON array parameter (however many there are)."""
    if postgres:
        elements = func.json_array_elements_text(cast(bindparam(None, json.dumps(values)), JSON))
        return column.in_(select(cast(literal_column("value"), column.type)).select_from(elements))
    return column.in_(select(literal_column("value")).select_from(func.json_each(bindparam(None, json.dumps(values)))))


def _step(row: _Due, course: Course, sender: Sender, ctx: conv.Context,
          answers: dict[tuple[int, int], bool]) -> _Step:
    learner = conv.LearnerState(language=row.language, timezone=row.timezone, preferred_hour=row.preferred_hour,
                                reasks=row.reasks)
    enrolment = conv.EnrolmentState(course_id=row.course_id, channel=row.channel, position=row.position,
                                    question=row.question, state=row.state, next_due_at=None,
                                    reminders=row.reminders, answers=answers)
    out: list[conv.Outbound] = []
    if row.question is not None:  # the quiz is still open: a reminder instead of a lesson
        index, kind = row.position, "reminder"
        conv.remind(learner, course, enrolment, row.channel, ctx, out)
    else:
        index, kind = row.position + 1, "lesson"
        conv.deliver_lesson(learner, course, enrolment, index, row.channel, ctx, out)
    messages = tuple((message.ref, tuple(sender.render(row.channel, message.text, message.choices,
                                                       message.quick_reply))) for message in out)
    return _Step(kind, index, messages, enrolment.position, enrolment.question, enrolment.state,
                 enrolment.next_due_at, enrolment.reminders, enrolment.lesson_sent, learner.reasks)


def _plan_batch(session: Session, ctx: conv.Context, senders: dict[str, Sender], size: int,
                seen: list[int], steps: dict[tuple[object, ...], _Step]) -> tuple[list[int], int]:
    """Plan one batch in the caller's transaction, skipping `seen`: (ids of the enrolments read, planned)."""
    now = ctx.now
    postgres = session.get_bind().dialect.name == "postgresql"
    query = (
        select(Enrolment.id, Enrolment.learner_id, Enrolment.course_id, Enrolment.channel, Enrolment.position,
               Enrolment.question, Enrolment.state, Enrolment.reminders,
               Learner.language, Learner.timezone,
               Learner.preferred_hour, Learner.reasks)
        .join(Learner, Learner.id == Enrolment.learner_id)
        .where(Enrolment.state == "active", Enrolment.next_due_at <= now, Learner.opted_out_at.is_(None),
               Enrolment.channel.in_(list(senders)))
        .order_by(Enrolment.next_due_at)  # no tie-break: the due index gives this order without a sort
        .limit(size)
        .with_for_update(skip_locked=True, of=Enrolment)
    )
    if seen:
        query = query.where(~_among(Enrolment.id, seen, postgres))
    # Core rows, not ORM ones: the ORM's row loading costs more than the rest of reading a batch.
    connection = session.connection()
    due = [_Due(*row) for row in connection.execute(query).all()]  # type: ignore[arg-type, call-arg]
    if not due:
        return [], 0
    read = [row.id for row in due]

    # The course is gone, or it has no further lesson: nothing is due any more.
    live: list[tuple[_Due, Course]] = []
    ended: list[int] = []
    for row in due:
        course = ctx.catalog.get(row.course_id)
        if course is None or row.position + 1 >= len(course.lessons) and row.question is None:
            ended.append(row.id)
        else:
            live.append((row, course))
    if ended:
        session.execute(update(Enrolment).where(_among(Enrolment.id, ended, postgres)).values(next_due_at=None))
    if not live:
        return read, 0

    # Each learner's address on the enrolment's channel: the one they wrote from last.
    contacts: dict[tuple[int, str], tuple[str, datetime | None]] = {}
    for learner_id, channel, address, last_inbound_at in connection.execute(
            select(LearnerAddress.learner_id, LearnerAddress.channel, LearnerAddress.address,
                   # only WhatsApp's window needs it: no time to convert for the other channels
                   case((LearnerAddress.channel == "whatsapp", LearnerAddress.last_inbound_at), else_=null()))
            .where(_among(LearnerAddress.learner_id, sorted({row.learner_id for row, _course in live}), postgres))
            .order_by(LearnerAddress.learner_id, LearnerAddress.channel, LearnerAddress.last_inbound_at.desc(),
                      LearnerAddress.id)):
        contacts.setdefault((learner_id, channel), (address, last_inbound_at))
    # A lesson without a quiz that ends the course says the course score: those need their answers.
    scoring = [row.id for row, course in live if row.question is None and row.position + 2 >= len(course.lessons)
               and not course.lessons[row.position + 1].quiz]
    answers: dict[int, dict[tuple[int, int], bool]] = {enrolment_id: {} for enrolment_id in scoring}
    if scoring:
        for enrolment_id, lesson, question, correct in connection.execute(
                select(Answer.enrolment_id, Answer.lesson, Answer.question, Answer.correct)
                .where(_among(Answer.enrolment_id, scoring, postgres))):
            answers[enrolment_id][(lesson, question)] = correct

    # WhatsApp learners who have not answered the template yet: no second lesson (nor template) until they do.
    silent = sorted({row.learner_id for row, _course in live if row.channel == "whatsapp"})
    waiting = set(connection.scalars(select(OutboundMessage.learner_id).where(
        _among(OutboundMessage.learner_id, silent, postgres), OutboundMessage.channel == "whatsapp",
        OutboundMessage.status == "held", OutboundMessage.kind.in_(("lesson", "reminder"))))) if silent else set()
    plans: list[tuple[_Due, list[tuple[Any, ...]], _Step]] = []
    quiet_until: dict[str, datetime | None] = {}  # zone -> end of the quiet hours `now` is in
    deferred: dict[datetime | None, list[int]] = {}  # end of the quiet hours -> enrolments moved to then
    for row, course in live:
        contact = contacts.get((row.learner_id, row.channel))
        if contact is None:
            continue  # no address on that channel: it stays due
        address, last_inbound_at = contact
        zone = row.timezone or course.timezone
        if zone not in quiet_until:
            quiet_until[zone] = quiet_hours_end(now, zone, ctx.quiet_hours)
        if quiet_until[zone] is not None:  # due while the learner sleeps (after downtime): when their night ends
            deferred.setdefault(quiet_until[zone], []).append(row.id)
            continue
        silent_still = row.channel == "whatsapp" and row.learner_id in waiting
        if silent_still and not window_open(last_inbound_at, now):  # the template is unanswered: the next day
            deferred.setdefault(next_lesson_at(now, zone, course.schedule, ctx.quiet_hours, row.preferred_hour),
                                []).append(row.id)
            continue
        sender = senders[row.channel]
        if row.id in answers:
            step = _step(row, course, sender, ctx, answers[row.id])
        else:
            signature = (row.course_id, row.channel, row.position, row.question, row.reminders, row.language,
                         row.timezone, row.preferred_hour, row.reasks, id(sender))
            found = steps.get(signature)
            step = found if found is not None else steps.setdefault(signature, _step(row, course, sender, ctx, {}))
        if step.kind == "reminder":
            key = f"reminder:{row.id}:{row.position}:{row.question}:{row.reminders}"
        else:
            key = f"lesson:{row.id}:{step.index}"
        held = row.channel == "whatsapp" and not window_open(last_inbound_at, now)
        reason = None
        rows: list[tuple[Any, ...]] = []
        if held:
            reason = TEMPLATE_SENT if course.whatsapp_template else NO_TEMPLATE
            if course.whatsapp_template:  # what queue_template queues
                variables = {"1": course.title[course.languages[0]], "2": str(step.index + 1)}
                rows.append(_outbox_row(f"template:{key}:0", row.learner_id, "whatsapp", address, "template",
                                        Rendered(f"[template {course.whatsapp_template}]"), None, "queued", None,
                                        course.whatsapp_template, variables))
            else:
                log.warning("enrolment %d: %s", row.id, NO_TEMPLATE)
        for n, (ref, parts) in enumerate(step.messages):
            for part_no, part in enumerate(parts):
                rows.append(_outbox_row(f"{key}:{n}:{part_no}", row.learner_id, row.channel, address, step.kind,
                                        part, ref, "held" if held else "queued", reason, None, None))
        plans.append((row, rows, step))
        if held:  # as if planned one by one: this learner now waits for the template's answer
            waiting.add(row.learner_id)
        if log.isEnabledFor(logging.INFO):
            log.info("%s for lesson %d of %s queued for learner %d", step.kind, step.index + 1, course.id,
                     row.learner_id)
    for until, ids in deferred.items():  # one statement per zone's morning, not one per enrolment
        session.execute(update(Enrolment).where(_among(Enrolment.id, ids, postgres)).values(next_due_at=until))
    if not plans:
        return read, 0

    # A lesson already in the outbox was queued by someone else: leave that enrolment as it is (as a failed
    # insert rolled back its whole transaction before).
    keys = [values[0] for _row, rows, _step in plans for values in rows]
    taken = set(connection.scalars(select(OutboundMessage.idempotency_key)
                                .where(_among(OutboundMessage.idempotency_key, keys, postgres))))
    if taken:
        plans = [plan for plan in plans if not any(values[0] in taken for values in plan[1])]
        if not plans:
            return read, 0
    changes = [(step.position, step.question, step.state, step.next_due_at, step.reminders, step.lesson_sent,
                row.id) for row, _rows, step in plans]  # _CHANGED, then the id
    _write(session, postgres, now, [values for _row, rows, _step in plans for values in rows], changes)
    reset = sorted({row.learner_id for row, _rows, step in plans if step.reasks != row.reasks})
    if reset:  # a lesson went out: the count of unclear answers starts again
        session.execute(update(Learner).where(_among(Learner.id, reset, postgres)).values(reasks=0))
    return read, len(plans)


def _write(session: Session, postgres: bool, now: datetime, values: list[tuple[Any, ...]],
           changes: list[tuple[Any, ...]]) -> None:
    """Insert a batch's outbox rows (a key already there is skipped) and move its enrolments on."""
    if postgres:
        # choices and content_variables go in as the text SQLAlchemy's JSON type (json.dumps) would store.
        if values:
            rows = json.dumps([(*row[:5], _json_text(row[5]), *row[6:8], _json_text(row[8]), *row[9:])
                               for row in values])
            session.execute(_PG_INSERT, {"rows": rows, "priority": BULK_PRIORITY, "now": now})
        moments: dict[datetime | None, str | None] = {None: None}
        for change in changes:
            if change[3] not in moments:
                moments[change[3]] = change[3].isoformat()
        session.execute(_PG_UPDATE, {"rows": json.dumps([(*change[:3], moments[change[3]], *change[4:])
                                                         for change in changes]), "now": now})
        return
    connection = session.connection()
    dialect = connection.dialect

    def converter(column: Any) -> Any:
        """The column type's own conversion (as the ORM stores values), remembered per value where it can be."""
        convert = column.type.dialect_impl(dialect).bind_processor(dialect) or (lambda value: value)
        seen: dict[Any, Any] = {}

        def remembered(value: Any) -> Any:
            if isinstance(value, list | dict):
                return convert(value)
            if value not in seen:
                seen[value] = convert(value)
            return seen[value]

        return remembered

    if values:
        choices, variables = converter(OUTBOX.c.choices), converter(OUTBOX.c.content_variables)
        stamp = converter(OUTBOX.c.created_at)(now)
        constant = (None, BULK_PRIORITY, 0, stamp, converter(OUTBOX.c.erase_after_send)(False), stamp, stamp)
        connection.exec_driver_sql(_SQLITE_INSERT, [  # _VARYING, then _CONSTANT
            (*row[:5], choices(row[5]), *row[6:8], variables(row[8]), *row[9:], *constant) for row in values])
    due_at = converter(ENROLMENTS.c.next_due_at)
    stamp = converter(ENROLMENTS.c.lesson_sent_at)(now)
    connection.exec_driver_sql(_SQLITE_UPDATE, [
        (position, question, state, due_at(next_due_at), reminders, int(lesson_sent), enrolment_id, stamp)
        for position, question, state, next_due_at, reminders, lesson_sent, enrolment_id in changes])


def _json_text(value: Any) -> str:
    """What SQLAlchemy's JSON type stores for `value` (most rows have no choices and no variables: null)."""
    return "null" if value is None else json.dumps(value)


def _outbox_row(key: str, learner_id: int, channel: str, address: str, kind: str, part: Rendered,
                ref: str | None, status: str, reason: str | None, content_sid: str | None,
                content_variables: dict[str, str] | None) -> tuple[Any, ...]:
    """What `enqueue` would store for one rendered part: the columns in _VARYING, in order (_write adds the rest)."""
    return (key, learner_id, channel, address, part.body, list(part.buttons) or None, ref,
            part.content_sid or content_sid, part.content_variables or content_variables, kind, status, reason)
