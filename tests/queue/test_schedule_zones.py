"""Cron recurrences in a named time zone (``TZ=Europe/Paris 0 9 * * *``):
parsing, refusal of bad zones, daylight-saving changes, and one series run
through the queue.

Paris in 2024: UTC+1 in winter, UTC+2 in summer; clocks go forward at
01:00 UTC on 31 March (02:00 → 03:00) and back at 01:00 UTC on 27 October
(03:00 → 02:00)."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import hypothesis.strategies as st
import pytest
from croniter import croniter
from hypothesis import given, settings

from moorage.clock import FakeClock
from moorage.errors import InvalidInput
from moorage.queue import Queue
from moorage.schedule import parse_repeat


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> float:
    """Epoch seconds of a UTC calendar time: the expected slots."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def slots(repeat: str, after: float, count: int) -> list[float]:
    """The next ``count`` slots of a schedule, each run on time."""
    recurrence = parse_repeat(repeat)
    found = [recurrence.first(after)]
    while len(found) < count:
        found.append(recurrence.next_slot(found[-1], found[-1]))
    return found


# -- parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_text", "stored"),
    [
        ("TZ=Europe/Paris 0 9 * * mon-fri", "cron TZ=Europe/Paris 0 9 * * mon-fri"),
        (
            "CRON_TZ=Europe/Paris 0 9 * * mon-fri",
            "cron TZ=Europe/Paris 0 9 * * mon-fri",
        ),
        (
            " cron  TZ=America/New_York\t*/15 * * * * ",
            "cron TZ=America/New_York */15 * * * *",
        ),
        ("TZ=Etc/GMT+5 0 0 1 * *", "cron TZ=Etc/GMT+5 0 0 1 * *"),
        ("0 9 * * mon-fri", "cron 0 9 * * mon-fri"),
        ("cron 0 9 * * mon-fri", "cron 0 9 * * mon-fri"),
    ],
)
def test_a_zoned_cron_is_stored_in_a_normal_form_that_parses_to_itself(
    given_text: str, stored: str
) -> None:
    recurrence = parse_repeat(given_text)

    assert recurrence.spec == stored
    assert parse_repeat(stored) == recurrence


def test_a_cron_stored_without_a_zone_still_means_utc() -> None:
    recurrence = parse_repeat("cron 0 9 * * *")

    assert recurrence.zone is None
    assert recurrence.first(utc(2024, 7, 1, 12)) == utc(2024, 7, 2, 9)
    assert slots("cron 0 9 * * *", utc(2024, 7, 1), 3) == slots(
        "TZ=UTC 0 9 * * *", utc(2024, 7, 1), 3
    )


