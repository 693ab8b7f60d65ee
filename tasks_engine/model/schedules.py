"""Celery-compatible periodic schedules: ``crontab`` and ``interval``.

Pure stdlib (``datetime`` + any ``tzinfo``, typically ``zoneinfo``) so that beat, every
worker and the operations view compute identical tick times from the definition alone,
with no shared clock state in Redis.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import MAXYEAR, MINYEAR, UTC, date, datetime, timedelta, tzinfo
from typing import Final, Self, TypeAlias

__all__ = [
    "CronField",
    "Schedule",
    "ScheduleError",
    "as_schedule",
    "crontab",
    "interval",
    "schedule_from_dict",
    "schedule_to_dict",
]

CronField: TypeAlias = int | str | Iterable[int]

_UTC: Final = UTC
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=_UTC)
# Every valid (month, day) pair meets every weekday well within one 400-year Gregorian cycle.
_SEARCH_YEARS: Final = 401
# How far ``previous_at_or_before`` looks back (four years covers Feb 29 schedules).
_LOOKBACK: Final = timedelta(days=366 * 4)
# Longest possible length of each month; Feb counts 29 so leap-day schedules are valid.
_MONTH_MAX_DAYS: Final = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}

# English names, hard-coded: ``calendar.day_abbr`` and friends follow the process locale.
_DAYS: Final = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_MONTHS: Final = ("january", "february", "march", "april", "may", "june", "july",
                  "august", "september", "october", "november", "december")  # fmt: skip
_DAY_NAMES: Final = {
    **{name: i for i, name in enumerate(_DAYS)},
    **{name[:3]: i for i, name in enumerate(_DAYS)},
}
_MONTH_NAMES: Final = {
    **{name: i for i, name in enumerate(_MONTHS, start=1)},
    **{name[:3]: i for i, name in enumerate(_MONTHS, start=1)},
}
# One comma-separated item: ``*``, ``n``, ``a-b``, optionally followed by ``/step``.
_ITEM: Final = re.compile(r"(?P<base>\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(?P<step>\d+))?")


class ScheduleError(ValueError):
    """A schedule is malformed or can never fire; raised where it is defined, not at run time."""


@dataclass(frozen=True)
class _Spec:
    """Bounds and names of one crontab field."""

    name: str
    lo: int
    hi: int  # the highest value ``*`` expands to
    accept_hi: int  # the highest value accepted as input (7 = Sunday for day_of_week)
    names: Mapping[str, int] = field(default_factory=dict)
    kind: str = ""


_MINUTE: Final = _Spec("minute", 0, 59, 59)
_HOUR: Final = _Spec("hour", 0, 23, 23)
_DOM: Final = _Spec("day_of_month", 1, 31, 31)
_MONTH: Final = _Spec("month_of_year", 1, 12, 12, _MONTH_NAMES, "month")
_DOW: Final = _Spec("day_of_week", 0, 6, 7, _DAY_NAMES, "day")


def _field_text(spec: _Spec, value: object) -> str:
    """Normalise an int / iterable of ints / string to the string kept for repr and dicts."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        raise ScheduleError(f"crontab {spec.name}={value!r}: expected int, iterable of ints or str")
    if isinstance(value, int):
        items: list[int] = [value]
    elif isinstance(value, Iterable):
        items = list(value)
        if not items:
            raise ScheduleError(f"crontab {spec.name}={items!r}: empty iterable")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int):
                raise ScheduleError(f"crontab {spec.name}={items!r}: {item!r} is not an int")
    else:
        raise ScheduleError(
            f"crontab {spec.name}={value!r}: expected int, iterable of ints or str, got {type(value).__name__}"
        )
    text = ",".join(str(item) for item in sorted(set(items)))
    # Negative numbers would read as ranges in the text form, so reject them here.
    for item in items:
        if item < 0:
            raise ScheduleError(f"crontab {spec.name}={text!r}: {item} is out of range {spec.lo}-{spec.accept_hi}")
    return text


