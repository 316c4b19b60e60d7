"""Recurrence of scheduled tasks: a cron expression or a fixed interval.

A recurring task is a series of occurrences, one job each.  The occurrence
after one is created in the same transaction that finishes it (see
:meth:`moorage.queue.Queue.finish`), at the first slot of the schedule that
lies after both the finished occurrence's own slot and the moment it
finished.  So a crash can neither skip nor double an occurrence, and slots
missed while moorage was stopped (or while an occurrence ran long) are run
once, not once per missed slot.

Cron expressions have five fields and are read in UTC, or in the IANA time
zone named by a leading ``TZ=<zone>`` (or ``CRON_TZ=<zone>``).  A zone's cron
slot is a wall-clock time there: one that daylight saving skips runs once,
at the moment of the change; one that happens twice runs once, the first time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from moorage.errors import InvalidInput
from moorage.validation import duration

#: The shortest interval accepted: shorter ones would keep a group busy.
MIN_INTERVAL = 1.0

#: The prefixes that name a cron expression's time zone.
ZONE_PREFIXES = ("TZ=", "CRON_TZ=")

# IANA names are relative paths of plain components; this keeps "..", absolute
# paths and hidden files away from the zone database lookup.
_ZONE_NAME = re.compile(
    r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*(?:/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)*"
)

# Cron candidates that can map to a moment not after the one asked about: only
# those in the rest of a repeated (autumn) hour, at most one per minute.
_MAX_SKIPPED = 24 * 60


@dataclass(frozen=True)
class Repeat:
    """A parsed recurrence.  ``spec`` is its stored form: ``every <seconds>``,
    ``cron <five fields>`` (UTC) or ``cron TZ=<zone> <five fields>``."""

    spec: str
    interval: float | None = None
    cron: str | None = None
    zone: str | None = None

    def first(self, now: float) -> float:
        """When a new series starts if no start time is given."""
        if self.interval is not None:
            return now
        return self._cron_after(now)

    def next_slot(self, scheduled_for: float, now: float) -> float:
        """The first slot after ``scheduled_for`` that is not before ``now``."""
        if self.interval is not None:
            steps = max(1, math.ceil((now - scheduled_for) / self.interval))
            return scheduled_for + steps * self.interval
        return self._cron_after(max(scheduled_for, now))

    def _cron_after(self, moment: float) -> float:
        """The first cron slot strictly after ``moment``."""
        if self.cron is None:
            raise ValueError("not a cron recurrence")
        zone: tzinfo = UTC if self.zone is None else ZoneInfo(self.zone)
        # Cron runs on the zone's wall clock: walk naive wall-clock times and
        # map each to a moment.  That map never decreases, and the wall-clock
        # time of ``moment`` itself maps to ``moment`` or (in the second pass
        # of a repeated hour) earlier, so the first candidate mapped past
        # ``moment`` is the earliest slot after it.
        start = datetime.fromtimestamp(moment, tz=zone).replace(tzinfo=None, fold=0)
        candidates = croniter(self.cron, start)
        for _ in range(_MAX_SKIPPED + 1):
            wall: datetime = candidates.get_next(datetime)
            slot = _moment_of(wall, zone)
            if slot > moment:
                return slot
        raise RuntimeError(f"no slot of {self.spec!r} found after {moment}")


def _moment_of(wall: datetime, zone: tzinfo) -> float:
    """The moment a naive wall-clock time in ``zone`` stands for: its first
    occurrence if it happens twice, the moment of the change if it is skipped."""
    earlier = wall.replace(tzinfo=zone, fold=0).timestamp()
    later = wall.replace(tzinfo=zone, fold=1).timestamp()
    if earlier <= later:
        return earlier  # a plain time, or the first of a repeated one
    # Skipped: fold=0 reads it with the offset before the change, fold=1 with
    # the one after, so the change lies in (later, earlier].
    return _change_between(zone, later, earlier)


def _change_between(zone: tzinfo, low: float, high: float) -> float:
    """The first second in ``(low, high]`` that has the UTC offset of
    ``high`` (zone changes fall on whole seconds)."""
    after = _offset(zone, high)
    lo, hi = math.floor(low), math.ceil(high)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(zone, mid) == after:
            hi = mid
        else:
            lo = mid
    return float(hi)


def _offset(zone: tzinfo, moment: float) -> timedelta | None:
    return datetime.fromtimestamp(moment, tz=zone).utcoffset()


def parse_repeat(value: object) -> Repeat:
    """Read ``every 15m`` / ``15m`` (an interval) or a five-field cron
    expression such as ``0 9 * * mon-fri``, optionally after ``TZ=<zone>``
    (``TZ=Europe/Paris 0 9 * * mon-fri``); also the stored forms."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("repeat must be an interval like 15m or a cron expression")
    text = " ".join(value.split())
    if text.startswith("cron "):
        text = text[5:]
    elif text.startswith("every "):
        text = text[6:]
    zone, text = _split_zone(text)
    if zone is not None and (len(text.split()) == 1 or text.startswith("every ")):
        raise InvalidInput(
            f"repeat {value!r}: a time zone applies to cron expressions only, "
            "not to an interval"
        )
    if len(text.split()) == 1:
        return _interval(value, text)
    if len(text.split()) != 5 or not croniter.is_valid(text):
        raise InvalidInput(
            f"repeat {value!r} is not a valid five-field cron expression "
            "(minute hour day-of-month month day-of-week)"
        )
    if zone is None:
        return Repeat(spec=f"cron {text}", cron=text)
    return Repeat(spec=f"cron TZ={zone} {text}", cron=text, zone=zone)


def _split_zone(text: str) -> tuple[str | None, str]:
    """Take a leading ``TZ=<zone>`` off ``text``; the zone must exist."""
    head, _, rest = text.partition(" ")
    for prefix in ZONE_PREFIXES:
        if head.startswith(prefix):
            return _zone(head[len(prefix) :]), rest
    return None, text


def _zone(name: str) -> str:
    if not _ZONE_NAME.fullmatch(name):
        raise InvalidInput(f"time zone {name!r} is not an IANA name like Europe/Paris")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidInput(f"unknown time zone {name!r}") from exc
    return name


def _interval(value: str, text: str) -> Repeat:
    try:
        seconds = duration(text)
    except InvalidInput as exc:
        raise InvalidInput(
            f"repeat {value!r} is neither an interval (e.g. 15m, 2h, 1d) "
            "nor a five-field cron expression"
        ) from exc
    if seconds < MIN_INTERVAL:
        raise InvalidInput(f"repeat interval must be at least {MIN_INTERVAL:g} s")
    return Repeat(spec=f"every {seconds:g}", interval=seconds)
