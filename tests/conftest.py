"""Shared fixtures: a database per test (SQLite, and PostgreSQL where reachable), the fake Twilio, the app."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from twilio.request_validator import RequestValidator
from werkzeug.serving import make_server

from bot.config import Settings
from bot.runtime import Runtime, build
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.twilio_api import FakeTwilio
from tests.helpers import SETTINGS_VARIABLES

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"
POSTGRES_URL = os.environ.get("VEREDA_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_reachable() -> bool:
    if os.environ.get("VEREDA_TEST_POSTGRES") == "off":
        return False
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


POSTGRES = _postgres_reachable()
if os.environ.get("CI") and not POSTGRES and os.environ.get("VEREDA_TEST_POSTGRES") != "off":
    raise RuntimeError(f"CI must test on PostgreSQL too, and {POSTGRES_URL} does not answer")

BACKENDS = ["sqlite"] + (["postgresql"] if POSTGRES else [])


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new empty database: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vereda.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilio]:
    fake = FakeTwilio().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram().start()
    yield fake
    fake.stop()


@pytest.fixture
def settings(database_url: str, fake_twilio: FakeTwilio) -> Settings:
    return Settings(
        database_url=database_url,
        lessons_dir=str(LESSONS),
        public_base_url="https://vereda.example.org",
        twilio_account_sid=fake_twilio.account_sid,
        twilio_auth_token=fake_twilio.auth_token,
        twilio_sms_from="+15005550006",
        twilio_whatsapp_from="whatsapp:+14155238886",
        twilio_api_base_url=fake_twilio.base_url,
        rate_limits=None,
        scheduler=False,
    )


def _testing_app(settings: Settings):  # type: ignore[no-untyped-def]
    from app import create_app

    application = create_app(settings)
    application.config["TESTING"] = True
    return application


def _close(runtime: Runtime) -> None:
    runtime.dispatcher.stop()
    runtime.engine.dispose()


@pytest.fixture
def app(settings: Settings):  # type: ignore[no-untyped-def]
    application = _testing_app(settings)
    yield application
    _close(application.extensions["vereda"])


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def runtime(app):  # type: ignore[no-untyped-def]
    return app.extensions["vereda"]


@pytest.fixture
def make_app(settings: Settings) -> Iterator[Callable[..., Any]]:
    """Build extra apps with changed settings (stopped and disposed afterwards)."""
    built: list[Any] = []

    def make(**changes: object):  # type: ignore[no-untyped-def]
        application = _testing_app(settings.with_(**changes))
        built.append(application)
        return application

    yield make
    for application in built:
        _close(application.extensions["vereda"])


@pytest.fixture
def make_runtime(settings: Settings) -> Iterator[Callable[..., Runtime]]:
    """Runtimes built like the app's (migrated database, catalog, senders), disposed afterwards."""
    built: list[Runtime] = []

    def make(**changes: object) -> Runtime:
        runtime = build(settings.with_(**changes))
        built.append(runtime)
        return runtime

    yield make
    for runtime in built:
        _close(runtime)


@pytest.fixture
def rt(make_runtime: Callable[..., Runtime]) -> Runtime:
    """A runtime without the web app (no dispatcher thread unless a test starts one)."""
    return make_runtime()


@pytest.fixture
def live_server(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The test app served on a local port, in a thread."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


class TwilioWebhook:
    """Builds inbound requests exactly as Twilio does: form fields and X-Twilio-Signature."""

    def __init__(self, client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
        self.client, self.settings = client, settings
        self.validator = RequestValidator(settings.twilio_auth_token or "")

    def sign(self, path: str, form: dict[str, str]) -> str:
        return self.validator.compute_signature(f"{self.settings.public_base_url}{path}", form)

    def post(self, form: dict[str, str], path: str = "/webhooks/twilio", signature: str | None = None,
             **headers: str):  # type: ignore[no-untyped-def]
        sig = self.sign(path, form) if signature is None else signature
        return self.client.post(path, data=form, headers={"X-Twilio-Signature": sig, **headers})

    def sms(self, sender: str, body: str, sid: str | None = None, **extra: str):  # type: ignore[no-untyped-def]
        return self.post(sms_form(sender, body, sid, **extra))


def sms_form(sender: str, body: str, sid: str | None = None, to: str = "+15005550006",
             **extra: str) -> dict[str, str]:
    """The form Twilio posts for an inbound SMS (or WhatsApp when `sender` starts with whatsapp:)."""
    sid = sid or "SM" + uuid.uuid4().hex
    if sender.startswith("whatsapp:") and not to.startswith("whatsapp:"):
        to = "whatsapp:+14155238886"
    return {
        "ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "",
        "FromZip": "", "SmsSid": sid, "FromState": "", "SmsStatus": "received", "FromCity": "",
        "Body": body, "FromCountry": "MX", "To": to, "ToZip": "", "NumSegments": "1",
        "MessageSid": sid, "AccountSid": "AC" + "0" * 32, "From": sender, "ApiVersion": "2010-04-01",
        **extra,
    }


@pytest.fixture
def twilio(client, settings: Settings) -> TwilioWebhook:  # type: ignore[no-untyped-def]
    return TwilioWebhook(client, settings)


def at(text_: str) -> datetime:
    """An aware UTC datetime from 'YYYY-MM-DD HH:MM' (tests)."""
    return datetime.fromisoformat(text_).replace(tzinfo=UTC)


@pytest.fixture
def cli(settings: Settings, fake_twilio: FakeTwilio, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> Iterator[Callable[..., tuple[int, list[str]]]]:
    """Runs `vereda ...` in-process, configured only through environment variables."""
    import bot.cli

    env = dict.fromkeys(SETTINGS_VARIABLES, "")
    env.update({
        "DATABASE_URL": settings.database_url, "LESSONS_DIR": str(LESSONS),
        "TWILIO_ACCOUNT_SID": fake_twilio.account_sid, "TWILIO_AUTH_TOKEN": fake_twilio.auth_token,
        "TWILIO_SMS_FROM": "+15005550006", "TWILIO_WHATSAPP_FROM": "whatsapp:+14155238886",
        "TWILIO_API_BASE_URL": fake_twilio.base_url, "RATE_LIMITS": "off", "VEREDA_SCHEDULER": "off",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    })
    built: list[Runtime] = []
    real = bot.cli._runtime

    def keep(*args, **kwargs):  # type: ignore[no-untyped-def]
        runtime = real(*args, **kwargs)
        built.append(runtime)
        return runtime

    monkeypatch.setattr(bot.cli, "_runtime", keep)
    monkeypatch.chdir(tmp_path)  # no stray .env file is read
    runner = CliRunner()

    def run(*args: str, ok: bool = True, input: str | None = None) -> tuple[int, list[str]]:
        result = runner.invoke(bot.cli.main, list(args), env=env, catch_exceptions=False, input=input)
        lines = result.output.splitlines()
        if ok:
            assert result.exit_code == 0, result.output
        return result.exit_code, lines

    yield run
    for runtime in built:
        runtime.dispatcher.stop()
        runtime.engine.dispose()
