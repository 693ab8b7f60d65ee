"""Crontab behaviour ported from Celery's own tests (t/unit/app/test_schedules.py).

Celery's datetimes there are naive; here every moment is in UTC (or in the zone a DST case
names), because our schedules take aware datetimes and a time zone. Celery's ``is_due`` and
``remaining_estimate`` map onto our ``next_after``: a run is due when the first tick after the
last run is not in the future, and the seconds left are those to the next tick.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tasks_engine.model.schedules import ScheduleError, crontab, interval


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def is_due(schedule: crontab, last_run: datetime, now: datetime) -> tuple[bool, float]:
    """Celery's ``crontab.is_due(last_run_at)`` at ``now``, from ``next_after`` alone."""
    following = schedule.next_after(last_run, UTC)
    if following <= now:
        return True, (schedule.next_after(now, UTC) - now).total_seconds()
    return False, (following - now).total_seconds()


# ---------------------------------------------------------------- parser
@pytest.mark.parametrize(
    ("field", "text", "expected"),
    [
        pytest.param("hour", "23-1", {23, 0, 1}, id="hour-23-1"),
        pytest.param("minute", "58-2", {58, 59, 0, 1, 2}, id="minute-58-2"),
        pytest.param("day_of_week", "sat-mon", {6, 0, 1}, id="dow-sat-mon"),
        pytest.param("day_of_week", "5-1", {5, 6, 0, 1}, id="dow-numbers"),
        pytest.param("day_of_month", "30-2", {30, 31, 1, 2}, id="dom-30-2"),
        pytest.param("day_of_month", "2-1", set(range(1, 32)), id="dom-2-1-is-every-day"),
        pytest.param("month_of_year", "11-1", {11, 12, 1}, id="month-11-1"),
        pytest.param("month_of_year", "nov-feb", {11, 12, 1, 2}, id="month-names"),
    ],
)
def test_parse_range_wraps(field: str, text: str, expected: set[int]) -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_parser::test_parse_range_wraps"""
    assert getattr(crontab(**{field: text}), field) == expected


def test_wrapped_ranges_fire_across_the_boundary() -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_parser::test_parse_range_wraps
    (what the wrapped set means for the next run)"""
    late = crontab(minute=0, hour="23-1")
    assert late.next_after(utc(2024, 6, 5, 22, 30), UTC) == utc(2024, 6, 5, 23, 0)
    assert late.next_after(utc(2024, 6, 5, 23, 0), UTC) == utc(2024, 6, 6, 0, 0)
    assert late.next_after(utc(2024, 6, 6, 1, 0), UTC) == utc(2024, 6, 6, 23, 0)
    weekend = crontab(minute=0, hour=9, day_of_week="sat-mon")
    # 2024-06-04 is a Tuesday: next Saturday, then Sunday, Monday, then Saturday again.
    runs = [utc(2024, 6, 4)]
    for _ in range(4):
        runs.append(weekend.next_after(runs[-1], UTC))
    assert runs[1:] == [utc(2024, 6, 8, 9), utc(2024, 6, 9, 9), utc(2024, 6, 10, 9), utc(2024, 6, 15, 9)]


