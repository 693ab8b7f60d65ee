"""Celery-compatible schedules: the crontab grammar as a table of next run times, DST, intervals."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest

from tasks_engine.model.schedules import (
    ScheduleError,
    as_schedule,
    crontab,
    interval,
    schedule_from_dict,
    schedule_to_dict,
)

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
SHANGHAI = ZoneInfo("Asia/Shanghai")

# 2024-06-05 is a Wednesday.
WED = datetime(2024, 6, 5, 10, 17, 30, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# (schedule, after, expected next run); all in UTC so the table is about the grammar.
NEXT_RUN_TABLE = [
    pytest.param(crontab(), WED, utc(2024, 6, 5, 10, 18), id="every-minute"),
    pytest.param(crontab(), utc(2024, 6, 5, 10, 18), utc(2024, 6, 5, 10, 19), id="strictly-after"),
    pytest.param(crontab(minute=0, hour=2), WED, utc(2024, 6, 6, 2, 0), id="daily-02:00"),
    pytest.param(
        crontab(minute=0, hour=2),
        utc(2024, 6, 5, 1, 59, 59),
        utc(2024, 6, 5, 2, 0),
        id="daily-02:00-same-day",
    ),
    pytest.param(crontab(hour=9, minute=0, day_of_week=1), WED, utc(2024, 6, 10, 9, 0), id="monday-9"),
    pytest.param(crontab(hour=9, minute=0, day_of_week=0), WED, utc(2024, 6, 9, 9, 0), id="dow-0-sunday"),
    pytest.param(crontab(hour=9, minute=0, day_of_week="sun"), WED, utc(2024, 6, 9, 9, 0), id="dow-sun"),
    pytest.param(crontab(hour=9, minute=0, day_of_week=7), WED, utc(2024, 6, 9, 9, 0), id="dow-7-sunday"),
    pytest.param(
        crontab(hour=9, minute=0, day_of_week="Saturday"),
        WED,
        utc(2024, 6, 8, 9, 0),
        id="dow-full-name",
    ),
    pytest.param(
        crontab(hour=9, minute=0, day_of_week="mon-fri"),
        utc(2024, 6, 7, 10, 0),  # Friday after 09:00
        utc(2024, 6, 10, 9, 0),  # skips Sat + Sun
        id="mon-fri-skips-weekend",
    ),
    pytest.param(
        crontab(hour=9, minute=0, day_of_week="MON-Fri"),
        WED,
        utc(2024, 6, 6, 9, 0),
        id="names-case-insensitive",
    ),
    pytest.param(
        crontab(hour=9, minute=0, day_of_week="sat-sun"),
        WED,
        utc(2024, 6, 8, 9, 0),
        id="range-ending-sunday",
    ),
    pytest.param(crontab(hour=3, minute=0, day_of_month=1), WED, utc(2024, 7, 1, 3, 0), id="monthly"),
    pytest.param(crontab(minute="*/15"), WED, utc(2024, 6, 5, 10, 30), id="*/15"),
    pytest.param(crontab(minute=0, hour="*/6"), WED, utc(2024, 6, 5, 12, 0), id="hour-*/6"),
    pytest.param(crontab(minute="10-40/10"), WED, utc(2024, 6, 5, 10, 20), id="a-b/n"),
    pytest.param(
        crontab(minute="10-40/10"),
        utc(2024, 6, 5, 10, 40),
        utc(2024, 6, 5, 11, 10),
        id="a-b/n-wraps-hour",
    ),
    pytest.param(crontab(minute="5/20"), WED, utc(2024, 6, 5, 10, 25), id="n/step"),
    pytest.param(crontab(minute="5/20"), utc(2024, 6, 5, 10, 45), utc(2024, 6, 5, 11, 5), id="n/step-wraps"),
    pytest.param(crontab(minute="7, 49"), WED, utc(2024, 6, 5, 10, 49), id="comma-list"),
    pytest.param(
        crontab(minute="0-5,30-35/5,*/50"),
        WED,
        utc(2024, 6, 5, 10, 30),
        id="comma-list-of-forms",
    ),
    pytest.param(crontab(minute=0, hour=[1, 22]), WED, utc(2024, 6, 5, 22, 0), id="iterable"),
    pytest.param(crontab(minute=range(0, 60, 20)), WED, utc(2024, 6, 5, 10, 20), id="range-obj"),
    pytest.param(
        crontab(minute=0, hour=0, day_of_month=1, month_of_year="mar,sep"),
        WED,
        utc(2024, 9, 1),
        id="month-names",
    ),
    pytest.param(
        crontab(minute=0, hour=0, day_of_month=1, month_of_year="October-DEC"),
        WED,
        utc(2024, 10, 1),
        id="month-full-name-range",
    ),
    pytest.param(
        crontab(minute=0, hour=0, day_of_month="*/10"),
        WED,
        utc(2024, 6, 11),
        id="dom-*/10",
    ),
    pytest.param(crontab(minute=0, hour=0, day_of_month=31), WED, utc(2024, 7, 31), id="dom-31-skips-june"),
    pytest.param(
        crontab(),
        utc(2024, 12, 31, 23, 59, 30),
        utc(2025, 1, 1, 0, 0),
        id="year-rollover-minute",
    ),
    pytest.param(
        crontab(minute=0, hour=0, day_of_month=1, month_of_year="jan"),
        utc(2024, 12, 31, 23, 59, 59),
        utc(2025, 1, 1),
        id="year-rollover-january",
    ),
    pytest.param(
        crontab(minute=0, hour=0, day_of_month=13, day_of_week="fri"),
        WED,
        utc(2024, 9, 13),  # Jun 13 is Thu, Jul 13 Sat, Aug 13 Tue
        id="friday-13th-dom-AND-dow",
    ),
    pytest.param(
        crontab(minute=0, hour=12, day_of_month=29, month_of_year=2),
        utc(2023, 6, 1),
        utc(2024, 2, 29, 12, 0),
        id="feb-29-leap",
    ),
    pytest.param(
        crontab(minute=0, hour=12, day_of_month=29, month_of_year=2),
        utc(2024, 3, 1),
        utc(2028, 2, 29, 12, 0),
        id="feb-29-next-leap",
    ),
    pytest.param(
        crontab(minute=0, hour=0, day_of_month=29, month_of_year=2, day_of_week="mon"),
        utc(2024, 3, 1),
        utc(2044, 2, 29),
        id="feb-29-on-a-monday-20-years",
    ),
    pytest.param(
        crontab.from_string("*/15 9-17 * * mon-fri"),
        utc(2024, 6, 7, 17, 50),  # Friday evening
        utc(2024, 6, 10, 9, 0),
        id="from-string-office-hours",
    ),
]


@pytest.mark.parametrize(("schedule", "after", "expected"), NEXT_RUN_TABLE)
def test_crontab_next_run_table(schedule: crontab, after: datetime, expected: datetime) -> None:
    got = schedule.next_after(after, UTC)
    assert got == expected
    assert got.tzinfo is UTC
    assert (got.second, got.microsecond) == (0, 0)


PREVIOUS_TABLE = [
    pytest.param(crontab(minute=0, hour=2), WED, utc(2024, 6, 5, 2, 0), id="daily"),
    pytest.param(crontab(minute=0, hour=2), utc(2024, 6, 5, 2, 0), utc(2024, 6, 5, 2, 0), id="inclusive"),
    pytest.param(crontab(minute=0, hour=2), utc(2024, 6, 5, 1, 59), utc(2024, 6, 4, 2, 0), id="yesterday"),
    pytest.param(crontab(hour=9, minute=0, day_of_week=1), WED, utc(2024, 6, 3, 9, 0), id="last-monday"),
    pytest.param(crontab(minute=0, hour=0, day_of_month=1), utc(2024, 1, 15), utc(2024, 1, 1), id="month"),
    pytest.param(
        crontab(minute=0, hour=0, day_of_month=31),
        utc(2024, 1, 15),
        utc(2023, 12, 31),
        id="year-back",
    ),
    pytest.param(
        crontab(minute=0, hour=0, day_of_month=29, month_of_year=2),
        utc(2028, 2, 28),
        utc(2024, 2, 29),
        id="feb-29-four-years-back",
    ),
    pytest.param(
        crontab(minute=0, hour=0, day_of_month=29, month_of_year=2, day_of_week="mon"),
        utc(2030, 1, 1),
        None,  # last one was 2016: outside the ~4-year window
        id="none-in-window",
    ),
]


@pytest.mark.parametrize(("schedule", "moment", "expected"), PREVIOUS_TABLE)
def test_crontab_previous_at_or_before(schedule: crontab, moment: datetime, expected: datetime | None) -> None:
    assert schedule.previous_at_or_before(moment, UTC) == expected


def test_fields_are_parsed_to_frozensets_with_sunday_zero() -> None:
    c = crontab(minute="*/20", hour="9-11", day_of_week="mon-fri", month_of_year="jan,dec")
    assert c.minute == frozenset({0, 20, 40})
    assert c.hour == frozenset({9, 10, 11})
    assert c.day_of_week == frozenset({1, 2, 3, 4, 5})
    assert c.day_of_month == frozenset(range(1, 32))
    assert c.month_of_year == frozenset({1, 12})
    assert isinstance(c.minute, frozenset)
    assert crontab(day_of_week="fri-sun").day_of_week == frozenset({5, 6, 0})
    assert crontab(day_of_week="*/2").day_of_week == frozenset({0, 2, 4, 6})


def test_from_string_is_cron_order() -> None:
    assert crontab.from_string("0 9 * * 1") == crontab(minute=0, hour=9, day_of_week=1)
    assert crontab.from_string("30 3 1 jan,jul sun") == crontab(
        minute=30, hour=3, day_of_month=1, month_of_year="1,7", day_of_week=0
    )


def test_repr_keeps_original_text() -> None:
    assert repr(crontab(minute=0, hour=2)) == "<crontab: 0 2 * * * (m/h/dom/mon/dow)>"
    assert repr(crontab.from_string("*/15 9-17 * * mon-fri")) == "<crontab: */15 9-17 * * mon-fri (m/h/dom/mon/dow)>"
    assert repr(crontab(hour=[22, 1])) == "<crontab: * 1,22 * * * (m/h/dom/mon/dow)>"


def test_equality_and_hash_compare_meaning() -> None:
    assert crontab(day_of_week=7) == crontab(day_of_week="sun") == crontab(day_of_week=0)
    assert crontab(minute=0) == crontab(minute="0") == crontab(minute=[0])
    assert crontab(minute=0) != crontab(minute=1)
    assert crontab(minute=0) != interval(60)
    assert len({crontab(day_of_week=7), crontab(day_of_week="sunday"), crontab()}) == 2


INVALID = [
    pytest.param({"hour": 25}, ["hour", "'25'", "25 is out of range 0-23"], id="hour=25"),
    pytest.param({"minute": "61"}, ["minute", "61 is out of range 0-59"], id="minute=61"),
    pytest.param({"minute": -1}, ["minute", "-1 is out of range"], id="minute=-1"),
    pytest.param({"day_of_week": "funday"}, ["day_of_week", "'funday'"], id="funday"),
    pytest.param({"day_of_week": 8}, ["day_of_week", "8 is out of range 0-7"], id="dow=8"),
    pytest.param({"month_of_year": "smarch"}, ["month_of_year", "'smarch'"], id="smarch"),
    pytest.param({"month_of_year": 0}, ["month_of_year", "0 is out of range 1-12"], id="month=0"),
    pytest.param({"day_of_month": 0}, ["day_of_month", "out of range 1-31"], id="dom=0"),
    pytest.param({"hour": "5-24"}, ["hour", "24"], id="range-end-out-of-bounds"),
    pytest.param({"minute": "*/0"}, ["minute", "'*/0'", "step"], id="step-zero"),
    pytest.param({"minute": "1-"}, ["minute", "cannot parse"], id="dangling-dash"),
    pytest.param({"minute": ""}, ["minute", "empty"], id="empty"),
    pytest.param({"minute": []}, ["minute", "empty"], id="empty-iterable"),
    pytest.param({"minute": 1.5}, ["minute", "float"], id="float"),
    pytest.param({"minute": True}, ["minute"], id="bool"),
    pytest.param(
        {"day_of_month": 31, "month_of_year": 2},
        ["day_of_month='31'", "month_of_year='2'", "never"],
        id="31-feb",
    ),
    pytest.param({"day_of_month": "30-31", "month_of_year": "feb"}, ["never"], id="30-31-feb"),
]


@pytest.mark.parametrize(("kwargs", "fragments"), INVALID)
def test_invalid_crontab(kwargs: dict[str, object], fragments: list[str]) -> None:
    with pytest.raises(ScheduleError) as raised:
        crontab(**kwargs)  # type: ignore[arg-type]
    assert isinstance(raised.value, ValueError)
    message = str(raised.value)
    assert message.startswith("crontab ")
    for fragment in fragments:
        assert fragment in message


def test_invalid_message_exact() -> None:
    with pytest.raises(ScheduleError, match=r"^crontab hour='25': 25 is out of range 0-23$"):
        crontab(hour=25)


def test_feb_29_alone_is_valid() -> None:
    crontab(day_of_month=29, month_of_year=2)
    crontab(day_of_month=31, month_of_year="feb,mar")  # March has a 31st


def test_from_string_needs_five_fields() -> None:
    with pytest.raises(ScheduleError, match="expected 5 fields.*got 4"):
        crontab.from_string("0 2 * *")
    with pytest.raises(ScheduleError, match="got 6"):
        crontab.from_string("0 0 2 * * *")


def test_naive_datetime_rejected() -> None:
    with pytest.raises(ScheduleError, match="timezone-aware"):
        crontab().next_after(datetime(2024, 1, 1), UTC)  # noqa: DTZ001 - the point of the test
    with pytest.raises(ScheduleError, match="timezone-aware"):
        interval(5).previous_at_or_before(datetime(2024, 1, 1), UTC)  # noqa: DTZ001


# --- time zones and DST -------------------------------------------------------------------


def local(tz: tzinfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, fold: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=tz, fold=fold)


def test_shanghai_02_00_is_18_00_utc_previous_day() -> None:
    got = crontab(minute=0, hour=2).next_after(utc(2024, 6, 1), SHANGHAI)
    assert got.astimezone(UTC) == utc(2024, 6, 1, 18, 0)
    assert got.tzinfo is SHANGHAI
    assert (got.day, got.hour, got.utcoffset()) == (2, 2, timedelta(hours=8))


@pytest.mark.parametrize(
    ("tz", "after", "expected_utc"),
    [
        # New York springs forward 2024-03-10 02:00 EST -> 03:00 EDT: 02:30 does not exist.
        pytest.param(NEW_YORK, local(NEW_YORK, 2024, 3, 9, 12), utc(2024, 3, 11, 6, 30), id="ny"),
        # Berlin springs forward 2024-03-31 02:00 CET -> 03:00 CEST.
        pytest.param(BERLIN, local(BERLIN, 2024, 3, 30, 12), utc(2024, 4, 1, 0, 30), id="berlin"),
    ],
)
def test_spring_forward_gap_is_skipped_that_day(tz: ZoneInfo, after: datetime, expected_utc: datetime) -> None:
    got = crontab(minute=30, hour=2).next_after(after, tz)
    assert got.astimezone(UTC) == expected_utc
    assert (got.hour, got.minute) == (2, 30)


def test_spring_forward_hourly_jumps_over_the_gap() -> None:
    hourly = crontab(minute=30)
    first = hourly.next_after(local(NEW_YORK, 2024, 3, 10, 1, 0), NEW_YORK)
    second = hourly.next_after(first, NEW_YORK)
    assert first.astimezone(UTC) == utc(2024, 3, 10, 6, 30)  # 01:30 EST
    assert second.astimezone(UTC) == utc(2024, 3, 10, 7, 30)  # 03:30 EDT, one hour later
    assert second.hour == 3


def ticks(schedule: crontab, start: datetime, stop: datetime, tz: tzinfo) -> Iterator[datetime]:
    moment = start
    while (moment := schedule.next_after(moment, tz)) < stop:
        yield moment


def test_fall_back_fires_once_at_first_occurrence_new_york() -> None:
    # New York falls back 2024-11-03 02:00 EDT -> 01:00 EST: 01:xx happens twice.
    walked = list(ticks(crontab(minute=30), local(NEW_YORK, 2024, 11, 3, 0, 0), utc(2024, 11, 3, 10), NEW_YORK))
    assert [t.astimezone(UTC) for t in walked] == [
        utc(2024, 11, 3, 4, 30),  # 00:30 EDT
        utc(2024, 11, 3, 5, 30),  # 01:30 EDT - first occurrence only
        utc(2024, 11, 3, 7, 30),  # 02:30 EST - two real hours later
        utc(2024, 11, 3, 8, 30),
        utc(2024, 11, 3, 9, 30),
    ]
    assert [t.strftime("%H:%M") for t in walked].count("01:30") == 1
    assert all(t.fold == 0 for t in walked)


def test_fall_back_daily_0130_runs_once() -> None:
    daily = crontab(minute=30, hour=1)
    first = daily.next_after(local(NEW_YORK, 2024, 11, 3, 0, 0), NEW_YORK)
    second = daily.next_after(first, NEW_YORK)
    assert first.astimezone(UTC) == utc(2024, 11, 3, 5, 30)  # 01:30 EDT
    assert second.astimezone(UTC) == utc(2024, 11, 4, 6, 30)  # next day, 01:30 EST


def test_fall_back_berlin_0230_runs_once() -> None:
    # Berlin falls back 2024-10-27 03:00 CEST -> 02:00 CET.
    walked = list(ticks(crontab(minute=30, hour=2), local(BERLIN, 2024, 10, 26, 12), utc(2024, 10, 29), BERLIN))
    assert [t.astimezone(UTC) for t in walked] == [
        utc(2024, 10, 27, 0, 30),  # 02:30 CEST
        utc(2024, 10, 28, 1, 30),  # 02:30 CET, next day
    ]


def test_after_inside_the_repeated_hour() -> None:
    second_0145 = local(NEW_YORK, 2024, 11, 3, 1, 45, fold=1)  # 01:45 EST = 06:45Z
    assert second_0145.astimezone(UTC) == utc(2024, 11, 3, 6, 45)
    nxt = crontab(minute=30).next_after(second_0145, NEW_YORK)
    assert nxt.astimezone(UTC) == utc(2024, 11, 3, 7, 30)  # 02:30 EST, not 01:30 again
    # The latest tick is the first pass's 01:55 EDT, 50 real minutes earlier.
    prev = crontab(minute="*/5").previous_at_or_before(second_0145, NEW_YORK)
    assert prev is not None
    assert prev.astimezone(UTC) == utc(2024, 11, 3, 5, 55)


def test_previous_skips_the_gap() -> None:
    prev = crontab(minute=30, hour=2).previous_at_or_before(local(NEW_YORK, 2024, 3, 10, 12), NEW_YORK)
    assert prev == local(NEW_YORK, 2024, 3, 9, 2, 30)


def oracle_ticks(schedule: crontab, start: datetime, stop: datetime, tz: tzinfo) -> list[datetime]:
    """Independent definition: every UTC minute whose local time matches, first occurrence only."""
    found = []
    moment = start.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    while moment < stop:
        wall = moment.astimezone(tz)
        if (
            wall.fold == 0
            and wall.minute in schedule.minute
            and wall.hour in schedule.hour
            and wall.day in schedule.day_of_month
            and wall.month in schedule.month_of_year
            and wall.isoweekday() % 7 in schedule.day_of_week
        ):
            found.append(moment)
        moment += timedelta(minutes=1)
    return found


DST_WINDOWS = [  # 24 hours around each 2024 transition
    pytest.param(NEW_YORK, utc(2024, 3, 9, 20), id="ny-spring"),
    pytest.param(NEW_YORK, utc(2024, 11, 2, 20), id="ny-fall"),
    pytest.param(BERLIN, utc(2024, 3, 30, 12), id="berlin-spring"),
    pytest.param(BERLIN, utc(2024, 10, 26, 12), id="berlin-fall"),
]


@pytest.mark.parametrize(("tz", "start"), DST_WINDOWS)
@pytest.mark.parametrize("expression", ["*/7 * * * *", "30 1-3 * * *", "0,59 0-4 * * sun"])
def test_walk_matches_minute_by_minute_oracle(tz: ZoneInfo, start: datetime, expression: str) -> None:
    schedule = crontab.from_string(expression)
    stop = start + timedelta(hours=24)
    walked = [t.astimezone(UTC) for t in ticks(schedule, start, stop, tz)]
    assert walked == oracle_ticks(schedule, start, stop, tz)
    # And walking backwards from each tick's successor lands on that tick.
    for tick in walked[:-1]:
        # (UTC arithmetic: aware datetimes in one ZoneInfo add and compare by wall clock.)
        just_before_next = schedule.next_after(tick, tz).astimezone(UTC) - timedelta(seconds=1)
        prev = schedule.previous_at_or_before(just_before_next, tz)
        assert prev is not None
        assert prev.astimezone(UTC) == tick


# --- interval -------------------------------------------------------------------------------

NEW_YEAR = utc(2024, 1, 1)  # Unix 1704067200: a multiple of 300, and 3 past a multiple of 7


@pytest.mark.parametrize(
    ("run_every", "after", "expected"),
    [
        pytest.param(7, NEW_YEAR, utc(2024, 1, 1, 0, 0, 4), id="7s"),
        pytest.param(7, utc(2024, 1, 1, 0, 0, 4), utc(2024, 1, 1, 0, 0, 11), id="7s-on-tick"),
        pytest.param(300, NEW_YEAR, utc(2024, 1, 1, 0, 5), id="300s"),
        pytest.param(300, utc(2023, 12, 31, 23, 59, 59), NEW_YEAR, id="300s-before"),
        pytest.param(300.0, utc(2024, 1, 1, 0, 4, 59), utc(2024, 1, 1, 0, 5), id="300.0s"),
        pytest.param(
            0.5,
            NEW_YEAR + timedelta(milliseconds=200),
            NEW_YEAR + timedelta(milliseconds=500),
            id="0.5s",
        ),
        pytest.param(timedelta(minutes=5), NEW_YEAR, utc(2024, 1, 1, 0, 5), id="timedelta-5min"),
        pytest.param(86400, utc(2024, 1, 1, 13), utc(2024, 1, 2), id="daily-epoch-aligned"),
    ],
)
def test_interval_next_after_is_epoch_aligned(
    run_every: float | timedelta, after: datetime, expected: datetime
) -> None:
    schedule = interval(run_every)
    got = schedule.next_after(after, UTC)
    assert got == expected
    assert math.isclose(got.timestamp() / schedule.seconds % 1, 0, abs_tol=1e-9)


def test_interval_is_the_same_for_every_process() -> None:
    every = interval(7)
    afters = [NEW_YEAR + timedelta(seconds=s) for s in (-2.9, -1, 0, 1.5, 3.99)]
    assert {every.next_after(a, UTC) for a in afters} == {utc(2024, 1, 1, 0, 0, 4)}


def test_interval_previous_at_or_before() -> None:
    assert interval(300).previous_at_or_before(utc(2024, 1, 1, 0, 7), UTC) == utc(2024, 1, 1, 0, 5)
    assert interval(300).previous_at_or_before(NEW_YEAR, UTC) == NEW_YEAR  # inclusive
    assert interval(7).previous_at_or_before(NEW_YEAR, UTC) == utc(2023, 12, 31, 23, 59, 57)


def test_interval_returns_requested_zone() -> None:
    got = interval(3600).next_after(NEW_YEAR, SHANGHAI)
    assert got.tzinfo is SHANGHAI
    assert got == utc(2024, 1, 1, 1)
    assert got.hour == 9


def test_interval_api() -> None:
    assert interval(300).seconds == 300.0
    assert repr(interval(300)) == "<interval: every 300.0s>"
    assert repr(interval(0.5)) == "<interval: every 0.5s>"
    assert interval(300) == interval(timedelta(minutes=5)) == interval(300.0)
    assert interval(300) != interval(301)
    assert len({interval(60), interval(60.0), interval(timedelta(seconds=60))}) == 1


@pytest.mark.parametrize("bad", [0, -1, 0.0, timedelta(0), timedelta(seconds=-5), math.nan, math.inf, True, "5"])
def test_interval_invalid(bad: object) -> None:
    with pytest.raises(ScheduleError, match="interval run_every="):
        interval(bad)  # type: ignore[arg-type]


# --- coercion and serialisation --------------------------------------------------------------


def test_as_schedule() -> None:
    cron = crontab(minute=0)
    every = interval(5)
    assert as_schedule(cron) is cron
    assert as_schedule(every) is every
    assert as_schedule(60) == interval(60)
    assert as_schedule(1.5) == interval(1.5)
    assert as_schedule(timedelta(hours=1)) == interval(3600)


@pytest.mark.parametrize(("bad", "name"), [("*/5", "str"), (None, "NoneType"), (True, "bool")])
def test_as_schedule_rejects(bad: object, name: str) -> None:
    with pytest.raises(ScheduleError, match=name):
        as_schedule(bad)


def test_schedule_to_dict() -> None:
    assert schedule_to_dict(crontab(minute=0, hour=2)) == {
        "type": "crontab",
        "minute": "0",
        "hour": "2",
        "day_of_week": "*",
        "day_of_month": "*",
        "month_of_year": "*",
    }
    assert schedule_to_dict(interval(300)) == {"type": "interval", "seconds": 300.0}


@pytest.mark.parametrize(
    "schedule",
    [
        crontab(),
        crontab.from_string("*/15 9-17 1,15 jan-jun mon-fri"),
        crontab(minute=[0, 30], hour=range(8, 12)),
        interval(300),
        interval(0.25),
        interval(timedelta(days=1, seconds=7)),
    ],
    ids=repr,
)
def test_dict_round_trip_through_json(schedule: crontab | interval) -> None:
    data = json.loads(json.dumps(schedule_to_dict(schedule)))
    again = schedule_from_dict(data)
    assert again == schedule
    assert repr(again) == repr(schedule)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"type": "cron"}, "unknown schedule type"),
        ({}, "unknown schedule type"),
        ({"type": "interval"}, "seconds"),
        ({"type": "interval", "seconds": -1}, "positive"),
        ({"type": "crontab", "hour": "25"}, "out of range"),
        ({"type": "crontab", "hours": "2"}, "unknown keys"),
        ({"type": "crontab", "hour": None}, "hour"),
    ],
)
def test_schedule_from_dict_rejects(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(ScheduleError, match=fragment):
        schedule_from_dict(data)
