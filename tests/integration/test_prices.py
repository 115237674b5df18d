"""MESSAGE_PRICES: a broadcast's estimated cost in money, in the CLI preview, the API preview and the console."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

import bot.cli
from bot.auth import create_token
from bot.config import ConfigError, Settings
from bot.dispatcher import utcnow
from bot.runtime import Runtime
from bot.services import Envelope, receive
from tests.conftest import LESSONS, _close, _testing_app
from tests.fakes.twilio_api import FakeTwilio

PRICES = "sms=0.0079,whatsapp=0.0085"
SPANISH = "Reunión el lunes 📅 en el albergue. " * 2  # 70 characters, UCS-2: 2 segments (67 per part)
ENGLISH = "Meeting on Monday."


def test_message_prices_are_read_from_the_environment() -> None:
    settings = Settings.from_env({"MESSAGE_PRICES": " sms=0.0079, WhatsApp=0.005 ,telegram=0",
                                  "PRICE_CURRENCY": "mxn"})
    assert settings.message_prices == {"sms": 0.0079, "whatsapp": 0.005, "telegram": 0.0}
    assert settings.price_currency == "MXN"
    assert Settings.from_env({}).message_prices is None


@pytest.mark.parametrize("raw", ["sms", "sms=cheap", "sms=-1", "sms=nan"])
def test_bad_message_prices_are_refused_by_name(raw: str) -> None:
    with pytest.raises(ConfigError, match="MESSAGE_PRICES"):
        Settings.from_env({"MESSAGE_PRICES": raw})


def learners(runtime: Runtime) -> None:
    """Four SMS learners and one WhatsApp learner, all in Spanish (the default language)."""
    senders = [("sms", "+52551000000" + str(n), "hola") for n in range(4)]
    senders += [("whatsapp", "whatsapp:+5215510000009", "hola")]
    for channel, address, text in senders:
        receive(runtime.factory, Envelope(channel=channel, provider_id="SM" + uuid.uuid4().hex, address=address,
                                          text=text, to="+15005550006"), runtime.context(utcnow()), runtime.senders)


@pytest.fixture
def priced(settings: Settings) -> Iterator[Any]:
    application = _testing_app(settings.with_(message_prices={"sms": 0.0079, "whatsapp": 0.0085},
                                              price_currency="USD"))
    learners(application.extensions["vereda"])
    yield application
    _close(application.extensions["vereda"])


def test_api_preview_estimates_the_cost_per_channel(priced: Any) -> None:
    runtime: Runtime = priced.extensions["vereda"]
    token = create_token(runtime.factory, "coordinator", utcnow())
    response = priced.test_client().post("/api/v1/broadcasts/preview", headers={"Authorization": f"Bearer {token}"},
                                         json={"text": {"es": SPANISH, "en": ENGLISH}, "segment": {}})
    assert response.status_code == 200, response.get_data(as_text=True)
    preview = response.get_json()
    assert preview["recipients"] == {"total": 5, "by_channel": {"sms": 4, "whatsapp": 1}}
    assert preview["sms"]["es"]["segments"] == 2 and preview["sms_segments"] == 4 * 2
    cost = preview["estimated_cost"]
    assert cost["currency"] == "USD"
    assert cost["by_channel"] == {"sms": pytest.approx(8 * 0.0079), "whatsapp": pytest.approx(0.0085)}
    assert cost["total"] == pytest.approx(8 * 0.0079 + 0.0085)


def test_api_preview_without_prices_has_no_money_estimate(app: Any, runtime: Runtime) -> None:
    learners(runtime)
    token = create_token(runtime.factory, "coordinator", utcnow())
    preview = app.test_client().post("/api/v1/broadcasts/preview", headers={"Authorization": f"Bearer {token}"},
                                     json={"text": {"es": SPANISH}, "segment": {}}).get_json()
    assert preview["estimated_cost"] is None and preview["sms_segments"] == 8
    assert preview["channels_off"] == []


def test_a_preview_flags_recipients_on_a_channel_this_server_does_not_send_on(settings: Settings,
                                                                             runtime: Runtime) -> None:
    """Twilio not configured: the SMS and WhatsApp learners would get nothing, and the preview says so."""
    learners(runtime)
    application = _testing_app(settings.with_(twilio_account_sid=None, twilio_auth_token=None))
    try:
        off: Runtime = application.extensions["vereda"]
        token = create_token(off.factory, "coordinator", utcnow())
        preview = application.test_client().post(
            "/api/v1/broadcasts/preview", headers={"Authorization": f"Bearer {token}"},
            json={"text": {"es": SPANISH}, "segment": {}}).get_json()
        assert preview["channels_off"] == ["sms", "whatsapp"]
        from bot import broadcasts

        with off.factory() as session:
            lines = broadcasts.preview(session, {"es": SPANISH}, {}).lines(channels=off.senders)
        assert "  sms: 4 - channel off on this server: they get nothing" in lines
        assert "  whatsapp: 1 - channel off on this server: they get nothing" in lines
    finally:
        _close(application.extensions["vereda"])


def test_cli_preview_shows_the_cost_in_money(settings: Settings, fake_twilio: FakeTwilio, runtime: Runtime,
                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    learners(runtime)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    env = {"DATABASE_URL": settings.database_url, "LESSONS_DIR": str(LESSONS), "RATE_LIMITS": "off",
           "TWILIO_ACCOUNT_SID": fake_twilio.account_sid, "TWILIO_AUTH_TOKEN": fake_twilio.auth_token,
           "TWILIO_API_BASE_URL": fake_twilio.base_url, "VEREDA_SCHEDULER": "off", "PUBLIC_BASE_URL": "",
           "MESSAGE_PRICES": PRICES, "PRICE_CURRENCY": "usd"}
    built: list[Runtime] = []
    real = bot.cli._runtime
    monkeypatch.setattr(bot.cli, "_runtime", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    try:
        result = CliRunner().invoke(bot.cli.main, ["broadcast", "preview", "--text-es", SPANISH,
                                                   "--text-en", ENGLISH], env=env, catch_exceptions=False)
    finally:
        for made in built:
            _close(made)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "estimated SMS cost: 8 segment(s)" in lines
    assert "estimated cost sms: 0.06 USD (8 x 0.0079)" in lines
    assert "estimated cost whatsapp: 0.01 USD (1 x 0.0085)" in lines
    assert "estimated cost total: 0.07 USD" in lines  # 0.0632 + 0.0085


def test_cli_preview_without_prices_says_how_to_set_them(runtime: Runtime) -> None:
    learners(runtime)
    from bot import broadcasts

    with runtime.factory() as session:
        lines = broadcasts.preview(session, {"es": SPANISH}, {}).lines()
    assert "estimated SMS cost: 8 segment(s)" in lines
    assert any("MESSAGE_PRICES" in line for line in lines)
    assert not any(line.startswith("estimated cost ") for line in lines)
