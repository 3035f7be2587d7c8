"""Availability windows: when a resource may be matched to a job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from calctra_agent.availability import window_open

MONDAY, TUESDAY, WEDNESDAY, THURSDAY, FRIDAY, SATURDAY, SUNDAY = range(1, 8)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """An instant in UTC in the week of Monday 2024-03-04, on ISO weekday `day`."""
    return datetime(2024, 3, 3 + day, hour, minute, tzinfo=UTC)


def availability(days: list[int], start: int, end: int, tz: str = "UTC") -> dict[str, Any]:
    return {"schedule": {"days": days, "startHour": start, "endHour": end}, "timezone": tz}


def test_the_test_week_starts_on_a_monday() -> None:
    assert at(MONDAY, 0).isoweekday() == 1
    assert at(SUNDAY, 0).isoweekday() == 7


WEEKDAYS = [MONDAY, TUESDAY, WEDNESDAY, THURSDAY, FRIDAY]
OFFICE_HOURS = availability(WEEKDAYS, 9, 17)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (at(MONDAY, 9), True),
        (at(MONDAY, 16, 59), True),
        (at(WEDNESDAY, 12), True),
        (at(MONDAY, 8, 59), False),
        (at(MONDAY, 17), False),
        (at(FRIDAY, 23), False),
        (at(SATURDAY, 12), False),
        (at(SUNDAY, 10), False),
    ],
)
def test_plain_window_is_open_on_its_days_from_start_until_end(
    moment: datetime, expected: bool
) -> None:
    assert window_open(OFFICE_HOURS, moment) is expected


FRIDAY_NIGHT = availability([FRIDAY], 18, 8)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (at(FRIDAY, 18), True),
        (at(FRIDAY, 23), True),
        (at(SATURDAY, 0), True),
        (at(SATURDAY, 3), True),
        (at(SATURDAY, 7, 59), True),
        (at(SATURDAY, 8), False),
        (at(FRIDAY, 17, 59), False),
        # Friday 03:00 is the tail of Thursday's night, and Thursday is not listed.
        (at(FRIDAY, 3), False),
        # Saturday evening starts Saturday's night, which is not listed either.
        (at(SATURDAY, 18), False),
        (at(SATURDAY, 12), False),
    ],
)
def test_wrapped_window_runs_from_its_day_into_the_next_morning(
    moment: datetime, expected: bool
) -> None:
    assert window_open(FRIDAY_NIGHT, moment) is expected


SATURDAY_NIGHT = availability([SATURDAY], 18, 8)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        # A wrapped window belongs to the day it starts: Saturday's early hours are Friday's.
        (at(SATURDAY, 3), False),
        (at(SATURDAY, 19), True),
        (at(SUNDAY, 3), True),
        (at(SUNDAY, 19), False),
    ],
)
def test_wrapped_window_early_hours_belong_to_the_previous_day(
    moment: datetime, expected: bool
) -> None:
    assert window_open(SATURDAY_NIGHT, moment) is expected


def test_sunday_night_window_reaches_into_monday_of_the_next_week() -> None:
    sunday_night = availability([SUNDAY], 22, 6)
    assert window_open(sunday_night, at(SUNDAY, 23)) is True
    assert window_open(sunday_night, at(SUNDAY, 23) + timedelta(hours=3)) is True
    assert window_open(sunday_night, at(MONDAY, 5, 59)) is True
    assert window_open(sunday_night, at(MONDAY, 6)) is False
    assert window_open(sunday_night, at(SUNDAY, 21)) is False


@pytest.mark.parametrize("hour", [0, 12, 23])
def test_equal_start_and_end_hours_mean_the_whole_day(hour: int) -> None:
    whole_tuesday = availability([TUESDAY], hour, hour)
    assert window_open(whole_tuesday, at(TUESDAY, 0)) is True
    assert window_open(whole_tuesday, at(TUESDAY, 12)) is True
    assert window_open(whole_tuesday, at(TUESDAY, 23, 59)) is True
    assert window_open(whole_tuesday, at(MONDAY, 23, 59)) is False
    assert window_open(whole_tuesday, at(WEDNESDAY, 0)) is False


def test_window_is_read_in_the_resources_timezone() -> None:
    tokyo_monday_office = availability([MONDAY], 9, 17, tz="Asia/Tokyo")  # UTC+9, no DST
    assert window_open(tokyo_monday_office, at(MONDAY, 0, 30)) is True  # 09:30 in Tokyo
    assert window_open(tokyo_monday_office, at(MONDAY, 7, 59)) is True  # 16:59 in Tokyo
    assert window_open(tokyo_monday_office, at(MONDAY, 8, 30)) is False  # 17:30 in Tokyo
    assert window_open(tokyo_monday_office, at(MONDAY, 10)) is False  # 19:00 in Tokyo
    assert window_open(tokyo_monday_office, at(SUNDAY, 23, 30)) is False  # Monday 08:30 Tokyo
    assert window_open(tokyo_monday_office, at(SUNDAY, 0, 30)) is False  # Sunday 09:30 Tokyo


def test_timezone_moves_the_day_as_well_as_the_hour() -> None:
    # Sunday 15:00 UTC is already Monday 00:00 in Tokyo.
    sunday_utc = datetime(2024, 3, 3, 15, 0, tzinfo=UTC)
    assert window_open(availability([MONDAY], 0, 0, tz="Asia/Tokyo"), sunday_utc) is True
    assert window_open(availability([MONDAY], 0, 0, tz="UTC"), sunday_utc) is False
    assert window_open(availability([SUNDAY], 0, 0, tz="Asia/Tokyo"), sunday_utc) is False


def test_window_follows_daylight_saving_time() -> None:
    new_york_office = availability(WEEKDAYS, 9, 17, tz="America/New_York")
    summer = datetime(2024, 7, 1, 13, 30, tzinfo=UTC)  # Monday 09:30 EDT (UTC-4)
    winter = datetime(2024, 1, 8, 13, 30, tzinfo=UTC)  # Monday 08:30 EST (UTC-5)
    assert window_open(new_york_office, summer) is True
    assert window_open(new_york_office, winter) is False


def test_the_instant_matters_not_the_offset_it_is_written_in() -> None:
    in_utc = at(MONDAY, 10)
    in_tokyo_offset = in_utc.astimezone(timezone(timedelta(hours=9)))  # Monday 19:00 +09:00
    in_minus_offset = in_utc.astimezone(timezone(timedelta(hours=-11)))  # Sunday 23:00 -11:00
    for moment in (in_utc, in_tokyo_offset, in_minus_offset):
        assert window_open(OFFICE_HOURS, moment) is True


def test_missing_timezone_means_utc() -> None:
    no_timezone = {"schedule": {"days": [MONDAY], "startHour": 9, "endHour": 17}}
    assert window_open(no_timezone, at(MONDAY, 10)) is True
    assert window_open(no_timezone, at(MONDAY, 18)) is False


@pytest.mark.parametrize("missing", [None, {}])
def test_resource_without_availability_is_always_open(missing: dict[str, Any] | None) -> None:
    for day in range(1, 8):
        for hour in (0, 8, 17, 23):
            assert window_open(missing, at(day, hour)) is True
