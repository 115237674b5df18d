"""Engine, sessions and schema migrations (Alembic, applied at start-up)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import Engine, create_engine, event, make_url, text
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
        # to 100 ms), so under load the busiest threads win, others (the dispatcher, one write per message)
        # starve, and a writer of another process (a 2nd gunicorn worker, the worker) sleeps long after the
        # lock came free. So writers queue instead: the threads of a process on a lock, the processes on an
        # advisory file lock beside the database (the kernel wakes the next one at once). BEGIN IMMEDIATE and
        # busy_timeout remain for writers that do not take part (another program on the same file).
        writer = _WriterLock(_lock_path(url))

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Any) -> None:
            # A deferred transaction that later writes can fail with SQLITE_BUSY without waiting;
            # taking the write lock up front makes concurrent writers queue instead.
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


def _lock_path(url: str) -> Path | None:
    """The file whose advisory lock the writers of an SQLite database queue on (None: in memory)."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).with_name(Path(database).name + ".writer-lock")


class _WriterLock:
    """One writer at a time: across the threads of a process (a re-entrant lock) and across processes
    (fcntl.flock on a file beside the database, opened anew in each process so that forked workers do not
    share one lock). Without fcntl (Windows) or a writable directory, only the threads of a process queue."""

    def __init__(self, path: Path | None) -> None:
        self._threads = threading.RLock()
        self._path = path if fcntl is not None else None
        self._depth = 0  # nesting within the thread that holds the lock
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int | None:
        if self._path is None:
            return None
        if self._pid != os.getpid():  # first use, or a child forked after it: open our own
            self._pid, self._fd = os.getpid(), None
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                self._path = None
        return self._fd

    def acquire(self) -> None:
        self._threads.acquire()
        if self._depth == 0:
            fd = self._file()
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    self._threads.release()
                    raise
        self._depth += 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None and self._pid == os.getpid():
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()


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
