"""Six-field NCRONTAB schedules for the local functions host's timer triggers.

Public API: ``parse(expression) -> Schedule`` (raises ``NcrontabError``) and ``Schedule.next_after(moment)``, the next
occurrence strictly after ``moment``, in UTC (timers run in UTC on Flex, docs/reference/azure.md §0.8).

Format (Learn ``functions-bindings-timer``, NCrontab): ``{second} {minute} {hour} {day} {month} {day-of-week}``.
Each field is ``*``, a value, a range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n``, or a comma list of those.
Months accept ``JAN``..``DEC`` and days of the week ``SUN``..``SAT`` (case-insensitive); day-of-week is 0-6 with
Sunday = 0. As in NCrontab, a day must match *both* the day-of-month and the day-of-week fields.

Algorithm: the classic "advance the most significant field that does not match, reset the smaller ones" search, one
unit at a time; at most a few thousand steps because every schedule is checked at parse time to have a reachable
(month, day) pair, and day-of-week repeats every 28 years of calendar.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

__all__ = ["NcrontabError", "Schedule", "parse"]

_MONTHS = {name.upper(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}

# (name, lowest, highest, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _DAYS),
)
# Bound on search steps: ~28 years of months x 31 days, plus hours/minutes/seconds of one day.
_MAX_STEPS = 28 * 12 * 32 + 24 + 60 + 60 + 100


class NcrontabError(ValueError):
    """An NCRONTAB expression that cannot be parsed; ``expression`` and ``field`` name the culprit."""

    def __init__(self, expression: str, message: str, field: str | None = None) -> None:
        where = f" in the {field} field" if field else ""
        super().__init__(f"invalid NCRONTAB expression {expression!r}{where}: {message}")
        self.expression = expression
        self.field = field


@dataclass(frozen=True)
class Schedule:
    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]

    def matches(self, moment: dt.datetime) -> bool:
        return (
            moment.second in self.seconds
            and moment.minute in self.minutes
            and moment.hour in self.hours
            and moment.day in self.days
            and moment.month in self.months
            and (moment.weekday() + 1) % 7 in self.days_of_week
        )

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first occurrence strictly after ``moment`` (naive datetimes are taken as UTC); returned in UTC."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        t = moment.astimezone(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
        for _ in range(_MAX_STEPS):
            if t.month not in self.months:
                # wrong month: first second of the next month
                year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
                t = t.replace(year=year, month=month, day=1, hour=0, minute=0, second=0)
            elif t.day not in self.days or (t.weekday() + 1) % 7 not in self.days_of_week:
                # wrong day: midnight of the next day
                t = t.replace(hour=0, minute=0, second=0) + dt.timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0, second=0) + dt.timedelta(hours=1)
            elif t.minute not in self.minutes:
                t = t.replace(second=0) + dt.timedelta(minutes=1)
            elif t.second not in self.seconds:
                t = t + dt.timedelta(seconds=1)
            else:
                return t
        raise NcrontabError(self.expression, "no occurrence found (the day and day-of-week never coincide)")


def parse(expression: str) -> Schedule:
    """Parse a six-field NCRONTAB expression; raise ``NcrontabError`` with the offending field otherwise."""
    if not isinstance(expression, str) or not expression.strip():
        raise NcrontabError(str(expression), "empty expression")
    parts = expression.split()
    if len(parts) != 6:
        raise NcrontabError(
            expression,
            f"expected 6 fields (second minute hour day month day-of-week), got {len(parts)}",
        )
    values = [_parse_field(expression, part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
    schedule = Schedule(expression, *values)
    if not any(day <= _max_days(month) for month in schedule.months for day in schedule.days):
        raise NcrontabError(expression, "the day field never occurs in the selected months", "day")
    return schedule


def _max_days(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _parse_field(expression: str, text: str, field: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    def number(token: str) -> int:
        upper = token.upper()
        if upper in names:
            return names[upper]
        if not token.isdigit():
            raise NcrontabError(expression, f"{token!r} is not a number{' or name' if names else ''}", field)
        value = int(token)
        if not low <= value <= high:
            raise NcrontabError(expression, f"{value} is out of range {low}-{high}", field)
        return value

    result: set[int] = set()
    for item in text.split(","):
        if not item:
            raise NcrontabError(expression, f"empty list item in {text!r}", field)
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise NcrontabError(expression, f"step {step_text!r} must be a positive integer", field)
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = number(first), number(last)
            if start > end:
                raise NcrontabError(expression, f"range {base!r} runs backwards", field)
        else:
            start = number(base)
            end = high if slash else start  # "a/n" means from a to the field's maximum, every n
        result.update(range(start, end + 1, step))
    return frozenset(result)