@pytest.mark.parametrize(
    ("field", "text", "expected"),
    [
        pytest.param("minute", "55-5/3", {55, 58, 1, 4}, id="wrapped-minutes-step"),
        pytest.param("hour", "23-1/2", {23, 1}, id="wrapped-hours-step"),
        pytest.param("hour", "22-3/2", {22, 0, 2}, id="wrapped-step-counts-from-start"),
        pytest.param("day_of_week", "fri-tue/2", {5, 0, 2}, id="wrapped-days-step"),
        pytest.param("minute", "2-9/5", {2, 7}, id="2-9/5"),
        pytest.param("minute", "2-10/5", {2, 7}, id="2-10/5"),
        pytest.param("minute", "2-11/5,3", {2, 3, 7}, id="step-and-list"),
        pytest.param(
            "minute",
            "2-4/3,*/5,0-21/4",
            {0, 2, 4, 5, 8, 10, 12, 15, 16, 20, 25, 30, 35, 40, 45, 50, 55},
            id="three-forms",
        ),
        pytest.param("minute", "1-9/2", {1, 3, 5, 7, 9}, id="1-9/2"),
        pytest.param("day_of_month", "2-4/3,*/5,1-21/4", {1, 2, 5, 6, 9, 11, 13, 16, 17, 21, 26, 31}, id="dom"),
    ],
)
def test_parse_composite(field: str, text: str, expected: set[int]) -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_parser::test_parse_composite
    (a step walks the wrapped run from its first value: '55-5/3' is 55, 58, 1, 4 in Celery too)"""
    assert getattr(crontab(**{field: text}), field) == expected


def test_parse_star_and_steps() -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_parser::test_parse_star and ::test_parse_steps"""
    every = crontab()
    assert every.minute == set(range(60))
    assert every.hour == set(range(24))
    assert every.day_of_week == set(range(7))
    assert every.day_of_month == set(range(1, 32))
    assert every.month_of_year == set(range(1, 13))
    assert crontab(minute="*/2").minute == {i * 2 for i in range(30)}
    assert crontab(minute="*/3").minute == {i * 3 for i in range(20)}
    # Fields starting at 1 step from 1.
    assert crontab(day_of_month="*/2").day_of_month == {i * 2 + 1 for i in range(16)}
    assert crontab(month_of_year="*/2").month_of_year == {1, 3, 5, 7, 9, 11}
    assert crontab(month_of_year="2-12/2").month_of_year == {2, 4, 6, 8, 10, 12}


@pytest.mark.parametrize(
    ("field", "text"),
    [
        pytest.param("minute", "", id="empty-string"),
        pytest.param("minute", "1,,2", id="empty-group"),
        pytest.param("minute", "*/", id="empty-steps"),
        pytest.param("minute", "-20", id="negative-number"),
        pytest.param("month_of_year", "0", id="below-min"),
        pytest.param("day_of_month", "12-0", id="range-end-below-min"),
        pytest.param("minute", "61-0", id="range-start-above-max"),
        pytest.param("minute", "0-100", id="range-end-above-max"),
        pytest.param("hour", "0-30", id="hour-above-max"),
    ],
)
def test_parse_errors(field: str, text: str) -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_parser::test_parse_errors_on_empty_string,
    ::test_parse_errors_on_empty_group, ::test_parse_errors_on_empty_steps, ::test_parse_errors_on_negative_number,
    ::test_parse_errors_on_lt_min, ::test_parse_errors_on_gt_max (a wrap never excuses an out-of-range end)"""
    with pytest.raises(ScheduleError) as raised:
        crontab(**{field: text})
    assert isinstance(raised.value, ValueError)  # what Celery raises
    assert field in str(raised.value)


def test_eq() -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_parser::test_eq"""
    assert crontab(day_of_week="1, 2") == crontab(day_of_week="1-2")
    assert crontab(day_of_month="1, 16, 31") == crontab(day_of_month="*/15")
    assert crontab(minute="1", hour="2", day_of_week="5", day_of_month="10", month_of_year="5") == crontab(
        minute="1", hour="2", day_of_week="5", day_of_month="10", month_of_year="5"
    )
    assert crontab(minute="1") != crontab(minute="2")
    assert crontab(month_of_year="1") != crontab(month_of_year="2")
    assert object() != crontab(minute="1")
    assert crontab(month_of_year="1") != interval(10)
    # A wrapped range equals the same set spelled out.
    assert crontab(hour="23-1") == crontab(hour="0,1,23")


