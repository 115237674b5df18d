"""End to end, PostgreSQL only: `vereda tick` and `vereda worker` processes against one database and the fake
Twilio. Thousands of due learners, concurrent schedulers, a worker killed with SIGKILL mid-broadcast, and a
provider that fails 30 % of its requests: every message arrives once (or is reported `unknown`), never twice.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from bot.config import Settings
from bot.models import Broadcast, Enrolment, Learner, LearnerAddress, OutboundMessage
from bot.runtime import Runtime, build
from tests.e2e._server import LESSONS, AppProcess, environment, vereda
from tests.fakes.twilio_api import Failure, FakeTwilio

COURSE = "seguridad-humana"
SMS_FROM = "+15005550006"
# 12:00 in Mexico City (no quiet hours), and later than the real clock: broadcasts made with `vereda broadcast
# create --at T` are due at T, and `vereda tick --now T` acts as of then.
T = datetime(2030, 1, 15, 18, 0, tzinfo=UTC)

pytestmark = pytest.mark.e2e


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture
def pg(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("scale-out runs on PostgreSQL (SKIP LOCKED); SQLite is one writer at a time")
    return database_url


@pytest.fixture
def rt(pg: str, settings: Settings) -> Iterator[Runtime]:
    """The test's own view of the database (migrated), for setting up and checking."""
    runtime = build(settings)
    yield runtime
    runtime.engine.dispose()


class SlowTwilio(FakeTwilio):
    """The fake Twilio, answering every request after `delay` seconds (the message is taken after the wait)."""

    delay: float = 0.0

    def _next_failure(self) -> Failure | None:
        if self.delay:
            time.sleep(self.delay)
        return super()._next_failure()


@pytest.fixture
def slow_twilio() -> Iterator[SlowTwilio]:
    fake = SlowTwilio()
    fake.start()
    yield fake
    fake.stop()


def configuration(database_url: str, fake: FakeTwilio) -> dict[str, str]:
    """The settings of every process here: SMS at the fake Twilio, no rate limits, no scheduler in the web one."""
    return {
        "DATABASE_URL": database_url, "LESSONS_DIR": str(LESSONS), "TWILIO_ACCOUNT_SID": fake.account_sid,
        "TWILIO_AUTH_TOKEN": fake.auth_token, "TWILIO_SMS_FROM": SMS_FROM, "TWILIO_API_BASE_URL": fake.base_url,
        "PUBLIC_BASE_URL": "https://vereda.example.org", "RATE_LIMITS": "off", "VEREDA_SCHEDULER": "off",
        "LOG_LEVEL": "WARNING",
    }


def start(args: list[str], env: dict[str, str], workdir: Path, name: str) -> subprocess.Popen[bytes]:
    out = open(workdir / f"{name}.out", "wb")  # noqa: SIM115 - closed with the process
    err = open(workdir / f"{name}.err", "wb")  # noqa: SIM115
    return subprocess.Popen(args, cwd=workdir, env=env, stdout=out, stderr=err)


def output(workdir: Path, name: str) -> tuple[str, str]:
    return ((workdir / f"{name}.out").read_text(errors="replace"),
            (workdir / f"{name}.err").read_text(errors="replace"))


def run(args: list[str], env: dict[str, str], workdir: Path, timeout: float = 60) -> str:
    done = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args[1:])} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def ticks_at(now: datetime, env: dict[str, str], workdir: Path, processes: int = 3, budget: float = 50,
             label: str = "tick") -> list[str]:
    """`processes` concurrent `vereda tick --now` runs; their printed reports."""
    names = [f"{label}-{now:%H%M%S}-{n}" for n in range(processes)]
    running = [start(vereda("tick", "--now", now.isoformat(), "--budget", str(budget)), env, workdir, name)
               for name in names]
    reports = []
    for process, name in zip(running, names, strict=True):
        code = process.wait(timeout=budget + 30)
        out, err = output(workdir, name)
        assert code == 0, f"{name} exited {code}:\n{out}\n{err[-3000:]}"
        assert "Traceback" not in err, err[-3000:]
        reports.append(out.strip().splitlines()[-1])
    return reports


