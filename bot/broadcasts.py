"""Broadcasts: a coordinator's text to a segment, materialised into the outbox in batches, once each."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, exists, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from bot.channels.base import Sender
from bot.courses import Catalog
from bot.db import transaction
from bot.drips import BULK_PRIORITY, window_open
from bot.models import Broadcast, Enrolment, Learner, LearnerAddress, LearnerTag, OutboundMessage
from bot.schedule import in_quiet_hours
from bot.sms import analyse

log = logging.getLogger(__name__)

SEGMENT_KEYS = ("course", "channel", "language", "tag", "progress")
PROGRESS = ("active", "paused", "finished")
CHANNELS = ("sms", "whatsapp", "telegram")
BATCH = 2000
DEFAULT_ZONE = "America/Mexico_City"
OUTCOMES = {"queued": "queued", "sending": "queued", "held": "queued", "sent": "sent", "delivered": "delivered",
            "read": "delivered", "failed": "failed", "unknown": "unknown", "cancelled": "cancelled"}


TEXT_LIMIT = 1600  # characters: one message on every channel (Twilio refuses longer bodies, error 21617)


class BroadcastError(ValueError):
    """A broadcast that cannot be created as asked; the message names the field."""


TAG = re.compile(r"[\w .:-]{1,64}")  # a learner's tag (fullmatch)
TAG_RULE = "1 to 64 letters, digits, spaces or . : - _"


class AlreadySent(BroadcastError):
    """A cancel that comes too late: the broadcast has gone out to every recipient."""


class Cancelled(NamedTuple):
    """What a cancel did: how many waiting messages it withdrew; `already` if it had been cancelled before."""

    withdrawn: int
    already: bool = False


def validate(text: dict[str, str], segment: dict[str, str], catalog: Catalog) -> tuple[dict[str, str], dict[str, str]]:
    """Clean text and segment, or BroadcastError naming the field at fault."""
    text = {lang: value.strip() for lang, value in text.items() if value and value.strip()}
    if not text:
        raise BroadcastError("text: give the message in at least one language (es or en)")
    unknown = set(text) - {"es", "en"}
    if unknown:
        raise BroadcastError(f"text: unknown language {', '.join(sorted(unknown))} (es, en)")
    for language, value in text.items():
        control = sorted({f"U+{ord(ch):04X}" for ch in value if (ord(ch) < 32 and ch not in "\n\t") or ord(ch) == 127
                          or 0xD800 <= ord(ch) <= 0xDFFF})  # a lone surrogate (JSON "\\ud800") is no character
        if control:  # a paste from a spreadsheet or terminal: it would reach every phone as garbage
            raise BroadcastError(f"text.{language}: control characters {', '.join(control)}")
        if len(value) > TEXT_LIMIT:  # SMS would split it into a dozen segments per recipient, or refuse it
            raise BroadcastError(f"text.{language}: {len(value):,} characters; a broadcast is at most "
                                 f"{TEXT_LIMIT:,} (one message on every channel)")
    segment = {key: value for key, value in segment.items() if value}
    for key in segment:
        if key not in SEGMENT_KEYS:
            raise BroadcastError(f"segment.{key}: unknown (use {', '.join(SEGMENT_KEYS)})")
    if "course" in segment and catalog.get(segment["course"]) is None:
        raise BroadcastError(f"segment.course: no course {segment['course']!r}")
    if segment.get("channel", "sms") not in CHANNELS:
        raise BroadcastError(f"segment.channel: {segment['channel']!r} is not one of {', '.join(CHANNELS)}")
    if segment.get("language", "es") not in ("es", "en"):
        raise BroadcastError(f"segment.language: {segment['language']!r} is not es or en")
    if "tag" in segment and not TAG.fullmatch(segment["tag"]):
        raise BroadcastError(f"segment.tag: {TAG_RULE}")
    if segment.get("progress", "active") not in PROGRESS:
        raise BroadcastError(f"segment.progress: {segment['progress']!r} is not one of {', '.join(PROGRESS)}")
    return text, segment


def recipients_query(segment: dict[str, str]) -> Select:  # type: ignore[type-arg]
    """Learners (one row per channel address) in the segment; opted-out learners never are."""
    query = (
        select(Learner.id, Learner.language, Learner.timezone, LearnerAddress.channel, LearnerAddress.address,
               LearnerAddress.last_inbound_at)
        .join(LearnerAddress, LearnerAddress.learner_id == Learner.id)
        .where(Learner.opted_out_at.is_(None), LearnerAddress.channel.in_(CHANNELS))  # not `vereda chat`'s
    )
    if "channel" in segment:
        query = query.where(LearnerAddress.channel == segment["channel"])
    if "language" in segment:
        query = query.where(Learner.language == segment["language"])
    if "tag" in segment:
        query = query.where(exists().where(LearnerTag.learner_id == Learner.id, LearnerTag.tag == segment["tag"]))
    if "course" in segment or "progress" in segment:
        conditions = [Enrolment.learner_id == Learner.id]
        if "course" in segment:
            conditions.append(Enrolment.course_id == segment["course"])
        if "progress" in segment:
            conditions.append(Enrolment.state == segment["progress"])
        query = query.where(exists().where(and_(*conditions)))
    return query


@dataclass(frozen=True)
class Preview:
    recipients: dict[str, int]  # channel -> learners
    sms: dict[str, tuple[str, int, tuple[str, ...]]]  # language -> (encoding, segments, chars forcing UCS-2)
    sms_segments: int  # total SMS segments the broadcast would cost

    def units(self, channel: str) -> int:
        """What the provider bills for this channel: SMS segments, or messages."""
        return self.sms_segments if channel == "sms" else self.recipients.get(channel, 0)

    def costs(self, prices: dict[str, float] | None) -> dict[str, float]:
        """Estimated cost per channel with the operator's MESSAGE_PRICES (channels without a price left out)."""
        if not prices:
            return {}
        return {channel: round(self.units(channel) * prices[channel], 4)
                for channel in sorted(self.recipients) if channel in prices}

    def channels_off(self, channels: Collection[str]) -> list[str]:
        """Channels with recipients that are not among `channels` (those this server sends on)."""
        return sorted(channel for channel, count in self.recipients.items() if count and channel not in channels)

    def lines(self, prices: dict[str, float] | None = None, currency: str = "USD",
              channels: Collection[str] | None = None) -> list[str]:
        """The preview as text; with `channels` (those this server sends on), recipients on any other channel
        are flagged: they would get nothing."""
        off = self.channels_off(channels) if channels is not None else []
        out = [f"recipients: {sum(self.recipients.values())}"]
        for channel, count in sorted(self.recipients.items()):
            out.append(f"  {channel}: {count}" + (" - channel off on this server: they get nothing"
                                                   if channel in off else ""))
        for language, (encoding, segments, chars) in sorted(self.sms.items()):
            forced = f"; forces UCS-2: {' '.join(chars)}" if chars else ""
            out.append(f"SMS text [{language}]: {encoding}, {segments} segment(s) per message{forced}")
        out.append(f"estimated SMS cost: {self.sms_segments} segment(s)")
        costs = self.costs(prices)
        for channel, amount in costs.items():
            out.append(f"estimated cost {channel}: {amount:.2f} {currency} "
                       f"({self.units(channel)} x {prices[channel]:g})")  # type: ignore[index]
        if costs:
            out.append(f"estimated cost total: {sum(costs.values()):.2f} {currency}")
        elif not prices:
            out.append("(set MESSAGE_PRICES, e.g. sms=0.0079,whatsapp=0.005, for a cost in money)")
        return out


