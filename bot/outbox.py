"""The outbox: queue every outbound message once, claim due rows, send them, record what happened."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.channels.base import Outgoing, Rendered, Sender, SendResult
from bot.db import transaction
from bot.identity import mask
from bot.models import Learner, MessageEvent, OutboundMessage
from bot.ratelimit import RateLimiter, cost

log = logging.getLogger(__name__)

WINDOW_CLOSED = "63016"  # Twilio: WhatsApp free-form message outside the 24 h customer-care window
CLAIM_SECONDS = 60  # a claimed row not finished by then belonged to a process that died
MAX_ATTEMPTS = 20  # about 2.5 hours of retries with the backoff below
FINAL = {"sent", "delivered", "read", "failed", "cancelled", "unknown"}
# Status rank: a status callback never moves a message back to a lower rank (callbacks arrive out of
# order: a late "sent" after "delivered" stays in the history only).
RANK = {"queued": 0, "accepted": 1, "scheduled": 1, "sending": 2, "sent": 3, "delivered": 4,
        "undelivered": 4, "failed": 4, "read": 5}
PROVIDER_STATUS = {"undelivered": "failed"}


def enqueue(
    session: Session,
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
) -> list[OutboundMessage]:
    """Add one outbox row per rendered part, keyed `key:n` (unique: queuing twice adds nothing).

    `status="held"` queues rows that wait for the learner's next message (`reason` says why).
    """
    rows = []
    for n, part in enumerate(parts):
        row = OutboundMessage(
            idempotency_key=f"{key}:{n}", learner_id=learner_id, channel=channel, to_address=to_address,
            from_address=from_address, body=part.body, choices=list(part.buttons) or None, kind=kind,
            priority=priority, ref=ref, status=status, attempts=0, next_attempt_at=now, created_at=now,
            updated_at=now, erase_after_send=erase_after_send, error_message=reason,
            content_sid=part.content_sid or content_sid, content_variables=part.content_variables or content_variables,
        )
        session.add(row)
        rows.append(row)
    session.flush()
    return rows


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
        self.throttled = False  # set when a claim left due messages waiting for their rate limit
        self.senders = senders
        self.status_callback = status_callback
        self.on_window_closed = on_window_closed

    def recover(self, now: datetime) -> int:
        """Settle rows whose claim expired (their process died mid-send); see README for the policy."""
        with transaction(self.factory) as session:
            stale = or_(OutboundMessage.claimed_until < now, OutboundMessage.claimed_until.is_(None))
            base = update(OutboundMessage).where(OutboundMessage.status == "sending", stale)
            # A broadcast may already have reached the person: never re-send it blindly.
            unknown: CursorResult = session.execute(  # type: ignore[assignment]
                base.where(OutboundMessage.kind == "broadcast").values(status="unknown", updated_at=now)
            )
            # A reply or lesson that is lost costs the learner more than one that arrives twice.
            requeued: CursorResult = session.execute(  # type: ignore[assignment]
                base.where(OutboundMessage.kind != "broadcast").values(
                    status="queued", claim_token=None, claimed_until=None, next_attempt_at=now, updated_at=now)
            )
        return unknown.rowcount + requeued.rowcount

    def claim(self, now: datetime, limit: int = 50) -> list[Outgoing]:
        """Mark up to `limit` due rows of our channels as ours (SKIP LOCKED on PostgreSQL; SQLite is serial)."""
        token = str(uuid.uuid4())
        with transaction(self.factory) as session:
            due = (
                select(OutboundMessage.id, OutboundMessage.channel, OutboundMessage.body, OutboundMessage.content_sid)
                .where(OutboundMessage.status == "queued", OutboundMessage.next_attempt_at <= now,
                       OutboundMessage.channel.in_(list(self.senders)))
                .order_by(OutboundMessage.priority, OutboundMessage.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            candidates = session.execute(due).all()
            if self.limiter is None:
                ids = [row.id for row in candidates]
            else:
                priced = [(row.id, row.channel, cost(row.channel, row.body, row.content_sid)) for row in candidates]
                ids, throttled = self.limiter.allow(session, priced)
                self.throttled = self.throttled or throttled
            if not ids:
                return []
            session.execute(
                update(OutboundMessage)
                .where(OutboundMessage.id.in_(ids), OutboundMessage.status == "queued")
                .values(status="sending", claim_token=token, updated_at=now,
                        claimed_until=now + timedelta(seconds=CLAIM_SECONDS),
                        attempts=OutboundMessage.attempts + 1)
            )
            rows = session.execute(
                select(OutboundMessage, Learner.opted_out_at)
                .outerjoin(Learner, Learner.id == OutboundMessage.learner_id)
                .where(OutboundMessage.claim_token == token)
                .order_by(OutboundMessage.priority, OutboundMessage.id)
            ).all()
            claimed = []
            for row, opted_out_at in rows:
                if opted_out_at is not None:  # STOP arrived after this was queued: it never goes out
                    row.status, row.claim_token = "cancelled", None
                    session.add(MessageEvent(message_id=row.id, status="cancelled", detail="opted out", at=now))
                    continue
                claimed.append(Outgoing(
                    id=row.id, channel=row.channel, to_address=row.to_address, from_address=row.from_address,
                    body=row.body, buttons=tuple(row.choices or ()), status_callback=self.status_callback, ref=row.ref,
                    content_sid=row.content_sid, content_variables=row.content_variables,
                ))
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
        return sender.send(message)

    def record(self, message: Outgoing, result: SendResult, now: datetime) -> str:
        """Store one attempt's result; returns the row's new status."""
        with transaction(self.factory) as session:
            row = session.get(OutboundMessage, message.id)
            if row is None:  # erased meanwhile
                return "gone"
            row.claim_token, row.claimed_until, row.updated_at = None, None, now
            row.error_code, row.error_message = result.error_code, result.error_message
            if result.ok:
                row.status, row.provider_id = "sent", result.provider_id
                if row.erase_after_send:
                    row.body, row.to_address = "", "erased"
            elif result.error_code == WINDOW_CLOSED and row.kind != "broadcast":
                # 63016: free-form WhatsApp outside the 24 h window. Retrying blindly fails again: hold the
                # message until the learner writes, and reach them with the course's template if it has one.
                row.status = "held"
                if self.on_window_closed is not None:
                    self.on_window_closed(session, row, now)
            elif result.retry and row.attempts < MAX_ATTEMPTS:
                delay = result.retry_after if result.retry_after is not None else backoff(row.attempts)
                row.status, row.next_attempt_at = "queued", now + timedelta(seconds=delay)
            else:
                row.status = "failed"
                if result.opt_out and row.learner_id is not None:
                    opt_out(session, row.learner_id, now)
            detail = None if result.ok else (result.error_message or "")[:255]
            event = "retry" if row.status == "queued" else row.status
            session.add(MessageEvent(message_id=row.id, status=event, error_code=result.error_code,
                                     detail=detail, at=now))
            log.info("message %s to %s via %s: %s%s", row.id, mask(message.to_address), row.channel, event,
                     f" ({result.error_code})" if result.error_code else "")
            return row.status

    def dispatch(self, now_fn: Callable[[], datetime], budget_rows: int | None = None,
                 stop: Callable[[], bool] = lambda: False) -> Dispatch:
        """Send everything due now, batch after batch, until nothing is due (or `budget_rows` is spent).

        `stop()` turning true (shutdown) ends the pass between two sends; unsent claims are handed back.
        """
        done = Dispatch()
        self.throttled = False
        while (budget_rows is None or done.total() < budget_rows) and not stop():
            batch = self.claim(now_fn())
            done.throttled = self.throttled
            if not batch:
                break
            for index, message in enumerate(batch):
                if stop():
                    self.unclaim([m.id for m in batch[index:]], now_fn())
                    return done
                if self.cancel_if_opted_out(message, now_fn()):
                    done.skipped += 1
                    continue
                status = self.record(message, self.send(message), now_fn())
                if status == "sent":
                    done.sent += 1
                elif status == "queued":
                    done.retried += 1
                elif status == "failed":
                    done.failed += 1
                else:
                    done.skipped += 1
        return done

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
            if error_code in {"21610", "63014"} and row.learner_id is not None:
                opt_out(session, row.learner_id, now)
            return True


def release_held(session: Session, learner_id: int, channel: str, now: datetime) -> int:
    """The learner wrote: send what waited for them (first, before the replies to this message)."""
    result: CursorResult = session.execute(  # type: ignore[assignment]
        update(OutboundMessage)
        .where(OutboundMessage.learner_id == learner_id, OutboundMessage.channel == channel,
               OutboundMessage.status == "held")
        .values(status="queued", priority=-1, next_attempt_at=now, updated_at=now, error_message=None)
    )
    return result.rowcount


def opt_out(session: Session, learner_id: int, now: datetime) -> None:
    """Mark the learner opted out and cancel whatever still waits for them in the outbox."""
    session.execute(
        update(Learner).where(Learner.id == learner_id, Learner.opted_out_at.is_(None)).values(opted_out_at=now)
    )
    session.execute(
        update(OutboundMessage)
        .where(OutboundMessage.learner_id == learner_id, OutboundMessage.status.in_(("queued", "held")))
        .values(status="cancelled", updated_at=now)
    )
