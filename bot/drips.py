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
# What a planned enrolment's change carries, in order (see _plan_batch and _write).
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
# SQLite: a group's rows (see _Group) in one statement, its members' (enrolment, learner, address) as one JSON
# array joined to its messages, in order (message ids keep each learner's messages in order).
_SQLITE_INSERT = f"""
    INSERT INTO outbound_messages ({", ".join(_VARYING + _CONSTANT)})
    SELECT m.prefix || json_extract(p.value, '$[0]') || m.suffix, json_extract(p.value, '$[1]'), m.channel,
           json_extract(p.value, '$[2]'), m.body, m.choices, m.ref, m.sid, m.variables, m.kind, m.status, m.reason,
           NULL, :priority, 0, :now, :no, :now, :now
    FROM json_each(:members) AS p CROSS JOIN ({{messages}}) AS m
    WHERE true
    ORDER BY p.key, m.seq
    ON CONFLICT (idempotency_key) DO NOTHING
"""
_SQLITE_MESSAGE = ("SELECT {n} AS seq, :prefix{n} AS prefix, :suffix{n} AS suffix, :channel{n} AS channel, "
                   ":body{n} AS body, :choices{n} AS choices, :ref{n} AS ref, :sid{n} AS sid, "
                   ":variables{n} AS variables, :kind{n} AS kind, :status{n} AS status, :reason{n} AS reason")
# The enrolments that change alike, in one statement (as _PG_UPDATE).
_SQLITE_UPDATE = """
    UPDATE enrolments
    SET position = :position, question = :question, state = :state, next_due_at = :due, reminders = :reminders,
        lesson_sent_at = CASE WHEN :sent THEN :now ELSE lesson_sent_at END,
        finished_at = CASE WHEN :state = 'finished' AND finished_at IS NULL THEN :now ELSE finished_at END
    WHERE id IN (SELECT value FROM json_each(:ids))
"""


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
    # Enrolments that take the same step the same way get the same messages: only the key's enrolment id, the
    # learner and the address differ. So a batch's outbox rows are written per group (see _write).
    plans: list[tuple[_Due, _Step, _Group]] = []
    groups: dict[tuple[int, bool], _Group] = {}
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
        held = row.channel == "whatsapp" and not window_open(last_inbound_at, now)
        if held and not course.whatsapp_template:
            log.warning("enrolment %d: %s", row.id, NO_TEMPLATE)
        # A memoised step is one object for all its enrolments (and it holds the row's position, question and
        # reminders, which the key carries); one made for a single enrolment (a course score) is its own group.
        group = groups.get((id(step), held))
        if group is None:
            group = groups[(id(step), held)] = _Group(_messages(row, step, course, held), [])
        group.members.append((row.id, row.learner_id, address))
        plans.append((row, step, group))
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
    keys = [prefix + str(row.id) + suffix for row, _step, group in plans for prefix, suffix, *_rest in group.messages]
    taken = set(connection.scalars(select(OutboundMessage.idempotency_key)
                                .where(_among(OutboundMessage.idempotency_key, keys, postgres))))
    if taken:
        gone = {row.id for row, _step, group in plans
                if any(prefix + str(row.id) + suffix in taken for prefix, suffix, *_rest in group.messages)}
        plans = [plan for plan in plans if plan[0].id not in gone]
        for group in groups.values():
            group.members[:] = [member for member in group.members if member[0] not in gone]
        if not plans:
            return read, 0
    changes: dict[tuple[Any, ...], list[int]] = {}  # _CHANGED -> the enrolments that change so
    for row, step, _group in plans:
        changes.setdefault((step.position, step.question, step.state, step.next_due_at, step.reminders,
                            step.lesson_sent), []).append(row.id)
    _write(session, postgres, now, [group for group in groups.values() if group.members], changes)
    reset = sorted({row.learner_id for row, step, _group in plans if step.reasks != row.reasks})
    if reset:  # a lesson went out: the count of unclear answers starts again
        session.execute(update(Learner).where(_among(Learner.id, reset, postgres)).values(reasks=0))
    return read, len(plans)


@dataclass
class _Group:
    """The outbox rows of the enrolments that take one step alike, and those enrolments.

    Each message is (key prefix, key suffix, channel, body, choices, ref, content_sid, content_variables, kind,
    status, error_message), as `enqueue` would store them; a member is (enrolment id, learner id, address), and
    its row's key is prefix + enrolment id + suffix.
    """

    messages: list[tuple[Any, ...]]
    members: list[tuple[int, int, str]]


