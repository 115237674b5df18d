"""Everything a process needs, built once from Settings: database, catalog, senders, outbox."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from bot.catalog import load_catalog
from bot.channels.base import Sender
from bot.config import Settings
from bot.conversation import Context
from bot.courses import Catalog
from bot.db import make_engine, make_sessionmaker, migrate
from bot.dispatcher import Dispatcher
from bot.drips import window_closed_hook
from bot.outbox import Outbox
from bot.ratelimit import RateLimiter

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]
    catalog: Catalog
    senders: dict[str, Sender]
    outbox: Outbox
    dispatcher: Dispatcher
    problems: list[str] = field(default_factory=list)

    def context(self, now: datetime) -> Context:
        return Context(catalog=self.catalog, now=now, quiet_hours=self.settings.quiet_hours)


def make_senders(settings: Settings) -> dict[str, Sender]:
    """A sender per channel whose credentials are set; a channel without them is off."""
    senders: dict[str, Sender] = {}
    if settings.twilio_enabled:
        from bot.channels.twilio import TwilioSender

        twilio = TwilioSender(settings)
        senders["sms"] = senders["whatsapp"] = twilio
    if settings.telegram_enabled and settings.telegram_webhook_secret:
        from bot.channels.telegram import TelegramSender

        senders["telegram"] = TelegramSender(settings)
    return senders


def build(settings: Settings, senders: dict[str, Sender] | None = None) -> Runtime:
    """Connect, migrate, load the courses (logging each problem once) and wire the outbox."""
    engine = make_engine(settings.database_url)
    migrate(engine)
    factory = make_sessionmaker(engine)
    catalog, problems = load_catalog(settings.lessons_dir)
    for problem in problems:
        log.error("course problem: %s", problem)
    if not catalog.courses:
        log.warning("no valid courses in %s", settings.lessons_dir)
    senders = make_senders(settings) if senders is None else senders
    callback = f"{settings.public_base_url}/webhooks/twilio/status" if settings.public_base_url else None
    limiter = RateLimiter(settings.rate_limits) if settings.rate_limits else None
    outbox = Outbox(factory, senders, status_callback=callback, on_window_closed=window_closed_hook(catalog),
                    limiter=limiter)
    return Runtime(settings, engine, factory, catalog, senders, outbox,
                   Dispatcher(outbox, enabled=settings.dispatcher),
                   [str(p) for p in problems])
