"""The coordinators' console and API queries on a large database: dashboard, course page, learner list, course stats
and the streamed CSV exports.

    python bench/console.py [--learners 100000] [--answers 1000000] [--outbox N] [--runs 5]
                            [--backend postgresql|sqlite|both] [--no-tracemalloc] [--explain]

For each backend, in a fresh database (a new PostgreSQL schema, or a SQLite file in a temporary folder; removed
afterwards) made by `bot.db.migrate`, so the real indexes are measured, the database itself seeds (one
`INSERT … SELECT` over a number series per table, see seed()):

- learners: 50 % SMS, 30 % WhatsApp (10 % of all also have an SMS address), 20 % Telegram; half es, half en;
  5 % opted out (some today); created over the last year;
- enrolments in the two bundled courses (90 % of the learners in seguridad-humana, 50 % in ruta-segura), at every
  position, 60 % active, 15 % paused, 25 % finished; a quarter of the active ones with a question open;
- answers: the first answers to every question of the lessons each enrolment has received, 70 % right; when that
  is more than --answers, some enrolments have none (learners who never answered), to make exactly --answers;
- tags: a third of the learners in one of ten groups (`grupo-0` … `grupo-9`), a quarter in `region-norte`;
- the outbox (default 4 rows per learner): 60 % created today up to `now` (20:00 UTC), the rest over the six days
  before; lessons, replies, reminders and broadcasts; delivered, sent, read, failed, queued (half due),
  held, sending, cancelled, unknown;
- one simulator learner (console transport), which the dashboard and the course statistics must not count.

Then it times, --runs times each after one warm-up, the exact functions the console and the API call
(`dashboard_numbers`, `course_analysis` per course, `list_learners` page 1 with the default filters, a course filter
and a tag filter, `course_stats`) and prints min/median/max ms with PASS when the median is under 300 ms. Finally it
streams both CSV exports (`export_progress`, `export_answers`) to the end: rows/s with the resident memory sampled
every 10 ms, then once more under tracemalloc, with the Python allocations' peak after the first 10 % of the rows
and at the end: a flat export has the same peak at both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _data  # noqa: E402
from sqlalchemy import Engine  # noqa: E402

GOAL_MS = 300.0
TAG = "grupo-3"
CHANNEL_OF = {0: "sms", 1: "sms", 2: "sms", 3: "sms", 4: "sms", 5: "whatsapp", 6: "whatsapp", 7: "whatsapp",
              8: "telegram", 9: "telegram"}  # by learner id % 10
SIMULATOR_PHONE = "+15555550100"


# -- seeding --------------------------------------------------------------------------------------------------------


def _ago(engine: Engine, seconds: str, base: str = ":now") -> str:
    """SQL for `base` minus `seconds` (an integer SQL expression), in the column format of each backend."""
    if engine.dialect.name == "postgresql":
        return f"(CAST({base} AS timestamptz) - ({seconds}) * interval '1 second')"
    return f"strftime('%Y-%m-%d %H:%M:%S.000000', {base}, (-({seconds})) || ' seconds')"


def _channel(column: str) -> str:
    return f"CASE WHEN {column} % 10 < 5 THEN 'sms' WHEN {column} % 10 < 8 THEN 'whatsapp' ELSE 'telegram' END"


def _slots(catalog: Any) -> str:
    """A CTE `slots(course_id, lessons, k, lesson, question, answer, options)`: every quiz question of each course."""
    rows = []
    for course in catalog.courses:
        k = 0
        for li, lesson in enumerate(course.lessons):
            for qi, question in enumerate(lesson.quiz):
                rows.append(f"('{course.id}', {len(course.lessons)}, {k}, {li}, {qi}, {question.answer}, "
                            f"{len(question.options)})")
                k += 1
    return "slots(course_id, lessons, k, lesson, question, answer, options) AS (VALUES " + ", ".join(rows) + ")"


def seed(engine: Engine, catalog: Any, n: int, answers: int, outbox: int, now: datetime) -> dict[str, int]:
    run = _data._run
    series = _data._series(engine)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    since_midnight = int((now - today).total_seconds())
    # learners: channel by id % 10; telegram learners have a chat id and no phone
    run(engine, f"""
        INSERT INTO learners (id, phone, telegram_chat_id, language, timezone, preferred_hour, opted_out_at,
                              opted_out_by, current_course, pending, reasks, created_at)
        SELECT s.i, CASE WHEN s.i % 10 < 8 THEN '+1' || (5550000000 + s.i) END,
               CASE WHEN s.i % 10 >= 8 THEN 700000000 + s.i END,
               CASE WHEN s.i % 2 = 0 THEN 'en' ELSE 'es' END, 'America/Mexico_City', NULL,
               CASE WHEN s.i % 20 = 7 THEN {_ago(engine, "(s.i * 997) % (86400 * 30)")}
                    WHEN s.i % 200 = 13 THEN {_ago(engine, "(s.i * 7) % :since_midnight")} END,
               CASE WHEN s.i % 20 = 7 OR s.i % 200 = 13 THEN 'keyword' END,
               CASE WHEN s.i % 3 = 1 THEN 'ruta-segura' ELSE 'seguridad-humana' END, NULL, 0,
               {_ago(engine, "86400 * 7 + (s.i * 1009) % (86400 * 365)")}
        FROM {series}""", n=n, now=now, since_midnight=since_midnight)
    # one address per learner on its channel; 10 % of the WhatsApp learners also write by SMS
    run(engine, f"""
        INSERT INTO learner_addresses (id, learner_id, channel, address, last_inbound_at)
        SELECT s.i, s.i, {_channel("s.i")},
               CASE WHEN s.i % 10 < 5 THEN '+1' || (5550000000 + s.i)
                    WHEN s.i % 10 < 8 THEN 'whatsapp:+1' || (5550000000 + s.i)
                    ELSE '' || (700000000 + s.i) END,
               {_ago(engine, "(s.i * 1013) % (86400 * 3)")}
        FROM {series}""", n=n, now=now)
    run(engine, f"""
        INSERT INTO learner_addresses (id, learner_id, channel, address, last_inbound_at)
        SELECT :n + s.i, s.i, 'sms', '+1' || (5550000000 + s.i), {_ago(engine, "(s.i * 997) % (86400 * 20)")}
        FROM {series} WHERE s.i % 10 = 5""", n=n, now=now)
    # enrolments: id 2i-1 in seguridad-humana (nine learners in ten), id 2i in ruta-segura (every other learner)
    for offset, course, where in ((1, "seguridad-humana", "s.i % 10 <> 9"), (0, "ruta-segura", "s.i % 2 = 0")):
        lessons = len(catalog.get(course).lessons)
        h = f"((s.i / 3 + {7 * offset}) % 20)"  # the state's draw, different in each course
        state = f"CASE WHEN {h} < 12 THEN 'active' WHEN {h} < 15 THEN 'paused' ELSE 'finished' END"
        run(engine, f"""
            INSERT INTO enrolments (id, learner_id, course_id, channel, position, question, state, next_due_at,
                                    reminders, enrolled_at, lesson_sent_at, finished_at)
            SELECT 2 * s.i - {offset}, s.i, :course, {_channel("s.i")},
                   CASE WHEN {h} >= 15 THEN :last ELSE (s.i * 5 + s.i / 11) % :lessons END,
                   CASE WHEN {h} < 12 AND s.i % 4 = 0 THEN 0 END,
                   {state},
                   CASE WHEN {h} < 12 THEN {_ago(engine, "-((s.i * 13) % 86400)")} END,
                   0, {_ago(engine, "86400 * 2 + (s.i * 1009) % (86400 * 180)")},
                   {_ago(engine, "(s.i * 31) % (86400 * 2)")},
                   CASE WHEN {h} >= 15 THEN {_ago(engine, "(s.i * 97) % (86400 * 60)")} END
            FROM {series} WHERE {where}""", n=n, now=now, course=course, lessons=lessons, last=lessons - 1)
    # answers: first answers to the questions of every lesson received (not the open one), 70 % right; when that
    # makes more than --answers, whole enrolments are left without answers (learners who never answered)
    answered = "(s.lesson < e.position OR (s.lesson = e.position AND e.question IS NULL))"
    possible = _data.count(engine, f"""
        WITH {_slots(catalog)}
        SELECT count(*) FROM enrolments e JOIN slots s ON s.course_id = e.course_id WHERE {answered}""")
    keep = min(1000, -(-1000 * answers // max(possible, 1)) + 5)  # per mille of enrolments that answered
    run(engine, f"""
        WITH {_slots(catalog)}
        INSERT INTO answers (enrolment_id, course_id, lesson, question, choice, correct, answered_at)
        SELECT e.id, e.course_id, s.lesson, s.question,
               CASE WHEN (e.id * 31 + s.k * 17) % 10 < 7 THEN s.answer
                    ELSE (s.answer + (e.id + s.k) % (s.options - 1)) % s.options + 1 END,
               (e.id * 31 + s.k * 17) % 10 < 7,
               {_ago(engine, "(e.id * 7 + s.k * 3607) % (86400 * 90)")}
        FROM enrolments e JOIN slots s ON s.course_id = e.course_id
        WHERE {answered} AND (e.id * 7) % 1000 < :keep
        LIMIT :answers""", answers=answers, now=now, keep=keep)
    run(engine, f"""
        INSERT INTO learner_tags (learner_id, tag)
        SELECT s.i, 'grupo-' || (s.i % 10) FROM {series} WHERE s.i % 3 = 0""", n=n)
    run(engine, f"""
        INSERT INTO learner_tags (learner_id, tag)
        SELECT s.i, 'region-norte' FROM {series} WHERE s.i % 4 = 1""", n=n)
    # the outbox: 60 % today (before now), 40 % over the six days before; learner = 1 + (j - 1) % n
    learner = "(1 + (s.i - 1) % :learners)"
    today_rows = outbox * 6 // 10
    status = """CASE WHEN s.i % 100 < 55 THEN 'delivered' WHEN s.i % 100 < 72 THEN 'sent'
                     WHEN s.i % 100 < 77 THEN 'failed' WHEN s.i % 100 < 79 THEN 'read'
                     WHEN s.i > :today_rows THEN 'delivered'
                     WHEN s.i % 100 < 90 THEN 'queued' WHEN s.i % 100 < 93 THEN 'held'
                     WHEN s.i % 100 < 95 THEN 'sending' WHEN s.i % 100 < 97 THEN 'cancelled' ELSE 'unknown' END"""
    created = (f"CASE WHEN s.i <= :today_rows THEN {_ago(engine, '(s.i * 997) % :since_midnight')} "
               f"ELSE {_ago(engine, ':since_midnight + 1 + (s.i * 997) % (86400 * 6)')} END")
    run(engine, f"""
        INSERT INTO outbound_messages (idempotency_key, learner_id, channel, to_address, from_address, body, choices,
                                       ref, content_sid, content_variables, kind, priority, status, attempts,
                                       next_attempt_at, claimed_until, claim_token, provider_id, error_code,
                                       error_message, erase_after_send, broadcast_id, created_at, updated_at)
        SELECT 'bench:' || s.i, {learner}, {_channel(learner)},
               CASE WHEN {learner} % 10 < 5 THEN '+1' || (5550000000 + {learner})
                    WHEN {learner} % 10 < 8 THEN 'whatsapp:+1' || (5550000000 + {learner})
                    ELSE '' || (700000000 + {learner}) END,
               NULL, :body, NULL, NULL, NULL, NULL,
               CASE WHEN (s.i / 7) % 20 < 12 THEN 'lesson' WHEN (s.i / 7) % 20 < 17 THEN 'reply'
                    WHEN (s.i / 7) % 20 < 19 THEN 'reminder' ELSE 'broadcast' END,
               CASE WHEN (s.i / 7) % 20 BETWEEN 12 AND 16 THEN 0 ELSE 10 END,
               {status}, 1,
               CASE WHEN s.i % 100 BETWEEN 79 AND 89 AND s.i % 2 = 0
                    THEN {_ago(engine, "-(1 + s.i % 3600)")} ELSE {created} END,
               NULL, NULL, CASE WHEN s.i % 100 < 79 OR s.i > :today_rows THEN 'SM' || s.i END,
               CASE WHEN s.i % 100 BETWEEN 72 AND 76 AND s.i <= :today_rows THEN '30003' END,
               NULL, :false, NULL, {created}, {created}
        FROM {series}""", n=outbox, learners=n, today_rows=today_rows, since_midnight=since_midnight, now=now,
        body="Lección de prueba: " + "x" * 120, false=False)
    # one learner of the browser simulator: console transport for its address, enrolment and messages
    run(engine, f"""
        INSERT INTO learners (id, phone, language, timezone, current_course, reasks, created_at)
        VALUES (:n + 1, :phone, 'es', 'America/Mexico_City', 'ruta-segura', 0, {_ago(engine, "60")})""",
        n=n, phone=SIMULATOR_PHONE, now=now)
    run(engine, f"""
        INSERT INTO learner_addresses (id, learner_id, channel, address, last_inbound_at)
        VALUES (2 * :n + 1, :n + 1, 'console', :phone, {_ago(engine, "60")})""", n=n, phone=SIMULATOR_PHONE, now=now)
    run(engine, f"""
        INSERT INTO enrolments (id, learner_id, course_id, channel, position, question, state, next_due_at,
                                reminders, enrolled_at, lesson_sent_at, finished_at)
        VALUES (2 * :n + 1, :n + 1, 'ruta-segura', 'console', 0, 0, 'active', NULL, 0, {_ago(engine, "60")},
                {_ago(engine, "60")}, NULL)""", n=n, now=now)
    _data.fix_sequences(engine)
    with _data.Timer() as vacuum:
        _data.analyse(engine)
    counts = {table: _data.count(engine, f"SELECT count(*) FROM {table}")
              for table in ("learners", "learner_addresses", "enrolments", "answers", "learner_tags",
                            "outbound_messages")}
    counts["analyse_ms"] = int(vacuum.seconds * 1000)
    return counts


# -- timing ---------------------------------------------------------------------------------------------------------


def timed(call: Callable[[], object], runs: int) -> list[float]:
    call()  # warm-up: plans, caches, SQLAlchemy's compiled statements
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def queries(factory: Any, catalog: Any, now: datetime) -> list[tuple[str, Callable[[], object]]]:
    from bot import reports
    from bot.web.access import mask_address
    from bot.web.console import course_analysis, dashboard_numbers

    def with_session(function: Callable[[Any], object]) -> Callable[[], object]:
        def call() -> object:
            with factory() as session:
                return function(session)
        return call

    def masked(address: str | None) -> str:
        return mask_address(address, "viewer")

    def listing(filters: reports.LearnerFilter) -> Callable[[], object]:
        return with_session(lambda s: reports.list_learners(s, catalog, filters, 1, 50, masked))

    out: list[tuple[str, Callable[[], object]]] = [
        ("dashboard_numbers", with_session(lambda s: dashboard_numbers(s, now)))]
    for course in catalog.courses:
        out.append((f"course_analysis {course.id}", with_session(lambda s, c=course: course_analysis(s, c))))
    out += [
        ("list_learners (no filter)", listing(reports.LearnerFilter())),
        ("list_learners course=seguridad-humana", listing(reports.LearnerFilter(course="seguridad-humana"))),
        (f"list_learners tag={TAG}", listing(reports.LearnerFilter(tag=TAG))),
        ("course_stats", with_session(lambda s: reports.course_stats(s, catalog))),
    ]
    return out


# -- exports --------------------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


class RssSampler:
    """The process's resident memory, sampled every 10 ms in a thread; `peak` is the highest sample."""

    def __enter__(self) -> RssSampler:
        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def consume(chunks: Iterator[str], marks: list[int] | None = None,
            on_mark: Callable[[int], None] | None = None) -> tuple[int, int]:
    """(data rows, bytes) of a CSV stream; `on_mark(rows)` when the row count passes each of `marks`."""
    rows = size = 0
    pending = sorted(marks or [])
    for chunk in chunks:
        rows += chunk.count("\r\n")
        size += len(chunk.encode())
        while pending and rows >= pending[0] and on_mark is not None:
            on_mark(pending.pop(0))
    return rows - 1, size  # the header line is not a row