def test_from_string() -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_from_string (every case)"""
    assert crontab.from_string("* * * * *") == crontab()
    assert crontab.from_string("* * * * SUN") == crontab(day_of_week="SUN")
    assert crontab.from_string("0 8 5 * *") == crontab(minute=0, hour=8, day_of_month=5)
    assert crontab.from_string("0 23-1 * * sat-mon") == crontab(minute=0, hour="23-1", day_of_week="sat-mon")
    with pytest.raises(ValueError):
        crontab.from_string("*")


@pytest.mark.parametrize(
    ("kwargs", "attr", "expected"),
    [
        ({"minute": 30}, "minute", {30}),
        ({"minute": "30"}, "minute", {30}),
        ({"minute": (30, 40, 50, 51)}, "minute", {30, 40, 50, 51}),
        ({"hour": 6}, "hour", {6}),
        ({"hour": (4, 8, 12)}, "hour", {4, 8, 12}),
        ({"day_of_week": "fri"}, "day_of_week", {5}),
        ({"day_of_week": "tuesday,sunday,fri"}, "day_of_week", {0, 2, 5}),
        ({"day_of_week": "mon-fri"}, "day_of_week", {1, 2, 3, 4, 5}),
        ({"day_of_week": "*/2"}, "day_of_week", {0, 2, 4, 6}),
        ({"day_of_month": "*/5"}, "day_of_month", {1, 6, 11, 16, 21, 26, 31}),
        ({"month_of_year": "Mar"}, "month_of_year", {3}),
        ({"month_of_year": "april"}, "month_of_year", {4}),
        ({"month_of_year": "may,jun,jul"}, "month_of_year", {5, 6, 7}),
        ({"month_of_year": "aug-oct"}, "month_of_year", {8, 9, 10}),
    ],
)
def test_crontab_spec_formats(kwargs: dict[str, object], attr: str, expected: set[int]) -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_is_due::test_crontab_spec_minute_formats,
    ::test_crontab_spec_hour_formats, ::test_crontab_spec_dow_formats, ::test_crontab_spec_dom_formats,
    ::test_crontab_spec_moy_formats"""
    assert getattr(crontab(**kwargs), attr) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"minute": 60},
        {"hour": 24},
        {"day_of_week": "fooday-barday"},
        {"day_of_week": "1,4,foo"},
        {"day_of_week": "12"},
        {"day_of_month": 0},
        {"day_of_month": "0-10"},
        {"day_of_month": 32},
        {"day_of_month": "31,32"},
        {"month_of_year": 0},
        {"month_of_year": "0-5"},
        {"month_of_year": 13},
        {"month_of_year": "12,13"},
        {"month_of_year": "jaan"},
        {"month_of_year": "sebtember"},
    ],
    ids=repr,
)
def test_crontab_spec_invalid(kwargs: dict[str, object]) -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_is_due::test_crontab_spec_invalid_minute,
    ::test_crontab_spec_invalid_hour, ::test_crontab_spec_invalid_dow, ::test_crontab_spec_invalid_dom,
    ::test_crontab_spec_invalid_moy"""
    with pytest.raises(ValueError):
        crontab(**kwargs)  # type: ignore[arg-type]


def test_day_of_week_7_is_sunday_unlike_celery() -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_is_due::test_crontab_spec_invalid_dow
    for '7', where we differ on purpose: Celery rejects it, we read it as Sunday (as cron does)."""
    assert crontab(day_of_week="7").day_of_week == {0}
    assert crontab(day_of_week="fri-7").day_of_week == {5, 6, 0}
    assert crontab(day_of_week="7-tue").day_of_week == {0, 1, 2}


# ---------------------------------------------------------------- next run (Celery's remaining_estimate)
# 2010-09-11 is a Saturday.
NOW = utc(2010, 9, 11, 14, 30, 15)