def field(report: str, name: str) -> int:
    found = re.search(rf"{name} (\d+)", report)
    assert found, report
    return int(found.group(1))


def planned(report: str) -> int:
    found = re.match(r"planned (\d+) lesson", report)
    assert found, report
    return int(found.group(1))


def add_due_learners(runtime: Runtime, count: int, prefix: str = "+5255", due: datetime = T - timedelta(hours=3),
                     zone: str = "America/Mexico_City") -> list[str]:
    """`count` SMS learners of the course, quiz of lesson 1 finished, lesson 2 due since `due`."""
    phones = [f"{prefix}{n:08d}" for n in range(count)]
    created = due - timedelta(days=1)
    with runtime.engine.begin() as connection:
        ids = list(connection.execute(
            insert(Learner).returning(Learner.id, sort_by_parameter_order=True),
            [{"phone": phone, "language": "es", "timezone": zone, "reasks": 0, "created_at": created}
             for phone in phones]).scalars())
        connection.execute(insert(LearnerAddress), [
            {"learner_id": learner_id, "channel": "sms", "address": phone, "last_inbound_at": created}
            for learner_id, phone in zip(ids, phones, strict=True)])
        connection.execute(insert(Enrolment), [
            {"learner_id": learner_id, "course_id": COURSE, "channel": "sms", "position": 0, "question": None,
             "state": "active", "next_due_at": due, "reminders": 0, "enrolled_at": created}
            for learner_id in ids])
    return phones


def outbox_statuses(runtime: Runtime) -> Counter[str]:
    with runtime.factory() as session:
        return Counter(dict(session.execute(  # type: ignore[arg-type]
            select(OutboundMessage.status, func.count()).group_by(OutboundMessage.status)).all()))


def lesson_text(runtime: Runtime, index: int) -> str:
    course = runtime.catalog.get(COURSE)
    assert course is not None
    return course.lessons[index].text_for("es", "sms")


# -- 2,000 due learners, three schedulers at once ----------------------------------------------------


def test_three_concurrent_ticks_send_2000_due_lessons_once_each(rt: Runtime, fake_twilio: FakeTwilio,
                                                              pg: str, tmp_path: Path) -> None:
    began = time.monotonic()
    phones = add_due_learners(rt, 2000)
    env = environment(**configuration(pg, fake_twilio))

    reports = ticks_at(T, env, tmp_path)
    assert sum(planned(r) for r in reports) == 2000, reports
    retried, rounds = sum(field(r, "retry later") for r in reports), 1
    while outbox_statuses(rt) != Counter({"sent": 4000}) and rounds < 4:
        # The local fake refuses a connection now and then under this load: those rows (and each learner's
        # message queued behind one) wait for their backoff, and go in the next pass.
        with rt.factory() as session:
            codes = set(session.scalars(select(OutboundMessage.error_code)
                                        .where(OutboundMessage.status != "sent")))
        assert codes <= {"network", None}, codes
        reports += ticks_at(T + timedelta(minutes=rounds), env, tmp_path, label=f"retry{rounds}")
        rounds += 1
    assert sum(field(r, "sent") for r in reports) == 4000, reports

    lesson = lesson_text(rt, 1)
    with fake_twilio.lock:
        messages = list(fake_twilio.messages)
    lessons = Counter(m.to for m in messages if m.body == lesson)
    assert len(lessons) == 2000 and set(lessons.values()) == {1}  # one per learner, none twice
    assert set(lessons) == set(phones)
    assert len(messages) == 4000
    assert len({(m.to, m.body) for m in messages}) == 4000
    per_learner = Counter(m.to for m in messages)
    assert set(per_learner.values()) == {2}
    assert outbox_statuses(rt) == Counter({"sent": 4000})
    with rt.factory() as session:
        assert session.scalar(select(func.count()).select_from(Enrolment)
                              .where(Enrolment.position == 1, Enrolment.question == 0)) == 2000

    # the same instant again: nothing more
    again = ticks_at(T, env, tmp_path, processes=1, label="again")
    assert sum(planned(r) for r in again) == 0 and sum(field(r, "sent") for r in again) == 0
    assert len(fake_twilio.messages) == 4000
    print(f"\n[e2e workers] 3 x vereda tick: {len(lessons)}/2000 lessons, {len(messages)} messages, "
          f"0 duplicates, {retried} retried after a refused connection; {time.monotonic() - began:.1f} s")