def _wrapping_range(spec: _Spec, start: int, end: int) -> list[int]:
    """``start`` through ``end``; a range whose end is below its start wraps past the field's top, as
    in Celery: hour '23-1' is 23, 0, 1; day_of_week 'sat-mon' is 6, 0, 1; day_of_month '30-2' is 30,
    31, 1, 2 (the days a month lacks are skipped when the schedule runs)."""
    if start <= end:
        return list(range(start, end + 1))
    return [*range(start, spec.hi + 1), *range(spec.lo, end + 1)]


def _parse_field(spec: _Spec, value: object) -> tuple[str, frozenset[int]]:
    """Parse one field into (text kept for display, set of allowed values)."""
    text = _field_text(spec, value)

    def fail(message: str) -> ScheduleError:
        return ScheduleError(f"crontab {spec.name}={text!r}: {message}")

    def number(token: str) -> int:
        if token.isdigit():
            result = int(token)
            if not spec.lo <= result <= spec.accept_hi:
                raise fail(f"{result} is out of range {spec.lo}-{spec.accept_hi}")
            return result
        if token in spec.names:
            return spec.names[token]
        if spec.names:
            raise fail(f"{token!r} is not a {spec.kind} name or a number {spec.lo}-{spec.accept_hi}")
        raise fail(f"{token!r} is not a number")

    values: set[int] = set()
    lowered = text.lower()
    if not lowered:
        raise fail("empty field")
    for raw in lowered.split(","):
        item = raw.strip()
        match = _ITEM.fullmatch(item)
        if match is None:
            raise fail(f"cannot parse {item!r}")
        base, step_text = match["base"], match["step"]
        step = 1 if step_text is None else int(step_text)
        if step < 1:
            raise fail(f"step {step} in {item!r} must be at least 1")
        run: Sequence[int]
        if base == "*":
            run = range(spec.lo, spec.hi + 1)
        elif "-" in base:
            first, last = base.split("-")
            start, end = number(first), number(last)
            if spec is _DOW and start == 7:
                start = 0  # '7-2' is Sunday through Tuesday
            run = _wrapping_range(spec, start, end)
        else:
            start = number(base)
            if spec is _DOW and start == 7:
                start = 0
            # 'n/step' starts at n and runs to the end of the field, like '*/step' offset by n.
            run = range(start, (spec.hi if step_text is not None else start) + 1)
        # A step counts along the run from its first value, across the wrap too ('23-3/2' is 23, 1, 3).
        values.update(run[::step])
    if spec is _DOW:
        values = {v % 7 for v in values}
    return text, frozenset(values)