@pytest.mark.parametrize(
    ("text", "zone"),
    [
        ("TZ=Mars/Olympus_Mons 0 9 * * *", "Mars/Olympus_Mons"),
        ("TZ=../etc 0 9 * * *", "../etc"),
        ("TZ=Europe/../../etc/passwd 0 9 * * *", "Europe/../../etc/passwd"),
        ("TZ=/etc/localtime 0 9 * * *", "/etc/localtime"),
        ("TZ= 0 9 * * *", ""),
        ("CRON_TZ= 0 9 * * *", ""),
        ("TZ=Europe 0 9 * * *", "Europe"),  # a directory of the database
        ("TZ=europe\\paris 0 9 * * *", "europe\\paris"),
    ],
)
def test_an_unknown_or_malformed_zone_is_refused_by_name(text: str, zone: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(repr(zone))):
        parse_repeat(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("TZ=Europe/Paris 15m", "cron expressions only"),
        ("TZ=Europe/Paris every 15m", "cron expressions only"),
        ("every TZ=Europe/Paris 15m", "cron expressions only"),
        ("TZ=Europe/Paris", "five-field cron"),
        ("TZ=Europe/Paris 61 9 * * *", "five-field cron"),
        ("TZ=Europe/Paris TZ=UTC 0 9 * * *", "five-field cron"),
        ("tz=Europe/Paris 0 9 * * *", "five-field cron"),
    ],
)
def test_a_zone_goes_only_before_a_five_field_cron(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_repeat(text)


# -- daylight saving -----------------------------------------------------------


def test_nine_in_paris_is_eight_utc_in_winter_and_seven_in_summer() -> None:
    daily = "TZ=Europe/Paris 0 9 * * *"

    assert slots(daily, utc(2024, 3, 29, 12), 3) == [
        utc(2024, 3, 30, 8),
        utc(2024, 3, 31, 7),  # the first summer day
        utc(2024, 4, 1, 7),
    ]
    assert slots(daily, utc(2024, 10, 25, 12), 3) == [
        utc(2024, 10, 26, 7),
        utc(2024, 10, 27, 8),  # the first winter day
        utc(2024, 10, 28, 8),
    ]


def test_weekdays_at_nine_in_paris_skip_the_weekend_across_the_change() -> None:
    # 29 March 2024 is a Friday; the clocks change on Sunday 31 March.
    assert slots("TZ=Europe/Paris 0 9 * * mon-fri", utc(2024, 3, 29, 12), 2) == [
        utc(2024, 4, 1, 7),
        utc(2024, 4, 2, 7),
    ]


def test_new_york_changes_on_its_own_dates() -> None:
    # US clocks went forward on 10 March 2024, three weeks before Europe's.
    assert slots("TZ=America/New_York 0 9 * * *", utc(2024, 3, 8, 12), 3) == [
        utc(2024, 3, 8, 14),
        utc(2024, 3, 9, 14),
        utc(2024, 3, 10, 13),
    ]


def test_a_time_skipped_in_spring_runs_once_at_the_change() -> None:
    # 02:30 does not exist in Paris on 31 March: it runs at 03:00 CEST.
    assert slots("TZ=Europe/Paris 30 2 * * *", utc(2024, 3, 29, 12), 3) == [
        utc(2024, 3, 30, 1, 30),
        utc(2024, 3, 31, 1),
        utc(2024, 4, 1, 0, 30),
    ]


def test_several_skipped_times_run_once_together() -> None:
    # 02:00, 02:20 and 02:40 all fall in the skipped hour: one run for them.
    assert slots("TZ=Europe/Paris */20 2 * * *", utc(2024, 3, 30, 12), 2) == [
        utc(2024, 3, 31, 1),
        utc(2024, 4, 1, 0),
    ]
    assert slots("TZ=Europe/Paris */30 * * * *", utc(2024, 3, 31, 0), 3) == [
        utc(2024, 3, 31, 0, 30),  # 01:30 CET
        utc(2024, 3, 31, 1),  # 03:00 CEST, for 02:00, 02:30 and 03:00
        utc(2024, 3, 31, 1, 30),
    ]


def test_a_time_repeated_in_autumn_runs_once_the_first_time() -> None:
    # 02:30 happens twice in Paris on 27 October: at 00:30 and 01:30 UTC.
    assert slots("TZ=Europe/Paris 30 2 * * *", utc(2024, 10, 25, 12), 3) == [
        utc(2024, 10, 26, 0, 30),
        utc(2024, 10, 27, 0, 30),
        utc(2024, 10, 28, 1, 30),
    ]
    # Every half hour: 02:00 and 02:30 CEST run, their CET repeats do not.
    assert slots("TZ=Europe/Paris */30 * * * *", utc(2024, 10, 26, 23, 45), 4) == [
        utc(2024, 10, 27, 0),
        utc(2024, 10, 27, 0, 30),
        utc(2024, 10, 27, 2),  # 03:00 CET
        utc(2024, 10, 27, 2, 30),
    ]


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("*/30 * * * *", utc(2024, 10, 27, 2)),
        ("30 2 * * *", utc(2024, 10, 28, 1, 30)),
        ("0 3 * * *", utc(2024, 10, 27, 2)),
    ],
)
def test_from_inside_the_repeated_hour_the_next_slot_is_after_it(
    cron: str, expected: float
) -> None:
    # 01:10 UTC is 02:10 CET, the second time 02:10 is shown that night.
    now = utc(2024, 10, 27, 1, 10)
    recurrence = parse_repeat(f"TZ=Europe/Paris {cron}")

    assert recurrence.next_slot(utc(2024, 10, 26, 0), now) == expected
    assert recurrence.first(now) == expected


