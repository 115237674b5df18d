"""Shared by bench/drips.py, bench/dispatch.py and bench/broadcast.py: throw-away databases and bulk data.

Every database is new and empty: a SQLite file in a temporary folder, or a fresh PostgreSQL schema reached with
`?options=-csearch_path%3D<schema>`; both are removed when the `database()` block ends. The rows are made by the
database itself (one `INSERT … SELECT` over a number series per table), so seeding 100,000 learners takes seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Boolean, Engine, bindparam, create_engine, text

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot.models import UTCDateTime  # noqa: E402

POSTGRES_URL = os.environ.get("VEREDA_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
LESSONS = ROOT / "lessons"
ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "test-auth-token"
SMS_FROM = "+15005550006"
WHATSAPP_FROM = "whatsapp:+14155238886"


def postgres_up() -> bool:
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def backends(choice: str) -> list[str]:
    """`sqlite`, `postgresql` or `both` (PostgreSQL left out, with a note, when it does not answer)."""
    wanted = ["sqlite", "postgresql"] if choice == "both" else [choice]
    if "postgresql" in wanted and not postgres_up():
        print(f"PostgreSQL at {POSTGRES_URL} does not answer: skipped", file=sys.stderr)
        wanted.remove("postgresql")
    return wanted


@contextmanager
def database(backend: str) -> Iterator[str]:
    """The URL of a new empty database, removed afterwards."""
    if backend == "sqlite":
        folder = tempfile.mkdtemp(prefix="vereda-bench-")
        try:
            yield f"sqlite:///{folder}/vereda.db"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def settings_for(url: str, twilio_base_url: str = "http://127.0.0.1:9"):  # type: ignore[no-untyped-def]
    """Vereda's Settings for a benchmark: Twilio at `twilio_base_url` (the fake), RATE_LIMITS off, no threads."""
    from bot.config import Settings

    return Settings(database_url=url, lessons_dir=str(LESSONS), twilio_account_sid=ACCOUNT_SID,
                    twilio_auth_token=AUTH_TOKEN, twilio_sms_from=SMS_FROM, twilio_whatsapp_from=WHATSAPP_FROM,
                    twilio_api_base_url=twilio_base_url, rate_limits=None, scheduler=False, dispatcher=False,
                    log_level="WARNING")


def _series(engine: Engine) -> str:
    """A FROM item giving rows i = 1..:n."""
    if engine.dialect.name == "postgresql":
        return "generate_series(1, :n) AS s(i)"
    return "(WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :n) SELECT i FROM seq) AS s"


def typed(sql: str, **params: Any):  # type: ignore[no-untyped-def]
    """text(sql) with datetime and bool parameters bound through Vereda's column types."""
    statement = text(sql)
    binds = [bindparam(name, type_=UTCDateTime()) for name, value in params.items() if isinstance(value, datetime)]
    binds += [bindparam(name, type_=Boolean()) for name, value in params.items() if isinstance(value, bool)]
    return statement.bindparams(*binds) if binds else statement


def _run(engine: Engine, sql: str, **params: Any) -> None:
    with engine.begin() as connection:
        connection.execute(typed(sql, **params), params)


def phone(i: int) -> str:
    return f"+1{5550000000 + i}"


def seed_learners(engine: Engine, n: int, now: datetime, *, channel: str = "sms",
                  last_inbound_at: datetime | None = None, course: str | None = None,
                  due_at: datetime | None = None, position: int = 0) -> None:
    """Learners 1..n (half es, half en), one `channel` address each, and optionally an active enrolment each.

    Phones are +1 555 000 0001 and on (fictional numbers); the enrolment in `course` is at `position`
    (the lesson delivered last), no question open, due at `due_at`.
    """
    series = _series(engine)
    prefix = "'whatsapp:' || " if channel == "whatsapp" else ""
    _run(engine, f"""
        INSERT INTO learners (id, phone, telegram_chat_id, language, timezone, preferred_hour, opted_out_at,
                              current_course, pending, reasks, created_at)
        SELECT s.i, '+1' || (5550000000 + s.i), NULL, CASE WHEN s.i % 2 = 0 THEN 'en' ELSE 'es' END,
               'America/Mexico_City', NULL, NULL, :course, NULL, 0, :now
        FROM {series}""", n=n, now=now, course=course)
    _run(engine, f"""
        INSERT INTO learner_addresses (id, learner_id, channel, address, last_inbound_at)
        SELECT s.i, s.i, :channel, {prefix}'+1' || (5550000000 + s.i), :last_inbound_at FROM {series}""",
         n=n, channel=channel, last_inbound_at=last_inbound_at or now)
    if course is not None:
        _run(engine, f"""
            INSERT INTO enrolments (id, learner_id, course_id, channel, position, question, state, next_due_at,
                                    reminders, enrolled_at, lesson_sent_at, finished_at)
            SELECT s.i, s.i, :course, :channel, :position, NULL, 'active', :due_at, 0, :now, :now, NULL
            FROM {series}""", n=n, course=course, channel=channel, position=position, due_at=due_at or now,
             now=now)
    fix_sequences(engine)


def seed_outbox(engine: Engine, n: int, now: datetime, *, learners: int, channel: str = "sms",
                body: str = "Lección de prueba: " + "x" * 120) -> None:
    """n queued outbox rows (lessons, bulk priority), spread over learners 1..`learners`, due now."""
    series = _series(engine)
    prefix = "'whatsapp:' || " if channel == "whatsapp" else ""
    _run(engine, f"""
        INSERT INTO outbound_messages (idempotency_key, learner_id, channel, to_address, from_address, body, choices,
                                       ref, content_sid, content_variables, kind, priority, status, attempts,
                                       next_attempt_at, claimed_until, claim_token, provider_id, error_code,
                                       error_message, erase_after_send, broadcast_id, created_at, updated_at)
        SELECT 'bench:' || s.i, 1 + (s.i - 1) % :learners, :channel,
               {prefix}'+1' || (5550000000 + 1 + (s.i - 1) % :learners), NULL, :body, NULL, NULL, NULL, NULL,
               'lesson', 10, 'queued', 0, :now, NULL, NULL, NULL, NULL, NULL, :false, NULL, :now, :now
        FROM {series}""", n=n, learners=learners, channel=channel, body=body, now=now, false=False)
    fix_sequences(engine)


def fix_sequences(engine: Engine) -> None:
    """PostgreSQL: move each id sequence past the ids inserted explicitly."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as connection:
        for table in ("learners", "learner_addresses", "enrolments", "outbound_messages"):
            connection.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                    f"COALESCE((SELECT max(id) FROM {table}), 0) + 1, false)"))


def analyse(engine: Engine) -> None:
    """Fresh planner statistics (PostgreSQL: VACUUM ANALYZE; SQLite: ANALYZE), outside any transaction."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(text("VACUUM ANALYZE"))
        else:
            connection.execute(text("ANALYZE"))
            connection.commit()


def count(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(typed(sql, **params), params).scalar() or 0)


# -- child processes -----------------------------------------------------------------------------------------------
_children: list[subprocess.Popen[str]] = []


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    """Start a child in its own process group; `stop_all()` (also on exit) ends it."""
    proc = subprocess.Popen(args, text=True, start_new_session=True, **kwargs)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    if proc in _children:
        _children.remove(proc)


def stop_all() -> None:
    for proc in list(_children):
        stop(proc, timeout=5.0)


def on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def install_cleanup() -> None:
    """SIGTERM behaves like Ctrl-C, so `finally` blocks stop children and drop schemas."""
    signal.signal(signal.SIGTERM, on_sigterm)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