def exports(factory: Any, catalog: Any, with_tracemalloc: bool) -> list[dict[str, Any]]:
    from bot import reports
    from bot.web.access import mask_address

    def masked(address: str | None) -> str:
        return mask_address(address, "viewer")

    out = []
    for name, make in (("export_progress", lambda: reports.export_progress(factory, catalog, masked)),
                       ("export_answers", lambda: reports.export_answers(factory, masked))):
        with RssSampler() as rss, _data.Timer() as timer:
            rows, size = consume(make())
        result: dict[str, Any] = {"name": name, "rows": rows, "mb": size / 2**20, "seconds": timer.seconds,
                                  "rss_growth_mb": rss.peak - rss.start}
        if with_tracemalloc:
            peaks: dict[int, float] = {}

            def mark_peak(mark: int, peaks: dict[int, float] = peaks) -> None:
                peaks[mark] = tracemalloc.get_traced_memory()[1]

            tracemalloc.start()
            marks = [max(rows // 10, 1)]
            consume(make(), marks, mark_peak)
            result["traced_peak_10pct_mb"] = peaks.get(marks[0], 0.0) / 2**20
            result["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        out.append(result)
    return out


# -- main -----------------------------------------------------------------------------------------------------------


def bench(backend: str, args: argparse.Namespace) -> None:
    from bot.catalog import load_catalog
    from bot.db import make_engine, make_sessionmaker, migrate

    catalog, problems = load_catalog(_data.LESSONS)
    assert not problems, problems
    now = datetime.now(UTC).replace(hour=20, minute=0, second=0, microsecond=0)
    with _data.database(backend) as url:
        engine = make_engine(url)
        migrate(engine)
        with _data.Timer() as seeding:
            counts = seed(engine, catalog, args.learners, args.answers, args.outbox, now)
        print(f"[{backend}] seeded in {seeding.seconds:.1f} s: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()),
              flush=True)
        factory = make_sessionmaker(engine)
        if args.explain and backend == "postgresql":
            explain_all(engine, factory, catalog, now)
        rows = []
        for name, call in queries(factory, catalog, now):
            ms = timed(call, args.runs)
            median = statistics.median(ms)
            rows.append([name, f"{min(ms):.1f}", f"{median:.1f}", f"{max(ms):.1f}", _data.verdict(median < GOAL_MS)])
        print(f"\n[{backend}] {args.learners:,} learners, {counts['answers']:,} answers, "
              f"{counts['outbound_messages']:,} outbox rows; {args.runs} runs each after a warm-up "
              f"(goal: median under {GOAL_MS:.0f} ms)")
        print(_data.table(["query", "min ms", "median ms", "max ms", "result"], rows), flush=True)
        results = exports(factory, catalog, not args.no_tracemalloc)
        table = []
        for r in results:
            table.append([r["name"], f"{r['rows']:,}", f"{r['mb']:.1f}", f"{r['seconds']:.1f}",
                          f"{r['rows'] / r['seconds']:,.0f}", f"{r['rss_growth_mb']:+.1f}",
                          f"{r['traced_peak_10pct_mb']:.2f} / {r['traced_peak_mb']:.2f}"
                          if "traced_peak_mb" in r else "-"])
        print(f"\n[{backend}] CSV exports, streamed to the end (RSS sampled every 10 ms; tracemalloc peak after "
              f"10 % of the rows / at the end, in a second pass)")
        print(_data.table(["export", "rows", "MB", "s", "rows/s", "RSS growth MB", "traced peak MB 10% / 100%"],
                          table), flush=True)
        engine.dispose()


def explain_all(engine: Engine, factory: Any, catalog: Any, now: datetime) -> None:
    """Print EXPLAIN ANALYZE of every SELECT the timed functions send (PostgreSQL), slowest first."""
    from sqlalchemy import event

    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    for _name, call in queries(factory, catalog, now):
        call()
    event.remove(engine, "before_cursor_execute", record)
    plans = []
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        for statement, parameters in seen:
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            with raw.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
                plan = "\n".join(row[0] for row in cursor.fetchall())
            took = float(plan.rsplit("Execution Time: ", 1)[1].split(" ")[0])
            plans.append((took, statement, plan))
    for took, statement, plan in sorted(plans, key=lambda p: p[0], reverse=True)[:8]:
        print(f"\n--- {took:.1f} ms\n{statement}\n{plan}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="postgresql")
    parser.add_argument("--learners", type=int, default=100_000)
    parser.add_argument("--answers", type=int, default=1_000_000)
    parser.add_argument("--outbox", type=int, default=None, help="outbox rows (default: 4 per learner)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the second export pass")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the statements (PostgreSQL)")
    args = parser.parse_args()
    if args.outbox is None:
        args.outbox = 4 * args.learners
    _data.install_cleanup()
    for backend in _data.backends(args.backend):
        bench(backend, args)


if __name__ == "__main__":
    main()
