"""Plain helpers shared by the tests (fixtures live in tests/conftest.py): counting rows, waiting for the
dispatcher, a learner writing through `bot.services.receive`, and the variables Settings reads."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

from sqlalchemy import func, select

from bot.dispatcher import utcnow
from bot.models import OutboundMessage
from bot.runtime import Runtime
from bot.services import Envelope, Received, receive

SMS_TO = "+15005550006"  # the SMS sender of the shared `settings`
WHATSAPP_TO = "whatsapp:+14155238886"  # its WhatsApp sender

# Every variable Settings.from_env reads: set them all, so neither the developer's environment nor a `.env`
# file (load_dotenv never overrides a variable that is set, even to "") changes a run.
SETTINGS_VARIABLES = (
    "DATABASE_URL", "LESSONS_DIR", "HOST", "PORT", "PUBLIC_BASE_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN",
    "TWILIO_SMS_FROM", "TWILIO_MESSAGING_SERVICE_SID", "TWILIO_WHATSAPP_FROM", "TWILIO_API_BASE_URL",
    "TELEGRAM_BOT_TOKEN", "TELEGRAM_WEBHOOK_SECRET", "TELEGRAM_API_BASE_URL", "RATE_LIMITS", "QUIET_HOURS",
    "VEREDA_SCHEDULER", "VEREDA_DISPATCHER", "LOG_LEVEL", "MESSAGE_PRICES", "PRICE_CURRENCY",
)


def count(runtime, model, *where) -> int:  # type: ignore[no-untyped-def]
    """How many rows of `model` match `where`."""
    with runtime.factory() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def settle(runtime, timeout: float = 5.0, *, due_now: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Wait until the dispatcher has finished every outbox row (nothing queued or sending); with `due_now`,
    every row that is due at each look (a retry planned for later may wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [OutboundMessage.status.in_(["queued", "sending"])]
        if due_now:
            busy.append(OutboundMessage.next_attempt_at <= utcnow())
        if count(runtime, OutboundMessage, *busy) == 0:
            return
        time.sleep(0.02)
    raise AssertionError("the outbox did not drain")


def settle_due(runtime, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until the dispatcher has finished every outbox row that is due now."""
    settle(runtime, timeout, due_now=True)


def say(runtime: Runtime, phone: str, text: str, now: datetime, channel: str = "sms") -> Received:
    """The learner texts `text` at `now` through `receive` (replies wait in the outbox unless a dispatcher runs)."""
    address = f"whatsapp:{phone}" if channel == "whatsapp" else phone
    to = WHATSAPP_TO if channel == "whatsapp" else SMS_TO
    envelope = Envelope(channel=channel, provider_id="SM" + uuid.uuid4().hex, address=address, text=text, to=to)
    return receive(runtime.factory, envelope, runtime.context(now), runtime.senders)