def _require_aware(name: str, moment: datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ScheduleError(f"{name}={moment!r} must be timezone-aware")


def _celery_weekday(day: date) -> int:
    """Celery numbering: 0 = Sunday … 6 = Saturday (Python's weekday() has Monday = 0)."""
    return day.isoweekday() % 7


def _existing(wall: datetime, tz: tzinfo) -> datetime | None:
    """``wall`` as an aware time in ``tz`` (first occurrence), or None if DST skips it."""
    local = wall.replace(tzinfo=tz, fold=0)
    if local.astimezone(_UTC).astimezone(tz).replace(tzinfo=None) != wall:
        return None
    return local


class crontab:  # noqa: N801 - Celery's name
    """Wall-clock schedule with Celery's ``crontab`` arguments and semantics.

    ``day_of_week`` counts 0 = Sunday (7 is also Sunday) … 6 = Saturday, as in Celery.
    A day must match BOTH ``day_of_month`` and ``day_of_week`` (Celery's AND, not Vixie
    cron's OR), so ``crontab(day_of_month=13, day_of_week='fri')`` is Friday the 13th.
    A range whose end is below its start wraps around, as in Celery: ``hour='23-1'`` is 23, 0
    and 1, ``day_of_week='sat-mon'`` is Saturday, Sunday and Monday; a step counts along the
    wrapped run, so ``hour='23-3/2'`` is 23, 1 and 3.
    Ticks are whole minutes (seconds are always 0).

    DST rules, evaluated in the wall clock of the ``tz`` passed to the methods:

    * A wall time that does not exist (spring-forward gap) is skipped for that day;
      it is not moved to after the gap. ``hour=2, minute=30`` in New York does not
      fire on the spring-forward Sunday.
    * A wall time that occurs twice (fall-back) fires once, at its first occurrence
      (``fold=0``); the repeated hour does not fire again.
    """

    __slots__ = ("_sorted", "_texts", "day_of_month", "day_of_week", "hour", "minute", "month_of_year")

    def __init__(
        self,
        minute: CronField = "*",
        hour: CronField = "*",
        day_of_week: CronField = "*",
        day_of_month: CronField = "*",
        month_of_year: CronField = "*",
    ) -> None:
        minute_text, self.minute = _parse_field(_MINUTE, minute)
        hour_text, self.hour = _parse_field(_HOUR, hour)
        dow_text, self.day_of_week = _parse_field(_DOW, day_of_week)
        dom_text, self.day_of_month = _parse_field(_DOM, day_of_month)
        month_text, self.month_of_year = _parse_field(_MONTH, month_of_year)
        # Cron order: minute hour day-of-month month day-of-week.
        self._texts = (minute_text, hour_text, dom_text, month_text, dow_text)
        self._sorted = tuple(
            tuple(sorted(values)) for values in (self.minute, self.hour, self.day_of_month, self.month_of_year)
        )
        shortest = min(self.day_of_month)
        if all(shortest > _MONTH_MAX_DAYS[month] for month in self.month_of_year):
            raise ScheduleError(
                f"crontab day_of_month={dom_text!r} month_of_year={month_text!r}: never fires, "
                "no allowed month has any allowed day (February counts 29 days)"
            )

    @classmethod
    def from_string(cls, expression: str) -> Self:
        """Build from a 5-field cron line ``'m h dom mon dow'`` (cron order, not argument order)."""
        parts = expression.split()
        if len(parts) != 5:
            raise ScheduleError(
                f"crontab.from_string({expression!r}): expected 5 fields "
                f"'minute hour day_of_month month_of_year day_of_week', got {len(parts)}"
            )
        minute, hour, day_of_month, month_of_year, day_of_week = parts
        return cls(
            minute=minute,
            hour=hour,
            day_of_week=day_of_week,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
        )

    def _forward(self, start: datetime) -> Iterator[datetime]:
        """Matching naive wall times >= ``start`` in increasing order, walking the sets."""
        minutes, hours, days, months = self._sorted
        last_year = min(start.year + _SEARCH_YEARS, MAXYEAR)
        for year in range(start.year, last_year + 1):
            for month in months:
                if (year, month) < (start.year, start.month):
                    continue
                in_start_month = (year, month) == (start.year, start.month)
                month_days = calendar.monthrange(year, month)[1]
                for day in days:
                    if day > month_days:
                        break
                    if in_start_month and day < start.day:
                        continue
                    if _celery_weekday(date(year, month, day)) not in self.day_of_week:
                        continue
                    on_start_day = in_start_month and day == start.day
                    for hour in hours:
                        if on_start_day and hour < start.hour:
                            continue
                        in_start_hour = on_start_day and hour == start.hour
                        for minute in minutes:
                            if in_start_hour and minute < start.minute:
                                continue
                            yield datetime(year, month, day, hour, minute)

    def _backward(self, start: datetime, limit: date) -> Iterator[datetime]:
        """Matching naive wall times <= ``start`` in decreasing order, down to ``limit``."""
        minutes, hours, days, months = (tuple(reversed(values)) for values in self._sorted)
        for year in range(start.year, max(limit.year, MINYEAR) - 1, -1):
            for month in months:
                if (year, month) > (start.year, start.month):
                    continue
                if (year, month) < (limit.year, limit.month):
                    return
                in_start_month = (year, month) == (start.year, start.month)
                month_days = calendar.monthrange(year, month)[1]
                for day in days:
                    if day > month_days or (in_start_month and day > start.day):
                        continue
                    current = date(year, month, day)
                    if current < limit:
                        return
                    if _celery_weekday(current) not in self.day_of_week:
                        continue
                    on_start_day = in_start_month and day == start.day
                    for hour in hours:
                        if on_start_day and hour > start.hour:
                            continue
                        in_start_hour = on_start_day and hour == start.hour
                        for minute in minutes:
                            if in_start_hour and minute > start.minute:
                                continue
                            yield datetime(year, month, day, hour, minute)

    def next_after(self, after: datetime, tz: tzinfo) -> datetime:
        """First tick strictly after ``after`` (aware), as an aware datetime in ``tz``.

        Walks months → days → hours → minutes over the allowed sets, so sparse schedules
        cost no more than dense ones. See the class docstring for the DST rules.
        """
        _require_aware("after", after)
        after_utc = after.astimezone(_UTC)
        # Start at the wall clock of ``after``: every earlier wall time (first occurrence)
        # is at or before ``after``, even when ``after`` is in a repeated fall-back hour.
        start = after.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0, fold=0)
        for wall in self._forward(start):
            local = _existing(wall, tz)
            # Compare in UTC: aware datetimes sharing a tzinfo compare by wall time alone.
            if local is not None and local.astimezone(_UTC) > after_utc:
                return local
        raise ScheduleError(f"{self!r} has no tick within {_SEARCH_YEARS} years after {after}")

    def previous_at_or_before(self, moment: datetime, tz: tzinfo) -> datetime | None:
        """Most recent tick at or before ``moment``, or None if there is none in ~4 years.

        Beat uses it at start-up to run, once, the latest tick missed while no worker ran.
        """
        _require_aware("moment", moment)
        moment_utc = moment.astimezone(_UTC)
        local_moment = moment.astimezone(tz)
        start = local_moment.replace(tzinfo=None, fold=0)
        # In a repeated fall-back hour, first occurrences of later wall times are still in
        # the past; begin the walk that much later so they are not missed.
        first_offset = start.replace(tzinfo=tz).utcoffset()
        actual_offset = local_moment.utcoffset()
        if first_offset is not None and actual_offset is not None and first_offset > actual_offset:
            start += first_offset - actual_offset
        start = start.replace(second=0, microsecond=0)
        try:
            limit = start.date() - _LOOKBACK
        except OverflowError:
            limit = date.min
        for wall in self._backward(start, limit):
            local = _existing(wall, tz)
            if local is not None and local.astimezone(_UTC) <= moment_utc:
                return local
        return None

    def __repr__(self) -> str:
        return f"<crontab: {' '.join(self._texts)} (m/h/dom/mon/dow)>"

    def _key(self) -> tuple[frozenset[int], ...]:
        return (self.minute, self.hour, self.day_of_week, self.day_of_month, self.month_of_year)

    def __eq__(self, other: object) -> bool:
        """Equal when the parsed sets are: ``crontab(day_of_week=7) == crontab(day_of_week='sun')``."""
        if not isinstance(other, crontab):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(("crontab", *self._key()))