def preview(session: Session, text: dict[str, str], segment: dict[str, str]) -> Preview:
    """Who would receive it, per channel, and what it costs on SMS; sends nothing."""
    # One row per learner: the address `materialise` picks (the one they wrote from last), so a person on
    # SMS and WhatsApp is counted once, on the channel that will carry the message.
    ranked = recipients_query(segment).add_columns(func.row_number().over(
        partition_by=Learner.id, order_by=LearnerAddress.last_inbound_at.desc()).label("pick")).subquery()
    query = select(ranked).where(ranked.c.pick == 1).subquery()
    per_channel: dict[str, int] = dict(session.execute(  # type: ignore[arg-type]
        select(query.c.channel, func.count(func.distinct(query.c.id))).group_by(query.c.channel)).all())
    per_language: dict[str, int] = dict(session.execute(  # type: ignore[arg-type]
        select(query.c.language, func.count(func.distinct(query.c.id)))
        .where(query.c.channel == "sms").group_by(query.c.language)).all())
    sms = {}
    total = 0
    for language, body in text.items():
        info = analyse(body)
        sms[language] = (info.encoding, info.segments, info.ucs2_chars)
    fallback = next(iter(text))
    for language, count in per_language.items():
        info = analyse(text.get(language) or text[fallback])
        total += info.segments * count
    return Preview({str(k): int(v) for k, v in per_channel.items()}, sms, total)


PAST_GRACE = timedelta(minutes=5)  # a send_at this close behind the clock is "now" (a form filled in slowly)
LATEST_YEAR = 8999  # later times overflow the date arithmetic of quiet hours and retries


