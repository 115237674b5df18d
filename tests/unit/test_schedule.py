"""Tests for bot.schedule: the next lesson time in the learner's own zone, quiet hours, and wording of when."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.courses import Schedule
from bot.schedule import describe_when, in_quiet_hours, next_lesson_at

QUIET = (time(21, 0), time(8, 0))  # the default QUIET_HOURS, 21:00-08:00
NO_QUIET = (time(0, 0), time(0, 0))
DAILY = Schedule()  # daily at 09:00
WEEKDAYS = Schedule(days=(0, 1, 2, 3, 4))
MON_WED_FRI = Schedule(days=(0, 2, 4))

NEW_YORK = "America/New_York"
MEXICO = "America/Mexico_City"
HONDURAS = "America/Tegucigalpa"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def local(text: str, zone: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))


# -- daylight saving time ---------------------------------------------------------------------------
# New York: EST is UTC-5, EDT is UTC-4. 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.
# So 09:00 local is 14:00Z under EST and 13:00Z under EDT.


@pytest.mark.parametrize(
    ("finished", "due_utc", "due_local"),
    [
        # spring forward (Sunday 2026-03-08)
        ("2026-03-06T20:00:00-05:00", "2026-03-07T14:00:00", "2026-03-07T09:00"),  # EST -> EST
        ("2026-03-07T20:00:00-05:00", "2026-03-08T13:00:00", "2026-03-08T09:00"),  # evening before: EST -> EDT
        ("2026-03-07T23:59:00-05:00", "2026-03-08T13:00:00", "2026-03-08T09:00"),
        ("2026-03-08T00:30:00-05:00", "2026-03-09T13:00:00", "2026-03-09T09:00"),  # on the day: next day
        ("2026-03-08T20:00:00-04:00", "2026-03-09T13:00:00", "2026-03-09T09:00"),  # EDT -> EDT
        # fall back (Sunday 2026-11-01)
        ("2026-10-30T20:00:00-04:00", "2026-10-31T13:00:00", "2026-10-31T09:00"),  # EDT -> EDT
        ("2026-10-31T20:00:00-04:00", "2026-11-01T14:00:00", "2026-11-01T09:00"),  # evening before: EDT -> EST
        ("2026-10-31T23:59:00-04:00", "2026-11-01T14:00:00", "2026-11-01T09:00"),
        ("2026-11-01T01:30:00-04:00", "2026-11-02T14:00:00", "2026-11-02T09:00"),  # first 01:30 (EDT)
        ("2026-11-01T01:30:00-05:00", "2026-11-02T14:00:00", "2026-11-02T09:00"),  # second 01:30 (EST)
        ("2026-11-01T20:00:00-05:00", "2026-11-02T14:00:00", "2026-11-02T09:00"),  # EST -> EST
    ],
)
def test_new_york_across_dst(finished: str, due_utc: str, due_local: str) -> None:
    due = next_lesson_at(datetime.fromisoformat(finished), NEW_YORK, DAILY, QUIET)
    assert due == utc(due_utc)
    assert due.tzinfo is not None and due.utcoffset() == timedelta(0)
    assert due.astimezone(ZoneInfo(NEW_YORK)).replace(tzinfo=None) == datetime.fromisoformat(due_local)


@pytest.mark.parametrize("start", ["2026-03-01", "2026-10-25"])
def test_new_york_dst_neither_skips_nor_doubles_a_day(start: str) -> None:
    """Chaining lessons day by day over a DST change gives one lesson on every local day, at 09:00."""
    zone = ZoneInfo(NEW_YORK)
    due = local(f"{start}T09:00", NEW_YORK).astimezone(UTC)
    days = []
    for _ in range(14):
        # finish the lesson a little after it arrives, as a learner would
        due = next_lesson_at(due + timedelta(minutes=30), NEW_YORK, DAILY, QUIET)
        days.append(due.astimezone(zone))
    first = datetime.fromisoformat(start).date()
    assert [d.date() for d in days] == [first + timedelta(days=n) for n in range(1, 15)]
    assert {(d.hour, d.minute) for d in days} == {(9, 0)}
    offsets = {d.utcoffset() for d in days}
    assert offsets == {timedelta(hours=-5), timedelta(hours=-4)}  # the chain really crossed the change


def test_new_york_dst_chain_from_the_evening_lesson() -> None:
    """Learners who finish in the evening still get exactly one lesson per day across both changes."""
    zone = ZoneInfo(NEW_YORK)
    for start in ("2026-03-05", "2026-10-28"):
        finished = local(f"{start}T19:45", NEW_YORK)
        seen = []
        for _ in range(7):
            due = next_lesson_at(finished, NEW_YORK, DAILY, QUIET)
            seen.append(due.astimezone(zone).date())
            finished = due.astimezone(zone).replace(hour=19, minute=45)  # done that evening
        first = datetime.fromisoformat(start).date()
        assert seen == [first + timedelta(days=n) for n in range(1, 8)]


def test_a_wall_time_in_the_spring_gap_is_moved_past_it_not_to_another_day() -> None:
    # 02:30 does not exist in New York on 2026-03-08; the lesson comes at 03:30 EDT the same day.
    due = next_lesson_at(local("2026-03-07T20:00", NEW_YORK), NEW_YORK, Schedule(at=time(2, 30)), NO_QUIET)
    assert due == utc("2026-03-08T07:30")
    assert due.astimezone(ZoneInfo(NEW_YORK)).date().isoformat() == "2026-03-08"


def test_a_wall_time_that_happens_twice_takes_the_first() -> None:
    # 01:30 happens twice in New York on 2026-11-01: first in EDT (05:30Z), then in EST (06:30Z).
    due = next_lesson_at(local("2026-10-31T20:00", NEW_YORK), NEW_YORK, Schedule(at=time(1, 30)), NO_QUIET)
    assert due == utc("2026-11-01T05:30")


# -- zones without DST --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "finished", "due_utc"),
    [
        # Mexico City: UTC-6 all year since 2022 (no more first-Sunday-of-April / last-Sunday-of-October change)
        (MEXICO, "2026-01-15T20:00:00-06:00", "2026-01-16T15:00"),
        (MEXICO, "2026-04-04T20:00:00-06:00", "2026-04-05T15:00"),  # the old DST start
        (MEXICO, "2026-04-05T20:00:00-06:00", "2026-04-06T15:00"),
        (MEXICO, "2026-07-01T20:00:00-06:00", "2026-07-02T15:00"),
        (MEXICO, "2026-10-24T20:00:00-06:00", "2026-10-25T15:00"),  # the old DST end
        (MEXICO, "2026-03-07T20:00:00-06:00", "2026-03-08T15:00"),  # the US change does not apply
        (MEXICO, "2026-10-31T20:00:00-06:00", "2026-11-01T15:00"),
        # Honduras: UTC-6 all year
        (HONDURAS, "2026-01-15T20:00:00-06:00", "2026-01-16T15:00"),
        (HONDURAS, "2026-03-07T20:00:00-06:00", "2026-03-08T15:00"),
        (HONDURAS, "2026-07-01T20:00:00-06:00", "2026-07-02T15:00"),
        (HONDURAS, "2026-10-31T20:00:00-06:00", "2026-11-01T15:00"),
    ],
)
def test_zones_without_dst(zone: str, finished: str, due_utc: str) -> None:
    due = next_lesson_at(datetime.fromisoformat(finished), zone, DAILY, QUIET)
    assert due == utc(due_utc)
    assert due.astimezone(ZoneInfo(zone)).time() == time(9, 0)


def test_the_local_day_decides_not_the_utc_day() -> None:
    # 2026-05-06 23:30 in Mexico City is already 2026-05-07 in UTC; the lesson still comes on the 7th local.
    finished = local("2026-05-06T23:30", MEXICO)
    assert finished.astimezone(UTC).date().isoformat() == "2026-05-07"
    assert next_lesson_at(finished, MEXICO, DAILY, QUIET) == utc("2026-05-07T15:00")
    # in Honolulu (UTC-10) the same instant is 19:30 on the 6th: its lesson is 09:00 HST on the 7th
    assert next_lesson_at(finished, "Pacific/Honolulu", DAILY, QUIET) == utc("2026-05-07T19:00")


def test_the_same_instant_in_different_zones() -> None:
    finished = utc("2026-05-06T12:00")  # Wednesday: 08:00 New York, 06:00 Mexico City, 14:00 Madrid
    assert next_lesson_at(finished, NEW_YORK, DAILY, QUIET) == utc("2026-05-07T13:00")
    assert next_lesson_at(finished, MEXICO, DAILY, QUIET) == utc("2026-05-07T15:00")
    assert next_lesson_at(finished, "Europe/Madrid", DAILY, QUIET) == utc("2026-05-07T07:00")


# -- course days ----------------------------------------------------------------------------------------
# 2026-05-04 is a Monday.


@pytest.mark.parametrize(
    ("finished_day", "schedule", "due_day"),
    [
        ("2026-05-04", DAILY, "2026-05-05"),  # Mon -> Tue
        ("2026-05-09", DAILY, "2026-05-10"),  # Sat -> Sun
        ("2026-05-04", WEEKDAYS, "2026-05-05"),  # Mon -> Tue
        ("2026-05-07", WEEKDAYS, "2026-05-08"),  # Thu -> Fri
        ("2026-05-08", WEEKDAYS, "2026-05-11"),  # Fri -> Mon
        ("2026-05-09", WEEKDAYS, "2026-05-11"),  # Sat -> Mon
        ("2026-05-10", WEEKDAYS, "2026-05-11"),  # Sun -> Mon
        ("2026-05-04", MON_WED_FRI, "2026-05-06"),  # Mon -> Wed
        ("2026-05-05", MON_WED_FRI, "2026-05-06"),  # Tue -> Wed
        ("2026-05-06", MON_WED_FRI, "2026-05-08"),  # Wed -> Fri
        ("2026-05-07", MON_WED_FRI, "2026-05-08"),  # Thu -> Fri
        ("2026-05-08", MON_WED_FRI, "2026-05-11"),  # Fri -> Mon
        ("2026-05-09", MON_WED_FRI, "2026-05-11"),  # Sat -> Mon
        ("2026-05-10", MON_WED_FRI, "2026-05-11"),  # Sun -> Mon
        ("2026-05-04", Schedule(days=(0,)), "2026-05-11"),  # Mondays only: Mon -> next Mon
        ("2026-05-06", Schedule(days=(5,)), "2026-05-09"),  # Saturdays only: Wed -> Sat
    ],
)
def test_course_days(finished_day: str, schedule: Schedule, due_day: str) -> None:
    due = next_lesson_at(local(f"{finished_day}T18:00", MEXICO), MEXICO, schedule, QUIET)
    local_due = due.astimezone(ZoneInfo(MEXICO))
    assert local_due.date().isoformat() == due_day
    assert local_due.time() == schedule.at
    assert local_due.weekday() in schedule.days


def test_course_days_across_a_dst_weekend() -> None:
    # Friday 2026-03-06 in New York on weekdays: Monday 2026-03-09 at 09:00 EDT, after the change.
    due = next_lesson_at(local("2026-03-06T18:00", NEW_YORK), NEW_YORK, WEEKDAYS, QUIET)
    assert due == utc("2026-03-09T13:00")


def test_a_schedule_without_days_is_an_error() -> None:
    with pytest.raises(ValueError):
        next_lesson_at(utc("2026-05-06T12:00"), MEXICO, Schedule(days=()), QUIET)


# -- hours, quiet hours and the learner's preferred hour ----------------------------------------------------


@pytest.mark.parametrize(
    ("course_at", "quiet", "expected"),
    [
        (time(9, 0), QUIET, time(9, 0)),
        (time(8, 0), QUIET, time(8, 0)),  # the end of quiet hours is allowed
        (time(20, 59), QUIET, time(20, 59)),
        (time(7, 0), QUIET, time(8, 0)),  # inside quiet hours: moved to their end
        (time(7, 59), QUIET, time(8, 0)),
        (time(0, 0), QUIET, time(8, 0)),
        (time(21, 0), QUIET, time(8, 0)),
        (time(23, 30), QUIET, time(8, 0)),
        (time(6, 0), (time(22, 0), time(7, 30)), time(7, 30)),
        (time(13, 0), (time(12, 0), time(14, 0)), time(14, 0)),  # a quiet range that does not wrap
        (time(11, 0), (time(12, 0), time(14, 0)), time(11, 0)),
        (time(2, 0), NO_QUIET, time(2, 0)),  # start == end: no quiet hours at all
    ],
)
def test_course_hour_and_quiet_hours(course_at: time, quiet: tuple[time, time], expected: time) -> None:
    due = next_lesson_at(local("2026-05-06T18:00", MEXICO), MEXICO, Schedule(at=course_at), quiet)
    local_due = due.astimezone(ZoneInfo(MEXICO))
    assert local_due.date().isoformat() == "2026-05-07"  # the next day, never the same night
    assert local_due.time() == expected


@pytest.mark.parametrize(
    ("preferred", "expected"),
    [
        (None, time(9, 0)),
        (18, time(18, 0)),
        (8, time(8, 0)),
        (12, time(12, 0)),
        (20, time(20, 0)),
        (6, time(8, 0)),  # a preferred hour in quiet hours moves to their end too
        (0, time(8, 0)),  # 0 is an hour, not "no preference"
        (22, time(8, 0)),
    ],
)
def test_preferred_hour_overrides_the_course_hour(preferred: int | None, expected: time) -> None:
    due = next_lesson_at(local("2026-05-06T18:00", NEW_YORK), NEW_YORK, DAILY, QUIET, preferred_hour=preferred)
    local_due = due.astimezone(ZoneInfo(NEW_YORK))
    assert local_due.date().isoformat() == "2026-05-07"
    assert local_due.time() == expected


def test_preferred_hour_across_dst() -> None:
    due = next_lesson_at(local("2026-10-31T20:00", NEW_YORK), NEW_YORK, DAILY, QUIET, preferred_hour=18)
    assert due == utc("2026-11-01T23:00")  # 18:00 EST


@pytest.mark.parametrize(
    ("moment", "quiet", "expected"),
    [
        # wrapping 21:00-08:00
        (time(20, 59), QUIET, False),
        (time(21, 0), QUIET, True),
        (time(23, 59), QUIET, True),
        (time(0, 0), QUIET, True),
        (time(3, 0), QUIET, True),
        (time(7, 59), QUIET, True),
        (time(8, 0), QUIET, False),
        (time(12, 0), QUIET, False),
        # wrapping 22:30-06:15
        (time(22, 29), (time(22, 30), time(6, 15)), False),
        (time(22, 30), (time(22, 30), time(6, 15)), True),
        (time(6, 14), (time(22, 30), time(6, 15)), True),
        (time(6, 15), (time(22, 30), time(6, 15)), False),
        # wrapping from midnight-adjacent start
        (time(23, 59), (time(23, 0), time(0, 0)), True),
        (time(0, 0), (time(23, 0), time(0, 0)), False),
        # not wrapping 00:00-07:00 and 13:00-15:00
        (time(0, 0), (time(0, 0), time(7, 0)), True),
        (time(6, 59), (time(0, 0), time(7, 0)), True),
        (time(7, 0), (time(0, 0), time(7, 0)), False),
        (time(23, 0), (time(0, 0), time(7, 0)), False),
        (time(12, 59), (time(13, 0), time(15, 0)), False),
        (time(13, 0), (time(13, 0), time(15, 0)), True),
        (time(15, 0), (time(13, 0), time(15, 0)), False),
        # an empty range: never quiet
        (time(0, 0), NO_QUIET, False),
        (time(12, 0), (time(12, 0), time(12, 0)), False),
    ],
)
def test_in_quiet_hours(moment: time, quiet: tuple[time, time], expected: bool) -> None:
    assert in_quiet_hours(moment, quiet) is expected


# -- describe_when ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("due", "now", "zone", "expected"),
    [
        # Wednesday 2026-05-06 in Mexico City (UTC-6)
        ("2026-05-06T18:00", "2026-05-06T10:00", MEXICO, ("today", {"time": "18:00"})),
        ("2026-05-07T09:00", "2026-05-06T10:00", MEXICO, ("tomorrow", {"time": "09:00"})),
        ("2026-05-07T09:00", "2026-05-06T23:30", MEXICO, ("tomorrow", {"time": "09:00"})),  # other UTC day
        ("2026-05-08T09:00", "2026-05-06T10:00", MEXICO, ("weekday", {"time": "09:00", "weekday": "4"})),
        ("2026-05-11T08:00", "2026-05-08T20:00", MEXICO, ("weekday", {"time": "08:00", "weekday": "0"})),
        ("2026-05-09T09:30", "2026-05-06T10:00", MEXICO, ("weekday", {"time": "09:30", "weekday": "5"})),
        # across the New York change, the clock is the local one
        ("2026-03-08T09:00", "2026-03-07T20:00", NEW_YORK, ("tomorrow", {"time": "09:00"})),
        ("2026-11-01T09:00", "2026-10-31T20:00", NEW_YORK, ("tomorrow", {"time": "09:00"})),
    ],
)
def test_describe_when(due: str, now: str, zone: str, expected: tuple[str, dict[str, str]]) -> None:
    due_at = local(due, zone).astimezone(UTC)
    now_at = local(now, zone).astimezone(UTC)
    assert describe_when(due_at, now_at, zone) == expected


def test_describe_when_uses_the_learners_zone() -> None:
    due = utc("2026-05-07T15:00")  # 09:00 in Mexico City, 17:00 in Madrid
    now = utc("2026-05-07T03:00")  # 21:00 on the 6th in Mexico City, 05:00 on the 7th in Madrid
    assert describe_when(due, now, MEXICO) == ("tomorrow", {"time": "09:00"})
    assert describe_when(due, now, "Europe/Madrid") == ("today", {"time": "17:00"})


def test_next_lesson_at_then_describe_when_says_tomorrow_at_the_course_hour() -> None:
    now = local("2026-05-06T18:00", HONDURAS)
    due = next_lesson_at(now, HONDURAS, DAILY, QUIET)
    assert describe_when(due, now, HONDURAS) == ("tomorrow", {"time": "09:00"})
