"""TelegramSender on its own: python-telegram-bot's `Bot` over the aiohttp transport (bot/channels/aiohttp_request.py)
against FakeTelegram, from plain threads as the dispatcher calls it. No database.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from bot.channels.base import Outgoing
from bot.channels.telegram import TelegramSender
from bot.config import Settings
from tests.fakes.telegram_api import TOKEN, FakeTelegram, TgFailure

CHAT = "7012345678"


def make_sender(base_url: str, timeout: float = 10.0) -> TelegramSender:
    sender = TelegramSender(Settings(telegram_bot_token=TOKEN, telegram_api_base_url=base_url), timeout=timeout)
    sender.loop.name = f"vereda-telegram-test-{uuid.uuid4().hex[:8]}"  # to find its thread
    return sender


def message(body: str = "Hola", buttons: tuple[str, ...] = (), ref: str | None = None, to: str = CHAT) -> Outgoing:
    return Outgoing(1, "telegram", to, None, body, buttons, ref=ref)


def loop_thread_alive(sender_name: str) -> bool:
    return any(t.name == sender_name and t.is_alive() for t in threading.enumerate())


def wait_until(condition, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def sender(fake_telegram: FakeTelegram) -> Iterator[TelegramSender]:
    sender = make_sender(fake_telegram.base_url)
    yield sender
    sender.close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_question_goes_as_plain_text_with_its_inline_keyboard(sender: TelegramSender,
                                                                 fake_telegram: FakeTelegram) -> None:
    body = "¿Qué *informe* presentó la idea? <b>1994</b> [PNUD](x)"  # markup characters stay plain text
    result = sender.send(message(body, ("Palermo", "Informe 1994"), ref="q:seguridad-humana:0:1"))
    assert result.ok and result.provider_id == f"{CHAT}:1001"
    [call] = fake_telegram.sent()
    assert call.params == {"chat_id": CHAT, "text": body, "reply_markup": {"inline_keyboard": [
        [{"text": "Palermo", "callback_data": "q:seguridad-humana:0:1|1"}],
        [{"text": "Informe 1994", "callback_data": "q:seguridad-humana:0:1|2"}]]}}


def test_429_403_and_400_come_back_as_the_outbox_needs_them(sender: TelegramSender,
                                                            fake_telegram: FakeTelegram) -> None:
    fake_telegram.fail_next("sendMessage", TgFailure(429, retry_after=37), TgFailure(403),
                            TgFailure(400, "Bad Request: chat not found"),
                            TgFailure(400, "Bad Request: message text is empty"))
    limited = sender.send(message())
    assert (limited.ok, limited.error_code, limited.retry, limited.retry_after) == (False, "429", True, 37.0)
    blocked = sender.send(message())
    assert (blocked.error_code, blocked.opt_out, blocked.retry) == ("403", True, False)
    unknown = sender.send(message())
    assert (unknown.error_code, unknown.invalid_address, unknown.retry) == ("400", True, False)
    bad = sender.send(message())
    assert (bad.error_code, bad.invalid_address, bad.retry) == ("400", False, False)
    assert fake_telegram.sent() == []
    assert sender.send(message()).ok


def test_an_unreachable_api_is_a_network_error_to_retry(closed_port: int) -> None:
    sender = make_sender(f"http://127.0.0.1:{closed_port}", timeout=2.0)
    try:
        result = sender.send(message())
        assert (result.ok, result.error_code, result.retry) == (False, "network", True)
    finally:
        sender.close()


def test_an_api_that_never_answers_times_out_within_the_timeouts() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    sender = make_sender(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.3)
    try:
        started = time.monotonic()
        result = sender.send(message())
        elapsed = time.monotonic() - started
        assert (result.ok, result.error_code, result.retry) == (False, "network", True)
        assert result.error_message == "TimedOut"
        assert elapsed < 2.5  # read 0.3 s (getMe); the sum of the four timeouts is 1.9 s
    finally:
        sender.close()
        listener.close()


def test_concurrent_first_sends_share_one_bot(sender: TelegramSender, fake_telegram: FakeTelegram) -> None:
    barrier = threading.Barrier(8)
    results = []

    def one(n: int) -> None:
        barrier.wait()
        results.append(sender.send(message(f"hola {n}", to=str(7000 + n))).ok)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [True] * 8
    assert len(fake_telegram.of("getMe")) == 1  # Bot.initialize() once, not once per racing caller
    assert sorted(int(c.params["chat_id"]) for c in fake_telegram.sent()) == list(range(7000, 7008))
    for n in range(20):
        assert sender.send(message(f"más {n}")).ok
    assert len(fake_telegram.of("getMe")) == 1


def test_each_chats_messages_arrive_in_order_from_parallel_threads(sender: TelegramSender,
                                                                   fake_telegram: FakeTelegram) -> None:
    def chat(n: int) -> None:
        for k in range(25):
            assert sender.send(message(f"{n}:{k}", to=str(7100 + n))).ok

    threads = [threading.Thread(target=chat, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    for n in range(8):
        assert [c.params["text"] for c in fake_telegram.sent(7100 + n)] == [f"{n}:{k}" for k in range(25)]


def test_close_closes_the_session_and_ends_the_loop_thread(fake_telegram: FakeTelegram,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    sender = make_sender(fake_telegram.base_url)
    name = sender.loop.name
    assert sender.send(message()).ok
    assert loop_thread_alive(name)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        sender.close()
        assert wait_until(lambda: not loop_thread_alive(name))
        gc.collect()
    assert "Unclosed" not in caplog.text
    assert sender.send(message("otra vez")).ok  # a new loop and a new Bot
    assert len(fake_telegram.of("getMe")) == 2
    sender.close()
    assert wait_until(lambda: not loop_thread_alive(name))


def test_a_dropped_sender_closes_its_session_and_thread(fake_telegram: FakeTelegram,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    sender = make_sender(fake_telegram.base_url)
    name = sender.loop.name
    assert sender.send(message()).ok
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        del sender
        gc.collect()
        assert wait_until(lambda: not loop_thread_alive(name))
        gc.collect()
    assert "Unclosed" not in caplog.text


def test_the_proxy_of_the_environment_is_used(fake_telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", fake_telegram.base_url)  # the fake answers proxied requests too
    sender = make_sender("http://api.telegram.invalid")
    try:
        assert sender.send(message()).ok
    finally:
        sender.close()
    assert fake_telegram.proxied == [f"http://api.telegram.invalid/bot{TOKEN}/getMe",
                                     f"http://api.telegram.invalid/bot{TOKEN}/sendMessage"]


def test_no_proxy_is_honoured(fake_telegram: FakeTelegram, closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port}")  # nothing there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    sender = make_sender(fake_telegram.base_url)
    try:
        assert sender.send(message()).ok  # straight to the fake
    finally:
        sender.close()
    assert fake_telegram.proxied == []
    monkeypatch.delenv("NO_PROXY")
    sender = make_sender(fake_telegram.base_url, timeout=2.0)
    try:
        assert sender.send(message()).error_code == "network"  # through the dead proxy
    finally:
        sender.close()
