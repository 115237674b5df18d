"""TwilioSender's transport (PooledHttpClient: the twilio SDK over urllib3) against the fake Twilio."""

from __future__ import annotations

import logging
import time

import pytest

from bot.channels.base import Outgoing
from bot.channels.twilio import PooledHttpClient, TwilioSender
from bot.config import Settings
from tests.fakes.twilio_api import Failure, FakeTwilio

PHONE = "+525512345678"
BODY = "Lección 1: ¿qué harías? ñandú — 1) sí 2) no"


def message(n: int = 1, body: str = BODY, to: str = PHONE) -> Outgoing:
    return Outgoing(id=n, channel="sms", to_address=to, from_address=None, body=body, buttons=(),
                    status_callback="https://vereda.example.org/twilio/status")


def test_sends_through_the_sdk_and_keeps_the_connection(settings: Settings, fake_twilio: FakeTwilio) -> None:
    sender = TwilioSender(settings)
    assert isinstance(sender.client.http_client, PooledHttpClient)
    results = [sender.send(message(n, f"{BODY} #{n}")) for n in range(5)]
    assert all(r.ok for r in results)
    got = fake_twilio.wait_for(5)
    assert [r.provider_id for r in results] == [m.sid for m in got]
    first = got[0]
    assert first.form == {"To": PHONE, "From": "+15005550006", "Body": f"{BODY} #0",
                          "StatusCallback": "https://vereda.example.org/twilio/status"}
    assert first.authorization.startswith("Basic ")
    # one pool for the API host, reused for every send
    [manager] = sender.http._managers.values()
    assert len(manager.pools) == 1


def test_a_slow_answer_times_out_and_is_retried_later(settings: Settings, fake_twilio: FakeTwilio) -> None:
    sender = TwilioSender(settings, timeout=0.3)
    fake_twilio.fail_next(Failure(201, delay=2.0))
    started = time.monotonic()
    result = sender.send(message())
    assert time.monotonic() - started < 1.5
    assert (result.ok, result.retry, result.error_code) == (False, True, "network")
    assert "Timeout" in (result.error_message or "")
    assert sender.send(message(2)).ok  # the pool recovers: the next send goes out


@pytest.mark.parametrize(("status", "code", "expect"), [
    (500, None, {"retry": True, "error_code": "500"}),
    (503, None, {"retry": True, "error_code": "503"}),
    (429, 20429, {"retry": True, "error_code": "20429"}),
    (400, 21610, {"opt_out": True, "error_code": "21610"}),
    (400, 21211, {"invalid_address": True, "error_code": "21211"}),
    (400, 21617, {"retry": False, "opt_out": False, "error_code": "21617"}),
])
def test_error_answers_are_classified(status: int, code: int | None, expect: dict[str, object],
                                      settings: Settings, fake_twilio: FakeTwilio) -> None:
    sender = TwilioSender(settings)
    fake_twilio.fail_next(Failure(status, code, message="the fake says no"))
    result = sender.send(message())
    assert not result.ok
    assert (result.error_message or "").endswith("the fake says no")  # Twilio's error JSON, read by the SDK
    for name, value in expect.items():
        assert getattr(result, name) == value, name
    assert fake_twilio.messages == []


def test_unreachable_and_not_https_are_network_errors(settings: Settings, fake_twilio: FakeTwilio) -> None:
    dead = TwilioSender(settings.with_(twilio_api_base_url="http://127.0.0.1:9"), timeout=0.5)
    assert (dead.send(message()).error_code, dead.send(message()).retry) == ("network", True)
    # https to a plain-HTTP server: the TLS handshake fails, nothing is sent
    tls = TwilioSender(settings.with_(twilio_api_base_url=fake_twilio.base_url.replace("http:", "https:")),
                       timeout=0.5)
    result = tls.send(message())
    assert (result.ok, result.error_code, result.retry) == (False, "network", True)
    assert fake_twilio.messages == []


def test_proxy_and_ca_bundle_come_from_the_environment(settings: Settings, fake_twilio: FakeTwilio,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens: a request through it fails
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/vereda/ca.pem")
    for name in ("http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxied = TwilioSender(settings, timeout=0.5)
    assert proxied.http.ca_certs == "/etc/vereda/ca.pem"
    assert proxied.http.proxy_for(fake_twilio.base_url) == "http://127.0.0.1:9"
    result = proxied.send(message())
    assert (result.ok, result.error_code) == (False, "network")
    assert fake_twilio.messages == []

    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    direct = TwilioSender(settings, timeout=0.5)
    assert direct.http.proxy_for(fake_twilio.base_url) is None
    assert direct.send(message()).ok
    # read once, at construction: later changes do not reach an existing sender
    monkeypatch.delenv("NO_PROXY")
    assert direct.send(message(2)).ok
    assert len(fake_twilio.wait_for(2)) == 2


def test_never_logs_numbers_or_bodies(settings: Settings, fake_twilio: FakeTwilio,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sender = TwilioSender(settings)
    assert sender.send(message()).ok
    fake_twilio.fail_next(Failure(400, 21211))
    assert not sender.send(message(2)).ok
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Twilio API POST" in logged  # the transport's own lines, at DEBUG
    assert all(record.levelno < logging.INFO for record in caplog.records
               if record.name.startswith(("bot.channels.twilio", "twilio")))
    for secret in (PHONE, PHONE[1:], "5512345678", "Lecci", settings.twilio_auth_token):
        assert secret not in logged