def check_send_at(send_at: datetime, now: datetime) -> datetime:
    """`send_at` in UTC, or BroadcastError: a time that has passed (a wrong year or day must not mean "send to
    everyone now") or one past the year 8999."""
    try:
        send_at = send_at.astimezone(UTC)
    except (OverflowError, ValueError):
        raise BroadcastError("send_at: out of range") from None
    if send_at.year > LATEST_YEAR:
        raise BroadcastError(f"send_at: after the year {LATEST_YEAR}")
    if send_at < now - PAST_GRACE:
        raise BroadcastError("send_at: that time has passed (leave it out to send now)")
    return send_at


def create(factory: sessionmaker[Session], text: dict[str, str], segment: dict[str, str], send_at: datetime,
           catalog: Catalog, now: datetime, whatsapp_template: str | None = None,
           created_by: str | None = None) -> int:
    """Store a broadcast to go out at `send_at` (now or later); returns its id."""
    text, segment = validate(text, segment, catalog)
    send_at = check_send_at(send_at, now)
    with transaction(factory) as session:
        broadcast = Broadcast(text=text, segment=segment, send_at=max(send_at, now),
                              whatsapp_template=whatsapp_template, state="scheduled", cursor=0, recipients=0,
                              created_by=created_by, created_at=now)
        session.add(broadcast)
        session.flush()
        return broadcast.id


def cancel(factory: sessionmaker[Session], broadcast_id: int, now: datetime) -> Cancelled:
    """Stop a broadcast: nothing more is materialised, waiting messages are withdrawn.

    Cancelling twice withdraws nothing the second time and says so (`already`). A broadcast that has gone out to
    every recipient (released, nothing waiting) stays as it is: AlreadySent.
    """
    with transaction(factory) as session:
        broadcast = session.get(Broadcast, broadcast_id)
        if broadcast is None:
            raise BroadcastError(f"no broadcast {broadcast_id}")
        if broadcast.state == "cancelled":
            return Cancelled(0, already=True)
        result = session.execute(
            update(OutboundMessage)
            .where(OutboundMessage.broadcast_id == broadcast_id, OutboundMessage.status.in_(("queued", "held")))
            .values(status="cancelled", updated_at=now))
        withdrawn = int(result.rowcount)  # type: ignore[attr-defined]
        if broadcast.state == "released" and not withdrawn:
            raise AlreadySent(f"broadcast {broadcast_id} has gone out to every recipient: nothing left to cancel")
        broadcast.state = "cancelled"
        return Cancelled(withdrawn)


def report(session: Session, broadcast_id: int) -> dict[str, int]:
    """Recipients by outcome: queued, sent, delivered, failed, unknown, cancelled."""
    counts = dict.fromkeys(("queued", "sent", "delivered", "failed", "unknown", "cancelled"), 0)
    rows = session.execute(
        select(OutboundMessage.status, func.count(func.distinct(OutboundMessage.learner_id)))
        .where(OutboundMessage.broadcast_id == broadcast_id).group_by(OutboundMessage.status))
    for status, count in rows:
        counts[OUTCOMES.get(status, status)] = counts.get(OUTCOMES.get(status, status), 0) + int(count)
    return counts


def _first_allowed(now: datetime, zone_name: str, quiet: tuple) -> datetime:  # type: ignore[type-arg]
    zone = ZoneInfo(zone_name)
    local = now.astimezone(zone)
    if not in_quiet_hours(local.time(), quiet):
        return now
    end = local.replace(hour=quiet[1].hour, minute=quiet[1].minute, second=0, microsecond=0)
    if end <= local:
        end += timedelta(days=1)
    return end.astimezone(now.tzinfo)


def materialise(factory: sessionmaker[Session], broadcast_id: int, senders: dict[str, Sender], now: datetime,
                quiet: tuple, batch: int = BATCH) -> int:  # type: ignore[type-arg]
    """Turn the segment into outbox rows, a batch per transaction; resumable after a crash, once each."""
    added = 0
    while True:
        with transaction(factory) as session:
            broadcast = session.scalars(select(Broadcast).where(Broadcast.id == broadcast_id)
                                        .with_for_update(skip_locked=True)).first()
            if broadcast is None or broadcast.state in ("released", "cancelled"):
                return added
            broadcast.state = "materialising"
            rows = session.execute(
                recipients_query(broadcast.segment).where(Learner.id > broadcast.cursor)
                .order_by(Learner.id, LearnerAddress.last_inbound_at.desc()).limit(batch)).all()
            if not rows:
                broadcast.state, broadcast.released_at = "released", now
                return added
            values = _rows(broadcast, list(rows), senders, now, quiet)
            if values and session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
                added += _insert_postgresql(session, values)
            elif values:
                insert = (postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert)  # type: ignore[union-attr]
                # Core insert with RETURNING: counts the rows really added (an ORM bulk insert has no rowcount
                # in SQLAlchemy 2.1, and executemany rowcounts are not reliable on every driver).
                table = OutboundMessage.__table__
                statement = (insert(table).on_conflict_do_nothing(index_elements=["idempotency_key"])  # type: ignore[arg-type]
                             .returning(table.c.id))  # type: ignore[attr-defined]
                added += len(session.execute(statement, values).all())
            broadcast.cursor = rows[-1].id
            broadcast.recipients = broadcast.recipients + len({v["learner_id"] for v in values})


