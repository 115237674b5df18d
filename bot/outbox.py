"""The outbox: queue every outbound message once, claim due rows, send them, record what happened."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, CursorResult, Table, and_, bindparam, insert, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from bot.channels.base import Outgoing, Rendered, Sender, SendResult
from bot.db import transaction
from bot.identity import mask
from bot.models import Learner, MessageEvent, OutboundMessage
from bot.ratelimit import RateLimiter, cost

log = logging.getLogger(__name__)
OUTBOX: Table = OutboundMessage.__table__  # type: ignore[assignment]
INSERT_OUTBOX = insert(OUTBOX)
UPDATE_MESSAGE = update(OUTBOX).where(OUTBOX.c.id == bindparam("_id"))
EVENTS: Table = MessageEvent.__table__  # type: ignore[assignment]
LEARNERS: Table = Learner.__table__  # type: ignore[assignment]
INSERT_EVENT = insert(EVENTS)
_EARLIER = OUTBOX.alias("earlier")
# Each learner's messages leave in order, also across processes: a row waits while an earlier row of the same
# learner is being sent (by this process or another), or waits for its retry (a send that failed and is tried
# again later holds back what came after it; an earlier bulk row never holds back a reply). See Outbox.claim
# for the PostgreSQL race this leaves.
_HELD_UP = (select(_EARLIER.c.id).where(
    _EARLIER.c.learner_id == OUTBOX.c.learner_id, _EARLIER.c.id < OUTBOX.c.id,
    or_(_EARLIER.c.status == "sending",
        and_(_EARLIER.c.status == "queued", _EARLIER.c.next_attempt_at > bindparam("now"),
             _EARLIER.c.priority <= OUTBOX.c.priority)))
    .correlate(OUTBOX).exists())
CLAIM_DUE = (select(OUTBOX.c.id, OUTBOX.c.channel, OUTBOX.c.body, OUTBOX.c.content_sid, OUTBOX.c.learner_id)
             .where(OUTBOX.c.status == "queued", OUTBOX.c.next_attempt_at <= bindparam("now"),
                    OUTBOX.c.channel.in_(bindparam("channels", expanding=True)),
                    # no `learner_id IS NULL OR …`: NULL never matches, and the OR kept PostgreSQL from planning
                    # this as a hash anti-join (it ran the subquery once per queued row: 35 ms per claim at 5,000)
                    ~_HELD_UP)
             .order_by(OUTBOX.c.priority, OUTBOX.c.id).limit(bindparam("limit")).with_for_update(skip_locked=True))
# A request's own replies (by key) also wait for any earlier queued message of the learner that goes first in
# the dispatcher's order: a reply to an earlier message, not yet claimed, is never overtaken by the replies to a
# later one (two requests of one learner handled side by side, the first one's replies unsent).
_QUEUED_AHEAD = (select(_EARLIER.c.id).where(_EARLIER.c.learner_id == OUTBOX.c.learner_id,
                                              _EARLIER.c.id < OUTBOX.c.id, _EARLIER.c.status == "queued",
                                              _EARLIER.c.priority <= OUTBOX.c.priority,
                                              _EARLIER.c.idempotency_key.not_in(bindparam("keys", expanding=True)))
                 .correlate(OUTBOX).exists())
CLAIM_THESE = CLAIM_DUE.where(OUTBOX.c.idempotency_key.in_(bindparam("keys", expanding=True)), ~_QUEUED_AHEAD)
CLAIM_LOCK = 0x766572  # "ver": advisory-lock namespace of the learners whose messages a claim takes (PostgreSQL)
LEARNER_LOCKS = text("SELECT learner, pg_try_advisory_xact_lock(:space, learner) "
                     "FROM unnest(CAST(:learners AS integer[])) AS learner")
STILL_SENDING = (select(OUTBOX.c.learner_id).distinct()
                 .where(OUTBOX.c.learner_id.in_(bindparam("learners", expanding=True)), OUTBOX.c.status == "sending"))
CLAIM_MARK = (update(OUTBOX).where(OUTBOX.c.id.in_(bindparam("ids", expanding=True)), OUTBOX.c.status == "queued")
              .values(status="sending", claim_token=bindparam("token"), updated_at=bindparam("now"),
                      claimed_until=bindparam("until"), attempts=OUTBOX.c.attempts + 1))
CLAIMED = (select(OUTBOX, LEARNERS.c.opted_out_at.label("learner_opted_out_at"))
           .select_from(OUTBOX.outerjoin(LEARNERS, LEARNERS.c.id == OUTBOX.c.learner_id))
           .where(OUTBOX.c.claim_token == bindparam("token")).order_by(OUTBOX.c.priority, OUTBOX.c.id))
PRESENT = (select(OUTBOX.c.id).where(OUTBOX.c.id.in_(bindparam("ids", expanding=True))).order_by(OUTBOX.c.id)
           .with_for_update())  # the rows a journal write touches, locked so that an erasure waits for it
CANCEL = (update(OUTBOX).where(OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
          .values(status="cancelled", claim_token=None, claimed_until=None, updated_at=bindparam("now")))
RELEASE_HELD = (update(OUTBOX).where(OUTBOX.c.learner_id == bindparam("learner"), OUTBOX.c.channel == bindparam("via"),
                                     OUTBOX.c.status == "held")
                .values(status="queued", priority=-1, next_attempt_at=bindparam("now"), updated_at=bindparam("now"),
                        error_message=None))

WINDOW_CLOSED = "63016"  # Twilio: WhatsApp free-form message outside the 24 h customer-care window
CLAIM_SECONDS = 60  # a claimed row not finished by then belonged to a process that died
ATTEMPT = "attempt"  # history event written just before a broadcast is handed to the provider
SEND_THREADS = 8  # learners sent to side by side (each learner's own messages stay in order)
RECHECK_SECONDS = 1.0  # a batch older than this re-checks opt-outs before each send
MAX_ATTEMPTS = 20  # about 2.5 hours of retries with the backoff below
FINAL = {"sent", "delivered", "read", "failed", "cancelled", "unknown"}
# Status rank: a status callback never moves a message back to a lower rank (callbacks arrive out of
# order: a late "sent" after "delivered" stays in the history only).
RANK = {"queued": 0, "accepted": 1, "scheduled": 1, "sending": 2, "sent": 3, "delivered": 4,
        "undelivered": 4, "failed": 4, "read": 5}
PROVIDER_STATUS = {"undelivered": "failed"}


def enqueue(
    bind: Session | Connection,
    *,
    key: str,
    learner_id: int | None,
    channel: str,
    to_address: str,
    parts: list[Rendered],
    kind: str,
    now: datetime,
    from_address: str | None = None,
    priority: int = 0,
    erase_after_send: bool = False,
    ref: str | None = None,
    status: str = "queued",
    reason: str | None = None,
    content_sid: str | None = None,
    content_variables: dict[str, str] | None = None,
) -> int:
    """Add one outbox row per rendered part, keyed `key:n` (unique: queuing the same key twice is an
    IntegrityError, and the caller's transaction adds nothing). Returns how many rows were added.

    `status="held"` queues rows that wait for the learner's next message (`reason` says why).
    """
    rows = [
        {"idempotency_key": f"{key}:{n}", "learner_id": learner_id, "channel": channel, "to_address": to_address,
         "from_address": from_address, "body": part.body, "choices": list(part.buttons) or None, "kind": kind,
         "priority": priority, "ref": ref, "status": status, "attempts": 0, "next_attempt_at": now,
         "created_at": now, "updated_at": now, "erase_after_send": erase_after_send, "error_message": reason,
         "content_sid": part.content_sid or content_sid,
         "content_variables": part.content_variables or content_variables}
        for n, part in enumerate(parts)
    ]
    if rows:
        connection = bind.connection() if isinstance(bind, Session) else bind
        connection.execute(INSERT_OUTBOX, rows)
    return len(rows)


def backoff(attempts: int, rng: random.Random | None = None) -> float:
    """Seconds before try number `attempts + 1`: exponential from 2 s, capped at 10 min, ±20 % jitter."""
    base = min(2.0 * 2 ** max(attempts - 1, 0), 600.0)
    return base * (rng or random).uniform(0.8, 1.2)


@dataclass
class Dispatch:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    skipped: int = 0
    throttled: bool = False  # due messages are waiting for their rate limit

    def count(self, status: str) -> None:
        if status == "sent":
            self.sent += 1
        elif status == "queued":
            self.retried += 1
        elif status == "failed":
            self.failed += 1
        else:
            self.skipped += 1

    def add(self, other: Dispatch) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.retried += other.retried
        self.skipped += other.skipped

    def total(self) -> int:
        return self.sent + self.failed + self.retried + self.skipped


class Outbox:
    """Claims due rows and sends them through the channel senders; safe in any number of processes."""

    def __init__(self, factory: sessionmaker[Session], senders: Mapping[str, Sender],
                 status_callback: str | None = None,
                 on_window_closed: Callable[[Session, OutboundMessage, datetime], None] | None = None,
                 limiter: RateLimiter | None = None) -> None:
        self.factory = factory
        self.limiter = limiter
        self._journal_pending: list[_Entry] = []  # see _journal
        self._reset_journal()
        # A fork copies the journal's lock in whatever state another thread had it: the child starts afresh.
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset(this))
        self.throttled = False  # set when a claim left due messages waiting for their rate limit
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid: int | None = None
        self.senders = senders
        self.status_callback = status_callback
        self.on_window_closed = on_window_closed

    def recover(self, now: datetime) -> int:
        """Settle rows whose claim expired (their process died mid-send); see README for the policy."""
        with transaction(self.factory) as session:
            stale = or_(OutboundMessage.claimed_until < now, OutboundMessage.claimed_until.is_(None))
            base = update(OutboundMessage).where(OutboundMessage.status == "sending", stale)
            # A broadcast that was being handed to the provider (its last event is "attempt") may already have
            # reached the person: never re-send it blindly. One claimed in the same batch but never tried has not.
            last_event = (select(MessageEvent.status).where(MessageEvent.message_id == OutboundMessage.id)
                          .order_by(MessageEvent.id.desc()).limit(1).correlate(OutboundMessage).scalar_subquery())
            unknown: CursorResult = session.execute(  # type: ignore[assignment]
                base.where(OutboundMessage.kind == "broadcast", last_event == ATTEMPT)
                .values(status="unknown", updated_at=now)
            )
            # A reply or lesson that is lost costs the learner more than one that arrives twice.
            requeued: CursorResult = session.execute(  # type: ignore[assignment]
                base.values(status="queued", claim_token=None, claimed_until=None, next_attempt_at=now, updated_at=now)
            )
        return unknown.rowcount + requeued.rowcount

    def claim(self, now: datetime, limit: int = 50, keys: list[str] | None = None) -> list[Outgoing]:
        """Mark up to `limit` due rows of our channels as ours (SKIP LOCKED on PostgreSQL; SQLite is serial);
        with `keys`, only rows with those idempotency keys."""
        token = str(uuid.uuid4())
        with transaction(self.factory) as session:
            connection = session.connection()
            values: dict[str, Any] = {"now": now, "channels": list(self.senders), "limit": limit}
            if keys is not None:
                values["keys"] = keys
            candidates = connection.execute(CLAIM_DUE if keys is None else CLAIM_THESE, values).all()
            if candidates and connection.dialect.name == "postgresql":
                candidates = _in_order_across_processes(connection, candidates)
            if self.limiter is None:
                ids = [row.id for row in candidates]
            else:
                priced = [(row.id, row.channel, cost(row.channel, row.body, row.content_sid)) for row in candidates]
                ids, throttled = self.limiter.allow(session, priced)
                self.throttled = self.throttled or throttled
            if not ids:
                return []
            connection.execute(CLAIM_MARK, {"ids": ids, "token": token, "now": now,
                                            "until": now + timedelta(seconds=CLAIM_SECONDS)})
            claimed, cancelled = [], []
            for row in connection.execute(CLAIMED, {"token": token}):
                if row.learner_opted_out_at is not None:  # STOP arrived after this was queued: it never goes out
                    cancelled.append(row.id)
                    continue
                claimed.append(Outgoing(
                    id=row.id, channel=row.channel, to_address=row.to_address, from_address=row.from_address,
                    body=row.body, buttons=tuple(row.choices or ()), status_callback=self.status_callback, ref=row.ref,
                    content_sid=row.content_sid, content_variables=row.content_variables,
                    learner_id=row.learner_id, kind=row.kind, attempts=row.attempts,
                    erase_after_send=row.erase_after_send,
                ))
            if cancelled:
                connection.execute(CANCEL, {"ids": cancelled, "now": now})
                connection.execute(INSERT_EVENT, [{"message_id": i, "status": "cancelled", "error_code": None,
                                                   "detail": "opted out", "at": now} for i in cancelled])
            return claimed

    def cancel_if_opted_out(self, message: Outgoing, now: datetime) -> bool:
        """Cancel a claimed row whose learner opted out (or was erased) since the claim; True if cancelled.

        A batch is claimed at once but sent one by one: a STOP, or a 21610 for an earlier row of the same
        learner, may arrive in between, and then nothing more may go out to them.
        """
        with transaction(self.factory) as session:
            row = session.get(OutboundMessage, message.id)
            if row is None:  # erased meanwhile
                return True
            if row.learner_id is None:
                return False
            if session.scalar(select(Learner.opted_out_at).where(Learner.id == row.learner_id)) is None:
                return False
            row.status, row.claim_token, row.claimed_until, row.updated_at = "cancelled", None, None, now
            session.add(MessageEvent(message_id=row.id, status="cancelled", detail="opted out", at=now))
            return True

    def attempting(self, message: Outgoing, now: datetime) -> None:
        """Note in the history that this message is being handed to the provider now."""
        with self.factory.kw["bind"].begin() as connection:
            connection.execute(INSERT_EVENT, {"message_id": message.id, "status": ATTEMPT, "error_code": None,
                                              "detail": None, "at": now})

    def unclaim(self, ids: list[int], now: datetime) -> None:
        """Hand claimed rows that were never tried back to the queue, as if never claimed."""
        with transaction(self.factory) as session:
            session.execute(
                update(OutboundMessage).where(OutboundMessage.id.in_(ids), OutboundMessage.status == "sending")
                .values(status="queued", claim_token=None, claimed_until=None, updated_at=now,
                        attempts=OutboundMessage.attempts - 1))

    def send(self, message: Outgoing) -> SendResult:
        sender = self.senders.get(message.channel)
        if sender is None:
            return SendResult(False, error_code="config", error_message=f"channel {message.channel} is off")
        try:
            return sender.send(message)
        except Exception as error:  # a bug, or a row no provider could take: it fails, the rest go on
            # Never retried: the request may have reached the provider. The error's text may hold the address,
            # so the traceback is logged at DEBUG only.
            log.error("message %s: the %s sender failed unexpectedly (%s); the message is marked failed",
                      message.id, message.channel, type(error).__name__)
            log.debug("sender failure of message %s", message.id, exc_info=True)
            return SendResult(False, error_code="internal", error_message=f"internal error: {type(error).__name__}")

    def record(self, message: Outgoing, result: SendResult, now: datetime) -> str:
        """Store one attempt's result (an UPDATE and a history row); returns the row's new status."""
        entry = _outcome(message, result, now)
        self._write([entry])
        return entry.status

    def _write(self, entries: list[_Entry]) -> None:
        """Store attempt notes and results in one transaction: one UPDATE per kind of change (executemany), one
        multi-row INSERT of history rows. A row erased meanwhile gets nothing (its entry says "gone")."""
        with transaction(self.factory) as session:
            connection = session.connection()  # Core, statements built once: this runs for every message
            updates: dict[tuple[str, ...], list[dict[str, object]]] = {}
            for entry in entries:
                if entry.result is not None:
                    values = {"_id": entry.message.id, "status": entry.status, **entry.values}
                    updates.setdefault(tuple(values), []).append(values)
            changed = 0
            for rows in updates.values():
                result: CursorResult = connection.execute(UPDATE_MESSAGE, rows)  # type: ignore[assignment]
                changed += result.rowcount
            notes = [e.message.id for e in entries if e.result is None]
            if notes or changed < sum(map(len, updates.values())):
                # A row erased meanwhile (rare), or attempt notes (no UPDATE told us their rows exist): look.
                # Updated rows stay locked until we commit; the others are locked now, so an erasure waits.
                present = set(connection.scalars(PRESENT, {"ids": sorted({e.message.id for e in entries})}))
                for entry in entries:
                    if entry.message.id not in present:
                        entry.status = "gone"
            events = [{"message_id": e.message.id, "status": e.event, "error_code": e.error_code,
                       "detail": e.detail, "at": e.now} for e in entries if e.status != "gone"]
            for entry in entries:
                if entry.result is None or entry.status == "gone":
                    continue
                if entry.status == "held" and self.on_window_closed is not None:
                    row = session.get(OutboundMessage, entry.message.id)
                    if row is not None:
                        self.on_window_closed(session, row, entry.now)
                if entry.status == "failed" and entry.result.opt_out and entry.message.learner_id is not None:
                    opt_out(connection, entry.message.learner_id, entry.now)
            if events:
                connection.execute(INSERT_EVENT, events)
        for entry in entries:
            if entry.result is not None and entry.status != "gone":
                message = entry.message
                log.info("message %s to %s via %s: %s%s", message.id, mask(message.to_address), message.channel,
                         entry.event, f" ({entry.error_code})" if entry.error_code else "")

    def _reset_journal(self) -> None:
        self._journal_cond = threading.Condition(threading.Lock())
        self._journal_pending, self._journal_busy = [], False

    def _journal(self, entries: list[_Entry]) -> None:
        """Write these entries, together with whatever other threads hand in meanwhile (group commit).

        The thread that finds no write running writes everything pending in one transaction; the others wait
        for it and then find theirs written, or write the next group. Each entry is durable on return, as with
        one transaction each, so nothing is written later than before: only fewer transactions.
        """
        if not entries:
            return
        cond = self._journal_cond
        with cond:
            self._journal_pending.extend(entries)
            while not entries[-1].done:
                if self._journal_busy:
                    cond.wait()
                    continue
                self._journal_busy = True
                group, self._journal_pending = self._journal_pending, []
                cond.release()
                error: BaseException | None = None
                try:
                    self._write(group)
                except BaseException as failure:  # every waiter of this group fails with it
                    error = failure
                finally:
                    cond.acquire()
                    self._journal_busy = False
                    for entry in group:
                        entry.done, entry.error = True, error
                    cond.notify_all()
        error = entries[-1].error
        if error is not None:
            raise error

    def dispatch(self, now_fn: Callable[[], datetime], budget_rows: int | None = None,
                 stop: Callable[[], bool] = lambda: False) -> Dispatch:
        """Send everything due now, batch after batch, until nothing is due (or `budget_rows` is spent).

        Each learner's messages go in order; different learners' go side by side (provider calls are
        mostly waiting). `stop()` turning true (shutdown) ends the pass; unsent claims are handed back.
        """
        done = Dispatch()
        self.throttled = False
        while (budget_rows is None or done.total() < budget_rows) and not stop():
            batch = self.claim(now_fn())
            done.throttled = self.throttled
            if not batch:
                break
            groups: dict[tuple[str, str], list[Outgoing]] = {}
            for message in batch:
                groups.setdefault((message.channel, message.to_address), []).append(message)
            if len(groups) == 1:
                results = [self._send_group(batch, now_fn, stop)]
            else:
                results = list(self._pool().map(lambda group: self._send_group(group, now_fn, stop),
                                                groups.values()))
            for result in results:
                done.add(result)
        return done

    def send_now(self, keys: list[str], now_fn: Callable[[], datetime]) -> Dispatch:
        """Send these rows (the replies to one inbound message) from the calling thread, in order.

        A web request calls it once its answer is on the wire: replies then go out at the pace their
        messages come in, instead of queueing behind the load. Rows another sender has claimed already, or
        that must wait (rate limit, an earlier message of the learner in flight or not yet sent), are left to
        the dispatcher.
        """
        done = Dispatch()
        try:
            batch = self.claim(now_fn(), limit=len(keys), keys=keys)
            groups: dict[tuple[str, str], list[Outgoing]] = {}
            for message in batch:
                groups.setdefault((message.channel, message.to_address), []).append(message)
            for group in groups.values():  # results written together: one transaction for the replies
                done.add(self._send_group(group, now_fn, lambda: False, together=True))
        except Exception:  # the dispatcher will find whatever is left
            log.exception("sending the replies of a request failed")
        return done

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None or self._executor_pid != os.getpid():  # threads do not survive a fork
            workers = 4 if self.factory.kw["bind"].dialect.name == "sqlite" else SEND_THREADS
            self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vereda-send")
            self._executor_pid = os.getpid()
        return self._executor

    def _send_group(self, messages: list[Outgoing], now_fn: Callable[[], datetime],
                    stop: Callable[[], bool], together: bool = False) -> Dispatch:
        """One address's messages of a batch, in order; what cannot go now holds back the ones after it.

        Each result is written through the journal before the next message goes (with other threads' results:
        group commit). `together` (send_now: a few replies back to back) writes the results of messages that
        were sent at the end, in one transaction; anything else (a failure, a broadcast's attempt note) is
        written at once, with those pending before it.
        """
        done = Dispatch()
        claimed_at = time.monotonic()
        pending: list[_Entry] = []  # sent, not yet written (together)

        def write(entries: list[_Entry]) -> None:
            if together:
                if pending or entries:
                    self._write(pending + entries)
                for entry in pending:
                    done.count(entry.status)
                pending.clear()
            else:
                self._journal(entries)

        for index, message in enumerate(messages):
            if stop():
                write([])
                self.unclaim([m.id for m in messages[index:]], now_fn())
                break
            # The claim checked opt-outs; a batch that has been going for a while checks again.
            if time.monotonic() - claimed_at > RECHECK_SECONDS and self.cancel_if_opted_out(message, now_fn()):
                done.skipped += 1
                continue
            if message.kind == "broadcast":
                note = _Entry(message, now_fn(), event=ATTEMPT)
                write([note])  # from here on, a crash leaves it `unknown` (see recover)
                if note.status == "gone":
                    done.skipped += 1
                    continue
            result = self.send(message)
            entry = _outcome(message, result, now_fn())
            if together and entry.status == "sent":
                pending.append(entry)
                continue
            write([entry])
            status = entry.status
            done.count(status)
            rest = [m.id for m in messages[index + 1:]]
            if not rest or status == "sent":
                continue
            if status == "failed" and result.opt_out:
                self.cancel(rest, now_fn(), "opted out")
                done.skipped += len(rest)
                break
            if status in ("queued", "held"):
                # Keep the learner's messages in order: the rest waits behind the one that could not go.
                self.defer(rest, status, message.id, now_fn())
                break
        if pending:
            write([])
        return done

    def defer(self, ids: list[int], status: str, behind: int, now: datetime) -> None:
        """Put claimed, untried rows back behind row `behind`, which must be retried or held first."""
        with transaction(self.factory) as session:
            due = session.scalar(select(OutboundMessage.next_attempt_at).where(OutboundMessage.id == behind))
            session.execute(
                update(OutboundMessage).where(OutboundMessage.id.in_(ids), OutboundMessage.status == "sending")
                .values(status=status, claim_token=None, claimed_until=None, updated_at=now,
                        next_attempt_at=max(due or now, now), attempts=OutboundMessage.attempts - 1))

    def cancel(self, ids: list[int], now: datetime, reason: str) -> None:
        """Withdraw claimed rows that must never go out (the learner opted out meanwhile)."""
        with transaction(self.factory) as session:
            session.execute(update(OutboundMessage).where(OutboundMessage.id.in_(ids))
                            .values(status="cancelled", claim_token=None, claimed_until=None, updated_at=now))
            session.add_all([MessageEvent(message_id=i, status="cancelled", detail=reason, at=now) for i in ids])

    def status_callback_received(self, provider_id: str, status: str, error_code: str | None,
                                 now: datetime) -> bool:
        """Apply a provider status callback; False when no message has that id."""
        status = status.lower()
        with transaction(self.factory) as session:
            row = session.scalars(
                select(OutboundMessage).where(OutboundMessage.provider_id == provider_id).with_for_update()
            ).first()
            if row is None:
                return False
            session.add(MessageEvent(message_id=row.id, status=status, error_code=error_code, at=now))
            if RANK.get(status, -1) > RANK.get(row.status, 0):
                row.status, row.updated_at = PROVIDER_STATUS.get(status, status), now
                if error_code:
                    row.error_code = error_code
            if error_code == WINDOW_CLOSED and row.status == "failed" and row.kind != "broadcast":
                # Twilio often accepts the request and reports 63016 only here: hold it as in `record`.
                row.status = "held"
                if self.on_window_closed is not None:
                    self.on_window_closed(session, row, now)
            if error_code in {"21610", "63014"} and row.learner_id is not None:
                opt_out(session, row.learner_id, now)
            return True


def _reset(outbox: weakref.ref[Outbox]) -> None:
    live = outbox()
    if live is not None:
        live._reset_journal()


@dataclass(eq=False)
class _Entry:
    """One write of the journal: a result to record, or (result None) a broadcast's attempt note."""

    message: Outgoing
    now: datetime
    result: SendResult | None = None
    status: str = ""  # the row's new status; "gone" once written if the row was erased meanwhile
    event: str = ""  # the history row's status
    values: dict[str, object] = field(default_factory=dict)
    error_code: str | None = None
    detail: str | None = None
    done: bool = False
    error: BaseException | None = None


def _outcome(message: Outgoing, result: SendResult, now: datetime) -> _Entry:
    """What one attempt's result does to its row: the new status, the changed columns, the history row."""
    values: dict[str, object] = {"claim_token": None, "claimed_until": None, "updated_at": now,
                                 "error_code": result.error_code, "error_message": result.error_message}
    if result.ok:
        status = "sent"
        values["provider_id"] = result.provider_id
        if message.erase_after_send:
            values.update(body="", to_address="erased")
    elif result.error_code == WINDOW_CLOSED and message.kind != "broadcast":
        # 63016: free-form WhatsApp outside the 24 h window. Retrying blindly fails again: hold the
        # message until the learner writes, and reach them with the course's template if it has one.
        status = "held"
    elif result.retry and message.attempts < MAX_ATTEMPTS:
        status = "queued"
        delay = result.retry_after if result.retry_after is not None else backoff(message.attempts)
        values["next_attempt_at"] = now + timedelta(seconds=delay)
    else:
        status = "failed"
    return _Entry(message, now, result, status=status, event="retry" if status == "queued" else status,
                  values=values, error_code=result.error_code,
                  detail=None if result.ok else (result.error_message or "")[:255])


def _in_order_across_processes(connection: Connection, candidates: Sequence[Any]) -> list[Any]:
    """Drop the candidates of learners another process is claiming or sending to right now (PostgreSQL).

    Claims run side by side there. Another claim may hold an earlier row of the same learner locked (SKIP
    LOCKED hid it from us) and mark it `sending` only when it commits, after our query took its snapshot. So we
    take a transaction-scoped advisory lock per learner (the other claim holds it until it commits), then look
    again, in a new snapshot, for rows of theirs that are being sent.
    """
    learners = sorted({row.learner_id for row in candidates if row.learner_id is not None})
    if not learners:
        return list(candidates)
    locked = {learner for learner, ok in connection.execute(
        LEARNER_LOCKS, {"space": CLAIM_LOCK, "learners": learners}) if ok}
    busy = set(connection.scalars(STILL_SENDING, {"learners": sorted(locked)})) if locked else set()
    return [row for row in candidates
            if row.learner_id is None or (row.learner_id in locked and row.learner_id not in busy)]


def release_held(session: Session | Connection, learner_id: int, channel: str, now: datetime) -> int:
    """The learner wrote: send what waited for them (first, before the replies to this message)."""
    result: CursorResult = session.execute(  # type: ignore[assignment]
        RELEASE_HELD, {"learner": learner_id, "via": channel, "now": now})
    return result.rowcount


def opt_out(session: Session | Connection, learner_id: int, now: datetime, by: str = "provider") -> None:
    """Mark the learner opted out (`by`: keyword, blocked, provider) and cancel what still waits for them."""
    session.execute(
        update(Learner).where(Learner.id == learner_id, Learner.opted_out_at.is_(None))
        .values(opted_out_at=now, opted_out_by=by)
    )
    session.execute(
        update(OutboundMessage)
        .where(OutboundMessage.learner_id == learner_id, OutboundMessage.status.in_(("queued", "held")))
        .values(status="cancelled", updated_at=now)
    )
