"""A database that drops its connections (a restart, a failover) loses no inbound message."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, func, select, text

from bot.dispatcher import utcnow
from bot.models import InboundMessage, OutboundMessage
from bot.runtime import Runtime
from bot.services import Envelope, receive
from tests.conftest import POSTGRES_URL


def kill_pooled_connections(runtime: Runtime) -> int:
    """Terminate, from another session, the server process behind each connection of the app's pool."""
    with runtime.engine.connect() as connection:
        pid = connection.scalar(text("SELECT pg_backend_pid()"))
    admin = create_engine(POSTGRES_URL)
    with admin.connect() as connection:
        killed = connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()
    return int(bool(killed))


def hola(runtime: Runtime) -> bool:
    envelope = Envelope(channel="sms", provider_id="SM" + uuid.uuid4().hex, address="+525512345678", text="hola",
                        to="+15005550006")
    return receive(runtime.factory, envelope, runtime.context(utcnow()), runtime.senders).duplicate


def test_an_inbound_message_survives_dropped_database_connections(runtime: Runtime) -> None:
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop connections")
    assert hola(runtime) is False
    assert kill_pooled_connections(runtime) == 1
    assert hola(runtime) is False  # the dead pooled connection fails, the pool is renewed, the retry stores it
    with runtime.factory() as session:
        assert session.scalar(select(func.count()).select_from(InboundMessage)) == 2
        assert session.scalar(select(func.count()).select_from(OutboundMessage)) >= 2


def test_a_database_error_never_logs_a_phone_number_or_a_text(runtime: Runtime) -> None:
    """A database error quoted in a log line or traceback: no statement parameters (hide_parameters), and the
    value the database itself quotes back (PostgreSQL: "Key (phone)=(…) already exists") masked by the
    formatter every Vereda log handler uses."""
    import io
    import logging

    from sqlalchemy.exc import IntegrityError

    from bot.logs import RedactingFormatter
    from bot.models import Learner

    hola(runtime)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s %(message)s"))
    log = logging.getLogger("vereda.test")
    log.addHandler(handler)
    try:
        with pytest.raises(IntegrityError) as raised, runtime.factory() as session, session.begin():
            session.add(Learner(phone="+525512345678", language="es", reasks=0, created_at=utcnow(),
                                pending="texto privado"))
        assert "hidden due to hide_parameters" in str(raised.value)
        assert "texto privado" not in str(raised.value)
        try:
            raise raised.value
        except IntegrityError:
            log.exception("storing a learner failed")
    finally:
        log.removeHandler(handler)
    logged = stream.getvalue()
    assert "storing a learner failed" in logged and "IntegrityError" in logged
    assert "5512345678" not in logged and "texto privado" not in logged


def test_redact_masks_phone_numbers_and_keeps_the_rest() -> None:
    from bot.logs import redact

    assert redact("Key (phone)=(+525512345678) already exists") == "Key (phone)=(+•••5678) already exists"
    assert redact("chat 123456789 blocked") == "chat •••6789 blocked"
    assert redact("2026-12-03 17:32:03,607 INFO inbound 42 from •••5678") == \
        "2026-12-03 17:32:03,607 INFO inbound 42 from •••5678"
    # an access-log line: its query string (a number in any spelling, a broadcast's text) is left out, and
    # the development server's colour codes with it
    line = ('127.0.0.1 - - [04/Dec/2026 22:41:05] "GET /simulator?channel=sms&address=%2B52-55-8765-4321 '
            'HTTP/1.1" 200 -')
    assert redact(line) == '127.0.0.1 - - [04/Dec/2026 22:41:05] "GET /simulator?… HTTP/1.1" 200 -'
    assert redact('"GET /console/estimate?text_es=Reunion+secreta HTTP/1.1" 200 -') == \
        '"GET /console/estimate?… HTTP/1.1" 200 -'
    assert redact('"POST /webhooks/twilio HTTP/1.1" 200 -') == '"POST /webhooks/twilio HTTP/1.1" 200 -'
    assert redact("\x1b[31m\x1b[1mWARNING: development server\x1b[0m") == "WARNING: development server"
