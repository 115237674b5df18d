"""One frozen Settings read from the environment; nothing else reads os.environ."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import time
from pathlib import Path
from typing import Any

DEFAULT_RATE_LIMITS = {"sms": 1.0, "whatsapp": 80.0, "telegram": 30.0}
BUNDLED_LESSONS = Path(__file__).resolve().parents[1] / "lessons"  # the courses beside the code (a checkout)


def _default_lessons() -> str:
    """`lessons` in the working directory; else, outside a checkout, the bundled courses (`vereda chat` run from
    any folder finds them)."""
    if Path("lessons").is_dir() or not BUNDLED_LESSONS.is_dir():
        return "lessons"
    return str(BUNDLED_LESSONS)


class ConfigError(ValueError):
    """A configuration value that cannot be used, named with its variable."""


def _parse_rate_limits(raw: str) -> dict[str, float] | None:
    if raw.strip().lower() == "off":
        return None
    limits = dict(DEFAULT_RATE_LIMITS)
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, _, value = part.partition("=")
        try:
            limits[name.strip().lower()] = float(value)
        except ValueError:
            raise ConfigError(f"RATE_LIMITS: {part!r} is not channel=messages-per-second") from None
    return limits


def _parse_prices(raw: str) -> dict[str, float] | None:
    """MESSAGE_PRICES: `sms=0.0079,whatsapp=0.005` — what one SMS segment or one message costs per channel."""
    if not raw.strip():
        return None
    prices: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, _, value = part.partition("=")
        try:
            price = float(value)
        except ValueError:
            raise ConfigError(f"MESSAGE_PRICES: {part!r} is not channel=price") from None
        if price < 0 or price != price:
            raise ConfigError(f"MESSAGE_PRICES: {part!r}: a price cannot be negative")
        prices[name.strip().lower()] = price
    return prices


def _parse_quiet_hours(raw: str) -> tuple[time, time]:
    try:
        start, end = (time.fromisoformat(p.strip()) for p in raw.split("-"))
    except ValueError:
        raise ConfigError(f"QUIET_HOURS: {raw!r} is not HH:MM-HH:MM") from None
    return start, end


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///vereda.db"
    lessons_dir: str = "lessons"
    host: str = "127.0.0.1"
    port: int = 5000
    public_base_url: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_sms_from: str | None = None
    twilio_messaging_service_sid: str | None = None
    twilio_whatsapp_from: str | None = None
    twilio_api_base_url: str = "https://api.twilio.com"
    telegram_bot_token: str | None = None
    telegram_webhook_secret: str | None = None
    telegram_api_base_url: str = "https://api.telegram.org"
    rate_limits: dict[str, float] | None = field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    quiet_hours: tuple[time, time] = (time(21, 0), time(8, 0))
    scheduler: bool = True
    dispatcher: bool = True  # the in-process outbox sender that delivers replies within a second
    log_level: str = "INFO"
    # what one SMS segment / one WhatsApp or Telegram message costs, for broadcast estimates (none: segments only)
    message_prices: dict[str, float] | None = None
    price_currency: str = "USD"

    @property
    def twilio_enabled(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token)

    @property
    def telegram_enabled(self) -> bool:
        return bool(self.telegram_bot_token)

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the CLI)."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from `env` (default: os.environ, after reading a `.env` file if there is one)."""
        if env is None:
            from dotenv import load_dotenv

            load_dotenv(override=False)
            env = os.environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        port = get("PORT") or "5000"
        if not port.isdigit():
            raise ConfigError(f"PORT: {port!r} is not a port number")
        switch = (get("VEREDA_SCHEDULER") or "on").lower()
        if switch not in {"on", "off", "1", "0", "true", "false"}:
            raise ConfigError(f"VEREDA_SCHEDULER: {switch!r} is not on or off")
        dispatch = (get("VEREDA_DISPATCHER") or "on").lower()
        return cls(
            database_url=get("DATABASE_URL") or cls.database_url,
            lessons_dir=get("LESSONS_DIR") or _default_lessons(),
            host=get("HOST") or cls.host,
            port=int(port),
            public_base_url=(get("PUBLIC_BASE_URL") or "").rstrip("/") or None,
            twilio_account_sid=get("TWILIO_ACCOUNT_SID"),
            twilio_auth_token=get("TWILIO_AUTH_TOKEN"),
            twilio_sms_from=get("TWILIO_SMS_FROM"),
            twilio_messaging_service_sid=get("TWILIO_MESSAGING_SERVICE_SID"),
            twilio_whatsapp_from=get("TWILIO_WHATSAPP_FROM"),
            twilio_api_base_url=(get("TWILIO_API_BASE_URL") or cls.twilio_api_base_url).rstrip("/"),
            telegram_bot_token=get("TELEGRAM_BOT_TOKEN"),
            telegram_webhook_secret=get("TELEGRAM_WEBHOOK_SECRET"),
            telegram_api_base_url=(get("TELEGRAM_API_BASE_URL") or cls.telegram_api_base_url).rstrip("/"),
            rate_limits=_parse_rate_limits(get("RATE_LIMITS") or ""),
            quiet_hours=_parse_quiet_hours(get("QUIET_HOURS") or "21:00-08:00"),
            scheduler=switch in {"on", "1", "true"},
            dispatcher=dispatch not in {"off", "0", "false"},
            log_level=(get("LOG_LEVEL") or "INFO").upper(),
            message_prices=_parse_prices(get("MESSAGE_PRICES") or ""),
            price_currency=(get("PRICE_CURRENCY") or cls.price_currency).upper(),
        )