def _messages(row: _Due, step: _Step, course: Course, held: bool) -> list[tuple[Any, ...]]:
    """A group's messages (see _Group): a held WhatsApp step's template first, then the step's parts in order."""
    if step.kind == "reminder":  # f"reminder:{enrolment}:{position}:{question}:{reminders}"
        prefix, suffix = "reminder:", f":{row.position}:{row.question}:{row.reminders}"
    else:  # f"lesson:{enrolment}:{lesson}"
        prefix, suffix = "lesson:", f":{step.index}"
    messages: list[tuple[Any, ...]] = []
    status, reason = "queued", None
    if held:
        status, reason = "held", TEMPLATE_SENT if course.whatsapp_template else NO_TEMPLATE
        if course.whatsapp_template:  # what queue_template queues
            variables = {"1": course.title[course.languages[0]], "2": str(step.index + 1)}
            messages.append(("template:" + prefix, suffix + ":0", "whatsapp", f"[template {course.whatsapp_template}]",
                             None, None, course.whatsapp_template, variables, "template", "queued", None))
    for n, (ref, parts) in enumerate(step.messages):
        for part_no, part in enumerate(parts):
            messages.append((prefix, f"{suffix}:{n}:{part_no}", row.channel, part.body, list(part.buttons) or None,
                             ref, part.content_sid, part.content_variables, step.kind, status, reason))
    return messages


def _write(session: Session, postgres: bool, now: datetime, groups: list[_Group],
           changes: dict[tuple[Any, ...], list[int]]) -> None:
    """Insert a batch's outbox rows (a key already there is skipped) and move its enrolments on."""
    if postgres:
        # choices and content_variables go in as the text SQLAlchemy's JSON type (json.dumps) would store.
        rows = []
        for group in groups:
            messages = [(prefix, suffix, channel, body, _json_text(choices), ref, sid, _json_text(variables), *rest)
                        for prefix, suffix, channel, body, choices, ref, sid, variables, *rest in group.messages]
            for enrolment_id, learner_id, address in group.members:
                for prefix, suffix, channel, *rest in messages:
                    rows.append((prefix + str(enrolment_id) + suffix, learner_id, channel, address, *rest))
        session.execute(_PG_INSERT, {"rows": json.dumps(rows), "priority": BULK_PRIORITY, "now": now})
        session.execute(_PG_UPDATE, {"rows": json.dumps([
            (*change[:3], None if change[3] is None else change[3].isoformat(), *change[4:], enrolment_id)
            for change, ids in changes.items() for enrolment_id in ids]), "now": now})
        return
    # SQLite: one INSERT … SELECT per group, its members sent as one JSON array and joined to its messages (the
    # messages' values converted by the columns' own types, as the ORM stores them).
    connection = session.connection()
    dialect = connection.dialect

    def convert(column: Any, value: Any) -> Any:
        processor = column.type.dialect_impl(dialect).bind_processor(dialect)
        return processor(value) if processor else value

    stamp = convert(OUTBOX.c.created_at, now)
    constant = {"priority": BULK_PRIORITY, "now": stamp, "no": convert(OUTBOX.c.erase_after_send, False)}
    for group in groups:
        parameters = dict(constant, members=json.dumps(group.members))
        selects = []
        for seq, (prefix, suffix, channel, body, choices, ref, sid, variables, kind, status, reason) \
                in enumerate(group.messages):
            parameters.update({f"prefix{seq}": prefix, f"suffix{seq}": suffix, f"channel{seq}": channel,
                               f"body{seq}": body, f"choices{seq}": convert(OUTBOX.c.choices, choices),
                               f"ref{seq}": ref, f"sid{seq}": sid,
                               f"variables{seq}": convert(OUTBOX.c.content_variables, variables),
                               f"kind{seq}": kind, f"status{seq}": status, f"reason{seq}": reason})
            selects.append(_SQLITE_MESSAGE.format(n=seq))
        connection.exec_driver_sql(_SQLITE_INSERT.format(messages=" UNION ALL ".join(selects)), parameters)
    due_at, sent_at = ENROLMENTS.c.next_due_at, ENROLMENTS.c.lesson_sent_at
    for (position, question, state, next_due_at, reminders, lesson_sent), ids in changes.items():
        connection.exec_driver_sql(_SQLITE_UPDATE, {
            "position": position, "question": question, "state": state,
            "due": convert(due_at, next_due_at), "reminders": reminders, "sent": int(lesson_sent),
            "now": convert(sent_at, now), "ids": json.dumps(ids)})


def _json_text(value: Any) -> str:
    """What SQLAlchemy's JSON type stores for `value` (most rows have no choices and no variables: null)."""
    return "null" if value is None else json.dumps(value)