class interval:  # noqa: N801 - lowercase like crontab
    """Every N seconds, with ticks aligned to the Unix epoch (tick k at epoch + k * period).

    The alignment lets every process compute the same tick times without coordinating.
    Any positive period works (not only divisors of a minute); resolution is 1 µs.
    """

    __slots__ = ("_period",)

    def __init__(self, run_every: float | timedelta) -> None:
        if isinstance(run_every, bool) or not isinstance(run_every, int | float | timedelta):
            raise ScheduleError(
                f"interval run_every={run_every!r}: expected seconds or timedelta, got {type(run_every).__name__}"
            )
        if isinstance(run_every, timedelta):
            period = run_every
        else:
            if not math.isfinite(run_every):
                raise ScheduleError(f"interval run_every={run_every!r}: must be finite")
            try:
                period = timedelta(seconds=run_every)
            except OverflowError:
                raise ScheduleError(f"interval run_every={run_every!r}: too large") from None
        if period <= timedelta(0):
            raise ScheduleError(f"interval run_every={run_every!r}: must be positive (at least 1 microsecond)")
        self._period = period

    @property
    def seconds(self) -> float:
        return self._period.total_seconds()

    @property
    def run_every(self) -> timedelta:
        return self._period

    def next_after(self, after: datetime, tz: tzinfo) -> datetime:
        """First tick strictly after ``after``, as an aware datetime in ``tz``.

        ``tz`` only sets the returned datetime's zone; alignment is to the epoch, so DST
        does not affect intervals.
        """
        _require_aware("after", after)
        ticks = (after - _EPOCH) // self._period
        return (_EPOCH + (ticks + 1) * self._period).astimezone(tz)

    def previous_at_or_before(self, moment: datetime, tz: tzinfo) -> datetime:
        """Most recent tick at or before ``moment`` (always exists), as an aware datetime in ``tz``."""
        _require_aware("moment", moment)
        ticks = (moment - _EPOCH) // self._period
        return (_EPOCH + ticks * self._period).astimezone(tz)

    def __repr__(self) -> str:
        return f"<interval: every {self.seconds!r}s>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, interval):
            return NotImplemented
        return self._period == other._period

    def __hash__(self) -> int:
        return hash(("interval", self._period))


