"""Recurrence of scheduled tasks: a cron expression or a fixed interval.

A recurring task is a series of occurrences, one job each.  The occurrence
after one is created in the same transaction that finishes it (see
:meth:`moorage.queue.Queue.finish`), at the first slot of the schedule that
lies after both the finished occurrence's own slot and the moment it
finished.  So a crash can neither skip nor double an occurrence, and slots
missed while moorage was stopped (or while an occurrence ran long) are run
once, not once per missed slot.

Cron expressions have five fields and are read in UTC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import croniter

from moorage.errors import InvalidInput
from moorage.validation import duration

#: The shortest interval accepted: shorter ones would keep a group busy.
MIN_INTERVAL = 1.0


@dataclass(frozen=True)
class Repeat:
    """A parsed recurrence.  ``spec`` is its stored form: ``every <seconds>``
    or ``cron <five fields>``."""

    spec: str
    interval: float | None = None
    cron: str | None = None

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
        if self.cron is None:
            raise ValueError("not a cron recurrence")
        start = datetime.fromtimestamp(moment, tz=UTC)
        following: datetime = croniter(self.cron, start).get_next(datetime)
        return following.timestamp()


def parse_repeat(value: object) -> Repeat:
    """Read ``every 15m`` / ``15m`` (an interval) or a five-field cron
    expression such as ``0 9 * * mon-fri``; also the stored forms."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("repeat must be an interval like 15m or a cron expression")
    text = " ".join(value.split())
    if text.startswith("cron "):
        text = text[5:]
    elif text.startswith("every "):
        text = text[6:]
    if len(text.split()) == 1:
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
    if len(text.split()) != 5 or not croniter.is_valid(text):
        raise InvalidInput(
            f"repeat {value!r} is not a valid five-field cron expression "
            "(minute hour day-of-month month day-of-week)"
        )
    return Repeat(spec=f"cron {text}", cron=text)