@pytest.mark.parametrize(
    ("schedule", "now", "expected"),
    [
        pytest.param(crontab(), NOW, utc(2010, 9, 11, 14, 31), id="test_next_minute"),
        pytest.param(crontab(), utc(2010, 9, 11, 14, 59, 15), utc(2010, 9, 11, 15, 0), id="test_not_next_minute"),
        pytest.param(crontab(minute=[5, 42]), NOW, utc(2010, 9, 11, 14, 42), id="test_this_hour"),
        pytest.param(crontab(minute=[5, 10, 15]), NOW, utc(2010, 9, 11, 15, 5), id="test_not_this_hour"),
        pytest.param(crontab(minute=[5, 42], hour=[12, 17]), NOW, utc(2010, 9, 11, 17, 5), id="test_today"),
        pytest.param(crontab(minute=[5, 42], hour=[12]), NOW, utc(2010, 9, 12, 12, 5), id="test_not_today"),
        pytest.param(crontab(minute=30, hour=14, day_of_week="sat"), NOW, utc(2010, 9, 18, 14, 30), id="test_weekday"),
        pytest.param(
            crontab(minute=[5, 42], day_of_week="mon-fri"), NOW, utc(2010, 9, 13, 0, 5), id="test_not_weekday"
        ),
        pytest.param(
            crontab(minute=30, hour=14, month_of_year="oct", day_of_month=18),
            NOW,
            utc(2010, 10, 18, 14, 30),
            id="test_monthyear",
        ),
        pytest.param(
            crontab(minute=[5, 42], month_of_year="nov-dec", day_of_month=13),
            NOW,
            utc(2010, 11, 13, 0, 5),
            id="test_not_monthyear",
        ),
        pytest.param(crontab(minute=30, hour=14, day_of_month=18), NOW, utc(2010, 9, 18, 14, 30), id="test_monthday"),
        pytest.param(
            crontab(minute=[5, 42], day_of_month=29),
            utc(2010, 1, 22, 14, 30, 15),
            utc(2010, 1, 29, 0, 5),
            id="test_not_monthday",
        ),
        pytest.param(
            crontab(minute=30, hour=14, day_of_week="mon", day_of_month=18),
            utc(2010, 1, 18, 14, 30, 15),
            utc(2010, 10, 18, 14, 30),
            id="test_weekday_monthday",
        ),
        pytest.param(
            crontab(minute=[5, 42], day_of_week="sat", day_of_month=29),
            utc(2010, 1, 29, 0, 5, 15),
            utc(2010, 5, 29, 0, 5),
            id="test_monthday_not_weekday",
        ),
        pytest.param(
            crontab(minute=30, hour=14, day_of_month=29),
            utc(2012, 1, 29, 14, 30, 15),
            utc(2012, 2, 29, 14, 30),
            id="test_leapday",
        ),
        pytest.param(
            crontab(minute=30, hour=14, day_of_month=29),
            utc(2010, 1, 29, 14, 30, 15),
            utc(2010, 3, 29, 14, 30),
            id="test_not_leapday",
        ),
        pytest.param(
            crontab(minute=[5, 42], day_of_week="wed,thu", day_of_month=29, month_of_year="1,4,7"),
            utc(2010, 1, 29, 14, 30, 15),
            utc(2010, 4, 29, 0, 5),
            id="test_monthdayyear_not_week",
        ),
        pytest.param(
            crontab(minute=30, hour=14, day_of_week="fri", day_of_month=29, month_of_year="1-10"),
            utc(2010, 1, 29, 14, 30, 15),
            utc(2010, 10, 29, 14, 30),
            id="test_weekdaymonthyear_not_monthday",
        ),
        pytest.param(
            crontab(minute=[5, 42], day_of_week="fri,sat", day_of_month=29, month_of_year="2-10"),
            utc(2010, 1, 28, 14, 30, 15),
            utc(2010, 5, 29, 0, 5),
            id="test_not_weekmonthdayyear",
        ),
        pytest.param(
            crontab(minute=30, hour=14, day_of_month=29, month_of_year=2),
            utc(2012, 2, 29, 14, 30),
            utc(2016, 2, 29, 14, 30),
            id="test_leapyear",
        ),
        pytest.param(
            crontab(minute=30, hour=14, day_of_month=29, month_of_year="nov-feb"),
            utc(2010, 12, 29, 14, 30),
            utc(2011, 1, 29, 14, 30),
            id="wrapped-months-cross-the-year",
        ),
    ],
)
def test_remaining_estimate_next_occurrence(schedule: crontab, now: datetime, expected: datetime) -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_remaining_estimate (the case named in the id)"""
    assert schedule.next_after(now, UTC) == expected


def test_invalid_specification_fails_when_defined() -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_remaining_estimate::test_invalid_specification
    (Celery raises RuntimeError when it computes the next run; we refuse the schedule when it is built)"""
    with pytest.raises(ScheduleError, match="never fires"):
        crontab(day_of_month=31, month_of_year=4)


