"""Replies leave from the request's own thread once the answer is written, without the dispatcher thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from bot.models import OutboundMessage
from bot.runtime import Runtime
from tests.conftest import sms_form
from tests.fakes.twilio_api import FakeTwilio


@pytest.fixture
def served(app: Any, settings: Any) -> Iterator[tuple[str, Runtime]]:
    """The app behind a real HTTP server (which closes every response, as gunicorn does), the dispatcher
    thread never woken: only the request's own thread can send."""
    runtime: Runtime = app.extensions["vereda"]
    wakes: list[float] = []
    runtime.dispatcher.wake = lambda: wakes.append(time.monotonic())  # type: ignore[method-assign]
    runtime.dispatcher.ensure_started = lambda: None  # type: ignore[method-assign]
    runtime.wakes = wakes  # type: ignore[attr-defined]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}", runtime
    server.shutdown()


def post(base: str, settings: Any, form: dict[str, str]) -> httpx.Response:
    from twilio.request_validator import RequestValidator

    signature = RequestValidator(settings.twilio_auth_token).compute_signature(
        f"{settings.public_base_url}/webhooks/twilio", form)
    return httpx.post(f"{base}/webhooks/twilio", data=form, headers={"X-Twilio-Signature": signature})


def wait_for(fake: FakeTwilio, count: int, timeout: float = 5.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while len(fake.messages) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(fake.messages)


def test_replies_go_out_from_the_request_thread_in_order(served: tuple[str, Runtime], settings: Any,
                                                         fake_twilio: FakeTwilio) -> None:
    base, runtime = served
    phone = "+525512345678"
    started = time.monotonic()
    assert post(base, settings, sms_form(phone, "RUTA")).status_code == 200
    sent = wait_for(fake_twilio, 3)
    assert len(sent) == 3 and time.monotonic() - started < 2.0  # enrolled, lesson 1, "next lesson" line
    assert [m.to for m in sent] == [phone] * 3
    deadline = time.monotonic() + 5
    while True:  # the fake has them; their results are recorded right after
        with runtime.factory() as session:
            rows = list(session.scalars(select(OutboundMessage).order_by(OutboundMessage.id)))
        if all(r.status == "sent" for r in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert [r.status for r in rows] == ["sent"] * 3
    assert [r.provider_id for r in rows] == [m.sid for m in sent]  # in the order they were queued
    assert runtime.dispatcher._thread is None  # the dispatcher thread never ran
    assert runtime.wakes == []  # nor was it woken: it would race this thread for the same rows  # type: ignore


def test_a_failed_send_stays_queued_for_the_dispatcher(served: tuple[str, Runtime], settings: Any,
                                                       fake_twilio: FakeTwilio) -> None:
    from tests.fakes.twilio_api import Failure

    base, runtime = served
    fake_twilio.fail_next(Failure(500))
    assert post(base, settings, sms_form("+525512345679", "hola")).status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with runtime.factory() as session:
            [row] = session.scalars(select(OutboundMessage)).all()
        if row.attempts and row.status != "sending":  # tried, and its result recorded
            break
        time.sleep(0.01)
    assert (row.status, row.attempts, row.error_code) == ("queued", 1, "500")  # retried later, by the dispatcher
    deadline = time.monotonic() + 5
    while not runtime.wakes and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    assert len(runtime.wakes) == 1  # woken for the reply the request's thread could not send  # type: ignore
    assert row.next_attempt_at > row.created_at


def test_with_the_dispatcher_off_the_web_process_only_queues(settings: Any, fake_twilio: FakeTwilio) -> None:
    """VEREDA_DISPATCHER=off: replies wait in the outbox for a `vereda worker` (here: one dispatch pass)."""
    from bot.dispatcher import utcnow
    from tests.conftest import _close, _testing_app

    app = _testing_app(settings.with_(dispatcher=False))
    runtime: Runtime = app.extensions["vereda"]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        assert post(f"http://127.0.0.1:{server.port}", settings, sms_form("+525512345670", "hola")).status_code == 200
        time.sleep(0.5)
        assert fake_twilio.messages == [] and runtime.dispatcher._thread is None
        with runtime.factory() as session:
            assert [r.status for r in session.scalars(select(OutboundMessage))] == ["queued"]
        assert runtime.outbox.dispatch(utcnow).sent == 1  # what the worker's dispatcher does
        assert len(fake_twilio.messages) == 1
    finally:
        server.shutdown()
        _close(runtime)
