"""SQLAlchemy 2 typed models: learners, enrolments, answers, inbound ids and the outbox."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps them naive on disk)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; Vereda stores UTC-aware times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ExactText(TypeDecorator[str]):
    """Text stored exactly as given: PostgreSQL cannot hold NUL in text, so it is escaped reversibly there."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is None or dialect.name != "postgresql":
            return value
        return value.replace("\\", "\\\\").replace("\x00", "\\0")

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        if value is None or dialect.name != "postgresql" or "\\" not in value:
            return value
        out, chars = [], iter(value)
        for char in chars:
            if char == "\\":
                following = next(chars, "")
                out.append("\x00" if following == "0" else following)
            else:
                out.append(char)
        return "".join(out)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime()}


class Learner(Base):
    __tablename__ = "learners"

    id: Mapped[int] = mapped_column(primary_key=True)
    phone: Mapped[str | None] = mapped_column(String(20), unique=True)  # E.164
    telegram_chat_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    language: Mapped[str] = mapped_column(String(8), default="es")
    timezone: Mapped[str | None] = mapped_column(String(64))
    preferred_hour: Mapped[int | None] = mapped_column(SmallInteger)
    opted_out_at: Mapped[datetime | None]
    # why: "keyword" (STOP), "blocked" (Telegram kicked the bot), "provider" (21610/63014/403 on send);
    # only a "blocked" opt-out is lifted by unblocking the bot, every other one needs the learner's START
    opted_out_by: Mapped[str | None] = mapped_column(String(16))
    current_course: Mapped[str | None] = mapped_column(String(64))
    pending: Mapped[str | None] = mapped_column(String(16))  # a question we asked: delete, language, menu
    reasks: Mapped[int] = mapped_column(SmallInteger, default=0)
    created_at: Mapped[datetime]

    addresses: Mapped[list[LearnerAddress]] = relationship(
        back_populates="learner", cascade="all, delete-orphan", passive_deletes=True
    )
    enrolments: Mapped[list[Enrolment]] = relationship(
        back_populates="learner", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def opted_out(self) -> bool:
        return self.opted_out_at is not None


class LearnerAddress(Base):
    """Where a learner writes from on one channel, and when they last did (WhatsApp's 24 h window)."""

    __tablename__ = "learner_addresses"
    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    learner_id: Mapped[int] = mapped_column(ForeignKey("learners.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(64))
    last_inbound_at: Mapped[datetime | None]

    learner: Mapped[Learner] = relationship(back_populates="addresses")


class Enrolment(Base):
    __tablename__ = "enrolments"
    __table_args__ = (
        UniqueConstraint("learner_id", "course_id"),
        Index("ix_enrolments_due", "state", "next_due_at"),
        Index("ix_enrolments_state_channel", "state", "channel", "learner_id"),  # dashboard: active by channel
        # the simulator's (console transport) few enrolments, whose answers the item analysis takes back out
        Index("ix_enrolments_simulated", "course_id", postgresql_where=text("channel = 'console'"),
              sqlite_where=text("channel = 'console'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    learner_id: Mapped[int] = mapped_column(ForeignKey("learners.id", ondelete="CASCADE"))
    course_id: Mapped[str] = mapped_column(String(64), index=True)
    channel: Mapped[str] = mapped_column(String(16))  # where lessons go
    position: Mapped[int] = mapped_column(Integer, default=0)  # index of the lesson delivered last
    question: Mapped[int | None] = mapped_column(SmallInteger)  # index of the question awaiting an answer
    state: Mapped[str] = mapped_column(String(16), default="active")  # active, paused, finished
    next_due_at: Mapped[datetime | None]
    reminders: Mapped[int] = mapped_column(SmallInteger, default=0)
    enrolled_at: Mapped[datetime]
    lesson_sent_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    learner: Mapped[Learner] = relationship(back_populates="enrolments")
    answers: Mapped[list[Answer]] = relationship(
        back_populates="enrolment", cascade="all, delete-orphan", passive_deletes=True
    )


class Answer(Base):
    """The first graded answer to one quiz question; the unique key makes grading happen once."""

    __tablename__ = "answers"
    __table_args__ = (
        UniqueConstraint("enrolment_id", "lesson", "question"),
        Index("ix_answers_enrolment_correct", "enrolment_id", "correct"),  # right answers per enrolment: passed
        Index("ix_answers_course_item", "course_id", "lesson", "question", "choice"),  # item analysis, no join
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    enrolment_id: Mapped[int] = mapped_column(ForeignKey("enrolments.id", ondelete="CASCADE"))
    course_id: Mapped[str] = mapped_column(String(64))  # the enrolment's (which never changes course), copied
    lesson: Mapped[int] = mapped_column(Integer)
    question: Mapped[int] = mapped_column(SmallInteger)
    choice: Mapped[int] = mapped_column(SmallInteger)
    correct: Mapped[bool] = mapped_column(Boolean)
    answered_at: Mapped[datetime]

    enrolment: Mapped[Enrolment] = relationship(back_populates="answers")


class InboundMessage(Base):
    """Every provider message id, stored once: two identical requests racing produce one effect."""

    __tablename__ = "inbound_messages"
    __table_args__ = (UniqueConstraint("channel", "provider_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    provider_id: Mapped[str] = mapped_column(String(64))
    learner_id: Mapped[int | None] = mapped_column(
        ForeignKey("learners.id", ondelete="SET NULL"), index=True
    )
    body: Mapped[str | None] = mapped_column(ExactText)  # as given; None once the learner erased their data
    media_count: Mapped[int] = mapped_column(SmallInteger, default=0)
    received_at: Mapped[datetime]


class OutboundMessage(Base):
    """The outbox: one row per message to send, whatever its kind, with its delivery state."""

    __tablename__ = "outbound_messages"
    __table_args__ = (
        Index("ix_outbound_due", "status", "priority", "next_attempt_at"),
        # the queue in claim order: a claim reads its batch off this index instead of sorting the whole backlog
        Index("ix_outbound_queue", "priority", "id", postgresql_where=text("status = 'queued'"),
              sqlite_where=text("status = 'queued'")),
        Index("ix_outbound_kind_created", "kind", "created_at", "status", "channel"),  # dashboard: lessons today
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    learner_id: Mapped[int | None] = mapped_column(
        ForeignKey("learners.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(String(16))  # sms, whatsapp, telegram, console
    to_address: Mapped[str] = mapped_column(String(64))
    from_address: Mapped[str | None] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    choices: Mapped[list[str] | None] = mapped_column(JSON)
    ref: Mapped[str | None] = mapped_column(String(96))  # what buttons answer: "q:<course>:<lesson>:<question>"
    content_sid: Mapped[str | None] = mapped_column(String(34))  # an approved WhatsApp template (Twilio Content)
    content_variables: Mapped[dict[str, str] | None] = mapped_column(JSON)
    kind: Mapped[str] = mapped_column(String(16))  # reply, lesson, reminder, broadcast
    priority: Mapped[int] = mapped_column(SmallInteger, default=0)  # lower goes first: replies 0, bulk 10
    # queued, sending, sent, delivered, read, failed, cancelled, unknown; held = waits for the learner to
    # write first (WhatsApp's 24 h window is closed), released by their next message
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(SmallInteger, default=0)
    next_attempt_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    claim_token: Mapped[str | None] = mapped_column(String(36), index=True)
    provider_id: Mapped[str | None] = mapped_column(String(64), index=True)
    error_code: Mapped[str | None] = mapped_column(String(16))
    error_message: Mapped[str | None] = mapped_column(String(255))
    erase_after_send: Mapped[bool] = mapped_column(Boolean, default=False)
    broadcast_id: Mapped[int | None] = mapped_column(ForeignKey("broadcasts.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    events: Mapped[list[MessageEvent]] = relationship(
        back_populates="message", cascade="all, delete-orphan", passive_deletes=True,
        order_by="MessageEvent.id",
    )


class MessageEvent(Base):
    """Status history of an outbound message: every attempt and every callback, in arrival order."""

    __tablename__ = "message_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("outbound_messages.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(String(255))
    at: Mapped[datetime]

    message: Mapped[OutboundMessage] = relationship(back_populates="events")


class LearnerTag(Base):
    """A coordinator's label on a learner (a group, a workshop, a region), for segments."""

    __tablename__ = "learner_tags"
    __table_args__ = (UniqueConstraint("learner_id", "tag"), Index("ix_learner_tags_tag", "tag", "learner_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    learner_id: Mapped[int] = mapped_column(ForeignKey("learners.id", ondelete="CASCADE"))
    tag: Mapped[str] = mapped_column(String(64))


class Broadcast(Base):
    """A coordinator's message to a segment; its recipients become outbox rows keyed per recipient."""

    __tablename__ = "broadcasts"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[dict[str, str]] = mapped_column(JSON)  # language -> text
    segment: Mapped[dict[str, str]] = mapped_column(JSON)  # course, channel, language, tag, progress
    whatsapp_template: Mapped[str | None] = mapped_column(String(34))
    send_at: Mapped[datetime]
    # scheduled -> materialising -> released; or cancelled
    state: Mapped[str] = mapped_column(String(16), default="scheduled", index=True)
    cursor: Mapped[int] = mapped_column(Integer, default=0)  # recipients materialised up to this learner id
    recipients: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]
    released_at: Mapped[datetime | None]


class RateBucket(Base):
    """A token bucket per sender, shared by every process that sends (RATE_LIMITS)."""

    __tablename__ = "rate_buckets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[float]
    updated_at: Mapped[datetime]


class User(Base):
    """A coordinators' console account; the password is kept only as a scrypt hash."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin, coordinator, viewer
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]
    # sign-out ends every console session of the account signed in before it (a copied cookie included)
    sessions_ended_at: Mapped[datetime | None]


class ApiToken(Base):
    """A bearer token for /api/v1; only its SHA-256 is stored, so a database leak reveals no token."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class LoginFailure(Base):
    """A failed console login, kept briefly to slow down password guessing (by account and by address)."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(300))
    at: Mapped[datetime]


class AppSecret(Base):
    """Secrets the application makes for itself on first start (the session-signing key), shared by every
    worker process through the database so that no operator has to configure one."""

    __tablename__ = "app_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))