def test_day_after_dst_end_and_start() -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_remaining_estimate::test_day_after_dst_end
    and ::test_day_after_dst_start (Europe/Paris, daily at 09:00)"""
    paris = ZoneInfo("Europe/Paris")
    daily = crontab(minute=0, hour=9)
    after_end = daily.next_after(datetime(2017, 10, 28, 9, 0, tzinfo=paris), paris)
    assert after_end == datetime(2017, 10, 29, 9, 0, tzinfo=paris)
    assert after_end.utcoffset() == timedelta(hours=1)
    after_start = daily.next_after(datetime(2017, 3, 25, 9, 0, tzinfo=paris), paris)
    assert after_start == datetime(2017, 3, 26, 9, 0, tzinfo=paris)
    assert after_start.utcoffset() == timedelta(hours=2)


def test_negative_utc_timezone_with_day_of_month() -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_remaining_estimate::
    test_negative_utc_timezone_with_day_of_month and
    ::test_crontab_is_due::test_execution_due_for_negative_utc_timezone_with_day_of_month"""
    los_angeles = ZoneInfo("America/Los_Angeles")
    schedule = crontab(minute=0, day_of_month="27-31")
    last_run = datetime(2023, 1, 28, 23, 0, tzinfo=los_angeles)
    now = datetime(2023, 1, 29, 0, 0, tzinfo=los_angeles)
    assert schedule.next_after(last_run, los_angeles) == now
    assert is_due(schedule, last_run, now) == (True, 3600)


# ---------------------------------------------------------------- is_due
HOURLY = crontab(minute=30)
QUARTERLY = crontab(minute="*/15")
DAILY = crontab(hour=7, minute=30)
WEEKLY = crontab(hour=7, minute=30, day_of_week="thursday")
MONTHLY = crontab(hour=7, minute=30, day_of_week="thursday", day_of_month="8-14")
MONTHLY_MOY = crontab(hour=22, day_of_week="*", month_of_year="2", day_of_month="26,27,28")
YEARLY = crontab(hour=7, minute=30, day_of_week="thursday", day_of_month="8-14", month_of_year=3)
HOURS = 60 * 60
DAYS = 24 * HOURS


