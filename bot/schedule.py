"""When a learner's next lesson is due, in their own time zone (pure; `now` is always an argument)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from bot.courses import Schedule


def in_quiet_hours(moment: time, quiet: tuple[time, time]) -> bool:
    """Whether a local time of day falls in the quiet hours (which may wrap past midnight)."""
    start, end = quiet
    if start == end:
        return False
    if start < end:
        return start <= moment < end
    return moment >= start or moment < end


def _local(day: date, at: time, zone: ZoneInfo) -> datetime:
    # A wall time that does not exist (spring forward) is moved past the gap by the UTC round trip;
    # one that exists twice (fall back) takes its first occurrence (fold=0). Neither skips the day.
    naive = datetime.combine(day, at).replace(tzinfo=zone, fold=0)
    return naive.astimezone(UTC).astimezone(zone)


def quiet_hours_end(now: datetime, zone_name: str, quiet: tuple[time, time]) -> datetime | None:
    """When the quiet hours `now` falls in end (UTC) in the learner's zone; None when `now` is not quiet."""
    zone = ZoneInfo(zone_name)
    local = now.astimezone(zone)
    if not in_quiet_hours(local.time(), quiet):
        return None
    end = _local(local.date(), quiet[1], zone)
    if end <= local:
        end = _local(local.date() + timedelta(days=1), quiet[1], zone)
    return end.astimezone(UTC)


def next_lesson_at(
    after: datetime,
    zone_name: str,
    schedule: Schedule,
    quiet: tuple[time, time],
    preferred_hour: int | None = None,
) -> datetime:
    """The first allowed lesson time on a day after `after`'s local day (one lesson a day), in UTC."""
    zone = ZoneInfo(zone_name)
    at = time(preferred_hour, 0) if preferred_hour is not None else schedule.at
    if in_quiet_hours(at, quiet):
        at = quiet[1]  # the end of the quiet hours is the first allowed time of the morning
    day = after.astimezone(zone).date()
    for offset in range(1, 15):
        candidate = day + timedelta(days=offset)
        if candidate.weekday() in schedule.days:
            return _local(candidate, at, zone).astimezone(UTC)
    raise ValueError("schedule has no days")  # unreachable for a validated course


def describe_when(due: datetime, now: datetime, zone_name: str) -> tuple[str, dict[str, str]]:
    """A message key and values saying when `due` is, from the learner's local point of view."""
    zone = ZoneInfo(zone_name)
    local_due, local_now = due.astimezone(zone), now.astimezone(zone)
    days = (local_due.date() - local_now.date()).days
    clock = local_due.strftime("%H:%M")
    if days == 0:
        return "today", {"time": clock}
    if days == 1:
        return "tomorrow", {"time": clock}
    return "weekday", {"time": clock, "weekday": str(local_due.weekday())}
