"""The scheduler: `tick(now)` is one pass; APScheduler runs it every few seconds (no business rules here)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from bot.broadcasts import release_due
from bot.dispatcher import utcnow
from bot.drips import plan_drips
from bot.runtime import Runtime

log = logging.getLogger(__name__)

TICK_SECONDS = 5


@dataclass
class TickReport:
    lessons_planned: int = 0
    broadcast_messages: int = 0
    recovered: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0

    def __str__(self) -> str:
        return (f"planned {self.lessons_planned} lesson(s); released {self.broadcast_messages} broadcast "
                f"message(s); recovered {self.recovered}; "
                f"sent {self.sent}, failed {self.failed}, retry later {self.retried}")


def tick(runtime: Runtime, now: datetime | None = None, budget: float = 50.0) -> TickReport:
    """Plan what is due as of `now`, then dispatch the outbox until nothing is due or `budget` s pass."""
    fixed = now
    clock = (lambda: fixed) if fixed is not None else utcnow
    report = TickReport()
    report.recovered = runtime.outbox.recover(clock())
    report.lessons_planned = plan_drips(runtime.factory, runtime.context(clock()), runtime.senders)
    report.broadcast_messages = release_due(runtime.factory, runtime.senders, clock(), runtime.settings.quiet_hours)
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        done = runtime.outbox.dispatch(clock, budget_rows=200)
        report.sent += done.sent
        report.failed += done.failed
        report.retried += done.retried
        if done.total() == 0:
            if not done.throttled:
                break
            time.sleep(0.1)  # due messages wait for their rate limit: keep going until the budget is spent
    return report


def start_scheduler(runtime: Runtime):  # type: ignore[no-untyped-def]
    """Run `tick` every few seconds in a background thread of this process."""
    from apscheduler.schedulers.background import BackgroundScheduler

    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every run at INFO
    scheduler = BackgroundScheduler(timezone="UTC")
    # coalesce + a long misfire grace: a late or missed run happens once, never skips the drips
    # (the due times in the database decide what is sent, not the scheduler's own clock).
    scheduler.add_job(lambda: tick(runtime, budget=TICK_SECONDS * 2), "interval", seconds=TICK_SECONDS,
                      id="vereda-tick", coalesce=True, max_instances=1, misfire_grace_time=3600)
    scheduler.start()
    log.info("scheduler started: tick every %d s", TICK_SECONDS)
    return scheduler