Schedule: TypeAlias = crontab | interval


def as_schedule(value: object) -> Schedule:
    """Accept what Celery's beat config accepts: a schedule, seconds, or a timedelta."""
    if isinstance(value, crontab | interval):
        return value
    if isinstance(value, int | float | timedelta) and not isinstance(value, bool):
        return interval(value)
    raise ScheduleError(
        f"cannot use {type(value).__name__} as a schedule; expected crontab, interval, seconds (int/float) or timedelta"
    )


_CRONTAB_KEYS: Final = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")


def schedule_to_dict(schedule: Schedule) -> dict[str, str | float]:
    """JSON-able description for the operations view; ``schedule_from_dict`` reverses it."""
    if isinstance(schedule, crontab):
        minute, hour, day_of_month, month_of_year, day_of_week = schedule._texts
        return {
            "type": "crontab",
            "minute": minute,
            "hour": hour,
            "day_of_week": day_of_week,
            "day_of_month": day_of_month,
            "month_of_year": month_of_year,
        }
    return {"type": "interval", "seconds": schedule.seconds}


def schedule_from_dict(data: Mapping[str, object]) -> Schedule:
    """Rebuild a schedule from ``schedule_to_dict`` output; missing crontab fields mean ``*``."""
    kind = data.get("type")
    if kind == "interval":
        seconds = data.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ScheduleError(f"interval dict needs numeric 'seconds', got {seconds!r}")
        return interval(seconds)
    if kind == "crontab":
        unknown = set(data) - {"type", *_CRONTAB_KEYS}
        if unknown:
            raise ScheduleError(f"crontab dict has unknown keys: {sorted(unknown)}")
        fields: dict[str, str | int] = {}
        for key in _CRONTAB_KEYS:
            value = data.get(key, "*")
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise ScheduleError(f"crontab dict {key}={value!r}: expected str or int")
            fields[key] = value
        return crontab(
            minute=fields["minute"],
            hour=fields["hour"],
            day_of_week=fields["day_of_week"],
            day_of_month=fields["day_of_month"],
            month_of_year=fields["month_of_year"],
        )
    raise ScheduleError(f"unknown schedule type {kind!r}; expected 'crontab' or 'interval'")
