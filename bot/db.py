"""Engine, sessions and schema migrations (Alembic, applied at start-up)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x7665726564  # "vered": the advisory lock key that serialises schema migrations


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys, a busy timeout and write-first transactions."""
    # A database error's message would otherwise carry the statement's parameters (phone numbers, message
    # texts) into every log line and traceback that shows it.
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, open transactions, so BEGIN IMMEDIATE below holds.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        # SQLite has one writer at a time. Its busy handler makes a waiting writer poll with growing sleeps (up
        # to 100 ms), so under load the busiest threads win and others (the dispatcher, one write per message)
        # starve. Within a process, writers queue on this lock instead, in turn; between processes
        # (gunicorn workers), BEGIN IMMEDIATE and busy_timeout still decide.
        writer = threading.RLock()  # re-entrant: a 2nd connection in one thread fails as before, on busy_timeout

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Any) -> None:
            # A deferred transaction that later writes can fail with SQLITE_BUSY without waiting;
            # taking the write lock up front makes concurrent writers queue on busy_timeout instead.
            writer.acquire()
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                writer.release()
                raise
            connection.info["vereda_writer"] = True

        def _end(connection: Any) -> None:
            if connection.info.pop("vereda_writer", False):
                writer.release()

        event.listen(engine, "commit", _end)
        event.listen(engine, "rollback", _end)
        return engine
    # No pool_pre_ping: it costs a round trip per transaction (about 0.3 ms of CPU, on every message). After a
    # database restart the first use of each pooled connection fails instead, SQLAlchemy then drops the whole
    # pool, and the callers that must not lose anything (inbound messages, the dispatcher) try again.
    kwargs.setdefault("pool_recycle", 1800)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (creates it on an empty database)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Several gunicorn workers start at once: one migrates, the others wait and find it done.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
