"""Availability windows: when a resource takes jobs."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo


def window_open(availability: dict[str, Any] | None, at: datetime) -> bool:
    """Whether an availability (in its wire form) admits the instant `at` (timezone-aware).

    The schedule's days are ISO weekdays in the availability's timezone. A window that wraps
    midnight (startHour 18, endHour 8) belongs to the day it starts on: Friday 18 to 8 covers
    Friday evening and early Saturday. startHour == endHour is the whole day. No availability
    means always.
    """
    if not availability:
        return True
    schedule = availability["schedule"]
    local = at.astimezone(ZoneInfo(availability.get("timezone") or "UTC"))
    start, end, days = schedule["startHour"], schedule["endHour"], set(schedule["days"])
    if start == end:
        return local.isoweekday() in days
    if start < end:
        return local.isoweekday() in days and start <= local.hour < end
    if local.hour >= start:
        return local.isoweekday() in days
    if local.hour < end:
        return (local - timedelta(days=1)).isoweekday() in days
    return False
