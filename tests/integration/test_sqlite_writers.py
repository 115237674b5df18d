"""SQLite writers of several processes (gunicorn workers, `vereda worker`) queue on one lock beside the database."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.db import _lock_path, make_engine

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks")
FORK = multiprocessing.get_context("fork")


def _hold_a_write_transaction(url: str, holding: object, release: object) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO counter (n) VALUES (1)"))
        holding.set()  # type: ignore[attr-defined]
        release.wait(10)  # type: ignore[attr-defined]
    engine.dispose()


def _count_up(url: str, times: int) -> None:
    engine = make_engine(url)
    for _ in range(times):
        with engine.begin() as connection:
            value = connection.execute(text("SELECT max(n) FROM counter")).scalar() or 0
            connection.execute(text("INSERT INTO counter (n) VALUES (:n)"), {"n": value + 1})
    engine.dispose()


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counter (n INTEGER)"))
    engine.dispose()
    return url


def test_the_lock_file_sits_beside_the_database_and_memory_databases_have_none(tmp_path: Path) -> None:
    assert _lock_path(f"sqlite:///{tmp_path / 'v.db'}") == tmp_path / "v.db.writer-lock"
    assert _lock_path("sqlite://") is None
    assert _lock_path("sqlite:///:memory:") is None


def test_a_writer_of_another_process_waits_on_the_lock_and_gets_it_when_it_comes_free(url: str) -> None:
    holding, release = FORK.Event(), FORK.Event()
    other = FORK.Process(target=_hold_a_write_transaction, args=(url, holding, release))
    other.start()
    try:
        assert holding.wait(10)
        # The other process's transaction holds the lock file.
        fd = os.open(_lock_path(url), os.O_RDWR)  # type: ignore[arg-type]
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        engine = make_engine(url)
        began = threading.Event()

        def write() -> None:
            with engine.begin() as connection:
                began.set()
                connection.execute(text("INSERT INTO counter (n) VALUES (2)"))

        writer = threading.Thread(target=write)
        writer.start()
        # The other process holds the lock: our transaction cannot even begin.
        assert not began.wait(0.5)
        released_at = time.monotonic()
        release.set()
        assert began.wait(10)
        # The kernel hands the lock over at once (SQLite's busy handler would sleep up to 100 ms a try).
        assert time.monotonic() - released_at < 2.0
        writer.join(10)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once every transaction ended
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        with engine.connect() as connection:
            assert sorted(connection.execute(text("SELECT n FROM counter")).scalars()) == [1, 2]
        engine.dispose()
    finally:
        release.set()
        other.join(10)


def test_processes_forked_from_one_engine_and_threads_write_in_turn_and_lose_nothing(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:  # the lock file is opened in this process before the fork
        connection.execute(text("INSERT INTO counter (n) VALUES (0)"))
    children = [FORK.Process(target=_count_up, args=(url, 100)) for _ in range(3)]
    threads = [threading.Thread(target=_count_up, args=(url, 100)) for _ in range(2)]
    for worker in [*children, *threads]:
        worker.start()
    for worker in [*children, *threads]:
        worker.join(60)
    assert all(child.exitcode == 0 for child in children)
    with engine.connect() as connection:
        # Each increment read the maximum and wrote one more inside one transaction: with writers in turn,
        # 500 increments give 500 distinct values and nothing lost.
        values = list(connection.execute(text("SELECT n FROM counter ORDER BY n")).scalars())
    assert values == list(range(501))
    engine.dispose()