def test_the_next_slot_is_strictly_after_the_moment_of_the_change() -> None:
    recurrence = parse_repeat("TZ=Europe/Paris 30 2 * * *")
    change = utc(2024, 3, 31, 1)

    assert recurrence.next_slot(change, change) == utc(2024, 4, 1, 0, 30)
    assert recurrence.first(change - 0.5) == change


def test_slots_missed_across_a_change_run_once_at_the_next_local_time() -> None:
    recurrence = parse_repeat("TZ=Europe/Paris 0 9 * * *")

    assert recurrence.next_slot(utc(2024, 3, 30, 8), utc(2024, 4, 2, 12)) == utc(
        2024, 4, 3, 7
    )


def test_a_whole_skipped_day_runs_once_at_the_change() -> None:
    # Samoa skipped 30 December 2011, going from UTC-10 to UTC+14 at 10:00 UTC.
    assert slots("TZ=Pacific/Apia 0 9 * * *", utc(2011, 12, 29, 12), 3) == [
        utc(2011, 12, 29, 19),
        utc(2011, 12, 30, 10),
        utc(2011, 12, 30, 19),
    ]


@pytest.fixture
def host_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set the process's local time zone; it is restored afterwards."""

    def use(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield use
    monkeypatch.undo()
    time.tzset()


def test_the_host_time_zone_changes_no_slot(host_zone: Callable[[str], None]) -> None:
    expected = slots("TZ=Europe/Paris 30 2 * * *", utc(2024, 3, 29, 12), 3)
    expected_utc = slots("30 2 * * *", utc(2024, 3, 29, 12), 3)

    host_zone("America/Santiago")

    assert slots("TZ=Europe/Paris 30 2 * * *", utc(2024, 3, 29, 12), 3) == expected
    assert slots("30 2 * * *", utc(2024, 3, 29, 12), 3) == expected_utc


ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "America/Santiago",  # changes at midnight
    "Australia/Lord_Howe",  # changes by half an hour
    "Pacific/Apia",
]
CRONS = ["*/7 * * * *", "30 2 * * *", "0 0 * * *", "0 9 * * mon-fri", "0 0 1 * *"]


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    cron=st.sampled_from(CRONS),
    moment=st.floats(min_value=utc(2005, 1, 1), max_value=utc(2040, 1, 1)),
)
def test_every_slot_is_soon_after_the_moment_and_on_the_local_schedule(
    zone: str, cron: str, moment: float
) -> None:
    slot = parse_repeat(f"TZ={zone} {cron}").first(moment)

    assert moment < slot <= moment + timedelta(days=32).total_seconds()
    local = datetime.fromtimestamp(slot, ZoneInfo(zone))
    just_before = datetime.fromtimestamp(slot - 1, ZoneInfo(zone))
    on_schedule = croniter.match(cron, local.replace(tzinfo=None))
    at_a_change = local.utcoffset() != just_before.utcoffset()
    assert on_schedule or at_a_change


def changes(zone: ZoneInfo, year: int) -> list[float]:
    """The moments, to the hour, around which ``zone`` changed its offset."""
    hours = range(int(utc(year, 1, 1)), int(utc(year + 1, 1, 1)), 3600)
    return [
        moment
        for moment in hours
        if datetime.fromtimestamp(moment, zone).utcoffset()
        != datetime.fromtimestamp(moment + 3600, zone).utcoffset()
    ]