# PostgreSQL: a batch as one JSON parameter. A multi-row INSERT … VALUES of a batch has tens of thousands of
# placeholders, which psycopg re-parses in Python for every batch (about 20 s for 100,000 recipients).
_PG_COLUMNS = ("idempotency_key", "learner_id", "channel", "to_address", "from_address", "body", "choices", "kind",
               "priority", "status", "attempts", "next_attempt_at", "error_message", "content_sid",
               "content_variables", "erase_after_send", "broadcast_id", "created_at", "updated_at")
_PG_INSERT = text(f"""
    INSERT INTO outbound_messages ({", ".join(_PG_COLUMNS)})
    SELECT r->>0, CAST(r->>1 AS integer), r->>2, r->>3, r->>4, r->>5, CAST(r->>6 AS json), r->>7,
           CAST(r->>8 AS smallint), r->>9, CAST(r->>10 AS smallint), CAST(r->>11 AS timestamptz), r->>12, r->>13,
           CAST(r->>14 AS json), CAST(r->>15 AS boolean), CAST(r->>16 AS integer), CAST(r->>17 AS timestamptz),
           CAST(r->>18 AS timestamptz)
    FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS r
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
""")


def _insert_postgresql(session: Session, values: list[dict[str, object]]) -> int:
    """Insert a batch (a key already there is skipped); returns how many rows were added."""
    moments: dict[object, str] = {}

    def cell(name: str, value: object) -> object:
        if name in ("choices", "content_variables"):
            return json.dumps(value)  # the text SQLAlchemy's JSON type stores (None is JSON null)
        if isinstance(value, datetime):
            if value not in moments:
                moments[value] = value.isoformat()
            return moments[value]
        return value

    rows = json.dumps([[cell(name, v[name]) for name in _PG_COLUMNS] for v in values])
    return len(session.execute(_PG_INSERT, {"rows": rows}).all())


def _rows(broadcast: Broadcast, rows: list, senders: dict[str, Sender], now: datetime,  # type: ignore[type-arg]
          quiet: tuple) -> list[dict[str, object]]:  # type: ignore[type-arg]
    values: list[dict[str, object]] = []
    fallback = next(iter(broadcast.text))
    due_cache: dict[str, datetime] = {}
    for row in rows:
        sender = senders.get(row.channel)
        if sender is None:
            continue
        body = broadcast.text.get(row.language) or broadcast.text[fallback]
        zone = row.timezone or DEFAULT_ZONE
        if zone not in due_cache:
            due_cache[zone] = _first_allowed(now, zone, quiet)
        status, reason, content = "queued", None, None
        if row.channel == "whatsapp" and not window_open(row.last_inbound_at, now):
            if broadcast.whatsapp_template:
                content = broadcast.whatsapp_template
            else:
                status, reason = "held", "waiting for the learner: WhatsApp 24 h window closed, no template"
        for n, part in enumerate(sender.render(row.channel, body, ())):
            values.append({
                "idempotency_key": f"broadcast:{broadcast.id}:{row.id}:{n}", "learner_id": row.id,
                "channel": row.channel, "to_address": row.address, "from_address": None, "body": part.body,
                "choices": None, "kind": "broadcast", "priority": BULK_PRIORITY, "status": status,
                "attempts": 0, "next_attempt_at": due_cache[zone], "error_message": reason,
                "content_sid": content, "content_variables": {"1": body} if content else None,
                "erase_after_send": False, "broadcast_id": broadcast.id, "created_at": now, "updated_at": now,
            })
    return values


def release_due(factory: sessionmaker[Session], senders: dict[str, Sender], now: datetime,
                quiet: tuple) -> int:  # type: ignore[type-arg]
    """Materialise every broadcast whose time has come; returns the outbox rows added."""
    with factory() as session:
        due = list(session.scalars(select(Broadcast.id).where(
            Broadcast.state.in_(("scheduled", "materialising")), Broadcast.send_at <= now)))
    added = 0
    for broadcast_id in due:
        try:
            added += materialise(factory, broadcast_id, senders, now, quiet)
        except Exception as error:  # one broken broadcast (stored by an older version) never stops the others
            log.error("broadcast %d could not be released (%s); the others go on", broadcast_id,
                      type(error).__name__)
            log.debug("release of broadcast %d failed", broadcast_id, exc_info=True)
    return added