@pytest.mark.parametrize(
    ("schedule", "now", "last_run", "expected"),
    [
        pytest.param(HOURLY, utc(2010, 5, 10, 10, 30), utc(2010, 5, 10, 6, 30), (True, HOURS), id="every_hour_due"),
        pytest.param(HOURLY, utc(2010, 5, 10, 10, 29), utc(2010, 5, 10, 9, 30), (False, 60), id="every_hour_not_due"),
        pytest.param(
            QUARTERLY, utc(2010, 5, 10, 10, 15), utc(2010, 5, 10, 6, 30), (True, 15 * 60), id="first_quarter_due"
        ),
        pytest.param(
            QUARTERLY, utc(2010, 5, 10, 10, 30), utc(2010, 5, 10, 6, 30), (True, 15 * 60), id="second_quarter_due"
        ),
        pytest.param(
            QUARTERLY, utc(2010, 5, 10, 10, 14), utc(2010, 5, 10, 10, 0), (False, 60), id="first_quarter_not_due"
        ),
        pytest.param(
            QUARTERLY, utc(2010, 5, 10, 10, 29), utc(2010, 5, 10, 10, 15), (False, 60), id="second_quarter_not_due"
        ),
        pytest.param(DAILY, utc(2010, 5, 10, 7, 30), utc(2010, 5, 9, 7, 30), (True, DAYS), id="daily_due"),
        pytest.param(DAILY, utc(2010, 5, 10, 10, 30), utc(2010, 5, 10, 7, 30), (False, 21 * HOURS), id="daily_not_due"),
        pytest.param(WEEKLY, utc(2010, 5, 6, 7, 30), utc(2010, 4, 30, 7, 30), (True, 7 * DAYS), id="weekly_due"),
        pytest.param(
            WEEKLY, utc(2010, 5, 7, 10, 30), utc(2010, 5, 6, 7, 30), (False, 6 * DAYS - 3 * HOURS), id="weekly_not_due"
        ),
        pytest.param(MONTHLY, utc(2010, 5, 13, 7, 30), utc(2010, 4, 8, 7, 30), (True, 28 * DAYS), id="monthly_due"),
        pytest.param(
            MONTHLY,
            utc(2010, 5, 9, 10, 30),
            utc(2010, 4, 8, 7, 30),
            (False, 4 * DAYS - 3 * HOURS),
            id="monthly_not_due",
        ),
        pytest.param(MONTHLY_MOY, utc(2014, 2, 26, 22, 0), utc(2013, 7, 4, 10, 0), (True, 60), id="monthly_moy_due"),
        pytest.param(MONTHLY_MOY, utc(2014, 2, 26, 22, 0), utc(2013, 2, 28, 10, 0), (True, 60), id="monthly_moy_due2"),
        pytest.param(
            MONTHLY_MOY, utc(2014, 2, 26, 21, 0), utc(2013, 6, 28, 22, 14), (False, HOURS), id="monthly_moy_not_due2"
        ),
        pytest.param(YEARLY, utc(2010, 3, 11, 7, 30), utc(2009, 3, 12, 7, 30), (True, 364 * DAYS), id="yearly_due"),
        pytest.param(
            YEARLY,
            utc(2010, 3, 7, 10, 30),
            utc(2009, 3, 12, 7, 30),
            (False, 4 * DAYS - 3 * HOURS),
            id="yearly_not_due",
        ),
        pytest.param(
            DAILY,
            utc(2022, 12, 5, 10, 30),
            utc(2022, 12, 6, 7, 30),
            (False, (utc(2022, 12, 7, 7, 30) - utc(2022, 12, 5, 10, 30)).total_seconds()),
            id="not_due_if_last_run_in_future",
        ),
        pytest.param(
            DAILY,
            utc(2022, 12, 5, 10, 30),
            utc(2022, 12, 5, 7, 30),
            (False, (utc(2022, 12, 6, 7, 30) - utc(2022, 12, 5, 10, 30)).total_seconds()),
            id="not_due_if_last_run_at_last_feasible_time",
        ),
        pytest.param(
            DAILY,
            utc(2022, 12, 5, 10, 30),
            utc(2022, 12, 5, 8, 30),
            (False, (utc(2022, 12, 6, 7, 30) - utc(2022, 12, 5, 10, 30)).total_seconds()),
            id="not_due_if_last_run_past_last_feasible_time",
        ),
        pytest.param(
            DAILY,
            utc(2022, 12, 5, 10, 30),
            utc(2022, 12, 4, 10, 30),
            (True, (utc(2022, 12, 6, 7, 30) - utc(2022, 12, 5, 10, 30)).total_seconds()),
            id="due_if_not_run_at_last_feasible_time_no_deadline_set",
        ),
        pytest.param(
            crontab(minute=0, hour="23-1"),
            utc(2024, 6, 6, 0, 0),
            utc(2024, 6, 5, 23, 0),
            (True, HOURS),
            id="wrapped_hours_due_after_midnight",
        ),
    ],
)
def test_crontab_is_due(schedule: crontab, now: datetime, last_run: datetime, expected: tuple[bool, float]) -> None:
    """mirrors celery t/unit/app/test_schedules.py::test_crontab_is_due::test_<id>_execution_is_due /
    ::test_execution_<id> (the case named in the id)"""
    assert is_due(schedule, last_run, now) == expected