def test_worker_processes_send_due_lessons_and_the_web_process_with_scheduler_off_does_not(
        rt: Runtime, fake_twilio: FakeTwilio, pg: str, tmp_path: Path) -> None:
    # Real clock here: pick a zone where it is now midday, so quiet hours never get in the way.
    now = datetime.now(UTC)
    offset = 12 - now.hour
    offset = offset - 24 if offset > 14 else offset + 24 if offset < -12 else offset
    zone = "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"  # POSIX sign: Etc/GMT-3 is UTC+3
    phones = add_due_learners(rt, 300, due=now - timedelta(hours=1), zone=zone)
    env = environment(**configuration(pg, fake_twilio))

    # python app.py with VEREDA_SCHEDULER=off: it serves and dispatches replies, but plans no drip
    web = AppProcess(tmp_path, "web", **configuration(pg, fake_twilio))
    try:
        web.start()
        time.sleep(7)  # more than one scheduler interval
        assert fake_twilio.messages == []
        assert outbox_statuses(rt) == Counter()
    finally:
        web.stop(15)
    assert not web.killed, web.stderr()[-3000:]  # SIGTERM was enough

    workers = [start(vereda("worker"), env, tmp_path, f"worker-{n}") for n in range(3)]
    try:
        deadline = time.monotonic() + 45
        while len(fake_twilio.messages) < 600 and time.monotonic() < deadline:
            if any(w.poll() is not None for w in workers):
                break
            time.sleep(0.2)
        time.sleep(6)  # another tick of every worker: nothing more may come
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        codes = [worker.wait(20) for worker in workers]
    logs = "\n".join(output(tmp_path, f"worker-{n}")[1] for n in range(3))
    assert codes == [0, 0, 0], logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
    lesson = lesson_text(rt, 1)
    lessons = Counter(m.to for m in fake_twilio.messages if m.body == lesson)
    assert set(lessons) == set(phones) and set(lessons.values()) == {1}
    assert len(fake_twilio.messages) == 600
    assert outbox_statuses(rt) == Counter({"sent": 600})


# -- a worker killed mid-broadcast -------------------------------------------------------------------


