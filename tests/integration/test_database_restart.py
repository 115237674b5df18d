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
