"""Drip planning: Vereda's `plan_drips` (the planning phase of `tick`) against a hand-written INSERT … SELECT.

    python bench/drips.py [--backend sqlite|postgresql|both] [--n 100000] [--planners 1] [--max-seconds 900]

For each backend, in a fresh database (a SQLite file in a temporary folder, or a new PostgreSQL schema dropped
afterwards): n learners (half es, half en), an SMS address each and an active enrolment each in
seguridad-humana, at position 0 with no question open and due an hour ago, made with bulk INSERT … SELECT. Then:

1. the floor: one INSERT … SELECT that creates the outbox rows Vereda would (lesson 2 and its first question,
   rendered once per language through the conversation and the SMS sender, joined to every due enrolment),
   timed, its rows fingerprinted, then deleted (and the tables vacuumed) untimed;
2. Vereda: `plan_drips(factory, ctx, senders)` with its default limit, called again and again as `tick` would
   until it plans nothing more (with `--planners K`, K processes do so at once, as concurrent ticks would).

It prints outbox rows/s for both, the ratio (goal: Vereda within 3x of the floor), and checks that Vereda made
exactly the floor's rows and moved every enrolment on. Only the database is touched (no sending).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, Text, bindparam, text

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _data  # noqa: E402

COURSE = "seguridad-humana"
GOAL_RATIO = 3.0
FINGERPRINT = ("idempotency_key, learner_id, channel, to_address, from_address, body, choices, ref, content_sid, "
               "content_variables, kind, priority, status, attempts, error_message, erase_after_send, broadcast_id")


def floor_messages(runtime, now: datetime, position: int) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """What Vereda sends for lesson position+1 of COURSE on SMS, per language: computed once, joined in SQL."""
    from bot import conversation as conv

    course = runtime.catalog.get(COURSE)
    sender = runtime.senders["sms"]
    rows = []
    for language in ("es", "en"):
        learner = conv.LearnerState(language=language, timezone="America/Mexico_City")
        enrolment = conv.EnrolmentState(course_id=COURSE, channel="sms", position=position)
        out: list[conv.Outbound] = []
        conv.deliver_lesson(learner, course, enrolment, position + 1, "sms", runtime.context(now), out)
        assert enrolment.next_due_at is not None and enrolment.question == 0, "the floor assumes a quiz lesson"
        for n, message in enumerate(out):
            for part_no, part in enumerate(sender.render("sms", message.text, message.choices, message.quick_reply)):
                rows.append({"course_id": COURSE, "language": language, "channel": "sms", "n": n, "part": part_no,
                             "body": part.body, "choices": list(part.buttons) or None, "ref": message.ref})
    return rows


def run_floor(runtime, now: datetime, position: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    engine = runtime.engine
    messages = Table("bench_floor_messages", MetaData(), Column("course_id", String(64)),
                     Column("language", String(8)), Column("channel", String(16)), Column("n", Integer),
                     Column("part", Integer), Column("body", Text), Column("choices", JSON), Column("ref", String(96)))
    messages.create(engine)
    with engine.begin() as connection:
        connection.execute(messages.insert(), floor_messages(runtime, now, position))
    _data.analyse(engine)
    statement = text("""
        INSERT INTO outbound_messages (idempotency_key, learner_id, channel, to_address, from_address, body, choices,
                                       ref, content_sid, content_variables, kind, priority, status, attempts,
                                       next_attempt_at, error_message, erase_after_send, created_at, updated_at)
        SELECT 'lesson:' || e.id || ':' || (e.position + 1) || ':' || m.n || ':' || m.part, e.learner_id, e.channel,
               a.address, NULL, m.body, m.choices, m.ref, NULL, NULL, 'lesson', 10, 'queued', 0, :now, NULL, :false,
               :now, :now
        FROM enrolments e
        JOIN learners l ON l.id = e.learner_id
        JOIN learner_addresses a ON a.learner_id = e.learner_id AND a.channel = e.channel
        JOIN bench_floor_messages m ON m.course_id = e.course_id AND m.language = l.language AND m.channel = e.channel
        WHERE e.state = 'active' AND e.next_due_at <= :now AND l.opted_out_at IS NULL
    """).bindparams(bindparam("now", type_=_data.UTCDateTime()), bindparam("false", type_=_data.Boolean()))
    with _data.Timer() as timer, engine.begin() as connection:
        rows = connection.execute(statement, {"now": now, "false": False}).rowcount
    messages.drop(engine)
    return timer.seconds, int(rows)


def fingerprint(engine) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    digest = hashlib.sha256()
    rows = 0
    with engine.connect() as connection:
        result = connection.execute(text(f"SELECT {FINGERPRINT} FROM outbound_messages ORDER BY idempotency_key"))
        for row in result:
            values = list(row)
            for column in (6, 9):  # JSON comes back as text on SQLite; JSON null and SQL NULL are both None
                if isinstance(values[column], str):
                    values[column] = json.loads(values[column])
            values[15] = bool(values[15])
            digest.update(repr(values).encode())
            rows += 1
    return rows, digest.hexdigest()


def plan_until_done(runtime, now: datetime, max_seconds: float) -> tuple[int, bool]:  # type: ignore[no-untyped-def]
    """Call plan_drips as successive ticks would, until it plans nothing; (enrolments planned, finished)."""
    from bot.drips import plan_drips

    planned = 0
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        done = plan_drips(runtime.factory, runtime.context(now), runtime.senders)
        planned += done
        if done == 0:
            return planned, True
    return planned, False


def child(url: str, now_text: str, max_seconds: float) -> None:
    """One planner process (--planners K): build the runtime, wait for 'go' on stdin, plan, print the result."""
    from bot.runtime import build

    runtime = build(_data.settings_for(url))
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    planned, finished = plan_until_done(runtime, datetime.fromisoformat(now_text), max_seconds)
    print(json.dumps({"planned": planned, "finished": finished, "seconds": time.perf_counter() - started}),
          flush=True)
    runtime.engine.dispose()


def run_vereda(url: str, runtime, now: datetime, planners: int,  # type: ignore[no-untyped-def]
               max_seconds: float) -> tuple[float, int, bool]:
    if planners == 1:
        with _data.Timer() as timer:
            planned, finished = plan_until_done(runtime, now, max_seconds)
        return timer.seconds, planned, finished
    procs = [_data.spawn([sys.executable, __file__, "--child", url, now.isoformat(), str(max_seconds)],
                         stdin=_data.subprocess.PIPE, stdout=_data.subprocess.PIPE) for _ in range(planners)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", "a planner did not start"
    with _data.Timer() as timer:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            assert proc.stdout is not None
            results.append(json.loads(proc.stdout.readline()))
    for proc in procs:
        proc.wait(30)
        _data.stop(proc)
    print(f"    planners: {[r['planned'] for r in results]} enrolment(s) each", flush=True)
    return timer.seconds, sum(r["planned"] for r in results), all(r["finished"] for r in results)


def bench(backend: str, n: int, planners: int, max_seconds: float) -> list[str]:
    from bot.runtime import build

    # 17:00 UTC is 11:00 in Mexico City, the learners' zone: outside the quiet hours (drips due during them are
    # moved to the morning instead of planned), whatever the time the benchmark runs.
    now = datetime.now(UTC).replace(hour=17, minute=0, second=0, microsecond=0)
    with _data.database(backend) as url:
        runtime = build(_data.settings_for(url))
        engine = runtime.engine
        with _data.Timer() as seeding:
            _data.seed_learners(engine, n, now, course=COURSE, due_at=now - timedelta(hours=1), position=0)
            _data.analyse(engine)
        print(f"[{backend}] seeded {n} learners, addresses and due enrolments in {seeding.seconds:.1f} s", flush=True)

        floor_s, floor_rows = run_floor(runtime, now, 0)
        floor_count, floor_print = fingerprint(engine)
        print(f"[{backend}] floor: {floor_rows} outbox rows in {floor_s:.2f} s", flush=True)
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM outbound_messages"))
        _data.analyse(engine)

        vereda_s, planned, finished = run_vereda(url, runtime, now, planners, max_seconds)
        vereda_rows = _data.count(engine, "SELECT count(*) FROM outbound_messages")
        print(f"[{backend}] vereda: {planned} enrolment(s) planned, {vereda_rows} outbox rows in {vereda_s:.2f} s"
              f"{'' if finished else ' (stopped at --max-seconds)'}", flush=True)
        checks = []
        if finished:
            vereda_count, vereda_print = fingerprint(engine)
            checks.append("same rows" if (vereda_count, vereda_print) == (floor_count, floor_print)
                          else f"ROWS DIFFER ({vereda_count} vs {floor_count})")
            moved = _data.count(engine, "SELECT count(*) FROM enrolments WHERE position = 1 AND question = 0 "
                                "AND next_due_at > :now AND lesson_sent_at = :now", now=now)
            checks.append("all enrolments moved on" if moved == n and planned == n else f"ONLY {moved} MOVED ON")
        else:
            checks.append("partial run")
        runtime.engine.dispose()
    floor_rate = floor_rows / floor_s
    vereda_rate = vereda_rows / vereda_s
    ratio = floor_rate / vereda_rate if vereda_rate else float("inf")
    return [backend, f"{n:,}", str(planners), f"{floor_rows:,}", f"{floor_s:.2f}", f"{floor_rate:,.0f}",
            f"{vereda_s:.2f}", f"{vereda_rate:,.0f}", f"{ratio:.2f}x", f"<= {GOAL_RATIO:.0f}x",
            _data.verdict(ratio <= GOAL_RATIO and finished), "; ".join(checks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--n", type=int, default=100_000, help="due enrolments (default 100000)")
    parser.add_argument("--planners", type=int, default=1, help="processes planning at once (concurrent ticks)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop Vereda's planning after this")
    parser.add_argument("--child", nargs=3, metavar=("URL", "NOW", "MAX_SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], float(args.child[2]))
        return
    _data.install_cleanup()
    rows = []
    try:
        for backend in _data.backends(args.backend):
            rows.append(bench(backend, args.n, args.planners, args.max_seconds))
    finally:
        _data.stop_all()
    print()
    print("(a) planning due drips: outbox rows/s, Vereda's plan_drips vs one INSERT ... SELECT")
    print(_data.table(["backend", "enrolments", "planners", "outbox rows", "floor s", "floor rows/s", "vereda s",
                       "vereda rows/s", "ratio", "goal", "result", "checks"], rows))


if __name__ == "__main__":
    main()