def by_brute_force(cron: str, zone: ZoneInfo, start: float, end: float) -> list[float]:
    """Every minute in ``(start, end)`` that is a slot by the documented rule:
    a wall-clock time on the schedule, the first time it is shown, or the
    moment of a change that skipped one."""
    first_wall = datetime.fromtimestamp(start, UTC).replace(tzinfo=None)
    walls = croniter(cron, first_wall - timedelta(days=2))
    on_schedule: set[datetime] = set()
    while not on_schedule or max(on_schedule) < first_wall + timedelta(days=4):
        on_schedule.add(walls.get_next(datetime))
    found = []
    for moment in range(int(start) // 60 * 60 + 60, int(end), 60):
        local = datetime.fromtimestamp(moment, zone)
        before = datetime.fromtimestamp(moment - 60, zone)
        shown = local.fold == 0 and local.replace(tzinfo=None) in on_schedule
        jump = (local.utcoffset() or timedelta()) - (before.utcoffset() or timedelta())
        skipped = {
            before.replace(tzinfo=None) + timedelta(minutes=n)
            for n in range(1, 1 + int(jump.total_seconds()) // 60)
        }
        if shown or skipped & on_schedule:
            found.append(float(moment))
    return found


@pytest.mark.parametrize("cron", ["*/7 * * * *", "30 2 * * *", "0 0 * * *"])
@pytest.mark.parametrize(
    ("zone", "year"),
    [
        ("Europe/Paris", 2024),
        ("America/Santiago", 2024),
        ("Australia/Lord_Howe", 2024),
        ("Pacific/Apia", 2011),
    ],
)
def test_slots_around_each_change_are_those_of_the_documented_rule(
    cron: str, zone: str, year: int
) -> None:
    recurrence = parse_repeat(f"TZ={zone} {cron}")
    for change in changes(ZoneInfo(zone), year):
        start, end = change - 86_400 + 17, change + 86_400
        walked = [recurrence.first(start)]
        while walked[-1] < end:
            walked.append(recurrence.next_slot(walked[-1], walked[-1]))

        assert walked[:-1] == by_brute_force(cron, ZoneInfo(zone), start, end)


# -- through the queue -----------------------------------------------------------


def waiting_slot(raw: sqlite3.Connection) -> tuple[float, float]:
    (found,) = raw.execute(
        "SELECT scheduled_for, run_after FROM jobs WHERE status = 'waiting'"
    ).fetchall()
    return found[0], found[1]


def test_a_paris_series_runs_at_nine_paris_time(
    queue: Queue, clock: FakeClock, raw: sqlite3.Connection
) -> None:
    assert clock.now() == utc(2023, 11, 14, 22, 13, 20)  # 23:13 in Paris
    first = queue.enqueue(
        "g", "digest", kind="task", repeat="TZ=Europe/Paris 0 9 * * *"
    )
    assert first.repeat == "cron TZ=Europe/Paris 0 9 * * *"
    assert first.run_after == first.scheduled_for == utc(2023, 11, 15, 8)

    clock.advance(first.run_after - clock.now())
    (claimed,) = queue.claim(4)
    assert claimed.id == first.id
    clock.advance(90)
    queue.finish(claimed.id, claimed.attempt)

    assert waiting_slot(raw) == (utc(2023, 11, 16, 8), utc(2023, 11, 16, 8))


def test_a_paris_series_follows_the_spring_change(
    make_queue: Callable[..., Queue], raw: sqlite3.Connection
) -> None:
    clock = FakeClock(utc(2024, 3, 30, 6))
    queue = make_queue(clock=clock)
    first = queue.enqueue(
        "g", "digest", kind="task", repeat="TZ=Europe/Paris 0 9 * * *"
    )
    assert first.run_after == utc(2024, 3, 30, 8)

    clock.advance(first.run_after - clock.now())
    (claimed,) = queue.claim(4)
    queue.finish(claimed.id, claimed.attempt)

    assert waiting_slot(raw) == (utc(2024, 3, 31, 7), utc(2024, 3, 31, 7))


def test_a_bad_zone_is_refused_and_nothing_stored(
    queue: Queue, raw: sqlite3.Connection
) -> None:
    with pytest.raises(InvalidInput, match="Mars/Base"):
        queue.enqueue("g", "x", kind="task", repeat="TZ=Mars/Base 0 9 * * *")
    assert raw.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0


def test_an_occurrence_whose_zone_is_gone_still_finishes_and_ends_its_series(
    queue: Queue, raw: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """A zone the system's zone data no longer has (it was removed or
    renamed after the series began) cannot stop the occurrence from
    finishing: the series ends, with an error in the log."""
    first = queue.enqueue("g", "digest", kind="task", repeat="every 60")
    raw.execute(
        "UPDATE jobs SET repeat = 'cron TZ=Gone/Away 0 9 * * *' WHERE id = ?",
        (first.id,),
    )
    (claimed,) = queue.claim(4)

    finished = queue.finish(claimed.id, claimed.attempt)

    assert finished.status.value == "completed"
    assert raw.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    assert any("cannot be read any more" in r.getMessage() for r in caplog.records)