def test_a_worker_killed_mid_broadcast_sends_nobody_twice(rt: Runtime, slow_twilio: SlowTwilio, pg: str,
                                                         tmp_path: Path) -> None:
    began = time.monotonic()
    phones = add_due_learners(rt, 400, prefix="+5256", due=T + timedelta(days=30))  # no lesson due now
    env = environment(**configuration(pg, slow_twilio))
    out = run(vereda("broadcast", "create", "--text-es", "Aviso: el albergue cambia de horario.",
                     "--at", T.isoformat(), "--yes"), env, tmp_path)
    broadcast_id = int(out.strip().splitlines()[-1])

    slow_twilio.delay = 0.15  # each send takes a while: the kill lands while some are in flight
    victim = start(vereda("tick", "--now", T.isoformat(), "--budget", "50"), env, tmp_path, "victim")
    deadline = time.monotonic() + 30
    while len(slow_twilio.messages) < 120 and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(10) == -signal.SIGKILL
    time.sleep(slow_twilio.delay + 0.5)  # requests already at the provider finish there
    at_kill = len(slow_twilio.messages)
    assert 120 <= at_kill < 400, at_kill

    slow_twilio.delay = 0.0
    # Restarted later (the dead claims have expired): three processes at once, twice over.
    reports = ticks_at(T + timedelta(minutes=5), env, tmp_path, label="restart")
    reports += ticks_at(T + timedelta(minutes=10), env, tmp_path, label="restart")
    recovered = sum(field(r, "recovered") for r in reports)

    counts = Counter(m.to for m in slow_twilio.messages)
    assert max(counts.values()) == 1, [p for p, n in counts.items() if n > 1]  # never twice
    with rt.factory() as session:
        status = dict(session.execute(
            select(Learner.phone, OutboundMessage.status).join(Learner, Learner.id == OutboundMessage.learner_id)
            .where(OutboundMessage.broadcast_id == broadcast_id)).all())
        assert session.get(Broadcast, broadcast_id).state == "released"  # type: ignore[union-attr]
    assert set(status) == set(phones)
    unknown = {phone for phone, s in status.items() if s == "unknown"}
    for phone in phones:  # exactly once, or reported unknown (and then at most once)
        assert (counts[phone] == 1 and status[phone] == "sent") or status[phone] == "unknown", (
            phone, counts[phone], status[phone])
    assert len(unknown) <= 8, len(unknown)  # only what was in flight, not the whole claimed batch
    assert recovered >= len(unknown)

    report = run(vereda("broadcast", "report", str(broadcast_id)), env, tmp_path).splitlines()
    assert report[0] == f"broadcast {broadcast_id}: released, 400 recipient(s)"
    assert f"sent: {400 - len(unknown)}" in report and f"unknown: {len(unknown)}" in report
    assert "queued: 0" in report and "failed: 0" in report
    print(f"\n[e2e kill] killed at {at_kill}/400 at the provider; recovered {recovered}; "
          f"{400 - len(unknown)} sent, {len(unknown)} unknown, 0 twice; {time.monotonic() - began:.1f} s")


# -- a provider that fails 30 % of requests ----------------------------------------------------------


def test_a_flaky_provider_still_gets_everything_once(rt: Runtime, fake_twilio: FakeTwilio, pg: str,
                                                    tmp_path: Path) -> None:
    began = time.monotonic()
    phones = add_due_learners(rt, 250, prefix="+5257")
    env = environment(**configuration(pg, fake_twilio))
    out = run(vereda("broadcast", "create", "--text-es", "Aviso para todo el grupo.", "--at", T.isoformat(),
                     "--yes"), env, tmp_path)
    broadcast_id = int(out.strip().splitlines()[-1])
    fake_twilio.fail_ratio = 0.3  # 500s and 429/20429s

    now, rounds, reports = T, 0, []
    while rounds < 12:
        # three schedulers at once for the first pass; then one pass per quarter of an hour for the retries
        reports += ticks_at(now, env, tmp_path, processes=3 if rounds == 0 else 1, label=f"flaky{rounds}")
        rounds += 1
        if set(outbox_statuses(rt)) == {"sent"}:
            break
        now += timedelta(minutes=15)  # past every backoff (at most 10 minutes)
    statuses = outbox_statuses(rt)
    assert statuses == Counter({"sent": 750}), (rounds, statuses)
    retried = sum(field(r, "retry later") for r in reports)
    # every failed request was retried later (a refused connection is a retry the fake never counted)
    assert 100 < fake_twilio.requests - 750 <= retried

    with fake_twilio.lock:
        messages = list(fake_twilio.messages)
    assert len(messages) == 750 and len({(m.to, m.body) for m in messages}) == 750  # nothing twice
    lesson, broadcast = lesson_text(rt, 1), "Aviso para todo el grupo."
    for phone in phones:
        mine = sorted(m.body for m in messages if m.to == phone)
        assert len(mine) == 3 and lesson in mine and broadcast in mine
        assert any(body.startswith("Pregunta 1 de 3") for body in mine)
    report = run(vereda("broadcast", "report", str(broadcast_id)), env, tmp_path).splitlines()
    assert "sent: 250" in report and "failed: 0" in report and "unknown: 0" in report
    print(f"\n[e2e flaky] 30 % failures: {fake_twilio.requests} requests, {retried} retried, 750/750 delivered "
          f"once in {rounds} round(s) of ticks; {time.monotonic() - began:.1f} s")
